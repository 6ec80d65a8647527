"""Per-input-channel steps (column_steps=): lower layer-output error at the same rate, options checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import nncodec
from nncodec.decoder import iter_tensors
from nncodec.errors import ConfigError
from nncodec.quant.column_steps import CLIP, FLOOR, column_factors, fisher_importance, predicted_gain
from nncodec.sensitivity import default_forward
from tests.unit.helpers import no_grad_forward
from tests.unit.test_rate_distortion import _output_error


def _outlier_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Inputs whose first 8 channels are 8x larger than the rest (as LayerNorm outputs often have)."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    x[:, :8] *= 8.0
    return x


def _rate_error(layer: torch.nn.Module, held_out: torch.Tensor, **options: object) -> tuple[float, float]:
    data = nncodec.encode(layer, lossless=["bias"], topology=False, **options)
    return 8.0 * len(data) / layer.weight.numel(), _output_error(layer, nncodec.decode(data), held_out)


def _plain_error_at(layer: torch.nn.Module, held_out: torch.Tensor, bits: float) -> float:
    """Output error of one step per tensor at ``bits`` bits/weight, interpolated (log error) between the
    two rel_steps of a sweep that bracket that rate."""
    sweep = sorted(_rate_error(layer, held_out, rel_step=r) for r in np.geomspace(0.05, 1.0, 12))
    for (b0, e0), (b1, e1) in zip(sweep, sweep[1:]):
        if b0 <= bits <= b1:
            t = (bits - b0) / (b1 - b0)
            return math.exp((1 - t) * math.log(e0) + t * math.log(e1))
    raise AssertionError(f"{bits} bits/weight outside the sweep {sweep}")


@pytest.mark.parametrize("source", ["hessian", "fisher"])
@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_column_steps_lower_the_output_error_at_the_same_rate(source: str, rounding: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 512)  # 64 Ki weights: the 128 float32 steps cost 1/16 bit per weight
    calib, held_out = _outlier_inputs(1024, 128, 1), _outlier_inputs(1024, 128, 2)
    bits, err = _rate_error(layer, held_out, rel_step=0.25, calibration=[calib], rounding=rounding,
                            column_steps=source, column_power=1.0)  # the theory's spread: clean inputs
    # the same rounding with one step for the tensor, at the same rate
    baseline = _plain_error_at(layer, held_out, bits) if rounding == "nearest" else None
    if rounding == "gptq":
        sweep = sorted(_rate_error(layer, held_out, rel_step=r, calibration=[calib], rounding="gptq")
                       for r in np.geomspace(0.1, 0.6, 8))
        below = [e for b, e in sweep if b <= bits]
        baseline = min(below)  # the best one-step GPTQ point that spends no more bits
    assert err < 0.6 * baseline, (bits, err, baseline)


def test_stream_holds_one_step_per_input_channel() -> None:
    layer = torch.nn.Linear(32, 512)
    data = nncodec.encode(layer, rel_step=0.2, calibration=[_outlier_inputs(128, 32, 3)], rounding="nearest",
                          column_steps="hessian", lossless=["bias"], topology=False)
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "weight"]
    assert header.quant.per_channel and header.quant.axis == 1
    steps = header.quant.scale_values()
    assert steps.shape == (32,)
    # the outlier channels (0..7) get finer steps than the rest
    assert steps[:8].max() < steps[8:].min()
    decoded = nncodec.decode(data)["weight"]  # nearest rounding: every weight within half its column's step
    assert ((decoded - layer.weight.detach()).abs() <= torch.as_tensor(steps) / 2 * (1 + 1e-5)).all()


def test_small_tensor_keeps_one_step() -> None:
    # 32 steps of 32 bits would cost 2 bits per weight of a 16 x 32 weight: more than they save
    layer = torch.nn.Linear(32, 16)
    data = nncodec.encode(layer, rel_step=0.2, calibration=[_outlier_inputs(128, 32, 3)], rounding="nearest",
                          column_steps="hessian", lossless=["bias"], topology=False)
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "weight"]
    assert not header.quant.per_channel


def test_fisher_covers_embeddings_and_follows_the_output() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Flatten(), torch.nn.Linear(24, 4))
    with torch.no_grad():
        model[2].weight[:, 8:] = 0.0       # only the first token's embedding reaches the output ...
        model[2].weight[:, 3] *= 20.0      # ... and its dimension 3 most of all
    batches = [torch.randint(0, 50, (16, 3)) for _ in range(2)]
    imp = fisher_importance(model, batches, default_forward, ["0.weight", "2.weight"], probes=2)
    assert imp["0.weight"].shape == (8,) and imp["2.weight"].shape == (24,)
    assert int(np.argmax(imp["0.weight"])) == 3
    assert all(p.grad is None for p in model.parameters())


def test_column_factors_follow_the_rule() -> None:
    imp = np.array([1.0, 4.0, 16.0, 64.0])
    f = column_factors(imp, 1.0)
    assert np.allclose(np.exp(np.log(f).mean()), 1.0)
    assert np.allclose(f[1:] / f[:-1], 0.5)          # step ∝ importance^-1/2
    half = column_factors(imp, 0.5)
    assert np.allclose(half[1:] / half[:-1], 0.5 ** 0.5)
    wide = column_factors(np.array([1e-6, 1.0, 1.0, 1e6]), 2.0)
    assert wide.max() <= CLIP * (1 + 1e-9) and wide.min() >= 1 / CLIP * (1 - 1e-9)
    assert np.allclose(column_factors(np.zeros(5)), 1.0)


def test_target_knob_lands_with_column_steps() -> None:
    layer = torch.nn.Linear(64, 48)
    data, report = nncodec.encode_with_report(layer, calibration=[_outlier_inputs(256, 64, 4)], rounding="nearest",
                                              column_steps="hessian", target_bits_per_param=4.0, topology=False)
    assert report.column_steps == "hessian"
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "weight"]
    assert header.quant.per_channel and header.quant.axis == 1  # the steps were applied, not only asked for
    assert abs(report.bits_per_param - 4.0) <= 0.02 * 4.0


@pytest.mark.parametrize("options, message", [
    ({"column_steps": "rows"}, "column_steps must be"),
    ({"column_power": 0.5, "rel_step": 0.2}, "apply only with column_steps"),
    ({"rounding": "nearest", "fisher_probes": 2}, "fisher_probes applies only"),
    ({"column_steps": "fisher", "column_power": 3.0}, "column_power must be"),
    ({"column_steps": "fisher", "fisher_probes": 0}, "fisher_probes must be"),
    # no embedding table for the probes' row Hessians, no Fisher pass: the count would be ignored
    ({"fisher_probes": 7}, "fisher_probes applies to no tensor"),  # rounding="gptq" by default
    ({"rounding": "gptq", "fisher_probes": 7}, "fisher_probes applies to no tensor"),
    ({"column_steps": "hessian", "fisher_probes": 7}, "fisher_probes applies to no tensor"),
    ({"column_steps": "hessian", "rounding": "nearest", "fisher_probes": 7}, "fisher_probes applies to no tensor"),
])
def test_wrong_column_options_are_config_errors(options: dict, message: str) -> None:
    layer = torch.nn.Linear(8, 4)
    opts = {"rel_step": 0.2, "calibration": [torch.randn(4, 8)], **options}
    with pytest.raises(ConfigError, match=message):
        nncodec.encode(layer, **opts)


def test_fisher_probes_apply_to_fisher_step_scales() -> None:
    """``step_scales="fisher"`` runs the probe pass: ``fisher_probes`` sets it (no error without a table), and
    a forward without gradient is named as the probe pass's problem, not column_steps'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))
    opts = {"rel_step": 0.3, "calibration": [torch.randn(64, 16)], "step_scales": "fisher", "topology": False}
    assert nncodec.encode(model, fisher_probes=1, **opts) != nncodec.encode(model, fisher_probes=4, **opts)
    with pytest.raises(ConfigError, match="a Fisher / output-probe pass needs a differentiable forward"):
        nncodec.encode(model, forward=no_grad_forward, **opts)


def test_column_steps_need_calibration_steps_and_gradients() -> None:
    layer = torch.nn.Linear(8, 4)
    with pytest.raises(ConfigError, match="needs calibration"):
        nncodec.encode(layer, rel_step=0.2, column_steps="hessian")
    with pytest.raises(ConfigError, match="not bits="):
        nncodec.encode(layer, bits=6, calibration=[torch.randn(4, 8)], column_steps="hessian")

    with pytest.raises(ConfigError, match="differentiable"):
        nncodec.encode(layer, rel_step=0.2, calibration=[torch.randn(4, 8)], forward=no_grad_forward,
                       rounding="nearest", column_steps="fisher")


def test_predicted_gain_floors_non_finite_importances_as_the_factors_do() -> None:
    # a channel of unknown (NaN / inf) importance gets the floor's (coarsest) step from column_factors; the gain
    # that decides whether the steps pay must weigh that channel the same way, not drop it
    imp = np.array([np.nan, np.inf, 1.0, 1.0, 4.0, 9.0, 100.0, 0.0])
    floored = np.where(np.isfinite(imp), np.maximum(imp, FLOOR * np.median([1.0, 1.0, 4.0, 9.0, 100.0])),
                       FLOOR * np.median([1.0, 1.0, 4.0, 9.0, 100.0]))
    f = column_factors(imp, 1.0)
    np.testing.assert_allclose(f, column_factors(floored, 1.0))
    assert predicted_gain(imp, f) == pytest.approx(predicted_gain(floored, f))


@pytest.mark.parametrize("rounding", ["nearest", "gptq"])
def test_conv_weight_round_trip_with_column_steps_matches_the_report(rounding: str) -> None:
    # a Conv1d weight [out, in, k] gets one step per input channel (axis 1); decoding gives the values whose
    # error the report states
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(64, 256, 3, padding=1)
    x = torch.randn(16, 64, 32)
    x[:, :8] *= 8.0
    data, report = nncodec.encode_with_report(conv, rel_step=0.3, calibration=[x], column_steps="fisher",
                                              rounding=rounding, lossless=["bias"], topology=False)
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "weight"]
    assert header.quant.per_channel and header.quant.axis == 1 and header.quant.scale_values().shape == (64,)
    error = np.abs(nncodec.decode(data)["weight"].numpy() - conv.weight.detach().numpy()).max()
    (entry,) = [t for t in report.tensors if t.name == "weight"]
    assert error == pytest.approx(entry.max_abs_error, rel=1e-5)
    if rounding == "nearest":  # each weight within half its channel's step
        steps = header.quant.scale_values().reshape(1, -1, 1)
        assert (np.abs(nncodec.decode(data)["weight"].numpy() - conv.weight.detach().numpy())
                <= 0.5 * steps * (1 + 1e-5)).all()


@pytest.mark.parametrize("source, model, forward", [
    ("hessian", lambda: torch.nn.Conv1d(64, 64, 3, groups=4), None),  # no Hessian for grouped convolutions
    ("hessian", lambda: torch.nn.Embedding(512, 64), no_grad_forward),  # nor for tables without gradients
    ("fisher", lambda: torch.nn.Linear(64, 256), None),                # every weight kept lossless
])
def test_column_steps_that_apply_to_no_tensor_are_an_error(source: str, model: object, forward: object) -> None:
    torch.manual_seed(0)
    layer = model()
    batch = torch.randint(0, 512, (8, 16)) if isinstance(layer, torch.nn.Embedding) else \
        torch.randn(8, 64, 16) if isinstance(layer, torch.nn.Conv1d) else torch.randn(8, 64)
    lossless = ["weight", "bias"] if isinstance(layer, torch.nn.Linear) else ["bias"]
    with pytest.raises(ConfigError, match="column_steps.*applies to no quantized tensor"):
        nncodec.encode(layer, rel_step=0.3, calibration=[batch], rounding="nearest", column_steps=source,
                       lossless=lossless, topology=False, forward=forward)


def test_fisher_importance_of_a_sparse_embedding_matches_the_dense_one() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Embedding(256, 32), torch.nn.Linear(32, 8))
    sparse = torch.nn.Sequential(torch.nn.Embedding(256, 32, sparse=True), torch.nn.Linear(32, 8))
    sparse.load_state_dict(dense.state_dict())
    batches = [torch.randint(0, 256, (4, 16))]
    imp = {name: fisher_importance(m, batches, lambda m, b: m(b), ["0.weight"], probes=2)["0.weight"]
           for name, m in (("dense", dense), ("sparse", sparse))}
    assert imp["dense"].shape == (32,) and (imp["dense"] > 0).all()
    np.testing.assert_allclose(imp["sparse"], imp["dense"], rtol=1e-6)


def test_dead_input_channels_get_the_coarsest_steps_with_gptq() -> None:
    # small activations (H ~ 1e-4) and 4 inputs never active: GPTQ's factor sets their zero diagonal to 1,
    # which must not make them look like the most important channels
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 512)
    x = 0.01 * _outlier_inputs(256, 64, 4)
    x[:, 60:] = 0.0
    data = nncodec.encode(layer, rel_step=0.3, calibration=[x], rounding="gptq", column_steps="hessian",
                          lossless=["bias"], topology=False)
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "weight"]
    assert header.quant.per_channel and header.quant.axis == 1
    steps = header.quant.scale_values()
    assert steps[60:].min() >= steps[:60].max() * (1 - 1e-6), steps


@pytest.mark.parametrize("used_rows", [5, 700, 1200, 2048])
@pytest.mark.parametrize("first_column_zero", [False, True])
def test_column_square_sums_of_tall_gradients_with_unused_rows(used_rows: int, first_column_zero: bool) -> None:
    from nncodec.quant.output_probes import _column_square_sums

    gen = torch.Generator().manual_seed(used_rows)
    g = torch.zeros(2048, 24)
    rows = torch.randperm(2048, generator=gen)[:used_rows]
    g[rows] = torch.randn(used_rows, 24, generator=gen)
    if first_column_zero:  # the quick look at the first elements finds nothing: the rows are scanned in full
        g[:, 0] = 0
    want = (g.double() ** 2).sum(dim=0)
    torch.testing.assert_close(_column_square_sums(g), want, rtol=1e-12, atol=0)

"""Data-aware rounding, rate-aware quantization and the target knob, on small layers built here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nncodec
from nncodec.errors import ConfigError
from nncodec.quant.gptq import collect_hessians, gptq_codes
from nncodec.quant.rate_aware import ecsq_codes, order0_bits
from nncodec.sensitivity import default_forward
from nncodec.tuning import BITS_TOLERANCE, FIDELITY_BRACKET
from tests.unit.helpers import no_grad_forward


def _correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    """Samples (drawn with ``seed``) of one fixed correlated distribution."""
    mix = torch.randn(d, d, generator=torch.Generator().manual_seed(d))
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) @ mix * 0.3


def _output_error(layer: torch.nn.Module, decoded: dict[str, torch.Tensor], x: torch.Tensor) -> float:
    with torch.no_grad():
        ref = layer(x)
        saved = {k: v.clone() for k, v in layer.state_dict().items()}
        layer.load_state_dict(decoded)
        got = layer(x)
        layer.load_state_dict(saved)
    return float(((got - ref) ** 2).sum() / (ref ** 2).sum())


@pytest.mark.parametrize("layer", [torch.nn.Linear(48, 24), torch.nn.Conv2d(6, 8, 3, padding=1)])
def test_gptq_lowers_layer_output_error_at_the_same_bits(layer: torch.nn.Module) -> None:
    torch.manual_seed(1)
    if isinstance(layer, torch.nn.Linear):
        calib, held_out = _correlated_inputs(256, 48, 2), _correlated_inputs(256, 48, 3)
    else:
        smooth = torch.nn.functional.avg_pool2d
        calib = smooth(torch.randn(16, 6, 12, 12), 3, 1, 1) * 3
        held_out = smooth(torch.randn(16, 6, 12, 12), 3, 1, 1) * 3
    plain = nncodec.decode(nncodec.encode(layer, bits=4))
    data, report = nncodec.encode_with_report(layer, bits=4, calibration=[calib])
    aware = nncodec.decode(data)
    assert report.rounding == "gptq"
    # same grid: 4-bit per-channel codes, identical scales
    info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(data).units if u.tensor}
    assert info["weight"]["bits"] == 4
    err_plain = _output_error(layer, plain, held_out)
    err_aware = _output_error(layer, aware, held_out)
    assert err_aware < 0.8 * err_plain, (err_aware, err_plain)
    # the weights themselves move further from the float ones: the gain is in the output only
    w = layer.weight.detach()
    assert float(((aware["weight"] - w) ** 2).sum()) > float(((plain["weight"] - w) ** 2).sum())


def test_gptq_codes_keep_the_rate_of_plain_rounding() -> None:
    lin = torch.nn.Linear(64, 32)
    h = collect_hessians(lin, [_correlated_inputs(512, 64, 4)], default_forward)["weight"]
    w = lin.weight.detach().double().numpy()
    step = 0.15 * w.std()
    near = np.rint(w / step)
    codes = gptq_codes(w, h, step, qmin=-1000, qmax=1000)

    def out_err(c: np.ndarray) -> float:
        d = torch.tensor(c * step - w)
        return float(torch.trace(d @ h @ d.T))

    assert out_err(codes) < 0.7 * out_err(near)
    assert order0_bits(codes) < 1.03 * order0_bits(near)


def test_rate_falls_as_lambda_grows() -> None:
    x = np.random.default_rng(5).laplace(size=50_000)
    rates, dists = [], []
    for lam in (0.0, 1.0, 2.0, 4.0, 8.0, 16.0):
        c = ecsq_codes(x, 0.3, lam)
        rates.append(order0_bits(c) / x.size)
        dists.append(float(np.mean((c * 0.3 - x) ** 2)))
    assert all(b < a for a, b in zip(rates, rates[1:])), rates
    assert all(b > a for a, b in zip(dists, dists[1:])), dists
    assert np.array_equal(ecsq_codes(x, 0.3, 0.0), np.rint(x / 0.3))


def test_rate_lambda_shrinks_the_stream() -> None:
    torch.manual_seed(6)
    lin = torch.nn.Linear(256, 128)
    sizes = [len(nncodec.encode(lin, rel_step=0.1, rate_lambda=lam)) for lam in (0.0, 2.0, 8.0)]
    assert sizes[0] > sizes[1] > sizes[2], sizes


def _small_model() -> tuple[torch.nn.Module, list[torch.Tensor]]:
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                                torch.nn.ReLU(), torch.nn.Linear(64, 8))
    return model, [torch.randn(128, 32), torch.randn(128, 32)]


def test_target_bits_per_param_lands_within_tolerance() -> None:
    model, batches = _small_model()
    for target in (3.0, 6.0):
        data, report = nncodec.encode_with_report(model, calibration=batches, target_bits_per_param=target)
        achieved = 8 * len(data) / sum(p.numel() for p in model.state_dict().values())
        assert abs(achieved - target) <= BITS_TOLERANCE * target, (target, achieved, report.probes)
        assert report.bits_per_param == pytest.approx(achieved)
        assert report.fidelity is not None and 0 < report.fidelity <= 1


def test_unreachable_bits_target_returns_the_closest_probe(caplog: pytest.LogCaptureFixture) -> None:
    """A rate no step reaches (headers alone cost more on 10 parameters) gives the closest probed stream and a
    warning, not a lookup error."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    with caplog.at_level("WARNING", logger="nncodec.tuning"):
        data, report = nncodec.encode_with_report(model, calibration=[torch.randn(16, 4)], target_bits_per_param=3.0)
    probed = [p["bits_per_param"] for p in report.probes]
    assert report.bits_per_param == min(probed, key=lambda b: abs(b - 3.0)) > 3.0 * (1 + BITS_TOLERANCE)
    assert report.bits_per_param == pytest.approx(8 * len(data) / 10)
    assert "closest reached" in caplog.text


def test_target_fidelity_is_reached_and_bracketed() -> None:
    model, batches = _small_model()
    target = 0.999
    data, report = nncodec.encode_with_report(model, calibration=batches, target_fidelity=target)
    assert report.fidelity >= target
    # re-measure from the stream itself
    from nncodec.tuning import output_cosine

    rebuilt = nncodec.load_model(data)  # the stream keeps its topology unit
    with torch.no_grad():
        ref = [model(b).double() for b in batches]
        got = [rebuilt(b).double() for b in batches]
    assert output_cosine(ref, got) == pytest.approx(report.fidelity, abs=1e-9)
    failing = [p["rel_step"] for p in report.probes if p["fidelity"] < target and p["rel_step"] > report.rel_step]
    assert failing and min(failing) / report.rel_step <= FIDELITY_BRACKET


def test_wrong_rate_distortion_options_are_errors() -> None:
    model, batches = _small_model()
    with pytest.raises(ConfigError, match="calibration"):
        nncodec.encode(model, rel_step=0.1, rounding="gptq")
    with pytest.raises(ConfigError, match="drop"):
        nncodec.encode(model, calibration=batches, target_fidelity=0.99, rel_step=0.1)
    with pytest.raises(ConfigError, match="one of"):
        nncodec.encode(model, calibration=batches, target_fidelity=0.99, target_bits_per_param=4)
    with pytest.raises(ConfigError, match="rate_lambda"):
        nncodec.encode(model, rel_step=0.1, rate_lambda=-1)
    with pytest.raises(ConfigError, match="rel_step, step or bits"):
        nncodec.encode(model, calibration=batches)
    with pytest.raises(ConfigError, match="nn.Module"):
        nncodec.encode(model.state_dict(), rel_step=0.1, calibration=batches)


def _embedding_model() -> tuple[torch.nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    """Token embedding -> mean over the sequence -> MLP; calibration and held-out token batches."""

    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(16, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.mlp(self.emb(ids).mean(1))

    torch.manual_seed(11)
    model = Bag()
    gen = torch.Generator().manual_seed(12)
    calib = [torch.randint(0, 50, (64, 6), generator=gen) for _ in range(4)]
    held_out = [torch.randint(0, 50, (64, 6), generator=gen) for _ in range(4)]
    return model, calib, held_out


def _relative_error(model: torch.nn.Module, decoded: dict[str, torch.Tensor], batches: list[torch.Tensor]) -> float:
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = [model(b) for b in batches]
        model.load_state_dict(decoded)
        got = [model(b) for b in batches]
        model.load_state_dict(saved)
    return sum(float(((g - r) ** 2).sum()) for g, r in zip(got, ref)) / sum(float((r ** 2).sum()) for r in ref)


def test_refinement_lowers_output_error_at_the_same_grid_and_rate() -> None:
    model, calib, held_out = _embedding_model()
    n = sum(p.numel() for p in model.state_dict().values())
    plain = nncodec.encode(model, rel_step=0.5, topology=False)
    data, report = nncodec.encode_with_report(model, rel_step=0.5, calibration=calib, rounding="nearest",
                                              refine_steps=60, refine_lr=0.01, topology=False)
    assert report.refine_steps == 60 and "refine_steps 60" in report.table()
    err_plain = _relative_error(model, nncodec.decode(plain), held_out)
    err_refined = _relative_error(model, nncodec.decode(data), held_out)
    assert err_refined < 0.7 * err_plain, (err_refined, err_plain)  # on inputs the refinement never saw
    assert 8 * len(data) / n < 1.05 * 8 * len(plain) / n
    # the same grid: every tensor keeps its step, and the embedding table's codes moved on it
    from nncodec.decoder import iter_tensors

    grids = {h.name: h.quant for h, _ in iter_tensors(plain)}
    for h, arr in iter_tensors(data):
        assert np.array_equal(h.quant.scale_values(), grids[h.name].scale_values()), h.name
        q = arr.astype(np.float64) / h.quant.scale_values()
        assert np.allclose(q, np.rint(q), atol=1e-3), h.name
    plain_emb = nncodec.decode(plain)["emb.weight"]
    moved = int((nncodec.decode(data)["emb.weight"] != plain_emb).sum())
    assert moved > 0


def test_refinement_composes_with_gptq_and_targets() -> None:
    model, calib, held_out = _embedding_model()
    gptq = nncodec.decode(nncodec.encode(model, rel_step=0.5, calibration=calib, topology=False))
    both = nncodec.decode(nncodec.encode(model, rel_step=0.5, calibration=calib, refine_steps=60, refine_lr=0.01,
                                         topology=False))
    assert _relative_error(model, both, held_out) < _relative_error(model, gptq, held_out)
    target = 3.0
    data, report = nncodec.encode_with_report(model, calibration=calib, target_bits_per_param=target,
                                              refine_steps=10, topology=False)
    achieved = 8 * len(data) / sum(p.numel() for p in model.state_dict().values())
    assert abs(achieved - target) <= BITS_TOLERANCE * target and report.refine_steps == 10


@pytest.mark.parametrize("options, match", [
    ({"refine_steps": 5}, "calibration"),
    ({"refine_steps": -1, "calibration": "C"}, "refine_steps"),
    ({"refine_steps": 2.5, "calibration": "C"}, "refine_steps"),
    ({"refine_steps": 5, "refine_lr": 0, "calibration": "C"}, "refine_lr"),
    ({"refine_steps": 5, "refine_lr": float("nan"), "calibration": "C"}, "refine_lr"),
])
def test_bad_refinement_options_are_errors(options: dict, match: str) -> None:
    model, calib, _ = _embedding_model()
    if options.get("calibration") == "C":
        options = {**options, "calibration": calib}
    with pytest.raises(ConfigError, match=match):
        nncodec.encode(model, rel_step=0.5, **options)


def test_refinement_never_returns_codes_worse_on_calibration_than_its_start() -> None:
    model, calib, _ = _embedding_model()
    start = nncodec.decode(nncodec.encode(model, rel_step=0.5, topology=False))
    err_start = _relative_error(model, start, calib)
    # a step of a whole grid step for every element: the codes it reaches are far worse than nearest rounding
    from nncodec.quant import refine_codes as rc

    data = nncodec.encode(model, rel_step=0.5, calibration=calib, rounding="nearest", refine_steps=3, refine_lr=1.0,
                          topology=False)
    assert _relative_error(model, nncodec.decode(data), calib) <= err_start
    assert rc.CHECK_BATCHES == 4 and len(calib) == 4  # the check covers every calibration batch here


def test_encode_skips_the_reports_fidelity_and_gives_the_same_stream() -> None:
    """``encode`` drops the report, so it does not decode and run the calibration batches to measure it."""
    model, batches = _small_model()
    calls: list[int] = []

    def forward(m: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(batch)

    opts = {"rel_step": 0.2, "calibration": batches, "forward": forward, "rounding": "dependent",
            "column_steps": "fisher", "topology": False}
    data = nncodec.encode(model, **opts)
    plain_calls = len(calls)
    reported, report = nncodec.encode_with_report(model, **opts)
    assert reported == data
    assert report.fidelity is not None and 0 < report.fidelity <= 1
    assert len(calls) - plain_calls == plain_calls + 2 * len(batches)  # the report's: float and decoded outputs


@pytest.mark.parametrize("options, named", [
    ({"rounding": "dependent"}, "rounding='dependent'"),
    ({"rounding": "nearest", "rate_lambda": 0.1}, "rounding='nearest', rate_lambda=0.1"),
    ({"rounding": "gptq"}, "rounding='gptq'"),
    ({"refine_steps": 2}, "refine_steps=2"),
])
def test_rounding_options_on_a_model_stored_all_lossless_are_errors(options: dict, named: str) -> None:
    model, batches = _small_model()
    with pytest.raises(ConfigError, match=f"{named} applies to no quantized tensor: every tensor is stored lossless"):
        nncodec.encode(model, rel_step=0.1, lossless=["*"], calibration=batches, **options)
    assert nncodec.encode(model, rel_step=0.1, lossless=["*"], calibration=batches)  # defaulted: no error


@pytest.mark.parametrize("options", [{"rel_step": 0.1, "lossless": ["*"]}, {"bits": 1, "lossless": ["*.bias"]}])
def test_the_default_rounding_given_explicitly_is_no_error(options: dict) -> None:
    model, batches = _small_model()
    assert nncodec.encode(model, rounding="nearest", **options) == nncodec.encode(model, **options)
    if "rel_step" in options:  # with calibration the default is GPTQ: an explicit "nearest" is a choice
        with pytest.raises(ConfigError, match="rounding='nearest' applies to no quantized tensor"):
            nncodec.encode(model, rounding="nearest", calibration=batches, **options)


def test_gptq_given_for_a_model_without_layers_it_reaches_is_an_error() -> None:
    class Table(torch.nn.Module):  # an embedding only, read without gradients: no Hessian for GPTQ
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.emb(ids).mean(1)

    model, batches = Table(), [torch.randint(0, 50, (8, 6), generator=torch.Generator().manual_seed(1))]
    with pytest.raises(ConfigError, match="rounding='gptq' applies to no quantized tensor"):
        nncodec.encode(model, rel_step=0.1, calibration=batches, rounding="gptq", forward=no_grad_forward)
    assert nncodec.encode(model, rel_step=0.1, calibration=batches, forward=no_grad_forward)  # the default rounding: no error
    assert nncodec.encode(model, rel_step=0.1, calibration=batches, rounding="dependent", forward=no_grad_forward)
    assert nncodec.encode(model, rel_step=0.1, calibration=batches, rounding="gptq")  # differentiable: the table

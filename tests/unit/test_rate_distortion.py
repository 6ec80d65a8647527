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

"""Dependent quantization with GPTQ's error feedback (rounding="dependent-gptq"): the search, the encode option."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import nncodec
from nncodec.coding.dependent_stage import codes_of
from nncodec.encoder import Encoder
from nncodec.errors import ConfigError
from nncodec.quant.dependent import dependent_levels
from nncodec.quant.dependent_gptq import dependent_gptq_levels
from nncodec.quant.gptq import inverse_factor
from nncodec.quant.rate_aware import order0_bits
from nncodec.rd_encode import Importances, RDOptions, rd_tensors
from nncodec.torch_io import tensors_from


@pytest.mark.parametrize("shape", [(1, 1), (5, 17), (12, 64), (3, 2, 3, 3), (9, 130)])
@pytest.mark.parametrize("lam", [0.0, 0.6])
def test_without_feedback_it_is_the_plain_search(shape, lam):
    rng = np.random.default_rng(sum(shape))
    x = rng.laplace(size=shape)
    n = int(np.prod(shape[1:]))
    # U = I: no feedback, every column weighs alike (one step, or one per row)
    for delta in (0.21, rng.uniform(0.05, 0.4, size=(shape[0],) + (1,) * (len(shape) - 1))):
        got = dependent_gptq_levels(x, delta, np.eye(n), lam)
        want = dependent_levels(x, delta, lam)
        assert np.array_equal(got.levels, want.levels)
        assert np.array_equal(got.codes, want.codes)
    # per-column steps: the plain search weighs every column's error in its own steps, which is the output error
    # of a diagonal U proportional to the steps (no feedback either)
    col = rng.uniform(0.05, 0.4, size=(1,) + shape[1:])
    got = dependent_gptq_levels(x, col, np.diag(2.5 * col.reshape(-1)), lam)
    assert np.array_equal(got.levels, dependent_levels(x, col, lam).levels)


def _correlated_inputs(rng: np.random.Generator, n: int, rows: int) -> np.ndarray:
    mix = np.eye(n) + 0.8 * rng.normal(size=(n, n)) / np.sqrt(n)
    return rng.normal(size=(rows, 4)) @ rng.normal(size=(4, n)) + rng.normal(size=(rows, n)) @ mix


@pytest.mark.parametrize("per_column", [False, True])
def test_feedback_lowers_the_layer_output_error_at_about_the_same_rate(per_column):
    rng = np.random.default_rng(11)
    out_f, n = 48, 64
    w = rng.normal(size=(out_f, n)) * 0.1
    x = _correlated_inputs(rng, n, 2000)
    h = x.T @ x / len(x)
    u = inverse_factor(torch.from_numpy(h), 0.01)
    delta = 0.03 * (rng.uniform(0.6, 1.6, size=(1, n)) if per_column else 1.0)

    def output_error(levels: np.ndarray) -> float:
        d = w - levels * delta
        return float(np.einsum("ij,jk,ik->", d, h, d))

    plain = dependent_levels(w, delta)
    fed = dependent_gptq_levels(w, delta, u)
    assert output_error(fed.levels) < 0.5 * output_error(plain.levels)  # measured: 0.28-0.29
    assert abs(order0_bits(fed.codes) - order0_bits(plain.codes)) / w.size < 0.1  # of ~2.9 bits per weight
    # the codes are a path of the trellis: the stage's encode derives the very same codes from the levels
    assert np.array_equal(codes_of(fed.levels.reshape(-1), n), fed.codes)


def test_rate_weight_lowers_the_rate_with_feedback():
    rng = np.random.default_rng(3)
    w = rng.laplace(size=(24, 40)) * 0.1
    x = _correlated_inputs(rng, 40, 500)
    u = inverse_factor(torch.from_numpy(x.T @ x / len(x)), 0.01)
    bits = [order0_bits(dependent_gptq_levels(w, 0.02, u, lam).codes) for lam in (0.0, 2.0)]
    assert bits[1] < 0.9 * bits[0]


class _Net(torch.nn.Module):
    """A Conv2d and two Linear layers (Hessians), and a weight used by a matmul (no Hessian)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8 * 6 * 6, 24)
        self.out = torch.nn.Linear(24, 6)
        self.mix = torch.nn.Parameter(torch.randn(6, 6) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).flatten(1)
        return self.out(torch.relu(self.fc(h))) @ self.mix


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(64, 1, 8, 8, generator=g)
    return [base.expand(64, 3, 8, 8) + 0.3 * torch.randn(64, 3, 8, 8, generator=g)]  # channels correlated


def test_encode_decode_gives_the_searched_levels_and_layers_without_a_hessian_fall_back():
    model, batches = _Net(), _batches()
    data = nncodec.encode(model, rel_step=0.3, rounding="dependent-gptq", calibration=batches, topology=False)
    decoded = nncodec.decode(data)
    info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(data).units if u.tensor}
    rd = RDOptions(calibration=batches, rounding="dependent-gptq")
    importances = Importances(model, rd)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    coded, _ = rd_tensors(model, tensors_from(state, True), Encoder(rel_step=0.3), rd, importances)
    hessians = importances.hessians()
    assert set(hessians) == {"conv.weight", "fc.weight", "out.weight"}
    for name in ("conv.weight", "fc.weight", "out.weight", "mix"):
        c = coded[name]
        assert info[name]["pipeline"][0]["id"] == "dependent"
        delta = c.quant.scales.astype(np.float64).reshape(())
        x = state[name].numpy()
        # the stream holds exactly the searched levels
        assert np.array_equal(np.asarray(decoded[name]), c.codes.astype(np.float32) * np.float32(delta)), name
        plain = dependent_levels(x, delta).levels
        if name in hessians:
            fed = dependent_gptq_levels(x, delta, importances.factor(name, hessians[name])).levels
            assert np.array_equal(c.codes, fed), name
            assert not np.array_equal(fed, plain), name  # the feedback changed the path
        else:
            assert np.array_equal(c.codes, plain), name  # no Hessian: plain dependent quantization


def test_column_steps_combine_with_the_feedback():
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(16, 512), torch.nn.ReLU(), torch.nn.Linear(512, 4))
    g = torch.Generator().manual_seed(3)
    spread = torch.logspace(-1.5, 1.0, 16)  # input channels of very different importance
    batches = [(torch.randn(256, 16, generator=g) + torch.randn(256, 1, generator=g)) * spread]
    data = nncodec.encode(model, rel_step=0.3, rounding="dependent-gptq", calibration=batches, topology=False,
                          column_steps="hessian", column_power=1.0)
    rd = RDOptions(calibration=batches, rounding="dependent-gptq", column_steps="hessian", column_power=1.0)
    importances = Importances(model, rd)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    coded, _ = rd_tensors(model, tensors_from(state, True), Encoder(rel_step=0.3), rd, importances)
    decoded = nncodec.decode(data)
    c = coded["0.weight"]
    assert c.quant.per_channel  # the test exercises per-input-channel steps
    delta = c.quant.scales.astype(np.float32).reshape(1, -1)
    assert np.array_equal(np.asarray(decoded["0.weight"]), c.codes.astype(np.float32) * delta)
    factor = importances.factor("0.weight", importances.hessians()["0.weight"])
    want = dependent_gptq_levels(state["0.weight"].numpy(), delta.astype(np.float64), factor).levels
    assert np.array_equal(c.codes, want)


def test_wrong_uses_are_config_errors():
    model, batches = _Net(), _batches()
    with pytest.raises(ConfigError, match="needs calibration"):
        nncodec.encode(model, rel_step=0.3, rounding="dependent-gptq")
    with pytest.raises(ConfigError, match="not bits="):
        nncodec.encode(model, bits=8, rounding="dependent-gptq", calibration=batches, topology=False)
    with pytest.raises(ConfigError, match="refine_steps"):
        nncodec.encode(model, rel_step=0.3, rounding="dependent-gptq", calibration=batches, refine_steps=2)

    class OnlyMatmul(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(5, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x @ self.w

    with pytest.raises(ConfigError, match="'dependent-gptq' applies to no quantized tensor"):
        nncodec.encode(OnlyMatmul(), rel_step=0.3, rounding="dependent-gptq", calibration=[torch.randn(4, 5)],
                       topology=False)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="factor"):
        dependent_gptq_levels(rng.normal(size=(3, 4)), 0.1, np.eye(5))
    with pytest.raises(ConfigError, match="rank >= 2"):
        dependent_gptq_levels(rng.normal(size=4), 0.1, np.eye(4))
    with pytest.raises(ConfigError, match="2\\*\\*31"):
        dependent_gptq_levels(np.full((2, 3), 1e9), 1e-3, np.eye(3))
    # feedback that drives a later value past the code words is caught too
    u = np.eye(3)
    u[0, 1:] = -1e12
    with pytest.raises(ConfigError, match="feedback-adjusted"):
        dependent_gptq_levels(np.array([[0.4, 0.0, 0.0]]), 1.0, u)
    with pytest.raises(ConfigError, match="rate weight"):
        dependent_gptq_levels(rng.normal(size=(3, 4)), 0.1, np.eye(4), lam=-1.0)


def test_the_target_search_takes_the_feedback_rounding():
    model, batches = _Net(), _batches()
    data, report = nncodec.encode_with_report(model, rounding="dependent-gptq", calibration=batches, topology=False,
                                              target_bits_per_param=3.0)
    assert report.rounding == "dependent-gptq"
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(8 * len(data) / n_params - 3.0) <= 0.02 * 3.0 + 1e-9  # the search's tolerance
    info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(data).units if u.tensor}
    assert info["fc.weight"]["pipeline"][0]["id"] == "dependent"

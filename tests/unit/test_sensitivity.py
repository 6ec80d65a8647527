"""Calibrated step allocation: sensitive tensors get finer steps, and that buys fidelity per bit."""

import math

import numpy as np
import pytest
import torch
from torch import nn

import nncodec
from nncodec.sensitivity import factors_from_sensitivity, output_sensitivity


class TwoBranches(nn.Module):
    """out = 10 * loud(x) + 3 * mid(x) + quiet(x); ``unused`` never touches the output."""

    def __init__(self) -> None:
        super().__init__()
        self.loud = nn.Linear(64, 32)
        self.mid = nn.Linear(64, 32)
        self.quiet = nn.Linear(64, 32)
        self.unused = nn.Linear(64, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * self.loud(x) + 3 * self.mid(x) + self.quiet(x)


@pytest.fixture()
def model() -> TwoBranches:
    torch.manual_seed(0)
    return TwoBranches()


def batches(n: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 64, generator=g) for _ in range(n)]


def test_sensitivity_orders_tensors_and_restores_the_model(model: TwoBranches) -> None:
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sens = output_sensitivity(model, batches(), progress=False)
    assert set(sens) == {"loud.weight", "mid.weight", "quiet.weight", "unused.weight"}  # rank >= 2 only
    assert sens["loud.weight"] > 50 * sens["quiet.weight"] > 0
    assert sens["unused.weight"] == 0
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_factors_have_unit_geometric_mean_and_a_floor(model: TwoBranches) -> None:
    scales = nncodec.calibrate_step_scales(model, batches(), progress=False)
    sizes = {k: model.state_dict()[k].numel() for k in scales}
    log_mean = sum(sizes[k] * math.log(f) for k, f in scales.items()) / sum(sizes.values())
    assert abs(log_mean) < 1e-9
    assert scales["loud.weight"] < scales["mid.weight"] < scales["quiet.weight"] < scales["unused.weight"]
    # equal slopes: step ratio = inverse gain ratio (sqrt of the inverse sensitivity ratio)
    assert scales["quiet.weight"] / scales["loud.weight"] == pytest.approx(10, rel=0.2)
    # the untouched tensor is floored at 1/100 of the median density (mid's): 10x the median's step
    assert scales["unused.weight"] / scales["mid.weight"] == pytest.approx(10, rel=1e-6)


def test_calibrated_steps_give_lower_output_error_for_fewer_bits(model: TwoBranches) -> None:
    scales = nncodec.calibrate_step_scales(model, batches(), progress=False)
    test_x = batches(1, seed=99)[0]
    with torch.no_grad():
        ref = model(test_x)

    def error_and_size(**options: object) -> tuple[float, int]:
        data = nncodec.encode(model, **options)
        other = TwoBranches()
        nncodec.load_into(other, data)
        with torch.no_grad():
            return float(((other(test_x) - ref) ** 2).mean()), len(data)

    # one unit per tensor: the sizes compare the steps, not how the encoder groups tensors of each stream
    plain_err, plain_size = error_and_size(rel_step=0.05, group_tensors=False)
    cal_err, cal_size = error_and_size(rel_step=0.05, step_scales=scales, group_tensors=False)
    assert cal_size <= 1.05 * plain_size
    assert cal_err < 0.5 * plain_err


def test_exact_names_win_over_patterns() -> None:
    rng = np.random.default_rng(0)
    a = {"emb.w": rng.normal(size=(64, 64)).astype(np.float32)}
    enc = nncodec.Encoder(rel_step=0.1, step_scales={"emb*": 4.0, "emb.w": 0.5})
    _, report = enc.encode(nncodec.encoder.numpy_tensors(a))
    std = float(np.std(a["emb.w"].astype(np.float64)))
    assert report.tensors[0].max_abs_error <= 0.5 * 0.1 * std / 2 * 1.0001


def test_bad_calibration_input_is_a_config_error(model: TwoBranches) -> None:
    with pytest.raises(nncodec.ConfigError, match="at least one batch"):
        nncodec.calibrate_step_scales(model, [])
    with pytest.raises(nncodec.ConfigError, match="probe_rel_step"):
        nncodec.calibrate_step_scales(model, batches(), probe_rel_step=0)
    with pytest.raises(nncodec.ConfigError, match="no such tensors"):
        nncodec.calibrate_step_scales(model, batches(), names=["nope.weight"])
    with pytest.raises(nncodec.ConfigError, match="forward"):
        nncodec.calibrate_step_scales(model, batches(), forward=lambda m, b: "text")
    with pytest.raises(nncodec.ConfigError, match="all zero"):
        nncodec.calibrate_step_scales(model, batches(), forward=lambda m, b: torch.zeros(3))
    with pytest.raises(nncodec.ConfigError, match="floor"):
        factors_from_sensitivity({"a": 1.0}, {"a": 4}, floor=0)


def test_fisher_step_scales_agree_with_the_measured_ones(model: TwoBranches) -> None:
    from nncodec.quant.column_steps import fisher_importance
    from nncodec.sensitivity import fisher_step_scales

    names = ["loud.weight", "mid.weight", "quiet.weight", "unused.weight"]
    fisher = fisher_importance(model, batches(), default_forward_grad, names, probes=8)
    scales = fisher_step_scales(model, fisher)
    assert "unused.weight" not in fisher  # no gradient: zero importance, left out
    measured = nncodec.calibrate_step_scales(model, batches(), progress=False, names=names)
    for name in names:
        assert scales[name] == pytest.approx(measured[name], rel=0.15), name
    assert scales["quiet.weight"] / scales["loud.weight"] == pytest.approx(10, rel=0.2)
    # zero importance: the floor factor (10x the median's step before normalization), as measured
    assert scales["unused.weight"] == max(scales.values()) > scales["quiet.weight"]
    zero = {**fisher, "unused.weight": np.zeros(64)}
    assert fisher_step_scales(model, zero) == scales


class TiedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.mid(self.wte(ids)))


def test_fisher_step_scales_give_tied_aliases_the_factor_and_refuse_unknown_names() -> None:
    from nncodec.quant.column_steps import fisher_importance
    from nncodec.sensitivity import fisher_step_scales

    torch.manual_seed(0)
    model = TiedHead()
    ids = [torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(2))]
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    assert names == ["wte.weight", "mid.weight"]  # the tied head is listed once
    fisher = fisher_importance(model, ids, default_forward_grad, names, probes=4)
    scales = fisher_step_scales(model, fisher)
    assert set(scales) == {"wte.weight", "head.weight", "mid.weight"}
    assert scales["head.weight"] == scales["wte.weight"] != 1.0
    # the importance given under the other alias counts the same
    moved = {"head.weight": fisher["wte.weight"], "mid.weight": fisher["mid.weight"]}
    assert fisher_step_scales(model, moved) == scales
    with pytest.raises(nncodec.ConfigError, match="lm_head.weight"):
        fisher_step_scales(model, {**fisher, "lm_head.weight": np.ones(8)})


def default_forward_grad(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x)


def test_encode_with_fisher_step_scales_is_one_pass_and_the_same_stream(model: TwoBranches) -> None:
    from nncodec.quant.column_steps import fisher_importance
    from nncodec.sensitivity import fisher_step_scales

    calls: list[int] = []

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(x)

    opts = {"rel_step": 0.2, "calibration": batches(), "forward": forward, "column_steps": "fisher",
            "rounding": "nearest", "topology": False}
    data = nncodec.encode(model, step_scales="fisher", **opts)
    assert len(calls) == len(batches())  # the Fisher pass only: no forward per tensor
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    scales = fisher_step_scales(model, fisher_importance(model, batches(), forward, names, probes=4))
    assert nncodec.encode(model, step_scales=scales, **opts) == data
    with pytest.raises(nncodec.ConfigError, match="fisher.*calibration"):
        nncodec.encode(model, rel_step=0.2, step_scales="fisher")
    with pytest.raises(nncodec.ConfigError, match="step_scales"):
        nncodec.encode(model, rel_step=0.2, step_scales="fischer", calibration=batches(), rounding="nearest",
                       column_steps="fisher")

"""Quantizing a small transformer for fidelity: per-layer activation ranges in shared groups, range fits,
per-group bit widths, per-channel kernel steps, distillation and the search's fidelity floor."""

import copy
import math

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.quant.layers import quantize_model
from nncodec.search import FidelityTask, SearchConfig, SearchSpace, Task, run_search
from tests.search.graph_models import TinyTransformer

SHARE = {"blocks.*.ffn_out": "ffn_out", "blocks.*.ffn_in": "ffn_in",
         "blocks.*.attention.*": "qkv", "blocks.*.attention_out": "attention_out", "blocks.*.norm*": "norms"}
TOKENS = torch.randint(0, 50, (160, 9), generator=torch.Generator().manual_seed(5))


def _reference(outlier_block: bool = False) -> nn.Module:
    torch.manual_seed(0)
    ref = TinyTransformer().eval()
    if outlier_block:  # the second block's FFN works at 16x the first one's scale (BERT-like outliers)
        with torch.no_grad():
            ref.blocks[1].ffn_in.weight.mul_(16)
            ref.blocks[1].ffn_in.bias.mul_(16)
    return ref


def _output_error(ref: nn.Module, plan) -> float:
    q = quantize_model(copy.deepcopy(ref), plan)
    with torch.no_grad():
        want, got = ref(TOKENS), q(TOKENS)
    return float((got - want).pow(2).mean() / want.pow(2).mean())


def _space(ref: nn.Module, **kw) -> SearchSpace:
    return SearchSpace.from_model(ref, TOKENS[:1], TOKENS[:64], kernels=("quantized_bits({b},{i},1)",),
                                  share=SHARE, **kw)


def test_shared_choice_keeps_each_layers_own_activation_range():
    ref = _reference(outlier_block=True)
    space = _space(ref, bits={"activation": {"ffn_in": (8,)}})  # the GELU after ffn_in: its output choice
    (spec,) = space.parameters()["ffn_in.activation"]
    plan = space.plan_from({"ffn_in.activation": spec})
    small, large = plan.layers["blocks.0.act"].activation, plan.layers["blocks.1.act"].activation
    assert small != large  # same template and bits, each layer's own integer bits
    assert small.startswith("quantized_bits(8,") and large.startswith("quantized_bits(8,")
    # one range for both (the first layer's, as before) clips the second block's GELU outputs
    one_range = space.plan_from({"ffn_in.activation": spec})
    one_range.layers["blocks.1.act"] = one_range.layers["blocks.0.act"]
    assert _output_error(ref, plan) < 0.5 * _output_error(ref, one_range)


@pytest.mark.parametrize("bad", [{"activation": {"no_such_group": (8,)}}, {"weights": {"dense": (4,)}}])
def test_bits_keys_must_name_a_kind_or_a_group(bad):
    with pytest.raises(ConfigError):
        _space(_reference(), bits=bad)


def test_bits_per_share_group_win_over_the_kind():
    space = _space(_reference(), bits={"activation": {"dense": (4, 8), "ffn_out": (16,)}})
    params = space.parameters()
    assert params["ffn_out.activation"] == [s for s in params["ffn_out.activation"] if s.startswith("quantized_bits(16,")]
    assert {s.split(",")[0] for s in params["qkv.activation"]} == {"quantized_bits(4", "quantized_bits(8"}
    with pytest.raises(ConfigError, match="activation_range"):
        _space(_reference(), activation_range="p99")


def test_mse_range_fit_has_the_least_activation_error():
    """On outputs with a few large values, the MSE fit trades clipping for resolution: its 4-bit GELU and
    norm outputs are closer to the reference's than with the percentile or the max fit."""
    ref = _reference(outlier_block=True)
    with torch.no_grad():
        ref.blocks[0].ffn_in.weight[:2].mul_(30)  # two outlier channels
    errors = {}
    for fit in ("percentile", "max", "mse"):
        space = _space(ref, activation_range=fit, bits={"activation": {"ffn_in": (4,), "norms": (4,)}},
                       layer_outputs=False)
        params = space.parameters()
        plan = space.plan_from({k: v[0] for k, v in params.items() if k.endswith(".activation")})
        errors[fit] = _output_error(ref, plan)
    assert errors["mse"] <= min(errors["percentile"], errors["max"]) * 1.001
    assert errors["mse"] < 0.8 * max(errors["percentile"], errors["max"])


def test_per_channel_kernel_steps_lower_the_output_error():
    ref = _reference()
    with torch.no_grad():  # output channels at scales 1/8 .. 1 (per-channel steps follow them)
        for block in ref.blocks:
            for lin in (block.ffn_in, block.ffn_out, block.attention_out):
                lin.weight.mul_(torch.logspace(-3, 0, lin.out_features, base=2).unsqueeze(1))
    names = [n for n, m in ref.named_modules() if isinstance(m, nn.Linear) and n != "fc"]
    per_tensor = {"layers": {n: {"kernel": "quantized_bits(4,0,1)"} for n in names}}
    per_channel = {"layers": {n: {"kernel": "quantized_bits(4,0,1,alpha='auto')"} for n in names}}
    assert _output_error(ref, per_channel) < 0.5 * _output_error(ref, per_tensor)


def _quantized_tiny(ref: nn.Module) -> nn.Module:
    names = [n for n, m in ref.named_modules() if isinstance(m, nn.Linear) and n != "fc"]
    plan = {"layers": {n: {"kernel": "quantized_bits(2,0,1,alpha='auto')"} for n in names}}
    return quantize_model(copy.deepcopy(ref), plan)


def test_distillation_raises_the_fidelity_of_a_quantized_transformer():
    ref = _reference()
    task = FidelityTask(ref, TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, lr=1e-3,
                        lr_decay=0.8, batch_size=16)
    model = _quantized_tiny(ref)
    before = task.evaluate(model)
    torch.manual_seed(0)
    for epoch in range(6):
        task.train_epoch(model, epoch, proxy=False)
    after = task.evaluate(model)
    assert before < 0.9 and after > before + 0.5 * (1 - before)  # 0.86 -> 0.98
    opt = task._optimizer(model)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.8 ** 5)  # the decayed rate of the last epoch


@pytest.mark.parametrize("kw", [{"lr_decay": 0.0}, {"lr_decay": 1.5}, {"min_fidelity": 1.5}, {"lr": -1.0},
                                {"min_fidelity": True}, {"lr_decay": True}])
def test_fidelity_task_options_are_checked(kw):
    with pytest.raises(ConfigError):
        FidelityTask(_reference(), TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, **kw)


class _BitsTask(Task):
    """Scores 1.0 for candidates whose kernels are all 8-bit, else 0.99; trains nothing."""

    def __init__(self, floor):
        self.min_score = floor

    def train_epoch(self, model, epoch, proxy):
        pass

    def evaluate(self, model):
        bits = [m.kernel_quantizer.bits for m in model.modules() if getattr(m, "kernel_quantizer", None) is not None]
        return 1.0 if bits and min(bits) >= 8 else 0.99


@pytest.mark.parametrize("floor", [None, 0.995])
def test_search_returns_a_plan_meeting_the_floor_when_a_trial_did(tmp_path, floor):
    ref = _reference()
    space = SearchSpace.from_model(ref, TOKENS[:1], TOKENS[:32], kernels=("quantized_bits({b},{i},1)",),
                                   bits={"kernel": {"dense": (2, 8), "embedding": (8,)}}, share={"blocks.*": "all"},
                                   widths=(1.0,), layer_outputs=False, module_outputs=False)
    cfg = SearchConfig(controller="random", n_trials=6, final_epochs=0, out_dir=str(tmp_path), progress=False,
                       study_name="floor", seed=1)
    result = run_search(ref, space, _BitsTask(floor), cfg)
    scores = {round(t["accuracy"], 2) for t in result.trials if "accuracy" in t}
    assert scores == {0.99, 1.0}  # both kinds of plan were tried
    kernels = {lp.kernel for lp in result.plan.layers.values() if lp.kernel and "(2," in lp.kernel}
    if floor is None:  # a plan with 2-bit kernels wins the score on energy
        assert result.accuracy == pytest.approx(0.99) and kernels
    else:
        assert result.accuracy == pytest.approx(1.0) and not kernels


class _Masked(nn.Module):
    """An output with -inf entries (an attention mask before its softmax) and finite values up to 3."""

    def forward(self, x):
        return torch.where(x > 0, torch.full_like(x, -math.inf), x.clamp(min=-3.0))


@pytest.mark.parametrize("fit", ["percentile", "max", "mse"])
def test_activation_ranges_are_fitted_on_finite_values(fit):
    from nncodec.search.space import _RANGE_FITS, _activation_samples

    model = nn.Sequential(nn.Identity(), _Masked())
    seen = _activation_samples(model, ["1"], torch.randn(64, 32))
    assert torch.isfinite(seen["1"].values).all() and math.isfinite(seen["1"].percentile)
    assert _RANGE_FITS[fit](seen["1"], "quantized_bits({b},{i},1)", 8) <= 2  # |value| <= 3 fits 2 integer bits


def _hidden_error(ref: nn.Module, model: nn.Module, name: str) -> float:
    """Relative MSE of ``model``'s output of module ``name`` against the reference's, on the evaluation tokens."""
    outs = {}
    for key, m in (("ref", ref), ("model", model)):
        handle = m.get_submodule(name).register_forward_hook(lambda mod, a, out, key=key: outs.__setitem__(key, out))
        with torch.no_grad():
            m.eval()(TOKENS[120:])
        handle.remove()
    return float((outs["model"] - outs["ref"]).pow(2).mean() / outs["ref"].pow(2).mean())


def test_hidden_layer_distillation_matches_hidden_states_closer_than_output_only():
    ref = _reference()
    errors = {}
    for key, kw in (("output", {}), ("hidden", {"hidden_layers": ["blocks.?"]})):
        task = FidelityTask(ref, TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, lr=3e-3,
                            batch_size=16, **kw)
        model = copy.deepcopy(ref)  # the blocks' kernels perturbed by noise of their own spread
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.startswith("blocks") and p.dim() == 2:
                    p.add_(torch.randn(p.shape, generator=gen) * p.std())
        before = _hidden_error(ref, model, "blocks.1")
        torch.manual_seed(0)
        for epoch in range(10):
            task.train_epoch(model, epoch, proxy=False)
        errors[key] = _hidden_error(ref, model, "blocks.1")
    assert task.hidden_names == ["blocks.0", "blocks.1"]
    # the 3-class output constrains the 32-wide hidden states little (0.33 -> 0.30); matching them does (0.10)
    assert errors["hidden"] < 0.5 * errors["output"] and errors["hidden"] < 0.5 * before


def test_hidden_targets_cached_or_recomputed_train_alike(monkeypatch):
    import nncodec.search.task as task_module

    ref = _reference()
    weights = []
    for limit in (task_module.HIDDEN_CACHE_BYTES, 0):  # 0: the reference runs again for every batch
        monkeypatch.setattr(task_module, "HIDDEN_CACHE_BYTES", limit)
        task = FidelityTask(ref, TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, lr=1e-3,
                            batch_size=16, hidden_layers=["blocks.1.ffn_out", "embedding"], hidden_weight=2.0)
        assert (task.hidden_targets is not None) == (limit > 0)
        model = _quantized_tiny(ref)
        torch.manual_seed(0)
        task.train_epoch(model, 0, proxy=False)
        weights.append(model.blocks[1].ffn_out.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-6)


@pytest.mark.parametrize("kw", [{"hidden_layers": ["blocks.*.no_such_layer"]}, {"hidden_layers": "blocks.0"},
                                {"hidden_weight": 1.0}, {"hidden_layers": ["blocks.0"], "hidden_weight": 0.0},
                                {"warmup_steps": -1}, {"warmup_steps": 2.5}, {"dropout": "no"}])
def test_hidden_layer_and_schedule_options_are_checked(kw):
    with pytest.raises(ConfigError, match="no_such_layer" if "no_such_layer" in str(kw) else None):
        FidelityTask(_reference(), TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, **kw)


def test_hidden_layer_of_another_shape_is_named():
    ref = _reference()
    task = FidelityTask(ref, TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out,
                        hidden_layers=["blocks.0.ffn_in"])
    torch.manual_seed(1)
    narrow = TinyTransformer(ffn=32)  # the FFN half as wide: same names, other hidden shape
    with pytest.raises(ConfigError, match="blocks.0.ffn_in"):
        task.train_epoch(narrow, 0, proxy=False)
    other = nn.Sequential(nn.Embedding(50, 32), nn.Flatten(), nn.Linear(32 * 9, 3))  # no such module
    with pytest.raises(ConfigError, match="blocks.0.ffn_in"):
        task.train_epoch(other, 0, proxy=False)


def test_warmup_ramps_the_rate_and_dropout_false_turns_off_dropout_only():
    ref = _reference()
    task = FidelityTask(ref, TOKENS[:120], TOKENS[120:], output_fn=lambda out, inputs: out, lr=1e-3, lr_decay=0.5,
                        batch_size=16, warmup_steps=20, dropout=False)
    model = nn.Sequential(_quantized_tiny(ref), nn.Dropout(0.5))
    modes = {"block": [], "dropout": []}
    model[0].blocks[0].register_forward_hook(lambda m, a, out: modes["block"].append(m.training))
    model[1].register_forward_hook(lambda m, a, out: modes["dropout"].append(m.p))
    before = model[0].blocks[0].ffn_in.weight.detach().clone()
    task.train_epoch(model, 0, proxy=False)  # 8 steps of 20 warm-up steps
    assert task._optimizer(model).param_groups[0]["lr"] == pytest.approx(1e-3 * 8 / 20)
    # dropout off; the fake-quant layers in training mode, so their straight-through gradients reach the kernels
    assert modes["dropout"] and not any(modes["dropout"]) and all(modes["block"]) and model[1].p == 0.5
    assert not torch.equal(before, model[0].blocks[0].ffn_in.weight)
    for epoch in (1, 2):  # steps 9..24: warm-up done within epoch 2, the epoch's decayed rate
        task.train_epoch(model, epoch, proxy=False)
    assert task._optimizer(model).param_groups[0]["lr"] == pytest.approx(1e-3 * 0.5 ** 2)


def test_hidden_layers_of_a_tuple_returning_reference_recomputed_and_hooks_removed(monkeypatch):
    """The recomputed teacher goes through ``output_fn`` (a reference returning a tuple); a candidate lacking a
    hidden layer gets no hook left behind; a generator of patterns is read once; a sequence-first layer is named."""
    import nncodec.search.task as task_module

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x))), x

    torch.manual_seed(0)
    ref, x = Pair(), torch.randn(40, 6)
    monkeypatch.setattr(task_module, "HIDDEN_CACHE_BYTES", 0)
    task = FidelityTask(ref, x[:30], x[30:], output_fn=lambda out, inputs: out[0], batch_size=8,
                        hidden_layers=(n for n in ["a"]))  # a generator
    assert task.hidden_names == ["a"] and task.hidden_targets is None
    model = copy.deepcopy(ref)
    task.train_epoch(model, 0, proxy=False)  # the reference's tuple output went through output_fn
    partial = nn.Module()
    partial.b = nn.Linear(6, 3)
    task2 = FidelityTask(ref, x[:30], x[30:], output_fn=lambda out, inputs: out[0], hidden_layers=["b", "a"])
    with pytest.raises(ConfigError, match="'a'"):
        task2.train_epoch(partial, 0, proxy=False)
    assert not partial.b._forward_hooks
    with pytest.raises(ConfigError, match="hidden_layers"):
        FidelityTask(ref, x[:30], x[30:], output_fn=lambda out, inputs: out[0], hidden_layers=None)

    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn, self.out = nn.GRU(6, 4), nn.Linear(4, 3)

        def forward(self, x):  # x: (batch, time, 6); the GRU runs sequence-first
            return self.out(self.rnn(x.transpose(0, 1))[0][-1])

    seq = torch.randn(12, 5, 6)
    monkeypatch.setattr(task_module, "HIDDEN_CACHE_BYTES", 2 ** 20)
    with pytest.raises(ConfigError, match="'rnn'"):
        FidelityTask(SequenceFirst(), seq[:8], seq[8:], hidden_layers=["rnn"])

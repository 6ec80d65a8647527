"""The seed methods beyond Optuna: differentiable joint pruning + quantization, greedy bit assignment,
the iterative schedule with the proximal pruner, hardware co-design (small digits CNN, seconds each)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from nncodec.energy.estimate import estimate_energy
from nncodec.errors import ConfigError
from nncodec.quant.base import get_quantizer
from nncodec.quant.layers import quantize_model
from nncodec.quant.plan import Plan
from nncodec.search import SearchConfig, run_search
from nncodec.search.candidate import build_candidate
from nncodec.search.differentiable import DifferentiableSearch, SoftQuantizer
from nncodec.search.surrogate import CostSurrogate, base_plan

from . import digits

SETTINGS = {"min_sram_size": 2 ** 27, "weights_memory": "sram", "activations_memory": "sram", "io_traffic": False,
            "sparsity_aware": True}


@pytest.fixture(scope="module")
def reference():
    return digits.trained_reference(epochs=4)


@pytest.fixture(scope="module")
def space(reference):
    return digits.space(reference, widths=(1.0,))


@pytest.fixture(scope="module")
def surrogate(reference, space):
    return CostSurrogate(reference, space, SETTINGS)


# -- differentiable ------------------------------------------------------------------------------
SPECS = ["quantized_bits(2,0,1)", "quantized_bits(4,0,1)", "ternary(alpha='auto_po2')", "quantized_bits(8,0,1)"]


@pytest.mark.parametrize("training", [False, True])
def test_soft_quantizer_at_a_one_hot_level_is_the_hard_quantizer(training):
    torch.manual_seed(0)
    x = torch.randn(64, 9) * 0.7
    soft = SoftQuantizer(SPECS).train(training)
    mixed = soft(x)
    for j, spec in enumerate(SPECS):
        soft.set_one_hot(j)
        assert torch.equal(soft(x), get_quantizer(spec).quantize(x)), spec
    # the uniform mixture is none of the levels
    assert all(not torch.equal(mixed, get_quantizer(s).quantize(x)) for s in SPECS)


def test_soft_quantizer_gradient_reaches_the_level_weights():
    soft = SoftQuantizer(SPECS).train()
    x = torch.randn(32) * 0.5
    (soft(x) - x).pow(2).sum().backward()
    assert soft.logits.grad is not None and soft.logits.grad.abs().sum() > 0


def test_surrogate_energy_equals_the_energy_model_at_one_hot_choices(reference, space, surrogate):
    rng = random.Random(0)
    for _ in range(4):
        kp, ap, kernels, acts = {}, {}, {}, {}
        for layer in space.layers:
            k = rng.randrange(len(layer.kernel))
            kernels[layer.name] = layer.kernel[k]
            kp[layer.name] = torch.nn.functional.one_hot(torch.tensor(k), len(layer.kernel)).float()
            if layer.activation:
                a = rng.randrange(len(layer.activation))
                acts[layer.activation_module] = layer.activation[a]
                ap[layer.activation_module] = torch.nn.functional.one_hot(torch.tensor(a), len(layer.activation)).float()
        real = estimate_energy(reference, space.input_shape, base_plan(space, kernels, acts), **SETTINGS).total_pj
        assert float(surrogate.energy(kp, {}, ap)) == pytest.approx(real, abs=2.0)  # qtools rounds each term


def _soft_search(reference, space, surrogate, lam: float, epochs: int = 2) -> DifferentiableSearch:
    task = digits.task(proxy_fraction=0.2)
    search = DifferentiableSearch(reference, space, task, {"lambda": lam, "arch_lr": 0.1}, "energy", seed=0)
    search.set_surrogate(surrogate)
    for _ in range(epochs):
        search.train_epoch(epochs)
    return search


def test_cost_weight_lowers_the_expected_energy(reference, space, surrogate):
    free = _soft_search(reference, space, surrogate, lam=0.0)
    costly = _soft_search(reference, space, surrogate, lam=4.0)
    with torch.no_grad():
        assert float(costly.expected_cost()) < 0.8 * float(free.expected_cost())


def test_hardened_plan_is_a_valid_plan_of_the_space(reference, space, surrogate):
    search = _soft_search(reference, space, surrogate, lam=2.0)
    plan = search.hardened_plan()
    again = Plan.from_json(plan.to_json())
    assert again.to_dict() == plan.to_dict()
    plan.check_names([n for n, _ in reference.named_modules() if n])
    for layer in space.layers:
        lp = plan.resolve(layer.name)
        assert lp.kernel in layer.kernel and lp.bias in layer.bias
        if layer.activation:
            assert plan.resolve(layer.activation_module).activation in layer.activation
    masks = search.masks()
    state = search.plain_state()
    start = digits.digits_cnn()
    start.load_state_dict(state)  # the reference's layout
    model = build_candidate(start, space.input_shape, plan)
    from nncodec.prune.unstructured import apply_masks, sparsity

    apply_masks(model, masks)
    for name, mask in masks.items():
        assert sparsity(model)[name] == pytest.approx(1 - float(mask.mean()))
        par = search._par(name)
        w = search.model.get_submodule(name).parametrizations.weight.original.detach()
        assert torch.equal(mask.bool(), w.abs() > par.log_t.exp())
    assert sum(1 - float(m.mean()) for m in masks.values()) > 0  # the threshold pruned something
    assert estimate_energy(model, space.input_shape, **SETTINGS).total_pj < \
        estimate_energy(reference, space.input_shape, reference=("int8", "int16"), **SETTINGS).total_pj


def test_differentiable_controller_end_to_end(reference, space, tmp_path):
    cfg = SearchConfig(controller="differentiable", final_epochs=1, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       options={"epochs": 1, "lambda": 1.0})
    result = run_search(reference, space, digits.task(proxy_fraction=0.2), cfg)
    summary = result.summary()
    assert Plan.from_dict(summary["result"]["plan"]).to_dict() == result.plan.to_dict()
    assert result.decoded_accuracy == pytest.approx(result.accuracy, abs=0.01)
    assert result.energy_pj < result.reference_energy_pj
    assert len(result.trials) == 1 and json.loads((tmp_path / "plan.json").read_text())


def test_options_that_do_not_apply_are_errors():
    with pytest.raises(ConfigError, match="lambda"):
        SearchConfig(controller="tpe", options={"lambda": 1.0})
    with pytest.raises(ConfigError, match="schedule"):
        SearchConfig(schedule="sometimes")
    with pytest.raises(ConfigError, match="ClassifierTask"):
        from nncodec.search.task import FunctionTask

        DifferentiableSearch(digits.digits_cnn(), digits.space(digits.digits_cnn(), widths=(1.0,)),
                             FunctionTask(lambda m, e: None, lambda m: 0.0), {}).train_epoch(1)


# -- greedy --------------------------------------------------------------------------------------
PENALTY = {"0": 0.30, "2": 0.03, "5": 0.12}   #: accuracy lost by a layer's kernel at 2 bits (4 bits: 2/3 of it)


def _scripted_accuracy(model) -> float:
    """A task whose accuracy depends only on the kernels' bits, so the sensitivities are known."""
    acc = 0.9
    for name, pen in PENALTY.items():
        bits = model.get_submodule(name).kernel_quantizer.bits
        acc -= pen * (8 - bits) / 6
    return acc


def _scripted_task():
    from nncodec.search.task import FunctionTask

    return FunctionTask(lambda model, epoch: None, _scripted_accuracy)


def test_greedy_order_follows_the_measured_sensitivities(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="greedy", n_trials=20, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       options={"max_accuracy_drop": 1.0, "knobs": ["kernel"]})
    searcher = _Searcher(reference, space, _scripted_task(), cfg, None)
    searcher.search_plan()
    info = searcher.outcome.extra["greedy"]
    for key, knob in info["knobs"].items():
        assert knob["kept"] == pytest.approx((0.9 - PENALTY[key.split(".")[0]]) / 0.9)
        assert 0 < knob["energy_share"] < 1
    by_weight = sorted(info["knobs"], key=lambda k: -info["knobs"][k]["weight"])
    assert info["order"] == [k for k in by_weight for _ in range(2)]  # two steps each: 8 -> 4 -> ternary bits


def test_greedy_freezes_a_layer_that_loses_accuracy_and_stops_at_the_cap(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="greedy", n_trials=20, out_dir=str(tmp_path / "a"), energy_settings=SETTINGS,
                       options={"max_accuracy_drop": 0.1, "knobs": ["kernel"]})
    searcher = _Searcher(reference, space, _scripted_task(), cfg, None)
    plan, rows = searcher.search_plan()
    assert get_quantizer(plan.resolve("0").kernel).bits == 8  # 4 bits would cost 0.2 > 0.1: frozen at 8
    assert plan.resolve("2").kernel.startswith("ternary")
    assert [r["accepted"] for r in rows if r["step"] == "lower 0.kernel"] == [False]
    steps = [r for r in rows if r["step"].startswith("lower") and r["accepted"]]
    cap = (steps[0]["energy_pj"] + steps[1]["energy_pj"]) / 2  # met by the second step, not the first
    capped = SearchConfig(controller="greedy", n_trials=20, out_dir=str(tmp_path / "b"), energy_settings=SETTINGS,
                          max_energy_pj=cap, options={"max_accuracy_drop": 0.1, "knobs": ["kernel"]})
    searcher = _Searcher(reference, space, _scripted_task(), capped, None)
    plan, rows = searcher.search_plan()
    lowered = [r for r in rows if r["step"].startswith("lower")]
    assert len(lowered) == 2 and lowered[-1]["energy_pj"] <= cap


def test_greedy_keeps_the_tasks_floor(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher

    task = _scripted_task()
    task.min_score = 0.85  # tighter than the drop of 1.0
    cfg = SearchConfig(controller="greedy", n_trials=20, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       options={"max_accuracy_drop": 1.0, "knobs": ["kernel"]})
    searcher = _Searcher(reference, space, task, cfg, None)
    _, rows = searcher.search_plan()
    lowered = [r for r in rows if r["step"].startswith("lower")]
    assert any(not r["accepted"] for r in lowered)
    assert all(r["accuracy"] >= 0.85 for r in lowered if r["accepted"])


# -- proximal pruner and iterative schedule -------------------------------------------------------
def _fit_with_prox(strength: float):
    from nncodec.prune.proximal import ProximalPruner

    torch.manual_seed(0)
    x = torch.randn(256, 20)
    true_w = torch.zeros(1, 20)
    true_w[0, :4] = torch.tensor([1.0, -2.0, 1.5, 0.8])  # 4 useful inputs of 20
    y = x @ true_w.T
    model = torch.nn.Sequential(torch.nn.Linear(20, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with ProximalPruner(model, strength) as prox:
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    loss = float(torch.nn.functional.mse_loss(model(x), y))
    return model, prox, loss


def test_proximal_pruner_zeroes_what_the_penalty_allows():
    plain, _, _ = _fit_with_prox(0.0)
    model, prox, loss = _fit_with_prox(0.05)
    w = model[0].weight.detach()
    assert int((plain[0].weight == 0).sum()) == 0
    assert torch.equal((w[0, 4:] == 0), torch.ones(16, dtype=torch.bool))  # useless inputs: exactly zero
    assert bool((w[0, :4] != 0).all()) and loss < 0.05                     # useful ones kept
    assert torch.equal(prox.masks()["0"], (w != 0).float())
    stronger, _, _ = _fit_with_prox(5.0)
    assert int((stronger[0].weight == 0).sum()) > 16
    # outside the context the optimizer no longer prunes
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model[0].weight.grad = torch.full_like(w, -0.1)
    opt.step()
    assert int((model[0].weight == 0).sum()) == 0


def _steps(reference, space, tmp_path, name, **kw):
    from nncodec.search.runner import _Searcher

    opts = {"pipeline": ["quantize", "prune"], "prune_step": 0.3, "reference_accuracy": 0.9}
    opts.update(kw.pop("options", {}))
    cost_fn = kw.pop("cost_fn", None)
    cfg = SearchConfig(schedule="iterative", n_trials=kw.pop("n_trials", 6), out_dir=str(tmp_path / name),
                       energy_settings=SETTINGS, options=opts, **kw)
    searcher = _Searcher(reference, space, _constant_task(), cfg, cost_fn)
    plan, rows = searcher.search_plan()
    return searcher, plan, rows


def _constant_task():
    from nncodec.search.task import FunctionTask

    return FunctionTask(lambda model, epoch: None, lambda model: 0.9)


def test_iterative_schedule_stops_at_the_constraint(reference, space, tmp_path):
    _, _, free = _steps(reference, space, tmp_path, "free", max_energy_pj=1.0, n_trials=4)  # never met
    energies = [r["energy_pj"] for r in free]
    assert all(b < a for a, b in zip(energies, energies[1:]))  # every step compresses further
    cap = (energies[2] + energies[3]) / 2                      # met after the third step
    searcher, plan, rows = _steps(reference, space, tmp_path, "capped", max_energy_pj=cap)
    assert len(rows) == 4 and rows[-1]["energy_pj"] <= cap < rows[-2]["energy_pj"]
    assert searcher.outcome.extra["iterative"]["constraint_met"]
    assert [r["method"] for r in rows[1:]] == ["quantize", "prune", "quantize"]
    masks = searcher.outcome.masks
    assert masks and 0.2 < 1 - float(torch.cat([m.flatten() for m in masks.values()]).mean()) < 0.5


def test_iterative_schedule_keeps_the_tasks_floor_and_measures_the_reference_once(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher
    from nncodec.search.task import FunctionTask

    on_reference = []

    def evaluate(model):
        on_reference.append(model is reference)
        return 0.9

    task = FunctionTask(lambda model, epoch: None, evaluate)
    task.min_score = 0.95  # above every step's 0.9: no step may be kept
    cfg = SearchConfig(schedule="iterative", n_trials=4, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       max_energy_pj=1.0, options={"pipeline": ["quantize", "prune"]})
    searcher = _Searcher(reference, space, task, cfg, None)
    searcher.reference_accuracy = 0.9  # as run_search sets it
    _, rows = searcher.search_plan()
    assert not any(on_reference)  # the reference's score was not measured a second time
    assert len(rows) > 1 and not any(r["accepted"] for r in rows[1:])
    assert searcher.outcome.extra["iterative"]["exhausted"] == ["prune", "quantize"]


def test_iterative_schedule_uses_the_measured_cost_and_needs_a_constraint(reference, space, tmp_path):
    calls = []

    def device_cost(model):  # a stand-in for a device measurement: parameter bits
        from nncodec.search.candidate import model_size_bits

        calls.append(1)
        return model_size_bits(model)

    start_bits = device_cost(build_candidate(reference, space.input_shape, base_plan(space)))
    searcher, plan, rows = _steps(reference, space, tmp_path, "device", cost_fn=device_cost,
                                  options={"max_cost": 0.6 * start_bits, "pipeline": ["quantize"]})
    assert rows[-1]["measured_cost"] <= 0.6 * start_bits < rows[-2]["measured_cost"]
    assert len(calls) == 1 + 1 + len(rows)  # this test's start, the reference's cost, then once per step
    with pytest.raises(ConfigError, match="constraint"):
        _steps(reference, space, tmp_path, "none")


# -- hardware co-design --------------------------------------------------------------------------
HW = {"sram_bits": [2 ** 14, 2 ** 17, 2 ** 20], "blocks": [1, 2], "channels": [4, 16], "rounds": 2,
      "latency_weight": 0.5}


def test_codesign_alternation_lowers_the_combined_loss(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="differentiable", out_dir=str(tmp_path), energy_settings=SETTINGS,
                       options={"codesign": True, "hardware": HW, "epochs": 2, "lambda": 1.0})
    searcher = _Searcher(reference, space, digits.task(proxy_fraction=0.2), cfg, None)
    plan, _ = searcher.search_plan()
    out = searcher.outcome
    history = out.extra["codesign"]["history"]
    start = history[0]["loss"]
    for net, hw in zip(history[1::2], history[2::2]):
        assert net["step"] == "network" and hw["step"] == "hardware" and hw["loss"] <= net["loss"] + 1e-12
    assert out.extra["codesign"]["combined_loss"] < start
    saved = json.loads((tmp_path / "hardware.json").read_text())
    chosen = saved["hardware"]
    assert chosen["latency_s"] > 0 and chosen["energy_pj"] > 0
    assert chosen["blocks"] * chosen["channels"] <= 64 and chosen["sram_bits"] in HW["sram_bits"] + [2 ** 27]
    assert out.energy_settings["min_sram_size"] == chosen["sram_bits"]
    assert Plan.from_dict(saved["plan"]).to_dict() == plan.to_dict()


def test_codesign_rejects_unknown_hardware_options(reference, space, tmp_path):
    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="tpe", n_trials=2, out_dir=str(tmp_path), options={"codesign": True,
                                                                                     "hardware": {"sram": 1}})
    with pytest.raises(ConfigError, match="sram"):
        _Searcher(reference, space, digits.task(0.2), cfg, None).search_plan()


@pytest.mark.parametrize("settings", [{"controller": "greedy", "block_search": True},
                                      {"controller": "differentiable", "storage": "sqlite:///x.db"},
                                      {"schedule": "iterative", "worker": 1}])
def test_single_process_methods_refuse_shared_study_settings(settings):
    from nncodec.search.runner import SearchConfig

    with pytest.raises(ConfigError, match="Optuna controllers only"):
        SearchConfig(**settings)


# -- costing with the plan, options that do not apply ---------------------------------------------
@pytest.fixture(scope="module")
def gru():
    """A GRU classifier whose recurrent weights the energy model reads from the plan (not from the module)."""
    from nncodec.search import ClassifierTask, SearchSpace
    from tests.search.graph_models import GRUClassifier

    torch.manual_seed(0)
    x = torch.randn(96, 6, 3)
    y = (x[:, :, 0].mean(1) > 0).long()
    model = GRUClassifier(classes=2).eval()
    bits = {"kernel": {"recurrent": (4, 8), "dense": (4, 8)}, "activation": {"recurrent": (8,), "dense": (8,)},
            "bias": {"recurrent": (8,), "dense": (8,)}}
    space = SearchSpace.from_model(model, x[:1], x[:32], kernels=("quantized_bits({b},{i},1)",), bits=bits,
                                   widths=(1.0,))
    task = ClassifierTask(x[:64].numpy(), y[:64].numpy(), x[64:].numpy(), y[64:].numpy(), proxy_fraction=0.5)
    return model, space, task


def _plan_energy(model, space, plan):
    from nncodec.search.controllers import _energy_plan

    cand = build_candidate(model, space.input_shape, plan)
    return (estimate_energy(cand, space.input_shape, _energy_plan(plan), **SETTINGS).total_pj,
            estimate_energy(cand, space.input_shape, **SETTINGS).total_pj)


def test_greedy_and_iterative_cost_a_candidate_with_its_plan(gru, tmp_path):
    from nncodec.search.greedy import _Greedy
    from nncodec.search.iterative import iterative_schedule
    from nncodec.search.runner import _Searcher

    model, space, task = gru
    cfg = SearchConfig(controller="greedy", n_trials=1, out_dir=str(tmp_path / "g"), energy_settings=SETTINGS)
    greedy = _Greedy(_Searcher(model, space, task, cfg, None))
    plan = space.plan_from(greedy.choices())
    with_plan, without = _plan_energy(model, space, plan)
    # a built candidate carries its plan's quantizers, which the energy model reads first: same total
    assert with_plan == pytest.approx(without, rel=1e-9)
    assert with_plan < estimate_energy(model, space.input_shape, **SETTINGS).total_pj  # the plan's quantizers are priced
    assert greedy.measure(plan, "top")["energy_pj"] == pytest.approx(with_plan)
    cfg = SearchConfig(schedule="iterative", max_energy_pj=1e12, out_dir=str(tmp_path / "i"), energy_settings=SETTINGS)
    out = iterative_schedule(_Searcher(model, space, task, cfg, None))  # the start meets the cap: no step
    assert len(out.trials) == 1 and out.trials[0]["energy_pj"] == pytest.approx(_plan_energy(model, space, out.plan)[0])


def test_codesign_costs_the_reference_as_the_reference(reference, space, tmp_path):
    """The start of the alternation is the int8/int16 reference on the starting hardware: energy ratio 1."""
    from nncodec.search.codesign import _Codesign
    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="tpe", n_trials=2, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       options={"codesign": True, "hardware": dict(HW, rounds=1)})
    co = _Codesign(_Searcher(reference, space, digits.task(proxy_fraction=0.2), cfg, None))
    energy, _ = co.cost_on(reference, co.start_hw, "reference")
    assert energy == pytest.approx(co.e_ref)
    # "reference" is cached from the start; a fresh key costs the reference again (plan None: reference types)
    assert co.cost_on(reference, co.start_hw, "uncached")[0] == pytest.approx(co.e_ref, rel=1e-9)
    plan = base_plan(space)
    cand = build_candidate(reference, space.input_shape, plan)
    assert co.cost_on(cand, co.start_hw, "cand", plan)[0] == pytest.approx(
        _plan_energy(reference, space, plan)[0], rel=1e-9)


def test_methods_that_do_not_search_widths_refuse_a_space_with_widths(reference, tmp_path):
    from nncodec.search.greedy import ROLES, knobs_of

    wide = digits.space(reference, widths=(0.5, 1.0))
    task = digits.task(proxy_fraction=0.2)
    for cfg in (SearchConfig(controller="differentiable", out_dir=str(tmp_path / "d"), options={"epochs": 1}),
                SearchConfig(schedule="iterative", max_energy_pj=1.0, out_dir=str(tmp_path / "i")),
                SearchConfig(controller="greedy", out_dir=str(tmp_path / "g"), options={"knobs": ["kernel"]})):
        with pytest.raises(ConfigError, match="width"):
            run_search(reference, wide, task, cfg)
    # greedy searches them: one knob per width group, widest first, and its level reaches the plan
    widths = [k for k in knobs_of(wide, ROLES) if k.role == "width"]
    assert widths and all(k.levels == [1.0, 0.5] for k in widths)
    assert wide.plan_from({widths[0].key: 0.5}).widths == {widths[0].group: 0.5}


def test_trials_do_not_apply_to_the_differentiable_controller(reference, space, tmp_path):
    cfg = SearchConfig(controller="differentiable", n_trials=5, out_dir=str(tmp_path), options={"epochs": 1})
    with pytest.raises(ConfigError, match="n_trials"):
        run_search(reference, space, digits.task(proxy_fraction=0.2), cfg)


def test_codesign_with_an_optuna_controller_builds_candidates_like_the_search(reference, tmp_path, monkeypatch):
    """``width_importance``, ``initial_kernels`` and distilled trials apply to the co-design's Optuna trials
    (they build their candidates through the searcher): each is used, none refused."""
    import nncodec.search.runner as runner
    from nncodec.search.finetune import Distiller

    used = {"importance": [], "gptq": 0, "distilled": 0}
    real_resizer, real_gptq, real_train = runner.Resizer, runner.initialize_kernels, Distiller.train

    def resizer(*a, **k):
        used["importance"].append(k.get("importance"))
        return real_resizer(*a, **k)

    def gptq(*a, **k):
        used["gptq"] += 1
        return real_gptq(*a, **k)

    def train(self, model, epochs, proxy, after_epoch=None):
        used["distilled"] += bool(proxy)
        return real_train(self, model, epochs, proxy, after_epoch)

    monkeypatch.setattr(runner, "Resizer", resizer)
    monkeypatch.setattr(runner, "initialize_kernels", gptq)
    monkeypatch.setattr(Distiller, "train", train)
    cfg = SearchConfig(controller="random", n_trials=2, proxy_epochs=1, out_dir=str(tmp_path), energy_settings=SETTINGS,
                       width_importance="l2", initial_kernels="gptq", finetune={"proxy": True}, progress=False,
                       options={"codesign": True, "hardware": dict(HW, rounds=1)})
    searcher = runner._Searcher(reference, digits.space(reference, widths=(0.5, 1.0)), digits.task(0.2), cfg, None)
    plan, _ = searcher.search_plan()
    assert "hardware" in searcher.outcome.extra and plan is not None
    assert used["importance"] == ["l2"] and used["gptq"] >= 2 and used["distilled"] == 2
    for kw in ({"width_importance": "taylor"}, {"initial_kernels": "gptq"}, {"finetune": {"proxy": True}}):
        with pytest.raises(ConfigError, match="differentiable"):
            SearchConfig(controller="differentiable", options={"codesign": True}, **kw)

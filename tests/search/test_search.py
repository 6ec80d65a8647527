"""The search on small real data (sklearn digits): surgery, masks, constraints, blocks, plans, storage."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torch import nn

import nncodec
from nncodec.errors import ConfigError
from nncodec.prune.graph import group_importance
from nncodec.prune.structured import resizable_layers, resize_layers
from nncodec.prune.unstructured import (apply_masks, balanced_masks, global_magnitude_masks, magnitude_masks,
                                        sparsity, std_threshold_masks)
from nncodec.quant.layers import quantize_model
from nncodec.quant.plan import Plan
from nncodec.search import SearchConfig, run_search, score
from nncodec.search.candidate import build_candidate
from nncodec.search.runner import _Searcher, run_trials
from nncodec.search.samplers import EvolutionSampler, ReinforceSampler
from nncodec.train import accuracy, train_classifier
from tests.search.digits import INPUT, bn_cnn, data, space, task, trained_reference

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference():
    return trained_reference()


def test_reference_is_a_real_classifier(reference):
    _, _, x_test, y_test = data()
    assert accuracy(reference, x_test, y_test) > 0.9


def test_surgery_keeps_the_network_working(reference):
    assert resizable_layers(reference, INPUT) == ["0", "2"]  # the classifier keeps its width
    narrow = resize_layers(reference, {"0": 0.5, "2": 2.0}, INPUT)
    assert narrow[0].weight.shape == (4, 1, 3, 3) and narrow[2].weight.shape == (32, 4, 3, 3)
    assert narrow[5].weight.shape == (10, 32 * 4 * 4)
    kept = torch.sort(torch.argsort(group_importance(reference, INPUT, "0"), descending=True)[:4]).values
    assert torch.equal(narrow[0].weight, reference[0].weight[kept])  # strongest filters, inherited, in order
    x_train, y_train, x_test, y_test = data()
    train_classifier(narrow, x_train, y_train, epochs=2, lr=3e-3)
    assert accuracy(narrow, x_test, y_test) > 0.8
    wide = resize_layers(reference, {"2": 1.5}, INPUT)
    x = torch.as_tensor(x_test[:16])
    assert torch.allclose(wide(x), reference(x), atol=1e-5)  # widening starts as the same function
    with pytest.raises(ConfigError, match="classifier"):
        resize_layers(reference, {"5": 0.5}, INPUT)


def test_masks_survive_fine_tuning_and_quantization(reference):
    model = quantize_model(reference, {"default": {"kernel": "quantized_bits(8,-1,1)"}})
    masks = global_magnitude_masks(model, 0.6)
    apply_masks(model, masks)
    x_train, y_train, x_test, y_test = data()
    train_classifier(model, x_train, y_train, epochs=1, lr=3e-3)
    model.eval()
    for name, mask in masks.items():
        layer = model.get_submodule(name)
        assert (layer.quantized_weight()[mask == 0] == 0).all()
    zeros = sum(float((model.get_submodule(n).quantized_weight() == 0).sum()) for n in masks)
    total = sum(model.get_submodule(n).weight.numel() for n in masks)
    assert 0.58 < zeros / total  # the global 60 % held through training (quantization may add zeros)
    assert all(0.0 <= v < 1.0 for v in sparsity(model).values())
    decoded = nncodec.decode(nncodec.encode(model))
    for name, mask in masks.items():
        assert (decoded[f"{name}.weight"][mask == 0] == 0).all()
    assert accuracy(model, x_test, y_test) > 0.85


def test_other_pruning_methods(reference):
    per_layer = magnitude_masks(reference, 0.5)
    assert all(abs(float(1 - m.mean()) - 0.5) < 0.02 for m in per_layer.values())
    macs = {"0": 1000, "2": 100_000, "5": 10_000}
    std = std_threshold_masks(reference, macs, error_per_weight=0.1)
    pruned = {n: float(1 - m.mean()) for n, m in std.items()}
    assert pruned["2"] > pruned["0"]  # more allowance where the MACs are
    bal = balanced_masks(reference, 0.5, group=8)
    w = bal["5"].reshape(10, -1, 8)
    assert (w.sum(2) == 4).all()  # every group of 8 keeps exactly 4


def test_constraint_violating_candidates_are_never_trained(reference, tmp_path):
    class Counting:
        def __init__(self, inner):
            self.inner, self.calls = inner, 0

        def train_epoch(self, model, epoch, proxy):
            self.calls += 1
            self.inner.train_epoch(model, epoch, proxy)

        def evaluate(self, model):
            return self.inner.evaluate(model)

    sp = space(reference)
    counting = Counting(task(0.2))
    searcher = _Searcher(reference, sp, counting, SearchConfig(n_trials=1, out_dir=str(tmp_path)), None)
    cap = searcher.ref_energy * 0.12
    cfg = SearchConfig(controller="random", n_trials=10, max_energy_pj=cap, out_dir=str(tmp_path),
                       study_name="caps", progress=False)
    try:
        run_trials(reference, sp, counting, cfg)
    except ConfigError:
        pass  # every candidate may be over the cap
    study = optuna.load_study(study_name="caps", storage=f"sqlite:///{tmp_path / 'search.db'}")
    trials = study.get_trials()
    infeasible = [t for t in trials if t.user_attrs.get("infeasible")]
    feasible = [t for t in trials if not t.user_attrs.get("infeasible")]
    assert infeasible, "the cap should exclude some candidates"
    assert all(t.user_attrs["energy_pj"] > cap and "accuracy" not in t.user_attrs and t.value == 0.0
               for t in infeasible)
    assert all(t.user_attrs["energy_pj"] <= cap for t in feasible)
    assert counting.calls == len(feasible)


def test_resumed_study_picks_under_the_current_caps(reference, tmp_path):
    """The caps may change on resume: the pick is checked against the current ones (a tighter cap excludes
    trials now over it), and a trial stored infeasible (never trained) is never picked under a looser cap."""
    sp = space(reference)
    base = {"controller": "random", "n_trials": 6, "out_dir": str(tmp_path), "study_name": "recap",
            "progress": False}
    run_trials(reference, sp, task(0.3), SearchConfig(**base))
    url = f"sqlite:///{tmp_path / 'search.db'}"
    energies = sorted({t.user_attrs["energy_pj"] for t in optuna.load_study(study_name="recap", storage=url).trials})
    assert len(energies) >= 2
    cap = energies[0] * 1.0001  # only the cheapest candidate(s) within it
    plan = run_trials(reference, sp, task(0.3), SearchConfig(**base, max_energy_pj=cap))  # nothing left to run
    searcher = _Searcher(reference, sp, task(0.3), SearchConfig(**base, max_energy_pj=cap), None)
    assert searcher.measure(searcher.build(plan), plan).energy_pj <= cap
    rows = searcher._trial_rows(optuna.load_study(study_name="recap", storage=url), False)
    assert [r["energy_pj"] <= cap for r in rows] == [not r["infeasible"] for r in rows]
    with pytest.raises(ConfigError, match="no feasible trial"):
        run_trials(reference, sp, task(0.3), SearchConfig(**base, max_energy_pj=energies[0] / 2))
    # a trial stored infeasible under a tighter cap was not trained: not a pick under a looser one
    tight = {**base, "study_name": "tight"}
    with pytest.raises(ConfigError, match="no feasible trial"):
        run_trials(reference, sp, task(0.3), SearchConfig(**tight, max_energy_pj=energies[0] / 2))
    with pytest.raises(ConfigError, match="no feasible trial"):
        run_trials(reference, sp, task(0.3), SearchConfig(**tight))  # 6 trials stored: nothing left to run


def test_block_order_follows_energy(reference, tmp_path):
    searcher = _Searcher(reference, space(reference), task(), SearchConfig(n_trials=40, block_search=True,
                                                                         out_dir=str(tmp_path)), None)
    schedule = searcher.block_schedule()
    energy = {r.name: r.total for r in searcher.ref_report.layers}
    block_energy = [sum(energy[n] + energy.get(str(int(n) + 1), 0.0) for n in block) for block, _ in schedule]
    assert block_energy == sorted(block_energy, reverse=True)
    assert [b for b, _ in schedule][0] == ["2"]  # the second conv holds most MACs
    assert all(n >= 10 for _, n in schedule)
    searcher.cfg.block_order = "input"
    assert [b for b, _ in searcher.block_schedule()] == [["0"], ["2"], ["5"]]


def test_relative_global_pruning_keeps_every_layer_before_a_batch_norm():
    """A conv before a batch norm computes the same function at any weight scale: absolute global magnitude
    pruning removes all of a layer whose weights are small; ``relative`` ranks by the layer's RMS and keeps a
    share of every layer (same total)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
    with torch.no_grad():
        model[3].weight.mul_(1e-3)
    absolute = global_magnitude_masks(model, 0.5, keep_per_channel=0)
    assert absolute["3"].sum() == 0  # the small layer is gone: the network's output is constant
    kept_one = global_magnitude_masks(model, 0.5)  # the default keeps each output channel's largest weight
    assert kept_one["3"].reshape(8, -1).sum(1).tolist() == [1.0] * 8
    relative = global_magnitude_masks(model, 0.5, relative=True)
    kept = {n: float(m.mean()) for n, m in relative.items()}
    assert all(0.2 < k < 0.8 for k in kept.values()), kept
    total = sum(m.numel() for m in relative.values())
    assert sum(float(m.sum()) for m in relative.values()) == pytest.approx(total / 2, abs=1)
    with pytest.raises(ConfigError, match="final_prune_relative"):
        SearchConfig(final_prune_relative=True)  # no final pruning to rank: an option that does not apply


def test_global_pruning_keeps_a_weight_of_every_depthwise_channel():
    """One threshold empties whole channels of a depthwise conv (9 weights each) whose weights are small; an
    emptied channel has zero variance into its batch norm, whose folded scale ``weight / sqrt(eps)`` then
    dwarfs the others' (a per-tensor quantization step of the folded scales rounds them to a few codes).
    The default ``keep_per_channel=1`` keeps each channel's largest weight: no channel dies."""
    import copy

    from nncodec.quant.layers import fold_batch_norm
    from nncodec.search.candidate import recalibrate_batch_norms

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8))
    with torch.no_grad():
        model[3].weight[::2].mul_(0.1)  # half the depthwise channels have small weights (free before a norm)
    batches = [(torch.randn(64, 1, 8, 8),)]

    def folded_spread(masks: dict) -> float:
        pruned = copy.deepcopy(model)
        apply_masks(pruned, masks)
        recalibrate_batch_norms(pruned, batches)
        scale = fold_batch_norm(pruned[4])[0].detach().abs()
        return float(scale.max() / scale.median())

    old = global_magnitude_masks(model, 0.6, relative=True, keep_per_channel=0)
    assert (old["3"].reshape(8, -1).sum(1) == 0).any()  # whole channels emptied
    assert folded_spread(old) > 50
    new = global_magnitude_masks(model, 0.6, relative=True)
    per_channel = new["3"].reshape(8, -1).sum(1)
    assert (per_channel >= 1).all()
    assert float(sum(m.sum() for m in new.values())) <= 0.4 * sum(m.numel() for m in new.values()) + 16
    assert folded_spread(new) < 20
    two = global_magnitude_masks(model, 0.9, relative=True, keep_per_channel=2)
    assert (two["3"].reshape(8, -1).sum(1) >= 2).all() and (two["0"].reshape(8, -1).sum(1) >= 2).all()
    with pytest.raises(ConfigError, match="keep_per_channel"):
        global_magnitude_masks(model, 0.5, keep_per_channel=-1)
    wide = nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 3)).to(memory_format=torch.channels_last)
    with torch.no_grad():
        wide[0].weight.mul_(1e-3)  # one threshold would empty every channel of this channels-last weight
    kept = global_magnitude_masks(wide, 0.9)
    assert (kept["0"].reshape(8, -1).sum(1) >= 1).all()


def test_score_is_the_seed_formula():
    assert score(0.9, 50.0, 100.0) == pytest.approx(0.9 * 1.08)       # half the cost: +8 %
    assert score(0.9, 300.0, 100.0) == pytest.approx(0.9 * (1 - 0.02))  # three times: -2 %
    from nncodec.search import ScoreConfig

    assert score(0.9, 100.0, 100.0, ScoreConfig(stress=2.0)) == pytest.approx(0.9 * 1.08)


def test_full_search_writes_a_plan_that_round_trips(reference, tmp_path):
    cfg = SearchConfig(controller="tpe", n_trials=4, final_epochs=1, final_prune=0.3, out_dir=str(tmp_path),
                       study_name="full", progress=False)
    result = run_search(reference, space(reference), task(0.3), cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary) == {"reference", "result", "seconds", "search_seconds", "notes", "warnings", "final_steps"}
    steps = summary["final_steps"]  # where the final steps move the score: pruning, then each fine-tuning epoch
    assert set(steps) == {"proxy_trial", "built", "after_prune", "fine_tune_epochs", "fine_tune_seconds", "decoded"}
    # where the time goes (to the millisecond: an epoch takes longer than that, but may take under 0.05 s)
    assert 0 < steps["fine_tune_seconds"] < summary["seconds"] - summary["search_seconds"]
    assert len(steps["fine_tune_epochs"]) == 1 and steps["fine_tune_epochs"][-1] == summary["result"]["accuracy"]
    assert summary["warnings"] == [] and summary["notes"] == []
    assert set(summary["result"]) == {"accuracy", "decoded_accuracy", "energy_pj", "bitstream_bytes", "plan"}
    assert summary["result"]["decoded_accuracy"] == summary["result"]["accuracy"]
    assert result.energy_pj < result.reference_energy_pj
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.to_dict() == result.plan.to_dict()
    rebuilt = build_candidate(reference, INPUT, plan)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in result.model.parameters()]
    assert set(nncodec.decode(tmp_path / "model.nnc")) >= {"0.weight", "5.weight"}
    assert len(result.trials) == 4


def test_final_pruning_spread_over_fine_tuning_epochs(reference, tmp_path):
    cfg = SearchConfig(controller="tpe", n_trials=1, final_epochs=3, final_prune=0.6, final_prune_epochs=2,
                       out_dir=str(tmp_path), study_name="gradual", progress=False)
    seen = []
    original = global_magnitude_masks

    def spy(model, amount, **kw):
        seen.append(round(amount, 4))
        return original(model, amount, **kw)

    import nncodec.search.runner as runner

    runner.global_magnitude_masks, saved = spy, runner.global_magnitude_masks
    try:
        result = run_search(reference, space(reference), task(0.3), cfg)
    finally:
        runner.global_magnitude_masks = saved
    assert seen == [0.0, round(0.6 * (1 - 0.5 ** 3), 4), 0.6]  # wrap, then the cubic schedule's two steps
    layers = [m for n, m in result.model.named_modules() if hasattr(m, "weight_mask")]
    zeros = sum(float((m.weight_mask == 0).sum()) for m in layers)
    assert zeros / sum(m.weight_mask.numel() for m in layers) == pytest.approx(0.6, abs=0.01)
    steps = result.final_steps
    assert len(steps["fine_tune_epochs"]) == 3 and "after_prune" in steps
    decoded = nncodec.decode(result.bitstream)
    for name, m in result.model.named_modules():
        if hasattr(m, "weight_mask"):
            assert (decoded[f"{name}.weight"][m.weight_mask.numpy() == 0] == 0).all()  # held to the stream
    for bad in ({"final_prune_epochs": 3}, {"final_prune_epochs": 2, "final_prune": 0.0},
                {"final_prune_epochs": 1.5}, {"final_prune_epochs": True}):
        with pytest.raises(ConfigError, match="final_prune_epochs"):
            SearchConfig(**{"final_epochs": 3, "final_prune": 0.6, **bad})
    for bad in ({"final_prune": -0.2}, {"final_prune": 1.5}, {"final_prune": True}):
        with pytest.raises(ConfigError, match="final_prune must"):
            SearchConfig(final_epochs=3, **bad)
    with pytest.raises(ConfigError, match="final_prune_relative must"):
        SearchConfig(final_epochs=3, final_prune=0.6, final_prune_relative="no")


@pytest.mark.parametrize("controller", ["random", "gp", "hyperband", "nsga2", "rl", "evolution"])
def test_every_controller_runs(reference, tmp_path, controller):
    cfg = SearchConfig(controller=controller, n_trials=6, proxy_epochs=2 if controller == "hyperband" else 1,
                       out_dir=str(tmp_path), study_name=controller, progress=False)
    plan = run_trials(reference, space(reference), task(0.2), cfg)
    assert plan.layers and all(lp.kernel for name, lp in plan.layers.items() if name in ("0", "2", "5"))


def _toy_study(sampler, n=40):
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.optimize(lambda t: {"a": 0.1, "b": 1.0, "c": 0.3}[t.suggest_categorical("x", ["a", "b", "c"])] +
                   0.01 * ["p", "q"].index(t.suggest_categorical("y", ["p", "q"])), n_trials=n)
    return study


def test_reinforce_policy_learns_the_rewarded_choice():
    sampler = ReinforceSampler(seed=1)
    study = _toy_study(sampler)
    probs = sampler.policy(study, "x", optuna.distributions.CategoricalDistribution(["a", "b", "c"]))
    assert probs[1] > 0.6
    late = [t.params["x"] for t in study.trials[-10:]]
    assert late.count("b") >= 6
    # deterministic from storage: a second sampler computes the same policy
    assert np.allclose(ReinforceSampler(seed=1).policy(study, "x", study.trials[0].distributions["x"]), probs)


def test_evolution_keeps_the_best_and_mutates():
    study = _toy_study(EvolutionSampler(seed=3), n=30)
    assert study.best_value >= 1.0
    late = [t.params["x"] for t in study.trials[-10:]]
    assert late.count("b") >= 5


def _worker(ref_path, url, study, n, sleep, heartbeat, worker, *extra, stderr=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "tests.search.worker", str(ref_path), url, study, str(n),
                             str(sleep), str(heartbeat), str(worker), *map(str, extra)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _two_workers_share_one_study(reference, tmp_path, url):
    ref_path = tmp_path / "reference.pt"
    torch.save(reference.state_dict(), ref_path)
    study = f"shared-{uuid.uuid4().hex[:8]}"
    procs = [_worker(ref_path, url, study, 12, 0.05, 5, w) for w in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    ran = [int(o[0].strip().splitlines()[-1]) for o in outs]
    complete = [t for t in optuna.load_study(study_name=study, storage=url).get_trials()
                if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(r >= 1 for r in ran), ran  # both workers did trials of the one study
    assert sum(ran) == len(complete) and 12 <= len(complete) <= 13


def test_two_workers_share_one_study_sqlite(reference, tmp_path):
    _two_workers_share_one_study(reference, tmp_path, f"sqlite:///{tmp_path / 'shared.db'}")


@pytest.mark.postgres
def test_two_workers_share_one_study_postgres(reference, tmp_path):
    url = os.environ.get("NNCODEC_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server (NNCODEC_TEST_POSTGRES_URL, see .ci/postgres.sh)")
        pytest.skip("no PostgreSQL server: run .ci/postgres.sh and export NNCODEC_TEST_POSTGRES_URL")
    _two_workers_share_one_study(reference, tmp_path, url)


def test_killed_search_resumes_with_no_trial_lost(reference, tmp_path):
    ref_path = tmp_path / "reference.pt"
    torch.save(reference.state_dict(), ref_path)
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    # the worker stops inside the trial after the third complete one and says so: killed there, whatever the load
    with open(tmp_path / "worker.err", "w") as err:
        proc = _worker(ref_path, url, "resume", 14, 0.0, 1, 0, 3, stderr=err)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout=600)  # the worker stalls (a line), or ends ("", failed below); a hang fails too
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert lines == ["stalled\n"], (lines, (tmp_path / "worker.err").read_text()[-2000:])
    st = optuna.load_study(study_name="resume", storage=url)
    killed = [t for t in st.get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert len(killed) == 1
    time.sleep(2.5)  # past the grace period: the killed trial's heartbeat is stale
    cfg = SearchConfig(controller="random", n_trials=14, storage=url, study_name="resume", heartbeat_interval=1,
                       grace_period=2, progress=False, out_dir=str(tmp_path / "out"))
    run_trials(reference, space(reference), task(0.3), cfg)
    trials = optuna.load_study(study_name="resume", storage=url).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 14
    assert [t.state for t in trials if t.number == killed[0].number] == [optuna.trial.TrialState.FAIL]
    retried = [t for t in complete if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
               == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params


def test_joint_score_multiplies_one_seed_factor_per_cost():
    from nncodec.search import ScoreConfig, joint_score

    cfg = ScoreConfig()
    assert joint_score(0.9, [(50.0, 100.0, cfg)]) == pytest.approx(score(0.9, 50.0, 100.0))
    # half the energy (+8 %) and a quarter of the size (+16 %)
    assert joint_score(0.9, [(50.0, 100.0, cfg), (25.0, 100.0, cfg)]) == pytest.approx(0.9 * 1.08 * 1.16)
    # three times the size (-2 %) at the reference energy
    assert joint_score(0.9, [(100.0, 100.0, cfg), (300.0, 100.0, cfg)]) == pytest.approx(0.9 * 0.98)


def test_size_score_prefers_the_smaller_of_two_equal_energy_candidates(reference, tmp_path):
    from nncodec.search import ScoreConfig

    sp = space(reference)
    on = _Searcher(reference, sp, task(), SearchConfig(size_score=ScoreConfig(), out_dir=str(tmp_path)), None)
    off = _Searcher(reference, sp, task(), SearchConfig(out_dir=str(tmp_path)), None)
    energy = on.ref_energy / 4
    assert on.ref_size == sum(p.numel() for p in reference.parameters()) * 8  # int8 reference weights
    small, large = on.ref_size / 8, on.ref_size / 2
    assert on.score(0.9, energy, small) > on.score(0.9, energy, large)
    assert on.score(0.9, energy, small) == pytest.approx(off.score(0.9, energy) * 1.24)  # 8 % per halving, 3 halvings
    assert off.score(0.9, energy) == pytest.approx(score(0.9, energy, off.ref_cost))  # off: the seed's score
    with pytest.raises(ConfigError, match="stored size"):
        on.score(0.9, energy)


def test_nonzero_size_counts_nonzero_quantized_weights_at_their_bits():
    from torch import nn

    from nncodec.search.candidate import model_size_bits, nonzero_size_bits

    model = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.9, -0.9], [0.9, 0.0, 0.0, 0.0]]))
        model[0].bias.zero_()
        model[1].weight.copy_(torch.tensor([[0.5, 0.0]]))
    plan = {"layers": {"0": {"kernel": "ternary(alpha=1.0)", "bias": "quantized_bits(8,0,1)"}}}
    q = quantize_model(model, Plan.coerce(plan))
    # layer 0: 3 nonzero ternary weights x 2 bits, zero biases free; layer 1 unquantized: 1 nonzero x 32 bits
    assert nonzero_size_bits(q) == 3 * 2 + 32
    assert model_size_bits(q) == 8 * 2 + 2 * 8 + 2 * 32


def test_size_score_config_is_validated(tmp_path):
    from nncodec.search import ScoreConfig

    cfg = SearchConfig(size_score={"p_smaller": 4.0}, out_dir=str(tmp_path))
    assert cfg.size_score == ScoreConfig(p_smaller=4.0)
    with pytest.raises(ConfigError, match="unknown key"):
        SearchConfig(size_score={"p_small": 4.0})
    with pytest.raises(ConfigError, match="r_smaller"):
        SearchConfig(size_score={"r_smaller": 1.0})
    with pytest.raises(ConfigError, match="finite number"):
        SearchConfig(size_score={"stress": "2"})
    with pytest.raises(ConfigError, match="cost='size'"):
        SearchConfig(cost="size", size_score=ScoreConfig())
    with pytest.raises(ConfigError, match="differentiable"):
        SearchConfig(controller="differentiable", size_score=ScoreConfig())
    with pytest.raises(ConfigError, match="schedule"):
        SearchConfig(schedule="iterative", size_score=ScoreConfig(), options={"max_accuracy_drop": 0.01})


@pytest.mark.parametrize("controller", ["random", "nsga2"])
def test_size_scored_search_records_and_scores_the_stored_size(reference, tmp_path, controller):
    from nncodec.search import ScoreConfig

    sp = space(reference)
    cfg = SearchConfig(controller=controller, n_trials=3, size_score=ScoreConfig(), out_dir=str(tmp_path),
                       study_name=f"size-{controller}", progress=False)
    run_trials(reference, sp, task(0.2), cfg)
    study = optuna.load_study(study_name=f"size-{controller}", storage=f"sqlite:///{tmp_path / 'search.db'}")
    searcher = _Searcher(reference, sp, task(), cfg, None)
    for t in study.get_trials():
        stored, acc, energy = t.user_attrs["stored_bits"], t.user_attrs["accuracy"], t.user_attrs["energy_pj"]
        assert stored > 0
        if controller == "nsga2":
            assert t.values == [acc, energy, stored]  # accuracy, energy and size objectives
        else:
            assert t.value == pytest.approx(searcher.score(acc, energy, stored))
            seed = score(acc, energy, searcher.ref_cost)
            assert t.value > seed if stored < searcher.ref_size else t.value <= seed  # size raises or lowers it


def test_resizer_builds_the_same_candidates_and_energies(reference):
    from nncodec.energy.estimate import estimate_energy
    from nncodec.prune.graph import Resizer
    from nncodec.search.controllers import _energy_plan

    sp = space(reference)
    resizer = Resizer(reference, INPUT)
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    rng = np.random.default_rng(0)
    params = sp.parameters()
    for i in range(4):
        plan = sp.plan_from({k: v[int(rng.integers(len(v)))] for k, v in params.items()})
        torch.manual_seed(i)
        plain = build_candidate(reference, INPUT, plan)
        torch.manual_seed(i)
        reused = build_candidate(reference, INPUT, plan, resizer=resizer)
        a, b = plain.state_dict(), reused.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        ea = estimate_energy(plain, INPUT, _energy_plan(plan))
        eb = estimate_energy(reused, INPUT, _energy_plan(plan))
        assert ea.total_pj == eb.total_pj and [(r.name, r.total) for r in ea.layers] == \
            [(r.name, r.total) for r in eb.layers]
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())  # the reference is untouched
    with pytest.raises(ConfigError, match="another model"):
        build_candidate(trained_reference(1), INPUT, plan, resizer=resizer)


def test_a_resumed_study_must_have_the_trial_settings_it_was_run_with(reference, tmp_path):
    """The settings that change what a trial measures are kept with the study: resuming it with another
    width_importance (or proxy epochs, ...) is refused naming them; the same ones resume, final-step ones may
    change."""
    sp = space(reference)
    base = {"controller": "random", "n_trials": 2, "out_dir": str(tmp_path), "study_name": "kept", "progress": False}
    run_trials(reference, sp, task(0.3), SearchConfig(**base))
    st = optuna.load_study(study_name="kept", storage=f"sqlite:///{tmp_path / 'search.db'}")
    assert st.user_attrs["trial_settings"]["width_importance"] == "l1"
    assert "recalibrate_norms" not in st.user_attrs["trial_settings"]  # no batch norms: it changes nothing
    for changed, name in (({"width_importance": "l2"}, "width_importance 'l1' there, 'l2' now"),
                          ({"proxy_epochs": 2}, "proxy_epochs 1 there, 2 now"),
                          ({"seed": 1}, "seed 0 there, 1 now"),
                          ({"initial_kernels": "gptq"}, "initial_kernels")):
        with pytest.raises(ConfigError, match=name):
            run_trials(reference, sp, task(0.3), SearchConfig(**{**base, **changed, "n_trials": 3}))
    assert len(optuna.load_study(study_name="kept", storage=f"sqlite:///{tmp_path / 'search.db'}").trials) == 2
    run_trials(reference, sp, task(0.3), SearchConfig(**base, final_epochs=3, final_prune=0.5))  # resumes, no trial
    run_trials(reference, sp, task(0.3), SearchConfig(**base, recalibrate_norms=False))
    bn = bn_cnn(4).eval()
    for recalibrate in (True, False):
        kept = _Searcher(bn, space(bn), task(0.3), SearchConfig(**base, recalibrate_norms=recalibrate), None)
        assert kept.trial_settings()["recalibrate_norms"] is recalibrate
    # a study stored without them (an earlier version) gets them on first use
    legacy = optuna.create_study(study_name="legacy", storage=f"sqlite:///{tmp_path / 'search.db'}")
    searcher = _Searcher(reference, sp, task(0.3), SearchConfig(**{**base, "study_name": "legacy"}), None)
    searcher._check_trial_settings(legacy)
    assert legacy.user_attrs["trial_settings"] == searcher.trial_settings()
    # a study stored before a setting was kept: the others are compared, the new one takes the current value
    older = optuna.create_study(study_name="older", storage=f"sqlite:///{tmp_path / 'search.db'}")
    settings = searcher.trial_settings()
    older.set_user_attr("trial_settings", {k: v for k, v in settings.items() if k != "initial_kernels"})
    searcher._check_trial_settings(older)
    assert older.user_attrs["trial_settings"] == settings
    older.set_user_attr("trial_settings", {**{k: v for k, v in settings.items() if k != "initial_kernels"},
                                           "proxy_epochs": 5})
    with pytest.raises(ConfigError, match="proxy_epochs 5 there, 1 now") as info:
        searcher._check_trial_settings(older)
    assert "initial_kernels" not in str(info.value)


def test_a_single_width_choice_is_applied_not_dropped():
    """``widths=(0.5,)`` leaves one choice per group: the plan narrows every group (it was silently kept at full
    width); ``widths=(1.0,)`` has nothing to choose or apply."""
    from tests.search import digits

    model = digits.digits_cnn()
    half = digits.space(model, widths=(0.5,))
    params = half.parameters()
    widths = {k: v for k, v in params.items() if k.endswith(".width")}
    assert widths and all(v == [0.5] for v in widths.values())
    plan = half.plan_from({k: v[0] for k, v in params.items()})
    assert plan.widths and set(plan.widths.values()) == {0.5}
    assert not {k for k in digits.space(model, widths=(1.0,)).parameters() if k.endswith(".width")}


class Concat(nn.Module):
    """Convs a and b feed a concatenation: their groups cannot widen."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(8, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        return self.fc(self.c(torch.cat([self.a(x), self.b(x)], 1)).flatten(1))


def test_width_grids_that_choose_nothing_are_refused_or_dropped():
    """``widths=()`` is a ConfigError; a group whose grid leaves no width (a group that cannot widen, with
    ``widths=(1.25,)``) gets no parameter rather than an empty one; greedy's base choices apply a one-choice
    width."""
    from nncodec.search.space import SearchSpace
    from nncodec.search.surrogate import base_choices
    from tests.search import digits

    model = digits.digits_cnn()
    with pytest.raises(ConfigError, match="widths"):
        digits.space(model, widths=())

    wide = SearchSpace.from_model(Concat(), (1, 8, 8), torch.randn(16, 1, 8, 8), widths=(1.25,))
    widths = {k: v for k, v in wide.parameters().items() if k.endswith(".width")}
    assert widths == {"c.width": [1.25]} and wide.size() > 0
    half = digits.space(model, widths=(0.5,))
    assert set(half.plan_from(base_choices(half)).widths.values()) == {0.5}


def test_group_widths_set_the_choices_of_the_groups_a_pattern_matches():
    """``group_widths`` gives the groups a pattern matches (by name or producing layer, the first pattern
    winning) their own multipliers, the others keep ``widths``; the built candidate has those channel counts.
    A pattern that applies to no group, or a bad multiplier list, is a ConfigError naming it."""
    from nncodec.search.space import SearchSpace
    from tests.search.graph_models import TinyResNet

    model = TinyResNet(width=8).eval()
    x = torch.randn(16, 1, 16, 16)
    sp = SearchSpace.from_model(model, (1, 16, 16), x, widths=(0.75,),
                                group_widths={"stage3.*": (0.5,), "stage1.conv2": (0.5, 1.0), "stage1.*": (0.25,)})
    # stage1.conv2 produces the stem's group (the residual chain): matched by producer, before "stage1.*"
    assert sp.width_choices == {"stem.0": [0.5, 1.0], "stage1.conv1": [0.25], "stage2.conv1": [0.75],
                                "stage2.conv2": [0.75], "stage3.conv1": [0.5], "stage3.conv2": [0.5]}
    assert {lay.name: lay.widths for lay in sp.layers if lay.name in ("stage3.conv1", "stage1.conv1")} == \
        {"stage3.conv1": [0.5], "stage1.conv1": [0.25]}
    assert sp.parameters()["stem.0.width"] == [0.5, 1.0]
    plan = sp.plan_from({"stem.0.width": 1.0})
    assert plan.widths == {"stage1.conv1": 0.25, "stage2.conv1": 0.75, "stage2.conv2": 0.75, "stage3.conv1": 0.5,
                           "stage3.conv2": 0.5}
    built = build_candidate(model, (1, 16, 16), plan)
    assert (built.stem[0].out_channels, built.stage1.conv1.out_channels, built.stage2.conv1.out_channels,
            built.stage3.conv1.out_channels, built.stage3.conv2.out_channels) == (8, 2, 12, 16, 16)
    with pytest.raises(ConfigError, match=r"group_widths pattern\(s\) \['stage9\.\*'\]"):
        SearchSpace.from_model(model, (1, 16, 16), x, widths=(0.75,), group_widths={"stage9.*": (0.5,)})
    with pytest.raises(ConfigError, match=r"\['stage3\.conv\*'\]"):  # the groups went to the earlier pattern
        SearchSpace.from_model(model, (1, 16, 16), x, group_widths={"stage3.*": (0.5,), "stage3.conv*": (0.25,)})
    with pytest.raises(ConfigError, match=r"group_widths\['fc'\]"):
        SearchSpace.from_model(model, (1, 16, 16), x, group_widths={"fc": ()})
    with pytest.raises(ConfigError, match="group_widths must be a dict"):
        SearchSpace.from_model(model, (1, 16, 16), x, group_widths=[("stage3.*", (0.5,))])


def test_kernel_bits_that_leave_a_layer_no_kernel_choice_are_refused():
    """Empty kernel bits for one layer keep only its templates without ``{b}`` (here the power-of-two one);
    with no such template the layer would silently stay unquantized: a ConfigError naming it."""
    from nncodec.search.space import SearchSpace
    from tests.search.graph_models import TinyResNet

    model = TinyResNet(width=8).eval()
    x = torch.randn(16, 1, 16, 16)
    both = ("quantized_po2_zero(4,1)", "quantized_bits({b},{i},1)")
    sp = SearchSpace.from_model(model, (1, 16, 16), x, kernels=both, bits={"kernel": {"conv": (4,), "stage1.conv1": ()}})
    kernels = {lay.name: lay.kernel for lay in sp.layers}
    assert kernels["stage1.conv1"] == ["quantized_po2_zero(4,1)"] and len(kernels["stage1.conv2"]) == 2
    with pytest.raises(ConfigError, match=r"'stage1\.conv1' \(conv\) no kernel choice"):
        SearchSpace.from_model(model, (1, 16, 16), x, kernels=both[1:], bits={"kernel": {"stage1.conv1": ()}})


def test_group_widths_that_cannot_apply_are_errors_not_ignored():
    """A group named by a pattern must take a width it was given: widening a group that cannot widen is a
    ConfigError with the reason, not a silently full-width group; a pattern naming only a fixed layer (the
    classifier) says its width is fixed; ``group_widths`` with ``width_mode="block"`` (one width shared by
    all groups) is refused; norms=() still keeps batch norms float, but norm bits that leave the folded
    norm templates no choice are an error."""
    from nncodec.search.space import SearchSpace
    from tests.search.graph_models import TinyResNet

    x8 = torch.randn(16, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"group_widths 'a' gives group 'a' \[1\.5\].*cannot widen"):
        SearchSpace.from_model(Concat(), (1, 8, 8), x8, group_widths={"a": (1.5,)})
    ok = SearchSpace.from_model(Concat(), (1, 8, 8), x8, group_widths={"a": (0.5, 1.5)})
    assert ok.width_choices["a"] == [0.5]
    model = TinyResNet(width=8).eval()
    x = torch.randn(16, 1, 16, 16)
    with pytest.raises(ConfigError, match=r"'fc' names a layer whose width is fixed"):
        SearchSpace.from_model(model, (1, 16, 16), x, group_widths={"fc": (0.5,)})
    with pytest.raises(ConfigError, match="width_mode='block'"):
        SearchSpace.from_model(model, (1, 16, 16), x, widths=(0.75,), width_mode="block",
                               group_widths={"stage3.*": (0.5,)})
    float_norms = SearchSpace.from_model(model, (1, 16, 16), x, norms=())
    assert not [lay for lay in float_norms.layers if lay.kind == "norm" and lay.kernel]
    with pytest.raises(ConfigError, match=r"leave the batch norm 'stem\.1' no choice"):
        SearchSpace.from_model(model, (1, 16, 16), x, bits={"kernel": {"norm": ()}})

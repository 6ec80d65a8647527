"""The final fine-tuning: batch-norm statistics re-estimated after every epoch, and the best epoch kept as
chosen on a selection split carved from the training examples (never the validation set)."""

import copy
import time

import numpy as np
import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.search import ClassifierTask, FunctionTask, SearchConfig, SearchSpace, run_search
from nncodec.search.candidate import recalibrate_batch_norms
from nncodec.search.runner import FINAL_RECALIBRATION_EXAMPLES, calibration_index
from nncodec.train import accuracy, train_classifier
from tests.search.digits import INPUT, bn_cnn, data


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    x_train, y_train, _, _ = data()
    return train_classifier(bn_cnn(8), x_train, y_train, epochs=4, lr=3e-3).eval()


def _space(reference) -> SearchSpace:
    return SearchSpace.from_model(reference, INPUT, data()[0][:64], widths=(1.0,),
                                  bits={"kernel": {"conv": (8,), "dense": (8,)}, "activation": {"conv": (4,)}})


def _task() -> ClassifierTask:
    x_train, y_train, x_test, y_test = data()
    return ClassifierTask(x_train, y_train, x_test, y_test, lr=3e-3)


def _config(tmp_path, **kw) -> SearchConfig:
    return SearchConfig(**{"controller": "random", "n_trials": 1, "final_epochs": 3, "out_dir": str(tmp_path),
                           "progress": False, "study_name": "final", **kw})


def _rows(x) -> set[bytes]:
    return {np.asarray(r).tobytes() for r in x}


def test_hold_out_is_carved_from_training_examples_only():
    x_train, y_train, x_test, y_test = data()
    task = ClassifierTask(x_train, y_train, x_test, y_test, seed=3)
    fit, select, index = task.hold_out(0.2, seed=5)
    assert len(index) == round(0.2 * len(x_train)) and len(set(index.tolist())) == len(index)
    rest = sorted(set(range(len(x_train))) - set(index.tolist()))
    assert np.array_equal(select.x_val, x_train[index.numpy()]) and np.array_equal(select.y_val, y_train[index.numpy()])
    assert np.array_equal(fit.x_train.numpy(), x_train[rest]) and np.array_equal(fit.y_train.numpy(), y_train[rest])
    # fit trains on none of the selection examples, and both are scored apart from the evaluation set
    assert not _rows(select.x_val) & _rows(fit.x_train.numpy())
    assert not _rows(select.x_val) & _rows(x_test)
    assert np.array_equal(fit.x_val, x_test) and fit.lr == task.lr and fit.batch_size == task.batch_size
    again = task.hold_out(0.2, seed=5)[2]
    assert torch.equal(again, index) and not torch.equal(task.hold_out(0.2, seed=6)[2], index)
    for bad in (0, 1, 1.5, -0.1, "0.1", True):
        with pytest.raises(ConfigError, match="selection split"):
            task.hold_out(bad)
    tiny = ClassifierTask(x_train[:2], y_train[:2], x_test, y_test)
    with pytest.raises(ConfigError, match="leaves none"):
        tiny.hold_out(0.9)


class _ScriptedSelection(ClassifierTask):
    """A classifier task whose selection split scores epochs by a script (and remembers each epoch's state);
    carving the split takes at least ``HOLD_OUT_SECONDS`` (it is part of the fine-tuning's time)."""

    HOLD_OUT_SECONDS = 0.5

    def __init__(self, scores, *args, **kw):
        super().__init__(*args, **kw)
        self.scores, self.states, self.held_out = list(scores), [], None

    def hold_out(self, fraction, seed=0):
        fit, select, index = super().hold_out(fraction, seed)
        self.held_out = index
        self.split_at = time.perf_counter()
        time.sleep(self.HOLD_OUT_SECONDS)

        def evaluate(model):
            self.states.append(copy.deepcopy(model.state_dict()))
            self.scored_at = time.perf_counter()
            return self.scores[len(self.states) - 1]

        select.evaluate = evaluate
        return fit, select, index


def test_the_best_selection_epoch_is_kept(reference, tmp_path):
    x_train, y_train, x_test, y_test = data()
    task = _ScriptedSelection([0.5, 0.9, 0.6], x_train, y_train, x_test, y_test, lr=3e-3)
    result = run_search(reference, _space(reference), task, _config(tmp_path, final_selection=0.25))
    steps = result.final_steps
    assert steps["selection_epochs"] == [0.5, 0.9, 0.6] and steps["kept_epoch"] == 1
    assert steps["kept_selection_score"] == 0.9 and steps["selection_examples"] == len(task.held_out)
    assert steps["fine_tune_seconds"] >= task.scored_at - task.split_at - 0.05  # the split's time counted
    kept, last = task.states[1], task.states[2]
    state = result.model.state_dict()
    assert all(torch.equal(state[k], kept[k]) for k in kept)  # weights and batch-norm statistics of epoch 1
    assert any(not torch.equal(kept[k], last[k]) for k in kept if k.endswith("weight"))  # not the last epoch's
    assert result.accuracy == steps["kept"] == accuracy(result.model, x_test, y_test)
    assert result.decoded_accuracy == pytest.approx(result.accuracy, abs=0.02)


def test_selection_on_real_scores_keeps_the_best_epoch(reference, tmp_path):
    x_train, y_train, _, _ = data()
    task = _task()
    cfg = _config(tmp_path, final_selection=0.3, final_epochs=4, seed=2)
    result = run_search(reference, _space(reference), task, cfg)
    steps = result.final_steps
    index = task.hold_out(0.3, seed=2)[2].numpy()
    best = max(steps["selection_epochs"])
    assert steps["kept_selection_score"] == best
    assert steps["selection_epochs"][steps["kept_epoch"]] == best
    assert max(i for i, s in enumerate(steps["selection_epochs"]) if s == best) == steps["kept_epoch"]  # latest tie
    assert accuracy(result.model, x_train[index], y_train[index]) == best  # the kept model is the one scored
    assert len(steps["fine_tune_epochs"]) == 4  # the evaluation set's scores are reported, not chosen on


def test_final_statistics_are_re_estimated_after_the_last_epoch(reference, tmp_path):
    x_train = torch.as_tensor(data()[0])
    result = run_search(reference, _space(reference), _task(), _config(tmp_path))
    model = result.model
    fresh = copy.deepcopy(model)
    index = calibration_index(len(x_train), FINAL_RECALIBRATION_EXAMPLES, 0)
    batches = [(x_train[index[i:i + 256]],) for i in range(0, len(index), 256)]
    recalibrate_batch_norms(fresh, batches, sequential=True)  # the default final_recalibration
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms
    for name in norms:
        a, b = model.get_submodule(name), fresh.get_submodule(name)
        assert torch.allclose(a.running_mean, b.running_mean, atol=1e-6)
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-5)
    one_pass = copy.deepcopy(model)  # behind this net's quantizers the one-pass estimate is another one
    recalibrate_batch_norms(one_pass, batches)
    assert not all(torch.allclose(one_pass.get_submodule(k).running_var, model.get_submodule(k).running_var,
                                  rtol=1e-3) for k in norms)
    chosen = run_search(reference, _space(reference), _task(),
                        _config(tmp_path / "one", final_recalibration="one_pass")).model
    fresh = copy.deepcopy(chosen)
    recalibrate_batch_norms(fresh, batches)
    assert all(torch.allclose(chosen.get_submodule(k).running_var, fresh.get_submodule(k).running_var, rtol=1e-5)
               for k in norms)
    stale = run_search(reference, _space(reference), _task(),
                       _config(tmp_path / "off", final_recalibrate_norms=False)).model
    fresh = copy.deepcopy(stale)
    recalibrate_batch_norms(fresh, batches, sequential=True)
    assert not all(torch.allclose(stale.get_submodule(k).running_var, fresh.get_submodule(k).running_var, rtol=1e-3)
                   for k in norms)  # the momentum averages of training are left without it


def test_final_options_are_checked(reference, tmp_path):
    for bad in (1.0, -0.1, "0.1", True, float("nan")):
        with pytest.raises(ConfigError, match="final_selection"):
            SearchConfig(final_selection=bad)
    with pytest.raises(ConfigError, match="final_selection"):
        SearchConfig(final_selection=0.1, final_epochs=0)
    for bad in ("yes", 1, None):
        with pytest.raises(ConfigError, match="final_recalibrate_norms"):
            SearchConfig(final_recalibrate_norms=bad)
    trained = []
    task = FunctionTask(lambda m, e: trained.append(e), lambda m: 0.5)
    with pytest.raises(ConfigError, match="has none to hold out"):
        run_search(reference, _space(reference), task, _config(tmp_path, final_selection=0.1))
    assert not trained  # refused before any trial


def test_taylor_width_importance_keeps_the_channels_the_data_says(reference, tmp_path):
    """``width_importance='taylor'``: a narrowed candidate keeps the channels of the largest first-order Taylor
    scores on the labelled training examples (as ``resize_groups`` ranks them with the same gradients), not
    those of the largest weight norms; the reference is left without gradients and with its statistics."""
    from nncodec.prune.graph import Resizer, resize_groups
    from nncodec.quant.plan import Plan
    from nncodec.search.runner import TAYLOR_EXAMPLES, _Searcher

    x_train, y_train, _, _ = data()
    rows = calibration_index(len(x_train), TAYLOR_EXAMPLES, 0)  # the search's seed
    x, y = torch.as_tensor(x_train)[rows], torch.as_tensor(y_train)[rows]

    def backward(model):
        model.eval()
        nn.functional.cross_entropy(model(x), y, reduction="sum").backward()

    space = SearchSpace.from_model(reference, INPUT, x_train[:64], widths=(0.5, 1.0))
    plan = Plan({}, None, {"0": 0.5, "3": 0.5})
    stats = reference[1].running_var.clone()
    built = {}
    for how in ("l1", "taylor"):
        cfg = SearchConfig(n_trials=1, out_dir=str(tmp_path / how), width_importance=how, recalibrate_norms=False)
        searcher = _Searcher(reference, space, _task(), cfg, None)
        built[how] = searcher.build(plan)
    expected = resize_groups(reference, INPUT, {"0": 0.5, "3": 0.5}, importance="taylor", gradient_fn=backward)
    got = built["taylor"].state_dict()
    assert all(torch.allclose(got[k], v) for k, v in expected.state_dict().items())
    assert not torch.equal(built["l1"][0].weight, built["taylor"][0].weight)  # a different choice than the norms'
    assert all(p.grad is None for p in reference.parameters()) and torch.equal(reference[1].running_var, stats)
    resizer = Resizer(reference, INPUT, importance="taylor", gradient_fn=backward)
    assert all(torch.allclose(a, b) for a, b in zip(resizer.resize({"0": 0.5, "3": 0.5}).parameters(),
                                                    expected.parameters()))
    with pytest.raises(ConfigError, match="only Taylor"):
        Resizer(reference, INPUT, gradient_fn=backward)
    with pytest.raises(ConfigError, match="width_importance"):
        SearchConfig(width_importance="taylor2")
    with pytest.raises(ConfigError, match="width_importance"):
        SearchConfig(width_importance="taylor", controller="differentiable")
    with pytest.raises(ConfigError, match="ClassifierTask"):
        _Searcher(reference, space, FunctionTask(lambda m, e: None, lambda m: 0.5),
                  SearchConfig(n_trials=1, out_dir=str(tmp_path / "f"), width_importance="taylor"), None)
    unnarrowed = SearchSpace.from_model(reference, INPUT, x_train[:64], widths=(1.0,))
    with pytest.raises(ConfigError, match="narrows none"):  # an option that cannot apply is not ignored
        _Searcher(reference, unnarrowed, _task(),
                  SearchConfig(n_trials=1, out_dir=str(tmp_path / "w"), width_importance="taylor"), None)
    with torch.no_grad():  # the graph and the Taylor pass take their gradients even when the caller disabled them
        searcher = _Searcher(reference, space, _task(), SearchConfig(n_trials=1, out_dir=str(tmp_path / "g"),
                                                                     width_importance="taylor",
                                                                     recalibrate_norms=False), None)
        assert all(torch.allclose(a, b) for a, b in zip(searcher.build(plan).parameters(), expected.parameters()))


def test_calibration_passes_use_a_seeded_random_subset_of_a_class_sorted_set(reference, tmp_path):
    """The Taylor channel scores and the batch-norm re-estimation draw their examples by the search's seed,
    not the first ones: on a training set sorted by class, the first 512 hold four of the ten classes."""
    from nncodec.search.runner import TAYLOR_EXAMPLES, _Searcher

    x_train, y_train, x_test, y_test = data()
    order = np.argsort(y_train, kind="stable")
    xs, ys = x_train[order], y_train[order]
    assert len(set(ys[:TAYLOR_EXAMPLES].tolist())) <= 4
    rows = calibration_index(len(xs), TAYLOR_EXAMPLES, 5)
    assert torch.equal(rows, calibration_index(len(xs), TAYLOR_EXAMPLES, 5))
    assert not torch.equal(rows, calibration_index(len(xs), TAYLOR_EXAMPLES, 6))
    assert len(set(rows.tolist())) == TAYLOR_EXAMPLES and set(ys[rows[:128].numpy()].tolist()) == set(range(10))
    assert sorted(calibration_index(40, 512, 0).tolist()) == list(range(40))  # a small set: all of it
    # independent of the selection split's permutation (``hold_out``), which the same seed drives
    assert not torch.equal(calibration_index(len(xs), len(xs), 5),
                           torch.randperm(len(xs), generator=torch.Generator().manual_seed(5)))
    sorted_task = ClassifierTask(xs, ys, x_test, y_test, lr=3e-3)
    space = SearchSpace.from_model(reference, INPUT, xs[:64], widths=(0.5, 1.0))
    searcher = _Searcher(reference, space, sorted_task, SearchConfig(n_trials=1, out_dir=str(tmp_path), seed=5,
                                                                     width_importance="taylor"), None)
    got, expected = copy.deepcopy(reference), copy.deepcopy(reference)
    searcher._taylor_gradients(got)
    nn.functional.cross_entropy(expected.eval()(torch.as_tensor(xs)[rows]), torch.as_tensor(ys)[rows],
                                reduction="sum").backward()
    # sums over batches of 128 against one of 512: equal up to float summation order (relative to each tensor's peak)
    assert all(float((a.grad - b.grad).abs().max()) <= 1e-5 * float(b.grad.abs().max())
               for a, b in zip(got.parameters(), expected.parameters()))
    # the final re-estimation: batches of 256 in the seeded order (each batch holds every class)
    model = run_search(reference, _space(reference), sorted_task, _config(tmp_path / "final", seed=5)).model
    index = calibration_index(len(xs), FINAL_RECALIBRATION_EXAMPLES, 5)
    fresh = copy.deepcopy(model)
    recalibrate_batch_norms(fresh, [(torch.as_tensor(xs)[index[i:i + 256]],) for i in range(0, len(index), 256)],
                            sequential=True)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.allclose(m.running_var, fresh.get_submodule(name).running_var, rtol=1e-5)


def test_the_fine_tuning_progress_bar_is_closed_when_an_epoch_fails(reference, tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recording(tqdm.tqdm):
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "disable": True})
            self.label, self.was_closed = kw.get("desc", ""), False
            bars.append(self)

        def close(self):
            self.was_closed = True
            super().close()

    class Failing(ClassifierTask):
        def train_epoch(self, model, epoch, proxy=False):
            if not proxy:
                raise RuntimeError("fine-tuning epoch failed")
            super().train_epoch(model, epoch, proxy)

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    x_train, y_train, x_test, y_test = data()
    with pytest.raises(RuntimeError, match="fine-tuning epoch failed"):
        run_search(reference, _space(reference), Failing(x_train, y_train, x_test, y_test, lr=3e-3),
                   _config(tmp_path, progress=True))
    tuning = [b for b in bars if b.label == "fine-tuning"]
    assert len(tuning) == 1 and tuning[0].was_closed

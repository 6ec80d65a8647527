"""Accuracy-aware selection (``max_accuracy_drop``) and the distillation fine-tuning of the search."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from nncodec.cli import main
from nncodec.errors import ConfigError
from nncodec.quant.layers import _QuantParams
from nncodec.search import FineTuneConfig, FunctionTask, SearchConfig, SearchSpace, run_search
from nncodec.search.candidate import build_candidate
from nncodec.search.finetune import Distiller
from nncodec.search.runner import run_trials
from tests.search.digits import INPUT, KERNELS, data, space, task, trained_reference


@pytest.fixture(scope="module")
def reference():
    return trained_reference()


def _low_bit_layers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, _QuantParams) and m.kernel_quantizer is not None
               and m.kernel_quantizer.bits < 8)


def _bits_task() -> FunctionTask:
    """Scores 0.95 minus 0.025 per layer with a kernel under 8 bits: the cheap plans score high (eq. 2 pays
    more for their energy than they lose) but lose 2.5 points or more."""
    return FunctionTask(lambda model, epoch: None, lambda model: 0.95 - 0.025 * _low_bit_layers(model))


def _two_kernel_space(reference: nn.Module) -> SearchSpace:
    """Per layer a ternary or an 8-bit kernel, nothing else to choose (8 plans)."""
    return SearchSpace.from_model(reference, INPUT, data()[0][:64], kernels=KERNELS, widths=(1.0,),
                                  bits={"kernel": {"conv": (8,), "dense": (8,)}, "activation": {"conv": (8,)}})


def test_max_accuracy_drop_changes_the_returned_plan(reference, tmp_path):
    sp = _two_kernel_space(reference)
    common = dict(controller="random", n_trials=6, seed=0, progress=False)
    free = run_trials(reference, sp, _bits_task(), SearchConfig(out_dir=str(tmp_path / "a"), study_name="a", **common))
    model = build_candidate(reference, INPUT, free)
    assert _low_bit_layers(model) >= 1  # without the floor the score picks a plan that loses >= 2.5 points
    bounded = run_trials(reference, sp, _bits_task(), SearchConfig(out_dir=str(tmp_path / "b"), study_name="b",
                                                                   max_accuracy_drop=0.02, **common))
    assert _low_bit_layers(build_candidate(reference, INPUT, bounded)) == 0


def test_no_trial_within_the_drop_is_reported(reference, tmp_path):
    cfg = SearchConfig(controller="random", n_trials=3, final_epochs=0, max_accuracy_drop=0.0, seed=1,
                       out_dir=str(tmp_path), progress=False)
    result = run_search(reference, _two_kernel_space(reference), _bits_task(), cfg, reference_accuracy=0.99)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["selection"] == {"max_accuracy_drop": 0.0, "floor": 0.99, "result_meets_floor": False,
                                    "trials": 3, "trials_meeting_floor": 0, "pick_meets_floor": False}
    assert any("no trial reached the accuracy floor" in w for w in result.warnings)
    assert any("under the floor" in w for w in result.warnings)
    best = max(t["accuracy"] for t in result.trials)
    assert _bits_task().evaluate(result.model) == pytest.approx(best)  # the most accurate trial was taken


@pytest.mark.parametrize("kwargs, match", [
    ({"max_accuracy_drop": 1.0}, "fraction"), ({"max_accuracy_drop": -0.01}, "fraction"),
    ({"max_accuracy_drop": "0.01"}, "fraction"), ({"max_accuracy_drop": True}, "fraction"),
    ({"max_accuracy_drop": float("nan")}, "fraction"),
    ({"max_accuracy_drop": 0.01, "controller": "differentiable"}, "one model"),
    ({"max_accuracy_drop": 0.01, "controller": "greedy", "options": {"max_accuracy_drop": 0.02}}, "disagree"),
    ({"max_accuracy_drop": 0.01, "controller": "greedy", "options": {"max_accuracy_drop": "much"}}, "disagree"),
    ({"finetune": {"distill": 1.5}}, "distill"), ({"finetune": {"temperature": 0}}, "temperature"),
    ({"finetune": {"schedule": "step"}}, "schedule"), ({"finetune": {"epochs": 3}}, "unknown key"),
    ({"finetune": "kd"}, "FineTuneConfig"), ({"finetune": {"lr": -1.0}}, "lr"),
    ({"finetune": {}, "final_epochs": 0}, "train nothing"),
    ({"finetune": {"proxy": True}, "controller": "differentiable"}, "proxy=True"),
    ({"finetune": {"proxy": True}, "schedule": "iterative", "max_bits": 1}, "proxy=True"),
])
def test_wrong_selection_and_finetune_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig(**kwargs)


def test_greedy_reads_the_same_drop():
    assert SearchConfig(controller="greedy", max_accuracy_drop=0.03).options == {"max_accuracy_drop": 0.03}


def test_distillation_needs_labelled_training_data(reference, tmp_path):
    with pytest.raises(ConfigError, match="ClassifierTask"):
        run_search(reference, space(reference), _bits_task(),
                   SearchConfig(n_trials=1, finetune=FineTuneConfig(), out_dir=str(tmp_path), progress=False))


def _kl_to_reference(model: nn.Module, reference: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(nn.functional.kl_div(model(x).log_softmax(-1), reference(x).log_softmax(-1), log_target=True,
                                          reduction="batchmean"))


def test_distillation_brings_the_candidate_closer_to_the_reference(reference):
    """Same start, same epochs, same data: trained on the reference's outputs the ternary candidate's outputs
    end closer to the reference's than trained on the labels alone."""
    sp = space(reference, widths=(1.0,))
    plan = sp.plan_from({k: v[0] for k, v in sp.parameters().items()})  # ternary kernels: far from the reference
    x = torch.as_tensor(data()[0])
    tuned = {}
    for distill in (0.0, 1.0):
        torch.manual_seed(0)
        model = build_candidate(reference, INPUT, plan)
        before = _kl_to_reference(model, reference, x)
        Distiller(reference, task(), FineTuneConfig(distill=distill, temperature=2.0)).train(model, 2, proxy=False)
        tuned[distill] = _kl_to_reference(model.eval(), reference, x)
    assert tuned[1.0] < before and tuned[1.0] < 0.8 * tuned[0.0]


def test_cosine_schedule_ends_at_its_floor(reference):
    seen = []
    model = build_candidate(reference, INPUT, space(reference, widths=(1.0,)).plan_from({}))
    orig = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.Adam.step = spy
    try:
        Distiller(reference, task(), FineTuneConfig(lr=1e-2, min_lr_ratio=0.1)).train(model, 1, proxy=True)
    finally:
        torch.optim.Adam.step = orig
    assert seen[0] == pytest.approx(1e-2) and seen == sorted(seen, reverse=True)
    assert seen[-1] == pytest.approx(1e-3)


def test_cli_max_drop_and_finetune(tmp_path, capsys):
    x_train, y_train, x_test, y_test = data()
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test)
    (tmp_path / "net.py").write_text("from tests.search.digits import digits_cnn as build\n")
    args = ["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(npz), "--input-shape", "1,8,8",
            "--trials", "2", "--final-epochs", "1", "--controller", "random", "--reference-epochs", "3", "--json"]
    assert main(args + ["--out", str(tmp_path / "r"), "--max-drop", "0.05", "--finetune", '{"distill": 0.7}']) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["selection"]["floor"] == pytest.approx(summary["reference"]["accuracy"] - 0.05)
    assert summary["selection"]["trials"] == 2
    assert len(summary["final_steps"]["fine_tune_epochs"]) == 1
    for bad, match in ((["--max-drop", "5"], "fraction"), (["--finetune", '{"distill": 2}'], "distill")):
        assert main(args + ["--out", str(tmp_path / "bad")] + bad) == 2
        assert match in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()  # refused before anything was trained or written


def test_task_floor_and_max_drop_combine_into_the_higher_floor():
    from types import SimpleNamespace

    from nncodec.search.runner import _selection

    searcher = SimpleNamespace(selections=[{"study": "s", "trials": 4, "meeting": 1}])
    task = SimpleNamespace(min_score=0.95)
    warnings: list[str] = []
    out = _selection(searcher, SearchConfig(max_accuracy_drop=0.1, out_dir="unused"), task, 0.98, 0.96, warnings)
    assert out["floor"] == pytest.approx(0.95) and out["task_floor"] == 0.95  # 0.95 > 0.98 - 0.1
    assert out["result_meets_floor"] and not warnings
    out = _selection(searcher, SearchConfig(max_accuracy_drop=0.01, out_dir="unused"), task, 0.98, 0.96, warnings)
    assert out["floor"] == pytest.approx(0.97) and not out["result_meets_floor"]
    assert "max_accuracy_drop 0.01" in warnings[-1] and "task's floor 0.9500" in warnings[-1]
    assert _selection(searcher, SearchConfig(out_dir="unused"), SimpleNamespace(), 0.98, 0.5, []) == {}


def test_hyperband_intermediate_scores_are_floored_like_the_final_one(reference, tmp_path):
    """Hyperband prunes on the per-epoch values: a trial under the floor must rank under one that meets it
    there too, not only in its final value."""
    from types import SimpleNamespace

    from nncodec.search.runner import _Searcher

    cfg = SearchConfig(controller="hyperband", n_trials=1, proxy_epochs=2, max_accuracy_drop=0.01,
                       out_dir=str(tmp_path), progress=False)
    searcher = _Searcher(reference, space(reference), _bits_task(), cfg, None)
    searcher.reference_accuracy = 1.0  # floor 0.99: every candidate is under it
    reported: list[float] = []
    trial = SimpleNamespace(number=0, suggest_categorical=lambda name, values: values[0],
                            set_user_attr=lambda k, v: None, report=lambda value, step: reported.append(value),
                            should_prune=lambda: False)
    value = searcher.objective(trial, searcher.space.parameters(), multi=False)
    assert value < 0 and len(reported) == 2
    assert all(v < 0 for v in reported)


def test_summary_lines_start_the_fine_tuning_at_its_starting_score_and_name_the_floors_source():
    from nncodec.search.report import final_steps_line, selection_line

    line = final_steps_line({"built": 0.5, "after_prune": 0.4, "fine_tune_epochs": [0.7, 0.8], "decoded": 0.8})
    assert "fine-tuned 0.4000 -> 0.8000 over 2 epochs" in line  # from the pruned score, not the first epoch's
    line = selection_line({"max_accuracy_drop": None, "floor": 0.95, "task_floor": 0.95, "result_meets_floor": True})
    assert "None" not in line and "task floor 0.9500" in line


def test_teacher_logits_are_computed_once_and_indexed_for_the_fit_split(reference, tmp_path, monkeypatch):
    """With distilled trials (``proxy=True``) and a selection split, the final fine-tuning's teacher logits are
    the whole training set's (computed for the trials) at the fit examples' positions, not a second pass."""
    import nncodec.search.finetune as finetune

    passes = []
    real = finetune.eval_outputs

    def counted(model, inputs, *a, **k):
        passes.append(len(inputs[0]))
        return real(model, inputs, *a, **k)

    monkeypatch.setattr(finetune, "eval_outputs", counted)
    t = task()
    sp = space(reference, widths=(1.0,))
    cfg = SearchConfig(controller="random", n_trials=1, proxy_epochs=1, final_epochs=1, final_selection=0.2,
                       finetune={"proxy": True}, out_dir=str(tmp_path), progress=False)
    run_search(reference, sp, t, cfg)
    assert passes == [len(t.x_train)]
    full = Distiller(reference, t, FineTuneConfig())
    fit, _, index = t.hold_out(0.2, seed=0)
    rest = torch.tensor(sorted(set(range(len(t.x_train))) - set(index.tolist())))
    sub = full.restricted(fit, rest)
    assert torch.equal(sub.teacher_logits, full.teacher_logits[rest])
    assert torch.allclose(sub.teacher_logits, Distiller(reference, fit, FineTuneConfig()).teacher_logits, atol=1e-5)
    with pytest.raises(ConfigError, match="rows"):
        full.restricted(fit, rest[:-1])

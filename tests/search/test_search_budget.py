"""The search's wall-time budget (``SearchConfig.timeout_s`` / ``--timeout``): stops, resumes, splits, refuses."""

import math
import time

import optuna
import pytest

from nncodec.cli import build_parser, main
from nncodec.errors import ConfigError
from nncodec.search import SearchConfig, run_search
from nncodec.search.runner import _Searcher, run_trials
from tests.search.digits import space, task, trained_reference

TRIAL_S = 0.25  # every trained candidate takes at least this long


@pytest.fixture(scope="module")
def reference():
    return trained_reference(epochs=2)


class SlowTask:
    """The digits task with a floor on each proxy epoch, so trial counts follow from the time budget."""

    def __init__(self):
        self.inner = task(0.2)

    def train_epoch(self, model, epoch, proxy):
        time.sleep(TRIAL_S)
        self.inner.train_epoch(model, epoch, proxy)

    def evaluate(self, model):
        return self.inner.evaluate(model)


def _finished(url, name):
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(optuna.load_study(study_name=name, storage=url).get_trials(states=states))


def test_timeout_stops_before_n_trials_and_resume_keeps_the_total(reference, tmp_path):
    url = f"sqlite:///{tmp_path / 'search.db'}"
    cfg = SearchConfig(controller="random", n_trials=20, timeout_s=0.6, study_name="budget", progress=False,
                       out_dir=str(tmp_path))
    t0 = time.perf_counter()
    run_trials(reference, space(reference, widths=(1.0,)), SlowTask(), cfg)
    first = _finished(url, "budget")
    # trial k ends after >= 0.25 k s: trial 3 may start before 0.6 s, trial 4 cannot
    assert 1 <= first <= 3 and time.perf_counter() - t0 >= 0.6
    # resumed with a larger budget: the study's total stays n_trials (not first + n_trials)
    cfg = SearchConfig(controller="random", n_trials=first + 2, timeout_s=60.0, study_name="budget", progress=False,
                       out_dir=str(tmp_path))
    run_trials(reference, space(reference, widths=(1.0,)), SlowTask(), cfg)
    assert _finished(url, "budget") == first + 2


def test_time_only_budget_runs_until_the_time_is_spent(reference, tmp_path):
    cfg = SearchConfig(controller="tpe", n_trials=None, timeout_s=0.8, final_epochs=0, progress=False,
                       out_dir=str(tmp_path))
    result = run_search(reference, space(reference, widths=(1.0,)), SlowTask(), cfg)
    assert result.search_seconds >= 0.8  # no trial count: only the time stops it
    assert 1 <= len(result.trials) <= math.floor(0.8 / TRIAL_S) + 1
    assert result.summary()["search_seconds"] == result.search_seconds < result.seconds


def test_block_search_splits_the_time_by_trial_share(reference, tmp_path):
    timeout = 2.0
    cfg = SearchConfig(controller="random", n_trials=18, min_trials_per_block=6, block_search=True,
                       timeout_s=timeout, study_name="blocks", progress=False, out_dir=str(tmp_path))
    sp = space(reference, widths=(1.0,))
    schedule = _Searcher(reference, sp, SlowTask(), cfg, None).block_schedule()
    total = sum(n for _, n in schedule)
    run_trials(reference, sp, SlowTask(), cfg)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    counts = [_finished(url, f"blocks.block{i}") for i in range(len(schedule))]
    assert all(c >= 1 for c in counts)  # every block searched
    assert sum(counts) < total  # the time, not the trial counts, ended the search
    # the first block stops at its share of the time (+ one trial), leaving the rest to the others
    assert counts[0] <= math.floor(timeout * schedule[0][1] / total / TRIAL_S) + 1


@pytest.mark.parametrize("kwargs, match", [
    ({"timeout_s": 0}, "positive"),
    ({"timeout_s": -3.0}, "positive"),
    ({"timeout_s": float("nan")}, "positive"),
    ({"timeout_s": "10"}, "positive"),
    ({"n_trials": None}, "needs timeout_s"),
    ({"n_trials": 0}, "n_trials must be"),
    ({"n_trials": 2.5}, "n_trials must be"),
    ({"n_trials": None, "timeout_s": 5.0, "block_search": True}, "block search"),
    ({"timeout_s": 5.0, "controller": "differentiable"}, "timeout_s applies"),
    ({"timeout_s": 5.0, "controller": "greedy"}, "timeout_s applies"),
    ({"timeout_s": 5.0, "schedule": "iterative"}, "timeout_s applies"),
    ({"timeout_s": 5.0, "options": {"codesign": True}}, "co-design"),
])
def test_bad_budgets_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SearchConfig(**kwargs)


def test_cli_timeout_option(capsys, tmp_path):
    parser = build_parser()
    assert parser.parse_args(["search", "--timeout", "90"]).timeout == 90.0
    assert parser.parse_args(["demo", "--timeout", "1.5", "--trials", "8"]).timeout == 1.5
    assert parser.parse_args(["search"]).timeout is None
    for argv, match in ((["search", "--timeout", "-1"], "positive"),
                        (["search", "--timeout", "0"], "positive"),
                        (["search", "--timeout", "5", "--controller", "differentiable"], "timeout_s applies")):
        assert main(argv + ["--out", str(tmp_path / "never")]) == 2
        assert match in capsys.readouterr().err

"""``nncodec search --model FILE.py:FUNCTION --data DATA.npz`` trains an untrained reference and says so."""

import json

import numpy as np

from nncodec.cli import main
from tests.search.digits import data

MODEL = '''
from torch import nn

def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))
'''


def _run(tmp_path, capsys, name, *extra):
    x_train, y_train, x_test, y_test = data()
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test)
    (tmp_path / "net.py").write_text(MODEL)
    code = main(["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(npz), "--input-shape", "1,8,8",
                 "--trials", "2", "--final-epochs", "1", "--controller", "random", "--out", str(tmp_path / name),
                 "--json", *extra])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_cli_trains_an_untrained_reference(tmp_path, capsys):
    summary = _run(tmp_path, capsys, "trained", "--reference-epochs", "4")
    assert summary["reference"]["accuracy"] > 0.85
    assert any("trained the reference" in n for n in summary["notes"])
    assert summary["warnings"] == []
    assert summary["result"]["decoded_accuracy"] > 0.5


def test_cli_warns_about_a_chance_level_reference(tmp_path, capsys):
    summary = _run(tmp_path, capsys, "untrained", "--reference-epochs", "0")
    assert summary["reference"]["accuracy"] < 0.35
    assert len(summary["warnings"]) == 1 and "chance level" in summary["warnings"][0]


def test_cli_size_score(tmp_path, capsys):
    import optuna

    summary = _run(tmp_path, capsys, "sized", "--reference-epochs", "1", "--size-score", '{"p_smaller": 4}')
    assert summary["result"]["bitstream_bytes"] > 0
    study = optuna.load_study(study_name="nncodec-search", storage=f"sqlite:///{tmp_path / 'sized' / 'search.db'}")
    assert all(t.user_attrs["stored_bits"] > 0 for t in study.get_trials())
    for bad, match in (("[4]", "JSON object"), ("{p_smaller: 4}", "JSON object"), ('{"p": 4}', "unknown key")):
        assert main(["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(tmp_path / "digits.npz"),
                     "--input-shape", "1,8,8", "--size-score", bad, "--out", str(tmp_path / "bad")]) == 2
        assert match in capsys.readouterr().err
    assert main(["search", "--size-score"]) == 2  # the demo's score is fixed
    assert "--size-score" in capsys.readouterr().err


def test_cli_initial_kernels(tmp_path, capsys):
    """``--initial-kernels gptq`` reaches the search: the candidates start from data-aware kernels (trial
    plans with only power-of-two kernels keep theirs), and the demo refuses it."""
    import torch

    runs = {}
    for how in ("nearest", "gptq"):
        torch.manual_seed(0)  # the same trained reference for both
        runs[how] = _run(tmp_path, capsys, how, "--reference-epochs", "2", "--seed", "3", "--final-epochs", "0",
                         "--trials", "1", "--initial-kernels", how)
    assert runs["gptq"]["result"]["decoded_accuracy"] > 0.3
    assert runs["gptq"]["result"]["plan"] == runs["nearest"]["result"]["plan"]  # one trial, same seed: the same plan, only the start differs
    assert runs["gptq"]["final_steps"]["built"] != runs["nearest"]["final_steps"]["built"]
    assert main(["search", "--initial-kernels", "gptq"]) == 2
    assert "--initial-kernels" in capsys.readouterr().err


def test_cli_final_selection(tmp_path, capsys):
    """``--final-selection`` holds part of x_train out of the final fine-tuning and keeps its best epoch; a
    fraction outside [0, 1) is a configuration error, and the demo refuses it."""
    summary = _run(tmp_path, capsys, "selected", "--reference-epochs", "2", "--final-epochs", "3",
                   "--final-selection", "0.2")
    steps = summary["final_steps"]
    assert steps["selection_examples"] == round(0.2 * len(data()[0])) and len(steps["selection_epochs"]) == 3
    assert steps["kept_selection_score"] == max(steps["selection_epochs"])
    assert main(["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(tmp_path / "digits.npz"),
                 "--input-shape", "1,8,8", "--final-selection", "1.5", "--out", str(tmp_path / "bad")]) == 2
    assert "final_selection" in capsys.readouterr().err
    assert main(["search", "--final-selection", "0.1"]) == 2
    assert "--final-selection" in capsys.readouterr().err
    assert main(["search", "--width-importance", "taylor"]) == 2  # the demo's widths are its own
    assert "--width-importance" in capsys.readouterr().err
    assert main(["search", "--final-recalibration", "one_pass"]) == 2
    assert "--final-recalibration" in capsys.readouterr().err


def test_cli_trials_only_refuses_final_step_options(tmp_path, capsys):
    """``--trials-only`` runs no final steps: options that only set them are configuration errors (not
    silently unused), refused before the reference is trained."""
    x_train, y_train, x_test, y_test = data()
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test)
    (tmp_path / "net.py").write_text(MODEL)
    base = ["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(npz), "--input-shape", "1,8,8",
            "--trials-only", "--out", str(tmp_path / "w")]
    for extra, flag in ((["--prune", "0.5"], "--prune"), (["--final-selection", "0.1"], "--final-selection"),
                        (["--keep-final-norms"], "--keep-final-norms"),
                        (["--final-recalibration", "one_pass"], "--final-recalibration"),
                        (["--prune", "0.5", "--prune-epochs", "2"], "--prune-epochs")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert flag in err and "--trials-only" in err and "trained the reference" not in err

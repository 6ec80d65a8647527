"""``nncodec search`` with the seed methods: co-design JSON output, options that do not apply."""

import json

import numpy as np

from nncodec.cli import main
from tests.search.digits import data
from tests.search.test_cli_search import MODEL


def _args(tmp_path):
    x_train, y_train, x_test, y_test = data()
    npz = tmp_path / "digits.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test)
    (tmp_path / "net.py").write_text(MODEL)
    return ["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(npz), "--input-shape", "1,8,8",
            "--reference-epochs", "2", "--final-epochs", "1", "--proxy-fraction", "0.2", "--json"]


def test_cli_codesign_reports_hardware_energy_and_latency(tmp_path, capsys):
    hardware = {"rounds": 1, "sram_bits": [2 ** 16, 2 ** 20], "blocks": [1, 2], "channels": [8]}
    code = main(_args(tmp_path) + ["--controller", "tpe", "--trials", "2", "--out", str(tmp_path / "co"),
                                   "--codesign", "--hardware", json.dumps(hardware)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    hw = summary["hardware"]
    assert hw["sram_bits"] in hardware["sram_bits"] and hw["blocks"] in (1, 2) and hw["channels"] == 8
    assert hw["latency_s"] > 0 and hw["energy_pj"] > 0
    assert [h["step"] for h in summary["codesign"]["history"]] == ["start", "network", "hardware"]
    assert json.loads((tmp_path / "co" / "hardware.json").read_text())["hardware"] == hw


def test_cli_rejects_options_that_do_not_apply(tmp_path, capsys):
    assert main(_args(tmp_path) + ["--controller", "tpe", "--option", "lambda=0.5", "--out", str(tmp_path / "x")]) != 0
    assert "lambda" in capsys.readouterr().err
    assert main(_args(tmp_path) + ["--hardware", "{}", "--out", str(tmp_path / "y")]) != 0
    assert "--codesign" in capsys.readouterr().err
    assert main(["search", "--schedule", "iterative"]) != 0


def test_cli_choices_are_the_registry_names():
    from nncodec import cli
    from nncodec.search import CONTROLLERS
    from nncodec.search.controllers import SCHEDULES

    assert set(cli.SEARCH_CONTROLLERS) == set(CONTROLLERS)
    assert cli.SEARCH_SCHEDULES == ("single", *SCHEDULES)


def test_cli_refuses_trials_and_width_options_a_method_ignores(tmp_path, capsys):
    assert main(["demo", "--controller", "differentiable", "--trials", "3", "--out", str(tmp_path / "d")]) != 0
    assert "--trials" in capsys.readouterr().err
    assert main(_args(tmp_path) + ["--schedule", "iterative", "--keep-width", "0", "--max-bits", "1",
                                   "--out", str(tmp_path / "w")]) != 0
    assert "--keep-width" in capsys.readouterr().err

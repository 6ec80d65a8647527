import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from nncodec.cli import main


@pytest.fixture
def state_file(tmp_path):
    torch.manual_seed(0)
    sd = {"layer.weight": torch.randn(32, 16), "layer.bias": torch.randn(32), "bf": torch.randn(4).bfloat16()}
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    return sd, path


def test_encode_info_verify_decode_cycle(state_file, tmp_path, capsys):
    sd, path = state_file
    out = tmp_path / "m.nnc"
    assert main(["encode", str(path), str(out)]) == 0
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = [u["tensor"]["name"] for u in info["units"] if u["tensor"]]
    assert names == sorted(sd)
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    for ext in ("safetensors", "pt"):
        dec = tmp_path / f"back.{ext}"
        assert main(["decode", str(out), str(dec), "-q"]) == 0
        back = torch.load(dec, weights_only=True) if ext == "pt" else load_file(dec)
        assert all(torch.equal(back[k], v) for k, v in sd.items())


def test_encode_quantized_from_npz_and_report(tmp_path, capsys):
    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((64, 64)).astype(np.float32)}
    np.savez(tmp_path / "w.npz", **arrays)
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "w.nnc"), "--bits", "4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    t = report["tensors"][0]
    assert t["scheme"] == "uniform" and t["bits"] == 4 and 4.0 <= t["bits_per_param"] < 4.6
    assert main(["decode", str(tmp_path / "w.nnc"), str(tmp_path / "out.npz"), "-q"]) == 0
    with np.load(tmp_path / "out.npz") as z:
        assert np.abs(z["w"] - arrays["w"]).max() <= t["max_abs_error"] * 1.0001


def test_errors_exit_nonzero_with_a_message(state_file, tmp_path, capsys):
    _, path = state_file
    out = tmp_path / "m.nnc"
    main(["encode", str(path), str(out), "-q"])
    data = bytearray(out.read_bytes())
    data[40] ^= 4
    bad = tmp_path / "bad.nnc"
    bad.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    assert "nncodec: error:" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "missing.pt"), str(out)]) == 1
    assert main(["encode", str(path), str(out), "--bits", "99"]) == 1
    with pytest.raises(SystemExit):
        main(["encode", "--help"])


def test_encode_with_relative_step(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", **{"emb.weight": rng.standard_normal((100, 32)).astype(np.float32),
                                    "fc.weight": rng.standard_normal((32, 32)).astype(np.float32)})
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "w.nnc"), "--rel-step", "0.1",
                 "--step-scale", "emb*=2", "--json"]) == 0
    by = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert by["emb.weight"]["max_abs_error"] > by["fc.weight"]["max_abs_error"]
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "x.nnc"), "--rel-step", "0.1",
                 "--step-scale", "nofactor"]) == 1


def test_encode_with_a_step_scales_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "w.npz", **{"a.weight": rng.standard_normal((64, 32)).astype(np.float32),
                                    "b.weight": rng.standard_normal((64, 32)).astype(np.float32)})
    (tmp_path / "scales.json").write_text(json.dumps({"a.weight": 0.25, "b.weight": 4.0}))
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "w.nnc"), "--rel-step", "0.1",
                 "--step-scales", str(tmp_path / "scales.json"), "--json"]) == 0
    by = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert by["b.weight"]["rms_error"] > 8 * by["a.weight"]["rms_error"]
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "x.nnc"), "--rel-step", "0.1",
                 "--step-scales", str(tmp_path / "bad.json")]) == 1
    assert "JSON object" in capsys.readouterr().err
    assert not (tmp_path / "x.nnc").exists()

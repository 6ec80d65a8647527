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
    names = [t["name"] for u in info["units"] for t in ([u["tensor"]] if u["tensor"] else u["members"] or [])]
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
    assert main(["verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nncodec: error:") and str(bad) in err and "ChecksumError" in err and err.count("\n") == 1
    assert main(["encode", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert main(["encode", str(path), str(out), "--bits", "99"]) == 2
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
                 "--step-scale", "nofactor"]) == 2


def test_encode_with_dependent_quantization(tmp_path, capsys):
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(64, 48)).astype(np.float32)
    np.savez(tmp_path / "w.npz", fc=w)
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "d.nnc"), "--rel-step", "0.3", "--dependent",
                 "--json"]) == 0
    (tensor,) = json.loads(capsys.readouterr().out)["tensors"]
    assert tensor["pipeline"][0] == "dependent"
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "p.nnc"), "--rel-step", "0.3", "-q"]) == 0
    # the union of the two quantizers is twice as fine: less error at the same rel_step
    assert main(["decode", str(tmp_path / "d.nnc"), str(tmp_path / "d.npz"), "-q"]) == 0
    assert main(["decode", str(tmp_path / "p.nnc"), str(tmp_path / "p.npz"), "-q"]) == 0
    err = {k: float(np.mean((np.load(tmp_path / f"{k}.npz")["fc"] - w) ** 2)) for k in ("d", "p")}
    assert err["d"] < 0.8 * err["p"]
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "b.nnc"), "--bits", "8", "--dependent"]) == 2


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
                 "--step-scales", str(tmp_path / "bad.json")]) == 2
    assert "JSON object" in capsys.readouterr().err
    assert not (tmp_path / "x.nnc").exists()


def _bad_inputs(tmp_path):
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{not json")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02not a zip archive")
    (tmp_path / "garbage.npz").write_bytes(b"PK but not really")
    torch.save({"a": [1, 2]}, tmp_path / "nontensor.pt")
    return ["objects.npz", "corrupt.safetensors", "legacy.pt", "garbage.npz", "nontensor.pt"]


def test_every_bad_input_file_gets_one_line_naming_it_and_exit_2(tmp_path, capsys):
    for name in _bad_inputs(tmp_path):
        assert main(["encode", str(tmp_path / name), str(tmp_path / "o.nnc")]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("nncodec: error:") and name in err and err.count("\n") == 1, err
        assert "Traceback" not in err
    assert not (tmp_path / "o.nnc").exists()
    (tmp_path / "notnnc.nnc").write_bytes(b"hello world, not a stream")
    for cmd in (["info"], ["verify"], ["decode"]):
        argv = cmd + [str(tmp_path / "notnnc.nnc")] + ([str(tmp_path / "o.npz")] if cmd == ["decode"] else [])
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "notnnc.nnc" in err and "BadMagicError" in err and err.count("\n") == 1


def test_options_that_would_be_ignored_are_errors(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", w=np.ones((4, 4), np.float32))
    (tmp_path / "s.json").write_text(json.dumps({"w": 2.0}))
    out = tmp_path / "w.nnc"
    assert main(["encode", str(tmp_path / "w.npz"), str(out), "--bits", "4", "--step-scales",
                 str(tmp_path / "s.json")]) == 2
    assert "--rel-step" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "w.npz"), str(out), "--step-scale", "w=2"]) == 2
    assert not out.exists()
    assert main(["energy", "--input-shape", "3,32,32"]) == 2
    err = capsys.readouterr().err
    assert "--input-shape" in err and "--model" in err


def test_a_write_error_names_the_destination_not_the_temporary_file(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", w=np.ones(3, np.float32))
    dest = tmp_path / "no" / "such" / "dir" / "w.nnc"
    assert main(["encode", str(tmp_path / "w.npz"), str(dest)]) == 2
    err = capsys.readouterr().err
    assert str(dest) in err and ".tmp" not in err and err.count("\n") == 1
    (tmp_path / "taken.nnc").mkdir()
    assert main(["encode", str(tmp_path / "w.npz"), str(tmp_path / "taken.nnc")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "taken.nnc") in err and ".tmp" not in err


def test_decode_of_tied_tensors_to_every_output_type(tmp_path, capsys):
    import nncodec

    shared = torch.randn(5, 3)
    nncodec.encode({"emb": shared, "head": shared, "bias": torch.zeros(5)}, tmp_path / "t.nnc", group_tensors=False)
    for ext in ("safetensors", "pt", "npz"):
        assert main(["decode", str(tmp_path / "t.nnc"), str(tmp_path / f"t.{ext}"), "-q"]) == 0
    back = load_file(tmp_path / "t.safetensors")
    assert torch.equal(back["emb"], shared) and torch.equal(back["head"], shared)
    pt = torch.load(tmp_path / "t.pt", weights_only=True)
    assert pt["emb"].data_ptr() == pt["head"].data_ptr()  # torch.save keeps the sharing
    assert main(["info", str(tmp_path / "t.nnc"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["aliases"] == {"head": "emb"} and info["version"] == [1, 1]
    assert main(["info", str(tmp_path / "t.nnc")]) == 0
    assert "alias head -> emb" in capsys.readouterr().out


def test_no_adaptive_coding_writes_no_stage_8(tmp_path, capsys):
    """A pruned 4-bit kernel is coded by stage 8 (format 1.6) unless --no-adaptive-coding; both decode alike."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(np.float32)
    w[rng.random(w.shape) > 0.1] = 0
    np.savez(tmp_path / "w.npz", w=w)
    streams = {}
    for flags in ([], ["--no-adaptive-coding"]):
        out = tmp_path / f"w{len(flags)}.nnc"
        assert main(["encode", str(tmp_path / "w.npz"), str(out), "--bits", "4", "--json", *flags]) == 0
        streams[bool(flags)] = (json.loads(capsys.readouterr().out)["tensors"][0]["pipeline"], out.read_bytes())
    assert streams[False][0] == ["acode"] and int.from_bytes(streams[False][1][10:12], "little") == 6
    assert "acode" not in streams[True][0] and int.from_bytes(streams[True][1][10:12], "little") < 6
    for i in (0, 1):
        assert main(["decode", str(tmp_path / f"w{i}.nnc"), str(tmp_path / f"o{i}.npz"), "-q"]) == 0
    with np.load(tmp_path / "o0.npz") as a, np.load(tmp_path / "o1.npz") as b:
        assert np.array_equal(a["w"], b["w"])

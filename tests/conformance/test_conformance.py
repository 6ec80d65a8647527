"""The bundled vectors: nncodec passes them, broken decoders do not, and the generator never overwrites."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from nncodec.cli import main
from nncodec.conformance.generate import generate
from nncodec.conformance.runner import reported_error_class, run_conformance
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.decoder import read_info
from nncodec.errors import ConfigError

VECTORS = default_vectors_dir()
HERE = Path(__file__).parent


def test_nncodec_passes_every_vector():
    outcomes = list(run_conformance(VECTORS))
    failed = [(o.vector.name, o.detail) for o in outcomes if not o.passed]
    assert not failed
    assert len(outcomes) == len(load_manifest(VECTORS)) >= 60


def test_vectors_cover_the_format():
    vectors = load_manifest(VECTORS)
    valid = [v for v in vectors if v.error is None]
    schemes, stages, levels, dtypes = set(), set(), set(), set()
    units = set()
    for v in valid:
        info = read_info(VECTORS / v.file)
        for u in info.units:
            units.add(u.type)
            if u.tensor:
                schemes.add(u.tensor["scheme"])
                dtypes.add(u.tensor["dtype"])
                stages.add(tuple(s["id"] for s in u.tensor["pipeline"]))
                levels.update(s.get("levels") for s in u.tensor["pipeline"] if s["id"] == "zero_words")
    assert schemes == {"none", "uniform", "binary", "modified_binary", "ternary", "po2", "float_cast"}
    assert {(), ("zstd",), ("shuffle", "zstd"), ("zero_words",), ("zero_words", "zstd"), ("bitpack",)} <= stages
    assert levels == {1, 2}
    assert {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
            "bfloat16", "float32", "float64"} <= dtypes
    assert {"topology", "model_parameter_set", "tensor_aliases", "unknown(0x55)"} <= units
    errors = {v.error for v in vectors if v.error}
    assert errors == {"TruncatedError", "BadMagicError", "UnsupportedVersionError", "CorruptError", "ChecksumError",
                      "UnknownUnitError", "LimitExceededError", "UnsupportedFeatureError"}


def _python_decoder(script: str) -> str:
    return f"{sys.executable} {HERE / script} {{in}} {{out}}"


# Running a Python decoder per vector costs about a second: CI proves the protocol on a handful of vectors
# (valid ones with bfloat16 and rANS, invalid ones of three classes); `nncodec conformance --decoder` runs all.
HANDFUL = ["lossless_bfloat16", "stage_rans", "checksum_mismatch", "bad_magic", "unknown_stage"]


def _only(names=HANDFUL):
    return [arg for name in names for arg in ("--only", name)]


def test_an_external_decoder_is_held_to_the_suite(capsys):
    assert main(["conformance", "--json", *_only(), "--decoder", _python_decoder("decoders/good.py")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0 and report["passed"] == len(HANDFUL)
    assert all(r["detail"].startswith(f"rejected with {r['expect']}") for r in report["vectors"]
               if r["expect"] != "decode")


@pytest.mark.parametrize("script,breaks,detail", [
    ("decoders/flips_a_bit.py", "valid", "decoded values differ"),
    ("decoders/lenient.py", "invalid", "accepted"),
    ("decoders/wrong_class.py", "invalid", "reported 'FormatError'"),
    ("decoders/silent.py", "invalid", "no error class"),
])
def test_broken_decoders_fail(script, breaks, detail, capsys):
    # each broken decoder meets the two vectors of the kind it breaks (a subprocess per vector costs ~1 s)
    names = HANDFUL[:2] if breaks == "valid" else HANDFUL[2:4]
    assert main(["conformance", "--json", *_only(names), "--decoder", _python_decoder(script)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert sorted(r["name"] for r in report["vectors"]) == sorted(names)
    assert not any(r["passed"] for r in report["vectors"])
    assert all(detail in r["detail"] for r in report["vectors"])


def test_reported_error_class_is_the_last_non_empty_stderr_line():
    assert reported_error_class("Traceback...\nsomething: bad\nChecksumError\n\n") == "ChecksumError"
    assert reported_error_class("") is None


def test_only_selects_vectors_and_refuses_a_pattern_that_matches_none():
    names = [o.vector.name for o in run_conformance(VECTORS, only=["stage_rans*", "bad_magic"])]
    assert names and set(names) == {v.name for v in load_manifest(VECTORS)
                                    if v.name.startswith("stage_rans") or v.name == "bad_magic"}
    with pytest.raises(ConfigError, match="no_such_vector"):
        list(run_conformance(VECTORS, only=["no_such_vector"]))


def test_a_changed_vector_is_reported(tmp_path):
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS, copy)
    target = copy / load_manifest(copy)[0].file
    target.write_bytes(target.read_bytes() + b"\0")
    bad = [o for o in run_conformance(copy) if not o.passed]
    assert len(bad) == 1 and "sha256" in bad[0].detail


def test_generator_never_overwrites(tmp_path):
    copy = tmp_path / "vectors"
    shutil.copytree(VECTORS, copy)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert generate(copy) == []
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    # a vector file that the manifest does not list is never replaced
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text())
    dropped = data["vectors"].pop(0)
    manifest.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate(copy)
    assert (copy / dropped["file"]).read_bytes() == before[copy / dropped["file"]]

"""The conformance runner: holds a decoder to the vectors of a manifest.

Built in: nncodec's own decoder. External: ``--decoder "CMD {in} {out}"`` is run once per vector with
``{in}`` the vector file and ``{out}`` a ``.npz`` path to write. For a valid vector it must exit 0 and
write one array per tensor (key = tensor name; bfloat16 as uint16 bit patterns). For an invalid one it
must exit non-zero with the name of the error class it raised (FORMAT.md §9, e.g. ``ChecksumError``) as
the last non-empty line of its standard error; the vector passes only when that is the expected class.
Each vector's file is first checked against its sha256 in the manifest.
"""

from __future__ import annotations

import fnmatch
import hashlib
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..decoder import iter_tensors
from ..errors import ConfigError, NNCodecError
from .vectors import Vector, load_manifest, tensor_digest

__all__ = ["Outcome", "run_conformance"]

_TIMEOUT = 120


@dataclass
class Outcome:
    vector: Vector
    passed: bool
    detail: str


def _compare(v: Vector, got: list[tuple[str, str, tuple[int, ...], str]]) -> str | None:
    want = v.tensors or []
    if [t["name"] for t in want] != [g[0] for g in got] and sorted(t["name"] for t in want) != sorted(g[0] for g in got):
        return f"tensors {[g[0] for g in got]} != expected {[t['name'] for t in want]}"
    by = {g[0]: g for g in got}
    for t in want:
        name, dtype, shape, digest = by[t["name"]]
        if list(shape) != t["shape"]:
            return f"{t['name']!r}: shape {list(shape)} != {t['shape']}"
        if dtype is not None and dtype != t["dtype"]:
            return f"{t['name']!r}: dtype {dtype} != {t['dtype']}"
        if digest != t["sha256"]:
            return f"{t['name']!r}: decoded values differ (sha256 {digest[:12]}... != {t['sha256'][:12]}...)"
    return None


def _builtin(v: Vector, path: Path) -> Outcome:
    try:
        got = [(th.name, th.dtype.name, arr.shape, tensor_digest(arr)) for th, arr in iter_tensors(path)]
    except NNCodecError as exc:
        if v.error is None:
            return Outcome(v, False, f"raised {type(exc).__name__}: {exc}")
        if type(exc).__name__ != v.error:
            return Outcome(v, False, f"raised {type(exc).__name__}, expected {v.error}: {exc}")
        return Outcome(v, True, f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # a crash outside the hierarchy is a failure, reported, not propagated
        return Outcome(v, False, f"crashed with {type(exc).__name__}: {exc}")
    if v.error is not None:
        return Outcome(v, False, f"accepted, expected {v.error}")
    problem = _compare(v, got)
    return Outcome(v, problem is None, problem or f"{len(got)} tensors match")


_NPZ_DTYPES = {"bfloat16": "uint16"}


def _external(v: Vector, path: Path, command: str) -> Outcome:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.npz"
        argv = [a.replace("{in}", str(path)).replace("{out}", str(out)) for a in shlex.split(command)]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=_TIMEOUT)
        except subprocess.TimeoutExpired:
            return Outcome(v, False, f"decoder did not finish in {_TIMEOUT} s (a hang)")
        except OSError as exc:
            return Outcome(v, False, f"cannot run the decoder: {exc}")
        if v.error is not None:
            if proc.returncode == 0:
                return Outcome(v, False, f"decoder accepted it (exit 0), expected {v.error}")
            reported = reported_error_class(proc.stderr)
            if reported != v.error:
                return Outcome(v, False, f"decoder reported {reported or 'no error class'!r} on the last line of "
                                         f"stderr (exit {proc.returncode}), expected {v.error}")
            return Outcome(v, True, f"rejected with {reported} (exit {proc.returncode})")
        if proc.returncode != 0:
            return Outcome(v, False, f"decoder failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        try:
            with np.load(out, allow_pickle=False) as z:
                got = []
                for name in z.files:
                    a = z[name]
                    got.append((name, None, a.shape, tensor_digest(a)))
                dtypes = {name: z[name].dtype.name for name in z.files}
        except (OSError, ValueError) as exc:
            return Outcome(v, False, f"decoder wrote no readable .npz: {exc}")
        for t in v.tensors or []:
            if t["name"] in dtypes and dtypes[t["name"]] != _NPZ_DTYPES.get(t["dtype"], t["dtype"]):
                return Outcome(v, False, f"{t['name']!r}: dtype {dtypes[t['name']]} != {t['dtype']}")
        problem = _compare(v, got)
        return Outcome(v, problem is None, problem or f"{len(got)} tensors match")


def reported_error_class(stderr: str) -> str | None:
    """The error class an external decoder reported: the last non-empty line of its standard error."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else None


def run_conformance(folder: Path, decoder: str | None = None, only: Sequence[str] = ()) -> Iterator[Outcome]:
    """Yield one :class:`Outcome` per vector of ``folder``'s manifest (those whose name matches a glob of
    ``only``, when given; a pattern that matches no vector is a :class:`ConfigError`)."""
    vectors = load_manifest(folder)
    if only:
        unmatched = [p for p in only if not any(fnmatch.fnmatchcase(v.name, p) for v in vectors)]
        if unmatched:
            raise ConfigError(f"no conformance vector matches {unmatched}")
        vectors = [v for v in vectors if any(fnmatch.fnmatchcase(v.name, p) for p in only)]
    for v in vectors:
        path = folder / v.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            yield Outcome(v, False, f"missing vector file: {exc}")
            continue
        if hashlib.sha256(data).hexdigest() != v.sha256:
            yield Outcome(v, False, "vector file does not match its sha256 in the manifest (changed?)")
            continue
        yield _external(v, path, decoder) if decoder else _builtin(v, path)

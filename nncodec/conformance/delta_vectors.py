"""Conformance vectors of incremental updates (FORMAT.md §12), written by the generator like the others.

A delta vector is listed with ``expect: {"error": "UnknownUnitError"}`` (what a decoder without §12 must
do) and ``delta: {"base": <base vector file>, "tensors": [...]}``: what a decoder with §12 must rebuild
from the vector and the decoded base vector. Expected values come from the inputs: the fine-tuned arrays
for lossless deltas, ``base + code * step`` (float32, §12.3) for quantized ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..decoder import iter_tensors
from ..delta import (FLAG_GRID_ALIGNED, BaseReference, base_codes, content_hash, decode_delta_arrays,
                     encode_delta_tensors, insert_base_reference)
from ..encoder import Encoder, numpy_tensors
from ..errors import ConfigError
from .vectors import Vector, tensor_digest

__all__ = ["BASE_VECTOR", "DELTA", "base_arrays", "check_delta_vector"]

BASE_VECTOR = "delta_base"

Expected = dict[str, np.ndarray]


def base_arrays() -> dict[str, np.ndarray]:
    """The base model of the delta vectors (its own generator, so it does not depend on other vectors)."""
    rng = np.random.default_rng(1515)
    return {"fc.weight": (rng.standard_normal((6, 8)) * 0.2).astype(np.float32),
            "fc.bias": (rng.standard_normal(6) * 0.1).astype(np.float32),
            "half": rng.standard_normal((3, 4)).astype(np.float16),
            "steps": rng.integers(-1000, 1000, 5).astype(np.int16),
            "mask": rng.random(7) < 0.5}


def _tuned() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1516)
    tuned = {k: v.copy() for k, v in base_arrays().items()}
    tuned["fc.weight"] += (rng.standard_normal((6, 8)) * 1e-3).astype(np.float32)
    tuned["fc.weight"][0, :3] = [np.nan, -0.0, np.inf]
    tuned["fc.bias"][2] = 0.5
    tuned["half"] = (tuned["half"].astype(np.float32) * 1.01).astype(np.float16)
    tuned["steps"][1] += 7
    tuned["mask"][0] = not tuned["mask"][0]
    tuned["head.weight"] = rng.standard_normal((2, 6)).astype(np.float32)   # not in the base: whole
    return tuned


def _encode(tuned: dict[str, np.ndarray], grid_aligned: bool = False, **options: Any) -> bytes:
    base = numpy_tensors(base_arrays())
    encoder = Encoder(**options, group_tensors=False)  # delta streams hold no tensor group (FORMAT.md §14)
    tensors, whole = encode_delta_tensors(numpy_tensors(tuned), base, encoder, grid_aligned=grid_aligned)
    chunks, _ = encoder.encode_units(tensors)
    reference = BaseReference(content_hash(base), whole, FLAG_GRID_ALIGNED if grid_aligned else 0)
    return b"".join(insert_base_reference(chunks, reference, len(tensors)))


def _lossless() -> tuple[bytes, Expected]:
    tuned = _tuned()
    return _encode(tuned), tuned


def _quantized() -> tuple[bytes, Expected]:
    tuned = {k: v for k, v in _tuned().items() if k in ("fc.weight", "fc.bias", "head.weight", "steps")}
    tuned["fc.weight"] = np.nan_to_num(tuned["fc.weight"], nan=0.25, posinf=-0.25)
    encoder = Encoder(rel_step=0.05)
    base = base_arrays()
    expected: Expected = {}
    for name, a in tuned.items():
        grid = encoder.grid(name, numpy_tensors({name: a})[name])
        if grid is None:
            expected[name] = a
        elif name not in base:  # stored whole: the plain quantizer's values
            expected[name] = (grid.codes.astype(np.float32) * grid.scales[0]).astype(np.float32)
        else:
            step = np.float64(grid.scales[0])
            codes = np.rint((a.astype(np.float64) - base[name].astype(np.float64)) / step)
            d = (codes.astype(np.float32) * grid.scales[0]).astype(np.float32) + np.float32(0.0)
            expected[name] = (base[name].astype(np.float32) + d).astype(np.float32)
    return _encode(tuned, rel_step=0.05), expected


def _grid_aligned() -> tuple[bytes, Expected]:
    """Format 1.3: the fine-tuned tensors' codes minus the base rounded onto the same grid (§12.5), per
    tensor and per channel, with base values that round to code 0 (NaN, past 2^31 steps)."""
    rng = np.random.default_rng(1517)
    base = base_arrays()
    tuned = {"fc.weight": base["fc.weight"] + (rng.standard_normal((6, 8)) * 2e-2).astype(np.float32),
             "fc.bias": base["fc.bias"].copy(), "half": (base["half"].astype(np.float32) * 1.05).astype(np.float16),
             "steps": base["steps"].copy(), "head.weight": rng.standard_normal((2, 6)).astype(np.float32)}
    tuned["fc.bias"][1] += np.float32(0.3)
    options = {"bits": 8}
    encoder = Encoder(**options)
    expected: Expected = {}
    for name, a in tuned.items():
        grid = encoder.grid(name, numpy_tensors({name: a})[name])
        if grid is None:
            expected[name] = a
            continue
        scale = grid.scales.reshape((-1,) + (1,) * (a.ndim - 1)) if grid.per_channel else grid.scales.reshape(())
        expected[name] = (grid.codes.astype(np.float32) * scale).astype(a.dtype)  # what a full encode gives
        if name in base:  # the stored difference rebuilds the full encode's codes exactly
            d = grid.codes.astype(np.int64) - base_codes(base[name], numpy_tensors({name: a})[name][1], scale)
            if not np.array_equal(d + base_codes(base[name], numpy_tensors({name: a})[name][1], scale),
                                  grid.codes.astype(np.int64)):
                raise ConfigError("grid-aligned vector: code differences do not rebuild the codes")
    return _encode(tuned, grid_aligned=True, **options), expected


#: name -> (what it exercises, builder of (stream, expected rebuilt tensors))
DELTA: dict[str, tuple[str, Callable[[], tuple[bytes, Expected]]]] = {
    "delta_lossless": ("delta against delta_base: XOR words (float32 with NaN/-0/Inf, float16, int16, bool) and a "
                       "tensor stored whole", _lossless),
    "delta_quantized": ("delta against delta_base: uniform-quantized differences added in float32, an int16 XOR "
                        "delta and a quantized tensor stored whole", _quantized),
    "delta_grid_aligned": ("delta against delta_base (format 1.3): per-channel grid-code differences of float32 and "
                           "float16 tensors rebuild exactly what a full encode gives, an int16 XOR delta and a "
                           "quantized tensor stored whole", _grid_aligned),
}

#: delta vectors of a later minor version than 1.0
VERSION_OF = {"delta_grid_aligned": "1.3"}


def _rows(got: dict[str, tuple[np.ndarray, Any]], expected: Expected, name: str) -> list[dict[str, Any]]:
    if sorted(got) != sorted(expected):
        raise ConfigError(f"vector {name}: rebuilt tensors {sorted(got)} != expected {sorted(expected)}")
    rows = []
    for key in sorted(got, key=lambda n: n.encode("utf-8")):
        arr, dtype = got[key]
        want = np.asarray(expected[key]).astype(dtype.storage)
        if want.shape != arr.shape or tensor_digest(want) != tensor_digest(arr):
            raise ConfigError(f"vector {name}: rebuilding {key!r} does not give the expected values")
        rows.append({"name": key, "dtype": dtype.name, "shape": list(arr.shape), "sha256": tensor_digest(want)})
    return rows


def build(name: str, base_file: Path) -> tuple[bytes, dict[str, Any]]:
    """The vector's bytes and its ``delta`` manifest entry, checked against the base vector file."""
    data, expected = DELTA[name][1]()
    base = {th.name: arr for th, arr in iter_tensors(base_file)}
    rows = _rows(decode_delta_arrays(data, base), expected, name)
    return data, {"base": None, "tensors": rows}


def check_delta_vector(folder: Path, v: Vector) -> str | None:
    """Rebuild a delta vector with nncodec's decoder; None when it matches its manifest, else the problem."""
    spec = v.extra.get("delta")
    if not spec:
        return "not a delta vector"
    base = {th.name: arr for th, arr in iter_tensors(folder / spec["base"])}
    got = decode_delta_arrays(folder / v.file, base)
    want = spec["tensors"]
    if sorted(t["name"] for t in want) != sorted(got):
        return f"tensors {sorted(got)} != expected {[t['name'] for t in want]}"
    for t in want:
        arr, dtype = got[t["name"]]
        if dtype.name != t["dtype"] or list(arr.shape) != t["shape"] or tensor_digest(arr) != t["sha256"]:
            return f"{t['name']!r}: rebuilt values differ"
    return None

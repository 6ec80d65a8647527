"""Scalable streams, encoder side: several operating points nested in one stream (FORMAT.md §13).

Point 0 is an ordinary stream (the base layer: the tensor units a separate encode of point 0 writes).
Each later point ``k`` adds refinement units for the tensors whose codes change from point ``k - 1``: the
residual between the point's own codes and the codes predicted from the previous point's values
(:func:`nncodec.refine.predict_codes`), or the codes anew when that is smaller. So decoding the stream at
point ``k`` gives exactly the tensors a separate encode with point ``k``'s options gives, and reads only
the bytes up to the end of point ``k``. The residuals are cheap when the points' steps nest (odd
multiples of each other: ``nest_steps=True``, :func:`nested_steps`).

A point is a mapping of quantization options of :class:`~nncodec.encoder.Encoder` (``bits``, ``step``,
``rel_step``, ``step_scales``, ``bits_1d``, ``lossless``) plus, optionally, ``label`` (str), ``accuracy``
(a measured figure, e.g. top-1 or cosine) and ``energy_pj`` (inference energy per input, pJ).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import write_atomic
from .bitstream.constants import (FILE_HEADER, FORMAT_MAJOR, FORMAT_MINOR_OPERATING_POINTS, MAGIC, SCHEME_UNIFORM,
                                  UNIT_END, UNIT_HEADER_SIZE, UNIT_OPERATING_POINTS, UNIT_REFINEMENT,
                                  UNIT_STREAM_HEADER, UNIT_TENSOR)
from .bitstream.descriptor import dequantize_into
from .bitstream.operating_points import (MAX_POINTS, MODE_GROW_REPLACE, MODE_GROW_RESIDUAL, MODE_REPLACE,
                                         MODE_RESIDUAL, OperatingPoint, OperatingPoints, RefinementHeader)
from .bitstream.units import EndOfStream, StreamHeader, frame_unit
from .checks import is_number
from .dtypes import dtype_by_name
from .encoder import (EncodeReport, Encoder, _as_encodable, choose_pipeline, encoder_from_options, find_aliases,
                      ungrouped)
from .errors import ConfigError
from .refine import predict_codes

__all__ = ["encode_scalable", "nested_steps", "ScalableReport", "POINT_QUANT_OPTIONS", "POINT_INFO_KEYS"]

log = logging.getLogger(__name__)

#: options a point may set (the rest of the Encoder's options are shared by all points)
POINT_QUANT_OPTIONS = ("bits", "step", "rel_step", "step_scales", "bits_1d", "lossless")
#: width scalability: ``{tensor name: shape}``, the leading block of the tensor the point keeps
POINT_SHAPES = "shapes"
#: a point given by its own tensors (e.g. a searched plan's quantized model), instead of options
POINT_TENSORS = "tensors"
#: descriptive keys of a point
POINT_INFO_KEYS = ("label", "accuracy", "energy_pj")

#: energy_of(point index, {tensor name: bits of its codes}) -> pJ per input, or NaN
EnergyFn = Callable[[int, Mapping[str, int]], float]


@dataclass
class ScalableReport:
    """What :func:`encode_scalable` wrote: the points as listed in the stream, and, when asked for with
    ``measure_separate=True``, per point the size a separate encode of it would have (``separate_bytes``,
    empty otherwise)."""

    points: list[OperatingPoint] = field(default_factory=list)
    total_bytes: int = 0
    separate_bytes: list[int] = field(default_factory=list)
    refinement_units: int = 0
    base: EncodeReport | None = None
    #: per point, the quantization options it was encoded with (after ``nest_steps``): a separate
    #: ``nncodec.encode(model, **point_options[k])`` gives the tensors the stream decodes to at point ``k``
    point_options: list[dict[str, Any]] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        """Size of the scalable stream over the largest separate file, minus 1 (0.05 = 5 % larger); NaN
        unless the separate files were measured (``measure_separate=True``)."""
        return self.total_bytes / max(self.separate_bytes) - 1.0 if self.separate_bytes else float("nan")


def _split_point(point: Any, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
    if not isinstance(point, Mapping):
        raise ConfigError(f"operating point {k} must be a mapping of options, got {type(point).__name__}")
    unknown = sorted(set(point) - set(POINT_QUANT_OPTIONS) - set(POINT_INFO_KEYS) - {POINT_SHAPES, POINT_TENSORS})
    if unknown:
        raise ConfigError(f"operating point {k}: unknown key(s) {unknown}; a point takes {POINT_QUANT_OPTIONS} "
                          f"and {POINT_INFO_KEYS}")
    info = {key: point[key] for key in POINT_INFO_KEYS if key in point}
    label = info.get("label", "")
    if not isinstance(label, str) or len(label.encode("utf-8")) > 255:
        raise ConfigError(f"operating point {k}: label must be a string of at most 255 UTF-8 bytes")
    for key in ("accuracy", "energy_pj"):
        v = info.get(key)
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and (key != "energy_pj" or v >= 0)):
            raise ConfigError(f"operating point {k}: {key} must be a finite number (energy >= 0), got {v!r}")
    shapes = point.get(POINT_SHAPES) or {}
    if not isinstance(shapes, Mapping) or not all(isinstance(v, (tuple, list)) and all(
            isinstance(d, int) and d >= 0 for d in v) for v in shapes.values()):
        raise ConfigError(f"operating point {k}: shapes must map tensor names to shapes (lists of ints)")
    info[POINT_SHAPES] = {n: tuple(v) for n, v in shapes.items()}
    own = point.get(POINT_TENSORS)
    if own is not None:
        if not isinstance(own, Mapping) or shapes or set(point) & set(POINT_QUANT_OPTIONS):
            raise ConfigError(f"operating point {k}: tensors must be a mapping, and excludes shapes and quantization "
                              "options")
        info[POINT_TENSORS] = {name: _as_encodable(name, v) for name, v in own.items()}
    return {key: point[key] for key in POINT_QUANT_OPTIONS if key in point}, info


def _odd_multiple(ratio: float) -> int:
    """The odd integer >= 3 nearest to ``ratio`` on a log scale (1 for a ratio of 1)."""
    if math.isclose(ratio, 1.0, rel_tol=1e-9):
        return 1
    below = max(3, int(ratio) - (1 - int(ratio) % 2))  # the odd integer <= ratio, at least 3
    above = below + 2
    return below if ratio <= below or math.log(ratio / below) <= math.log(above / ratio) else above


def nested_steps(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of ``points`` whose quantization steps nest: the last (finest) point keeps its ``rel_step`` or
    ``step``; each earlier point's becomes the next point's times the odd integer (3, 5, 7...) nearest to
    their ratio (log scale; 1 for equal steps).

    With an odd ratio ``m`` every fine quantization cell lies inside one coarse cell, so a refinement's
    residuals are ``-(m-1)/2 .. (m-1)/2`` and the scalable stream costs about what the finest point's
    file costs; with an even ratio (halving the step) half of the fine cells straddle two coarse cells and
    the stream carries that ambiguity (order-0 estimate on all-MiniLM-L6-v2: 0.2-0.5 % vs 16 % over the
    largest file).
    Every point must give ``rel_step`` (all of them, with the same ``step_scales``) or ``step``, the steps
    not growing from point to point; else :class:`ConfigError`.
    """
    if not isinstance(points, Sequence) or isinstance(points, (str, bytes)) or not points \
            or not all(isinstance(p, Mapping) for p in points):
        raise ConfigError("nest_steps needs a list of operating points (mappings)")
    key = "rel_step" if "rel_step" in points[-1] else "step"
    for k, p in enumerate(points):
        if not is_number(p.get(key)) or not p[key] > 0:
            raise ConfigError(f"nest_steps: operating point {k} gives no positive {key!r} (every point must give "
                              f"the same one of 'rel_step' and 'step')")
        if (p.get("step_scales") or {}) != (points[-1].get("step_scales") or {}):
            raise ConfigError(f"nest_steps: operating point {k} has other step_scales than the last point; the "
                              "steps of a tensor nest only with the same factors")
    out = [dict(p) for p in points]
    for k in range(len(points) - 2, -1, -1):
        finer = out[k + 1][key]
        ratio = float(points[k][key]) / finer
        if ratio < 1.0 and not math.isclose(ratio, 1.0, rel_tol=1e-9):
            raise ConfigError(f"nest_steps: operating point {k} has a finer {key} ({points[k][key]}) than point "
                              f"{k + 1}; points go from the coarsest to the finest")
        out[k][key] = finer * _odd_multiple(ratio)
        if out[k][key] != points[k][key]:
            log.info("operating point %d: %s %g -> %g (nested in point %d's)", k, key, points[k][key], out[k][key],
                     k + 1)
    return out


def _smallest_int(d: np.ndarray) -> np.dtype:
    lo, hi = (int(d.min()), int(d.max())) if d.size else (0, 0)
    for name in ("int8", "int16", "int32"):
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return np.dtype(name)
    return np.dtype("int64")


def encode_scalable(tensors: Mapping[str, Any], points: Sequence[Mapping[str, Any]], dst: "str | os.PathLike[str] | None" = None, *,
                    topology: Mapping[str, Any] | None = None, energy_of: EnergyFn | None = None,
                    nest_steps: bool = False, measure_separate: bool = False, **options: Any) -> tuple["bytes | Path", ScalableReport]:
    """Encode ``tensors`` (as :meth:`Encoder.encode` takes them) with the operating ``points`` nested in one
    stream; ``options`` are the Encoder options shared by every point (``level``, ``metadata``, ``limits``...).

    Points must be given from the smallest to the largest; 1 to 255 of them. ``energy_of`` fills in the
    energy of points that do not state one. ``nest_steps=True`` first snaps the points' steps so they nest
    (:func:`nested_steps`: odd multiples of the finest point's); ``report.point_options`` holds the options
    each point was encoded with. ``measure_separate=True`` also encodes every point on its own to report
    ``separate_bytes`` (about doubles the encode time). Returns ``(bytes or path, report)``.
    """
    if not isinstance(points, Sequence) or isinstance(points, (str, bytes)) or not 1 <= len(points) <= MAX_POINTS:
        raise ConfigError(f"operating_points must be a list of 1..{MAX_POINTS} points")
    if not isinstance(nest_steps, bool):
        raise ConfigError(f"nest_steps must be True or False, got {nest_steps!r}")
    if not isinstance(measure_separate, bool):
        raise ConfigError(f"measure_separate must be True or False, got {measure_separate!r}")
    if nest_steps:
        points = nested_steps(points)
    shared_quant = sorted(set(options) & set(POINT_QUANT_OPTIONS))
    if shared_quant:
        raise ConfigError(f"with operating_points, quantization options go into each point, not {shared_quant}")
    split = [_split_point(p, k) for k, p in enumerate(points)]
    encoders: list[Encoder] = [encoder_from_options(ungrouped({**options, **quant}, "scalable")) for quant, _ in split]
    if encoders[0].pipeline is not None:
        raise ConfigError("a fixed pipeline does not apply to refinement residuals; leave pipeline unset")
    if not isinstance(tensors, Mapping):
        raise ConfigError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    encodable = {name: _as_encodable(name, value) for name, value in tensors.items()}
    aliases = find_aliases(encodable)
    at_point = _points_tensors(encodable, [info[POINT_SHAPES] for _, info in split], aliases,
                               [info.get(POINT_TENSORS) for _, info in split])
    base_chunks, base_report = encoders[0].encode_units(at_point[0], topology)
    names = sorted((n for n in encodable if n not in aliases), key=lambda n: n.encode("utf-8"))
    separate = [base_report.total_bytes] if measure_separate else []

    # the values a decoder holds after each point, and the codes they came from
    state: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}  # name -> (descriptor, code words, values)
    bits_at: list[dict[str, int]] = [{}]
    for name in names:
        dtype, shape, desc, words, *_ = encoders[0].code_words(name, at_point[0][name])
        state[name] = (desc, words, _values(dtype, shape, desc, words))
        bits_at[0][name] = _bits(desc, dtype)

    refinements: list[list[bytes]] = [[] for _ in points]
    for k in range(1, len(points)):
        enc = encoders[k]
        bits_at.append({})
        for name in names:
            dtype, shape, desc, words, word_size, bits, signed, *_ = enc.code_words(name, at_point[k][name])
            bits_at[k][name] = _bits(desc, dtype)
            prev_desc, prev_words, prev_values = state[name]
            grows = shape != prev_values.shape
            if not grows and desc == prev_desc and np.array_equal(words, prev_words):
                continue  # unchanged at this point: no unit
            pipeline, payload = choose_pipeline(words, word_size, bits, signed, enc.level)
            header = RefinementHeader(k, MODE_GROW_REPLACE if grows else MODE_REPLACE, name, desc, None,
                                      pipeline.entries(), shape if grows else None)
            if desc.scheme == SCHEME_UNIFORM and desc.code_dtype.storage.kind == "i" and 1 <= desc.bits <= 32:
                codes = words.view(desc.code_dtype.storage).reshape(shape).astype(np.int64)
                if grows:  # the decoder grows the tensor first: new elements are 0
                    grown = np.zeros(shape, dtype=prev_values.dtype)
                    grown[tuple(slice(0, d) for d in prev_values.shape)] = prev_values
                    prev_values = grown
                residual = codes - predict_codes(prev_values, dtype, desc)
                rd = _smallest_int(residual)
                r_words = np.ascontiguousarray(residual.astype(rd)).reshape(-1).view(np.uint8)
                r_bits = max(2, int(np.abs(residual).max()).bit_length() + 1) if residual.size else 2
                r_pipeline, r_payload = choose_pipeline(r_words, rd.itemsize, min(r_bits, 8 * rd.itemsize), True,
                                                        enc.level)
                r_header = RefinementHeader(k, MODE_GROW_RESIDUAL if grows else MODE_RESIDUAL, name, desc,
                                            dtype_by_name(rd.name), r_pipeline.entries(), shape if grows else None)
                if len(r_header.to_bytes()) + len(r_payload) < len(header.to_bytes()) + len(payload):
                    header, payload = r_header, r_payload
            unit_payload = header.to_bytes() + payload
            enc.limits.check(f"refinement unit payload length of tensor {name!r}", len(unit_payload), "max_unit_bytes")
            refinements[k].append(frame_unit(UNIT_REFINEMENT, unit_payload, critical=False))
            state[name] = (desc, words, _values(dtype, shape, desc, words))
        if measure_separate:
            separate.append(enc.encode_units(at_point[k], topology)[1].total_bytes)

    infos = [info for _, info in split]
    labels = [info.get("label", "") for info in infos]
    energies = []
    for k, info in enumerate(infos):
        e = info.get("energy_pj")
        if e is None and energy_of is not None:
            e = energy_of(k, bits_at[k])
        energies.append(float("nan") if e is None else float(e))
    accuracies = [float(info["accuracy"]) if "accuracy" in info else float("nan") for info in infos]

    # assemble: version 1.2 headers (or later), the operating-points unit before the first tensor, refinements by level
    body = base_chunks[:-1]  # without its end-of-stream
    n_tensors = len(names)
    minor = max(FORMAT_MINOR_OPERATING_POINTS, FILE_HEADER.unpack(body[0])[2])  # or the base encode's, if later
    body[0] = FILE_HEADER.pack(MAGIC, FORMAT_MAJOR, minor)
    metadata = encoders[0].metadata
    body[1] = frame_unit(UNIT_STREAM_HEADER, StreamHeader(n_tensors, metadata, version=(FORMAT_MAJOR, minor)).to_bytes())
    at = next((i for i in range(1, len(body)) if body[i][0] == UNIT_TENSOR), len(body))
    placeholder = OperatingPoints(tuple(OperatingPoint(k, 0, 0, 0.0, 0.0, labels[k]) for k in range(len(points))))
    body.insert(at, frame_unit(UNIT_OPERATING_POINTS, placeholder.to_bytes(), critical=False))
    ends = [sum(len(c) for c in body)]
    for k in range(1, len(points)):
        ends.append(ends[-1] + sum(len(c) for c in refinements[k]))
    units_after = [sum(len(refinements[j]) for j in range(k + 1, len(points))) for k in range(len(points))]
    eos_size = UNIT_HEADER_SIZE + len(EndOfStream(0, 0).to_bytes())
    listed = tuple(OperatingPoint(k, ends[k], ends[k] + UNIT_HEADER_SIZE * units_after[k] + eos_size, energies[k],
                                  accuracies[k], labels[k]) for k in range(len(points)))
    body[at] = frame_unit(UNIT_OPERATING_POINTS, OperatingPoints(listed).to_bytes(), critical=False)
    chunks = body + [c for k in range(1, len(points)) for c in refinements[k]]
    n_refine = len(chunks) - len(body)
    encoders[0].limits.check("unit count", len(chunks), "max_units")
    chunks.append(frame_unit(UNIT_END, EndOfStream(len(chunks) - 1, n_tensors).to_bytes()))
    report = ScalableReport(list(listed), sum(len(c) for c in chunks), separate, n_refine, base_report,
                            [dict(quant) for quant, _ in split])
    log.info("scalable stream: %d points, %d bytes", len(points), report.total_bytes)
    if dst is None:
        return b"".join(chunks), report
    return write_atomic(dst, chunks), report


def _points_tensors(encodable: Mapping[str, Any], shapes: list[dict[str, tuple[int, ...]]],
                    aliases: Mapping[str, str], own: list[Any]) -> list[dict[str, Any]]:
    """The tensors of each point: its own tensors when given, else the leading block ``shapes[k][name]`` of
    a tensor, else all of it. Shapes may only grow from point to point."""
    out: list[dict[str, Any]] = []
    previous: dict[str, tuple[int, ...]] = {}
    for k, point_shapes in enumerate(shapes):
        tensors = dict(encodable)
        if own[k] is not None:
            if set(own[k]) != set(encodable) or find_aliases(own[k]):
                raise ConfigError(f"operating point {k}: its tensors must have the names of the others "
                                  f"({sorted(set(own[k]) ^ set(encodable))[:5]} differ) and no tied tensors")
            tensors = dict(own[k])
        for name, shape in point_shapes.items():
            value = encodable.get(name)
            if value is None:
                raise ConfigError(f"operating point {k}: shapes names {name!r}, which is not a tensor")
            if name in aliases or name in aliases.values() or not isinstance(value, tuple):
                raise ConfigError(f"operating point {k}: {name!r} is tied or already coded; it cannot be narrowed")
            full = value[0].shape
            if len(shape) != len(full) or any(d > f for d, f in zip(shape, full)):
                raise ConfigError(f"operating point {k}: shape {list(shape)} of {name!r} is not a leading block "
                                  f"of its shape {list(full)}")
            tensors[name] = (np.ascontiguousarray(value[0][tuple(slice(0, d) for d in shape)]), value[1])
        for name, value in tensors.items():
            shape = tuple((value[0] if isinstance(value, tuple) else value.codes).shape)
            if name in previous and (len(shape) != len(previous[name])
                                     or any(d < p for d, p in zip(shape, previous[name]))):
                raise ConfigError(f"operating point {k}: {name!r} shrinks from {list(previous[name])} to "
                                  f"{list(shape)}; points must be nested")
            previous[name] = shape
        out.append(tensors)
    return out


def _values(dtype: Any, shape: tuple[int, ...], desc: Any, words: np.ndarray) -> np.ndarray:
    """The tensor's values (storage dtype) as a decoder computes them from ``words``."""
    if desc.scheme == 0:
        return words.view(dtype.storage).reshape(shape)
    out = np.empty(shape, dtype=dtype.storage)
    dequantize_into(words.view(desc.code_dtype.storage).reshape(shape), desc, out, dtype)
    return out


def _bits(desc: Any, dtype: Any) -> int:
    return desc.bits if desc.scheme != 0 else 8 * dtype.itemsize


def plan_from_bits(bits: Mapping[str, int]) -> dict[str, Any]:
    """An energy plan (:class:`nncodec.quant.plan.Plan` dict) from the code bits of each tensor: layer ``m``
    gets ``quantized_bits(b,0,1)`` for its ``m.weight`` and ``m.bias`` tensors (lossless tensors: none)."""
    layers: dict[str, dict[str, str]] = {}
    for name, b in bits.items():
        module, _, leaf = name.rpartition(".")
        if leaf in ("weight", "bias") and module and b < 32:
            layers.setdefault(module, {})["kernel" if leaf == "weight" else "bias"] = f"quantized_bits({b},0,1)"
    return {"layers": {m: lp for m, lp in layers.items() if "kernel" in lp}}

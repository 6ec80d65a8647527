"""Wire codec of the operating-points unit (0x06) and the refinement unit (0x11), format 1.2 (FORMAT.md §13).

A scalable stream holds a base layer (the ordinary tensor units: operating point 0) and refinement units
that turn a tensor of point ``k - 1`` into its value at point ``k``. The operating-points unit lists the
points with the byte offset where each one's units end, so a decoder reads only the prefix its point needs.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

from ..checks import is_int
from ..dtypes import DType, dtype_by_id
from ..errors import CorruptError, UnsupportedFeatureError
from ..limits import Limits
from .byte_reader import ByteReader
from .constants import PIPELINE_DEFAULT
from .descriptor import QuantDescriptor
from .units import StageEntry, _parse_name, parse_stage_entries, stage_entries_bytes

__all__ = ["OperatingPoint", "OperatingPoints", "RefinementHeader", "MAX_POINTS", "MODE_REPLACE", "MODE_RESIDUAL",
           "MODE_GROW_RESIDUAL", "MODE_GROW_REPLACE", "GROWING_MODES", "RESIDUAL_MODES", "RESIDUAL_DTYPES",
           "PointTracker"]

MAX_POINTS = 255
MODE_REPLACE = 0   #: the payload codes the tensor anew (as a tensor unit would)
MODE_RESIDUAL = 1  #: the payload codes residuals added to codes predicted from the previous point
MODE_GROW_RESIDUAL = 2  #: the tensor grows to a larger shape (new elements 0), then as mode 1
MODE_GROW_REPLACE = 3   #: the tensor is replaced by one of a larger shape, coded anew
GROWING_MODES = (MODE_GROW_RESIDUAL, MODE_GROW_REPLACE)
RESIDUAL_MODES = (MODE_RESIDUAL, MODE_GROW_RESIDUAL)
#: element types a residual may use (signed integers)
RESIDUAL_DTYPES = ("int8", "int16", "int32", "int64")

_HEAD = struct.Struct("<BBH")            # count | reserved u8 | reserved u16
_POINT = struct.Struct("<QQdd")          # end_offset | read_bytes | energy_pj | accuracy
_U16 = struct.Struct("<H")
_REFINE = struct.Struct("<BBH")          # level | mode | reserved u16
_MAX_LABEL = 255


@dataclass(frozen=True)
class OperatingPoint:
    """One operating point as listed in the stream (point ``index``; 0 is the base layer).

    ``end_offset``: stream offset just past the last unit the point needs (its base and refinement
    units); ``read_bytes``: bytes a decoder of this point reads (informative); ``energy_pj``: inference
    energy per input in picojoules, NaN when not stated; ``accuracy``: NaN when not measured.
    """

    index: int
    end_offset: int
    read_bytes: int
    energy_pj: float
    accuracy: float
    label: str = ""

    def to_dict(self) -> dict:
        def num(v: float) -> float | None:
            return None if math.isnan(v) else v
        return {"index": self.index, "label": self.label, "energy_pj": num(self.energy_pj),
                "accuracy": num(self.accuracy), "read_bytes": self.read_bytes, "end_offset": self.end_offset}


@dataclass(frozen=True)
class OperatingPoints:
    """The operating-points unit: ``u8 count | u8 0 | u16 0`` then per point ``u64 end_offset | u64
    read_bytes | f64 energy_pj | f64 accuracy | u16 label_length | label (UTF-8, <= 255 bytes)``."""

    points: tuple[OperatingPoint, ...]

    def to_bytes(self) -> bytes:
        out = [_HEAD.pack(len(self.points), 0, 0)]
        for p in self.points:
            label = p.label.encode("utf-8")
            out.append(_POINT.pack(p.end_offset, p.read_bytes, p.energy_pj, p.accuracy) + _U16.pack(len(label)) + label)
        return b"".join(out)

    @classmethod
    def parse(cls, r: ByteReader) -> "OperatingPoints":
        at = r.offset
        count, res8, res16 = r.unpack(_HEAD, "operating-point count")
        if res8 or res16:
            raise CorruptError("reserved operating-points bytes are not zero", offset=at)
        if count == 0:
            raise CorruptError("an operating-points unit lists no point", offset=at)
        points = []
        previous = 0
        for k in range(count):
            entry_at = r.offset
            end, read, energy, accuracy = r.unpack(_POINT, f"operating point {k}")
            (n,) = r.unpack(_U16, f"label length of operating point {k}")
            if n > _MAX_LABEL:
                raise CorruptError(f"label of operating point {k} is {n} bytes, at most {_MAX_LABEL}", offset=entry_at)
            try:
                label = bytes(r.take(n, f"label of operating point {k}")).decode("utf-8", errors="strict")
            except UnicodeDecodeError:
                raise CorruptError(f"label of operating point {k} is not UTF-8", offset=entry_at) from None
            if end < previous:
                raise CorruptError(f"operating point {k} ends at {end}, before point {k - 1} ({previous})",
                                   offset=entry_at)
            if math.isinf(energy) or energy < 0 or math.isinf(accuracy):
                raise CorruptError(f"operating point {k}: energy must be >= 0 or NaN, accuracy finite or NaN",
                                   offset=entry_at)
            previous = end
            points.append(OperatingPoint(k, end, read, energy, accuracy, label))
        r.expect_end("operating points")
        return cls(tuple(points))


@dataclass(frozen=True)
class RefinementHeader:
    """Everything of a refinement unit before its coded payload.

    Payload: ``u8 level | u8 mode | u16 0 | u16 name_length | name | [modes 2, 3: u8 ndim | ndim x u64 new
    shape] | quantization descriptor (§5) of the refined tensor | [modes 1, 2: u8 residual dtype id] |
    u8 stage_count | stage entries | coded payload``. The tensor's dtype is its tensor unit's; its shape is
    the one it has after the earlier refinements (given to :meth:`parse_rest`), or ``shape`` when it grows.
    """

    level: int
    mode: int
    name: str
    quant: QuantDescriptor
    residual_dtype: DType | None
    pipeline: "tuple[StageEntry, ...] | None"  #: None: the model parameter set's
    shape: tuple[int, ...] | None = None       #: the new shape (growing modes 2 and 3)

    def to_bytes(self) -> bytes:
        name = self.name.encode("utf-8")
        out = _REFINE.pack(self.level, self.mode, 0) + _U16.pack(len(name)) + name
        if self.mode in GROWING_MODES:
            out += bytes([len(self.shape)]) + b"".join(struct.pack("<Q", d) for d in self.shape)  # type: ignore[arg-type]
        out += self.quant.to_bytes()
        if self.mode in RESIDUAL_MODES:
            out += bytes([self.residual_dtype.id])  # type: ignore[union-attr]
        out += bytes([PIPELINE_DEFAULT]) if self.pipeline is None else stage_entries_bytes(self.pipeline)
        return out

    @staticmethod
    def parse_name(r: ByteReader, limits: Limits) -> tuple[int, int, str]:
        """``(level, mode, name)``: the fields before the descriptor (which needs the base tensor)."""
        at = r.offset
        level, mode, reserved = r.unpack(_REFINE, "refinement level and mode")
        if reserved:
            raise CorruptError("reserved refinement bytes are not zero", offset=at)
        if mode not in (MODE_REPLACE, MODE_RESIDUAL, *GROWING_MODES):
            raise UnsupportedFeatureError(f"unknown refinement mode {mode}", offset=at)
        return level, mode, _parse_name(r, limits, "refined tensor name")

    @classmethod
    def parse_rest(cls, r: ByteReader, level: int, mode: int, name: str, dtype: DType,
                   shape: tuple[int, ...], limits: Limits) -> "RefinementHeader":
        new_shape = None
        if mode in GROWING_MODES:
            at = r.offset
            ndim = r.u8("rank of the grown tensor")
            if ndim != len(shape):
                raise CorruptError(f"refinement grows {name!r} from rank {len(shape)} to rank {ndim}", offset=at)
            dims = tuple(r.unpack(struct.Struct(f"<{ndim}Q"), "grown shape")) if ndim else ()
            if any(d < old for d, old in zip(dims, shape)):
                raise CorruptError(f"refinement shrinks {name!r} from {list(shape)} to {list(dims)}", offset=at)
            span = 1
            for d in dims:
                span *= max(d, 1)
                if span > limits.max_tensor_elements:
                    limits.check(f"element count of grown tensor {name!r}", span, "max_tensor_elements", offset=at)
            new_shape = shape = dims
        at = r.offset
        quant = QuantDescriptor.parse(r, dtype, shape)
        residual = None
        if mode in RESIDUAL_MODES:
            if quant.scheme != 1:  # uniform
                raise CorruptError(f"a residual refinement of {name!r} needs the uniform scheme, got "
                                   f"{quant.scheme_name}", offset=at)
            if not quant.code_dtype.is_int or quant.code_dtype.storage.kind != "i" or not 1 <= quant.bits <= 32:
                raise CorruptError(f"a residual refinement of {name!r} needs signed integer codes of 1..32 bits",
                                   offset=at)
            rd_at = r.offset
            residual = dtype_by_id(r.u8("residual dtype"))
            if residual is None or residual.name not in RESIDUAL_DTYPES:
                raise CorruptError(f"residual dtype of {name!r} must be one of {RESIDUAL_DTYPES}", offset=rd_at)
        count = r.u8("pipeline stage count")
        pipeline = None if count == PIPELINE_DEFAULT else parse_stage_entries(r, count)
        return cls(level, mode, name, quant, residual, pipeline, new_shape)


class PointTracker:
    """The unit-order rules of scalable streams (FORMAT.md §13.1-12.3), applied by the stream walker.

    ``operating_point``: the point to decode (None: the last, i.e. the full model). After the
    operating-points unit, :attr:`skip` tells the unit reader which payloads the point does not need.
    """

    def __init__(self, operating_point: int | None):
        if operating_point is not None and (not is_int(operating_point)
                                            or operating_point < 0):
            from ..errors import ConfigError

            raise ConfigError(f"operating_point must be a non-negative integer, got {operating_point!r}")
        self.requested = operating_point
        self.points: OperatingPoints | None = None
        self.point = 0                        #: the point being decoded (0 for a stream without points)
        self.headers: dict[str, object] = {}  #: tensor name -> its TensorHeader (scalable streams only)
        self.shapes: dict[str, tuple[int, ...]] = {}  #: tensor name -> its shape after the refinements read
        self.boundaries: set[int] = set()     #: offsets of every unit header seen
        self._refined: set[tuple[str, int]] = set()
        self._level = 0                       # level of the last refinement unit

    @property
    def refining(self) -> bool:
        """True when refinements are applied: tensors are final only at the end of the walk."""
        return self.point > 0

    def skip(self, offset: int) -> bool:
        """A unit at ``offset`` lies past the selected point (and before end-of-stream)."""
        pts = self.points.points  # type: ignore[union-attr]
        return pts[self.point].end_offset <= offset < pts[-1].end_offset

    def on_points(self, r: ByteReader, unit_end: int, tensors_seen: bool) -> bool:
        """Parse the operating-points unit; True when the reader must skip payloads past the point."""
        if self.points is not None or tensors_seen:
            raise CorruptError("operating-points unit after tensors or repeated")
        self.points = OperatingPoints.parse(r)
        pts = self.points.points
        if pts[0].end_offset < unit_end:
            raise CorruptError(f"operating point 0 ends at {pts[0].end_offset}, inside its own operating-points unit")
        if self.requested is None:
            self.point = len(pts) - 1
        elif self.requested >= len(pts):
            from ..errors import ConfigError

            raise ConfigError(f"operating_point {self.requested} requested, the stream has {len(pts)} "
                              f"(0..{len(pts) - 1})")
        else:
            self.point = self.requested
        return self.point < len(pts) - 1

    def _no_points(self) -> None:
        if self.requested:  # only point 0 exists in a stream without operating points
            from ..errors import ConfigError

            raise ConfigError(f"operating_point {self.requested} requested, the stream has no operating points "
                              "(only point 0)")

    def on_tensor(self, th: object, unit_offset: int, unit_end: int) -> None:
        if self.points is None:
            self._no_points()
            return
        if self._level:
            raise CorruptError("a tensor unit after a refinement unit (the base layer comes first)")
        if unit_end > self.points.points[0].end_offset:
            raise CorruptError(f"tensor unit ends at {unit_end}, past the end of operating point 0 "
                               f"({self.points.points[0].end_offset})")
        self.headers[th.name] = th  # type: ignore[attr-defined]
        self.shapes[th.name] = th.shape  # type: ignore[attr-defined]

    def on_skipped(self, unit_type: int, refinement_type: int, end_type: int) -> None:
        if unit_type == end_type:
            pts = self.points.points  # type: ignore[union-attr]
            raise CorruptError(f"operating point {len(pts) - 1} ends at {pts[-1].end_offset}, past the end-of-stream "
                               "unit: the point references units that are not there")
        if unit_type != refinement_type:
            raise CorruptError(f"a unit of type {unit_type:#04x} lies between the end of operating point "
                               f"{self.point} and end-of-stream (only refinement units may)")

    def on_refinement(self, r: ByteReader, limits: Limits, unit_offset: int, unit_end: int) -> "RefinementHeader":
        if self.points is None:
            raise CorruptError("a refinement unit without an operating-points unit")
        level, mode, name = RefinementHeader.parse_name(r, limits)
        pts = self.points.points
        base = self.headers.get(name)
        if base is None:
            raise CorruptError(f"refinement of {name!r} without its base tensor unit")
        if not 1 <= level < len(pts):
            raise CorruptError(f"refinement of {name!r} at level {level}: the stream has points 0..{len(pts) - 1}")
        if level < self._level:
            raise CorruptError(f"refinement of {name!r} at level {level} after one at level {self._level}")
        if (name, level) in self._refined:
            raise CorruptError(f"a second refinement of {name!r} at level {level}")
        if unit_offset < pts[level - 1].end_offset or unit_end > pts[level].end_offset:
            raise CorruptError(f"refinement of {name!r} at level {level} lies outside operating point {level}'s "
                               f"bytes [{pts[level - 1].end_offset}, {pts[level].end_offset})")
        rh = RefinementHeader.parse_rest(r, level, mode, name, base.dtype, self.shapes[name],  # type: ignore[attr-defined]
                                         limits)
        self.growth_bytes = 0  #: decoded bytes this refinement adds (a growing one)
        if rh.shape is not None:
            self.growth_bytes = (math.prod(rh.shape) - math.prod(self.shapes[name])) * base.dtype.itemsize  # type: ignore[attr-defined]
            self.shapes[name] = rh.shape
        self._level = level
        self._refined.add((name, level))
        return rh

    def on_end(self, eos_offset: int) -> None:
        if self.points is None:
            self._no_points()
            return
        pts = self.points.points
        if pts[-1].end_offset != eos_offset:
            raise CorruptError(f"operating point {len(pts) - 1} ends at {pts[-1].end_offset}, the end-of-stream "
                               f"unit is at {eos_offset}: the point references units that are not there")
        for p in pts:
            if p.end_offset not in self.boundaries:
                raise CorruptError(f"operating point {p.index} ends at {p.end_offset}, which is not a unit boundary")

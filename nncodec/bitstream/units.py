"""Access units: their header, and the payload of each unit type (FORMAT.md §3-4)."""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..dtypes import DType, dtype_by_id
from ..errors import CorruptError, UnsupportedFeatureError
from ..limits import Limits
from .byte_reader import ByteReader
from .constants import (END_OF_STREAM, FLAG_CRITICAL, FORMAT_MAJOR, FORMAT_MINOR, MAX_PIPELINE_STAGES, PIPELINE_DEFAULT,
                        PROFILE_MAIN, STREAM_HEADER, UNIT_CRC_COVERED, UNIT_HEADER)
from .descriptor import QuantDescriptor

__all__ = ["UnitHeader", "StreamHeader", "EndOfStream", "TensorHeader", "TensorAliases", "StageEntry",
           "parse_stage_entries", "stage_entries_bytes", "frame_unit", "parse_json_object", "parse_tensor_fields"]

_DIM = struct.Struct("<Q")


@dataclass(frozen=True)
class StageEntry:
    """One pipeline entry as stored (FORMAT.md §4): the stage id and its raw params. What they mean is the
    stage registry's business (``nncodec.coding``), not the wire layer's."""

    stage_id: int
    params: bytes
    offset: int = field(default=0, compare=False)  #: file offset of the entry, for errors


def parse_stage_entries(r: ByteReader, count: int) -> tuple[StageEntry, ...]:
    """``count`` pipeline entries (``u8 stage_id | u8 params_length | params``), bounds-checked."""
    if count > MAX_PIPELINE_STAGES:
        raise CorruptError(f"pipeline has {count} stages, at most {MAX_PIPELINE_STAGES} allowed", offset=r.offset)
    entries = []
    for _ in range(count):
        at = r.offset
        stage_id = r.u8("stage id")
        plen = r.u8("stage params length")
        entries.append(StageEntry(stage_id, bytes(r.take(plen, "stage params")), at))
    return tuple(entries)


def stage_entries_bytes(entries: "tuple[StageEntry, ...]") -> bytes:
    """``u8 count`` and the entries, as a tensor header or a model parameter set stores them."""
    out = bytearray([len(entries)])
    for e in entries:
        out += bytes([e.stage_id, len(e.params)]) + e.params
    return bytes(out)


@dataclass(frozen=True)
class UnitHeader:
    unit_type: int
    flags: int
    payload_length: int
    crc32: int
    offset: int  #: file offset of the unit header

    @property
    def critical(self) -> bool:
        return bool(self.flags & FLAG_CRITICAL)


def frame_unit(unit_type: int, payload: bytes, *, critical: bool = True) -> bytes:
    """Header + payload of one unit, CRC32 over the first 12 header bytes and the payload."""
    head = UNIT_HEADER.pack(unit_type, FLAG_CRITICAL if critical else 0, 0, len(payload), 0)[:UNIT_CRC_COVERED]
    crc = zlib.crc32(payload, zlib.crc32(head))
    return head + struct.pack("<I", crc) + payload


def parse_json_object(raw: bytes | memoryview, what: str, offset: int) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(raw).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptError(f"{what} is not UTF-8 JSON: {exc}", offset=offset) from None
    if not isinstance(obj, dict):
        raise CorruptError(f"{what} must be a JSON object", offset=offset)
    return obj


@dataclass(frozen=True)
class StreamHeader:
    tensor_count: int
    metadata: dict[str, str] = field(default_factory=dict)
    profile: int = PROFILE_MAIN
    version: tuple[int, int] = (FORMAT_MAJOR, FORMAT_MINOR)

    def to_bytes(self) -> bytes:
        meta = json.dumps(self.metadata, sort_keys=True, ensure_ascii=False,
                          separators=(",", ":")).encode() if self.metadata else b""
        return STREAM_HEADER.pack(*self.version, self.profile, 0, 0, self.tensor_count, len(meta)) + meta

    @classmethod
    def parse(cls, r: ByteReader, limits: Limits, file_version: tuple[int, int]) -> "StreamHeader":
        at = r.offset
        major, minor, profile, res8, res16, count, meta_len = r.unpack(STREAM_HEADER, "stream header")
        if (major, minor) != file_version:
            raise CorruptError(f"stream header says version {major}.{minor}, file header "
                               f"{file_version[0]}.{file_version[1]}", offset=at)
        if res8 or res16:
            raise CorruptError("reserved stream-header bytes are not zero", offset=at)
        if profile != PROFILE_MAIN:
            raise UnsupportedFeatureError(f"unknown profile {profile}", offset=at)
        limits.check("stream metadata size", meta_len, "max_metadata_bytes", offset=at)
        meta: dict[str, str] = {}
        if meta_len:
            meta = parse_json_object(r.take(meta_len, "metadata"), "stream metadata", r.offset)
            if not all(isinstance(v, str) for v in meta.values()):
                raise CorruptError("stream metadata values must be strings", offset=at)
        r.expect_end("stream header")
        return cls(count, meta, profile, (major, minor))


@dataclass(frozen=True)
class EndOfStream:
    unit_count: int
    tensor_count: int

    def to_bytes(self) -> bytes:
        return END_OF_STREAM.pack(self.unit_count, self.tensor_count)

    @classmethod
    def parse(cls, r: ByteReader) -> "EndOfStream":
        out = cls(*r.unpack(END_OF_STREAM, "end-of-stream"))
        r.expect_end("end-of-stream")
        return out


_NAME_LEN = struct.Struct("<H")
_ALIAS_ENTRY_MIN = 6  # two u16 lengths and at least one byte of each name


def _parse_name(r: ByteReader, limits: Limits, what: str) -> str:
    at = r.offset
    (n,) = r.unpack(_NAME_LEN, f"{what} length")
    limits.check(f"{what} length", n, "max_name_bytes", offset=at)
    try:
        name = bytes(r.take(n, what)).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CorruptError(f"{what} is not valid UTF-8", offset=at) from None
    if not name:
        raise CorruptError(f"{what} is empty", offset=at)
    return name


@dataclass(frozen=True)
class TensorAliases:
    """The tensor-aliases unit (format 1.1): names that share the storage of a tensor unit (tied weights).

    Payload: ``u32 count`` then per alias, ascending by its UTF-8 bytes, ``u16 len | alias | u16 len | target``.
    """

    aliases: dict[str, str]  #: alias name -> name of the tensor unit whose storage it shares

    def to_bytes(self) -> bytes:
        out = [struct.pack("<I", len(self.aliases))]
        for alias in sorted(self.aliases, key=lambda a: a.encode("utf-8")):
            for name in (alias, self.aliases[alias]):
                raw = name.encode("utf-8")
                out.append(_NAME_LEN.pack(len(raw)) + raw)
        return b"".join(out)

    @classmethod
    def parse(cls, r: ByteReader, limits: Limits) -> "TensorAliases":
        at = r.offset
        (count,) = r.unpack(struct.Struct("<I"), "alias count")
        if count == 0 or count * _ALIAS_ENTRY_MIN > r.remaining:
            raise CorruptError(f"{count} aliases cannot fit the {r.remaining} bytes that follow", offset=at)
        aliases: dict[str, str] = {}
        previous = b""
        for _ in range(count):
            entry_at = r.offset
            alias, target = _parse_name(r, limits, "alias name"), _parse_name(r, limits, "alias target")
            if alias.encode("utf-8") <= previous:
                raise CorruptError(f"alias {alias!r} is not in ascending order or repeated", offset=entry_at)
            if alias == target:
                raise CorruptError(f"alias {alias!r} names itself", offset=entry_at)
            previous = alias.encode("utf-8")
            aliases[alias] = target
        r.expect_end("tensor aliases")
        return cls(aliases)


@dataclass(frozen=True)
class TensorHeader:
    """Everything of a tensor data unit before its coded payload."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    quant: QuantDescriptor
    pipeline: "tuple[StageEntry, ...] | None"  #: stored stage entries; None: the model parameter set's

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def fields_bytes(self) -> bytes:
        """dtype id, rank, dimensions and quantization descriptor: the fields a tensor unit's header and a
        tensor-group member share (read back by :func:`parse_tensor_fields`)."""
        return (struct.pack("<BB", self.dtype.id, len(self.shape)) + b"".join(_DIM.pack(d) for d in self.shape)
                + self.quant.to_bytes())

    def to_bytes(self) -> bytes:
        name = self.name.encode("utf-8")
        out = struct.pack("<H", len(name)) + name + self.fields_bytes()
        out += bytes([PIPELINE_DEFAULT]) if self.pipeline is None else stage_entries_bytes(self.pipeline)
        return out

    @classmethod
    def parse(cls, r: ByteReader, limits: Limits) -> "TensorHeader":
        at = r.offset
        (name_len,) = r.unpack(struct.Struct("<H"), "name length")
        limits.check("tensor name length", name_len, "max_name_bytes", offset=at)
        raw_name = r.take(name_len, "tensor name")
        try:
            name = bytes(raw_name).decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise CorruptError("tensor name is not valid UTF-8", offset=at) from None
        if not name:
            raise CorruptError("tensor name is empty", offset=at)
        dtype, shape, quant = parse_tensor_fields(r, name, limits)
        count = r.u8("pipeline stage count")
        pipeline = None if count == PIPELINE_DEFAULT else parse_stage_entries(r, count)
        return cls(name, dtype, shape, quant, pipeline)


def parse_tensor_fields(r: ByteReader, name: str, limits: Limits, what: str = "tensor"
                        ) -> tuple[DType, tuple[int, ...], QuantDescriptor]:
    """dtype, rank, shape and quantization descriptor of a tensor (FORMAT.md §3.4, also a tensor-group
    member's, §14.2), each checked against the limits as it is read."""
    dt_at = r.offset
    dtype_id, ndim = r.unpack(struct.Struct("<BB"), "dtype and rank")
    dtype = dtype_by_id(dtype_id)
    if dtype is None:
        raise UnsupportedFeatureError(f"unknown dtype id {dtype_id} for {what} {name!r}", offset=dt_at)
    limits.check(f"rank of {what} {name!r}", ndim, "max_ndim", offset=dt_at)
    shape = []
    span = 1  # product of the dimensions with zeros counted as 1: bounds every allocation's arithmetic
    for _ in range(ndim):
        (d,) = r.unpack(_DIM, "dimension")
        shape.append(d)
        span *= max(d, 1)
        if span > limits.max_tensor_elements:
            limits.check(f"element count of {what} {name!r} (zero dimensions counted as 1)", span,
                         "max_tensor_elements", offset=dt_at)
    return dtype, tuple(shape), QuantDescriptor.parse(r, dtype, tuple(shape))

"""Stage 8 (format 1.6, FORMAT.md §16): context-adaptive binary arithmetic coding of segments of words.

For small blocks of quantized code words (a tensor group's data: a few KB), where a static entropy coder's
table costs more than it saves. The words are split into **segments** (a group's members), each with a type
(int8, uint8, int16, uint16 words, or raw bytes coded by an adaptive bit tree or as plain bits), a context
set (segments of one set share their adaptive probabilities), and an offset subtracted before coding. An
integer word is binarized as in DeepCABAC: a significance flag (context: how many of the previous two words
of the segment were non-zero), a sign flag (context: the previous word's sign), "abs > k" flags for
``k = 1..K`` (one context each) and an Exp-Golomb-0 remainder (prefix bits adaptive, one context per
position; suffix bits in bypass). The bits go through LZMA's
binary range coder (32-bit range, 11-bit probabilities, adaptation shift from the params).

Params: ``u8 shift (3..7) | u8 K (0..15)``. Framing: the segment table (varints), then the coder's bytes.
Decoding is sequential (one bit at a time): the C kernel in ``_rans_native.c`` decodes about 60 MB/s of
pruned-like int8 codes, the portable one (:mod:`.acode_portable`) about 1 MB/s; ``Limits.max_adaptive_words``
bounds the work.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ..bitstream.constants import FORMAT_MINOR_ACODE, STAGE_ACODE
from ..errors import ConfigError, CorruptError
from ..limits import Limits
from . import acode_portable as portable
from .kernels import native_kernels
from .stage import Stage, register_stage

log = logging.getLogger(__name__)

__all__ = ["Acode", "Segment", "SEGMENT_TYPES", "segment_table", "parse_segments", "acode_kernels",
           "acode_compiled"]

#: segment type codes by name (FORMAT.md §16.2)
SEGMENT_TYPES = {"int8": portable.TYPE_I8, "uint8": portable.TYPE_U8, "int16": portable.TYPE_I16,
                 "uint16": portable.TYPE_U16, "tree": portable.TYPE_TREE, "bypass": portable.TYPE_BYPASS}
_INTEGER_TYPES = tuple(portable.TYPE_RANGE)
MAX_OFFSET = 65535
_HAS_OFFSET = 0x08  #: segment head bit 3: an offset follows
_PARAMS = struct.Struct("<BB")
SHIFTS = range(3, 8)
_VARINT_BYTES = 8
_ERRORS = {
    portable.ERR_END: "the coded bytes run out",
    portable.ERR_FIRST_BYTE: "the first coded byte is not 0",
    portable.ERR_RANGE: "a decoded value is outside its word type",
    portable.ERR_PREFIX: f"an Exp-Golomb prefix is over {portable.PREFIX_CAP} bits",
    portable.ERR_TAIL: "the coded bytes do not end where the coder does (bytes left over, or a final code not 0)",
}


class Segment(NamedTuple):
    """A run of words coded alike: ``kind`` a :data:`SEGMENT_TYPES` code, ``cset`` its context set (0..15),
    ``offset`` subtracted from integer words before coding (0 for raw bytes), ``count`` words."""

    kind: int
    cset: int
    offset: int
    count: int


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def segment_table(segments: Sequence[Segment]) -> bytes:
    """The framing's segment table (FORMAT.md §16.2); :class:`ConfigError` for an invalid segment."""
    out = bytearray(_varint(len(segments)))
    for s in segments:
        if s.kind not in SEGMENT_TYPES.values() or not 0 <= s.cset < portable.MAX_SETS or s.count < 0:
            raise ConfigError(f"acode: invalid segment {s}")
        if s.kind in _INTEGER_TYPES:
            if abs(s.offset) > MAX_OFFSET:
                raise ConfigError(f"acode: segment offset {s.offset} beyond ±{MAX_OFFSET}")
        elif s.offset:
            raise ConfigError("acode: raw-byte segments take no offset")
        out.append(s.cset << 4 | (_HAS_OFFSET if s.offset else 0) | s.kind)
        if s.offset:
            out += _varint(2 * s.offset if s.offset >= 0 else -2 * s.offset - 1)
        out += _varint(s.count)
    return bytes(out)


class _Reader:
    """Reads the segment table; everything it finds wrong is a :class:`CorruptError` at a framing offset."""

    def __init__(self, data: memoryview):
        self.data, self.pos = data, 0

    def varint(self, field: str) -> int:
        start, value = self.pos, 0
        for i in range(_VARINT_BYTES):
            if self.pos >= len(self.data):
                raise CorruptError(f"acode framing ends inside {field} (framing byte {start})")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i:
                    raise CorruptError(f"acode {field} is not minimally encoded (framing byte {start})")
                return value
        raise CorruptError(f"acode {field} is longer than {_VARINT_BYTES} bytes (framing byte {start})")


def parse_segments(data: memoryview, size: int) -> tuple[np.ndarray, int]:
    """The segment table at the head of ``data`` as rows ``(type, set, offset, count)`` and the offset where the
    coded bytes start. ``size``: the bytes the segments must fill exactly (:class:`CorruptError` otherwise)."""
    r = _Reader(data)
    n = r.varint("segment count")
    if n > (len(data) - r.pos) // 2:  # every segment takes at least 2 bytes: nothing allocated from a claim
        raise CorruptError(f"acode declares {n} segments in {len(data) - r.pos} framing bytes")
    rows = np.empty((n, 4), dtype=np.int64)
    total = 0
    for i in range(n):
        at = r.pos
        if r.pos >= len(data):
            raise CorruptError(f"acode framing ends inside segment {i} (framing byte {at})")
        head = data[r.pos]
        r.pos += 1
        kind, cset = head & 0x07, head >> 4
        if kind > portable.TYPE_BYPASS:
            raise CorruptError(f"acode segment {i} has unknown type {kind} (framing byte {at})")
        offset = 0
        if head & _HAS_OFFSET:
            if kind not in _INTEGER_TYPES:
                raise CorruptError(f"acode segment {i} of raw bytes declares an offset (framing byte {at})")
            z = r.varint(f"segment {i}'s offset")
            offset = z >> 1 if not z & 1 else -((z + 1) >> 1)
            if abs(offset) > MAX_OFFSET:
                raise CorruptError(f"acode segment {i}'s offset {offset} is beyond ±{MAX_OFFSET} (framing byte {at})")
        count = r.varint(f"segment {i}'s word count")
        total += count * portable.TYPE_WIDTH[kind]
        if total > size:
            raise CorruptError(f"acode segments declare over the {size} bytes of their output at segment {i} "
                               f"(framing byte {at})")
        rows[i] = (kind, cset, offset, count)
    if total != size:
        raise CorruptError(f"acode segments declare {total} bytes, the output holds {size}")
    return rows, r.pos


def acode_kernels() -> Any:
    """The module whose ``acode_encode`` / ``acode_decode`` run the coder: the C extension when it was built
    with them, else the portable kernels (adapted to the same calls)."""
    native = native_kernels()
    if native is not None and hasattr(native, "acode_decode"):
        return native
    return _Portable


def acode_compiled() -> bool:
    """Whether the coder runs compiled (the C extension was built with the stage 8 kernels)."""
    return acode_kernels() is not _Portable


class _Portable:
    """The portable kernels behind the C kernels' calling convention."""

    @staticmethod
    def acode_encode(data: np.ndarray, segs: np.ndarray, shift: int, k: int, out: np.ndarray) -> int:
        coded = portable.encode(data, segs, shift, k)
        if len(coded) > out.size:
            return -1
        out[:len(coded)] = np.frombuffer(coded, dtype=np.uint8)
        return len(coded)

    @staticmethod
    def acode_decode(coded: memoryview, segs: np.ndarray, shift: int, k: int, out: np.ndarray,
                     info: np.ndarray) -> int:
        status, word, pos = portable.decode(coded, segs, shift, k, out)
        info[0], info[1] = word, pos
        return status


@register_stage
class Acode(Stage):
    """Params: ``u8 shift (3..7) | u8 K (0..15)``. Framing: ``varint n_segments``, per segment ``u8 (set << 4 |
    has_offset << 3 | type)``, when has_offset (integer types only) a zig-zag ``varint offset``, ``varint count``; then the range coder's bytes
    (none when the segments hold no words). See FORMAT.md §16.

    ``segments`` (encoding only, not stored in the params and not part of equality): how the encoder's input
    splits; None codes it as one segment of ``default`` type in set 0."""

    stage_id = STAGE_ACODE
    codec_id = "acode"
    since_minor = FORMAT_MINOR_ACODE

    def __init__(self, shift: int = 4, k: int = portable.MAX_K, segments: "Sequence[Segment] | None" = None,
                 default: str = "int8"):
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or shift not in SHIFTS:
            raise ConfigError(f"acode: shift must be an integer {SHIFTS.start}..{SHIFTS.stop - 1}, got {shift!r}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= portable.MAX_K:
            raise ConfigError(f"acode: k must be 0..{portable.MAX_K}, got {k!r}")
        if default not in SEGMENT_TYPES:
            raise ConfigError(f"acode: default segment type must be one of {sorted(SEGMENT_TYPES)}, got {default!r}")
        self.shift, self.k, self.default = int(shift), int(k), default
        self.segments = None if segments is None else tuple(Segment(*s) for s in segments)
        if self.segments is not None:
            segment_table(self.segments)  # validates

    def params(self) -> bytes:
        return _PARAMS.pack(self.shift, self.k)

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "Acode":
        if len(params) != _PARAMS.size:
            raise CorruptError(f"acode params must be {_PARAMS.size} bytes, got {len(params)}")
        shift, k = _PARAMS.unpack(bytes(params))
        if shift not in SHIFTS or k > portable.MAX_K:
            raise CorruptError(f"acode params invalid: shift {shift} (3..7), K {k} (0..{portable.MAX_K})")
        return cls(shift, k)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Acode":
        """The stage of ``{"id": "acode", "shift": 3..7, "k": 0..15}`` (both optional); ``segments`` and
        ``default`` are the encoder's (they depend on the data) and not accepted here."""
        unknown = sorted(set(config) - {"id", "shift", "k"})
        if unknown:
            raise ConfigError(f"bad configuration for stage 'acode': unknown key(s) {unknown}; it takes shift and k")
        return cls(config.get("shift", 4), config.get("k", portable.MAX_K))

    def get_config(self) -> dict:
        return {"id": self.codec_id, "shift": self.shift, "k": self.k}

    def _segments_for(self, size: int) -> tuple[Segment, ...]:
        if self.segments is not None:
            total = sum(s.count * portable.TYPE_WIDTH[s.kind] for s in self.segments)
            if total != size:
                raise ConfigError(f"acode: the segments hold {total} bytes, the input {size}")
            return self.segments
        kind = SEGMENT_TYPES[self.default]
        width = portable.TYPE_WIDTH[kind]
        if size % width:
            raise ConfigError(f"acode: {size} bytes are not whole {self.default} words")
        return (Segment(kind, 0, 0, size // width),)

    def encode(self, data: memoryview) -> bytes:
        array = np.frombuffer(data, dtype=np.uint8)
        segments = self._segments_for(array.size)
        table = segment_table(segments)
        rows = np.array(segments, dtype=np.int64).reshape(-1, 4)
        kernels = acode_kernels()
        for cap in (2 * array.size + 64, 80 * array.size + 64):  # the second bounds any input (FORMAT.md §16.6)
            out = np.empty(cap, dtype=np.uint8)
            n = kernels.acode_encode(array, rows, self.shift, self.k, out)
            if n >= 0:
                return table + out[:n].tobytes()
        raise ConfigError("acode: the coded bytes exceed their bound")  # pragma: no cover - the bound holds

    def decoded_size(self, data: memoryview) -> int:
        r = _Reader(data)
        n = r.varint("segment count")
        if n > (len(data) - r.pos) // 2:
            raise CorruptError(f"acode declares {n} segments in {len(data) - r.pos} framing bytes")
        total = 0
        for i in range(n):
            if r.pos >= len(data):
                raise CorruptError(f"acode framing ends inside segment {i}")
            head = data[r.pos]
            kind = head & 0x07
            r.pos += 1
            if kind > portable.TYPE_BYPASS:
                raise CorruptError(f"acode segment {i} has unknown type {kind}")
            if head & _HAS_OFFSET:
                r.varint(f"segment {i}'s offset")
            total += r.varint(f"segment {i}'s word count") * portable.TYPE_WIDTH[kind]
        return total

    def check_limits(self, data: memoryview, size: int, limits: Limits) -> None:
        """:class:`LimitExceededError` when the ``size``-byte output holds more words than
        ``limits.max_adaptive_words`` (checked before any decoding: the coder is sequential)."""
        rows, _ = parse_segments(data, size)
        limits.check("words of an acode stage", int(rows[:, 3].sum()) if rows.size else 0, "max_adaptive_words")

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        rows, start = parse_segments(data, out.size)
        coded = data[start:]
        info = np.zeros(2, dtype=np.int64)
        status = acode_kernels().acode_decode(coded, rows, self.shift, self.k, out, info)
        if status != portable.OK:
            raise CorruptError(f"acode: {_ERRORS.get(status, f'status {status}')} at word {int(info[0])}, "
                               f"coded byte {int(info[1])} of {len(coded)} (framing byte {start + int(info[1])})")

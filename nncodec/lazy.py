"""Lazy access to a stream, like ``safetensors.safe_open``: a header scan, then one unit per request.

``open`` reads the file header and every unit header, seeking over payloads (only the short prefix of each
tensor unit that holds its name, dtype, shape and descriptor is read), and checks the unit order and the
end-of-stream unit. ``get_array`` / ``get_tensor`` then read, checksum and decode just that unit.
The file must be seekable (bytes are wrapped in a BytesIO). Not thread-safe: one reader per thread.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .bitstream.byte_reader import ByteReader
from .bitstream.constants import (UNIT_CRC_COVERED, UNIT_END, UNIT_FLAGS_RESERVED, UNIT_HEADER, UNIT_HEADER_SIZE,
                                  UNIT_MODEL_PARAMETER_SET, UNIT_STREAM_HEADER, UNIT_TENSOR)
from .bitstream.pipeline import Pipeline
from .bitstream.reader import UnitReader, open_source
from .bitstream.units import EndOfStream, StreamHeader, TensorHeader
from .decoder import _decode_tensor, _StreamWalker
from .errors import ChecksumError, CorruptError, FormatError, TruncatedError, UnknownUnitError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["StreamFile", "open_stream"]

_PREFIX = 1 << 16  # bytes read to parse a tensor header during the scan (more if a header is longer)


@dataclass(frozen=True)
class _Entry:
    index: int
    offset: int
    length: int
    header: TensorHeader


class StreamFile:
    """An open nncodec stream with random access to its tensors (see the module docstring)."""

    def __init__(self, src: Any, *, limits: Limits = DEFAULT_LIMITS):
        f, self._owned = open_source(src)
        if not f.seekable():
            data = f.read()
            if self._owned:
                f.close()
            f, self._owned = io.BytesIO(data), True
        self._f: BinaryIO = f
        self.limits = limits
        self._entries: dict[str, _Entry] = {}
        self._default: Pipeline | None = None
        self.metadata: dict[str, str] = {}
        try:
            self._scan()
        except BaseException:
            self.close()
            raise

    def _read_at(self, offset: int, n: int, what: str) -> bytes:
        self._f.seek(offset)
        data = self._f.read(n)
        if len(data) != n:
            raise TruncatedError(f"stream ends inside {what}", offset=offset)
        return data

    def _scan(self) -> None:
        reader = UnitReader(self._f, self.limits)  # checks magic and version
        self.version = reader.version
        size = self._f.seek(0, io.SEEK_END)
        pos, index, seen_end = reader.position, 0, False
        names: set[str] = set()
        while pos < size:
            if seen_end:
                raise CorruptError("bytes after the end-of-stream unit", offset=pos)
            head = self._read_at(pos, UNIT_HEADER_SIZE, "a unit header")
            utype, flags, reserved, length, crc = UNIT_HEADER.unpack(head)
            self.limits.check("unit payload length", length, "max_unit_bytes", unit_index=index, offset=pos)
            if pos + UNIT_HEADER_SIZE + length > size:
                raise TruncatedError("a unit payload runs past the end of the file", unit_index=index, offset=pos)
            if flags & UNIT_FLAGS_RESERVED or reserved:
                raise CorruptError("reserved unit header bits set", unit_index=index, offset=pos)
            base = pos + UNIT_HEADER_SIZE
            try:
                if index == 0 and utype != UNIT_STREAM_HEADER:
                    raise CorruptError("the first unit must be a stream header")
                if utype in (UNIT_STREAM_HEADER, UNIT_MODEL_PARAMETER_SET, UNIT_END):
                    payload = self._checked(pos, head, length, crc)
                    r = ByteReader(payload, base_offset=base)
                    if utype == UNIT_STREAM_HEADER:
                        if index:
                            raise CorruptError("a second stream header")
                        self._header = StreamHeader.parse(r, self.limits, self.version)
                        self.metadata = self._header.metadata
                    elif utype == UNIT_MODEL_PARAMETER_SET:
                        self._default = Pipeline.parse_entries(r, r.u8("pipeline stage count"))
                        r.expect_end("model parameter set")
                    else:
                        eos = EndOfStream.parse(r)
                        if eos.unit_count != index or eos.tensor_count != len(names) or \
                                self._header.tensor_count != len(names):
                            raise CorruptError("end-of-stream counts do not match the stream")
                        seen_end = True
                elif utype == UNIT_TENSOR:
                    prefix = self._read_at(base, min(length, _PREFIX), "a tensor header")
                    try:
                        th = TensorHeader.parse(ByteReader(prefix, base_offset=base), self.limits)
                    except TruncatedError:
                        th = TensorHeader.parse(ByteReader(self._read_at(base, length, "a tensor unit"),
                                                           base_offset=base), self.limits)
                    if th.name in names:
                        raise CorruptError(f"duplicate tensor name {th.name!r}")
                    if th.pipeline is None and self._default is None:
                        raise CorruptError(f"tensor {th.name!r} uses a default pipeline but no model parameter set")
                    names.add(th.name)
                    self._entries[th.name] = _Entry(index, pos, length, th)
                elif flags & 1 and utype not in (0x03,):
                    raise UnknownUnitError(f"unknown critical unit type {utype:#04x}")
            except FormatError as exc:
                raise exc.located(unit_index=index, offset=pos) from None
            pos = base + length
            index += 1
        if not seen_end:
            raise TruncatedError("stream ends without an end-of-stream unit", offset=pos)

    def _checked(self, pos: int, head: bytes, length: int, crc: int) -> bytes:
        payload = self._read_at(pos + UNIT_HEADER_SIZE, length, "a unit payload")
        if zlib.crc32(payload, zlib.crc32(head[:UNIT_CRC_COVERED])) != crc:
            raise ChecksumError("unit checksum mismatch", offset=pos)
        return payload

    # -- access ------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def header(self, name: str) -> TensorHeader:
        return self._entry(name).header

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in this stream") from None

    def get_array(self, name: str) -> np.ndarray:
        """Decode one tensor (numpy; bfloat16 as uint16 bits), verifying its unit's checksum."""
        e = self._entry(name)
        head = self._read_at(e.offset, UNIT_HEADER_SIZE, "a unit header")
        crc = UNIT_HEADER.unpack(head)[4]
        try:
            payload = memoryview(self._checked(e.offset, head, e.length, crc))
            r = ByteReader(payload, base_offset=e.offset + UNIT_HEADER_SIZE)
            th = TensorHeader.parse(r, self.limits)
            walker = _StreamWalker.__new__(_StreamWalker)
            walker.limits, walker.default_pipeline = self.limits, self._default
            return _decode_tensor(walker, th, r.rest(), None)
        except FormatError as exc:
            raise exc.located(unit_index=e.index, offset=e.offset) from None

    def get_tensor(self, name: str) -> Any:
        """Decode one tensor as a torch tensor."""
        from .torch_io import to_torch

        return to_torch(self.get_array(name), self._entry(name).header.dtype)

    def close(self) -> None:
        if self._owned:
            self._f.close()

    def __enter__(self) -> "StreamFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_stream(src: "str | os.PathLike[str] | bytes | BinaryIO", *, limits: Limits = DEFAULT_LIMITS) -> StreamFile:
    return StreamFile(src, limits=limits)

"""Reading the file header and walking access units from a binary file object, bounds-checked."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import BadMagicError, ChecksumError, CorruptError, TruncatedError, UnsupportedVersionError
from ..limits import Limits
from .constants import FILE_HEADER, FILE_HEADER_SIZE, FORMAT_MAJOR, MAGIC, UNIT_CRC_COVERED, UNIT_FLAGS_RESERVED, \
    UNIT_HEADER, UNIT_HEADER_SIZE
from .units import UnitHeader

__all__ = ["UnitReader", "open_source"]

_READ_CHUNK = 64 << 20


def open_source(src: "bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO") -> tuple[BinaryIO, bool]:
    """A binary file object for ``src`` and whether the caller must close it."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(src)), True
    if isinstance(src, (str, os.PathLike)):
        return open(src, "rb"), True
    if hasattr(src, "read"):
        return src, False
    raise TypeError(f"cannot read an nncodec stream from {type(src).__name__}")


class UnitReader:
    """Iterates over ``(index, header, payload)`` of the units of one stream.

    Checks the file header, each unit's declared length against the bytes left and the limits, the
    CRC32, and reserved bits. Payloads are read one unit at a time; a non-seekable source is read in
    chunks so that a lying length field cannot make it allocate more than is really there.
    """

    def __init__(self, f: BinaryIO, limits: Limits):
        self._f = f
        self._limits = limits
        self._start = 0
        self._size: int | None = None
        try:
            if f.seekable():
                self._start = f.tell()
                self._size = f.seek(0, io.SEEK_END) - self._start
                f.seek(self._start)
        except (OSError, AttributeError):
            self._size = None
        self.position = 0  #: bytes consumed so far (offset from the start of the stream)
        self._read_file_header()

    def _read_exact(self, n: int, what: str) -> bytes:
        if self._size is not None and n > self._size - self.position:
            have = self._size - self.position
            raise TruncatedError(f"stream ends inside {what}: {n} bytes declared, {have} left", offset=self.position)
        parts, got = [], 0
        while got < n:
            chunk = self._f.read(min(n - got, _READ_CHUNK))
            if not chunk:
                raise TruncatedError(f"stream ends inside {what}: {n} bytes declared, {got} left",
                                     offset=self.position)
            parts.append(chunk)
            got += len(chunk)
        self.position += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_file_header(self) -> None:
        first = self._f.read(FILE_HEADER_SIZE)
        if len(first) < len(MAGIC) and MAGIC.startswith(first):
            raise TruncatedError("stream ends inside the file header", offset=len(first))
        if first[:len(MAGIC)] != MAGIC:
            raise BadMagicError("not an nncodec stream: bad magic number", offset=0)
        if len(first) < FILE_HEADER_SIZE:
            raise TruncatedError("stream ends inside the file header", offset=len(first))
        _, major, minor = FILE_HEADER.unpack(first)
        if major != FORMAT_MAJOR:
            hint = "upgrade nncodec" if major > FORMAT_MAJOR else "re-encode it with a current nncodec"
            raise UnsupportedVersionError(f"format version {major}.{minor} is not supported by this decoder "
                                          f"(reads {FORMAT_MAJOR}.x): {hint}", offset=8)
        self.version = (major, minor)
        self.position = FILE_HEADER_SIZE

    def at_end(self) -> bool:
        if self._size is not None:
            return self.position >= self._size
        return self._f.read(1) == b""  # consumes a byte only when there is trailing data anyway

    def __iter__(self) -> Iterator[tuple[int, UnitHeader, memoryview]]:
        index = 0
        while True:
            if self._size is not None and self.position == self._size:
                return
            at = self.position
            head = self._f.read(UNIT_HEADER_SIZE)
            if not head:
                return
            if len(head) < UNIT_HEADER_SIZE:
                raise TruncatedError("stream ends inside a unit header", unit_index=index, offset=at)
            self.position += UNIT_HEADER_SIZE
            utype, flags, reserved, length, crc = UNIT_HEADER.unpack(head)
            self._limits.check("unit payload length", length, "max_unit_bytes", unit_index=index, offset=at)
            try:
                payload = self._read_exact(length, "a unit payload")
            except TruncatedError as exc:
                raise exc.located(unit_index=index) from None
            if zlib.crc32(payload, zlib.crc32(head[:UNIT_CRC_COVERED])) != crc:
                raise ChecksumError("unit checksum mismatch", unit_index=index, offset=at)
            if flags & UNIT_FLAGS_RESERVED or reserved:
                raise CorruptError(f"reserved unit header bits set (flags {flags:#04x}, reserved {reserved:#06x})",
                                   unit_index=index, offset=at)
            yield index, UnitHeader(utype, flags, length, crc, at), memoryview(payload)
            index += 1
            self._limits.check("unit count", index, "max_units", unit_index=index, offset=self.position)

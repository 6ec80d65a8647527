"""Reading the file header and walking access units from a binary file object, bounds-checked."""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import BadMagicError, ChecksumError, CorruptError, TruncatedError, UnsupportedVersionError
from ..limits import Limits
from .constants import FILE_HEADER, FILE_HEADER_SIZE, FORMAT_MAJOR, MAGIC, UNIT_CRC_COVERED, UNIT_FLAGS_RESERVED, \
    UNIT_HEADER, UNIT_HEADER_SIZE, UNIT_TENSOR
from .units import UnitHeader

__all__ = ["UnitReader", "StreamedPayload", "DeferredPayload", "CodedStream", "CodedSpan", "open_source",
           "STREAM_PAYLOAD_BYTES"]

_READ_CHUNK = 64 << 20
#: tensor payloads longer than this, from a seekable source, are read as they are decoded (bytes)
STREAM_PAYLOAD_BYTES = 8 << 20
_PREFIX_BYTES = 1 << 20  # of a streamed payload, read up front (holds the tensor header)
_FINISH_CHUNK = 4 << 20
DEFERRED_PREFIX_BYTES = 1 << 16  #: of a deferred tensor payload, read during a scan (holds its header)


class StreamedPayload:
    """A large tensor payload: its first bytes in memory, the rest read from the file when asked for.

    The CRC32 is computed as the bytes pass; :meth:`finish` reads whatever is left and raises
    :class:`ChecksumError` on a mismatch. So a streamed unit's checksum is known only after it was decoded.
    """

    def __init__(self, reader: "UnitReader", length: int, prefix: bytes, crc_seed: int, crc: int,
                 unit_index: int, offset: int):
        self._reader = reader
        self.length = length
        self.prefix = prefix
        self._crc = zlib.crc32(prefix, crc_seed)
        self._expected = crc
        self._left = length - len(prefix)  # bytes still in the file
        self._index, self._offset = unit_index, offset
        self._done = False

    def _read(self, n: int) -> bytes:
        n = min(n, self._left)
        if n <= 0:
            return b""
        try:
            data = self._reader._read_exact(n, "a unit payload")
        except TruncatedError as exc:
            raise exc.located(unit_index=self._index) from None
        self._left -= n
        self._crc = zlib.crc32(data, self._crc)
        return data

    def coded(self, start: int) -> "CodedStream":
        """The payload from byte ``start`` on (which lies in the prefix) as a file-like stream."""
        return CodedStream(self, start)

    def materialize(self) -> memoryview:
        """The whole payload in memory (when the tensor header is longer than the prefix)."""
        return memoryview(self.prefix + self._read(self._left))

    def finish(self) -> None:
        """Read what is left of the payload and check the unit's CRC32 (once)."""
        if self._done:
            return
        while self._left:
            self._read(_FINISH_CHUNK)
        self._done = True
        if self._crc != self._expected:
            raise ChecksumError("unit checksum mismatch", unit_index=self._index, offset=self._offset)


class DeferredPayload:
    """A tensor payload seen during a header scan: its first bytes in memory, the rest left in the file.

    Nothing past the prefix is read and the checksum is not checked (the unit is read whole, and checked,
    when its tensor is decoded). Same interface as :class:`StreamedPayload`.
    """

    def __init__(self, f: BinaryIO, offset: int, length: int, prefix: bytes):
        self._f, self._offset, self.length, self.prefix = f, offset, length, prefix

    def coded(self, start: int) -> "CodedSpan":
        """The coded bytes from payload byte ``start`` on (a file offset, like :attr:`UnitReader.start`)."""
        return CodedSpan(self._offset + start, self.length - start)

    def materialize(self) -> memoryview:
        """The whole payload (a tensor header longer than the prefix); the file position is kept."""
        here = self._f.tell()
        try:
            self._f.seek(self._offset)
            data = self._f.read(self.length)
        finally:
            self._f.seek(here)
        if len(data) != self.length:
            raise TruncatedError("stream ends inside a unit payload", offset=self._offset)
        return memoryview(data)

    def finish(self) -> None:
        """Nothing to check during a scan."""


@dataclass(frozen=True)
class CodedSpan:
    """Where a tensor's coded bytes lie in the file (a header scan does not read them)."""

    offset: int  #: file offset of the first coded byte
    size: int

    def __len__(self) -> int:
        return self.size


class CodedStream:
    """A file-like view of a streamed payload's coded bytes (after the tensor header), read once, in order."""

    def __init__(self, payload: StreamedPayload, start: int):
        self._payload = payload
        self.head = memoryview(payload.prefix)[start:]  #: the first coded bytes (e.g. a zstd frame header)
        self._head_pos = 0
        self.size = payload.length - start

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size
        out = b""
        if self._head_pos < len(self.head):
            out = bytes(self.head[self._head_pos:self._head_pos + n])
            self._head_pos += len(out)
        if len(out) < n:
            out += self._payload._read(n - len(out))
        return out

    def materialize(self) -> memoryview:
        """All coded bytes not yet read, in memory."""
        rest = bytes(self.head[self._head_pos:]) + self._payload._read(self.size)
        self._head_pos = len(self.head)
        return memoryview(rest)

    def finish(self) -> None:
        self._payload.finish()


def _reserved_bits(flags: int, reserved: int, index: int, at: int) -> CorruptError:
    return CorruptError(f"reserved unit header bits set (flags {flags:#04x}, reserved {reserved:#06x})",
                        unit_index=index, offset=at)


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

    With ``defer_tensors`` (seekable sources only) a tensor unit yields a :class:`DeferredPayload`: only
    its first bytes are read, the rest is seeked over and its checksum is left to whoever decodes it.
    """

    def __init__(self, f: BinaryIO, limits: Limits, *, defer_tensors: bool = False):
        self._f = f
        self._limits = limits
        self._defer = defer_tensors
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
        if defer_tensors and self._size is None:
            raise ValueError("defer_tensors needs a seekable source")
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

    @property
    def start(self) -> int:
        """File offset of the stream's first byte (a file object may be positioned past 0)."""
        return self._start

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
            uh = UnitHeader(utype, flags, length, crc, at)
            if utype == UNIT_TENSOR and self._defer:
                if flags & UNIT_FLAGS_RESERVED or reserved:
                    raise _reserved_bits(flags, reserved, index, at)
                if length > self._size - self.position:  # type: ignore[operator]
                    raise TruncatedError(f"stream ends inside a unit payload: {length} bytes declared, "
                                         f"{self._size - self.position} left",  # type: ignore[operator]
                                         unit_index=index, offset=self.position)
                prefix = self._read_exact(min(length, DEFERRED_PREFIX_BYTES), "a unit payload")
                deferred = DeferredPayload(self._f, self._start + at + UNIT_HEADER_SIZE, length, prefix)
                self._f.seek(self._start + at + UNIT_HEADER_SIZE + length)
                self.position = at + UNIT_HEADER_SIZE + length
                yield index, uh, deferred
            elif utype == UNIT_TENSOR and self._size is not None and length > max(STREAM_PAYLOAD_BYTES, _PREFIX_BYTES):
                if flags & UNIT_FLAGS_RESERVED or reserved:
                    raise _reserved_bits(flags, reserved, index, at)
                if length > self._size - self.position:
                    raise TruncatedError(f"stream ends inside a unit payload: {length} bytes declared, "
                                         f"{self._size - self.position} left", unit_index=index, offset=self.position)
                try:
                    prefix = self._read_exact(_PREFIX_BYTES, "a unit payload")
                except TruncatedError as exc:
                    raise exc.located(unit_index=index) from None
                streamed = StreamedPayload(self, length, prefix, zlib.crc32(head[:UNIT_CRC_COVERED]), crc, index, at)
                yield index, uh, streamed
                streamed.finish()
            else:
                try:
                    payload = self._read_exact(length, "a unit payload")
                except TruncatedError as exc:
                    raise exc.located(unit_index=index) from None
                if zlib.crc32(payload, zlib.crc32(head[:UNIT_CRC_COVERED])) != crc:
                    raise ChecksumError("unit checksum mismatch", unit_index=index, offset=at)
                if flags & UNIT_FLAGS_RESERVED or reserved:
                    raise _reserved_bits(flags, reserved, index, at)
                yield index, uh, memoryview(payload)
            index += 1
            self._limits.check("unit count", index, "max_units", unit_index=index, offset=self.position)

"""Bounds-checked reading of little-endian fields from an in-memory buffer."""

from __future__ import annotations

import struct

from ..errors import CorruptError, TruncatedError

__all__ = ["ByteReader"]


class ByteReader:
    """Reads fields from ``buf``; every read checks the bytes remain, else :class:`TruncatedError`.

    ``base_offset`` is the file offset of ``buf[0]`` so errors can name the absolute offset.
    """

    def __init__(self, buf: bytes | memoryview, *, base_offset: int = 0, what: str = "payload"):
        self._buf = memoryview(buf)
        self._pos = 0
        self._base = base_offset
        self._what = what

    @property
    def offset(self) -> int:
        """Absolute file offset of the next byte."""
        return self._base + self._pos

    @property
    def remaining(self) -> int:
        return len(self._buf) - self._pos

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise TruncatedError(f"{self._what} ends inside {field}: needs {n} bytes, {self.remaining} left",
                                 offset=self.offset)
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def unpack(self, st: struct.Struct, field: str) -> tuple:
        return st.unpack(self.take(st.size, field))

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def rest(self) -> memoryview:
        return self.take(self.remaining, "rest")

    def expect_end(self, field: str) -> None:
        if self.remaining:
            raise CorruptError(f"{self.remaining} unexpected bytes after {field} in {self._what}",
                               offset=self.offset)

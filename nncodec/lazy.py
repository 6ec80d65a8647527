"""Lazy access to a stream, like ``safetensors.safe_open``: a header scan, then one unit per request.

``open`` walks the stream with the decoder's :class:`~nncodec.decoder.StreamWalker` (the same unit-order
rules as :func:`~nncodec.decoder.decode_arrays`), reading every unit header and seeking over tensor
payloads (only the short prefix of each tensor unit that holds its name, dtype, shape and descriptor is
read). ``get_array`` / ``get_tensor`` then read, checksum and decode just that unit. The file must be
seekable (bytes and non-seekable files are read into memory first). Not thread-safe: one reader per thread.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from .bitstream.byte_reader import ByteReader
from .bitstream.constants import UNIT_CRC_COVERED, UNIT_HEADER, UNIT_HEADER_SIZE
from .coding.pipeline import Pipeline
from .bitstream.reader import open_source
from .bitstream.units import TensorHeader
from .decoder import StreamWalker, decode_tensor
from .errors import ChecksumError, CorruptError, FormatError, LimitExceededError, TruncatedError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["StreamFile", "open_stream"]


@dataclass(frozen=True)
class _Entry:
    index: int
    offset: int   #: stream offset of the unit header
    length: int   #: payload bytes
    header: TensorHeader


class StreamFile:
    """An open nncodec stream with random access to its tensors (see the module docstring).

    ``metadata`` holds the stream header's pairs, ``topology`` the topology unit's object (or None),
    ``version`` the format version.
    """

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
        self.topology: dict[str, Any] | None = None
        try:
            self._scan()
        except BaseException:
            self.close()
            raise

    def _read_at(self, offset: int, n: int, what: str) -> bytes:
        self._f.seek(self._start + offset)
        data = self._f.read(n)
        if len(data) != n:
            raise TruncatedError(f"stream ends inside {what}", offset=offset)
        return data

    def _scan(self) -> None:
        walker = StreamWalker(self._f, self.limits, defer_tensors=True)
        self._start = walker.reader.start
        self.version = walker.reader.version
        for index, uh, th, _ in walker.tensor_units():
            self._entries[th.name] = _Entry(index, uh.offset, uh.payload_length, th)
        self._default = walker.default_pipeline
        self.aliases: dict[str, str] = dict(walker.aliases)
        self.metadata = walker.header.metadata if walker.header is not None else {}
        self.topology = walker.topology

    def _checked(self, pos: int, head: bytes, length: int, crc: int) -> bytes:
        payload = self._read_at(pos + UNIT_HEADER_SIZE, length, "a unit payload")
        if zlib.crc32(payload, zlib.crc32(head[:UNIT_CRC_COVERED])) != crc:
            raise ChecksumError("unit checksum mismatch", offset=pos)
        return payload
    # -- access ------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names in stream order, each alias (tied tensor) right after its target."""
        by_target: dict[str, list[str]] = {}
        for alias, target in sorted(self.aliases.items()):
            by_target.setdefault(target, []).append(alias)
        return [n for name in self._entries for n in (name, *by_target.get(name, ()))]

    def header(self, name: str) -> TensorHeader:
        return replace(self._entry(name).header, name=name)

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[self.aliases.get(name, name)]
        except KeyError:
            raise KeyError(f"no tensor {name!r} in this stream") from None

    def get_array(self, name: str) -> np.ndarray:
        """Decode one tensor (numpy; bfloat16 as uint16 bits), verifying its unit's checksum. An alias decodes
        its target's unit."""
        e = self._entry(name)
        name = e.header.name
        head = self._read_at(e.offset, UNIT_HEADER_SIZE, "a unit header")
        crc = UNIT_HEADER.unpack(head)[4]
        try:
            payload = memoryview(self._checked(e.offset, head, e.length, crc))
            r = ByteReader(payload, base_offset=e.offset + UNIT_HEADER_SIZE)
            th = TensorHeader.parse(r, self.limits)
            pipeline = Pipeline.from_entries(th.pipeline) if th.pipeline is not None else self._default
            if th.name != name or pipeline is None:  # the file changed since it was scanned
                raise CorruptError(f"the unit of tensor {name!r} changed since the stream was opened")
            return decode_tensor(th, r.rest(), pipeline, self.limits)
        except (FormatError, LimitExceededError) as exc:
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

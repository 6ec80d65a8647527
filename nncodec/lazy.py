"""Lazy access to a stream, like ``safetensors.safe_open``: a header scan, then one unit per request.

``open`` walks the stream with the decoder's :class:`~nncodec.decoder.StreamWalker` (the same unit-order
rules as :func:`~nncodec.decoder.decode_arrays`), reading every unit header and seeking over tensor
payloads (only the short prefix of each tensor unit that holds its name, dtype, shape and descriptor is
read). ``get_array`` / ``get_tensor`` then read, checksum and decode just that unit. A tensor-group unit
(FORMAT.md §14) is read whole (and checksummed) during the scan for its directory; the first one's payload
is kept (any other is read and checked again when one of its members is first asked for, so at most one
unit's payload stays in memory). Its data block is decoded when one of its members is first asked for and
cached for the others, by unit offset: decoded groups are dropped, least recently used first, while their
decoded bytes together exceed :data:`GROUP_CACHE_BYTES` (4 MiB; the group just decoded is always kept, so a
larger one is held alone). The file must be seekable (bytes and non-seekable files are read into memory
first). Not thread-safe: one reader per thread.
"""

from __future__ import annotations

import io
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np

from .bitstream.byte_reader import ByteReader
from .bitstream.constants import UNIT_CRC_COVERED, UNIT_HEADER, UNIT_HEADER_SIZE, UNIT_TENSOR_GROUP
from .coding.pipeline import Pipeline
from .bitstream.reader import open_source
from .bitstream.units import TensorHeader
from .bitstream.operating_points import RefinementHeader
from .decoder import StreamWalker, decode_tensor
from .bitstream.group import GroupMember
from .group import decode_group_data, member_pipeline, open_group
from .refine import apply_refinement
from .errors import ChecksumError, CorruptError, FormatError, LimitExceededError, TruncatedError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["GROUP_CACHE_BYTES", "StreamFile", "open_stream"]

#: decoded tensor-group data kept by a reader, in bytes (least recently used groups dropped beyond it)
GROUP_CACHE_BYTES = 4 << 20


@dataclass(frozen=True)
class _Entry:
    index: int
    offset: int   #: stream offset of the unit header
    length: int   #: payload bytes
    header: TensorHeader
    grouped: bool = False  #: a member of a tensor-group unit (FORMAT.md §14)


class StreamFile:
    """An open nncodec stream with random access to its tensors (see the module docstring).

    ``metadata`` holds the stream header's pairs, ``topology`` the topology unit's object (or None),
    ``version`` the format version, ``operating_points`` a scalable stream's points (FORMAT.md §13; tensors
    come at ``operating_point``, default the last).
    """

    def __init__(self, src: Any, *, limits: Limits = DEFAULT_LIMITS, operating_point: int | None = None):
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
        self._operating_point = operating_point
        self._shapes: dict[str, tuple[int, ...]] = {}  # tensors a refinement grows: their shape at the point
        self._refinements: dict[str, list[tuple[int, int, int, int, Any]]] = {}  # name -> (index, offset, length, coded start, header)
        self._group_payloads: dict[int, memoryview] = {}  # the first tensor-group unit's payload, read by the scan
        # decoded tensor groups by unit offset: their members by name and data, least recently used first
        self._groups: OrderedDict[int, tuple[dict[str, GroupMember], memoryview]] = OrderedDict()
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
        walker = StreamWalker(self._f, self.limits, defer_tensors=True, operating_point=self._operating_point,
                              refinements=True)
        self._start = walker.reader.start
        self.version = walker.reader.version
        for index, uh, th, coded in walker.tensor_units():
            if isinstance(th, RefinementHeader):
                start = coded.offset - (self._start + uh.offset + UNIT_HEADER_SIZE)
                self._refinements.setdefault(th.name, []).append((index, uh.offset, uh.payload_length, start, th))
                if th.shape is not None:
                    self._shapes[th.name] = th.shape
                continue
            self._entries[th.name] = _Entry(index, uh.offset, uh.payload_length, th, uh.unit_type == UNIT_TENSOR_GROUP)
        self.operating_points = walker.operating_points
        self.operating_point = walker.points.point
        self._default = walker.default_pipeline
        self._group_payloads = walker.group_payloads
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
        e = self._entry(name)
        return replace(e.header, name=name, shape=self._shapes.get(e.header.name, e.header.shape))

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
        if e.grouped:
            return self._member_array(e)
        head = self._read_at(e.offset, UNIT_HEADER_SIZE, "a unit header")
        crc = UNIT_HEADER.unpack(head)[4]
        try:
            payload = memoryview(self._checked(e.offset, head, e.length, crc))
            r = ByteReader(payload, base_offset=e.offset + UNIT_HEADER_SIZE)
            th = TensorHeader.parse(r, self.limits)
            pipeline = Pipeline.from_entries(th.pipeline) if th.pipeline is not None else self._default
            if th.name != name or pipeline is None:  # the file changed since it was scanned
                raise CorruptError(f"the unit of tensor {name!r} changed since the stream was opened")
            out = decode_tensor(th, r.rest(), pipeline, self.limits)
        except (FormatError, LimitExceededError) as exc:
            raise exc.located(unit_index=e.index, offset=e.offset) from None
        for index, offset, length, start, rh in self._refinements.get(name, ()):
            try:
                head = self._read_at(offset, UNIT_HEADER_SIZE, "a unit header")
                payload = memoryview(self._checked(offset, head, length, UNIT_HEADER.unpack(head)[4]))
                pipeline = Pipeline.from_entries(rh.pipeline) if rh.pipeline is not None else self._default
                if pipeline is None:
                    raise CorruptError(f"the refinement unit of {name!r} changed since the stream was opened")
                base = replace(e.header, shape=out.shape)
                out = apply_refinement(rh, base, payload[start:], pipeline, self.limits, out)
            except (FormatError, LimitExceededError) as exc:
                raise exc.located(unit_index=index, offset=offset) from None
        return out

    def _member_array(self, e: _Entry) -> np.ndarray:
        """A tensor-group member: the group's data decoded from its payload (cached for the group's other
        members, see the module docstring), the member's words decoded like a tensor unit's."""
        try:
            members, data = self._decoded_group(e)
            member = members.get(e.header.name)
            if member is None or (member.header.dtype, member.header.shape) != (e.header.dtype, e.header.shape):
                raise CorruptError(f"the tensor group unit of {e.header.name!r} changed since the stream was opened")
            return decode_tensor(member.header, data[member.start:member.start + member.size],
                                 member_pipeline(member), self.limits)
        except (FormatError, LimitExceededError) as exc:
            raise exc.located(unit_index=e.index, offset=e.offset) from None

    def _decoded_group(self, e: _Entry) -> tuple[dict[str, GroupMember], memoryview]:
        """``e``'s group: its members by name and its decoded data, from the cache or decoded and cached (older
        groups dropped while the cache holds over :data:`GROUP_CACHE_BYTES` of data)."""
        cached = self._groups.get(e.offset)
        if cached is not None:
            self._groups.move_to_end(e.offset)
            return cached
        group = open_group(self._group_payload(e), e.offset + UNIT_HEADER_SIZE, self.limits)
        cached = ({m.header.name: m for m in group.members}, memoryview(decode_group_data(group, self.limits)))
        self._groups[e.offset] = cached
        total = sum(d.nbytes for _, d in self._groups.values())
        while total > GROUP_CACHE_BYTES and len(self._groups) > 1:
            _, (_, dropped) = self._groups.popitem(last=False)
            total -= dropped.nbytes
        return cached

    def _group_payload(self, e: _Entry) -> memoryview:
        """The payload of ``e``'s tensor-group unit: kept by the scan (the first group), else read and its
        checksum verified again."""
        kept = self._group_payloads.get(e.offset)
        if kept is not None:
            return kept
        head = self._read_at(e.offset, UNIT_HEADER_SIZE, "a unit header")
        unit_type, _, _, length, crc = UNIT_HEADER.unpack(head)
        if unit_type != UNIT_TENSOR_GROUP or length != e.length:
            raise CorruptError(f"the tensor group unit of {e.header.name!r} changed since the stream was opened")
        return memoryview(self._checked(e.offset, head, e.length, crc))

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

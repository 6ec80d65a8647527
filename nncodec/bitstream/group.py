"""The tensor-group unit (format 1.4, FORMAT.md §14): many small tensors behind one unit header, one coded
directory of compact member headers, and one coded data block holding their code words.

This module is the wire layer only: the unit's fields, the directory's entries and their checks. Undoing
the two pipelines is :mod:`nncodec.group`'s business.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import CorruptError, UnsupportedFeatureError
from ..limits import Limits
from .byte_reader import ByteReader
from .constants import (GROUP_ENTRY_MIN, GROUP_HEAD, GROUP_LAYOUT_DENSE, GROUP_LAYOUT_FILL, PIPELINE_DEFAULT)
from .units import StageEntry, TensorHeader, parse_stage_entries, parse_tensor_fields

__all__ = ["GroupMember", "GroupUnit", "parse_directory", "directory_bytes"]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_MAX_SHARED = 255  #: a name shares at most this many leading bytes with the previous one


@dataclass(frozen=True)
class GroupMember:
    """One tensor of a group: its header (``pipeline`` is the empty tuple: members have none of their own),
    its layout, and where its stored words lie in the group's decoded data."""

    header: TensorHeader
    layout: int        #: GROUP_LAYOUT_DENSE or GROUP_LAYOUT_FILL
    start: int = 0     #: byte offset of its words in the decoded data
    size: int = 0      #: bytes of its words in the decoded data (numel or 1 code words)


@dataclass(frozen=True)
class GroupUnit:
    """The fields of a tensor-group payload; the directory and data are still coded."""

    member_count: int
    directory_length: int                       #: bytes of the decoded directory
    directory_pipeline: tuple[StageEntry, ...]
    coded_directory: memoryview
    directory_offset: int                       #: file offset of the first coded directory byte
    data_pipeline: tuple[StageEntry, ...]
    coded_data: memoryview
    data_offset: int                            #: file offset of the first coded data byte

    @staticmethod
    def to_bytes(member_count: int, directory_length: int, directory_pipeline: bytes, coded_directory: bytes,
                 data_pipeline: bytes, coded_data: bytes) -> bytes:
        """A payload from its parts; the pipelines as ``u8 count`` + entries (:meth:`Pipeline.to_bytes`)."""
        return (GROUP_HEAD.pack(member_count, directory_length) + directory_pipeline
                + _U32.pack(len(coded_directory)) + coded_directory + data_pipeline + coded_data)

    @classmethod
    def parse(cls, r: ByteReader, limits: Limits) -> "GroupUnit":
        """The fields in order, each bounds-checked; the directory length against ``max_metadata_bytes``
        and against the member count (each entry takes at least 21 bytes)."""
        at = r.offset
        count, dir_len = r.unpack(GROUP_HEAD, "tensor group head")
        if count == 0:
            raise CorruptError("a tensor group with no members", offset=at)
        limits.check("tensor group directory length", dir_len, "max_metadata_bytes", offset=at + 4)
        if count * GROUP_ENTRY_MIN > dir_len:
            raise CorruptError(f"{count} group members cannot fit a directory of {dir_len} bytes "
                               f"(at least {GROUP_ENTRY_MIN} each)", offset=at)
        dir_pipeline = _entries(r, "tensor group directory")
        (coded_len,) = r.unpack(_U32, "coded directory length")
        dir_at = r.offset
        coded_dir = r.take(coded_len, "coded directory")
        data_pipeline = _entries(r, "tensor group data")
        data_at = r.offset
        return cls(count, dir_len, dir_pipeline, coded_dir, dir_at, data_pipeline, r.rest(), data_at)


def _entries(r: ByteReader, what: str) -> tuple[StageEntry, ...]:
    at = r.offset
    count = r.u8(f"{what} pipeline stage count")
    if count == PIPELINE_DEFAULT:
        raise CorruptError(f"the {what} pipeline cannot be the default pipeline (0xFF)", offset=at)
    return parse_stage_entries(r, count)


def parse_directory(raw: bytes | memoryview, base_offset: int, count: int, limits: Limits
                    ) -> list[GroupMember]:
    """The ``count`` members of a decoded directory, checked field by field (names front-coded, strictly
    ascending; rank, element count and descriptor as a tensor unit's); the directory must be filled exactly.
    ``base_offset`` locates errors (the coded directory's file offset: decoded bytes have no file offset of
    their own)."""
    r = ByteReader(raw, base_offset=base_offset, what="tensor group directory")
    members: list[GroupMember] = []
    previous = b""
    data_at = 0
    for i in range(count):
        at = r.offset
        shared = r.u8("shared name prefix")
        (suffix_len,) = r.unpack(_U16, "name suffix length")
        if shared > len(previous):
            raise CorruptError(f"member {i} shares {shared} bytes with a previous name of {len(previous)}", offset=at)
        limits.check(f"name length of group member {i}", shared + suffix_len, "max_name_bytes", offset=at)
        raw_name = previous[:shared] + bytes(r.take(suffix_len, "name suffix"))
        if not raw_name:
            raise CorruptError(f"group member {i} has an empty name", offset=at)
        if raw_name <= previous:
            raise CorruptError(f"group member names are not in strictly ascending order at member {i}", offset=at)
        try:
            name = raw_name.decode("utf-8", errors="strict")
        except UnicodeDecodeError:
            raise CorruptError(f"name of group member {i} is not valid UTF-8", offset=at) from None
        previous = raw_name
        header = TensorHeader(name, *parse_tensor_fields(r, name, limits, "group member"), ())
        layout_at = r.offset
        layout = r.u8("member layout")
        if layout not in (GROUP_LAYOUT_DENSE, GROUP_LAYOUT_FILL):
            raise UnsupportedFeatureError(f"unknown layout {layout} of group member {name!r}", offset=layout_at)
        if layout == GROUP_LAYOUT_FILL and header.numel == 0:
            raise CorruptError(f"group member {name!r} fills zero elements", offset=layout_at)
        size = (1 if layout == GROUP_LAYOUT_FILL else header.numel) * header.quant.code_dtype.itemsize
        members.append(GroupMember(header, layout, data_at, size))
        data_at += size
    r.expect_end("the last member")
    return members


def directory_bytes(members: "list[tuple[TensorHeader, int]]") -> bytes:
    """The directory of ``(header, layout)`` pairs, names ascending (the encoder's side of §14.2)."""
    out = bytearray()
    previous = b""
    for header, layout in members:
        name = header.name.encode("utf-8")
        shared = 0
        limit = min(len(name), len(previous), _MAX_SHARED)
        while shared < limit and name[shared] == previous[shared]:
            shared += 1
        out += bytes([shared]) + _U16.pack(len(name) - shared) + name[shared:]
        out += header.fields_bytes() + bytes([layout])
        previous = name
    return bytes(out)


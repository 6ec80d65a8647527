"""Decoding a tensor-group unit (FORMAT.md §14): its directory first, every member checked, then its data.

A decoder reads the unit in two steps so that nothing is allocated before it is validated:
:func:`open_group` decodes the directory (its declared length is bounded by ``max_metadata_bytes``) and
checks every member header; the caller then checks names and the decoded-bytes limit, and only then
:func:`decode_group_data` allocates the data block (the size the checked directory implies). Each member is
then decoded like a tensor unit whose coded bytes are its words in that block, through
:func:`member_pipeline` (stored words, or one word repeated for a fill member).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .bitstream.byte_reader import ByteReader
from .bitstream.constants import GROUP_LAYOUT_FILL
from .bitstream.group import GroupMember, GroupUnit, parse_directory
from .coding.pipeline import Pipeline
from .errors import CorruptError
from .limits import Limits

__all__ = ["OpenGroup", "open_group", "decode_group_data", "member_pipeline", "FillWord"]


@dataclass(frozen=True)
class OpenGroup:
    """A tensor-group unit whose directory is decoded and checked; its data is still coded."""

    unit: GroupUnit
    members: list[GroupMember]

    @property
    def data_length(self) -> int:
        """Bytes of the decoded data block: every member's stored words."""
        last = self.members[-1]
        return last.start + last.size


def open_group(payload: memoryview, base_offset: int, limits: Limits) -> OpenGroup:
    """Parse the unit's fields, decode its directory and check every member (see the module docstring)."""
    r = ByteReader(payload, base_offset=base_offset, what="tensor group payload")
    unit = GroupUnit.parse(r, limits)
    pipeline = Pipeline.from_entries(unit.directory_pipeline)
    raw = np.empty(unit.directory_length, dtype=np.uint8)
    try:
        pipeline.decode_into(unit.coded_directory, raw, limits)
    except CorruptError as exc:
        raise exc.located(offset=unit.directory_offset) from None
    members = parse_directory(raw.tobytes(), unit.directory_offset, unit.member_count, limits)
    return OpenGroup(unit, members)


def decode_group_data(group: OpenGroup, limits: Limits) -> np.ndarray:
    """The decoded data block (uint8): every member's stored words, in directory order."""
    out = np.empty(group.data_length, dtype=np.uint8)
    try:
        Pipeline.from_entries(group.unit.data_pipeline).decode_into(group.unit.coded_data, out, limits)
    except CorruptError as exc:
        raise exc.located(offset=group.unit.data_offset) from None
    return out


@dataclass(frozen=True)
class FillWord(Pipeline):
    """A fill member's "pipeline": its one stored code word, repeated over the whole destination."""

    def decode_into(self, payload: memoryview, out: np.ndarray, limits: Limits) -> None:  # type: ignore[override]
        word = np.frombuffer(payload, dtype=np.uint8)
        if not word.size or out.size % word.size:
            raise CorruptError(f"a fill word of {word.size} bytes for {out.size} bytes of code words")
        out.reshape(-1, word.size)[:] = word


_STORED = Pipeline()
_FILL = FillWord()


def member_pipeline(member: GroupMember) -> Pipeline:
    """How a member's words in the data block become its code words."""
    return _FILL if member.layout == GROUP_LAYOUT_FILL else _STORED

"""A pipeline: the ordered stages a tensor's code words went through, and how to undo them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.units import StageEntry, parse_stage_entries, stage_entries_bytes
from ..errors import ConfigError, CorruptError, FormatError, LimitExceededError
from ..limits import Limits
from .prefetch import prefetched
from .shuffle import Shuffle
from .stage import Stage, stage_class
from .zstd_stage import Zstd

__all__ = ["Pipeline", "HandedWords", "intermediate_bound"]

_PIECE_BYTES = 4 << 20  # decoded bytes per piece when a pipeline streams


def intermediate_bound(final_size: int) -> int:
    """Largest output, in bytes, of a stage that feeds another stage, for a ``final_size``-byte tensor
    (FORMAT.md §4): decoders refuse more, so encoders never write it."""
    return 2 * final_size + 64


def _in_memory(payload: Any) -> memoryview:
    """The payload as bytes in memory: a streamed unit's coded bytes (a ``CodedStream``) are read in full."""
    return payload.materialize() if hasattr(payload, "materialize") else payload


class HandedWords:
    """Code words given to :meth:`Pipeline.encode` for keeps: the pipeline drops its reference once the
    first stage has coded them, so when the caller holds no other reference the words are freed while the
    later stages run (e.g. a tensor's bytes while zstd compresses their shuffled copy)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray):
        self.array: np.ndarray | None = array

    def take(self) -> np.ndarray:
        """The words, leaving this holder empty (:class:`ConfigError` when they were taken already)."""
        array, self.array = self.array, None
        if array is None:
            raise ConfigError("code words were handed on already")
        return array


@dataclass(frozen=True)
class Pipeline:
    """Stages applied in order when encoding (empty: the words are stored as they are)."""

    stages: tuple[Stage, ...] = ()

    def entries(self) -> "tuple[StageEntry, ...]":
        """The stages as stored pipeline entries."""
        return tuple(StageEntry(st.stage_id, st.params()) for st in self.stages)

    def to_bytes(self) -> bytes:
        return stage_entries_bytes(self.entries())

    @classmethod
    def from_entries(cls, entries: "tuple[StageEntry, ...]") -> "Pipeline":
        """The stages of stored entries, through the stage registry (unknown id: ``UnsupportedFeatureError``;
        bad params: ``CorruptError``; both located at the entry)."""
        stages = []
        for e in entries:
            try:
                stages.append(stage_class(e.stage_id).from_params(e.params))
            except FormatError as exc:
                raise exc.located(offset=e.offset) from None
        return cls(tuple(stages))

    @classmethod
    def parse_entries(cls, r: ByteReader, count: int) -> "Pipeline":
        return cls.from_entries(parse_stage_entries(r, count))

    def encode(self, words: "bytes | memoryview | HandedWords") -> bytes:
        """The coded payload of ``words``; :class:`ConfigError` when a stage's output that feeds another
        stage is over :func:`intermediate_bound` (a stream no decoder would read back). ``HandedWords`` are
        taken: no reference to them is kept past the first stage."""
        data: Any = words.take() if isinstance(words, HandedWords) else words
        size = memoryview(data).nbytes
        bound = intermediate_bound(size)
        for i, st in enumerate(self.stages):
            data = st.encode(memoryview(data))
            if i < len(self.stages) - 1 and len(data) > bound:
                raise ConfigError(f"stage {st.codec_id} writes {len(data)} bytes for {size} input bytes, "
                                  f"over the {bound} a following stage may receive")
        return bytes(data)

    def decode_into(self, payload: memoryview, out: np.ndarray, limits: Limits) -> None:
        """Undo the stages on ``payload``; the first stage writes straight into ``out`` (uint8, 1-D).

        Intermediate buffers are sized from each stage's declared size, which is checked first:
        no stage may declare more than twice the destination size plus 64 bytes (maps and counts).
        """
        unshuffle_pieces = (len(self.stages) == 2 and isinstance(self.stages[0], Shuffle)
                            and self.stages[1].streams)
        if not (self.stages[-1:] and self.stages[-1].reads_files and (len(self.stages) == 1 or unshuffle_pieces)):
            payload = _in_memory(payload)  # this pipeline needs a streamed unit all in memory
        if not self.stages:
            if len(payload) != out.size:
                raise CorruptError(f"stored payload has {len(payload)} bytes, {out.size} expected")
            out[:] = np.frombuffer(payload, dtype=np.uint8)
            return
        if unshuffle_pieces:
            # un-shuffle piece by piece as the entropy stage produces them: no full-size temporary
            shuffle, inner = self.stages[0], self.stages[1]
            if out.size % shuffle.element_size:
                raise CorruptError(f"shuffle output of {out.size} bytes is not whole "
                                   f"{shuffle.element_size}-byte elements")
            if isinstance(inner, Zstd) and out.size > _PIECE_BYTES:  # zstd runs a piece ahead in a thread
                pieces = prefetched(inner.iter_decode(payload, out.size, _PIECE_BYTES // 4, ring=3))
            else:
                pieces = inner.iter_decode(payload, out.size, _PIECE_BYTES)
            start = 0
            for piece in pieces:
                shuffle.scatter(piece, start, out)
                start += piece.size
            return
        data: memoryview = payload
        bound = intermediate_bound(out.size)
        for i in range(len(self.stages) - 1, -1, -1):
            st = self.stages[i]
            if i == 0:
                target = out
            else:
                size = st.decoded_size(data)
                if size > bound or size > limits.max_unit_bytes:
                    raise LimitExceededError(f"stage {st.codec_id} declares {size} bytes for a "
                                             f"{out.size}-byte tensor")
                target = np.empty(size, dtype=np.uint8)
            st.check_limits(data, target.size, limits)
            st.decode_into(data, target)
            data = memoryview(target)

    def iter_decode(self, payload: memoryview, size: int, piece_bytes: int) -> Iterator[np.ndarray] | None:
        """Pieces of the decoded bytes, front to back, for a one-stage pipeline that streams; else None."""
        if len(self.stages) == 1 and self.stages[0].streams:
            stage = self.stages[0]
            return stage.iter_decode(payload if stage.reads_files else _in_memory(payload), size, piece_bytes)
        return None

    def decode_mapped(self, payload: memoryview, size: int, word_size: int,
                      table_of: Callable[[np.ndarray], np.ndarray], dest: np.ndarray) -> bool:
        """For one stage that maps symbols through a table (rANS) on ``word_size``-byte words: decode
        ``table_of(alphabet)[symbol index]`` straight into ``dest`` and return True; else False."""
        stage = self.stages[0] if len(self.stages) == 1 else None
        if stage is None or not stage.maps_symbols or stage.word_size != word_size:  # type: ignore[attr-defined]
            return False
        stage.decode_mapped(_in_memory(payload), size, table_of, dest)
        return True

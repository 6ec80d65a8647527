"""What the two order-0 entropy stages (ANS, rANS) share: words as symbols of an alphabet stored with the data.

Params of both: ``word_size u8 | flags u8`` (bit 0: signed words; 1-7 reserved). Their framings start with
the word count and the alphabet (distinct values, ascending, as i32); a one-symbol alphabet needs no
coded data. Subclasses code the symbol indices.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import ClassVar

import numpy as np

from ..errors import ConfigError, CorruptError
from .stage import SIGNED_WORD_DTYPES, WORD_DTYPES, Stage

__all__ = ["SymbolStage", "alphabet"]

_PIECE_WORDS = 1 << 20  # words per piece when decoding a whole array


def alphabet(words: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(words, return_inverse=True, return_counts=True)``; by counting for 1- and 2-byte words
    (linear time instead of a sort, in blocks of ``_PIECE_WORDS``, the inverse as uint8 for 1-byte words and
    uint16 for 2-byte words: no temporary larger than a block)."""
    if words.dtype.itemsize > 2:
        return np.unique(words, return_inverse=True, return_counts=True)
    flat = words.reshape(-1)
    bias = -int(np.iinfo(words.dtype).min)        # value + bias indexes the counts (0 for unsigned words)
    as_index = flat.view(WORD_DTYPES[words.dtype.itemsize])   # two's complement bits: value + bias, wrapped
    counts = np.zeros(1 << (8 * words.dtype.itemsize), dtype=np.int64)
    for a in range(0, flat.size, _PIECE_WORDS):
        counts += np.bincount(_biased(as_index[a:a + _PIECE_WORDS], bias), minlength=counts.size)
    present = np.flatnonzero(counts)
    index_dtype = WORD_DTYPES[words.dtype.itemsize]
    lut = np.zeros(counts.size, dtype=index_dtype)
    lut[present] = np.arange(present.size, dtype=index_dtype)
    index = np.empty(flat.size, dtype=index_dtype)
    for a in range(0, flat.size, _PIECE_WORDS):
        index[a:a + _PIECE_WORDS] = lut[_biased(as_index[a:a + _PIECE_WORDS], bias)]
    return (present - bias).astype(words.dtype), index.reshape(words.shape), counts[present]


def _biased(bits: np.ndarray, bias: int) -> np.ndarray:
    """Unsigned word bits of signed values as ``value + bias`` (flip the sign bit); unsigned unchanged."""
    return bits ^ bits.dtype.type(bias) if bias else bits


class SymbolStage(Stage):
    """Base of the order-0 entropy stages over 1/2(/4)-byte words."""

    streams = True
    word_sizes: ClassVar[tuple[int, ...]]
    _PARAMS = struct.Struct("<BB")

    def __init__(self, word_size: int, signed: bool = True):
        if word_size not in self.word_sizes:
            raise ConfigError(f"{self.codec_id}: word_size must be one of {self.word_sizes}, got {word_size}")
        self.word_size, self.signed = word_size, bool(signed)

    def params(self) -> bytes:
        return self._PARAMS.pack(self.word_size, int(self.signed))

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "SymbolStage":
        if len(params) != 2 or params[0] not in cls.word_sizes or params[1] & 0xFE:
            raise CorruptError(f"{cls.codec_id} params invalid: {bytes(params).hex()}")
        return cls(params[0], bool(params[1] & 1))

    def get_config(self) -> dict:
        return {"id": self.codec_id, "word_size": self.word_size, "signed": self.signed}

    def _dtype(self) -> np.dtype:
        return SIGNED_WORD_DTYPES[self.word_size] if self.signed else WORD_DTYPES[self.word_size]

    def _symbols(self, values: np.ndarray) -> np.ndarray:
        """The alphabet as words; raises :class:`CorruptError` unless ascending and inside the word type."""
        info = np.iinfo(self._dtype())
        if (np.diff(values) <= 0).any():
            raise CorruptError(f"{self.codec_id} symbols not ascending")
        if values[0] < info.min or values[-1] > info.max:
            raise CorruptError(f"{self.codec_id} symbol values outside the word type")
        return values.astype(self._dtype())

    def _repeat(self, symbol: np.ndarray, n: int, step: int) -> Iterator[np.ndarray]:
        """Pieces of ``n`` copies of a one-symbol alphabet's word."""
        piece = np.full(min(step, n), symbol, dtype=self._dtype())
        for start in range(0, n, step):
            yield piece[:min(step, n - start)].view(np.uint8)

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        start = 0
        for piece in self.iter_decode(data, out.size, _PIECE_WORDS * self.word_size):
            out[start:start + piece.size] = piece
            start += piece.size

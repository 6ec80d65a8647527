"""Stack compression: remove the zero words of a word array, keep a map of where they were.

One level: a word map (1 bit per word, 1 = non-zero) followed by the non-zero words in order.
Two levels: a block map (1 bit per block of ``block_words`` words, 1 = the block has a non-zero
word), then a word map for each non-empty block only (``block_words`` bits each, in block order),
then the non-zero words. The two-level form pays off on very sparse tensors, where most blocks are
empty and their word-map bits are never written.

Maps use the little-endian bit order of :mod:`nncodec.coding.bitpack`. Map bits past the last word
and padding bits of the last map byte must be zero. Non-zero words are stored byte-aligned
(``pack_bits = 0``) or packed at ``pack_bits`` bits. Decoding writes zeros and words straight into
the destination buffer: this is the inline decompression of the format.
"""

from __future__ import annotations

import struct

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.constants import STAGE_ZERO_WORDS
from ..errors import ConfigError, CorruptError
from .bitpack import fits_in_bits, pack_bits, packed_size, unpack_bits
from .stage import SIGNED_WORD_DTYPES, WORD_DTYPES, Stage, register_stage

__all__ = ["ZeroWords"]

_COUNTS = struct.Struct("<QQ")  # n_words, n_nonzero


def _map_bytes(bits: np.ndarray) -> bytes:
    return np.packbits(bits, bitorder="little").tobytes()


def _read_map(r: ByteReader, nbits: int, field: str) -> np.ndarray:
    raw = np.frombuffer(r.take((nbits + 7) // 8, field), dtype=np.uint8)
    if nbits % 8 and raw[-1] >> (nbits % 8):
        raise CorruptError(f"padding bits of the {field} are not zero")
    return np.unpackbits(raw, bitorder="little", count=nbits).view(bool)


@register_stage
class ZeroWords(Stage):
    """Zero-word removal with a one- or two-level map (stack compression).

    Params: word_size u8 | levels u8 (1 or 2) | block_words u16 (two levels: 1..65535; one level: 0) |
    pack_bits u8 (0: byte-aligned words) | flags u8 (bit 0: signed packing; bits 1-7 reserved).
    Framing: n_words u64 | n_nonzero u64 | maps | non-zero words.
    """

    stage_id = STAGE_ZERO_WORDS
    codec_id = "zero_words"
    _PARAMS = struct.Struct("<BBHBB")

    def __init__(self, word_size: int, levels: int = 1, block_words: int = 0, pack_bits: int = 0,
                 signed: bool = False):
        if word_size not in WORD_DTYPES:
            raise ConfigError(f"zero_words: word_size must be 1, 2, 4 or 8, got {word_size}")
        if levels not in (1, 2) or (levels == 2) != (block_words > 0) or not 0 <= block_words <= 0xFFFF:
            raise ConfigError(f"zero_words: levels {levels} with block_words {block_words} invalid")
        if not 0 <= pack_bits <= 8 * word_size:
            raise ConfigError(f"zero_words: pack_bits {pack_bits} over the word size")
        self.word_size, self.levels, self.block_words = word_size, levels, block_words
        self.pack_bits, self.signed = pack_bits, bool(signed)

    def params(self) -> bytes:
        return self._PARAMS.pack(self.word_size, self.levels, self.block_words, self.pack_bits, int(self.signed))

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "ZeroWords":
        if len(params) != cls._PARAMS.size:
            raise CorruptError(f"zero_words params have {len(params)} bytes, {cls._PARAMS.size} expected")
        ws, levels, block, pack, flags = cls._PARAMS.unpack(params)
        if flags & 0xFE:
            raise CorruptError("zero_words reserved flag bits set")
        try:
            return cls(ws, levels, block, pack, bool(flags & 1))
        except ConfigError as exc:
            raise CorruptError(str(exc)) from None

    def get_config(self) -> dict:
        return {"id": self.codec_id, "word_size": self.word_size, "levels": self.levels,
                "block_words": self.block_words, "pack_bits": self.pack_bits, "signed": self.signed}

    def _word_dtype(self) -> np.dtype:
        return SIGNED_WORD_DTYPES[self.word_size] if self.signed else WORD_DTYPES[self.word_size]

    def encode(self, data: memoryview) -> bytes:
        words = np.frombuffer(data, dtype=self._word_dtype())
        nonzero_mask = words != 0
        nonzero = words[nonzero_mask]
        parts = [_COUNTS.pack(words.size, nonzero.size)]
        if self.levels == 1:
            parts.append(_map_bytes(nonzero_mask))
        else:
            b = self.block_words
            n_blocks = -(-words.size // b)
            padded = np.zeros(n_blocks * b, dtype=bool)
            padded[:words.size] = nonzero_mask
            blocks = padded.reshape(n_blocks, b)
            block_map = blocks.any(axis=1)
            parts.append(_map_bytes(block_map))
            parts.append(_map_bytes(blocks[block_map].reshape(-1)))
        if self.pack_bits:
            if not fits_in_bits(nonzero, self.pack_bits, self.signed):
                raise ConfigError(f"zero_words: non-zero words do not fit in {self.pack_bits} bits")
            parts.append(pack_bits(nonzero, self.pack_bits))
        else:
            parts.append(nonzero.tobytes())
        return b"".join(parts)

    def decoded_size(self, data: memoryview) -> int:
        n, _ = ByteReader(data, what="zero_words framing").unpack(_COUNTS, "word counts")
        return n * self.word_size

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        r = ByteReader(data, what="zero_words framing")
        n, n_nonzero = r.unpack(_COUNTS, "word counts")
        if n * self.word_size != out.size:
            raise CorruptError(f"zero_words declares {n} words, destination holds {out.size // self.word_size}")
        if n_nonzero > n:
            raise CorruptError(f"zero_words declares {n_nonzero} non-zero words out of {n}")
        dest = out.view(self._word_dtype())
        if self.levels == 1:
            word_map = _read_map(r, n, "word map")
        else:
            b = self.block_words
            n_blocks = -(-n // b)
            block_map = _read_map(r, n_blocks, "block map")
            n_full = int(np.count_nonzero(block_map))
            if n_full * b > 8 * r.remaining:
                raise CorruptError(f"block map marks {n_full} blocks, word maps are cut short", offset=r.offset)
            inner = _read_map(r, n_full * b, "word maps").reshape(n_full, b)
            if n_full and not inner.any(axis=1).all():
                raise CorruptError("a block marked non-empty has an all-zero word map")
            word_map = np.zeros(n_blocks * b, dtype=bool)
            word_map.reshape(n_blocks, b)[block_map] = inner
            if word_map[n:].any():
                raise CorruptError("word map marks words past the end of the tensor")
            word_map = word_map[:n]
        if int(np.count_nonzero(word_map)) != n_nonzero:
            raise CorruptError("word map population does not match the non-zero word count")
        if self.pack_bits:
            nz_bytes = r.take(packed_size(n_nonzero, self.pack_bits), "packed non-zero words")
            r.expect_end("non-zero words")
            nonzero = np.empty(n_nonzero, dtype=self._word_dtype())
            unpack_bits(nz_bytes, n_nonzero, self.pack_bits, self.signed, nonzero)
        else:
            nz_bytes = r.take(n_nonzero * self.word_size, "non-zero words")
            r.expect_end("non-zero words")
            nonzero = np.frombuffer(nz_bytes, dtype=self._word_dtype())
        dest.fill(0)
        dest[word_map] = nonzero

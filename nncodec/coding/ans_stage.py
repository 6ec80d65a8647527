"""Experimental entropy stage: rANS over the words' order-0 distribution (the ``constriction`` package).

Reaches the order-0 entropy of the symbols (zstd is up to 1.3x above it on low-entropy codes). The
probability model is stored with the data: the distinct word values that occur and their counts; the coder
is constriction 0.5's ``AnsCoder`` (32-bit words, 64-bit state) with ``Categorical(counts / n,
perfect=False)``. Because that model quantization is constriction's, this stage is marked experimental
in FORMAT.md until it is written out independently.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections.abc import Iterator

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.constants import STAGE_ANS
from ..errors import ConfigError, CorruptError, UnsupportedFeatureError
from .stage import register_stage
from .symbol_stage import SymbolStage, alphabet

__all__ = ["Ans", "MAX_ALPHABET", "ans_available"]

MAX_ALPHABET = 1 << 16
_HEAD = struct.Struct("<QI")  # n_words, alphabet size


def _constriction():  # noqa: ANN202
    try:
        import constriction
    except ImportError:
        raise UnsupportedFeatureError("this stream uses the ANS stage: pip install constriction") from None
    return constriction


@functools.cache
def ans_available() -> bool:
    """Whether ``constriction`` is installed (found, not imported)."""
    return importlib.util.find_spec("constriction") is not None


@register_stage
class Ans(SymbolStage):
    """Params: word_size u8 (1, 2, 4) | flags u8 (bit 0: signed words; 1-7 reserved).
    Framing: n_words u64 | K u32 (1..65536, 0 when n_words = 0) | K x i32 symbol values, ascending |
    K x u32 counts (each >= 1, summing to n_words) | compressed data as u32 words (none when K = 1)."""

    stage_id = STAGE_ANS
    codec_id = "ans"
    word_sizes = (1, 2, 4)
    entropy = True
    preference = 1  # chosen only where stage 6's numba is missing

    @classmethod
    def available(cls) -> bool:
        return ans_available()

    def encode(self, data: memoryview) -> bytes:
        c = _constriction()
        words = np.frombuffer(data, dtype=self._dtype())
        if words.size == 0:
            return _HEAD.pack(0, 0)
        values, index, counts = alphabet(words)
        if values.size > MAX_ALPHABET:
            raise ConfigError(f"ans: {values.size} distinct words, at most {MAX_ALPHABET}")
        head = _HEAD.pack(words.size, values.size) + values.astype("<i4").tobytes() + counts.astype("<u4").tobytes()
        if values.size == 1:
            return head  # one symbol: the alphabet says it all
        try:
            model = c.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            coder = c.stream.stack.AnsCoder()
            coder.encode_reverse(index.astype(np.int32), model)
        except Exception as exc:  # constriction's own errors
            raise ConfigError(f"ans: cannot code these words: {exc}") from None
        return head + coder.get_compressed().astype("<u4").tobytes()

    def decoded_size(self, data: memoryview) -> int:
        n, _ = ByteReader(data, what="ans framing").unpack(_HEAD, "ans header")
        return n * self.word_size

    def iter_decode(self, data: memoryview, size: int, piece_bytes: int) -> Iterator[np.ndarray]:
        r = ByteReader(data, what="ans framing")
        n, k = r.unpack(_HEAD, "ans header")
        if n * self.word_size != size:
            raise CorruptError(f"ans declares {n} words, destination holds {size // self.word_size}")
        if n == 0:
            if k:
                raise CorruptError("ans: an alphabet for no words")
            r.expect_end("ans framing")
            return
        if not 1 <= k <= MAX_ALPHABET:
            raise CorruptError(f"ans alphabet of {k} symbols")
        values = np.frombuffer(r.take(4 * k, "ans symbols"), dtype="<i4")
        counts = np.frombuffer(r.take(4 * k, "ans counts"), dtype="<u4")
        if (counts == 0).any() or int(counts.sum(dtype=np.uint64)) != n:
            raise CorruptError("ans model invalid: zero counts, or counts not summing to the word count")
        symbols = self._symbols(values)
        rest = r.rest()
        step = max(1, piece_bytes // self.word_size)
        if k == 1:
            if len(rest):
                raise CorruptError("ans: coded data after a one-symbol alphabet")
            yield from self._repeat(symbols[0], n, step)
            return
        if len(rest) % 4:
            raise CorruptError("ans compressed data is not whole 32-bit words")
        c = _constriction()
        try:
            model = c.stream.model.Categorical(counts.astype(np.float64), perfect=False)
            coder = c.stream.stack.AnsCoder(np.frombuffer(rest, dtype=np.uint32))  # it copies them
        except Exception as exc:  # constriction reports bad input with its own exception types
            raise CorruptError(f"ans data corrupt: {exc}") from None
        for start in range(0, n, step):
            m = min(step, n - start)
            try:
                index = coder.decode(model, m)
            except Exception as exc:
                raise CorruptError(f"ans data corrupt: {exc}") from None
            yield symbols[index].view(np.uint8)
        if coder.num_words():  # the state must be back at 0 with every word read (FORMAT.md §4)
            raise CorruptError("ans data holds more than its words")

"""Experimental entropy stage: rANS over the words' order-0 distribution (the ``constriction`` package).

Reaches the order-0 entropy of the symbols (zstd is up to 1.3x above it on low-entropy codes). The
probability model is stored with the data: the distinct word values that occur and their counts; the coder
is constriction 0.5's ``AnsCoder`` (32-bit words, 64-bit state) with ``Categorical(counts / n,
perfect=False)``. Because that model quantization is constriction's, this stage is marked experimental
in FORMAT.md until it is written out independently.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.constants import STAGE_ANS
from ..errors import ConfigError, CorruptError, UnsupportedFeatureError
from .alphabet import alphabet
from .stage import SIGNED_WORD_DTYPES, WORD_DTYPES, Stage, register_stage

__all__ = ["Ans", "MAX_ALPHABET", "ans_available"]

MAX_ALPHABET = 1 << 16
_CHUNK = 1 << 20
_HEAD = struct.Struct("<QI")  # n_words, alphabet size


def _constriction():  # noqa: ANN202
    try:
        import constriction
    except ImportError:
        raise UnsupportedFeatureError("this stream uses the ANS stage: pip install constriction") from None
    return constriction


def ans_available() -> bool:
    try:
        import constriction  # noqa: F401
    except ImportError:
        return False
    return True


@register_stage
class Ans(Stage):
    """Params: word_size u8 (1, 2, 4) | flags u8 (bit 0: signed words; 1-7 reserved).
    Framing: n_words u64 | K u32 (1..65536, 0 when n_words = 0) | K x i32 symbol values, ascending |
    K x u32 counts (each >= 1, summing to n_words) | compressed data as u32 words (none when K = 1)."""

    stage_id = STAGE_ANS
    codec_id = "ans"
    streams = True
    _PARAMS = struct.Struct("<BB")

    def __init__(self, word_size: int, signed: bool = True):
        if word_size not in (1, 2, 4):
            raise ConfigError(f"ans: word_size must be 1, 2 or 4, got {word_size}")
        self.word_size, self.signed = word_size, bool(signed)

    def params(self) -> bytes:
        return self._PARAMS.pack(self.word_size, int(self.signed))

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "Ans":
        if len(params) != 2 or params[0] not in (1, 2, 4) or params[1] & 0xFE:
            raise CorruptError(f"ans params invalid: {bytes(params).hex()}")
        return cls(params[0], bool(params[1] & 1))

    def get_config(self) -> dict:
        return {"id": self.codec_id, "word_size": self.word_size, "signed": self.signed}

    def _dtype(self) -> np.dtype:
        return SIGNED_WORD_DTYPES[self.word_size] if self.signed else WORD_DTYPES[self.word_size]

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

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        start = 0
        for piece in self.iter_decode(data, out.size, _CHUNK * self.word_size):
            out[start:start + piece.size] = piece
            start += piece.size

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
        if (counts == 0).any() or int(counts.sum(dtype=np.uint64)) != n or (np.diff(values) <= 0).any():
            raise CorruptError("ans model invalid: zero counts, counts not summing to the word count, or "
                               "symbols not ascending")
        info = np.iinfo(self._dtype())
        if values[0] < info.min or values[-1] > info.max:
            raise CorruptError("ans symbol values outside the word type")
        rest = r.rest()
        step = max(1, piece_bytes // self.word_size)
        symbols = values.astype(self._dtype())
        if k == 1:
            if len(rest):
                raise CorruptError("ans: coded data after a one-symbol alphabet")
            piece = np.full(min(step, n), values[0], dtype=self._dtype())
            for start in range(0, n, step):
                yield piece[:min(step, n - start)].view(np.uint8)
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
        if not coder.is_empty():
            raise CorruptError("ans data holds more than its words")

"""Entropy stage 6: static rANS over the words' order-0 distribution, fully specified by its framing.

The model travels with the data: the ``K`` distinct word values and their frequencies, which sum to
``2**P``; the decoder needs nothing else (how the encoder rounds counts to frequencies is its own
business). The coder is rANS with four interleaved 32-bit states and 16-bit renormalization words
(word ``i`` uses state ``i % 4``), as in FORMAT.md. The loops run compiled (numba, without the GIL);
they return error codes and the Python side raises :class:`CorruptError`, so hostile input never crashes.

Reaches the order-0 entropy to within the frequency rounding (``P = 16``; under 1 % in the tests) and
decodes faster than the experimental ANS stage 5, whose coder holds the GIL.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.constants import STAGE_RANS
from ..errors import ConfigError, CorruptError, UnsupportedFeatureError
from .stage import WORD_DTYPES, register_stage
from .symbol_stage import SymbolStage, alphabet

__all__ = ["Rans", "quantize_frequencies", "rans_available", "PROB_BITS"]

PROB_BITS = 16                # the encoder's P (at most 2**(P-1) symbols); the decoder accepts 1..16
LANES = 4
STATE_LOW = 1 << 16           # states live in [2**16, 2**32); the encoder starts every lane here
_HEAD = struct.Struct("<QBI")  # n_words, P, K


@functools.cache
def rans_available() -> bool:
    """Whether ``numba`` is installed (found, not imported: its import loads LLVM)."""
    return importlib.util.find_spec("numba") is not None


def _kernels():  # noqa: ANN202
    try:
        from . import rans_kernels
    except ImportError:
        raise UnsupportedFeatureError("this stream uses the rANS stage: pip install numba") from None
    return rans_kernels


def quantize_frequencies(counts: np.ndarray, p: int = PROB_BITS) -> np.ndarray:
    """Round symbol counts (each >= 1) to frequencies >= 1 summing to ``2**p``: proportional, with the
    rounding remainder given to (or taken from) the most frequent symbols."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size > 1 << (p - 1):
        raise ConfigError(f"rans: {counts.size} symbols, at most {1 << (p - 1)} at {p} bits")
    total = 1 << p
    freq = np.maximum(1, np.floor(counts * (total / counts.sum()) + 0.5)).astype(np.int64)
    order = np.argsort(-counts, kind="stable")
    diff = total - int(freq.sum())
    while diff:
        if diff > 0:
            take = order[:diff]
            freq[take] += 1
            diff -= take.size
        else:
            room = order[freq[order] > 1][:-diff]
            freq[room] -= 1
            diff += room.size
    return freq


@register_stage
class Rans(SymbolStage):
    """Params: word_size u8 (1, 2) | flags u8 (bit 0: signed words; 1-7 reserved).
    Framing: n_words u64 | P u8 (1..16) | K u32 (1..2**(P-1), 0 when n_words = 0) | K x i32 symbol values,
    ascending | K x u16 (frequency - 1), frequencies summing to 2**P | when K > 1: 4 x u32 initial decoder
    states (each in [2**16, 2**32)) and the 16-bit words, to the end."""

    stage_id = STAGE_RANS
    codec_id = "rans"
    word_sizes = (1, 2)
    entropy = True
    maps_symbols = True
    preference = 2  # fully specified, fast (numba): the default entropy coder

    @classmethod
    def available(cls) -> bool:
        return rans_available()

    def encode(self, data: memoryview) -> bytes:
        words = np.frombuffer(data, dtype=self._dtype())
        if words.size == 0:
            return _HEAD.pack(0, PROB_BITS, 0)
        values, index, counts = alphabet(words)
        freq = quantize_frequencies(counts)
        head = (_HEAD.pack(words.size, PROB_BITS, values.size) + values.astype("<i4").tobytes()
                + (freq - 1).astype("<u2").tobytes())
        if values.size == 1:
            return head
        cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint32)
        states = np.full(LANES, STATE_LOW, dtype=np.uint64)
        out = np.empty(words.size, dtype=np.uint16)
        n_out = _kernels().rans_encode(index.astype(np.uint16), freq.astype(np.uint32), cum, PROB_BITS, out, states)
        return head + states.astype("<u4").tobytes() + out[:n_out][::-1].astype("<u2").tobytes()

    def decoded_size(self, data: memoryview) -> int:
        n, _, _ = ByteReader(data, what="rans framing").unpack(_HEAD, "rans header")
        return n * self.word_size

    def _parse(self, data: memoryview, size: int) -> "_Parsed":
        r = ByteReader(data, what="rans framing")
        n, p, k = r.unpack(_HEAD, "rans header")
        if n * self.word_size != size:
            raise CorruptError(f"rans declares {n} words, destination holds {size // self.word_size}")
        if not 1 <= p <= 16:
            raise CorruptError(f"rans probability precision of {p} bits (1..16)")
        if n == 0:
            if k:
                raise CorruptError("rans: an alphabet for no words")
            r.expect_end("rans framing")
            return _Parsed(0, p, np.zeros(0, self._dtype()), None, None, None)
        if not 1 <= k <= 1 << (p - 1):
            raise CorruptError(f"rans alphabet of {k} symbols at {p} bits")
        values = np.frombuffer(r.take(4 * k, "rans symbols"), dtype="<i4")
        freq = np.frombuffer(r.take(2 * k, "rans frequencies"), dtype="<u2").astype(np.int64) + 1
        if int(freq.sum()) != 1 << p:
            raise CorruptError(f"rans model invalid: frequencies sum to {int(freq.sum())}, not {1 << p}")
        symbols = self._symbols(values)
        if k == 1:
            if r.remaining:
                raise CorruptError("rans: coded data after a one-symbol alphabet")
            return _Parsed(n, p, symbols, None, None, None)
        states = np.frombuffer(r.take(4 * LANES, "rans states"), dtype="<u4").astype(np.uint64)
        if (states < STATE_LOW).any():
            raise CorruptError("rans initial state below 2**16")
        rest = r.rest()
        if len(rest) % 2:
            raise CorruptError("rans words are not whole 16-bit words")
        return _Parsed(n, p, symbols, freq, states, np.frombuffer(rest, dtype="<u2"))

    def _decoded(self, parsed: "_Parsed", table: np.ndarray, step: int,
                 dest: np.ndarray | None = None) -> Iterator[np.ndarray]:
        """Decode every word as ``table[symbol index]``, ``step`` words at a time: into consecutive slices of
        ``dest`` when given, else into one reused buffer; yield each slice once filled."""
        decode = _kernels().rans_decode
        freq = parsed.freq
        lut = np.repeat(np.arange(freq.size, dtype=np.uint16), freq)
        cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint32)
        freq32, states, ptr = freq.astype(np.uint32), parsed.states.copy(), 0
        buf = np.empty(min(step, parsed.n), dtype=table.dtype) if dest is None else None
        for start in range(0, parsed.n, step):
            m = min(step, parsed.n - start)
            out = dest[start:start + m] if dest is not None else buf[:m]
            ptr = decode(parsed.words, ptr, states, lut, freq32, cum, parsed.p, start, table, out)
            if ptr < 0:
                raise CorruptError("rans words run out before the last symbol")
            yield out
        if ptr != parsed.words.size or (states != STATE_LOW).any():
            raise CorruptError("rans data does not end where the encoder started: corrupt or extra words")

    def iter_decode(self, data: memoryview, size: int, piece_bytes: int) -> Iterator[np.ndarray]:
        parsed = self._parse(data, size)
        step = max(1, piece_bytes // self.word_size)
        if parsed.words is None:
            if parsed.n:
                yield from self._repeat(parsed.symbols[0], parsed.n, step)
            return
        for out in self._decoded(parsed, parsed.symbols, step):
            yield out.view(np.uint8)

    def decode_mapped(self, data: memoryview, size: int, table_of: Callable[[np.ndarray], np.ndarray],
                      dest: np.ndarray) -> None:
        """Decode straight into ``dest`` (1-D, ``size // word_size`` elements) the values
        ``table_of(alphabet)[symbol index]``: e.g. dequantized values, with no code array in between.
        ``table_of`` gets the alphabet as words and returns one ``dest``-dtype value per symbol."""
        parsed = self._parse(data, size)
        if parsed.n == 0:
            return
        table = np.ascontiguousarray(table_of(parsed.symbols), dtype=dest.dtype)
        if parsed.words is None:
            dest[:] = table[0]
            return
        as_bits = WORD_DTYPES[dest.dtype.itemsize]  # the kernel only copies values: any dtype as its bits
        for _ in self._decoded(parsed, table.view(as_bits), parsed.n, dest.view(as_bits)):
            pass


class _Parsed(NamedTuple):
    n: int                          #: words
    p: int                          #: probability bits
    symbols: np.ndarray             #: the alphabet, as words
    freq: np.ndarray | None         #: None when no coded data follows (n = 0 or one symbol)
    states: np.ndarray | None
    words: np.ndarray | None

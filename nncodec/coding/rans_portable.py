"""Portable kernels of the entropy stages 5 and 6 (Python integers over numpy buffers).

The same contract and output as the compiled kernels in ``_rans_native.c``, for installs where no C
compiler was available: correct, but about 1 M symbols/s instead of hundreds of millions. The loops never
raise on bad data: running out of words returns -1 and the caller raises :class:`CorruptError`.
"""

from __future__ import annotations

import bisect

import numpy as np

__all__ = ["encode", "decode", "ans_decode"]


def encode(index: np.ndarray, freq: np.ndarray, cum: np.ndarray, p: int, words: np.ndarray,
           states: np.ndarray, index_size: int = 2) -> int:
    """Code the symbol indices back to front (symbol ``i`` with state ``i % 4``), writing renormalization
    words to ``words`` in emission order; returns how many were written."""
    fr, cu, st = freq.tolist(), cum.tolist(), [int(s) for s in states]
    bound = 1 << (32 - p)
    out: list[int] = []
    ix = index.tolist()
    for i in range(len(ix) - 1, -1, -1):
        k, lane = ix[i], i & 3
        f, x = fr[k], st[lane]
        if x >= bound * f:
            out.append(x & 0xFFFF)
            x >>= 16
        st[lane] = ((x // f) << p) + (x % f) + cu[k]
    words[:len(out)] = out
    states[:] = st
    return len(out)


def decode(words: np.ndarray, ptr: int, states: np.ndarray, lut: np.ndarray, freq: np.ndarray,
           cum: np.ndarray, p: int, first: int, symbols: np.ndarray, out: np.ndarray) -> int:
    """Decode ``out.size`` stage-6 symbols (values from ``symbols``), the first being symbol number
    ``first``, reading u16 words from ``ptr`` on; returns the new pointer, or -1 when they run out."""
    mask, n_words = (1 << p) - 1, words.size
    lt, fr, cu, st = lut.tolist(), freq.tolist(), cum.tolist(), [int(s) for s in states]
    w = words[ptr:].tolist()
    base, pos = ptr, 0
    index = np.empty(out.size, dtype=np.intp)
    for j in range(out.size):
        lane = (first + j) & 3
        x = st[lane]
        slot = x & mask
        k = lt[slot]
        x = fr[k] * (x >> p) + slot - cu[k]
        if x < 65536:
            if base + pos >= n_words:
                return -1
            x = (x << 16) | w[pos]
            pos += 1
        st[lane] = x
        index[j] = k
    out[:] = symbols[index]
    states[:] = st
    return base + pos


def ans_decode(words: np.ndarray, ptr: int, state: np.ndarray, cdf: np.ndarray, bucket: np.ndarray,
               symbols: np.ndarray, out: np.ndarray) -> int:
    """Decode ``out.size`` stage-5 symbols, reading u32 words from ``words[ptr - 1]`` down; returns the
    new pointer (see ``ans_stage.py`` for the coder)."""
    cd = cdf.tolist()
    x, w = int(state[0]), words[:ptr].tolist()
    index = np.empty(out.size, dtype=np.intp)
    for j in range(out.size):
        q = x & 0xFFFFFF
        k = bisect.bisect_right(cd, q) - 1
        left = cd[k]
        x = (x >> 24) * (cd[k + 1] - left) + (q - left)
        if x < 1 << 32 and ptr > 0:
            ptr -= 1
            x = (x << 32) | w[ptr]
        index[j] = k
    out[:] = symbols[index]
    state[0] = x
    return ptr

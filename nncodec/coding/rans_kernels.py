"""The rANS loops of stage 6, compiled by numba (cached on disk, run without the GIL).

Imported only when a stream uses the stage, so ``import nncodec`` stays light. The loops never raise:
running out of words returns -1 and the caller turns that into a :class:`CorruptError`.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def rans_encode(index, freq, cum, p, words, states):  # noqa: ANN001, ANN201
    """Code the symbol indices ``index`` back to front (symbol ``i`` with state ``i % 4``), writing
    renormalization words to ``words`` in emission order; returns how many were written."""
    n_out = 0
    for i in range(index.size - 1, -1, -1):
        lane = i & 3
        k = index[i]
        f = np.uint64(freq[k])
        x = states[lane]
        if x >= (np.uint64(1) << np.uint64(32 - p)) * f:
            words[n_out] = np.uint16(x & np.uint64(0xFFFF))
            n_out += 1
            x >>= np.uint64(16)
        states[lane] = ((x // f) << np.uint64(p)) + (x % f) + np.uint64(cum[k])
    return n_out


@numba.njit(cache=True, nogil=True)
def rans_decode(words, ptr, states, lut, freq, cum, p, first, symbols, out):  # noqa: ANN001, ANN201
    """Decode ``out.size`` words (values from ``symbols``), the first being word number ``first`` of the
    stream, reading u16 words from ``ptr`` on; returns the new word pointer, or -1 when they run out."""
    mask = np.uint64((1 << p) - 1)
    n_words = words.size
    for j in range(out.size):
        lane = (first + j) & 3
        x = states[lane]
        slot = x & mask
        k = lut[slot]
        x = np.uint64(freq[k]) * (x >> np.uint64(p)) + slot - np.uint64(cum[k])
        if x < np.uint64(65536):
            if ptr >= n_words:
                return -1
            x = (x << np.uint64(16)) | np.uint64(words[ptr])
            ptr += 1
        states[lane] = x
        out[j] = symbols[k]
    return ptr

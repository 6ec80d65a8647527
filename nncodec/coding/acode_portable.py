"""Portable kernels of the adaptive binary arithmetic coding stage 8 (FORMAT.md §16), in pure Python.

The same contract and output as ``acode_encode`` / ``acode_decode`` in ``_rans_native.c``, for installs
without a C compiler: correct, about 1 M words/s on pruned-like int8 codes (mostly zero). Nothing here raises on bad data: decoding returns a
status code and where it stopped, and the stage turns that into a :class:`~nncodec.errors.CorruptError`.

Segments are rows ``(type, set, offset, count)`` of an int64 array (checked by the stage beforehand).
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode", "decode", "range_code", "OK", "ERR_END", "ERR_FIRST_BYTE", "ERR_RANGE", "ERR_PREFIX", "ERR_TAIL",
           "TYPE_I8", "TYPE_U8", "TYPE_I16", "TYPE_U16", "TYPE_TREE", "TYPE_BYPASS", "TYPE_WIDTH", "TYPE_RANGE",
           "SET_PROBS", "MAX_SETS", "MAX_K", "PREFIX_CAP"]

TYPE_I8, TYPE_U8, TYPE_I16, TYPE_U16, TYPE_TREE, TYPE_BYPASS = range(6)
#: bytes per word of each segment type
TYPE_WIDTH = {TYPE_I8: 1, TYPE_U8: 1, TYPE_I16: 2, TYPE_U16: 2, TYPE_TREE: 1, TYPE_BYPASS: 1}
#: the values an integer segment's words may take
TYPE_RANGE = {TYPE_I8: (-128, 127), TYPE_U8: (0, 255), TYPE_I16: (-32768, 32767), TYPE_U16: (0, 65535)}
#: numpy dtype of each integer segment type's little-endian words
_WORD_DTYPES = {TYPE_I8: "<i1", TYPE_U8: "<u1", TYPE_I16: "<i2", TYPE_U16: "<u2"}
MAX_SETS = 16
MAX_K = 15
PREFIX_CAP = 18  #: longest Exp-Golomb prefix (one bits) a decoder accepts
# a set's probabilities: sig 3 | sign 3 | gt MAX_K | Exp-Golomb prefix PREFIX_CAP + 1 | bit tree 255
_SIG, _SIGN, _GT, _PRE = 0, 3, 6, 6 + MAX_K
_TREE = _PRE + PREFIX_CAP + 1
SET_PROBS = _TREE + 255
_TOP = 1 << 24
_MASK = 0xFFFFFFFF

OK, ERR_END, ERR_FIRST_BYTE, ERR_RANGE, ERR_PREFIX, ERR_TAIL = 0, 1, 2, 3, 4, 5


def encode(data: np.ndarray, segs: np.ndarray, shift: int, k: int) -> bytes:
    """The range coder's bytes for ``data`` (uint8, the words of the segments back to back); empty when the
    segments hold no words."""
    raw = data.tobytes()
    if not raw:
        return b""
    bits: list[tuple[int, int]] = []  # (context, bit), context -1: bypass

    pos = 0
    for typ, cset, offset, count in segs.tolist():
        base = cset * SET_PROBS
        width = TYPE_WIDTH[typ]
        seg = raw[pos:pos + width * count]
        pos += width * count
        if typ == TYPE_TREE:
            for b in seg:
                m = 1
                for i in range(7, -1, -1):
                    bit = (b >> i) & 1
                    bits.append((base + _TREE + m - 1, bit))
                    m = 2 * m + bit
            continue
        if typ == TYPE_BYPASS:
            for b in seg:
                for i in range(7, -1, -1):
                    bits.append((-1, (b >> i) & 1))
            continue
        dt = _WORD_DTYPES[typ]
        prev1 = prev2 = 0
        for w in np.frombuffer(seg, dtype=dt).tolist():
            v = w - offset
            bits.append((base + _SIG + (prev1 != 0) + (prev2 != 0), int(v != 0)))
            if v:
                bits.append((base + _SIGN + (0 if prev1 == 0 else 1 if prev1 > 0 else 2), int(v < 0)))
                a = abs(v)
                j = 1
                while j <= k:
                    bits.append((base + _GT + j - 1, int(a > j)))
                    if a <= j:
                        break
                    j += 1
                if j > k:
                    r = a - k - 1
                    n = (r + 1).bit_length() - 1
                    bits.extend((base + _PRE + i, 1) for i in range(n))
                    bits.append((base + _PRE + n, 0))
                    s = r + 1 - (1 << n)
                    bits.extend((-1, (s >> i) & 1) for i in range(n - 1, -1, -1))
            prev2, prev1 = prev1, v

    return range_code(bits, shift)


def range_code(bits: "list[tuple[int, int]]", shift: int) -> bytes:
    """The range coder's bytes for ``(context, bit)`` pairs (context: index into the probabilities of all
    sets, set ``s``'s first at ``s * SET_PROBS``; -1: a bypass bit), all probabilities starting at 1024."""
    probs = [1024] * (SET_PROBS * MAX_SETS)
    out = bytearray()
    low, rng, cache, cache_size = 0, _MASK, 0, 1
    for ctx, bit in bits:
        if ctx < 0:
            rng >>= 1
            if bit:
                low += rng
        else:
            p = probs[ctx]
            bound = (rng >> 11) * p
            if bit:
                low += bound
                rng -= bound
                probs[ctx] = p - (p >> shift)
            else:
                rng = bound
                probs[ctx] = p + ((2048 - p) >> shift)
        while rng < _TOP:
            rng <<= 8
            low, cache, cache_size = _shift_low(low, cache, cache_size, out)
    for _ in range(5):
        low, cache, cache_size = _shift_low(low, cache, cache_size, out)
    return bytes(out)


def _shift_low(low: int, cache: int, cache_size: int, out: bytearray) -> tuple[int, int, int]:
    """LZMA's ShiftLow: emit the settled top byte of ``low`` (with carry into the pending 0xFF run)."""
    if (low & _MASK) < 0xFF000000 or low > _MASK:
        carry = low >> 32
        temp = cache
        while True:
            out.append((temp + carry) & 0xFF)
            temp = 0xFF
            cache_size -= 1
            if not cache_size:
                break
        cache = (low >> 24) & 0xFF
    return (low & 0x00FFFFFF) << 8, cache, cache_size + 1


class _Stop(Exception):
    """Decoding stopped (status in ``args[0]``)."""


def decode(coded: "bytes | memoryview", segs: np.ndarray, shift: int, k: int,
           out: np.ndarray) -> tuple[int, int, int]:
    """Decode the segments' words into ``out`` (uint8, exactly their bytes). Returns ``(status, word, byte)``:
    the status (``OK`` or an ``ERR_*``), the index of the word being decoded (over all segments) and the
    offset in ``coded`` of the next byte the coder would read."""
    buf = bytes(coded)
    n = len(buf)
    total = int(segs[:, 3].sum()) if segs.size else 0
    if total == 0:
        return (OK, 0, 0) if n == 0 else (ERR_TAIL, 0, 0)
    if n < 5:
        return ERR_END, 0, n
    if buf[0] != 0:
        return ERR_FIRST_BYTE, 0, 0
    probs = [1024] * (SET_PROBS * MAX_SETS)
    state = [int.from_bytes(buf[1:5], "big"), _MASK, 5]  # code, range, position

    def normalize(code: int, rng: int, pos: int) -> None:
        while rng < _TOP:  # repeated at shift 3, where a bit may leave range below 2^16
            if pos >= n:
                raise _Stop(ERR_END)
            rng <<= 8
            code = ((code << 8) | buf[pos]) & _MASK
            pos += 1
        state[0], state[1], state[2] = code, rng, pos

    def bit(ctx: int) -> int:
        code, rng, pos = state
        p = probs[ctx]
        bound = (rng >> 11) * p
        if code < bound:
            rng = bound
            probs[ctx] = p + ((2048 - p) >> shift)
            b = 0
        else:
            code -= bound
            rng -= bound
            probs[ctx] = p - (p >> shift)
            b = 1
        if rng < _TOP:
            normalize(code, rng, pos)
        else:
            state[0], state[1] = code, rng
        return b

    def direct() -> int:
        code, rng, pos = state
        rng >>= 1
        b = 0
        if code >= rng:
            code -= rng
            b = 1
        if rng < _TOP:
            normalize(code, rng, pos)
        else:
            state[0], state[1] = code, rng
        return b

    word = 0
    at = 0
    try:
        for typ, cset, offset, count in segs.tolist():
            base = cset * SET_PROBS
            if typ == TYPE_TREE or typ == TYPE_BYPASS:
                for _ in range(count):
                    m = 1
                    if typ == TYPE_TREE:
                        for _ in range(8):
                            m = 2 * m + bit(base + _TREE + m - 1)
                    else:
                        for _ in range(8):
                            m = 2 * m + direct()
                    out[at] = m - 256
                    at += 1
                    word += 1
                continue
            lo, hi = TYPE_RANGE[typ]
            width = TYPE_WIDTH[typ]
            vals = []
            prev1 = prev2 = 0
            for _ in range(count):
                v = 0
                if bit(base + _SIG + (prev1 != 0) + (prev2 != 0)):
                    neg = bit(base + _SIGN + (0 if prev1 == 0 else 1 if prev1 > 0 else 2))
                    a = 1
                    while a <= k and bit(base + _GT + a - 1):
                        a += 1
                    if a > k:
                        m = 0
                        while bit(base + _PRE + m):
                            m += 1
                            if m > PREFIX_CAP:
                                raise _Stop(ERR_PREFIX)
                        s = 0
                        for _ in range(m):
                            s = 2 * s + direct()
                        a = k + (1 << m) + s
                    v = -a if neg else a
                w = v + offset
                if not lo <= w <= hi:
                    raise _Stop(ERR_RANGE)
                vals.append(w & 0xFFFF)
                prev2, prev1 = prev1, v
                word += 1
            if count:
                arr = np.array(vals, dtype="<u2")
                out[at:at + width * count] = (arr.astype(np.uint8) if width == 1 else arr.view(np.uint8))
                at += width * count
    except _Stop as stop:
        return stop.args[0], word, state[2]
    if state[2] != n or state[0] != 0:
        return ERR_TAIL, word, state[2]
    return OK, word, state[2]

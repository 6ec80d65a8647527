"""Dependent quantization stage (format 1.5, FORMAT.md §15): transmitted codes <-> reconstruction levels.

Dependent (trellis-coded) quantization, as in VVC and NNC, uses two scalar quantizers on a grid of step
``Δ``: Q0 reconstructs the even multiples of ``Δ`` (level ``2k``), Q1 the odd multiples and zero (level
``2k - sign(k)``). Which one applies to a word is set by a 4-state machine driven by the parity of the
previous code: states 0 and 1 use Q0, states 2 and 3 use Q1, and after code ``k`` in state ``s`` the next
state is ``NEXT_STATE[s][k & 1]``. The machine starts in state 0 at the first word of every chain of
``chain`` consecutive words (the last chain may be shorter).

The stage sits first in a tensor's pipeline: encoding turns the levels the quantizer chose (the words of the
uniform descriptor, ``value = level * Δ``) into the transmitted codes ``k``, which the entropy stage after it
codes; decoding turns codes back into levels. Levels that the state machine cannot produce are a
:class:`ConfigError` on encode. The output has the size of the input (no framing).

Decoding needs no sequential loop: the quantizer of a word is the XOR of the parities of every second
code before it in its chain (:func:`quantizer_of`), a cumulative XOR over the whole tensor at once.
"""

from __future__ import annotations

import functools
import logging
import struct
from typing import Any

import numpy as np

from ..bitstream.constants import FORMAT_MINOR_DEPENDENT, STAGE_DEPENDENT
from ..errors import ConfigError, CorruptError
from .kernels import load_extension
from .stage import SIGNED_WORD_DTYPES, Stage, register_stage

log = logging.getLogger(__name__)

__all__ = ["Dependent", "NEXT_STATE", "MAX_CHAIN", "levels_of", "codes_of", "quantizer_of", "reconstruct",
           "chain_rows"]

#: next state after a code of parity p (``k & 1``) in state s: NEXT_STATE[s][p]
NEXT_STATE = np.array([[0, 2], [2, 0], [1, 3], [3, 1]], dtype=np.int8)
#: the longest chain a stream may declare (bounds the decoder's sequential steps)
MAX_CHAIN = 65536
_PARAMS = struct.Struct("<BBI")  # word_size, states (4), chain
_BLOCK_WORDS = 1 << 20  # words decoded at a time (the temporaries of levels_of are about 20 bytes per word)


def chain_rows(values: np.ndarray, chain: int, dtype: "type[np.generic]") -> np.ndarray:
    """``values`` (1-D) as ``(chains, chain)`` of ``dtype``: row i holds chain i, the last one zero padded."""
    rows = -(-values.size // chain)
    padded = np.zeros(rows * chain, dtype=dtype)
    padded[:values.size] = values
    return padded.reshape(rows, chain)


def reconstruct(k: np.ndarray, q1: "bool | np.ndarray") -> np.ndarray:
    """The level (in steps ``Δ``) of code ``k`` on quantizer Q1 where ``q1`` (1/True), else Q0."""
    return 2 * k - q1 * np.sign(k)


def quantizer_of(codes: np.ndarray, chain: int) -> np.ndarray:
    """Which quantizer (0: Q0, 1: Q1) reconstructs each of ``codes`` (1-D ints), chains of ``chain``.

    The state machine is ``s = 2a + b`` with ``a`` the quantizer bit: ``a' = b XOR parity``, ``b' = a``;
    so ``a_j = a_(j-2) XOR parity_(j-1)``: the XOR of the parities at positions ``j-1, j-3, ...`` of the
    chain. Computed for all words at once (cumulative XOR over each chain's even and odd positions)."""
    parity = chain_rows(codes & 1, chain, np.uint8)
    acc = np.empty_like(parity)
    acc[:, 0::2] = np.bitwise_xor.accumulate(parity[:, 0::2], axis=1)
    acc[:, 1::2] = np.bitwise_xor.accumulate(parity[:, 1::2], axis=1)
    q = np.zeros_like(parity)
    q[:, 1:] = acc[:, :-1]
    return q.reshape(-1)[:codes.size]


def levels_of(codes: np.ndarray, chain: int) -> np.ndarray:
    """The reconstruction levels (in steps ``Δ``) of transmitted ``codes`` (1-D ints), chains of ``chain``."""
    k = np.asarray(codes).reshape(-1)
    wide = k.astype(np.int64 if k.dtype.itemsize > 2 else np.int32)
    return reconstruct(wide, quantizer_of(wide, chain).astype(wide.dtype))


#: ``ABI_VERSION`` of the ``_trellis_native`` build these modules call (``viterbi``'s and ``codes_of``'s
#: arguments and results); a build of another version (an older source) is not used
TRELLIS_ABI = 2


def load_trellis() -> Any:
    """The compiled kernels of dependent quantization (``nncodec.quant._trellis_native``, a leaf C
    extension), or None when not built, ``NNCODEC_KERNELS=portable`` (:func:`~.kernels.load_extension`), or
    built from another source version (no or another ``ABI_VERSION`` than :data:`TRELLIS_ABI`: logged)."""
    native = load_extension("nncodec.quant._trellis_native")
    if native is None:
        return None
    version = getattr(native, "ABI_VERSION", None)
    if version != TRELLIS_ABI:
        log.warning("the compiled dependent-quantization kernels are of version %s, not %d (built from an older "
                    "source): using the slower numpy code; rebuild them (reinstall, or python setup.py build_ext "
                    "--inplace)", version, TRELLIS_ABI)
        return None
    return native


@functools.cache
def _native() -> Any:
    """:func:`load_trellis`, loaded once."""
    return load_trellis()


def codes_of(levels: np.ndarray, chain: int) -> np.ndarray:
    """The transmitted codes of reconstruction ``levels`` (1-D ints); :class:`ConfigError` when a level is
    not one the quantizer of its state reconstructs (odd under Q0, even and non-zero under Q1). In C when the
    dependent search's kernels were built, else chain-parallel numpy (the same codes and errors)."""
    flat = np.asarray(levels).reshape(-1)
    native = _native()
    if native is not None:
        out = np.empty(flat.size, dtype=np.int64)
        bad = native.codes_of(np.ascontiguousarray(flat, dtype=np.int64), chain, out)
        if bad < 0:
            return out
        flat = flat[:bad - bad % chain + chain]  # the numpy loop below names the level of the chain that failed
    m = np.ascontiguousarray(chain_rows(flat, chain, np.int64).T)  # row j: position j
    out = np.empty_like(m)
    state = np.zeros(m.shape[1], dtype=np.int8)
    for j in range(m.shape[0]):
        mj = m[j]
        q1 = state >= 2
        odd = (mj & 1).astype(bool)
        bad = np.where(q1, ~odd & (mj != 0), odd)
        if bad.any():
            chain_index = int(np.flatnonzero(bad)[0])
            raise ConfigError(f"dependent quantization: level {int(mj[chain_index])} at word "
                              f"{chain_index * chain + j} is not on the quantizer of state "
                              f"{int(state[chain_index])}")
        kj = np.where(q1, (mj + np.sign(mj)) // 2, mj // 2)
        out[j] = kj
        state = NEXT_STATE[state, kj & 1]
    return out.T.reshape(-1)[:flat.size]


@register_stage
class Dependent(Stage):
    """Params: word_size u8 (1, 2 or 4), states u8 (4), chain u32 (1..65536). Framing: none; the output
    has the input's size. Words are signed little-endian; codes must lie in ``[-2**(8w-2), 2**(8w-2) - 1]``
    for ``w``-byte words, so every level fits the word."""

    stage_id = STAGE_DEPENDENT
    codec_id = "dependent"
    since_minor = FORMAT_MINOR_DEPENDENT

    def __init__(self, word_size: int, chain: int, states: int = 4, codes: "np.ndarray | None" = None,
                 levels: "np.ndarray | None" = None):
        """``codes``, ``levels``: the transmitted codes (flat ints) the search computed for ``levels``, the
        levels array it produced (``word_size``-byte signed words, C-contiguous, owning its memory), given
        together. The stage makes ``levels`` read-only; the first :meth:`encode` writes ``codes`` instead of
        deriving them only when its input is that very memory (same address and size) and ``levels`` is still
        read-only, so the codes provably belong to the data; any other input is derived as without ``codes``.
        Used at most once (later encodes derive). Not stored in the stream, not part of equality."""
        if word_size not in (1, 2, 4):
            raise ConfigError(f"dependent: word_size must be 1, 2 or 4, got {word_size!r}")
        if states != 4:
            raise ConfigError(f"dependent: only the 4-state machine is defined, got states={states!r}")
        if not isinstance(chain, (int, np.integer)) or not 1 <= chain <= MAX_CHAIN:
            raise ConfigError(f"dependent: chain must be 1..{MAX_CHAIN}, got {chain!r}")
        if (codes is None) != (levels is None):
            raise ConfigError("dependent: codes and the levels they belong to are given together")
        self.word_size, self.chain, self.states = word_size, int(chain), states
        self._known: "tuple[np.ndarray, np.ndarray] | None" = None  # (codes as words, the levels they code)
        if codes is not None and levels is not None:
            flat = np.asarray(codes).reshape(-1)
            fits = (isinstance(levels, np.ndarray) and levels.dtype == SIGNED_WORD_DTYPES[word_size]
                    and levels.flags.c_contiguous and levels.flags.owndata and levels.size == flat.size)
            if fits and (not flat.size or (-self._code_bound <= int(flat.min())
                                           and int(flat.max()) < self._code_bound)):
                levels.flags.writeable = False  # else encode derives them (and refuses codes out of range)
                self._known = flat.astype(SIGNED_WORD_DTYPES[word_size]), levels

    def params(self) -> bytes:
        return _PARAMS.pack(self.word_size, self.states, self.chain)

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "Dependent":
        if len(params) != _PARAMS.size:
            raise CorruptError(f"dependent params must be {_PARAMS.size} bytes, got {len(params)}")
        word_size, states, chain = _PARAMS.unpack(bytes(params))
        if word_size not in (1, 2, 4) or states != 4 or not 1 <= chain <= MAX_CHAIN:
            raise CorruptError(f"dependent params invalid: word_size {word_size}, states {states}, chain {chain}")
        return cls(word_size, chain, states)

    def get_config(self) -> dict:
        return {"id": self.codec_id, "word_size": self.word_size, "chain": self.chain}

    @property
    def _code_bound(self) -> int:
        return 1 << (8 * self.word_size - 2)

    def encode(self, data: memoryview) -> bytes:
        if len(data) % self.word_size:
            raise ConfigError(f"dependent: {len(data)} bytes is not a multiple of {self.word_size}")
        known, self._known = self._known, None
        levels = np.frombuffer(data, dtype=SIGNED_WORD_DTYPES[self.word_size])
        if known is not None and _same_memory(levels, known[1]):
            log.debug("dependent: writing the search's codes of %d words", levels.size)
            return known[0].tobytes()
        codes = codes_of(levels, self.chain)
        if codes.size and (codes.min() < -self._code_bound or codes.max() >= self._code_bound):
            raise ConfigError(f"dependent: levels need codes beyond ±{self._code_bound} of "
                              f"{self.word_size}-byte words; use wider code words")
        return codes.astype(SIGNED_WORD_DTYPES[self.word_size]).tobytes()

    def decoded_size(self, data: memoryview) -> int:
        return len(data)

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        if len(data) != out.size or len(data) % self.word_size:
            raise CorruptError(f"dependent input of {len(data)} bytes does not fit {out.size} output bytes "
                               f"of {self.word_size}-byte words")
        codes = np.frombuffer(data, dtype=SIGNED_WORD_DTYPES[self.word_size])
        if codes.size:
            lo, hi = int(codes.min()), int(codes.max())
            if lo < -self._code_bound or hi >= self._code_bound:
                raise CorruptError(f"dependent: code {lo if lo < -self._code_bound else hi} is outside "
                                   f"[{-self._code_bound}, {self._code_bound - 1}] for {self.word_size}-byte words")
        dest = out.view(SIGNED_WORD_DTYPES[self.word_size])
        block = max(1, _BLOCK_WORDS // self.chain) * self.chain  # whole chains: temporaries stay near 20 MiB
        for start in range(0, codes.size, block):
            dest[start:start + block] = levels_of(codes[start:start + block], self.chain)


def _same_memory(data: np.ndarray, levels: np.ndarray) -> bool:
    """Whether ``data`` is exactly the memory of ``levels`` (same first byte and size) and ``levels`` is
    still read-only: then its words are the levels the stored codes were computed for."""
    return (not levels.flags.writeable and data.nbytes == levels.nbytes
            and data.__array_interface__["data"][0] == levels.__array_interface__["data"][0])

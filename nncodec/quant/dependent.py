"""Dependent (trellis-coded) quantization on encode: the Viterbi search of the codes (FORMAT.md §15).

Two scalar quantizers share the step ``Δ``: Q0 reconstructs the even multiples of ``Δ``, Q1 the odd ones and
zero; the 4-state machine of :mod:`nncodec.coding.dependent_stage` (driven by the parity of each code) picks
which applies to the next element. Each quantizer alone is as coarse as a step of ``2Δ``, but the union
of their levels is the grid of step ``Δ``, and a path through the trellis reaches the finer grid on most
elements: at equal distortion the codes cost fewer bits than plain rounding (0.13–0.15 bit per element on
MiniLM's linear weights at 3.6–4.5 bits per element, order-0 entropy; tests/benchmarks/bench_dependent_mse.py).

For each chain of consecutive elements (flat C order; the state machine restarts at 0 on each) the Viterbi
search keeps, for each of the 4 states, the cheapest path reaching it, with cost

    J = sum (x / Δ - level)**2 + λ * bits(k)

(distortion in squared steps ``Δ``; ``bits(k) = -log2 p(k)`` under the order-0 model of the transmitted
codes ``k``, re-fitted over a few passes when ``λ > 0``). It runs over all chains at once (numpy, vectorized
over chains, in blocks that keep the back-pointers near 80 MiB), or in C (``_trellis_native``, built at install
time, the same codes) when it was built.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

import numpy as np

from ..coding.dependent_stage import MAX_CHAIN, NEXT_STATE, _native, chain_rows, levels_of, reconstruct
from ..errors import ConfigError
from .rate_aware import CodeRate

if TYPE_CHECKING:
    from ..bitstream.descriptor import CodedTensor
    from ..dtypes import DType
    from .uniform import UniformCodes

__all__ = ["dependent_levels", "dependent_coded", "chain_length", "DependentLevels", "search_threads"]

_BLOCK_CELLS = 1 << 22  # chain positions x chains per block (back-pointers: 5 bytes x 4 states each)
_LAMBDA_PASSES = 3
#: the largest |x / Δ| searched: levels and codes then fit the widest (4-byte) code words of §15
MAX_SCALED = 1 << 31
#: (state, parity of its code) leading into each next state: PRED[next] = ((s, p), (s', p'))
_PRED = tuple(tuple((s, p) for s in range(4) for p in (0, 1) if NEXT_STATE[s][p] == ns) for ns in range(4))


def chain_length(shape: tuple[int, ...]) -> int:
    """The chain (state-machine restart period, in elements) the encoder uses for a tensor of ``shape``:
    one row (the elements of one index along axis 0) for rank >= 2, capped at 4096; 64 for rank <= 1."""
    if len(shape) >= 2:
        return max(1, min(math.prod(shape[1:]), 4096))
    return max(1, min(math.prod(shape), 64))


class DependentLevels:
    """The search's result: ``levels`` (int64, the tensor's shape; ``value = level * Δ``), the ``chain`` and
    the transmitted ``codes`` (int64, flat) the stage will write."""

    def __init__(self, levels: np.ndarray, chain: int, codes: np.ndarray):
        self.levels, self.chain, self.codes = levels, chain, codes


def _viterbi(y: np.ndarray, lam: float, rate: CodeRate | None) -> np.ndarray:
    """Codes ``k`` (int64, ``y``'s shape ``(positions, chains)``) of the cheapest trellis path of each chain."""
    positions, chains = y.shape
    cost = np.full((chains, 4), np.inf)
    cost[:, 0] = 0.0
    back_k = np.empty((positions, chains, 4), dtype=np.int32)  # |k| <= MAX_SCALED / 2 + 2
    back_s = np.empty((positions, chains, 4), dtype=np.int8)
    use_rate = lam > 0 and rate is not None
    for j in range(positions):
        yj = y[j]
        best: list[list[tuple[np.ndarray, np.ndarray]]] = []  # [quantizer][parity] -> (cost, k)
        for q1 in (False, True):
            base = np.floor((yj + 1) / 2 if q1 else yj / 2).astype(np.int64)
            cands = [base - 1, base, base + 1, base + 2] + ([np.zeros_like(base)] if use_rate else [])
            per_parity = [(np.full(chains, np.inf), np.zeros(chains, np.int64)) for _ in (0, 1)]
            for k in cands:
                c = (yj - reconstruct(k, q1)) ** 2
                if use_rate:
                    c = c + lam * rate.bits(k)  # type: ignore[union-attr]
                parity = k & 1
                for p in (0, 1):
                    cb, kb = per_parity[p]
                    take = (parity == p) & (c < cb)
                    per_parity[p] = (np.where(take, c, cb), np.where(take, k, kb))
            best.append(per_parity)
        new = np.empty_like(cost)
        for ns, ((s1, p1), (s2, p2)) in enumerate(_PRED):
            c1, k1 = best[s1 >= 2][p1]
            c2, k2 = best[s2 >= 2][p2]
            c1, c2 = cost[:, s1] + c1, cost[:, s2] + c2
            second = c2 < c1
            new[:, ns] = np.where(second, c2, c1)
            back_k[j, :, ns] = np.where(second, k2, k1)
            back_s[j, :, ns] = np.where(second, s2, s1)
        cost = new
    state = np.argmin(cost, axis=1)
    codes = np.empty((positions, chains), dtype=np.int64)
    idx = np.arange(chains)
    for j in range(positions - 1, -1, -1):
        codes[j] = back_k[j, idx, state]
        state = back_s[j, idx, state]
    return codes


def search_threads() -> int:
    """Threads of the compiled search: the CPUs this process may run on, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def _search(y_flat: np.ndarray, chain: int, lam: float, rate: CodeRate | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Codes of the flat scaled values ``y_flat`` (chains of ``chain``; the last one padded with zeros, which
    cost the same on every path), by the compiled search when built (with their levels, threaded over the
    chains), else block by block of chains in numpy (the same codes; levels None)."""
    n = y_flat.size
    whole = n and n % chain == 0 and y_flat.dtype == np.float64 and y_flat.flags.c_contiguous
    rows = y_flat.reshape(-1, chain) if whole else chain_rows(y_flat, chain, np.float64)
    chains = rows.shape[0]
    native = _native()
    if native is not None:
        codes, levels = np.empty(rows.size, dtype=np.int64), np.empty(rows.size, dtype=np.int64)
        table = rate.table if (lam > 0 and rate is not None) else np.zeros(0)
        native.viterbi(rows.reshape(-1), chain, float(lam), np.ascontiguousarray(table, dtype=np.float64),
                       int(rate.lo) if rate is not None else 0, codes, levels, search_threads())
        return codes[:n], levels[:n]
    out = np.empty((chains, chain), dtype=np.int64)
    per_block = max(1, _BLOCK_CELLS // chain)
    for start in range(0, chains, per_block):
        stop = min(chains, start + per_block)
        out[start:stop] = _viterbi(np.ascontiguousarray(rows[start:stop].T), lam, rate).T
    return out.reshape(-1)[:n], None


def dependent_levels(x: np.ndarray, delta: "float | np.ndarray", lam: float = 0.0,
                     chain: int | None = None, what: str = "values") -> DependentLevels:
    """Dependent-quantization levels of ``x`` on step ``delta`` (a number, or an array broadcasting against
    ``x``: per-row or per-column steps), chosen by the Viterbi search with rate weight ``lam`` (>= 0, in
    squared steps per bit; 0 = least distortion). ``chain`` defaults to :func:`chain_length`. Values of
    ``|x / delta| >= 2**31`` are a :class:`ConfigError` (no code word holds their levels); ``what`` names
    ``x`` in errors."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    d = np.asarray(delta, dtype=np.float64)
    try:
        fits = np.broadcast_shapes(d.shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ConfigError(f"steps of shape {d.shape} do not broadcast against values of shape {x.shape}")
    if not (np.isfinite(d).all() and (d > 0).all()):
        raise ConfigError("dependent quantization needs finite steps > 0")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ConfigError(f"the rate weight must be a finite number >= 0, got {lam!r}")
    chain = chain_length(x.shape) if chain is None else chain
    if not 1 <= chain <= MAX_CHAIN:
        raise ConfigError(f"chain must be 1..{MAX_CHAIN}, got {chain}")
    y = np.divide(x, d, dtype=np.float64).reshape(-1)  # float64 of x over d: exact widening, one pass
    peak = max(float(y.max()), -float(y.min())) if y.size else 0.0  # NaN when any value is NaN
    if not peak < MAX_SCALED:
        if not np.isfinite(x).all():
            raise ConfigError("dependent quantization needs finite values (NaN or Inf found)")
        i = int(np.argmax(np.abs(y)))
        raise ConfigError(f"dependent quantization of {what}: value {float(x.reshape(-1)[i])!r} at element {i} "
                          f"is {float(abs(y[i])):.3g} steps of {float(np.broadcast_to(d, x.shape).reshape(-1)[i])!r}, the code words hold "
                          f"fewer than 2**31: use a larger step")
    codes, levels = _search(y, chain, 0.0, None)
    if lam > 0:
        for _ in range(_LAMBDA_PASSES):
            codes, levels = _search(y, chain, lam, CodeRate(codes))
    levels = (levels if levels is not None else levels_of(codes, chain)).reshape(x.shape)
    return DependentLevels(levels, chain, codes)


def dependent_coded(x: np.ndarray, step: np.ndarray, grid: "UniformCodes", dtype: "DType", axis: int,
                    lam: float, what: str = "values", factor: "np.ndarray | None" = None
                    ) -> "tuple[CodedTensor, tuple[float, float]]":
    """The :class:`CodedTensor` of ``x`` under dependent quantization on half of ``step`` (the plain grid's
    step(s), broadcasting against ``x``; per channel along ``axis`` when ``grid.per_channel``), with the
    state machine's stage as ``lead``; and its (max abs, rms) error. ``factor``: the inverse factor of
    ``x``'s input Hessian (:func:`~nncodec.quant.gptq.inverse_factor`): the search then minimizes the layer
    output error with GPTQ's feedback (:func:`~nncodec.quant.dependent_gptq.dependent_gptq_levels`)."""
    from ..bitstream.constants import SCHEME_UNIFORM
    from ..bitstream.descriptor import CodedTensor, QuantDescriptor
    from ..coding.dependent_stage import Dependent
    from ..dtypes import dtype_by_name
    from .uniform import code_dtype_for_bits

    delta = np.asarray(step, dtype=np.float64) / 2
    delta32 = delta.astype(np.float32)  # the stored scales: search on them so the decoder's values are the searched ones
    if factor is not None:
        from .dependent_gptq import dependent_gptq_levels

        found = dependent_gptq_levels(x, delta32.astype(np.float64), factor, lam, what=what)
    else:
        found = dependent_levels(x, delta32.astype(np.float64), lam, what=what)
    peak = max(int(found.levels.max()), -int(found.levels.min())) if found.levels.size else 0
    bits = max(2, (peak + 1).bit_length() + 1)  # room for the codes (about half the levels) in the same words
    code_dtype = dtype_by_name(code_dtype_for_bits(bits).name)
    desc = QuantDescriptor(scheme=SCHEME_UNIFORM, code_dtype=code_dtype, sign_bits=1, exponent_bits=0,
                           mantissa_bits=bits - 1, bits=bits, per_channel=grid.per_channel,
                           axis=axis if grid.per_channel else 0, scales=delta32.reshape(-1))
    levels = found.levels.astype(code_dtype.storage)  # the stage makes it read-only and writes the codes for it
    lead = Dependent(code_dtype.itemsize, found.chain, codes=found.codes, levels=levels)
    diff = found.levels * delta32.astype(np.float64)
    diff -= x
    np.abs(diff, out=diff)
    error = (0.0, 0.0)
    if diff.size:
        top = float(diff.max())
        error = (top, float(np.sqrt(np.mean(np.square(diff, out=diff)))))
    del diff
    return CodedTensor(levels, desc, dtype, lead), error

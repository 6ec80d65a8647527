"""Dependent (trellis-coded) quantization with GPTQ's error feedback: the Viterbi search of
:mod:`nncodec.quant.dependent` on a layer's output error instead of its weight error.

For a weight ``W`` (``[rows, n]``, a Linear / Conv weight flattened to its ``n`` input columns) with the inverse
factor ``U`` of its input Hessian (:func:`nncodec.quant.gptq.inverse_factor`: upper Cholesky factor of
``H^-1``), GPTQ rounds column ``j`` of the feedback-adjusted weights ``w̃`` and feeds the error
``e_j = (w̃_j - level_j Δ_j) / U_jj`` into the later columns (``w̃ <- w̃ - e_j U[j, j+1:]``); the layer output
error is then ``sum_j e_j**2`` (up to the Hessian's scale). Here each row is one chain of the 4-state
machine (FORMAT.md §15; the chain restarts at state 0 each row, :func:`~.dependent.chain_length`), and the
search keeps, for each state, the cheapest path reaching it together with that path's own feedback-adjusted
remaining weights. Per row it minimizes

    J = sum_j g_j (w̃_j / Δ_j - level_j)**2 + λ * bits(k_j),   g_j = (Δ_j / U_jj)**2 / max_i (Δ_i / U_ii)**2

(distortion in squared steps of the row's column of largest ``Δ_j / U_jj``, so ``J`` at λ = 0 is the output
error up to a positive factor per row; ``bits`` under the order-0 model of the transmitted codes, re-fitted
over a few passes when λ > 0). With a diagonal ``U`` proportional to the steps (no feedback, ``g = 1``) it
is exactly the plain search of :func:`~.dependent.dependent_levels`.

The levels are valid trellis paths: the stream format and the decoder do not change. The search runs in
numpy, vectorized over the rows, in blocks of rows (bounded memory) and of columns (the feedback into later
blocks is one matrix product per block, as in :func:`~.gptq.gptq_codes`).
"""

from __future__ import annotations

import math

import numpy as np

from ..coding.dependent_stage import MAX_CHAIN, levels_of
from ..errors import ConfigError
from .dependent import _LAMBDA_PASSES, _PRED, MAX_SCALED, DependentLevels
from .rate_aware import CodeRate

__all__ = ["dependent_gptq_levels"]

_ROW_CELLS = 1 << 20  # rows x columns searched at once (survivor weights and back-pointers: ~60 bytes each)
_BLOCK = 64  # columns between the lazy feedback updates of the later columns
_OFFSETS = np.arange(-1, 3).reshape(4, 1, 1)


def _search(w: np.ndarray, d: np.ndarray, u: np.ndarray, lam: float, rate: CodeRate | None,
            what: str) -> np.ndarray:
    """Codes (int64, ``[rows, n]``) of the cheapest path of each row of ``w`` (float64 ``[rows, n]``) on
    steps ``d`` (``[rows, n]``) with feedback through ``u`` (``[n, n]``)."""
    rows_n, n = w.shape
    diag = np.diagonal(u)
    g = (d / diag) ** 2
    g /= g.max(axis=1, keepdims=True)
    use_rate = lam > 0 and rate is not None
    q1 = np.array([False, False, True, True])[None, :]  # the quantizer of each state
    r = np.arange(rows_n)[:, None]
    ahead = np.repeat(w[:, None, :], 4, axis=1)  # each survivor's remaining weights, feedback of earlier blocks in
    cost = np.full((rows_n, 4), np.inf)
    cost[:, 0] = 0.0
    back_k = np.empty((n, rows_n, 4), dtype=np.int64)
    back_s = np.empty((n, rows_n, 4), dtype=np.int8)
    for b0 in range(0, n, _BLOCK):
        b1 = min(n, b0 + _BLOCK)
        wb = ahead[:, :, b0:b1].copy()  # the block's columns of each survivor, updated column by column
        eb = np.zeros_like(wb)  # each survivor's errors in this block
        anc = np.repeat(np.arange(4)[None, :], rows_n, axis=0)  # each survivor's ancestor at the block start
        for j in range(b0, b1):
            i = j - b0
            t = wb[:, :, i] / d[:, j:j + 1]  # [rows, 4]: each survivor's value in steps
            peak = float(np.abs(t).max())
            if not peak < MAX_SCALED:
                raise ConfigError(f"dependent quantization with feedback of {what}: a feedback-adjusted value in "
                                  f"column {j} is {peak:.3g} steps, the code words hold fewer than 2**31: use a "
                                  "larger step")
            base = np.where(q1, np.floor((t + 1) / 2), np.floor(t / 2)).astype(np.int64)
            k = base[None] + _OFFSETS  # candidates base - 1 .. base + 2: [4, rows, 4]
            c = g[:, j:j + 1] * (t - (2 * k - q1 * np.sign(k))) ** 2
            if use_rate:
                c += lam * rate.bits(k)  # type: ignore[union-attr]
            # base - 1 and base + 1 share a parity, base and base + 2 the other; in each pair the first wins
            # unless the second costs strictly less (the plain search's first minimum)
            second_a, second_b = c[2] < c[0], c[3] < c[1]
            ca, ka = np.where(second_a, c[2], c[0]), np.where(second_a, k[2], k[0])
            cb_, kb_ = np.where(second_b, c[3], c[1]), np.where(second_b, k[3], k[1])
            odd_base = (base & 1).astype(bool)  # parity of base and base + 2
            bc = [np.where(odd_base, ca, cb_), np.where(odd_base, cb_, ca)]  # per parity: cost, code
            bk = [np.where(odd_base, ka, kb_), np.where(odd_base, kb_, ka)]
            if use_rate:  # code 0 (level 0 on either quantizer) competes for parity 0
                c0 = g[:, j:j + 1] * t ** 2 + lam * float(rate.bits(np.zeros(1, np.int64))[0])  # type: ignore[union-attr]
                take = c0 < bc[0]
                bc[0], bk[0] = np.where(take, c0, bc[0]), np.where(take, 0, bk[0])
            new = np.empty_like(cost)
            src = np.empty((rows_n, 4), dtype=np.int64)
            ksel = np.empty((rows_n, 4), dtype=np.int64)
            for ns, ((s1, p1), (s2, p2)) in enumerate(_PRED):
                c1, c2 = cost[:, s1] + bc[p1][:, s1], cost[:, s2] + bc[p2][:, s2]
                second = c2 < c1
                new[:, ns] = np.where(second, c2, c1)
                src[:, ns] = np.where(second, s2, s1)
                ksel[:, ns] = np.where(second, bk[p2][:, s2], bk[p1][:, s1])
            back_k[j], back_s[j] = ksel, src
            cost = new
            level = 2 * ksel - (src >= 2) * np.sign(ksel)
            e = (wb[r, src, i] - level * d[:, j:j + 1]) / diag[j]
            wb = wb[r, src]
            eb = eb[r, src]
            anc = anc[r, src]
            eb[:, :, i] = e
            if i + 1 < b1 - b0:
                wb[:, :, i + 1:] -= e[:, :, None] * u[j, j + 1:b1]
        if b1 < n:
            later = ahead[r, anc, b1:]
            later -= (eb.reshape(-1, b1 - b0) @ u[b0:b1, b1:]).reshape(rows_n, 4, n - b1)
            ahead[:, :, b1:] = later
    state = np.argmin(cost, axis=1)
    codes = np.empty((rows_n, n), dtype=np.int64)
    idx = np.arange(rows_n)
    for j in range(n - 1, -1, -1):
        codes[:, j] = back_k[j, idx, state]
        state = back_s[j, idx, state]
    return codes


def dependent_gptq_levels(x: np.ndarray, delta: "float | np.ndarray", factor: np.ndarray, lam: float = 0.0,
                          what: str = "values") -> DependentLevels:
    """Dependent-quantization levels of the weight ``x`` (``[rows, in...]``, rank >= 2, flattened to ``n``
    columns; ``n <= 4096``, one chain per row) on step ``delta`` (a number, or an array broadcasting against
    ``x``: per-row or per-column steps) that minimize the layer output error under GPTQ's error feedback
    through ``factor`` (``[n, n]``, :func:`~nncodec.quant.gptq.inverse_factor`), with rate weight ``lam``
    (>= 0; see the module docstring for its units). Values of ``|x / delta| >= 2**31`` (also after
    feedback) are a :class:`ConfigError`; ``what`` names ``x`` in errors."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ConfigError(f"dependent quantization with feedback of {what}: needs a weight of rank >= 2, "
                          f"got shape {x.shape}")
    rows_n, n = x.shape[0], math.prod(x.shape[1:])
    if not 1 <= n <= min(4096, MAX_CHAIN):
        raise ConfigError(f"dependent quantization with feedback of {what}: rows of 1..4096 columns (one chain "
                          f"each), got {n}")
    u = np.asarray(factor, dtype=np.float64)
    if u.shape != (n, n) or not (np.isfinite(u).all() and (np.diagonal(u) > 0).all()):
        raise ConfigError(f"dependent quantization with feedback of {what}: the factor must be a finite [{n}, {n}] "
                          f"matrix with a positive diagonal, got shape {u.shape}")
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
    w = np.asarray(x, dtype=np.float64).reshape(rows_n, n)
    dm = np.broadcast_to(d, x.shape).reshape(rows_n, n)
    if not np.isfinite(w).all():
        raise ConfigError("dependent quantization needs finite values (NaN or Inf found)")
    y = np.divide(w, dm)
    if y.size and not float(np.abs(y).max()) < MAX_SCALED:
        i = int(np.argmax(np.abs(y)))
        raise ConfigError(f"dependent quantization of {what}: value {float(w.reshape(-1)[i])!r} at element {i} "
                          f"is {float(abs(y.reshape(-1)[i])):.3g} steps of {float(dm.reshape(-1)[i])!r}, the code "
                          "words hold fewer than 2**31: use a larger step")
    per_block = max(1, _ROW_CELLS // n)

    def run(lam_: float, rate: CodeRate | None) -> np.ndarray:
        out = np.empty((rows_n, n), dtype=np.int64)
        for start in range(0, rows_n, per_block):
            stop = min(rows_n, start + per_block)
            out[start:stop] = _search(w[start:stop], np.ascontiguousarray(dm[start:stop]), u, lam_, rate, what)
        return out.reshape(-1)

    codes = run(0.0, None)
    if lam > 0:
        for _ in range(_LAMBDA_PASSES):
            codes = run(lam, CodeRate(codes))
    levels = levels_of(codes, n).reshape(x.shape)
    return DependentLevels(levels, n, codes)

"""Rate-aware (entropy-constrained) scalar quantization: codes that minimize distortion + λ·rate.

The grid stays the uniform one of :mod:`nncodec.quant.uniform` (``value = code * step``), so decoding does
not change. What changes is which grid point an element takes: besides the nearest code ``k = round(x/s)``
the quantizer may take its neighbour towards zero, ``k - sign(k)``, or zero itself, when that saves more
rate than it costs in distortion. The cost of code ``q`` for element ``x`` is

    J(q) = (x / s - q)**2 + λ * bits(q)

(distortion in squared steps), where ``bits(q) = -log2 p(q)`` comes from the order-0 distribution of the
codes, the model the rANS entropy stage codes with (within 1 % of its output). The distribution depends on
the choices, so the choice and the model are iterated a few times (the classic ECSQ iteration).

With λ = 0 this is plain rounding. With λ > 0 an element's error is at most 1.5 steps, or ``|x|`` when it
is coded as zero; the step and λ together set the operating point.
"""

from __future__ import annotations

import numpy as np

from ..checks import is_number
from ..errors import ConfigError

__all__ = ["CodeRate", "order0_bits", "ecsq_codes", "check_lambda"]


def check_lambda(lam: float) -> float:
    """``lam`` as a float, or :class:`ConfigError` when it is not a finite number >= 0."""
    if not is_number(lam) or not np.isfinite(lam) or lam < 0:
        raise ConfigError(f"rate_lambda must be a finite number >= 0, got {lam!r}")
    return float(lam)


def order0_bits(codes: np.ndarray) -> float:
    """Order-0 entropy of ``codes`` in bits (the size an ideal order-0 coder reaches, model excluded)."""
    codes = np.asarray(codes).reshape(-1)
    if codes.size == 0:
        return 0.0
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())


class CodeRate:
    """Bits of each code value under an order-0 model fitted to a code array (add-one smoothed over the
    span ``[lo, hi]`` so an unseen code has a finite, high cost)."""

    def __init__(self, codes: np.ndarray, span: tuple[int, int] | None = None):
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        lo = int(codes.min()) if codes.size else 0
        hi = int(codes.max()) if codes.size else 0
        if span is not None:
            lo, hi = min(lo, span[0]), max(hi, span[1])
        self.lo = lo - 1
        counts = np.bincount(codes - self.lo, minlength=hi - self.lo + 2).astype(np.float64) + 0.5
        self.table = -np.log2(counts / counts.sum())

    def bits(self, codes: np.ndarray) -> np.ndarray:
        """``-log2 p(code)`` for each code (codes outside the fitted span cost as much as the rarest)."""
        idx = np.clip(np.asarray(codes, dtype=np.int64) - self.lo, 0, self.table.size - 1)
        return self.table[idx]


def choose(scaled: np.ndarray, rate: CodeRate | None, lam: float, qmin: int, qmax: int) -> np.ndarray:
    """The cheapest of ``round(scaled)``, its neighbour towards zero and zero under ``J`` (plain rounding when
    ``lam`` is 0 or there is no rate model); clipped to ``[qmin, qmax]``. ``scaled`` is ``x / step``."""
    near = np.clip(np.rint(scaled), qmin, qmax)
    if lam <= 0 or rate is None:
        return near.astype(np.int64)
    best = near
    j_best = (scaled - near) ** 2 + lam * rate.bits(near)
    for cand in (near - np.sign(near), np.zeros_like(near)):
        j = (scaled - cand) ** 2 + lam * rate.bits(cand)
        take = j < j_best
        best = np.where(take, cand, best)
        j_best = np.where(take, j, j_best)
    return best.astype(np.int64)


def ecsq_codes(x: np.ndarray, step: "float | np.ndarray", lam: float, *, qmin: int = -(1 << 31) + 1,
               qmax: int = (1 << 31) - 1, iterations: int = 3) -> np.ndarray:
    """Entropy-constrained codes of ``x`` on the grid ``code * step`` (``step`` a scalar or broadcastable,
    e.g. one per row), as int64. ``iterations`` passes of choose-then-refit the order-0 model."""
    lam = check_lambda(lam)
    if not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"iterations must be a positive integer, got {iterations!r}")
    scaled = np.asarray(x, dtype=np.float64) / np.asarray(step, dtype=np.float64)
    codes = choose(scaled, None, 0.0, qmin, qmax)
    for _ in range(iterations if lam > 0 else 0):
        codes = choose(scaled, CodeRate(codes), lam, qmin, qmax)
    return codes

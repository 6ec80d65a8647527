"""Per-input-channel steps: a tensor's step spread over its input channels by how much each one matters.

A weight ``W[out, in, ...]`` quantized with one step ``s_j`` per input channel ``j`` (a per-channel scale on
axis 1; the format's ordinary per-channel descriptor, decoded as usual) makes an output error of about
``sum_j w_j * s_j**2 / 12`` and costs about ``-sum_j log2 s_j`` bits per row, where ``w_j`` is the channel's
importance. The least error for the rate is reached at ``s_j ∝ w_j**-1/2``; against one step for the whole
tensor it saves ``0.5 * log2(AM / GM)`` of the ``w_j`` bits per element at the same error (high-rate
theory; the order-0 entropy stage, fitted to the whole tensor, gives back part of it when the channels'
code spreads differ much).

Importance sources (``column_steps=`` of :func:`nncodec.encode` with ``calibration=``):

- ``"hessian"``: the diagonal of the Hessian data-aware rounding uses: the layer-input Hessian
  ``H = X^T X / n`` of ``Linear``, ``Conv1d``, ``Conv2d``, and an embedding table's row Hessian ``M`` of the
  output error (:mod:`nncodec.quant.output_probes`; only with a differentiable forward). With GPTQ rounding
  the weight is the conditional one GPTQ's error feedback leaves, ``1 / U_jj**2`` (``U`` the upper Cholesky
  factor of ``H^-1``), the error a rounding of column ``j`` still makes after the later columns compensated
  for it.
- ``"fisher"``: the diagonal Gauss–Newton matrix of the squared output error, ``E[(J^T v)**2]`` for random
  ``v ~ N(0, I)`` in the output (``probes`` backward passes per batch), summed over all axes but 1. It
  covers every float tensor of rank >= 2 with a gradient, embedding tables included; the forward must be
  differentiable. Axis 1 is what the steps follow whatever the layer: the embedding dimension of an
  ``Embedding`` table, the output channel of a ``ConvTranspose`` weight (``[in, out / groups, ...]``), the
  channel within its group of a grouped convolution.

With neither source covering any quantized tensor (grouped convolutions only, or embeddings with a forward
without gradient, for ``"hessian"``; every weight lossless), ``column_steps`` is a :class:`ConfigError`.

``column_power`` tempers the rule (``s_j ∝ w_j**(-power/2)``; default 0.5, which did best on MiniLM,
where importances from a few calibration batches are noisy; 1 is the theory, 0 switches it off); the
factors are normalized to geometric mean 1 (so ``rel_step`` keeps about its rate) and clipped to
``[1/CLIP, CLIP]``. Importances below ``FLOOR`` times the median (channels the calibration never excites)
count as that floor. A tensor keeps its one step when the predicted saving (:func:`predicted_gain`) does not
exceed what its per-channel steps cost in the stream (32 bits each).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from ..checks import is_int, is_number
from ..errors import ConfigError
from .output_probes import gauss_newton_probes

__all__ = ["COLUMN_SOURCES", "CLIP", "FLOOR", "DEFAULT_POWER", "check_column_options", "column_factors",
           "hessian_importance", "fisher_importance", "channel_steps", "predicted_gain"]

log = logging.getLogger(__name__)

COLUMN_SOURCES = ("hessian", "fisher")
#: per-channel step factors are clipped to [1/CLIP, CLIP] around the tensor's step
CLIP = 8.0
#: importances below FLOOR x median count as FLOOR x median
FLOOR = 0.01
#: column_power when none is given: half the theoretical spread (the full one overfits noisy importances)
DEFAULT_POWER = 0.5


def check_column_options(source: str | None, power: float | None = None, probes: int | None = None, *,
                         table_probes: bool = False) -> tuple[str | None, float, int]:
    """Validated ``(column_steps, column_power, fisher_probes)`` (defaults ``DEFAULT_POWER`` and 4);
    :class:`ConfigError` names a wrong one, or one given where it does not apply. ``table_probes``: the
    probes may also estimate embedding tables' row Hessians (``rounding="gptq"``), so ``fisher_probes`` is
    accepted whatever ``source`` is (whether a table got one is known only after the probe pass:
    :func:`nncodec.rd_encode.rd_tensors` checks it)."""
    if source is not None and source not in COLUMN_SOURCES:
        raise ConfigError(f"column_steps must be None or one of {COLUMN_SOURCES}, got {source!r}")
    if source is None and power is not None:
        raise ConfigError("column_power (and fisher_probes, except with rounding='gptq') apply only with "
                          "column_steps='hessian' or 'fisher'")
    if source is None and probes is not None and not table_probes:
        raise ConfigError("fisher_probes applies only with column_steps='hessian' or 'fisher', or rounding='gptq' "
                          "(embedding tables' Hessians)")
    power = DEFAULT_POWER if power is None else power
    probes = 4 if probes is None else probes
    if not is_number(power) or not 0 <= power <= 2:
        raise ConfigError(f"column_power must be a number in [0, 2], got {power!r}")
    if not is_int(probes) or not 1 <= probes <= 64:
        raise ConfigError(f"fisher_probes must be an integer 1..64, got {probes!r}")
    return source, float(power), probes


def _floored(importance: np.ndarray) -> np.ndarray | None:
    """``importance`` (float64, flat) with values below ``FLOOR`` x the median of the positive finite ones, and
    non-finite ones, set to that floor; None when no importance is positive and finite."""
    imp = np.asarray(importance, dtype=np.float64).reshape(-1)
    positive = imp[np.isfinite(imp) & (imp > 0)]
    if positive.size == 0:
        return None
    lowest = FLOOR * float(np.median(positive))
    return np.where(np.isfinite(imp), np.maximum(imp, lowest), lowest)


def column_factors(importance: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Step factors (float64, one per channel) ``∝ importance**(-power/2)``, geometric mean 1, clipped to
    ``[1/CLIP, CLIP]``. All-zero or non-finite importances give factors 1."""
    imp = _floored(importance)
    if power == 0 or imp is None:
        return np.ones(np.asarray(importance).size)
    log_f = -0.5 * power * np.log(imp)
    log_f -= log_f.mean()
    bound = np.log(CLIP)
    for _ in range(4):  # clipping moves the mean; re-centre a few times
        log_f = np.clip(log_f, -bound, bound)
        log_f -= log_f.mean()
    return np.exp(np.clip(log_f, -bound, bound))


def hessian_importance(hessian: torch.Tensor, factor: np.ndarray | None, channels: int) -> np.ndarray:
    """Importance of each of ``channels`` input channels from a layer-input Hessian (``[n, n]``, ``n`` =
    channels x kernel elements): its diagonal, or ``1 / U_jj**2`` when GPTQ's inverse factor ``U`` is
    given; summed over each channel's kernel elements."""
    diagonal = torch.diagonal(hessian).to(torch.float64).numpy()
    if factor is not None:
        # inputs never active (zero diagonal) have their diagonal set to 1 in the factor: they matter not at all
        per_column = np.where(diagonal == 0, 0.0, 1.0 / np.diag(factor) ** 2)
    else:
        per_column = diagonal
    if per_column.size % channels:
        raise ConfigError(f"a Hessian of {per_column.size} columns does not fit {channels} input channels")
    return per_column.reshape(channels, -1).sum(axis=1)


def fisher_importance(model: torch.nn.Module, batches: Iterable[Any], forward: Callable[[torch.nn.Module, Any], Any],
                      names: Iterable[str], *, probes: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """``{name: importance per index of axis 1}`` of the named parameters (rank >= 2): the diagonal
    Gauss–Newton matrix of the squared output error, estimated with ``probes`` random output directions per
    batch, summed over every axis but 1 (:func:`~nncodec.quant.output_probes.gauss_newton_probes`). Costs one
    forward and ``probes`` backward passes per batch; the parameters' ``.grad`` are left untouched and the
    model's mode is restored. A forward without gradient is a :class:`ConfigError`."""
    return gauss_newton_probes(model, batches, forward, names, probes=probes, seed=seed).diagonal


def predicted_gain(importance: np.ndarray, factors: np.ndarray) -> float:
    """Bits per element saved at the same output error by steps ``factors`` (geometric mean 1) against one
    step, in the high-rate model: ``-0.5 * log2(mean(w * f**2) / mean(w))`` (importances floored as in
    :func:`column_factors`)."""
    imp = _floored(importance)
    if imp is None:
        return 0.0
    return -0.5 * math.log2(float(np.mean(imp * factors ** 2)) / float(np.mean(imp)))


def channel_steps(step: float, importance: np.ndarray, power: float, shape: tuple[int, ...]) -> np.ndarray | None:
    """float32 per-input-channel steps ``step * factor`` shaped ``[1, in, 1...]`` for a tensor of ``shape``;
    None when the predicted gain (:func:`predicted_gain`) does not pay for the 32 bits each step costs in the
    stream (small tensors, channels of alike importance)."""
    f = column_factors(importance, power)
    overhead = 32.0 * f.size / max(1, math.prod(shape))
    gain = predicted_gain(importance, f)
    if gain <= overhead:
        log.debug("per-channel steps skipped: predicted gain %.3f <= %.3f bits/param for the steps", gain, overhead)
        return None
    s = (np.float64(step) * f).astype(np.float32)
    s = np.maximum(s, np.float32(np.finfo(np.float32).tiny))
    return s.reshape((1, -1) + (1,) * (len(shape) - 2))

"""Gauss–Newton statistics of a model's output error from random output probes.

For parameters ``W`` and the model's output ``y``, the Gauss–Newton matrix of the squared output error
``|y(W + δ) - y(W)|²`` is ``JᵀJ`` (``J = ∂y/∂W``). With random directions ``v ~ N(0, I)`` in the output,
``g = Jᵀv = ∂(y·v)/∂W`` has ``E[g gᵀ] = JᵀJ``: one backward pass per probe estimates it. Two parts of it are
gathered here, in one pass over the batches:

- ``diagonal``: per parameter, ``Σ g²`` summed over every axis but 1 (the per-input-channel Fisher
  importance of :mod:`nncodec.quant.column_steps`);
- ``tables``: per embedding table ``[V, d]``, ``M = Σ_t g_t g_tᵀ`` (``d × d``, float64) over its rows ``t``
  (a row's gradient sums over that token's occurrences): the output error of row errors ``δ_t`` is about
  ``Σ_t δ_t M_t δ_tᵀ``, and ``M``, pooled over the rows, is the Hessian GPTQ's error feedback rounds a
  table's rows with (:mod:`nncodec.quant.gptq`).

Each costs one forward and ``probes`` backward passes per batch; the forward must be differentiable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

__all__ = ["ProbeStats", "gauss_newton_probes"]

log = logging.getLogger(__name__)


@dataclass
class ProbeStats:
    """What :func:`gauss_newton_probes` gathered. ``differentiable`` is False when the forward's output
    carried no gradient (then nothing was gathered)."""

    diagonal: dict[str, np.ndarray] = field(default_factory=dict)  #: per index of axis 1, float64
    tables: dict[str, torch.Tensor] = field(default_factory=dict)  #: ``[d, d]`` float64, per probe pass
    rows_seen: dict[str, np.ndarray] = field(default_factory=dict)  #: per table, rows with a gradient (bool)
    differentiable: bool = True


def gauss_newton_probes(model: torch.nn.Module, batches: Iterable[Any], forward: Callable[[torch.nn.Module, Any], Any],
                        diagonal: Iterable[str] = (), tables: Iterable[str] = (), *, probes: int = 4, seed: int = 0,
                        strict: bool = True) -> ProbeStats:
    """The diagonal statistics of the named parameters ``diagonal`` (rank >= 2) and the row Hessians ``M`` of
    the named embedding tables ``tables`` (rank 2), from ``probes`` random output directions per batch.

    ``strict``: a forward whose output is not a float tensor with a gradient is a :class:`ConfigError`;
    otherwise nothing is gathered and ``differentiable`` is False (with a logged reason). Parameters the output
    does not depend on are left out; so are tables whose rows no batch looked up. The directions do not
    depend on which parameters are named (same ``seed``: same diagonal whether or not tables are gathered).
    The parameters' ``.grad`` are left untouched and the model's mode is restored."""
    params = dict(model.named_parameters())
    diag = [n for n in dict.fromkeys(diagonal) if n in params and params[n].dim() >= 2 and params[n].is_floating_point()]
    tabs = [n for n in dict.fromkeys(tables) if n in params and params[n].dim() == 2 and params[n].is_floating_point()]
    wanted = list(dict.fromkeys(diag + tabs))
    stats = ProbeStats()
    if not wanted:
        return stats
    sums = {n: torch.zeros(params[n].shape[1], dtype=torch.float64) for n in diag}
    outer = {n: torch.zeros(params[n].shape[1], params[n].shape[1], dtype=torch.float64) for n in tabs}
    seen = {n: torch.zeros(params[n].shape[0], dtype=torch.bool) for n in tabs}
    passes = 0
    flags = {n: p.requires_grad for n, p in params.items()}
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        chosen = set(wanted)
        for n, p in params.items():
            p.requires_grad_(n in chosen)
        for batch in batches:
            with torch.enable_grad():
                out = forward(model, batch)
                if isinstance(out, (tuple, list)) and out:
                    out = out[0]
                if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                    if strict:
                        raise ConfigError(f"forward must return a float tensor, got {type(out).__name__}")
                    log.info("embedding tables keep plain rounding: forward(model, batch) returned a %s, not a float "
                             "tensor", type(out).__name__)
                    return ProbeStats(differentiable=False)
                if not out.requires_grad:
                    if strict:
                        raise ConfigError("a Fisher / output-probe pass needs a differentiable forward(model, batch): "
                                          "its output has no gradient (run it without torch.no_grad)")
                    log.info("embedding tables keep plain rounding: the output of forward(model, batch) has no "
                             "gradient (their row Hessians need one)")
                    return ProbeStats(differentiable=False)
                for k in range(probes):
                    v = torch.randn(out.shape, generator=gen, dtype=out.dtype)
                    grads = torch.autograd.grad((out * v).sum(), [params[n] for n in wanted],
                                                retain_graph=k < probes - 1, allow_unused=True)
                    passes += 1
                    for n, g in zip(wanted, grads):
                        if g is None:
                            continue
                        if n in outer:
                            rows, values = _looked_up(g)
                            seen[n][rows] = True
                            values = values.to(torch.float64)
                            outer[n] += values.T @ values
                        if n in sums:
                            if g.is_sparse:  # Embedding(sparse=True): rows the batch did not look up are zero
                                g = g.coalesce().to_dense()
                            sums[n] += _column_square_sums(g)
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    stats.diagonal = {n: s.numpy() for n, s in sums.items() if float(s.sum()) > 0}
    for n, m in outer.items():
        if bool(seen[n].any()) and float(torch.diagonal(m).sum()) > 0:
            stats.tables[n] = m / passes
            stats.rows_seen[n] = seen[n].numpy()
    return stats


def _looked_up(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row indices, their gradient rows) of a table's gradient: the rows with a non-zero gradient (a sparse
    gradient's rows, duplicates summed)."""
    if g.is_sparse:
        g = g.coalesce()
        rows = g.indices()[0]
        values = g.values()
        keep = values.ne(0).any(dim=1)
        return rows[keep], values[keep]
    rows = g.ne(0).any(dim=1).nonzero().reshape(-1)
    return rows, g[rows]


def _column_square_sums(g: torch.Tensor) -> torch.Tensor:
    """``sum(g**2)`` over every axis but 1 (float64). Rows of axis 0 that are all zero (an embedding table's
    tokens the batch did not look up) are left out of the squares: they add nothing."""
    if g.shape[0] >= 1024:
        flat = g.reshape(g.shape[0], -1)
        # more than half the rows non-zero in their first element: the rows are kept (no full scan needed)
        if int(flat[:, 0].ne(0).sum()) * 2 <= g.shape[0]:
            rows = flat.ne(0).any(dim=1)
            if int(rows.sum()) * 2 <= g.shape[0]:
                g = g[rows]
    g2 = g.to(torch.float64) ** 2
    return g2.transpose(0, 1).reshape(g2.shape[1], -1).sum(dim=1)

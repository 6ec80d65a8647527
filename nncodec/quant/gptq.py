"""Data-aware rounding (the GPTQ / OPTQ family): codes that minimize a layer's output error, not its weight error.

For a linear map ``y = W x`` with calibration inputs ``X`` the output error of quantized weights ``Q`` is
``tr((W - Q) H (W - Q)^T)`` with ``H = X^T X / n`` (the Hessian of the layer inputs). The columns of ``W`` are
rounded one after another; the error each rounding makes is fed back into the columns not yet rounded,
weighted by the inverse Hessian (its upper Cholesky factor), so later columns compensate for it. A
convolution is the same map on its unfolded input patches.

The grid is the one the plain quantizer would use (same step or per-channel scales, same code range), so
the stream format and decoding do not change. Each rounding may be rate-aware
(:mod:`nncodec.quant.rate_aware`): with λ > 0 a column takes the cheaper of the nearest code and its
neighbour towards zero under distortion + λ·rate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .rate_aware import CodeRate, check_lambda, choose

__all__ = ["collect_hessians", "gptq_codes", "hessian_layers", "MAX_COLUMNS"]

log = logging.getLogger(__name__)

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: layers with more input columns (in_features, or in_channels x kernel elements) keep plain / rate-aware
#: rounding: their Hessian would take over 128 MiB (float64)
MAX_COLUMNS = 4096


def hessian_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: module}`` for the layers data-aware rounding handles: ``Linear``, and ``Conv1d`` /
    ``Conv2d`` with ``groups == 1``, of at most ``MAX_COLUMNS`` input columns (a weight shared by several
    modules is left out)."""
    found: dict[str, nn.Module] = {}
    owners: dict[int, int] = {}
    for name, mod in model.named_modules():
        if type(mod) in _SUPPORTED and getattr(mod, "groups", 1) == 1 and isinstance(mod.weight, torch.Tensor) \
                and mod.weight[0].numel() <= MAX_COLUMNS:
            found[f"{name}.weight" if name else "weight"] = mod
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return {n: m for n, m in found.items() if owners.get(id(m.weight), 0) <= 1}


def _rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the matrix its (flattened) weight multiplies."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dil, pad, stride = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (0, mod.padding[0]), (1, mod.stride[0])
    else:
        kernel, dil, pad, stride = mod.kernel_size, mod.dilation, mod.padding, mod.stride
    if isinstance(pad, str):
        raise ConfigError(f"data-aware rounding does not handle padding={pad!r}")
    cols = torch.nn.functional.unfold(x, kernel, dilation=dil, padding=pad, stride=stride)  # [N, C*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any],
                     names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """``{weight name: H}`` (float64, ``X^T X / rows``) of the supported layers, from one pass over ``batches``
    with forward pre-hooks. Layers that saw no input are left out."""
    layers = hessian_layers(model)
    if names is not None:
        wanted = set(names)
        layers = {n: m for n, m in layers.items() if n in wanted}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, mod in layers.items():
        def pre(module: nn.Module, args: tuple, name: str = name) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            rows = _rows(module, args[0].detach()).to(torch.float64)
            h = rows.T @ rows
            sums[name] = sums[name] + h if name in sums else h
            counts[name] = counts.get(name, 0) + rows.shape[0]
        hooks.append(mod.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums if counts[n] > 0}


def gptq_codes(weight: np.ndarray, hessian: torch.Tensor, step: "float | np.ndarray", *, qmin: int, qmax: int,
               lam: float = 0.0, rate: CodeRate | None = None, damp: float = 0.01, block: int = 128) -> np.ndarray:
    """Codes (int64, ``weight``'s shape) on the grid ``code * step`` that minimize the layer output error.

    ``weight``: ``[out, in...]`` (flattened to ``[out, in]`` matching ``hessian``, ``[in, in]``); ``step``: a
    scalar or one per output row. ``damp`` adds that fraction of the mean diagonal to ``H`` (numerical
    stability); ``lam`` and ``rate`` make each rounding rate-aware.
    """
    lam = check_lambda(lam)
    if not 0 <= damp < 10:
        raise ConfigError(f"damp must be in [0, 10), got {damp!r}")
    shape = weight.shape
    w = torch.as_tensor(np.asarray(weight, dtype=np.float64).reshape(shape[0], -1)).clone()
    n = w.shape[1]
    if hessian.shape != (n, n):
        raise ConfigError(f"Hessian of shape {tuple(hessian.shape)} does not match a weight with {n} inputs")
    s = torch.as_tensor(np.broadcast_to(np.asarray(step, dtype=np.float64).reshape(-1), (shape[0],)).copy())
    h = hessian.to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * float(torch.mean(torch.diag(h))) * torch.eye(n, dtype=torch.float64)
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError:  # not positive definite even damped: plain rounding
        log.warning("Hessian not positive definite; plain rounding for this layer")
        return choose(w.numpy() / s.numpy()[:, None], rate, lam, qmin, qmax).reshape(shape)
    codes = np.empty((shape[0], n), dtype=np.int64)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].clone()
        err = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            q = torch.from_numpy(choose((col / s).numpy(), rate, lam, qmin, qmax))
            codes[:, i1 + i] = q.numpy()
            e = (col - q.to(torch.float64) * s) / u1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * u1[i, i:].unsqueeze(0)
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return codes.reshape(shape)

"""End-to-end refinement of codes on a fixed grid: the codes that make the whole model's output closest.

Rounding each tensor alone (nearest, or GPTQ per layer) ignores how the errors of different tensors add up
at the model's output. Here every quantized parameter gets a latent value ``u`` in units of its step (one
step per tensor or per output channel; the grid never changes), starting where its current codes are
(``round(u) = code``, with the float weight's offset inside the step). The model runs with weights
``step * round(u)``; the gradient passes the rounding unchanged (straight-through estimator), and the
loss is the squared output error against the float model's outputs on the calibration batches,
``sum((y - y_ref)^2) / sum(y_ref^2)``. Each step moves every tensor's latents by ``lr`` times its gradient
divided by the gradient's root mean square over that tensor's elements with a gradient (so ``lr`` is in
steps for a typical element; elements with a small gradient barely move; rows of an embedding table that
the batch did not use stay), with ``lr`` decaying linearly to 0 over the steps (at a
constant rate the last steps keep flipping codes, and the output error ends up above plain rounding's on
small test models). The result is ``round(u)``: codes on the same grid, decoded
by the same decoder, kept only when their output error on the first ``CHECK_BATCHES`` calibration batches
is below that of the codes the refinement started from (otherwise those are returned).

Cost: ``steps`` forward + backward passes of the model, one calibration batch each, and up to
2 x ``CHECK_BATCHES`` forward passes for the check.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checks import is_int, is_number
from ..errors import ConfigError

__all__ = ["refine_codes", "check_refine"]

log = logging.getLogger(__name__)

#: calibration batches on which the refined codes must beat the codes they started from, else those are kept
CHECK_BATCHES = 4


def check_refine(steps: Any, lr: Any) -> tuple[int, float]:
    """``(steps, lr)`` validated: ``steps`` an int >= 0, ``lr`` a number in (0, 1] (steps of the grid)."""
    if not is_int(steps) or steps < 0:
        raise ConfigError(f"refine_steps must be an integer >= 0, got {steps!r}")
    if not is_number(lr) or not 0 < lr <= 1 or not math.isfinite(lr):
        raise ConfigError(f"refine_lr must be a number in (0, 1] (grid steps), got {lr!r}")
    return steps, float(lr)


class _Call(nn.Module):
    """``forward(model, batch)`` as a module, so that :func:`torch.func.functional_call` can swap weights."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model = model
        self.fn = forward

    def forward(self, batch: Any) -> Any:  # noqa: D102
        return self.fn(self.model, batch)


def _output(y: Any) -> torch.Tensor:
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise ConfigError(f"forward must return a float tensor to refine codes, got {type(y).__name__}")
    return y


def refine_codes(model: nn.Module, start: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 batches: Sequence[Any], forward: Callable[[nn.Module, Any], Any], *, steps: int,
                 lr: float = 0.01, progress: bool = False) -> dict[str, np.ndarray]:
    """Refined int64 codes ``{parameter name: codes}`` for ``start = {name: (codes, step, float values)}``
    (``step`` broadcastable to the values: a scalar or one per output channel). Names must be parameters of
    ``model`` (as ``named_parameters`` gives them); the model itself is left unchanged."""
    steps, lr = check_refine(steps, lr)
    params = dict(model.named_parameters())
    unknown = sorted(set(start) - set(params))
    if unknown:
        raise ConfigError(f"refine_codes: not parameters of the model: {unknown[:5]}")
    if steps == 0 or not start:
        return {n: np.asarray(c, dtype=np.int64) for n, (c, _, _) in start.items()}
    dtype = next(iter(params.values())).dtype if params else torch.float32
    latents: dict[str, torch.Tensor] = {}
    scale: dict[str, torch.Tensor] = {}
    for name, (codes, step, x) in start.items():
        step = np.asarray(step, dtype=np.float64)
        ratio = x / step
        offset = np.clip(ratio - np.rint(ratio), -0.49, 0.49)
        latents[name] = torch.as_tensor(codes.astype(np.float64) + offset, dtype=dtype).requires_grad_(True)
        scale[name] = torch.as_tensor(np.broadcast_to(step, x.shape).copy()).to(params[name].dtype)
    call = _Call(model, forward)
    was = model.training
    model.eval()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="refine codes", unit="step", leave=False)
    try:
        with torch.no_grad():
            refs = [_output(forward(model, b)).detach() for b in batches]
        for it in range(steps):
            k = it % len(batches)
            weights = {"model." + n: scale[n] * (u + (torch.round(u) - u).detach()) for n, u in latents.items()}
            y = _output(torch.func.functional_call(call, weights, (batches[k],)))
            ref = refs[k]
            loss = ((y - ref) ** 2).sum() / (ref ** 2).sum().clamp_min(1e-30)
            for u in latents.values():
                u.grad = None
            loss.backward()
            with torch.no_grad():
                rate = lr * (1 - it / steps)  # linear decay to 0: the last steps only settle the codes
                for u in latents.values():
                    g = u.grad
                    if g is None:
                        continue
                    touched = g != 0  # rows of an embedding table the batch did not use have no gradient
                    rms = g[touched].pow(2).mean().sqrt() if bool(touched.any()) else g.new_zeros(())
                    if rms > 0 and torch.isfinite(rms):
                        u -= rate * g / rms
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3g}")
            log.debug("refine step %d: output error %.4g", it, float(loss.detach()))
        refined = {n: torch.round(u.detach()) for n, u in latents.items()}
        initial = {n: torch.as_tensor(c, dtype=dtype) for n, (c, _, _) in start.items()}
        check = list(range(min(CHECK_BATCHES, len(batches))))
        before, after = (_error(call, codes, scale, batches, refs, check) for codes in (initial, refined))
    finally:
        model.train(was)
        if bar is not None:
            bar.close()
    log.info("refined codes: output error %.4g -> %.4g on %d calibration batches%s", before, after, len(check),
             "" if after < before else "; keeping the codes it started from")
    chosen = refined if after < before else initial
    return {n: c.to(torch.int64).numpy() for n, c in chosen.items()}


@torch.no_grad()
def _error(call: nn.Module, codes: Mapping[str, torch.Tensor], scale: Mapping[str, torch.Tensor],
           batches: Sequence[Any], refs: Sequence[torch.Tensor], which: Sequence[int]) -> float:
    """Output error of ``codes`` on the batches ``which``: sum of squared differences / sum of squares."""
    weights = {"model." + n: scale[n] * c.to(scale[n].dtype) for n, c in codes.items()}
    num = den = 0.0
    for k in which:
        y = _output(torch.func.functional_call(call, weights, (batches[k],)))
        num += float(((y - refs[k]) ** 2).sum())
        den += float((refs[k] ** 2).sum())
    return num / max(den, 1e-30)

"""Optimizer-based pruning (seed 002, optimizer based pruner): an L1 penalty applied by proximal steps.

While a :class:`ProximalPruner` is active, every optimizer step (of any optimizer: the hook is global) is
followed, for the tracked conv / linear weights, by the proximal map of ``strength * |w|``::

    w <- sign(w) * max(|w| - lr * strength, 0)

with ``lr`` the learning rate of the parameter's group. Weights the task loss does not hold away from
zero land exactly on zero, so the penalty decides how many are pruned (no target fraction). Afterwards
:meth:`masks` gives 0/1 masks of the zeros, for :func:`nncodec.prune.unstructured.apply_masks`, which
keeps them zero through fine-tuning. Layers already masked keep their mask (the map runs on the raw
weight; the mask zeroes it again in the forward pass).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .unstructured import prunable_layers

__all__ = ["ProximalPruner"]


class ProximalPruner:
    """Context manager: L1 proximal steps on the weights of ``model``'s conv / linear layers.

    ``strength``: the L1 weight (1/unit of the task loss); ``layers``: restrict to these module names.
    """

    def __init__(self, model: nn.Module, strength: float, layers: "list[str] | None" = None):
        if not strength >= 0:
            raise ConfigError(f"proximal pruning strength must be >= 0, got {strength!r}")
        found = prunable_layers(model)
        names = list(found) if layers is None else list(layers)
        missing = [n for n in names if n not in found]
        if missing:
            raise ConfigError(f"proximal pruning: {missing} are not conv / linear layers of the model")
        self.model, self.strength, self.names = model, float(strength), names
        self._tracked = {id(found[n].weight): found[n].weight for n in names}
        self._handle: Any = None
        self.steps = 0

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for group in optimizer.param_groups:
                shrink = float(group.get("lr", 0.0)) * self.strength
                if shrink <= 0:
                    continue
                for p in group["params"]:
                    if id(p) in self._tracked:
                        p.copy_(torch.sign(p) * torch.clamp(p.abs() - shrink, min=0.0))
        self.steps += 1

    def __enter__(self) -> "ProximalPruner":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self._after_step)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def masks(self) -> dict[str, torch.Tensor]:
        """0/1 masks of the nonzero weights of the tracked layers (masks already installed included)."""
        out = {}
        for name in self.names:
            mod = self.model.get_submodule(name)
            w = mod.weight.detach()
            mask = getattr(mod, "weight_mask", None)
            keep = (w != 0).to(w.dtype) * (mask if mask is not None else 1.0)
            if not keep.any():  # a layer must keep a path through it
                keep.view(-1)[int(w.abs().argmax())] = 1.0
            out[name] = keep
        return out

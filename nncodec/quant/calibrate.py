"""Calibration of activation ranges from a small data sample (statistics of tensors, seed 002).

Fixed-point activation quantizers (``quantized_relu``, ``quantized_bits``) cover ``[0, 2**integer)`` or
``(-2**integer, 2**integer)``; calibration picks the smallest ``integer`` whose range holds the chosen
percentile of the observed values, so no code range is wasted and nothing important clips.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn

from .base import get_quantizer
from .fixed_point import QuantizedBits, QuantizedRelu
from .layers import QActivation

__all__ = ["calibrate_activations"]

log = logging.getLogger(__name__)


@torch.no_grad()
def calibrate_activations(model: nn.Module, x: "np.ndarray | torch.Tensor", *, percentile: float = 99.99,
                          batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Set ``integer`` of every fixed-point ``QActivation`` in ``model`` from the data ``x``.

    Returns ``{module name: {"range": observed percentile of |value|, "integer": chosen integer bits}}``.
    """
    xs = torch.as_tensor(x)
    targets = {n: m for n, m in model.named_modules()
               if isinstance(m, QActivation) and isinstance(m.quantizer, (QuantizedRelu, QuantizedBits))}
    samples: dict[str, list[torch.Tensor]] = {n: [] for n in targets}
    hooks = []
    for name, mod in targets.items():
        def pre(module: nn.Module, args: tuple, name: str = name) -> None:
            v = args[0]
            if module.base is not None:
                v = module.base(v)
            samples[name].append(v.detach().abs().reshape(-1).float())
        hooks.append(mod.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(xs), batch_size):
            model(xs[start:start + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    result = {}
    for name, mod in targets.items():
        if not samples[name]:
            continue
        values = torch.cat(samples[name])
        rng = float(torch.quantile(values[:1_000_000], percentile / 100.0)) if values.numel() else 0.0
        q = mod.quantizer
        limit = q.bits if isinstance(q, QuantizedRelu) else q.bits - int(q.keep_negative)
        integer = 0 if rng <= 1.0 else min(limit, math.ceil(math.log2(rng)))
        cfg = q.get_config()
        cfg["integer"] = integer
        mod.quantizer = get_quantizer(f"{q.name}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})")
        result[name] = {"range": rng, "integer": integer}
        log.info("calibrated %s: range %.4g -> integer=%d", name, rng, integer)
    return result

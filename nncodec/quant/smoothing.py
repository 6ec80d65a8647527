"""Scale migration (SmoothQuant): move a norm's per-channel outliers into the Linear layers that read it.

A norm with an affine output ``y = gamma * z + beta`` whose output feeds only Linear layers can emit
``y / s`` instead (``gamma / s``, ``beta / s``) while each consumer multiplies its input columns by ``s``
(``W[:, j] * s_j``): the model computes the same function, but the activation a per-tensor quantizer sees
has its outlier channels divided down, and the weights (quantized per output channel) absorb them. With
``s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)`` (``X``: the norm's output on sample inputs, ``W``: all its
consumers' weights) ``alpha`` sets the balance: 1 moves the activation's whole range into the weights,
0 the weights' column ranges into the activation (``s_j = 1 / max|W_:j|``, not the identity), 0.5 splits
it evenly.

The transform needs the norm's output to go to Linear layers only (pre-norm transformers), each called
once in the forward: a Linear applied again elsewhere (weight sharing, or a second input) would see its
other inputs scaled too. In a post-norm
block (BERT) every norm output is also a residual summand: scaling it would change the sum, so such norms
are reported as not eligible, never transformed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checks import is_int, is_number
from ..errors import ConfigError
from .layers import tied_weights

__all__ = ["ScaleMigration", "migrate_scales", "norm_consumers"]

log = logging.getLogger(__name__)

#: scales are clamped to [MIN_SCALE, 1 / MIN_SCALE] (a dead channel must not divide by zero)
MIN_SCALE = 1e-5


@dataclass
class ScaleMigration:
    """What :func:`migrate_scales` did: per migrated norm, its scale ``s`` (float tensor, one per channel)
    and the Linear layers that took it; per norm left alone, why."""

    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _affine_channels(module: nn.Module) -> int | None:
    """Channels of a norm whose affine weight is one value per channel of the last axis (LayerNorm over the
    last axis, RMSNorm), else None."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1:
        return None
    shape = getattr(module, "normalized_shape", None)
    if shape is not None and len(tuple(shape)) != 1:
        return None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return None  # channel axis 1, folded elsewhere (quant.layers.fold_batch_norm)
    return int(weight.numel())


def norm_consumers(model: nn.Module, example_inputs: Any) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``({norm: [Linear consumers]}, {norm: reason it is not eligible})`` from the exported graph of
    ``model`` on ``example_inputs``: a norm is eligible when it has an affine weight per channel of its
    output's last axis and every consumer of its output is a Linear layer reading that axis."""
    from ..energy.graph import capture_graph

    modules = dict(model.named_modules())
    was = model.training
    model.eval()
    try:
        ops = capture_graph(model, example_inputs)
    finally:
        model.train(was)
    readers: dict[str, list] = {}
    calls: dict[str | None, int] = {}  # forward calls per module: a consumer called again reads other inputs
    for op in ops:
        calls[op.module] = calls.get(op.module, 0) + 1
        for src in op.inputs:
            readers.setdefault(src, []).append(op)
    eligible, skipped = {}, {}
    tied = set(tied_weights(model))
    for op in ops:
        if op.kind != "norm" or op.module not in modules:
            continue
        name, norm = op.module, modules[op.module]
        channels = _affine_channels(norm)
        if channels is None or not op.output_shape or op.output_shape[-1] != channels:
            skipped[name] = "no affine weight per channel of the last axis"
            continue
        if name in eligible or name in skipped:
            skipped[name] = "applied more than once in the forward"
            eligible.pop(name, None)
            continue
        users = readers.get(op.name, [])
        bad = [u for u in users if not (u.kind == "dense" and isinstance(modules.get(u.module), nn.Linear)
                                        and modules[u.module].in_features == channels)]
        if not users or op.is_output:
            skipped[name] = "its output is a model output"
        elif bad:
            skipped[name] = f"its output also feeds {bad[0].kind} {bad[0].name!r} (not only Linear layers)"
        elif any(u.module in tied for u in users):  # the steps would rescale the weight other layers share
            shared = next(u.module for u in users if u.module in tied)
            skipped[name] = f"its consumer {shared!r} has a weight tied to another layer's"
        elif any(calls[u.module] > 1 for u in users):
            shared = next(u.module for u in users if calls[u.module] > 1)
            skipped[name] = f"its consumer {shared!r} is called more than once in the forward (it reads other inputs)"
        else:
            eligible[name] = sorted({u.module for u in users})
    return eligible, skipped


@torch.no_grad()
def _channel_max(model: nn.Module, names: Iterable[str], batches: Iterable[Any]) -> dict[str, torch.Tensor]:
    """Largest |output| per channel (last axis) of each named module over the batches."""
    modules = dict(model.named_modules())
    found: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            m = out.detach().abs().reshape(-1, out.shape[-1]).amax(0).float()
            found[name] = m if name not in found else torch.maximum(found[name], m)
        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    was = model.training
    model.eval()
    try:
        for batch in batches:
            model(*batch) if isinstance(batch, tuple) else model(batch)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return found


@torch.no_grad()
def migrate_scales(model: nn.Module, sample_inputs: Any, *, alpha: float = 0.5, norms: Iterable[str] | None = None,
                   batch_size: int = 32) -> ScaleMigration:
    """Apply scale migration in place to ``model`` (see the module docstring) and return what it did.

    ``sample_inputs``: a tensor or tuple of tensors (first dimension = examples) the channel ranges are
    measured on, in batches of ``batch_size``; its first example is the export example. ``alpha`` in [0, 1].
    ``norms``: the norm modules to migrate (each must be eligible, else ConfigError); None: every eligible
    one (ConfigError when there is none). Run it before activation ranges are fitted
    (``SearchSpace.from_model``) so that they see the migrated outputs.
    """
    if not is_number(alpha) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"scale migration: alpha must be a number in [0, 1], got {alpha!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"scale migration: batch_size must be a positive integer, got {batch_size!r}")
    sample = (sample_inputs,) if isinstance(sample_inputs, torch.Tensor) else tuple(sample_inputs)
    if not sample or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 and len(t) == len(sample[0]) and len(t)
                             for t in sample):
        raise ConfigError("scale migration: sample_inputs must be a tensor or a tuple of tensors with the same "
                          "number (>= 1) of examples")
    eligible, skipped = norm_consumers(model, tuple(t[:1] for t in sample))
    if norms is None:
        if not eligible:
            reasons = "; ".join(f"{n}: {r}" for n, r in skipped.items()) or "the model has no norm layers"
            raise ConfigError(f"scale migration: no norm feeds only Linear layers ({reasons})")
        chosen = dict(eligible)
    else:
        chosen = {}
        for name in norms:
            if name not in eligible:
                why = skipped.get(name, "not a norm layer of the model's forward")
                raise ConfigError(f"scale migration: norm {name!r} cannot be migrated: {why}")
            chosen[name] = eligible[name]
    n = len(sample[0])
    batches = [tuple(t[i:i + batch_size] for t in sample) for i in range(0, n, batch_size)]
    act_max = _channel_max(model, chosen, batches)
    modules = dict(model.named_modules())
    result = ScaleMigration(skipped={k: v for k, v in skipped.items() if k not in chosen})
    for name, users in chosen.items():
        norm = modules[name]
        w_max = torch.stack([modules[u].weight.detach().abs().amax(0).float() for u in users]).amax(0)
        x_max = act_max[name].clamp_min(MIN_SCALE)
        s = (x_max.pow(alpha) / w_max.clamp_min(MIN_SCALE).pow(1.0 - alpha)).clamp(MIN_SCALE, 1.0 / MIN_SCALE)
        norm.weight.div_(s.to(norm.weight.dtype))
        if getattr(norm, "bias", None) is not None:
            norm.bias.div_(s.to(norm.bias.dtype))
        for u in users:
            modules[u].weight.mul_(s.to(modules[u].weight.dtype))
        result.scales[name], result.consumers[name] = s, list(users)
        log.info("scale migration: %s -> %s (scales %.3g..%.3g)", name, ", ".join(users), float(s.min()),
                 float(s.max()))
    return result

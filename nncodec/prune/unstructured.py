"""Unstructured pruning: weight masks held through fine-tuning and quantization.

- :func:`magnitude_masks`: the smallest-magnitude fraction of each layer's weights.
- :func:`global_magnitude_masks`: the smallest-magnitude fraction of all weights, one threshold.
- :func:`std_threshold_masks` (US 2019/0050735): per layer, threshold ``k * std(w)``; the allowed pruning
  error per weight grows with the layer's share of MACs (prune where the compute is); ``k`` starts at
  ``k_start`` and shrinks until the layer's pruning error per weight, ``sum(|w| pruned) / (n * std(w))``,
  is under its allowance.
- :func:`balanced_masks` (US 2020/0097830): weights of each output row split into groups of ``group``
  consecutive inputs, and every group keeps the same number of largest weights, so parallel hardware
  lanes get equal work.

:func:`apply_masks` stores a mask as the ``weight_mask`` buffer of a fake-quant layer (a plain layer is
wrapped first) and zeroes the masked weights; forward passes use ``weight * weight_mask``, so the zeros
hold through training, and quantizers that can represent zero keep them zero.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..checks import is_int
from ..errors import ConfigError
from ..quant.layers import _WRAPPERS, _QuantWeights, _wrap, read_without_call, tied_weights
from ..quant.plan import LayerPlan

__all__ = ["magnitude_masks", "global_magnitude_masks", "std_threshold_masks", "balanced_masks", "apply_masks", "sparsity", "prunable_layers"]


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv / linear layers whose forward applies a mask (not those a parent reads without calling them,
    such as ``nn.MultiheadAttention``'s ``out_proj``)."""
    unread = read_without_call(model)
    layers = {n: m for n, m in model.named_modules() if n and (type(m) in _WRAPPERS or isinstance(m, tuple(_WRAPPERS)))
              and n not in unread}
    ties = tied_weights(model)
    return {n: m for n, m in layers.items() if not _untied_by_mask(n, layers, ties)}


def _untied_by_mask(name: str, layers: dict[str, nn.Module], ties: dict[str, list[str]]) -> list[str]:
    """The modules sharing ``name``'s weight that cannot hold its mask (an embedding table tied to an output
    projection): a mask there would let the two uses of one tensor diverge in training."""
    return [o for o in ties.get(name, []) if o not in layers]


def _weight(m: nn.Module) -> torch.Tensor:
    return (m.masked_weight() if isinstance(m, _QuantWeights) else m.weight).detach()


def magnitude_masks(model: nn.Module, amount: "float | dict[str, float]") -> dict[str, torch.Tensor]:
    """Masks removing the ``amount`` (0..1) smallest-magnitude weights of each conv / linear layer."""
    masks = {}
    for name, mod in prunable_layers(model).items():
        a = amount.get(name, 0.0) if isinstance(amount, dict) else amount
        if not 0.0 <= a < 1.0:
            raise ConfigError(f"pruning amount of {name!r} must be in [0, 1), got {a}")
        w = _weight(mod).abs().reshape(-1)
        k = int(a * w.numel())
        mask = torch.ones_like(w)
        if k:
            mask[torch.argsort(w)[:k]] = 0.0
        masks[name] = mask.reshape(mod.weight.shape)
    return masks


def global_magnitude_masks(model: nn.Module, amount: float, *, relative: bool = False,
                           keep_per_channel: int = 1) -> dict[str, torch.Tensor]:
    """Masks removing the ``amount`` smallest-magnitude weights of all conv / linear layers together.

    One threshold for the whole model: large layers with small weights (a wide classifier) lose the
    most, small early layers the least, which is what shrinks the stored model fastest. ``relative``: each
    layer's magnitudes are divided by the layer's root mean square first, so the threshold does not depend
    on a layer's scale; for layers followed by a batch norm (whose output does not change when the
    weights are scaled), absolute magnitudes say nothing across layers and can remove nearly all of
    a layer whose weights happen to be small (a 1x1 projection of a MobileNet block: the network dies).

    ``keep_per_channel``: every output channel (row of the weight's first axis) keeps at least its this many
    largest-magnitude weights, so the total sparsity can fall a little short of ``amount`` (0: no floor).
    One threshold empties whole channels of layers with few weights per channel (a depthwise 3x3 conv has
    9): an emptied channel feeding a batch norm has zero variance, its folded scale ``weight / sqrt(eps)`` is
    hundreds of times the others', and a per-tensor quantization step of the folded scales then rounds every
    other channel's scale to a few codes (measured on a MobileNetV2-style net at 60-80 %: the net collapsed
    to chance and fine-tuning did not recover it).
    """
    if not is_int(keep_per_channel) or keep_per_channel < 0:
        raise ConfigError(f"keep_per_channel must be an integer >= 0, got {keep_per_channel!r}")
    if not 0.0 <= amount < 1.0:
        raise ConfigError(f"pruning amount must be in [0, 1), got {amount}")
    layers = prunable_layers(model)
    if not layers or amount == 0.0:
        return {n: torch.ones_like(m.weight) for n, m in layers.items()}
    scores = {}
    first: dict[int, str] = {}  # a weight tied across layers: ranked once, one mask for all its layers
    for n, m in layers.items():
        if id(m.weight) in first:
            continue
        first[id(m.weight)] = n
        w = _weight(m).abs()
        if relative:
            w = w / w.pow(2).mean().sqrt().clamp_min(torch.finfo(w.dtype).tiny)
        scores[n] = w
    all_w = torch.cat([w.reshape(-1) for w in scores.values()])
    k = int(amount * all_w.numel())
    threshold = torch.kthvalue(all_w, k).values if k else torch.tensor(-1.0)
    masks = {}
    for n, w in scores.items():
        mask = (w > threshold).float().contiguous()  # a view below, whatever the weight's memory format
        if keep_per_channel:
            rows, flat = mask.reshape(w.shape[0], -1), w.reshape(w.shape[0], -1)
            top = torch.topk(flat, min(keep_per_channel, flat.shape[1]), dim=1).indices
            rows.scatter_(1, top, 1.0)
        masks[n] = mask
    return {n: masks[first[id(m.weight)]] for n, m in layers.items()}


def std_threshold_masks(model: nn.Module, macs: dict[str, int], *, error_per_weight: float = 0.05,
                        k_start: float = 2.0, decay: float = 0.9, max_rounds: int = 100) -> dict[str, torch.Tensor]:
    """Masks by a per-layer ``k * std`` threshold with a MAC-share error allowance (module docstring).

    ``macs`` gives each layer's multiply-accumulate count (e.g. from the energy report's ``operations``);
    ``error_per_weight`` is the allowance of the layer with the largest MAC share, relative to std(w).
    """
    total = max(macs.values(), default=0)
    if total <= 0:
        raise ConfigError("std_threshold_masks needs positive MAC counts per layer")
    masks = {}
    layers = prunable_layers(model)
    tied_macs: dict[int, int] = {}  # a weight tied across layers: one mask, for the MACs of all its layers
    for name, mod in layers.items():
        tied_macs[id(mod.weight)] = tied_macs.get(id(mod.weight), 0) + macs.get(name, 0)
    done: dict[int, torch.Tensor] = {}
    for name, mod in layers.items():
        if name not in macs:
            continue
        if id(mod.weight) in done:
            masks[name] = done[id(mod.weight)]
            continue
        w = _weight(mod)
        std = float(w.std()) or 1.0
        allowance = error_per_weight * min(total, tied_macs[id(mod.weight)]) / total
        k = k_start
        for _ in range(max_rounds):
            pruned = w.abs() < k * std
            err = float(w.abs()[pruned].sum()) / (w.numel() * std)
            if err <= allowance:
                break
            k *= decay
        else:
            pruned = torch.zeros_like(w, dtype=torch.bool)
        masks[name] = done[id(mod.weight)] = (~pruned).float()
    return masks


def balanced_masks(model: nn.Module, amount: float, group: int = 8) -> dict[str, torch.Tensor]:
    """Masks keeping ``round(group * (1 - amount))`` largest weights in every group of ``group`` inputs."""
    if not 0.0 <= amount < 1.0 or group < 1:
        raise ConfigError("balanced pruning needs 0 <= amount < 1 and group >= 1")
    keep_n = max(1, int(round(group * (1 - amount))))
    masks = {}
    for name, mod in prunable_layers(model).items():
        w = _weight(mod).abs().reshape(mod.weight.shape[0], -1)
        n_in = w.shape[1]
        padded = math.ceil(n_in / group) * group
        wp = torch.full((w.shape[0], padded), -1.0)
        wp[:, :n_in] = w
        groups = wp.reshape(w.shape[0], -1, group)
        top = torch.topk(groups, min(keep_n, group), dim=2).indices
        mask = torch.zeros_like(groups).scatter_(2, top, 1.0).reshape(w.shape[0], padded)[:, :n_in]
        masks[name] = mask.reshape(mod.weight.shape)
    return masks


def _with_tied_users(masks: dict[str, torch.Tensor], ties: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """``masks`` with each mask also given to the layers tied to its layer (one tensor, one mask); a
    ConfigError when two tied layers are given different masks."""
    out = dict(masks)
    for name, mask in masks.items():
        for other in ties.get(name, []):
            if other in masks and (masks[other].shape != mask.shape or not torch.equal(masks[other], mask)):
                raise ConfigError(f"masks for {name!r} and {other!r} differ, but their weight is one tied tensor: "
                                  "give tied layers one mask (or mask one of them: the mask applies to all)")
            out.setdefault(other, mask)
    return out


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Install ``masks`` in ``model`` (in place; plain layers become fake-quant layers without quantizers).
    A mask for a layer whose weight is tied to other conv / linear layers is installed in all of them (their
    masks are one: a mask with the ones they already had); different masks for tied layers: ConfigError."""
    unread = read_without_call(model)
    ties = tied_weights(model)
    layers = {n: m for n, m in model.named_modules() if n and isinstance(m, tuple(_WRAPPERS))}
    masks = _with_tied_users(masks, {n: [o for o in ts if o in layers] for n, ts in ties.items() if n in layers})
    for name in masks:  # tied layers keep one mask: what any of them already had, too
        for other in ties.get(name, []):
            old = getattr(layers.get(other), "weight_mask", None)
            if old is not None and old.shape == masks[name].shape:
                masks[name] = masks[name].to(old.dtype) * old
    for name, mask in masks.items():
        mod = model.get_submodule(name)
        if name in unread:
            raise ConfigError(f"cannot mask {name!r}: its parent reads its weight without calling it, so the mask "
                              "would not hold through training")
        untied = _untied_by_mask(name, layers, ties)
        if untied:
            raise ConfigError(f"cannot mask {name!r}: its weight is tied to {untied}, which cannot hold the mask (the "
                              "two uses of one tensor would diverge in training)")
        if mask.shape != mod.weight.shape:
            raise ConfigError(f"mask for {name!r} has shape {list(mask.shape)}, weight {list(mod.weight.shape)}")
        if not isinstance(mod, _QuantWeights):
            new = _wrap(mod, LayerPlan())
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
            mod = new
        old = getattr(mod, "weight_mask", None)
        mask = mask.to(mod.weight.dtype) * (old if old is not None else 1.0)
        mod.register_buffer("weight_mask", mask.contiguous())
        with torch.no_grad():
            mod.weight.mul_(mask)
    return model


def sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of zero weights per conv / linear layer (masks applied)."""
    return {n: 1.0 - float(torch.count_nonzero(_weight(m))) / m.weight.numel() for n, m in prunable_layers(model).items()}

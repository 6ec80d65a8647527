"""Structured pruning and widening: change the number of filters / units of layers, fixing up consumers.

For each resized layer the dependency is found with ``torch.fx``: its output may pass through
channel-wise modules (batch-norm, activations, pooling, dropout, fake-quant activations) and a flatten,
and must end in conv / linear layers, whose input channels (or the flattened feature groups) are then
resized too. Shrinking keeps the strongest filters (largest L1 or L2 norm) in their original order;
widening appends freshly initialised filters whose consumer weights are zero, so a widened network
computes exactly what the original did until it is trained. Anything else on the path (additions,
concatenations, reshapes, the model output) makes the layer non-resizable and raises ConfigError.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ConfigError
from ..quant.layers import QActivation, _QuantWeights

__all__ = ["resize_layers", "resizable_layers", "filter_importance"]

_CHANNELWISE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU,
                nn.Hardtanh, nn.SiLU, nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d,
                nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, QActivation)
_CHANNELWISE_FN = {torch.relu, nn.functional.relu, torch.sigmoid, torch.tanh, nn.functional.gelu,
                   nn.functional.max_pool2d, nn.functional.avg_pool2d, nn.functional.dropout}


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (_QuantWeights, QActivation)) or super().is_leaf_module(m, qualname)


@dataclass
class _Dependency:
    """Who must change when the output channels of ``producer`` change."""

    producer: str
    channelwise: list[str] = field(default_factory=list)        #: batch-norms (and depthwise convs) to slice
    consumers: list[tuple[str, int]] = field(default_factory=list)  #: (module, feature group size)


def _is_resizable_module(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and getattr(m, "groups", 1) == 1


def _trace(model: nn.Module, input_shape: tuple[int, ...]) -> fx.GraphModule:
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable code
        raise ConfigError(f"cannot trace the model with torch.fx ({exc}); width changes need a traceable graph") from None
    gm = fx.GraphModule(model, graph)
    was = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros((1, *input_shape)))
    gm.train(was)
    return gm


def _dependency(gm: fx.GraphModule, producer: str) -> _Dependency:
    modules = dict(gm.named_modules())
    start = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == producer), None)
    if start is None:
        raise ConfigError(f"layer {producer!r} is not called in the model's forward")
    dep = _Dependency(producer)
    channels = start.meta["tensor_meta"].shape[1]
    frontier = [(user, 1) for user in start.users]
    seen = set()
    while frontier:
        node, group = frontier.pop()
        if (node, group) in seen:
            continue
        seen.add((node, group))
        if node.op == "call_module":
            mod = modules[node.target]
            if _is_resizable_module(mod):
                dep.consumers.append((node.target, group))
                continue
            if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and mod.groups == mod.in_channels == mod.out_channels:
                dep.channelwise.append(node.target)  # depthwise: slice it, keep following
            elif isinstance(mod, nn.Flatten):
                shape = node.meta["tensor_meta"].shape
                group = group * (math.prod(shape[1:]) // channels)
            elif isinstance(mod, _CHANNELWISE):
                if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    dep.channelwise.append(node.target)
            else:
                raise ConfigError(f"cannot resize {producer!r}: its output reaches {node.target!r} "
                                  f"({type(mod).__name__}), which nncodec cannot fix up")
        elif node.op == "call_function" and node.target in _CHANNELWISE_FN:
            pass
        elif node.op == "call_function" and node.target is torch.flatten:
            shape = node.meta["tensor_meta"].shape
            group = group * (math.prod(shape[1:]) // channels)
        elif node.op == "output":
            raise ConfigError(f"cannot resize {producer!r}: its output is the model output (it is the classifier)")
        else:
            raise ConfigError(f"cannot resize {producer!r}: its output reaches {node.op} {node.target!r}, which "
                              "nncodec cannot fix up")
        frontier.extend((user, group) for user in node.users)
    if not dep.consumers:
        raise ConfigError(f"cannot resize {producer!r}: no conv or linear layer consumes its output")
    return dep


def resizable_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the conv / linear layers whose width can change (the classifier and odd paths excluded)."""
    gm = _trace(model, input_shape)
    out = []
    for name, mod in model.named_modules():
        if name and _is_resizable_module(mod):
            try:
                _dependency(gm, name)
                out.append(name)
            except ConfigError:
                pass
    return out


def filter_importance(weight: torch.Tensor, norm: str = "l1") -> torch.Tensor:
    """Importance of each output filter: L1 or L2 norm over everything but axis 0."""
    flat = weight.detach().reshape(weight.shape[0], -1).float()
    if norm == "l1":
        return flat.abs().sum(1)
    if norm == "l2":
        return flat.pow(2).sum(1).sqrt()
    raise ConfigError(f"importance must be 'l1' or 'l2', got {norm!r}")


def _index(keep: torch.Tensor, grow: int, group: int = 1) -> tuple[torch.Tensor, int]:
    """Feature indices kept (expanded to groups) and the count of new features appended."""
    if group == 1:
        return keep, grow
    idx = (keep[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
    return idx, grow * group


def _select(t: torch.Tensor, dim: int, idx: torch.Tensor, grow: int, fill: torch.Tensor | float) -> torch.Tensor:
    kept = t.index_select(dim, idx)
    if grow <= 0:
        return kept
    shape = list(t.shape)
    shape[dim] = grow
    extra = fill if isinstance(fill, torch.Tensor) else torch.full(shape, float(fill), dtype=t.dtype)
    return torch.cat([kept, extra.to(t.dtype)], dim)


def _new_filters(module: nn.Module, n: int) -> torch.Tensor:
    w = module.weight
    tmp = torch.empty((n, *w.shape[1:]), dtype=w.dtype)
    nn.init.kaiming_uniform_(tmp, a=math.sqrt(5))
    return tmp


def _rebuild(module: nn.Module, out_sel: tuple[torch.Tensor, int] | None,
             in_sel: tuple[torch.Tensor, int] | None) -> nn.Module:
    new = copy.deepcopy(module)
    with torch.no_grad():
        w = module.weight.detach()
        bias = module.bias.detach() if getattr(module, "bias", None) is not None else None
        mask = getattr(module, "weight_mask", None)
        if in_sel is not None:
            idx, grow = in_sel
            w = _select(w, 1, idx, grow, 0.0)
            if mask is not None:
                mask = _select(mask, 1, idx, grow, 1.0)
        if out_sel is not None:
            idx, grow = out_sel
            fresh = torch.empty((max(grow, 0), *w.shape[1:]), dtype=w.dtype)
            if grow > 0:
                nn.init.kaiming_uniform_(fresh, a=math.sqrt(5))
            w = _select(w, 0, idx, grow, fresh)
            if bias is not None:
                bias = _select(bias, 0, idx, grow, 0.0)
            if mask is not None:
                mask = _select(mask, 0, idx, grow, 1.0)
        new.weight = nn.Parameter(w.contiguous(), requires_grad=module.weight.requires_grad)
        if bias is not None:
            new.bias = nn.Parameter(bias.contiguous(), requires_grad=module.bias.requires_grad)
        if mask is not None:
            new.weight_mask = mask.contiguous()
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = w.shape[0], w.shape[1]
    else:
        new.out_channels, new.in_channels = w.shape[0], w.shape[1] * new.groups
    return new


def _rebuild_channelwise(module: nn.Module, idx: torch.Tensor, grow: int) -> nn.Module:
    new = copy.deepcopy(module)
    with torch.no_grad():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            for pname, fill in (("weight", 1.0), ("bias", 0.0)):
                p = getattr(module, pname)
                if p is not None:
                    setattr(new, pname, nn.Parameter(_select(p.detach(), 0, idx, grow, fill)))
            for bname, fill in (("running_mean", 0.0), ("running_var", 1.0)):
                b = getattr(module, bname)
                if b is not None:
                    setattr(new, bname, _select(b, 0, idx, grow, fill))
            new.num_features = len(idx) + grow
        else:  # depthwise conv
            w = module.weight.detach()
            new.weight = nn.Parameter(_select(w, 0, idx, grow, _new_filters(module, grow) if grow else 0.0))
            if module.bias is not None:
                new.bias = nn.Parameter(_select(module.bias.detach(), 0, idx, grow, 0.0))
            n = len(idx) + grow
            new.in_channels = new.out_channels = new.groups = n
    return new


def resize_layers(model: nn.Module, widths: dict[str, float], input_shape: tuple[int, ...], *,
                  importance: str = "l1") -> nn.Module:
    """A copy of ``model`` with the output width of each named layer multiplied by its factor.

    ``widths`` maps conv / linear layer names to multipliers (0.5 halves the filters, 2 doubles them);
    the new width is ``max(1, round(width * multiplier))``. Consumers and batch-norms are fixed up.
    """
    widths = {k: v for k, v in widths.items() if v != 1.0}
    if not widths:
        return copy.deepcopy(model)
    gm = _trace(model, input_shape)
    modules = dict(model.named_modules())
    out_sel: dict[str, tuple[torch.Tensor, int]] = {}
    in_sel: dict[str, tuple[torch.Tensor, int]] = {}
    chan_sel: dict[str, tuple[torch.Tensor, int]] = {}
    for name, mult in widths.items():
        mod = modules.get(name)
        if mod is None or not _is_resizable_module(mod):
            raise ConfigError(f"{name!r} is not a conv or linear layer of the model")
        if not (isinstance(mult, (int, float)) and mult > 0):
            raise ConfigError(f"width multiplier of {name!r} must be positive, got {mult!r}")
        dep = _dependency(gm, name)
        c = mod.weight.shape[0]
        new_c = max(1, int(round(c * mult)))
        if new_c <= c:
            keep = torch.sort(torch.argsort(filter_importance(mod.weight, importance), descending=True)[:new_c]).values
            grow = 0
        else:
            keep, grow = torch.arange(c), new_c - c
        out_sel[name] = (keep, grow)
        for ch in dep.channelwise:
            chan_sel[ch] = (keep, grow)
        for consumer, group in dep.consumers:
            if consumer in in_sel:
                raise ConfigError(f"{consumer!r} reads from two resized layers; not supported")
            in_sel[consumer] = _index(keep, grow, group)
    result = copy.deepcopy(model)
    for name in set(out_sel) | set(in_sel) | set(chan_sel):
        mod = modules[name]
        new = _rebuild_channelwise(mod, *chan_sel[name]) if name in chan_sel else \
            _rebuild(mod, out_sel.get(name), in_sel.get(name))
        parent_name, _, child = name.rpartition(".")
        setattr(result.get_submodule(parent_name) if parent_name else result, child, new)
    return result

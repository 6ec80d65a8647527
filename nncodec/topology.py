"""The topology unit: a module tree described as JSON, so a model can be rebuilt without its Python class.

Supported: ``nn.Sequential`` containers (nested), Conv1d/Conv2d (depthwise and grouped included), Linear,
BatchNorm1d/2d, ReLU, ReLU6, LeakyReLU, Sigmoid, Tanh, GELU, SiLU, Hardtanh, Softmax, LogSoftmax, Identity,
Dropout, Flatten, Max/AvgPool1d/2d, AdaptiveAvgPool1d/2d, and nncodec's fake-quant layers (QConv1d,
QConv2d, QLinear, QActivation) with their quantizer specs. Shapes are recorded from the modules themselves,
so pruned (narrower or wider) models rebuild as they are. Layer types are looked up in a registry keyed by
stable names, never by import path.

```json
{"format": "nncodec.topology", "version": 1,
 "root": {"type": "Sequential", "children": [["conv", {"type": "Conv2d", "args": {...}}], ...]}}
```
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from torch import nn

from .errors import ConfigError, CorruptError
from .quant.layers import QActivation, QConv1d, QConv2d, QLinear, has_input_steps

__all__ = ["describe", "build", "TopologyError", "SUPPORTED"]


class TopologyError(ConfigError):
    """The model (or a stored topology) uses a layer that cannot be described or rebuilt."""


def _conv_args(m: nn.Module) -> dict[str, Any]:
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size),
            "stride": list(m.stride), "padding": m.padding if isinstance(m.padding, str) else list(m.padding),
            "dilation": list(m.dilation), "groups": m.groups, "bias": m.bias is not None,
            "padding_mode": m.padding_mode}


def _bn_args(m: nn.Module) -> dict[str, Any]:
    return {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine,
            "track_running_stats": m.track_running_stats}


def _pool_args(m: nn.Module) -> dict[str, Any]:
    keys = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "count_include_pad")
    return {k: (list(v) if isinstance(v, tuple) else v) for k in keys if (v := getattr(m, k, None)) is not None}


def _quant_args(m: nn.Module) -> dict[str, Any]:
    return {"kernel": m.kernel_quantizer.spec() if m.kernel_quantizer else None,
            "bias_quantizer": m.bias_quantizer.spec() if m.bias_quantizer else None,
            "output": m.output_quantizer.spec() if m.output_quantizer else None,
            "mask": "weight_mask" in m._buffers}


#: type name -> (class, args of a module)
SUPPORTED: dict[str, tuple[type[nn.Module], Any]] = {
    "Conv1d": (nn.Conv1d, _conv_args),
    "Conv2d": (nn.Conv2d, _conv_args),
    "Linear": (nn.Linear, lambda m: {"in_features": m.in_features, "out_features": m.out_features,
                                      "bias": m.bias is not None}),
    "BatchNorm1d": (nn.BatchNorm1d, _bn_args),
    "BatchNorm2d": (nn.BatchNorm2d, _bn_args),
    "ReLU": (nn.ReLU, lambda m: {}),
    "ReLU6": (nn.ReLU6, lambda m: {}),
    "LeakyReLU": (nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope}),
    "Sigmoid": (nn.Sigmoid, lambda m: {}),
    "Tanh": (nn.Tanh, lambda m: {}),
    "GELU": (nn.GELU, lambda m: {"approximate": m.approximate}),
    "SiLU": (nn.SiLU, lambda m: {}),
    "Hardtanh": (nn.Hardtanh, lambda m: {"min_val": m.min_val, "max_val": m.max_val}),
    "Softmax": (nn.Softmax, lambda m: {"dim": m.dim}),
    "LogSoftmax": (nn.LogSoftmax, lambda m: {"dim": m.dim}),
    "Identity": (nn.Identity, lambda m: {}),
    "Dropout": (nn.Dropout, lambda m: {"p": m.p}),
    "Flatten": (nn.Flatten, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim}),
    "MaxPool1d": (nn.MaxPool1d, _pool_args),
    "MaxPool2d": (nn.MaxPool2d, _pool_args),
    "AvgPool1d": (nn.AvgPool1d, _pool_args),
    "AvgPool2d": (nn.AvgPool2d, _pool_args),
    "AdaptiveAvgPool1d": (nn.AdaptiveAvgPool1d, lambda m: {"output_size": m.output_size}),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, lambda m: {
        "output_size": list(m.output_size) if isinstance(m.output_size, tuple) else m.output_size}),
}
_QUANT = {"QConv1d": (QConv1d, "Conv1d"), "QConv2d": (QConv2d, "Conv2d"), "QLinear": (QLinear, "Linear")}


def _describe(m: nn.Module, where: str) -> dict[str, Any]:
    kind = type(m)
    if kind is nn.Sequential:
        return {"type": "Sequential", "children": [[n, _describe(c, f"{where}.{n}" if where else n)]
                                                   for n, c in m.named_children()]}
    if has_input_steps(m):
        raise TopologyError(f"module {where!r} requantizes its input with per-channel steps, which the topology "
                            "unit cannot describe; decode with nncodec.load_into(your_model, src) instead")
    for name, (cls, base) in _QUANT.items():
        if kind is cls:
            return {"type": name, "args": SUPPORTED[base][1](m), "quant": _quant_args(m)}
    if kind is QActivation:
        return {"type": "QActivation", "quantizer": m.quantizer.spec() if m.quantizer else None,
                "base": _describe(m.base, f"{where}.base") if m.base is not None else None}
    for name, (cls, args) in SUPPORTED.items():
        if kind is cls:
            return {"type": name, "args": args(m)}
    raise TopologyError(f"module {where or '(root)'!r} is a {kind.__name__}, which the topology unit cannot "
                        "describe (supported: nested nn.Sequential of standard layers); decode with "
                        "nncodec.load_into(your_model, src) instead")


def describe(model: nn.Module) -> dict[str, Any]:
    """The topology JSON of ``model`` (raises :class:`TopologyError` naming an unsupported module)."""
    return {"format": "nncodec.topology", "version": 1, "root": _describe(model, "")}


def _tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _build(node: Any, where: str) -> nn.Module:
    if not isinstance(node, dict) or not isinstance(node.get("type"), str):
        raise CorruptError(f"topology node {where!r} is not an object with a type")
    kind = node["type"]
    try:
        if kind == "Sequential":
            children = node.get("children", [])
            return nn.Sequential(OrderedDict((str(n), _build(c, f"{where}.{n}")) for n, c in children))
        if kind == "QActivation":
            base = node.get("base")
            return QActivation(node.get("quantizer"), base=_build(base, f"{where}.base") if base else None)
        args = {k: _tuple(v) for k, v in dict(node.get("args", {})).items()}
        if kind in _QUANT:
            cls, _ = _QUANT[kind]
            q = node.get("quant", {})
            module = cls(**args, kernel_quantizer=q.get("kernel"), bias_quantizer=q.get("bias_quantizer"),
                         output_quantizer=q.get("output"))
            if q.get("mask"):
                import torch

                module.register_buffer("weight_mask", torch.ones_like(module.weight))
            return module
        if kind not in SUPPORTED:
            raise TopologyError(f"topology node {where!r} has unknown layer type {kind!r}")
        return SUPPORTED[kind][0](**args)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise CorruptError(f"topology node {where!r} ({kind}) has invalid arguments: {exc}") from None


def build(topology: dict[str, Any]) -> nn.Module:
    """Rebuild the module tree of a topology (weights uninitialised: load them next)."""
    if topology.get("format") != "nncodec.topology" or topology.get("version") != 1:
        raise TopologyError("unsupported topology format or version (this nncodec reads nncodec.topology v1)")
    return _build(topology.get("root"), "")

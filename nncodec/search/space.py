"""The search space a reference model defines: per layer, quantizers and a width multiplier.

Every conv / linear layer gets a kernel and a bias quantizer from a library, the activation module that
reads its output gets an activation quantizer, and resizable layers get a width multiplier. Layers can
share one choice through glob patterns (``share={"conv*": "convs"}``); ``width_mode="block"`` shares one
width multiplier among all resizable layers. The classifier (and any layer whose output cannot be fixed
up) keeps its width. Quantizer templates may use ``{b}`` (bits) and ``{i}`` (integer bits, fitted to the
reference: the power of two covering the layer's largest weight / 99.99th percentile activation).
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..energy.trace import trace_layers
from ..errors import ConfigError
from ..prune.structured import resizable_layers
from ..quant.base import get_quantizer
from ..quant.plan import LayerPlan, Plan

__all__ = ["SearchSpace", "LayerSpace", "DEFAULT_KERNELS", "DEFAULT_ACTIVATIONS", "DEFAULT_BIASES", "WIDTHS"]

WIDTHS = (0.5, 0.75, 1.0, 1.5, 2.0)
DEFAULT_KERNELS = ("binary(alpha='auto_po2')", "ternary(alpha='auto_po2')", "quantized_po2_zero(4,1)",
                   "quantized_bits({b},{i},1)")
DEFAULT_ACTIVATIONS = ("quantized_relu({b},{i})",)
DEFAULT_BIASES = ("quantized_bits({b},{i},1)",)
#: bit widths tried for templates with {b}, per layer kind and role
DEFAULT_BITS = {"kernel": {"conv": (2, 3, 4, 6, 8), "dense": (2, 3, 4, 6, 8)},
                "activation": {"conv": (2, 3, 4, 6, 8), "dense": (4, 8)},
                "bias": {"conv": (8, 16), "dense": (8, 16)}}


@dataclass
class LayerSpace:
    name: str                 #: conv / linear module
    kind: str                 #: conv or dense
    group: str                #: choices are shared by layers of one group
    kernel: list[str]
    bias: list[str]
    activation_module: str | None
    activation: list[str]
    widths: list[float]


def _int_bits(peak: float) -> int:
    return int(max(-16, min(16, math.ceil(math.log2(peak))))) if peak > 0 else 0


def _expand(templates: tuple[str, ...] | list[str], bits: tuple[int, ...], integer: int) -> list[str]:
    out: list[str] = []
    for t in templates:
        for b in (bits if "{b}" in t else (None,)):
            spec = t.format(b=b, i=integer) if ("{" in t) else t
            get_quantizer(spec)  # validate now
            if spec not in out:
                out.append(spec)
    return out


@dataclass
class SearchSpace:
    layers: list[LayerSpace]
    input_shape: tuple[int, ...]
    width_mode: str = "layer"
    fixed: Plan = field(default_factory=Plan)   #: choices frozen by block search

    @classmethod
    def from_model(cls, model: nn.Module, input_shape: tuple[int, ...], sample: "np.ndarray | torch.Tensor | None" = None,
                   *, kernels: tuple[str, ...] = DEFAULT_KERNELS, activations: tuple[str, ...] = DEFAULT_ACTIVATIONS,
                   biases: tuple[str, ...] = DEFAULT_BIASES, bits: dict[str, dict[str, tuple[int, ...]]] | None = None,
                   widths: tuple[float, ...] = WIDTHS, width_mode: str = "layer", share: dict[str, str] | None = None,
                   keep_width: tuple[str, ...] = ()) -> "SearchSpace":
        """Build the space for ``model``; ``sample`` (a few inputs) fits the activations' integer bits."""
        if width_mode not in ("layer", "block"):
            raise ConfigError(f"width_mode must be 'layer' or 'block', got {width_mode!r}")
        bits = bits or DEFAULT_BITS
        traced = trace_layers(model, tuple(input_shape))
        by_name = {t.name: t for t in traced}
        resizable = set(resizable_layers(model, tuple(input_shape)))
        act_peaks = _activation_peaks(model, [t.name for t in traced if t.kind == "activation"], sample)
        layers = []
        for t in traced:
            if t.kind not in ("conv", "dense"):
                continue
            act = next((c for c in t.consumers if by_name[c].kind == "activation"), None)
            w = t.module.weight.detach()
            w_int = _int_bits(float(w.abs().max()))
            b = getattr(t.module, "bias", None)
            b_int = _int_bits(float(b.detach().abs().max())) if b is not None else 0
            a_int = max(0, _int_bits(act_peaks.get(act, 1.0))) if act else 0
            group = next((g for pat, g in (share or {}).items() if fnmatch.fnmatchcase(t.name, pat)), t.name)
            can_resize = t.name in resizable and not any(fnmatch.fnmatchcase(t.name, p) for p in keep_width)
            layers.append(LayerSpace(
                t.name, t.kind, group,
                _expand(kernels, bits["kernel"][t.kind], w_int),
                _expand(biases, bits["bias"][t.kind], b_int) if b is not None else [],
                act, _expand(activations, bits["activation"][t.kind], a_int) if act else [],
                list(widths) if can_resize else [1.0]))
        if not layers:
            raise ConfigError("the model has no conv or linear layer to search")
        return cls(layers, tuple(input_shape), width_mode)

    # -- parameters -------------------------------------------------------------------------
    def _width_key(self, layer: LayerSpace) -> str:
        return "all.width" if self.width_mode == "block" else f"{layer.group}.width"

    def parameters(self, only: set[str] | None = None) -> dict[str, list[Any]]:
        """Categorical parameters ``{name: choices}`` (``only``: restrict to these layers)."""
        params: dict[str, list[Any]] = {}
        for layer in self.layers:
            if only is not None and layer.name not in only:
                continue
            params.setdefault(f"{layer.group}.kernel", layer.kernel)
            if layer.bias:
                params.setdefault(f"{layer.group}.bias", layer.bias)
            if layer.activation:
                params.setdefault(f"{layer.group}.activation", layer.activation)
            if len(layer.widths) > 1:
                params.setdefault(self._width_key(layer), layer.widths)
        return params

    def plan_from(self, choices: dict[str, Any]) -> Plan:
        """The plan that a set of parameter values describes (layers without a value keep the fixed plan)."""
        plan = Plan(dict(self.fixed.layers), self.fixed.default, dict(self.fixed.widths))
        for layer in self.layers:
            g = layer.group
            if f"{g}.kernel" not in choices:
                continue
            plan.layers[layer.name] = LayerPlan(kernel=choices[f"{g}.kernel"], bias=choices.get(f"{g}.bias"))
            if layer.activation_module and f"{g}.activation" in choices:
                plan.layers[layer.activation_module] = LayerPlan(activation=choices[f"{g}.activation"])
            width = choices.get(self._width_key(layer), 1.0)
            if len(layer.widths) > 1 and width != 1.0:
                plan.widths[layer.name] = float(width)
            else:
                plan.widths.pop(layer.name, None)
        return plan

    def size(self) -> int:
        """Number of distinct candidates."""
        return math.prod(len(v) for v in self.parameters().values())


@torch.no_grad()
def _activation_peaks(model: nn.Module, names: list[str], sample: "np.ndarray | torch.Tensor | None") -> dict[str, float]:
    if sample is None or not names:
        return {}
    peaks: dict[str, float] = {}
    hooks = []
    for name in names:
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name) -> None:
            peaks[name] = float(torch.quantile(output.detach().abs().reshape(-1)[:1_000_000].float(), 0.9999))
        hooks.append(model.get_submodule(name).register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(torch.as_tensor(sample[:256]))
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return peaks

"""Tracing a torch model into the layers the energy model costs, with their shapes and producers."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..quant.layers import QActivation
from .graph import UnsupportedLayerError

__all__ = ["TracedLayer", "trace_layers", "UnsupportedLayerError"]




#: layer kinds: "conv", "dense", "activation", "batchnorm", "pool", "flatten", "passthrough"
_KINDS: list[tuple[tuple[type[nn.Module], ...], str]] = [
    ((nn.Conv1d, nn.Conv2d), "conv"),
    ((nn.Linear,), "dense"),
    ((QActivation, nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.GELU, nn.LeakyReLU, nn.Hardtanh,
      nn.SiLU), "activation"),
    ((nn.BatchNorm1d, nn.BatchNorm2d), "batchnorm"),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d), "pool"),
    ((nn.Flatten,), "flatten"),
    ((nn.Dropout, nn.Identity), "passthrough"),
]


def layer_kind(module: nn.Module) -> str | None:
    for types, kind in _KINDS:
        if isinstance(module, types):
            return kind
    return None


@dataclass
class TracedLayer:
    name: str
    module: nn.Module
    kind: str
    input_shape: tuple[int, ...]        #: without the batch dimension
    output_shape: tuple[int, ...]
    producer: str | None                #: name of the layer whose output this one reads; None: model input
    consumers: list[str] = field(default_factory=list)


def _is_leaf(module: nn.Module) -> bool:
    return isinstance(module, QActivation) or not any(True for _ in module.children())


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[TracedLayer]:
    """Run one forward pass (batch 1, zeros) with hooks and return the layers in execution order.

    A leaf module the energy model does not know raises :class:`UnsupportedLayerError` naming it.
    Operations done in ``forward`` code rather than by modules (``x + y``, ``torch.flatten``) are not seen.
    """
    layers: list[TracedLayer] = []
    producer_of: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # keeps traced outputs alive so their ids stay unique
    hooks = []
    for name, module in model.named_modules():
        if not name or not _is_leaf(module) or any(name.startswith(q + ".") for q, m in model.named_modules()
                                                  if q and isinstance(m, QActivation)):
            continue
        kind = layer_kind(module)
        if kind is None:
            raise UnsupportedLayerError(f"layer {name!r} ({type(module).__name__}) is not supported by the energy "
                                        "model; supported: conv1d/2d, linear, batch-norm, activations, pooling, "
                                        "flatten, dropout")

        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor, name: str = name, kind: str = kind) -> None:
            x = inputs[0]
            producer = producer_of.get(id(x))
            if producer is None and layers and id(x) != id_input[0]:
                producer = layers[-1].name  # produced by forward code: assume the previous layer's output
            layers.append(TracedLayer(name, mod, kind, tuple(x.shape[1:]), tuple(output.shape[1:]), producer))
            producer_of[id(output)] = name
            keep.append(output)

        hooks.append(module.register_forward_hook(hook))
    x = torch.zeros((1, *input_shape))
    id_input = [id(x)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        if layer.producer in by_name:
            by_name[layer.producer].consumers.append(layer.name)
    return layers

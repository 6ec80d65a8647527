"""From a plan to a candidate model: resize (weights inherited, strongest filters kept), then fake-quantize."""

from __future__ import annotations

import copy

from torch import nn

from ..prune.structured import resize_layers
from ..quant.layers import _QuantWeights, quantize_model
from ..quant.plan import Plan

__all__ = ["build_candidate", "deployed_copy", "model_size_bits"]


def build_candidate(reference: nn.Module, input_shape: tuple[int, ...], plan: Plan) -> nn.Module:
    model = resize_layers(reference, plan.widths, input_shape)
    return quantize_model(model, plan, inplace=True)


def deployed_copy(model: nn.Module) -> nn.Module:
    """A copy for weights that already hold their quantized, pruned values (as decoded from a bitstream):
    the weight quantizers and pruning masks of quantized layers are removed; activation quantizers stay."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, _QuantWeights):
            if m.kernel_quantizer is not None and "weight_mask" in m._buffers:
                del m._buffers["weight_mask"]
            m.kernel_quantizer = m.bias_quantizer = None
    return out


def model_size_bits(model: nn.Module) -> int:
    """Parameter storage in bits: each weight / bias at its quantizer's bits (32 when unquantized)."""
    total = 0
    for m in model.modules():
        if isinstance(m, _QuantWeights):
            total += m.weight.numel() * (m.kernel_quantizer.bits if m.kernel_quantizer else 32)
            if m.bias is not None:
                total += m.bias.numel() * (m.bias_quantizer.bits if m.bias_quantizer else 32)
        elif not any(True for _ in m.children()):
            total += sum(p.numel() * 32 for p in m.parameters(recurse=False))
    return total



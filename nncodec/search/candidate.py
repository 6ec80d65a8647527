"""From a plan to a candidate model: resize (weights inherited, strongest filters kept), then fake-quantize."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..prune.structured import resize_layers
from ..quant.layers import _QuantParams, quantize_model
from ..quant.plan import Plan

__all__ = ["build_candidate", "deployed_copy", "model_size_bits"]


def build_candidate(reference: nn.Module, example_inputs: Any, plan: Plan) -> nn.Module:
    """Resize the width groups the plan names (weights inherited), then install its fake quantizers."""
    model = resize_layers(reference, plan.widths, example_inputs)
    return quantize_model(model, plan, inplace=True)


def deployed_copy(model: nn.Module) -> nn.Module:
    """A copy for weights that already hold their quantized, pruned values (as decoded from a bitstream):
    the weight quantizers and pruning masks of quantized layers are removed; activation quantizers stay."""
    out = copy.deepcopy(model)
    for m in out.modules():
        if isinstance(m, _QuantParams):
            if m.kernel_quantizer is not None and "weight_mask" in m._buffers:
                del m._buffers["weight_mask"]
            m.kernel_quantizer = m.bias_quantizer = None
    return out


def model_size_bits(model: nn.Module) -> int:
    """Parameter storage in bits: each weight / bias at its quantizer's bits (32 when unquantized)."""
    total = 0
    for m in model.modules():
        bits = {pname: q.bits for pname, q, _, _ in m.quantized_tensors()} if isinstance(m, _QuantParams) else {}
        total += sum(p.numel() * bits.get(pname, 32) for pname, p in m.named_parameters(recurse=False))
    return total



"""Energy of a torch model, per layer and in total (seed 003 eq. 1, QTools' accounting).

Two modes:

- ``"qtools"`` reproduces QTools 0.9.0 to the pJ: SRAM traffic is counted in whole 64-bit words
  (``ceil(bits/64)`` words at ``P(log2(max(T, min_sram_size)))`` each), each term is rounded to 2
  decimals and the total is truncated to an integer; depthwise convs use QTools' fan-in (k*k*C_in).
- ``"corrected"`` counts SRAM per bit (``bits/64`` words, no ceiling), uses the true depthwise fan-in
  (k*k), costs pooling as additions, and does not round.

The model total sums, per layer class, what QTools sums: conv / dense / flatten / pooling: inputs +
parameters + op cost; activations: outputs; batch-norm: parameters. Layers a plan (or the model's
fake-quant modules) leave unquantized use int8 weights and int32 accumulators and outputs. With
``reference=(weights, accumulators)`` every weight is at the reference type and every product,
accumulator and stored activation at the accumulator type (the seed's reference model).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..quant.layers import QActivation, _QuantWeights
from ..quant.plan import Plan
from .costs import OpCosts
from .operators import QType, make_multiplier, qtype
from .trace import TracedLayer, trace_layers

__all__ = ["estimate_energy", "EnergyReport", "LayerEnergy", "INCLUDED_TERMS"]

log = logging.getLogger(__name__)

#: the terms each layer class contributes to the model total (QTools' include_energy)
INCLUDED_TERMS = {"conv": ("inputs", "parameters", "op_cost"), "dense": ("inputs", "parameters", "op_cost"),
                  "flatten": ("inputs", "parameters", "op_cost"), "pool": ("inputs", "parameters", "op_cost"),
                  "activation": ("outputs",), "batchnorm": ("parameters",)}
MODES = ("qtools", "corrected")
_MEMORIES = ("sram", "dram", "fixed")


@dataclass
class LayerEnergy:
    """Energy terms of one layer, pJ, and what they were computed from."""

    name: str
    kind: str
    inputs: float
    outputs: float
    parameters: float
    op_cost: float
    counted: list[str]
    total: float
    operations: int = 0
    operator: str = ""
    weight: str = ""
    input: str = ""
    output: str = ""
    accumulator_bits: int = 0
    weight_density: float = 1.0


@dataclass
class EnergyReport:
    total_pj: float
    layers: list[LayerEnergy]
    mode: str
    settings: dict[str, Any] = field(default_factory=dict)
    measured_pj: float | None = None

    def to_json(self) -> str:
        return json.dumps({"total_pj": self.total_pj, "measured_pj": self.measured_pj, "mode": self.mode,
                           "settings": self.settings, "layers": [asdict(r) for r in self.layers]}, indent=2)

    def table(self) -> str:
        head = (f"{'layer':14s} {'kind':10s} {'operator':10s} {'ops':>10s} {'inputs':>11s} {'params':>11s} "
                f"{'op cost':>12s} {'outputs':>11s} {'counted':>12s}")
        rows = [head]
        for r in self.layers:
            rows.append(f"{r.name[:14]:14s} {r.kind:10s} {r.operator:10s} {r.operations:10d} {r.inputs:11.2f} "
                        f"{r.parameters:11.2f} {r.op_cost:12.2f} {r.outputs:11.2f} {r.total:12.2f}")
        total = f"{self.total_pj:,.0f}" if self.mode == "qtools" else f"{self.total_pj:,.2f}"
        rows.append(f"total ({self.mode} mode): {total} pJ")
        if self.measured_pj is not None:
            rows.append(f"measured: {self.measured_pj:,.2f} pJ")
        return "\n".join(rows)

    def plot(self, path: str | Path, title: str | None = None) -> Path:
        """Bar chart of the counted energy per layer, stacked by term; written to ``path`` (PNG)."""
        from .plot import plot_report

        return plot_report(self, Path(path), title)


def _memory_bits_cost(bits: float, memory: str, costs: OpCosts, min_sram: float, exact: bool) -> float:
    if memory == "fixed" or bits <= 0:
        return 0.0
    if memory == "dram":
        return costs.dram(bits)
    words = bits / 64 if exact else math.ceil(bits / 64)
    return words * costs.sram_word(bits, min_sram)


def _read(bits: float, is_input_layer: bool, memory: str, io: bool, costs: OpCosts, min_sram: float,
          exact: bool) -> float:
    if is_input_layer:
        memory = "dram" if io else "sram"
    energy = _memory_bits_cost(bits, memory, costs, min_sram, exact)
    if memory == "dram" and io:
        energy += _memory_bits_cost(bits, "sram", costs, min_sram, exact)
    return energy


class _Resolver:
    """Finds the quantizer types of each layer from the reference, the model's Q-modules, or the plan."""

    INT8 = QType("fixed", 8, True, "int8")
    INT32 = QType("fixed", 32, True, "int32")

    def __init__(self, plan: Plan, reference: tuple[str, str] | None):
        self.plan = plan
        self.ref = (qtype(reference[0]), qtype(reference[1])) if reference else None

    def weights(self, name: str, module: nn.Module) -> tuple[QType, QType, QType | None, QType | None]:
        """(kernel, bias, accumulator override, output override)."""
        if self.ref:
            return self.ref[0], self.ref[0], self.ref[1], self.ref[1]
        kernel = bias = out = None
        if isinstance(module, _QuantWeights):
            kernel, bias, out = module.kernel_quantizer, module.bias_quantizer, module.output_quantizer
        else:
            lp = self.plan.resolve(name)
            if lp is not None:
                kernel, bias, out = lp.kernel, lp.bias, lp.activation
        if kernel is None:
            return self.INT8, self.INT8, self.INT32, (qtype(out) if out else self.INT32)
        return qtype(kernel), (qtype(bias) if bias else self.INT8), None, (qtype(out) if out else None)

    def activation(self, name: str, module: nn.Module) -> QType:
        if self.ref:
            return self.ref[1]
        if isinstance(module, QActivation) and module.quantizer is not None:
            return qtype(module.quantizer)
        lp = self.plan.resolve(name)
        if lp is not None and lp.activation:
            return qtype(lp.activation)
        return self.INT32

    def batchnorm(self) -> QType:
        return self.ref[0] if self.ref else self.INT8


def _weight_density(module: nn.Module) -> float:
    w = module.masked_weight() if isinstance(module, _QuantWeights) else module.weight  # type: ignore[union-attr]
    return float(torch.count_nonzero(w)) / w.numel() if w.numel() else 1.0


def _conv_counts(layer: TracedLayer, mode: str) -> tuple[int, int]:
    """(operations, accumulator fan-in) of a conv layer."""
    m: nn.Conv1d | nn.Conv2d = layer.module  # type: ignore[assignment]
    k = math.prod(m.kernel_size)
    cin = layer.input_shape[0]
    out_spatial = math.prod(layer.output_shape[1:])
    depthwise = m.groups == cin and m.groups > 1
    if depthwise:
        ops = k * out_spatial * cin * (m.out_channels // cin if mode == "corrected" else 1)
        fan_in = k if mode == "corrected" else k * cin
    else:
        ops = out_spatial * m.out_channels * k * (cin // m.groups)
        fan_in = k * (cin // m.groups)
    return ops, fan_in


def estimate_energy(model: nn.Module, input_shape: tuple[int, ...], plan: "Plan | dict | str | None" = None, *,
                    reference: tuple[str, str] | None = None, mode: str = "qtools", weights_memory: str = "sram",
                    activations_memory: str = "sram", min_sram_size: float = 0, io_traffic: bool = False,
                    source_quantizer: str = "int8", sparsity_aware: bool = False,
                    op_costs: "OpCosts | dict | str | Path | None" = None,
                    measure: Callable[[nn.Module, tuple[int, ...]], float] | None = None) -> EnergyReport:
    """Estimate the inference energy of ``model`` for one input of ``input_shape`` (no batch dim), pJ.

    ``plan`` gives quantizers for plain layers (the model's own fake-quant modules win); ``reference``
    as ``("int8", "int16")`` costs the reference model instead. Memories: ``"sram"``, ``"dram"`` or
    ``"fixed"`` (free); ``min_sram_size`` in bits; ``io_traffic`` moves model inputs and outputs
    through DRAM. ``sparsity_aware`` skips the MACs and weight reads of zero weights. ``op_costs``
    replaces the Horowitz table (a dict, an :class:`OpCosts`, or a JSON file). ``measure(model,
    input_shape)`` is called once and its value reported as ``measured_pj`` (a cost from real hardware).
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if weights_memory not in _MEMORIES or activations_memory not in _MEMORIES[:2]:
        raise ConfigError("weights_memory must be sram/dram/fixed and activations_memory sram/dram")
    costs = OpCosts.coerce(op_costs)
    exact = mode == "corrected"
    resolver = _Resolver(Plan.coerce(plan), reference)
    source = qtype(source_quantizer)
    layers = trace_layers(model, tuple(input_shape))
    out_type: dict[str, QType] = {}
    rows: list[LayerEnergy] = []

    def rnd(v: float) -> float:
        return v if exact else float(f"{v:.2f}")

    for layer in layers:
        in_t = out_type.get(layer.producer, source) if layer.producer else source
        is_input = layer.producer is None
        is_output = not layer.consumers
        in_bits = math.prod(layer.input_shape) * in_t.bits
        inputs = _read(in_bits, is_input, activations_memory, io_traffic, costs, min_sram_size, exact)
        params = op = 0.0
        ops = 0
        operator = ""
        acc_bits = 0
        density = 1.0
        w_label = ""
        module = layer.module
        if layer.kind in ("conv", "dense"):
            w_t, b_t, acc_override, out_override = resolver.weights(layer.name, module)
            if layer.kind == "conv":
                ops, fan_in = _conv_counts(layer, mode)
            else:
                fan_in = layer.input_shape[-1]
                ops = math.prod(layer.input_shape) * module.out_features  # type: ignore[union-attr]
            has_bias = getattr(module, "bias", None) is not None
            density = _weight_density(module) if sparsity_aware else 1.0
            w_bits = module.weight.numel() * w_t.bits * density  # type: ignore[union-attr]
            params = _memory_bits_cost(w_bits, weights_memory, costs, min_sram_size, exact)
            if has_bias:
                params += _memory_bits_cost(module.bias.numel() * b_t.bits,  # type: ignore[union-attr]
                                            weights_memory, costs, min_sram_size, exact)
            mult = make_multiplier(w_t, in_t)
            operator = mult.operator
            if acc_override is not None:
                acc_t = acc_override
                c1 = mult.cost(costs, as_type=acc_override)
            else:
                c1 = mult.cost(costs)
                if mult.output.is_float:
                    acc_t = mult.output
                else:
                    acc_t = QType("fixed", math.ceil(math.log2(fan_in + int(has_bias))) + mult.output.bits, True)
            c2 = costs.add(acc_t.bits, float_bits=acc_t.bits if acc_t.is_float else None)
            acc_bits = acc_t.bits
            op = ops * density * (c1 + c2)
            this_out = out_override or acc_t
            w_label = w_t.label
        elif layer.kind == "activation":
            this_out = resolver.activation(layer.name, module)
            ops = math.prod(layer.input_shape)
        elif layer.kind == "batchnorm":
            bn_t = resolver.batchnorm()
            channels = layer.input_shape[0]
            n_tensors = 4 if getattr(module, "affine", True) else 2
            params = n_tensors * _memory_bits_cost(channels * bn_t.bits, weights_memory, costs, min_sram_size, exact)
            this_out = resolver.ref[1] if resolver.ref else in_t
            ops = math.prod(layer.input_shape)
            w_label = bn_t.label
        else:  # pool, flatten, passthrough
            this_out = in_t
            ops = math.prod(layer.input_shape)
            if layer.kind == "pool" and exact:
                op = ops * costs.add(in_t.bits, float_bits=in_t.bits if in_t.is_float else None)
        out_type[layer.name] = this_out
        if layer.kind == "passthrough":
            continue
        out_bits = math.prod(layer.output_shape) * this_out.bits
        outputs = _read(out_bits, is_output, activations_memory, io_traffic, costs, min_sram_size, exact)
        terms = {"inputs": rnd(inputs), "outputs": rnd(outputs), "parameters": rnd(params), "op_cost": rnd(op)}
        counted = list(INCLUDED_TERMS[layer.kind])
        rows.append(LayerEnergy(layer.name, layer.kind, terms["inputs"], terms["outputs"], terms["parameters"],
                                terms["op_cost"], counted, sum(terms[t] for t in counted), int(ops), operator,
                                w_label, in_t.label, this_out.label, acc_bits, density))
    total = sum(r.total for r in rows)
    report = EnergyReport(float(int(total)) if not exact else total, rows, mode, {
        "input_shape": list(input_shape), "reference": list(reference) if reference else None,
        "weights_memory": weights_memory, "activations_memory": activations_memory,
        "min_sram_size": min_sram_size, "io_traffic": io_traffic, "source_quantizer": source_quantizer,
        "sparsity_aware": sparsity_aware})
    if measure is not None:
        report.measured_pj = float(measure(model, tuple(input_shape)))
    return report

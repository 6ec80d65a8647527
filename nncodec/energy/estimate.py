"""Energy of a torch model, per operation and in total (seed 003 eq. 1, QTools' accounting), on its
``torch.export`` graph (:mod:`nncodec.energy.graph`): every operation is costed and attributed to its module.

Two modes:

- ``"qtools"`` reproduces QTools 0.9.0 to the pJ: SRAM traffic is counted in whole 64-bit words
  (``ceil(bits/64)`` words at ``P(log2(max(T, min_sram_size)))`` each), each term is rounded to 2
  decimals and the total is truncated to an integer; depthwise convs use QTools' fan-in (k*k*C_in).
- ``"corrected"`` counts SRAM per bit (``bits/64`` words, no ceiling), uses the true depthwise fan-in
  (k*k), costs pooling, norms and copies, and does not round.

The model total sums, per kind, what QTools sums: conv / dense / flatten / pooling (and the kinds QTools
does not have: matmul, attention, embedding, norm, add, mul, recurrent): inputs + parameters + op cost;
activations: outputs; batch-norm: parameters. Layers a plan (or the model's fake-quant modules) leave
unquantized use int8 weights and int32 accumulators and outputs. With ``reference=(weights,
accumulators)`` every weight is at the reference type and every product, accumulator and stored
activation at the accumulator type (the seed's reference model).
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
from ..quant.layers import (QActivation, QLinear, _OutputQuant, _QuantBatchNorm, _QuantParams, _QuantWeights,
                             has_input_steps)
from ..quant.plan import Plan
from .costs import OpCosts
from .operators import Multiplier, QType, make_multiplier, qtype
from .graph import GraphOp, capture_graph, zero_fractions

__all__ = ["estimate_energy", "EnergyReport", "LayerEnergy", "INCLUDED_TERMS", "REQUANT_SCALE", "reference_codes"]

log = logging.getLogger(__name__)

#: the terms each layer class contributes to the model total (QTools' include_energy)
_IPO = ("inputs", "parameters", "op_cost")
INCLUDED_TERMS = {"conv": _IPO, "dense": _IPO, "flatten": _IPO, "pool": _IPO, "activation": ("outputs",),
                  "batchnorm": ("parameters",), "norm": _IPO, "matmul": _IPO, "attention": _IPO, "recurrent": _IPO,
                  "embedding": _IPO, "add": _IPO, "mul": _IPO, "elementwise": _IPO,
                  "concat": ("inputs", "outputs")}
MODES = ("qtools", "corrected")
#: the per-channel multiplier of an input requantization (``QLinear`` input steps): 16-bit fixed point
REQUANT_SCALE = QType("fixed", 16, True, "int16")
_SAME = QType("fixed", 0, True, "same")  # marker: requantized to the input's own type
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
    module: str = ""        #: the module a plan entry for this row is keyed by
    target: str = ""        #: the ATen operator
    input_zero_fraction: float = 0.0  #: measured zeros in the MAC input (``activation_sparsity``)


@dataclass
class EnergyReport:
    total_pj: float
    layers: list[LayerEnergy]
    mode: str
    settings: dict[str, Any] = field(default_factory=dict)
    measured_pj: float | None = None
    memory: Any = None   #: a MemoryReport when asked for (``memory=True``)

    def to_json(self) -> str:
        out = {"total_pj": self.total_pj, "measured_pj": self.measured_pj, "mode": self.mode,
               "settings": self.settings, "layers": [asdict(r) for r in self.layers]}
        if self.memory is not None:
            out["memory"] = asdict(self.memory)
        return json.dumps(out, indent=2)

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

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Counted energy (pJ), operations and row count per operation kind, largest energy first."""
        out: dict[str, dict[str, float]] = {}
        for r in self.layers:
            k = out.setdefault(r.kind, {"pj": 0.0, "operations": 0, "rows": 0})
            k["pj"] += r.total
            k["operations"] += r.operations
            k["rows"] += 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["pj"]))

    def kind_table(self) -> str:
        total = sum(r.total for r in self.layers) or 1.0
        rows = [f"{'kind':12s} {'rows':>5s} {'operations':>14s} {'energy pJ':>16s} {'share':>7s}"]
        for kind, v in self.by_kind().items():
            rows.append(f"{kind:12s} {int(v['rows']):5d} {int(v['operations']):14,d} {v['pj']:16,.0f} "
                        f"{100 * v['pj'] / total:6.1f}%")
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
        if isinstance(module, _QuantParams):
            kernel, bias, out = module.kernel_quantizer, module.bias_quantizer, module.output_quantizer
        else:
            lp = self.plan.resolve(name)
            if lp is not None:
                kernel, bias, out = lp.kernel, lp.bias, lp.activation
        if kernel is None:
            return self.INT8, self.INT8, self.INT32, (qtype(out) if out else self.INT32)
        return qtype(kernel), (qtype(bias) if bias else self.INT8), None, (qtype(out) if out else None)

    def activation(self, name: str, module: nn.Module | None) -> QType:
        if self.ref:
            return self.ref[1]
        if isinstance(module, QActivation) and module.quantizer is not None:
            return qtype(module.quantizer)
        return self.plan_activation(name, module) or self.INT32

    def plan_activation(self, name: str, module: nn.Module | None = None) -> QType | None:
        """The output type the plan gives ``name``, or the output quantizer the module carries (a norm or
        block that :func:`~nncodec.quant.layers.quantize_model` gave one; the module's wins)."""
        if isinstance(module, _OutputQuant) and module.output_quantizer is not None:
            return qtype(module.output_quantizer)
        lp = self.plan.resolve(name)
        return qtype(lp.activation) if lp is not None and lp.activation else None

    def requantized_input(self, name: str, module: nn.Module) -> QType | None:
        """The type a Linear layer requantizes its input to with per-channel steps (:class:`QLinear`
        ``input_quantizer``, or the plan's ``input``), None when it reads its input as produced. A layer
        that keeps only the division by its steps (no input quantizer) requantizes to its input's type."""
        if self.ref:
            return None
        if isinstance(module, QLinear) and has_input_steps(module):
            return qtype(module.input_quantizer) if module.input_quantizer is not None else _SAME
        if isinstance(module, _QuantParams):
            return None
        lp = self.plan.resolve(name)
        return qtype(lp.input) if lp is not None and lp.input else None

    def batchnorm(self, module: nn.Module | None = None) -> QType:
        """Type of a norm's parameters (and of constant operands): a folded batch norm's scale quantizer, else int8."""
        if self.ref:
            return self.ref[0]
        if isinstance(module, _QuantBatchNorm) and module.kernel_quantizer is not None:
            return qtype(module.kernel_quantizer)
        return self.INT8


def _density(tensors: list[torch.Tensor]) -> float:
    """Fraction of nonzero elements over all of ``tensors`` (1.0 when they hold none)."""
    total = sum(t.numel() for t in tensors)
    if total == 0:
        return 1.0
    return sum(float(torch.count_nonzero(t)) for t in tensors) / total


def reference_codes(weight: torch.Tensor, t: QType) -> torch.Tensor:
    """The codes of ``weight`` at the reference's weight type ``t`` as an int8 deployment stores them: one
    symmetric step per slice of dim 0 (the output channel of conv / linear / recurrent weights), the slice's
    largest magnitude at the top code ``2^(b-1) - 1``, ``b`` the bits of a fixed-point ``t`` (8 for a
    power-of-two, ternary or binary ``t``); a float ``t`` keeps the weight (only exact zeros are zero codes)."""
    if t.is_float or weight.dim() == 0:
        return weight
    bits = int(t.bits) if t.kind == "fixed" else 8
    top = 2 ** (max(bits, 2) - 1) - 1
    rows = weight.reshape(weight.shape[0], -1) if weight.dim() > 1 else weight.reshape(1, -1)
    step = rows.abs().amax(dim=1, keepdim=True) / top
    codes = torch.where(step > 0, torch.round(rows / step.clamp_min(torch.finfo(rows.dtype).tiny)),
                        torch.zeros_like(rows))
    return codes.reshape(weight.shape)


def _module(model: nn.Module, op: GraphOp) -> nn.Module:
    if op.quant_module is not None:
        return op.quant_module
    try:
        return model.get_submodule(op.module) if op.module else model
    except AttributeError:
        return model


def _fixed_or_float_add(costs: OpCosts, t: QType) -> float:
    return costs.add(t.bits, float_bits=t.bits if t.is_float else None)


def _follows_operands(in_types: list[QType]) -> QType | None:
    """The stored type of an element-wise operation that has no quantizer of its own (no plan entry, no
    fake-quant module), functional or a module alike: the widest operand type when every operand is a
    quantizer's output (an activation is a lookup on its input's codes, a product or sum is requantized to
    the wider operand's grid, as an int8 deployment does); a float operand makes it float; None (int32,
    QTools' pricing) when an accumulator or another int32 value feeds it."""
    if not in_types:
        return None
    widest = _widest(in_types)
    if widest.is_float:
        return widest
    return widest if all(_quantized(t) for t in in_types) else None


def _quantized(t: QType) -> bool:
    """Is ``t`` a quantizer's output (a plan's or the source's type), not an accumulator or int32?"""
    return bool(t.label) and t is not _Resolver.INT32 and not t.is_float


def _widest(types: list[QType]) -> QType:
    floats = [t for t in types if t.is_float]
    if floats:
        return max(floats, key=lambda t: t.bits)
    return max(types, key=lambda t: t.bits)


def _accumulator(mult: "Multiplier", fan_in: int, has_bias: bool, override: QType | None) -> QType:
    if override is not None:
        return override
    if mult.output.is_float:
        return mult.output
    return QType("fixed", math.ceil(math.log2(max(fan_in, 1) + int(has_bias))) + mult.output.bits, True)


def estimate_energy(model: nn.Module, example_inputs: Any, plan: "Plan | dict | str | None" = None, *,
                    reference: tuple[str, str] | None = None, mode: str = "qtools", weights_memory: str = "sram",
                    activations_memory: str = "sram", min_sram_size: float = 0, io_traffic: bool = False,
                    source_quantizer: str = "int8", sparsity_aware: "bool | str" = False,
                    op_costs: "OpCosts | dict | str | Path | None" = None,
                    measure: Callable[[nn.Module, Any], float] | None = None, memory: bool = False,
                    accumulation_batches: int = 1, conv_algorithm: str = "direct",
                    activation_sparsity: float | None = None,
                    graph: "list[GraphOp] | None" = None) -> EnergyReport:
    """Estimate the inference energy of ``model`` for one example, pJ, from its ``torch.export`` graph.

    ``example_inputs``: an input shape without the batch dimension (float zeros, batch 1), a tensor, or a
    tuple of tensors (token ids, masks, sequences) with a batch of 1. Every operation of the graph is
    costed and attributed to the module that owns it (the module of its weight for conv / dense /
    embedding / recurrent operations), so ``plan`` keys are module names. ``plan`` gives quantizers
    for plain layers (the model's own fake-quant modules win); ``reference`` as ``("int8", "int16")``
    costs the reference model instead. Memories: ``"sram"``, ``"dram"`` or ``"fixed"`` (free);
    ``min_sram_size`` in bits; ``io_traffic`` moves model inputs and outputs through DRAM.
    ``sparsity_aware`` skips the MACs and weight reads of zero weights: ``True`` the weights that are zero
    before quantizing (pruned), ``"codes"`` the weights whose quantized value is zero (pruned, or rounded to
    the zero code: what the decoded model holds; a plan-only estimate of plain layers counts the float zeros,
    so the search's cost surrogate and plan-only estimates count the float model's zeros while the final
    report, priced on the built candidate, counts its codes; with ``reference``, the zero codes of the
    weights at the reference's weight type with one step per output channel scaled to the channel's largest
    magnitude, as an int8 deployment stores them: :func:`reference_codes`). The density of a layer is taken
    over all its weights (an LSTM's input and hidden weights). ``op_costs`` replaces the
    Horowitz table (a dict, an :class:`OpCosts`, or a JSON file). ``measure(model, example_inputs)`` is
    called once and its value reported as ``measured_pj`` (a cost from real hardware). ``memory`` adds a
    :class:`~nncodec.energy.memory.MemoryReport` as ``report.memory`` (peak activation memory in the graph's
    order and in the best order of its branches; ``accumulation_batches`` > 1 prices batched accumulation).

    Seed options, off by default: ``conv_algorithm="winograd"`` costs 3x3 stride-1 convolutions as
    Winograd F(2x2, 3x3): 16 multiply-accumulates per 2x2 output tile and channel pair instead of 36, plus
    32 input-transform additions per tile and input channel and 24 output-transform additions per tile
    and output channel (filters are transformed offline). ``activation_sparsity=t`` (0 <= t < 1) measures
    the fraction z of exact zeros in each MAC operation's input on ``example_inputs`` and, where z >= t,
    skips those MACs (compute-in-memory that skips zero inputs): the op cost is scaled by 1 - z.

    ``graph``: the operations :func:`~nncodec.energy.graph.capture_graph` gave for this ``model`` and
    ``example_inputs``, reused across estimates (a plan changes quantizer types, never the graph; the export
    is most of an estimate's time). Not with ``activation_sparsity``, which measures on a fresh export.
    """
    if sparsity_aware not in (False, True, "codes"):
        raise ConfigError(f"sparsity_aware must be False, True or 'codes', got {sparsity_aware!r}")
    if conv_algorithm not in ("direct", "winograd"):
        raise ConfigError(f"conv_algorithm must be 'direct' or 'winograd', got {conv_algorithm!r}")
    if activation_sparsity is not None and not (isinstance(activation_sparsity, (int, float))
                                                and 0 <= activation_sparsity < 1):
        raise ConfigError(f"activation_sparsity is a threshold in [0, 1), got {activation_sparsity!r}")
    if not isinstance(accumulation_batches, int) or accumulation_batches < 1:
        raise ConfigError(f"accumulation_batches must be a positive int, got {accumulation_batches!r}")
    if accumulation_batches > 1 and not memory:
        raise ConfigError("accumulation_batches applies to the memory report: pass memory=True")
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    if weights_memory not in _MEMORIES or activations_memory not in _MEMORIES[:2]:
        raise ConfigError("weights_memory must be sram/dram/fixed and activations_memory sram/dram")
    costs = OpCosts.coerce(op_costs)
    exact = mode == "corrected"
    plan = Plan.coerce(plan)
    plan.check_names([n for n, _ in model.named_modules() if n])
    resolver = _Resolver(plan, reference)
    source = qtype(source_quantizer)
    if graph is not None and activation_sparsity is not None:
        raise ConfigError("graph= reuses an export; activation_sparsity measures on its own: give one of them")
    program: list = []
    ops = graph if graph is not None else capture_graph(model, example_inputs, program=program,
                                                        weight_quantizers=activation_sparsity is not None)
    zeros: dict[str, float] = {}
    if activation_sparsity is not None:
        zeros = zero_fractions(program[0], example_inputs, {op.args["input_node"] for op in ops
                                                            if "input_node" in op.args})
    winograd = {id(op) for op in ops if conv_algorithm == "winograd" and _winograd_tiles(op)}
    if conv_algorithm == "winograd" and not winograd:
        raise ConfigError("conv_algorithm='winograd' applies to 3x3 stride-1 2-d convolutions; the model has none")
    out_type: dict[str, QType] = {}
    rows: list[LayerEnergy] = []
    accumulators: dict[str, tuple[int, int]] = {}

    def rnd(v: float) -> float:
        return v if exact else float(f"{v:.2f}")

    def mem(bits: float, memory: str) -> float:
        return _memory_bits_cost(bits, memory, costs, min_sram_size, exact)

    for op in ops:
        in_types = [out_type.get(src, source) for src in op.inputs] or [source]
        in_t = in_types[0]
        is_input = any(src.startswith("input:") for src in op.inputs)
        inputs = sum(_read(math.prod(shape) * t.bits, is_input, activations_memory, io_traffic, costs,
                           min_sram_size, exact) for shape, t in zip(op.input_shapes, in_types))
        params = cost = 0.0
        ops_n = op.operations
        operator = w_label = ""
        acc_bits = 0
        density = 1.0
        module = _module(model, op)
        kind = op.kind
        if kind in ("conv", "dense", "recurrent", "embedding"):
            w_t, b_t, acc_override, out_override = resolver.weights(op.module, module)
            weights = [v for r, v in op.params.items() if "bias" not in r]
            biases = [v for r, v in op.params.items() if "bias" in r]
            if isinstance(module, _QuantWeights) and kind in ("conv", "dense"):
                weights = [module.masked_weight()]
                if sparsity_aware == "codes" and module.kernel_quantizer is not None:
                    with torch.no_grad():
                        weights = [module.kernel_quantizer(weights[0]) * (weights[0] != 0)]
            if sparsity_aware == "codes" and resolver.ref and weights and kind != "embedding":
                with torch.no_grad():  # the reference's zero codes: every weight at the reference type
                    weights = [reference_codes(w, resolver.ref[0]) for w in weights]
            density = _density(weights) if (sparsity_aware and weights and kind != "embedding") else 1.0
            if kind == "embedding":
                params = mem(ops_n * w_t.bits, weights_memory)
            else:
                params = sum(mem(w.numel() * w_t.bits * density, weights_memory) for w in weights)
                params += sum(mem(b.numel() * b_t.bits, weights_memory) for b in biases)
            w_label = w_t.label
            requant = resolver.requantized_input(op.module, module) if kind == "dense" else None
            if requant is not None:  # per-channel requantization: one multiply per element, stored at its bits
                requant = in_t if requant is _SAME else requant
                n_in = math.prod(op.input_shapes[0]) if op.input_shapes else 0
                cost += n_in * make_multiplier(REQUANT_SCALE, in_t).cost(costs)
                inputs += 2 * mem(n_in * requant.bits, activations_memory)  # written, then read by the MACs
                in_t = requant
            if kind == "embedding":
                this_out = out_override or (resolver.ref[1] if resolver.ref else w_t)
            else:
                if kind == "conv" and op.depthwise_channels and not exact:
                    fan_in = op.fan_in * op.depthwise_channels  # QTools' depthwise fan-in: k*k*C_in
                    out_ch = op.output_shape[1] if len(op.output_shape) > 1 else op.depthwise_channels
                    ops_n = ops_n * op.depthwise_channels // max(out_ch, 1)
                else:
                    fan_in = op.fan_in
                mult = make_multiplier(w_t, in_t)
                operator = mult.operator
                acc_t = _accumulator(mult, fan_in, bool(biases) and kind != "recurrent", acc_override)
                c1 = mult.cost(costs, as_type=acc_override) if acc_override is not None else mult.cost(costs)
                c2 = _fixed_or_float_add(costs, acc_t)
                acc_bits = acc_t.bits
                accumulators[op.name] = (fan_in, mult.output.bits)
                transform = 0.0
                if id(op) in winograd:
                    tiles, c_in, c_out = _winograd_tiles(op)
                    ops_n = tiles * 16 * c_in * c_out // max(op.args.get("groups", 1), 1)
                    transform = tiles * (32 * c_in * costs.add(in_t.bits + 2, float_bits=_fbits(in_t)) +
                                         24 * c_out * _fixed_or_float_add(costs, acc_t))
                zero = zeros.get(op.args.get("input_node", ""), 0.0)
                skip = zero if activation_sparsity is not None and zero >= activation_sparsity else 0.0
                cost += ops_n * density * (1 - skip) * (c1 + c2) + transform
                if op.elementwise:
                    cost += _elementwise_cost(op.elementwise, acc_t, costs)
                this_out = out_override or acc_t
        elif kind in ("matmul", "attention"):
            second = in_types[1] if len(in_types) > 1 else in_t
            mult = make_multiplier(second, in_t)
            operator = mult.operator
            acc_override = resolver.ref[1] if resolver.ref else None
            acc_t = _accumulator(mult, op.fan_in, False, acc_override)
            c1 = mult.cost(costs, as_type=acc_override) if acc_override is not None else mult.cost(costs)
            cost = ops_n * (c1 + _fixed_or_float_add(costs, acc_t))
            if op.elementwise:
                cost += _elementwise_cost(op.elementwise, acc_t, costs)
            acc_bits = acc_t.bits
            accumulators[op.name] = (op.fan_in, mult.output.bits)
            zero = zeros.get(op.args.get("input_node", ""), 0.0)
            if activation_sparsity is not None and zero >= activation_sparsity:
                cost -= ops_n * zero * (c1 + _fixed_or_float_add(costs, acc_t))
            this_out = resolver.activation(op.module, module) if (resolver.ref or
                                                                  resolver.plan_activation(op.module, module)) \
                else (acc_t if acc_t.is_float else _Resolver.INT32)
        elif kind == "activation":
            this_out = resolver.activation(op.module, module if op.quant_module is not None else None)
            if this_out is _Resolver.INT32 and not resolver.ref:
                this_out = _follows_operands(in_types[:1]) or this_out  # sigmoid / tanh / softmax ... of codes
        elif kind == "norm":
            bn = op.target in ("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm")
            p_t = resolver.batchnorm(module)
            tensors = list(op.params.values())
            params = sum(mem(t.numel() * p_t.bits, weights_memory) for t in tensors)
            if not bn or exact:
                per = 2 if bn else 5  # batch norm: scale and shift; layer/group norm: mean, variance, normalize
                cost = ops_n * per * _fixed_or_float_add(costs, in_t)
            this_out = resolver.ref[1] if resolver.ref else (resolver.plan_activation(op.module, module) or in_t)
            w_label = p_t.label
            kind = "batchnorm" if bn else "norm"
        elif kind in ("add", "mul", "elementwise"):
            widest = _widest(in_types)
            static = op.args.get("static_elements", 0)  # a constant operand, read like a parameter
            params = mem(static * resolver.batchnorm().bits, weights_memory) if static else 0.0
            if kind == "mul" and len(in_types) > 1:
                mult = make_multiplier(in_types[1], in_types[0])
                operator = mult.operator
                cost = ops_n * mult.cost(costs)
            else:
                cost = ops_n * _fixed_or_float_add(costs, widest)
            this_out = resolver.ref[1] if resolver.ref else (resolver.plan_activation(op.module, module)
                                                            or _follows_operands(in_types) or _Resolver.INT32)
        elif kind == "concat":
            this_out = _widest(in_types)
            if not exact:
                out_type[op.name] = this_out
                continue  # metadata in QTools' accounting
        else:  # pool, flatten
            this_out = in_t
            if kind == "pool" and exact:
                cost = ops_n * _fixed_or_float_add(costs, in_t)
        out_type[op.name] = this_out
        out_bits = op.output_elements * this_out.bits
        outputs = _read(out_bits, op.is_output, activations_memory, io_traffic, costs, min_sram_size, exact)
        terms = {"inputs": rnd(inputs), "outputs": rnd(outputs), "parameters": rnd(params), "op_cost": rnd(cost)}
        counted = list(INCLUDED_TERMS[kind])
        rows.append(LayerEnergy(op.name, kind, terms["inputs"], terms["outputs"], terms["parameters"],
                                terms["op_cost"], counted, sum(terms[t] for t in counted), int(ops_n), operator,
                                w_label, in_t.label, this_out.label, acc_bits, density, op.module, op.target,
                                zeros.get(op.args.get("input_node", ""), 0.0)))
    total = sum(r.total for r in rows)
    report = EnergyReport(float(int(total)) if not exact else total, rows, mode, {
        "example_inputs": _describe(example_inputs), "reference": list(reference) if reference else None,
        "weights_memory": weights_memory, "activations_memory": activations_memory,
        "min_sram_size": min_sram_size, "io_traffic": io_traffic, "source_quantizer": source_quantizer,
        "sparsity_aware": sparsity_aware, "conv_algorithm": conv_algorithm,
        "activation_sparsity": activation_sparsity})
    if measure is not None:
        report.measured_pj = float(measure(model, example_inputs))
    if memory:
        from .memory import memory_report

        bits_of = {src: source.bits for op in ops for src in op.inputs if src.startswith("input:")}
        bits_of.update({name: t.bits for name, t in out_type.items()})
        report.memory = memory_report(ops, bits_of,
                                      accumulation_batches=accumulation_batches, accumulators=accumulators,
                                      costs=costs)
    return report


def _fbits(t: QType) -> int | None:
    return t.bits if t.is_float else None


def _winograd_tiles(op: GraphOp) -> tuple[int, int, int] | None:
    """(2x2 output tiles, C_in, C_out) of a conv Winograd F(2x2, 3x3) applies to, else None."""
    a = op.args
    if op.kind != "conv" or op.target != "conv2d" or tuple(a.get("kernel", ())) != (3, 3):
        return None
    if any(v != 1 for v in _pair(a.get("stride", 1))) or any(v != 1 for v in _pair(a.get("dilation", 1))):
        return None
    _, c_out, h, w = op.output_shape
    c_in = op.input_shapes[0][1]
    return math.ceil(h / 2) * math.ceil(w / 2), c_in, c_out


def _pair(v: Any) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (int(v),)


def _elementwise_cost(counts: dict[str, int], t: QType, costs: OpCosts) -> float:
    """Element-wise work inside an operation (gates, softmax), each element one add (mul: one multiply)."""
    add = _fixed_or_float_add(costs, t)
    mul = costs.mul(t.bits, float_bits=t.bits if t.is_float else None)
    return sum(n * (mul if name in ("mul", "scale") else add) for name, n in counts.items())


def _describe(example_inputs: Any) -> Any:
    if isinstance(example_inputs, torch.Tensor):
        return {"shape": list(example_inputs.shape), "dtype": str(example_inputs.dtype)}
    if isinstance(example_inputs, (tuple, list)) and example_inputs and isinstance(example_inputs[0], torch.Tensor):
        return [_describe(t) for t in example_inputs]
    return list(example_inputs) if isinstance(example_inputs, (tuple, list)) else example_inputs

"""A differentiable stand-in for the energy model (and the parameter size) over soft per-layer choices.

The energy model costs one discrete plan. The gradient methods need the *expected* energy when every
layer holds a probability over its candidate quantizers and keeps a fraction ``d`` of its weights. The
surrogate is built from real estimates around a base plan (every layer at its last, widest, candidate):

- per layer ``l``, a table over (its kernel candidate ``k``, the candidate ``a`` of the activation that
  feeds it, found through pooling / flatten in the exported graph): the change ``dK[k, a]`` of the
  energy of the layer's own rows, and the part ``S[k, a]`` that scales with its density (parameter
  reads and MACs; only when the energy settings are ``sparsity_aware``);
- per activation, the change ``dA[a]`` of every row except those of the layers it feeds.

Expected energy, pJ (clamped at 0.1 % of the base)::

    E = E_base + sum_l sum_{k,a} p_lk q_in(l),a (dK_l[k,a] + (d_l - 1) S_l[k,a]) + sum_act sum_a q_a dA[a]

Effects that reach beyond a layer's own rows and its input (accumulator widths of a layer without an
activation quantizer feeding a residual sum) are taken at the base; the controllers report the real
estimate of every hardened plan. Size, bits: ``sum_l numel_l d_l sum_k p_lk bits_k``. Cost of building:
one ``estimate_energy`` per table entry (about 0.1 s each on small models after the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..energy.estimate import estimate_energy
from ..quant.base import get_quantizer
from ..quant.plan import Plan
from .space import SearchSpace

__all__ = ["CostSurrogate", "LayerCosts", "base_plan", "base_choices", "soft_layers", "feeding_activations"]


@dataclass
class LayerCosts:
    name: str
    kernel_specs: list[str]
    input_act: str | None           #: the activation module feeding this layer, if it is searched
    kernel_delta: torch.Tensor      #: [K, A] pJ, change of this layer's rows (A = 1 without input_act)
    scalable: torch.Tensor          #: [K, A] pJ, part of this layer's rows proportional to its density
    kernel_bits: torch.Tensor       #: [K] bits per weight
    numel: int
    act_module: str | None
    act_specs: list[str]
    act_delta: torch.Tensor         #: [A] pJ, change of every row but those of the layers it feeds


def soft_layers(space: SearchSpace) -> list[Any]:
    """Layers whose kernel the gradient methods choose: conv / linear layers with kernel candidates."""
    return [layer for layer in space.layers if layer.kernel and layer.kind in ("conv", "dense")]


def base_choices(space: SearchSpace, kernel: dict[str, str] | None = None,
                 act: dict[str, str] | None = None) -> dict[str, Any]:
    """Parameter values (:meth:`SearchSpace.plan_from` keys) with every group at its last kernel /
    activation / input-steps candidate and first bias candidate, unless ``kernel`` (layer name -> spec) or ``act``
    (activation module -> spec) say otherwise (the first layer of a shared group decides)."""
    kernel, act = kernel or {}, act or {}
    choices: dict[str, Any] = {}
    for layer in space.layers:
        if layer.kernel:
            choices.setdefault(layer.key("kernel"), kernel.get(layer.name, layer.kernel[-1]))
        if layer.bias:
            choices.setdefault(layer.key("bias"), layer.bias[0])
        if layer.activation:
            choices.setdefault(layer.key("activation"), act.get(layer.activation_module or "", layer.activation[-1]))
        if layer.input:
            choices.setdefault(layer.key("input"), layer.input[-1])
    return choices


def base_plan(space: SearchSpace, kernel: dict[str, str] | None = None, act: dict[str, str] | None = None) -> Plan:
    """The plan of :func:`base_choices` (widths unchanged)."""
    return space.plan_from(base_choices(space, kernel, act))


def _rows(report: Any, module: str) -> tuple[float, float]:
    """(counted energy, density-scalable energy) of the rows of ``module``."""
    rows = [r for r in report.layers if r.module == module]
    return (sum(r.total for r in rows),
            sum(r.parameters + r.op_cost for r in rows if r.kind in ("conv", "dense")))


def feeding_activations(model: nn.Module, space: SearchSpace, ops: list | None = None) -> dict[str, str]:
    """Layer -> the searched activation module whose output it reads (through pooling / flatten); ``ops``:
    the model's captured graph, exported here when not given."""
    from ..energy.graph import capture_graph

    acts = {layer.activation_module for layer in space.layers if layer.activation_module and layer.activation}
    if ops is None:
        ops = capture_graph(model, space.input_shape)
    by_name = {op.name: op for op in ops}
    out = {}
    for layer in space.layers:
        op = next((o for o in ops if o.module == layer.name and o.kind in ("conv", "dense")), None)
        src = op.inputs[0] if op is not None and op.inputs else None
        while src in by_name:
            prev = by_name[src]
            if prev.module in acts:
                out[layer.name] = prev.module
                break
            if prev.kind not in ("pool", "flatten") or not prev.inputs:
                break
            src = prev.inputs[0]
    return out


class CostSurrogate:
    """Expected energy (pJ) or size (bits) of soft choices; see the module docstring."""

    def __init__(self, model: nn.Module, space: SearchSpace, energy_settings: dict[str, Any],
                 ops: list | None = None):
        """``ops``: :func:`~nncodec.energy.graph.capture_graph` of ``model`` on ``space.input_shape`` when the
        caller holds it already (None: captured here)."""
        self.settings = dict(energy_settings)
        sparse = bool(self.settings.get("sparsity_aware", False))

        if ops is None:
            from ..energy.graph import capture_graph

            ops = capture_graph(model, space.input_shape)
        graph = ops if self.settings.get("activation_sparsity") is None else None

        def energy(kernel: dict[str, str] | None = None, act: dict[str, str] | None = None) -> Any:
            return estimate_energy(model, space.input_shape, base_plan(space, kernel, act), graph=graph,
                                   **self.settings)

        self._build(model, space, energy, sparse, ops)

    def _build(self, model: nn.Module, space: SearchSpace, energy: Any, sparse: bool, ops: list) -> None:
        base = energy()
        self.base_pj = float(base.total_pj)
        feeds = feeding_activations(model, space, ops)
        act_specs = {layer.activation_module: layer.activation for layer in space.layers
                     if layer.activation_module and layer.activation}
        fed_by: dict[str, list[str]] = {}
        for layer, act in feeds.items():
            fed_by.setdefault(act, []).append(layer)
        self.layers: list[LayerCosts] = []
        soft = {layer.name for layer in soft_layers(space)}
        for layer in space.layers:
            if layer.name not in soft and not layer.activation:
                continue
            inp = feeds.get(layer.name) if layer.name in soft else None
            in_specs = act_specs[inp] if inp else [None]
            base_total, _ = _rows(base, layer.name)
            kernels = layer.kernel if layer.name in soft else []
            delta = torch.zeros(len(kernels), len(in_specs))
            scal = torch.zeros_like(delta)
            for k, spec in enumerate(kernels):
                for a, a_spec in enumerate(in_specs):
                    rep = energy({layer.name: spec}, {inp: a_spec} if inp else None)  # type: ignore[dict-item]
                    total, scalable = _rows(rep, layer.name)
                    delta[k, a] = total - base_total
                    scal[k, a] = scalable if sparse else 0.0
            act_deltas = []
            for spec in layer.activation:
                rep = energy(act={layer.activation_module: spec})  # type: ignore[dict-item]
                fed = fed_by.get(layer.activation_module or "", [])
                own = sum(_rows(rep, n)[0] - _rows(base, n)[0] for n in fed)
                act_deltas.append(rep.total_pj - self.base_pj - own)
            weight = getattr(model.get_submodule(layer.name), "weight", None) if kernels else None
            self.layers.append(LayerCosts(
                layer.name, list(kernels), inp, delta, scal,
                torch.tensor([float(get_quantizer(s).bits) for s in kernels]),
                int(weight.numel()) if weight is not None else 0,
                layer.activation_module, list(layer.activation), torch.tensor(act_deltas)))

    def energy(self, kernel_probs: dict[str, torch.Tensor], densities: dict[str, torch.Tensor],
               act_probs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected energy, pJ (differentiable in the probabilities and densities)."""
        total = torch.tensor(self.base_pj)
        for lc in self.layers:
            if lc.kernel_specs:
                p = kernel_probs[lc.name]
                q = act_probs[lc.input_act] if lc.input_act in act_probs else torch.ones(1)
                d = densities.get(lc.name, torch.tensor(1.0))
                joint = p[:, None] * q[None, :]
                total = total + (joint * (lc.kernel_delta + (d - 1.0) * lc.scalable)).sum()
            if lc.act_module in act_probs:
                total = total + (act_probs[lc.act_module] * lc.act_delta).sum()
        return torch.clamp(total, min=1e-3 * self.base_pj)
    def size_bits(self, kernel_probs: dict[str, torch.Tensor], densities: dict[str, torch.Tensor]) -> torch.Tensor:
        """Expected weight storage, bits."""
        total = torch.tensor(0.0)
        for lc in self.layers:
            if not lc.kernel_specs:
                continue
            d = densities.get(lc.name, torch.tensor(1.0))
            total = total + lc.numel * d * (kernel_probs[lc.name] * lc.kernel_bits).sum()
        return total

    def reference_size_bits(self) -> float:
        return float(sum(lc.numel * float(lc.kernel_bits.max()) for lc in self.layers))

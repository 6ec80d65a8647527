"""Differentiable joint pruning and quantization (seed 001): one training run instead of many trials.

Per conv / linear layer of the search space:

- pruning by an analytic threshold function ``h(w) = sigmoid((|w| - t) / s)`` with a learnable threshold
  ``t`` and width ``s`` (both positive, stored as logs); the layer computes with ``w * h(w)``;
- each remaining weight is the weighted average of its quantization / dequantization by every candidate
  kernel quantizer of the space, ``sum_k softmax(alpha / T)_k Q_k(w h(w))`` (straight-through gradients),
  with learnable level weights ``alpha``; the output feature map of the layer's activation likewise over
  the activation candidates.

All parameters are trained by back-propagation on ``task loss + lambda * cost / reference cost``, the cost
being the :class:`CostSurrogate`'s expected energy (``cost="energy"``) or weight bits (``cost="size"``).
The temperature ``T`` falls geometrically from 1 to ``temperature_end`` so the level weights harden. At
the end the soft choices become a plan (argmax level -> quantizer of the space) and masks
(``|w| > t``); the runner fine-tunes that plan from the trained weights. Controller ``differentiable``.
Needs a :class:`ClassifierTask` (the cost term joins its cross-entropy). Widths are not searched: a space
with width multipliers and a changed ``n_trials`` (no trials run) are :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError
from ..quant.base import Quantizer, get_quantizer
from ..quant.plan import Plan
from ..train import shuffled_batches
from .controllers import Outcome, refuse_input_steps, refuse_trials, refuse_widths, register_controller
from .space import SearchSpace
from .surrogate import CostSurrogate, base_plan, soft_layers
from .task import ClassifierTask

__all__ = ["SoftQuantizer", "ThresholdPruneQuantize", "DifferentiableSearch", "harden_masks"]

log = logging.getLogger(__name__)

OPTIONS = ("epochs", "lambda", "arch_lr", "temperature_end", "prune")


class SoftQuantizer(nn.Module):
    """Weighted average of several quantizers' outputs; weights ``softmax(logits / temperature)``."""

    def __init__(self, specs: list[str]):
        super().__init__()
        if not specs:
            raise ConfigError("a soft quantizer needs at least one candidate quantizer")
        self.specs = list(specs)
        self.levels: list[Quantizer] = [get_quantizer(s) for s in specs]  # type: ignore[misc]
        self.logits = nn.Parameter(torch.zeros(len(specs)))
        self.temperature = 1.0

    def probs(self) -> torch.Tensor:
        return torch.softmax(self.logits / self.temperature, dim=0)

    def set_one_hot(self, index: int) -> None:
        """Put all the weight on one level (exactly: the others get probability 0)."""
        with torch.no_grad():
            self.logits.fill_(-math.inf)
            self.logits[index] = 0.0

    def choice(self) -> str:
        return self.specs[int(torch.argmax(self.logits))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.probs()
        out = torch.zeros_like(x)
        for k, q in enumerate(self.levels):
            if p[k] > 0 or self.training:
                out = out + p[k] * q(x, self.training)
        return out


class ThresholdPruneQuantize(nn.Module):
    """Weight parametrization ``soft_quantize(w * h(w))`` with ``h(w) = sigmoid((|w| - t) / s)``."""

    def __init__(self, weight: torch.Tensor, specs: list[str], prune: bool = True):
        super().__init__()
        self.quant = SoftQuantizer(specs)
        std = float(weight.detach().std()) or 1e-3
        self.prune = prune
        self.log_t = nn.Parameter(torch.tensor(math.log(0.05 * std)), requires_grad=prune)
        self.log_s = nn.Parameter(torch.tensor(math.log(0.05 * std)), requires_grad=prune)

    def keep(self, w: torch.Tensor) -> torch.Tensor:
        if not self.prune:
            return torch.ones_like(w)
        return torch.sigmoid((w.abs() - self.log_t.exp()) / self.log_s.exp())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quant(w * self.keep(w))


def _soft_output_hook(quant: SoftQuantizer):  # noqa: ANN202
    def hook(module: nn.Module, inputs: Any, output: Any) -> Any:
        return quant(output) if isinstance(output, torch.Tensor) else None
    return hook


def harden_masks(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """0/1 masks ``|w| > t`` of the parametrized layers ``names`` (at least the largest weight is kept)."""
    masks = {}
    for name in names:
        mod = model.get_submodule(name)
        par: ThresholdPruneQuantize = mod.parametrizations.weight[0]
        w = mod.parametrizations.weight.original.detach()
        mask = (w.abs() > par.log_t.exp()).to(w.dtype) if par.prune else torch.ones_like(w)
        if not mask.any():
            mask.view(-1)[int(w.abs().argmax())] = 1.0
        masks[name] = mask
    return masks


def _batches(task: Any, proxy: bool, epoch: int) -> Any:
    if not isinstance(task, ClassifierTask):
        raise ConfigError("the differentiable controller trains its own loss: it needs a ClassifierTask "
                          f"(got {type(task).__name__}); use an Optuna controller or the greedy one")
    idx = task.proxy_index if proxy else torch.arange(len(task.x_train))
    for b in shuffled_batches(idx, task.batch_size, task.seed * 1000 + 7919 * (epoch + 1)):
        yield task.x_train[b], task.y_train[b]


class DifferentiableSearch:
    """The soft model and its training; used by the controller and by the hardware co-design."""

    def __init__(self, reference: nn.Module, space: SearchSpace, task: Any, options: dict[str, Any],
                 cost: str = "energy", seed: int = 0):
        self.space, self.task, self.cost = space, task, cost
        self.lam = float(options.get("lambda", 0.5))
        self.arch_lr = float(options.get("arch_lr", 0.05))
        self.temperature_end = float(options.get("temperature_end", 0.1))
        prune = bool(options.get("prune", True))
        if self.lam < 0 or self.arch_lr <= 0 or not 0 < self.temperature_end <= 1:
            raise ConfigError("differentiable: lambda >= 0, arch_lr > 0 and 0 < temperature_end <= 1 required")
        refuse_widths(space, "the differentiable controller")
        refuse_input_steps(space, "the differentiable controller")
        torch.manual_seed(seed)
        self.model = copy.deepcopy(reference)
        self.names = [layer.name for layer in soft_layers(space)]
        if not self.names:
            raise ConfigError("differentiable: the space has no conv / linear layer with kernel candidates")
        for layer in soft_layers(space):
            mod = self.model.get_submodule(layer.name)
            parametrize.register_parametrization(mod, "weight", ThresholdPruneQuantize(mod.weight, layer.kernel, prune))
        #: activation module -> soft quantizer of its output (a forward hook; the module is left in place)
        self.act_quant: dict[str, SoftQuantizer] = {}
        for layer in space.layers:
            if layer.activation_module and layer.activation and layer.activation_module not in self.act_quant:
                quant = SoftQuantizer(layer.activation)
                self.act_quant[layer.activation_module] = quant
                self.model.get_submodule(layer.activation_module).register_forward_hook(_soft_output_hook(quant))
        self.act_names = list(self.act_quant)
        self._act_modules = nn.ModuleList(self.act_quant.values())
        arch = [p for n, p in self.model.named_parameters() if n.endswith(("logits", "log_t", "log_s"))]
        arch += list(self._act_modules.parameters())
        arch_ids = {id(p) for p in arch}
        weights = [p for p in self.model.parameters() if id(p) not in arch_ids]
        self.optimizer = torch.optim.Adam([{"params": weights, "lr": getattr(task, "lr", 1e-3)},
                                           {"params": [p for p in arch if p.requires_grad], "lr": self.arch_lr}])
        self.surrogate: CostSurrogate | None = None
        self.reference_cost = 1.0
        self.epoch = 0

    # -- soft state ---------------------------------------------------------------------------
    def _par(self, name: str) -> ThresholdPruneQuantize:
        return self.model.get_submodule(name).parametrizations.weight[0]

    def soft_state(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        kp, dens, ap = {}, {}, {}
        for name in self.names:
            par = self._par(name)
            kp[name] = par.quant.probs()
            dens[name] = par.keep(self.model.get_submodule(name).parametrizations.weight.original).mean()
        for name, quant in self.act_quant.items():
            ap[name] = quant.probs()
        return kp, dens, ap

    def set_surrogate(self, surrogate: CostSurrogate) -> None:
        """Cost the soft choices with ``surrogate`` (hardware co-design swaps it between steps)."""
        self.surrogate = surrogate
        self.reference_cost = surrogate.base_pj if self.cost == "energy" else surrogate.reference_size_bits()

    def expected_cost(self) -> torch.Tensor:
        if self.surrogate is None:
            raise ConfigError("differentiable search: set_surrogate() before training")
        kp, dens, ap = self.soft_state()
        if self.cost == "energy":
            return self.surrogate.energy(kp, dens, ap)
        return self.surrogate.size_bits(kp, dens)

    def set_temperature(self, t: float) -> None:
        for m in list(self.model.modules()) + list(self._act_modules):
            if isinstance(m, SoftQuantizer):
                m.temperature = t

    # -- training -----------------------------------------------------------------------------
    def train_epoch(self, total_epochs: int, proxy: bool = True) -> dict[str, float]:
        """One epoch on ``task loss + lambda * cost / reference cost``; returns the epoch's means."""
        frac = self.epoch / max(total_epochs - 1, 1)
        self.set_temperature(self.temperature_end ** min(frac, 1.0))
        loss_fn = nn.CrossEntropyLoss()
        self.model.train()
        self._act_modules.train()
        sums = {"task_loss": 0.0, "cost": 0.0}
        n = 0
        for x, y in _batches(self.task, proxy, self.epoch):
            self.optimizer.zero_grad()
            task_loss = loss_fn(self.model(x), y)
            cost = self.expected_cost()
            (task_loss + self.lam * cost / self.reference_cost).backward()
            self.optimizer.step()
            sums["task_loss"] += float(task_loss.detach())
            sums["cost"] += float(cost.detach())
            n += 1
        self.model.eval()
        self._act_modules.eval()
        self.epoch += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    def evaluate(self) -> float:
        self.model.eval()
        self._act_modules.eval()
        return float(self.task.evaluate(self.model))

    # -- hardening ----------------------------------------------------------------------------
    def choices(self) -> tuple[dict[str, str], dict[str, str]]:
        kernels = {n: self._par(n).quant.choice() for n in self.names}
        acts = {n: q.choice() for n, q in self.act_quant.items()}
        return kernels, acts

    def hardened_plan(self) -> Plan:
        """Argmax level of every soft quantizer, as a plan over the space's choices (widths unchanged)."""
        kernels, acts = self.choices()
        return base_plan(self.space, kernels, acts)

    def masks(self) -> dict[str, torch.Tensor]:
        return harden_masks(self.model, self.names)

    def plain_state(self) -> dict[str, torch.Tensor]:
        """State dict of the trained weights in the reference's layout (soft parts left out).

        Built by renaming keys: removing a parametrization from a copy would also strip the original's
        (the two share the parametrized class)."""
        out = {}
        for key, value in self.model.state_dict().items():
            if key.endswith(".parametrizations.weight.original"):
                key = key[: -len(".parametrizations.weight.original")] + ".weight"
            elif ".parametrizations.weight." in key:
                continue
            out[key] = value.detach().clone()
        return out


@register_controller("differentiable", OPTIONS)
def differentiable_controller(searcher: Any) -> Outcome:
    """Train the soft model for ``epochs`` (default ``3 * proxy_epochs``), harden, hand the plan back."""
    cfg = searcher.cfg
    refuse_trials(cfg, "the differentiable controller")
    epochs = int(cfg.options.get("epochs", 3 * cfg.proxy_epochs))
    if epochs < 1:
        raise ConfigError("differentiable: epochs must be >= 1")
    search = DifferentiableSearch(searcher.reference, searcher.space, searcher.task, cfg.options, cfg.cost, cfg.seed)
    search.set_surrogate(CostSurrogate(searcher.reference, searcher.space, cfg.energy_settings))
    rows = []
    for epoch in range(epochs):
        stats = search.train_epoch(epochs)
        acc = search.evaluate()
        kernels, acts = search.choices()
        rows.append({"number": epoch, "state": "COMPLETE", "params": {**kernels, **acts}, "value": stats["task_loss"],
                     "accuracy": acc, "energy_pj": stats["cost"] if cfg.cost == "energy" else None,
                     "cost": stats["cost"], "infeasible": False})
        log.info("differentiable epoch %d: loss %.4f, expected %s %.4g, accuracy %.4f", epoch, stats["task_loss"],
                 cfg.cost, stats["cost"], acc)
    return Outcome(search.hardened_plan(), rows, masks=search.masks(), state=search.plain_state())

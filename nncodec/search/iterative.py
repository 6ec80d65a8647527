"""Iterative compression schedule (seed 002, model compression device; seed 000, compression pipeline
with device feedback): compress a step further -> retrain -> decide from the retrained model whether to
compress again.

One model is compressed in place, so weights carry over between steps. It starts at the space's widest
quantizers. The ``pipeline`` names the compression methods applied in turn:

- ``"quantize"``: every kernel / activation knob moves to its next narrower candidate (see
  :mod:`nncodec.search.greedy` for the knobs);
- ``"prune"``: with ``pruner="magnitude"``, a further ``prune_step`` fraction of the remaining weights is
  masked (global magnitude); with ``pruner="proximal"`` the retraining runs under a
  :class:`~nncodec.prune.proximal.ProximalPruner` of ``prox_strength`` (doubled at every prune step) and
  the weights it zeroed are masked.

After each step the model is retrained for the proxy budget. The index is its accuracy: below the
reference accuracy minus ``max_accuracy_drop`` the step is undone and that method is not used again.
The schedule stops as soon as the model meets the constraint: the caps (``max_energy_pj`` / ``max_bits``
/ ``max_params``) and, when a ``cost_fn`` (a real device's measurement) is given, ``max_cost`` on its
value. It also stops when no method can go further or after ``n_trials`` steps. ``--schedule iterative``.
Widths are not searched: a space with width multipliers is a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from ..errors import ConfigError
from ..prune.proximal import ProximalPruner
from ..prune.unstructured import apply_masks, global_magnitude_masks, prunable_layers, sparsity
from ..quant.layers import quantize_model
from .controllers import Outcome, refuse_input_steps, refuse_widths, register_schedule
from .greedy import knobs_of
from .surrogate import base_choices
from .task import combined_floor

__all__ = ["iterative_schedule"]

log = logging.getLogger(__name__)

OPTIONS = ("pipeline", "prune_step", "pruner", "prox_strength", "max_accuracy_drop", "max_cost", "reference_accuracy")
METHODS = ("quantize", "prune")


def _current_masks(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight_mask.detach().clone() for n, m in prunable_layers(model).items()
            if getattr(m, "weight_mask", None) is not None}


@register_schedule("iterative", OPTIONS)
def iterative_schedule(searcher: Any) -> Outcome:
    cfg, space, task = searcher.cfg, searcher.space, searcher.task
    opts = cfg.options
    pipeline = list(opts.get("pipeline", ["quantize", "prune"]))
    prune_step = float(opts.get("prune_step", 0.25))
    pruner = opts.get("pruner", "magnitude")
    strength = float(opts.get("prox_strength", 1.0))
    max_drop = float(opts.get("max_accuracy_drop", 0.01))
    max_cost = opts.get("max_cost")
    if not pipeline or set(pipeline) - set(METHODS):
        raise ConfigError(f"iterative: pipeline must be a non-empty list of {METHODS}, got {pipeline!r}")
    if pruner not in ("magnitude", "proximal") or not 0 < prune_step < 1 or strength <= 0 or max_drop < 0:
        raise ConfigError("iterative: pruner is 'magnitude' or 'proximal', 0 < prune_step < 1, prox_strength > 0, "
                          "max_accuracy_drop >= 0")
    if max_cost is not None and searcher.cost_fn is None:
        raise ConfigError("iterative: max_cost bounds a measured cost; give a cost_fn (the device's measurement)")
    if max_cost is None and all(c is None for c in (cfg.max_energy_pj, cfg.max_bits, cfg.max_params)):
        raise ConfigError("iterative: the schedule compresses until a constraint holds; set max_energy_pj, "
                          "max_bits, max_params or (with a cost_fn) the max_cost option")
    if cfg.controller not in ("tpe",):
        raise ConfigError("the iterative schedule chooses its own compression steps; leave the controller at 'tpe'")
    refuse_widths(space, "the iterative schedule")
    refuse_input_steps(space, "the iterative schedule")
    if "reference_accuracy" in opts:
        ref_acc = float(opts["reference_accuracy"])
    else:  # measured once per search (run_search has measured it already)
        if searcher.reference_accuracy is None:
            searcher.reference_accuracy = float(task.evaluate(searcher.reference))
        ref_acc = searcher.reference_accuracy
    floor = combined_floor(ref_acc, max_drop, task)  # the task's own floor holds here too (the higher one wins)
    knobs = knobs_of(space)

    def plan_now() -> Any:
        choices = base_choices(space)
        choices.update({k.key: k.levels[k.index] for k in knobs})
        return space.plan_from(choices)

    torch.manual_seed(cfg.seed)
    model = searcher.build(plan_now())
    rows: list[dict[str, Any]] = []
    exhausted: set[str] = set()
    prune_steps = 0

    def measure(label: str, method: str | None) -> dict[str, Any]:
        costing = searcher.measure(model, plan_now())
        measured = costing.cost if searcher.cost_fn is not None else None  # the cost function's value (measured once)
        violation = costing.violation
        if max_cost is not None and measured is not None and measured > max_cost:
            violation += measured / max_cost - 1.0
        sp = sparsity(model)
        row = {"number": len(rows), "state": "COMPLETE", "step": label, "method": method, "params": {},
               "accuracy": task.evaluate(model), "energy_pj": costing.energy_pj, "size_bits": costing.size_bits,
               "cost": costing.cost, "measured_cost": measured, "violation": violation,
               "sparsity": sum(sp.values()) / max(len(sp), 1), "infeasible": False, "accepted": True}
        rows.append(row)
        return row

    current = measure("start", None)
    step = 0
    while current["violation"] > 0 and step < cfg.n_trials:
        method = next((m for m in pipeline[step % len(pipeline):] + pipeline if m not in exhausted), None)
        if method is None:
            break
        saved = (copy.deepcopy(model), [k.index for k in knobs])
        if method == "quantize":
            movable = [k for k in knobs if k.index < len(k.levels) - 1]
            if not movable:
                exhausted.add(method)
                continue
            for k in movable:
                k.index += 1
            quantize_model(model, plan_now(), inplace=True)
            for epoch in range(cfg.proxy_epochs):
                task.train_epoch(model, epoch, proxy=True)
        else:
            prune_steps += 1
            if pruner == "magnitude":
                layers, sp = prunable_layers(model), sparsity(model)
                done = sum(sp[n] * m.weight.numel() for n, m in layers.items()) / \
                    max(sum(m.weight.numel() for m in layers.values()), 1)
                apply_masks(model, global_magnitude_masks(model, min(0.99, done + (1 - done) * prune_step)))
                for epoch in range(cfg.proxy_epochs):
                    task.train_epoch(model, epoch, proxy=True)
            else:
                with ProximalPruner(model, strength * 2 ** (prune_steps - 1)) as prox:
                    for epoch in range(cfg.proxy_epochs):
                        task.train_epoch(model, epoch, proxy=True)
                apply_masks(model, prox.masks())
        step += 1
        row = measure(f"{method} {step}", method)
        if row["accuracy"] < floor:
            row["accepted"] = False
            model = saved[0]
            for k, idx in zip(knobs, saved[1]):
                k.index = idx
            exhausted.add(method)
            log.info("iterative: %s step %d drops accuracy to %.4f (< %.4f): undone, %s stops", method, step,
                     row["accuracy"], floor, method)
            continue
        current = row
        log.info("iterative: %s step %d: accuracy %.4f, energy %.4g pJ, over the constraint by %.1f %%", method, step,
                 row["accuracy"], row["energy_pj"], 100 * row["violation"])
    met = current["violation"] == 0
    if not met:
        log.warning("iterative: the constraint is not met after %d steps; returning the last accepted model", step)
    ref_keys = searcher.reference.state_dict().keys()
    state = {k: v.detach().clone() for k, v in model.state_dict().items() if k in ref_keys}
    extra = {"iterative": {"constraint_met": met, "steps": step, "reference_accuracy": ref_acc,
                           "exhausted": sorted(exhausted)}}
    return Outcome(plan_now(), rows, masks=_current_masks(model), state=state, extra=extra)

"""Greedy bit assignment from single-bit models (seed 002, machine-learning model search method).

The knobs are each layer group's kernel quantizer and its activation quantizer, their candidates sorted
from most to fewest bits, and each width group's multiplier, widest first. Start: every knob at its widest candidate (the "top" model), trained for the
proxy budget and tested. Sensitivity: one *single-bit model* per knob (that knob alone at its narrowest
candidate) is trained and tested; ``kept = accuracy / top accuracy`` (1: the layer does not mind) and
``share = energy saved / top energy`` (the layer's share of what quantizing can remove). Each knob's
quantization weight is ``kept * share``. Then, repeatedly, the knob with the largest weight moves one
candidate narrower, the candidate is trained and tested, and kept when its accuracy stays within
``max_accuracy_drop`` of the top model (else the step is undone and the knob frozen). Every accepted
candidate joins the candidate set; the search stops at the first candidate under the caps
(``max_energy_pj`` / ``max_bits`` / ``max_params``), when no knob can move, or after ``n_trials``
trained steps. Controller ``greedy``; works with any :class:`Task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from ..quant.base import get_quantizer
from ..quant.plan import Plan
from .controllers import Outcome, refuse_widths, register_controller
from .surrogate import base_choices
from .task import combined_floor

__all__ = ["Knob", "knobs_of", "greedy_controller"]

log = logging.getLogger(__name__)

OPTIONS = ("max_accuracy_drop", "knobs")


@dataclass
class Knob:
    group: str
    role: str                 #: "kernel", "activation" or "width"
    levels: list[Any]         #: candidates, most bits (widest) first
    index: int = 0
    frozen: bool = False
    kept: float = 1.0
    share: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.group}.{self.role}"

    @property
    def weight(self) -> float:
        return self.kept * self.share


def _bits(spec: str) -> int:
    return int(get_quantizer(spec).bits)  # type: ignore[union-attr]


ROLES = ("kernel", "activation", "width")


def knobs_of(space: Any, roles: tuple[str, ...] = ("kernel", "activation")) -> list[Knob]:
    """One knob per layer group and quantizer role, and (role ``"width"``) one per width parameter of the
    space, each with at least two candidates (stable order: the space's)."""
    knobs: dict[str, Knob] = {}
    for layer in space.layers:
        for role in roles:
            if role == "width":
                continue
            specs = layer.kernel if role == "kernel" else layer.activation
            key = layer.key(role)
            if len(specs) > 1 and key not in knobs:
                order = sorted(range(len(specs)), key=lambda i: (-_bits(specs[i]), -i))
                knobs[key] = Knob(key[: -len(role) - 1], role, [specs[i] for i in order])
    if "width" in roles:
        for key, values in space.parameters().items():
            if key.endswith(".width") and len(values) > 1:
                knobs[key] = Knob(key[: -len(".width")], "width", sorted(values, reverse=True))
    return list(knobs.values())


class _Greedy:
    def __init__(self, searcher: Any):
        self.s = searcher
        cfg = searcher.cfg
        self.max_drop = float(cfg.options.get("max_accuracy_drop", 0.01))
        roles = tuple(cfg.options.get("knobs", ROLES))
        if not set(roles) <= set(ROLES) or not roles:
            raise ConfigError(f"greedy: knobs must be a subset of {ROLES}, got {roles!r}")
        if self.max_drop < 0:
            raise ConfigError("greedy: max_accuracy_drop must be >= 0")
        if "width" not in roles:
            refuse_widths(searcher.space, f"greedy with knobs={list(roles)}")
        self.knobs = knobs_of(searcher.space, roles)
        if not self.knobs:
            raise ConfigError("greedy: no layer has two candidates to choose between")
        self.rows: list[dict[str, Any]] = []

    def choices(self, override: tuple[Knob, int] | None = None) -> dict[str, Any]:
        out = base_choices(self.s.space)
        for k in self.knobs:
            out[k.key] = k.levels[override[1] if override and override[0] is k else k.index]
        return out

    def measure(self, plan: Plan, label: str) -> dict[str, Any]:
        """Build, cost, train for the proxy budget and test one candidate; one row of the trial table."""
        torch.manual_seed(self.s.cfg.seed * 100_003 + len(self.rows))
        model = self.s.build(plan)
        costing = self.s.measure(model, plan)
        acc = self.s.train_proxy(model)
        row = {"number": len(self.rows), "state": "COMPLETE", "params": {}, "step": label, "accuracy": acc,
               "energy_pj": costing.energy_pj, "cost": costing.cost, "size_bits": costing.size_bits,
               "value": self.s.score(acc, costing.cost, self.s.stored_bits(model)),
               "violation": costing.violation, "infeasible": False, "accepted": None}
        self.rows.append(row)
        return row

    def run(self) -> Outcome:
        cfg = self.s.cfg
        top_plan = self.s.space.plan_from(self.choices())
        top = self.measure(top_plan, "top")
        top["accepted"] = True
        floor = combined_floor(top["accuracy"], self.max_drop, self.s.task)  # the task's own floor holds too
        for k in self.knobs:  # single-bit models
            row = self.measure(self.s.space.plan_from(self.choices((k, len(k.levels) - 1))), f"single-bit {k.key}")
            k.kept = min(1.0, row["accuracy"] / top["accuracy"]) if top["accuracy"] > 0 else 0.0
            k.share = max(0.0, (top["cost"] - row["cost"]) / top["cost"]) if top["cost"] > 0 else 0.0
            row["params"] = {k.key: k.levels[-1]}
        accepted = [(top_plan, top)]
        order: list[str] = []
        steps = 0
        while steps < cfg.n_trials and not (self._has_caps() and accepted[-1][1]["violation"] == 0):
            movable = [k for k in self.knobs if not k.frozen and k.index < len(k.levels) - 1]
            if not movable:
                break
            k = max(movable, key=lambda kn: kn.weight)
            k.index += 1
            plan = self.s.space.plan_from(self.choices())
            row = self.measure(plan, f"lower {k.key}")
            row["params"] = {k.key: k.levels[k.index]}
            steps += 1
            order.append(k.key)
            if row["accuracy"] < floor:
                row["accepted"] = False
                k.index -= 1
                k.frozen = True
                log.info("greedy: %s -> %s loses accuracy (%.4f < %.4f); frozen", k.key, k.levels[k.index + 1],
                         row["accuracy"], floor)
                continue
            row["accepted"] = True
            accepted.append((plan, row))
            log.info("greedy: %s -> %s, accuracy %.4f, cost %.4g", k.key, k.levels[k.index], row["accuracy"],
                     row["cost"])
        feasible = [a for a in accepted if a[1]["violation"] == 0]
        pool = feasible or accepted
        plan, best = min(pool, key=lambda a: a[1]["cost"])
        if not feasible and self._has_caps():
            log.warning("greedy: no accepted candidate is under the caps; returning the cheapest accepted one")
        extra = {"greedy": {"top_accuracy": top["accuracy"], "order": order,
                            "knobs": {k.key: {"kept": k.kept, "energy_share": k.share, "weight": k.weight,
                                              "final": k.levels[k.index]} for k in self.knobs}}}
        return Outcome(plan, self.rows, extra=extra)

    def _has_caps(self) -> bool:
        cfg = self.s.cfg
        return any(c is not None for c in (cfg.max_energy_pj, cfg.max_bits, cfg.max_params))


@register_controller("greedy", OPTIONS, widths=True)
def greedy_controller(searcher: Any) -> Outcome:
    return _Greedy(searcher).run()

"""Registry of the search methods that are not Optuna samplers: controllers and schedules.

A registered method is a function ``method(searcher) -> Outcome`` called by the runner instead of the
Optuna study. ``searcher`` is the runner's search state (reference model, :class:`SearchSpace`, task,
:class:`SearchConfig`, reference energy and cost, ``cost_fn``, ``violation(energy, bits, params)``) with
the steps every method shares: ``build(plan)``, ``measure(model, plan) -> Costing`` and
``train_proxy(model) -> accuracy``.
The method returns the plan the runner fine-tunes, encodes and reports like any other, plus what a plan
cannot hold: pruning masks, the weights to start fine-tuning from (same shapes as the reference), and
extra summary entries (the hardware configuration of a co-design).

Built-in: controllers ``differentiable`` and ``greedy``; schedule ``iterative``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..energy.estimate import estimate_energy
from ..errors import ConfigError
from ..quant.plan import Plan

__all__ = ["Outcome", "Costing", "register_controller", "register_schedule", "PLAN_CONTROLLERS", "SCHEDULES",
           "run_method", "method_options", "candidate_energy", "refuse_widths", "refuse_input_steps", "refuse_trials",
           "searches_widths"]


@dataclass
class Outcome:
    """What a non-Optuna method hands back to the runner."""

    plan: Plan
    trials: list[dict[str, Any]]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)   #: module name -> 0/1 mask (weight shape)
    state: dict[str, torch.Tensor] | None = None                    #: reference state_dict to fine-tune from
    extra: dict[str, Any] = field(default_factory=dict)             #: added to the JSON summary
    energy_settings: dict[str, Any] | None = None                   #: hardware the final energy is costed on


@dataclass
class Costing:
    """What a candidate costs, before any training decides its accuracy."""

    report: Any               #: the energy report (costed with the candidate's plan)
    cost: float               #: the search's cost: energy in pJ, size in bits or the measured cost
    size_bits: int            #: parameters x their quantizers' bits
    params: int               #: parameter count
    violation: float          #: relative amount over the caps (0: feasible)

    @property
    def energy_pj(self) -> float:
        return float(self.report.total_pj)


Method = Callable[[Any], Outcome]
PLAN_CONTROLLERS: dict[str, Method] = {}
SCHEDULES: dict[str, Method] = {}
#: option names each method reads from ``SearchConfig.options`` (anything else is an error)
_OPTIONS: dict[str, frozenset[str]] = {}
#: methods that search the space's width multipliers (the others refuse a space that has some)
_WIDTHS: set[str] = set()
#: options every method accepts (hardware co-design)
COMMON_OPTIONS = frozenset({"codesign", "hardware"})


def _register(table: dict[str, Method], kind: str, name: str, options: tuple[str, ...],
              widths: bool) -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        if name in table:
            raise ConfigError(f"{kind} {name!r} registered twice")
        table[name] = fn
        _OPTIONS[f"{kind}:{name}"] = frozenset(options)
        if widths:
            _WIDTHS.add(f"{kind}:{name}")
        return fn
    return deco


def register_controller(name: str, options: tuple[str, ...] = (), *,
                        widths: bool = False) -> Callable[[Method], Method]:
    """Register a controller reachable as ``SearchConfig(controller=name)`` / ``--controller name``;
    ``widths``: it searches the space's width multipliers."""
    return _register(PLAN_CONTROLLERS, "controller", name, options, widths)


def register_schedule(name: str, options: tuple[str, ...] = (), *, widths: bool = False) -> Callable[[Method], Method]:
    """Register a schedule reachable as ``SearchConfig(schedule=name)`` / ``--schedule name``."""
    return _register(SCHEDULES, "schedule", name, options, widths)


def searches_widths(controller: str, schedule: str) -> bool:
    """Whether the selected method searches width multipliers (every Optuna controller does)."""
    if schedule != "single":
        return f"schedule:{schedule}" in _WIDTHS
    return controller not in PLAN_CONTROLLERS or f"controller:{controller}" in _WIDTHS


def refuse_widths(space: Any, method: str) -> None:
    """Raise :class:`ConfigError` when the space has width multipliers ``method`` would not search."""
    groups = sorted(getattr(space, "width_choices", {}) or {})
    if groups:
        raise ConfigError(f"{method} searches quantizers and pruning, not widths, but the search space has width "
                          f"multipliers for {groups}: build it with widths=(1.0,) (or keep those widths), or use "
                          "the greedy or an Optuna controller")


def refuse_input_steps(space: Any, method: str) -> None:
    """Raise :class:`ConfigError` when the space has per-channel input steps (``bits['input']``) that ``method``
    would not fit: it trains the reference's own parameters and rebuilds the candidate from them, so the folded
    weights would be read with unit steps (a wrong model)."""
    groups = sorted({layer.group for layer in getattr(space, "layers", ()) if getattr(layer, "input", None)})
    if groups:
        raise ConfigError(f"{method} trains the reference's parameters and does not fit per-channel input steps, "
                          f"but the search space has bits['input'] for {groups}: leave bits['input'] out, or use "
                          "the greedy or an Optuna controller")


def refuse_trials(cfg: Any, method: str) -> None:
    """Raise :class:`ConfigError` when ``n_trials`` was changed for a method that runs no trials."""
    from .runner import SearchConfig

    default = SearchConfig.__dataclass_fields__["n_trials"].default
    if cfg.n_trials != default:
        raise ConfigError(f"n_trials={cfg.n_trials} does not apply to {method}: it trains once (set its length "
                          f"with the 'epochs' option) and runs no trials")


def _energy_plan(plan: Plan) -> Plan:
    """The plan's quantizers without its widths, for the energy model (output quantizers of norms and blocks
    and the weights of embedding / recurrent layers are read from it by module name)."""
    return Plan(dict(plan.layers), plan.default, {})


def candidate_energy(model: nn.Module, example_inputs: Any, plan: Plan, settings: dict[str, Any]) -> Any:
    """Energy report of a candidate built from ``plan``, costed with the plan like the Optuna trials (the
    plan gives what the candidate's fake-quant modules do not hold: norm / block outputs, embedding and
    recurrent weights)."""
    return estimate_energy(model, example_inputs, _energy_plan(plan), **settings)


def method_options(controller: str, schedule: str, options: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` for an option no selected method reads (it would be ignored)."""
    known = set(COMMON_OPTIONS)
    if schedule != "single":
        known |= _OPTIONS.get(f"schedule:{schedule}", frozenset())
    elif controller in PLAN_CONTROLLERS:
        known |= _OPTIONS.get(f"controller:{controller}", frozenset())
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"search option(s) {unknown} do not apply to controller {controller!r} with schedule "
                          f"{schedule!r}; they read {sorted(known)}")


def run_method(searcher: Any) -> Outcome:
    """Run the searcher's schedule (or its non-Optuna controller); co-design wraps either."""
    cfg = searcher.cfg
    if cfg.options.get("codesign"):
        from .codesign import run_codesign

        return run_codesign(searcher)
    if cfg.schedule != "single":
        return SCHEDULES[cfg.schedule](searcher)
    return PLAN_CONTROLLERS[cfg.controller](searcher)


def uses_method(controller: str, schedule: str, options: dict[str, Any]) -> bool:
    """Whether the runner hands the search to this registry instead of one Optuna study."""
    return controller in PLAN_CONTROLLERS or schedule != "single" or bool(options.get("codesign"))


from . import differentiable, greedy, iterative  # noqa: E402,F401  (register the built-in methods)

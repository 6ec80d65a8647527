"""Registry of the search methods that are not Optuna samplers: controllers and schedules.

A registered method is a function ``method(searcher) -> Outcome`` called by the runner instead of the
Optuna study. ``searcher`` is the runner's search state (reference model, :class:`SearchSpace`, task,
:class:`SearchConfig`, reference energy and cost, ``cost_fn``, ``violation(energy, bits, params)``).
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

from ..errors import ConfigError
from ..quant.plan import Plan

__all__ = ["Outcome", "register_controller", "register_schedule", "PLAN_CONTROLLERS", "SCHEDULES",
           "run_method", "method_options"]


@dataclass
class Outcome:
    """What a non-Optuna method hands back to the runner."""

    plan: Plan
    trials: list[dict[str, Any]]
    masks: dict[str, torch.Tensor] = field(default_factory=dict)   #: module name -> 0/1 mask (weight shape)
    state: dict[str, torch.Tensor] | None = None                    #: reference state_dict to fine-tune from
    extra: dict[str, Any] = field(default_factory=dict)             #: added to the JSON summary
    energy_settings: dict[str, Any] | None = None                   #: hardware the final energy is costed on


Method = Callable[[Any], Outcome]
PLAN_CONTROLLERS: dict[str, Method] = {}
SCHEDULES: dict[str, Method] = {}
#: option names each method reads from ``SearchConfig.options`` (anything else is an error)
_OPTIONS: dict[str, frozenset[str]] = {}
#: options every method accepts (hardware co-design)
COMMON_OPTIONS = frozenset({"codesign", "hardware"})


def _register(table: dict[str, Method], kind: str, name: str, options: tuple[str, ...]) -> Callable[[Method], Method]:
    def deco(fn: Method) -> Method:
        if name in table:
            raise ConfigError(f"{kind} {name!r} registered twice")
        table[name] = fn
        _OPTIONS[f"{kind}:{name}"] = frozenset(options)
        return fn
    return deco


def register_controller(name: str, options: tuple[str, ...] = ()) -> Callable[[Method], Method]:
    """Register a controller reachable as ``SearchConfig(controller=name)`` / ``--controller name``."""
    return _register(PLAN_CONTROLLERS, "controller", name, options)


def register_schedule(name: str, options: tuple[str, ...] = ()) -> Callable[[Method], Method]:
    """Register a schedule reachable as ``SearchConfig(schedule=name)`` / ``--schedule name``."""
    return _register(SCHEDULES, "schedule", name, options)


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

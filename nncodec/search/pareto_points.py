"""The search's Pareto set of plans as one scalable stream (FORMAT.md §13): one operating point per plan.

The front is taken over the completed, feasible trials (lower energy, higher accuracy; the search's proxy
accuracy and its energy-model figure, stored with each point). Each plan is applied to the reference
(:func:`~nncodec.search.candidate.build_candidate`) and its quantized codes become a point. Points must
nest: a plan whose tensors are narrower than a cheaper plan's cannot follow it in one stream, so such plans
are left out (logged, and listed in the returned ``skipped``).

With ``joint_training=(x, y)`` the plans' widths become slimmable widths
(:mod:`nncodec.search.slimmable`): a copy of the reference is fine-tuned once with every point's width
trained jointly (each step sums the losses of the widths, sharing the weights), and point ``k`` is the
channel prefix of width ``w_k`` of that one model under its plan's quantizers, so the narrow points are
usable and their tensors nest in the wider ones'.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..checks import is_int, is_number
from ..errors import ConfigError
from .candidate import build_candidate
from .space import SearchSpace

__all__ = ["pareto_front", "encode_pareto"]

log = logging.getLogger(__name__)


def pareto_front(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The non-dominated trial rows (as :attr:`SearchResult.trials` lists them) by (energy, accuracy),
    ascending in energy. Rows that did not complete, are infeasible or lack either figure are left out."""
    rows = [t for t in trials if t.get("state") == "COMPLETE" and not t.get("infeasible")
            and isinstance(t.get("accuracy"), (int, float)) and isinstance(t.get("energy_pj"), (int, float))]
    rows.sort(key=lambda t: (t["energy_pj"], -t["accuracy"]))
    front: list[dict[str, Any]] = []
    for t in rows:
        if not front or t["accuracy"] > front[-1]["accuracy"]:
            if front and t["energy_pj"] == front[-1]["energy_pj"]:
                continue
            front.append(t)
    return front


def _shapes(tensors: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {n: tuple((v[0] if isinstance(v, tuple) else v.codes).shape) for n, v in tensors.items()}


def encode_pareto(reference: nn.Module, space: SearchSpace, trials: Sequence[dict[str, Any]],
                  dst: "str | os.PathLike[str] | None" = None, *, max_points: int = 4,
                  joint_training: "tuple[np.ndarray, np.ndarray] | None" = None, joint_epochs: int = 3,
                  joint_lr: float = 2e-3, evaluate: "Callable[[nn.Module], float] | None" = None,
                  **options: Any) -> tuple["bytes | Path", Any, list[int]]:
    """Encode up to ``max_points`` plans of the Pareto front of ``trials`` as one scalable stream.

    Returns ``(bytes or path, ScalableReport, numbers of the front's trials left out as not nested)``.
    ``options`` are the encoder's shared options (``level``, ``metadata``...).

    ``joint_training=(x, y)`` (classifier inputs and labels) fine-tunes the nested widths jointly for
    ``joint_epochs`` at learning rate ``joint_lr`` (see the module docstring); each plan must then narrow
    every width group of ``space`` by one multiplier <= 1 (``width_mode="block"``), or none, on an
    ``nn.Sequential`` reference. The
    search's accuracies were measured on other weights, so a point's accuracy is then ``evaluate(point's
    model)`` when given, else not stated. The energies (shapes and quantizers) stay the search's.
    """
    if joint_training is not None:
        return _encode_jointly(reference, space, trials, dst, max_points, joint_training, joint_epochs, joint_lr,
                               evaluate, options)
    if evaluate is not None:
        raise ConfigError("evaluate applies only with joint_training")
    from ..scalable import encode_scalable
    from ..topology import TopologyError, describe
    from ..torch_io import tensors_from

    front = _front(trials, max_points)
    def candidate(row: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        model = build_candidate(reference, space.input_shape, space.plan_from(row["params"]))
        return model, tensors_from(model, quantized=True)

    def narrower(now: tuple[Any, dict[str, Any]], before: tuple[Any, dict[str, Any]]) -> bool:
        a, b = _shapes(now[1]), _shapes(before[1])
        return set(a) != set(b) or any(len(a[n]) != len(b[n]) or any(x < y for x, y in zip(a[n], b[n])) for n in a)

    nested, skipped = _keep_nested(front, candidate, narrower)
    kept = [(row, model, tensors) for row, (model, tensors) in _spread(nested, max_points)]
    points = [{"tensors": tensors, "energy_pj": float(row["energy_pj"]), "accuracy": float(row["accuracy"]),
               "label": f"trial {row.get('number')}"} for row, _, tensors in kept]
    try:
        topology = describe(kept[-1][1])
    except TopologyError:
        topology = None
    data, report = encode_scalable(kept[-1][2], points, dst, topology=topology, **options)
    if any(math.isnan(p.energy_pj) for p in report.points):
        raise ConfigError("a Pareto point lost its energy")  # pragma: no cover - energies come from the rows
    return data, report, skipped


def _front(trials: Sequence[dict[str, Any]], max_points: Any) -> list[dict[str, Any]]:
    if not is_int(max_points) or not 1 <= max_points <= 255:
        raise ConfigError(f"max_points must be an integer 1..255, got {max_points!r}")
    front = pareto_front(trials)
    if not front:
        raise ConfigError("no completed, feasible trial with accuracy and energy: nothing to encode")
    return front


def _keep_nested(front: list[dict[str, Any]], item_of: Callable[[dict[str, Any]], Any],
                 narrower: Callable[[Any, Any], bool]) -> tuple[list[tuple[dict[str, Any], Any]], list[int]]:
    """``(row, item_of(row))`` of the front's rows whose item is not ``narrower`` than the last kept one's,
    and the numbers of the rows left out."""
    kept: list[tuple[dict[str, Any], Any]] = []
    skipped: list[int] = []
    for row in front:
        item = item_of(row)
        if kept and narrower(item, kept[-1][1]):
            log.info("Pareto plan of trial %s is narrower than a cheaper one: left out of the stream",
                     row.get("number"))
            skipped.append(row.get("number"))
            continue
        kept.append((row, item))
    return kept, skipped


def _spread(kept: list, max_points: int) -> list:
    """At most ``max_points`` of ``kept``, evenly spread over it, its first and last kept."""
    if len(kept) <= max_points:
        return kept
    idx = sorted({round(i * (len(kept) - 1) / (max_points - 1)) for i in range(max_points)}) \
        if max_points > 1 else [len(kept) - 1]
    return [kept[i] for i in idx]


def _block_width(space: SearchSpace, plan: Any, number: Any) -> float:
    """The one multiplier ``plan`` narrows every width group by (1.0: none)."""
    values = set(plan.widths.values())
    if not values:
        return 1.0
    w = float(next(iter(values)))
    if len(values) > 1 or set(plan.widths) != set(space.width_choices) or w > 1.0:
        raise ConfigError(f"joint training needs each plan to narrow every width group by one multiplier <= 1 "
                          f"(width_mode='block'); trial {number} has widths {dict(plan.widths)}")
    return w


def _encode_jointly(reference: nn.Module, space: SearchSpace, trials: Sequence[dict[str, Any]], dst: Any,
                    max_points: int, joint_training: Any, epochs: int, lr: Any, evaluate: Any,
                    options: dict[str, Any]) -> tuple["bytes | Path", Any, list[int]]:
    from ..quant.layers import quantize_model
    from ..scalable import encode_scalable
    from ..topology import describe
    from ..torch_io import tensors_from
    from .slimmable import sub_network, train_slimmable

    if not (isinstance(joint_training, tuple) and len(joint_training) == 2):
        raise ConfigError("joint_training must be a tuple (inputs, labels) of numpy arrays")
    if not is_int(epochs) or epochs < 1:
        raise ConfigError(f"joint_epochs must be a positive integer, got {epochs!r}")
    if not is_number(lr) or not 0 < lr < 10:
        raise ConfigError(f"joint_lr must be a positive learning rate, got {lr!r}")
    if evaluate is not None and not callable(evaluate):
        raise ConfigError("evaluate must be a callable (model -> accuracy)")
    front = _front(trials, max_points)
    def plan_width(row: dict[str, Any]) -> tuple[Any, float]:
        plan = space.plan_from(row["params"])
        return plan, _block_width(space, plan, row.get("number"))

    nested, skipped = _keep_nested(front, plan_width, lambda now, before: now[1] < before[1])
    kept = [(row, plan, w) for row, (plan, w) in _spread(nested, max_points)]
    shared = copy.deepcopy(reference)
    train_slimmable(shared, *joint_training, [w for _, _, w in kept], epochs=epochs, lr=lr)
    points, model = [], None
    for row, plan, w in kept:
        model = quantize_model(sub_network(shared, w), dataclasses.replace(plan, widths={}), inplace=True)
        point = {"tensors": tensors_from(model, quantized=True), "energy_pj": float(row["energy_pj"]),
                 "label": f"trial {row.get('number')}, width {w:g}"}
        if evaluate is not None:
            point["accuracy"] = float(evaluate(model))
        points.append(point)
    data, report = encode_scalable(points[-1]["tensors"], points, dst, topology=describe(model), **options)
    return data, report, skipped

"""The search's Pareto set of plans as one scalable stream (FORMAT.md §13): one operating point per plan.

The front is taken over the completed, feasible trials (lower energy, higher accuracy; the search's proxy
accuracy and its energy-model figure, stored with each point). Each plan is applied to the reference
(:func:`~nncodec.search.candidate.build_candidate`) and its quantized codes become a point. Points must
nest: a plan whose tensors are narrower than a cheaper plan's cannot follow it in one stream, so such plans
are left out (logged, and listed in the returned ``skipped``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

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
                  **options: Any) -> tuple["bytes | Path", Any, list[int]]:
    """Encode up to ``max_points`` plans of the Pareto front of ``trials`` as one scalable stream.

    Returns ``(bytes or path, ScalableReport, numbers of the front's trials left out as not nested)``.
    ``options`` are the encoder's shared options (``level``, ``metadata``...).
    """
    from ..scalable import encode_scalable
    from ..topology import TopologyError, describe
    from ..torch_io import tensors_from

    if not isinstance(max_points, int) or not 1 <= max_points <= 255:
        raise ConfigError(f"max_points must be an integer 1..255, got {max_points!r}")
    front = pareto_front(trials)
    if not front:
        raise ConfigError("no completed, feasible trial with accuracy and energy: nothing to encode")
    kept: list[tuple[dict[str, Any], Any, dict[str, Any]]] = []
    skipped: list[int] = []
    for row in front:
        model = build_candidate(reference, space.input_shape, space.plan_from(row["params"]))
        tensors = tensors_from(model, quantized=True)
        if kept:
            before = _shapes(kept[-1][2])
            now = _shapes(tensors)
            if set(now) != set(before) or any(len(now[n]) != len(before[n]) or any(
                    a < b for a, b in zip(now[n], before[n])) for n in now):
                log.info("Pareto plan of trial %s is narrower than a cheaper one: left out of the stream",
                         row.get("number"))
                skipped.append(row.get("number"))
                continue
        kept.append((row, model, tensors))
    if len(kept) > max_points:  # evenly spread over the front, cheapest and best kept
        idx = sorted({round(i * (len(kept) - 1) / (max_points - 1)) for i in range(max_points)}) \
            if max_points > 1 else [len(kept) - 1]
        kept = [kept[i] for i in idx]
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

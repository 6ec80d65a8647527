"""Choosing an operating point of a scalable stream (FORMAT.md §13) by an energy budget, at load time.

Only the units before the first tensor are read to list the points, so a device learns what it can afford
before reading any weights. Numpy-free and torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .bitstream.operating_points import OperatingPoint
from .bitstream.reader import open_source
from .checks import is_number
from .decoder import Source, StreamWalker
from .errors import ConfigError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["read_operating_points", "choose_point"]


def read_operating_points(src: Source, *, limits: Limits = DEFAULT_LIMITS) -> list[OperatingPoint]:
    """The operating points of ``src`` (empty when it has none), reading only the units before its first
    tensor (and that tensor's first bytes, for a seekable source). A path or file is left where it was."""
    f, owned = open_source(src)  # type: ignore[arg-type]
    here = f.tell() if f.seekable() else None
    try:
        walker = StreamWalker(f, limits, defer_tensors=f.seekable())
        units = walker.tensor_units()
        try:
            next(units)
        except StopIteration:
            pass
        finally:
            units.close()
        return walker.operating_points
    finally:
        if owned:
            f.close()
        elif here is not None:
            f.seek(here)


def choose_point(points: Sequence[OperatingPoint], energy_budget_pj: float) -> int:
    """The index of the best point whose stated energy is within ``energy_budget_pj`` (pJ per input).

    Best: the highest measured accuracy among the affordable points, else (no accuracy stated) the last
    affordable point, the largest model. Points without a stated energy are never chosen by a budget.
    """
    if not is_number(energy_budget_pj) \
            or math.isnan(energy_budget_pj):
        raise ConfigError(f"energy_budget_pj must be a number, got {energy_budget_pj!r}")
    if not points:
        raise ConfigError("energy_budget_pj needs a stream with operating points; this one has none")
    fits = [p for p in points if not math.isnan(p.energy_pj) and p.energy_pj <= energy_budget_pj]
    if not fits:
        stated = [p.energy_pj for p in points if not math.isnan(p.energy_pj)]
        cheapest = f"the cheapest point needs {min(stated):.6g} pJ" if stated else "no point states its energy"
        raise ConfigError(f"no operating point fits an energy budget of {energy_budget_pj:.6g} pJ: {cheapest}")
    if any(not math.isnan(p.accuracy) for p in fits):
        return max(fits, key=lambda p: (-math.inf if math.isnan(p.accuracy) else p.accuracy, p.index)).index
    return fits[-1].index

"""The seed's score: accuracy scaled by how much cheaper (or costlier) a candidate is (eq. 2).

``delta = (p / 100) * ln(stress * E_ref / E) / ln(r)`` and ``score = accuracy * (1 + delta)``, with
``(p, r) = (p_smaller, r_smaller)`` when the candidate costs at most the reference, else
``(p_larger, r_larger)``. With the seed's defaults a candidate at half the cost gains 8 % of accuracy
and one at three times the cost loses 2 %. ``stress`` > 1 rewards savings more (QKeras ignores it for
the energy goal; nncodec applies it). The cost may be energy (pJ) or size (bits): the formula is the same.
:func:`joint_score` applies it once per cost (energy and size): ``accuracy * prod(1 + delta_i)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..checks import is_number
from ..errors import ConfigError

__all__ = ["ScoreConfig", "scaling_delta", "score", "joint_score"]


@dataclass(frozen=True)
class ScoreConfig:
    p_smaller: float = 8.0
    r_smaller: float = 2.0
    p_larger: float = 2.0
    r_larger: float = 3.0
    stress: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not is_number(v) or not math.isfinite(v):
                raise ConfigError(f"score: {f.name} must be a finite number, got {v!r}")
        if self.r_smaller <= 1 or self.r_larger <= 1 or self.stress <= 0:
            raise ConfigError("score: r_smaller and r_larger must be > 1 and stress > 0")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def coerce(cls, value: "ScoreConfig | dict[str, Any]", where: str = "score") -> "ScoreConfig":
        """A :class:`ScoreConfig`, or one made from a dict of its fields (unknown keys are an error)."""
        return coerce_settings(cls, value, where)



def coerce_settings(cls: type, value: Any, where: str) -> Any:
    """``value`` if it is a ``cls`` (a settings dataclass), else a ``cls`` made from a dict of its fields;
    anything else, or an unknown key, is a :class:`ConfigError` naming ``where``."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a {cls.__name__} or a dict of its fields, got {type(value).__name__}")
    unknown = sorted(set(value) - {f.name for f in fields(cls)})
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; the fields are {[f.name for f in fields(cls)]}")
    return cls(**value)


def scaling_delta(cost: float, reference_cost: float, cfg: ScoreConfig = ScoreConfig()) -> float:
    if cost <= 0 or reference_cost <= 0:
        raise ConfigError(f"costs must be positive (candidate {cost}, reference {reference_cost})")
    p, r = (cfg.p_smaller, cfg.r_smaller) if cost <= reference_cost else (cfg.p_larger, cfg.r_larger)
    return (p / 100.0) * math.log(cfg.stress * reference_cost / cost) / math.log(r)


def score(accuracy: float, cost: float, reference_cost: float, cfg: ScoreConfig = ScoreConfig()) -> float:
    """``accuracy * (1 + delta)``; accuracy as a fraction."""
    return accuracy * (1.0 + scaling_delta(cost, reference_cost, cfg))


def joint_score(accuracy: float, costs: Iterable[tuple[float, float, ScoreConfig]]) -> float:
    """``accuracy * prod(1 + delta_i)`` over ``(cost, reference_cost, cfg)`` triples: eq. 2 once per cost, e.g.
    energy (pJ) and size (bits), each against its own reference. With one triple this is :func:`score`."""
    out = accuracy
    for cost, reference_cost, cfg in costs:
        out *= 1.0 + scaling_delta(cost, reference_cost, cfg)
    return out

"""The seed's score: accuracy scaled by how much cheaper (or costlier) a candidate is (eq. 2).

``delta = (p / 100) * ln(stress * E_ref / E) / ln(r)`` and ``score = accuracy * (1 + delta)``, with
``(p, r) = (p_smaller, r_smaller)`` when the candidate costs at most the reference, else
``(p_larger, r_larger)``. With the seed's defaults a candidate at half the cost gains 8 % of accuracy
and one at three times the cost loses 2 %. ``stress`` > 1 rewards savings more (QKeras ignores it for
the energy goal; nncodec applies it). The cost may be energy (pJ) or size (bits): the formula is the same.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..errors import ConfigError

__all__ = ["ScoreConfig", "scaling_delta", "score"]


@dataclass(frozen=True)
class ScoreConfig:
    p_smaller: float = 8.0
    r_smaller: float = 2.0
    p_larger: float = 2.0
    r_larger: float = 3.0
    stress: float = 1.0

    def __post_init__(self) -> None:
        if self.r_smaller <= 1 or self.r_larger <= 1 or self.stress <= 0:
            raise ConfigError("score: r_smaller and r_larger must be > 1 and stress > 0")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def scaling_delta(cost: float, reference_cost: float, cfg: ScoreConfig = ScoreConfig()) -> float:
    if cost <= 0 or reference_cost <= 0:
        raise ConfigError(f"costs must be positive (candidate {cost}, reference {reference_cost})")
    p, r = (cfg.p_smaller, cfg.r_smaller) if cost <= reference_cost else (cfg.p_larger, cfg.r_larger)
    return (p / 100.0) * math.log(cfg.stress * reference_cost / cost) / math.log(r)


def score(accuracy: float, cost: float, reference_cost: float, cfg: ScoreConfig = ScoreConfig()) -> float:
    """``accuracy * (1 + delta)``; accuracy as a fraction."""
    return accuracy * (1.0 + scaling_delta(cost, reference_cost, cfg))

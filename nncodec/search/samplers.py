"""Two controllers as Optuna samplers: REINFORCE (reinforcement learning) and keep-best-and-mutate (evolution).

Both keep no state of their own: everything they know is recomputed from the study's finished trials,
in trial-number order, with random draws seeded by ``(seed, trial number, parameter)``. So they share
storage, resume after a crash and run in any number of workers exactly like Optuna's own samplers.
Both handle categorical parameters (the search space is all categorical) and single-objective studies;
a parameter of any other distribution is drawn by the fallback random sampler.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

__all__ = ["ReinforceSampler", "EvolutionSampler"]


def _rng(seed: int | None, *parts: Any) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _finished(study: Study) -> list[FrozenTrial]:
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.number)


def _reward(study: Study, trial: FrozenTrial) -> float:
    value = float(trial.value)  # type: ignore[arg-type]
    return value if study.direction == StudyDirection.MAXIMIZE else -value


class ReinforceSampler(BaseSampler):
    """A factorised softmax policy over each categorical choice, trained with REINFORCE and a baseline.

    Replaying the finished trials in order: advantage ``A = (R - b) / s`` (``b`` an exponential moving
    average of rewards, ``s`` their running standard deviation), then ``logits += lr * A * (onehot(a) - pi)``
    for every parameter. The first ``n_startup_trials`` are uniform random.
    """

    def __init__(self, *, seed: int | None = None, learning_rate: float = 0.5, baseline_decay: float = 0.8,
                 n_startup_trials: int = 5):
        self._seed = seed
        self._lr = learning_rate
        self._decay = baseline_decay
        self._n_startup = n_startup_trials
        self._fallback = RandomSampler(seed=seed)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        return {}

    def policy(self, study: Study, name: str, dist: CategoricalDistribution) -> np.ndarray:
        """Probabilities of each choice of ``name`` after replaying the finished trials."""
        k = len(dist.choices)
        logits = np.zeros(k)
        baseline, mean_sq, n = 0.0, 0.0, 0
        for t in _finished(study):
            if name not in t.params:
                continue
            r = _reward(study, t)
            if n == 0:
                baseline, mean_sq = r, r * r
            scale = max(np.sqrt(max(mean_sq - baseline ** 2, 0.0)), 1e-6)
            adv = (r - baseline) / scale if n else 0.0
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            try:
                a = dist.choices.index(t.params[name])
            except ValueError:
                continue
            grad = -probs
            grad[a] += 1.0
            logits += self._lr * np.clip(adv, -3, 3) * grad
            baseline = self._decay * baseline + (1 - self._decay) * r
            mean_sq = self._decay * mean_sq + (1 - self._decay) * r * r
            n += 1
        probs = np.exp(logits - logits.max())
        return probs / probs.sum()

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if not isinstance(param_distribution, CategoricalDistribution) or len(study.directions) > 1:
            return self._fallback.sample_independent(study, trial, param_name, param_distribution)
        rng = _rng(self._seed, trial.number, param_name)
        if len(_finished(study)) < self._n_startup:
            return param_distribution.choices[int(rng.integers(len(param_distribution.choices)))]
        probs = self.policy(study, param_name, param_distribution)
        return param_distribution.choices[int(rng.choice(len(probs), p=probs))]


class EvolutionSampler(BaseSampler):
    """Keep the best ``population`` trials; a new trial copies a tournament winner and mutates it.

    Each parameter of the parent is redrawn with probability ``mutation_rate`` (at least one always is).
    The first ``n_startup_trials`` are uniform random.
    """

    def __init__(self, *, seed: int | None = None, population: int = 8, mutation_rate: float = 0.25,
                 tournament: int = 3, n_startup_trials: int = 8):
        self._seed = seed
        self._population = population
        self._mutation = mutation_rate
        self._tournament = tournament
        self._n_startup = n_startup_trials
        self._fallback = RandomSampler(seed=seed)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        space = self._space.calculate(study)
        return {k: v for k, v in space.items() if isinstance(v, CategoricalDistribution)}

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
                        ) -> dict[str, Any]:
        finished = _finished(study)
        if not search_space or len(finished) < self._n_startup or len(study.directions) > 1:
            return {}
        rng = _rng(self._seed, trial.number, "evolution")
        elite: Sequence[FrozenTrial] = sorted(finished, key=lambda t: -_reward(study, t))[:self._population]
        contenders = [elite[int(i)] for i in rng.integers(len(elite), size=min(self._tournament, len(elite)))]
        parent = max(contenders, key=lambda t: _reward(study, t))
        names = sorted(search_space)
        movable = [n for n in names if len(getattr(search_space[n], "choices", ())) > 1] or names  # one choice: no move
        forced = movable[int(rng.integers(len(movable)))]
        child = {}
        for name in names:
            dist: CategoricalDistribution = search_space[name]  # type: ignore[assignment]
            value = parent.params.get(name)
            if value is None or name == forced or rng.random() < self._mutation:
                others = [c for c in dist.choices if c != value] or list(dist.choices)
                value = others[int(rng.integers(len(others)))]
            child[name] = value
        return child

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)



"""The joint quantization x width search (seed 003), on Optuna.

Lifecycle of one trial: the controller picks a value for every parameter of the :class:`SearchSpace`;
the plan they describe is applied to the reference (widths first, weights inherited, then fake
quantizers); the candidate's cost (energy from the energy model, size in bits, or a measured cost) is
computed and checked against the hard caps **before any training** (over a cap: reported infeasible,
score 0, never trained); otherwise it is trained for the proxy budget, reporting its score after every
epoch (so hyperband can stop it early), and scored ``accuracy * (1 + delta)``. With ``size_score`` set the
score has a second eq.-2 factor on the candidate's stored size (nonzero weights x their bits, against the
reference's parameters x reference weight bits): ``accuracy * (1 + delta_cost) * (1 + delta_size)``.

After the trials, the best plan is applied to a fresh copy of the reference, optionally pruned
(unstructured magnitude masks), fine-tuned for the full budget, encoded into a bitstream, decoded, and
measured again from the decoded weights.

Budget: ``n_trials`` trials in all (over resumed runs and every worker sharing the study) and, with
``timeout_s``, at most that many seconds of wall time for this call's search phase (the trials; with block
search, split across the blocks in proportion to their trial budgets, time a block leaves unused passing to
the next). No trial starts after the budget is spent, so the search overruns it by at most one trial, and
every study (every block) runs at least one trial. The final fine-tuning, encoding and decoding are
outside the budget (``SearchResult.search_seconds`` is the search phase alone).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import is_int, is_number
from ..energy.estimate import EnergyReport, estimate_energy
from ..energy.operators import qtype
from ..errors import ConfigError
from ..prune.graph import Resizer
from ..prune.unstructured import apply_masks, global_magnitude_masks, sparsity
from ..quant.gptq import initialize_kernels
from ..quant.input_steps import fit_input_steps, input_requantized
from ..quant.plan import Plan
from .candidate import (build_candidate, deployed_copy, model_size_bits, nonzero_size_bits, recalibrate_batch_norms,
                        tracked_norms)
from .controllers import (PLAN_CONTROLLERS, SCHEDULES, Costing, Outcome, candidate_energy, method_options,
                          run_method, uses_method)
from .finetune import Distiller, FineTuneConfig
from .score import ScoreConfig, joint_score
from .space import SearchSpace
from .storage import open_storage, storage_url
from .task import ClassifierTask, Task, combined_floor

__all__ = ["SearchConfig", "SearchResult", "run_search", "run_trials", "CONTROLLERS", "make_sampler", "chance_level"]

log = logging.getLogger(__name__)

OPTUNA_CONTROLLERS = ("random", "tpe", "gp", "hyperband", "nsga2", "rl", "evolution")
CONTROLLERS = OPTUNA_CONTROLLERS + tuple(PLAN_CONTROLLERS)


#: how a candidate's kernels start (SearchConfig.initial_kernels)
INITIAL_KERNELS = ("nearest", "gptq")
#: training inputs the data-aware initial kernels measure layer inputs on (batches of 32)
INITIAL_KERNEL_EXAMPLES = 256
#: training inputs the final candidate's batch-norm statistics are re-estimated on (batches of 256)
FINAL_RECALIBRATION_EXAMPLES = 4096
#: how the final candidate's batch-norm statistics are re-estimated (SearchConfig.final_recalibration)
FINAL_RECALIBRATIONS = ("sequential", "one_pass")
#: how narrowed width groups choose the channels they keep (SearchConfig.width_importance)
WIDTH_IMPORTANCES = ("l1", "l2", "taylor")
#: labelled training examples the first-order Taylor channel scores are summed over (batches of 128)
TAYLOR_EXAMPLES = 512


@dataclass
class SearchConfig:
    """Settings of a search. Costs in pJ (energy) or bits (size)."""

    controller: str = "tpe"
    #: trials in all (over resumes and workers); with ``timeout_s`` an upper bound, None: only the time bounds
    n_trials: int | None = 30
    #: None, or the wall time in seconds of this call's search phase (Optuna controllers only; the final
    #: fine-tuning, encoding and decoding are outside it); no trial starts after it, the last may overrun it
    timeout_s: float | None = None
    proxy_epochs: int = 1
    final_epochs: int = 6
    cost: str = "energy"                      #: "energy" or "size"
    score: ScoreConfig = field(default_factory=ScoreConfig)
    #: None (off), or the eq.-2 parameters of a second score factor on the stored size in bits (nonzero
    #: weights x bits vs the reference's parameters x reference weight bits), multiplied with the cost's factor
    size_score: ScoreConfig | None = None
    max_energy_pj: float | None = None
    max_bits: float | None = None
    max_params: int | None = None
    block_search: bool = False
    block_order: str = "energy"               #: "energy" (descending reference energy) or "input"
    min_trials_per_block: int = 10
    final_prune: float = 0.0                  #: prune this fraction of all weights (global magnitude) before fine-tuning
    #: the final pruning ranks each layer's magnitudes relative to the layer's root mean square (one threshold,
    #: independent of layer scales; for networks with batch norms, where absolute magnitudes can empty a layer)
    final_prune_relative: bool = False
    #: 0: prune ``final_prune`` at once before fine-tuning; n > 0: raise the sparsity over the first n fine-tuning
    #: epochs (after epoch e < n: ``final_prune * (1 - (1 - (e + 1) / n) ** 3)``, Zhu & Gupta's cubic schedule),
    #: so the weights adapt between steps; needs n < final_epochs (epochs left to recover at the full sparsity)
    final_prune_epochs: int = 0
    seed: int = 0
    worker: int = 0                           #: index of this worker process (seeds its sampler differently)
    study_name: str = "nncodec-search"
    storage: str | None = None                #: None: SQLite file in out_dir; or postgresql://...
    out_dir: str = "nncodec_search"
    heartbeat_interval: int = 10
    grace_period: int | None = None
    energy_settings: dict[str, Any] = field(default_factory=lambda: {
        "min_sram_size": 2 ** 27, "weights_memory": "sram", "activations_memory": "sram", "io_traffic": False})
    reference_types: tuple[str, str] = ("int8", "int16")
    progress: bool | None = None
    schedule: str = "single"                  #: "single" (one search) or a registered schedule ("iterative")
    options: dict[str, Any] = field(default_factory=dict)  #: options of the non-Optuna methods (controllers.py)
    #: None, or the largest accuracy loss accepted, a fraction of 1 (0.01: one point) under the reference: trials
    #: whose proxy accuracy falls under ``reference - max_accuracy_drop`` score ``accuracy - floor`` (<= 0, under
    #: every trial that meets it), the pick is the best-scored trial that meets it (none: the most accurate, and
    #: a warning), and a final result under the floor is a warning. Greedy / iterative: their own option.
    max_accuracy_drop: float | None = None
    #: None (the task's own epochs, constant rate), or how the final fine-tuning trains: distillation from the
    #: reference and a learning-rate schedule (:class:`~nncodec.search.finetune.FineTuneConfig`, or a dict)
    finetune: FineTuneConfig | None = None
    #: how a candidate's quantized kernels start: "nearest" (its quantizers round the reference's weights) or
    #: "gptq" (data-aware rounding on the grid of each quantized_bits kernel, from the Hessians of the
    #: candidate's layer inputs, kernels float, on ``INITIAL_KERNEL_EXAMPLES`` training inputs chosen by
    #: ``calibration_index``; kernels of other quantizers keep the nearest codes)
    initial_kernels: str = "nearest"
    #: re-estimate every candidate's batch-norm statistics after building it (narrowed widths and quantizers
    #: shift the inputs the reference's statistics were measured on) on ``INITIAL_KERNEL_EXAMPLES`` training
    #: inputs (``Task.calibration_inputs``, chosen by ``calibration_index``; tasks without them, and models without
    #: batch norms: no-op)
    recalibrate_norms: bool = True
    #: re-estimate the final candidate's batch-norm statistics after every fine-tuning epoch and pruning step
    #: (so after the last one too) on up to ``FINAL_RECALIBRATION_EXAMPLES`` of the inputs it trains on
    #: (``calibration_index``: a seeded random subset in random batches, also when all of them fit); the
    #: running averages that training leaves (momentum 0.1: the last ~10 batches) swing the eval-mode score
    #: by points from one epoch to the next. Tasks without calibration inputs, nets without batch norms: no-op
    final_recalibrate_norms: bool = True
    #: how ``final_recalibrate_norms`` re-estimates them (``recalibrate_batch_norms``): "sequential" (one norm
    #: at a time in execution order, each on exactly the inputs eval mode feeds it; about half a forward pass
    #: per norm) or "one_pass" (every norm at once on inputs normalized by the batch statistics of the norms
    #: before it: one pass, but behind quantizers the statistics do not fit the eval-mode inputs; a pruned 4-bit
    #: ResNet-8 on MNIST-5k swung to 0.775 in one epoch where the sequential estimate gave 0.938)
    final_recalibration: str = "sequential"
    #: 0: the fine-tuning's last epoch is the result. In (0, 1): this fraction of the *training* examples is
    #: held out of the fine-tuning as a selection split (``ClassifierTask.hold_out``, seeded by ``seed``), the
    #: candidate is scored on it after each epoch at the full final sparsity, and the best epoch's weights
    #: and statistics are kept (latest of ties). The task's validation set is never used to choose. The split
    #: is held out of the final fine-tuning only (the reference and the trials trained on it): optimistic scores
    final_selection: float = 0.0
    #: which channels a narrowed width group keeps: the largest "l1" or "l2" norms of their weights, or the
    #: largest first-order Taylor scores ``|w * dCE/dw|`` summed over a channel's weights, with the gradients of
    #: the reference's cross-entropy on ``TAYLOR_EXAMPLES`` training examples (a ClassifierTask's, chosen by
    #: ``calibration_index``), computed once per search. Optuna controllers and greedy (the others build their own candidates)
    width_importance: str = "l1"

    def __post_init__(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ConfigError(f"controller must be one of {CONTROLLERS}, got {self.controller!r}")
        if self.cost not in ("energy", "size"):
            raise ConfigError(f"cost must be 'energy' or 'size', got {self.cost!r}")
        self.score = ScoreConfig.coerce(self.score, "score")
        if self.size_score is not None:
            self.size_score = ScoreConfig.coerce(self.size_score, "size_score")
            if self.cost == "size":
                raise ConfigError("size_score adds a size factor to an energy score; with cost='size' the score "
                                  "already is the size's: use one of them")
            if self.controller == "differentiable" or self.schedule != "single":
                raise ConfigError(f"size_score applies to the Optuna controllers and greedy, not controller="
                                  f"{self.controller!r} with schedule={self.schedule!r} (they score otherwise)")
        if not is_number(self.final_prune) or not 0 <= self.final_prune < 1:
            raise ConfigError(f"final_prune must be a fraction in [0, 1), got {self.final_prune!r}")
        if not isinstance(self.final_prune_relative, bool):
            raise ConfigError(f"final_prune_relative must be True or False, got {self.final_prune_relative!r}")
        if not is_int(self.final_prune_epochs):
            raise ConfigError(f"final_prune_epochs must be an integer, got {self.final_prune_epochs!r}")
        if self.final_prune_relative and not self.final_prune:
            raise ConfigError("final_prune_relative ranks the final pruning's magnitudes: it needs final_prune > 0")
        if self.final_prune_epochs and (not self.final_prune or not 0 < self.final_prune_epochs < self.final_epochs):
            raise ConfigError(f"final_prune_epochs={self.final_prune_epochs} spreads the final pruning over fine-tuning "
                              f"epochs: it needs final_prune > 0 and 0 < final_prune_epochs < final_epochs "
                              f"({self.final_epochs})")
        if self.block_order not in ("energy", "input"):
            raise ConfigError("block_order must be 'energy' or 'input'")
        self._check_budget()
        if self.proxy_epochs < 1 or self.final_epochs < 0:
            raise ConfigError("proxy_epochs must be >= 1, final_epochs >= 0")
        if self.block_search and self.controller == "nsga2":
            raise ConfigError("block search scores with a single objective; use another controller than nsga2")
        if self.schedule != "single" and self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be 'single' or one of {tuple(SCHEDULES)}, got {self.schedule!r}")
        self._check_accuracy_drop()
        if self.initial_kernels not in INITIAL_KERNELS:
            raise ConfigError(f"initial_kernels must be one of {INITIAL_KERNELS}, got {self.initial_kernels!r}")
        for name in ("recalibrate_norms", "final_recalibrate_norms"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.final_recalibration not in FINAL_RECALIBRATIONS:
            raise ConfigError(f"final_recalibration must be one of {FINAL_RECALIBRATIONS}, got "
                              f"{self.final_recalibration!r}")
        if not self.final_recalibrate_norms and self.final_recalibration != FINAL_RECALIBRATIONS[0]:
            raise ConfigError(f"final_recalibration={self.final_recalibration!r} chooses how the final statistics are "
                              "re-estimated: it needs final_recalibrate_norms=True")
        if not is_number(self.final_selection) or not 0 <= self.final_selection < 1:
            raise ConfigError(f"final_selection is the fraction of the training examples held out to choose the "
                              f"fine-tuning's epoch, in [0, 1) (0: the last epoch), got {self.final_selection!r}")
        if self.final_selection and self.final_epochs < 1:
            raise ConfigError(f"final_selection={self.final_selection} chooses among fine-tuning epochs: it needs "
                              "final_epochs >= 1")
        if self.width_importance not in WIDTH_IMPORTANCES:
            raise ConfigError(f"width_importance must be one of {WIDTH_IMPORTANCES}, got {self.width_importance!r}")
        # the co-design with an Optuna controller builds its trials' candidates like the search: these apply
        if self.width_importance != "l1" and (self.schedule != "single" or self.controller == "differentiable"):
            raise ConfigError(f"width_importance={self.width_importance!r} ranks the channels of the candidates the "
                              f"Optuna controllers and greedy build; controller={self.controller!r}, schedule="
                              f"{self.schedule!r} narrows its own way")
        if self.initial_kernels != "nearest" and (self.schedule != "single" or self.controller == "differentiable"):
            raise ConfigError(f"initial_kernels={self.initial_kernels!r} sets the kernels of the candidates the "
                              f"Optuna controllers and greedy build; controller={self.controller!r}, schedule="
                              f"{self.schedule!r} trains its own weights and returns them")
        if self.finetune is not None:
            self.finetune = FineTuneConfig.coerce(self.finetune)
            if self.final_epochs == 0 and not self.finetune.proxy:
                raise ConfigError("finetune trains the final epochs (and, with proxy=True, the trials'); with "
                                  "final_epochs=0 and proxy=False it would train nothing: set final_epochs >= 1")
            if self.finetune.proxy and (self.schedule != "single" or self.controller == "differentiable"):
                raise ConfigError(f"finetune proxy=True trains the trials of the Optuna controllers and greedy; "
                                  f"controller={self.controller!r}, schedule={self.schedule!r} trains its own "
                                  "steps (leave proxy=False: the final fine-tuning still distils)")
        method_options(self.controller, self.schedule, self.options)
        if self.controller in PLAN_CONTROLLERS or self.schedule != "single":
            shared = [k for k, on in (("block_search", self.block_search), ("storage", self.storage is not None),
                                      ("worker", self.worker != 0)) if on]
            if shared:
                raise ConfigError(f"{shared} apply to the Optuna controllers only; controller={self.controller!r}, "
                                  f"schedule={self.schedule!r} runs in one process without a shared study")

    def _check_accuracy_drop(self) -> None:
        drop = self.max_accuracy_drop
        if drop is None:
            return
        if not is_number(drop) or not math.isfinite(drop) or not 0 <= drop < 1:
            raise ConfigError(f"max_accuracy_drop is a fraction in [0, 1) of the reference's score (0.01: one "
                              f"point), got {drop!r}")
        if self.options.get("codesign") or (self.controller == "differentiable" and self.schedule == "single"):
            raise ConfigError("max_accuracy_drop selects among trials; the differentiable controller and the "
                              "co-design train one model (bound its accuracy through their options)")
        if self.controller == "greedy" or self.schedule != "single":
            # their own option: the iterative schedule measures the drop from the reference, greedy from its
            # "top" model (every knob at its widest candidate, proxy-trained); the pick's floor stays the reference's
            own = self.options.get("max_accuracy_drop")
            if own is not None and (not is_number(own) or own != drop):
                raise ConfigError(f"max_accuracy_drop={drop} and options['max_accuracy_drop']={own} disagree: "
                                  "give one of them")
            self.options = {**self.options, "max_accuracy_drop": float(drop)}

    def _check_budget(self) -> None:
        check_budget(self.n_trials, self.timeout_s, controller=self.controller, schedule=self.schedule,
                     options=self.options, block_search=self.block_search)


def check_budget(n_trials: int | None, timeout_s: float | None, *, controller: str = "tpe", schedule: str = "single",
                 options: dict[str, Any] | None = None, block_search: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``n_trials`` / ``timeout_s`` make a budget: at least one set, each
    positive, and the time only for a search that honours it (the Optuna controllers' trials)."""
    options = options or {}
    if timeout_s is not None:
        if not is_number(timeout_s) or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if uses_method(controller, schedule, options):
            raise ConfigError(f"timeout_s applies to the Optuna controllers' trials; controller={controller!r} with "
                              f"schedule={schedule!r}{' and the co-design' if options.get('codesign') else ''} runs "
                              "a fixed schedule (bound its length by its options or n_trials)")
    if n_trials is None:
        if timeout_s is None:
            raise ConfigError("n_trials=None needs timeout_s: the search would never stop")
        if block_search:
            raise ConfigError("block search splits its budget by the blocks' trial shares: give n_trials "
                              "(an upper bound with timeout_s)")
    elif not is_int(n_trials) or n_trials < 1:
        raise ConfigError(f"n_trials must be an integer >= 1 (or None with timeout_s), got {n_trials!r}")


@dataclass
class SearchResult:
    plan: Plan
    model: nn.Module
    reference_accuracy: float
    reference_cost: float
    reference_energy_pj: float
    accuracy: float
    decoded_accuracy: float
    energy_pj: float
    cost: float
    bitstream: Path
    bitstream_bytes: int
    float32_bytes: int
    trials: list[dict[str, Any]]
    layer_table: list[dict[str, Any]]
    seconds: float
    energy_report: EnergyReport | None = None
    warnings: list[str] = field(default_factory=list)   #: things the user should know (a chance-level reference)
    notes: list[str] = field(default_factory=list)      #: what was done on the user's behalf (reference training)
    extra: dict[str, Any] = field(default_factory=dict)  #: summary entries of non-Optuna methods (hardware ...)
    search_seconds: float = 0.0                          #: wall time of the search phase (what timeout_s bounds)
    #: with ``max_accuracy_drop``: the floor, trials that met it, whether the pick and the result met it
    selection: dict[str, Any] = field(default_factory=dict)
    #: where the final steps gain or lose accuracy: the picked trial's proxy score, the candidate before
    #: training, after the final pruning, after each fine-tuning epoch, decoded
    final_steps: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {**self.extra, "reference": {"accuracy": self.reference_accuracy, "energy_pj": self.reference_energy_pj,
                              "float32_bytes": self.float32_bytes},
                "result": {"accuracy": self.accuracy, "decoded_accuracy": self.decoded_accuracy,
                           "energy_pj": self.energy_pj, "bitstream_bytes": self.bitstream_bytes,
                           "plan": self.plan.to_dict()},
                "seconds": self.seconds, "search_seconds": self.search_seconds, "notes": list(self.notes),
                "warnings": list(self.warnings),
                **({"selection": dict(self.selection)} if self.selection else {}),
                **({"final_steps": dict(self.final_steps)} if self.final_steps else {})}


def make_sampler(controller: str, seed: int):  # noqa: ANN201
    import optuna

    from .samplers import EvolutionSampler, ReinforceSampler

    if controller == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if controller in ("tpe", "hyperband"):
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if controller == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5, warn_independent_sampling=False)
    if controller == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    if controller == "rl":
        return ReinforceSampler(seed=seed)
    return EvolutionSampler(seed=seed)


class _Searcher:
    def __init__(self, reference: nn.Module, space: SearchSpace, task: Task, config: SearchConfig,
                 cost_fn: Callable[[nn.Module], float] | None):
        self.reference = reference.eval()
        self.space = space
        self.task = task
        self.cfg = config
        self.cost_fn = cost_fn
        self.out_dir = Path(config.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ref_report = estimate_energy(self.reference, space.example_inputs, reference=config.reference_types,
                                          **config.energy_settings)
        self.ref_energy = self.ref_report.total_pj
        self.ref_cost = self._cost(self.reference, self.ref_report, reference=True)
        self.ref_size = _reference_bits(self.reference, config.reference_types[0])
        self._resizer: Resizer | None = None
        #: the reference's score on the task (set by run_search; measured on first use otherwise)
        self.reference_accuracy: float | None = None
        #: per study, how the pick met ``max_accuracy_drop`` (see :meth:`_best`)
        self.selections: list[dict[str, Any]] = []
        self.picked_accuracy: float | None = None  #: proxy score of the trial the search returned
        self.distiller = (Distiller(self.reference, task, config.finetune) if config.finetune is not None else None)
        if config.width_importance == "taylor" and not isinstance(task, ClassifierTask):
            raise ConfigError(f"width_importance='taylor' scores channels by the cross-entropy gradients on a "
                              f"ClassifierTask's labelled training examples; got a {type(task).__name__}")
        if config.width_importance != "l1" and not space.width_choices and not any(
                w != 1.0 for w in space.fixed.widths.values()):
            raise ConfigError(f"width_importance={config.width_importance!r} ranks the channels of narrowed width "
                              "groups, but the search space narrows none (no width multiplier other than 1.0)")
        if config.initial_kernels == "gptq" and task.calibration_inputs() is None:
            raise ConfigError(f"initial_kernels='gptq' measures layer inputs on the task's training inputs; "
                              f"{type(task).__name__} does not expose them (Task.calibration_inputs)")
        self.url = storage_url(config.storage, self.out_dir)
        self.storage = open_storage(self.url, heartbeat_interval=config.heartbeat_interval,
                                    grace_period=config.grace_period)

    def build(self, plan: Plan) -> nn.Module:
        """The candidate of ``plan`` from the reference; the reference's width analysis is made once and reused
        (the candidates are the same as :func:`build_candidate` without it). A plan naming width groups makes it
        also when every multiplier is 1.0: the names are checked against its groups, not by a trace per trial."""
        if self._resizer is None and plan.widths:
            importance = self.cfg.width_importance
            self._resizer = Resizer(self.reference, self.space.example_inputs, importance=importance,
                                    gradient_fn=self._taylor_gradients if importance == "taylor" else None)
        return self.initialize(build_candidate(self.reference, self.space.example_inputs, plan, resizer=self._resizer))

    def _taylor_gradients(self, model: nn.Module) -> None:
        """Accumulate in ``model``'s ``.grad`` the gradients of its cross-entropy (sum over examples) on
        ``TAYLOR_EXAMPLES`` labelled training examples (:func:`calibration_index`, seeded by the search's
        seed), in eval mode (its statistics untouched)."""
        task = self.task
        index = calibration_index(len(task.x_train), TAYLOR_EXAMPLES, self.cfg.seed)  # type: ignore[attr-defined]
        was = model.training
        model.eval()
        try:
            with torch.enable_grad():  # also when the search runs under torch.no_grad
                for i in range(0, len(index), 128):
                    rows = index[i:i + 128]
                    x, y = task.x_train[rows], task.y_train[rows]  # type: ignore[attr-defined]
                    nn.functional.cross_entropy(model(x), y, reduction="sum").backward()
        finally:
            model.train(was)

    def initialize(self, model: nn.Module) -> nn.Module:
        """``model`` with its batch-norm statistics re-estimated (``SearchConfig.recalibrate_norms``) and its
        initial kernels as ``SearchConfig.initial_kernels`` asks (in place)."""
        recalibrate = self.cfg.recalibrate_norms and bool(tracked_norms(model))
        input_steps = bool(input_requantized(model))
        if not recalibrate and self.cfg.initial_kernels != "gptq" and not input_steps:
            return model
        batches = _calibration_batches(self.task, INITIAL_KERNEL_EXAMPLES, 32, self.cfg.seed)
        if batches is None:
            if input_steps:
                raise ConfigError(f"per-channel input steps (plan key 'input') are fitted on the task's training "
                                  f"inputs; {type(self.task).__name__} does not expose them (Task.calibration_inputs)")
            return model  # (initial_kernels='gptq' was refused without them)
        if recalibrate:  # before GPTQ, which measures layer inputs through the norms
            recalibrate_batch_norms(model, batches)
        if input_steps:  # before GPTQ, which fits the folded weights to the requantized inputs
            fit_input_steps(model, batches, lambda m, batch: m(*batch))
        if self.cfg.initial_kernels == "gptq":
            initialize_kernels(model, batches, lambda m, batch: m(*batch), none_ok=True)
            if recalibrate:
                recalibrate_batch_norms(model, batches)
        return model

    def accuracy_floor(self) -> float | None:
        """The score a trial must reach: the higher of ``reference accuracy - max_accuracy_drop`` and the
        task's own floor (``Task.min_score``, e.g. a fidelity task's ``min_fidelity``); None when neither is set."""
        if self.cfg.max_accuracy_drop is not None and self.reference_accuracy is None:
            self.reference_accuracy = float(self.task.evaluate(self.reference))
        return combined_floor(self.reference_accuracy, self.cfg.max_accuracy_drop, self.task)

    # -- costs --------------------------------------------------------------------------------
    def _cost(self, model: nn.Module, report: EnergyReport, reference: bool = False) -> float:
        if self.cost_fn is not None:
            return float(self.cost_fn(model))
        if self.cfg.cost == "size":
            if reference:
                return _reference_bits(model, self.cfg.reference_types[0])
            return float(model_size_bits(model))
        return float(report.total_pj)

    def stored_bits(self, model: nn.Module) -> float | None:
        """The candidate's stored size for the size factor (None when ``size_score`` is off)."""
        return float(nonzero_size_bits(model)) if self.cfg.size_score is not None else None

    def score(self, accuracy: float, cost: float, stored_bits: float | None = None) -> float:
        """Eq. 2 on the cost, times eq. 2 on the stored size when ``size_score`` is set."""
        factors = [(cost, self.ref_cost, self.cfg.score)]
        if self.cfg.size_score is not None:
            if stored_bits is None:
                raise ConfigError("size_score is set: the score needs the candidate's stored size")
            factors.append((max(stored_bits, 1.0), self.ref_size, self.cfg.size_score))
        return joint_score(accuracy, factors)

    def _violation(self, energy: float, bits: float, params: int) -> float:
        """Relative amount by which the candidate is over its caps (0: feasible)."""
        over = 0.0
        for value, cap in ((energy, self.cfg.max_energy_pj), (bits, self.cfg.max_bits), (params, self.cfg.max_params)):
            if cap is not None and value > cap:
                over += value / cap - 1.0
        return over

    # -- one candidate ----------------------------------------------------------------------------
    def measure(self, model: nn.Module, plan: Plan) -> Costing:
        """Cost a candidate built from ``plan`` (energy costed with the plan) and check it against the caps."""
        report = candidate_energy(model, self.space.example_inputs, plan, self.cfg.energy_settings)
        bits = model_size_bits(model)
        n_params = sum(p.numel() for p in model.parameters())
        return Costing(report, self._cost(model, report), bits, n_params,
                       self._violation(report.total_pj, bits, n_params))

    def train_proxy(self, model: nn.Module, after_epoch: Callable[[int, float], None] | None = None) -> float:
        """Train ``model`` for the proxy budget, testing it after every epoch (``after_epoch(epoch, accuracy)``
        may stop it by raising); the last accuracy."""
        scores = [0.0]

        def tested(epoch: int) -> None:
            scores.append(self.task.evaluate(model))
            if after_epoch is not None:
                after_epoch(epoch, scores[-1])

        if self.distiller is not None and self.cfg.finetune.proxy:
            self.distiller.train(model, self.cfg.proxy_epochs, proxy=True, after_epoch=tested)
        else:
            for epoch in range(self.cfg.proxy_epochs):
                self.task.train_epoch(model, epoch, proxy=True)
                tested(epoch)
        return scores[-1]

    # -- one trial ------------------------------------------------------------------------------
    def objective(self, trial: Any, params: dict[str, list[Any]], multi: bool) -> Any:
        import optuna

        choices = {name: trial.suggest_categorical(name, values) for name, values in params.items()}
        plan = self.space.plan_from(choices)
        torch.manual_seed(self.cfg.seed * 100_003 + trial.number)
        model = self.build(plan)
        costing = self.measure(model, plan)
        cost = costing.cost
        stored = self.stored_bits(model)
        trial.set_user_attr("energy_pj", costing.energy_pj)
        trial.set_user_attr("cost", cost)
        if stored is not None:
            trial.set_user_attr("stored_bits", stored)
        trial.set_user_attr("size_bits", costing.size_bits)
        trial.set_user_attr("params", costing.params)
        if multi:
            trial.set_constraint("caps", costing.violation)  # NSGA-II ranks infeasible trials after feasible ones
        if costing.violation > 0:
            trial.set_user_attr("infeasible", True)
            trial.set_user_attr("violation", costing.violation)
            log.debug("trial %d infeasible (over the caps by %.1f %%): not trained", trial.number,
                      100 * costing.violation)
            return ((0.0, cost) + ((stored,) if stored is not None else ())) if multi else 0.0

        def report(epoch: int, acc: float) -> None:  # per-epoch scores for hyperband, floored as the final one
            trial.report(self.floored_score(acc, cost, stored), epoch)
            if trial.should_prune():
                trial.set_user_attr("accuracy", acc)
                raise optuna.TrialPruned()

        acc = self.train_proxy(model, None if multi else report)
        trial.set_user_attr("accuracy", acc)
        if multi:
            return (acc, cost) + ((stored,) if stored is not None else ())
        floor = self.accuracy_floor()
        if floor is not None and acc < floor:
            trial.set_user_attr("below_floor", True)
        return self.floored_score(acc, cost, stored)

    def floored_score(self, accuracy: float, cost: float, stored_bits: float | None = None) -> float:
        """A single-objective trial's value: :meth:`score`, or ``accuracy - floor`` (<= 0: under every trial
        that meets the floor, ranked by accuracy) when the accuracy is under :meth:`accuracy_floor`."""
        floor = self.accuracy_floor()
        if floor is not None and accuracy < floor:
            return accuracy - floor
        return self.score(accuracy, cost, stored_bits)

    def _study(self, name: str, multi: bool) -> Any:
        import optuna
        from optuna.exceptions import DuplicatedStudyError

        pruner = (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=self.cfg.proxy_epochs)
                  if self.cfg.controller == "hyperband" else optuna.pruners.NopPruner())
        directions = ["maximize", "minimize"] + (["minimize"] if self.cfg.size_score is not None else [])
        kwargs = {"directions": directions} if multi else {"direction": "maximize"}
        sampler = make_sampler(self.cfg.controller, self.cfg.seed + 1_000_003 * self.cfg.worker)
        study = None
        for attempt in range(5):  # two workers may create the same study at once
            try:
                study = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                            sampler=sampler, pruner=pruner, **kwargs)
                break
            except DuplicatedStudyError:
                time.sleep(0.2 * (attempt + 1))
        if study is None:
            study = optuna.load_study(study_name=name, storage=self.storage, sampler=sampler, pruner=pruner)
        self._check_trial_settings(study)
        return study

    def trial_settings(self) -> dict[str, Any]:
        """The settings that change what a trial builds, trains or stores (its score, energy, accuracy): kept
        with the study, so a resumed or joined study is run with the same ones (see :meth:`_check_trial_settings`).
        ``seed`` always: it seeds each trial's training (``seed * 100_003 + trial number``) and picks the calibration
        examples (Taylor scores, batch-norm re-estimation, GPTQ; :func:`calibration_index`); workers of one study
        share it (``worker`` seeds their samplers apart)."""
        cfg = self.cfg
        settings = {"width_importance": cfg.width_importance, "initial_kernels": cfg.initial_kernels,
                    "proxy_epochs": cfg.proxy_epochs, "cost": cfg.cost,
                    "score": cfg.score.to_dict(), "size_score": cfg.size_score and cfg.size_score.to_dict(),
                    "max_accuracy_drop": cfg.max_accuracy_drop, "reference_types": list(cfg.reference_types),
                    "energy_settings": cfg.energy_settings, "seed": cfg.seed,
                    "finetune": cfg.finetune.to_dict() if cfg.finetune is not None and cfg.finetune.proxy else None}
        if tracked_norms(self.reference):  # without batch norms it changes nothing: not kept (nor compared)
            settings["recalibrate_norms"] = cfg.recalibrate_norms
        return json.loads(json.dumps(settings, sort_keys=True, default=str))

    def _check_trial_settings(self, study: Any) -> None:
        """Store :meth:`trial_settings` with a study that has none (a new one, or one stored before they were
        kept); refuse (ConfigError naming the differing settings) a study stored with other ones: its trials'
        scores would be compared with trials measured another way. Only the settings stored with the study are
        compared: one kept since (a study stored by an earlier version lacks it) takes the current value, stored
        from then on."""
        mine = self.trial_settings()
        stored = study.user_attrs.get("trial_settings")
        if stored is None:
            study.set_user_attr("trial_settings", mine)
            return
        differ = sorted(k for k in set(stored) & set(mine) if stored[k] != mine[k])
        if differ:
            raise ConfigError(f"study {study.study_name!r} in {self.url.split('@')[-1]!r} was run with other trial "
                              f"settings: " + "; ".join(f"{k} {stored.get(k)!r} there, {mine.get(k)!r} now"
                                                        for k in differ) +
                              " (use another study_name or out_dir, or the same settings)")
        if set(mine) - set(stored):
            study.set_user_attr("trial_settings", {**mine, **stored})

    def _optimize(self, study: Any, params: dict[str, list[Any]], n_trials: int | None, multi: bool, desc: str,
                  deadline: float | None = None) -> None:
        """Run the study until it holds ``n_trials`` finished trials (None: no count) or, after at least one
        trial of this call, ``time.monotonic()`` passes ``deadline`` (None: no time limit)."""
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        done_states = (TrialState.COMPLETE, TrialState.PRUNED)
        done = len(study.get_trials(deepcopy=False, states=done_states))
        remaining = None if n_trials is None else n_trials - done
        if remaining is not None and remaining <= 0:
            log.info("%s: %d trials already finished, nothing to run", desc, done)
            return
        show = self.cfg.progress if self.cfg.progress is not None else sys.stderr.isatty()
        bar = None
        if show:
            from tqdm import tqdm

            bar = tqdm(total=n_trials, initial=done, desc=desc, unit="trial", leave=False)

        def tick(st: Any, tr: Any) -> None:
            if bar is not None:
                bar.update(1)
                if not multi and tr.value is not None:
                    bar.set_postfix(score=f"{tr.value:.4f}", acc=f"{tr.user_attrs.get('accuracy', 0):.4f}")

        def out_of_time(st: Any, tr: Any) -> None:
            if deadline is not None and time.monotonic() >= deadline:
                log.info("%s: time budget spent after trial %d", desc, tr.number)
                st.stop()

        callbacks = [tick, out_of_time]
        if n_trials is not None:
            callbacks.insert(0, MaxTrialsCallback(n_trials, states=done_states))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            study.optimize(lambda t: self.objective(t, params, multi), n_trials=remaining, callbacks=callbacks,
                           gc_after_trial=False)
        finally:
            if bar is not None:
                bar.close()

    def _within_caps(self, trial: Any) -> bool:
        """Whether a finished trial may be picked under the *current* caps (they may change on resume): its
        stored energy / size / parameters are checked again, so a tighter cap excludes trials now over it. A
        trial stored infeasible was never trained (its score is 0.0): it stays excluded under a looser cap."""
        attrs = trial.user_attrs
        if attrs.get("infeasible"):
            return False
        return self._violation(float(attrs.get("energy_pj", 0.0)), float(attrs.get("size_bits", 0.0)),
                               int(attrs.get("params", 0))) <= 0

    def _best(self, study: Any, multi: bool) -> Any:
        from optuna.trial import TrialState

        trials = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if self._within_caps(t)]
        if not trials:
            raise ConfigError("no feasible trial: relax the caps (max_energy_pj / max_bits / max_params)")
        floor = self.accuracy_floor()
        if floor is not None:
            meeting = [t for t in trials if t.user_attrs.get("accuracy", 0.0) >= floor]
            self.selections.append({"study": study.study_name, "trials": len(trials), "meeting": len(meeting)})
            if not meeting:
                log.warning("no trial of %s reached the accuracy floor %.4f: picking the most accurate",
                            study.study_name, floor)
                return max(trials, key=lambda t: t.user_attrs.get("accuracy", 0.0))
            trials = meeting
        if multi:
            return max(trials, key=lambda t: self.score(*t.values))
        return max(trials, key=lambda t: t.value)

    # -- whole search ---------------------------------------------------------------------------
    def search_plan(self) -> tuple[Plan, list[dict[str, Any]]]:
        multi = self.cfg.controller == "nsga2"
        if uses_method(self.cfg.controller, self.cfg.schedule, self.cfg.options):
            self.outcome: Outcome | None = run_method(self)
            return self.outcome.plan, self.outcome.trials
        start = time.monotonic()
        timeout = self.cfg.timeout_s
        if not self.cfg.block_search:
            params = self.space.parameters()
            study = self._study(self.cfg.study_name, multi)
            self._optimize(study, params, self.cfg.n_trials, multi, "search",
                           None if timeout is None else start + timeout)
            best = self._best(study, multi)
            self.picked_accuracy = best.user_attrs.get("accuracy")
            return self.space.plan_from(best.params), self._trial_rows(study, multi)
        rows: list[dict[str, Any]] = []
        schedule = self.block_schedule()
        total = sum(n for _, n in schedule)
        share = 0
        for i, (block, n_trials) in enumerate(schedule):
            params = self.space.parameters(only=set(block))
            study = self._study(f"{self.cfg.study_name}.block{i}", False)
            share += n_trials  # a block may run until its cumulative share of the time is spent
            self._optimize(study, params, n_trials, False, f"block {i + 1} ({', '.join(block)})",
                           None if timeout is None else start + timeout * share / total)
            best = self._best(study, False)
            self.picked_accuracy = best.user_attrs.get("accuracy")
            self.space.fixed = self.space.plan_from(best.params)
            rows += [dict(r, block=i) for r in self._trial_rows(study, False)]
        return self.space.fixed, rows

    def block_schedule(self) -> list[tuple[list[str], int]]:
        """Blocks (layers sharing a group, or a kernel choice, form one block) in search order, with their trial
        budgets."""
        energy_of: dict[str, float] = {}
        for r in self.ref_report.layers:
            key = r.module or r.name
            energy_of[key] = energy_of.get(key, 0.0) + r.total
        blocks: dict[str, list[str]] = {}
        energy: dict[str, float] = {}
        for layer in self.space.layers:  # tied layers (one kernel choice) search in one block
            block = layer.kernel_group or layer.group
            blocks.setdefault(block, []).append(layer.name)
            owned = {layer.name, layer.activation_module or layer.name}
            energy[block] = energy.get(block, 0.0) + sum(energy_of.get(n, 0.0) for n in owned)
        order = list(blocks)
        if self.cfg.block_order == "energy":
            order.sort(key=lambda g: -energy[g])
        total = sum(energy.values()) or 1.0
        return [(blocks[g], max(self.cfg.min_trials_per_block, round(self.cfg.n_trials * energy[g] / total)))
                for g in order]

    def _trial_rows(self, study: Any, multi: bool) -> list[dict[str, Any]]:
        rows = []
        for t in study.get_trials(deepcopy=False):
            rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params),
                         "value": (list(t.values) if multi else t.value) if t.values is not None else None,
                         "accuracy": t.user_attrs.get("accuracy"), "energy_pj": t.user_attrs.get("energy_pj"),
                         "cost": t.user_attrs.get("cost"), "infeasible": not self._within_caps(t)})
        return rows


def _reference_bits(model: nn.Module, weight_type: str) -> float:
    """The reference's stored size: every parameter at the reference weight type's bits."""
    return float(sum(p.numel() for p in model.parameters()) * qtype(weight_type).bits)  # names parse via the registry


def _float32_bytes(model: nn.Module) -> int:
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def _width_of(module: nn.Module) -> int:
    """Output units of a layer: filters, features, hidden units or embedding dimensions."""
    if isinstance(module, (nn.GRU, nn.LSTM, nn.RNN)):
        return int(module.hidden_size)
    if isinstance(module, nn.Embedding):
        return int(module.embedding_dim)
    w = getattr(module, "weight", None)
    return int(w.shape[0]) if isinstance(w, torch.Tensor) else 0


def _layer_table(space: SearchSpace, plan: Plan, ref_report: EnergyReport, report: EnergyReport,
                 reference: nn.Module, model: nn.Module) -> list[dict[str, Any]]:
    def by_module(rep: EnergyReport) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in rep.layers:
            key = r.module or r.name
            out[key] = out.get(key, 0.0) + r.total
        return out

    ref_rows, rows = by_module(ref_report), by_module(report)
    sp = sparsity(model)
    table = []
    for layer in space.layers:
        lp = plan.resolve(layer.name)
        act_lp = plan.resolve(layer.activation_module) if layer.activation_module else None
        both = [layer.name] + ([layer.activation_module] if layer.activation_module not in (None, layer.name) else [])
        table.append({"layer": layer.name,
                      "reference_width": _width_of(reference.get_submodule(layer.name)),
                      "width": _width_of(model.get_submodule(layer.name)),
                      "kernel": lp.kernel if lp else None, "bias": lp.bias if lp else None,
                      "activation": act_lp.activation if act_lp else None,
                      "reference_energy_pj": sum(ref_rows.get(n, 0.0) for n in both),
                      "energy_pj": sum(rows.get(n, 0.0) for n in both),
                      "sparsity": sp.get(layer.name, 0.0)})
    return table


class _FinalSteps:
    """The score of the final candidate after each step (each measure is one evaluation of the task)."""

    def __init__(self, task: Task, model: nn.Module, proxy_trial: float | None):
        self.task, self.model = task, model
        self.values: dict[str, Any] = {} if proxy_trial is None else {"proxy_trial": proxy_trial}
        self._eval_score: float | None = None  # the latest measure, when the model was in eval mode for it
        self.measure("built")
        self.values["fine_tune_epochs"] = []

    def _evaluate(self) -> float:
        in_eval = not self.model.training
        value = float(self.task.evaluate(self.model))
        self._eval_score = value if in_eval else None
        return value

    def measure(self, key: str) -> None:
        self.values[key] = self._evaluate()

    def epoch(self, epoch: int) -> None:
        self.values["fine_tune_epochs"].append(self._evaluate())

    def result(self) -> float:
        """The model's score in eval mode once the steps are done (the model unchanged since the last
        measure): that measure's when the model was in eval mode for it, else one more evaluation."""
        self.model.eval()
        return self._eval_score if self._eval_score is not None else float(self.task.evaluate(self.model))


def calibration_index(count: int, limit: int, seed: int) -> torch.Tensor:
    """Which of ``count`` training examples a calibration pass uses, in the order it uses them: ``min(count,
    limit)`` positions of a permutation seeded by ``seed`` (the search's), so a training set sorted by class
    gives every batch and the subset a fair share of each class, and the same seed the same examples. The seed
    is salted (``seed * 1_000_003 + 7919``): the draw is independent of the selection split's and the proxy
    subset's permutations, which the same seed also drives."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + 7919))
    return order[:min(count, limit)]


def _calibration_batches(task: Task, limit: int, size: int, seed: int) -> list[tuple[torch.Tensor, ...]] | None:
    """Up to ``limit`` of ``task``'s calibration inputs (``Task.calibration_inputs``), chosen and ordered by
    :func:`calibration_index`, in batches of ``size``; None when the task exposes none."""
    calibration = getattr(task, "calibration_inputs", None)  # tasks may be duck-typed
    inputs = calibration() if calibration is not None else None
    if inputs is None:
        return None
    index = calibration_index(len(inputs[0]), limit, seed)
    return [tuple(t[index[i:i + size]] for t in inputs) for i in range(0, len(index), size)]


class _FineTuning:
    """The final fine-tuning's after-epoch step: the pruning schedule's step (``final_prune_epochs``: the cubic
    schedule's sparsity after epoch e < n), the batch-norm statistics re-estimated (``final_recalibrate_norms``),
    the scores (``after_prune``: right after the last pruning step; each epoch's on the task), and, with a
    selection split, its score and a copy of the best epoch's state at the full final sparsity."""

    def __init__(self, model: nn.Module, config: SearchConfig, steps: _FinalSteps, fit_task: Task,
                 select_task: Task | None):
        self.model, self.cfg, self.steps, self.select_task = model, config, steps, select_task
        self.ramp = config.final_prune_epochs if config.final_prune > 0 else 0
        self.batches: list[tuple[torch.Tensor, ...]] = []
        if config.final_recalibrate_norms and tracked_norms(model):
            self.batches = _calibration_batches(fit_task, FINAL_RECALIBRATION_EXAMPLES, 256, config.seed) or []
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        self.bar: Any = None  #: a tqdm bar advanced after each epoch (SearchConfig.progress)
        if self.ramp:  # layers wrapped (all-ones masks) now, so the optimizer sees the parameters it will train
            apply_masks(model, global_magnitude_masks(model, 0.0))
        if select_task is not None:
            steps.values["selection_epochs"] = []

    def recalibrate(self) -> None:
        if self.batches:
            recalibrate_batch_norms(self.model, self.batches,
                                    sequential=self.cfg.final_recalibration == "sequential")

    def __call__(self, epoch: int) -> None:
        cfg, model = self.cfg, self.model
        if epoch < self.ramp:
            amount = cfg.final_prune * (1 - (1 - (epoch + 1) / self.ramp) ** 3)
            apply_masks(model, global_magnitude_masks(model, amount, relative=cfg.final_prune_relative))
        self.recalibrate()
        if self.ramp and epoch == self.ramp - 1:
            self.steps.measure("after_prune")
        self.steps.epoch(epoch)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(score=f"{self.steps.values['fine_tune_epochs'][-1]:.4f}")
        if self.select_task is not None and epoch >= self.ramp - 1:  # at the full final sparsity
            score = float(self.select_task.evaluate(model))
            self.steps.values["selection_epochs"].append(score)
            if self.best is None or score >= self.best[0]:
                self.best = (score, epoch, copy.deepcopy(model.state_dict()))
        model.eval()

    def keep_best(self) -> None:
        """Load the best selection-split epoch's state (a no-op without a selection split or when the last
        epoch is the best); record which epoch was kept."""
        if self.best is None:
            return
        score, epoch, state = self.best
        self.steps.values["kept_epoch"] = epoch
        self.steps.values["kept_selection_score"] = score
        if epoch != self.cfg.final_epochs - 1:
            self.model.load_state_dict(state)
            self.steps.measure("kept")


def _fine_tune(model: nn.Module, searcher: "_Searcher", config: SearchConfig, task: Task,
               steps: _FinalSteps) -> None:
    """The final steps on the built candidate: the final pruning (at once or over the first epochs), the
    fine-tuning epochs (distilled when ``config.finetune``), with a selection split the best epoch kept."""
    fit_task, select_task = task, None
    distiller = searcher.distiller
    started = time.perf_counter()  # the split and its teacher pass are part of the fine-tuning's time
    if config.final_selection:
        fit_task, select_task, index = task.hold_out(  # type: ignore[attr-defined]  # checked by run_search
            config.final_selection, config.seed)
        steps.values["selection_examples"] = len(index)
        if distiller is not None:  # the fit examples' teacher logits: the whole set's, indexed
            kept = torch.ones(len(fit_task.x_train) + len(index), dtype=torch.bool)  # type: ignore[attr-defined]
            kept[index] = False
            distiller = distiller.restricted(fit_task, kept.nonzero().flatten())  # type: ignore[arg-type]
    tuning = _FineTuning(model, config, steps, fit_task, select_task)
    show = config.progress if config.progress is not None else sys.stderr.isatty()
    bar = None
    if show and config.final_epochs:
        from tqdm import tqdm

        bar = tqdm(total=config.final_epochs, desc="fine-tuning", unit="epoch", leave=False)
        tuning.bar = bar
    try:
        if config.final_prune > 0 and not config.final_prune_epochs:
            apply_masks(model, global_magnitude_masks(model, config.final_prune,
                                                      relative=config.final_prune_relative))
            tuning.recalibrate()
            steps.measure("after_prune")
        if distiller is not None:
            distiller.train(model, config.final_epochs, proxy=False, after_epoch=tuning)
        else:
            for epoch in range(config.final_epochs):
                fit_task.train_epoch(model, epoch, proxy=False)
                tuning(epoch)
        tuning.keep_best()
    finally:
        if bar is not None:
            bar.close()
    steps.values["fine_tune_seconds"] = round(time.perf_counter() - started, 3)


def _selection(searcher: "_Searcher", config: SearchConfig, task: Task, ref_acc: float, decoded_acc: float,
               warnings: list[str]) -> dict[str, Any]:
    """The summary's ``selection`` entry when a floor is set (``max_accuracy_drop`` and/or the task's
    ``min_score``; warnings appended), else ``{}``."""
    task_floor = getattr(task, "min_score", None)
    floor = combined_floor(ref_acc, config.max_accuracy_drop, task)
    if floor is None:
        return {}
    why = []
    if config.max_accuracy_drop is not None:
        why.append(f"reference {ref_acc:.4f} - max_accuracy_drop {config.max_accuracy_drop}")
    if task_floor is not None:
        why.append(f"the task's floor {float(task_floor):.4f}")
    why_text = ", ".join(why)
    out: dict[str, Any] = {"max_accuracy_drop": config.max_accuracy_drop, "floor": floor,
                           "result_meets_floor": decoded_acc >= floor}
    if task_floor is not None:
        out["task_floor"] = float(task_floor)
    if searcher.selections:
        out["trials"] = sum(s["trials"] for s in searcher.selections)
        out["trials_meeting_floor"] = sum(s["meeting"] for s in searcher.selections)
        out["pick_meets_floor"] = all(s["meeting"] for s in searcher.selections)
        if not out["pick_meets_floor"]:
            warnings.append(f"no trial reached the accuracy floor {floor:.4f} ({why_text}): the most accurate "
                            "trial was taken")
    if not out["result_meets_floor"]:
        warnings.append(f"the result scores {decoded_acc:.4f}, under the floor {floor:.4f} ({why_text})")
        log.warning(warnings[-1])
    return out


def chance_level(chance: float) -> float:
    """Scores at or under this are "at chance": the guess's score plus a quarter of the way to perfect."""
    return chance + 0.25 * (1.0 - chance)


def run_trials(reference: nn.Module, space: SearchSpace, task: Task, config: SearchConfig | None = None, *,
               cost_fn: Callable[[nn.Module], float] | None = None) -> Plan:
    """Run (or join, or resume) the study's trials and return the best plan, without the final steps.

    This is what each extra worker runs: any number of processes on any number of machines, given the
    same storage URL and study name, share the trials until ``n_trials`` have finished.
    """
    config = config or SearchConfig()
    if config.controller in PLAN_CONTROLLERS or config.schedule != "single":
        raise ConfigError(f"controller={config.controller!r}, schedule={config.schedule!r} runs in one process and "
                          "returns masks and weights with its plan: use run_search")
    plan, _ = _Searcher(reference, space, task, config, cost_fn).search_plan()
    return plan


def run_search(reference: nn.Module, space: SearchSpace, task: Task, config: SearchConfig | None = None, *,
               cost_fn: Callable[[nn.Module], float] | None = None,
               reference_accuracy: float | None = None, chance_accuracy: float | None = None,
               notes: list[str] | None = None) -> SearchResult:
    """Search, then fine-tune, encode, decode and re-measure the winner; write the report to ``out_dir``.

    ``chance_accuracy``: the score of a guess (e.g. the largest class share); a reference that does not beat
    it clearly is reported in ``warnings`` (the search would compress a model that has learnt nothing).
    ``notes``: lines for the summary about what was done before the search (e.g. the reference trained).
    """
    from ..torch_io import encode_with_report, load_into
    from .report import write_report

    config = config or SearchConfig()
    if config.final_selection and not callable(getattr(task, "hold_out", None)):
        raise ConfigError(f"final_selection holds out part of a ClassifierTask's training examples; "
                          f"{type(task).__name__} has none to hold out (leave final_selection=0)")
    check_model = getattr(task, "check_model", None)
    if callable(check_model):  # a model the task cannot train fails here, not inside the first trial
        check_model(reference)
    t0 = time.perf_counter()
    searcher = _Searcher(reference, space, task, config, cost_fn)
    ref_acc = task.evaluate(reference) if reference_accuracy is None else reference_accuracy
    warnings: list[str] = []
    if chance_accuracy is not None and ref_acc <= chance_level(chance_accuracy):
        warnings.append(f"the reference scores {ref_acc:.4f}, at chance level ({chance_accuracy:.4f}): it was not "
                     "trained, or not on this data; train it (or pass its weights) before searching")
        log.warning(warnings[-1])
    searcher.reference_accuracy = float(ref_acc)
    t_search = time.perf_counter()
    plan, trials = searcher.search_plan()
    search_seconds = time.perf_counter() - t_search
    torch.manual_seed(config.seed)
    outcome = getattr(searcher, "outcome", None) or Outcome(plan, trials)
    if outcome.state is not None:
        start = copy.deepcopy(reference)
        start.load_state_dict(outcome.state)
        model = build_candidate(start, space.example_inputs, plan)  # trained weights: kept as they are
    else:
        model = searcher.build(plan)
    if outcome.masks:
        apply_masks(model, outcome.masks)
    steps = _FinalSteps(task, model, searcher.picked_accuracy)
    _fine_tune(model, searcher, config, task, steps)
    acc = steps.result()
    report = candidate_energy(model, space.example_inputs, plan, outcome.energy_settings or config.energy_settings)
    out_dir = Path(config.out_dir)
    path, _ = encode_with_report(model, out_dir / "model.nnc", level=19)
    decoded = deployed_copy(model)
    with torch.no_grad():
        for p in decoded.parameters():
            p.zero_()
    load_into(decoded, path)
    decoded_acc = task.evaluate(decoded.eval())
    steps.values["decoded"] = decoded_acc
    selection = _selection(searcher, config, task, ref_acc, decoded_acc, warnings)
    result = SearchResult(
        plan=plan, model=model, reference_accuracy=ref_acc, reference_cost=searcher.ref_cost,
        reference_energy_pj=searcher.ref_energy, accuracy=acc, decoded_accuracy=decoded_acc,
        energy_pj=report.total_pj, cost=searcher._cost(model, report), bitstream=Path(path),
        bitstream_bytes=Path(path).stat().st_size, float32_bytes=_float32_bytes(reference), trials=trials,
        layer_table=_layer_table(space, plan, searcher.ref_report, report, reference, model),
        seconds=time.perf_counter() - t0, energy_report=report, warnings=warnings,
        notes=list(notes or []), extra=outcome.extra, search_seconds=search_seconds, selection=selection,
        final_steps=steps.values)
    write_report(result, out_dir)
    return result



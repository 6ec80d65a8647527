"""Hardware-network co-design by alternation (seed 004; seed 000's NPU block choice).

The hardware is an :class:`~nncodec.energy.latency.Accelerator`: SRAM size (the energy model's
``min_sram_size``), weight / activation placement, L pipelined blocks x C channels. The combined loss of
a network on a hardware configuration is::

    (1 - accuracy) + energy_weight * E / E_ref + latency_weight * T / T_ref

(``E_ref``, ``T_ref``: the int8/int16 reference on the starting hardware). Each round holds the hardware
and takes a network step: a few epochs of the differentiable controller with its cost surrogate rebuilt
for that hardware, or, with an Optuna controller, ``n_trials / rounds`` trials costed on that hardware;
then holds the network (the hardened plan, accuracy measured without fine-tuning for the differentiable
controller, the best trial's proxy accuracy for Optuna) and takes a hardware step: the best configuration
of the grid that fits (what is placed in SRAM must fit). It stops when a round lowers the combined loss by
less than ``tolerance`` or after ``rounds`` rounds, and keeps the best (network, hardware) pair. The
hardware configuration with its energy and latency goes to the summary (``hardware``) and to
``hardware.json``; the final energy is costed on that hardware.

Options (``SearchConfig.options``): ``codesign=True`` and ``hardware={...}`` with keys from
:data:`HARDWARE_KEYS`.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
from pathlib import Path
from typing import Any

from ..atomic import write_atomic
from ..energy.estimate import estimate_energy
from ..energy.graph import capture_graph
from ..energy.latency import Accelerator, estimate_latency
from ..errors import ConfigError
from ..prune.unstructured import apply_masks
from .candidate import build_candidate
from .controllers import PLAN_CONTROLLERS, Outcome, candidate_energy, refuse_trials

__all__ = ["run_codesign", "HARDWARE_KEYS", "hardware_grid"]

log = logging.getLogger(__name__)

HARDWARE_KEYS = {
    "sram_bits": [2 ** k for k in range(14, 23, 2)],
    "placements": [["sram", "sram"], ["dram", "sram"], ["dram", "dram"]],   #: [weights, activations]
    "blocks": [1, 2, 4],
    "channels": [4, 8, 16, 32],
    "max_lanes": 64,              #: L * C limit (the resource constraint)
    "energy_weight": 1.0,
    "latency_weight": 0.5,
    "rounds": 3,
    "tolerance": 1e-3,
    "batch": 16,
    "clock_hz": 200e6,
}


def _hardware_options(raw: Any) -> dict[str, Any]:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError("codesign: the 'hardware' option must be a dict")
    unknown = sorted(set(raw) - set(HARDWARE_KEYS))
    if unknown:
        raise ConfigError(f"codesign: unknown hardware option(s) {unknown}; known: {sorted(HARDWARE_KEYS)}")
    opts = {**HARDWARE_KEYS, **raw}
    if int(opts["rounds"]) < 1 or float(opts["tolerance"]) < 0 or int(opts["max_lanes"]) < 1:
        raise ConfigError("codesign: rounds >= 1, tolerance >= 0 and max_lanes >= 1 required")
    return opts


def hardware_grid(opts: dict[str, Any]) -> list[Accelerator]:
    """Every configuration of the grid within the lane budget."""
    grid = []
    for sram, (wm, am), blocks, channels in itertools.product(opts["sram_bits"], opts["placements"], opts["blocks"],
                                                              opts["channels"]):
        if blocks * channels <= opts["max_lanes"]:
            grid.append(Accelerator(int(blocks), int(channels), int(sram), wm, am, float(opts["clock_hz"])))
    if not grid:
        raise ConfigError("codesign: no hardware configuration within max_lanes")
    return grid


class _Codesign:
    def __init__(self, searcher: Any):
        self.s = searcher
        self.cfg = searcher.cfg
        self.opts = _hardware_options(self.cfg.options.get("hardware"))
        self.grid = hardware_grid(self.opts)
        base = self.cfg.energy_settings
        self.start_hw = Accelerator(1, min(self.opts["channels"]), int(base.get("min_sram_size") or 2 ** 20),
                                    base.get("weights_memory", "sram") if base.get("weights_memory") != "fixed"
                                    else "sram", base.get("activations_memory", "sram"), float(self.opts["clock_hz"]))
        if self.start_hw not in self.grid:
            self.grid.append(self.start_hw)
        self.ops = capture_graph(searcher.reference, searcher.space.input_shape)
        ref = searcher.reference
        ref_report = estimate_energy(ref, searcher.space.input_shape, reference=self.cfg.reference_types,
                                     **self.start_hw.energy_settings(base))
        self.e_ref = ref_report.total_pj
        self.t_ref = estimate_latency(ref_report, self.ops, self.start_hw, int(self.opts["batch"])).seconds
        self.history: list[dict[str, Any]] = []
        self._energy_cache: dict[tuple[Any, ...], Any] = {
            ("reference", self.start_hw.sram_bits, self.start_hw.weights_memory, self.start_hw.activations_memory):
                ref_report}

    def loss(self, acc: float, energy: float, seconds: float) -> float:
        return (1.0 - acc) + self.opts["energy_weight"] * energy / self.e_ref + \
            self.opts["latency_weight"] * seconds / self.t_ref

    def cost_on(self, model: Any, hw: Accelerator, key: Any, plan: Any = None) -> tuple[float, Any]:
        """Energy (pJ) and latency report on ``hw`` of the candidate ``model`` built from ``plan`` (costed with
        it, like the trials), or of the reference when ``plan`` is None (energy cached per network and memory)."""
        ekey = (key, hw.sram_bits, hw.weights_memory, hw.activations_memory)
        if ekey not in self._energy_cache:
            settings = hw.energy_settings(self.cfg.energy_settings)
            self._energy_cache[ekey] = (
                estimate_energy(model, self.s.space.input_shape, reference=self.cfg.reference_types, **settings)
                if plan is None else candidate_energy(model, self.s.space.input_shape, plan, settings))
        report = self._energy_cache[ekey]
        return report.total_pj, estimate_latency(report, self.ops, hw, int(self.opts["batch"]))

    def hardware_step(self, model: Any, plan: Any, acc: float, key: Any) -> tuple[Accelerator, float, float, Any]:
        best = None
        for hw in self.grid:
            energy, lat = self.cost_on(model, hw, key, plan)
            if not lat.fits:
                continue
            loss = self.loss(acc, energy, lat.seconds)
            if best is None or loss < best[1]:
                best = (hw, loss, energy, lat)
        if best is None:
            raise ConfigError("codesign: no hardware configuration of the grid fits the network; allow larger "
                              "sram_bits or DRAM placements")
        return best[0], best[1], best[2], best[3]

    def record(self, rnd: int, step: str, hw: Accelerator, acc: float, energy: float, lat: Any) -> float:
        loss = self.loss(acc, energy, lat.seconds)
        self.history.append({"round": rnd, "step": step, "loss": loss, "accuracy": acc, "energy_pj": energy,
                             "latency_s": lat.seconds, "hardware": hw.to_dict()})
        log.info("codesign round %d, %s step: loss %.4f (accuracy %.4f, %.4g pJ, %.3g s)", rnd, step, loss, acc,
                 energy, lat.seconds)
        return loss

    # -- network steps ----------------------------------------------------------------------------
    def run(self) -> Outcome:
        rounds = int(self.opts["rounds"])
        ref_acc = self.s.task.evaluate(self.s.reference)
        ref_energy, ref_lat = self.cost_on(self.s.reference, self.start_hw, "reference")
        best_loss = self.record(0, "start", self.start_hw, ref_acc, ref_energy, ref_lat)
        hw = self.start_hw
        best: dict[str, Any] | None = None
        network = _DifferentiableNetwork(self) if self.cfg.controller == "differentiable" else _OptunaNetwork(self)
        rows: list[dict[str, Any]] = []
        for rnd in range(1, rounds + 1):
            outcome, model, acc = network.step(hw, rnd, rounds)
            rows += [dict(r, round=rnd) for r in outcome.trials]
            energy, lat = self.cost_on(model, hw, rnd, outcome.plan)
            self.record(rnd, "network", hw, acc, energy, lat)
            hw, loss, energy, lat = self.hardware_step(model, outcome.plan, acc, rnd)
            self.record(rnd, "hardware", hw, acc, energy, lat)
            improved = loss < best_loss - self.opts["tolerance"]
            if best is None or loss < best_loss:
                best_loss = loss
                best = {"outcome": outcome, "hw": hw, "energy": energy, "lat": lat, "round": rnd}
            if not improved:
                break
        if best is None:  # rounds >= 1 is checked: the first round always sets it
            raise ConfigError("codesign: no round ran")
        out: Outcome = best["outcome"]
        chosen: Accelerator = best["hw"]
        lat = best["lat"]
        hardware = {**chosen.to_dict(), "energy_pj": best["energy"], "latency_s": lat.seconds,
                    "latency_cycles": lat.cycles, "batch": lat.batch, "stages": lat.stages,
                    "weight_bits": lat.weight_bits, "peak_activation_bits": lat.peak_activation_bits}
        extra = {**out.extra, "hardware": hardware,
                 "codesign": {"round": best["round"], "combined_loss": best_loss, "history": self.history,
                              "energy_reference_pj": self.e_ref, "latency_reference_s": self.t_ref}}
        out_dir = Path(self.cfg.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(out_dir / "hardware.json", [json.dumps({"hardware": hardware, "plan": out.plan.to_dict(),
                                                              "history": self.history}, indent=2).encode()])
        return Outcome(out.plan, rows, masks=out.masks, state=out.state, extra=extra,
                       energy_settings=chosen.energy_settings(self.cfg.energy_settings))


class _DifferentiableNetwork:
    """Network step: epochs of the differentiable controller, its surrogate costed on the held hardware."""

    def __init__(self, co: _Codesign):
        from .differentiable import DifferentiableSearch

        self.co = co
        cfg = co.cfg
        refuse_trials(cfg, "the co-design with the differentiable controller")
        self.search = DifferentiableSearch(co.s.reference, co.s.space, co.s.task, cfg.options, cfg.cost, cfg.seed)
        self.epochs = int(cfg.options.get("epochs", 3 * cfg.proxy_epochs))

    def step(self, hw: Accelerator, rnd: int, rounds: int) -> tuple[Outcome, Any, float]:
        from .surrogate import CostSurrogate

        co = self.co
        self.search.set_surrogate(CostSurrogate(co.s.reference, co.s.space, hw.energy_settings(co.cfg.energy_settings),
                                                co.ops))
        trials = []
        for _ in range(max(1, self.epochs // rounds)):
            stats = self.search.train_epoch(self.epochs)
            trials.append({"number": self.search.epoch - 1, "state": "COMPLETE", "params": {}, "value": stats["task_loss"],
                           "accuracy": None, "energy_pj": stats["cost"], "cost": stats["cost"], "infeasible": False})
        plan, masks, state = self.search.hardened_plan(), self.search.masks(), self.search.plain_state()
        start = copy.deepcopy(co.s.reference)
        start.load_state_dict(state)
        model = build_candidate(start, co.s.space.input_shape, plan)
        apply_masks(model, masks)
        acc = co.s.task.evaluate(model.eval())
        trials[-1]["accuracy"] = acc
        return Outcome(plan, trials, masks=masks, state=state), model, acc


class _OptunaNetwork:
    """Network step: ``n_trials / rounds`` trials of the Optuna controller costed on the held hardware."""

    def __init__(self, co: _Codesign):
        if co.cfg.controller not in ("random", "tpe", "gp", "hyperband", "rl", "evolution") or co.cfg.block_search:
            raise ConfigError(f"codesign works with the differentiable controller and single-objective Optuna "
                              f"controllers without block search, not {co.cfg.controller!r}")
        self.co = co

    def step(self, hw: Accelerator, rnd: int, rounds: int) -> tuple[Outcome, Any, float]:
        s, cfg = self.co.s, self.co.cfg
        saved = cfg.energy_settings
        cfg.energy_settings = hw.energy_settings(saved)
        try:
            study = s._study(f"{cfg.study_name}.codesign{rnd}", False)
            s._optimize(study, s.space.parameters(), max(1, cfg.n_trials // rounds), False, f"codesign round {rnd}")
            best = s._best(study, False)
            rows = s._trial_rows(study, False)
        finally:
            cfg.energy_settings = saved
        plan = s.space.plan_from(best.params)
        model = s.build(plan)
        return Outcome(plan, rows), model, float(best.user_attrs.get("accuracy", 0.0))


def run_codesign(searcher: Any) -> Outcome:
    if searcher.cfg.schedule != "single":
        raise ConfigError("codesign alternates with a controller; it does not combine with a schedule")
    if searcher.cfg.controller in PLAN_CONTROLLERS and searcher.cfg.controller != "differentiable":
        raise ConfigError(f"codesign works with the differentiable and the Optuna controllers, not "
                          f"{searcher.cfg.controller!r}")
    return _Codesign(searcher).run()

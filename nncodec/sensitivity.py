"""Calibrated step allocation: per-tensor step factors from the measured sensitivity of the model's output.

With ``rel_step`` quantization, tensor ``i`` (``n_i`` elements) gets the step ``r_i * std_i``. Its rate
falls by about ``n_i * log2(r_i)`` bits as ``r_i`` grows, and the output distortion grows by about
``a_i * r_i**2``, where ``a_i`` is measured: quantize tensor ``i`` alone at a probe step, run the calibration
batches, compare the outputs with the float model's. The least total rate for a given total distortion
(equal slopes) is reached at ``r_i ∝ sqrt(n_i / a_i)``.

:func:`calibrate_step_scales` returns these factors, ready for ``Encoder(rel_step=..., step_scales=...)``.
They are normalized so their element-weighted geometric mean is 1: a given ``rel_step`` keeps about its
average rate and the factors move bits to where the output needs them. Use calibration inputs that are not
your evaluation set.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from .call_replay import CallReplay
from .errors import ConfigError

__all__ = ["calibrate_step_scales", "output_sensitivity", "factors_from_sensitivity", "default_forward",
           "fisher_step_scales"]

log = logging.getLogger(__name__)

Forward = Callable[[torch.nn.Module, Any], torch.Tensor]


def default_forward(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``model(batch)`` (``model(*batch)`` for a tuple, ``model(**batch)`` for a dict); of a tuple or dict
    output, its first element."""
    if isinstance(batch, tuple):
        out = model(*batch)
    elif isinstance(batch, dict):
        out = model(**batch)
    else:
        out = model(batch)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) and out:
        out = next(iter(out.values()))
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ConfigError(f"the model returned a {type(out).__name__}; pass forward= returning a tensor")
    return out


def _outputs(model: torch.nn.Module, batches: Sequence[Any], forward: Forward) -> list[Any]:
    return [forward(model, b) for b in batches]


def _checked(outputs: list[Any]) -> list[torch.Tensor]:
    """``outputs`` as float64 tensors; :class:`ConfigError` when one is not a float tensor."""
    outs = []
    for y in outputs:
        if not isinstance(y, torch.Tensor) or not y.is_floating_point():
            raise ConfigError(f"forward must return a float tensor, got {type(y).__name__}")
        outs.append(y.detach().to(torch.float64))
    return outs


def _calibrated_tensors(model: torch.nn.Module, names: Iterable[str] | None) -> dict[str, list[str]]:
    """``{first name: [all names sharing its storage]}`` for float tensors of rank >= 2 (tied weights once)."""
    state = model.state_dict(keep_vars=True)
    wanted = set(state) if names is None else set(names)
    missing = wanted - set(state)
    if missing:
        raise ConfigError(f"no such tensors in the model: {sorted(missing)[:5]}")
    return _by_storage((name, t) for name, t in state.items()
                       if name in wanted and t.is_floating_point() and t.dim() >= 2 and t.numel() > 0)


def _by_storage(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, list[str]]:
    """``{first name: [all names sharing its storage]}`` of ``named`` tensors (tied weights once)."""
    groups: dict[tuple[int, int], list[str]] = {}
    for name, t in named:
        groups.setdefault((t.data_ptr(), t.numel()), []).append(name)
    return {g[0]: g for g in groups.values()}


def _spread(t: torch.Tensor) -> float:
    """The standard deviation ``rel_step`` steps are relative to; 1 for a constant or non-finite tensor."""
    std = float(t.double().std()) if t.numel() > 1 else 0.0
    return std if std > 0 and math.isfinite(std) else 1.0


@torch.no_grad()
def output_sensitivity(model: torch.nn.Module, batches: Iterable[Any], *, forward: Forward = default_forward,
                       probe_rel_step: float = 0.1, names: Iterable[str] | None = None,
                       progress: bool | None = None, reuse: bool = False) -> dict[str, float]:
    """``{tensor name: a}``: output distortion per squared relative step, ``D(r) ≈ a * r**2``.

    ``D`` is the outputs' relative squared error ``sum((y_q - y)**2) / sum(y**2)`` over all batches, with
    tensor ``name`` alone quantized at step ``probe_rel_step * std``. Float tensors of rank >= 2 only (or
    those in ``names``); tied tensors are measured once and reported under each name. The model is put
    in eval mode and its weights are restored afterwards. Costs one forward pass per batch and tensor.

    ``reuse=True`` (a speed option, off by default) replays the module calls that finish before the probed
    tensor is first used from the float model's pass (:mod:`nncodec.call_replay`): two extra recorded passes
    and up to :data:`nncodec.call_replay.MAX_STORED_BYTES` of stored outputs. A call is replayed only when it
    is checked not to change its inputs, its module subtree's state or the random number state, and the
    forward reproduces itself with the recorded calls; otherwise the probe runs in full. Changes outside a
    call's module subtree are not detected: leave it off for models whose modules write to other modules.
    """
    if not (isinstance(probe_rel_step, (int, float)) and 0 < probe_rel_step < 10):
        raise ConfigError(f"probe_rel_step must be in (0, 10), got {probe_rel_step!r}")
    batches = list(batches)
    if not batches:
        raise ConfigError("calibration needs at least one batch")
    was_training = model.training
    model.eval()
    try:
        groups = _calibrated_tensors(model, names)
        state = model.state_dict(keep_vars=True)
        replay = CallReplay(model, batches, forward, {first: state[first] for first in groups}) if reuse else None
        reference = _checked(replay.reference() if replay is not None else _outputs(model, batches, forward))
        energy = sum(float((y * y).sum()) for y in reference)
        if not energy > 0:
            raise ConfigError("the float model's calibration outputs are all zero; nothing to compare against")
        show = progress if progress is not None else sys.stderr.isatty()
        items: Iterable[tuple[str, list[str]]] = groups.items()
        if show:
            from tqdm import tqdm

            items = tqdm(list(items), desc="sensitivity", unit="tensor", leave=False)
        result: dict[str, float] = {}
        for first, aliases in items:
            t = state[first].data
            original = t.clone()
            step = probe_rel_step * _spread(original)
            try:
                t.copy_(torch.round(original / step) * step)
                got = _checked(replay.outputs(first) if replay is not None else _outputs(model, batches, forward))
            finally:
                t.copy_(original)
            dist = sum(float(((q - y) ** 2).sum()) for q, y in zip(got, reference)) / energy
            for name in aliases:
                result[name] = dist / probe_rel_step ** 2
    finally:
        model.train(was_training)
    return result


def factors_from_sensitivity(sensitivity: dict[str, float], sizes: dict[str, int], *,
                             floor: float = 0.01) -> dict[str, float]:
    """Step factors ``∝ sqrt(n / a)``, element-weighted geometric mean 1.

    A tensor's sensitivity per element is raised to at least ``floor`` times the median, so a tensor the
    calibration never touches still gets a step at most ``1/sqrt(floor)`` (10x) the median's instead of
    being coded away.
    """
    if not 0 < floor <= 1:
        raise ConfigError(f"floor must be in (0, 1], got {floor!r}")
    names = [n for n in sensitivity if sizes.get(n, 0) > 0]
    if not names:
        return {}
    density = {n: max(sensitivity[n], 0.0) / sizes[n] for n in names}
    positive = sorted(d for d in density.values() if d > 0)
    if not positive:
        log.warning("no tensor changed the calibration outputs; step factors left at 1")
        return {n: 1.0 for n in names}
    lowest = floor * positive[len(positive) // 2]
    raw = {n: 1.0 / math.sqrt(max(density[n], lowest)) for n in names}
    total = sum(sizes[n] for n in names)
    log_mean = sum(sizes[n] * math.log(raw[n]) for n in names) / total
    return {n: raw[n] / math.exp(log_mean) for n in names}


def calibrate_step_scales(model: torch.nn.Module, batches: Iterable[Any], *, forward: Forward = default_forward,
                          probe_rel_step: float = 0.1, floor: float = 0.01, names: Iterable[str] | None = None,
                          progress: bool | None = None, reuse: bool = False) -> dict[str, float]:
    """Per-tensor step factors for ``Encoder(rel_step=..., step_scales=...)`` from calibration batches.

    ``forward(model, batch)`` returns the output whose fidelity matters (default: the model's output);
    ``reuse=True`` replays the calls a probe cannot change (faster, see :func:`output_sensitivity` for its
    checks and limits); see :func:`output_sensitivity` and :func:`factors_from_sensitivity`.
    """
    sens = output_sensitivity(model, batches, forward=forward, probe_rel_step=probe_rel_step, names=names,
                              progress=progress, reuse=reuse)
    state = model.state_dict()
    factors = factors_from_sensitivity(sens, {n: state[n].numel() for n in sens}, floor=floor)
    for n in sorted(factors, key=factors.get)[:3]:
        log.debug("most sensitive: %s factor %.3g", n, factors[n])
    return factors


def fisher_step_scales(model: torch.nn.Module, fisher: dict[str, Any], *, floor: float = 0.01) -> dict[str, float]:
    """Per-tensor step factors from the Fisher importances ``column_steps="fisher"`` computes
    (:func:`nncodec.quant.column_steps.fisher_importance`: per input channel, summed here): with rounding
    errors of variance ``(r * std)**2 / 12`` per element, the linearized output distortion is
    ``a * r**2`` with ``a ∝ std**2 * sum(F)``, the quantity :func:`output_sensitivity` measures by one
    forward per tensor; here it costs nothing beyond the Fisher pass. Factors as
    :func:`factors_from_sensitivity` makes them, for every float parameter of rank >= 2 (and every parameter
    named in ``fisher``): one absent from ``fisher`` (``fisher_importance`` leaves out those with zero
    importance) or with zero importance gets the floor factor. Tied parameters share one storage, one
    importance (the first one given among their names) and one factor, reported under each name. Buffers
    keep factor 1. :class:`ConfigError` when ``fisher`` names no parameter of the model."""
    params = dict(model.named_parameters(remove_duplicate=False))
    unknown = sorted(n for n in fisher if n not in params)
    if unknown:
        raise ConfigError(f"fisher importances for tensors that are not parameters of the model: {unknown[:5]}")
    groups = _by_storage((n, p) for n, p in params.items()
                         if ((p.is_floating_point() and p.dim() >= 2) or n in fisher) and p.numel() > 0)
    sens, sizes = {}, {}
    for first, aliases in groups.items():
        t = params[first].detach()
        given = [fisher[n] for n in aliases if n in fisher]
        importance = float(given[0].sum()) if given else 0.0
        sens[first] = _spread(t) ** 2 * importance / 12
        sizes[first] = t.numel()
    factors = factors_from_sensitivity(sens, sizes, floor=floor)
    return {n: factors[first] for first, aliases in groups.items() if first in factors for n in aliases}

"""One knob: find the quantization settings that reach a requested fidelity or rate, by a short search.

``nncodec.encode(model, dst, calibration=batches, target_fidelity=0.998)`` or ``target_bits_per_param=4``:

- the step factors come from :func:`nncodec.calibrate_step_scales` on the calibration batches (unless
  ``step_scales`` is given; ``step_scales="fisher"`` takes them from the Fisher pass instead, one forward and
  ``fisher_probes`` backward passes shared with ``column_steps="fisher"``, without a forward per tensor),
  the codes from data-aware rounding (``rounding="gptq"``, the default with calibration) and rate-aware
  quantization at the given ``rate_lambda``, refined end to end with
  ``refine_steps`` > 0 (each probe refines anew: the cost multiplies by the probes), with per-input-channel
  steps when ``column_steps`` is given (importances computed once per search);
- the search moves ``rel_step`` only (λ is the caller's; the README lists the λ that helped):
  ``target_bits_per_param`` by secant steps on ``log2(rel_step)`` until the stream is within
  ``BITS_TOLERANCE`` (2 %) of the target; ``target_fidelity`` by doubling/halving then bisection to the
  coarsest step whose fidelity is >= the target, with the next coarser probe at most ``FIDELITY_BRACKET``
  (6 %) coarser and failing it.

Fidelity is measured on the calibration batches (so keep evaluation data apart): by default the mean
cosine similarity between the float model's outputs and the decoded model's, per sample (first
dimension); ``fidelity=fn`` takes any ``fn(model) -> float`` (higher is better) evaluated on the model
holding the decoded weights. Each probe is a full encode and decode of the stream.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import write_atomic
from .bitstream.descriptor import CodedTensor
from .checks import is_number
from .encoder import EncodeReport, Encoder
from .errors import ConfigError
from .rd_encode import Importances, RDOptions, fill_errors, rd_tensors

__all__ = ["TunedReport", "encode_rd", "BITS_TOLERANCE", "FIDELITY_BRACKET", "output_cosine"]

log = logging.getLogger(__name__)

BITS_TOLERANCE = 0.02      # relative: |achieved - target| / target for target_bits_per_param
FIDELITY_BRACKET = 1.06    # the coarser failing probe is at most this factor coarser than the result
_MAX_PROBES = 14
_REL_STEP_RANGE = (1e-5, 50.0)
_QUANT_OPTIONS = ("bits", "step", "rel_step")


@dataclass
class TunedReport(EncodeReport):
    """An :class:`EncodeReport` with the rate–distortion settings used and, with calibration, the fidelity
    reached (on the calibration batches). ``probes``: ``{rel_step, bits_per_param, fidelity}`` per search step."""

    fidelity: float | None = None
    rel_step: float | None = None
    rate_lambda: float = 0.0
    rounding: str = "nearest"
    refine_steps: int = 0
    column_steps: str | None = None
    probes: list[dict[str, float | None]] = field(default_factory=list)

    def table(self) -> str:
        fid = f"{self.fidelity:.6f}" if self.fidelity is not None else "-"
        rel = f"{self.rel_step:.4g}" if self.rel_step is not None else "-"
        return (super().table() + f"\nrounding {self.rounding}, refine_steps {self.refine_steps}, "
                f"column_steps {self.column_steps or '-'}, "
                f"rate_lambda {self.rate_lambda:g}, rel_step {rel}, "
                f"fidelity {fid}, {len(self.probes)} probes")


def output_cosine(reference: list[torch.Tensor], outputs: list[torch.Tensor]) -> float:
    """Mean over samples (first dimension) of the cosine similarity between flattened outputs."""
    total, count = 0.0, 0
    for ref, got in zip(reference, outputs):
        a = ref.reshape(ref.shape[0], -1) if ref.dim() > 1 else ref.reshape(1, -1)
        b = got.reshape(a.shape).to(a.dtype)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-30)
        total += float(cos.sum())
        count += cos.numel()
    return total / count if count else float("nan")


class _Fidelity:
    """Fidelity of decoded weights loaded into ``model`` (restored afterwards)."""

    def __init__(self, model: torch.nn.Module, rd: RDOptions, fn: Callable[[torch.nn.Module], float] | None):
        if fn is not None and not callable(fn):
            raise ConfigError("fidelity must be a callable fidelity(model) -> float")
        self.model, self.rd, self.fn = model, rd, fn
        self.original = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.reference = None if fn is not None else self._outputs()

    @torch.no_grad()
    def _outputs(self) -> list[torch.Tensor]:
        was = self.model.training
        self.model.eval()
        try:
            outs = []
            for b in self.rd.calibration or []:
                y = self.rd.run_forward(self.model, b)
                if not isinstance(y, torch.Tensor) or not y.is_floating_point():
                    raise ConfigError("forward must return a float tensor to measure fidelity; or pass fidelity=")
                outs.append(y.detach().to(torch.float64))
            return outs
        finally:
            self.model.train(was)

    def __call__(self, data: bytes) -> float:
        from .torch_io import decode, refuse_folded_weights

        decoded = decode(data)
        names = set(self.original)
        refuse_folded_weights([n for n in decoded if n not in names], names & set(decoded),
                              "the fidelity of a coded stream")
        try:
            self.model.load_state_dict(decoded, strict=False)
            if self.fn is not None:
                return float(self.fn(self.model))
            return output_cosine(self.reference or [], self._outputs())
        finally:
            self.model.load_state_dict(self.original, strict=False)


def _fisher_scales(model: torch.nn.Module, rd: RDOptions, importances: Importances) -> dict[str, float]:
    """``step_scales="fisher"``: per-tensor factors from the Fisher pass
    (:func:`nncodec.sensitivity.fisher_step_scales`), the one ``column_steps="fisher"`` uses too."""
    from .sensitivity import fisher_step_scales

    if rd.calibration is None:
        raise ConfigError("step_scales='fisher' needs calibration= batches (and a differentiable forward)")
    scales = fisher_step_scales(model, importances.fisher())
    if not scales:
        raise ConfigError("step_scales='fisher': no parameter of rank >= 2 has a gradient from the forward's output")
    return scales


def _check_target(name: str, value: Any, low: float, high: float) -> float:
    if not is_number(value) or not low < value < high:
        raise ConfigError(f"{name} must be a number in ({low}, {high}), got {value!r}")
    return float(value)


def encode_rd(model: Any, tensors: Mapping[str, Any], dst: Any, topology: Mapping | None, options: dict[str, Any], *,
              calibration: Any = None, forward: Any = None, rounding: str | None = None, rate_lambda: float = 0.0,
              damp: float = 0.01, target_fidelity: float | None = None, target_bits_per_param: float | None = None,
              fidelity: Callable[[torch.nn.Module], float] | None = None, refine_steps: int = 0,
              refine_lr: float = 0.01, column_steps: str | None = None, column_power: float | None = None,
              fisher_probes: int | None = None, measure_fidelity: bool = True) -> tuple[bytes | Path, TunedReport]:
    """Encode ``tensors`` (from ``model``) with data-/rate-aware codes, at the given quantization options or
    at a target found by search; see the module docstring. ``options`` are :class:`Encoder` options.
    ``measure_fidelity=False``: without a target, the report's ``fidelity`` stays None (saves a decode and
    the calibration forwards when nobody reads the report)."""
    rd = RDOptions(calibration=calibration, forward=forward, rounding=rounding, rate_lambda=rate_lambda, damp=damp,
                   refine_steps=refine_steps, refine_lr=refine_lr, column_steps=column_steps,
                   column_power=column_power, fisher_probes=fisher_probes)
    if (rd.calibration is not None or target_fidelity is not None or target_bits_per_param is not None) \
            and not isinstance(model, torch.nn.Module):
        raise ConfigError("calibration and targets need the nn.Module itself (to run it), not a state_dict")
    targeted = target_fidelity is not None or target_bits_per_param is not None
    if target_fidelity is not None and target_bits_per_param is not None:
        raise ConfigError("give one of target_fidelity and target_bits_per_param")
    if fidelity is not None and rd.calibration is None:
        raise ConfigError("fidelity= is measured with calibration= batches")
    given = [k for k in _QUANT_OPTIONS if options.get(k) is not None]
    tensors = {k: v if isinstance(v, CodedTensor) else (v[0].copy(), v[1]) for k, v in tensors.items()}
    if not targeted:
        if not given:
            raise ConfigError("calibration / rounding / rate_lambda choose quantized codes: give rel_step, step or "
                              "bits, or a target_fidelity / target_bits_per_param")
        importances = Importances(model, rd)
        if options.get("step_scales") == "fisher":
            options = {**options, "step_scales": _fisher_scales(model, rd, importances)}
        encoder = Encoder(**options)
        coded, errors = rd_tensors(model, tensors, encoder, rd, importances, progress=sys.stderr.isatty())
        result, base = encoder.encode(coded, dst, topology)
        report = TunedReport(**vars(base), rate_lambda=rd.rate_lambda, rounding=rd.rounding,
                             rel_step=options.get("rel_step"), refine_steps=rd.refine_steps,
                             column_steps=rd.column_steps)
        fill_errors(report, errors)
        if rd.calibration is not None and measure_fidelity:
            data = result if isinstance(result, bytes) else Path(result).read_bytes()
            report.fidelity = _Fidelity(model, rd, fidelity)(data)
        return result, report
    if given:
        raise ConfigError(f"a target chooses the step itself; drop {given}")
    if rd.calibration is None:
        raise ConfigError("target_fidelity / target_bits_per_param need calibration= batches")
    if target_fidelity is not None:
        target_fidelity = _check_target("target_fidelity", target_fidelity, -1.0, 1.0)
    if target_bits_per_param is not None:
        target_bits_per_param = _check_target("target_bits_per_param", target_bits_per_param, 0.0, 64.0)
    opts = dict(options)
    importances = Importances(model, rd)  # computed in the first probe, reused by the others
    if opts.get("step_scales") == "fisher":
        opts["step_scales"] = _fisher_scales(model, rd, importances)
    elif not opts.get("step_scales"):
        from .sensitivity import calibrate_step_scales

        opts["step_scales"] = calibrate_step_scales(model, rd.calibration, forward=rd.run_forward, progress=False)
    measure = _Fidelity(model, rd, fidelity)
    cache: dict[float, tuple[bytes, EncodeReport, dict, float | None]] = {}
    show = sys.stderr.isatty()
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=_MAX_PROBES, desc="target search", unit="probe", leave=False)

    def probe(r: float) -> tuple[float, float | None]:
        if r not in cache:
            encoder = Encoder(rel_step=r, **opts)
            coded, errors = rd_tensors(model, tensors, encoder, rd, importances)
            data, rep = encoder.encode(coded, None, topology)
            fid = measure(data) if target_fidelity is not None else None
            cache[r] = (data, rep, errors, fid)  # type: ignore[assignment]
            log.info("probe rel_step %.5g: %.4f bits/param, fidelity %s", r, rep.bits_per_param or 0.0, fid)
            if bar is not None:
                bar.update(1)
        _, rep, _, fid = cache[r]
        return rep.bits_per_param or 0.0, fid

    lo_r, hi_r = _REL_STEP_RANGE
    try:
        if target_bits_per_param is not None:
            chosen = _search_bits(probe, target_bits_per_param, lo_r, hi_r)
        else:
            chosen = _search_fidelity(probe, target_fidelity, lo_r, hi_r)  # type: ignore[arg-type]
    finally:
        if bar is not None:
            bar.close()
    data, rep, errors, fid = cache[chosen]
    if fid is None:
        fid = measure(data)
    result = data if dst is None else write_atomic(dst, [data])
    report = TunedReport(**vars(rep), fidelity=fid, rel_step=chosen, rate_lambda=rd.rate_lambda, rounding=rd.rounding,
                         refine_steps=rd.refine_steps, column_steps=rd.column_steps,
                         probes=[{"rel_step": r, "bits_per_param": c[1].bits_per_param, "fidelity": c[3]}
                                 for r, c in sorted(cache.items())])
    fill_errors(report, errors)
    return result, report


def _search_bits(probe: Callable[[float], tuple[float, Any]], target: float, lo: float, hi: float) -> float:
    """``rel_step`` whose rate is within BITS_TOLERANCE of ``target`` (else the closest probed)."""
    x = min(max(2.0 ** -(target - 2.0), lo), hi)   # rate ≈ log2(1/rel_step) + 2 bits/param
    points: list[tuple[float, float, float]] = []  # (log2 rel_step, bits/param, the rel_step probed)
    for _ in range(_MAX_PROBES):
        bits, _ = probe(x)
        points.append((math.log2(x), bits, x))
        if abs(bits - target) <= BITS_TOLERANCE * target:
            return x
        slope = -1.0
        below = [p for p in points if p[1] < target]
        above = [p for p in points if p[1] > target]
        if below and above:  # bracketed: secant between the nearest points on either side
            a = min(above, key=lambda p: p[1] - target)
            b = min(below, key=lambda p: target - p[1])
            if a[0] != b[0] and a[1] != b[1]:
                slope = (b[1] - a[1]) / (b[0] - a[0])
            nxt = a[0] + (target - a[1]) / slope if slope < 0 else (a[0] + b[0]) / 2
            nxt = min(max(nxt, min(a[0], b[0])), max(a[0], b[0]))
            if abs(nxt - a[0]) < 1e-6 or abs(nxt - b[0]) < 1e-6:
                nxt = (a[0] + b[0]) / 2
        else:
            nxt = math.log2(x) + (bits - target) / -slope
        new = min(max(2.0 ** nxt, lo), hi)
        if new == x:
            break
        x = new
    best = min(points, key=lambda p: abs(p[1] - target))
    log.warning("target_bits_per_param %.4g: closest reached %.4g", target, best[1])
    return best[2]  # the probed value itself: 2 ** log2(x) need not give x back


def _search_fidelity(probe: Callable[[float], tuple[float, Any]], target: float, lo: float, hi: float) -> float:
    """The coarsest probed ``rel_step`` with fidelity >= ``target`` (bracketed to FIDELITY_BRACKET)."""
    x = 0.1
    ok: float | None = None
    fail: float | None = None
    for _ in range(_MAX_PROBES):
        _, fid = probe(x)
        if fid is not None and fid >= target:
            ok = x if ok is None else max(ok, x)
        else:
            fail = x if fail is None else min(fail, x)
        if ok is not None and fail is not None:
            if fail <= ok:  # fidelity not monotone here: keep the passing probe
                return ok
            if fail / ok <= FIDELITY_BRACKET:
                return ok
            x = math.sqrt(ok * fail)
        elif ok is not None:
            if ok * 2 > hi:
                return ok
            x = ok * 2
        else:
            if fail is not None and fail / 2 < lo:
                raise ConfigError(f"target_fidelity {target} is not reached even at rel_step {fail:g}")
            x = fail / 2  # type: ignore[operator]
    if ok is None:
        raise ConfigError(f"target_fidelity {target} not reached within {_MAX_PROBES} probes")
    return ok

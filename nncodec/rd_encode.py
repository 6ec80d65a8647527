"""Rate–distortion encode of a torch model: data-aware and rate-aware codes, then the ordinary encoder.

For each tensor the :class:`~nncodec.encoder.Encoder` would quantize, the plain quantizer gives the grid
(step or per-channel scales, code range); this module chooses other codes on that grid:

- ``rounding="gptq"`` (with calibration batches): Linear / Conv1d / Conv2d weights are rounded by
  second-order error feedback on the Hessian of their inputs, embedding tables (not tied, with a
  differentiable forward) on the row Hessian of the output error from random output probes
  (:mod:`nncodec.quant.gptq`);
- ``rounding="dependent"``: dependent (trellis-coded) quantization, format 1.5: two quantizers of half the
  grid's step chosen by a state machine, codes found by a Viterbi search (:mod:`nncodec.quant.dependent`);
  these codes reach the encoder with the state machine's stage at the head of their pipeline;
- ``rounding="dependent-gptq"`` (with calibration batches): the same trellis search with GPTQ's error
  feedback, minimizing each layer's output error (:mod:`nncodec.quant.dependent_gptq`); weights without a
  Hessian (or of more than 4096 columns) take plain dependent quantization; same format as ``"dependent"``;
- ``rate_lambda > 0``: every quantized tensor takes codes minimizing distortion + λ·rate under the
  order-0 model of the rANS stage (:mod:`nncodec.quant.rate_aware`), inside GPTQ's rounding too;
- ``column_steps`` (``"hessian"`` / ``"fisher"``, with calibration batches): a tensor quantized with one step
  gets one step per input channel instead (axis 1), spread by the channels' importance
  (:mod:`nncodec.quant.column_steps`); the codes above are chosen on that grid;
- ``refine_steps > 0`` (with calibration batches): starting from those codes, the codes of every quantized
  parameter are refined together against the model's output (:mod:`nncodec.quant.refine_codes`).

The codes reach the encoder as :class:`~nncodec.encoder.CodedTensor`, so the stream format and decoding
are unchanged, except for dependent quantization's stage (format 1.5, FORMAT.md §15). The report's per-tensor errors are those of the chosen codes against the float weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .dtypes import DType
from .bitstream.descriptor import CodedTensor, bfloat16_bits_to_float32
from .encoder import Encoder
from .errors import ConfigError
from .quant.dependent import dependent_coded
from .quant.column_steps import channel_steps, check_column_options, hessian_importance
from .quant.rate_aware import CodeRate, check_lambda, ecsq_codes
from .quant.refine_codes import check_refine, refine_codes
from .quant.uniform import UniformCodes, coded_from

__all__ = ["ROUNDINGS", "RDOptions", "Importances", "rd_tensors", "Forward"]

log = logging.getLogger(__name__)

ROUNDINGS = ("nearest", "gptq", "dependent", "dependent-gptq")
#: the roundings whose codes are dependent quantization's (format 1.5)
DEPENDENT_ROUNDINGS = ("dependent", "dependent-gptq")
#: the roundings with GPTQ's error feedback (they use the Hessians' inverse factors, embedding tables' included)
FEEDBACK_ROUNDINGS = ("gptq", "dependent-gptq")
Forward = Callable[[torch.nn.Module, Any], Any]


class RDOptions:
    """The rate–distortion options of a torch encode: ``calibration`` batches, ``forward(model, batch)``,
    ``rounding`` (``"nearest"``, ``"gptq"``, ``"dependent"`` or ``"dependent-gptq"``; default ``"gptq"`` when
    calibration is given), ``rate_lambda``
    (λ >= 0, in squared steps per bit), ``damp`` (GPTQ's Hessian damping, a fraction of its mean diagonal),
    ``refine_steps`` (end-to-end refinement passes, 0 = none; needs calibration), ``refine_lr`` (its
    step size, in grid steps), ``column_steps`` (None, ``"hessian"`` or ``"fisher"``: per-input-channel steps,
    needs calibration), ``column_power`` (their tempering exponent, 0..2, default 0.5, 1 = theory) and
    ``fisher_probes`` (random output directions per batch for ``"fisher"`` and for embedding tables' row
    Hessians under ``"gptq"`` / ``"hessian"``, 1..64; default 4; given where no probe pass uses it, a
    :class:`ConfigError`)."""

    def __init__(self, *, calibration: Iterable[Any] | None = None, forward: Forward | None = None,
                 rounding: str | None = None, rate_lambda: float = 0.0, damp: float = 0.01,
                 refine_steps: int = 0, refine_lr: float = 0.01, column_steps: str | None = None,
                 column_power: float | None = None, fisher_probes: int | None = None):
        self.calibration = list(calibration) if calibration is not None else None
        if self.calibration is not None and not self.calibration:
            raise ConfigError("calibration needs at least one batch")
        #: whether ``rounding`` was given (a defaulted one applying to no tensor is no error)
        self.rounding_given = rounding is not None
        #: the rounding used when none is given: GPTQ with calibration, else plain rounding
        self.rounding_default = "gptq" if self.calibration is not None else "nearest"
        if rounding is None:
            rounding = self.rounding_default
        if rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if rounding in FEEDBACK_ROUNDINGS and self.calibration is None:
            raise ConfigError(f"rounding={rounding!r} needs calibration= batches")
        if forward is not None and not callable(forward):
            raise ConfigError("forward must be a callable forward(model, batch)")
        self.forward = forward
        self.rounding = rounding
        self.rate_lambda = check_lambda(rate_lambda)
        if not (isinstance(damp, (int, float)) and 0 <= damp < 10):
            raise ConfigError(f"damp must be in [0, 10), got {damp!r}")
        self.damp = float(damp)
        self.refine_steps, self.refine_lr = check_refine(refine_steps, refine_lr)
        if self.refine_steps and rounding in DEPENDENT_ROUNDINGS:
            raise ConfigError(f"refine_steps does not apply to rounding={rounding!r} (refined codes leave the trellis)")
        if self.refine_steps and self.calibration is None:
            raise ConfigError("refine_steps needs calibration= batches")
        self.column_steps, self.column_power, self.fisher_probes = check_column_options(
            column_steps, column_power, fisher_probes, table_probes=rounding in FEEDBACK_ROUNDINGS)
        #: whether ``fisher_probes`` was given (then a probe pass must use it: :func:`rd_tensors` checks)
        self.fisher_probes_given = fisher_probes is not None
        if self.column_steps is not None and self.calibration is None:
            raise ConfigError(f"column_steps={self.column_steps!r} needs calibration= batches")

    @property
    def active(self) -> bool:
        """Whether codes differ from the plain quantizer's."""
        return self.rounding != "nearest" or self.rate_lambda > 0 or self.refine_steps > 0 \
            or self.column_steps is not None

    def run_forward(self, model: torch.nn.Module, batch: Any) -> Any:
        if self.forward is not None:
            return self.forward(model, batch)
        from .sensitivity import default_forward

        return default_forward(model, batch)


class Importances:
    """What ``rd``'s calibration batches say about ``model``'s parameters, each computed on first use and kept
    for further encodes of the same model with the same options (the probes of a target search): GPTQ's
    Hessians (layer inputs; embedding tables' row Hessians of the output error) and their inverse factors,
    and per-input-channel Fisher importances. The tables' Hessians and the Fisher importances come from the
    same probe passes when both are needed."""

    def __init__(self, model: torch.nn.Module, rd: RDOptions):
        self.model, self.rd = model, rd
        self._hessians: dict[str, torch.Tensor] | None = None
        self._tables: dict[str, torch.Tensor] | None = None
        self._fisher: dict[str, np.ndarray] | None = None
        self._factors: dict[str, Any] = {}

    @property
    def _wants_tables(self) -> bool:
        """Whether the tables' row Hessians are used: by the roundings with GPTQ's error feedback or by Hessian
        column steps."""
        return self.rd.rounding in FEEDBACK_ROUNDINGS or self.rd.column_steps == "hessian"

    def hessians(self) -> dict[str, torch.Tensor]:
        """``{weight name: H}``: layer-input Hessians (:func:`~nncodec.quant.gptq.collect_hessians`) and, with a
        differentiable forward, embedding tables' row Hessians (:func:`~nncodec.quant.gptq.collect_table_hessians`)."""
        if self._hessians is None:
            from .quant.gptq import collect_hessians

            hessians = collect_hessians(self.model, self.rd.calibration or [], self.rd.run_forward)
            if self._wants_tables:
                self._probe(fisher=False)
                hessians.update(self._tables or {})
            self._hessians = hessians
        return self._hessians

    def _probe(self, fisher: bool) -> None:
        """The probe passes not made yet: the tables' row Hessians (when used) and the Fisher importances
        (``fisher``, or with ``column_steps="fisher"``), in one pass when both are needed. The Fisher
        importances need a differentiable forward (else :class:`ConfigError`); the tables alone do not (they
        keep plain rounding)."""
        from .quant.gptq import probe_tables

        fisher = (fisher or self.rd.column_steps == "fisher") and self._fisher is None
        tables = self._wants_tables and self._tables is None
        if not (fisher or tables):
            return
        names = [n for n, p in self.model.named_parameters() if p.dim() >= 2] if fisher else []
        stats = probe_tables(self.model, self.rd.calibration or [], self.rd.run_forward, names, tables=tables,
                             probes=self.rd.fisher_probes, strict=fisher)
        if fisher:
            self._fisher = stats.diagonal
        if tables:
            self._tables = stats.tables

    @property
    def probes_used(self) -> bool:
        """Whether a probe pass (``fisher_probes`` output directions) gave something used: Fisher importances
        (``column_steps`` or ``step_scales`` ``"fisher"``), or a table's row Hessian."""
        return self._fisher is not None or bool(self._tables)

    def factor(self, name: str, hessian: torch.Tensor) -> Any:
        """The inverse factor of ``name``'s Hessian, damped by ``rd.damp`` (an embedding table's by at least
        :data:`~nncodec.quant.gptq.TABLE_DAMP`)."""
        if name not in self._factors:
            from .quant.gptq import TABLE_DAMP, inverse_factor

            damp = max(self.rd.damp, TABLE_DAMP) if name in (self._tables or {}) else self.rd.damp
            self._factors[name] = inverse_factor(hessian, damp)
        return self._factors[name]

    def fisher(self) -> dict[str, np.ndarray]:
        """Per-input-channel Fisher importances of the parameters of rank >= 2."""
        if self._fisher is None:
            self._probe(fisher=True)
        return self._fisher or {}


def _float_values(storage: np.ndarray, dtype: DType) -> np.ndarray:
    """The tensor's values as floats of its own width (bfloat16 as float32): float64 where needed is exact."""
    return bfloat16_bits_to_float32(storage) if dtype.name == "bfloat16" else storage


def _step_of(grid: UniformCodes, ndim: int) -> np.ndarray:
    s = grid.scales.astype(np.float64)
    return s.reshape((-1,) + (1,) * (ndim - 1)) if grid.per_channel else s.reshape(())


def _range_of(grid: UniformCodes, encoder: Encoder) -> tuple[int, int]:
    if encoder.bits is not None:  # a width-bounded grid (bits=): keep its code range
        qmax = (1 << (grid.bits - 1)) - 1
        return -qmax, qmax
    return -(1 << 31) + 1, (1 << 31) - 1


@dataclass
class _Chosen:
    """A tensor's chosen codes, with what measuring and coding them needs."""

    codes: np.ndarray   #: integer codes, the tensor's shape
    step: np.ndarray    #: the grid's step(s), broadcastable to the tensor
    x: np.ndarray       #: the float weights (float64)
    grid: UniformCodes  #: the grid the codes are on
    dtype: DType
    qmin: int           #: the code range
    qmax: int
    axis: int           #: the scales' axis (1: per input channel, from column_steps)


def rd_tensors(model: torch.nn.Module, tensors: Mapping[str, Any], encoder: Encoder, rd: RDOptions,
               importances: Importances | None = None, progress: bool = False
               ) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """``tensors`` (as :func:`nncodec.torch_io.tensors_from` gives them) with the quantized ones replaced by
    data-/rate-aware :class:`CodedTensor` codes; and ``{name: (max abs error, rms error)}`` of those.

    ``importances``: those of ``model`` and ``rd`` computed by earlier calls (None: computed here as needed).
    """
    from .quant.gptq import gptq_codes

    if rd.rounding in DEPENDENT_ROUNDINGS and encoder.bits is not None:
        raise ConfigError(f"rounding={rd.rounding!r} applies to step / rel_step quantization, not bits=")
    if rd.column_steps is not None and encoder.bits is not None:
        raise ConfigError("column_steps applies to step / rel_step quantization, not bits= (its steps are per row)")
    importances = importances if importances is not None else Importances(model, rd)
    feedback = rd.rounding in FEEDBACK_ROUNDINGS
    hessians = importances.hessians() if feedback or rd.column_steps == "hessian" else None
    fisher = importances.fisher() if rd.column_steps == "fisher" else {}
    chosen: dict[str, _Chosen] = {}
    params = {n for n, _ in model.named_parameters()} if rd.refine_steps else set()
    dependent: dict[str, tuple[CodedTensor, tuple[float, float]]] = {}
    weighed = 0  # tensors column_steps found importances for (whether or not their steps pay)
    rounded = gptq_rounded = 0  # tensors quantized on a step grid; of those, with GPTQ factors
    for name, value in tensors.items():
        if isinstance(value, CodedTensor):
            continue
        storage, dtype = value
        grid = encoder.grid(name, value)
        if grid is None or grid.binary:
            continue
        rounded += 1
        x = _float_values(storage, dtype)
        step = _step_of(grid, x.ndim)
        qmin, qmax = _range_of(grid, encoder)
        h = hessians.get(name) if hessians is not None else None
        if h is not None and not (x.ndim >= 2 and h.shape[0] == math.prod(x.shape[1:])):
            h = None
        # dependent quantization's feedback searches one chain per row, of at most 4096 columns
        fits = h is not None and feedback and (rd.rounding == "gptq" or h.shape[0] <= 4096)
        factor = importances.factor(name, h) if fits else None
        axis, importance = 0, None
        if rd.column_steps is not None and x.ndim >= 2 and not grid.per_channel:
            if rd.column_steps == "fisher":
                importance = fisher.get(name)
            elif h is not None:
                importance = hessian_importance(h, factor, x.shape[1])
            weighed += importance is not None
        steps = None if importance is None else channel_steps(float(grid.scales[0]), importance,
                                                               rd.column_power, x.shape)
        if steps is not None:
            grid = UniformCodes(grid.codes, steps.reshape(-1), grid.bits, per_channel=True)
            step, axis = steps.astype(np.float64), 1
        if rd.rounding in DEPENDENT_ROUNDINGS:
            gptq_rounded += factor is not None
            dependent[name] = dependent_coded(x, step, grid, dtype, axis, rd.rate_lambda,
                                              what=f"tensor {name!r}", factor=factor)
            continue
        x = np.asarray(x, dtype=np.float64)
        if factor is not None:
            gptq_rounded += 1
            rate = CodeRate(ecsq_codes(x, step, rd.rate_lambda, qmin=qmin, qmax=qmax)) if rd.rate_lambda else None
            codes = gptq_codes(x, None, step if axis else step.reshape(-1), qmin=qmin, qmax=qmax,
                               lam=rd.rate_lambda, rate=rate, factor=factor)
        elif rd.rate_lambda > 0 or axis:
            codes = ecsq_codes(x, step, rd.rate_lambda, qmin=qmin, qmax=qmax)
        elif name in params:
            codes = grid.codes.astype(np.int64)
        else:
            continue
        chosen[name] = _Chosen(codes, step, x, grid, dtype, qmin, qmax, axis)
    _check_applies(rd, rounded, gptq_rounded)
    if rd.column_steps is not None and not weighed:
        where = ("Linear / Conv1d / Conv2d weights (groups=1), or embedding tables with a differentiable forward, "
                 "that the calibration reaches"
                 if rd.column_steps == "hessian" else "parameters of rank >= 2 the forward's output depends on")
        raise ConfigError(f"column_steps={rd.column_steps!r} applies to no quantized tensor: it needs {where}, "
                          "quantized with one step (step / rel_step)")
    if rd.fisher_probes_given and not importances.probes_used:
        raise ConfigError("fisher_probes applies to no tensor: no embedding table has a row Hessian (none that is "
                          "untied, without max_norm / scale_grad_by_freq, looked up by the calibration through a "
                          "differentiable forward), and neither column_steps nor step_scales is 'fisher'")
    if rd.refine_steps:
        start = {n: (c.codes, c.step, c.x) for n, c in chosen.items() if n in params}
        refined = refine_codes(model, start, rd.calibration or [], rd.run_forward, steps=rd.refine_steps,
                               lr=rd.refine_lr, progress=progress)
        for n, codes in refined.items():
            chosen[n].codes = np.clip(codes, chosen[n].qmin, chosen[n].qmax)
    out: dict[str, Any] = dict(tensors)
    errors: dict[str, tuple[float, float]] = {}
    for name, (coded, error) in dependent.items():
        out[name], errors[name] = coded, error
    for name, c in chosen.items():
        out[name] = coded_from(c.grid, c.codes, c.dtype, fit_peak=bool(c.axis), axis=c.axis)
        diff = np.abs(c.codes * c.step - c.x)
        errors[name] = (float(diff.max()) if diff.size else 0.0, float(np.sqrt(np.mean(diff * diff))) if diff.size else 0.0)
    return out, errors


def _check_applies(rd: RDOptions, rounded: int, gptq_rounded: int) -> None:
    """:class:`ConfigError` naming the rounding options given that applied to no tensor: ``rounded`` tensors
    were quantized on a step grid (not lossless, not binary), ``gptq_rounded`` of them with GPTQ factors (GPTQ's
    rounding or dependent quantization's feedback)."""
    if not rounded:
        # the default's value given explicitly is no choice (except "gptq": a request, as below)
        chosen = rd.rounding_given and (rd.rounding != rd.rounding_default or rd.rounding == "gptq")
        given = ([f"rounding={rd.rounding!r}"] if chosen else []) \
            + ([f"rate_lambda={rd.rate_lambda!r}"] if rd.rate_lambda > 0 else []) \
            + ([f"refine_steps={rd.refine_steps!r}"] if rd.refine_steps else []) \
            + ([f"column_steps={rd.column_steps!r}"] if rd.column_steps is not None else [])
        if given:
            raise ConfigError(f"{', '.join(given)} applies to no quantized tensor: every tensor is stored lossless (the "
                              "lossless= patterns, integer, empty or rank-0 tensors) or binary (bits=1)")
    elif rd.rounding == "gptq" and rd.rounding_given and not gptq_rounded:
        raise ConfigError("rounding='gptq' applies to no quantized tensor: it needs Linear / Conv1d / Conv2d "
                          "weights (groups=1), or embedding tables (not tied) with a differentiable forward, that "
                          "the calibration reaches; give rounding='nearest' or 'dependent'")
    elif rd.rounding == "dependent-gptq" and not gptq_rounded:
        raise ConfigError("rounding='dependent-gptq' applies to no quantized tensor: it needs Linear / Conv1d / "
                          "Conv2d weights (groups=1, at most 4096 input columns), or embedding tables (not tied) "
                          "with a differentiable forward, that the calibration reaches; give rounding='dependent'")


def fill_errors(report: Any, errors: Mapping[str, tuple[float, float]]) -> None:
    """Put the measured errors of :func:`rd_tensors` into an :class:`~nncodec.encoder.EncodeReport`."""
    for t in report.tensors:
        if t.name in errors:
            t.max_abs_error, t.rms_error = errors[t.name]

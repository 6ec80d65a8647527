"""Per-input-channel activation steps folded into a Linear layer's weights (the input side of scale migration).

A per-tensor activation step is set by the largest channels: on a transformer's norm outputs (BERT's outlier
dimensions, 40x the RMS) one power-of-two step at 8 bits leaves the bulk of the channels a few codes. Scale
migration (:mod:`nncodec.quant.smoothing`) divides the norm's output itself, which a post-norm block cannot do
(the norm output is also a residual summand). Here the producer keeps its output (e.g. 16 bits for the residual
path) and each consuming Linear requantizes its own input: ``x_j / s_j`` on a per-tensor grid, with its weight
stored folded, ``W[:, j] * s_j``, and quantized per output channel. In hardware ``1 / s_j`` (and the grid step)
is the requantization's per-channel multiplier; the MACs stay integer ``W x A`` MACs at the input quantizer's
bits. The fake-quant :class:`~nncodec.quant.layers.QLinear` computes exactly that.

:func:`fit_input_steps` chooses ``s`` on calibration inputs: ``s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)``
(SmoothQuant's balance rule, ``X``: the layer's inputs, ``W``: its unfolded weight), then one common factor so
that the input quantizer's range sits at the clip of ``X / s`` with the least squared error (a per-tensor
power-of-two grid then costs nothing: the factor absorbs it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..checks import is_int, is_number
from ..errors import ConfigError
from .layers import QLinear, check_tied_quantizers

__all__ = ["fit_input_steps", "check_foldable", "input_requantized", "CLIP_FRACTIONS", "FIT_ALPHAS"]

log = logging.getLogger(__name__)

#: scales are clamped to [MIN_SCALE, 1 / MIN_SCALE] (a dead channel must not divide by zero)
MIN_SCALE = 1e-5
#: ``alpha`` values :func:`fit_input_steps` tries with ``alpha="fit"`` (None: one step for all channels)
FIT_ALPHAS = (None, 0.0, 0.25, 0.5, 0.75, 1.0)
#: clips tried for ``X / s``, as fractions of its largest value
CLIP_FRACTIONS = tuple(i / 40 for i in range(4, 41))


def input_requantized(model: nn.Module) -> dict[str, QLinear]:
    """``{name: layer}`` of the :class:`QLinear` layers of ``model`` with an input quantizer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QLinear) and m.input_quantizer is not None}


def check_foldable(name: str, q: Any) -> None:
    """ConfigError unless kernel quantizer ``q`` of layer ``name`` can take folded input steps: None, float, or
    steps per output channel (``alpha='auto'`` / ``'auto_po2'``)."""
    if q is None or q.kind == "float" or getattr(q, "alpha", None) in ("auto", "auto_po2"):
        return
    raise ConfigError(f"per-channel input steps of {name!r} fold into its weight's columns, which its kernel quantizer "
                      f"{q.spec()} (one fixed range per tensor) would clip: use per-output-channel steps "
                      "(quantized_bits(..., alpha='auto')) or a float kernel")


def _balanced(peak: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """``max|X_j|^alpha / max|W_:j|^(1 - alpha)``, clamped."""
    w_max = w.abs().amax(0).clamp_min(MIN_SCALE)
    return (peak.clamp_min(MIN_SCALE).pow(alpha) / w_max.pow(1.0 - alpha)).clamp(MIN_SCALE, 1 / MIN_SCALE)


def _fit_clip(q: Any, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``s`` times the common factor that puts ``q``'s largest magnitude at the clip of ``x / s`` with the least
    squared error (over :data:`CLIP_FRACTIONS` of its largest value)."""
    z = x / s
    top = float(z.abs().max())
    if top <= 0:
        return s
    reach = float(q(torch.tensor([1e30])).abs()[0])  # the quantizer's largest magnitude
    best, best_err = 1.0, float("inf")
    for f in CLIP_FRACTIONS:
        c = f * top / reach
        err = float(((q(z / c) * c - z) ** 2).mean())
        if err < best_err:
            best, best_err = c, err
    return (s * best).clamp(MIN_SCALE, 1 / MIN_SCALE)


def _output_error(layer: QLinear, x: torch.Tensor, w: torch.Tensor, s: torch.Tensor,
                  reference: torch.Tensor) -> float:
    """Mean squared error of the layer's output (no bias) with input ``q_in(x / s)`` and kernel ``q_k(W diag(s))``
    (``w`` already masked) against the float ``reference`` (``x W^T``)."""
    q = layer.kernel_quantizer
    wq = q(w * s) if q is not None else w * s
    xq = layer.input_quantizer(x / s)
    return float(((xq @ wq.T - reference) ** 2).mean())


def _default_forward(model: nn.Module, batch: Any) -> Any:
    return model(*batch) if isinstance(batch, (tuple, list)) else model(batch)


@torch.no_grad()
def fit_input_steps(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None = None,
                    *, alpha: "float | str" = "fit", max_rows: int = 2048) -> dict[str, torch.Tensor]:
    """Fit the ``input_scale`` of every :class:`QLinear` of ``model`` that has an input quantizer, in place,
    and fold it into the weight (a weight already folded is unfolded first, so fitting again is safe).

    ``batches``: calibration inputs (``forward(model, batch)``, default ``model(*batch)``), never evaluation
    data; the layers' inputs are measured in one pass with every input requantization off (upstream weight
    and activation quantizers as they are). ``alpha`` in [0, 1]: 1 moves the input's whole channel range into
    the weight, 0 only the weight's column ranges into the input. ``max_rows``: input rows kept per layer to
    fit the clip. Returns ``{layer name: s}``. ConfigError when no layer has an input quantizer, when a
    layer's kernel quantizer has one fixed per-tensor range (folding would clip it), when a layer's weight is
    tied to another layer's (folding would rescale their shared tensor), or when a layer saw no input."""
    if alpha != "fit" and (not is_number(alpha) or not 0.0 <= alpha <= 1.0):
        raise ConfigError(f"input steps: alpha must be a number in [0, 1] or 'fit', got {alpha!r}")
    if not is_int(max_rows) or max_rows < 1:
        raise ConfigError(f"input steps: max_rows must be a positive integer, got {max_rows!r}")
    layers = input_requantized(model)
    if not layers:
        raise ConfigError("input steps: no Linear layer of the model has an input quantizer (plan key 'input')")
    for name, layer in layers.items():
        check_foldable(name, layer.kernel_quantizer)
    check_tied_quantizers(model)  # steps folded into a tied weight would rescale the other layers' tensor
    forward = forward or _default_forward
    for layer in layers.values():  # unfold: the weight as the float model has it, scale 1
        layer.weight.div_(layer.input_scale.to(layer.weight.dtype))
        layer.input_scale.fill_(1.0)
    peaks: dict[str, torch.Tensor] = {}
    rows: dict[str, list[torch.Tensor]] = {}
    kept: dict[str, int] = {}

    def record(module: nn.Module, args: tuple, name: str) -> None:
        x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
        m = x.abs().amax(0)
        peaks[name] = m if name not in peaks else torch.maximum(peaks[name], m)
        room = max_rows - kept.get(name, 0)
        if room > 0:
            rows.setdefault(name, []).append(x[:room].clone())
            kept[name] = kept.get(name, 0) + min(room, len(x))

    handles = [layer.register_forward_pre_hook(lambda mod, args, name=name: record(mod, args, name))
               for name, layer in layers.items()]
    was = model.training
    model.eval()
    for layer in layers.values():
        layer.skip_input_requantization = True
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        model.train(was)
        for layer in layers.values():
            layer.skip_input_requantization = False
        for h in handles:
            h.remove()
    missing = sorted(set(layers) - set(peaks))
    if missing:
        raise ConfigError(f"input steps: layer(s) {missing[:5]} saw no input on the calibration batches")
    scales = {}
    for name, layer in layers.items():
        x = torch.cat(rows[name])
        w = layer.weight.detach().float()
        candidates = [alpha] if alpha != "fit" else list(FIT_ALPHAS)
        mask = getattr(layer, "weight_mask", None)
        masked = w if mask is None else w * mask
        reference = x @ masked.T if len(candidates) > 1 else None
        best = None
        for a in candidates:
            s = _balanced(peaks[name], w, a) if a is not None else torch.ones_like(peaks[name])
            s = _fit_clip(layer.input_quantizer, x, s)
            err = _output_error(layer, x, masked, s, reference) if reference is not None else 0.0
            if best is None or err < best[0]:
                best = (err, a, s)
        _, a, s = best
        layer.weight.mul_(s.to(layer.weight.dtype))
        layer.input_scale.copy_(s.to(layer.input_scale.dtype))
        scales[name] = s
        log.info("input steps: %s alpha %s, scales %.3g..%.3g", name, a, float(s.min()), float(s.max()))
    return scales

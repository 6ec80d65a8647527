"""Data-aware rounding (the GPTQ / OPTQ family): codes that minimize a layer's output error, not its weight error.

For a linear map ``y = W x`` with calibration inputs ``X`` the output error of quantized weights ``Q`` is
``tr((W - Q) H (W - Q)^T)`` with ``H = X^T X / n`` (the Hessian of the layer inputs). The columns of ``W`` are
rounded one after another; the error each rounding makes is fed back into the columns not yet rounded,
weighted by the inverse Hessian (its upper Cholesky factor), so later columns compensate for it. A
convolution is the same map on its unfolded input patches.

An embedding table ``W[V, d]`` has no input Hessian, but its output error has the same quadratic form: a row
error ``δ_t`` costs about ``δ_t M δ_tᵀ`` with ``M`` the Gauss–Newton matrix of the output with respect to a
row, pooled over the rows the calibration looks up (:mod:`nncodec.quant.output_probes`, random output
probes, backward passes: the forward must be differentiable). With ``H := M`` (rows = tokens, columns =
embedding dimensions) the same column-by-column rounding applies, to every row of the table: rows no batch
looked up are rounded with the pooled ``M`` too, the best estimate of their own.

The grid is the one the plain quantizer would use (same step or per-channel scales, same code range), so
the stream format and decoding do not change. Each rounding may be rate-aware
(:mod:`nncodec.quant.rate_aware`): with λ > 0 a column takes the cheaper of the nearest code and its
neighbour towards zero under distortion + λ·rate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from .layers import _QuantParams, _QuantWeights
from .output_probes import ProbeStats, gauss_newton_probes
from .rate_aware import CodeRate, check_lambda, choose

__all__ = ["collect_hessians", "collect_table_hessians", "gptq_codes", "inverse_factor", "hessian_layers",
           "hessian_tables", "initialize_kernels", "probe_tables", "MAX_COLUMNS", "TABLE_DAMP"]

log = logging.getLogger(__name__)

_SUPPORTED = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: layers with more input columns (in_features, or in_channels x kernel elements) keep plain / rate-aware
#: rounding: their Hessian would take over 128 MiB (float64)
MAX_COLUMNS = 4096
#: least damping (fraction of the mean diagonal) of an embedding table's row Hessian: estimated from random
#: output probes on the rows a few batches look up, it is noisier than a layer-input Hessian. On
#: all-MiniLM-L6-v2 (word table alone at 0.5 std steps, 4 probes) 1 - cos against plain rounding was, for
#: damping 0.01 / 0.03 / 0.1 / 0.3 / 1: +7 / +9 / -13 / -17 / -12 % from one batch of 32 sentences,
#: -16 / -19 / -17 / -18 / -19 % from 23 batches
TABLE_DAMP = 0.3


def hessian_layers(model: nn.Module, *, fake_quant: bool = False) -> dict[str, nn.Module]:
    """``{weight name: module}`` for the layers data-aware rounding handles: ``Linear``, and ``Conv1d`` /
    ``Conv2d`` with ``groups == 1``, of at most ``MAX_COLUMNS`` input columns (a weight shared by several
    modules is left out). ``fake_quant``: their fake-quant subclasses too (``QLinear``, ...)."""
    found: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        supported = isinstance(mod, _SUPPORTED) if fake_quant else type(mod) in _SUPPORTED
        if supported and getattr(mod, "groups", 1) == 1 and isinstance(mod.weight, torch.Tensor) \
                and mod.weight[0].numel() <= MAX_COLUMNS:
            found[f"{name}.weight" if name else "weight"] = mod
    owners = _owner_counts(model)
    return {n: m for n, m in found.items() if owners.get(id(m.weight), 0) <= 1}


def _owner_counts(model: nn.Module) -> dict[int, int]:
    """``{id(parameter): number of modules holding it}`` (more than 1: a shared, tied weight)."""
    owners: dict[int, int] = {}
    for mod in model.modules():
        for p in mod.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    return owners


def hessian_tables(model: nn.Module, *, fake_quant: bool = False) -> dict[str, nn.Embedding]:
    """``{weight name: module}`` of the embedding tables data-aware rounding handles: ``nn.Embedding`` with a
    float weight of at most ``MAX_COLUMNS`` columns that no other module shares (a table tied to an output
    layer keeps plain rounding, like every shared weight), without ``max_norm`` (its forward renormalizes
    rows in place) and without ``scale_grad_by_freq`` (its gradient is divided by each token's count in the
    batch, so the probes would not give the Gauss–Newton matrix). Tables left out are logged with the reason.
    Subclasses count (a scaled word embedding reads its rows the same way; the probes see its weight's own
    gradient), except the fake-quant ``QEmbedding`` unless ``fake_quant``."""
    owners = _owner_counts(model)
    found: dict[str, nn.Embedding] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Embedding) or (isinstance(mod, _QuantParams) and not fake_quant):
            continue
        wname = f"{name}.weight" if name else "weight"
        w = mod.weight
        reason = None
        if not isinstance(w, torch.Tensor) or not w.is_floating_point() or w.dim() != 2:
            reason = "its weight is not a float matrix"
        elif owners.get(id(w), 0) > 1:
            reason = "its weight is shared with another module (tied)"
        elif mod.max_norm is not None:
            reason = "max_norm renormalizes its rows during the forward"
        elif mod.scale_grad_by_freq:
            reason = "scale_grad_by_freq divides its gradient by the tokens' counts (no Gauss–Newton matrix)"
        elif w.shape[1] > MAX_COLUMNS:
            reason = f"more than {MAX_COLUMNS} columns"
        if reason is not None:
            log.info("embedding table %s keeps plain rounding: %s", wname, reason)
            continue
        found[wname] = mod
    return found


def collect_table_hessians(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any], *,
                           probes: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """``{weight name: M}`` (float64, ``[d, d]``, per probe pass) of the tables :func:`hessian_tables` lists
    that the batches look up: the row Hessians of the output error from ``probes`` random output directions
    per batch (one forward and ``probes`` backward passes per batch). A forward without gradient (or not
    returning a float tensor) gives ``{}``, with a logged reason: the tables then keep plain rounding."""
    return probe_tables(model, batches, forward, probes=probes, seed=seed).tables


def probe_tables(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any],
                 diagonal: Iterable[str] = (), *, tables: bool = True, probes: int = 4, seed: int = 0,
                 strict: bool = False) -> ProbeStats:
    """One probe pass (:func:`~nncodec.quant.output_probes.gauss_newton_probes`, one forward and ``probes``
    backward passes per batch) for the row Hessians of the tables :func:`hessian_tables` lists (``tables``)
    and the diagonal statistics of the parameters ``diagonal`` (the Fisher importances), each table's rows
    looked up logged. ``strict``: a forward without gradient is a :class:`ConfigError` (what the Fisher
    importances need); otherwise nothing is gathered, with a logged reason."""
    names = hessian_tables(model) if tables else {}
    stats = gauss_newton_probes(model, batches, forward, diagonal, names, probes=probes, seed=seed, strict=strict)
    for name, seen in stats.rows_seen.items():
        log.info("embedding table %s: row Hessian from %d of %d rows looked up", name, int(seen.sum()), seen.size)
    return stats


def _rows(mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of the matrix its (flattened) weight multiplies."""
    if isinstance(mod, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(mod, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dil, pad, stride = (1, mod.kernel_size[0]), (1, mod.dilation[0]), (0, mod.padding[0]), (1, mod.stride[0])
    else:
        kernel, dil, pad, stride = mod.kernel_size, mod.dilation, mod.padding, mod.stride
    if isinstance(pad, str):
        raise ConfigError(f"data-aware rounding does not handle padding={pad!r}")
    cols = torch.nn.functional.unfold(x, kernel, dilation=dil, padding=pad, stride=stride)  # [N, C*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any],
                     names: Iterable[str] | None = None, *, fake_quant: bool = False) -> dict[str, torch.Tensor]:
    """``{weight name: H}`` (float64, ``X^T X / rows``) of the supported layers, from one pass over ``batches``
    with forward pre-hooks. Layers that saw no input are left out. ``fake_quant``: see :func:`hessian_layers`
    (the inputs are then the fake-quant model's, quantized activations included)."""
    layers = hessian_layers(model, fake_quant=fake_quant)
    if names is not None:
        wanted = set(names)
        layers = {n: m for n, m in layers.items() if n in wanted}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, mod in layers.items():
        def pre(module: nn.Module, args: tuple, name: str = name) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                return
            rows = _rows(module, args[0].detach()).to(torch.float64)
            h = rows.T @ rows
            sums[name] = sums[name] + h if name in sums else h
            counts[name] = counts.get(name, 0) + rows.shape[0]
        hooks.append(mod.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / counts[n] for n in sums if counts[n] > 0}


def _step_matrix(step: "float | np.ndarray", shape: tuple[int, ...]) -> np.ndarray:
    """``step`` as a ``[out, in]`` float64 array for a weight of ``shape``; a 1-d ``step`` of ``shape[0]``
    values is one per output row."""
    st = np.asarray(step, dtype=np.float64)
    if st.ndim == 1 and len(shape) > 1:
        st = st.reshape((-1,) + (1,) * (len(shape) - 1))
    try:
        full = np.broadcast_to(st, shape)
    except ValueError:
        raise ConfigError(f"step of shape {st.shape} does not fit a weight of shape {shape}") from None
    return np.ascontiguousarray(full.reshape(shape[0], -1))


def inverse_factor(hessian: torch.Tensor, damp: float = 0.01) -> np.ndarray | None:
    """``U``, the upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float64), with zero diagonal
    entries (inputs never active) set to 1 first; None when ``H`` is not positive definite even damped.
    It depends on the Hessian only, so one factor serves every step and λ.

    Computed in torch on one thread (Cholesky, inverse from the factor, Cholesky): the result does not
    depend on the machine's core count, and a busy machine does not stall it (a multi-threaded BLAS
    spinning on shared cores took 7x longer)."""
    if not 0 <= damp < 10:
        raise ConfigError(f"damp must be in [0, 10), got {damp!r}")
    h = hessian.to(torch.float64).clone()
    diag = torch.diagonal(h)  # a view: writes go into h
    diag[diag == 0] = 1.0
    diag += damp * float(diag.mean())
    with _one_thread():
        lower, info = torch.linalg.cholesky_ex(h)
        if int(info):
            return None
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) or not bool(torch.isfinite(upper).all()):
        return None
    return upper.numpy()


class _ThreadLimit:
    """Holders of :func:`_one_thread` (``torch.set_num_threads`` is process-wide): the first saves the count,
    the last restores it."""

    lock = threading.Lock()
    holders = 0
    original = 1


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 for the block; the count from before the first of concurrent blocks
    (other threads) is restored when the last one ends."""
    with _ThreadLimit.lock:
        if _ThreadLimit.holders == 0:
            _ThreadLimit.original = torch.get_num_threads()
        _ThreadLimit.holders += 1
        if torch.get_num_threads() != 1:  # per calling thread where torch keeps the count per thread (OpenMP)
            torch.set_num_threads(1)
    try:
        yield
    finally:
        with _ThreadLimit.lock:
            _ThreadLimit.holders -= 1
            if _ThreadLimit.holders == 0 and _ThreadLimit.original != 1:
                torch.set_num_threads(_ThreadLimit.original)


def gptq_codes(weight: np.ndarray, hessian: torch.Tensor | None, step: "float | np.ndarray", *, qmin: int,
               qmax: int, lam: float = 0.0, rate: CodeRate | None = None, damp: float = 0.01, block: int = 128,
               factor: np.ndarray | None = None) -> np.ndarray:
    """Codes (int64, ``weight``'s shape) on the grid ``code * step`` that minimize the layer output error.

    ``weight``: ``[out, in...]`` (flattened to ``[out, in]`` matching ``hessian``, ``[in, in]``); ``step``: a
    scalar, one per output row (shape ``[out]``), or an array broadcastable to ``weight``'s shape (e.g. one per
    input channel, ``[1, in, 1...]``). ``damp`` adds that fraction of the mean diagonal to ``H`` (numerical
    stability); ``factor``: :func:`inverse_factor` computed before (then ``hessian`` is not used);
    ``lam`` and ``rate`` make each rounding rate-aware.
    """
    lam = check_lambda(lam)
    shape = weight.shape
    w = np.array(weight, dtype=np.float64).reshape(shape[0], -1)
    n = w.shape[1]
    if (factor.shape if factor is not None else tuple(hessian.shape)) != (n, n):  # type: ignore[union-attr]
        raise ConfigError(f"Hessian does not match a weight with {n} inputs")
    s = _step_matrix(step, shape)
    u = inverse_factor(hessian, damp) if factor is None else factor
    if u is None:  # not positive definite even damped: plain rounding
        log.warning("Hessian not positive definite; plain rounding for this layer")
        return choose(w / s, rate, lam, qmin, qmax).reshape(shape)
    # the column loop runs in numpy: thousands of small vector operations, cheapest without thread hand-offs
    codes = np.empty((shape[0], n), dtype=np.int64)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1 = w[:, i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, s_col = w1[:, i], s[:, i1 + i]
            q = choose(col / s_col, rate, lam, qmin, qmax)
            codes[:, i1 + i] = q
            e = (col - q * s_col) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]
    return codes.reshape(shape)


def _kernel_grid(quantizer: Any, weight: torch.Tensor) -> tuple[np.ndarray, int, int] | None:
    """(step, one per output row or a scalar; qmin; qmax) of a ``quantized_bits`` kernel quantizer's grid on
    ``weight``, or None for other quantizers (and 1-bit codes)."""
    from .fixed_point import QuantizedBits

    if not isinstance(quantizer, QuantizedBits) or quantizer.u == 0:
        return None
    if quantizer.alpha == "auto":  # per output row: scale = 2 max|w| / levels, codes in [-half, half]
        _, scale = quantizer._auto(weight.detach())
        half = 2 ** (quantizer.bits - 1) - 1
        return scale.reshape(-1).double().numpy(), -half, half
    if quantizer.alpha is not None:
        return None  # auto_po2 refits its scale to the codes: no fixed grid
    lo, hi = quantizer._range()
    return np.asarray(2.0 ** (quantizer.integer - quantizer.u)), lo, hi


@torch.no_grad()
def initialize_kernels(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any], *,
                       damp: float = 0.01, none_ok: bool = False) -> list[str]:
    """Data-aware initial kernels for a fake-quantized model (``quantize_model``): each ``QLinear`` /
    ``QConv1d`` / ``QConv2d`` whose kernel quantizer is ``quantized_bits`` (one step, or ``alpha='auto'``
    steps per output channel) gets as float weight its GPTQ rounding on the grid its quantizer would use,
    from the Hessians of its inputs in ``model`` on ``batches`` (``forward(model, batch)``), taken with every
    kernel still float and the activation quantizers on: the upstream kernels become data-aware too, so
    their nearest-code errors are not the inputs to fit (on all-MiniLM-L6-v2, 4-bit kernels fitted to inputs
    carrying them scored a mean cosine of 0.985, 0.992 otherwise). Quantization-aware training then starts
    from these values instead of the nearest codes of the float weights. Pruned layers (a weight mask) and
    other quantizers keep their weights. Returns the weight names changed; when no layer qualifies,
    ConfigError (``none_ok``: an empty list, e.g. for a search candidate whose plan chose only other kernel
    quantizers)."""
    candidates = {n: m for n, m in hessian_layers(model, fake_quant=True).items()
                  if getattr(m, "weight_mask", None) is None and
                  _kernel_grid(getattr(m, "kernel_quantizer", None), m.weight) is not None}
    if not candidates:
        if none_ok:
            return []
        raise ConfigError("data-aware initial kernels: no Linear / Conv layer has a quantized_bits kernel quantizer "
                          "(quantize the model with a plan first)")
    quantizers = {n: m.kernel_quantizer for n, m in model.named_modules() if isinstance(m, _QuantWeights)}
    modules = dict(model.named_modules())
    try:
        for n in quantizers:
            modules[n].kernel_quantizer = None
        hessians = collect_hessians(model, batches, forward, names=candidates, fake_quant=True)
    finally:
        for n, q in quantizers.items():
            modules[n].kernel_quantizer = q
    changed = []
    for name, mod in candidates.items():
        if name not in hessians:
            continue
        step, qmin, qmax = _kernel_grid(mod.kernel_quantizer, mod.weight)  # type: ignore[misc]
        w = mod.weight.detach()
        codes = gptq_codes(w.double().numpy(), hessians[name], step, qmin=qmin, qmax=qmax, damp=damp)
        if mod.kernel_quantizer.alpha == "auto":  # type: ignore[union-attr]
            # the quantizer derives a row's scale from its largest value: a row whose codes no longer reach
            # qmax would move to a finer grid when quantized again; it keeps its nearest-code rounding
            short = np.abs(codes.reshape(len(codes), -1)).max(1) < qmax
            if short.any():
                plain, _ = mod.kernel_quantizer._auto(w)  # type: ignore[union-attr]
                codes[short] = plain.numpy().astype(np.int64)[short]
        values = torch.from_numpy(codes * _step_matrix(step, tuple(w.shape)).reshape(w.shape))
        mod.weight.copy_(values.to(w.dtype))
        changed.append(name)
    log.info("data-aware initial kernels: %d of %d layers", len(changed), len(candidates))
    return changed

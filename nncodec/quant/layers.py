"""Fake-quant torch modules and model surgery: apply a :class:`Plan` to a model.

``QConv1d``, ``QConv2d``, ``QLinear``, ``QEmbedding`` and the recurrent ``QGRU``, ``QLSTM``, ``QRNN`` are the
torch layers with a kernel, bias and optional output quantizer (recurrent layers: the kernel quantizer
applies to every ``weight_*`` matrix, the bias quantizer to every ``bias_*``); ``QActivation`` quantizes
an activation's output; ``QBatchNorm1d`` / ``QBatchNorm2d`` store a batch norm folded into a quantized
per-channel scale and shift. Any other module the plan gives an ``activation`` (a norm, or a block whose
output is a residual sum) gets an output quantizer in place, keeping its parameter names. In training mode quantizers use the
straight-through estimator (and sample, where stochastic); in eval mode the forward computes with
exactly the quantized values. An optional ``weight_mask`` buffer (from pruning) is applied before the
kernel quantizer and again after it, so pruned weights are zero whatever the scheme.
"""

from __future__ import annotations

import copy
import functools
import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from . import binary_ternary, fixed_point, floating, power_of_two  # noqa: F401  (registers the quantizers)
from ..errors import ConfigError
from .base import Quantizer, get_quantizer
from .plan import LayerPlan, Plan

__all__ = ["QConv1d", "QConv2d", "QLinear", "QEmbedding", "QGRU", "QLSTM", "QRNN", "QBatchNorm1d", "QBatchNorm2d",
           "QActivation", "quantize_model", "quantized_layers", "ACTIVATION_TYPES", "output_quantizer_of",
           "fold_batch_norm", "read_without_call"]

log = logging.getLogger(__name__)

ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Tanh, nn.Softmax, nn.GELU, nn.LeakyReLU, nn.Hardtanh,
                    nn.SiLU, nn.Identity)


class _QuantParams:
    """Mixin: quantized parameters (``quantized_tensors``) and an optional output quantizer."""

    kernel_quantizer: Quantizer | None
    bias_quantizer: Quantizer | None
    output_quantizer: Quantizer | None

    def __init__(self, *args: Any, kernel_quantizer: Any = None, bias_quantizer: Any = None,
                 output_quantizer: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._init_quant(kernel_quantizer, bias_quantizer, output_quantizer)

    def _init_quant(self, kernel: Any, bias: Any, output: Any) -> None:
        self.kernel_quantizer = get_quantizer(kernel)
        self.bias_quantizer = get_quantizer(bias)
        self.output_quantizer = get_quantizer(output)

    def quantized_tensors(self) -> list[tuple[str, Quantizer, torch.Tensor, torch.Tensor | None]]:
        """``(parameter name, quantizer, value before quantizing, mask)`` of every quantized parameter."""
        raise NotImplementedError

    def tensor_quantizers(self) -> dict[str, Quantizer]:
        """Parameter name -> quantizer of every quantized parameter (those of :meth:`quantized_tensors`,
        without computing their values)."""
        return {p: q for p, q, _, _ in self.quantized_tensors() if q is not None}

    def _out(self, y: Any) -> Any:
        return _quantize_output(self.output_quantizer, y, self.training)  # type: ignore[attr-defined]

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return f"{base}, kernel={self.kernel_quantizer}, bias={self.bias_quantizer}, output={self.output_quantizer}"


class _QuantWeights(_QuantParams):
    """Mixin: quantized weight and bias, optional mask, optional output quantizer (conv and linear)."""

    def masked_weight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        mask = getattr(self, "weight_mask", None)
        return w * mask if mask is not None else w

    def quantized_weight(self) -> torch.Tensor:
        """Quantized masked weight; the mask is applied again after quantizing, so pruned weights are zero
        even for schemes without a zero (binary, QKeras po2)."""
        w = self.masked_weight()
        q = self.kernel_quantizer
        if q is None:
            return w
        wq = q(w, self.training)  # type: ignore[attr-defined]
        mask = getattr(self, "weight_mask", None)
        return wq * mask if mask is not None else wq

    def quantized_bias(self) -> torch.Tensor | None:
        b = self.bias  # type: ignore[attr-defined]
        q = self.bias_quantizer
        return q(b, self.training) if (q is not None and b is not None) else b  # type: ignore[attr-defined]

    def quantized_tensors(self) -> list[tuple[str, Quantizer, torch.Tensor, torch.Tensor | None]]:
        out = []
        if self.kernel_quantizer is not None:
            out.append(("weight", self.kernel_quantizer, self.masked_weight(), getattr(self, "weight_mask", None)))
        b = getattr(self, "bias", None)
        if self.bias_quantizer is not None and b is not None:
            out.append(("bias", self.bias_quantizer, b, None))
        return out

    def tensor_quantizers(self) -> dict[str, Quantizer]:
        out = {"weight": self.kernel_quantizer} if self.kernel_quantizer is not None else {}
        if self.bias_quantizer is not None and getattr(self, "bias", None) is not None:
            out["bias"] = self.bias_quantizer
        return out


class _QuantConv(_QuantWeights):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self._conv_forward(x, self.quantized_weight(), self.quantized_bias()))  # type: ignore[attr-defined]


class QConv1d(_QuantConv, nn.Conv1d):
    """``nn.Conv1d`` with kernel, bias and output quantizers."""


class QConv2d(_QuantConv, nn.Conv2d):
    """``nn.Conv2d`` with kernel, bias and output quantizers."""


def _requantize_input(module: "QLinear", args: tuple) -> tuple | None:
    """Forward pre-hook of a :class:`QLinear` with per-channel input steps: its input becomes
    ``input_quantizer(x / input_scale)`` before the layer (and before any later pre-hook, e.g. the layer-input
    statistics of data-aware rounding) sees it."""
    scale = module._buffers.get("input_scale")
    if scale is None or module.skip_input_requantization or not args or not isinstance(args[0], torch.Tensor):
        return None
    x = args[0] / scale
    q = module.input_quantizer
    return (q(x, module.training) if q is not None else x, *args[1:])


def has_input_steps(module: nn.Module) -> bool:
    """Whether ``module`` holds per-channel input steps (a :class:`QLinear` whose weight is stored folded)."""
    return "input_scale" in getattr(module, "_buffers", {})


class QLinear(_QuantWeights, nn.Linear):
    """``nn.Linear`` with kernel, bias and output quantizers, and optionally an input quantizer with one step per
    input channel (:meth:`set_input_quantizer`): ``y = q_k(W') q_in(x / s) + b`` with ``W' = W diag(s)`` the
    stored (folded) weight and ``s`` the ``input_scale`` buffer (the weight's dtype, one per input feature). In hardware
    ``s`` is applied where the input is requantized (one multiply per element, the step of each channel), and
    the MACs multiply ``q_in``'s integer codes by the folded kernel's: the same integer MACs as a per-tensor
    input step."""

    input_quantizer: Quantizer | None = None
    #: switched on while the energy model exports the graph (it prices the requantization itself)
    skip_input_requantization: bool = False

    def set_input_quantizer(self, spec: Any) -> None:
        """Requantize this layer's input with ``spec`` (a per-tensor quantizer of ``x / input_scale``; None:
        none). The first call adds the ``input_scale`` buffer (ones: the weight is not folded yet; see
        :func:`~nncodec.quant.input_steps.fit_input_steps`) and the pre-hook that applies it. Removing the
        quantizer keeps the division by ``input_scale`` (the weight stays folded)."""
        self.input_quantizer = get_quantizer(spec)
        if self.input_quantizer is not None and "input_scale" not in self._buffers:
            self.register_buffer("input_scale", torch.ones(self.in_features, dtype=self.weight.dtype,
                                                           device=self.weight.device))
        if has_input_steps(self) and not any(h is _requantize_input
                                                      for h in self._forward_pre_hooks.values()):
            self.register_forward_pre_hook(_requantize_input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(nn.functional.linear(x, self.quantized_weight(), self.quantized_bias()))

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return f"{base}, input={self.input_quantizer}" if has_input_steps(self) else base


class QEmbedding(_QuantParams, nn.Embedding):
    """``nn.Embedding`` with a kernel (table) quantizer and an optional output quantizer."""

    def quantized_tensors(self) -> list[tuple[str, Quantizer, torch.Tensor, torch.Tensor | None]]:
        return [("weight", self.kernel_quantizer, self.weight, None)] if self.kernel_quantizer is not None else []

    def quantized_weight(self) -> torch.Tensor:
        """The table as the forward uses it."""
        q = self.kernel_quantizer
        return q(self.weight, self.training) if q is not None else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(nn.functional.embedding(x, self.quantized_weight(), self.padding_idx, self.max_norm,
                                                 self.norm_type, self.scale_grad_by_freq, self.sparse))


class _QuantRecurrent(_QuantParams):
    """Recurrent layer whose ``weight_*`` matrices go through the kernel quantizer, ``bias_*`` through the bias
    quantizer (per matrix); the output quantizer applies to the output sequence."""

    def quantized_tensors(self) -> list[tuple[str, Quantizer, torch.Tensor, torch.Tensor | None]]:
        out = []
        for name in self._flat_weights_names:  # type: ignore[attr-defined]
            q = self.kernel_quantizer if name.startswith("weight") else self.bias_quantizer
            if q is not None:
                out.append((name, q, getattr(self, name), None))
        return out

    _calling = False

    def forward(self, x: Any, hx: Any = None) -> Any:  # type: ignore[override]
        if self._calling:
            return super().forward(x, hx)  # type: ignore[misc]
        coded = {name: q(value, self.training) for name, q, value, _ in self.quantized_tensors()}
        self._calling = True
        try:  # the parameters swapped for their quantized values for this call (export-friendly)
            out = torch.func.functional_call(self, coded, (x, hx), strict=False)
        finally:
            self._calling = False
        return self._out(out)


class QGRU(_QuantRecurrent, nn.GRU):
    """``nn.GRU`` with kernel, bias and output quantizers."""


class QLSTM(_QuantRecurrent, nn.LSTM):
    """``nn.LSTM`` with kernel, bias and output quantizers."""


class QRNN(_QuantRecurrent, nn.RNN):
    """``nn.RNN`` with kernel, bias and output quantizers."""


@functools.lru_cache(maxsize=None)
def unit_variance(eps: float) -> float:
    """The float32 ``v`` nearest ``1 - eps`` with ``float32(v + eps) == 1``: a stored running variance that makes
    a batch norm's ``1 / sqrt(var + eps)`` exactly 1, so that it computes ``x * weight + bias``."""
    one, e = np.float32(1.0), np.float32(eps)
    v = np.float32(1.0 - eps)
    for _ in range(64):
        total = np.float32(v + e)
        if total == one:
            return float(v)
        v = np.nextafter(v, one if total < one else -one, dtype=np.float32)
    raise ConfigError(f"no float32 running variance makes var + eps exactly 1 for eps={eps!r}")


def fold_batch_norm(bn: nn.modules.batchnorm._BatchNorm, mean: torch.Tensor | None = None,
                    var: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch norm's per-channel ``(scale, shift)`` with ``y = x * scale + shift``: ``scale = weight /
    sqrt(var + eps)``, ``shift = bias - mean * scale``, from its running statistics or the given ones."""
    mean = bn.running_mean if mean is None else mean
    var = bn.running_var if var is None else var
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    return scale, bn.bias - mean * scale


class _QuantBatchNorm(_QuantParams):
    """A batch norm stored folded: ``y = x * q_k(scale) + q_b(shift)`` with ``scale = weight / sqrt(var + eps)``
    and ``shift = bias - mean * scale`` (per channel; the kernel quantizer codes the scale, the bias quantizer
    the shift; one of them missing: that one stays float32). Training: the batch's statistics (the running
    ones are updated as a batch norm does) and straight-through quantizers; eval: the running statistics.
    The bitstream stores the coded scale as ``weight``, the coded shift as ``bias``, a zero running mean and
    a running variance with ``var + eps == 1`` (:func:`unit_variance`), so that a plain batch norm loading it
    computes exactly what this layer computes in eval mode. A norm, not a weighted layer, for the energy
    model (it never multiplies activations by weights)."""

    def _init_quant(self, kernel: Any, bias: Any, output: Any) -> None:
        super()._init_quant(kernel, bias, None)
        if output is not None or isinstance(self, _OutputQuant):  # the output goes through the mixin, as for norms
            _add_output_quantizer(self, output)
        if (self.kernel_quantizer is None) != (self.bias_quantizer is None):
            fp32 = get_quantizer("fp32")
            self.kernel_quantizer = self.kernel_quantizer or fp32
            self.bias_quantizer = self.bias_quantizer or fp32
        if not self.affine or not self.track_running_stats:  # type: ignore[attr-defined]
            raise ConfigError("a quantized batch norm needs affine=True and track_running_stats=True")

    def folded(self, mean: torch.Tensor | None = None, var: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) before quantizing, from the running statistics or the given ones."""
        return fold_batch_norm(self, mean, var)  # type: ignore[arg-type]

    def quantized_tensors(self) -> list[tuple[str, Quantizer, torch.Tensor, torch.Tensor | None]]:
        if self.kernel_quantizer is None:
            return []
        scale, shift = self.folded()
        return [("weight", self.kernel_quantizer, scale, None), ("bias", self.bias_quantizer, shift, None)]

    def tensor_quantizers(self) -> dict[str, Quantizer]:
        if self.kernel_quantizer is None:
            return {}
        return {p: q for p, q in (("weight", self.kernel_quantizer), ("bias", self.bias_quantizer)) if q is not None}

    def stored_buffers(self) -> dict[str, torch.Tensor]:
        """The running statistics the bitstream stores with the folded scale and shift (empty: not folded)."""
        if self.kernel_quantizer is None:
            return {}
        mean = self.running_mean  # type: ignore[attr-defined]
        return {"running_mean": torch.zeros_like(mean),
                "running_var": torch.full_like(mean, unit_variance(self.eps))}  # type: ignore[attr-defined]

    def store_folded_(self) -> None:
        """Replace the parameters and running statistics by their stored values and drop the weight
        quantizers: the module then computes as a plain batch norm exactly what it computed in eval mode."""
        if self.kernel_quantizer is None:
            return
        with torch.no_grad():
            scale, shift = self.folded()
            q_scale, q_shift = self.kernel_quantizer(scale), self.bias_quantizer(shift)  # type: ignore[misc]
            self.weight.copy_(q_scale)  # type: ignore[attr-defined]
            self.bias.copy_(q_shift)  # type: ignore[attr-defined]
            for name, value in self.stored_buffers().items():
                getattr(self, name).copy_(value)
        self.kernel_quantizer = self.bias_quantizer = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if self.kernel_quantizer is None:
            return super().forward(x)  # type: ignore[misc]
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            with torch.no_grad():
                self.num_batches_tracked += 1  # type: ignore[attr-defined]
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)  # type: ignore[attr-defined]
                n = x.numel() / max(x.shape[1], 1)
                self.running_mean.mul_(1 - m).add_(m * mean)  # type: ignore[attr-defined]
                self.running_var.mul_(1 - m).add_(m * var * n / max(n - 1, 1))  # type: ignore[attr-defined]
            scale, shift = self.folded(mean, var)
        else:
            scale, shift = self.folded()
        q_scale = self.kernel_quantizer(scale, self.training)
        q_shift = self.bias_quantizer(shift, self.training)  # type: ignore[misc]
        if self.training:
            return x * q_scale.reshape(shape) + q_shift.reshape(shape)
        # eval: the batch-norm operator on the stored values (what a plain batch norm loading the stream runs)
        stored = self.stored_buffers()
        return nn.functional.batch_norm(x, stored["running_mean"], stored["running_var"], q_scale, q_shift, False,
                                        0.0, self.eps)  # type: ignore[attr-defined]


class QBatchNorm1d(_QuantBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` stored folded: quantized per-channel scale (kernel) and shift (bias)."""


class QBatchNorm2d(_QuantBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` stored folded: quantized per-channel scale (kernel) and shift (bias)."""


def _quantize_output(q: Quantizer | None, y: Any, training: bool) -> Any:
    """Quantize a module output: a tensor, or the first tensor of a tuple (recurrent and attention outputs)."""
    if q is None:
        return y
    if isinstance(y, torch.Tensor):
        return q(y, training)
    if isinstance(y, tuple) and y and isinstance(y[0], torch.Tensor):
        return (q(y[0], training), *y[1:])
    raise TypeError(f"cannot quantize a module output of type {type(y).__name__}")


class _OutputQuant:
    """Mixin put in front of any module's class: its output goes through ``output_quantizer``."""

    output_quantizer: Quantizer | None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return _quantize_output(self.output_quantizer, super().forward(*args, **kwargs),  # type: ignore[misc]
                                self.training)  # type: ignore[attr-defined]


_OUTPUT_CLASSES: dict[type, type] = {}


def _add_output_quantizer(module: nn.Module, spec: Any) -> None:
    """Give ``module`` an output quantizer in place (its class gains the mixin; names and weights unchanged)."""
    if not isinstance(module, _OutputQuant):
        cls = type(module)
        if cls not in _OUTPUT_CLASSES:
            _OUTPUT_CLASSES[cls] = type(f"QOut{cls.__name__}", (_OutputQuant, cls), {"__module__": cls.__module__})
        module.__class__ = _OUTPUT_CLASSES[cls]
    module.output_quantizer = get_quantizer(spec)


def output_quantizer_of(module: nn.Module) -> Quantizer | None:
    """The quantizer applied to ``module``'s output, if any (fake-quant layers, activations, any module)."""
    if isinstance(module, QActivation):
        return module.quantizer
    return getattr(module, "output_quantizer", None)


class QActivation(nn.Module):
    """``quantizer(base(x))``; with no ``base``, the quantizer alone (``quantized_relu`` includes the relu)."""

    def __init__(self, quantizer: Any, base: nn.Module | None = None):
        super().__init__()
        self.quantizer = get_quantizer(quantizer)
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.base is not None:
            x = self.base(x)
        return self.quantizer(x, self.training) if self.quantizer is not None else x

    def extra_repr(self) -> str:
        return f"quantizer={self.quantizer}"


_WRAPPERS: dict[type[nn.Module], type[nn.Module]] = {nn.Conv1d: QConv1d, nn.Conv2d: QConv2d, nn.Linear: QLinear}
#: layers that become their fake-quant class in place (parameters, buffers and names kept)
_IN_PLACE: dict[type[nn.Module], type[nn.Module]] = {nn.Embedding: QEmbedding, nn.GRU: QGRU, nn.LSTM: QLSTM,
                                                     nn.RNN: QRNN, nn.BatchNorm1d: QBatchNorm1d,
                                                     nn.BatchNorm2d: QBatchNorm2d}


def _becomes_in_place(module: nn.Module, lp: LayerPlan, plan: Plan) -> bool:
    """Whether ``module`` becomes its :data:`_IN_PLACE` fake-quant class: an embedding or recurrent layer for
    any quantizer; a batch norm only for a kernel / bias from an entry that names it (a plan's default is for
    layers; a norm with only an ``activation`` gets an output quantizer instead)."""
    if type(module) not in _IN_PLACE:
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return lp is not plan.default and bool(lp.kernel or lp.bias)
    return bool(lp.kernel or lp.bias or lp.activation)


def _wrap(module: nn.Module, lp: LayerPlan) -> nn.Module:
    """The fake-quant layer of ``module`` (a conv / linear layer or a subclass of one, such as attention's
    output projection); an output quantizer the module already has is kept unless ``lp`` names one."""
    qcls = next(_WRAPPERS[c] for c in type(module).__mro__ if c in _WRAPPERS)
    activation = lp.activation if lp.activation is not None else getattr(module, "output_quantizer", None)
    if isinstance(module, nn.Linear):
        new = qcls(module.in_features, module.out_features, bias=module.bias is not None,
                   kernel_quantizer=lp.kernel, bias_quantizer=lp.bias, output_quantizer=activation)
    else:
        new = qcls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                   padding=module.padding, dilation=module.dilation, groups=module.groups,
                   bias=module.bias is not None, padding_mode=module.padding_mode,
                   kernel_quantizer=lp.kernel, bias_quantizer=lp.bias, output_quantizer=activation)
    new.load_state_dict(module.state_dict(), strict=False)
    for pname, param in module.named_parameters(recurse=False):  # the very tensors: a tied weight stays tied
        setattr(new, pname, param)
    for name, buf in module.named_buffers(recurse=False):
        new.register_buffer(name, buf.clone())
    if lp.input is not None:
        new.set_input_quantizer(lp.input)  # type: ignore[operator]
    new.train(module.training)
    return new


def _without_fused_paths(model: nn.Module) -> None:
    """Turn off ``nn.TransformerEncoderLayer``'s fused inference path in layers holding fake quantizers.

    In eval mode under ``torch.no_grad`` that path reads ``linear1`` / ``linear2`` / the norms' weights
    directly, so their quantizers and output quantizers never run: a candidate would be scored as the float
    model. The layer takes its regular path when ``activation_relu_or_gelu`` is false (the attribute only
    selects the fused path; the activation itself is ``layer.activation``).

    An enclosing ``nn.TransformerEncoder`` with such a layer also stops converting padded input into a
    NestedTensor (``use_nested_tensor``, taken in eval mode with a ``src_key_padding_mask``): the fake
    quantizers' elementwise ops have no NestedTensor kernels, and that input skips the padding positions the
    regular path computes."""
    quantized: set[int] = set()
    for name, layer in model.named_modules():
        if not isinstance(layer, nn.TransformerEncoderLayer):
            continue
        if any(isinstance(m, (_QuantParams, QActivation)) or output_quantizer_of(m) is not None
               for m in layer.modules() if m is not layer):
            quantized.add(id(layer))
            if getattr(layer, "activation_relu_or_gelu", 0):
                log.debug("%s: fused TransformerEncoderLayer path off (it would skip the fake quantizers)",
                          name or "model")
                layer.activation_relu_or_gelu = 0
    for name, encoder in model.named_modules():
        if (isinstance(encoder, nn.TransformerEncoder) and getattr(encoder, "use_nested_tensor", False)
                and any(id(layer) in quantized for layer in encoder.layers)):
            log.debug("%s: TransformerEncoder nested-tensor path off (fake quantizers run on dense tensors)",
                      name or "model")
            encoder.use_nested_tensor = False


def quantize_model(model: nn.Module, plan: "Plan | dict | str | None", *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with conv/linear layers and activations replaced by fake-quant modules per ``plan``.

    Conv1d/Conv2d/Linear, Embedding and GRU/LSTM/RNN take ``kernel``, ``bias`` and (optional)
    ``activation`` (their output); Linear layers also ``input`` (per-channel input steps, see
    :class:`QLinear`; any other layer given one: ConfigError); BatchNorm1d/2d take ``kernel`` / ``bias`` for their folded per-channel
    scale / shift (:class:`QBatchNorm2d`) and ``activation``; activation modules take ``activation``; any other module named exactly
    (a norm, a block ending in a residual sum) takes ``activation`` as an output quantizer, and a
    ``kernel`` / ``bias`` for it is an error. Layers the plan does not name stay as they are. Weights are
    kept; the model is copied unless ``inplace``.
    """
    plan = Plan.coerce(plan)
    model = model if inplace else copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if not name:
            continue
        lp = plan.resolve(name)
        if lp is None:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if lp.input is not None and not isinstance(module, nn.Linear) and (name in plan.layers or layer_like(module)):
            raise ConfigError(f"plan gives an input quantizer to {name!r} ({type(module).__name__}): per-channel "
                              "input steps fold into the columns of a Linear layer's weight, Linear layers only")
        if type(module) in _WRAPPERS and (lp.kernel or lp.bias or lp.activation or lp.input):
            setattr(parent, child, _wrap(module, lp))
        elif isinstance(module, _QuantParams):
            module._init_quant(lp.kernel, lp.bias, lp.activation)
            if isinstance(module, QLinear) and (lp.input is not None or has_input_steps(module)):
                module.set_input_quantizer(lp.input)  # a plan without 'input' removes the quantizer (steps stay)
        elif isinstance(module, ACTIVATION_TYPES) and lp.activation:
            setattr(parent, child, QActivation(lp.activation, base=module))
        elif isinstance(module, QActivation) and lp.activation:
            module.quantizer = get_quantizer(lp.activation)
        elif _becomes_in_place(module, lp, plan):
            module.__class__ = _IN_PLACE[type(module)]
            module._init_quant(lp.kernel, lp.bias, lp.activation)  # type: ignore[operator]
        elif name in plan.layers and (lp.kernel or lp.bias):
            raise ConfigError(f"plan gives a kernel / bias quantizer to {name!r} ({type(module).__name__}), which "
                              "nncodec cannot quantize: conv, linear, embedding, recurrent and batch-norm layers "
                              "only")
        elif name in plan.layers and lp.activation:
            _add_output_quantizer(module, lp.activation)  # named exactly: a norm, a block, any module
    check_tied_quantizers(model)
    _without_fused_paths(model)
    return model


def tied_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Parameters shared by several modules (tied weights, e.g. an embedding and an output projection): one
    list of ``(module name, parameter name)`` per shared tensor, in module order (at least two modules)."""
    users: dict[int, list[tuple[str, str]]] = {}
    for name, module in model.named_modules():  # a module registered twice is one module, not a tie
        for pname, param in module.named_parameters(recurse=False):
            if (name, pname) not in users.setdefault(id(param), []):
                users[id(param)].append((name, pname))
    return [uses for uses in users.values() if len({m for m, _ in uses}) > 1]


def tied_weights(model: nn.Module, ties: list[list[tuple[str, str]]] | None = None) -> dict[str, list[str]]:
    """Module -> the other modules whose ``weight`` is the same tensor, for every module whose ``weight`` is
    shared (the list is empty when the other users hold it under another name). ``ties``: the model's
    :func:`tied_parameters`, when already computed."""
    out: dict[str, list[str]] = {}
    for uses in tied_parameters(model) if ties is None else ties:
        names = [n for n, p in uses if p == "weight"]
        for n in names:
            out[n] = [o for o in names if o != n]
    return out


def check_tied_quantizers(model: nn.Module) -> None:
    """Raise :class:`ConfigError` when modules sharing one parameter quantize it differently (or one of them
    not at all): a tied tensor is one tensor, stored once; its layers need one quantizer, naming both layers.
    Also when a layer whose weight is tied has an input quantizer (its steps would fold into the shared
    tensor)."""
    modules = dict(model.named_modules())
    for uses in tied_parameters(model):
        specs = []
        for name, pname in uses:
            module = modules[name]
            q = module.tensor_quantizers().get(pname) if isinstance(module, _QuantParams) else None
            specs.append(q.spec() if q is not None else None)
        if len(set(specs)) > 1:
            what = ", ".join(f"{n}.{p} ({s or 'unquantized'})" for (n, p), s in zip(uses, specs))
            raise ConfigError(f"tied parameters get different quantizers: {what}; the layers share one tensor, "
                              "stored once: give them the same kernel (or bias) quantizer")
        stepped = [n for n, p in uses if p == "weight" and
                   (getattr(modules[n], "input_quantizer", None) is not None or has_input_steps(modules[n]))]
        if stepped:
            raise ConfigError(f"plan gives an input quantizer to {stepped}, whose weight is tied to "
                              f"{[n for n, _ in uses if n not in stepped]}: per-channel input steps fold into the "
                              "weight's columns, which would rescale the tensor the other layers read; tied layers "
                              "take no 'input'")


def layer_like(module: nn.Module) -> bool:
    """Whether ``module`` is a layer with weights that :func:`quantize_model` handles (conv, linear, embedding,
    recurrent, batch norm)."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear, nn.Embedding, nn.GRU, nn.LSTM, nn.RNN,
                               nn.modules.batchnorm._BatchNorm))


def read_without_call(model: nn.Module) -> set[str]:
    """Names of layers whose weights a parent module reads without calling them (``nn.MultiheadAttention``'s
    ``out_proj``): a fake quantizer or pruning mask installed on them would never act."""
    modules = dict(model.named_modules())
    return {n for p, m in modules.items() if isinstance(m, nn.MultiheadAttention)
            for n in modules if n.startswith(f"{p}.")}


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Names and modules of every fake-quant layer in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (_QuantParams, QActivation, _OutputQuant))}

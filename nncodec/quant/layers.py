"""Fake-quant torch modules and model surgery: apply a :class:`Plan` to a model.

``QConv1d``, ``QConv2d``, ``QLinear``, ``QEmbedding`` and the recurrent ``QGRU``, ``QLSTM``, ``QRNN`` are the
torch layers with a kernel, bias and optional output quantizer (recurrent layers: the kernel quantizer
applies to every ``weight_*`` matrix, the bias quantizer to every ``bias_*``); ``QActivation`` quantizes
an activation's output. Any other module the plan gives an ``activation`` (a norm, or a block whose
output is a residual sum) gets an output quantizer in place, keeping its parameter names. In training mode quantizers use the
straight-through estimator (and sample, where stochastic); in eval mode the forward computes with
exactly the quantized values. An optional ``weight_mask`` buffer (from pruning) is applied before the
kernel quantizer and again after it, so pruned weights are zero whatever the scheme.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from . import binary_ternary, fixed_point, floating, power_of_two  # noqa: F401  (registers the quantizers)
from ..errors import ConfigError
from .base import Quantizer, get_quantizer
from .plan import LayerPlan, Plan

__all__ = ["QConv1d", "QConv2d", "QLinear", "QEmbedding", "QGRU", "QLSTM", "QRNN", "QActivation", "quantize_model",
           "quantized_layers", "ACTIVATION_TYPES", "output_quantizer_of"]

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


class _QuantConv(_QuantWeights):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(self._conv_forward(x, self.quantized_weight(), self.quantized_bias()))  # type: ignore[attr-defined]


class QConv1d(_QuantConv, nn.Conv1d):
    """``nn.Conv1d`` with kernel, bias and output quantizers."""


class QConv2d(_QuantConv, nn.Conv2d):
    """``nn.Conv2d`` with kernel, bias and output quantizers."""


class QLinear(_QuantWeights, nn.Linear):
    """``nn.Linear`` with kernel, bias and output quantizers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(nn.functional.linear(x, self.quantized_weight(), self.quantized_bias()))


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
                                                     nn.RNN: QRNN}


def _wrap(module: nn.Module, lp: LayerPlan) -> nn.Module:
    qcls = _WRAPPERS[type(module)]
    if isinstance(module, nn.Linear):
        new = qcls(module.in_features, module.out_features, bias=module.bias is not None,
                   kernel_quantizer=lp.kernel, bias_quantizer=lp.bias, output_quantizer=lp.activation)
    else:
        new = qcls(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                   padding=module.padding, dilation=module.dilation, groups=module.groups,
                   bias=module.bias is not None, padding_mode=module.padding_mode,
                   kernel_quantizer=lp.kernel, bias_quantizer=lp.bias, output_quantizer=lp.activation)
    new.load_state_dict(module.state_dict(), strict=False)
    for name, buf in module.named_buffers(recurse=False):
        new.register_buffer(name, buf.clone())
    new.train(module.training)
    return new


def quantize_model(model: nn.Module, plan: "Plan | dict | str | None", *, inplace: bool = False) -> nn.Module:
    """Return ``model`` with conv/linear layers and activations replaced by fake-quant modules per ``plan``.

    Conv1d/Conv2d/Linear, Embedding and GRU/LSTM/RNN take ``kernel``, ``bias`` and (optional)
    ``activation`` (their output); activation modules take ``activation``; any other module named exactly
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
        if type(module) in _WRAPPERS and (lp.kernel or lp.bias or lp.activation):
            setattr(parent, child, _wrap(module, lp))
        elif isinstance(module, _QuantParams):
            module._init_quant(lp.kernel, lp.bias, lp.activation)
        elif isinstance(module, ACTIVATION_TYPES) and lp.activation:
            setattr(parent, child, QActivation(lp.activation, base=module))
        elif isinstance(module, QActivation) and lp.activation:
            module.quantizer = get_quantizer(lp.activation)
        elif type(module) in _IN_PLACE and (lp.kernel or lp.bias or lp.activation):
            module.__class__ = _IN_PLACE[type(module)]
            module._init_quant(lp.kernel, lp.bias, lp.activation)  # type: ignore[operator]
        elif name in plan.layers and (lp.kernel or lp.bias):
            raise ConfigError(f"plan gives a kernel / bias quantizer to {name!r} ({type(module).__name__}), which "
                              "nncodec cannot quantize: conv, linear, embedding and recurrent layers only")
        elif name in plan.layers and lp.activation:
            _add_output_quantizer(module, lp.activation)  # named exactly: a norm, a block, any module
    return model


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Names and modules of every fake-quant layer in ``model``."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (_QuantParams, QActivation, _OutputQuant))}

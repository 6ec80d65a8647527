"""Turning a model's fake-quant layers into what the bitstream stores: integer codes and descriptors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bitstream.constants import SCHEME_NAMES
from ..bitstream.descriptor import CodedTensor, QuantDescriptor
from ..dtypes import DType, dtype_by_name
from .base import QuantCodes, Quantizer
from .layers import _QuantParams

__all__ = ["coded_tensor", "quantized_state"]

_SCHEME_IDS = {v: k for k, v in SCHEME_NAMES.items()}
_FLOAT_TENSOR_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
                        torch.float64: "float64"}
_TORCH_CODE_DTYPES = {torch.int8: "int8", torch.int16: "int16", torch.int32: "int32", torch.int64: "int64",
                      torch.uint8: "uint8", torch.float16: "float16", torch.bfloat16: "bfloat16",
                      torch.float32: "float32"}


def _codes_numpy(t: torch.Tensor) -> tuple[np.ndarray, DType]:
    dt = dtype_by_name(_TORCH_CODE_DTYPES[t.dtype])
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), dt
    return t.numpy(), dt


def coded_tensor(qc: QuantCodes, shape: tuple[int, ...], tensor_dtype: str = "float32") -> CodedTensor:
    """A :class:`CodedTensor` (codes + descriptor) from a quantizer's :class:`QuantCodes`."""
    codes, code_dtype = _codes_numpy(qc.codes)
    scale = qc.scale.reshape(-1) if qc.scale.ndim else qc.scale.reshape(1)
    per_channel = qc.scale.ndim == 1 and len(shape) >= 1 and scale.numel() == shape[0] and scale.numel() > 1
    if qc.scheme == "float_cast":
        scales = np.zeros(0, np.float32)
        per_channel = po2 = False
    elif qc.po2_exponent is not None:
        po2 = True
        scales = qc.po2_exponent.reshape(-1).to(torch.int16).numpy().astype("<i2")
        if not per_channel:
            scales = scales[:1]
    else:
        po2 = False
        scales = scale.to(torch.float32).numpy().astype("<f4")
        if not per_channel:
            scales = scales[:1]
    s, e, m = qc.bit_tuple
    desc = QuantDescriptor(scheme=_SCHEME_IDS[qc.scheme], code_dtype=code_dtype, sign_bits=s, exponent_bits=e,
                           mantissa_bits=m, bits=qc.bits, per_channel=per_channel, po2_scale=po2, axis=0,
                           exp_min=qc.exp_min, scales=scales)
    return CodedTensor(codes.reshape(shape), desc, dtype_by_name(tensor_dtype))


def _masked_codes(qc: QuantCodes, mask: torch.Tensor) -> QuantCodes:
    """Zero the codes of pruned weights; binary codes (no zero) become ternary codes first."""
    if qc.scheme == "binary":
        qc = replace(qc, scheme="ternary", codes=(2 * qc.codes.to(torch.int8) - 1), bits=2, bit_tuple=(-1, 0, 1))
    if qc.scheme == "float_cast":
        return replace(qc, codes=qc.codes * mask.to(qc.codes.dtype))
    return replace(qc, codes=qc.codes * (mask != 0).to(qc.codes.dtype))


def _coded(q: Quantizer, t: torch.Tensor, mask: torch.Tensor | None = None) -> CodedTensor:
    """Codes of ``t`` (any float dtype; the codes are computed from its float32 values) for a tensor that
    decodes back to ``t``'s dtype."""
    with torch.no_grad():
        qc = q.to_codes(t.detach().float())
        if mask is not None:
            qc = _masked_codes(qc, mask)
        return coded_tensor(qc, tuple(t.shape), _FLOAT_TENSOR_DTYPES[t.dtype])


def quantized_state(model: nn.Module) -> dict[str, Any]:
    """The model's state_dict with every fake-quant weight and bias replaced by its :class:`CodedTensor`.

    Weights of any float dtype (float16, bfloat16, float32, float64) are stored as codes and decode to
    their own dtype (the code times the scale, rounded once to it). Pruned weights become zero codes (binary codes, which have no zero, are stored as ternary codes when a
    layer is pruned), so decoding gives exactly what the layer computes with; the ``weight_mask`` buffers
    of those layers are therefore not stored (load into :func:`nncodec.search.candidate.deployed_copy`,
    or encode with ``quantized=False`` to keep the masks for more training).
    """
    state: dict[str, Any] = dict(model.state_dict())
    #: a tied parameter (one tensor in several layers) with one quantizer and mask: one CodedTensor for all its
    #: names, whose codes are one array (what the stream can store once, the other names aliases of it)
    coded: dict[int, list[tuple[str, torch.Tensor | None, CodedTensor]]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, _QuantParams):
            continue
        prefix = f"{name}." if name else ""
        for pname, quantizer, value, mask in module.quantized_tensors():
            if value.dtype not in _FLOAT_TENSOR_DTYPES:
                continue
            seen = coded.setdefault(id(getattr(module, pname)), [])
            same = next((c for spec, m, c in seen if spec == quantizer.spec() and
                         (m is None and mask is None or (m is not None and mask is not None and torch.equal(m, mask)))),
                        None)
            state[prefix + pname] = same if same is not None else _coded(quantizer, value, mask)
            if same is None:
                seen.append((quantizer.spec(), mask, state[prefix + pname]))
            if mask is not None or pname == "weight":
                state.pop(prefix + pname + "_mask", None)
        stored = getattr(module, "stored_buffers", None)  # a folded batch norm: its statistics as stored
        if stored is not None:
            state.update({prefix + k: v for k, v in stored().items()})
    return state

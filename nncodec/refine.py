"""Precision refinement of a decoded tensor, in place (FORMAT.md §13.2): the decoder side of scalable streams.

Mode 0 (replace) decodes the refinement's codes as a tensor unit would and overwrites the tensor. Mode 1
(residual) predicts each new code from the value the previous operating point decoded,
``p = clamp(round_half_even(float32(v) / float32(s)))``, and adds the stored residual: ``c = p + d``. The
new value is ``c * s`` (uniform scheme). Only numpy; never imports torch.
"""

from __future__ import annotations

import numpy as np

from .bitstream.descriptor import QuantDescriptor, _as_float32, dequantize_into
from .bitstream.operating_points import GROWING_MODES, MODE_GROW_REPLACE, MODE_GROW_RESIDUAL, MODE_REPLACE, RefinementHeader
from .bitstream.units import TensorHeader
from .coding.pipeline import Pipeline
from .decoder import decode_tensor
from .dtypes import DType
from .errors import CorruptError
from .limits import Limits

__all__ = ["predict_codes", "apply_refinement", "code_range"]


def code_range(bits: int) -> tuple[int, int]:
    """The signed codes of ``bits`` bits: ``[-2^(bits-1), 2^(bits-1) - 1]``."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def predict_codes(values: np.ndarray, dtype: DType, desc: QuantDescriptor) -> np.ndarray:
    """int64 codes predicted from ``values`` (tensor storage, the previous point's) for the uniform ``desc``.

    ``q = float32(v) / s`` in binary32; NaN gives 0; then rounded half to even and clamped to the codes of
    ``desc.bits`` bits (so infinities clamp too).
    """
    scale = desc.broadcast_scales(values.ndim)
    lo, hi = code_range(desc.bits)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = _as_float32(values, dtype) / scale
        q = np.rint(q.astype(np.float32))
        q = np.where(np.isnan(q), np.float32(0), q)
        q = np.clip(q.astype(np.float64), lo, hi)
    return q.astype(np.int64)


def apply_refinement(rh: RefinementHeader, base: TensorHeader, coded: memoryview, pipeline: Pipeline,
                     limits: Limits, dest: np.ndarray) -> np.ndarray:
    """Turn ``dest`` (the tensor's values at the previous point, storage dtype, shape ``base.shape``) into its
    values at ``rh.level``: in place, and ``dest`` is returned; a growing refinement (modes 2 and 3)
    returns a new array of the grown shape, ``dest``'s values in its leading corner (mode 2).
    Raises :class:`CorruptError` for codes outside their range."""
    shape = base.shape
    if rh.mode in GROWING_MODES:
        shape = rh.shape  # type: ignore[assignment]
        grown = np.zeros(shape, dtype=dest.dtype)
        if rh.mode == MODE_GROW_RESIDUAL:
            grown[tuple(slice(0, d) for d in dest.shape)] = dest
        dest = grown
    if rh.mode in (MODE_REPLACE, MODE_GROW_REPLACE):
        decode_tensor(TensorHeader(base.name, base.dtype, shape, rh.quant, rh.pipeline), coded, pipeline,
                      limits, dest)
        return dest
    if rh.residual_dtype is None:
        raise CorruptError(f"residual refinement of {base.name!r} without a residual dtype")
    residual = np.empty(dest.size, dtype=rh.residual_dtype.storage)
    pipeline.decode_into(coded, residual.view(np.uint8), limits)
    codes = predict_codes(dest, base.dtype, rh.quant).reshape(-1) + residual.astype(np.int64)
    lo, hi = code_range(rh.quant.bits)
    info = np.iinfo(rh.quant.code_dtype.storage)
    lo, hi = max(lo, info.min), min(hi, info.max)
    if codes.size and (int(codes.min()) < lo or int(codes.max()) > hi):
        raise CorruptError(f"refined codes of {base.name!r} outside {lo}..{hi}")
    dequantize_into(codes.astype(rh.quant.code_dtype.storage).reshape(shape), rh.quant, dest, base.dtype)
    return dest

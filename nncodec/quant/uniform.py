"""Uniform quantization on encode (what NNCodec's ``qp`` does), pure numpy.

Two ways to ask for it:

- by bit width ``b`` (2..16): symmetric, ``scale = max|x| / (2**(b-1) - 1)`` per output channel
  (axis 0) for tensors of rank >= 2, per tensor for rank 1; ``b = 1`` gives binary codes (0 for -1, 1 for +1) with
  ``scale = mean|x|`` (QKeras' ``binary(alpha="auto")`` convention, 0 -> +1);
- by step size ``s``: ``code = round(x / s)`` with one scale ``s`` per tensor.

Rounding is half to even. Error bound: ``|x - code*scale| <= scale/2`` for every element (plus the
rounding of the product to the tensor dtype), except for ``b = 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..bitstream.descriptor import CodedTensor
    from ..dtypes import DType

__all__ = ["UniformCodes", "quantize_by_bits", "quantize_by_step", "code_dtype_for_bits"]

_TINY = np.finfo(np.float32).tiny


@dataclass(frozen=True)
class UniformCodes:
    codes: np.ndarray      #: integer codes, same shape as the input
    scales: np.ndarray     #: float32, one per channel (per_channel) or one
    bits: int              #: significant bits of a code (signed)
    per_channel: bool
    binary: bool = False   #: b = 1: code 1 means +scale, code 0 means -scale


def code_dtype_for_bits(bits: int) -> np.dtype:
    """Smallest signed integer dtype holding ``bits``-bit two's complement codes."""
    for dt in (np.int8, np.int16, np.int32):
        if bits <= 8 * np.dtype(dt).itemsize:
            return np.dtype(dt)
    raise ConfigError(f"codes of {bits} bits do not fit in int32")


def coded_from(grid: UniformCodes, codes: np.ndarray, dtype: "DType", *, fit_peak: bool = False,
               axis: int = 0) -> "CodedTensor":
    """A :class:`CodedTensor` holding ``codes`` on ``grid``'s scales (per channel: along ``axis``). Per-tensor
    step codes get the width their peak needs; per-channel codes keep the grid's, unless ``fit_peak`` (codes
    that may exceed it)."""
    from ..bitstream.constants import SCHEME_UNIFORM
    from ..bitstream.descriptor import CodedTensor, QuantDescriptor
    from ..dtypes import dtype_by_name

    if grid.per_channel and not fit_peak:
        bits = grid.bits
    else:
        peak = int(np.abs(codes).max()) if codes.size else 0
        bits = max(2, peak.bit_length() + 1)
    code_dtype = dtype_by_name(code_dtype_for_bits(bits).name)
    desc = QuantDescriptor(scheme=SCHEME_UNIFORM, code_dtype=code_dtype, sign_bits=1, exponent_bits=0,
                           mantissa_bits=bits - 1, bits=bits, per_channel=grid.per_channel,
                           axis=axis if grid.per_channel else 0,
                           scales=grid.scales)
    return CodedTensor(codes.astype(code_dtype.storage), desc, dtype)


_BLOCK_ELEMENTS = 1 << 18  # elements per block: float64 temporaries stay near 2 MiB whatever the tensor


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ConfigError(f"tensor {name!r} holds NaN or Inf and cannot be quantized; mark it lossless")


def _row_blocks(x: np.ndarray):  # noqa: ANN202
    """``(start, stop)`` of blocks of whole rows along axis 0 holding about ``_BLOCK_ELEMENTS`` elements (a
    rank-1 tensor's rows are its elements). Every computation below is per element or per row, so the
    results do not depend on the block size."""
    rows = max(1, _BLOCK_ELEMENTS // max(1, x.size // max(1, x.shape[0])))
    for start in range(0, x.shape[0], rows):
        yield start, min(start + rows, x.shape[0])


def quantize_by_bits(x: np.ndarray, bits: int, *, name: str = "tensor") -> UniformCodes:
    """Symmetric per-channel (rank >= 2) or per-tensor quantization to ``bits`` bits.

    Works in blocks of rows: besides the codes, memory stays near ``_BLOCK_ELEMENTS`` float64 values."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits must be 1..16, got {bits} (tensor {name!r})")
    x = np.asarray(x)
    per_channel = x.ndim >= 2 and x.shape[0] > 0
    if x.ndim == 0 or (bits == 1 and not per_channel):
        return _quantize_whole(x, bits, name)  # one mean over all elements: kept in one piece
    flat = x.reshape(x.shape[0], -1) if per_channel else x.reshape(-1, 1)
    if bits == 1:
        scale = np.empty(x.shape[0], np.float64)
        codes = np.empty(x.shape, np.int8)
        flat_codes = codes.reshape(flat.shape)
        for a, b in _row_blocks(flat):
            x64 = flat[a:b].astype(np.float64)
            _check_finite(x64, name)
            scale[a:b] = np.mean(np.abs(x64), axis=1)
            flat_codes[a:b] = x64 >= 0
        return UniformCodes(codes, scale.astype(np.float32), 1, per_channel, binary=True)
    qmax = (1 << (bits - 1)) - 1
    amax = np.empty(flat.shape[0], np.float64)
    for a, b in _row_blocks(flat):
        x64 = flat[a:b].astype(np.float64)
        _check_finite(x64, name)
        amax[a:b] = np.abs(x64, out=x64).max(axis=1)
    if not per_channel:
        amax = np.asarray([amax.max()]) if amax.size else np.zeros(1)
    scale = np.maximum((amax / qmax).astype(np.float32), np.float32(_TINY))
    scale = np.where(amax == 0, np.float32(1), scale).astype(np.float32)
    s = scale.astype(np.float64)
    codes = np.empty(x.shape, code_dtype_for_bits(bits))
    flat_codes = codes.reshape(flat.shape)
    for a, b in _row_blocks(flat):
        x64 = flat[a:b].astype(np.float64)
        x64 /= s[a:b, None] if per_channel else s[0]
        flat_codes[a:b] = np.clip(np.round(x64, out=x64), -qmax, qmax, out=x64)
    return UniformCodes(codes, scale, bits, per_channel)


def _quantize_whole(x: np.ndarray, bits: int, name: str) -> UniformCodes:
    x64 = np.asarray(x, dtype=np.float64)
    _check_finite(x64, name)
    absx = np.abs(x64)
    if bits == 1:
        scale = np.asarray([np.mean(absx)]) if absx.size else np.zeros(1)
        return UniformCodes((x64 >= 0).astype(np.int8), scale.astype(np.float32), 1, False, binary=True)
    qmax = (1 << (bits - 1)) - 1
    amax = np.asarray([np.max(absx)]) if absx.size else np.zeros(1)
    scale = np.maximum((amax / qmax).astype(np.float32), np.float32(_TINY))
    scale = np.where(amax == 0, np.float32(1), scale).astype(np.float32)
    codes = np.clip(np.round(x64 / scale.astype(np.float64)[0]), -qmax, qmax).astype(code_dtype_for_bits(bits))
    return UniformCodes(codes, scale, bits, False)


def quantize_by_step(x: np.ndarray, step: float, *, name: str = "tensor") -> UniformCodes:
    """``code = round(x / step)``, one scale per tensor; codes must fit in int32. Works in blocks."""
    step32 = np.float32(step)
    if not np.isfinite(step32) or step32 <= 0:
        raise ConfigError(f"step must be a positive finite float32, got {step} (tensor {name!r})")
    x = np.asarray(x)
    flat = x.reshape(-1)
    s = np.float64(step32)
    amax = 0.0
    for a in range(0, flat.size, _BLOCK_ELEMENTS):
        x64 = flat[a:a + _BLOCK_ELEMENTS].astype(np.float64)
        _check_finite(x64, name)
        amax = max(amax, float(np.abs(x64, out=x64).max())) if x64.size else amax
    # round() is odd and monotonic, and so is division by s: the largest |code| is round(max|x| / s)
    peak = float(np.round(np.float64(amax) / s))
    if peak > (1 << 31) - 1:
        raise ConfigError(f"step {step} is too fine for tensor {name!r}: codes would need more than 32 bits")
    bits = max(2, int(peak).bit_length() + 1)
    codes = np.empty(x.shape, code_dtype_for_bits(bits))
    flat_codes = codes.reshape(-1)
    for a in range(0, flat.size, _BLOCK_ELEMENTS):
        x64 = flat[a:a + _BLOCK_ELEMENTS].astype(np.float64)
        x64 /= s
        flat_codes[a:a + _BLOCK_ELEMENTS] = np.round(x64, out=x64)
    return UniformCodes(codes, np.asarray([step32], np.float32), bits, False)

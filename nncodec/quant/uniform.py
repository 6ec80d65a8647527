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

import numpy as np

from ..errors import ConfigError

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


def _check_finite(x: np.ndarray, name: str) -> None:
    if not np.isfinite(x).all():
        raise ConfigError(f"tensor {name!r} holds NaN or Inf and cannot be quantized; mark it lossless")


def _channel_reduce(a: np.ndarray, per_channel: bool, fn) -> np.ndarray:  # noqa: ANN001
    if per_channel:
        return fn(a.reshape(a.shape[0], -1), axis=1)
    return np.asarray([fn(a)]) if a.size else np.zeros(1)


def quantize_by_bits(x: np.ndarray, bits: int, *, name: str = "tensor") -> UniformCodes:
    """Symmetric per-channel (rank >= 2) or per-tensor quantization to ``bits`` bits."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits must be 1..16, got {bits} (tensor {name!r})")
    x64 = np.asarray(x, dtype=np.float64)
    _check_finite(x64, name)
    per_channel = x64.ndim >= 2 and x64.shape[0] > 0
    absx = np.abs(x64)
    bshape = (-1,) + (1,) * (x64.ndim - 1) if per_channel else ()
    if bits == 1:
        scale = _channel_reduce(absx, per_channel, np.mean).astype(np.float32)
        codes = (x64 >= 0).astype(np.int8)
        return UniformCodes(codes, scale, 1, per_channel, binary=True)
    qmax = (1 << (bits - 1)) - 1
    amax = _channel_reduce(absx, per_channel, np.max)
    scale = np.maximum((amax / qmax).astype(np.float32), np.float32(_TINY))
    scale = np.where(amax == 0, np.float32(1), scale).astype(np.float32)
    s = scale.astype(np.float64).reshape(bshape)
    codes = np.clip(np.round(x64 / s), -qmax, qmax).astype(code_dtype_for_bits(bits))
    return UniformCodes(codes, scale, bits, per_channel)


def quantize_by_step(x: np.ndarray, step: float, *, name: str = "tensor") -> UniformCodes:
    """``code = round(x / step)``, one scale per tensor; codes must fit in int32."""
    step32 = np.float32(step)
    if not np.isfinite(step32) or step32 <= 0:
        raise ConfigError(f"step must be a positive finite float32, got {step} (tensor {name!r})")
    x64 = np.asarray(x, dtype=np.float64)
    _check_finite(x64, name)
    q = np.round(x64 / np.float64(step32))
    peak = float(np.abs(q).max()) if q.size else 0.0
    if peak > (1 << 31) - 1:
        raise ConfigError(f"step {step} is too fine for tensor {name!r}: codes would need more than 32 bits")
    bits = max(2, int(peak).bit_length() + 1)
    return UniformCodes(q.astype(code_dtype_for_bits(bits)), np.asarray([step32], np.float32), bits, False)

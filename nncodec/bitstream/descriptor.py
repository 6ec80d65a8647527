"""The quantization descriptor of a tensor data unit, and the dequantization it defines.

Every scheme maps integer (or float) codes to values; the formulas here are normative (FORMAT.md §5):

- none: the codes are the tensor's own words.
- uniform / modified binary / ternary: ``value = float32(code) * scale[channel]``.
- binary: codes are 0 or 1, ``value = (2 * code - 1) * scale[channel]`` (one bit per code).
- po2 (e-quant): ``value = 0`` for ``code == 0``, else ``sign(code) * 2**(|code| - 1 + exp_min) * scale``.
- float_cast: ``value = code`` converted to the tensor's float dtype.

The product is computed in float32 and rounded once to the tensor dtype (round to nearest even).
``scale`` is a float32, or ``2**e`` for an int16 exponent ``e`` when the po2-scale flag is set.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..dtypes import DType, dtype_by_id, dtype_by_name
from ..errors import CorruptError, UnsupportedFeatureError
from .byte_reader import ByteReader
from .constants import (QFLAG_PER_CHANNEL, QFLAG_PO2_SCALE, QFLAGS_RESERVED, QUANT_DESCRIPTOR, SCHEME_BINARY,
                        SCHEME_FLOAT_CAST, SCHEME_MOD_BINARY, SCHEME_NAMES, SCHEME_NONE, SCHEME_PO2,
                        SCHEME_TERNARY)

__all__ = ["QuantDescriptor", "CodedTensor", "dequantize_into", "float32_to_bfloat16_bits", "bfloat16_bits_to_float32"]

_CHUNK_ELEMENTS = 1 << 20
_EXP_MIN, _EXP_MAX = -149, 127  #: exponents e for which 2**e is a float32 (subnormals included)
_CODE_RANGES = {SCHEME_BINARY: (0, 1), SCHEME_MOD_BINARY: (0, 1), SCHEME_TERNARY: (-1, 1)}


@dataclass(frozen=True)
class QuantDescriptor:
    """How a tensor's stored codes map back to values (see the module docstring).

    ``scales`` holds float32 scales, or int16 exponents when ``po2_scale``; one per tensor, or one per
    index of ``axis`` when ``per_channel``. ``(sign_bits, exponent_bits, mantissa_bits)`` is the seed's
    bit tuple, informative only; ``bits`` is the significant width of a code.
    """

    scheme: int = SCHEME_NONE
    code_dtype: DType = field(default_factory=lambda: dtype_by_name("uint8"))
    sign_bits: int = 0
    exponent_bits: int = 0
    mantissa_bits: int = 0
    bits: int = 0
    per_channel: bool = False
    po2_scale: bool = False
    axis: int = 0
    exp_min: int = 0
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    @property
    def scheme_name(self) -> str:
        return SCHEME_NAMES.get(self.scheme, f"unknown({self.scheme})")

    @classmethod
    def lossless(cls, dtype: DType) -> "QuantDescriptor":
        return cls(scheme=SCHEME_NONE, code_dtype=dtype, bits=8 * dtype.itemsize if dtype.name != "bool" else 1)

    def to_bytes(self) -> bytes:
        flags = (QFLAG_PER_CHANNEL if self.per_channel else 0) | (QFLAG_PO2_SCALE if self.po2_scale else 0)
        head = QUANT_DESCRIPTOR.pack(self.scheme, self.code_dtype.id, self.sign_bits, self.exponent_bits,
                                     self.mantissa_bits, self.bits, flags, self.axis, self.exp_min,
                                     self.scales.size)
        dt = "<i2" if self.po2_scale else "<f4"
        return head + np.ascontiguousarray(self.scales, dtype=dt).tobytes()

    @classmethod
    def parse(cls, r: ByteReader, tensor_dtype: DType, shape: tuple[int, ...]) -> "QuantDescriptor":
        at = r.offset
        (scheme, code_id, sbits, ebits, mbits, bits, flags, axis, exp_min,
         n_scales) = r.unpack(QUANT_DESCRIPTOR, "quantization descriptor")
        if scheme not in SCHEME_NAMES:
            raise UnsupportedFeatureError(f"unknown quantization scheme {scheme}", offset=at)
        if flags & QFLAGS_RESERVED:
            raise CorruptError(f"reserved quantization flag bits set: {flags:#04x}", offset=at)
        code_dtype = dtype_by_id(code_id)
        if code_dtype is None:
            raise UnsupportedFeatureError(f"unknown code dtype id {code_id}", offset=at)
        per_channel, po2 = bool(flags & QFLAG_PER_CHANNEL), bool(flags & QFLAG_PO2_SCALE)
        if scheme == SCHEME_NONE:
            if code_dtype != tensor_dtype or n_scales or flags or axis:
                raise CorruptError("a lossless tensor must use its own dtype as code dtype and carry no scales, "
                                   "flags or axis", offset=at)
        else:
            if not tensor_dtype.is_float:
                raise CorruptError(f"scheme {SCHEME_NAMES[scheme]} needs a float tensor, not {tensor_dtype.name}",
                                   offset=at)
            if scheme == SCHEME_FLOAT_CAST:
                if not code_dtype.is_float or n_scales or flags or axis:
                    raise CorruptError("float_cast needs a float code dtype and no scales, flags or axis", offset=at)
            else:
                if not code_dtype.is_int:
                    raise CorruptError(f"scheme {SCHEME_NAMES[scheme]} needs integer codes", offset=at)
                if per_channel:
                    if axis >= len(shape):
                        raise CorruptError(f"channel axis {axis} out of range for rank {len(shape)}", offset=at)
                    if n_scales != shape[axis]:
                        raise CorruptError(f"{n_scales} scales for {shape[axis]} channels", offset=at)
                elif n_scales != 1 or axis:
                    raise CorruptError(f"a per-tensor scale needs exactly 1 scale and axis 0, got {n_scales}",
                                       offset=at)
        if not 0 <= bits <= 8 * code_dtype.itemsize:
            raise CorruptError(f"code width {bits} over the code dtype {code_dtype.name}", offset=at)
        raw = r.take(n_scales * (2 if po2 else 4), "scales")
        scales = np.frombuffer(raw, dtype="<i2" if po2 else "<f4").copy()
        return cls(scheme, code_dtype, sbits, ebits, mbits, bits, per_channel, po2, axis, exp_min, scales)

    def rows(self, start: int, stop: int) -> "QuantDescriptor":
        """The descriptor of rows ``[start, stop)`` along axis 0 (per-channel scales along axis 0 sliced)."""
        if self.per_channel and self.axis == 0:
            return replace(self, scales=self.scales[start:stop])
        return self

    def scale_values(self) -> np.ndarray:
        """Scales as float32 (po2 exponents expanded; each must give a float32: -149..127)."""
        if self.po2_scale:
            if self.scales.size and (int(self.scales.min()) < _EXP_MIN or int(self.scales.max()) > _EXP_MAX):
                raise CorruptError(f"a power-of-two scale exponent is outside float32's {_EXP_MIN}..{_EXP_MAX}")
            return np.ldexp(np.float32(1), self.scales.astype(np.int32)).astype(np.float32)
        return self.scales.astype(np.float32)

    def broadcast_scales(self, ndim: int) -> np.ndarray:
        """The float32 scales shaped to broadcast against a tensor of rank ``ndim`` (per channel along
        ``axis``, else a 0-d array)."""
        scale = self.scale_values()
        if not self.per_channel:
            return scale.reshape(())
        bshape = [1] * ndim
        bshape[self.axis] = scale.size
        return scale.reshape(bshape)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QuantDescriptor):
            return NotImplemented
        return self.to_bytes() == other.to_bytes()

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class CodedTensor:
    """A tensor that arrives already quantized: its codes and the descriptor that maps them to values.

    ``codes`` has the tensor's shape and the descriptor's code dtype; ``dtype`` is the tensor's (float)
    dtype after decoding. The encoder stores the codes as they are (lossless from here on). ``lead``: a stage
    every pipeline of the tensor starts with (dependent quantization's state machine, FORMAT.md §15), or None.
    """

    codes: np.ndarray
    quant: QuantDescriptor
    dtype: DType
    lead: Any = None


def float32_to_bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even; NaN stays NaN) and return the uint16 bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return rounded


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _as_float32(codes: np.ndarray, code_dtype: DType) -> np.ndarray:
    if code_dtype.name == "bfloat16":
        return bfloat16_bits_to_float32(codes)
    return codes.astype(np.float32)


def dequantize_into(codes: np.ndarray, desc: QuantDescriptor, out: np.ndarray, tensor_dtype: DType) -> None:
    """Write the values of ``codes`` (shaped like the tensor) into ``out`` (tensor storage dtype).

    Raises :class:`CorruptError` when a code is outside the scheme's range.
    """
    with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf scales are data, not a decoder fault
        if codes.ndim == 0 or codes.shape[0] <= 1 or codes.size <= _CHUNK_ELEMENTS:
            _dequantize(codes, desc, out, tensor_dtype)
            return
        # blocks of rows along axis 0, so temporaries stay small (about _CHUNK_ELEMENTS floats)
        rows = max(1, _CHUNK_ELEMENTS // (codes.size // codes.shape[0] or 1))
        if desc.per_channel and desc.axis != 0:
            _dequantize(codes, desc, out, tensor_dtype)
            return
        for start in range(0, codes.shape[0], rows):
            _dequantize(codes[start:start + rows], desc.rows(start, start + rows), out[start:start + rows],
                        tensor_dtype)


def _dequantize(codes: np.ndarray, desc: QuantDescriptor, out: np.ndarray, tensor_dtype: DType) -> None:
    if desc.scheme == SCHEME_FLOAT_CAST:
        values = _as_float32(codes, desc.code_dtype)
    else:
        if desc.scheme in _CODE_RANGES and codes.size:
            lo, hi = _CODE_RANGES[desc.scheme]
            if codes.min() < lo or codes.max() > hi:
                raise CorruptError(f"{desc.scheme_name} codes outside their value set")
        scale = desc.broadcast_scales(codes.ndim)
        if desc.scheme == SCHEME_PO2:
            mags = np.abs(codes.astype(np.int64))
            nonzero = mags[mags != 0]
            if nonzero.size and (int(nonzero.max()) - 1 + desc.exp_min > _EXP_MAX
                                 or int(nonzero.min()) - 1 + desc.exp_min < _EXP_MIN):
                raise CorruptError(f"po2 code exponent outside float32's {_EXP_MIN}..{_EXP_MAX}")
            values = np.where(codes == 0, np.float32(0),
                              np.sign(codes).astype(np.float32) *
                              np.ldexp(np.float32(1), np.maximum(mags - 1 + desc.exp_min, _EXP_MIN)).astype(np.float32))
            values = (values * scale).astype(np.float32)
        elif desc.scheme == SCHEME_BINARY:
            values = (codes.astype(np.float32) * np.float32(2) - np.float32(1)) * scale
        else:
            values = codes.astype(np.float32) * scale
    values = np.asarray(values, dtype=np.float32)
    if tensor_dtype.name == "bfloat16":
        out[...] = float32_to_bfloat16_bits(values).reshape(out.shape)
    else:
        out[...] = values.astype(tensor_dtype.storage).reshape(out.shape)

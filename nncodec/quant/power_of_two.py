"""Power-of-two quantizers (the seed's e-quant): QKeras ``quantized_po2`` and nncodec's zero-keeping variant.

``quantized_po2(bits, max_value)``: ``s = 1`` if ``max_value`` is None or > 1 else 0;
``kmin = -2**(bits-1-s)``, ``kmax = 2**(bits-1-s) - 1``; ``|x|`` is clipped to ``max_value``;
``k = clip(round(log2|x|), kmin, kmax)`` (``|x| < 1e-7`` gives ``kmin``); ``xq = sign(x) * 2**k``
with ``sign(0) = +1``: QKeras has **no zero**, so 0 becomes ``+2**kmin``.

``quantized_po2_zero(bits, max_value)`` (nncodec's own, not in QKeras): the same, except that 0 and
every ``|x|`` whose rounded exponent is below ``kmin`` quantize to 0, so pruned weights stay zero.

``quantized_relu_po2(bits, max_value)``: ``kmin = -2**(bits-s)``, ``kmax = 2**(bits-s) - 1`` (no value sign
bit); ``xq = 2**k`` of ``relu(x)``, so every ``x <= 0`` becomes ``+2**kmin``, as in QKeras (``negative_slope``
is not supported).

Codes: ``c = sign * (k - kmin + 1)``, 0 for zero; the bitstream's po2 scheme with ``exp_min = kmin``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from .base import QuantCodes, Quantizer, register_quantizer

__all__ = ["QuantizedPo2", "QuantizedPo2Zero", "QuantizedReluPo2"]

_EPS = 1e-7
_LOG2 = math.log(2.0)


@register_quantizer("quantized_po2")
class QuantizedPo2(Quantizer):
    name = "quantized_po2"
    kind = "po2"
    signed = True
    keeps_zero = False

    def __init__(self, bits: int = 8, max_value: float | None = None, use_stochastic_rounding: bool = False,
                 quadratic_approximation: bool = False):
        if not isinstance(bits, int) or not 2 <= bits <= 8:
            raise ConfigError(f"{self.name}: bits must be 2..8, got {bits!r}")
        if max_value is not None and not (isinstance(max_value, (int, float)) and max_value >= 0):
            raise ConfigError(f"{self.name}: max_value must be None or >= 0, got {max_value!r}")
        if quadratic_approximation:
            raise ConfigError(f"{self.name}: quadratic_approximation is not supported")
        self.bits, self.max_value = bits, max_value
        need_sign = 1 if max_value is None or max_value > 1 else 0
        effect = bits - 1 - need_sign
        self.min_exp, self.max_exp = -(2 ** effect), 2 ** effect - 1

    def _exponents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        sign = torch.sign(x)
        sign = sign + (1.0 - sign.abs())
        x_abs = x.abs()
        x_filter = torch.where(x_abs < _EPS, torch.tensor(_EPS, dtype=torch.float32), x_abs)
        if self.max_value is not None:
            x_filter = torch.where(x_filter >= self.max_value, torch.tensor(float(self.max_value)), x_filter)
        raw = torch.round(torch.log(x_filter) / _LOG2)
        k = torch.where(x_abs < _EPS, torch.tensor(float(self.min_exp)), torch.clamp(raw, self.min_exp, self.max_exp))
        zero = torch.zeros_like(x_abs, dtype=torch.bool)
        if self.keeps_zero:
            zero = (x_abs == 0) | (raw < self.min_exp)
        return sign, k, zero

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        sign, k, zero = self._exponents(x)
        return torch.where(zero, 0.0, sign * torch.pow(2.0, k))

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        sign, k, zero = self._exponents(x)
        codes = torch.where(zero, 0.0, sign * (k - self.min_exp + 1)).to(torch.int16)
        bits = (self.max_exp - self.min_exp + 1).bit_length() + 1
        return QuantCodes("po2", codes, torch.tensor(1.0), bits, torch.tensor(0), exp_min=self.min_exp,
                          bit_tuple=(1, self.bits - 1, 0))

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "max_value": self.max_value}


@register_quantizer("quantized_po2_zero")
class QuantizedPo2Zero(QuantizedPo2):
    name = "quantized_po2_zero"
    keeps_zero = True


@register_quantizer("quantized_relu_po2")
class QuantizedReluPo2(QuantizedPo2):
    """QKeras ``quantized_relu_po2``: the power of two of ``relu(x)``; the exponent has all ``bits``."""

    name = "quantized_relu_po2"
    signed = False

    def __init__(self, bits: int = 8, max_value: float | None = None, negative_slope: float = 0.0,
                 use_stochastic_rounding: bool = False, quadratic_approximation: bool = False):
        if negative_slope:
            raise ConfigError("quantized_relu_po2: negative_slope is not supported")
        if not isinstance(bits, int) or not 1 <= bits <= 8:
            raise ConfigError(f"quantized_relu_po2: bits must be 1..8, got {bits!r}")
        super().__init__(max(bits, 2), max_value, quadratic_approximation=quadratic_approximation)
        self.bits = bits
        need_sign = 1 if max_value is None or max_value > 1 else 0
        self.min_exp, self.max_exp = -(2 ** (bits - need_sign)), 2 ** (bits - need_sign) - 1

    def _exponents(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, k, zero = super()._exponents(torch.relu(x.to(torch.float32)))
        return torch.ones_like(k), k, zero

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        codes = super().to_codes(x)
        return QuantCodes("po2", codes.codes, codes.scale, codes.bits, codes.po2_exponent, exp_min=self.min_exp,
                          bit_tuple=(0, self.bits, 0))

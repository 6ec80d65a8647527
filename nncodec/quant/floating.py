"""Float "quantizers": rounding to float16 / bfloat16 (or keeping float32), for the search's float choice."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .base import QuantCodes, Quantizer, register_quantizer

__all__ = ["FloatQuantizer", "Fp16", "Bf16", "Fp32"]


class FloatQuantizer(Quantizer):
    kind = "float"
    signed = True
    dtype: ClassVar[torch.dtype]

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype).to(torch.float32)

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        return QuantCodes("float_cast", x.to(self.dtype), torch.tensor(1.0), self.bits,
                          bit_tuple=(1, 5 if self.dtype == torch.float16 else 8, self.bits - 6 if
                                     self.dtype == torch.float16 else self.bits - 9))

    def get_config(self) -> dict[str, Any]:
        return {}


@register_quantizer("fp16")
class Fp16(FloatQuantizer):
    name, bits, dtype = "fp16", 16, torch.float16


@register_quantizer("bf16")
class Bf16(FloatQuantizer):
    name, bits, dtype = "bf16", 16, torch.bfloat16


@register_quantizer("fp32")
class Fp32(FloatQuantizer):
    name, bits, dtype = "fp32", 32, torch.float32

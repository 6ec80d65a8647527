"""Fixed-point quantizers (the seed's m-quant): QKeras ``quantized_bits`` and ``quantized_relu``.

``quantized_bits(bits, integer, symmetric, keep_negative)``, with ``u = bits - keep_negative``::

    xq = 2**integer * clip(round(x * 2**u / 2**integer), keep_negative * (symmetric - 2**u), 2**u - 1) / 2**u

(``u = 0``: ``sign(x)`` with 0 -> +1). ``quantized_relu(bits, integer)``::

    xq = 2**integer * clip(round(x * 2**bits / 2**integer) / 2**bits, 0, 1 - 2**-bits)

Rounding is half to even. ``integer`` may be negative (QKeras documents it as >= 0, but its formula is
the same): ``quantized_bits(4, -3, 1)`` has step ``2**-6``, which suits small weights. Codes are the clipped integers; the scale is the power of two
``2**(integer - u)`` (``2**(integer - bits)`` for relu), so dequantization is exact.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from .base import QuantCodes, Quantizer, register_quantizer, ste
from .binary_ternary import _po2_round as _round_po2
from .binary_ternary import lsq_scale

__all__ = ["QuantizedBits", "QuantizedRelu"]


def _code_dtype(lo: int, hi: int) -> torch.dtype:
    for dt in (torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    raise ConfigError(f"codes {lo}..{hi} do not fit in int64")


def _po2_scale(exponent: int) -> torch.Tensor:
    return torch.tensor(2.0 ** exponent, dtype=torch.float32)


@register_quantizer("quantized_bits")
class QuantizedBits(Quantizer):
    name = "quantized_bits"
    kind = "fixed"

    def __init__(self, bits: int = 8, integer: int = 0, symmetric: int = 0, keep_negative: bool = True,
                 alpha: Any = None, use_stochastic_rounding: bool = False):
        if not isinstance(bits, int) or not 1 <= bits <= 32:
            raise ConfigError(f"quantized_bits: bits must be 1..32, got {bits!r}")
        if not isinstance(integer, int) or not -32 <= integer <= 32:
            raise ConfigError(f"quantized_bits: integer must be an int in -32..32, got {integer!r}")
        if alpha not in (None, 1, 1.0, "auto", "auto_po2"):
            raise ConfigError(f"quantized_bits: alpha must be None, 'auto' or 'auto_po2', got {alpha!r}")
        if isinstance(alpha, str) and (not keep_negative or bits < 2):
            raise ConfigError("quantized_bits: alpha='auto'/'auto_po2' needs keep_negative=True and bits >= 2")
        self.bits, self.integer = bits, integer
        self.alpha = alpha if isinstance(alpha, str) else None
        # QKeras: an 'auto' alpha makes the quantizer symmetric
        self.symmetric, self.keep_negative = int(bool(symmetric) or self.alpha is not None), bool(keep_negative)
        self.signed = self.keep_negative
        self.u = bits - int(self.keep_negative)

    def _range(self) -> tuple[int, int]:
        m = 1 << self.u
        return int(self.keep_negative) * (self.symmetric - m), m - 1

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        if self.u == 0:
            return torch.where(x >= 0, 1.0, -1.0)
        m, m_i = float(1 << self.u), float(2.0 ** self.integer)
        lo, hi = self._range()
        return torch.clamp(torch.round(x * m / m_i), lo, hi)

    def _auto(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(integer codes z, scale) of QKeras' ``alpha='auto'``/``'auto_po2'`` (values are ``scale * z``).

        On ``x / 2**integer``: ``levels = 2 * (2**(bits-1) - 1)``; ``scale = 2 * max|x| / levels`` per output
        channel (axis 0; the whole tensor when 1-D); ``z = sign(x) * min(floor(|x| / scale + 0.5), levels / 2)``.
        ``auto_po2`` rounds the scale to a power of two and refines it 5 times by least squares (QKeras
        0.9.0 keeps the ``z`` of the last refinement); the value is ``2**integer * scale * z``.
        """
        m_i = float(2.0 ** self.integer)
        xn = x.to(torch.float32) / m_i
        levels = float((2 ** (self.bits - 1) - 1) * 2)
        amax = torch.amax(xn.abs(), dim=tuple(range(1, xn.ndim)), keepdim=True) if xn.ndim > 1 else xn.abs().max()
        scale = amax * 2.0 / levels

        def codes(scale: torch.Tensor) -> torch.Tensor:
            v = torch.floor(xn.abs() / scale + 0.5)
            return torch.sign(xn) * torch.where(v < levels / 2, v, torch.full_like(v, levels / 2))

        if self.alpha == "auto_po2":
            scale = _round_po2(scale)
            for _ in range(5):
                z = codes(scale)
                scale = lsq_scale("auto_po2", xn, z)
        else:
            z = codes(scale)
        return z, scale * m_i

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if self.alpha is not None:
            z, scale = self._auto(x)
            return scale * z
        q = self._codes(x)
        if self.u == 0:
            return q
        return float(2.0 ** self.integer) * q / float(1 << self.u)

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        if self.alpha is not None:
            z, scale = self._auto(x)
            flat = scale.reshape(-1) if scale.numel() > 1 else scale.reshape(())
            exp = torch.round(torch.log2(flat)).to(torch.int16) if self.alpha == "auto_po2" and \
                bool((flat > 0).all()) else None
            half = (2 ** (self.bits - 1)) - 1
            return QuantCodes("uniform", z.to(_code_dtype(-half, half)), flat.to(torch.float32), self.bits, exp,
                              bit_tuple=(1, 0, self.bits - 1))
        q = self._codes(x)
        if self.u == 0:
            return QuantCodes("binary", (q > 0).to(torch.int8), _po2_scale(0), 1,
                              torch.tensor(0), bit_tuple=(1, 0, 0))
        lo, hi = self._range()
        exp = self.integer - self.u
        return QuantCodes("uniform", q.to(_code_dtype(lo, hi)), _po2_scale(exp), self.bits, torch.tensor(exp),
                          bit_tuple=(1, 0, self.bits - 1) if self.signed else (0, 0, self.bits))

    def get_config(self) -> dict[str, Any]:
        cfg = {"bits": self.bits, "integer": self.integer, "symmetric": self.symmetric,
               "keep_negative": self.keep_negative}
        if self.alpha is not None:
            cfg["alpha"] = self.alpha
        return cfg


@register_quantizer("quantized_relu")
class QuantizedRelu(Quantizer):
    name = "quantized_relu"
    kind = "fixed"
    signed = False

    def __init__(self, bits: int = 8, integer: int = 0, use_sigmoid: int = 0, negative_slope: float = 0.0,
                 use_stochastic_rounding: bool = False):
        if not isinstance(bits, int) or not 1 <= bits <= 32:
            raise ConfigError(f"quantized_relu: bits must be 1..32, got {bits!r}")
        if not isinstance(integer, int) or not -32 <= integer <= 32:
            raise ConfigError(f"quantized_relu: integer must be an int in -32..32, got {integer!r}")
        if use_sigmoid or negative_slope:
            raise ConfigError("quantized_relu: use_sigmoid and negative_slope are not supported")
        self.bits, self.integer = bits, integer

    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        m, m_i = float(1 << self.bits), float(2.0 ** self.integer)
        return torch.clamp(torch.round(x.to(torch.float32) * m / m_i), 0, m - 1)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return float(2.0 ** self.integer) * self._codes(x) / float(1 << self.bits)

    def __call__(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        if not training:
            return self.quantize(x)
        top = 2.0 ** self.integer - 2.0 ** (self.integer - self.bits)
        x_u = torch.clamp(torch.relu(x), max=top)  # the gradient QKeras uses: relu clipped at the top code
        return ste(x_u, self.quantize(x))

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        exp = self.integer - self.bits
        return QuantCodes("uniform", self._codes(x).to(_code_dtype(0, (1 << self.bits) - 1)), _po2_scale(exp),
                          self.bits, torch.tensor(exp), bit_tuple=(0, 0, self.bits))

    def get_config(self) -> dict[str, Any]:
        return {"bits": self.bits, "integer": self.integer}

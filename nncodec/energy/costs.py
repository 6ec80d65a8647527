"""Per-operation and memory energy costs (pJ), Horowitz ISSCC 2014 as fitted by QTools.

All costs are polynomials in a bit count, clamped at 0. A user table for other hardware is a JSON
object with any of the keys below, each a list of polynomial coefficients, highest power first.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["OpCosts", "HOROWITZ"]


def _poly(coeffs: list[float], x: float) -> float:
    return max(float(np.polyval(coeffs, x)), 0.0)


@dataclass(frozen=True)
class OpCosts:
    """Energy polynomials, pJ. ``fpm_*``: fixed point of b bits; ``fp16_*`` / ``fp32_*``: constants;
    ``sram_rd``: P(log2 of the memory size in bits), paid per 64-bit word; ``dram_rd``: per bit."""

    fpm_add: list[float] = field(default_factory=lambda: [0.003125, 0.0])
    fpm_mul: list[float] = field(default_factory=lambda: [0.002994791667, 0.001041666667, 0.0])
    fp16_add: list[float] = field(default_factory=lambda: [0.4])
    fp16_mul: list[float] = field(default_factory=lambda: [1.1])
    fp32_add: list[float] = field(default_factory=lambda: [0.9])
    fp32_mul: list[float] = field(default_factory=lambda: [3.7])
    sram_rd: list[float] = field(default_factory=lambda: [9.02427321e-04, -2.68847858e-02, 2.08900804e-01, 0.0])
    dram_rd: list[float] = field(default_factory=lambda: [20.3125, 0.0])

    def add(self, bits: float, float_bits: int | None = None) -> float:
        """One addition: fixed point of ``bits`` bits, or a float add when ``float_bits`` is 16 or 32."""
        if float_bits is not None:
            return _poly(self.fp16_add if float_bits <= 16 else self.fp32_add, bits)
        return _poly(self.fpm_add, bits)

    def mul(self, bits: float, float_bits: int | None = None) -> float:
        if float_bits is not None:
            return _poly(self.fp16_mul if float_bits <= 16 else self.fp32_mul, bits)
        return _poly(self.fpm_mul, bits)

    def sram_word(self, total_bits: float, min_sram_size: float) -> float:
        """Cost of one 64-bit word access in an SRAM holding ``max(total_bits, min_sram_size)`` bits."""
        size = max(total_bits, min_sram_size)
        return _poly(self.sram_rd, math.log2(size)) if size > 0 else 0.0

    def dram(self, total_bits: float) -> float:
        return _poly(self.dram_rd, total_bits)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OpCosts":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown op-cost keys {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        for k, v in d.items():
            if not isinstance(v, list) or not v or not all(isinstance(c, (int, float)) for c in v):
                raise ConfigError(f"op cost {k!r} must be a non-empty list of numbers (polynomial coefficients)")
        return cls(**{k: [float(c) for c in v] for k, v in d.items()})

    @classmethod
    def coerce(cls, value: "OpCosts | dict | str | Path | None") -> "OpCosts":
        if value is None:
            return HOROWITZ
        if isinstance(value, OpCosts):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        try:
            return cls.from_dict(json.loads(Path(value).read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read op-cost table {value}: {exc}") from None


HOROWITZ = OpCosts()

"""Which hardware operator a MAC uses for a (weight, input) type pair, and what it costs (QTools' table).

|              | fixed     | po2     | ternary | binary ±1 | binary {0,1} | float |
|--------------|-----------|---------|---------|-----------|--------------|-------|
| fixed        | multiplier| shifter | mux     | mux       | and          | fmul  |
| po2          | shifter   | adder   | mux     | mux       | and          | fmul  |
| ternary      | mux       | mux     | mux     | mux       | and          | fmul  |
| binary ±1    | mux       | mux     | mux     | xor       | and          | fmul  |
| binary {0,1} | and       | and     | and     | and       | and          | fmul  |
| float        | fmul      | fmul    | fmul    | fmul      | fmul         | fmul  |

Rows are the weight type, columns the input type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..quant.base import Quantizer, get_quantizer
from .costs import OpCosts

__all__ = ["QType", "Multiplier", "make_multiplier", "qtype"]


@dataclass(frozen=True)
class QType:
    """What the energy model needs of a quantizer: its operator class, bits and sign."""

    kind: str          #: fixed, po2, ternary, binary, binary01, float
    bits: int
    signed: bool = True
    label: str = ""
    po2_range: tuple[int, int] = (0, 0)  #: (bits right of the point, bits left of it) of a po2 type

    @property
    def is_float(self) -> bool:
        return self.kind == "float"


def qtype(spec: "str | Quantizer") -> QType:
    """The :class:`QType` of a spec string (``"int8"``, ``"fp16"``, ``"quantized_bits(4,0,1)"``...) or quantizer."""
    q = get_quantizer(spec)
    if q is None:
        raise ConfigError(f"{spec!r} names no quantizer; use 'fp32' for float")
    po2 = _qtools_po2_range(int(q.bits), bool(q.signed), getattr(q, "max_value", None)) if q.kind == "po2" else (0, 0)
    return QType(q.kind, int(q.bits), bool(q.signed), q.spec(), po2)


def _qtools_po2_range(bits: int, signed: bool, max_value: float | None) -> tuple[int, int]:
    """QTools' shift range of a po2 type (its ``get_exp``): bits right and left of the point a shifter adds.

    ``n = bits - signed``; right ``2**(n-1)``; left ``2**(n-1) - 1``, capped at ``ceil(log2(max_value))`` (0
    when ``max_value <= 1``). This is QTools' count, which ignores the exponent-sign saving QKeras' quantizer
    makes when ``max_value <= 1``: ``quantized_po2(4, 1)`` shifts by 4 + 0 bits, not 8 + 7.
    """
    n = bits - int(signed)
    right, left = 2 ** (n - 1), 2 ** (n - 1) - 1
    if max_value:  # QTools treats max_value 0 and None alike: no cap
        left = 0 if max_value <= 0 else min(math.ceil(math.log2(max_value)), left)
    return right, max(left, 0)


@dataclass(frozen=True)
class Multiplier:
    operator: str        #: multiplier, shifter, mux, and, xor, adder, fmul
    gate_factor: float
    gate_bits: float
    output: QType        #: type of the product

    def cost(self, costs: OpCosts, as_type: QType | None = None) -> float:
        """Energy of one product, pJ; ``as_type`` overrides the output type (QTools' reference mode)."""
        out = as_type or self.output
        if out.is_float:
            fn = costs.mul if self.operator in ("multiplier", "fmul") else costs.add
            return self.gate_factor * fn(self.gate_bits, float_bits=out.bits)
        fn = costs.mul if self.operator in ("multiplier",) else costs.add
        return self.gate_factor * fn(self.gate_bits)


def make_multiplier(w: QType, x: QType) -> Multiplier:
    if w.is_float or x.is_float:
        bits = max(w.bits if w.is_float else 0, x.bits if x.is_float else 0)
        return Multiplier("fmul", 1.0, bits, QType("float", bits, True))
    if "binary01" in (w.kind, x.kind):
        bits = max(w.bits, x.bits)
        return Multiplier("and", 0.1, bits, QType("fixed", bits, w.signed or x.signed))
    if w.kind == "binary" and x.kind == "binary":
        return Multiplier("xor", 0.3, 1, QType("fixed", max(w.bits, x.bits), True))
    if w.kind in ("binary", "ternary"):
        bits = x.bits + (1 if (not x.signed and w.signed) else 0)
        return Multiplier("mux", 0.3 if w.kind == "binary" else 0.6, x.bits, QType("fixed", bits, True))
    if x.kind in ("binary", "ternary"):
        bits = w.bits + (1 if (not w.signed and x.signed) else 0)
        return Multiplier("mux", 0.3 if x.kind == "binary" else 0.6, w.bits, QType("fixed", bits, True))
    if w.kind == "po2" and x.kind == "po2":
        bits = max(w.bits, x.bits) + 1
        return Multiplier("adder", 1.0, bits, QType("fixed", bits, True))
    if "po2" in (w.kind, x.kind):
        po2, qb = (w, x) if w.kind == "po2" else (x, w)
        right, left = po2.po2_range
        bits = qb.bits + right + left + (1 if (not qb.signed and po2.signed) else 0)
        b = math.sqrt(2 ** po2.bits * qb.bits)
        return Multiplier("shifter", 1.0, b * math.log10(b), QType("fixed", bits, True))
    return Multiplier("multiplier", 1.0, math.sqrt(w.bits * x.bits),
                      QType("fixed", w.bits + x.bits, w.signed or x.signed))

"""The quantizer contract, the codes it produces, and the registry of quantizers by QKeras name.

Lifecycle: a quantizer is built from a spec string (``get_quantizer("quantized_bits(8,0,1)")``) or its
config; ``quantize(x)`` gives the quantized values exactly as QKeras computes them; ``__call__`` is the
training forward (straight-through estimator: the value of ``quantize`` with the gradient of identity,
stochastic where the quantizer is); ``to_codes(x)`` gives the integer codes and scales that the
bitstream stores, which dequantize to exactly ``quantize(x)``. Per-channel scales are along axis 0,
the output channel of torch conv and linear weights. Quantizers hold settings only (thread-safe),
except that the ``auto`` scales are recomputed on every call from the tensor given.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from .spec import parse_spec

__all__ = ["Quantizer", "QuantCodes", "register_quantizer", "get_quantizer", "QUANTIZERS", "ste"]

QUANTIZERS: dict[str, type["Quantizer"]] = {}

#: operator classes for the energy model (the QTools multiplier table)
KINDS = ("fixed", "po2", "ternary", "binary", "binary01", "float")


@dataclass(frozen=True)
class QuantCodes:
    """Integer codes and their scales: what a tensor data unit stores (FORMAT.md §5)."""

    scheme: str               #: "uniform", "binary", "modified_binary", "ternary", "po2", "float_cast"
    codes: torch.Tensor       #: integer codes shaped like the tensor (float words for float_cast)
    scale: torch.Tensor       #: float32 scales, shape [] (per tensor) or [C] (per channel, axis 0)
    bits: int                 #: significant bits of a code
    po2_exponent: torch.Tensor | None = None  #: int exponents when every scale is a power of two
    exp_min: int = 0          #: smallest exponent (po2 scheme)
    bit_tuple: tuple[int, int, int] = (1, 0, 0)  #: the seed's (sign, exponent, mantissa) bits


def ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Straight-through estimator: the value of ``xq``, the gradient of ``x`` (as QKeras computes it)."""
    return x + (xq - x).detach()


class Quantizer(abc.ABC):
    """One quantization scheme with its settings (see the module docstring for the lifecycle)."""

    name: ClassVar[str]
    kind: ClassVar[str]       #: operator class for the energy model, one of KINDS
    bits: int
    signed: bool

    @abc.abstractmethod
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantized values, deterministic (inference)."""

    def __call__(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Training: straight-through estimator. Inference: exactly ``quantize(x)`` (what decoding gives)."""
        return ste(x, self.quantize(x)) if training else self.quantize(x)

    @abc.abstractmethod
    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        """Codes and scales that dequantize to exactly ``quantize(x)``."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-able)."""

    def spec(self) -> str:
        """The spec string that builds this quantizer again."""
        cfg = self.get_config()
        if not cfg:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in cfg.items())})"

    def __repr__(self) -> str:
        return self.spec()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantizer) and self.spec() == other.spec()

    def __hash__(self) -> int:
        return hash(self.spec())


def register_quantizer(*names: str):  # noqa: ANN201
    def deco(cls: type[Quantizer]) -> type[Quantizer]:
        for n in names or (cls.name,):
            if n in QUANTIZERS:
                raise ConfigError(f"quantizer {n!r} registered twice")
            QUANTIZERS[n] = cls
        return cls
    return deco


_ALIASES = {"int8": "quantized_bits(8, 0, 1)", "int16": "quantized_bits(16, 7, 1)",
            "int32": "quantized_bits(32, 10, 1)"}


def get_quantizer(spec: "str | Quantizer | None") -> "Quantizer | None":
    """Build a quantizer from a QKeras-style spec string (``None`` and ``"float"`` mean no quantizer... unless
    a float width is named: ``"fp16"``, ``"bf16"``, ``"fp32"``)."""
    if spec is None or isinstance(spec, Quantizer):
        return spec
    if isinstance(spec, str) and spec.strip() in _ALIASES:
        spec = _ALIASES[spec.strip()]
    name, args, kwargs = parse_spec(spec)
    if name in ("float", "none", "None"):
        return None
    cls = QUANTIZERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown quantizer {name!r} in {spec!r}; known: {', '.join(sorted(QUANTIZERS))}")
    try:
        return cls(*args, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments in quantizer spec {spec!r}: {exc}") from None

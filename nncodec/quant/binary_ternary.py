"""Binary, modified binary {0, 1} and ternary quantizers, deterministic and stochastic (QKeras semantics).

- ``binary(use_01=False, alpha=None)``: ``q = sign(x)`` with 0 -> +1 (``use_01``: ``(q + 1) / 2``).
- ``ternary(alpha=None, threshold=None)``: ``q = sign(x) * (|x| >= t)``, ``t = 0.33`` by default.
- ``alpha``: None -> scale 1; a number -> that scale; ``"auto"`` -> per output channel (axis 0)
  least-squares scale ``mean(x*q) / (mean(q*q) + 1e-7)``; ``"auto_po2"`` -> that scale rounded to a
  power of two, ``2**round(log2(scale + 1e-7))`` (ties to even). A 1-D tensor gets one scale per element
  (QKeras does not average a 1-D tensor: ``binary(alpha='auto')`` then returns ``|x|·sign(x)``). Ternary with ``"auto"`` starts from
  ``scale = 2*max|x|/3`` and iterates 5 times: ``t = scale/2``, ``q = sign(x) * (|scale*r(x/scale)| >= t)``
  with ``r(v) = floor(v + 0.5)``, then the least-squares scale.
- Values are ``scale * q``. Stochastic variants sample during training only; at inference they equal the
  deterministic quantizer (``bernoulli`` included, where QKeras stays stochastic: nncodec's choice).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..checks import is_number
from ..errors import ConfigError
from .base import QuantCodes, Quantizer, register_quantizer, ste

__all__ = ["Binary", "Ternary", "StochasticBinary", "StochasticTernary", "Bernoulli", "lsq_scale"]

_EPS = 1e-7


def _channel_dims(x: torch.Tensor) -> tuple[int, ...] | None:
    return tuple(range(1, x.ndim)) if x.ndim > 1 else None


def _reduce(fn, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    dims = _channel_dims(x)
    if dims is None:
        return fn(x).reshape(())
    return fn(x, dim=dims, keepdim=True)


def _po2_round(scale: torch.Tensor) -> torch.Tensor:
    """Nearest power of two, ``2**round(log2(scale + 1e-7))`` with ties to even (QKeras' ``tf.math.round``)."""
    return torch.pow(2.0, torch.round(torch.log(scale + _EPS) / math.log(2.0)))


def lsq_scale(alpha: str, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Least-squares scale per output channel (QKeras ``_get_scale`` for ``auto`` / ``auto_po2``).

    A 1-D tensor has one scale per element, as in QKeras (it does not average a 1-D tensor)."""
    if x.ndim <= 1:
        qx, qq = x * q, q * q
    else:
        qx = _reduce(torch.mean, x * q)
        qq = _reduce(torch.mean, q * q)
    scale = qx / (qq + _EPS)
    return _po2_round(scale) if alpha == "auto_po2" else scale


def _check_alpha(name: str, alpha: Any) -> None:
    if alpha is None or alpha in ("auto", "auto_po2"):
        return
    if is_number(alpha) and alpha > 0:
        return
    raise ConfigError(f"{name}: alpha must be None, a positive number, 'auto' or 'auto_po2', got {alpha!r}")


def _flat_scale(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    scale = torch.as_tensor(scale, dtype=torch.float32)
    return scale.reshape(-1) if scale.numel() > 1 or (scale.ndim and x.ndim > 1) else scale.reshape(())


def _po2_exponent(alpha: Any, scale: torch.Tensor) -> torch.Tensor | None:
    if alpha == "auto_po2" or alpha is None:
        return torch.round(torch.log2(scale)).to(torch.int16) if bool((scale > 0).all()) else None
    return None


@register_quantizer("binary")
class Binary(Quantizer):
    name = "binary"
    bits = 1

    def __init__(self, use_01: bool = False, alpha: Any = None, use_stochastic_rounding: bool = False):
        _check_alpha(self.name, alpha)
        self.use_01, self.alpha = bool(use_01), alpha
        self.signed = not self.use_01

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "binary01" if self.use_01 else "binary"

    def _q(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.sign(x.to(torch.float32))
        k = k + (1.0 - k.abs())
        return (k + 1.0) / 2.0 if self.use_01 else k

    def _scale(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if isinstance(self.alpha, str):
            return lsq_scale(self.alpha, x.to(torch.float32), q)
        return torch.tensor(1.0 if self.alpha is None else float(self.alpha))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        q = self._q(x)
        return self._scale(x, q) * q

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        q = self._q(x)
        scale = _flat_scale(self._scale(x, q), x)
        codes = (q > 0).to(torch.int8)
        scheme = "modified_binary" if self.use_01 else "binary"
        return QuantCodes(scheme, codes, scale, 1, _po2_exponent(self.alpha, scale),
                          bit_tuple=(0, 0, 1) if self.use_01 else (1, 0, 0))

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        if self.use_01:
            cfg["use_01"] = True
        if self.alpha is not None:
            cfg["alpha"] = self.alpha
        return cfg


@register_quantizer("ternary")
class Ternary(Quantizer):
    name = "ternary"
    kind = "ternary"
    bits = 2
    signed = True

    def __init__(self, alpha: Any = None, threshold: float | None = None, use_stochastic_rounding: bool = False,
                 number_of_unrolls: int = 5):
        _check_alpha(self.name, alpha)
        if isinstance(alpha, str) and threshold is not None:
            raise ConfigError("ternary: threshold must be None when alpha is 'auto' or 'auto_po2'")
        if threshold is not None and not (isinstance(threshold, (int, float)) and threshold >= 0):
            raise ConfigError(f"ternary: threshold must be a non-negative number, got {threshold!r}")
        if not isinstance(number_of_unrolls, int) or number_of_unrolls < 1:
            raise ConfigError("ternary: number_of_unrolls must be a positive int")
        self.alpha, self.threshold, self.number_of_unrolls = alpha, threshold, number_of_unrolls

    def _q_and_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        if isinstance(self.alpha, str):
            scale = 2.0 * _reduce(torch.amax, x.abs()) / 3.0
            if self.alpha == "auto_po2":
                scale = _po2_round(scale)
            q = torch.zeros_like(x)
            for _ in range(self.number_of_unrolls):
                thres = scale / 2.0
                v = scale * torch.floor(x / scale + 0.5)
                q = (v.abs() >= thres).to(torch.float32) * torch.sign(x)
                scale = lsq_scale(self.alpha, x, q)
            return q, scale
        thres = 0.33 if self.threshold is None else float(self.threshold)
        q = (x.abs() >= thres).to(torch.float32) * torch.sign(x)
        return q, torch.tensor(1.0 if self.alpha is None else float(self.alpha))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        q, scale = self._q_and_scale(x)
        return scale * q

    def to_codes(self, x: torch.Tensor) -> QuantCodes:
        q, scale = self._q_and_scale(x)
        scale = _flat_scale(scale, x)
        return QuantCodes("ternary", q.to(torch.int8), scale, 2, _po2_exponent(self.alpha, scale),
                          bit_tuple=(-1, 0, 1))

    def get_config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {}
        if self.alpha is not None:
            cfg["alpha"] = self.alpha
        if self.threshold is not None:
            cfg["threshold"] = self.threshold
        if self.number_of_unrolls != 5:
            cfg["number_of_unrolls"] = self.number_of_unrolls
        return cfg


def _std(x: torch.Tensor) -> torch.Tensor:
    return _reduce(lambda t, **kw: torch.std(t, unbiased=False, **kw), x)


def _sample_sign(p: torch.Tensor) -> torch.Tensor:
    q = torch.sign(p - torch.rand_like(p))
    return q + (1.0 - q.abs())


@register_quantizer("stochastic_ternary")
class StochasticTernary(Ternary):
    """Ternary whose training forward samples -1/0/+1 around the threshold (QKeras' sigmoid sampling)."""

    name = "stochastic_ternary"

    def __init__(self, alpha: Any = None, threshold: float | None = None, temperature: float = 8.0,
                 use_real_sigmoid: bool = True, number_of_unrolls: int = 5):
        super().__init__(alpha, threshold, number_of_unrolls=number_of_unrolls)
        self.temperature = float(temperature)

    def __call__(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        if not training or not isinstance(self.alpha, str):
            return super().__call__(x, training)
        xf = x.detach().to(torch.float32)
        _, scale = self._q_and_scale(xf)
        std = _std(xf) + _EPS
        t = scale / (2.0 * std)
        x_norm = xf / std
        q0 = _sample_sign(torch.sigmoid(self.temperature * (x_norm - t)))
        q1 = _sample_sign(torch.sigmoid(self.temperature * (x_norm + t)))
        return ste(x, scale * (q0 + q1) / 2.0)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        if self.temperature != 8.0:
            cfg["temperature"] = self.temperature
        return cfg


@register_quantizer("stochastic_binary")
class StochasticBinary(Binary):
    """Binary whose training forward samples ±1 with probability sigmoid(temperature * x / std)."""

    name = "stochastic_binary"

    def __init__(self, alpha: Any = None, temperature: float = 6.0, use_real_sigmoid: bool = True):
        super().__init__(alpha=alpha)
        self.temperature = float(temperature)

    def __call__(self, x: torch.Tensor, training: bool = False) -> torch.Tensor:
        if not training:
            return self.quantize(x)
        xf = x.detach().to(torch.float32)
        std = _std(xf) + _EPS if isinstance(self.alpha, str) else torch.tensor(1.0)
        q = _sample_sign(torch.sigmoid(self.temperature * xf / std))
        if self.use_01:
            q = (q + 1.0) / 2.0
        return ste(x, self._scale(xf, self._q(xf)) * q)

    def get_config(self) -> dict[str, Any]:
        cfg = {} if self.alpha is None else {"alpha": self.alpha}
        if self.temperature != 6.0:
            cfg["temperature"] = self.temperature
        return cfg


@register_quantizer("bernoulli")
class Bernoulli(StochasticBinary):
    """Stochastic {0, 1}; deterministic ``(x >= 0)`` times the scale at inference."""

    name = "bernoulli"

    def __init__(self, alpha: Any = None, temperature: float = 6.0, use_real_sigmoid: bool = True):
        super().__init__(alpha=alpha, temperature=temperature)
        self.use_01, self.signed = True, False

"""Quantizers (QKeras-compatible spec strings), fake-quant layers and per-layer plans.

The encode-time uniform quantizer (:mod:`nncodec.quant.uniform`) is pure numpy; everything else here
uses torch and is imported only when asked for: ``from nncodec.quant import get_quantizer,
quantize_model`` loads torch at that point, ``import nncodec`` does not.
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_quantizer", "quantize_model", "Plan", "LayerPlan", "Quantizer"]

_LAZY = {"get_quantizer": "layers", "quantize_model": "layers", "Plan": "plan", "LayerPlan": "plan",
         "Quantizer": "base"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")  # layers registers every quantizer
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

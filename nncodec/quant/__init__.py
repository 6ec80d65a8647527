"""Quantizers (QKeras-compatible spec strings), fake-quant layers and per-layer plans.

The encode-time uniform quantizer (:mod:`nncodec.quant.uniform`) is pure numpy; everything else here
uses torch and is imported only when asked for (``import nncodec.quant.layers``).
"""

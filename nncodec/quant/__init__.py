"""Quantizers. The uniform encode-time quantizer is pure numpy; model-side parts import torch lazily."""

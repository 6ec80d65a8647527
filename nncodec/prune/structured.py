"""Structured pruning and widening by layer name: change the number of filters / units of layers.

A thin layer over :mod:`nncodec.prune.graph`: a layer name stands for the width group it produces
(its coupled channels through residual sums, depthwise convs and norms change with it). Shrinking keeps
the strongest channels in their original order; widening appends channels that start silent, so a
widened network computes exactly what the original did until it is trained. The classifier (any group
reaching the model output) keeps its width; asking for it is a ConfigError.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .graph import resize_groups, width_groups

__all__ = ["resize_layers", "resizable_layers"]


def resizable_layers(model: nn.Module, example_inputs: Any) -> list[str]:
    """Names of the width groups (each named by its first producer) whose width can change."""
    return [g.name for g in width_groups(model, example_inputs)]


def resize_layers(model: nn.Module, widths: dict[str, float], example_inputs: Any, *,
                  importance: str = "l1") -> nn.Module:
    """A copy of ``model`` with the width of each named layer's group multiplied by its factor.

    ``widths`` maps layer (or group) names to multipliers (0.5 halves the channels, 2 doubles them); the
    new width is ``max(1, round(width * multiplier))``. ``example_inputs``: an input shape without the
    batch dimension, a tensor or a tuple of tensors.
    """
    return resize_groups(model, example_inputs, widths, importance=importance)

"""Reference models used by the demo, the tests and the benchmarks."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

__all__ = ["seed_example_cnn"]


def seed_example_cnn(in_channels: int = 1, num_classes: int = 10, filters: tuple[int, int, int] = (16, 32, 64),
                     image_size: int = 28) -> nn.Sequential:
    """The seed's worked example: conv(16)-relu-conv(32)-relu-conv(64)-relu-flatten-dense(10).

    3x3 kernels, stride 1, ``valid`` padding: with a 28x28x1 input this is the network whose QTools energy
    is 5,617,341 pJ (int8 weights / int16 accumulators) in the seed's memory setting.
    The softmax is left to the loss; module names follow the seed (conv2d_0_m, act0_m, ...).
    """
    size = image_size
    for _ in range(3):
        size = size - 2
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    prev = in_channels
    for i, f in enumerate(filters):
        layers[f"conv2d_{i}_m"] = nn.Conv2d(prev, f, 3)
        layers[f"act{i}_m"] = nn.ReLU()
        prev = f
    layers["flatten"] = nn.Flatten()
    layers["dense"] = nn.Linear(prev * size * size, num_classes)
    return nn.Sequential(layers)


"""Reference models used by the demo, the tests and the benchmarks."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from .errors import ConfigError

__all__ = ["seed_example_cnn", "ResNet8", "MobileNetV2Small", "RecurrentClassifier"]


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



class _BasicBlock(nn.Module):
    """Two 3x3 convs with batch-norms and a residual sum (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet8(nn.Module):
    """ResNet-8 (MLPerf Tiny's image classifier shape): a 3x3 stem and three basic blocks (16, 32, 64
    channels, strides 1, 2, 2), global average pooling and a linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = _BasicBlock(width, width, 1)
        self.stage2 = _BasicBlock(width, 2 * width, 2)
        self.stage3 = _BasicBlock(2 * width, 4 * width, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, 3x3 depthwise, 1x1 linear projection; a residual sum when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class MobileNetV2Small(nn.Module):
    """A MobileNetV2-style depthwise net for small images: stem conv (stride 2), four inverted residual
    blocks (expansion 4; two with residual sums), global average pooling, linear classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU6())
        self.blocks = nn.Sequential(_InvertedResidual(width, width, 1, 4), _InvertedResidual(width, 2 * width, 2, 4),
                                    _InvertedResidual(2 * width, 2 * width, 1, 4),
                                    _InvertedResidual(2 * width, 4 * width, 2, 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class RecurrentClassifier(nn.Module):
    """A GRU (or LSTM) over a ``[batch, time, features]`` sequence; the last step's state feeds a linear classifier."""

    def __init__(self, features: int = 1, hidden: int = 64, num_classes: int = 2, layers: int = 2, cell: str = "gru"):
        super().__init__()
        cells = {"gru": nn.GRU, "lstm": nn.LSTM}
        if cell not in cells:
            raise ConfigError(f"cell must be 'gru' or 'lstm', got {cell!r}")
        self.rnn = cells[cell](features, hidden, num_layers=layers, batch_first=True)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])

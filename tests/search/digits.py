"""Small real data for search tests: sklearn's 8x8 digits and a small CNN trained on them (seconds)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from nncodec.datasets import load_digits, split
from nncodec.search import ClassifierTask, SearchSpace
from nncodec.train import train_classifier

INPUT = (1, 8, 8)
KERNELS = ("ternary(alpha='auto_po2')", "quantized_bits({b},{i},1)")
BITS = {"kernel": {"conv": (4, 8), "dense": (4, 8)}, "activation": {"conv": (4, 8), "dense": (8,)},
        "bias": {"conv": (8,), "dense": (8,)}}


def digits_cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


def bn_cnn(width: int = 16) -> nn.Sequential:
    """Two conv + batch-norm + relu blocks, global pooling, a classifier (for the batch-norm statistics tests)."""
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))


@functools.lru_cache(maxsize=1)
def data():
    x, y = load_digits()
    return split(x, y, 0.25, 0)


def trained_reference(epochs: int = 6) -> nn.Sequential:
    torch.manual_seed(0)
    x_train, y_train, _, _ = data()
    return train_classifier(digits_cnn(), x_train, y_train, epochs=epochs, lr=3e-3)


def space(model: nn.Module, widths=(0.5, 1.0, 2.0)) -> SearchSpace:
    x_train = data()[0]
    return SearchSpace.from_model(model, INPUT, x_train[:128], kernels=KERNELS, bits=BITS, widths=widths)


def task(proxy_fraction: float = 0.5) -> ClassifierTask:
    x_train, y_train, x_test, y_test = data()
    return ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=proxy_fraction, lr=3e-3)

"""A small built-in classifier trainer for users who bring ``(X, y)`` tensors (CPU, deterministic)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["train_classifier", "accuracy"]

log = logging.getLogger(__name__)


def shuffled_batches(index: torch.Tensor | int, batch_size: int, seed: int | torch.Generator
                     ) -> Iterator[torch.Tensor]:
    """The example indices ``index`` (an int ``n``: ``0 .. n-1``) in a seeded random order, ``batch_size`` at a
    time (the last batch may be shorter). ``seed``: an int (a fresh generator) or a generator, whose state
    advances (one permutation per call, drawn when the first batch is taken)."""
    gen = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    n = index if isinstance(index, int) else len(index)
    order = torch.randperm(n, generator=gen)
    if not isinstance(index, int):
        order = index[order]
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 5, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Train ``model`` in place with Adam and cross-entropy; returns it. Seeded, so repeatable on CPU."""
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in shuffled_batches(len(xt), batch_size, gen):
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        log.debug("epoch %d loss %.4f", epoch, total / len(xt))
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Top-1 accuracy as a fraction."""
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[start:start + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[start:start + batch_size]).sum())
    return correct / len(x) if len(x) else 0.0

"""What the search trains and measures: the user's ``train_fn`` / ``eval_fn``, or a built-in classifier task."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..train import accuracy

__all__ = ["Task", "ClassifierTask", "FunctionTask"]


class Task:
    """``train_epoch(model, epoch, proxy)`` trains one epoch (``proxy``: the cheap budget used for trials);
    ``evaluate(model)`` returns the accuracy as a fraction (higher is better)."""

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        raise NotImplementedError

    def evaluate(self, model: nn.Module) -> float:
        raise NotImplementedError


@dataclass
class FunctionTask(Task):
    train_fn: Callable[[nn.Module, int], None]
    eval_fn: Callable[[nn.Module], float]

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        self.train_fn(model, epoch)

    def evaluate(self, model: nn.Module) -> float:
        return float(self.eval_fn(model))


class ClassifierTask(Task):
    """Cross-entropy training with Adam on ``(x_train, y_train)``; accuracy on ``(x_val, y_val)``.

    Proxy epochs use a fixed seeded ``proxy_fraction`` of the training set.
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                 batch_size: int = 64, lr: float = 1e-3, proxy_fraction: float = 0.5, seed: int = 0):
        if len(x_train) != len(y_train) or len(x_val) != len(y_val) or not len(x_train) or not len(x_val):
            raise ConfigError("classifier task needs non-empty, matching (x, y) train and validation sets")
        if not 0 < proxy_fraction <= 1:
            raise ConfigError("proxy_fraction must be in (0, 1]")
        self.x_train, self.y_train = torch.as_tensor(x_train), torch.as_tensor(y_train)
        self.x_val, self.y_val = np.asarray(x_val), np.asarray(y_val)
        self.batch_size, self.lr, self.seed = batch_size, lr, seed
        n = max(1, int(len(x_train) * proxy_fraction))
        self._optimizers: weakref.WeakKeyDictionary[nn.Module, torch.optim.Optimizer] = weakref.WeakKeyDictionary()
        self.proxy_index = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:n]

    def train_epoch(self, model: nn.Module, epoch: int, proxy: bool) -> None:
        idx = self.proxy_index if proxy else torch.arange(len(self.x_train))
        opt = self._optimizers.get(model)
        if opt is None:
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
            self._optimizers[model] = opt
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        order = idx[torch.randperm(len(idx), generator=gen)]
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for start in range(0, len(order), self.batch_size):
            b = order[start:start + self.batch_size]
            opt.zero_grad()
            loss_fn(model(self.x_train[b]), self.y_train[b]).backward()
            opt.step()
        model.eval()

    def evaluate(self, model: nn.Module) -> float:
        return accuracy(model, self.x_val, self.y_val)

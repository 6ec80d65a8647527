"""Helpers shared by the unit tests (not a test module)."""

from __future__ import annotations

from typing import Any

import torch


def no_grad_forward(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``forward(model, batch)`` run under ``torch.no_grad``: an output without gradient (what a deployed
    inference forward gives), for the paths that need a differentiable one."""
    with torch.no_grad():
        return model(batch)

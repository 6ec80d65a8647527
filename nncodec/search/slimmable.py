"""Nested widths (slimmable networks): every narrower sub-network is a channel prefix of the full one.

A width ``w`` keeps the first ``ceil(w * C)`` output channels of every Conv/Linear layer but the last (the
classes), and the matching leading input channels of the next layer (after a ``Flatten``, the leading
``kept * H * W`` features, since flattening is channel-major). :func:`train_slimmable` trains all widths
jointly (one loss per width, summed each step), so each sub-network is usable; :func:`width_shapes` gives
the tensor shapes of a width for ``nncodec.encode(model, operating_points=[{"width": 0.5, ...}])``, and
:func:`narrow_topology` rebuilds the sub-network's module tree at load time.

Supported: ``nn.Sequential`` trees of Conv1d/Conv2d (groups = 1), Linear, ReLU-like activations, pooling,
Flatten and Dropout; BatchNorm (whose statistics differ per width) is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..train import shuffled_batches

__all__ = ["width_shapes", "forward_at_width", "train_slimmable", "narrow_topology", "points_with_widths",
           "sub_network"]

log = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d)


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            continue
        if any(True for _ in m.children()) and not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise ConfigError(f"slimmable widths need an nn.Sequential tree; {name!r} ({type(m).__name__}) is not")
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise ConfigError(f"slimmable widths do not support BatchNorm ({name!r}): its statistics differ per width")
        if isinstance(m, _CONV) and m.groups != 1:
            raise ConfigError(f"slimmable widths need groups=1 convolutions ({name!r} has {m.groups})")
        out.append((name, m))
    return out


def _kept(width: float, channels: int) -> int:
    if not (isinstance(width, (int, float)) and 0 < width <= 1):
        raise ConfigError(f"a width must be a number in (0, 1], got {width!r}")
    return max(1, math.ceil(width * channels - 1e-9))


def width_shapes(model: nn.Module, width: float) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` of the sub-network of ``model`` at ``width`` (weights and biases)."""
    leaves = _leaves(model)
    weighted = [i for i, (_, m) in enumerate(leaves) if isinstance(m, (*_CONV, nn.Linear))]
    if not weighted:
        raise ConfigError("the model has no Conv/Linear layer to narrow")
    shapes: dict[str, tuple[int, ...]] = {}
    prev_out: tuple[int, int] | None = None  # (kept, full) output channels of the previous weight layer
    for i in weighted:
        name, m = leaves[i]
        full_out = m.out_channels if isinstance(m, _CONV) else m.out_features
        out = full_out if i == weighted[-1] else _kept(width, full_out)
        full_in = m.in_channels if isinstance(m, _CONV) else m.in_features
        if prev_out is None:
            kept_in = full_in
        elif full_in == prev_out[1]:
            kept_in = prev_out[0]
        elif full_in % prev_out[1] == 0:  # after Flatten: channel-major blocks of H*W features
            kept_in = prev_out[0] * (full_in // prev_out[1])
        else:
            raise ConfigError(f"cannot relate the {full_in} inputs of {name!r} to the {prev_out[1]} outputs before it")
        prefix = f"{name}." if name else ""
        shapes[prefix + "weight"] = (out, kept_in, *m.weight.shape[2:])
        if m.bias is not None:
            shapes[prefix + "bias"] = (out,)
        prev_out = (out, full_out)
    return shapes


def sub_network(model: nn.Module, width: float) -> nn.Module:
    """A copy of ``model`` narrowed to ``width`` (the leading channels' weights)."""
    from ..topology import build, describe

    shapes = width_shapes(model, width)
    small = build(narrow_topology(describe(model), shapes))
    state = model.state_dict()
    small.load_state_dict({n: (state[n][tuple(slice(0, d) for d in shapes[n])] if n in shapes else state[n])
                           for n in state})
    return small


def forward_at_width(model: nn.Module, x: torch.Tensor, width: float) -> torch.Tensor:
    """``model(x)`` as the sub-network at ``width`` computes it, with the full model's parameters (for training)."""
    shapes = width_shapes(model, width)
    for name, m in _leaves(model):
        prefix = f"{name}." if name else ""
        if isinstance(m, (*_CONV, nn.Linear)):
            w = m.weight[tuple(slice(0, d) for d in shapes[prefix + "weight"])]
            b = m.bias[:w.shape[0]] if m.bias is not None else None
            if isinstance(m, nn.Linear):
                x = F.linear(x, w, b)
            else:
                conv = F.conv2d if isinstance(m, nn.Conv2d) else F.conv1d
                x = conv(x, w, b, m.stride, m.padding, m.dilation, 1)
        else:
            x = m(x)
    return x


def train_slimmable(model: nn.Module, x: np.ndarray, y: np.ndarray, widths: Sequence[float], *, epochs: int = 3,
                    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, progress: bool = False) -> nn.Module:
    """Train ``model`` in place so that every width in ``widths`` is a usable classifier: each step sums the
    cross-entropy of the sub-network at every width (the full width included, whether listed or not)."""
    widths = sorted(set(float(w) for w in widths) | {1.0})
    for w in widths:
        _kept(w, 1)
    width_shapes(model, widths[0])  # refuses unsupported models before training
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = range(epochs)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="slimmable training", unit="epoch")
    model.train()
    for epoch in steps:
        total = 0.0
        for idx in shuffled_batches(len(xt), batch_size, gen):
            opt.zero_grad()
            loss = sum(F.cross_entropy(forward_at_width(model, xt[idx], w), yt[idx]) for w in widths)
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            total += float(loss.detach()) * len(idx)  # type: ignore[union-attr]
        log.debug("slimmable epoch %d loss %.4f", epoch, total / len(xt))
    model.eval()
    return model


def narrow_topology(topology: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    """``topology`` with the channel counts of its Conv/Linear layers set from ``shapes`` (their weights')."""
    topo = copy.deepcopy(dict(topology))

    def visit(node: dict, path: str) -> None:
        for child_name, child in node.get("children", []):
            visit(child, f"{path}{child_name}.")
        shape = shapes.get(f"{path}weight")
        kind = node.get("type", "")
        if shape is None or "args" not in node:
            return
        args = node["args"]
        if kind.endswith("Linear"):
            args["out_features"], args["in_features"] = int(shape[0]), int(shape[1])
        elif "Conv" in kind:
            args["out_channels"], args["in_channels"] = int(shape[0]), int(shape[1]) * int(args.get("groups", 1))

    visit(topo["root"], "")
    return topo


def points_with_widths(model: nn.Module, points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Operating points with a ``width`` key turned into the ``shapes`` the scalable encoder takes."""
    out = []
    for k, p in enumerate(points):
        p = dict(p) if isinstance(p, Mapping) else p
        if isinstance(p, dict) and "width" in p:
            if "shapes" in p:
                raise ConfigError(f"operating point {k}: give width or shapes, not both")
            p["shapes"] = width_shapes(model, p.pop("width"))
        out.append(p)
    return out

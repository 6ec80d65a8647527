"""Argument checks that some PyTorch kernels lack, run before the operator is called.

A stored graph is untrusted input: its nodes' arguments come from the stream. Most ATen operators check
their arguments and raise, which the interpreter turns into a :class:`~nncodec.graph.schema.GraphError`.
A few do not on every device: the recurrent operators on ``meta`` tensors (the interpreter's dry run)
read hidden states of the wrong shape out of bounds and crash the process. The guards here refuse such
arguments first. ``GUARDS`` maps an operator overload to its guard, ``guard(args, kwargs)``, which raises
:class:`GraphError` naming what is wrong; an operator without a guard relies on its own checks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .schema import GraphError
from ..checks import is_int

__all__ = ["GUARDS", "Guard"]

Guard = Callable[[Sequence[Any], dict[str, Any]], None]


def _arg(args: Sequence[Any], kwargs: dict[str, Any], i: int, name: str) -> Any:
    return args[i] if i < len(args) else kwargs.get(name)


def _tensor(v: Any, what: str) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise GraphError(f"{what} must be a tensor, got {type(v).__name__}")
    return v


def _hidden_states(hx: Any, n: int, what: str) -> list[torch.Tensor]:
    if n == 1 and isinstance(hx, torch.Tensor):
        return [hx]
    if not isinstance(hx, (list, tuple)) or len(hx) != n:
        raise GraphError(f"{what}: expected {n} hidden state tensor(s)")
    return [_tensor(h, f"{what} hidden state") for h in hx]


def _rnn_guard(states: int) -> Guard:
    """aten.lstm.input / gru.input / rnn_*.input: (input, hx, params, has_biases, num_layers, dropout,
    train, bidirectional, batch_first). The input is 3-D (the modules add the batch dimension of an
    unbatched input before calling the operator); every hidden state is (layers × directions, batch, size)."""

    def guard(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        what = "recurrent layer"
        x = _tensor(_arg(args, kwargs, 0, "input"), f"{what} input")
        hs = _hidden_states(_arg(args, kwargs, 1, "hx"), states, what)
        layers, bidirectional = _arg(args, kwargs, 4, "num_layers"), _arg(args, kwargs, 7, "bidirectional")
        batch_first = _arg(args, kwargs, 8, "batch_first")
        if not is_int(layers) or layers < 1:
            raise GraphError(f"{what}: num_layers must be a positive integer, got {layers!r}")
        if x.dim() != 3:
            raise GraphError(f"{what}: input must be 3-D, got {x.dim()}-D")
        want = (layers * (2 if bidirectional else 1), x.shape[0] if batch_first else x.shape[1])
        for h in hs:
            if h.dim() != 3 or tuple(h.shape[:-1]) != want:
                raise GraphError(f"{what}: hidden state of shape {list(h.shape)} does not fit input "
                                 f"{list(x.shape)} with {layers} layer(s) (leading sizes {list(want)})")

    return guard


def _cell_guard(states: int) -> Guard:
    """aten.lstm_cell / gru_cell / rnn_tanh_cell: (input, hx, w_ih, w_hh, ...). Hidden states have the
    input's batch (none for a 1-D input)."""

    def guard(args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        what = "recurrent cell"
        x = _tensor(_arg(args, kwargs, 0, "input"), f"{what} input")
        if x.dim() not in (1, 2):
            raise GraphError(f"{what}: input must be 1-D or 2-D, got {x.dim()}-D")
        for h in _hidden_states(_arg(args, kwargs, 1, "hx"), states, what):
            if h.dim() != x.dim() or tuple(h.shape[:-1]) != tuple(x.shape[:-1]):
                raise GraphError(f"{what}: hidden state of shape {list(h.shape)} does not fit input "
                                 f"{list(x.shape)}")

    return guard


GUARDS: dict[Any, Guard] = {
    torch.ops.aten.lstm.input: _rnn_guard(2),
    torch.ops.aten.gru.input: _rnn_guard(1),
    torch.ops.aten.rnn_tanh.input: _rnn_guard(1),
    torch.ops.aten.rnn_relu.input: _rnn_guard(1),
    torch.ops.aten.lstm_cell.default: _cell_guard(2),
    torch.ops.aten.gru_cell.default: _cell_guard(1),
    torch.ops.aten.rnn_tanh_cell.default: _cell_guard(1),
}

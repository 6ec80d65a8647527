"""Guards for operators whose kernels do not check their arguments on every device (a stored graph is
untrusted): recurrent layers on ``meta`` tensors crash the process on hidden states of the wrong shape."""

from __future__ import annotations

import pytest
import torch

from nncodec.graph.guards import GUARDS
from nncodec.graph.schema import GraphError

AT = torch.ops.aten


def _rnn_args(cls: type, *, layers: int, bidirectional: bool, batch_first: bool) -> list:
    m = cls(3, 5, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    d = 2 if bidirectional else 1
    x = torch.zeros((2, 4, 3) if batch_first else (4, 2, 3))  # batch 2, 4 steps
    h = torch.zeros((layers * d, 2, 5))
    hx = [h, h.clone()] if cls is torch.nn.LSTM else h
    return [x, hx, m._flat_weights, True, layers, 0.0, False, bidirectional, batch_first]


OPS = [(torch.nn.LSTM, AT.lstm.input), (torch.nn.GRU, AT.gru.input), (torch.nn.RNN, AT.rnn_tanh.input)]


@pytest.mark.parametrize("cls,op", OPS)
@pytest.mark.parametrize("layers,bidirectional,batch_first", [(1, False, False), (2, True, False), (2, False, True)])
def test_guard_passes_what_the_operator_runs(cls, op, layers, bidirectional, batch_first) -> None:
    args = _rnn_args(cls, layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    GUARDS[op](args, {})
    op(*args)  # and the operator agrees on CPU
    args[0] = args[0][0]  # 2-D: the modules add the batch dimension before calling the operator
    with pytest.raises(GraphError, match="3-D"):
        GUARDS[op](args, {})


@pytest.mark.parametrize("cls,op", OPS)
def test_hidden_states_that_do_not_fit_are_refused_before_the_meta_kernel(cls, op) -> None:
    meta = torch.device("meta")
    args = _rnn_args(cls, layers=2, bidirectional=False, batch_first=True)
    args = [a.to(meta) if isinstance(a, torch.Tensor) else a for a in args]
    args[2] = [w.to(meta) for w in args[2]]
    wrong = torch.zeros(1, 2, 5, device=meta)  # one layer's worth for a 2-layer net
    args[1] = [args[1][0], wrong] if cls is torch.nn.LSTM else wrong
    with pytest.raises(GraphError, match="hidden state of shape"):
        GUARDS[op](args, {})
    args[4] = 0
    with pytest.raises(GraphError, match="num_layers"):
        GUARDS[op](args, {})


def test_cell_guards() -> None:
    cell = torch.nn.LSTMCell(3, 5)
    x, h = torch.zeros(2, 3), torch.zeros(2, 5)
    args = [x, [h, h], cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    GUARDS[AT.lstm_cell.default](args, {})
    args[1] = [h, torch.zeros(3, 5)]
    with pytest.raises(GraphError, match="does not fit"):
        GUARDS[AT.lstm_cell.default](args, {})
    with pytest.raises(GraphError, match="2 hidden state"):
        GUARDS[AT.lstm_cell.default]([x, h], {})


def test_an_operator_failing_with_an_arithmetic_error_is_a_graph_error() -> None:
    """A stride of 0 (JSON ``false``) makes PyTorch's meta convolution divide by zero: the dry run must turn
    that into the library's GraphError, as it does for the operators' RuntimeErrors."""
    import json

    import nncodec
    from nncodec.bitstream.constants import UNIT_TOPOLOGY
    from nncodec.conformance.forge import join_units, split_units

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    data = nncodec.encode(model, topology=True, example_inputs=(torch.zeros(1, 3, 8, 8),))
    header, units = split_units(data)
    topo = next(json.loads(u[3]) for u in units if u[0] == UNIT_TOPOLOGY)
    conv = next(n for n in topo["nodes"] if "conv" in n["op"])
    conv["args"] = conv["args"][:3] + [[False, 2]]  # the stride argument
    raw = json.dumps(topo).encode()
    forged = join_units(header, [(u[0], u[1], u[2], raw) if u[0] == UNIT_TOPOLOGY else u for u in units])
    with pytest.raises(GraphError, match="fails on meta tensors"):
        nncodec.load_model(forged)

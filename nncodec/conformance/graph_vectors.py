"""Conformance vectors for graph topologies (FORMAT.md §11): small models with their expected output on a
stated input, and hostile graphs with the error a rebuilding decoder must raise.

Each entry's manifest record carries, besides the usual ``expect.tensors``, a ``graph`` object:
``{"inputs": [...], "outputs": [...], "tolerance": {...}}`` for a valid graph (values inline, C order) or
``{"error": "UnknownOperatorError"}`` for a hostile one. The tensor units of every one of these vectors
decode; only rebuilding the model fails for the hostile ones. Expected outputs are computed with the
original torch module before encoding, never by the decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError, NNCodecError

__all__ = ["GRAPH_VECTORS", "graph_inputs", "check_graph", "edit_topology"]

TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def graph_inputs(specs: list[dict[str, Any]]) -> list[np.ndarray]:
    """The stated inputs: element ``i`` (C order) is ``((37 i) mod 64 - 32) / 16`` for float inputs and
    ``(7 i) mod 20`` for integer inputs (exact in every float format)."""
    out = []
    for s in specs:
        i = np.arange(int(np.prod(s["shape"])), dtype=np.int64)
        values = ((37 * i) % 64 - 32) / 16 if s["dtype"].startswith("float") else (7 * i) % 20
        out.append(values.astype(s["dtype"]).reshape(s["shape"]))
    return out


def _models() -> dict[str, tuple[Any, list[dict[str, Any]]]]:
    import torch
    from torch import nn

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, 2, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(6)
            self.conv2 = nn.Conv2d(6, 6, 3, 1, 1)
            self.proj = nn.Conv2d(3, 6, 1, 2)
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv2(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.relu(y + self.proj(x)).mean(dim=(2, 3)))

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(3, 5, num_layers=2, batch_first=True)
            self.gru = nn.GRU(5, 4, batch_first=True)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y, _ = self.lstm(x)
            z, h = self.gru(y)
            return self.fc(z[:, -1]), h

    class TransformerBlock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.block = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.block(self.embed(ids)).mean(1))

    torch.manual_seed(20261201)
    residual = Residual()
    residual.bn1.running_mean.uniform_(-0.3, 0.3)
    residual.bn1.running_var.uniform_(0.5, 1.5)
    return {
        "residual": (residual.eval(), [{"dtype": "float32", "shape": [1, 3, 8, 8]}]),
        "recurrent": (Recurrent().eval(), [{"dtype": "float32", "shape": [1, 4, 3]}]),
        "transformer": (TransformerBlock().eval(), [{"dtype": "int64", "shape": [1, 6]}]),
    }


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, (tuple, list)):
        return [x for v in value for x in _leaves(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _leaves(v)]
    return [value]


def _valid(key: str) -> Callable[[], tuple[bytes, dict[str, np.ndarray], dict[str, Any]]]:
    def build() -> tuple[bytes, dict[str, np.ndarray], dict[str, Any]]:
        import torch

        from ..torch_io import encode

        model, specs = _models()[key]
        inputs = [torch.from_numpy(x) for x in graph_inputs(specs)]
        outputs = [o.detach().numpy() for o in _leaves(model(*inputs))]  # grad mode: the unfused reference path
        data = encode(model, example_inputs=tuple(inputs), level=19)
        expected = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        graph = {"inputs": [dict(s, values=x.reshape(-1).tolist()) for s, x in zip(specs, graph_inputs(specs))],
                 "outputs": [{"dtype": str(o.dtype), "shape": list(o.shape), "values": o.reshape(-1).tolist()}
                             for o in outputs],
                 "tolerance": TOLERANCE}
        return data, expected, graph
    return build


def edit_topology(data: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    """``data`` with its topology unit's JSON changed in place by ``edit`` (CRCs kept valid)."""
    from ..bitstream.constants import UNIT_TOPOLOGY
    from .forge import join_units, split_units

    header, units = split_units(data)
    forged = []
    for u in units:
        if u[0] == UNIT_TOPOLOGY:
            topo = json.loads(u[3])
            edit(topo)
            u = (u[0], u[1], u[2], json.dumps(topo, sort_keys=True, separators=(",", ":")).encode())
        forged.append(u)
    return join_units(header, forged)


def _hostile(edit: Callable[[dict[str, Any]], None], error: str):  # noqa: ANN202
    def build() -> tuple[bytes, dict[str, np.ndarray], dict[str, Any]]:
        data, expected, _ = _valid("residual")()
        return edit_topology(data, edit), expected, {"error": error}
    return build


def _node(topo: dict[str, Any], op: str) -> dict[str, Any]:
    return next(n for n in topo["nodes"] if n["op"] == op)


def _unknown_op(topo: dict[str, Any]) -> None:
    _node(topo, "aten.relu.default")["op"] = "aten.empty.memory_format"


def _dangling(topo: dict[str, Any]) -> None:
    _node(topo, "aten.add.Tensor")["args"][1] = {"ref": "not_defined_anywhere"}


def _shape_mismatch(topo: dict[str, Any]) -> None:
    t = next(t for t in topo["tensors"] if t.get("target") == "conv1.weight")
    t["shape"] = [t["shape"][0] + 1] + t["shape"][1:]


def _malformed(topo: dict[str, Any]) -> None:
    _node(topo, "aten.linear.default")["args"] = {"input": 0}


def _schema_mismatch(topo: dict[str, Any]) -> None:
    _node(topo, "aten.relu.default")["args"].append(3)


#: name -> (folder, what it exercises, builder returning (stream, expected tensors, graph expectation))
GRAPH_VECTORS: dict[str, tuple[str, str, Callable[[], tuple[bytes, dict[str, np.ndarray], dict[str, Any]]]]] = {
    "graph_residual": ("valid", "graph topology: conv/BN/ReLU with a projection shortcut, expected output",
                       _valid("residual")),
    "graph_recurrent": ("valid", "graph topology: 2-layer LSTM then GRU (tuple output), expected outputs",
                        _valid("recurrent")),
    "graph_transformer_block": ("valid", "graph topology: embedding, TransformerEncoderLayer, expected output",
                                _valid("transformer")),
    "graph_unknown_operator": ("invalid", "graph topology calling aten.empty.memory_format (not allowed)",
                               _hostile(_unknown_op, "UnknownOperatorError")),
    "graph_dangling_reference": ("invalid", "graph node referring to an undefined value",
                                 _hostile(_dangling, "DanglingReferenceError")),
    "graph_shape_mismatch": ("invalid", "graph declaring conv1.weight with another shape than its tensor unit",
                             _hostile(_shape_mismatch, "GraphTensorMismatchError")),
    "graph_malformed_payload": ("invalid", "graph node whose args are an object, not a list",
                                _hostile(_malformed, "GraphError")),
    "graph_schema_mismatch": ("invalid", "graph node passing relu an extra positional argument",
                              _hostile(_schema_mismatch, "GraphError")),
}


def check_graph(data: Any, graph: dict[str, Any]) -> str | None:
    """Rebuild the model of a graph vector and hold it to its ``graph`` expectation; a problem or None."""
    import torch

    from ..torch_io import load_model

    try:
        model = load_model(data)
        if "error" in graph:
            return f"rebuilt, expected {graph['error']}"
        inputs = [torch.from_numpy(np.asarray(s["values"], dtype=s["dtype"]).reshape(s["shape"]))
                  for s in graph["inputs"]]
        with torch.no_grad():
            got = [o.numpy() for o in _leaves(model(*inputs))]
    except NNCodecError as exc:
        if graph.get("error") == type(exc).__name__:
            return None
        return f"rebuilding raised {type(exc).__name__}: {exc}"
    want = graph["outputs"]
    if len(got) != len(want):
        return f"{len(got)} outputs, expected {len(want)}"
    tol = graph.get("tolerance", TOLERANCE)
    for i, (g, w) in enumerate(zip(got, want)):
        w_arr = np.asarray(w["values"], dtype=w["dtype"]).reshape(w["shape"])
        if g.shape != w_arr.shape or g.dtype != w_arr.dtype:
            return f"output {i}: {g.dtype} {list(g.shape)}, expected {w_arr.dtype} {list(w_arr.shape)}"
        if not np.allclose(g, w_arr, rtol=tol["rtol"], atol=tol["atol"]):
            return f"output {i} differs from the expected values by up to {float(np.abs(g - w_arr).max()):.3g}"
    return None


def require_graph(name: str, data: bytes, graph: dict[str, Any]) -> None:
    """The generator's check of a graph vector before it is written."""
    problem = check_graph(data, graph)
    if problem is not None:
        raise ConfigError(f"vector {name}: {problem}")

"""Capturing a model's graph with ``torch.export`` and writing it as an ``nncodec.graph`` topology (plain data).

The graph is captured in eval mode on the example inputs and is specialised to their shapes and dtypes
(FORMAT.md §11). For fake-quant models the graph is the one of the weights as the stream stores them:
weight quantizers whose codes the stream holds are left out (decoding already gives the quantized
values), activation quantizers stay and export as ordinary ATen operators (round, clamp, mul, ...).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import math
import operator
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..limits import DEFAULT_LIMITS
from ..topology import TopologyError
from .schema import ALLOWED_OPERATORS, GETITEM, GRAPH_FORMAT, GRAPH_VERSION, validate

__all__ = ["capture_graph", "deployed_view"]

log = logging.getLogger(__name__)

_DTYPE_NAMES = {
    torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32",
    torch.int64: "int64", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.uint16: "uint16", torch.uint32: "uint32", torch.uint64: "uint64",
}
_MEMORY_FORMATS = {torch.contiguous_format: "contiguous_format", torch.preserve_format: "preserve_format",
                   torch.channels_last: "channels_last", torch.channels_last_3d: "channels_last_3d"}
_HINT = "; decode it with nncodec.load_into(your_model, src) instead"


def deployed_view(model: nn.Module, quantized: bool = True) -> nn.Module:
    """``model`` as the stream stores it: with ``quantized``, the weight and bias quantizers (and pruning masks)
    of fake-quant layers whose codes :func:`~nncodec.quant.export.quantized_state` stores are removed from a
    copy (their decoded values are already quantized and masked). Returns ``model`` itself when nothing changes."""
    from ..quant.layers import _QuantWeights

    layers = [n for n, m in model.named_modules() if isinstance(m, _QuantWeights)]
    if not quantized or not layers:
        return model
    out = copy.deepcopy(model)
    for name in layers:
        m = out.get_submodule(name)
        if m.kernel_quantizer is not None and m.weight.dtype == torch.float32:
            m.kernel_quantizer = None
            m._buffers.pop("weight_mask", None)
        if m.bias_quantizer is not None and m.bias is not None and m.bias.dtype == torch.float32:
            m.bias_quantizer = None
    return out


def _op_name(target: Any) -> str:
    if target is operator.getitem:
        return GETITEM
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        return f"aten.{target._opname}.{target._overloadname}"
    return getattr(target, "__name__", repr(target))


def _arg(v: Any, where: str) -> Any:
    if isinstance(v, torch.fx.Node):
        return {"ref": v.name}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if math.isfinite(v):
            return v
        return {"float": "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")}
    if isinstance(v, (list, tuple)):
        return [_arg(x, where) for x in v]
    if isinstance(v, torch.dtype) and v in _DTYPE_NAMES:
        return {"dtype": _DTYPE_NAMES[v]}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if v is torch.strided:
        return {"layout": "strided"}
    if isinstance(v, torch.memory_format) and v in _MEMORY_FORMATS:
        return {"memory_format": _MEMORY_FORMATS[v]}
    raise TopologyError(f"{where} has an argument the graph format cannot hold: {v!r} ({type(v).__name__})"
                        + _HINT)


def _structure(spec: Any, counter: list[int]) -> Any:
    """Our output structure from a pytree spec: leaves numbered in order; tuple/list/dict kept, other
    containers with string keys (such as transformers' ``ModelOutput``) become dicts."""
    if spec.is_leaf():
        counter[0] += 1
        return counter[0] - 1
    children = [_structure(c, counter) for c in spec.children()]
    if spec.type in (tuple, list):
        return {"tuple" if spec.type is tuple else "list": children}
    keys = spec.context
    if isinstance(keys, (list, tuple)) and all(isinstance(k, str) for k in keys) and len(keys) == len(children):
        if spec.type is not dict:
            log.info("output container %s is rebuilt as a dict", getattr(spec.type, "__name__", spec.type))
        return {"dict": [[k, c] for k, c in zip(keys, children)]}
    raise TopologyError(f"the model returns a {getattr(spec.type, '__name__', spec.type)}, which the graph format "
                        "cannot rebuild (return tensors, tuples, lists or dicts)" + _HINT)


def _constant(name: str, t: torch.Tensor) -> dict[str, Any]:
    if t.dtype not in _DTYPE_NAMES:
        raise TopologyError(f"constant {name!r} has unsupported dtype {t.dtype}" + _HINT)
    t = t.detach().to("cpu").contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    data = raw.numpy().astype(raw.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
    return {"name": name, "kind": "constant", "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
            "data": base64.b64encode(data).decode("ascii")}


def capture_graph(model: nn.Module, example_inputs: Sequence[Any], *, quantized: bool = True,
                  stream_tensors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``nncodec.graph`` topology of ``model`` run on ``example_inputs`` (a tuple of tensors).

    ``stream_tensors``: the names the stream will hold; each parameter/buffer of the graph must be one of
    them. Raises :class:`~nncodec.topology.TopologyError` (a ConfigError) when ``torch.export`` cannot
    capture the model or the graph uses what the format cannot hold, pointing to :func:`nncodec.load_into`.
    """
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not all(isinstance(x, torch.Tensor) for x in example_inputs):
        raise ConfigError("example_inputs must be a tuple of tensors (the positional inputs of forward)")
    target = deployed_view(model, quantized)
    was_training = target.training
    target.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
            program = torch.export.export(target, tuple(example_inputs), strict=False)
    except Exception as exc:  # torch.export raises many types; all mean "cannot capture"
        raise TopologyError(f"torch.export cannot capture {type(model).__name__}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}"[:500] + _HINT) from exc
    finally:
        target.train(was_training)
    topology = graph_from_program(program, stream_tensors)
    validate(topology)  # what we write, our own decoder must accept
    size = len(json.dumps(topology, separators=(",", ":"), ensure_ascii=False).encode())
    if size > DEFAULT_LIMITS.max_metadata_bytes:
        raise TopologyError(f"the graph takes {size} bytes of JSON, over the decoders' default topology limit "
                            f"max_metadata_bytes={DEFAULT_LIMITS.max_metadata_bytes}" + _HINT)
    return topology


def graph_from_program(program: Any, stream_tensors: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``nncodec.graph`` topology of an ``ExportedProgram`` (see :func:`capture_graph`)."""
    from torch.export.graph_signature import InputKind, OutputKind

    sig = program.graph_signature
    inputs, tensors = [], []
    specs = {s.arg.name: s for s in sig.input_specs}
    for node in program.graph.nodes:
        if node.op != "placeholder":
            continue
        s = specs[node.name]
        if s.kind == InputKind.USER_INPUT:
            val = node.meta.get("val")
            if not isinstance(val, torch.Tensor):
                raise TopologyError(f"input {node.name!r} is not a tensor" + _HINT)
            if not all(isinstance(d, int) for d in val.shape):
                raise TopologyError(f"input {node.name!r} has a symbolic shape; the graph format is specialised "
                                    "to the example input shapes" + _HINT)
            inputs.append({"name": node.name, "dtype": _DTYPE_NAMES[val.dtype], "shape": list(val.shape)})
        elif s.kind in (InputKind.PARAMETER, InputKind.BUFFER) and (s.kind == InputKind.PARAMETER or s.persistent):
            kind = "parameter" if s.kind == InputKind.PARAMETER else "buffer"
            val = program.state_dict[s.target]
            if stream_tensors is not None and s.target not in stream_tensors:
                raise TopologyError(f"the graph reads {kind} {s.target!r}, which is not among the tensors encoded"
                                    + _HINT)
            tensors.append({"name": node.name, "kind": kind, "target": s.target, "dtype": _DTYPE_NAMES[val.dtype],
                            "shape": list(val.shape)})
        elif s.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):  # non-persistent buffers, lifted constants
            tensors.append(_constant(node.name, program.constants[s.target]))
        else:
            raise TopologyError(f"graph input {node.name!r} is a {s.kind.name}, which the graph format cannot hold"
                                + _HINT)
    bad_outputs = [s.kind.name for s in sig.output_specs if s.kind != OutputKind.USER_OUTPUT]
    if bad_outputs:
        raise TopologyError(f"the captured graph mutates state ({', '.join(bad_outputs)}); capture an eval-mode "
                            "model without in-place updates of buffers or inputs" + _HINT)
    refused = sorted({f"{_op_name(n.target)} (node {n.name!r})" for n in program.graph.nodes
                      if n.op == "call_function" and _op_name(n.target) not in ALLOWED_OPERATORS})
    if refused:
        raise TopologyError(f"the graph calls operators outside the graph format's allow-list: {', '.join(refused)}"
                            + _HINT)
    nodes, outputs = [], []
    for node in program.graph.nodes:
        if node.op == "call_function":
            op = _op_name(node.target)
            where = f"node {node.name!r} ({op})"
            entry: dict[str, Any] = {"name": node.name, "op": op, "args": _arg(list(node.args), where)}
            if node.kwargs:
                entry["kwargs"] = {k: _arg(v, where) for k, v in node.kwargs.items()}
            nodes.append(entry)
        elif node.op == "output":
            outputs = _arg(list(node.args[0]), "the output")
        elif node.op != "placeholder":
            raise TopologyError(f"graph node {node.name!r} is a {node.op}, which the graph format cannot hold" + _HINT)
    counter = [0]
    structure = _structure(program.call_spec.out_spec, counter)
    if counter[0] != len(outputs):
        raise TopologyError(f"the output structure has {counter[0]} leaves for {len(outputs)} outputs" + _HINT)
    return {"format": GRAPH_FORMAT, "version": GRAPH_VERSION, "inputs": inputs, "tensors": tensors, "nodes": nodes,
            "outputs": outputs, "structure": structure}

"""The graph topology (``nncodec.graph`` v1): its operator allow-list, its errors, and its validation.

A graph topology is plain JSON data (FORMAT.md §11): inputs, the tensors it reads (parameters and buffers
in the stream's tensor units, small constants inline), a list of ATen operator calls in execution order,
and the outputs. :func:`validate` checks all of it against the allow-list and the stream's tensor headers
before anything is allocated or run. This module needs the standard library only (no torch, no numpy).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptError

__all__ = ["GRAPH_FORMAT", "GRAPH_VERSION", "ALLOWED_OPERATORS", "GETITEM", "GraphError", "UnknownOperatorError",
           "DanglingReferenceError", "GraphTensorMismatchError", "GraphSpec", "TensorSpec", "validate",
           "DTYPE_NAMES", "MEMORY_FORMATS", "LAYOUTS", "MAX_ARG_DEPTH"]

GRAPH_FORMAT = "nncodec.graph"
GRAPH_VERSION = 1
#: the one operator that is not an ATen call: element ``i`` of a node's tuple/list output
GETITEM = "getitem"
MAX_ARG_DEPTH = 8           #: nesting of argument lists
MAX_NODES = 1 << 20

DTYPE_NAMES = frozenset({"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
                         "float16", "bfloat16", "float32", "float64"})
MEMORY_FORMATS = frozenset({"contiguous_format", "preserve_format", "channels_last", "channels_last_3d"})
LAYOUTS = frozenset({"strided"})
_DEVICE = re.compile(r"^[a-z]{2,16}(:[0-9]{1,3})?$")
_FLOAT_WORDS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}

_OPS = """
conv1d.default conv2d.default conv3d.default conv1d.padding conv2d.padding convolution.default
conv_transpose1d.default conv_transpose2d.input linear.default matmul.default mm.default bmm.default
addmm.default baddbmm.default einsum.default
batch_norm.default _native_batch_norm_legit_no_training.default layer_norm.default native_layer_norm.default
group_norm.default instance_norm.default rms_norm.default
scaled_dot_product_attention.default softmax.int _softmax.default log_softmax.int _log_softmax.default
lstm.input gru.input rnn_tanh.input rnn_relu.input lstm_cell.default gru_cell.default rnn_tanh_cell.default
max_pool1d.default max_pool2d.default max_pool2d_with_indices.default avg_pool1d.default avg_pool2d.default
adaptive_avg_pool1d.default adaptive_avg_pool2d.default adaptive_max_pool1d.default adaptive_max_pool2d.default
relu.default relu_.default relu6.default hardtanh.default hardtanh_.default gelu.default silu.default
silu_.default sigmoid.default tanh.default leaky_relu.default leaky_relu_.default hardswish.default
hardswish_.default hardsigmoid.default hardsigmoid_.default elu.default softplus.default mish.default
prelu.default glu.default
erf.default exp.default log.default sqrt.default rsqrt.default abs.default neg.default sign.default
reciprocal.default pow.Tensor_Scalar pow.Tensor_Tensor pow.Scalar
clamp.default clamp.Tensor clamp_min.default clamp_max.default round.default round.decimals floor.default
ceil.default trunc.default where.self where.ScalarSelf where.ScalarOther where.Scalar maximum.default
minimum.default
add.Tensor add.Scalar add_.Tensor sub.Tensor sub.Scalar rsub.Tensor rsub.Scalar mul.Tensor mul.Scalar
mul_.Tensor div.Tensor div.Scalar div.Tensor_mode floor_divide.default remainder.Tensor remainder.Scalar
eq.Tensor eq.Scalar ne.Tensor ne.Scalar lt.Tensor lt.Scalar le.Tensor le.Scalar gt.Tensor gt.Scalar
ge.Tensor ge.Scalar logical_not.default logical_and.default logical_or.default bitwise_not.default
__and__.Tensor __or__.Tensor bitwise_and.Tensor bitwise_or.Tensor bitwise_xor.Tensor
masked_fill.Scalar masked_fill.Tensor
mean.dim mean.default sum.dim_IntList sum.default amax.default amin.default max.dim min.dim max.default
min.default argmax.default argmin.default var.correction std.correction var.dim std.dim
linalg_vector_norm.default norm.ScalarOpt_dim cumsum.default prod.default any.default all.default
view.default reshape.default _unsafe_view.default flatten.using_ints unflatten.int permute.default
transpose.int t.default unsqueeze.default squeeze.dim squeeze.dims squeeze.default expand.default
contiguous.default clone.default slice.Tensor select.int index.Tensor index_select.default gather.default
cat.default stack.default split.Tensor split_with_sizes.default chunk.default unbind.int narrow.default
repeat.default tile.default flip.default roll.default pad.default constant_pad_nd.default embedding.default
to.dtype to.dtype_layout to.device _to_copy.default type_as.default alias.default detach.default
view_as.default expand_as.default zeros.default zeros_like.default ones.default ones_like.default
full.default full_like.default arange.default arange.start arange.start_step new_zeros.default
new_ones.default new_full.default scalar_tensor.default lift_fresh_copy.default tril.default triu.default
dropout.default feature_dropout.default _assert_tensor_metadata.default
"""
#: ATen operator overloads a graph may call (``aten.<name>.<overload>``), plus ``getitem``; nothing else runs
ALLOWED_OPERATORS: frozenset[str] = frozenset({f"aten.{op}" for op in _OPS.split()} | {GETITEM})


class GraphError(CorruptError):
    """A graph topology is malformed (wrong types, duplicate names, bad values); names the node or field."""


class UnknownOperatorError(GraphError):
    """A graph node calls an operator that is not on the allow-list (:data:`ALLOWED_OPERATORS`)."""


class DanglingReferenceError(GraphError):
    """A graph refers to a value that is not defined before it, or to a tensor the stream does not hold."""


class GraphTensorMismatchError(GraphError):
    """A tensor the graph reads has another shape or dtype in the stream than the graph declares."""


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the graph reads: ``kind`` is ``parameter`` or ``buffer`` (from the stream's tensor unit
    named ``target``) or ``constant`` (``data`` inline, little-endian C order)."""

    name: str
    kind: str
    target: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes | None = None


@dataclass(frozen=True)
class GraphSpec:
    """A validated graph: everything :mod:`nncodec.graph.rebuild` needs, nothing it must check again
    except the operator schemas (which need torch)."""

    inputs: list[tuple[str, str, tuple[int, ...]]]        #: (name, dtype, shape) of each user input
    tensors: list[TensorSpec]
    nodes: list[tuple[str, str, list[Any], dict[str, Any]]]  #: (name, operator, args, kwargs)
    outputs: list[Any]
    structure: Any
    names: dict[str, int] = field(default_factory=dict)   #: value name -> slot (inputs, tensors, nodes)


def _fail(cls: type[GraphError], message: str) -> GraphError:
    return cls(f"graph topology: {message}")


def _str(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v:
        raise _fail(GraphError, f"{what} must be a non-empty string, got {v!r}"[:300])
    return v


def _shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 64 or not all(type(d) is int and 0 <= d < (1 << 62) for d in v):
        raise _fail(GraphError, f"{what} must be a list of at most 64 non-negative integers, got {v!r}"[:300])
    return tuple(v)


def _dtype(v: Any, what: str) -> str:
    if not isinstance(v, str) or v not in DTYPE_NAMES:
        raise _fail(GraphError, f"{what} has unknown dtype {v!r}"[:300])
    return v  # type: ignore[return-value]


def _obj(v: Any, what: str, keys: set[str], required: set[str]) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise _fail(GraphError, f"{what} must be an object")
    extra = set(v) - keys
    if extra:
        raise _fail(GraphError, f"{what} has unknown fields {sorted(extra)}")
    missing = required - set(v)
    if missing:
        raise _fail(GraphError, f"{what} lacks fields {sorted(missing)}")
    return v


def _numel(shape: tuple[int, ...], what: str) -> int:
    n = 1
    for d in shape:
        n *= d
        if n > (1 << 40):
            raise _fail(GraphError, f"{what}: shape {list(shape)} is too large")
    return n


_ITEMSIZE = {"bool": 1, "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "bfloat16": 2, "float16": 2,
             "uint32": 4, "int32": 4, "float32": 4, "uint64": 8, "int64": 8, "float64": 8}


def _check_arg(v: Any, defined: dict[str, int], where: str, depth: int = 0) -> None:
    """An argument is null, a bool, an int, a finite float, a string, a list of arguments, or a one-key
    object: ``ref`` (a value defined earlier), ``dtype``, ``device``, ``layout``, ``memory_format``,
    ``float`` (``inf``, ``-inf``, ``nan``)."""
    if v is None or isinstance(v, (bool, int, str)):
        return
    if isinstance(v, float):
        if not math.isfinite(v):
            raise _fail(GraphError, f"{where}: non-finite float must be written as {{\"float\": ...}}")
        return
    if isinstance(v, list):
        if depth >= MAX_ARG_DEPTH:
            raise _fail(GraphError, f"{where}: arguments nested deeper than {MAX_ARG_DEPTH} lists")
        for item in v:
            _check_arg(item, defined, where, depth + 1)
        return
    if isinstance(v, dict) and len(v) == 1:
        (key, value), = v.items()
        if key == "ref":
            if not isinstance(value, str) or value not in defined:
                raise _fail(DanglingReferenceError, f"{where} refers to {value!r}, which is not defined before it"[:300])
            return
        ok = {"dtype": DTYPE_NAMES, "layout": LAYOUTS, "memory_format": MEMORY_FORMATS, "float": _FLOAT_WORDS}
        if key in ok and isinstance(value, str) and value in ok[key]:
            return
        if key == "device" and isinstance(value, str) and _DEVICE.match(value):
            return
    raise _fail(GraphError, f"{where}: argument {v!r} is not a value the format allows"[:300])


def _check_structure(v: Any, n_outputs: int, seen: set[int], depth: int = 0) -> None:
    if depth > MAX_ARG_DEPTH:
        raise _fail(GraphError, "output structure nested too deep")
    if type(v) is int:
        if not 0 <= v < n_outputs or v in seen:
            raise _fail(GraphError, f"output structure leaf {v} is not a fresh index below {n_outputs}")
        seen.add(v)
        return
    if isinstance(v, dict) and len(v) == 1:
        (key, value), = v.items()
        if key in ("tuple", "list") and isinstance(value, list):
            for item in value:
                _check_structure(item, n_outputs, seen, depth + 1)
            return
        if key == "dict" and isinstance(value, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in value):
            for _, item in value:
                _check_structure(item, n_outputs, seen, depth + 1)
            return
    raise _fail(GraphError, f"output structure {v!r} is not an index, tuple, list or dict"[:300])


def _tensor(t: Any, i: int, stream: Mapping[str, tuple[str, tuple[int, ...]]] | None) -> TensorSpec:
    what = f"tensors[{i}]"
    t = _obj(t, what, {"name", "kind", "target", "dtype", "shape", "data"}, {"name", "kind", "dtype", "shape"})
    name = _str(t["name"], f"{what}.name")
    kind = t["kind"]
    dtype, shape = _dtype(t["dtype"], f"tensor {name!r}"), _shape(t["shape"], f"tensor {name!r} shape")
    if kind == "constant":
        raw = t.get("data")
        if not isinstance(raw, str) or "target" in t:
            raise _fail(GraphError, f"constant {name!r} needs base64 'data' and no 'target'")
        want = _numel(shape, f"constant {name!r}") * _ITEMSIZE[dtype]
        if len(raw) > 4 * (want + 2) // 3 + 4:  # checked before decoding
            raise _fail(GraphError, f"constant {name!r}: data longer than its shape {list(shape)} needs")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            raise _fail(GraphError, f"constant {name!r}: data is not base64") from None
        if len(data) != want:
            raise _fail(GraphTensorMismatchError, f"constant {name!r}: {len(data)} bytes of data, its shape "
                        f"{list(shape)} of {dtype} needs {want}")
        return TensorSpec(name, kind, "", dtype, shape, data)
    if kind not in ("parameter", "buffer") or "data" in t:
        raise _fail(GraphError, f"tensor {name!r} has kind {kind!r} (parameter, buffer or constant with data)"[:300])
    target = _str(t.get("target"), f"tensor {name!r} target")
    if stream is not None:
        if target not in stream:
            raise _fail(DanglingReferenceError, f"{kind} {name!r} reads tensor {target!r}, which the stream does "
                        "not hold")
        s_dtype, s_shape = stream[target]
        if s_dtype != dtype or tuple(s_shape) != shape:
            raise _fail(GraphTensorMismatchError, f"{kind} {name!r} declares {target!r} as {dtype} {list(shape)}, "
                        f"the stream holds {s_dtype} {list(s_shape)}")
    return TensorSpec(name, kind, target, dtype, shape)


def validate(topology: Mapping[str, Any],
             stream_tensors: Mapping[str, tuple[str, tuple[int, ...]]] | None = None) -> GraphSpec:
    """Check a graph topology completely; return it as a :class:`GraphSpec`.

    ``stream_tensors`` maps the stream's tensor names to ``(dtype name, shape)``; every parameter and buffer
    the graph reads must be there with the declared dtype and shape (None skips that check, for encoders).
    Raises :class:`UnknownOperatorError`, :class:`DanglingReferenceError`, :class:`GraphTensorMismatchError`
    or :class:`GraphError` naming the node or tensor. Runs nothing, allocates only the small inline constants.
    """
    g = _obj(topology, "the graph topology", {"format", "version", "inputs", "tensors", "nodes", "outputs",
                                              "structure"}, {"format", "version", "inputs", "tensors", "nodes",
                                                             "outputs", "structure"})
    if g["format"] != GRAPH_FORMAT or g["version"] != GRAPH_VERSION:
        raise _fail(GraphError, f"format {g['format']!r} version {g['version']!r}; this nncodec reads "
                    f"{GRAPH_FORMAT} version {GRAPH_VERSION} (upgrade nncodec)"[:300])
    for key in ("inputs", "tensors", "nodes", "outputs"):
        if not isinstance(g[key], list):
            raise _fail(GraphError, f"'{key}' must be a list")
    if len(g["nodes"]) > MAX_NODES:
        raise _fail(GraphError, f"{len(g['nodes'])} nodes, more than {MAX_NODES}")
    names: dict[str, int] = {}

    def define(name: str, what: str) -> None:
        if name in names:
            raise _fail(GraphError, f"{what} {name!r} is defined twice")
        names[name] = len(names)

    inputs = []
    for i, item in enumerate(g["inputs"]):
        item = _obj(item, f"inputs[{i}]", {"name", "dtype", "shape"}, {"name", "dtype", "shape"})
        name = _str(item["name"], f"inputs[{i}].name")
        inputs.append((name, _dtype(item["dtype"], f"input {name!r}"), _shape(item["shape"], f"input {name!r} shape")))
        define(name, "input")
    tensors = []
    for i, item in enumerate(g["tensors"]):
        spec = _tensor(item, i, stream_tensors)
        define(spec.name, "tensor")
        tensors.append(spec)
    nodes = []
    for i, item in enumerate(g["nodes"]):
        item = _obj(item, f"nodes[{i}]", {"name", "op", "args", "kwargs"}, {"name", "op", "args"})
        name = _str(item["name"], f"nodes[{i}].name")
        op = item["op"]
        if not isinstance(op, str) or op not in ALLOWED_OPERATORS:
            raise _fail(UnknownOperatorError, f"node {name!r} calls {op!r}, which is not on the operator "
                        "allow-list"[:300])
        args, kwargs = item["args"], item.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise _fail(GraphError, f"node {name!r}: args must be a list and kwargs an object")
        where = f"node {name!r} ({op})"
        _check_arg(args, names, where)
        for k, v in kwargs.items():
            if not k.isidentifier():
                raise _fail(GraphError, f"{where}: keyword {k!r} is not an identifier"[:300])
            _check_arg(v, names, where)
        if op == GETITEM and not (len(args) == 2 and not kwargs and isinstance(args[0], dict)
                                  and type(args[1]) is int):
            raise _fail(GraphError, f"{where} must take a value and an integer index")
        define(name, "node")
        nodes.append((name, op, args, kwargs))
    _check_arg(g["outputs"], names, "outputs")
    _check_structure(g["structure"], len(g["outputs"]), seen := set())
    if len(seen) != len(g["outputs"]):
        raise _fail(GraphError, "output structure does not use every output exactly once")
    return GraphSpec(inputs, tensors, nodes, list(g["outputs"]), g["structure"], names)

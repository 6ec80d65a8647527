"""Operator-level capture of a torch model with ``torch.export``: every costed operation, its owner and shapes.

The exported ATen graph is walked once. Nodes computed from parameters and constants alone (weight
fake-quantization, masks, factory tensors) are *static* and not costed; every node that depends on a
model input is *dynamic* and maps to one :class:`GraphOp` through :data:`OP_KINDS` (views and other
metadata-only operators are free and pass their producer through). The fake-quant modules of
:mod:`nncodec.quant.layers` are collapsed: all dynamic nodes of one ``QActivation`` / ``QConv*`` /
``QLinear`` / ``QEmbedding`` / ``QGRU`` / ``QLSTM`` / ``QRNN`` form one operation (the lookup, gate matmuls,
convolution ...) whose stored output is the module's quantizer; the output quantizers that
:func:`~nncodec.quant.layers.quantize_model` puts on other modules (norms, blocks) are left out of the
export, the estimate reads their type from the module.

An operator that is in no table raises :class:`UnsupportedOperatorError` naming it and its module.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..checks import is_int
from ..errors import ConfigError
from ..quant.layers import (QActivation, QLinear, _OutputQuant, _QuantBatchNorm, _QuantParams, _QuantWeights,
                             has_input_steps)

__all__ = ["GraphOp", "capture_graph", "zero_fractions", "UnsupportedOperatorError", "UnsupportedLayerError", "OP_KINDS", "example_tensors"]

log = logging.getLogger(__name__)


class UnsupportedLayerError(ConfigError):
    """The model holds a layer or operator the energy model cannot cost."""


class UnsupportedOperatorError(UnsupportedLayerError):
    """The exported graph holds an operator the energy model cannot cost."""


def _names(*ops: str) -> frozenset[str]:
    return frozenset(ops)


#: ATen operator name (without overload) -> operation kind
OP_KINDS: dict[str, str] = {}
#: interpolating upsampling operator -> (input elements per output element along one resized dimension,
#: resized dimensions): linear 2, cubic 4, so bilinear 4 taps, bicubic 16, trilinear 8 per output element
_INTERPOLATION: dict[str, tuple[int, int]] = {
    "upsample_linear1d": (2, 1), "upsample_bilinear2d": (2, 2), "upsample_bicubic2d": (4, 2),
    "upsample_trilinear3d": (2, 3), "_upsample_bilinear2d_aa": (2, 2), "_upsample_bicubic2d_aa": (4, 2),
}

for _kind, _ops in {
    "conv": _names("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                   "conv_transpose2d", "conv_transpose3d"),
    "dense": _names("linear"),
    "matmul": _names("mm", "bmm", "matmul", "addmm", "baddbmm"),
    "attention": _names("scaled_dot_product_attention"),
    "embedding": _names("embedding"),
    "norm": _names("batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm", "layer_norm",
                   "native_layer_norm", "group_norm", "native_group_norm", "instance_norm", "rms_norm"),
    "add": _names("add", "add_", "sub", "sub_", "rsub"),
    "mul": _names("mul", "mul_", "div", "div_"),
    "elementwise": _names("where", "masked_fill", "masked_fill_", "neg", "abs", "exp", "sqrt", "rsqrt", "pow",
                          "clamp", "clamp_min", "clamp_max", "reciprocal", "log", "erf", "round", "floor",
                          "square", "maximum", "minimum", "eq", "ne", "lt", "le", "gt", "ge", "logical_not",
                          "logical_and", "logical_or", "__and__", "__or__", "bitwise_and", "bitwise_or",
                          "bitwise_not"),
    "activation": _names("relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_",
                         "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "softmax", "_softmax",
                         "log_softmax", "_log_softmax", "hardswish", "hardsigmoid", "mish", "softplus", "prelu"),
    "pool": _names("max_pool1d", "max_pool2d", "max_pool2d_with_indices", "avg_pool1d", "avg_pool2d",
                   "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "adaptive_max_pool1d",
                   "adaptive_max_pool2d", "mean", "sum", "amax", "max", "amin", "min", "cumsum", "linalg_vector_norm",
                   "norm", "var", "std", "var_mean", "argmax", "argmin", "prod", "logsumexp",
                   # interpolating upsampling: a weighted sum of input elements per output element
                   *_INTERPOLATION),
    "recurrent": _names("lstm", "gru", "rnn_tanh", "rnn_relu"),
    "concat": _names("cat", "stack", "concat", "contiguous", "clone", "permute", "repeat",
                     # nearest upsampling copies elements, as repeat does
                     "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
                     "_upsample_nearest_exact2d", "_upsample_nearest_exact3d"),
    "reshape": _names("view", "reshape", "_unsafe_view", "flatten", "unflatten", "transpose", "t", "unsqueeze",
                      "squeeze", "expand", "expand_as", "select", "slice", "narrow", "split", "split_with_sizes",
                      "chunk", "unbind", "dropout", "alpha_dropout", "feature_dropout", "alias", "detach", "to",
                      "type_as", "_to_copy", "lift_fresh_copy", "getitem", "view_as", "movedim", "index_select",
                      "_assert_tensor_metadata", "pad", "constant_pad_nd", "index", "zeros_like", "ones_like",
                      "full_like", "new_zeros", "new_ones", "flip", "roll", "gather", "arange"),
}.items():
    for _op in _ops:
        OP_KINDS[_op] = _kind

#: kinds that carry parameters through a weight operand
WEIGHTED = ("conv", "dense", "embedding")


@dataclass
class GraphOp:
    """One costed operation of the exported graph (shapes include the batch dimension of the example)."""

    name: str                       #: row name: the owning module, made unique with ``/node`` when it owns several
    module: str                     #: fully-qualified name of the module the plan resolves (weight owner, or node owner)
    kind: str                       #: conv, dense, matmul, attention, embedding, norm, add, mul, activation, ...
    target: str                     #: ATen operator (``conv2d``, ``linear``, ...)
    node: str                       #: fx node that holds the stored output
    inputs: list[str]               #: producers (op names, or ``input:<name>`` for model inputs)
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    params: dict[str, torch.Tensor] = field(default_factory=dict)   #: role (weight, bias, ...) -> tensor
    args: dict[str, Any] = field(default_factory=dict)              #: operator arguments the cost needs
    quant_module: nn.Module | None = None   #: the fake-quant module this op collapses, if any
    is_output: bool = False
    operations: int = 0             #: MACs for conv/dense/matmul/attention/recurrent, output elements x taps
                                    #: for interpolating upsampling, elements otherwise
    fan_in: int = 0                 #: products summed per output (accumulator width), MAC kinds only
    depthwise_channels: int = 0     #: C_in of a depthwise conv (QTools counts its fan-in as k*k*C_in)
    elementwise: dict[str, int] = field(default_factory=dict)  #: extra per-op element counts (softmax, gates)

    @property
    def input_elements(self) -> int:
        return sum(math.prod(s) for s in self.input_shapes)

    @property
    def output_elements(self) -> int:
        return math.prod(self.output_shape)


def example_tensors(example_inputs: Any) -> tuple[Any, ...]:
    """Normalize ``example_inputs``: a shape (float zeros, batch 1 added), a tensor, or a tuple of tensors."""
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(is_int(v) for v in example_inputs):
        if any(v <= 0 for v in example_inputs):
            raise ConfigError(f"input shape must be positive integers, got {tuple(example_inputs)}")
        return (torch.zeros((1, *example_inputs)),)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(isinstance(v, torch.Tensor) for v in example_inputs):
        return tuple(example_inputs)
    raise ConfigError("example_inputs must be an input shape (ints, no batch dim), a tensor, or a tuple of "
                      f"tensors; got {type(example_inputs).__name__}")


def _op_name(node: torch.fx.Node) -> str:
    t = node.target
    if t is getattr(__import__("operator"), "getitem"):
        return "getitem"
    name = getattr(t, "__name__", str(t))
    packet = getattr(t, "_overloadpacket", None)
    if packet is not None:
        name = packet.__name__
    return name.split(".")[0]


def _flat_nodes(args: Any) -> list[torch.fx.Node]:
    out: list[torch.fx.Node] = []

    def walk(a: Any) -> None:
        if isinstance(a, torch.fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            for v in a:
                walk(v)
        elif isinstance(a, dict):
            for v in a.values():
                walk(v)

    walk(args)
    return out


def _shape(node: torch.fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return tuple(int(d) for d in val.shape)
    return ()


def _owner(node: torch.fx.Node) -> list[str]:
    """Module path of a node, outermost first (``[]``: the root module)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [str(v[0]) for v in stack.values() if v and v[0]]


def _export(model: nn.Module, args: tuple[Any, ...], weight_quantizers: bool = True) -> torch.export.ExportedProgram:
    """``torch.export`` in eval mode. ``weight_quantizers=False`` exports with the kernel and bias quantizers of
    fake-quant layers switched off (restored afterwards; not thread-safe): their ops are static, never costed,
    and tracing them (``alpha='auto'`` iterations) is most of the export time. The output quantizers of
    norms and blocks (:class:`~nncodec.quant.layers._OutputQuant`) are always switched off: the estimate
    reads their type from the module."""
    was_training = model.training
    saved = [] if weight_quantizers else [(m, m.kernel_quantizer, m.bias_quantizer) for m in model.modules()
                                          if isinstance(m, _QuantParams)]
    # output quantizers put on norms and blocks: their ops would be owned by (and costed as) the module itself
    outputs = [(m, m.output_quantizer) for m in model.modules() if isinstance(m, _OutputQuant)]
    # per-channel input requantization of Linear layers: priced by the estimate from the layer (not traced)
    requantizing = [m for m in model.modules() if isinstance(m, QLinear) and has_input_steps(m)]
    model.eval()
    try:
        for m in requantizing:
            m.skip_input_requantization = True
        for m, _, _ in saved:
            m.kernel_quantizer = m.bias_quantizer = None
        for m, _ in outputs:
            m.output_quantizer = None
        with torch.no_grad():
            return torch.export.export(model, args, strict=False)
    except Exception as exc:  # noqa: BLE001  (torch raises many types here)
        raise ConfigError(f"torch.export could not capture the model ({type(exc).__name__}: {exc}); the energy "
                          "model needs an exportable forward") from None
    finally:
        for m, kernel, bias in saved:
            m.kernel_quantizer, m.bias_quantizer = kernel, bias
        for m, out in outputs:
            m.output_quantizer = out
        for m in requantizing:
            m.skip_input_requantization = False
        model.train(was_training)


def capture_graph(model: nn.Module, example_inputs: Any, *, program: list | None = None,
                  weight_quantizers: bool = False) -> list[GraphOp]:
    """Export ``model`` on ``example_inputs`` and return its costed operations in execution order.

    ``program``: a list that receives the ``ExportedProgram`` (to run it again, e.g. :func:`zero_fractions`;
    pass ``weight_quantizers=True`` then, so that it computes with the quantized weights)."""
    args = example_tensors(example_inputs)
    ep = _export(model, args, weight_quantizers)
    if program is not None:
        program.append(ep)
    sig = ep.graph_signature
    params_by_ph = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    user_inputs = set(sig.user_inputs)
    named = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    modules = dict(model.named_modules())
    graph = ep.graph
    dynamic: set[str] = set()
    source: dict[str, str] = {}        # fx node -> producer op name ("input:x" for model inputs)
    ops: list[GraphOp] = []
    group_of: dict[str, GraphOp] = {}  # fake-quant module -> its collapsed op

    def static_params(node: torch.fx.Node) -> list[str]:
        """Parameter/buffer FQNs a static node is computed from."""
        seen, todo, found = set(), [node], []
        while todo:
            n = todo.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op == "placeholder" and n.name in params_by_ph:
                found.append(params_by_ph[n.name])
            todo.extend(_flat_nodes(n.args))
        return found

    def producers(node: torch.fx.Node) -> list[torch.fx.Node]:
        return [a for a in _flat_nodes((node.args, node.kwargs)) if a.name in dynamic]

    for node in graph.nodes:
        if node.op == "placeholder":
            if node.name in user_inputs:
                dynamic.add(node.name)
                source[node.name] = f"input:{node.name}"
            continue
        if node.op != "call_function":
            continue
        dyn_in = producers(node)
        if not dyn_in:
            continue  # static: computed from parameters and constants only
        dynamic.add(node.name)
        op = _op_name(node)
        stack = _owner(node)
        quant_owner = next((p for p in stack if isinstance(modules.get(p), (QActivation, _QuantParams)) and
                            not isinstance(modules.get(p), _QuantBatchNorm)), None)  # a folded norm stays a norm
        kind = OP_KINDS.get(op)
        if kind is None:
            where = stack[-1] if stack else "the model's forward"
            raise UnsupportedOperatorError(f"operator aten.{op} in {where!r} is not supported by the energy model")
        in_shapes = [_shape(a) for a in dyn_in]
        if quant_owner is not None:
            qmod = modules[quant_owner]
            gop = group_of.get(quant_owner)
            if gop is None:
                base_kind = "activation" if isinstance(qmod, QActivation) else None
                gop = GraphOp("#" + quant_owner, quant_owner, base_kind or "reshape", op, node.name,
                              [source[a.name] for a in dyn_in], in_shapes, _shape(node), quant_module=qmod)
                group_of[quant_owner] = gop
                ops.append(gop)
            if (kind in ("conv", "dense") and isinstance(qmod, _QuantWeights)) or \
                    (kind in ("embedding", "recurrent") and isinstance(qmod, _QuantParams)):
                gop.kind, gop.target = kind, op
                gop.input_shapes = [_shape(dyn_in[0])]
                gop.inputs = [source[dyn_in[0].name]]
                _weight_args(gop, node, named, static_params, dynamic)
                if kind in ("embedding", "recurrent"):
                    gop.module = quant_owner  # its quantizers apply, whatever the export names the weights
                _count(gop, node)
            elif kind == "activation" and gop.target != op and isinstance(qmod, QActivation):
                gop.target = op
            gop.node = node.name
            gop.output_shape = _shape(node) or gop.output_shape
            source[node.name] = gop.name
            continue
        owner = stack[-1] if stack else ""
        if op == "getitem" or (kind == "reshape" and not isinstance(modules.get(owner), nn.Flatten)):
            source[node.name] = source[dyn_in[0].name]
            continue
        if kind == "reshape":
            kind = "flatten"  # QTools costs a Flatten layer's input reads
        gop = GraphOp(node.name, owner, kind, op, node.name, [source[a.name] for a in dyn_in], in_shapes,
                      _shape(node))
        if kind in WEIGHTED or kind in ("norm", "recurrent", "matmul", "add", "mul", "elementwise"):
            _weight_args(gop, node, named, static_params, dynamic)
        if kind == "matmul" and "weight" in gop.params:
            gop.kind = "dense"
        _count(gop, node)
        source[node.name] = gop.name
        ops.append(gop)
    for gop in ops:
        if gop.quant_module is not None and gop.kind == "activation":
            gop.operations = gop.input_elements
    outputs = {source.get(a.name) for n in graph.nodes if n.op == "output" for a in _flat_nodes(n.args)}
    counts: dict[str, int] = {}
    for gop in ops:
        counts[gop.module] = counts.get(gop.module, 0) + 1
    final = {}
    for gop in ops:
        gop.is_output = gop.name in outputs
        unique = gop.quant_module is not None or (counts[gop.module] == 1 and gop.module)
        final[gop.name] = gop.module if unique else (f"{gop.module}/{gop.node}" if gop.module else gop.node)
    for gop in ops:
        gop.name = final[gop.name]
        gop.inputs = [final.get(i, i) for i in gop.inputs]
    return ops


def _pick_param(names: list[str], named: dict[str, torch.Tensor], numel: int) -> str | None:
    params = [n for n in names if n in named and isinstance(named[n], nn.Parameter)] or \
        [n for n in names if n in named]
    exact = [n for n in params if named[n].numel() == numel]
    return (exact or params or [None])[0]


#: for each weighted operator: argument index -> role
_ROLES: dict[str, dict[int, str]] = {
    "conv": {1: "weight", 2: "bias"}, "dense": {1: "weight", 2: "bias"}, "embedding": {0: "weight"},
    "addmm": {0: "bias", 1: "weight", 2: "weight"}, "matmul": {0: "weight", 1: "weight"},
}


def _weight_args(gop: GraphOp, node: torch.fx.Node, named: dict[str, torch.Tensor], static_params: Any,
                 dynamic: set[str]) -> None:
    """Record the parameters an operation reads (by role) and re-home it to the module owning its weight."""
    if gop.kind == "recurrent":
        flat = node.args[2] if len(node.args) > 2 else []
        for i, n in enumerate(flat if isinstance(flat, (list, tuple)) else []):
            if isinstance(n, torch.fx.Node):
                fqn = _pick_param(static_params(n), named, math.prod(_shape(n)))
                if fqn:
                    gop.params[f"{i}:{fqn.rsplit('.', 1)[-1]}"] = named[fqn]
                    gop.module = fqn.rpartition(".")[0]
        return
    roles = _ROLES.get(gop.target) or _ROLES.get(gop.kind)
    for i, a in enumerate(node.args):
        if not isinstance(a, torch.fx.Node) or a.name in dynamic or (roles is not None and i not in roles):
            continue
        if gop.kind in ("add", "mul", "elementwise"):  # a constant operand (bias, position table rows): its own size
            gop.args["static_elements"] = gop.args.get("static_elements", 0) + math.prod(_shape(a))
            continue
        fqn = _pick_param(static_params(a), named, math.prod(_shape(a)))
        if fqn is None:
            continue
        role = roles[i] if roles is not None else f"param{i}"
        gop.params[role] = named[fqn]
        if role == "weight" or gop.kind == "norm":
            gop.module = fqn.rpartition(".")[0]


def _arg(node: torch.fx.Node, i: int, default: Any = None) -> Any:
    return node.args[i] if len(node.args) > i else default


def _count(gop: GraphOp, node: torch.fx.Node) -> None:
    """Operations (MACs or elements), fan-in and extra element counts of one operation."""
    first = next((a for a in node.args if isinstance(a, torch.fx.Node)), None)
    if gop.kind in ("conv", "dense", "matmul", "recurrent") and first is not None:
        gop.args["input_node"] = first.name
    out = gop.output_elements
    ins = gop.input_shapes
    first_in = math.prod(ins[0]) if ins else out
    k = gop.kind
    t = gop.target
    if k == "conv":
        w = gop.params.get("weight")
        w_shape = tuple(w.shape) if w is not None else _shape(node.args[1])
        kernel = math.prod(w_shape[2:])
        transposed = t.startswith("conv_transpose") or (t in ("convolution", "_convolution") and bool(_arg(node, 6)))
        if transposed:
            gop.operations = first_in * w_shape[1] * kernel
            stride = _arg(node, 3, 1)
            stride = math.prod(stride) if isinstance(stride, (list, tuple)) else int(stride)
            gop.fan_in = max(1, math.ceil(w_shape[0] * kernel / max(stride, 1)))
        else:
            gop.operations = out * w_shape[1] * kernel
            gop.fan_in = w_shape[1] * kernel
            if t in ("conv1d", "conv2d", "conv3d"):  # (input, weight, bias, stride, padding, dilation, groups)
                gop.args.update(kernel=w_shape[2:], stride=_arg(node, 3, 1), dilation=_arg(node, 5, 1),
                                groups=int(_arg(node, 6, 1)))
            c_in = ins[0][1] if ins and len(ins[0]) > 1 else 0
            if w_shape[1] == 1 and c_in > 1:
                gop.depthwise_channels = c_in
    elif k == "dense" or (k == "matmul"):
        a = [x for x in node.args if isinstance(x, torch.fx.Node)]
        if t == "addmm":
            m1, m2 = _shape(a[1]), _shape(a[2])
            gop.fan_in = m1[-1]
            gop.operations = m1[0] * m1[1] * m2[1]
        elif t == "linear":
            gop.fan_in = _shape(a[1])[-1]
            gop.operations = out * gop.fan_in
        else:
            lhs = _shape(a[-2]) if t == "baddbmm" else _shape(a[0])
            gop.fan_in = lhs[-1] if lhs else 1
            gop.operations = out * gop.fan_in
    elif k == "attention":
        q, key, v = (_shape(x) for x in node.args[:3])
        batch = math.prod(q[:-2])
        length, s_len = q[-2], key[-2]
        gop.operations = batch * length * s_len * (q[-1] + v[-1])
        gop.fan_in = q[-1]
        gop.elementwise = {"softmax": batch * length * s_len, "scale": batch * length * s_len}
    elif k == "recurrent":
        _count_recurrent(gop, node)
    elif t in _INTERPOLATION:
        gop.operations = out * _interpolation_taps(t, ins[0] if ins else (), gop.output_shape)
    elif k in ("activation", "norm", "pool", "flatten"):
        gop.operations = first_in
    else:  # add, mul, elementwise, concat, embedding
        gop.operations = out


def _interpolation_taps(target: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Input elements weighted into one output element of an interpolating upsample (the corrected mode
    prices each as one add, as a pooling tap; the weight multiply is not priced).

    Antialiased (``_aa``) kernels widen their window by the input / output ratio of a shrunk dimension
    (rounded up); enlarged dimensions and the plain kernels use the fixed 2 (linear) or 4 (cubic) taps."""
    per_dim, dims = _INTERPOLATION[target]
    if not target.endswith("_aa") or len(in_shape) < dims or len(out_shape) < dims:
        return per_dim ** dims
    taps = 1
    for i, o in zip(in_shape[-dims:], out_shape[-dims:]):
        taps *= math.ceil(per_dim * max(1.0, i / max(o, 1)))
    return taps


#: per recurrent cell type: (gates, element-wise ops per hidden unit and step: activations, muls, adds)
_CELLS = {"lstm": (4, 5, 3, 1), "gru": (3, 3, 3, 3), "rnn_tanh": (1, 1, 0, 0), "rnn_relu": (1, 1, 0, 0)}


def _count_recurrent(gop: GraphOp, node: torch.fx.Node) -> None:
    """Gate matmuls of every layer, direction and time step, plus the cell's element-wise work."""
    gates, acts, muls, adds = _CELLS[gop.target]
    x = gop.input_shapes[0]
    num_layers = int(_arg(node, 4, 1))
    bidirectional = bool(_arg(node, 7, False))
    batch_first = bool(_arg(node, 8, False))
    steps, batch = (x[1], x[0]) if batch_first else (x[0], x[1])
    if len(x) == 2:  # unbatched input (T, I)
        steps, batch = x[0], 1
    dirs = 2 if bidirectional else 1
    w_hh = next(v for r, v in gop.params.items() if r.endswith("weight_hh_l0"))
    hidden = int(w_hh.shape[1])
    has_bias = bool(_arg(node, 3, True))
    macs = 0
    size = x[-1]
    for _ in range(num_layers):
        macs += dirs * steps * batch * gates * hidden * (size + hidden)
        size = hidden * dirs
    gop.operations = macs
    gop.fan_in = x[-1] + hidden + (2 if has_bias else 0)
    cells = num_layers * dirs * steps * batch * hidden
    gop.elementwise = {"activation": acts * cells, "mul": muls * cells, "add": adds * cells}


def zero_fractions(ep: torch.export.ExportedProgram, example_inputs: Any, nodes: set[str]) -> dict[str, float]:
    """Run the exported graph on ``example_inputs`` and return the fraction of exact zeros in each node of
    ``nodes`` (the measured activation sparsity of operation inputs)."""
    from torch.export.graph_signature import InputKind

    args = iter(example_tensors(example_inputs))
    state = ep.state_dict
    flat = []
    for spec in ep.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            flat.append(next(args))
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            flat.append(state[spec.target] if spec.target in state else ep.constants[spec.target])
        else:
            flat.append(ep.constants[spec.target])
    found: dict[str, float] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if n.name in nodes and isinstance(value, torch.Tensor) and value.numel():
                found[n.name] = float((value == 0).sum()) / value.numel()
            return value

    with torch.no_grad():
        Recorder(ep.graph_module).run(*flat)
    return found

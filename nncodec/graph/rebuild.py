"""Rebuilding a runnable module from a validated ``nncodec.graph`` topology: an interpreter of ATen calls.

Nothing from the stream is executed as code: each node names an operator of the allow-list, looked up as an
attribute of ``torch.ops.aten`` (never imported by path), and is called with arguments made of earlier
values and plain data. Before any tensor is allocated, every node's arguments are checked against its
operator's schema and every parameter/buffer name against the module tree it will live in.
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..limits import DEFAULT_LIMITS, Limits
from .guards import GUARDS
from .schema import GETITEM, GraphError, GraphSpec, TensorSpec

__all__ = ["GraphModel", "rebuild", "load_graph_model"]

log = logging.getLogger(__name__)

_DTYPES = {"bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16, "int32": torch.int32,
           "int64": torch.int64, "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
           "float64": torch.float64, "uint16": torch.uint16, "uint32": torch.uint32, "uint64": torch.uint64}
_MEMORY_FORMATS = {"contiguous_format": torch.contiguous_format, "preserve_format": torch.preserve_format,
                   "channels_last": torch.channels_last, "channels_last_3d": torch.channels_last_3d}
_FLOATS = {"inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
_SPECIAL = frozenset({"ref", "device"})


class _Ref:
    __slots__ = ("slot",)

    def __init__(self, slot: int):
        self.slot = slot


class _Device:
    """A device argument: at run time, the device of the first input (the graph moves with the module).
    One instance, kept by copies of the module."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "_Device":
        return self

    def __reduce__(self) -> str:
        return "_DEVICE"


_DEVICE = _Device()


def _operator(op: str) -> Callable[..., Any]:
    if op == GETITEM:
        return operator.getitem
    _, name, overload = op.split(".")
    try:
        return getattr(getattr(torch.ops.aten, name), overload)
    except (AttributeError, RuntimeError):
        raise GraphError(f"graph topology: operator {op!r} is not available in this torch build") from None


def _compile(v: Any, names: dict[str, int]) -> tuple[Any, bool]:
    """A JSON argument as a Python value; ``True`` when it must be filled in at run time."""
    if isinstance(v, list):
        items = [_compile(x, names) for x in v]
        return [x for x, _ in items], any(dyn for _, dyn in items)
    if isinstance(v, dict):
        (key, value), = v.items()
        if key == "ref":
            return _Ref(names[value]), True
        if key == "device":
            return _DEVICE, True
        if key == "dtype":
            return _DTYPES[value], False
        if key == "layout":
            return torch.strided, False
        if key == "memory_format":
            return _MEMORY_FORMATS[value], False
        return _FLOATS[value], False
    return v, False


def _fill(v: Any, env: list[Any], device: torch.device) -> Any:
    if isinstance(v, _Ref):
        return env[v.slot]
    if isinstance(v, list):
        return [_fill(x, env, device) for x in v]
    if v is _DEVICE:
        return device
    return v


def _check_schema(fn: Any, args: list[Any], kwargs: dict[str, Any], where: str) -> None:
    schema = getattr(fn, "_schema", None)
    if schema is None:  # getitem
        return
    params = list(schema.arguments)
    positional = [a for a in params if not a.kwarg_only]
    if len(args) > len(positional):
        raise GraphError(f"graph topology: {where} passes {len(args)} arguments, the operator takes at most "
                         f"{len(positional)} positionally")
    known = {a.name for a in params}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise GraphError(f"graph topology: {where} passes unknown keywords {unknown}")
    given = {a.name for a in positional[:len(args)]}
    twice = sorted(given & set(kwargs))
    if twice:
        raise GraphError(f"graph topology: {where} passes {twice} twice")
    missing = [a.name for a in params if a.name not in given and a.name not in kwargs and not a.has_default_value()]
    if missing:
        raise GraphError(f"graph topology: {where} lacks required arguments {missing}")


def _makes_tensors(fn: Any) -> bool:
    """Whether an operator creates tensors on a ``device`` keyword (zeros, arange, ...)."""
    schema = getattr(fn, "_schema", None)
    return schema is not None and any(a.name == "device" and a.kwarg_only for a in schema.arguments)


def _owner_paths(tensors: list[TensorSpec]) -> dict[str, tuple[str, str]]:
    """``target -> (module path, attribute)``, checking that the names form a tree of modules and tensors."""
    reserved = set(dir(nn.Module())) | {"graph_constants"}
    leaves: dict[str, tuple[str, str]] = {}
    modules: set[str] = {""}
    for t in tensors:
        if t.kind == "constant" or t.target in leaves:
            continue
        parts = t.target.split(".")
        if any(not p or p in reserved or not p.isprintable() for p in parts):
            raise GraphError(f"graph topology: tensor target {t.target!r} is not a valid module path")
        for i in range(1, len(parts)):
            modules.add(".".join(parts[:i]))
        leaves[t.target] = (".".join(parts[:-1]), parts[-1])
    clash = sorted(set(leaves) & modules)
    if clash:
        raise GraphError(f"graph topology: {clash[0]!r} is both a tensor and a module path")
    return leaves


class GraphModel(nn.Module):
    """A module that runs a stored graph: parameters and buffers under their original names (so
    ``state_dict()`` keys equal the stream's tensor names), ``forward(*inputs)`` interprets the nodes.

    The graph is specialised to the input shapes and dtypes it was captured with (``input_specs``); other
    inputs raise :class:`~nncodec.errors.ConfigError`. Construction checks every node against its operator's
    schema, then runs the graph once on ``meta`` tensors (shapes only, no data): a node that fails there, or
    whose output has more than ``limits.max_tensor_elements`` elements, is refused before any weight is
    allocated. Created with uninitialised weights: load them next.
    """

    def __init__(self, spec: GraphSpec, limits: Limits = DEFAULT_LIMITS):
        super().__init__()
        ops = []
        for name, op, args, kwargs in spec.nodes:  # all checks first, then allocation
            fn = _operator(op)
            _check_schema(fn, args, kwargs, f"node {name!r} ({op})")
            ops.append(fn)
        paths = _owner_paths(spec.tensors)
        self.input_specs = [(n, _DTYPES[d], s) for n, d, s in spec.inputs]
        last_use: dict[int, int] = {}
        self._program: list[tuple[int, Any, Any, Any, bool, dict[str, Any], bool, str]] = []
        for i, ((name, op, args, kwargs), fn) in enumerate(zip(spec.nodes, ops)):
            cargs, dyn_a = _compile(args, spec.names)
            ckw = {k: _compile(v, spec.names) for k, v in kwargs.items()}
            if "device" not in ckw and _makes_tensors(fn):  # factories follow the inputs (meta in the dry run)
                ckw["device"] = (_DEVICE, True)
            self._program.append((spec.names[name], fn, GUARDS.get(fn), cargs, dyn_a,
                                  {k: v for k, (v, _) in ckw.items()},
                                  any(d for _, d in ckw.values()), f"node {name!r} ({op})"))
            for ref in _refs(args) + _refs(list(kwargs.values())):
                last_use[spec.names[ref]] = i
        self._outputs, _ = _compile(spec.outputs, spec.names)
        keep = {spec.names[r] for r in _refs(spec.outputs)}
        self._free: list[list[int]] = [[] for _ in spec.nodes]
        for slot, i in last_use.items():
            if slot not in keep:
                self._free[i].append(slot)
        self._structure = spec.structure
        self._slots = len(spec.names)
        self._input_slots = [spec.names[n] for n, _, _ in spec.inputs]
        self._dry_run(spec, limits)
        self.graph_constants = nn.Module()
        self._reads: list[tuple[int, nn.Module, str]] = []
        for t in spec.tensors:
            slot = spec.names[t.name]
            if t.kind == "constant":
                attr = f"c{slot}"
                value = (torch.frombuffer(bytearray(t.data), dtype=_DTYPES[t.dtype]).reshape(t.shape) if t.data
                         else torch.empty(t.shape, dtype=_DTYPES[t.dtype]))
                self.graph_constants.register_buffer(attr, value, persistent=False)
                self._reads.append((slot, self.graph_constants, attr))
                continue
            path, attr = paths[t.target]
            owner = self._module_at(path)
            if attr not in owner._parameters and attr not in owner._buffers:
                value = torch.empty(t.shape, dtype=_DTYPES[t.dtype])
                if t.kind == "parameter":
                    owner.register_parameter(attr, nn.Parameter(value, requires_grad=value.is_floating_point()))
                else:
                    owner.register_buffer(attr, value)
            self._reads.append((slot, owner, attr))

    def _module_at(self, path: str) -> nn.Module:
        owner: nn.Module = self
        for part in path.split(".") if path else []:
            child = owner._modules.get(part)
            if child is None:
                child = nn.Module()
                owner.add_module(part, child)
            owner = child
        return owner

    def _dry_run(self, spec: GraphSpec, limits: Limits) -> None:
        meta = torch.device("meta")
        env: list[Any] = [None] * self._slots
        for name, dtype, shape in spec.inputs:
            limits.check(f"graph topology: input {name!r} elements", math.prod(shape), "max_tensor_elements")
            env[spec.names[name]] = torch.empty(shape, dtype=_DTYPES[dtype], device=meta)
        for t in spec.tensors:
            env[spec.names[t.name]] = torch.empty(t.shape, dtype=_DTYPES[t.dtype], device=meta)

        def check(where: str, value: Any) -> None:
            for v in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(v, torch.Tensor):
                    limits.check(f"graph topology: {where} output elements", v.numel(), "max_tensor_elements")
        self._run(env, meta, check)

    def _run(self, env: list[Any], device: torch.device, check: Callable[[str, Any], None] | None = None) -> Any:
        for (slot, fn, guard, args, dyn_a, kwargs, dyn_k, where), free in zip(self._program, self._free):
            a = _fill(args, env, device) if dyn_a else args
            k = {n: _fill(v, env, device) for n, v in kwargs.items()} if dyn_k else kwargs
            try:
                if guard is not None:
                    guard(a, k)
                env[slot] = out = fn(*a, **k)
            except GraphError as exc:
                raise GraphError(f"graph topology: {where}: {exc.reason}"[:400]) from None
            except (RuntimeError, TypeError, ValueError, IndexError, NotImplementedError, ArithmeticError,
                    AssertionError) as exc:  # torch's meta kernels check some shapes with AssertionError
                raise GraphError(f"graph topology: {where} fails on {device.type} tensors: "
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"[:400]) from None
            if check is not None:
                check(where, out)
            for s in free:
                env[s] = None
        return _restructure(self._structure, _fill(self._outputs, env, device))

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_specs):
            raise ConfigError(f"this graph takes {len(self.input_specs)} inputs, got {len(inputs)}")
        for x, (name, dtype, shape) in zip(inputs, self.input_specs):
            if not isinstance(x, torch.Tensor) or x.dtype != dtype or tuple(x.shape) != shape:
                got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
                raise ConfigError(f"input {name!r}: the graph was captured for {dtype} {list(shape)}, got {got} "
                                  "(the stored graph is specialised to its example input shapes)")
        env: list[Any] = [None] * self._slots
        for slot, x in zip(self._input_slots, inputs):
            env[slot] = x
        for slot, owner, attr in self._reads:
            env[slot] = getattr(owner, attr)
        return self._run(env, inputs[0].device if inputs else torch.device("cpu"))


def _refs(v: Any) -> list[str]:
    if isinstance(v, list):
        return [r for x in v for r in _refs(x)]
    if isinstance(v, dict) and "ref" in v:
        return [v["ref"]]
    return []


def _restructure(s: Any, leaves: list[Any]) -> Any:
    if isinstance(s, int):
        return leaves[s]
    (key, value), = s.items()
    if key == "tuple":
        return tuple(_restructure(x, leaves) for x in value)
    if key == "list":
        return [_restructure(x, leaves) for x in value]
    return {k: _restructure(x, leaves) for k, x in value}


def rebuild(spec: GraphSpec, limits: Limits = DEFAULT_LIMITS) -> GraphModel:
    """A :class:`GraphModel` for a validated graph (weights uninitialised; load them with ``load_into``)."""
    return GraphModel(spec, limits)


def load_graph_model(info: Any, load: Callable[[nn.Module], list[str]],
                     limits: Limits = DEFAULT_LIMITS) -> GraphModel:
    """Validate the graph topology of a stream (``info`` from :func:`nncodec.read_info`) against its tensor
    headers, rebuild it, and fill its weights with ``load(module)``; eval mode."""
    from . import stream_tensor_specs
    from .schema import validate

    model = rebuild(validate(info.topology, stream_tensor_specs(info)), limits)
    unexpected = load(model)
    if unexpected:
        log.debug("stream tensors the graph does not read: %s", unexpected[:10])
    return model.eval()

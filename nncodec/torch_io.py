"""The torch edge: state_dicts and modules in, tensors out. The only codec module that imports torch."""

from __future__ import annotations

import os
from collections.abc import Container, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decoder import Source, iter_tensors
from .dtypes import DType, dtype_by_name
from .bitstream.descriptor import CodedTensor
from .encoder import EncodeReport, Encoder, encoder_from_options, numpy_storage
from .errors import ConfigError, UnknownUnitError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["tensors_from", "to_torch", "encode", "encode_with_report", "decode", "load_into", "load_model", "save",
           "load"]

_TORCH_NAMES = {
    torch.bool: "bool", torch.uint8: "uint8", torch.int8: "int8", torch.int16: "int16", torch.int32: "int32",
    torch.int64: "int64", torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32",
    torch.float64: "float64", torch.uint16: "uint16", torch.uint32: "uint32", torch.uint64: "uint64",
}
_FROM_NAME = {v: k for k, v in _TORCH_NAMES.items()}


def _storage_of(t: torch.Tensor, name: str) -> tuple[np.ndarray, DType]:
    if t.dtype not in _TORCH_NAMES:
        raise ConfigError(f"tensor {name!r} has unsupported dtype {t.dtype}")
    dt = dtype_by_name(_TORCH_NAMES[t.dtype])
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16), dt
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):
        signed = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}[t.dtype]
        return t.view(signed).numpy().view(dt.storage), dt
    return t.numpy(), dt


def tensors_from(obj: Any, quantized: bool = True) -> dict[str, Any]:
    """``{name: (storage words, dtype) or CodedTensor}`` from an ``nn.Module``, a state_dict, or a dict of
    arrays/tensors. With ``quantized``, the weights and biases of fake-quant layers become their codes."""
    if isinstance(obj, torch.nn.Module):
        if quantized:
            from .quant.export import quantized_state

            obj = quantized_state(obj)
        else:
            obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ConfigError(f"cannot encode a {type(obj).__name__}: pass an nn.Module or a dict of tensors")
    out = {}
    for name, v in obj.items():
        if not isinstance(name, str):
            raise ConfigError(f"tensor names must be strings, got {name!r}")
        if isinstance(v, CodedTensor):
            out[name] = v
        elif isinstance(v, torch.Tensor):
            out[name] = _storage_of(v, name)
        elif isinstance(v, np.ndarray) or np.isscalar(v):
            out[name] = numpy_storage(v, name)
        else:
            raise ConfigError(f"value of {name!r} is a {type(v).__name__}, not a tensor or array")
    return out


def to_torch(storage: np.ndarray, dtype: DType) -> torch.Tensor:
    """A torch tensor sharing memory with decoded storage words."""
    if dtype.name == "bfloat16":
        return torch.from_numpy(storage.view(np.int16)).view(torch.bfloat16)
    if dtype.name in ("uint16", "uint32", "uint64"):
        signed = {"uint16": np.int16, "uint32": np.int32, "uint64": np.int64}[dtype.name]
        return torch.from_numpy(storage.view(signed)).view(_FROM_NAME[dtype.name])
    return torch.from_numpy(storage)


#: options of the rate–distortion encode (:mod:`nncodec.tuning`, :mod:`nncodec.rd_encode`)
_RD_OPTIONS = ("calibration", "forward", "rounding", "rate_lambda", "damp", "target_fidelity",
               "target_bits_per_param", "fidelity", "refine_steps", "refine_lr", "column_steps", "column_power",
               "fisher_probes")


def encode_with_report(obj: Any, dst: str | os.PathLike[str] | None = None, *,
                       topology: "bool | str | Mapping | None" = "auto", quantized: bool = True,
                       example_inputs: Any = None, **options: Any) -> tuple[bytes | Path, EncodeReport]:
    """As :func:`encode`, and also return the per-tensor :class:`EncodeReport`.

    For a module with fake-quant layers (:mod:`nncodec.quant.layers`), ``quantized=True`` stores their
    weights and biases as integer codes (decoding gives exactly the quantized values); ``False`` stores
    the float weights the layers train. ``topology``: ``"auto"`` records the module tree when it can be
    described (so :func:`load_model` can rebuild it), ``True`` requires it (an unsupported module is an
    error naming it), ``False``/None records none; a dict is stored as given. With ``example_inputs`` (a
    tuple of tensors for ``forward``), the model's ``torch.export`` graph is recorded instead (any exportable
    model: residual, recurrent, attention...; see :mod:`nncodec.graph`), specialised to those input shapes.

    Rate–distortion options (:mod:`nncodec.tuning`): ``calibration`` batches with ``forward``,
    ``rounding="gptq"``, ``rate_lambda``, ``refine_steps`` / ``refine_lr``, ``column_steps`` (``"hessian"`` /
    ``"fisher"``: per-input-channel steps, :mod:`nncodec.quant.column_steps`) with ``column_power`` and
    ``fisher_probes``, ``target_fidelity`` / ``target_bits_per_param`` (with
    ``fidelity``). ``base``: code only the differences from a base model (:mod:`nncodec.delta`).

    Cost of ``calibration``: its default rounding, ``"gptq"``, runs one forward per batch for the layers'
    input Hessians and, for a model with an untied ``nn.Embedding`` table, one more forward and
    ``fisher_probes`` (default 4) backward passes per batch for the tables' row Hessians
    (:mod:`nncodec.quant.gptq`; on all-MiniLM-L6-v2 an encode took about twice as long). A ``forward``
    whose output has no gradient (run under ``torch.no_grad``) skips those probes: the tables keep plain
    rounding (logged), the Linear / Conv layers keep GPTQ.

    ``operating_points``: several nested points in one stream (:mod:`nncodec.scalable`; ``nest_steps=True``
    snaps their steps so they nest); each point's energy per input is estimated on ``energy_input_shape``
    (float zeros) or ``energy_inputs`` (a tensor or tuple of tensors, batch 1, e.g. token ids and mask).
    """
    return _encode(obj, dst, topology=topology, quantized=quantized, example_inputs=example_inputs, report=True,
                   **options)


def _encode(obj: Any, dst: str | os.PathLike[str] | None, *, topology: "bool | str | Mapping | None" = "auto",
            quantized: bool = True, example_inputs: Any = None, report: bool = True,
            **options: Any) -> tuple[bytes | Path, EncodeReport]:
    """:func:`encode_with_report`; with ``report=False`` the report's calibration fidelity (a decode and a
    forward pass over the calibration batches) is left unmeasured (None): :func:`encode` drops the report."""
    from .topology import TopologyError, describe

    topo: Mapping | None = None
    tensors = tensors_from(obj, quantized)
    if example_inputs is not None:
        if not isinstance(obj, torch.nn.Module):
            raise ConfigError("example_inputs needs an nn.Module to capture, not a state_dict")
        if topology not in (True, "auto"):
            raise ConfigError(f"example_inputs records the model's graph; it does not apply with topology={topology!r}")
        from .graph.capture import capture_graph

        topo = capture_graph(obj, example_inputs, quantized=quantized, stream_tensors=tensors)
    elif isinstance(topology, Mapping):
        topo = topology
    elif topology in (True, "auto") and isinstance(obj, torch.nn.Module):
        try:
            topo = describe(obj)
        except TopologyError:
            if topology is True:
                raise
    elif topology is True:
        raise ConfigError("topology=True needs an nn.Module to describe")
    rd = {k: options.pop(k) for k in _RD_OPTIONS if k in options}
    base = options.pop("base", None)
    points = options.pop("operating_points", None)
    input_shape = options.pop("energy_input_shape", None)
    energy_inputs = options.pop("energy_inputs", None)
    if input_shape is not None and energy_inputs is not None:
        raise ConfigError("give one of energy_input_shape and energy_inputs")
    if points is not None:
        if base is not None or rd:
            raise ConfigError("operating_points cannot be combined with base= or the rate-distortion options "
                              f"({', '.join(sorted(rd)) or 'base'})")
        from .scalable import encode_scalable

        widths = [p.get("width") if isinstance(p, Mapping) else None for p in points]
        if any(w is not None for w in widths):
            if not isinstance(obj, torch.nn.Module):
                raise ConfigError("operating points with a width need the nn.Module (its layer structure)")
            from .search.slimmable import points_with_widths

            points = points_with_widths(obj, points)
        return encode_scalable(tensors, points, dst, topology=topo,
                               energy_of=_energy_fn(obj, input_shape, energy_inputs, widths),
                               **options)  # type: ignore[return-value]
    if input_shape is not None or energy_inputs is not None:
        raise ConfigError("energy_input_shape and energy_inputs apply only with operating_points")
    if base is not None:
        from .delta import encode_delta

        return encode_delta(tensors, base, dst, topo, quantized, options, rd)
    if rd:
        from .tuning import encode_rd

        return encode_rd(obj, tensors, dst, topo, options, measure_fidelity=report, **rd)
    return encoder_from_options(options).encode(tensors, dst, topo)


def _energy_fn(obj: Any, input_shape: Any, energy_inputs: Any, widths: list) -> Any:
    """Energy of an operating point from its code bits per tensor and its width
    (:func:`nncodec.energy.estimate_energy` on the point's sub-network), for one input: of
    ``input_shape`` (float zeros) or ``energy_inputs`` (a tensor or tuple of tensors, batch 1: token ids,
    masks... for graphs such as transformers)."""
    if input_shape is None and energy_inputs is None:
        return None
    if not isinstance(obj, torch.nn.Module):
        raise ConfigError("energy_input_shape / energy_inputs need an nn.Module to estimate the energy of")
    if energy_inputs is not None and not (isinstance(energy_inputs, torch.Tensor) or (
            isinstance(energy_inputs, tuple) and energy_inputs
            and all(isinstance(t, torch.Tensor) for t in energy_inputs))):
        raise ConfigError(f"energy_inputs must be a tensor or a tuple of tensors, got {type(energy_inputs).__name__}")
    example = tuple(input_shape) if energy_inputs is None else energy_inputs
    from .energy import estimate_energy
    from .scalable import plan_from_bits

    def energy_of(k: int, bits: Any) -> float:
        model = obj
        if widths[k] is not None:
            from .search.slimmable import sub_network

            model = sub_network(obj, widths[k])
        return float(estimate_energy(model, example, plan_from_bits(bits)).total_pj)

    return energy_of


def encode(obj: Any, dst: str | os.PathLike[str] | None = None, **options: Any) -> bytes | Path:
    """Encode a module / state_dict; return the bytes, or the path written atomically when ``dst`` is given.

    ``options`` as :func:`encode_with_report`. With ``calibration=`` batches the codes are GPTQ-rounded by
    default; for a model with an untied ``nn.Embedding`` this costs one forward and ``fisher_probes``
    (default 4) backward passes per batch on top of a forward per batch (a ``forward`` under
    ``torch.no_grad`` skips them and keeps the tables plain): see :func:`encode_with_report`."""
    return _encode(obj, dst, report=False, **options)[0]


def decode(src: Source, *, limits: Limits = DEFAULT_LIMITS, base: Any = None,
           operating_point: int | None = None) -> dict[str, torch.Tensor]:
    """Decode a stream into ``{name: torch.Tensor}`` (CPU), in stream order. Tied tensors (aliases) come back
    as one tensor object under each of their names, as ``torch.load`` gives them. A delta stream needs the
    ``base`` it was encoded against (:mod:`nncodec.delta`)."""
    if base is not None and operating_point is not None:
        raise ConfigError("a delta stream (base=) has no operating points: give base= or operating_point=")
    if base is not None:
        from .delta import decode_delta_arrays

        return {n: to_torch(arr, dt) for n, (arr, dt) in decode_delta_arrays(src, base, limits=limits).items()}
    out: dict[str, torch.Tensor] = {}
    shared: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # by the decoded array an alias shares
    try:
        for th, arr in iter_tensors(src, limits=limits, operating_point=operating_point):
            if id(arr) not in shared:
                shared[id(arr)] = (arr, to_torch(arr, th.dtype))
            out[th.name] = shared[id(arr)][1]
    except UnknownUnitError as exc:
        from .delta import UNIT_BASE_REFERENCE

        if f"{UNIT_BASE_REFERENCE:#04x}" not in exc.reason:
            raise
        raise UnknownUnitError(f"{exc.reason}: a delta stream (base reference); decode it with base=",
                               unit_index=exc.unit_index, offset=exc.offset) from None
    return out


def refuse_folded_weights(unexpected: Iterable[str], loaded: Container[str], where: str) -> None:
    """Raise :class:`ConfigError` when a stream's ``<layer>.input_scale`` (per-channel input steps,
    :mod:`nncodec.quant.input_steps`) has no place in the module while its ``<layer>.weight`` was loaded:
    that weight is stored folded (``W[:, j] * s_j``) and a plain layer would compute a wrong output."""
    for name in unexpected:
        if name.endswith(".input_scale") and f"{name[: -len('input_scale')]}weight" in loaded:
            layer = name[: -len(".input_scale")]
            raise ConfigError(f"{where}: {layer!r} has per-channel input steps ({name!r}) and its weight is "
                              f"stored folded by them; the module has no such buffer, so it would compute a "
                              f"wrong output: decode into the searched model (a QLinear with the plan's 'input'), "
                              f"or rebuild it class-free with nncodec.load_model")


def load_into(module: torch.nn.Module, src: Source, *, strict: bool = True,
              limits: Limits = DEFAULT_LIMITS, workers: int = 1, base: Any = None,
              operating_point: int | None = None) -> list[str]:
    """Decode a stream unit by unit straight into ``module``'s parameters and buffers.

    One unit at a time by default, for the least memory; ``workers > 1`` decodes several at once
    (faster, with up to 16 MiB of coded bytes read ahead; see :func:`~nncodec.decoder.iter_tensors`).

    Tensors whose destination is a contiguous CPU tensor of the same dtype and shape are decoded in
    place (no temporary); others are decoded and copied. Returns the names of tensors in the stream
    that the module does not have (an error when ``strict``). With ``strict``, names of the module
    missing from the stream are an error too. On error the module may be partly updated.
    """
    if base is not None and operating_point is not None:
        raise ConfigError("a delta stream (base=) has no operating points: give base= or operating_point=")
    if base is not None:  # a delta stream: rebuilt whole, then loaded
        decoded = decode(src, limits=limits, base=base)
        names = set(module.state_dict(keep_vars=False))
        refuse_folded_weights([n for n in decoded if n not in names], names & set(decoded), "load_into")
        result = module.load_state_dict(decoded, strict=strict)
        return list(result.unexpected_keys)
    targets = module.state_dict(keep_vars=False)
    unexpected: list[str] = []
    loaded: set[str] = set()

    def destination(th: Any) -> np.ndarray | None:
        t = targets.get(th.name)
        if t is None:
            return None
        if tuple(t.shape) != th.shape:
            raise ConfigError(f"shape of {th.name!r}: stream has {list(th.shape)}, module has {list(t.shape)}")
        if t.device.type == "cpu" and t.is_contiguous() and _TORCH_NAMES.get(t.dtype) == th.dtype.name:
            storage, _ = _storage_of(t, th.name)
            if storage.flags.writeable:
                return storage
        return None

    for th, arr in iter_tensors(src, limits=limits, destination=destination, workers=workers,
                                operating_point=operating_point):
        t = targets.get(th.name)
        if t is None:
            unexpected.append(th.name)
            continue
        loaded.add(th.name)
        if tuple(t.shape) != tuple(arr.shape):
            raise ConfigError(f"shape of {th.name!r}: stream has {list(arr.shape)}, module has {list(t.shape)}")
        src_t = to_torch(arr, th.dtype)
        if src_t.data_ptr() != t.data_ptr():
            with torch.no_grad():
                t.copy_(src_t)
    refuse_folded_weights(unexpected, loaded, "load_into")
    missing = [n for n in targets if n not in loaded]
    if strict and (missing or unexpected):
        raise ConfigError(f"load_into(strict=True): missing from the stream: {missing[:10]}; "
                          f"not in the module: {unexpected[:10]}")
    return unexpected


def load_model(src: Source, *, limits: Limits = DEFAULT_LIMITS, operating_point: int | None = None,
               energy_budget_pj: float | None = None) -> torch.nn.Module:
    """Rebuild the model stored in ``src`` from its topology unit and load its weights (eval mode).

    Weights stored as quantized codes are loaded as their values, and those layers' weight quantizers are
    dropped (the values are already quantized); activation quantizers stay. A stream without a topology
    unit raises :class:`~nncodec.topology.TopologyError`: use :func:`load_into` with your model class.
    A graph topology (:mod:`nncodec.graph`) is validated completely before any tensor is allocated or any
    operator runs. ``src`` may be a path, bytes or a binary file object (read once).

    A scalable stream loads at ``operating_point`` (default: its last), or at the best point whose energy
    fits ``energy_budget_pj`` (:func:`nncodec.points.choose_point`); the chosen index is the model's
    ``nncodec_operating_point`` attribute.
    """
    from .decoder import read_info
    from .topology import TopologyError, build

    if not isinstance(src, (bytes, bytearray, memoryview, str, os.PathLike)) and hasattr(src, "read"):
        src = src.read()  # read once: the stream is walked twice (topology and headers, then weights)
    if energy_budget_pj is not None and operating_point is not None:
        raise ConfigError("give operating_point or energy_budget_pj, not both")
    info = read_info(src, limits=limits)
    if energy_budget_pj is not None:
        from .points import choose_point

        operating_point = choose_point(info.operating_points, energy_budget_pj)
    if info.topology is None:
        raise TopologyError("this stream has no topology unit (the model was not a supported nn.Sequential "
                            "tree, and no example_inputs were given to capture its graph): build your model and "
                            "call nncodec.load_into(model, src)")
    if info.topology.get("format") == "nncodec.graph":
        from .graph.rebuild import load_graph_model

        if info.operating_points and operating_point not in (None, len(info.operating_points) - 1):
            raise ConfigError("a graph topology is rebuilt at the stream's full operating point only; "
                              "use load_into on a model of the narrower point")
        return load_graph_model(info, lambda m: load_into(m, src, strict=False, limits=limits), limits)
    topology = info.topology
    if info.operating_points:  # a narrower point (nested widths) rebuilds the sub-network it holds
        from .lazy import StreamFile
        from .search.slimmable import narrow_topology

        with StreamFile(src, limits=limits, operating_point=operating_point) as f:
            topology = narrow_topology(topology, {n: f.header(n).shape for n in f.keys()})
    model = build(topology)
    quantized = {t["name"] for t in info.tensor_entries() if t["scheme"] != "none"}
    from .quant.layers import _QuantParams

    for name, module in model.named_modules():
        if isinstance(module, _QuantParams):
            prefix = f"{name}." if name else ""
            names = {pname for pname, *_ in module.quantized_tensors()}
            if any(prefix + n in quantized for n in names if n.startswith("weight")):
                module.kernel_quantizer = None
                module._buffers.pop("weight_mask", None)
            if any(prefix + n in quantized for n in names if n.startswith("bias")):
                module.bias_quantizer = None
    load_into(model, src, strict=True, limits=limits, operating_point=operating_point)
    model.nncodec_operating_point = operating_point if operating_point is not None else \
        max(len(info.operating_points) - 1, 0)
    return model.eval()


def save(tensors: "Mapping[str, Any] | torch.nn.Module", path: str | os.PathLike[str],
         metadata: Mapping[str, str] | None = None, *, example_inputs: Any = None) -> Path:
    """Save tensors losslessly to ``path`` (atomic), like ``safetensors.torch.save_file``.

    A module is saved like :func:`encode` saves it, with its topology: the module tree of a supported
    ``nn.Sequential``, or its graph when ``example_inputs`` are given (so :func:`load_model` can rebuild it).
    """
    if isinstance(tensors, torch.nn.Module):
        return encode(tensors, path, metadata=metadata, example_inputs=example_inputs)  # type: ignore[return-value]
    if example_inputs is not None:
        raise ConfigError("example_inputs applies to an nn.Module, not to a dict of tensors")
    result, _ = Encoder(metadata=metadata).encode(tensors_from(tensors), path)
    return result  # type: ignore[return-value]


def load(path: Source, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Load tensors saved by :func:`save` (or any nncodec stream)."""
    return decode(path, limits=limits)

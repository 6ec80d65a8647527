"""The torch edge: state_dicts and modules in, tensors out. The only codec module that imports torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .decoder import Source, iter_tensors
from .dtypes import DType, dtype_by_name
from .bitstream.descriptor import CodedTensor
from .encoder import EncodeReport, Encoder, encoder_from_options, numpy_storage
from .errors import ConfigError
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


def encode_with_report(obj: Any, dst: str | os.PathLike[str] | None = None, *,
                       topology: "bool | str | Mapping | None" = "auto", quantized: bool = True,
                       **options: Any) -> tuple[bytes | Path, EncodeReport]:
    """As :func:`encode`, and also return the per-tensor :class:`EncodeReport`.

    For a module with fake-quant layers (:mod:`nncodec.quant.layers`), ``quantized=True`` stores their
    weights and biases as integer codes (decoding gives exactly the quantized values); ``False`` stores
    the float weights the layers train. ``topology``: ``"auto"`` records the module tree when it can be
    described (so :func:`load_model` can rebuild it), ``True`` requires it (an unsupported module is an
    error naming it), ``False``/None records none; a dict is stored as given.
    """
    from .topology import TopologyError, describe

    topo: Mapping | None = None
    if isinstance(topology, Mapping):
        topo = topology
    elif topology in (True, "auto") and isinstance(obj, torch.nn.Module):
        try:
            topo = describe(obj)
        except TopologyError:
            if topology is True:
                raise
    elif topology is True:
        raise ConfigError("topology=True needs an nn.Module to describe")
    return encoder_from_options(options).encode(tensors_from(obj, quantized), dst, topo)


def encode(obj: Any, dst: str | os.PathLike[str] | None = None, **options: Any) -> bytes | Path:
    """Encode a module / state_dict; return the bytes, or the path written atomically when ``dst`` is given."""
    return encode_with_report(obj, dst, **options)[0]


def decode(src: Source, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Decode a stream into ``{name: torch.Tensor}`` (CPU), in stream order. Tied tensors (aliases) come back
    as one tensor object under each of their names, as ``torch.load`` gives them."""
    out: dict[str, torch.Tensor] = {}
    shared: dict[int, tuple[np.ndarray, torch.Tensor]] = {}  # by the decoded array an alias shares
    for th, arr in iter_tensors(src, limits=limits):
        if id(arr) not in shared:
            shared[id(arr)] = (arr, to_torch(arr, th.dtype))
        out[th.name] = shared[id(arr)][1]
    return out


def load_into(module: torch.nn.Module, src: Source, *, strict: bool = True,
              limits: Limits = DEFAULT_LIMITS, workers: int = 1) -> list[str]:
    """Decode a stream unit by unit straight into ``module``'s parameters and buffers.

    One unit at a time by default, for the least memory; ``workers > 1`` decodes several at once
    (faster, with up to 16 MiB of coded bytes read ahead; see :func:`~nncodec.decoder.iter_tensors`).

    Tensors whose destination is a contiguous CPU tensor of the same dtype and shape are decoded in
    place (no temporary); others are decoded and copied. Returns the names of tensors in the stream
    that the module does not have (an error when ``strict``). With ``strict``, names of the module
    missing from the stream are an error too. On error the module may be partly updated.
    """
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

    for th, arr in iter_tensors(src, limits=limits, destination=destination, workers=workers):
        t = targets.get(th.name)
        if t is None:
            unexpected.append(th.name)
            continue
        loaded.add(th.name)
        src_t = to_torch(arr, th.dtype)
        if src_t.data_ptr() != t.data_ptr():
            with torch.no_grad():
                t.copy_(src_t)
    missing = [n for n in targets if n not in loaded]
    if strict and (missing or unexpected):
        raise ConfigError(f"load_into(strict=True): missing from the stream: {missing[:10]}; "
                          f"not in the module: {unexpected[:10]}")
    return unexpected


def load_model(src: Source, *, limits: Limits = DEFAULT_LIMITS) -> torch.nn.Module:
    """Rebuild the model stored in ``src`` from its topology unit and load its weights (eval mode).

    Weights stored as quantized codes are loaded as their values, and those layers' weight quantizers are
    dropped (the values are already quantized); activation quantizers stay. A stream without a topology
    unit raises :class:`~nncodec.topology.TopologyError`: use :func:`load_into` with your model class.
    """
    from .decoder import read_info
    from .topology import TopologyError, build

    info = read_info(src, limits=limits)
    if info.topology is None:
        raise TopologyError("this stream has no topology unit (the model was not a supported nn.Sequential "
                            "tree): build your model and call nncodec.load_into(model, src)")
    model = build(info.topology)
    quantized = {u.tensor["name"] for u in info.units if u.tensor and u.tensor["scheme"] != "none"}
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
    load_into(model, src, strict=True, limits=limits)
    return model.eval()


def save(tensors: Mapping[str, Any], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> Path:
    """Save tensors losslessly to ``path`` (atomic), like ``safetensors.torch.save_file``."""
    result, _ = Encoder(metadata=metadata).encode(tensors_from(tensors), path)
    return result  # type: ignore[return-value]


def load(path: Source, *, limits: Limits = DEFAULT_LIMITS) -> dict[str, torch.Tensor]:
    """Load tensors saved by :func:`save` (or any nncodec stream)."""
    return decode(path, limits=limits)

"""nncodec: make trained neural networks small, cheap to run and safe to ship.

Encode/decode API (torch at the edge, numpy underneath)::

    import nncodec
    data = nncodec.encode(model)                 # lossless; bytes
    nncodec.encode(model, "m.nnc", bits=8)       # 8-bit per-channel codes, atomic write
    scales = nncodec.calibrate_step_scales(model, batches)   # bits where the output needs them
    nncodec.encode(model, "m.nnc", rel_step=0.05, step_scales=scales)
    tensors = nncodec.decode("m.nnc")            # {name: torch.Tensor}
    nncodec.load_into(model, "m.nnc")            # straight into the module's parameters
    arrays = nncodec.decode_arrays("m.nnc")      # numpy only; never imports torch
    with nncodec.open("m.nnc") as f:             # lazy: decodes only the unit asked for
        w = f.get_tensor("conv.weight")
    model = nncodec.load_model("m.nnc")          # rebuilt from the topology unit, no class needed
    nncodec.encode(model, "m.nnc", calibration=batches, target_fidelity=0.998)  # search step; data-aware codes
    nncodec.encode(finetuned, "d.nnc", base=model)   # only the differences; decode("d.nnc", base=model)
    nncodec.encode(model, "g.nnc", example_inputs=(x,))   # any torch.export-able model: its graph as data

Importing nncodec is light: torch is imported on the first call that needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (BadMagicError, ChecksumError, ConfigError, CorruptError, FormatError, LimitExceededError,
                     NNCodecError, TruncatedError, UnknownUnitError, UnsupportedFeatureError,
                     UnsupportedVersionError)
from .limits import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from .bitstream.units import TensorHeader
    from .decoder import StreamInfo, UnitInfo, decode_arrays, iter_tensors, read_info
    from .encoder import EncodeReport, Encoder, TensorReport, encode_arrays
    from .lazy import StreamFile

#: public name -> module defining it, imported on first access: a process that only decodes never
#: imports the encoder (PEP 562; a cold start pays for what it uses)
_LAZY = {"TensorHeader": "bitstream.units",
         **dict.fromkeys(("StreamInfo", "UnitInfo", "decode_arrays", "iter_tensors", "read_info"), "decoder"),
         **dict.fromkeys(("EncodeReport", "Encoder", "TensorReport", "encode_arrays"), "encoder"),
         "StreamFile": "lazy"}


def __getattr__(name: str) -> Any:
    """The public names of :data:`_LAZY` and the submodules, imported on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "__version__",
    "encode", "encode_with_report", "decode", "load_into", "load_model", "open", "save", "load",
    "calibrate_step_scales", "encode_arrays", "decode_arrays", "iter_tensors", "read_info",
    "Encoder", "EncodeReport", "TensorReport", "Limits", "DEFAULT_LIMITS",
    "StreamInfo", "UnitInfo", "StreamFile", "TensorHeader",
    "NNCodecError", "FormatError", "BadMagicError", "UnsupportedVersionError", "TruncatedError",
    "CorruptError", "ChecksumError", "UnknownUnitError", "UnsupportedFeatureError", "LimitExceededError",
    "ConfigError",
]


def encode(obj: Any, dst: Any = None, **options: Any) -> Any:
    """Encode an ``nn.Module``, a state_dict or a dict of numpy arrays; see :class:`Encoder` for options.

    Returns the stream as bytes, or the :class:`pathlib.Path` written (atomically) when ``dst`` is given.
    """
    if isinstance(obj, dict) and all(type(v).__module__ == "numpy" for v in obj.values()):
        from .encoder import encode_arrays

        return encode_arrays(obj, dst, **options)
    from . import torch_io

    return torch_io.encode(obj, dst, **options)


def encode_with_report(obj: Any, dst: Any = None, **options: Any) -> Any:
    """As :func:`encode`, returning ``(bytes or path, EncodeReport)`` with per-tensor bits/param and errors."""
    from . import torch_io

    return torch_io.encode_with_report(obj, dst, **options)


def calibrate_step_scales(model: Any, batches: Any, **options: Any) -> dict[str, float]:
    """Per-tensor step factors for ``encode(model, rel_step=..., step_scales=...)`` measured on calibration
    batches; see :mod:`nncodec.sensitivity`."""
    from .sensitivity import calibrate_step_scales as _calibrate

    return _calibrate(model, batches, **options)


def decode(src: Any, *, limits: Limits = DEFAULT_LIMITS, base: Any = None,
           operating_point: int | None = None) -> Any:
    """Decode a stream (bytes, path or binary file) into ``{name: torch.Tensor}``; a delta stream with the
    ``base`` it was encoded against; a scalable stream at ``operating_point`` (default its last)."""
    from . import torch_io

    return torch_io.decode(src, limits=limits, base=base, operating_point=operating_point)


def load_into(module: Any, src: Any, *, strict: bool = True, limits: Limits = DEFAULT_LIMITS,
              workers: int = 1, base: Any = None, operating_point: int | None = None) -> list[str]:
    """Decode straight into ``module``'s parameters and buffers, unit by unit (``workers`` at once); a delta
    stream with the ``base`` it was encoded against; a scalable stream at ``operating_point``."""
    from . import torch_io

    return torch_io.load_into(module, src, strict=strict, limits=limits, workers=workers, base=base,
                              operating_point=operating_point)


def load_model(src: Any, *, limits: Limits = DEFAULT_LIMITS, operating_point: int | None = None,
               energy_budget_pj: float | None = None) -> Any:
    """Rebuild a runnable ``nn.Module`` from the stream's topology unit, with its weights loaded; a scalable
    stream at ``operating_point`` or at the best point within ``energy_budget_pj`` (pJ per input)."""
    from . import torch_io

    return torch_io.load_model(src, limits=limits, operating_point=operating_point,
                               energy_budget_pj=energy_budget_pj)


def open(src: Any, *, limits: Limits = DEFAULT_LIMITS,  # noqa: A001  (like safetensors.safe_open)
         operating_point: int | None = None) -> "StreamFile":
    """Open a stream for lazy access: ``with nncodec.open(path) as f: f.keys(); f.get_tensor(name)``;
    ``f.operating_points`` lists a scalable stream's points, tensors come at ``operating_point``."""
    from .lazy import StreamFile

    return StreamFile(src, limits=limits, operating_point=operating_point)


def save(tensors: Any, path: Any, metadata: Any = None, *, example_inputs: Any = None) -> Any:
    """Save a dict of tensors losslessly (atomic write), like ``safetensors.torch.save_file``; a module is
    saved with its topology, as :func:`encode` does (its graph when ``example_inputs`` are given)."""
    from . import torch_io

    return torch_io.save(tensors, path, metadata, example_inputs=example_inputs)


def load(path: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Load a file written by :func:`save` or :func:`encode` into ``{name: torch.Tensor}``."""
    from . import torch_io

    return torch_io.load(path, limits=limits)

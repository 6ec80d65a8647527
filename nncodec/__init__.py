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

Importing nncodec is light: torch is imported on the first call that needs it.
"""

from __future__ import annotations

from typing import Any


from .bitstream.units import TensorHeader
from .decoder import StreamInfo, UnitInfo, decode_arrays, iter_tensors, read_info
from .encoder import EncodeReport, Encoder, TensorReport, encode_arrays
from .errors import (BadMagicError, ChecksumError, ConfigError, CorruptError, FormatError, LimitExceededError,
                     NNCodecError, TruncatedError, UnknownUnitError, UnsupportedFeatureError,
                     UnsupportedVersionError)
from .lazy import StreamFile
from .limits import DEFAULT_LIMITS, Limits

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


def decode(src: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode a stream (bytes, path or binary file) into ``{name: torch.Tensor}``."""
    from . import torch_io

    return torch_io.decode(src, limits=limits)


def load_into(module: Any, src: Any, *, strict: bool = True, limits: Limits = DEFAULT_LIMITS,
              workers: int = 1) -> list[str]:
    """Decode straight into ``module``'s parameters and buffers, unit by unit (``workers`` at once)."""
    from . import torch_io

    return torch_io.load_into(module, src, strict=strict, limits=limits, workers=workers)


def load_model(src: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Rebuild a runnable ``nn.Module`` from the stream's topology unit, with its weights loaded."""
    from . import torch_io

    return torch_io.load_model(src, limits=limits)


def open(src: Any, *, limits: Limits = DEFAULT_LIMITS) -> StreamFile:  # noqa: A001  (like safetensors.safe_open)
    """Open a stream for lazy access: ``with nncodec.open(path) as f: f.keys(); f.get_tensor(name)``."""
    return StreamFile(src, limits=limits)


def save(tensors: Any, path: Any, metadata: Any = None) -> Any:
    """Save a dict of tensors losslessly (atomic write), like ``safetensors.torch.save_file``."""
    from . import torch_io

    return torch_io.save(tensors, path, metadata)


def load(path: Any, *, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Load a file written by :func:`save` or :func:`encode` into ``{name: torch.Tensor}``."""
    from . import torch_io

    return torch_io.load(path, limits=limits)

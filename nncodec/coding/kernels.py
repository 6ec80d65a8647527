"""Which kernels run the entropy stages' loops: compiled C when the extension was built, else portable.

Decoding never needs a runtime compiler: the C extension ``_rans_native`` (built when the package is
installed) or, without it, :mod:`.rans_portable` (same output, much slower; a warning says so once).
Encoding stage 6 uses the C kernel, else the portable one (and the encoder then prefers other stages).
``NNCODEC_KERNELS=portable`` forces the portable kernels (for tests and comparisons).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from types import ModuleType

__all__ = ["decode_kernels", "encode_kernels", "native_kernels", "fast_encoder_available", "load_extension"]

log = logging.getLogger(__name__)


def load_extension(module: str) -> ModuleType | None:
    """The compiled extension ``module`` (dotted name), or None when it was not built (or
    ``NNCODEC_KERNELS=portable``, which forces the portable code)."""
    if os.environ.get("NNCODEC_KERNELS", "") == "portable":
        return None
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


@functools.cache
def native_kernels() -> ModuleType | None:
    """The compiled entropy kernels (``_rans_native``), or None (:func:`load_extension`)."""
    return load_extension(f"{__package__}._rans_native")


@functools.cache
def decode_kernels() -> ModuleType:
    """``decode`` (stage 6) and ``ans_decode`` (stage 5): compiled if built, else portable."""
    native = native_kernels()
    if native is not None:
        return native
    log.warning("nncodec's compiled entropy kernels are not built: decoding with the slow portable ones "
                "(reinstall with a C compiler present)")
    from . import rans_portable

    return rans_portable


@functools.cache
def fast_encoder_available() -> bool:
    """Whether stage 6 encodes at compiled speed (the C extension is built)."""
    return native_kernels() is not None


@functools.cache
def encode_kernels() -> ModuleType:
    """``encode`` of stage 6: compiled if built, else portable."""
    native = native_kernels()
    if native is not None:
        return native
    from . import rans_portable

    return rans_portable

"""Element types of the format (ids are part of the format; never renumber).

numpy has no bfloat16: bfloat16 tensors travel as their uint16 bit patterns, and the numpy-level
API returns them as ``uint16`` arrays (the torch adapter views them back as ``torch.bfloat16``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DType", "DTYPES", "dtype_by_id", "dtype_by_name", "dtype_of_array"]


@dataclass(frozen=True)
class DType:
    id: int
    name: str
    storage: np.dtype      # little-endian numpy dtype of the stored words
    is_float: bool
    is_int: bool

    @property
    def itemsize(self) -> int:
        return self.storage.itemsize


def _d(i: int, name: str, storage: str, is_float: bool = False, is_int: bool = False) -> DType:
    return DType(i, name, np.dtype(storage), is_float, is_int)


DTYPES: tuple[DType, ...] = (
    _d(1, "bool", "|b1"),
    _d(2, "uint8", "|u1", is_int=True),
    _d(3, "int8", "|i1", is_int=True),
    _d(4, "uint16", "<u2", is_int=True),
    _d(5, "int16", "<i2", is_int=True),
    _d(6, "uint32", "<u4", is_int=True),
    _d(7, "int32", "<i4", is_int=True),
    _d(8, "uint64", "<u8", is_int=True),
    _d(9, "int64", "<i8", is_int=True),
    _d(10, "float16", "<f2", is_float=True),
    _d(11, "bfloat16", "<u2", is_float=True),
    _d(12, "float32", "<f4", is_float=True),
    _d(13, "float64", "<f8", is_float=True),
)
_BY_ID = {d.id: d for d in DTYPES}
_BY_NAME = {d.name: d for d in DTYPES}


def dtype_by_id(i: int) -> DType | None:
    """The dtype with format id ``i``, or None when unknown."""
    return _BY_ID.get(i)


def dtype_by_name(name: str) -> DType:
    from .errors import ConfigError

    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unsupported dtype {name!r}; supported: {', '.join(_BY_NAME)}") from None


def dtype_of_array(a: np.ndarray) -> DType:
    """The format dtype of a numpy array (``ml_dtypes.bfloat16`` arrays map to bfloat16)."""
    from .errors import ConfigError

    if a.dtype.name == "bfloat16":
        return _BY_NAME["bfloat16"]
    if a.dtype == np.bool_:
        return _BY_NAME["bool"]
    name = a.dtype.name
    if name not in _BY_NAME or a.dtype.kind not in "uif":
        raise ConfigError(f"unsupported numpy dtype {a.dtype}; supported: {', '.join(_BY_NAME)}")
    return _BY_NAME[name]


def contiguous(a: np.ndarray) -> np.ndarray:
    """``a`` as a C-contiguous array of the same shape (unlike ``np.ascontiguousarray``, keeps 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")

"""Byte-plane shuffle: byte ``j`` of every element first, then byte ``j+1``; helps zstd on floats."""

from __future__ import annotations

import struct

import numpy as np

from ..bitstream.constants import STAGE_SHUFFLE
from ..errors import ConfigError, CorruptError
from .stage import Stage, register_stage

__all__ = ["Shuffle"]


@register_stage
class Shuffle(Stage):
    """Params: element_size u8 (2..8). Framing: none; output size equals input size."""

    stage_id = STAGE_SHUFFLE
    codec_id = "shuffle"

    def __init__(self, element_size: int):
        if not 2 <= element_size <= 8:
            raise ConfigError(f"shuffle: element_size must be 2..8, got {element_size}")
        self.element_size = element_size

    def params(self) -> bytes:
        return struct.pack("<B", self.element_size)

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "Shuffle":
        if len(params) != 1 or not 2 <= params[0] <= 8:
            raise CorruptError(f"shuffle params invalid: {bytes(params).hex()}")
        return cls(params[0])

    def get_config(self) -> dict:
        return {"id": self.codec_id, "element_size": self.element_size}

    def encode(self, data: memoryview) -> bytes:
        if len(data) % self.element_size:
            raise ConfigError(f"shuffle: {len(data)} bytes is not a multiple of {self.element_size}")
        a = np.frombuffer(data, dtype=np.uint8).reshape(-1, self.element_size)
        out = bytearray(len(data))  # the planes written once (no array + bytes copy)
        np.frombuffer(out, dtype=np.uint8).reshape(self.element_size, -1)[:] = a.T
        return out

    def decoded_size(self, data: memoryview) -> int:
        return len(data)

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        if len(data) != out.size or len(data) % self.element_size:
            raise CorruptError(f"shuffle input of {len(data)} bytes does not fit {out.size} output bytes "
                               f"of {self.element_size}-byte elements")
        planes = np.frombuffer(data, dtype=np.uint8).reshape(self.element_size, -1)
        out.reshape(-1, self.element_size)[:] = planes.T

    def scatter(self, piece: np.ndarray, start: int, out: np.ndarray) -> None:
        """Un-shuffle ``piece``, the shuffled bytes ``[start, start + piece.size)``, into ``out`` (all elements)."""
        n = out.size // self.element_size
        elements = out.reshape(-1, self.element_size)
        at, end = start, start + piece.size
        while at < end:
            plane, first = divmod(at, n)
            take = min(end - at, n - first)
            elements[first:first + take, plane] = piece[at - start:at - start + take]
            at += take

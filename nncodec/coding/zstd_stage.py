"""The default entropy stage: one zstandard frame, content size and checksum always present."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import zstandard

from ..bitstream.constants import STAGE_ZSTD
from ..errors import ConfigError, CorruptError
from .stage import Stage, register_stage

__all__ = ["Zstd"]


@register_stage
class Zstd(Stage):
    """Params: none (the level is an encoder choice). Framing: exactly one zstd frame with its
    content size and XXH64 checksum. Decoding streams the frame straight into the destination,
    so the frame's declared size is checked before any byte is produced and never over-allocated.
    """

    stage_id = STAGE_ZSTD
    codec_id = "zstd"
    streams = True
    reads_files = True

    def __init__(self, level: int = 3):
        if not -7 <= level <= 22:
            raise ConfigError(f"zstd level must be -7..22, got {level}")
        self.level = level

    def params(self) -> bytes:
        return b""

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "Zstd":
        if len(params):
            raise CorruptError(f"zstd stage takes no params, got {len(params)} bytes")
        return cls()

    def get_config(self) -> dict:
        return {"id": self.codec_id, "level": self.level}

    def encode(self, data: memoryview) -> bytes:
        cctx = zstandard.ZstdCompressor(level=self.level, write_checksum=True, write_content_size=True)
        return cctx.compress(data)

    def decoded_size(self, data: memoryview) -> int:
        try:
            params = zstandard.get_frame_parameters(getattr(data, "head", data))
        except zstandard.ZstdError as exc:
            raise CorruptError(f"zstd frame header invalid: {exc}") from None
        if params.content_size == zstandard.CONTENTSIZE_UNKNOWN or params.content_size < 0:
            raise CorruptError("zstd frame does not declare its content size")
        if not params.has_checksum:
            raise CorruptError("zstd frame has no checksum")
        return int(params.content_size)

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        if self.decoded_size(data) != out.size:
            raise CorruptError(f"zstd frame declares {self.decoded_size(data)} bytes, {out.size} expected")
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            got = reader.readinto(memoryview(out)) if out.size else 0
            extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise CorruptError(f"zstd frame corrupt: {exc}") from None
        if got != out.size:
            raise CorruptError(f"zstd frame decoded to {got} bytes, {out.size} expected")
        if extra:
            raise CorruptError("zstd stage holds data after its frame")

    def iter_decode(self, data: memoryview, size: int, piece_bytes: int, ring: int = 1) -> Iterator[np.ndarray]:
        """As :meth:`Stage.iter_decode`; with ``ring`` buffers in rotation a piece stays valid until ``ring``
        more pieces have been asked for (for a consumer that runs behind a prefetching thread)."""
        if self.decoded_size(data) != size:
            raise CorruptError(f"zstd frame declares {self.decoded_size(data)} bytes, {size} expected")
        buffers = [np.empty(max(1, min(piece_bytes, size)), dtype=np.uint8) for _ in range(max(1, ring))]
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
            done = turn = 0
            while done < size:
                buf = buffers[turn % len(buffers)]
                turn += 1
                want = min(buf.size, size - done)
                got = 0
                while got < want:  # readinto may return less than asked for
                    n = reader.readinto(memoryview(buf)[got:want])
                    if not n:
                        raise CorruptError(f"zstd frame decoded to {done + got} bytes, {size} expected")
                    got += n
                yield buf[:want]
                done += want
            extra = reader.read(1)
        except zstandard.ZstdError as exc:
            raise CorruptError(f"zstd frame corrupt: {exc}") from None
        if extra:
            raise CorruptError("zstd stage holds data after its frame")

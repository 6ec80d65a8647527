"""The stage contract and the registry of stages keyed by their format ids.

A stage is a lossless, self-framing byte transform. Encoding runs a pipeline's stages in order;
decoding runs them in reverse, and the first stage of the pipeline decodes straight into the
destination tensor's memory. Each stage's serialized parameters travel in the pipeline entry of the
tensor data unit; anything else the decoder needs (counts, maps) is in the stage's own framing,
and :meth:`Stage.decoded_size` reads the size it declares so the caller can check it against limits
before allocating.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, UnsupportedFeatureError

__all__ = ["Stage", "register_stage", "stage_class", "stage_from_config", "entropy_stages", "REGISTRY", "WORD_DTYPES"]

#: unsigned little-endian word dtype per word size in bytes
WORD_DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
SIGNED_WORD_DTYPES = {1: np.dtype("<i1"), 2: np.dtype("<i2"), 4: np.dtype("<i4"), 8: np.dtype("<i8")}

REGISTRY: dict[int, type["Stage"]] = {}


class Stage(abc.ABC):
    """One lossless stage. Instances are immutable, thread-safe and cheap to build."""

    stage_id: ClassVar[int]
    codec_id: ClassVar[str]

    @abc.abstractmethod
    def params(self) -> bytes:
        """Parameters as stored in the pipeline entry (at most 255 bytes)."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: bytes | memoryview) -> "Stage":
        """Parse and validate stored parameters; raise :class:`CorruptError` when they are invalid."""

    @abc.abstractmethod
    def encode(self, data: memoryview) -> bytes:
        """Transform ``data`` (raw bytes) into this stage's framed output."""

    @abc.abstractmethod
    def decoded_size(self, data: memoryview) -> int:
        """The output size in bytes declared by the framing of ``data``, read without decoding."""

    @abc.abstractmethod
    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        """Decode ``data`` into ``out`` (a writable 1-D uint8 array of exactly the declared size).

        Raises :class:`CorruptError` when ``data`` is malformed or does not fill ``out`` exactly.
        """

    #: whether :meth:`iter_decode` works (the decoded bytes come out front to back, in pieces)
    streams: ClassVar[bool] = False
    #: whether decoding also accepts a file-like ``data`` (``read(n)``, ``head``: its first bytes), read once
    reads_files: ClassVar[bool] = False
    #: whether it has ``decode_mapped(data, size, table_of, dest)``: decodes symbol indices straight to
    #: ``table_of(alphabet)[index]`` values (a quantized tensor dequantized through a table, no code array)
    maps_symbols: ClassVar[bool] = False
    #: whether it is an order-0 entropy coder of words, built as ``cls(word_size, signed)`` for the word
    #: sizes in ``word_sizes``: the encoder tries the available one of highest ``preference`` on narrow
    #: codes, with no edit of the encoder
    entropy: ClassVar[bool] = False
    word_sizes: ClassVar[tuple[int, ...]] = ()
    preference: ClassVar[int] = 0
    #: the format minor version that added the stage (a stream using it declares at least that version)
    since_minor: ClassVar[int] = 0

    @classmethod
    def available(cls) -> bool:
        """Whether this installation can encode and decode with the stage (optional dependencies present)."""
        return True

    def check_limits(self, data: memoryview, size: int, limits: Any) -> None:
        """Raise :class:`LimitExceededError` when decoding ``data`` into ``size`` bytes would break a limit of
        ``limits`` (a :class:`~nncodec.limits.Limits`) beyond the sizes the pipeline checks; called before
        :meth:`decode_into`. Nothing by default."""

    def iter_decode(self, data: memoryview, size: int, piece_bytes: int) -> Iterator[np.ndarray]:
        """Decode ``data`` (declaring ``size`` bytes) front to back as uint8 pieces of ``piece_bytes``
        (the last may be shorter). A piece is valid until the next one is asked for (buffers are reused).
        Only for stages with ``streams``; errors as :meth:`decode_into`."""
        raise NotImplementedError(f"stage {self.codec_id} does not decode in pieces")

    def get_config(self) -> dict[str, Any]:
        return {"id": self.codec_id}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Stage":
        cfg = dict(config)
        cfg.pop("id", None)
        try:
            return cls(**cfg)  # type: ignore[call-arg]
        except TypeError as exc:
            raise ConfigError(f"bad configuration for stage {cls.codec_id!r}: {exc}") from None

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.params() == other.params()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((self.stage_id, self.params()))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "id")
        return f"{type(self).__name__}({args})"


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add a stage to the registry under its ``stage_id`` (ids are never reused)."""
    if cls.stage_id in REGISTRY:
        raise ConfigError(f"stage id {cls.stage_id} registered twice")
    REGISTRY[cls.stage_id] = cls
    return cls


def entropy_stages(word_size: int) -> list[type[Stage]]:
    """Registered, available entropy stages that code ``word_size``-byte words, most preferred first."""
    found = [cls for cls in REGISTRY.values() if cls.entropy and word_size in cls.word_sizes and cls.available()]
    return sorted(found, key=lambda cls: -cls.preference)


def stage_class(stage_id: int) -> type[Stage]:
    try:
        return REGISTRY[stage_id]
    except KeyError:
        raise UnsupportedFeatureError(f"unknown stage id {stage_id}") from None


def stage_from_config(config: dict[str, Any]) -> Stage:
    """Build a stage from ``{"id": codec_id, ...}`` through the registry only."""
    for cls in REGISTRY.values():
        if cls.codec_id == config.get("id"):
            return cls.from_config(config)
    raise ConfigError(f"unknown stage {config.get('id')!r}; known: {sorted(c.codec_id for c in REGISTRY.values())}")

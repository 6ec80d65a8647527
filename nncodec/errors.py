"""The exception hierarchy: every error nncodec raises on purpose derives from :class:`NNCodecError`.

Bitstream errors carry where they happened (``unit_index``, ``offset`` in bytes from the start of the
file) so that a conformance runner or a user can point at the bad byte. Errors about values the caller
passed also derive from :class:`ValueError`, so ``except ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "NNCodecError",
    "FormatError",
    "BadMagicError",
    "UnsupportedVersionError",
    "TruncatedError",
    "CorruptError",
    "ChecksumError",
    "UnknownUnitError",
    "UnsupportedFeatureError",
    "LimitExceededError",
    "ConfigError",
]


class NNCodecError(Exception):
    """Root of every error raised by nncodec."""


class FormatError(NNCodecError, ValueError):
    """A bitstream is not a valid nncodec file.

    ``unit_index`` is the 0-based index of the access unit being read (None for the file header),
    ``offset`` the byte offset in the file where the problem was found (None when unknown).
    """

    def __init__(self, message: str, *, unit_index: int | None = None, offset: int | None = None):
        self.reason = message
        self.unit_index = unit_index
        self.offset = offset
        where = []
        if unit_index is not None:
            where.append(f"unit {unit_index}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)

    def located(self, *, unit_index: int | None = None, offset: int | None = None) -> "FormatError":
        """Return a copy of this error with the location filled in where it was missing."""
        return type(self)(
            self.reason,
            unit_index=self.unit_index if self.unit_index is not None else unit_index,
            offset=self.offset if self.offset is not None else offset,
        )


class BadMagicError(FormatError):
    """The file does not start with the nncodec magic number."""


class UnsupportedVersionError(FormatError):
    """The file's format version is newer than this decoder understands (upgrade nncodec)."""


class TruncatedError(FormatError):
    """The file ends before a structure it declares (inside a header, a payload, or before end-of-stream)."""


class CorruptError(FormatError):
    """A structure is malformed: a reserved bit set, an impossible value, trailing bytes, duplicates."""


class ChecksumError(CorruptError):
    """A unit's CRC32 does not match its header and payload."""


class UnknownUnitError(FormatError):
    """A unit type this decoder does not know is marked critical."""


class UnsupportedFeatureError(FormatError):
    """A known field holds an id this decoder does not implement (stage, scheme, dtype)."""


class LimitExceededError(NNCodecError, ValueError):
    """A declared size is over a :class:`nncodec.Limits` bound; refused before allocating.

    Not a :class:`FormatError`: the stream may be well formed and only over this decoder's limits (raise
    them to read it). Carries ``unit_index`` and ``offset`` like the format errors."""

    def __init__(self, message: str, *, unit_index: int | None = None, offset: int | None = None):
        self.reason = message
        self.unit_index = unit_index
        self.offset = offset
        where = []
        if unit_index is not None:
            where.append(f"unit {unit_index}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)

    def located(self, *, unit_index: int | None = None, offset: int | None = None) -> "LimitExceededError":
        """Return a copy of this error with the location filled in where it was missing."""
        return type(self)(
            self.reason,
            unit_index=self.unit_index if self.unit_index is not None else unit_index,
            offset=self.offset if self.offset is not None else offset,
        )


class ConfigError(NNCodecError, ValueError):
    """An option, plan or configuration passed by the caller is invalid."""

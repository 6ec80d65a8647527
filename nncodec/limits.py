"""Decoder limits: upper bounds checked against declared sizes *before* anything is allocated."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LimitExceededError

__all__ = ["Limits", "DEFAULT_LIMITS"]


@dataclass(frozen=True)
class Limits:
    """Bounds a decoder enforces on untrusted input.

    All sizes are in bytes unless the name says elements. Defaults admit models of a few GiB;
    lower them when decoding input from an untrusted source on a small device.
    """

    max_unit_bytes: int = 1 << 32          #: largest unit payload accepted
    max_tensor_elements: int = 1 << 32     #: largest element count of one tensor
    max_total_decoded_bytes: int = 1 << 36 #: sum of decoded tensor bytes over one file
    max_units: int = 1 << 20               #: units in one file
    max_name_bytes: int = 4096             #: UTF-8 bytes of one tensor name
    max_ndim: int = 32                     #: tensor rank
    max_metadata_bytes: int = 1 << 20      #: stream-header metadata and topology JSON
    #: words one adaptive arithmetic coding stage (id 8) may decode: its coder is sequential, bit by bit
    #: (pruned-like int8 codes: compiled about 60 MB/s, portable Python about 1 M words/s, so seconds at this bound)
    max_adaptive_words: int = 1 << 22

    def check(self, what: str, value: int, limit_name: str, *, unit_index: int | None = None,
              offset: int | None = None) -> None:
        """Raise :class:`LimitExceededError` when ``value`` exceeds the limit called ``limit_name``."""
        limit = getattr(self, limit_name)
        if value > limit:
            raise LimitExceededError(f"{what} is {value}, over the limit {limit_name}={limit}",
                                     unit_index=unit_index, offset=offset)


DEFAULT_LIMITS = Limits()

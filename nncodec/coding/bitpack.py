"""Packing integer words at a bit width, and the stage that does it.

Bit order: values are written least-significant bit first into a little-endian bit stream
(bit ``k`` of the stream is bit ``k % 8`` of byte ``k // 8``). Word ``i`` occupies stream bits
``[i*bits, (i+1)*bits)``. Signed values are stored as their low ``bits`` bits (two's complement)
and sign-extended on decode. Unused bits of the last byte are zero.
"""

from __future__ import annotations

import struct

import numpy as np

from ..bitstream.byte_reader import ByteReader
from ..bitstream.constants import STAGE_BITPACK
from ..errors import ConfigError, CorruptError
from .stage import SIGNED_WORD_DTYPES, WORD_DTYPES, Stage, register_stage

__all__ = ["pack_bits", "unpack_bits", "packed_size", "fits_in_bits", "BitPack"]

_CHUNK = 1 << 20  # words per chunk: bounds the temporary bit matrix to bits MiB


def packed_size(n: int, bits: int) -> int:
    """Bytes used by ``n`` words packed at ``bits`` bits."""
    return (n * bits + 7) // 8


def fits_in_bits(values: np.ndarray, bits: int, signed: bool) -> bool:
    """True when every value is representable in ``bits`` bits (two's complement when ``signed``)."""
    if values.size == 0:
        return True
    lo, hi = int(values.min()), int(values.max())
    if signed:
        return -(1 << (bits - 1)) <= lo and hi < (1 << (bits - 1))
    return lo >= 0 and hi < (1 << bits)


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack the low ``bits`` bits of each integer in ``values`` (1-D) into bytes."""
    if not 1 <= bits <= 64:
        raise ConfigError(f"bit width must be 1..64, got {bits}")
    flat = np.ascontiguousarray(values).reshape(-1)
    n = flat.size
    if bits in (8, 16, 32, 64):
        return flat.astype(np.int64, copy=False).view(np.uint64).astype(WORD_DTYPES[bits // 8]).tobytes()
    if bits < 8:
        return _pack_small(flat.astype(np.int64, copy=False).view(np.uint64), bits)
    width = 2 if bits <= 16 else 4 if bits <= 32 else 8  # bytes per word holding the low ``bits`` bits
    out = bytearray()
    for start in range(0, n, _CHUNK):
        # the low ``width`` bytes of each word (integer casts wrap: two's complement of negative values)
        as_bytes = flat[start:start + _CHUNK].astype(f"<u{width}").view(np.uint8).reshape(-1, width)
        bitmat = np.unpackbits(as_bytes, axis=1, bitorder="little")[:, :bits]
        out += np.packbits(bitmat.reshape(-1), bitorder="little").tobytes()
    # chunks are multiples of 8 words, so each chunk ends on a byte boundary
    return bytes(out)


def unpack_bits(buf: bytes | memoryview, n: int, bits: int, signed: bool, out: np.ndarray) -> None:
    """Unpack ``n`` words of ``bits`` bits from ``buf`` into the integer array ``out`` (length n)."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if raw.size != packed_size(n, bits):
        raise CorruptError(f"packed data has {raw.size} bytes, {packed_size(n, bits)} expected for {n} words")
    if n * bits % 8 and raw.size and raw[-1] >> (n * bits % 8):
        raise CorruptError("unused bits after the last packed word are not zero")
    if bits in (8, 16, 32, 64):
        dt = SIGNED_WORD_DTYPES[bits // 8] if signed else WORD_DTYPES[bits // 8]
        out[:] = raw.view(dt)
        return
    if bits < 8:
        _unpack_small(raw, n, bits, signed, out)
        return
    width = ((bits + 7) // 8)
    width = {1: 1, 2: 2, 3: 4, 4: 4}.get(width, 8)
    word_dt = WORD_DTYPES[width]
    for start in range(0, n, _CHUNK):
        m = min(_CHUNK, n - start)
        byte0 = start * bits // 8
        nbytes = packed_size(m, bits)
        bitmat = np.unpackbits(raw[byte0:byte0 + nbytes], bitorder="little", count=m * bits).reshape(m, bits)
        padded = np.zeros((m, width * 8), dtype=np.uint8)
        padded[:, :bits] = bitmat
        vals = np.packbits(padded, axis=1, bitorder="little").reshape(-1).view(word_dt)
        if signed:
            vals = vals.astype(np.int64)
            vals -= (vals >> (bits - 1) & 1) << bits
        out[start:start + m] = vals


def _pack_small(v: np.ndarray, bits: int) -> bytes:
    """bits < 8: eight words make one 64-bit group, of which the first ``bits`` bytes are kept."""
    n = v.size
    groups = -(-n // 8)
    mask = np.uint64((1 << bits) - 1)
    out = bytearray()
    for start in range(0, groups, _CHUNK):
        g = min(_CHUNK, groups - start)
        chunk = np.zeros(g * 8, np.uint64)
        part = v[start * 8:(start + g) * 8]
        chunk[:part.size] = part & mask
        lanes = chunk.reshape(g, 8)
        acc = np.zeros(g, np.uint64)
        for j in range(8):
            acc |= lanes[:, j] << np.uint64(j * bits)
        out += acc.astype("<u8").view(np.uint8).reshape(g, 8)[:, :bits].tobytes()
    return bytes(out[:packed_size(n, bits)])


def _unpack_small(raw: np.ndarray, n: int, bits: int, signed: bool, out: np.ndarray) -> None:
    groups = -(-n // 8)
    mask = np.uint64((1 << bits) - 1)
    for start in range(0, groups, _CHUNK):
        g = min(_CHUNK, groups - start)
        block = np.zeros((g, 8), np.uint8)
        src = raw[start * bits:(start + g) * bits]
        flat = np.zeros(g * bits, np.uint8)
        flat[:src.size] = src
        block[:, :bits] = flat.reshape(g, bits)
        acc = block.view("<u8").reshape(g)
        vals = np.empty((g, 8), np.uint64)
        for j in range(8):
            vals[:, j] = (acc >> np.uint64(j * bits)) & mask
        m = min(g * 8, n - start * 8)
        flat_vals = vals.reshape(-1)[:m]
        if signed:
            sv = flat_vals.astype(np.int64)
            sv -= (sv >> (bits - 1) & 1) << bits
            out[start * 8:start * 8 + m] = sv
        else:
            out[start * 8:start * 8 + m] = flat_vals


@register_stage
class BitPack(Stage):
    """Stores a word array with each word cut to ``bits`` bits.

    Params: word_size u8 | bits u8 | flags u8 (bit 0: signed, sign-extend on decode; bits 1-7 reserved).
    Framing: n_words u64 | packed bits.
    """

    stage_id = STAGE_BITPACK
    codec_id = "bitpack"
    _PARAMS = struct.Struct("<BBB")

    def __init__(self, word_size: int, bits: int, signed: bool):
        if word_size not in WORD_DTYPES or not 1 <= bits <= 8 * word_size:
            raise ConfigError(f"bitpack: word_size {word_size} / bits {bits} invalid")
        self.word_size, self.bits, self.signed = word_size, bits, bool(signed)

    def params(self) -> bytes:
        return self._PARAMS.pack(self.word_size, self.bits, int(self.signed))

    @classmethod
    def from_params(cls, params: bytes | memoryview) -> "BitPack":
        if len(params) != cls._PARAMS.size:
            raise CorruptError(f"bitpack params have {len(params)} bytes, {cls._PARAMS.size} expected")
        ws, bits, flags = cls._PARAMS.unpack(params)
        if flags & 0xFE:
            raise CorruptError("bitpack reserved flag bits set")
        if ws not in WORD_DTYPES or not 1 <= bits <= 8 * ws:
            raise CorruptError(f"bitpack word_size {ws} / bits {bits} invalid")
        return cls(ws, bits, bool(flags & 1))

    def get_config(self) -> dict:
        return {"id": self.codec_id, "word_size": self.word_size, "bits": self.bits, "signed": self.signed}

    def encode(self, data: memoryview) -> bytes:
        dt = SIGNED_WORD_DTYPES[self.word_size] if self.signed else WORD_DTYPES[self.word_size]
        words = np.frombuffer(data, dtype=dt)
        if not fits_in_bits(words, self.bits, self.signed):
            raise ConfigError(f"bitpack: values do not fit in {self.bits} bits")
        return struct.pack("<Q", words.size) + pack_bits(words, self.bits)

    def decoded_size(self, data: memoryview) -> int:
        (n,) = ByteReader(data, what="bitpack framing").unpack(struct.Struct("<Q"), "word count")
        return n * self.word_size

    def decode_into(self, data: memoryview, out: np.ndarray) -> None:
        r = ByteReader(data, what="bitpack framing")
        (n,) = r.unpack(struct.Struct("<Q"), "word count")
        if n * self.word_size != out.size:
            raise CorruptError(f"bitpack declares {n} words, destination holds {out.size // self.word_size}")
        dt = SIGNED_WORD_DTYPES[self.word_size] if self.signed else WORD_DTYPES[self.word_size]
        unpack_bits(r.rest(), n, self.bits, self.signed, out.view(dt))

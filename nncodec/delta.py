"""Incremental (delta) updates: code a fine-tuned model as its differences from a base model.

``nncodec.encode(finetuned, dst, base=BASE)`` writes a stream whose tensors are differences from the
tensors of the same name in ``BASE``; a critical *base reference* unit (type 0x05, FORMAT.md §12) holds
the base's content hash, so decoding against another base is refused (:class:`BaseMismatchError`) and a
decoder that does not know deltas stops with ``UnknownUnitError`` instead of returning differences as
weights. ``nncodec.decode(dst, base=BASE)`` / ``load_into(model, dst, base=BASE)`` rebuild the fine-tuned
weights.

- Lossless (no quantization option): the stored words are the bitwise XOR of the fine-tuned and base
  words, so the rebuild is exact for every dtype (NaN payloads and -0 included).
- Quantized (``rel_step`` / ``step`` / ``bits``, optionally ``rate_lambda``): the difference is quantized
  on the grid a full encode of the fine-tuned tensor would use (same step from the fine-tuned tensor's
  statistics), so the error bound is the full encode's (``step / 2`` per element with plain rounding) while
  most codes are zero. Changes below half a step are dropped, all of them together (a correlated error the
  model may notice): for a short fine-tune, pass a finer absolute ``step``. bfloat16 tensors are always
  coded losslessly.
- A tensor the base lacks, or whose dtype or shape differ, is stored whole and listed in the unit.

BASE is an ``nn.Module``, a state_dict, a dict of numpy arrays, or an nncodec stream (path or bytes).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .bitstream.constants import (FILE_HEADER_SIZE, SCHEME_NONE, UNIT_CRC_COVERED, UNIT_END, UNIT_HEADER,
                                  UNIT_HEADER_SIZE, UNIT_TENSOR)
from .bitstream.units import EndOfStream, frame_unit
from .decoder import Source, iter_tensors
from .dtypes import DType
from .bitstream.descriptor import CodedTensor
from .encoder import Encoder, encoder_from_options
from .errors import ChecksumError, ConfigError, CorruptError, TruncatedError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits

__all__ = ["UNIT_BASE_REFERENCE", "HASH_SHA256", "BaseMismatchError", "content_hash", "BaseReference",
           "encode_delta_tensors", "decode_delta_arrays"]

UNIT_BASE_REFERENCE = 0x05
HASH_SHA256 = 1
_REF_HEAD = struct.Struct("<BBH32sI")


class BaseMismatchError(ConfigError):
    """The base passed to decode a delta stream is not the one it was encoded against."""


def content_hash(tensors: Mapping[str, "tuple[np.ndarray, DType]"]) -> bytes:
    """SHA-256 over the tensors in ascending UTF-8 name order, each as ``u16 name_length, name, u8 dtype id,
    u8 ndim, ndim x u64 shape, storage words`` (little-endian, C order): FORMAT.md §12.2."""
    h = hashlib.sha256()
    for name in sorted(tensors, key=lambda n: n.encode("utf-8")):
        storage, dtype = tensors[name]
        raw = name.encode("utf-8")
        h.update(struct.pack("<H", len(raw)) + raw + struct.pack("<BB", dtype.id, storage.ndim))
        h.update(struct.pack(f"<{storage.ndim}Q", *storage.shape))
        h.update(np.ascontiguousarray(storage, dtype=storage.dtype.newbyteorder("<")).tobytes())
    return h.digest()


class BaseReference:
    """Payload of the base reference unit: the base's content hash and the names stored whole."""

    def __init__(self, digest: bytes, whole: list[str]):
        self.digest, self.whole = digest, list(whole)

    def to_bytes(self) -> bytes:
        out = [_REF_HEAD.pack(HASH_SHA256, 0, 0, self.digest, len(self.whole))]
        for name in sorted(self.whole, key=lambda n: n.encode("utf-8")):
            raw = name.encode("utf-8")
            out.append(struct.pack("<H", len(raw)) + raw)
        return b"".join(out)

    @classmethod
    def parse(cls, payload: bytes, offset: int) -> "BaseReference":
        if len(payload) < _REF_HEAD.size:
            raise CorruptError("base reference shorter than its 40-byte head", offset=offset)
        hash_id, flags, reserved, digest, count = _REF_HEAD.unpack_from(payload)
        if hash_id != HASH_SHA256:
            raise UnsupportedFeatureError(f"unknown base hash id {hash_id}", offset=offset)
        if flags or reserved:
            raise CorruptError("reserved bits of the base reference set", offset=offset)
        pos, names = _REF_HEAD.size, []
        for _ in range(count):
            if pos + 2 > len(payload):
                raise CorruptError("base reference ends inside its name list", offset=offset + pos)
            (n,) = struct.unpack_from("<H", payload, pos)
            if n == 0 or pos + 2 + n > len(payload):
                raise CorruptError("base reference name empty or past its end", offset=offset + pos)
            try:
                names.append(payload[pos + 2:pos + 2 + n].decode("utf-8"))
            except UnicodeDecodeError:
                raise CorruptError("base reference name is not UTF-8", offset=offset + pos) from None
            pos += 2 + n
        if pos != len(payload):
            raise CorruptError("bytes after the base reference's name list", offset=offset + pos)
        if len(set(names)) != len(names):
            raise CorruptError("a name listed twice in the base reference", offset=offset)
        return cls(digest, names)


def base_tensors(base: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, tuple[np.ndarray, DType]]:
    """``{name: (storage, dtype)}`` of a base given as a module, state_dict, arrays, or an nncodec stream."""
    if isinstance(base, (bytes, bytearray, memoryview, str, Path)):
        return {th.name: (arr, th.dtype) for th, arr in iter_tensors(base, limits=limits)}
    from .torch_io import tensors_from

    out = tensors_from(base, quantized=False)
    if any(isinstance(v, CodedTensor) for v in out.values()):
        raise ConfigError("the base holds pre-quantized tensors; pass its float state_dict")
    return out


def _xor(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise XOR of two arrays' storage words, with ``a``'s dtype and shape."""
    word = np.dtype(f"u{a.dtype.itemsize}")
    x = np.ascontiguousarray(a).reshape(-1).view(word) ^ np.ascontiguousarray(b).reshape(-1).view(word)
    return x.view(a.dtype).reshape(a.shape)


def encode_delta_tensors(tensors: Mapping[str, Any], base: Mapping[str, tuple[np.ndarray, DType]],
                         encoder: Encoder, rate_lambda: float = 0.0) -> tuple[dict[str, Any], list[str]]:
    """The tensors to encode (differences, or whole) and the names stored whole."""
    from .quant.rate_aware import check_lambda, ecsq_codes
    from .rd_encode import coded_from

    lam = check_lambda(rate_lambda)
    out: dict[str, Any] = {}
    whole: list[str] = []
    for name, value in tensors.items():
        if isinstance(value, CodedTensor):
            raise ConfigError(f"tensor {name!r} is pre-quantized; delta coding takes float models")
        storage, dtype = value
        ref = base.get(name)
        if ref is None or ref[1] != dtype or ref[0].shape != storage.shape:
            whole.append(name)
            out[name] = value
            continue
        grid = encoder.grid(name, value) if dtype.name != "bfloat16" else None
        if grid is None or grid.binary:
            out[name] = (_xor(storage, ref[0]), dtype)
            continue
        scale = grid.scales.astype(np.float64)
        step = scale.reshape((-1,) + (1,) * (storage.ndim - 1)) if grid.per_channel else scale.reshape(())
        diff = storage.astype(np.float64) - ref[0].astype(np.float64)
        if not np.isfinite(diff).all():
            raise ConfigError(f"tensor {name!r}: its difference from the base is not finite; mark it lossless")
        codes = ecsq_codes(diff, step, lam) if lam > 0 else np.rint(diff / step).astype(np.int64)
        bound = (1 << 31) - 1 if encoder.bits is None else (1 << (grid.bits - 1)) - 1
        codes = np.clip(codes, -bound, bound)
        out[name] = coded_from(grid, codes, dtype)
    return out, whole


def insert_base_reference(chunks: list[bytes], reference: BaseReference, tensor_count: int) -> list[bytes]:
    """The encoder's chunks with the base reference unit after the stream header and the end-of-stream
    unit recounted."""
    out = chunks[:2] + [frame_unit(UNIT_BASE_REFERENCE, reference.to_bytes(), critical=True)] + chunks[2:-1]
    out.append(frame_unit(UNIT_END, EndOfStream(len(out) - 1, tensor_count).to_bytes()))
    return out


def encode_delta(tensors: Mapping[str, Any], base: Any, dst: Any, topology: Mapping | None, quantized: bool, options: dict[str, Any],
                 rd: dict[str, Any]) -> tuple[bytes | Path, Any]:
    """``encode(obj, dst, base=base, **options)``: see the module docstring."""
    from .atomic import write_atomic

    extra = set(rd) - {"rate_lambda"}
    if extra:
        raise ConfigError(f"delta coding does not take {sorted(extra)} (only rate_lambda of the rate-distortion "
                          "options)")
    encoder = encoder_from_options(options)
    ref = base_tensors(base, encoder.limits)
    tensors, whole = encode_delta_tensors(tensors, ref, encoder, rd.get("rate_lambda", 0.0))
    chunks, report = encoder.encode_units(tensors, topology)
    # tied tensors are stored once: the end-of-stream count is of the stored tensor units
    chunks = insert_base_reference(chunks, BaseReference(content_hash(ref), whole), len(tensors) - len(report.aliases))
    report.total_bytes = sum(len(c) for c in chunks)
    if dst is None:
        return b"".join(chunks), report
    return write_atomic(dst, chunks), report


def _read_all(src: Source) -> bytes:
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src)
    if isinstance(src, (str, Path)) or hasattr(src, "__fspath__"):
        return Path(src).read_bytes()
    if hasattr(src, "read"):
        return src.read()
    raise ConfigError(f"cannot read a stream from a {type(src).__name__}")


def split_base_reference(data: bytes) -> tuple[BaseReference, bytes]:
    """The base reference of a delta stream and the stream without it (end-of-stream recounted), which an
    ordinary decoder reads. Units are only located here; the decoder checks everything else."""
    pos, index, kept, ref = FILE_HEADER_SIZE, 0, [data[:FILE_HEADER_SIZE]], None
    tensors = 0
    while pos < len(data):
        if pos + UNIT_HEADER_SIZE > len(data):
            raise TruncatedError("stream ends inside a unit header", unit_index=index, offset=pos)
        utype, _, _, length, crc = UNIT_HEADER.unpack_from(data, pos)
        end = pos + UNIT_HEADER_SIZE + length
        if end > len(data):
            raise TruncatedError("stream ends inside a unit payload", unit_index=index, offset=pos)
        if utype == UNIT_BASE_REFERENCE:
            payload = data[pos + UNIT_HEADER_SIZE:end]
            if zlib.crc32(payload, zlib.crc32(data[pos:pos + UNIT_CRC_COVERED])) != crc:
                raise ChecksumError("unit checksum mismatch", unit_index=index, offset=pos)
            if ref is not None:
                raise CorruptError("a second base reference unit", unit_index=index, offset=pos)
            if tensors:
                raise CorruptError("base reference after tensor units", unit_index=index, offset=pos)
            ref = BaseReference.parse(payload, pos + UNIT_HEADER_SIZE)
        elif utype == UNIT_END:
            if length == 8 and ref is not None:  # recount the units without the base reference
                (count,) = struct.unpack_from("<I", data, pos + UNIT_HEADER_SIZE + 4)
                kept.append(frame_unit(UNIT_END, EndOfStream(index - 1, count).to_bytes()))
            else:
                kept.append(data[pos:end])
        else:
            tensors += utype == UNIT_TENSOR
            kept.append(data[pos:end])
        pos, index = end, index + 1
    if ref is None:
        raise ConfigError("this stream is not a delta (no base reference unit); decode it without base=")
    return ref, b"".join(kept)


def decode_delta_arrays(src: Source, base: Any, *, limits: Limits = DEFAULT_LIMITS
                        ) -> dict[str, tuple[np.ndarray, DType]]:
    """``{name: (storage, dtype)}`` of the fine-tuned model from a delta stream and its base."""
    ref, plain = split_base_reference(_read_all(src))
    base_t = base_tensors(base, limits)
    got = content_hash(base_t)
    if got != ref.digest:
        raise BaseMismatchError(f"wrong base: the stream is a delta against base {ref.digest.hex()[:16]}..., the "
                                f"given base hashes to {got.hex()[:16]}...")
    whole = set(ref.whole)
    out: dict[str, tuple[np.ndarray, DType]] = {}
    for th, arr in iter_tensors(plain, limits=limits):
        if th.name in whole:
            out[th.name] = (arr, th.dtype)
            continue
        b = base_t.get(th.name)
        if b is None or b[1] != th.dtype or tuple(b[0].shape) != tuple(th.shape):
            raise CorruptError(f"delta tensor {th.name!r} has no matching tensor in the base")
        if th.quant.scheme == SCHEME_NONE:
            out[th.name] = (_xor(arr, b[0]), th.dtype)
        else:
            work = np.float64 if th.dtype.name == "float64" else np.float32
            total = (b[0].astype(work) + arr.astype(work)).astype(arr.dtype)
            out[th.name] = (total, th.dtype)
    missing = whole - set(out)
    if missing:
        raise CorruptError(f"tensors listed as whole are missing from the stream: {sorted(missing)[:5]}")
    return out

"""Incremental (delta) updates: code a fine-tuned model as its differences from a base model.

``nncodec.encode(finetuned, dst, base=BASE)`` writes a stream whose tensors are differences from the
tensors of the same name in ``BASE``; a critical *base reference* unit (type 0x05, FORMAT.md §12) holds
the base's content hash, so decoding against another base is refused (:class:`BaseMismatchError`) and a
decoder that does not know deltas stops with ``UnknownUnitError`` instead of returning differences as
weights. ``nncodec.decode(dst, base=BASE)`` / ``load_into(model, dst, base=BASE)`` rebuild the fine-tuned
weights.

- Lossless (no quantization option): the stored words are the bitwise XOR of the fine-tuned and base
  words, so the rebuild is exact for every dtype (NaN payloads and -0 included).
- Quantized (``rel_step`` / ``step`` / ``bits``, optionally ``rate_lambda``), *grid-aligned* (format 1.3,
  FORMAT.md §12.5): the fine-tuned tensor is quantized on the grid a full encode would use (its step from
  the fine-tuned tensor's statistics), the base is rounded onto the same grid, and only the difference of
  the two integer codes is stored. The rebuilt tensor is exactly what a full encode of the fine-tuned
  tensor decodes to (with ``rate_lambda`` > 0: the rate-aware codes of the residual), while the codes are
  0 wherever the fine-tune moved a weight by less than its rounding cell. bfloat16 tensors are always
  coded losslessly. Streams of the earlier value-domain kind (the difference itself quantized, flag 0)
  still decode.
- A tensor the base lacks, or whose dtype or shape differ, is stored whole and listed in the unit.

BASE is an ``nn.Module``, a state_dict, a dict of numpy arrays, or an nncodec stream (path or bytes).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .bitstream.constants import (FILE_HEADER, FORMAT_MAJOR, FORMAT_MINOR_GRID_DELTA, MAGIC, SCHEME_NONE,
                                  SCHEME_UNIFORM, UNIT_BASE_REFERENCE, UNIT_END, UNIT_HEADER_SIZE, UNIT_STREAM_HEADER)
from .bitstream.reader import open_source
from .bitstream.units import EndOfStream, frame_unit
from .decoder import (RefinementHeader, Source, StreamWalker, decode_tensor, decode_unit_codes, iter_tensors,
                      with_aliases)
from .dtypes import DType
from .bitstream.descriptor import CodedTensor, bfloat16_bits_to_float32, dequantize_into
from .encoder import Encoder, encoder_from_options, ungrouped
from .errors import ConfigError, CorruptError, UnsupportedFeatureError
from .limits import DEFAULT_LIMITS, Limits
from .quant.uniform import coded_from

__all__ = ["UNIT_BASE_REFERENCE", "HASH_SHA256", "FLAG_GRID_ALIGNED", "BaseMismatchError", "content_hash", "BaseReference",
           "encode_delta_tensors", "decode_delta_arrays"]

HASH_SHA256 = 1
FLAG_GRID_ALIGNED = 0x01  #: base reference flag: quantized tensors hold code differences (FORMAT.md §12.5)
_REF_HEAD = struct.Struct("<BBH32sI")
_BASE_CODE_LIMIT = float(1 << 31)  #: |base / step| at or past this rounds to base code 0 (§12.5)


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

    def __init__(self, digest: bytes, whole: list[str], flags: int = 0):
        self.digest, self.whole, self.flags = digest, list(whole), flags

    @property
    def grid_aligned(self) -> bool:
        """Quantized tensors hold differences of grid codes (format 1.3), not quantized differences."""
        return bool(self.flags & FLAG_GRID_ALIGNED)

    def to_bytes(self) -> bytes:
        out = [_REF_HEAD.pack(HASH_SHA256, self.flags, 0, self.digest, len(self.whole))]
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
        if flags & ~FLAG_GRID_ALIGNED or reserved:
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
        return cls(digest, names, flags)


def base_tensors(base: Any, limits: Limits = DEFAULT_LIMITS) -> dict[str, tuple[np.ndarray, DType]]:
    """``{name: (storage, dtype)}`` of a base given as a module, state_dict, arrays, or an nncodec stream."""
    if isinstance(base, (bytes, bytearray, memoryview, str, Path)):
        return {th.name: (arr, th.dtype) for th, arr in iter_tensors(base, limits=limits)}
    if isinstance(base, Mapping) and all(isinstance(v, np.ndarray) for v in base.values()):
        from .encoder import numpy_tensors

        return numpy_tensors(base)  # no torch needed
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


def base_codes(storage: np.ndarray, dtype: DType, scales: np.ndarray) -> np.ndarray:
    """The base tensor rounded onto a grid (FORMAT.md §12.5): ``rint(base / scale)`` in float64, half to
    even, as int64; 0 where the quotient is not finite or its magnitude is 2^31 or more. ``scales`` is the
    float32 scale broadcast against the tensor (``QuantDescriptor.broadcast_scales``)."""
    values = bfloat16_bits_to_float32(storage) if dtype.name == "bfloat16" else storage
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.rint(np.asarray(values, dtype=np.float64) / np.asarray(scales, dtype=np.float64))
    q[~(np.abs(q) < _BASE_CODE_LIMIT)] = 0  # NaN, Inf and out-of-range quotients
    return q.astype(np.int64)


def encode_delta_tensors(tensors: Mapping[str, Any], base: Mapping[str, tuple[np.ndarray, DType]],
                         encoder: Encoder, rate_lambda: float = 0.0, *, grid_aligned: bool = True
                         ) -> tuple[dict[str, Any], list[str]]:
    """The tensors to encode (differences, or whole) and the names stored whole.

    ``grid_aligned`` (default): quantized tensors hold ``fine-tuned codes - base codes`` on the fine-tuned
    tensor's grid (§12.5); otherwise the difference itself is quantized (§12.3, the earlier kind)."""
    from .quant.rate_aware import check_lambda, ecsq_codes

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
        if grid_aligned:
            q_base = base_codes(ref[0], dtype, step.astype(np.float32))
            if lam > 0:
                residual = storage.astype(np.float64) - step * q_base
                if not np.isfinite(residual).all():
                    raise ConfigError(f"tensor {name!r}: its residual from the base is not finite; mark it lossless")
                codes = ecsq_codes(residual, step, lam)
            else:
                codes = grid.codes.astype(np.int64) - q_base
            out[name] = coded_from(grid, codes, dtype, fit_peak=True)
            continue
        diff = storage.astype(np.float64) - ref[0].astype(np.float64)
        if not np.isfinite(diff).all():
            raise ConfigError(f"tensor {name!r}: its difference from the base is not finite; mark it lossless")
        codes = ecsq_codes(diff, step, lam) if lam > 0 else np.rint(diff / step).astype(np.int64)
        bound = (1 << 31) - 1 if encoder.bits is None else (1 << (grid.bits - 1)) - 1
        codes = np.clip(codes, -bound, bound)
        out[name] = coded_from(grid, codes, dtype)
    return out, whole


def _with_minor(chunks: list[bytes], minor: int) -> list[bytes]:
    """The file header and stream header unit (``chunks[0:2]``) rewritten for minor version ``minor``, or the
    encoder's own minor when higher (a stage of a later format version in the tensors' pipelines)."""
    minor = max(minor, FILE_HEADER.unpack(chunks[0])[2])
    stream_header = chunks[1][UNIT_HEADER_SIZE:]
    return [FILE_HEADER.pack(MAGIC, FORMAT_MAJOR, minor),
            frame_unit(UNIT_STREAM_HEADER, stream_header[:2] + struct.pack("<H", minor) + stream_header[4:])]


def insert_base_reference(chunks: list[bytes], reference: BaseReference, tensor_count: int) -> list[bytes]:
    """The encoder's chunks with the base reference unit after the stream header and the end-of-stream
    unit recounted; a grid-aligned reference raises the minor version to 1.3 (the oldest that holds it)."""
    head = _with_minor(chunks, FORMAT_MINOR_GRID_DELTA) if reference.grid_aligned else chunks[:2]
    out = head + [frame_unit(UNIT_BASE_REFERENCE, reference.to_bytes(), critical=True)] + chunks[2:-1]
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
    encoder = encoder_from_options(ungrouped(options, "delta"))
    ref = base_tensors(base, encoder.limits)
    tensors, whole = encode_delta_tensors(tensors, ref, encoder, rd.get("rate_lambda", 0.0))
    aligned = any(isinstance(v, CodedTensor) and name not in whole for name, v in tensors.items())
    chunks, report = encoder.encode_units(tensors, topology)
    # tied tensors are stored once: the end-of-stream count is of the stored tensor units
    reference = BaseReference(content_hash(ref), whole, FLAG_GRID_ALIGNED if aligned else 0)
    chunks = insert_base_reference(chunks, reference, len(tensors) - len(report.aliases))
    report.total_bytes = sum(len(c) for c in chunks)
    if dst is None:
        return b"".join(chunks), report
    return write_atomic(dst, chunks), report


def decode_delta_arrays(src: Source, base: Any, *, limits: Limits = DEFAULT_LIMITS
                        ) -> dict[str, tuple[np.ndarray, DType]]:
    """``{name: (storage, dtype)}`` of the fine-tuned model from a delta stream and its base, in one walk of
    the stream (the base reference unit comes before every tensor, so the base is checked before any delta
    is applied)."""
    base_t = base_tensors(base, limits)
    out: dict[str, tuple[np.ndarray, DType]] = {}
    f, owned = open_source(src)
    try:
        walker = StreamWalker(f, limits, base_reference=BaseReference.parse)
        ref: BaseReference | None = None
        units = walker.tensor_units()
        for index, uh, th, coded in units:
            if ref is None:
                if walker.base_reference is None:
                    for _ in units:  # not a delta, unless a base reference comes late: the walker refuses that
                        pass
                ref = _checked_reference(walker.base_reference, base_t)
            if isinstance(th, RefinementHeader):
                raise CorruptError("a delta stream holds a refinement unit", unit_index=index, offset=uh.offset)
            for header, arr in with_aliases(walker, th, _rebuild_tensor(walker, index, uh, th, coded, ref, base_t)):
                out[header.name] = (arr, header.dtype)
        if ref is None:
            ref = _checked_reference(walker.base_reference, base_t)
    finally:
        if owned:
            f.close()
    missing = set(ref.whole) - set(out)
    if missing:
        raise CorruptError(f"tensors listed as whole are missing from the stream: {sorted(missing)[:5]}")
    return out


def _checked_reference(ref: "BaseReference | None", base: Mapping[str, tuple[np.ndarray, DType]]) -> BaseReference:
    """``ref`` if the stream has one and ``base`` is the base it names."""
    if ref is None:
        raise ConfigError("this stream is not a delta (no base reference unit); decode it without base=")
    got = content_hash(base)
    if got != ref.digest:
        raise BaseMismatchError(f"wrong base: the stream is a delta against base {ref.digest.hex()[:16]}..., the "
                                f"given base hashes to {got.hex()[:16]}...")
    return ref


def _rebuild_tensor(walker: StreamWalker, index: int, uh: Any, th: Any, coded: Any, ref: BaseReference,
                    base: Mapping[str, tuple[np.ndarray, DType]]) -> np.ndarray:
    if th.name in ref.whole:
        return decode_tensor(th, coded, walker.pipeline_of(th), walker.limits)
    b = base.get(th.name)
    if b is None or b[1] != th.dtype or tuple(b[0].shape) != tuple(th.shape):
        raise CorruptError(f"delta tensor {th.name!r} has no matching tensor in the base", unit_index=index,
                           offset=uh.offset)
    if th.quant.scheme == SCHEME_NONE:
        return _xor(decode_tensor(th, coded, walker.pipeline_of(th), walker.limits), b[0])
    if not ref.grid_aligned:
        arr = decode_tensor(th, coded, walker.pipeline_of(th), walker.limits)
        work = np.float64 if th.dtype.name == "float64" else np.float32
        return (b[0].astype(work) + arr.astype(work)).astype(arr.dtype)
    if th.quant.scheme != SCHEME_UNIFORM:
        raise CorruptError(f"grid-aligned delta tensor {th.name!r} has scheme {th.quant.scheme_name}, not uniform",
                           unit_index=index, offset=uh.offset)
    codes = decode_unit_codes(walker, index, uh, th, coded).astype(np.int64)
    codes += base_codes(b[0], th.dtype, th.quant.broadcast_scales(len(th.shape)))
    out = np.empty(th.shape, dtype=th.dtype.storage)
    dequantize_into(codes, th.quant, out, th.dtype)
    return out

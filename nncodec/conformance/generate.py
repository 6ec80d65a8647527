"""Writes the conformance vectors of the current format version, once.

    python -m nncodec.conformance.generate [conformance_vectors]

Vectors already listed in the manifest are never rewritten (their bytes may differ with another libzstd;
conformance is checked by decoding, so old vectors stay valid forever). Only missing ones are added.
Expected values come from the inputs, not from the decoder: the arrays themselves for lossless tensors,
and each quantizer's own ``quantize()`` output for quantized ones. The decoder is checked against them
before a vector is written.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_atomic
from ..bitstream.constants import (FILE_HEADER, FORMAT_MAJOR, FORMAT_MINOR, MAGIC, UNIT_END, UNIT_MODEL_PARAMETER_SET,
                                   UNIT_STREAM_HEADER, UNIT_TENSOR, UNIT_TENSOR_ALIASES)
from ..decoder import iter_tensors
from ..dtypes import dtype_by_name
from ..bitstream.descriptor import CodedTensor
from ..encoder import Encoder, numpy_tensors
from ..errors import ConfigError, NNCodecError
from . import acode_vectors, delta_vectors, dependent_vectors, group_vectors
from .forge import join_units, split_units, unit_bytes
from .graph_vectors import GRAPH_VECTORS, require_graph
from .vectors import MANIFEST, Vector, load_manifest, tensor_digest

VERSION = f"{FORMAT_MAJOR}.{FORMAT_MINOR}"
RNG = np.random.default_rng(20261121)

# -- valid vectors -----------------------------------------------------------------------------------

Expected = dict[str, np.ndarray]   # name -> expected decoded array (bfloat16 as uint16 bits)
Builder = Callable[[], tuple[bytes, Expected]]


def _lossless(arrays: dict[str, np.ndarray], **opts: Any) -> tuple[bytes, Expected]:
    data, _ = Encoder(**opts).encode(numpy_tensors(arrays))
    return data, {k: np.asarray(v) for k, v in arrays.items()}  # type: ignore[return-value]


def _bf16(n: int) -> np.ndarray:
    bits = RNG.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    bits[:4] = [0x7FC0, 0x7F80, 0xFF80, 0x8000]  # NaN, +Inf, -Inf, -0
    return bits


def _bf16_tensor(data: bytes | None = None) -> tuple[bytes, Expected]:
    bits = _bf16(40).reshape(5, 8)
    out, _ = Encoder().encode({"w": (bits, dtype_by_name("bfloat16"))})
    return out, {"w": bits}


def _sparse_int8(n: int, density: float) -> np.ndarray:
    return (RNG.integers(-100, 100, n) * (RNG.random(n) < density)).astype(np.int8)


def _quantized(specs: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[bytes, Expected]:
    import torch

    from ..quant.base import get_quantizer
    from ..quant.export import coded_tensor

    tensors: dict[str, Any] = {}
    expected: Expected = {}
    for name, (spec, shape) in specs.items():
        x = torch.from_numpy(RNG.standard_normal(shape).astype(np.float32) * 0.3)
        q = get_quantizer(spec)
        tensors[name] = coded_tensor(q.to_codes(x), shape)
        expected[name] = q.quantize(x).numpy() + np.float32(0.0)  # the format's zero code is +0.0
    data, _ = Encoder().encode(tensors)
    return data, expected


def _uniform_bits() -> tuple[bytes, Expected]:
    arrays = {f"w{b}": RNG.standard_normal((6, 10)).astype(np.float32) for b in (2, 4, 8, 12, 16)}
    arrays["bias"] = RNG.standard_normal(6).astype(np.float32)
    out: dict[str, Any] = {}
    expected: Expected = {}
    for name, a in arrays.items():
        bits = int(name[1:]) if name.startswith("w") else 16
        enc = Encoder(bits=bits)
        data, _ = enc.encode(numpy_tensors({name: a}))
        (th, decoded), = list(iter_tensors(data))
        codes = np.clip(np.round(a.astype(np.float64) / th.quant.scale_values().astype(np.float64).reshape(
            (-1,) + (1,) * (a.ndim - 1) if th.quant.per_channel else ())), -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
        codes = codes.astype(th.quant.code_dtype.storage)
        out[name] = CodedTensor(codes, th.quant, th.dtype)
        scale = th.quant.scale_values().reshape((-1,) + (1,) * (a.ndim - 1) if th.quant.per_channel else ())
        expected[name] = (codes.astype(np.float32) * scale).astype(np.float32)
    data, _ = Encoder().encode(out)
    return data, expected


def _unsigned_codes() -> tuple[bytes, Expected]:
    from ..bitstream.descriptor import QuantDescriptor

    codes = RNG.integers(0, 256, (4, 9)).astype(np.uint8)
    desc = QuantDescriptor(scheme=1, code_dtype=dtype_by_name("uint8"), sign_bits=0, mantissa_bits=8, bits=8,
                           po2_scale=True, scales=np.array([-6], np.int16))
    data, _ = Encoder().encode({"relu_codes": CodedTensor(codes, desc, dtype_by_name("float16"))})
    return data, {"relu_codes": (codes.astype(np.float32) * np.float32(2.0 ** -6)).astype(np.float16)}


def _topology() -> tuple[bytes, Expected]:
    arrays = {"fc.weight": RNG.standard_normal((3, 4)).astype(np.float32)}
    topo = {"format": "nncodec.topology", "version": 1,
            "modules": [{"name": "fc", "type": "Linear", "in_features": 4, "out_features": 3, "bias": False}]}
    data, _ = Encoder().encode(numpy_tensors(arrays), topology=topo)
    return data, arrays  # type: ignore[return-value]


def _unknown_ancillary() -> tuple[bytes, Expected]:
    arrays = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.ones(3, np.float32)}
    data, _ = Encoder().encode(numpy_tensors(arrays))
    header, units = split_units(data)
    units = [units[0], (0x55, 0, 0, b"a future ancillary unit"), *units[1:-1], (0x66, 0, 0, b"")]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), 2)))
    return join_units(header, units), arrays  # type: ignore[return-value]


def _real_model() -> tuple[bytes, Expected]:
    import torch
    from torch import nn

    from ..datasets import load_digits
    from ..prune.unstructured import apply_masks, global_magnitude_masks
    from ..quant.layers import quantize_model
    from ..torch_io import tensors_from
    from ..train import train_classifier

    torch.manual_seed(0)
    x, y = load_digits()
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(256, 10))
    train_classifier(model, x, y, epochs=4, lr=3e-3)
    q = quantize_model(model, {"layers": {
        "0": {"kernel": "quantized_bits(6,-1,1)", "bias": "quantized_bits(8,1,1)"},
        "1": {"activation": "quantized_relu(4,2)"},
        "2": {"kernel": "ternary(alpha='auto_po2')", "bias": "quantized_bits(8,1,1)"},
        "3": {"activation": "quantized_relu(4,2)"},
        "5": {"kernel": "quantized_po2_zero(4,1)", "bias": "quantized_bits(16,2,1)"}}})
    apply_masks(q, global_magnitude_masks(q, 0.5, keep_per_channel=0))  # as the frozen vector was made
    q.eval()
    data, _ = Encoder(level=19, metadata={"model": "digits CNN, 8x8 sklearn digits"}).encode(tensors_from(q))
    expected = {n + ".weight": m.quantized_weight().detach().numpy() + np.float32(0.0) for n, m in q.named_modules()
                if hasattr(m, "kernel_quantizer")}
    expected.update({n + ".bias": m.quantized_bias().detach().numpy() + np.float32(0.0) for n, m in q.named_modules()
                     if hasattr(m, "kernel_quantizer")})
    return data, expected


def _pipeline(stages: list[dict[str, Any]], arrays: dict[str, np.ndarray]) -> Builder:
    return lambda: _lossless(arrays, pipeline=stages)


_S8 = _sparse_int8(5000, 0.05)
_S8_SMALL = _sparse_int8(300, 0.3)
_F32 = RNG.standard_normal((16, 33)).astype(np.float32)

VALID: dict[str, tuple[str, Builder]] = {
    "lossless_float32": ("float32 tensor, lossless, encoder-chosen pipeline", lambda: _lossless({"w": _F32})),
    "lossless_float16": ("float16 with +-Inf and -0", lambda: _lossless(
        {"h": np.array([1.5, -0.0, np.inf, -np.inf, 65504.0, 6e-8], np.float16)})),
    "lossless_bfloat16": ("bfloat16 bit patterns incl. NaN/Inf/-0", _bf16_tensor),
    "lossless_float64": ("float64 tensor", lambda: _lossless({"d": RNG.standard_normal((3, 5))})),
    "integers_and_bool": ("every integer dtype and bool, extreme values", lambda: _lossless({
        "i8": np.array([-128, 0, 127], np.int8), "i16": np.array([-32768, 7, 32767], np.int16),
        "i32": np.array([-2**31, 1, 2**31 - 1], np.int32), "i64": np.array([-2**63, 2, 2**63 - 1], np.int64),
        "u8": np.array([0, 255], np.uint8), "u16": np.array([0, 65535], np.uint16),
        "u32": np.array([0, 2**32 - 1], np.uint32), "u64": np.array([0, 2**64 - 1], np.uint64),
        "mask": RNG.random((7, 3)) < 0.5})),
    "scalars_and_empty": ("0-d tensors and tensors with a zero dimension", lambda: _lossless({
        "scalar_f": np.array(3.25, np.float32), "scalar_i": np.array(-9, np.int64),
        "empty": np.zeros((0,), np.float32), "empty3": np.zeros((3, 0, 2), np.int8)})),
    "large_rank": ("rank-16 tensor", lambda: _lossless({"r16": RNG.standard_normal((1, 2) * 8).astype(np.float32)})),
    "non_ascii_names_metadata": ("UTF-8 names and stream metadata", lambda: _lossless(
        {"Gewichte.ä": np.ones(2, np.float32), "权重/偏置": np.zeros(3, np.int8), "x🙂": np.array([1], np.int32)},
        metadata={"author": "Zoë", "purpose": "conformance"})),
    "pipeline_stored": ("empty pipeline: words stored as they are", _pipeline([], {"w": _F32})),
    "pipeline_zstd": ("stack compression off: zstd only", _pipeline([{"id": "zstd"}], {"s": _S8})),
    "pipeline_shuffle_zstd": ("byte-plane shuffle then zstd on float32", _pipeline(
        [{"id": "shuffle", "element_size": 4}, {"id": "zstd"}], {"w": _F32})),
    "stack_one_level": ("zero-word removal, one-level map, then zstd", _pipeline(
        [{"id": "zero_words", "word_size": 1}, {"id": "zstd"}], {"s": _S8})),
    "stack_one_level_raw": ("zero-word removal, one-level map, no entropy stage", _pipeline(
        [{"id": "zero_words", "word_size": 1}], {"s": _S8_SMALL})),
    "stack_two_level": ("zero-word removal, two-level map (64-word blocks), then zstd", _pipeline(
        [{"id": "zero_words", "word_size": 1, "levels": 2, "block_words": 64}, {"id": "zstd"}], {"s": _S8})),
    "stack_two_level_packed": ("two-level map, 5-word blocks, non-zero words packed at 8 bits signed, "
                               "int16 words", _pipeline(
        [{"id": "zero_words", "word_size": 2, "levels": 2, "block_words": 5, "pack_bits": 8, "signed": True}],
        {"s": _S8_SMALL.astype(np.int16)})),
    "bitpack_signed": ("bit packing at 7 bits, signed, no entropy stage", _pipeline(
        [{"id": "bitpack", "word_size": 1, "bits": 7, "signed": True}],
        {"b": RNG.integers(-64, 64, 77).astype(np.int8)})),
    "stage_ans": ("the experimental rANS stage on int8 words, incl. a one-symbol alphabet", _pipeline(
        [{"id": "ans", "word_size": 1}], {"codes": np.clip(np.round(RNG.laplace(size=3000)), -7, 7).astype(np.int8),
                                          "flat": np.full(12, 5, np.int8)})),
    "stage_ans_int16": ("the experimental rANS stage on int16 words", _pipeline(
        [{"id": "ans", "word_size": 2}], {"wide": RNG.integers(-300, 300, 500).astype(np.int16)})),
    "default_pipeline": ("tensors using the model parameter set's default pipeline", lambda: _lossless(
        {f"t{i}": RNG.standard_normal(50).astype(np.float32) for i in range(3)}, pipeline=[{"id": "zstd"}])),
    "scheme_uniform_bits": ("uniform (m-quant) at 2, 4, 8, 12, 16 bits, per-channel float32 scales",
                            _uniform_bits),
    "scheme_uniform_unsigned_po2": ("uniform, unsigned uint8 codes, power-of-two scale, float16 tensor",
                                    _unsigned_codes),
    "scheme_fixed_po2_scale": ("quantized_bits: per-tensor power-of-two scale", lambda: _quantized({
        "w": ("quantized_bits(4,0,1)", (4, 6)), "v": ("quantized_bits(3,1,0,keep_negative=False)", (9,))})),
    "scheme_binary": ("binary: per-channel float scales (auto), per-tensor power of two", lambda: _quantized({
        "auto": ("binary(alpha='auto')", (5, 7)), "plain": ("binary", (11,))})),
    "scheme_modified_binary": ("modified binary {0,1}, per-channel power-of-two scales", lambda: _quantized({
        "w": ("binary(use_01=True, alpha='auto_po2')", (4, 9))})),
    "scheme_ternary": ("ternary: per-channel power-of-two and float scales", lambda: _quantized({
        "po2": ("ternary(alpha='auto_po2')", (6, 3, 3)), "lsq": ("ternary(alpha='auto')", (6, 4)),
        "fixed": ("ternary(threshold=0.2)", (10,))})),
    "scheme_po2": ("power-of-two (e-quant): QKeras mode and zero-keeping mode", lambda: _quantized({
        "qkeras": ("quantized_po2(4,1)", (5, 5)), "zero": ("quantized_po2_zero(5)", (5, 5))})),
    "scheme_float_cast": ("float32 tensors stored as float16 and bfloat16 codes", lambda: _quantized({
        "h": ("fp16", (3, 7)), "b": ("bf16", (3, 7))})),
    "topology_unit": ("an (ancillary) topology unit", _topology),
    "unknown_ancillary_unit": ("unknown ancillary units, which must be skipped", _unknown_ancillary),
    "real_small_model": ("a trained, pruned, mixed-scheme digits CNN", _real_model),
}

# -- invalid vectors -----------------------------------------------------------------------------------


def _base() -> bytes:
    return Encoder().encode(numpy_tensors({"a": np.arange(12, dtype=np.int8).reshape(3, 4),
                                           "b": np.linspace(0, 1, 5, dtype=np.float32)}))[0]


def _tensor_payload(name: bytes, dtype_id: int, dims: list[int], desc: bytes | None = None,
                    pipeline: bytes = b"\x00", data: bytes = b"") -> bytes:
    out = struct.pack("<H", len(name)) + name + bytes([dtype_id, len(dims)])
    out += b"".join(struct.pack("<Q", d) for d in dims)
    if desc is None:
        desc = struct.pack("<BBbBBBBBhI", 0, dtype_id, 0, 0, 0, 8, 0, 0, 0, 0)
    return out + desc + pipeline + data


def _stream(*payloads: bytes, count: int | None = None, mps: bytes | None = None) -> bytes:
    n = len(payloads)
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 0, 0, 0, 0, n if count is None else count, 0))]
    if mps is not None:
        units.append((UNIT_MODEL_PARAMETER_SET, 1, 0, mps))
    units += [(UNIT_TENSOR, 1, 0, p) for p in payloads]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), n)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 0), units)


def _edit_unit(index: int, fn: Callable[[tuple], tuple]) -> Callable[[], bytes]:
    def build() -> bytes:
        header, units = split_units(_base())
        units[index] = fn(units[index])
        return join_units(header, units)
    return build


def _flip_last_byte() -> bytes:
    data = bytearray(_base())
    data[-1] ^= 0x01
    return bytes(data)


def _lying_length() -> bytes:
    header, units = split_units(_base())
    return header + unit_bytes(*units[0]) + unit_bytes(*units[1][:3], units[1][3], length=len(units[1][3]) + 1000)


def _zstd_trailing() -> bytes:
    import zstandard

    frame = zstandard.ZstdCompressor(write_checksum=True).compress(b"\1\2\3")
    return _stream(_tensor_payload(b"x", 2, [3], pipeline=b"\x01\x04\x00", data=frame + b"\0"))


def _ternary_desc() -> bytes:
    return struct.pack("<BBbBBBBBhI", 4, 3, -1, 0, 1, 2, 0, 0, 0, 1) + struct.pack("<f", 0.5)


INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "empty_file": ("an empty file", "TruncatedError", lambda: b""),
    "truncated_file_header": ("file ends inside the file header", "TruncatedError", lambda: _base()[:10]),
    "bad_magic": ("a zip file's magic", "BadMagicError", lambda: b"PK\x03\x04" + _base()[4:]),
    "newer_major_version": ("format 2.0", "UnsupportedVersionError",
                           lambda: FILE_HEADER.pack(MAGIC, 2, 0) + _base()[12:]),
    "version_mismatch": ("file header 1.1, stream header 1.0", "CorruptError",
                         lambda: FILE_HEADER.pack(MAGIC, 1, 1) + _base()[12:]),
    "reserved_unit_flag": ("a reserved unit flag bit set (valid CRC)", "CorruptError",
                           _edit_unit(1, lambda u: (u[0], 0x81, u[2], u[3]))),
    "reserved_unit_field": ("the reserved u16 of a unit header set", "CorruptError",
                            _edit_unit(1, lambda u: (u[0], u[1], 1, u[3]))),
    "reserved_stream_header": ("a reserved stream-header byte set", "CorruptError",
                               _edit_unit(0, lambda u: (u[0], u[1], u[2], u[3][:5] + b"\x01" + u[3][6:]))),
    "reserved_quant_flag": ("a reserved quantization flag bit set", "CorruptError", lambda: _stream(
        _tensor_payload(b"t", 12, [1], desc=struct.pack("<BBbBBBBBhI", 1, 3, 1, 0, 7, 8, 0x80, 0, 0, 1) +
                        struct.pack("<f", 1.0), data=b"\x01"))),
    "reserved_stage_flag": ("a reserved zero_words flag bit set", "CorruptError", lambda: _stream(
        _tensor_payload(b"x", 2, [2], pipeline=b"\x01\x01\x06" + struct.pack("<BBHBB", 1, 1, 0, 0, 2),
                        data=struct.pack("<QQ", 2, 0) + b"\x00"))),
    "unknown_critical_unit": ("a critical unit of unknown type 0x55", "UnknownUnitError", lambda: (lambda h, u: join_units(
        h, [u[0], (0x55, 1, 0, b"?"), *u[1:-1], (UNIT_END, 1, 0, struct.pack("<II", len(u), 2))]))(*split_units(_base()))),
    "first_unit_not_stream_header": ("a tensor unit first", "CorruptError", lambda: (lambda h, u: join_units(
        h, [u[1], u[0], *u[2:]]))(*split_units(_base()))),
    "truncated_unit_header": ("file ends inside a unit header", "TruncatedError",
                              lambda: _base()[:12 + len(unit_bytes(*split_units(_base())[1][0])) + 7]),
    "truncated_payload": ("file ends inside a unit payload", "TruncatedError", lambda: _base()[:-3]),
    "missing_end_of_stream": ("ends at a unit boundary without end-of-stream", "TruncatedError",
                              lambda: (lambda h, u: join_units(h, u[:-1]))(*split_units(_base()))),
    "length_past_end": ("a unit length pointing past the end of the file", "TruncatedError", _lying_length),
    "checksum_mismatch": ("a payload byte changed, CRC not updated", "ChecksumError", _flip_last_byte),
    "trailing_bytes": ("a byte after the end-of-stream unit", "CorruptError", lambda: _base() + b"\0"),
    "end_count_mismatch": ("end-of-stream counts the wrong number of units", "CorruptError",
                           _edit_unit(-1, lambda u: (u[0], u[1], u[2], struct.pack("<II", 9, 2)))),
    "tensor_count_mismatch": ("stream header declares 2 tensors, 1 present", "CorruptError",
                              lambda: _stream(_tensor_payload(b"x", 2, [1], data=b"\1"), count=2)),
    "shape_product_overflow": ("dimensions whose product overflows 64 bits", "LimitExceededError",
                               lambda: _stream(_tensor_payload(b"of", 2, [1 << 63, 1 << 63, 4]))),
    "zero_dim_huge_shape": ("0 elements, but a dimension of 2^61 (found by fuzzing)", "LimitExceededError",
                            lambda: _stream(_tensor_payload(b"z", 12, [0, 1 << 61, 3]))),
    "declared_size_over_limits": ("a tensor of 2^40 float32 elements", "LimitExceededError",
                                  lambda: _stream(_tensor_payload(b"big", 12, [1 << 20, 1 << 20]))),
    "duplicate_names": ("two tensors named x", "CorruptError", lambda: _stream(
        _tensor_payload(b"x", 2, [1], data=b"\1"), _tensor_payload(b"x", 2, [1], data=b"\2"))),
    "invalid_utf8_name": ("a tensor name that is not UTF-8", "CorruptError",
                          lambda: _stream(_tensor_payload(b"\xff\xfe", 2, [1], data=b"\1"))),
    "empty_name": ("an empty tensor name", "CorruptError", lambda: _stream(_tensor_payload(b"", 2, [1], data=b"\1"))),
    "unknown_dtype": ("dtype id 99", "UnsupportedFeatureError", lambda: _stream(
        _tensor_payload(b"x", 99, [1], desc=struct.pack("<BBbBBBBBhI", 0, 2, 0, 0, 0, 8, 0, 0, 0, 0), data=b"\1"))),
    "unknown_scheme": ("quantization scheme 42", "UnsupportedFeatureError", lambda: _stream(
        _tensor_payload(b"x", 12, [1], desc=struct.pack("<BBbBBBBBhI", 42, 3, 0, 0, 0, 8, 0, 0, 0, 1) +
                        struct.pack("<f", 1.0), data=b"\1"))),
    "unknown_stage": ("stage id 77", "UnsupportedFeatureError",
                      lambda: _stream(_tensor_payload(b"x", 2, [1], pipeline=b"\x01\x4d\x00", data=b"\1"))),
    "stage_wrong_length": ("stored payload shorter than the tensor", "CorruptError",
                           lambda: _stream(_tensor_payload(b"x", 2, [4], data=b"\1\2"))),
    "zstd_wrong_length": ("zstd frame decodes to 3 bytes for a 4-byte tensor", "CorruptError", lambda: _stream(
        _tensor_payload(b"x", 2, [4], pipeline=b"\x01\x04\x00",
                        data=__import__("zstandard").ZstdCompressor(write_checksum=True).compress(b"\1\2\3")))),
    "zstd_trailing_data": ("bytes after the zstd frame", "CorruptError", _zstd_trailing),
    "zero_words_count_mismatch": ("map population differs from the non-zero count", "CorruptError", lambda: _stream(
        _tensor_payload(b"x", 2, [4], pipeline=b"\x01\x01\x06" + struct.pack("<BBHBB", 1, 1, 0, 0, 0),
                        data=struct.pack("<QQ", 4, 1) + bytes([0b1010]) + b"\x07\\9"))),  # the bytes 07 5C 39, as written
    "default_pipeline_missing": ("a tensor using a default pipeline with no model parameter set", "CorruptError",
                                 lambda: _stream(_tensor_payload(b"x", 2, [1], pipeline=b"\xff", data=b"\1"))),
    "ternary_code_out_of_range": ("ternary code 2", "CorruptError", lambda: _stream(
        _tensor_payload(b"t", 12, [3], desc=_ternary_desc(), data=b"\x01\x00\x02"))),
    "bool_not_0_or_1": ("a bool tensor holding byte 2", "CorruptError",
                        lambda: _stream(_tensor_payload(b"m", 1, [2], data=b"\1\2"))),
}


# -- stage 6 (rANS), added with format 1.0's seventh stage; its own generator so earlier vectors keep their bytes
_RANS_RNG = np.random.default_rng(606)
_RANS_CODES = np.clip(np.round(_RANS_RNG.laplace(0, 3, 4000)), -40, 40).astype(np.int8)
_RANS_PIPELINE = b"\x01\x06\x02\x01\x01"  # one stage: rans, word_size 1, signed


def _rans_payload(edit: Callable[[bytes], bytes] | None = None) -> bytes:
    from ..coding import Rans

    coded = Rans(1, True).encode(memoryview(_RANS_CODES.view(np.uint8)))
    return _stream(_tensor_payload(b"r", 2, [_RANS_CODES.size], pipeline=_RANS_PIPELINE,
                                   data=edit(coded) if edit else coded))


def _rans_k(coded: bytes) -> int:
    return struct.unpack_from("<QBI", coded)[2]


def _rans_edit_state(coded: bytes) -> bytes:
    at = 13 + 6 * _rans_k(coded)  # header, K values, K frequencies: the first state
    return coded[:at] + struct.pack("<I", 0xFFFF) + coded[at + 4:]


def _rans_edit_frequency(coded: bytes) -> bytes:
    at = 13 + 4 * _rans_k(coded)  # the first frequency
    return coded[:at] + struct.pack("<H", struct.unpack_from("<H", coded, at)[0] + 1) + coded[at + 2:]


VALID.update({
    "stage_rans": ("the rANS stage (6) on int8 words, incl. a one-symbol alphabet", _pipeline(
        [{"id": "rans", "word_size": 1}], {"codes": _RANS_CODES, "flat": np.full(9, -3, np.int8)})),
    "stage_rans_int16": ("the rANS stage (6) on int16 words", _pipeline(
        [{"id": "rans", "word_size": 2}], {"wide": _RANS_RNG.integers(-3000, 3000, 700).astype(np.int16)})),
    "stage_rans_unsigned_after_zero_words": ("zero-word removal, then rANS on unsigned uint8 words", _pipeline(
        [{"id": "zero_words", "word_size": 1}, {"id": "rans", "word_size": 1, "signed": False}],
        {"s": np.where(_RANS_RNG.random(3000) < 0.7, 0, _RANS_RNG.integers(1, 200, 3000)).astype(np.uint8)})),
})

INVALID.update({
    "rans_state_below_range": ("a rANS initial state of 0xFFFF (below 2^16)", "CorruptError",
                               lambda: _rans_payload(_rans_edit_state)),
    "rans_frequency_sum": ("rANS frequencies summing to 2^16 + 1", "CorruptError",
                           lambda: _rans_payload(_rans_edit_frequency)),
    "rans_words_missing": ("the last rANS word cut off", "CorruptError", lambda: _rans_payload(lambda c: c[:-2])),
    "rans_extra_word": ("a rANS word after the last one", "CorruptError",
                        lambda: _rans_payload(lambda c: c + b"\x00\x01")),
    "rans_alphabet_too_large": ("a rANS alphabet of 2 symbols at 1 bit of precision", "CorruptError", lambda: _stream(
        _tensor_payload(b"r", 2, [2], pipeline=_RANS_PIPELINE,
                        data=struct.pack("<QBI", 2, 1, 2) + struct.pack("<ii", 0, 1) + struct.pack("<HH", 0, 0)))),
})


# -- the rules FORMAT.md settled later (same format 1.0): each its own vector; earlier vectors keep their bytes
_SPEC_RNG = np.random.default_rng(1313)


def _desc(scheme: int, code_id: int, bits: int, flags: int = 0, axis: int = 0, exp_min: int = 0,
          scales: bytes = b"", n_scales: int | None = None) -> bytes:
    n = len(scales) // (2 if flags & 2 else 4) if n_scales is None else n_scales
    return struct.pack("<BBbBBBBBhI", scheme, code_id, 1, 0, max(bits - 1, 0), bits, flags, axis, exp_min, n) + scales


def _dequantized_into(dtype: str) -> Builder:
    """Uniform and binary codes dequantized into a bfloat16 or float64 tensor; expected values computed with
    torch's own float32 -> bfloat16 rounding (nearest even) and exact float64 conversion."""
    def build() -> tuple[bytes, Expected]:
        import torch

        from ..bitstream.descriptor import QuantDescriptor

        codes = _SPEC_RNG.integers(-127, 128, (4, 6)).astype(np.int8)
        codes[0, :2] = 0  # code 0 under a negative scale: -0.0 (IEEE product)
        scales = np.array([-0.037, 0.5, 3.1e-3, 1.7e4], np.float32)
        bits = _SPEC_RNG.integers(0, 2, 10).astype(np.uint8)
        target = dtype_by_name(dtype)
        tensors = {
            "uniform": CodedTensor(codes, QuantDescriptor(scheme=1, code_dtype=dtype_by_name("int8"), sign_bits=1,
                                                          mantissa_bits=7, bits=8, per_channel=True, scales=scales),
                                   target),
            "binary": CodedTensor(bits, QuantDescriptor(scheme=2, code_dtype=dtype_by_name("uint8"), bits=1,
                                                        scales=np.array([0.25], np.float32)), target)}
        f32 = {"uniform": codes.astype(np.float32) * scales.reshape(4, 1),
               "binary": (bits.astype(np.float32) * np.float32(2) - np.float32(1)) * np.float32(0.25)}
        if dtype == "bfloat16":
            expected = {k: torch.from_numpy(v).bfloat16().view(torch.int16).numpy().view(np.uint16)
                        for k, v in f32.items()}
        else:
            expected = {k: v.astype(np.float64) for k, v in f32.items()}
        data, _ = Encoder().encode(tensors)
        return data, expected
    return build


def _critical_topology() -> tuple[bytes, Expected]:
    data, arrays = _topology()
    header, units = split_units(data)
    return join_units(header, [(t, 1 if t == 0x03 else f, r, p) for t, f, r, p in units]), arrays


def _zero_words_edge() -> tuple[bytes, Expected]:
    """pack_bits 0 with the signed flag set (no effect), and a word the map marks whose stored value is 0."""
    words = np.array([0, 5, 0, -3, 0, 0], np.int8)
    coded = struct.pack("<QQ", 6, 3) + bytes([0b00011010]) + bytes([5, 0xFD, 0])  # words 1, 3 and 4
    stage = b"\x01\x01\x06" + struct.pack("<BBHBB", 1, 1, 0, 0, 1)
    return _stream(_tensor_payload(b"z", 3, [6], pipeline=stage, data=coded)), {"z": words}


def _stream_header(profile: int = 0, meta: bytes = b"", meta_len: int | None = None) -> bytes:
    return struct.pack("<HHBBHII", 1, 0, profile, 0, 0, 1, len(meta) if meta_len is None else meta_len) + meta


def _with_stream_header(payload: bytes) -> bytes:
    header, units = split_units(_base())
    return join_units(header, [(UNIT_STREAM_HEADER, 1, 0, payload), *units[1:]])


def _units_reordered(kind: str) -> bytes:
    a = _tensor_payload(b"a", 2, [1], pipeline=b"\x00", data=b"\1")
    b = _tensor_payload(b"b", 2, [1], pipeline=b"\xff", data=b"\2")
    mps = b"\x00"  # the empty pipeline
    head = (UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 0, 0, 0, 0, 2, 0))
    if kind == "mps_after_tensor":
        units = [head, (UNIT_TENSOR, 1, 0, a), (UNIT_MODEL_PARAMETER_SET, 1, 0, mps), (UNIT_TENSOR, 1, 0, b)]
    else:
        topo = (0x03, 0, 0, b'{"format":"test"}')
        units = [head, (UNIT_MODEL_PARAMETER_SET, 1, 0, mps), topo, topo, (UNIT_TENSOR, 1, 0, a),
                 (UNIT_TENSOR, 1, 0, b)]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), 2)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 0), units)


def _zstd_frame(checksum: bool, content_size: bool) -> bytes:
    import zstandard

    frame = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size).compress(b"\1\2\3")
    return _stream(_tensor_payload(b"x", 2, [3], pipeline=b"\x01\x04\x00", data=frame))


def _po2_scale_desc(exponent: int) -> bytes:
    return _desc(1, 3, 8, flags=2, scales=struct.pack("<h", exponent))


VALID.update({
    "dequantize_into_bfloat16": ("uniform (negative and tiny scales, zero codes) and binary codes into bfloat16 "
                                 "tensors", _dequantized_into("bfloat16")),
    "dequantize_into_float64": ("uniform and binary codes into float64 tensors (exact widening of float32)",
                                _dequantized_into("float64")),
    "critical_topology_unit": ("a topology unit marked critical: a known type is read whatever its critical bit",
                               _critical_topology),
    "zero_words_stored_zero_signed_flag": ("zero_words with pack_bits 0 and the signed flag set, and a mapped "
                                           "word stored as 0", _zero_words_edge),
})

INVALID.update({
    "profile_1": ("stream header profile 1", "UnsupportedFeatureError",
                  lambda: _with_stream_header(_stream_header(profile=1))),
    "older_major_version": ("format 0.9", "UnsupportedVersionError",
                            lambda: FILE_HEADER.pack(MAGIC, 0, 9) + _base()[12:]),
    "unknown_code_dtype": ("uniform scheme with code dtype id 99", "UnsupportedFeatureError", lambda: _stream(
        _tensor_payload(b"x", 12, [1], desc=_desc(1, 99, 8, scales=struct.pack("<f", 1.0)), data=b"\1"))),
    "name_over_limit": ("a 4097-byte tensor name (max_name_bytes 4096)", "LimitExceededError",
                        lambda: _stream(_tensor_payload(b"n" * 4097, 2, [1], data=b"\1"))),
    "rank_over_limit": ("a rank-33 tensor (max_ndim 32)", "LimitExceededError",
                        lambda: _stream(_tensor_payload(b"r", 2, [1] * 33, data=b"\1"))),
    "metadata_over_limit": ("metadata_length 2^20 + 1 (max_metadata_bytes 2^20), checked before reading",
                            "LimitExceededError", lambda: _with_stream_header(_stream_header(meta_len=(1 << 20) + 1))),
    "metadata_not_json": ("stream metadata that is not JSON", "CorruptError",
                          lambda: _with_stream_header(_stream_header(meta=b"{author: me}"))),
    "parameter_set_after_tensor": ("a model parameter set after a tensor unit", "CorruptError",
                                   lambda: _units_reordered("mps_after_tensor")),
    "two_topology_units": ("two topology units", "CorruptError", lambda: _units_reordered("two_topologies")),
    "zstd_without_checksum": ("a zstd frame without Content_Checksum", "CorruptError",
                              lambda: _zstd_frame(checksum=False, content_size=True)),
    "zstd_without_content_size": ("a zstd frame without Frame_Content_Size", "CorruptError",
                                  lambda: _zstd_frame(checksum=True, content_size=False)),
    "bitpack_padding_bits": ("bitpack: a padding bit after the last packed word set", "CorruptError", lambda: _stream(
        _tensor_payload(b"b", 2, [3], pipeline=b"\x01\x02\x03\x01\x03\x00",
                        data=struct.pack("<Q", 3) + bytes([0b10_001_010, 0b1000_000_0])))),
    "zero_words_padding_bits": ("zero_words: a padding bit of the word map set", "CorruptError", lambda: _stream(
        _tensor_payload(b"z", 2, [3], pipeline=b"\x01\x01\x06" + struct.pack("<BBHBB", 1, 1, 0, 0, 0),
                        data=struct.pack("<QQ", 3, 1) + bytes([0b1000_0010]) + b"\x07"))),
    "po2_exponent_over_range": ("po2 code whose exponent |c| - 1 + exp_min is 128", "CorruptError", lambda: _stream(
        _tensor_payload(b"p", 12, [2], desc=_desc(5, 3, 8, exp_min=120, scales=struct.pack("<f", 1.0)),
                        data=bytes([1, 9])))),
    "po2_scale_exponent_under_range": ("a power-of-two scale exponent of -150", "CorruptError", lambda: _stream(
        _tensor_payload(b"p", 12, [2], desc=_po2_scale_desc(-150), data=bytes([1, 2])))),
    "field_past_payload": ("a tensor unit that ends inside its shape (CRC valid)", "TruncatedError",
                           lambda: _stream(_tensor_payload(b"t", 2, [4, 4])[:12])),
    "scheme_on_integer_tensor": ("uniform scheme on an int32 tensor", "CorruptError", lambda: _stream(
        _tensor_payload(b"i", 7, [1], desc=_desc(1, 3, 8, scales=struct.pack("<f", 1.0)), data=b"\1"))),
    "bool_codes": ("uniform scheme with bool codes", "CorruptError", lambda: _stream(
        _tensor_payload(b"b", 12, [1], desc=_desc(1, 1, 1, scales=struct.pack("<f", 1.0)), data=b"\1"))),
    "none_with_per_channel_flag": ("scheme none with the per-channel flag", "CorruptError", lambda: _stream(
        _tensor_payload(b"n", 2, [2], desc=_desc(0, 2, 8, flags=1, n_scales=0), data=b"\1\2"))),
    "intermediate_over_cap": ("a zstd frame of 100 bytes feeding bitpack for a 1-byte tensor (cap 2*1+64)",
                              "LimitExceededError", lambda: _stream(_tensor_payload(
                                  b"c", 2, [1], pipeline=b"\x02\x02\x03\x01\x08\x00\x04\x00",
                                  data=__import__("zstandard").ZstdCompressor(write_checksum=True).compress(
                                      struct.pack("<Q", 1) + bytes(92))))),
})


# -- format 1.1: the tensor-aliases unit (tied tensors); these vectors go to v1.1/
_TIED = np.random.default_rng(1101).standard_normal((7, 5)).astype(np.float32)


def _tied() -> tuple[bytes, Expected]:
    bias = np.arange(7, dtype=np.float32)
    data, _ = Encoder().encode({"emb.weight": _TIED, "head.weight": _TIED, "tok.weight": _TIED, "head.bias": bias})
    return data, {"emb.weight": _TIED, "head.weight": _TIED, "tok.weight": _TIED, "head.bias": bias}


def _alias_entries(*pairs: tuple[bytes, bytes]) -> bytes:
    return struct.pack("<I", len(pairs)) + b"".join(struct.pack("<H", len(a)) + a + struct.pack("<H", len(t)) + t
                                                    for a, t in pairs)


def _tied_edited(edit: Callable[[list], list]) -> Callable[[], bytes]:
    def build() -> bytes:
        header, units = split_units(_tied()[0])
        units = edit(units)
        units[-1] = (UNIT_END, 1, 0, struct.pack("<II", len(units) - 1, sum(u[0] == UNIT_TENSOR for u in units)))
        return join_units(header, units)
    return build


def _replace_aliases(payload: bytes) -> Callable[[list], list]:
    return lambda units: [(t, f, r, payload if t == UNIT_TENSOR_ALIASES else p) for t, f, r, p in units]


def _aliases_after_tensor(units: list) -> list:
    aliases = next(u for u in units if u[0] == UNIT_TENSOR_ALIASES)
    rest = [u for u in units if u[0] != UNIT_TENSOR_ALIASES]
    first_tensor = next(i for i, u in enumerate(rest) if u[0] == UNIT_TENSOR)
    return rest[:first_tensor + 1] + [aliases] + rest[first_tensor + 1:]


_V11_VALID: dict[str, tuple[str, Builder]] = {
    "tied_tensors": ("two aliases sharing one stored tensor (format 1.1 tensor-aliases unit)", _tied),
}
_V11_INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "alias_target_missing": ("an alias whose target is no tensor of the stream", "CorruptError", _tied_edited(
        _replace_aliases(_alias_entries((b"head.weight", b"emb.weight"), (b"tok.weight", b"nowhere"))))),
    "alias_shadows_tensor": ("an alias named like a tensor unit", "CorruptError", _tied_edited(
        _replace_aliases(_alias_entries((b"head.bias", b"emb.weight"))))),
    "alias_of_alias": ("an alias whose target is an alias", "CorruptError", _tied_edited(
        _replace_aliases(_alias_entries((b"head.weight", b"emb.weight"), (b"tok.weight", b"head.weight"))))),
    "aliases_after_tensor": ("the tensor-aliases unit after a tensor unit", "CorruptError",
                             _tied_edited(_aliases_after_tensor)),
    "aliases_out_of_order": ("alias entries not in ascending name order", "CorruptError", _tied_edited(
        _replace_aliases(_alias_entries((b"tok.weight", b"emb.weight"), (b"head.weight", b"emb.weight"))))),
}
VALID.update(_V11_VALID)
INVALID.update(_V11_INVALID)
_VERSION_OF = {name: "1.1" for name in (*_V11_VALID, *_V11_INVALID)}

# incremental updates (FORMAT.md §12): the base as a valid vector; the deltas in delta_vectors
VALID["delta_base"] = ("base model of the delta vectors (float32, float16, int16, bool)",
                       lambda: _lossless(delta_vectors.base_arrays()))


# -- format 1.2: operating points (scalable streams, FORMAT.md §13); these vectors go to v1.2/
_SCALABLE_RNG = np.random.default_rng(1712)
_SCALABLE = {"conv.weight": _SCALABLE_RNG.laplace(size=(6, 3, 3, 3)).astype(np.float32),
             "conv.bias": _SCALABLE_RNG.standard_normal(6).astype(np.float32),
             "fc.weight": _SCALABLE_RNG.standard_normal((4, 24)).astype(np.float32),
             "steps": np.arange(5, dtype=np.int32)}
_SCALABLE_POINTS = [{"bits": 2, "bits_1d": 4, "label": "tiny", "energy_pj": 1000.0},
                    {"bits": 4, "bits_1d": 8, "label": "mid", "energy_pj": 2500.0, "accuracy": 0.5},
                    {"bits": 8, "bits_1d": 8, "label": "full", "energy_pj": 9000.0, "accuracy": 0.75}]


def _scalable_stream() -> bytes:
    from ..scalable import encode_scalable

    return encode_scalable(_SCALABLE, _SCALABLE_POINTS)[0]  # type: ignore[return-value]


def _scalable_at(point: int) -> Builder:
    """The 3-point stream; expected: each tensor quantized by the point's own quantizer (codes * scales), which
    is what a separate encode of that point stores."""
    def build() -> tuple[bytes, Expected]:
        from ..quant.uniform import quantize_by_bits

        expected: Expected = {}
        for name, x in _SCALABLE.items():
            if x.dtype.kind != "f":
                expected[name] = x
                continue
            q = quantize_by_bits(x, _SCALABLE_POINTS[point]["bits" if x.ndim > 1 else "bits_1d"])
            scale = q.scales.reshape((-1,) + (1,) * (x.ndim - 1)) if q.per_channel else q.scales.reshape(())
            expected[name] = (q.codes.astype(np.float32) * scale).astype(np.float32) + np.float32(0.0)
        return _scalable_stream(), expected
    return build


def _scalable_edited(edit: Callable[[list], list], fix_end: bool = True) -> Callable[[], bytes]:
    def build() -> bytes:
        header, units = split_units(_scalable_stream())
        units = edit(units)
        if fix_end:
            units[-1] = (UNIT_END, 1, 0, struct.pack("<II", len(units) - 1, sum(u[0] == UNIT_TENSOR for u in units)))
        return join_units(header, units)
    return build


def _drop_base_of_first_refinement(units: list) -> list:
    ref = next(u for u in units if u[0] == 0x11)
    (n,) = struct.unpack_from("<H", ref[3], 4)
    name = ref[3][6:6 + n]
    return [u for u in units if not (u[0] == UNIT_TENSOR and u[3][:2 + n] == struct.pack("<H", n) + name)]


def _refinement_mode(mode: int) -> Callable[[list], list]:
    def edit(units: list) -> list:
        i = next(i for i, u in enumerate(units) if u[0] == 0x11)
        t, f, r, p = units[i]
        return units[:i] + [(t, f, r, p[:1] + bytes([mode]) + p[2:])] + units[i + 1:]
    return edit


def _points_after_tensor(units: list) -> list:
    points = next(u for u in units if u[0] == 0x06)
    rest = [u for u in units if u[0] != 0x06]
    first = next(i for i, u in enumerate(rest) if u[0] == UNIT_TENSOR)
    return rest[:first + 1] + [points] + rest[first + 1:]


def _point0_end_inside_unit(units: list) -> list:
    i = next(i for i, u in enumerate(units) if u[0] == 0x06)
    t, f, r, p = units[i]
    (end,) = struct.unpack_from("<Q", p, 4)
    return units[:i] + [(t, f, r, p[:4] + struct.pack("<Q", end - 3) + p[12:])] + units[i + 1:]


_V12_VALID: dict[str, tuple[str, Builder]] = {
    f"scalable_3_points_at_{k}": (f"a 3-point scalable stream (operating-points unit 0x06, refinement units 0x11, "
                                  f"residual and replace modes) decoded at operating point {k}", _scalable_at(k))
    for k in range(3)
}
_V12_INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "refinement_without_base": ("a refinement unit whose tensor has no base tensor unit", "CorruptError",
                                _scalable_edited(_drop_base_of_first_refinement)),
    "point_references_missing_units": ("the last operating point ends past the end-of-stream unit: its last "
                                       "refinement units are missing", "CorruptError",
                                       _scalable_edited(lambda u: [x for x in u[:-2]] + u[-1:])),
    "refinement_without_operating_points": ("refinement units in a stream without an operating-points unit",
                                            "CorruptError", _scalable_edited(lambda u: [x for x in u if x[0] != 0x06])),
    "operating_points_after_tensor": ("the operating-points unit after a tensor unit", "CorruptError",
                                      _scalable_edited(_points_after_tensor)),
    "point_end_inside_unit": ("operating point 0 ends 3 bytes before its last unit's end", "CorruptError",
                              _scalable_edited(_point0_end_inside_unit)),
    "refinement_unknown_mode": ("a refinement unit of mode 7", "UnsupportedFeatureError",
                                _scalable_edited(_refinement_mode(7))),
}
_WIDTH_ROWS = (4, 8, 16)  # leading rows of "w" (and 4 then 9 of "ids") kept at each point of the width vectors


def _width_stream() -> bytes:
    from ..scalable import encode_scalable

    points = [{"bits": 3, "shapes": {"w": (4, 40), "ids": (4,)}, "label": "narrow"},
              {"bits": 4, "shapes": {"w": (8, 40)}, "label": "wider"}, {"bits": 8, "label": "full"}]
    return encode_scalable(_SCALABLE_WIDTH, points)[0]  # type: ignore[return-value]


_SCALABLE_WIDTH = {"w": _SCALABLE_RNG.standard_normal((16, 40)).astype(np.float32),
                   "ids": np.arange(9, dtype=np.int64) * 7 - 20}


def _width_at(point: int) -> Builder:
    def build() -> tuple[bytes, Expected]:
        from ..quant.uniform import quantize_by_bits

        w = _SCALABLE_WIDTH["w"][:_WIDTH_ROWS[point]]
        q = quantize_by_bits(w, (3, 4, 8)[point])
        return _width_stream(), {"w": (q.codes.astype(np.float32) * q.scales.reshape(-1, 1)) + np.float32(0.0),
                                 "ids": _SCALABLE_WIDTH["ids"][:4 if point == 0 else 9]}
    return build


_V12_VALID.update({f"scalable_width_at_{k}": (f"a 3-point stream whose tensors grow (refinement modes 2 and 3: "
                                              f"leading blocks of 4, 8, 16 rows) decoded at point {k}", _width_at(k))
                   for k in range(3)})
VALID.update(_V12_VALID)
INVALID.update(_V12_INVALID)
_VERSION_OF.update({name: "1.2" for name in (*_V12_VALID, *_V12_INVALID)})
#: valid vectors decoded at an operating point other than the default (the manifest's ``operating_point``)
POINT_OF = {**{f"scalable_3_points_at_{k}": k for k in range(3)}, **{f"scalable_width_at_{k}": k for k in range(3)}}

# -- format 1.4: the tensor-group unit (FORMAT.md §14); these vectors go to v1.4/
VALID.update(group_vectors.VALID)
INVALID.update(group_vectors.INVALID)
_VERSION_OF.update({name: "1.4" for name in (*group_vectors.VALID, *group_vectors.INVALID)})

# -- format 1.5: the dependent-quantization stage (FORMAT.md §15); these vectors go to v1.5/
VALID.update(dependent_vectors.VALID)
INVALID.update(dependent_vectors.INVALID)
_VERSION_OF.update({name: "1.5" for name in (*dependent_vectors.VALID, *dependent_vectors.INVALID)})

# -- format 1.6: the adaptive arithmetic coding stage (FORMAT.md §16); these vectors go to v1.6/
VALID.update(acode_vectors.VALID)
INVALID.update(acode_vectors.INVALID)
_VERSION_OF.update({name: "1.6" for name in (*acode_vectors.VALID, *acode_vectors.INVALID)})


def _check_valid(name: str, data: bytes, expected: Expected) -> list[dict[str, Any]]:
    got = [(th, arr) for th, arr in iter_tensors(data, operating_point=POINT_OF.get(name))]
    names = [th.name for th, _ in got]
    if sorted(names) != sorted(expected):
        raise ConfigError(f"vector {name}: decoded tensors {names} != expected {sorted(expected)}")
    rows = []
    for th, arr in got:
        want = np.asarray(expected[th.name])
        want = want.astype(th.dtype.storage) if th.dtype.name != "bfloat16" else want.astype(np.uint16)
        if want.shape != arr.shape or tensor_digest(want) != tensor_digest(arr):
            raise ConfigError(f"vector {name}: decoding {th.name!r} does not give the expected values")
        rows.append({"name": th.name, "dtype": th.dtype.name, "shape": list(arr.shape), "sha256": tensor_digest(want)})
    return rows


def _check_invalid(name: str, data: bytes, error: str) -> None:
    try:
        for _ in iter_tensors(data):
            pass
    except NNCodecError as exc:
        if type(exc).__name__ != error:
            raise ConfigError(f"vector {name}: expected {error}, the decoder raised {type(exc).__name__}: {exc}")
        return
    raise ConfigError(f"vector {name}: expected {error}, the decoder accepted it")


def _fresh(folder: Path, kind: str, name: str, version: str = VERSION) -> tuple[str, Path]:
    """``(manifest path, file path)`` of a new vector; an existing file is never overwritten."""
    rel = f"v{version}/{kind}/{name}.nnc"
    path = folder / rel
    if path.exists():
        raise ConfigError(f"{path} exists but is not in the manifest: refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return rel, path


def generate(folder: Path) -> list[str]:
    """Add the missing vectors of this format version to ``folder``; return the names written."""
    folder.mkdir(parents=True, exist_ok=True)
    existing = {v.name: v for v in load_manifest(folder)} if (folder / MANIFEST).is_file() else {}
    vectors = list(existing.values())
    written = []
    jobs: list[tuple[str, str, str, Callable[[], Any], str | None]] = (
        [(n, "valid", d, b, None) for n, (d, b) in VALID.items()] +
        [(n, "invalid", d, b, e) for n, (d, e, b) in INVALID.items()] +
        [(n, kind, d, b, None) for n, (kind, d, b) in GRAPH_VECTORS.items()])
    for name, kind, desc, build, error in jobs:
        if name in existing:
            continue
        version = _VERSION_OF.get(name, VERSION)
        rel, path = _fresh(folder, kind, name, version)
        extra: dict[str, Any] = {}
        if error is None:
            data, expected, *graph = build()
            tensors = _check_valid(name, data, expected)
            if graph:  # a graph topology vector (graph_vectors.py): also rebuild the model
                require_graph(name, data, graph[0])
                extra = {"graph": graph[0]}
        else:
            data, tensors = build(), None
            _check_invalid(name, data, error)
        write_atomic(path, [data])
        if name in POINT_OF:
            extra["operating_point"] = POINT_OF[name]
        vectors.append(Vector(name, version, rel, hashlib.sha256(data).hexdigest(), desc, tensors, error, extra))
        written.append(name)
    for name, (desc, _) in delta_vectors.DELTA.items():
        if name in existing:
            continue
        version = delta_vectors.VERSION_OF.get(name, VERSION)
        rel, path = _fresh(folder, "delta", name, version)
        base_rel = next(v.file for v in vectors if v.name == delta_vectors.BASE_VECTOR)
        data, delta = delta_vectors.build(name, folder / base_rel)
        delta["base"] = base_rel
        _check_invalid(name, data, "UnknownUnitError")  # what a decoder without FORMAT.md §12 does
        write_atomic(path, [data])
        vectors.append(Vector(name, version, rel, hashlib.sha256(data).hexdigest(), desc, None, "UnknownUnitError",
                              {"delta": delta}))
        written.append(name)
    manifest = {"format": "nncodec-conformance", "vectors": [v.to_dict() for v in vectors]}
    write_atomic(folder / MANIFEST, [json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"])
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("conformance_vectors")
    done = generate(target)
    print(f"wrote {len(done)} new vectors to {target}: {', '.join(done) or '(none)'}")

"""Conformance vectors of format 1.6: the adaptive arithmetic coding stage 8 (FORMAT.md §16), valid and hostile.

``acode_group_cnn`` is written by the encoder (a small pruned CNN's tensor groups, the data block coded by
stage 8); ``acode_segments`` is built with explicit segments: every segment type, context sets shared across
members and types, offsets, an empty segment, words beyond K (Exp-Golomb remainders of every length up to
int16's), shift 3 with K 2 in a tensor group and shift 7 with K 15 in a tensor unit. The invalid vectors
break one rule of §16 each, on a one-tensor stream.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from ..bitstream.constants import (FILE_HEADER, GROUP_LAYOUT_DENSE, GROUP_LAYOUT_FILL, MAGIC, STAGE_ACODE,
                                   UNIT_END, UNIT_STREAM_HEADER, UNIT_TENSOR, UNIT_TENSOR_GROUP)
from ..bitstream.descriptor import CodedTensor, QuantDescriptor
from ..coding import acode_portable
from ..coding.acode_stage import SEGMENT_TYPES, Acode, Segment, segment_table
from ..dtypes import dtype_by_name
from ..encoder import Encoder, numpy_tensors
from ..limits import DEFAULT_LIMITS
from .forge import join_units
from .group_vectors import entry, group_payload, lossless_desc, uniform_desc

__all__ = ["VALID", "INVALID"]

Expected = dict[str, np.ndarray]
_RNG = np.random.default_rng(1606)
I8, U8, I16, U16, TREE, BYPASS = (SEGMENT_TYPES[k] for k in ("int8", "uint8", "int16", "uint16", "tree", "bypass"))
_IDS = {"uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int64": 9, "float32": 12}


def _stream(groups: tuple[tuple[bytes, int], ...] = (), tensors: tuple[bytes, ...] = ()) -> bytes:
    """A format 1.6 stream: stream header, the tensor groups (payload, members), tensor units, end."""
    count = sum(n for _, n in groups) + len(tensors)
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 6, 0, 0, 0, count, 0))]
    units += [(UNIT_TENSOR_GROUP, 1, 0, g) for g, _ in groups]
    units += [(UNIT_TENSOR, 1, 0, t) for t in tensors]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), count)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 6), units)


def _pipeline(shift: int, k: int) -> bytes:
    return bytes([1, STAGE_ACODE, 2, shift, k])


def _tensor(name: bytes, dtype: str, shape: list[int], params_and_data: bytes) -> bytes:
    """A lossless tensor unit payload whose pipeline and coded data follow the descriptor as given."""
    dtype_id = _IDS[dtype]
    head = struct.pack("<H", len(name)) + name + bytes([dtype_id, len(shape)])
    head += b"".join(struct.pack("<Q", d) for d in shape)
    return head + lossless_desc(dtype_id, 8 * dtype_by_name(dtype).itemsize) + params_and_data


# -- valid: as the encoder writes it ---------------------------------------------------------------------

def _group_cnn() -> tuple[bytes, Expected]:
    """Three pruned conv layers (4-bit codes), each with a folded batch norm (6-bit scale codes near +16,
    6-bit shift codes), zero means, constant variances and batch counts, and a linear layer."""
    int8, f32 = dtype_by_name("int8"), dtype_by_name("float32")
    tensors: dict = {}
    expected: Expected = {}
    for i, (cin, cout) in enumerate(((1, 8), (8, 16), (16, 16))):
        shape = (cout, cin, 3, 3)
        codes = (_RNG.integers(-7, 8, shape) * (_RNG.random(shape) < 0.25)).astype(np.int8)
        desc = QuantDescriptor(scheme=1, code_dtype=int8, sign_bits=1, mantissa_bits=3, bits=4,
                               scales=np.array([2.0 ** -5], np.float32))
        tensors[f"l{i}.conv.weight"] = CodedTensor(codes, desc, f32)
        expected[f"l{i}.conv.weight"] = codes.astype(np.float32) * np.float32(2.0 ** -5) + np.float32(0.0)
        for leaf, centre in (("bias", 0), ("weight", 16)):
            c = np.clip(np.round(_RNG.laplace(centre, 3, cout)), -31, 31).astype(np.int8)
            tensors[f"l{i}.bn.{leaf}"] = CodedTensor(c, QuantDescriptor(
                scheme=1, code_dtype=int8, sign_bits=1, mantissa_bits=5, bits=6,
                scales=np.array([2.0 ** -4], np.float32)), f32)
            expected[f"l{i}.bn.{leaf}"] = c.astype(np.float32) * np.float32(2.0 ** -4) + np.float32(0.0)
        plain = {f"l{i}.bn.running_mean": np.zeros(cout, np.float32),
                 f"l{i}.bn.running_var": np.full(cout, 1.0 - 1e-5, np.float32),
                 f"l{i}.bn.num_batches_tracked": np.array(16, np.int64)}
        tensors.update(numpy_tensors(plain))
        expected.update(plain)
    fc = (_RNG.integers(-7, 8, (10, 16)) * (_RNG.random((10, 16)) < 0.3)).astype(np.int8)
    tensors["fc.weight"] = CodedTensor(fc, QuantDescriptor(scheme=1, code_dtype=int8, sign_bits=1, mantissa_bits=3,
                                                           bits=4, scales=np.array([2.0 ** -6], np.float32)), f32)
    expected["fc.weight"] = fc.astype(np.float32) * np.float32(2.0 ** -6) + np.float32(0.0)
    data, report = Encoder().encode(tensors)
    if data[10:12] != b"\x06\x00" or sorted(report.grouped) != sorted(tensors) or b"\x01\x08\x02" not in data:
        raise ValueError("the encoder did not code every tensor in groups with stage 8")
    return data, expected


# -- valid: built from explicit segments --------------------------------------------------------------------

def _segments_stream() -> tuple[bytes, Expected]:
    f32 = 12
    kernel = lambda: (_RNG.integers(-3, 4, 32) * (_RNG.random(32) < 0.4)  # noqa: E731
                      + np.array([60, -100] + [0] * 30)).astype(np.int8)  # two words far beyond K
    a_k, b_k = kernel(), kernel()
    a_s = (16 + _RNG.integers(-3, 4, 12)).astype(np.int8)
    b_s = (16 + _RNG.integers(-2, 3, 12)).astype(np.int8)
    u8 = np.array([200, 201, 199, 255, 0, 200], np.uint8)
    u16 = np.array([1000, 1001, 65535, 0, 999], np.uint16)
    i16 = np.array([3000, -3000, 32767, -32768, 0, -5, -6, 1], np.int16)
    nbt = np.array(123456789, np.int64)
    var = np.array([0.5, 1.0, 1.0 - 1e-5], np.float32)
    mean = np.float32(-0.0)
    q = uniform_desc(3, 8, [0.25], False)
    rows = [  # name, dtype id, shape, descriptor, layout, words, segment, expected
        (b"a.kernel", f32, [4, 8], q, GROUP_LAYOUT_DENSE, a_k.tobytes(), Segment(I8, 0, 0, 32),
         a_k.reshape(4, 8).astype(np.float32) * np.float32(0.25)),
        (b"a.scale", f32, [12], q, GROUP_LAYOUT_DENSE, a_s.tobytes(), Segment(I8, 1, 16, 12),
         a_s.astype(np.float32) * np.float32(0.25)),
        (b"b.kernel", f32, [4, 8], q, GROUP_LAYOUT_DENSE, b_k.tobytes(), Segment(I8, 0, 0, 32),
         b_k.reshape(4, 8).astype(np.float32) * np.float32(0.25)),
        (b"b.scale", f32, [12], q, GROUP_LAYOUT_DENSE, b_s.tobytes(), Segment(I8, 1, 16, 12),
         b_s.astype(np.float32) * np.float32(0.25)),
        (b"c.empty", f32, [0], lossless_desc(f32, 32), GROUP_LAYOUT_DENSE, b"", Segment(TREE, 5, 0, 0),
         np.zeros(0, np.float32)),
        (b"c.u16", 4, [5], lossless_desc(4, 16), GROUP_LAYOUT_DENSE, u16.tobytes(), Segment(U16, 2, 1000, 5), u16),
        (b"c.u8", 2, [6], lossless_desc(2, 8), GROUP_LAYOUT_DENSE, u8.tobytes(), Segment(U8, 2, 200, 6), u8),
        (b"d.i16", 5, [8], lossless_desc(5, 16), GROUP_LAYOUT_DENSE, i16.tobytes(), Segment(I16, 3, -5, 8), i16),
        (b"e.mean", f32, [3], lossless_desc(f32, 32), GROUP_LAYOUT_FILL, mean.tobytes(), Segment(TREE, 4, 0, 4),
         np.full(3, mean, np.float32)),
        (b"e.nbt", 9, [], lossless_desc(9, 64), GROUP_LAYOUT_DENSE, nbt.tobytes(), Segment(BYPASS, 4, 0, 8), nbt),
        (b"e.var", f32, [3], lossless_desc(f32, 32), GROUP_LAYOUT_DENSE, var.tobytes(), Segment(TREE, 4, 0, 12), var),
    ]
    entries, data, segments, expected, previous = [], b"", [], {}, b""
    for name, dtype_id, shape, desc, layout, words, segment, want in rows:
        entries.append(entry(name, previous, dtype_id, shape, desc, layout))
        previous = name
        data += words
        segments.append(segment)
        expected[name.decode()] = want
    coded = Acode(3, 2, segments).encode(memoryview(data))
    group = group_payload(len(entries), b"".join(entries), coded, data_pipeline=_pipeline(3, 2))
    z = np.array([0, 1, -1, 20000, -20000, 7, 16, 17, 18, -31000] * 4, np.int16)
    unit = _tensor(b"z.w", "int16", [40], _pipeline(7, 15) + Acode(7, 15, [Segment(I16, 15, 0, 40)]).encode(
        memoryview(z.tobytes())))
    expected["z.w"] = z
    return _stream(((group, len(entries)),), (unit,)), expected


def _shift3_renormalise() -> tuple[bytes, Expected]:
    """Long runs of one int8 value at shift 3 drive a probability to 2041/2048; each rare other value then
    leaves the range below 2^16, which takes two normalisation steps (FORMAT.md §16.3)."""
    w = np.array(([1] * 60 + [0] + [1] * 5) * 3 + [-1] * 70 + [2] + [-1] * 9, np.int8)
    unit = _tensor(b"r.w", "int8", [len(w)], _pipeline(3, 0) + Acode(3, 0, [Segment(I8, 0, 0, len(w))]).encode(
        memoryview(w.tobytes())))
    return _stream((), (unit,)), {"r.w": w}


VALID: dict[str, tuple[str, Callable[[], tuple[bytes, Expected]]]] = {
    "acode_group_cnn": ("stage 8 (format 1.6) as the encoder writes it: a small pruned CNN's tensor groups "
                        "(4-bit kernels, 6-bit folded norms, fills, batch counts), the data coded by stage 8",
                        _group_cnn),
    "acode_segments": ("stage 8 with explicit segments: every segment type, context sets shared across members "
                       "and types, offsets, an empty segment, words beyond K and int16 extremes; shift 3, K 2 in a "
                       "tensor group and shift 7, K 15 in a tensor unit", _segments_stream),
    "acode_shift3_renormalise": ("stage 8 at shift 3, K 0: runs of one int8 value broken by a rare other value, "
                                 "whose bit leaves the range below 2^16 so that normalisation takes two steps",
                                 _shift3_renormalise),
}


# -- invalid ------------------------------------------------------------------------------------------------

_W = np.array([0, 1, -2, 0, 0, 3, -1, 20, 0, 0], np.int8)


def _coded(k: int = 15) -> bytes:
    """The coder's bytes of ``_W`` as one int8 segment (shift 4)."""
    return Acode(4, k, [Segment(I8, 0, 0, 10)]).encode(memoryview(_W.tobytes()))[3:]


def _bad(framing: "bytes | Callable[[], bytes]", params: bytes = b"\x04\x0f", shape: "list[int] | None" = None
         ) -> Callable[[], bytes]:
    """A stream of one int8 tensor ``w`` (10 words unless ``shape``) whose pipeline is stage 8 with ``params``."""
    def build() -> bytes:
        body = framing() if callable(framing) else framing
        return _stream(tensors=(_tensor(b"w", "int8", shape or [10], bytes([1, STAGE_ACODE, len(params)]) + params
                                        + body),))
    return build


def _table(*segments: bytes) -> bytes:
    return bytes([len(segments)]) + b"".join(segments)


def _prefix_over_cap() -> bytes:
    # one word: significance 1 (set 0's sig[0]), sign 0 (sign[0]), K = 0, then 19 prefix bits of 1 (pre[0..18])
    bits = [(0, 1), (3, 0)] + [(21 + i, 1) for i in range(19)] + [(-1, 0)] * 8
    return _table(bytes([I8, 1])) + acode_portable.range_code(bits, 4)


def _over_words_limit() -> bytes:
    n = DEFAULT_LIMITS.max_adaptive_words + 1
    return segment_table([Segment(I8, 0, 0, n)]) + _coded()


INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "acode_params_length": ("stage 8 params of 3 bytes", "CorruptError",
                            _bad(lambda: _table(bytes([I8, 10])) + _coded(), b"\x04\x0f\x00")),
    "acode_shift_8": ("stage 8 with shift 8 (3..7)", "CorruptError",
                      _bad(lambda: _table(bytes([I8, 10])) + _coded(), b"\x08\x0f")),
    "acode_k_16": ("stage 8 with K 16 (0..15)", "CorruptError",
                   _bad(lambda: _table(bytes([I8, 10])) + _coded(), b"\x04\x10")),
    "acode_segment_type_6": ("a segment of type 6", "CorruptError", _bad(lambda: _table(bytes([6, 10])) + _coded())),
    "acode_raw_segment_offset": ("a raw-byte (type 4) segment declaring an offset", "CorruptError",
                                 _bad(lambda: _table(bytes([TREE | 8, 2, 10])) + _coded())),
    "acode_offset_over_65535": ("a segment offset of 131072", "CorruptError",
                                _bad(lambda: _table(bytes([I8 | 8, 0x80, 0x80, 0x10, 10])) + _coded())),
    "acode_varint_not_minimal": ("a word count of 10 written in 2 bytes", "CorruptError",
                                 _bad(lambda: _table(bytes([I8, 0x8A, 0x00])) + _coded())),
    "acode_varint_9_bytes": ("a word count varint of 9 bytes", "CorruptError",
                             _bad(lambda: _table(bytes([I8]) + b"\x80" * 8 + b"\x01") + _coded())),
    "acode_segment_count_claim": ("2^14 segments declared in a few bytes", "CorruptError",
                                  _bad(lambda: b"\x80\x80\x01" + bytes([I8, 10]) + _coded())),
    "acode_table_truncated": ("a segment table ending inside the last word count", "CorruptError",
                              _bad(bytes([2, I8, 5, TREE, 0x85]))),
    "acode_segments_short": ("segments holding 9 of the tensor's 10 words", "CorruptError",
                             _bad(lambda: _table(bytes([I8, 9])) + _coded())),
    "acode_segments_long": ("segments holding 11 words for 10", "CorruptError",
                            _bad(lambda: _table(bytes([I8, 11])) + _coded())),
    "acode_no_words_but_bytes": ("a tensor of no words with coded bytes after its table", "CorruptError",
                                 _bad(lambda: _table(bytes([I8, 0])) + bytes(5), shape=[0])),
    "acode_coded_bytes_run_out": ("the coder's last byte cut off", "CorruptError",
                                  _bad(lambda: _table(bytes([I8, 10])) + _coded()[:-1])),
    "acode_first_byte_not_0": ("the coder's first byte 1", "CorruptError",
                               _bad(lambda: _table(bytes([I8, 10])) + b"\x01" + _coded()[1:])),
    "acode_trailing_byte": ("a byte after the coder's last", "CorruptError",
                            _bad(lambda: _table(bytes([I8, 10])) + _coded() + b"\x00")),
    "acode_final_code_not_0": ("the coder's last byte changed: the final code is not 0", "CorruptError",
                               _bad(lambda: _table(bytes([I8, 10])) + _coded()[:-1] + bytes([_coded()[-1] ^ 1]))),
    "acode_value_outside_type": ("offset 120 makes word 7 (20) decode to 140, outside int8", "CorruptError",
                                 _bad(lambda: _table(bytes([I8 | 8, 240, 1, 10])) + _coded())),
    "acode_prefix_over_cap": ("an Exp-Golomb prefix of 19 one bits (the cap is 18)", "CorruptError",
                              _bad(_prefix_over_cap, b"\x04\x00", shape=[1])),
    "acode_words_over_limit": ("a tensor of max_adaptive_words + 1 int8 words coded by stage 8",
                               "LimitExceededError", _bad(_over_words_limit,
                                                          shape=[DEFAULT_LIMITS.max_adaptive_words + 1])),
}

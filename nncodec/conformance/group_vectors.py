"""Conformance vectors of format 1.4: the tensor-group unit (FORMAT.md §14), valid and hostile.

The valid vectors hold a small model with a folded batch norm as the encoder writes it (zstd-coded
directory and data) and a hand-built group with stored pipelines that exercises both layouts, every
kind of member and a tensor unit beside the group. The invalid ones break one rule of §14 each.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from ..bitstream.constants import (FILE_HEADER, GROUP_LAYOUT_DENSE, GROUP_LAYOUT_FILL, MAGIC, UNIT_END,
                                   UNIT_STREAM_HEADER, UNIT_TENSOR, UNIT_TENSOR_GROUP)
from ..bitstream.descriptor import CodedTensor, QuantDescriptor
from ..dtypes import dtype_by_name
from ..encoder import Encoder, numpy_tensors
from ..limits import DEFAULT_LIMITS
from .forge import join_units

__all__ = ["VALID", "INVALID", "entry", "group_payload", "group_stream"]

Expected = dict[str, np.ndarray]
_RNG = np.random.default_rng(1404)


def entry(name: bytes, previous: bytes, dtype_id: int, shape: list[int], desc: bytes, layout: int,
          shared: int | None = None) -> bytes:
    """One directory entry (§14.2); ``shared`` defaults to the longest common prefix with ``previous``."""
    if shared is None:
        shared = 0
        while shared < min(len(name), len(previous), 255) and name[shared] == previous[shared]:
            shared += 1
    suffix = name[shared:]
    return (bytes([shared]) + struct.pack("<H", len(suffix)) + suffix + bytes([dtype_id, len(shape)])
            + b"".join(struct.pack("<Q", d) for d in shape) + desc + bytes([layout]))


def lossless_desc(dtype_id: int, bits: int = 8) -> bytes:
    return struct.pack("<BBbBBBBBhI", 0, dtype_id, 0, 0, 0, bits, 0, 0, 0, 0)


def uniform_desc(code_id: int, bits: int, scales: list[float], per_channel: bool) -> bytes:
    return struct.pack("<BBbBBBBBhI", 1, code_id, 1, 0, bits - 1, bits, int(per_channel), 0, 0,
                       len(scales)) + struct.pack(f"<{len(scales)}f", *scales)


def group_payload(count: int, directory: bytes, data: bytes, *, directory_pipeline: bytes = b"\x00",
                  data_pipeline: bytes = b"\x00", directory_length: int | None = None) -> bytes:
    """A tensor-group payload (§14.1) with the directory and data as given (stored pipelines by default)."""
    return (struct.pack("<II", count, len(directory) if directory_length is None else directory_length)
            + directory_pipeline + struct.pack("<I", len(directory)) + directory + data_pipeline + data)


def group_stream(group: bytes, members: int, tensor_payloads: tuple[bytes, ...] = (),
                 tensor_count: int | None = None) -> bytes:
    """A format 1.4 stream: stream header, the group unit, tensor units, end of stream."""
    count = members + len(tensor_payloads) if tensor_count is None else tensor_count
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 4, 0, 0, 0, count, 0)),
             (UNIT_TENSOR_GROUP, 1, 0, group)]
    units += [(UNIT_TENSOR, 1, 0, p) for p in tensor_payloads]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), members + len(tensor_payloads))))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 4), units)


# -- valid ------------------------------------------------------------------------------------------------

def _folded_bn_model() -> tuple[bytes, Expected]:
    """A conv (4-bit codes), a folded batch norm (8-bit scale and shift codes, zero mean, constant variance,
    an int64 batch count) and a linear layer, encoded by the encoder: a group with zstd-coded parts."""
    codes = _RNG.integers(-7, 8, (8, 1, 3, 3)).astype(np.int8)
    step = np.linspace(0.01, 0.02, 8).astype(np.float32)
    conv = CodedTensor(codes, QuantDescriptor(scheme=1, code_dtype=dtype_by_name("int8"), sign_bits=1,
                                              mantissa_bits=3, bits=4, per_channel=True, scales=step),
                       dtype_by_name("float32"))
    bn_codes = {n: _RNG.integers(-127, 128, 8).astype(np.int8) for n in ("bn.weight", "bn.bias")}
    bn = {n: CodedTensor(c, QuantDescriptor(scheme=1, code_dtype=dtype_by_name("int8"), sign_bits=1,
                                            mantissa_bits=7, bits=8, scales=np.array([2.0 ** -6], np.float32)),
                         dtype_by_name("float32")) for n, c in bn_codes.items()}
    plain = {"bn.running_mean": np.zeros(8, np.float32),
             "bn.running_var": np.full(8, 1.0 - 1e-5, np.float32),
             "bn.num_batches_tracked": np.array(0, np.int64),
             "fc.weight": _RNG.standard_normal((3, 8)).astype(np.float32),
             "fc.bias": np.zeros(3, np.float32)}
    tensors = {"conv.weight": conv, **bn, **numpy_tensors(plain)}
    data, report = Encoder(adaptive_coding=False).encode(tensors)
    if sorted(report.grouped) != sorted(tensors):
        raise ValueError(f"the encoder grouped {report.grouped}, not every tensor")
    expected: Expected = {"conv.weight": codes.astype(np.float32) * step.reshape(-1, 1, 1, 1) + np.float32(0.0)}
    expected.update({n: c.astype(np.float32) * np.float32(2.0 ** -6) + np.float32(0.0) for n, c in bn_codes.items()})
    expected.update(plain)
    return data, expected


_SCALES = [0.5, -0.25, 2.0]


def _stored_members() -> tuple[list[bytes], bytes, Expected]:
    """Directory entries, data and expected values of the hand-built group (names ascending)."""
    rows = [  # name, dtype id, shape, descriptor, layout, stored words, expected
        (b"blk.bn.bias", 12, [3], uniform_desc(3, 8, [0.125], False), GROUP_LAYOUT_DENSE, bytes([1, 0xFE, 4]),
         np.array([0.125, -0.25, 0.5], np.float32)),
        (b"blk.bn.num_batches_tracked", 9, [], lossless_desc(9, 64), GROUP_LAYOUT_DENSE, struct.pack("<q", 12),
         np.array(12, np.int64)),
        (b"blk.bn.running_mean", 12, [3], lossless_desc(12, 32), GROUP_LAYOUT_FILL, struct.pack("<f", 0.0),
         np.zeros(3, np.float32)),
        (b"blk.bn.running_var", 12, [3], lossless_desc(12, 32), GROUP_LAYOUT_FILL, struct.pack("<f", 0.99999),
         np.full(3, 0.99999, np.float32)),
        (b"blk.bn.weight", 12, [3, 2], uniform_desc(3, 8, _SCALES, True), GROUP_LAYOUT_FILL, bytes([2]),
         (np.float32(2.0) * np.array(_SCALES, np.float32)).reshape(3, 1).repeat(2, 1)),
        (b"blk.empty", 12, [0, 4], lossless_desc(12, 32), GROUP_LAYOUT_DENSE, b"", np.zeros((0, 4), np.float32)),
        (b"blk.mask", 1, [4], lossless_desc(1, 1), GROUP_LAYOUT_DENSE, bytes([1, 0, 0, 1]),
         np.array([True, False, False, True])),
        (b"h\xc3\xa9ad.scale", 10, [2], lossless_desc(10, 16), GROUP_LAYOUT_FILL, np.float16(-1.5).tobytes(),
         np.full(2, -1.5, np.float16)),
    ]
    entries, data, expected, previous = [], b"", {}, b""
    for name, dtype_id, shape, desc, layout, words, want in rows:
        entries.append(entry(name, previous, dtype_id, shape, desc, layout))
        previous = name
        data += words
        expected[name.decode()] = want
    return entries, data, expected


def _tensor_unit(name: bytes, values: np.ndarray, dtype_id: int) -> bytes:
    return (struct.pack("<H", len(name)) + name + bytes([dtype_id, values.ndim])
            + b"".join(struct.pack("<Q", d) for d in values.shape) + lossless_desc(dtype_id, 8 * values.itemsize)
            + b"\x00" + values.tobytes())


_WEIGHT = np.arange(6, dtype=np.int16).reshape(2, 3) - 2


def _stored_group() -> tuple[bytes, Expected]:
    entries, data, expected = _stored_members()
    payload = group_payload(len(entries), b"".join(entries), data)
    expected["blk.conv.weight"] = _WEIGHT
    return group_stream(payload, len(entries), (_tensor_unit(b"blk.conv.weight", _WEIGHT, 5),)), expected


def _split_groups_model() -> tuple[bytes, Expected]:
    """A small pruned CNN's tensors (4-bit kernels, those on the po2 grid in int16 code words; 6-bit folded
    norms; zero means, constant variances, batch counts) as the encoder writes them since it splits groups
    by kind: several tensor-group units, the po2 codes stored as int8 (§14.5)."""
    rng = np.random.default_rng(1405)
    int8, int16, f32 = dtype_by_name("int8"), dtype_by_name("int16"), dtype_by_name("float32")
    tensors: dict = {}
    expected: Expected = {}
    for i in range(4):
        shape = (24, 24, 3, 3)
        keep = rng.random(shape) < 0.15
        if i % 2:  # po2 codes -8..8 of quantized_po2_zero(4,1), in int16 words as its quantizer emits them
            codes = (rng.integers(1, 9, shape) * rng.choice([-1, 1], shape) * keep).astype(np.int16)
            desc = QuantDescriptor(scheme=5, code_dtype=int16, sign_bits=1, exponent_bits=5, bits=6, exp_min=-8,
                                   scales=np.ones(1, np.float32))
            mag = np.abs(codes).astype(np.int32)
            values = np.where(codes == 0, np.float32(0.0), np.sign(codes).astype(np.float32)
                              * np.ldexp(np.float32(1.0), mag - 1 - 8).astype(np.float32))
        else:
            codes = (rng.integers(-7, 8, shape) * keep).astype(np.int8)
            desc = QuantDescriptor(scheme=1, code_dtype=int8, sign_bits=1, mantissa_bits=3, bits=4,
                                   scales=np.array([2.0 ** -5], np.float32))
            values = codes.astype(np.float32) * np.float32(2.0 ** -5) + np.float32(0.0)
        tensors[f"l{i}.conv.weight"] = CodedTensor(codes, desc, f32)
        expected[f"l{i}.conv.weight"] = values.astype(np.float32)
        for leaf in ("bias", "weight"):
            c = rng.integers(-31 if leaf == "bias" else 1, 32, 24).astype(np.int8)
            tensors[f"l{i}.bn.{leaf}"] = CodedTensor(c, QuantDescriptor(
                scheme=1, code_dtype=int8, sign_bits=1, mantissa_bits=5, bits=6,
                scales=np.array([0.01 * (i + 1)], np.float32)), f32)
            expected[f"l{i}.bn.{leaf}"] = c.astype(np.float32) * np.float32(0.01 * (i + 1)) + np.float32(0.0)
        plain = {f"l{i}.bn.running_mean": np.zeros(24, np.float32),
                 f"l{i}.bn.running_var": np.full(24, 1.0 - 1e-5, np.float32),
                 f"l{i}.bn.num_batches_tracked": np.array(300, np.int64)}
        tensors.update(numpy_tensors(plain))
        expected.update(plain)
    data, report = Encoder(adaptive_coding=False).encode(tensors)
    from ..decoder import read_info  # only here: the decoder is not needed to build the other vectors

    units = [u for u in read_info(data).units if u.type == "tensor_group"]
    narrowed = {m["name"] for u in units for m in u.members  # one byte per stored code word
                if m["layout"] == "dense" and m["stored_bytes"] == int(np.prod(m["shape"]))}
    if sorted(report.grouped) != sorted(tensors) or len(units) < 2 or "l1.conv.weight" not in narrowed:
        raise ValueError(f"the encoder wrote {len(units)} groups of {report.grouped}, narrowed {sorted(narrowed)}")
    return data, expected


VALID: dict[str, tuple[str, Callable[[], tuple[bytes, Expected]]]] = {
    "tensor_group_folded_bn": ("a tensor-group unit (format 1.4) as the encoder writes it: a conv, a folded batch "
                               "norm and a linear layer, zstd-coded directory and data, fill members",
                               _folded_bn_model),
    "tensor_group_stored": ("a hand-built tensor group with stored pipelines: dense and fill layouts, quantized "
                            "per-tensor and per-channel members, bool, 0-d, empty and non-ASCII members, shared "
                            "name prefixes, a tensor unit after it", _stored_group),
    "tensor_groups_split": ("several tensor-group units in one stream, as the encoder writes a small pruned CNN: "
                            "kernels apart from norms and lossless members, po2 codes given as int16 stored as "
                            "int8, rANS- and zstd-coded data", _split_groups_model),
}


# -- invalid ----------------------------------------------------------------------------------------------

def _edited(count: int | None = None, directory: "Callable[[list[bytes]], bytes] | None" = None,
            data: "Callable[[bytes], bytes] | None" = None, **payload_options: object) -> Callable[[], bytes]:
    """The stored group with its member count, directory or data edited (every CRC valid)."""
    def build() -> bytes:
        entries, raw, _ = _stored_members()
        d = directory(entries) if directory is not None else b"".join(entries)
        payload = group_payload(len(entries) if count is None else count, d, data(raw) if data else raw,
                                **payload_options)  # type: ignore[arg-type]
        return group_stream(payload, len(entries))
    return build


def _swap_first_two(entries: list[bytes]) -> bytes:
    first = entry(b"blk.bn.num_batches_tracked", b"", 9, [], lossless_desc(9, 64), GROUP_LAYOUT_DENSE)
    second = entry(b"blk.bn.bias", b"blk.bn.num_batches_tracked", 12, [3], uniform_desc(3, 8, [0.125], False),
                   GROUP_LAYOUT_DENSE)
    return first + second + b"".join(entries[2:])


def _entry_edit(index: int, fn: Callable[[bytes], bytes]) -> Callable[[list[bytes]], bytes]:
    return lambda entries: b"".join(fn(e) if i == index else e for i, e in enumerate(entries))


def _duplicate_of_unit() -> bytes:
    entries, raw, _ = _stored_members()
    return group_stream(group_payload(len(entries), b"".join(entries), raw), len(entries),
                        (_tensor_unit(b"blk.mask", np.array([1, 0], np.uint8), 2),))


def _member_in_two_groups() -> bytes:
    """Two tensor-group units, the second holding a member named like one of the first."""
    entries, raw, _ = _stored_members()
    second = group_payload(1, entry(b"blk.bn.bias", b"", 1, [2], lossless_desc(1, 1), GROUP_LAYOUT_DENSE),
                           bytes([0, 1]))
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 4, 0, 0, 0, len(entries) + 1, 0)),
             (UNIT_TENSOR_GROUP, 1, 0, group_payload(len(entries), b"".join(entries), raw)),
             (UNIT_TENSOR_GROUP, 1, 0, second)]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), len(entries) + 1)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 4), units)


def _members_not_counted() -> bytes:
    entries, raw, _ = _stored_members()
    return group_stream(group_payload(len(entries), b"".join(entries), raw), len(entries), tensor_count=0)


INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "group_no_members": ("a tensor group with a member count of 0", "CorruptError", _edited(count=0)),
    "group_directory_over_limit": ("a directory length of max_metadata_bytes + 1", "LimitExceededError",
                                   _edited(directory_length=DEFAULT_LIMITS.max_metadata_bytes + 1)),
    "group_count_over_directory": ("more members than 21-byte entries fit the directory length", "CorruptError",
                                   _edited(count=1000)),
    "group_default_pipeline": ("a directory pipeline of 0xFF (the default pipeline)", "CorruptError",
                               _edited(directory_pipeline=b"\xff")),
    "group_names_not_ascending": ("member names out of ascending byte order", "CorruptError",
                                  _edited(directory=_swap_first_two)),
    "group_shared_prefix_too_long": ("a member sharing more bytes than the previous name has", "CorruptError",
                                     _edited(directory=_entry_edit(1, lambda e: b"\x40" + e[1:]))),
    "group_unknown_layout": ("a member layout of 7", "UnsupportedFeatureError",
                             _edited(directory=_entry_edit(0, lambda e: e[:-1] + b"\x07"))),
    "group_fill_of_empty_tensor": ("a fill member with zero elements", "CorruptError",
                                   _edited(directory=_entry_edit(5, lambda e: e[:-1] + b"\x01"))),
    "group_entry_past_directory": ("a name suffix running past the directory's end", "TruncatedError",
                                   _edited(directory=_entry_edit(7, lambda e: e[:1] + b"\xff\x00" + e[3:]))),
    "group_directory_trailing_bytes": ("4 bytes after the last member's entry", "CorruptError",
                                       _edited(directory=lambda e: b"".join(e) + b"\0\0\0\0")),
    "group_data_short": ("the data one byte shorter than the members' words", "CorruptError",
                         _edited(data=lambda d: d[:-1])),
    "group_member_duplicates_tensor": ("a tensor unit named like a group member", "CorruptError",
                                       _duplicate_of_unit),
    "group_members_not_counted": ("a stream header whose tensor_count leaves out the group's members",
                                  "CorruptError", _members_not_counted),
    "group_member_in_two_groups": ("a second tensor-group unit with a member named like one of the first",
                                   "CorruptError", _member_in_two_groups),
}

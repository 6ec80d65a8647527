"""Structured fuzzing of the tensor-group unit (FORMAT.md §14): hostile directories, claims and placements.

Each example builds a group from random members (names out of order or repeated, unknown dtypes and
layouts, shapes claiming up to 2**62 elements, fills of huge tensors, words of the wrong length), random
``member_count`` / ``directory_length`` claims, coded or stored pipelines, and places it in a stream, next
to a tensor unit that may share a member's name or inside a scalable stream. Every decoding path (whole,
lazy, ``read_info``) must answer with nncodec's own error, within the deadline, and never allocate more
than the (small) limits allow.
"""

import struct
from contextlib import contextmanager

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nncodec
from nncodec.bitstream.constants import UNIT_END, UNIT_TENSOR_GROUP
from nncodec.conformance.forge import join_units, split_units
from nncodec.conformance.group_vectors import entry, group_payload, group_stream, lossless_desc, uniform_desc
from nncodec.decoder import read_info
from nncodec.dtypes import dtype_by_id
from nncodec.encoder import _smallest
from nncodec.errors import NNCodecError
from nncodec.limits import Limits

SMALL = Limits(max_unit_bytes=1 << 20, max_tensor_elements=1 << 16, max_total_decoded_bytes=1 << 18,
               max_metadata_bytes=1 << 12)
#: the largest array a decoder may allocate under SMALL: decoded bytes, or their code words (at most 8x
#: for int64 codes of a 1-byte tensor: quantized tensors are float, so 4x), or a metadata block
_MAX_ALLOC = 8 * SMALL.max_total_decoded_bytes

_NAMES = st.sampled_from([b"a", b"ab", b"b", b"bn.running_mean", b"bn.running_var", "\u00e9".encode(), b"\xff",
                          b"w", b"a" * 300])
_SHAPES = st.lists(st.sampled_from([0, 1, 2, 3, 7, 1 << 16, 1 << 31, 1 << 62]), max_size=3)


@st.composite
def _member(draw):
    dtype_id = draw(st.sampled_from([1, 2, 7, 12, 12, 12, 14, 99]))
    shape = draw(_SHAPES)
    if draw(st.booleans()):
        code_id = dtype_id
        desc = lossless_desc(dtype_id, draw(st.sampled_from([1, 8, 32, 32, 64])))
    else:
        code_id = draw(st.sampled_from([3, 5, 7, 8]))
        desc = uniform_desc(code_id, draw(st.sampled_from([2, 4, 8])), [0.5] * draw(st.integers(1, 3)),
                            draw(st.booleans()))
    layout = draw(st.sampled_from([0, 0, 1, 1, 2]))
    code = dtype_by_id(code_id)
    numel = int(np.prod(shape, dtype=object))
    if draw(st.integers(0, 3)) and code is not None and (layout == 1 or numel <= 64):  # words that fit
        words = draw(st.binary(min_size=code.itemsize, max_size=code.itemsize)) if layout == 1 else \
            np.zeros(numel, code.storage).tobytes()
    else:
        words = draw(st.binary(max_size=24))
    return draw(_NAMES), dtype_id, shape, desc, layout, words


@st.composite
def hostile_group_streams(draw) -> bytes:
    members = draw(st.lists(_member(), min_size=1, max_size=5))
    if draw(st.integers(0, 3)):  # mostly well-ordered names, so the checks past the names are reached too
        members = sorted({m[0]: m for m in members}.values(), key=lambda m: m[0])
    entries, previous, data = [], b"", b""
    for name, dtype_id, shape, desc, layout, words in members:
        shared = None if draw(st.integers(0, 7)) else draw(st.integers(0, 255))
        entries.append(entry(name, previous, dtype_id, shape, desc, layout, shared))
        previous, data = name, data + words
    directory = b"".join(entries)
    count = len(entries) if draw(st.integers(0, 7)) else draw(st.sampled_from([0, 2, 1 << 20, (1 << 32) - 1]))
    dir_len = None if draw(st.integers(0, 7)) else draw(st.sampled_from([0, 20, len(directory) + 1, 1 << 31]))
    kw = {}
    if draw(st.booleans()):
        pipeline, coded = _smallest(directory)
        kw["directory_pipeline"] = pipeline.to_bytes()
        directory_coded = coded
    else:
        directory_coded = directory
    if draw(st.booleans()):
        pipeline, data = _smallest(data)
        kw["data_pipeline"] = pipeline.to_bytes()
    elif not draw(st.integers(0, 7)):
        kw["data_pipeline"] = b"\xff"
    payload = group_payload(count, directory_coded, data, directory_length=len(directory) if dir_len is None
                            else dir_len, **kw)
    if not draw(st.integers(0, 7)):
        payload = payload[:len(payload) - draw(st.integers(1, len(payload)))]
    place = draw(st.sampled_from(["alone"] * 4 + ["with_tensor"] * 3 + ["scalable"]))
    if place == "alone":
        return group_stream(payload, len(members))
    if place == "with_tensor":  # a tensor unit, maybe named like a member
        name = draw(_NAMES)
        tensor = struct.pack("<H", len(name)) + name + bytes([12, 1]) + struct.pack("<Q", 1) \
            + lossless_desc(12, 32) + b"\x00" + b"\0\0\x80\x3f"
        return group_stream(payload, len(members), (tensor,))
    scalable = nncodec.encode_arrays({"w": np.ones((4, 4), np.float32)},
                                     operating_points=[{"bits": 2}, {"bits": 8}])
    header, units = split_units(scalable)
    end = len(units) - 1
    units = units[:2] + [(UNIT_TENSOR_GROUP, 1, 0, payload)] + units[2:end] + [
        (UNIT_END, 1, 0, struct.pack("<II", end + 1, 1 + len(members)))]
    return join_units(header, units)


@contextmanager
def _allocations_bounded():
    """Fail on any numpy allocation over ``_MAX_ALLOC`` bytes (numpy's empty / zeros / full / frombuffer)."""
    real = {n: getattr(np, n) for n in ("empty", "zeros", "full")}

    def guard(fn):
        def checked(shape, dtype=float, *a, **k):
            n = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
            if n > _MAX_ALLOC:
                raise AssertionError(f"allocated {n} bytes from a claim")
            return fn(shape, dtype, *a, **k)
        return checked

    for n, fn in real.items():
        setattr(np, n, guard(fn))
    try:
        yield
    finally:
        for n, fn in real.items():
            setattr(np, n, fn)


def _decode_every_way(data: bytes) -> None:
    for way in ("whole", "lazy", "info"):
        try:
            if way == "whole":
                nncodec.decode_arrays(data, limits=SMALL)
            elif way == "lazy":
                with nncodec.open(data, limits=SMALL) as f:
                    for name in f.keys():
                        f.get_array(name)
            else:
                read_info(data, limits=SMALL)
        except NNCodecError:
            pass


@settings(max_examples=300, deadline=3000, suppress_health_check=list(HealthCheck))
@given(hostile_group_streams())
def test_hostile_groups_raise_only_nncodec_errors_and_allocate_within_limits(data):
    with _allocations_bounded():
        _decode_every_way(data)


def test_the_fuzzed_builders_make_a_valid_group_when_left_alone():
    """The pieces the fuzz damages make a decodable group when undamaged (dense and fill members)."""
    members = [(b"a", 12, [3], lossless_desc(12, 32), 0, np.arange(3, dtype="<f4").tobytes()),
               (b"ab", 12, [5], lossless_desc(12, 32), 1, np.float32(2.5).tobytes())]
    entries, previous, data = [], b"", b""
    for name, dtype_id, shape, desc, layout, words in members:
        entries.append(entry(name, previous, dtype_id, shape, desc, layout))
        previous, data = name, data + words
    out = nncodec.decode_arrays(group_stream(group_payload(2, b"".join(entries), data), 2), limits=SMALL)
    assert out["a"].tolist() == [0.0, 1.0, 2.0] and out["ab"].tolist() == [2.5] * 5

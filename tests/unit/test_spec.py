"""FORMAT.md is enough to write a decoder: stage 5 (ans), decoded from the text alone, matches the vectors;
and the rules the spec settles hold in nncodec."""

import bisect
import io
import struct

import numpy as np
import pytest

import nncodec
from nncodec.coding.pipeline import intermediate_bound
from nncodec.coding import Ans, ans_available
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.decoder import StreamWalker
from nncodec.errors import ConfigError, CorruptError, FormatError, LimitExceededError

VECTORS = default_vectors_dir()


def ans_decode_from_the_spec(coded: bytes) -> list[int]:
    """FORMAT.md §4 "ans", step by step, in plain Python integers and binary64 floats (no constriction)."""
    n, k = struct.unpack_from("<QI", coded, 0)
    pos = 12
    values = list(struct.unpack_from(f"<{k}i", coded, pos))
    counts = list(struct.unpack_from(f"<{k}I", coded, pos + 4 * k))
    pos += 8 * k
    if k == 1:
        assert pos == len(coded)
        return values * n
    assert (len(coded) - pos) % 4 == 0
    words = list(struct.unpack_from(f"<{(len(coded) - pos) // 4}I", coded, pos))
    scale = float((1 << 24) - k) / float(n)
    cdf, c = [], 0
    for i, count in enumerate(counts):
        cdf.append(int(float(c) * scale) + i)  # int() truncates toward zero
        c += count
    cdf.append(1 << 24)
    x = 0
    if words:
        x = words.pop()
        assert x != 0
        while words and x < 1 << 32:
            x = (x << 32) | words.pop()
    out = []
    for _ in range(n):
        q = x & ((1 << 24) - 1)
        s = bisect.bisect_right(cdf, q) - 1
        x = (x >> 24) * (cdf[s + 1] - cdf[s]) + q - cdf[s]
        if x < 1 << 32 and words:
            x = (x << 32) | words.pop()
        out.append(values[s])
    assert x == 0 and not words
    return out


def _ans_units(data: bytes):
    walker = StreamWalker(io.BytesIO(data), nncodec.DEFAULT_LIMITS)
    for _, _, th, coded in walker.tensor_units():
        stages = walker.pipeline_of(th).stages
        if [s.codec_id for s in stages] == ["ans"]:
            yield th, stages[0], bytes(coded)


def test_stage_5_vectors_decode_from_the_text_alone():
    ans_vectors = [v for v in load_manifest(VECTORS) if v.name.startswith("stage_ans")]
    assert len(ans_vectors) == 2
    checked = 0
    for v in ans_vectors:
        data = (VECTORS / v.file).read_bytes()
        decoded = nncodec.decode_arrays(data)
        for th, stage, coded in _ans_units(data):
            got = np.array(ans_decode_from_the_spec(coded), dtype=decoded[th.name].dtype)
            np.testing.assert_array_equal(got, decoded[th.name].reshape(-1))
            checked += 1
    assert checked == 3  # "codes", "flat" (one symbol) and "wide"


@pytest.mark.skipif(not ans_available(), reason="encoding stage 5 needs constriction")
@pytest.mark.parametrize("seed", range(6))
def test_the_spec_decodes_what_the_ans_encoder_writes(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 4000)), int(rng.integers(2, 600))
    words = (rng.geometric(0.02, n) % k - k // 2).astype(np.int16)
    coded = Ans(2, True).encode(memoryview(words.view(np.uint8)))
    assert ans_decode_from_the_spec(coded) == words.tolist()


@pytest.mark.skipif(not ans_available(), reason="encoding stage 5 needs constriction")
def test_ans_data_left_after_the_last_word_is_corrupt():
    words = np.array([1, 2, 2, 3, 1, 1] * 50, np.int8)
    coded = Ans(1, True).encode(memoryview(words.view(np.uint8)))
    head = 12 + 8 * 3
    extra = coded[:head] + struct.pack("<I", 12345) + coded[head:]  # a word at the bottom of the stack
    with pytest.raises(CorruptError, match="more than its words"):
        b"".join(Ans(1, True).iter_decode(memoryview(extra), words.size, 1 << 20))


def test_an_encoder_pipeline_over_the_intermediate_cap_is_refused():
    a = {"a": np.arange(60, dtype=np.int8)}
    assert intermediate_bound(60) == 184
    with pytest.raises(ConfigError, match="over the 184"):
        nncodec.encode(a, pipeline=[{"id": "rans", "word_size": 1, "signed": True}, {"id": "zstd"}])
    data = nncodec.encode({"a": np.arange(6000, dtype=np.int16) % 60}, pipeline=[
        {"id": "rans", "word_size": 2, "signed": True}, {"id": "zstd"}])  # big enough: the table fits the cap
    assert nncodec.decode_arrays(data)["a"][-1] == 5999 % 60


def test_limit_errors_are_not_format_errors_and_carry_their_place():
    data = (VECTORS / "v1.0/invalid/intermediate_over_cap.nnc").read_bytes()
    with pytest.raises(LimitExceededError) as info:
        nncodec.decode_arrays(data)
    assert not isinstance(info.value, FormatError) and isinstance(info.value, ValueError)
    assert info.value.unit_index == 1 and info.value.offset == 44
    roomy = nncodec.Limits(max_name_bytes=5000)
    named = (VECTORS / "v1.0/invalid/name_over_limit.nnc").read_bytes()
    assert list(nncodec.decode_arrays(named, limits=roomy)) == ["n" * 4097]  # well formed, only over the limit


def test_po2_exponents_outside_float32_are_corrupt_not_inf_or_zero():
    from nncodec.bitstream.descriptor import QuantDescriptor, dequantize_into
    from nncodec.dtypes import dtype_by_name

    f32, i8 = dtype_by_name("float32"), dtype_by_name("int8")
    out = np.empty(2, np.float32)
    edge = QuantDescriptor(scheme=5, code_dtype=i8, bits=8, exp_min=-150, scales=np.ones(1, np.float32))
    dequantize_into(np.array([0, 2], np.int8), edge, out, f32)  # |2| - 1 - 150 = -149: the smallest subnormal
    assert out[0] == 0 and out[1] == np.float32(2.0 ** -149)
    with pytest.raises(CorruptError):
        dequantize_into(np.array([1], np.int8), edge, out[:1], f32)  # -150
    scaled = QuantDescriptor(scheme=1, code_dtype=i8, bits=8, po2_scale=True, scales=np.array([128], np.int16))
    with pytest.raises(CorruptError):
        dequantize_into(np.array([1], np.int8), scaled, out[:1], f32)

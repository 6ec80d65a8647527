"""Stage 8 (acode, format 1.6, FORMAT.md §16): round trips, compiled == portable, every error rule, the encoder."""

import numpy as np
import pytest

import nncodec
from nncodec.coding import acode_portable as portable
from nncodec.coding import kernels
from nncodec.coding.acode_stage import SEGMENT_TYPES, Acode, Segment, acode_compiled, segment_table
from nncodec.coding.pipeline import Pipeline
from nncodec.errors import ConfigError, CorruptError, LimitExceededError
from nncodec.limits import Limits

I8, U8, I16, U16, TREE, BYPASS = (SEGMENT_TYPES[k] for k in ("int8", "uint8", "int16", "uint16", "tree", "bypass"))
_DT = {I8: "<i1", U8: "<u1", I16: "<i2", U16: "<u2", TREE: "<u1", BYPASS: "<u1"}
_RANGE = {I8: (-128, 127), U8: (0, 255), I16: (-32768, 32767), U16: (0, 65535), TREE: (0, 255), BYPASS: (0, 255)}


@pytest.fixture
def portable_kernels(monkeypatch):
    """The portable coder, as on an install built without a C compiler."""
    monkeypatch.setenv("NNCODEC_KERNELS", "portable")
    kernels.native_kernels.cache_clear()
    assert not acode_compiled()
    yield
    monkeypatch.delenv("NNCODEC_KERNELS")
    kernels.native_kernels.cache_clear()


def _random_segments(rng, n_segments: int, max_count: int = 80):
    segments, parts = [], []
    for _ in range(n_segments):
        kind = int(rng.integers(0, 6))
        count = int(rng.integers(0, max_count))
        lo, hi = _RANGE[kind]
        offset = int(rng.integers(-20, 21)) if kind < 4 else 0
        scale = float(rng.choice([0.5, 3, 40, 3000]))
        v = np.round(rng.laplace(0, scale, count)) * (rng.random(count) < 0.6) + offset
        parts.append(np.clip(v, lo, hi).astype(_DT[kind]).tobytes())
        segments.append(Segment(kind, int(rng.integers(0, 16)), offset, count))
    return segments, b"".join(parts)


def _roundtrip(stage: Acode, data: bytes) -> bytes:
    coded = stage.encode(memoryview(data))
    out = np.empty(len(data), np.uint8)
    Acode.from_params(stage.params()).decode_into(memoryview(coded), out)
    assert out.tobytes() == data
    return coded


@pytest.mark.parametrize("seed", range(6))
def test_random_segments_round_trip(seed):
    rng = np.random.default_rng(seed)
    for _ in range(20):
        segments, data = _random_segments(rng, int(rng.integers(1, 7)))
        _roundtrip(Acode(int(rng.integers(3, 8)), int(rng.integers(0, 16)), segments), data)


@pytest.mark.parametrize("case", ["zeros", "max", "min", "one", "empty_segments", "no_words", "alternating"])
def test_adversarial_inputs_round_trip(case):
    if case == "zeros":
        segs, data = [Segment(I8, 0, 0, 5000)], bytes(5000)
    elif case == "max":  # the largest magnitudes, through offsets at both ends
        w = np.array([32767, -32768] * 50, np.int16)
        segs, data = [Segment(I16, 1, -65535, 100), Segment(I16, 2, 65535, 100)], w.tobytes() * 2
    elif case == "min":
        segs, data = [Segment(U16, 3, 65535, 64)], np.zeros(64, np.uint16).tobytes()
    elif case == "one":
        segs, data = [Segment(I8, 0, 0, 1)], b"\x80"
    elif case == "empty_segments":
        segs, data = [Segment(I8, 0, 0, 0), Segment(TREE, 15, 0, 3), Segment(I16, 0, 0, 0)], b"abc"
    elif case == "no_words":
        segs, data = [Segment(I8, 0, 0, 0)], b""
    else:
        segs, data = [Segment(I8, 0, 0, 4096)], np.array([127, -128] * 2048, np.int8).tobytes()
    for k in (0, 1, 15):
        coded = _roundtrip(Acode(4, k, segs), data)
        if case == "no_words":
            assert coded == segment_table(segs)  # no coder bytes at all


@pytest.mark.skipif(not acode_compiled(), reason="the C extension is not built")
@pytest.mark.parametrize("seed", range(4))
def test_compiled_and_portable_coders_agree_on_bytes_and_errors(seed):
    from nncodec.coding import _rans_native as native

    rng = np.random.default_rng(100 + seed)
    for trial in range(25):
        segments, data = _random_segments(rng, int(rng.integers(1, 5)), 60)
        rows = np.array(segments, np.int64).reshape(-1, 4)
        shift, k = int(rng.integers(3, 8)), int(rng.integers(0, 16))
        words = np.frombuffer(data, np.uint8)
        cap = np.empty(80 * len(data) + 64, np.uint8)
        n = native.acode_encode(words, rows, shift, k, cap)
        coded = portable.encode(words, rows, shift, k)
        assert coded == cap[:n].tobytes()
        variants = [coded, coded[:-1], coded + b"\0"]
        if len(coded) > 5:
            bad = bytearray(coded)
            bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
            variants.append(bytes(bad))
        for i, v in enumerate(variants):
            a, b = np.empty(len(data), np.uint8), np.empty(len(data), np.uint8)
            info = np.zeros(2, np.int64)
            status = native.acode_decode(v, rows, shift, k, a, info)
            assert (status, int(info[0]), int(info[1])) == portable.decode(v, rows, shift, k, b)
            if i == 0:  # the unmodified encoding must decode, not merely fail the same way in both
                assert status == portable.OK
            if status == portable.OK:
                assert a.tobytes() == b.tobytes() == data


@pytest.mark.parametrize("kernel", ["compiled", "portable"])
def test_shift_3_renormalises_twice_after_an_unlikely_bit(kernel, request):
    """At shift 3 a probability reaches 2041/2048, so the unlikely bit leaves range below 2^16: the decoder
    must normalise in a loop as the encoder does (FORMAT.md §16.3)."""
    if kernel == "portable":
        request.getfixturevalue("portable_kernels")
    elif not acode_compiled():
        pytest.skip("the C extension is not built")
    data = np.array([1] * 60 + [0] + [1] * 5, np.int8).tobytes()
    _roundtrip(Acode(3, 0, [Segment(I8, 0, 0, len(data))]), data)


@pytest.mark.parametrize("kernel", ["compiled", "portable"])
@pytest.mark.parametrize("shift", range(3, 8))
def test_skewed_data_round_trips_at_every_shift(kernel, shift, request):
    if kernel == "portable":
        request.getfixturevalue("portable_kernels")
    elif not acode_compiled():
        pytest.skip("the C extension is not built")
    rng = np.random.default_rng(shift)
    for trial in range(6):
        n = 400 if kernel == "portable" else 3000
        # long runs of one value with rare exceptions drive probabilities to their extremes
        w = np.where(rng.random(n) < 0.01 * trial, rng.integers(-3, 4, n), trial % 3)
        segs = [Segment(I8, 0, 0, n), Segment(TREE, 1, 0, n), Segment(I16, 2, 1, n)]
        data = w.astype(np.int8).tobytes() + w.astype(np.uint8).tobytes() + w.astype(np.int16).tobytes()
        _roundtrip(Acode(shift, int(rng.integers(0, 16)), segs), data)


def test_portable_stage_writes_the_compiled_bytes(portable_kernels):
    rng = np.random.default_rng(7)
    segments, data = _random_segments(rng, 4)
    coded = _roundtrip(Acode(5, 15, segments), data)
    kernels.native_kernels.cache_clear()
    import os
    del os.environ["NNCODEC_KERNELS"]
    try:
        if not acode_compiled():
            pytest.skip("the C extension is not built")
        assert Acode(5, 15, segments).encode(memoryview(data)) == coded
    finally:
        os.environ["NNCODEC_KERNELS"] = "portable"


def _decode(params: bytes, coded: bytes, size: int) -> np.ndarray:
    out = np.empty(size, np.uint8)
    Acode.from_params(params).decode_into(memoryview(coded), out)
    return out


_W = np.array([0, 1, -2, 0, 0, 3, -1, 20, 0, 0], np.int8)
_SEGS = [Segment(I8, 0, 0, 10)]


def _coded(k: int = 15) -> bytes:
    return Acode(4, k, _SEGS).encode(memoryview(_W.tobytes()))


@pytest.mark.parametrize("params", [b"\x04", b"\x04\x0f\x00", b"\x02\x0f", b"\x08\x0f", b"\x04\x10"])
def test_bad_params_are_corrupt(params):
    with pytest.raises(CorruptError, match="acode params"):
        Acode.from_params(params)


def _table(*rows: bytes) -> bytes:
    return bytes([len(rows)]) + b"".join(rows)


@pytest.mark.parametrize("case,match", [
    ("run_out", "run out"), ("first_byte", "first coded byte"), ("tail", "do not end"),
    ("range", "outside its word type"), ("prefix", "Exp-Golomb prefix"), ("sum_short", "declare 9 bytes"),
    ("sum_long", "over the 10 bytes"), ("type", "unknown type"), ("offset", "beyond"), ("varint", "minimally"),
    ("segments_claim", "segments in"), ("raw_offset", "declares an offset"), ("table_cut", "ends inside"), ("code_not_zero", "do not end")])
def test_every_error_rule_is_a_corrupt_error_naming_the_stage(case, match):
    coded = _coded()
    table, body = coded[:3], coded[3:]
    assert table == _table(bytes([I8, 10]))  # one int8 segment, set 0, no offset, 10 words
    size, params = 10, b"\x04\x0f"
    if case == "run_out":
        data = coded[:-1]
    elif case == "first_byte":
        data = table + b"\x01" + body[1:]
    elif case == "tail":
        data = coded + b"\x00"
    elif case == "code_not_zero":
        data = coded[:-1] + bytes([coded[-1] ^ 1])
    elif case == "range":  # word 7 is 20: offset 120 makes it 140, over int8
        data = _table(bytes([I8 | 8, 240, 1, 10])) + body
    elif case == "prefix":  # K = 0 and a run of one bits in bypass
        # significance 1 (set 0's context 0), sign 0 (context 3), then K = 0: a prefix of 19 one bits
        # (prefix bit i: context 21 + i)
        data = _table(bytes([I8, 1])) + portable.range_code(
            [(0, 1), (3, 0)] + [(21 + i, 1) for i in range(19)] + [(-1, 0)] * 8, 4)
        size, params = 1, b"\x04\x00"
    elif case == "sum_short":
        data = _table(bytes([I8, 9])) + body
    elif case == "sum_long":
        data = _table(bytes([I8, 11])) + body
    elif case == "type":
        data = _table(bytes([6, 10])) + body
    elif case == "offset":
        data = _table(bytes([I8 | 8, 0x80, 0x80, 0x10, 10])) + body  # zig-zag 262144: offset 131072
    elif case == "varint":
        data = _table(bytes([I8, 0x8A, 0x00])) + body
    elif case == "raw_offset":
        data = _table(bytes([TREE | 8, 2, 10])) + body
    elif case == "segments_claim":
        data = bytes([0xFF, 0x7F]) + coded[1:]
    else:
        data = bytes([2, I8, 5, TREE, 0x85])  # the last count continues past the end
    with pytest.raises(CorruptError, match=match) as info:
        _decode(params, data, size)
    assert "acode" in str(info.value)


def test_the_adaptive_words_limit_is_checked_before_decoding():
    coded = Acode(4, 15, [Segment(I8, 0, 0, 5000)]).encode(memoryview(bytes(5000)))
    out = np.full(5000, 0xAA, np.uint8)
    with pytest.raises(LimitExceededError, match="max_adaptive_words"):
        Pipeline((Acode(4, 15),)).decode_into(memoryview(coded), out, Limits(max_adaptive_words=4999))
    assert (out == 0xAA).all()  # refused before a word was decoded
    Pipeline((Acode(4, 15),)).decode_into(memoryview(coded), out, Limits(max_adaptive_words=5000))
    assert not out.any()


def test_encoder_side_errors_are_config_errors():
    with pytest.raises(ConfigError):
        Acode(2)
    with pytest.raises(ConfigError):
        Acode(4, 16)
    with pytest.raises(ConfigError, match="hold 3 bytes"):
        Acode(4, 15, [Segment(I8, 0, 0, 3)]).encode(memoryview(b"ab"))
    with pytest.raises(ConfigError, match="offset"):
        Acode(4, 15, [Segment(TREE, 0, 1, 3)])
    with pytest.raises(ConfigError, match="offset"):
        Acode(4, 15, [Segment(I8, 0, 70000, 3)])


@pytest.mark.parametrize("config, match", [
    ({"shift": True}, "shift must be an integer"),
    ({"shift": 4.0}, "shift must be an integer"),
    ({"shift": "4"}, "shift must be an integer"),
    ({"k": True}, "k must be"),
    ({"k": 8.0}, "k must be"),
    ({"segments": [[0, 0, 0, 16]]}, r"unknown key\(s\) \['segments'\]"),
    ({"default": "int16"}, r"unknown key\(s\) \['default'\]"),
])
def test_a_bad_stage_config_is_refused(config, match):
    from nncodec.coding import stage_from_config

    with pytest.raises(ConfigError, match=match):
        stage_from_config({"id": "acode", **config})


def test_a_stage_config_builds_the_stage():
    from nncodec.coding import stage_from_config

    st = stage_from_config({"id": "acode", "shift": np.int64(5), "k": 3})
    assert (st.shift, st.k) == (5, 3) and st.get_config() == {"id": "acode", "shift": 5, "k": 3}
    assert stage_from_config(st.get_config()) == st


def test_shared_sets_learn_together():
    """Two segments of the same distribution code smaller in one context set than in two."""
    rng = np.random.default_rng(3)
    w = (np.round(rng.laplace(0, 2, 2000)) * (rng.random(2000) < 0.3)).astype(np.int8).tobytes()
    shared = Acode(4, 15, [Segment(I8, 0, 0, 1000), Segment(I8, 0, 0, 1000)]).encode(memoryview(w))
    apart = Acode(4, 15, [Segment(I8, 0, 0, 1000), Segment(I8, 1, 0, 1000)]).encode(memoryview(w))
    assert len(shared) < len(apart)


def test_an_offset_centres_codes():
    w = (16 + np.round(np.random.default_rng(4).laplace(0, 1, 500))).astype(np.int8).tobytes()
    centred = Acode(4, 15, [Segment(I8, 0, 16, 500)]).encode(memoryview(w))
    plain = Acode(4, 15, [Segment(I8, 0, 0, 500)]).encode(memoryview(w))
    assert len(centred) < 0.85 * len(plain)


@pytest.fixture(scope="module")
def small_cnn() -> dict:
    """A half-width MobileNetV2Small with 4-bit kernels, 6-bit folded batch norms, 75 % pruned."""
    import torch

    from nncodec.models import MobileNetV2Small
    from nncodec.prune.unstructured import apply_masks, magnitude_masks
    from nncodec.quant.layers import quantize_model
    from nncodec.torch_io import tensors_from

    torch.manual_seed(0)
    model = MobileNetV2Small(1, 10, 8).train()
    with torch.no_grad():
        model(torch.randn(4, 1, 16, 16) * 2 + 1)
    norm = {"kernel": "quantized_bits(6,0,1,alpha='auto')", "bias": "quantized_bits(6,0,1,alpha='auto')"}
    q = quantize_model(model.eval(), {"layers": {"*.1": norm}, "default": {"kernel": "quantized_bits(4,-1,1)"}})
    apply_masks(q, magnitude_masks(q, 0.75))
    return tensors_from(q)


def test_the_encoder_picks_stage_8_for_a_small_pruned_cnn_and_decodes_the_same_tensors(small_cnn):
    from nncodec.encoder import Encoder
    from tests.benchmarks.bench_small_streams import encoder_without_acode, same_values

    with encoder_without_acode():
        before, _ = Encoder().encode(small_cnn)
    after, _ = Encoder().encode(small_cnn)
    assert len(after) < len(before)
    assert int.from_bytes(after[10:12], "little") == 6 and int.from_bytes(before[10:12], "little") < 6
    assert (8,) in _group_data_stages(after) and 8 not in sum(_group_data_stages(before), ())
    assert same_values(before, after)


@pytest.mark.parametrize("case", ["dense_unit", "sparse_unit", "dense_groups"])
def test_stage_8_changes_bytes_and_version_only_where_it_is_chosen(case):
    """Where stage 8 is not chosen (dense 4-bit codes in a unit over the group bounds, dense 8-bit codes in
    groups, where it is larger than rANS) the stream keeps the bytes and version of the encoder without it;
    where it is (a unit of pruned codes whose non-zero words come in bursts) the unit is stage 8 alone,
    smaller, version 1.6, and decodes to the same values."""
    from nncodec.encoder import Encoder, numpy_tensors
    from tests.benchmarks.bench_small_streams import encoder_without_acode

    rng = np.random.default_rng(0)
    bits = {"dense_unit": 4, "sparse_unit": 3, "dense_groups": 8}[case]
    if case == "dense_unit":
        arrays = {"w": rng.standard_normal((300, 300)).astype(np.float32)}  # over group bounds
    elif case == "sparse_unit":
        burst = np.cumsum(rng.random(90000) > 0.9) % 2 == 1  # runs of about 10 words, alternately zero
        w = rng.choice([-3, -2, -1, 1, 2, 3], 90000) * burst
        arrays = {"w": w.astype(np.float32).reshape(300, 300)}
    else:
        arrays = {f"l{i}.w": rng.standard_normal((64, 32)).astype(np.float32) for i in range(4)}
        arrays.update({f"l{i}.b": rng.standard_normal(64).astype(np.float32) for i in range(4)})
    with encoder_without_acode():
        plain, _ = Encoder(bits=bits).encode(numpy_tensors(arrays))
    again, report = Encoder(bits=bits).encode(numpy_tensors(arrays))
    if case == "sparse_unit":
        assert report.tensors[0].pipeline == ["acode"] and len(again) < 0.9 * len(plain)
        assert int.from_bytes(again[10:12], "little") == 6
        assert np.array_equal(nncodec.decode_arrays(again)["w"], nncodec.decode_arrays(plain)["w"])
    else:
        assert again == plain and int.from_bytes(again[10:12], "little") < 6
        assert bool(_group_data_stages(again)) == (case == "dense_groups")


def _group_data_stages(data: bytes) -> list:
    """The stage ids of each tensor group's data pipeline."""
    import io

    from nncodec.bitstream.constants import UNIT_TENSOR_GROUP
    from nncodec.bitstream.reader import UnitReader
    from nncodec.group import open_group

    found = []
    for off, uh, payload in UnitReader(io.BytesIO(data), Limits()):
        if uh.unit_type == UNIT_TENSOR_GROUP:
            group = open_group(payload, off + 16, Limits())
            found.append(tuple(e.stage_id for e in group.unit.data_pipeline))
    return found


def test_a_small_quantized_tensor_unit_takes_stage_8_and_a_scalable_base_decodes_at_every_point():
    """A kernel over the group bounds whose non-zero codes come in bursts (what the significance context sees,
    and neither rANS nor zstd): stage 8 codes it at least 10 % smaller, the encoder writes it (format 1.6), and
    every operating point of a scalable stream decodes as a separate encode of it."""
    from nncodec.encoder import Encoder, encode_arrays, numpy_tensors
    from nncodec.scalable import encode_scalable

    rng = np.random.default_rng(5)
    burst = np.cumsum(rng.random(120000) > 0.9) % 2 == 1  # runs of about 10 words, alternately zero
    w = (rng.choice([-3, -2, -1, 1, 2, 3], 120000) * burst).astype(np.float32).reshape(300, 400)
    with pytest.MonkeyPatch.context() as mp:
        import nncodec.encoder as enc

        mp.setattr(enc, "_acode_unit", lambda *args: None)
        plain, _ = Encoder(bits=3).encode(numpy_tensors({"w": w}))
    data, report = Encoder(bits=3).encode(numpy_tensors({"w": w}))
    assert len(data) < 0.9 * len(plain)
    assert report.tensors[0].pipeline == ["acode"] and data[10:12] == b"\x06\x00"
    assert np.array_equal(nncodec.decode_arrays(data)["w"], w)
    tensors = {"w": w, "b": rng.standard_normal(300).astype(np.float32)}
    points = [{"bits": 3}, {"bits": 5}]
    scalable, _ = encode_scalable(tensors, points)
    for k, point in enumerate(points):
        got = nncodec.decode_arrays(scalable, operating_point=k)
        want = nncodec.decode_arrays(encode_arrays(tensors, bits=point["bits"]))
        assert all(np.array_equal(got[n], want[n]) for n in want)


def test_the_version_counts_only_the_stages_written(small_cnn):
    """Grouped tensors' own unit pipelines are not written: stage 8 in them (forced here) does not make the
    stream 1.6 when the groups do not use it."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_ACODE_UNIT_MARGIN", 100.0)  # every small unit would take stage 8
        mp.setattr(enc, "_acode_smallest", lambda *args: None)  # the groups do not
        data, report = Encoder().encode(small_cnn)
    assert sorted(report.grouped) == sorted(small_cnn)
    assert int.from_bytes(data[10:12], "little") == 4


def test_a_grid_aligned_delta_with_stage_8_decodes_to_the_full_encode():
    """Small quantized differences code smaller with stage 8; the delta (now format 1.6) still rebuilds
    exactly the full encode's values."""
    from tests.unit.test_delta import split_base_reference
    from tests.benchmarks.bench_small_streams import encoder_without_acode

    rng = np.random.default_rng(21)
    base = {"conv.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.05).astype(np.float32),
            "fc.bias": (rng.standard_normal(10) * 0.1).astype(np.float32)}
    tuned = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 5e-4 for k, v in base.items()}
    delta = nncodec.encode(tuned, base=base, rel_step=0.05)
    with encoder_without_acode():
        plain = nncodec.encode(tuned, base=base, rel_step=0.05)
    assert len(delta) < len(plain) and delta[8:12] == b"\x01\x00\x06\x00"
    assert split_base_reference(delta)[0].grid_aligned
    got, want = nncodec.decode_arrays(delta, base=base), nncodec.decode_arrays(nncodec.encode(tuned, rel_step=0.05))
    assert all(np.array_equal(got[k], want[k]) for k in tuned)


def test_a_fixed_acode_pipeline_over_the_adaptive_words_limit_is_refused_at_encode_time():
    from nncodec.encoder import encode_arrays

    w = np.random.default_rng(3).standard_normal((40, 50)).astype(np.float32)  # 2000 int8 codes
    with pytest.raises(LimitExceededError, match="'w'.*max_adaptive_words=1000"):
        encode_arrays({"w": w}, bits=8, pipeline=[{"id": "acode"}], limits=Limits(max_adaptive_words=1000))
    data = encode_arrays({"w": w}, bits=8, pipeline=[{"id": "acode"}], limits=Limits(max_adaptive_words=2000))
    assert nncodec.decode_arrays(data, limits=Limits(max_adaptive_words=2000))["w"].shape == (40, 50)


@pytest.mark.parametrize("grouped", [False, True])
def test_the_automatic_choice_respects_the_adaptive_words_limit(grouped):
    """Codes stage 8 wins on (bursts of non-zero words) are coded otherwise when they hold more words than
    ``max_adaptive_words``: the stream decodes with the limits it was encoded for."""
    from nncodec.encoder import encode_arrays

    rng = np.random.default_rng(5)
    n = 3000 if grouped else 120000
    burst = np.cumsum(rng.random(n) > 0.9) % 2 == 1
    w = (rng.choice([-3, -2, -1, 1, 2, 3], n) * burst).astype(np.float32).reshape(-1, 100)
    opts = dict(bits=3, group_tensors=grouped)
    free = encode_arrays({"w": w, "b": np.ones(10, np.float32)}, **opts)
    assert int.from_bytes(free[10:12], "little") == 6  # stage 8 is chosen without the limit
    tight = Limits(max_adaptive_words=n - 1)
    data = encode_arrays({"w": w, "b": np.ones(10, np.float32)}, limits=tight, **opts)
    assert int.from_bytes(data[10:12], "little") < 6
    assert np.array_equal(nncodec.decode_arrays(data, limits=tight)["w"], nncodec.decode_arrays(free)["w"])


def test_adaptive_coding_false_writes_what_the_encoder_without_stage_8_writes(small_cnn):
    from nncodec.encoder import Encoder, encode_arrays
    from tests.benchmarks.bench_small_streams import encoder_without_acode

    with encoder_without_acode():
        before, _ = Encoder().encode(small_cnn)
    off, _ = Encoder(adaptive_coding=False).encode(small_cnn)
    assert off == before and int.from_bytes(off[10:12], "little") < 6
    rng = np.random.default_rng(5)  # a unit stage 8 codes > 10 % smaller
    burst = np.cumsum(rng.random(120000) > 0.9) % 2 == 1
    w = (rng.choice([-3, -2, -1, 1, 2, 3], 120000) * burst).astype(np.float32).reshape(300, 400)
    assert int.from_bytes(encode_arrays({"w": w}, bits=3)[10:12], "little") == 6
    assert int.from_bytes(encode_arrays({"w": w}, bits=3, adaptive_coding=False)[10:12], "little") < 6


@pytest.mark.parametrize("options, match", [
    ({"adaptive_coding": False, "pipeline": [{"id": "acode"}]}, "acode while adaptive_coding=False"),
    ({"adaptive_coding": False, "pipeline": [{"id": "zero_words", "word_size": 1}, {"id": "acode"}]}, "acode"),
    ({"adaptive_coding": 1}, "adaptive_coding must be True or False"),
    ({"adaptive_coding": None}, "adaptive_coding must be True or False"),
])
def test_adaptive_coding_option_errors(options, match):
    from nncodec.encoder import encode_arrays

    with pytest.raises(ConfigError, match=match):
        encode_arrays({"w": np.ones((4, 4), np.float32)}, bits=8, **options)


def test_stage_8_is_not_kept_in_groups_for_a_gain_under_the_margin():
    """Dense Gaussian 4-bit codes: stage 8 codes a group a few bytes smaller (0.2 % of the stream), too
    little to make the stream need a 1.6 decoder; the stream is the one written without stage 8."""
    import nncodec.encoder as enc
    from nncodec.encoder import encode_arrays

    rng = np.random.default_rng(0)
    arrays = {f"l{i}.w": rng.standard_normal((64, 32)).astype(np.float32) for i in range(4)}
    arrays.update({f"l{i}.b": rng.standard_normal(64).astype(np.float32) for i in range(4)})
    chosen = encode_arrays(arrays, bits=4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_ACODE_GROUP_MARGIN", 1.0)
        mp.setattr(enc, "_ACODE_MIN_GAIN", 0)
        any_gain = encode_arrays(arrays, bits=4)
    assert len(any_gain) < len(chosen) and int.from_bytes(any_gain[10:12], "little") == 6  # stage 8 was smaller
    assert len(any_gain) > enc._ACODE_GROUP_MARGIN * len(chosen)
    assert chosen == encode_arrays(arrays, bits=4, adaptive_coding=False)
    assert int.from_bytes(chosen[10:12], "little") < 6


def test_stage_8_is_tried_on_a_unit_only_once_it_is_known_not_to_be_in_a_group(tmp_path):
    """Tensors small enough for a group are tried with stage 8 as units only when the layout leaves them in
    units of their own (then in memory and to a file alike)."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder, numpy_tensors

    rng = np.random.default_rng(5)
    burst = np.cumsum(rng.random(20000) > 0.9) % 2 == 1
    w = (rng.choice([-3, -2, -1, 1, 2, 3], 20000) * burst).astype(np.float32).reshape(200, 100)
    tensors = numpy_tensors({"w": w, "b": np.linspace(-1, 1, 100, dtype=np.float32)})
    calls = []
    real = enc._acode_unit
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_acode_unit", lambda *args: calls.append(1) or real(*args))
        mp.setattr(enc, "_ACODE_EAGER_UNITS", 1)  # two kept tensors are "many" here
        grouped, report = Encoder(bits=3).encode(tensors)
        assert report.grouped == ["b", "w"] and not calls
        mp.setattr(enc, "_split_groups", lambda *args, **kwargs: [])  # no group candidate: units only
        alone, report = Encoder(bits=3).encode(tensors)
        assert len(calls) == 2 and report.grouped == []
        assert next(t for t in report.tensors if t.name == "w").pipeline == ["acode"]
        path = Encoder(bits=3).encode(tensors, tmp_path / "s.nnc")[0]
    assert int.from_bytes(alone[10:12], "little") == 6 and path.read_bytes() == alone
    got = nncodec.decode_arrays(alone)
    assert all(np.array_equal(got[n], nncodec.decode_arrays(grouped)[n]) for n in ("w", "b"))


def _pruned(rng, size, density):
    w = rng.standard_normal(size).astype(np.float32)
    w[rng.random(size) > density] = 0
    return w


def _minor(stream: bytes) -> int:
    return int.from_bytes(stream[10:12], "little")


def test_stage_8_groups_need_no_margin_in_a_stream_that_needs_1_6_anyway():
    """A large tensor unit coded by stage 8 makes the stream 1.6 anyway: groups that stage 8 codes smaller are
    then kept even for a gain under the stream-level margin."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder

    rng = np.random.default_rng(0)
    arrays = {"big.w": _pruned(rng, 70000, 0.05)}
    for i in range(4):
        arrays[f"n{i}.b"] = rng.standard_normal(64).astype(np.float32)
        arrays[f"n{i}.w"] = _pruned(rng, 300, 0.3)
    chosen, report = Encoder(bits=4).encode(arrays)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_acode_smallest", lambda *args, **kwargs: None)  # no stage 8 on the groups' data
        plain_groups = Encoder(bits=4).encode(arrays)[0]
    assert next(t for t in report.tensors if t.name == "big.w").pipeline == ["acode"] and report.grouped
    assert _minor(chosen) == _minor(plain_groups) == 6
    assert enc._ACODE_GROUP_MARGIN * len(plain_groups) < len(chosen) < len(plain_groups)  # a gain under the margin


@pytest.mark.parametrize("seed, size, density", [(0, 1000, 0.05), (1, 3000, 0.1)])
def test_a_single_small_tensor_weighs_its_stage_8_unit_against_the_group(seed, size, density, tmp_path):
    """With few tensors kept for a group, the layout compares the group with their units coded by stage 8: a
    single pruned tensor is written as the smaller of the two."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder

    arrays = {"l0.weight": _pruned(np.random.default_rng(seed), size, density)}
    chosen, report = Encoder(bits=4).encode(arrays)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_split_groups", lambda *args, **kwargs: [])  # no group candidate: units only
        alone = Encoder(bits=4).encode(arrays)[0]
    grouped = Encoder(bits=4, adaptive_coding=False).encode(arrays)[0]
    assert len(chosen) == min(len(alone), len(grouped)) and len(alone) < len(grouped)
    assert report.tensors[0].pipeline == ["acode"] and report.grouped == []
    assert Encoder(bits=4).encode(arrays, tmp_path / "s.nnc")[0].read_bytes() == chosen
    assert np.array_equal(nncodec.decode_arrays(chosen)["l0.weight"], nncodec.decode_arrays(grouped)["l0.weight"])


def test_stage_8_on_a_unit_after_the_layout_is_undone_when_the_stream_grows():
    """Units re-coded by stage 8 after the layout: the unit headers (the pipeline written, the shared default
    recomputed) count, not only the payloads; a stream is never larger with stage 8 allowed."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder

    rng = np.random.default_rng(6)
    n, size = int(rng.integers(2, 8)), int(rng.choice([16, 40, 64, 128, 300]))
    density = float(rng.choice([0.05, 0.1, 0.3]))
    assert (n, size, density) == (4, 64, 0.1)  # four pruned tensors of 64 elements
    arrays = {f"t{i}": _pruned(rng, size, density) for i in range(n)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_split_groups", lambda *args, **kwargs: [])  # no group candidate: units only
        with_8 = Encoder(bits=4).encode(arrays)[0]
        without = Encoder(bits=4, adaptive_coding=False).encode(arrays)[0]
        assert len(with_8) <= len(without)
        mp.setattr(enc, "_ACODE_MIN_GAIN", 0)  # no stream-level margins: the cost check alone
        mp.setattr(enc, "_ACODE_GROUP_MARGIN", 1.0)
        any_gain = Encoder(bits=4).encode(arrays)[0]
    assert len(any_gain) <= len(without)


def test_a_gain_of_a_few_bytes_does_not_make_a_stream_1_6():
    """Stage 8 codes the group of two tiny tensors 3 bytes smaller: under _ACODE_MIN_GAIN, the stream is the one
    written without stage 8 (format 1.4)."""
    import nncodec.encoder as enc
    from nncodec.encoder import Encoder

    rng = np.random.default_rng(2)
    arrays = {f"l{i}.weight": _pruned(rng, 20, 0.3) for i in range(2)}
    chosen = Encoder(bits=4).encode(arrays)[0]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(enc, "_ACODE_MIN_GAIN", 0)
        any_gain = Encoder(bits=4).encode(arrays)[0]
    assert chosen == Encoder(bits=4, adaptive_coding=False).encode(arrays)[0] and _minor(chosen) < 6
    assert _minor(any_gain) == 6 and len(chosen) - enc._ACODE_MIN_GAIN < len(any_gain) < len(chosen)

"""Small pruned, quantized models: tensor groups split by kind, codes narrowed, mid-size kernels grouped."""

import hashlib
import math

import numpy as np
import pytest
import torch

import nncodec
import nncodec.encoder as encoder_module
from nncodec.bitstream.descriptor import CodedTensor, QuantDescriptor, dequantize_into
from nncodec.bitstream.units import TensorHeader
from nncodec.conformance import group_vectors
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.dtypes import dtype_by_name
from nncodec.encoder import Encoder
from nncodec.limits import Limits
from nncodec.models import MobileNetV2Small
from nncodec.prune.unstructured import apply_masks, magnitude_masks
from nncodec.quant.layers import quantize_model
from nncodec.torch_io import tensors_from
from tests.benchmarks.bench_small_streams import encoder_before, encoder_without_acode, same_values, stored_codes

NORM = {"kernel": "quantized_bits(6,0,1,alpha='auto')", "bias": "quantized_bits(6,0,1,alpha='auto')"}
PLAN = {"layers": {"*.depthwise.0": {"kernel": "quantized_po2_zero(4,1)"}, "*.1": NORM,
                   "fc": {"kernel": "quantized_po2_zero(4,1)", "bias": "quantized_bits(8,-2,1)"}},
        "default": {"kernel": "quantized_bits(4,-1,1)"}}


@pytest.fixture(scope="module")
def pruned_4bit() -> dict:
    """A half-width MobileNetV2Small: 4-bit kernels (po2 ones in int16 code words), 6-bit folded batch
    norms, 75 % of each layer's weights pruned."""
    torch.manual_seed(0)
    model = MobileNetV2Small(1, 10, 8).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, 16, 16) * 2 + 1)
    q = quantize_model(model.eval(), PLAN).eval()
    apply_masks(q, magnitude_masks(q, 0.75))
    return tensors_from(q)


def test_small_pruned_model_codes_smaller_than_one_group_and_decodes_bit_exactly(pruned_4bit, tmp_path):
    assert any(isinstance(v, CodedTensor) and v.codes.dtype == np.int16 for v in pruned_4bit.values())
    with encoder_before():
        before, _ = Encoder().encode(pruned_4bit)
    after, report = Encoder().encode(pruned_4bit)
    assert len(after) < 0.95 * len(before)
    groups = [u for u in nncodec.read_info(after).units if u.type == "tensor_group"]
    assert groups and sorted(m["name"] for u in groups for m in u.members) == report.grouped
    assert same_values(before, after)
    got = nncodec.decode_arrays(after)
    for name, value in pruned_4bit.items():  # the very values, whatever word type the codes were stored in
        if isinstance(value, CodedTensor):
            want = np.empty(value.codes.shape, value.dtype.storage)
            dequantize_into(value.codes, value.quant, want, value.dtype)
        else:
            want = value[0]
        assert got[name].dtype == want.dtype and np.array_equal(got[name], want), name
    assert report.total_bytes == len(after)
    path = tmp_path / "m.nnc"
    assert Encoder().encode(pruned_4bit, path)[0].read_bytes() == after  # streamed to a file: the same bytes
    with nncodec.open(path) as f:  # lazy access reads each group when one of its members is asked for
        for name in reversed(sorted(got)):
            assert np.array_equal(f.get_array(name), got[name])


def test_codes_are_stored_in_the_narrowest_word_that_holds_them(pruned_4bit):
    data, _ = Encoder().encode(pruned_4bit)
    back = stored_codes(data)[0]
    po2 = [n for n, v in pruned_4bit.items() if isinstance(v, CodedTensor) and v.codes.dtype == np.int16]
    assert po2 and all(back[n].quant.code_dtype.name == "int8" for n in po2)
    wide = {"w": CodedTensor(np.array([[-300, 0], [5, 200]], np.int16), QuantDescriptor(
        scheme=1, code_dtype=dtype_by_name("int16"), bits=10, scales=np.ones(1, np.float32)),
        dtype_by_name("float32")), "b": np.zeros(3, np.float32)}
    kept = stored_codes(Encoder().encode(wide)[0])[0]["w"]
    assert kept.quant.code_dtype.name == "int16"  # -300 needs 16 bits: not narrowed
    assert np.array_equal(kept.codes, wide["w"].codes)


def test_a_stream_is_never_larger_than_with_the_one_group_encoder():
    rng = np.random.default_rng(3)
    cases = [
        {"a": rng.standard_normal(40).astype(np.float32), "b": np.arange(5, dtype=np.int64)},
        {f"k{i}": rng.integers(-7, 8, (16, 16)).astype(np.float32) for i in range(4)},
        {"w": rng.standard_normal((300, 300)).astype(np.float32), "v": rng.standard_normal(300).astype(np.float32)},
    ]
    for arrays in cases:
        for options in ({}, {"bits": 4}, {"rel_step": 0.5}):
            with encoder_before():
                before, _ = Encoder(**options).encode(nncodec.encoder.numpy_tensors(arrays))
            after, _ = Encoder(**options).encode(nncodec.encoder.numpy_tensors(arrays))
            assert len(after) <= len(before) and same_values(before, after)


def test_the_one_group_encoder_rebuilds_its_frozen_vector_and_writes_one_unnarrowed_group(pruned_4bit):
    """What backs ``encoder_before()`` as the encoder of format 1.4 before groups were split."""
    vector = "tensor_group_folded_bn"  # a vector that encoder wrote and the manifest froze
    want = {v.name: v.sha256 for v in load_manifest(default_vectors_dir())}[vector]
    seed = group_vectors._RNG.bit_generator.seed_seq
    with pytest.MonkeyPatch.context() as mp, encoder_before():
        mp.setattr(group_vectors, "_RNG", np.random.default_rng(seed))  # the generator's draws, from the first
        data, _ = group_vectors.VALID[vector][1]()
    assert hashlib.sha256(data).hexdigest() == want
    # that model is too small for split groups to win, so also: on one where they do, the one-group layout
    with encoder_before():
        data, _ = Encoder().encode(pruned_4bit)
    groups = [u for u in nncodec.read_info(data).units if u.type == "tensor_group"]
    shape = lambda v: v.codes.shape if isinstance(v, CodedTensor) else v[0].shape  # noqa: E731
    small = sorted(n for n, v in pruned_4bit.items() if math.prod(shape(v)) <= encoder_module._GROUP_SMALL)
    assert len(groups) == 1 and [m["name"] for m in groups[0].members] == small
    back = stored_codes(data)[0]
    assert all(back[n].quant.code_dtype == v.quant.code_dtype for n, v in pruned_4bit.items()
               if isinstance(v, CodedTensor))  # codes in the word type they came in (int16 po2 codes too)


def test_mid_size_tensors_are_grouped_only_up_to_the_byte_cap(monkeypatch):
    rng = np.random.default_rng(4)
    codes = {f"conv{i}": (rng.integers(-7, 8, (64, 64, 3)) * (rng.random((64, 64, 3)) < 0.1)).astype(np.float32)
             for i in range(3)}  # 12,288 elements each: over 4096
    data, report = Encoder(bits=4).encode(nncodec.encoder.numpy_tensors(codes))
    assert report.grouped == sorted(codes)
    monkeypatch.setattr(encoder_module, "_GROUP_SPLIT_BYTES", 20000)  # one tensor's words fit, two do not
    capped, report = Encoder(bits=4).encode(nncodec.encoder.numpy_tensors(codes))
    assert set(report.grouped) <= {"conv0"} and len(data) < len(capped)  # the first in name order, at most
    assert same_values(data, capped)


def test_code_clusters_join_alike_kernels_and_keep_different_ones_apart():
    rng = np.random.default_rng(5)
    sparse = lambda: (rng.integers(-7, 8, 2000) * (rng.random(2000) < 0.1)).astype(np.int8)  # noqa: E731
    dense = lambda: rng.integers(-7, 8, 2000).astype(np.int8)  # noqa: E731
    members = []
    for name, codes in (("a", sparse()), ("b", dense()), ("c", sparse()), ("d", dense())):
        desc = QuantDescriptor(scheme=1, code_dtype=dtype_by_name("int8"), bits=4, scales=np.ones(1, np.float32))
        header = TensorHeader(name, dtype_by_name("float32"), (40, 50), desc, ())
        members.append(encoder_module._Prepared(header, b"", encoder_module.Pipeline(), None, codes.tobytes()))
    clusters = encoder_module._code_clusters(members)
    assert clusters["a"] == clusters["c"] and clusters["b"] == clusters["d"] and clusters["a"] != clusters["b"]


def test_group_candidates_over_the_unit_limit_are_dropped_not_encoded():
    rng = np.random.default_rng(7)
    arrays = {f"w{i}": rng.standard_normal((96, 128)).astype(np.float32) for i in range(9)}  # 12,288 each
    limit = 100_000  # the one group of all nine is about 107 KB
    data, report = Encoder(bits=8, limits=Limits(max_unit_bytes=limit)).encode(nncodec.encoder.numpy_tensors(arrays))
    assert all(u.size <= limit for u in nncodec.read_info(data).units)
    ungrouped, _ = Encoder(bits=8, group_tensors=False).encode(nncodec.encoder.numpy_tensors(arrays))
    assert same_values(data, ungrouped)
    _, free = Encoder(bits=8).encode(nncodec.encoder.numpy_tensors(arrays))
    assert free.grouped == sorted(arrays)  # without the limit they are grouped: the limit is what dropped them


def test_split_groups_are_tried_when_the_single_group_directory_is_over_the_limit():
    rng = np.random.default_rng(6)
    arrays = {f"block{i}.conv.weight": rng.integers(-7, 8, (8, 8)).astype(np.float32) for i in range(6)}
    arrays |= {f"block{i}.norm.num_batches_tracked": np.array([i], np.int64) for i in range(6)}
    limits = Limits(max_metadata_bytes=600)  # the one group's directory is over this, each half's is not
    data, report = Encoder(bits=4, limits=limits).encode(nncodec.encoder.numpy_tensors(arrays))
    groups = [u for u in nncodec.read_info(data).units if u.type == "tensor_group"]
    assert report.grouped == sorted(arrays) and len(groups) == 2
    _, single = Encoder(bits=4).encode(nncodec.encoder.numpy_tensors(arrays))
    assert single.grouped == sorted(arrays)
    assert same_values(data, Encoder(bits=4, group_tensors=False).encode(nncodec.encoder.numpy_tensors(arrays))[0])


@pytest.mark.parametrize("table", ["a.table", "z.table"])
def test_a_mid_size_tensor_over_the_byte_cap_leaves_the_fitting_ones_grouped(table):
    rng = np.random.default_rng(4)
    arrays = {f"conv{i}": (rng.integers(-7, 8, (64, 64, 3)) * (rng.random((64, 64, 3)) < 0.1)).astype(np.float32)
              for i in range(3)}  # 12,288 elements each
    tensors = nncodec.encoder.numpy_tensors(arrays)
    tensors[table] = (rng.standard_normal(65536), dtype_by_name("float64"))  # 512 KiB of words: over the cap
    seen = []
    real = encoder_module._group_payload
    spy = lambda members, *a, **k: seen.append(sum(len(p.words) for p in members)) or real(members, *a, **k)  # noqa
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder_module, "_group_payload", spy)
        data, report = Encoder(bits=4, lossless=[table]).encode(tensors)
    assert report.grouped == sorted(arrays)
    assert seen and max(seen) <= encoder_module._GROUP_SPLIT_BYTES
    arrays[table] = tensors[table][0]
    got = nncodec.decode_arrays(data)
    assert np.array_equal(got[table], arrays[table])


def test_member_report_sizes_share_their_own_group_unit():
    rng = np.random.default_rng(8)
    arrays = {f"l{i}.weight": (rng.integers(-7, 8, (16, 32)) * (rng.random((16, 32)) < 0.15)).astype(np.float32)
              for i in range(4)}  # sparse 4-bit codes: a small group
    tables = [f"l{i}.table" for i in range(4)]
    arrays |= {name: rng.standard_normal(64) for name in tables}  # lossless float64 noise: a large one
    with encoder_without_acode():  # stage 8 codes both kinds as well in one group
        data, report = Encoder(bits=4, lossless=tables).encode(nncodec.encoder.numpy_tensors(arrays))
    groups = [u for u in nncodec.read_info(data).units if u.type == "tensor_group"]
    assert len(groups) == 2 and report.grouped == sorted(arrays)
    sizes = {t.name: t.unit_bytes for t in report.tensors}
    for u in groups:
        shares = [sizes[m["name"]] for m in u.members]
        unit = u.size  # with the unit header
        assert unit - len(shares) <= sum(shares) <= unit
        stored = {m["name"]: m["stored_bytes"] for m in u.members}
        big, small = max(stored, key=stored.get), min(stored, key=stored.get)
        assert sizes[big] >= sizes[small]


def test_lazy_reader_decodes_each_group_once_when_members_alternate(monkeypatch):
    import nncodec.lazy as lazy

    rng = np.random.default_rng(9)
    arrays = {f"l{i}.weight": (rng.integers(-7, 8, (16, 32)) * (rng.random((16, 32)) < 0.15)).astype(np.float32)
              for i in range(4)}
    tables = [f"l{i}.table" for i in range(4)]
    arrays |= {name: rng.standard_normal(64) for name in tables}
    with encoder_without_acode():  # two groups (stage 8 would code both kinds in one)
        data, report = Encoder(bits=4, lossless=tables).encode(nncodec.encoder.numpy_tensors(arrays))
    assert len([u for u in nncodec.read_info(data).units if u.type == "tensor_group"]) == 2
    want = nncodec.decode_arrays(data)
    decoded = []
    real = lazy.decode_group_data
    monkeypatch.setattr(lazy, "decode_group_data", lambda group, limits: decoded.append(1) or real(group, limits))
    order = [n for i in range(4) for n in (f"l{i}.weight", f"l{i}.table")]  # state-dict order: groups alternate
    with nncodec.open(data) as f:
        for name in order * 2:
            assert np.array_equal(f.get_array(name), want[name])
    assert len(decoded) == 2
    monkeypatch.setattr(lazy, "GROUP_CACHE_BYTES", 1)  # a bound under one group: only the last one is kept
    decoded.clear()
    with nncodec.open(data) as f:
        for name in order:
            assert np.array_equal(f.get_array(name), want[name])
    assert len(decoded) == len(order)

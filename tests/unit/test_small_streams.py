"""Small pruned, quantized models: tensor groups split by kind, codes narrowed, mid-size kernels grouped."""

import numpy as np
import pytest
import torch

import nncodec
import nncodec.encoder as encoder_module
from nncodec.bitstream.descriptor import CodedTensor, QuantDescriptor, dequantize_into
from nncodec.bitstream.units import TensorHeader
from nncodec.dtypes import dtype_by_name
from nncodec.encoder import Encoder
from nncodec.models import MobileNetV2Small
from nncodec.prune.unstructured import apply_masks, magnitude_masks
from nncodec.quant.layers import quantize_model
from nncodec.torch_io import tensors_from
from tests.benchmarks.bench_small_streams import coded_tensors, encoder_before, same_values

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
    back = coded_tensors(data)
    po2 = [n for n, v in pruned_4bit.items() if isinstance(v, CodedTensor) and v.codes.dtype == np.int16]
    assert po2 and all(back[n].quant.code_dtype.name == "int8" for n in po2)
    wide = {"w": CodedTensor(np.array([[-300, 0], [5, 200]], np.int16), QuantDescriptor(
        scheme=1, code_dtype=dtype_by_name("int16"), bits=10, scales=np.ones(1, np.float32)),
        dtype_by_name("float32")), "b": np.zeros(3, np.float32)}
    kept = coded_tensors(Encoder().encode(wide)[0])["w"]
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


def test_mid_size_tensors_are_grouped_only_up_to_the_byte_cap(monkeypatch):
    rng = np.random.default_rng(4)
    codes = {f"conv{i}": (rng.integers(-7, 8, (64, 64, 3)) * (rng.random((64, 64, 3)) < 0.1)).astype(np.float32)
             for i in range(3)}  # 12,288 elements each: over 4096
    data, report = Encoder(bits=4).encode(nncodec.encoder.numpy_tensors(codes))
    assert report.grouped == sorted(codes)
    monkeypatch.setattr(encoder_module, "_GROUP_SPLIT_BYTES", 20000)  # two tensors' words, then no more kept
    capped, report = Encoder(bits=4).encode(nncodec.encoder.numpy_tensors(codes))
    assert not report.grouped and len(data) < len(capped)
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

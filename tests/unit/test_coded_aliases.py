"""Tied quantized tensors (CodedTensor values sharing their codes) are stored once, as an alias."""

from __future__ import annotations

import numpy as np

import nncodec
from nncodec.bitstream.descriptor import CodedTensor, QuantDescriptor
from nncodec.dtypes import dtype_by_name
from nncodec.encoder import Encoder, find_aliases


def _coded(codes: np.ndarray, scale: float) -> CodedTensor:
    desc = QuantDescriptor(scheme=1, code_dtype=dtype_by_name("int8"), sign_bits=1, bits=6,
                           scales=np.array([scale], np.float32))
    return CodedTensor(codes, desc, dtype_by_name("float32"))


def test_coded_tensors_sharing_codes_and_descriptor_are_aliases_and_decode_alike():
    rng = np.random.default_rng(0)
    codes = rng.integers(-31, 32, size=(64, 16)).astype(np.int8)
    table = _coded(codes, 0.02)
    tensors = {"emb.weight": table, "out.weight": table, "mid.weight": _coded(codes.copy(), 0.02)}
    assert find_aliases(tensors) == {"out.weight": "emb.weight"}  # a copy of the codes is not a tie
    stream, report = Encoder().encode(tensors)
    assert report.aliases == {"out.weight": "emb.weight"}
    info = nncodec.read_info(stream)
    assert info.aliases == {"out.weight": "emb.weight"}
    out = nncodec.decode_arrays(stream)
    np.testing.assert_array_equal(out["out.weight"], out["emb.weight"])
    np.testing.assert_allclose(out["emb.weight"], codes.astype(np.float32) * np.float32(0.02), rtol=1e-6)


def test_shared_codes_with_other_scales_are_not_aliases():
    codes = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    tensors = {"a": _coded(codes, 0.5), "b": _coded(codes, 0.25)}
    assert find_aliases(tensors) == {}

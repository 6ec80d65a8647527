"""Conformance vectors of format 1.5: the dependent-quantization stage (FORMAT.md §15), valid and hostile.

``dependent_linear`` is written by the encoder (Viterbi-chosen levels, per-tensor and per-input-channel
steps, stage 7 then the encoder's pipeline); ``dependent_stored`` is built by hand with stage 7 alone, so its
bytes can be checked against §15.2 (codes of every parity and sign in every state, chains that do not
divide the word count, 1-, 2- and 4-byte words). The invalid vectors break one rule of §15 each.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np

from ..bitstream.constants import FILE_HEADER, MAGIC, STAGE_DEPENDENT, UNIT_END, UNIT_STREAM_HEADER, UNIT_TENSOR
from ..dtypes import dtype_by_name
from ..encoder import Encoder
from ..quant.dependent import dependent_coded
from ..quant.uniform import UniformCodes
from .forge import join_units

__all__ = ["VALID", "INVALID", "spec_levels"]

Expected = dict[str, np.ndarray]
_RNG = np.random.default_rng(1505)
_INT_IDS = {"int8": 3, "int16": 5, "int32": 7}


def _encoded() -> tuple[bytes, Expected]:
    """A per-tensor and a per-input-channel weight and a bias, coded by the encoder's Viterbi search."""
    f32 = dtype_by_name("float32")
    w = _RNG.laplace(size=(12, 40)).astype(np.float32) * 0.05
    v = _RNG.laplace(size=(6, 24)).astype(np.float32) * 0.05
    b = _RNG.standard_normal(70).astype(np.float32) * 0.01
    column_steps = np.linspace(0.01, 0.04, 24)
    plans = {"fc.weight": (w, np.float64(0.02), UniformCodes(w, np.ones(1, np.float32), 8, False), 0),
             "proj.weight": (v, column_steps.reshape(1, -1), UniformCodes(v, np.ones(24, np.float32), 8, True), 1),
             "fc.bias": (b, np.float64(0.004), UniformCodes(b, np.ones(1, np.float32), 8, False), 0)}
    tensors, expected = {}, {}
    for name, (x, step, grid, axis) in plans.items():
        coded, _ = dependent_coded(x, step, grid, f32, axis, 0.05)
        tensors[name] = coded
        scale = coded.quant.scales.astype(np.float32)
        scale = scale.reshape(1, -1) if axis == 1 else scale.reshape(())
        expected[name] = coded.codes.astype(np.float32) * scale + np.float32(0.0)
    data, _ = Encoder().encode(tensors)
    return data, expected


def _params(word_size: int = 1, states: int = 4, chain: int = 5) -> bytes:
    return struct.pack("<BBI", word_size, states, chain)


def _tensor(name: bytes, dtype: str, shape: list[int], codes: bytes, params: bytes) -> bytes:
    """A tensor unit payload: lossless integer tensor, pipeline = [stage 7 with ``params``], stored codes."""
    dtype_id = _INT_IDS[dtype]
    desc = struct.pack("<BBbBBBBBhI", 0, dtype_id, 0, 0, 0, 8 * dtype_by_name(dtype).itemsize, 0, 0, 0, 0)
    head = struct.pack("<H", len(name)) + name + bytes([dtype_id, len(shape)])
    head += b"".join(struct.pack("<Q", d) for d in shape)
    return head + desc + bytes([1, STAGE_DEPENDENT, len(params)]) + params + codes


def _stream(*payloads: bytes) -> bytes:
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 5, 0, 0, 0, len(payloads), 0))]
    units += [(UNIT_TENSOR, 1, 0, p) for p in payloads]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), len(payloads))))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 5), units)


#: hand-picked codes: both parities and signs in every state, zeros, the extremes of the 1-byte code range
_K8 = np.array([1, -1, 0, 3, -2, 63, -64, 2, 1, 1, -3, 0, 5, -5, 7, 1, 0, -1, 2, 2, 1, 3, -7], np.int8)
_K16 = _RNG.integers(-300, 300, (3, 7)).astype(np.int16)
_K32 = _RNG.integers(-(1 << 29), 1 << 29, 9).astype(np.int32)
_STORED = {b"a8": ("int8", [23], _K8, 5), b"b16": ("int16", [3, 7], _K16, 7), b"c32": ("int32", [9], _K32, 4)}


def spec_levels(codes: list[int], chain: int) -> list[int]:
    """FORMAT.md §15.2 word by word in plain Python integers: the reference the decoder's vectorized
    ``levels_of`` is checked against (here and in the tests)."""
    nxt = {0: (0, 2), 1: (2, 0), 2: (1, 3), 3: (3, 1)}
    out, s = [], 0
    for i, k in enumerate(codes):
        if i % chain == 0:
            s = 0
        sign = (k > 0) - (k < 0)
        out.append(2 * k if s < 2 else 2 * k - sign)
        s = nxt[s][k & 1]
    return out


def _stored() -> tuple[bytes, Expected]:
    payloads, expected = [], {}
    for name, (dtype, shape, codes, chain) in _STORED.items():
        payloads.append(_tensor(name, dtype, shape, codes.tobytes(), _params(codes.itemsize, 4, chain)))
        levels = spec_levels([int(k) for k in codes.reshape(-1)], chain)
        expected[name.decode()] = np.array(levels, dtype=codes.dtype).reshape(shape)
    return _stream(*payloads), expected


def _bad(params: bytes = _params(), codes: bytes = _K8.tobytes(), dtype: str = "int8",
         shape: list[int] | None = None) -> Callable[[], bytes]:
    itemsize = dtype_by_name(dtype).itemsize
    return lambda: _stream(_tensor(b"w", dtype, shape or [len(codes) // itemsize], codes, params))


VALID: dict[str, tuple[str, Callable[[], tuple[bytes, Expected]]]] = {
    "dependent_linear": ("dependent quantization (format 1.5) as the encoder writes it: a per-tensor and a "
                         "per-input-channel weight and a bias (64-word chains), stage 7 then the encoder's pipeline",
                         _encoded),
    "dependent_stored": ("stage 7 alone on 1-, 2- and 4-byte words, chains of 5, 7 and 4 words that do not divide "
                         "the word counts, codes of both parities and signs in every state", _stored),
}

INVALID: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    "dependent_states_8": ("stage 7 declaring an 8-state machine", "CorruptError", _bad(_params(states=8))),
    "dependent_chain_zero": ("stage 7 with a chain of 0 words", "CorruptError", _bad(_params(chain=0))),
    "dependent_chain_over_limit": ("stage 7 with a chain of 65537 words", "CorruptError",
                                   _bad(_params(chain=65537))),
    "dependent_params_length": ("stage 7 params of 5 bytes", "CorruptError", _bad(_params()[:5])),
    "dependent_code_out_of_range": ("a 1-byte code of 64 (codes must lie in -64..63)", "CorruptError",
                                    _bad(codes=bytes([1, 2, 64, 0]))),
    "dependent_partial_word": ("2-byte words on a 5-byte int8 tensor", "CorruptError",
                               _bad(_params(word_size=2), codes=bytes(5))),
}

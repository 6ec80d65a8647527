"""Mutation fuzzing over the conformance vectors (bounded, in CI): any damage gives nncodec's own error.

Never IndexError / struct.error / zstd's error, never a hang (per-example deadline), never an allocation
over the limits (small limits here). ``tests/fuzz/fuzz_decoder.py`` is the longer coverage-guided harness.
"""

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncodec.conformance.forge import refresh_crcs
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.decoder import iter_tensors
from nncodec.errors import NNCodecError
from nncodec.limits import Limits

SMALL = Limits(max_unit_bytes=1 << 24, max_tensor_elements=1 << 22, max_total_decoded_bytes=1 << 26)


@lru_cache(maxsize=1)
def corpus() -> tuple[bytes, ...]:
    folder = default_vectors_dir()
    return tuple((folder / v.file).read_bytes() for v in load_manifest(folder) if v.error is None)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(corpus())))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            other = draw(st.sampled_from(corpus()))
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos + 8] = other[start:start + 8]
    return refresh_crcs(bytes(data)) if draw(st.booleans()) else bytes(data)


@settings(max_examples=400, deadline=3000, suppress_health_check=list(HealthCheck))
@given(mutated())
def test_mutated_vectors_raise_only_nncodec_errors(data):
    try:
        for _ in iter_tensors(data, limits=SMALL):
            pass
    except NNCodecError:
        pass

"""The entropy stages decode without a runtime compiler: compiled C kernels, portable ones, same output.

Stage 5 decodes without constriction too, bit-exact with what constriction's coder wrote.
"""

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nncodec.coding import Ans, Rans, kernels
from nncodec.conformance.runner import run_conformance
from nncodec.conformance.vectors import default_vectors_dir
from nncodec.errors import CorruptError

HAS_CONSTRICTION = importlib.util.find_spec("constriction") is not None


def _clear_kernel_caches() -> None:
    for f in (kernels.native_kernels, kernels.decode_kernels, kernels.encode_kernels, kernels.fast_encoder_available):
        f.cache_clear()


@pytest.fixture
def portable(monkeypatch):
    """Run with the portable kernels, as on an install built without a C compiler."""
    monkeypatch.setenv("NNCODEC_KERNELS", "portable")
    _clear_kernel_caches()
    assert kernels.decode_kernels().__name__.endswith("rans_portable")
    yield
    monkeypatch.delenv("NNCODEC_KERNELS")
    _clear_kernel_caches()


def _codes(n: int, scale: float, seed: int, dtype=np.int8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    return np.clip(np.round(rng.laplace(0, scale, n)), info.min, info.max).astype(dtype)


def _decode(stage, coded: bytes, like: np.ndarray) -> np.ndarray:
    out = np.empty(like.nbytes, np.uint8)
    stage.decode_into(memoryview(coded), out)
    return out.view(like.dtype)


def test_the_compiled_kernels_are_built():
    # pip install builds them (a C compiler is required on CI); without them decoding is ~100x slower
    assert kernels.native_kernels() is not None


@pytest.mark.parametrize("dtype,scale", [(np.int8, 0.4), (np.int8, 6.0), (np.int16, 300.0)])
def test_rans_compiled_and_portable_kernels_write_and_read_the_same_bytes(dtype, scale, request):
    words = _codes(20_011, scale, 1, dtype)
    stage = Rans(np.dtype(dtype).itemsize, True)
    coded_native = stage.encode(memoryview(words.view(np.uint8)))
    np.testing.assert_array_equal(_decode(stage, coded_native, words), words)
    request.getfixturevalue("portable")
    assert stage.encode(memoryview(words.view(np.uint8))) == coded_native
    np.testing.assert_array_equal(_decode(stage, coded_native, words), words)


@pytest.mark.parametrize("kernel", ["compiled", "portable"])
@pytest.mark.parametrize("piece", [1, 3, 6, 4099, 1 << 20])
def test_rans_decodes_in_pieces_of_any_length(kernel, piece, request):
    # pieces that start on any of the four lanes, shorter and longer than a group of four symbols
    if kernel == "portable":
        request.getfixturevalue("portable")
    words = _codes(10_007, 2.5, 3)
    stage = Rans(1, True)
    coded = stage.encode(memoryview(words.view(np.uint8)))
    pieces = [p.copy() for p in stage.iter_decode(memoryview(coded), words.size, piece)]
    assert all(p.size == min(piece, words.size) for p in pieces[:-1])
    np.testing.assert_array_equal(np.concatenate(pieces).view(np.int8), words)
    table = np.arange(-128, 128, dtype=np.float32) * np.float32(0.5)  # symbols mapped through a table
    dest = np.empty(words.size, np.float32)
    stage.decode_mapped(memoryview(coded), words.size,
                        lambda alphabet: table[alphabet.view(np.int8).astype(np.int64) + 128], dest)
    np.testing.assert_array_equal(dest, words * np.float32(0.5))
    with pytest.raises(CorruptError, match="run out"):
        list(stage.iter_decode(memoryview(coded[:-40]), words.size, piece))


@pytest.mark.parametrize("kernel", ["compiled", "portable"])
def test_every_conformance_vector_decodes_to_its_hashes(kernel, request):
    if kernel == "portable":
        request.getfixturevalue("portable")
    outcomes = list(run_conformance(default_vectors_dir()))
    assert [(o.vector.name, o.detail) for o in outcomes if not o.passed] == []
    assert {"stage_rans", "stage_ans", "stage_rans_int16", "stage_ans_int16"} <= {o.vector.name for o in outcomes}


@pytest.mark.skipif(not HAS_CONSTRICTION, reason="the reference encoder of stage 5 is constriction")
@pytest.mark.parametrize("kernel", ["compiled", "portable"])
def test_stage5_decodes_constriction_streams_without_constriction(kernel, request):
    import constriction

    if kernel == "portable":
        request.getfixturevalue("portable")
    rng = np.random.default_rng(7)
    cases = [np.array([0, 1], np.int16), np.array([5, -5, 5], np.int16), np.arange(-32768, 32768, dtype=np.int16),
             _codes(30_000, 0.05, 2, np.int16)]
    for _ in range(12):
        k = int(rng.integers(2, 400))
        p = rng.dirichlet(np.full(k, rng.uniform(0.05, 3.0)))
        cases.append(rng.choice(np.arange(k) - k // 2, size=int(rng.integers(1, 20_000)), p=p).astype(np.int16))
    for words in cases:
        values, index, counts = np.unique(words, return_inverse=True, return_counts=True)
        if values.size < 2:
            continue
        coder = constriction.stream.stack.AnsCoder()
        coder.encode_reverse(index.astype(np.int32),
                             constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False))
        coded = Ans(2, True).encode(memoryview(words.view(np.uint8)))
        assert coded.endswith(coder.get_compressed().astype("<u4").tobytes())  # the stage's data is constriction's
        np.testing.assert_array_equal(_decode(Ans(2, True), coded, words), words)


@pytest.mark.parametrize("kernel", ["compiled", "portable"])
def test_damaged_entropy_data_is_a_corrupt_error(kernel, request):
    if kernel == "portable":
        request.getfixturevalue("portable")
    words = _codes(3_000, 3.0, 5)
    rng = np.random.default_rng(11)
    for stage in (Rans(1, True),) + ((Ans(1, True),) if HAS_CONSTRICTION else ()):
        coded = stage.encode(memoryview(words.view(np.uint8)))
        head = len(coded) - 200
        for _ in range(40):
            bad = bytearray(coded)
            bad[int(rng.integers(head, len(bad)))] ^= 1 << int(rng.integers(8))
            try:
                got = _decode(stage, bytes(bad), words)
            except CorruptError:
                continue
            assert got.size == words.size  # a flip that still decodes gives some words, never a crash
        with pytest.raises(CorruptError):
            _decode(stage, coded + b"\x01\x00\x00\x00", words)


def test_decode_arrays_imports_no_torch_no_jit_and_no_constriction(tmp_path):
    words = _codes(50_000, 4.0, 9).astype(np.float32)
    streams = {}
    for codec in ("rans", "ans"):
        if codec == "ans" and not HAS_CONSTRICTION:
            continue
        path = tmp_path / f"{codec}.nnc"
        import nncodec

        nncodec.encode_arrays({"w": words.reshape(50, 1000)}, path, bits=6,
                              pipeline=[{"id": codec, "word_size": 1, "signed": True}])
        streams[codec] = path
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import nncodec
        for path in {[str(p) for p in streams.values()]!r}:
            arrays = nncodec.decode_arrays(path)
            assert arrays["w"].shape == (50, 1000)
        loaded = sorted(m for m in ("torch", "numba", "llvmlite", "constriction", "nncodec.encoder", "nncodec.quant")
                        if m in sys.modules)  # nor the encoder: a cold decode pays for what it uses
        print(",".join(loaded) or "none")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "none", out.stdout + out.stderr

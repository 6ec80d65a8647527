"""Dependent (trellis-coded) quantization: the stage (FORMAT.md §15), the Viterbi search, the encode option."""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import nncodec
from nncodec.bitstream.constants import FILE_HEADER, MAGIC, UNIT_END, UNIT_STREAM_HEADER, UNIT_TENSOR
from nncodec.coding import stage_from_config
from nncodec.coding.dependent_stage import Dependent, codes_of, levels_of
from nncodec.conformance.dependent_vectors import spec_levels
from nncodec.conformance.forge import join_units
from nncodec.errors import ConfigError, CorruptError
from nncodec.quant.dependent import dependent_coded, dependent_levels
from nncodec.quant.rate_aware import order0_bits
from nncodec.quant.uniform import UniformCodes


@pytest.mark.parametrize("chain", [1, 3, 7, 64])
def test_stage_decodes_as_the_spec_and_inverts_on_encode(chain):
    codes = np.random.default_rng(chain).integers(-40, 40, 101)
    levels = levels_of(codes, chain)
    assert levels.tolist() == spec_levels(codes.tolist(), chain)
    assert np.array_equal(codes_of(levels, chain), codes)
    stage = Dependent(1, chain)
    coded = stage.encode(memoryview(levels.astype(np.int8).tobytes()))
    assert np.array_equal(np.frombuffer(coded, np.int8), codes)
    out = np.empty(len(coded), np.uint8)
    stage.decode_into(memoryview(coded), out)
    assert np.array_equal(out.view(np.int8), levels)


def _counted_codes_of(monkeypatch) -> list:
    """Replace the stage module's :func:`codes_of` by one that records its calls."""
    import nncodec.coding.dependent_stage as ds

    calls: list = []
    monkeypatch.setattr(ds, "codes_of", lambda *a: calls.append(a) or codes_of(*a))
    return calls


def _known_stage(x: np.ndarray, delta: float = 0.2) -> tuple[Dependent, np.ndarray, bytes]:
    """A stage holding the search's codes of ``x``, the levels array they belong to, and the derived bytes."""
    found = dependent_levels(x, delta)
    levels = found.levels.astype(np.int16)
    derived = Dependent(2, found.chain).encode(memoryview(levels.tobytes()))
    return Dependent(2, found.chain, codes=found.codes, levels=levels), levels, derived


def test_codes_known_from_the_search_are_written_once_for_their_levels_memory(monkeypatch):
    x = np.random.default_rng(5).laplace(size=(6, 50))
    stage, levels, derived = _known_stage(x)
    assert stage == Dependent(2, stage.chain)  # the codes are no part of the stage's identity
    assert not levels.flags.writeable  # pinned: the codes stay those of its words
    calls = _counted_codes_of(monkeypatch)
    assert stage.encode(memoryview(levels.reshape(-1).view(np.uint8))) == derived and not calls  # written
    assert stage.encode(memoryview(levels.reshape(-1).view(np.uint8))) == derived and len(calls) == 1  # once
    with pytest.raises(ConfigError, match="given together"):
        Dependent(2, 4, codes=np.zeros(3))
    wide = Dependent(1, 2, codes=np.array([200, 0]), levels=np.zeros(2, np.int8))  # beyond 1-byte codes: derived
    assert wide.encode(memoryview(bytes(2))) == bytes(2)


def _other_levels(shape: tuple[int, ...], chain: int, seed: int) -> np.ndarray:
    """Valid levels (on the state machine) of ``shape`` other than the search's, as int16."""
    codes = np.random.default_rng(seed).integers(-30, 30, int(np.prod(shape)))
    return levels_of(codes, chain).astype(np.int16).reshape(shape)


@pytest.mark.parametrize("case", ["other", "reversed", "copy", "edited", "part"])
def test_stored_codes_are_used_only_for_the_data_they_belong_to(monkeypatch, case):
    x = np.random.default_rng(6).laplace(size=(6, 50))
    stage, levels, _ = _known_stage(x)
    if case == "other":  # another tensor of the same size
        data = _other_levels(levels.shape, stage.chain, 1)
    elif case == "reversed":  # the same words in another order: off the state machine somewhere
        data = levels.reshape(-1)[::-1].copy()
    elif case == "copy":  # equal words in other memory
        data = levels.copy()
    elif case == "edited":  # the pinned array made writable again and changed in place
        with pytest.raises(ValueError):
            levels[0, 0] = 7
        levels.flags.writeable = True
        levels[:] = _other_levels(levels.shape, stage.chain, 2)
        data = levels
    else:  # the leading half of the levels' own memory
        data = levels.reshape(-1)[:levels.size // 2]
    plain = Dependent(2, stage.chain)
    try:
        want: "bytes | str" = plain.encode(memoryview(data.reshape(-1).view(np.uint8)))
    except ConfigError as err:
        want = str(err)
    calls = _counted_codes_of(monkeypatch)
    try:
        got: "bytes | str" = stage.encode(memoryview(data.reshape(-1).view(np.uint8)))
    except ConfigError as err:
        got = str(err)
    assert got == want and len(calls) == 1  # derived, as a stage without codes does
    if case == "reversed":
        assert "not on the quantizer" in want


def test_public_encode_writes_the_searchs_codes_and_derives_for_replaced_codes(monkeypatch):
    import dataclasses

    from nncodec.encoder import Encoder
    from nncodec.rd_encode import RDOptions, rd_tensors
    from nncodec.torch_io import tensors_from

    state = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    calls = _counted_codes_of(monkeypatch)
    data = nncodec.encode(state, rel_step=0.3, rounding="dependent")
    assert not calls  # every dependent tensor's codes came from the search
    assert nncodec.decode(data).keys() == state.keys()
    coded, _ = rd_tensors(state, tensors_from(state, True), Encoder(rel_step=0.3), RDOptions(rounding="dependent"))
    w = coded["0.weight"]
    other = _other_levels(w.codes.shape, w.lead.chain, 3).astype(w.codes.dtype)
    swapped = dataclasses.replace(w, codes=other)
    got = nncodec.decode(nncodec.Encoder().encode({"w": swapped})[0])["w"]
    assert len(calls) == 1  # derived for the replaced codes
    scale = w.quant.scales.astype(np.float32).reshape(())
    assert np.array_equal(np.asarray(got), other.astype(np.float32) * scale)


@pytest.mark.parametrize("x, delta, match", [
    (np.array([[0.5, np.nan]]), 0.1, "finite values"),
    (np.array([[0.5, -np.inf]], np.float32), 0.1, "finite values"),
    (np.array([[0.5, 1e12]]), 1e-3, "fewer than 2\\*\\*31"),
    (np.zeros((3, 4)), np.ones(5), "do not broadcast"),
    (np.zeros((3, 4)), np.ones((2, 3, 4)), "do not broadcast"),  # would widen the values
    (np.zeros((3, 4)), np.array([0.1, 0.0, 0.1, 0.1]), "finite steps > 0"),
])
def test_values_and_steps_the_search_cannot_take_are_config_errors(x, delta, match):
    with pytest.raises(ConfigError, match=match):
        dependent_levels(x, delta)


def test_a_level_off_its_state_quantizer_is_a_config_error():
    with pytest.raises(ConfigError, match="not on the quantizer of state 0"):
        codes_of(np.array([1]), 4)  # state 0 is Q0: even levels only
    with pytest.raises(ConfigError, match="state 2"):
        codes_of(np.array([2, 2]), 4)  # code 1 (odd) moves to state 2 (Q1): an even non-zero level is not there


def test_viterbi_finds_the_cheapest_path_of_a_short_chain():
    rng = np.random.default_rng(3)
    y = rng.normal(scale=1.5, size=5)
    found = dependent_levels(y, 1.0, chain=5)
    best = min(sum((y - spec_levels(list(ks), 5)) ** 2) for ks in itertools.product(range(-3, 4), repeat=5))
    assert np.sum((y - found.levels) ** 2) == pytest.approx(best, rel=1e-12)


def test_dependent_rate_is_lower_than_rounding_at_equal_mse_on_laplacian_data():
    x = np.random.default_rng(0).laplace(size=(128, 256))
    for delta in (0.1, 0.25):
        found = dependent_levels(x, delta)
        mse = np.mean((x - found.levels * delta) ** 2)
        lo, hi = delta, 4 * delta  # the plain step with the same MSE, by bisection
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.mean((x - np.rint(x / mid) * mid) ** 2) < mse else (lo, mid)
        plain = order0_bits(np.rint(x / lo)) / x.size
        dq = order0_bits(found.codes) / x.size
        assert dq < plain - 0.08, (delta, dq, plain)


def test_rate_weight_lowers_the_rate():
    x = np.random.default_rng(1).laplace(size=(64, 128))
    plain, weighted = dependent_levels(x, 0.2), dependent_levels(x, 0.2, lam=2.0)
    assert order0_bits(weighted.codes) < order0_bits(plain.codes) - 0.05 * x.size


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 96), torch.nn.ReLU(), torch.nn.Linear(96, 8))


def test_encode_decode_reproduces_the_encoders_reconstruction_exactly():
    model = _model()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    data, report = nncodec.encode_with_report(state, rel_step=0.3, rounding="dependent")
    assert FILE_HEADER.unpack(data[:12])[2] == 5
    decoded = nncodec.decode(data)
    from nncodec.rd_encode import RDOptions, rd_tensors
    from nncodec.encoder import Encoder
    from nncodec.torch_io import tensors_from

    encoder = Encoder(rel_step=0.3)
    coded, _ = rd_tensors(state, tensors_from(state, True), encoder, RDOptions(rounding="dependent"))
    for name, c in coded.items():
        scale = c.quant.scales.astype(np.float32).reshape(())
        want = c.codes.astype(np.float32) * scale
        assert np.array_equal(np.asarray(decoded[name]), want), name
    assert all(t.pipeline[0] == "dependent" for t in report.tensors)
    info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(data).units if u.tensor}
    assert all(t["pipeline"][0]["id"] == "dependent" for t in info.values())
    # plain rounding does not write a 1.5 stream (without stage 8, which is format 1.6)
    from tests.benchmarks.bench_small_streams import encoder_without_acode

    with encoder_without_acode():
        assert FILE_HEADER.unpack(nncodec.encode(state, rel_step=0.3)[:12])[2] < 5


def test_dependent_with_per_column_steps_decodes_to_the_searched_values():
    x = np.random.default_rng(2).laplace(size=(10, 30)).astype(np.float32)
    steps = np.linspace(0.05, 0.3, 30).reshape(1, -1)
    grid = UniformCodes(x, np.ones(30, np.float32), 8, True)
    coded, (max_err, _) = dependent_coded(x, steps, grid, nncodec.dtypes.dtype_by_name("float32"), 1, 0.0)
    data = nncodec.Encoder().encode({"w": coded})[0]
    got = np.asarray(nncodec.decode(data)["w"])
    assert np.array_equal(got, coded.codes.astype(np.float32) * coded.quant.scales.reshape(1, -1))
    assert np.max(np.abs(got - x)) <= max_err + 1e-6
    # on the chosen path each element's quantizer has levels of both code parities within 2Δ (its column's
    # plain step) on either side, so no element is further than that from its value
    delta = coded.quant.scales.astype(np.float64).reshape(1, -1)
    assert (np.abs(got - x) <= 2 * delta + 1e-6).all()


def test_wrong_combinations_are_config_errors():
    state = {k: v.detach().clone() for k, v in _model().state_dict().items()}
    with pytest.raises(ConfigError, match="not bits="):
        nncodec.encode(state, bits=8, rounding="dependent")
    with pytest.raises(ConfigError, match="refine_steps"):
        nncodec.encode(_model(), rel_step=0.3, rounding="dependent", calibration=[torch.zeros(2, 32)],
                       refine_steps=2)
    with pytest.raises(ConfigError, match="rounding must be one of"):
        nncodec.encode(state, rel_step=0.3, rounding="trellis")
    with pytest.raises(ConfigError):
        stage_from_config({"id": "dependent", "word_size": 3, "chain": 4})
    with pytest.raises(ConfigError):
        stage_from_config({"id": "dependent", "word_size": 1, "chain": 0})


def _stream(params: bytes, codes: bytes, dtype_id: int = 3, bits: int = 8, n: int | None = None) -> bytes:
    size = {3: 1, 5: 2}[dtype_id]
    n = len(codes) // size if n is None else n
    desc = struct.pack("<BBbBBBBBhI", 0, dtype_id, 0, 0, 0, bits, 0, 0, 0, 0)
    payload = struct.pack("<H", 1) + b"w" + bytes([dtype_id, 1]) + struct.pack("<Q", n) + desc
    payload += bytes([1, 7, len(params)]) + params + codes
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 5, 0, 0, 0, 1, 0)), (UNIT_TENSOR, 1, 0, payload)]
    units.append((UNIT_END, 1, 0, struct.pack("<II", 2, 1)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 5), units)


@pytest.mark.parametrize("params, codes, match", [
    (struct.pack("<BBI", 1, 8, 4), bytes(4), "dependent params invalid"),
    (struct.pack("<BBI", 1, 4, 0), bytes(4), "dependent params invalid"),
    (struct.pack("<BBI", 1, 4, 1 << 31), bytes(4), "dependent params invalid"),
    (struct.pack("<BBI", 1, 4, 4)[:5], bytes(4), "must be 6 bytes"),
    (struct.pack("<BBI", 1, 4, 4), bytes([0, 64, 0, 0]), "outside"),
    (struct.pack("<BBI", 1, 4, 4), bytes([0, 0xBF, 0, 0]), "outside"),  # -65
    (struct.pack("<BBI", 2, 4, 4), bytes(5), "does not fit"),
])
def test_hostile_stage_data_is_a_format_error(params, codes, match):
    with pytest.raises(CorruptError, match=match):
        nncodec.decode(_stream(params, codes))


def test_the_longest_chain_decodes_without_a_large_allocation():
    import tracemalloc

    data = _stream(struct.pack("<BBI", 1, 4, 65536), bytes([1, 1, 0xFF]))
    tracemalloc.start()
    got = nncodec.decode(data)["w"]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.asarray(got).tolist() == spec_levels([1, 1, -1], 65536)
    assert peak < 4 << 20


@pytest.mark.parametrize("lam", [0.0, 0.7])
def test_compiled_search_gives_the_numpy_searchs_codes(monkeypatch, lam):
    from nncodec.quant import dependent

    dependent._native.cache_clear()
    if dependent._native() is None:
        pytest.skip("the compiled search was not built")
    x = np.random.default_rng(5).laplace(size=(37, 50))
    x[3] = 0.0  # a chain of zeros: ties between paths
    native = dependent_levels(x, 0.15, lam, chain=23)  # chains across rows, the last one short
    monkeypatch.setenv("NNCODEC_KERNELS", "portable")
    dependent._native.cache_clear()
    try:
        portable = dependent_levels(x, 0.15, lam, chain=23)
    finally:
        dependent._native.cache_clear()
    assert np.array_equal(native.codes, portable.codes)
    assert np.array_equal(native.levels, portable.levels)  # the kernel's own levels: those of the codes


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_compiled_search_gives_the_same_codes_on_any_number_of_threads(monkeypatch, threads):
    from nncodec.quant import dependent

    dependent._native.cache_clear()
    if dependent._native() is None:
        pytest.skip("the compiled search was not built")
    x = np.random.default_rng(6).laplace(size=(41, 30))
    one = dependent_levels(x, 0.2, 0.5, chain=30)
    monkeypatch.setattr(dependent, "search_threads", lambda: threads)
    many = dependent_levels(x, 0.2, 0.5, chain=30)
    assert np.array_equal(one.codes, many.codes) and np.array_equal(one.levels, many.levels)


def test_compiled_codes_of_matches_the_numpy_loop_and_names_a_bad_level(monkeypatch):
    from nncodec.coding import dependent_stage
    from nncodec.quant import dependent

    dependent._native.cache_clear()
    if dependent._native() is None:
        pytest.skip("the compiled kernels were not built")
    codes = np.random.default_rng(8).integers(-300, 300, 4001)
    levels = levels_of(codes, 57)
    bad = levels.copy()
    bad[3 * 57 + 1] = 2 * levels[3 * 57 + 1] + (1 - levels[3 * 57 + 1] % 2)  # off the quantizer of its state
    native = codes_of(levels, 57)
    with pytest.raises(ConfigError, match="not on the quantizer") as err_native:
        codes_of(bad, 57)
    monkeypatch.setattr(dependent_stage, "_native", lambda: None)
    assert np.array_equal(codes_of(levels, 57), native) and np.array_equal(native, codes)
    with pytest.raises(ConfigError, match="not on the quantizer") as err_numpy:
        codes_of(bad, 57)
    assert str(err_native.value) == str(err_numpy.value)


def test_stage_decodes_block_by_block_as_in_one_piece(monkeypatch):
    from nncodec.coding import dependent_stage

    codes = np.random.default_rng(9).integers(-60, 60, 5000).astype(np.int8)
    whole = levels_of(codes, 37)
    monkeypatch.setattr(dependent_stage, "_BLOCK_WORDS", 100)  # blocks of 74 words: two chains each
    out = np.empty(codes.size, np.uint8)
    Dependent(1, 37).decode_into(memoryview(codes.tobytes()), out)
    assert np.array_equal(out.view(np.int8), whole)


@given(data=st.binary(max_size=200), word_size=st.sampled_from([1, 2, 4]), chain=st.integers(1, 70))
@settings(max_examples=150, deadline=2000)
def test_any_stage_input_decodes_as_the_spec_or_is_corrupt(data, word_size, chain):
    stage = Dependent.from_params(struct.pack("<BBI", word_size, 4, chain))
    out = np.empty(len(data), np.uint8)
    try:
        stage.decode_into(memoryview(data), out)
    except CorruptError:
        bound = 1 << (8 * word_size - 2)
        codes = np.frombuffer(data[:len(data) - len(data) % word_size], f"<i{word_size}")
        assert len(data) % word_size or ((codes < -bound) | (codes >= bound)).any()
        return
    codes = np.frombuffer(data, f"<i{word_size}").astype(np.int64)
    assert out.view(f"<i{word_size}").tolist() == spec_levels(codes.tolist(), chain)
    # and the encoder's side takes the levels back to the same codes
    assert stage.encode(memoryview(out)) == data


@pytest.mark.parametrize("kernels", ["", "portable"])
def test_values_beyond_the_code_words_are_a_config_error_on_both_searches(monkeypatch, kernels):
    from nncodec.quant import dependent

    monkeypatch.setenv("NNCODEC_KERNELS", kernels)
    dependent._native.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"dependent quantization of tensor 'w'.*element 0"):
            dependent_levels(np.array([1e6, 1.0]), 1e-12, what="tensor 'w'")
        y = np.array([2.0 ** 31 - 2, -(2.0 ** 31 - 2), 1.0])  # near the largest accepted
        assert np.abs(dependent_levels(y, 1.0).levels - y).max() <= 1
    finally:
        dependent._native.cache_clear()


@pytest.mark.parametrize("stale", [{}, {"ABI_VERSION": -1}])
def test_a_native_build_of_another_version_is_not_used(monkeypatch, caplog, stale):
    """A build from an older source (another viterbi signature, no codes_of) falls back to numpy."""
    import types

    from nncodec.coding import dependent_stage
    from nncodec.quant import dependent

    def old_viterbi(*args):  # 6 arguments: the older signature
        raise TypeError("viterbi() takes exactly 6 arguments")

    fake = types.SimpleNamespace(viterbi=old_viterbi, **stale)
    x = np.random.default_rng(9).laplace(size=(13, 20))
    monkeypatch.setenv("NNCODEC_KERNELS", "portable")
    dependent._native.cache_clear()
    dependent_stage._native.cache_clear()
    want = dependent_levels(x, 0.2, 0.3, chain=20)
    monkeypatch.delenv("NNCODEC_KERNELS")
    monkeypatch.setattr(dependent_stage, "load_extension", lambda name: fake)
    dependent._native.cache_clear()
    dependent_stage._native.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            got = dependent_levels(x, 0.2, 0.3, chain=20)
            assert np.array_equal(codes_of(got.levels, 20), want.codes)
        assert dependent._native() is None and dependent_stage._native() is None
        assert "rebuild" in caplog.text
    finally:
        dependent._native.cache_clear()
        dependent_stage._native.cache_clear()
    assert np.array_equal(got.codes, want.codes) and np.array_equal(got.levels, want.levels)

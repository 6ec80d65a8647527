import numpy as np
import pytest

from nncodec.coding import REGISTRY, BitPack, Shuffle, ZeroWords, Zstd, stage_class, stage_from_config
from nncodec.coding.bitpack import pack_bits, unpack_bits
from nncodec.errors import ConfigError, CorruptError, TruncatedError, UnsupportedFeatureError


def roundtrip(stage, words: np.ndarray) -> np.ndarray:
    raw = words.view(np.uint8).reshape(-1)
    enc = stage.encode(memoryview(raw))
    again = type(stage).from_params(stage.params())
    assert again == stage
    assert again.decoded_size(memoryview(enc)) == raw.size
    out = np.empty(raw.size, np.uint8)
    again.decode_into(memoryview(enc), out)
    return out.view(words.dtype)


def test_registry_ids_are_the_format_ids():
    assert {i: c.codec_id for i, c in REGISTRY.items()} == {1: "zero_words", 2: "bitpack", 3: "shuffle", 4: "zstd", 5: "ans",
                                                                 6: "rans", 7: "dependent", 8: "acode"}
    with pytest.raises(UnsupportedFeatureError):
        stage_class(99)


def test_config_round_trip_through_registry_only():
    for st in (ZeroWords(2, 2, 64, 5, True), BitPack(4, 13, False), Shuffle(4), Zstd(9)):
        assert stage_from_config(st.get_config()).get_config() == st.get_config()
    with pytest.raises(ConfigError):
        stage_from_config({"id": "os.system"})


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 7, 8, 9, 12, 15, 16, 17, 31, 33, 63])
@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack_exact(bits, signed):
    rng = np.random.default_rng(bits)
    n = 1001
    if signed:
        v = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), n, dtype=np.int64)
    else:
        v = rng.integers(0, 1 << bits, n, dtype=np.uint64).astype(np.int64) if bits < 63 else \
            rng.integers(0, 1 << 62, n, dtype=np.int64)
    packed = pack_bits(v, bits)
    assert len(packed) == (n * bits + 7) // 8
    out = np.empty(n, np.int64)
    unpack_bits(packed, n, bits, signed, out)
    np.testing.assert_array_equal(out, v)


def _reference_pack(values: np.ndarray, bits: int) -> bytes:
    """The documented layout, built as one Python integer: word i's low ``bits`` bits (two's complement) at
    stream bits ``[i*bits, (i+1)*bits)``, stream bit k = bit ``k % 8`` of byte ``k // 8``."""
    stream, mask = 0, (1 << bits) - 1
    for i, v in enumerate(values.tolist()):
        stream |= (v & mask) << (i * bits)
    return stream.to_bytes((len(values) * bits + 7) // 8, "little")


def _reference_unpack(values: np.ndarray, bits: int, signed: bool) -> list[int]:
    """What unpacking gives for ``values`` packed at ``bits``: their low bits, sign-extended when ``signed``."""
    mask, top = (1 << bits) - 1, 1 << (bits - 1)
    low = [v & mask for v in values.tolist()]
    return [v - (1 << bits) if signed and v & top else v for v in low]


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
@pytest.mark.parametrize("bits", [1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64])
def test_pack_matches_the_documented_layout_and_unpacks(dtype, bits):
    info = np.iinfo(dtype)
    rng = np.random.default_rng(bits)
    for n in (0, 1, 7, 13, 1000):
        v = rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        packed = pack_bits(v, bits)
        assert packed == _reference_pack(v, bits), (n, bits)
        for signed in (False, True):
            out = np.empty(n, np.int64 if signed else np.uint64)
            unpack_bits(packed, n, bits, signed, out)
            assert out.tolist() == _reference_unpack(v, bits, signed), (n, bits, signed)


def test_pack_bit_order_is_lsb_first():
    # values 1, 0, 3 at 2 bits: stream bits 1,0 | 0,0 | 1,1 -> byte 0b00110001
    assert pack_bits(np.array([1, 0, 3]), 2) == bytes([0b00110001])


def test_unpack_rejects_nonzero_padding():
    out = np.empty(3, np.int64)
    with pytest.raises(CorruptError):
        unpack_bits(bytes([0b11110001]), 3, 2, False, out)


@pytest.mark.parametrize("levels,block", [(1, 0), (2, 64), (2, 3)])
@pytest.mark.parametrize("word_size", [1, 2, 4, 8])
@pytest.mark.parametrize("density", [0.0, 0.01, 0.5, 1.0])
def test_zero_words_roundtrip(levels, block, word_size, density):
    rng = np.random.default_rng(0)
    dt = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[word_size]
    n = 777
    words = (rng.integers(1, 200, n) * (rng.random(n) < density)).astype(dt)
    got = roundtrip(ZeroWords(word_size, levels, block), words)
    np.testing.assert_array_equal(got, words)


def test_zero_words_packed_signed():
    words = np.array([0, -3, 0, 0, 2, 1, 0, -4], dtype=np.int8)
    st = ZeroWords(1, 2, 4, pack_bits=3, signed=True)
    np.testing.assert_array_equal(roundtrip(st, words), words)
    with pytest.raises(ConfigError):
        ZeroWords(1, 1, 0, pack_bits=2, signed=True).encode(memoryview(words.view(np.uint8)))


def test_zero_words_map_layout():
    words = np.array([0, 7, 0, 0, 0, 0, 0, 0, 9], np.uint8)
    enc = ZeroWords(1).encode(memoryview(words))
    # n_words=9, n_nonzero=2, map bits for words 1 and 8, then the words
    assert enc == (9).to_bytes(8, "little") + (2).to_bytes(8, "little") + bytes([0b10, 0b1]) + bytes([7, 9])


def test_zero_words_two_level_skips_empty_blocks():
    words = np.zeros(64 * 100, np.uint8)
    words[5] = 1
    one = ZeroWords(1).encode(memoryview(words))
    two = ZeroWords(1, 2, 64).encode(memoryview(words))
    assert len(two) < len(one) / 4


def test_zero_words_rejects_inconsistent_map():
    words = np.array([0, 7, 0, 9], np.uint8)
    enc = bytearray(ZeroWords(1).encode(memoryview(words)))
    enc[8] = 1  # claims one non-zero word, the map has two
    with pytest.raises(CorruptError):
        ZeroWords(1).decode_into(memoryview(bytes(enc)), np.empty(4, np.uint8))
    with pytest.raises(CorruptError):  # wrong destination size
        ZeroWords(1).decode_into(memoryview(ZeroWords(1).encode(memoryview(words))), np.empty(5, np.uint8))


def test_shuffle_is_byte_planes():
    words = np.array([0x0102, 0x0304], "<u2")
    assert Shuffle(2).encode(memoryview(words.view(np.uint8))) == bytes([2, 4, 1, 3])
    np.testing.assert_array_equal(roundtrip(Shuffle(2), words), words)


def test_zstd_checks_declared_size_and_trailing_data():
    raw = np.arange(1000, dtype=np.uint8)
    enc = Zstd(3).encode(memoryview(raw))
    with pytest.raises(CorruptError):
        Zstd().decode_into(memoryview(enc), np.empty(999, np.uint8))
    with pytest.raises(CorruptError):
        Zstd().decode_into(memoryview(enc + b"\0"), np.empty(1000, np.uint8))
    bad = bytearray(enc)
    bad[-1] ^= 1  # checksum
    with pytest.raises(CorruptError):
        Zstd().decode_into(memoryview(bytes(bad)), np.empty(1000, np.uint8))


@pytest.mark.parametrize("params", [b"\x01\x01\x00\x00\x00\x02", b"\x03\x01\x00\x00\x00\x00", b"\x01"])
def test_zero_words_bad_params(params):
    with pytest.raises(CorruptError):
        ZeroWords.from_params(params)


def test_ans_reaches_the_order0_entropy_where_zstd_does_not():
    from nncodec.coding import Ans

    rng = np.random.default_rng(0)
    sym = np.clip(np.round(rng.laplace(size=200_000) * 0.6), -2, 1).astype(np.int8)  # ~2-bit codes
    _, counts = np.unique(sym, return_counts=True)
    p = counts / counts.sum()
    entropy_bytes = float(-(p * np.log2(p)).sum()) * sym.size / 8
    ans = Ans(1, True).encode(memoryview(sym.view(np.uint8)))
    zstd = Zstd(3).encode(memoryview(sym.view(np.uint8)))  # the default entropy stage
    assert len(ans) <= 1.02 * entropy_bytes + 64
    assert len(zstd) > 1.05 * entropy_bytes and len(ans) < 0.97 * len(zstd)
    np.testing.assert_array_equal(roundtrip(Ans(1, True), sym), sym)
    for words in (np.zeros(0, np.int16), np.full(9, -3, np.int16), np.array([1, 2, 3, 2], np.int16)):
        np.testing.assert_array_equal(roundtrip(Ans(2, True), words), words)


def test_ans_rejects_a_bad_model():
    from nncodec.coding import Ans

    words = np.array([1, 2, 2, 3], np.int8)
    enc = bytearray(Ans(1, True).encode(memoryview(words.view(np.uint8))))
    bad = bytearray(enc)
    bad[12 + 3 * 4] += 1  # first count: counts no longer sum to the word count
    with pytest.raises(CorruptError, match="ans model"):
        Ans(1, True).decode_into(memoryview(bytes(bad)), np.empty(4, np.uint8))
    with pytest.raises(CorruptError):
        Ans(1, True).decode_into(memoryview(bytes(enc[:-1])), np.empty(4, np.uint8))


@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_streaming_stages_give_the_same_bytes_in_pieces(piece):
    from nncodec.coding import Ans

    rng = np.random.default_rng(3)
    codes = np.clip(np.round(rng.laplace(0, 6, 30_001)), -120, 120).astype(np.int8)
    raw = codes.view(np.uint8)
    for stage in (Zstd(3), Ans(1, True)):
        coded = memoryview(stage.encode(memoryview(raw)))
        pieces = [p.copy() for p in stage.iter_decode(coded, raw.size, piece)]
        assert all(p.size == piece for p in pieces[:-1]) and 0 < pieces[-1].size <= piece
        assert np.array_equal(np.concatenate(pieces), raw)
        with pytest.raises(CorruptError):
            list(stage.iter_decode(coded, raw.size + 1, piece))


def test_truncated_zstd_fails_while_streaming():
    raw = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
    coded = Zstd(3).encode(memoryview(raw))
    with pytest.raises(CorruptError):
        list(Zstd().iter_decode(memoryview(coded[:-20]), raw.size, 4096))


def test_shuffle_scatter_reassembles_any_piece_boundaries():
    rng = np.random.default_rng(1)
    words = rng.integers(0, 256, 4 * 1001, dtype=np.uint8)
    shuffled = np.frombuffer(Shuffle(4).encode(memoryview(words)), dtype=np.uint8)
    out = np.zeros_like(words)
    cuts = np.sort(rng.choice(np.arange(1, shuffled.size), 9, replace=False))
    start = 0
    for part in np.split(shuffled, cuts):
        Shuffle(4).scatter(part, start, out)
        start += part.size
    assert np.array_equal(out, words)


def _entropy_bytes(words: np.ndarray) -> float:
    _, counts = np.unique(words, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) * words.size / 8


@pytest.mark.parametrize("scale, dtype", [(0.6, np.int8), (4, np.int8), (30, np.int8), (200, np.int16)])
def test_rans_round_trips_near_the_order0_entropy(scale, dtype):
    from nncodec.coding import Rans

    rng = np.random.default_rng(int(scale))
    info = np.iinfo(dtype)
    words = np.clip(np.round(rng.laplace(size=100_003) * scale), info.min, info.max).astype(dtype)
    stage = Rans(np.dtype(dtype).itemsize, True)
    coded = stage.encode(memoryview(words.view(np.uint8)))
    assert len(coded) <= 1.01 * _entropy_bytes(words) + 16 + 6 * np.unique(words).size
    np.testing.assert_array_equal(roundtrip(stage, words), words)


def test_rans_edge_alphabets_and_unsigned_words():
    from nncodec.coding import Rans

    for words in (np.zeros(0, np.uint8), np.full(7, 200, np.uint8), np.array([0, 255, 255, 1], np.uint8),
                  np.arange(30_000, dtype=np.uint16)):  # 30000 distinct symbols: near the 2^15 limit
        stage = Rans(words.itemsize, False)
        np.testing.assert_array_equal(roundtrip(stage, words), words)
    with pytest.raises(ConfigError, match="symbols"):
        Rans(2, False).encode(memoryview(np.arange(40_000, dtype=np.uint16).view(np.uint8)))


def test_rans_frequencies_sum_exactly_and_keep_every_symbol():
    from nncodec.coding.rans_stage import quantize_frequencies

    rng = np.random.default_rng(5)
    for counts in (np.array([1, 10**9]), np.array([5] * 3), rng.integers(1, 10**6, 20_000), np.array([1] * 32768)):
        freq = quantize_frequencies(counts)
        assert freq.sum() == 1 << 16 and freq.min() >= 1
        p, q = counts / counts.sum(), freq / freq.sum()
        lost = float((p * np.log2(p / q)).sum())  # bits per symbol lost to the rounding
        assert lost <= 0.003 * max(1.0, float(-(p * np.log2(p)).sum()))


def test_rans_random_damage_is_a_corrupt_error_never_a_crash():
    from nncodec.coding import Rans

    rng = np.random.default_rng(11)
    words = np.clip(np.round(rng.laplace(size=5000) * 5), -100, 100).astype(np.int8)
    coded = bytearray(Rans(1, True).encode(memoryview(words.view(np.uint8))))
    caught = 0
    for trial in range(300):
        bad = bytearray(coded)
        for at in rng.integers(0, len(bad), 1 + trial % 4):
            bad[at] = rng.integers(0, 256)
        if trial % 5 == 0:
            bad = bad[:rng.integers(0, len(bad))]
        try:
            out = np.empty(words.size, np.uint8)
            Rans(1, True).decode_into(memoryview(bytes(bad)), out)
        except (CorruptError, TruncatedError):
            caught += 1
    assert caught >= 250  # damage that leaves a decodable stream must still end at the encoder's start state


def test_a_registered_entropy_stage_joins_the_encoders_candidates_without_editing_it():
    import numpy as np

    from nncodec.coding import stage as stage_module
    from nncodec.coding.symbol_stage import SymbolStage
    from nncodec.encoder import _candidates

    class Tally(SymbolStage):
        """A stand-in entropy coder: stores the words (enough to show the encoder picks it up)."""

        stage_id, codec_id, word_sizes, entropy, preference = 250, "tally_test", (1,), True, 99

        def encode(self, data):
            return bytes(data)

        def decoded_size(self, data):
            return len(data)

        def iter_decode(self, data, size, piece_bytes):
            yield np.frombuffer(data, np.uint8)

    stage_module.register_stage(Tally)
    try:
        chosen = [p.stages for p in _candidates(1, 4, True, 0.0, 3) if len(p.stages) == 1 and p.stages[0].entropy]
        assert chosen == [(Tally(1, True),)]  # the most preferred entropy stage, in place of rANS
        assert not any(isinstance(s, Tally) for p in _candidates(2, 12, True, 0.0, 3) for s in p.stages)
    finally:
        del stage_module.REGISTRY[250]
    assert all(type(p.stages[0]).codec_id == "rans" for p in _candidates(1, 4, True, 0.0, 3)
               if len(p.stages) == 1 and p.stages[0].entropy)

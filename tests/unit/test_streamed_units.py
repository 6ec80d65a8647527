"""Large tensor units are read from the file as they are decoded; that must change nothing a user sees."""

import numpy as np
import pytest

import nncodec
from nncodec.bitstream import reader
from nncodec.conformance.runner import run_conformance
from nncodec.conformance.vectors import default_vectors_dir
from nncodec.decoder import decode_arrays, read_info
from nncodec.errors import ChecksumError, TruncatedError


def _count_streamed(monkeypatch) -> list:
    made = []
    original = reader.StreamedPayload.__init__

    def counting(self, *args, **kwargs):
        made.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(reader.StreamedPayload, "__init__", counting)
    return made


@pytest.fixture()
def stream_everything(monkeypatch):
    """Stream every tensor unit over 16 bytes, with a 16-byte prefix (headers are mostly longer: the
    fallback runs too). Yields the list that counts streamed units."""
    monkeypatch.setattr(reader, "STREAM_PAYLOAD_BYTES", 0)
    monkeypatch.setattr(reader, "_PREFIX_BYTES", 16)
    monkeypatch.setattr(reader, "_FINISH_CHUNK", 7)
    return _count_streamed(monkeypatch)


@pytest.fixture()
def stream_after_headers(monkeypatch):
    """Stream every tensor unit over 200 bytes, with a 200-byte prefix."""
    monkeypatch.setattr(reader, "STREAM_PAYLOAD_BYTES", 0)
    monkeypatch.setattr(reader, "_PREFIX_BYTES", 200)
    return _count_streamed(monkeypatch)


ARRAYS = {
    "floats": np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32),
    "ints": np.arange(5000, dtype=np.int64) % 7,
    "sparse": np.where(np.random.default_rng(1).random(4000) < 0.9, 0, 3).astype(np.int8),
}


@pytest.mark.parametrize("options", [{}, {"rel_step": 0.05}, {"bits": 4},
                                     {"pipeline": [{"id": "shuffle", "element_size": 4}, {"id": "zstd"}]}])
@pytest.mark.parametrize("mode", ["stream_everything", "stream_after_headers"])
def test_streamed_decode_equals_in_memory_decode(tmp_path, options, mode, request):
    arrays = ARRAYS if "pipeline" not in options else {"floats": ARRAYS["floats"]}
    path = tmp_path / "m.nnc"
    # one unit per tensor, so that every tensor is in a unit that streams (none in a tensor group)
    nncodec.encode_arrays(arrays, path, **options, **({} if "pipeline" in options else {"group_tensors": False}))
    expected = decode_arrays(path.read_bytes())
    streamed = request.getfixturevalue(mode)
    got = decode_arrays(path)
    assert streamed
    assert list(got) == list(expected)
    for k in expected:
        assert np.array_equal(got[k], expected[k]), k
    assert [u.tensor["coded_bytes"] for u in read_info(path).units if u.tensor] == \
        [u.tensor["coded_bytes"] for u in read_info(path.read_bytes()).units if u.tensor]


def test_every_conformance_vector_gives_the_same_verdict_when_streamed(stream_after_headers):
    failed = [(o.vector.name, o.detail) for o in run_conformance(default_vectors_dir()) if not o.passed]
    assert not failed
    assert len(stream_after_headers) >= 10


def test_every_conformance_vector_gives_the_same_verdict_with_tiny_prefixes(stream_everything):
    failed = [(o.vector.name, o.detail) for o in run_conformance(default_vectors_dir()) if not o.passed]
    assert not failed
    assert len(stream_everything) >= 40


@pytest.mark.parametrize("where", [0.3, 0.6, 0.999])
def test_a_flipped_payload_byte_is_a_checksum_error(tmp_path, stream_after_headers, where):
    path = tmp_path / "m.nnc"
    nncodec.encode_arrays({"floats": ARRAYS["floats"]}, path)
    unit = next(u for u in read_info(path).units if u.tensor)
    data = bytearray(path.read_bytes())
    data[unit.offset + 16 + int(where * (unit.size - 17))] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        decode_arrays(path)
    with pytest.raises(ChecksumError):
        read_info(path)


def test_a_truncated_streamed_unit_is_reported_before_decoding(tmp_path, stream_after_headers):
    path = tmp_path / "m.nnc"
    nncodec.encode_arrays({"floats": ARRAYS["floats"]}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(TruncatedError, match="unit payload"):
        decode_arrays(path)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_decoding_keeps_order_values_and_errors(tmp_path, workers, monkeypatch):
    import nncodec.decoder as dec

    monkeypatch.setattr(dec, "_AHEAD_BYTES", 3000)  # a small window: the read-ahead limit is exercised
    rng = np.random.default_rng(2)
    arrays = {f"t{i:02d}": rng.standard_normal((40, 30)).astype(np.float32) for i in range(12)}
    path = tmp_path / "m.nnc"
    nncodec.encode_arrays(arrays, path, rel_step=0.05, group_tensors=False)  # twelve units to decode in parallel
    serial = list(dec.iter_tensors(path, workers=1))
    parallel = list(dec.iter_tensors(path, workers=workers))
    assert [th.name for th, _ in parallel] == [th.name for th, _ in serial] == sorted(arrays)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(serial, parallel))
    data = bytearray(path.read_bytes())
    unit = [u for u in read_info(path).units if u.tensor][7]
    data[unit.offset + unit.size - 3] ^= 0x10
    got = []
    with pytest.raises(ChecksumError) as info:
        for th, _ in dec.iter_tensors(bytes(data), workers=workers):
            got.append(th.name)
    assert got == sorted(arrays)[:7] and info.value.unit_index == unit.index
    with pytest.raises(ValueError, match="workers"):
        list(dec.iter_tensors(path, workers=0))


def test_prefetched_keeps_order_raises_in_order_and_stops_early():
    import threading

    from nncodec.coding.prefetch import prefetched

    assert list(prefetched(iter(range(50)))) == list(range(50))

    def failing():
        yield 1
        yield 2
        raise ValueError("third")

    got = []
    with pytest.raises(ValueError, match="third"):
        for x in prefetched(failing()):
            got.append(x)
    assert got == [1, 2]
    made = []

    def endless():
        while True:
            made.append(1)
            yield len(made)

    it = prefetched(endless())
    assert next(it) == 1
    it.close()  # the caller stops: the helper thread ends
    assert not any(t.name == "nncodec-prefetch" for t in threading.enumerate())
    assert len(made) <= 3  # at most two items beyond the one held


def test_unshuffling_behind_a_prefetching_zstd_thread(tmp_path, monkeypatch, stream_after_headers):
    from nncodec.coding import pipeline

    monkeypatch.setattr(pipeline, "_PIECE_BYTES", 1000)  # many pieces through the 3-buffer ring
    rng = np.random.default_rng(4)
    arrays = {"w": rng.standard_normal((123, 77)).astype(np.float32)}
    path = tmp_path / "m.nnc"
    nncodec.encode_arrays(arrays, path, pipeline=[{"id": "shuffle", "element_size": 4}, {"id": "zstd"}])
    assert np.array_equal(decode_arrays(path)["w"], arrays["w"])
    data = bytearray(path.read_bytes())
    unit = next(u for u in read_info(path).units if u.tensor)
    data[unit.offset + unit.size // 2] ^= 0x01  # inside the zstd frame: fails in the helper thread
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):  # the unit's CRC explains the corrupt frame
        decode_arrays(path)

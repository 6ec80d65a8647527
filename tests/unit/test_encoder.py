import numpy as np
import pytest

import nncodec
from nncodec.bitstream.constants import UNIT_HEADER_SIZE
from nncodec.encoder import choose_pipeline
from nncodec.errors import ConfigError


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv.weight": rng.standard_normal((8, 4, 3, 3)).astype(np.float32),
            "conv.bias": rng.standard_normal(8).astype(np.float32),
            "steps": np.array(7, dtype=np.int64),
            "emb": rng.standard_normal((50, 16)).astype(np.float16)}


def test_same_input_gives_identical_bytes_whatever_the_dict_order():
    a = _arrays()
    b = dict(reversed(list(a.items())))
    for opts in ({}, {"bits": 6}, {"step": 0.01, "level": 19}):
        assert nncodec.encode(a, **opts) == nncodec.encode(b, **opts)


def test_stack_compression_pays_on_sparse_int8_and_never_inflates_dense():
    rng = np.random.default_rng(0)
    sparse = (rng.integers(-127, 128, 100_000) * (rng.random(100_000) < 0.1)).astype(np.int8)
    raw = sparse.view(np.uint8)
    from nncodec.coding.pipeline import Pipeline
    from nncodec.coding import ZeroWords, Zstd
    chosen, payload = choose_pipeline(raw, 1, 8, True)
    stacked = Pipeline((ZeroWords(1), Zstd(3))).encode(memoryview(raw))
    assert len(stacked) < len(Pipeline((Zstd(3),)).encode(memoryview(raw)))  # stack compression pays
    assert len(payload) <= len(stacked)  # and the choice is at least as good
    dense = rng.integers(-128, 128, 100_000).astype(np.int8)  # incompressible: all words non-zero
    p, payload = choose_pipeline(dense.view(np.uint8), 1, 8, True)
    assert len(payload) <= dense.size
    assert all(s.codec_id != "zero_words" for s in p.stages)
    data = nncodec.encode({"d": dense})
    assert len(data) <= dense.size + 200  # file header + stream/end units + one tensor unit header


def test_unit_never_larger_than_raw_plus_header():
    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.int64, np.uint8):
        a = rng.integers(0, 255, 4096).astype(dtype) if dtype != np.float32 else rng.random(4096, dtype=np.float32)
        _, report = nncodec.Encoder().encode({"a": (a, nncodec.encoder.numpy_storage(a)[1])})
        t = report.tensors[0]
        assert t.unit_bytes <= a.nbytes + UNIT_HEADER_SIZE + 64


def test_quantization_report_and_lossless_patterns():
    a = _arrays()
    _, report = nncodec.Encoder(bits=4, lossless=["emb"]).encode(nncodec.encoder.numpy_tensors(a))
    by = {t.name: t for t in report.tensors}
    assert by["emb"].scheme == "none" and by["emb"].max_abs_error == 0
    assert by["conv.weight"].scheme == "uniform" and by["conv.weight"].bits == 4
    assert by["conv.bias"].bits == 16  # rank-1 tensors finer by default
    assert 0 < by["conv.weight"].rms_error <= by["conv.weight"].max_abs_error
    w = a["conv.weight"]
    bound = np.abs(w).reshape(8, -1).max(1).max() / 7 / 2
    assert by["conv.weight"].max_abs_error <= bound * 1.0001
    assert by["steps"].scheme == "none"
    out = nncodec.decode_arrays(nncodec.encode(a, bits=4, lossless=["emb"]))
    assert out["emb"].tobytes() == a["emb"].tobytes()
    assert np.abs(out["conv.weight"] - w).max() == pytest.approx(by["conv.weight"].max_abs_error, rel=1e-6)


def test_relative_step_quantization():
    rng = np.random.default_rng(0)
    a = {"big.weight": (rng.standard_normal((32, 64)) * 3).astype(np.float32),
         "emb.weight": rng.standard_normal((50, 16)).astype(np.float32), "b": rng.standard_normal(32).astype(np.float32)}
    _, report = nncodec.Encoder(rel_step=0.1, step_scales={"emb*": 2.0}).encode(nncodec.encoder.numpy_tensors(a))
    by = {t.name: t for t in report.tensors}
    assert by["big.weight"].max_abs_error <= 0.1 * a["big.weight"].std() / 2 * 1.001
    assert by["emb.weight"].max_abs_error <= 0.2 * a["emb.weight"].std() / 2 * 1.001
    assert by["emb.weight"].max_abs_error > 0.1 * a["emb.weight"].std() / 2  # the factor applied
    assert by["b"].max_abs_error <= 0.1 * a["b"].std() / 32 * 1.001
    with pytest.raises(ConfigError):
        nncodec.encode(a, bits=4, rel_step=0.1)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError):
        nncodec.encode(_arrays(), bits=4, step=0.1)
    with pytest.raises(ConfigError):
        nncodec.encode(_arrays(), bits=17)
    with pytest.raises(ConfigError):
        nncodec.encode(_arrays(), level=40)
    with pytest.raises(ConfigError, match="NaN"):
        nncodec.encode({"x": np.array([1.0, np.nan], np.float32)}, bits=8)
    with pytest.raises(ConfigError):
        nncodec.encode({"x": np.zeros(2, np.complex64)})
    with pytest.raises(ConfigError, match="too fine"):
        nncodec.encode({"x": np.array([1e30], np.float32)}, step=1e-6)


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    dst = tmp_path / "m.nnc"
    dst.write_bytes(b"old")
    import nncodec.atomic as atomic

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "fsync", boom)
    with pytest.raises(OSError):
        nncodec.encode(_arrays(), dst)
    assert dst.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [dst]
    monkeypatch.undo()
    assert nncodec.encode(_arrays(), dst) == dst
    assert set(nncodec.decode_arrays(dst)) == set(_arrays())


def test_default_pipeline_goes_to_model_parameter_set():
    rng = np.random.default_rng(0)
    a = {f"t{i}": rng.standard_normal((16, 16)).astype(np.float32) for i in range(4)}
    info = nncodec.read_info(nncodec.encode(a, bits=8, group_tensors=False))
    types = [u.type for u in info.units]
    assert types[:2] == ["stream_header", "model_parameter_set"]
    assert any(u.tensor and u.tensor["default_pipeline"] for u in info.units)


def test_large_code_arrays_try_only_pipelines_that_can_beat_the_order0_entropy():
    from nncodec.encoder import _candidates, choose_pipeline

    big = _candidates(1, 6, True, zero_fraction=0.2, level=3, n_words=1 << 20)
    ids = [tuple(s.codec_id for s in p.stages) for p in big]
    assert ("rans",) in ids and ("bitpack",) not in ids and not any(i[:1] == ("zero_words",) for i in ids)
    assert all(i in ((), ("rans",)) or i[-1] == "zstd" for i in ids)
    small = [tuple(s.codec_id for s in p.stages) for p in _candidates(1, 6, True, 0.2, 3, n_words=500)]
    assert ("bitpack",) in small and ("zero_words",) in small  # small tensors: headers matter, try all
    sparse = [tuple(s.codec_id for s in p.stages) for p in _candidates(1, 6, True, 0.9, 3, n_words=1 << 20)]
    assert ("zero_words", "zstd") in sparse

    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.laplace(size=300_000) * 4), -31, 31).astype(np.int8)
    pipeline, payload = choose_pipeline(codes.view(np.uint8), 1, 6, True)
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    assert [s.codec_id for s in pipeline.stages] == ["rans"]
    assert len(payload) <= 1.01 * float(-(p * np.log2(p)).sum()) * codes.size / 8


@pytest.mark.parametrize("arrays,options,limit", [
    ({"n" * 5000: np.ones(2, np.float32)}, {}, "max_name_bytes"),
    ({"deep": np.ones([1] * 40, np.float32)}, {}, "max_ndim"),
    ({"a": np.ones(2, np.float32)}, {"metadata": {"k": "x" * (2 << 20)}}, "max_metadata_bytes"),
    ({"a": np.ones(100, np.float32)}, {"limits": nncodec.Limits(max_tensor_elements=99)}, "max_tensor_elements"),
    ({"a": np.ones(100, np.float32)}, {"limits": nncodec.Limits(max_total_decoded_bytes=399)},
     "max_total_decoded_bytes"),
    ({"a": np.ones(1, np.float32), "b": np.ones(1, np.float32)}, {"limits": nncodec.Limits(max_units=4)},
     "max_units"),
    ({"a": np.arange(1000, dtype=np.float32)}, {"limits": nncodec.Limits(max_unit_bytes=1000)}, "max_unit_bytes"),
])
def test_the_encoder_refuses_what_its_decoder_would_refuse(arrays, options, limit):
    limits = options.get("limits", nncodec.DEFAULT_LIMITS)
    with pytest.raises(nncodec.LimitExceededError, match=limit):
        nncodec.encode(arrays, **options)
    # what encodes decodes with the same limits: just under each limit
    ok = {"max_name_bytes": ({"n" * 4096: np.ones(2, np.float32)}, {}),
          "max_ndim": ({"deep": np.ones([1] * 32, np.float32)}, {}),
          "max_metadata_bytes": ({"a": np.ones(2, np.float32)}, {"metadata": {"k": "x" * ((1 << 20) - 10)}}),
          "max_tensor_elements": ({"a": np.ones(99, np.float32)}, options),
          "max_total_decoded_bytes": ({"a": np.ones(99, np.float32)}, options),
          "max_units": ({"a": np.ones(1, np.float32)}, options),
          "max_unit_bytes": ({"a": np.zeros(1000, np.float32)}, options)}[limit]
    data = nncodec.encode(*ok[:1], **ok[1])
    assert set(nncodec.decode_arrays(data, limits=limits)) == set(ok[0])


def test_encoder_api_takes_numpy_arrays_and_refuses_bad_names_and_options():
    a = np.arange(6, dtype=np.int16).reshape(2, 3)
    data, report = nncodec.Encoder().encode({"a": a})
    assert report.tensors[0].name == "a"
    np.testing.assert_array_equal(nncodec.decode_arrays(data)["a"], a)
    with pytest.raises(ConfigError, match="names"):
        nncodec.Encoder().encode({"a": a, 1: a})
    with pytest.raises(ConfigError, match="names"):
        nncodec.encode({"a": a, 2: a})
    with pytest.raises(ConfigError, match="unknown encode option"):
        nncodec.encode({"a": a}, bitz=4)
    with pytest.raises(ConfigError, match="unknown encode option"):
        nncodec.encode_arrays({"a": a}, workers=2)
    with pytest.raises(ConfigError, match="'a'"):
        nncodec.Encoder().encode({"a": "text"})
    with pytest.raises(ConfigError, match="workers"):
        list(nncodec.iter_tensors(data, workers=0))


@pytest.mark.parametrize("kwargs", [{"pipeline": "zstd"}, {"pipeline": {"id": "zstd"}}, {"pipeline": 5},
                                    {"pipeline": ["zstd"]}, {"lossless": True}, {"lossless": [1]}])
def test_malformed_pipeline_and_lossless_options_are_config_errors(kwargs):
    with pytest.raises(ConfigError, match="pipeline must be|lossless must be"):
        nncodec.encode_arrays({"w": np.ones((8, 8), np.float32)}, **kwargs)


def test_lossless_patterns_from_a_generator_are_all_kept():
    arrays = {"w": np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8), "v": np.ones(4, np.float32)}
    data = nncodec.encode_arrays(arrays, bits=4, lossless=(p for p in ["w"]))
    assert np.array_equal(nncodec.decode_arrays(data)["w"], arrays["w"])


def _pipeline_encodes(monkeypatch):
    """Record (stage ids, input bytes) of every Pipeline.encode."""
    from nncodec.coding.pipeline import HandedWords, Pipeline

    calls, encode = [], Pipeline.encode

    def counted(self, words):
        n = words.array.size if isinstance(words, HandedWords) else memoryview(words).nbytes
        calls.append((tuple(s.codec_id for s in self.stages), n))
        return encode(self, words)

    monkeypatch.setattr(Pipeline, "encode", counted)
    return calls


@pytest.mark.parametrize("n", [300_000, 3_000_000])  # tried whole, and on a sample
def test_screening_on_a_quarter_drops_clearly_larger_candidates_and_keeps_the_choice(monkeypatch, n):
    import nncodec.encoder as enc

    rng = np.random.default_rng(1)
    codes = np.clip(np.round(rng.laplace(size=n) * 40), -2000, 2000).astype(np.int16).view(np.uint8)
    monkeypatch.setattr(enc, "_SCREEN_MARGIN", float("inf"))  # no candidate dropped: every one tried in full
    calls = _pipeline_encodes(monkeypatch)
    unscreened = choose_pipeline(codes.copy(), 2, 12, True)
    full = {c for c, size in calls if size == min(codes.size, enc._SAMPLE_SLICES * enc._SAMPLE_SLICE_BYTES)}
    assert {("zstd",), ("shuffle", "zstd"), ("rans",)} <= full
    monkeypatch.setattr(enc, "_SCREEN_MARGIN", 1.05)
    calls.clear()
    assert choose_pipeline(codes.copy(), 2, 12, True) == unscreened  # the same pipeline and payload
    sample = min(codes.size, enc._SAMPLE_SLICES * enc._SAMPLE_SLICE_BYTES)
    assert {c for c, size in calls if size == sample} == {("rans",)}  # zstd's were 20-40 % larger on the quarter
    assert any(sample // 5 < size <= sample // 4 for _, size in calls)  # screened on a quarter
    if codes.size <= enc._SAMPLE_THRESHOLD:  # tried whole: the chosen trial is the payload, not coded again
        assert [c for c, size in calls if c == ("rans",)] == [("rans",)] * 2

"""Incremental (delta) updates: exact lossless round trip, quantized error bound, wrong base refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import nncodec
from nncodec.bitstream.constants import FILE_HEADER_SIZE, UNIT_BASE_REFERENCE, UNIT_END, UNIT_HEADER, UNIT_HEADER_SIZE
from nncodec.bitstream.units import EndOfStream, frame_unit
from nncodec.delta import BaseMismatchError, BaseReference, content_hash
from nncodec.errors import CorruptError, UnknownUnitError
from tests.benchmarks.bench_small_streams import encoder_without_acode


def _units(data: bytes) -> list[bytes]:
    """The framed units of a stream, in order (after the file header)."""
    pos, out = FILE_HEADER_SIZE, []
    while pos < len(data):
        length = UNIT_HEADER.unpack_from(data, pos)[3]
        out.append(data[pos:pos + UNIT_HEADER_SIZE + length])
        pos += UNIT_HEADER_SIZE + length
    return out


def split_base_reference(data: bytes) -> tuple[BaseReference, bytes]:
    """The base reference of a delta stream, and the stream without it (end-of-stream recounted), which
    ``read_info`` reads: for inspecting a delta's tensor units."""
    units = _units(data)
    ref = next(BaseReference.parse(u[UNIT_HEADER_SIZE:], 0) for u in units if u[0] == UNIT_BASE_REFERENCE)
    end = units[-1]
    assert end[0] == UNIT_END
    tensors = int.from_bytes(end[UNIT_HEADER_SIZE + 4:UNIT_HEADER_SIZE + 8], "little")
    kept = [u for u in units[:-1] if u[0] != UNIT_BASE_REFERENCE]
    recounted = frame_unit(UNIT_END, EndOfStream(len(kept), tensors).to_bytes())
    return ref, data[:FILE_HEADER_SIZE] + b"".join(kept) + recounted


def _pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(11)
    base = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 8))
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
        tuned[0].weight[0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40])
    tuned[1].num_batches_tracked += 3
    return base, tuned


def test_lossless_delta_round_trips_bit_exactly() -> None:
    base, tuned = _pair()
    data = nncodec.encode(tuned, base=base)
    out = nncodec.decode(data, base=base)
    want = tuned.state_dict()
    assert sorted(out) == sorted(want)
    for k, v in want.items():
        assert out[k].dtype == v.dtype
        a, b = out[k].numpy(), v.numpy()
        assert a.tobytes() == b.tobytes(), k  # bit patterns, NaN and -0 included
    fresh = copy.deepcopy(base)
    nncodec.load_into(fresh, data, base=base)
    assert fresh.state_dict()["3.bias"].numpy().tobytes() == want["3.bias"].numpy().tobytes()


def test_base_given_as_a_stream_or_state_dict() -> None:
    base, tuned = _pair()
    base_stream = nncodec.encode(base)
    data = nncodec.encode(tuned, base=base_stream)
    assert content_hash(nncodec.torch_io.tensors_from(base.state_dict())) == split_base_reference(data)[0].digest
    out = nncodec.decode(data, base=base.state_dict())
    assert torch.equal(out["3.weight"], tuned.state_dict()["3.weight"])


def test_wrong_or_missing_base_is_refused() -> None:
    base, tuned = _pair()
    data = nncodec.encode(tuned, base=base)
    other = copy.deepcopy(base)
    with torch.no_grad():
        other[3].bias[0] += 1e-7
    with pytest.raises(BaseMismatchError, match="wrong base"):
        nncodec.decode(data, base=other)
    with pytest.raises(UnknownUnitError, match="base="):
        nncodec.decode(data)  # a decoder without the delta unit stops instead of returning differences
    with pytest.raises(nncodec.ConfigError, match="not a delta"):
        nncodec.decode(nncodec.encode(tuned), base=base)


def test_quantized_delta_has_the_full_encode_error_bound_and_is_small() -> None:
    base, tuned = _pair()
    with torch.no_grad():
        tuned[0].weight[0, :4] = 0.01
    delta = nncodec.encode(tuned, base=base, rel_step=0.05)
    full = nncodec.encode(tuned, rel_step=0.05, group_tensors=False)  # one unit per tensor, as in the delta
    assert len(delta) < 0.5 * len(full)
    out, ref = nncodec.decode(delta, base=base), nncodec.decode(full)
    info = {u.tensor["name"]: u.tensor for u in nncodec.read_info(split_base_reference(delta)[1]).units if u.tensor}
    for k, v in tuned.state_dict().items():
        if not v.is_floating_point() or v.dim() == 0:
            continue
        step = float(np.asarray(info[k]["scales"]).reshape(-1)[0]) if "scales" in info[k] else None
        err = float((out[k].double() - v.double()).abs().max())
        full_err = float((ref[k].double() - v.double()).abs().max())
        if step is not None:
            assert err <= step / 2 * (1 + 1e-5) + 1e-6 * float(v.abs().max()), (k, err, step)
        assert err <= 1.01 * full_err + 1e-6, (k, err, full_err)


def test_new_tensors_are_stored_whole() -> None:
    base, tuned = _pair()
    state = dict(tuned.state_dict())
    state["head.weight"] = torch.randn(3, 8)
    state["3.weight"] = torch.randn(9, 64)  # shape changed
    data = nncodec.encode(state, base=base)
    assert sorted(split_base_reference(data)[0].whole) == ["3.weight", "head.weight"]
    out = nncodec.decode(data, base=base)
    assert torch.equal(out["head.weight"], state["head.weight"]) and torch.equal(out["3.weight"], state["3.weight"])


def test_damaged_base_reference_is_a_format_error() -> None:
    ref = BaseReference(bytes(32), ["a"]).to_bytes()
    with pytest.raises(CorruptError):
        BaseReference.parse(ref + b"x", 0)
    with pytest.raises(CorruptError):
        BaseReference.parse(ref[:-1], 0)
    with pytest.raises(nncodec.UnsupportedFeatureError):
        BaseReference.parse(b"\x02" + ref[1:], 0)


def test_delta_conformance_vectors_rebuild_and_plain_decoders_refuse_them() -> None:
    from nncodec.conformance.delta_vectors import DELTA, check_delta_vector
    from nncodec.conformance.runner import run_conformance
    from nncodec.conformance.vectors import default_vectors_dir, load_manifest

    folder = default_vectors_dir()
    deltas = [v for v in load_manifest(folder) if "delta" in v.extra]
    assert sorted(v.name for v in deltas) == sorted(DELTA)
    for v in deltas:
        assert check_delta_vector(folder, v) is None, v.name
        assert v.error == "UnknownUnitError"
    outcomes = {o.vector.name: o for o in run_conformance(folder) if o.vector.name in DELTA}
    assert all(o.passed for o in outcomes.values()), {n: o.detail for n, o in outcomes.items()}


def test_tied_tensors_the_base_lacks_round_trip() -> None:
    base, _ = _pair()
    tied = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tuned = {k: v.clone() for k, v in base.state_dict().items()}
    tuned["emb.weight"], tuned["head.weight"] = tied, tied  # one storage, two names, not in the base
    data = nncodec.encode(tuned, base=base)
    out = nncodec.decode(data, base=base)
    assert torch.equal(out["emb.weight"], tied) and torch.equal(out["head.weight"], tied)


def test_unknown_delta_option_is_a_config_error() -> None:
    base, tuned = _pair()
    with pytest.raises(nncodec.ConfigError, match="bogus"):
        nncodec.encode(tuned, base=base, bogus=1)


def _arrays_pair(change: float = 2e-3) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(21)
    base = {"conv.weight": (rng.standard_normal((16, 8, 3, 3)) * 0.05).astype(np.float32),
            "fc.weight": (rng.standard_normal((10, 64)) * 0.1).astype(np.float16),
            "fc.bias": (rng.standard_normal(10) * 0.1).astype(np.float32)}
    tuned = {k: (v.astype(np.float32) + rng.standard_normal(v.shape).astype(np.float32) * change).astype(v.dtype)
             for k, v in base.items()}
    return base, tuned


@pytest.mark.parametrize("options", [{"rel_step": 0.05}, {"bits": 8}, {"step": 0.004}])
def test_grid_aligned_delta_decodes_to_exactly_the_full_encode(options: dict) -> None:
    base, tuned = _arrays_pair(change=5e-4)
    with encoder_without_acode():  # format 1.3 (stage 8 would make it 1.6: test_acode.py covers that)
        delta = nncodec.encode(tuned, base=base, **options)
        full = nncodec.encode(tuned, **options)
    ref, _ = split_base_reference(delta)
    assert ref.grid_aligned and delta[8:12] == b"\x01\x00\x03\x00"  # format 1.3
    got, want = nncodec.decode_arrays(delta, base=base), nncodec.decode_arrays(full)
    for k in tuned:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k
    assert len(delta) < 0.5 * len(full)


def test_grid_aligned_delta_with_unroundable_base_values_still_rebuilds_the_full_encode() -> None:
    base, tuned = _arrays_pair()
    base["conv.weight"][0, 0, 0, :3] = [np.nan, np.inf, 3e38]  # base codes 0 there (FORMAT.md §12.5)
    delta = nncodec.encode(tuned, base=base, rel_step=0.05)
    got, want = nncodec.decode_arrays(delta, base=base), nncodec.decode_arrays(nncodec.encode(tuned, rel_step=0.05))
    assert np.array_equal(got["conv.weight"], want["conv.weight"])


def test_grid_aligned_delta_rate_falls_as_lambda_grows_and_error_stays_bounded() -> None:
    base, tuned = _arrays_pair(change=5e-3)
    sizes, errors = [], []
    for lam in (0.0, 0.05, 0.3):
        delta = nncodec.encode(tuned, base=base, rel_step=0.05, rate_lambda=lam)
        got = nncodec.decode_arrays(delta, base=base)
        sizes.append(len(delta))
        errors.append(max(float(np.abs(got[k].astype(np.float64) - tuned[k]).max()) for k in tuned))
    assert sizes[0] > sizes[1] > sizes[2]
    assert errors[0] <= errors[2]


def test_base_reference_flags_other_than_grid_aligned_are_corrupt() -> None:
    ref = BaseReference(bytes(32), [], flags=1)
    assert BaseReference.parse(ref.to_bytes(), 0).grid_aligned
    raw = bytearray(ref.to_bytes())
    raw[1] = 0x03
    with pytest.raises(CorruptError, match="reserved"):
        BaseReference.parse(bytes(raw), 0)


def test_numpy_delta_needs_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, numpy as np, nncodec\n"
            "b = {'w': np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)}\n"
            "t = {'w': b['w'] + np.float32(0.01)}\n"
            "d = nncodec.encode(t, base=b, rel_step=0.05)\n"
            "assert np.array_equal(nncodec.decode_arrays(d, base=b)['w'], "
            "nncodec.decode_arrays(nncodec.encode(t, rel_step=0.05))['w'])\n"
            "print(sorted(m for m in ('torch', 'numba', 'llvmlite') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_delta_decodes_from_a_one_pass_file_object_and_refuses_a_misplaced_base_reference() -> None:
    """Decoding walks the stream once (a reader without seek works) and keeps the unit-order rules: the base
    reference comes once, before every tensor."""
    import io

    from nncodec.bitstream.constants import UNIT_TENSOR

    base, tuned = _pair()
    data = nncodec.encode(tuned, base=base)

    class OnePass(io.RawIOBase):
        def __init__(self, b: bytes):
            self._f = io.BytesIO(b)

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # noqa: ANN001
            chunk = self._f.read(len(buf))
            buf[:len(chunk)] = chunk
            return len(chunk)

    want = nncodec.decode(data, base=base)
    got = nncodec.decode(OnePass(data), base=base)
    assert sorted(got) == sorted(want)
    assert all(got[k].numpy().tobytes() == want[k].numpy().tobytes() for k in want)  # NaN included

    units = _units(data)
    kinds = [u[0] for u in units]
    ref_at, first_tensor = kinds.index(UNIT_BASE_REFERENCE), kinds.index(UNIT_TENSOR)
    moved = units[:ref_at] + units[ref_at + 1:first_tensor + 1] + [units[ref_at]] + units[first_tensor + 1:]
    with pytest.raises(CorruptError, match="base reference after tensor") as err:
        nncodec.decode(data[:FILE_HEADER_SIZE] + b"".join(moved), base=base)
    assert err.value.unit_index == first_tensor
    twice = units[:ref_at + 1] + [units[ref_at]] + units[ref_at + 1:]
    with pytest.raises(CorruptError, match="second base reference"):
        nncodec.decode(data[:FILE_HEADER_SIZE] + b"".join(twice), base=base)


def test_a_delta_with_a_later_stage_keeps_that_stages_minor_version() -> None:
    rng = np.random.default_rng(4)
    base = {"w": rng.normal(size=(16, 16)).astype(np.float32)}
    tuned = {"w": base["w"].copy()}  # unchanged: every grid-aligned code is 0, which the dependent stage takes
    data = nncodec.encode(tuned, base=base, bits=8, pipeline=[{"id": "dependent", "word_size": 1, "chain": 16}])
    assert data[8:12] == b"\x01\x00\x05\x00"  # 1.5 (stage 7), not the grid-aligned delta's 1.3
    assert tuple(nncodec.read_info(split_base_reference(data)[1]).version) == (1, 5)  # the stream header's too
    assert np.array_equal(nncodec.decode_arrays(data, base=base)["w"], nncodec.decode_arrays(
        nncodec.encode(tuned, bits=8))["w"])

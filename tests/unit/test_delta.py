"""Incremental (delta) updates: exact lossless round trip, quantized error bound, wrong base refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import nncodec
from nncodec.delta import BaseMismatchError, BaseReference, content_hash, split_base_reference
from nncodec.errors import CorruptError, UnknownUnitError


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
    full = nncodec.encode(tuned, rel_step=0.05)
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

"""Scalable streams (FORMAT.md §13): operating points nested in one stream, decoded at any point."""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pytest
import torch

import nncodec
from nncodec import decoder as decoder_module
from nncodec.bitstream.constants import UNIT_END, UNIT_OPERATING_POINTS, UNIT_REFINEMENT, UNIT_TENSOR
from nncodec.conformance.forge import join_units, split_units
from nncodec.models import seed_example_cnn
from nncodec.points import choose_point, read_operating_points
from nncodec.scalable import encode_scalable
from tests.benchmarks.bench_small_streams import encoder_without_acode

RNG = np.random.default_rng(1717)
TENSORS = {
    "conv.weight": RNG.laplace(size=(8, 4, 3, 3)).astype(np.float32),
    "conv.bias": RNG.standard_normal(8).astype(np.float32),
    "fc.weight": RNG.standard_normal((10, 64)).astype(np.float32),
    "half.weight": RNG.standard_normal((6, 5)).astype(np.float16),
    "steps": np.arange(7, dtype=np.int32),
}
POINTS = [{"bits": 3, "label": "small"}, {"bits": 5, "label": "mid"}, {"bits": 8, "label": "full"}]


class CountingReader(io.BytesIO):
    """A seekable source that counts the bytes a decoder reads from it."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.taken = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        out = super().read(n)
        self.taken += len(out)
        return out


@pytest.fixture(scope="module")
def scalable() -> tuple[bytes, object]:
    """Without stage 8 (format 1.6): the stream is the operating points' version 1.2 (test_acode.py covers a
    scalable stream whose base uses stage 8)."""
    with encoder_without_acode():
        return encode_scalable(TENSORS, POINTS)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[n].dtype == b[n].dtype and np.array_equal(a[n], b[n], equal_nan=True)
                                        for n in a)


@pytest.mark.parametrize("k", range(3))
def test_each_point_decodes_to_a_separate_encode_of_it(scalable, k):
    data, _ = scalable
    separate = nncodec.decode_arrays(nncodec.encode_arrays(TENSORS, bits=POINTS[k]["bits"]))
    assert _same(nncodec.decode_arrays(data, operating_point=k), separate)
    with nncodec.open(data, operating_point=k) as f:
        assert f.operating_point == k
        assert _same({n: f.get_array(n) for n in f.keys()}, separate)


def test_numpy_encode_takes_operating_points(scalable):
    data, _ = scalable
    with encoder_without_acode():  # as the fixture
        assert nncodec.encode(TENSORS, operating_points=POINTS) == data


def test_points_of_other_quantizers_and_a_lossless_last_point():
    points = [{"rel_step": 0.5}, {"rel_step": 0.05, "lossless": ["fc.*"]}, {}]
    data, report = encode_scalable(TENSORS, points, level=19, measure_separate=True)
    for k, opts in enumerate(points):
        separate = nncodec.decode_arrays(nncodec.encode_arrays(TENSORS, level=19, **opts))
        assert _same(nncodec.decode_arrays(data, operating_point=k), separate), k
    assert _same(nncodec.decode_arrays(data), TENSORS)  # default: the last point, here exact
    # scalable streams hold no tensor group, and so does the separate encode they are measured against
    assert report.separate_bytes[-1] == len(nncodec.encode_arrays(TENSORS, level=19, group_tensors=False))


def test_full_model_is_the_default_and_a_decoder_without_the_feature_reads_point_0(scalable, monkeypatch):
    data, _ = scalable
    assert _same(nncodec.decode_arrays(data), nncodec.decode_arrays(data, operating_point=2))
    base = nncodec.decode_arrays(data, operating_point=0)
    # a decoder that does not know units 0x06 and 0x11 skips them (both ancillary) and decodes point 0
    monkeypatch.setattr(decoder_module, "UNIT_OPERATING_POINTS", -1)
    monkeypatch.setattr(decoder_module, "UNIT_REFINEMENT", -2)
    assert _same(nncodec.decode_arrays(data), base)
    assert not _same(base, nncodec.decode_arrays(nncodec.encode_arrays(TENSORS, bits=8)))


def test_bytes_read_grow_with_the_point_and_match_the_listed_counts(scalable):
    data, report = scalable
    taken = []
    for k in range(3):
        src = CountingReader(data)
        nncodec.decode_arrays(src, operating_point=k)
        taken.append(src.taken)
    assert taken[0] < taken[1] < taken[2] == len(data)
    assert taken == [p.read_bytes for p in report.points]
    with nncodec.open(CountingReader(data), operating_point=0) as f:  # the lazy scan passes over them too
        assert f._f.taken < report.points[1].read_bytes
    # a source that cannot seek is read through (the skipped units are still not decoded)
    with pytest.raises(nncodec.ConfigError):
        nncodec.decode_arrays(io.BufferedReader(io.BytesIO(data)), operating_point=9)
    assert _same(nncodec.decode_arrays(_Unseekable(data), operating_point=0),
                 nncodec.decode_arrays(data, operating_point=0))


class _Unseekable(io.RawIOBase):
    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        chunk = self._buf.read(len(b))
        b[:len(chunk)] = chunk
        return len(chunk)


def test_open_and_info_list_the_points(scalable, tmp_path, capsys):
    data, report = scalable
    with nncodec.open(data) as f:
        points = f.operating_points
    assert [p.label for p in points] == ["small", "mid", "full"]
    assert [p.read_bytes for p in points] == [p.read_bytes for p in report.points]
    assert all(math.isnan(p.energy_pj) for p in points)
    info = nncodec.read_info(data)
    assert info.version == (1, 2)
    assert [u.type for u in info.units].count("refinement") == report.refinement_units > 0
    path = tmp_path / "s.nnc"
    path.write_bytes(data)
    from nncodec.cli import main

    assert main(["info", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["operating_points"]
    assert [p["label"] for p in listed] == ["small", "mid", "full"]
    assert main(["info", str(path)]) == 0
    assert "3 operating points" in capsys.readouterr().out


def test_energy_budget_picks_the_best_affordable_point():
    torch.manual_seed(0)
    model = seed_example_cnn()
    points = [{"bits": 2}, {"bits": 4}, {"bits": 8}]
    data, report = nncodec.encode_with_report(model, operating_points=points, energy_input_shape=(1, 28, 28))
    energies = [p.energy_pj for p in report.points]
    assert energies[0] < energies[1] < energies[2]
    assert read_operating_points(data)[1].energy_pj == energies[1]
    between = (energies[1] + energies[2]) / 2
    m = nncodec.load_model(data, energy_budget_pj=between)
    assert m.nncodec_operating_point == 1
    separate = nncodec.decode(nncodec.encode(model, bits=4))
    assert all(torch.equal(m.state_dict()[n], separate[n]) for n in separate)
    assert nncodec.load_model(data, energy_budget_pj=energies[2]).nncodec_operating_point == 2
    with pytest.raises(nncodec.ConfigError, match="cheapest point needs"):
        nncodec.load_model(data, energy_budget_pj=energies[0] / 2)
    with pytest.raises(nncodec.ConfigError, match="not both"):
        nncodec.load_model(data, energy_budget_pj=between, operating_point=0)
    # load_into at a point equals load_into of the separate file
    a, b = seed_example_cnn(), seed_example_cnn()
    nncodec.load_into(a, data, operating_point=0)
    nncodec.load_into(b, nncodec.encode(model, bits=2))
    assert all(torch.equal(a.state_dict()[n], b.state_dict()[n]) for n in a.state_dict())


def test_choose_point_prefers_measured_accuracy():
    from nncodec.bitstream.operating_points import OperatingPoint

    pts = [OperatingPoint(0, 1, 1, 10.0, 0.80), OperatingPoint(1, 2, 2, 20.0, 0.91),
           OperatingPoint(2, 3, 3, 30.0, 0.90), OperatingPoint(3, 4, 4, float("nan"), 0.99)]
    assert choose_point(pts, 35.0) == 1      # the most accurate affordable one, not the largest
    assert choose_point(pts, 15.0) == 0
    assert choose_point(pts[:1] + [OperatingPoint(1, 2, 2, 12.0, float("nan"))], 100) == 0
    with pytest.raises(nncodec.ConfigError, match="has none"):
        choose_point([], 1.0)


def test_bad_options_are_config_errors():
    with pytest.raises(nncodec.ConfigError, match="unknown key"):
        encode_scalable(TENSORS, [{"bitz": 3}])
    with pytest.raises(nncodec.ConfigError, match="go into each point"):
        encode_scalable(TENSORS, POINTS, bits=4)
    with pytest.raises(nncodec.ConfigError, match="1..255"):
        encode_scalable(TENSORS, [])
    with pytest.raises(nncodec.ConfigError, match="energy_pj must be"):
        encode_scalable(TENSORS, [{"bits": 4, "energy_pj": -1}])
    data, _ = encode_scalable(TENSORS, POINTS)
    with pytest.raises(nncodec.ConfigError, match="operating_point 3 requested"):
        nncodec.decode_arrays(data, operating_point=3)
    with pytest.raises(nncodec.ConfigError, match="non-negative"):
        nncodec.decode_arrays(data, operating_point=-1)
    plain = nncodec.encode_arrays(TENSORS)
    with pytest.raises(nncodec.ConfigError, match="no operating points"):
        nncodec.decode_arrays(plain, operating_point=1)
    assert _same(nncodec.decode_arrays(plain, operating_point=0), nncodec.decode_arrays(plain))
    with pytest.raises(nncodec.ConfigError, match="only with operating_points"):
        nncodec.encode(seed_example_cnn(), energy_input_shape=(1, 28, 28))


def _units(data: bytes) -> tuple[bytes, list]:
    return split_units(data)


def _fix_eos(units: list) -> list:
    count = len(units) - 1
    t, f, r, p = units[-1]
    units[-1] = (t, f, r, struct.pack("<I", count) + p[4:])
    return units


def test_broken_scalable_streams_raise_their_errors(scalable):
    data, _ = scalable
    head, units = _units(data)
    types = [u[0] for u in units]
    # a refinement unit whose base tensor unit is missing
    first_ref = types.index(UNIT_REFINEMENT)
    name_len = struct.unpack_from("<H", units[first_ref][3], 4)[0]
    name = units[first_ref][3][6:6 + name_len]
    dropped = [u for u in units if not (u[0] == UNIT_TENSOR and u[3][2:2 + len(name)] == name
                                        and struct.unpack_from("<H", u[3])[0] == len(name))]
    assert len(dropped) == len(units) - 1
    with pytest.raises(nncodec.CorruptError):
        nncodec.decode_arrays(join_units(head, _fix_eos(dropped)))
    # the last point references units that are not there (refinements cut off)
    cut = [u for u in units if u[0] != UNIT_REFINEMENT or u is units[first_ref]]
    with pytest.raises(nncodec.CorruptError, match="references units that are not there|lies outside"):
        nncodec.decode_arrays(join_units(head, _fix_eos(cut)), operating_point=0)
    # a refinement unit without an operating-points unit
    no_points = [u for u in units if u[0] != UNIT_OPERATING_POINTS]
    with pytest.raises(nncodec.CorruptError, match="without an operating-points unit"):
        nncodec.decode_arrays(join_units(head, _fix_eos(no_points)))
    # a tensor unit after a refinement unit (the base layer comes first)
    last_tensor = first_ref - 1
    moved = units[:last_tensor] + [units[first_ref], units[last_tensor]] + units[first_ref + 1:]
    assert [u[0] for u in moved].count(UNIT_TENSOR) == types.count(UNIT_TENSOR) and moved[-1][0] == UNIT_END
    with pytest.raises(nncodec.CorruptError, match="after a refinement|lies outside"):
        nncodec.decode_arrays(join_units(head, moved))
    # a truncated stream is still found truncated at a point that skips the cut bytes
    with pytest.raises(nncodec.TruncatedError):
        nncodec.decode_arrays(data[:-30], operating_point=0)


def test_conformance_vectors_cover_points_units_and_both_refinement_modes():
    from nncodec.conformance.vectors import default_vectors_dir, load_manifest

    folder = default_vectors_dir()
    v12 = [v for v in load_manifest(folder) if v.format_version == "1.2"]
    assert sorted(v.extra.get("operating_point") for v in v12 if v.error is None) == [0, 0, 1, 1, 2, 2]
    modes = set()
    for v in v12:
        if v.error is None:
            info = nncodec.read_info(folder / v.file)
            assert [u.type for u in info.units].count("operating_points") == 1
            modes |= {u.tensor["mode"] for u in info.units if u.type == "refinement"}
    assert modes == {0, 1, 2, 3}
    assert {v.error for v in v12 if v.error} == {"CorruptError", "UnsupportedFeatureError"}


def test_nested_steps_snap_to_odd_multiples_of_the_finest():
    from nncodec.scalable import nested_steps

    out = nested_steps([{"rel_step": 0.27, "label": "a"}, {"rel_step": 0.13}, {"rel_step": 0.05}])
    assert [p["rel_step"] for p in out] == pytest.approx([0.45, 0.15, 0.05])
    assert out[0]["label"] == "a"
    assert [p["step"] for p in nested_steps([{"step": 0.4}, {"step": 0.01}])] == pytest.approx([0.41, 0.01])
    assert [p["step"] for p in nested_steps([{"step": 0.2}, {"step": 0.2}])] == [0.2, 0.2]  # equal: kept
    with pytest.raises(nncodec.ConfigError, match="gives no positive 'rel_step'"):
        nested_steps([{"bits": 4}, {"rel_step": 0.1}])
    with pytest.raises(nncodec.ConfigError, match="finer"):
        nested_steps([{"rel_step": 0.05}, {"rel_step": 0.1}])
    with pytest.raises(nncodec.ConfigError, match="other step_scales"):
        nested_steps([{"rel_step": 0.3, "step_scales": {"fc.*": 2.0}}, {"rel_step": 0.1}])
    with pytest.raises(nncodec.ConfigError, match="True or False"):
        encode_scalable(TENSORS, [{"rel_step": 0.3}], nest_steps=1)


def test_nested_steps_make_the_stream_cost_about_the_finest_file():
    """Halving steps nest badly (a fine cell straddles two coarse ones); odd multiples nest exactly, so the
    scalable stream is hardly larger than the finest point's file. Each point still decodes to a
    separate encode with the options the report gives for it."""
    big = {"a.weight": RNG.laplace(size=(64, 256)).astype(np.float32),
           "b.weight": RNG.standard_normal((128, 128)).astype(np.float32)}
    halving = [{"rel_step": 0.2}, {"rel_step": 0.1}, {"rel_step": 0.05}]
    _, plain = encode_scalable(big, halving, measure_separate=True)
    data, nested = encode_scalable(big, halving, nest_steps=True, measure_separate=True)
    _, unmeasured = encode_scalable(big, halving, nest_steps=True)
    assert unmeasured.separate_bytes == [] and math.isnan(unmeasured.overhead)
    assert unmeasured.total_bytes == nested.total_bytes
    assert [o["rel_step"] for o in nested.point_options] == pytest.approx([0.45, 0.15, 0.05])
    assert plain.overhead > 0.10
    assert nested.overhead < 0.03
    for k, opts in enumerate(nested.point_options):
        separate = nncodec.decode_arrays(nncodec.encode_arrays(big, **opts))
        assert _same(nncodec.decode_arrays(data, operating_point=k), separate), k
        # separate files are measured as a scalable stream's units are written: one unit per tensor
        assert nested.separate_bytes[k] == len(nncodec.encode_arrays(big, group_tensors=False, **opts))


def test_energy_of_points_from_example_inputs_of_a_graph():
    """energy_inputs (tensors, e.g. token ids) price each point on the model's graph: fewer code bits,
    less energy."""
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.fc = torch.nn.Linear(16, 16)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids)).relu().mean(1)

    ids = torch.randint(0, 50, (1, 6))
    points = [{"bits": 3}, {"bits": 8}]
    _, report = nncodec.encode_with_report(Tiny(), operating_points=points, energy_inputs=(ids,))
    energies = [p.energy_pj for p in report.points]
    assert 0 < energies[0] < energies[1]
    with pytest.raises(nncodec.ConfigError, match="one of energy_input_shape and energy_inputs"):
        nncodec.encode(Tiny(), operating_points=points, energy_inputs=(ids,), energy_input_shape=(6,))
    with pytest.raises(nncodec.ConfigError, match="tuple of tensors"):
        nncodec.encode(Tiny(), operating_points=points, energy_inputs=[ids])


def test_a_scalable_stream_keeps_a_later_minor_version_its_base_encode_needs(monkeypatch):
    from nncodec.coding.stage import Stage

    monkeypatch.setattr(Stage, "since_minor", 5)  # every stage as if it came with format 1.5
    with encoder_without_acode():  # stage 8 declares its own 1.6
        data, _ = encode_scalable(TENSORS, POINTS)
    assert data[8:12] == b"\x01\x00\x05\x00"  # not the operating points' 1.2
    assert tuple(nncodec.read_info(data).version) == (1, 5)
    assert _same(nncodec.decode_arrays(data, operating_point=0),
                 nncodec.decode_arrays(nncodec.encode_arrays(TENSORS, bits=3)))

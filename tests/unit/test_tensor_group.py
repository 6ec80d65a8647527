"""The tensor-group unit (format 1.4, FORMAT.md §14): small tensors behind one unit, found automatically."""

import numpy as np
import pytest
import torch

import nncodec
from nncodec.bitstream.constants import UNIT_TENSOR_GROUP
from nncodec.conformance.forge import join_units, split_units
from nncodec.conformance.group_vectors import entry, group_payload, group_stream, lossless_desc
from nncodec.errors import ConfigError, CorruptError, LimitExceededError, UnknownUnitError
from nncodec.limits import Limits
from nncodec.models import ResNet8
from nncodec.quant.layers import quantize_model
from nncodec.search.candidate import deployed_copy
from nncodec.torch_io import encode_with_report, load_into
from tests.benchmarks.bench_small_streams import encoder_without_acode

PLAN = {"layers": {"*bn*": {"kernel": "quantized_bits(8,2,1)", "bias": "quantized_bits(8,2,1)"},
                   "*.1": {"kernel": "quantized_bits(8,2,1)", "bias": "quantized_bits(8,2,1)"},
                   "fc": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,2,1)"}},
        "default": {"kernel": "quantized_bits(3,0,1)"}}


def _searched_resnet() -> torch.nn.Module:
    """A quarter-width ResNet-8 with trained statistics, 3-bit convs and folded 8-bit batch norms."""
    torch.manual_seed(0)
    model = ResNet8(1, 10, 4).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 1, 16, 16) * 2 + 1)
    return quantize_model(model.eval(), PLAN).eval()


def test_grouped_stream_is_smaller_and_decodes_exactly_everywhere(tmp_path):
    q = _searched_resnet()
    with encoder_without_acode():  # the versions of 1.4 (stage 8 would make both 1.6)
        data, report = encode_with_report(q)
        plain, plain_report = encode_with_report(q, group_tensors=False)
    assert len(data) < 0.6 * len(plain)  # the folded norms' statistics and biases no longer pay a unit each
    info = nncodec.read_info(data)
    assert info.version == (1, 4) and nncodec.read_info(plain).version == (1, 0)
    groups = [u for u in info.units if u.type == "tensor_group"]
    assert len(groups) == 1 and sorted(m["name"] for m in groups[0].members) == report.grouped
    layouts = {m["name"]: m["layout"] for m in groups[0].members}
    assert layouts["stem.1.running_mean"] == "fill" and layouts["stem.1.running_var"] == "fill"
    assert report.total_bytes == len(data) and sum(t.unit_bytes for t in report.tensors) <= len(data)
    want = nncodec.decode(plain)
    got = nncodec.decode(data)
    assert list(got) == sorted(got) and sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    path = tmp_path / "m.nnc"
    assert nncodec.encode(q, path).read_bytes() == data  # streamed to a file: the same bytes
    with nncodec.open(path) as f:
        assert sorted(f.keys()) == sorted(want)
        for k in reversed(f.keys()):
            assert torch.equal(f.get_tensor(k), want[k])
    target = deployed_copy(q)
    with torch.no_grad():
        for p in target.parameters():
            p.zero_()
    load_into(target, path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(target.eval()(x), q(x))


def test_group_is_used_only_when_smaller_and_can_be_turned_off():
    rng = np.random.default_rng(0)
    big = {"w": rng.standard_normal((80, 80)).astype(np.float32)}  # one tensor, too large to group
    assert nncodec.read_info(nncodec.encode_arrays(big)).version == (1, 0)
    small = {**big, "b": np.zeros(80, np.float32), "s": np.arange(3, dtype=np.int64)}
    grouped = nncodec.encode_arrays(small)
    assert [u.type for u in nncodec.read_info(grouped).units].count("tensor_group") == 1
    assert len(grouped) < len(nncodec.encode_arrays(small, group_tensors=False))
    assert "tensor_group" not in [u.type for u in nncodec.read_info(
        nncodec.encode_arrays(small, group_tensors=False)).units]
    with pytest.raises(ConfigError):
        nncodec.encode_arrays(small, group_tensors="yes")
    with pytest.raises(ConfigError):  # scalable (and delta) streams hold no group
        nncodec.encode_arrays(small, operating_points=[{"bits": 4}, {}], group_tensors=True)


def test_tied_tensors_may_alias_a_group_member():
    shared = np.arange(6, dtype=np.float32).reshape(2, 3)
    data = nncodec.encode_arrays({"emb": shared, "head": shared, "b": np.ones(2, np.float32)})
    info = nncodec.read_info(data)
    assert info.version == (1, 4) and info.aliases == {"head": "emb"}
    out = nncodec.decode_arrays(data)
    assert out["emb"] is out["head"] and np.array_equal(out["head"], shared)
    with nncodec.open(data) as f:
        assert np.array_equal(f.get_array("head"), shared)


def _group(*entries_and_words, count=None):
    entries, data, previous = [], b"", b""
    for name, dtype_id, shape, layout, words in entries_and_words:
        entries.append(entry(name, previous, dtype_id, shape, lossless_desc(dtype_id, 32), layout))
        previous, data = name, data + words
    return group_payload(len(entries) if count is None else count, b"".join(entries), data)


def test_a_hostile_group_is_refused_before_its_data_is_allocated(monkeypatch):
    huge = 1 << 31  # a fill member claiming 8 GiB of float32 from 4 stored bytes
    stream = group_stream(_group((b"x", 12, [huge], 1, b"\0\0\0\0")), 1)
    allocated = []
    real_empty = np.empty
    monkeypatch.setattr(np, "empty", lambda n, *a, **k: allocated.append(n) or real_empty(n, *a, **k))
    with pytest.raises(LimitExceededError, match="total decoded bytes"):
        nncodec.decode_arrays(stream, limits=Limits(max_total_decoded_bytes=1 << 30))
    assert all((n if isinstance(n, int) else int(np.prod(n))) < 1 << 20 for n in allocated)
    monkeypatch.undo()
    with pytest.raises(LimitExceededError, match="directory length"):  # the directory's claim, before decoding
        nncodec.decode_arrays(stream, limits=Limits(max_metadata_bytes=16))


def test_a_decoder_without_groups_refuses_them_as_a_critical_unit(monkeypatch):
    import nncodec.decoder as decoder_module

    data = nncodec.encode_arrays({"a": np.zeros(4, np.float32), "b": np.ones(3, np.int32)})
    monkeypatch.setattr(decoder_module, "UNIT_TENSOR_GROUP", -1)
    with pytest.raises(UnknownUnitError):
        nncodec.decode_arrays(data)


def test_a_group_in_a_scalable_stream_is_corrupt():
    stream = nncodec.encode_arrays({"w": np.ones((4, 4), np.float32)}, operating_points=[{"bits": 2}, {"bits": 8}])
    header, units = split_units(stream)
    group = _group((b"zz", 12, [2], 0, b"\0" * 8))
    end = len(units) - 1
    units = units[:2] + [(UNIT_TENSOR_GROUP, 1, 0, group)] + units[2:end] + [
        (0x7F, 1, 0, np.array([end + 1, 2], "<u4").tobytes())]
    with pytest.raises(CorruptError, match="delta or scalable"):
        nncodec.decode_arrays(join_units(header, units))


def test_lazy_reading_of_every_member_of_a_large_group_decodes_the_group_once(monkeypatch):
    """Reading all of 6000 members opens and decodes their group once (kept for the other members) and finds
    each member by name; a count of the work done, not a timing, so a loaded machine cannot flake it."""
    import nncodec.lazy as lazy

    calls = {"open": 0, "decode": 0}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(lazy, "open_group", counted("open", lazy.open_group))
    monkeypatch.setattr(lazy, "decode_group_data", counted("decode", lazy.decode_group_data))
    data = nncodec.encode_arrays({f"layer.{i:05d}.bias": np.full(4, i, np.float32) for i in range(6000)})
    with nncodec.open(data) as f:
        values = [f.get_array(k)[0] for k in f.keys()]
        again = f.get_array("layer.00042.bias")
    assert values == list(range(6000)) and again[0] == 42
    assert calls == {"open": 1, "decode": 1}


def test_group_tensors_with_a_fixed_pipeline_is_a_config_error():
    arrays = {"w": np.ones((80, 80), np.float32), "b": np.arange(5, dtype=np.float32), "c": np.ones(3, np.float32)}
    fixed = [{"id": "zstd"}]
    with pytest.raises(ConfigError, match="fixed pipeline"):
        nncodec.encode_arrays(arrays, pipeline=fixed, group_tensors=True)
    default = nncodec.encode_arrays(arrays, pipeline=fixed)  # the default: no group with a fixed pipeline
    assert default == nncodec.encode_arrays(arrays, pipeline=fixed, group_tensors=False)
    assert nncodec.read_info(default).version == (1, 0)
    assert [u.type for u in nncodec.read_info(nncodec.encode_arrays(arrays)).units].count("tensor_group") == 1


def test_read_info_lists_members_without_decoding_the_group_data():
    from nncodec.conformance.vectors import default_vectors_dir

    stored = (default_vectors_dir() / "v1.4" / "valid" / "tensor_group_stored.nnc").read_bytes()
    damaged = (default_vectors_dir() / "v1.4" / "invalid" / "group_data_short.nnc").read_bytes()
    members = {m["name"]: m for u in nncodec.read_info(stored).units for m in u.members or ()}
    assert members["blk.bn.running_mean"]["layout"] == "fill" and members["blk.bn.running_mean"]["stored_bytes"] == 4
    assert members["blk.empty"]["stored_bytes"] == 0 and members["blk.mask"]["stored_bytes"] == 4
    assert all(m["coded_bytes"] is None for m in members.values())  # coded with the group, not alone
    assert [m["name"] for u in nncodec.read_info(damaged).units for m in u.members or ()] == list(members)
    with pytest.raises(CorruptError):  # the data block is checked when it is decoded
        nncodec.decode_arrays(damaged)


def _three_group_stream(second: bytes = b"g1") -> bytes:
    """Three tensor-group units of one 1 MiB float32 member each (g0, ``second``, g2)."""
    import struct

    from nncodec.bitstream.constants import FILE_HEADER, MAGIC, UNIT_END, UNIT_STREAM_HEADER

    n = 1 << 18
    groups = [_group((name, 12, [n], 0, np.full(n, i, np.float32).tobytes()))
              for i, name in enumerate([b"g0", second, b"g2"])]
    units = [(UNIT_STREAM_HEADER, 1, 0, struct.pack("<HHBBHII", 1, 4, 0, 0, 0, 3, 0))]
    units += [(UNIT_TENSOR_GROUP, 1, 0, g) for g in groups]
    units.append((UNIT_END, 1, 0, struct.pack("<II", len(units), 3)))
    return join_units(FILE_HEADER.pack(MAGIC, 1, 4), units)


def test_lazy_reading_keeps_one_group_payload_and_reads_others_again(tmp_path, monkeypatch):
    import tracemalloc

    import nncodec.lazy

    monkeypatch.setattr(nncodec.lazy, "GROUP_CACHE_BYTES", 1 << 20)  # decoded data of one group: g1 is dropped
    path = tmp_path / "groups.nnc"
    path.write_bytes(_three_group_stream())
    tracemalloc.start()
    f = nncodec.open(path)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    with f:
        assert held < (1 << 20) + (1 << 19)  # one 1 MiB payload, not three
        for i, name in enumerate(["g0", "g1", "g2", "g0"]):
            got = f.get_array(name)
            assert got.shape == (1 << 18,) and (got == i % 3).all(), name
        # a group read again (no longer cached) that no longer holds the member scanned is corrupt, not a KeyError
        path.write_bytes(_three_group_stream(second=b"h1"))
        with pytest.raises(CorruptError, match="changed since the stream was opened"):
            f.get_array("g1")

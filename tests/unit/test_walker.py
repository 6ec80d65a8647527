"""One stream walker: decode_arrays, iter_tensors, read_info, nncodec.open and load_model accept and refuse
the same streams."""

import io

import numpy as np
import pytest

import nncodec
from nncodec.bitstream.constants import UNIT_MODEL_PARAMETER_SET, UNIT_TOPOLOGY
from nncodec.conformance.forge import join_units, split_units
from nncodec.conformance.vectors import default_vectors_dir, load_manifest
from nncodec.errors import CorruptError, NNCodecError

VECTORS = default_vectors_dir()


def _open_and_read_all(src):
    with nncodec.open(src) as f:
        return {name: f.get_array(name) for name in f.keys()}


READERS = {
    "decode_arrays": nncodec.decode_arrays,
    "iter_tensors": lambda src: dict((th.name, a) for th, a in nncodec.iter_tensors(src, workers=2)),
    "read_info": nncodec.read_info,
    "open": _open_and_read_all,
}


def _outcome(fn, src):
    try:
        return fn(src), None
    except NNCodecError as exc:
        return None, type(exc).__name__


@pytest.mark.parametrize("vector", load_manifest(VECTORS), ids=lambda v: v.name)
def test_every_reader_agrees_on_every_vector(vector):
    data = (VECTORS / vector.file).read_bytes()
    for how, fn in READERS.items():
        result, error = _outcome(fn, data)
        if how == "read_info" and vector.error is not None and error is None:
            continue  # read_info does not decode payloads: errors inside coded bytes are not its to find
        assert error == vector.error, (how, error)
        if error is None and how != "read_info":
            assert list(result) == [t["name"] for t in vector.tensors]
    if vector.error is None:  # a stream that starts past offset 0 of its file
        f = io.BytesIO(b"junk" + data)
        f.seek(4)
        got = _open_and_read_all(f)
        assert [t["name"] for t in vector.tensors] == list(got)


def _multi_tensor_stream(topology=None):
    arrays = {"a": np.arange(6, dtype=np.int16), "b": np.ones(4, np.int16), "c": np.zeros(3, np.int16)}
    return nncodec.Encoder(pipeline=[{"id": "zstd"}]).encode(arrays, topology=topology)[0]


def test_model_parameter_set_after_tensors_is_refused_by_every_reader():
    head, units = split_units(_multi_tensor_stream())
    mps = [u[0] for u in units].index(UNIT_MODEL_PARAMETER_SET)
    # tensor "a" with its own pipeline (as a one-tensor stream writes it), then the parameter set
    _, alone = split_units(nncodec.Encoder(pipeline=[{"id": "zstd"}]).encode({"a": np.arange(6, dtype=np.int16)})[0])
    data = join_units(head, units[:mps] + [alone[1], units[mps]] + units[mps + 2:])
    for how, fn in READERS.items():
        with pytest.raises(CorruptError, match="model parameter set after tensors"):
            fn(data)


def test_two_topology_units_are_refused_by_every_reader():
    head, units = split_units(_multi_tensor_stream(topology={"kind": "test"}))
    topo = next(i for i, u in enumerate(units) if u[0] == UNIT_TOPOLOGY)
    data = join_units(head, units[:topo + 1] + [units[topo]] + units[topo + 1:])
    for how, fn in READERS.items():
        with pytest.raises(CorruptError, match="second topology"):
            fn(data)


def test_open_reads_only_the_headers_until_asked(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "m.nnc"
    nncodec.encode({"big": rng.standard_normal(200_000).astype(np.float32), "small": np.ones(3, np.float32)},
                   path, metadata={"k": "v"})
    data = bytearray(path.read_bytes())
    info = nncodec.read_info(bytes(data))
    big = next(u for u in info.units if u.tensor and u.tensor["name"] == "big")
    data[big.offset + big.size - 1] ^= 0xFF  # damage the big tensor's coded bytes only
    path.write_bytes(bytes(data))
    with nncodec.open(path) as f:  # the scan does not read payloads: it opens
        assert f.keys() == ["big", "small"] and f.metadata == {"k": "v"} and f.topology is None
        np.testing.assert_array_equal(f.get_array("small"), np.ones(3, np.float32))
        with pytest.raises(nncodec.ChecksumError):
            f.get_array("big")

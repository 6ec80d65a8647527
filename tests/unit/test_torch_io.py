import numpy as np
import pytest
import torch
from torch import nn

import nncodec
from nncodec.errors import ConfigError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_module_roundtrip_lossless_all_dtypes(dtype):
    m = _model().to(dtype)
    sd = m.state_dict()
    out = nncodec.decode(nncodec.encode(m))
    assert list(out) == sorted(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape
        assert torch.equal(out[k], v), k  # bit-exact incl. num_batches_tracked (int64)


def test_integer_and_bool_tensors():
    sd = {"i8": torch.tensor([-128, 0, 127], dtype=torch.int8), "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
          "b": torch.tensor([[True, False]]), "i64": torch.tensor(2**62)}
    out = nncodec.decode(nncodec.encode(sd))
    for k, v in sd.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v)


def test_load_into_writes_in_place(tmp_path):
    src = _model()
    path = nncodec.encode(src, tmp_path / "m.nnc")
    dst = _model()
    with torch.no_grad():
        for p in dst.parameters():
            p.zero_()
    ptrs = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    assert nncodec.load_into(dst, path) == []
    for k, v in dst.state_dict().items():
        assert v.data_ptr() == ptrs[k]
        assert torch.equal(v, src.state_dict()[k])
    x = torch.randn(2, 3, 8, 8)
    src.eval(), dst.eval()
    assert torch.equal(src(x), dst(x))


def test_load_into_strict_and_shape_errors():
    data = nncodec.encode({"0.weight": torch.zeros(8, 3, 3, 3), "extra": torch.zeros(1)})
    with pytest.raises(ConfigError, match="missing"):
        nncodec.load_into(_model(), data)
    assert nncodec.load_into(_model(), data, strict=False) == ["extra"]
    with pytest.raises(ConfigError, match="shape"):
        nncodec.load_into(_model(), nncodec.encode({"0.weight": torch.zeros(2, 2)}), strict=False)


def test_quantized_module_keeps_accuracy_close():
    m = _model().eval()
    x = torch.randn(16, 3, 8, 8)
    q = _model().eval()
    nncodec.load_into(q, nncodec.encode(m, bits=8))
    assert torch.allclose(m(x), q(x), atol=0.05 * m(x).abs().max().item())


def test_save_load_like_safetensors(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(3)}
    nncodec.save(t, tmp_path / "t.nnc", metadata={"source": "unit test"})
    back = nncodec.load(tmp_path / "t.nnc")
    assert all(torch.equal(back[k], t[k]) for k in t)
    assert nncodec.read_info(tmp_path / "t.nnc").metadata == {"source": "unit test"}


def test_numpy_api_never_needs_torch_types():
    data = nncodec.encode({"a": np.arange(3, dtype=np.int32)})
    out = nncodec.decode_arrays(data)
    assert type(out["a"]) is np.ndarray


def _tied_model():
    from torch import nn

    m = nn.Sequential(nn.Embedding(40, 6), nn.Linear(6, 40))
    m[1].weight = m[0].weight  # the output layer shares the embedding, as in most language models
    return m


def test_tied_tensors_are_stored_once_and_come_back_tied():
    import numpy as np

    import nncodec

    torch.manual_seed(0)
    model = _tied_model()
    # one unit per tensor: in a tensor group, zstd would also find the repeated matrix
    data = nncodec.encode(model.state_dict(), group_tensors=False)
    untied = nncodec.encode({k: v.clone() for k, v in model.state_dict().items()}, group_tensors=False)
    assert len(untied) - len(data) > 40 * 6 * 4 * 0.9  # the shared matrix is stored once
    info = nncodec.read_info(data)
    assert info.aliases == {"1.weight": "0.weight"} and info.version == (1, 1)
    assert nncodec.read_info(untied).version == (1, 0)  # no aliases: written as format 1.0, as before
    out = nncodec.decode(data)
    assert list(out) == ["0.weight", "1.weight", "1.bias"] and out["0.weight"] is out["1.weight"]
    assert torch.equal(out["1.weight"], model[1].weight)
    arrays = nncodec.decode_arrays(data)
    assert arrays["0.weight"] is arrays["1.weight"]
    with nncodec.open(data) as f:
        assert f.keys() == ["0.weight", "1.weight", "1.bias"] and f.header("1.weight").name == "1.weight"
        np.testing.assert_array_equal(f.get_array("1.weight"), model[0].weight.detach().numpy())
    # into a tied module: the shared parameter is written once; into an untied one: both are filled
    from torch import nn

    tied, untied_model = _tied_model(), nn.Sequential(nn.Embedding(40, 6), nn.Linear(6, 40))
    for target in (tied, untied_model):
        assert nncodec.load_into(target, data) == []
        assert torch.equal(target[0].weight, model[0].weight) and torch.equal(target[1].weight, model[0].weight)
    assert tied[1].weight is tied[0].weight


def test_tied_module_round_trips_through_encode_of_the_module():
    import nncodec

    torch.manual_seed(1)
    model = _tied_model()
    report = nncodec.encode_with_report(model)[1]
    assert report.aliases == {"1.weight": "0.weight"} and [t.name for t in report.tensors] == ["0.weight", "1.bias"]

"""On-device loading: the topology unit, load_model without the model's class, lazy access."""

import pytest
import torch
from torch import nn

import nncodec
from nncodec.conformance.forge import join_units, split_units
from nncodec.errors import ChecksumError, NNCodecError
from nncodec.models import seed_example_cnn
from nncodec.prune.structured import resize_layers
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks
from nncodec.quant.layers import quantize_model
from nncodec.topology import TopologyError


def _varied() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(8, 8, 3, groups=8, padding=1), nn.LeakyReLU(0.1), nn.Dropout(0.2)),
        nn.Conv2d(8, 4, 1), nn.GELU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 5), nn.Softmax(dim=1))


def test_load_model_rebuilds_without_the_class(tmp_path):
    model = _varied().eval()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    path = nncodec.encode(model, tmp_path / "m.nnc")
    rebuilt = nncodec.load_model(path)
    assert type(rebuilt) is nn.Sequential and not rebuilt.training
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(rebuilt(x), model(x))


def test_load_model_pruned_quantized_model_with_changed_widths():
    torch.manual_seed(0)
    ref = seed_example_cnn()
    narrow = resize_layers(ref, {"conv2d_0_m": 0.5, "conv2d_1_m": 1.5}, (1, 28, 28))
    q = quantize_model(narrow, {"default": {"kernel": "ternary(alpha='auto_po2')", "bias": "quantized_bits(8,0,1)"},
                                "layers": {"act*": {"activation": "quantized_relu(4,2)"}}})
    apply_masks(q, global_magnitude_masks(q, 0.5))
    q.eval()
    rebuilt = nncodec.load_model(nncodec.encode(q))
    assert rebuilt.conv2d_0_m.out_channels == 8 and rebuilt.conv2d_1_m.out_channels == 48
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(rebuilt(x), q(x))
    # the training form (float weights and masks) rebuilds too
    again = nncodec.load_model(nncodec.encode(q, quantized=False))
    assert torch.equal(again(x), q(x))


def test_unsupported_modules_point_to_load_into():
    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) * 2

    data = nncodec.encode(Custom())  # topology "auto": none recorded, tensors still stored
    with pytest.raises(TopologyError, match="load_into"):
        nncodec.load_model(data)
    with pytest.raises(TopologyError, match="Custom.*load_into"):
        nncodec.encode(Custom(), topology=True)
    target = Custom()
    nncodec.load_into(target, data)


def test_a_forged_topology_is_refused():
    data = nncodec.encode(nn.Sequential(nn.Linear(2, 2)))
    header, units = split_units(data)
    units = [(t, f, r, b'{"format": "nncodec.topology", "version": 1, "root": {"type": "os.system"}}')
             if t == 0x03 else (t, f, r, p) for t, f, r, p in units]
    with pytest.raises(NNCodecError, match="unknown layer type"):
        nncodec.load_model(join_units(header, units))


def test_lazy_access_decodes_only_what_is_asked(tmp_path):
    model = seed_example_cnn()
    path = nncodec.encode(model, tmp_path / "m.nnc", bits=8)
    eager = nncodec.decode(path)
    with nncodec.open(path) as f:
        assert f.keys() == list(eager)
        assert torch.equal(f.get_tensor("dense.weight"), eager["dense.weight"])
        assert f.header("dense.weight").shape == (10, 30976)
        with pytest.raises(KeyError):
            f.get_tensor("nope")
    data = bytearray(path.read_bytes())
    info = nncodec.read_info(path)
    unit = next(u for u in info.units if u.tensor and u.tensor["name"] == "dense.weight")
    data[unit.offset + unit.size - 1] ^= 1
    with nncodec.open(bytes(data)) as f:  # the scan does not read payloads ...
        assert torch.equal(f.get_tensor("dense.bias"), eager["dense.bias"])
        with pytest.raises(ChecksumError):  # ... the damaged unit fails when it is read
            f.get_tensor("dense.weight")
    with pytest.raises(NNCodecError):
        nncodec.open(bytes(data[:-5]))


@pytest.mark.parametrize("stage", ["ans", "rans"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_streamed_dequantization_matches_the_whole_tensor_path(monkeypatch, stage, dtype):
    """Codes decoded block by block (rows) and dequantized as they arrive, or mapped straight to values
    through a per-symbol table (rANS, one scale per tensor), equal the one-shot decode."""
    import io

    import numpy as np

    import nncodec.decoder as dec
    from nncodec.bitstream.descriptor import dequantize_into

    rng = np.random.default_rng(0)
    arrays = {"w": rng.standard_normal((37, 3, 5)).astype(dtype), "v": rng.standard_normal(1000).astype(dtype)}
    for options in ({"bits": 6}, {"rel_step": 0.05}, {"rel_step": 0.005}):  # the last: int16 codes
        word = 2 if options.get("rel_step") == 0.005 else 1
        data = nncodec.encode_arrays(arrays, **options, pipeline=[{"id": stage, "word_size": word, "signed": True}])
        monkeypatch.setattr(dec, "_PIECE_ELEMENTS", 16)  # blocks of one 15-code row, or of 16 codes
        streamed = {th.name: a for th, a in dec.iter_tensors(data)}
        monkeypatch.undo()
        walker = dec.StreamWalker(io.BytesIO(data), nncodec.DEFAULT_LIMITS)
        for _, _, th, coded in walker.tensor_units():  # the reference: whole code array, then dequantize
            codes = np.empty(th.numel, dtype=th.quant.code_dtype.storage)
            walker.pipeline_of(th).decode_into(coded, codes.view(np.uint8), nncodec.DEFAULT_LIMITS)
            ref = np.empty(th.shape, th.dtype.storage)
            dequantize_into(codes.reshape(th.shape), th.quant, ref, th.dtype)
            assert np.array_equal(streamed[th.name], ref), (options, th.name)
            assert np.abs(ref - arrays[th.name]).max() > 0  # really quantized

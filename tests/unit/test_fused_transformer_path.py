"""nn.TransformerEncoderLayer's fused inference path (eval mode, no gradients) must not skip fake quantizers:
the search scores candidates in exactly that mode."""

import pytest
import torch
from torch import nn

from nncodec.quant.layers import quantize_model
from nncodec.quant.plan import LayerPlan, Plan


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 16)
        self.enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


@pytest.mark.parametrize("plan", [
    {"enc.linear1": LayerPlan(kernel="binary(alpha='auto_po2')"), "enc.linear2": LayerPlan(kernel="ternary")},
    {"enc.norm1": LayerPlan(activation="quantized_bits(3,1,1)")},  # an output quantizer on a norm inside
])
def test_a_quantized_encoder_layer_computes_its_quantizers_without_gradients(plan):
    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(6, 5, 3)
    candidate = quantize_model(model, Plan(plan)).eval()
    with torch.no_grad():
        scored, reference = candidate(x), model(x)
    torch.testing.assert_close(scored, candidate(x), atol=1e-5, rtol=1e-5)  # as with gradients on
    assert (scored - reference).abs().max() > 1e-3  # the quantizers act
    assert not candidate.enc.activation_relu_or_gelu  # the fused path is off where quantizers sit
    plain = quantize_model(model, Plan({})).eval()
    assert plain.enc.activation_relu_or_gelu  # a model without quantizers keeps the fused path
    with torch.no_grad():  # (same function, fused kernel)
        torch.testing.assert_close(plain(x), reference)


class PaddedEncoder(nn.Module):
    """A 2-layer nn.TransformerEncoder (nested-tensor path on by default) and a linear head."""

    def __init__(self):
        super().__init__()
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)
        self.head = nn.Linear(16, 4)

    def forward(self, x, src_key_padding_mask=None):
        return self.head(self.enc(x, src_key_padding_mask=src_key_padding_mask))


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")  # the float model's own fast path
def test_a_quantized_encoder_stack_with_a_padding_mask_runs_its_quantizers_on_dense_tensors():
    # eval mode + no_grad + a padding mask: nn.TransformerEncoder would turn the input into a NestedTensor,
    # on which the fake quantizers' rounding has no kernel
    torch.manual_seed(0)
    model = PaddedEncoder().eval()
    assert model.enc.use_nested_tensor
    x, mask = torch.randn(3, 6, 16), torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2, 2:] = True
    candidate = quantize_model(model, {"default": {"kernel": "quantized_bits(4,0,1)",
                                                   "activation": "quantized_bits(8,3,1)"}}).eval()
    with torch.no_grad():
        scored = candidate(x, src_key_padding_mask=mask)
    assert not candidate.enc.use_nested_tensor
    regular = candidate(x, src_key_padding_mask=mask)  # gradients on: the regular (dense, per-module) path
    torch.testing.assert_close(scored, regular)
    with torch.no_grad():
        assert (scored - model(x, src_key_padding_mask=mask)).abs().max() > 1e-3  # the quantizers act
    assert quantize_model(model, Plan({})).enc.use_nested_tensor  # nothing quantized: the fast path stays

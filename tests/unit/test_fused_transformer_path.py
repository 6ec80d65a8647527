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
    with torch.no_grad():  # a model without quantizers keeps the fused path (same function, fused kernel)
        torch.testing.assert_close(quantize_model(model, Plan({})).eval()(x), reference)

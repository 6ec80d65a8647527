"""Folded batch norms in the bitstream, and output quantizers on norms, residual sums and attention blocks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncodec.energy.estimate import estimate_energy
from nncodec.errors import ConfigError
from nncodec.quant.layers import QBatchNorm2d, quantize_model, unit_variance
from nncodec.search import SearchSpace
from nncodec.search.candidate import build_candidate, deployed_copy, model_size_bits
from nncodec.torch_io import encode_with_report, load_into
from tests.search.graph_models import SelfAttention, TinyMobileNet


def _trained_bn_net() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 3))
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 1, 8, 8) * 3 + 1)  # running statistics far from (0, 1)
    return model.eval()


BN_PLAN = {"layers": {"0": {"kernel": "quantized_bits(4,0,1)"},
                      "1": {"kernel": "quantized_bits(8,1,1)", "bias": "quantized_bits(8,2,1)"}}}


def test_unit_variance_makes_the_normaliser_exactly_one():
    for eps in (1e-5, 1e-3, 1e-12, 0.1):
        v = torch.tensor(unit_variance(eps), dtype=torch.float32)
        assert float(torch.rsqrt(v + eps)) == 1.0


def test_folded_batch_norm_decodes_exactly_into_a_plain_batch_norm(tmp_path):
    model = _trained_bn_net()
    q = quantize_model(model, BN_PLAN)
    assert isinstance(q[1], QBatchNorm2d)
    x = torch.randn(4, 1, 8, 8)
    scale, shift = q[1].folded()
    step = 2.0 ** (1 - 7)
    with torch.no_grad():
        want = F.relu(q[0](x) * q[1].kernel_quantizer(scale).view(1, -1, 1, 1) +
                      q[1].bias_quantizer(shift).view(1, -1, 1, 1))
        assert torch.allclose(F.relu(q[1](q[0](x))), want, atol=1e-5)
        codes = q[1].kernel_quantizer(scale) / step
        assert torch.equal(codes, codes.round())  # the scale the forward uses is on the 8-bit grid
    path, _ = encode_with_report(q, tmp_path / "m.nnc")
    for target in (deployed_copy(q), _trained_bn_net()):  # the deployed fake-quant model, and a plain one
        with torch.no_grad():
            for p in target.parameters():
                p.zero_()
        load_into(target, path)
        with torch.no_grad():
            assert torch.equal(target.eval()(x), q(x))
    plain_path, _ = encode_with_report(quantize_model(model, {"layers": {"0": BN_PLAN["layers"]["0"]}}),
                                       tmp_path / "plain.nnc")
    assert path.stat().st_size < plain_path.stat().st_size  # the norm's four float32 vectors became two 8-bit ones
    assert model_size_bits(q) == 8 * 1 * 9 * 4 + 2 * 8 * 8 + (8 * 6 * 6 * 3 + 3) * 32


def test_folded_batch_norm_trains_on_batch_statistics_and_stays_a_norm_for_the_energy_model():
    q = quantize_model(_trained_bn_net(), BN_PLAN).train()
    before = q[1].running_mean.clone()
    x = torch.randn(32, 1, 8, 8) * 2 - 3
    q(x).sum().backward()
    assert not torch.allclose(q[1].running_mean, before)
    assert q[1].weight.grad is not None and float(q[1].weight.grad.abs().sum()) > 0
    q.eval()
    rows = {r.module: r for r in estimate_energy(q, (1, 8, 8)).layers}
    assert rows["1"].kind == "batchnorm"
    assert rows["1"].weight.startswith("quantized_bits(bits=8")  # priced at its scale quantizer's bits
    with pytest.raises(ConfigError):
        quantize_model(nn.Sequential(nn.BatchNorm2d(4, affine=False)), {"layers": {"0": {"kernel": "int8"}}})


class _Gelu(nn.Module):
    """An activation class the library does not know (as model libraries define them)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class _Block(nn.Module):
    def __init__(self, dim: int = 16):
        super().__init__()
        self.attention = SelfAttention(dim, 2)
        self.attention_out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.ffn_in, self.act, self.ffn_out = nn.Linear(dim, 32), _Gelu(), nn.Linear(32, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x + self.attention_out(self.attention(x)))
        return x + self.ffn_out(self.act(self.ffn_in(x)))  # ends in a residual sum


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(20, 16)
        self.block = _Block()
        self.fc = nn.Linear(16, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.embedding(tokens)).mean(1))


def _eight_bit(space: SearchSpace):
    choice = {k: next((c for c in v if "(8," in c), v[-1]) for k, v in space.parameters().items()}
    return space.plan_from(choice)


def test_space_quantizes_norm_attention_activation_and_sum_outputs_so_no_layer_multiplies_at_int32():
    torch.manual_seed(0)
    model = _Net().eval()
    tokens = torch.randint(0, 20, (1, 6))
    space = SearchSpace.from_model(model, tokens, torch.randint(0, 20, (16, 6)), widths=(1.0,))
    outputs = {layer.activation_module for layer in space.layers if layer.activation}
    assert {"block.norm", "block.attention", "block.act", "block"} <= outputs
    plan = _eight_bit(space)
    candidate = build_candidate(model, tokens, plan)
    report = estimate_energy(candidate, tokens, plan)
    multiplying = [r for r in report.layers if r.kind in ("dense", "attention", "matmul")]
    assert multiplying and all("bits=32" not in r.input and r.input != "int32" for r in multiplying), \
        [(r.name, r.input) for r in multiplying]
    without = SearchSpace.from_model(model, tokens, torch.randint(0, 20, (16, 6)), widths=(1.0,),
                                     module_outputs=False)
    assert "block.norm" not in {layer.activation_module for layer in without.layers}
    plan_without = _eight_bit(without)
    cost_without = estimate_energy(build_candidate(model, tokens, plan_without), tokens, plan_without).total_pj
    assert report.total_pj < 0.8 * cost_without
    # fake-quant training reaches every output quantizer; the eval forward puts the outputs on their grids
    hits = {}
    for name in ("block.norm", "block", "block.attention", "block.act"):
        q = plan.resolve(name).activation
        step = 2.0 ** (int(q.split(",")[1]) - 7)
        candidate.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name, step=step: hits.__setitem__(name, (o if torch.is_tensor(o) else o[0]) / step))
    candidate.train()
    candidate(torch.randint(0, 20, (4, 6))).sum().backward()
    assert candidate.block.norm.weight.grad is not None
    candidate.eval()
    with torch.no_grad():
        candidate(torch.randint(0, 20, (4, 6)))
    for name, codes in hits.items():
        assert torch.allclose(codes, codes.round(), atol=1e-4), name


def test_space_folds_batch_norms_and_quantizes_residual_sums_of_a_depthwise_net():
    torch.manual_seed(0)
    model = TinyMobileNet().eval()
    sample = np.random.default_rng(0).normal(size=(16, 1, 28, 28)).astype(np.float32)
    space = SearchSpace.from_model(model, (1, 28, 28), sample, widths=(1.0,))
    norms = [layer for layer in space.layers if layer.kind == "norm"]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert {layer.activation_module for layer in space.layers if layer.activation} >= {"blocks.0", "blocks.2"}
    plan = _eight_bit(space)
    candidate = build_candidate(model, (1, 28, 28), plan)
    assert all(isinstance(m, QBatchNorm2d) for m in candidate.modules() if isinstance(m, nn.BatchNorm2d))
    rows = [r for r in estimate_energy(candidate, (1, 28, 28), plan).layers if r.kind == "conv"]
    assert all(r.input != "int32" for r in rows), [(r.name, r.input) for r in rows]
    assert not SearchSpace.from_model(model, (1, 28, 28), sample, widths=(1.0,), norms=()).parameters().keys() & \
        {f"{layer.group}.kernel" for layer in norms}


def test_default_norm_quantizers_follow_the_statistics_of_the_quantized_layer_before_them():
    """The folded scale moves once the conv before it is quantized: the default step is refitted, never clipped."""
    model = _trained_bn_net()
    space = SearchSpace.from_model(model, (1, 8, 8), torch.randn(16, 1, 8, 8), widths=(1.0,))
    plan = _eight_bit(space)
    candidate = build_candidate(model, (1, 8, 8), plan)
    bn = candidate[1]
    for factor in (0.01, 1.0, 100.0):  # the conv's output variance times 1/factor
        with torch.no_grad():
            bn.running_var.copy_(model[1].running_var * factor)
        scale, shift = bn.folded()
        for q, value in ((bn.kernel_quantizer, scale), (bn.bias_quantizer, shift)):
            err = (q(value) - value).abs().max() / value.abs().max()
            assert err <= 1 / 127 + 1e-6, (factor, float(err))


def test_batch_norm_bits_follow_their_share_group_key():
    model = _trained_bn_net()
    space = SearchSpace.from_model(model, (1, 8, 8), torch.randn(16, 1, 8, 8), widths=(1.0,), share={"1": "bn"},
                                   bits={"kernel": {"bn": (3,)}, "bias": {"bn": (5,)}})
    (norm,) = [layer for layer in space.layers if layer.kind == "norm"]
    assert norm.group == "bn"
    assert norm.kernel and all("(3," in k for k in norm.kernel), norm.kernel
    assert norm.bias and all("(5," in b for b in norm.bias), norm.bias

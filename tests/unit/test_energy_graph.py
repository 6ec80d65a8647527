"""The energy model on real architectures: residual, depthwise, recurrent and attention graphs."""

import math

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nncodec.energy import HOROWITZ, estimate_energy
from nncodec.errors import ConfigError

MAC_KINDS = ("conv", "dense", "matmul", "attention", "recurrent")


class ResBlock(nn.Module):
    """ResNet basic block with a strided projection shortcut."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.shortcut = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project, identity residual."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(8, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(48, 8, 1, bias=False), nn.BatchNorm2d(8))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(100, 32)
        self.pos = nn.Parameter(torch.randn(1, 10, 32) * 0.02)
        layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, ids):
        return self.head(self.encoder(self.tok(ids) + self.pos).mean(1))


class Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(6, 12, num_layers=2, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def _flop_macs(model, args, train=False):
    model.train(train)
    counter = FlopCounterMode(display=False)
    # the counter sees neither mkldnn's fused LSTM nor the fused CPU attention kernel: use the plain kernels
    with torch.backends.mkldnn.flags(enabled=False), sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
        model(*args)
    model.eval()
    return counter.get_total_flops() / 2


def _strided_grouped_transposed():
    return nn.Sequential(nn.Conv1d(4, 8, 5, stride=2, groups=2), nn.ReLU(), nn.ConvTranspose1d(8, 4, 4, stride=2),
                         nn.Unflatten(1, (4, 1)), nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2))


CASES = {
    "strided_grouped_transposed_convs": (_strided_grouped_transposed, lambda: (torch.randn(1, 4, 32),)),
    "resnet_block": (ResBlock, lambda: (torch.randn(1, 8, 16, 16),)),
    "inverted_residual": (InvertedResidual, lambda: (torch.randn(1, 8, 16, 16),)),
    "transformer": (TinyTransformer, lambda: (torch.randint(0, 100, (1, 10)),)),
    "lstm": (lambda: Recurrent(nn.LSTM), lambda: (torch.randn(1, 7, 6),)),
    "gru": (lambda: Recurrent(nn.GRU), lambda: (torch.randn(1, 7, 6),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_mac_total_matches_flop_counter(case):
    torch.manual_seed(0)
    build, example = CASES[case]
    model, args = build().eval(), example()
    report = estimate_energy(model, args, mode="corrected")
    macs = sum(r.operations for r in report.layers if r.kind in MAC_KINDS)
    # the transformer's eval fast path hides its matmuls from the counter: count in train mode (dropout is 0)
    reference = _flop_macs(model, args, train=case == "transformer")
    assert macs == pytest.approx(reference, rel=0.01)
    assert report.total_pj > 0 and all(r.total >= 0 for r in report.layers)


def test_residual_adds_are_rows_and_cost_what_hand_computation_says():
    report = estimate_energy(ResBlock().eval(), (8, 16, 16), reference=("int8", "int16"), mode="corrected")
    adds = [r for r in report.layers if r.kind == "add"]
    assert len(adds) == 1 and adds[0].operations == 16 * 8 * 8
    # both operands are batch-norm outputs stored at the int16 accumulator width: one 16-bit add per element
    assert adds[0].op_cost == pytest.approx(16 * 8 * 8 * 0.003125 * 16)
    assert adds[0].input.startswith("quantized_bits(bits=16,")
    ir = estimate_energy(InvertedResidual().eval(), (8, 16, 16))
    assert [r.name for r in ir.layers if r.kind == "add"] == ["add"]
    by = {r.name: r for r in ir.layers}
    assert by["dw.0"].operations == 48 * 16 * 16 * 9 and by["dw.0"].kind == "conv"


def _mul(bits):
    return 0.002994791667 * bits ** 2 + 0.001041666667 * bits


def test_one_attention_costs_its_two_matmuls_and_softmax():
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return nn.functional.scaled_dot_product_attention(q, k, v)

    heads, length, dim = 2, 5, 8
    args = tuple(torch.randn(1, heads, length, dim) for _ in range(3))
    row = next(r for r in estimate_energy(Attn(), args, mode="corrected").layers if r.kind == "attention")
    macs = heads * length * length * (dim + dim)
    assert row.operations == macs
    acc = math.ceil(math.log2(dim)) + 16  # int8 x int8 products summed over the head dimension
    scores = heads * length * length
    expected = macs * (_mul(8) + 0.003125 * acc) + scores * (0.003125 * acc + _mul(acc))
    assert row.accumulator_bits == acc and row.op_cost == pytest.approx(expected)


def test_one_recurrent_step_costs_its_gates():
    gru = nn.Sequential(nn.GRU(4, 8))
    int8 = "quantized_bits(8,0,1)"
    row = estimate_energy(gru, (torch.randn(1, 1, 4),), {"layers": {"0": {"kernel": int8, "bias": int8}}},
                          mode="corrected").layers[0]
    assert row.kind == "recurrent" and row.operations == 3 * 8 * (4 + 8)
    acc = math.ceil(math.log2(4 + 8 + 2)) + 16
    # per hidden unit: 3 gate activations, 3 multiplies, 3 adds
    expected = 3 * 8 * 12 * (_mul(8) + 0.003125 * acc) + 8 * (3 * 0.003125 * acc + 3 * _mul(acc) + 3 * 0.003125 * acc)
    assert row.op_cost == pytest.approx(expected)
    # weights read once: 2 matrices and 2 biases at int8
    assert row.parameters == pytest.approx(sum(HOROWITZ.sram_word(n * 8, 0) * n * 8 / 64
                                               for n in (3 * 8 * 4, 3 * 8 * 8, 24, 24)))


def test_plan_keyed_by_module_names_applies_inside_a_transformer():
    model = TinyTransformer().eval()
    ids = torch.randint(0, 100, (1, 10))
    plan = {"layers": {"encoder.layers.*.linear1": {"kernel": "quantized_bits(4,0,1)"},
                       "tok": {"kernel": "quantized_bits(4,0,1)"}}}
    rows = {r.name: r for r in estimate_energy(model, ids, plan).layers}
    assert rows["encoder.layers.1.linear1"].weight.startswith("quantized_bits(bits=4")
    assert rows["encoder.layers.1.linear2"].weight == "int8"  # not in the plan: the unquantized default
    assert rows["tok"].kind == "embedding" and rows["tok"].operations == 10 * 32  # only the rows read
    assert rows["tok"].output.startswith("quantized_bits(bits=4")


def test_plans_that_match_nothing_are_errors():
    model = ResBlock().eval()
    with pytest.raises(ConfigError, match="'conv3'"):
        estimate_energy(model, (8, 16, 16), {"layers": {"conv3": {"kernel": "ternary"}}})
    with pytest.raises(ConfigError, match="'dense\\*'"):
        estimate_energy(model, (8, 16, 16), {"layers": {"dense*": {"kernel": "ternary"}}})
    with pytest.raises(ConfigError, match="'layer'"):
        estimate_energy(model, (8, 16, 16), {"layer": {"conv1": {"kernel": "ternary"}}})
    with pytest.raises(ConfigError, match="example_inputs"):
        estimate_energy(model, "8,16,16")


def test_winograd_counts_fewer_multiplies_plus_transform_adds():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    direct = {r.name: r for r in estimate_energy(model, (4, 8, 8), mode="corrected").layers}
    wino = {r.name: r for r in estimate_energy(model, (4, 8, 8), mode="corrected", conv_algorithm="winograd").layers}
    tiles = 4 * 4  # 8x8 outputs in 2x2 tiles
    assert wino["0"].operations == tiles * 16 * 4 * 8 and direct["0"].operations == 64 * 9 * 4 * 8
    per_mac = direct["0"].op_cost / direct["0"].operations
    acc = direct["0"].accumulator_bits
    transform = tiles * (32 * 4 * 0.003125 * (8 + 2) + 24 * 8 * 0.003125 * acc)
    assert wino["0"].op_cost == pytest.approx(wino["0"].operations * per_mac + transform)
    assert wino["0"].op_cost < direct["0"].op_cost
    assert wino["2"].operations == direct["2"].operations  # stride 2: not a Winograd F(2x2, 3x3) conv
    with pytest.raises(ConfigError, match="winograd"):
        estimate_energy(nn.Sequential(nn.Linear(4, 2)), (4,), conv_algorithm="winograd")


def test_activation_sparsity_measured_on_the_example_skips_zero_inputs():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(1, 16)
    zeros = float((model[1](model[0](x)) == 0).float().mean())
    assert 0 < zeros < 1
    base = {r.name: r for r in estimate_energy(model, x, mode="corrected").layers}
    sparse = {r.name: r for r in estimate_energy(model, x, mode="corrected", activation_sparsity=0.1).layers}
    assert sparse["2"].input_zero_fraction == pytest.approx(zeros)
    assert sparse["2"].op_cost == pytest.approx(base["2"].op_cost * (1 - zeros))
    assert sparse["0"].op_cost == base["0"].op_cost  # a dense random input has no zeros
    above = estimate_energy(model, x, mode="corrected", activation_sparsity=0.999).layers
    assert {r.name: r for r in above}["2"].op_cost == base["2"].op_cost  # below the threshold: no skipping


def test_a_reused_graph_gives_the_same_estimate():
    from nncodec.energy.graph import capture_graph
    from nncodec.models import seed_example_cnn

    model = seed_example_cnn()
    plan = {"default": {"kernel": "quantized_bits(4,0,1)", "bias": "quantized_bits(8,0,1)"}}
    ops = capture_graph(model, (1, 28, 28))
    fresh = estimate_energy(model, (1, 28, 28), plan)
    reused = estimate_energy(model, (1, 28, 28), plan, graph=ops)
    assert reused.total_pj == fresh.total_pj and [r.total for r in reused.layers] == [r.total for r in fresh.layers]
    with pytest.raises(ConfigError, match="activation_sparsity"):
        estimate_energy(model, (1, 28, 28), plan, graph=ops, activation_sparsity=0.5)


class _Embedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 24)
        self.norm = nn.LayerNorm(24)
        self.fc = nn.Linear(24, 4)

    def forward(self, ids):
        return self.fc(self.norm(self.emb(ids)).mean(1))


def _layer_plan(name, bits):
    q = f"quantized_bits({bits},0,1)"
    return {"layers": {name: {"kernel": q, "bias": "quantized_bits(8,0,1)", "activation": q}}}


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_quantized_recurrent_layer_costs_what_its_bits_say(cell):
    from nncodec.quant.layers import quantize_model

    torch.manual_seed(0)
    model, x = Recurrent(cell).eval(), torch.randn(1, 12, 6)
    plain = estimate_energy(model, x)
    rows = {}
    for bits in (8, 4, 2):
        plan = _layer_plan("rnn", bits)
        quantized = quantize_model(model, plan)
        by_plan, by_modules = estimate_energy(model, x, plan), estimate_energy(quantized, x)
        # the fake-quant layer is one row, costed with its own quantizers (not int8, not its quantizer's ops)
        own = [r for r in by_modules.layers if r.module == "rnn"]
        assert [r.kind for r in own] == ["recurrent"]
        assert own[0].weight == quantized.rnn.kernel_quantizer.spec()
        assert by_modules.total_pj == by_plan.total_pj
        assert estimate_energy(quantized, x, plan).total_pj == by_plan.total_pj
        rows[bits] = own[0]
    int8_row = next(r for r in plain.layers if r.module == "rnn")
    assert rows[8].parameters == pytest.approx(int8_row.parameters)
    assert rows[2].parameters < rows[4].parameters < rows[8].parameters
    assert rows[2].op_cost < rows[4].op_cost < rows[8].op_cost < int8_row.op_cost  # int8 plain: int32 output


def test_quantized_embedding_and_norm_output_cost_what_their_bits_say():
    from nncodec.quant.layers import quantize_model

    torch.manual_seed(0)
    model, ids = _Embedder().eval(), torch.randint(0, 50, (1, 10))
    plain = estimate_energy(model, ids)
    params = {}
    for bits in (8, 4):
        plan = _layer_plan("emb", bits)
        plan["layers"]["norm"] = {"activation": f"quantized_bits({bits},0,1)"}
        quantized = quantize_model(model, plan)
        by_plan, by_modules = estimate_energy(model, ids, plan), estimate_energy(quantized, ids)
        assert [(r.module, r.kind) for r in by_modules.layers] == [(r.module, r.kind) for r in plain.layers]
        assert by_modules.total_pj == by_plan.total_pj
        emb, norm = (next(r for r in by_modules.layers if r.module == m) for m in ("emb", "norm"))
        assert (emb.output, norm.output) == (f"quantized_bits(bits={bits}, integer=0, symmetric=1, "
                                             "keep_negative=True)",) * 2
        params[bits] = emb.parameters
    assert params[4] < params[8] == pytest.approx(next(r for r in plain.layers if r.module == "emb").parameters)
    assert estimate_energy(quantize_model(model, _layer_plan("emb", 4)), ids).total_pj < plain.total_pj

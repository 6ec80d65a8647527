import json

import pytest
import torch
from torch import nn

from nncodec.cli import main
from nncodec.energy import estimate_energy, make_multiplier, qtype
from nncodec.energy.graph import UnsupportedLayerError
from nncodec.errors import ConfigError
from nncodec.models import seed_example_cnn
from nncodec.quant.layers import quantize_model

ALL8 = {"layers": {"conv*": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,0,1)"},
                   "dense": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,0,1)"},
                   "act*": {"activation": "quantized_relu(8)"}}}
SEED_SETTING = dict(min_sram_size=2 ** 27, weights_memory="sram", activations_memory="sram", io_traffic=False)


@pytest.fixture(scope="module")
def seed_model():
    m = seed_example_cnn()
    m.add_module("softmax", nn.Softmax(dim=1))
    return m


def test_qtools_check_values_to_the_pj(seed_model):
    ref = estimate_energy(seed_model, (1, 28, 28), reference=("int8", "int16"), **SEED_SETTING)
    assert ref.total_pj == 5_617_341
    quant = estimate_energy(seed_model, (1, 28, 28), ALL8, **SEED_SETTING)
    assert quant.total_pj == 3_559_354
    # the plan applied as fake-quant modules gives the same number as the plan given to the estimator
    assert estimate_energy(quantize_model(seed_model, ALL8), (1, 28, 28), **SEED_SETTING).total_pj == 3_559_354


def test_rows_follow_qtools_summation(seed_model):
    r = estimate_energy(seed_model, (1, 28, 28), ALL8, **SEED_SETTING)
    by = {row.name: row for row in r.layers}
    assert by["act0_m"].counted == ["outputs"] and by["act0_m"].total == by["act0_m"].outputs
    assert by["conv2d_1_m"].counted == ["inputs", "parameters", "op_cost"]
    assert by["conv2d_1_m"].operations == 24 * 24 * 32 * 9 * 16
    assert by["conv2d_1_m"].accumulator_bits == 8 + 8 + 8  # ceil(log2(9*16 + 1)) + 8 + 8
    assert by["dense"].operations == 22 * 22 * 64 * 10
    # the unquantized softmax stores int32 outputs: 10 * 32 bits = 5 SRAM words
    assert by["softmax"].output == "int32"


def test_operator_table():
    fixed8, fixed4 = qtype("quantized_bits(8,0,1)"), qtype("quantized_bits(4,0,1)")
    assert make_multiplier(fixed8, fixed4).operator == "multiplier"
    assert make_multiplier(qtype("ternary"), fixed8).operator == "mux"
    assert make_multiplier(qtype("ternary"), fixed8).gate_factor == pytest.approx(0.6)
    assert make_multiplier(qtype("binary"), fixed8).gate_factor == pytest.approx(0.3)
    assert make_multiplier(qtype("binary"), qtype("binary")).operator == "xor"
    assert make_multiplier(qtype("binary(use_01=True)"), fixed8).operator == "and"
    assert make_multiplier(qtype("quantized_po2(4)"), fixed8).operator == "shifter"
    assert make_multiplier(qtype("quantized_po2(4)"), qtype("quantized_po2(4)")).operator == "adder"
    assert make_multiplier(qtype("fp16"), fixed8).operator == "fmul"
    # mux output gets a sign bit when the input is unsigned and the weight signed
    assert make_multiplier(qtype("ternary"), qtype("quantized_relu(4)")).output.bits == 5


def test_cheaper_quantizers_cost_less_and_sparsity_helps(seed_model):
    e8 = estimate_energy(seed_model, (1, 28, 28), ALL8, **SEED_SETTING).total_pj
    e4 = estimate_energy(seed_model, (1, 28, 28), {"default": {"kernel": "quantized_bits(4,0,1)"},
                                                    "layers": {"act*": {"activation": "quantized_relu(4)"}}},
                         **SEED_SETTING).total_pj
    et = estimate_energy(seed_model, (1, 28, 28), {"default": {"kernel": "ternary"},
                                                    "layers": {"act*": {"activation": "quantized_relu(4)"}}},
                         **SEED_SETTING).total_pj
    assert et < e4 < e8
    qm = quantize_model(seed_model, ALL8)
    conv = qm.conv2d_2_m
    conv.register_buffer("weight_mask", (torch.rand_like(conv.weight) > 0.5).float())
    dense = estimate_energy(qm, (1, 28, 28), **SEED_SETTING)
    sparse = estimate_energy(qm, (1, 28, 28), sparsity_aware=True, **SEED_SETTING)
    row = {r.name: r for r in sparse.layers}["conv2d_2_m"]
    assert 0.45 < row.weight_density < 0.55
    assert sparse.total_pj < dense.total_pj


def test_corrected_mode_and_memories(seed_model):
    q = estimate_energy(seed_model, (1, 28, 28), ALL8, **SEED_SETTING)
    c = estimate_energy(seed_model, (1, 28, 28), ALL8, mode="corrected", min_sram_size=2 ** 27)
    assert c.total_pj < q.total_pj and abs(c.total_pj - q.total_pj) < 50  # word ceiling only
    fixed = estimate_energy(seed_model, (1, 28, 28), ALL8, weights_memory="fixed", min_sram_size=2 ** 27)
    assert all(r.parameters == 0 for r in fixed.layers)
    dram = estimate_energy(seed_model, (1, 28, 28), ALL8, weights_memory="dram", min_sram_size=2 ** 27)
    assert dram.total_pj > q.total_pj
    with pytest.raises(ConfigError):
        estimate_energy(seed_model, (1, 28, 28), mode="nonsense")


def test_user_op_costs_and_measured_hook(seed_model, tmp_path):
    doubled = {"fpm_mul": [2 * 0.002994791667, 2 * 0.001041666667, 0.0]}
    base = estimate_energy(seed_model, (1, 28, 28), ALL8, **SEED_SETTING)
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(doubled))
    more = estimate_energy(seed_model, (1, 28, 28), ALL8, op_costs=str(path), measure=lambda m, s: 42.0,
                           **SEED_SETTING)
    assert more.total_pj > base.total_pj and more.measured_pj == 42.0
    with pytest.raises(ConfigError, match="unknown op-cost"):
        estimate_energy(seed_model, (1, 28, 28), op_costs={"warp_drive": [1.0]})


def test_unsupported_operator_is_named():
    class Weird(nn.Module):
        def forward(self, x):
            return torch.cumprod(x, dim=-1)

    with pytest.raises(UnsupportedLayerError, match="cumprod.*'1'"):
        estimate_energy(nn.Sequential(nn.Flatten(), Weird(), nn.Linear(4, 2)), (4,))


def test_depthwise_and_conv1d_and_batchnorm():
    m = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                      nn.Linear(8 * 3 * 3, 4))
    r = estimate_energy(m, (8, 8, 8))
    rows = {x.name: x for x in r.layers}
    assert rows["0"].operations == 9 * 6 * 6 * 8
    assert rows["1"].counted == ["parameters"] and rows["1"].parameters > 0
    m1 = nn.Sequential(nn.Conv1d(2, 4, 5), nn.ReLU())
    assert {x.name: x for x in estimate_energy(m1, (2, 20)).layers}["0"].operations == 16 * 4 * 5 * 2


def test_cli_energy_defaults_json_and_plot(tmp_path, capsys):
    assert main(["energy", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_pj"] == 3_559_354
    assert main(["energy", "--reference", "int8,int16", "--plot", str(tmp_path / "e.png")]) == 0
    out = capsys.readouterr().out
    assert "5,617,341" in out and (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model_file = tmp_path / "mymodel.py"
    model_file.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(16, 8), nn.ReLU())\n")
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"kernel": "ternary", "activation": "quantized_relu(4)"}}))
    assert main(["energy", "--model", f"{model_file}:build", "--input-shape", "16", "--plan", str(plan),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert rows[0]["operator"] == "mux"


def test_shifter_matches_qtools_for_po2_weights():
    """QTools' shifter: gate bits B*log10(B), B = sqrt(2**bits_po2 * bits_x); product bits from its get_exp
    (right 2**(n-1), left capped by max_value), which for quantized_po2(4, 1) is 8 + 4 + 0 = 12 bits."""
    import math

    po2, x8 = qtype("quantized_po2(4,1)"), qtype("quantized_bits(8,0,1)")
    mult = make_multiplier(po2, x8)
    b = math.sqrt(2 ** 4 * 8)
    assert mult.operator == "shifter" and mult.gate_bits == pytest.approx(b * math.log10(b))
    assert mult.output.bits == 12
    assert make_multiplier(qtype("quantized_po2(4)"), x8).output.bits == 8 + 4 + 3
    assert make_multiplier(qtype("quantized_relu_po2(4,2)"), x8).output.bits == 8 + 8 + 1


@pytest.mark.parametrize("plan, settings, total", [
    (None, {}, 5540.0),
    (None, {"mode": "corrected", "min_sram_size": 2 ** 20}, 6172.7887070802235),
    (None, {"weights_memory": "dram", "min_sram_size": 2 ** 27}, 145292.0),
    (None, {"reference": ("int8", "int16"), "min_sram_size": 2 ** 27}, 5519.0),
    ({"default": {"kernel": "quantized_bits(4,0,1)", "activation": "quantized_relu(4)"}}, {}, 953.0),
    ({"default": {"kernel": "ternary", "bias": "quantized_bits(8,3,1)"}}, {"mode": "corrected", "min_sram_size": 2 ** 20},
     1806.692602686),
])
def test_sequential_models_keep_the_totals_of_the_module_hook_estimator(plan, settings, total):
    """Totals pinned from the previous estimator (forward hooks on leaf modules), which the graph path replaces:
    for sequential models both see the same layers, so the numbers must not move."""
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU6(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 3 * 3, 4), nn.Softmax(dim=1))
    assert estimate_energy(model, (8, 8, 8), plan, **settings).total_pj == pytest.approx(total, rel=1e-12)


def test_fake_quant_models_keep_their_quantizers_after_export(seed_model):
    qm = quantize_model(seed_model, {"default": {"kernel": "ternary(alpha='auto')", "bias": "quantized_bits(8,2,1)"},
                                     "layers": {"act*": {"activation": "quantized_relu(4)"}}})
    plan_total = estimate_energy(seed_model, (1, 28, 28), {"default": {"kernel": "ternary(alpha='auto')",
                                                                       "bias": "quantized_bits(8,2,1)"},
                                                           "layers": {"act*": {"activation": "quantized_relu(4)"}}},
                                 **SEED_SETTING).total_pj
    assert estimate_energy(qm, (1, 28, 28), **SEED_SETTING).total_pj == plan_total
    # the export switches weight quantizers off while tracing (their ops are not costed) and restores them
    assert qm.conv2d_1_m.kernel_quantizer.spec() == "ternary(alpha='auto')"
    assert qm.conv2d_1_m.bias_quantizer is not None


@pytest.mark.parametrize("types,bits", [(("bf16", "fp32"), 16), (("fp32", "fp32"), 32), (("int8", "int16"), 8),
                                        (("quantized_bits(4,0,1)", "int16"), 4)])
def test_size_cost_of_the_reference_reads_any_type_name(types, bits):
    from nncodec.search.runner import SearchConfig, _Searcher

    searcher = object.__new__(_Searcher)  # only the cost function is under test
    searcher.cost_fn, searcher.cfg = None, SearchConfig(cost="size", reference_types=types)
    model = nn.Linear(3, 2)
    assert searcher._cost(model, None, reference=True) == 8 * bits


def test_an_unknown_reference_type_is_a_config_error():
    from nncodec.search.runner import SearchConfig, _Searcher

    searcher = object.__new__(_Searcher)
    searcher.cost_fn, searcher.cfg = None, SearchConfig(cost="size", reference_types=("int9x", "int16"))
    with pytest.raises(ConfigError):
        searcher._cost(nn.Linear(3, 2), None, reference=True)

"""Each scheme against hand-computed values (ties, clipping, zero, per-channel scales), and codes."""

import math

import numpy as np
import pytest
import torch

import nncodec
from nncodec.errors import ConfigError
from nncodec.quant.base import get_quantizer
from nncodec.quant.layers import QActivation, quantize_model
from nncodec.quant.plan import Plan

T = torch.tensor


def q(spec, values):
    return get_quantizer(spec).quantize(T(values, dtype=torch.float32)).tolist()


def test_quantized_bits_ties_round_half_even_and_clip():
    # bits 4, integer 0, symmetric: u=3, codes in [-7, 7], step 1/8; x*8 = 0.5 -> 0, 1.5 -> 2, 2.5 -> 2
    assert q("quantized_bits(4,0,1)", [0.0625, 0.1875, 0.3125, -0.3125, 5.0, -5.0]) == \
        [0.0, 0.25, 0.25, -0.25, 0.875, -0.875]
    # not symmetric: -8 allowed
    assert q("quantized_bits(4,0,0)", [-5.0]) == [-1.0]
    # integer bits scale the grid: bits 4, integer 1 -> step 1/4, max 7/4
    assert q("quantized_bits(4,1,1)", [0.37, 3.0, -0.125]) == [0.25, 1.75, -0.0]
    # keep_negative=False: unsigned, u = bits
    assert q("quantized_bits(3,0,0,keep_negative=False)", [-1.0, 0.5, 2.0]) == [0.0, 0.5, 0.875]
    # u = 0: sign with 0 -> +1
    assert q("quantized_bits(1,0,1)", [-0.2, 0.0, 3.0]) == [-1.0, 1.0, 1.0]


def test_quantized_relu():
    # bits 3, integer 1: step 2/8 = 0.25, top 1.75; 0.125 -> tie -> 0; 0.375 -> 1.5 -> 2 -> 0.5
    assert q("quantized_relu(3,1)", [-1.0, 0.125, 0.375, 9.0]) == [0.0, 0.0, 0.5, 1.75]
    assert q("quantized_relu(8)", [0.5, 1.5]) == [0.5, 255 / 256]


def test_quantized_po2_qkeras_has_no_zero():
    # bits 4, max_value 1 -> no exponent sign bit: kmin = -8, kmax = 7; |x| clipped to 1
    assert q("quantized_po2(4,1)", [0.0, 0.3, -0.7, 2.0, 1e-9]) == [2.0 ** -8, 0.25, -0.5, 1.0, 2.0 ** -8]
    # max_value None -> sign bit: kmin = -4, kmax = 3
    assert q("quantized_po2(4)", [100.0, 0.001, -0.0]) == [8.0, 2.0 ** -4, 2.0 ** -4]
    assert q("quantized_po2_zero(4,1)", [0.0, 1e-4, 0.3]) == [0.0, 0.0, 0.25]


def test_binary_and_modified_binary():
    assert q("binary", [-0.3, 0.0, 0.2]) == [-1.0, 1.0, 1.0]
    assert q("binary(use_01=True)", [-0.3, 0.0, 0.2]) == [0.0, 1.0, 1.0]
    w = T([[1.0, -3.0], [0.5, 0.5]])
    # auto: per output channel scale = mean(x*q) / (mean(q*q) + 1e-7) in float32 (QKeras): rows ~2.0 and ~0.5
    s0, s1 = (np.float32(v) / (np.float32(1.0) + np.float32(1e-7)) for v in (2.0, 0.5))
    assert get_quantizer("binary(alpha='auto')").quantize(w).tolist() == [[s0, -s0], [s1, s1]]
    # auto_po2: 2**floor(log2(s) + 0.5): 3.0 -> 4, 0.7 -> 0.5
    w2 = T([[3.0, -3.0], [0.7, -0.7]])
    assert get_quantizer("binary(alpha='auto_po2')").quantize(w2).tolist() == [[4.0, -4.0], [0.5, -0.5]]
    assert q("binary(alpha=0.25)", [-1.0, 1.0]) == [-0.25, 0.25]


def test_ternary_threshold_and_auto():
    assert q("ternary", [-0.5, -0.33, 0.32, 0.33, 2.0]) == [-1.0, -1.0, 0.0, 1.0, 1.0]
    assert q("ternary(threshold=0.5)", [0.49, 0.5]) == [0.0, 1.0]
    # auto on [3, 1, 0.1, -3] (one channel along axis 0 of a 2-D tensor):
    # scale0 = 2*3/3 = 2; t = 1; r(x/2) = [2, 1, 0, -2] -> v = [4, 2, 0, -4] -> q = [1, 1, 0, -1]
    # lsq: mean(x*q)/mean(q*q) = (3+1+3)/3 = 7/3; next: t=7/6, r(x/(7/3)) = [1, 0, 0, -1] -> q = [1, 0, 0, -1]
    # lsq = 6/2 = 3 (over 1 + 1e-7 in float32); then stable at q = [1, 0, 0, -1]
    out = get_quantizer("ternary(alpha='auto')").quantize(T([[3.0, 1.0, 0.1, -3.0]]))
    s = float(np.float32(1.5) / (np.float32(0.5) + np.float32(1e-7)))
    assert out.tolist() == [[s, 0.0, 0.0, -s]]


def test_stochastic_quantizers_equal_deterministic_at_inference():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    for spec, det in (("stochastic_ternary(alpha='auto')", "ternary(alpha='auto')"),
                      ("stochastic_binary(alpha='auto')", "binary(alpha='auto')")):
        sq, dq = get_quantizer(spec), get_quantizer(det)
        assert torch.equal(sq(x, training=False), dq.quantize(x))
        trained = sq(x, training=True)
        assert not torch.equal(trained, dq.quantize(x))  # it samples
    bern = get_quantizer("bernoulli")
    assert torch.equal(bern(x, training=False), (x >= 0).float())


def test_ste_gradient_is_identity():
    x = torch.randn(10, requires_grad=True)
    get_quantizer("quantized_bits(4,0,1)")(x, training=True).sum().backward()
    assert torch.equal(x.grad, torch.ones(10))


def test_spec_strings_are_parsed_safely_and_round_trip():
    for spec in ("quantized_bits(8,0,1)", "quantized_po2(4,1)", "quantized_relu(4,2)", "binary",
                 "binary(use_01=True)", "ternary(alpha='auto')", "stochastic_ternary", "fp16", "int8",
                 "quantized_bits(8,0,1,alpha='auto')", "quantized_bits(4,0,1,alpha='auto_po2')",
                 "quantized_relu_po2(4,1)"):
        qz = get_quantizer(spec)
        assert get_quantizer(qz.spec()) == qz
    for bad in ("__import__('os').system('true')", "quantized_bits(bits=lambda: 1)", "nosuch(1)", "binary(",
                "quantized_bits(99)", "ternary(alpha='auto', threshold=0.1)", "quantized_bits(8,0,1,alpha='best')",
                "quantized_bits(8,0,1,keep_negative=False,alpha='auto')", "quantized_relu_po2(4,negative_slope=0.5)"):
        with pytest.raises(ConfigError):
            get_quantizer(bad)
    assert get_quantizer("float") is None


@pytest.mark.parametrize("spec", ["quantized_bits(4,0,1)", "quantized_bits(6,1,0)", "quantized_relu(4,1)",
                                  "quantized_po2(4,1)", "quantized_po2_zero(5)", "binary", "binary(alpha='auto')",
                                  "binary(use_01=True, alpha='auto_po2')", "ternary", "ternary(alpha='auto')",
                                  "ternary(alpha='auto_po2')", "fp16", "bf16",
                                  "quantized_bits(4,0,1,alpha='auto')", "quantized_bits(4,1,1,alpha='auto_po2')",
                                  "quantized_relu_po2(4,1)"])
def test_codes_dequantize_exactly_through_the_bitstream(spec):
    torch.manual_seed(1)
    model = nn_model()
    qmodel = quantize_model(model, {"default": {"kernel": spec, "bias": spec}}).eval()
    out = nncodec.decode(nncodec.encode(qmodel))
    for name, mod in qmodel.named_modules():
        if hasattr(mod, "kernel_quantizer"):
            assert torch.equal(out[f"{name}.weight"], mod.kernel_quantizer.quantize(mod.weight))
            assert torch.equal(out[f"{name}.bias"], mod.bias_quantizer.quantize(mod.bias))
    info = nncodec.read_info(nncodec.encode(qmodel))
    schemes = {t["scheme"] for t in info.tensor_entries() if t["name"].endswith("weight")}
    assert schemes and "none" not in schemes


def nn_model():
    from torch import nn

    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))


def test_pruned_zeros_survive_quantization_and_become_zero_words():
    torch.manual_seed(0)
    qmodel = quantize_model(nn_model(), {"default": {"kernel": "quantized_po2_zero(4)"}})
    conv = qmodel[0]
    mask = (torch.rand_like(conv.weight) > 0.7).float()
    conv.register_buffer("weight_mask", mask)
    out = nncodec.decode(nncodec.encode(qmodel))
    assert (out["0.weight"][mask == 0] == 0).all() and (out["0.weight"][mask == 1] != 0).any()
    # QKeras' po2 has no zero (0 -> +2**kmin), yet a pruned layer computes with and stores exact zeros,
    # because the mask is applied after the quantizer too; likewise binary codes become ternary codes
    for spec in ("quantized_po2(4)", "binary(alpha='auto')"):
        qk = quantize_model(nn_model(), {"default": {"kernel": spec}}).eval()
        assert qk[0].kernel_quantizer.quantize(torch.tensor([[0.0, 1.0, -1.0]]))[0, 0] != 0
        qk[0].register_buffer("weight_mask", mask)
        decoded = nncodec.decode(nncodec.encode(qk))
        assert torch.equal(decoded["0.weight"], qk[0].quantized_weight().detach())
        assert (decoded["0.weight"][mask == 0] == 0).all() and "0.weight_mask" not in decoded


def test_plan_resolution_and_json_round_trip(tmp_path):
    plan = Plan.from_dict({"layers": {"conv2d_0_m": {"kernel": "binary"}, "conv*": {"kernel": "ternary"}},
                           "default": {"kernel": "quantized_bits(8,0,1)"}, "widths": {"conv2d_1_m": 0.5}})
    assert plan.resolve("conv2d_0_m").kernel == "binary"
    assert plan.resolve("conv2d_7_m").kernel == "ternary"
    assert plan.resolve("dense").kernel == "quantized_bits(8,0,1)"
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json())
    again = Plan.load(path)
    assert again.to_dict() == plan.to_dict()
    with pytest.raises(ConfigError, match="unknown quantizer"):
        Plan.from_dict({"layers": {"x": {"kernel": "nosuch"}}})
    with pytest.raises(ConfigError):
        Plan.from_dict({"version": 2})


def test_calibration_sets_integer_bits_from_data():
    from torch import nn

    from nncodec.quant.calibrate import calibrate_activations

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4) * 5.0)
        model[0].bias.zero_()
    qmodel = quantize_model(model, {"layers": {"1": {"activation": "quantized_relu(8)"}}})
    x = torch.rand(100, 4)  # outputs in [0, 5)
    result = calibrate_activations(qmodel, x, percentile=100.0)
    assert result["1"]["integer"] == 3 and 4.0 < result["1"]["range"] <= 5.0
    assert isinstance(qmodel[1], QActivation) and qmodel[1].quantizer.integer == 3
    y = qmodel.eval()(x)
    assert float((y - model(x)).abs().max().detach()) <= 2.0 ** (3 - 8) / 2 + 1e-6


def test_fake_quant_model_trains_and_evaluates():
    torch.manual_seed(0)
    qmodel = quantize_model(nn_model(), {"default": {"kernel": "ternary(alpha='auto')", "bias": "quantized_bits(8,2,1)"},
                                         "layers": {"1": {"activation": "quantized_relu(4,2)"}}})
    x, y = torch.randn(32, 2, 6, 6), torch.randint(0, 3, (32,))
    opt = torch.optim.SGD(qmodel.parameters(), lr=0.1)
    before = qmodel[0].weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(qmodel.train()(x), y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, qmodel[0].weight)
    out = qmodel.eval()(x)
    levels = torch.unique(qmodel[1](qmodel[0](x)))
    assert len(levels) <= 16 and math.isfinite(float(out.sum().detach()))
    np.testing.assert_array_equal(np.unique(qmodel[0].kernel_quantizer.to_codes(qmodel[0].weight).codes), [-1, 0, 1])


def test_newly_supported_qkeras_specs_match_hand_computed_values():
    x = torch.tensor([[0.5, -0.25, 0.1, 0.05], [1.0, 0.3, -0.6, 0.0]])
    # alpha='auto_po2': levels = 14; row 0: scale 2*0.5/14 -> 2**-4; z = [min(8, 7), -4, 2, 1]; the least-squares
    # refinement 4.75/70 = 0.0679 rounds back to 2**-4. Row 1: 2/14 -> 2**-3; z = [7, 2, -5, 0]; 2**-3 again
    po2 = get_quantizer("quantized_bits(4,0,1,alpha='auto_po2')").quantize(x)
    assert po2.tolist() == [[7 / 16, -4 / 16, 2 / 16, 1 / 16], [7 / 8, 2 / 8, -5 / 8, 0.0]]
    # alpha='auto': the float scale 2*max|x|/14 per row, z = floor(|x|/scale + 0.5) capped at 7
    auto = get_quantizer("quantized_bits(4,0,1,alpha='auto')").quantize(x)
    torch.testing.assert_close(auto[1], torch.tensor([7.0, 2.0, -4.0, 0.0]) / 7)  # 0.3*7 = 2.1, 0.6*7 = 4.2
    # integer=1 scales the input by 2**-1 first and the output back by 2**1: same values for auto
    torch.testing.assert_close(get_quantizer("quantized_bits(4,1,1,alpha='auto')").quantize(x), auto)
    # quantized_relu_po2(4, 1): no exponent sign bit, k in [-16, 15], capped at max_value 1; x <= 0 -> 2**-16
    relu_po2 = get_quantizer("quantized_relu_po2(4,1)").quantize(torch.tensor([-1.0, 0.0, 0.3, 0.75, 2.0]))
    assert relu_po2.tolist() == [2.0 ** -16, 2.0 ** -16, 0.25, 1.0, 1.0]
    assert get_quantizer("quantized_relu_po2(3)").quantize(torch.tensor([100.0, 1e-6])).tolist() == [8.0, 2.0 ** -4]
    # binary(alpha='auto') on a 1-D tensor: QKeras' least-squares scale is per element (no averaging)
    b = get_quantizer("binary(alpha='auto')").quantize(torch.tensor([0.5, -0.2, 0.0]))
    torch.testing.assert_close(b, torch.tensor([0.5, -0.2, 0.0]) / (1 + 1e-7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_double_fake_quant_models_are_stored_as_codes(dtype):
    torch.manual_seed(2)
    qmodel = quantize_model(nn_model(), {"default": {"kernel": "quantized_bits(4,0,1)",
                                                     "bias": "quantized_bits(8,0,1)"}}).eval().to(dtype)
    data = nncodec.encode(qmodel, group_tensors=False)  # one unit per tensor: their sizes are compared below
    info = nncodec.read_info(data)
    by = {u.tensor["name"]: u.tensor for u in info.units if u.tensor}
    assert by["0.weight"]["scheme"] == "uniform" and by["0.weight"]["bits"] == 4
    assert by["3.bias"]["scheme"] == "uniform" and by["0.weight"]["dtype"] == str(dtype).split(".")[1]
    out = nncodec.decode(data)
    for name in ("0", "3"):
        mod = qmodel[int(name)]
        want = mod.kernel_quantizer.quantize(mod.weight.float())  # the value in float32, then rounded once
        assert out[f"{name}.weight"].dtype == dtype
        assert torch.equal(out[f"{name}.weight"], want.to(dtype))
    floats = {u.tensor["name"]: u for u in nncodec.read_info(nncodec.encode(qmodel, quantized=False, group_tensors=False)).units
              if u.tensor}
    coded = {u.tensor["name"]: u for u in info.units if u.tensor}
    assert coded["3.weight"].size < floats["3.weight"].size / 2  # 4-bit codes, not 16/64-bit floats

"""Per-input-channel activation steps folded into Linear weights (plan key 'input', quant.input_steps)."""

import copy
import math

import pytest
import torch
from torch import nn

from nncodec.energy.costs import OpCosts
from nncodec.energy.estimate import REQUANT_SCALE, estimate_energy
from nncodec.energy.operators import make_multiplier, qtype
from nncodec.errors import ConfigError
from nncodec.quant.input_steps import fit_input_steps, input_requantized
from nncodec.quant.layers import QLinear, quantize_model
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search.candidate import deployed_copy
from nncodec.search.space import SearchSpace
from nncodec.torch_io import encode_with_report, load_into
from tests.search.graph_models import TinyTransformer

TOKENS = torch.randint(0, 50, (96, 8), generator=torch.Generator().manual_seed(1))
CALIBRATION = [(TOKENS[i:i + 16],) for i in range(0, 64, 16)]
KERNEL = "quantized_bits(8,0,1,alpha='auto')"


def _model() -> nn.Module:
    """Two post-norm blocks (each norm output is the next residual summand); two norm channels carry 40x gains
    (the outlier dimensions of trained BERTs)."""
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight[:2].mul_(40)
    return model


def _peaks(model: nn.Module, names: list[str]) -> dict[str, float]:
    found = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: found.__setitem__(n, max(found.get(n, 0), float(o.abs().max()))))
             for n, m in model.named_modules() if n in names]
    with torch.no_grad():
        model(TOKENS[:64])
    for h in hooks:
        h.remove()
    return found


def _plan(model: nn.Module, norm_bits: int, input_bits: int | None) -> Plan:
    """8-bit per-channel kernels; norm outputs at ``norm_bits`` on the power-of-two range holding them; with
    ``input_bits``, the Linear layers reading the norms requantize their inputs with per-channel steps."""
    norms = [n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)]
    layers = {n: LayerPlan(activation=f"quantized_bits({norm_bits},{math.ceil(math.log2(p))},1)")
              for n, p in _peaks(model, norms).items()}
    readers = {"blocks.0.ffn_in", "blocks.1.attention.query", "blocks.1.attention.key", "blocks.1.attention.value",
               "blocks.1.ffn_in", "fc"}
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            inp = f"quantized_bits({input_bits},0,1)" if input_bits and n in readers else None
            layers[n] = LayerPlan(kernel=KERNEL, input=inp)
    return Plan(layers=layers)


def _error(q: nn.Module, ref: nn.Module) -> float:
    with torch.no_grad():
        want, got = ref(TOKENS[64:]), q(TOKENS[64:])
    return float((got - want).pow(2).mean() / want.pow(2).mean())


def _fitted(model: nn.Module, plan: Plan) -> nn.Module:
    q = quantize_model(model, plan)
    if input_requantized(q):
        fit_input_steps(q, CALIBRATION)
    return q.eval()


def test_folded_fake_quant_equals_the_integer_computation():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 8))
    with torch.no_grad():
        layer[0].weight[3] = 30.0
    x = torch.randn(64, 16)
    q = quantize_model(layer, {"layers": {"1": {"kernel": "quantized_bits(4,0,1,alpha='auto')",
                                                 "input": "quantized_bits(8,0,1)"}}})
    fit_input_steps(q, [(x,)])
    q.eval()
    lin = q[1]
    assert not torch.all(lin.input_scale == 1)
    with torch.no_grad():
        got = q(x)
        # integer path: 8-bit input codes of x / s (step 2^-7), 4-bit kernel codes of the folded weight
        h = q[0](x)
        x_codes = torch.clamp(torch.round(h / lin.input_scale * 128), -127, 127)
        wc = lin.kernel_quantizer.to_codes(lin.weight)
        w_codes = wc.codes.to(torch.float64)
        acc = x_codes.to(torch.float64) @ w_codes.T  # integer MACs
        assert torch.equal(acc, acc.round())
        want = acc * (wc.scale.to(torch.float64).reshape(1, -1) / 128) + lin.bias.to(torch.float64)
    assert torch.allclose(got.to(torch.float64), want, atol=1e-4, rtol=1e-5)


def test_per_channel_input_steps_beat_one_step_per_tensor_on_outlier_channels():
    ref = _model()
    per_tensor = _error(_fitted(copy.deepcopy(ref), _plan(ref, 8, None)), ref)
    per_channel = _error(_fitted(copy.deepcopy(ref), _plan(ref, 16, 8)), ref)
    assert per_channel < per_tensor / 3, (per_channel, per_tensor)


def test_fit_keeps_the_float_function():
    ref = _model()
    plan = Plan(layers={n: LayerPlan(input="quantized_bits(16,0,1)") for n, m in ref.named_modules()
                        if isinstance(m, nn.Linear) and n != "fc"})
    q = _fitted(copy.deepcopy(ref), plan)
    layers = input_requantized(q)
    assert any(not torch.all(m.input_scale == 1) for m in layers.values())
    w = q.blocks[0].ffn_in.weight.clone()
    for m in layers.values():
        m.set_input_quantizer(None)  # the division by the steps stays: the folded layer without requantization
    assert _error(q, ref) < 1e-10
    for m in layers.values():
        m.set_input_quantizer("quantized_bits(16,0,1)")
    fit_input_steps(q, CALIBRATION)  # fitting again unfolds first: same steps, same weight
    assert torch.allclose(q.blocks[0].ffn_in.weight, w, rtol=1e-5, atol=1e-7)


def test_energy_prices_the_requantized_input_and_the_requantization():
    ref = _model()
    q16 = _fitted(copy.deepcopy(ref), _plan(ref, 16, None))
    q8 = _fitted(copy.deepcopy(ref), _plan(ref, 16, 8))
    e16, e8 = estimate_energy(q16, (TOKENS[:1],)), estimate_energy(q8, (TOKENS[:1],))
    row16 = next(r for r in e16.layers if r.module == "blocks.0.ffn_in" and r.kind == "dense")
    row8 = next(r for r in e8.layers if r.module == "blocks.0.ffn_in" and r.kind == "dense")
    assert "bits=16" in row16.input and "bits=8" in row8.input
    assert row8.op_cost < row16.op_cost and e8.total_pj < e16.total_pj
    # against 8-bit norm outputs read as they are: the same MACs, plus one multiply per input element
    q_pt = _fitted(copy.deepcopy(ref), _plan(ref, 8, None))
    row_pt = next(r for r in estimate_energy(q_pt, (TOKENS[:1],)).layers
                  if r.module == "blocks.0.ffn_in" and r.kind == "dense")
    requant = 8 * 32 * make_multiplier(REQUANT_SCALE, qtype(row16.input)).cost(OpCosts())
    assert row8.op_cost == pytest.approx(row_pt.op_cost + requant, abs=0.02)
    # the same plan on the plain model prices the same types (the plan's 'input' key)
    plain = estimate_energy(ref, (TOKENS[:1],), _plan(ref, 16, 8))
    prow = next(r for r in plain.layers if r.module == "blocks.0.ffn_in" and r.kind == "dense")
    assert prow.input == row8.input and prow.op_cost == pytest.approx(row8.op_cost)


def test_plan_with_input_steps_round_trips_through_json():
    plan = _plan(_model(), 16, 8)
    back = Plan.from_json(plan.to_json())
    assert back.layers["fc"].input == "quantized_bits(8,0,1)" and back.to_dict() == plan.to_dict()


def test_decoded_stream_reproduces_the_candidate(tmp_path):
    ref = _model()
    q = _fitted(copy.deepcopy(ref), _plan(ref, 16, 8))
    path, _ = encode_with_report(q, tmp_path / "m.nnc")
    decoded = deployed_copy(q)
    with torch.no_grad():
        for p in decoded.parameters():
            p.zero_()
        for m in input_requantized(decoded).values():
            m.input_scale.fill_(1.0)
    load_into(decoded, path)
    with torch.no_grad():
        assert torch.equal(decoded.eval()(TOKENS[64:]), q(TOKENS[64:]))


def test_options_that_do_not_apply_are_errors():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3))
    with pytest.raises(ConfigError, match="Linear layers only"):
        quantize_model(conv, {"layers": {"0": {"input": "quantized_bits(8,0,1)"}}})
    lin = nn.Sequential(nn.Linear(4, 4))
    q = quantize_model(lin, {"layers": {"0": {"kernel": "quantized_bits(4,0,1)", "input": "quantized_bits(8,0,1)"}}})
    with pytest.raises(ConfigError, match="per-output-channel"):
        fit_input_steps(q, [(torch.randn(8, 4),)])
    with pytest.raises(ConfigError, match="no Linear layer"):
        fit_input_steps(quantize_model(lin, {"layers": {"0": {"kernel": KERNEL}}}), [(torch.randn(8, 4),)])
    with pytest.raises(ConfigError, match="alpha"):
        fit_input_steps(q, [(torch.randn(8, 4),)], alpha=2)
    ref = _model()
    with pytest.raises(ConfigError, match="Linear"):
        SearchSpace.from_model(ref, (TOKENS[:1],), (TOKENS[:16],), kernels=(KERNEL,),
                               bits={"input": {"embedding": (8,)}})
    with pytest.raises(ConfigError, match="per-output-channel"):
        SearchSpace.from_model(ref, (TOKENS[:1],), (TOKENS[:16],), kernels=("quantized_bits({b},{i},1)",),
                               bits={"input": {"dense": (8,)}})


def test_search_space_offers_input_steps_per_group():
    ref = _model()
    space = SearchSpace.from_model(ref, (TOKENS[:1],), (TOKENS[:16],), kernels=(KERNEL,),
                                   share={"*.ffn_in": "ffn_in"}, bits={"input": {"ffn_in": (6, 8)}})
    params = space.parameters()
    assert params["ffn_in.input"] == ["quantized_bits(6,0,1)", "quantized_bits(8,0,1)"]
    assert not any(k.endswith(".input") and k != "ffn_in.input" for k in params)
    choices = {k: v[0] for k, v in params.items()}
    choices["ffn_in.input"] = "quantized_bits(8,0,1)"
    plan = space.plan_from(choices)
    assert plan.layers["blocks.0.ffn_in"].input == plan.layers["blocks.1.ffn_in"].input == "quantized_bits(8,0,1)"
    assert plan.layers["blocks.0.ffn_out"].input is None
    q = quantize_model(ref, plan)
    assert isinstance(q.blocks[1].ffn_in, QLinear) and set(input_requantized(q)) == {"blocks.0.ffn_in",
                                                                                      "blocks.1.ffn_in"}


def test_sparsity_aware_codes_skips_zero_codes_of_candidate_and_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64))
    x = torch.randn(1, 64)
    q = quantize_model(model, {"layers": {"0": {"kernel": "quantized_bits(3,0,1,alpha='auto')"}}}).eval()
    zero = float((q[0].quantized_weight() == 0).float().mean())
    assert 0.1 < zero < 0.9
    rows = {mode: next(r for r in estimate_energy(q, x, sparsity_aware=mode).layers if r.kind == "dense")
            for mode in (False, True, "codes")}
    assert rows[True].weight_density == 1.0 and rows["codes"].weight_density == pytest.approx(1 - zero)
    assert rows["codes"].op_cost == pytest.approx(rows[False].op_cost * (1 - zero), rel=1e-3)
    with torch.no_grad():  # small weights, one output channel 100x smaller again and with one large weight
        model[0].weight.mul_(0.01)
        model[0].weight[0].mul_(0.01)
        model[0].weight[0, 0] = 0.01
    ref = next(r for r in estimate_energy(model, x, reference=("int8", "int16"), sparsity_aware="codes").layers
               if r.kind == "dense")
    w = model[0].weight.detach()
    step = w.abs().amax(dim=1, keepdim=True) / 127  # int8 per output channel, max-scaled
    kept = (torch.round(w / step) != 0).float()
    assert ref.weight_density == pytest.approx(float(kept.mean()), abs=1e-6)
    assert float(kept[1:].mean()) > 0.95 and float(kept[0].mean()) < 0.2  # small channels keep their codes
    with pytest.raises(ConfigError, match="sparsity_aware"):
        estimate_energy(q, x, sparsity_aware="yes")


def test_search_returns_a_decoded_candidate_with_input_steps(tmp_path):
    from nncodec.search import FidelityTask, SearchConfig, run_search

    ref = _model()
    tokens = torch.randint(0, 50, (160, 8), generator=torch.Generator().manual_seed(2))
    task = FidelityTask(ref, (tokens[:128],), (tokens[128:],), batch_size=32, proxy_fraction=0.25)
    space = SearchSpace.from_model(ref, (tokens[:1],), (tokens[:32],), kernels=(KERNEL,), widths=(1.0,),
                                   share={"*.ffn_in": "ffn_in", "*.attention.*": "qkv"},
                                   bits={"kernel": {"dense": (8,), "embedding": (8,)},
                                         "activation": {"dense": (8,), "norm": (16,), "activation": (8,)},
                                         "input": {"ffn_in": (8,), "qkv": (8,)}})
    cfg = SearchConfig(n_trials=1, proxy_epochs=1, final_epochs=1, out_dir=str(tmp_path), progress=False,
                       energy_settings={"sparsity_aware": "codes"})
    result = run_search(ref, space, task, cfg)
    assert set(input_requantized(result.model)) == {"blocks.0.ffn_in", "blocks.1.ffn_in",
                                                    "blocks.1.attention.query", "blocks.1.attention.key",
                                                    "blocks.1.attention.value", "blocks.0.attention.query",
                                                    "blocks.0.attention.key", "blocks.0.attention.value"}
    assert not torch.all(result.model.blocks[1].ffn_in.input_scale == 1)  # fitted on the calibration inputs
    assert result.decoded_accuracy == pytest.approx(result.accuracy, abs=1e-6)
    assert result.energy_report.settings["sparsity_aware"] == "codes"


def test_topology_unit_refuses_a_layer_with_input_steps(tmp_path):
    from nncodec.topology import TopologyError

    q = quantize_model(nn.Sequential(nn.Linear(4, 4)), {"layers": {"0": {"kernel": KERNEL,
                                                                          "input": "quantized_bits(8,0,1)"}}})
    with pytest.raises(TopologyError, match="per-channel steps"):
        encode_with_report(q, tmp_path / "m.nnc", topology=True)


def _input_space(ref: nn.Module) -> SearchSpace:
    return SearchSpace.from_model(ref, (TOKENS[:1],), (TOKENS[:16],), kernels=(KERNEL,), widths=(1.0,),
                                  share={"*.ffn_in": "ffn_in"}, bits={"kernel": {"dense": (4, 8)},
                                                                      "input": {"ffn_in": (6, 8)}})


def test_plans_of_the_plan_controllers_and_their_cost_surrogate_carry_input_steps():
    from nncodec.search.greedy import _Greedy
    from nncodec.search.surrogate import CostSurrogate, base_plan

    ref = _model()
    space = _input_space(ref)
    plan = base_plan(space)  # the plans of the greedy, iterative and differentiable controllers start here
    assert plan.layers["blocks.0.ffn_in"].input == plan.layers["blocks.1.ffn_in"].input == "quantized_bits(8,0,1)"
    assert plan.layers["blocks.0.ffn_out"].input is None
    greedy = _Greedy(type("S", (), {"space": space, "cfg": type("C", (), {"options": {}})()})())
    assert space.plan_from(greedy.choices()).layers["blocks.1.ffn_in"].input == "quantized_bits(8,0,1)"
    plain = Plan(layers={n: LayerPlan(kernel=lp.kernel, bias=lp.bias, activation=lp.activation)
                         for n, lp in plan.layers.items()})
    priced = estimate_energy(ref, (TOKENS[:1],), plan).total_pj
    assert priced != pytest.approx(estimate_energy(ref, (TOKENS[:1],), plain).total_pj)
    assert CostSurrogate(ref, space, {}).base_pj == pytest.approx(priced)


@pytest.mark.parametrize("controller, schedule, options", [
    ("differentiable", "single", {}),
    ("tpe", "iterative", {}),
])
def test_controllers_that_rebuild_from_trained_parameters_refuse_input_steps(tmp_path, controller, schedule, options):
    from nncodec.search import FidelityTask, SearchConfig, run_search

    ref = _model()
    task = FidelityTask(ref, (TOKENS[:64],), (TOKENS[64:],), batch_size=32, proxy_fraction=0.25)
    cfg = SearchConfig(controller=controller, schedule=schedule, options=options, out_dir=str(tmp_path),
                       progress=False, max_energy_pj=1.0,
                       n_trials=SearchConfig.__dataclass_fields__["n_trials"].default)
    with pytest.raises(ConfigError, match=r"bits\['input'\]"):
        run_search(ref, _input_space(ref), task, cfg)


@pytest.mark.parametrize("mode", [True, "codes"])
def test_sparsity_aware_counts_every_weight_of_a_recurrent_layer(mode):
    torch.manual_seed(0)
    lstm = nn.LSTM(16, 16, batch_first=True)
    with torch.no_grad():  # no weight rounds to zero at int8
        for w in (lstm.weight_ih_l0, lstm.weight_hh_l0):
            w.copy_(torch.sign(torch.randn_like(w)) * (0.5 + 0.5 * torch.rand_like(w)))
    x = torch.randn(1, 4, 16)

    def row(m: "bool | str"):
        return next(r for r in estimate_energy(lstm, x, reference=("int8", "int16"), sparsity_aware=m).layers
                    if r.kind == "recurrent")

    dense = row(False)
    assert row(mode).parameters == pytest.approx(dense.parameters)  # both weights read, none skipped
    with torch.no_grad():
        lstm.weight_hh_l0[:, :8] = 0  # half of the hidden weights
    n_ih, n_hh = lstm.weight_ih_l0.numel(), lstm.weight_hh_l0.numel()
    sparse = row(mode)
    assert sparse.weight_density == pytest.approx((n_ih + n_hh / 2) / (n_ih + n_hh))
    assert sparse.op_cost < dense.op_cost and sparse.parameters < dense.parameters


def test_loading_folded_weights_into_a_plain_linear_is_an_error(tmp_path):
    from nncodec.rd_encode import RDOptions
    from nncodec.tuning import _Fidelity

    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(8, 4))
    q = quantize_model(plain, {"layers": {"0": {"kernel": KERNEL, "input": "quantized_bits(8,0,1)"}}})
    fit_input_steps(q, [(torch.randn(32, 8) * torch.logspace(0, 2, 8),)])
    path, _ = encode_with_report(q, tmp_path / "m.nnc")
    target = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(ConfigError, match=r"'0'.*input steps.*folded.*load_model"):
        load_into(target, path, strict=False)
    before = target[0].weight.detach().clone()
    with pytest.raises(ConfigError, match="folded"):
        _Fidelity(target, RDOptions(), lambda m: 0.0)(path.read_bytes())
    assert torch.equal(target[0].weight, before)  # the fidelity probe left the module as it was
    bare = nn.Linear(8, 4)  # a stream without that layer's weight: its steps are merely extra
    assert sorted(load_into(bare, path, strict=False)) == ["0.bias", "0.input_scale", "0.weight"]


def test_resizing_a_model_with_input_steps_is_an_error():
    from nncodec.prune.graph import Resizer, resize_groups

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    q = quantize_model(model, {"layers": {"2": {"kernel": KERNEL, "input": "quantized_bits(8,0,1)"}}})
    fit_input_steps(q, [(torch.randn(32, 8),)])
    with pytest.raises(ConfigError, match="input steps"):
        resize_groups(q, (8,), {"0": 0.5})
    with pytest.raises(ConfigError, match="input steps"):
        Resizer(q, (8,)).resize({"0": 0.5})
    assert resize_groups(model, (8,), {"0": 0.5})[2].in_features == 8  # the float model resizes


def test_requantizing_a_quantized_model_follows_the_new_plan():
    lin = nn.Sequential(nn.Linear(8, 4))
    q = quantize_model(lin, {"layers": {"0": {"kernel": KERNEL, "input": "quantized_bits(8,0,1)"}}})
    q2 = quantize_model(q, {"layers": {"0": {"kernel": KERNEL}}})
    assert q2[0].input_quantizer is None and "input_scale" in q2[0]._buffers  # the steps stay, folded
    q3 = quantize_model(q, {"layers": {"0": {"kernel": KERNEL, "input": "quantized_bits(6,0,1)"}}})
    assert q3[0].input_quantizer.bits == 6

"""Tied weights (an embedding table that is also the output projection) are one search decision: the space
offers one kernel choice for the tie and no width that would untie it, a plan giving the two layers different
quantizers is a ConfigError naming both, and the searched model keeps one table."""

import pytest
import torch
from torch import nn

import nncodec
from nncodec.errors import ConfigError
from nncodec.prune.graph import resize_groups, width_groups
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks
from nncodec.quant.export import quantized_state
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search import FidelityTask, SearchConfig, SearchSpace, run_search
from nncodec.search.candidate import build_candidate

VOCAB, DIM = 40, 8


class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mid = nn.Linear(DIM, DIM)
        self.out = nn.Linear(DIM, VOCAB, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids):
        return self.out(torch.tanh(self.mid(self.emb(ids))).mean(1))


def _model_and_ids():
    torch.manual_seed(0)
    return TiedLM().eval(), torch.randint(0, VOCAB, (48, 6))


def test_the_space_offers_one_kernel_choice_for_the_tie_and_no_width_that_unties_it():
    model, ids = _model_and_ids()
    space = SearchSpace.from_model(model, (ids[:1],), (ids[:16],))
    layers = {lay.name: lay for lay in space.layers}
    assert layers["emb"].key("kernel") == layers["out"].key("kernel") == "emb.kernel"
    assert layers["emb"].kernel == layers["out"].kernel  # the kernels valid for both (embedding bits)
    params = space.parameters()
    assert [k for k in params if k.endswith(".kernel") and k.split(".")[0] in ("emb", "out")] == ["emb.kernel"]
    assert not any(k.endswith(".width") for k in params)  # emb's and mid's widths slice the tied table
    resizable = {g.name for g in width_groups(model, (ids[:1],))}
    assert not resizable & {"emb", "mid"}
    with pytest.raises(ConfigError, match="tied"):
        resize_groups(model, (ids[:1],), {"mid": 0.5})


def test_a_plan_giving_the_tied_layers_different_kernels_is_an_error_naming_both():
    model, ids = _model_and_ids()
    plan = Plan({"emb": LayerPlan(kernel="quantized_bits(4,2,1)"), "out": LayerPlan(kernel="quantized_bits(8,2,1)")})
    with pytest.raises(ConfigError, match=r"emb\.weight.*out\.weight"):
        build_candidate(model, (ids[:1],), plan)
    with pytest.raises(ConfigError, match=r"emb\.weight.*unquantized"):  # one of them left float: also two tensors
        build_candidate(model, (ids[:1],), Plan({"out": LayerPlan(kernel="quantized_bits(8,2,1)")}))


def test_a_candidate_keeps_the_tie_and_codes_it_once():
    model, ids = _model_and_ids()
    plan = Plan({"emb": LayerPlan(kernel="quantized_bits(6,2,1)"), "out": LayerPlan(kernel="quantized_bits(6,2,1)")})
    candidate = build_candidate(model, (ids[:1],), plan)
    assert candidate.emb.weight is candidate.out.weight
    assert sum(p.numel() for p in candidate.parameters()) == sum(p.numel() for p in model.parameters())
    state = quantized_state(candidate)
    assert state["emb.weight"] is state["out.weight"]  # one code array for both names


def test_pruning_masks_leave_a_table_tied_to_an_embedding_alone():
    model, ids = _model_and_ids()
    masks = global_magnitude_masks(model, 0.5)
    assert "out" not in masks and "mid" in masks
    with pytest.raises(ConfigError, match="tied"):
        apply_masks(model, {"out": torch.ones(VOCAB, DIM)})


@pytest.fixture(scope="module")
def tied_search(tmp_path_factory):
    """One short search of the tied model (shared by the tests reading its result)."""
    tmp_path = tmp_path_factory.mktemp("tied_search")
    model, ids = _model_and_ids()
    space = SearchSpace.from_model(model, (ids[:1],), (ids[:16],), kernels=("quantized_bits({b},{i},1)",))
    task = FidelityTask(model, (ids[:24],), (ids[24:],))
    cfg = SearchConfig(controller="random", n_trials=2, proxy_epochs=1, final_epochs=1, out_dir=str(tmp_path),
                       progress=False, seed=0)
    return model, run_search(model, space, task, cfg)


def test_a_searched_tied_model_keeps_one_table(tied_search):
    model, result = tied_search
    searched = result.model
    assert searched.emb.weight is searched.out.weight
    assert sum(p.numel() for p in searched.parameters()) == sum(p.numel() for p in model.parameters())
    kernels = {result.plan.resolve(n).kernel for n in ("emb", "out")}
    assert len(kernels) == 1 and None not in kernels
    state = quantized_state(searched)
    assert state["emb.weight"] is state["out.weight"]


def test_the_searched_stream_stores_the_tied_table_once(tied_search):
    _, result = tied_search
    info = nncodec.read_info(result.bitstream.read_bytes())
    assert info.aliases in ({"out.weight": "emb.weight"}, {"emb.weight": "out.weight"})


def test_the_size_of_a_tied_candidate_counts_the_table_once():
    from nncodec.search.candidate import model_size_bits, nonzero_size_bits

    model, ids = _model_and_ids()
    plan = Plan({"emb": LayerPlan(kernel="quantized_bits(6,2,1)"), "out": LayerPlan(kernel="quantized_bits(6,2,1)")})
    candidate = build_candidate(model, (ids[:1],), plan)
    mid = sum(p.numel() for p in model.mid.parameters()) * 32
    assert model_size_bits(candidate) == VOCAB * DIM * 6 + mid
    nonzero_table = int(torch.count_nonzero(candidate.emb.kernel_quantizer(candidate.emb.weight, False))) * 6
    assert nonzero_size_bits(candidate) == nonzero_table + sum(int(torch.count_nonzero(p)) for p in model.mid.parameters()) * 32


def test_input_steps_on_a_tied_layer_are_an_error_and_not_in_the_space():
    """Per-channel input steps fold into the weight's columns in place: on a tied output projection they
    would rescale the embedding table. quantize_model and fit_input_steps refuse them naming the layers, and
    the space offers no input choice for a tied layer (an untied Linear keeps its own)."""
    from nncodec.quant.input_steps import fit_input_steps
    from nncodec.quant.layers import quantize_model

    model, ids = _model_and_ids()
    k = "quantized_bits(8,2,1,alpha='auto')"
    plan = Plan({"emb": LayerPlan(kernel=k), "out": LayerPlan(kernel=k, input="quantized_bits(8,2,1)")})
    with pytest.raises(ConfigError, match=r"input quantizer to \['out'\].*tied to \['emb'\]"):
        quantize_model(model, plan)
    q = quantize_model(model, Plan({"emb": LayerPlan(kernel=k), "out": LayerPlan(kernel=k)}))
    q.out.set_input_quantizer("quantized_bits(8,2,1)")  # by hand, past the plan check
    table = q.emb.weight.detach().clone()
    with pytest.raises(ConfigError, match=r"\['out'\].*tied"):
        fit_input_steps(q, [(ids[:8],)])
    assert torch.equal(q.emb.weight, table)
    space = SearchSpace.from_model(model, (ids[:1],), (ids[:16],), kernels=("quantized_bits({b},{i},1,alpha='auto')",),
                                   bits={"input": {"dense": (8,)}})
    layers = {lay.name: lay for lay in space.layers}
    assert layers["out"].input == [] and layers["mid"].input
    assert "mid.input" in space.parameters() and not any(k.startswith(("emb.", "out.")) and k.endswith(".input")
                                                         for k in space.parameters())


class ThreeTied(nn.Module):
    """Three Linear layers sharing one weight, each with its own bias and activation."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(DIM, DIM), nn.Linear(DIM, DIM), nn.Linear(DIM, DIM)
        self.b.weight = self.a.weight
        self.c.weight = self.a.weight
        self.h = nn.Linear(DIM, 2)

    def forward(self, x):
        return self.h(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


class BiasedTiedLM(TiedLM):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(DIM, VOCAB)
        self.out.weight = self.emb.weight


def test_tied_layers_share_only_the_kernel_choice():
    """Only the weight is shared: each tied layer keeps its own bias and activation choice (three tied
    Linears: three of each), an embedding tied to a Linear with a bias gets no bias quantizer, and a plan
    with different biases / activations builds, keeps the tie and round-trips through JSON."""
    torch.manual_seed(0)
    model, x = ThreeTied().eval(), torch.randn(16, DIM)
    space = SearchSpace.from_model(model, (x[:1],), (x,))
    params = space.parameters()
    assert [k for k in params if k.endswith(".kernel")] == ["a.kernel", "h.kernel"]
    for role in ("bias", "activation"):
        assert {f"{n}.{role}" for n in "abc"} <= set(params)
    choices = {k: v[0] for k, v in params.items()}
    choices.update({"b.bias": params["b.bias"][-1], "c.activation": params["c.activation"][-1]})
    plan = space.plan_from(choices)
    assert plan.layers["a"].kernel == plan.layers["b"].kernel == plan.layers["c"].kernel
    assert plan.layers["a"].bias != plan.layers["b"].bias
    assert plan.layers["b"].activation != plan.layers["c"].activation
    assert Plan.from_json(plan.to_json()).to_dict() == plan.to_dict()
    from nncodec.search.greedy import knobs_of
    from nncodec.search.surrogate import base_choices
    assert set(base_choices(space)) == {k for k in params if not k.endswith(".width")}
    assert {k.key for k in knobs_of(space)} <= set(params) and "b.kernel" not in {k.key for k in knobs_of(space)}
    candidate = build_candidate(model, (x[:1],), Plan.from_json(plan.to_json()))
    assert candidate.a.weight is candidate.b.weight is candidate.c.weight
    assert candidate.b.bias_quantizer.spec() != candidate.a.bias_quantizer.spec()

    torch.manual_seed(0)
    lm, ids = BiasedTiedLM().eval(), torch.randint(0, VOCAB, (16, 6))
    space = SearchSpace.from_model(lm, (ids[:1],), (ids,))
    params = space.parameters()
    assert "out.bias" in params and "emb.bias" not in params
    plan = space.plan_from({k: v[0] for k, v in params.items()})
    assert plan.layers["emb"].bias is None and plan.layers["out"].bias == params["out.bias"][0]
    build_candidate(lm, (ids[:1],), plan)

"""Data-aware initial kernels (quant.gptq.initialize_kernels) and the search's ``initial_kernels`` option."""

import copy

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.quant.gptq import initialize_kernels
from nncodec.quant.layers import quantize_model
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search import FidelityTask, FunctionTask, SearchConfig, SearchSpace, run_search
from tests.search.graph_models import TinyTransformer

TOKENS = torch.randint(0, 50, (192, 9), generator=torch.Generator().manual_seed(3))


def _reference() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def _plan(ref: nn.Module, kernel: str) -> Plan:
    return Plan(layers={n: LayerPlan(kernel=kernel) for n, m in ref.named_modules() if isinstance(m, nn.Linear)})


def _error(ref: nn.Module, model: nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        want, got = ref(tokens), model(tokens)
    return float((got - want).pow(2).mean() / want.pow(2).mean())


def _batches(tokens: torch.Tensor) -> list[tuple[torch.Tensor]]:
    return [(tokens[i:i + 32],) for i in range(0, len(tokens), 32)]


@pytest.mark.parametrize("kernel", ["quantized_bits(3,0,1,alpha='auto')", "quantized_bits(4,0,1)"])
def test_gptq_kernels_lower_the_output_error_and_stay_on_the_grid(kernel):
    ref = _reference()
    plain = quantize_model(copy.deepcopy(ref), _plan(ref, kernel))
    model = copy.deepcopy(plain)
    changed = initialize_kernels(model, _batches(TOKENS[:128]), lambda m, b: m(*b))
    assert len(changed) == 13  # 2 blocks x 6 Linear layers + the head
    held_out = TOKENS[128:]
    assert _error(ref, model, held_out) < 0.8 * _error(ref, plain, held_out)
    for name in changed:  # the float weights are already quantized: training starts from these codes
        mod = dict(model.named_modules())[name.rsplit(".", 1)[0]]
        with torch.no_grad():
            assert torch.equal(mod.quantized_weight(), mod.weight)


def test_gptq_kernels_need_a_quantized_kernel():
    with pytest.raises(ConfigError, match="quantized_bits kernel"):
        initialize_kernels(_reference(), _batches(TOKENS[:32]), lambda m, b: m(*b))


def test_search_starts_candidates_from_gptq_kernels(tmp_path):
    ref = _reference()
    space = SearchSpace.from_model(ref, TOKENS[:1], TOKENS[:64], kernels=("quantized_bits({b},{i},1,alpha='auto')",),
                                   bits={"kernel": {"dense": (3,)}}, widths=(1.0,), layer_outputs=False,
                                   module_outputs=False)
    task = FidelityTask(ref, TOKENS[:128], TOKENS[128:], metric="cosine", batch_size=32, lr=1e-9)
    scores = {}
    for how in ("nearest", "gptq"):
        cfg = SearchConfig(controller="random", n_trials=1, final_epochs=0, out_dir=str(tmp_path / how),
                           progress=False, initial_kernels=how)
        scores[how] = run_search(ref, space, task, cfg).accuracy
    assert scores["gptq"] > scores["nearest"]  # same plan, no training (lr ~ 0): the start is the difference
    with pytest.raises(ConfigError, match="initial_kernels"):
        SearchConfig(initial_kernels="adaround")
    for own_weights in ({"controller": "differentiable"}, {"schedule": "iterative"}):
        with pytest.raises(ConfigError, match="trains its own weights"):  # they return trained weights
            SearchConfig(initial_kernels="gptq", **own_weights)
    no_inputs = FunctionTask(lambda m, e: None, lambda m: 1.0)
    with pytest.raises(ConfigError, match="calibration_inputs"):
        run_search(ref, space, no_inputs, SearchConfig(controller="random", n_trials=1, final_epochs=0,
                                                       out_dir=str(tmp_path / "f"), progress=False,
                                                       initial_kernels="gptq"))

"""Sensitivity probes replay the module calls that precede the probed tensor: the same results, bit for bit."""

import pytest
import torch
from torch import nn

from nncodec.call_replay import CallReplay
from nncodec.sensitivity import output_sensitivity


class Residual(nn.Module):
    """Embedding, then blocks with residual connections and an in-place ReLU on a tensor used again."""

    def __init__(self, inplace_on_input: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
                                    for _ in range(4))
        self.norm = nn.LayerNorm(32)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(32, 8)
        self.inplace_on_input = inplace_on_input

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for i, block in enumerate(self.blocks):
            if self.inplace_on_input and i == 2:
                y = self.act(x)  # changes x itself: x is used again below
                x = x + block(y)
            else:
                x = x + block(x)
        return self.head(self.norm(x)).mean(dim=1)


def _batches() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randint(0, 50, (6, 7), generator=g) for _ in range(2)]


def _forward(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)


def test_replayed_probes_give_the_full_forwards_sensitivities_bit_for_bit() -> None:
    for inplace in (False, True):
        torch.manual_seed(0)
        model = Residual(inplace)
        full = output_sensitivity(model, _batches(), forward=_forward, progress=False, reuse=False)
        replayed = output_sensitivity(model, _batches(), forward=_forward, progress=False, reuse=True)
        assert replayed == full  # exact equality: same floats
        assert full["head.weight"] > 0 and full["blocks.3.2.weight"] > 0
        assert "forward" not in vars(model) and all("forward" not in vars(m) for m in model.modules())


def test_replay_skips_the_calls_before_a_late_tensor_and_none_before_the_first() -> None:
    torch.manual_seed(0)
    model = Residual()
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(model, _batches(), _forward, {n: state[n] for n in ("embed.weight", "head.weight")})
        replay.reference()
        assert replay.enabled
        assert replay._skipped(0, "embed.weight") == set()
        skipped = replay._skipped(0, "head.weight")
        kinds = {type(replay._batches[0].calls[i].module) for i in skipped}
        assert nn.Embedding in kinds and nn.Sequential in kinds and nn.LayerNorm in kinds  # all but the head


def test_a_call_that_changes_its_input_is_not_replayed() -> None:
    torch.manual_seed(0)
    model = Residual(inplace_on_input=True)
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(model, _batches(), _forward, {"head.weight": state["head.weight"]})
        replay.reference()
        unsafe = [c.module for c in replay._batches[0].calls if not c.safe]
        assert model.act in unsafe and model.embed not in unsafe


def test_a_nondeterministic_forward_turns_replay_off() -> None:
    torch.manual_seed(0)
    model = Residual()
    state = model.state_dict(keep_vars=True)

    def noisy(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        return m(ids) + torch.randn(ids.shape[0], 8)

    with torch.no_grad():
        replay = CallReplay(model, _batches(), noisy, {"head.weight": state["head.weight"]})
        replay.reference()
    assert not replay.enabled
    assert len(replay.outputs("head.weight")) == 2  # probes still run, in full


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script: still what such models use
def test_a_torchscript_module_is_probed_in_full_with_the_same_results() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), torch.jit.script(nn.Linear(16, 4)))
    x = [torch.randn(5, 8)]
    full = output_sensitivity(model, x, progress=False, reuse=False)
    assert output_sensitivity(model, x, progress=False) == full
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(model, x, _forward, {"0.weight": state["0.weight"]})
        replay.reference()
    assert not replay.enabled

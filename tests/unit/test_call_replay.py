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
    assert output_sensitivity(model, x, progress=False, reuse=True) == full
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(model, x, _forward, {"0.weight": state["0.weight"]})
        replay.reference()
    assert not replay.enabled


def _both(model: nn.Module, batches: list, forward=_forward) -> tuple[dict, dict]:
    full = output_sensitivity(model, batches, forward=forward, progress=False, reuse=False)
    return full, output_sensitivity(model, batches, forward=forward, progress=False, reuse=True)


def test_transformer_encoder_layers_in_eval_mode_give_the_plain_forwards_sensitivities() -> None:
    # a watched op makes the encoder layers leave their fast path: the reference must not come from that pass
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
                          nn.Linear(32, 4))
    batches = [torch.randn(3, 5, 16) for _ in range(2)]
    full, replayed = _both(model, batches)
    assert replayed == full and full["2.weight"] > 0


class _Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("n", torch.zeros(()))
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n = self.n + 1  # a new buffer object, read by the parent after the call
        return self.lin(x)


class _ResetsCounter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.count = _Counter()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.n = torch.zeros(())
        y = self.count(x)
        return self.head(y) * self.count.n


def test_a_call_reassigning_a_buffer_is_not_replayed() -> None:
    torch.manual_seed(0)
    model = _ResetsCounter()
    full, replayed = _both(model, [torch.randn(4, 8)])
    assert replayed == full and full["head.weight"] > 0
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(model, [torch.randn(4, 8)], _forward, {"head.weight": state["head.weight"]})
        replay.reference()
    assert replay.enabled
    unsafe = {c.module for c in replay._batches[0].calls if not c.safe}
    assert model.count in unsafe and model.count.lin not in unsafe


class _Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.last = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        self.last = y.abs().mean()  # read by the parent after the call
        return y


class _ReadsGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate = _Gate()
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gate(x)
        return self.head(y) * self.gate.last


class _Bumps(nn.Module):
    """Writes its own parameter in place: a state change no output shows."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.scale.mul_(1.0)
        return self.lin(x) * self.scale


def test_a_call_storing_an_attribute_or_writing_a_parameter_is_not_replayed() -> None:
    torch.manual_seed(0)
    model = _ReadsGate()
    full, replayed = _both(model, [torch.randn(4, 8)])
    assert replayed == full and full["gate.lin.weight"] > 0
    bumps = nn.Sequential(_Bumps(), nn.Linear(8, 2))
    x = [torch.randn(4, 8)]
    state = bumps.state_dict(keep_vars=True)
    with torch.no_grad():
        replay = CallReplay(bumps, x, _forward, {"1.weight": state["1.weight"]})
        replay.reference()
    assert replay.enabled
    assert not replay._batches[0].calls[1].safe and replay._batches[0].calls[2].safe  # _Bumps; its Linear


class _Noise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * torch.rand_like(x)  # draws random numbers, changes nothing


class _Dropouts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = nn.functional.dropout
        return self.head(drop(self.lin(x), 0.5, training=True) + drop(x, 0.5, training=True))


def test_a_call_drawing_random_numbers_is_not_replayed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Noise(), _Dropouts())

    def seeded(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)  # deterministic, but the later dropouts depend on the numbers drawn before
        return m(x)

    full, replayed = _both(model, [torch.randn(4, 8)], forward=seeded)
    assert replayed == full and full["1.head.weight"] > 0


def test_outputs_beyond_the_memory_cap_are_not_stored_and_probes_run_in_full(monkeypatch) -> None:
    torch.manual_seed(0)
    model = Residual()
    state = model.state_dict(keep_vars=True)
    watched = {n: state[n] for n in ("blocks.3.2.weight", "head.weight")}
    with torch.no_grad():
        free = CallReplay(model, _batches(), _forward, watched)
        free.reference()
        sizes = sorted(t.numel() * t.element_size() for t in free._batches[0].stored.values())
        assert sizes  # without a cap, outputs are stored
        for cap in (0, sizes[0]):
            monkeypatch.setattr("nncodec.call_replay.MAX_STORED_BYTES", cap)
            capped = CallReplay(model, _batches(), _forward, watched)
            plain = [model(b) for b in _batches()]
            assert all(torch.equal(a, b) for a, b in zip(capped.reference(), plain))
            stored = sum(t.numel() * t.element_size() for b in capped._batches for t in b.stored.values())
            assert stored <= cap and capped.enabled
            for name, t in watched.items():
                original = t.clone()
                t.add_(0.05)
                try:
                    want = [model(b) for b in _batches()]
                    got = capped.outputs(name)
                finally:
                    t.copy_(original)
                assert all(torch.equal(a, b) for a, b in zip(got, want))
            full, replayed = _both(model, _batches())
            assert replayed == full

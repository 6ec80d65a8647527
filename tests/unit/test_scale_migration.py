"""Scale migration (quant.smoothing): norm outputs divided per channel, the Linear layers reading them scaled."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nncodec.errors import ConfigError
from nncodec.quant.layers import quantize_model
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.quant.smoothing import migrate_scales, norm_consumers
from tests.search.graph_models import TinyTransformer


class PreNormBlock(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.norm2, self.fc1, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PreNormTransformer(nn.Module):
    """Two pre-norm blocks and a final norm before the head; a few norm channels carry large gains (the
    outlier channels of trained transformers)."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.blocks = nn.Sequential(PreNormBlock(dim), PreNormBlock(dim))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 4)
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight[:2].mul_(40)
                    m.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(x)))


X = torch.randn(96, 8, 32, generator=torch.Generator().manual_seed(1))
NORMS = {"blocks.0.norm1": ["blocks.0.qkv"], "blocks.0.norm2": ["blocks.0.fc1"], "blocks.1.norm1": ["blocks.1.qkv"],
         "blocks.1.norm2": ["blocks.1.fc1"], "norm": ["head"]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return PreNormTransformer().eval()


def _a8_error(model: nn.Module, ref: nn.Module) -> float:
    """Output error with 8-bit kernels (one step per output channel) and 8-bit norm outputs (one power-of-two
    range per tensor, the smallest that holds the sample's outputs), everything else float."""
    peaks = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: peaks.__setitem__(n, float(o.abs().max())))
             for n, m in model.named_modules() if n in NORMS]
    with torch.no_grad():
        model(X[:64])
    for h in hooks:
        h.remove()
    layers = {n: LayerPlan(kernel="quantized_bits(8,0,1,alpha='auto')") for n, m in model.named_modules()
              if isinstance(m, nn.Linear)}
    layers.update({n: LayerPlan(activation=f"quantized_bits(8,{math.ceil(math.log2(p))},1)") for n, p in peaks.items()})
    q = quantize_model(copy.deepcopy(model), Plan(layers=layers))
    with torch.no_grad():
        want, got = ref(X[64:]), q(X[64:])
    return float((got - want).pow(2).mean() / want.pow(2).mean())


def test_migration_keeps_the_float_function_and_lowers_the_a8_error():
    ref = _model()
    model = copy.deepcopy(ref)
    done = migrate_scales(model, X[:64], alpha=0.5)
    assert done.consumers == NORMS and not done.skipped
    assert all(s.shape == (32,) and bool((s > 0).all()) for s in done.scales.values())
    with torch.no_grad():
        assert torch.allclose(model(X), ref(X), rtol=1e-4, atol=1e-4)
        # the outlier channels were divided down the most
        assert bool((done.scales["blocks.0.norm1"][:2] > 4 * done.scales["blocks.0.norm1"][2:].median()).all())
    assert _a8_error(model, ref) < 0.5 * _a8_error(ref, ref)


def test_alpha_zero_and_chosen_norms():
    ref = _model()
    model = copy.deepcopy(ref)
    done = migrate_scales(model, X[:64], alpha=0.0, norms=["norm"])
    assert list(done.scales) == ["norm"] and done.consumers == {"norm": ["head"]}
    with torch.no_grad():  # alpha 0 is not the identity (s = 1 / max|W|) but keeps the function all the same
        assert not torch.allclose(done.scales["norm"], torch.ones(32))
        assert torch.allclose(model(X), ref(X), rtol=1e-4, atol=1e-4)
    assert set(done.skipped) == set()  # the others were eligible, just not asked for
    with pytest.raises(ConfigError, match="alpha"):
        migrate_scales(_model(), X[:8], alpha=1.5)
    with pytest.raises(ConfigError, match="no_such_norm"):
        migrate_scales(_model(), X[:8], norms=["no_such_norm"])


def test_post_norm_blocks_are_not_eligible():
    """In a post-norm block the norm's output is also the next residual summand: scaling it would change the
    model, so nothing is migrated and the error says why."""
    torch.manual_seed(0)
    ref = TinyTransformer().eval()
    tokens = torch.randint(0, 50, (16, 9), generator=torch.Generator().manual_seed(2))
    eligible, skipped = norm_consumers(ref, tokens[:1])
    assert not eligible
    assert "add" in skipped["blocks.0.norm1"] and "add" in skipped["blocks.0.norm2"]
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    with pytest.raises(ConfigError, match="blocks.0.norm1"):
        migrate_scales(ref, tokens)
    with pytest.raises(ConfigError, match="not only Linear"):
        migrate_scales(ref, tokens, norms=["blocks.1.norm2"])
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in before.items())


class SharedConsumer(nn.Module):
    """One Linear reads two norms (weight sharing), or a norm and another input."""

    def __init__(self, second_norm: bool):
        super().__init__()
        self.n1, self.n2, self.other = nn.LayerNorm(16), nn.LayerNorm(16), nn.Linear(16, 16)
        self.proj, self.second_norm = nn.Linear(16, 16), second_norm
        with torch.no_grad():
            self.n1.weight[:2].mul_(30)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.n1(x)) + self.proj(self.n2(2 * x) if self.second_norm else self.other(x))


@pytest.mark.parametrize("second_norm", [True, False])
def test_a_consumer_called_twice_is_not_eligible(second_norm: bool):
    """Scaling a shared Linear's input columns would scale its other input too: such norms are skipped
    (and the model is left as it was), not migrated into a different function."""
    torch.manual_seed(0)
    ref = SharedConsumer(second_norm).eval()
    x = torch.randn(32, 5, 16, generator=torch.Generator().manual_seed(3))
    eligible, skipped = norm_consumers(ref, x[:1])
    assert "n1" not in eligible and "called more than once" in skipped["n1"]
    model = copy.deepcopy(ref)
    with pytest.raises(ConfigError, match="called more than once"):
        migrate_scales(model, x)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))


class TiedAfterNorm(nn.Module):
    """A norm read by a Linear whose weight is also an embedding table (a tied output projection)."""

    def __init__(self, vocab: int = 20, dim: int = 8):
        super().__init__()
        self.emb, self.norm, self.out = nn.Embedding(vocab, dim), nn.LayerNorm(dim), nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(self.emb(ids)))


def test_a_norm_read_by_a_tied_linear_is_not_migrated():
    """Migrating would scale the tied Linear's columns in place: the embedding table too."""
    torch.manual_seed(0)
    model, ids = TiedAfterNorm().eval(), torch.randint(0, 20, (16, 5))
    eligible, skipped = norm_consumers(model, (ids[:1],))
    assert "norm" not in eligible and "tied" in skipped["norm"]
    table = model.emb.weight.detach().clone()
    with pytest.raises(ConfigError, match="tied"):
        migrate_scales(model, (ids,))
    assert torch.equal(model.emb.weight, table)

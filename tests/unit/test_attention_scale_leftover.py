"""Shrinking an ``nn.MultiheadAttention``'s per-head dimension keeps its softmax scale: PyTorch divides the
logits by sqrt(head_dim), so the kept query rows are scaled by sqrt(new / old); removing channels whose
weights are all zero then leaves the outputs unchanged."""

import math

import pytest
import torch
from torch import nn

from nncodec.prune.graph import Resizer, resize_groups, width_groups
from nncodec.prune.structured import resize_layers

E, HEADS = 16, 4
HEAD = E // HEADS


class Attn(nn.Module):
    def __init__(self, bias: bool = True):
        super().__init__()
        self.inp = nn.Linear(8, E)
        self.mha = nn.MultiheadAttention(E, HEADS, batch_first=True, bias=bias)
        self.out = nn.Linear(E, 3)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.mha(h, h, h, need_weights=False)
        return self.out(a)


def _silenced(bias: bool = True) -> tuple[nn.Module, list[int]]:
    """The model with positions 2 and 3 of every head (the channels a 0.5 width drops) zero in every weight
    that reads or writes them, and large logits elsewhere (so a wrong scale shows)."""
    torch.manual_seed(0)
    m = Attn(bias).eval()
    drop = [h * HEAD + j for h in range(HEADS) for j in (2, 3)]
    with torch.no_grad():
        m.mha.in_proj_weight.mul_(4.0)
        m.inp.weight[drop] = 0
        m.inp.bias[drop] = 0
        for part in range(3):
            rows = [part * E + d for d in drop]
            m.mha.in_proj_weight[rows] = 0
            if bias:
                m.mha.in_proj_bias[rows] = 0
        m.mha.in_proj_weight[:, drop] = 0
        m.mha.out_proj.weight[drop] = 0
        m.mha.out_proj.weight[:, drop] = 0
        if bias:
            m.mha.out_proj.bias[drop] = 0
        m.out.weight[:, drop] = 0
    return m, drop


def _resized(model, x, how):
    if how == "resize_groups":
        return resize_groups(model, x, {"inp": 0.5})
    if how == "resizer":
        return Resizer(model, x).resize({"inp": 0.5})
    return resize_layers(model, {"inp": 0.5}, x)


@pytest.mark.parametrize("how", ["resize_groups", "resizer", "resize_layers"])
@pytest.mark.parametrize("bias", [True, False])
def test_dropping_silent_channels_keeps_the_attention_outputs(how, bias):
    model, _ = _silenced(bias)
    x = torch.randn(2, 5, 8)
    g = next(g for g in width_groups(model, x) if "mha" in g.producers + g.consumers)
    assert g.blocks == HEADS
    small = _resized(model, x, how)
    assert small.mha.embed_dim == E // 2 and small.mha.num_heads == HEADS and small.mha.head_dim == HEAD // 2
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5), (small(x) - model(x)).abs().max()


def test_the_kept_query_rows_are_rescaled_only():
    model, drop = _silenced()
    x = torch.randn(2, 5, 8)
    small = resize_groups(model, x, {"inp": 0.5})
    keep = [c for c in range(E) if c not in drop]
    w, b = model.mha.in_proj_weight, model.mha.in_proj_bias
    ratio = (HEAD // 2 / HEAD) ** 0.5
    sw, sb = small.mha.in_proj_weight, small.mha.in_proj_bias
    half = E // 2
    assert torch.allclose(sw[:half], w[keep][:, keep] * ratio)
    assert torch.allclose(sb[:half], b[keep] * ratio)
    keys = [E + c for c in keep]
    assert torch.equal(sw[half:2 * half], w[keys][:, keep])   # keys and values as they were
    assert torch.equal(sb[half:], b[[E + c for c in keep] + [2 * E + c for c in keep]])


def test_an_mha_group_does_not_widen():
    """Widening would change the head dimension (and append channels the softmax reads): refused, so no resize
    changes an nn.MultiheadAttention's scale without the compensation above."""
    from nncodec.errors import ConfigError

    model, _ = _silenced()
    x = torch.randn(2, 5, 8)
    g = next(g for g in width_groups(model, x) if "mha" in g.producers + g.consumers)
    assert not g.can_widen and "MultiheadAttention" in g.reason
    with pytest.raises(ConfigError, match="cannot widen"):
        resize_groups(model, x, {"inp": 1.5})


class HandWritten(nn.Module):
    """Multi-head attention written with linears, a view into heads and scaled_dot_product_attention."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, E)
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.out = nn.Linear(E, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        q, k, v = (m(h).view(b, t, HEADS, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(self.o(a.transpose(1, 2).reshape(b, t, -1)))


def test_a_hand_written_attention_keeps_its_head_size():
    """Its head split is a view in forward, unknown to the dependency graph: the projections feeding the
    attention keep their width (a ConfigError names why) instead of losing channels across heads and their
    softmax scale; the layers around it still resize."""
    from nncodec.errors import ConfigError

    torch.manual_seed(0)
    model, x = HandWritten().eval(), torch.randn(2, 5, 8)
    names = {g.name for g in width_groups(model, x)}
    assert "inp" in names and not names & {"q", "k", "v"}
    with pytest.raises(ConfigError, match="hand-written attention"):
        resize_groups(model, x, {"q": 0.5})
    assert resize_groups(model, x, {"inp": 0.5}).inp.out_features == E // 2


class MatmulAttention(nn.Module):
    """Multi-head attention written out: heads split by a view, then q @ k^T / sqrt(d), softmax, @ v (the
    non-fused paths of timm / nanoGPT); ``fused``: one qkv projection reshaped into (3, heads, d) as timm does."""

    def __init__(self, fused: bool = False):
        super().__init__()
        self.fused = fused
        self.inp = nn.Linear(8, E)
        if fused:
            self.qkv = nn.Linear(E, 3 * E)
        else:
            self.q, self.k, self.v = (nn.Linear(E, E) for _ in range(3))
        self.o = nn.Linear(E, E)
        self.out = nn.Linear(E, 3)

    def forward(self, x):
        h = self.inp(x)
        b, t, _ = h.shape
        if self.fused:
            q, k, v = self.qkv(h).reshape(b, t, 3, HEADS, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (m(h).view(b, t, HEADS, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        a = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1) @ v
        return self.out(self.o(a.transpose(1, 2).reshape(b, t, -1)))


class SingleHead(HandWritten):
    """One head, no head split, a constant scale: removing a channel of q, k and v is exact."""

    def forward(self, x):
        h = self.inp(x)
        a = (self.q(h) @ self.k(h).transpose(-2, -1) / 4.0).softmax(-1) @ self.v(h)
        return self.out(self.o(a))


@pytest.mark.parametrize("fused", [False, True])
def test_a_matmul_attention_after_a_head_split_keeps_its_head_size(fused):
    """Without scaled_dot_product_attention the head split is as invisible to the dependency graph: the
    projections into the heads keep their width (a ConfigError names why); the layers around still resize."""
    from nncodec.errors import ConfigError

    torch.manual_seed(0)
    model, x = MatmulAttention(fused).eval(), torch.randn(2, 5, 8)
    proj = ["qkv"] if fused else ["q", "k", "v"]
    names = {g.name for g in width_groups(model, x)}
    assert {"inp", "o"} <= names and not names & set(proj)
    with pytest.raises(ConfigError, match="hand-written attention.*view / reshape"):
        resize_groups(model, x, {proj[0]: 0.5})
    resized = resize_groups(model, x, {"inp": 0.5, "o": 0.5})
    assert resized.inp.out_features == E // 2 and resized.o.out_features == E // 2
    assert resized(x).shape == (2, 5, 3)


def test_a_single_head_matmul_attention_without_a_split_still_resizes():
    """No view into heads: q, k, v (one group) shrink; channels silent in q, k and v leave the output as it was."""
    torch.manual_seed(0)
    model, x = SingleHead().eval(), torch.randn(2, 5, 8)
    assert "q" in {g.name for g in width_groups(model, x)}
    with torch.no_grad():
        for lin in (model.q, model.k, model.v):
            lin.weight[::2] = 0.0
            lin.bias[::2] = 0.0
    resized = resize_groups(model, x, {"q": 0.5})
    assert resized.q.out_features == resized.k.out_features == resized.v.out_features == E // 2
    assert torch.allclose(resized(x), model(x), atol=1e-6)


class OddMHA(nn.Module):
    """An nn.MultiheadAttention with separate key / value sizes (kdim, vdim) or learned key / value biases
    (add_bias_kv), behind a small MLP."""

    def __init__(self, **kw):
        super().__init__()
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 6)
        self.inp, self.kv = nn.Linear(6, E), nn.Linear(6, kw.get("kdim", E))
        self.att = nn.MultiheadAttention(E, HEADS, batch_first=True, **kw)
        self.out = nn.Linear(E, 3)

    def forward(self, x):
        h = self.b(torch.relu(self.a(x)))
        kv = self.kv(h)
        return self.out(self.att(self.inp(h), kv, kv, need_weights=False)[0])


@pytest.mark.parametrize("kw, what", [(dict(kdim=10, vdim=10), "kdim=10, vdim=10"), (dict(add_bias_kv=True), "add_bias_kv")])
def test_an_mha_torch_pruning_cannot_slice_keeps_its_width(kw, what):
    """Its separate q / k / v weights or its bias_k / bias_v were left unsliced (an AssertionError or a
    TypeError in the forward): the groups it is in keep their width with the reason; others resize."""
    from nncodec.errors import ConfigError

    torch.manual_seed(0)
    model, x = OddMHA(**kw).eval(), torch.randn(2, 5, 6)
    names = {g.name for g in width_groups(model, x)}
    assert "a" in names and "inp" not in names
    with pytest.raises(ConfigError, match=f"'att' is an nn.MultiheadAttention with {what}"):
        resize_groups(model, x, {"inp": 0.5})
    with torch.no_grad():
        model.b.weight[:, ::2] = 0.0  # a's even channels are silent: removing them changes nothing
    resized = resize_groups(model, x, {"a": 0.5})
    assert resized.a.out_features == 6
    assert torch.allclose(resized(x), model(x), atol=1e-5)

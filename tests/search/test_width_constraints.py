"""Width groups on layers whose channels come in blocks or cannot move: grouped convs, nn.MultiheadAttention,
GroupNorm, LayerNorm over several dimensions, a residual sum with the model input, bidirectional LSTMs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nncodec.errors import ConfigError
from nncodec.prune import graph
from nncodec.prune.graph import Resizer, resize_groups, width_groups
from nncodec.quant.plan import Plan
from nncodec.search import SearchConfig, SearchSpace
from nncodec.search.candidate import build_candidate
from nncodec.search.runner import _Searcher
from tests.search.digits import digits_cnn, space, task


def _image(n=3):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _sequence(n=3):
    return torch.randn(n, 5, 3, generator=torch.Generator().manual_seed(2))


class GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).mean((2, 3)))


def test_a_plan_key_matching_no_group_is_an_error_also_when_nothing_changes():
    model, x = GroupedConvNet().eval(), _image()
    with pytest.raises(ConfigError, match="no_such_layer"):
        resize_groups(model, x, {"no_such_layer": 1.0})
    with pytest.raises(ConfigError, match="no_such_layer"):
        Resizer(model, x).resize({"no_such_layer": 1.0})
    same = resize_groups(model, x, {"c1": 1.0})  # a real group at 1.0 still changes nothing
    assert torch.equal(same(x), model(x))


def test_a_grouped_conv_drops_the_same_positions_in_every_group():
    torch.manual_seed(0)
    model, x = GroupedConvNet().eval(), _image()
    dead = [g * 4 + j for g in range(4) for j in (1, 3)]  # channels 1 and 3 of each of c2's 4 input groups
    with torch.no_grad():
        model.c1.weight[dead] = 0
        model.c1.bias[dead] = 0
        model.c2.weight[:, [1, 3]] = 0
    ref = model(x)
    (g,) = [g for g in width_groups(model, x) if g.name == "c1"]
    assert g.blocks == 4 and not g.can_widen
    for mult in (0.5, 0.6):  # 0.6 of 4 per group rounds to 2 per group: 8 channels, not 10
        small = resize_groups(model, x, {"c1": mult})
        assert (small.c1.out_channels, small.c2.in_channels, small.c2.groups) == (8, 8, 4)
        torch.testing.assert_close(small(x), ref)  # the dead channels went, every group kept its live ones
    with pytest.raises(ConfigError, match="grouped"):
        resize_groups(model, x, {"c1": 2.0})


class AttentionNet(nn.Module):
    def __init__(self, batch_first=True):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(3, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        if not self.batch_first:
            h = h.transpose(0, 1)
        a, _ = self.attn(h, h, h)
        return self.head(a.mean(1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_multihead_attention_keeps_whole_heads(batch_first):
    torch.manual_seed(0)
    model, x = AttentionNet(batch_first).eval(), _sequence()
    dead = [h * 4 + j for h in range(4) for j in (0, 2)]  # dims 0 and 2 of every head carry nothing
    with torch.no_grad():
        model.inp.weight[dead] = 0
        model.inp.bias[dead] = 0
        w = model.attn.in_proj_weight
        w[:, dead] = 0
        for part in range(3):
            w[[part * 16 + c for c in dead]] = 0
            model.attn.in_proj_bias[[part * 16 + c for c in dead]] = 0
        model.attn.out_proj.weight[dead] = 0
        model.attn.out_proj.weight[:, dead] = 0
        model.attn.out_proj.bias[dead] = 0
        model.head.weight[:, dead] = 0
    ref = model(x)
    small = resize_groups(model, x, {"inp": 0.6})  # 2 of each head's 4 dims, not 10 channels over 4 heads
    assert (small.attn.embed_dim, small.attn.num_heads, small.attn.head_dim) == (8, 4, 2)
    # every head kept its own live dims, and the query rows were scaled by sqrt(2 / 4): the softmax scale of
    # the smaller heads (scores / sqrt(2)) is the reference's (/ sqrt(4))
    torch.testing.assert_close(small(x), ref)


def test_the_search_leaves_multihead_attention_projections_to_the_module():
    torch.manual_seed(0)
    model, x = AttentionNet().eval(), _sequence(8)
    space = SearchSpace.from_model(model, x[:1], x)
    names = [lay.name for lay in space.layers]
    assert "attn.out_proj" not in names and "inp" in names  # MHA reads out_proj.weight without calling it
    plan = space.plan_from({k: v[0] for k, v in space.parameters().items()})
    candidate = build_candidate(model, x[:1], plan)
    assert torch.isfinite(candidate(x)).all()


class InputResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        self.g = nn.Linear(8, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = x + self.f(x)
        return self.fc(F.relu(self.g(x)))


def test_a_residual_sum_with_the_model_input_fixes_its_group():
    model, x = InputResidual().eval(), torch.randn(3, 8)
    names = {p for g in width_groups(model, x) for p in g.producers}
    assert "f.2" not in names and {"f.0", "g"} <= names
    with pytest.raises(ConfigError, match="model input"):
        resize_groups(model, x, {"f.2": 0.5})
    assert resize_groups(model, x, {"f.0": 0.5, "g": 0.5})(x).shape == (3, 4)


class NormNet(nn.Module):
    def __init__(self, norm):
        super().__init__()
        self.c1 = nn.Conv2d(1, 12, 3, padding=1)
        self.n1 = norm
        self.c2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.n1(self.c1(x))))).mean((2, 3)))


def test_a_layer_norm_over_channels_and_space_fixes_its_group():
    model, x = NormNet(nn.LayerNorm([12, 8, 8])).eval(), _image()
    assert "c1" not in [g.name for g in width_groups(model, x)]
    with pytest.raises(ConfigError, match="LayerNorm"):
        resize_groups(model, x, {"c1": 0.5})


def test_a_group_norm_keeps_its_groups_equal():
    model, x = NormNet(nn.GroupNorm(3, 12)).eval(), _image()
    (g,) = [g for g in width_groups(model, x) if g.name == "c1"]
    assert g.blocks == 3
    small = resize_groups(model, x, {"c1": 0.6})  # 4 per group -> 2 per group (7 channels would not split)
    assert small.n1.num_channels == small.c1.out_channels == 6
    assert small(x).shape == (3, 4)


class ConvBiLSTM(nn.Module):
    def __init__(self, proj=0):
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 3, padding=1)
        self.rnn = nn.LSTM(8, 6, num_layers=2, batch_first=True, bidirectional=True, proj_size=proj)
        self.fc = nn.Linear(2 * (proj or 6), 4)

    def forward(self, x):
        h = F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        _, (hn, _) = self.rnn(h)
        return self.fc(torch.cat([hn[-2], hn[-1]], 1))


@pytest.mark.parametrize("proj", [0, 4])
def test_a_bidirectional_lstm_keeps_its_hidden_size_and_its_inputs_resize(proj):
    torch.manual_seed(0)
    model, x = ConvBiLSTM(proj).eval(), _sequence()
    with torch.no_grad():
        model.conv.weight[4:] = 0
        model.conv.bias[4:] = 0
        model.rnn.weight_ih_l0[:, 4:] = 0
        model.rnn.weight_ih_l0_reverse[:, 4:] = 0
    ref = model(x)
    assert [g.name for g in width_groups(model, x)] == ["conv"]
    small = resize_groups(model, x, {"conv": 0.5})
    assert small.rnn.weight_ih_l0.shape[1] == small.rnn.weight_ih_l0_reverse.shape[1] == 4
    torch.testing.assert_close(small(x), ref)  # both directions lost the same dead input columns
    wide = resize_groups(model, x, {"conv": 2.0})
    assert wide.rnn.weight_ih_l0_reverse.shape[1] == 16
    torch.testing.assert_close(wide(x), ref)  # new inputs start silent in both directions
    with pytest.raises(ConfigError, match="bidirectional"):
        resize_groups(model, x, {"rnn": 0.5})
    space = SearchSpace.from_model(model, x[:1], x, widths=(0.5, 1.0))
    assert "rnn" in [lay.name for lay in space.layers] and list(space.width_choices) == ["conv"]


def test_the_analysis_keeps_a_forward_patched_onto_a_bidirectional_lstm():
    torch.manual_seed(0)
    model, x = ConvBiLSTM().eval(), _sequence()
    calls = []
    plain = model.rnn.forward

    def patched(inp, hx=None):  # a user's instance patch (e.g. logging), kept through the analysis
        calls.append(inp.shape)
        return plain(inp, hx)

    model.rnn.forward = patched
    assert [g.name for g in width_groups(model, x)] == ["conv"]
    assert model.rnn.__dict__.get("forward") is patched
    calls.clear()
    model(x)
    assert calls == [(3, 5, 8)]


class GroupedTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.t = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=2)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.t(F.relu(self.c1(x)))))).mean((2, 3)))


def test_a_grouped_transposed_conv_fixes_the_groups_it_joins():
    model, x = GroupedTranspose().eval(), _image()
    assert [g.name for g in width_groups(model, x)] == ["c2"]
    with pytest.raises(ConfigError, match="grouped ConvTranspose2d"):
        resize_groups(model, x, {"c1": 0.5})
    with pytest.raises(ConfigError, match="'t'"):
        resize_groups(model, x, {"t": 0.5})
    assert resize_groups(model, x, {"c2": 0.5})(x).shape == (3, 4)


def test_a_search_traces_the_width_groups_once_also_when_its_plans_keep_every_width(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = digits_cnn().eval()
    searcher = _Searcher(reference, space(reference), task(), SearchConfig(out_dir=str(tmp_path)), None)
    traces = []

    class Counted(graph.GroupAnalysis):
        def __init__(self, *args, **kwargs):
            traces.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(graph, "GroupAnalysis", Counted)
    x = torch.randn(2, 1, 8, 8)
    for _ in range(4):  # plans naming groups at their full width (a fixed plan's widths): one trace in all
        candidate = searcher.build(Plan({}, widths={"0": 1.0, "2": 1.0}))
        torch.testing.assert_close(candidate(x), reference(x))
    assert len(traces) == 1
    with pytest.raises(ConfigError, match="no_such_layer"):  # the names are still checked
        searcher.build(Plan({}, widths={"no_such_layer": 1.0}))
    assert len(traces) == 1

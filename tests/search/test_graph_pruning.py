"""Width groups on graphs: residual and depthwise nets, a 2-layer GRU / LSTM and a 2-block transformer."""

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.prune.graph import group_importance, resize_groups, width_groups
from nncodec.quant.layers import QEmbedding, QGRU, quantize_model
from tests.search.graph_models import GRUClassifier, TinyMobileNet, TinyResNet, TinyTransformer


def _image():
    return torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _sequence():
    return torch.randn(3, 7, 3, generator=torch.Generator().manual_seed(2))


def _tokens():
    return torch.randint(0, 50, (3, 9), generator=torch.Generator().manual_seed(3))


def _trained_bn(model):
    """Batch-norms with non-trivial statistics, so that pruning visibly changes the function."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


CASES = {
    "resnet": (lambda: _trained_bn(TinyResNet()), _image),
    "mobilenet": (lambda: _trained_bn(TinyMobileNet()), _image),
    "gru": (lambda: GRUClassifier().eval(), _sequence),
    "lstm": (lambda: GRUClassifier(cell=nn.LSTM).eval(), _sequence),
    "transformer": (lambda: TinyTransformer().eval(), _tokens),
}


def test_residual_groups_couple_the_shortcut_and_keep_the_classifier():
    torch.manual_seed(0)
    groups = {g.name: g for g in width_groups(TinyResNet(), _image())}
    # stage 2's output: conv2, its batch-norm and the projection shortcut change together
    assert set(groups["stage2.conv2"].producers) >= {"stage2.conv2", "stage2.bn2", "stage2.shortcut.0",
                                                    "stage2.shortcut.1"}
    assert {"stage3.conv1", "stage3.shortcut.0"} <= set(groups["stage2.conv2"].consumers)
    assert "fc" in groups["stage3.conv2"].consumers
    # stage 1 has an identity shortcut: its conv2 joins the stem's group
    assert "stage1.conv2" in groups["stem.0"].producers
    assert "fc" not in groups  # the classifier keeps its width
    torch.manual_seed(0)
    mobile = {g.name: g for g in width_groups(TinyMobileNet(), _image())}
    assert {"blocks.0.depthwise.0", "blocks.0.depthwise.1"} <= set(mobile["blocks.0.expand.0"].producers)
    assert "blocks.0.project.0" in mobile["stem.0"].producers  # the residual sum couples it with the stem


def test_recurrent_and_attention_groups():
    torch.manual_seed(0)
    gru = width_groups(GRUClassifier(), _sequence())
    assert [(g.name, g.kind, g.size) for g in gru] == [("rnn", "hidden", 16)]
    kinds = {g.name: (g.kind, g.size, g.can_widen) for g in width_groups(TinyTransformer(), _tokens())}
    assert kinds["blocks.0.attention"] == ("heads", 4, True)
    assert kinds["blocks.1.ffn_in"] == ("channels", 64, True)
    assert kinds["embedding"] == ("channels", 32, False)  # layer norms cannot widen without changing the function


@pytest.mark.parametrize("case", sorted(CASES))
def test_shrinking_and_widening_keep_the_network_consistent(case):
    build, inputs = CASES[case]
    torch.manual_seed(0)
    model, x = build(), inputs()
    ref = model(x).detach()
    groups = width_groups(model, x)
    # a zero-change plan leaves outputs unchanged
    same = resize_groups(model, x, {g.name: 1.0 for g in groups})
    assert torch.equal(same(x), ref)
    narrow = resize_groups(model, x, {g.name: 0.5 for g in groups}).eval()
    y = narrow(x)
    assert y.shape == ref.shape and torch.isfinite(y).all()
    n_ref = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in narrow.parameters()) < 0.6 * n_ref
    assert {g.name: g.size for g in width_groups(narrow, x)} == {g.name: max(1, round(g.size / 2)) for g in groups}
    wide = resize_groups(model, x, {g.name: 2.0 for g in groups if g.can_widen}).eval()
    assert sum(p.numel() for p in wide.parameters()) > n_ref
    assert torch.allclose(wide(x), ref, atol=1e-5)  # new units start silent
    # the shrunk network still trains: one step lowers the loss of a fixed batch
    narrow.train()
    target = torch.zeros(y.shape[0], dtype=torch.long)
    opt = torch.optim.SGD(narrow.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(narrow(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_shrinking_keeps_the_most_important_units():
    torch.manual_seed(0)
    model, x = TinyTransformer().eval(), _tokens()
    heads = group_importance(model, x, "blocks.0.attention")
    keep = torch.sort(torch.argsort(heads, descending=True)[:2]).values
    narrow = resize_groups(model, x, {"blocks.0.attention": 0.5})
    rows = torch.cat([torch.arange(8) + 8 * int(h) for h in keep])
    assert torch.equal(narrow.blocks[0].attention.query.weight, model.blocks[0].attention.query.weight[rows])
    assert torch.equal(narrow.blocks[0].attention_out.weight, model.blocks[0].attention_out.weight[:, rows])
    assert narrow.blocks[0].attention.num_attention_heads == 2
    gru = GRUClassifier().eval()
    score = group_importance(gru, _sequence(), "rnn")
    kept = torch.sort(torch.argsort(score, descending=True)[:8]).values
    small = resize_groups(gru, _sequence(), {"rnn": 0.5})
    assert torch.equal(small.fc.weight, gru.fc.weight[:, kept])
    assert torch.equal(small.rnn.weight_hh_l1, gru.rnn.weight_hh_l1[torch.cat([kept, kept + 16, kept + 32])][:, kept])


def test_taylor_importance_uses_data():
    torch.manual_seed(0)
    model, x = _trained_bn(TinyResNet()), _image()

    def backward(m):
        nn.functional.cross_entropy(m(x), torch.tensor([1, 2, 3])).backward()

    small = resize_groups(model, x, {"stage2.conv1": 0.5}, importance="taylor", gradient_fn=backward)
    assert small.stage2.conv1.out_channels == 4
    assert all(p.grad is None for p in small.parameters())
    with pytest.raises(ConfigError, match="gradient_fn"):
        resize_groups(model, x, {"stage2.conv1": 0.5}, importance="taylor")


def test_bad_width_requests_are_errors():
    torch.manual_seed(0)
    model, x = TinyTransformer().eval(), _tokens()
    with pytest.raises(ConfigError, match="classifier"):
        resize_groups(model, x, {"fc": 0.5})
    with pytest.raises(ConfigError, match="cannot widen"):
        resize_groups(model, x, {"embedding": 1.5})
    with pytest.raises(ConfigError, match="positive"):
        resize_groups(model, x, {"blocks.0.ffn_in": -1})
    with pytest.raises(ConfigError, match="one coupled group"):
        resize_groups(TinyResNet(), _image(), {"stem.0": 0.5, "stage1.conv2": 0.75})


def test_quantized_recurrent_embedding_and_norm_layers_train():
    torch.manual_seed(0)
    model, x = TinyTransformer(), _tokens()
    q = quantize_model(model, {"layers": {"embedding": {"kernel": "quantized_bits(4,0,1)"},
                                          "blocks.0.norm1": {"activation": "quantized_bits(6,2,1)"},
                                          "blocks.*.ffn_*": {"kernel": "quantized_bits(4,0,1)"}}})
    assert isinstance(q.embedding, QEmbedding)
    assert set(q.state_dict()) == set(model.state_dict())  # names kept
    q.eval()
    table = q.embedding.quantized_weight()
    assert len(torch.unique(table)) <= 16
    levels = torch.unique(q.blocks[0].norm1(torch.randn(2, 5, 32)))
    assert torch.allclose(levels * 8, torch.round(levels * 8))  # 6 bits with 2 integer bits: steps of 1/8
    gru = quantize_model(GRUClassifier(), {"layers": {"rnn": {"kernel": "quantized_bits(3,0,1)",
                                                              "bias": "quantized_bits(8,2,1)"}}})
    assert isinstance(gru.rnn, QGRU)
    gru.train()
    before = gru.rnn.weight_hh_l1.detach().clone()
    nn.functional.cross_entropy(gru(_sequence()), torch.tensor([0, 1, 2])).backward()
    assert gru.rnn.weight_hh_l1.grad is not None and gru.rnn.weight_hh_l1.grad.abs().sum() > 0  # straight-through
    gru.eval()
    expected = GRUClassifier()
    expected.load_state_dict({k: v for k, v in gru.state_dict().items()})
    with torch.no_grad():
        for name, quantizer, value, _ in gru.rnn.quantized_tensors():
            getattr(expected.rnn, name).copy_(quantizer(value, False))
    assert torch.allclose(gru(_sequence()), expected(_sequence()), atol=1e-6)
    assert torch.equal(gru.rnn.weight_hh_l1, before)
    with pytest.raises(ConfigError, match="cannot quantize"):
        quantize_model(model, {"layers": {"blocks.0.norm1": {"kernel": "quantized_bits(4,0,1)"}}})


@pytest.mark.parametrize("case", sorted(CASES))
def test_resizer_matches_resize_groups(case):
    from nncodec.prune.graph import Resizer

    build, inputs = CASES[case]
    torch.manual_seed(0)
    model, x = build(), inputs()
    groups = width_groups(model, x)
    resizer = Resizer(model, x)
    mixes = [{g.name: (2.0 if g.can_widen and i % 2 else 0.5) for i, g in enumerate(groups)},
             {g.name: (0.5 if i % 2 or not g.can_widen else 1.5) for i, g in enumerate(groups)}]
    for seed, widths in enumerate(mixes):
        torch.manual_seed(seed)
        plain = resize_groups(model, x, widths)
        torch.manual_seed(seed)
        reused = resizer.resize(widths)
        a, b = plain.state_dict(), reused.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), widths
        assert torch.equal(plain.eval()(x), reused.eval()(x))
    with pytest.raises(ConfigError, match="Taylor"):
        Resizer(model, x, importance="taylor")

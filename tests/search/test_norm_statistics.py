"""Batch-norm statistics of search candidates: a narrowed or quantized candidate gets statistics of its own."""

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search import SearchConfig, SearchSpace
from nncodec.search.candidate import recalibrate_batch_norms
from nncodec.search.runner import INITIAL_KERNEL_EXAMPLES, _Searcher, calibration_index
from nncodec.train import accuracy, train_classifier
from tests.search.digits import INPUT, bn_cnn, data, task


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    x_train, y_train, _, _ = data()
    return train_classifier(bn_cnn(), x_train, y_train, epochs=6, lr=3e-3).eval()


def _searcher(reference, tmp_path, **kw) -> _Searcher:
    sp = SearchSpace.from_model(reference, INPUT, data()[0][:128], widths=(0.5, 1.0))
    return _Searcher(reference, sp, task(), SearchConfig(n_trials=1, out_dir=str(tmp_path), **kw), None)


def _inputs_of(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def test_narrowed_candidate_gets_its_own_statistics(reference, tmp_path):
    """Narrowing the first conv changes what the second batch norm sees: the candidate's statistics are
    measured on the calibration inputs (not inherited), and the candidate works without any training."""
    x_train, _, x_test, y_test = data()
    plan = Plan({"2": LayerPlan(activation="quantized_relu(4,2)")}, None, {"0": 0.5})
    built = _searcher(reference, tmp_path).build(plan)
    stale = _searcher(reference, tmp_path, recalibrate_norms=False).build(plan)
    x = torch.as_tensor(x_train)[calibration_index(len(x_train), INITIAL_KERNEL_EXAMPLES, 0)]
    # the mean over the calibration batches (8 x 32, so the overall mean; measured while the first norm used
    # each batch's own statistics, hence not to the last digit)
    seen = _inputs_of(built, "4", x)
    assert torch.allclose(built[4].running_mean, seen.mean((0, 2, 3)), atol=2e-3)
    assert not torch.allclose(stale[4].running_mean, seen.mean((0, 2, 3)), atol=1e-2)
    # the reference's kept channels' statistics when not re-estimated
    kept = built[0].weight.shape[0]
    assert kept == 8 and stale[1].running_mean.shape == (8,)
    assert set(stale[1].running_mean.tolist()) <= set(reference[1].running_mean.tolist())
    ref_acc = accuracy(reference, x_test, y_test)
    built_acc, stale_acc = accuracy(built, x_test, y_test), accuracy(stale, x_test, y_test)
    assert built_acc > stale_acc + 0.2 and built_acc > ref_acc - 0.3


def test_recalibration_keeps_modes_and_momenta():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, momentum=0.3), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    model[3].eval()
    x = torch.randn(64, 4) * 3 + 1
    assert recalibrate_batch_norms(model, [(x,)]) == 1
    h = model[0](x).detach()
    assert torch.allclose(model[1].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(model[1].running_var, h.var(0, unbiased=True), rtol=1e-4)  # one batch: its variance
    assert model[1].momentum == 0.3 and model[1].training and model[2].training and not model[3].training
    # dropout stays off while measuring: the same statistics again, and a custom forward
    before = model[1].running_var.clone()
    recalibrate_batch_norms(model, [x], forward=lambda m, batch: m(batch))
    assert torch.allclose(model[1].running_var, before)
    with pytest.raises(ConfigError, match="no batch"):
        recalibrate_batch_norms(model, [])
    assert torch.allclose(model[1].running_var, before)  # untouched on the error
    assert recalibrate_batch_norms(nn.Linear(2, 2), []) == 0  # nothing to estimate: no error


def test_recalibrate_norms_must_be_a_bool():
    from nncodec.search import SearchConfig

    with pytest.raises(ConfigError, match="recalibrate_norms"):
        SearchConfig(recalibrate_norms="no")


class _Swapped(nn.Module):
    """Two norms registered in the reverse of the order the forward pass calls them."""

    def __init__(self):
        super().__init__()
        self.late, self.second = nn.BatchNorm1d(4), nn.Linear(4, 4)
        self.early, self.first = nn.BatchNorm1d(4), nn.Linear(3, 4)

    def forward(self, x):
        return self.late(self.second(torch.relu(self.early(self.first(x)))))


def test_sequential_recalibration_fits_the_inputs_eval_mode_feeds_each_norm():
    """Batches of different means: normalized by each batch's own statistics (one pass) every batch reaches
    the ReLU centred; in eval mode the earlier norm's running statistics leave each batch offset, so the ReLU
    passes other values and the later norm's inputs differ; the sequential estimate measures exactly those,
    also when registration order is not call order."""
    torch.manual_seed(0)
    model = _Swapped()
    with torch.no_grad():
        model.second.weight.copy_(torch.eye(4) + 0.1)
    batches = [(torch.randn(64, 3) + shift,) for shift in (-3.0, 0.0, 4.0)]
    model.train()
    assert recalibrate_batch_norms(model, batches, sequential=True) == 2
    assert model.training and model.late.training and model.late.momentum == 0.1  # modes and momenta restored

    def measured(bn: nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:  # eval-mode inputs, averaged per batch
        seen = []
        handle = bn.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        with torch.no_grad():
            for (x,) in batches:
                model.eval()(x)
        handle.remove()
        model.train()
        return (torch.stack([s.mean(0) for s in seen]).mean(0),
                torch.stack([s.var(0, unbiased=True) for s in seen]).mean(0))

    for bn in (model.early, model.late):
        mean, var = measured(bn)
        assert torch.allclose(bn.running_mean, mean, atol=1e-5)
        assert torch.allclose(bn.running_var, var, rtol=1e-4)
    mean, var = measured(model.late)
    recalibrate_batch_norms(model, batches)  # one pass: the later norm's statistics miss the batches' offsets
    assert (model.late.running_mean - mean).abs().max() > 0.3
    assert ((model.late.running_var - var).abs() / var).max() > 0.1


def test_sequential_recalibration_leaves_norms_the_forward_never_calls_reset():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    unused = nn.BatchNorm1d(4)
    model.add_module("unused", unused)
    model.forward = lambda x: model[1](model[0](x))  # type: ignore[method-assign]
    with torch.no_grad():
        unused.running_mean.fill_(5.0)
    x = torch.randn(32, 3)
    assert recalibrate_batch_norms(model, [(x,)], sequential=True) == 2
    assert torch.allclose(model[1].running_mean, model[0](x).detach().mean(0), atol=1e-5)
    assert torch.equal(unused.running_mean, torch.zeros(4))  # reset, as the one-pass estimate leaves it


def test_final_recalibration_is_checked():
    with pytest.raises(ConfigError, match="final_recalibration must be one of"):
        SearchConfig(final_recalibration="twice")
    with pytest.raises(ConfigError, match="needs final_recalibrate_norms=True"):
        SearchConfig(final_recalibrate_norms=False, final_recalibration="one_pass")
    assert SearchConfig(final_recalibrate_norms=False).final_recalibration == "sequential"


def test_sequential_recalibration_measures_a_shared_norm_over_all_its_calls_and_ignores_user_excepts():
    """A norm called twice per forward is measured over both calls (as the one-pass estimate does), and a
    model's own ``except Exception`` does not catch the early stop (it would run the norm twice)."""

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(4, 4), nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(self.lin(self.bn(x)) * 3 + 5)

    class Guarded(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm1d(4), nn.BatchNorm1d(4)

        def forward(self, x):
            try:
                y = self.bn1(x)
            except Exception:  # a model's own fallback
                y = self.bn1(x)
            return self.bn2(y * 2)

    torch.manual_seed(0)
    batches = [(torch.randn(64, 4),) for _ in range(3)]
    one, seq = Shared(), Shared()
    seq.load_state_dict(one.state_dict())
    recalibrate_batch_norms(one, batches)
    recalibrate_batch_norms(seq, batches, sequential=True)
    assert int(seq.bn.num_batches_tracked) == int(one.bn.num_batches_tracked) == 6  # both calls, every batch
    assert torch.allclose(seq.bn.running_mean, one.bn.running_mean, atol=0.2)  # ~2.9; the first call only: ~0.1
    guarded = Guarded()
    recalibrate_batch_norms(guarded, batches, sequential=True)
    assert int(guarded.bn1.num_batches_tracked) == 3

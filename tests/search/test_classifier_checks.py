"""A model a ClassifierTask cannot train (several inputs, too few classes, not (batch, classes) logits) is a
ConfigError naming it before any trial, in Python and on the command line."""

import numpy as np
import pytest
import torch
from torch import nn

from nncodec.cli import main
from nncodec.errors import ConfigError
from nncodec.search import ClassifierTask, SearchConfig, SearchSpace, run_search
from nncodec.search.task import check_classifier


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x, z):
        return self.a(x) + self.b(z)


def _data(n=40, classes=4):
    g = np.random.default_rng(0)
    x = g.normal(size=(n, 6)).astype(np.float32)
    return x, (np.arange(n) % classes).astype(np.int64)


@pytest.mark.parametrize("model, match", [
    (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), "at least 4 classes"),
    (nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.Unflatten(1, (2, 2))), r"\[2, 2, 2\]"),
])
def test_a_model_that_cannot_classify_the_labels_is_refused_before_any_trial(model, match, tmp_path):
    x, y = _data()
    space = SearchSpace.from_model(model, (6,), x[:8])
    task = ClassifierTask(x[:30], y[:30], x[30:], y[30:])
    cfg = SearchConfig(controller="random", n_trials=1, final_epochs=1, out_dir=str(tmp_path), progress=False)
    with pytest.raises(ConfigError, match=match):
        run_search(model, space, task, cfg)
    assert not (tmp_path / "search.db").exists()  # refused before the study was opened


def test_the_cli_refuses_a_model_taking_two_inputs_and_reads_the_input_shape_from_the_data(tmp_path, capsys):
    x, y = _data()
    npz = tmp_path / "d.npz"
    np.savez(npz, x_train=x[:30], y_train=y[:30], x_val=x[30:], y_val=y[30:])
    (tmp_path / "net.py").write_text("from tests.search.test_classifier_checks import TwoInputs\n"
                                     "def build():\n    return TwoInputs()\n")
    torch.manual_seed(0)
    code = main(["search", "--model", f"{tmp_path / 'net.py'}:build", "--data", str(npz), "--trials", "1",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be called on the training inputs" in err and "[2, 6]" in err  # shape from --data
    assert "Traceback" not in err


def test_example_inputs_the_model_cannot_run_on_are_a_config_error():
    model = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(24, 3))
    ids = torch.randint(0, 20, (8, 6))
    with pytest.raises(ConfigError, match=r"float32 \[1, 6\].*LongTensor"):  # a shape gives float zeros
        SearchSpace.from_model(model, (6,), ids)
    assert SearchSpace.from_model(model, ids[:1], ids).layers  # token ids as a tensor


def test_empty_label_arrays_are_a_config_error():
    x, _ = _data()
    model = nn.Sequential(nn.Linear(6, 4))
    empty = np.zeros(0, dtype=np.int64)
    with pytest.raises(ConfigError, match="label arrays are empty"):
        check_classifier(model, x, (empty, empty), where="net.py:build")
    with pytest.raises(ConfigError, match="input array is empty"):
        check_classifier(model, x[:0], (np.arange(4),))
    check_classifier(model, x, (empty, np.arange(4)))  # one split with labels is enough: 4 classes


def test_the_check_leaves_a_training_model_and_its_batch_norm_statistics_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4)).train()
    bn = model[1]
    with torch.no_grad():
        model(torch.randn(16, 6) * 3 + 1)  # statistics away from their initial values
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x, y = _data()
    check_classifier(model, x * 5 + 2, (y,))
    assert model.training and all(m.training for m in model.modules())
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k  # running_mean / running_var / num_batches_tracked
    assert int(bn.num_batches_tracked) == 1
    with pytest.raises(ConfigError, match="at least 5 classes"):  # also when the check fails
        check_classifier(model, x, (np.array([4]),))
    assert model.training and int(bn.num_batches_tracked) == 1

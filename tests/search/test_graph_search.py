"""A few search trials on graph models (residual, depthwise, recurrent, transformer) with each kind of task."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.quant.plan import Plan
from nncodec.search import ClassifierTask, FidelityTask, FunctionTask, SearchConfig, SearchSpace, run_search
from nncodec.search.candidate import build_candidate
from tests.search.graph_models import GRUClassifier, TinyMobileNet, TinyResNet, TinyTransformer

BITS = {"kernel": {"conv": (4, 8), "dense": (4, 8), "embedding": (8,), "recurrent": (4, 8)},
        "activation": {"conv": (8,), "dense": (8,), "recurrent": (8,), "activation": (8,)},
        "bias": {"conv": (8,), "dense": (8,), "recurrent": (8,)}}
KERNELS = ("quantized_bits({b},{i},1)",)


def _images(n=240, seed=0):
    """Class = the brightest quadrant of a noisy 16x16 image (4 classes)."""
    g = np.random.default_rng(seed)
    y = g.integers(0, 4, n)
    x = g.normal(0, 0.3, (n, 1, 16, 16)).astype(np.float32)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, 0, 8 * r:8 * r + 8, 8 * col:8 * col + 8] += 1.0
    return x, y.astype(np.int64)


def _sequences(n=240, seed=0):
    """Class = which of the 3 features has the largest sum over the sequence."""
    g = np.random.default_rng(seed)
    x = g.normal(0, 1, (n, 7, 3)).astype(np.float32)
    return x, x.sum(1).argmax(1).astype(np.int64)


def _search(reference, space, task, tmp_path, **kw):
    cfg = SearchConfig(controller="random", n_trials=3, final_epochs=1, out_dir=str(tmp_path), progress=False,
                       study_name="graph", **kw)
    result = run_search(reference, space, task, cfg)
    # the best plan round-trips through JSON and rebuilds the same model
    plan = Plan.load(tmp_path / "plan.json")
    assert plan.to_dict() == result.plan.to_dict() == Plan.from_json(json.dumps(plan.to_dict())).to_dict()
    rebuilt = build_candidate(reference, space.example_inputs, plan)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in result.model.parameters()]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["result"]["decoded_accuracy"] == pytest.approx(result.decoded_accuracy)
    assert result.decoded_accuracy == pytest.approx(result.accuracy, abs=1e-6)
    assert result.bitstream_bytes < result.float32_bytes
    return result


def _trained(model, x, y, epochs=12):
    from nncodec.train import train_classifier

    return train_classifier(model, x, y, epochs=epochs, lr=1e-2, batch_size=32)


@pytest.mark.parametrize("net", [TinyResNet, TinyMobileNet])
def test_search_on_residual_and_depthwise_nets(net, tmp_path):
    torch.manual_seed(0)
    x, y = _images()
    ref = _trained(net(classes=4), x[:180], y[:180])
    space = SearchSpace.from_model(ref, (1, 16, 16), x[:64], kernels=KERNELS, bits=BITS, widths=(0.5, 1.0, 2.0))
    params = space.parameters()
    assert "stem.0.width" in params and "fc.width" not in params  # coupled groups, classifier kept
    assert set(params["stem.0.width"]) == {0.5, 1.0, 2.0}
    task = ClassifierTask(x[:180], y[:180], x[180:], y[180:], lr=3e-3)
    result = _search(ref, space, task, tmp_path)
    assert result.reference_accuracy > 0.5
    assert result.energy_pj < result.reference_energy_pj


def test_search_on_a_recurrent_net_with_a_function_task(tmp_path):
    torch.manual_seed(0)
    x, y = _sequences()
    ref = _trained(GRUClassifier(), x[:180], y[:180])
    space = SearchSpace.from_model(ref, torch.as_tensor(x[:1]), x[:64], kernels=KERNELS, bits=BITS,
                                   widths=(0.5, 1.0))
    assert space.parameters()["rnn.width"] == [0.5, 1.0]
    assert {layer.kind for layer in space.layers} == {"recurrent", "dense"}
    inner = ClassifierTask(x[:180], y[:180], x[180:], y[180:], lr=3e-3)
    calls = []

    def train(model, epoch):
        calls.append(epoch)
        inner.train_epoch(model, epoch, proxy=False)

    result = _search(ref, space, FunctionTask(train, inner.evaluate), tmp_path)
    assert len(calls) == 3 + 1  # one proxy epoch per trial, one final epoch
    assert result.model.rnn.kernel_quantizer is not None


def test_search_on_a_transformer_with_the_fidelity_task(tmp_path):
    torch.manual_seed(0)
    ref = TinyTransformer().eval()
    tokens = torch.randint(0, 50, (120, 9), generator=torch.Generator().manual_seed(5))
    calibration, evaluation = tokens[:80], tokens[80:]
    with pytest.raises(ConfigError, match="calibration"):
        FidelityTask(ref, calibration, tokens[70:90])
    task = FidelityTask(ref, calibration, evaluation, output_fn=lambda out, inputs: out, lr=1e-3)
    assert task.evaluate(ref) == pytest.approx(1.0)
    space = SearchSpace.from_model(ref, tokens[:1], tokens[:32], kernels=KERNELS, bits=BITS, widths=(0.5, 1.0))
    params = space.parameters()
    assert {"blocks.0.attention.width", "blocks.1.ffn_in.width"} <= set(params)
    assert "embedding.width" not in params or 1.5 not in params["embedding.width"]
    result = _search(ref, space, task, tmp_path)
    assert 0.0 < result.accuracy <= 1.0
    assert result.reference_accuracy == pytest.approx(1.0)
    top1 = FidelityTask(ref, calibration, evaluation, metric="top1")
    assert top1.evaluate(ref) == 1.0 and 0.0 <= top1.evaluate(result.model) <= 1.0

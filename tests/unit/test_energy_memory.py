"""Memory report: peak activation memory in the graph's order and in the best order of parallel branches."""

import pytest
import torch
from torch import nn

from nncodec.energy import estimate_energy
from nncodec.errors import ConfigError


class TwoBranch(nn.Module):
    """Branch a keeps a big tensor alive while branch b runs, in the order written in forward."""

    def __init__(self):
        super().__init__()
        self.a1 = nn.Conv2d(4, 64, 1)    # big intermediate
        self.a2 = nn.Conv2d(64, 4, 1)    # shrinks it
        self.b1 = nn.Conv2d(4, 32, 1)
        self.b2 = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        a = self.a1(x)
        b = self.b1(x)   # runs while a (64 channels) is live
        b = self.b2(b)
        a = self.a2(a)
        return a + b


def test_best_order_has_a_lower_peak_than_the_graph_order():
    r = estimate_energy(TwoBranch().eval(), (4, 8, 8), memory=True, reference=("int8", "int16"))
    m = r.memory
    px = 8 * 8 * 16  # bits per channel at int16
    input_bits = 4 * 8 * 8 * 8
    # graph order: a1's 64 channels stay live while branch b runs: peak at b2 = a1 + b1 + b2 (x is freed)
    assert m.graph_order == ["a1", "b1", "b2", "a2", "add"]
    assert m.graph_peak_bits == (64 + 32 + 4) * px
    # finishing one branch before starting the other: the peak is a1 plus its reduction a2 (64 + 4 channels)
    assert m.best_peak_bits < m.graph_peak_bits and m.exact
    assert m.best_peak_bits == input_bits + (64 + 4) * px
    assert m.best_order.index("a2") < m.best_order.index("b1") or m.best_order.index("b2") < m.best_order.index("a1")
    assert "best order" in m.table()


def test_batched_accumulation_narrows_accumulators_at_a_rescaling_cost():
    model = nn.Sequential(nn.Conv2d(16, 8, 3), nn.ReLU())
    plan = {"default": {"kernel": "quantized_bits(8,0,1)", "bias": "quantized_bits(8,0,1)"}}
    r = estimate_energy(model, (16, 6, 6), plan, memory=True, accumulation_batches=4)
    full, part = r.memory.accumulator_bits["0"]
    assert (full, part) == (8 + 16, 6 + 16)  # fan-in 144 (+1): 8 bits; 36 (+1): 6 bits
    assert r.memory.rescale_pj > 0
    with pytest.raises(ConfigError):
        estimate_energy(model, (16, 6, 6), accumulation_batches=4)


def test_cli_energy_with_example_tensors_and_memory(tmp_path, capsys):
    import json

    from nncodec.cli import main

    model_file = tmp_path / "tiny.py"
    model_file.write_text("import torch\nfrom torch import nn\n"
                          "class M(nn.Module):\n"
                          "    def __init__(self):\n        super().__init__()\n"
                          "        self.emb = nn.Embedding(50, 8)\n        self.fc = nn.Linear(8, 2)\n"
                          "    def forward(self, ids, mask):\n"
                          "        return self.fc((self.emb(ids) * mask.unsqueeze(-1)).mean(1))\n"
                          "def build():\n    return M()\n")
    example = tmp_path / "example.pt"
    torch.save((torch.randint(0, 50, (1, 6)), torch.ones(1, 6)), example)
    assert main(["energy", "--model", f"{model_file}:build", "--example", str(example), "--json", "--memory"]) == 0
    out = json.loads(capsys.readouterr().out)
    kinds = {r["name"]: r["kind"] for r in out["layers"]}
    assert kinds["emb"] == "embedding" and kinds["fc"] == "dense" and "mul" in kinds.values()
    assert out["memory"]["graph_peak_bits"] >= out["memory"]["best_peak_bits"] > 0
    bad = tmp_path / "bad.pt"
    torch.save({"ids": torch.zeros(1)}, bad)
    assert main(["energy", "--model", f"{model_file}:build", "--example", str(bad)]) != 0
    assert "must hold a tensor or a tuple of tensors" in capsys.readouterr().err

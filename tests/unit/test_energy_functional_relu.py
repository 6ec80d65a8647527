"""The energy model prices a relu (functional or an nn.ReLU module) after a quantized layer output on that
output's grid."""

import torch
import torch.nn.functional as F
from torch import nn

from nncodec.energy import estimate_energy
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search.candidate import build_candidate


class FunctionalRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3)
        self.c2 = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.c2(F.relu(self.c1(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def _candidate_and_rows(model: nn.Module) -> tuple[nn.Module, dict]:
    """``model`` with 4-bit kernels on c1 and c2 and a 4-bit output quantizer on c1 only, and its energy rows."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 10, 10)
    plan = Plan({"c1": LayerPlan(kernel="quantized_bits(4,0,1)", activation="quantized_bits(4,2,1)"),
                 "c2": LayerPlan(kernel="quantized_bits(4,0,1)")})
    candidate = build_candidate(model.eval(), x, plan)
    return candidate, {r.name: r for r in estimate_energy(candidate, x).layers}


def test_a_functional_relu_keeps_the_type_of_its_quantized_input():
    _, rows = _candidate_and_rows(FunctionalRelu())
    relu_rows = [r for r in rows.values() if r.kind == "activation"]
    assert relu_rows[0].output == rows["c1"].output  # relu of 4-bit values: 4-bit values, not int32
    assert rows["c2"].input == rows["c1"].output
    assert relu_rows[1].output == "int32"  # after an accumulator (c2 has no output quantizer): int32, as before


class ModuleRelu(nn.Module):
    """The same network with nn.ReLU modules (the plan names none of them)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3)
        self.r1 = nn.ReLU()
        self.c2 = nn.Conv2d(8, 8, 3)
        self.r2 = nn.ReLU()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.r2(self.c2(self.r1(self.c1(x))))
        return self.fc(torch.flatten(x.mean((2, 3)), 1))


def test_a_relu_module_keeps_the_type_of_its_quantized_input():
    candidate, rows = _candidate_and_rows(ModuleRelu())
    assert type(candidate.r1) is nn.ReLU  # not a quantized activation: the plan does not name it
    assert rows["r1"].kind == "activation" and rows["r1"].output == rows["c1"].output != "int32"
    assert rows["c2"].input == rows["c1"].output
    assert rows["r2"].output == "int32"  # after an accumulator: int32, as before

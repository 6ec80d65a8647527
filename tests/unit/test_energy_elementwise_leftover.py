"""The energy model prices functional element-wise operations (``torch.sigmoid``, ``x * g``, a hand-written
SiLU, ``tanh``, ``softmax``, ``-``, ``/`` ...) as their module forms: an operation without a quantizer of its
own stores its output at its operands' quantized type (the wider), not at int32; after an accumulator it
stays int32; the reference prices every one at its accumulator type."""

import pytest
import torch
from torch import nn

from nncodec.energy import estimate_energy
from nncodec.quant.plan import LayerPlan, Plan
from nncodec.search.candidate import build_candidate

Q8 = "quantized_bits(8,2,1)"
Q4 = "quantized_bits(4,1,1)"
PLAN = Plan({"conv": LayerPlan(kernel="quantized_bits(4,0,1)", activation=Q8),
             "fc": LayerPlan(kernel="quantized_bits(4,0,1)", activation=Q4),
             "head": LayerPlan(kernel="quantized_bits(4,0,1)")})


class FunctionalSE(nn.Module):
    """A squeeze-and-excitation gate and a SiLU written with torch functions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        x = x * torch.sigmoid(x)
        return self.head(x.mean((2, 3)))


class ModuleSE(nn.Module):
    """The same network with nn.Sigmoid and nn.SiLU modules."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Conv2d(8, 8, 1)
        self.gate = nn.Sigmoid()
        self.act = nn.SiLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv(x)
        x = x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))
        x = self.act(x)
        return self.head(x.mean((2, 3)))


def _rows(model: nn.Module, plan: Plan, **kw) -> list:
    torch.manual_seed(0)
    model.eval()
    x = torch.randn(1, 3, 8, 8)
    candidate = build_candidate(model, x, plan)
    return estimate_energy(candidate, x, **kw).layers


def _label(spec: str) -> str:
    from nncodec.energy.operators import qtype
    return qtype(spec).label


def test_a_functional_gate_and_product_follow_their_operands_quantizers():
    rows = _rows(FunctionalSE(), PLAN)
    sig, gate_mul, sig2, silu_mul = [r for r in rows if r.kind in ("activation", "mul")]
    assert sig.target == "sigmoid" and sig.input == _label(Q4)
    assert sig.output == _label(Q4)              # was int32
    assert gate_mul.output == _label(Q8)         # the wider of the 8-bit conv output and the 4-bit gate
    assert sig2.output == _label(Q8) and silu_mul.output == _label(Q8)  # x * sigmoid(x) of 8-bit x: 8 bits
    assert rows[-1].input == _label(Q8)          # the head reads 8-bit values


def test_functional_and_module_forms_cost_the_same():
    """With no plan entry for nn.Sigmoid / nn.SiLU the module form is priced as the functional one (gate and
    product); the plan and the reference pricing alike."""
    f, m = _rows(FunctionalSE(), PLAN), _rows(ModuleSE(), PLAN)
    by_f = {r.target: r for r in reversed(f)}  # the first row of each operator (the gate's)
    by_m = {r.target: r for r in reversed(m)}
    assert by_f["sigmoid"].output == by_m["sigmoid"].output
    assert [r.output for r in f if r.target == "mul"][0] == [r.output for r in m if r.target == "mul"][0]
    assert by_m["silu"].output == _label(Q8) == [r.output for r in f if r.target == "mul"][1]
    for kw in ({}, {"reference": ("int8", "int16")}):
        f, m = _rows(FunctionalSE(), PLAN, **kw), _rows(ModuleSE(), PLAN, **kw)
        gate_f = next(r for r in f if r.target == "sigmoid")
        gate_m = next(r for r in m if r.target == "sigmoid")
        assert (gate_f.output, gate_f.total) == (gate_m.output, gate_m.total)
        mul_f, mul_m = next(r for r in f if r.target == "mul"), next(r for r in m if r.target == "mul")
        assert (mul_f.output, mul_f.total) == (mul_m.output, mul_m.total)
    ref = _rows(FunctionalSE(), PLAN, reference=("int8", "int16"))
    assert {r.output for r in ref if r.kind in ("activation", "mul")} == {_label("int16")}


def test_a_quantizer_the_plan_puts_on_the_sigmoid_module_wins():
    plan = Plan({**PLAN.layers, "gate": LayerPlan(activation="quantized_bits(6,1,1)")})
    rows = {r.target: r for r in _rows(ModuleSE(), plan)}
    assert rows["sigmoid"].output == _label("quantized_bits(6,1,1)")


def test_after_an_accumulator_an_elementwise_output_stays_int32():
    plan = Plan({"conv": LayerPlan(kernel="quantized_bits(4,0,1)", activation=Q8),
                 "fc": LayerPlan(kernel="quantized_bits(4,0,1)")})     # fc: no output quantizer
    rows = _rows(FunctionalSE(), plan)
    sig, gate_mul = [r for r in rows if r.kind in ("activation", "mul")][:2]
    assert sig.output == "int32" and gate_mul.output == "int32"


class Survey(nn.Module):
    """One functional operation of two quantized layer outputs (or of one)."""

    def __init__(self, op):
        super().__init__()
        self.op = op
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.op(self.a(x), self.b(x)))


SURVEY = {
    "tanh": lambda a, b: torch.tanh(a),
    "sigmoid": lambda a, b: torch.sigmoid(a),
    "softmax": lambda a, b: torch.softmax(a, -1),
    "gelu": lambda a, b: torch.nn.functional.gelu(a),
    "silu": lambda a, b: torch.nn.functional.silu(a),
    "exp": lambda a, b: torch.exp(a),
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1),
    "sub": lambda a, b: a - b,
    "add": lambda a, b: a + b,
    "glu": lambda a, b: a * torch.sigmoid(b),
    "where": lambda a, b: torch.where(a > 0, a, b),
    "cat": lambda a, b: torch.cat([a, b], -1)[..., :6],
    "mean": lambda a, b: a.mean(-1, keepdim=True).expand(-1, 6),
    "maximum": lambda a, b: torch.maximum(a, b),
}


@pytest.mark.parametrize("name", sorted(SURVEY))
def test_every_functional_elementwise_op_follows_its_quantized_operands(name):
    plan = Plan({"a": LayerPlan(kernel="quantized_bits(4,0,1)", activation=Q8),
                 "b": LayerPlan(kernel="quantized_bits(4,0,1)", activation=Q4),
                 "head": LayerPlan(kernel="quantized_bits(4,0,1)")})
    torch.manual_seed(0)
    x = torch.randn(1, 6)
    model = build_candidate(Survey(SURVEY[name]).eval(), x, plan)
    rows = estimate_energy(model, x).layers
    assert rows[-1].name == "head"
    assert rows[-1].input == _label(Q8), [(r.name, r.target, r.output) for r in rows]
    inner = [r for r in rows if r.name not in ("a", "b", "head")]
    assert all(r.output != "int32" for r in inner)  # (a cat is no row of its own in qtools mode)

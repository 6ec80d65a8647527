"""Peak activation memory of a captured graph, and the execution order of parallel branches that lowers it.

A tensor is live from the operation that writes it until its last reader has run; while an operation
runs, its inputs and its output are live together. The peak of the graph's own order (what
``torch.export`` recorded) is compared with the lowest peak over all topological orders, found exactly
by a search over executed sets (memoized; graphs whose branches give more than ``max_states`` such sets
fall back to a greedy order that runs the operation freeing the most memory first).

Batched accumulation (``accumulation_batches=K``): a MAC operation sums its fan-in in K chunks, each
partial sum rescaled into the running total, so its accumulator is ``ceil(log2(fan_in / K + 1))`` plus
the product bits wide instead of ``ceil(log2(fan_in + 1))`` plus the product bits, at a cost of ``K - 1``
multiply-adds per output (reported as ``rescale_pj``, not added to the energy total).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .costs import OpCosts
    from .graph import GraphOp

__all__ = ["MemoryReport", "memory_report"]


@dataclass
class MemoryReport:
    """Peak live activation memory, bits, in the graph's order and in the best order found."""

    graph_order: list[str]
    graph_peak_bits: int
    best_order: list[str]
    best_peak_bits: int
    exact: bool                      #: the best order is optimal (False: greedy)
    accumulation_batches: int = 1
    accumulator_bits: dict[str, tuple[int, int]] = field(default_factory=dict)  #: op -> (K=1, K) accumulator bits
    rescale_pj: float = 0.0          #: energy of the partial-sum rescaling that K batches add

    def table(self) -> str:
        lines = [f"peak activation memory, graph order: {self.graph_peak_bits / 8:,.0f} bytes",
                 f"peak activation memory, best order:  {self.best_peak_bits / 8:,.0f} bytes "
                 f"({'optimal' if self.exact else 'greedy'}; "
                 f"{100 * (1 - self.best_peak_bits / max(self.graph_peak_bits, 1)):.1f} % lower)"]
        if self.best_order != self.graph_order:
            lines.append("best order: " + ", ".join(self.best_order))
        if self.accumulation_batches > 1:
            saved = sum(a - b for a, b in self.accumulator_bits.values())
            lines.append(f"accumulation in {self.accumulation_batches} batches: accumulators {saved} bits narrower "
                         f"in total, rescaling {self.rescale_pj:,.2f} pJ")
        return "\n".join(lines)


def _peak(order: list[str], size: dict[str, int], readers: dict[str, set[str]], inputs: dict[str, list[str]],
          graph_inputs: dict[str, int]) -> int:
    live = dict(graph_inputs)
    remaining = {k: set(v) for k, v in readers.items()}
    peak = sum(live.values())
    for name in order:
        peak = max(peak, sum(live.values()) + size[name])
        live[name] = size[name]
        for src in set(inputs[name]):
            remaining[src].discard(name)
            if not remaining[src]:
                live.pop(src, None)
        if not readers.get(name):
            live.pop(name, None)  # read by nobody
    return peak


def memory_report(ops: "list[GraphOp]", bits_of: dict[str, int], *, accumulation_batches: int = 1,
                  accumulators: dict[str, tuple[int, int]] | None = None, costs: "OpCosts | None" = None,
                  max_states: int = 200_000) -> MemoryReport:
    """Memory report of ``ops`` (execution order) whose outputs are stored at ``bits_of[name]`` bits/element.

    ``accumulators``: op name -> (fan-in, product bits) of its MACs, for batched accumulation.
    """
    names = [op.name for op in ops]
    size = {op.name: op.output_elements * bits_of.get(op.name, 32) for op in ops}
    inputs = {op.name: [i for i in op.inputs] for op in ops}
    shapes = {src: math.prod(shape) for op in ops for src, shape in zip(op.inputs, op.input_shapes)}
    graph_inputs = {src: shapes[src] * bits_of.get(src, 8) for op in ops for src in op.inputs
                    if src.startswith("input:")}
    readers: dict[str, set[str]] = {n: set() for n in list(names) + list(graph_inputs)}
    for op in ops:
        for src in op.inputs:
            readers.setdefault(src, set()).add(op.name)
    for op in ops:  # outputs of the graph stay live to the end
        if op.is_output:
            readers[op.name].add("<output>")
    graph_peak = _peak(names, size, readers, inputs, graph_inputs)
    best, exact = _best_order(names, size, readers, inputs, graph_inputs, max_states)
    best_peak = _peak(best, size, readers, inputs, graph_inputs)
    if best_peak >= graph_peak:  # no gain: keep the graph's own order
        best, best_peak = names, graph_peak
    report = MemoryReport(names, graph_peak, best, best_peak, exact, accumulation_batches)
    if accumulation_batches > 1 and accumulators:
        from .costs import HOROWITZ

        costs = costs or HOROWITZ
        by = {op.name: op for op in ops}
        for name, (fan_in, product_bits) in accumulators.items():
            full = math.ceil(math.log2(max(fan_in, 1) + 1)) + product_bits
            part = math.ceil(math.log2(max(math.ceil(fan_in / accumulation_batches), 1) + 1)) + product_bits
            report.accumulator_bits[name] = (full, part)
            report.rescale_pj += (accumulation_batches - 1) * by[name].output_elements * \
                (costs.mul(full) + costs.add(full))
    return report


def _best_order(names: list[str], size: dict[str, int], readers: dict[str, set[str]],
                inputs: dict[str, list[str]], graph_inputs: dict[str, int], max_states: int) -> tuple[list[str], bool]:
    """Topological order with the lowest peak: exact memoized search, greedy beyond ``max_states`` states."""
    deps = {n: {s for s in inputs[n] if s in size} for n in names}
    index = {n: i for i, n in enumerate(names)}

    def live_bits(done: frozenset[str]) -> int:
        total = 0
        for src, rd in readers.items():
            produced = src in graph_inputs or src in done
            if produced and ("<output>" in rd or any(r not in done for r in rd)):
                total += graph_inputs.get(src, size.get(src, 0))
        return total

    memo: dict[frozenset[str], tuple[int, str | None]] = {}
    exhausted = False

    def solve(done: frozenset[str]) -> int:
        nonlocal exhausted
        if len(done) == len(names):
            return 0
        if done in memo:
            return memo[done][0]
        if len(memo) >= max_states:
            exhausted = True
            return 0
        base = live_bits(done)
        best_cost, best_op = None, None
        for n in names:
            if n in done or not deps[n] <= done:
                continue
            cost = max(base + size[n], solve(done | {n}))
            if best_cost is None or cost < best_cost or (cost == best_cost and index[n] < index[best_op]):
                best_cost, best_op = cost, n
        memo[done] = (best_cost or 0, best_op)
        return best_cost or 0

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(names) + 100))
    try:
        solve(frozenset())
    finally:
        sys.setrecursionlimit(limit)
    if not exhausted:
        order, done = [], frozenset()
        while len(order) < len(names):
            step = memo[done][1]
            order.append(step)
            done = done | {step}
        return order, True
    # greedy: among ready operations, run the one leaving the least live memory
    order, done = [], frozenset()
    while len(order) < len(names):
        ready = [n for n in names if n not in done and deps[n] <= done]
        step = min(ready, key=lambda n: (live_bits(done | {n}), index[n]))
        order.append(step)
        done = done | {step}
    return order, False

"""A simple accelerator and its latency from the operation counts (seed 004; seed 000's NPU blocks).

The accelerator has ``blocks`` (L) pipelined blocks of ``channels`` (C) MAC lanes each, an on-chip SRAM of
``sram_bits`` and a weight / activation placement (``"sram"`` or ``"dram"``). The layers (rows of an
energy report, in graph order) are split into L contiguous pipeline stages with the smallest largest
stage. A layer takes, in cycles::

    ceil(MACs * density / C) + weight bits / bandwidth(weights memory)
                             + (input bits + output bits) / bandwidth(activations memory)

(``density`` < 1 only when the report was sparsity-aware; element-wise work counts one lane-op per
element). A stream of ``batch`` inputs takes ``sum(stages) + (batch - 1) * max(stage)`` cycles; the
reported latency is per input, seconds at ``clock_hz``. The configuration *fits* when what is placed in
SRAM fits: the largest activation working set (inputs + output of one operation) and, with weights in
SRAM, all the weights. The energy of the same configuration is the energy model's with
``min_sram_size = sram_bits`` and the placement (:meth:`Accelerator.energy_settings`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from ..errors import ConfigError
from .estimate import EnergyReport
from .graph import GraphOp
from .operators import qtype

__all__ = ["Accelerator", "LatencyReport", "estimate_latency", "pipeline_stages"]

_MAC_KINDS = ("conv", "dense", "matmul", "attention", "recurrent")


@dataclass(frozen=True)
class Accelerator:
    blocks: int = 1                     #: L pipelined blocks
    channels: int = 16                  #: C MAC lanes per block
    sram_bits: int = 2 ** 20            #: on-chip SRAM, bits
    weights_memory: str = "sram"        #: sram or dram
    activations_memory: str = "sram"    #: sram or dram
    clock_hz: float = 200e6
    sram_bits_per_cycle: float = 512.0
    dram_bits_per_cycle: float = 32.0

    def __post_init__(self) -> None:
        if self.blocks < 1 or self.channels < 1 or self.sram_bits < 1:
            raise ConfigError(f"accelerator: blocks, channels and sram_bits must be >= 1, got {self}")
        if self.weights_memory not in ("sram", "dram") or self.activations_memory not in ("sram", "dram"):
            raise ConfigError("accelerator: weights_memory and activations_memory are 'sram' or 'dram'")
        if self.clock_hz <= 0 or self.sram_bits_per_cycle <= 0 or self.dram_bits_per_cycle <= 0:
            raise ConfigError("accelerator: clock and bandwidths must be positive")

    def energy_settings(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` energy settings with this SRAM size and placement."""
        return {**base, "min_sram_size": self.sram_bits, "weights_memory": self.weights_memory,
                "activations_memory": self.activations_memory}

    def bandwidth(self, memory: str) -> float:
        return self.sram_bits_per_cycle if memory == "sram" else self.dram_bits_per_cycle

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatencyReport:
    seconds: float                      #: per input, in a stream of ``batch``
    cycles: float                       #: per input
    batch: int
    stages: list[float]                 #: cycles of each pipeline stage
    layer_cycles: dict[str, float] = field(default_factory=dict)
    weight_bits: float = 0.0
    peak_activation_bits: float = 0.0
    fits: bool = True
    reason: str = ""


@lru_cache(maxsize=256)
def _bits(label: str) -> int:
    return qtype(label).bits if label else 32


def pipeline_stages(costs: list[float], blocks: int) -> list[float]:
    """Split ``costs`` (in order) into at most ``blocks`` contiguous stages minimizing the largest one."""
    n = len(costs)
    if n == 0:
        return [0.0]
    k = min(blocks, n)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    best = [[math.inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for j in range(1, n + 1):
            for i in range(s - 1, j):
                v = max(best[s - 1][i], prefix[j] - prefix[i])
                if v < best[s][j]:
                    best[s][j], cut[s][j] = v, i
    s = min(range(1, k + 1), key=lambda s: best[s][n])
    stages, j = [], n
    while s > 0:
        i = cut[s][j]
        stages.append(prefix[j] - prefix[i])
        j, s = i, s - 1
    return stages[::-1]


def estimate_latency(report: EnergyReport, ops: list[GraphOp], hw: Accelerator, batch: int = 16) -> LatencyReport:
    """Latency of the model ``report`` costs (``ops``: its :func:`capture_graph` operations) on ``hw``."""
    if batch < 1:
        raise ConfigError(f"latency: batch must be >= 1, got {batch}")
    by_name = {op.name: op for op in ops}
    layer_cycles: dict[str, float] = {}
    weight_bits = peak = 0.0
    for row in report.layers:
        op = by_name.get(row.name)
        if op is None:
            continue
        in_bits = sum(math.prod(s) for s in op.input_shapes) * _bits(row.input)
        out_bits = op.output_elements * _bits(row.output)
        peak = max(peak, in_bits + out_bits)
        w_bits = sum(t.numel() for t in op.params.values()) * _bits(row.weight) * row.weight_density \
            if row.weight else 0.0
        weight_bits += w_bits
        work = row.operations * row.weight_density if row.kind in _MAC_KINDS else row.operations
        cycles = math.ceil(work / hw.channels) + w_bits / hw.bandwidth(hw.weights_memory) + \
            (in_bits + out_bits) / hw.bandwidth(hw.activations_memory)
        layer_cycles[row.name] = cycles
    stages = pipeline_stages(list(layer_cycles.values()), hw.blocks)
    total = sum(stages) + (batch - 1) * max(stages)
    fits, reason = True, ""
    on_chip = (peak if hw.activations_memory == "sram" else 0.0) + \
        (weight_bits if hw.weights_memory == "sram" else 0.0)
    if on_chip > hw.sram_bits:
        fits, reason = False, f"{on_chip:.0f} bits placed in SRAM exceed its {hw.sram_bits} bits"
    per_input = total / batch
    return LatencyReport(per_input / hw.clock_hz, per_input, batch, stages, layer_cycles, weight_bits, peak, fits,
                         reason)

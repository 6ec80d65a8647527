"""The accelerator latency model: pipeline stages, lanes, placement, SRAM fit."""

from __future__ import annotations

import pytest
from torch import nn

from nncodec.energy.estimate import estimate_energy
from nncodec.energy.graph import capture_graph
from nncodec.energy.latency import Accelerator, estimate_latency, pipeline_stages
from nncodec.errors import ConfigError


def test_pipeline_stages_minimize_the_largest_stage():
    assert pipeline_stages([4, 1, 1, 1, 1], 2) == [4, 4]
    assert pipeline_stages([1, 2, 3, 4, 5], 1) == [15]
    assert max(pipeline_stages([5, 5, 5, 1], 3)) == 6
    assert pipeline_stages([3, 3], 5) == [3, 3]  # never more stages than layers


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 10))


def test_latency_follows_lanes_placement_and_sram_size():
    model, shape = _cnn(), (1, 8, 8)
    ops = capture_graph(model, shape)

    def latency(hw: Accelerator):
        report = estimate_energy(model, shape, **hw.energy_settings({}))
        return estimate_latency(report, ops, hw)

    base = latency(Accelerator(1, 4))
    assert latency(Accelerator(1, 16)).cycles < base.cycles
    assert latency(Accelerator(4, 4)).cycles < base.cycles            # pipelining a stream of inputs
    assert latency(Accelerator(1, 4, weights_memory="dram")).cycles > base.cycles
    macs = sum(r.operations for r in estimate_energy(model, shape).layers if r.kind in ("conv", "dense"))
    assert base.cycles >= macs / 4
    assert base.fits and not latency(Accelerator(1, 4, sram_bits=1024)).fits
    assert latency(Accelerator(1, 4, sram_bits=base.peak_activation_bits + 1, weights_memory="dram")).fits
    with pytest.raises(ConfigError):
        Accelerator(0, 4)
    with pytest.raises(ConfigError):
        Accelerator(weights_memory="flash")

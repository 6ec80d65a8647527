"""Upsampling (decoders, UNets) is priced: nearest as a copy, interpolation as a weighted sum of its taps per output
element (bilinear 4, bicubic 16, trilinear 8), and the layers after it see the upsampled size."""

import pytest
import torch
from torch import nn

from nncodec.energy import estimate_energy


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsampling_is_priced_and_the_next_layer_sees_its_size(mode):
    torch.manual_seed(0)
    up = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Upsample(scale_factor=2, mode=mode),
                       nn.Conv2d(4, 4, 3, padding=1)).eval()
    flat = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)).eval()
    rows = {r.name: r for r in estimate_energy(up, (1, 8, 8)).layers}
    plain = {r.name: r for r in estimate_energy(flat, (1, 8, 8)).layers}
    assert rows["2"].operations == 4 * plain["1"].operations  # 16x16 outputs instead of 8x8
    assert ("1" in rows) == (mode == "bilinear")  # nearest is a copy: not a costed row (as repeat / cat)


class Interpolate(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return torch.nn.functional.interpolate(x, **self.kwargs)


@pytest.mark.parametrize("shape, kwargs, taps", [
    ((1, 2, 5), {"scale_factor": 2, "mode": "linear"}, 2),
    ((1, 2, 4, 3), {"scale_factor": 2, "mode": "bilinear"}, 4),
    ((1, 2, 4, 3), {"size": (7, 5), "mode": "bilinear", "align_corners": True}, 4),
    ((1, 2, 4, 3), {"scale_factor": 2, "mode": "bicubic"}, 16),
    ((1, 2, 3, 4, 2), {"scale_factor": 2, "mode": "trilinear"}, 8),
    ((1, 2, 4, 4), {"scale_factor": 2, "mode": "bilinear", "antialias": True}, 4),
    ((1, 2, 8, 8), {"scale_factor": 0.5, "mode": "bilinear", "antialias": True}, 16),  # window 2x wider
])
def test_interpolation_counts_its_taps_per_output_element(shape, kwargs, taps):
    model, x = Interpolate(**kwargs).eval(), torch.randn(*shape)
    pool = nn.Sequential(nn.AvgPool2d(2)).eval()  # one add per input element: the unit price of a tap
    pool_row = estimate_energy(pool, torch.randn(1, 2, 8, 8), mode="corrected").layers[0]
    (row,) = estimate_energy(model, x, mode="corrected").layers
    assert row.kind == "pool"
    assert row.operations == model(x).numel() * taps  # output elements x taps, not input elements
    assert row.op_cost == pytest.approx(row.operations * pool_row.op_cost / pool_row.operations)


@pytest.mark.parametrize("mode", ["nearest", "nearest-exact"])
def test_nearest_upsampling_in_3d_is_a_copy(mode):
    model, x = Interpolate(scale_factor=2, mode=mode).eval(), torch.randn(1, 2, 3, 4, 2)
    (row,) = estimate_energy(model, x, mode="corrected").layers
    assert row.kind == "concat" and row.op_cost == 0 and row.operations == model(x).numel()

"""Upsampling (decoders, UNets) is priced: nearest as a copy, bilinear as a pooling-like pass, and the layers after
it see the upsampled size."""

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

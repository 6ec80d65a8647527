"""Pruning masks go only where a forward pass applies them: nn.MultiheadAttention reads out_proj.weight without
calling out_proj, so a mask there would not hold through training."""

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks, magnitude_masks, sparsity


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.head(self.attn(h, h, h)[0].mean(1))


def test_masks_skip_the_projection_multihead_attention_reads_directly():
    torch.manual_seed(0)
    model = Attention()
    for masks in (global_magnitude_masks(model, 0.5), magnitude_masks(model, 0.5)):
        assert set(masks) == {"inp", "head"}
    apply_masks(model, global_magnitude_masks(model, 0.5))
    assert set(sparsity(model)) == {"inp", "head"}
    with pytest.raises(ConfigError, match="attn.out_proj"):
        apply_masks(model, {"attn.out_proj": torch.zeros(8, 8)})

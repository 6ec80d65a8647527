"""Pruning masks on tied weights (one tensor in several conv / linear layers): the layers hold one mask."""

import pytest
import torch
from torch import nn

from nncodec.errors import ConfigError
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks, std_threshold_masks
from nncodec.search.candidate import nonzero_size_bits

D = 8


class Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(D, D), nn.Linear(D, D)
        self.b.weight = self.a.weight
        self.h = nn.Linear(D, 2)

    def forward(self, x):
        return self.h(self.b(torch.relu(self.a(x))))


def _model():
    torch.manual_seed(0)
    return Two().eval()


def test_a_mask_on_one_tied_layer_masks_all_of_them():
    model = _model()
    mask = (torch.rand(D, D) > 0.5).float()
    ref = model.b.weight.detach() * mask
    apply_masks(model, {"a": mask})
    assert torch.equal(model.b.weight_mask, mask) and torch.equal(model.a.weight_mask, mask)
    assert model.a.weight is model.b.weight
    x = torch.randn(4, D)
    with torch.no_grad():  # b reads the masked tensor: its output is the masked layer's
        assert torch.allclose(model.b(x), nn.functional.linear(x, ref, model.b.bias))
    nonzero = int(torch.count_nonzero(ref))
    assert nonzero_size_bits(model) == (nonzero + 2 * D + 2 * D + 2) * 32  # the table once, two biases, h
    again = (torch.rand(D, D) > 0.5).float()  # a second mask on b: the two keep one mask (both masks' zeros)
    apply_masks(model, {"b": again})
    assert torch.equal(model.a.weight_mask, mask * again) and torch.equal(model.b.weight_mask, mask * again)


def test_different_masks_on_tied_layers_are_an_error_naming_both():
    model = _model()
    ones, half = torch.ones(D, D), (torch.rand(D, D) > 0.5).float()
    with pytest.raises(ConfigError, match=r"'a' and 'b' differ"):
        apply_masks(model, {"a": half, "b": ones})
    apply_masks(model, {"a": half, "b": half.clone()})  # the same mask twice is one mask
    assert torch.equal(model.b.weight_mask, half)


def test_global_masks_rank_a_tied_weight_once():
    """40 of the 80 distinct weights go (h's weights are large: none of them); counting the tied table
    twice would remove 36 of its values (72 of 144 entries) instead."""
    model = _model()
    with torch.no_grad():
        model.h.weight.mul_(100.0)
    masks = global_magnitude_masks(model, 0.5, keep_per_channel=0)
    assert torch.equal(masks["a"], masks["b"])
    assert int((masks["a"] == 0).sum()) == 40 and int((masks["h"] == 0).sum()) == 0
    masks = std_threshold_masks(model, {"a": 100, "b": 10, "h": 10})
    assert torch.equal(masks["a"], masks["b"])
    apply_masks(model, masks)  # the tied layers hold the one mask: their masked tables are equal
    assert torch.equal(model.a.weight_mask, masks["a"]) and torch.equal(model.b.weight_mask, masks["a"])
    assert torch.equal(model.h.weight_mask, masks["h"])
    assert torch.equal(model.a.masked_weight(), model.b.masked_weight())

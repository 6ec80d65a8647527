"""Small graph models for the tests: ResNet blocks with projection shortcuts, inverted residuals, a 2-layer
GRU classifier and a 2-block transformer with Hugging Face style attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nncodec.models import MobileNetV2Small, ResNet8


def TinyResNet(width: int = 4, classes: int = 10) -> nn.Module:  # noqa: N802  (reads like a class)
    """ResNet-8 at a quarter of its width: identity and projection shortcuts."""
    return ResNet8(1, classes, width)


def TinyMobileNet(width: int = 4, classes: int = 10) -> nn.Module:  # noqa: N802
    """The MobileNetV2-style net at a quarter of its width: inverted residuals with depthwise convs."""
    return MobileNetV2Small(1, classes, width)


class GRUClassifier(nn.Module):
    def __init__(self, features: int = 3, hidden: int = 16, classes: int = 4, cell: type = nn.GRU):
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class SelfAttention(nn.Module):
    """Hugging Face convention: query / key / value linears, heads counted in attributes."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_attention_heads, self.attention_head_size = heads, dim // heads
        self.all_head_size = dim
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape

        def split(v: torch.Tensor) -> torch.Tensor:
            return v.view(b, t, -1, self.attention_head_size).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(x)), split(self.value(x)))
        return y.transpose(1, 2).reshape(b, t, -1)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.attention = SelfAttention(dim, heads)
        self.attention_out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn_in = nn.Linear(dim, ffn)
        self.act = nn.GELU()
        self.ffn_out = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attention_out(self.attention(x)))
        return self.norm2(x + self.ffn_out(self.act(self.ffn_in(x))))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 32, heads: int = 4, ffn: int = 64, classes: int = 3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.Sequential(TransformerBlock(dim, heads, ffn), TransformerBlock(dim, heads, ffn))
        self.fc = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.embedding(tokens)).mean(1))

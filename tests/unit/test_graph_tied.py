"""A model whose output layer shares the embedding's weight (tied tensors, stored once as an alias) reloads
from its graph topology without its class."""

import torch
from torch import nn

import nncodec


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 30, dim: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mid = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mid(self.emb(ids))).mean(1))


def test_a_tied_model_loads_without_its_class():
    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 30, (1, 5))
    data = nncodec.encode(model, example_inputs=(ids,))
    assert nncodec.read_info(data).aliases  # one of the two names is stored as an alias of the other
    loaded = nncodec.load_model(data)
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    quantized = nncodec.load_model(nncodec.encode(model, example_inputs=(ids,), bits=8))
    decoded = TiedLM().eval()
    nncodec.load_into(decoded, nncodec.encode(model, bits=8))
    with torch.no_grad():
        assert torch.equal(quantized(ids), decoded(ids))

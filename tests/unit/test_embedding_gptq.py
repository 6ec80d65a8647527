"""GPTQ rounding of embedding tables on the row Hessian of the output error (random output probes)."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

import nncodec
from nncodec.decoder import iter_tensors
from nncodec.errors import ConfigError
from nncodec.quant.column_steps import column_factors, fisher_importance
from nncodec.quant.gptq import TABLE_DAMP, collect_table_hessians, hessian_tables
from nncodec.quant.layers import QEmbedding
from nncodec.quant.output_probes import gauss_newton_probes
from nncodec.rd_encode import Importances, RDOptions
from tests.unit.helpers import no_grad_forward

VOCAB, DIM, SEEN = 200, 32, 100  # calibration looks up rows 0..SEEN-1 only


class Net(torch.nn.Module):
    """Embedding + MLP; the first Linear is nearly rank 4, so the table's output error depends strongly on
    the direction of a row's error (an anisotropic row Hessian)."""

    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Embedding(VOCAB, DIM)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(DIM, 64), torch.nn.Tanh(), torch.nn.Linear(64, 16))
        with torch.no_grad():
            self.emb.weight.copy_(torch.randn(VOCAB, DIM, generator=g))
            low = torch.randn(64, 4, generator=g) @ torch.randn(4, DIM, generator=g) / DIM
            self.mlp[0].weight.copy_(low + 0.01 * torch.randn(64, DIM, generator=g))
            self.mlp[2].weight.copy_(torch.randn(16, 64, generator=g) / 8)
            for bias in (self.mlp[0].bias, self.mlp[2].bias):
                bias.copy_(0.1 * torch.randn(bias.shape, generator=g))
        self.head = torch.nn.Linear(DIM, VOCAB, bias=False) if tied else None  # its weight: the table
        if self.head is not None:
            self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.mlp(self.emb(ids))
        return out if self.head is None else torch.cat([out, self.head(self.emb(ids))], dim=-1)


def _ids(lo: int, hi: int, n: int, seed: int) -> torch.Tensor:
    return torch.randint(lo, hi, (n, 12), generator=torch.Generator().manual_seed(seed))


CALIBRATION = [_ids(0, SEEN, 16, s) for s in range(4)]


def _decoded(model: torch.nn.Module, data: bytes) -> torch.nn.Module:
    out = copy.deepcopy(model)
    out.load_state_dict({k: torch.as_tensor(v) for k, v in nncodec.decode(data).items()}, strict=False)
    return out


def _output_error(model: torch.nn.Module, decoded: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float(((decoded(ids) - model(ids)) ** 2).mean())


def _encode(model: torch.nn.Module, rounding: str, **options: object) -> bytes:
    return nncodec.encode(model, rel_step=0.5, calibration=CALIBRATION, rounding=rounding, topology=False, **options)


@pytest.fixture(scope="module")
def table_only() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """The model, and its decodings with only the table quantized: plain and GPTQ rounding."""
    model = Net()
    plain = _decoded(model, _encode(model, "nearest", lossless=["mlp.*"]))
    gptq = _decoded(model, _encode(model, "gptq", lossless=["mlp.*"]))
    return model, plain, gptq


def test_gptq_table_lowers_the_output_error_on_held_out_inputs(table_only: tuple) -> None:
    model, plain, gptq = table_only
    assert not torch.equal(gptq.emb.weight, plain.emb.weight)
    held_out = _ids(0, SEEN, 64, 100)  # rows the calibration saw, other sequences
    e_plain, e_gptq = _output_error(model, plain, held_out), _output_error(model, gptq, held_out)
    assert e_gptq * 4 < e_plain, (e_gptq, e_plain)  # README: 4.4x


def test_rows_never_looked_up_are_rounded_with_the_pooled_hessian(table_only: tuple) -> None:
    """Rows no calibration batch looks up get no Hessian of their own; the pooled one stands in (the output
    error of a row is the same quadratic form wherever the row is used), so they gain as well."""
    model, plain, gptq = table_only
    unseen = _ids(SEEN, VOCAB, 64, 101)
    e_plain, e_gptq = _output_error(model, plain, unseen), _output_error(model, gptq, unseen)
    assert e_gptq * 4 < e_plain, (e_gptq, e_plain)  # README: 4.5x
    stats = gauss_newton_probes(model, CALIBRATION, lambda m, b: m(b), tables=["emb.weight"])
    assert stats.rows_seen["emb.weight"][:SEEN].all() and not stats.rows_seen["emb.weight"][SEEN:].any()


def test_tied_table_keeps_plain_rounding_while_linears_get_gptq(caplog: pytest.LogCaptureFixture) -> None:
    model = Net(tied=True)
    with caplog.at_level(logging.INFO, logger="nncodec.quant.gptq"):
        assert "emb.weight" not in hessian_tables(model)
    assert "emb.weight keeps plain rounding" in caplog.text and "tied" in caplog.text
    plain = _decoded(model, _encode(model, "nearest"))
    gptq = _decoded(model, _encode(model, "gptq"))
    assert torch.equal(gptq.emb.weight, plain.emb.weight)
    assert torch.equal(gptq.head.weight, gptq.emb.weight)
    assert not torch.equal(gptq.mlp[0].weight, plain.mlp[0].weight)


def test_forward_without_gradient_leaves_tables_plain_while_linears_get_gptq(caplog: pytest.LogCaptureFixture) -> None:
    model = Net()
    with caplog.at_level(logging.INFO, logger="nncodec.quant.output_probes"):
        assert collect_table_hessians(model, CALIBRATION, no_grad_forward) == {}
    assert "keep plain rounding" in caplog.text and "no gradient" in caplog.text
    plain = _decoded(model, _encode(model, "nearest", forward=no_grad_forward))
    gptq = _decoded(model, _encode(model, "gptq", forward=no_grad_forward))
    assert torch.equal(gptq.emb.weight, plain.emb.weight)
    assert not torch.equal(gptq.mlp[0].weight, plain.mlp[0].weight)
    differentiable = _decoded(model, _encode(model, "gptq"))  # the default forward has gradients
    assert not torch.equal(differentiable.emb.weight, plain.emb.weight)


def test_the_probe_pass_shared_with_fisher_gives_both_unchanged() -> None:
    model = Net()
    names = ["emb.weight", "mlp.0.weight", "mlp.2.weight"]
    shared = gauss_newton_probes(model, CALIBRATION, lambda m, b: m(b), names, ["emb.weight"], probes=3)
    alone = fisher_importance(model, CALIBRATION, lambda m, b: m(b), names, probes=3)
    tables = collect_table_hessians(model, CALIBRATION, lambda m, b: m(b), probes=3)
    assert shared.diagonal.keys() == alone.keys()
    for n in names:
        np.testing.assert_allclose(shared.diagonal[n], alone[n], rtol=1e-10)
    torch.testing.assert_close(shared.tables["emb.weight"], tables["emb.weight"], rtol=1e-10, atol=0)
    # the table's Fisher importance is the diagonal of its row Hessian (summed over the probe passes)
    np.testing.assert_allclose(torch.diagonal(tables["emb.weight"]).numpy() * 3 * len(CALIBRATION),
                               alone["emb.weight"], rtol=1e-6)


def test_sparse_table_gives_the_dense_row_hessian() -> None:
    dense = Net()
    sparse = copy.deepcopy(dense)
    sparse.emb.sparse = True
    m_dense = collect_table_hessians(dense, CALIBRATION, lambda m, b: m(b))["emb.weight"]
    m_sparse = collect_table_hessians(sparse, CALIBRATION, lambda m, b: m(b))["emb.weight"]
    torch.testing.assert_close(m_sparse, m_dense, rtol=1e-5, atol=1e-9)  # float32 sums in another order


def test_fisher_step_scales_with_gptq_tables() -> None:
    """``step_scales="fisher"`` asks for the Fisher importances without ``column_steps``: they are computed
    (with the tables' row Hessians in the same pass, same directions), and the table is still GPTQ-rounded."""
    from nncodec.sensitivity import fisher_step_scales

    model = Net()
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    scales = fisher_step_scales(model, fisher_importance(model, CALIBRATION, lambda m, b: m(b), names))
    for rounding in ("nearest", "gptq"):
        assert _encode(model, rounding, step_scales="fisher") == _encode(model, rounding, step_scales=scales)
    gptq = _decoded(model, _encode(model, "gptq", step_scales="fisher"))
    plain = _decoded(model, _encode(model, "nearest", step_scales="fisher"))
    assert not torch.equal(gptq.emb.weight, plain.emb.weight)


def _table(model: torch.nn.Module, rounding: str = "gptq", only_table: bool = True, **options: object) -> torch.Tensor:
    """The decoded table of an encode (``only_table``: with only the table quantized)."""
    lossless = {"lossless": ["mlp.*"]} if only_table else {}
    return nncodec.decode(_encode(model, rounding, **lossless, **options))["emb.weight"]


def test_table_damping_is_floored_at_table_damp() -> None:
    model = Net()
    at_floor = _table(model, damp=TABLE_DAMP)
    assert torch.equal(_table(model, damp=0.01), at_floor)  # below the floor: the floor
    assert not torch.equal(_table(model, damp=0.5), at_floor)  # above it: the damping given


def test_fisher_probes_sets_the_probes_of_the_table_hessian() -> None:
    model = Net()
    assert not torch.equal(_table(model, fisher_probes=1), _table(model))  # default 4


def test_fisher_probes_with_no_table_hessian_is_an_error() -> None:
    model = Net()
    with pytest.raises(ConfigError, match="fisher_probes applies to no tensor: no embedding table has a row Hessian"):
        _encode(model, "gptq", forward=no_grad_forward, fisher_probes=7)
    with pytest.raises(ConfigError, match="fisher_probes applies to no tensor"):
        _encode(Net(tied=True), "gptq", fisher_probes=7)  # the only table is tied
    assert _encode(model, "gptq", forward=no_grad_forward)  # without the option: the table keeps plain rounding


def test_hessian_column_steps_on_a_table_follow_its_row_hessian_diagonal() -> None:
    model = Net()
    data = _encode(model, "nearest", lossless=["mlp.*"], column_steps="hessian")
    (header,) = [h for h, _ in iter_tensors(data) if h.name == "emb.weight"]
    assert header.quant.per_channel and header.quant.axis == 1
    steps = header.quant.scale_values().astype(np.float64)
    m = collect_table_hessians(model, CALIBRATION, lambda m, b: m(b))["emb.weight"]
    want = column_factors(torch.diagonal(m).numpy(), 0.5)  # the default column_power
    np.testing.assert_allclose(steps / np.exp(np.log(steps).mean()), want, rtol=1e-5)
    assert want.max() / want.min() > 2  # the anisotropic Hessian spreads the steps


@pytest.mark.parametrize("first", ["hessians", "fisher"])
def test_gptq_with_fisher_importances_makes_one_probe_pass(first: str) -> None:
    """GPTQ's tables and ``column_steps="fisher"`` (or ``step_scales="fisher"``, which asks for the Fisher
    importances first) share one probe pass: one forward per batch for it, one for the layer-input Hessians."""
    model, calls = Net(), []

    def counting(m: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
        calls.append(len(ids))
        return m(ids)

    importances = Importances(model, RDOptions(calibration=CALIBRATION, forward=counting, column_steps="fisher"))
    for step in (first, "fisher" if first == "hessians" else "hessians"):
        getattr(importances, step)()
    assert "emb.weight" in importances.hessians() and "emb.weight" in importances.fisher()
    assert len(calls) == 2 * len(CALIBRATION)
    calls.clear()
    _encode(model, "gptq", column_steps="fisher", forward=counting)
    assert len(calls) == 2 * len(CALIBRATION)


def test_tables_with_scale_grad_by_freq_keep_plain_rounding(caplog: pytest.LogCaptureFixture) -> None:
    """Their gradient is divided by each token's count in the batch: the probes' ``Σ g gᵀ`` is not the output
    error's Gauss–Newton matrix."""
    model = Net()
    model.emb.scale_grad_by_freq = True
    with caplog.at_level(logging.INFO, logger="nncodec.quant.gptq"):
        assert "emb.weight" not in hessian_tables(model)
    assert "emb.weight keeps plain rounding" in caplog.text and "scale_grad_by_freq" in caplog.text
    assert torch.equal(_table(model, only_table=False), _table(model, "nearest", only_table=False))


def test_fake_quant_tables_are_listed_only_with_fake_quant() -> None:
    """The fake-quant ``QEmbedding`` only with ``fake_quant``, as ``hessian_layers``."""
    model = Net()
    table = QEmbedding(VOCAB, DIM)
    table.weight = model.emb.weight
    model.emb = table
    assert "emb.weight" not in hessian_tables(model)
    assert "emb.weight" in hessian_tables(model, fake_quant=True)
    assert torch.equal(_table(model, only_table=False), _table(model, "nearest", only_table=False))


class _ScaledEmbedding(torch.nn.Embedding):
    """A word embedding that scales its rows (as some language models' embeddings do)."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * 2.0


def test_a_plain_subclass_of_embedding_gets_gptq() -> None:
    """Subclasses other than the fake-quant one read their rows like ``nn.Embedding``: they get a row Hessian."""
    model = Net()
    table = _ScaledEmbedding(VOCAB, DIM)
    table.weight = model.emb.weight
    model.emb = table
    assert "emb.weight" in hessian_tables(model)
    assert not torch.equal(_table(model, only_table=False), _table(model, "nearest", only_table=False))

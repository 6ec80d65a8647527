"""The code-length formulas of tests/benchmarks/bench_entropy_contexts.py against coders run symbol by symbol."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("scipy")
_spec = importlib.util.spec_from_file_location(
    "bench_entropy_contexts", Path(__file__).parents[1] / "benchmarks" / "bench_entropy_contexts.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # type: ignore[union-attr]


def _sequential_flags(cls: np.ndarray, ctx: np.ndarray, estimate) -> float:  # noqa: ANN001
    """Unary class flags coded one by one; ``estimate(state) -> p(1)`` and the state updated after each bit."""
    states: dict[tuple[int, int], list] = {}
    bits = 0.0
    for c, x in zip(ctx.tolist(), cls.tolist()):
        for j in range(x + 1):
            one = j < x
            st = states.setdefault((c, j), estimate(None, None))
            p = st[0]
            bits -= np.log2(p if one else 1.0 - p)
            states[(c, j)] = estimate(st, one)
    return bits


def test_class_flags_cost_is_a_sequential_kt_coder() -> None:
    rng = np.random.default_rng(1)
    cls = np.minimum(rng.geometric(0.35, 3000) - 1, 9)
    ctx = rng.integers(0, 3, cls.size)

    def kt(st, one):  # noqa: ANN001, ANN202
        n1, n0 = (0, 0) if st is None else (st[1] + one, st[2] + (not one))
        return [(n1 + 0.5) / (n1 + n0 + 1.0), n1, n0]

    adaptive, _ = bench.class_model_bits(cls, ctx, 3, int(cls.max()) + 2)
    assert adaptive == pytest.approx(_sequential_flags(cls, ctx, kt), rel=1e-9)


def test_window_cost_is_a_sequential_two_rate_estimator() -> None:
    rng = np.random.default_rng(2)
    cls = np.minimum(rng.geometric(0.5, 2000) - 1, 6)
    ctx = rng.integers(0, 2, cls.size)

    def two_rate(st, one):  # noqa: ANN001, ANN202
        if st is None:
            a = b = 0.5
        else:
            a, b = st[1] + (one - st[1]) / 16, st[2] + (one - st[2]) / 128
        return [min(max((a + b) / 2, 2.0 ** -10), 1 - 2.0 ** -10), a, b]

    got = bench.window_class_bits(cls, ctx, 2, int(cls.max()) + 2)
    assert got == pytest.approx(_sequential_flags(cls, ctx, two_rate), rel=1e-9)


def test_classes_are_a_lossless_split_of_the_magnitude() -> None:
    a = np.arange(0, 5000)
    cls, offset, width = bench.classes_of(a)
    assert np.all(np.diff(cls) >= 0) and np.all((offset >= 0) & (offset < width))
    pairs = np.unique(np.stack([cls, offset]), axis=1)
    assert pairs.shape[1] == a.size  # no two magnitudes share (class, offset)
    assert np.array_equal(cls[:bench.EXACT + 1], a[:bench.EXACT + 1])

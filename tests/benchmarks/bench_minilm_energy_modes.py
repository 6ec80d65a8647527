"""Re-price a decoded all-MiniLM-L6-v2 zoo candidate under each ``sparsity_aware`` mode.

    python tests/benchmarks/bench_minilm_energy_modes.py --stream RUN/zoo/minilm/model.nnc \
        --zoo RUN/zoo.json --out tests/benchmarks/results/minilm_zoo_energy_modes.json

Builds the candidate from the MiniLM row's plan in ``--zoo`` (the zoo benchmark's results file; default
the committed one), loads the bitstream ``--stream`` into it (the decoded weights, the fitted per-channel
input steps), and prices it against the reference (int8 weights, int16 accumulators) with the zoo's energy
settings and ``sparsity_aware`` False (dense), True (weights zero before quantizing) and "codes" (zero
codes; the reference's at per-output-channel int8 steps). Prints and writes the three (reference,
candidate, cut) triples and the mean zero fraction of the candidate's Linear weights.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"


def price(stream: Path, zoo: Path) -> dict:
    from nncodec.energy.estimate import estimate_energy, reference_codes
    from nncodec.energy.operators import qtype
    from nncodec.quant.layers import QLinear, quantize_model
    from nncodec.quant.plan import Plan
    from nncodec.search import SearchConfig
    from nncodec.search.controllers import candidate_energy
    from nncodec.torch_io import load_into
    from tests.benchmarks.bench_zoo import load_minilm

    reference, calibration, _, _ = load_minilm(240)
    row = next(r for r in json.loads(zoo.read_text())["rows"] if r["model"] == "minilm")
    plan = Plan.from_dict(row["plan"])
    model = quantize_model(reference, plan)
    load_into(model, str(stream), strict=False)
    example = (calibration[0][:1], calibration[1][:1])
    base = SearchConfig().energy_settings
    out: dict = {}
    for mode in (False, True, "codes"):
        settings = {**base, "sparsity_aware": mode}
        ref_pj = estimate_energy(reference, example, reference=("int8", "int16"), **settings).total_pj
        cand_pj = candidate_energy(model, example, plan, settings).total_pj
        out[str(mode)] = {"reference_pj": ref_pj, "candidate_pj": cand_pj, "cut": 1 - cand_pj / ref_pj}
        print(f"sparsity_aware={mode!s:5}  reference {ref_pj:14,.0f} pJ  candidate {cand_pj:14,.0f} pJ  "
              f"cut {100 * (1 - cand_pj / ref_pj):.1f} %", flush=True)
    linear = [m for m in model.modules() if isinstance(m, QLinear)]
    out["zero_fraction_linear_weights_mean"] = sum(float((m.weight == 0).float().mean()) for m in linear) / len(linear)
    int8 = qtype("int8")
    ref_linear = [m for m in reference.modules() if isinstance(m, torch.nn.Linear)]
    out["reference_int8_zero_codes_linear_mean"] = sum(
        float((reference_codes(m.weight.detach(), int8) == 0).float().mean()) for m in ref_linear) / len(ref_linear)
    print(f"zero weights: candidate Linear layers {100 * out['zero_fraction_linear_weights_mean']:.1f} % (mean), "
          f"reference int8 per-channel zero codes {100 * out['reference_int8_zero_codes_linear_mean']:.2f} %")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stream", required=True, type=Path, help="the zoo run's MiniLM bitstream (model.nnc)")
    ap.add_argument("--zoo", type=Path, default=RESULTS / "zoo.json", help="the zoo results holding its plan")
    ap.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    out = price(args.stream, args.zoo)
    out["seconds"] = time.perf_counter() - t0
    out["note"] = ("The zoo run's decoded MiniLM candidate (its zoo.json plan, its bitstream) priced with "
                   "estimate_energy / candidate_energy under each sparsity_aware mode; the reference's zero codes "
                   "at per-output-channel max-scaled int8 steps; one torch thread.")
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=2) + "\n")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()

"""Where all-MiniLM-L6-v2 loses fidelity: fixed quantization plans, no search and no training (not CI).

    HF_HUB_OFFLINE=1 nice python -m tests.benchmarks.bench_minilm_plans [--distil-epochs N] [--initial-kernels gptq]
        [--lr LR --lr-decay D] [--only 6,14,...] [--prune F] [--out PATH]

For each plan: the mean embedding cosine on the 160 evaluation sentences of the model zoo (``bench_zoo``;
disjoint from its calibration sentences) right after quantization, and the energy against the int8 / int16
reference (graph energy, SRAM, min size 2^27 bits; the search's settings). Kernels are 8 / 6 / 4 / 3 bits with
one power-of-two step per tensor (``quantized_bits(b,i,1)``) or one step per output channel
(``alpha='auto'``); activations are the outputs of the norms, of query / key / value and the attention,
of the GELUs and of the two projections that feed the residual sums, each layer's ``{i}`` fitted on 256
calibration sentences (99.99th percentile, largest value, or least squared error). ``--distil-epochs N``
then distils the W4 / A8 plan for N epochs on the 1,000 calibration sentences and prints the cosine after
each (``--lr`` / ``--lr-decay``: its rate, 1e-4 decaying by 0.8 per epoch unless given).
``--initial-kernels gptq`` starts every plan's kernels from their data-aware (GPTQ) rounding on the
Hessians of the quantized model's layer inputs with float kernels (256 calibration sentences; the search's
``SearchConfig(initial_kernels='gptq')``). The last five rows give the Linear layers that read the norm (and GELU) outputs per-input-channel input
steps (plan key ``input``, fitted on the 256 calibration sentences, folded into the kernels), the norm / GELU
outputs staying 16 bits. Each row also prints the energy with zero weights skipped (``sparsity_aware="codes"``:
zero codes of the candidate's kernels, the reference's int8 zero codes likewise). ``--prune F`` prunes F of the
Linear weights (global magnitude) after quantizing. Writes results/minilm_plans.json (``minilm_plans_gptq.json``
with GPTQ kernels; ``--out``: elsewhere).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import torch

from nncodec.energy.estimate import estimate_energy
from nncodec.quant.gptq import initialize_kernels
from nncodec.quant.input_steps import fit_input_steps, input_requantized
from nncodec.quant.layers import quantize_model
from nncodec.prune.unstructured import apply_masks, global_magnitude_masks
from nncodec.quant.plan import Plan
from nncodec.search import FidelityTask, SearchConfig, SearchSpace
from nncodec.search.controllers import candidate_energy
from tests.benchmarks.bench_zoo import MINILM_SHARE, load_minilm

RESULTS = Path(__file__).resolve().parent / "results"
KERNEL = {False: "quantized_bits({b},{i},1)", True: "quantized_bits({b},{i},1,alpha='auto')"}
#: plans: (kernel bits, per channel, {activation group: bits} or None for float activations, range fit)
A8 = {"qkv": 8, "ffn_in": 8, "norms": 8, "attention_out": 8, "ffn_out": 8}
A8_RES16 = {**A8, "attention_out": 16, "ffn_out": 16}
A6_RES16 = {k: 6 if v == 8 else v for k, v in A8_RES16.items()}
PLANS = {
    "W8 per tensor, float activations": (8, False, None, "mse"),
    "W8 per channel, float activations": (8, True, None, "mse"),
    "W6 per tensor, float activations": (6, False, None, "mse"),
    "W6 per channel, float activations": (6, True, None, "mse"),
    "W4 per tensor, float activations": (4, False, None, "mse"),
    "W4 per channel, float activations": (4, True, None, "mse"),
    "W3 per channel, float activations": (3, True, None, "mse"),
    "W8 per channel, A8 norms only": (8, True, {"norms": 8}, "mse"),
    "W8 per channel, A8 GELU only": (8, True, {"ffn_in": 8}, "mse"),
    "W8 per channel, A8 q/k/v + attention only": (8, True, {"qkv": 8}, "mse"),
    "W8 per channel, A8 (residual inputs 16)": (8, True, A8_RES16, "mse"),
    "W4 per channel, A8, percentile ranges": (4, True, A8, "percentile"),
    "W4 per channel, A8, MSE ranges": (4, True, A8, "mse"),
    "W4 per channel, A8 (residual inputs 16)": (4, True, A8_RES16, "mse"),
    "W4 per channel, A8, GELU 6 (residual 16)": (4, True, {**A8_RES16, "ffn_in": 6}, "mse"),
    "W4 per channel, A6 (residual 16)": (4, True, A6_RES16, "mse"),
    "W3 per channel, A8 (residual 16)": (3, True, A8_RES16, "mse"),
    # per-channel input steps (plan key 'input'): norm outputs (and GELU outputs) stay 16 bits for the residual
    # path; q / k / v, the FFN input (and the FFN output) layers requantize their inputs with per-channel steps
    "W4 per channel, A8, norms 16 + input steps 8 (q/k/v, FFN in)":
        (4, True, {**A8_RES16, "norms": 16}, "mse", {"qkv": 8, "ffn_in": 8}),
    "W4 per channel, A8, norms + GELU 16, input steps 8 (q/k/v, FFN in, FFN out)":
        (4, True, {**A8_RES16, "norms": 16, "ffn_in": 16}, "mse", {"qkv": 8, "ffn_in": 8, "ffn_out": 8}),
    "W4 per channel, A6, norms + GELU 16, input steps 6":
        (4, True, {**A6_RES16, "norms": 16, "ffn_in": 16}, "mse", {"qkv": 6, "ffn_in": 6, "ffn_out": 6}),
    "W4 per channel, A8, norms + GELU 16, input steps 6":
        (4, True, {**A8_RES16, "norms": 16, "ffn_in": 16}, "mse", {"qkv": 6, "ffn_in": 6, "ffn_out": 6}),
    "W3 per channel, A8, norms + GELU 16, input steps 8":
        (3, True, {**A8_RES16, "norms": 16, "ffn_in": 16}, "mse", {"qkv": 8, "ffn_in": 8, "ffn_out": 8}),
}


def plan_of(spaces: dict, kernel_bits: int, per_channel: bool, acts: dict | None, fit: str,
            inputs: dict | None = None) -> Plan:
    """The plan of one row, through the search space (so that it is a plan the search can return)."""
    space = spaces[(per_channel, fit)]
    params = space.parameters()
    choices = {}
    for key, values in params.items():
        group, role = key.rsplit(".", 1)
        if role == "kernel":
            want = 8 if group == "embeddings" else kernel_bits
            choices[key] = next(v for v in values if v.startswith(f"quantized_bits({want},"))
        elif role == "bias":
            choices[key] = values[-1]
        elif role == "activation" and acts and group in acts:
            choices[key] = next(v for v in values if v.startswith(f"quantized_bits({acts[group]},"))
        elif role == "input" and inputs and group in inputs:
            choices[key] = next(v for v in values if v.startswith(f"quantized_bits({inputs[group]},"))
    return space.plan_from(choices)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--distil-epochs", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated row numbers (1-based) to run")
    ap.add_argument("--initial-kernels", choices=("nearest", "gptq"), default="nearest")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--lr-decay", type=float, default=0.8)
    ap.add_argument("--prune", type=float, default=0.0,
                    help="prune this fraction of the Linear weights (global magnitude) after quantizing")
    ap.add_argument("--out", default=None, help="JSON path (default: results/minilm_plans[_gptq].json)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    reference, calib, evals, mean_pool = load_minilm(1000)
    example = (calib[0][:1], calib[1][:1])
    settings = SearchConfig().energy_settings
    ref_pj = estimate_energy(reference, example, reference=("int8", "int16"), **settings).total_pj
    task = FidelityTask(reference, calib, evals, output_fn=mean_pool, batch_size=16, lr=args.lr,
                        lr_decay=args.lr_decay)
    hessian_batches = [(calib[0][i:i + 32], calib[1][i:i + 32]) for i in range(0, 256, 32)]

    def quantized(plan: Plan) -> torch.nn.Module:
        model = quantize_model(copy.deepcopy(reference), plan, inplace=True)
        if input_requantized(model):  # per-channel input steps, on calibration sentences (as the search does)
            fit_input_steps(model, hessian_batches, lambda m, batch: m(*batch))
        if args.initial_kernels == "gptq":
            initialize_kernels(model, hessian_batches, lambda m, batch: m(*batch))
        return model

    bits = {"kernel": {"dense": (3, 4, 6, 8), "embedding": (8,)},
            "activation": {"dense": (6, 8, 16), "norm": (6, 8, 16), "attention": (6, 8, 16),
                           "activation": (6, 8, 16)},
            "bias": {"dense": (16,)}, "input": {"qkv": (6, 8), "ffn_in": (6, 8), "ffn_out": (6, 8)}}
    sample = (calib[0][:256], calib[1][:256])
    only = {int(i) for i in args.only.split(",")} if args.only else None
    wanted = {(row[1], row[3]) for n, row in enumerate(PLANS.values(), 1) if not only or n in only}
    if args.distil_epochs:
        wanted.add((True, "mse"))
    spaces = {(pc, fit): SearchSpace.from_model(reference, example, sample, share=MINILM_SHARE, widths=(1.0,),
                                                kernels=(KERNEL[pc],), bits=bits, activation_range=fit)
              for pc, fit in wanted}  # only the spaces the chosen rows use (each takes minutes)
    rows = []
    print(f"{'plan':46s} {'cosine':>7s} {'energy':>7s} {'change':>8s}")
    for n, (name, row) in enumerate(PLANS.items(), 1):
        if only and n not in only:
            continue
        plan = plan_of(spaces, *row)
        model = quantized(plan)
        if args.prune:
            apply_masks(model, global_magnitude_masks(model, args.prune))
        cosine = task.evaluate(model)
        ratio = candidate_energy(model, example, plan, settings).total_pj / ref_pj
        sparse = {**settings, "sparsity_aware": "codes"}
        codes_ratio = candidate_energy(model, example, plan, sparse).total_pj / ref_pj
        rows.append({"plan": name, "cosine": cosine, "energy_ratio": ratio, "energy_cut": 1 - ratio,
                     "energy_ratio_zero_codes_skipped": codes_ratio, "prune": args.prune})
        print(f"{name[:46]:46s} {cosine:7.4f} {ratio:7.3f} {-100 * (1 - ratio):+6.1f} % "
              f"(zero codes skipped: {-100 * (1 - codes_ratio):+6.1f} %)", flush=True)
    distil = []
    if args.distil_epochs:
        plan = plan_of(spaces, 4, True, A8_RES16, "mse")
        model = quantized(plan)
        torch.manual_seed(0)
        for epoch in range(args.distil_epochs):
            t0 = time.perf_counter()
            task.train_epoch(model, epoch, proxy=False)
            distil.append({"epoch": epoch + 1, "cosine": task.evaluate(model), "seconds": time.perf_counter() - t0})
            print(f"W4 per channel, A8 (residual 16), distilled {epoch + 1} epoch(s): {distil[-1]['cosine']:.4f} "
                  f"({distil[-1]['seconds']:.0f} s)", flush=True)
    path = Path(args.out) if args.out else \
        RESULTS / ("minilm_plans_gptq.json" if args.initial_kernels == "gptq" else "minilm_plans.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"rows": rows, "distillation": distil, "threads": 1,
                               "initial_kernels": args.initial_kernels, "lr": args.lr, "lr_decay": args.lr_decay,
                               "load_average_1min_at_end": round(os.getloadavg()[0], 2)}, indent=2))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()

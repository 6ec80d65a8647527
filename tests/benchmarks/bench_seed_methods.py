"""Benchmark of the seed methods against TPE at equal wall time (not CI): seed CNN, ResNet-8, MobileNetV2-style.

For each model and seed, every new method runs end to end
(search, fine-tune, encode, decode, re-measure): ``differentiable``, ``greedy``, ``iterative`` (magnitude
pruning + quantization steps, capped at half the reference energy) and ``codesign`` (differentiable +
hardware alternation). TPE then runs on the same model and seed in the same process with a time budget
(``SearchConfig.timeout_s``, no trial count) equal to the median of those methods' search phases (the
``run_search`` step before the final fine-tuning, ``SearchResult.search_seconds``, measured the same way for
every method); its budget, that median and its actual search time are recorded. Every method then gets
the same fine-tuning (2 epochs), encoding and decoding, outside the budget. Reported per run: decoded
accuracy, accuracy loss (points), energy cut vs the int8 / int16 reference (sparsity-aware energy, SRAM,
min size 2^27 bits; the co-design costs its own hardware), bitstream bytes, search and total wall
seconds, and whether the loss is <= 1 point.
All methods share one small space (kernels ternary / 4 / 8 bits, activations 4 / 8 bits, widths fixed).

The reference of each model is trained once (``--ref-train`` images of MNIST-5k's 4000 training images,
``--ref-epochs`` epochs, Adam 2e-3), then its batch-norm statistics are re-estimated over those images
(cumulative average, train mode, no gradient): after a few hundred steps the running averages still lag
the weights and ResNet-8 / MobileNetV2-style scored at chance in eval mode. The searches train on the
first ``--train`` of those images and test on 500 held-out ones. The models run in parallel processes
(one thread each); each writes ``seed_methods.<model><tag>.json`` after every seed, and ``--merge`` rebuilds
the combined file and plot from them (to run seeds in parallel too, start one process per seed with
``--seed-list S --tag .sS``, then ``--merge``).

usage: nice python -m tests.benchmarks.bench_seed_methods [--models cnn,resnet8,mobilenet] [--seeds 3]
       [--train 480] [--ref-train 1200] [--ref-epochs 5] [--out DIR] [--merge]
Writes tests/benchmarks/results/seed_methods.json and seed_methods.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from nncodec.datasets import load_mnist5k, split
from nncodec.energy.estimate import estimate_energy
from nncodec.models import MobileNetV2Small, ResNet8, seed_example_cnn
from nncodec.search import ClassifierTask, SearchConfig, SearchSpace, run_search
from nncodec.train import accuracy, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = {"cnn": seed_example_cnn, "resnet8": ResNet8, "mobilenet": MobileNetV2Small}
KERNELS = ("ternary(alpha='auto_po2')", "quantized_bits({b},{i},1)")
BITS = {"kernel": {"conv": (4, 8), "dense": (4, 8)}, "activation": {"conv": (4, 8), "dense": (8,)},
        "bias": {"conv": (8,), "dense": (8,)}}
SETTINGS = {"min_sram_size": 2 ** 27, "weights_memory": "sram", "activations_memory": "sram", "io_traffic": False,
            "sparsity_aware": True}
HARDWARE = {"sram_bits": [2 ** 18, 2 ** 21, 2 ** 24], "blocks": [1, 2], "channels": [8, 32], "rounds": 2}


def _methods(ref_energy: float) -> dict[str, dict]:
    return {
        "differentiable": {"controller": "differentiable", "options": {"epochs": 3, "lambda": 0.5}},
        "greedy": {"controller": "greedy", "n_trials": 6, "options": {"max_accuracy_drop": 0.01, "knobs": ["kernel"]}},
        "iterative": {"schedule": "iterative", "n_trials": 4, "max_energy_pj": 0.5 * ref_energy,
                      "options": {"pipeline": ["quantize", "prune"], "prune_step": 0.3, "max_accuracy_drop": 0.01}},
        "codesign": {"controller": "differentiable",
                     "options": {"epochs": 2, "lambda": 0.5, "codesign": True, "hardware": HARDWARE}},
    }


def _run(name: str, reference, space, task, ref_acc: float, seed: int, out: Path, **cfg) -> dict:
    t0 = time.perf_counter()
    config = SearchConfig(seed=seed, proxy_epochs=1, final_epochs=2, energy_settings=SETTINGS, out_dir=str(out),
                          study_name=f"{out.name}", progress=False, **cfg)
    result = run_search(reference, space, task, config, reference_accuracy=ref_acc)
    seconds = time.perf_counter() - t0
    row = {"method": name, "seed": seed, "accuracy": result.decoded_accuracy,
           "loss_points": 100 * (ref_acc - result.decoded_accuracy),
           "energy_cut": 1 - result.energy_pj / result.reference_energy_pj, "energy_pj": result.energy_pj,
           "bitstream_bytes": result.bitstream_bytes, "seconds": seconds, "search_seconds": result.search_seconds,
           "trials": len(result.trials), "load_average": os.getloadavg()}
    if config.timeout_s is not None:
        row["budget_s"] = config.timeout_s
    row["within_1_point"] = within_1_point(row["loss_points"])
    if "hardware" in result.extra:
        row["hardware"] = {k: result.extra["hardware"][k] for k in ("sram_bits", "weights_memory", "blocks",
                                                                     "channels", "latency_s")}
    print(f"  {name:14s} seed {seed}: acc {row['accuracy']:.4f} (loss {row['loss_points']:+.2f} pt)  "
          f"energy -{100 * row['energy_cut']:.1f} %  {row['bitstream_bytes']} B  search {result.search_seconds:.0f} s "
          f"(budget {config.timeout_s or 0:.0f} s) of {seconds:.0f} s, {row['trials']} trials", flush=True)
    return row


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x, batch_size: int = 200) -> nn.Module:
    """Re-estimate every batch-norm's running mean / variance over ``x`` (cumulative average)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for start in range(0, len(x), batch_size):
        model(torch.from_numpy(x[start:start + batch_size]))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def bench_model(model_name: str, seeds: list[int], n_train: int, out: Path, ref_train: int = 1200,
                ref_epochs: int = 5, tag: str = "") -> dict:
    torch.set_num_threads(1)  # two cores shared with other jobs
    x, y = load_mnist5k()
    x_all, y_all, x_test, y_test = split(x, y, 0.2, 0)
    x_test, y_test = x_test[:500], y_test[:500]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    reference = train_classifier(MODELS[model_name](), x_all[:ref_train], y_all[:ref_train], epochs=ref_epochs,
                                 seed=0).eval()
    before = accuracy(reference, x_test, y_test)
    recalibrate_batchnorm(reference, x_all[:ref_train])
    ref_acc = accuracy(reference, x_test, y_test)
    ref_seconds = time.perf_counter() - t0
    x_train, y_train = x_all[:n_train], y_all[:n_train]
    space = SearchSpace.from_model(reference, (1, 28, 28), x_train[:128], kernels=KERNELS, bits=BITS, widths=(1.0,))
    print(f"{model_name}: reference accuracy {ref_acc:.4f} ({before:.4f} before the batch-norm re-estimate; "
          f"chance 0.10; {ref_seconds:.0f} s)", flush=True)
    result = {"model": model_name, "reference_accuracy": ref_acc, "reference_accuracy_before_bn_reestimate": before,
              "reference_train": ref_train, "reference_epochs": ref_epochs, "rows": []}
    rows = result["rows"]
    for seed in seeds:
        task = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=0.5, seed=seed)
        ref_energy = estimate_energy(reference, (1, 28, 28), reference=("int8", "int16"), **SETTINGS).total_pj
        new = [_run(m, reference, space, task, ref_acc, seed, out / f"{model_name}-{m}-{seed}", **cfg)
               for m, cfg in _methods(ref_energy).items()]
        budget = statistics.median(r["search_seconds"] for r in new)  # same run, same model and seed
        tpe = _run("tpe", reference, space, task, ref_acc, seed, out / f"{model_name}-tpe-{seed}",
                   controller="tpe", n_trials=None, timeout_s=budget)
        tpe["method_median_search_s"] = budget
        tpe["search_over_budget"] = tpe["search_seconds"] / budget
        rows += new + [tpe]
        result["seeds_done"] = sorted({r["seed"] for r in rows})
        result["summary"] = _aggregate(result)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"seed_methods.{model_name}{tag}.json").write_text(json.dumps(result, indent=2, default=float))
    return result


def _bench_entry(job: tuple) -> dict:
    return bench_model(*job)


def within_1_point(loss_points: float) -> bool:
    """Loss <= 1 point; 1 point is 5 of the 500 test images, so exactly 1 point counts (float rounding aside)."""
    return loss_points <= 1.0 + 1e-9


def _aggregate(model: dict) -> dict:
    out = {}
    for r in model["rows"]:
        r["within_1_point"] = within_1_point(r["loss_points"])
    for method in dict.fromkeys(r["method"] for r in model["rows"]):
        rs = [r for r in model["rows"] if r["method"] == method]
        out[method] = {k: statistics.mean(r[k] for r in rs) for k in ("loss_points", "energy_cut", "bitstream_bytes",
                                                                       "seconds", "search_seconds", "trials")}
        if all("budget_s" in r for r in rs):
            out[method]["budget_s"] = statistics.mean(r["budget_s"] for r in rs)
            out[method]["search_over_budget"] = [r["search_over_budget"] for r in rs]
        out[method]["within_1_point"] = sum(r["within_1_point"] for r in rs)
        out[method]["runs"] = len(rs)
        ok = [r["energy_cut"] for r in rs if r["within_1_point"]]
        out[method]["energy_cut_within_1_point"] = statistics.mean(ok) if ok else None
    return out


def plot(models: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for i, method in enumerate(dict.fromkeys(r["method"] for r in model["rows"])):
            rs = [r for r in model["rows"] if r["method"] == method]
            ax.scatter([100 * r["energy_cut"] for r in rs], [r["loss_points"] for r in rs], label=method,
                       color=f"C{i}", marker="*" if method == "tpe" else "o")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        tpe = model.get("summary", {}).get("tpe", {})
        ax.set_title(model["model"] + (f"\nTPE search {tpe['search_seconds']:.0f} s, budget {tpe['budget_s']:.0f} s "
                                       "(median of the others, mean over seeds)" if "budget_s" in tpe else ""),
                     fontsize=9)
        ax.set_xlabel("energy cut vs int8/int16 reference (%)")
        ax.set_ylabel("accuracy loss (points)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _merged(name: str) -> dict | None:
    """One model's rows from its per-model files (one per process), each (method, seed) once."""
    files = sorted(RESULTS.glob(f"seed_methods.{name}.json")) + sorted(RESULTS.glob(f"seed_methods.{name}.*.json"))
    if not files:
        return None
    parts = [json.loads(f.read_text()) for f in files]
    model = {k: v for k, v in parts[0].items() if k not in ("rows", "summary", "seeds_done")}
    seen: dict[tuple, dict] = {}
    for part in parts:
        for r in part["rows"]:
            seen.setdefault((r["method"], r["seed"]), r)
    model["rows"] = sorted(seen.values(), key=lambda r: (r["seed"], list(_methods(1.0)) .index(r["method"])
                                                        if r["method"] in _methods(1.0) else 99))
    model["seeds_done"] = sorted({r["seed"] for r in model["rows"]})
    model["summary"] = _aggregate(model)
    return model


def write_combined(models: list[dict], args: argparse.Namespace, seconds: float | None) -> None:
    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    (RESULTS / "seed_methods.json").write_text(json.dumps(
        {"seeds": sorted({r["seed"] for m in models for r in m["rows"]}), "train": args.train, "threads_per_model": 1, "seconds": seconds,
         "load_average_at_end": load, "models": models}, indent=2, default=float))
    plot(models, RESULTS / "seed_methods.png")
    for model in models:
        for method, agg in model["summary"].items():
            cut = agg["energy_cut_within_1_point"]
            print(f"{model['model']:10s} {method:14s} loss {agg['loss_points']:+.2f} pt  energy -"
                  f"{100 * agg['energy_cut']:.1f} %  cut within 1 pt {'-' if cut is None else f'{100 * cut:.1f} %'}  "
                  f"{agg['bitstream_bytes']:.0f} B  search {agg['search_seconds']:.0f} s of {agg['seconds']:.0f} s  "
                  f"within 1 pt: "
                  f"{agg['within_1_point']}/{agg['runs']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,resnet8,mobilenet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--seed-list", help="comma-separated seeds to run instead of 0..seeds-1 (extra processes)")
    ap.add_argument("--tag", default="", help="suffix of the per-model files (e.g. .s2 for an extra process)")
    ap.add_argument("--train", type=int, default=480, help="training images of the searches (of MNIST-5k's 4000)")
    ap.add_argument("--ref-train", type=int, default=1200, help="training images of the references")
    ap.add_argument("--ref-epochs", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", action="store_true", help="only rebuild the combined json / plot from per-model files")
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    if args.merge:
        write_combined([m for m in (_merged(n) for n in names) if m], args, None)
        return
    out = Path(args.out or tempfile.mkdtemp(prefix="seed-methods-"))
    t0 = time.perf_counter()
    seeds = [int(v) for v in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
    jobs = [(n, seeds, args.train, out, args.ref_train, args.ref_epochs, args.tag) for n in names]
    with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
        models = pool.map(_bench_entry, jobs)
    write_combined(models, args, time.perf_counter() - t0)


if __name__ == "__main__":
    main()

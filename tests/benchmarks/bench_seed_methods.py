"""Benchmark of the seed methods against TPE at equal wall time (not CI): seed CNN, ResNet-8, MobileNetV2-style.

For each model (trained once on an MNIST-5k subset) and seed, every new method runs end to end
(search, fine-tune, encode, decode, re-measure): ``differentiable``, ``greedy``, ``iterative`` (magnitude
pruning + quantization steps, capped at half the reference energy) and ``codesign`` (differentiable +
hardware alternation). TPE then gets the median wall time of those runs: its trial count is that time
divided by one proxy epoch of the model, measured once. Reported per run: decoded accuracy, accuracy loss
(points), energy cut vs the int8 / int16 reference (sparsity-aware energy, SRAM, min size 2^27 bits;
the co-design costs its own hardware), bitstream bytes, wall seconds, and whether the loss is <= 1 point.
All methods share one small space (kernels ternary / 4 / 8 bits, activations 4 / 8 bits, widths fixed).

usage: nice python -m tests.benchmarks.bench_seed_methods [--models cnn,resnet8,mobilenet] [--seeds 3]
       [--train 1200] [--out DIR]
Writes tests/benchmarks/results/seed_methods.json and seed_methods.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nncodec.datasets import load_mnist5k, split
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
           "bitstream_bytes": result.bitstream_bytes, "seconds": seconds, "trials": len(result.trials)}
    row["within_1_point"] = row["loss_points"] <= 1.0
    if "hardware" in result.extra:
        row["hardware"] = {k: result.extra["hardware"][k] for k in ("sram_bits", "weights_memory", "blocks",
                                                                     "channels", "latency_s")}
    print(f"  {name:14s} seed {seed}: acc {row['accuracy']:.4f} (loss {row['loss_points']:+.2f} pt)  "
          f"energy -{100 * row['energy_cut']:.1f} %  {row['bitstream_bytes']} B  {seconds:.0f} s", flush=True)
    return row


def bench_model(model_name: str, seeds: int, n_train: int, out: Path) -> dict:
    x, y = load_mnist5k()
    x_train, y_train, x_test, y_test = split(x, y, 0.2, 0)
    x_train, y_train, x_test, y_test = x_train[:n_train], y_train[:n_train], x_test[:500], y_test[:500]
    torch.manual_seed(0)
    reference = train_classifier(MODELS[model_name](), x_train, y_train, epochs=4, seed=0).eval()
    ref_acc = accuracy(reference, x_test, y_test)
    space = SearchSpace.from_model(reference, (1, 28, 28), x_train[:128], kernels=KERNELS, bits=BITS, widths=(1.0,))
    print(f"{model_name}: reference accuracy {ref_acc:.4f}", flush=True)
    rows = []
    for seed in range(seeds):
        task = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=0.5, seed=seed)
        probe = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=0.5, seed=seed)
        t0 = time.perf_counter()
        import copy

        probe.train_epoch(copy.deepcopy(reference), 0, proxy=True)
        epoch_s = time.perf_counter() - t0
        from nncodec.energy.estimate import estimate_energy

        ref_energy = estimate_energy(reference, (1, 28, 28), reference=("int8", "int16"), **SETTINGS).total_pj
        new = [_run(m, reference, space, task, ref_acc, seed, out / f"{model_name}-{m}-{seed}", **cfg)
               for m, cfg in _methods(ref_energy).items()]
        budget = statistics.median(r["seconds"] for r in new)
        fixed = 3 * epoch_s * 2 + 5.0  # final fine-tuning (2 full epochs) and encode / decode, roughly
        n_trials = max(2, round((budget - fixed) / max(epoch_s, 1e-3)))
        rows += new + [_run("tpe", reference, space, task, ref_acc, seed, out / f"{model_name}-tpe-{seed}",
                            controller="tpe", n_trials=n_trials)]
    return {"model": model_name, "reference_accuracy": ref_acc, "rows": rows}


def _aggregate(model: dict) -> dict:
    out = {}
    for method in dict.fromkeys(r["method"] for r in model["rows"]):
        rs = [r for r in model["rows"] if r["method"] == method]
        out[method] = {k: statistics.mean(r[k] for r in rs) for k in ("loss_points", "energy_cut", "bitstream_bytes",
                                                                       "seconds")}
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
        ax.set_title(model["model"])
        ax.set_xlabel("energy cut vs int8/int16 reference (%)")
        ax.set_ylabel("accuracy loss (points)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,resnet8,mobilenet")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=1200, help="training images (of MNIST-5k's 4000)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)  # two cores shared with other jobs
    out = Path(args.out or tempfile.mkdtemp(prefix="seed-methods-"))
    models = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; known: {', '.join(MODELS)}")
        model = bench_model(name, args.seeds, args.train, out)
        model["summary"] = _aggregate(model)
        models.append(model)
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "seed_methods.json").write_text(json.dumps(
            {"seeds": args.seeds, "train": args.train, "threads": 1, "seconds": time.perf_counter() - t0,
             "models": models}, indent=2, default=float))
        plot(models, RESULTS / "seed_methods.png")
        for method, agg in model["summary"].items():
            print(f"{name:10s} {method:14s} loss {agg['loss_points']:+.2f} pt  energy -{100 * agg['energy_cut']:.1f} %  "
                  f"{agg['bitstream_bytes']:.0f} B  {agg['seconds']:.0f} s  within 1 pt: "
                  f"{agg['within_1_point']}/{agg['runs']}", flush=True)


if __name__ == "__main__":
    main()

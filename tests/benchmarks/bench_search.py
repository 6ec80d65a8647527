"""Benchmark of the search on the seed example (MNIST-5k). Not a CI test: run it by hand.

    python tests/benchmarks/bench_search.py [--seeds 5] [--trials 16] [--full-trials 30] [--out DIR]

1. Headline, per seed: the demo pipeline (TPE, ``--full-trials`` trials, pruning, fine-tuning, encode,
   decode): energy reduction vs the int8/int16 reference and accuracy change of the decoded model.
2. Controllers, per seed, same trial budget: best proxy score of each controller, and its ratio to random
   search's best score in the same run.

Writes ``bench_search.json`` and prints the tables.
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
from nncodec.models import seed_example_cnn
from nncodec.search import CONTROLLERS, ClassifierTask, ScoreConfig, SearchConfig, SearchSpace, run_search
from nncodec.search.runner import _Searcher
from nncodec.train import accuracy, train_classifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--full-trials", type=int, default=30)
    ap.add_argument("--controllers", default=",".join(CONTROLLERS))
    ap.add_argument("--out", default="bench_search_out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    x, y = load_mnist5k()
    results = {"settings": vars(args), "headline": [], "controllers": []}
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        xtr, ytr, xte, yte = split(x, y, 0.2, seed)
        ref = train_classifier(seed_example_cnn(), xtr, ytr, epochs=8, seed=seed)
        ref_acc = accuracy(ref, xte, yte)
        space = SearchSpace.from_model(ref, (1, 28, 28), xtr[:256])
        task = ClassifierTask(xtr, ytr, xte, yte, proxy_fraction=0.5, seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            cfg = SearchConfig(controller="tpe", n_trials=args.full_trials, final_epochs=6, final_prune=0.75,
                               size_score=ScoreConfig(), seed=seed, out_dir=tmp, progress=False)  # as the demo
            r = run_search(ref, space, task, cfg, reference_accuracy=ref_acc)
            row = {"seed": seed, "reference_accuracy": ref_acc, "decoded_accuracy": r.decoded_accuracy,
                   "accuracy_change": r.decoded_accuracy - ref_acc,
                   "energy_reduction": 1 - r.energy_pj / r.reference_energy_pj,
                   "size_ratio": r.float32_bytes / r.bitstream_bytes, "seconds": time.perf_counter() - t0}
            results["headline"].append(row)
            print("headline", json.dumps(row), flush=True)
        for controller in filter(None, args.controllers.split(",")):  # --controllers "": headline only
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                cfg = SearchConfig(controller=controller, n_trials=args.trials, seed=seed, out_dir=tmp,
                                   proxy_epochs=2 if controller == "hyperband" else 1, progress=False,
                                   study_name=f"{controller}-{seed}")
                searcher = _Searcher(ref, space, task, cfg, None)
                searcher.search_plan()
                import optuna

                study = optuna.load_study(study_name=cfg.study_name, storage=searcher.url)
                done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE
                        and not t.user_attrs.get("infeasible")]
                from nncodec.search import score

                scores = [score(t.user_attrs["accuracy"], t.user_attrs["cost"], searcher.ref_cost) for t in done]
                best = max(range(len(done)), key=lambda i: scores[i])
                row = {"seed": seed, "controller": controller, "best_score": scores[best],
                       "best_accuracy": done[best].user_attrs["accuracy"],
                       "best_energy_reduction": 1 - done[best].user_attrs["energy_pj"] / searcher.ref_energy,
                       "seconds": time.perf_counter() - t0}
                results["controllers"].append(row)
                print("controller", json.dumps(row), flush=True)
        (out / "bench_search.json").write_text(json.dumps(results, indent=2))
    print_tables(results)


def print_tables(results: dict) -> None:
    h = results["headline"]
    print("\nheadline (TPE, full pipeline, decoded model):")
    for key in ("reference_accuracy", "decoded_accuracy", "accuracy_change", "energy_reduction", "size_ratio",
                "seconds"):
        vals = [r[key] for r in h]
        print(f"  {key:20s} mean {statistics.mean(vals):9.4f}  min {min(vals):9.4f}  max {max(vals):9.4f}")
    print("\ncontrollers (best proxy score, same trial budget; ratio to random search in the same seed):")
    by = {}
    for r in results["controllers"]:
        by.setdefault(r["controller"], {})[r["seed"]] = r
    rnd = by.get("random", {})
    if not by:
        return
    for c, rows in by.items():
        ratios = [rows[s]["best_score"] / rnd[s]["best_score"] for s in rows if s in rnd]
        wins = sum(1 for s in rows if s in rnd and rows[s]["best_score"] > rnd[s]["best_score"])
        print(f"  {c:10s} score {statistics.mean(r['best_score'] for r in rows.values()):.4f}  "
              f"vs random x{statistics.mean(ratios):.4f}  wins {wins}/{len(ratios)}  "
              f"energy -{100 * statistics.mean(r['best_energy_reduction'] for r in rows.values()):.1f} %  "
              f"acc {statistics.mean(r['best_accuracy'] for r in rows.values()):.4f}  "
              f"{statistics.mean(r['seconds'] for r in rows.values()):.0f} s")


if __name__ == "__main__":
    main()

"""Operating points in one scalable stream: the seed CNN (3 precision points) and all-MiniLM-L6-v2.

    HF_HUB_OFFLINE=1 python tests/benchmarks/bench_operating_points.py --out bench_points

Per point: accuracy (seed CNN, MNIST-5k test split) or mean embedding cosine to the float model (MiniLM,
the MiniLM benchmark's sentence set), energy per input from nncodec's energy model (the seed CNN: one
28x28 image; MiniLM: its torch.export graph on one tokenized sentence), bytes a decoder reads for that
point, and the size of the scalable stream against separate files of each point (same run). MiniLM's
steps are nested (``nest_steps``). Writes bench_points.json and bench_points.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.unit.test_operating_points import CountingReader  # noqa: E402  (a seekable source counting reads)


def _per_point(data: bytes, report, evaluate, n_points: int, decode_check) -> list[dict]:  # noqa: ANN001
    import nncodec

    rows = []
    for k in range(n_points):
        src = CountingReader(data)
        t0 = time.perf_counter()
        tensors = nncodec.decode(src, operating_point=k)
        seconds = time.perf_counter() - t0
        decode_check(k, tensors)
        p = report.points[k]
        rows.append({"point": k, "label": p.label, "quality": evaluate(tensors),
                     "energy_pj": None if math.isnan(p.energy_pj) else p.energy_pj,
                     "bytes_read": src.taken, "listed_read_bytes": p.read_bytes,
                     "separate_file_bytes": report.separate_bytes[k], "decode_s": seconds})
    return rows


def seed_cnn(epochs: int) -> dict:
    import nncodec
    from nncodec.datasets import load_mnist5k, split
    from nncodec.models import seed_example_cnn
    from nncodec.train import accuracy, train_classifier

    x, y = load_mnist5k()
    x_train, y_train, x_test, y_test = split(x, y, 0.2, 0)
    model = train_classifier(seed_example_cnn(), x_train, y_train, epochs=epochs, seed=0)
    float_acc = accuracy(model, x_test, y_test)
    points = [{"bits": 2, "bits_1d": 8, "label": "2-bit"}, {"bits": 4, "bits_1d": 8, "label": "4-bit"},
              {"bits": 8, "bits_1d": 8, "label": "8-bit"}]
    probe = seed_example_cnn()

    def evaluate(tensors: dict) -> float:
        probe.load_state_dict(tensors)
        return accuracy(probe, x_test, y_test)

    # measure each point's accuracy on a separate encode, then store it in the scalable stream
    for p in points:
        p["accuracy"] = evaluate(nncodec.decode(nncodec.encode(model, bits=p["bits"], bits_1d=p["bits_1d"])))
    t0 = time.perf_counter()
    data, report = nncodec.encode_with_report(model, operating_points=points, measure_separate=True, energy_input_shape=(1, 28, 28),
                                              level=19)
    encode_s = time.perf_counter() - t0

    def check(k: int, tensors: dict) -> None:
        separate = nncodec.decode(nncodec.encode(model, bits=points[k]["bits"], bits_1d=8, level=19))
        if not all(torch.equal(separate[n], tensors[n]) for n in separate):
            raise SystemExit(f"seed CNN point {k} differs from a separate encode of it")

    rows = _per_point(data, report, evaluate, len(points), check)
    chosen = {}
    for budget in [rows[0]["energy_pj"] * 0.99, rows[0]["energy_pj"], (rows[1]["energy_pj"] + rows[2]["energy_pj"]) / 2,
                   rows[2]["energy_pj"]]:
        try:
            chosen[f"{budget:.0f}"] = nncodec.load_model(data, energy_budget_pj=budget).nncodec_operating_point
        except nncodec.ConfigError as exc:
            chosen[f"{budget:.0f}"] = f"refused: {exc}"
    return {"model": "seed CNN (MNIST-5k, %d epochs)" % epochs, "float_accuracy": float_acc, "points": rows,
            "scalable_bytes": len(data), "encode_s": encode_s, "budget_choice": chosen}


def minilm(level: int = 19) -> dict:
    import nncodec
    from bench_minilm import SENTENCES, Fidelity
    from nncodec.points import choose_point, read_operating_points
    from nncodec.scalable import nested_steps

    fid = Fidelity()
    scales, _ = fid.step_scales()
    model = fid.st[0].auto_model  # the HF BertModel: its graph prices each point's energy
    tokens = fid.st.tokenizer(SENTENCES[:1], return_tensors="pt")
    energy_inputs = (tokens["input_ids"], tokens["attention_mask"])
    asked = [0.27, 0.13, 0.05]
    # nest_steps snaps the coarser steps to odd multiples of the finest (0.45, 0.15, 0.05): nested cells
    points = nested_steps([{"rel_step": r, "step_scales": scales} for r in asked])
    for p in points:
        p["label"] = f"rel_step {p['rel_step']:.3g}"
    t0 = time.perf_counter()
    data, report = nncodec.encode_with_report(model, operating_points=points, nest_steps=True, measure_separate=True, topology=False,
                                              energy_inputs=energy_inputs, level=level)
    encode_s = time.perf_counter() - t0

    def check(k: int, tensors: dict) -> None:
        if k != len(points) - 1:
            return  # one separate re-encode (the largest point) keeps the run short; the tests check all
        separate = nncodec.decode(nncodec.encode(model, topology=False, level=level, **report.point_options[k]))
        if not all(torch.equal(separate[n], tensors[n]) for n in separate):
            raise SystemExit(f"MiniLM point {k} differs from a separate encode of it")

    rows = _per_point(data, report, fid.cosine, len(points), check)
    chosen = {}
    energies = [r["energy_pj"] for r in rows]
    for budget in [energies[0] * 0.99, energies[0], (energies[1] + energies[2]) / 2, energies[2]]:
        try:
            chosen[f"{budget:.0f}"] = choose_point(read_operating_points(data), budget)  # what load_model picks
        except nncodec.ConfigError as exc:
            chosen[f"{budget:.0f}"] = f"refused: {exc}"
    return {"model": "all-MiniLM-L6-v2", "asked_rel_steps": asked, "points": rows, "scalable_bytes": len(data),
            "encode_s": encode_s, "budget_choice": chosen}


def summarize(result: dict) -> dict:
    rows = result["points"]
    largest = max(r["separate_file_bytes"] for r in rows)
    result["overhead_vs_largest_file"] = result["scalable_bytes"] / largest - 1
    result["ratio_to_sum_of_files"] = result["scalable_bytes"] / sum(r["separate_file_bytes"] for r in rows)
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    for ax, res in zip(np.atleast_1d(axes), results):
        rows = res["points"]
        read = [r["bytes_read"] / 1e3 for r in rows]
        sep = [r["separate_file_bytes"] / 1e3 for r in rows]
        q = [r["quality"] for r in rows]
        ax.plot(read, q, "o-", label="one scalable stream: bytes read per point")
        ax.plot(sep, q, "s--", label="separate files")
        for r, x in zip(rows, read):
            e = f"\n{r['energy_pj'] / 1e6:.2f} µJ" if r["energy_pj"] else ""
            ax.annotate(f"{r['label']}{e}", (x, r["quality"]), textcoords="offset points", xytext=(5, -18), fontsize=8)
        ax.set_xlabel("kB")
        ax.set_ylabel("top-1 accuracy" if "seed" in res["model"] else "embedding cosine")
        ax.set_title(f"{res['model']}: stream {res['scalable_bytes'] / 1e3:.0f} kB, "
                     f"{100 * res['overhead_vs_largest_file']:+.1f} % vs largest file", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_points")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--skip-minilm", action="store_true")
    ap.add_argument("--minilm-level", type=int, default=19, help="zstd level of the MiniLM streams (3: a quick run)")
    ap.add_argument("--skip-cnn", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    results = [] if args.skip_cnn else [summarize(seed_cnn(args.epochs))]
    if not args.skip_minilm:
        results.append(summarize(minilm(args.minilm_level)))
    (out / "bench_points.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "bench_points.png")
    for res in results:
        print(f"\n{res['model']}: scalable stream {res['scalable_bytes']} B, "
              f"{100 * res['overhead_vs_largest_file']:+.1f} % vs the largest separate file, "
              f"{res['ratio_to_sum_of_files']:.2f} x the sum of the files; encode {res['encode_s']:.1f} s")
        print(f"{'point':>5s} {'label':>16s} {'quality':>8s} {'energy pJ':>12s} {'bytes read':>11s} "
              f"{'separate file':>13s} {'decode s':>8s}")
        for r in res["points"]:
            e = f"{r['energy_pj']:.0f}" if r["energy_pj"] else "-"
            print(f"{r['point']:5d} {r['label']:>16s} {r['quality']:8.4f} {e:>12s} {r['bytes_read']:11d} "
                  f"{r['separate_file_bytes']:13d} {r['decode_s']:8.3f}")
        if "budget_choice" in res:
            print("energy budget (pJ) -> point:", json.dumps(res["budget_choice"]))


if __name__ == "__main__":
    main()

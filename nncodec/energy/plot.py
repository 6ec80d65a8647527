"""Per-layer energy bar chart (matplotlib, written to a PNG file; no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .estimate import EnergyReport

__all__ = ["plot_report", "plot_by_kind"]


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import io

    from ..atomic import write_atomic

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    _pyplot().close(fig)
    return write_atomic(path, [buf.getvalue()])


def plot_by_kind(reports: "dict[str, EnergyReport]", path: str | Path, title: str | None = None) -> Path:
    """One stacked bar per report (e.g. reference, 8-bit plan, 4-bit plan): counted energy per operation kind."""
    plt = _pyplot()
    kinds: list[str] = []
    for rep in reports.values():
        kinds += [k for k in rep.by_kind() if k not in kinds]
    fig, ax = plt.subplots(figsize=(2.2 * len(reports) + 3, 4.5))
    bottom = [0.0] * len(reports)
    cmap = plt.get_cmap("tab10")
    for i, kind in enumerate(kinds):
        vals = [rep.by_kind().get(kind, {"pj": 0.0})["pj"] / 1e6 for rep in reports.values()]
        ax.bar(list(reports), vals, bottom=bottom, label=kind, color=cmap(i % 10))
        bottom = [b + v for b, v in zip(bottom, vals)]
    for x, total in enumerate(bottom):
        ax.text(x, total, f"{total:,.1f}", ha="center", va="bottom")
    ax.set_ylabel("energy per inference (µJ)")
    ax.set_title(title or "energy per operation kind")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_report(report: "EnergyReport", path: Path, title: str | None = None) -> Path:
    plt = _pyplot()

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
    return _save(fig, path)

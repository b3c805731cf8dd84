"""The bar charts beside the Markdown reports of `embedlens eval`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ._mpl import BLUE, ORANGE, PALETTE, new_figure, save_figure, style

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..report import PairsReport, SectionRow


def analogy_chart(
    rows: Sequence[SectionRow], *, title: str, out: str | Path, dpi: float | None = None
) -> Figure:
    """Horizontal bars: accuracy per section, counts at the bar ends, overall as a line."""
    if not rows:
        raise ValueError("the analogy report has no sections to chart")
    correct = sum(r.correct for r in rows)
    total = sum(r.total for r in rows)
    overall = correct / total if total else 0.0
    with style():
        fig = new_figure(8.0, 1.4 + 0.34 * len(rows))
        ax = fig.subplots()
        y = np.arange(len(rows))[::-1]
        acc = [100 * r.accuracy for r in rows]
        ax.barh(y, acc, color=BLUE, height=0.7)
        for yi, a, r in zip(y, acc, rows):
            ax.text(
                a + 1,
                yi,
                f"{a:.1f} %  ({r.correct}/{r.total})",
                va="center",
                fontsize=8.5,
                zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
            )
        ax.axvline(100 * overall, color=ORANGE, ls="--", lw=1.5, zorder=1)
        ax.text(
            100 * overall,
            len(rows) - 0.3,
            f" all: {100 * overall:.1f} %",
            color=ORANGE,
            va="bottom",
            fontsize=9,
        )
        ax.set_yticks(y, [r.name for r in rows])
        ax.set_xlim(0, 118)
        ax.set_ylim(-0.6, len(rows) + 0.2)
        ax.set_xticks(range(0, 101, 20))
        ax.set_xlabel("accuracy (%)")
        ax.set_title(f"Analogy accuracy per section: {title}")
        save_figure(fig, out, dpi)
    return fig


def pairs_chart(
    reports: Sequence[PairsReport], *, out: str | Path, dpi: float | None = None
) -> Figure:
    """Left: Spearman and Pearson per file. Right: human score against model cosine."""
    if not reports:
        raise ValueError("no word-pair results to chart")
    with style():
        fig = new_figure(11.0, 4.8)
        bars, scatter = fig.subplots(1, 2, width_ratios=[1, 1.3])
        x = np.arange(len(reports))
        w = 0.38
        names = [Path(r.path).name for r in reports]
        sp = [r.spearman for r in reports]
        pe = [r.pearson for r in reports]
        bars.bar(x - w / 2, sp, w, color=BLUE, label="Spearman ρ")
        bars.bar(x + w / 2, pe, w, color=ORANGE, label="Pearson r")
        for xi, a, b in zip(x, sp, pe):
            bars.text(xi - w / 2, max(a, 0) + 0.02, f"{a:.3f}", ha="center", fontsize=8.5)
            bars.text(xi + w / 2, max(b, 0) + 0.02, f"{b:.3f}", ha="center", fontsize=8.5)
        bars.set_xticks(x, names, rotation=15 if len(reports) > 2 else 0)
        bars.set_ylim(min(0.0, min(sp + pe) - 0.05), 1.0)
        bars.axhline(0, color="black", lw=0.8)
        bars.set_ylabel("correlation with human scores")
        bars.set_title("correlation per file")
        fig.suptitle(f"Word-pair similarity: human scores against model {reports[0].model}")
        bars.legend(loc="upper right")
        for i, r in enumerate(reports):
            scatter.scatter(
                r.similarity,
                r.gold,
                s=9,
                alpha=0.6,
                color=PALETTE[i % len(PALETTE)],
                label=f"{names[i]} ({r.pairs} pairs)",
            )
        scatter.set_xlabel("model: cosine of the two words")
        scatter.set_ylabel("human similarity score")
        scatter.set_title("each pair")
        scatter.legend(loc="lower right", fontsize=8.5)
        save_figure(fig, out, dpi)
    return fig

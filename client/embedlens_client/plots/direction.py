"""`plot direction`: words projected on directions defined by word pairs.

The Embedding Projector's "custom projection": an axis `man:woman` is the direction
unit(woman) − unit(man), normalised; a word's coordinate is its unit vector's dot product with
that direction, measured from the pair's midpoint (so `man` is negative, `woman` positive,
and 0 means "neither more man-like nor more woman-like"). Two axes make a scatter; they are
not orthogonalised (their cosine is written on the figure), as in the Projector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..client import Client
from ._mpl import BLUE, GREY, ORANGE, new_figure, style
from .fetch import cosine, lookup_vectors, unit
from .labels import Label, place_labels

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class DirectionPlot:
    """What `plot direction` drew."""

    model: str
    axes: tuple[tuple[str, str], ...]  # (from, to) word pairs, one or two
    words: tuple[str, ...]
    coords: np.ndarray  # (len(words), len(axes)): position along each axis
    pole_coords: dict[str, tuple[float, ...]]  # the axis words themselves
    axes_cosine: float | None  # cosine between the two directions (None for one axis)
    figure: Figure | None = field(default=None, repr=False, compare=False)


def parse_axis(spec: str) -> tuple[str, str]:
    """'man:woman' -> ('man', 'woman')."""
    parts = spec.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ValueError(f"an axis is two words joined by ':', such as man:woman; got {spec!r}")
    return parts[0].strip(), parts[1].strip()


def plot_direction(
    client: Client,
    axes: Sequence[tuple[str, str]],
    words: Sequence[str],
    *,
    model: str | None = None,
    progress: bool = False,
) -> DirectionPlot:
    """Fetch the axis words and the words, project, and draw (1-D strip or 2-D scatter)."""
    axes = [tuple(a) for a in axes]  # type: ignore[misc]
    if not 1 <= len(axes) <= 2:
        raise ValueError(f"give one or two --axis FROM:TO, got {len(axes)}")
    words = list(dict.fromkeys(words))
    if not words:
        raise ValueError("give the words to project")
    poles = list(dict.fromkeys(w for pair in axes for w in pair))
    everything = list(dict.fromkeys(poles + words))
    info = client.info(model)
    vectors, _ = lookup_vectors(
        client, everything, model=model, progress=progress, label="fetching word vectors"
    )
    vec = dict(zip(everything, unit(vectors)))
    directions = [unit(vec[b] - vec[a]) for a, b in axes]
    midpoints = [(vec[a] + vec[b]) / 2 for a, b in axes]

    def project(w: str) -> tuple[float, ...]:
        return tuple(float((vec[w] - m) @ d) for d, m in zip(directions, midpoints))

    plot = DirectionPlot(
        model=info.name,
        axes=tuple((a, b) for a, b in axes),
        words=tuple(words),
        coords=np.array([project(w) for w in words]),
        pole_coords={w: project(w) for w in poles},
        axes_cosine=cosine(directions[0], directions[1]) if len(axes) == 2 else None,
    )
    with style():
        return replace(plot, figure=_draw(plot))


def axis_label(pair: tuple[str, str]) -> str:
    a, b = pair
    return f"← {a}        {a} → {b} direction        {b} →"


def _draw(p: DirectionPlot) -> Figure:
    word_style: dict[str, Any] = {"fontsize": 10, "zorder": 4}
    pole_style: dict[str, Any] = {"fontsize": 11, "fontweight": "bold", "zorder": 4}
    if len(p.axes) == 1:
        # A strip: x is the projection, y only spreads the words out (sorted, so rank reads
        # top to bottom from the `to` end).
        order = np.argsort(-p.coords[:, 0], kind="stable")
        n = len(p.words)
        fig = new_figure(8.0, max(3.0, 1.4 + 0.3 * n))
        ax = fig.subplots()
        ys = np.empty(n)
        ys[order] = np.arange(n)[::-1]
        ax.hlines(ys, 0, p.coords[:, 0], color="#dddddd", lw=1, zorder=1)
        colours = [ORANGE if x > 0 else BLUE for x in p.coords[:, 0]]
        ax.scatter(p.coords[:, 0], ys, c=colours, s=30, zorder=3)
        labels = [Label(x, y, w, word_style) for w, x, y in zip(p.words, p.coords[:, 0], ys)]
        for w, (x,) in p.pole_coords.items():
            ax.axvline(x, color=GREY, ls="--", lw=1, zorder=0)
            ax.annotate(
                w,
                (x, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                **pole_style,
            )
        ax.axvline(0, color="black", lw=0.8, zorder=0)
        ax.set_yticks([])
        ax.spines["left"].set_visible(False)
        ax.set_ylim(-0.8, n - 0.2)
        ax.set_xlabel(axis_label(p.axes[0]))
        ax.margins(x=0.12)
        a, b = p.axes[0]
        ax.set_title(f"words on the {a} → {b} direction (model {p.model}, unit vectors)", pad=22)
        place_labels(fig, ax, labels)
        return fig

    fig = new_figure(8.0, 7.2)
    ax = fig.subplots()
    ax.axhline(0, color="#bbbbbb", lw=0.8, zorder=0)
    ax.axvline(0, color="#bbbbbb", lw=0.8, zorder=0)
    ax.scatter(p.coords[:, 0], p.coords[:, 1], s=30, color="black", zorder=3)
    px = [c[0] for c in p.pole_coords.values()]
    py = [c[1] for c in p.pole_coords.values()]
    ax.scatter(px, py, s=60, marker="s", color=ORANGE, zorder=3)
    labels = [Label(pxy[0], pxy[1], w, pole_style, marker_pt=8) for w, pxy in p.pole_coords.items()]
    labels += [Label(x, y, w, word_style) for w, (x, y) in zip(p.words, p.coords)]
    ax.set_xlabel(axis_label(p.axes[0]))
    ax.set_ylabel(axis_label(p.axes[1]))
    ax.margins(0.12)
    ax.grid(True, color="#f0f0f0", zorder=0)
    (a, b), (c, d) = p.axes
    ax.set_title(
        f"words on the {a} → {b} and {c} → {d} directions (model {p.model}, unit vectors)\n"
        f"cos between the two directions = {p.axes_cosine:.3f} (not orthogonalised); "
        "squares: the axis words"
    )
    place_labels(fig, ax, labels)
    return fig

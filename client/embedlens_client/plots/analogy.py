"""`plot analogy`: the chapter's Figure 4.1 (king − man + woman ≈ queen) from real vectors.

Words are A B C D with A − B + C ≈ D (king man woman queen). Everything is drawn on unit
vectors, the geometry 3CosAdd works in, so the predicted point A − B + C is the direction whose
cosine with D is exactly the server's 3CosAdd score for D.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..client import Client, Neighbor
from ._mpl import BLUE, GREY, ORANGE, new_figure, style
from .fetch import cosine, lookup_vectors, pca_2d, unit
from .labels import Label, place_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PROJECTIONS = ("relations", "pca")
PREDICTED = "#7b3294"


@dataclass(frozen=True)
class AnalogyPlot:
    """What `plot analogy` drew: the numbers on the figure and where each word landed."""

    words: tuple[str, str, str, str]  # A, B, C, D with A − B + C ≈ D
    model: str
    projection: str
    axis_labels: tuple[str, str]
    points: dict[str, tuple[float, float]]  # the four words
    predicted: tuple[float, float]  # A − B + C
    context: dict[str, tuple[float, float]]  # neighbours drawn in grey
    cos_first: float  # cos(A − B, D − C): the B→A and C→D arrows
    cos_second: float  # cos(C − B, D − A): the B→C and A→D arrows
    cos_prediction: float  # cos(A − B + C, D)
    answers: tuple[Neighbor, ...]  # 3CosAdd, inputs excluded, best first
    answers_with_inputs: tuple[Neighbor, ...]  # 3CosAdd, inputs kept
    rank: int | None  # rank of D among `answers` (None: not in the top k)
    rank_with_inputs: int | None
    texts: tuple[str, ...]  # the lines of the number panel
    figure: Figure | None = field(default=None, repr=False, compare=False)


def _rank(answers: list[Neighbor], token: str) -> int | None:
    return next((i for i, n in enumerate(answers, 1) if n.token == token), None)


def _axes(
    words: np.ndarray, context: np.ndarray, projection: str, names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[str, str]]:
    """(centre, basis (2, d), axis labels); x along the second relation, y along the first."""
    a, b, c, d = words
    second = (c - b) + (d - a)  # man→woman and king→queen
    first = (a - b) + (d - c)  # man→king and woman→queen
    A, B, C, D = names
    if projection == "relations":
        x = unit(second)
        y = first - (first @ x) * x  # Gram–Schmidt: the plane the two relations span
        basis = np.stack([x, unit(y)])
        labels = (
            f"{B}→{C} and {A}→{D} direction",
            f"{B}→{A} and {C}→{D} direction (orthogonalised)",
        )
        return words.mean(axis=0), basis, labels
    everything = np.concatenate([words, context]) if len(context) else words
    _, basis, ratio = pca_2d(everything)
    # Orient the components like the chapter's figure: second relation right, first up.
    # Orient each component so the relation it carries most points its positive way.
    on_first = abs(basis[0] @ first) >= abs(basis[0] @ second)
    along = (first, second) if on_first else (second, first)
    basis = basis * np.array([1.0 if basis[i] @ along[i] >= 0 else -1.0 for i in (0, 1)])[:, None]
    labels = (f"PC1 ({ratio[0]:.0%} of variance)", f"PC2 ({ratio[1]:.0%} of variance)")
    return everything.mean(axis=0), basis, labels


def plot_analogy(
    client: Client,
    a: str,
    b: str,
    c: str,
    d: str | None = None,
    *,
    model: str | None = None,
    projection: str = "pca",
    neighbors: int = 3,
    k: int = 1000,
    progress: bool = False,
) -> AnalogyPlot:
    """Fetch A, B, C (and D; default: the 3CosAdd answer) and draw A − B + C ≈ D.

    projection "pca" fits PCA on the four words and their neighbours; "relations" projects on
    the plane of the two relation directions (the idealised view: arrows of one relation look
    parallel there by construction, and only the cosines tell how parallel they really are).
    neighbors: nearest whole words of each of the four drawn in grey for context.
    k: how deep to search for D's rank among the 3CosAdd answers.
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, got {projection!r}")
    if neighbors < 0:
        raise ValueError(f"neighbors must be 0 or more, got {neighbors}")
    info = client.info(model)
    if info.limits is not None:
        k = min(k, info.limits.max_k)
    lookup_vectors(client, [a, b, c], model=model)  # a clear NOT_FOUND before Analogy's
    query = [([a, c], [b])]
    answers = client.analogy_batch(query, k, exact=True, model=model)[0]
    kept = client.analogy_batch(query, k, exact=True, exclude_inputs=False, model=model)[0]
    if d is None:
        d = answers[0].token
    names = (a, b, c, d)
    vecs, _ = lookup_vectors(client, list(names), model=model, progress=progress)
    words = unit(vecs)
    A, B, C, D = words
    predicted = A - B + C

    context_tokens: list[str] = []
    if neighbors:
        lists = client.nearest_batch(
            list(names), neighbors, exact=True, whole_words_only=True, model=model
        )
        seen = {w.lower() for w in names}
        for ns in lists:
            for n in ns:
                if n.token not in seen:
                    seen.add(n.token)
                    context_tokens.append(n.token)
    context = (
        unit(lookup_vectors(client, context_tokens, model=model, progress=progress)[0])
        if context_tokens
        else np.zeros((0, words.shape[1]))
    )

    centre, basis, axis_labels = _axes(words, context, projection, names)

    def project(v: np.ndarray) -> tuple[float, float]:
        x, y = (v - centre) @ basis.T
        return float(x), float(y)

    rank = _rank(answers, d)
    rank_kept = _rank(kept, d)
    cos_pred = cosine(predicted, D)
    texts = _texts(
        names, cosine(A - B, D - C), cosine(C - B, D - A), cos_pred, answers, kept, rank, rank_kept
    )
    plot = AnalogyPlot(
        words=names,
        model=info.name,
        projection=projection,
        axis_labels=axis_labels,
        points={w: project(v) for w, v in zip(names, words)},
        predicted=project(predicted),
        context={t: project(v) for t, v in zip(context_tokens, context)},
        cos_first=cosine(A - B, D - C),
        cos_second=cosine(C - B, D - A),
        cos_prediction=cos_pred,
        answers=tuple(answers),
        answers_with_inputs=tuple(kept),
        rank=rank,
        rank_with_inputs=rank_kept,
        texts=texts,
    )
    with style():
        return replace(plot, figure=_draw(plot))


def _rank_text(token: str, rank: int | None, k: int) -> str:
    return f"{token} ranks {rank}" if rank is not None else f"{token} is not in the top {k}"


def _texts(
    names: tuple[str, str, str, str],
    cos_first: float,
    cos_second: float,
    cos_pred: float,
    answers: list[Neighbor],
    kept: list[Neighbor],
    rank: int | None,
    rank_kept: int | None,
) -> tuple[str, ...]:
    A, B, C, D = names
    top, top_kept = answers[0], kept[0]
    return (
        f"cos({A} − {B}, {D} − {C}) = {cos_first:.3f}   (orange arrows)",
        f"cos({C} − {B}, {D} − {A}) = {cos_second:.3f}   (blue arrows)",
        f"cos({A} − {B} + {C}, {D}) = {cos_pred:.3f}",
        f"3CosAdd answer, inputs excluded: {top.token} ({top.score:.3f}); "
        + _rank_text(D, rank, len(answers)),
        f"3CosAdd answer, inputs kept: {top_kept.token} ({top_kept.score:.3f}); "
        + _rank_text(D, rank_kept, len(kept)),
    )


def _arrow(ax: Axes, start: tuple[float, float], end: tuple[float, float], colour: str) -> None:
    ax.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={
            "arrowstyle": "-|>",
            "color": colour,
            "lw": 2.2,
            "shrinkA": 7,
            "shrinkB": 7,
            "mutation_scale": 16,
        },
        zorder=3,
    )


def _draw(p: AnalogyPlot) -> Figure:
    from matplotlib.lines import Line2D

    A, B, C, D = p.words
    pts = p.points
    fig = new_figure(8.0, 8.0)
    ax, panel = fig.subplots(2, 1, height_ratios=[5.6, 1.0])

    for x, y in p.context.values():
        ax.plot(x, y, "o", ms=4, color=GREY, alpha=0.7, zorder=1)
    _arrow(ax, pts[B], pts[A], ORANGE)
    _arrow(ax, pts[C], pts[D], ORANGE)
    _arrow(ax, pts[B], pts[C], BLUE)
    _arrow(ax, pts[A], pts[D], BLUE)
    px, py = p.predicted
    ax.plot([px, pts[D][0]], [py, pts[D][1]], ":", color=PREDICTED, lw=1.2, zorder=2)  # the miss
    ax.plot(px, py, "*", ms=15, color=PREDICTED, markeredgecolor="white", zorder=4)
    for w in p.words:
        ax.plot(*pts[w], "o", ms=8, color="black", zorder=4)

    ax.set_aspect("equal", adjustable="datalim")
    ax.margins(0.12)
    ax.set_xlabel(p.axis_labels[0])
    ax.set_ylabel(p.axis_labels[1])
    ax.grid(True, color="#eeeeee", zorder=0)
    how = (
        "projected on the plane of the two relation directions"
        if p.projection == "relations"
        else f"PCA of the 4 words and {len(p.context)} neighbours"
    )
    ax.set_title(f"{A} − {B} + {C} ≈ {D}\nmodel {p.model}, unit vectors, {how}")
    handles = [
        Line2D([], [], color=ORANGE, lw=2.2, label=f"{B}→{A}, {C}→{D}"),
        Line2D([], [], color=BLUE, lw=2.2, label=f"{B}→{C}, {A}→{D}"),
        Line2D([], [], marker="*", ms=12, ls="", color=PREDICTED, label=f"{A} − {B} + {C}"),
    ]
    if p.context:
        handles.append(
            Line2D([], [], marker="o", ms=4, ls="", color=GREY, label="nearest neighbours")
        )
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.09),
        ncol=2,
        frameon=False,
        handlelength=1.8,
        columnspacing=1.5,
    )

    panel.axis("off")
    panel.text(
        0.0,
        1.0,
        "\n".join(p.texts),
        va="top",
        ha="left",
        fontsize=9.5,
        family="DejaVu Sans Mono",
        transform=panel.transAxes,
    )

    word_style = {"fontsize": 13, "fontweight": "bold", "zorder": 5}
    labels = [Label(*pts[w], w, word_style, marker_pt=8, pad=1.3) for w in p.words]
    labels.append(
        Label(px, py, f"{A} − {B} + {C}", {"color": PREDICTED, "zorder": 5}, marker_pt=12)
    )
    labels += [
        Label(x, y, t, {"fontsize": 8, "color": "#666666", "zorder": 2.5})
        for t, (x, y) in p.context.items()
    ]
    arrows = [(pts[B], pts[A]), (pts[C], pts[D]), (pts[B], pts[C]), (pts[A], pts[D])]
    place_labels(fig, ax, labels, [*arrows, (p.predicted, pts[D])])
    return fig

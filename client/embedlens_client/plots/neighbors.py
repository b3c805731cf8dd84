"""`plot neighbors`: query words and their nearest neighbours on a 2-D map.

PCA always (linear: distances along the map mean something); t-SNE beside it when
scikit-learn is installed (it keeps neighbourhoods, not distances). Both run on unit vectors,
the geometry of cosine similarity, with fixed seeds and sign conventions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..client import Client
from ._mpl import PALETTE, new_figure, style
from .fetch import lookup_vectors, pca_2d, unit
from .labels import Label, place_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SEED = 0


@dataclass(frozen=True)
class NeighborsPlot:
    """What `plot neighbors` drew."""

    model: str
    queries: tuple[str, ...]
    tokens: tuple[str, ...]  # every word on the map: the queries first, then neighbours
    group: tuple[int, ...]  # for each token, the index of the query whose colour it wears
    scores: dict[str, dict[str, float]]  # query -> neighbour -> cosine (from Nearest)
    pca: np.ndarray  # (len(tokens), 2)
    pca_variance: tuple[float, float]  # explained variance ratio of the two components
    tsne: np.ndarray | None  # (len(tokens), 2), None without scikit-learn or when off
    figure: Figure | None = field(default=None, repr=False, compare=False)


def tsne_available() -> bool:
    try:
        import sklearn.manifold  # noqa: F401
    except ImportError:
        return False
    return True


def _tsne(x: np.ndarray) -> np.ndarray:
    from sklearn.manifold import TSNE

    # perplexity must stay below the number of points; small maps need a small one.
    perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
    model = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        metric="cosine",
        random_state=SEED,
        method="exact",  # Barnes–Hut buys nothing for a few hundred points and is less stable
        max_iter=1000,
    )
    return np.asarray(model.fit_transform(x), dtype=np.float64)


def plot_neighbors(
    client: Client,
    words: Sequence[str],
    *,
    k: int = 8,
    model: str | None = None,
    whole_words_only: bool = True,
    tsne: bool | None = None,
    progress: bool = False,
) -> NeighborsPlot:
    """Fetch each word's k nearest neighbours and their vectors, and map them in 2-D.

    whole_words_only leaves `##` word pieces out of the neighbours (they clutter the map).
    tsne: None draws the t-SNE panel when scikit-learn is installed; True requires it.
    A neighbour of several queries wears the colour of the query it is closest to.
    """
    queries = list(dict.fromkeys(words))
    if not queries:
        raise ValueError("give at least one word")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if tsne and not tsne_available():
        raise ValueError("t-SNE needs scikit-learn: pip install scikit-learn")
    info = client.info(model)
    lookup_vectors(client, queries, model=model)  # unknown words: NOT_FOUND naming them
    lists = client.nearest_batch(
        queries, k, exact=True, whole_words_only=whole_words_only, model=model
    )
    scores = {q: {n.token: n.score for n in ns} for q, ns in zip(queries, lists)}
    owner: dict[str, int] = {q: i for i, q in enumerate(queries)}
    best: dict[str, float] = {}
    for i, q in enumerate(queries):
        for token, score in scores[q].items():
            if token in queries:
                continue
            if score > best.get(token, -2.0):
                best[token] = score
                owner[token] = i
    tokens = queries + [t for t in owner if t not in queries]
    vectors, _ = lookup_vectors(
        client, tokens, model=model, progress=progress, label="fetching neighbour vectors"
    )
    x = unit(vectors)
    if len(tokens) < 3:
        raise ValueError("a 2-D map needs at least 3 words; raise k")
    coords, _, ratio = pca_2d(x)
    use_tsne = tsne_available() if tsne is None else tsne
    plot = NeighborsPlot(
        model=info.name,
        queries=tuple(queries),
        tokens=tuple(tokens),
        group=tuple(owner[t] for t in tokens),
        scores=scores,
        pca=coords,
        pca_variance=(float(ratio[0]), float(ratio[1])),
        tsne=_tsne(x) if use_tsne and len(tokens) > 4 else None,
    )
    with style():
        return replace(plot, figure=_draw(plot))


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _panel(ax: Axes, p: NeighborsPlot, xy: np.ndarray, title: str) -> list[Label]:
    nq = len(p.queries)
    for i, (token, g) in enumerate(zip(p.tokens, p.group)):
        is_query = i < nq
        ax.plot(
            *xy[i],
            marker="D" if is_query else "o",
            ms=9 if is_query else 5,
            color=_colour(g),
            markeredgecolor="black" if is_query else "none",
            ls="",
            zorder=3 if is_query else 2,
            label=token if is_query else None,
        )
    ax.set_title(title)
    ax.margins(0.1)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right"):
        ax.spines[side].set_visible(True)
    return [
        Label(
            float(xy[i][0]),
            float(xy[i][1]),
            token,
            {
                "fontsize": 11 if i < nq else 8.5,
                "fontweight": "bold" if i < nq else "normal",
                "color": "black" if i < nq else _colour(g),
                "zorder": 4,
            },
            marker_pt=9 if i < nq else 5,
        )
        for i, (token, g) in enumerate(zip(p.tokens, p.group))
    ]


def _draw(p: NeighborsPlot) -> Figure:
    panels = 2 if p.tsne is not None else 1
    fig = new_figure(7.5 * panels, 7.0)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    v1, v2 = p.pca_variance
    k = max(len(s) for s in p.scores.values())
    labels = [(axes[0], _panel(axes[0], p, p.pca, f"PCA ({v1:.0%} + {v2:.0%} of the variance)"))]
    if p.tsne is not None:
        labels.append((axes[1], _panel(axes[1], p, p.tsne, "t-SNE (cosine, seed 0)")))
    fig.suptitle(
        f"{len(p.queries)} words and their {k} nearest neighbours (model {p.model}, "
        f"cosine on unit vectors); colour = the query a word is nearest to"
    )
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="outside lower center",
        ncol=min(len(names), 8),
        title="query",
        frameon=False,
    )
    for ax, labs in labels:
        place_labels(fig, ax, labs)
    return fig

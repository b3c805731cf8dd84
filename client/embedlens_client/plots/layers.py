"""`plot layers`: one token in several texts, followed through the residual stream.

Top panel: the cosine between the token's vectors in the texts at every stream point, from
`embed` (the row of E: the same for every text, cosine 1) through `blocks.{i}.resid_pre` to
`final`. Bottom panel: how much attention and the MLP wrote at each block (norms of `attn_out`
and `mlp_out`), the additions x ← x + f(x) of the chapter.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from ..client import Client, ContextualResult
from ._mpl import PALETTE, new_figure, style
from .fetch import cosine

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NEAREST = 3  # nearest rows of E shown for the token's final vector
# Lines are pairs of texts; keep them apart from the per-text colours of the bars.
PAIR_COLOURS = ("#000000", "#cc79a7", "#8c8c8c", "#56b4e9", "#d55e00")


@dataclass(frozen=True)
class LayersPlot:
    """What `plot layers` drew."""

    token: str
    texts: tuple[str, ...]
    model: str
    positions: tuple[int, ...]  # index of the token in each text's tokens
    points: tuple[str, ...]  # embed, blocks.0.resid_pre, ..., final
    ticks: tuple[str, ...]  # the x tick labels for `points`
    cosines: dict[tuple[int, int], tuple[float, ...]]  # (text i, text j) -> one per point
    attn_norms: tuple[tuple[float, ...], ...]  # [text][block] ‖attn_out‖
    mlp_norms: tuple[tuple[float, ...], ...]  # [text][block] ‖mlp_out‖
    final_nearest: tuple[tuple[str, ...], ...]  # [text] nearest tokens of E to `final`
    texts_drawn: tuple[str, ...]  # the numbers written on the figure
    figure: Figure | None = field(default=None, repr=False, compare=False)


def _position(result: ContextualResult, token: str, occurrence: int, n: int) -> int:
    try:
        return result.position(token, occurrence)
    except ValueError:
        pieces = " ".join(t.text for t in result.tokens)
        raise ValueError(
            f"token {token!r} (occurrence {occurrence}) is not a token of text {n}; "
            f"its tokens are: {pieces}"
        ) from None


def plot_layers(
    client: Client,
    token: str,
    texts: Sequence[str],
    *,
    occurrence: int = 0,
    model: str | None = None,
) -> LayersPlot:
    """Fetch the residual stream of `token` in each text and draw how it drifts apart."""
    texts = list(texts)
    if len(texts) < 2:
        raise ValueError(f"give at least two texts to compare, got {len(texts)}")
    info = client.info(model)
    if info.transformer is None:
        raise ValueError(f"model {info.name!r} has no transformer: it serves static vectors only")
    n_layers = info.transformer.n_layers
    results = client.contextual_embed(
        texts, points=["embed", "resid_pre", "attn_out", "mlp_out", "final"], model=model
    )
    positions = tuple(_position(r, token, occurrence, i + 1) for i, r in enumerate(results))
    finals = client.contextual_embed(texts, points=["final"], nearest_k=NEAREST, model=model)

    points = ("embed", *(f"blocks.{i}.resid_pre" for i in range(n_layers)), "final")
    ticks = ("embed", *(f"{i}" for i in range(n_layers)), "final")

    def vec(t: int, name: str) -> np.ndarray:
        return results[t].activations[name][positions[t]]

    cosines = {
        (i, j): tuple(cosine(vec(i, p), vec(j, p)) for p in points)
        for i, j in itertools.combinations(range(len(texts)), 2)
    }
    attn = tuple(
        tuple(float(np.linalg.norm(vec(t, f"blocks.{b}.attn_out"))) for b in range(n_layers))
        for t in range(len(texts))
    )
    mlp = tuple(
        tuple(float(np.linalg.norm(vec(t, f"blocks.{b}.mlp_out"))) for b in range(n_layers))
        for t in range(len(texts))
    )
    nearest = tuple(
        tuple(n.token for n in f.nearest["final"][pos]) for f, pos in zip(finals, positions)
    )
    drawn: list[str] = []
    if len(cosines) == 1:  # with more lines the numbers would sit on top of each other
        drawn = [f"{c:.2f}" for series in cosines.values() for c in series]
    plot = LayersPlot(
        token=token,
        texts=tuple(texts),
        model=info.name,
        positions=positions,
        points=points,
        ticks=ticks,
        cosines=cosines,
        attn_norms=attn,
        mlp_norms=mlp,
        final_nearest=nearest,
        texts_drawn=tuple(drawn),
    )
    with style():
        return replace(plot, figure=_draw(plot))


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _draw(p: LayersPlot) -> Figure:
    n_texts = len(p.texts)
    n_blocks = len(p.attn_norms[0])
    fig = new_figure(9.0, 8.2)
    top, bottom = fig.subplots(2, 1, height_ratios=[1.15, 1.0])

    x = np.arange(len(p.points))
    for n, ((i, j), series) in enumerate(p.cosines.items()):
        colour = PAIR_COLOURS[n % len(PAIR_COLOURS)]
        marker = "osD^v<>p"[n % 8]
        top.plot(
            x,
            series,
            "-",
            marker=marker,
            color=colour,
            lw=2,
            ms=6,
            label=f"text {i + 1} vs text {j + 1}",
        )
        if len(p.cosines) == 1:
            for xi, c in zip(x, series):
                top.annotate(
                    f"{c:.2f}",
                    (xi, c),
                    xytext=(0, 7),
                    textcoords="offset points",
                    ha="center",
                    fontsize=8.5,
                    color=colour,
                )
    top.set_xticks(x, p.ticks)
    top.set_xlabel("residual-stream point: embed = row of E, i = resid_pre of block i, final")
    top.set_ylabel("cosine similarity")
    low = min(min(s) for s in p.cosines.values())
    # Zoom to the data (in steps of 0.1) so that a drift from 1.0 to 0.8 is visible.
    top.set_ylim(min(0.9, np.floor((low - 0.05) * 10) / 10), 1.06)
    top.set_xlim(-0.4, len(p.points) - 0.6)
    top.grid(True, axis="y", color="#eeeeee")
    top.set_title(
        f"“{p.token}” in {n_texts} texts: the same row of E, pulled apart layer by layer "
        f"(model {p.model})"
    )
    legend_texts = [f"text {t + 1}: “{_short(s)}”" for t, s in enumerate(p.texts)]
    if len(p.cosines) > 1:
        top.legend(loc="lower left", fontsize=8.5)

    width = 0.8 / (2 * n_texts)
    blocks = np.arange(n_blocks)
    for t in range(n_texts):
        colour = PALETTE[t % len(PALETTE)]
        base = blocks - 0.4 + width * (2 * t)
        bottom.bar(
            base + width / 2,
            p.attn_norms[t],
            width,
            color=colour,
            label=f"‖attn_out‖, text {t + 1}",
        )
        bottom.bar(
            base + 1.5 * width,
            p.mlp_norms[t],
            width,
            color=colour,
            alpha=0.45,
            hatch="//",
            edgecolor=colour,
            label=f"‖mlp_out‖, text {t + 1}",
        )
    bottom.set_xticks(blocks, [f"block {b}" for b in blocks])
    bottom.set_ylabel(f"norm of what the block wrote at “{p.token}”")
    bottom.set_title("what attention (solid) and the MLP (hatched) added to the stream")
    bottom.grid(True, axis="y", color="#eeeeee")
    bottom.legend(ncol=n_texts, fontsize=8.5, loc="upper left")
    near = "; ".join(f"text {t + 1}: {', '.join(ns)}" for t, ns in enumerate(p.final_nearest))
    fig.text(
        0.01,
        0.005,
        "\n".join([*legend_texts, f"nearest rows of E to the final vector — {near}"]),
        fontsize=9,
        va="bottom",
        ha="left",
    )
    footer = 0.012 + 0.024 * (n_texts + 1)  # room for the lines of fig.text above
    fig.get_layout_engine().set(rect=(0, footer, 1, 1 - footer))  # type: ignore[union-attr,call-arg]
    return fig

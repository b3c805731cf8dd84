"""Word labels next to their points without covering each other (a small greedy placer).

A scatter of words is only readable when labels do not overlap. adjustText does this
iteratively but is one more dependency; a greedy pass over sixteen candidate positions per label,
measured with the real renderer after layout, is deterministic and enough for the few dozen
labels these figures carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.transforms import Bbox

# (dx, dy) in points, then horizontal and vertical alignment; right of the point first.
Position = tuple[
    float, float, Literal["left", "center", "right"], Literal["bottom", "center", "top"]
]
_CANDIDATES: tuple[Position, ...] = (
    (5, 3, "left", "bottom"),
    (5, -3, "left", "top"),
    (-5, 3, "right", "bottom"),
    (-5, -3, "right", "top"),
    (0, 6, "center", "bottom"),
    (0, -6, "center", "top"),
    (8, 0, "left", "center"),
    (-8, 0, "right", "center"),
)
_FAR: tuple[Position, ...] = tuple((2.4 * dx, 2.4 * dy, ha, va) for dx, dy, ha, va in _CANDIDATES)


@dataclass
class Label:
    x: float
    y: float
    text: str
    style: dict[str, Any] = field(default_factory=dict)
    marker_pt: float = 5.0  # size of the point's marker, kept clear of other labels
    pad: float = 1.0  # scales the label's distance from its point


def _overlap(a: Bbox, b: Bbox) -> float:
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box: Bbox, frame: Bbox) -> float:
    """Area of box that falls outside frame."""
    inside = _overlap(box, frame)
    return box.width * box.height - inside


def place_labels(
    fig: Figure,
    ax: Axes,
    labels: list[Label],
    segments: Sequence[tuple[tuple[float, float], tuple[float, float]]] = (),
) -> None:
    """Annotate each label beside its point, choosing the least-crowded of 16 positions.

    Call after the axes limits are final; the figure's layout is frozen so that what was
    measured is what gets saved. Labels earlier in the list are placed first (give queries
    priority by putting them first).
    """
    from matplotlib.transforms import Bbox

    fig.canvas.draw()  # runs the layout, so positions measured below are final
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    scale = fig.dpi / 72.0
    markers = []
    for lab in labels:
        px, py = ax.transData.transform((lab.x, lab.y))
        half = lab.marker_pt * scale / 2
        markers.append(Bbox.from_extents(px - half, py - half, px + half, py + half))
    # Lines (arrows) to keep clear, as a chain of small boxes along each one.
    for (x0, y0), (x1, y1) in segments:
        a = ax.transData.transform((x0, y0))
        b = ax.transData.transform((x1, y1))
        steps = max(2, int(((b - a) ** 2).sum() ** 0.5 / (4 * scale)))
        for t in range(steps + 1):
            px, py = a + (b - a) * t / steps
            markers.append(Bbox.from_extents(px - scale, py - scale, px + scale, py + scale))
    placed: list[Bbox] = []
    for i, lab in enumerate(labels):
        others = markers[:i] + markers[i + 1 :]  # its own marker does not count
        text = ax.annotate(
            lab.text, (lab.x, lab.y), xytext=(0, 0), textcoords="offset points", **lab.style
        )
        # Start just outside the marker; a big marker pushes its label further out.
        reach = lab.pad * max(1.0, lab.marker_pt / 5.0)
        best_cost, best_box, best_pos = float("inf"), None, _CANDIDATES[0]
        for pos in _CANDIDATES + _FAR:
            dx, dy, ha, va = pos
            text.set_position((dx * reach, dy * reach))
            text.set_horizontalalignment(ha)
            text.set_verticalalignment(va)
            box = text.get_window_extent(renderer)
            cost = (
                sum(_overlap(box, other) for other in placed)
                + sum(_overlap(box, m) for m in others)
                + 4 * _outside(box, frame)
            )
            if cost < best_cost:
                best_cost, best_box, best_pos = cost, box, pos
            if cost == 0:
                break
        dx, dy, ha, va = best_pos
        if best_pos in _FAR:
            # Far from its point: a thin leader line says which point the label names.
            text.remove()
            colour = lab.style.get("color", "#555555")
            leader = {"arrowstyle": "-", "color": colour, "lw": 0.6, "shrinkA": 1, "shrinkB": 2}
            text = ax.annotate(
                lab.text,
                (lab.x, lab.y),
                xytext=(0, 0),
                textcoords="offset points",
                arrowprops=leader,
                **lab.style,
            )
        text.set_position((dx * reach, dy * reach))
        text.set_horizontalalignment(ha)
        text.set_verticalalignment(va)
        if best_box is not None:
            placed.append(best_box)

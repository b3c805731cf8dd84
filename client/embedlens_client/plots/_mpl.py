"""matplotlib, imported lazily, drawn with Agg and saved byte-for-byte reproducibly.

matplotlib is the client's optional `plot` extra, so nothing here imports it at module load.
Figures are built with `matplotlib.figure.Figure` and an Agg canvas, never pyplot: no global
state, no GUI backend, safe in threads and notebooks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTALL_HINT = (
    "plots need matplotlib, the client's optional 'plot' extra: "
    "pip install 'embedlens-client[plot]' (or ./client[plot], or 'embedlens[plot]')"
)

FORMATS = (".png", ".svg")

# The chapter's Figure 4.1 colours: the first relation orange, the second blue.
ORANGE = "#e66101"
BLUE = "#2166ac"
GREY = "#8c8c8c"
# matplotlib's tab10 without its grey: ten hues that stay apart even in small markers.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)

# rcParams that make output reproducible and legible; applied per figure, never globally.
_RC: dict[str, Any] = {
    "svg.hashsalt": "embedlens",  # clip-path ids come from this salt, not from random state
    "svg.fonttype": "path",  # glyphs as paths: the SVG looks the same without the fonts
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "figure.dpi": 150,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


class PlotDependencyError(ImportError):
    """matplotlib (the `plot` extra) is not installed."""


def require_matplotlib() -> Any:
    """Import matplotlib or raise PlotDependencyError saying how to install it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotDependencyError(INSTALL_HINT) from exc
    return matplotlib


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The rcParams of every embedlens figure, for the duration of drawing and saving."""
    mpl = require_matplotlib()
    with mpl.rc_context(_RC):
        yield


def new_figure(width: float, height: float) -> Figure:
    """A Figure with an Agg canvas attached (no pyplot, no GUI backend)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_out_path(out: str | Path) -> Path:
    """The output path; ValueError unless it ends in .png or .svg."""
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"--out must end in .png or .svg (the format), got {str(out)!r}")
    return path


def save_figure(fig: Figure, out: str | Path, dpi: float | None = None) -> Path:
    """Write fig as PNG or SVG (from the extension), without dates or random ids.

    dpi sets the PNG's resolution (default 150); an SVG is resolution-free.
    """
    path = check_out_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    # PNG would carry the matplotlib version, SVG the version and a date: dropped, so the same
    # inputs give the same bytes, whichever matplotlib drew them.
    metadata: dict[str, Any] = (
        {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    )
    with style():
        fig.savefig(path, format=fmt, metadata=metadata, dpi=dpi or "figure")
    return path


def figure_texts(fig: Figure) -> list[str]:
    """Every string drawn on fig: titles, labels, annotations, legend and tick labels."""
    from matplotlib.text import Text

    return [t.get_text() for t in fig.findobj(Text) if t.get_visible() and t.get_text()]

"""The chapter's pictures, drawn client-side from data fetched over the API.

matplotlib is the optional `plot` extra (`pip install 'embedlens-client[plot]'`); importing this
package does not need it, drawing does (PlotDependencyError says how to install it).

    from embedlens_client import Client
    from embedlens_client.plots import plot_analogy, save_figure

    with Client("localhost:50051") as c:
        p = plot_analogy(c, "king", "man", "woman", "queen")
        save_figure(p.figure, "analogy.svg")
        p.cos_prediction, p.rank          # the numbers written on the figure
"""

from ._mpl import PlotDependencyError, figure_texts, save_figure
from .analogy import AnalogyPlot, plot_analogy
from .direction import DirectionPlot, plot_direction
from .layers import LayersPlot, plot_layers
from .neighbors import NeighborsPlot, plot_neighbors

__all__ = [
    "AnalogyPlot",
    "DirectionPlot",
    "LayersPlot",
    "NeighborsPlot",
    "PlotDependencyError",
    "figure_texts",
    "plot_analogy",
    "plot_direction",
    "plot_layers",
    "plot_neighbors",
    "save_figure",
]

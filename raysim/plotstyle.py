"""One plotting style for every raysim figure (run plots, compare, stress, tuning reports).

* :func:`algo_style` gives each algorithm (or stress variant label) a colour, a line style and
  a marker that differ from every other built-in algorithm and stay the same in every figure,
  so that ``flops`` never hides under ``flops-ent`` nor ``fedavg-prune`` under ``fedavg``,
  also in greyscale print. Unknown labels get a stable style from a hash of the label.
* :func:`figure` opens a figure under the shared rcParams (:data:`RC`): readable fonts, light
  grid, no top/right spines, vector-friendly fonts in PDF/SVG.
* :func:`save` writes a figure in ``png``, ``pdf`` or ``svg`` (``run.plot_format``) and closes it.
* :func:`text_color` picks black or white text for a colour by its luminance (heatmap cells).
"""

from __future__ import annotations

import functools
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

#: file formats a figure can be written in (``run.plot_format`` and the --plot-format options)
PLOT_FORMATS = ("png", "pdf", "svg")

#: Okabe-Ito colour-blind safe palette (yellow darkened for white paper), then four more distinct colours
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#882255",
          "#7F7F7F", "#44AA99", "#B8A000"]
LINESTYLES: list[Any] = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h"]

#: every built-in algorithm, in a fixed order: position i gets COLORS[i], LINESTYLES[i % 6],
#: MARKERS[i]; families that are easy to confuse (flops / flops-ent, fedavg / fedavg-prune)
#: sit next to each other and therefore differ in all three
KNOWN = ["flops", "flops-ent", "flops-pa", "flops-pa-ent", "fedavg", "fedavg-prune", "fed-ht", "fediter-ht",
         "fedprox", "ser", "fedeba"]

#: shared rcParams: publication defaults that read well at column width
RC: dict[str, Any] = {
    "figure.dpi": 110,
    "savefig.dpi": 200,
    "savefig.bbox": "tight",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.framealpha": 0.85,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.5,
    "lines.markersize": 4.5,
    "pdf.fonttype": 42,      # TrueType in PDF: editable text, accepted by publishers
    "ps.fonttype": 42,
    "svg.fonttype": "none",  # text stays text in SVG
}


def algo_style(name: str) -> dict[str, Any]:
    """``color``, ``linestyle`` and ``marker`` of an algorithm / variant label (stable across figures)."""
    if name in KNOWN:
        i = KNOWN.index(name)
        return {"color": COLORS[i % len(COLORS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                "marker": MARKERS[i % len(MARKERS)]}
    h = zlib.crc32(name.encode())
    return {"color": COLORS[h % len(COLORS)], "linestyle": LINESTYLES[(h // 7) % len(LINESTYLES)],
            "marker": MARKERS[(h // 49) % len(MARKERS)]}


def markevery(n_points: int, n_markers: int = 10, index: int = 0, of: int = 1) -> Any:
    """Marker spacing so that a curve of ``n_points`` shows about ``n_markers`` markers; curve
    ``index`` of ``of`` curves on one axis gets its markers shifted so that they do not sit on
    top of the other curves' markers."""
    k = max(1, n_points // n_markers)
    return (index * k // max(of, 1), k) if of > 1 else k


@contextmanager
def style() -> Iterator[None]:
    """The shared rcParams for the figures drawn inside the block."""
    with plt.rc_context(RC):
        yield


def styled(fn):
    """Decorator: the whole plotting function runs under the shared rcParams."""
    @functools.wraps(fn)
    def wrap(*args: Any, **kwargs: Any):
        with style():
            return fn(*args, **kwargs)
    return wrap


def figure(*args: Any, **kwargs: Any):
    """``plt.subplots`` under the shared style (the rcParams that matter at draw time are applied)."""
    with style():
        return plt.subplots(*args, **kwargs)


def check_format(fmt: str, where: str = "plot_format") -> str:
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        from raysim.config import ConfigError

        raise ConfigError(f"{where} = {fmt!r}: must be one of {', '.join(PLOT_FORMATS)}")
    return fmt


def save(fig, path: str | Path, fmt: str = "png", close: bool = True) -> Path:
    """Write ``fig`` as ``path`` with the suffix of ``fmt`` (png, pdf or svg); returns the path."""
    fmt = check_format(fmt)
    path = Path(path).with_suffix("." + fmt)
    with style():
        fig.savefig(path, format=fmt)
    if close:
        plt.close(fig)
    return path


def luminance(color: Any) -> float:
    """Relative luminance (WCAG) of a matplotlib colour, 0 (black) to 1 (white)."""
    def lin(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (lin(c) for c in to_rgb(color))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def text_color(background: Any) -> str:
    """Black on light backgrounds, white on dark ones (contrast by luminance)."""
    return "black" if luminance(background) > 0.179 else "white"

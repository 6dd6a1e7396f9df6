"""One look for every figure, and byte-identical files from the same input.

Agg backend, DejaVu Sans (shipped with matplotlib) everywhere, a fixed palette, no timestamps or
version strings in the written files (PDF CreationDate/Producer, PNG Software), a fixed SVG hash salt.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import transforms  # noqa: E402

from smoothnet.io import atomic_write_bytes  # noqa: E402

FONT = "DejaVu Sans"
DPI = 150
# Colour-blind-safe palette (seaborn "colorblind"), fixed by role so a series keeps its colour everywhere.
COLORS = {
    "reproduced": "#0173b2",
    "published": "#222222",
    "improved": ("#de8f05", "#029e73", "#cc78bc", "#ca9161"),
    "dp": "#0173b2",
    "non_dp": "#a3a3a3",
    "literature": ("#d55e00", "#949494", "#56b4e9", "#ece133", "#fbafe4", "#029e73", "#cc78bc", "#ca9161"),
    "val": "#0173b2",
    "test": "#de8f05",
    "epsilon": "#cc3311",
}
MARKERS = ("s", "D", "^", "v", "P", "X", "h", "<", ">", "p")
BANNER_COLOR = "#b00020"
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": "smoothnet report"}
PNG_METADATA = {"Software": None}


def apply_style() -> None:
    """Set the shared seaborn theme and the rcParams that make output deterministic."""
    sns.set_theme(context="paper", style="whitegrid", font=FONT)
    matplotlib.rcParams.update(
        {
            "font.family": FONT,
            "font.sans-serif": [FONT],
            "mathtext.fontset": "dejavusans",
            "font.size": 9,
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "legend.fontsize": 8,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "svg.hashsalt": "smoothnet-report",
            "pdf.fonttype": 3,  # Type 42 embedding (fontTools subsetting) costs ~1 s per PDF font
            "axes.unicode_minus": False,
            "path.simplify": False,
        }
    )


def new_figure(width: float, height: float, **kwargs):
    """A figure with the shared style applied (``plt.subplots`` arguments)."""
    apply_style()
    return plt.subplots(figsize=(width, height), **kwargs)


def finish_figure(
    fig, title: str, footer: list[str], banner: str | None = None, width_chars: int = 120, tight: bool = True
) -> None:
    """Lay out ``fig`` (``tight``: tight_layout; off when the caller laid it out), then put the title (and the
    red banner of non-results) above it and a wrapped footer (records, metric, missing runs) below it,
    outside the axes so they never cover data."""
    if tight:
        fig.tight_layout()
    fig.suptitle(title, y=1.0, va="bottom", fontsize=11)
    if banner:
        above = transforms.offset_copy(fig.transFigure, fig=fig, y=16, units="points")
        fig.text(
            0.5,
            1.0,
            banner,
            transform=above,
            ha="center",
            va="bottom",
            color=BANNER_COLOR,
            fontsize=12,
            fontweight="bold",
        )
    wrapped = []
    for line in footer:
        wrapped.extend(textwrap.wrap(line, width_chars, break_on_hyphens=False) or [""])
    below = transforms.offset_copy(fig.transFigure, fig=fig, y=-6, units="points")
    fig.text(0.0, 0.0, "\n".join(wrapped), transform=below, ha="left", va="top", fontsize=7, color="#333333")


def save_figure(fig, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` atomically with fixed metadata; close the figure."""
    paths = []
    bbox = "tight"
    for fmt, metadata in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
        buffer = io.BytesIO()
        fig.savefig(buffer, format=fmt, metadata=metadata, bbox_inches=bbox, pad_inches=0.15)
        # The PNG render laid the figure out: reuse its tight box instead of a layout draw for the PDF.
        bbox = fig.get_tightbbox(fig.canvas.get_renderer()).padded(0.15)
        path = Path(out_dir) / f"{stem}.{fmt}"
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    plt.close(fig)
    return paths

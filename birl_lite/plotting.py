"""The few figure helpers the chapters share, so that every figure has one style."""

from __future__ import annotations

import matplotlib as mpl

__all__ = ["use_book_style", "BOOK_COLORS"]

#: Colour cycle of the book (colour-blind friendly, Okabe-Ito).
BOOK_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


def use_book_style() -> None:
    """Set matplotlib's rcParams to the book's style (small PNG figures, readable fonts, grids)."""
    mpl.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 90,
            "savefig.dpi": 90,
            "figure.autolayout": True,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.prop_cycle": mpl.cycler(color=BOOK_COLORS),
            "font.size": 10,
            "axes.titlesize": 10,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "image.cmap": "viridis",
        }
    )

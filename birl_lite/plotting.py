"""The few figure helpers the chapters share, so that every figure has one style."""

from __future__ import annotations

import matplotlib as mpl
import numpy as np

from ._validation import ArrayLike

__all__ = ["use_book_style", "BOOK_COLORS", "confidence_band", "paired_difference"]

# two-sided 95% quantiles of Student's t with 1..30 degrees of freedom
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

#: Colour cycle of the book (colour-blind friendly, Okabe-Ito).
BOOK_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")


#: Screen resolution of the book's figures: a figure of ``w`` inches is ``100 w`` CSS pixels
#: wide on the page (so 10 pt text reads at about 10 pt), sent at twice that (retina) resolution.
_SCREEN_DPI = 100


def use_book_style() -> None:
    """Set matplotlib's rcParams to the book's style (sharp PNG figures, readable fonts, grids).

    A figure is drawn at 100 pixels per inch on the page, so its default 7 x 3.9 in
    is 700 px wide, within the book's content column, and fonts keep their point size. In a
    Jupyter kernel, figures shown inline are sent as PNGs at twice that resolution with their
    display size (IPython's "retina" format), sharp on high-density screens; ``savefig`` writes
    200 dpi.
    """
    mpl.rcParams.update(
        {
            "figure.figsize": (7.0, 3.9),
            "figure.dpi": _SCREEN_DPI,
            "savefig.dpi": 2 * _SCREEN_DPI,
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
    _send_inline_figures_at_twice_the_resolution()


def _send_inline_figures_at_twice_the_resolution() -> None:
    """In an IPython kernel, select the inline backend's "retina" PNG format (no-op elsewhere)."""
    try:
        from IPython import get_ipython
        from matplotlib_inline.config import InlineBackend
    except ImportError:  # not in IPython, or an old IPython without matplotlib_inline
        return
    if get_ipython() is None:
        return
    # The backend's configuration object: setting it re-registers the PNG formatter now, and the
    # backend reads it again if it is configured later (on the first figure).
    InlineBackend.instance().figure_formats = {"retina"}


def confidence_band(samples: ArrayLike, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% Student-t confidence interval across ``axis`` (the seeds).

    Args:
        samples: array with one row per seed along ``axis`` (e.g. ``[n_seeds, n_points]``).
        axis: the seed axis.

    Returns:
        ``(mean, half)``; the band is ``mean +- half``. With one seed, ``half`` is zero. Beyond
        30 degrees of freedom the quantile for 30 (2.042, slightly conservative) is used.
    """
    a = np.asarray(samples, dtype=float)
    n = a.shape[axis]
    mean = a.mean(axis=axis)
    if n < 2:
        return mean, np.zeros_like(mean)
    t = _T95[min(n - 1, len(_T95)) - 1]
    return mean, t * a.std(axis=axis, ddof=1) / np.sqrt(n)


def paired_difference(a: ArrayLike, b: ArrayLike) -> tuple[float, float, int, int]:
    """A paired comparison of two methods run on the same seeds: ``a[i] - b[i]``.

    Args:
        a, b: one value per seed ``[n]``, in the same seed order.

    Returns:
        ``(mean, half, wins, n)``: the mean difference, the half-width of its 95% Student-t
        interval, the number of seeds where ``a > b``, and ``n``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-D with one value per seed, got {a.shape}, {b.shape}")
    mean, half = confidence_band(a - b)
    return float(mean), float(half), int((a > b).sum()), len(a)

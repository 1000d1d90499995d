"""Timeline plots of per-frame predictions (``affbench predict --plot``): one PNG per video.

One panel per kind of output, all on the video's time axis: AU presence probabilities and AU
intensities as heat maps (one row per AU, blank where no face was found), expression class
probabilities as lines with the most probable class marked along the top, and valence/arousal as
lines on [-1, 1].
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from affbench.runtime.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes

PANEL_TITLES = {
    "au-detection": "AU presence probability",
    "au-intensity": "AU intensity (0-5)",
    "expression": "expression probability",
    "va": "valence / arousal",
}


def plot_timeline(table: pd.DataFrame, groups: Mapping[str, Sequence[Sequence[str]]], path: str | os.PathLike,
                  *, title: str = "") -> Path:
    """Write the timeline PNG of one video's rows.

    ``groups`` maps a task kind to lists of columns (one list per model task of that kind); each
    list becomes one panel.
    """
    from affbench.reporting.plots import require_pyplot

    plt = require_pyplot()
    from mpl_toolkits.axes_grid1 import make_axes_locatable
    panels = [(kind, list(columns)) for kind in PANEL_TITLES for columns in groups.get(kind, []) if columns]
    if not panels:
        raise ValueError("nothing to plot: no prediction columns")
    time = table["time"].to_numpy(dtype=float)
    if not np.isfinite(time).any():  # no frame rate: fall back to frame numbers
        time, xlabel = table["frame"].to_numpy(dtype=float), "frame"
    else:
        xlabel = "time (s)"
    heights = [max(1.6, 0.22 * len(c)) if kind.startswith("au") else 1.8 for kind, c in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(11, sum(heights) + 1.0), sharex=True,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    step = float(np.nanmedian(np.diff(time))) if len(time) > 1 else 1.0
    extent_x = (time[0] - step / 2, time[-1] + step / 2) if len(time) else (0, 1)
    for ax, (kind, columns) in zip(axes[:, 0], panels):
        values = table[columns].to_numpy(dtype=float)
        # Every panel gets the same side strip (colour bar or legend), so that the time axes align.
        side = make_axes_locatable(ax).append_axes("right", size=1.1, pad=0.1)
        if kind.startswith("au"):
            vmax = 1.0 if kind == "au-detection" else 5.0
            image = ax.imshow(np.ma.masked_invalid(values.T), aspect="auto", interpolation="nearest",
                              cmap="viridis", vmin=0.0, vmax=vmax,
                              extent=(*extent_x, len(columns) - 0.5, -0.5))
            ax.set_yticks(range(len(columns)), [c.rsplit("_", 1)[0] if c.startswith("AU") else c for c in columns],
                          fontsize=7)
            side.axis("off")
            fig.colorbar(image, cax=side.inset_axes((0.0, 0.0, 0.12, 1.0)))
        elif kind == "expression":
            for j, column in enumerate(columns):
                ax.plot(time, values[:, j], label=column, lw=1.2)
            ax.set_ylim(-0.02, 1.02)
            _legend(ax, side)
        else:
            for j, column in enumerate(columns):
                ax.plot(time, values[:, j], label=column, lw=1.4)
            ax.axhline(0.0, color="0.7", lw=0.6)
            low = min(-1.0, float(np.nanmin(values)) if np.isfinite(values).any() else -1.0)
            high = max(1.0, float(np.nanmax(values)) if np.isfinite(values).any() else 1.0)
            ax.set_ylim(low - 0.05, high + 0.05)
            _legend(ax, side)
        ax.set_title(PANEL_TITLES[kind], fontsize=9, loc="left")
    missing = ~table["face_found"].to_numpy(dtype=bool)
    for ax in axes[:, 0]:
        for t in time[missing]:
            ax.axvspan(t - step / 2, t + step / 2, color="0.85", zorder=0, lw=0)
    axes[-1, 0].set_xlabel(xlabel + ("   (grey: no face found in the frame)" if missing.any() else ""))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": PLOT_SOFTWARE})
    plt.close(fig)
    return path


#: The PNG ``Software`` text of a timeline plot: how predict tells its own plots from other files.
PLOT_SOFTWARE = "affbench predict --plot"


def is_timeline_plot(path: Path) -> bool:
    """Whether ``path`` is a timeline PNG that :func:`plot_timeline` wrote (it may be replaced)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get("Software") == PLOT_SOFTWARE
    except (UnidentifiedImageError, OSError):
        return False


def _legend(ax: Axes, side: Axes) -> None:
    handles, labels = ax.get_legend_handles_labels()
    side.axis("off")
    side.legend(handles, labels, loc="upper left", fontsize=7, frameon=False, borderaxespad=0.0)

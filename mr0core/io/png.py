"""PNG previews of images, drawn with matplotlib's Agg canvas (no display, no pyplot state).

Shown in RAS+ like :func:`mr0core.plot.imshow`: x to the right, y up; 3-D images as a grid of
z slices, 4-D ``[x, y, z, t]`` with one row per t frame.
"""

from __future__ import annotations

import math
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mr0core.plot import montage

__all__ = ["write_png"]

_MIN_PIXELS = 256  # small images are scaled up (nearest neighbour) to at least this size


def write_png(
    path: str | PathLike[str],
    image: Any,
    *,
    window: tuple[float, float] | None = None,
    columns: int | None = None,
    title: str | None = None,
    cmap: str = "gray",
    dpi: int = 100,
) -> Path:
    """Write an image as a PNG preview.

    Parameters
    ----------
    path
        Output file.
    image
        ``[x, y]``, ``[x, y, z]`` or ``[x, y, z, t]``, real or complex (magnitude shown), numpy or
        torch.
    window
        ``(low, high)`` display range in image units; default: 0 (or the minimum, if negative) to
        the 99.5th percentile.
    columns
        Tiles per row of the 3-D montage (default as :func:`mr0core.plot.montage`).
    title
        Optional title above the image.
    cmap
        Matplotlib colour map.
    dpi
        Resolution; the figure is sized so each image pixel maps to whole screen pixels.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"cannot write a PNG over the directory {out}")
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim not in (2, 3, 4) or 0 in arr.shape:
        raise ValueError(f"image must be [x, y], [x, y, z] or [x, y, z, t], got shape {arr.shape}")
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    arr = arr.astype(np.float64)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    tiled = montage(arr, columns=columns)
    if window is None:
        finite = tiled[np.isfinite(tiled)]
        low = min(0.0, float(finite.min())) if finite.size else 0.0
        high = float(np.percentile(finite, 99.5)) if finite.size else 1.0
        if high <= low:
            high = low + 1.0
    else:
        low, high = (float(v) for v in window)
        if not high > low:
            raise ValueError(f"window must be (low, high) with high > low, got {window}")

    nx, ny = tiled.shape
    scale = max(1, math.ceil(_MIN_PIXELS / max(nx, ny)))
    title_px = 30 if title else 0
    width_px, height_px = nx * scale, ny * scale + title_px
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, (ny * scale) / height_px))
    ax.imshow(tiled.T, origin="lower", cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.text(0.5, 1.0 - 0.5 * title_px / height_px, title, ha="center", va="center")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fspath(out), dpi=dpi, format="png")
    return out

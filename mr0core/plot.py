"""Plots: MR-zero's ``imshow``, ``insert_signal_plot``, ``pulseq_plot``; k-space; phantoms.

Images are shown in RAS+: x (first index) runs left to right, y (second index) bottom to top, and
3-D data is laid out as a grid of its z slices (slice 0 top left, row by row). Every function takes
``out=path``: the figure is then saved there and closed, so nothing needs a display.
"""

from __future__ import annotations

import math
from os import PathLike, fspath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import matplotlib.axes
    import matplotlib.figure
    import matplotlib.image

__all__ = [
    "adc_sample_times",
    "imshow",
    "insert_signal_plot",
    "montage",
    "plot_kspace_trajectory",
    "plot_phantom",
    "pulseq_plot",
    "pulseq_plot_142",
    "pulseq_plot_pre14",
]


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _save(
    fig: matplotlib.figure.Figure | matplotlib.figure.SubFigure, out: str | PathLike[str]
) -> Path:
    import matplotlib.pyplot as plt  # optional heavy dependency, loaded when a plot is made
    from matplotlib.figure import SubFigure

    if isinstance(fig, SubFigure):  # axes in a sub-figure: save the figure that holds it
        fig = fig.figure

    path = Path(out)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a figure over the directory {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(fspath(path))
    plt.close(fig)
    return path


def montage(image: Any, columns: int | None = None, fill: float = 0.0) -> np.ndarray:
    """Tile the z slices (and t frames) of an image into one 2-D ``[X, Y]`` array.

    Parameters
    ----------
    image
        ``[x, y]``, ``[x, y, z]`` or ``[x, y, z, t]`` (real).
    columns
        Tiles per row for 3-D input; default ``ceil(z / floor(sqrt(z)))`` (MR-zero's layout:
        ``floor(sqrt(z))`` rows). 4-D input puts each t frame in a row and its z slices in the
        columns.
    fill
        Value of unused tiles (0, as MR-zero shows them).

    Returns
    -------
    numpy.ndarray
        ``[columns · x, rows · y]`` in the same index convention (x first, y up): shown with
        ``imshow(m.T, origin="lower")`` slice 0 is at the top left and rows run downwards.
    """
    arr = _numpy(image)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        nz = arr.shape[2]
        cols = columns or math.ceil(nz / max(1, math.isqrt(nz)))
        cols = max(1, min(nz, cols))
        rows = math.ceil(nz / cols)
        tiles = [(k // cols, k % cols, arr[:, :, k]) for k in range(nz)]
    elif arr.ndim == 4:
        nz, nt = arr.shape[2], arr.shape[3]
        cols, rows = nz, nt
        tiles = [(t, k, arr[:, :, k, t]) for t in range(nt) for k in range(nz)]
    else:
        raise ValueError(f"expected [x, y], [x, y, z] or [x, y, z, t], got shape {arr.shape}")
    nx, ny = arr.shape[:2]
    dtype = np.result_type(arr.dtype, np.float32) if np.isnan(fill) else arr.dtype
    out = np.full((cols * nx, rows * ny), fill, dtype=dtype)
    for row, col, tile in tiles:
        y0 = (rows - 1 - row) * ny  # row 0 at the top: highest y block
        out[col * nx : (col + 1) * nx, y0 : y0 + ny] = tile
    return out


def _display_image(reco: Any) -> np.ndarray:
    """``[x, y]``, ``[x, y, z]`` or ``[coil, x, y, z]`` → real 2-D ``[X, Y]`` montage."""
    arr = _numpy(reco)
    if arr.ndim == 4:  # [coil, x, y, z]: quadratic (root-sum-of-squares) combination
        arr = np.sqrt((np.abs(arr) ** 2).sum(axis=0))
    elif arr.ndim not in (2, 3):
        raise ValueError(f"reco must be [x, y], [x, y, z] or [coil, x, y, z], got {arr.shape}")
    if np.iscomplexobj(arr):
        arr = np.abs(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return montage(arr)


def imshow(
    data: Any, *args: Any, out: str | PathLike[str] | None = None, **kwargs: Any
) -> matplotlib.image.AxesImage:
    """``matplotlib.pyplot.imshow`` for MR images, in RAS+.

    Parameters
    ----------
    data
        The reconstruction: ``[x, y]``, ``[x, y, z]`` or ``[coil, x, y, z]``; complex data is
        shown as magnitude, coils are combined by root-sum-of-squares, z slices are tiled into a
        grid.
    *args, **kwargs
        Passed to ``plt.imshow`` (``cmap``, ``vmin``, …); ``origin`` is fixed to ``"lower"``.
    out
        Save the current figure there and close it.

    Returns
    -------
    matplotlib.image.AxesImage
        The image artist (on the current axes).
    """
    import matplotlib.pyplot as plt

    image = _display_image(data)
    kwargs.setdefault("interpolation", "nearest")
    kwargs["origin"] = "lower"
    artist = plt.imshow(image.T, *args, **kwargs)
    if out is not None:
        _save(plt.gcf(), out)
    return artist


# -- Pulseq plots --------------------------------------------------------------------------------


def adc_sample_times(seq: Any) -> np.ndarray:
    """ADC sample times in s of a ``pypulseq.Sequence``, as its ``plot()`` draws them.

    Each ADC of a block samples at ``t_block + delay + (i + 0.5) · dwell``.

    Returns
    -------
    numpy.ndarray
        ``[samples]`` float64, in time order (the order of a simulated signal).
    """
    if not hasattr(seq, "block_events") or not hasattr(seq, "get_block"):
        raise TypeError(f"expected a pypulseq Sequence, got {type(seq).__name__}")
    times = []
    t0 = 0.0
    for block_id in seq.block_events:
        block = seq.get_block(block_id)
        adc = getattr(block, "adc", None)
        if adc is not None:
            n = int(adc.num_samples)
            times.append(t0 + float(adc.delay) + (np.arange(n) + 0.5) * float(adc.dwell))
        t0 += float(seq.block_durations[block_id])
    return np.concatenate(times) if times else np.zeros(0)


def _adc_axes(plot: Any = None) -> matplotlib.axes.Axes:
    """Return the ADC axes of an open pypulseq plot (ylabel ``ADC``), newest figure first."""
    import matplotlib.pyplot as plt

    if plot is not None and getattr(plot, "ax1", None):
        result: matplotlib.axes.Axes = plot.ax1[0]
        return result
    for num in reversed(plt.get_fignums()):
        for ax in plt.figure(num).axes:
            if ax.get_ylabel().strip().upper().startswith("ADC"):
                return ax
    raise RuntimeError(
        "no open pypulseq plot with an ADC axis; call seq.plot(plot_now=False) first"
    )


def insert_signal_plot(
    seq: Any,
    signal: Any,
    ax: matplotlib.axes.Axes | None = None,
    out: str | PathLike[str] | None = None,
    *,
    plot: Any = None,
) -> matplotlib.axes.Axes:
    """Insert a (simulated) signal into the ADC row of an open pypulseq plot.

    Call ``seq.plot(plot_now=False)`` first (pypulseq ≥ 1.4.2 keeps the figure open then).

    Parameters
    ----------
    seq
        The ``pypulseq.Sequence`` that was plotted; it gives the ADC sample times.
    signal
        ``[samples]`` or ``[samples, coils]`` (first coil shown), complex; ``samples`` must
        equal the number of ADC samples. Real and imaginary parts are drawn.
    ax
        The axes to draw into; default: the ADC axes of ``plot`` or of the newest open pypulseq
        figure.
    out
        Save the figure there and close it.
    plot
        The ``SeqPlot`` returned by ``seq.plot``; default: the newest open figure with an ADC axis.

    Returns
    -------
    matplotlib.axes.Axes
        The ADC axes.
    """
    times = adc_sample_times(seq)
    sig = _numpy(signal)
    if sig.ndim == 2:
        sig = sig[:, 0]
    if sig.ndim != 1 or sig.shape[0] != times.shape[0]:
        raise ValueError(
            f"signal must be [samples] or [samples, coils] with {times.shape[0]} samples "
            f"(the sequence's ADC samples), got shape {_numpy(signal).shape}"
        )
    if ax is None:
        ax = _adc_axes(plot)
    t_factor = float(getattr(ax.figure, "_seq_t_factor", 1.0))
    xlim = ax.get_xlim()
    ax.plot(t_factor * times, np.real(sig), "-", linewidth=0.8, label="signal (real)")
    ax.plot(t_factor * times, np.imag(sig), "-", linewidth=0.8, label="signal (imag)")
    ax.set_xlim(xlim)  # keep pypulseq's time range
    ax.relim()
    ax.autoscale_view(scalex=False)
    if out is not None:
        _save(ax.figure, out)
    return ax


def pulseq_plot(
    seq: Any,
    type: str = "Gradient",  # MR-zero's parameter name
    time_range: tuple[float, float] = (0.0, np.inf),
    time_disp: str = "s",
    show_blocks: bool = False,
    clear: bool = False,
    signal: Any = None,
    figid: Any = (1, 2),
    stacked: bool = True,
    *,
    out: str | PathLike[str] | None = None,
) -> Any:
    """Plot a pypulseq sequence, optionally with the simulated signal in the ADC row.

    Parameters
    ----------
    seq
        ``pypulseq.Sequence``.
    type, clear, figid
        MR-zero documents these as ignored; so are they here.
    time_range, time_disp, show_blocks
        As for pypulseq's ``Sequence.plot``.
    signal
        Optional ``[samples]`` / ``[samples, coils]`` signal for :func:`insert_signal_plot`.
    stacked
        One figure with all six rows (MR-zero's default). Needs pypulseq ≥ 1.5; older pypulseq
        always draws two figures, and ``stacked=True`` then raises :class:`NotImplementedError`
        unless you pass ``stacked=False``.
    out
        Save and close the figure(s): the RF/ADC figure (or the stacked one) at ``out``, the
        gradient figure (if any) at ``<stem>_grad<suffix>``.

    Returns
    -------
    pypulseq.utils.seq_plot.SeqPlot or None
        pypulseq's plot handle (``fig1``, ``ax1``, ``fig2``, ``ax2``); older pypulseq returns None.
    """
    del type, clear, figid
    handle = _seq_plot(
        seq, time_range=time_range, time_disp=time_disp, show_blocks=show_blocks, plot_now=False,
        stacked=stacked,
    )  # fmt: skip
    if signal is not None:
        insert_signal_plot(seq, signal, plot=handle)
    if out is not None:
        fig1 = getattr(handle, "fig1", None)
        fig2 = getattr(handle, "fig2", None)
        if fig1 is None:
            import matplotlib.pyplot as plt

            fig1 = _adc_axes().figure
            fig2 = next(
                (plt.figure(n) for n in plt.get_fignums() if plt.figure(n) is not fig1), None
            )
        path = Path(out)
        if fig2 is not None and fig2 is not fig1:
            _save(fig2, path.with_name(f"{path.stem}_grad{path.suffix}"))
        _save(fig1, path)
    return handle


def _seq_plot(seq: Any, stacked: bool, **kwargs: Any) -> Any:
    """Call ``seq.plot(**kwargs)``, with ``stacked`` where this pypulseq supports it."""
    import inspect

    try:
        takes_stacked = "stacked" in inspect.signature(seq.plot).parameters
    except (TypeError, ValueError):  # a plot method without an introspectable signature
        takes_stacked = False
    if takes_stacked:
        kwargs["stacked"] = bool(stacked)
    elif stacked:
        raise NotImplementedError(
            "stacked=True needs pypulseq >= 1.5 (its plot has no 'stacked'); pass stacked=False"
        )
    return seq.plot(**kwargs)


def pulseq_plot_142(
    seq: Any,
    label: str = "",
    show_blocks: bool = False,
    save: bool = False,
    time_range: tuple[float, float] = (0, np.inf),
    time_disp: str = "s",
    grad_disp: str = "kHz/m",
    plot_now: bool = True,
    figid: Any = (1, 2),
    stacked: bool = True,
    clear: bool = False,
) -> tuple[matplotlib.axes.Axes, np.ndarray]:
    """Pypulseq's ``Sequence.plot`` (1.4.2 parameters) that returns the ADC axes.

    With the axes, :func:`insert_signal_plot` can add a simulated signal (call with
    ``plot_now=False`` and show the figure afterwards).

    Parameters
    ----------
    seq
        ``pypulseq.Sequence``.
    label, show_blocks, save, time_range, time_disp, grad_disp, plot_now
        As for pypulseq's ``Sequence.plot``.
    figid
        MR-zero's figure numbers; ignored (pypulseq makes its own figures), as in
        :func:`pulseq_plot`.
    stacked
        One figure with all rows (pypulseq ≥ 1.5; see :func:`pulseq_plot`).
    clear
        Close all open figures first.

    Returns
    -------
    tuple
        The ADC axes and the ADC sample times in s ``[samples]`` (:func:`adc_sample_times`).
    """
    import matplotlib.pyplot as plt

    del figid
    if clear:
        plt.close("all")
    handle = _seq_plot(
        seq, stacked=stacked, label=label, show_blocks=show_blocks, save=save,
        time_range=time_range, time_disp=time_disp, grad_disp=grad_disp, plot_now=False,
    )  # fmt: skip
    ax = _adc_axes(handle)
    if plot_now:
        plt.show()
    return ax, adc_sample_times(seq)


def pulseq_plot_pre14(
    seq: Any,
    type: str = "Gradient",  # MR-zero's parameter name
    time_range: tuple[float, float] = (0, np.inf),
    time_disp: str = "s",
    clear: bool = False,
    signal: Any = 0,
    figid: Any = (1, 2),
    stacked: bool = True,
) -> tuple[matplotlib.axes.Axes, np.ndarray]:
    """MR-zero's sequence plot for old pypulseq, with the signal in the ADC row.

    mr0core draws it with the installed pypulseq (:func:`pulseq_plot`), so it works with any
    version that :func:`pulseq_plot` supports.

    Parameters
    ----------
    seq
        ``pypulseq.Sequence``.
    type, figid
        Ignored, as in :func:`pulseq_plot`.
    time_range, time_disp
        As for pypulseq's ``Sequence.plot``.
    clear
        Close all open figures first.
    signal
        Signal to insert into the ADC row; ``0`` (MR-zero's default) or None for none.
    stacked
        See :func:`pulseq_plot`.

    Returns
    -------
    tuple
        The ADC axes and the ADC sample times in s ``[samples]``.
    """
    import matplotlib.pyplot as plt

    if clear:
        plt.close("all")
    if isinstance(signal, int | float) and signal == 0:
        signal = None
    handle = pulseq_plot(
        seq, type, time_range, time_disp, signal=signal, figid=figid, stacked=stacked
    )
    return _adc_axes(handle), adc_sample_times(seq)


# -- k-space and phantoms ------------------------------------------------------------------------


def plot_kspace_trajectory(
    seq: Any, out: str | PathLike[str] | None = None, **kwargs: Any
) -> matplotlib.figure.Figure:
    """Plot a sequence's k-space trajectory (:meth:`mr0core.Sequence.plot_kspace_trajectory`).

    Parameters
    ----------
    seq
        An ``mr0core.Sequence``, a ``pypulseq.Sequence`` or a ``.seq`` path.
    out
        Save the figure there and close it.
    **kwargs
        ``figsize``, ``plotting_dims`` (e.g. ``"xy"``), ``plot_timeline``.
    """
    from mr0core.sequence import Sequence

    if isinstance(seq, str | PathLike):
        seq = Sequence.import_file(fspath(seq))
    elif not isinstance(seq, Sequence):
        seq = Sequence.from_pypulseq(seq)
    fig = seq.plot_kspace_trajectory(**kwargs)
    if out is not None:
        _save(fig, out)
    result: matplotlib.figure.Figure = fig
    return result


def plot_phantom(
    phantom: Any, out: str | PathLike[str] | None = None, **kwargs: Any
) -> matplotlib.figure.Figure:
    """Plot a phantom's maps (one z slice, RAS+), via the phantom's own ``plot``.

    Parameters
    ----------
    phantom
        A ``VoxelGridPhantom`` or ``CustomVoxelPhantom``.
    out
        Save the figure there and close it.
    **kwargs
        Passed to ``phantom.plot`` (``plot_slice``, ``time_unit``, ``title``, …).
    """
    plot = getattr(phantom, "plot", None)
    if plot is None:
        raise TypeError(f"{type(phantom).__name__} has no plot() method")
    fig = plot(**kwargs)
    if out is not None:
        _save(fig, out)
    result: matplotlib.figure.Figure = fig
    return result

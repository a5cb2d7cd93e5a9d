"""Helpers with MR-zero's ``util`` names: quick phantoms, one-call simulation and plots.

The plots (``imshow``, ``insert_signal_plot``, ``pulseq_plot``, ``plot_kspace_trajectory``) live
in :mod:`mr0core.plot` and are re-exported here under MR-zero's names.

MR-zero's ``load_phantom`` downloads a phantom; mr0core ships one instead (the built-in brain), so
it works offline. ``url`` may name a local ``.mat``, ``.npz`` or NIfTI-phantom ``.json`` file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import torch

from mr0core.phantom.voxel_grid import VoxelGridPhantom, grid_positions
from mr0core.plot import imshow, insert_signal_plot, plot_kspace_trajectory, pulseq_plot

__all__ = [
    "DEFAULT_PHANTOM_URL",
    "imshow",
    "insert_signal_plot",
    "load_phantom",
    "plot_kspace_trajectory",
    "pulseq_plot",
    "simulate",
]

DEFAULT_PHANTOM_URL = "builtin:brain"
"""The default phantom: the built-in brain (ICBM 2009a, 3 T values), no download."""

_DEFAULT_BRAIN_SIZE = 128


def load_phantom(
    size: SequenceABC[int] | None = None,
    url: str | PathLike[str] = DEFAULT_PHANTOM_URL,
    dB0_fB0: tuple[float, float] = (0, 1),
    dB1_fB1: tuple[float, float] = (0, 1),
    B0_polynomial: SequenceABC[float] | None = None,
) -> VoxelGridPhantom:
    """Load a 2-D phantom for quick simulations.

    Parameters
    ----------
    size
        ``(x, y)`` matrix size; the phantom is resampled to it (one slice). Default: the built-in
        brain at 128 × 128, or a file's own grid.
    url
        ``"builtin:brain"`` (default), ``"builtin:shepp-logan"``, or a local file: MR-zero's
        ``.mat`` (:meth:`VoxelGridPhantom.load_mat`), ``.npz`` (:meth:`VoxelGridPhantom.load`) or
        a NIfTI phantom ``.json`` (its tissues are combined). Downloads are not supported.
    dB0_fB0
        ``(offset, factor)``: ``B0 ← (B0 + offset) · factor`` in Hz.
    dB1_fB1
        ``(offset, factor)``: ``B1 ← (B1 + offset) · factor``.
    B0_polynomial
        ``(c, x, y, x², y², xy)`` in Hz, added to B0 after the offset and factor; x and y run over
        the field of view from -1 to 1 (``2 · position / size``).

    Returns
    -------
    VoxelGridPhantom
        The phantom (tissues combined into one map per property).
    """
    phantom = _load(url, size)
    if size is not None:
        sx, sy = (int(s) for s in size)
        if phantom.shape[:2] != (sx, sy) or phantom.shape[2] != 1:
            phantom = phantom.interpolate(sx, sy, 1) if phantom.shape[2] == 1 else (
                phantom.slices([phantom.shape[2] // 2]).interpolate(sx, sy, 1)
            )  # fmt: skip
    b0_offset, b0_factor = (float(v) for v in dB0_fB0)
    b1_offset, b1_factor = (float(v) for v in dB1_fB1)
    phantom.B0 = (phantom.B0 + b0_offset) * b0_factor
    phantom.B1 = (phantom.B1 + b1_offset) * b1_factor
    if B0_polynomial is not None:
        coeffs = [float(c) for c in B0_polynomial]
        if len(coeffs) != 6 or not all(math.isfinite(c) for c in coeffs):
            raise ValueError(f"B0_polynomial needs 6 finite numbers, got {B0_polynomial}")
        pos = grid_positions(phantom.shape, phantom.size)
        x = 2 * pos[..., 0] / phantom.size[0]
        y = 2 * pos[..., 1] / phantom.size[1]
        c, cx, cy, cxx, cyy, cxy = coeffs
        phantom.B0 = phantom.B0 + (c + cx * x + cy * y + cxx * x**2 + cyy * y**2 + cxy * x * y)
    return phantom


def _load(url: str | PathLike[str], size: SequenceABC[int] | None) -> VoxelGridPhantom:
    text = fspath(url)
    if text.startswith("builtin:"):
        from mr0core.phantom.builtin_phantoms import PHANTOMS

        kind = text.split(":", 1)[1]
        if kind not in PHANTOMS:
            raise ValueError(f"unknown built-in phantom {kind!r}; choose {', '.join(PHANTOMS)}")
        n = _DEFAULT_BRAIN_SIZE
        if size is not None and int(size[0]) == int(size[1]):
            n = int(size[0])
        return PHANTOMS[kind](size=n).combine()
    if "://" in text:
        raise ValueError(
            f"{text}: mr0core does not download phantoms; use the built-in default or a local "
            "file (.mat, .npz or a NIfTI phantom .json)"
        )
    path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"phantom file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return VoxelGridPhantom.load_mat(path)
    if suffix == ".npz":
        return VoxelGridPhantom.load(path)
    if suffix == ".json":
        from mr0core.phantom.tissue_dict import TissueDict

        return TissueDict.load(path).combine()
    raise ValueError(f"{path}: unknown phantom format (expected .mat, .npz or .json)")


def simulate(
    seq: Any,
    phantom: Any = None,
    sim_size: SequenceABC[int] | None = None,
    accuracy: float = 1e-3,
    noise_level: float | None = None,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate a sequence with PDG in one call.

    Parameters
    ----------
    seq
        An :class:`mr0core.Sequence`, a ``.seq`` path or a ``pypulseq.Sequence`` (converted in
        memory; no file is written to the working directory).
    phantom
        ``VoxelGridPhantom``, ``CustomVoxelPhantom``, ``TissueDict``, ``SimData`` or a phantom file
        (see :func:`load_phantom`); default: the built-in brain.
    sim_size
        ``(x, y)``: resample grid phantoms to this size first (default brain: 64 × 64).
    accuracy
        ``min_emitted_signal`` and ``min_latent_signal`` of the main pass.
    noise_level
        Standard deviation of complex Gaussian noise added to the signal.
    device
        Where to simulate; default: where the phantom's tensors are (CPU unless you moved them).

    Returns
    -------
    tuple
        ``signal [samples, coils]`` complex64 and ``ktraj_adc [samples, 4]`` (kx, ky, kz in 1/m
        and τ in s, from :meth:`Sequence.get_kspace`).
    """
    from mr0core.phantom import CustomVoxelPhantom, SimData, TissueDict
    from mr0core.sequence import Sequence
    from mr0core.sim import compute_graph, execute_graph

    if isinstance(seq, str | PathLike):
        seq = Sequence.import_file(seq)
    elif not isinstance(seq, Sequence):
        seq = Sequence.from_pypulseq(seq)
    if phantom is None:
        phantom = load_phantom(size=tuple(sim_size) if sim_size is not None else (64, 64))
    elif isinstance(phantom, str | PathLike):
        phantom = load_phantom(size=sim_size, url=phantom)
    elif sim_size is not None and isinstance(phantom, VoxelGridPhantom | TissueDict):
        phantom = phantom.interpolate(int(sim_size[0]), int(sim_size[1]), 1)
    if isinstance(phantom, VoxelGridPhantom | TissueDict | CustomVoxelPhantom):
        data = phantom.build()
    elif isinstance(phantom, SimData):
        data = phantom
    else:
        raise TypeError(f"simulate: unsupported phantom type {type(phantom).__name__}")
    if device is not None:
        data = data.to(device)
    seq = seq.to(data.device) if seq.device != data.device else seq
    graph = compute_graph(seq, data, 200, 1e-4)
    signal = execute_graph(graph, seq, data, accuracy, accuracy, print_progress=False)
    if noise_level:
        noise = torch.randn(signal.shape, dtype=signal.dtype, device=signal.device)
        signal = signal + float(noise_level) * noise
    return signal, seq.get_kspace()

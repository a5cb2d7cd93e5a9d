"""Helpers with MR-zero's ``util`` names: quick phantoms, one-call simulation and plots.

The plots (``imshow``, ``insert_signal_plot``, ``pulseq_plot``, ``pulseq_plot_142``,
``pulseq_plot_pre14``, ``plot_kspace_trajectory``) live in :mod:`mr0core.plot` and are re-exported
here under MR-zero's names.

``load_phantom`` and ``simulate`` behave as MR-zero's: without a ``url`` (or phantom) they use
MR-zero's 2-D brain, ``numerical_brain_cropped.mat`` (:data:`DEFAULT_PHANTOM_URL`). A file of the
URL's name in the current working directory is used as it is; otherwise it is downloaded there
once. ``url="builtin:brain"`` (or ``"builtin:shepp-logan"``) selects a phantom shipped with
mr0core instead, which needs no network; the ``mr0`` commands and the server use that.
"""

from __future__ import annotations

import http.client
import math
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Sequence as SequenceABC
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import torch

from mr0core.jobs import SimSettings, simulate_signal
from mr0core.phantom import CustomVoxelPhantom, SimData, TissueDict
from mr0core.phantom.voxel_grid import VoxelGridPhantom, grid_positions
from mr0core.plot import (
    imshow,
    insert_signal_plot,
    plot_kspace_trajectory,
    pulseq_plot,
    pulseq_plot_142,
    pulseq_plot_pre14,
)
from mr0core.sequence import as_sequence

__all__ = [
    "BUILTIN_BRAIN_URL",
    "DEFAULT_PHANTOM_URL",
    "DOWNLOAD_TIMEOUT_S",
    "PhantomDownloadError",
    "get_signal_from_real_system",
    "imshow",
    "insert_signal_plot",
    "load_phantom",
    "plot_kspace_trajectory",
    "pulseq_plot",
    "pulseq_plot_142",
    "pulseq_plot_pre14",
    "simulate",
    "simulate_2d",
]

DEFAULT_PHANTOM_URL = (
    "https://github.com/MRsources/MRzero-Core/raw/main/documentation/playground_mr0/"
    "numerical_brain_cropped.mat"
)
"""MR-zero's default phantom: its 2-D brain (141 × 161 voxels, 0.2 × 0.2 m, one slice)."""

BUILTIN_BRAIN_URL = "builtin:brain"
"""The brain shipped with mr0core (ICBM 2009a, 3 T values): no download."""

DOWNLOAD_TIMEOUT_S = 30.0
"""Timeout in s of each network operation of a phantom download."""

_DEFAULT_BRAIN_SIZE = 128
_CHUNK = 1 << 16
_URL_SCHEMES = ("http", "https")
_URL_SUFFIXES = (".mat", ".npz")


class PhantomDownloadError(ConnectionError):
    """A phantom could not be downloaded (offline, unreachable host, HTTP error)."""


def load_phantom(
    size: SequenceABC[int] | None = None,
    url: str | PathLike[str] = DEFAULT_PHANTOM_URL,
    dB0_fB0: tuple[float, float] = (0, 1),
    dB1_fB1: tuple[float, float] = (0, 1),
    B0_polynomial: SequenceABC[float] | None = None,
) -> VoxelGridPhantom:
    """Load a 2-D phantom for quick simulations, as MR-zero's ``util.load_phantom``.

    Parameters
    ----------
    size
        ``(x, y)`` matrix size; the phantom is resampled to it (one slice). Default: the file's own
        grid (the built-ins: 128 × 128).
    url
        Where the phantom comes from:

        - an ``http(s)://`` URL of a ``.mat`` or ``.npz`` file (default: MR-zero's brain,
          :data:`DEFAULT_PHANTOM_URL`). If a file of the URL's name is in the current working
          directory it is loaded without any request; otherwise it is downloaded there (timeout
          :data:`DOWNLOAD_TIMEOUT_S`, progress bar, written atomically).
        - ``"builtin:brain"`` or ``"builtin:shepp-logan"``: a phantom shipped with mr0core.
        - a local file: MR-zero's ``.mat`` (:meth:`VoxelGridPhantom.load_mat`), ``.npz``
          (:meth:`VoxelGridPhantom.brainweb`) or a NIfTI phantom ``.json`` (tissues combined).
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

    Raises
    ------
    PhantomDownloadError
        The download failed (e.g. offline); the message suggests ``url="builtin:brain"``.
    FileNotFoundError
        ``url`` names a local file that does not exist.
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
    path = _fetch(text) if "://" in text else Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"phantom file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return VoxelGridPhantom.load_mat(path)
    if suffix == ".npz":
        return VoxelGridPhantom.brainweb(path)
    if suffix == ".json":
        from mr0core.phantom.tissue_dict import TissueDict

        return TissueDict.load(path).combine()
    raise ValueError(f"{path}: unknown phantom format (expected .mat, .npz or .json)")


def _fetch(url: str) -> Path:
    """Return the file of ``url``'s name in the cwd, downloading it there first if missing."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in _URL_SCHEMES:
        raise ValueError(f"{url}: only {' and '.join(_URL_SCHEMES)} URLs can be downloaded")
    name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise ValueError(f"{url}: the URL does not end in a file name")
    if Path(name).suffix.lower() not in _URL_SUFFIXES:
        raise ValueError(
            f"{url}: can download {' and '.join(_URL_SUFFIXES)} phantoms only, got {name!r}"
        )
    target = Path.cwd() / name
    if target.is_file():
        return target
    _download(url, target)
    return target


def _download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` through a temporary file beside it, then rename."""
    from tqdm.auto import tqdm

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    written = 0
                    with tqdm(total=total, unit="B", unit_scale=True, desc=target.name) as bar:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            written += len(chunk)
                            bar.update(len(chunk))
                    if total is not None and written != total:  # the connection broke off
                        raise http.client.IncompleteRead(b"", total - written)
            # HTTPError, timeouts, refused connections, truncated transfers
            except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason: Any = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = getattr(exc, "reason", None) or exc
                raise PhantomDownloadError(
                    f"could not download the phantom {url} ({reason}); offline? use the built-in "
                    f'brain instead: load_phantom(url="{BUILTIN_BRAIN_URL}")'
                ) from exc
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def simulate(
    seq: Any,
    phantom: Any = None,
    sim_size: SequenceABC[int] | None = None,
    accuracy: float = 1e-3,
    noise_level: float | None = None,
    device: str | torch.device | None = None,
    *,
    rf_model: str = "instantaneous",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate a sequence with PDG in one call.

    Parameters
    ----------
    seq
        An :class:`mr0core.Sequence`, a ``.seq`` path or a ``pypulseq.Sequence`` (converted in
        memory; no file is written to the working directory).
    phantom
        ``VoxelGridPhantom``, ``CustomVoxelPhantom``, ``TissueDict``, ``SimData``, or a phantom
        file or URL (see :func:`load_phantom`). Default: MR-zero's brain,
        ``load_phantom(sim_size)`` (downloaded into the working directory if it is not there).
    sim_size
        ``(x, y)``: resample grid phantoms to this size first.
    accuracy
        Target NRMSE of the signal against the converged one (1e-3 = 0.1 %), mapped to the
        pre-pass and main-pass settings by :func:`mr0core.sim.accuracy_settings` (calibrated on
        the PDG benchmark suite; README, "Error-controlled simulation"). MR-zero passes this
        value as both thresholds of its main pass instead, which gives errors of up to several
        percent; ours is more accurate at the same number, and slower where many states matter.
    noise_level
        Standard deviation of the complex Gaussian noise added to the signal, as in MR-zero:
        ``E|n|² = noise_level²``, each of the real and imaginary part ``noise_level / √2``
        (:func:`mr0core.jobs.add_noise`), drawn from torch's global generator on the
        simulation's device, so ``torch.manual_seed`` makes it reproducible. (Measured on
        MR-zero 1.2.0 as a black box: after the same ``torch.manual_seed`` its noise equals
        ``noise_level · torch.randn(shape, dtype=torch.complex64)``, sample for sample.)
    device
        Where to simulate; default: where the phantom's tensors are (CPU unless you moved them).
    rf_model
        ``"instantaneous"`` (MR-zero's model, default) or ``"shaped"``: slice profiles from the
        pulses' waveforms (:func:`mr0core.sim.execute_graph`).

    Returns
    -------
    tuple
        ``signal [samples, coils]`` complex64 and ``ktraj_adc [samples, 4]`` (kx, ky, kz in 1/m
        and τ in s, from :meth:`Sequence.get_kspace`).
    """
    seq = as_sequence(seq)
    if phantom is None:
        phantom = load_phantom(size=sim_size)
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
    signal = simulate_signal(
        seq, data, SimSettings.for_accuracy(accuracy), noise=noise_level or 0.0, rf_model=rf_model
    )
    return signal, seq.get_kspace()


def simulate_2d(
    seq: Any,
    sim_size: SequenceABC[int] | None = None,
    noise_level: float = 0,
    dB0: float = 0,
    B0_scale: float = 1,
    B0_polynomial: SequenceABC[float] | None = None,
) -> torch.Tensor:
    """Simulate on MR-zero's brain; deprecated (MR-zero too): use :func:`simulate`.

    The same as ``simulate(seq, load_phantom(sim_size, dB0_fB0=(dB0, B0_scale),
    B0_polynomial=B0_polynomial), noise_level=noise_level)[0]``.

    Parameters
    ----------
    seq
        As for :func:`simulate`.
    sim_size
        ``(x, y)`` phantom size; default: the phantom's own grid.
    noise_level
        Standard deviation of the added complex noise (0: none).
    dB0, B0_scale
        B0 offset in Hz and factor: ``B0 ← (B0 + dB0) · B0_scale``.
    B0_polynomial
        See :func:`load_phantom`.

    Returns
    -------
    torch.Tensor
        ``[samples, coils]`` complex signal (no trajectory, as in MR-zero).
    """
    warnings.warn(
        "util.simulate_2d is deprecated; use util.simulate() (with util.load_phantom() for B0 "
        "changes)",
        DeprecationWarning,
        stacklevel=2,
    )
    phantom = load_phantom(sim_size, dB0_fB0=(dB0, B0_scale), B0_polynomial=B0_polynomial)
    signal, _ = simulate(seq, phantom, noise_level=noise_level or None)
    return signal


def get_signal_from_real_system(
    path: str, NRep: int, NRead: int, ncoils: int = 20, heuristic_shift: int = 4
) -> torch.Tensor:
    """MR-zero's wait for a scanner's TWIX file; not available in mr0core.

    Parameters
    ----------
    path
        TWIX file the scanner would write.
    NRep, NRead, ncoils, heuristic_shift
        Repetitions, samples per repetition, receive channels and MR-zero's header offset.

    Raises
    ------
    NotImplementedError
        Always: it needs a scanner writing TWIX files to a shared folder, which mr0core has no
        connection to (and no TWIX reader).
    """
    raise NotImplementedError(
        f"get_signal_from_real_system({path!r}): needs a scanner writing TWIX files to a shared "
        "folder; mr0core has no scanner connection and no TWIX reader"
    )

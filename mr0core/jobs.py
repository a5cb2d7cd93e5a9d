"""The library's end-to-end jobs: simulate a sequence, reconstruct raw data, write the results.

These are plain functions of files and settings, used by the ``mr0`` command (``simulate``,
``recon``, ``demo``), and later by the scheduler's workers and the server's gadgets.
"""

from __future__ import annotations

import copy
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mr0core.phantom.sim_data import SimData
from mr0core.recon import KData, reconstruct
from mr0core.sequence import Sequence, as_sequence
from mr0core.sim import compute_graph, execute_graph
from mr0core.sim.accuracy import (
    MAX_REFINEMENTS,
    accuracy_settings,
    cap_loss,
    needs_refinement,
    refine,
)

__all__ = [
    "SimSettings",
    "add_noise",
    "build_demo_flash",
    "execute_blocks",
    "load_job_phantom",
    "phantom_isocentre_m",
    "reconstruct_file",
    "run_simulation",
    "simulate_signal",
    "voxel_blocks",
    "write_image",
    "write_simulation",
]


@dataclass(frozen=True)
class SimSettings:
    """PDG thresholds (see :func:`mr0core.compute_graph` and :func:`mr0core.execute_graph`).

    ``accuracy`` (set by :meth:`for_accuracy` when no setting is overridden) makes
    :func:`simulate_signal` refine the settings where the pre-pass's state cap cuts off states
    the signal needs (:func:`mr0core.sim.accuracy.needs_refinement`); None: the settings as
    given.
    """

    max_states: int = 200
    min_state_mag: float = 1e-4
    min_emitted: float = 1e-3
    min_latent: float = 1e-3
    accuracy: float | None = None

    @classmethod
    def for_accuracy(cls, accuracy: float, **overrides: float) -> SimSettings:
        """Return settings whose NRMSE stays below ``accuracy`` (``accuracy_settings``).

        ``overrides`` (any field given and not None) replace the mapped values; with none,
        the settings carry ``accuracy`` and are refined where the sequence needs it
        (:func:`simulate_signal`).
        """
        states, state_mag, emitted, latent = accuracy_settings(accuracy)
        values = {"max_states": states, "min_state_mag": state_mag, "min_emitted": emitted,
                  "min_latent": latent}  # fmt: skip
        unknown = set(overrides) - set(values)
        if unknown:
            raise TypeError(f"SimSettings.for_accuracy: unknown settings {sorted(unknown)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        return cls(max_states=int(values["max_states"]), min_state_mag=values["min_state_mag"],
                   min_emitted=values["min_emitted"], min_latent=values["min_latent"],
                   accuracy=None if given else float(accuracy))  # fmt: skip

    def __post_init__(self) -> None:
        if self.max_states < 1:
            raise ValueError(f"max-states must be >= 1, got {self.max_states}")
        if self.accuracy is not None:
            accuracy_settings(self.accuracy)  # the same range check
        for name in ("min_state_mag", "min_emitted", "min_latent"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name.replace('_', '-')} must be a number >= 0, got {value}")


def check_writable(path: Path) -> None:
    """Fail before any work if ``path`` cannot be written (nothing computed is then lost)."""
    if path.is_dir():
        raise IsADirectoryError(f"output {path} is a directory")
    parent = path.parent if fspath(path.parent) else Path(".")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if not _writable(parent):
        raise PermissionError(f"output folder {parent} is not writable")


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def load_job_phantom(spec: str, size: int | None = None, coils: int = 1) -> tuple[Any, str]:
    """Return ``(phantom, name)`` for ``brain``, ``shepp-logan`` or a NIfTI-phantom ``.json``.

    Built-ins are made at ``size`` (default 64) with ``coils`` receive coils; a JSON phantom is
    resampled in-plane to ``size`` when given. The phantom is a :class:`~mr0core.TissueDict`.
    """
    from mr0core.phantom.builtin_phantoms import PHANTOMS
    from mr0core.phantom.tissue_dict import TissueDict

    if size is not None and not 4 <= size <= 1024:
        raise ValueError(f"size must be between 4 and 1024, got {size}")
    if not 1 <= coils <= 64:
        raise ValueError(f"coils must be between 1 and 64, got {coils}")
    if spec in PHANTOMS:
        return PHANTOMS[spec](size=size or 64, coils=coils), f"builtin:{spec}"
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise ValueError(
            f"phantom {spec!r}: expected 'brain', 'shepp-logan' or a NIfTI phantom .json file"
        )
    if not path.is_file():
        raise FileNotFoundError(f"phantom file not found: {path}")
    phantom = TissueDict.load(path)
    if size is not None:
        shape = phantom.combine().PD.shape
        phantom = phantom.interpolate(size, size, int(shape[2]))
    return phantom, path.name


def add_noise(signal: torch.Tensor, std: float, seed: int | None = None) -> torch.Tensor:
    """Return ``signal`` plus complex Gaussian noise of standard deviation ``std``.

    The one noise convention of mr0core, MR-zero's (``util.simulate(noise_level=std)``): each
    sample gets ``std · (a + i b) / √2`` with ``a``, ``b`` standard normal, so ``E|n|² = std²``
    and the real and the imaginary part each have the standard deviation ``std / √2``.

    Parameters
    ----------
    signal
        ``[samples, coils]`` complex signal (any shape, complex dtype).
    std
        The noise's complex standard deviation ``sqrt(E|n|²)``, in the signal's units; 0 adds
        nothing.
    seed
        None: drawn from torch's global generator on the signal's device, as MR-zero does (so
        ``torch.manual_seed`` makes it reproducible, and it equals MR-zero's noise for the same
        seed on the CPU). An int: drawn on the CPU from a generator of that seed and moved to
        the signal's device, the same noise on every device.

    Raises
    ------
    ValueError
        ``std`` negative or not finite, or a real ``signal`` (the values are named).
    """
    std = float(std)
    if not (math.isfinite(std) and std >= 0):
        raise ValueError(f"noise must be a number >= 0, got {std}")
    if not signal.is_complex():
        raise ValueError(f"add_noise: the signal must be complex, got {signal.dtype}")
    if std == 0:
        return signal
    if seed is None:
        noise = torch.randn(signal.shape, dtype=signal.dtype, device=signal.device)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(signal.shape, dtype=signal.dtype, generator=gen).to(signal.device)
    return signal + std * noise


def simulate_signal(
    seq: Sequence,
    data: SimData,
    settings: SimSettings = SimSettings(),
    *,
    noise: float = 0.0,
    seed: int | None = None,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    rf_model: str = "instantaneous",
    sub_slices: int | None = None,
    on_refine: Callable[[SimSettings], None] | None = None,
) -> torch.Tensor:
    """Simulate ``seq`` on ``data`` with PDG and add noise: the one simulation path.

    :func:`run_simulation` (``mr0 simulate``, the server, the scheduler) and
    :func:`mr0core.util.simulate` both end here: the pre-pass graph
    (:func:`mr0core.compute_graph` with ``settings.max_states`` and ``settings.min_state_mag``),
    the main pass (:func:`mr0core.execute_graph` with ``settings.min_emitted`` and
    ``settings.min_latent``), then :func:`add_noise` (``noise``, ``seed``).

    With ``settings.accuracy`` set, the pre-pass is repeated with
    :func:`mr0core.sim.accuracy.refine`'s tighter settings (twice the states, thresholds
    ÷ 10) while its state cap cuts off states the signal needs, at most
    :data:`~mr0core.sim.accuracy.MAX_REFINEMENTS` times; if the cap still does then, a warning
    says so. ``on_refine(settings)`` is called with each refined setting.

    Parameters
    ----------
    seq, data
        The sequence and the simulation data, on one device (where it runs).
    settings
        PDG thresholds.
    noise, seed
        Complex standard deviation of the added noise (``E|n|² = noise²``) and its seed, as
        :func:`add_noise`.
    progress, on_progress
        Print progress; ``on_progress(done, total)`` after each simulated repetition.
    rf_model, sub_slices
        As :func:`mr0core.execute_graph`.
    on_refine
        Called with the settings of each refinement (sidecars record what was used).

    Returns
    -------
    torch.Tensor
        ``[samples, coils]`` complex64 signal on the simulation's device (autograd history
        kept).
    """
    graph = compute_graph(seq, data, settings.max_states, settings.min_state_mag, rf_model=rf_model)
    blocks = 1
    if settings.accuracy is not None:
        graph, settings, blocks = _refined(graph, seq, data, settings, rf_model, progress,
                                           on_refine)  # fmt: skip
    signal = execute_blocks(
        graph, seq, data, settings.min_emitted, settings.min_latent, blocks,
        progress=progress, on_progress=on_progress, rf_model=rf_model, sub_slices=sub_slices,
    )  # fmt: skip
    return add_noise(signal, noise, seed)


def execute_blocks(
    graph: Any,
    seq: Sequence,
    data: SimData,
    min_emitted: float,
    min_latent: float,
    blocks: int = 1,
    *,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    rf_model: str = "instantaneous",
    sub_slices: int | None = None,
) -> torch.Tensor:
    """Run the main pass of ``graph`` in ``blocks`` blocks of voxels and add their signals.

    The state selection (``graph``) does not depend on the voxels, so the blocks' signals add
    up to the one-piece signal; each block repeats the per-repetition work that does not scale
    with the voxels. ``on_progress(done, total)`` counts over all blocks. The other arguments
    are :func:`mr0core.execute_graph`'s. Returns the ``[samples, coils]`` complex64 signal.
    """
    if not 1 <= blocks <= max(data.voxel_count, 1):
        raise ValueError(f"blocks must be from 1 to the {data.voxel_count} voxels, got {blocks}")
    signal: torch.Tensor | None = None
    for b, index in enumerate(torch.arange(data.voxel_count).tensor_split(blocks)):
        part = data if blocks == 1 else data.select(index.to(data.device))
        report = on_progress
        if on_progress is not None and blocks > 1:  # one count over all blocks

            def report(done: int, total: int, b: int = b) -> None:
                assert on_progress is not None
                on_progress(b * total + done, blocks * total)

        block_signal = execute_graph(
            graph, seq, part, min_emitted, min_latent, print_progress=progress,
            progress_callback=report, rf_model=rf_model, sub_slices=sub_slices,
        )  # fmt: skip
        signal = block_signal if signal is None else signal + block_signal
    assert signal is not None
    return signal


REFINE_MEMORY_SHARE = 0.8
"""A refined simulation's estimated peak must stay within this share of the memory available
(host memory, or the GPU's free memory): its main pass runs in blocks of voxels to fit
(:func:`voxel_blocks`, which ``scripts/bench_pdg.py`` also uses for its references)."""


def _refined(
    graph: Any,
    seq: Sequence,
    data: SimData,
    settings: SimSettings,
    rf_model: str,
    progress: bool,
    on_refine: Callable[[SimSettings], None] | None,
) -> tuple[Any, SimSettings, int]:
    """Refine ``settings`` (and recompute ``graph``) while the pre-pass cuts off heard states.

    At most :data:`~mr0core.sim.accuracy.MAX_REFINEMENTS` times. A refined main pass that
    would not fit :data:`REFINE_MEMORY_SHARE` of the available memory (estimated by
    :mod:`mr0core.sim.memory`) runs in blocks of voxels, whose signals add up (the state
    selection does not depend on the voxels); a refinement whose graph alone would not fit, or
    that would need more than :data:`MAX_VOXEL_BLOCKS` blocks, is not made, and a warning says
    where it stopped short. Returns the graph, its settings and the number of voxel blocks.
    """
    target = float(settings.accuracy or 0.0)
    blocks = 1
    for step in range(MAX_REFINEMENTS + 1):
        if not needs_refinement(graph, target):
            break
        short = (f"accuracy {target:g} may not be met: at {settings.max_states} states the "
                 f"pre-pass still cuts off states with latent signal (mean "
                 f"{cap_loss(graph):.2g} per repetition)")  # fmt: skip
        if step == MAX_REFINEMENTS:
            warnings.warn(f"{short}; give max_states (--max-states) higher to simulate them",
                          stacklevel=3)  # fmt: skip
            break
        states, _, emitted, latent = refine(
            (settings.max_states, settings.min_state_mag, settings.min_emitted,
             settings.min_latent)
        )  # fmt: skip
        finer = replace(settings, max_states=states, min_emitted=emitted, min_latent=latent)
        if progress:
            print(f"pre-pass: the state cap cut off heard states; again with {states} states, "
                  f"thresholds {emitted:.2g}")  # fmt: skip
        finer_graph = compute_graph(seq, data, states, finer.min_state_mag, rf_model=rf_model)
        need, fits = voxel_blocks(finer_graph, seq, data, finer)
        if fits is None:
            warnings.warn(f"{short}; {states} states (about {need / 2**30:.1f} GiB in one "
                          f"piece) would not fit the available memory even in "
                          f"{MAX_VOXEL_BLOCKS} blocks of voxels", stacklevel=3)  # fmt: skip
            break
        graph, settings, blocks = finer_graph, finer, fits
        if on_refine is not None:
            on_refine(settings)
    return graph, settings, blocks


MAX_VOXEL_BLOCKS = 64
"""A refined main pass runs in at most this many blocks of voxels (each repeats the per
repetition work that does not scale with the voxels)."""


def voxel_blocks(
    graph: Any, seq: Sequence, data: SimData, settings: SimSettings
) -> tuple[int, int | None]:
    """Return ``(bytes, blocks)``: the estimated peak and the voxel blocks that make it fit.

    The estimate is :mod:`mr0core.sim.memory`'s for ``graph``'s main pass at ``settings``'
    thresholds; run it with :func:`execute_blocks`.

    ``blocks`` is None where even :data:`MAX_VOXEL_BLOCKS` blocks would not fit
    :data:`REFINE_MEMORY_SHARE` of the available memory (host, or the GPU's free memory).
    """
    from mr0core.sim.memory import (
        MAIN_FACTOR,
        device_kind,
        graph_bytes,
        host_memory_available,
        main_pass_bytes,
        pdg_load_from_graph,
    )

    kind = device_kind(str(data.device))
    load = pdg_load_from_graph(graph, seq, data, settings.min_emitted, settings.min_latent)
    main: float = main_pass_bytes(load)
    fixed = 0
    if kind == "cuda":
        available: int | None = int(torch.cuda.mem_get_info(data.device)[0])
    else:
        available, fixed, main = host_memory_available(), graph_bytes(load), MAIN_FACTOR * main
    need = int(fixed + main)
    if available is None:
        return need, 1
    room = REFINE_MEMORY_SHARE * available - fixed
    if main <= room:
        return need, 1
    blocks = math.ceil(main / room) if room > 0 else MAX_VOXEL_BLOCKS + 1
    if blocks > min(MAX_VOXEL_BLOCKS, data.voxel_count):
        return need, None
    return need, blocks


def run_simulation(
    seq: Any,
    phantom: Any,
    settings: SimSettings = SimSettings(),
    device: str | None = None,
    noise: float = 0.0,
    progress: bool = True,
    seed: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    rf_model: str = "instantaneous",
    sub_slices: int | None = None,
    motion: Any = None,
    on_refine: Callable[[SimSettings], None] | None = None,
) -> torch.Tensor:
    """Simulate ``seq`` on ``phantom`` with PDG; return the signal ``[samples, coils]`` complex64.

    ``seq``: a :class:`~mr0core.Sequence`, ``.seq`` path or ``pypulseq.Sequence``
    (:func:`~mr0core.sequence.as_sequence`). ``phantom``: anything with ``build()`` (a phantom)
    or :class:`~mr0core.phantom.SimData`.

    ``motion``: a ``phantom_motion`` (e.g. :class:`mr0core.sim.motion.RigidMotion` or
    ``MotionLog``) the subject moves by; the phantom itself is not changed.

    ``rf_model``: ``"instantaneous"`` or ``"shaped"``; ``sub_slices``: with ``"shaped"``, the
    sub-slices through a 2-D phantom's thickness (default automatic; both as
    :func:`mr0core.sim.execute_graph`).

    ``device`` ``"cuda"`` needs a GPU (a clear error otherwise); default CPU. ``noise`` adds
    complex Gaussian noise of that complex standard deviation (``E|n|² = noise²``, each of the
    real and imaginary part ``noise / √2``: :func:`add_noise`, MR-zero's convention), seeded by
    ``seed`` (the same noise on every device). ``on_progress(done, total)`` is called after
    each simulated repetition; ``on_refine(settings)`` with each refined setting
    (:func:`simulate_signal`). The signal is returned on the CPU, detached.
    """
    if device not in (None, "cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available")
    if not (math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a number >= 0, got {noise}")
    seq = as_sequence(seq)
    data = phantom.build() if hasattr(phantom, "build") else phantom
    if motion is not None:
        data = copy.copy(data)
        data.phantom_motion = motion
    if device == "cuda":
        data, seq = data.cuda(), seq.cuda()
    signal = simulate_signal(
        seq, data, settings, noise=noise, seed=seed, progress=progress, on_progress=on_progress,
        rf_model=rf_model, sub_slices=sub_slices, on_refine=on_refine,
    )  # fmt: skip
    result: torch.Tensor = signal.detach().cpu()
    return result


def image_volume(image: torch.Tensor) -> torch.Tensor:
    """``[volumes, contrasts, slices, x, y, z]`` → ``[x, y, slices·z(, volumes·contrasts)]``."""
    v, c, s, nx, ny, nz = image.shape
    vol = image.permute(3, 4, 2, 5, 0, 1).reshape(nx, ny, s * nz, v * c)
    return vol[..., 0] if v * c == 1 else vol


def write_image(
    rec: Any,
    out: str | PathLike[str],
    *,
    png: str | PathLike[str] | None = None,
    sidecar: dict[str, Any] | None = None,
    centre_m: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> list[Path]:
    """Write a :class:`~mr0core.recon.Reconstruction` as NIfTI (+ JSON sidecar) and PNG.

    The affine follows the shared convention: voxel ``n // 2`` at the isocentre, which sits at
    ``centre_m`` (RAS+, m) in world coordinates; for a simulation that is the world position of
    the phantom's voxel ``n // 2`` (:func:`phantom_isocentre_m`). Returns the files written.
    """
    from mr0core.io.nifti import image_affine, sidecar_path, write_nifti
    from mr0core.io.png import write_png

    vol = image_volume(rec.image.detach().cpu().float())
    nz = vol.shape[2]
    fov = (rec.fov_m[0], rec.fov_m[1], rec.fov_m[2] * nz / max(rec.matrix[2], 1))
    affine = image_affine((vol.shape[0], vol.shape[1], nz), fov, centre_m=centre_m)
    written = [write_nifti(out, vol, affine, sidecar=sidecar)]
    if sidecar is not None:
        written.append(sidecar_path(out))
    if png is not None:
        title = (sidecar or {}).get("SeriesDescription")
        written.append(write_png(png, vol, title=title))
    return written


PRIVATE_FILE_MODE = 0o600
"""Mode of the files :func:`write_simulation` writes: simulations of a twin are patient data."""


def write_simulation(
    signal: torch.Tensor,
    seq: Sequence,
    phantom: Any,
    phantom_name: str,
    settings: SimSettings,
    *,
    signal_path: str | PathLike[str] | None = None,
    image_path: str | PathLike[str] | None = None,
    png_path: str | PathLike[str] | None = None,
    noise: float = 0.0,
    seed: int | None = None,
    motion: Any = None,
    series_description: str | None = None,
) -> list[Path]:
    """Write a simulation's signal, image (NIfTI or DICOM, with its BIDS sidecar) and PNG.

    The one writer of ``mr0 simulate`` and ``mr0 demo``. Every file it writes is private
    (mode 0600; a DICOM series is a 0700 folder of 0600 files).

    Parameters
    ----------
    signal
        ``[samples, coils]`` complex simulated signal (what :func:`run_simulation` returns).
    seq
        The simulated sequence (geometry, parameters and labels of the reconstruction).
    phantom, phantom_name
        The simulated phantom (its ``system.B0`` and voxel ``n // 2``'s world position go into
        the sidecar and the affine) and its name (e.g. ``"builtin:brain"``).
    settings, noise, seed, motion
        The simulation's settings, noise standard deviation and seed, and motion model (with
        ``describe()``), as recorded in the sidecar.
    signal_path
        ``.npy``: the complex64 signal; ``.mrd`` or ``.h5``: ISMRMRD raw data
        (:func:`mr0core.io.mrd.sig_to_mrd`). None: not written.
    image_path
        The reconstruction (:func:`mr0core.recon.reconstruct`): ``.nii``/``.nii.gz`` with its
        JSON sidecar (:func:`write_image`), or a DICOM series folder (a name that
        :func:`mr0core.io.dicom_out.is_dicom_target` accepts; labelled SIMULATED, described as
        ``series_description``, default ``"mr0 simulate <phantom_name>"``).
    png_path
        A PNG preview of the reconstruction.

    Returns
    -------
    list of pathlib.Path
        What was written, in order: signal, image (and its sidecar, or the DICOM folder), PNG.

    Raises
    ------
    ValueError
        ``signal_path`` does not end in ``.npy``, ``.mrd`` or ``.h5``.
    """
    from mr0core.io.bids import bids_sidecar
    from mr0core.io.params import sequence_parameters
    from mr0core.io.png import write_png  # (matplotlib: only where a PNG is written)

    written: list[Path] = []
    if signal_path is not None:
        out = Path(signal_path)
        suffix = out.suffix.lower()
        if suffix == ".npy":
            np.save(out, signal.detach().cpu().numpy().astype(np.complex64))
        elif suffix in (".mrd", ".h5"):
            from mr0core.io.mrd import sig_to_mrd  # (h5py and ismrmrd: only for MRD output)

            sig_to_mrd(out, signal, seq)
        else:
            raise ValueError(f"the signal goes to .npy, .mrd or .h5, got {out.name!r}")
        written.append(out)
    if image_path is not None or png_path is not None:
        rec = reconstruct(KData.from_sequence(signal, seq))
        system = getattr(phantom, "system", None)
        sidecar = bids_sidecar(
            sequence_parameters(seq), phantom_name=phantom_name,
            sim_settings=settings_dict(settings, noise, seed),
            field_strength_T=None if system is None else system.B0,
            matrix=rec.matrix, fov_m=rec.fov_m, extra={
                "ReconstructionMethod": rec.method,
                **({"SimulatedMotion": motion.describe()} if motion is not None else {}),
            },
        )  # fmt: skip
        centre = phantom_isocentre_m(phantom)
        if image_path is not None:
            from mr0core.io.dicom_out import is_dicom_target, write_recon_dicom  # (pydicom)

            if is_dicom_target(image_path):  # a series labelled SIMULATED, on the NIfTI's grid
                series = write_recon_dicom(
                    rec, image_path, simulated=True, sidecar=sidecar, centre_m=centre,
                    series_description=series_description or f"mr0 simulate {phantom_name}",
                )  # fmt: skip
                written.append(series.folder)
                if png_path is not None:
                    written.append(write_png(png_path, image_volume(rec.image)))
            else:
                written += write_image(rec, image_path, png=png_path, sidecar=sidecar,
                                       centre_m=centre)  # fmt: skip
        elif png_path is not None:
            written.append(write_png(png_path, image_volume(rec.image)))
    for path in written:
        if path.is_file():
            os.chmod(path, PRIVATE_FILE_MODE)
    return written


def phantom_isocentre_m(phantom: Any) -> tuple[float, float, float]:
    """World position (RAS+, m) of a grid phantom's voxel ``n // 2``.

    The simulation places that voxel at the isocentre (MR-zero's grid convention), so images of
    the simulation belong there in the phantom's world coordinates.
    """
    grid = phantom.combine() if hasattr(phantom, "combine") else phantom
    affine = getattr(grid, "affine", None)
    if affine is None:
        return (0.0, 0.0, 0.0)
    centre = np.array([n // 2 for n in grid.PD.shape] + [1.0])
    ras_mm = np.asarray(affine, dtype=np.float64) @ centre
    return (float(ras_mm[0]) / 1e3, float(ras_mm[1]) / 1e3, float(ras_mm[2]) / 1e3)


def reconstruct_file(path: str | PathLike[str], method: str = "auto") -> tuple[Any, dict[str, Any]]:
    """Read ISMRMRD raw data and reconstruct it; return ``(Reconstruction, sidecar)``."""
    from mr0core.io.bids import bids_sidecar
    from mr0core.io.mrd import read_mrd
    from mr0core.recon import reconstruct

    kdata = read_mrd(path)
    rec = reconstruct(kdata, method=method)
    sidecar = bids_sidecar(None, matrix=rec.matrix, fov_m=rec.fov_m, extra=_header_params(kdata))
    sidecar["ReconstructionMethod"] = rec.method
    return rec, sidecar


def _header_params(kdata: Any) -> dict[str, Any]:
    """BIDS keys from an ISMRMRD header (TR/TE/TI in ms there, s here)."""
    out: dict[str, Any] = {}
    head = getattr(kdata, "header", None)
    seq = getattr(head, "sequenceParameters", None)
    for key, name, scale in (
        ("TR", "RepetitionTime", 1e-3),
        ("TE", "EchoTime", 1e-3),
        ("TI", "InversionTime", 1e-3),
        ("flipAngle_deg", "FlipAngle", 1.0),
    ):
        values = getattr(seq, key, None) if seq is not None else None
        if values:
            out[name] = float(values[0]) * scale
    system = getattr(head, "acquisitionSystemInformation", None)
    field = getattr(system, "systemFieldStrength_T", None) if system is not None else None
    if field:
        out["MagneticFieldStrength"] = float(field)
    info = getattr(head, "measurementInformation", None)
    seq_name = getattr(info, "sequenceName", None) if info is not None else None
    if seq_name:
        out["PulseSequenceName"] = str(seq_name)
    return out


def build_demo_flash(n: int = 64, fov_m: float = 0.22) -> Any:
    """Build a 2-D RF-spoiled FLASH with PyPulseq (TE 5 ms, TR 12 ms, 15°); return pypulseq's.

    ``n`` × ``n`` Cartesian, 5 mm slice, readout along x, phase encoding along y.
    """
    import pypulseq as pp

    system = pp.Opts(
        max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", rf_ringdown_time=20e-6,
        rf_dead_time=100e-6, adc_dead_time=10e-6,
    )  # fmt: skip
    seq = pp.Sequence(system)
    te, tr, flip = 5e-3, 12e-3, 15.0
    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=math.radians(flip), duration=3e-3, slice_thickness=5e-3, apodization=0.42,
        time_bw_product=4, system=system, return_gz=True, delay=system.rf_dead_time,
    )  # fmt: skip
    dk = 1 / fov_m
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=3.2e-3, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    areas = (np.arange(n) - n // 2) * dk
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * dk, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / 5e-3, system=system)
    delay_te = te - pp.calc_duration(gx_pre) - gz.fall_time - gz.flat_time / 2
    delay_te -= pp.calc_duration(gx) / 2
    delay_te = math.ceil(delay_te / system.grad_raster_time) * system.grad_raster_time
    delay_tr = tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - delay_te
    delay_tr -= pp.calc_duration(gx) + pp.calc_duration(gx_spoil, gz_spoil)
    delay_tr = math.ceil(delay_tr / system.grad_raster_time) * system.grad_raster_time
    if delay_te < 0 or delay_tr < 0:
        raise ValueError(f"demo FLASH timing does not fit (n={n})")
    rf_phase, rf_inc = 0.0, 0.0
    for i in range(-10, n):  # 10 dummy repetitions to approach the steady state
        rf.phase_offset = math.radians(rf_phase)
        adc.phase_offset = math.radians(rf_phase)
        rf_inc = (rf_inc + 117.0) % 360.0
        rf_phase = (rf_phase + rf_inc) % 360.0
        seq.add_block(rf, gz)
        gy_pre = pp.make_trapezoid(
            channel="y", area=areas[max(i, 0)], duration=pp.calc_duration(gx_pre), system=system
        )
        seq.add_block(gx_pre, gy_pre, gz_reph)
        seq.add_block(pp.make_delay(delay_te))
        if i >= 0:
            seq.add_block(gx, adc)
        else:
            seq.add_block(gx)
        gy_post = pp.make_trapezoid(
            channel="y", area=-areas[max(i, 0)], duration=pp.calc_duration(gx_pre), system=system
        )
        seq.add_block(gx_spoil, gy_post, gz_spoil)
        seq.add_block(pp.make_delay(delay_tr))
    seq.set_definition("FOV", [fov_m, fov_m, 5e-3])
    seq.set_definition("Name", "mr0_demo_flash")
    seq.set_definition("TE", te)
    seq.set_definition("TR", tr)
    seq.set_definition("FlipAngle", flip)
    return seq


def settings_dict(settings: SimSettings, noise: float, seed: int | None) -> dict[str, Any]:
    """Return the simulation settings as recorded in sidecars."""
    out: dict[str, Any] = asdict(settings)
    out["noise_std"] = noise
    if seed is not None:
        out["seed"] = seed
    return out

"""One entry point that reconstructs any :class:`~mr0core.recon.kdata.KData` by its trajectory.

* Cartesian, fully sampled or partial Fourier: zero-filled FFT (:func:`.cartesian.reco_cartesian`).
* Cartesian, regularly undersampled along y with a fully sampled centre and several coils:
  CG-SENSE (:func:`.sense.cg_sense`) with maps from those calibration lines, or, given a
  separate reference scan (``reference=``, e.g. a coil calibration pre-scan of the same FOV),
  maps from that scan (:func:`.sense.sensitivities_from_reference`), calibration lines or not.
* Radial and spiral: NUFFT with Pipe density compensation (:func:`.nufft.reco_nufft`).
* Anything else with a known trajectory: the adjoint DFT (:func:`.adjoint.reco_adjoint`).

The command line (``mr0 simulate --recon``, ``mr0 recon``) and the server's recon gadgets call this.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .adjoint import reco_adjoint
from .cartesian import cartesian_kspace, kspace_to_image, reco_cartesian
from .coils import rss
from .fourier import ifftc
from .kdata import KData, KDataError
from .nufft import reco_nufft
from .sense import cg_sense, sensitivities_from_calibration, sensitivities_from_reference

__all__ = ["METHODS", "Reconstruction", "reconstruct"]

METHODS = ("auto", "fft", "sense", "nufft", "adjoint")
_MIN_CALIBRATION_LINES = 8


@dataclass
class Reconstruction:
    """A reconstructed image series and its geometry.

    Attributes
    ----------
    image
        ``[volumes, contrasts, slices, x, y, z]`` real magnitude (coils combined), in the shared
        spatial convention: voxel ``i`` of ``n`` sits at ``(i - n // 2) · fov / n``.
    fov_m
        Field of view ``(x, y, z)`` in m (z: slice thickness for 2-D data).
    matrix
        ``(x, y, z)``.
    method
        What was run: ``"fft"``, ``"sense"``, ``"nufft"`` or ``"adjoint"``.
    """

    image: torch.Tensor
    fov_m: tuple[float, float, float]
    matrix: tuple[int, int, int]
    method: str

    @property
    def voxel_size_m(self) -> tuple[float, float, float]:
        """Voxel edge lengths ``(x, y, z)`` in m."""
        return tuple(f / n for f, n in zip(self.fov_m, self.matrix, strict=True))  # type: ignore[return-value]


def _calibration_lines(mask_y: torch.Tensor) -> int:
    """Length of the fully sampled run of lines around the centre ``ny // 2`` of ``mask_y``."""
    n = len(mask_y)
    c = n // 2
    if not bool(mask_y[c]):
        return 0
    lo = c
    while lo > 0 and bool(mask_y[lo - 1]):
        lo -= 1
    hi = c
    while hi < n - 1 and bool(mask_y[hi + 1]):
        hi += 1
    return hi - lo + 1


def _is_undersampled(mask_y: torch.Tensor) -> bool:
    """Gaps inside the sampled range of lines (partial Fourier leaves none)."""
    lines = torch.nonzero(mask_y).flatten()
    if len(lines) < 2:
        return False
    span = int(lines[-1] - lines[0]) + 1
    return len(lines) < 0.9 * span


def _hybrid(ksp: torch.Tensor) -> torch.Tensor:
    """Inverse FFT along kz (axis 4 of ``[v, c, s, coils, nz, ny, nx]``)."""
    return ifftc(ksp, 4, norm="forward")


def _reference_images(
    kdata: KData, grid_fov: tuple[float, float, float], reference: KData
) -> torch.Tensor:
    """Coil images ``[s, z, coils, ny, nx]`` of a reference scan, checked against ``kdata``."""
    if reference.trajectory != "cartesian":
        raise KDataError(f"the reference scan must be Cartesian, got {reference.trajectory!r}")
    if reference.n_coils != kdata.n_coils:
        raise KDataError(
            f"the reference scan has {reference.n_coils} coils, the data {kdata.n_coils}"
        )
    ref = cartesian_kspace(reference, include_calibration=True)
    for axis in (0, 1):
        a, b = ref.fov_m[axis], grid_fov[axis]
        if abs(a - b) > 0.01 * max(a, b):
            raise KDataError(
                f"the reference scan's FOV {tuple(round(f * 1e3, 1) for f in ref.fov_m[:2])} mm "
                f"differs from the data's {tuple(round(f * 1e3, 1) for f in grid_fov[:2])} mm"
            )
    hybrid = _hybrid(ref.kspace)[0, 0]  # first volume and contrast: [s, coils, nz, ny, nx]
    # a Hann window against the ringing of a low-resolution scan (as for calibration lines),
    # which would otherwise spread into the maps' support once resampled to the scan's matrix
    for axis in (-2, -1):
        n = hybrid.shape[axis]
        pos = torch.arange(n, device=hybrid.device, dtype=torch.float32) - n // 2
        window = torch.cos(torch.pi * pos / (n + 1)) ** 2
        view = [1] * hybrid.dim()
        view[axis] = n
        hybrid = hybrid * window.reshape(view)
    images = ifftc(hybrid, (-2, -1), norm="ortho")
    return images.permute(0, 2, 1, 3, 4)  # [s, nz, coils, ny, nx]


def _sense(kdata: KData, max_iter: int, reference: KData | None = None) -> Reconstruction | None:
    """CG-SENSE of regularly undersampled 2-D (or kz-complete 3-D) data; None if not applicable.

    With a ``reference`` scan the maps come from it, and any multi-coil data are reconstructed.
    """
    grid = cartesian_kspace(kdata, include_calibration=True)
    ksp, mask = grid.kspace, grid.mask  # [v, c, s, coils, nz, ny, nx], [v, c, s, nz, ny, nx]
    nz = ksp.shape[4]
    ref_images = None
    if reference is not None:
        ref_images = _reference_images(kdata, grid.fov_m, reference)
        if ref_images.shape[1] not in (1, nz) or (nz > 1 and ref_images.shape[1] != nz):
            raise KDataError(f"the reference scan has {ref_images.shape[1]} partitions, not {nz}")
        if ref_images.shape[0] not in (1, ksp.shape[2]):
            raise KDataError(
                f"the reference scan has {ref_images.shape[0]} slices, the data {ksp.shape[2]}"
            )
    else:
        if ksp.shape[3] < 2:
            return None
        mask_y = mask.any(dim=-1).any(dim=-2).all(dim=(0, 1, 2))  # [ny]: sampled in every volume
        if not _is_undersampled(mask_y):
            return None
        n_calib = _calibration_lines(mask_y)
        kz_full = nz == 1 or bool(mask.any(dim=(-2, -1)).all())
        if n_calib < _MIN_CALIBRATION_LINES or not kz_full:
            return None
    if nz > 1 and not bool(mask.any(dim=(-2, -1)).all()):
        raise KDataError("SENSE with a reference scan needs every kz partition sampled")
    # kz fully sampled: go to image space along z, then 2-D SENSE per partition
    hybrid = _hybrid(ksp)
    images = torch.zeros(
        (*ksp.shape[:3], grid.matrix[0], grid.matrix[1], nz), dtype=torch.float32, device=ksp.device
    )
    for v in range(ksp.shape[0]):
        for c in range(ksp.shape[1]):
            for s in range(ksp.shape[2]):
                m2 = mask[v, c, s].any(dim=0)  # [ny, nx]
                for z in range(nz):
                    k2 = hybrid[v, c, s, :, z]  # [coils, ny, nx]
                    if ref_images is not None:
                        ref = ref_images[min(s, ref_images.shape[0] - 1), z]
                        maps = sensitivities_from_reference(ref, shape=tuple(k2.shape[-2:]))
                    else:
                        maps = sensitivities_from_calibration(k2, n_calib, axis=-2)
                    im = cg_sense(k2, m2, maps, max_iter=max_iter)  # [ny, nx]
                    images[v, c, s, :, :, z] = im.abs().T
    return Reconstruction(images, grid.fov_m, grid.matrix, "sense")


def reconstruct(
    kdata: KData,
    *,
    method: str = "auto",
    coil_combine: str = "rss",
    sense_iter: int = 30,
    reference: KData | None = None,
) -> Reconstruction:
    """Reconstruct raw data by its trajectory (see the module docstring).

    Parameters
    ----------
    kdata
        Simulated (:meth:`KData.from_sequence`) or measured (:func:`mr0core.io.mrd.read_mrd`) data.
    method
        One of :data:`METHODS`; ``"auto"`` chooses by trajectory and sampling.
    coil_combine
        ``"rss"`` or ``"walsh"`` (adaptive) for the FFT and NUFFT paths.
    sense_iter
        Conjugate-gradient iterations of CG-SENSE.
    reference
        A separate Cartesian coil reference scan of the same FOV and coils (any matrix): with
        ``method="sense"`` the coil maps come from it (no calibration lines needed).

    Returns
    -------
    Reconstruction
        Magnitude images ``[volumes, contrasts, slices, x, y, z]`` with their geometry.

    Raises
    ------
    KDataError
        If the method does not fit the data (e.g. ``"fft"`` on radial data, or no trajectory for
        ``"nufft"``/``"adjoint"``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if coil_combine not in ("rss", "walsh"):
        raise ValueError(f"coil_combine must be 'rss' or 'walsh', got {coil_combine!r}")
    cartesian = kdata.trajectory == "cartesian"
    if method == "auto":
        method = (
            "sense"
            if cartesian
            else "nufft"
            if kdata.trajectory in ("radial", "spiral")
            else "adjoint"
        )
    if reference is not None and method != "sense":
        raise ValueError(f"a reference scan is used by method 'sense', not {method!r}")
    if method == "sense":
        if not cartesian:
            raise KDataError(f"CG-SENSE needs Cartesian data, got {kdata.trajectory!r}")
        done = _sense(kdata, sense_iter, reference)
        if done is not None:
            return done
        method = "fft"
    if method == "fft":
        grid = cartesian_kspace(kdata)
        if coil_combine == "rss":
            image = rss(kspace_to_image(grid.kspace), dim=3)
        else:
            image = reco_cartesian(kdata, coil_combine="walsh").abs()
        return Reconstruction(image, grid.fov_m, grid.matrix, "fft")
    if kdata.kspace is None:
        raise KDataError(f"{method} needs the k-space trajectory, and these data carry none")
    contrasts = torch.unique(kdata.idx["ECO"])
    images = []
    for eco in contrasts:
        readouts = torch.nonzero(kdata.idx["ECO"] == eco).flatten()
        rows = torch.cat(
            [
                torch.arange(
                    int(kdata.readout_start[r]),
                    int(kdata.readout_start[r] + kdata.readout_length[r]),
                )
                for r in readouts.tolist()
            ]
        ).to(kdata.signal.device)
        sig, ksp = kdata.signal[rows], kdata.kspace[rows]
        if method == "nufft":
            combine = "adaptive" if coil_combine == "walsh" else "rss"
            im = reco_nufft(sig, ksp, kdata.recon_matrix, kdata.recon_fov_m, coil_combine=combine)
        else:
            im = reco_adjoint(sig, ksp, resolution=kdata.recon_matrix, FOV=kdata.recon_fov_m)
        images.append(im.abs().float())
    image = torch.stack(images)[None, :, None]  # [1, contrasts, 1, x, y, z]
    return Reconstruction(image, kdata.recon_fov_m, kdata.recon_matrix, method)

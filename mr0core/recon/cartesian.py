"""Cartesian FFT reconstruction of :class:`~mr0core.recon.kdata.KData`.

Conventions (shared by all image code of mr0core)
-------------------------------------------------
- k-space arrays are ``[..., nz, ny, nx]``; grid point ``j`` of an axis with ``n`` points sits at
  ``(j - n // 2) Δk``, so k = 0 is at ``n // 2``.
- Images are ``[..., x, y, z]``; voxel ``i`` sits at ``(i - n // 2) · fov / n`` m, the phantom
  convention. With the simulator's signal model ``s(k) = Σ ρ(r) exp(-2πi k·r)``,
  :func:`kspace_to_image` is the plain adjoint sum ``ρ(r) = Σ_k s(k) exp(+2πi k·r)`` (no 1/N),
  so a fully sampled grid of ``N`` samples returns ``N · ρ`` and the result equals
  :func:`mr0core.recon.adjoint.reco_adjoint` on the same grid.

:func:`reco_cartesian` returns images ``[volumes, contrasts, slices, (coils,) x, y, z]``;
:func:`cartesian_kspace` the zero-filled multi-coil k-space and sampling mask behind them, the
input of CG-SENSE (``kspace[v, c, s]`` is ``[coils, nz, ny, nx]``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from mr0core.recon.coils import rss
from mr0core.recon.fourier import fftc, ifftc
from mr0core.recon.kdata import NON_IMAGING, AcqFlag, KData, KDataError, grid_offset
from mr0core.recon.preprocess import prewhiten_kdata, remove_readout_oversampling

__all__ = [
    "CartesianKSpace",
    "cartesian_kspace",
    "image_to_kspace",
    "kspace_to_image",
    "reco_cartesian",
]

_COIL_COMBINE = ("rss", "none", "walsh")


@dataclass
class CartesianKSpace:
    """Zero-filled Cartesian k-space on the reconstruction grid.

    Attributes
    ----------
    kspace
        ``[volumes, contrasts, slices, coils, nz, ny, nx]`` complex: the samples placed on the
        grid, repeated samples (``AVG``, repeated lines) averaged, zeros where nothing was
        measured. Readout oversampling is already removed (``nx`` is the recon matrix) and a
        sampling offset of a fraction of a grid step (e.g. Pulseq's half-step readouts) is
        interpolated onto the grid, exactly for objects inside the FOV.
    mask
        ``[volumes, contrasts, slices, nz, ny, nx]`` bool: grid points that were measured.
    volumes
        ``[volumes, 3]`` int64: the (REP, SET, PHS) counters of each volume.
    contrasts, slices
        ``[contrasts]`` and ``[slices]`` int64: the ECO and SLC counters of those axes.
    fov_m
        Reconstructed field of view ``(x, y, z)`` in m (z: slice thickness for 2-D data).
    matrix
        Reconstructed matrix ``(x, y, z)``.
    """

    kspace: torch.Tensor
    mask: torch.Tensor
    volumes: torch.Tensor
    contrasts: torch.Tensor
    slices: torch.Tensor
    fov_m: tuple[float, float, float]
    matrix: tuple[int, int, int]

    @property
    def voxel_size_m(self) -> tuple[float, float, float]:
        """Voxel edge lengths ``(x, y, z)`` in m."""
        return (
            self.fov_m[0] / self.matrix[0],
            self.fov_m[1] / self.matrix[1],
            self.fov_m[2] / self.matrix[2],
        )


# -- centred FFTs ------------------------------------------------------------------------------


def kspace_to_image(kspace: torch.Tensor) -> torch.Tensor:
    """Centred inverse FFT of ``[..., nz, ny, nx]`` k-space to ``[..., x, y, z]`` images.

    Unnormalised: the image is the plain sum ``Σ_k s(k) exp(+2πi k·r)`` (see module docstring;
    :func:`mr0core.recon.fourier.ifftc` with ``norm="forward"``).
    """
    x = ifftc(kspace, (-3, -2, -1), norm="forward")
    return x.permute(*range(x.ndim - 3), x.ndim - 1, x.ndim - 2, x.ndim - 3)


def image_to_kspace(image: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`kspace_to_image`: ``[..., x, y, z]`` images to ``[..., nz, ny, nx]``."""
    x = image.permute(*range(image.ndim - 3), image.ndim - 1, image.ndim - 2, image.ndim - 3)
    return fftc(x, (-3, -2, -1), norm="forward")


# -- gridding ----------------------------------------------------------------------------------


def _imaging_readouts(kdata: KData, include_calibration: bool) -> torch.Tensor:
    keep = ~kdata.has_flag(AcqFlag(NON_IMAGING))
    if not include_calibration:
        calib_only = kdata.has_flag(AcqFlag.IS_PARALLEL_CALIBRATION) & ~kdata.has_flag(
            AcqFlag.IS_PARALLEL_CALIBRATION_AND_IMAGING
        )
        keep &= ~calib_only
    return keep


def _compact(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    uniq, inverse = torch.unique(values, return_inverse=True, dim=0 if values.ndim > 1 else None)
    return uniq, inverse


def _shift_axis(k: torch.Tensor, dim: int, delta: float) -> torch.Tensor:
    """Move samples by ``-delta`` grid steps along ``dim`` (a phase ramp in image space)."""
    n = k.shape[dim]
    img = ifftc(k, dim, norm="forward")
    real = torch.float64 if k.dtype == torch.complex128 else torch.float32
    i = torch.arange(n, device=k.device, dtype=real) - n // 2
    phase = torch.polar(torch.ones_like(i), 2 * np.pi * delta * i / n).to(k.dtype)
    shape = [1] * k.ndim
    shape[dim] = n
    return fftc(img * phase.reshape(shape), dim, norm="forward")


def cartesian_kspace(
    kdata: KData, *, include_calibration: bool = False, prewhitening: bool = True
) -> CartesianKSpace:
    """Place the samples of Cartesian raw data on the k-space grid (zero-filled).

    Parameters
    ----------
    kdata
        Raw data with ``trajectory == "cartesian"``.
    include_calibration
        Also use readouts flagged as parallel-imaging calibration only (by default they are left
        out of the image k-space; calibration-and-imaging readouts are always used).
    prewhitening
        Whiten the coils with :attr:`KData.noise` when there is noise data
        (:func:`mr0core.recon.preprocess.prewhiten_kdata`, with the dwell-time scaling).

    Returns
    -------
    CartesianKSpace
        k-space ``[volumes, contrasts, slices, coils, nz, ny, nx]`` and mask.

    Notes
    -----
    Prewhitening comes first, then readout oversampling is removed readout by readout
    (:func:`mr0core.recon.preprocess.remove_readout_oversampling`). Readout samples are then
    placed by their kx (``round(kx · fov_x - δ)``, δ the common sub-step
    offset) when :attr:`KData.kspace` is set, else by ``sample - center_sample`` (reversed for
    ``IS_REVERSE`` readouts). Lines and partitions come from ``LIN - center_line`` and
    ``PAR - center_partition``; k = 0 lands on ``n // 2``. Missing lines and samples (partial
    Fourier, asymmetric echoes) stay zero. Navigator, phase-correction, dummy and other
    non-imaging readouts are ignored.

    Raises
    ------
    KDataError
        If the data are not Cartesian, no imaging readout is left, the recon matrix is larger
        than the encoded one along the readout, or the noise data cannot whiten the coils.
    """
    if kdata.trajectory != "cartesian":
        raise KDataError(
            f"reco_cartesian needs Cartesian data, but the trajectory is {kdata.trajectory!r}; "
            "use mr0core.recon.adjoint.reco_adjoint (or a NUFFT) instead"
        )
    device = kdata.device
    sel = _imaging_readouts(kdata, include_calibration)
    if not bool(sel.any()):
        raise KDataError("no imaging readouts (all are noise, calibration or navigator data)")
    if kdata.recon_matrix[0] > kdata.encoded_matrix[0]:
        raise KDataError(
            f"the recon matrix {kdata.recon_matrix} is larger than the encoded matrix "
            f"{kdata.encoded_matrix} along the readout; interpolation is not supported"
        )
    data = kdata.select(sel)
    if data.signal.dtype not in (torch.complex64, torch.complex128):
        data = replace(data, signal=data.signal.to(torch.complex64))
    if prewhitening:
        data = prewhiten_kdata(data)
    data = remove_readout_oversampling(data)
    signal = data.signal
    nx, ny, nz = data.encoded_matrix
    real = torch.float64 if signal.dtype == torch.complex128 else torch.float32

    readout = data.sample_readout()
    within = torch.arange(signal.shape[0], device=device) - data.readout_start[readout]
    delta = [0.0, 0.0, 0.0]
    if data.kspace is not None:
        k = data.kspace.detach().to(torch.float64)
        u = (k[:, 0] * data.encoded_fov_m[0]).cpu().numpy()
        delta[0] = grid_offset(u)
        ix = torch.round(k[:, 0] * data.encoded_fov_m[0] - delta[0]).to(torch.int64) + nx // 2
        length = data.readout_length.to(torch.float64)
        for a, n in ((1, ny), (2, nz)):
            if n > 1:
                centre = torch.zeros(data.n_readouts, dtype=torch.float64, device=device)
                centre.index_add_(0, readout, k[:, a])
                centre = centre / length
                delta[a] = grid_offset((centre * data.encoded_fov_m[a]).cpu().numpy())
    else:
        offset = within - data.center_sample[readout]
        rev = data.has_flag(AcqFlag.IS_REVERSE)[readout]
        ix = torch.where(rev, -offset, offset) + nx // 2
    iy = (data.idx["LIN"] - data.center_line + ny // 2)[readout]
    iz = (data.idx["PAR"] - data.center_partition + nz // 2)[readout]

    # data one grid step off-centre (samples -n/2+1 .. n/2): move the grid by that step; the
    # phase ramp of the sub-step correction below makes the move exact
    for axis, (n, ind) in enumerate(((nx, ix), (ny, iy), (nz, iz))):
        lo, hi = int(ind.min()), int(ind.max())
        if (lo < 0 or hi >= n) and hi - lo < n:
            step = hi - (n - 1) if hi >= n else lo
            ind -= step
            delta[axis] += step

    vol_keys = torch.stack([data.idx["REP"], data.idx["SET"], data.idx["PHS"]], dim=1)
    volumes, vol = _compact(vol_keys)
    contrasts, con = _compact(data.idx["ECO"])
    slices, slc = _compact(data.idx["SLC"])
    n_v, n_c, n_s = volumes.shape[0], contrasts.shape[0], slices.shape[0]

    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
    if not bool(inside.all()):
        dropped = int((~inside).sum())
        warnings.warn(
            f"{dropped} of {inside.numel()} samples fall outside the encoded matrix "
            f"{data.encoded_matrix} and are ignored",
            stacklevel=2,
        )
    group = ((vol * n_c + con) * n_s + slc)[readout]
    flat = ((group * nz + iz) * ny + iy) * nx + ix
    flat, values = flat[inside], signal[inside]
    n_cells = n_v * n_c * n_s * nz * ny * nx
    coils = signal.shape[1]
    acc = torch.zeros(n_cells, coils, dtype=signal.dtype, device=device)
    acc.index_add_(0, flat, values)
    count = torch.bincount(flat, minlength=n_cells).to(real)
    acc = acc / count.clamp(min=1)[:, None]
    kspace = acc.reshape(n_v, n_c, n_s, nz, ny, nx, coils).permute(0, 1, 2, 6, 3, 4, 5)
    mask = (count > 0).reshape(n_v, n_c, n_s, nz, ny, nx)

    # sub-step offsets, axis by axis (x: -1, y: -2, z: -3)
    for axis, dim in ((0, -1), (1, -2), (2, -3)):
        if delta[axis] != 0.0:
            kspace = _shift_axis(kspace, dim, delta[axis])
    return CartesianKSpace(
        kspace=kspace.contiguous(),
        mask=mask.contiguous(),
        volumes=volumes,
        contrasts=contrasts,
        slices=slices,
        fov_m=data.recon_fov_m,
        matrix=data.recon_matrix,
    )


def reco_cartesian(
    kdata: KData,
    *,
    coil_combine: str = "rss",
    include_calibration: bool = False,
    prewhitening: bool = True,
) -> torch.Tensor:
    """Reconstruct Cartesian raw data by zero-filled FFT.

    Parameters
    ----------
    kdata
        Raw data with ``trajectory == "cartesian"`` (2-D, 3-D, multi-slice, multi-contrast).
    coil_combine
        ``"rss"`` (root sum of squares, real), ``"none"`` (complex coil images) or ``"walsh"``
        (adaptive combination with Walsh maps, :func:`mr0core.recon.coils.adaptive_combine`).
    include_calibration, prewhitening
        See :func:`cartesian_kspace`.

    Returns
    -------
    torch.Tensor
        ``[volumes, contrasts, slices, x, y, z]`` (``rss``: real; ``walsh``: complex) or
        ``[volumes, contrasts, slices, coils, x, y, z]`` complex (``none``), on the data's device.
        Volumes are the distinct (REP, SET, PHS) counters, contrasts the ECO and slices the SLC
        counters, each in increasing order (see :func:`cartesian_kspace` for the values). ``x`` is
        the readout axis with oversampling removed; voxel ``i`` sits at ``(i - n//2) · fov / n``.
        Scale: the plain adjoint sum over the (averaged) samples, like
        :func:`mr0core.recon.adjoint.reco_adjoint`.
    """
    if coil_combine not in _COIL_COMBINE:
        raise ValueError(f"coil_combine must be one of {_COIL_COMBINE}, got {coil_combine!r}")
    grid = cartesian_kspace(
        kdata, include_calibration=include_calibration, prewhitening=prewhitening
    )
    images = kspace_to_image(grid.kspace)  # [v, c, s, coils, x, y, z]
    if coil_combine == "none":
        return images
    if coil_combine == "rss":
        return rss(images, dim=3)
    from mr0core.recon import coils

    combine = getattr(coils, "adaptive_combine", None)
    if combine is None:
        raise ValueError("coil_combine='walsh' needs mr0core.recon.coils.adaptive_combine")
    lead = images.shape[:3]
    flat = images.reshape(-1, *images.shape[3:])
    combined = torch.stack([combine(im) for im in flat])
    return combined.reshape(*lead, *combined.shape[1:])

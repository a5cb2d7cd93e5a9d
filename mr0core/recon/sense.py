"""Parallel imaging: iterative CG-SENSE (Pruessmann et al. 2001) and sensitivity estimation.

Axes: the trailing two (2-D) or three (3-D) axes of k-space, mask, sensitivities and image are
the encoded ones, e.g. ``[coils, ny, nx]`` or ``[coils, nz, ny, nx]`` (any order works as long
as all inputs share it). The FFT is the centred one of :mod:`mr0core.recon.fourier` (index
``n // 2`` is ``k = 0`` and ``x = 0``), unitary (``norm="ortho"``) inside the solver.

Scaling (``norm``, named as in :mod:`torch.fft`): by default (``"forward"``, like
:mod:`mr0core.recon.cartesian`) the k-space of an image ``ρ`` seen by coil ``c`` is
``fftn(S_c ρ) / N`` and the fully sampled recon of coil ``c`` is the plain sum
``ifftn(kspace, norm="forward") = S_c ρ``; CG-SENSE returns ``ρ`` on that recon's scale.
``"backward"`` assumes ``kspace = fftn(S_c ρ)``, ``"ortho"`` ``fftn(S_c ρ) / √N``.
"""

from __future__ import annotations

import math

import torch

from .coils import walsh_sensitivities
from .fourier import fftc, ifftc

__all__ = [
    "calibration_mask",
    "cg_sense",
    "resample_maps",
    "sense_adjoint",
    "sense_forward",
    "sensitivities_from_calibration",
    "sensitivities_from_reference",
]


def _dims(ndim: int) -> tuple[int, ...]:
    return tuple(range(-ndim, 0))


def _check_mask(mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() not in (2, 3):
        raise ValueError(f"mask must be [(nz,) ny, nx], got {tuple(mask.shape)}")


def sense_forward(image: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Encode an image with SENSE: ``E ρ = M F S ρ`` (unitary centred FFT), as in :func:`cg_sense`.

    ``image [(nz,) ny, nx]``, ``mask [(nz,) ny, nx]`` bool, ``sens [coils, (nz,) ny, nx]``;
    returns ``[coils, (nz,) ny, nx]`` k-space, zero where not sampled.
    """
    k = fftc(sens * image, _dims(mask.dim()), norm="ortho")
    return torch.where(mask, k, 0)


def sense_adjoint(kspace: torch.Tensor, mask: torch.Tensor, sens: torch.Tensor) -> torch.Tensor:
    """Apply the adjoint ``Eᴴ y = Sᴴ Fᴴ M y`` of :func:`sense_forward`; ``[(nz,) ny, nx]``."""
    image = ifftc(torch.where(mask, kspace, 0), _dims(mask.dim()), norm="ortho")
    return torch.sum(sens.conj() * image, dim=0)


def cg_sense(
    kspace: torch.Tensor,
    mask: torch.Tensor,
    sens: torch.Tensor,
    max_iter: int = 50,
    tol: float = 1e-6,
    lam: float = 0.0,
    norm: str = "forward",
) -> torch.Tensor:
    """Solve ``(Eᴴ E + λ I) ρ = Eᴴ y`` with conjugate gradients, ``E = M F S`` (CG-SENSE).

    Parameters
    ----------
    kspace
        ``[coils, (nz,) ny, nx]`` zero-filled Cartesian k-space (unsampled entries are ignored).
    mask
        ``[(nz,) ny, nx]`` bool, True where k-space was sampled.
    sens
        ``[coils, (nz,) ny, nx]`` complex coil sensitivities (e.g. Walsh maps with
        ``Σ|S|² = 1``, or maps from a reference scan, see :func:`sensitivities_from_reference`).
    max_iter
        Maximum CG iterations.
    tol
        Stop when the residual norm falls below ``tol`` times that of ``Eᴴ y``.
    lam
        Tikhonov weight ``λ >= 0`` relative to the unitary FFT (``Eᴴ E`` has eigenvalues up to
        ``max Σ|S|²``, i.e. about 1 for normalised maps).
    norm
        How ``kspace`` was scaled: ``"forward"``, ``"backward"`` or ``"ortho"`` (module
        docstring).

    Returns
    -------
    torch.Tensor
        ``[(nz,) ny, nx]`` complex image, on ``kspace``'s device and complex dtype.
    """
    _check_mask(mask)
    ndim = mask.dim()
    if not isinstance(kspace, torch.Tensor) or kspace.dim() != ndim + 1:
        shape = tuple(kspace.shape) if isinstance(kspace, torch.Tensor) else type(kspace).__name__
        raise ValueError(f"kspace must be [coils, *{tuple(mask.shape)}], got {shape}")
    if tuple(kspace.shape[1:]) != tuple(mask.shape):
        raise ValueError(f"kspace {tuple(kspace.shape)} does not match mask {tuple(mask.shape)}")
    if not isinstance(sens, torch.Tensor) or sens.shape != kspace.shape:
        shape = tuple(sens.shape) if isinstance(sens, torch.Tensor) else type(sens).__name__
        raise ValueError(f"sens must have kspace's shape {tuple(kspace.shape)}, got {shape}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    if lam < 0 or not math.isfinite(lam):
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    y = kspace if kspace.is_complex() else kspace.to(torch.complex64)
    m = mask.to(device=y.device, dtype=torch.bool)
    s = sens.to(y.device, y.dtype)
    n_vox = math.prod(mask.shape)
    to_unitary = {"forward": math.sqrt(n_vox), "backward": 1 / math.sqrt(n_vox), "ortho": 1.0}
    if norm not in to_unitary:
        raise ValueError(f"norm must be one of {tuple(to_unitary)}, got {norm!r}")
    y = torch.where(m, y, 0) * to_unitary[norm]

    def normal(x: torch.Tensor) -> torch.Tensor:
        out = sense_adjoint(sense_forward(x, m, s), m, s)
        return out + lam * x if lam else out

    b = sense_adjoint(y, m, s)
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = torch.vdot(r.flatten(), r.flatten()).real
    b_norm = torch.sqrt(rr)
    if float(b_norm) == 0.0:
        return x
    for _ in range(max_iter):
        ap = normal(p)
        alpha = rr / torch.vdot(p.flatten(), ap.flatten()).real
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = torch.vdot(r.flatten(), r.flatten()).real
        if float(torch.sqrt(rr_new)) < tol * float(b_norm):
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def calibration_mask(shape: tuple[int, ...], n_calib: int, axis: int = -2) -> torch.Tensor:
    """Bool mask of the ``n_calib`` central k-space lines along ``axis`` (all others fully kept).

    Line ``i`` is central when ``n // 2 - n_calib // 2 <= i < n // 2 - n_calib // 2 + n_calib``
    (``k = 0`` at index ``n // 2``).

    Parameters
    ----------
    shape
        ``[(nz,) ny, nx]`` k-space shape (without coils).
    n_calib
        Number of calibration lines, ``1 <= n_calib <= shape[axis]``.
    axis
        The phase-encoding axis the lines are counted along (default ``-2``, ``ny``).

    Returns
    -------
    torch.Tensor
        Bool mask of ``shape``.
    """
    shape = tuple(int(n) for n in shape)
    n = shape[axis]
    if not 1 <= n_calib <= n:
        raise ValueError(f"n_calib must be in 1..{n} (axis {axis}), got {n_calib}")
    start = n // 2 - n_calib // 2
    lines = torch.zeros(n, dtype=torch.bool)
    lines[start : start + n_calib] = True
    view = [1] * len(shape)
    view[axis] = n
    return lines.reshape(view).expand(shape).clone()


def _maps(low_res: torch.Tensor, kernel: int, threshold: float) -> torch.Tensor:
    """Walsh maps of ``[coils, *spatial]`` images, zeroed where their RSS < threshold · max."""
    maps = walsh_sensitivities(low_res, kernel=kernel)
    if threshold > 0:
        energy = torch.sqrt(torch.sum(low_res.real**2 + low_res.imag**2, dim=0))
        maps = torch.where(energy >= threshold * energy.max(), maps, 0)
    return maps


def sensitivities_from_calibration(
    kspace: torch.Tensor,
    calib: torch.Tensor | int,
    axis: int = -2,
    kernel: int = 7,
    threshold: float = 0.05,
) -> torch.Tensor:
    """Estimate normalised coil maps from fully sampled central (calibration) k-space.

    The calibration region is cut out of ``kspace`` with a Hann window along each partially
    covered axis (less ringing), transformed to low-resolution coil images on the full matrix,
    and turned into Walsh maps (:func:`mr0core.recon.coils.walsh_sensitivities`, ``Σ|S|² = 1``,
    phase referenced to the strongest coil).

    Parameters
    ----------
    kspace
        ``[coils, (nz,) ny, nx]`` k-space (zero-filled where not sampled).
    calib
        ``[(nz,) ny, nx]`` bool mask of a fully sampled calibration region, or the number of
        central lines along ``axis`` (see :func:`calibration_mask`).
    axis
        Phase-encoding axis of the calibration lines when ``calib`` is an int.
    kernel
        Walsh box size in voxels.
    threshold
        Maps are set to 0 where the low-resolution RSS is below ``threshold`` times its maximum
        (outside the object, so SENSE does not spread signal there). 0 keeps all voxels.

    Returns
    -------
    torch.Tensor
        ``[coils, (nz,) ny, nx]`` complex maps on ``kspace``'s device.
    """
    if not isinstance(kspace, torch.Tensor) or kspace.dim() not in (3, 4):
        shape = tuple(kspace.shape) if isinstance(kspace, torch.Tensor) else type(kspace).__name__
        raise ValueError(f"kspace must be [coils, (nz,) ny, nx], got {shape}")
    shape = tuple(kspace.shape[1:])
    if isinstance(calib, int):
        region = calibration_mask(shape, calib, axis)
    elif isinstance(calib, torch.Tensor) and tuple(calib.shape) == shape:
        region = calib.to(torch.bool)
    else:
        got = tuple(calib.shape) if isinstance(calib, torch.Tensor) else calib
        raise ValueError(f"calib must be an int or a bool mask of shape {shape}, got {got}")
    region = region.to(kspace.device)
    if not bool(region.any()):
        raise ValueError("the calibration region is empty")
    y = kspace if kspace.is_complex() else kspace.to(torch.complex64)
    window = region.to(y.real.dtype)
    for ax in range(len(shape)):
        covered = torch.nonzero(region.any(dim=tuple(a for a in range(len(shape)) if a != ax)))
        lo, hi = int(covered.min()), int(covered.max())
        n_lines = hi - lo + 1
        if n_lines == shape[ax]:
            continue
        t = torch.arange(shape[ax], device=y.device, dtype=y.real.dtype)
        centre = (lo + hi) / 2
        hann = torch.clamp(torch.cos(math.pi * (t - centre) / (n_lines + 1)), min=0) ** 2
        view = [1] * len(shape)
        view[ax] = shape[ax]
        window = window * hann.reshape(view)
    low_res = ifftc(y * window, _dims(len(shape)), norm="ortho")
    return _maps(low_res, kernel, threshold)


def resample_maps(images: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resample coil images or maps to another matrix on the same field of view (sinc).

    Centred k-space is cropped or zero-padded (index ``n // 2`` stays ``k = 0``), so the voxel
    grids of both matrices share the origin convention ``(i - n // 2) · fov / n``.

    Parameters
    ----------
    images
        ``[coils, *spatial]`` complex images.
    shape
        Target spatial shape, same number of axes.

    Returns
    -------
    torch.Tensor
        ``[coils, *shape]`` on the same device, amplitude preserved.
    """
    spatial = tuple(images.shape[1:])
    shape = tuple(int(n) for n in shape)
    if len(shape) != len(spatial):
        raise ValueError(f"target shape {shape} needs {len(spatial)} axes like {spatial}")
    if shape == spatial:
        return images
    ndim = len(shape)
    k = fftc(
        images if images.is_complex() else images.to(torch.complex64), _dims(ndim), norm="ortho"
    )
    out = torch.zeros((images.shape[0], *shape), dtype=k.dtype, device=k.device)
    src, dst = [slice(None)], [slice(None)]
    for n_in, n_out in zip(spatial, shape, strict=True):
        n = min(n_in, n_out)
        src.append(slice(n_in // 2 - n // 2, n_in // 2 - n // 2 + n))
        dst.append(slice(n_out // 2 - n // 2, n_out // 2 - n // 2 + n))
    out[tuple(dst)] = k[tuple(src)]
    return ifftc(out, _dims(ndim), norm="ortho") * math.sqrt(math.prod(shape) / math.prod(spatial))


def sensitivities_from_reference(
    images: torch.Tensor,
    shape: tuple[int, ...] | None = None,
    kernel: int = 7,
    threshold: float = 0.05,
) -> torch.Tensor:
    """Coil maps from a separate reference scan (e.g. a low-resolution pre-scan).

    Parameters
    ----------
    images
        ``[coils, (nz,) ny, nx]`` complex coil images of the reference scan, same field of view
        and axis order as the accelerated scan.
    shape
        Spatial shape of the accelerated scan; the reference is resampled to it with
        :func:`resample_maps` first. None: keep ``images``' shape.
    kernel, threshold
        As in :func:`sensitivities_from_calibration`.

    Returns
    -------
    torch.Tensor
        ``[coils, *shape]`` Walsh maps (``Σ|S|² = 1``), ready for :func:`cg_sense`.
    """
    if not isinstance(images, torch.Tensor) or images.dim() not in (3, 4):
        shape_in = tuple(images.shape) if isinstance(images, torch.Tensor) else images
        raise ValueError(f"images must be [coils, (nz,) ny, nx], got {shape_in}")
    ref = images if shape is None else resample_maps(images, tuple(shape))
    return _maps(ref, kernel, threshold)

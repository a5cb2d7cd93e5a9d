"""Coil combination: root sum of squares and adaptive (Walsh) combination."""

from __future__ import annotations

import torch

__all__ = ["adaptive_combine", "rss", "walsh_sensitivities"]


def rss(images: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Root sum of squares over the coil dimension.

    Parameters
    ----------
    images
        Complex coil images, coils along ``dim`` (e.g. ``[coils, z, y, x]``).
    dim
        The coil dimension.

    Returns
    -------
    torch.Tensor
        Real magnitude image, ``images`` without ``dim``, same device.
    """
    return torch.sqrt(torch.sum(images.real**2 + images.imag**2, dim=dim))


def _box_filter(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """Average over the trailing ``len(sizes)`` axes (window clipped at the borders).

    ``x``: real ``[channels, *spatial]`` with 2 or 3 spatial axes.
    """
    pads = tuple(s // 2 for s in sizes)
    if len(sizes) == 2:
        return torch.nn.functional.avg_pool2d(
            x[None], sizes, stride=1, padding=pads, count_include_pad=False
        )[0]
    return torch.nn.functional.avg_pool3d(
        x[None], sizes, stride=1, padding=pads, count_include_pad=False
    )[0]


def _check_coil_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() not in (3, 4):
        raise ValueError(f"images must be [coils, x, y] or [coils, x, y, z], got {images.shape}")


def walsh_sensitivities(images: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """Estimate relative coil sensitivities (Walsh, Gmitro & Marcellin 2000).

    At every voxel the coil covariance ``R = Σ_window x xᴴ`` is averaged over a ``kernel``-wide
    box (clipped at the borders; an axis of size 1 is not filtered) and its dominant eigenvector
    is the sensitivity estimate (batched :func:`torch.linalg.eigh` over voxels). The per-voxel
    phase of an eigenvector is arbitrary; it is fixed by making the coil with the most energy
    real and non-negative, so the maps carry that coil's (smooth) phase as a common reference.

    Parameters
    ----------
    images
        ``[coils, x, y]`` or ``[coils, x, y, z]`` complex coil images (full or low resolution).
    kernel
        Odd box size in voxels per axis (>= 1).

    Returns
    -------
    torch.Tensor
        Maps of ``images``' shape, device and complex dtype, normalised to
        ``Σ_c |S_c|² = 1`` per voxel. Where the images hold no signal the maps are noise.
    """
    _check_coil_images(images)
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd number of voxels, got {kernel}")
    x = images if images.is_complex() else images.to(torch.complex64)
    coils, spatial = x.shape[0], tuple(x.shape[1:])
    sizes = tuple(min(kernel, n if n % 2 else n - 1) for n in spatial)
    cov = x[:, None] * x[None].conj()  # [c, c, *spatial]
    flat = torch.cat([cov.real, cov.imag]).reshape(2 * coils * coils, *spatial)
    smooth = _box_filter(flat, sizes).reshape(2, coils, coils, *spatial)
    cov = torch.complex(smooth[0], smooth[1])
    perm = (*range(2, 2 + len(spatial)), 0, 1)
    mats = cov.permute(perm).reshape(-1, coils, coils)  # [voxels, c, c]
    _, vecs = torch.linalg.eigh(mats)
    v = vecs[..., -1]  # [voxels, c], unit norm
    ref = int(torch.argmax(torch.sum(x.real**2 + x.imag**2, dim=tuple(range(1, x.dim())))))
    mag = torch.abs(v[:, ref])
    phase = torch.where(mag > 0, v[:, ref] / torch.where(mag > 0, mag, 1), 1)
    v = v * phase.conj()[:, None]
    result: torch.Tensor = v.T.reshape(coils, *spatial).contiguous()
    return result


def adaptive_combine(images: torch.Tensor, sens: torch.Tensor | None = None) -> torch.Tensor:
    """Combine coil images with sensitivity weights (adaptive / matched-filter combination).

    ``image = Σ_c conj(S_c) x_c / Σ_c |S_c|²``. With Walsh maps (``Σ|S|² = 1``) this is the
    SNR-optimal combination for white noise, and its magnitude is the object times
    ``‖S_true‖`` (like RSS, without RSS's noise bias).

    Parameters
    ----------
    images
        ``[coils, x, y]`` or ``[coils, x, y, z]`` complex coil images.
    sens
        Sensitivities of the same shape, or None: estimated with :func:`walsh_sensitivities`.

    Returns
    -------
    torch.Tensor
        Complex image ``[x, y(, z)]`` on ``images``' device (zero where ``Σ|S|² = 0``).
    """
    _check_coil_images(images)
    x = images if images.is_complex() else images.to(torch.complex64)
    if sens is None:
        sens = walsh_sensitivities(x)
    elif sens.shape != x.shape:
        raise ValueError(f"sens must have the images' shape {tuple(x.shape)}, got {sens.shape}")
    sens = sens.to(x.device, x.dtype)
    num = torch.sum(sens.conj() * x, dim=0)
    den = torch.sum(sens.real**2 + sens.imag**2, dim=0)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), 0)

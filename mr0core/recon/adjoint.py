"""Adjoint (direct DFT) reconstruction of any k-space trajectory (MR-zero's ``reco_adjoint``).

The forward model of the simulator is ``s(k) = Σ_r ρ(r) exp(-2πi k·r)``; its adjoint, computed
here, is ``ρ̂(r) = Σ_k s(k) exp(+2πi k·r)`` on a Cartesian image grid with voxel ``i`` of an axis
of ``n`` voxels at ``(i - n // 2) · fov / n``. No density compensation and no 1/N: on a fully
sampled Cartesian grid it equals the FFT recon of :mod:`mr0core.recon.cartesian` (both return
``N · ρ``). It costs O(samples × voxels), so it is slower than an FFT but takes any trajectory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC

import torch

__all__ = ["grid_from_kspace", "reco_adjoint"]

# Elements of the [samples, voxels] phase matrix held at once (complex64: 8 bytes each).
_CHUNK_ELEMENTS = 1 << 23


def _axis_step(values: torch.Tensor, step_floor: float) -> float:
    """Smallest spacing between distinct values (clustered within 1 % of ``step_floor``)."""
    v = torch.sort(values.flatten())[0]
    d = torch.diff(v)
    d = d[d > 0.01 * step_floor] if step_floor > 0 else d[d > 0]
    return float(d.min()) if d.numel() else 0.0


def _on_grid(values: torch.Tensor, dk: float, span: float, step: float) -> bool:
    """Whether ``values`` lie on a grid of spacing ``dk`` not much finer than the sample step."""
    if dk <= 0 or span / dk > 4 * (span / step) + 4:
        return False
    u = values / dk
    phase = torch.angle(torch.mean(torch.polar(torch.ones_like(u), 2 * math.pi * u)))
    frac = u - phase / (2 * math.pi)
    return bool(torch.abs(frac - torch.round(frac)).max() <= 0.2)


def grid_from_kspace(
    kspace: torch.Tensor,
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Automatic image grid for :func:`reco_adjoint`: resolution and FOV from the k-space extent.

    Per axis, Δk is the smallest spacing between distinct k values on that axis when the values
    lie on a grid of that spacing (Cartesian), else the median distance between successive samples
    (radial, spiral: the readout sample spacing); ``fov = 1 / Δk`` and
    ``resolution = round((k_max - k_min) / Δk) + 1``.
    An axis without encoding gets resolution 1 and FOV 1.

    Parameters
    ----------
    kspace
        ``[samples, 3 or 4]``: kx, ky, kz (1/m, or 1/FOV for normalised gradients).

    Returns
    -------
    tuple
        ``(resolution (x, y, z), FOV (x, y, z))``.
    """
    k = kspace[:, :3].detach().to(torch.float64)
    steps = torch.linalg.vector_norm(torch.diff(k, dim=0), dim=1)
    steps = steps[steps > 0]
    step = float(torch.median(steps)) if steps.numel() else 0.0
    res: list[int] = []
    fov: list[float] = []
    for a in range(3):
        span = float(k[:, a].max() - k[:, a].min()) if k.shape[0] else 0.0
        if span <= 1e-6 * max(step, 1e-30):
            res.append(1)
            fov.append(1.0)
            continue
        dk = _axis_step(k[:, a], step)
        if step > 0 and not _on_grid(k[:, a], dk, span, step):
            dk = step  # no grid along this axis (radial, spiral): use the sample spacing
        res.append(round(span / dk) + 1)
        fov.append(1.0 / dk)
    return (res[0], res[1], res[2]), (fov[0], fov[1], fov[2])


def _positions(
    resolution: tuple[int, int, int],
    fov: tuple[float, float, float],
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    axes = [
        (torch.arange(n, dtype=dtype, device=device) - n // 2) * (f / n)
        for n, f in zip(resolution, fov, strict=True)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


def reco_adjoint(
    signal: torch.Tensor,
    kspace: torch.Tensor,
    resolution: SequenceABC[int] | None = None,
    FOV: SequenceABC[float] | None = None,
    return_multicoil: bool = False,
) -> torch.Tensor:
    """Adjoint DFT reconstruction of any trajectory onto a Cartesian grid.

    Parameters
    ----------
    signal
        ``[samples, coils]`` (or ``[samples]``) complex signal.
    kspace
        ``[samples, 4]`` (kx, ky, kz in 1/m, dephasing time τ in s; τ is not used) or
        ``[samples, 3]``, e.g. ``seq.get_kspace()``.
    resolution
        ``(x, y, z)`` voxels, or None: from the k-space extent (:func:`grid_from_kspace`).
    FOV
        ``(x, y, z)`` field of view in m (in units of the FOV for normalised gradients), or
        None: ``1 / Δk`` per axis (:func:`grid_from_kspace`).
    return_multicoil
        If True return the coil images; if False combine them (see Returns).

    Returns
    -------
    torch.Tensor
        ``[coils, x, y, z]`` complex when ``return_multicoil``; otherwise ``[x, y, z]``: the
        complex image for single-coil data (so its phase can be shown) and the root sum of
        squares (real) for several coils. On the signal's device; complex128/float64 for
        double-precision input, else complex64/float32. Voxel ``i`` sits at
        ``(i - n // 2) · FOV / n``.

    Notes
    -----
    Memory stays bounded: the samples are processed in chunks of at most
    ``2**23 / voxels`` rows of the phase matrix.
    """
    if signal.ndim == 1:
        signal = signal[:, None]
    if signal.ndim != 2:
        raise ValueError(f"signal must be [samples, coils], got {tuple(signal.shape)}")
    if kspace.ndim != 2 or kspace.shape[1] not in (3, 4) or kspace.shape[0] != signal.shape[0]:
        raise ValueError(
            f"kspace must be [{signal.shape[0]}, 4] (kx, ky, kz, tau), got {tuple(kspace.shape)}"
        )
    double = signal.dtype == torch.complex128 or kspace.dtype == torch.float64
    cdtype = torch.complex128 if double else torch.complex64
    rdtype = torch.float64 if double else torch.float32
    device = signal.device
    signal = signal.to(cdtype)
    k = kspace[:, :3].to(device=device, dtype=rdtype)

    auto_res, auto_fov = grid_from_kspace(k)
    res = tuple(int(v) for v in (resolution if resolution is not None else auto_res))
    fov = tuple(float(v) for v in (FOV if FOV is not None else auto_fov))
    if len(res) != 3 or min(res) < 1:
        raise ValueError(f"resolution must be three positive ints, got {resolution}")
    if len(fov) != 3 or not all(math.isfinite(f) and f > 0 for f in fov):
        raise ValueError(f"FOV must be three positive lengths, got {FOV}")

    pos = _positions(res, fov, rdtype, device)  # [voxels, 3]
    n_vox = pos.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // n_vox)
    image = torch.zeros(n_vox, signal.shape[1], dtype=cdtype, device=device)
    two_pi = 2 * math.pi
    for lo in range(0, k.shape[0], chunk):
        kc = k[lo : lo + chunk]
        phase = two_pi * (kc @ pos.T)  # [chunk, voxels]
        encoding = torch.polar(torch.ones_like(phase), phase)  # exp(+2πi k·r)
        image += encoding.T @ signal[lo : lo + chunk]
    image = image.T.reshape(signal.shape[1], *res)
    if return_multicoil:
        return image
    if image.shape[0] == 1:
        return image[0]
    return torch.sqrt(torch.sum(image.real**2 + image.imag**2, dim=0))

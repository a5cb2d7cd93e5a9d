"""Raw-data preprocessing before reconstruction: coil prewhitening and readout-oversampling removal.

These are the only implementations; :func:`mr0core.recon.cartesian.cartesian_kspace`, the
NoiseAdjust, RemoveROOversampling and SENSE-reference steps of :mod:`gadgets.library.recon` all call
them.

Prewhitening and dwell time
---------------------------
Receiver noise is white over the sampling bandwidth, so its variance per sample is proportional
to the bandwidth ``1 / dwell``. A noise covariance ``Ψ`` measured with dwell ``t_n`` therefore
applies to data sampled with dwell ``t_d`` as ``Ψ · t_n / t_d``, and the data are whitened by
``sqrt(t_d / t_n) · L⁻¹`` (``Ψ = L Lᴴ``). This is the ISMRMRD/Gadgetron convention: Gadgetron's
``NoiseAdjustGadget`` multiplies its prewhitening matrix by
``sqrt(2 · acquisition_dwell_time_us / noise_dwell_time_us · relative_receiver_noise_bandwidth)``
(``calculate_scale_factor`` in ``gadgets/mri_core/NoiseAdjustGadget.cpp``). Of that factor we use
the dwell ratio only: Gadgetron's extra ``sqrt(2 · relBW)`` (``relBW`` 0.793 by default) puts
the images in Kellman & McVeigh's SNR units (MRM 54:1439, 2005), a global scale; here the
whitened noise has unit complex variance per sample, ``E[w wᴴ] = I``.

Readout oversampling
--------------------
Each readout goes to image space with the centred inverse FFT (:func:`.fourier.ifftc`), keeps
the central ``1 / f`` of its field of view (``f = encoded_matrix[0] / recon_matrix[0]``) and
returns to k-space: its samples are then ``f`` times as far apart. The transforms follow the
Cartesian recon's plain-sum scale (inverse unnormalised, forward ``1 / n_out``), so the recon
of the cropped data is still the plain adjoint sum over the original samples: an object inside
the recon FOV comes out ``f`` times as bright as from data sampled without oversampling, and
the noise variance per sample grows by ``f`` (prewhiten before, as the recon does).
"""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np
import torch

from .fourier import fftc, ifftc
from .kdata import KData, KDataError

__all__ = [
    "noise_covariance",
    "prewhiten",
    "prewhiten_kdata",
    "remove_readout_oversampling",
]


# -- prewhitening ----------------------------------------------------------------------------


def noise_covariance(noise: torch.Tensor) -> torch.Tensor:
    """Coil noise covariance of noise-only samples.

    Parameters
    ----------
    noise
        ``[samples, coils]`` complex noise-only samples (at least ``coils`` of them).

    Returns
    -------
    torch.Tensor
        ``[coils, coils]`` Hermitian ``Ψ = Nᵀ N̄ / n``, i.e. ``Ψ_ij = mean(n_i · conj(n_j))`` (the
        noise is zero-mean, so no mean is removed and ``n`` is the unbiased divisor).

    Raises
    ------
    ValueError
        If ``noise`` is not ``[samples, coils]`` with at least ``coils`` samples.
    """
    if noise.ndim != 2:
        raise ValueError(f"noise must be [samples, coils], got {tuple(noise.shape)}")
    n, coils = noise.shape
    if n < coils:
        raise ValueError(f"need at least {coils} noise samples for {coils} coils, got {n}")
    if not noise.is_complex():
        noise = noise.to(torch.complex64)
    return noise.T @ noise.conj() / n


def prewhiten(
    signal: torch.Tensor,
    covariance: torch.Tensor,
    *,
    dwell_s: float | torch.Tensor | None = None,
    noise_dwell_s: float | None = None,
) -> torch.Tensor:
    """Decorrelate the coils and scale the noise to unit variance (see the module docstring).

    Parameters
    ----------
    signal
        ``[samples, coils]`` complex data.
    covariance
        ``[coils, coils]`` noise covariance (:func:`noise_covariance`) measured with dwell
        ``noise_dwell_s``.
    dwell_s
        Dwell time of ``signal`` in s: one value, or ``[samples]`` (one per row).
    noise_dwell_s
        Dwell time of the noise samples behind ``covariance`` in s. Give both dwell times or
        neither; without them the data are taken to share the noise's dwell.

    Returns
    -------
    torch.Tensor
        ``[samples, coils]``, ``sqrt(t_d / t_n) · L⁻¹ s`` per sample, with ``Ψ = L Lᴴ`` the
        Cholesky factorisation; the noise of the result has covariance ``I``. Same dtype and
        device as ``signal``.

    Raises
    ------
    ValueError
        For mismatched shapes, only one dwell time, a dwell time that is not positive, or a
        covariance that is not positive definite.
    """
    if signal.ndim != 2 or covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
        raise ValueError(
            f"signal {tuple(signal.shape)} must be [samples, coils] and covariance "
            f"{tuple(covariance.shape)} [coils, coils]"
        )
    if signal.shape[1] != covariance.shape[0]:
        raise ValueError(
            f"signal has {signal.shape[1]} coils, the noise covariance {covariance.shape[0]}"
        )
    if (dwell_s is None) != (noise_dwell_s is None):
        raise ValueError(
            "give both dwell times or neither "
            f"(dwell_s={dwell_s!r}, noise_dwell_s={noise_dwell_s!r})"
        )
    psi = covariance.to(signal.device, signal.dtype)
    chol, info = torch.linalg.cholesky_ex(psi)
    if int(info) != 0:
        raise ValueError("noise covariance is not positive definite (dead or duplicate coils?)")
    white = torch.linalg.solve_triangular(chol, signal.T, upper=False).T
    if dwell_s is None or noise_dwell_s is None:
        result: torch.Tensor = white
        return result
    if not (math.isfinite(noise_dwell_s) and noise_dwell_s > 0):
        raise ValueError(f"noise_dwell_s must be a positive time in s, got {noise_dwell_s!r}")
    real = signal.real.dtype
    dwell = torch.as_tensor(dwell_s, dtype=torch.float64, device=signal.device)
    if dwell.ndim == 1 and dwell.shape[0] != signal.shape[0]:
        raise ValueError(f"dwell_s has {dwell.shape[0]} values for {signal.shape[0]} samples")
    if dwell.ndim > 1 or not bool(torch.all(dwell > 0)) or not bool(torch.all(dwell.isfinite())):
        raise ValueError("dwell_s must be positive times in s, one or one per sample")
    scale = torch.sqrt(dwell / noise_dwell_s).to(real)
    result = white * (scale[:, None] if scale.ndim else scale)
    return result


def prewhiten_kdata(kd: KData) -> KData:
    """Prewhiten raw data with the noise samples they carry (:func:`prewhiten`).

    The data's dwell :attr:`KData.sample_time_s` and the noise's
    :attr:`KData.noise_sample_time_s` give the bandwidth scaling when both are known (all
    positive); otherwise the data are taken to share the noise's dwell.

    Parameters
    ----------
    kd
        Raw data; without :attr:`KData.noise`, or with one coil, they are returned unchanged
        (whitening one coil would only rescale it).

    Returns
    -------
    KData
        ``signal`` whitened and ``noise`` None (it no longer describes the data).

    Raises
    ------
    KDataError
        With too few noise samples or a covariance that is not positive definite.
    """
    if kd.noise is None or kd.n_coils == 1:
        return kd
    dwell: torch.Tensor | None = None
    noise_dwell = kd.noise_sample_time_s
    if noise_dwell is not None and kd.n_readouts and bool(torch.all(kd.sample_time_s > 0)):
        readout = kd.sample_readout()
        dwell = torch.where(
            readout >= 0,
            kd.sample_time_s[readout.clamp(min=0)],
            torch.as_tensor(noise_dwell, dtype=torch.float64, device=kd.device),
        )
    signal = kd.signal if kd.signal.is_complex() else kd.signal.to(torch.complex64)
    try:
        cov = noise_covariance(kd.noise)
        if dwell is None:
            white = prewhiten(signal, cov)
        else:
            white = prewhiten(signal, cov, dwell_s=dwell, noise_dwell_s=noise_dwell)
    except ValueError as exc:
        raise KDataError(f"cannot prewhiten: {exc}") from None
    return replace(kd, signal=white, noise=None, noise_sample_time_s=None)


# -- readout oversampling --------------------------------------------------------------------


def remove_readout_oversampling(kd: KData) -> KData:
    """Crop the readout field of view of Cartesian raw data to the recon FOV.

    Parameters
    ----------
    kd
        Cartesian raw data. The factor ``f = encoded_matrix[0] / recon_matrix[0]`` may be any
        ratio ``p / q`` (2 on scanners); ``f <= 1`` returns ``kd`` unchanged.

    Returns
    -------
    KData
        Readouts ``f`` times shorter: each readout is zero-padded (``(-center_sample) mod p``
        samples before it, so that k = 0 stays on the coarse grid, and up to a length that is a
        multiple of ``2p``), transformed with :func:`.fourier.ifftc` (``norm="forward"``),
        cropped to the central ``1 / f`` of its FOV and transformed back with
        :func:`.fourier.fftc` (``norm="forward"``). Only the coarse samples inside the
        readout's measured k range are kept; ``center_sample`` indexes k = 0 among them. The
        trajectory (if any) is interpolated linearly onto the new samples (Cartesian readouts
        are straight lines at constant speed), ``sample_time_s`` is multiplied by ``f``, and the
        encoded readout matrix and FOV become the recon ones. Exact for objects inside the recon
        FOV when no padding is needed (readout length a multiple of ``2p``, centre sample of
        ``p``, as in full scanner readouts); padded readouts are approximate at their ends.

        The noise samples stay as they are and :attr:`KData.noise_sample_time_s` is multiplied
        by ``f`` as well: the crop scales the noise variance per sample by ``f`` (as it scales an
        object's amplitude), so prewhitening after this step gives what prewhitening before it
        gives (the recon prewhitens first).

    Raises
    ------
    KDataError
        For non-Cartesian data.
    """
    if kd.trajectory != "cartesian":
        raise KDataError(
            f"readout oversampling removal needs Cartesian data, got a {kd.trajectory} trajectory"
        )
    nx, rnx = kd.encoded_matrix[0], kd.recon_matrix[0]
    if rnx >= nx:
        return kd
    ratio = Fraction(nx, rnx)
    p, q = ratio.numerator, ratio.denominator
    factor = nx / rnx
    device = kd.device
    lengths = kd.readout_length.cpu().numpy()
    centres = kd.center_sample.cpu().numpy()
    pads = (-centres) % p
    n_pad = -(-(lengths + pads) // (2 * p)) * (2 * p)
    n_out = n_pad * q // p
    # coarse sample i sits at original index x_i = n_pad/2 - pad + (i - n_out/2) p/q; keep those
    # with 0 <= x_i <= n - 1, and k = 0 (x = centre) lands on i_c
    half_pad, half_out = n_pad // 2, n_out // 2
    i_lo = half_out - ((half_pad - pads) * q) // p  # ceil((pad - n_pad/2) q / p)
    i_hi = half_out + ((lengths - 1 + pads - half_pad) * q) // p
    i_c = (centres + pads - half_pad) * q // p + half_out
    new_len = i_hi - i_lo + 1
    new_start = np.cumsum(new_len) - new_len
    out = torch.zeros(int(new_len.sum()), kd.n_coils, dtype=kd.signal.dtype, device=device)
    kspace = None
    if kd.kspace is not None:
        kspace = torch.zeros(int(new_len.sum()), 4, dtype=kd.kspace.dtype, device=device)
    groups = np.unique(np.stack([lengths, pads]), axis=1).T
    for n, pad in groups.tolist():
        sel_np = np.flatnonzero((lengths == n) & (pads == pad))
        sel = torch.as_tensor(sel_np, device=device)
        first_readout = sel_np[0]
        m, o = int(n_pad[first_readout]), int(n_out[first_readout])
        lo, hi = int(i_lo[first_readout]), int(i_hi[first_readout])
        rows = kd.readout_start[sel][:, None] + torch.arange(n, device=device)  # [r, n]
        block = torch.zeros(len(sel_np), m, kd.n_coils, dtype=kd.signal.dtype, device=device)
        block[:, pad : pad + n] = kd.signal[rows]
        img = ifftc(block, 1, norm="forward")
        first = m // 2 - o // 2
        coarse = fftc(img[:, first : first + o], 1, norm="forward")[:, lo : hi + 1]
        dst = torch.as_tensor(new_start[sel_np], device=device)[:, None] + torch.arange(
            hi - lo + 1, device=device
        )
        out[dst] = coarse.to(out.dtype)
        if kspace is not None and kd.kspace is not None:
            k = kd.kspace[rows].to(torch.float64)  # [r, n, 4]
            slope = (k[:, -1] - k[:, 0]) / (n - 1) if n > 1 else torch.zeros_like(k[:, 0])
            i = torch.arange(lo, hi + 1, device=device, dtype=torch.float64)
            x = (m // 2 - pad) + (i - o // 2) * (p / q)
            kspace[dst] = (k[:, :1] + x[None, :, None] * slope[:, None]).to(kspace.dtype)
    noise_dwell = kd.noise_sample_time_s
    return replace(
        kd,
        signal=out,
        readout_start=torch.as_tensor(new_start, device=device),
        readout_length=torch.as_tensor(new_len, device=device),
        center_sample=torch.as_tensor(i_c - i_lo, device=device),
        sample_time_s=kd.sample_time_s * factor,
        encoded_matrix=(rnx, kd.encoded_matrix[1], kd.encoded_matrix[2]),
        encoded_fov_m=(kd.recon_fov_m[0], kd.encoded_fov_m[1], kd.encoded_fov_m[2]),
        kspace=kspace,
        noise_sample_time_s=None if noise_dwell is None else noise_dwell * factor,
    )

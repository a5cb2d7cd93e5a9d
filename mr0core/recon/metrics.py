"""Image similarity: NRMSE (with an optional least-squares scale) and SSIM.

Written in torch rather than taken from scikit-image so that both run on the images' device and
are differentiable (usable as losses when a sequence or phantom is optimised through the
simulator); the SSIM is the one of Wang et al., IEEE TIP 13(4):600, 2004, with their constants
(11 x 11 Gaussian window of σ = 1.5 px, K1 = 0.01, K2 = 0.03), and agrees with
``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` (checked in the tests when scikit-image is installed).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["least_squares_scale", "nrmse", "ssim"]


def least_squares_scale(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Return the real scale ``a`` minimising ``‖reference − a·image‖₂`` (0 for a zero image).

    Parameters
    ----------
    reference, image
        Real tensors of the same shape (any).
    """
    den = (image * image).sum()
    return torch.where(den > 0, (reference * image).sum() / den.clamp_min(1e-30), den * 0)


def nrmse(reference: torch.Tensor, image: torch.Tensor, fit_scale: bool = False) -> torch.Tensor:
    """Normalised root-mean-square error ``‖reference − a·image‖₂ / ‖reference‖₂``.

    Parameters
    ----------
    reference, image
        Real tensors of the same shape.
    fit_scale
        With True ``a`` is :func:`least_squares_scale` (for images whose intensity scale is
        arbitrary, e.g. measured against simulated); else ``a = 1``.

    Returns
    -------
    torch.Tensor
        A scalar; 0 means identical (after the scale).

    Raises
    ------
    ValueError
        If the shapes differ or the reference is all zero.
    """
    if reference.shape != image.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} and {tuple(image.shape)}")
    ref_norm = torch.linalg.vector_norm(reference)
    if float(ref_norm) == 0:
        raise ValueError("the reference image is all zero")
    scale = least_squares_scale(reference, image) if fit_scale else 1.0
    result: torch.Tensor = torch.linalg.vector_norm(reference - scale * image) / ref_norm
    return result


def _gaussian(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    reference: torch.Tensor,
    image: torch.Tensor,
    data_range: float | None = None,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity of 2-D images.

    Parameters
    ----------
    reference, image
        Real images ``[..., ny, nx]`` of the same shape (leading axes: a batch, each image is
        compared on its own); at least ``window`` pixels along each axis.
    data_range
        The dynamic range ``L`` of the constants ``C1 = (K1·L)²``, ``C2 = (K2·L)²``; default the
        reference's ``max − min``.
    window, sigma
        Odd Gaussian window size (px) and its standard deviation (px).
    k1, k2
        Wang et al.'s constants.

    Returns
    -------
    torch.Tensor
        Scalar mean SSIM over the valid (window-sized) positions of all images; 1 means equal.

    Raises
    ------
    ValueError
        For different shapes, images smaller than the window, or an even window.
    """
    if reference.shape != image.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} and {tuple(image.shape)}")
    if window % 2 != 1 or window < 3:
        raise ValueError(f"window must be odd and at least 3, got {window}")
    if reference.dim() < 2 or min(reference.shape[-2:]) < window:
        raise ValueError(f"images {tuple(reference.shape)} are smaller than the {window} px window")
    dtype = torch.float64 if reference.dtype == torch.float64 else torch.float32
    x = reference.to(dtype).reshape(-1, 1, *reference.shape[-2:])
    y = image.to(dtype).reshape(-1, 1, *image.shape[-2:])
    if data_range is None:
        data_range = float(reference.max() - reference.min())
    if not math.isfinite(data_range) or data_range <= 0:
        data_range = 1.0  # a constant reference: the constants only keep the ratio finite
    g = _gaussian(window, sigma, x)
    kernel_y = g.view(1, 1, window, 1)
    kernel_x = g.view(1, 1, 1, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kernel_y), kernel_x)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).mean()

"""The centred discrete Fourier transform, the one FFT convention of :mod:`mr0core.recon`.

Convention
----------
On an axis of ``n`` points, index ``n // 2`` is the origin: ``k = 0`` in k-space and ``x = 0`` in
image space (voxel ``i`` sits at ``(i - n // 2) · fov / n``, the phantom convention). A centred
transform therefore moves the origin to index 0, transforms, and moves it back::

    fftc(x)  = fftshift(fftn(ifftshift(x)))
    ifftc(x) = fftshift(ifftn(ifftshift(x)))

over the given axes (``ifftshift`` before and ``fftshift`` after, also for odd ``n``).
``ifftc`` inverts ``fftc`` with the same ``norm``.

Scaling: ``norm`` is :mod:`torch.fft`'s and names which direction carries ``1 / N`` (``N`` the
number of points over the transformed axes): ``"backward"`` the inverse, ``"forward"`` the
forward transform, ``"ortho"`` both ``1 / √N`` (unitary). It has no default, so every caller
says which it uses: the Cartesian recon and the NUFFT use ``"forward"`` (the image is the plain
adjoint sum ``Σ_k s(k) exp(+2πi k·r)``), CG-SENSE ``"ortho"``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Norm", "fftc", "ifftc"]

Norm = Literal["backward", "forward", "ortho"]
"""Names of the scalings of :mod:`torch.fft`."""

_NORMS = ("backward", "forward", "ortho")


def _dims(dims: int | tuple[int, ...]) -> tuple[int, ...]:
    return (dims,) if isinstance(dims, int) else tuple(dims)


def _check(norm: str) -> None:
    if norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")


def fftc(x: torch.Tensor, dims: int | tuple[int, ...], *, norm: Norm) -> torch.Tensor:
    """Centred forward DFT of ``x`` over ``dims`` (image to k-space).

    Parameters
    ----------
    x
        Any shape; complex or real (real input gives a complex result).
    dims
        The axis or axes to transform, e.g. ``(-3, -2, -1)``.
    norm
        ``"backward"``, ``"forward"`` or ``"ortho"``, as in :func:`torch.fft.fftn`.

    Returns
    -------
    torch.Tensor
        ``fftshift(fftn(ifftshift(x)))`` over ``dims``, same shape and device as ``x``.
    """
    _check(norm)
    d = _dims(dims)
    out: torch.Tensor = torch.fft.fftshift(
        torch.fft.fftn(torch.fft.ifftshift(x, dim=d), dim=d, norm=norm), dim=d
    )
    return out


def ifftc(x: torch.Tensor, dims: int | tuple[int, ...], *, norm: Norm) -> torch.Tensor:
    """Centred inverse DFT of ``x`` over ``dims`` (k-space to image); inverts :func:`fftc`.

    Parameters
    ----------
    x
        Any shape; complex or real.
    dims
        The axis or axes to transform.
    norm
        ``"backward"``, ``"forward"`` or ``"ortho"``, as in :func:`torch.fft.ifftn`
        (``"forward"``: no scaling here, the plain sum ``Σ_k s(k) exp(+2πi k·r)``).

    Returns
    -------
    torch.Tensor
        ``fftshift(ifftn(ifftshift(x)))`` over ``dims``, same shape and device as ``x``.
    """
    _check(norm)
    d = _dims(dims)
    out: torch.Tensor = torch.fft.fftshift(
        torch.fft.ifftn(torch.fft.ifftshift(x, dim=d), dim=d, norm=norm), dim=d
    )
    return out

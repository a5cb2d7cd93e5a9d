"""Reconstruction: Cartesian FFT, adjoint DFT, NUFFT, coil combination and CG-SENSE.

One implementation each: the centred FFT (:mod:`.fourier`), prewhitening and readout-oversampling
removal (:mod:`.preprocess`).

:func:`reconstruct` picks the method by trajectory; the modules below can be used directly.
Images follow the shared spatial convention: voxel ``i`` of ``n`` sits at ``(i - n // 2) · fov / n``
(RAS+, the phantom's axes).
"""

from .adjoint import grid_from_kspace, reco_adjoint
from .auto import METHODS, Reconstruction, reconstruct
from .cartesian import CartesianKSpace, cartesian_kspace, kspace_to_image, reco_cartesian
from .coils import adaptive_combine, rss, walsh_sensitivities
from .fourier import fftc, ifftc
from .kdata import AcqFlag, KData, KDataError
from .memory import estimate_recon_bytes
from .nufft import density_compensation, nufft_adjoint, nufft_forward, reco_nufft
from .preprocess import (
    noise_covariance,
    prewhiten,
    prewhiten_kdata,
    remove_readout_oversampling,
)
from .sense import cg_sense, sensitivities_from_calibration, sensitivities_from_reference

__all__ = [
    "METHODS",
    "AcqFlag",
    "CartesianKSpace",
    "KData",
    "KDataError",
    "Reconstruction",
    "adaptive_combine",
    "cartesian_kspace",
    "cg_sense",
    "density_compensation",
    "estimate_recon_bytes",
    "fftc",
    "grid_from_kspace",
    "ifftc",
    "kspace_to_image",
    "noise_covariance",
    "nufft_adjoint",
    "nufft_forward",
    "prewhiten",
    "prewhiten_kdata",
    "reco_adjoint",
    "reco_cartesian",
    "reco_nufft",
    "reconstruct",
    "remove_readout_oversampling",
    "rss",
    "sensitivities_from_calibration",
    "sensitivities_from_reference",
    "walsh_sensitivities",
]

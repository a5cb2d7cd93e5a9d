"""File I/O: ISMRMRD raw data and images, NIfTI with BIDS sidecars, PNG previews."""

from .bids import GROUND_TRUTH_MAPS, bids_sidecar, write_ground_truth
from .mrd import MrdFormatError, read_mrd, sig_to_mrd
from .mrd_images import make_mrd_images, read_mrd_images, write_mrd_images
from .nifti import image_affine, write_nifti
from .params import SequenceParameters, sequence_parameters
from .png import write_png

__all__ = [
    "GROUND_TRUTH_MAPS",
    "MrdFormatError",
    "SequenceParameters",
    "bids_sidecar",
    "image_affine",
    "make_mrd_images",
    "read_mrd",
    "read_mrd_images",
    "sequence_parameters",
    "sig_to_mrd",
    "write_ground_truth",
    "write_mrd_images",
    "write_nifti",
    "write_png",
]

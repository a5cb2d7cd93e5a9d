"""File I/O: ISMRMRD raw data and images, NIfTI with BIDS sidecars, PNG previews.

The names below load their modules on first use (:mod:`mr0core._lazy`), so that importing a light
module such as :mod:`mr0core.io.rawfile` does not load torch.
"""

from typing import TYPE_CHECKING

from mr0core._lazy import lazy_attributes

if TYPE_CHECKING:  # what type checkers and editors see; at run time the names load lazily
    from .bids import GROUND_TRUTH_MAPS, bids_sidecar, write_ground_truth
    from .mrd import read_mrd, sig_to_mrd
    from .mrd_images import make_mrd_images, read_mrd_images, write_mrd_images
    from .nifti import image_affine, write_nifti
    from .params import SequenceParameters, sequence_parameters
    from .png import write_png
    from .rawfile import MrdFormatError, check_raw_file

_NAMES = {
    "GROUND_TRUTH_MAPS": ".bids",
    "bids_sidecar": ".bids",
    "write_ground_truth": ".bids",
    "MrdFormatError": ".rawfile",
    "check_raw_file": ".rawfile",
    "read_mrd": ".mrd",
    "sig_to_mrd": ".mrd",
    "make_mrd_images": ".mrd_images",
    "read_mrd_images": ".mrd_images",
    "write_mrd_images": ".mrd_images",
    "image_affine": ".nifti",
    "write_nifti": ".nifti",
    "SequenceParameters": ".params",
    "sequence_parameters": ".params",
    "write_png": ".png",
}

__all__ = [
    "GROUND_TRUTH_MAPS",
    "MrdFormatError",
    "SequenceParameters",
    "bids_sidecar",
    "check_raw_file",
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
__getattr__, __dir__ = lazy_attributes(__name__, _NAMES, globals())

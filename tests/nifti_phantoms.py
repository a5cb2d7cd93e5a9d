"""NIfTI phantom files the tests write: the specification's example and a saving helper."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

# The example of the specification, section 4, verbatim.
SPEC_EXAMPLE = r"""
{
"file_type": "nifti_phantom_v1",
"units": {
"gyro": "MHz/T",
"B0": "T",
"T1": "s",
"T2": "s",
"T2'": "s",
"ADC": "10^-3 mm^2/s",
"dB0": "Hz",
"B1+": "rel",
"B1-": "rel"
},
"system": {
"gyro": 42.5764,
"B0": 3.0
},
"tissues": {
"gm": {
"density": "subj42.nii.gz[0]",
"T1": 1.56,
"T2": 0.083,
"T2'": 0.32,
"ADC": 0.83,
"dB0": "subj42_dB0.nii.gz[0]",
"B1+": [
"subj42_B1+.nii.gz[0]",
"subj42_B1+.nii.gz[1]",
"subj42_B1+.nii.gz[2]",
"subj42_B1+.nii.gz[3]",
"subj42_B1+.nii.gz[4]",
"subj42_B1+.nii.gz[5]",
"subj42_B1+.nii.gz[6]",
"subj42_B1+.nii.gz[7]"
]
},
"wm": {
"density": "subj42.nii.gz[1]",
"T1": 0.83,
"dB0": "subj42_dB0.nii.gz[0]"
},
"fat": {
"density": "subj42.nii.gz[4]",
"dB0": {
"file": "subj42_dB0.nii.gz[0]",
"func": "x - 420"
}
}
}
}
"""


SHAPE = (6, 5, 4)


def nifti_affine(shape: tuple[int, ...] = SHAPE, vox: float = 2.0) -> np.ndarray:
    """RAS+ mm affine with voxel N//2 at the origin."""
    a = np.diag([vox, vox, vox, 1.0])
    a[:3, 3] = [-(n // 2) * vox for n in shape[:3]]
    return a


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    img = nib.Nifti1Image(data, nifti_affine(data.shape) if affine is None else affine)
    img.set_sform(img.affine, code=2)
    img.set_qform(None, code=0)
    nib.save(img, path)

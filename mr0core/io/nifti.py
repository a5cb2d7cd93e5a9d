"""NIfTI-1 image output with optional JSON sidecar.

Images are indexed ``[x, y, z]`` (or ``[x, y, z, t]``) in the shared spatial convention: voxel
``i`` of an axis with ``n`` voxels sits at ``(i - n // 2) · fov / n`` from the centre, and the
affine maps voxel indices to RAS+ millimetres (see :func:`image_affine`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence as SequenceABC
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["image_affine", "sidecar_path", "write_nifti"]

_COMPONENTS = ("magnitude", "phase", "real", "imag", "complex")


def component_values(data: np.ndarray, component: str) -> np.ndarray:
    """Return one part of (complex) ``data``: magnitude, phase (rad), real or imag part.

    Those are float32; ``"complex"`` keeps complex64 (float32 for real input).
    """
    if component == "magnitude":
        result: np.ndarray = np.abs(data).astype(np.float32)
        return result
    if component == "phase":
        result = np.angle(data).astype(np.float32)
        return result
    if component == "real":
        return np.real(data).astype(np.float32)
    if component == "imag":
        return np.imag(data).astype(np.float32)
    return data.astype(np.complex64 if np.iscomplexobj(data) else np.float32)


def image_affine(
    matrix: SequenceABC[int],
    fov_m: SequenceABC[float],
    centre_m: SequenceABC[float] = (0.0, 0.0, 0.0),
    rotation: Any = None,
) -> np.ndarray:
    """Voxel index → RAS+ mm transform of an image grid.

    Parameters
    ----------
    matrix
        ``(nx, ny, nz)`` voxels.
    fov_m
        ``(x, y, z)`` field of view in m.
    centre_m
        RAS+ position in m of voxel ``(nx // 2, ny // 2, nz // 2)``.
    rotation
        Optional ``[3, 3]`` rotation whose columns are the RAS+ directions of the image's
        x, y and z axes; identity if None.

    Returns
    -------
    numpy.ndarray
        ``[4, 4]`` float64 affine; with no rotation and centre it equals
        :func:`mr0core.phantom.voxel_grid.default_affine` of the same grid.
    """
    n = np.asarray([int(v) for v in matrix], dtype=np.int64)
    fov = np.asarray([float(v) for v in fov_m], dtype=np.float64)
    centre = np.asarray([float(v) for v in centre_m], dtype=np.float64)
    if n.shape != (3,) or (n < 1).any():
        raise ValueError(f"matrix must be three positive integers, got {list(matrix)}")
    if fov.shape != (3,) or not np.isfinite(fov).all() or (fov <= 0).any():
        raise ValueError(f"fov_m must be three positive lengths in m, got {list(fov_m)}")
    if centre.shape != (3,) or not np.isfinite(centre).all():
        raise ValueError(f"centre_m must be three finite positions in m, got {list(centre_m)}")
    rot = np.eye(3)
    if rotation is not None:
        rot = np.asarray(
            rotation.detach().cpu() if isinstance(rotation, torch.Tensor) else rotation,
            dtype=np.float64,
        )
        if rot.shape != (3, 3) or not np.allclose(rot.T @ rot, np.eye(3), atol=1e-6):
            raise ValueError(f"rotation must be an orthonormal 3x3 matrix, got {rot.tolist()}")
    step_mm = fov * 1000.0 / n
    affine = np.eye(4)
    affine[:3, :3] = rot * step_mm  # scales column j by the voxel size of axis j
    affine[:3, 3] = centre * 1000.0 - affine[:3, :3] @ (n // 2).astype(np.float64)
    return affine


def sidecar_path(path: str | PathLike[str]) -> Path:
    """Return the JSON sidecar path of a ``.nii`` / ``.nii.gz`` file (same stem, ``.json``)."""
    p = Path(path)
    name = p.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_name(name + ".json")


def _as_numpy(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().cpu().numpy()
    return np.asarray(image)


def write_nifti(
    path: str | PathLike[str],
    image: Any,
    affine: Any,
    *,
    sidecar: dict[str, Any] | None = None,
    component: str = "magnitude",
    time_step_s: float | None = None,
) -> Path:
    """Write an image as NIfTI-1 (``.nii`` or ``.nii.gz``), with an optional JSON sidecar.

    Parameters
    ----------
    path
        Output file; ``.nii`` or ``.nii.gz`` (other names get ``.nii.gz`` appended).
    image
        ``[x, y, z]`` or ``[x, y, z, t]`` real or complex array / tensor (``[x, y]`` is taken as
        one slice).
    affine
        ``[4, 4]`` voxel index → RAS+ mm transform (see :func:`image_affine`).
    sidecar
        JSON-serialisable dict written beside the image (``<stem>.json``).
    component
        What to store of the image: ``"magnitude"`` (default, float32), ``"phase"`` (rad),
        ``"real"``, ``"imag"`` or ``"complex"`` (complex64). Real input is stored as float32
        unless ``"magnitude"`` or ``"phase"`` is asked for.
    time_step_s
        Spacing of the 4th dimension in s (NIfTI ``pixdim[4]``); default 1.

    Returns
    -------
    pathlib.Path
        The written image file.

    Raises
    ------
    IsADirectoryError
        ``path`` is an existing directory.
    ValueError
        Bad shape, affine or component.
    """
    import nibabel as nib

    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"cannot write a NIfTI file over the directory {out}")
    if not (out.name.endswith(".nii") or out.name.endswith(".nii.gz")):
        out = out.with_name(out.name + ".nii.gz")
        if out.is_dir():
            raise IsADirectoryError(f"cannot write a NIfTI file over the directory {out}")
    if component not in _COMPONENTS:
        raise ValueError(f"component must be one of {_COMPONENTS}, got {component!r}")
    data = _as_numpy(image)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim not in (3, 4) or 0 in data.shape:
        raise ValueError(
            f"image must be [x, y, z] or [x, y, z, t] (or [x, y]), got shape {data.shape}"
        )
    if not (np.issubdtype(data.dtype, np.number) or data.dtype == np.bool_):
        raise ValueError(f"image must be numeric, got dtype {data.dtype}")
    aff = np.asarray(_as_numpy(affine), dtype=np.float64)
    if aff.shape != (4, 4) or not np.isfinite(aff).all():
        raise ValueError(f"affine must be a finite 4x4 matrix, got shape {aff.shape}")

    stored = component_values(data, component)

    img = nib.Nifti1Image(np.ascontiguousarray(stored), aff)
    img.header.set_qform(aff, code=1)  # scanner anatomical
    img.header.set_sform(aff, code=1)
    img.header.set_xyzt_units(xyz="mm", t="sec")
    if stored.ndim == 4:
        zooms = list(img.header.get_zooms())
        zooms[3] = 1.0 if time_step_s is None else float(time_step_s)
        img.header.set_zooms(zooms)
    if np.isrealobj(stored) and stored.size:
        finite = stored[np.isfinite(stored)]
        if finite.size:
            img.header["cal_min"], img.header["cal_max"] = float(finite.min()), float(finite.max())
    out.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, fspath(out))
    if sidecar is not None:
        sidecar_path(out).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return out

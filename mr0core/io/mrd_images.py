"""ISMRMRD (MRD) images: header, meta attributes, HDF5 files.

Builds ``ismrmrd.Image`` objects with header fields and meta attributes, and writes / reads them
in an ISMRMRD HDF5 file.

The MRD server sends the same :class:`ismrmrd.Image` objects over the wire, so
:func:`make_mrd_images` is the single place where headers and meta attributes are filled in.

An image is indexed ``[x, y, z]`` (the shared convention); ISMRMRD stores pixels as
``[channel, z, y, x]`` with ``matrix_size = (x, y, z)``. Positions and directions are written as
given: MRD places them in the scanner's patient coordinate system, and the server copies them from
the acquisitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from os import PathLike, fspath
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mr0core.io.nifti import component_values

if TYPE_CHECKING:
    import ismrmrd

__all__ = [
    "IMAGE_TYPES",
    "image_array",
    "make_mrd_images",
    "read_mrd_images",
    "write_mrd_images",
]

IMAGE_TYPES = ("magnitude", "phase", "real", "imag", "complex")


def _imtype(image_type: str) -> int:
    import ismrmrd

    codes: dict[str, int] = {
        "magnitude": ismrmrd.IMTYPE_MAGNITUDE,
        "phase": ismrmrd.IMTYPE_PHASE,
        "real": ismrmrd.IMTYPE_REAL,
        "imag": ismrmrd.IMTYPE_IMAG,
        "complex": ismrmrd.IMTYPE_COMPLEX,
    }
    return codes[image_type]


def _stack(images: Any) -> np.ndarray:
    """Return images as ``[n, x, y, z]`` numpy."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().cpu().numpy()
    elif isinstance(images, np.ndarray):
        arr = images
    elif isinstance(images, SequenceABC) and not isinstance(images, str | bytes):
        parts = [
            p.detach().cpu().numpy() if isinstance(p, torch.Tensor) else np.asarray(p)
            for p in images
        ]
        if not parts:
            raise ValueError("images is empty")
        shapes = {p.shape for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"all images must have one shape, got {sorted(shapes)}")
        arr = np.stack(parts)
        if arr.ndim == 3:  # a list of [x, y] images
            arr = arr[..., None]
        return arr
    else:
        arr = np.asarray(images)
    if arr.ndim == 2:
        return arr[None, :, :, None]
    if arr.ndim == 3:
        return arr[None]
    if arr.ndim == 4:
        return arr
    raise ValueError(f"images must be [x, y], [x, y, z] or [n, x, y, z], got shape {arr.shape}")


def _per_image(value: Any, n: int, name: str, length: int, dtype: type) -> np.ndarray:
    """Broadcast one value (``[length]``) or one per image (``[n, length]``) to ``[n, length]``."""
    arr: np.ndarray = np.asarray(value, dtype=dtype)
    if arr.shape == (length,):
        return np.broadcast_to(arr, (n, length))
    if arr.shape == (n, length):
        return arr
    raise ValueError(f"{name} must have shape [{length}] or [{n}, {length}], got {arr.shape}")


def _per_image_int(value: int | SequenceABC[int] | None, n: int, name: str) -> list[int]:
    if value is None:
        return [0] * n
    if isinstance(value, int | np.integer):
        return [int(value)] * n
    values = [int(v) for v in value]
    if len(values) != n:
        raise ValueError(f"{name} needs {n} values (one per image), got {len(values)}")
    return values


def _window(data: np.ndarray) -> tuple[float, float]:
    """Window centre and width covering the 0.5–99.5 percentile range of ``data``."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    width = float(hi - lo) or float(abs(hi)) or 1.0
    return float((hi + lo) / 2), width


def make_mrd_images(
    images: Any,
    *,
    series_index: int = 0,
    image_type: str = "magnitude",
    fov_m: SequenceABC[float] | None = None,
    position_mm: Any = (0.0, 0.0, 0.0),
    read_dir: Any = (1.0, 0.0, 0.0),
    phase_dir: Any = (0.0, 1.0, 0.0),
    slice_dir: Any = (0.0, 0.0, 1.0),
    slices: int | SequenceABC[int] | None = None,
    contrasts: int | SequenceABC[int] | None = None,
    repetitions: int | SequenceABC[int] | None = None,
    image_index_start: int = 0,
    data_role: str = "Image",
    series_description: str | None = None,
    image_comment: str | None = None,
    window: tuple[float, float] | None = None,
    processing_history: SequenceABC[str] = ("MR0",),
    meta: Mapping[str, Any] | None = None,
) -> list[ismrmrd.Image]:
    """Build ``ismrmrd.Image`` objects with header fields and meta attributes filled in.

    Parameters
    ----------
    images
        One image ``[x, y]`` / ``[x, y, z]``, a stack ``[n, x, y, z]`` or a list of equal-shape
        images; real or complex, numpy or torch.
    series_index
        ``image_series_index`` of every image.
    image_type
        ``"magnitude"`` (float32 ``|image|``), ``"phase"`` (float32, rad), ``"real"``, ``"imag"``
        or ``"complex"`` (complex64); sets the header ``image_type``.
    fov_m
        Field of view ``(x, y, z)`` in m (stored in mm); default: 1 mm per voxel.
    position_mm, read_dir, phase_dir, slice_dir
        Centre position in mm and unit direction vectors, ``[3]`` for all images or ``[n, 3]``.
    slices, contrasts, repetitions
        Header counters, one for all or one per image (default 0).
    image_index_start
        ``image_index`` of the first image (then counting up, 1-based by MRD habit if you pass 1).
    data_role, series_description, image_comment
        Meta ``DataRole``, ``SeriesDescription``, ``ImageComment``.
    window
        ``(WindowCenter, WindowWidth)``; default from each image's 0.5–99.5 percentile range.
    processing_history
        Meta ``ImageProcessingHistory`` entries.
    meta
        More meta attributes (values or lists of values); they override the ones above.

    Returns
    -------
    list of ismrmrd.Image
        One per image, pixels ``[1, z, y, x]``.
    """
    import ismrmrd

    if image_type not in IMAGE_TYPES:
        raise ValueError(f"image_type must be one of {IMAGE_TYPES}, got {image_type!r}")
    stack = _stack(images)
    n = stack.shape[0]
    if 0 in stack.shape:
        raise ValueError(f"images must not be empty, got shape {stack.shape}")
    values = component_values(stack, image_type)
    if image_type == "complex":
        values = values.astype(np.complex64)
    matrix = stack.shape[1:]
    if fov_m is None:
        fov_mm = np.asarray(matrix, dtype=np.float64)
    else:
        fov_mm = np.asarray([float(f) for f in fov_m]) * 1000.0
        if fov_mm.shape != (3,) or (fov_mm <= 0).any():
            raise ValueError(f"fov_m must be three positive lengths in m, got {list(fov_m)}")
    pos = _per_image(position_mm, n, "position_mm", 3, np.float64)
    dirs = [
        _per_image(d, n, name, 3, np.float64)
        for d, name in ((read_dir, "read_dir"), (phase_dir, "phase_dir"), (slice_dir, "slice_dir"))
    ]
    slc = _per_image_int(slices, n, "slices")
    con = _per_image_int(contrasts, n, "contrasts")
    rep = _per_image_int(repetitions, n, "repetitions")

    out = []
    for i in range(n):
        pixels = np.ascontiguousarray(values[i].transpose(2, 1, 0)[None])  # [1, z, y, x]
        img = ismrmrd.Image.from_array(pixels, transpose=False)
        img.image_type = _imtype(image_type)
        img.field_of_view[:] = [float(f) for f in fov_mm]
        img.position[:] = [float(v) for v in pos[i]]
        img.read_dir[:] = [float(v) for v in dirs[0][i]]
        img.phase_dir[:] = [float(v) for v in dirs[1][i]]
        img.slice_dir[:] = [float(v) for v in dirs[2][i]]
        img.image_index = image_index_start + i
        img.image_series_index = int(series_index)
        img.slice, img.contrast, img.repetition = slc[i], con[i], rep[i]
        centre, width = window if window is not None else _window(np.abs(values[i]))
        attributes = ismrmrd.Meta()
        attributes["DataRole"] = data_role
        if series_description is not None:
            attributes["SeriesDescription"] = series_description
        if image_comment is not None:
            attributes["ImageComment"] = image_comment
        attributes["WindowCenter"] = str(round(float(centre), 6))
        attributes["WindowWidth"] = str(round(float(width), 6))
        attributes["ImageProcessingHistory"] = [str(h) for h in processing_history]
        for key, value in (meta or {}).items():
            attributes[str(key)] = (
                [str(v) for v in value] if isinstance(value, list | tuple) else str(value)
            )
        img.attribute_string = attributes.serialize()
        out.append(img)
    return out


def write_mrd_images(
    path: str | PathLike[str],
    images: Any,
    *,
    group: str = "dataset",
    image_group: str | None = None,
    series_index: int = 0,
    image_type: str = "magnitude",
    xml_header: str | None = None,
    **kwargs: Any,
) -> list[ismrmrd.Image]:
    """Write images to an ISMRMRD HDF5 file (appending to an existing file).

    Parameters
    ----------
    path
        The ``.h5`` / ``.mrd`` file (created if missing).
    images
        As for :func:`make_mrd_images`, or a list of ready ``ismrmrd.Image`` objects.
    group
        The HDF5 dataset group (``"dataset"`` by ISMRMRD habit).
    image_group
        Image sub-group name; default ``image_<series_index>``.
    series_index, image_type
        As for :func:`make_mrd_images`.
    xml_header
        Optional ISMRMRD XML header to store in the group.
    **kwargs
        Passed to :func:`make_mrd_images` (``fov_m``, ``position_mm``, ``meta``, …).

    Returns
    -------
    list of ismrmrd.Image
        The images written.
    """
    import ismrmrd

    out = Path(path)
    if out.is_dir():
        raise IsADirectoryError(f"cannot write an ISMRMRD file over the directory {out}")
    if isinstance(images, list | tuple) and images and isinstance(images[0], ismrmrd.Image):
        mrd_images = list(images)
    else:
        mrd_images = make_mrd_images(
            images, series_index=series_index, image_type=image_type, **kwargs
        )
    impath = image_group or f"image_{series_index}"
    out.parent.mkdir(parents=True, exist_ok=True)
    dset = ismrmrd.Dataset(fspath(out), group, create_if_needed=True)
    try:
        if xml_header is not None:
            dset.write_xml_header(xml_header)
        for img in mrd_images:
            dset.append_image(impath, img)
    finally:
        dset.close()
    return mrd_images


def read_mrd_images(
    path: str | PathLike[str], group: str = "dataset", image_group: str | None = None
) -> list[ismrmrd.Image]:
    """Read the images of an ISMRMRD HDF5 file.

    Parameters
    ----------
    path
        The file.
    group
        The HDF5 dataset group.
    image_group
        One image sub-group; default all groups whose name starts with ``image``, sorted by name.

    Returns
    -------
    list of ismrmrd.Image
        Images with header, ``attribute_string`` and pixels ``[channel, z, y, x]``.
    """
    import h5py
    import ismrmrd

    if not Path(path).is_file():
        raise FileNotFoundError(f"no ISMRMRD file at {path}")
    with h5py.File(fspath(path), "r") as f:
        if group not in f:
            raise KeyError(f"{path} has no group {group!r}; groups: {sorted(f.keys())}")
        names = sorted(
            k
            for k, v in f[group].items()
            if isinstance(v, h5py.Group) and "header" in v and "data" in v
        )
    if image_group is not None:
        if image_group not in names:
            raise KeyError(f"{path}:{group} has no image group {image_group!r}; have {names}")
        names = [image_group]
    else:
        names = [n for n in names if n.startswith("image")]
    dset = ismrmrd.Dataset(fspath(path), group, create_if_needed=False)
    try:
        return [
            dset.read_image(name, i) for name in names for i in range(dset.number_of_images(name))
        ]
    finally:
        dset.close()


def image_array(image: ismrmrd.Image) -> np.ndarray:
    """Return an ``ismrmrd.Image``'s pixels as ``[x, y, z]`` (first channel)."""
    result: np.ndarray = np.asarray(image.data)[0].transpose(2, 1, 0)
    return result

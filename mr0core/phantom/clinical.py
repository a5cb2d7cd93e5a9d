"""Twins from clinical data: a DICOM folder or a BIDS dataset.

These implement :meth:`TissueDict.from_dicom` and :meth:`TissueDict.from_bids`.

Both find a subject's quantitative maps, bring each to its canonical unit
(:func:`mr0core.io.quantities.to_canonical`, one warning per conversion), check that they share
one grid (shape and RAS+ affine, after :func:`nibabel.as_closest_canonical`) and hand them to
:func:`mr0core.phantom.twin.from_maps`, which builds the one-tissue twin (PD scaled, T2′ from T2*,
voxels without valid T1/T2 left out). The twin keeps the maps' affine, so
:meth:`TissueDict.save` writes NIfTIs in scanner coordinates.

DICOM (:func:`from_dicom`): :func:`mr0core.io.dicom.discover` classifies the series. Per role the
series with the highest ``SeriesNumber`` is used (a warning names the others; equal numbers in
one frame of reference go to the highest series UID, so the choice does not depend on the order
the files were found in; equal numbers in different frames of reference, e.g. two studies in one
folder, are an error); a series that does not load (geometry, unit) is left out with a warning.
Maps must share a ``FrameOfReferenceUID``.

BIDS (:func:`from_bids`): pybids indexes the dataset; sidecar metadata follows the inheritance
principle (a top-level ``T1map.json`` applies to every subject's T1 map). Suffixes per role:

=========  ====================================  ==========
role       suffixes                              datatype
=========  ====================================  ==========
T1         ``T1map`` (``R1map``)                 anat
T2         ``T2map`` (``R2map``)                 anat
T2*        ``T2starmap`` (``R2starmap``)         anat
PD         ``PDmap``, ``M0map``, ``S0map``       anat
B0         ``fieldmap``, ``B0map``               fmap
B1+        ``TB1map``, ``B1map``                 fmap, anat
ADC        ``ADC``, ``ADCmap``, ``MD``           dwi, anat
=========  ====================================  ==========

A sidecar's ``Units`` states the unit; ``MagneticFieldStrength`` gives B0. Two files for one role
(runs, acquisitions, sessions) raise :class:`PhantomError` naming them.
"""

from __future__ import annotations

import warnings
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mr0core.io.dicom import DicomError, DicomSeries, discover
from mr0core.io.quantities import RATE_ROLES, QuantityError, to_canonical

from .nifti import PhantomError
from .twin import from_maps
from .voxel_grid import VoxelGridPhantom

__all__ = ["bids_subject_hint", "from_bids", "from_dicom", "twin_from_volumes"]

_AFFINE_TOL_MM = 1e-3
_ROLE_ARG = {
    "PDmap": "PD", "T1map": "T1", "T2map": "T2", "T2starmap": "T2star", "ADC": "ADC",
    "B0map": "B0", "B1map": "B1",
}  # fmt: skip
_BIDS_SUFFIXES: dict[str, tuple[str, ...]] = {
    "T1map": ("T1map",),
    "R1map": ("R1map",),
    "T2map": ("T2map",),
    "R2map": ("R2map",),
    "T2starmap": ("T2starmap",),
    "R2starmap": ("R2starmap",),
    "PDmap": ("PDmap", "M0map", "S0map"),
    "B0map": ("fieldmap", "B0map"),
    "B1map": ("TB1map", "B1map"),
    "ADC": ("ADC", "ADCmap", "MD"),
}
_NIFTI_EXT = [".nii.gz", ".nii"]


def twin_from_volumes(
    volumes: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    name: str = "subject",
    field_strength: float | None = None,
    source: str = "maps",
) -> Any:
    """Build a one-tissue twin from maps already in canonical units.

    Parameters
    ----------
    volumes
        Role (``"PDmap"``, ``"T1map"``, ``"T2map"``, ``"T2starmap"``, ``"ADC"``, ``"B0map"``,
        ``"B1map"``) → (``[x, y, z]`` map in :data:`~mr0core.io.quantities.CANONICAL_UNITS`,
        ``[4, 4]`` RAS+ mm affine). PD, T1 and T2 are required.
    name
        Tissue name.
    field_strength
        B0 in T (default 3 T).
    source
        Names the input in errors.

    Returns
    -------
    TissueDict
        ``{name: VoxelGridPhantom}`` on the maps' closest-canonical RAS+ grid, with their affine.
    """
    missing = [r for r in ("PDmap", "T1map", "T2map") if r not in volumes]
    if missing:
        raise PhantomError(
            f"{source}: no {', '.join(missing)} found (found: {', '.join(volumes) or 'none'}); "
            "a twin needs PD (or M0), T1 and T2 maps"
        )
    arrays: dict[str, np.ndarray] = {}
    ref_shape: tuple[int, ...] | None = None
    ref_affine: np.ndarray | None = None
    first = ""
    for role, (data, affine) in volumes.items():
        canon = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, np.float32), affine))
        arr = np.asarray(canon.dataobj, dtype=np.float32)
        aff = np.asarray(canon.affine, dtype=np.float64)
        if arr.ndim != 3:
            raise PhantomError(f"{source}: {role} is {arr.ndim}-D {arr.shape}; expected 3-D")
        if ref_shape is None or ref_affine is None:
            ref_shape, ref_affine, first = arr.shape, aff, role
        elif arr.shape != ref_shape or not np.allclose(aff, ref_affine, atol=_AFFINE_TOL_MM):
            raise PhantomError(
                f"{source}: {role} grid {arr.shape} does not match {first} {ref_shape} (or its "
                f"affine differs); resample the maps onto one grid first\n{aff}\nvs\n{ref_affine}"
            )
        arrays[_ROLE_ARG[role]] = arr
    assert ref_affine is not None
    assert ref_shape is not None
    size = np.linalg.norm(ref_affine[:3, :3], axis=0) * np.array(ref_shape) / 1000.0
    twin = from_maps(
        None, PD=arrays.get("PD"), T1=arrays.get("T1"), T2=arrays.get("T2"),
        T2star=arrays.get("T2star"), ADC=arrays.get("ADC"), B0=arrays.get("B0"),
        B1=arrays.get("B1"), name=name, field_strength=field_strength, size=size,
    )  # fmt: skip
    for key, p in list(twin.items()):
        twin[key] = VoxelGridPhantom(
            p.PD, p.T1, p.T2, p.T2dash, p.D, p.B0, p.B1, p.coil_sens, affine=ref_affine
        )
    return twin


def _rank(s: DicomSeries) -> tuple[int, int]:
    return (s.series_number or 0, s.slices)


def _pick(candidates: list[DicomSeries], role: str) -> DicomSeries:
    # ties go to the highest series UID: the same choice whatever order the files were found in
    best = max(candidates, key=lambda s: (*_rank(s), s.uid))
    if len(candidates) > 1:
        others = ", ".join(str(s) for s in candidates if s is not best)
        warnings.warn(
            f"from_dicom: {len(candidates)} {role} series; using {best} (highest series "
            f"number), not {others}",
            stacklevel=3,
        )
    return best


def from_dicom(
    folder: str | PathLike[str], *, name: str = "subject", field_strength: float | None = None
) -> Any:
    """Build a twin from the quantitative-map series in a DICOM folder.

    Parameters
    ----------
    folder
        A folder of DICOM files, any nesting (see :func:`mr0core.io.dicom.discover`).
    name
        Tissue name in the result.
    field_strength
        B0 in T; default: the series' ``MagneticFieldStrength``, else 3 T.

    Returns
    -------
    TissueDict
        One tissue on the maps' RAS+ grid.
    """
    series = discover(folder)
    by_role: dict[str, list[DicomSeries]] = {}
    for s in series:
        role = RATE_ROLES.get(s.role, s.role)
        if role in _ROLE_ARG:
            by_role.setdefault(role, []).append(s)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    used: list[DicomSeries] = []
    tied: list[str] = []  # roles whose best series tie across frames of reference
    for role, candidates in by_role.items():
        s = _pick(candidates, role)
        top = [c for c in candidates if _rank(c) == _rank(s)]
        if len({c.frame_of_reference for c in top}) > 1:
            tied.append(f"{role} ({', '.join(str(c) for c in top)})")
            continue
        try:
            vol = s.load()
        except DicomError as e:
            warnings.warn(f"from_dicom: {s} left out: {e}", stacklevel=2)
            continue
        volumes[role] = (vol.data, vol.affine)
        used.append(s)
    if tied:
        raise PhantomError(
            f"from_dicom {folder}: series of different frames of reference tie for the highest "
            f"series number: {'; '.join(tied)}; give the folder of one study"
        )
    refs = {s.frame_of_reference for s in used}
    if len(refs) > 1:
        raise PhantomError(
            f"from_dicom {folder}: the maps have {len(refs)} frames of reference "
            f"({', '.join(str(s) for s in used)}); they are not in one patient position"
        )
    if field_strength is None:
        fields = [s.field_strength for s in used if s.field_strength]
        field_strength = fields[0] if fields else None
    found = ", ".join(f"{s.role}: {s}" for s in series) or "no image series"
    if not all(r in volumes for r in ("PDmap", "T1map", "T2map")):
        missing = [r for r in ("PDmap", "T1map", "T2map") if r not in volumes]
        raise PhantomError(
            f"from_dicom {folder}: no usable {', '.join(missing)} series (found {found}); a twin "
            "needs PD (or M0), T1 and T2 maps"
        )
    return twin_from_volumes(
        volumes, name=name, field_strength=field_strength, source=f"from_dicom {folder}"
    )


def _label(value: str | None, prefix: str) -> str | None:
    if value is None:
        return None
    value = str(value)
    return value[len(prefix) :] if value.startswith(prefix) else value


def from_bids(
    root: str | PathLike[str],
    subject: str,
    session: str | None = None,
    *,
    name: str = "subject",
    field_strength: float | None = None,
) -> Any:
    """Build a twin from a subject's quantitative maps in a BIDS dataset (pybids).

    Parameters
    ----------
    root
        The dataset root (holding ``sub-*``; a ``dataset_description.json`` is expected).
    subject
        Subject label, with or without ``sub-``.
    session
        Session label, with or without ``ses-``; needed only when maps lie in several sessions.
    name
        Tissue name in the result.
    field_strength
        B0 in T; default: the sidecars' ``MagneticFieldStrength``, else 3 T.

    Returns
    -------
    TissueDict
        One tissue on the maps' RAS+ grid.
    """
    # pybids is imported here: it is heavy (SQLAlchemy) and only this reader needs it
    from bids import BIDSLayout

    r = Path(fspath(root))
    if not r.is_dir():
        raise FileNotFoundError(f"BIDS root not found: {r}")
    sub = _label(subject, "sub-")
    ses = _label(session, "ses-")
    if not (r / "dataset_description.json").is_file():
        warnings.warn(f"from_bids: {r} has no dataset_description.json", stacklevel=2)
    layout = BIDSLayout(str(r), validate=False)
    if sub not in layout.get_subjects():
        raise PhantomError(
            f"from_bids {r}: no subject {sub!r} (subjects: {', '.join(layout.get_subjects())})"
        )
    query: dict[str, Any] = {"subject": sub, "extension": _NIFTI_EXT}
    if ses is not None:
        if ses not in layout.get_sessions(subject=sub):
            raise PhantomError(
                f"from_bids {r}: subject {sub} has no session {ses!r} (sessions: "
                f"{', '.join(layout.get_sessions(subject=sub)) or 'none'})"
            )
        query["session"] = ses
    found: dict[str, Any] = {}
    for role, suffixes in _BIDS_SUFFIXES.items():
        files = layout.get(suffix=list(suffixes), **query)
        if not files:
            continue
        if len(files) > 1:
            names = ", ".join(Path(f.path).relative_to(r).as_posix() for f in files)
            sessions = {f.entities.get("session") for f in files}
            hint = "; pass session=" if ses is None and len(sessions) > 1 else ""
            raise PhantomError(
                f"from_bids {r}: {len(files)} {role} files for sub-{sub} ({names}){hint}; pick "
                "one with TissueDict.from_maps(T1=..., ...)"
            )
        found[role] = files[0]
    for time_role in ("T1map", "T2map", "T2starmap"):
        rate = next(k for k, v in RATE_ROLES.items() if v == time_role)
        if time_role in found:
            found.pop(rate, None)
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fields: list[float] = []
    for role, f in found.items():
        meta = f.get_metadata()
        img = nib.load(f.path)
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise PhantomError(f"from_bids: {f.path} is not an image volume")
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        if len(img.shape) != 3:
            raise PhantomError(f"from_bids: {f.path} is {img.shape}; expected a 3-D map")
        data = np.asarray(img.get_fdata(dtype=np.float32))
        rel = Path(f.path).relative_to(r).as_posix()
        try:
            out_role, data = to_canonical(
                role, data, meta.get("Units"), where=rel, unit_source="sidecar Units",
                nominal_flip_deg=meta.get("FlipAngle"),
            )  # fmt: skip
        except QuantityError as e:
            raise PhantomError(str(e)) from e
        volumes[out_role] = (data, np.asarray(img.affine, dtype=np.float64))
        if "MagneticFieldStrength" in meta:
            fields.append(float(meta["MagneticFieldStrength"]))
    if field_strength is None and fields:
        field_strength = fields[0]
    where = f"from_bids {r} sub-{sub}" + (f" ses-{ses}" if ses else "")
    return twin_from_volumes(volumes, name=name, field_strength=field_strength, source=where)


def bids_subject_hint(directory: str | PathLike[str]) -> str | None:
    """Return an error message if ``directory`` is a BIDS dataset, subject or session folder.

    :meth:`TissueDict.from_maps` reads maps from one folder; a subject holds them in ``anat/``,
    ``fmap/``, ``dwi/`` (and ``ses-*``), which :meth:`TissueDict.from_bids` reads.
    """
    d = Path(fspath(directory))
    if not d.is_dir():
        return None
    kids = {p.name for p in d.iterdir() if p.is_dir()}
    bids_kids = kids & {"anat", "fmap", "dwi"} or {k for k in kids if k.startswith("ses-")}
    if d.name.startswith(("sub-", "ses-")) and bids_kids:
        sub_dir = next(p for p in (d, *d.parents) if p.name.startswith(("sub-", "ses-")))
        sub_dir = sub_dir.parent if sub_dir.name.startswith("ses-") else sub_dir
        ses = f", session={d.name[4:]!r}" if d.name.startswith("ses-") else ""
        call = f"TissueDict.from_bids({str(sub_dir.parent)!r}, {sub_dir.name[4:]!r}{ses})"
        what = "subject"
    elif any(k.startswith("sub-") for k in kids):
        call = f"TissueDict.from_bids({str(d)!r}, '<subject>')"
        what = "dataset"
    else:
        return None
    return (
        f"{d} is a BIDS {what} folder: its maps lie in anat/, fmap/, dwi/ (and ses-*); use "
        f"{call}, or from_maps on one folder of maps"
    )

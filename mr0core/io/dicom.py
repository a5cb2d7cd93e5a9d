"""DICOM in: find the series of a folder, classify them by role, and load them as volumes.

:func:`discover` walks a folder (any nesting; a DICOMDIR is recognised and not needed), reads
only headers, groups images by ``SeriesInstanceUID`` and, inside a series, into *stacks* of one
image type, echo time and b-value (as ``dcm2niix`` splits them). Classic single-frame images and
enhanced multi-frame objects (per-frame and shared functional groups) give the same frames.
:meth:`DicomSeries.load` reads the pixels and returns a :class:`DicomVolume`: a ``[x, y, z]``
float32 array (x = column, y = row, z = slice sorted along the slice normal, as nibabel indexes
a NIfTI) and its RAS+ affine in mm.

Role of a stack (first rule that decides wins; ``DicomSeries.role_reason`` says which):

1. ``ImageType`` (classic) or ``FrameType`` (enhanced) naming a map: ``T1 MAP``, ``T2_MAP``,
   ``T2STAR MAP``, ``R2* MAP``, ``PD MAP``/``M0 MAP``, ``ADC``, ``B0 MAP``/``FIELD MAP``,
   ``B1 MAP``/``FLIP ANGLE MAP``; ``P``/``PHASE`` or ``LOCALIZER`` make it ``other``;
2. ``SeriesDescription``, then ``ProtocolName``: the same names in free text (``T1 map``,
   ``T2* mapping``, ``fieldmap``, ``ADC``, ``localizer``);
3. sequence attributes: ``SequenceName`` of a Siemens field map (``fm2d``/``fm3d``) or B1 map
   (``b1map``); a diffusion b-value above 0 makes a diffusion-weighted image ``other``;
4. public vendor tags: Philips ``(2005,1011)`` image type (``T1``, ``T2``, ``T2_STAR``, ``RHO``,
   ``ADC``, ``B0``, ``R2_STAR``).

Anything else is ``anatomy``. A B0 map needs ``DERIVED`` in its image type or a Hz unit (the
magnitude and phase-difference images of a field-mapping scan are not maps in Hz).

Pixel values (per frame, the first that applies):

1. the Real World Value Mapping sequence (standard; Philips writes it): its first linear item
   (slope, intercept), with its unit from ``MeasurementUnitsCodeSequence`` (UCUM); a mapping
   that holds only a LUT is not supported (loading warns and uses rule 3);
2. for Philips without it, the private scale slope ``(2005,100E)``: ``(PV·RS + RI) / (RS·SS)``
   (the floating-point value dcm2niix writes by default; unit unknown);
3. ``RescaleSlope``/``RescaleIntercept`` (unit unknown).

:meth:`DicomSeries.load` then converts a map role to its canonical unit with
:func:`mr0core.io.quantities.to_canonical` (one warning per conversion).

Geometry: ``ImagePositionPatient``/``ImageOrientationPatient``/``PixelSpacing`` (LPS) give the
affine, converted to RAS+ like dcm2niix and nibabel. Slices are sorted by their position along
the normal ``row × column``. Loading raises :class:`DicomGeometryError` (never guesses) for a
stack whose positions do not lie along the normal (sheared/tilted), whose spacing varies by more
than 1 % (a gap names the missing slice count) or that holds several images at one position.

Hostile input: unreadable, truncated, non-image and geometry-less files are skipped, and each
discover or load call gives one warning naming them. Limits (keyword arguments of
:func:`discover`): :data:`MAX_FILES` files examined, :data:`MAX_FILE_BYTES` per file,
:data:`MAX_VOXELS` per stack.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike, fspath
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .quantities import CANONICAL_UNITS, MAP_ROLES, RATE_ROLES, QuantityError, to_canonical

__all__ = [
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "MAX_VOXELS",
    "ROLES",
    "DicomError",
    "DicomGeometryError",
    "DicomSeries",
    "DicomVolume",
    "discover",
]

MAX_FILES = 50_000
"""Files examined by one :func:`discover` call; the walk stops with a warning beyond it."""
MAX_FILE_BYTES = 2 * 1024**3
"""Bytes of one file; a larger file is skipped with a warning."""
MAX_VOXELS = 2**28
"""Voxels of one stack (1 GiB as float32); a larger stack is skipped with a warning."""

ROLES = (*MAP_ROLES, "anatomy", "other")
"""Roles :func:`discover` assigns: the quantitative maps, plain ``anatomy`` and ``other``."""

_SPACING_RTOL = 0.01  # relative spacing variation tolerated between slices
_SHEAR_TOL = 1e-3  # sine of the angle between the slice direction and the normal
_ORIENT_DECIMALS = 4
_MAX_SKIPS_NAMED = 20
_DICOMDIR_UID = "1.2.840.10008.1.3.10"
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_PHILIPS_CREATOR = "Philips MR Imaging DD 001"


class DicomError(ValueError):
    """A DICOM series that cannot be loaded as a volume."""


class DicomGeometryError(DicomError):
    """A stack whose slice geometry is inconsistent (gap, shear, uneven spacing, duplicates)."""


@dataclass(frozen=True)
class _Scaling:
    slope: float
    intercept: float
    unit: str | None
    source: str


@dataclass(frozen=True)
class _Frame:
    path: Path
    index: int | None  # frame of a multi-frame object (0-based); None: single-frame
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]  # (between rows, between columns) in mm
    thickness: float | None
    rows: int
    columns: int
    image_type: tuple[str, ...]
    echo_time: float | None
    b_value: float | None
    scaling: _Scaling
    instance: int


@dataclass
class DicomVolume:
    """One stack of a series as a volume.

    Attributes
    ----------
    data
        ``[x, y, z]`` float32: x along a row (column index), y down the columns (row index), z the
        slices sorted along the normal; values after the pixel-value mapping and, for map roles,
        in the canonical unit (:data:`mr0core.io.quantities.CANONICAL_UNITS`).
    affine
        ``[4, 4]`` voxel index → RAS+ mm (NIfTI convention).
    role
        The stack's role (a rate map becomes its time role).
    unit
        The unit of ``data`` (``"s"``, ``"Hz"``, …), or the stated unit (None if unknown) when no
        conversion applied.
    """

    data: np.ndarray
    affine: np.ndarray
    role: str
    unit: str | None


@dataclass
class DicomSeries:
    """A stack of images of one DICOM series (one image type, echo time and b-value).

    Attributes
    ----------
    uid
        ``SeriesInstanceUID``.
    role
        One of :data:`ROLES`.
    role_reason
        Which attribute decided the role, e.g. ``"ImageType 'T1 MAP'"``.
    description
        ``SeriesDescription`` (else ``ProtocolName``).
    series_number
        ``SeriesNumber`` or None.
    manufacturer, modality
        As in the headers.
    image_type
        ``ImageType`` (classic) or ``FrameType`` (enhanced) values.
    enhanced
        Whether the images came from multi-frame objects.
    rows, columns, slices
        Matrix and number of images in the stack.
    echo_time, b_value
        ms and s/mm², or None.
    field_strength
        ``MagneticFieldStrength`` in T, or None.
    frame_of_reference
        ``FrameOfReferenceUID`` (maps of one twin must share it).
    study_uid
        ``StudyInstanceUID``.
    flip_angle
        Nominal ``FlipAngle`` in degrees, or None.
    """

    uid: str
    role: str
    role_reason: str
    description: str
    series_number: int | None
    manufacturer: str
    modality: str
    image_type: tuple[str, ...]
    enhanced: bool
    rows: int
    columns: int
    slices: int
    echo_time: float | None
    b_value: float | None
    field_strength: float | None
    frame_of_reference: str
    study_uid: str
    flip_angle: float | None
    _frames: list[_Frame] = field(repr=False, default_factory=list)

    @property
    def files(self) -> list[Path]:
        """The files holding this stack's images, sorted."""
        return sorted({f.path for f in self._frames})

    def __str__(self) -> str:
        return (
            f"series {self.series_number} {self.description!r} [{self.role}] "
            f"{self.columns}x{self.rows}x{self.slices}"
        )

    def load(self, *, convert_units: bool = True) -> DicomVolume:
        """Read the pixels and return the stack as a volume with its RAS+ affine.

        Parameters
        ----------
        convert_units
            Convert a map role to its canonical unit (one warning per conversion).

        Raises
        ------
        DicomGeometryError
            If the slices do not form one regular stack.
        DicomError
            If no image of the stack can be read.
        """
        skips = _Skips(f"load {self}")
        pixels: dict[Path, np.ndarray] = {}
        frames: list[_Frame] = []
        for f in self._frames:
            if f.path not in pixels:
                try:
                    ds = pydicom.dcmread(f.path)
                    arr = np.asarray(ds.pixel_array)
                except Exception as e:  # pydicom raises many types for damaged pixel data
                    skips.add(f.path, f"pixel data unreadable ({type(e).__name__}: {e})")
                    pixels[f.path] = np.empty(0)
                    continue
                pixels[f.path] = arr
            arr = pixels[f.path]
            if arr.size == 0:
                continue
            want = (f.rows, f.columns) if f.index is None else (None, f.rows, f.columns)
            if arr.ndim != len(want) or arr.shape[-2:] != (f.rows, f.columns):
                skips.add(f.path, f"pixel array {arr.shape} does not match {want}")
                pixels[f.path] = np.empty(0)
                continue
            frames.append(f)
        skips.emit()
        if not frames:
            raise DicomError(f"{self}: no readable images")
        frames, affine = _sort_and_affine(frames, str(self))
        units = {f.scaling.unit for f in frames}
        sources = {f.scaling.source for f in frames}
        if any("ignored" in src for src in sources):
            warnings.warn(
                f"{self}: a Real World Value Mapping holds only a LUT, which is not supported; "
                "values use RescaleSlope/Intercept instead",
                stacklevel=2,
            )
        vol = np.empty((self.columns, self.rows, len(frames)), dtype=np.float64)
        for k, f in enumerate(frames):
            arr = pixels[f.path]
            img = arr if f.index is None else arr[f.index]
            vol[:, :, k] = img.T.astype(np.float64) * f.scaling.slope + f.scaling.intercept
        if len(units) > 1:
            raise DicomError(f"{self}: frames state different units {sorted(map(str, units))}")
        unit = units.pop()
        role = self.role
        if convert_units and (role in MAP_ROLES or role in RATE_ROLES):
            try:
                role, vol = to_canonical(
                    role, vol, unit, where=str(self), unit_source=" and ".join(sorted(sources)),
                    nominal_flip_deg=self.flip_angle,
                )  # fmt: skip
            except QuantityError as e:
                raise DicomError(str(e)) from e
            unit = CANONICAL_UNITS[role]
        return DicomVolume(np.asarray(vol, dtype=np.float32), affine, role, unit)


class _Skips:
    """Collects skipped files and gives one warning naming them."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[tuple[Path, str]] = []

    def add(self, path: Path, reason: str) -> None:
        self.items.append((path, reason))

    def emit(self) -> None:
        if not self.items:
            return
        named = "; ".join(f"{p}: {r}" for p, r in self.items[:_MAX_SKIPS_NAMED])
        more = len(self.items) - _MAX_SKIPS_NAMED
        tail = f"; and {more} more" if more > 0 else ""
        warnings.warn(
            f"{self.what}: skipped {len(self.items)} file(s): {named}{tail}", stacklevel=3
        )


# ---------------------------------------------------------------------- headers → frames


def _get(ds: Any, keyword: str, default: Any = None) -> Any:
    try:
        value = getattr(ds, keyword, default)
    except Exception:  # a malformed value that pydicom cannot convert
        return default
    return default if value is None or value == "" else value


def _seq_item(group: Any, keyword: str) -> Any:
    seq = _get(group, keyword)
    try:
        return seq[0] if seq else None
    except (TypeError, IndexError):
        return None


def _fg(per_frame: Any, shared: Any, seq: str, keyword: str) -> Any:
    """Return an attribute of a functional group: per-frame first, then shared."""
    for group in (per_frame, shared):
        if group is None:
            continue
        item = _seq_item(group, seq)
        if item is not None:
            value = _get(item, keyword)
            if value is not None:
                return value
    return None


@overload
def _floats(value: Any, n: Literal[2]) -> tuple[float, float] | None: ...
@overload
def _floats(value: Any, n: Literal[3]) -> tuple[float, float, float] | None: ...
@overload
def _floats(value: Any, n: int) -> tuple[float, ...] | None: ...
def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    """Return ``n`` finite floats read from ``value``, or None if it holds anything else."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        return None
    return out


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _rwvm(item: Any) -> tuple[float, float, str | None] | None:
    """Return the first linear Real World Value Mapping as (slope, intercept, UCUM unit)."""
    seq = _get(item, "RealWorldValueMappingSequence")
    for m in seq or []:
        slope = _float(_get(m, "RealWorldValueSlope"))
        if slope is None or slope == 0:
            continue
        intercept = _float(_get(m, "RealWorldValueIntercept")) or 0.0
        unit_item = _seq_item(m, "MeasurementUnitsCodeSequence")
        unit = _get(unit_item, "CodeValue") if unit_item is not None else None
        return slope, intercept, (str(unit) if unit is not None else None)
    return None


def _philips_private(ds: Dataset, offset: int) -> Any:
    try:
        return ds.get_private_item(0x2005, offset, _PHILIPS_CREATOR).value
    except (KeyError, ValueError):
        return None


def _scaling(ds: Dataset, per_frame: Any, shared: Any, manufacturer: str) -> _Scaling:
    for group in (per_frame, shared):
        if group is not None:
            m = _rwvm(group)
            if m is not None:
                return _Scaling(m[0], m[1], m[2], "RealWorldValueMapping")
    m = _rwvm(ds)
    if m is not None:
        return _Scaling(m[0], m[1], m[2], "RealWorldValueMapping")
    slope = _fg(per_frame, shared, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = _fg(per_frame, shared, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None:
        slope = _get(ds, "RescaleSlope")
    if intercept is None:
        intercept = _get(ds, "RescaleIntercept")
    rs = _float(slope) or 1.0
    ri = _float(intercept) or 0.0
    has_lut = any(
        _get(g, "RealWorldValueMappingSequence") for g in (per_frame, shared, ds) if g is not None
    )
    if has_lut:  # a Real World Value Mapping with only a LUT (RealWorldValueLUTData)
        return _Scaling(rs, ri, None, "RescaleSlope/Intercept (RealWorldValueMapping LUT ignored)")
    if "philips" in manufacturer.lower():
        ss = _float(_philips_private(ds, 0x0E))
        if ss is not None and ss != 0:
            return _Scaling(1.0 / ss, ri / (rs * ss), None, "Philips private scale slope")
    if rs == 1.0 and ri == 0.0:
        return _Scaling(1.0, 0.0, None, "stored values")
    return _Scaling(rs, ri, None, "RescaleSlope/Intercept")


def _frames_of(ds: Dataset, path: Path) -> tuple[list[_Frame], str | None]:
    """Return the frames of one image object, or a reason to skip it."""
    rows, cols = _get(ds, "Rows"), _get(ds, "Columns")
    if not rows or not cols or "PixelData" not in ds:
        return [], "no image (no Rows/Columns/PixelData)"
    if int(_get(ds, "SamplesPerPixel", 1)) != 1:
        return [], "colour image (SamplesPerPixel > 1)"
    manufacturer = str(_get(ds, "Manufacturer", ""))
    n_frames = int(_float(_get(ds, "NumberOfFrames", 1)) or 1)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts in _UNCOMPRESSED:
        bits = int(_get(ds, "BitsAllocated", 16))
        need = int(rows) * int(cols) * n_frames * bits // 8
        raw = ds.get_item("PixelData")
        start = getattr(raw, "value_tell", None)
        size = path.stat().st_size
        if start is not None and start + need > size:
            return [], f"truncated ({size} bytes; its pixel data needs {start + need})"
    image_type = tuple(str(v) for v in (_get(ds, "ImageType") or ()))
    instance = int(_float(_get(ds, "InstanceNumber", 0)) or 0)
    per_frame_seq = _get(ds, "PerFrameFunctionalGroupsSequence")
    shared = _seq_item(ds, "SharedFunctionalGroupsSequence")
    frames: list[_Frame] = []
    if per_frame_seq is not None or shared is not None:  # enhanced multi-frame
        pf_list = list(per_frame_seq or [])
        if len(pf_list) not in (0, n_frames):
            return [], f"{len(pf_list)} per-frame groups for {n_frames} frames"
        for i in range(n_frames):
            pf = pf_list[i] if pf_list else None
            pos = _floats(_fg(pf, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
            ori = _floats(_fg(pf, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _floats(_fg(pf, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
            if pos is None or ori is None or spacing is None:
                return [], f"frame {i + 1}: no plane position/orientation/pixel spacing"
            thick = _float(_fg(pf, shared, "PixelMeasuresSequence", "SliceThickness"))
            ftype = _fg(pf, shared, "MRImageFrameTypeSequence", "FrameType")
            echo = _float(_fg(pf, shared, "MREchoSequence", "EffectiveEchoTime"))
            bval = _float(_fg(pf, shared, "MRDiffusionSequence", "DiffusionBValue"))
            frames.append(
                _Frame(
                    path, i, pos, ori, spacing, thick, int(rows), int(cols),
                    tuple(str(v) for v in ftype) if ftype else image_type, echo, bval,
                    _scaling(ds, pf, shared, manufacturer), instance * 100_000 + i,
                )
            )  # fmt: skip
        return frames, None
    pos = _floats(_get(ds, "ImagePositionPatient"), 3)
    ori = _floats(_get(ds, "ImageOrientationPatient"), 6)
    spacing = _floats(_get(ds, "PixelSpacing"), 2)
    if pos is None or ori is None or spacing is None:
        return [], "no geometry (ImagePositionPatient/ImageOrientationPatient/PixelSpacing)"
    if n_frames != 1:
        return [], f"multi-frame ({n_frames} frames) without functional groups"
    bval = _float(_get(ds, "DiffusionBValue"))
    frame = _Frame(
        path, None, pos, ori, spacing, _float(_get(ds, "SliceThickness")), int(rows), int(cols),
        image_type, _float(_get(ds, "EchoTime")), bval,
        _scaling(ds, None, None, manufacturer), instance,
    )  # fmt: skip
    return [frame], None


# ---------------------------------------------------------------------- roles

_MAP_PATTERNS: tuple[tuple[str, str], ...] = (
    ("R2starmap", r"\bR2 ?(\*|STAR) ?MAP"),
    ("T2starmap", r"\bT2 ?(\*|STAR) ?(MAP|MAPPING)\b|\bT2STARMAP\b|\bT2S ?MAP\b"),
    ("R1map", r"\bR1 ?MAP\b"),
    ("R2map", r"\bR2 ?MAP\b"),
    ("T1map", r"\bT1 ?(MAP|MAPPING)\b|\bT1MAP\b"),
    ("T2map", r"\bT2 ?(MAP|MAPPING)\b|\bT2MAP\b"),
    ("PDmap", r"\b(PD|M0|S0|PROTON DENSITY) ?(MAP|MAPPING)\b|\bPDMAP\b|\bM0MAP\b"),
    ("ADC", r"\bADC\b|\bAPPARENT DIFFUSION"),
    ("B0map", r"\bB0 ?MAP\b|\bFIELD ?MAP(PING)?\b|\bB0MAP\b"),
    ("B1map", r"\bB1\+? ?MAP\b|\bTB1 ?MAP\b|\bFLIP ANGLE MAP\b|\bB1MAP\b"),
)
_OTHER_PATTERNS = r"\bLOCALI[SZ]ER\b|\bSCOUT\b|\bSURVEY\b"
_PHILIPS_TYPES = {
    "T1": "T1map", "T2": "T2map", "T2_STAR": "T2starmap", "R2_STAR": "R2starmap",
    "R2": "R2map", "RHO": "PDmap", "ADC": "ADC", "B0": "B0map",
}  # fmt: skip


def _norm_text(text: str) -> str:
    return re.sub(r"[_\-\s]+", " ", text.upper()).strip()


def _match_map(text: str) -> str | None:
    t = _norm_text(text)
    for role, pattern in _MAP_PATTERNS:
        if re.search(pattern, t):
            return role
    return None


def _classify(head: dict[str, Any], frame: _Frame) -> tuple[str, str]:
    """Return (role, reason) by the documented priority."""
    itype = [v.upper() for v in frame.image_type]
    joined = "\\".join(itype)
    role = _match_map(" ".join(itype[2:]) if len(itype) > 2 else joined)
    derived = bool(itype) and itype[0] == "DERIVED"
    hz = (frame.scaling.unit or "").strip().lower() == "hz"

    def accept(role: str | None) -> str | None:
        if role == "B0map" and not (derived or hz):
            return None
        return role

    kind = "FrameType" if frame.index is not None else "ImageType"
    if accept(role):
        return str(role), f"{kind} {joined!r}"
    if any(v in ("P", "PHASE") for v in itype[2:3]) or "PHASE" in itype[2:]:
        return "other", f"{kind} {joined!r} (phase image)"
    if re.search(_OTHER_PATTERNS, joined):
        return "other", f"{kind} {joined!r} (localizer)"
    for key in ("SeriesDescription", "ProtocolName"):
        text = head.get(key) or ""
        if re.search(_OTHER_PATTERNS, _norm_text(text)):
            return "other", f"{key} {text!r} (localizer)"
        role = accept(_match_map(text))
        if role:
            return role, f"{key} {text!r}"
        if _match_map(text) == "B0map":
            return "other", f"{key} {text!r}: field-mapping images, not a map in Hz"
    seqname = (head.get("SequenceName") or "").lower()
    if re.search(r"fm[23]d", seqname):
        return "other", f"SequenceName {seqname!r}: field-mapping images, not a map in Hz"
    if "b1map" in seqname.replace("_", ""):
        return "B1map", f"SequenceName {seqname!r}"
    if frame.b_value is not None and frame.b_value > 0:
        return "other", f"diffusion-weighted (b = {frame.b_value:g} s/mm2)"
    ptype = head.get("PhilipsImageType")
    if ptype in _PHILIPS_TYPES:
        return _PHILIPS_TYPES[ptype], f"Philips (2005,1011) image type {ptype!r}"
    return "anatomy", "no map named in ImageType, SeriesDescription, ProtocolName or tags"


# ---------------------------------------------------------------------- discover


def _walk(root: Path, max_files: int) -> Iterable[Path]:
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow directory links
        dirnames.sort()
        for name in sorted(filenames):
            if count >= max_files:
                warnings.warn(
                    f"discover {root}: stopped after {max_files} files (max_files); the rest "
                    "is not read",
                    stacklevel=3,
                )
                return
            count += 1
            yield Path(dirpath) / name


def discover(
    folder: str | PathLike[str],
    *,
    max_files: int = MAX_FILES,
    max_file_bytes: int = MAX_FILE_BYTES,
    max_voxels: int = MAX_VOXELS,
) -> list[DicomSeries]:
    """Find and classify the DICOM image stacks under ``folder`` (headers only).

    Parameters
    ----------
    folder
        A folder of DICOM files in any nesting (a DICOMDIR is not needed), or one file.
    max_files, max_file_bytes, max_voxels
        Limits: files examined, bytes per file, voxels per stack (see the module docstring).

    Returns
    -------
    list of DicomSeries
        One per stack, sorted by series number, description and UID. Files that are not DICOM
        images, truncated or without geometry are skipped with one warning naming them.
    """
    root = Path(fspath(folder))
    if not root.exists():
        raise FileNotFoundError(f"DICOM folder not found: {root}")
    paths: Iterable[Path] = [root] if root.is_file() else _walk(root, max_files)
    skips = _Skips(f"discover {root}")
    groups: dict[tuple[Any, ...], list[_Frame]] = {}
    heads: dict[str, dict[str, Any]] = {}
    for path in paths:
        if path.is_symlink() and not path.is_file():
            continue
        try:
            size = path.stat().st_size
        except OSError as e:
            skips.add(path, f"cannot stat ({e.strerror})")
            continue
        if size > max_file_bytes:
            skips.add(path, f"{size} bytes > max_file_bytes {max_file_bytes}")
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # pydicom's own complaints about bad files
                ds = pydicom.dcmread(path, stop_before_pixels=False, defer_size=256)
        except InvalidDicomError:
            skips.add(path, "not a DICOM file")
            continue
        except Exception as e:  # truncated or malformed headers raise many types
            skips.add(path, f"unreadable DICOM header ({type(e).__name__}: {e})")
            continue
        sop_class = str(_get(ds, "SOPClassUID", "")) or str(
            _get(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
        )
        if sop_class == _DICOMDIR_UID or "DirectoryRecordSequence" in ds:
            continue  # the media directory: the walk finds the files it lists
        uid = _get(ds, "SeriesInstanceUID")
        if not uid:
            note = f" ({caught[0].message})" if caught else ""
            skips.add(path, f"no SeriesInstanceUID{note}")
            continue
        try:
            frames, reason = _frames_of(ds, path)
        except Exception as e:  # a malformed attribute deep in a functional group
            frames, reason = [], f"malformed header ({type(e).__name__}: {e})"
        if reason is not None:
            skips.add(path, reason)
            continue
        uid = str(uid)
        if uid not in heads:
            ptype = _philips_private(ds, 0x11)
            heads[uid] = {
                "SeriesDescription": str(_get(ds, "SeriesDescription", "")),
                "ProtocolName": str(_get(ds, "ProtocolName", "")),
                "SequenceName": str(
                    _get(ds, "SequenceName", "") or _get(ds, "PulseSequenceName", "")
                ),
                "SeriesNumber": _get(ds, "SeriesNumber"),
                "Manufacturer": str(_get(ds, "Manufacturer", "")),
                "Modality": str(_get(ds, "Modality", "")),
                "MagneticFieldStrength": _float(_get(ds, "MagneticFieldStrength")),
                "FrameOfReferenceUID": str(_get(ds, "FrameOfReferenceUID", "")),
                "StudyInstanceUID": str(_get(ds, "StudyInstanceUID", "")),
                "FlipAngle": _float(_get(ds, "FlipAngle")),
                "PhilipsImageType": str(ptype).strip().upper() if ptype else None,
                "enhanced": False,
            }
        if frames[0].index is not None:
            heads[uid]["enhanced"] = True
        for f in frames:
            key = (uid, f.image_type, _round(f.echo_time), _round(f.b_value))
            groups.setdefault(key, []).append(f)
    skips.emit()
    out = []
    for key, frames in groups.items():
        uid = key[0]
        head = heads[uid]
        frames = _majority_geometry(frames, uid)
        first = frames[0]
        voxels = first.rows * first.columns * len(frames)
        if voxels > max_voxels:
            warnings.warn(
                f"discover {root}: series {uid} skipped: {voxels} voxels > max_voxels {max_voxels}",
                stacklevel=2,
            )
            continue
        role, reason = _classify(head, first)
        number = _float(head["SeriesNumber"])
        out.append(
            DicomSeries(
                uid=uid, role=role, role_reason=reason,
                description=head["SeriesDescription"] or head["ProtocolName"],
                series_number=int(number) if number is not None else None,
                manufacturer=head["Manufacturer"], modality=head["Modality"],
                image_type=first.image_type, enhanced=head["enhanced"], rows=first.rows,
                columns=first.columns, slices=len(frames), echo_time=first.echo_time,
                b_value=first.b_value, field_strength=head["MagneticFieldStrength"],
                frame_of_reference=head["FrameOfReferenceUID"],
                study_uid=head["StudyInstanceUID"], flip_angle=head["FlipAngle"],
                _frames=frames,
            )
        )  # fmt: skip
    out.sort(key=lambda s: (s.series_number or 0, s.description, s.uid, s.image_type))
    return out


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _geometry_key(f: _Frame) -> tuple[Any, ...]:
    ori = tuple(round(v, _ORIENT_DECIMALS) for v in f.orientation)
    return (f.rows, f.columns, ori, tuple(round(v, 4) for v in f.spacing))


def _majority_geometry(frames: list[_Frame], uid: str) -> list[_Frame]:
    """Keep the frames of the most common matrix/orientation/spacing; warn about the others."""
    counts = Counter(_geometry_key(f) for f in frames)
    if len(counts) == 1:
        return frames
    best = counts.most_common(1)[0][0]
    odd = [f for f in frames if _geometry_key(f) != best]
    names = ", ".join(sorted({f.path.name for f in odd})[:_MAX_SKIPS_NAMED])
    warnings.warn(
        f"series {uid}: {len(odd)} image(s) differ in matrix, orientation or pixel spacing from "
        f"the other {len(frames) - len(odd)} and are left out ({names})",
        stacklevel=3,
    )
    return [f for f in frames if _geometry_key(f) == best]


# ---------------------------------------------------------------------- geometry


def _sort_and_affine(frames: list[_Frame], what: str) -> tuple[list[_Frame], np.ndarray]:
    """Sort frames along the slice normal and return them with the RAS+ affine (mm)."""
    ori = np.array(frames[0].orientation, dtype=np.float64)
    row_cos, col_cos = ori[:3], ori[3:]
    if abs(np.linalg.norm(row_cos) - 1) > 1e-2 or abs(np.linalg.norm(col_cos) - 1) > 1e-2:
        raise DicomGeometryError(f"{what}: ImageOrientationPatient {ori.tolist()} is not unit")
    if abs(float(row_cos @ col_cos)) > 1e-2:
        raise DicomGeometryError(f"{what}: ImageOrientationPatient rows/columns not orthogonal")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    normal = np.cross(row_cos, col_cos)
    pos = np.array([f.position for f in frames], dtype=np.float64)
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    frames = [frames[i] for i in order]
    pos, dist = pos[order], dist[order]
    dr, dc = frames[0].spacing  # between rows (y), between columns (x)
    if len(frames) > 1:
        steps = np.diff(dist)
        if np.any(steps < 1e-3 * max(dr, dc)):
            dup = [frames[i + 1].path.name for i in np.flatnonzero(steps < 1e-3 * max(dr, dc))]
            raise DicomGeometryError(
                f"{what}: several images at one slice position ({', '.join(dup[:5])}); a "
                "time series or repeated acquisition is not one map"
            )
        step = float(np.min(steps))
        if np.any(np.abs(steps - step) > _SPACING_RTOL * step):
            ratio = steps / step
            if np.allclose(ratio, np.round(ratio), rtol=0, atol=_SPACING_RTOL * 2):
                missing = int(np.sum(np.round(ratio) - 1))
                raise DicomGeometryError(
                    f"{what}: {missing} slice(s) missing (gaps in positions along the normal, "
                    f"spacing {step:.4g} mm)"
                )
            raise DicomGeometryError(
                f"{what}: inconsistent slice spacing {np.round(steps, 4).tolist()} mm"
            )
        direction = pos[-1] - pos[0]
        sine = np.linalg.norm(np.cross(direction / np.linalg.norm(direction), normal))
        if sine > _SHEAR_TOL:
            raise DicomGeometryError(
                f"{what}: slice positions do not lie along the slice normal (tilted/sheared "
                f"stack, angle {math.degrees(math.asin(min(float(sine), 1.0))):.3g} deg)"
            )
        slice_vec = direction / (len(frames) - 1)
    else:
        thick = frames[0].thickness or 1.0
        slice_vec = normal * thick
    lps = np.eye(4)
    lps[:3, 0] = row_cos * dc
    lps[:3, 1] = col_cos * dr
    lps[:3, 2] = slice_vec
    lps[:3, 3] = pos[0]
    return frames, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps

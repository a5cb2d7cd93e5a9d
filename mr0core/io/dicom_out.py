r"""DICOM output: image series as classic MR Image Storage objects (one file per slice).

Two entry points share one writer:

- :func:`write_dicom_volume` writes a ``[x, y, z]`` (or ``[x, y, z, t]``) volume with its RAS+
  affine (the affine :func:`mr0core.io.nifti.image_affine` gives the NIfTI of the same image);
- :func:`write_dicom_images` writes ``ismrmrd.Image`` objects (what the server sends), their
  geometry taken from the image headers (position, read/phase/slice directions, field of view;
  ISMRMRD places them in the DICOM patient coordinate system, LPS, as the acquisitions do).

Geometry follows the shared convention: voxel ``i`` of an axis with ``n`` voxels sits at
``(i - n // 2) · fov / n`` from the image's position (the ISMRMRD ``position`` is the world
position of voxel ``n // 2``). A DICOM slice's rows run along the image's y axis and its columns
along x: ``ImageOrientationPatient`` is (x direction, y direction) in LPS,
``ImagePositionPatient`` the LPS position of voxel ``(0, 0, k)``, ``PixelSpacing`` (y step,
x step) in mm. ``dcm2niix`` (or :func:`mr0core.io.dicom.discover`) turns such a series back into
the affine it was written from.

Identity (:class:`DicomIdentity`, :func:`identity_from_header`): patient, study and frame of
reference come from the ISMRMRD header (``subjectInformation``, ``studyInformation``,
``measurementInformation``, ``acquisitionSystemInformation``, ``sequenceParameters``) when it
has them; otherwise from clearly anonymous defaults (:data:`ANONYMOUS_PATIENT_NAME`,
:data:`ANONYMOUS_PATIENT_ID`) with a new study and frame of reference UID. Values from the header
are bounded to the lengths of their DICOM value representations; a UID that is not a valid
DICOM UID is replaced by a new one (with a warning).

Every series gets a new ``SeriesInstanceUID`` and every file a new ``SOPInstanceUID``;
``ImageType`` is ``DERIVED\SECONDARY\OTHER``. A simulated series (``simulated=True``) says so
where a reader looks: ``SeriesDescription`` starts with ``SIMULATED``, ``ImageComments`` and
``DerivationDescription`` say it is a simulation and not a measurement, and ``ImageType`` ends in
``SIMULATED``. Pixels are stored as 16-bit integers (unsigned for non-negative images, else
signed) with ``RescaleSlope`` / ``RescaleIntercept`` giving the real values back (to within half
a slope); window centre and width are in those real values. Files are ``0600``, folders ``0700``
whatever the umask (patient data).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import re
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

if TYPE_CHECKING:
    import ismrmrd

__all__ = [
    "ANONYMOUS_PATIENT_ID",
    "ANONYMOUS_PATIENT_NAME",
    "SIMULATED_LABEL",
    "DicomIdentity",
    "DicomSeries",
    "check_dicom_target",
    "identity_from_header",
    "is_dicom_target",
    "mrd_file_geometry",
    "mrd_image_affine",
    "write_dicom_images",
    "write_dicom_volume",
    "write_recon_dicom",
]

SIMULATED_LABEL = "SIMULATED"
"""The word that starts a simulated series' SeriesDescription and ImageComments."""

ANONYMOUS_PATIENT_NAME = "ANONYMOUS^MR0"
"""PatientName when the ISMRMRD header names no patient."""

ANONYMOUS_PATIENT_ID = "MR0-ANONYMOUS"
"""PatientID when the ISMRMRD header gives none."""

MANUFACTURER = "mr0"
"""Manufacturer of every written series (mr0 derived the images)."""

_SIMULATED_COMMENT = (
    "SIMULATED image: computed by the mr0 digital twin (PDG Bloch simulation), "
    "not measured on a subject."
)
_DIR_MODE = 0o700
_FILE_MODE = 0o600
_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS+ <-> LPS (its own inverse)
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_MAX_SLICES = 100_000  # files per series


# -------------------------------------------------------------------------------------------
# identity
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomIdentity:
    """Patient, study, equipment and protocol attributes shared by a session's series.

    Attributes
    ----------
    patient_name, patient_id, patient_birth_date, patient_sex
        Patient module (birth date ``YYYYMMDD`` or ''; sex ``M``, ``F``, ``O`` or '').
    patient_weight_kg, patient_height_m
        Patient study module values, None when unknown.
    study_instance_uid, study_id, study_date, study_time, study_description, accession_number,
    referring_physician_name, body_part_examined
        General study module (dates ``YYYYMMDD``, times ``HHMMSS``).
    frame_of_reference_uid
        One frame of reference for all series of the study (they share the patient's space).
    patient_position
        ``HFS``, ``FFS``, … or ''.
    protocol_name, series_number
        From ``measurementInformation`` (``protocolName``, ``initialSeriesNumber``).
    institution_name, station_name
        Where it was measured (empty for anonymous data).
    field_strength_t
        ``MagneticFieldStrength`` in T, None when unknown.
    repetition_time_ms, echo_time_ms, inversion_time_ms, flip_angle_deg
        Sequence parameters in ms and degrees, None when unknown.
    anonymous
        True when the patient identity is the anonymous default.
    """

    patient_name: str = ANONYMOUS_PATIENT_NAME
    patient_id: str = ANONYMOUS_PATIENT_ID
    patient_birth_date: str = ""
    patient_sex: str = ""
    patient_weight_kg: float | None = None
    patient_height_m: float | None = None
    study_instance_uid: str = field(default_factory=generate_uid)
    study_id: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    referring_physician_name: str = ""
    body_part_examined: str = ""
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    patient_position: str = ""
    protocol_name: str = ""
    series_number: int | None = None
    institution_name: str = ""
    station_name: str = ""
    field_strength_t: float | None = None
    repetition_time_ms: float | None = None
    echo_time_ms: float | None = None
    inversion_time_ms: float | None = None
    flip_angle_deg: float | None = None
    anonymous: bool = True


def _text(value: Any, limit: int) -> str:
    """Return ``value`` as DICOM text: no control characters or backslashes, ``limit`` chars."""
    if value is None:
        return ""
    return _CONTROL.sub(" ", str(value)).strip()[:limit]


def _uid(value: Any, what: str) -> str:
    """Return ``value`` if it is a valid DICOM UID, else a new UID (with a warning)."""
    if value is None or str(value).strip() == "":
        return generate_uid()
    text = str(value).strip()
    if len(text) <= 64 and _UID.fullmatch(text):
        return text
    warnings.warn(
        f"the ISMRMRD header's {what} {text[:80]!r} is not a valid DICOM UID; a new one is used",
        stacklevel=3,
    )
    return generate_uid()


def _date(value: Any) -> str:
    """ISMRMRD ``xs:date`` (``YYYY-MM-DD``) → DICOM DA ``YYYYMMDD`` ('' if it is not one)."""
    if value is None:
        return ""
    match = re.fullmatch(r"(\d{4})-(\d{2})-(\d{2})", str(value).strip()[:10])
    return "".join(match.groups()) if match else ""


def _time(value: Any) -> str:
    """ISMRMRD ``xs:time`` (``HH:MM:SS[.f]``) → DICOM TM ``HHMMSS[.f]`` ('' if it is not one)."""
    if value is None:
        return ""
    match = re.fullmatch(r"(\d{2}):(\d{2}):(\d{2})(\.\d{1,6})?", str(value).strip()[:15])
    return "".join(g for g in match.groups() if g) if match else ""


def _first(values: Any) -> float | None:
    try:
        value = float(values[0]) if values else None
    except (TypeError, ValueError, IndexError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _series_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31


def identity_from_header(header: Any = None) -> DicomIdentity:
    """Return the DICOM identity of an ISMRMRD header (parsed or XML); anonymous if None.

    Parameters
    ----------
    header
        An ``ismrmrd.xsd.ismrmrdHeader``, its XML text, or None.

    Returns
    -------
    DicomIdentity
        Values the header has; anonymous patient defaults, new study and frame of reference UIDs
        where it has none.

    Raises
    ------
    ValueError
        XML text that does not parse as an ISMRMRD header.
    """
    if header is None:
        return DicomIdentity()
    if isinstance(header, str | bytes):
        from mr0core.io.mrd import parse_header

        try:
            header = parse_header(header)
        except Exception as exc:  # the XML binding raises many unrelated types
            raise ValueError(f"the ISMRMRD header does not parse: {exc}") from None
    subject = getattr(header, "subjectInformation", None)
    study = getattr(header, "studyInformation", None)
    measurement = getattr(header, "measurementInformation", None)
    system = getattr(header, "acquisitionSystemInformation", None)
    seq = getattr(header, "sequenceParameters", None)

    def get(obj: Any, name: str) -> Any:
        return getattr(obj, name, None) if obj is not None else None

    name = _text(get(subject, "patientName"), 64)
    pid = _text(get(subject, "patientID"), 64)
    sex = _text(get(subject, "patientGender"), 1).upper()
    position = get(measurement, "patientPosition")
    position = _text(getattr(position, "value", position), 4).upper()
    accession = get(study, "accessionNumber")
    series_number = get(measurement, "initialSeriesNumber")
    return DicomIdentity(
        patient_name=name or ANONYMOUS_PATIENT_NAME,
        patient_id=pid or ANONYMOUS_PATIENT_ID,
        patient_birth_date=_date(get(subject, "patientBirthdate")),
        patient_sex=sex if sex in ("M", "F", "O") else "",
        patient_weight_kg=_positive(get(subject, "patientWeight_kg")),
        patient_height_m=_positive(get(subject, "patientHeight_m")),
        study_instance_uid=_uid(get(study, "studyInstanceUID"), "studyInstanceUID"),
        study_id=_text(get(study, "studyID"), 16),
        study_date=_date(get(study, "studyDate")),
        study_time=_time(get(study, "studyTime")),
        study_description=_text(get(study, "studyDescription"), 64),
        accession_number=_text(accession, 16) if accession is not None else "",
        referring_physician_name=_text(get(study, "referringPhysicianName"), 64),
        body_part_examined=_text(get(study, "bodyPartExamined"), 16).upper(),
        frame_of_reference_uid=_uid(get(measurement, "frameOfReferenceUID"), "frameOfReferenceUID"),
        patient_position=position if position.isalpha() else "",
        protocol_name=_text(get(measurement, "protocolName"), 64),
        series_number=series_number if _series_number(series_number) else None,
        institution_name=_text(get(system, "institutionName"), 64),
        station_name=_text(get(system, "stationName"), 16),
        field_strength_t=_positive(get(system, "systemFieldStrength_T")),
        repetition_time_ms=_first(get(seq, "TR")),
        echo_time_ms=_first(get(seq, "TE")),
        inversion_time_ms=_first(get(seq, "TI")),
        flip_angle_deg=_first(get(seq, "flipAngle_deg")),
        anonymous=not (name or pid),
    )


# -------------------------------------------------------------------------------------------
# geometry
# -------------------------------------------------------------------------------------------


def mrd_image_affine(image: ismrmrd.Image) -> np.ndarray:
    """Voxel index ``[x, y, z]`` → RAS+ mm transform of an ``ismrmrd.Image``.

    The image's ``position`` (LPS, mm) is voxel ``n // 2``'s; its read, phase and slice
    directions are the x, y and z axes; the voxel size is ``field_of_view / matrix_size``.

    Raises
    ------
    ValueError
        Non-finite or zero directions, or a field of view that is not positive.
    """
    matrix = np.asarray([int(v) for v in image.matrix_size], dtype=np.float64)
    fov = np.asarray([float(v) for v in image.field_of_view], dtype=np.float64)
    dirs = np.asarray(
        [[float(v) for v in d] for d in (image.read_dir, image.phase_dir, image.slice_dir)]
    ).T  # columns: x, y, z directions (LPS)
    pos = np.asarray([float(v) for v in image.position], dtype=np.float64)
    if not (np.isfinite(fov).all() and (fov > 0).all() and (matrix > 0).all()):
        raise ValueError(
            f"image {image.image_index}: field of view {fov.tolist()} mm must be positive"
        )
    norms = np.linalg.norm(dirs, axis=0)
    if not (np.isfinite(dirs).all() and np.isfinite(pos).all() and (norms > 1e-6).all()):
        raise ValueError(
            f"image {image.image_index}: position {pos.tolist()} and directions "
            f"{dirs.T.tolist()} must be finite and the directions not zero"
        )
    axes = _LPS @ (dirs / norms) * (fov / matrix)
    affine = np.eye(4)
    affine[:3, :3] = axes
    affine[:3, 3] = _LPS @ pos - axes @ (matrix // 2)
    return affine


# -------------------------------------------------------------------------------------------
# writing
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DicomSeries:
    """A written series.

    Attributes
    ----------
    folder
        Its folder (``0700``).
    series_instance_uid
        The new SeriesInstanceUID.
    files
        The files, one per slice, in instance order (``0600``).
    simulated
        Whether it is labelled as simulated.
    series_description
        The SeriesDescription written (``SIMULATED …`` for a simulated series).
    """

    folder: Path
    series_instance_uid: str
    files: list[Path]
    simulated: bool
    series_description: str


@dataclass
class _Slice:
    """One instance: pixels ``[x, y]`` (real), its volume's affine, its index, window."""

    pixels: np.ndarray
    affine: np.ndarray
    k: int
    window: tuple[float, float] | None = None
    comment: str = ""
    acquisition: int = 1


def _private_folder(folder: Path) -> Path:
    """Create ``folder`` (and missing parents) ``0700``; refuse one that holds files."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for part in reversed(missing):
        part.mkdir(mode=_DIR_MODE, exist_ok=True)
    if not folder.is_dir():
        raise NotADirectoryError(f"DICOM output {folder} exists and is not a folder")
    if any(folder.iterdir()):
        raise FileExistsError(f"DICOM output folder {folder} is not empty")
    os.chmod(folder, _DIR_MODE)
    for part in missing:
        os.chmod(part, _DIR_MODE)
    return folder


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
    try:
        os.fchmod(fd, _FILE_MODE)  # the umask may have taken bits away; never added ones
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def _window(values: np.ndarray) -> tuple[float, float]:
    """Window centre and width covering the 0.5–99.5 percentile range of ``values``."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, [0.5, 99.5])
    width = float(hi - lo) or float(abs(hi)) or 1.0
    return float((hi + lo) / 2), width


def _encode(pixels: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """Real ``[rows, cols]`` → (int pixels, slope, intercept, PixelRepresentation)."""
    lo, hi = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
    if lo >= 0:
        slope = hi / 65535 if hi > 0 else 1.0
        stored = np.clip(np.rint(pixels / slope), 0, 65535).astype(np.uint16)
        return stored, slope, 0.0, 0
    peak = max(abs(lo), abs(hi))
    slope = peak / 32767
    stored = np.clip(np.rint(pixels / slope), -32767, 32767).astype(np.int16)
    return stored, slope, 0.0, 1


def _ds_number(value: float) -> str:
    """Return ``value`` as a decimal string (DS, at most 16 characters)."""
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.1e}"


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S.%f")


def _software_version() -> str:
    try:
        from importlib.metadata import version

        return _text(version("mr0-inline"), 64)
    except Exception:  # not installed as a distribution (a source checkout)
        return "unknown"


def _base_dataset(
    identity: DicomIdentity,
    series_uid: str,
    series_number: int,
    description: str,
    simulated: bool,
) -> Dataset:
    """Return the attributes every instance of a series shares."""
    date, time = _now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    # patient
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    if identity.patient_weight_kg is not None:
        ds.PatientWeight = _ds_number(identity.patient_weight_kg)
    if identity.patient_height_m is not None:
        ds.PatientSize = _ds_number(identity.patient_height_m)
    # study
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = identity.study_date or date
    ds.StudyTime = identity.study_time or time[:6]
    ds.StudyID = identity.study_id
    ds.AccessionNumber = identity.accession_number
    ds.ReferringPhysicianName = identity.referring_physician_name
    if identity.study_description:
        ds.StudyDescription = identity.study_description
    # series
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = description
    if identity.protocol_name:
        ds.ProtocolName = identity.protocol_name
    if identity.body_part_examined:
        ds.BodyPartExamined = identity.body_part_examined
    ds.PatientPosition = identity.patient_position
    ds.Laterality = ""  # type 2C: the body part is not a paired one as far as we know
    # frame of reference
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # equipment: mr0 made these images (the scanner's name stays in InstitutionName/Station)
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "mr0-inline"
    ds.SoftwareVersions = _software_version()
    if identity.institution_name:
        ds.InstitutionName = identity.institution_name
    if identity.station_name:
        ds.StationName = identity.station_name
    # image
    image_type = ["DERIVED", "SECONDARY", "OTHER"]
    if simulated:
        image_type.append(SIMULATED_LABEL)
    ds.ImageType = image_type
    ds.ContentDate, ds.ContentTime = date, time
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.DerivationDescription = (
        _SIMULATED_COMMENT if simulated else "Reconstructed by mr0 from raw data"
    )
    ds.BurnedInAnnotation = "NO"
    # MR image module
    ds.ScanningSequence = "RM"  # research mode: the sequence is the user's, not a product one
    ds.SequenceVariant = "NONE"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = ""
    ds.EchoTrainLength = ""
    for keyword, value in (
        ("RepetitionTime", identity.repetition_time_ms),
        ("EchoTime", identity.echo_time_ms),
        ("InversionTime", identity.inversion_time_ms),
        ("FlipAngle", identity.flip_angle_deg),
        ("MagneticFieldStrength", identity.field_strength_t),
    ):
        if value is not None:
            setattr(ds, keyword, _ds_number(value))
        elif keyword in ("RepetitionTime", "EchoTime"):
            setattr(ds, keyword, "")  # type 2: present, empty when unknown
    # pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def _write_series(
    folder: Path,
    slices: list[_Slice],
    identity: DicomIdentity,
    simulated: bool,
    series_description: str,
    series_number: int | None,
    image_comments: str,
) -> DicomSeries:
    if not slices:
        raise ValueError("a DICOM series needs at least one image")
    if len(slices) > _MAX_SLICES:
        raise ValueError(f"a DICOM series of {len(slices)} images exceeds {_MAX_SLICES}")
    if not isinstance(simulated, bool):
        raise TypeError(f"simulated must be True or False, got {simulated!r}")
    description = _text(series_description, 64) or "mr0 image"
    if simulated and not description.upper().startswith(SIMULATED_LABEL):
        description = f"{SIMULATED_LABEL} {description}"[:64]
    comment = _text(image_comments, 8000)
    if simulated:
        comment = f"{_SIMULATED_COMMENT} {comment}".strip()
    number = series_number if series_number is not None else (identity.series_number or 1)
    if not 0 <= int(number) < 2**31:
        raise ValueError(f"series_number must be 0 .. 2**31-1, got {number}")
    folder = _private_folder(Path(folder))
    series_uid = generate_uid()
    base = _base_dataset(identity, series_uid, int(number), description, simulated)
    files: list[Path] = []
    bad = 0
    for n, sl in enumerate(slices, start=1):
        pixels = np.asarray(sl.pixels, dtype=np.float64)
        finite = np.isfinite(pixels)
        if not finite.all():
            bad += int((~finite).sum())
            pixels = np.where(finite, pixels, 0.0)
        rows = pixels.T  # [y, x]: DICOM rows run along y, columns along x
        stored, slope, intercept, representation = _encode(rows)
        aff = np.asarray(sl.affine, dtype=np.float64)
        steps = np.linalg.norm(aff[:3, :3], axis=0)
        if not (np.isfinite(aff).all() and (steps > 0).all()):
            raise ValueError(f"image {n}: the affine must be finite with non-zero axes")
        row_dir = _LPS @ aff[:3, 0] / steps[0]
        col_dir = _LPS @ aff[:3, 1] / steps[1]
        corner = _LPS @ (aff[:3, :3] @ np.array([0.0, 0.0, float(sl.k)]) + aff[:3, 3])
        normal = np.cross(row_dir, col_dir)
        ds = Dataset()
        ds.update(base)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = n
        ds.AcquisitionNumber = sl.acquisition
        ds.ImageComments = f"{comment} {sl.comment}".strip()[:10240]
        ds.ImageOrientationPatient = [_ds_number(v) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [_ds_number(v) for v in corner]
        ds.PixelSpacing = [_ds_number(steps[1]), _ds_number(steps[0])]
        ds.SliceThickness = _ds_number(steps[2])
        ds.SliceLocation = _ds_number(float(np.dot(normal, corner)))
        ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
        ds.PixelRepresentation = representation
        ds.RescaleIntercept = _ds_number(intercept)
        ds.RescaleSlope = _ds_number(slope)
        centre, width = sl.window if sl.window is not None else _window(rows)
        ds.WindowCenter = _ds_number(centre)
        ds.WindowWidth = _ds_number(max(width, 1e-6))
        if representation == 0:
            ds.SmallestImagePixelValue = int(stored.min())
            ds.LargestImagePixelValue = int(stored.max())
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
        path = folder / f"IM_{n:05d}.dcm"
        _write_private(path, buffer.getvalue())
        files.append(path)
    if bad:
        warnings.warn(
            f"DICOM series {description!r}: {bad} NaN or Inf pixel values were stored as 0",
            stacklevel=3,
        )
    return DicomSeries(folder, series_uid, files, simulated, description)


def write_dicom_volume(
    folder: str | PathLike[str],
    volume: Any,
    affine: Any,
    *,
    simulated: bool,
    identity: DicomIdentity | None = None,
    series_description: str = "mr0 image",
    series_number: int | None = None,
    image_comments: str = "",
) -> DicomSeries:
    """Write a volume as a DICOM MR image series (one file per slice and time point).

    Parameters
    ----------
    folder
        The series folder: created ``0700`` (with missing parents); it must be empty if it exists.
    volume
        ``[x, y, z]`` or ``[x, y, z, t]`` real (complex: its magnitude), numpy or torch;
        ``[x, y]`` is one slice. The fourth axis (e.g. volumes × contrasts) gives
        ``AcquisitionNumber`` ``t + 1``, all at the same positions.
    affine
        ``[4, 4]`` voxel index → RAS+ mm (:func:`mr0core.io.nifti.image_affine`).
    simulated
        Whether the images are simulated (labelled so; required, no default).
    identity
        Patient, study and protocol (:func:`identity_from_header`); default anonymous.
    series_description, series_number, image_comments
        As written (a simulated series' description and comments start with ``SIMULATED``).

    Returns
    -------
    DicomSeries
        The folder, the new SeriesInstanceUID and the files.
    """
    if hasattr(volume, "detach"):
        volume = volume.detach().cpu().numpy()
    data = np.asarray(volume)
    if np.iscomplexobj(data):
        data = np.abs(data)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4 or 0 in data.shape:
        raise ValueError(f"volume must be [x, y], [x, y, z] or [x, y, z, t], got {data.shape}")
    if not np.issubdtype(data.dtype, np.number):
        raise ValueError(f"volume must be numeric, got dtype {data.dtype}")
    aff = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=float)
    if aff.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {aff.shape}")
    slices = [
        _Slice(data[:, :, k, t], aff, k, acquisition=t + 1)
        for t in range(data.shape[3])
        for k in range(data.shape[2])
    ]
    return _write_series(Path(folder), slices, identity or DicomIdentity(), simulated,
                         series_description, series_number, image_comments)  # fmt: skip


def _meta(image: ismrmrd.Image) -> dict[str, list[str]]:
    import ismrmrd

    if not image.attribute_string:
        return {}
    try:
        meta = ismrmrd.Meta.deserialize(image.attribute_string)
    except Exception:  # a client's malformed meta: the image is still written, without it
        return {}
    return {str(k): [str(v) for v in meta[k]] if isinstance(meta[k], list) else [str(meta[k])]
            for k in meta}  # fmt: skip


def _meta_float(meta: dict[str, list[str]], key: str) -> float | None:
    try:
        value = float(meta[key][0])
    except (KeyError, IndexError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_dicom_images(
    folder: str | PathLike[str],
    images: SequenceABC[ismrmrd.Image],
    *,
    simulated: bool,
    identity: DicomIdentity | None = None,
    series_description: str | None = None,
    series_number: int | None = None,
) -> DicomSeries:
    """Write ``ismrmrd.Image`` objects (one series) as a DICOM MR image series.

    Each image's geometry comes from its header (:func:`mrd_image_affine`); an image with
    ``z > 1`` partitions gives one file per partition. Meta ``WindowCenter``/``WindowWidth``
    are kept (else a 0.5–99.5 percentile window), ``ImageComment`` goes to ``ImageComments``.
    Complex pixels are stored as their magnitude.

    Parameters
    ----------
    folder
        The series folder (``0700``; must be empty if it exists).
    images
        The images of one series, in order.
    simulated
        Whether they are simulated (labelled so; required, no default).
    identity
        From the session's ISMRMRD header (:func:`identity_from_header`); default anonymous.
    series_description
        Default: the first image's meta ``SeriesDescription``, else ``"mr0 image"``.
    series_number
        Default: the images' ``image_series_index`` (when above 0), else the identity's.

    Raises
    ------
    ValueError
        No images, an image with more than one channel, or broken geometry.
    """
    if not images:
        raise ValueError("no images to write as DICOM")
    slices: list[_Slice] = []
    first_meta = _meta(images[0])
    for img in images:
        data = np.asarray(img.data)  # [channels, z, y, x]
        if data.ndim != 4 or data.shape[0] != 1:
            raise ValueError(
                f"image {img.image_index}: one channel expected for DICOM, got pixels of shape "
                f"{data.shape} (combine the coils first)"
            )
        values = np.abs(data[0]) if np.iscomplexobj(data) else data[0]
        volume = values.transpose(2, 1, 0)  # [x, y, z]
        aff = mrd_image_affine(img)
        meta = _meta(img)
        centre, width = _meta_float(meta, "WindowCenter"), _meta_float(meta, "WindowWidth")
        window = (centre, width) if centre is not None and width is not None else None
        comment = " ".join(meta.get("ImageComment", []))
        for k in range(volume.shape[2]):
            slices.append(_Slice(volume[:, :, k], aff, k, window, comment,
                                 acquisition=int(img.repetition) + 1))  # fmt: skip
    description = series_description
    if description is None:
        description = " ".join(first_meta.get("SeriesDescription", [])) or "mr0 image"
    number = series_number
    if number is None and int(images[0].image_series_index) > 0:
        number = int(images[0].image_series_index)
    return _write_series(Path(folder), slices, identity or DicomIdentity(), simulated,
                         description, number, "")  # fmt: skip


# -------------------------------------------------------------------------------------------
# reconstructions (the ``mr0`` command)
# -------------------------------------------------------------------------------------------


def is_dicom_target(path: str | PathLike[str]) -> bool:
    """Whether an output path names a DICOM series folder (it ends in ``.dcm`` or ``.dcm/``)."""
    return os.fspath(path).rstrip("/").lower().endswith(".dcm")


def check_dicom_target(path: str | PathLike[str]) -> Path:
    """Fail before any work if a DICOM series folder cannot be written at ``path``.

    Its parent must be a writable folder; the folder itself must not exist or be empty.
    """
    folder = Path(path)
    parent = folder.parent
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"DICOM output {folder} exists and is not an empty folder")
    if not parent.is_dir():
        raise FileNotFoundError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {parent} is not writable")
    return folder


def _with_sidecar(identity: DicomIdentity, sidecar: dict[str, Any] | None) -> DicomIdentity:
    """Fill the identity's unknown sequence values from a BIDS sidecar (s → ms)."""
    from dataclasses import replace

    if not sidecar:
        return identity
    values: dict[str, Any] = {}
    for key, name, scale in (
        ("RepetitionTime", "repetition_time_ms", 1e3),
        ("EchoTime", "echo_time_ms", 1e3),
        ("InversionTime", "inversion_time_ms", 1e3),
        ("FlipAngle", "flip_angle_deg", 1.0),
        ("MagneticFieldStrength", "field_strength_t", 1.0),
    ):
        value = sidecar.get(key)
        if getattr(identity, name) is None and isinstance(value, int | float):
            number = float(value) * scale
            if math.isfinite(number):
                values[name] = number
    return replace(identity, **values)


def write_recon_dicom(
    rec: Any,
    folder: str | PathLike[str],
    *,
    simulated: bool,
    identity: DicomIdentity | None = None,
    sidecar: dict[str, Any] | None = None,
    centre_m: SequenceABC[float] = (0.0, 0.0, 0.0),
    rotation: Any = None,
    series_description: str = "mr0 image",
) -> DicomSeries:
    """Write a :class:`~mr0core.recon.Reconstruction`'s magnitude as a DICOM series.

    The volume and its affine are those of :func:`mr0core.jobs.write_image` (the NIfTI of the
    same reconstruction): voxel ``n // 2`` at ``centre_m`` (RAS+, m), axes along ``rotation``'s
    columns (identity if None). ``sidecar`` (BIDS, s) fills TR, TE, TI, flip angle and field
    strength the identity does not have.
    """
    from mr0core.io.nifti import image_affine
    from mr0core.jobs import image_volume

    vol = image_volume(rec.image.detach().cpu()).abs().numpy()
    nz = vol.shape[2]
    fov = (rec.fov_m[0], rec.fov_m[1], rec.fov_m[2] * nz / max(rec.matrix[2], 1))
    affine = image_affine((vol.shape[0], vol.shape[1], nz), fov, centre_m=centre_m,
                          rotation=rotation)  # fmt: skip
    ident = _with_sidecar(identity or DicomIdentity(), sidecar)
    method = (sidecar or {}).get("ReconstructionMethod") or getattr(rec, "method", "")
    return write_dicom_volume(folder, vol, affine, simulated=simulated, identity=ident,
                              series_description=series_description,
                              image_comments=f"reconstruction: {method}")  # fmt: skip


def mrd_file_geometry(
    path: str | PathLike[str],
) -> tuple[Any, tuple[float, float, float], np.ndarray | None, str]:
    """Return an ISMRMRD raw file's header XML, and the geometry of its imaging acquisitions.

    Returns
    -------
    tuple
        ``(header_xml or None, centre_m, rotation, note)``: the RAS+ centre (m) and ``[3, 3]``
        rotation (columns: read, phase, slice directions in RAS+) when every imaging
        acquisition has one position and orientation; otherwise ``(0, 0, 0)``, None and a
        note saying why (the image then lies around the isocentre, as in its NIfTI).
    """
    import ismrmrd

    dset = ismrmrd.Dataset(os.fspath(path), "dataset", create_if_needed=False)
    try:
        try:
            xml = dset.read_xml_header()
            xml = xml.decode() if isinstance(xml, bytes) else xml
        except Exception:  # a file without a header: no identity from it
            xml = None
        n = dset.number_of_acquisitions()
        geometries = set()
        for i in range(min(n, 100_000)):
            acq = dset.read_acquisition(i)
            if int(acq.flags) & (1 << 18):  # noise
                continue
            parts = (acq.position, acq.read_dir, acq.phase_dir, acq.slice_dir)
            geometries.add(tuple(round(float(v), 3) for part in parts for v in part))
            if len(geometries) > 1:
                break
    finally:
        dset.close()
    if len(geometries) != 1:
        why = "no imaging acquisitions" if not geometries else "acquisitions at several positions"
        return (
            xml,
            (0.0, 0.0, 0.0),
            None,
            f"{why}: the DICOM geometry is the image grid at the isocentre",
        )
    g = np.asarray(next(iter(geometries)), dtype=np.float64).reshape(4, 3)
    dirs = g[1:].T  # columns: read, phase, slice (LPS)
    norms = np.linalg.norm(dirs, axis=0)
    if (norms < 1e-6).any() or not np.allclose(
        (dirs / norms).T @ (dirs / norms), np.eye(3), atol=1e-3
    ):
        return (
            xml,
            (0.0, 0.0, 0.0),
            None,
            "acquisition directions are not orthonormal: the DICOM geometry is the image grid "
            "at the isocentre",
        )
    rot = _LPS @ (dirs / norms)
    centre = _LPS @ g[0] / 1e3
    return xml, (float(centre[0]), float(centre[1]), float(centre[2])), rot, ""

"""Synthetic DICOM series for the tests, written with pydicom (no binary fixtures).

A volume ``[x, y, z]`` (x = column, y = row, z = slice) is written with a geometry given in DICOM
terms: row and column direction cosines (LPS), pixel spacing and slice positions along the normal.
``expected_affine`` gives the RAS+ affine the reader must return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


def rotation(deg_x: float, deg_z: float) -> np.ndarray:
    """A rotation about x then z (degrees), applied to the LPS axes."""
    ax, az = np.radians(deg_x), np.radians(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


@dataclass
class Geometry:
    """Slice geometry in LPS: row/column cosines, spacing (row, column) mm, first position."""

    row_cos: np.ndarray = field(default_factory=lambda: np.array([1.0, 0.0, 0.0]))
    col_cos: np.ndarray = field(default_factory=lambda: np.array([0.0, 1.0, 0.0]))
    spacing: tuple[float, float] = (2.0, 1.5)  # between rows, between columns
    slice_step: float = 3.0
    origin: np.ndarray = field(default_factory=lambda: np.array([-40.0, -30.0, 10.0]))

    @classmethod
    def oblique(cls) -> Geometry:
        r = rotation(20.0, 15.0)
        return cls(row_cos=r[:, 0], col_cos=r[:, 1])

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_cos, self.col_cos)

    def position(self, k: int) -> np.ndarray:
        return self.origin + k * self.slice_step * self.normal

    def expected_affine(self) -> np.ndarray:
        lps = np.eye(4)
        lps[:3, 0] = self.row_cos * self.spacing[1]
        lps[:3, 1] = self.col_cos * self.spacing[0]
        lps[:3, 2] = self.normal * self.slice_step
        lps[:3, 3] = self.origin
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _base(sop_class: str, study: str, series: str, frame_of_ref: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PatientName = "Twin^Test"
    ds.PatientID = "TWIN001"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.Modality = "MR"
    ds.MagneticFieldStrength = 3.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


@dataclass
class Study:
    """UIDs shared by the series of one synthetic study."""

    study: str = field(default_factory=generate_uid)
    frame_of_ref: str = field(default_factory=generate_uid)


def write_classic(
    folder: Path,
    stored: np.ndarray,
    geom: Geometry,
    *,
    study: Study,
    description: str,
    number: int,
    image_type: tuple[str, ...] = ("DERIVED", "PRIMARY", "OTHER"),
    slope: float = 1.0,
    intercept: float = 0.0,
    manufacturer: str = "SIEMENS",
    shuffle: bool = True,
    extra: dict | None = None,
) -> list[Path]:
    """Write ``stored`` (uint16 ``[x, y, z]``) as classic single-frame MR images, one per slice."""
    folder.mkdir(parents=True, exist_ok=True)
    series = generate_uid()
    nz = stored.shape[2]
    order = np.random.default_rng(number).permutation(nz) if shuffle else np.arange(nz)
    paths = []
    for n, k in enumerate(order):
        ds = _base(MR_IMAGE, study.study, series, study.frame_of_ref)
        ds.Manufacturer = manufacturer
        ds.SeriesDescription = description
        ds.SeriesNumber = number
        ds.InstanceNumber = int(k) + 1
        ds.ImageType = list(image_type)
        ds.ImagePositionPatient = [float(v) for v in geom.position(int(k))]
        ds.ImageOrientationPatient = [float(v) for v in (*geom.row_cos, *geom.col_cos)]
        ds.PixelSpacing = [geom.spacing[0], geom.spacing[1]]
        ds.SliceThickness = geom.slice_step
        ds.SpacingBetweenSlices = geom.slice_step
        ds.EchoTime = 10.0
        ds.RepetitionTime = 5000.0
        ds.FlipAngle = 90.0
        if slope != 1.0 or intercept != 0.0:
            ds.RescaleSlope = slope
            ds.RescaleIntercept = intercept
            ds.RescaleType = "US"
        for key, value in (extra or {}).items():
            setattr(ds, key, value)
        img = np.ascontiguousarray(stored[:, :, k].T.astype(np.uint16))
        ds.Rows, ds.Columns = img.shape
        ds.PixelData = img.tobytes()
        path = folder / f"s{number:03d}_i{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _item(**kw: object) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def write_enhanced(
    path: Path,
    stored: np.ndarray,
    geom: Geometry,
    *,
    study: Study,
    description: str,
    number: int,
    frame_type: tuple[str, ...] = ("DERIVED", "PRIMARY", "QUANTITY", "NONE"),
    rwv_slope: float | None = None,
    rwv_intercept: float = 0.0,
    rwv_unit: str = "s",
    philips_type: str | None = None,
    manufacturer: str = "Philips Medical Systems",
) -> Path:
    """Write ``stored`` as one enhanced MR object (Philips-like, real-world value mapping)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _base(ENHANCED_MR, study.study, generate_uid(), study.frame_of_ref)
    ds.Manufacturer = manufacturer
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.ImageType = list(frame_type)
    nz = stored.shape[2]
    ds.NumberOfFrames = nz
    shared = _item(
        PixelMeasuresSequence=Sequence(
            [_item(PixelSpacing=list(geom.spacing), SliceThickness=geom.slice_step,
                   SpacingBetweenSlices=geom.slice_step)]
        ),
        PlaneOrientationSequence=Sequence(
            [_item(ImageOrientationPatient=[float(v) for v in (*geom.row_cos, *geom.col_cos)])]
        ),
        MRImageFrameTypeSequence=Sequence([_item(FrameType=list(frame_type))]),
    )  # fmt: skip
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    order = np.random.default_rng(number).permutation(nz)
    frames = []
    for n, k in enumerate(order):
        fg = _item(
            PlanePositionSequence=Sequence(
                [_item(ImagePositionPatient=[float(v) for v in geom.position(int(k))])]
            ),
            FrameContentSequence=Sequence([_item(InStackPositionNumber=int(k) + 1, StackID="1")]),
            PixelValueTransformationSequence=Sequence(
                [_item(RescaleSlope=1.0, RescaleIntercept=0.0, RescaleType="US")]
            ),
        )  # fmt: skip
        if rwv_slope is not None:
            unit = _item(CodeValue=rwv_unit, CodingSchemeDesignator="UCUM", CodeMeaning=rwv_unit)
            fg.RealWorldValueMappingSequence = Sequence(
                [_item(RealWorldValueSlope=rwv_slope, RealWorldValueIntercept=rwv_intercept,
                       RealWorldValueFirstValueMapped=0, RealWorldValueLastValueMapped=65535,
                       LUTExplanation="quantity", LUTLabel="map",
                       MeasurementUnitsCodeSequence=Sequence([unit]))]
            )  # fmt: skip
        per_frame.append(fg)
        frames.append(stored[:, :, k].T.astype(np.uint16))
        del n
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    if philips_type is not None:
        block = ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True)
        block.add_new(0x11, "CS", philips_type)
    arr = np.ascontiguousarray(np.stack(frames))
    ds.Rows, ds.Columns = arr.shape[1:]
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path

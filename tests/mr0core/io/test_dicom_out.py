"""DICOM output (mr0core.io.dicom_out): values, geometry, identity, labels, validity, modes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from mr0core.io.dicom_out import (
    ANONYMOUS_PATIENT_ID,
    DicomIdentity,
    identity_from_header,
    mrd_image_affine,
    write_dicom_images,
    write_dicom_volume,
)
from mr0core.io.mrd_images import make_mrd_images
from mr0core.io.nifti import image_affine

HEADER = """<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<subjectInformation><patientName>Doe^Jane</patientName><patientWeight_kg>61.5</patientWeight_kg>
<patientID>PID-0042</patientID><patientBirthdate>1980-02-29</patientBirthdate>
<patientGender>F</patientGender></subjectInformation>
<studyInformation><studyDate>2024-05-06</studyDate><studyTime>07:08:09</studyTime>
<studyID>S17</studyID><accessionNumber>12345</accessionNumber>
<studyInstanceUID>1.2.3.4.5.6</studyInstanceUID></studyInformation>
<measurementInformation><measurementID>M1</measurementID><patientPosition>HFS</patientPosition>
<initialSeriesNumber>7</initialSeriesNumber><protocolName>t1_flash</protocolName>
<frameOfReferenceUID>1.2.3.4.5.7</frameOfReferenceUID></measurementInformation>
<acquisitionSystemInformation><systemFieldStrength_T>2.89</systemFieldStrength_T>
<institutionName>Test Hospital</institutionName></acquisitionSystemInformation>
<experimentalConditions><H1resonanceFrequency_Hz>123000000</H1resonanceFrequency_Hz>
</experimentalConditions>
<encoding><encodedSpace><matrixSize><x>8</x><y>6</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>150</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>8</x><y>6</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>150</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits></encodingLimits><trajectory>cartesian</trajectory></encoding>
<sequenceParameters><TR>12</TR><TE>5</TE><flipAngle_deg>15</flipAngle_deg></sequenceParameters>
</ismrmrdHeader>"""


def _volume(shape=(8, 6, 3), seed=0, signed=False):
    rng = np.random.default_rng(seed)
    vol = rng.uniform(0, 100, shape)
    return vol - 30 if signed else vol


def _read(files):
    return [pydicom.dcmread(f) for f in files]


def _affine_of(ds_list):
    """RAS+ affine from a written series (rows along y, columns along x, slices in order)."""
    lps = np.diag([-1.0, -1.0, 1.0])
    first = ds_list[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in first.PixelSpacing)
    ipp = [np.asarray(d.ImagePositionPatient, dtype=float) for d in ds_list]
    aff = np.eye(4)
    aff[:3, 0] = lps @ iop[:3] * dx
    aff[:3, 1] = lps @ iop[3:] * dy
    aff[:3, 2] = lps @ (ipp[1] - ipp[0]) if len(ipp) > 1 else lps @ np.cross(iop[:3], iop[3:])
    aff[:3, 3] = lps @ ipp[0]
    return aff


@pytest.mark.parametrize("signed", [False, True])
def test_volume_values_and_geometry_round_trip(tmp_path, signed):
    vol = _volume(signed=signed)
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # turned in-plane
    aff = image_affine((8, 6, 3), (0.2, 0.15, 0.015), (0.01, -0.02, 0.03), rotation=rot)
    series = write_dicom_volume(tmp_path / "s", vol, aff, simulated=False)
    ds = _read(series.files)
    assert len(ds) == 3
    for k, d in enumerate(ds):
        assert d.Rows == 6
        assert d.Columns == 8
        values = d.pixel_array.astype(float) * float(d.RescaleSlope) + float(d.RescaleIntercept)
        assert np.abs(values.T - vol[:, :, k]).max() <= float(d.RescaleSlope) / 2 + 1e-9
        assert d.PixelRepresentation == int(signed)
    np.testing.assert_allclose(_affine_of(ds), aff, atol=1e-6)
    assert float(ds[0].SliceThickness) == pytest.approx(5.0)


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed")
def test_dcm2niix_reads_the_geometry_we_wrote(tmp_path):
    import nibabel as nib

    vol = _volume()
    aff = image_affine((8, 6, 3), (0.2, 0.15, 0.015), (0.01, 0.02, 0.03))
    write_dicom_volume(tmp_path / "s", vol, aff, simulated=True)
    out = tmp_path / "nii"
    out.mkdir()
    subprocess.run(["dcm2niix", "-o", str(out), "-f", "x", str(tmp_path / "s")], check=True,
                   capture_output=True)  # fmt: skip
    img = nib.load(out / "x.nii")
    # dcm2niix stores rows bottom-up: its voxel (i, ny-1-j, k) is our (i, j, k)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1, 5
    np.testing.assert_allclose(img.affine @ flip, aff, atol=1e-3)
    np.testing.assert_allclose(np.asarray(img.dataobj)[:, ::-1, :], vol, atol=0.01)


def test_identity_from_the_ismrmrd_header(tmp_path):
    ident = identity_from_header(HEADER)
    series = write_dicom_volume(tmp_path / "s", _volume(), np.eye(4), identity=ident,
                                simulated=False, series_description="MR0 recon")  # fmt: skip
    d = pydicom.dcmread(series.files[0])
    assert str(d.PatientName) == "Doe^Jane"
    assert d.PatientID == "PID-0042"
    assert d.PatientBirthDate == "19800229"
    assert d.PatientSex == "F"
    assert float(d.PatientWeight) == 61.5
    assert d.StudyInstanceUID == "1.2.3.4.5.6"
    assert d.FrameOfReferenceUID == "1.2.3.4.5.7"
    assert d.StudyDate == "20240506"
    assert d.StudyTime == "070809"
    assert d.StudyID == "S17"
    assert d.AccessionNumber == "12345"
    assert d.PatientPosition == "HFS"
    assert d.ProtocolName == "t1_flash"
    assert d.SeriesNumber == 7
    assert d.InstitutionName == "Test Hospital"
    assert float(d.MagneticFieldStrength) == pytest.approx(2.89)
    assert float(d.RepetitionTime) == 12
    assert float(d.EchoTime) == 5
    assert float(d.FlipAngle) == 15
    assert not ident.anonymous


def test_anonymous_defaults_and_bad_header_uid():
    ident = identity_from_header(None)
    assert ident.anonymous
    assert ident.patient_id == ANONYMOUS_PATIENT_ID
    assert identity_from_header(None).study_instance_uid != ident.study_instance_uid
    bad = HEADER.replace("1.2.3.4.5.6", "1.2.03.x")
    with pytest.warns(UserWarning, match="studyInstanceUID .* not a valid DICOM UID"):
        ident = identity_from_header(bad)
    assert ident.study_instance_uid != "1.2.03.x"
    assert pydicom.uid.UID(ident.study_instance_uid).is_valid
    with pytest.raises(ValueError, match="does not parse"):
        identity_from_header("<ismrmrdHeader><nonsense/></ismrmrdHeader>")


def test_hostile_header_values_are_bounded():
    long = "A\\B" + "x" * 500
    ident = identity_from_header(HEADER.replace("Doe^Jane", long).replace("S17", "S" * 40))
    assert len(ident.patient_name) == 64
    assert "\\" not in ident.patient_name
    assert len(ident.study_id) == 16


def test_simulated_series_say_so_and_measured_ones_do_not(tmp_path):
    ident = DicomIdentity()
    sim = write_dicom_volume(tmp_path / "sim", _volume(), np.eye(4), simulated=True,
                             identity=ident, series_description="MR0 twin preview")  # fmt: skip
    meas = write_dicom_volume(tmp_path / "meas", _volume(), np.eye(4), simulated=False,
                              identity=ident, series_description="MR0 recon")  # fmt: skip
    for d in _read(sim.files):
        assert d.SeriesDescription == "SIMULATED MR0 twin preview"
        assert d.ImageComments.startswith("SIMULATED")
        assert list(d.ImageType) == ["DERIVED", "SECONDARY", "OTHER", "SIMULATED"]
    for d in _read(meas.files):
        assert "SIMULATED" not in d.SeriesDescription + d.ImageComments + "".join(d.ImageType)
        assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    # a new series UID per series, one study
    a, b = pydicom.dcmread(sim.files[0]), pydicom.dcmread(meas.files[0])
    assert a.SeriesInstanceUID != b.SeriesInstanceUID == meas.series_instance_uid
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert len({d.SOPInstanceUID for d in _read(sim.files + meas.files)}) == 6
    with pytest.raises(TypeError, match="simulated must be True or False"):
        write_dicom_volume(tmp_path / "x", _volume(), np.eye(4), simulated="yes")


def test_files_0600_folders_0700_whatever_the_umask(tmp_path):
    old = os.umask(0o000)
    try:
        series = write_dicom_volume(tmp_path / "a" / "b", _volume(), np.eye(4), simulated=True)
    finally:
        os.umask(old)
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for f in series.files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_refuses_a_folder_that_holds_files(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "old.dcm").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty"):
        write_dicom_volume(tmp_path / "s", _volume(), np.eye(4), simulated=True)


def test_nonfinite_pixels_are_stored_as_zero_with_a_warning(tmp_path):
    vol = _volume()
    vol[0, 0, 0] = np.nan
    with pytest.warns(UserWarning, match="1 NaN or Inf"):
        series = write_dicom_volume(tmp_path / "s", vol, np.eye(4), simulated=True)
    assert pydicom.dcmread(series.files[0]).pixel_array[0, 0] == 0


def test_mrd_images_geometry_window_and_series(tmp_path):
    vol = _volume((8, 6, 1))
    pos, read, phase = (10.0, -20.0, 30.0), (0.0, 1.0, 0.0), (1.0, 0.0, 0.0)
    images = make_mrd_images(
        [vol[..., 0], 2 * vol[..., 0]], series_index=3, fov_m=(0.2, 0.15, 0.005),
        position_mm=pos, read_dir=read, phase_dir=phase, slice_dir=(0.0, 0.0, -1.0),
        series_description="MR0 recon", image_comment="FFT", window=(40.0, 80.0),
    )  # fmt: skip
    series = write_dicom_images(tmp_path / "s", images, simulated=False)
    ds = _read(series.files)
    assert [d.InstanceNumber for d in ds] == [1, 2]
    assert ds[0].SeriesNumber == 3
    assert ds[0].SeriesDescription == "MR0 recon"
    assert float(ds[0].WindowCenter) == 40
    assert float(ds[0].WindowWidth) == 80
    assert ds[0].ImageComments == "FFT"
    # ISMRMRD is LPS: the row direction is read_dir, the column direction phase_dir
    np.testing.assert_allclose([float(v) for v in ds[0].ImageOrientationPatient], read + phase)
    aff = mrd_image_affine(images[0])
    centre = aff @ np.array([4, 3, 0, 1.0])  # voxel n // 2 lies at the position
    np.testing.assert_allclose(centre[:3], [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(_affine_of(ds[:1])[:3, :2], aff[:3, :2], atol=1e-9)
    values = ds[1].pixel_array * float(ds[1].RescaleSlope)
    np.testing.assert_allclose(values.T, 2 * vol[..., 0], atol=float(ds[1].RescaleSlope))


def test_mrd_images_with_coils_are_refused(tmp_path):
    import ismrmrd

    img = ismrmrd.Image.from_array(np.ones((2, 1, 6, 8), np.float32), transpose=False)
    with pytest.raises(ValueError, match="one channel expected"):
        write_dicom_images(tmp_path / "s", [img], simulated=True)


DCIODVFY = shutil.which("dciodvfy")


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=30)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(tmp_path):
    ident = identity_from_header(HEADER)
    series = write_dicom_volume(tmp_path / "s", _volume(signed=True), np.eye(4), simulated=True,
                                identity=ident)  # fmt: skip
    anon = write_dicom_volume(tmp_path / "a", _volume(), np.eye(4), simulated=False)
    for f in (series.files[0], anon.files[-1]):
        assert _dciodvfy_errors(f) == []
    # negative control: the same check finds a missing type 1 attribute
    d = pydicom.dcmread(series.files[0])
    del d.SeriesInstanceUID
    broken = tmp_path / "broken.dcm"
    d.save_as(broken)
    assert _dciodvfy_errors(broken)


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmdump (dcmtk) is not installed")
def test_dcmdump_reads_the_file(tmp_path):
    series = write_dicom_volume(tmp_path / "s", _volume(), np.eye(4), simulated=True)
    proc = subprocess.run(["dcmdump", "-E", str(series.files[0])], capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "SIMULATED" in proc.stdout
    assert "MRImageStorage" in proc.stdout


def test_writing_warns_nothing_for_clean_input(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_dicom_volume(tmp_path / "s", _volume(), np.eye(4), simulated=True)


def test_round_trip_through_discover(tmp_path):
    from mr0core.io.dicom import discover

    vol = _volume((8, 6, 4), seed=3)
    rot = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # a sagittal-like stack
    aff = image_affine((8, 6, 4), (0.2, 0.15, 0.02), (0.01, -0.02, 0.03), rotation=rot)
    ident = identity_from_header(HEADER)
    series = write_dicom_volume(tmp_path / "dcm" / "s1", vol, aff, simulated=True, identity=ident,
                                series_description="MR0 twin preview")  # fmt: skip
    write_dicom_volume(tmp_path / "dcm" / "s2", vol[:, :, :1], aff, simulated=False,
                       identity=ident)  # fmt: skip
    found = {s.uid: s for s in discover(tmp_path / "dcm")}
    assert len(found) == 2
    s = found[series.series_instance_uid]
    assert s.description == "SIMULATED MR0 twin preview"
    assert "SIMULATED" in s.image_type
    assert s.study_uid == "1.2.3.4.5.6"
    assert s.frame_of_reference == "1.2.3.4.5.7"
    assert (s.columns, s.rows, s.slices) == (8, 6, 4)
    loaded = s.load()
    np.testing.assert_allclose(loaded.affine, aff, atol=1e-6)
    slope = max(float(pydicom.dcmread(f).RescaleSlope) for f in series.files)
    np.testing.assert_allclose(loaded.data, vol, atol=slope)

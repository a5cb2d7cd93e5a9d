"""DICOM in: discovery, role classification, vendor scaling, units and geometry (issue 25)."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_synth import Geometry, Study, write_classic, write_enhanced

from mr0core.io.dicom import DicomGeometryError, discover
from mr0core.io.quantities import QuantityError, to_canonical

RNG = np.random.default_rng(25)
SHAPE = (6, 5, 4)  # x (columns), y (rows), z (slices)


def _stored(lo: int = 100, hi: int = 4000) -> np.ndarray:
    return RNG.integers(lo, hi, size=SHAPE).astype(np.uint16)


def _one(series: list, role: str | None = None) -> object:
    hits = [s for s in series if role is None or s.role == role]
    assert len(hits) == 1, [str(s) for s in series]
    return hits[0]


# ---------------------------------------------------------------------- two vendors' styles


def test_siemens_classic_oblique_rescale_and_ms(tmp_path: Path) -> None:
    """Classic single-frame, oblique, RescaleSlope, values in ms, files shuffled and nested."""
    geom = Geometry.oblique()
    stored = _stored()
    itype = ("DERIVED", "PRIMARY", "T1 MAP", "ND")
    write_classic(tmp_path / "a" / "b", stored, geom, study=Study(), description="MapIt",
                  number=7, slope=0.5, image_type=itype)  # fmt: skip
    s = _one(discover(tmp_path))
    assert (s.role, s.enhanced, s.slices) == ("T1map", False, 4)
    assert "ImageType" in s.role_reason
    with pytest.warns(UserWarning, match=r"T1map in ms \(guessed"):
        vol = s.load()
    assert vol.unit == "s"
    np.testing.assert_allclose(vol.data, stored * 0.5 / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(vol.affine, geom.expected_affine(), atol=1e-6)
    # negative control: the LPS affine (no RAS flip) is not what we return
    assert not np.allclose(np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine, geom.expected_affine())


def test_philips_enhanced_rwvm_with_unit(tmp_path: Path) -> None:
    """Enhanced multi-frame, frames shuffled, Real World Value Mapping in ms (stated unit)."""
    geom = Geometry.oblique()
    stored = _stored(20, 300)
    write_enhanced(tmp_path / "DICOM" / "IM_0001", stored, geom, study=Study(),
                   description="WIP qMRI", number=5, rwv_slope=0.5, rwv_intercept=1.0,
                   rwv_unit="ms", philips_type="T2")  # fmt: skip
    s = _one(discover(tmp_path))
    assert (s.role, s.enhanced, s.slices) == ("T2map", True, 4)
    assert "2005,1011" in s.role_reason
    with pytest.warns(UserWarning, match=r"T2map in ms \(RealWorldValueMapping\)"):
        vol = s.load()
    np.testing.assert_allclose(vol.data, (stored * 0.5 + 1.0) / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(vol.affine, geom.expected_affine(), atol=1e-6)
    raw = s.load(convert_units=False)
    assert raw.unit == "ms"
    np.testing.assert_allclose(raw.data, stored * 0.5 + 1.0, rtol=1e-6)


def test_philips_private_scale_slope(tmp_path: Path) -> None:
    """Philips classic without RWVM: FP = (PV*RS + RI) / (RS*SS) from (2005,100E)."""
    stored = _stored()
    paths = write_classic(tmp_path, stored, Geometry(), study=Study(), description="T1 map",
                          number=3, slope=2.0, intercept=-10.0,
                          manufacturer="Philips Medical Systems")  # fmt: skip
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 4.0)
        ds.save_as(p)
    vol = _one(discover(tmp_path)).load(convert_units=False)
    np.testing.assert_allclose(vol.data, (stored * 2.0 - 10.0) / (2.0 * 4.0), rtol=1e-6)


# ---------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("image_type", "description", "extra", "role"),
    [
        (("DERIVED", "PRIMARY", "T2 MAP"), "T1 map", {}, "T2map"),  # ImageType first
        (("DERIVED", "PRIMARY", "OTHER"), "T1_Mapping_MOLLI", {}, "T1map"),
        (("DERIVED", "PRIMARY", "OTHER"), "t2star map", {}, "T2starmap"),
        (("DERIVED", "PRIMARY", "OTHER"), "R2* map", {}, "R2starmap"),
        (("DERIVED", "PRIMARY", "OTHER"), "dwi", {"ProtocolName": "ep2d_diff ADC"}, "ADC"),
        (("DERIVED", "PRIMARY", "DIFFUSION", "ADC"), "ep2d_diff", {}, "ADC"),
        (("DERIVED", "PRIMARY", "OTHER"), "M0 map", {}, "PDmap"),
        (("DERIVED", "PRIMARY", "OTHER"), "B0 map", {}, "B0map"),
        (("ORIGINAL", "PRIMARY", "M", "ND"), "gre_field_mapping", {}, "other"),
        (("ORIGINAL", "PRIMARY", "P", "ND"), "B1 map", {}, "other"),  # phase image
        (("ORIGINAL", "PRIMARY", "M"), "tfl", {"SequenceName": "*tfl_b1map"}, "B1map"),
        (("ORIGINAL", "PRIMARY", "M"), "flair", {"SequenceName": "*fm2d2r"}, "other"),
        (("ORIGINAL", "PRIMARY", "M"), "localizer", {}, "other"),
        (("ORIGINAL", "PRIMARY", "M"), "ep2d", {"DiffusionBValue": 1000.0}, "other"),
        (("ORIGINAL", "PRIMARY", "M", "ND"), "t1_mprage_sag", {}, "anatomy"),
    ],
)
def test_role_priority(tmp_path: Path, image_type, description, extra, role) -> None:
    write_classic(tmp_path, _stored()[:, :, :1], Geometry(), study=Study(),
                  description=description, number=1, image_type=image_type,
                  extra=extra)  # fmt: skip
    assert _one(discover(tmp_path)).role == role


def test_philips_private_type_is_last(tmp_path: Path) -> None:
    geom = Geometry()
    write_enhanced(tmp_path / "x", _stored(), geom, study=Study(), description="T1 map",
                   number=1, philips_type="T2")  # fmt: skip
    write_enhanced(tmp_path / "y", _stored(), geom, study=Study(), description="qmri",
                   number=2, philips_type="RHO")  # fmt: skip
    roles = [s.role for s in discover(tmp_path)]
    assert roles == ["T1map", "PDmap"]


# ---------------------------------------------------------------------- bad input


def test_junk_truncated_and_geometry_less_files_are_named(tmp_path: Path) -> None:
    paths = write_classic(tmp_path / "good", _stored(), Geometry(), study=Study(),
                          description="T1 map", number=1)  # fmt: skip
    (tmp_path / "notes.txt").write_text("not dicom")
    (tmp_path / "empty.dcm").write_bytes(b"")
    (tmp_path / "fake.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    whole = paths[0].read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(whole[:-20])  # pixel data cut
    (tmp_path / "halfheader.dcm").write_bytes(whole[: len(whole) // 2])
    ds = pydicom.dcmread(paths[1])
    del ds.ImagePositionPatient
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "nogeom.dcm")
    with pytest.warns(UserWarning, match="skipped 6 file") as rec:
        series = discover(tmp_path)
    (text,) = [str(w.message) for w in rec if "skipped" in str(w.message)]
    names = ("notes.txt", "empty.dcm", "fake.dcm", "truncated.dcm", "halfheader.dcm", "nogeom.dcm")
    for name in names:
        assert name in text
    assert "truncated (" in text
    assert "no geometry" in text
    s = _one(series)
    assert s.slices == 4
    assert s.load(convert_units=False).data.shape == SHAPE


def test_corrupt_pixel_data_is_skipped_at_load(tmp_path: Path) -> None:
    paths = write_classic(tmp_path, _stored(), Geometry(), study=Study(), description="x",
                          number=1, shuffle=False)  # fmt: skip
    s = _one(discover(tmp_path))
    data = bytearray(paths[3].read_bytes())
    paths[3].write_bytes(bytes(data[:-100]))  # the last slice loses pixel bytes after discover
    with pytest.warns(UserWarning, match=rf"skipped 1 file.*{paths[3].name}"):
        vol = s.load()
    assert vol.data.shape == (*SHAPE[:2], 3)


def test_missing_slice_is_a_gap_error(tmp_path: Path) -> None:
    paths = write_classic(tmp_path, _stored(), Geometry(), study=Study(), description="x",
                          number=1, shuffle=False)  # fmt: skip
    paths[1].unlink()
    with pytest.raises(DicomGeometryError, match=r"1 slice\(s\) missing"):
        _one(discover(tmp_path)).load()


@pytest.mark.parametrize(
    ("shift", "match"),
    [
        (np.array([0.0, 0.0, 1.3]), "inconsistent slice spacing"),
        (np.array([0.7, 0.0, 0.0]), "tilted/sheared"),
        (np.array([0.0, 0.0, -3.0]), "several images at one slice position"),
    ],
)
def test_inconsistent_positions_raise(tmp_path: Path, shift: np.ndarray, match: str) -> None:
    paths = write_classic(tmp_path, _stored(), Geometry(), study=Study(), description="x",
                          number=1, shuffle=False)  # fmt: skip
    for k in (2, 3) if match == "tilted/sheared" else (2,):
        ds = pydicom.dcmread(paths[k])
        pos = np.array([float(v) for v in ds.ImagePositionPatient])
        ds.ImagePositionPatient = [float(v) for v in pos + shift * (k - 1)]
        ds.save_as(paths[k])
    with pytest.raises(DicomGeometryError, match=match):
        _one(discover(tmp_path)).load()


def test_odd_matrix_slice_is_left_out(tmp_path: Path) -> None:
    paths = write_classic(tmp_path, _stored(), Geometry(), study=Study(), description="x",
                          number=1, shuffle=False)  # fmt: skip
    ds = pydicom.dcmread(paths[3])
    ds.Rows, ds.Columns = 2, 3
    ds.PixelData = np.zeros((2, 3), np.uint16).tobytes()
    ds.save_as(paths[3])
    with pytest.warns(UserWarning, match=rf"1 image\(s\) differ.*{paths[3].name}"):
        s = _one(discover(tmp_path))
    assert s.slices == 3


def test_limits(tmp_path: Path) -> None:
    write_classic(tmp_path, _stored(), Geometry(), study=Study(), description="x", number=1)
    with pytest.warns(UserWarning, match="stopped after 2 files"):
        assert discover(tmp_path, max_files=2)[0].slices == 2
    with pytest.warns(UserWarning, match="max_voxels"):
        assert discover(tmp_path, max_voxels=50) == []
    with pytest.warns(UserWarning, match="max_file_bytes"):
        assert discover(tmp_path, max_file_bytes=100) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert discover(tmp_path)[0].slices == 4


# ---------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("role", "values", "unit", "role_out", "expected", "warns"),
    [
        ("T1map", [1200.0], "ms", "T1map", [1.2], True),
        ("T1map", [1.2], "s", "T1map", [1.2], False),
        ("T1map", [1200.0], None, "T1map", [1.2], True),
        ("T2starmap", [40.0], "ms", "T2starmap", [0.04], True),
        ("R2starmap", [25.0], "1/s", "T2starmap", [0.04], True),
        ("ADC", [0.0008], "mm2/s", "ADC", [0.8], True),
        ("ADC", [800.0], None, "ADC", [0.8], True),
        ("ADC", [0.8], "um2/ms", "ADC", [0.8], False),
        ("B1map", [95.0], "%", "B1map", [0.95], True),
        ("B1map", [95.0], None, "B1map", [0.95], True),
        ("B0map", [2 * np.pi * 10], "rad/s", "B0map", [10.0], True),
        ("PDmap", [123.0], "a.u.", "PDmap", [123.0], False),
    ],
)
def test_units(role, values, unit, role_out, expected, warns) -> None:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out_role, out = to_canonical(role, np.array(values), unit, where="m")
    assert out_role == role_out
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert (len(rec) == 1) == warns, [str(w.message) for w in rec]


def test_b1_that_is_not_relative_raises() -> None:
    with (
        pytest.raises(QuantityError, match="not a relative field"),
        pytest.warns(UserWarning, match="percent"),
    ):
        to_canonical("B1map", np.array([800.0]), None, where="siemens flip angle x10")
    with pytest.raises(QuantityError, match="unsupported unit"):
        to_canonical("T1map", np.array([1.0]), "furlong", where="m")


# ---------------------------------------------------------------------- dcm2niix


def _dcm2niix(src: Path, out: Path) -> nib.Nifti1Image:
    out.mkdir()
    subprocess.run(["dcm2niix", "-z", "n", "-f", "%s", "-o", str(out), str(src)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    (nii,) = out.glob("*.nii")
    return nib.as_closest_canonical(nib.load(nii))


@pytest.mark.skipif(shutil.which("dcm2niix") is None, reason="dcm2niix is not installed "
                    "(Debian package dcm2niix)")  # fmt: skip
@pytest.mark.parametrize("enhanced", [False, True])
def test_geometry_and_values_match_dcm2niix(tmp_path: Path, enhanced: bool) -> None:
    geom = Geometry.oblique()
    stored = _stored()
    src = tmp_path / "src"
    if enhanced:
        write_enhanced(src / "IM1", stored, geom, study=Study(), description="q", number=2,
                       rwv_slope=0.25, rwv_unit="ms")  # fmt: skip
    else:
        write_classic(src, stored, geom, study=Study(), description="q", number=2, slope=0.25)
    vol = _one(discover(src)).load(convert_units=False)
    ref = _dcm2niix(src, tmp_path / "nii")
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.data, vol.affine))
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.affine, ref.affine, atol=1e-4)
    np.testing.assert_allclose(ours.get_fdata(), ref.get_fdata(), rtol=1e-6, atol=1e-6)
    # negative control: an unsorted stack (file order) would not match
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ vol.affine
    flipped = nib.as_closest_canonical(nib.Nifti1Image(vol.data, lps))
    assert not np.allclose(flipped.affine, ref.affine, atol=1e-4)


def test_lut_only_real_world_mapping_warns(tmp_path: Path) -> None:
    stored = _stored()
    paths = write_classic(tmp_path, stored, Geometry(), study=Study(), description="x", number=1,
                          slope=2.0)  # fmt: skip
    for p in paths:
        ds = pydicom.dcmread(p)
        item = pydicom.Dataset()
        item.RealWorldValueLUTData = [0.0, 1.0]
        ds.RealWorldValueMappingSequence = pydicom.Sequence([item])
        ds.save_as(p)
    with pytest.warns(UserWarning, match="only a LUT, which is not supported"):
        vol = _one(discover(tmp_path)).load(convert_units=False)
    np.testing.assert_allclose(vol.data, stored * 2.0)

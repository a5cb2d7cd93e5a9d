"""``mr0 simulate --recon DIR.dcm/``, ``mr0 recon --dicom DIR`` and their bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import ismrmrd
import ismrmrd.xsd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from mr0core.cli import main
from mr0core.io.dicom import discover
from mr0core.jobs import build_demo_flash


@pytest.fixture(scope="module")
def sims(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16² FLASH simulated once: NIfTI recon, DICOM recon and the raw MRD file."""
    root = tmp_path_factory.mktemp("sim")
    seq = root / "flash16.seq"
    build_demo_flash(16).write(str(seq))
    args = ["simulate", str(seq), "--size", "16"]
    assert main([*args, "--out", str(root / "s.mrd"), "--recon", str(root / "sim.nii.gz")]) == 0
    assert main([*args, "--out", str(root / "s.npy"), "--recon", str(root / "sim.dcm") + "/"]) == 0
    return root


def test_simulate_writes_a_simulated_dicom_series_on_the_nifti_grid(sims: Path) -> None:
    files = sorted((sims / "sim.dcm").iterdir())
    assert len(files) == 1
    d = pydicom.dcmread(files[0])
    assert d.SeriesDescription.startswith("SIMULATED mr0 simulate builtin:brain")
    assert "SIMULATED" in d.ImageType
    assert d.PatientID == "MR0-ANONYMOUS"
    assert float(d.EchoTime) == pytest.approx(5.0)
    assert float(d.RepetitionTime) == pytest.approx(12.0)
    (series,) = discover(sims / "sim.dcm")
    vol = series.load()
    nii = nib.load(sims / "sim.nii.gz")
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-4)
    ref = nii.get_fdata()
    np.testing.assert_allclose(vol.data, ref, atol=float(d.RescaleSlope) * 1.01)
    assert (sims / "sim_ground_truth").is_dir()


def test_recon_writes_dicom_with_the_header_and_acquisition_geometry(
    sims: Path, tmp_path: Path
) -> None:
    out = tmp_path / "rec"
    assert main(["recon", str(sims / "s.mrd"), "--dicom", str(out), "--simulated"]) == 0
    (series,) = discover(out)
    assert series.description.startswith("SIMULATED mr0 recon")
    vol = series.load()
    ref = nib.load(sims / "sim.nii.gz").get_fdata()
    d = pydicom.dcmread(series.files[0])
    # sig_to_mrd writes read (1, 0, 0) and phase (0, 1, 0) in LPS: x and y point left and back
    np.testing.assert_allclose(np.diag(vol.affine)[:2] < 0, [True, True])
    np.testing.assert_allclose(vol.data, ref, atol=float(d.RescaleSlope) * 1.01)
    # without --simulated, a file mr0 simulate wrote still says SIMULATED (its header's mark) ...
    assert main(["recon", str(sims / "s.mrd"), "--dicom", str(tmp_path / "auto")]) == 0
    (auto,) = discover(tmp_path / "auto")
    assert auto.description.startswith("SIMULATED")
    # ... and a measured file's (the same data without the mark) does not
    measured_file = tmp_path / "measured.mrd"
    shutil.copy(sims / "s.mrd", measured_file)
    ds = ismrmrd.Dataset(str(measured_file), "dataset", create_if_needed=False)
    header = ismrmrd.xsd.CreateFromDocument(ds.read_xml_header())
    header.userParameters = None
    ds.write_xml_header(ismrmrd.xsd.ToXML(header))
    ds.close()
    assert main(["recon", str(measured_file), "--dicom", str(tmp_path / "m")]) == 0
    (measured,) = discover(tmp_path / "m")
    assert "SIMULATED" not in measured.description


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recon", "{mrd}"], "give --out"),
        (["recon", "{mrd}", "--out", "{tmp}/x.nii", "--simulated"], "needs --dicom"),
        (["recon", "{mrd}", "--dicom", "{full}"], "not an empty folder"),
        (["recon", "{mrd}", "--dicom", "{tmp}/no/such/x"], "does not exist"),
    ],
)
def test_bad_dicom_options(sims, tmp_path, capsys, argv, message) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "a").write_text("x")
    fill = {"mrd": str(sims / "s.mrd"), "tmp": str(tmp_path), "full": str(full)}
    assert main([a.format(**fill) for a in argv]) == 2
    assert message in capsys.readouterr().err

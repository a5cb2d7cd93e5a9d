"""Twins from clinical data: DICOM folders and BIDS datasets; our outputs as BIDS (issue 25)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_synth import Geometry, Study, write_classic, write_enhanced

from mr0core.cli import main
from mr0core.phantom import PhantomError, TissueDict

SHAPE = (6, 5, 4)

# the validator's launcher sits beside the interpreter (CI's PATH does not hold .venv/bin)
VALIDATOR = shutil.which("bids-validator-deno") or shutil.which(
    "bids-validator-deno", path=str(Path(sys.executable).parent)
)


def _canon(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = nib.as_closest_canonical(nib.Nifti1Image(data.astype(np.float32), affine))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _dicom_study(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """T1 (Siemens classic, ms, RescaleSlope), T2 (Philips enhanced, RWVM in s), PD, B1 (%)."""
    rng = np.random.default_rng(seed)
    study, geom = Study(), Geometry.oblique()
    t1 = rng.integers(800, 2000, SHAPE)
    t2 = rng.integers(40, 150, SHAPE)
    pd = rng.integers(200, 1000, SHAPE)
    b1 = rng.integers(80, 120, SHAPE)
    write_classic(root / "siemens" / "T1", t1 * 4, geom, study=study, description="T1 Map",
                  number=10, slope=0.25,
                  image_type=("DERIVED", "PRIMARY", "T1 MAP", "ND"))  # fmt: skip
    write_enhanced(root / "philips" / "IM_T2", t2, geom, study=study, description="qMRI",
                   number=11, rwv_slope=1e-3, rwv_unit="s", philips_type="T2")  # fmt: skip
    write_classic(root / "siemens" / "PD", pd, geom, study=study, description="PD map", number=12)
    write_enhanced(root / "philips" / "IM_B1", b1, geom, study=study, description="B1 map",
                   number=13, rwv_slope=1.0, rwv_unit="%")  # fmt: skip
    write_classic(root / "siemens" / "loc", pd[:, :, :1], geom, study=study,
                  description="localizer", number=1)  # fmt: skip
    (root / "README.txt").write_text("exported by a scanner")
    affine = geom.expected_affine()
    return {
        "T1": _canon(t1 / 1000.0, affine)[0], "T2": _canon(t2 / 1000.0, affine)[0],
        "PD": _canon(pd, affine)[0], "B1": _canon(b1 / 100.0, affine)[0],
        "affine": _canon(pd, affine)[1],
    }  # fmt: skip


def test_from_dicom_two_vendors_equals_source(tmp_path: Path) -> None:
    src = _dicom_study(tmp_path / "dicom")
    with pytest.warns(UserWarning, match="converted") as rec:
        twin = TissueDict.from_dicom(tmp_path / "dicom")
    messages = " | ".join(str(w.message) for w in rec)
    assert "T1map in ms (guessed" in messages
    assert "B1map in % (RealWorldValueMapping)" in messages
    assert "README.txt" in messages
    p = twin["subject"]
    np.testing.assert_allclose(p.T1.numpy(), src["T1"], rtol=1e-6)
    np.testing.assert_allclose(p.T2.numpy(), src["T2"], rtol=1e-6)
    np.testing.assert_allclose(p.B1[0].real.numpy(), src["B1"], rtol=1e-6)
    pd = src["PD"] / np.percentile(src["PD"], 99.5)
    np.testing.assert_allclose(p.PD.numpy(), pd, rtol=1e-6)
    np.testing.assert_allclose(p.affine, src["affine"], atol=1e-5)
    assert twin.system.B0 == 3.0
    # the server's --phantoms folder loads twins with TissueDict.load
    twin.save(tmp_path / "out" / "twin.json")
    back = TissueDict.load(tmp_path / "out" / "twin.json")["subject"]
    np.testing.assert_allclose(back.T1.numpy(), src["T1"], rtol=1e-6)
    np.testing.assert_allclose(back.affine, src["affine"], atol=1e-4)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_from_dicom_missing_map_and_duplicates(tmp_path: Path) -> None:
    _dicom_study(tmp_path)
    shutil.rmtree(tmp_path / "philips")
    with pytest.raises(PhantomError, match=r"no usable T2map.*T1map: series 10"):
        TissueDict.from_dicom(tmp_path)
    _dicom_study(tmp_path / "again", seed=1)  # a second T1 map (and all others) of another study
    with (
        pytest.raises(PhantomError, match="frames of reference"),
        pytest.warns(UserWarning, match="T1map"),
    ):
        TissueDict.from_dicom(tmp_path)


def test_from_dicom_picks_highest_series_number(tmp_path: Path) -> None:
    src = _dicom_study(tmp_path)
    write_classic(tmp_path / "old", np.full(SHAPE, 5000), Geometry.oblique(), study=Study(),
                  description="T1 map", number=2)  # fmt: skip
    with pytest.warns(UserWarning, match="series") as rec:
        twin = TissueDict.from_dicom(tmp_path)
    assert any("2 T1map series; using series 10" in str(w.message) for w in rec)
    np.testing.assert_allclose(twin["subject"].T1.numpy(), src["T1"], rtol=1e-6)


# ---------------------------------------------------------------------- BIDS


def _nii(path: Path, data: np.ndarray, affine: np.ndarray, sidecar: dict | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    if sidecar is not None:
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


def _bids(root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-5, -4, 0]
    maps = {
        "T1map": rng.uniform(800, 2000, SHAPE), "T2map": rng.uniform(0.04, 0.15, SHAPE),
        "M0map": rng.uniform(100, 1000, SHAPE), "TB1map": rng.uniform(0.8, 1.2, SHAPE),
        "fieldmap": rng.uniform(-30, 30, SHAPE), "ADC": rng.uniform(0.5e-3, 1e-3, SHAPE),
    }  # fmt: skip
    (root).mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.10.0"}')
    # inheritance: top-level sidecars apply to every subject's maps
    (root / "T1map.json").write_text('{"Units": "ms", "MagneticFieldStrength": 1.5}')
    (root / "fieldmap.json").write_text('{"Units": "rad/s"}')
    for sub, ses in (("01", "01"), ("01", "02"), ("02", "01")):
        base = root / f"sub-{sub}" / f"ses-{ses}"
        stem = f"sub-{sub}_ses-{ses}"
        scale = 1.0 if (sub, ses) == ("01", "01") else 1.1
        for suffix in ("T1map", "T2map", "M0map"):
            _nii(base / "anat" / f"{stem}_{suffix}.nii.gz", maps[suffix] * scale, affine)
        _nii(base / "fmap" / f"{stem}_TB1map.nii.gz", maps["TB1map"], affine)
        _nii(base / "fmap" / f"{stem}_fieldmap.nii.gz", maps["fieldmap"], affine)
        _nii(base / "dwi" / f"{stem}_ADC.nii.gz", maps["ADC"], affine, {"Units": "mm2/s"})
    return maps


def test_from_bids_session_and_inheritance(tmp_path: Path) -> None:
    maps = _bids(tmp_path / "ds")
    with pytest.raises(PhantomError, match=r"2 T1map files for sub-01.*pass session="):
        TissueDict.from_bids(tmp_path / "ds", "01")
    with pytest.warns(UserWarning, match="sidecar Units") as rec:
        twin = TissueDict.from_bids(tmp_path / "ds", "sub-01", session="ses-01")
    messages = " | ".join(str(w.message) for w in rec)
    assert "T1map in ms (sidecar Units)" in messages  # inherited from the top-level T1map.json
    assert "B0map in rad/s (sidecar Units)" in messages
    p = twin["subject"]
    np.testing.assert_allclose(p.T1.numpy(), maps["T1map"] / 1000.0, rtol=1e-6)
    np.testing.assert_allclose(p.T2.numpy(), maps["T2map"], rtol=1e-6)
    np.testing.assert_allclose(p.B0.numpy(), maps["fieldmap"] / (2 * np.pi), rtol=1e-5)
    np.testing.assert_allclose(p.D.numpy(), maps["ADC"] * 1000.0, rtol=1e-5)
    np.testing.assert_allclose(p.B1[0].real.numpy(), maps["TB1map"], rtol=1e-6)
    assert twin.system.B0 == 1.5  # MagneticFieldStrength inherited too
    with pytest.raises(PhantomError, match="no subject '07'"):
        TissueDict.from_bids(tmp_path / "ds", "07")
    # negative control: without the top-level sidecar the rad/s field map is taken as Hz
    (tmp_path / "ds" / "fieldmap.json").unlink()
    with pytest.warns(UserWarning, match="T1map in ms"):
        plain = TissueDict.from_bids(tmp_path / "ds", "01", "01")["subject"]
    np.testing.assert_allclose(plain.B0.numpy(), maps["fieldmap"], rtol=1e-5)


def test_from_maps_on_a_subject_root_points_to_from_bids(tmp_path: Path) -> None:
    _bids(tmp_path / "ds")
    with pytest.raises(PhantomError, match=r"from_bids\('.*ds', '01'\)"):
        TissueDict.from_maps(tmp_path / "ds" / "sub-01")
    with pytest.raises(PhantomError, match=r"from_bids\('.*ds', '01', session='01'\)"):
        TissueDict.from_maps(tmp_path / "ds" / "sub-01" / "ses-01")
    with pytest.raises(PhantomError, match="missing PD"):  # a plain empty folder: no hint
        TissueDict.from_maps(tmp_path / "ds" / "sub-01" / "ses-01" / "dwi")


# ---------------------------------------------------------------------- CLI


def test_cli_twin_from_dicom_and_bids(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = _dicom_study(tmp_path / "dicom")
    out = tmp_path / "phantoms" / "subject.json"
    assert main(["twin", "--from-dicom", str(tmp_path / "dicom"), "--out", str(out)]) == 0
    assert "T1map in ms" in capsys.readouterr().err
    loaded = TissueDict.load(out)["subject"]
    np.testing.assert_allclose(loaded.T2.numpy(), src["T2"], rtol=1e-6)
    for f in out.parent.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o700
    _bids(tmp_path / "ds")
    out2 = tmp_path / "b" / "twin.json"
    args = ["twin", "--from-bids", str(tmp_path / "ds"), "--subject", "02", "--out", str(out2)]
    assert main(args) == 0
    assert TissueDict.load(out2)["subject"].shape == SHAPE
    assert main(["twin", "--from-bids", str(tmp_path / "ds"), "--out", str(out2)]) == 2
    assert "needs --subject" in capsys.readouterr().err
    assert main(["twin", "--from-dicom", str(tmp_path / "nope"), "--out", str(out2)]) == 2


# ---------------------------------------------------------------------- our outputs as BIDS


def _validator_errors(root: Path) -> list[tuple[str, str]]:
    run = subprocess.run([str(VALIDATOR), "--format", "json", str(root)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    report = json.loads(run.stdout)
    return sorted(
        (i["code"], i.get("location", ""))
        for i in report["issues"]["issues"]
        if i.get("severity") == "error"
    )


@pytest.mark.skipif(VALIDATOR is None,
                    reason="bids-validator-deno (PyPI) is not installed")  # fmt: skip
def test_ground_truth_is_a_bids_derivative(tmp_path: Path) -> None:
    from mr0core.io.bids import write_ground_truth_dataset
    from mr0core.jobs import load_job_phantom

    phantom, name = load_job_phantom("shepp-logan", 16)
    root = tmp_path / "derivatives" / "mr0"
    write_ground_truth_dataset(root, phantom.combine(), subject="001", phantom_name=name)
    assert _validator_errors(root) == []  # more in tests/mr0core/io/test_bids_output.py
    (root / "dataset_description.json").unlink()
    before = _validator_errors(root)
    assert any("dataset_description" in loc or "DATASET_DESCRIPTION" in code
               for code, loc in before), before  # fmt: skip

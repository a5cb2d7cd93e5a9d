"""``mr0 simulate --recon`` writes its ground truth as a BIDS derivative dataset that the BIDS
validator (``bids-validator-deno``, PyPI) accepts without errors.

The simulation runs once (16² FLASH on the Shepp-Logan phantom); each validator run takes about
half a second. Negative controls: the same dataset
without ``dataset_description.json``, without ``.bidsignore``, and the flat layout of
``write_ground_truth`` (TB1map in ``anat/``) each give errors.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mr0core.cli import main
from mr0core.io.bids import (
    bids_label,
    write_dataset_description,
    write_ground_truth,
    write_ground_truth_dataset,
)
from mr0core.jobs import build_demo_flash, load_job_phantom

VALIDATOR = shutil.which("bids-validator-deno") or shutil.which(
    "bids-validator-deno", path=str(Path(sys.executable).parent)
)
needs_validator = pytest.mark.skipif(
    VALIDATOR is None, reason="bids-validator-deno (PyPI: bids-validator-deno) is not installed"
)


def validator_errors(root: Path) -> list[tuple[str, str]]:
    """Return the validator's errors as (code, location), sorted."""
    assert VALIDATOR is not None
    run = subprocess.run([VALIDATOR, "--format", "json", str(root)], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    report = json.loads(run.stdout)
    return sorted(
        (i["code"], i.get("location", ""))
        for i in report["issues"]["issues"]
        if i.get("severity") == "error"
    )


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run ``mr0 simulate --recon sim.nii.gz`` once; return its folder."""
    root = tmp_path_factory.mktemp("bids")
    build_demo_flash(16).write(str(root / "flash16.seq"))
    argv = ["simulate", str(root / "flash16.seq"), "--phantom", "shepp-logan", "--size", "16",
            "--out", str(root / "s.npy"), "--recon", str(root / "sim.nii.gz")]  # fmt: skip
    assert main(argv) == 0
    return root


def test_simulate_recon_layout(simulated: Path) -> None:
    """The image stays where asked; the ground truth is a dataset beside it."""
    assert (simulated / "sim.nii.gz").is_file()
    assert (simulated / "sim.json").is_file()
    root = simulated / "sim_ground_truth"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    sub = "sub-shepplogan"
    maps = [f"{sub}/anat/{sub}_{s}" for s in ("Dmap", "PDmap", "T1map", "T2map", "T2primemap")]
    maps += [f"{sub}/fmap/{sub}_{s}" for s in ("TB1map", "fieldmap", "magnitude")]
    expected = [".bidsignore", "README", "dataset_description.json"]
    expected += [m + ext for m in maps for ext in (".json", ".nii.gz")]
    assert files == sorted(expected)
    description = json.loads((root / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "mr0core"
    assert description["GeneratedBy"][0]["Version"]
    assert (root / ".bidsignore").read_text().split() == ["*_T2primemap.*", "*_Dmap.*"]
    assert json.loads((root / sub / "fmap" / f"{sub}_fieldmap.json").read_text())["Units"] == "Hz"
    assert nib.load(root / sub / "fmap" / f"{sub}_TB1map.nii.gz").shape == (16, 16, 1)
    for f in root.rglob("*"):  # a twin's maps are patient data
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f


def test_ground_truth_maps_equal_the_phantom(simulated: Path) -> None:
    phantom, _ = load_job_phantom("shepp-logan", 16)
    phantom = phantom.combine()
    anat = simulated / "sim_ground_truth" / "sub-shepplogan" / "anat"
    fmap = anat.parent / "fmap"
    np.testing.assert_allclose(
        nib.load(anat / "sub-shepplogan_T1map.nii.gz").get_fdata(), phantom.T1.numpy(), rtol=1e-6
    )
    np.testing.assert_allclose(
        nib.load(fmap / "sub-shepplogan_fieldmap.nii.gz").get_fdata(), phantom.B0.numpy(),
        atol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        nib.load(fmap / "sub-shepplogan_magnitude.nii.gz").get_fdata(), phantom.PD.numpy(),
        rtol=1e-6,
    )  # fmt: skip


@needs_validator
def test_ground_truth_dataset_is_valid_bids(simulated: Path, tmp_path: Path) -> None:
    root = simulated / "sim_ground_truth"
    assert validator_errors(root) == []
    # negative controls, each on a copy
    no_description = shutil.copytree(root, tmp_path / "a")
    (no_description / "dataset_description.json").unlink()
    codes = {code for code, _ in validator_errors(no_description)}
    assert "MISSING_DATASET_DESCRIPTION" in codes, codes
    no_ignore = shutil.copytree(root, tmp_path / "b")
    (no_ignore / ".bidsignore").unlink()
    locations = {loc for _, loc in validator_errors(no_ignore)}
    assert "/sub-shepplogan/anat/sub-shepplogan_T2primemap.nii.gz" in locations, locations
    assert "/sub-shepplogan/anat/sub-shepplogan_Dmap.nii.gz" in locations, locations


@needs_validator
def test_flat_ground_truth_is_not_valid_bids(tmp_path: Path) -> None:
    """What mr0 simulate wrote before: B1 in anat/ (BIDS wants fmap/), B0 without a suffix."""
    phantom, name = load_job_phantom("shepp-logan", 8)
    root = tmp_path / "flat"
    write_ground_truth(root / "sub-001" / "anat", phantom.combine(), prefix="sub-001")
    write_dataset_description(root, phantom_name=name)
    locations = {loc for _, loc in validator_errors(root)}
    assert "/sub-001/anat/sub-001_TB1map.nii.gz" in locations, locations
    assert "/sub-001/anat/sub-001_B0map.nii.gz" in locations, locations


def test_subject_labels(tmp_path: Path) -> None:
    assert bids_label("builtin:shepp-logan") == "shepplogan"
    assert bids_label("builtin:brain") == "brain"
    assert bids_label("twins/Subject_01.json") == "Subject01"
    assert bids_label("::--") == "phantom"
    assert len(bids_label("x" * 500)) == 64
    phantom, _ = load_job_phantom("shepp-logan", 8)
    with pytest.raises(ValueError, match="subject label"):
        write_ground_truth_dataset(tmp_path / "gt", phantom.combine(), subject="sub-01")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        write_ground_truth_dataset(tmp_path / "file", phantom.combine(), subject="01")
    written = write_ground_truth_dataset(tmp_path / "gt", phantom.combine(), subject="01")
    assert written["T1"] == tmp_path / "gt" / "sub-01" / "anat" / "sub-01_T1map.nii.gz"
    assert written["B1"].parent.name == "fmap"


def test_ground_truth_dataset_reads_back_as_a_twin(simulated: Path) -> None:
    """TissueDict.from_bids finds T1, T2, PD, the field map and TB1map of our dataset."""
    from mr0core.phantom import TissueDict

    phantom, _ = load_job_phantom("shepp-logan", 16)
    phantom = phantom.combine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on defaults for T2', D (not BIDS maps)
        twin = TissueDict.from_bids(simulated / "sim_ground_truth", "shepplogan")["subject"]
    tissue = phantom.PD.numpy() > 0  # outside, from_bids puts its own defaults
    for attr in ("T1", "T2"):
        got, want = getattr(twin, attr).numpy(), getattr(phantom, attr).numpy()
        np.testing.assert_allclose(got[tissue], want[tissue], rtol=1e-6)
    pd, want_pd = twin.PD.numpy(), phantom.PD.numpy()  # PD up to a scale (from_bids normalises)
    np.testing.assert_allclose(pd / pd.max(), want_pd / want_pd.max(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(twin.B0.numpy(), phantom.B0.numpy(), atol=1e-6)
    np.testing.assert_allclose(twin.B1.abs().numpy(), phantom.B1.abs().numpy(), rtol=1e-6)

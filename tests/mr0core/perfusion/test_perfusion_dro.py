"""``mr0 dro``: parameters, BIDS output, motion, noise and the end-to-end CBF check (analytic)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mr0core.cli import main
from mr0core.perfusion.dro import (
    DroError,
    GroundTruth,
    acquisition_affine,
    generate,
    load_params,
    resample,
)
from mr0core.perfusion.quantify import quantify, quantify_gkm

GRID = {"acquisition_matrix": [40, 40, 6], "fov_mm": [220.0, 220.0, 120.0]}
KW = {"label_type": "pcasl", "t1_blood": 1.65, "label_efficiency": 0.85}


def _params(*pipelines, **top):
    return {"hires_ground_truth": False, **top, "pipelines": list(pipelines)}


def _load(path):
    return nib.load(path).get_fdata()


def _purity(label, p):
    """Fraction of ``label`` at each acquisition voxel, resampled as the volumes are."""
    gt = GroundTruth.brain("3T")
    mask = (gt.seg == label).astype(np.float32)
    shape = tuple(p["acquisition_matrix"])
    return resample(mask, gt.affine, acquisition_affine(p), shape, p["rotation"][0],
                    p["translation"][0])  # fmt: skip


def test_default_run_is_valid_bids(tmp_path):
    out = tmp_path / "dro"
    assert main(["dro", "--out", str(out)]) == 0
    perf = out / "sub-001" / "perf"
    side = json.loads((perf / "sub-001_acq-pcasl_asl.json").read_text())
    for key, value in {"ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8,
                       "LabelingDuration": 1.8, "M0Type": "Separate",
                       "BackgroundSuppression": False, "RepetitionTimePreparation": 5.0,
                       "MagneticFieldStrength": 3.0}.items():  # fmt: skip
        assert side[key] == value, key
    assert side["Simulation"]["Engine"] == "analytic"
    assert (
        perf / "sub-001_acq-pcasl_aslcontext.tsv"
    ).read_text() == "volume_type\ncontrol\nlabel\n"
    m0_side = json.loads((perf / "sub-001_acq-pcasl_m0scan.json").read_text())
    assert m0_side["IntendedFor"] == "bids::sub-001/perf/sub-001_acq-pcasl_asl.nii.gz"
    assert _load(perf / "sub-001_acq-pcasl_asl.nii.gz").shape == (64, 64, 12, 2)
    assert (out / "sub-001" / "anat" / "sub-001_acq-t1w_T1w.nii.gz").is_file()
    truth = out / "derivatives" / "groundtruth" / "sub-001" / "anat"
    assert _load(truth / "sub-001_res-1mm_desc-perfusionrate_map.nii.gz").shape == (145, 181, 154)
    assert _load(truth / "sub-001_acq-lowres_desc-perfusionrate_map.nii.gz").shape == (64, 64, 12)
    validator = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if validator is None:
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    run = subprocess.run([validator, "--format", "json", str(out)], capture_output=True,
                         text=True, timeout=120, check=False)  # fmt: skip
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == []
    assert run.returncode == 0


@pytest.mark.parametrize("model", ["full", "whitepaper"])
def test_cbf_recovered_within_one_percent(tmp_path, model):
    """Quantify the noise-free pCASL dataset; GM 60, WM 20 ml/100 g/min come back within 1 %."""
    asl = {"kind": "asl", "name": "pcasl", "gkm_model": model, **GRID}
    params = _params(asl, {"kind": "ground_truth", "name": "gt", **GRID})
    generate(params, tmp_path / "out")
    perf = tmp_path / "out" / "sub-001" / "perf"
    series = _load(perf / "sub-001_acq-pcasl_asl.nii.gz")
    m0 = _load(perf / "sub-001_acq-pcasl_m0scan.nii.gz")
    dm = series[..., 0] - series[..., 1]
    truth = tmp_path / "out" / "derivatives" / "groundtruth" / "sub-001" / "anat"
    transit = _load(truth / "sub-001_acq-gt_desc-transittime_map.nii.gz")
    t1 = _load(truth / "sub-001_acq-gt_desc-T1_map.nii.gz")
    white_paper = quantify(dm, m0, post_labeling_delay=1.8, label_duration=1.8, **KW)
    full = quantify_gkm(dm, m0, t=3.6, transit_time=transit, t1_tissue=np.where(t1 > 0, t1, 1),
                        label_duration=1.8, **KW)  # fmt: skip
    matched, other = (full, white_paper) if model == "full" else (white_paper, full)
    p = load_params(params)["pipelines"][0]
    for label, value in ((1, 60.0), (2, 20.0)):
        pure = _purity(label, p) > 0.9999
        assert pure.sum() > 100
        np.testing.assert_allclose(matched[pure], value, rtol=0.01)
        # negative control: the other model's inverse misses by far more than 1 %
        assert np.median(np.abs(other[pure] / value - 1)) > 0.2


def test_multi_pld_and_pasl(tmp_path):
    grid = {"acquisition_matrix": [16, 16, 4], "fov_mm": [220.0, 220.0, 120.0]}
    context = ["m0scan", "control", "label", "control", "label"]
    plds = [0.0, 0.5, 0.5, 2.0, 2.0]
    pasl = {"kind": "asl", "name": "pasl", "label_type": "pasl", "asl_context": context,
            "post_labeling_delay": plds, "repetition_time": [10.0, 5, 5, 5, 5],
            "bolus_cut_off_flag": True, "bolus_cut_off_delay_time": 0.7,
            "label_efficiency": 0.98, **grid}  # fmt: skip
    generate(_params(pasl), tmp_path / "out")
    perf = tmp_path / "out" / "sub-001" / "perf"
    side = json.loads((perf / "sub-001_acq-pasl_asl.json").read_text())
    assert side["ArterialSpinLabelingType"] == "PASL"
    assert side["PostLabelingDelay"] == [0.5, 0.5, 2.0, 2.0]
    assert side["BolusCutOffFlag"] is True
    assert side["BolusCutOffDelayTime"] == 0.7
    assert "LabelingDuration" not in side
    series = _load(perf / "sub-001_acq-pasl_asl.nii.gz")
    early, late = series[..., 0] - series[..., 1], series[..., 2] - series[..., 3]
    # TI 0.5 s: before GM arrival (0.8 s): no signal; TI 2.0 s: GM signal
    assert np.abs(early).max() < 1e-4
    assert late.max() > 0.1


def test_motion_translation_shifts_by_whole_voxels(tmp_path):
    grid = {"acquisition_matrix": [32, 32, 4], "fov_mm": [220.0, 220.0, 80.0]}
    step = 220.0 / 32
    still = {"kind": "structural", "name": "still", **grid}
    moved = {"kind": "structural", "name": "moved", "translation": [2 * step, 0.0, 0.0], **grid}
    turned = {"kind": "structural", "name": "turned", "rotation": [0.0, 0.0, 10.0], **grid}
    generate(_params(still, moved, turned), tmp_path / "out")
    anat = tmp_path / "out" / "sub-001" / "anat"
    a, b, c = (_load(anat / f"sub-001_acq-{n}_T1w.nii.gz") for n in ("still", "moved", "turned"))
    np.testing.assert_allclose(b[2:], a[:-2], atol=1e-4)
    assert np.abs(b - a).max() > 1.0  # the shift did something
    assert np.abs(c - a).max() > 1.0
    assert c.sum() == pytest.approx(a.sum(), rel=0.02)  # rotation keeps the object


def test_noise_seeded_and_at_desired_snr(tmp_path):
    grid = {"acquisition_matrix": [32, 32, 4], "fov_mm": [220.0, 220.0, 80.0]}
    s = {"kind": "structural", "name": "noisy", "desired_snr": 10.0, **grid}
    clean = {"kind": "structural", "name": "clean", **grid}
    for seed, name in ((1, "a"), (1, "b"), (2, "c")):
        generate(_params(clean, s, seed=seed), tmp_path / name)
    anat = "sub-001/anat/sub-001_acq-{}_T1w.nii.gz"
    a, b, c = (_load(tmp_path / n / anat.format("noisy")) for n in "abc")
    ref = _load(tmp_path / "a" / anat.format("clean"))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    side = json.loads(
        (tmp_path / "a" / anat.format("noisy").replace(".nii.gz", ".json")).read_text()
    )
    sigma = side["Simulation"]["NoiseStd"][0]
    assert sigma == pytest.approx(ref[ref > 0].mean() / 10.0, rel=1e-5)
    bright = ref > 5 * sigma  # where the Rician bias is negligible
    np.testing.assert_allclose(np.std(a[bright] - ref[bright]), sigma, rtol=0.1)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_archives_and_written_params(tmp_path, suffix):
    params_file = tmp_path / "params.json"
    assert main(["dro", "--write-params", str(params_file)]) == 0
    params = json.loads(params_file.read_text())
    assert params["pipelines"][0]["asl_context"] == ["m0scan", "control", "label"]
    params["hires_ground_truth"] = False
    params["pipelines"] = [{**params["pipelines"][2], "acquisition_matrix": [8, 8, 2]}]
    params_file.write_text(json.dumps(params))
    out = tmp_path / f"dro{suffix}"
    assert main(["dro", str(params_file), "--out", str(out)]) == 0
    if suffix == ".zip":
        with zipfile.ZipFile(out) as zf:
            names = zf.namelist()
    else:
        with tarfile.open(out) as tf:
            names = tf.getnames()
    assert "dataset_description.json" in names
    assert any(n.endswith("acq-lowres_desc-perfusionrate_map.nii.gz") for n in names)
    assert main(["dro", str(params_file), "--out", str(out)]) == 2  # not overwritten


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": 1}, "unknown keys"),
        ({"acquisition_matrix": [513, 4, 4]}, "acquisition_matrix"),
        ({"acquisition_matrix": [512, 512, 128]}, "exceeds"),
        ({"asl_context": ["control"] * 1001}, "asl_context"),
        ({"background_suppression": True}, "not simulated"),
        ({"engine": "pdg"}, "needs 'seq'"),
        ({"post_labeling_delay": [1.8, 1.8]}, "entries"),
        ({"rotation": [[0, 0, 0]] * 2}, "rotation"),
        ({"bolus_cut_off_flag": True}, "pasl"),
        ({"label_type": "fair"}, "label_type"),
    ],
)
def test_bad_params_are_named(change, message):
    with pytest.raises(DroError, match=message):
        load_params(_params({"kind": "asl", **change}))


def test_bad_top_level_and_cli_errors(tmp_path, capsys):
    with pytest.raises(DroError, match="kind"):
        load_params(_params({"kind": "spectroscopy"}))
    with pytest.raises(DroError, match="unknown top-level"):
        load_params({"pipelines": [], "subject": "x"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["dro", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "not JSON" in capsys.readouterr().err
    assert main(["dro"]) == 2  # no --out

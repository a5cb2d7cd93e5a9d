"""``mr0 dro`` with the PDG engine: a 2-D GRE readout simulated on the prepared magnetisation.

The quantified CBF of pure GM / WM voxels must match the truth within 5 % (median); what
remains is the readout's point-spread function (Gibbs ringing of the 32² Cartesian image mixes
neighbouring tissues with different ΔM/M0 into each voxel).
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mr0core.jobs import build_demo_flash
from mr0core.perfusion.dro import (
    DroError,
    GroundTruth,
    acquisition_affine,
    generate,
    load_params,
    resample,
)
from mr0core.perfusion.quantify import quantify

N = 32
GRID = {"acquisition_matrix": [N, N, 1], "fov_mm": [220.0, 220.0, 5.0]}


@pytest.fixture(scope="module")
def readout(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "gre32.seq"
    build_demo_flash(N, 0.22).write(str(path))
    return str(path)


def test_pdg_pcasl_cbf_within_five_percent(tmp_path, readout):
    asl = {"kind": "asl", "name": "pcasl", "engine": "pdg", "seq": readout,
           "gkm_model": "whitepaper", **GRID}  # fmt: skip
    params = {"hires_ground_truth": False, "pipelines": [asl]}
    generate(params, tmp_path / "out")
    perf = tmp_path / "out" / "sub-001" / "perf"
    series = nib.load(perf / "sub-001_acq-pcasl_asl.nii.gz").get_fdata()
    m0 = nib.load(perf / "sub-001_acq-pcasl_m0scan.nii.gz").get_fdata()
    side = json.loads((perf / "sub-001_acq-pcasl_asl.json").read_text())
    assert side["Simulation"]["Engine"] == "pdg"
    assert side["Simulation"]["ReadoutSequence"] == "gre32.seq"
    assert side["MRAcquisitionType"] == "2D"
    cbf = quantify(series[..., 0] - series[..., 1], m0, label_type="pcasl", t1_blood=1.65,
                   label_efficiency=0.85, post_labeling_delay=1.8, label_duration=1.8)  # fmt: skip
    p = load_params(params)["pipelines"][0]
    gt = GroundTruth.brain("3T")
    for label, value in ((1, 60.0), (2, 20.0)):
        mask = (gt.seg == label).astype(np.float32)
        pure = resample(mask, gt.affine, acquisition_affine(p), (N, N, 1), p["rotation"][0],
                        p["translation"][0]) > 0.9999  # fmt: skip
        assert pure.sum() > 50
        assert np.median(cbf[pure]) == pytest.approx(value, rel=0.05)
    # negative control: the label volume really carries the deficit (ΔM ≈ 1 % of M0 in GM)
    assert 0.003 < np.median((series[..., 0] - series[..., 1])[m0 > 0.5 * m0.max()] /
                             m0[m0 > 0.5 * m0.max()]) < 0.03  # fmt: skip


def test_pdg_matrix_mismatch_is_named(tmp_path, readout):
    bad = {"kind": "structural", "name": "t1w", "engine": "pdg", "seq": readout,
           "acquisition_matrix": [16, 16, 1], "fov_mm": [220.0, 220.0, 5.0]}  # fmt: skip
    with pytest.raises(DroError, match="acquisition matrix"):
        generate({"hires_ground_truth": False, "pipelines": [bad]}, tmp_path / "out")
    too_many = {**bad, "acquisition_matrix": [N, N, 300]}
    with pytest.raises(DroError, match="at most"):
        generate({"hires_ground_truth": False, "pipelines": [too_many]}, tmp_path / "out2")

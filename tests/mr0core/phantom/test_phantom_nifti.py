"""The NIfTI phantom specification v1: config classes, TissueDict load/save, orientation, twins."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from nifti_phantoms import SHAPE, SPEC_EXAMPLE, nifti_affine, save_nifti

from mr0core.phantom import (
    NiftiMapping,
    NiftiPhantom,
    NiftiRef,
    NiftiTissue,
    PhantomError,
    PhantomSystem,
    PhantomUnits,
    TissueDict,
)


def _spec_phantom(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    save_nifti(tmp_path / "subj42.nii.gz", rng.random((*SHAPE, 5)).astype(np.float32))
    save_nifti(tmp_path / "subj42_dB0.nii.gz", rng.normal(0, 20, (*SHAPE, 1)).astype(np.float32))
    save_nifti(
        tmp_path / "subj42_B1+.nii.gz", rng.uniform(0.8, 1.2, (*SHAPE, 8)).astype(np.float32)
    )
    path = tmp_path / "subj42-3T.json"
    path.write_text(SPEC_EXAMPLE)
    return path


def test_spec_example_loads(tmp_path: Path) -> None:
    path = _spec_phantom(tmp_path)
    tissues = TissueDict.load(path)
    assert list(tissues) == ["gm", "wm", "fat"]
    assert tissues.system.B0 == 3.0
    assert tissues.system.gyro == 42.5764
    density = nib.load(tmp_path / "subj42.nii.gz").get_fdata()
    db0 = nib.load(tmp_path / "subj42_dB0.nii.gz").get_fdata()[..., 0]
    b1 = nib.load(tmp_path / "subj42_B1+.nii.gz").get_fdata()
    gm, wm, fat = tissues["gm"], tissues["wm"], tissues["fat"]
    np.testing.assert_allclose(gm.PD.numpy(), density[..., 0], rtol=1e-6)
    np.testing.assert_allclose(fat.PD.numpy(), density[..., 4], rtol=1e-6)
    assert torch.all(gm.T1 == 1.56)
    assert torch.all(wm.T1 == 0.83)
    assert torch.all(gm.T2dash == torch.tensor(0.32))
    assert torch.all(torch.tensor(0.83) == gm.D)
    # defaults of the specification
    assert torch.all(torch.isinf(wm.T2))
    assert torch.all(torch.isinf(fat.T1))
    assert torch.all(wm.D == 0)
    assert torch.all(fat.coil_sens == 1)
    assert gm.B1.shape == (8, *SHAPE)
    assert wm.B1.shape == (1, *SHAPE)
    np.testing.assert_allclose(gm.B1[5].real.numpy(), b1[..., 5], rtol=1e-6)
    np.testing.assert_allclose(wm.B0.numpy(), db0, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fat.B0.numpy(), db0 - 420, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(gm.size, np.array(SHAPE) * 2e-3, rtol=1e-6)


def test_config_round_trip(tmp_path: Path) -> None:
    config = NiftiPhantom.from_dict(json.loads(SPEC_EXAMPLE))
    assert config.to_dict() == NiftiPhantom.from_dict(config.to_dict()).to_dict()
    config.save(tmp_path / "c.json")
    again = NiftiPhantom.load(tmp_path / "c.json")
    assert again == config
    # the JSON written is standard (no Infinity), and omits defaults
    text = (tmp_path / "c.json").read_text()
    assert "Infinity" not in text
    assert json.loads(text)["tissues"]["wm"] == {
        "density": "subj42.nii.gz[1]",
        "T1": 0.83,
        "dB0": "subj42_dB0.nii.gz[0]",
    }
    assert config.tissues["fat"].dB0 == NiftiMapping(NiftiRef("subj42_dB0.nii.gz", 0), "x - 420")
    assert NiftiPhantom.file_type == "nifti_phantom_v1"
    assert PhantomUnits.default().to_dict()["T2'"] == "s"
    assert PhantomSystem.from_dict({}).to_dict() == {"gyro": 42.5764, "B0": 3.0}
    assert NiftiTissue.default(NiftiRef("a.nii", 0)).B1_rx == [1.0]


def test_tissue_dict_save_load_round_trip(tmp_path: Path) -> None:
    tissues = TissueDict.load(_spec_phantom(tmp_path))
    tissues["wm"].T2 = torch.full(SHAPE, 0.07)
    tissues["gm"].coil_sens = torch.polar(torch.ones(2, *SHAPE), torch.rand(2, *SHAPE))
    out = tmp_path / "out" / "copy-7T.json"
    config = tissues.save(out, B0=7.0)
    assert out.is_file()
    assert (out.parent / "copy.nii.gz").is_file()
    assert config.system.B0 == 7.0
    loaded = TissueDict.load(out)
    assert loaded.system.B0 == 7.0
    assert list(loaded) == list(tissues)
    for name, t in tissues.items():
        u = loaded[name]
        for attr in ("PD", "T1", "T2", "T2dash", "D", "B0", "B1", "coil_sens", "size"):
            torch.testing.assert_close(getattr(u, attr), getattr(t, attr), msg=f"{name}.{attr}")
        np.testing.assert_allclose(u.affine, t.affine, atol=1e-6)
    saved = json.loads(out.read_text())
    # constants stay numbers, shared maps are shared
    assert saved["tissues"]["gm"]["T1"] == 1.56
    assert saved["tissues"]["wm"]["dB0"] == saved["tissues"]["gm"]["dB0"]
    img = nib.load(out.parent / "copy.nii.gz")
    assert int(img.header["sform_code"]) == 2
    assert int(img.header["qform_code"]) == 0
    assert img.shape == (*SHAPE, 3)


def _minimal(tmp_path: Path, tissues: dict) -> Path:
    config = json.loads(SPEC_EXAMPLE)
    config["tissues"] = tissues
    path = tmp_path / "p.json"
    path.write_text(json.dumps(config))
    return path


def test_errors(tmp_path: Path) -> None:
    _spec_phantom(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.nii\.gz"):
        TissueDict.load(_minimal(tmp_path, {"a": {"density": "missing.nii.gz[0]"}}))
    with pytest.raises(PhantomError, match=r"index \[7\] out of range"):
        TissueDict.load(_minimal(tmp_path, {"a": {"density": "subj42.nii.gz[7]"}}))
    for bad in ("subj42.nii.gz[x]", "subj42.nii.gz[-1]", "subj42.nii.gz", "subj42.nii.gz[1][2]"):
        with pytest.raises(PhantomError, match=r"reference|index"):
            NiftiPhantom.load(_minimal(tmp_path, {"a": {"density": bad}}))
    for bad in ("../subj42.nii.gz[0]", "/etc/passwd.nii[0]", "sub/x.nii[0]", "x.txt[0]"):
        with pytest.raises(PhantomError, match="file name"):
            NiftiPhantom.load(_minimal(tmp_path, {"a": {"density": bad}}))
    with pytest.raises(PhantomError, match='no "density"'):
        NiftiPhantom.load(_minimal(tmp_path, {"a": {"T1": 1.0}}))
    with pytest.raises(PhantomError, match="density must come from a NIfTI"):
        NiftiPhantom.load(_minimal(tmp_path, {"a": {"density": 1.0}}))
    config = json.loads(SPEC_EXAMPLE)
    config["units"]["T1"] = "ms"
    (tmp_path / "u.json").write_text(json.dumps(config))
    with pytest.raises(PhantomError, match=r"unit of \"T1\" is 'ms'"):
        NiftiPhantom.load(tmp_path / "u.json")
    config = json.loads(SPEC_EXAMPLE)
    config["file_type"] = "nifti_phantom_v2"
    (tmp_path / "f.json").write_text(json.dumps(config))
    with pytest.raises(PhantomError, match='unknown "file_type"'):
        NiftiPhantom.load(tmp_path / "f.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PhantomError, match="not valid JSON"):
        NiftiPhantom.load(tmp_path / "bad.json")
    with pytest.raises(PhantomError, match="mapping function"):
        NiftiPhantom.load(
            _minimal(tmp_path, {"a": {"density": {"file": "subj42.nii.gz[0]",
                                                   "func": "__import__('os')"}}})
        )  # fmt: skip
    # data that is not 4-D
    save_nifti(tmp_path / "three_d.nii.gz", np.ones(SHAPE, np.float32))
    with pytest.raises(PhantomError, match="4-D"):
        TissueDict.load(_minimal(tmp_path, {"a": {"density": "three_d.nii.gz[0]"}}))
    # shapes or affines that differ between files
    save_nifti(tmp_path / "other_shape.nii.gz", np.ones((6, 5, 3, 1), np.float32))
    with pytest.raises(PhantomError, match="grid"):
        TissueDict.load(_minimal(tmp_path, {"a": {"density": "subj42.nii.gz[0]",
                                                  "T1": "other_shape.nii.gz[0]"}}))  # fmt: skip
    save_nifti(
        tmp_path / "other_affine.nii.gz", np.ones((*SHAPE, 1), np.float32), nifti_affine(vox=3.0)
    )
    with pytest.raises(PhantomError, match="affine"):
        TissueDict.load(_minimal(tmp_path, {"a": {"density": "subj42.nii.gz[0]",
                                                  "T1": "other_affine.nii.gz[0]"}}))  # fmt: skip


def test_marker_voxel_position_and_flipped_permuted_affines(tmp_path: Path) -> None:
    """A voxel at a known RAS+ position lands at that voxel_pos, however the file is stored."""
    shape = (8, 6, 4)
    vox = 2.0
    data = np.zeros((*shape, 1), np.float32)
    marker = (6, 1, 3)  # RAS+ index
    data[marker] = 1.0
    ras_affine = nifti_affine(shape, vox)
    expected = (ras_affine @ np.array([*marker, 1.0]))[:3] / 1000.0  # m
    variants = {"ras": (data, ras_affine)}
    # flipped x (stored L->R): index i holds RAS index 7-i
    flip = np.eye(4)
    flip[0, 0], flip[0, 3] = -1, shape[0] - 1
    variants["flip"] = (data[::-1].copy(), ras_affine @ flip)
    # permuted axes (stored as z, x, y)
    perm = np.zeros((4, 4))
    perm[0, 1] = perm[1, 2] = perm[2, 0] = perm[3, 3] = 1  # storage (k, i, j) -> RAS (i, j, k)
    variants["perm"] = (np.transpose(data, (2, 0, 1, 3)).copy(), ras_affine @ perm)
    for name, (d, aff) in variants.items():
        save_nifti(tmp_path / f"{name}.nii.gz", d, aff)
        path = _minimal(tmp_path, {"t": {"density": f"{name}.nii.gz[0]"}})
        t = TissueDict.load(path)["t"]
        assert t.shape == shape, name
        sim = t.build()
        assert sim.voxel_count == 1, name
        np.testing.assert_allclose(sim.voxel_pos[0].numpy(), expected, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(t.affine, ras_affine, atol=1e-6, err_msg=name)


def test_partial_volume_build_and_combine(tmp_path: Path) -> None:
    tissues = TissueDict.load(_spec_phantom(tmp_path))
    data = tissues.build()
    n = {k: int((v.PD > 1e-6).sum()) for k, v in tissues.items()}
    assert data.voxel_count == sum(n.values())
    for name in tissues:
        m = data.tissue_masks[name]
        assert int(m.sum()) == n[name]
    # every tissue's voxels carry that tissue's own parameters
    assert torch.all(data.T1[data.tissue_masks["gm"]] == 1.56)
    assert torch.all(data.T1[data.tissue_masks["wm"]] == 0.83)
    # single-channel tissues are broadcast to the 8 tx channels of gm
    assert data.B1.shape == (8, data.voxel_count)
    rec = data.recover()
    assert isinstance(rec, TissueDict)
    assert list(rec) == list(tissues)
    torch.testing.assert_close(rec["wm"].T1[tissues["wm"].PD > 1e-6], torch.full((n["wm"],), 0.83))
    tissues.pop("gm")
    combined = tissues.combine()
    torch.testing.assert_close(combined.PD, tissues["wm"].PD + tissues["fat"].PD)
    # T1 of fat is inf (default); a voxel with only wm keeps wm's T1
    only_wm = (tissues["fat"].PD == 0) & (tissues["wm"].PD > 0)
    if only_wm.any():
        assert torch.all(combined.T1[only_wm] == 0.83)
    w, f = tissues["wm"].PD, tissues["fat"].PD
    expected_b0 = (w * tissues["wm"].B0 + f * tissues["fat"].B0) / (w + f)
    mask = (w + f) > 0
    torch.testing.assert_close(combined.B0[mask], expected_b0[mask], rtol=1e-5, atol=1e-3)
    assert set(combined.tissue_masks) == {"wm", "fat"}


def test_interpolate_and_slices(tmp_path: Path) -> None:
    tissues = TissueDict.load(_spec_phantom(tmp_path))
    small = tissues.interpolate(3, 3, 4).slices([1, 2])
    assert all(t.shape == (3, 3, 2) for t in small.values())
    assert small.system is tissues.system


# ---------------------------------------------------------------- quantitative maps to a twin


def _maps_dir(tmp_path: Path, t1_ms: bool = True) -> Path:
    d = tmp_path / "anat"
    d.mkdir()
    rng = np.random.default_rng(3)
    pd = rng.uniform(500, 1000, SHAPE).astype(np.float32)
    pd[0] = 0  # background
    t1 = rng.uniform(0.8, 1.6, SHAPE).astype(np.float32)
    save_nifti(d / "sub-01_M0map.nii.gz", pd)
    save_nifti(d / "sub-01_T1map.nii.gz", t1 * (1000 if t1_ms else 1))
    save_nifti(d / "sub-01_T2map.nii.gz", np.full(SHAPE, 0.08, np.float32))
    save_nifti(d / "sub-01_T2starmap.nii.gz", np.full(SHAPE, 0.05, np.float32))
    (d / "sub-01_T2map.json").write_text(json.dumps({"Units": "s", "MagneticFieldStrength": 1.5}))
    save_nifti(d / "sub-01_TB1map.nii.gz", np.full(SHAPE, 95.0, np.float32))
    (d / "sub-01_TB1map.json").write_text(json.dumps({"Units": "percent"}))
    np.save(d / "t1_expected.npy", t1)
    return d


def test_from_maps_bids_units_and_t2dash(tmp_path: Path) -> None:
    d = _maps_dir(tmp_path)
    with pytest.warns(UserWarning, match="milliseconds"):
        twin = TissueDict.from_maps(d)
    t = twin["subject"]
    t1 = np.load(d / "t1_expected.npy")
    inside = t.PD > 0
    assert not bool(inside[0].any())
    assert bool(inside[1:].all())
    np.testing.assert_allclose(t.T1[inside].numpy(), t1[1:].reshape(-1), rtol=1e-6)
    # 1/T2' = 1/T2* - 1/T2 = 1/0.05 - 1/0.08
    assert torch.allclose(t.T2dash[inside], torch.tensor(1 / (1 / 0.05 - 1 / 0.08)), rtol=1e-5)
    torch.testing.assert_close(t.B1[0].real[inside], torch.full((int(inside.sum()),), 0.95))
    assert twin.system.B0 == 1.5
    # PD is normalised (99.5th percentile = 1) and simulation input builds
    assert 0.9 < float(t.PD.max()) < 1.1
    assert twin.build().voxel_count == int(inside.sum())


def test_from_maps_seconds_no_warning_and_errors(tmp_path: Path) -> None:
    import warnings

    d = _maps_dir(tmp_path, t1_ms=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        twin = TissueDict.from_maps(d, field_strength=3.0)
    assert twin.system.B0 == 3.0
    (d / "sub-01_T2map.nii.gz").unlink()
    with pytest.raises(PhantomError, match="missing T2"):
        TissueDict.from_maps(d)
    save_nifti(d / "sub-01_T2map.nii.gz", np.full((3, 3, 3), 0.08, np.float32))
    with pytest.raises(PhantomError, match="grid"):
        TissueDict.from_maps(d)
    with pytest.raises(FileNotFoundError):
        TissueDict.from_maps(tmp_path / "nowhere")


def test_from_maps_arrays_need_size() -> None:
    pd = np.ones((4, 4, 1), np.float32)
    t = TissueDict.from_maps(PD=pd, T1=pd * 1.2, T2=pd * 0.1, size=[0.2, 0.2, 0.005])
    assert math.isclose(float(t["subject"].size[0]), 0.2, rel_tol=1e-6)
    with pytest.raises(PhantomError, match="size"):
        TissueDict.from_maps(PD=pd, T1=pd, T2=pd)

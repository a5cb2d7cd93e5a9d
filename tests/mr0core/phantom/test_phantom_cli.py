"""``mr0 phantom`` and ``mr0core.util.load_phantom``."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core.cli import main


def test_phantom_brain_writes_a_loadable_spec_phantom(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "twin"
    assert main(["phantom", "brain", "--size", "48", "--coils", "4", "--out", str(out)]) == 0
    assert "brain-3T.json" in capsys.readouterr().out
    json_path = out / "brain-3T.json"
    config = json.loads(json_path.read_text())
    assert config["file_type"] == "nifti_phantom_v1"
    assert set(config["tissues"]) == {"gm", "wm", "csf"}
    assert config["system"] == {"gyro": 42.5764, "B0": 3.0}
    # smooth field maps shared by all tissues, four receive coils
    gm = config["tissues"]["gm"]
    assert gm["dB0"] == config["tissues"]["wm"]["dB0"]
    assert len(gm["B1-"]) == 4
    img = nib.load(out / "brain.nii.gz")
    assert img.shape == (48, 48, 1, 3)
    assert int(img.header["sform_code"]) == 2
    tissues = mr0.TissueDict.load(json_path)
    assert tissues["gm"].coil_sens.shape == (4, 48, 48, 1)
    assert float(tissues["csf"].T1.max()) > float(tissues["wm"].T1.max())
    data = tissues.build()
    assert data.voxel_count > 1000
    # partial volume: fractions of one voxel never exceed 1
    total = sum(t.PD for t in tissues.values())
    assert float(total.max()) <= 1.0 + 1e-5
    # a second run refuses to overwrite, --force does
    assert main(["phantom", "brain", "--size", "48", "--out", str(out)]) == 2
    assert main(["phantom", "brain", "--size", "48", "--out", str(out), "--force"]) == 0


def test_phantom_field_and_shepp_logan(tmp_path: Path) -> None:
    out15, out3 = str(tmp_path / "b15"), str(tmp_path / "b3")
    assert main(["phantom", "brain", "--size", "32", "--field", "1.5T", "--out", out15]) == 0
    t15 = mr0.TissueDict.load(tmp_path / "b15" / "brain-1.5T.json")
    assert t15.system.B0 == 1.5
    assert main(["phantom", "brain", "--size", "32", "--out", out3]) == 0
    t3 = mr0.TissueDict.load(tmp_path / "b3" / "brain-3T.json")
    # T1 of brain tissue grows with field strength
    assert float(t3["wm"].T1.max()) > float(t15["wm"].T1.max())
    assert main(["phantom", "shepp-logan", "--size", "32", "--out", str(tmp_path / "sl")]) == 0
    sl = mr0.TissueDict.load(tmp_path / "sl" / "shepp_logan-3T.json")
    assert len(sl) >= 4
    assert sl.build().voxel_count > 100


@pytest.mark.parametrize(
    "args",
    [["--size", "2"], ["--field", "9.4T"], ["--coils", "0"], ["--slices", "0"]],
)
def test_phantom_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    assert main(["phantom", "brain", *args, "--out", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


def test_load_phantom_builtin_brain() -> None:
    p = mr0.util.load_phantom(size=(32, 32), url="builtin:brain")
    assert isinstance(p, mr0.VoxelGridPhantom)
    assert p.shape == (32, 32, 1)
    assert float(p.PD.max()) > 0.5
    assert set(p.tissue_masks) == {"gm", "wm", "csf"}
    data = p.build()
    assert data.voxel_count > 300


def test_load_phantom_modifiers() -> None:
    brain = "builtin:brain"
    base = mr0.util.load_phantom(size=(32, 32), url=brain)
    mod = mr0.util.load_phantom(
        size=(32, 32), url=brain, dB0_fB0=(5, 2), dB1_fB1=(0.1, 3),
        B0_polynomial=(1, 0, 0, 0, 0, 0),
    )  # fmt: skip
    torch.testing.assert_close(mod.B0, (base.B0 + 5) * 2 + 1)
    torch.testing.assert_close(mod.B1, (base.B1 + 0.1) * 3)
    lin = mr0.util.load_phantom(size=(32, 32), url=brain, B0_polynomial=(0, 10, 0, 0, 0, 0))
    dx = (lin.B0 - base.B0)[:, 0, 0]
    # x runs from -1 to 1 over the field of view: the left edge is -10 Hz, the centre 0
    assert float(dx[0]) == pytest.approx(-10, abs=1e-4)
    assert float(dx[16]) == pytest.approx(0, abs=1e-4)
    with pytest.raises(ValueError, match="6 finite"):
        mr0.util.load_phantom(size=(8, 8), url=brain, B0_polynomial=(1, 2))
    # downloads: tests/mr0core/test_util_load_phantom.py
    with pytest.raises(ValueError, match="http"):
        mr0.util.load_phantom(url="ftp://example.org/x.mat")
    with pytest.raises(FileNotFoundError):
        mr0.util.load_phantom(url="/nonexistent/x.mat")


def test_load_phantom_local_files(tmp_path: Path) -> None:
    maps = {
        k: np.full((6, 6, 1), v, np.float32)
        for k, v in [("PD_map", 1), ("T1_map", 1), ("T2_map", 0.1), ("T2dash_map", 0.05),
                     ("D_map", 1)]
    }  # fmt: skip
    np.savez(tmp_path / "p.npz", **maps)
    p = mr0.util.load_phantom(url=tmp_path / "p.npz")
    assert p.shape == (6, 6, 1)
    q = mr0.util.load_phantom((4, 4), url=str(tmp_path / "p.npz"))
    assert q.shape == (4, 4, 1)

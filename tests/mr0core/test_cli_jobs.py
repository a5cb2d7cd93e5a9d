"""``mr0 demo``, ``mr0 simulate`` and ``mr0 recon``: outputs, round trips, geometry, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CORPUS

import mr0core as mr0
from mr0core.cli import main
from mr0core.jobs import build_demo_flash, image_volume
from mr0core.recon import KData, reconstruct


@pytest.fixture(scope="module")
def demo_seq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seq") / "flash32.seq"
    build_demo_flash(32).write(str(path))
    return path


def test_demo_writes_image_sidecar_png_and_ground_truth(tmp_path: Path) -> None:
    assert main(["demo", "--out", str(tmp_path), "--size", "32"]) == 0
    img = nib.load(tmp_path / "demo_flash.nii.gz")
    assert img.shape == (32, 32, 1)
    side = json.loads((tmp_path / "demo_flash.json").read_text())
    assert side["EchoTime"] == pytest.approx(5e-3)
    assert side["RepetitionTime"] == pytest.approx(12e-3)
    assert side["FlipAngle"] == pytest.approx(15.0)
    assert side["Simulation"]["Phantom"] == "builtin:brain"
    assert (tmp_path / "demo_flash.png").stat().st_size > 0
    assert len(list((tmp_path / "ground_truth").glob("*_T1map.nii.gz"))) == 1
    # the image is the brain: correlated with its PD map on the same grid
    pd = nib.load(next((tmp_path / "ground_truth").glob("*_PDmap.nii.gz"))).get_fdata()[..., 0]
    corr = np.corrcoef(img.get_fdata()[..., 0].ravel(), pd.ravel())[0, 1]
    assert corr > 0.9


def test_simulate_npy_mrd_and_recon_round_trip(tmp_path: Path, demo_seq: Path) -> None:
    npy, mrd = tmp_path / "s.npy", tmp_path / "s.mrd"
    nii, png = tmp_path / "sim.nii.gz", tmp_path / "sim.png"
    args = ["simulate", str(demo_seq), "--size", "32", "--coils", "2"]
    assert main([*args, "--out", str(npy), "--recon", str(nii), "--png", str(png)]) == 0
    assert main([*args, "--out", str(mrd)]) == 0
    signal = np.load(npy)
    assert signal.dtype == np.complex64
    assert signal.shape == (32 * 32, 2)
    assert png.stat().st_size > 0
    assert (tmp_path / "sim_ground_truth").is_dir()
    # mr0 recon of the written MRD equals the in-memory reconstruction of the same signal
    out = tmp_path / "recon.nii.gz"
    assert main(["recon", str(mrd), "--out", str(out)]) == 0
    seq = mr0.Sequence.import_file(demo_seq)
    ref = image_volume(reconstruct(KData.from_sequence(torch.from_numpy(signal), seq)).image)
    got = nib.load(out).get_fdata()
    err = np.linalg.norm(got - ref.numpy()) / np.linalg.norm(ref.numpy())
    assert err < 1e-4
    # same grid; the simulated image sits at the phantom's isocentre, the raw file's at 0
    np.testing.assert_allclose(nib.load(out).affine[:3, :3], nib.load(nii).affine[:3, :3])


def test_nifti_marker_lands_at_its_world_position(tmp_path: Path, demo_seq: Path) -> None:
    """A bright voxel in the phantom appears at the same RAS+ position in the image."""
    from mr0core.phantom.builtin_phantoms import brain_tissues

    tissues = brain_tissues(size=32)
    grid = tissues.combine()
    marker = (22, 9, 0)  # off-centre in x and y, so a flip or transpose would show
    pd = grid.PD.clone()
    pd[marker] = 6 * float(pd.max())
    grid.PD = pd
    signal = mr0.execute_graph(
        mr0.compute_graph(mr0.Sequence.import_file(demo_seq), grid.build()),
        mr0.Sequence.import_file(demo_seq), grid.build(), print_progress=False,
    )  # fmt: skip
    rec = reconstruct(KData.from_sequence(signal, mr0.Sequence.import_file(demo_seq)))
    from mr0core.jobs import phantom_isocentre_m, write_image

    path = tmp_path / "marker.nii.gz"
    write_image(rec, path, centre_m=phantom_isocentre_m(grid))
    img = nib.load(path)
    peak = np.unravel_index(np.argmax(img.get_fdata()), img.shape)
    world_img = img.affine @ np.array([*peak, 1.0])
    phantom_affine = np.asarray(grid.affine)
    world_marker = phantom_affine @ np.array([*marker, 1.0])
    assert np.allclose(world_img[:2], world_marker[:2], atol=1e-3)  # mm


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "missing.seq", "--out", "{tmp}/s.npy"], "not found"),
        (["simulate", "{broken}", "--out", "{tmp}/s.npy"], "broken.seq"),
        (["simulate", "{seq}", "--phantom", "{tmp}/nope.json", "--out", "{tmp}/s.npy"], "nope"),
        (["simulate", "{seq}", "--out", "{tmp}/no/such/dir/s.npy"], "does not exist"),
        (["simulate", "{seq}", "--out", "{tmp}/s.txt"], ".npy"),
        (["recon", "{tmp}/missing.mrd", "--out", "{tmp}/x.nii.gz"], "not found"),
        (["recon", "{seq}", "--out", "{tmp}/x.nii.gz"], ""),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    broken = tmp_path / "broken.seq"
    broken.write_text("[VERSION]\nmajor 1\nminor 4\n[BLOCKS]\n1 1 7 0 0 0 0 0\n")  # no RF 7
    seq = CORPUS / "write_gre.seq"
    filled = [a.format(tmp=tmp_path, broken=broken, seq=seq) for a in args]
    assert main(filled) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mr0 {args[0]}: error:")
    assert message in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        main(["--debug", "recon", str(tmp_path / "missing.mrd"), "--out", str(tmp_path / "x.nii")])

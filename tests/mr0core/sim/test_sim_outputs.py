"""The one writer of ``mr0 simulate`` and ``mr0 demo`` (``mr0core.jobs.write_simulation``)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mr0core.cli import main
from mr0core.jobs import (
    SimSettings,
    build_demo_flash,
    load_job_phantom,
    run_simulation,
    write_simulation,
)
from mr0core.sequence import Sequence


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def flash16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seq") / "flash16.seq"
    build_demo_flash(16).write(str(path))
    return path


def test_writer_writes_signal_image_sidecar_png_privately(tmp_path: Path, flash16: Path) -> None:
    seq = Sequence.import_file(flash16)
    phantom, name = load_job_phantom("brain", 16)
    settings = SimSettings()
    signal = run_simulation(seq, phantom, settings, noise=0.01, seed=2, progress=False)
    files = write_simulation(
        signal, seq, phantom, name, settings, signal_path=tmp_path / "s.npy",
        image_path=tmp_path / "img.nii.gz", png_path=tmp_path / "img.png", noise=0.01, seed=2,
    )  # fmt: skip
    names = [f.name for f in files]
    assert names == ["s.npy", "img.nii.gz", "img.json", "img.png"]
    assert all(_mode(f) == 0o600 for f in files)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), signal.numpy())
    assert nib.load(tmp_path / "img.nii.gz").shape == (16, 16, 1)
    side = json.loads((tmp_path / "img.json").read_text())
    assert side["Simulation"]["Phantom"] == "builtin:brain"
    assert side["MagneticFieldStrength"] == pytest.approx(phantom.system.B0)
    with pytest.raises(ValueError, match=r"'s\.txt'"):
        write_simulation(signal, seq, phantom, name, settings, signal_path=tmp_path / "s.txt")


def test_simulate_and_demo_outputs_are_private(tmp_path: Path, flash16: Path) -> None:
    npy, png = tmp_path / "sim.npy", tmp_path / "sim.png"
    args = ["simulate", str(flash16), "--size", "16", "--out", str(npy), "--png", str(png)]
    assert main(args) == 0
    assert _mode(npy) == 0o600
    assert _mode(png) == 0o600
    demo = tmp_path / "demo"
    assert main(["demo", "--out", str(demo), "--size", "32"]) == 0
    for name in ("demo_flash_signal.npy", "demo_flash.nii.gz", "demo_flash.json", "demo_flash.png"):
        assert _mode(demo / name) == 0o600, name


def test_simulate_records_the_refined_settings(
    tmp_path: Path, flash16: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sidecar carries the settings the simulation finally used, not the mapped ones."""
    import dataclasses

    import mr0core.jobs as jobs

    def refining(seq, phantom, settings, *args, on_refine=None, **kwargs):  # type: ignore[no-untyped-def]
        assert settings.accuracy == 1e-2  # --accuracy alone: refinement on
        on_refine(dataclasses.replace(settings, max_states=12345, min_latent=1e-6))
        return run_simulation(seq, phantom, settings, *args, **kwargs)

    monkeypatch.setattr(jobs, "run_simulation", refining)  # what `mr0 simulate` imports
    out, image = tmp_path / "s.npy", tmp_path / "img.nii.gz"
    args = ["simulate", str(flash16), "--size", "16", "--out", str(out), "--recon", str(image),
            "--accuracy", "1e-2"]  # fmt: skip
    assert main(args) == 0
    recorded = json.loads((tmp_path / "img.json").read_text())["Simulation"]
    assert recorded["max_states"] == 12345
    assert recorded["min_latent"] == 1e-6
    assert recorded["accuracy"] == 1e-2

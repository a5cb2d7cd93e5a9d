"""``mr0 rf-profile``: the simulated slice profile of a Pulseq pulse beside its Fourier prediction.

The sequences are built here with PyPulseq (Hamming-apodised sinc, time–bandwidth product 4, with
its slice-select gradient). Physics checked: the excited slice is as thick as PyPulseq made it and
lies where its frequency offset puts it; in the small-tip limit the Bloch simulation equals the
Fourier transform of the waveform; a 180° pulse inverts the centre of its slice fully.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest

from mr0core.cli import fwhm, main

THICK = 5e-3  # m
OFFSET = 4e-3  # m, the slice centre


def _system() -> pp.Opts:
    return pp.Opts(max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s",
                   rf_ringdown_time=20e-6, rf_dead_time=100e-6)  # fmt: skip


def _write(path: Path, flip_deg: float, use: str = "excitation", selective: bool = True) -> Path:
    """Blocks: 1 delay, 2 the pulse (with its slice gradient), 3 the rephaser, 4 a delay."""
    system = _system()
    seq = pp.Sequence(system)
    if selective:
        rf, gz, gzr = pp.make_sinc_pulse(
            flip_angle=math.radians(flip_deg), duration=2e-3, slice_thickness=THICK,
            apodization=0.5, time_bw_product=4, system=system, return_gz=True, use=use,
            delay=system.rf_dead_time,
        )  # fmt: skip
        rf.freq_offset = gz.amplitude * OFFSET
        blocks = [(rf, gz), (gzr,)]
    else:
        rf = pp.make_block_pulse(math.radians(flip_deg), duration=1e-3, system=system,
                                 delay=system.rf_dead_time, use=use)  # fmt: skip
        blocks = [(rf,), (pp.make_delay(1e-3),)]
    seq.add_block(pp.make_delay(1e-3))
    for b in blocks:
        seq.add_block(*b)
    seq.add_block(pp.make_delay(5e-3))
    seq.write(str(path))
    return path


def _csv(path: Path) -> dict[str, np.ndarray]:
    table = np.genfromtxt(path, delimiter=",", names=True)
    return {name: table[name] for name in table.dtype.names}


def test_fwhm_of_a_triangle() -> None:
    z = np.linspace(-2, 2, 401)
    assert fwhm(z, np.clip(1 - np.abs(z), 0, None)) == pytest.approx(1.0, abs=1e-9)
    assert math.isnan(fwhm(z, np.ones_like(z)))  # never falls to half


def test_small_tip_excitation_matches_thickness_and_fourier(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "sinc30.seq", 30.0)
    png, csv = tmp_path / "profile.png", tmp_path / "profile.csv"
    assert main(["rf-profile", str(seq), "--block", "2", "--png", str(png), "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "FWHM simulated" in out
    assert "small-tip Fourier" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = _csv(csv)
    z = p["z_mm"]
    peak = p["mxy"].max()
    # the slice: PyPulseq's thickness, at the offset its frequency selects, flipped by 30°
    assert fwhm(z, p["mxy"]) == pytest.approx(THICK * 1e3, rel=0.10)
    assert z[np.argmax(p["mxy"])] == pytest.approx(OFFSET * 1e3, abs=0.1)
    assert peak == pytest.approx(math.sin(math.radians(30)), rel=0.01)
    # the default range: the slice centre +- 2 slice thicknesses
    assert z[0] == pytest.approx((OFFSET - 2 * THICK) * 1e3, abs=0.5)
    assert z[-1] == pytest.approx((OFFSET + 2 * THICK) * 1e3, abs=0.5)
    # small tip: the Bloch profile and the Fourier prediction agree within a few % of the peak
    assert np.max(np.abs(p["mxy"] - p["mxy_fourier"])) < 0.03 * peak
    assert fwhm(z, p["mxy_fourier"]) == pytest.approx(fwhm(z, p["mxy"]), rel=0.03)
    # Mz and |Mxy| of one rotation from Mz = 1
    np.testing.assert_allclose(p["mxy"] ** 2 + p["mz"] ** 2, 1.0, atol=1e-3)  # float32 product


def test_the_small_tip_limit_is_the_fourier_transform(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "sinc30.seq", 30.0)
    csv = tmp_path / "p.csv"
    argv = ["rf-profile", str(seq), "--block", "2", "--flip-scale", "0.05", "--range", "-6",
            "14", "--points", "201", "--csv", str(csv)]  # fmt: skip
    assert main(argv) == 0
    assert "1.5 deg" in capsys.readouterr().out
    p = _csv(csv)
    assert p["z_mm"][0] == pytest.approx(-6)
    assert p["z_mm"][-1] == pytest.approx(14)
    assert len(p["z_mm"]) == 201
    peak = p["mxy"].max()
    assert peak == pytest.approx(math.sin(math.radians(1.5)), rel=1e-3)
    assert np.max(np.abs(p["mxy"] - p["mxy_fourier"])) < 2e-3 * peak


def test_refocusing_pulse_inverts_its_slice_centre(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "sinc180.seq", 180.0, use="refocusing")
    csv = tmp_path / "p.csv"
    assert main(["rf-profile", str(seq), "--block", "2", "--csv", str(csv)]) == 0
    assert "refocusing (1-Mz)/2" in capsys.readouterr().out
    p = _csv(csv)
    centre = np.argmax(p["refocus"])
    assert p["z_mm"][centre] == pytest.approx(OFFSET * 1e3, abs=0.1)
    assert p["refocus"][centre] == pytest.approx(1.0, abs=1e-3)  # on resonance: 180° exactly
    assert p["mz"][centre] == pytest.approx(-1.0, abs=2e-3)
    # far outside the slice nothing happens
    assert np.max(p["refocus"][[0, -1]]) < 1e-3


def test_block_without_rf_is_a_clear_error(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "sinc30.seq", 30.0)
    png = tmp_path / "none.png"
    assert main(["rf-profile", str(seq), "--block", "3", "--png", str(png)]) == 2
    err = capsys.readouterr().err
    assert "block 3 has no RF pulse" in err
    assert "blocks with RF: 2" in err
    assert not png.exists()
    assert main(["rf-profile", str(seq), "--block", "17"]) == 2
    assert "no block 17" in capsys.readouterr().err


def test_non_selective_pulse_is_a_clear_error(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "hard.seq", 10.0, selective=False)
    assert main(["rf-profile", str(seq), "--block", "2"]) == 2
    assert "block 2: the RF pulse plays no gradient" in capsys.readouterr().err


def test_bad_options_are_refused(tmp_path, capsys) -> None:
    seq = _write(tmp_path / "sinc30.seq", 30.0)
    assert main(["rf-profile", str(seq), "--block", "2", "--range", "5", "1"]) == 2
    assert "--range" in capsys.readouterr().err
    assert main(["rf-profile", str(seq), "--block", "2", "--flip-scale", "0"]) == 2
    assert "--flip-scale" in capsys.readouterr().err
    assert main(["rf-profile", str(tmp_path / "absent.seq"), "--block", "2"]) == 2
    assert "not found" in capsys.readouterr().err

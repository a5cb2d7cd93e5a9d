"""``mr0 seq-info``: text and JSON summaries, clean errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS

from mr0core.cli import main


def test_seq_info_json_reports_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seq-info", str(CORPUS / "write_gre_label.seq"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == "1.5.0"
    assert info["adc_samples"] == 64 * 64
    assert info["repetitions"] == 65  # 64 excitations and the lead-in before the first
    assert info["rf_pulses"] == [
        {
            "usage": "EXCIT",
            "flip_angle_deg": pytest.approx(7.0, abs=0.01),
            "count": 64,
            "duration_us": pytest.approx(3000.0),
        }
    ]
    assert info["labels"]["LIN"] == [0, 63]
    lo, hi = info["kspace_extent"]["kx"]
    assert lo < 0 < hi
    assert hi == pytest.approx(-lo, rel=0.05)
    assert info["duration_s"] == pytest.approx(0.64, rel=1e-6)
    assert info["signature"] == "ok"


def test_seq_info_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seq-info", str(CORPUS / "write_tse.seq")]) == 0
    out = capsys.readouterr().out
    assert "Pulseq 1.5.0" in out
    assert "REFOC" in out
    assert "EXCIT" in out
    assert "ADC samples     4096" in out


def test_seq_info_old_format_decodes_ascii_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["seq-info", str(CORPUS / "simple_mprage120.seq"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == "1.2.0"
    assert info["name"] == "mprage"  # MATLAB wrote the name as character codes


def test_seq_info_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.seq"
    bad.write_text("[VERSION]\nmajor 1\nminor 9\n")
    assert main(["seq-info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.seq:1: unsupported Pulseq format version 1.9.0" in err
    assert main(["seq-info", str(tmp_path / "missing.seq")]) == 2


def test_console_script_is_installed() -> None:
    exe = shutil.which("mr0")
    cmd = [exe] if exe else [sys.executable, "-m", "mr0core.cli"]
    out = subprocess.run(
        [*cmd, "seq-info", str(CORPUS / "seq2.seq")], capture_output=True, text=True, check=True
    ).stdout
    assert "ADC samples     100" in out


def test_simulate_sub_slices_reach_the_shaped_simulation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    seq = str(CORPUS / "write_gre.seq")

    def signal(*extra: str) -> np.ndarray:
        out = tmp_path / f"s{len(extra)}{'_'.join(extra)}.npy"
        assert main(["simulate", seq, "--size", "8", "--rf-model", "shaped", *extra,
                     "--out", str(out)]) == 0  # fmt: skip
        return np.load(out)

    one, four = signal("--sub-slices", "1"), signal("--sub-slices", "4")
    assert np.linalg.norm(four - one) > 0.05 * np.linalg.norm(one)  # the slice profile counts
    assert main(["simulate", seq, "--size", "8", "--sub-slices", "4",
                 "--out", str(tmp_path / "x.npy")]) == 2  # fmt: skip
    assert "--sub-slices applies to --rf-model shaped" in capsys.readouterr().err

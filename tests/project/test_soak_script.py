"""scripts/soak_server.py: a short smoke run, and the judging of answers and memory.

The smoke run starts a real ``mr0-server`` (subprocess) and runs 4 clients for 3 s; the first
cycle of sessions (every kind at least once) always runs whole, whatever the length. The 10-minute
soak itself is run by hand (README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from conftest import REPO, SCRIPTS

sys.path.insert(0, str(SCRIPTS))
import soak_server as soak

SCRIPT = REPO / "scripts" / "soak_server.py"

HOSTILE = {"shapes", "adc", "repetitions", "header", "idle", "trickle", "deep_json", "big_int",
           "nan", "client_image", "framing"}  # fmt: skip
VALID = {"recon", "preview", "retrieve"}


def test_smoke_run(tmp_path):
    out = tmp_path / "soak.json"
    args = ["--clients", "4", "--seconds", "3", "--sample-s", "0.5", "--preamble-timeout", "2",
            "--rate-window", "1", "--trickle-s", "0.1", "--session-timeout", "60",
            "--json", str(out)]  # fmt: skip
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    res = json.loads(out.read_text())
    assert res["unexpected_count"] == 0, res["unexpected"]
    assert set(res["hostile"]) == HOSTILE
    assert set(res["valid"]) == VALID
    for name, row in {**res["hostile"], **res["valid"]}.items():
        assert row["sessions"] >= 1, name
        assert row["as_expected"] == row["sessions"], (name, row)
        assert row["p50_s"] is not None
    assert res["latency_valid"]["n"] >= 6  # a cycle holds each valid kind twice
    assert res["latency_valid"]["p50_s"] <= res["latency_valid"]["p99_s"]
    assert res["server"]["exit_status"] == 0
    assert res["server"]["crash_lines"] == []
    assert res["rss"]
    assert all(0 < s["server_mb"] < s["rss_mb"] and s["processes"] >= 2 for s in res["rss"])
    assert set(res["rss_by_minute"][0]) == {"minute", "max_mb", "last_mb", "server_last_mb"}
    assert res["rss_by_minute"][0]["minute"] == 0
    assert set(res["code"]) == {"commit", "dirty"}
    assert set(res["plateau"]) >= {"ok", "reason", "max_mb", "bound_mb"}
    assert {"nproc", "cpu", "load_before", "load_after"} <= set(res["machine"])
    # the exit status follows the verdicts (a 3 s run may not have plateaued yet)
    assert res["ok"] == (res["plateau"]["ok"] is not False)
    assert done.returncode == (0 if res["ok"] else 1), done.stdout[-2000:] + done.stderr[-2000:]
    assert "| minute | tree RSS max (MB) |" in done.stdout
    assert "soak: " in done.stdout  # progress lines


@pytest.mark.parametrize(
    "args",
    [["--port", "9002", "--keep"], ["--host", "x"], ["--server-pid", "1"], ["--clients", "0"],
     ["--minutes", "1", "--seconds", "2"], ["--port", "9002", "--rate-window", "1"],
     ["--kinds", "recon,nope"], ["--kinds", ","]],
)  # fmt: skip
def test_arguments_that_do_not_apply_are_refused(args, capsys):
    with pytest.raises(SystemExit) as info:
        soak.main(args)
    assert info.value.code == 2


def test_plateau_verdict():
    flat = [(float(t), 800 * soak.MB + (t % 3) * soak.MB) for t in range(30)]
    assert soak.plateau(flat, 1.1, 3000)["ok"] is True
    growing = [(float(t), (800 + 20 * t) * soak.MB) for t in range(30)]
    verdict = soak.plateau(growing, 1.1, 3000)
    assert verdict["ok"] is False
    assert "1.169x" in verdict["reason"]  # (800 + 20*29) / (800 + 20*19)
    assert soak.plateau(flat, 1.1, 700)["ok"] is False  # over the absolute bound
    assert soak.plateau(flat[:6], 1.1, 3000)["ok"] is None  # too few samples
    assert soak.plateau([], 1.1, 3000)["ok"] is None


def test_answers_are_judged():
    error = soak.Answer(texts=["ERROR: ... max_shape_samples=4194304"], closed=True)
    assert soak.expect_error(error, "max_shape_samples")[0]
    assert not soak.expect_error(error, "max_adc_samples")[0]  # the wrong bound
    assert not soak.expect_error(soak.Answer(texts=["ok"], closed=True))[0]  # no ERROR
    reset = soak.Answer(texts=["ERROR: x"], failure="ConnectionResetError: reset")
    assert not soak.expect_error(reset)[0]
    assert not soak.expect_error(soak.Answer(texts=["ERROR: x"]))[0]  # no close message
    ref = np.arange(16.0).reshape(4, 4)
    image = ismrmrd.Image.from_array(3 * ref.astype(np.float32))
    assert soak.expect_image(soak.Answer(images=[image], closed=True), ref)[0]
    flipped = ismrmrd.Image.from_array(ref[::-1].astype(np.float32))
    ok, detail = soak.expect_image(soak.Answer(images=[flipped], closed=True), ref)
    assert not ok
    assert "correlates" in detail
    assert not soak.expect_image(soak.Answer(closed=True), ref)[0]  # no image


def test_process_tree_is_found_through_proc():
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc")
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        pids = soak.tree_pids(os.getpid())
        assert pids[0] == os.getpid()
        assert child.pid in pids
        rss, count = soak.tree_rss(os.getpid())
        assert count >= 2
        assert rss > soak.tree_rss(child.pid)[0] > 0
    finally:
        child.stdin.close()
        child.wait(10)
    with pytest.raises(soak.ProcError):
        soak.tree_pids(child.pid)  # reaped: gone from /proc


def test_kind_names_are_the_kinds_built():
    assert tuple(soak.build_kinds()) == soak.KIND_NAMES
    assert set(soak.KIND_NAMES) == HOSTILE | VALID

"""Issue 21, item 1 "Measured": each hostile input grows mr0-server's process tree by <= 1 GB.

A real ``mr0-server`` runs in a subprocess (with its scheduler's worker processes). Each input
row of the issue's table that reaches the server is sent through ``mr0_preview`` (the ``.seq``
rows) or the ``default`` chain (the header row); the answer must be an ``ERROR`` text naming
the bound, then a close. (One refused session runs first, so that the worker's first-job
imports are not counted against a row.) Meanwhile :class:`soak_server.TreePeak` resets the peak RSS
(``VmHWM``) of every process of the tree and samples the tree every 50 ms: the growth is the sum
over processes of peak minus start, an upper bound of the tree's own growth.

Before the hardening these rows took +3.5 GB (shapes, ADC, repetitions) and +1.3 GB (header).
``test_tree_peak_sees_a_short_spike_in_a_grandchild`` is the measurement's negative control.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ismrmrd
import numpy as np
import pytest
from conftest import SCRIPTS

sys.path.insert(0, str(SCRIPTS))
import soak_server as soak

GB = 10**9
MB = 10**6
BOUND = 1 * GB
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    proc = soak.ServerProcess(tmp_path_factory.mktemp("mem"), [])
    try:
        proc.wait_ready(60)
        # a first job makes the worker import what jobs need; not counted against a row
        soak.converse(("127.0.0.1", proc.port), soak.preview_payload(soak.seq_adc()), TIMEOUT_S)
        yield proc
    finally:
        status = proc.stop()
    assert proc.crashes() == []
    assert status == 0, proc.log_tail()


def measured(server, payload: bytes, *words: str) -> int:
    """Send ``payload``; assert an ERROR naming one of ``words``; return the tree's growth."""
    start = time.monotonic()
    with soak.TreePeak(server.proc.pid, interval_s=0.05) as peak:
        answer = soak.converse(("127.0.0.1", server.port), payload, TIMEOUT_S)
    elapsed = time.monotonic() - start
    ok, detail = soak.expect_error(answer, *words)
    assert ok, detail
    assert elapsed < TIMEOUT_S
    assert peak.exact  # every VmHWM was reset: the growth is of this session alone
    each = {pid: round((top - base) / MB) for pid, (base, top) in peak.peaks.items()}
    own = each.pop(server.proc.pid)
    print(f"tree growth {peak.growth / MB:.0f} MB (server {own} MB, others "
          f"{sorted(each.values())} MB), {elapsed:.1f} s: {answer.errors[0][:90]}")  # fmt: skip
    return peak.growth


def test_forty_shapes_of_2_26_samples(server):
    text = soak.seq_shapes(40, 1 << 26)
    assert len(text) < 2500  # asks for 40 x 2^26 samples
    payload = soak.preview_payload(text)
    assert measured(server, payload, "max_shape_samples") <= BOUND


def test_one_adc_of_5e7_samples(server):
    text = soak.seq_adc(50_000_000)
    assert len(text) < 500
    payload = soak.preview_payload(text)
    assert measured(server, payload, "max_adc_samples") <= BOUND


def test_300_000_repetitions(server):
    text = soak.seq_repetitions(300_000)
    assert text.count(" 20 1 0 0 0 0 0\n") == 300_000  # 300 000 RF blocks, 12.8 MB
    payload = soak.preview_payload(text)
    assert measured(server, payload, "max_repetitions", "max_memory_bytes") <= BOUND


def test_header_matrix_512_512_128_with_one_one_sample_acquisition(server):
    acq = ismrmrd.Acquisition.from_array(np.ones((1, 1), np.complex64))
    payload = soak.session_bytes("default", soak.header_xml((512, 512, 128)), items=(acq,))
    assert len(payload) < 3000 + 1024  # the config name takes 1024 bytes on the wire
    assert measured(server, payload, "max_grid_bytes", "max_voxels") <= BOUND


def test_tree_peak_sees_a_short_spike_in_a_grandchild():
    """The negative control: spikes shorter than the sampling interval, in a grandchild and in
    the root itself, freed at once, are both counted (by VmHWM)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    grandchild = "import time; b = b'x' * (300 << 20); del b; time.sleep(1.5)"
    root = textwrap.dedent(f"""
        import subprocess, sys
        sys.stdin.readline()
        b = b'y' * (200 << 20); del b
        subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)
        print('done', flush=True)
        sys.stdin.readline()
    """)
    proc = subprocess.Popen([sys.executable, "-c", root], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(0.3)  # the interpreter has started
        with soak.TreePeak(proc.pid, interval_s=0.5) as peak:
            proc.stdin.write("go\n")
            proc.stdin.flush()
            assert proc.stdout.readline() == "done\n"
        assert peak.exact
        assert peak.growth >= 480 << 20, peak.peaks
        # the root's own spike alone: the control of the control
        assert peak.peaks[proc.pid][1] - peak.peaks[proc.pid][0] >= 190 << 20
    finally:
        proc.stdin.close()
        proc.wait(10)

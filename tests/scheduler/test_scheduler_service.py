"""The scheduler service end to end: store + state + worker processes (+ fake NVML).

Durability is checked with a real ``mr0-scheduler run`` process killed with SIGKILL mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from scheduler.gpu import FakeGpu, FakeNvml, GpuMonitor
from scheduler.model import JobKind, JobSpec
from scheduler.service import Scheduler, job_result
from scheduler.store import JobStore


def _cpu_only() -> GpuMonitor:
    return GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))


def test_jobs_run_on_cpu_workers_and_leave_results(tmp_path):
    with Scheduler(tmp_path / "s", monitor=_cpu_only(), cpu_workers=2, cpu_threads=1) as sched:
        # each probe holds its worker a while, so that the next job finds the other one idle
        ids = [sched.submit("probe", {"write_bytes": 300, "hold_s": 0.5}, "recon")
               for _ in range(4)]  # fmt: skip
        ids.append(sched.submit("simulate", {"demo_flash": 16, "size": 16}, "preview"))
        records = [sched.wait(i, timeout_s=120) for i in ids]
        assert [r.state for r in records] == ["done"] * 5
        pids = set()
        for job in ids[:4]:
            folder = job_result(sched.store, job)
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["device"] == "cpu"
            assert (folder / "probe.bin").stat().st_size == 300
            pids.add(summary["pid"])
        assert len(pids) == 2  # both CPU workers were used
        assert os.getpid() not in pids
        signal_file = job_result(sched.store, ids[4]) / "signal.npy"
        assert np.load(signal_file).shape[1] == 1


def test_gpu_jobs_go_to_the_fake_gpus_by_memory(tmp_path):
    nvml = FakeNvml([FakeGpu(total_bytes=80 * 2**30, name="big"),
                     FakeGpu(total_bytes=16 * 2**30, name="small")])  # fmt: skip
    monitor = GpuMonitor(interval_s=0, nvml=nvml)
    with Scheduler(tmp_path / "s", monitor=monitor, cpu_workers=1, cpu_threads=1) as sched:
        big = sched.submit("probe", {}, "batch", estimate_bytes=40 * 2**30, needs_gpu=True)
        small = sched.submit("probe", {}, "batch", estimate_bytes=2**20, allow_cpu=False)
        for job, allowed in ((big, {"0"}), (small, {"0", "1"})):
            record = sched.wait(job, timeout_s=120)
            assert record.state == "done"
            summary = json.loads((job_result(sched.store, job) / "summary.json").read_text())
            assert summary["cuda_visible_devices"] in allowed  # 40 GiB fits only the 80 GiB GPU
            assert record.device == f"cuda:{summary['cuda_visible_devices']}"


def test_a_killed_worker_requeues_its_job(tmp_path):
    with Scheduler(tmp_path / "s", monitor=_cpu_only(), cpu_workers=1, cpu_threads=1) as sched:
        job = sched.submit("noop", {"sleep_s": 2.0})
        deadline = time.monotonic() + 60
        while not sched.pool.running():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)
        os.kill(next(iter(sched.pool.pids().values())), signal.SIGKILL)
        record = sched.wait(job, timeout_s=60)
        assert record.state == "done"
        assert record.attempts == 2


def test_cancel_and_timeout(tmp_path):
    with Scheduler(tmp_path / "s", monitor=_cpu_only(), cpu_workers=1, cpu_threads=1) as sched:
        slow = sched.submit("noop", {"sleep_s": 30})
        queued = sched.submit("noop", {})
        while not sched.pool.running():
            time.sleep(0.02)
        assert sched.cancel(queued)
        assert sched.cancel(slow)
        assert sched.wait(slow, 30).state == "cancelled"
        assert sched.wait(queued, 30).state == "cancelled"
        late = sched.submit("noop", {"sleep_s": 30}, timeout_s=0.5)
        record = sched.wait(late, 60)
        assert record.state == "failed"
        assert "time" in record.error  # the state's timeout reason
        assert sched.wait(sched.submit("noop", {}), 60).state == "done"  # the worker came back


def _scheduler_process(store: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "scheduler.cli", "--store", str(store), "run", "--cpu-workers",
         "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_twenty_simulations_survive_a_killed_scheduler(tmp_path):
    store_dir = tmp_path / "store"
    store = JobStore(store_dir)
    ids = [f"sim{i:02d}" for i in range(20)]
    for job in ids:
        store.submit(
            JobSpec(
                id=job,
                kind=JobKind.BATCH,
                function="simulate",
                params={"demo_flash": 16, "size": 24},
                submitted=time.time(),
            )
        )
    proc = _scheduler_process(store_dir)
    try:
        deadline = time.monotonic() + 120
        while store.counts()["done"] < 4:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
    counts = store.counts()
    assert counts["done"] < 20  # it really was killed mid-run
    proc = _scheduler_process(store_dir)
    try:
        deadline = time.monotonic() + 300
        while store.counts()["done"] < 20:
            assert proc.poll() is None
            assert time.monotonic() < deadline, store.counts()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    for job in ids:
        record = store.get(job)
        assert record.state == "done"
        folder = job_result(store, job)
        assert np.load(folder / "signal.npy").shape[0] > 0
        assert json.loads((folder / "summary.json").read_text())["samples"] > 0
        assert record.attempts in (1, 2)
    assert any(store.get(j).attempts == 2 for j in ids)  # some were interrupted and re-run


def test_cpu_jobs_get_a_host_memory_budget(tmp_path):
    from scheduler.service import host_memory_budget

    auto = Scheduler(tmp_path / "a", monitor=_cpu_only(), cpu_workers=0)
    budget = host_memory_budget()
    assert (budget or 0) > 0
    # "auto" is 75 % of the memory available when the scheduler is made (it moves a little)
    assert abs(auto.state.cpu_memory_bytes - budget) < 0.1 * budget
    assert auto.status()["cpu_memory"]["budget"] == auto.state.cpu_memory_bytes
    fixed = Scheduler(tmp_path / "b", monitor=_cpu_only(), cpu_workers=0, cpu_memory_bytes=5)
    assert fixed.state.cpu_memory_bytes == 5
    off = Scheduler(tmp_path / "c", monitor=_cpu_only(), cpu_workers=0, cpu_memory_bytes=None)
    assert off.state.cpu_memory_bytes is None
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="cpu_memory_bytes"):
            Scheduler(tmp_path / "d", monitor=_cpu_only(), cpu_workers=0, cpu_memory_bytes=bad)
    with pytest.raises(ValueError, match="local backend"):
        Scheduler(tmp_path / "e", monitor=_cpu_only(), backend="ray", cpu_memory_bytes=5)

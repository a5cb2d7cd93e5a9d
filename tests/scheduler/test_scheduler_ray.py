"""The Ray backend on a local Ray instance that declares two fake GPUs."""

from __future__ import annotations

import pytest

from scheduler.ray_backend import gpu_fraction
from scheduler.workers import Task

ray = pytest.importorskip("ray")


def test_gpu_fraction():
    assert gpu_fraction(40 * 10**9, 80 * 10**9, safety=1.0) == 0.5
    assert gpu_fraction(40 * 10**9, 80 * 10**9, safety=1.2) == 0.6
    assert gpu_fraction(1, 80 * 10**9) == 0.01
    assert gpu_fraction(10**12, 80 * 10**9) == 1.0
    with pytest.raises(ValueError, match="GPU memory > 0"):
        gpu_fraction(1, 0)


def _max_overlap(spans: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.fixture(scope="module")
def backend():
    from scheduler.ray_backend import RayBackend

    b = RayBackend(num_gpus=2, num_cpus=4, gpu_bytes=10 * 10**9)
    yield b
    b.shutdown()


def test_ten_whole_gpu_jobs_run_two_at_a_time(backend, tmp_path):
    assert backend.cluster_gpus() == 2
    refs = [backend.submit(Task(f"j{i}", 1, "noop", {"sleep_s": 0.6}, ""), 10 * 10**9)
            for i in range(10)]  # fmt: skip
    results, rest = backend.wait(refs, timeout_s=120)
    assert not rest
    assert all(outcome.ok for outcome, *_ in results)
    assert sorted(o.task.job_id for o, *_ in results) == sorted(f"j{i}" for i in range(10))
    spans = [(start, end) for _, _, start, end in results]
    assert _max_overlap(spans) == 2  # one job per fake GPU, both GPUs used


def test_half_gpu_jobs_share_and_files_come_back(backend):
    refs = [backend.submit(Task(f"h{i}", 1, "noop", {"sleep_s": 0.6}, ""), 4 * 10**9)
            for i in range(8)]  # fmt: skip
    results, _ = backend.wait(refs, timeout_s=120)
    assert _max_overlap([(s, e) for _, _, s, e in results]) == 4  # 0.5 GPU each
    (probe,) = backend.wait([backend.submit(Task("p", 1, "probe", {"write_bytes": 1000}, ""))],
                            60)[0]  # fmt: skip
    outcome, files, _, _ = probe
    assert outcome.ok
    assert outcome.summary["cuda_visible_devices"] in ("0", "1")  # Ray gave it a fake GPU
    assert len(files["probe.bin"]) == 1000
    (failed,) = backend.wait([backend.submit(Task("f", 1, "fail", {"message": "x"}, ""))], 60)[0]
    assert not failed[0].ok
    assert "RuntimeError: x" in failed[0].error


def test_scheduler_service_on_the_ray_backend(backend, tmp_path):
    import json

    from scheduler.gpu import FakeNvml, GpuMonitor
    from scheduler.service import Scheduler, job_result

    monitor = GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))
    sched = Scheduler(tmp_path / "s", monitor=monitor, backend="ray", tick_s=0.02,
                      ray_options={"gpu_bytes": 10 * 10**9})  # fmt: skip
    with sched:
        jobs = [sched.submit("probe", {"write_bytes": 500}, "recon", estimate_bytes=9 * 10**9,
                             needs_gpu=True) for _ in range(4)]  # fmt: skip
        bad = sched.submit("fail", {"message": "nope"}, "batch", max_attempts=2)
        for job in jobs:
            record = sched.wait(job, timeout_s=120)
            assert record.state == "done"
            folder = job_result(sched.store, job)
            assert (folder / "probe.bin").stat().st_size == 500  # files came back from Ray
            summary = json.loads((folder / "summary.json").read_text())
            assert summary["cuda_visible_devices"] in ("0", "1")  # Ray gave it a (fake) GPU
        failed = sched.wait(bad, timeout_s=120)
        assert failed.state == "failed"
        assert failed.attempts == 2
        assert "nope" in failed.error


def test_a_call_on_ray_takes_its_inputs_by_ray_put(backend, tmp_path):
    """Objects in and out through the object store: no file, no shared folder."""
    import numpy as np

    from scheduler.calls import CallError
    from scheduler.gpu import FakeNvml, GpuMonitor
    from scheduler.service import Scheduler

    array = np.arange(6.0).reshape(2, 3)
    task = Task("c", 1, "echo", {}, "", call=True, inputs={"a": array, "t": "x"})
    ((outcome, files, _, _),) = backend.wait([backend.submit(task)], 60)[0]
    assert outcome.ok
    assert not files
    np.testing.assert_array_equal(outcome.result["inputs"]["a"], array)
    monitor = GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))
    sched = Scheduler(tmp_path / "s", monitor=monitor, backend="ray", tick_s=0.02,
                      ray_options={"gpu_bytes": 10 * 10**9})  # fmt: skip
    with sched:
        assert sched.call("echo", {"t": "y"}).result(120)["inputs"] == {"t": "y"}
        with pytest.raises(CallError, match="nope"):
            sched.call("fail", {}, {"message": "nope"}).result(120)
    assert not any(p.is_file() for p in (tmp_path / "s" / "work").rglob("*"))

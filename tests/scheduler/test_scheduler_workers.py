"""Worker processes: dispatch, environment per device, crash and restart, cancel, errors."""

from __future__ import annotations

import os
import queue
import signal
import time

import pytest

from scheduler.workers import Task, WorkerPool


@pytest.fixture
def pool(tmp_path):
    outcomes: queue.Queue = queue.Queue()
    lost: queue.Queue = queue.Queue()
    p = WorkerPool(gpus=[3], gpu_slots=1, cpu_workers=2, cpu_threads=1,
                   on_outcome=outcomes.put, on_lost=lambda *a: lost.put(a))  # fmt: skip
    p.start()
    p.outcomes, p.lost = outcomes, lost
    yield p
    p.stop(timeout_s=5)


def task(tmp_path, job, function, **params):
    work = tmp_path / job
    work.mkdir(exist_ok=True)
    return Task(job, 1, function, params, str(work))


def test_dispatch_and_environment(pool, tmp_path):
    assert pool.devices() == ["cpu", "cuda:3"]
    assert pool.idle("cpu") == 2
    pool.dispatch("cuda:3", task(tmp_path, "g", "probe"))
    pool.dispatch("cpu", task(tmp_path, "c", "probe"))
    got = {o.task.job_id: o for o in (pool.outcomes.get(timeout=60) for _ in range(2))}
    assert got["g"].ok
    assert got["g"].summary["cuda_visible_devices"] == "3"  # the GPU worker sees only its GPU
    assert got["g"].summary["device"] == "cuda"
    assert got["c"].summary["cuda_visible_devices"] == ""
    assert got["c"].summary["omp_num_threads"] == "1"
    assert got["g"].summary["pid"] != got["c"].summary["pid"] != os.getpid()
    assert pool.idle("cpu") == 2
    with pytest.raises(RuntimeError, match="no idle worker"):
        pool.dispatch("cuda:7", task(tmp_path, "x", "noop"))


def test_errors_and_out_of_memory_are_outcomes(pool, tmp_path):
    pool.dispatch("cpu", task(tmp_path, "a", "fail", message="boom"))
    pool.dispatch("cpu", task(tmp_path, "b", "fail", error="oom"))
    got = {o.task.job_id: o for o in (pool.outcomes.get(timeout=60) for _ in range(2))}
    assert not got["a"].ok
    assert "boom" in got["a"].error
    assert not got["a"].out_of_memory
    assert got["b"].out_of_memory


def test_a_killed_worker_reports_its_task_and_restarts(pool, tmp_path):
    pool.dispatch("cpu", task(tmp_path, "slow", "noop", sleep_s=30))
    deadline = time.monotonic() + 30
    while "slow" not in pool.running():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    name = pool.running()["slow"][0]
    old_pid = pool.pids()[name]
    time.sleep(0.5)  # let it start the task
    os.kill(old_pid, signal.SIGKILL)
    worker, device, lost, oom_killed = pool.lost.get(timeout=30)
    assert (worker, device, lost.job_id, oom_killed) == (name, "cpu", "slow", False)
    assert pool.pids()[name] != old_pid  # restarted
    pool.dispatch("cpu", task(tmp_path, "after", "probe"))
    pool.dispatch("cpu", task(tmp_path, "after2", "probe"))
    done = {pool.outcomes.get(timeout=60).task.job_id for _ in range(2)}
    assert done == {"after", "after2"}


def test_cancel_stops_only_that_task(pool, tmp_path):
    pool.dispatch("cpu", task(tmp_path, "long", "noop", sleep_s=30))
    pool.dispatch("cpu", task(tmp_path, "short", "noop", sleep_s=0.5))
    time.sleep(0.3)
    assert pool.cancel("long")
    assert not pool.cancel("nothing")
    first = pool.outcomes.get(timeout=30)
    assert first.task.job_id == "short"
    assert first.ok
    with pytest.raises(queue.Empty):
        pool.lost.get(timeout=1.0)  # a cancelled task is not "lost"
    deadline = time.monotonic() + 30
    while pool.idle("cpu") < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_worker_killed_by_the_oom_killer_is_reported_as_such(pool, tmp_path, monkeypatch):
    """SIGKILL while the kernel's OOM-kill count rose: ``oom_killed`` (the job is not retried).

    The count is faked (the real OOM killer is not invoked in a test); the plain ``kill -9``
    of the test above, with the count unchanged, reports False.
    """
    import scheduler.workers as workers

    kills = iter(range(100, 200))
    monkeypatch.setattr(workers, "oom_kill_count", lambda: next(kills))
    pool.dispatch("cpu", task(tmp_path, "hog", "noop", sleep_s=30))
    deadline = time.monotonic() + 30
    while "hog" not in pool.running():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    name = pool.running()["hog"][0]
    time.sleep(0.5)
    os.kill(pool.pids()[name], signal.SIGKILL)
    worker, device, lost, oom_killed = pool.lost.get(timeout=30)
    assert (worker, device, lost.job_id, oom_killed) == (name, "cpu", "hog", True)

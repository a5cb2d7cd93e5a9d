"""Benchmark the scheduler: per-job overhead, and the speed-up of parallel CPU workers.

1. Overhead: 1000 no-op jobs through :class:`scheduler.service.Scheduler` (durable store,
   decision state, worker processes). Prints the mean time per job from submission of the
   burst to the last completion, and the median submit-to-done latency of single jobs sent
   one after another (idle scheduler), against calling the job function in-process (the
   reference: a ratio, so that the cost of durability and process hand-over is explicit).
2. Throughput: 16 simulations (64x64 FLASH on the 64² brain) on ``--workers`` CPU worker
   processes (1 torch thread each) against the same 16 run one after another in this process
   (all cores to torch): the speed-up ratio (target >= 1.7 with 2 workers on 2 cores).

Prints the machine. ``--quick``: 200 no-ops and 8 simulations.

    python scripts/bench_scheduler.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)


def _overhead(n: int, workers: int) -> None:
    from scheduler.functions import run_function
    from scheduler.gpu import FakeNvml, GpuMonitor
    from scheduler.service import Scheduler

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        for _ in range(200):
            run_function("noop", {}, "cpu", Path(tmp))
        direct = (time.perf_counter() - started) / 200
        monitor = GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))
        with Scheduler(Path(tmp) / "store", monitor=monitor, cpu_workers=workers,
                       cpu_threads=1, tick_s=0.02) as sched:  # fmt: skip
            started = time.perf_counter()
            ids = [sched.submit("noop", {}) for _ in range(n)]
            for job in ids:
                sched.wait(job, timeout_s=600)
            burst = (time.perf_counter() - started) / n
            latencies = []
            for _ in range(min(n, 100)):
                t0 = time.perf_counter()
                sched.wait(sched.submit("noop", {}), timeout_s=60)
                latencies.append(time.perf_counter() - t0)
    latency = statistics.median(latencies)
    print(f"overhead: {n} no-op jobs on {workers} workers: {burst * 1e3:.2f} ms per job "
          f"({1 / burst:.0f} jobs/s); single-job submit-to-done median {latency * 1e3:.1f} ms; "
          f"in-process call {direct * 1e6:.1f} us (ratio {latency / direct:.0f}x)")  # fmt: skip


def _throughput(n: int, workers: int) -> float:
    import torch

    from scheduler.functions import run_function
    from scheduler.gpu import FakeNvml, GpuMonitor
    from scheduler.service import Scheduler

    params = {"demo_flash": 64, "phantom": "brain", "size": 64}
    with tempfile.TemporaryDirectory() as tmp:
        run_function("simulate", params, "cpu", Path(tmp))  # warm-up (imports, caches)
        started = time.perf_counter()
        for _ in range(n):
            run_function("simulate", params, "cpu", Path(tmp))
        serial = time.perf_counter() - started
        monitor = GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))
        with Scheduler(Path(tmp) / "store", monitor=monitor, cpu_workers=workers,
                       cpu_threads=1, tick_s=0.02) as sched:  # fmt: skip
            warm = [sched.submit("simulate", params) for _ in range(workers)]  # worker imports
            for job in warm:
                sched.wait(job, timeout_s=600)
            started = time.perf_counter()
            ids = [sched.submit("simulate", params) for _ in range(n)]
            records = [sched.wait(job, timeout_s=1800) for job in ids]
            parallel = time.perf_counter() - started
    if any(r.state != "done" for r in records):
        raise RuntimeError(f"not all jobs finished: {[r.state for r in records]}")
    ratio = serial / parallel
    threads = torch.get_num_threads()
    print(f"throughput: {n} x 64x64 FLASH: one process ({threads} torch threads) {serial:.1f} s, "
          f"{workers} CPU workers {parallel:.1f} s: speed-up {ratio:.2f}")  # fmt: skip
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="CPU worker processes")
    parser.add_argument("--quick", action="store_true", help="200 no-ops, 8 simulations")
    opts = parser.parse_args(argv)
    print(f"machine: {benchlib.machine()}")
    _overhead(200 if opts.quick else 1000, opts.workers)
    _throughput(8 if opts.quick else 16, opts.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

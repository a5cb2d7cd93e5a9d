"""``scheduler.state``: placement, priority, starvation guard, retries, cancel, timeouts, and a
hypothesis property test over random event streams."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

from scheduler.gpu import FakeGpu, FakeNvml, FakeProcess, GpuMonitor
from scheduler.model import CPU, GpuSnapshot, JobKind, JobSpec
from scheduler.state import (
    Cancel,
    Cancelled,
    Done,
    Fail,
    Requeue,
    SchedulerState,
    Start,
)

GB = 10**9


def job(
    job_id: str,
    kind: str = "recon",
    est_gb: float = 0.0,
    submitted: float = 0.0,
    **kw: object,
) -> JobSpec:
    return JobSpec(
        id=job_id,
        kind=JobKind.parse(kind),
        estimate_bytes=int(est_gb * GB),
        submitted=submitted,
        **kw,  # type: ignore[arg-type]
    )


def gpu(index: int, free_gb: float, total_gb: float = 80.0, util: float = 0.0) -> GpuSnapshot:
    total, free = int(total_gb * GB), int(free_gb * GB)
    return GpuSnapshot(index, "G", total, free, total - free, utilization=util)


def starts(out: list) -> list[tuple[str, str]]:
    return [(i.job_id, i.device) for i in out if isinstance(i, Start)]


def four_gpu_state(**kw: object) -> SchedulerState:
    """State fed by a fake NVML: 80 GB busy, 40 GB, 24 GB idle, 80 GB half-filled by a foreign
    process (its free memory is 40 GB)."""
    nvml = FakeNvml(
        [
            FakeGpu(80 * GB, used_bytes=1 * GB, utilization=55),
            FakeGpu(40 * GB, used_bytes=0, utilization=5),
            FakeGpu(24 * GB, used_bytes=2 * GB, utilization=0),
            FakeGpu(80 * GB, utilization=30, processes=[FakeProcess(99, 40 * GB, "foreign")]),
        ]
    )
    state = SchedulerState(**kw)  # type: ignore[arg-type]
    snaps = GpuMonitor(nvml=nvml).snapshot()
    assert [s.free_bytes for s in snaps] == [79 * GB, 40 * GB, 22 * GB, 40 * GB]
    assert state.gpus(snaps, now=0.0) == []
    return state


# -- placement ----------------------------------------------------------------------------


def test_big_job_goes_only_where_it_fits() -> None:
    # need 45.6 GB: only cuda:0 (79 GB free); the half-filled 80 GB GPU has only 40 GB free
    state = four_gpu_state(safety=1.2)
    assert starts(state.submit(job("big", est_gb=38), now=1.0)) == [("big", "cuda:0")]
    assert state.free_bytes()["cuda:0"] == 79 * GB - math.ceil(38 * GB * 1.2)


def test_half_filled_gpu_counts_as_half() -> None:
    # need 36 GB fits the 40 GB GPUs: cuda:1 (util 5 %) first, then the half-filled cuda:3
    # (util 30 %) ahead of the busier cuda:0 (util 55 %)
    state = four_gpu_state(safety=1.2)
    out = state.submit(job("a", est_gb=30), now=1.0)
    out += state.submit(job("b", est_gb=30), now=2.0)
    out += state.submit(job("c", est_gb=30), now=3.0)
    # (had cuda:3 counted as 80 GB free, c would have gone there: it is less utilised)
    assert starts(out) == [("a", "cuda:1"), ("b", "cuda:3"), ("c", "cuda:0")]
    # cuda:0 still has 43 GB: d goes there too, then no GPU has 36 GB free and a GPU-only
    # job waits
    out = state.submit(job("d", est_gb=30, allow_cpu=False), now=5.0)
    assert starts(out) == [("d", "cuda:0")]
    out = state.submit(job("e", est_gb=30, allow_cpu=False), now=6.0)
    assert starts(out) == []
    assert state.state_of("e") == "queued"
    assert state.free_bytes() == {
        "cuda:0": 79 * GB - 2 * 36 * GB,
        "cuda:1": 4 * GB,
        "cuda:2": 22 * GB,
        "cuda:3": 4 * GB,
    }


def test_least_utilised_fitting_gpu_wins() -> None:
    # need 12 GB fits all four; the idle 24 GB GPU wins although it has the least memory
    state = four_gpu_state(safety=1.2)
    assert starts(state.submit(job("a", est_gb=10), now=1.0)) == [("a", "cuda:2")]


def test_ties_go_to_more_free_memory_then_lower_index() -> None:
    state = SchedulerState(gpu_slots=1)
    state.gpus([gpu(0, 20), gpu(1, 30), gpu(2, 30), gpu(3, 50, util=1)], now=0.0)
    out = []
    for n in range(4):
        out += state.submit(job(f"j{n}", est_gb=1), now=1.0 + n)
    assert starts(out) == [("j0", "cuda:1"), ("j1", "cuda:2"), ("j2", "cuda:0"), ("j3", "cuda:3")]


def test_at_most_k_jobs_per_gpu() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=1)
    state.gpus([gpu(0, 80)], now=0.0)
    out = []
    for n in range(4):
        out += state.submit(job(f"j{n}", est_gb=1, allow_cpu=n != 3), now=1.0 + n)
    assert starts(out) == [("j0", "cuda:0"), ("j1", "cuda:0"), ("j2", CPU)]
    assert state.state_of("j3") == "queued"
    assert starts(state.finished("j0", now=10.0)) == [("j3", "cuda:0")]


def test_too_big_job_waits_or_goes_to_cpu_by_policy() -> None:
    state = four_gpu_state(cpu_slots=2)
    out = state.submit(job("cpu-ok", est_gb=100, allow_cpu=True), now=1.0)
    assert starts(out) == [("cpu-ok", CPU)]
    out = state.submit(job("gpu-only", est_gb=100, allow_cpu=False), now=2.0)
    assert starts(out) == []
    assert state.state_of("gpu-only") == "queued"


def test_needs_gpu_never_goes_to_the_cpu() -> None:
    state = four_gpu_state(cpu_slots=4)
    out = state.submit(job("huge", est_gb=100, allow_cpu=True, needs_gpu=True), now=1.0)
    assert starts(out) == []
    out = state.tick(now=1000.0)
    assert starts(out) == []
    assert state.state_of("huge") == "queued"
    # without any GPU either
    bare = SchedulerState(cpu_slots=4)
    assert starts(bare.submit(job("g", needs_gpu=True), now=0.0)) == []
    assert starts(bare.submit(job("c"), now=0.0)) == [("c", CPU)]


def test_without_gpus_jobs_run_on_cpu_slots() -> None:
    state = SchedulerState(cpu_slots=2)
    out = []
    for n in range(3):
        out += state.submit(job(f"j{n}"), now=float(n + 1))
    assert starts(out) == [("j0", CPU), ("j1", CPU)]
    assert starts(state.finished("j1", now=5.0)) == [("j2", CPU)]


# -- reservations -------------------------------------------------------------------------


def test_reservation_lasts_until_a_settled_snapshot() -> None:
    state = SchedulerState(gpu_slots=4, safety=1.0, settle_s=5.0)
    state.gpus([gpu(0, 40)], now=0.0)
    state.submit(job("a", est_gb=30), now=10.0)
    assert state.reserved_bytes() == {"cuda:0": 30 * GB}
    # a second job would overflow the snapshot's 40 GB: it waits
    assert starts(state.submit(job("b", est_gb=20, allow_cpu=False), now=11.0)) == []
    # a snapshot within settle_s of the start may not see "a" yet: the reservation stays
    state.gpus([gpu(0, 39)], now=15.0)
    assert state.reserved_bytes() == {"cuda:0": 30 * GB}
    assert state.state_of("b") == "queued"
    # a later one sees it (10 GB free): the reservation ends, NVML is authoritative
    out = state.gpus([gpu(0, 10)], now=15.5)
    assert state.reserved_bytes() == {"cuda:0": 0}
    assert starts(out) == []
    assert state.free_bytes() == {"cuda:0": 10 * GB}


def test_finishing_releases_the_reservation() -> None:
    state = SchedulerState(gpu_slots=4, safety=1.0)
    state.gpus([gpu(0, 40)], now=0.0)
    state.submit(job("a", est_gb=30), now=1.0)
    out = state.submit(job("b", est_gb=20, allow_cpu=False), now=2.0)
    assert starts(out) == []
    assert starts(state.finished("a", now=3.0)) == [("b", "cuda:0")]
    assert state.reserved_bytes() == {"cuda:0": 20 * GB}


def test_killed_job_keeps_a_ghost_reservation_until_the_next_snapshot() -> None:
    state = SchedulerState(gpu_slots=4, safety=1.0)
    state.gpus([gpu(0, 40)], now=0.0)
    state.submit(job("a", est_gb=30), now=1.0)
    state.submit(job("b", est_gb=20, allow_cpu=False), now=2.0)
    out = state.cancel("a", now=3.0)
    assert out == [Cancel("a", "cancelled"), Cancelled("a", "cancelled")]
    assert state.reserved_bytes() == {"cuda:0": 30 * GB}  # its process may still hold it
    assert starts(state.gpus([gpu(0, 40)], now=4.0)) == [("b", "cuda:0")]


# -- order --------------------------------------------------------------------------------


def busy_single_gpu(**kw: object) -> SchedulerState:
    """One GPU with one slot, taken by job "blocker"; no CPU slot."""
    state = SchedulerState(gpu_slots=1, cpu_slots=0, **kw)  # type: ignore[arg-type]
    state.gpus([gpu(0, 80)], now=0.0)
    assert starts(state.submit(job("blocker", "batch"), now=0.0)) == [("blocker", "cuda:0")]
    return state


def run_through(state: SchedulerState, first: str, now: float) -> list[str]:
    """Finish jobs one after another on the single slot; return the start order."""
    order, current = [], first
    while True:
        started = starts(state.finished(current, now=now))
        if not started:
            return order
        current = started[0][0]
        order.append(current)


def test_priority_order_then_age_then_id() -> None:
    state = busy_single_gpu()
    state.submit(job("batch1", "batch", submitted=1.0), now=1.0)
    state.submit(job("recon2", "recon", submitted=2.0), now=2.0)
    state.submit(job("recon1", "recon", submitted=1.5), now=2.0)
    state.submit(job("retro", "retrosim", submitted=3.0), now=3.0)
    state.submit(job("prev-b", "preview", submitted=4.0), now=4.0)
    state.submit(job("prev-a", "preview", submitted=4.0), now=4.0)
    expected = ["prev-a", "prev-b", "retro", "recon1", "recon2", "batch1"]
    assert [q.job_id for q in state.queued()] == expected
    assert run_through(state, "blocker", now=5.0) == expected


def test_starvation_guard_lifts_old_jobs_but_never_past_older_better_ones() -> None:
    state = busy_single_gpu(starvation_s=100.0)
    state.submit(job("old-preview", "preview", submitted=995.0), now=1000.0)
    state.submit(job("old-batch", "batch", submitted=1000.0), now=1000.0)
    state.submit(job("recon", "recon", submitted=1150.0), now=1150.0)
    # 250 s later the batch job has waited 2.5 classes: rank 1, behind a new preview
    state.submit(job("new-preview", "preview", submitted=1250.0), now=1250.0)
    assert state.effective_rank("old-batch", 1250.0) == 1
    assert state.effective_rank("old-batch", 1299.9) == 1
    assert state.effective_rank("recon", 1250.0) == 1
    assert [q.job_id for q in state.queued(1250.0)] == [
        "old-preview",
        "new-preview",
        "old-batch",
        "recon",
    ]
    # after 300 s it has rank 0: ahead of the new preview, still behind the older preview
    assert state.effective_rank("old-batch", 1300.0) == 0
    assert [q.job_id for q in state.queued(1300.0)] == [
        "old-preview",
        "old-batch",
        "new-preview",
        "recon",
    ]
    assert run_through(state, "blocker", now=1300.0) == [
        "old-preview",
        "old-batch",
        "new-preview",
        "recon",
    ]


def test_no_starvation_guard_with_infinite_interval() -> None:
    state = busy_single_gpu(starvation_s=math.inf)
    state.submit(job("old-batch", "batch", submitted=0.0), now=0.0)
    state.submit(job("new-preview", "preview", submitted=1e6), now=1e6)
    assert run_through(state, "blocker", now=2e6) == ["new-preview", "old-batch"]


def test_backfill_may_not_take_what_a_waiting_job_claims() -> None:
    state = SchedulerState(gpu_slots=3, cpu_slots=0, safety=1.0)
    state.gpus([gpu(0, 80)], now=0.0)
    state.submit(job("a", "recon", est_gb=30), now=1.0)
    state.submit(job("b", "recon", est_gb=30), now=1.0)
    # the preview needs 60 GB: it waits for a and b to end, and claims the GPU
    assert starts(state.submit(job("p", "preview", est_gb=60), now=2.0)) == []
    assert state.claims() == {"cuda:0": "p"}
    assert state.queued()[0].claim == "cuda:0"
    assert state.potential_bytes() == {"cuda:0": 80 * GB}
    # a small batch job fits the free 20 GB, and p + small fit once a and b end: it starts
    assert starts(state.submit(job("small", "batch", est_gb=15), now=3.0)) == [("small", "cuda:0")]
    # after a ends, a 20 GB job fits the free memory (35 GB), but p + small + it > 80 GB
    state.finished("a", now=4.0)
    assert state.free_bytes() == {"cuda:0": 35 * GB}
    assert starts(state.submit(job("big", "batch", est_gb=20), now=5.0)) == []
    assert [q.job_id for q in state.queued()] == ["p", "big"]
    # small jobs keep coming and going; p still starts when b, which ran before it, ends
    assert starts(state.finished("small", now=6.0)) == [("big", "cuda:0")]
    assert starts(state.submit(job("small2", "batch", est_gb=1), now=7.0)) == []
    assert starts(state.finished("b", now=8.0)) == [("p", "cuda:0")]
    assert state.claims() == {"cuda:0": "small2"}


def test_backfill_counts_jobs_started_in_the_same_pass() -> None:
    state = SchedulerState(gpu_slots=4, cpu_slots=0, safety=1.0, settle_s=0.0)
    state.gpus([gpu(0, 80)], now=0.0)
    state.submit(job("a", "recon", est_gb=15), now=1.0)
    state.gpus([gpu(0, 65)], now=2.0)  # NVML sees a: potential 80 GB
    assert starts(state.submit(job("p", "preview", est_gb=60), now=3.0)) == [("p", "cuda:0")]
    assert starts(state.submit(job("b", "recon", est_gb=5), now=4.0)) == [("b", "cuda:0")]
    state.submit(job("s1", "batch", est_gb=10), now=4.5)
    state.submit(job("s2", "batch", est_gb=10), now=4.5)
    # p runs out of memory with 65 GB: requeued at 5 s needing 65 GB + 1 byte, it waits for b
    out = state.failed("p", "CUDA out of memory", now=5.0, oom=True)
    assert state.claims() == {"cuda:0": "p"}
    # s1 may start beside it (66 + 10 ≤ 80), s2, in the same pass, not (66 + 10 + 10 > 80)
    assert starts(out) == [("s1", "cuda:0")]
    assert state.state_of("s2") == "queued"
    # once b, which ran before p began waiting, has ended, p fits beside s1
    state.finished("a", now=6.0)
    state.finished("b", now=6.0)
    assert starts(state.gpus([gpu(0, 70)], now=7.0)) == [("p", "cuda:0")]


def test_claims_are_exclusive_and_prefer_the_most_potential_memory() -> None:
    state = SchedulerState(gpu_slots=1, cpu_slots=0, safety=1.0)
    state.gpus([gpu(0, 80, total_gb=80), gpu(1, 40, total_gb=40)], now=0.0)
    state.submit(job("r0", est_gb=10), now=1.0)
    state.submit(job("r1", est_gb=10), now=1.0)
    for name in ("p1", "p2", "p3"):
        assert starts(state.submit(job(name, "preview", est_gb=30), now=2.0)) == []
    # p1 claims the GPU with the most potential memory, p2 the other, p3 none
    assert state.claims() == {"cuda:0": "p1", "cuda:1": "p2"}
    assert [q.claim for q in state.queued()] == ["cuda:0", "cuda:1", None]
    # a job too big for cuda:1 does not claim it
    state.cancel("p2", now=3.0)
    state.submit(job("huge", "preview", est_gb=50, submitted=1.5), now=3.0)
    assert state.claims() == {"cuda:0": "huge", "cuda:1": "p1"}


def test_potential_counts_our_jobs_the_snapshot_saw() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=0, safety=1.0, settle_s=0.0)
    state.gpus([gpu(0, 80)], now=0.0)
    state.submit(job("a", est_gb=50), now=1.0)
    state.gpus([gpu(0, 28)], now=2.0)  # NVML sees a (and 2 GB of something else)
    assert state.reserved_bytes() == {"cuda:0": 0}
    assert state.potential_bytes() == {"cuda:0": 78 * GB}
    state.finished("a", now=3.0)
    assert state.potential_bytes() == {"cuda:0": 78 * GB}  # until the next snapshot
    state.gpus([gpu(0, 78)], now=4.0)
    assert state.potential_bytes() == {"cuda:0": 78 * GB}


# -- failures -----------------------------------------------------------------------------


def test_oom_retries_on_a_gpu_with_more_free_memory() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=1, safety=1.0)
    state.gpus([gpu(0, 16, total_gb=16), gpu(1, 40, total_gb=40, util=50)], now=0.0)
    assert starts(state.submit(job("j", est_gb=10), now=1.0)) == [("j", "cuda:0")]
    out = state.failed("j", "CUDA out of memory", now=2.0, oom=True)
    assert isinstance(out[0], Requeue)
    assert "out of memory on cuda:0" in out[0].reason
    assert starts(out) == [("j", "cuda:1")]  # more than 16 GB free; cuda:0 no longer fits
    assert out[-1] == Start("j", "cuda:1", attempt=2)


def test_oom_goes_to_cpu_when_no_gpu_has_more() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=1, safety=1.0)
    state.gpus([gpu(0, 16, total_gb=16), gpu(1, 16, total_gb=16, util=50)], now=0.0)
    state.submit(job("j", est_gb=10), now=1.0)
    out = state.failed("j", "CUDA out of memory", now=2.0, oom=True)
    assert starts(out) == [("j", CPU)]


def test_oom_fails_a_gpu_only_job_when_no_gpu_is_larger() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=1, safety=1.0)
    state.gpus([gpu(0, 16, total_gb=16), gpu(1, 12, total_gb=12)], now=0.0)
    state.submit(job("j", est_gb=10, needs_gpu=True), now=1.0)
    out = state.failed("j", "CUDA out of memory", now=2.0, oom=True)
    assert len(out) == 1
    assert isinstance(out[0], Fail)
    assert "largest 16000000000 bytes" in out[0].reason
    assert state.state_of("j") == "failed"


def test_other_failures_retry_until_max_attempts() -> None:
    state = SchedulerState(cpu_slots=1)
    state.submit(job("j", max_attempts=3), now=0.0)
    for attempt in (1, 2):
        out = state.failed("j", "ValueError: bad", now=float(attempt))
        assert out == [
            Requeue("j", "ValueError: bad (on cpu)", attempts=attempt),
            Start("j", CPU, attempt=attempt + 1),
        ]
    out = state.failed("j", "ValueError: bad", now=3.0)
    assert out == [Fail("j", "ValueError: bad (on cpu, attempt 3)")]
    assert state.state_of("j") == "failed"


def test_worker_lost_requeues_until_max_attempts() -> None:
    state = SchedulerState(gpu_slots=2, cpu_slots=0)
    state.gpus([gpu(0, 80)], now=0.0)
    state.submit(job("a", max_attempts=2), now=0.0)
    state.submit(job("b", max_attempts=1), now=0.0)
    out = state.worker_lost("cuda:0", now=1.0)
    assert out[:2] == [
        Requeue("a", "worker lost on cuda:0", attempts=1),
        Fail("b", "worker lost on cuda:0 after 1 attempts"),
    ]
    assert starts(out) == [("a", "cuda:0")]
    assert out[-1].attempt == 2  # type: ignore[union-attr]
    out = state.worker_lost("a", now=2.0)
    assert out == [Fail("a", "worker lost on cuda:0 after 2 attempts")]
    assert state.counts() == {"queued": 0, "running": 0, "done": 0, "failed": 2, "cancelled": 0}


# -- cancel, timeout, late events ---------------------------------------------------------


def test_cancel_queued_and_running() -> None:
    state = SchedulerState(cpu_slots=1)
    state.submit(job("r"), now=0.0)
    state.submit(job("q"), now=1.0)
    assert state.cancel("q", now=2.0) == [Cancelled("q", "cancelled")]
    assert state.state_of("q") == "cancelled"
    state.submit(job("next"), now=3.0)
    out = state.cancel("r", now=4.0)
    assert out == [Cancel("r", "cancelled"), Cancelled("r", "cancelled"), Start("next", CPU)]


def test_timeout_kills_and_fails() -> None:
    state = SchedulerState(cpu_slots=1)
    state.submit(job("slow", timeout_s=10.0), now=100.0)
    state.submit(job("next"), now=101.0)
    assert state.tick(now=109.9) == []
    out = state.tick(now=110.0)
    reason = "timeout: ran longer than 10.0 s on cpu"
    assert out == [Cancel("slow", reason), Fail("slow", reason), Start("next", CPU)]
    assert state.reason_of("slow") == reason
    assert state.finished("slow", now=111.0) == []  # the killed worker's late report


def test_late_and_duplicate_events_are_ignored() -> None:
    state = SchedulerState(cpu_slots=1)
    state.submit(job("a"), now=0.0)
    state.submit(job("b"), now=0.0)
    assert state.finished("b", now=1.0) == []  # queued, never started
    assert state.finished("a", now=1.0, device="cuda:3") == []  # from the wrong device
    assert state.finished("a", now=2.0) == [Done("a"), Start("b", CPU)]
    assert state.finished("a", now=3.0) == []
    assert state.failed("a", "late", now=3.0, oom=True) == []
    assert state.cancel("a", now=3.0) == []
    assert state.worker_lost("a", now=3.0) == []
    assert state.worker_lost("cuda:7", now=3.0) == []
    assert state.finished("nobody", now=3.0) == []
    assert state.submit(job("a"), now=4.0) == []  # duplicate id
    assert state.state_of("a") == "done"
    assert state.counts() == {"queued": 0, "running": 1, "done": 1, "failed": 0, "cancelled": 0}


def test_views() -> None:
    state = SchedulerState(gpu_slots=1, cpu_slots=0, safety=1.0)
    state.gpus([gpu(0, 80)], now=0.0)
    state.submit(job("r", est_gb=2), now=10.0)
    state.submit(job("q", "batch", est_gb=3, submitted=5.0), now=10.0)
    (running,) = state.running()
    assert (running.job_id, running.device, running.started_at) == ("r", "cuda:0", 10.0)
    assert (running.attempts, running.reserved_bytes) == (1, 2 * GB)
    (queued,) = state.queued(now=20.0)
    assert (queued.job_id, queued.kind, queued.waited_s, queued.need_bytes) == (
        "q",
        JobKind.BATCH,
        15.0,
        3 * GB,
    )
    assert queued.claim == "cuda:0"
    assert state.snapshots()[0].free_bytes == 80 * GB


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="gpu_slots"):
        SchedulerState(gpu_slots=0)
    with pytest.raises(ValueError, match="safety"):
        SchedulerState(safety=0.0)
    with pytest.raises(ValueError, match="starvation_s"):
        SchedulerState(starvation_s=0.0)
    state = SchedulerState()
    with pytest.raises(ValueError, match="estimate_bytes"):
        state.submit(JobSpec("x", JobKind.BATCH, estimate_bytes=-1), now=0.0)
    with pytest.raises(ValueError, match="max_attempts"):
        state.submit(JobSpec("x", JobKind.BATCH, max_attempts=0), now=0.0)
    with pytest.raises(ValueError, match="reserved"):
        state.submit(JobSpec("cpu", JobKind.BATCH), now=0.0)


# -- host memory (issue 21): CPU jobs are placed with a memory check too --------------------


def cpu_running(state: SchedulerState) -> list[str]:
    return [r.job_id for r in state.running() if r.device == CPU]


def test_cpu_jobs_are_placed_against_the_host_memory_budget() -> None:
    state = SchedulerState(cpu_slots=4, safety=1.0, cpu_memory_bytes=10 * GB)
    assert state.gpus([], now=0.0) == []  # a machine without GPUs
    out = []
    for n in range(3):
        out += state.submit(job(f"j{n}", est_gb=4), now=1.0 + n)
    # two 4 GB jobs fit 10 GB; the third waits although two slots are free
    assert starts(out) == [("j0", CPU), ("j1", CPU)]
    assert state.cpu_memory() == {"budget": 10 * GB, "used": 8 * GB, "free": 2 * GB}
    assert state.claims() == {CPU: "j2"}
    assert starts(state.finished("j0", now=5.0)) == [("j2", CPU)]
    # negative control: without a budget all three start (slots only)
    bare = SchedulerState(cpu_slots=4, safety=1.0)
    out = []
    for n in range(3):
        out += bare.submit(job(f"j{n}", est_gb=4), now=1.0)
    assert len(starts(out)) == 3


def test_a_waiting_cpu_job_is_not_starved_by_smaller_ones() -> None:
    state = SchedulerState(cpu_slots=8, safety=1.0, cpu_memory_bytes=10 * GB)
    state.gpus([], now=0.0)
    state.submit(job("a", est_gb=6), now=1.0)
    out = state.submit(job("big", est_gb=8), now=2.0)  # waits for a, claims the CPU
    assert starts(out) == []
    # 3 GB would fit next to a (6 + 3 <= 10), but then big could not start when a ends
    assert starts(state.submit(job("small", est_gb=3), now=3.0)) == []
    # 2 GB may backfill: big + it = 10 GB still fit once a has ended
    assert starts(state.submit(job("tiny", est_gb=2), now=3.5)) == [("tiny", CPU)]
    assert starts(state.finished("a", now=4.0)) == [("big", CPU)]
    assert starts(state.finished("big", now=5.0)) == [("small", CPU)]
    # negative control: the same jobs without a waiting claimer backfill at once
    free = SchedulerState(cpu_slots=8, safety=1.0, cpu_memory_bytes=10 * GB)
    free.gpus([], now=0.0)
    free.submit(job("a", est_gb=6), now=1.0)
    assert starts(free.submit(job("small", est_gb=3), now=3.0)) == [("small", CPU)]


def test_a_job_larger_than_every_device_fails_at_once() -> None:
    state = SchedulerState(cpu_slots=2, safety=1.2, cpu_memory_bytes=10 * GB)
    state.gpus([gpu(0, 16, total_gb=16)], now=0.0)
    out = state.submit(job("huge", est_gb=20), now=1.0)
    assert [type(i) for i in out] == [Fail]
    assert "CPU memory budget" in out[0].reason
    assert "largest 16000000000" in out[0].reason
    # one a GPU could hold goes there (or waits for it), never failed
    assert starts(state.submit(job("gpu-sized", est_gb=12), now=2.0)) == [("gpu-sized", "cuda:0")]
    # before any GPU snapshot a GPU may still come: the job waits
    fresh = SchedulerState(cpu_slots=2, cpu_memory_bytes=10 * GB)
    assert fresh.submit(job("huge", est_gb=20), now=1.0) == []
    assert fresh.state_of("huge") == "queued"


def test_running_out_of_host_memory_is_not_retried() -> None:
    state = SchedulerState(cpu_slots=1, cpu_memory_bytes=10 * GB)
    state.submit(job("j", est_gb=1, max_attempts=3), now=0.0)
    out = state.failed("j", "MemoryError: out of memory", now=1.0, oom=True)
    assert [type(i) for i in out] == [Fail]
    assert "not retried" in out[0].reason
    # the OOM killer (worker lost with oom) is not retried either
    state.submit(job("k", est_gb=1, max_attempts=3), now=2.0)
    out = state.worker_lost("k", now=3.0, oom=True)
    assert [type(i) for i in out] == [Fail]
    assert "out-of-memory killer" in out[0].reason
    # negative control: a plain failure, or a lost worker, is retried
    state.submit(job("m", est_gb=1, max_attempts=3), now=4.0)
    assert isinstance(state.failed("m", "RuntimeError: flaky", now=5.0)[0], Requeue)
    assert isinstance(state.worker_lost("m", now=6.0)[0], Requeue)
    # a failure of the job's own (bad parameters or inputs) is not
    out = state.failed("m", "bad inputs", now=7.0, retry=False)
    assert out == [Fail("m", "bad inputs (on cpu; not retried)")]


def test_cpu_memory_budget_holds_under_random_events() -> None:
    """Whatever the events, the CPU jobs' needs never exceed the budget."""
    import random

    rng = random.Random(7)
    budget = 20 * GB
    state = SchedulerState(cpu_slots=6, safety=1.0, cpu_memory_bytes=budget)
    state.gpus([], now=0.0)
    t, n = 0.0, 0
    for _ in range(400):
        t += 1.0
        action = rng.random()
        running = cpu_running(state)
        if action < 0.5:
            state.submit(job(f"j{n}", est_gb=rng.choice([1, 3, 7, 12, 19])), now=t)
            n += 1
        elif running and action < 0.8:
            state.finished(rng.choice(running), now=t)
        elif running and action < 0.9:
            state.failed(rng.choice(running), "boom", now=t, oom=rng.random() < 0.5)
        elif running:
            state.worker_lost(rng.choice(running), now=t)
        assert state.cpu_memory()["used"] <= budget
        assert len(cpu_running(state)) <= 6
    assert n > 100


# -- property test ------------------------------------------------------------------------

SAFETY = 1.2
STARVE = 100.0
UNIT = 10**6  # estimates and memory in MB steps
FINAL = ("done", "failed", "cancelled")


@dataclass
class MJob:
    """The test's own record of a job (an oracle independent of the state's internals)."""

    spec: JobSpec
    submitted: float
    since: float
    state: str = "queued"
    device: str | None = None
    started: float = 0.0
    attempts: int = 0
    min_free: int = 0
    free_at_start: int = 0

    @property
    def need(self) -> int:
        return max(math.ceil(self.spec.estimate_bytes * SAFETY), self.min_free)

    @property
    def cpu_ok(self) -> bool:
        return self.spec.allow_cpu and not self.spec.needs_gpu


def gpu_of(device: str | None) -> int | None:
    return int(device[5:]) if device and device.startswith("cuda:") else None


GPU_LISTS = st.lists(
    st.tuples(
        st.sampled_from([16_000, 24_000, 40_000, 80_000]),  # total (MB)
        st.sampled_from([1.0, 0.9, 0.75, 0.5, 0.3, 0.1, 0.0]),  # free fraction
        st.sampled_from([0.0, 10.0, 50.0, 90.0]),  # utilisation (%)
    ),
    min_size=0,
    max_size=4,
)


def make_snapshots(gpus: list, drop: set[int]) -> list[GpuSnapshot]:
    snaps = []
    for i, (total, frac, util) in enumerate(gpus):
        if i not in drop:
            free = int(total * frac) * UNIT
            snaps.append(GpuSnapshot(i, "G", total * UNIT, free, total * UNIT - free, util))
    return snaps


class SchedulerMachine(RuleBasedStateMachine):
    """Random event streams against an independent model of the documented rules."""

    @initialize(
        gpu_slots=st.integers(1, 3),
        cpu_slots=st.sampled_from([0, 0, 1, 2]),
        settle=st.sampled_from([0.0, 5.0]),
        gpus=GPU_LISTS.filter(bool),
    )
    def setup(self, gpu_slots: int, cpu_slots: int, settle: float, gpus: list) -> None:
        self.k, self.cpu_slots, self.settle = gpu_slots, cpu_slots, settle
        self.sched = SchedulerState(gpu_slots, cpu_slots, SAFETY, STARVE, settle_s=settle)
        self.now = 0.0
        self.jobs: dict[str, MJob] = {}
        self.snap: dict[int, GpuSnapshot] = {}
        self.live: dict[int, dict[str, tuple[int, float]]] = {}
        self.ghosts: dict[int, list[tuple[int, float]]] = {}
        self.seen: dict[int, dict[str, int]] = {}
        self.finals: Counter[str] = Counter()
        self.n = 0
        self.new_snapshot(make_snapshots(gpus, set()))

    # -- model helpers -----------------------------------------------------------------------

    def key(self, j: MJob) -> tuple[int, float, str]:
        waited = max(0.0, self.now - j.submitted)
        return (max(0, int(j.spec.kind) - math.floor(waited / STARVE)), j.submitted, j.spec.id)

    def reserved(self, g: int) -> int:
        return sum(b for b, _ in self.live.get(g, {}).values()) + sum(
            b for b, _ in self.ghosts.get(g, [])
        )

    def free(self, g: int) -> int:
        return self.snap[g].free_bytes - self.reserved(g)

    def ours(self, g: int) -> int:
        return sum(
            1 for j in self.jobs.values() if j.state == "running" and j.device == f"cuda:{g}"
        )

    def ours_since_fn(self, g: int):
        """The needs of our jobs on g started at or after a time (s), frozen now."""
        started = [
            (j.started, j.need)
            for j in self.jobs.values()
            if j.state == "running" and j.device == f"cuda:{g}"
        ]
        return lambda t: sum(n for s, n in started if s >= t)

    def cpu_used(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state == "running" and j.device == CPU)

    def potential(self, g: int) -> int:
        return min(self.snap[g].total_bytes, self.snap[g].free_bytes + sum(self.seen[g].values()))

    def running(self) -> list[str]:
        return sorted(i for i, j in self.jobs.items() if j.state == "running")

    def release(self, j: MJob, ghost: bool) -> None:
        g = gpu_of(j.device)
        if g is not None and g in self.snap:
            r = self.live[g].pop(j.spec.id, None)
            if r is not None and ghost:
                self.ghosts[g].append((r[0], self.now))
        j.state = "released"

    # -- the checked call --------------------------------------------------------------------

    def run(self, kind: str, out: list, target: str | None = None, oom: bool = False) -> None:
        """Apply ``out`` to the model, checking each instruction against the rules."""
        t = self.now
        pre_running = set(self.running())
        if kind in ("finished", "failed"):
            assert target is not None
            if target not in pre_running:
                assert out == [], (kind, target, out)
                return
            expect = Done if kind == "finished" else (Requeue, Fail)
            assert isinstance(out[0], expect), out
            assert out[0].job_id == target, out
        if kind == "cancel":
            j = self.jobs.get(target or "")
            if j is None or j.state in FINAL:
                assert out == []
                return
            if j.state == "running":
                assert out[:2] == [Cancel(target), Cancelled(target)]
            else:
                assert out[0] == Cancelled(target)
        if kind == "lost":
            if target == CPU or gpu_of(target) is not None:
                lost = sorted(i for i in pre_running if self.jobs[i].device == target)
            else:
                lost = [target] if target in pre_running else []
            if not lost:
                assert out == []
                return
            assert [i.job_id for i in out[: len(lost)]] == lost
        start_checks = []
        for ins in out:
            j = self.jobs[ins.job_id]
            if isinstance(ins, Start):
                assert j.state == "queued", (ins, j.state)
                assert ins.attempt == j.attempts + 1
                g = gpu_of(ins.device)
                pre = (
                    {i: self.free(i) for i in self.snap},
                    {i: self.ours(i) for i in self.snap},
                    self.cpu_used(),
                    {i: self.ours_since_fn(i) for i in self.snap},
                )
                start_checks.append((ins, pre))
                if g is None:
                    assert ins.device == CPU
                    assert pre[2] < self.cpu_slots
                    assert j.cpu_ok
                else:
                    # (1) no placement overflows the snapshot's free memory or K
                    assert g in self.snap
                    assert j.need <= pre[0][g], "placement overflows the GPU's free memory"
                    assert pre[1][g] < self.k, "more than K jobs on a GPU"
                    j.free_at_start = pre[0][g]
                    self.live[g][j.spec.id] = (j.need, t)
                j.state, j.device, j.started, j.attempts = "running", ins.device, t, j.attempts + 1
            elif isinstance(ins, Cancel):
                assert j.state == "running"
                if kind != "cancel" or ins.job_id != target:
                    assert j.spec.timeout_s is not None
                    assert t - j.started >= j.spec.timeout_s
                self.release(j, ghost=True)
            elif isinstance(ins, Cancelled):
                assert kind == "cancel"
                assert ins.job_id == target
                assert j.state in ("queued", "released")
                j.state = "cancelled"
                self.finals[j.spec.id] += 1
            elif isinstance(ins, Done):
                assert kind == "finished"
                assert ins.job_id == target
                assert j.state == "running"
                self.release(j, ghost=False)
                j.state = "done"
                self.finals[j.spec.id] += 1
            elif isinstance(ins, (Fail, Requeue)):
                if j.state == "running":
                    assert kind in ("failed", "lost")
                    assert ins.job_id in ({target} | pre_running)
                    was_gpu = gpu_of(j.device) is not None
                    self.release(j, ghost=kind == "lost")
                    if kind == "failed" and oom and was_gpu:
                        j.min_free = max(j.min_free, j.free_at_start + 1)
                    no_gpu_large = bool(self.snap) and all(
                        j.need > s.total_bytes for s in self.snap.values()
                    )
                    must_fail = (
                        j.attempts >= j.spec.max_attempts
                        or (kind == "failed" and oom and not was_gpu)  # host OOM: no retry
                        or (
                            kind == "failed"
                            and oom
                            and was_gpu
                            and not (j.cpu_ok and self.cpu_slots > 0)
                            and no_gpu_large
                        )
                    )
                    assert isinstance(ins, Fail) == must_fail, (ins, j)
                else:
                    assert isinstance(ins, Fail)
                    assert j.state == "released"
                if isinstance(ins, Fail):
                    j.state = "failed"
                    self.finals[j.spec.id] += 1
                else:
                    j.state, j.since = "queued", t
            else:  # pragma: no cover
                raise AssertionError(f"unknown instruction {ins!r}")
        # every job ends exactly once
        assert all(c == 1 for c in self.finals.values()), self.finals
        assert all(j.state != "released" for j in self.jobs.values())
        self.check_pass(start_checks)

    def check_pass(self, start_checks: list) -> None:
        """Invariants after a (non-ignored) event: the state agrees with the model, timeouts
        fired, and every start kept the documented priority promises."""
        for i, j in self.jobs.items():
            assert self.sched.state_of(i) == j.state
            if j.state == "running" and j.spec.timeout_s is not None:
                assert self.now - j.started < j.spec.timeout_s, "a timeout did not fire"
        assert self.sched.reserved_bytes() == {f"cuda:{g}": self.reserved(g) for g in self.snap}
        for g in self.snap:
            assert self.ours(g) <= self.k
        queued = sorted((j for j in self.jobs.values() if j.state == "queued"), key=self.key)
        assert [q.job_id for q in self.sched.queued(self.now)] == [j.spec.id for j in queued]
        claims = self.sched.claims()
        claimer = {gpu_of(d): self.jobs[c] for d, c in claims.items()}
        potential = {g: self.potential(g) for g in self.snap}
        assert self.sched.potential_bytes() == {f"cuda:{g}": p for g, p in potential.items()}

        def backfill_ok(g: int, j: MJob, ours_since: int) -> bool:
            """Promise 2: j may start on g ahead of g's claimer."""
            c = claimer.get(g)
            if c is None or not self.key(c) < self.key(j):
                return True
            return c.need + j.need + ours_since <= potential[g]

        def can_start(j: MJob, device: str, free: dict, ours: dict, cpu: int, since: dict) -> bool:
            g = gpu_of(device)
            if g is None:
                return j.cpu_ok and cpu < self.cpu_slots
            c = claimer.get(g)
            ours_since = 0 if c is None else since[g](c.since)
            return ours[g] < self.k and j.need <= free[g] and backfill_ok(g, j, ours_since)

        # claims: one queued claimer per GPU, the unclaimed GPU with the most potential memory
        for g, c in claimer.items():
            assert g in self.snap
            assert c.state == "queued"
            options = [
                h
                for h in self.snap
                if c.need <= potential[h]
                and (h not in claimer or not self.key(claimer[h]) < self.key(c))
            ]
            assert g == max(options, key=lambda h: (potential[h], -h))
        assert len(set(claims.values())) == len(claims)
        for j in queued:
            if j.spec.id not in claims.values():
                for g in self.snap:
                    if j.need <= potential[g]:
                        message = f"waiting {j.spec.id} claims nothing but cuda:{g} is free for it"
                        assert g in claimer, message
                        assert self.key(claimer[g]) < self.key(j), message

        for ins, (free, ours, cpu, since) in start_checks:
            s = self.jobs[ins.job_id]
            # placement: GPUs first, then the least utilised fitting one
            fitting = [
                f"cuda:{g}" for g in self.snap if can_start(s, f"cuda:{g}", free, ours, cpu, since)
            ]
            if ins.device == CPU:
                assert fitting == [], "went to the CPU although a GPU fits"
            else:
                assert ins.device in fitting
                best = min(
                    fitting,
                    key=lambda d: (self.snap[gpu_of(d)].utilization, -free[gpu_of(d)], d),
                )
                g_best, g = gpu_of(best), gpu_of(ins.device)
                assert (self.snap[g].utilization, -free[g]) == (
                    self.snap[g_best].utilization,
                    -free[g_best],
                )
            # (2) promise 1: no waiting job ahead could have used this device at this moment
            for a in queued:
                if self.key(a) < self.key(s):
                    assert not can_start(a, ins.device, free, ours, cpu, since), (
                        f"{s.spec.id} started on {ins.device} ahead of waiting {a.spec.id}"
                    )

    # -- rules -------------------------------------------------------------------------------

    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(
        dt=st.sampled_from([0.0, 1.0, 7.0, 60.0, 150.0]),
        kind=st.sampled_from(list(JobKind)),
        est=st.sampled_from([0, 300, 1_000, 2_500, 5_000, 12_000, 25_000, 40_000, 60_000, 70_000]),
        allow_cpu=st.booleans(),
        needs_gpu=st.booleans(),
        timeout=st.sampled_from([None, None, 30.0, 400.0]),
        max_attempts=st.integers(1, 3),
        back=st.sampled_from([None, 0.0, 50.0, 250.0]),
    )
    def submit(
        self,
        dt: float,
        kind: JobKind,
        est: int,
        allow_cpu: bool,
        needs_gpu: bool,
        timeout: float | None,
        max_attempts: int,
        back: float | None,
    ) -> None:
        self.advance(dt)
        self.n += 1
        job_id = f"j{self.n}"
        submitted = 0.0 if back is None else self.now - back
        spec = JobSpec(
            job_id,
            kind,
            estimate_bytes=est * UNIT,
            allow_cpu=allow_cpu,
            needs_gpu=needs_gpu,
            timeout_s=timeout,
            submitted=submitted,
            max_attempts=max_attempts,
        )
        self.jobs[job_id] = MJob(spec, submitted if submitted > 0 else self.now, self.now)
        self.run("submit", self.sched.submit(spec, self.now))

    @rule(
        dt=st.sampled_from([0.0, 0.0, 3.0, 5.0, 10.0, 100.0]),
        gpus=GPU_LISTS,
        drop=st.sets(st.integers(0, 3), max_size=1),
    )
    def snapshot(self, dt: float, gpus: list, drop: set[int]) -> None:
        self.advance(dt)
        self.new_snapshot(make_snapshots(gpus, drop))

    def new_snapshot(self, snaps: list[GpuSnapshot]) -> None:
        """The documented reservation rule, applied to the model, then to the state."""
        t = self.now
        self.snap = {s.index: s for s in snaps}
        self.live = {
            g: {i: r for i, r in self.live.get(g, {}).items() if not t > r[1] + self.settle}
            for g in self.snap
        }
        self.ghosts = {g: [r for r in self.ghosts.get(g, []) if not t > r[1]] for g in self.snap}
        self.seen = {
            g: {
                i: j.need
                for i, j in self.jobs.items()
                if j.state == "running" and j.device == f"cuda:{g}" and i not in self.live[g]
            }
            for g in self.snap
        }
        self.run("gpus", self.sched.gpus(snaps, t))

    @rule(dt=st.sampled_from([0.0, 5.0, 40.0]), pick=st.integers(0, 99))
    def finish(self, dt: float, pick: int) -> None:
        if not self.running():
            return
        self.advance(dt)
        target = self.running()[pick % len(self.running())]
        self.run("finished", self.sched.finished(target, self.now), target)

    @rule(dt=st.sampled_from([0.0, 5.0, 40.0]), pick=st.integers(0, 99), oom=st.booleans())
    def fail(self, dt: float, pick: int, oom: bool) -> None:
        if not self.running():
            return
        self.advance(dt)
        target = self.running()[pick % len(self.running())]
        self.run("failed", self.sched.failed(target, "boom", self.now, oom=oom), target, oom)

    @rule(dt=st.sampled_from([0.0, 5.0]), pick=st.integers(0, 99))
    def cancel(self, dt: float, pick: int) -> None:
        if not self.jobs:
            return
        self.advance(dt)
        ids = sorted(self.jobs)
        target = ids[pick % len(ids)]
        self.run("cancel", self.sched.cancel(target, self.now), target)

    @rule(
        dt=st.sampled_from([0.0, 5.0]),
        pick=st.integers(0, 99),
        device=st.sampled_from([None, CPU, "cuda:0", "cuda:1", "cuda:2"]),
    )
    def lose_worker(self, dt: float, pick: int, device: str | None) -> None:
        if not self.jobs:
            return
        self.advance(dt)
        ids = sorted(self.jobs)
        target = device if device is not None else ids[pick % len(ids)]
        self.run("lost", self.sched.worker_lost(target, self.now), target)

    @rule(pick=st.integers(0, 99), oom=st.booleans())
    def late_event(self, pick: int, oom: bool) -> None:
        """A late report about a job that is not running, or from the wrong device."""
        ids = sorted(i for i, j in self.jobs.items() if j.state != "running")
        if ids:
            target = ids[pick % len(ids)]
            assert self.sched.finished(target, self.now) == []
            assert self.sched.failed(target, "late", self.now, oom=oom) == []
        running = self.running()
        if running:
            target = running[pick % len(running)]
            assert self.sched.finished(target, self.now, device="cuda:9") == []

    @rule(dt=st.sampled_from([1.0, 30.0, 120.0, 400.0]))
    def tick(self, dt: float) -> None:
        self.advance(dt)
        self.run("tick", self.sched.tick(self.now))

    def teardown(self) -> None:
        """(3) Drain: finish everything; what is left could never start; each job ends once."""
        if not hasattr(self, "sched"):
            return
        snaps = list(self.snap.values())
        for _ in range(2 * len(self.jobs) + 2):
            # a settled snapshot clears all reservations, then everything running finishes
            self.advance(self.settle + 1.0)
            self.new_snapshot(snaps)
            if not self.running():
                break
            for target in self.running():
                self.advance(1.0)
                self.run("finished", self.sched.finished(target, self.now), target)
        assert not self.running()
        for j in self.jobs.values():
            if j.state == "queued":
                assert not (j.cpu_ok and self.cpu_slots > 0)
                assert all(j.need > s.free_bytes for s in snaps), "a job could start but waits"
                self.run("cancel", self.sched.cancel(j.spec.id, self.now), j.spec.id)
        assert set(self.finals) == set(self.jobs)
        assert all(c == 1 for c in self.finals.values())
        assert all(j.state in FINAL for j in self.jobs.values())


SchedulerMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerProperties = SchedulerMachine.TestCase

"""The scheduler's decisions: events in, instructions out; no threads, no clock, no I/O.

:class:`SchedulerState` takes events as method calls (``submit``, ``gpus``, ``finished``,
``failed``, ``cancel``, ``worker_lost``, ``tick``), each with the event's time ``now`` (s, the
same clock as :attr:`JobSpec.submitted <scheduler.model.JobSpec>`, i.e. ``time.time()``), and
returns a list of instructions for the caller to carry out (:class:`Start`, :class:`Cancel`)
or record (:class:`Requeue`, :class:`Done`, :class:`Fail`, :class:`Cancelled`).

Rules
-----
Order
    The queue is ordered by ``(effective rank, submitted, id)``. The rank is the job kind's
    (preview 0 < retrosim 1 < recon 2 < batch 3).
Starvation guard
    A job's effective rank improves by one class for every ``starvation_s`` it has waited since
    it was submitted (``JobSpec.submitted``; 0 means the submit event's time; a requeue keeps
    it), down to 0 (preview): ``max(0, rank - floor(waited / starvation_s))``. An
    old batch job thus goes ahead of new previews, but never ahead of an older job of the same
    or a better class (that one has waited at least as long, so its effective rank is at least
    as good, and the submission time breaks the tie).
Placement
    A job needs ``need = ceil(estimate_bytes × safety)`` bytes (raised after an out-of-memory,
    see below). A GPU's free memory is the last NVML snapshot's free memory (foreign processes
    count) minus the reservations of our jobs there (below). A job fits a GPU when ``need`` ≤
    that free memory and fewer than ``gpu_slots`` of our jobs run there. Among the GPUs it fits
    (and that the claims of jobs ahead of it allow, below) it takes the least utilised one;
    ties: more free memory, then the lower index. A job that fits no GPU runs on the CPU when
    ``allow_cpu`` and not ``needs_gpu``, one of ``cpu_slots`` is free, and (with a
    ``cpu_memory_bytes`` budget) its need fits the budget less the needs of the CPU jobs
    running; otherwise it waits, even when no GPU could ever hold it (the status views show it
    waiting). The exception: a job that may run on the CPU but needs more than the whole CPU
    budget, when the GPU view (after the first snapshot) has no GPU that large, fails at once
    (it could never start).
Host memory
    CPU jobs are accounted like GPU ones, by their need (the estimate × safety), against
    ``cpu_memory_bytes`` (None: no host-memory check, slots only). The first waiting job that
    could run on the CPU but does not start there claims the CPU, as a waiting job claims a
    GPU: a later job may then start on the CPU only if ``need(C) + need(S) + Σ need(CPU jobs
    started since C began waiting)`` ≤ the budget.
Backfilling and claims
    Each scheduling pass walks the queue in order and starts every job that can start, so a job
    may start while jobs ahead of it wait, but only on a device that none of them can use at
    that moment (promise 1). A waiting job also *claims* one GPU, the one it waits for: among
    the GPUs not claimed by a job ahead of it whose *potential* memory covers its need, the one
    with the most (ties: lower index). Potential memory is the memory free once our jobs end:
    the snapshot's free memory plus the needs of our jobs that the snapshot saw there (at most
    the total); it changes only with snapshots. A job whose need exceeds every unclaimed GPU's
    potential claims nothing. A later job S may start on a GPU claimed by waiting job C only if
    ``need(C) + need(S) + Σ need(our jobs on it that started since C began waiting)`` ≤ its
    potential (promise 2): then C fits as soon as the jobs that ran there before it began
    waiting have ended, so backfilled jobs cannot starve it. (C began waiting at its
    submission or last requeue.)
Reservations
    Starting a job on a GPU reserves its need there, since the snapshot does not see it yet.
    A reservation ends when the job finishes or fails (the memory is released), or with the
    first snapshot taken more than ``settle_s`` after the job started (NVML then sees the
    job's memory, which it has had ``settle_s`` to allocate). A job that is killed (cancelled,
    timed out, worker lost) keeps its reservation, as a ghost, until the first snapshot taken
    after the kill, since its process may still be freeing memory. Workers must therefore
    release a job's GPU memory (e.g. ``torch.cuda.empty_cache()``) before reporting its end.
Failures
    Every start counts as an attempt. A failure or a lost worker requeues the job (keeping its
    submission time) unless it has used ``max_attempts`` starts: then it fails for good. After
    an out-of-memory on a GPU the job needs more than the memory that GPU had free when it
    started; it fails at once when it may not use the CPU (or needs more than the CPU budget)
    and no known GPU is that large. Running out of memory on the CPU (``failed(oom=True)`` from
    the CPU) or being killed there by the out-of-memory killer (``worker_lost(oom=True)``) is
    not retried: the job fails at once, since the same job would run out again. Nor is a
    failure the worker marks as the job's own (``failed(retry=False)``: bad parameters or
    input files).
Timeouts and passes
    After its own effect, every event that is not ignored kills the running jobs that have run
    for ``timeout_s`` or longer (:class:`Cancel`, then :class:`Fail`), then runs one scheduling
    pass (:class:`Start` instructions come last). ``tick`` does only that.
Ends
    Every job ends exactly once, with exactly one of :class:`Done`, :class:`Fail` or
    :class:`Cancelled`. Events for unknown jobs, final jobs, or jobs not in the state the event
    needs (e.g. ``finished`` of a queued job, or from a device other than the job's) are
    ignored: they return ``[]`` and change nothing. They never raise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from scheduler.model import CPU, JOB_STATES, GpuSnapshot, JobKind, JobSpec

__all__ = [
    "Cancel",
    "Cancelled",
    "Done",
    "Fail",
    "Instruction",
    "QueuedJob",
    "Requeue",
    "RunningJob",
    "SchedulerState",
    "Start",
]


# -- instructions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """Start job ``job_id`` on ``device`` (``"cuda:<index>"`` or ``"cpu"``), attempt ``attempt``."""

    job_id: str
    device: str
    attempt: int = 1


@dataclass(frozen=True)
class Requeue:
    """Job ``job_id`` is back in the queue after a failed start; ``attempts`` starts used."""

    job_id: str
    reason: str
    attempts: int = 0


@dataclass(frozen=True)
class Fail:
    """Job ``job_id`` failed for good (final)."""

    job_id: str
    reason: str


@dataclass(frozen=True)
class Cancel:
    """Kill the running job ``job_id`` (its worker must stop it); a final instruction follows."""

    job_id: str
    reason: str = "cancelled"


@dataclass(frozen=True)
class Cancelled:
    """Job ``job_id`` is cancelled (final)."""

    job_id: str
    reason: str = "cancelled"


@dataclass(frozen=True)
class Done:
    """Job ``job_id`` finished (final)."""

    job_id: str


Instruction = Start | Requeue | Fail | Cancel | Cancelled | Done
"""Any instruction."""

FINAL_STATES = ("done", "failed", "cancelled")


# -- read-only views ----------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedJob:
    """A waiting job, as the status output shows it.

    Attributes
    ----------
    job_id, kind
        The job.
    effective_rank
        Its rank after the starvation guard (0 = preview class).
    submitted
        Submission time (s).
    waited_s
        Time since submission (s).
    need_bytes
        Free GPU memory it needs (bytes).
    attempts
        Starts used so far.
    claim
        The GPU it claims, i.e. waits for (``"cuda:<index>"``), or None.
    """

    job_id: str
    kind: JobKind
    effective_rank: int
    submitted: float
    waited_s: float
    need_bytes: int
    attempts: int
    claim: str | None


@dataclass(frozen=True)
class RunningJob:
    """A running job, as the status output shows it.

    Attributes
    ----------
    job_id, kind
        The job.
    device
        Where it runs.
    started_at
        Start time (s).
    attempts
        Starts used, this one included.
    need_bytes
        Memory it needs (bytes).
    reserved_bytes
        Memory still reserved for it on its GPU (bytes; 0 once a snapshot sees it, or on CPU).
    """

    job_id: str
    kind: JobKind
    device: str
    started_at: float
    attempts: int
    need_bytes: int
    reserved_bytes: int


# -- internal records ---------------------------------------------------------------------


@dataclass
class _Job:
    spec: JobSpec
    submitted: float
    need: int
    since: float
    state: str = "queued"
    attempts: int = 0
    device: str | None = None
    started_at: float | None = None
    free_at_start: int = 0
    min_free: int = 0
    reason: str = ""


@dataclass
class _Reservation:
    """Bytes held on a GPU for a job NVML may not see yet; ``since``: start (or kill) time."""

    job_id: str
    bytes: int
    since: float
    ghost: bool = False


@dataclass
class _Gpu:
    snapshot: GpuSnapshot
    reservations: dict[str, _Reservation] = field(default_factory=dict)
    jobs: set[str] = field(default_factory=set)
    seen: dict[str, int] = field(default_factory=dict)
    """Needs (bytes) of our jobs that the snapshot saw running here (they may have ended)."""


def _gpu_index(device: str) -> int | None:
    if device.startswith("cuda:"):
        try:
            return int(device[5:])
        except ValueError:
            return None
    return None


class SchedulerState:
    """The scheduler's pure decision logic (see the module docstring for the rules).

    Parameters
    ----------
    gpu_slots
        Most of our jobs on one GPU at once (K).
    cpu_slots
        Most jobs on the CPU at once.
    safety
        Factor on a job's memory estimate (≥ 1 is sensible).
    starvation_s
        Waiting time (s) that improves a job's effective priority by one class
        (``math.inf``: never).
    settle_s
        Time (s) a started job has to allocate its memory before a snapshot is trusted to see
        it; its reservation ends with the first snapshot taken more than ``settle_s`` after
        its start.
    cpu_memory_bytes
        Host memory (bytes) that CPU jobs may need together (None: no host-memory check).

    Raises
    ------
    ValueError
        For a non-positive ``gpu_slots``, ``safety`` or ``starvation_s``, a negative
        ``cpu_slots``, ``settle_s`` or ``cpu_memory_bytes``.
    """

    def __init__(
        self,
        gpu_slots: int = 2,
        cpu_slots: int = 1,
        safety: float = 1.2,
        starvation_s: float = 300.0,
        *,
        settle_s: float = 5.0,
        cpu_memory_bytes: int | None = None,
    ) -> None:
        if gpu_slots < 1:
            raise ValueError(f"gpu_slots must be >= 1, got {gpu_slots!r}")
        if cpu_slots < 0:
            raise ValueError(f"cpu_slots must be >= 0, got {cpu_slots!r}")
        if not safety > 0:
            raise ValueError(f"safety must be > 0, got {safety!r}")
        if not starvation_s > 0:
            raise ValueError(f"starvation_s must be > 0 s, got {starvation_s!r}")
        if not settle_s >= 0:
            raise ValueError(f"settle_s must be >= 0 s, got {settle_s!r}")
        if cpu_memory_bytes is not None and not cpu_memory_bytes >= 0:
            raise ValueError(f"cpu_memory_bytes must be >= 0, got {cpu_memory_bytes!r}")
        self.cpu_memory_bytes = None if cpu_memory_bytes is None else int(cpu_memory_bytes)
        self.gpu_slots = int(gpu_slots)
        self.cpu_slots = int(cpu_slots)
        self.safety = float(safety)
        self.starvation_s = float(starvation_s)
        self.settle_s = float(settle_s)
        self._jobs: dict[str, _Job] = {}
        self._gpus: dict[int, _Gpu] = {}
        self._ghosts: dict[int, list[_Reservation]] = {}
        self._cpu_jobs: set[str] = set()
        self._claims: dict[str, str] = {}
        self._cpu_claim: str | None = None
        self._gpu_view_seen = False
        self._now = 0.0

    # -- events ------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, now: float) -> list[Instruction]:
        """Queue a new job.

        Parameters
        ----------
        spec
            The job. Its ``submitted`` time orders it; 0 (unset) means ``now``.
        now
            Event time (s).

        Returns
        -------
        list of Instruction
            What the event causes; ``[]`` for an id already known (a duplicate submission).

        Raises
        ------
        ValueError
            For a negative estimate, ``max_attempts`` < 1, a non-positive timeout, or the id
            ``"cpu"`` (reserved for the device name, see :meth:`worker_lost`).
        """
        if spec.estimate_bytes < 0:
            raise ValueError(f"job {spec.id!r}: estimate_bytes < 0 ({spec.estimate_bytes})")
        if spec.max_attempts < 1:
            raise ValueError(f"job {spec.id!r}: max_attempts < 1 ({spec.max_attempts})")
        if spec.timeout_s is not None and not spec.timeout_s > 0:
            raise ValueError(f"job {spec.id!r}: timeout_s must be > 0 s, got {spec.timeout_s}")
        if spec.id == CPU or _gpu_index(spec.id) is not None:
            raise ValueError(f"job id {spec.id!r} is reserved for a device name")
        if spec.id in self._jobs:
            return []
        submitted = spec.submitted if spec.submitted > 0 else now
        need = math.ceil(spec.estimate_bytes * self.safety)
        job = _Job(spec=spec, submitted=submitted, need=need, since=now)
        self._jobs[spec.id] = job
        out: list[Instruction] = []
        never = self._never_fits(job)
        if never:
            out.append(self._end(job, "failed", never))
        return self._after(now, out)

    def gpus(self, snapshots: Iterable[GpuSnapshot], now: float) -> list[Instruction]:
        """Replace the GPU view with a new NVML snapshot taken at ``now``.

        Reservations end for jobs started more than ``settle_s`` before ``now`` and for ghosts
        of jobs killed before ``now``; GPUs missing from ``snapshots`` lose theirs (their
        running jobs keep running until a worker event says otherwise).
        """
        view: dict[int, _Gpu] = {}
        for snap in snapshots:
            gpu = _Gpu(snapshot=snap)
            old = self._gpus.get(snap.index)
            if old is not None:
                gpu.reservations = {
                    j: r for j, r in old.reservations.items() if not now > r.since + self.settle_s
                }
            view[snap.index] = gpu
        for job in self._jobs.values():
            index = _gpu_index(job.device or "") if job.state == "running" else None
            if index is not None and index in view:
                gpu = view[index]
                gpu.jobs.add(job.spec.id)
                if job.spec.id not in gpu.reservations:
                    gpu.seen[job.spec.id] = job.need
        self._gpus = view
        self._gpu_view_seen = True
        self._ghosts = {
            i: kept
            for i, ghosts in self._ghosts.items()
            if i in view and (kept := [g for g in ghosts if not now > g.since])
        }
        return self._after(now, [])

    def finished(self, job_id: str, now: float, *, device: str | None = None) -> list[Instruction]:
        """Record that a running job finished successfully.

        ``device``, when given, must be the job's device, otherwise the event is stale and
        ignored.
        """
        job = self._running(job_id, device)
        if job is None:
            return []
        self._release(job, ghost=False, now=now)
        out: list[Instruction] = [self._end(job, "done", "")]
        return self._after(now, out)

    def failed(
        self,
        job_id: str,
        error: str,
        now: float,
        oom: bool = False,
        *,
        device: str | None = None,
        retry: bool = True,
    ) -> list[Instruction]:
        """Record that a running job failed with ``error``; ``oom``: out of memory.

        Requeues it (for an out-of-memory on a GPU: needing more free memory than its GPU
        had), or fails it for good after ``max_attempts`` starts, when nothing could ever hold
        it, when it ran out of memory on the CPU, or without ``retry`` (a failure of the job's
        own, e.g. bad parameters, that a retry would repeat).
        """
        job = self._running(job_id, device)
        if job is None:
            return []
        where = job.device or "?"
        gpu_oom = oom and _gpu_index(where) is not None
        self._release(job, ghost=False, now=now)
        out: list[Instruction] = []
        if gpu_oom:
            job.min_free = max(job.min_free, job.free_at_start + 1)
            job.need = max(job.need, job.min_free)
        if oom and not gpu_oom:
            reason = f"out of memory on {where} (not retried: it would run out again): {error}"
            out.append(self._end(job, "failed", reason))
        elif not retry and not gpu_oom:
            out.append(self._end(job, "failed", f"{error} (on {where}; not retried)"))
        elif job.attempts >= job.spec.max_attempts:
            out.append(self._end(job, "failed", f"{error} (on {where}, attempt {job.attempts})"))
        elif gpu_oom and not self._cpu_possible(job) and not self._could_ever_fit(job):
            largest = max(g.snapshot.total_bytes for g in self._gpus.values())
            out.append(
                self._end(
                    job,
                    "failed",
                    f"out of memory on {where} with {job.free_at_start} bytes free; it needs "
                    f"more than any GPU has (largest {largest} bytes): {error}",
                )
            )
        else:
            reason = f"out of memory on {where}: {error}" if gpu_oom else f"{error} (on {where})"
            out.append(self._requeue(job, reason, now))
        return self._after(now, out)

    def cancel(self, job_id: str, now: float) -> list[Instruction]:
        """Cancel a job: a queued one ends at once, a running one is killed (:class:`Cancel`)."""
        job = self._jobs.get(job_id)
        if job is None or job.state in FINAL_STATES:
            return []
        out: list[Instruction] = []
        if job.state == "running":
            self._release(job, ghost=True, now=now)
            out.append(Cancel(job_id, "cancelled"))
        out.append(self._end(job, "cancelled", "cancelled"))
        return self._after(now, out)

    def worker_lost(self, target: str, now: float, *, oom: bool = False) -> list[Instruction]:
        """Record that a worker died or stopped answering.

        Parameters
        ----------
        target
            A device (``"cpu"`` or ``"cuda:<index>"``: every job running there is lost) or a
            job id (that job is lost).
        now
            Event time (s).
        oom
            The kernel's out-of-memory killer killed the worker: the lost jobs fail at once
            (a retry would be killed again).

        Returns
        -------
        list of Instruction
            Each lost job is requeued, or failed once it has used ``max_attempts`` starts (or
            at once with ``oom``).
        """
        if target == CPU or _gpu_index(target) is not None:
            lost = [j for j in self._jobs.values() if j.state == "running" and j.device == target]
        else:
            job = self._running(target, None)
            lost = [] if job is None else [job]
        if not lost:
            return []
        out: list[Instruction] = []
        for job in sorted(lost, key=lambda j: j.spec.id):
            where = job.device
            self._release(job, ghost=True, now=now)
            if oom:
                reason = (f"worker on {where} was killed by the out-of-memory killer; not "
                          "retried: it would be killed again")  # fmt: skip
                out.append(self._end(job, "failed", reason))
            elif job.attempts >= job.spec.max_attempts:
                reason = f"worker lost on {where} after {job.attempts} attempts"
                out.append(self._end(job, "failed", reason))
            else:
                out.append(self._requeue(job, f"worker lost on {where}", now))
        return self._after(now, out)

    def tick(self, now: float) -> list[Instruction]:
        """Let time pass: kill jobs past their timeout, then schedule."""
        return self._after(now, [])

    # -- views -------------------------------------------------------------------------------

    def queued(self, now: float | None = None) -> list[QueuedJob]:
        """Return the waiting jobs in queue order at ``now`` (default: the last event's time)."""
        t = self._now if now is None else now
        return [
            QueuedJob(
                job_id=j.spec.id,
                kind=j.spec.kind,
                effective_rank=self.effective_rank(j.spec.id, t),
                submitted=j.submitted,
                waited_s=max(0.0, t - j.submitted),
                need_bytes=j.need,
                attempts=j.attempts,
                claim=self._claims.get(j.spec.id),
            )
            for j in self._order(t)
        ]

    def running(self) -> list[RunningJob]:
        """Return the running jobs, by start time then id."""
        jobs = [j for j in self._jobs.values() if j.state == "running"]
        jobs.sort(key=lambda j: (j.started_at or 0.0, j.spec.id))
        out = []
        for j in jobs:
            index = _gpu_index(j.device or "")
            reserved = 0
            if index is not None and index in self._gpus:
                r = self._gpus[index].reservations.get(j.spec.id)
                reserved = r.bytes if r is not None else 0
            out.append(
                RunningJob(
                    job_id=j.spec.id,
                    kind=j.spec.kind,
                    device=j.device or "",
                    started_at=j.started_at or 0.0,
                    attempts=j.attempts,
                    need_bytes=j.need,
                    reserved_bytes=reserved,
                )
            )
        return out

    def snapshots(self) -> list[GpuSnapshot]:
        """Return the current GPU view (the last snapshot), by index."""
        return [self._gpus[i].snapshot for i in sorted(self._gpus)]

    def reserved_bytes(self) -> dict[str, int]:
        """Return the memory reserved per GPU (bytes, ghosts included), by device name."""
        return {self._gpus[i].snapshot.device: self._reserved(i) for i in sorted(self._gpus)}

    def free_bytes(self) -> dict[str, int]:
        """Return each GPU's free memory for placement (bytes): snapshot free − reserved."""
        return {self._gpus[i].snapshot.device: self._free(i) for i in sorted(self._gpus)}

    def potential_bytes(self) -> dict[str, int]:
        """Return each GPU's potential memory (bytes): its free memory once our jobs end."""
        return {self._gpus[i].snapshot.device: self._potential(i) for i in sorted(self._gpus)}

    def claims(self) -> dict[str, str]:
        """Return the claimed devices (device name → the waiting job that claims it).

        GPUs by ``"cuda:<index>"``; ``"cpu"`` when a waiting job claims the CPU's memory.
        """
        out = {device: job_id for job_id, device in sorted(self._claims.items())}
        if self._cpu_claim is not None:
            out[CPU] = self._cpu_claim
        return out

    def cpu_memory(self) -> dict[str, int | None]:
        """Return the CPU's memory accounting: ``{"budget", "used", "free"}`` (bytes).

        ``used``: the needs of the running CPU jobs; ``budget`` and ``free`` are None without
        a ``cpu_memory_bytes`` budget.
        """
        used = self._cpu_used()
        budget = self.cpu_memory_bytes
        return {"budget": budget, "used": used, "free": None if budget is None else budget - used}

    def counts(self) -> dict[str, int]:
        """Return the number of jobs in each state (``JOB_STATES``)."""
        out = dict.fromkeys(JOB_STATES, 0)
        for j in self._jobs.values():
            out[j.state] += 1
        return out

    def state_of(self, job_id: str) -> str | None:
        """Return the state of a job (one of ``JOB_STATES``), None if unknown."""
        job = self._jobs.get(job_id)
        return None if job is None else job.state

    def reason_of(self, job_id: str) -> str:
        """Return why a job failed, was cancelled or last requeued ('' if none or unknown)."""
        job = self._jobs.get(job_id)
        return "" if job is None else job.reason

    def effective_rank(self, job_id: str, now: float) -> int:
        """Return a job's rank after the starvation guard at ``now``.

        Raises
        ------
        KeyError
            For an unknown job id.
        """
        job = self._jobs[job_id]
        waited = max(0.0, now - job.submitted)
        boost = math.floor(waited / self.starvation_s)
        return max(0, int(job.spec.kind) - boost)

    # -- internals ---------------------------------------------------------------------------

    def _running(self, job_id: str, device: str | None) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is None or job.state != "running":
            return None
        if device is not None and device != job.device:
            return None
        return job

    def _order(self, now: float) -> list[_Job]:
        queued = [j for j in self._jobs.values() if j.state == "queued"]
        queued.sort(key=lambda j: (self.effective_rank(j.spec.id, now), j.submitted, j.spec.id))
        return queued

    def _reserved(self, index: int) -> int:
        gpu = self._gpus[index]
        live = sum(r.bytes for r in gpu.reservations.values())
        return live + sum(g.bytes for g in self._ghosts.get(index, []))

    def _free(self, index: int) -> int:
        return self._gpus[index].snapshot.free_bytes - self._reserved(index)

    def _potential(self, index: int) -> int:
        gpu = self._gpus[index]
        snap = gpu.snapshot
        return min(snap.total_bytes, snap.free_bytes + sum(gpu.seen.values()))

    def _cpu_allowed(self, job: _Job) -> bool:
        return job.spec.allow_cpu and not job.spec.needs_gpu and self.cpu_slots > 0

    def _cpu_possible(self, job: _Job) -> bool:
        """Whether the job may run on the CPU and its need fits the whole CPU budget."""
        budget = self.cpu_memory_bytes
        return self._cpu_allowed(job) and (budget is None or job.need <= budget)

    def _cpu_used(self) -> int:
        return sum(self._jobs[j].need for j in self._cpu_jobs)

    def _never_fits(self, job: _Job) -> str:
        """Why a job that may use the CPU could never start ('' if it could, or may wait)."""
        budget = self.cpu_memory_bytes
        if budget is None or not self._cpu_allowed(job) or job.need <= budget:
            return ""
        if not self._gpu_view_seen:
            return ""  # no GPU view yet: a GPU may hold it
        largest = max((g.snapshot.total_bytes for g in self._gpus.values()), default=0)
        if job.need <= largest:
            return ""
        return (
            f"needs {job.need} bytes (estimate x safety): more than the CPU memory budget "
            f"({budget} bytes) and any GPU (largest {largest} bytes)"
        )

    def _could_ever_fit(self, job: _Job) -> bool:
        if not self._gpus:
            return True  # no view (yet): assume a GPU may come back
        return any(job.need <= g.snapshot.total_bytes for g in self._gpus.values())

    def _release(self, job: _Job, *, ghost: bool, now: float) -> None:
        """Take a running job off its device; a killed job's reservation becomes a ghost."""
        device = job.device or ""
        index = _gpu_index(device)
        if index is None:
            self._cpu_jobs.discard(job.spec.id)
        elif index in self._gpus:
            gpu = self._gpus[index]
            gpu.jobs.discard(job.spec.id)
            r = gpu.reservations.pop(job.spec.id, None)
            if r is not None and ghost:
                self._ghosts.setdefault(index, []).append(
                    _Reservation(job.spec.id, r.bytes, since=now, ghost=True)
                )
        job.device = None
        job.started_at = None

    def _end(self, job: _Job, state: str, reason: str) -> Instruction:
        job.state = state
        job.reason = reason
        self._claims.pop(job.spec.id, None)
        if state == "done":
            return Done(job.spec.id)
        if state == "failed":
            return Fail(job.spec.id, reason)
        return Cancelled(job.spec.id, reason)

    def _requeue(self, job: _Job, reason: str, now: float) -> Requeue:
        job.state = "queued"
        job.reason = reason
        job.since = now
        return Requeue(job.spec.id, reason, job.attempts)

    def _start(self, job: _Job, device: str, now: float) -> Start:
        job.state = "running"
        job.device = device
        job.started_at = now
        job.attempts += 1
        index = _gpu_index(device)
        if index is None:
            self._cpu_jobs.add(job.spec.id)
        else:
            gpu = self._gpus[index]
            job.free_at_start = self._free(index)
            gpu.jobs.add(job.spec.id)
            gpu.reservations[job.spec.id] = _Reservation(job.spec.id, job.need, since=now)
        return Start(job.spec.id, device, job.attempts)

    def _timeouts(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        late = [
            j
            for j in self._jobs.values()
            if j.state == "running"
            and j.spec.timeout_s is not None
            and j.started_at is not None
            and now - j.started_at >= j.spec.timeout_s
        ]
        for job in sorted(late, key=lambda j: j.spec.id):
            where, timeout = job.device, job.spec.timeout_s
            self._release(job, ghost=True, now=now)
            reason = f"timeout: ran longer than {timeout} s on {where}"
            out.append(Cancel(job.spec.id, reason))
            out.append(self._end(job, "failed", reason))
        return out

    def _after(self, now: float, out: list[Instruction]) -> list[Instruction]:
        """Finish an event: timeouts, then one scheduling pass."""
        self._now = max(self._now, now)
        out.extend(self._timeouts(now))
        out.extend(self._schedule(now))
        return out

    def _schedule(self, now: float) -> list[Instruction]:
        """Walk the queue in order and start every job that can start (see the rules)."""
        out: list[Instruction] = []
        claims: dict[int, _Job] = {}
        potential = {i: self._potential(i) for i in self._gpus}
        cpu_free = self.cpu_slots - len(self._cpu_jobs)
        budget = self.cpu_memory_bytes
        cpu_claimer: _Job | None = None
        self._claims = {}
        self._cpu_claim = None

        def cpu_fits(job: _Job) -> bool:
            if budget is None:
                return True
            if self._cpu_used() + job.need > budget:
                return False
            if cpu_claimer is None:
                return True
            since = sum(
                self._jobs[j].need
                for j in self._cpu_jobs
                if (self._jobs[j].started_at or 0.0) >= cpu_claimer.since
            )
            return cpu_claimer.need + job.need + since <= budget

        def claim_allows(index: int, job: _Job) -> bool:
            claimer = claims.get(index)
            if claimer is None:
                return True
            since = sum(
                self._jobs[j].need
                for j in self._gpus[index].jobs
                if (self._jobs[j].started_at or 0.0) >= claimer.since
            )
            return claimer.need + job.need + since <= potential[index]

        for job in self._order(now):
            fitting = [
                i
                for i, gpu in self._gpus.items()
                if len(gpu.jobs) < self.gpu_slots
                and job.need <= self._free(i)
                and claim_allows(i, job)
            ]
            if fitting:
                best = min(
                    fitting,
                    key=lambda i: (self._gpus[i].snapshot.utilization, -self._free(i), i),
                )
                out.append(self._start(job, self._gpus[best].snapshot.device, now))
                continue
            if self._cpu_allowed(job) and cpu_free > 0 and cpu_fits(job):
                cpu_free -= 1
                out.append(self._start(job, CPU, now))
                continue
            if budget is not None and cpu_claimer is None and self._cpu_possible(job):
                cpu_claimer = job
                self._cpu_claim = job.spec.id
            candidates = [i for i in self._gpus if i not in claims and job.need <= potential[i]]
            if candidates:
                target = max(candidates, key=lambda i: (potential[i], -i))
                claims[target] = job
                self._claims[job.spec.id] = self._gpus[target].snapshot.device
        return out

"""The scheduler service: the durable store, the decisions and the worker processes, joined.

:class:`Scheduler` owns a :class:`~scheduler.store.JobStore` (what is to be done, durably), a
:class:`~scheduler.state.SchedulerState` (what to do next; pure) and a
:class:`~scheduler.workers.WorkerPool` (who does it), and a :class:`~scheduler.gpu.GpuMonitor`
for NVML snapshots. One loop thread feeds the state its events: new jobs found in the store
(submitted by this process or by others, e.g. ``mr0-scheduler submit``), GPU snapshots, clock
ticks (timeouts), and cancellations written to the store (``mr0-scheduler cancel``); worker
outcomes and lost workers arrive on the pool's thread. Every instruction the state returns is
carried out here: ``Start`` claims the job in the store (its attempt token) and hands it to an
idle worker of that device; ``Requeue``/``Fail`` record it; ``Cancel`` kills the worker.

A finished job's working folder (its files and ``summary.json``) becomes its result in the
store (:meth:`JobStore.complete <scheduler.store.JobStore.complete>`, accepted only with the
current token, so no job completes twice). :meth:`Scheduler.start` first recovers the store:
jobs a killed scheduler left running are queued again (attempts + 1, up to their limit), jobs
that are not durable are cancelled, and the working folders of the previous run are removed.

Interactive calls (:meth:`Scheduler.call`: a preview, a session's reconstruction) take the
same path through the state (memory estimate, device choice, priority class, timeout,
attempts; :meth:`Scheduler.status` shows them) but not through the store: their inputs are
objects handed to the worker in its task (``ray.put`` on Ray), their progress and result come
back on the pool's result channel, and the loop's threads push the end to the call's
:class:`~scheduler.calls.CallFuture`. Nothing of a call is written to disk, and nothing of it
outlives this process (:meth:`Scheduler.stop` cancels the calls still pending).

CPU jobs are placed against a host-memory budget (``cpu_memory_bytes``; by default 75 % of the
memory available when the scheduler is made), as GPU jobs against NVML's free memory. With a
:class:`~scheduler.retention.RetentionPolicy` the scheduler deletes old results itself (at
start and every ``interval_s``); the server instead puts :attr:`Scheduler.store` among its
own retention areas. Every file and folder under the root is private (``0600``/``0700``).

Functions of a layer above (the server's background MRD sessions) come as plug-in modules
(``function_modules``, :func:`scheduler.functions.load_function_modules`): the scheduler
imports them when it is made, so a bad name fails it at once, and every worker process (or Ray
task) imports them before it runs a function.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .calls import CallCancelledError, CallError, CallFuture, CallTimeoutError
from .functions import CALLS, FUNCTIONS, INPUT_DIR, load_function_modules
from .gpu import GpuMonitor
from .model import JobKind, JobSpec
from .paths import private_dir, write_private
from .retention import RetentionPolicy, RetentionTimer
from .state import Cancel, Cancelled, Done, Fail, Instruction, Requeue, SchedulerState, Start
from .store import JobRecord, JobStore, StoreError
from .workers import Outcome, Task, WorkerPool

__all__ = [
    "CALL_HISTORY",
    "CPU_MEMORY_SHARE",
    "Scheduler",
    "host_memory_budget",
    "job_result",
]

CPU_MEMORY_SHARE = 0.75
"""Share of the available host memory that CPU jobs may need together (``"auto"`` budget)."""

log = logging.getLogger("mr0.scheduler")

_FINAL = ("done", "failed", "cancelled")

CALL_HISTORY = 200
"""Ended calls that :meth:`Scheduler.calls` remembers (the newest)."""


@dataclass
class _Call:
    """A pending call: its spec for the state, its objects, its future and listener."""

    spec: JobSpec
    inputs: dict[str, Any]
    future: CallFuture
    on_progress: Callable[[dict[str, Any]], None] | None
    session: str
    needs_gpu: bool
    token: int = 0
    started: float | None = None
    ended: float | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Scheduler:
    """An in-process scheduler with worker processes (see the module docstring).

    Parameters
    ----------
    root
        The store folder (created if missing).
    monitor
        The GPU monitor; default one on NVML (CPU only without a driver).
    gpu_slots
        Worker processes, and so concurrent jobs, per GPU.
    cpu_workers
        CPU worker processes.
    safety, starvation_s, settle_s
        :class:`~scheduler.state.SchedulerState` settings.
    tick_s
        Period of the loop (s): snapshots, timeouts, store polling.
    cpu_threads
        Torch threads per CPU worker (default: cores / CPU workers).
    backend
        ``"local"`` (worker processes here) or ``"ray"``: jobs run as Ray tasks
        (:class:`scheduler.ray_backend.RayPool`); Ray places them on the cluster's GPUs by
        their estimates, this scheduler keeps order, priorities, retries and durability.
    ray_address
        With ``backend="ray"``: ``"auto"``, ``"HOST:PORT"``, or None (a local Ray instance).
    ray_options
        Further :class:`scheduler.ray_backend.RayBackend` arguments (``gpu_bytes``,
        ``num_gpus`` for a local instance, ...).
    cpu_memory_bytes
        Host memory CPU jobs may need together (bytes); ``"auto"``:
        :func:`host_memory_budget`; None: no host-memory check (slots only). With
        ``backend="ray"`` only ``"auto"`` or None (Ray places jobs by their resources).
    retention
        Delete old results by this policy at start and periodically (None: keep everything;
        the server passes None and includes :attr:`store` in its own retention).
    function_modules
        Plug-in modules whose import registers further job or call functions (dotted names,
        e.g. ``("gadgets.library.background_jobs",)``): imported here and by every worker
        (:func:`scheduler.functions.load_function_modules`). Only the program that makes the
        scheduler names them, never a job or a client.

    Raises
    ------
    ValueError
        For a bad setting, or a function module name that is not a dotted module name.
    scheduler.functions.FunctionModuleError
        If a function module cannot be imported or registers no function.

    Attributes
    ----------
    listeners
        Callables given an event dict whenever a job or call starts (``{"event": "start",
        "job", "function", "kind", "device", "wait_s"}``; ``wait_s`` from submission to this
        start) or finishes (``{"event": "done", "job", "function", "kind", "device",
        "run_s"}``); a call's events also have ``"call": True``. They run under the
        scheduler's lock and must be quick; one that raises is logged and skipped (metrics,
        :mod:`gadgets.serve.status`).
    """

    def __init__(
        self,
        root: Path | str,
        monitor: GpuMonitor | None = None,
        gpu_slots: int = 1,
        cpu_workers: int = 1,
        safety: float = 1.2,
        starvation_s: float = 300.0,
        settle_s: float = 5.0,
        tick_s: float = 0.1,
        cpu_threads: int | None = None,
        backend: str = "local",
        ray_address: str | None = None,
        ray_options: dict[str, Any] | None = None,
        cpu_memory_bytes: int | Literal["auto"] | None = "auto",
        retention: RetentionPolicy | None = None,
        function_modules: Iterable[str] = (),
    ) -> None:
        # first: a module that cannot be loaded fails the scheduler before it makes anything
        self.function_modules = load_function_modules(function_modules)
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        if backend == "ray":  # Ray places every job by its own resources: no host budget here
            if cpu_memory_bytes not in ("auto", None):
                raise ValueError("cpu_memory_bytes applies to the local backend, not to Ray")
            cpu_memory_bytes = None
        elif cpu_memory_bytes == "auto":
            cpu_memory_bytes = host_memory_budget()
        elif cpu_memory_bytes is not None and (
            isinstance(cpu_memory_bytes, bool)
            or not isinstance(cpu_memory_bytes, int)
            or cpu_memory_bytes < 0
        ):
            raise ValueError(
                f"cpu_memory_bytes must be bytes >= 0, 'auto' or None, got {cpu_memory_bytes!r}"
            )
        self.root = Path(root)
        self.store = JobStore(self.root)
        self.monitor = monitor if monitor is not None else GpuMonitor(interval_s=1.0)
        self.backend = backend
        if backend == "ray":
            from .ray_backend import RayBackend, RayPool

            ray = RayBackend(ray_address, safety=safety, function_modules=self.function_modules,
                             **(ray_options or {}))  # fmt: skip
            self.pool: Any = RayPool(ray, on_outcome=self._outcome, on_lost=self._lost)
            cpu_workers = self.pool.slots
        else:
            gpus = [g.index for g in self.monitor.snapshot()]
            self.pool = WorkerPool(gpus, gpu_slots=gpu_slots, cpu_workers=cpu_workers,
                                   on_outcome=self._outcome, on_lost=self._lost,
                                   cpu_threads=cpu_threads, on_progress=self._progress,
                                   function_modules=self.function_modules)  # fmt: skip
        self.state = SchedulerState(gpu_slots=gpu_slots, cpu_slots=cpu_workers, safety=safety,
                                    starvation_s=starvation_s, settle_s=settle_s,
                                    cpu_memory_bytes=cpu_memory_bytes)  # fmt: skip
        self.tick_s = tick_s
        self._lock = threading.RLock()
        self._tokens: dict[str, int] = {}
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot_at: float | None = None
        self.work = self.root / "work"
        self.retention = retention
        self._retention_timer: RetentionTimer | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._calls: dict[str, _Call] = {}
        self._ended_calls: deque[_Call] = deque(maxlen=CALL_HISTORY)
        self._ray_progress_warned = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> list[str]:
        """Recover the store, start the workers and the loop; return the requeued job ids.

        The previous run's working folders go (their jobs were requeued with fresh working
        folders, or, not being durable, cancelled); with a :attr:`retention` policy, old
        results go too, now and every ``interval_s``.
        """
        requeued = self.store.recover()
        if requeued:
            log.warning("jobs requeued after a restart", extra={"event": "recover",
                                                                 "jobs": requeued})  # fmt: skip
        shutil.rmtree(self.work, ignore_errors=True)
        private_dir(self.work)
        if self.retention is not None and self.retention.active:
            self._retention_timer = RetentionTimer([self.store], self.retention)
            self._retention_timer.start()
        self.pool.start()
        with self._lock:
            self._feed_snapshots(force=True)
            self._sync_store()
        self._thread = threading.Thread(target=self._loop, name="mr0-scheduler", daemon=True)
        self._thread.start()
        return requeued

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the loop and the workers (running jobs stay ``running`` for the next start).

        Calls still pending end as cancelled (:class:`~scheduler.calls.CallCancelledError`):
        nothing of them outlives this process.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._retention_timer is not None:
            self._retention_timer.stop(timeout_s)
        with self._lock:
            pending = list(self._calls)
        for call_id in pending:
            self._end_call(call_id, "cancelled", error="the scheduler stopped")
        self.pool.stop(timeout_s)

    def __enter__(self) -> Scheduler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API ------------------------------------------------------------------------------------

    def submit(
        self,
        function: str,
        params: dict[str, Any] | None = None,
        kind: str | JobKind = JobKind.BATCH,
        *,
        estimate_bytes: int | None = None,
        allow_cpu: bool = True,
        needs_gpu: bool = False,
        timeout_s: float | None = None,
        max_attempts: int = 3,
        job_id: str | None = None,
        durable: bool | None = None,
        inputs: Path | None = None,
    ) -> str:
        """Queue a job in the store; return its id.

        ``estimate_bytes`` None: :func:`scheduler.estimate.estimate_job` of the function and
        parameters (0 when it has no estimate for the function). ``durable`` (see
        :class:`~scheduler.model.JobSpec`) None: True. ``inputs``: a folder of
        :meth:`JobStore.stage_input <scheduler.store.JobStore.stage_input>` with the job's input
        files, kept in the store with the job; every attempt finds them (hard links) in
        ``workdir/input/``, which is not part of the result.

        Raises
        ------
        ValueError
            For an unknown function or bad parameters.
        """
        if function not in FUNCTIONS:
            raise ValueError(
                f"unknown job function {function!r} (known: {', '.join(sorted(FUNCTIONS))}; a "
                f"plug-in's functions need its module in function_modules)"
            )
        params = dict(params or {})
        if durable is None:
            durable = True
        if estimate_bytes is None:
            estimate_bytes = estimate_or_zero(function, params)
        spec = JobSpec(
            id=job_id or uuid.uuid4().hex[:16], kind=JobKind.parse(kind),
            estimate_bytes=int(estimate_bytes), function=function, params=params,
            allow_cpu=allow_cpu, needs_gpu=needs_gpu, timeout_s=timeout_s,
            submitted=time.time(), max_attempts=max_attempts, durable=bool(durable),
        )  # fmt: skip
        self.store.submit(spec, inputs=inputs)
        with self._lock:
            self._sync_store()
        return spec.id

    def call(
        self,
        function: str,
        inputs: Mapping[str, Any],
        params: dict[str, Any] | None = None,
        kind: str | JobKind = JobKind.PREVIEW,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        *,
        estimate_bytes: int | None = None,
        allow_cpu: bool = True,
        needs_gpu: bool = False,
        timeout_s: float | None = None,
        max_attempts: int = 1,
        session: str = "",
    ) -> CallFuture:
        """Run a call function on objects in a worker; return its future at once.

        Parameters
        ----------
        function
            A call function's name (:data:`scheduler.functions.CALLS`).
        inputs
            Its input objects by name (a ``Sequence``, a built ``SimData``, a ``KData``, a
            text, arrays). Objects the caller built, not a client's bytes: they are pickled to
            reach the worker (to Ray by ``ray.put``), and the worker is our own process. They
            are held here until the call ends (a retry sends them again).
        params
            Its JSON-able parameters.
        kind
            The priority class (``preview``, ``retrosim``, ``recon``, ``batch``).
        on_progress
            Called with each progress message (a dict) the function sends, on the pool's
            thread; it must be quick. Not relayed from Ray tasks (a warning says so once).
        estimate_bytes
            Peak memory (bytes); None: :func:`scheduler.estimate.estimate_call` of the
            function, inputs and parameters (0 when it has none).
        allow_cpu, needs_gpu, timeout_s, max_attempts
            As for :meth:`submit` (``timeout_s`` bounds the run, not the wait in the queue).
        session
            The caller's session: :meth:`cancel_session` cancels its pending calls.

        Returns
        -------
        CallFuture
            Resolved by the scheduler's threads with the function's result object, or with
            :class:`~scheduler.calls.CallError` (the worker's message),
            :class:`~scheduler.calls.CallTimeoutError` or
            :class:`~scheduler.calls.CallCancelledError`. Not durable: no file, no store record;
            :meth:`status` lists it while it waits or runs, :meth:`calls` after.

        Raises
        ------
        ValueError
            For an unknown function, inputs that are not a dict with text keys, or bad
            settings (a negative estimate, ``max_attempts`` < 1, a timeout <= 0).
        RuntimeError
            If the scheduler is not running.
        """
        if function not in CALLS:
            raise ValueError(
                f"unknown call function {function!r} (known: {', '.join(sorted(CALLS))})"
            )
        if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
            raise ValueError("call inputs must be a dict with text keys")
        if self._thread is None or self._stop.is_set():
            raise RuntimeError("the scheduler is not running: start() it first")
        params = dict(params or {})
        if estimate_bytes is None:
            estimate_bytes = _estimate_call(function, inputs, params)
        call_id = f"call-{uuid.uuid4().hex[:16]}"
        job_kind = JobKind.parse(kind)
        spec = JobSpec(
            id=call_id, kind=job_kind, estimate_bytes=int(estimate_bytes), function=function,
            params=params, allow_cpu=allow_cpu, needs_gpu=needs_gpu, timeout_s=timeout_s,
            submitted=time.time(), max_attempts=max_attempts, durable=False,
        )  # fmt: skip
        if self.backend == "ray":  # as for jobs: Ray decides GPU or not
            spec = replace(spec, needs_gpu=False, allow_cpu=True)
            if on_progress is not None and not self._ray_progress_warned:
                self._ray_progress_warned = True
                log.warning("progress messages of calls are not relayed from Ray tasks")
        future = CallFuture(call_id, function, job_kind.name.lower(), self._cancel_call)
        record = _Call(spec, dict(inputs), future, on_progress, str(session), needs_gpu)
        with self._lock:
            self._calls[call_id] = record
            try:
                self._apply(self.state.submit(spec, time.time()))
            except ValueError:
                del self._calls[call_id]
                raise
        return future

    def cancel_session(self, session: str) -> int:
        """Cancel the pending calls of ``session`` (a session that ended); return how many."""
        if not session:
            return 0
        with self._lock:
            ids = [c for c, call in self._calls.items() if call.session == session]
        return sum(self._cancel_call(c) for c in ids)

    def calls(self, limit: int = CALL_HISTORY) -> list[dict[str, Any]]:
        """Return the calls pending and the last ended ones, newest first (JSON-able)."""
        with self._lock:
            records = [*self._ended_calls, *self._calls.values()]
        records.sort(key=lambda c: c.spec.submitted, reverse=True)
        return [
            {
                "call": c.spec.id,
                "function": c.spec.function,
                "kind": c.spec.kind.name.lower(),
                "state": c.future.state,
                "device": c.future.device,
                "attempts": c.future.attempts,
                "estimate_bytes": c.spec.estimate_bytes,
                "timeout_s": c.spec.timeout_s,
                "max_attempts": c.spec.max_attempts,
                "submitted": c.spec.submitted,
                "started": c.started,
                "ended": c.ended,
                "error": c.error,
            }
            for c in records[: max(0, limit)]
        ]

    def forget(self, job_id: str) -> bool:
        """Delete a done job's result files once its submitter has read them.

        The record stays (``done``, for status and history) until retention removes it.
        Returns False for a job that is not done (nothing to delete).
        """
        return self.store.drop_result(job_id)

    def wait(self, job_id: str, timeout_s: float | None = None) -> JobRecord:
        """Wait until the job is final (or ``timeout_s`` passed); return its record."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            record = self.store.get(job_id)
            if record.state in _FINAL or (deadline is not None and time.monotonic() > deadline):
                return record
            time.sleep(0.02)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued or running job or call; return whether it was not yet final."""
        if job_id in self._calls:
            return self._cancel_call(job_id)
        with self._lock:
            ok = self.store.cancel(job_id)
            self._apply(self.state.cancel(job_id, time.time()))
            return ok

    def status(self) -> dict[str, Any]:
        """GPUs (NVML view and our reservations), queue, running jobs, counts (JSON-able)."""
        with self._lock:
            now = time.time()
            reserved = self.state.reserved_bytes()
            return {
                "gpus": [
                    {
                        "device": g.device,
                        "name": g.name,
                        "total_bytes": g.total_bytes,
                        "free_bytes": g.free_bytes,
                        "utilization": g.utilization,
                        "temperature_c": g.temperature_c,
                        "processes": len(g.processes),
                        "reserved_bytes": reserved.get(g.device, 0),
                    }
                    for g in self.monitor.snapshot()
                ],
                "gpu_monitor": "nvml" if self.monitor.available else self.monitor.reason,
                "queued": [
                    {
                        "job": q.job_id,
                        "call": q.job_id in self._calls,
                        "kind": q.kind.name.lower(),
                        "waited_s": round(q.waited_s, 1),
                        "need_bytes": q.need_bytes,
                        "claim": q.claim,
                        "attempts": q.attempts,
                    }
                    for q in self.state.queued(now)
                ],
                "running": [
                    {
                        "job": r.job_id,
                        "call": r.job_id in self._calls,
                        "kind": r.kind.name.lower(),
                        "device": r.device,
                        "seconds": round(now - r.started_at, 1),
                        "attempts": r.attempts,
                    }
                    for r in self.state.running()
                ],
                "counts": self.store.counts(),
                "calls": {
                    "queued": sum(c.future.state == "queued" for c in self._calls.values()),
                    "running": sum(c.future.state == "running" for c in self._calls.values()),
                },
                "workers": self.pool.pids(),
                "function_modules": list(self.function_modules),
                "cpu_memory": self.state.cpu_memory(),
            }

    # -- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                with self._lock:
                    self._feed_snapshots()
                    self._sync_store()
                    self._apply(self.state.tick(time.time()))
            except Exception:  # the loop must survive anything
                log.exception("scheduler loop error")

    def _feed_snapshots(self, force: bool = False) -> None:
        if self.backend == "ray":  # Ray places on the cluster's GPUs; the state sees none
            if force:
                self._apply(self.state.gpus([], time.time()))
            return
        snaps = self.monitor.snapshot()
        taken = self.monitor.taken_at
        if force or (taken is not None and taken != self._snapshot_at):
            self._snapshot_at = taken
            self._apply(self.state.gpus(snaps, time.time()))

    def _sync_store(self) -> None:
        """Queue jobs new in the store; cancel jobs cancelled in the store."""
        now = time.time()
        for record in self.store.queued():
            if record.id in self._known:
                continue
            self._known.add(record.id)
            spec = record.spec()
            left = max(1, spec.max_attempts - record.attempts)  # starts already used count
            spec = JobSpec(**{**spec.__dict__, "max_attempts": left})
            if self.backend == "ray":  # Ray decides GPU or not; here every job takes a slot
                spec = JobSpec(**{**spec.__dict__, "needs_gpu": False, "allow_cpu": True})
            self._apply(self.state.submit(spec, now))
        for job in self.state.running():
            if job.job_id in self._calls:  # calls have no store record
                continue
            try:
                if self.store.get(job.job_id).state == "cancelled":
                    self._apply(self.state.cancel(job.job_id, now))
            except StoreError:
                continue

    # -- instructions ---------------------------------------------------------------------------

    def _apply(self, instructions: list[Instruction]) -> None:
        for ins in instructions:
            if ins.job_id in self._calls:
                self._apply_call(ins)
            elif isinstance(ins, Start):
                self._start(ins)
            elif isinstance(ins, Requeue):
                token = self._tokens.pop(ins.job_id, None)
                if token is not None:
                    self.store.fail(ins.job_id, token, ins.reason, retry=True)
                log.info("job requeued", extra={"event": "requeue", "job": ins.job_id,
                                                "reason": ins.reason})  # fmt: skip
            elif isinstance(ins, Fail):
                token = self._tokens.pop(ins.job_id, None)
                if token is not None:
                    self.store.fail(ins.job_id, token, ins.reason, retry=False)
                else:
                    self.store.cancel(ins.job_id, ins.reason)
                log.warning("job failed", extra={"event": "job_failed", "job": ins.job_id,
                                                 "reason": ins.reason})  # fmt: skip
            elif isinstance(ins, Cancel):
                self.pool.cancel(ins.job_id)
            elif isinstance(ins, Cancelled):
                self._tokens.pop(ins.job_id, None)
                self.store.cancel(ins.job_id, ins.reason)

    def _start(self, ins: Start) -> None:
        record = self.store.get(ins.job_id)
        token = self.store.claim(ins.job_id, ins.device, worker=ins.device)
        if token is None:  # cancelled (or taken) in the store meanwhile
            self._apply(self.state.cancel(ins.job_id, time.time()))
            return
        self._tokens[ins.job_id] = token
        workdir = private_dir(self.work / f"{ins.job_id}.{token}")
        stored = self.store.input_path(ins.job_id)
        if stored is not None:
            try:
                shutil.copytree(stored, workdir / INPUT_DIR, copy_function=_link_or_copy)
            except OSError as exc:  # the input is unreadable: this attempt cannot run
                log.error("job %s: cannot hand over its input: %s", ins.job_id, exc)
                self._apply(self.state.failed(ins.job_id, f"its input cannot be read: {exc}",
                                              time.time(), retry=False))  # fmt: skip
                return
            private_dir(workdir / INPUT_DIR)
        task = Task(ins.job_id, token, record.function, record.params, str(workdir))
        try:
            if self.backend == "ray":
                self.pool.dispatch(ins.device, task, record.estimate_bytes, record.needs_gpu)
            else:
                self.pool.dispatch(ins.device, task)
        except RuntimeError as exc:  # no idle worker: treat as a lost start
            log.error("dispatch failed: %s", exc)
            self._apply(self.state.worker_lost(ins.job_id, time.time()))
            return
        log.info("job started", extra={"event": "start", "job": ins.job_id,
                                        "device": ins.device, "attempt": token})  # fmt: skip
        self._notify({"event": "start", "job": ins.job_id, "function": record.function,
                      "kind": record.kind.name.lower(), "device": ins.device,
                      "wait_s": max(0.0, time.time() - record.submitted)})  # fmt: skip

    def _apply_call(self, ins: Instruction) -> None:
        """Carry out an instruction for a call (lock held): no store, the future instead."""
        call = self._calls[ins.job_id]
        if isinstance(ins, Start):
            call.token += 1
            task = Task(ins.job_id, call.token, call.spec.function, call.spec.params, "",
                        call=True, inputs=call.inputs)  # fmt: skip
            try:
                if self.backend == "ray":
                    self.pool.dispatch(ins.device, task, call.spec.estimate_bytes, call.needs_gpu)
                else:
                    self.pool.dispatch(ins.device, task)
            except (RuntimeError, ValueError) as exc:  # no idle worker, or Ray refused it
                log.error("dispatch of call %s failed: %s", ins.job_id, exc)
                self._apply(self.state.worker_lost(ins.job_id, time.time()))
                return
            now = time.time()
            call.started = now
            call.future._started(ins.device, call.token)
            self._notify({"event": "start", "job": ins.job_id, "call": True,
                          "function": call.spec.function, "kind": call.spec.kind.name.lower(),
                          "device": ins.device,
                          "wait_s": max(0.0, now - call.spec.submitted)})  # fmt: skip
        elif isinstance(ins, Requeue):
            call.future._requeued()
            log.info("call requeued", extra={"event": "requeue", "job": ins.job_id,
                                             "reason": ins.reason})  # fmt: skip
        elif isinstance(ins, Fail):
            log.warning("call failed", extra={"event": "call_failed", "job": ins.job_id,
                                              "reason": ins.reason})  # fmt: skip
            self._end_call(ins.job_id, "failed", error=ins.reason)
        elif isinstance(ins, Cancel):
            self.pool.cancel(ins.job_id)
        elif isinstance(ins, Cancelled):
            self._end_call(ins.job_id, "cancelled", error=ins.reason)
        elif isinstance(ins, Done):
            pass  # the result was handed to the future with the outcome

    def _end_call(self, call_id: str, state: str, result: Any = None, error: str = "") -> None:
        """Take a call off the books and resolve its future (once)."""
        with self._lock:
            call = self._calls.pop(call_id, None)
            if call is None:
                return
            call.ended, call.error = time.time(), error
            call.inputs = {}  # the objects go as soon as nobody can run the call again
            self._ended_calls.append(call)
        what = f"call {call_id} ({call.spec.function})"
        if state == "done":
            call.future._finish("done", result=result)
        elif state == "cancelled":
            call.future._finish("cancelled", error=CallCancelledError(
                f"{what} cancelled: {error}", error))  # fmt: skip
        else:
            kind = CallTimeoutError if error.startswith("timeout") else CallError
            call.future._finish("failed", error=kind(f"{what} failed: {error}", error))

    def _cancel_call(self, call_id: str) -> bool:
        """Cancel a call (queued or running); return whether it was pending."""
        with self._lock:
            if call_id not in self._calls:
                return False
            self._apply(self.state.cancel(call_id, time.time()))
            return True

    def _progress(self, call_id: str, token: int, message: dict[str, Any]) -> None:
        """Hand a call's progress message to its listener (stale attempts are dropped)."""
        call = self._calls.get(call_id)
        if call is None or call.token != token or call.on_progress is None:
            return
        try:
            call.on_progress(message)
        except Exception:  # a listener never stops the scheduler
            log.exception("call progress listener failed")

    def _notify(self, event: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener never stops the scheduler
                log.exception("scheduler listener failed")

    # -- worker callbacks -----------------------------------------------------------------------

    def _outcome(self, outcome: Outcome) -> None:
        task = outcome.task
        if task.call:
            self._call_outcome(outcome)
            return
        with self._lock:
            if self._tokens.get(task.job_id) != task.token:
                shutil.rmtree(task.workdir, ignore_errors=True)
                return  # a stale worker (cancelled or requeued meanwhile)
            now = time.time()
            if outcome.ok:
                workdir = Path(task.workdir)
                shutil.rmtree(workdir / INPUT_DIR, ignore_errors=True)  # the store keeps it
                write_private(workdir / "summary.json", json.dumps(outcome.summary).encode())
                accepted = self.store.complete(task.job_id, task.token, workdir)
                self._tokens.pop(task.job_id, None)
                if accepted:
                    self._apply(self.state.finished(task.job_id, now, device=outcome.device))
                    self._notify_done(task.job_id, outcome.device, now)
                else:
                    self._apply(self.state.cancel(task.job_id, now))
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                shutil.rmtree(task.workdir, ignore_errors=True)
                self._apply(self.state.failed(task.job_id, outcome.error, now,
                                              oom=outcome.out_of_memory,
                                              retry=not outcome.permanent,
                                              device=outcome.device))  # fmt: skip

    def _call_outcome(self, outcome: Outcome) -> None:
        task = outcome.task
        with self._lock:
            call = self._calls.get(task.job_id)
            if call is None or call.token != task.token:
                return  # a stale worker (cancelled or requeued meanwhile)
            now = time.time()
            if outcome.ok:
                self._apply(self.state.finished(task.job_id, now, device=outcome.device))
                self._notify({"event": "done", "job": task.job_id, "call": True,
                              "function": call.spec.function,
                              "kind": call.spec.kind.name.lower(), "device": outcome.device,
                              "run_s": max(0.0, now - (call.started or now))})  # fmt: skip
                self._end_call(task.job_id, "done", result=outcome.result)
            else:
                self._apply(self.state.failed(task.job_id, outcome.error, now,
                                              oom=outcome.out_of_memory,
                                              retry=not outcome.permanent,
                                              device=outcome.device))  # fmt: skip

    def _notify_done(self, job_id: str, device: str, now: float) -> None:
        if not self.listeners:
            return
        record = self.store.get(job_id)
        run_s = now - record.started if record.started is not None else 0.0
        self._notify({"event": "done", "job": job_id, "function": record.function,
                      "kind": record.kind.name.lower(), "device": device,
                      "run_s": max(0.0, run_s)})  # fmt: skip

    def _lost(self, worker: str, device: str, task: Task, oom_killed: bool = False) -> None:
        """Record a worker that died holding ``task`` (killed for memory: not retried)."""
        with self._lock:
            call = self._calls.get(task.job_id)
            current = call.token if call is not None else self._tokens.get(task.job_id)
            if current == task.token:
                self._apply(self.state.worker_lost(task.job_id, time.time(), oom=oom_killed))


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a stored input file into a working folder (copy across file systems)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def host_memory_budget(share: float = CPU_MEMORY_SHARE) -> int | None:
    """Return ``share`` of the host memory available now (bytes): the default CPU budget.

    :func:`mr0core.sim.memory.host_memory_available` (Linux: ``MemAvailable``; elsewhere the
    physical memory); None when neither can be read (then there is no host-memory check).
    """
    from mr0core.sim.memory import host_memory_available  # (torch: only when a budget is made)

    available = host_memory_available()
    return None if available is None else int(available * share)


def estimate_or_zero(function: str, params: dict[str, Any]) -> int:
    """:func:`scheduler.estimate.estimate_job`, or 0: an estimate is advice, never a failure."""
    try:
        from .estimate import estimate_job
    except ImportError:
        return 0
    try:
        return int(estimate_job(function, params))
    except ValueError:
        return 0


def _estimate_call(function: str, inputs: Mapping[str, Any], params: dict[str, Any]) -> int:
    """:func:`scheduler.estimate.estimate_call`, or 0: an estimate is advice, never a failure."""
    try:
        from .estimate import estimate_call
    except ImportError:
        return 0
    try:
        return int(estimate_call(function, inputs, params))
    except ValueError:
        return 0  # no estimator for the function (a test call), or inputs it cannot read
    except Exception:
        log.exception("the estimate of call %s failed; placed as 0 bytes", function)
        return 0


def job_result(store: JobStore, job_id: str) -> Path | None:
    """Return the folder of a done job's files (``summary.json`` and what it wrote), or None."""
    path = store.result_path(job_id)
    if path is None:
        return None
    return path if path.is_dir() else path.parent

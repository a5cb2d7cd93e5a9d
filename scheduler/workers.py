"""Worker processes: one per GPU slot (with ``CUDA_VISIBLE_DEVICES`` set) and N for the CPU.

A :class:`WorkerPool` starts the processes (``spawn``, so no CUDA state is inherited), hands a
:class:`Task` to an idle worker of the device the scheduler chose, and reports back through two
callbacks: ``on_outcome(Outcome)`` when a task ends (done, failed, out of memory) and
``on_lost(worker, device, task, oom_killed)`` when a worker process dies (``kill -9``, a
segfault, the OOM killer) with a task in hand. ``oom_killed`` is True when it died of SIGKILL
while the kernel's count of out-of-memory kills (``oom_kill`` in ``/proc/vmstat``) went up
since the task was handed over: the OOM killer took it (see :func:`oom_kill_count`). A dead
worker is started again at once.
Cancelling a running task (a timeout, a user's cancel) terminates its worker, which is then
restarted: one task per process keeps that from touching other jobs, which is why a GPU with K
slots has K processes. Workers run with umask ``077``: what jobs write is private.

A task is a durable job's (a function name, JSON-able parameters and a working folder: files
in, files out) or an interactive call's (``call``: a dict of objects in, an object out). A
call's inputs travel in the task through the worker's task queue, pickled by this process;
its progress messages (``on_progress(job id, token, message)``) and its result object come
back on the worker's result pipe. Both join our own processes only: nothing a client sends is
unpickled here (the server builds the objects; a client's ``.seq`` travels as text). A call's
outcome is pickled in the worker before it is sent, so a result that cannot be sent fails the
call with a clear error instead of breaking the pipe.

Every worker process has its own task queue and result pipe, made afresh when it is (re)started:
a worker killed in the middle of a message (a cancel while it reports progress) takes only its
own pipe with it, never a lock another worker needs.

A worker imports the pool's plug-in modules (``function_modules``,
:func:`scheduler.functions.load_function_modules`) when it starts, so that it finds their
functions by name; should that fail in a worker (the scheduler imported them first, so it
should not), each task it is given fails with the import's error.

Nothing here decides anything: :mod:`scheduler.state` chooses devices, :mod:`scheduler.store`
keeps the jobs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .functions import check_function_modules
from .model import CPU

__all__ = ["Outcome", "Task", "WorkerPool", "failure_outcome", "oom_kill_count", "pickled_outcome"]

log = logging.getLogger("mr0.scheduler")


@dataclass(frozen=True)
class Task:
    """One job run, as a worker receives it.

    Attributes
    ----------
    job_id, token
        The job and its attempt token (from the store's claim).
    function, params
        The job function's registry name (:mod:`scheduler.functions`) and its parameters.
    workdir
        A fresh folder for the job's files.
        ('' for a call: it writes no files).
    call
        An interactive call: run :func:`scheduler.functions.run_call` with ``inputs``.
    inputs
        A call's input objects (None once the task has been handed back in an outcome).
    """

    job_id: str
    token: int
    function: str
    params: dict[str, Any]
    workdir: str
    call: bool = False
    inputs: dict[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Outcome:
    """How a task ended in its worker.

    Attributes
    ----------
    worker
        The worker's name (``cuda:0/0``, ``cpu/1``, …).
    device
        ``cuda:<index>`` or ``cpu``.
    task
        The task.
    ok
        Whether the function returned.
    summary
        Its JSON-able return value (ok) or None.
    error
        The error text (not ok).
    out_of_memory
        The failure was a device or host allocation failure.
    permanent
        The failure is the job's own (bad parameters or input files: a ``ValueError``), so a
        retry would fail the same way.
    seconds
        Run time of the function.
    result
        A call's result object (ok), else None.
    """

    worker: str
    device: str
    task: Task
    ok: bool
    summary: dict[str, Any] | None = None
    error: str = ""
    out_of_memory: bool = False
    seconds: float = 0.0
    permanent: bool = False
    result: Any = field(default=None, compare=False, repr=False)


def _worker_main(
    name: str,
    device: str,
    tasks: Any,
    results: Any,
    parent: int,
    function_modules: tuple[str, ...] = (),
) -> None:
    """Run tasks in a worker process until ``None`` arrives (``CUDA_VISIBLE_DEVICES`` set).

    ``results`` is the sending end of this worker's result pipe.

    ``parent`` is the pool's process id: once this process is no longer its child (the
    scheduler was killed, possibly before this worker got going), the worker exits.

    ``function_modules`` are imported first (plug-in functions); if that fails, every task
    fails with the error.
    """
    from .functions import FunctionModuleError, load_function_modules, run_call, run_function

    load_error: FunctionModuleError | ValueError | None = None
    try:
        load_function_modules(function_modules)
    except (FunctionModuleError, ValueError) as exc:  # reported with every task (see above)
        load_error = exc

    os.umask(0o077)  # what jobs write is patient data: private whatever the inherited umask
    torch_device = "cuda" if device.startswith("cuda") else "cpu"

    def orphan_watch() -> None:  # also mid-task: a killed scheduler's work is void anyway
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=orphan_watch, name="mr0-orphan-watch", daemon=True).start()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the scheduler died (kill -9): do not linger
                return
            continue
        if task is None:
            return
        results.send(("start", name, task.job_id, os.getpid()))
        started = time.perf_counter()
        inputs = task.inputs
        task = replace(task, inputs=None)  # the outcome goes back without the inputs
        try:
            if load_error is not None:
                raise load_error
            if task.call:

                def progress(message: dict[str, Any], job: str = task.job_id,
                             token: int = task.token) -> None:  # fmt: skip
                    results.send(("progress", name, job, token, message))

                value = run_call(task.function, inputs or {}, task.params, torch_device, progress)
                outcome = Outcome(name, device, task, True, result=value,
                                  seconds=time.perf_counter() - started)  # fmt: skip
            else:
                summary = run_function(task.function, task.params, torch_device,
                                       Path(task.workdir))  # fmt: skip
                outcome = Outcome(name, device, task, True, summary=summary,
                                  seconds=time.perf_counter() - started)  # fmt: skip
        except BaseException as exc:  # reported, never kills the worker
            outcome = failure_outcome(name, device, task, exc, time.perf_counter() - started)
        del inputs
        if torch_device == "cuda":  # the scheduler takes "ended" as "memory released"
            _release_cuda_memory()
        if task.call:
            results.send(("end-call", name, pickled_outcome(outcome)))
        else:
            results.send(("end", name, outcome))


def failure_outcome(
    name: str, device: str, task: Task, exc: BaseException, seconds: float
) -> Outcome:
    """Return the outcome of a task that raised ``exc`` (a ValueError is the job's own fault)."""
    from .functions import is_out_of_memory

    oom = is_out_of_memory(exc)
    text = str(exc) if isinstance(exc, ValueError) else (
        f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
    )  # fmt: skip
    return Outcome(name, device, task, False, error=text[:16384], out_of_memory=oom,
                   seconds=seconds, permanent=isinstance(exc, ValueError) and not oom)  # fmt: skip


def pickled_outcome(outcome: Outcome) -> bytes:
    """Pickle a call's outcome in its worker, so that a result that cannot be sent fails it."""
    try:
        return pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        error = (f"the result of call {outcome.task.function!r} cannot be sent back: "
                 f"{type(exc).__name__}: {exc}")  # fmt: skip
        failed = Outcome(outcome.worker, outcome.device, outcome.task, False, error=error,
                         seconds=outcome.seconds, permanent=True)  # fmt: skip
        return pickle.dumps(failed, protocol=pickle.HIGHEST_PROTOCOL)


def _release_cuda_memory() -> None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


@dataclass
class _Worker:
    name: str
    device: str
    process: Any = None
    tasks: Any = None
    results: Any = None
    """The receiving end of the worker's result pipe."""
    task: Task | None = None
    pid: int = 0
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    oom_kills: int | None = None
    """:func:`oom_kill_count` when the task was handed over."""


def oom_kill_count() -> int | None:
    """Return the kernel's count of out-of-memory kills so far (None where unknown).

    Linux counts every OOM kill, system-wide or of a cgroup's limit, as ``oom_kill`` in
    ``/proc/vmstat`` (since 4.13; the host's count inside a container too).
    """
    try:
        with open("/proc/vmstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class WorkerPool:
    """Worker processes for GPU slots and the CPU.

    Parameters
    ----------
    gpus
        NVML indices of the GPUs to use.
    gpu_slots
        Worker processes (concurrent jobs) per GPU.
    cpu_workers
        Worker processes for CPU jobs.
    on_outcome
        Called (on the pool's monitor thread) with each :class:`Outcome`.
    on_lost
        Called with ``(worker name, device, task, oom_killed)`` when a worker died holding
        ``task`` (``oom_killed``: SIGKILL while the kernel's OOM-kill count rose).
    on_progress
        Called (on the monitor thread) with ``(job id, token, message)`` for each progress
        message of a running call.
    cpu_threads
        Torch threads per CPU worker (``OMP_NUM_THREADS``); None: cores / CPU workers.
    function_modules
        Plug-in modules every worker imports at its start
        (:func:`scheduler.functions.load_function_modules`; checked here, imported there).
    """

    def __init__(
        self,
        gpus: list[int],
        gpu_slots: int = 1,
        cpu_workers: int = 1,
        on_outcome: Callable[[Outcome], None] | None = None,
        on_lost: Callable[[str, str, Task, bool], None] | None = None,
        cpu_threads: int | None = None,
        on_progress: Callable[[str, int, dict[str, Any]], None] | None = None,
        function_modules: Iterable[str] = (),
    ) -> None:
        if gpu_slots < 1 or cpu_workers < 0:
            raise ValueError("gpu_slots must be >= 1 and cpu_workers >= 0")
        self.function_modules = check_function_modules(function_modules)
        self._ctx = mp.get_context("spawn")
        self._retired: list[Any] = []  # result pipes of replaced workers, closed by _watch
        self._workers: list[_Worker] = [
            _Worker(f"cuda:{g}/{s}", f"cuda:{g}") for g in gpus for s in range(gpu_slots)
        ] + [_Worker(f"cpu/{i}", CPU) for i in range(cpu_workers)]
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.on_lost = on_lost or (lambda worker, device, task, oom_killed: None)
        self.on_progress = on_progress or (lambda job_id, token, message: None)
        cores = os.cpu_count() or 1
        self.cpu_threads = cpu_threads or max(1, cores // max(1, cpu_workers))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def _spawn(self, worker: _Worker) -> None:
        worker.tasks = self._ctx.Queue()
        if worker.results is not None:
            self._retired.append(worker.results)
        receive, send = self._ctx.Pipe(duplex=False)
        worker.results = receive
        env = {"CUDA_VISIBLE_DEVICES": worker.device.split(":")[1] if ":" in worker.device
               else ""}  # fmt: skip
        if worker.device == CPU:
            env.update(OMP_NUM_THREADS=str(self.cpu_threads), MKL_NUM_THREADS=str(self.cpu_threads))
        saved = {k: os.environ.get(k) for k in env}
        # a spawned child copies the parent's environment at start: set it for that moment
        with _ENV_LOCK:
            os.environ.update(env)
            try:
                worker.process = self._ctx.Process(
                    target=_worker_main, args=(worker.name, worker.device, worker.tasks,
                                               send, os.getpid(), self.function_modules),
                    name=f"mr0-worker-{worker.name}", daemon=True,
                )  # fmt: skip
                worker.process.start()
            finally:
                send.close()  # the child's copy is the only one: its death reads as EOF here
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
        worker.pid = worker.process.pid or 0
        worker.task = None
        worker.started = time.monotonic()

    def start(self) -> None:
        """Start every worker and the monitor thread."""
        for worker in self._workers:
            self._spawn(worker)
        self._monitor = threading.Thread(target=self._watch, name="mr0-workers", daemon=True)
        self._monitor.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the workers (after their current task, up to ``timeout_s``; then kill)."""
        self._stopping.set()
        for worker in self._workers:
            with contextlib.suppress(Exception):
                worker.tasks.put(None)
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(2)
        if self._monitor is not None:
            self._monitor.join(2)

    # -- work -----------------------------------------------------------------------------------

    def idle(self, device: str) -> int:
        """Idle workers of ``device`` (``cuda:<i>`` or ``cpu``)."""
        with self._lock:
            return sum(1 for w in self._workers if w.device == device and w.task is None)

    def devices(self) -> list[str]:
        """Return the devices that have workers."""
        return sorted({w.device for w in self._workers})

    def dispatch(self, device: str, task: Task) -> str:
        """Give ``task`` to an idle worker of ``device``; return the worker's name.

        Raises
        ------
        RuntimeError
            If no worker of that device is idle.
        """
        with self._lock:
            for worker in self._workers:
                if worker.device == device and worker.task is None:
                    worker.task = task
                    worker.oom_kills = oom_kill_count()
                    worker.tasks.put(task)
                    return worker.name
        raise RuntimeError(f"no idle worker for {device}")

    def cancel(self, job_id: str) -> bool:
        """Kill the worker running ``job_id`` and start it again; return whether one ran it.

        The task is then reported neither as an outcome nor as lost; the worker is idle when
        this returns.
        """
        with self._lock:
            for worker in self._workers:
                if worker.task is not None and worker.task.job_id == job_id:
                    # kill and restart at once, so the slot is free when the caller reuses it
                    worker.process.kill()
                    worker.process.join(10)
                    worker.restarts += 1
                    self._spawn(worker)
                    return True
        return False

    def running(self) -> dict[str, tuple[str, Task]]:
        """``{job id: (worker name, task)}`` of the tasks in hand."""
        with self._lock:
            return {w.task.job_id: (w.name, w.task) for w in self._workers if w.task is not None}

    def pids(self) -> dict[str, int]:
        """Worker name → process id."""
        with self._lock:
            return {w.name: w.pid for w in self._workers}

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                retired, self._retired = self._retired, []
                pipes = [w.results for w in self._workers if w.results is not None]
            for pipe in retired:
                with contextlib.suppress(OSError):
                    pipe.close()
            try:
                ready = mp.connection.wait(pipes, timeout=0.1)
            except (OSError, ValueError):  # a pipe closed meanwhile
                ready = []
            for pipe in ready:
                self._receive(pipe)
            self._reap()

    def _receive(self, pipe: Any) -> None:
        """Handle one message from a worker's result pipe (a dead worker's EOF: reap it)."""
        try:
            message = pipe.recv()
        except (EOFError, OSError):  # the worker died (or was replaced): restart, report
            self._reap()
            return
        if message[0] == "progress":
            try:
                self.on_progress(message[2], message[3], message[4])
            except Exception:
                log.exception("on_progress failed")
        elif message[0] in ("end", "end-call"):
            # a call's outcome was pickled by our own worker process (see the module)
            outcome: Outcome = pickle.loads(message[2]) if message[0] == "end-call" else message[2]
            with self._lock:
                for worker in self._workers:
                    if (
                        worker.name == outcome.worker
                        and worker.task is not None
                        and (worker.task.job_id == outcome.task.job_id)
                    ):
                        worker.task = None
            try:
                self.on_outcome(outcome)
            except Exception:
                log.exception("on_outcome failed")

    def _reap(self) -> None:
        """Restart dead workers and report the task each held (cancel restarts its own)."""
        lost: list[tuple[str, str, Task, bool]] = []
        with self._lock:
            if self._stopping.is_set():
                return
            for worker in self._workers:
                if worker.process is None or worker.process.is_alive():
                    continue
                code = worker.process.exitcode
                task = worker.task
                kills, before = oom_kill_count(), worker.oom_kills
                oom = code == -signal.SIGKILL and None not in (kills, before)
                oom = oom and int(kills or 0) > int(before or 0)
                worker.restarts += 1
                log.warning(
                    "worker died",
                    extra={"event": "worker_lost", "worker": worker.name, "exitcode": code,
                           "oom_killed": oom, "job": task.job_id if task else None},
                )  # fmt: skip
                self._spawn(worker)
                if task is not None:
                    lost.append((worker.name, worker.device, task, oom))
        for name, device, task, oom in lost:
            try:
                self.on_lost(name, device, task, oom)
            except Exception:
                log.exception("on_lost failed")


_ENV_LOCK = threading.Lock()

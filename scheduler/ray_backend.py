"""Ray, beyond one machine: the same job functions as Ray tasks on a cluster's GPUs.

``mr0-server --backend ray --address auto|HOST:PORT`` (or a :class:`RayBackend` directly)
hands jobs to a Ray cluster instead of local worker processes. Ray places them; we write no
cluster layer. A job asks for ``num_gpus`` = its memory estimate × the safety factor divided by
one GPU's memory (rounded up to 1/100, at most 1), so small jobs share a GPU (fractional GPUs)
and Ray never packs more estimated memory on a GPU than it has. A job that needs no GPU, or runs
where the cluster has none, asks for CPUs only.

A job's task runs :func:`scheduler.functions.run_function` in a fresh temporary folder on
whichever node Ray chose and returns the summary with the files it wrote (bounded in size), so
results travel through Ray's object store rather than a shared file system. A call's inputs go
to the object store with ``ray.put`` and its result object comes back the same way
(:func:`scheduler.functions.run_call`): no file, so no shared volume either. Progress
messages of calls are not relayed from Ray tasks (the call's completion and result are); a
call with an ``on_progress`` listener logs that once.

Plug-in functions (``function_modules``, :func:`scheduler.functions.load_function_modules`):
every task imports the backend's plug-in modules before it looks its function up (once per Ray
worker process; Python keeps them), so they must be installed on every node, as this package is.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .functions import check_function_modules
from .workers import Outcome, Task, failure_outcome

__all__ = ["MAX_RESULT_BYTES", "RayBackend", "RayPool", "gpu_fraction"]

log = logging.getLogger("mr0.scheduler")

MAX_RESULT_BYTES = 512 * 2**20
"""Largest total size of the files one Ray task may return."""


def gpu_fraction(estimate_bytes: int, gpu_bytes: int, safety: float = 1.2) -> float:
    """Return the share of one GPU a job asks Ray for: estimate × safety / GPU memory.

    Rounded up to 1/100 (Ray's resolution is finer; coarser shares keep packing readable),
    at least 0.01 and at most 1.

    Raises
    ------
    ValueError
        For a negative estimate or a non-positive GPU size.
    """
    if estimate_bytes < 0 or gpu_bytes <= 0:
        raise ValueError(
            f"need estimate >= 0 and GPU memory > 0, got {estimate_bytes}, {gpu_bytes}"
        )
    share = estimate_bytes * safety / gpu_bytes
    return min(1.0, max(0.01, math.ceil(share * 100 - 1e-9) / 100))


def _run_call(
    task: Task, inputs: dict[str, Any], device: str, function_modules: tuple[str, ...]
) -> tuple[Outcome, dict[str, bytes], float, float]:
    """Run a call on a Ray worker (``inputs``: resolved from ``ray.put``); no files.

    ``function_modules`` are imported first (a failure is the call's outcome).
    """
    from .functions import load_function_modules, run_call

    started = time.time()
    try:
        load_function_modules(function_modules)
        value = run_call(task.function, inputs, task.params, device)
        outcome = Outcome("ray", device, task, True, result=value, seconds=time.time() - started)
    except Exception as exc:  # reported to the driver
        outcome = failure_outcome("ray", device, task, exc, time.time() - started)
    return outcome, {}, started, time.time()


def _run_task(
    task: Task, device: str, function_modules: tuple[str, ...]
) -> tuple[Outcome, dict[str, bytes], float, float]:
    """Run a task on a Ray worker; return the outcome, its files and its start/end times.

    ``function_modules`` are imported first (a failure is the task's outcome).
    """
    from .functions import is_out_of_memory, load_function_modules, run_function

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mr0-ray-") as tmp:
        work = Path(tmp)
        try:
            load_function_modules(function_modules)
            summary = run_function(task.function, task.params, device, work)
            outcome = Outcome("ray", device, task, True, summary=summary,
                              seconds=time.time() - started)  # fmt: skip
        except Exception as exc:  # reported to the driver
            oom = is_out_of_memory(exc)
            outcome = Outcome("ray", device, task, False, error=f"{type(exc).__name__}: {exc}",
                              out_of_memory=oom, seconds=time.time() - started,
                              permanent=isinstance(exc, ValueError) and not oom)  # fmt: skip
        files: dict[str, bytes] = {}
        total = 0
        for path in sorted(work.rglob("*")):
            if path.is_file():
                total += path.stat().st_size
                if total > MAX_RESULT_BYTES:
                    outcome = Outcome("ray", device, task, False,
                                      error=f"results exceed {MAX_RESULT_BYTES} bytes")  # fmt: skip
                    files = {}
                    break
                files[str(path.relative_to(work))] = path.read_bytes()
    return outcome, files, started, time.time()


class RayBackend:
    """Submit tasks to a Ray cluster (or a local one).

    Parameters
    ----------
    address
        ``"auto"`` (a running cluster on this machine), ``"HOST:PORT"``, or None: start a local
        Ray instance in this process.
    gpu_bytes
        Memory of one GPU of the cluster, for :func:`gpu_fraction` (default 80 GB).
    safety
        Safety factor on the memory estimates.
    function_modules
        Plug-in modules each task imports before it runs its function
        (:func:`scheduler.functions.load_function_modules`).
    init_kwargs
        Further ``ray.init`` arguments (e.g. ``num_gpus=2`` to declare GPUs on a local test
        instance, ``num_cpus``).
    """

    def __init__(
        self,
        address: str | None = None,
        gpu_bytes: int = 80 * 10**9,
        safety: float = 1.2,
        function_modules: Iterable[str] = (),
        **init_kwargs: Any,
    ) -> None:
        import ray

        self.function_modules = check_function_modules(function_modules)
        self._ray = ray
        self.gpu_bytes = gpu_bytes
        self.safety = safety
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **init_kwargs)  # fmt: skip
        self._remote = ray.remote(max_retries=0)(_run_task)
        self._remote_call = ray.remote(max_retries=0)(_run_call)

    def cluster_gpus(self) -> float:
        """GPUs the cluster declares."""
        return float(self._ray.cluster_resources().get("GPU", 0.0))

    def submit(self, task: Task, estimate_bytes: int = 0, needs_gpu: bool = False) -> Any:
        """Start a task; return its Ray object reference.

        With GPUs in the cluster a job takes :func:`gpu_fraction` of one (every job that could
        use a GPU does; ``needs_gpu`` on a cluster without GPUs is an error).

        Raises
        ------
        ValueError
            If the job needs a GPU and the cluster has none.
        """
        gpus = self.cluster_gpus()
        if needs_gpu and gpus == 0:
            raise ValueError(f"job {task.job_id} needs a GPU; the Ray cluster has none")
        options: dict[str, Any] = {"num_cpus": 1}
        if gpus > 0:
            options["num_gpus"] = gpu_fraction(estimate_bytes, self.gpu_bytes, self.safety)
        device = "cuda" if gpus > 0 else "cpu"
        if task.call:  # the inputs go to the object store; the task carries their reference
            inputs = self._ray.put(task.inputs or {})
            light = replace(task, inputs=None)
            return self._remote_call.options(**options).remote(
                light, inputs, device, self.function_modules
            )
        return self._remote.options(**options).remote(task, device, self.function_modules)

    def wait(
        self, refs: list[Any], timeout_s: float | None = None
    ) -> tuple[list[tuple[Outcome, dict[str, bytes], float, float]], list[Any]]:
        """Return the finished results among ``refs`` (waiting up to ``timeout_s``) and the rest.

        Each result is ``(outcome, files, started, ended)`` (wall-clock times on the node).
        """
        if not refs:
            return [], []
        done, rest = self._ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        return [self._ray.get(r) for r in done], list(rest)

    def cancel(self, ref: Any) -> None:
        """Cancel a task (forcefully: its worker process is killed)."""
        self._ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        """Disconnect from (or stop the local) Ray."""
        self._ray.shutdown()


class RayPool:
    """A :class:`~scheduler.workers.WorkerPool` look-alike whose "workers" are Ray tasks.

    :class:`scheduler.service.Scheduler` with ``backend="ray"`` uses it: the scheduler's state
    sees one device, ``cpu``, with ``slots`` places (by default the cluster's CPUs), keeps the
    queue order, priorities, retries and durability, and leaves placement on the cluster's GPUs
    to Ray (``num_gpus`` from each job's estimate, :func:`gpu_fraction`). A task's files come
    back through the object store and are written into its ``workdir``, as a local worker
    would leave them.
    """

    def __init__(
        self,
        backend: RayBackend,
        slots: int | None = None,
        on_outcome: Any = None,
        on_lost: Any = None,
    ) -> None:
        import threading

        self.backend = backend
        cpus = int(backend._ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, slots or cpus)
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.on_lost = on_lost or (lambda worker, device, task, oom_killed=False: None)
        self._refs: dict[Any, Task] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread that collects finished tasks."""
        import threading

        self._thread = threading.Thread(target=self._watch, name="mr0-ray", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop collecting (running Ray tasks are left to Ray)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def devices(self) -> list[str]:
        """Return the one device the scheduler's state sees."""
        return ["cpu"]

    def idle(self, device: str) -> int:
        """Free places."""
        with self._lock:
            return self.slots - len(self._refs) if device == "cpu" else 0

    def dispatch(self, device: str, task: Task, estimate_bytes: int = 0,
                 needs_gpu: bool = False) -> str:  # fmt: skip
        """Submit ``task`` to Ray; return ``"ray"``."""
        ref = self.backend.submit(task, estimate_bytes, needs_gpu)
        with self._lock:
            self._refs[ref] = task
        return "ray"

    def cancel(self, job_id: str) -> bool:
        """Cancel the Ray task of ``job_id``; return whether one was running."""
        with self._lock:
            hits = [r for r, t in self._refs.items() if t.job_id == job_id]
            for ref in hits:
                del self._refs[ref]
        for ref in hits:
            self.backend.cancel(ref)
        return bool(hits)

    def running(self) -> dict[str, tuple[str, Task]]:
        """``{job id: ("ray", task)}``."""
        with self._lock:
            return {t.job_id: ("ray", t) for t in self._refs.values()}

    def pids(self) -> dict[str, int]:
        """No local worker processes."""
        return {}

    def _watch(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                refs = list(self._refs)
            if not refs:
                self._stop.wait(0.05)
                continue
            done, _ = self.backend._ray.wait(refs, num_returns=1, timeout=0.1)
            for ref in done:
                with self._lock:
                    task = self._refs.pop(ref, None)
                if task is None:  # cancelled meanwhile
                    continue
                try:
                    outcome, files, _, _ = self.backend._ray.get(ref)
                except Exception as exc:  # the task's worker died (node lost, OOM killer)
                    self.on_lost("ray", "cpu", task, False)
                    log.warning("ray task lost: %s", exc)
                    continue
                if task.workdir:  # a call has no folder (and its task returns no files)
                    work = Path(task.workdir)
                    for name, data in files.items():
                        target = (work / name).resolve()
                        if target.is_relative_to(work.resolve()):
                            target.parent.mkdir(parents=True, exist_ok=True)
                            target.write_bytes(data)
                self.on_outcome(replace(outcome, device="cpu"))

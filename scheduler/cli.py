"""``mr0-scheduler``: run the scheduler on a store, submit to it, show its state, cancel jobs.

Every command works on the store folder (``--store DIR``, default ``$MR0_SCHEDULER_STORE`` or
``./mr0-scheduler``); the store is the only channel between them, so ``status``, ``jobs``,
``submit`` and ``cancel`` work whether or not a scheduler is running, and a running one picks
up what they write (new jobs, cancellations) within its tick.

::

    mr0-scheduler run --cpu-workers 2              # the service, until SIGTERM
    mr0-scheduler run --retention-days 30 --max-store-gb 50   # ... deleting old results
    mr0-scheduler run --backend ray --address auto # jobs as Ray tasks on a running cluster
    mr0-scheduler run --function-module gadgets.library.background_jobs   # ... and a plug-in's jobs
    mr0-scheduler prune --retention-days 30        # apply a retention policy once
    mr0-scheduler submit simulate --params '{"demo_flash": 64, "size": 64}' --kind batch
    mr0-scheduler status [--json]                  # GPUs (NVML), queue, running jobs, counts
    mr0-scheduler jobs [--state done] [--json]
    mr0-scheduler cancel JOB

``--function-module MODULE`` (``run`` and ``submit``; repeatable) loads a plug-in module whose
import registers further job functions (:func:`scheduler.functions.load_function_modules`):
``run`` makes its workers load it, ``submit`` needs it to know the function's name.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

from mr0core.clitools import exit_quietly_on_closed_pipe

from .functions import FUNCTIONS, FunctionModuleError, load_function_modules
from .model import JOB_STATES, JobKind
from .retention import GB, RetentionPolicy, RetentionTimer

__all__ = ["add_retention_options", "main"]


def add_retention_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--retention-days``, ``--max-store-gb`` and ``--retention-interval`` to a parser.

    The same options as ``mr0-server`` has (see :mod:`scheduler.retention`).
    """
    parser.add_argument("--retention-days", type=_non_negative, metavar="DAYS",
                        help="delete finished data older than this (default: keep)")  # fmt: skip
    parser.add_argument("--max-store-gb", type=_non_negative, metavar="GB",
                        help="keep stored data under this many GB (10^9 bytes), oldest "
                        "deleted first (default: no limit)")  # fmt: skip
    parser.add_argument("--retention-interval", type=_positive, default=3600.0, metavar="S",
                        help="seconds between retention runs (default 3600)")  # fmt: skip


def _add_function_module_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--function-module MODULE`` (repeatable): plug-in modules of job functions."""
    parser.add_argument("--function-module", action="append", default=[], metavar="MODULE",
                        help="a module whose import registers further job functions, e.g. "
                        "gadgets.library.background_jobs (repeatable)")  # fmt: skip


def _non_negative(text: str) -> float:
    value = float(text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _store_dir(opts: argparse.Namespace) -> Path:
    return Path(opts.store or os.environ.get("MR0_SCHEDULER_STORE") or "mr0-scheduler")


def _existing_store(opts: argparse.Namespace) -> Any:
    """Return the store's :class:`scheduler.store.JobStore`, or None where there is none yet.

    The read-only commands (``status``, ``jobs``, ``cancel``) use this so that they never create
    a store where they are run.
    """
    from .store import DB_NAME, JobStore

    root = _store_dir(opts)
    if not (root / DB_NAME).is_file():
        return None
    return JobStore(root)


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _run(opts: argparse.Namespace) -> int:
    from .gpu import GpuMonitor
    from .service import Scheduler

    monitor = GpuMonitor(interval_s=opts.nvml_interval)
    cpu_memory: int | Literal["auto"] | None = "auto"
    if opts.cpu_memory_gb is not None:
        cpu_memory = None if opts.cpu_memory_gb == 0 else int(opts.cpu_memory_gb * GB)
    try:
        sched = Scheduler(_store_dir(opts), monitor=monitor, gpu_slots=opts.gpu_slots,
                          cpu_workers=opts.cpu_workers, safety=opts.safety,
                          backend=opts.backend, ray_address=opts.address,
                          cpu_memory_bytes=cpu_memory, retention=_policy(opts),
                          function_modules=opts.function_module)  # fmt: skip
    except (FunctionModuleError, ValueError) as exc:
        print(f"mr0-scheduler: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    requeued = sched.start()
    gpus = len(monitor.snapshot())
    print(f"mr0-scheduler: running on {_store_dir(opts)} ({gpus} GPUs, {opts.cpu_workers} CPU "
          f"workers); {len(requeued)} jobs requeued", flush=True)  # fmt: skip
    while not done.wait(0.5):
        pass
    sched.stop()
    return 0


def _policy(opts: argparse.Namespace) -> RetentionPolicy | None:
    """Return the policy of ``--retention-days``/``--max-store-gb`` (None: neither given)."""
    if opts.retention_days is None and opts.max_store_gb is None:
        return None
    return RetentionPolicy(retention_days=opts.retention_days, max_store_gb=opts.max_store_gb,
                           interval_s=opts.retention_interval)  # fmt: skip


def _prune(opts: argparse.Namespace) -> int:
    policy = _policy(opts)
    if policy is None:
        print("mr0-scheduler: prune needs --retention-days and/or --max-store-gb", file=sys.stderr)
        return 2
    store = _existing_store(opts)
    if store is None:
        print(f"mr0-scheduler: no job store at {_store_dir(opts)}", file=sys.stderr)
        return 2
    report = RetentionTimer([store], policy).run_once()
    print(f"deleted {len(report.deleted)} jobs ({_fmt_bytes(report.freed_bytes)}); "
          f"{_fmt_bytes(report.kept_bytes)} kept")  # fmt: skip
    for error in report.errors:
        print(f"mr0-scheduler: {error}", file=sys.stderr)
    return 1 if report.errors else 0


def _status(opts: argparse.Namespace) -> int:
    from .gpu import GpuMonitor

    store = _existing_store(opts)
    monitor = GpuMonitor(interval_s=0)
    gpus = monitor.snapshot()
    queued = store.queued() if store else []
    running = store.jobs("running", limit=1000) if store else []
    # JSON rows: values of mixed types
    gpu_rows: list[dict[str, Any]] = [
        {"device": g.device, "name": g.name, "total_bytes": g.total_bytes,
         "free_bytes": g.free_bytes, "utilization": g.utilization,
         "temperature_c": g.temperature_c,
         "processes": [{"pid": p.pid, "used_bytes": p.used_bytes} for p in g.processes]}
        for g in gpus]  # fmt: skip
    queued_rows: list[dict[str, Any]] = [
        {"job": r.id, "kind": r.kind.name.lower(), "function": r.function,
         "attempts": r.attempts, "estimate_bytes": r.estimate_bytes} for r in queued]  # fmt: skip
    running_rows: list[dict[str, Any]] = [
        {"job": r.id, "kind": r.kind.name.lower(), "device": r.device,
         "seconds": round(time.time() - (r.started or time.time()), 1),
         "attempts": r.attempts} for r in running]  # fmt: skip
    counts = store.counts() if store else dict.fromkeys(JOB_STATES, 0)
    out = {
        "store": str(_store_dir(opts)),
        "store_exists": store is not None,
        "gpu_monitor": "nvml" if monitor.available else monitor.reason,
        "gpus": gpu_rows,
        "queued": queued_rows,
        "running": running_rows,
        "counts": counts,
    }
    if opts.json:
        print(json.dumps(out, indent=2))
        return 0
    if store is None:
        print(f"store: none at {out['store']} (nothing submitted there)")
    print(f"GPUs ({out['gpu_monitor']}):")
    for g in gpu_rows:
        print(f"  {g['device']:8} {g['name'][:28]:28} free {_fmt_bytes(g['free_bytes'])} of "
              f"{_fmt_bytes(g['total_bytes'])}, {g['utilization']:.0f} %, "
              f"{len(g['processes'])} processes")  # fmt: skip
    if not gpu_rows:
        print("  none")
    print(f"running ({len(running_rows)}):")
    for r in running_rows:
        print(f"  {r['job']:24} {r['kind']:9} {r['device']:8} {r['seconds']:8.1f} s "
              f"attempt {r['attempts']}")  # fmt: skip
    print(f"queued ({len(queued_rows)}):")
    for r in queued_rows:
        print(f"  {r['job']:24} {r['kind']:9} {r['function']:10} "
              f"~{_fmt_bytes(r['estimate_bytes'])}")  # fmt: skip
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _jobs(opts: argparse.Namespace) -> int:
    store = _existing_store(opts)
    records = store.jobs(opts.state, limit=opts.limit) if store else []
    if opts.json:
        print(json.dumps([r.as_dict() for r in records], indent=2, default=str))
        return 0
    for r in records:
        extra = f" {r.error.splitlines()[0][:60]}" if r.error else ""
        print(f"{r.id:24} {r.state:9} {r.kind.name.lower():9} {r.function:10} "
              f"attempts {r.attempts}{' on ' + r.device if r.device else ''}{extra}")  # fmt: skip
    return 0


def _cancel(opts: argparse.Namespace) -> int:
    from .store import StoreError

    store = _existing_store(opts)
    if store is None:
        print(f"mr0-scheduler: no job store at {_store_dir(opts)}", file=sys.stderr)
        return 2
    try:
        ok = store.cancel(opts.job)
    except (StoreError, ValueError, LookupError) as exc:
        print(f"mr0-scheduler: {exc}", file=sys.stderr)
        return 2
    print(f"{opts.job}: {'cancelled' if ok else 'already finished'}")
    return 0 if ok else 1


def _submit(opts: argparse.Namespace) -> int:
    import uuid

    from .model import JobSpec
    from .service import estimate_or_zero
    from .store import JobStore

    try:
        load_function_modules(opts.function_module)
    except (FunctionModuleError, ValueError) as exc:
        print(f"mr0-scheduler: {exc}", file=sys.stderr)
        return 2
    if opts.function not in FUNCTIONS:
        print(f"mr0-scheduler: unknown function {opts.function!r} "
              f"(known: {', '.join(sorted(FUNCTIONS))})", file=sys.stderr)  # fmt: skip
        return 2
    try:
        params = json.loads(opts.params)
    except json.JSONDecodeError as exc:
        print(f"mr0-scheduler: --params is not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(params, dict):
        print("mr0-scheduler: --params must be a JSON object", file=sys.stderr)
        return 2
    spec = JobSpec(
        id=opts.id or uuid.uuid4().hex[:16], kind=JobKind.parse(opts.kind),
        estimate_bytes=estimate_or_zero(opts.function, params), function=opts.function,
        params=params,
        allow_cpu=not opts.gpu_only, needs_gpu=opts.gpu_only, timeout_s=opts.timeout,
        submitted=time.time(),
    )  # fmt: skip
    JobStore(_store_dir(opts)).submit(spec)
    print(spec.id)
    return 0


@exit_quietly_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Run ``mr0-scheduler``."""
    parser = argparse.ArgumentParser(prog="mr0-scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="store folder (default $MR0_SCHEDULER_STORE or "
                        "./mr0-scheduler)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the scheduler service until SIGTERM")
    run.add_argument("--gpu-slots", type=int, default=1, help="concurrent jobs per GPU")
    run.add_argument("--cpu-workers", type=int, default=1, help="CPU worker processes")
    run.add_argument("--safety", type=float, default=1.2, help="factor on memory estimates")
    run.add_argument("--nvml-interval", type=float, default=1.0, help="seconds between polls")
    run.add_argument("--backend", choices=("local", "ray"), default="local",
                     help="worker processes here, or Ray tasks on a cluster")  # fmt: skip
    run.add_argument("--address", help="with --backend ray: auto or HOST:PORT (default: a "
                     "local Ray instance)")  # fmt: skip
    run.add_argument("--cpu-memory-gb", type=_non_negative, metavar="GB",
                     help="host memory CPU jobs may need together, by their estimates (default: "
                     "75%% of the memory available at start; 0: no check)")  # fmt: skip
    _add_function_module_option(run)
    add_retention_options(run)
    prune = sub.add_parser("prune", help="delete old finished jobs and results once")
    add_retention_options(prune)
    status = sub.add_parser("status", help="GPUs, queue, running jobs")
    status.add_argument("--json", action="store_true")
    jobs = sub.add_parser("jobs", help="list jobs, newest first")
    jobs.add_argument("--state", choices=JOB_STATES)
    jobs.add_argument("--limit", type=int, default=50)
    jobs.add_argument("--json", action="store_true")
    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job")
    submit = sub.add_parser("submit", help="queue a job (prints its id)")
    submit.add_argument("function", help="job function (noop, probe, simulate, ...)")
    submit.add_argument("--params", default="{}", help="JSON object of its parameters")
    submit.add_argument("--kind", default="batch", choices=[k.name.lower() for k in JobKind])
    submit.add_argument("--gpu-only", action="store_true", help="never run it on the CPU")
    submit.add_argument("--timeout", type=float, help="seconds before it is stopped")
    submit.add_argument("--id", help="job id (default: random)")
    _add_function_module_option(submit)
    opts = parser.parse_args(argv)
    if getattr(opts, "cpu_workers", 1) < 0 or getattr(opts, "gpu_slots", 1) < 1:
        parser.error("--cpu-workers must be >= 0 and --gpu-slots >= 1")
    handler = {"run": _run, "status": _status, "jobs": _jobs, "cancel": _cancel,
               "submit": _submit, "prune": _prune}[opts.command]  # fmt: skip
    return handler(opts)


if __name__ == "__main__":
    sys.exit(main())

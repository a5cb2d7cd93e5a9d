"""The job functions workers run, by name.

A job names its function (``JobSpec.function``); a worker looks it up here and calls
``function(params, device, workdir)``. Nothing is ever imported from a name in a job: the
registry is the only way in, as for gadget classes.

A function takes JSON-able ``params``, the torch device it was placed on (``"cpu"`` or
``"cuda"`` — a GPU worker sees its one GPU as ``cuda`` through ``CUDA_VISIBLE_DEVICES``), and a
private working folder for files; it returns a JSON-able summary. Files it leaves in ``workdir``
become the job's result files.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["FUNCTIONS", "JobFunction", "is_out_of_memory", "job_function", "run_function"]

JobFunction = Callable[[dict[str, Any], str, Path], dict[str, Any]]
"""``(params, device, workdir) -> summary``."""

FUNCTIONS: dict[str, JobFunction] = {}
"""Job functions by name."""

_MAX_SEQ = 16 * 2**20


def job_function(name: str) -> Callable[[JobFunction], JobFunction]:
    """Return a decorator that files a job function under ``name``."""

    def register(fn: JobFunction) -> JobFunction:
        if name in FUNCTIONS and FUNCTIONS[name] is not fn:
            raise ValueError(f"job function {name!r} is already registered")
        FUNCTIONS[name] = fn
        return fn

    return register


def run_function(name: str, params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Look up and run a job function.

    Raises
    ------
    ValueError
        For an unknown function name or bad parameters.
    """
    fn = FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown job function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
    if not isinstance(params, dict):
        raise ValueError(f"job parameters must be a JSON object, got {type(params).__name__}")
    return fn(params, device, workdir)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (CUDA) or host allocation failure."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _number(params: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{key} must lie in [{lo:g}, {hi:g}], got {value}")
    return value


@job_function("noop")
def noop(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Do nothing (or sleep ``sleep_s``, at most 60 s): for scheduling overhead and tests."""
    sleep_s = _number(params, "sleep_s", 0.0, 0.0, 60.0)
    if sleep_s:
        time.sleep(sleep_s)
    return {"device": device, "slept_s": sleep_s}


@job_function("probe")
def probe(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Report the worker's process id, device and environment (for status and tests).

    ``{"write_bytes": n}`` also writes ``probe.bin`` of n bytes (at most 1 MiB) into ``workdir``.
    """
    import os

    n = int(_number(params, "write_bytes", 0, 0, 2**20))
    if n:
        (workdir / "probe.bin").write_bytes(bytes(range(256)) * (n // 256) + bytes(n % 256))

    return {
        "pid": os.getpid(), "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }  # fmt: skip


@job_function("fail")
def fail(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Raise: ``{"error": "oom"}`` a MemoryError, else a RuntimeError (for tests)."""
    if params.get("error") == "oom":
        raise MemoryError("out of memory (requested by the job)")
    raise RuntimeError(str(params.get("message", "failed as asked")))


@job_function("simulate")
def simulate(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Simulate a sequence on a built-in phantom with PDG; write ``signal.npy``.

    Parameters (``params``)
    -----------------------
    seq
        The ``.seq`` file's text; or ``demo_flash`` (an int n: the built-in n x n FLASH).
    phantom, size, coils
        Built-in phantom (``brain``, ``shepp-logan``), matrix, receive coils.
    accuracy, max_states
        PDG thresholds (as ``mr0 simulate``).

    Returns ``{"samples", "coils", "seconds", "device"}``; the signal ``[samples, coils]``
    complex64 is in ``workdir/signal.npy``.
    """
    import numpy as np

    from mr0core.jobs import SimSettings, build_demo_flash, load_job_phantom, run_simulation
    from mr0core.phantom.builtin_phantoms import PHANTOMS
    from mr0core.pulseq import read_seq_text, seq_to_sequence
    from mr0core.sequence import Sequence

    if "seq" in params:
        text = params["seq"]
        if not isinstance(text, str) or len(text) > _MAX_SEQ:
            raise ValueError("seq must be the .seq file's text (at most 16 MiB)")
        seq = seq_to_sequence(read_seq_text(text, "<job .seq>"))
    else:
        n = int(_number(params, "demo_flash", 64, 4, 512))
        seq = Sequence.from_pypulseq(build_demo_flash(n))
    name = params.get("phantom", "brain")
    if name not in PHANTOMS:
        raise ValueError(f"phantom must be one of {', '.join(sorted(PHANTOMS))}, got {name!r}")
    size = int(_number(params, "size", 64, 4, 512))
    coils = int(_number(params, "coils", 1, 1, 64))
    acc = _number(params, "accuracy", 1e-3, 0.0, 1.0)
    max_states = int(_number(params, "max_states", 200, 1, 100000))
    phantom, _ = load_job_phantom(name, size, coils)
    started = time.perf_counter()
    signal = run_simulation(
        seq, phantom, SimSettings(max_states=max_states, min_emitted=acc, min_latent=acc),
        device="cuda" if device.startswith("cuda") else None, progress=False,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    np.save(workdir / "signal.npy", signal.numpy().astype(np.complex64))
    return {"samples": int(signal.shape[0]), "coils": int(signal.shape[1]),
            "seconds": round(seconds, 4), "device": device}  # fmt: skip


@job_function("simulate_saved")
def simulate_saved(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Simulate a sequence and phantom that the submitter saved with ``torch.save``.

    For in-process submitters (the server's twin gadgets) whose sequence and twin are objects
    (a header-built protocol, a placed twin) rather than a ``.seq`` text and a name. ``inputs``
    is the folder the submitter made with :meth:`scheduler.service.Scheduler.inputs_folder`:
    ``seq.pt`` (an :class:`mr0core.Sequence`) and ``phantom.pt`` (a built ``SimData``); the
    files are trusted as the store itself is (only the server writes them). Progress goes to
    ``inputs/progress.json`` (``{"done", "of"}``, every 0.5 s) for the submitter to relay.

    Other parameters: ``max_states``, ``min_state_mag``, ``min_emitted``, ``min_latent``,
    ``noise``, ``seed``. Writes ``signal.npy`` (``[samples, coils]`` complex64).
    """
    import json
    import os

    import numpy as np
    import torch

    from mr0core.jobs import SimSettings, run_simulation

    inputs = Path(str(params.get("inputs", "")))
    if not (
        inputs.is_dir() and (inputs / "seq.pt").is_file() and (inputs / "phantom.pt").is_file()
    ):
        raise ValueError(f"inputs {str(inputs)[:200]!r} is not a folder with seq.pt and phantom.pt")
    seq = torch.load(inputs / "seq.pt", weights_only=False)
    phantom = torch.load(inputs / "phantom.pt", weights_only=False)
    settings = SimSettings(
        max_states=int(_number(params, "max_states", 200, 1, 100000)),
        min_state_mag=_number(params, "min_state_mag", 1e-4, 0.0, 1.0),
        min_emitted=_number(params, "min_emitted", 1e-3, 0.0, 1.0),
        min_latent=_number(params, "min_latent", 1e-3, 0.0, 1.0),
    )
    noise = _number(params, "noise", 0.0, 0.0, 1e12)
    seed = int(_number(params, "seed", 0, 0, 2**63 - 1))
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done == total:
            last[0] = now
            tmp = inputs / ".progress.json.tmp"
            tmp.write_text(json.dumps({"done": done, "of": total}))
            os.replace(tmp, inputs / "progress.json")

    started = time.perf_counter()
    signal = run_simulation(
        seq, phantom, settings, device="cuda" if device.startswith("cuda") else None,
        noise=noise, progress=False, seed=seed, on_progress=progress,
    )  # fmt: skip
    np.save(workdir / "signal.npy", signal.numpy().astype(np.complex64))
    return {"samples": int(signal.shape[0]), "coils": int(signal.shape[1]),
            "seconds": round(time.perf_counter() - started, 4), "device": device}  # fmt: skip


@job_function("reconstruct_saved")
def reconstruct_saved(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Reconstruct raw data that the submitter saved with ``torch.save`` (the recon gadgets).

    ``inputs`` holds ``kdata.pt`` (a :class:`mr0core.recon.KData`) and optionally
    ``reference.pt`` (a coil reference scan's KData for SENSE); the same trust as for
    :func:`simulate_saved`. Parameters ``method``, ``coil_combine``, ``sense_iter`` are those of
    :func:`mr0core.recon.reconstruct`. Writes ``recon.pt``: ``{"image", "fov_m", "matrix",
    "method"}`` (the image on the CPU).
    """
    import torch

    from mr0core.recon.auto import METHODS, reconstruct

    inputs = Path(str(params.get("inputs", "")))
    if not (inputs / "kdata.pt").is_file():
        raise ValueError(f"inputs {str(inputs)[:200]!r} is not a folder with kdata.pt")
    method = params.get("method", "auto")
    combine = params.get("coil_combine", "rss")
    if method not in METHODS or combine not in ("rss", "walsh"):
        raise ValueError(f"bad method {method!r} or coil_combine {combine!r}")
    iters = int(_number(params, "sense_iter", 30, 1, 1000))
    kdata = torch.load(inputs / "kdata.pt", weights_only=False)
    reference = None
    if (inputs / "reference.pt").is_file():
        reference = torch.load(inputs / "reference.pt", weights_only=False)
    if device.startswith("cuda"):
        kdata = kdata.to("cuda") if hasattr(kdata, "to") else kdata
        if reference is not None and hasattr(reference, "to"):
            reference = reference.to("cuda")
    started = time.perf_counter()
    rec = reconstruct(kdata, method=method, coil_combine=combine, sense_iter=iters,
                      reference=reference)  # fmt: skip
    torch.save({"image": rec.image.detach().cpu(), "fov_m": rec.fov_m, "matrix": rec.matrix,
                "method": rec.method}, workdir / "recon.pt")  # fmt: skip
    return {"method": rec.method, "seconds": round(time.perf_counter() - started, 4),
            "device": device}  # fmt: skip

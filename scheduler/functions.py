"""The functions workers run, by name: durable jobs and interactive calls.

Two registries; nothing is ever imported from a name a job or a client gives (as for gadget
classes).

Jobs (:data:`FUNCTIONS`, :func:`job_function`)
    A durable job (:meth:`scheduler.service.Scheduler.submit`, ``mr0-scheduler submit``) names
    its function (``JobSpec.function``); a worker calls ``function(params, device, workdir)``
    with JSON-able ``params``, the torch device it was placed on (``"cpu"`` or ``"cuda"`` — a
    GPU worker sees its one GPU as ``cuda`` through ``CUDA_VISIBLE_DEVICES``), and a private
    working folder. It returns a JSON-able summary; files it leaves in ``workdir`` become the
    job's result files. A job submitted with input files finds them in ``workdir/input/``
    (:data:`INPUT_DIR`; not part of the result).
Calls (:data:`CALLS`, :func:`call_function`)
    An interactive call (:meth:`scheduler.service.Scheduler.call`: a preview, a session's
    reconstruction) gets objects and returns an object:
    ``function(inputs, params, device, progress) -> result``. ``inputs`` is a dict of objects
    the server built (a :class:`~mr0core.Sequence`, a built ``SimData``, a ``KData``, a text);
    they reach the worker through its task queue (pickled by our own server process, never
    read from a file or a client), and the result goes back on the result channel.
    ``progress(dict)`` sends a JSON-able progress message to the caller. Nothing is written
    to disk.

A client's ``.seq`` is parsed and converted in a worker, where the scheduler accounts for its
memory, never in the server: the call :func:`prepare_seq` takes the text and returns the
converted :class:`~mr0core.Sequence` with the simulation's memory estimate; the call
:func:`simulate_call` (``"simulate"``) then simulates it (and, asked, reconstructs it).

Plug-in modules (:func:`load_function_modules`)
    A layer above the scheduler adds functions of its own without the scheduler importing it:
    the scheduler's user names modules whose import registers them (with :func:`job_function`
    or :func:`call_function`), e.g. ``Scheduler(root, function_modules=
    ("gadgets.library.background_jobs",))`` or ``mr0-scheduler run --function-module MODULE``. The
    scheduler imports them when it is made (a name that is not a dotted identifier, a module
    that cannot be imported or that registers nothing fails it there), and every worker process
    (and every Ray task) imports them before it runs a function. Module names come from the
    program that makes the scheduler, never from a job or a client. The server's background
    MRD sessions (:data:`MRD_SESSION`) are such a plug-in.
"""

from __future__ import annotations

import importlib
import keyword
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CALLS",
    "FUNCTIONS",
    "INPUT_DIR",
    "MAX_SUB_SLICES",
    "MRD_SESSION",
    "RF_MODELS",
    "CallFunction",
    "FunctionModuleError",
    "JobFunction",
    "Progress",
    "call_function",
    "check_function_modules",
    "is_out_of_memory",
    "job_function",
    "load_function_modules",
    "prepare_seq",
    "reconstruct_call",
    "run_call",
    "run_function",
    "simulate_call",
]

JobFunction = Callable[[dict[str, Any], str, Path], dict[str, Any]]
"""``(params, device, workdir) -> summary``."""

Progress = Callable[[dict[str, Any]], None]
"""Sends one JSON-able progress message to the caller of a call."""

CallFunction = Callable[[Mapping[str, Any], dict[str, Any], str, Progress], Any]
"""``(inputs, params, device, progress) -> result``."""

FUNCTIONS: dict[str, JobFunction] = {}
"""Job functions (durable jobs) by name."""

CALLS: dict[str, CallFunction] = {}
"""Call functions (interactive calls) by name."""

INPUT_DIR = "input"
"""The sub-folder of a job's working folder that holds its stored input files."""

_MAX_SEQ = 16 * 2**20


def job_function(name: str) -> Callable[[JobFunction], JobFunction]:
    """Return a decorator that files a job function under ``name``."""

    def register(fn: JobFunction) -> JobFunction:
        if name in FUNCTIONS and FUNCTIONS[name] is not fn:
            raise ValueError(f"job function {name!r} is already registered")
        FUNCTIONS[name] = fn
        return fn

    return register


def call_function(name: str) -> Callable[[CallFunction], CallFunction]:
    """Return a decorator that files a call function under ``name``."""

    def register(fn: CallFunction) -> CallFunction:
        if name in CALLS and CALLS[name] is not fn:
            raise ValueError(f"call function {name!r} is already registered")
        CALLS[name] = fn
        return fn

    return register


class FunctionModuleError(ImportError):
    """A plug-in module of job or call functions cannot be imported, or registers none."""


_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_MAX_MODULE_NAME = 200


def check_function_modules(names: Iterable[str]) -> tuple[str, ...]:
    """Return the plug-in module names ``names``, checked, in order, without repeats.

    Raises
    ------
    ValueError
        If ``names`` is a single text rather than a collection of names, or a name is not a
        dotted name of ASCII identifiers (``package.module``; no keyword, at most 200
        characters).
    """
    if isinstance(names, str | bytes):
        raise ValueError(f"function_modules must be a collection of module names, not the one "
                         f"text {names!r:.220}")  # fmt: skip
    checked: list[str] = []
    for name in names:
        if (
            not isinstance(name, str)
            or len(name) > _MAX_MODULE_NAME
            or not _MODULE_NAME.fullmatch(name)
            or any(keyword.iskeyword(part) for part in name.split("."))
        ):
            raise ValueError(
                f"a function module must be a dotted module name such as "
                f"'gadgets.library.background_jobs', got {name!r:.220}"
            )
        if name not in checked:
            checked.append(name)
    return tuple(checked)


def load_function_modules(names: Iterable[str]) -> tuple[str, ...]:
    """Import the plug-in modules ``names``, whose import registers job or call functions.

    Importing a module twice costs nothing (Python keeps it): a worker calls this at its start,
    a Ray task before each function.

    Returns
    -------
    tuple of str
        The checked names (:func:`check_function_modules`).

    Raises
    ------
    ValueError
        For a name that is not a dotted module name.
    FunctionModuleError
        If a module cannot be imported (the cause is chained) or registers no function (no
        job or call function of this registry was defined in it).
    """
    modules = check_function_modules(names)
    for name in modules:
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # any failure of its import: re-raised with the module's name
            raise FunctionModuleError(
                f"function module {name!r} cannot be imported: {type(exc).__name__}: {exc}",
                name=name,
            ) from exc
        defined = [*FUNCTIONS.values(), *CALLS.values()]
        if not any(getattr(fn, "__module__", None) == module.__name__ for fn in defined):
            raise FunctionModuleError(
                f"function module {name!r} registers no job or call function", name=name
            )
    return modules


def run_function(name: str, params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Look up and run a job function.

    Raises
    ------
    ValueError
        For an unknown function name or bad parameters.
    """
    fn = FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown job function {name!r} (known: {', '.join(sorted(FUNCTIONS))}; "
                         f"a plug-in's functions need its module in function_modules)")  # fmt: skip
    if not isinstance(params, dict):
        raise ValueError(f"job parameters must be a JSON object, got {type(params).__name__}")
    return fn(params, device, workdir)


def run_call(
    name: str,
    inputs: Mapping[str, Any],
    params: dict[str, Any],
    device: str,
    progress: Progress | None = None,
) -> Any:
    """Look up and run a call function; return its result object.

    Raises
    ------
    ValueError
        For an unknown function name, inputs that are not a dict with text keys, parameters
        that are not a dict, or what the function refuses.
    """
    fn = CALLS.get(name)
    if fn is None:
        raise ValueError(f"unknown call function {name!r} (known: {', '.join(sorted(CALLS))}; "
                         f"a plug-in's functions need its module in function_modules)")  # fmt: skip
    if not isinstance(inputs, Mapping) or not all(isinstance(k, str) for k in inputs):
        raise ValueError("call inputs must be a dict with text keys")
    if not isinstance(params, dict):
        raise ValueError(f"call parameters must be a dict, got {type(params).__name__}")
    return fn(inputs, params, device, progress or _no_progress)


def _no_progress(message: dict[str, Any]) -> None:
    """Drop a progress message (a call run without a listener)."""


def _input(inputs: Mapping[str, Any], key: str, kind: type, function: str) -> Any:
    """Return ``inputs[key]``, checked to be a ``kind``."""
    value = inputs.get(key)
    if not isinstance(value, kind):
        raise ValueError(
            f"{function}: input {key!r} must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (CUDA) or host allocation failure."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text  # torch's CPU allocator
    )


def _number(params: dict[str, Any], key: str, default: float, lo: float, hi: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{key} must lie in [{lo:g}, {hi:g}], got {value}")
    return value


RF_MODELS = ("instantaneous", "shaped")
"""The values of the ``rf_model`` parameter (:data:`mr0core.sim.shaped.RF_MODELS`)."""
MAX_SUB_SLICES = 64
"""The most ``sub_slices`` a job may ask for: the most the automatic choice makes
(:data:`mr0core.sim.shaped.MAX_SUB_SLICES`), which ``prepare_seq`` resolves for the call that
follows. The gadgets bound what a client may ask for lower
(``gadgets.library.preview.MAX_SUB_SLICES``)."""


def _rf_options(params: dict[str, Any]) -> tuple[str, int | None]:
    """Return the validated ``rf_model`` and ``sub_slices`` (None: automatic) of ``params``."""
    rf_model = params.get("rf_model", "instantaneous")
    if rf_model not in RF_MODELS:
        raise ValueError(f"rf_model must be one of {', '.join(RF_MODELS)}, got {rf_model!r:.80}")
    if params.get("sub_slices") is None:
        return rf_model, None
    sub = _number(params, "sub_slices", 1, 1, MAX_SUB_SLICES)
    if sub != int(sub):
        raise ValueError(f"sub_slices must be an integer, got {sub}")
    if rf_model != "shaped":
        raise ValueError(f"sub_slices applies to rf_model 'shaped', not {rf_model!r}")
    return rf_model, int(sub)


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

    ``{"write_bytes": n}`` also writes ``probe.bin`` of n bytes (at most 1 MiB) into ``workdir``;
    ``{"hold_s": t}`` keeps the worker busy for t s first (at most 10; tests that need jobs spread
    over workers).
    """
    time.sleep(_number(params, "hold_s", 0.0, 0.0, 10.0))
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


MRD_SESSION = "mrd_session"
"""The job function of a background MRD session (the server's ``"background": true``).

A name only: the plug-in module ``gadgets.library.background_jobs`` defines and registers the
function
(the server names it in its scheduler's ``function_modules``); the scheduler imports nothing of
the gadgets."""


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
    from mr0core.sequence import Sequence

    if "seq" in params:
        text = params["seq"]
        if not isinstance(text, str) or len(text) > _MAX_SEQ:
            raise ValueError("seq must be the .seq file's text (at most 16 MiB)")
        seq = Sequence.from_text(text, "<job .seq>")
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


# -- calls ---------------------------------------------------------------------------------


@call_function("echo")
def echo_call(
    inputs: Mapping[str, Any], params: dict[str, Any], device: str, progress: Progress
) -> dict[str, Any]:
    """Return the inputs as they arrived, after ``steps`` progress messages (tests, overhead).

    Parameters (``params``): ``steps`` (0 to 1000) progress messages ``{"done", "of"}``,
    ``sleep_s`` (at most 60) spread evenly over them (or slept at once without steps).
    Returns ``{"inputs", "device", "pid"}``.
    """
    steps = int(_number(params, "steps", 0, 0, 1000))
    sleep_s = _number(params, "sleep_s", 0.0, 0.0, 60.0)
    if not steps:
        time.sleep(sleep_s)
    for i in range(steps):
        time.sleep(sleep_s / steps)
        progress({"done": i + 1, "of": steps})
    return {"inputs": dict(inputs), "device": device, "pid": os.getpid()}


@call_function("fail")
def fail_call(
    inputs: Mapping[str, Any], params: dict[str, Any], device: str, progress: Progress
) -> Any:
    """Raise, for tests: the text is ``params["message"]``.

    ``{"error": "value"}`` raises a ValueError (the call's own fault: not retried), ``"oom"``
    a MemoryError, anything else a RuntimeError.
    """
    message = str(params.get("message", "failed as asked"))
    if params.get("error") == "value":
        raise ValueError(message)
    if params.get("error") == "oom":
        raise MemoryError(f"out of memory (requested by the call): {message}")
    raise RuntimeError(message)


@call_function("prepare_seq")
def prepare_seq(
    inputs: Mapping[str, Any], params: dict[str, Any], device: str, progress: Progress
) -> dict[str, Any]:
    """Parse and convert a client's ``.seq`` text; return the sequence and its estimates.

    Inputs
    ------
    text
        The ``.seq`` file's text as the client sent it. Refused above
        ``SeqLimits().max_file_bytes`` (UTF-8 bytes); parsed and converted with the default
        :class:`mr0core.pulseq.SeqLimits` (every bound checked before it allocates). A malformed
        file or one over a bound is a ``ValueError`` (not retried) whose text starts
        ``the sequence does not parse:``.
    phantom
        Optional: the built twin (``SimData``), needed only for the automatic ``sub_slices``
        of ``rf_model`` ``"shaped"`` (:func:`mr0core.sim.shaped.default_sub_slices`).

    Parameters (``params``)
    -----------------------
    name
        The file's name in error messages (default ``<job .seq>``; at most 200 characters).
    voxels, coils, tx, exact, max_states
        The twin the sequence will be simulated on (built voxels, receive coils, transmit
        channels, whether it takes the exact signal path) and the pre-pass states, for the
        simulation's memory estimate (:func:`mr0core.sim.memory.estimate_pdg`). Optional:
        without ``voxels`` there is no estimate.
    layout
        Also return the readout layout.
    recon
        The simulation will also reconstruct: its estimate includes the reconstruction's.
    rf_model, sub_slices
        The simulation's RF model and sub-slices (as :func:`simulate_call`). With ``rf_model``
        ``"shaped"`` the estimate is that of ``voxels × sub_slices`` voxels; without
        ``sub_slices`` the automatic number is returned in the summary as ``sub_slices``.

    Returns
    -------
    dict
        ``{"sequence": Sequence, "summary": {...}, "layout": ndarray or None}``. The summary
        holds ``repetitions``, ``samples``, ``readouts``, ``conversion_bytes``
        (:func:`mr0core.pulseq.conversion_size`'s estimate of this conversion),
        ``estimate_bytes`` (the simulation's; 0 without ``voxels``) and, with ``rf_model``
        ``"shaped"``, ``sub_slices``. ``layout`` (with ``layout``) is ``[readouts, 2]`` int64:
        first signal row and samples of each imaging readout, as
        :meth:`mr0core.recon.KData.from_sequence` splits them.
    """
    import torch

    # torch and mr0core load only in the worker that runs a call (the service stays light)
    from mr0core.phantom.sim_data import SimData
    from mr0core.pulseq import (
        DEFAULT_SEQ_LIMITS,
        SeqFormatError,
        conversion_size,
        read_seq_text,
        seq_to_sequence,
    )
    from mr0core.recon.kdata import KData, KDataError

    from .estimate import estimate_simulation_from_sequence

    name = params.get("name", "<job .seq>")
    if not isinstance(name, str) or len(name) > 200:
        raise ValueError(f"name must be a text of at most 200 characters, got {name!r:.220}")
    rf_model, sub_slices = _rf_options(params)
    text = _input(inputs, "text", str, "prepare_seq")
    limit = DEFAULT_SEQ_LIMITS.max_file_bytes
    size = len(text.encode("utf-8")) if len(text) <= limit else len(text)
    if size > limit:
        raise ValueError(
            f"the sequence does not parse: {name}: {size} bytes is more than the limit "
            f"max_file_bytes={limit}"
        )
    try:
        parsed = read_seq_text(text, name)
        converted = conversion_size(parsed).bytes
        seq = seq_to_sequence(parsed)
    except SeqFormatError as exc:  # SeqLimitError too: refused before it allocated
        raise ValueError(f"the sequence does not parse: {exc}") from None
    del parsed
    samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    readouts = 0
    layout: KData | None = None
    rows = None
    if params.get("layout") or params.get("recon"):
        try:
            layout = KData.from_sequence(torch.zeros(samples, 1, dtype=torch.complex64), seq)
        except KDataError as exc:
            raise ValueError(f"the sequence has no readout layout: {exc}") from None
        readouts = int(layout.readout_start.shape[0])
        if params.get("layout"):
            starts_lengths = torch.stack([layout.readout_start, layout.readout_length], 1)
            rows = starts_lengths.to(torch.int64).numpy()
    if rf_model == "shaped" and sub_slices is None:
        from mr0core.sim.shaped import default_sub_slices

        sub_slices = default_sub_slices(seq, _input(inputs, "phantom", SimData, "prepare_seq"))
    estimate = 0
    if "voxels" in params:
        recon_layout = layout if bool(params.get("recon")) else None
        sim_params = dict(params)
        if sub_slices is not None:  # the main pass simulates every sub-slice as a voxel
            voxels = params["voxels"]
            if isinstance(voxels, int) and not isinstance(voxels, bool):
                sim_params["voxels"] = voxels * sub_slices
        estimate = estimate_simulation_from_sequence(
            seq, sim_params, samples=samples,
            recon_matrix=recon_layout.recon_matrix if recon_layout is not None else None,
            recon_method=(
                "auto"
                if recon_layout is None or recon_layout.trajectory == "cartesian"
                else "nufft"
            ),
        )  # fmt: skip
    summary: dict[str, Any] = {
        "repetitions": len(seq), "samples": samples, "readouts": readouts,
        "conversion_bytes": int(converted), "estimate_bytes": int(estimate),
    }  # fmt: skip
    if rf_model == "shaped":
        summary["sub_slices"] = sub_slices
    return {"sequence": seq, "summary": summary, "layout": rows}


PROGRESS_INTERVAL_S = 0.25
"""Shortest time between two progress messages of a simulation call (s); the last is always
sent."""


@call_function("simulate")
def simulate_call(
    inputs: Mapping[str, Any], params: dict[str, Any], device: str, progress: Progress
) -> dict[str, Any]:
    """Simulate a sequence on a built twin with PDG (and, asked, reconstruct it).

    For the server's twin gadgets, whose sequence and twin are objects (a header-built
    protocol, a client's ``.seq`` converted by :func:`prepare_seq`, a placed twin moving by its
    ``phantom_motion``).

    Inputs: ``sequence`` (a :class:`mr0core.Sequence`) and ``phantom`` (a built ``SimData``).
    Parameters: ``max_states``, ``min_state_mag``, ``min_emitted``, ``min_latent``, ``noise``,
    ``seed``, ``rf_model`` (``"instantaneous"``, the default, or ``"shaped"``: slice profiles
    from the sequence's RF waveforms, :mod:`mr0core.sim.shaped`) and, with ``"shaped"``,
    ``sub_slices`` (1 to :data:`MAX_SUB_SLICES`; default automatic); ``recon`` (also
    reconstruct the signal by its trajectory: ``reconstruct(KData.from_sequence(signal,
    seq))``), ``raw`` (also return the signal as ISMRMRD acquisitions,
    :func:`mr0core.io.mrd.sig_to_mrd`'s).

    Progress: ``{"done", "of"}`` repetitions, at most every :data:`PROGRESS_INTERVAL_S`.

    Returns ``{"signal", "summary", "recon", "acquisitions"}``: the signal ``[samples, coils]``
    complex64 on the CPU; the summary (``samples``, ``coils``, ``seconds``, ``device``,
    ``repetitions``, and ``method`` with ``recon``); the :class:`~mr0core.recon.auto.Reconstruction`
    (image on the CPU) or None; a list of ``ismrmrd.Acquisition`` or None.
    """
    # torch and mr0core load only in the worker that runs a call (the service stays light)
    from mr0core.jobs import SimSettings, run_simulation
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence

    rf_model, sub_slices = _rf_options(params)
    seq = _input(inputs, "sequence", Sequence, "simulate")
    phantom = _input(inputs, "phantom", SimData, "simulate")
    settings = SimSettings(
        max_states=int(_number(params, "max_states", 200, 1, 100000)),
        min_state_mag=_number(params, "min_state_mag", 1e-4, 0.0, 1.0),
        min_emitted=_number(params, "min_emitted", 1e-3, 0.0, 1.0),
        min_latent=_number(params, "min_latent", 1e-3, 0.0, 1.0),
    )
    noise = _number(params, "noise", 0.0, 0.0, 1e12)
    seed = int(_number(params, "seed", 0, 0, 2**63 - 1))
    last = [-math.inf]

    def on_progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_INTERVAL_S or done == total:
            last[0] = now
            progress({"done": int(done), "of": int(total)})

    started = time.perf_counter()
    signal = run_simulation(
        seq, phantom, settings, device="cuda" if device.startswith("cuda") else None,
        noise=noise, progress=False, seed=seed, on_progress=on_progress, rf_model=rf_model,
        sub_slices=sub_slices,
    )  # fmt: skip
    signal = signal.detach().cpu().to(dtype=signal.dtype)
    summary: dict[str, Any] = {
        "samples": int(signal.shape[0]), "coils": int(signal.shape[1]),
        "seconds": round(time.perf_counter() - started, 4), "device": device,
        "repetitions": len(seq),
    }  # fmt: skip
    rec = None
    if params.get("recon"):
        from dataclasses import replace

        from mr0core.recon import KData, reconstruct

        rec = reconstruct(KData.from_sequence(signal, seq))
        rec = replace(rec, image=rec.image.detach().cpu())
        summary["method"] = rec.method
    acquisitions = None
    if params.get("raw"):
        acquisitions = _acquisitions(signal, seq)
    return {"signal": signal, "summary": summary, "recon": rec, "acquisitions": acquisitions}


def _acquisitions(signal: Any, seq: Any) -> list[Any]:
    """Return the signal as ``ismrmrd.Acquisition`` objects with sig_to_mrd's headers.

    :func:`mr0core.io.mrd.sig_to_mrd` writes a file: it goes to a private temporary folder of
    this worker and is read back at once.
    """
    import ismrmrd

    from mr0core.io.mrd import sig_to_mrd

    with tempfile.TemporaryDirectory(prefix="mr0-raw-") as tmp:
        path = Path(tmp) / "raw.h5"
        sig_to_mrd(path, signal, seq)
        dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
        try:
            return [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
        finally:
            dataset.close()


@call_function("reconstruct")
def reconstruct_call(
    inputs: Mapping[str, Any], params: dict[str, Any], device: str, progress: Progress
) -> Any:
    """Reconstruct raw data (the recon gadgets' SENSE and NUFFT).

    Inputs: ``kdata`` (a :class:`mr0core.recon.KData`) and optionally ``reference`` (a coil
    reference scan's KData for SENSE). Parameters ``method``, ``coil_combine``, ``sense_iter``
    are those of :func:`mr0core.recon.reconstruct`. Returns the
    :class:`~mr0core.recon.auto.Reconstruction`, its image on the CPU.
    """
    from dataclasses import replace

    # torch and mr0core load only in the worker that runs a call (the service stays light)
    from mr0core.recon.auto import METHODS, reconstruct
    from mr0core.recon.kdata import KData

    method = params.get("method", "auto")
    combine = params.get("coil_combine", "rss")
    if method not in METHODS or combine not in ("rss", "walsh"):
        raise ValueError(f"bad method {method!r} or coil_combine {combine!r}")
    iters = int(_number(params, "sense_iter", 30, 1, 1000))
    kdata = _input(inputs, "kdata", KData, "reconstruct")
    reference = inputs.get("reference")
    if reference is not None and not isinstance(reference, KData):
        raise ValueError(f"reconstruct: input 'reference' must be a KData or None, got "
                         f"{type(reference).__name__}")  # fmt: skip
    if device.startswith("cuda"):
        kdata = kdata.to("cuda")
        if reference is not None:
            reference = reference.to("cuda")
    rec = reconstruct(kdata, method=method, coil_combine=combine, sense_iter=iters,
                      reference=reference)  # fmt: skip
    return replace(rec, image=rec.image.detach().cpu())

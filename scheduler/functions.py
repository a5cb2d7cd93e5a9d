"""The job functions workers run, by name.

A job names its function (``JobSpec.function``); a worker looks it up here and calls
``function(params, device, workdir)``. Nothing is ever imported from a name in a job: the
registry is the only way in, as for gadget classes.

A function takes JSON-able ``params``, the torch device it was placed on (``"cpu"`` or
``"cuda"`` — a GPU worker sees its one GPU as ``cuda`` through ``CUDA_VISIBLE_DEVICES``), and a
private working folder for files; it returns a JSON-able summary. Files it leaves in ``workdir``
become the job's result files.

A function registered with ``inputs=True`` also reads files its submitter left in a folder of
the scheduler's store; ``params["inputs"]`` names it. :func:`run_function` confines that name
to the scheduler's ``inputs/`` folder before the function sees it
(:func:`scheduler.paths.confined_folder`: ``/etc``, ``../../x`` or a link out of it is an
:class:`~scheduler.paths.InputPathError`) and passes the folder as a fourth argument. The
files there are job files (:mod:`scheduler.jobfiles`): plain data read with
``torch.load(weights_only=True)``, never a pickle that could run code, or plain text
(``seq.txt``, a client's ``.seq``, parsed here within :class:`mr0core.pulseq.SeqLimits`).

A client's ``.seq`` is parsed and converted in a worker, where the scheduler accounts for its
memory, never in the server: :func:`prepare_seq` reads ``seq.txt``, writes the
:class:`~mr0core.Sequence` as ``seq.pt`` beside it and returns the memory estimate of the
simulation; :func:`simulate_saved` then simulates (and, asked, reconstructs) it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .paths import confined_file, confined_folder, make_private, open_private

__all__ = [
    "FUNCTIONS",
    "INPUT_FUNCTIONS",
    "MAX_SUB_SLICES",
    "RF_MODELS",
    "JobFunction",
    "is_out_of_memory",
    "job_function",
    "prepare_seq",
    "run_function",
    "simulate_saved",
]

JobFunction = Callable[..., dict[str, Any]]
"""``(params, device, workdir) -> summary``; with ``inputs=True``: ``(..., inputs) -> summary``."""

FUNCTIONS: dict[str, JobFunction] = {}
"""Job functions by name."""

INPUT_FUNCTIONS: set[str] = set()
"""Names of the functions that read an inputs folder (``params["inputs"]``)."""

_MAX_SEQ = 16 * 2**20


def job_function(name: str, *, inputs: bool = False) -> Callable[[JobFunction], JobFunction]:
    """Return a decorator that files a job function under ``name``.

    ``inputs``: the function reads the folder ``params["inputs"]`` names, and is called with it
    (confined, see the module docstring) as a fourth argument.
    """

    def register(fn: JobFunction) -> JobFunction:
        if name in FUNCTIONS and FUNCTIONS[name] is not fn:
            raise ValueError(f"job function {name!r} is already registered")
        FUNCTIONS[name] = fn
        if inputs:
            INPUT_FUNCTIONS.add(name)
        return fn

    return register


def run_function(
    name: str,
    params: dict[str, Any],
    device: str,
    workdir: Path,
    *,
    inputs_root: Path | None = None,
) -> dict[str, Any]:
    """Look up and run a job function.

    Parameters
    ----------
    name, params, device, workdir
        The function's registry name and its arguments.
    inputs_root
        The scheduler's ``inputs/`` folder: the only place a function's ``params["inputs"]``
        may name (None: functions that read inputs cannot run here).

    Raises
    ------
    ValueError
        For an unknown function name or bad parameters;
        :class:`~scheduler.paths.InputPathError` (a ValueError) for an inputs folder outside
        ``inputs_root``.
    """
    fn = FUNCTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown job function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
    if not isinstance(params, dict):
        raise ValueError(f"job parameters must be a JSON object, got {type(params).__name__}")
    if name in INPUT_FUNCTIONS:
        return fn(params, device, workdir, confined_folder(params.get("inputs"), inputs_root))
    return fn(params, device, workdir)


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
(:data:`mr0core.sim.shaped.MAX_SUB_SLICES`), which ``prepare_seq`` resolves for the job that
follows. The gadgets bound what a client may ask for lower (``gadgets.twin.MAX_SUB_SLICES``)."""


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
    import os
    import time

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


@job_function("prepare_seq", inputs=True)
def prepare_seq(params: dict[str, Any], device: str, workdir: Path, inputs: Path) -> dict[str, Any]:
    """Parse and convert a client's ``.seq`` text; save the sequence for :func:`simulate_saved`.

    ``inputs`` (confined, see the module docstring) holds ``seq.txt``, the ``.seq`` file's
    text as the client sent it (UTF-8). It is read only if within
    ``SeqLimits().max_file_bytes``, parsed and converted with the default
    :class:`mr0core.pulseq.SeqLimits` (every bound checked before it allocates), and the
    :class:`mr0core.Sequence` is written to ``inputs/seq.pt``
    (:func:`scheduler.jobfiles.save_object`). A malformed file or one over a bound fails the
    job with a ``ValueError`` (not retried) whose text starts ``the sequence does not parse:``.

    Parameters (``params``)
    -----------------------
    name
        The file's name in error messages (default ``<job .seq>``; at most 200 characters).
    voxels, coils, tx, exact, max_states
        The twin the sequence will be simulated on (built voxels, receive coils, transmit
        channels, whether it takes the exact signal path) and the pre-pass states, for the
        simulation's memory estimate (:func:`scheduler.estimate.estimate_pdg`). Optional:
        without ``voxels`` there is no estimate.
    layout
        Also write ``layout.npy`` (``[readouts, 2]`` int64: first signal row and samples of
        each imaging readout, as :meth:`mr0core.recon.KData.from_sequence` splits them).
    recon
        The simulation will also reconstruct: its estimate includes the reconstruction's.
    rf_model, sub_slices
        The simulation's RF model and sub-slices (as :func:`simulate_saved`). With
        ``rf_model`` ``"shaped"`` the estimate is that of ``voxels × sub_slices`` voxels; without
        ``sub_slices`` the automatic number
        (:func:`mr0core.sim.shaped.default_sub_slices` of the sequence and ``phantom.pt``) is
        returned as ``sub_slices`` for :func:`simulate_saved`.

    Returns ``{"repetitions", "samples", "readouts", "conversion_bytes", "estimate_bytes"}``
    (and ``sub_slices`` with ``rf_model`` ``"shaped"``): ``conversion_bytes`` is
    :func:`mr0core.pulseq.conversion_size`'s estimate of this conversion, ``estimate_bytes`` the
    simulation job's (0 without ``voxels``).
    """
    import numpy as np
    import torch

    # torch and mr0core load only in the worker that runs a job (the service stays light)
    from mr0core.pulseq import (
        DEFAULT_SEQ_LIMITS,
        SeqFormatError,
        conversion_size,
        read_seq_text,
        seq_to_sequence,
    )
    from mr0core.recon.kdata import KData, KDataError

    from .estimate import estimate_simulation_from_sequence
    from .jobfiles import load_object, save_object

    name = params.get("name", "<job .seq>")
    if not isinstance(name, str) or len(name) > 200:
        raise ValueError(f"name must be a text of at most 200 characters, got {name!r:.220}")
    rf_model, sub_slices = _rf_options(params)
    path = confined_file(inputs, "seq.txt")
    size = path.stat().st_size
    limit = DEFAULT_SEQ_LIMITS.max_file_bytes
    if size > limit:
        raise ValueError(
            f"the sequence does not parse: {name}: {size} bytes is more than the limit "
            f"max_file_bytes={limit}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"the sequence does not parse: {name}: not UTF-8 text: {exc}") from None
    try:
        parsed = read_seq_text(text, name)
        del text
        converted = conversion_size(parsed).bytes
        seq = seq_to_sequence(parsed)
    except SeqFormatError as exc:  # SeqLimitError too: refused before it allocated
        raise ValueError(f"the sequence does not parse: {exc}") from None
    del parsed
    samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    readouts = 0
    layout = None
    if params.get("layout") or params.get("recon"):
        try:
            layout = KData.from_sequence(torch.zeros(samples, 1, dtype=torch.complex64), seq)
        except KDataError as exc:
            raise ValueError(f"the sequence has no readout layout: {exc}") from None
        readouts = int(layout.readout_start.shape[0])
        if params.get("layout"):
            rows = torch.stack([layout.readout_start, layout.readout_length], 1)
            with open_private(workdir / "layout.npy") as f:
                np.save(f, rows.to(torch.int64).numpy(), allow_pickle=False)
    if rf_model == "shaped" and sub_slices is None:
        from mr0core.sim.shaped import default_sub_slices

        sub_slices = default_sub_slices(seq, load_object(confined_file(inputs, "phantom.pt"),
                                                         "SimData"))  # fmt: skip
    estimate = 0
    if "voxels" in params:
        recon = layout is not None and bool(params.get("recon"))
        sim_params = dict(params)
        if sub_slices is not None:  # the main pass simulates every sub-slice as a voxel
            voxels = params["voxels"]
            if isinstance(voxels, int) and not isinstance(voxels, bool):
                sim_params["voxels"] = voxels * sub_slices
        estimate = estimate_simulation_from_sequence(
            seq, sim_params, samples=samples,
            recon_matrix=layout.recon_matrix if recon else None,
            recon_method="auto" if not recon or layout.trajectory == "cartesian" else "nufft",
        )  # fmt: skip
    save_object(seq, inputs / "seq.pt")
    summary: dict[str, Any] = {
        "repetitions": len(seq), "samples": samples, "readouts": readouts,
        "conversion_bytes": int(converted), "estimate_bytes": int(estimate),
    }  # fmt: skip
    if rf_model == "shaped":
        summary["sub_slices"] = sub_slices
    return summary


@job_function("simulate_saved", inputs=True)
def simulate_saved(
    params: dict[str, Any], device: str, workdir: Path, inputs: Path
) -> dict[str, Any]:
    """Simulate a sequence and phantom that the submitter saved as job files.

    For in-process submitters (the server's twin gadgets) whose sequence and twin are objects
    (a header-built protocol, a placed twin) rather than a ``.seq`` text and a name.
    ``params["inputs"]`` names the folder the submitter made with
    :meth:`scheduler.service.Scheduler.inputs_folder` (``inputs``, confined to the scheduler's
    ``inputs/`` folder by :func:`run_function`): ``seq.pt`` (a :class:`mr0core.Sequence`) and
    ``phantom.pt`` (a built ``SimData``), both written with
    :func:`scheduler.jobfiles.save_object` and read as plain data (nothing in them can run).
    Progress goes to ``inputs/progress.json`` (``{"done", "of"}``, every 0.5 s) for the
    submitter to relay.

    Other parameters: ``max_states``, ``min_state_mag``, ``min_emitted``, ``min_latent``,
    ``noise``, ``seed``, ``rf_model`` (``"instantaneous"``, the default, or ``"shaped"``: slice
    profiles from the sequence's RF waveforms, :mod:`mr0core.sim.shaped`) and, with
    ``"shaped"``, ``sub_slices`` (1 to :data:`MAX_SUB_SLICES`; default automatic). Writes
    ``signal.npy`` (``[samples, coils]`` complex64). With ``recon`` true it also reconstructs
    the signal by its trajectory (``reconstruct(KData.from_sequence(signal, seq))``) into
    ``recon.pt`` (as :func:`reconstruct_saved` does); with ``raw`` true it writes the signal as
    ISMRMRD raw data ``raw.h5`` (:func:`mr0core.io.mrd.sig_to_mrd`). So a submitter that never
    had the :class:`~mr0core.Sequence` (a client's ``.seq``, converted by :func:`prepare_seq`)
    gets images and acquisitions without converting it itself.
    """
    import json
    import os

    import numpy as np

    # torch and mr0core load only in the worker that runs a job (the service stays light)
    from mr0core.jobs import SimSettings, run_simulation

    from .jobfiles import load_object

    rf_model, sub_slices = _rf_options(params)  # before any file is read
    seq = load_object(confined_file(inputs, "seq.pt"), "Sequence")
    phantom = load_object(confined_file(inputs, "phantom.pt"), "SimData")
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
        noise=noise, progress=False, seed=seed, on_progress=progress, rf_model=rf_model,
        sub_slices=sub_slices,
    )  # fmt: skip
    np.save(workdir / "signal.npy", signal.numpy().astype(np.complex64))
    summary: dict[str, Any] = {
        "samples": int(signal.shape[0]), "coils": int(signal.shape[1]),
        "seconds": round(time.perf_counter() - started, 4), "device": device,
        "repetitions": len(seq),
    }  # fmt: skip
    if params.get("recon"):
        from mr0core.recon import KData, reconstruct

        from .jobfiles import save_object

        rec = reconstruct(KData.from_sequence(signal, seq))
        save_object({"image": rec.image.detach().cpu(), "fov_m": list(rec.fov_m),
                     "matrix": list(rec.matrix), "method": rec.method},
                    workdir / "recon.pt")  # fmt: skip
        summary["method"] = rec.method
    if params.get("raw"):
        from mr0core.io.mrd import sig_to_mrd

        raw = workdir / "raw.h5"
        sig_to_mrd(raw, signal, seq)  # in the job's private working folder
        make_private(raw)
    return summary


@job_function("reconstruct_saved", inputs=True)
def reconstruct_saved(
    params: dict[str, Any], device: str, workdir: Path, inputs: Path
) -> dict[str, Any]:
    """Reconstruct raw data that the submitter saved as job files (the recon gadgets).

    ``inputs`` (confined as for :func:`simulate_saved`) holds ``kdata.pt`` (a
    :class:`mr0core.recon.KData`) and optionally ``reference.pt`` (a coil reference scan's
    KData for SENSE), written with :func:`scheduler.jobfiles.save_object`. Parameters
    ``method``, ``coil_combine``, ``sense_iter`` are those of :func:`mr0core.recon.reconstruct`.
    Writes ``recon.pt``, a job file of the dict ``{"image", "fov_m", "matrix", "method"}`` (the
    image on the CPU; read it with ``load_object(path, "dict")``).
    """
    # torch and mr0core load only in the worker that runs a job (the service stays light)
    from mr0core.recon.auto import METHODS, reconstruct

    from .jobfiles import load_object, save_object

    method = params.get("method", "auto")
    combine = params.get("coil_combine", "rss")
    if method not in METHODS or combine not in ("rss", "walsh"):
        raise ValueError(f"bad method {method!r} or coil_combine {combine!r}")
    iters = int(_number(params, "sense_iter", 30, 1, 1000))
    kdata = load_object(confined_file(inputs, "kdata.pt"), "KData")
    reference = None
    if (inputs / "reference.pt").exists() or (inputs / "reference.pt").is_symlink():
        reference = load_object(confined_file(inputs, "reference.pt"), "KData")
    if device.startswith("cuda"):
        kdata = kdata.to("cuda")
        if reference is not None:
            reference = reference.to("cuda")
    started = time.perf_counter()
    rec = reconstruct(kdata, method=method, coil_combine=combine, sense_iter=iters,
                      reference=reference)  # fmt: skip
    result = {"image": rec.image.detach().cpu(), "fov_m": list(rec.fov_m),
              "matrix": list(rec.matrix), "method": rec.method}  # fmt: skip
    save_object(result, workdir / "recon.pt")
    return {"method": rec.method, "seconds": round(time.perf_counter() - started, 4),
            "device": device}  # fmt: skip

"""Peak-memory estimates of the scheduler's jobs and calls, in bytes, by function name.

A job declares its expected peak memory (:class:`scheduler.model.JobSpec`'s ``estimate_bytes``);
the scheduler multiplies it by its safety factor before it compares it with a device's free
memory. The memory models live beside what they model: :mod:`mr0core.sim.memory` (PDG
simulations; it selects the states with the main pass's own rule) and :mod:`mr0core.recon.memory`
(reconstructions); their docstrings give the formulas and the calibration. This module keeps
what is the scheduler's own:

- the registries :data:`JOB_ESTIMATORS` and :data:`CALL_ESTIMATORS`, keyed by the job and call
  functions of :mod:`scheduler.functions` (a test holds them to those names), with the
  functions that need no estimate listed there with the reason (:class:`NoEstimate`);
- the readers of a job's JSON-able parameters and of a call's input objects, which check every
  bound before any phantom is built or sequence read;
- :data:`FIXED_BYTES`, the one-time costs of the fresh worker process a job may start in, added
  to every host-memory estimate;
- the estimate of reading a client's ``.seq`` (the call :func:`scheduler.functions.prepare_seq`).

Reading a client's ``.seq``
---------------------------
The server does not parse a client's ``.seq``; a call does, before anything else, and its
estimate must hold before the text has been parsed. :class:`mr0core.pulseq.SeqLimits` bounds
the read and the conversion (the parsed file included) to ``max_memory_bytes`` each, checked
before they allocate (:func:`mr0core.pulseq.conversion_size`), so::

    prepare = FIXED_BYTES + SEQ_TEXT_COPIES · text bytes + max_memory_bytes
            + SEQ_LAYOUT_BYTES_PER_SAMPLE · max_total_adc_samples       (readout layout)

The call then converts and reports :func:`estimate_simulation_from_sequence` for the
simulation call that follows (its PDG bound, or, when it also reconstructs, the larger of that
and the reconstruction with the signal kept).

Host figures (``"cpu"``) are ``FIXED_BYTES`` + the model's; device figures (``"cuda"``) are the
model's alone (``torch.cuda.max_memory_allocated`` does not count the CUDA context).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .functions import MRD_SESSION

# mr0core (and torch) load inside the estimators, when an estimate is made: the scheduler
# service imports this module and stays light, as it does scheduler.functions
if TYPE_CHECKING:
    from mr0core.sequence import Sequence

__all__ = [
    "CALL_ESTIMATORS",
    "FIXED_BYTES",
    "JOB_ESTIMATORS",
    "CallEstimator",
    "Estimator",
    "NoEstimate",
    "estimate_call",
    "estimate_job",
    "estimate_prepare_call",
    "estimate_reconstruct_call",
    "estimate_seq_parse",
    "estimate_simulate_call",
    "estimate_simulation_from_sequence",
    "estimate_simulation_job",
    "format_bytes",
]

FIXED_BYTES = 12 << 20
"""One-time host costs of a fresh process that runs a job or call: BLAS/OpenMP buffers and
thread stacks, code pages (calibrated with the models: ``scripts/calibrate_estimate.py``).

Not included: numba and the PDG's compiled kernels (about 150 MB resident, loaded once
per worker process on its first simulation and kept): a worker's cost, not a job's."""

SEQ_TEXT_COPIES = 2
"""Copies of a ``.seq`` text alive while it is read: the bytes and the decoded text."""
SEQ_LAYOUT_BYTES_PER_SAMPLE = 2 * np.dtype(np.complex64).itemsize
"""Bytes per ADC sample of the readout layout (a zero signal and KData's copy of it)."""

PREPASS_AUTO_VOXELS = 1 << 17
"""``estimate_job`` runs the pre-pass by itself only for phantoms up to this many voxels…"""
PREPASS_AUTO_WORK = 100_000
"""… and repetitions × ``max_states`` up to this (about 3 s at most for the test corpus)."""

# -- limits of the parameters (checked before any work) ------------------------------------------

MAX_SIZE = 1024  # as mr0core.jobs.load_job_phantom
MAX_COILS = 64
MAX_STATES = 1_000_000
DEMO_FLASH = (4, 512, 64)
"""``demo_flash`` of the ``simulate`` job: least, most, default (as the job)."""
_BUILD_LIMIT = 256  # built-in phantoms are built (coils = 1) to count voxels up to this size


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int in ``[lo, hi]`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return int(value)


def _device(params: Mapping[str, Any]) -> str:
    """Return ``params["device"]`` as ``"cpu"`` (default) or ``"cuda"``."""
    from mr0core.sim.memory import device_kind

    return device_kind(params.get("device") or "cpu")


def _with_fixed(model_bytes: int, device: str) -> int:
    """Return a model's figure as the scheduler places it: host figures with ``FIXED_BYTES``."""
    return int(model_bytes + (FIXED_BYTES if device == "cpu" else 0))


# -- the simulate job's parameters ---------------------------------------------------------------


def _load_sequence(spec: Any) -> Sequence:
    """Return a sequence from a :class:`Sequence`, Pulseq text, or a ``.seq`` path."""
    from mr0core.sequence import Sequence

    if isinstance(spec, Sequence):
        return spec
    if not isinstance(spec, str | Path):
        raise ValueError(f"seq must be Pulseq text or a .seq path, got {type(spec).__name__}")
    text = str(spec)
    if "\n" in text or text.lstrip().startswith(("[", "#")):
        return Sequence.from_text(text, "<job .seq>")  # as the job reads it
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"seq: no such file {text!r} (give Pulseq text or a .seq path)")
    return Sequence.import_file(path)


def _demo_flash(n: int) -> Sequence:
    """Return the ``simulate`` job's built-in ``n`` × ``n`` FLASH."""
    from mr0core.jobs import build_demo_flash
    from mr0core.sequence import Sequence

    return Sequence.from_pypulseq(build_demo_flash(n))


@functools.lru_cache(maxsize=64)
def _builtin_voxels(name: str, size: int) -> int:
    """Return the voxels of a built-in phantom (built with one coil; partial volume counts)."""
    from mr0core.jobs import load_job_phantom

    phantom, _ = load_job_phantom(name, size, 1)
    return int(phantom.build().PD.shape[0])


def _json_phantom(path: Path, size: int | None) -> tuple[int, int | None, int, bool]:
    """Return ``(voxels, coils, tx channels, exact)`` of a NIfTI phantom (JSON and headers)."""
    import nibabel

    from mr0core.phantom.nifti import NiftiPhantom, NiftiRef
    from mr0core.sim.memory import MAX_GROUPS

    config = NiftiPhantom.load(path)
    tissues = list(config.tissues.values())
    first = tissues[0].density
    ref = first if isinstance(first, NiftiRef) else first.file
    img = nibabel.load(path.parent / ref.file_name)
    if not isinstance(img, nibabel.spatialimages.SpatialImage):
        raise ValueError(f"{ref.file_name}: not an image volume")
    shape = tuple(int(s) for s in img.shape[:3])
    nz = shape[2] if len(shape) > 2 else 1
    grid = (size * size * nz) if size is not None else math.prod(shape)
    tx = max(len(t.B1_tx) for t in tissues)
    coils = max(len(t.B1_rx) for t in tissues)  # its own receive maps: the job's coils do not apply
    constant = all(isinstance(t.T2dash, int | float) and isinstance(t.ADC, int | float)
                   for t in tissues)  # fmt: skip
    exact = not constant or len(tissues) > MAX_GROUPS
    return len(tissues) * grid, coils, tx, exact


def _phantom_voxels(spec: Any, size: Any) -> tuple[int, int | None, int, bool]:
    """Return ``(voxels, coils, tx channels, exact)`` of the job's phantom, building no big one.

    ``coils`` is None for built-ins (made with the job's ``coils``).
    """
    from mr0core.phantom.builtin_phantoms import PHANTOMS

    if size is not None:
        _check_int("size", size, 4, MAX_SIZE)
    if not isinstance(spec, str):
        raise ValueError(f"phantom must be a built-in name or a .json path, got {spec!r}")
    if spec in PHANTOMS:
        n = 64 if size is None else int(size)
        if n <= _BUILD_LIMIT:
            return _builtin_voxels(spec, n), None, 1, False
        return n * n, None, 1, False  # the partial-volume excess vanishes at large sizes
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise ValueError(f"phantom {spec!r}: expected {', '.join(PHANTOMS)} or a .json file")
    if not path.is_file():
        raise ValueError(f"phantom file not found: {path}")
    return _json_phantom(path, None if size is None else int(size))


def _sim_settings(params: Mapping[str, Any]) -> Any:
    """Return the job's :class:`mr0core.jobs.SimSettings`, as the ``simulate`` job makes them.

    ``max_states`` (bounded) and ``accuracy`` (``min_emitted`` = ``min_latent``, in [0, 1]).
    """
    from mr0core.jobs import SimSettings

    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    accuracy = params.get("accuracy", 1e-3)  # the job's default
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float):
        raise ValueError(f"accuracy must be a number, got {accuracy!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must lie in [0, 1], got {accuracy}")
    return SimSettings(max_states=max_states, min_emitted=float(accuracy),
                       min_latent=float(accuracy))  # fmt: skip


def estimate_simulation_job(params: Mapping[str, Any], prepass: bool | None = None) -> int:
    """Estimate the job ``simulate`` (:func:`scheduler.functions.simulate`) from its parameters.

    Parameters
    ----------
    params
        The job's: ``seq`` (Pulseq text; here also a ``.seq`` path) or ``demo_flash`` (n, the
        built-in n × n FLASH; 64 without either), ``phantom`` (a built-in name, default
        ``"brain"``; here also a NIfTI-phantom ``.json``, which brings its own receive maps:
        ``coils`` applies to built-ins only), ``size``, ``coils``, ``max_states`` and
        ``accuracy`` (the main pass's ``min_emitted`` and ``min_latent``); and ``device``
        (``"cpu"``, default: host memory with :data:`FIXED_BYTES`, or ``"cuda"``).
    prepass
        True: the phantom is built (one coil) and the pre-pass run, for
        :func:`mr0core.sim.memory.estimate_pdg_from_graph`; False: the bound of
        :func:`mr0core.sim.memory.estimate_pdg`; None (default) runs the pre-pass where it is
        cheap: at most ``PREPASS_AUTO_VOXELS`` voxels and ``PREPASS_AUTO_WORK`` repetitions ×
        ``max_states``.

    Raises
    ------
    ValueError
        For a parameter out of range, checked before any phantom is built or sequence read.
    """
    from mr0core.sim.memory import load_bytes, pdg_load, pdg_load_from_graph

    coils = _check_int("coils", params.get("coils", 1), 1, MAX_COILS)
    settings = _sim_settings(params)
    device = _device(params)
    demo = None
    if "seq" not in params:
        low, high, default = DEMO_FLASH
        demo = _check_int("demo_flash", params.get("demo_flash", default), low, high)
    spec, size = params.get("phantom", "brain"), params.get("size")
    voxels, own_coils, tx, exact = _phantom_voxels(spec, size)
    coils = coils if own_coils is None else own_coils
    seq = _demo_flash(demo) if demo is not None else _load_sequence(params["seq"])
    if prepass is None:
        prepass = (
            voxels <= PREPASS_AUTO_VOXELS and len(seq) * settings.max_states <= PREPASS_AUTO_WORK
        )
    if not prepass:
        load = pdg_load(seq, voxels, coils, settings.max_states, tx=tx, exact=exact)
        return _with_fixed(load_bytes(load, device), device)
    from mr0core.jobs import load_job_phantom
    from mr0core.sim import compute_graph

    data = load_job_phantom(spec, size, 1)[0].build()
    graph = compute_graph(seq, data, settings.max_states, settings.min_state_mag)
    load = pdg_load_from_graph(
        graph, seq, data, settings.min_emitted, settings.min_latent, coils=coils
    )
    return _with_fixed(load_bytes(load, device), device)


# -- calls ---------------------------------------------------------------------------------------


def estimate_seq_parse(
    text_bytes: int | None = None, limits: Any = None, *, layout: bool = True
) -> int:
    """Return the peak bytes of reading and converting a ``.seq`` text within ``limits`` (a bound).

    Parameters
    ----------
    text_bytes
        Size of the text (bytes); default the largest ``limits`` admit (``max_file_bytes``).
    limits
        A :class:`mr0core.pulseq.SeqLimits`; default :data:`mr0core.pulseq.DEFAULT_SEQ_LIMITS`.
    layout
        Whether the readout layout is made too (``prepare_seq``'s ``layout`` or ``recon``).

    Notes
    -----
    No pre-scan of the file: the read and the conversion are each bounded by
    ``limits.max_memory_bytes`` before they allocate, so that budget is the estimate (see the
    module docstring).
    """
    from mr0core.pulseq import DEFAULT_SEQ_LIMITS, SeqLimits

    limits = DEFAULT_SEQ_LIMITS if limits is None else limits
    if not isinstance(limits, SeqLimits):
        raise ValueError(f"limits must be a SeqLimits, got {type(limits).__name__}")
    if text_bytes is None:
        text_bytes = limits.max_file_bytes
    _check_int("text_bytes", text_bytes, 0, limits.max_file_bytes)
    total = FIXED_BYTES + SEQ_TEXT_COPIES * text_bytes + limits.max_memory_bytes
    if layout:
        total += SEQ_LAYOUT_BYTES_PER_SAMPLE * limits.max_total_adc_samples
    return int(total)


def estimate_simulation_from_sequence(
    seq: Sequence,
    params: Mapping[str, Any],
    *,
    samples: int | None = None,
    recon_matrix: Any = None,
    recon_method: str = "auto",
) -> int:
    """Estimate a simulation of ``seq`` on a built twin described by ``params``.

    ``params``: ``voxels`` (built entries), ``coils``, ``tx``, ``exact``, ``max_states`` (as
    :func:`mr0core.sim.memory.estimate_pdg`) and ``device`` (default ``"cpu"``: the host
    figure, the larger, so it holds wherever the job is placed). With ``recon_matrix`` the job
    also reconstructs (``recon_method``) after simulating: the larger of the PDG bound and the
    reconstruction with the signal (``samples`` ADC samples per coil) kept.
    """
    from mr0core.recon.memory import estimate_recon_bytes
    from mr0core.sim.memory import SIGNAL_BYTES, estimate_pdg

    voxels = _check_int("voxels", params.get("voxels"), 1, 1 << 40)
    coils = _check_int("coils", params.get("coils", 1), 1, MAX_COILS)
    tx = _check_int("tx", params.get("tx", 1), 1, MAX_COILS)
    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    exact = params.get("exact", False)
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be true or false, got {exact!r}")
    device = _device(params)
    pdg = estimate_pdg(seq, voxels, coils, max_states, tx=tx, exact=exact, device=device)
    total = _with_fixed(pdg, device)
    if recon_matrix is not None:
        if samples is None:
            samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
        matrix = [int(v) for v in recon_matrix]
        recon = estimate_recon_bytes(matrix, coils, recon_method, samples=max(int(samples), 1))
        total = max(total, FIXED_BYTES + recon + SIGNAL_BYTES * int(samples) * coils)
    return int(total)


def _call_sub_slices(params: Mapping[str, Any]) -> int:
    sub = params.get("sub_slices")
    if params.get("rf_model") == "shaped" and isinstance(sub, int) and not isinstance(sub, bool):
        return max(1, sub)
    return 1


def estimate_prepare_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``prepare_seq``: the parse bound of its ``text`` input."""
    text = inputs.get("text")
    if not isinstance(text, str):
        raise ValueError("prepare_seq: input 'text' must be a str")
    from mr0core.pulseq import DEFAULT_SEQ_LIMITS

    size = min(len(text.encode("utf-8")), DEFAULT_SEQ_LIMITS.max_file_bytes)
    return estimate_seq_parse(size, layout=bool(params.get("layout") or params.get("recon")))


def estimate_simulate_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``simulate``: the PDG bound of its objects, host figure.

    The host (``cpu``) figure (:func:`mr0core.sim.memory.estimate_pdg` + :data:`FIXED_BYTES`)
    is the larger, so it holds on the CPU and a GPU alike; ``sub_slices`` (``rf_model``
    ``"shaped"``) multiply the voxels. A reconstruction the call also runs (``recon``) is not
    counted: a caller that knows the readout layout passes the larger estimate
    (:func:`estimate_simulation_from_sequence`, from ``prepare_seq``).
    """
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence
    from mr0core.sim.memory import estimate_pdg

    seq, data = inputs.get("sequence"), inputs.get("phantom")
    if not isinstance(seq, Sequence) or not isinstance(data, SimData):
        raise ValueError("simulate: inputs 'sequence' (a Sequence) and 'phantom' (a SimData)")
    coils = int(data.coil_sens.shape[0])
    tx = int(data.B1.shape[0])
    voxels = int(data.voxel_count) * _call_sub_slices(params)
    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    return _with_fixed(estimate_pdg(seq, voxels, coils, max_states, tx=tx, device="cpu"), "cpu")


def estimate_reconstruct_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``reconstruct`` from its ``kdata``.

    :func:`mr0core.recon.memory.estimate_recon_bytes` of the raw data's matrix, coils and
    samples, + :data:`FIXED_BYTES`.
    """
    from mr0core.recon.kdata import KData
    from mr0core.recon.memory import estimate_recon_bytes

    kd = inputs.get("kdata")
    if not isinstance(kd, KData):
        raise ValueError("reconstruct: input 'kdata' must be a KData")
    recon = estimate_recon_bytes(kd.recon_matrix, kd.n_coils, params.get("method", "auto"),
                                 samples=int(kd.signal.shape[0]))  # fmt: skip
    return FIXED_BYTES + recon


# -- the registries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoEstimate:
    """A registered function without a memory estimate (it is placed as 0 bytes), and why.

    Test and probe functions need none; a function whose memory cannot be told from its
    parameters says so here, so that the omission is a decision on record, not an oversight.
    """

    reason: str


Estimator = Callable[[Mapping[str, Any], bool | None], int]
"""``(params, prepass) -> bytes``."""

CallEstimator = Callable[[Mapping[str, Any], Mapping[str, Any]], int]
"""``(inputs, params) -> bytes``."""

JOB_ESTIMATORS: dict[str, Estimator | NoEstimate] = {
    "noop": NoEstimate("sleeps (at most 60 s); allocates nothing"),
    "probe": NoEstimate("reports its environment; writes at most 1 MiB to its folder"),
    "fail": NoEstimate("raises at once (tests)"),
    MRD_SESSION: NoEstimate(
        "runs a stored MRD session through its whole chain (a plug-in of the gadgets): its"
        " memory is the chain's, which its parameters (the chain's name, the server's folders)"
        " do not tell; not estimated yet"
    ),
    "simulate": estimate_simulation_job,
}
"""Job function name (:data:`scheduler.functions.FUNCTIONS`) → estimator of its JSON-able
parameters alone (:meth:`scheduler.service.Scheduler.submit`, ``mr0-scheduler submit``). Every
job function has an entry, those of the plug-in modules the project ships included
(:data:`scheduler.functions.MRD_SESSION`), and every entry names a job function (a test checks
both, with the plug-ins loaded)."""

CALL_ESTIMATORS: dict[str, CallEstimator | NoEstimate] = {
    "echo": NoEstimate("returns its inputs, which the caller already holds (tests, overhead)"),
    "fail": NoEstimate("raises at once (tests)"),
    "prepare_seq": estimate_prepare_call,
    "simulate": estimate_simulate_call,
    "reconstruct": estimate_reconstruct_call,
}
"""Call function name (:data:`scheduler.functions.CALLS`) → estimator of its input objects and
parameters (:meth:`scheduler.service.Scheduler.call` without ``estimate_bytes``). Every call
function has an entry, and every entry names a call function (a test checks both)."""


def estimate_call(function_name: str, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Return the estimated peak bytes of the call ``function_name`` on ``inputs`` (objects).

    A function listed as :class:`NoEstimate` gives 0.

    Raises
    ------
    ValueError
        For a function that is not in :data:`CALL_ESTIMATORS`, or inputs it cannot read.
    """
    estimator = CALL_ESTIMATORS.get(function_name)
    if estimator is None:
        known = ", ".join(sorted(CALL_ESTIMATORS))
        raise ValueError(f"no memory estimate for call {function_name!r} (known: {known})")
    if isinstance(estimator, NoEstimate):
        return 0
    return int(estimator(inputs, params))


def estimate_job(
    function_name: str, params: Mapping[str, Any], *, prepass: bool | None = None
) -> int:
    """Return the estimated peak bytes of the job ``function_name(**params)``, without running it.

    Parameters
    ----------
    function_name
        A key of :data:`JOB_ESTIMATORS` (a job function of :mod:`scheduler.functions`); one
        listed as :class:`NoEstimate` gives 0.
    params
        The job's JSON-able parameters, e.g. ``{"seq": "<Pulseq text>", "phantom": "brain",
        "size": 64, "coils": 1, "max_states": 200}``.
    prepass
        Simulations: True runs the PDG pre-pass for exact state counts (0.01–3 s for the test
        corpus, 7 s for a 3000-repetition MPRAGE), False takes the bound of
        :func:`mr0core.sim.memory.estimate_pdg` (no simulation at all, but up to tens of times
        too high), None (default) the pre-pass where it is cheap (see
        :func:`estimate_simulation_job`).

    Raises
    ------
    ValueError
        For an unknown function, or parameters out of range (size beyond 1024, coils outside
        1..64, …), checked before any phantom is built.
    """
    estimator = JOB_ESTIMATORS.get(function_name)
    if estimator is None:
        known = ", ".join(sorted(JOB_ESTIMATORS))
        raise ValueError(f"no memory estimate for job function {function_name!r} (known: {known})")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    if isinstance(estimator, NoEstimate):
        return 0
    return int(estimator(params, prepass))


def format_bytes(n: float) -> str:
    """Return ``n`` bytes as a short text (``"12.3 MB"``; decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"

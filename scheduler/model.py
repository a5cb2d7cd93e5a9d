"""The scheduler's shared vocabulary: job kinds and priorities, job specs, GPU snapshots.

Every other scheduler module (``gpu``, ``state``, ``store``, ``estimate``, ``workers``) speaks
in these types, so the pure decision logic (:mod:`scheduler.state`) can be tested without
processes, GPUs or files. Sizes are bytes, times seconds (``time.time()`` for wall-clock stamps,
``time.monotonic()`` inside one process).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CPU",
    "JOB_STATES",
    "GpuProcess",
    "GpuSnapshot",
    "JobKind",
    "JobSpec",
]

CPU = "cpu"
"""The device name of CPU placement (GPUs are ``"cuda:<index>"``)."""

JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
"""The states of a job. ``done``, ``failed`` and ``cancelled`` are final."""


class JobKind(enum.IntEnum):
    """What a job is; the value is its priority rank (lower runs first)."""

    PREVIEW = 0
    RETROSIM = 1
    RECON = 2
    BATCH = 3

    @classmethod
    def parse(cls, name: str | JobKind) -> JobKind:
        """Return the kind named ``name`` (case-insensitive), e.g. ``"preview"``.

        Raises
        ------
        ValueError
            For an unknown name.
        """
        if isinstance(name, JobKind):
            return name
        try:
            return cls[str(name).upper()]
        except KeyError:
            known = ", ".join(k.name.lower() for k in cls)
            raise ValueError(f"unknown job kind {name!r} (known: {known})") from None


@dataclass(frozen=True)
class JobSpec:
    """What the scheduler needs to know to place and run a job.

    Attributes
    ----------
    id
        Unique job id (a plain name: letters, digits, ``_-.``).
    kind
        Its :class:`JobKind` (the priority class).
    estimate_bytes
        Expected peak device memory (see :mod:`scheduler.estimate`).
    function
        Name of the job function in the worker's registry (never a dotted import path from a
        client).
    params
        JSON-able arguments of the job function.
    allow_cpu
        Whether the job may run on a CPU worker when no GPU fits (or after a GPU out-of-memory).
    needs_gpu
        Whether it must run on a GPU (False: any device).
    timeout_s
        Longest run time, None: no limit.
    submitted
        Wall-clock submission time (``time.time()``); orders jobs of equal priority.
    max_attempts
        Starts allowed before the job fails for good (a crashed worker or scheduler counts).
    durable
        Whether the job outlives its submitter: True (background and command-line jobs) runs
        again after a restart; False (a preview or a session's recon, whose submitter waits for
        it in-process) is cancelled by the next start's recovery, since nobody would read its
        result.
    """

    id: str
    kind: JobKind
    estimate_bytes: int = 0
    function: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    allow_cpu: bool = True
    needs_gpu: bool = False
    timeout_s: float | None = None
    submitted: float = 0.0
    max_attempts: int = 3
    durable: bool = True


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU (as NVML reports it)."""

    pid: int
    used_bytes: int
    name: str = ""


@dataclass(frozen=True)
class GpuSnapshot:
    """One GPU at one moment (NVML's view: foreign processes count).

    Attributes
    ----------
    index
        The NVML index (``cuda:<index>`` with ``CUDA_VISIBLE_DEVICES`` unset).
    name
        The product name.
    total_bytes, free_bytes, used_bytes
        Memory.
    utilization
        GPU utilisation 0..100 (%).
    temperature_c
        Core temperature in °C (None if unknown).
    processes
        Compute processes on it.
    uuid
        The GPU's UUID (stable across reboots; '' if unknown).
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    utilization: float = 0.0
    temperature_c: float | None = None
    processes: tuple[GpuProcess, ...] = ()
    uuid: str = ""

    @property
    def device(self) -> str:
        """``"cuda:<index>"``."""
        return f"cuda:{self.index}"

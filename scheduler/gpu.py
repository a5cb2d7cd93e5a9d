"""GPU monitoring through NVML, and a scripted fake NVML for tests.

:class:`GpuMonitor` reads NVML (the ``nvidia-ml-py`` package, imported as ``pynvml``) and turns
each GPU into a :class:`~scheduler.model.GpuSnapshot`: total, free and used memory (bytes),
utilisation (%), temperature (°C) and the compute processes on it with their memory (bytes).
NVML's free memory is authoritative: it counts foreign processes and the jobs this scheduler
already runs. Jobs started since the last snapshot are reserved on top of it by
:mod:`scheduler.state`, not here.

Without ``pynvml``, without a driver, or when NVML finds no GPU, the monitor is CPU-only: it
returns no snapshot and logs one warning line (logger ``"mr0.scheduler"``) saying why.

:class:`FakeNvml` implements the subset of the ``pynvml`` API that the monitor uses, with
scripted GPUs (:class:`FakeGpu`) whose values tests may change between calls.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from scheduler.model import GpuProcess, GpuSnapshot

__all__ = ["FakeGpu", "FakeNvml", "FakeNvmlError", "FakeProcess", "GpuMonitor"]

log = logging.getLogger("mr0.scheduler")

_NVML_TEMPERATURE_GPU = 0
"""``pynvml.NVML_TEMPERATURE_GPU``: the core temperature sensor."""


def _text(value: str | bytes) -> str:
    """Return an NVML string as ``str`` (older ``pynvml`` versions return ``bytes``)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


class GpuMonitor:
    """Per-GPU memory, utilisation, temperature and processes, read from NVML.

    Parameters
    ----------
    interval_s
        Longest age of the cached snapshots (s): :meth:`snapshot` refreshes them when they are
        older, and the background thread of :meth:`start` refreshes them this often.
    nvml
        A module-like object with the ``pynvml`` API subset used here (``nvmlInit``,
        ``nvmlShutdown``, ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``,
        ``nvmlDeviceGetMemoryInfo``, ``nvmlDeviceGetUtilizationRates``,
        ``nvmlDeviceGetTemperature``, ``nvmlDeviceGetComputeRunningProcesses``,
        ``nvmlDeviceGetName``, ``nvmlDeviceGetUUID``, optionally ``nvmlSystemGetProcessName``,
        and the exception class ``NVMLError``), e.g. a :class:`FakeNvml`. None: ``import pynvml``.
    clock
        Monotonic clock (s) that ages the cache; tests inject their own.

    Notes
    -----
    Failing to import ``pynvml``, to initialise NVML (no driver) or to find any GPU makes the
    monitor CPU-only (:attr:`available` is False, :meth:`snapshot` returns ``[]``), with one
    warning line that says why. An error on one GPU never loses the others: a GPU whose memory
    cannot be read is left out of the snapshot (it cannot be placed on), an unreadable
    temperature is None, an unreadable utilisation 0 %, unreadable processes none.
    """

    def __init__(
        self,
        interval_s: float = 1.0,
        nvml: Any | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0 s, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshots: list[GpuSnapshot] = []
        self._stamp: float | None = None
        self._taken_at: float | None = None
        self._warned: set[tuple[int, str]] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._nvml: Any | None = None
        self._count = 0
        self._reason = ""
        self._open(nvml)

    # -- set-up ------------------------------------------------------------------------------

    def _open(self, nvml: Any | None) -> None:
        """Initialise NVML, or record (and log once) why the monitor is CPU-only."""
        if nvml is None:
            try:
                import pynvml  # optional dependency (the gpu extra): absent on CPU-only hosts
            except ImportError as exc:
                self._cpu_only(f"nvidia-ml-py (pynvml) is not installed: {exc}")
                return
            nvml = pynvml
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._cpu_only(f"NVML did not initialise (no NVIDIA driver?): {exc}")
            return
        try:
            count = int(nvml.nvmlDeviceGetCount())
        except nvml.NVMLError as exc:
            self._shutdown(nvml)
            self._cpu_only(f"NVML could not count the GPUs: {exc}")
            return
        if count == 0:
            self._shutdown(nvml)
            self._cpu_only("NVML reports no GPU")
            return
        self._nvml = nvml
        self._count = count

    def _cpu_only(self, reason: str) -> None:
        self._reason = reason
        log.warning("no GPU for the scheduler, jobs run on the CPU only: %s", reason)

    @staticmethod
    def _shutdown(nvml: Any) -> None:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError as exc:
            log.debug("nvmlShutdown failed: %s", exc)

    # -- public API --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether NVML works and found at least one GPU."""
        return self._nvml is not None

    @property
    def reason(self) -> str:
        """Why the monitor is CPU-only ('' when :attr:`available`)."""
        return self._reason

    @property
    def device_count(self) -> int:
        """Number of GPUs NVML reported at start (0 when CPU-only)."""
        return self._count

    @property
    def taken_at(self) -> float | None:
        """Wall-clock time (``time.time()``, s) of the last refresh; None before the first."""
        return self._taken_at

    def snapshot(self) -> list[GpuSnapshot]:
        """Return the GPUs, refreshed first when the cache is older than ``interval_s``.

        Returns
        -------
        list of GpuSnapshot
            One per readable GPU, by index; ``[]`` when CPU-only.
        """
        if self._nvml is None:
            return []
        with self._lock:
            stale = self._stamp is None or self._clock() - self._stamp >= self.interval_s
        if stale:
            return self.refresh()
        with self._lock:
            return list(self._snapshots)

    def refresh(self) -> list[GpuSnapshot]:
        """Read every GPU from NVML now, whatever the cache's age.

        Returns
        -------
        list of GpuSnapshot
            One per readable GPU, by index; ``[]`` when CPU-only.
        """
        nvml = self._nvml
        if nvml is None:
            return []
        with self._lock:
            snapshots = [s for i in range(self._count) if (s := self._read(nvml, i)) is not None]
            self._snapshots = snapshots
            self._stamp = self._clock()
            self._taken_at = time.time()
            return list(snapshots)

    def start(self) -> None:
        """Refresh in a background (daemon) thread every ``interval_s`` until :meth:`stop`."""
        if self._nvml is None or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mr0-gpu-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background thread (if any) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop the thread and shut NVML down; the monitor is CPU-only afterwards."""
        self.stop()
        nvml, self._nvml = self._nvml, None
        if nvml is not None:
            self._shutdown(nvml)
            self._reason = "the monitor is closed"
        with self._lock:
            self._snapshots = []

    def __enter__(self) -> GpuMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(max(self.interval_s, 0.01))

    def _warn_once(self, index: int, what: str, exc: Exception) -> None:
        """Log the first failure of ``what`` on GPU ``index`` as a warning, repeats as debug."""
        level = logging.DEBUG if (index, what) in self._warned else logging.WARNING
        self._warned.add((index, what))
        log.log(level, "cuda:%d: cannot read %s from NVML: %s", index, what, exc)

    def _read(self, nvml: Any, index: int) -> GpuSnapshot | None:
        """Read one GPU; None when its memory cannot be read."""
        error = nvml.NVMLError
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        except error as exc:
            self._warn_once(index, "memory", exc)
            return None
        try:
            name = _text(nvml.nvmlDeviceGetName(handle))
        except error as exc:
            self._warn_once(index, "name", exc)
            name = ""
        try:
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except error as exc:
            self._warn_once(index, "uuid", exc)
            uuid = ""
        try:
            utilization = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except error as exc:
            self._warn_once(index, "utilisation", exc)
            utilization = 0.0
        try:
            sensor = getattr(nvml, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU)
            temperature: float | None = float(nvml.nvmlDeviceGetTemperature(handle, sensor))
        except error as exc:
            self._warn_once(index, "temperature", exc)
            temperature = None
        try:
            processes = tuple(
                self._process(nvml, p) for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
            )
        except error as exc:
            self._warn_once(index, "processes", exc)
            processes = ()
        return GpuSnapshot(
            index=index,
            name=name,
            total_bytes=int(memory.total),
            free_bytes=int(memory.free),
            used_bytes=int(memory.used),
            utilization=utilization,
            temperature_c=temperature,
            processes=processes,
            uuid=uuid,
        )

    @staticmethod
    def _process(nvml: Any, process: Any) -> GpuProcess:
        """One NVML process record; memory None (not available, e.g. in containers) is 0."""
        used = getattr(process, "usedGpuMemory", None)
        name = ""
        get_name = getattr(nvml, "nvmlSystemGetProcessName", None)
        if get_name is not None:
            try:
                name = _text(get_name(process.pid))
            except nvml.NVMLError:
                name = ""
        return GpuProcess(pid=int(process.pid), used_bytes=int(used or 0), name=name)


# -- the fake ------------------------------------------------------------------------------


class FakeNvmlError(Exception):
    """The fake's ``NVMLError``: carries an NVML return code in ``value``."""

    _TEXT: ClassVar[dict[int, str]] = {
        1: "Uninitialized",
        3: "Not Supported",
        9: "Driver Not Loaded",
        12: "NVML Shared Library Not Found",
        15: "GPU is lost",
        999: "Unknown Error",
    }

    def __init__(self, value: int) -> None:
        self.value = value
        super().__init__(self._TEXT.get(value, f"NVML error {value}"))


@dataclass
class FakeProcess:
    """A process on a fake GPU (``pynvml`` process record: ``.pid``, ``.usedGpuMemory``)."""

    pid: int
    usedGpuMemory: int | None  # pynvml's attribute name
    name: str = ""


@dataclass
class FakeGpu:
    """A scripted GPU; tests may change any field between calls.

    Attributes
    ----------
    total_bytes
        Total memory (bytes).
    used_bytes
        Used memory (bytes); None: the sum of the processes' memory.
    utilization
        GPU utilisation (%).
    temperature_c
        Core temperature (°C); None: the sensor is "Not Supported" (raises).
    processes
        Compute processes on the GPU.
    name
        Product name; ``bytes`` mimics older ``pynvml``.
    uuid
        The GPU's UUID.
    broken
        Calls that raise ``NVMLError`` on this GPU, by short name: ``"handle"``, ``"memory"``,
        ``"name"``, ``"uuid"``, ``"utilization"``, ``"temperature"``, ``"processes"``.
    """

    total_bytes: int
    used_bytes: int | None = None
    utilization: int = 0
    temperature_c: int | None = 40
    processes: list[FakeProcess] = field(default_factory=list)
    name: str | bytes = "Fake GPU"
    uuid: str | bytes = ""
    broken: set[str] = field(default_factory=set)

    @property
    def used(self) -> int:
        """The used memory (bytes)."""
        if self.used_bytes is not None:
            return self.used_bytes
        return sum(p.usedGpuMemory or 0 for p in self.processes)


@dataclass(frozen=True)
class _Memory:
    total: int
    free: int
    used: int


@dataclass(frozen=True)
class _Utilization:
    gpu: int
    memory: int = 0


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    """A stand-in for the ``pynvml`` module with scripted GPUs.

    Parameters
    ----------
    gpus
        The GPUs, by index. The list is kept (not copied): tests may edit it and its items.
    driver_missing
        Make ``nvmlInit`` raise ``NVMLError`` ("Driver Not Loaded"), as on a machine without an
        NVIDIA driver.

    Attributes
    ----------
    calls
        How often each API function was called, by name (tests count refreshes with it).
    """

    NVMLError = FakeNvmlError
    NVML_TEMPERATURE_GPU = _NVML_TEMPERATURE_GPU

    def __init__(self, gpus: Iterable[FakeGpu] = (), *, driver_missing: bool = False) -> None:
        self.gpus = gpus if isinstance(gpus, list) else list(gpus)
        self.driver_missing = driver_missing
        self.initialised = False
        self.calls: dict[str, int] = {}

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        if not self.initialised and name != "nvmlInit":
            raise FakeNvmlError(1)

    def _gpu(self, handle: _Handle, what: str) -> FakeGpu:
        gpu = self.gpus[handle.index]
        if what in gpu.broken:
            raise FakeNvmlError(3)
        return gpu

    def nvmlInit(self) -> None:
        """Initialise; raises ``NVMLError`` when ``driver_missing``."""
        self._call("nvmlInit")
        if self.driver_missing:
            raise FakeNvmlError(9)
        self.initialised = True

    def nvmlShutdown(self) -> None:
        """Shut NVML down."""
        self._call("nvmlShutdown")
        self.initialised = False

    def nvmlDeviceGetCount(self) -> int:
        """Return the number of GPUs."""
        self._call("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        """Return the handle of GPU ``index``; raise "GPU is lost" past the end."""
        self._call("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus) or "handle" in self.gpus[index].broken:
            raise FakeNvmlError(15)
        return _Handle(index)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _Memory:
        """Return the memory (bytes): ``.total``, ``.free``, ``.used``."""
        self._call("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(handle, "memory")
        used = min(gpu.used, gpu.total_bytes)
        return _Memory(total=gpu.total_bytes, free=gpu.total_bytes - used, used=used)

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> _Utilization:
        """Return the utilisation (%): ``.gpu``, ``.memory``."""
        self._call("nvmlDeviceGetUtilizationRates")
        return _Utilization(gpu=self._gpu(handle, "utilization").utilization)

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        """Return the core temperature (°C); raise "Not Supported" when the script says None."""
        self._call("nvmlDeviceGetTemperature")
        gpu = self._gpu(handle, "temperature")
        if sensor != _NVML_TEMPERATURE_GPU or gpu.temperature_c is None:
            raise FakeNvmlError(3)
        return gpu.temperature_c

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[FakeProcess]:
        """Return the compute processes (``.pid``, ``.usedGpuMemory`` in bytes or None)."""
        self._call("nvmlDeviceGetComputeRunningProcesses")
        return list(self._gpu(handle, "processes").processes)

    def nvmlDeviceGetName(self, handle: _Handle) -> str | bytes:
        """Return the product name (``str``, or ``bytes`` as older ``pynvml`` returns)."""
        self._call("nvmlDeviceGetName")
        return self._gpu(handle, "name").name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str | bytes:
        """Return the UUID."""
        self._call("nvmlDeviceGetUUID")
        return self._gpu(handle, "uuid").uuid

    def nvmlSystemGetProcessName(self, pid: int) -> str:
        """Return the name of process ``pid``; raise "Not Supported" for an unknown pid."""
        self._call("nvmlSystemGetProcessName")
        for gpu in self.gpus:
            for p in gpu.processes:
                if p.pid == pid:
                    return p.name
        raise FakeNvmlError(3)

"""``scheduler.gpu``: NVML snapshots from a scripted fake, CPU-only fallback, errors, refresh."""

from __future__ import annotations

import logging
import sys
import threading

import pytest

from scheduler.gpu import FakeGpu, FakeNvml, FakeProcess, GpuMonitor
from scheduler.model import GpuProcess

GB = 10**9
LOGGER = "mr0.scheduler"


class Clock:
    """A settable monotonic clock (s)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def four_gpus() -> list[FakeGpu]:
    """80 GB busy, 40 GB, 24 GB (bytes name, hot), 80 GB half-filled by a foreign process."""
    return [
        FakeGpu(80 * GB, used_bytes=1 * GB, utilization=55, temperature_c=61, name="A100-80",
                uuid="GPU-0"),
        FakeGpu(40 * GB, used_bytes=0, utilization=5, temperature_c=35, name="A100-40",
                uuid="GPU-1"),
        FakeGpu(24 * GB, used_bytes=2 * GB, utilization=0, temperature_c=80, name=b"RTX-24",
                uuid=b"GPU-2"),
        FakeGpu(80 * GB, utilization=30, temperature_c=50, name="H100-80", uuid="GPU-3",
                processes=[FakeProcess(pid=4242, usedGpuMemory=40 * GB, name="foreign")]),
    ]  # fmt: skip


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_snapshots_report_each_gpu() -> None:
    nvml = FakeNvml(four_gpus())
    monitor = GpuMonitor(nvml=nvml)
    assert monitor.available
    assert monitor.reason == ""
    assert monitor.device_count == 4
    snaps = monitor.snapshot()
    assert [s.index for s in snaps] == [0, 1, 2, 3]
    assert [s.device for s in snaps] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [s.total_bytes for s in snaps] == [80 * GB, 40 * GB, 24 * GB, 80 * GB]
    assert [s.free_bytes for s in snaps] == [79 * GB, 40 * GB, 22 * GB, 40 * GB]
    assert [s.used_bytes for s in snaps] == [1 * GB, 0, 2 * GB, 40 * GB]
    assert [s.utilization for s in snaps] == [55.0, 5.0, 0.0, 30.0]
    assert [s.temperature_c for s in snaps] == [61.0, 35.0, 80.0, 50.0]
    assert [s.name for s in snaps] == ["A100-80", "A100-40", "RTX-24", "H100-80"]
    assert [s.uuid for s in snaps] == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]
    assert snaps[3].processes == (GpuProcess(pid=4242, used_bytes=40 * GB, name="foreign"),)
    assert all(s.processes == () for s in snaps[:3])
    assert monitor.taken_at is not None


def test_bytes_names_are_decoded() -> None:
    gpus = [FakeGpu(8 * GB, name=b"Tesla \xc3\xa9", uuid=b"GPU-x")]
    gpus[0].processes = [FakeProcess(pid=7, usedGpuMemory=GB, name="p")]
    snap = GpuMonitor(nvml=FakeNvml(gpus)).snapshot()[0]
    assert snap.name == "Tesla é"
    assert snap.uuid == "GPU-x"
    assert isinstance(snap.name, str)


def test_unavailable_process_memory_counts_as_zero() -> None:
    gpus = [FakeGpu(8 * GB, used_bytes=3 * GB, processes=[FakeProcess(11, None)])]
    snap = GpuMonitor(nvml=FakeNvml(gpus)).snapshot()[0]
    assert snap.processes == (GpuProcess(pid=11, used_bytes=0, name=""),)
    assert snap.free_bytes == 5 * GB


def test_driver_missing_is_cpu_only_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    nvml = FakeNvml(four_gpus(), driver_missing=True)
    monitor = GpuMonitor(nvml=nvml)
    for _ in range(3):
        assert monitor.snapshot() == []
    assert monitor.refresh() == []
    assert not monitor.available
    assert "Driver Not Loaded" in monitor.reason
    lines = warnings(caplog)
    assert len(lines) == 1
    assert "CPU only" in lines[0].getMessage()
    assert "Driver Not Loaded" in lines[0].getMessage()
    assert "nvmlDeviceGetMemoryInfo" not in nvml.calls


def test_missing_pynvml_is_cpu_only_with_one_warning(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes ``import pynvml`` fail
    monitor = GpuMonitor()
    assert monitor.snapshot() == []
    assert monitor.snapshot() == []
    assert not monitor.available
    assert "pynvml" in monitor.reason
    assert len(warnings(caplog)) == 1


def test_no_gpu_is_cpu_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    nvml = FakeNvml([])
    monitor = GpuMonitor(nvml=nvml)
    assert monitor.snapshot() == []
    assert not monitor.available
    assert "no GPU" in monitor.reason
    assert len(warnings(caplog)) == 1
    assert not nvml.initialised  # shut down again


def test_one_broken_gpu_does_not_lose_the_others(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    gpus = four_gpus()
    gpus[0].temperature_c = None  # sensor not supported
    gpus[1].broken = {"memory"}  # cannot be placed on: left out
    gpus[2].broken = {"utilization", "processes", "name"}
    gpus[3].broken = {"handle"}  # GPU is lost
    monitor = GpuMonitor(interval_s=0.0, nvml=FakeNvml(gpus))
    for _ in range(3):
        snaps = monitor.snapshot()
    assert [s.index for s in snaps] == [0, 2]
    assert snaps[0].temperature_c is None
    assert snaps[0].free_bytes == 79 * GB
    assert snaps[1].utilization == 0.0
    assert snaps[1].processes == ()
    assert snaps[1].name == ""
    assert snaps[1].temperature_c == 80.0
    assert snaps[1].free_bytes == 22 * GB
    # one warning per GPU and field, not one per refresh
    msgs = sorted(r.getMessage().split(" from ")[0] for r in warnings(caplog))
    assert msgs == [
        "cuda:0: cannot read temperature",
        "cuda:1: cannot read memory",
        "cuda:2: cannot read name",
        "cuda:2: cannot read processes",
        "cuda:2: cannot read utilisation",
        "cuda:3: cannot read memory",
    ]
    # a GPU that recovers comes back
    gpus[1].broken = set()
    assert [s.index for s in monitor.refresh()] == [0, 1, 2]


def test_snapshot_is_cached_for_the_interval() -> None:
    clock = Clock()
    gpus = four_gpus()
    nvml = FakeNvml(gpus)
    monitor = GpuMonitor(interval_s=2.0, nvml=nvml, clock=clock)
    reads = lambda: nvml.calls.get("nvmlDeviceGetMemoryInfo", 0)  # noqa: E731
    assert monitor.snapshot()[1].free_bytes == 40 * GB
    assert reads() == 4
    gpus[1].used_bytes = 10 * GB
    clock.t = 101.5
    assert monitor.snapshot()[1].free_bytes == 40 * GB  # still cached
    assert reads() == 4
    clock.t = 102.0
    assert monitor.snapshot()[1].free_bytes == 30 * GB  # interval reached: refreshed
    assert reads() == 8
    gpus[1].used_bytes = 20 * GB
    assert monitor.snapshot()[1].free_bytes == 30 * GB
    assert monitor.refresh()[1].free_bytes == 20 * GB  # forced
    assert monitor.snapshot()[1].free_bytes == 20 * GB
    assert reads() == 12


def test_snapshot_returns_a_copy() -> None:
    monitor = GpuMonitor(interval_s=60.0, nvml=FakeNvml(four_gpus()))
    monitor.snapshot().clear()
    assert len(monitor.snapshot()) == 4


def test_background_thread_refreshes_until_stopped() -> None:
    gpus = four_gpus()
    nvml = FakeNvml(gpus)
    # a frozen clock: snapshot() itself never refreshes once the cache exists
    monitor = GpuMonitor(interval_s=0.01, nvml=nvml, clock=Clock())
    monitor.refresh()
    gpus[0].used_bytes = 70 * GB
    monitor.start()
    seen = threading.Event()
    for _ in range(500):
        if monitor.snapshot()[0].free_bytes == 10 * GB:
            seen.set()
            break
        threading.Event().wait(0.01)
    monitor.stop()
    assert seen.is_set(), "the thread never refreshed"
    reads = nvml.calls["nvmlDeviceGetMemoryInfo"]
    threading.Event().wait(0.05)
    assert nvml.calls["nvmlDeviceGetMemoryInfo"] == reads  # stopped


def test_close_shuts_nvml_down() -> None:
    nvml = FakeNvml(four_gpus())
    with GpuMonitor(nvml=nvml) as monitor:
        assert nvml.initialised
        assert len(monitor.snapshot()) == 4
    assert not nvml.initialised
    assert nvml.calls["nvmlShutdown"] == 1
    assert not monitor.available
    assert monitor.snapshot() == []


def test_fake_follows_pynvml_shapes() -> None:
    nvml = FakeNvml(four_gpus())
    with pytest.raises(nvml.NVMLError):
        nvml.nvmlDeviceGetCount()  # not initialised
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(3)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert (memory.total, memory.free, memory.used) == (80 * GB, 40 * GB, 40 * GB)
    assert nvml.nvmlDeviceGetUtilizationRates(handle).gpu == 30
    (proc,) = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    assert (proc.pid, proc.usedGpuMemory) == (4242, 40 * GB)
    with pytest.raises(nvml.NVMLError):
        nvml.nvmlDeviceGetHandleByIndex(4)
    missing = FakeNvml(driver_missing=True)
    with pytest.raises(missing.NVMLError, match="Driver Not Loaded"):
        missing.nvmlInit()


def test_real_pynvml_never_raises() -> None:
    """On any machine, with or without a driver, the default monitor constructs and answers."""
    monitor = GpuMonitor(interval_s=0.0)
    try:
        snaps = monitor.snapshot()
        assert all(0 <= s.free_bytes <= s.total_bytes for s in snaps)
        if not monitor.available:
            assert snaps == []
            assert monitor.reason
    finally:
        monitor.close()

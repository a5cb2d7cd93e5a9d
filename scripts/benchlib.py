"""Shared helpers of the ``bench_*.py`` scripts (imported as ``benchlib`` from this folder)."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """Return the CPU model from ``/proc/cpuinfo`` (else what :mod:`platform` knows)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return cpu


def machine() -> str:
    """Return ``"<CPU>, <n> cores, Python <v>, torch <v>"`` for a benchmark's header."""
    import torch

    return (f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")  # fmt: skip


def rss_bytes() -> int:
    """Return this process's resident set size in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Return this process's peak resident set size (``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024


def reset_peak_rss() -> None:
    """Set the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

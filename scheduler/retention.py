"""Bounded storage: what is kept, for how long, and how much in total.

Every place that keeps data (the server's ``--save-dir``, its job store and reference scans, the
scheduler's results) is an *area*: it lists its entries (:class:`Entry`: a key, a time, a size,
whether it may go) and removes one by key (:class:`Area`). A :class:`RetentionPolicy` says how
long finished data is kept (``retention_days``) and how much all areas may hold together
(``max_store_gb``). :func:`choose` decides, with no I/O and ``now`` passed in:

1. every removable entry older than ``retention_days`` goes;
2. then, while the total of all entries (removable or not) exceeds ``max_store_gb``, the
   oldest removable entry goes (ties: area, then key).

Entries in use (running or queued jobs, a session still writing its file, data written within
``grace_s``) are never removable: they count towards the total but are never chosen, so the
total may stay above the cap while they run. :func:`enforce` applies a policy to areas once;
:class:`RetentionTimer` does so at start and then every ``interval_s`` on a thread (the server
and ``mr0-scheduler run`` start one).

:class:`FolderArea` makes any folder an area (its top-level files and folders are the entries;
``--save-dir`` is one).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "GB",
    "Area",
    "Entry",
    "FolderArea",
    "RetentionPolicy",
    "RetentionReport",
    "RetentionTimer",
    "choose",
    "enforce",
    "tree_bytes",
]

log = logging.getLogger("mr0.retention")

GB = 10**9
"""Bytes in a GB of ``max_store_gb`` (decimal, as disks are sold)."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished data is kept and how much is kept in total.

    Attributes
    ----------
    retention_days
        Removable data older than this (days) is deleted; None: no age limit.
    max_store_gb
        All areas together are kept under this (GB, 10⁹ bytes) by deleting the oldest
        removable data first; None: no size limit.
    interval_s
        Seconds between two applications by a :class:`RetentionTimer`.
    grace_s
        Data written less than this long ago (s) is never deleted (it may still be in use, e.g.
        a session file being written).

    Raises
    ------
    ValueError
        For a negative or non-finite limit, or a non-positive interval.
    """

    retention_days: float | None = None
    max_store_gb: float | None = None
    interval_s: float = 3600.0
    grace_s: float = 600.0

    def __post_init__(self) -> None:
        for name in ("retention_days", "max_store_gb"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and math.isfinite(value) and value >= 0
            ):
                raise ValueError(f"{name} must be a number >= 0 or None, got {value!r}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"interval_s must be > 0 s, got {self.interval_s!r}")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise ValueError(f"grace_s must be >= 0 s, got {self.grace_s!r}")

    @property
    def active(self) -> bool:
        """Whether the policy limits anything (an age or a size)."""
        return self.retention_days is not None or self.max_store_gb is not None

    @property
    def retention_s(self) -> float | None:
        """``retention_days`` in seconds."""
        return None if self.retention_days is None else self.retention_days * 86400.0

    @property
    def max_bytes(self) -> int | None:
        """``max_store_gb`` in bytes."""
        return None if self.max_store_gb is None else int(self.max_store_gb * GB)


@dataclass(frozen=True)
class Entry:
    """One deletable unit of stored data.

    Attributes
    ----------
    area
        The name of the area that holds it (``save-dir``, ``store``, ``references``,
        ``scheduler``).
    key
        What the area's ``remove`` takes (a file name, a job id).
    time
        When it was finished or last written (s, ``time.time()``).
    bytes
        Its size on disk.
    removable
        False while it is in use (a queued or running job, a file being written).
    """

    area: str
    key: str
    time: float
    bytes: int
    removable: bool = True


class Area(Protocol):
    """A place that keeps data (see the module docstring)."""

    name: str

    def retention_entries(self, now: float) -> list[Entry]:
        """Return the area's entries at ``now``."""
        ...

    def remove_entry(self, key: str) -> bool:
        """Delete the entry ``key``; return whether it was deleted (False: in use, or gone)."""
        ...


def choose(entries: Iterable[Entry], now: float, policy: RetentionPolicy) -> list[Entry]:
    """Return the entries to delete under ``policy`` at ``now``, in deletion order (no I/O).

    See the module docstring for the rules. Entries whose ``time`` lies within
    ``policy.grace_s`` of ``now`` are treated as not removable.
    """
    entries = list(entries)
    removable = [e for e in entries if e.removable and now - e.time >= policy.grace_s]
    removable.sort(key=lambda e: (e.time, e.area, e.key))
    doomed: list[Entry] = []
    retention = policy.retention_s
    if retention is not None:
        doomed = [e for e in removable if now - e.time > retention]
    cap = policy.max_bytes
    if cap is not None:
        total = sum(e.bytes for e in entries) - sum(e.bytes for e in doomed)
        gone = {id(e) for e in doomed}
        for e in removable:
            if total <= cap:
                break
            if id(e) not in gone:
                doomed.append(e)
                total -= e.bytes
    return doomed


@dataclass
class RetentionReport:
    """What one :func:`enforce` did.

    Attributes
    ----------
    deleted
        The entries deleted.
    freed_bytes
        Their total size.
    kept_bytes
        The size of everything left (all areas).
    errors
        ``"area/key: error"`` for entries that could not be deleted.
    """

    deleted: list[Entry] = field(default_factory=list)
    freed_bytes: int = 0
    kept_bytes: int = 0
    errors: list[str] = field(default_factory=list)


def enforce(areas: Iterable[Area], policy: RetentionPolicy, now: float) -> RetentionReport:
    """Apply ``policy`` to ``areas`` once: list their entries, :func:`choose`, remove.

    An area that fails to list or remove is reported in ``errors`` and the rest go on.
    """
    report = RetentionReport()
    by_name: dict[str, Area] = {}
    entries: list[Entry] = []
    for area in areas:
        by_name[area.name] = area
        try:
            entries.extend(area.retention_entries(now))
        except OSError as exc:
            report.errors.append(f"{area.name}: cannot list: {exc}")
    total = sum(e.bytes for e in entries)
    for entry in choose(entries, now, policy):
        try:
            removed = by_name[entry.area].remove_entry(entry.key)
        except OSError as exc:
            report.errors.append(f"{entry.area}/{entry.key}: {exc}")
            continue
        if removed:
            report.deleted.append(entry)
            report.freed_bytes += entry.bytes
    report.kept_bytes = total - report.freed_bytes
    return report


class RetentionTimer:
    """Apply a policy to areas at :meth:`start` and every ``policy.interval_s`` on a thread.

    Parameters
    ----------
    areas
        The areas (all share the policy's ``max_store_gb``).
    policy
        The policy.
    clock
        ``time.time`` (tests pass a fake).
    """

    def __init__(
        self,
        areas: Iterable[Area],
        policy: RetentionPolicy,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.areas = list(areas)
        self.policy = policy
        self.clock = clock
        self.last: RetentionReport | None = None
        """The report of the latest application."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run_once(self) -> RetentionReport:
        """Apply the policy now (also what the thread does); log and return the report."""
        with self._lock:
            report = enforce(self.areas, self.policy, self.clock())
            self.last = report
        if report.deleted or report.errors:
            log.info(
                "retention",
                extra={"event": "retention", "deleted": len(report.deleted),
                       "freed_bytes": report.freed_bytes, "kept_bytes": report.kept_bytes,
                       "errors": report.errors[:10]},
            )  # fmt: skip
        return report

    def start(self) -> RetentionReport:
        """Apply the policy once, then start the thread; return the first report."""
        report = self.run_once()
        self._thread = threading.Thread(target=self._loop, name="mr0-retention", daemon=True)
        self._thread.start()
        return report

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (after a running application)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.policy.interval_s):
            try:
                self.run_once()
            except Exception:  # the timer must survive anything; the next run tries again
                log.exception("retention failed")


def tree_bytes(path: Path) -> int:
    """Return the size on disk of a file, or of every file under a folder (links not followed)."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).lstat().st_size
    return total


def _tree_mtime(path: Path, st: os.stat_result) -> float:
    """Return the newest modification time of a file, or of a folder and all in it."""
    newest = st.st_mtime
    if stat.S_ISDIR(st.st_mode):
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, (Path(root) / name).lstat().st_mtime)
    return newest


class FolderArea:
    """A folder as an area: each top-level file or folder is an entry, timed by its newest write.

    Parameters
    ----------
    folder
        The folder (e.g. ``--save-dir``); missing: no entries.
    name
        The area's name in reports.
    in_use
        Returns the paths in use right now (e.g. the files of sessions still writing); they
        are not removable.
    """

    def __init__(
        self,
        folder: Path | str,
        name: str = "save-dir",
        in_use: Callable[[], Iterable[Path]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.name = name
        self.in_use = in_use or (lambda: ())

    def retention_entries(self, now: float) -> list[Entry]:
        """Return one entry per top-level file or folder (symbolic links are skipped)."""
        if not self.folder.is_dir():
            return []
        busy = {Path(p).resolve() for p in self.in_use()}
        out = []
        for path in sorted(self.folder.iterdir()):
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                continue
            out.append(Entry(self.name, path.name, _tree_mtime(path, st), tree_bytes(path),
                             removable=path.resolve() not in busy))  # fmt: skip
        return out

    def remove_entry(self, key: str) -> bool:
        """Delete the top-level file or folder ``key`` (never one in use, never outside)."""
        if "/" in key or key in ("", ".", ".."):
            raise ValueError(f"{self.name}: {key!r} is not a top-level name")
        path = self.folder / key
        if path.resolve() in {Path(p).resolve() for p in self.in_use()}:
            return False
        try:
            st = path.lstat()
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()
        return True

"""Send DICOM series to a PACS (C-STORE with pynetdicom), with a durable, bounded retry queue.

- :class:`PacsTarget` parses ``HOST:PORT:AET`` (``[v6addr]:PORT:AET`` for IPv6).
- :func:`send_files` C-STOREs files over one association and reports each file's outcome;
  a PACS that cannot be reached (refused, timed out, association rejected) is a
  :class:`PacsError`.
- :class:`PacsQueue` keeps series to send on disk, so a PACS that is down loses nothing and a
  restarted process sends what was left: ``ROOT/<entry>/`` holds the series' files (``0600``) and
  ``entry.json`` (its index record: label, attempts, next try, last error; replaced atomically).
  An entry is retried with exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``)
  until it is delivered; the queue is bounded by ``max_entries`` series and ``max_bytes``, and a
  series that does not fit is refused with an error log naming it (it is not queued; the caller
  still has its files).
- :class:`PacsSender` runs a queue in a background thread, so that whoever enqueues (a server
  session) never waits for the PACS.

The server (``mr0-server --pacs``) and the client (``mr0-client --send-dicom DIR --pacs ...``)
share this module. It lives in ``gadgets`` because it does networking, which ``mr0core`` does
not (DESIGN.md). It imports neither torch nor ``mr0core``, and pydicom and pynetdicom only inside
the functions that need them, so that the thin ``mr0-client`` stays thin.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

__all__ = [
    "PacsError",
    "PacsQueue",
    "PacsSender",
    "PacsTarget",
    "SendReport",
    "find_dicom_files",
    "send_files",
]

log = logging.getLogger("mr0.pacs")

_AET = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # DICOM AE title: 16 chars, no backslash
_ENTRY = re.compile(r"[0-9a-f]{32}")
_SUCCESS = {0x0000, 0xB000, 0xB006, 0xB007}  # success, and the C-STORE warnings (stored)
MAX_FILE_BYTES = 2**31
"""Largest DICOM file sent (bytes); larger ones are reported failed, never read."""


class PacsError(RuntimeError):
    """The PACS could not be reached or refused the association (the message says which)."""


@dataclass(frozen=True)
class PacsTarget:
    """Where to send: host, port, the PACS's AE title and ours."""

    host: str
    port: int
    ae_title: str
    calling_ae_title: str = "MR0"

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("PACS host must not be empty")
        if not 0 < self.port < 65536:
            raise ValueError(f"PACS port must be 1..65535, got {self.port}")
        for name in ("ae_title", "calling_ae_title"):
            value = getattr(self, name)
            if not (_AET.fullmatch(value) and value.strip()):
                raise ValueError(
                    f"{name} must be 1-16 printable ASCII characters without a backslash, "
                    f"got {value!r}"
                )

    @classmethod
    def parse(cls, spec: str, calling_ae_title: str = "MR0") -> PacsTarget:
        """Parse ``HOST:PORT:AET`` (``[IPv6]:PORT:AET``); ValueError naming the spec if bad."""
        match = re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):(\d{1,5}):(.+)", spec.strip())
        if not match:
            raise ValueError(f"PACS must be HOST:PORT:AET, got {spec!r}")
        host, port, aet = match.groups()
        return cls(host.strip("[]"), int(port), aet, calling_ae_title)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}:{self.ae_title}"


@dataclass
class SendReport:
    """What :func:`send_files` did: files stored, and files refused with the reason."""

    sent: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every file was stored."""
        return not self.failed


def find_dicom_files(
    folder: str | PathLike[str], max_files: int = 100_000
) -> tuple[list[Path], list[str]]:
    """Return the DICOM files under ``folder`` (sorted) and the skipped files with why.

    A file is DICOM if pydicom reads its header (a Part-10 preamble, or a dataset pydicom can
    take without one). Links are not followed; at most ``max_files`` files are looked at.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"no folder at {root}")
    found: list[Path] = []
    skipped: list[str] = []
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            seen += 1
            if seen > max_files:
                raise ValueError(f"{root} holds more than {max_files} files")
            if path.is_symlink() or not path.is_file():
                skipped.append(f"{path}: not a regular file")
                continue
            if path.stat().st_size > MAX_FILE_BYTES:
                skipped.append(f"{path}: larger than {MAX_FILE_BYTES} bytes")
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
                skipped.append(f"{path}: not DICOM ({exc})")
                continue
            if "SOPClassUID" not in ds:
                skipped.append(f"{path}: no SOPClassUID")
                continue
            found.append(path)
    return found, skipped


def _sop_class(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)


def send_files(files: Iterable[Path], target: PacsTarget, timeout_s: float = 30.0) -> SendReport:
    """C-STORE ``files`` to ``target`` over one association.

    Returns
    -------
    SendReport
        Each file stored (status success or warning) or failed (the status or error).

    Raises
    ------
    PacsError
        No association (connection refused or timed out, association rejected or aborted before
        any file was sent).
    """
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    paths = [Path(f) for f in files]
    report = SendReport()
    classes: dict[Path, str] = {}
    for p in paths:
        try:
            if p.stat().st_size > MAX_FILE_BYTES:
                raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
            classes[p] = _sop_class(p)
        except Exception as exc:  # an unreadable or broken file is that file's failure
            report.failed[p] = f"not sent: {exc}"
    if not classes:
        return report
    ae = AE(ae_title=target.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for uid in sorted(set(classes.values()))[:128]:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise PacsError(f"the PACS {target} rejected the association (check the AE titles)")
        raise PacsError(f"the PACS {target} cannot be reached (is it running?)")
    try:
        for p, _uid in classes.items():
            try:
                status = assoc.send_c_store(p)
            except Exception as exc:  # pynetdicom raises on a context it could not negotiate
                report.failed[p] = f"not sent: {exc}"
                continue
            code = int(getattr(status, "Status", -1)) if status else -1
            if code in _SUCCESS:
                report.sent.append(p)
            elif code == -1:
                report.failed[p] = "no answer from the PACS (association lost or timed out)"
                if not assoc.is_established:
                    for rest in classes:
                        if rest not in report.sent and rest not in report.failed:
                            report.failed[rest] = "not sent: the association was lost"
                    break
            else:
                report.failed[p] = f"the PACS answered status 0x{code:04X}"
    finally:
        if assoc.is_established:
            assoc.release()
    return report


# -------------------------------------------------------------------------------------------
# the durable queue
# -------------------------------------------------------------------------------------------


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_json(path: Path, value: dict[str, Any]) -> None:
    """Write ``value`` to ``path`` atomically (a ``0600`` temporary file, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class QueueEntry:
    """One queued series (``entry.json``)."""

    id: str
    label: str
    created: float
    attempts: int
    next_try: float
    last_error: str
    files: list[str]
    nbytes: int


class PacsQueue:
    """Series waiting for a PACS, kept on disk (see the module docstring).

    Parameters
    ----------
    root
        The queue folder (``0700``; made if missing).
    target
        The PACS.
    max_entries, max_bytes
        Bounds of the queue: series, and bytes of their files.
    backoff_s, max_backoff_s
        First retry delay and the longest one (s); the delay doubles per failed attempt.
    timeout_s
        Network timeouts of one attempt (s).
    clock
        ``time.time`` (tests pass their own).
    """

    def __init__(
        self,
        root: str | PathLike[str],
        target: PacsTarget,
        *,
        max_entries: int = 1000,
        max_bytes: int = 2 * 2**30,
        backoff_s: float = 2.0,
        max_backoff_s: float = 300.0,
        timeout_s: float = 30.0,
        clock: Any = time.time,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"max_entries and max_bytes must be >= 1, got {max_entries}, "
                             f"{max_bytes}")  # fmt: skip
        if not 0 < backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < backoff_s <= max_backoff_s, got {backoff_s}, "
                             f"{max_backoff_s}")  # fmt: skip
        self.root = Path(root)
        self.target = target
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.clock = clock
        self._lock = threading.Lock()
        _private_dir(self.root)
        self.recover()

    def recover(self) -> int:
        """Remove what an interrupted enqueue left (folders without ``entry.json``)."""
        removed = 0
        for child in self.root.iterdir():
            if child.is_dir() and not (child / "entry.json").is_file():
                shutil.rmtree(child, ignore_errors=True)
                removed += 1
            elif child.is_file() and child.name.endswith(".tmp"):
                child.unlink(missing_ok=True)
        return removed

    def _read(self, folder: Path) -> QueueEntry | None:
        try:
            raw = json.loads((folder / "entry.json").read_text())
            return QueueEntry(
                id=folder.name, label=str(raw["label"]), created=float(raw["created"]),
                attempts=int(raw["attempts"]), next_try=float(raw["next_try"]),
                last_error=str(raw["last_error"]), files=[str(f) for f in raw["files"]],
                nbytes=int(raw["nbytes"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("PACS queue entry %s is unreadable (%s); left in place", folder, exc)
            return None

    def entries(self) -> list[QueueEntry]:
        """Return the queued series, oldest first."""
        out = []
        for child in self.root.iterdir():
            if child.is_dir() and _ENTRY.fullmatch(child.name) and (child / "entry.json").exists():
                entry = self._read(child)
                if entry is not None:
                    out.append(entry)
        return sorted(out, key=lambda e: (e.created, e.id))

    def _save(self, entry: QueueEntry) -> None:
        _write_json(self.root / entry.id / "entry.json", {
            "label": entry.label, "created": entry.created, "attempts": entry.attempts,
            "next_try": entry.next_try, "last_error": entry.last_error, "files": entry.files,
            "nbytes": entry.nbytes, "target": str(self.target),
        })  # fmt: skip

    def enqueue(self, files: Iterable[Path], label: str, move: bool = False) -> str | None:
        """Queue a series (its files are copied, or moved with ``move``); return its entry id.

        Returns None (and logs an error naming the series) when the queue is full: the series
        is not queued and ``files`` are left as they are.
        """
        paths = [Path(f) for f in files]
        if not paths:
            raise ValueError(f"series {label!r}: no files to queue")
        nbytes = sum(p.stat().st_size for p in paths)
        with self._lock:
            queued = self.entries()
            used = sum(e.nbytes for e in queued)
            if len(queued) + 1 > self.max_entries or used + nbytes > self.max_bytes:
                log.error(
                    "PACS queue full: series %r (%d files, %d bytes) NOT queued for %s; the queue "
                    "holds %d of %d series and %d of %d bytes",
                    label, len(paths), nbytes, self.target, len(queued), self.max_entries, used,
                    self.max_bytes,
                )  # fmt: skip
                return None
            entry_id = uuid.uuid4().hex
            folder = self.root / entry_id
            _private_dir(folder)
            names = []
            for i, p in enumerate(paths):
                name = f"{i:06d}.dcm"
                if move:
                    shutil.move(p, folder / name)
                else:
                    shutil.copyfile(p, folder / name)
                os.chmod(folder / name, 0o600)
                names.append(name)
            now = self.clock()
            entry = QueueEntry(entry_id, label[:200], now, 0, now, "", names, nbytes)
            self._save(entry)  # the entry exists from here on (recover() removes it before)
        log.info("PACS: queued series %r (%d files) for %s", label, len(names), self.target)
        return entry_id

    def delay_s(self, attempts: int) -> float:
        """Return the wait after ``attempts`` failed attempts (s)."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** max(attempts - 1, 0))

    def next_due(self) -> float | None:
        """Return the time of the earliest due entry (None: the queue is empty)."""
        entries = self.entries()
        return min(e.next_try for e in entries) if entries else None

    def process_due(self) -> int:
        """Try every due entry once; return how many series were delivered."""
        delivered = 0
        for entry in self.entries():
            if entry.next_try > self.clock():
                continue
            if self._attempt(entry):
                delivered += 1
        return delivered

    def _attempt(self, entry: QueueEntry) -> bool:
        folder = self.root / entry.id
        files = [folder / name for name in entry.files]
        try:
            report = send_files(files, self.target, timeout_s=self.timeout_s)
            error = "; ".join(f"{p.name}: {why}" for p, why in list(report.failed.items())[:5])
            sent = {p.name for p in report.sent}
        except PacsError as exc:
            error, sent = str(exc), set()
        except Exception as exc:  # keep the queue: an unexpected failure is retried, and logged
            log.exception("PACS: sending series %r failed", entry.label)
            error, sent = f"{type(exc).__name__}: {exc}", set()
        remaining = [name for name in entry.files if name not in sent]
        for name in sent:  # stored: never sent twice
            (folder / name).unlink(missing_ok=True)
        if not remaining:
            shutil.rmtree(folder, ignore_errors=True)
            log.info("PACS: delivered series %r to %s (%d attempts)", entry.label, self.target,
                     entry.attempts + 1)  # fmt: skip
            return True
        attempts = entry.attempts + 1
        delay = self.delay_s(attempts)
        nbytes = sum((folder / n).stat().st_size for n in remaining if (folder / n).exists())
        self._save(QueueEntry(entry.id, entry.label, entry.created, attempts,
                              self.clock() + delay, error, remaining, nbytes))  # fmt: skip
        log.warning("PACS: series %r not delivered to %s (attempt %d: %s); retry in %.0f s",
                    entry.label, self.target, attempts, error, delay)  # fmt: skip
        return False


class PacsSender:
    """Run a :class:`PacsQueue` in a daemon thread: try what is due, sleep until the next.

    :meth:`enqueue` adds a series and wakes the thread; it never waits for the network.
    """

    def __init__(self, queue: PacsQueue, poll_s: float = 5.0) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (what an earlier process left queued is sent too)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mr0-pacs", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (the queue stays on disk)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def enqueue(self, files: Iterable[Path], label: str, move: bool = False) -> str | None:
        """Queue a series (see :meth:`PacsQueue.enqueue`) and wake the sender."""
        entry = self.queue.enqueue(files, label, move=move)
        self._wake.set()
        return entry

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.queue.process_due()
                due = self.queue.next_due()
            except Exception:  # the thread must outlive any one failure (disk, PACS)
                log.exception("PACS sender: a pass over the queue failed")
                due = None
            wait = self.poll_s if due is None else max(0.0, due - self.queue.clock())
            with contextlib.suppress(Exception):
                self._wake.wait(min(wait, self.poll_s) if wait > 0 else 0.05)

"""The server's store: reference scans, and what clients read of background jobs.

A service the server lends the gadgets (:class:`gadgets.framework.chain.Services`); the gadgets
that use it are in :mod:`gadgets.library.references`.

Layout under the store folder (``mr0-server --store DIR``)::

    store.sqlite            index of reference scans (SQLite, WAL journal)
    references/<id>.h5      a reference scan (e.g. coil calibration) by its measurement id
    scheduler/              the scheduler's job store (unless ``--scheduler-dir``), which holds
                            the background jobs: their input and their result files

Background MRD sessions are scheduler jobs: there is one durable job system, the scheduler's
(:mod:`scheduler.store`). The server stores a session that asked for ``"background": true``
once, as the job's input files (:data:`SESSION_INPUT`: header, acquisitions, waveforms, images;
:data:`SESSION_JSON`: the chain's XML and the JSON parameters), and submits a job of function
:data:`scheduler.functions.MRD_SESSION`; a scheduler worker runs the chain on it
(:func:`gadgets.library.background_jobs.run_stored_session`) and its result folder holds
:data:`RESULT_FILE` (images, acquisitions) and the summary (texts, counts). Its state
(``queued → running → done | failed | cancelled``), attempts, cancelling, recovery after a
restart (interrupted jobs are queued again up to their attempts) and retention are the
scheduler's. This module reads those
jobs as clients see them (:class:`BackgroundJob`, :meth:`Store.job`, :meth:`Store.find`) and
their results (:meth:`Store.result`), for the chain ``mr0_retrieve``
(:class:`gadgets.library.references.RetrieveGadget`) and the status page.

Reference scans (:class:`gadgets.library.references.StoreReferenceGadget`, chain
``mr0_reference``) are stored by their ``measurementID``; a later session names one
(``{"reference": "<measurement id>"}``, or the header's ``measurementDependency``) and a chain
uses it, e.g. :class:`gadgets.library.recon.SenseGadget` for coil maps, as Gadgetron's
dependency measurements do. Measurement ids come from clients, so they are checked as plain
names (:func:`gadgets.framework.core.check_plain_name`) before they name a file; background job
ids are 24 hex digits made by the server.

Privacy: every file is ``0600`` and every folder ``0700``, whatever the umask (the index's
SQLite journal files take its mode); :meth:`Store.recover` also makes older files private.

Bounded: :meth:`Store.retention_areas` gives the reference scans as an area of
:mod:`scheduler.retention`; :func:`retention_timer` joins them with ``--save-dir`` and the
scheduler's jobs (background jobs among them) under one policy (``--retention-days``,
``--max-store-gb``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ismrmrd

from gadgets.framework.core import check_plain_name
from gadgets.wire.mrdfile import SessionWriter, read_items
from scheduler.functions import MRD_SESSION
from scheduler.model import JOB_STATES
from scheduler.paths import make_private, private_dir, private_file
from scheduler.retention import (
    Area,
    Entry,
    FolderArea,
    RetentionPolicy,
    RetentionTimer,
)
from scheduler.store import JobRecord, JobStore, UnknownJobError

__all__ = [
    "JOB_STATES",
    "MAX_TEXT",
    "MAX_TEXTS",
    "RESULT_FILE",
    "SESSION_INPUT",
    "SESSION_JSON",
    "BackgroundJob",
    "Reference",
    "Store",
    "StoreError",
    "header_identity",
    "new_job_id",
    "retention_timer",
]

log = logging.getLogger("mr0.store")

SESSION_INPUT = "input.h5"
"""A background job's input file: the session as received (header, acquisitions, ...)."""
SESSION_JSON = "session.json"
"""A background job's input file: ``{"config_xml", "header_xml", "parameters"}``."""
RESULT_FILE = "result.h5"
"""A background job's result file: the images and acquisitions its chain returned."""
MAX_TEXTS = 1000
"""Text messages kept per background result (the last ones)."""
MAX_TEXT = 64 * 1024
"""Characters kept per text message of a background result."""

_JOB_ID = re.compile(r"[0-9a-f]{24}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS refs (
    measurement_id TEXT PRIMARY KEY,
    patient TEXT NOT NULL DEFAULT '',
    protocol TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    acquisitions INTEGER NOT NULL
);
"""


class StoreError(ValueError):
    """A lookup or write the store cannot do; ``str(e)`` is safe to send to a client."""


def new_job_id() -> str:
    """Return a new background job id (24 hex digits)."""
    return uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class BackgroundJob:
    """A background MRD session as clients see it (read from its scheduler job).

    Attributes
    ----------
    id
        24 hex digits.
    state
        One of :data:`JOB_STATES` (the scheduler's: queued, running, done, failed, cancelled).
    config_name
        The chain chosen by the session.
    patient, protocol, measurement_id
        From the ISMRMRD header (``subjectInformation.patientID``, ``measurementInformation``
        ``protocolName`` / ``measurementID``), empty when absent.
    created, started, finished
        Unix times (s): submission, the last start, reaching a final state; None until reached.
    attempts
        How often a worker started it (a restart runs an interrupted job again).
    error
        Why it failed or was cancelled.
    texts
        The text messages the chain returned (reports, metrics), in order (done jobs).
    counts
        Items in the result, e.g. ``{"images": n, "acquisitions": m}`` (done jobs).
    """

    id: str
    state: str
    config_name: str
    patient: str
    protocol: str
    measurement_id: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    error: str
    texts: list[str]
    counts: dict[str, int]

    def summary(self) -> dict[str, Any]:
        """Return the job as a JSON-able dict (what clients see)."""
        return {
            "job": self.id, "state": self.state, "config": self.config_name,
            "patient": self.patient, "protocol": self.protocol,
            "measurement_id": self.measurement_id, "created": _iso(self.created),
            "finished": _iso(self.finished), "error": self.error, "counts": self.counts,
        }  # fmt: skip


@dataclass(frozen=True)
class Reference:
    """A stored reference scan (a row of the ``refs`` index)."""

    measurement_id: str
    patient: str
    protocol: str
    created: float
    acquisitions: int


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def header_identity(header: Any) -> tuple[str, str, str]:
    """Return ``(patient, protocol, measurement_id)`` of a parsed ISMRMRD header ('' if absent).

    The patient is ``subjectInformation.patientID``, else ``patientName``.
    """
    if header is None:
        return "", "", ""
    subject = getattr(header, "subjectInformation", None)
    patient = ""
    if subject is not None:
        patient = str(getattr(subject, "patientID", None) or getattr(subject, "patientName", None)
                      or "")  # fmt: skip
    info = getattr(header, "measurementInformation", None)
    protocol = str(getattr(info, "protocolName", None) or "") if info is not None else ""
    mid = str(getattr(info, "measurementID", None) or "") if info is not None else ""
    return patient[:256], protocol[:256], mid[:128]


class Store:
    """The reference store in one folder, and the background jobs of a scheduler's store.

    Parameters
    ----------
    root
        The folder; created if missing. Several :class:`Store` objects (threads, processes) may
        use the same folder: SQLite serialises their writes.
    jobs
        The scheduler's job store that holds the background jobs (the server's scheduler's);
        None: no background jobs (a scheduler worker's view, for reference scans only).
    """

    def __init__(self, root: Path | str, jobs: JobStore | None = None) -> None:
        self.root = Path(root)
        self.job_store = jobs
        private_dir(self.root)
        private_dir(self.root / "references")
        self._db = self.root / "store.sqlite"
        private_file(self._db)  # SQLite's -wal and -shm files take its mode
        for journal in ("store.sqlite-wal", "store.sqlite-shm"):
            make_private(self.root / journal)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)  # idempotent; commits by itself

    # -- database -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._db, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- background jobs (read from the scheduler's store) --------------------------------------

    def _jobs(self) -> JobStore:
        if self.job_store is None:
            raise StoreError("background jobs need the server's scheduler (its job store)")
        return self.job_store

    def _background(self, record: JobRecord) -> BackgroundJob:
        params = record.params
        texts: list[str] = []
        counts: dict[str, int] = {}
        if record.state == "done":
            summary = self._result_summary(record.id)
            texts = [str(t) for t in summary.get("texts", [])]
            counts = {str(k): int(v) for k, v in dict(summary.get("counts", {})).items()}
        return BackgroundJob(
            id=record.id, state=record.state, config_name=str(params.get("config", "")),
            patient=str(params.get("patient", "")), protocol=str(params.get("protocol", "")),
            measurement_id=str(params.get("measurement_id", "")), created=record.submitted,
            started=record.started, finished=record.finished, attempts=record.attempts,
            error=record.error, texts=texts, counts=counts,
        )  # fmt: skip

    def _result_folder(self, job_id: str) -> Path:
        path = self._jobs().result_path(job_id)
        if path is None or not path.is_dir():
            raise StoreError(f"job {job_id} has no result (it was removed, or never stored)")
        return path

    def _result_summary(self, job_id: str) -> dict[str, Any]:
        try:
            summary = json.loads((self._result_folder(job_id) / "summary.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise StoreError(f"job {job_id}: its result summary cannot be read: {exc}") from None
        if not isinstance(summary, dict):
            raise StoreError(f"job {job_id}: its result summary is not a JSON object")
        return summary

    def job(self, job_id: str) -> BackgroundJob:
        """Return a background job by id.

        Raises
        ------
        StoreError
            For a malformed or unknown id (or a scheduler job that is not a background one).
        """
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise StoreError(f"job id {str(job_id)[:40]!r} is not 24 hex digits")
        try:
            record = self._jobs().get(job_id)
        except UnknownJobError:
            raise StoreError(f"no job {job_id}") from None
        if record.function != MRD_SESSION:
            raise StoreError(f"no job {job_id}")
        return self._background(record)

    def find(self, patient: str | None = None, protocol: str | None = None) -> BackgroundJob:
        """Return the newest background job of a patient and/or protocol (exact matches).

        Raises
        ------
        StoreError
            When neither is given, or nothing matches.
        """
        if not patient and not protocol:
            raise StoreError("give a job id, or a patient and/or protocol to look for")
        match = {k: str(v) for k, v in (("patient", patient), ("protocol", protocol)) if v}
        record = self._jobs().find(MRD_SESSION, match)
        if record is None:
            wanted = ", ".join(f"{k} {v!r}" for k, v in match.items())
            raise StoreError(f"no job for {wanted}")
        return self._background(record)

    def jobs(self, state: str | None = None, limit: int = 100) -> list[BackgroundJob]:
        """Return the newest background jobs (optionally only those in ``state``), newest first.

        Without a scheduler's store there are none.
        """
        if state is not None and state not in JOB_STATES:
            raise StoreError(f"state must be one of {', '.join(JOB_STATES)}")
        if self.job_store is None:
            return []
        records = self.job_store.jobs(state, limit, function=MRD_SESSION)
        out = []
        for record in records:
            with contextlib.suppress(StoreError):  # removed meanwhile by retention
                out.append(self._background(record))
        return out

    def counts(self) -> dict[str, int]:
        """Return the number of background jobs in each state (every state, 0 if none)."""
        if self.job_store is None:
            return dict.fromkeys(JOB_STATES, 0)
        return self.job_store.counts(function=MRD_SESSION)

    def result(self, job_id: str) -> list[Any]:
        """Return a done background job's images and acquisitions (from :data:`RESULT_FILE`).

        Raises
        ------
        StoreError
            For a job that is not done, or whose result is gone.
        """
        job = self.job(job_id)
        if job.state != "done":
            raise StoreError(f"job {job_id} is {job.state}: it has no result")
        path = self._result_folder(job.id) / RESULT_FILE
        if not path.is_file():
            raise StoreError(f"job {job_id}: its result file is missing")
        return read_items(path)[1]

    def recover(self) -> int:
        """Remove what a stopped server left half-written; make everything private.

        Temporary reference files (``references/.*.tmp``) go. Returns how many were removed.
        """
        removed = 0
        for path in (self.root / "references").glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        make_private(self.root / "references")
        if removed:
            log.info("store recovered", extra={"event": "store_recover", "removed": removed})
        return removed

    # -- reference scans ------------------------------------------------------------------------

    def reference_path(self, measurement_id: str) -> Path:
        """Return the file of a reference scan by measurement id (it need not exist).

        Raises
        ------
        StoreError
            For an id that is not a plain name.
        """
        try:
            check_plain_name(measurement_id, "measurement id")
        except ValueError as exc:
            raise StoreError(str(exc)) from None
        return self.root / "references" / f"{measurement_id}.h5"

    def add_reference(
        self, measurement_id: str, header_xml: str, items: list[Any], header: Any = None
    ) -> Reference:
        """Store a reference scan (header and acquisitions), replacing one of the same id."""
        path = self.reference_path(measurement_id)
        acqs = [a for a in items if isinstance(a, ismrmrd.Acquisition)]
        if not acqs:
            raise StoreError(f"reference {measurement_id}: the session sent no acquisitions")
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        private_file(tmp)
        with SessionWriter(tmp) as writer:
            writer.write_header(header_xml)
            for acq in acqs:
                writer.add(acq)
        make_private(tmp)
        os.replace(tmp, path)
        patient, protocol, _ = header_identity(header)
        with self._tx() as db:
            db.execute(
                "INSERT OR REPLACE INTO refs VALUES (?, ?, ?, ?, ?)",
                (measurement_id, patient, protocol, time.time(), len(acqs)),
            )
        return self.reference(measurement_id)

    def reference(self, measurement_id: str) -> Reference:
        """Return a stored reference scan's index row.

        Raises
        ------
        StoreError
            For an unsafe or unknown measurement id.
        """
        path = self.reference_path(measurement_id)
        row = (
            self._connection()
            .execute("SELECT * FROM refs WHERE measurement_id = ?", (measurement_id,))
            .fetchone()
        )
        if row is None or not path.is_file():
            raise StoreError(f"no reference scan with measurement id {measurement_id!r}")
        return Reference(**dict(row))

    def load_reference(self, measurement_id: str) -> tuple[str, list[Any]]:
        """Return ``(header_xml, acquisitions)`` of a stored reference scan."""
        self.reference(measurement_id)
        return read_items(self.reference_path(measurement_id), kinds=("acquisitions",))

    # -- retention ------------------------------------------------------------------------------

    def retention_areas(self) -> list[Area]:
        """Return the reference scans (``references``) as a retention area.

        Reference scans are removable, timed by when they were stored. Background jobs are
        the scheduler's store's entries (:func:`retention_timer`'s ``scheduler_store``).
        """
        return [_ReferencesArea(self)]

    def delete_reference(self, measurement_id: str) -> bool:
        """Delete a stored reference scan (its file and index row); False if there was none."""
        path = self.reference_path(measurement_id)
        with self._tx() as db:
            cur = db.execute("DELETE FROM refs WHERE measurement_id = ?", (measurement_id,))
        existed = cur.rowcount > 0
        try:
            path.unlink()
            existed = True
        except FileNotFoundError:
            pass
        return existed


class _ReferencesArea:
    """The reference scans of a :class:`Store` as a retention area."""

    name = "references"

    def __init__(self, store: Store) -> None:
        self.store = store

    def retention_entries(self, now: float) -> list[Entry]:
        created = dict(
            self.store._connection().execute("SELECT measurement_id, created FROM refs").fetchall()
        )
        out = []
        for path in sorted((self.store.root / "references").glob("*.h5")):
            mid = path.name[: -len(".h5")]
            if path.is_symlink() or mid.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            when = float(created.get(mid, st.st_mtime))
            out.append(Entry(self.name, mid, when, st.st_size))
        return out

    def remove_entry(self, key: str) -> bool:
        try:
            return self.store.delete_reference(key)
        except StoreError:
            return False


def retention_timer(
    policy: RetentionPolicy,
    *,
    save_dir: Path | None = None,
    store: Store | None = None,
    scheduler_store: JobStore | None = None,
    in_use: Callable[[], Iterable[Path]] | None = None,
) -> RetentionTimer:
    """Return a timer that applies ``policy`` to everything the server keeps (not started).

    Parameters
    ----------
    policy
        Age and total size (one budget for all areas together).
    save_dir
        ``--save-dir``: each file (or folder) in it is an entry, timed by its last write.
    store
        The reference store (``--store``).
    scheduler_store
        The scheduler's job store (its finished jobs, background jobs among them, with their
        inputs and results).
    in_use
        Returns the paths being written now (the files of sessions still saving); never
        deleted.

    Notes
    -----
    ``timer.start()`` applies the policy once and then every ``policy.interval_s``;
    ``timer.stop()`` ends it.
    """
    areas: list[Area] = []
    if save_dir is not None:
        areas.append(FolderArea(save_dir, "save-dir", in_use))
    if store is not None:
        areas.extend(store.retention_areas())
    if scheduler_store is not None:
        areas.append(scheduler_store)
    return RetentionTimer(areas, policy)

"""The server's durable store: background jobs, their results, and reference scans.

Layout under the store folder (``mr0-server --store DIR``)::

    store.sqlite            index of jobs and reference scans (SQLite, WAL journal)
    jobs/<id>/input.h5      the session as received: header, acquisitions, waveforms, images
    jobs/<id>/result.h5     what the chain returned: images (image_<series>), acquisitions
    references/<id>.h5      a reference scan (e.g. coil calibration) by its measurement id

A job moves ``receiving → queued → running → done | failed``. Everything a restarted server
needs is on disk: the chain XML and the JSON parameters are kept in the index, the input in
``input.h5``, so :meth:`Store.pending` gives the jobs to run again after a crash or restart
(:class:`gadgets.jobs.JobRunner` does). Writes of an index row are one SQLite transaction;
a result file is written under a temporary name and renamed when complete, so a crash never
leaves a half-written result that looks finished.

Job ids are 24 hex digits made here; measurement ids come from clients, so they are checked as
plain names (:func:`gadgets.core.check_plain_name`) before they name a file.

Privacy: every file is ``0600`` and every folder ``0700``, whatever the umask (the index's
SQLite journal files take its mode); :meth:`Store.recover` also makes older files private.

Bounded: :meth:`Store.retention_areas` gives the background jobs (finished ones are
removable) and the reference scans as areas of :mod:`scheduler.retention`;
:func:`retention_timer` joins them with ``--save-dir`` and the scheduler's results under one
policy (``--retention-days``, ``--max-store-gb``). :meth:`Store.recover` (at start) removes what
a stopped server left half-written: inputs of sessions that never finished, temporary result
and reference files, job folders without an index row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scheduler.paths import make_private, private_dir, private_file
from scheduler.retention import (
    Area,
    Entry,
    FolderArea,
    RetentionPolicy,
    RetentionTimer,
    tree_bytes,
)
from scheduler.store import JobStore

from .core import check_plain_name

__all__ = ["JOB_STATES", "Job", "Reference", "Store", "StoreError", "retention_timer"]

log = logging.getLogger("mr0.store")

JOB_STATES = ("receiving", "queued", "running", "done", "failed")
"""The states of a job, in order."""

_JOB_ID = re.compile(r"[0-9a-f]{24}")
_MAX_TEXTS = 1000  # text messages kept per job result
_MAX_TEXT = 64 * 1024  # characters kept per text message
_INCOMPLETE = "the server stopped before the job's input was complete"
_FINAL = ("done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    config_name TEXT NOT NULL,
    config_xml TEXT NOT NULL,
    header_xml TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL,
    patient TEXT NOT NULL DEFAULT '',
    protocol TEXT NOT NULL DEFAULT '',
    measurement_id TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    texts TEXT NOT NULL DEFAULT '[]',
    counts TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_subject ON jobs (patient, protocol, created);
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


@dataclass(frozen=True)
class Job:
    """One stored job (a row of the index).

    Attributes
    ----------
    id
        24 hex digits.
    state
        One of :data:`JOB_STATES`.
    config_name, config_xml
        The chain chosen by the session and its XML as it was when the job was taken.
    header_xml
        The session's ISMRMRD header ('' for a header-less job).
    parameters
        The session's JSON parameters (chain overrides).
    patient, protocol, measurement_id
        From the ISMRMRD header (``subjectInformation.patientID``, ``measurementInformation``
        ``protocolName`` / ``measurementID``), empty when absent.
    created, started, finished
        Unix times (s); None until reached.
    attempts
        How often a runner started it (a restart re-runs a job that was running).
    error
        Why it failed (``state == "failed"``).
    texts
        The text messages the chain returned (reports, metrics), in order.
    counts
        Items in the result: ``{"images": n, "acquisitions": m}``.
    """

    id: str
    state: str
    config_name: str
    config_xml: str
    header_xml: str
    parameters: dict[str, Any]
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
        """Return the job as a JSON-able dict without the chain XML (what clients see)."""
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
    """The job and reference store in one folder (see the module docstring).

    Parameters
    ----------
    root
        The folder; created if missing. Several :class:`Store` objects (threads, processes) may
        use the same folder: SQLite serialises their writes.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        private_dir(self.root)
        private_dir(self.root / "jobs")
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

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        return Job(
            id=row["id"], state=row["state"], config_name=row["config_name"],
            config_xml=row["config_xml"], header_xml=row["header_xml"],
            parameters=json.loads(row["parameters"]),
            patient=row["patient"], protocol=row["protocol"],
            measurement_id=row["measurement_id"], created=row["created"],
            started=row["started"], finished=row["finished"], attempts=row["attempts"],
            error=row["error"], texts=json.loads(row["texts"]), counts=json.loads(row["counts"]),
        )  # fmt: skip

    # -- jobs -----------------------------------------------------------------------------------

    def create_job(
        self,
        config_name: str,
        config_xml: str,
        parameters: dict[str, Any],
        header_xml: str = "",
        header: Any = None,
    ) -> Job:
        """Add a job in state ``receiving``; its input goes to :meth:`input_path`.

        ``header`` is ``header_xml`` parsed (for the patient, protocol and measurement id).
        """
        job_id = uuid.uuid4().hex[:24]
        patient, protocol, mid = header_identity(header)
        private_dir(self.root / "jobs" / job_id)
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (id, state, config_name, config_xml, header_xml, parameters, "
                "patient, protocol, measurement_id, created) "
                "VALUES (?, 'receiving', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, config_name, config_xml, header_xml, json.dumps(parameters), patient,
                 protocol, mid, time.time()),
            )  # fmt: skip
        return self.job(job_id)

    def job(self, job_id: str) -> Job:
        """Return a job by id.

        Raises
        ------
        StoreError
            For a malformed or unknown id.
        """
        if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
            raise StoreError(f"job id {str(job_id)[:40]!r} is not 24 hex digits")
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise StoreError(f"no job {job_id}")
        return self._job(row)

    def find(self, patient: str | None = None, protocol: str | None = None) -> Job:
        """Return the newest job of a patient and/or protocol (exact matches).

        Raises
        ------
        StoreError
            When neither is given, or nothing matches.
        """
        if not patient and not protocol:
            raise StoreError("give a job id, or a patient and/or protocol to look for")
        where, args = [], []
        if patient:
            where.append("patient = ?")
            args.append(str(patient))
        if protocol:
            where.append("protocol = ?")
            args.append(str(protocol))
        row = (
            self._connection()
            .execute(
                f"SELECT * FROM jobs WHERE {' AND '.join(where)} "  # only fixed column names
                "ORDER BY created DESC, rowid DESC LIMIT 1",
                args,
            )
            .fetchone()
        )
        if row is None:
            wanted = ", ".join(f"{k} {v!r}" for k, v in (("patient", patient),
                                                          ("protocol", protocol)) if v)  # fmt: skip
            raise StoreError(f"no job for {wanted}")
        return self._job(row)

    def jobs(self, state: str | None = None, limit: int = 100) -> list[Job]:
        """Return the newest jobs (optionally only those in ``state``), newest first."""
        if state is not None and state not in JOB_STATES:
            raise StoreError(f"state must be one of {', '.join(JOB_STATES)}")
        sql = "SELECT * FROM jobs" + (" WHERE state = ?" if state else "")
        sql += " ORDER BY created DESC, rowid DESC LIMIT ?"
        args: tuple[Any, ...] = (state, int(limit)) if state else (int(limit),)
        return [self._job(r) for r in self._connection().execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Return the number of jobs in each state (every state of ``JOB_STATES``, 0 if none)."""
        out = dict.fromkeys(JOB_STATES, 0)
        rows = self._connection().execute("SELECT state, count(*) FROM jobs GROUP BY state")
        for state, n in rows.fetchall():
            out[state] = n
        return out

    def pending(self) -> list[Job]:
        """Jobs to run (``queued``, and ``running`` ones a stopped server left), oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT * FROM jobs WHERE state IN ('queued', 'running') ORDER BY created, rowid"
            )
            .fetchall()
        )
        return [self._job(r) for r in rows]

    def recover(self) -> int:
        """Clean up after a stopped server; call it at start (before running pending jobs).

        Jobs whose input never finished arriving are failed (:meth:`abandon_incomplete`) and
        their partial input deleted; temporary result files (``jobs/<id>/.result.*.tmp``) and
        reference files (``references/.*.tmp``), and job folders without an index row, go.
        Everything left is made private (``0600``/``0700``), for stores an older version wrote.

        Returns
        -------
        int
            The number of files and folders removed.
        """
        self.abandon_incomplete()
        removed = 0
        known = {
            r[0]: r[1] for r in self._connection().execute("SELECT id, error FROM jobs").fetchall()
        }
        for folder in sorted((self.root / "jobs").iterdir()):
            if folder.name not in known:
                if _JOB_ID.fullmatch(folder.name) and not folder.is_symlink():
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
                continue
            leftovers = list(folder.glob(".result.*.tmp"))
            if known[folder.name] == _INCOMPLETE:
                leftovers.append(folder / "input.h5")
            for path in leftovers:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        for path in (self.root / "references").glob(".*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        for sub in ("jobs", "references"):
            make_private(self.root / sub)
        if removed:
            log.info("store recovered", extra={"event": "store_recover", "removed": removed})
        return removed

    def abandon_incomplete(self) -> int:
        """Fail the jobs whose input never finished arriving (a server stopped mid-session).

        Returns the number of jobs failed.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? "
                "WHERE state = 'receiving'",
                (time.time(), _INCOMPLETE),
            )
            return cur.rowcount

    def _set(self, job_id: str, expect: tuple[str, ...], **values: Any) -> None:
        cols = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in expect)
        with self._tx() as db:
            cur = db.execute(
                f"UPDATE jobs SET {cols} WHERE id = ? AND state IN ({marks})",
                (*values.values(), job_id, *expect),
            )
            if cur.rowcount != 1:
                raise StoreError(f"job {job_id} is not in state {' or '.join(expect)}")

    def mark_queued(self, job_id: str) -> None:
        """Mark the input complete: the job may run."""
        self._set(job_id, ("receiving",), state="queued")

    def mark_running(self, job_id: str) -> None:
        """Mark the job taken by a runner (again, after a restart)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (time.time(), job_id),
            )
            if cur.rowcount != 1:
                raise StoreError(f"job {job_id} is not queued")

    def mark_done(self, job_id: str, texts: list[str], counts: dict[str, int]) -> None:
        """Mark the job finished (its result file is in place) with its texts and counts."""
        kept = [t[:_MAX_TEXT] for t in texts[-_MAX_TEXTS:]]
        self._set(job_id, ("running",), state="done", finished=time.time(),
                  texts=json.dumps(kept), counts=json.dumps(counts))  # fmt: skip

    def mark_failed(self, job_id: str, error: str) -> None:
        """Mark the job (or the receiving of its input) failed, with the reason."""
        self._set(job_id, ("receiving", "queued", "running"), state="failed",
                  finished=time.time(), error=error[:_MAX_TEXT])  # fmt: skip

    def input_path(self, job_id: str) -> Path:
        """Return the job's input file (``jobs/<id>/input.h5``)."""
        return self.root / "jobs" / self.job(job_id).id / "input.h5"

    def result_path(self, job_id: str) -> Path:
        """Return the job's result file (``jobs/<id>/result.h5``, there once it is done)."""
        return self.root / "jobs" / self.job(job_id).id / "result.h5"

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
        import ismrmrd

        from .mrdfile import SessionWriter

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
        import ismrmrd

        self.reference(measurement_id)
        path = self.reference_path(measurement_id)
        dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
        try:
            xml = dataset.read_xml_header()
            n = dataset.number_of_acquisitions()
            acqs = [dataset.read_acquisition(i) for i in range(n)]
        finally:
            dataset.close()
        return (xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)), acqs

    # -- retention ------------------------------------------------------------------------------

    def retention_areas(self) -> list[Area]:
        """Return the background jobs (``store``) and reference scans (``references``) as areas.

        Finished jobs (done, failed) are removable, timed by when they finished; jobs still
        receiving, queued or running count towards the total but are never removed. Reference
        scans are removable, timed by when they were stored.
        """
        return [_JobsArea(self), _ReferencesArea(self)]

    def delete_job(self, job_id: str) -> bool:
        """Delete a finished job and its files; return False (and keep it) if not finished.

        Raises
        ------
        StoreError
            For a malformed or unknown id.
        """
        job = self.job(job_id)
        with self._tx() as db:
            marks = ", ".join("?" for _ in _FINAL)
            cur = db.execute(f"DELETE FROM jobs WHERE id = ? AND state IN ({marks})",
                             (job.id, *_FINAL))  # fmt: skip
            if cur.rowcount != 1:
                return False
        shutil.rmtree(self.root / "jobs" / job.id, ignore_errors=True)
        return True

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


class _JobsArea:
    """The background jobs of a :class:`Store` as a retention area."""

    name = "store"

    def __init__(self, store: Store) -> None:
        self.store = store

    def retention_entries(self, now: float) -> list[Entry]:
        rows = (
            self.store._connection()
            .execute("SELECT id, state, created, finished FROM jobs")
            .fetchall()
        )
        out = []
        for job_id, state, created, finished in rows:
            final = state in _FINAL
            when = finished if final and finished is not None else created
            size = tree_bytes(self.store.root / "jobs" / job_id)
            out.append(Entry(self.name, job_id, float(when), size, removable=final))
        return out

    def remove_entry(self, key: str) -> bool:
        try:
            return self.store.delete_job(key)
        except StoreError:
            return False


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
        The job and reference store (``--store``).
    scheduler_store
        The scheduler's job store (its finished jobs' results).
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

"""The server's durable store: background jobs, their results, and reference scans.

Layout under the store folder (``mr0-server --store DIR``)::

    store.sqlite            index of jobs and reference scans (SQLite, WAL journal)
    jobs/<id>/input.h5      the session as received: header, acquisitions, waveforms, images
    jobs/<id>/result.h5     what the chain returned: images (image_<series>), acquisitions
    references/<id>.h5      a reference scan (e.g. coil calibration) by its measurement id

A job moves ``receiving → queued → running → done | failed``. Everything a restarted server
needs is on disk: the chain XML and the JSON parameters are kept in the index, the input in
``input.h5``, so :meth:`Store.pending` gives the jobs to run again after a crash or restart
(:class:`gadgets.background.JobRunner` does). Writes of an index row are one SQLite transaction;
a result file is written under a temporary name and renamed when complete, so a crash never
leaves a half-written result that looks finished.

Job ids are 24 hex digits made here; measurement ids come from clients, so they are checked as
plain names (:func:`gadgets.core.check_plain_name`) before they name a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import check_plain_name

__all__ = ["JOB_STATES", "Job", "Reference", "Store", "StoreError"]

JOB_STATES = ("receiving", "queued", "running", "done", "failed")
"""The states of a job, in order."""

_JOB_ID = re.compile(r"[0-9a-f]{24}")
_MAX_TEXTS = 1000  # text messages kept per job result
_MAX_TEXT = 64 * 1024  # characters kept per text message

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
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)
        (self.root / "references").mkdir(parents=True, exist_ok=True)
        self._db = self.root / "store.sqlite"
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
        (self.root / "jobs" / job_id).mkdir()
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

    def abandon_incomplete(self) -> int:
        """Fail the jobs whose input never finished arriving (a server stopped mid-session).

        Returns the number of jobs failed.
        """
        with self._tx() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'failed', finished = ?, error = ? "
                "WHERE state = 'receiving'",
                (time.time(), "the server stopped before the job's input was complete"),
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
        with SessionWriter(tmp) as writer:
            writer.write_header(header_xml)
            for acq in acqs:
                writer.add(acq)
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

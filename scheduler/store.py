"""The scheduler's durable job store: jobs in SQLite (WAL journal), their results on disk.

Layout under the store folder::

    scheduler.sqlite        the job table (SQLite, WAL journal, ``synchronous=FULL``)
    inputs/<id>/            a job's input files, when it was submitted with some (a background
                            MRD session's ``input.h5``); kept as long as the job's record
    results/<id>/<entry>    a done job's result: ``result.json`` (a dict), ``result.bin`` (bytes),
                            or a file or folder the job wrote and the store moved in
    staging/                results being written, inputs being received
                            (:meth:`JobStore.stage_input`), replaced results on their way out

Every file is ``0600`` and every folder ``0700``, whatever the umask (:mod:`scheduler.paths`);
the SQLite journal files take the database file's mode.

A job moves through the states of :data:`scheduler.model.JOB_STATES`::

    submit                            -> queued
    queued   --claim-->                  running    attempts + 1, returned as the attempt token
    running  --complete(token)-->        done       its result renamed into place first
    running  --fail(token, retry)-->     queued     while attempts < max_attempts, else failed
    running  --fail(token)-->            failed
    running  --recover()-->              queued     while attempts < max_attempts, else failed
    queued, running  --recover()-->      cancelled  a job that is not durable (nobody waits)
    queued, running  --cancel-->         cancelled
    done, failed, cancelled  --delete(), purge(), retention-->  gone, with its result
    done  --drop_result()-->             done       without its result files (read and done with)

``done``, ``failed`` and ``cancelled`` are final.

Input files. A job may bring files (:meth:`JobStore.submit` with ``inputs``): the submitter
fills a folder from :meth:`JobStore.stage_input` and the store renames it to ``inputs/<id>/`` in
the transaction that adds the job, so a job is never queued without its complete input, and an
input whose submission never happened (the submitter died while receiving it) is left in
``staging/``, which :meth:`JobStore.recover` empties. The input goes with the job's record
(:meth:`JobStore.delete`, :meth:`JobStore.purge`, retention), and :meth:`JobStore.recover`
removes input folders whose job is not in the store.

Exactly once. :meth:`JobStore.claim` increments ``attempts`` and returns the new value as the
*attempt token*. A result is accepted only by :meth:`JobStore.complete` with the current token
while the job is ``running``: in one write transaction (SQLite's lock held) the store checks the
token, renames the fully written, fsynced result folder into ``results/<id>/`` and flips the state
to ``done``. A worker from before a restart, a second completion, or a completion after
:meth:`JobStore.cancel` holds a stale token or finds a final state, and is refused without
changing anything. So a job can *execute* more than once (a crash interrupts it and it runs again),
but it is *completed* exactly once, and its stored result comes from that accepted attempt. A
crash between the rename and the commit leaves a result folder for a job that is not ``done``;
:meth:`JobStore.recover` removes it, and a later completion replaces it. ``done`` is never written
before its result is on disk.

Several :class:`JobStore` objects, in threads or processes, may use one folder: every thread gets
its own SQLite connection, and SQLite's locks (with a busy timeout) serialise the writes.
Job ids are plain names (:func:`check_job_id`), checked before they name a folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import operator
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import JOB_STATES, JobKind, JobSpec
from .paths import DIR_MODE, make_private, open_private, private_dir, private_file
from .retention import Entry, tree_bytes

__all__ = [
    "DB_NAME",
    "FINAL_STATES",
    "MAX_BIN_BYTES",
    "MAX_JSON_BYTES",
    "MAX_PARAMS_BYTES",
    "DuplicateJobError",
    "JobIdError",
    "JobRecord",
    "JobStore",
    "NoResultError",
    "ResultError",
    "ResultTooLargeError",
    "StoreError",
    "UnknownJobError",
    "check_job_id",
]

log = logging.getLogger(__name__)

DB_NAME = "scheduler.sqlite"
"""The database file inside the store folder."""

FINAL_STATES = ("done", "failed", "cancelled")
"""The states a job never leaves."""

MAX_JSON_BYTES = 64 * 1024**2
"""Largest dict result, as UTF-8 JSON (bytes)."""

MAX_BIN_BYTES = 1024**3
"""Largest bytes result (bytes). Larger outputs belong in a file the store moves in."""

MAX_PARAMS_BYTES = 4 * 1024**2
"""Largest job parameters, as UTF-8 JSON (bytes); bulk data goes in files, not parameters."""

MAX_ERROR_CHARS = 64 * 1024
"""Error texts are cut to this many characters."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,127}")
_APPLICATION_ID = 0x6D72304A  # "mr0J": marks the SQLite file as this store's
_SCHEMA_VERSION = 2  # 2: the durable column
_RESULT_KINDS = ("json", "bytes", "file", "dir")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    estimate_bytes INTEGER NOT NULL,
    function TEXT NOT NULL,
    params TEXT NOT NULL,
    allow_cpu INTEGER NOT NULL,
    needs_gpu INTEGER NOT NULL,
    timeout_s REAL,
    max_attempts INTEGER NOT NULL CHECK (max_attempts >= 1),
    state TEXT NOT NULL CHECK (state IN ({", ".join(f"'{s}'" for s in JOB_STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    device TEXT,
    worker TEXT,
    submitted REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT NOT NULL DEFAULT '',
    result TEXT,
    result_kind TEXT CHECK (result_kind IN ({", ".join(f"'{k}'" for k in _RESULT_KINDS)})),
    durable INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
"""


class StoreError(RuntimeError):
    """The job store cannot do what was asked (the message names the job, file or value)."""


class JobIdError(StoreError, ValueError):
    """A job id that is not a plain name."""


class DuplicateJobError(StoreError):
    """A job id that is already in the store."""


class UnknownJobError(StoreError, LookupError):
    """A job id that is not in the store."""


class NoResultError(StoreError):
    """A result was asked of a job that is not done."""


class ResultError(StoreError, ValueError):
    """A result the store cannot take (wrong type, not JSON-able, missing file)."""


class ResultTooLargeError(ResultError):
    """A dict or bytes result above :data:`MAX_JSON_BYTES` / :data:`MAX_BIN_BYTES`."""


def check_job_id(job_id: str) -> str:
    """Return ``job_id`` if it is a plain name ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``.

    Raises
    ------
    JobIdError
        Otherwise (it could name a path outside ``results/``, or be empty).
    """
    if not isinstance(job_id, str) or not _ID.fullmatch(job_id):
        raise JobIdError(
            f"job id {str(job_id)[:60]!r} is not a plain name ([A-Za-z0-9][A-Za-z0-9_.-], "
            "at most 128 characters)"
        )
    return job_id


@dataclass(frozen=True)
class JobRecord:
    """One stored job: its :class:`~scheduler.model.JobSpec` fields and its progress.

    Attributes
    ----------
    id, kind, estimate_bytes, function, params, allow_cpu, needs_gpu, timeout_s, submitted, \
max_attempts, durable
        As in :class:`~scheduler.model.JobSpec` (``submitted``: the store's clock when the spec
        gave 0).
    seq
        Submission order in this store (increasing).
    priority
        ``int(kind)``: lower runs first.
    state
        One of :data:`~scheduler.model.JOB_STATES`.
    attempts
        Starts so far (each :meth:`JobStore.claim`); the current attempt token while running.
    device
        Where the current or last attempt ran (``"cpu"``, ``"cuda:0"``); None while queued.
    worker
        Who ran it (a free-form worker name); None while queued.
    started, finished
        Wall-clock times (s, ``time.time()``) of the last start and of reaching a final state.
    error
        Why it failed or was cancelled; while queued or running, why the last attempt failed.
    result
        The result's name inside ``results/<id>/`` (None: no result).
    result_kind
        ``"json"`` (a dict), ``"bytes"``, ``"file"`` or ``"dir"``; None without a result.
    """

    id: str
    seq: int
    kind: JobKind
    priority: int
    state: str
    attempts: int
    max_attempts: int
    estimate_bytes: int
    function: str
    params: dict[str, Any]
    allow_cpu: bool
    needs_gpu: bool
    timeout_s: float | None
    submitted: float
    started: float | None
    finished: float | None
    device: str | None
    worker: str | None
    error: str
    result: str | None
    result_kind: str | None
    durable: bool = True

    @property
    def final(self) -> bool:
        """Whether the job is in a final state (done, failed, cancelled)."""
        return self.state in FINAL_STATES

    def spec(self) -> JobSpec:
        """Return the :class:`~scheduler.model.JobSpec` the job was submitted with."""
        return JobSpec(
            id=self.id, kind=self.kind, estimate_bytes=self.estimate_bytes,
            function=self.function, params=dict(self.params), allow_cpu=self.allow_cpu,
            needs_gpu=self.needs_gpu, timeout_s=self.timeout_s, submitted=self.submitted,
            max_attempts=self.max_attempts, durable=self.durable,
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-able dict (``kind`` by name)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["kind"] = self.kind.name.lower()
        return out


class JobStore:
    """The durable job store in one folder (see the module docstring).

    Parameters
    ----------
    root
        The folder; created if missing. It holds ``scheduler.sqlite``, ``results/`` and
        ``staging/``, which must lie on one file system (results are renamed into place).
    busy_timeout_s
        How long a write waits for another connection's lock before :class:`StoreError`.

    Raises
    ------
    StoreError
        When the folder cannot be created or written, or ``scheduler.sqlite`` is not a job store
        of this (or an older) version.
    """

    def __init__(self, root: Path | str, busy_timeout_s: float = 30.0) -> None:
        self.root = Path(root)
        self.busy_timeout_s = float(busy_timeout_s)
        self._db = self.root / DB_NAME
        self._results = self.root / "results"
        self._staging = self.root / "staging"
        self._inputs = self.root / "inputs"
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: dict[threading.Thread, sqlite3.Connection] = {}
        self._inherited: list[sqlite3.Connection] = []  # a forked child's copies: never touched
        self._pid = os.getpid()
        self._closed = False
        try:
            for folder in (self.root, self._results, self._staging, self._inputs):
                private_dir(folder)
            probe = self.root / f".probe-{uuid.uuid4().hex[:12]}"
            private_file(probe).unlink()
            private_file(self._db)  # SQLite's -wal and -shm files take its mode
            for journal in (self.root / f"{DB_NAME}-wal", self.root / f"{DB_NAME}-shm"):
                make_private(journal)
        except OSError as exc:
            raise StoreError(f"job store folder {self.root} is not usable: {exc}") from exc
        try:
            self._init_schema()
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"JobStore({str(self.root)!r})"

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- database ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Return this thread's connection (opened on first use)."""
        if self._closed:
            raise StoreError(f"job store {self.root} is closed")
        if self._pid != os.getpid():  # a forked child must not use its parent's connections
            with self._lock:
                self._inherited.extend(self._conns.values())
                self._conns = {}
                self._local = threading.local()
                self._pid = os.getpid()
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = sqlite3.connect(
                self._db, timeout=self.busy_timeout_s, isolation_level=None,
                check_same_thread=False,  # only so that close() may close every thread's
            )  # fmt: skip
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the job store database {self._db}: {exc}") from exc
        if str(mode).lower() != "wal":
            conn.close()
            raise StoreError(
                f"job store database {self._db}: SQLite refused the WAL journal (got {mode!r}); "
                "a network file system cannot hold the store"
            )
        me = threading.current_thread()
        with self._lock:
            for thread in [t for t in self._conns if not t.is_alive()]:
                self._conns.pop(thread).close()
            self._conns[me] = conn
        self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """Run the body as one write transaction (``BEGIN IMMEDIATE``: the write lock first)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self._db}: cannot start a write: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"job store {self._db}: {exc}") from exc
            raise

    def _read(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return self._connect().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"job store {self._db}: {exc}") from exc

    def _init_schema(self) -> None:
        with self._tx() as db:
            app = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if app == 0 and tables == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA application_id = {_APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif app == _APPLICATION_ID and version == 1:
                db.execute("ALTER TABLE jobs ADD COLUMN durable INTEGER NOT NULL DEFAULT 1")
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            elif app != _APPLICATION_ID:
                raise StoreError(
                    f"{self._db} is an SQLite database of something else (application_id "
                    f"{app:#x}), not a scheduler job store"
                )
            elif version > _SCHEMA_VERSION:
                raise StoreError(
                    f"{self._db} has job store schema {version}; this version reads up to "
                    f"{_SCHEMA_VERSION}"
                )

    def close(self) -> None:
        """Close every thread's connection; later calls raise :class:`StoreError`.

        Call it when no other thread is using the store.
        """
        with self._lock:
            self._closed = True
            conns, self._conns = list(self._conns.values()), {}
            self._local = threading.local()
        for conn in conns:
            conn.close()

    @staticmethod
    def _record(row: sqlite3.Row) -> JobRecord:
        return JobRecord(
            id=row["id"], seq=row["seq"], kind=JobKind.parse(row["kind"]),
            priority=row["priority"], state=row["state"], attempts=row["attempts"],
            max_attempts=row["max_attempts"], estimate_bytes=row["estimate_bytes"],
            function=row["function"], params=json.loads(row["params"]),
            allow_cpu=bool(row["allow_cpu"]), needs_gpu=bool(row["needs_gpu"]),
            timeout_s=row["timeout_s"], submitted=row["submitted"], started=row["started"],
            finished=row["finished"], device=row["device"], worker=row["worker"],
            error=row["error"], result=row["result"], result_kind=row["result_kind"],
            durable=bool(row["durable"]),
        )  # fmt: skip

    @staticmethod
    def _row(db: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = db.execute(
            "SELECT state, attempts, max_attempts FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise UnknownJobError(f"no job {job_id!r} in the job store")
        return row

    # -- transitions ------------------------------------------------------------------------------

    def stage_input(self) -> Path:
        """Return a new private, empty folder under ``staging/`` for a job's input files.

        Fill it, then give it to :meth:`submit` as ``inputs``. Until then it is nobody's: a
        folder never submitted is removed by the next :meth:`recover`, or by the caller.
        """
        return private_dir(self._staging / f"input.{uuid.uuid4().hex[:16]}")

    def input_path(self, job_id: str) -> Path | None:
        """Return the folder of a job's input files (``inputs/<id>/``); None if it has none.

        Raises
        ------
        JobIdError
            For an id that is not a plain name.
        """
        path = self._inputs / check_job_id(job_id)
        return path if path.is_dir() and not path.is_symlink() else None

    def submit(self, spec: JobSpec, inputs: Path | None = None) -> JobRecord:
        """Add a job in state ``queued``.

        Parameters
        ----------
        spec
            The job; ``spec.submitted == 0`` is replaced by the current time.
        inputs
            A folder from :meth:`stage_input` holding the job's input files: renamed to
            ``inputs/<id>/`` in the transaction that adds the job (on any error it stays where
            it was, for the caller to remove).

        Returns
        -------
        JobRecord
            The stored job.

        Raises
        ------
        JobIdError
            For an id that is not a plain name.
        DuplicateJobError
            For an id already in the store (in any state).
        ValueError
            For a spec field out of range, or parameters that are not a JSON-able dict (or larger
            than :data:`MAX_PARAMS_BYTES`), or ``inputs`` that is not a folder of
            :meth:`stage_input`.
        """
        job_id = check_job_id(spec.id)
        kind = JobKind.parse(spec.kind)
        row = _spec_row(spec)
        submitted = float(spec.submitted) if spec.submitted else time.time()
        if inputs is not None:
            inputs = Path(inputs)
            if inputs.parent != self._staging or not inputs.name.startswith("input."):
                raise ValueError(f"job {job_id}: inputs {inputs} is not a folder of stage_input()")
            if inputs.is_symlink() or not inputs.is_dir():
                raise ValueError(f"job {job_id}: inputs {inputs} is not a folder")
        with self._tx() as db:
            old = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if old is not None:
                raise DuplicateJobError(f"job {job_id!r} is already in the store ({old['state']})")
            db.execute(
                "INSERT INTO jobs (id, kind, priority, estimate_bytes, function, params, "
                "allow_cpu, needs_gpu, timeout_s, max_attempts, state, submitted, durable) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?)",
                (job_id, kind.name.lower(), int(kind), *row, submitted, int(bool(spec.durable))),
            )
            if inputs is not None:
                # Under the write lock: a crash after the rename and before the commit leaves
                # an input without a job, which recover() removes.
                target = self._inputs / job_id
                if target.exists() or target.is_symlink():
                    _remove(self._move_to_trash(target))  # an earlier job's, of a crash
                make_private(inputs)
                os.replace(inputs, target)
                _sync_dir(self._inputs)
        return self.get(job_id)

    def claim(self, job_id: str, device: str, worker: str = "") -> int | None:
        """Take a queued job: ``queued → running``, ``attempts + 1``.

        Parameters
        ----------
        job_id
            The job.
        device
            Where it will run: ``"cpu"`` or ``"cuda:<index>"`` (or a backend's name for a device).
        worker
            Who runs it (free text, e.g. ``"gpu0-worker pid 4711"``), kept for status displays.

        Returns
        -------
        int or None
            The attempt token (the new ``attempts``) to give :meth:`complete` or :meth:`fail`;
            None when the job was not queued (another worker took it, it was cancelled, or it is
            finished).

        Raises
        ------
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        if not isinstance(device, str) or not _DEVICE.fullmatch(device):
            raise ValueError(f"device {str(device)[:60]!r} is not a device name like 'cuda:0'")
        if not isinstance(worker, str) or len(worker) > 256:
            raise ValueError(f"worker {str(worker)[:60]!r} is not a name of at most 256 characters")
        with self._tx() as db:
            row = self._row(db, job_id)
            if row["state"] != "queued":
                return None
            token = int(row["attempts"]) + 1
            db.execute(
                "UPDATE jobs SET state = 'running', attempts = ?, device = ?, worker = ?, "
                "started = ?, finished = NULL WHERE id = ?",
                (token, device, worker, time.time(), job_id),
            )
        return token

    def complete(
        self, job_id: str, token: int, result: Mapping[str, Any] | bytes | os.PathLike | None = None
    ) -> bool:
        """Store the result of a running job and mark it ``done``, if ``token`` is current.

        The result is written (and fsynced) under ``staging/`` first; then, in one write
        transaction, the token is checked, the result is renamed to ``results/<id>/`` and the
        state flips to ``done``.

        Parameters
        ----------
        job_id
            The job.
        token
            The attempt token :meth:`claim` returned.
        result
            A dict (stored as ``result.json``, at most :data:`MAX_JSON_BYTES`), bytes
            (``result.bin``, at most :data:`MAX_BIN_BYTES`), a :class:`~pathlib.Path` of a file or
            folder to move in (it keeps its name when that is a plain name, else ``result``), or
            None (done without a result). A plain ``str`` is refused: give a ``Path``.

        Returns
        -------
        bool
            True when the job became ``done``. False (and nothing changed; a moved-in path stays
            where it was) when the job is not running with this token: a stale worker from before
            a restart or a requeue, a second completion, or a cancelled job.

        Raises
        ------
        ResultError
            For a result of another type, not JSON-able, too large, or a missing path; the job
            stays running (call :meth:`fail`).
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        token = _check_token(token)
        payload = _encode_result(job_id, result)
        if not self._is_current(job_id, token):  # cheap early refusal, without staging anything
            return False
        stage: Path | None = None
        trash: Path | None = None
        accepted = False
        try:
            try:
                stage, entry, kind = self._stage(job_id, token, payload)
            except OSError as exc:
                # recover() may remove a stale attempt's staging folder while it is written
                if not self._is_current(job_id, token):
                    return False
                raise StoreError(f"job {job_id}: cannot write its result: {exc}") from exc
            with self._tx() as db:
                row = self._row(db, job_id)
                if row["state"] != "running" or row["attempts"] != token:
                    return False
                if stage is not None:
                    trash = self._install(job_id, stage)
                try:
                    db.execute(
                        "UPDATE jobs SET state = 'done', finished = ?, error = '', result = ?, "
                        "result_kind = ? WHERE id = ?",
                        (time.time(), entry, kind, job_id),
                    )
                except BaseException:
                    if stage is not None:  # rolled back: the job is not done, so no result
                        shutil.rmtree(self._results / job_id, ignore_errors=True)
                    raise
                accepted = True
        finally:
            for leftover in (stage, trash):
                if leftover is not None and leftover.exists():
                    shutil.rmtree(leftover, ignore_errors=True)
        if accepted and isinstance(payload, Path):
            _remove_source(payload)
        return accepted

    def fail(self, job_id: str, token: int, error: str, retry: bool = False) -> bool:
        """Record that a running attempt failed.

        Parameters
        ----------
        job_id
            The job.
        token
            The attempt token :meth:`claim` returned.
        error
            Why (cut to :data:`MAX_ERROR_CHARS` characters).
        retry
            Whether to queue the job again (device and worker cleared) while
            ``attempts < max_attempts``; without retry, or with the attempts used up, the job
            becomes ``failed``.

        Returns
        -------
        bool
            True when the state changed; False (nothing changed) for a stale token or a job that
            is not running.

        Raises
        ------
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        token = _check_token(token)
        text = str(error)[:MAX_ERROR_CHARS]
        with self._tx() as db:
            row = self._row(db, job_id)
            if row["state"] != "running" or row["attempts"] != token:
                return False
            if retry and row["attempts"] < row["max_attempts"]:
                db.execute(
                    "UPDATE jobs SET state = 'queued', device = NULL, worker = NULL, "
                    "finished = NULL, error = ? WHERE id = ?",
                    (text, job_id),
                )
            else:
                if retry:
                    used = f"attempt {row['attempts']} of {row['max_attempts']}"
                    text = f"{text} ({used}: no retry left)"[:MAX_ERROR_CHARS]
                db.execute(
                    "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                    (time.time(), text, job_id),
                )
        return True

    def cancel(self, job_id: str, reason: str = "cancelled") -> bool:
        """Cancel a queued or running job (a running one's :meth:`complete` is then refused).

        The device and worker of a running job are kept, so the caller can stop that worker.

        Returns
        -------
        bool
            True when the job was cancelled; False when it was already final.

        Raises
        ------
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        with self._tx() as db:
            row = self._row(db, job_id)
            if row["state"] not in ("queued", "running"):
                return False
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? WHERE id = ?",
                (time.time(), str(reason)[:MAX_ERROR_CHARS], job_id),
            )
        return True

    def recover(self) -> list[str]:
        """Requeue the jobs a crashed or stopped scheduler left running; call it at start.

        Jobs that are not durable (``JobSpec.durable`` False: a preview or a session's recon,
        whose submitter waited for it in the process that stopped) are cancelled, queued or
        running: nobody will read their result, so they do not run again. Every other
        ``running`` job becomes ``queued`` (device and worker cleared) while
        ``attempts < max_attempts``, else ``failed`` ("interrupted N times"). Its attempt was
        counted when it was claimed, so its next claim returns ``attempts + 1`` and the old
        worker's token is refused. In the same transaction, leftovers of interrupted
        completions go: result folders of jobs that are not done (or not in the store, or whose
        result was dropped), input folders of jobs not in the store, everything under
        ``staging/`` (inputs never submitted among it), and stray ``.probe-*`` files.

        Returns
        -------
        list of str
            The requeued job ids, in submission order.
        """
        now = time.time()
        requeued: list[str] = []
        doomed: list[Path] = []
        with self._tx() as db:
            dropped = db.execute(
                "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? "
                "WHERE durable = 0 AND state IN ('queued', 'running')",
                (now, "cancelled at a restart: its submitter (a session) ended with the previous "
                 "run, so nobody would read its result"),
            ).rowcount  # fmt: skip
            rows = db.execute(
                "SELECT id, attempts, max_attempts, device FROM jobs WHERE state = 'running' "
                "ORDER BY seq"
            ).fetchall()
            for row in rows:
                where = f" on {row['device']}" if row["device"] else ""
                if row["attempts"] < row["max_attempts"]:
                    db.execute(
                        "UPDATE jobs SET state = 'queued', device = NULL, worker = NULL, "
                        "error = ? WHERE id = ?",
                        (f"interrupted{where} (attempt {row['attempts']})", row["id"]),
                    )
                    requeued.append(row["id"])
                else:
                    db.execute(
                        "UPDATE jobs SET state = 'failed', finished = ?, error = ? WHERE id = ?",
                        (now, f"interrupted {row['attempts']} times (max_attempts "
                         f"{row['max_attempts']}); last{where}", row["id"]),
                    )  # fmt: skip
            # Under the write lock no completion can rename a result into place meanwhile.
            for folder in sorted(self._results.iterdir()):
                if not _ID.fullmatch(folder.name):
                    continue
                state = db.execute(
                    "SELECT state, result FROM jobs WHERE id = ?", (folder.name,)
                ).fetchone()
                if state is None or state["state"] != "done" or state["result"] is None:
                    doomed.append(self._move_to_trash(folder))
            for folder in sorted(self._inputs.iterdir()):
                known = db.execute("SELECT 1 FROM jobs WHERE id = ?", (folder.name,)).fetchone()
                if known is None or folder.is_symlink() or not folder.is_dir():
                    doomed.append(self._move_to_trash(folder))
            doomed.extend(self._staging.iterdir())
            doomed.extend(self.root.glob(".probe-*"))
        for path in doomed:
            _remove(path)
        if requeued or rows or dropped:
            log.info("job store %s: requeued %d interrupted job(s), failed %d, cancelled %d "
                     "interactive", self.root, len(requeued), len(rows) - len(requeued),
                     dropped)  # fmt: skip
        return requeued

    def purge(self, older_than_s: float) -> list[str]:
        """Delete final jobs (and their results) that finished more than ``older_than_s`` ago.

        Returns
        -------
        list of str
            The deleted job ids.
        """
        if not isinstance(older_than_s, (int, float)) or not older_than_s >= 0:
            raise ValueError(f"older_than_s must be a number >= 0, not {older_than_s!r}")
        cutoff = time.time() - float(older_than_s)
        marks = ", ".join("?" for _ in FINAL_STATES)
        with self._tx() as db:
            ids = [
                r["id"]
                for r in db.execute(
                    f"SELECT id FROM jobs WHERE state IN ({marks}) AND finished <= ? ORDER BY seq",
                    (*FINAL_STATES, cutoff),
                )
            ]
            db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
        # Rows first: a crash here leaves result folders without a job, which recover() removes,
        # never a done job without its result.
        for job_id in ids:
            _remove(self._results / job_id)
            _remove(self._inputs / job_id)
        return ids

    def delete(self, job_id: str) -> bool:
        """Delete a final job, its result and its input files (e.g. once its submitter has read it).

        Returns
        -------
        bool
            True when it was deleted; False when it is queued or running (it stays).

        Raises
        ------
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        with self._tx() as db:
            row = self._row(db, job_id)
            if row["state"] not in FINAL_STATES:
                return False
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        _remove(self._results / job_id)  # after the row (see purge)
        _remove(self._inputs / job_id)
        return True

    def drop_result(self, job_id: str) -> bool:
        """Delete a done job's result files, keeping its record (it stays ``done``).

        For a submitter that has read the result (a preview's signal): the record stays for
        status and history until retention removes it; :meth:`load_result` then returns None.

        Returns
        -------
        bool
            True when a result was dropped; False for a job that is not done or has none.

        Raises
        ------
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        with self._tx() as db:
            row = db.execute("SELECT state, result FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise UnknownJobError(f"no job {job_id!r} in the job store")
            if row["state"] != "done" or row["result"] is None:
                return False
            db.execute("UPDATE jobs SET result = NULL, result_kind = NULL WHERE id = ?", (job_id,))
        _remove(self._results / job_id)  # after the row: a crash leaves a folder recover() removes
        return True

    # -- retention (scheduler.retention.Area) -----------------------------------------------------

    name = "scheduler"
    """The store's name as a retention area."""

    def retention_entries(self, now: float) -> list[Entry]:
        """Return one entry per job: final ones removable (timed by ``finished``), others not.

        An entry's size is its result's and its input files'; queued and running jobs are
        listed with the size of their input (0 without) so that they count, never removable.
        """
        rows = self._read("SELECT id, state, submitted, finished FROM jobs ORDER BY seq")
        out = []
        for row in rows:
            final = row["state"] in FINAL_STATES
            when = row["finished"] if final and row["finished"] is not None else row["submitted"]
            size = tree_bytes(self._results / row["id"]) if row["state"] == "done" else 0
            size += tree_bytes(self._inputs / row["id"])
            out.append(Entry(self.name, row["id"], float(when), size, removable=final))
        return out

    def remove_entry(self, key: str) -> bool:
        """Delete the final job ``key`` and its result (False: not final, or gone)."""
        try:
            return self.delete(key)
        except UnknownJobError:
            return False

    # -- queries ----------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        """Return a job.

        Raises
        ------
        JobIdError
            For an id that is not a plain name.
        UnknownJobError
            For an id not in the store.
        """
        check_job_id(job_id)
        rows = self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise UnknownJobError(f"no job {job_id!r} in the job store")
        return self._record(rows[0])

    def jobs(
        self, state: str | None = None, limit: int = 100, function: str | None = None
    ) -> list[JobRecord]:
        """Return the newest jobs (only those in ``state``, of ``function``, if given)."""
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(JOB_STATES)}")
        limit = operator.index(limit)
        if limit < 1:
            raise ValueError(f"limit must be >= 1, not {limit}")
        where, args = _where(state=state, function=function)
        rows = self._read(f"SELECT * FROM jobs{where} ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [self._record(r) for r in rows]

    def find(self, function: str, match: Mapping[str, str]) -> JobRecord | None:
        """Return the newest job of ``function`` whose parameters hold every ``match`` pair.

        Parameters
        ----------
        function
            The job function's name.
        match
            Parameter names (plain names) and the text values they must have exactly;
            at least one.

        Returns
        -------
        JobRecord or None
            The newest (by submission) such job; None when there is none.

        Raises
        ------
        ValueError
            For no ``match``, a name that is not a plain name, or a value that is not text.
        """
        if not match:
            raise ValueError("find needs at least one parameter to match")
        clauses, args = ["function = ?"], [function]
        for key, value in match.items():
            if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key):
                raise ValueError(f"parameter name {str(key)[:60]!r} is not a plain name")
            if not isinstance(value, str):
                raise ValueError(f"parameter {key}: {value!r:.60} is not a text")
            clauses.append(f"json_extract(params, '$.{key}') = ?")  # key: a checked plain name
            args.append(value)
        rows = self._read(
            f"SELECT * FROM jobs WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT 1",
            tuple(args),
        )
        return self._record(rows[0]) if rows else None

    def queued(self) -> list[JobRecord]:
        """Return the queued jobs in submission order (a requeued job keeps its place)."""
        rows = self._read("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq")
        return [self._record(r) for r in rows]

    def counts(self, function: str | None = None) -> dict[str, int]:
        """Return the number of jobs (of ``function``, if given) in each state.

        Every state of ``JOB_STATES`` is a key (0 if none).
        """
        out = dict.fromkeys(JOB_STATES, 0)
        where, args = _where(function=function)
        for row in self._read(f"SELECT state, count(*) AS n FROM jobs{where} GROUP BY state", args):
            out[row["state"]] = row["n"]
        return out

    def result_path(self, job_id: str) -> Path | None:
        """Return a done job's result file or folder; None if it is not done or has no result."""
        rec = self.get(job_id)
        if rec.state != "done" or rec.result is None:
            return None
        return self._results / rec.id / rec.result

    def load_result(self, job_id: str) -> dict[str, Any] | bytes | Path | None:
        """Return a done job's result: the dict, the bytes, or the path of a moved-in file/folder.

        Returns None for a job done without a result.

        Raises
        ------
        NoResultError
            For a job that is not done.
        StoreError
            When the result file has gone missing.
        """
        rec = self.get(job_id)
        if rec.state != "done":
            raise NoResultError(f"job {job_id!r} is {rec.state}: it has no result")
        if rec.result is None:
            return None
        path = self._results / rec.id / rec.result
        if not path.exists():
            raise StoreError(f"job {job_id!r}: its result {path} is missing")
        if rec.result_kind == "json":
            return json.loads(path.read_bytes())
        if rec.result_kind == "bytes":
            return path.read_bytes()
        return path

    # -- result files -----------------------------------------------------------------------------

    def _is_current(self, job_id: str, token: int) -> bool:
        rows = self._read("SELECT state, attempts FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise UnknownJobError(f"no job {job_id!r} in the job store")
        return rows[0]["state"] == "running" and rows[0]["attempts"] == token

    def _stage(
        self, job_id: str, token: int, payload: Path | tuple[str, bytes] | None
    ) -> tuple[Path | None, str | None, str | None]:
        """Write the result under ``staging/`` (fsynced); return (folder, entry, kind)."""
        if payload is None:
            return None, None, None
        stage = self._staging / f"{job_id}.{token}.{uuid.uuid4().hex[:12]}"
        os.mkdir(stage, DIR_MODE)
        os.chmod(stage, DIR_MODE)
        try:
            if isinstance(payload, tuple):
                entry, data = payload
                kind = "json" if entry == "result.json" else "bytes"
                _write_synced(stage / entry, data)
            else:
                entry = payload.name if _ID.fullmatch(payload.name) else "result"
                if payload.is_dir():
                    kind = "dir"
                    shutil.copytree(payload, stage / entry, copy_function=_link_or_copy)
                else:
                    kind = "file"
                    _link_or_copy(payload, stage / entry)
                make_private(stage / entry)
                _sync_tree(stage / entry)
            _sync_dir(stage)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return stage, entry, kind

    def _move_to_trash(self, path: Path) -> Path:
        trash = self._staging / f"trash.{path.name}.{uuid.uuid4().hex[:12]}"
        os.replace(path, trash)
        return trash

    def _install(self, job_id: str, stage: Path) -> Path | None:
        """Rename a staged result to ``results/<id>`` (under the write lock); return old one."""
        final = self._results / job_id
        trash = None
        if final.exists() or final.is_symlink():  # left by a crash before an earlier commit
            trash = self._move_to_trash(final)
        os.replace(stage, final)
        _sync_dir(self._results)
        return trash


def _spec_row(spec: JobSpec) -> tuple[Any, ...]:
    """Check a spec's fields; return (estimate_bytes, ..., max_attempts) as stored."""
    try:
        estimate = operator.index(spec.estimate_bytes)
        max_attempts = operator.index(spec.max_attempts)
    except TypeError as exc:
        raise ValueError(
            f"job {spec.id}: estimate_bytes and max_attempts must be integers"
        ) from exc
    if estimate < 0:
        raise ValueError(f"job {spec.id}: estimate_bytes {estimate} < 0")
    if not 1 <= max_attempts <= 1000:
        raise ValueError(f"job {spec.id}: max_attempts {max_attempts} is not in 1..1000")
    if not isinstance(spec.function, str) or len(spec.function) > 256:
        raise ValueError(f"job {spec.id}: function must be a name of at most 256 characters")
    timeout = spec.timeout_s
    if timeout is not None:
        timeout = float(timeout)
        if not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"job {spec.id}: timeout_s {timeout} is not a positive number")
    submitted = float(spec.submitted)
    if not (math.isfinite(submitted) and submitted >= 0):
        raise ValueError(f"job {spec.id}: submitted {submitted} is not a time")
    if not isinstance(spec.params, Mapping):
        raise ValueError(f"job {spec.id}: params must be a dict, not {type(spec.params).__name__}")
    try:
        params = json.dumps(dict(spec.params))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job {spec.id}: params are not JSON-able: {exc}") from exc
    if len(params.encode()) > MAX_PARAMS_BYTES:
        raise ValueError(
            f"job {spec.id}: params take {len(params.encode())} bytes as JSON "
            f"(at most {MAX_PARAMS_BYTES}); pass bulk data as files"
        )
    return (estimate, spec.function, params, int(bool(spec.allow_cpu)),
            int(bool(spec.needs_gpu)), timeout, max_attempts)  # fmt: skip


def _where(**equal: str | None) -> tuple[str, tuple[str, ...]]:
    """Return ``(" WHERE a = ? AND b = ?", (a, b))`` for the given columns (None: left out)."""
    given = {k: v for k, v in equal.items() if v is not None}  # keys: our own column names
    if not given:
        return "", ()
    return " WHERE " + " AND ".join(f"{k} = ?" for k in given), tuple(given.values())


def _check_token(token: int) -> int:
    if isinstance(token, bool):
        raise TypeError("an attempt token is the int claim() returned, not a bool")
    token = operator.index(token)
    if token < 1:
        raise ValueError(f"attempt token {token} < 1 (claim() returns 1 or more)")
    return token


def _encode_result(job_id: str, result: object) -> tuple[str, bytes] | Path | None:
    """Turn a result into ``(entry, bytes)`` or a checked source path, before any I/O."""
    if result is None:
        return None
    if isinstance(result, Mapping):
        try:
            data = json.dumps(dict(result)).encode()
        except (TypeError, ValueError) as exc:
            raise ResultError(f"job {job_id}: the result dict is not JSON-able: {exc}") from exc
        if len(data) > MAX_JSON_BYTES:
            raise ResultTooLargeError(
                f"job {job_id}: the result dict takes {len(data)} bytes as JSON (at most "
                f"{MAX_JSON_BYTES}); write a file and pass its Path"
            )
        return "result.json", data
    if isinstance(result, (bytes, bytearray, memoryview)):
        data = bytes(result)
        if len(data) > MAX_BIN_BYTES:
            raise ResultTooLargeError(
                f"job {job_id}: the result takes {len(data)} bytes (at most {MAX_BIN_BYTES}); "
                "write a file and pass its Path"
            )
        return "result.bin", data
    if isinstance(result, os.PathLike) and not isinstance(result, str):
        path = Path(result)
        if not path.exists():
            raise ResultError(f"job {job_id}: the result path {path} does not exist")
        if not (path.is_file() or path.is_dir()):
            raise ResultError(f"job {job_id}: the result path {path} is not a file or folder")
        return path
    raise ResultError(
        f"job {job_id}: a result is a dict, bytes, a Path or None, not {type(result).__name__}"
    )


def _write_synced(path: Path, data: bytes) -> None:
    with open_private(path, exclusive=True) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Hard-link ``src`` to ``dst`` (the source stays until the result is accepted), else copy."""
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy
        shutil.copy2(src, dst)


def _sync_tree(path: Path) -> None:
    """Fsync a file, or every file and folder under a folder."""
    if path.is_dir():
        for sub in path.iterdir():
            _sync_tree(sub)
        _sync_dir(path)
    elif path.is_file():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _sync_dir(path: Path) -> None:
    """Fsync a folder, so that renames and new names in it survive a power cut (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder; nothing more to do there
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _remove_source(path: Path) -> None:
    """Remove a moved-in result's source after the completion was accepted."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:  # the result is stored; only the worker's copy stays behind
        log.warning("stored the result, but could not remove its source %s: %s", path, exc)

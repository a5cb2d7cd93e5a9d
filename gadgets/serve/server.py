"""``mr0-server``: serve MRD/ISMRMRD streams through gadget chains.

One TCP connection is one session (DESIGN.md, "The server"):

``config (file name or XML text) → header → optional JSON text → data … → close``

The config name selects ``<chains_dir>/<name>.xml`` through
:func:`gadgets.framework.chain.chain_path`,
which accepts plain names only; nothing named by a client is ever imported or opened elsewhere.
A JSON object in the first text message (before or right after the header) overrides chain
properties. The FIRE/OpenRecon form ``{"version": …, "parameters": {"config": NAME, …}}``
(python-ismrmrd-server's convention, what a Siemens scanner sends from an OpenRecon UI) chooses
the chain by ``parameters.customconfig`` (when not empty) or ``parameters.config``, in place of
the config message's name, and applies each other parameter where the chosen chain has that
property (the UI sends all of its parameters, whichever chain it chose); the keys no gadget has
are logged and left out. Everything the chain yields (images, acquisitions, text)
goes back to the client, then a close. Any error reaches the client as a text message starting
with ``ERROR``, then a close; it never ends the server.

Threads per session: the connection's thread reads and validates messages and puts them, in
batches, into a bounded queue; a compute thread runs the chain and writes its output. So a large
reconstruction neither stalls the other sessions nor stops its own connection from being read,
and a slow client cannot make the server buffer without limit (the queue blocks the reader, TCP
blocks the client). A batch is handed over when it is full or when the reader would wait for the
network (:class:`gadgets.wire.framing.SocketSource`), so batching never delays an item that has
arrived; one hand-over per item between two threads would cost more than parsing the item.
Every size is bounded: each message by :class:`gadgets.wire.framing.Limits`, the session by
``max_session_bytes``, the session count by ``max_sessions``, a JSON parameter text by
:data:`MAX_JSON_DEPTH` levels of nesting and :data:`MAX_JSON_NUMBER_CHARS` characters per number.

Slots and time (no peer can hold the server by being idle or slow; option, default):

- A new connection waits in a *pending* pool (``--max-pending``, 64), not in a session slot,
  until its config and header have arrived. They must arrive within ``--preamble-timeout``
  (30 s). When the pool is full, the connection that has waited longest is evicted (it gets
  ``ERROR: evicted …``), so idle sockets cannot keep a real client out.
- With its header in, the connection takes one of ``--max-sessions`` (16) slots, at most
  ``--max-per-peer`` (8; 0: no limit) of them per client address; over either it gets
  ``ERROR: server busy …``.
- After that, a message that has begun must keep arriving at ``--min-rate`` (1024 bytes/s)
  on average over ``--rate-window`` (10 s), measured over the window, not per ``recv``; between
  messages a client may be idle for ``--idle-timeout`` (600 s; a scanner sends each
  acquisition whole, as it is acquired). Time the server spends not reading (its chain is
  busy) is not counted against the client.
- Sending waits at most ``--send-timeout`` (60 s) for a client to take data, and the answer
  must go out at the same minimum rate: a client that never reads is given up on.

The ISMRMRD header is parsed as it arrives and its encoded and recon matrices are checked
against ``matrix_limits`` (:class:`mr0core.io.mrd.MatrixLimits`: each dimension, voxels, and
the grid bytes with the header's ``receiverChannels``), so a header asking for a huge grid is
answered ``ERROR`` before any acquisition is buffered.

Storage: ``--save-dir`` is made ``0700`` (its files ``0600``). With ``--retention-days`` and/or
``--max-store-gb``, a :class:`scheduler.retention.RetentionTimer` deletes finished data in
``--save-dir``, ``--store`` (jobs, references) and the scheduler's results by age and total
size, at start and every ``--retention-interval`` (3600 s); the files sessions are writing are
never deleted.

Every failure reaches the client as ``ERROR: …`` and a close, never as a reset: a bound
broken, a malformed message, or a bug (logged with its traceback, counted as outcome
``crash``). After an error the server half-closes and reads what the client still sends
(up to 4 MiB, 1 s, until 0.25 s pass without a byte) before it closes, so that the answer is
not destroyed by a reset.

Acquisitions (and client images) with NaN or Inf samples are passed on, with one
``WARNING: …`` text to the client per session and the metric
``mr0_mrd_nonfinite_items_total``. An image sent by the client is refused (``ERROR``) unless
every gadget of the chain takes client images (:attr:`gadgets.framework.core.Gadget.takes_images`:
the ``passthrough`` and ``savedata`` chains); client images are never shown on the status page,
which keeps thumbnails of images the server produced.

SIGTERM (or :meth:`MrdServer.shutdown`) stops accepting connections and lets the sessions in
flight finish (up to ``grace_s``).

Access (:mod:`gadgets.wire.access`): both ports bind to localhost by default. ``allow`` limits the
MRD port to client networks (others get ``ERROR: ... not allowed`` and a close). The HTTP port
(``http_port``: status page, JSON API, Prometheus ``/metrics``; :mod:`gadgets.serve.status`) refuses
to start on a non-loopback address without a token.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import json
import logging
import math
import queue
import re
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ismrmrd
import numpy as np

import gadgets.library  # noqa: F401  (registers the gadgets the chains name)
from gadgets.framework.chain import (
    DEFAULT_CHAINS_DIR,
    Chain,
    ChainError,
    Services,
    applicable_overrides,
    available_chains,
    chain_takes_images,
    chain_text,
    open_chain,
    parse_chain,
    parse_session_header,
)
from gadgets.framework.core import GadgetError, Text
from gadgets.framework.session_store import (
    SESSION_INPUT,
    SESSION_JSON,
    Store,
    header_identity,
    new_job_id,
    retention_timer,
)
from gadgets.library import background_jobs
from gadgets.serve.dicom_output import SessionDicom
from gadgets.serve.status import StatusBoard, StatusHttpServer
from gadgets.wire.access import (
    TOKEN_ENV,
    AccessError,
    Network,
    allowed,
    is_loopback,
    load_token,
    parse_allow,
)
from gadgets.wire.framing import (
    Limits,
    Message,
    MessageId,
    MessageReader,
    MessageWriter,
    ProtocolError,
    RateWindow,
    ReadPace,
    SlowPeerError,
)
from gadgets.wire.mrdfile import SessionWriter
from gadgets.wire.pacs import PacsQueue, PacsSender, PacsTarget
from mr0core.clitools import exit_quietly_on_closed_pipe
from mr0core.io.mrd import (
    MatrixLimits,
    MrdFormatError,
    MrdHeaderError,
    check_matrix,
)
from scheduler.cli import add_retention_options
from scheduler.functions import MRD_SESSION
from scheduler.model import JobKind
from scheduler.paths import private_dir, write_private
from scheduler.retention import RetentionPolicy

__all__ = [
    "MAX_JSON_DEPTH",
    "MAX_JSON_NUMBER_CHARS",
    "SCHEDULER_FUNCTION_MODULES",
    "MrdServer",
    "ServerConfig",
    "main",
    "parse_args",
]

log = logging.getLogger("mr0.server")

_END = object()  # end of the session's input
_ABORT = object()  # the input failed: stop the chain without finishing it
_FLUSH_S = 0.05  # longest time output waits in the buffer while the chain works through a batch
_DRAIN_BYTES = 4 * 2**20  # after an error: input read (and dropped) before the close, at most
_DRAIN_S = 1.0  # ... and for at most this long
_DRAIN_QUIET_S = 0.25  # ... or until the client has sent nothing for this long
_DRAINING = threading.BoundedSemaphore(32)  # sessions draining at once

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a JSON parameter text."""

MAX_JSON_NUMBER_CHARS = 64
"""Longest number literal accepted in a JSON parameter text (characters)."""

SCHEDULER_FUNCTION_MODULES = (background_jobs.__name__,)
"""The plug-in modules of the server's scheduler (``function_modules``,
:func:`scheduler.functions.load_function_modules`): :mod:`gadgets.library.background_jobs`, the job
function of background sessions. Fixed here: no client or setting names a module."""


@dataclass
class ServerConfig:
    """Settings of :class:`MrdServer` (sizes in bytes, times in seconds).

    ``allow``: MRD client networks (empty: any client). ``http_port`` None: no HTTP port;
    ``http_token``: required for a non-loopback ``http_host``. ``previews``: thumbnails kept
    for the status page (0: none).

    Slots and time (see the module docstring): ``max_pending`` connections may wait for their
    config and header, for ``preamble_timeout_s`` each; ``max_sessions`` admitted sessions,
    ``max_per_peer`` per client address (0: no limit); ``min_rate`` (bytes/s over
    ``rate_window_s``) inside a message and while sending; ``idle_timeout_s`` between
    messages; ``send_timeout_s`` for the client to take data.

    ``matrix_limits``: bounds on the header's encoded and recon matrices, checked when the
    header arrives (:func:`mr0core.io.mrd.check_matrix`).

    Storage (:mod:`scheduler.retention`): with ``retention_days`` and/or ``max_store_gb``
    (GB, 10⁹ bytes), finished data in ``save_dir``, the job store, its reference scans and the
    scheduler's results is deleted when older, or oldest first while the total is over the
    cap: at start and every ``retention_interval_s``. None and None: everything is kept.

    ``trim_interval_s``: after sessions have ended, the memory they freed is handed back to the
    system (:func:`release_freed_memory`), at most once per this many seconds (0: never), so
    that the server's RSS follows the sessions in flight instead of the largest working set
    it ever had.
    """

    host: str = "127.0.0.1"
    port: int = 9002
    allow: list[Network] = field(default_factory=list)
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    http_token: str | None = field(default=None, repr=False)
    previews: int = 12
    chains_dir: Path = DEFAULT_CHAINS_DIR
    save_dir: Path | None = None
    phantoms_dir: Path | None = None
    store_dir: Path | None = None
    scheduler: bool = True
    scheduler_dir: Path | None = None
    sim_workers: int = 1
    gpu_slots: int = 1
    backend: str = "local"
    ray_address: str | None = None
    limits: Limits = field(default_factory=Limits)
    max_sessions: int = 16
    max_pending: int = 64
    max_per_peer: int = 8
    preamble_timeout_s: float = 30.0
    min_rate: float = 1024.0
    rate_window_s: float = 10.0
    send_timeout_s: float = 60.0
    max_session_bytes: int = 8 * 2**30
    queue_items: int = 256
    batch_items: int = 32
    batch_bytes: int = 4 * 2**20
    idle_timeout_s: float = 600.0
    grace_s: float = 600.0
    matrix_limits: MatrixLimits = field(default_factory=MatrixLimits)
    retention_days: float | None = None
    max_store_gb: float | None = None
    retention_interval_s: float = 3600.0
    trim_interval_s: float = 10.0
    dicom_dir: Path | None = None
    pacs: PacsTarget | None = None
    pacs_max_queue_bytes: int = 2 * 2**30
    pacs_max_queue_series: int = 1000

    def retention_policy(self) -> RetentionPolicy:
        """Return the retention policy of these settings (ValueError for bad values)."""
        return RetentionPolicy(retention_days=self.retention_days, max_store_gb=self.max_store_gb,
                               interval_s=self.retention_interval_s)  # fmt: skip


@dataclass
class _Preamble:
    """What a session sends before its data: chain choice, header, parameters."""

    config_name: str
    config_xml: str
    header_xml: str | None
    overrides: dict[str, Any]
    background: bool = False
    lenient: bool = False  # FIRE/OpenRecon parameters: keep only what the chain has
    header: Any = None  # the parsed header (checked against the matrix limits at arrival)


def _check_config(cfg: ServerConfig) -> None:
    """Raise ValueError naming the first setting of ``cfg`` that is out of range."""
    for name in ("max_sessions", "max_pending"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_per_peer < 0:
        raise ValueError(f"max_per_peer must be >= 0 (0: no limit), got {cfg.max_per_peer}")
    for name in ("preamble_timeout_s", "rate_window_s", "send_timeout_s", "idle_timeout_s"):
        value = getattr(cfg, name)
        if not (value > 0 and value != float("inf")):
            raise ValueError(f"{name} must be a finite number of seconds > 0, got {value}")
    if not (cfg.min_rate >= 0 and cfg.min_rate != float("inf")):
        raise ValueError(f"min_rate must be a finite number >= 0 (bytes/s), got {cfg.min_rate}")
    if not isinstance(cfg.matrix_limits, MatrixLimits):
        raise ValueError(f"matrix_limits must be a MatrixLimits, got {cfg.matrix_limits!r}")
    if not (cfg.trim_interval_s >= 0 and cfg.trim_interval_s != float("inf")):
        raise ValueError(
            f"trim_interval_s must be a finite number of seconds >= 0 (0: never), "
            f"got {cfg.trim_interval_s}"
        )
    cfg.retention_policy()  # names a bad retention_days, max_store_gb or interval_s
    if cfg.pacs is not None and cfg.store_dir is None:
        raise ValueError("pacs needs a store_dir (--store): the durable send queue lives there")
    if cfg.pacs_max_queue_bytes < 1 or cfg.pacs_max_queue_series < 1:
        raise ValueError(
            f"pacs_max_queue_bytes and pacs_max_queue_series must be >= 1, got "
            f"{cfg.pacs_max_queue_bytes}, {cfg.pacs_max_queue_series}"
        )


class SessionError(Exception):
    """A session's input is not acceptable (sent to the client as ``ERROR: …``)."""


class _OpenPaths:
    """The ``--save-dir`` files being written now (shared by the session threads).

    The retention timer reads them (:meth:`MrdServer._saving_paths`) and never deletes them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: set[Path] = set()

    def add(self, path: Path) -> None:
        with self._lock:
            self._paths.add(Path(path))

    def discard(self, path: Path) -> None:
        with self._lock:
            self._paths.discard(Path(path))

    def snapshot(self) -> list[Path]:
        with self._lock:
            return list(self._paths)


class MrdServer:
    """A threaded MRD streaming server.

    Parameters
    ----------
    config
        Host, port, chain folder, limits; see :class:`ServerConfig`.
    gpu_monitor
        The scheduler's :class:`scheduler.gpu.GpuMonitor` (default: one on NVML).

    Attributes
    ----------
    board
        The :class:`~gadgets.serve.status.StatusBoard` (status page, metrics).
    http
        The :class:`~gadgets.serve.status.StatusHttpServer` while it runs, else None.
    """

    def __init__(self, config: ServerConfig | None = None, gpu_monitor: Any = None) -> None:
        self.config = config or ServerConfig()
        self.gpu_monitor = gpu_monitor
        self.board = StatusBoard(self, previews=self.config.previews)
        self.http: StatusHttpServer | None = None
        self._listener: socket.socket | None = None
        self._accepting = threading.Event()
        self._sessions: dict[str, threading.Thread] = {}  # every connection's thread
        self._pending: dict[str, ReadPace] = {}  # waiting for their preamble, oldest first
        self._admitted: dict[str, str] = {}  # session id -> client address
        self._lock = threading.Lock()
        self.address: tuple[str, int] | None = None
        self.sessions_served = 0
        self.sessions_failed = 0
        self.store: Store | None = None
        self.scheduler: Any = None
        self._scheduler_tmp: Path | None = None
        self.retention: Any = None
        """The :class:`scheduler.retention.RetentionTimer` while it runs (a policy is set)."""
        self._saving = _OpenPaths()
        self._ended_since_trim = False  # a session ended since the last release_freed_memory
        self._trimmed = time.monotonic()
        self.memory_trims = 0
        """How often freed memory was handed back (``ServerConfig.trim_interval_s``)."""
        self.pacs: PacsSender | None = None
        """The PACS sender while it runs (``ServerConfig.pacs``)."""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Bind and start accepting in a background thread; return the bound address.

        Port 0 binds a free port (useful in tests); so does ``http_port`` 0 (see
        :attr:`http`'s ``address``).

        Raises
        ------
        AccessError
            The HTTP port would bind a non-loopback address without a token.
        ValueError
            A setting of :class:`ServerConfig` is out of range.
        """
        cfg = self.config
        _check_config(cfg)
        if not cfg.chains_dir.is_dir():
            raise FileNotFoundError(f"chain folder not found: {cfg.chains_dir}")
        if cfg.http_port is not None and cfg.http_token is None and not is_loopback(cfg.http_host):
            raise AccessError(
                f"the HTTP port binds {cfg.http_host}, not a loopback address: it needs a token "
                "(--http-token-file, or $MR0_HTTP_TOKEN)"
            )
        if cfg.save_dir is not None:
            private_dir(cfg.save_dir)  # 0700 whatever the umask (patient data)
        if cfg.dicom_dir is not None:
            private_dir(cfg.dicom_dir)
        if cfg.pacs is not None and self.pacs is None:
            assert cfg.store_dir is not None  # _check_config
            private_dir(cfg.store_dir)
            queue = PacsQueue(cfg.store_dir / "pacs", cfg.pacs,
                              max_entries=cfg.pacs_max_queue_series,
                              max_bytes=cfg.pacs_max_queue_bytes)  # fmt: skip
            self.pacs = PacsSender(queue)
            self.pacs.start()  # what a stopped server left queued goes out too
            log.info("PACS sender", extra={"event": "pacs", "target": str(cfg.pacs),
                                           "queued": len(queue.entries())})  # fmt: skip
        # Background jobs are the scheduler's durable jobs: with a store there is a scheduler
        # even under --no-scheduler (which keeps the sessions' own work in their threads).
        if (cfg.scheduler or cfg.store_dir is not None) and self.scheduler is None:
            self._start_scheduler()  # recovers its store: interrupted jobs are queued again
        if cfg.store_dir is not None and self.store is None:
            self.store = Store(cfg.store_dir, jobs=self.scheduler.store)
            self.store.recover()
        policy = cfg.retention_policy()
        if policy.active and self.retention is None:
            self.retention = retention_timer(
                policy, save_dir=cfg.save_dir, store=self.store,
                scheduler_store=self.scheduler.store if self.scheduler is not None else None,
                in_use=self._saving_paths,
            )  # fmt: skip
            report = self.retention.start()  # applied once now, then every interval
            log.info("retention", extra={"event": "retention_start",
                                         "retention_days": policy.retention_days,
                                         "max_store_gb": policy.max_store_gb,
                                         "deleted": len(report.deleted),
                                         "kept_bytes": report.kept_bytes})  # fmt: skip
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        sock.listen(64)
        sock.settimeout(0.2)  # so that the accept loop notices a shutdown
        self._listener = sock
        self.address = sock.getsockname()[:2]
        if not is_loopback(cfg.host) and not cfg.allow:
            log.warning("the MRD port is open to every client (no --allow list)",
                        extra={"event": "open_port", "host": cfg.host})  # fmt: skip
        self.board.watch_scheduler(self.scheduler)
        if cfg.http_port is not None and self.http is None:
            try:
                self.http = StatusHttpServer(self.board, cfg.http_host, cfg.http_port,
                                             cfg.http_token)  # fmt: skip
            except OSError:
                sock.close()
                raise
            self.http.start()
            log.info("status page", extra={"event": "http", "address": f"{self.http.address}",
                                           "token": cfg.http_token is not None})  # fmt: skip
        self._accepting.set()
        threading.Thread(target=self._accept_loop, name="mr0-accept", daemon=True).start()
        log.info("listening", extra={"event": "listen", "address": f"{self.address}"})
        return self.address

    def _start_scheduler(self) -> None:
        """Start the in-process scheduler (simulations run as its jobs, in worker processes)."""
        import tempfile

        from scheduler.service import Scheduler

        cfg = self.config
        root = cfg.scheduler_dir
        if root is None and cfg.store_dir is not None:
            root = cfg.store_dir / "scheduler"
        if root is None:
            self._scheduler_tmp = root = Path(tempfile.mkdtemp(prefix="mr0-scheduler-"))
        self.scheduler = Scheduler(root, monitor=self.gpu_monitor, gpu_slots=cfg.gpu_slots,
                                   cpu_workers=cfg.sim_workers, backend=cfg.backend,
                                   ray_address=cfg.ray_address,
                                   function_modules=SCHEDULER_FUNCTION_MODULES)  # fmt: skip
        self.scheduler.start()
        log.info("scheduler started", extra={"event": "scheduler", "root": str(root)})

    def _saving_paths(self) -> list[Path]:
        """Return the ``--save-dir`` files sessions are writing now (retention keeps them)."""
        return self._saving.snapshot()

    def serve_forever(self) -> None:
        """Start (if needed) and block until :meth:`shutdown` has finished."""
        if self._listener is None:
            self.start()
        while self._accepting.is_set() or self.active_sessions():
            time.sleep(0.2)

    def shutdown(self, grace_s: float | None = None) -> None:
        """Stop accepting; wait up to ``grace_s`` for the sessions in flight to finish.

        Connections still waiting for their config and header are ended at once (``ERROR``).
        """
        self._accepting.clear()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:  # cancel under the lock: a pace leaves the pool before it is closed
            for pace in self._pending.values():
                pace.cancel("the server is shutting down")
        deadline = time.monotonic() + (self.config.grace_s if grace_s is None else grace_s)
        for thread in list(self._sessions.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        left = self.active_sessions()
        if self.retention is not None:
            self.retention.stop()
            self.retention = None
        if self.scheduler is not None:
            self.scheduler.stop(max(1.0, deadline - time.monotonic()))
            self.scheduler = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.pacs is not None:
            self.pacs.stop()  # what is not delivered stays queued on disk
            self.pacs = None
        self.board.close()
        if self._scheduler_tmp is not None:
            shutil.rmtree(self._scheduler_tmp, ignore_errors=True)
        log.info("stopped", extra={"event": "stop", "unfinished_sessions": left})

    def active_sessions(self) -> int:
        """Count the connections in flight: admitted sessions and those still pending."""
        with self._lock:
            return len(self._sessions)

    def admitted_sessions(self) -> int:
        """Count the sessions holding a slot (their config and header have arrived)."""
        with self._lock:
            return len(self._admitted)

    def pending_connections(self) -> int:
        """Count the connections waiting for their config and header (holding no slot)."""
        with self._lock:
            return len(self._pending)

    # -- connections ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while self._accepting.is_set():
            self._trim_if_due()
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break  # closed by shutdown
            if not allowed(str(peer[0]), self.config.allow):
                self.board.refused.labels("allowlist").inc()
                log.warning("client not on the allow-list",
                            extra={"event": "reject", "peer": f"{peer[0]}"})  # fmt: skip
                _refuse(conn, f"ERROR: client address {peer[0]} is not allowed")
                continue
            try:
                self._open(conn, peer)
            except Exception:  # e.g. no thread or descriptor left: this connection only
                log.exception("could not open a session", extra={"event": "crash"})
                _refuse(conn, "ERROR: the server could not open a session")

    def _trim_if_due(self) -> bool:
        """Hand freed memory back to the system if sessions ended and the interval has passed.

        Called by the accept loop (every 0.2 s at most while idle); returns whether it trimmed.
        """
        interval = self.config.trim_interval_s
        now = time.monotonic()
        if not (interval and self._ended_since_trim and now - self._trimmed >= interval):
            return False
        self._ended_since_trim = False
        self._trimmed = now
        release_freed_memory()
        self.memory_trims += 1
        return True

    def _open(self, conn: socket.socket, peer: Any) -> None:
        """Give a new connection its thread, in the pending pool (evicting its oldest)."""
        cfg = self.config
        sid = uuid.uuid4().hex[:12]
        pace = ReadPace(idle_s=cfg.idle_timeout_s, min_rate=cfg.min_rate,
                        window_s=cfg.rate_window_s)  # fmt: skip
        pace.set_deadline(cfg.preamble_timeout_s, "the config and header")
        thread = threading.Thread(target=self._run_session, args=(conn, peer, sid, pace),
                                  name=f"mr0-{sid}", daemon=True)  # fmt: skip
        with self._lock:  # cancel under the lock: a pace leaves the pool before it is closed
            while len(self._pending) >= cfg.max_pending:
                self._pending.pop(next(iter(self._pending))).cancel(
                    f"evicted: {cfg.max_pending} connections were waiting for their config and "
                    "header, and this one had waited longest"
                )
                self.board.refused.labels("evicted").inc()
            self._pending[sid] = pace
            self._sessions[sid] = thread
        try:
            thread.start()
        except BaseException:
            with self._lock:
                self._pending.pop(sid, None)
                self._sessions.pop(sid, None)
            pace.close()
            raise

    def _admit(self, sid: str, host: str, pace: ReadPace) -> None:
        """Move a connection whose preamble has arrived from the pending pool to a slot.

        Raises
        ------
        SessionError
            All slots are taken, or the client address holds its share.
        SlowPeerError
            The connection was evicted from the pending pool in the meantime.
        """
        cfg = self.config
        with self._lock:
            if self._pending.pop(sid, None) is None:
                raise SlowPeerError(pace.cancelled or "evicted from the pending pool", "cancelled")
            if len(self._admitted) >= cfg.max_sessions:
                reason = "busy"
                text = f"server busy ({cfg.max_sessions} sessions)"
            elif cfg.max_per_peer and (
                sum(1 for h in self._admitted.values() if h == host) >= cfg.max_per_peer
            ):
                reason = "per_peer"
                text = f"server busy (client address {host} has {cfg.max_per_peer} sessions)"
            else:
                self._admitted[sid] = host
                pace.clear_deadline()
                return
        self.board.refused.labels(reason).inc()
        log.warning("busy", extra={"event": "reject", "peer": host, "reason": reason})
        raise SessionError(text)

    def _run_session(self, conn: socket.socket, peer: Any, sid: str, pace: ReadPace) -> None:
        extra = {"session": sid, "peer": f"{peer[0]}:{peer[1]}"}
        started = time.monotonic()
        self.board.session_opened(sid, extra["peer"])
        outcome = "crash"
        session: Session | None = None
        try:
            session = Session(self.config, conn, sid, extra, self.store,
                              self.scheduler if self.config.scheduler else None, self.board,
                              pace=pace, jobs=self.scheduler,
                              admit=lambda: self._admit(sid, str(peer[0]), pace),
                              saving=self._saving, pacs=self.pacs)  # fmt: skip
            session.run()
            outcome = "crash" if session.crashed else "error" if session.failed.is_set() else "ok"
            self.sessions_served += 1
        except Exception as exc:  # a bug in a session never ends the server
            self.sessions_failed += 1
            log.exception("session crashed", extra={**extra, "event": "crash"})
            if session is not None:
                session.error(_describe(exc))
            else:
                with contextlib.suppress(OSError):
                    conn.settimeout(2)
                    writer = MessageWriter(conn)
                    writer.write_text(f"ERROR: {_describe(exc)}")
                    writer.write_close()
        finally:
            self.board.session_closed(sid, outcome)
            with self._lock:
                self._pending.pop(sid, None)
                self._admitted.pop(sid, None)
            if outcome != "ok":
                _close_gently(conn)
            with contextlib.suppress(OSError):
                conn.close()
            pace.close()
            with self._lock:
                self._sessions.pop(sid, None)
            self._ended_since_trim = True
            log.info(
                "session closed",
                extra={**extra, "event": "closed", "seconds": round(time.monotonic() - started, 3)},
            )


def _close_gently(conn: socket.socket) -> None:
    """Half-close, then read and drop what the client still sends (bounded) before the close.

    Closing a socket with unread input resets the connection, and the reset can destroy the
    answer (``ERROR: …``) before the client has read it. The drain ends at the client's end
    of stream, after ``_DRAIN_BYTES`` or ``_DRAIN_S``, or once the client has been quiet for
    ``_DRAIN_QUIET_S``; at most 32 connections drain at once (the others close at once).
    """
    if not _DRAINING.acquire(blocking=False):
        return
    try:
        conn.shutdown(socket.SHUT_WR)
        left, deadline = _DRAIN_BYTES, time.monotonic() + _DRAIN_S
        while left > 0:
            wait = min(_DRAIN_QUIET_S, deadline - time.monotonic())
            if wait <= 0:
                break
            conn.settimeout(wait)
            chunk = conn.recv(min(left, 65536))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:  # quiet for long enough, or the client is gone
        pass
    finally:
        _DRAINING.release()


_LINGER = threading.BoundedSemaphore(16)  # refused connections drained at once


def _refuse(conn: socket.socket, text: str) -> None:
    """Answer ``text`` and a close, and hang up without waiting on the accept loop.

    Closing a socket with unread input resets the connection, and the reset can destroy the
    answer before the client reads it. So the input is drained (up to 1 MiB, 2 s) on a short
    thread first, when fewer than 16 such threads run; otherwise it is closed at once.
    """
    try:
        conn.settimeout(2)
        writer = MessageWriter(conn)
        writer.write_text(text)
        writer.write_close()
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        conn.close()
        return
    if not _LINGER.acquire(blocking=False):
        conn.close()
        return

    def drain() -> None:
        try:
            left, deadline = 2**20, time.monotonic() + 2
            while left > 0 and time.monotonic() < deadline:
                chunk = conn.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass
        finally:
            conn.close()
            _LINGER.release()

    threading.Thread(target=drain, name="mr0-refuse", daemon=True).start()


class Session:
    """One connection: read, run the chain on a compute thread, answer.

    ``pace`` holds the reading to its time bounds (a fresh one, with the preamble deadline, by
    default); ``admit`` is called once the config and header are in, and raises to refuse the
    session (no slot left). ``saving`` holds the ``--save-dir`` files being written (the
    session's is in it while it writes).
    """

    def __init__(
        self,
        config: ServerConfig,
        conn: socket.socket,
        sid: str,
        extra: dict[str, str],
        store: Store | None = None,
        scheduler: Any = None,
        board: StatusBoard | None = None,
        pace: ReadPace | None = None,
        admit: Any = None,
        saving: _OpenPaths | None = None,
        pacs: PacsSender | None = None,
        jobs: Any = None,
    ) -> None:
        self.config = config
        self.pacs = pacs
        self._saving = saving
        self._saver_path: Path | None = None
        if pace is None:
            pace = ReadPace(idle_s=config.idle_timeout_s, min_rate=config.min_rate,
                            window_s=config.rate_window_s)  # fmt: skip
            pace.set_deadline(config.preamble_timeout_s, "the config and header")
        self.pace = pace
        self._admit = admit
        self.board = board
        self._counted_in = 0  # bytes received and sent already added to the board
        self._counted_out = 0
        self.store = store
        self.scheduler = scheduler
        self.jobs = jobs if jobs is not None else scheduler
        self.conn = conn
        self.sid = sid
        self.extra = extra
        self.reader = MessageReader(conn, config.limits, on_wait=self.hand_over, pace=pace)
        # output is gathered up to 256 KiB and flushed whenever the chain waits for input; the
        # arrays of yielded items are sent by reference (see Gadget: yielded means handed on).
        # The socket's timeout bounds each wait for the client to take data (reading waits
        # are bounded by the pace instead).
        conn.settimeout(config.send_timeout_s)
        send_rate = RateWindow(config.min_rate, config.rate_window_s)
        self.writer = MessageWriter(conn, buffer_size=2**20, keep_arrays=True,
                                    send_rate=send_rate)  # fmt: skip
        self._write_lock = threading.Lock()
        self._closed = False
        # the queue holds batches (lists of items), or _END / _ABORT
        self.items: queue.Queue[Any] = queue.Queue(
            maxsize=max(1, config.queue_items // max(1, config.batch_items))
        )
        self._batch: list[Any] = []
        self._batch_bytes = 0
        self.failed = threading.Event()
        self.crashed = False  # failed by a bug (an unexpected exception), not by its input
        self.bytes_in = 0
        self.saver: Any = None
        self.worker: threading.Thread | None = None
        self.preamble: _Preamble | None = None
        self._takes_images: bool | None = None  # whether the chain takes client images
        self._client_images: weakref.WeakValueDictionary[int, Any] = (
            weakref.WeakValueDictionary()
        )  # images the client sent, by id(): never shown as the server's previews
        self._nonfinite = 0

    # -- replies --------------------------------------------------------------------------------

    def send(self, item: Any) -> None:
        with self._write_lock:
            if not self._closed:
                self.writer.write(item)

    def flush(self) -> None:
        with self._write_lock:
            if not self._closed:
                self.writer.flush()
            self._count_sent()

    def _count_sent(self) -> None:
        """Add the bytes written since the last call to the board (write lock held)."""
        if self.board is not None and self.writer.bytes_written > self._counted_out:
            self.board.count_bytes(sent=self.writer.bytes_written - self._counted_out)
            self._counted_out = self.writer.bytes_written

    def _count_received(self) -> None:
        """Add the bytes read since the last call to the board (reader thread)."""
        if self.board is not None and self.bytes_in > self._counted_in:
            self.board.count_bytes(received=self.bytes_in - self._counted_in)
            self._counted_in = self.bytes_in

    def error(self, text: str) -> None:
        """Send ``ERROR: text`` and a close (once); later output is dropped.

        Nothing is sent when sending has failed already (a client that does not read is not
        waited on twice).
        """
        self.failed.set()
        log.warning(text, extra={**self.extra, "event": "error"})
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            if self.writer.broken is None:
                with contextlib.suppress(OSError, ProtocolError):
                    self.writer.write_text(f"ERROR: {text}")
                    self.writer.write_close()
                    self.writer.flush()
            self._count_sent()

    def fail(self, exc: BaseException) -> None:
        """Report ``exc`` as ``ERROR: …``; log an unexpected one (a bug) with its traceback."""
        if not isinstance(exc, _EXPECTED):
            self.crashed = True
            log.error("session failed", exc_info=exc, extra={**self.extra, "event": "crash"})
        if isinstance(exc, SlowPeerError) and self.board is not None:
            self.board.slow_peers.labels(exc.bound).inc()
        self.error(_describe(exc))

    def warn(self, text: str) -> None:
        """Send ``WARNING: text`` to the client (among the chain's output)."""
        log.warning(text, extra={**self.extra, "event": "warning"})
        with contextlib.suppress(OSError, ProtocolError):
            self.send(Text(f"WARNING: {text}"))

    def close(self) -> None:
        with self._write_lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(OSError):
                    self.writer.write_close()
                    self.writer.flush()
                self._count_sent()

    # -- input ----------------------------------------------------------------------------------

    def read(self) -> Message:
        msg = self.reader.read()
        self.bytes_in += msg.nbytes
        if self.bytes_in > self.config.max_session_bytes:
            raise SessionError(
                f"the session exceeds {self.config.max_session_bytes} bytes "
                "(server max_session_bytes)"
            )
        return msg

    def run(self) -> None:
        """Serve the session; every failure ends as ``ERROR: …`` and a close, never a raise."""
        # numpy's error state is per thread: the reader's checks of hostile samples
        # (_all_finite) overflow without a warning
        with np.errstate(over="ignore", invalid="ignore"):
            self._run()

    def _run(self) -> None:
        log.info("session opened", extra={**self.extra, "event": "open"})
        try:
            preamble, first = self.read_preamble()
        except Exception as exc:
            self._count_received()
            self.fail(exc)
            self.reader.close()
            self._close_saver()
            return
        self.preamble = preamble
        self.worker = threading.Thread(
            target=self.compute, args=(preamble,), name=f"mr0-{self.sid}-compute", daemon=True
        )
        self.worker.start()
        try:
            if first.id != MessageId.CLOSE:
                self.add(self.item(first), first.nbytes)
                self.pump()
            self.hand_over()
            self.put(_END)
        except Exception as exc:
            if not self.failed.is_set():
                self.fail(exc)
            if self.scheduler is not None:  # its calls are waited for by nobody now
                self.scheduler.cancel_session(self.sid)
            self.put(_ABORT)
        finally:
            self._count_received()
            self.worker.join()
            self.reader.close()
            self._close_saver()

    def read_preamble(self) -> tuple[_Preamble, Message]:
        """Read the config, header and parameters; check the config name.

        Returns them and the first message after them. Parsing the header and building the
        chain are left to the compute thread, so that reading goes on meanwhile.
        """
        first = self.read()
        # a config name without a chain (FIRE parameters may choose one): its error's message,
        # not the error, which would hold this frame through its traceback (a reference cycle
        # that keeps the session until the garbage collector's next full pass)
        unknown: str | None = None
        config_xml: str | None = None
        if first.id == MessageId.CONFIG_FILE:
            config_name = str(first.value)
            try:
                config_xml = chain_text(config_name, self.config.chains_dir)
            except ChainError as exc:
                unknown = str(exc)
        elif first.id == MessageId.CONFIG_TEXT:
            config_name, config_xml = "config-text", str(first.value)
        else:
            raise SessionError(f"expected a config message (id 1 or 2) first, got {first.id.name}")
        overrides: dict[str, Any] = {}
        lenient = False

        def parameters(text: str) -> None:
            nonlocal config_name, config_xml, lenient
            values = _parameters(text)
            fire = values.get("parameters")
            if isinstance(fire, dict):  # {"version": ..., "parameters": {"config": ...}}
                values = dict(fire)
                lenient = True
                custom, named = values.pop("customconfig", ""), values.pop("config", "")
                choice = custom or named
                if choice:
                    if not isinstance(choice, str):
                        raise SessionError(
                            f"parameters.config must be a chain name, got {choice!r}"
                        )
                    config_name = choice
                    config_xml = chain_text(choice, self.config.chains_dir)
            overrides.update(values)

        def chosen() -> tuple[str, str]:
            if config_xml is None:
                assert unknown is not None
                raise ChainError(unknown)
            if self.board is not None:
                self.board.session_config(self.sid, config_name)
            return config_name, config_xml

        header_xml: str | None = None
        try:
            while header_xml is None:
                msg = self.read()
                if msg.id == MessageId.HEADER:
                    header_xml = str(msg.value)
                elif msg.id == MessageId.TEXT:
                    parameters(str(msg.value))
                elif msg.id == MessageId.CLOSE:
                    # no header and no data: a job described by its parameters (mr0_preview)
                    name, xml = chosen()
                    self.admit()
                    return self._preamble(name, xml, None, overrides, lenient), msg
                else:
                    raise SessionError(f"{msg.id.name.lower()} before the ISMRMRD header")
            self.admit()  # the preamble is in: take a session slot (or be refused)
            header = self.check_header(header_xml)  # before any acquisition is buffered
            # a JSON object right after the header is a parameter set, too
            msg = self.read()
            if msg.id == MessageId.TEXT and _is_json_object(str(msg.value)):
                parameters(str(msg.value))
                msg = self.read()
        except (EOFError, OSError):
            if unknown is not None and config_xml is None:
                raise ChainError(unknown) from None  # the first problem, not the hang-up
            raise
        name, xml = chosen()
        if self.config.save_dir is not None:
            stamp = time.strftime("%Y%m%dT%H%M%S")
            path = self.config.save_dir / f"{stamp}_{self.sid}.h5"
            if self._saving is not None:
                self._saving.add(path)  # before the file exists: retention never takes it
            self._saver_path = path
            self.saver = SessionWriter(path)
            self.saver.write_header(header_xml)
        pre = self._preamble(name, xml, header_xml, overrides, lenient)
        pre.header = header
        return pre, msg

    def check_header(self, xml: str) -> Any:
        """Parse the ISMRMRD header; refuse matrices over ``config.matrix_limits``.

        Runs when the header arrives, before any acquisition is buffered, so a header asking
        the recon for a huge grid (issue 21: 512 x 512 x 128 in a 3 kB header) is answered
        ``ERROR`` at once. The header's ``receiverChannels`` count as the coils (the recon
        checks again with the data's own). A header without an encoding or without positive
        matrices asks for nothing here; a chain that needs them reports it.

        Raises
        ------
        SessionError
            The header does not parse, or a matrix exceeds the limits (the message names the
            field, its value and the limit).
        """
        try:
            header = parse_session_header(xml)
        except GadgetError as exc:
            raise SessionError(str(exc)) from None
        if header is None:
            raise SessionError("the ISMRMRD header does not parse: it is empty")
        for coils in (None, 1):  # None: the header's receiverChannels; below 1, one coil
            try:
                check_matrix(header, coils, limits=self.config.matrix_limits,
                             where="the ISMRMRD header")  # fmt: skip
            except MrdHeaderError as exc:
                raise SessionError(str(exc)) from None
            except MrdFormatError:
                break  # no encoding or no positive matrix: nothing to allocate from
            except ValueError:
                continue  # receiverChannels below 1
            break
        return header

    def _close_saver(self) -> None:
        """Close the ``--save-dir`` file (if any) and let retention see it again."""
        if self.saver is not None:
            with contextlib.suppress(Exception):
                self.saver.close()
        if self._saving is not None and self._saver_path is not None:
            self._saving.discard(self._saver_path)

    def admit(self) -> None:
        """Take a session slot now that the config and header are in (see ``admit``)."""
        if self._admit is not None:
            self._admit()
        else:
            self.pace.clear_deadline()

    def _preamble(
        self,
        name: str,
        xml: str,
        header_xml: str | None,
        overrides: dict[str, Any],
        lenient: bool = False,
    ) -> _Preamble:
        """Take the session keys (``background``) out of the chain overrides."""
        background = overrides.pop("background", False)
        if not isinstance(background, bool):
            raise SessionError(f"'background' must be true or false, got {background!r}")
        if background and (self.store is None or self.jobs is None):
            raise SessionError("background jobs need the server's job store (mr0-server --store)")
        return _Preamble(name, xml, header_xml, overrides, background, lenient)

    def build_chain(self, pre: _Preamble) -> Chain:
        """Parse the header and open the chain (on the compute thread; :func:`open_chain`)."""
        header = pre.header
        if header is None and pre.header_xml is not None:
            header = self.check_header(pre.header_xml)
        spec = parse_chain(pre.config_xml)
        if pre.lenient:
            pre.overrides, dropped = applicable_overrides(spec, pre.overrides)
            if dropped:
                log.info("parameters the chain has no property for were left out",
                         extra={**self.extra, "event": "parameters_dropped",
                                "config": pre.config_name, "keys": sorted(dropped)})  # fmt: skip
        services = Services(
            save_dir=self.config.save_dir, phantoms_dir=self.config.phantoms_dir,
            chains_dir=self.config.chains_dir, store=self.store, scheduler=self.scheduler,
        )  # fmt: skip
        chain = open_chain(spec, pre.header_xml or "", pre.overrides, services,
                           session_id=self.sid, header=header)  # fmt: skip
        log.info(
            "chain ready",
            extra={**self.extra, "event": "chain", "config": pre.config_name,
                   "parameters": sorted(pre.overrides)},
        )  # fmt: skip
        return chain

    def item(self, msg: Message) -> Any:
        """Check a data message and return the item it holds for the chain."""
        value = msg.value
        if msg.id == MessageId.ACQUISITION:
            acq: ismrmrd.Acquisition = value
            if not (_all_finite(acq.data) and _all_finite(acq.traj)):
                self.nonfinite("acquisition", f"acquisition {acq.scan_counter} (scan_counter)")
        elif msg.id == MessageId.IMAGE:
            if not self.takes_images():
                name = self.preamble.config_name if self.preamble is not None else "?"
                raise SessionError(
                    f"chain {name!r} does not take images from the client (chains that do: "
                    f"{', '.join(_image_chains(self.config.chains_dir)) or 'none'})"
                )
            img: ismrmrd.Image = value
            self._client_images[id(img)] = img
            if img.data.dtype.kind in "fc" and not _all_finite(img.data):
                self.nonfinite("image", f"image {img.image_index} of series "
                               f"{img.image_series_index}")  # fmt: skip
        elif msg.id == MessageId.TEXT:
            return Text(str(value))
        elif msg.id != MessageId.WAVEFORM:  # waveforms are integers: always finite
            raise SessionError(f"unexpected {msg.id.name.lower()} message after the header")
        if self.saver is not None:
            self.saver.add(value)
        return value

    def takes_images(self) -> bool:
        """Whether the session's chain takes images from the client (every gadget does)."""
        if self._takes_images is None:
            try:
                spec = parse_chain(self.preamble.config_xml) if self.preamble else None
            except ChainError:
                spec = None  # the compute thread reports it
            self._takes_images = spec is not None and chain_takes_images(spec)
        return self._takes_images

    def nonfinite(self, kind: str, what: str) -> None:
        """Count an item with NaN or Inf samples; warn the client about the first one."""
        self._nonfinite += 1
        if self.board is not None:
            self.board.nonfinite.labels(kind).inc()
        if self._nonfinite == 1:
            self.warn(
                f"{what} holds NaN or Inf samples; what is made from it will not be finite "
                "(further such items are counted in mr0_mrd_nonfinite_items_total, not "
                "reported again)"
            )

    def pump(self) -> None:
        """Read data messages until the close."""
        while not self.failed.is_set():
            msg = self.read()
            if msg.id == MessageId.CLOSE:
                return
            self.add(self.item(msg), msg.nbytes)

    def add(self, item: Any, nbytes: int) -> None:
        """Add an item to the batch; hand the batch over when it is full."""
        self._batch.append(item)
        self._batch_bytes += nbytes
        if len(self._batch) >= self.config.batch_items or (
            self._batch_bytes >= self.config.batch_bytes
        ):
            self.hand_over()

    def hand_over(self) -> None:
        """Queue the batch for the chain (called also when the reader is about to wait)."""
        self._count_received()
        if self._batch:
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self.put(batch)

    def put(self, item: Any) -> None:
        """Queue a batch or a sentinel for the chain; give up if the chain has failed.

        Time spent waiting here (the chain is busy) is not counted against the client.
        """
        try:
            self.items.put_nowait(item)
            return
        except queue.Full:
            pass
        waited = time.monotonic()
        try:
            while True:
                if self.failed.is_set() and (
                    item is not _ABORT or self.worker is None or not self.worker.is_alive()
                ):
                    return
                try:
                    self.items.put(item, timeout=0.2)
                    return
                except queue.Full:
                    continue
        finally:
            self.pace.paused(time.monotonic() - waited)

    # -- compute --------------------------------------------------------------------------------

    def inputs(self) -> Iterator[Any]:
        flushed = time.monotonic()
        while True:
            if self.items.empty():
                self.flush()  # the chain is about to wait: what it produced goes out now
                flushed = time.monotonic()
            batch = self.items.get()
            if batch is _END:
                return
            if batch is _ABORT:
                raise _Aborted
            for item in batch:
                yield item
                if time.monotonic() - flushed > _FLUSH_S:  # a slow chain: keep output flowing
                    self.flush()
                    flushed = time.monotonic()

    def compute(self, preamble: _Preamble) -> None:
        count = 0
        try:
            chain = self.build_chain(preamble)
            if preamble.background:
                self.store_job(preamble, chain)
                return
            board = self.board
            client_images = self._client_images
            dicom = self._dicom_output(chain)
            for out in chain.run(self.inputs()):
                self.send(out)
                count += 1
                if type(out) is ismrmrd.Image and client_images.get(id(out)) is not out:
                    # only images the server made
                    if board is not None:
                        board.add_preview(self.sid, preamble.config_name, out)
                    if dicom is not None:
                        dicom.add(out)
                if isinstance(out, Text):  # progress and reports go out at once
                    self.flush()
            if dicom is not None:  # written here, sent to the PACS by its own thread
                for line in dicom.finish():
                    self.send(Text(line))
            self.close()
            log.info("session done", extra={**self.extra, "event": "done", "items_out": count})
        except _Aborted:
            pass
        except Exception as exc:  # a gadget error or bug: report it, keep the server
            if not isinstance(
                exc,
                ValueError | RuntimeError | ChainError | GadgetError | ProtocolError | SessionError,
            ):
                self.crashed = True
                log.exception("chain failed", extra={**self.extra, "event": "chain_crash"})
            elif isinstance(exc, SlowPeerError) and self.board is not None:
                self.board.slow_peers.labels(exc.bound).inc()
            self.error(_describe(exc))
            # wake the reader, which may be waiting for data that will not be used
            self.pace.cancel("the session failed")
            _drain(self.items)

    def _dicom_output(self, chain: Chain) -> SessionDicom | None:
        """Return the session's DICOM output (``--dicom-dir`` / ``--pacs``), or None."""
        cfg = self.config
        if cfg.dicom_dir is None and self.pacs is None:
            return None
        staging = cfg.store_dir / "pacs_incoming" if cfg.store_dir is not None else None
        return SessionDicom(self.sid, chain.context.header, cfg.dicom_dir, self.pacs, staging)

    def store_job(self, pre: _Preamble, chain: Chain) -> None:
        """Store the session's input as a scheduler job, queue it, answer with its id.

        The input is written into a staging folder of the scheduler's store while it arrives
        (:meth:`scheduler.store.JobStore.stage_input`) and becomes the job's input when the
        session is complete; a session that fails, or a server stopped meanwhile, leaves no
        job (the staging folder goes now, or at the next start).
        """
        if self.jobs is None:
            raise SessionError("background jobs need the server's job store (mr0-server --store)")
        cfg = self.config
        patient, protocol, mid = header_identity(chain.context.header)
        staged = self.jobs.store.stage_input()
        try:
            session = {"config_xml": pre.config_xml, "header_xml": pre.header_xml or "",
                       "parameters": pre.overrides}  # fmt: skip
            write_private(staged / SESSION_JSON, json.dumps(session).encode())
            with SessionWriter(staged / SESSION_INPUT) as writer:
                if pre.header_xml:
                    writer.write_header(pre.header_xml)
                for item in self.inputs():
                    if not isinstance(item, Text):
                        writer.add(item)
            params = {
                "config": pre.config_name, "patient": patient, "protocol": protocol,
                "measurement_id": mid,
                **{key: None if folder is None else str(folder.resolve())
                   for key, folder in (("store_dir", cfg.store_dir), ("save_dir", cfg.save_dir),
                                       ("phantoms_dir", cfg.phantoms_dir),
                                       ("chains_dir", cfg.chains_dir))},
            }  # fmt: skip
            # The chain runs in a worker, where the scheduler places it. estimate 0: there is
            # no memory model of a whole chain yet (scheduler.estimate), so it takes a slot.
            job_id = self.jobs.submit(MRD_SESSION, params, JobKind.BATCH, estimate_bytes=0,
                                      job_id=new_job_id(), inputs=staged)  # fmt: skip
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        self.send(Text(json.dumps({"job": job_id, "state": "queued"})))
        self.close()
        log.info("job queued", extra={**self.extra, "event": "job_queued", "job": job_id,
                                      "config": pre.config_name})  # fmt: skip


class _Aborted(BaseException):
    """The input failed: unwinds the chain's generators.

    Not an ``Exception``, so that gadgets and the chain's guard do not report it as their error.
    """


def _drain(q: queue.Queue[Any]) -> None:
    with contextlib.suppress(queue.Empty):
        while True:
            q.get_nowait()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the connection closed before the session's close message"
    if isinstance(exc, TimeoutError):
        return "the connection was idle for too long"
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, ProtocolError | SessionError | ChainError | GadgetError) else (
        f"{type(exc).__name__}: {text}"
    )  # fmt: skip


_EXPECTED = (ProtocolError, SessionError, ChainError, GadgetError, EOFError, OSError)
"""Session failures that are the input's or the network's doing (not logged as bugs)."""


def _all_finite(array: np.ndarray) -> bool:
    """Whether a float or complex array holds no NaN and no Inf.

    A BLAS dot product of the samples with themselves (a few µs for 16k samples, no temporary
    array) is finite exactly when they all are, unless it overflows (samples over 1e19); only
    then is every sample checked. The caller silences numpy's overflow warning
    (:meth:`Session.run` does, for its thread).
    """
    if not array.size:
        return True
    flat = array.reshape(-1)
    real = _REAL_VIEW.get(flat.dtype)
    if real is not None:
        flat = flat.view(real)
    if math.isfinite(flat.dot(flat)):
        return True
    return bool(np.isfinite(array).all())


_REAL_VIEW: dict[np.dtype, np.dtype] = {np.dtype(np.complex64): np.dtype(np.float32),
              np.dtype(np.complex128): np.dtype(np.float64)}  # fmt: skip


def _image_chains(chains_dir: Path) -> list[str]:
    """Names of the chains that take client images (for error messages)."""
    names = []
    for name in available_chains(chains_dir):
        try:
            if chain_takes_images(parse_chain(chain_text(name, chains_dir))):
                names.append(name)
        except ChainError:
            continue
    return names


def _is_json_object(text: str) -> bool:
    return text.lstrip().startswith("{")


# a JSON string, or an unterminated one to the end of the text: every quote that starts a match
# ends it, so the search is linear (possessive repeats keep no backtracking state)
_JSON_STRING = re.compile(r'"[^"\\]*+(?:\\[\s\S][^"\\]*+)*+(?:"|\\?\Z)')
_DEPTH_CHUNK = 1 << 20  # characters per step of the depth count (bounds its memory)
_OPEN = np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_OPEN[[ord("]"), ord("}")]] = -1


class _JsonBoundError(ValueError):
    """A JSON text breaks a bound (:data:`MAX_JSON_DEPTH`, :data:`MAX_JSON_NUMBER_CHARS`)."""


def json_depth(text: str) -> int:
    """Return the deepest nesting of arrays and objects in a JSON text, without parsing it.

    Brackets inside strings are not counted. Linear time (about 0.1 s for 16 MiB of
    brackets), memory in steps of :data:`_DEPTH_CHUNK`, no recursion.

    Parameters
    ----------
    text
        The JSON text (need not be valid; the depth of valid JSON is exact).
    """
    bare = np.frombuffer(_JSON_STRING.sub("", text).encode("utf-8", errors="replace"), np.uint8)
    level = peak = 0
    for start in range(0, bare.size, _DEPTH_CHUNK):
        levels = np.cumsum(_OPEN[bare[start : start + _DEPTH_CHUNK]], dtype=np.int64)
        peak = max(peak, level + int(levels.max()))
        level += int(levels[-1])
    return peak


def _json_int(literal: str) -> int:
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise _JsonBoundError(
            f"a number of {len(literal)} characters (the limit is {MAX_JSON_NUMBER_CHARS})"
        )
    return int(literal)


def _json_float(literal: str) -> float:
    if len(literal) > MAX_JSON_NUMBER_CHARS:
        raise _JsonBoundError(
            f"a number of {len(literal)} characters (the limit is {MAX_JSON_NUMBER_CHARS})"
        )
    value = float(literal)
    if not math.isfinite(value):
        raise _JsonBoundError(f"the number {literal} is out of range")
    return value


def _json_constant(name: str) -> float:
    raise _JsonBoundError(f"{name} is not a number JSON allows")


def parse_json(text: str) -> Any:
    """Parse a JSON text from a client, within bounds.

    Raises
    ------
    SessionError
        Not valid JSON, nested deeper than :data:`MAX_JSON_DEPTH`, a number literal longer
        than :data:`MAX_JSON_NUMBER_CHARS`, a number out of range, or NaN/Infinity.
    """
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise SessionError(
            f"the parameter text is nested {depth} levels deep (the limit is {MAX_JSON_DEPTH})"
        )
    try:
        return json.loads(text, parse_int=_json_int, parse_float=_json_float,
                          parse_constant=_json_constant)  # fmt: skip
    except _JsonBoundError as exc:
        raise SessionError(f"the parameter text holds {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise SessionError(f"the parameter text is not valid JSON: {exc}") from None


def _parameters(text: str) -> dict[str, Any]:
    """Parse a JSON parameter object (FIRE's ``parameters``); other text is not parameters."""
    if not _is_json_object(text):
        raise SessionError("a text message before the header must be a JSON object of parameters")
    value = parse_json(text)
    if not isinstance(value, dict):
        raise SessionError("the parameters must be a JSON object")
    return value


# -- command line -------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per log record, with the record's extra fields (session, peer, event…)."""

    _SKIP = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Log to stderr, as JSON lines (default) or as plain text."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("mr0")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters


def keep_freed_memory(
    mmap_threshold: int = 32 * 2**20, trim_threshold: int = 256 * 2**20, arenas: int = 2
) -> bool:
    """Have glibc keep freed memory for reuse instead of returning it to the system at once.

    Every acquisition's samples are a fresh array. By default glibc hands the memory of a
    drained queue back to the kernel and takes it again a moment later, and the page faults of
    touching it anew cost more than parsing the message (a third of the passthrough time in
    ``scripts/bench_server.py``). With this, allocations under ``mmap_threshold`` come from the
    heap and up to ``trim_threshold`` bytes of freed heap stay mapped. Process-wide, so only the
    ``mr0-server`` command calls it, not :class:`MrdServer`.

    Kept memory is kept per malloc arena, and glibc gives threads up to 8 arenas per core:
    the sessions' threads spread over them, and each arena holds the largest working set its
    threads ever had (freed memory of one arena never serves another). Under the soak
    (``scripts/soak_server.py``, 2 cores) 16 arenas held 500 MB of freed memory between them
    and the server's RSS grew for 10 minutes; so the threads share ``arenas`` arenas (the
    server's threads hold the GIL for most of their work, so they seldom contend for one), and
    :func:`release_freed_memory` (``ServerConfig.trim_interval_s``) hands what stays free back
    between sessions.

    Returns
    -------
    bool
        Whether the C library took every setting (False off glibc: macOS, musl…).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((_M_MMAP_THRESHOLD, mmap_threshold), (_M_TRIM_THRESHOLD, trim_threshold),
                (_M_ARENA_MAX, arenas))  # fmt: skip
    return all([bool(mallopt(param, value)) for param, value in settings])


def release_freed_memory() -> bool:
    """Return the free memory of every malloc arena to the system (glibc's ``malloc_trim(0)``).

    Frees nothing that is in use: pages wholly inside free chunks are given back (and the
    heap's free top is cut), so the RSS shows what is in use rather than the largest working
    set since start. About 10 ms for a few hundred MB. Process-wide; :class:`MrdServer` calls
    it at most every ``ServerConfig.trim_interval_s`` after sessions have ended.

    Returns
    -------
    bool
        Whether glibc returned memory (False when there was none to return, or off glibc).
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@functools.cache
def _malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def parse_args(argv: list[str] | None = None) -> tuple[ServerConfig, argparse.Namespace]:
    """Parse ``mr0-server``'s command line: its :class:`ServerConfig` and the options.

    Exits (status 2, with the option named) on a bad value; configures nothing.
    """
    parser = argparse.ArgumentParser(
        prog="mr0-server", description="Serve MRD/ISMRMRD streams through gadget chains."
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="MRD bind address (default localhost)")  # fmt: skip
    parser.add_argument("--port", type=int, default=9002)
    parser.add_argument(
        "--allow",
        action="append",
        metavar="CIDR[,CIDR...]",
        help="MRD clients allowed (addresses or networks; repeatable; default any)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        help="serve the status page, JSON API and /metrics here (e.g. 8080)",
    )
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="HTTP bind address (default localhost; elsewhere it needs a token)",
    )
    parser.add_argument(
        "--http-token-file",
        type=Path,
        help=f"file whose first line is the HTTP bearer token (else ${TOKEN_ENV})",
    )
    parser.add_argument("--previews", type=int, default=12,
                        help="image thumbnails kept for the status page (0: none)")  # fmt: skip
    parser.add_argument("--chains", type=Path, default=DEFAULT_CHAINS_DIR,
                        help="folder of chain XML files, chosen by config name")  # fmt: skip
    parser.add_argument("--save-dir", type=Path, help="save every session as MRD HDF5 here")
    parser.add_argument("--dicom-dir", type=Path,
                        help="also write every output image series as DICOM here")  # fmt: skip
    parser.add_argument("--pacs", metavar="HOST:PORT:AET",
                        help="C-STORE every output image series to this PACS (queued durably "
                        "under --store while it is down)")  # fmt: skip
    parser.add_argument("--pacs-calling-aet", default="MR0", help="our AE title (default MR0)")
    parser.add_argument("--pacs-max-queue-mb", type=float, default=2048,
                        help="largest PACS queue in MiB (default 2048)")  # fmt: skip
    parser.add_argument("--pacs-max-queue-series", type=int, default=1000,
                        help="most series in the PACS queue (default 1000)")  # fmt: skip
    parser.add_argument("--phantoms", type=Path,
                        help="folder of NIfTI phantoms (<name>.json) for previews")  # fmt: skip
    parser.add_argument("--store", type=Path,
                        help="job and reference store: background jobs, mr0_retrieve, "
                        "reference scans (created if missing)")  # fmt: skip
    parser.add_argument(
        "--no-scheduler",
        action="store_true",
        help="parse clients' .seq files, simulate and reconstruct in the server process, "
        "not as scheduler jobs (whose memory the scheduler accounts for); background jobs "
        "(--store) still run as scheduler jobs",
    )
    parser.add_argument(
        "--scheduler-dir",
        type=Path,
        help="the scheduler's store (default STORE/scheduler, else temporary)",
    )
    parser.add_argument(
        "--sim-workers",
        type=int,
        default=1,
        help="CPU worker processes of the scheduler (default 1)",
    )
    parser.add_argument("--gpu-slots", type=int, default=1,
                        help="concurrent simulations per GPU (default 1)")  # fmt: skip
    parser.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="scheduler jobs in local worker processes, or as Ray tasks",
    )
    parser.add_argument("--address", help="with --backend ray: auto or HOST:PORT")  # fmt: skip
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))  # fmt: skip
    parser.add_argument("--log-format", default="json", choices=("json", "text"))
    parser.add_argument("--max-sessions", type=int, default=16,
                        help="sessions served at once (default 16)")  # fmt: skip
    parser.add_argument("--max-session-mb", type=float, default=8192,
                        help="largest session accepted, in MiB")  # fmt: skip
    bounds = parser.add_argument_group(
        "slow and idle clients",
        "A connection waits in a pending pool, holding no session slot, until its config and "
        "header are in; the pool evicts its oldest connection when full.",
    )
    bounds.add_argument("--max-pending", type=int, default=64,
                        help="connections waiting for config and header (default 64)")  # fmt: skip
    bounds.add_argument("--preamble-timeout", type=float, default=30.0, metavar="S",
                        help="seconds for config and header to arrive (default 30)")  # fmt: skip
    bounds.add_argument("--max-per-peer", type=int, default=8,
                        help="sessions per client address (default 8; 0: no limit)")  # fmt: skip
    bounds.add_argument("--min-rate", type=float, default=1024.0, metavar="BYTES_PER_S",
                        help="least rate inside a message and while sending, averaged over "
                        "--rate-window (default 1024; 0: none)")  # fmt: skip
    bounds.add_argument("--rate-window", type=float, default=10.0, metavar="S",
                        help="window of the --min-rate average (default 10)")  # fmt: skip
    bounds.add_argument("--idle-timeout", type=float, default=600.0, metavar="S",
                        help="longest wait between two messages (default 600)")  # fmt: skip
    bounds.add_argument("--send-timeout", type=float, default=60.0, metavar="S",
                        help="longest wait for a client to take data (default 60)")  # fmt: skip
    parser.add_argument("--grace", type=float, default=600,
                        help="seconds to let sessions finish after SIGTERM")  # fmt: skip
    parser.add_argument("--trim-interval", type=float, default=10.0, metavar="S",
                        help="after sessions end, hand freed memory back to the system at most "
                        "every S seconds (default 10; 0: never)")  # fmt: skip
    storage = parser.add_argument_group(
        "storage",
        "Finished data in --save-dir, --store (jobs, references) and the scheduler's results "
        "is deleted by age and total size, at start and every --retention-interval; sessions "
        "still writing, queued and running jobs are kept.",
    )
    add_retention_options(storage)  # type: ignore[arg-type]  # a group takes arguments too
    opts = parser.parse_args(argv)
    if not 0 <= opts.port < 65536:
        parser.error(f"--port must be 0..65535, got {opts.port}")
    if opts.max_sessions < 1:
        parser.error("--max-sessions must be at least 1")
    if opts.sim_workers < 0 or opts.gpu_slots < 1:
        parser.error("--sim-workers must be >= 0 and --gpu-slots >= 1")
    if opts.http_port is not None and not 0 <= opts.http_port < 65536:
        parser.error(f"--http-port must be 0..65535, got {opts.http_port}")
    if not 0 <= opts.previews <= 256:
        parser.error("--previews must be 0..256")
    try:
        allow = parse_allow(opts.allow)
        token = load_token(opts.http_token_file)
    except AccessError as exc:
        parser.error(str(exc))
    pacs = None
    if opts.pacs is not None:
        try:
            pacs = PacsTarget.parse(opts.pacs, opts.pacs_calling_aet)
        except ValueError as exc:
            parser.error(f"--pacs: {exc}")
    config = ServerConfig(
        host=opts.host, port=opts.port, chains_dir=opts.chains, save_dir=opts.save_dir,
        phantoms_dir=opts.phantoms, store_dir=opts.store,
        scheduler=not opts.no_scheduler, scheduler_dir=opts.scheduler_dir,
        sim_workers=opts.sim_workers, gpu_slots=opts.gpu_slots, backend=opts.backend,
        ray_address=opts.address, allow=allow, http_host=opts.http_host,
        http_port=opts.http_port, http_token=token, previews=opts.previews,
        max_sessions=opts.max_sessions, max_session_bytes=int(opts.max_session_mb * 2**20),
        grace_s=opts.grace, max_pending=opts.max_pending, max_per_peer=opts.max_per_peer,
        preamble_timeout_s=opts.preamble_timeout, min_rate=opts.min_rate,
        rate_window_s=opts.rate_window, idle_timeout_s=opts.idle_timeout,
        send_timeout_s=opts.send_timeout, retention_days=opts.retention_days,
        max_store_gb=opts.max_store_gb, retention_interval_s=opts.retention_interval,
        trim_interval_s=opts.trim_interval, dicom_dir=opts.dicom_dir, pacs=pacs,
        pacs_max_queue_bytes=int(opts.pacs_max_queue_mb * 2**20),
        pacs_max_queue_series=opts.pacs_max_queue_series,
    )  # fmt: skip
    try:
        _check_config(config)
    except ValueError as exc:
        name, _, rest = str(exc).partition(" ")  # "preamble_timeout_s must be ..."
        parser.error(f"--{name.removesuffix('_s').replace('_', '-')} {rest}")
    return config, opts


@exit_quietly_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Run ``mr0-server``."""
    config, opts = parse_args(argv)
    configure_logging(opts.log_level, opts.log_format)
    keep_freed_memory()
    server = MrdServer(config)
    try:
        server.start()
    except (OSError, FileNotFoundError, sqlite3.Error, AccessError) as exc:
        print(f"mr0-server: {exc}", file=sys.stderr)
        server.shutdown(0)
        return 2

    def stop(signum: int, _frame: Any) -> None:
        log.info("signal", extra={"event": "signal", "signal": signal.Signals(signum).name})
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

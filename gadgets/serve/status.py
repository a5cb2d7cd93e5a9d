"""What the server is doing, for people and for Prometheus: the status board and its HTTP port.

:class:`StatusBoard` collects what the MRD server and its scheduler do: sessions (open, by
outcome), bytes received and sent, thumbnails of the latest images sent back, and, read live
when asked, the scheduler's GPUs, queue and jobs and the background-job store. It serves them
as a JSON document (:meth:`StatusBoard.snapshot`) and as Prometheus metrics
(:attr:`StatusBoard.registry`, through ``prometheus-client``).

:class:`StatusHttpServer` (``mr0-server --http-port 8080``) serves, on one port:

===========================  =====  ============================================================
path                         token  what
===========================  =====  ============================================================
``/``                        no     the status page (static HTML; it reads ``/api/status``)
``/static/status.{js,css}``  no     its script and style
``/healthz``                 no     ``ok`` (for container health checks); nothing else
``/api/status``              yes    :meth:`StatusBoard.snapshot` as JSON
``/api/previews/<n>.png``    yes    thumbnail ``n`` of the snapshot's ``previews``
``/metrics``                 yes    Prometheus text format
===========================  =====  ============================================================

"token: yes" means: when the server has a token (it must, bound to a non-loopback address;
:mod:`gadgets.wire.access`), the request carries ``Authorization: Bearer <token>``, else it gets
401. The static files hold no data. Only GET and HEAD are served; paths are matched against
the table, never opened; one request per connection.

Slow and large requests: one thread reads the request heads of all connections without
blocking, each within 15 s of its connection (``request_timeout_s``) and up to 64 KiB in all
(request line up to 8 KiB; over that: 431 or 414, and the connection is closed). At most 256
connections may be sending their heads at once; a new one closes the oldest. Only a complete
head gets a handler thread, at most 32 at once (more: 503), each hung up on after 15 s. So
slow clients hold no handler, and ``/healthz`` answers while they trickle.

Metrics (all prefixed ``mr0_``): ``mrd_received_bytes_total``, ``mrd_sent_bytes_total``,
``mrd_sessions_total{outcome}`` (ok, error, crash), ``mrd_sessions_active``,
``mrd_refused_connections_total{reason}`` (allowlist, busy, per_peer, evicted),
``mrd_slow_peers_total{bound}`` (deadline, idle, rate, send, cancelled),
``mrd_nonfinite_items_total{kind}`` (acquisition, image), ``scheduler_jobs{state}``,
``scheduler_queue_wait_seconds{kind}`` (histogram: submission to start),
``scheduler_run_seconds{function}`` (histogram: start to done), ``gpu_memory_used_bytes``,
``gpu_memory_total_bytes``, ``gpu_utilization_ratio`` (0–1), ``gpu_reserved_bytes`` (the
scheduler's reservations; all four by ``gpu`` and ``name``), ``background_jobs{state}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gadgets.wire.access import token_matches

__all__ = ["Preview", "StatusBoard", "StatusHttpServer", "thumbnail"]

log = logging.getLogger("mr0.status")

THUMBNAIL_PIXELS = 160
"""Longest side of a preview thumbnail (pixels)."""

_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_RUN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_RECENT_JOBS = 25
_ERROR_CHARS = 300


# -- previews -----------------------------------------------------------------------------------


def thumbnail(pixels: np.ndarray, size: int = THUMBNAIL_PIXELS) -> np.ndarray:
    """Return an 8-bit grey thumbnail of an ISMRMRD image's pixels.

    Parameters
    ----------
    pixels
        ``[channels, z, y, x]`` (as ``ismrmrd.Image.data``), any real or complex type.
    size
        Longest side of the result (pixels); the image is subsampled by a whole step.

    Returns
    -------
    numpy.ndarray
        ``uint8 [y', x']``: the magnitude of channel 0, middle ``z``, scaled so that its
        99.5th percentile is white (0 to 255). All zeros for an empty or non-finite image.
    """
    if pixels.ndim != 4 or 0 in pixels.shape:
        return np.zeros((1, 1), np.uint8)
    plane = pixels[0, pixels.shape[1] // 2]
    step = max(1, math.ceil(max(plane.shape) / size))
    mag = np.abs(plane[::step, ::step]).astype(np.float32)
    mag[~np.isfinite(mag)] = 0
    top = float(np.percentile(mag, 99.5)) if mag.size else 0.0
    if not top > 0:
        top = float(mag.max()) if mag.size else 0.0
    if not top > 0:
        return np.zeros(mag.shape, np.uint8)
    return (np.clip(mag / top, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass
class Preview:
    """The latest image of one series of one session."""

    id: int
    session: str
    config: str
    series: int
    time: float
    pixels: np.ndarray  # uint8 [y, x]
    shape: tuple[int, ...]  # the image's matrix [x, y, z]
    attributes: str
    images: int = 1
    _png: bytes | None = field(default=None, repr=False)

    def title(self) -> str:
        """``SeriesDescription`` / ``ImageComment`` of the image's attributes, if any."""
        if not self.attributes:
            return ""
        from gadgets.wire.framing import ProtocolError, parse_meta

        try:
            meta = parse_meta(self.attributes)
        except (ProtocolError, ValueError):
            return ""
        words = []
        for key in ("SeriesDescription", "ImageComment", "ImageComments"):
            if key in meta:
                value = meta[key]
                words.append(" ".join(value) if isinstance(value, list) else str(value))
        return " · ".join(w for w in words if w)[:120]

    def png(self) -> bytes:
        """Return the thumbnail as PNG (encoded once)."""
        if self._png is None:
            import matplotlib.image

            buf = io.BytesIO()
            matplotlib.image.imsave(buf, self.pixels, cmap="gray", vmin=0, vmax=255, format="png")
            self._png = buf.getvalue()
        return self._png


# -- the board ----------------------------------------------------------------------------------


@dataclass
class _SessionInfo:
    peer: str
    opened: float
    config: str = ""


class StatusBoard:
    """Live state of an :class:`~gadgets.serve.server.MrdServer`, as JSON and Prometheus metrics.

    Parameters
    ----------
    server
        The MRD server (its address, allow-list, scheduler and store are read when asked).
    previews
        How many thumbnails to keep (one per session and image series, newest first); 0 keeps
        none.
    """

    def __init__(self, server: Any, previews: int = 12) -> None:
        self.server = server
        self.max_previews = max(0, int(previews))
        self.started = time.time()
        self._lock = threading.Lock()
        self._sessions: dict[str, _SessionInfo] = {}
        self._previews: list[Preview] = []
        self._next_preview = 1
        self._ended = {"ok": 0, "error": 0, "crash": 0}
        self._bytes = {"received": 0, "sent": 0}
        self._monitor: Any = None  # a GpuMonitor of our own when there is no scheduler
        self._listening: Any = None  # the scheduler our listener is on
        self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter("mr0_mrd_received_bytes", "Bytes of MRD messages received",
                                registry=self.registry)  # fmt: skip
        self.sent = Counter("mr0_mrd_sent_bytes", "Bytes of MRD messages sent",
                            registry=self.registry)  # fmt: skip
        self.sessions = Counter("mr0_mrd_sessions", "MRD sessions ended, by outcome",
                                ["outcome"], registry=self.registry)  # fmt: skip
        self.refused = Counter("mr0_mrd_refused_connections", "MRD connections refused",
                               ["reason"], registry=self.registry)  # fmt: skip
        self.slow_peers = Counter(
            "mr0_mrd_slow_peers", "MRD sessions ended for breaking a time bound, by bound",
            ["bound"], registry=self.registry,
        )  # fmt: skip
        self.nonfinite = Counter(
            "mr0_mrd_nonfinite_items", "MRD items received with NaN or Inf samples, by kind",
            ["kind"], registry=self.registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "mr0_scheduler_queue_wait_seconds", "Scheduler jobs: submission to start",
            ["kind"], buckets=_WAIT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.run_time = Histogram(
            "mr0_scheduler_run_seconds", "Scheduler jobs: start to done", ["function"],
            buckets=_RUN_BUCKETS, registry=self.registry,
        )  # fmt: skip
        for outcome in ("ok", "error", "crash"):
            self.sessions.labels(outcome)
        for reason in ("allowlist", "busy", "per_peer", "evicted"):
            self.refused.labels(reason)
        for bound in ("deadline", "idle", "rate", "send", "cancelled"):
            self.slow_peers.labels(bound)
        for kind in ("acquisition", "image"):
            self.nonfinite.labels(kind)
        self.registry.register(_LiveCollector(self))

    # -- events from the server ---------------------------------------------------------------

    def watch_scheduler(self, scheduler: Any) -> None:
        """Listen to a :class:`scheduler.service.Scheduler`'s job starts and ends."""
        if scheduler is None or scheduler is self._listening:
            return
        scheduler.listeners.append(self._scheduler_event)
        self._listening = scheduler

    def _scheduler_event(self, event: dict[str, Any]) -> None:
        if event["event"] == "start":
            self.queue_wait.labels(event["kind"]).observe(event["wait_s"])
        elif event["event"] == "done":
            self.run_time.labels(event["function"]).observe(event["run_s"])

    def count_bytes(self, received: int = 0, sent: int = 0) -> None:
        """Add MRD bytes received from and sent to clients."""
        if received:
            self.received.inc(received)
        if sent:
            self.sent.inc(sent)
        with self._lock:
            self._bytes["received"] += received
            self._bytes["sent"] += sent

    def session_opened(self, sid: str, peer: str) -> None:
        """Note an accepted connection."""
        with self._lock:
            self._sessions[sid] = _SessionInfo(peer, time.time())

    def session_config(self, sid: str, config: str) -> None:
        """Note the chain a session chose."""
        with self._lock:
            info = self._sessions.get(sid)
            if info is not None:
                info.config = config

    def session_closed(self, sid: str, outcome: str) -> None:
        """Note a session's end: ``ok``, ``error`` (reported to the client), ``crash`` (a bug)."""
        if outcome not in self._ended:
            raise ValueError(f"outcome must be ok, error or crash, got {outcome!r}")
        with self._lock:
            self._sessions.pop(sid, None)
            self._ended[outcome] += 1
        self.sessions.labels(outcome).inc()

    def add_preview(self, sid: str, config: str, image: Any) -> None:
        """Keep a thumbnail of an image a session sent back (replacing its series' last one).

        The server calls this for images its chains made, never for images a client sent.
        """
        if not self.max_previews:
            return
        try:
            pixels = thumbnail(np.asarray(image.data))
            series = int(image.image_series_index)
            shape = tuple(int(n) for n in image.matrix_size)
            attributes = str(image.attribute_string or "")[:65536]
        except Exception:  # an odd image never hurts the session
            log.debug("no thumbnail", exc_info=True)
            return
        now = time.time()
        with self._lock:
            old = next((p for p in self._previews if p.session == sid and p.series == series), None)
            count = old.images + 1 if old is not None else 1
            if old is not None:
                self._previews.remove(old)
            self._previews.insert(0, Preview(self._next_preview, sid, config, series, now,
                                             pixels, shape, attributes, count))  # fmt: skip
            self._next_preview += 1
            del self._previews[self.max_previews :]

    def preview_png(self, preview_id: int) -> bytes | None:
        """Return a kept thumbnail as PNG; None when it is gone or never was."""
        with self._lock:
            found = next((p for p in self._previews if p.id == preview_id), None)
        return found.png() if found is not None else None

    # -- reading ------------------------------------------------------------------------------

    def _gpu_view(self) -> tuple[list[dict[str, Any]], str]:
        """GPUs as the scheduler sees them (or from a monitor of our own), and the monitor."""
        scheduler = self.server.scheduler
        if scheduler is not None:
            status = scheduler.status()
            return status["gpus"], status["gpu_monitor"]
        if self._monitor is None:
            from scheduler.gpu import GpuMonitor

            self._monitor = GpuMonitor(interval_s=1.0)
        gpus = [
            {"device": g.device, "name": g.name, "total_bytes": g.total_bytes,
             "free_bytes": g.free_bytes, "utilization": g.utilization,
             "temperature_c": g.temperature_c, "processes": len(g.processes),
             "reserved_bytes": 0}
            for g in self._monitor.snapshot()
        ]  # fmt: skip
        return gpus, "nvml" if self._monitor.available else self._monitor.reason

    def snapshot(self) -> dict[str, Any]:
        """Everything the status page shows, JSON-able (times are Unix seconds).

        Patient names and IDs are never included; background jobs show their protocol.
        """
        now = time.time()
        srv = self.server
        with self._lock:
            sessions = [
                {"id": sid, "peer": s.peer, "config": s.config,
                 "seconds": round(now - s.opened, 1)}
                for sid, s in self._sessions.items()
            ]  # fmt: skip
            previews = list(self._previews)
            ended, nbytes = dict(self._ended), dict(self._bytes)
        address = srv.address
        out: dict[str, Any] = {
            "time": now,
            "uptime_s": round(now - self.started, 1),
            "mrd": {
                "address": f"{address[0]}:{address[1]}" if address else None,
                "allow": [str(n) for n in srv.config.allow] or None,
                "sessions_active": len(sessions),
                "sessions": sessions,
                "sessions_ended": ended,
                "received_bytes": nbytes["received"],
                "sent_bytes": nbytes["sent"],
            },
            "previews": [
                {"id": p.id, "session": p.session, "config": p.config, "series": p.series,
                 "time": p.time, "title": p.title(), "matrix": list(p.shape),
                 "images": p.images, "url": f"/api/previews/{p.id}.png"}
                for p in previews
            ],
        }  # fmt: skip
        scheduler = srv.scheduler
        if scheduler is not None:
            status = scheduler.status()
            out["gpus"], out["gpu_monitor"] = status["gpus"], status["gpu_monitor"]
            out["scheduler"] = {
                "backend": scheduler.backend,
                "counts": status["counts"],
                "queued": status["queued"],
                "running": status["running"],
                "workers": len(status["workers"]),
                "recent": [_job_row(r) for r in scheduler.store.jobs(limit=_RECENT_JOBS)],
                "calls": [_call_row(c) for c in scheduler.calls(limit=_RECENT_JOBS)],
            }
        else:
            out["gpus"], out["gpu_monitor"] = self._gpu_view()
            out["scheduler"] = None
        store = srv.store
        out["background"] = None if store is None else {
            "counts": store.counts(),
            "recent": [
                {"job": j.id, "state": j.state, "config": j.config_name,
                 "protocol": j.protocol, "created": j.created, "started": j.started,
                 "finished": j.finished, "error": j.error[:_ERROR_CHARS]}
                for j in store.jobs(limit=_RECENT_JOBS)
            ],
        }  # fmt: skip
        return out

    def metrics(self) -> bytes:
        """Return the Prometheus text exposition of :attr:`registry`."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Release the GPU monitor of our own, if one was made."""
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None


def _call_row(call: dict[str, Any]) -> dict[str, Any]:
    """Describe a scheduler call (a session's preview, parse or recon) for the page."""
    started, ended = call["started"], call["ended"]
    return {
        "call": call["call"], "function": call["function"], "kind": call["kind"],
        "state": call["state"], "device": call["device"], "attempts": call["attempts"],
        "wait_s": None if started is None else max(0.0, started - call["submitted"]),
        "run_s": None if started is None or ended is None else max(0.0, ended - started),
        "ended": ended, "error": (call["error"] or "")[:_ERROR_CHARS],
    }  # fmt: skip


def _job_row(record: Any) -> dict[str, Any]:
    """Describe a scheduler job for the page: where it ran, how long it waited and ran."""
    started, finished = record.started, record.finished
    return {
        "job": record.id, "function": record.function, "kind": record.kind.name.lower(),
        "state": record.state, "device": record.device, "attempts": record.attempts,
        "submitted": record.submitted, "started": started, "finished": finished,
        "wait_s": None if started is None else round(max(0.0, started - record.submitted), 3),
        "run_s": None if started is None or finished is None or record.state != "done"
        else round(max(0.0, finished - started), 3),
        "error": record.error[:_ERROR_CHARS],
    }  # fmt: skip


class _LiveCollector(Collector):
    """Gauges read when Prometheus scrapes: sessions, jobs by state, GPUs, background jobs."""

    def __init__(self, board: StatusBoard) -> None:
        self.board = board

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        board = self.board
        active, jobs, bg, used, total, util, reserved = self._families()
        with board._lock:
            active.add_metric([], len(board._sessions))
        yield active
        scheduler = board.server.scheduler
        if scheduler is not None:
            for state, n in scheduler.store.counts().items():
                jobs.add_metric([state], n)
            yield jobs
        gpus, _ = board._gpu_view()
        for g in gpus:
            labels = [g["device"], g["name"]]
            used.add_metric(labels, g["total_bytes"] - g["free_bytes"])
            total.add_metric(labels, g["total_bytes"])
            util.add_metric(labels, g["utilization"] / 100.0)
            reserved.add_metric(labels, g["reserved_bytes"])
        yield from (used, total, util, reserved)
        store = board.server.store
        if store is not None:
            for state, n in store.counts().items():
                bg.add_metric([state], n)
            yield bg

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        gpu = ["gpu", "name"]
        return (
            GaugeMetricFamily("mr0_mrd_sessions_active", "MRD sessions in flight"),
            GaugeMetricFamily("mr0_scheduler_jobs", "Scheduler jobs by state", labels=["state"]),
            GaugeMetricFamily(
                "mr0_background_jobs", "Background (stored) jobs by state", labels=["state"]
            ),
            GaugeMetricFamily("mr0_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=gpu),
            GaugeMetricFamily("mr0_gpu_memory_total_bytes", "GPU memory (NVML)", labels=gpu),
            GaugeMetricFamily(
                "mr0_gpu_utilization_ratio", "GPU utilisation, 0 to 1 (NVML)", labels=gpu
            ),
            GaugeMetricFamily(
                "mr0_gpu_reserved_bytes", "GPU memory reserved by the scheduler", labels=gpu
            ),
        )


# -- HTTP ---------------------------------------------------------------------------------------

_STATIC = {
    "/": ("status.html", "text/html; charset=utf-8"),
    "/index.html": ("status.html", "text/html; charset=utf-8"),
    "/static/status.js": ("status.js", "text/javascript; charset=utf-8"),
    "/static/status.css": ("status.css", "text/css; charset=utf-8"),
}
_PREVIEW_PATH = re.compile(r"/api/previews/([0-9]{1,12})\.png")
_MAX_PATH = 2048
MAX_HEAD_BYTES = 64 * 1024
"""Largest request head (request line and headers) the HTTP port reads (bytes)."""
MAX_REQUEST_LINE = 8 * 1024
"""Longest request line the HTTP port reads (bytes)."""
_MAX_WAITING = 256  # connections whose heads are arriving at once
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def _static(name: str) -> bytes:
    return (resources.files("gadgets.serve") / "static" / name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    # always our _HttpServer; typeshed's BaseRequestHandler declares a (mutable) BaseServer
    server: _HttpServer  # type: ignore[assignment]
    server_version = "mr0-status"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: a client cannot hold a thread

    def setup(self) -> None:
        """Take the connection and its head, already read by :class:`_HttpServer`."""
        sock, head = self.request
        self.connection = sock
        sock.settimeout(self.server.request_timeout_s)
        self.rfile = io.BytesIO(head)
        self.wfile = sock.makefile("wb")

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.wfile.flush()
        with contextlib.suppress(OSError):
            self.wfile.close()
        self.rfile.close()

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)

    def _route(self, head: bool) -> None:
        if len(self.path) > _MAX_PATH:
            self._send(HTTPStatus.REQUEST_URI_TOO_LONG, b"path too long\n", head=head)
            return
        path = urlsplit(self.path).path
        board = self.server.board
        try:
            if path in _STATIC:
                name, ctype = _STATIC[path]
                self._send(HTTPStatus.OK, _static(name), ctype, head)
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", head=head)
            elif not self._authorised():
                self.server.unauthorised += 1
                self._send(HTTPStatus.UNAUTHORIZED, b"a bearer token is needed\n", head=head,
                           extra={"WWW-Authenticate": 'Bearer realm="mr0"'})  # fmt: skip
            elif path == "/api/status":
                body = json.dumps(board.snapshot(), default=str).encode()
                self._send(HTTPStatus.OK, body, "application/json", head)
            elif path == "/metrics":
                self._send(HTTPStatus.OK, board.metrics(),
                           "text/plain; version=0.0.4; charset=utf-8", head)  # fmt: skip
            elif (match := _PREVIEW_PATH.fullmatch(path)) is not None:
                png = board.preview_png(int(match.group(1)))
                if png is None:
                    self._send(HTTPStatus.NOT_FOUND, b"no such preview\n", head=head)
                else:
                    self._send(HTTPStatus.OK, png, "image/png", head)
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", head=head)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:  # a bug here answers 500 and leaves the server up
            log.exception("status request failed", extra={"event": "http_error", "path": path})
            with contextlib.suppress(OSError):
                self._send(HTTPStatus.INTERNAL_SERVER_ERROR, b"internal error\n", head=head)

    def _authorised(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        value = self.headers.get("Authorization", "")
        scheme, _, given = value.partition(" ")
        return scheme.lower() == "bearer" and token_matches(given.strip(), token)

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        head: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in {**_SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


@dataclass(eq=False)
class _Waiting:
    """A connection whose request head is still arriving."""

    sock: socket.socket
    address: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)
    line: int = -1  # length of the request line, once its end has arrived


def _head_end(head: bytearray, start: int) -> int:
    """Return the length of the request head in ``head`` (0 while its blank line is missing)."""
    ends = [i + n for i, n in ((head.find(b"\r\n\r\n", start), 4), (head.find(b"\n\n", start), 2))
            if i >= 0]  # fmt: skip
    return min(ends) if ends else 0


class _HttpServer:
    """The HTTP port: one thread reads request heads, a bounded pool of threads answers.

    Parameters
    ----------
    address
        Host and port to bind (port 0: a free one).
    board, token
        What to serve, and the bearer token (None: none).
    max_requests
        Requests answered at once (handler threads); a complete request over that gets 503.
    request_timeout_s
        Longest time for a connection's head to arrive, and again for its answer (s).
    """

    def __init__(
        self,
        address: tuple[str, int],
        board: StatusBoard,
        token: str | None,
        max_requests: int,
        request_timeout_s: float,
    ) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
            self.socket.setblocking(False)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()
        self.board = board
        self.token = token
        self.unauthorised = 0
        self.request_timeout_s = request_timeout_s
        self._slots = threading.BoundedSemaphore(max_requests)
        self._stop = threading.Event()
        self._waiting: dict[socket.socket, _Waiting] = {}  # oldest first
        self._selector = selectors.DefaultSelector()

    def serve_forever(self) -> None:
        """Accept and read heads until :meth:`shutdown`."""
        selector = self._selector
        selector.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    if key.fileobj is self.socket:
                        self._accept()
                    else:
                        self._read_head(key.data)
                self._expire()
        finally:
            for waiting in list(self._waiting.values()):
                self._drop(waiting)
            selector.close()

    def shutdown(self) -> None:
        """Make :meth:`serve_forever` return (within 0.2 s)."""
        self._stop.set()

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()

    # -- reading heads (the loop's thread) ----------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of descriptors: try again on the next turn
                log.warning("accept failed: %s", exc, extra={"event": "http_accept"})
                return
            sock.setblocking(False)
            while len(self._waiting) >= _MAX_WAITING:
                self._drop(next(iter(self._waiting.values())))
            waiting = _Waiting(sock, address, time.monotonic() + self.request_timeout_s)
            self._waiting[sock] = waiting
            self._selector.register(sock, selectors.EVENT_READ, waiting)

    def _read_head(self, waiting: _Waiting) -> None:
        head = waiting.head
        try:
            chunk = waiting.sock.recv(MAX_HEAD_BYTES + 1 - len(head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(waiting)
            return
        if not chunk:
            self._drop(waiting)
            return
        start = max(0, len(head) - 3)
        head += chunk
        if waiting.line < 0:
            waiting.line = head.find(b"\n", start)
        if (waiting.line if waiting.line >= 0 else len(head)) > MAX_REQUEST_LINE:
            self._refuse(waiting, HTTPStatus.REQUEST_URI_TOO_LONG, b"request line too long\n")
            return
        end = _head_end(head, start)
        if not end:
            if len(head) > MAX_HEAD_BYTES:
                self._refuse(waiting, HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                             b"request headers too large\n")  # fmt: skip
            return
        self._forget(waiting)
        self._dispatch(waiting.sock, waiting.address, bytes(head[:end]))

    def _expire(self) -> None:
        now = time.monotonic()
        for waiting in list(self._waiting.values()):
            if waiting.deadline > now:
                break  # the rest came later
            self._drop(waiting)

    def _forget(self, waiting: _Waiting) -> None:
        self._waiting.pop(waiting.sock, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(waiting.sock)

    def _drop(self, waiting: _Waiting) -> None:
        self._forget(waiting)
        waiting.sock.close()

    def _refuse(self, waiting: _Waiting, status: HTTPStatus, body: bytes) -> None:
        """Answer an error in one non-blocking send (best effort) and close."""
        self._forget(waiting)
        _answer_now(waiting.sock, status, body)

    # -- answering (a thread each) ------------------------------------------------------------

    def _dispatch(self, sock: socket.socket, address: Any, head: bytes) -> None:
        if not self._slots.acquire(blocking=False):
            _answer_now(sock, HTTPStatus.SERVICE_UNAVAILABLE, b"busy\n")
            return
        thread = threading.Thread(target=self._answer, args=(sock, address, head),
                                  name="mr0-http-request", daemon=True)  # fmt: skip
        try:
            thread.start()
        except BaseException:
            self._slots.release()
            sock.close()
            raise

    def _answer(self, sock: socket.socket, address: Any, head: bytes) -> None:
        timer = threading.Timer(self.request_timeout_s, _hang_up, args=(sock,))
        timer.daemon = True
        timer.start()
        try:
            sock.setblocking(True)
            _Handler((sock, head), address, self)  # type: ignore[arg-type]
        except OSError:
            pass  # the client went away, or was hung up on
        except Exception:  # a bug answers nothing and leaves the server up
            log.exception("status request failed", extra={"event": "http_error"})
        finally:
            timer.cancel()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            sock.close()
            self._slots.release()


def _answer_now(sock: socket.socket, status: HTTPStatus, body: bytes) -> None:
    """Send a small plain-text answer without waiting (what does not fit is lost), close."""
    head = [f"HTTP/1.0 {status.value} {status.phrase}", "Content-Type: text/plain; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close",
            *(f"{k}: {v}" for k, v in _SECURITY_HEADERS.items())]  # fmt: skip
    with contextlib.suppress(OSError):
        sock.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    sock.close()


def _hang_up(sock: socket.socket) -> None:
    """End a request that has taken too long (its thread then fails on the socket and ends)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class StatusHttpServer:
    """The HTTP port: status page, JSON API, Prometheus metrics (see the module docstring).

    Parameters
    ----------
    board
        What to serve.
    host, port
        Bind address; port 0 binds a free port.
    token
        The bearer token; None serves without one (refused by
        :class:`~gadgets.serve.server.MrdServer` for a non-loopback ``host``).
    max_requests
        Requests answered at once; a complete request over that gets 503. Connections still
        sending their heads do not count (see the module docstring).
    request_timeout_s
        Longest time for a request's head to arrive, and again for its answer (s).
    """

    def __init__(
        self,
        board: StatusBoard,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        max_requests: int = 32,
        request_timeout_s: float = 15.0,
    ) -> None:
        self._httpd = _HttpServer((host, port), board, token, max_requests, request_timeout_s)
        self.address: tuple[str, int] = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Serve in a background thread; return the bound address."""
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="mr0-http", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self.address

    @property
    def unauthorised(self) -> int:
        """Requests refused for a missing or wrong token."""
        return self._httpd.unauthorised

    def stop(self) -> None:
        """Stop serving and close the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

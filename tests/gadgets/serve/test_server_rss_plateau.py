"""Issue 21, the soak's plateau: what made ``mr0-server``'s own RSS grow, held to account.

Two causes were measured under ``scripts/soak_server.py`` (docs/security.md, "Soak"):

* every finished session was a reference cycle (``Session`` → its ``MessageReader`` → the
  socket source → ``on_wait`` = the session's bound method; and each reader held its own bound
  methods), so a session's buffers, header and parameters (a 13 MB ``.seq`` text for a
  preview) lived until the garbage collector's next *full* pass, which with the server's
  300 000 long-lived objects comes every few hundred sessions: 550 MB in use at its peak;
* the freed memory stayed in glibc's 16 malloc arenas (8 per core), 500–700 MB of it.

The tests check the first directly (no session object survives without the collector) and the
second through the server's trimming (``trim_interval_s``) and :func:`release_freed_memory`.
"""

from __future__ import annotations

import gc
import io
import platform
import socket
import struct
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from conftest import SCRIPTS

sys.path.insert(0, str(SCRIPTS))
import soak_server as soak

from gadgets.serve.server import MrdServer, ServerConfig, Session, parse_args, release_freed_memory
from gadgets.wire.framing import MessageReader, MessageWriter, SocketSource

TIMEOUT_S = 60.0
MB = 2**20


@pytest.fixture
def make(server_factory):
    """Start in-process MRD servers (no scheduler) with the given settings; stop them."""

    def start(**kwargs) -> MrdServer:
        kwargs.setdefault("scheduler", False)
        return server_factory(grace_s=5, max_per_peer=0, shutdown_grace_s=5, **kwargs)

    return start


def wait_for_session_threads(srv: MrdServer) -> None:
    """Wait until every session's threads (and refusals' drains) have ended."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        busy = [t for t in threading.enumerate()
                if t.name.startswith("mr0-") and t.name != "mr0-accept"]  # fmt: skip
        if not busy and srv.active_sessions() == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"sessions still running after {TIMEOUT_S} s: {busy}")


def hang_up(address: tuple[str, int], payload: bytes) -> None:
    """Send a session and reset the connection at once: the server's answer cannot be sent."""
    sock = socket.create_connection(address, timeout=TIMEOUT_S)
    sock.sendall(payload)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # with linger 0: a reset, not an orderly close


def _sessions_of_every_ending() -> dict[str, bytes]:
    """Sessions that end well, with a warning, refused at the header, by a bad text, ..."""
    hostile = soak.hostile_payloads()
    payloads = {
        "recon": soak.make_recon_data().payload,
        "nan": soak.make_recon_data(size=16, coils=1, nan_line=5).payload,
        **{name: hostile[name] for name in ("header", "deep_json", "big_int", "client_image")},
    }
    payloads.update({f"framing: {k}": v for k, v in soak.framing_payloads().items()})
    return payloads


def test_finished_sessions_are_freed_without_the_garbage_collector(make):
    """No session, reader, socket source or writer outlives its session by a reference cycle.

    Among the sessions, one whose client resets the connection before the answer (the
    writer keeps the error that ended sending).

    With the collector off, an object in a cycle stays in ``gc.get_objects()``; before the fix
    every session of every kind left its ``Session`` (and the client's reader) there.
    """
    srv = make()
    payloads = _sessions_of_every_ending()
    kinds = (Session, MessageReader, SocketSource, MessageWriter)
    gc.collect()
    gc.disable()
    try:
        answers = {name: soak.converse(srv.address, p, TIMEOUT_S) for name, p in payloads.items()}
        hang_up(srv.address, payloads["recon"])
        wait_for_session_threads(srv)
        live = [type(o).__name__ for o in gc.get_objects() if type(o) in kinds]
    finally:
        gc.enable()
    # the sessions ended as the soak expects (so every ending was exercised)
    assert soak.expect_image(answers["recon"])[0], answers["recon"].describe()
    assert soak.expect_image(answers["nan"])[0], answers["nan"].describe()
    for name, answer in answers.items():
        if name not in ("recon", "nan"):
            assert soak.expect_error(answer)[0], (name, answer.describe())
    assert live == []


def test_a_reader_is_not_a_reference_cycle():
    """A reader holds no bound method of its own, and a closed one no ``on_wait``."""

    class Owner:
        def hand_over(self) -> None:
            pass

    gc.disable()
    try:
        reader = MessageReader(io.BytesIO(b""))
        gone = weakref.ref(reader)
        del reader
        assert gone() is None

        left, right = socket.socketpair()
        with left, right:
            owner = Owner()
            owner.reader = MessageReader(left, on_wait=owner.hand_over)  # type: ignore[attr-defined]
            owner.reader.close()  # type: ignore[attr-defined]
            gone = weakref.ref(owner)
            del owner
            assert gone() is None
    finally:
        gc.enable()


def test_freed_memory_is_handed_back_after_sessions(make):
    srv = make(trim_interval_s=0.2)
    quiet = make(trim_interval_s=0)
    payload = soak.make_recon_data().payload
    time.sleep(0.5)
    assert srv.memory_trims == 0  # no session has ended: nothing to hand back
    for server in (srv, quiet):
        assert soak.expect_image(soak.converse(server.address, payload, TIMEOUT_S))[0]
    deadline = time.monotonic() + 10
    while srv.memory_trims == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.memory_trims == 1
    time.sleep(0.6)  # no session ended since: no second trim
    assert srv.memory_trims == 1
    assert quiet.memory_trims == 0


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_release_freed_memory_returns_free_heap_pages():
    if platform.libc_ver()[0] != "glibc" or not Path("/proc/self/status").exists():
        pytest.skip("malloc_trim is glibc's; RSS from Linux /proc")
    # 128 MiB in blocks under the mmap threshold (so on the heap), written (so resident); every
    # other one is freed: 64 MiB of free chunks between blocks in use, which glibc cannot give
    # back by shrinking the heap
    block = bytes(range(256)) * 256
    blocks = [bytearray(block) for _ in range(2048)]
    del blocks[::2]
    before = _rss()
    assert release_freed_memory()
    assert before - _rss() > 32 * MB
    del blocks


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_trim_interval_must_be_finite_and_not_negative(value):
    with pytest.raises(ValueError, match="trim_interval_s"):
        MrdServer(ServerConfig(port=0, scheduler=False, trim_interval_s=value)).start()
    with pytest.raises(SystemExit) as info:
        parse_args(["--trim-interval", str(value)])
    assert info.value.code == 2

"""mr0-server against hostile and broken clients (issue 21, items 2, 4 and 7).

One test per row of the issue's table that concerns the MRD and HTTP ports: idle and slow
sockets cannot hold session slots, a client that never reads is given up on, deep or huge JSON
is an ERROR (never a reset), NaN/Inf input is warned about, client images are refused by
chains that do not take them and never shown on the status page, and the HTTP port bounds
request heads and keeps ``/healthz`` answering under slow connections.

Servers run in-process on free loopback ports, without the scheduler. Times are generous
"does not hang" bounds, not speed measurements.
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time
import urllib.request

import ismrmrd
import numpy as np
import pytest
from test_gadgets_server import HEADER, make_acquisitions, stream

import gadgets.serve.server
from gadgets.serve.server import MAX_JSON_DEPTH, MrdServer, json_depth
from gadgets.serve.status import MAX_HEAD_BYTES, StatusBoard, StatusHttpServer
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter, RateWindow, SlowPeerError

# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture
def make(server_factory):
    """Start MRD servers (no scheduler) with the given settings; stop them afterwards."""

    def start(**kwargs) -> MrdServer:
        kwargs.setdefault("grace_s", 5)
        return server_factory(scheduler=False, shutdown_grace_s=5, **kwargs)

    return start


def answer(sock: socket.socket) -> list:
    """Read messages until a close or the end of the stream (a reset raises)."""
    return list(MessageReader(sock))


def converse(port: int, payload: bytes, timeout: float = 20) -> list:
    """Send a whole session, half-close, return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        return answer(sock)


def texts(msgs: list) -> list[str]:
    return [str(m.value) for m in msgs if m.id == MessageId.TEXT]


def errors(msgs: list) -> list[str]:
    return [t for t in texts(msgs) if t.startswith("ERROR")]


def served(port: int, timeout: float = 5) -> float:
    """Run one valid passthrough session; return how long it took (s)."""
    start = time.monotonic()
    acqs = make_acquisitions(3, seed=7)
    msgs = converse(port, stream(items=acqs), timeout=timeout)
    assert not errors(msgs), errors(msgs)
    back = [m.value for m in msgs if m.id == MessageId.ACQUISITION]
    assert len(back) == 3
    np.testing.assert_array_equal(back[2].data, acqs[2].data)
    assert msgs[-1].id == MessageId.CLOSE
    return time.monotonic() - start


def preamble(config: str = "passthrough") -> bytes:
    """Config and header, as a session starts."""
    return stream(config=config, close=False)


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("timed out")


def counter(board: StatusBoard, name: str, **labels: str) -> float:
    value = board.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- slots: idle and slow peers (item 2) -----------------------------------------------------------


def test_sixteen_idle_sockets_do_not_keep_a_client_out(make):
    """Row: 16 idle sockets made every real client "server busy" (default settings)."""
    srv = make()
    assert srv.config.max_sessions == 16
    idle = [socket.create_connection(srv.address, timeout=10) for _ in range(16)]
    try:
        wait_for(lambda: srv.active_sessions() == 16)
        assert served(srv.address[1]) < 5
        # the idle ones never held a slot
        wait_for(lambda: srv.admitted_sessions() == 0)
        assert srv.pending_connections() == 16
    finally:
        for sock in idle:
            sock.close()


def test_a_full_pending_pool_evicts_its_oldest(make):
    srv = make(max_pending=4, preamble_timeout_s=60)
    idle = [socket.create_connection(srv.address, timeout=10) for _ in range(10)]
    try:
        wait_for(lambda: counter(srv.board, "mr0_mrd_refused_connections_total",
                                 reason="evicted") == 6)  # fmt: skip
        assert served(srv.address[1]) < 5
        # the evicted ones were told why, the newest are still waiting
        first = answer(idle[0])
        assert "evicted" in errors(first)[0]
        assert first[-1].id == MessageId.CLOSE
        # the valid client evicted one more on its way in; three idle ones still wait
        assert counter(srv.board, "mr0_mrd_refused_connections_total", reason="evicted") == 7
        assert srv.pending_connections() == 3
    finally:
        for sock in idle:
            sock.close()


def _trickle(sock: socket.socket, data: bytes, every_s: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(every_s):
            return
        try:
            sock.sendall(data[i : i + 1])
        except OSError:
            return


def test_sockets_sending_a_byte_a_second_do_not_keep_a_client_out(make):
    """Row: 16 sockets sending 1 byte/s made every real client "server busy"."""
    srv = make()
    stop = threading.Event()
    slow = [socket.create_connection(srv.address, timeout=10) for _ in range(16)]
    threads = [threading.Thread(target=_trickle, args=(s, preamble(), 1.0, stop), daemon=True)
               for s in slow]  # fmt: skip
    for t in threads:
        t.start()
    try:
        wait_for(lambda: srv.active_sessions() == 16)
        assert served(srv.address[1]) < 5
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_the_preamble_has_a_deadline(make):
    srv = make(preamble_timeout_s=1.0)
    stop = threading.Event()
    with socket.create_connection(srv.address, timeout=10) as sock:
        threading.Thread(target=_trickle, args=(sock, preamble(), 0.05, stop), daemon=True).start()
        start = time.monotonic()
        msgs = answer(sock)
        stop.set()
    assert "the config and header did not arrive within 1 s" in errors(msgs)[0]
    assert msgs[-1].id == MessageId.CLOSE
    assert time.monotonic() - start < 4
    assert counter(srv.board, "mr0_mrd_slow_peers_total", bound="deadline") == 1


def test_a_message_trickled_after_the_preamble_is_cut_off(make):
    srv = make(min_rate=1000, rate_window_s=1.0)
    acq = stream(items=make_acquisitions(1), close=False)[len(preamble()) :]
    stop = threading.Event()
    with socket.create_connection(srv.address, timeout=10) as sock:
        sock.sendall(preamble())
        threading.Thread(target=_trickle, args=(sock, acq, 0.02, stop), daemon=True).start()
        start = time.monotonic()
        msgs = answer(sock)
        stop.set()
    assert "a message arrived too slowly" in errors(msgs)[0]
    assert "under the minimum rate of 1000 bytes/s" in errors(msgs)[0]
    assert time.monotonic() - start < 5
    assert counter(srv.board, "mr0_mrd_slow_peers_total", bound="rate") == 1


def test_the_rate_is_measured_over_a_sliding_window():
    slow = RateWindow(min_rate=100, window_s=1.0)
    slow.start(0.0)
    for i in range(20):
        slow.add(10, i * 0.1)  # 100 bytes/s: on the bound
    slow.check(1.95, "reading")
    burst = RateWindow(min_rate=100, window_s=1.0)
    burst.start(0.0)
    burst.add(10_000, 0.0)  # one big recv, then nothing
    burst.check(0.9, "reading")  # not a whole window yet
    with pytest.raises(SlowPeerError, match="0 bytes in the last 1 s, under the minimum"):
        burst.check(1.6, "reading")
    # a pause of the reader's own (its chain was busy) does not count against the peer
    burst.shift(1.0)
    burst.check(1.6, "reading")
    trickle = RateWindow(min_rate=100, window_s=1.0)
    trickle.start(0.0)
    for i in range(30):
        trickle.add(1, i * 0.1)  # one byte per recv, 10 bytes/s
    with pytest.raises(SlowPeerError, match="under the minimum rate of 100 bytes/s"):
        trickle.check(2.95, "reading")


def test_a_client_idle_between_messages_is_not_cut_off(make):
    """The negative control: a scanner pauses between acquisitions for longer than the window."""
    srv = make(min_rate=1000, rate_window_s=0.5)
    acqs = make_acquisitions(2, seed=2)
    with socket.create_connection(srv.address, timeout=10) as sock:
        writer = MessageWriter(sock)
        sock.sendall(preamble())
        writer.write(acqs[0])
        time.sleep(1.5)
        writer.write(acqs[1])
        writer.write_close()
        msgs = answer(sock)
    assert not errors(msgs)
    assert len([m for m in msgs if m.id == MessageId.ACQUISITION]) == 2


def test_sessions_per_client_address_are_limited(make):
    srv = make(max_per_peer=2)
    held = [socket.create_connection(srv.address, timeout=10) for _ in range(2)]
    try:
        for sock in held:
            sock.sendall(preamble())  # admitted, then idle between messages
        wait_for(lambda: srv.admitted_sessions() == 2)
        msgs = converse(srv.address[1], stream(items=make_acquisitions(1)))
        assert "client address 127.0.0.1 has 2 sessions" in errors(msgs)[0]
        assert counter(srv.board, "mr0_mrd_refused_connections_total", reason="per_peer") == 1
        MessageWriter(held[0]).write_close()
        assert answer(held[0])[-1].id == MessageId.CLOSE
        wait_for(lambda: srv.admitted_sessions() == 1)
        assert served(srv.address[1]) < 5
    finally:
        for sock in held:
            sock.close()


def test_a_client_that_never_reads_is_given_up_on(make):
    srv = make(send_timeout_s=1.0)
    acqs = make_acquisitions(48, coils=16, samples=8192)  # 48 MiB echoed back
    payload = stream(items=acqs)
    sock = socket.create_connection(srv.address, timeout=15)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(payload)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        wait_for(lambda: srv.admitted_sessions() == 1)
        # the answer is never read: the server gives up and frees the slot
        wait_for(lambda: srv.active_sessions() == 0, timeout=10)
        assert counter(srv.board, "mr0_mrd_slow_peers_total", bound="send") == 1
    finally:
        sock.close()
        sender.join(10)
    assert served(srv.address[1]) < 5


# -- every failure is an ERROR (item 4) ------------------------------------------------------------


def _with_text(text: str) -> bytes:
    buf = io.BytesIO()
    writer = MessageWriter(buf)
    writer.write_config_file("passthrough")
    writer.write_header(HEADER)
    writer.write_text(text)
    writer.write_close()
    return buf.getvalue()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested 100001 levels deep"),
        ('{"a": ' + "9" * 5000 + "}", "a number of 5000 characters"),
        ('{"a": 1' + "0" * 400 + ".5}", "a number of 403 characters"),
        ('{"a": 1e999}', "out of range"),
        ('{"a": NaN}', "NaN is not a number JSON allows"),
    ],
    ids=["deep", "huge-int", "huge-float", "overflow", "nan"],
)
def test_hostile_json_gets_an_error_not_a_reset(make, text, expected):
    """Row: JSON nested 10^5 deep, or a 5000-digit integer, reset the connection."""
    srv = make()
    msgs = converse(srv.address[1], _with_text(text))
    assert expected in errors(msgs)[0]
    assert msgs[-1].id == MessageId.CLOSE
    wait_for(lambda: srv.active_sessions() == 0)
    assert counter(srv.board, "mr0_mrd_sessions_total", outcome="crash") == 0
    assert served(srv.address[1]) < 5


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth('{"a": "[[[[{{{{", "b": [[1], {"c": "\\"]]]"}]}') == 3
    assert json_depth("[" * (MAX_JSON_DEPTH + 1)) == MAX_JSON_DEPTH + 1
    assert json_depth('"no containers"') == 0


def test_an_unexpected_exception_becomes_an_error_text(make, monkeypatch, caplog):
    srv = make()

    def broken(name, chains_dir=None):
        raise KeyError("a bug on purpose")

    monkeypatch.setattr(gadgets.serve.server, "chain_text", broken)
    with caplog.at_level("ERROR", logger="mr0.server"):
        msgs = converse(srv.address[1], stream(items=make_acquisitions(2)))
        wait_for(lambda: srv.active_sessions() == 0)
    assert errors(msgs) == ["ERROR: KeyError: 'a bug on purpose'"]
    assert msgs[-1].id == MessageId.CLOSE
    # logged with its traceback, counted as a crash; the server goes on
    assert any(r.exc_info and "a bug on purpose" in str(r.exc_info[1]) for r in caplog.records)
    assert counter(srv.board, "mr0_mrd_sessions_total", outcome="crash") == 1
    monkeypatch.undo()
    assert served(srv.address[1]) < 5


# -- NaN/Inf and client images (item 7) ------------------------------------------------------------


def disk_session(nan_line: int | None = None, n: int = 16) -> bytes:
    """A default-chain session: Cartesian lines of a disk, one of them NaN if asked."""
    header = HEADER.replace("<x>64</x><y>8</y>", f"<x>{n}</x><y>{n}</y>").replace(
        "<maximum>7</maximum><center>4</center>",
        f"<maximum>{n - 1}</maximum><center>{n // 2}</center>",
    )
    y, x = np.mgrid[:n, :n] - n // 2
    k = np.fft.fft2((x**2 + y**2 < (n // 3) ** 2).astype(np.complex64))
    buf = io.BytesIO()
    writer = MessageWriter(buf)
    writer.write_config_file("default")
    writer.write_header(header)
    for i in range(n):
        line = k[i][None, :].astype(np.complex64)
        if i == nan_line:
            line[0, 3] = np.nan
        acq = ismrmrd.Acquisition.from_array(line)
        acq.idx.kspace_encode_step_1 = i
        acq.scan_counter = i
        if i == n - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        writer.write(acq)
    writer.write_close()
    return buf.getvalue()


def test_nan_samples_are_warned_about(make):
    """Row: NaN/Inf samples gave an all-NaN image and no warning."""
    srv = make()
    msgs = converse(srv.address[1], disk_session(nan_line=5))
    warnings = [t for t in texts(msgs) if t.startswith("WARNING")]
    assert len(warnings) == 1
    assert "acquisition 5 (scan_counter) holds NaN or Inf samples" in warnings[0]
    assert [m for m in msgs if m.id == MessageId.IMAGE]  # the image still comes back
    assert counter(srv.board, "mr0_mrd_nonfinite_items_total", kind="acquisition") == 1
    # finite input: no warning
    msgs = converse(srv.address[1], disk_session())
    assert not [t for t in texts(msgs) if t.startswith("WARNING")]
    assert counter(srv.board, "mr0_mrd_nonfinite_items_total", kind="acquisition") == 1


def _image_session(config: str) -> bytes:
    img = ismrmrd.Image.from_array(np.full((8, 8), 3.0, np.float32))
    return stream(config=config, items=[img])


def test_client_images_are_refused_by_chains_that_do_not_take_them(make):
    """Row: an image sent by a client was echoed back and shown as a thumbnail."""
    srv = make()
    msgs = converse(srv.address[1], _image_session("default"))
    assert "chain 'default' does not take images from the client" in errors(msgs)[0]
    assert "passthrough" in errors(msgs)[0]  # names the chains that do
    assert not [m for m in msgs if m.id == MessageId.IMAGE]
    # a chain that takes them (passthrough) echoes them, but they are never shown
    msgs = converse(srv.address[1], _image_session("passthrough"))
    assert not errors(msgs)
    assert len([m for m in msgs if m.id == MessageId.IMAGE]) == 1
    assert srv.board.snapshot()["previews"] == []
    # images the server made are shown (the control)
    converse(srv.address[1], disk_session())
    (preview,) = srv.board.snapshot()["previews"]
    assert preview["config"] == "default"


# -- the HTTP port (item 7) ------------------------------------------------------------------------


class _Idle:  # the board reads nothing for /healthz
    scheduler = store = address = None


@pytest.fixture
def http_server():
    server = StatusHttpServer(StatusBoard(_Idle()), port=0)
    server.start()
    yield server
    server.stop()


def test_http_request_heads_are_bounded(http_server):
    """Row: 99 headers of 60 kB were read whole (5.9 MB) and answered 200."""
    head = b"GET /healthz HTTP/1.0\r\n" + b"".join(
        b"X-Pad-%d: " % i + b"a" * 60_000 + b"\r\n" for i in range(99)
    )
    sent = 0
    answer_bytes = b""
    with socket.create_connection(http_server.address, timeout=5) as sock:
        try:
            for start in range(0, len(head), 65536):
                sent += sock.send(head[start : start + 65536])
            sock.sendall(b"\r\n")
        except OSError:  # reset: the server stopped reading
            pass
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer_bytes += chunk
    assert sent < len(head)  # the server did not read 5.9 MB
    assert not answer_bytes.startswith(b"HTTP/1.0 200")
    if answer_bytes:
        assert answer_bytes.startswith(b"HTTP/1.0 431")
    # a request line over 8 KiB is answered at once, without waiting for its end
    with socket.create_connection(http_server.address, timeout=5) as sock:
        sock.sendall(b"GET /" + b"a" * 20_000)
        assert sock.recv(65536).startswith(b"HTTP/1.0 414")
    # a head just under the bound is served
    pad = b"X-Pad: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n"
    with socket.create_connection(http_server.address, timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n" + pad + b"\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.0 200")


def test_healthz_answers_under_forty_slow_connections(http_server):
    """Row: 40 slow HTTP connections took /healthz away for 12 s."""
    stop = threading.Event()
    data = b"GET /healthz HTTP/1.0\r\nX-Slow: " + b"a" * 100
    slow = [socket.create_connection(http_server.address, timeout=5) for _ in range(40)]
    threads = [threading.Thread(target=_trickle, args=(s, data, 1.0, stop), daemon=True)
               for s in slow]  # fmt: skip
    for t in threads:
        t.start()
    url = f"http://{http_server.address[0]}:{http_server.address[1]}/healthz"
    try:
        time.sleep(0.5)
        for _ in range(3):
            with urllib.request.urlopen(url, timeout=2) as r:
                assert (r.status, r.read()) == (200, b"ok\n")
            time.sleep(0.5)
    finally:
        stop.set()
        for sock in slow:
            sock.close()

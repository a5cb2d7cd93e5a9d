"""The status page's HTTP port, Prometheus metrics and access rules (gadgets.serve.status, .access).

Servers run in-process on free ports. Counts are checked against what the test itself did:
jobs it submitted, sessions it ran, bytes it wrote and read on its own sockets.
"""

from __future__ import annotations

import http.client as http_client
import io
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import ismrmrd
import matplotlib.image
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gadgets.serve.server import MrdServer, ServerConfig
from gadgets.serve.status import thumbnail
from gadgets.wire.access import (
    TOKEN_ENV,
    AccessError,
    allowed,
    is_loopback,
    load_token,
    parse_allow,
    token_matches,
)
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from scheduler.gpu import FakeGpu, FakeNvml, GpuMonitor

TOKEN = "s3cret-token-for-tests-0123456789"
GB = 2**30


# -- helpers ---------------------------------------------------------------------------------------


def http(address, path, token=None, method="GET"):
    """Return (status, headers, body) of one request."""
    req = urllib.request.Request(f"http://{address[0]}:{address[1]}{path}", method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def metrics(address, token=None) -> dict[tuple[str, tuple], float]:
    """Parse /metrics with prometheus-client's parser: {(sample name, sorted labels): value}."""
    status, headers, body = http(address, "/metrics", token)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def header_xml(n: int) -> str:
    return f"""<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>
</experimentalConditions>
<encoding><encodedSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>{n}</x><y>{n}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>200</x><y>200</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{n - 1}</maximum>
<center>{n // 2}</center></kspace_encoding_step_1></encodingLimits>
<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"""


def disk_acquisitions(n: int = 64) -> list[ismrmrd.Acquisition]:
    """Cartesian k-space lines of a disk (one coil)."""
    y, x = np.mgrid[:n, :n] - n // 2
    img = ((x**2 + y**2) < (n // 3) ** 2).astype(np.complex64)
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img)))
    acqs = []
    for i in range(n):
        acq = ismrmrd.Acquisition.from_array(k[i][None, :].astype(np.complex64))
        acq.idx.kspace_encode_step_1 = i
        acq.scan_counter = i
        if i == n - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acqs.append(acq)
    return acqs


def session_bytes(config: str, items=(), header: str | None = None) -> bytes:
    buf = io.BytesIO()
    w = MessageWriter(buf)
    w.write_config_file(config)
    w.write_header(header or header_xml(8))
    for item in items:
        w.write(item)
    w.write_close()
    return buf.getvalue()


def converse(port: int, payload: bytes) -> tuple[list, int]:
    """Send raw bytes; return the messages of the answer and the bytes it took."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        raw = bytearray()
        while chunk := sock.recv(65536):
            raw += chunk
    reader = MessageReader(io.BytesIO(bytes(raw)))
    out = []
    while True:
        try:
            out.append(reader.read())
        except EOFError:
            break
    return out, len(raw)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def make_server(server_factory, tmp_path):
    count = 0

    def make(**kwargs):
        nonlocal count
        kwargs.setdefault("sim_workers", 1)
        folder = tmp_path / f"sched{count}"
        count += 1
        return server_factory(http_port=0, idle_timeout_s=20, grace_s=5, scheduler_dir=folder,
                              shutdown_grace_s=5, **kwargs)  # fmt: skip

    return make


# -- access rules ----------------------------------------------------------------------------------


def test_loopback_detection():
    assert is_loopback("127.0.0.1")
    assert is_loopback("127.3.4.5")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert is_loopback("[::1]")
    for host in ("0.0.0.0", "::", "10.1.2.3", "192.168.0.4", "example.org", "localhost.evil"):
        assert not is_loopback(host), host


def test_allow_list_parsing_and_matching():
    nets = parse_allow(["10.0.0.0/8, 192.168.1.7", "fd00::/8"])
    assert [str(n) for n in nets] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert allowed("10.200.3.4", nets)
    assert allowed("192.168.1.7", nets)
    assert not allowed("192.168.1.8", nets)
    assert not allowed("127.0.0.1", nets)
    assert allowed("::ffff:10.9.9.9", nets)  # IPv4 client on a dual-stack socket
    assert allowed("fd12::1", nets)
    assert not allowed("fe80::1%eth0", nets)
    assert not allowed("/tmp/socket", nets)
    assert allowed("203.0.113.9", [])  # no list: everyone
    for bad in ("10.0.0.1/8", "10.0.0.0/33", "not-an-address", "1.2.3"):
        with pytest.raises(AccessError, match="allow-list entry"):
            parse_allow(bad)
    with pytest.raises(AccessError, match="at most 256"):
        parse_allow(" ".join(f"10.0.{i // 256}.{i % 256}" for i in range(300)))


def test_token_sources_and_checks(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\nignored second line\n")
    assert load_token(f, environ={}) == TOKEN
    assert load_token(None, environ={TOKEN_ENV: f" {TOKEN} "}) == TOKEN
    assert load_token(None, environ={}) is None
    f.write_text("short\n")
    with pytest.raises(AccessError, match="16 to"):
        load_token(f, environ={})
    with pytest.raises(AccessError, match="whitespace"):
        load_token(None, environ={TOKEN_ENV: "abcdefgh ijklmnopq"})
    with pytest.raises(AccessError, match="cannot read"):
        load_token(tmp_path / "missing", environ={})
    assert token_matches(TOKEN, TOKEN)
    assert not token_matches(TOKEN[:-1] + "X", TOKEN)
    assert not token_matches(None, TOKEN)
    assert not token_matches("", TOKEN)


def test_a_non_local_http_bind_needs_a_token(tmp_path):
    srv = MrdServer(ServerConfig(port=0, http_host="0.0.0.0", http_port=0, scheduler=False))
    with pytest.raises(AccessError, match="needs a token"):
        srv.start()
    assert srv.http is None
    assert srv._listener is None


def test_cli_refuses_a_non_local_http_bind_without_a_token(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if k != TOKEN_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "gadgets.serve.server", "--port", "0", "--http-host", "0.0.0.0",
         "--http-port", "0", "--no-scheduler"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "needs a token" in proc.stderr


def test_requests_without_the_token_are_refused_on_a_non_local_bind(make_server):
    srv = make_server(http_host="0.0.0.0", http_token=TOKEN, scheduler=False)
    address = ("127.0.0.1", srv.http.address[1])
    for path in ("/api/status", "/metrics", "/api/previews/1.png"):
        status, headers, _ = http(address, path)
        assert status == 401, path
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert http(address, path, token="wrong-token-wrong-token")[0] == 401
    assert srv.http.unauthorised == 6
    assert http(address, "/api/status", TOKEN)[0] == 200
    assert http(address, "/metrics", TOKEN)[0] == 200
    # the static page and the health check hold no data and need no token
    status, headers, body = http(address, "/")
    assert status == 200
    assert b"/static/status.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    status, _, body = http(address, "/healthz")
    assert (status, body) == (200, b"ok\n")


def test_http_rejects_what_it_does_not_serve(make_server):
    srv = make_server(scheduler=False)
    address = srv.http.address
    assert http(address, "/nope")[0] == 404
    assert http(address, "/static/../server.py")[0] == 404  # paths are never opened
    assert http(address, "/api/previews/99.png")[0] == 404
    assert http(address, "/" + "a" * 3000)[0] == 414
    assert http(address, "/api/status", method="POST")[0] == 501
    assert http(address, "/api/status", method="HEAD")[0] == 200
    # garbage on the socket leaves the server serving
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(b"\x00\xff garbage\r\n\r\n")
        sock.recv(1024)
    assert http(address, "/healthz")[0] == 200


def healthy(address) -> bool:
    try:
        return http(address, "/healthz")[0] == 200
    except (ConnectionError, http_client.RemoteDisconnected):
        return False


def test_a_slow_client_is_hung_up_on_and_frees_its_slot():
    from gadgets.serve.status import StatusBoard, StatusHttpServer

    class Idle:  # the board reads nothing for /healthz
        scheduler = store = address = None

    http_server = StatusHttpServer(StatusBoard(Idle()), port=0, max_requests=1,
                                   request_timeout_s=0.5)  # fmt: skip
    http_server.start()
    try:
        with socket.create_connection(http_server.address, timeout=5) as slow:
            slow.sendall(b"GET /healthz HT")  # and never the rest
            time.sleep(0.2)
            # a head still arriving holds no handler: the one slot still answers
            assert healthy(http_server.address)
            start = time.monotonic()
            assert slow.recv(1024) == b""  # hung up on
            assert time.monotonic() - start < 3
        assert wait_for(lambda: healthy(http_server.address), timeout=5)
    finally:
        http_server.stop()


def test_the_mrd_allow_list_refuses_other_clients(make_server):
    srv = make_server(allow=parse_allow("10.0.0.0/8"), scheduler=False)
    msgs, _ = converse(srv.address[1], session_bytes("passthrough"))
    assert msgs[0].id == MessageId.TEXT
    assert "127.0.0.1 is not allowed" in msgs[0].value
    assert msgs[-1].id == MessageId.CLOSE
    m = metrics(srv.http.address)
    assert m[("mr0_mrd_refused_connections_total", (("reason", "allowlist"),))] == 1
    assert m[("mr0_mrd_sessions_total", (("outcome", "ok"),))] == 0

    ok = make_server(allow=parse_allow("127.0.0.0/8"), scheduler=False)
    msgs, _ = converse(ok.address[1], session_bytes("passthrough"))
    assert [m.id for m in msgs] == [MessageId.CLOSE]


# -- metrics ---------------------------------------------------------------------------------------


def test_metrics_count_jobs_sessions_and_bytes(make_server):
    srv = make_server()
    sched = srv.scheduler
    done = [sched.submit("noop", {"sleep_s": 0.05}) for _ in range(3)]
    failed = sched.submit("fail", {"message": "on purpose"}, max_attempts=1)
    for job in [*done, failed]:
        assert sched.wait(job, timeout_s=60).state in ("done", "failed")

    acqs = disk_acquisitions(16)
    payloads = [session_bytes("passthrough", acqs[:5]), session_bytes("default", acqs,
                                                                      header_xml(16))]  # fmt: skip
    received = sent = 0
    for payload in payloads:
        msgs, nbytes = converse(srv.address[1], payload)
        assert msgs[-1].id == MessageId.CLOSE
        received += len(payload)
        sent += nbytes
    bad = session_bytes("no_such_chain")
    msgs, nbytes = converse(srv.address[1], bad)
    assert "ERROR" in msgs[0].value
    received += len(bad)  # read to the close: FIRE parameters could still have chosen a chain
    sent += nbytes

    def settled():  # the session threads count their end after the client saw the close
        m = metrics(srv.http.address)
        return m if m[("mr0_mrd_sessions_total", (("outcome", "error"),))] == 1 else None

    m = wait_for(settled)
    jobs = {dict(k[1])["state"]: v for k, v in m.items() if k[0] == "mr0_scheduler_jobs"}
    assert jobs["done"] == 3
    assert jobs["failed"] == 1
    assert jobs["queued"] == 0
    assert jobs["running"] == 0
    assert m[("mr0_scheduler_queue_wait_seconds_count", (("kind", "batch"),))] == 4
    assert m[("mr0_scheduler_run_seconds_count", (("function", "noop"),))] == 3
    assert m[("mr0_scheduler_run_seconds_sum", (("function", "noop"),))] >= 3 * 0.05
    assert ("mr0_scheduler_run_seconds_count", (("function", "fail"),)) not in m
    assert m[("mr0_mrd_sessions_total", (("outcome", "ok"),))] == 2
    assert m[("mr0_mrd_sessions_total", (("outcome", "crash"),))] == 0
    assert m[("mr0_mrd_sessions_active", ())] == 0
    assert m[("mr0_mrd_received_bytes_total", ())] == received
    assert m[("mr0_mrd_sent_bytes_total", ())] == sent
    # the JSON API agrees
    status = json.loads(http(srv.http.address, "/api/status")[2])
    assert status["scheduler"]["counts"]["done"] == 3
    assert status["mrd"]["received_bytes"] == received
    recent = {j["job"]: j for j in status["scheduler"]["recent"]}
    assert recent[failed]["state"] == "failed"
    assert "on purpose" in recent[failed]["error"]
    assert all(recent[j]["run_s"] >= 0.05 and recent[j]["wait_s"] >= 0 for j in done)


def test_the_page_lists_the_scheduler_calls(make_server):
    """Sessions' calls (no store record) show with their function, state, times and error."""
    srv = make_server()
    sched = srv.scheduler
    ok = sched.call("echo", {"x": 1}, {"sleep_s": 0.05})
    ok.result(timeout=60)
    bad = sched.call("fail", {}, {"message": "on purpose", "error": "value"})
    with pytest.raises(Exception, match="on purpose"):
        bad.result(timeout=60)
    status = json.loads(http(srv.http.address, "/api/status")[2])
    calls = {c["call"]: c for c in status["scheduler"]["calls"]}
    assert calls[ok.id]["function"] == "echo"
    assert calls[ok.id]["state"] == "done"
    assert calls[ok.id]["run_s"] >= 0.05
    assert calls[bad.id]["state"] == "failed"
    assert "on purpose" in calls[bad.id]["error"]
    # calls are not jobs: the store's recent jobs do not list them
    assert ok.id not in {j["job"] for j in status["scheduler"]["recent"]}


def test_gpu_metrics_follow_nvml(make_server):
    gpus = [FakeGpu(80 * GB, used_bytes=3 * GB, utilization=42, name="Fake H100"),
            FakeGpu(24 * GB, used_bytes=0, utilization=0, name="Fake L4")]  # fmt: skip
    srv = make_server(gpu_monitor=GpuMonitor(interval_s=0, nvml=FakeNvml(gpus)), sim_workers=0)
    m = metrics(srv.http.address)
    labels = (("gpu", "cuda:0"), ("name", "Fake H100"))
    assert m[("mr0_gpu_memory_used_bytes", labels)] == 3 * GB
    assert m[("mr0_gpu_memory_total_bytes", labels)] == 80 * GB
    assert m[("mr0_gpu_utilization_ratio", labels)] == pytest.approx(0.42)
    gpus[0].used_bytes, gpus[0].utilization = 10 * GB, 97
    m = metrics(srv.http.address)
    assert m[("mr0_gpu_memory_used_bytes", labels)] == 10 * GB
    assert m[("mr0_gpu_utilization_ratio", labels)] == pytest.approx(0.97)
    assert m[("mr0_gpu_memory_total_bytes", (("gpu", "cuda:1"), ("name", "Fake L4")))] == 24 * GB


def test_without_scheduler_the_page_still_answers(make_server):
    srv = make_server(scheduler=False)
    status = json.loads(http(srv.http.address, "/api/status")[2])
    assert status["scheduler"] is None
    assert isinstance(status["gpus"], list)
    m = metrics(srv.http.address)
    assert not [k for k in m if k[0] == "mr0_scheduler_jobs"]


# -- previews --------------------------------------------------------------------------------------


def test_thumbnail_scales_and_subsamples():
    pixels = np.zeros((2, 3, 400, 320), np.complex64)
    pixels[0, 1, 100:300, 50:250] = 2 + 2j  # channel 0, middle slice
    pixels[1] = 1e6  # another channel must not matter
    thumb = thumbnail(pixels, size=160)
    assert thumb.dtype == np.uint8
    assert thumb.shape == (134, 107)
    assert thumb.max() == 255
    assert thumb[0, 0] == 0
    assert thumb[34:99, 17:83].min() == 255
    assert thumbnail(np.full((1, 1, 4, 4), np.nan, np.float32)).max() == 0
    assert thumbnail(np.zeros((0, 1, 4, 4))).shape == (1, 1)


def test_latest_images_become_thumbnails(make_server):
    srv = make_server(scheduler=False, previews=2)
    msgs, _ = converse(srv.address[1], session_bytes("default", disk_acquisitions(64),
                                                     header_xml(64)))  # fmt: skip
    images = [m.value for m in msgs if m.id == MessageId.IMAGE]
    assert len(images) == 1
    status = json.loads(http(srv.http.address, "/api/status")[2])
    (preview,) = status["previews"]
    assert preview["config"] == "default"
    assert preview["matrix"][:2] == [64, 64]
    code, headers, png = http(srv.http.address, preview["url"])
    assert code == 200
    assert headers["Content-Type"] == "image/png"
    shown = matplotlib.image.imread(io.BytesIO(png))[..., 0]  # [y, x], 0..1
    expected = np.abs(images[0].data[0, 0])
    assert shown.shape == expected.shape
    # the disk is bright and the corners are dark, as in the image sent back
    assert np.corrcoef(shown.ravel(), expected.ravel())[0, 1] > 0.99
    # three more series: only the newest two stay (images the server made: a client's own
    # images are never shown)
    for series in (5, 6, 7):
        buf = io.BytesIO()
        w = MessageWriter(buf)
        w.write_config_file("default")
        w.write_header(header_xml(8))
        w.write_text(json.dumps({"ImageFinish.series_index": series}))
        for acq in disk_acquisitions(8):
            w.write(acq)
        w.write_close()
        converse(srv.address[1], buf.getvalue())
    kept = json.loads(http(srv.http.address, "/api/status")[2])["previews"]
    assert [p["series"] for p in kept] == [7, 6]
    assert http(srv.http.address, preview["url"])[0] == 404  # dropped


def test_previews_can_be_switched_off(make_server):
    srv = make_server(scheduler=False, previews=0)
    msgs, _ = converse(srv.address[1], session_bytes("default", disk_acquisitions(8)))
    assert [m for m in msgs if m.id == MessageId.IMAGE]  # an image the server made
    assert json.loads(http(srv.http.address, "/api/status")[2])["previews"] == []


# -- the page in a real browser --------------------------------------------------------------------


def _chromium():
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return browser, driver


def test_status_page_in_a_headless_browser(make_server, tmp_path):
    """Debian's chromium shows the fake GPUs, finished jobs and a thumbnail; saves a screenshot.

    The screenshot goes to ``$MR0_TEST_ARTIFACTS`` (default ``test-artifacts/``).
    Skipped without chromium and chromedriver, unless ``MR0_REQUIRE_BROWSER=1`` (CI sets it).
    """
    import os

    browser, driver_path = _chromium()
    if browser is None or driver_path is None:
        if os.environ.get("MR0_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium and chromedriver are required (apt-get install chromium "
                        "chromium-driver)")  # fmt: skip
        pytest.skip("chromium / chromedriver are not installed")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    gpus = [FakeGpu(80 * GB, used_bytes=21 * GB, utilization=63, name="Fake H100 80GB"),
            FakeGpu(24 * GB, used_bytes=2 * GB, utilization=7, name="Fake L4")]  # fmt: skip
    srv = make_server(gpu_monitor=GpuMonitor(interval_s=0.5, nvml=FakeNvml(gpus)),
                      http_token=TOKEN, sim_workers=1)  # fmt: skip
    jobs = [srv.scheduler.submit("noop", {"sleep_s": 0.05}) for _ in range(3)]
    for job in jobs:
        assert srv.scheduler.wait(job, timeout_s=60).state == "done"
    converse(srv.address[1], session_bytes("default", disk_acquisitions(64), header_xml(64)))
    call = srv.scheduler.call("echo", {"x": 1})
    call.result(timeout=60)
    srv.scheduler.submit("noop", {"sleep_s": 30})  # one running while the page is up

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(arg)  # fmt: skip
    chrome = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        host, port = srv.http.address
        chrome.get(f"http://{host}:{port}/")
        # without the token the page asks for it
        form = WebDriverWait(chrome, 20).until(
            lambda d: (
                d.find_element(By.ID, "token-form").is_displayed()
                and d.find_element(By.ID, "token-form")
            )
        )
        chrome.find_element(By.ID, "token").send_keys(TOKEN)
        form.submit()
        WebDriverWait(chrome, 20).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == "true"
        )
        cards = WebDriverWait(chrome, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#gpus .gpu")
        )
        assert len(cards) == 2
        assert "Fake H100 80GB" in cards[0].text
        assert "63 %" in cards[0].text
        assert "21.0 GiB of 80.0 GiB" in cards[0].text
        assert "Fake L4" in cards[1].text
        done = WebDriverWait(chrome, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#recent tr[data-state='done']")
        )
        assert {row.get_attribute("data-job") for row in done} >= set(jobs)
        calls = WebDriverWait(chrome, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#calls tr[data-state='done']")
        )
        assert [row.get_attribute("data-call") for row in calls] == [call.id]
        assert "echo" in calls[0].text
        WebDriverWait(chrome, 20).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#running tbody tr:not(.empty)")
        )
        # the thumbnail is loaded (fetched with the token, drawn by the browser)
        WebDriverWait(chrome, 20).until(
            lambda d: d.execute_script(
                "const i = document.querySelector('#previews img');"
                "return i !== null && i.complete && i.naturalWidth === 64;"
            )
        )
        artifacts = Path(os.environ.get("MR0_TEST_ARTIFACTS", "test-artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        shot = artifacts / "status_page.png"
        assert chrome.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    finally:
        chrome.quit()

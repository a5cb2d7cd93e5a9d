"""Benchmark: MRD server throughput over loopback against a bare socket, in the same run.

A Cartesian dataset of 256 lines × 32 coils × 256 samples (complex64, 16.8 MB of samples) is
sent by a client (its own sender and receiver threads) to ``mr0-server`` running in a separate
process, through

* ``passthrough``: every acquisition comes back (16.8 MB each way);
* ``default``: prewhitening, FFT, coil combination, one image back;

and, as the ceiling, the same bytes through a bare TCP echo (a separate process that
``recv_into``s and ``sendall``s them back) over the same loopback. Throughput is the dataset's
wire bytes divided by the wall time from the first byte sent until the server has closed the
connection, best of ``--repeat`` rounds (each round runs every path once, so that a slow spell
of the machine hits them all). Ratios to the ceiling are given twice: best over best, and the
median (with quartiles) of each round's ratio, which drifts less on a busy machine. The client
receives raw bytes without parsing them, for the server and the echo alike. The machine is
printed with the results.

python-ismrmrd-server is not measured: it is not on PyPI (a GitHub script), and these machines
reach only package registries.

Preview latency (issue 22, item 7): one warm ``mr0-server`` (its defaults: simulations as
scheduler jobs in one worker process; JSON logs at level info) answers ``mr0_preview`` sessions
of the embedded default sequence (``mr0core/data/sequences/gre.seq``, PyPulseq's 64×64 spoiled
GRE, i.e. FLASH) on the 64² ``brain`` twin, as ``mr0-client --preview`` sends it. After one warm-up
session, each round runs

* a session from this process (config, JSON job, close; read until the close message);
* ``mr0-client --preview gre.seq --phantom brain --size 64`` as a subprocess (wall clock from
  its start to its exit: interpreter start, imports, session, writing the image).

The server-side time is the ``seconds`` of the server's ``closed`` log event of each session
(from accepting the connection to closing it). Medians (and ranges) over ``--preview-rounds``
rounds are printed beside the targets: server side ≤ 0.5 s, client end to end ≤ 0.8 s. The
client's own share (end to end minus the server side of the same session) varies less with the
load of the machine than either; ``mr0-client --help`` shows the client's start-up alone.

    python scripts/bench_server.py [--repeat 20] [--preview-rounds 5] [--only preview]
                                   [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LINES, COILS, SAMPLES = 256, 32, 256

PREVIEW_SEQ = REPO / "mr0core" / "data" / "sequences" / "gre.seq"
PREVIEW_PHANTOM, PREVIEW_SIZE = "brain", 64
PREVIEW_TARGETS_S = {"server": 0.5, "client": 0.8}  # issue 22, item 7


def _dataset() -> tuple[str, list[Any]]:
    """Header XML and acquisitions of the benchmark dataset (random noise, flagged lines)."""
    import ismrmrd

    header = f"""<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>123000000</H1resonanceFrequency_Hz>
</experimentalConditions>
<acquisitionSystemInformation><receiverChannels>{COILS}</receiverChannels>
</acquisitionSystemInformation>
<encoding><encodedSpace><matrixSize><x>{SAMPLES}</x><y>{LINES}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>256</x><y>256</y><z>5</z></fieldOfView_mm></encodedSpace>
<reconSpace><matrixSize><x>{SAMPLES}</x><y>{LINES}</y><z>1</z></matrixSize>
<fieldOfView_mm><x>256</x><y>256</y><z>5</z></fieldOfView_mm></reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{LINES - 1}</maximum>
<center>{LINES // 2}</center></kspace_encoding_step_1></encodingLimits>
<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"""
    rng = np.random.default_rng(0)
    acqs = []
    for i in range(LINES):
        data = rng.standard_normal((COILS, SAMPLES * 2), dtype=np.float32).view(np.complex64)
        acq = ismrmrd.Acquisition.from_array(data)
        acq.idx.kspace_encode_step_1 = i
        acq.scan_counter = i
        acq.center_sample = SAMPLES // 2
        if i == 0:
            acq.set_flag(ismrmrd.ACQ_FIRST_IN_SLICE)
        if i == LINES - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acq.read_dir[0] = acq.phase_dir[1] = acq.slice_dir[2] = 1.0
        acqs.append(acq)
    return header, acqs


def _wire(header: str, acqs: list[Any], config: str) -> bytes:
    from gadgets.wire.framing import MessageWriter

    buf = io.BytesIO()
    w = MessageWriter(buf)
    w.write_config_file(config)
    w.write_header(header)
    for acq in acqs:
        w.write_acquisition(acq)
    w.write_close()
    return buf.getvalue()


def _echo_server(port_file: str) -> None:
    """Bare TCP echo: the ceiling."""
    srv = socket.create_server(("127.0.0.1", 0))
    Path(port_file).write_text(str(srv.getsockname()[1]))
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    while True:
        conn, _ = srv.accept()
        with conn:
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                conn.sendall(view[:n])


def _start(cmd: list[str], port_file: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)


def _wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def _session(port: int, payload: bytes) -> tuple[float, int]:
    """Send ``payload`` and half-close; receive raw bytes until the peer closes.

    The receiving side does no parsing, for the server and the echo alike, so that the ratio
    measures the server, not the client.
    """
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    got = [0]

    def receive() -> None:
        buf = bytearray(1 << 20)
        while True:
            n = sock.recv_into(buf)
            if not n:
                return
            got[0] += n

    t0 = time.perf_counter()
    receiver = threading.Thread(target=receive)
    receiver.start()
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    receiver.join()
    elapsed = time.perf_counter() - t0
    sock.close()
    return elapsed, got[0]


def _client_command() -> list[str]:
    """``mr0-client`` as installed beside this interpreter (else ``python -m gadgets.wire.client``).

    The list is the command and its first arguments.
    """
    script = Path(sys.executable).parent / "mr0-client"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "gadgets.wire.client"]


def _preview_session(port: int, job: dict[str, Any]) -> tuple[float, int]:
    """Run one ``mr0_preview`` session from this process; return its wall time and images."""
    from gadgets.wire.framing import MessageId, MessageReader, MessageWriter

    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("mr0_preview")
        writer.write_text(json.dumps(job))
        writer.write_close()
        images = 0
        for msg in MessageReader(sock):
            if msg.id == MessageId.TEXT and str(msg.value).startswith("ERROR"):
                raise RuntimeError(f"the server answered the preview with {msg.value}")
            images += msg.id == MessageId.IMAGE
    return time.perf_counter() - t0, images


class _ServerLog:
    """The ``closed`` events' ``seconds`` of ``mr0_preview`` sessions in a JSON-lines log."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def preview_seconds(self) -> list[float]:
        previews: set[str] = set()
        seconds: list[float] = []
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line that is not a log record (a warning from a library)
            if entry.get("event") == "chain" and entry.get("config") == "mr0_preview":
                previews.add(entry["session"])
            elif entry.get("event") == "closed" and entry.get("session") in previews:
                seconds.append(float(entry["seconds"]))
        return seconds

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[float]:
        """Wait until ``count`` preview sessions have closed (the log line follows the close)."""
        deadline = time.monotonic() + timeout_s
        while len(got := self.preview_seconds()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(got)} of {count} preview sessions logged in {self.path}")
            time.sleep(0.02)
        return got


def _median_row(values: list[float], target: float | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"median_s": float(np.median(values)), "min_s": min(values),
                           "max_s": max(values), "runs": [round(v, 3) for v in values]}  # fmt: skip
    if target is not None:
        row["target_s"] = target
        row["met"] = row["median_s"] <= target
    return row


def bench_preview(rounds: int, server_args: list[str], tmp: Path) -> dict[str, Any]:
    """Preview latency against one warm ``mr0-server``: server side, ``mr0-client`` end to end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp / "server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "gadgets.serve.server", "--port", str(port), "--log-level", "info",
           "--log-format", "json", *server_args]  # fmt: skip
    job = {"seq": PREVIEW_SEQ.read_text(), "phantom": PREVIEW_PHANTOM, "size": PREVIEW_SIZE}
    client = [*_client_command(), "--preview", str(PREVIEW_SEQ), "--phantom", PREVIEW_PHANTOM,
              "--size", str(PREVIEW_SIZE), "-p", str(port), "-q"]  # fmt: skip
    log = _ServerLog(log_path)
    with log_path.open("w") as log_file:
        server = subprocess.Popen(cmd, env=env, stderr=log_file)
        try:
            _wait_port(port)
            _, images = _preview_session(port, job)  # warm-up: worker start, first imports
            if images < 1:
                raise RuntimeError("the warm-up preview returned no image")
            help_s: list[float] = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run([*_client_command(), "--help"], check=True,
                               stdout=subprocess.DEVNULL, env=env)  # fmt: skip
                help_s.append(time.perf_counter() - t0)
            in_process: list[float] = []
            end_to_end: list[float] = []
            server_s: list[float] = []
            overhead: list[float] = []
            for i in range(rounds):
                # one session from here, then the client: a slow spell of the machine hits both
                elapsed, images = _preview_session(port, job)
                if images < 1:
                    raise RuntimeError("a preview returned no image")
                in_process.append(elapsed)
                server_s.append(log.wait_for(2 + 2 * i)[-1])
                out = tmp / f"preview{i}.h5"
                t0 = time.perf_counter()
                done = subprocess.run([*client, "-o", str(out)], env=env, capture_output=True,
                                      text=True, timeout=300)  # fmt: skip
                end_to_end.append(time.perf_counter() - t0)
                if done.returncode != 0 or not out.is_file():
                    raise RuntimeError(f"mr0-client failed ({done.returncode}): {done.stderr}")
                server_s.append(log.wait_for(3 + 2 * i)[-1])
                overhead.append(end_to_end[-1] - server_s[-1])  # this session's own server time
        finally:
            server.terminate()
            server.wait(60)
    return {
        "sequence": str(PREVIEW_SEQ.relative_to(REPO)),
        "phantom": PREVIEW_PHANTOM,
        "size": PREVIEW_SIZE,
        "server_args": server_args,
        "server_side": _median_row(server_s, PREVIEW_TARGETS_S["server"]),
        "session_from_python": _median_row(in_process),
        "client_end_to_end": _median_row(end_to_end, PREVIEW_TARGETS_S["client"]),
        "client_overhead": _median_row(overhead),
        "client_help": _median_row(help_s),
    }


def _print_preview(res: dict[str, Any]) -> None:
    print(f"\npreview: {res['sequence']} (64x64 FLASH) on the {res['size']}^2 {res['phantom']} "
          f"twin, one warm mr0-server {' '.join(res['server_args'])}".rstrip())  # fmt: skip
    print(f"{'':<36}{'median s':>9}{'min':>7}{'max':>7}{'target':>8}  met")
    names = {
        "server_side": "server side (log 'closed' seconds)",
        "session_from_python": "session from python (no start-up)",
        "client_end_to_end": "mr0-client --preview, end to end",
        "client_overhead": "  of which not the server's",
        "client_help": "mr0-client --help (start-up only)",
    }
    for key, name in names.items():
        row = res[key]
        target = (
            f"{row['target_s']:>8.2f}  {'yes' if row['met'] else 'NO'}" if "target_s" in row else ""
        )
        print(f"{name:<36}{row['median_s']:>9.3f}{row['min_s']:>7.3f}{row['max_s']:>7.3f}{target}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--preview-rounds", type=int, default=5,
                        help="timed preview rounds after one warm-up (default 5)")  # fmt: skip
    parser.add_argument(
        "--server-args", default="", help="more mr0-server arguments for the preview (quoted)"
    )
    parser.add_argument("--only", choices=("throughput", "preview"), help="run one part")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.echo:
        _echo_server(opts.echo)
        return 0
    if opts.preview_rounds < 3:
        parser.error("--preview-rounds must be >= 3 (a median of at least three)")
    import tempfile

    machine = benchlib.machine()
    print(f"machine: {machine}")
    report: dict[str, Any] = {"machine": machine}
    if opts.only != "preview":
        report["rows"] = bench_throughput(opts.repeat)
    if opts.only != "throughput":
        with tempfile.TemporaryDirectory() as tmp:
            report["preview"] = bench_preview(opts.preview_rounds, shlex.split(opts.server_args),
                                              Path(tmp))  # fmt: skip
        _print_preview(report["preview"])
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2))
    return 0


def bench_throughput(repeat: int) -> dict[str, dict[str, Any]]:
    """Throughput of passthrough and default against a bare socket; print the table."""
    import tempfile

    header, acqs = _dataset()
    print(f"dataset: {LINES} lines x {COILS} coils x {SAMPLES} samples")
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "echo_port"
        echo = _start([sys.executable, __file__, "--echo", str(port_file)])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = _start([sys.executable, "-m", "gadgets.serve.server", "--port", str(port),
                         "--log-level", "error"])  # fmt: skip
        try:
            for _ in range(200):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.05)
            echo_port = int(port_file.read_text())
            _wait_port(echo_port)
            _wait_port(port)
            paths = (
                ("bare socket (ceiling)", None, echo_port),
                ("passthrough", "passthrough", port),
                ("default (recon)", "default", port),
            )
            payloads = {name: _wire(header, acqs, config or "passthrough")
                        for name, config, _ in paths}  # fmt: skip
            times: dict[str, list[float]] = {name: [] for name, _, _ in paths}
            backs: dict[str, int] = {}
            # rounds interleave the paths, so that a slow spell of the machine hits all of them
            for _ in range(repeat):
                for name, _, target in paths:
                    elapsed, backs[name] = _session(target, payloads[name])
                    times[name].append(elapsed)
            rows: dict[str, dict[str, Any]] = {}
            for name, _, _ in paths:
                best = min(times[name])
                rows[name] = {
                    "seconds": best,
                    "bytes_sent": len(payloads[name]),
                    "bytes_back": backs[name],
                    "mb_per_s": len(payloads[name]) / best / 1e6,
                }
        finally:
            server.terminate()
            echo.kill()
            server.wait(30)
            echo.wait(30)
    bare = "bare socket (ceiling)"
    ceiling = rows[bare]["mb_per_s"]
    print(f"{'path':<24}{'MB sent':>9}{'MB back':>9}{'s':>8}{'MB/s':>9}{'ratio':>7}"
          f"{'median':>8}{'IQR':>12}")  # fmt: skip
    for name, row in rows.items():
        row["ratio"] = row["mb_per_s"] / ceiling
        # the same bytes each way: a round's ratio is the echo's time over the path's time
        per_round = np.array(times[bare]) / np.array(times[name])
        q1, median, q3 = np.percentile(per_round, [25, 50, 75])
        row["ratio_median"], row["ratio_iqr"] = float(median), [float(q1), float(q3)]
        print(f"{name:<24}{row['bytes_sent'] / 1e6:>9.1f}{row['bytes_back'] / 1e6:>9.1f}"
              f"{row['seconds']:>8.3f}{row['mb_per_s']:>9.0f}{row['ratio']:>7.2f}"
              f"{median:>8.2f}   {q1:.2f}-{q3:.2f}")  # fmt: skip
    print("ratio: best MB/s over the best echo MB/s; median, IQR: of the rounds' ratios")
    print("python-ismrmrd-server: not measured (not on PyPI; no network beyond package registries)")
    return rows


if __name__ == "__main__":
    sys.exit(main())

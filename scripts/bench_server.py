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

    python scripts/bench_server.py [--repeat 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
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
    from gadgets.protocol import MessageWriter

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.echo:
        _echo_server(opts.echo)
        return 0
    import tempfile

    header, acqs = _dataset()
    machine = benchlib.machine()
    print(f"machine: {machine}")
    print(f"dataset: {LINES} lines x {COILS} coils x {SAMPLES} samples")
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "echo_port"
        echo = _start([sys.executable, __file__, "--echo", str(port_file)])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = _start([sys.executable, "-m", "gadgets.server", "--port", str(port),
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
            for _ in range(opts.repeat):
                for name, _, target in paths:
                    elapsed, backs[name] = _session(target, payloads[name])
                    times[name].append(elapsed)
            rows: dict[str, dict[str, float]] = {}
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
    if opts.json:
        opts.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

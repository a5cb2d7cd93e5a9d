"""Soak test of ``mr0-server``: N clients for M minutes of mixed valid and hostile sessions.

Starts ``mr0-server`` as a subprocess on a free loopback port with its own temporary ``--store``
and ``--save-dir`` and ``--max-per-peer 0`` (so that all the loopback clients fit), or connects
to a running server (``--host``/``--port``; give ``--server-pid`` to sample its memory).
``--clients`` threads (default 8) then run sessions back to back for ``--minutes`` (default 10)
or ``--seconds``. Each client takes the next session kind from one shared, shuffled cycle, so
that the first cycle runs every kind once whatever the number of clients, and the run does not
end before that first cycle has been handed out. One cycle holds each valid kind twice and each
hostile kind once. ``--kinds recon,repetitions`` runs only the kinds named (to find which kind
makes the memory grow).

Valid sessions (the answer must have no ``ERROR`` and end with a close message):

``recon``
    Chain ``default``: Cartesian k-space of a 32×32 Shepp–Logan image
    (:func:`mr0core.phantom.builtin.shepp_logan`) seen by 4 Gaussian coils, one acquisition per
    line. The image that comes back must correlate with the root sum of squares of the coil
    images (normalised correlation ≥ 0.99).
``preview``
    Chain ``mr0_preview``: ``mr0core/data/sequences/gre.seq`` (64×64 GRE) simulated on the
    16×16 Shepp–Logan twin; one image or more must come back.
``retrieve``
    The ``recon`` session sent as a background job (``{"background": true}``), then chain
    ``mr0_retrieve`` with the job id (waiting up to ``--session-timeout``); the stored image
    must pass the ``recon`` check. Its latency is both sessions together.

Hostile sessions, one per input row of issue 21 that reaches the MRD port (the answer must be an
``ERROR`` text naming the bound, then a close message; never a reset):

``shapes``      ``mr0_preview`` with a ``.seq`` of 40 ``[SHAPES]`` of 2²⁶ samples (2.0 kB)
``adc``         ``mr0_preview`` with one ADC of 5·10⁷ samples (0.2 kB)
``repetitions`` ``mr0_preview`` with 300 000 repetitions (an RF block and a 4-sample ADC block
                each; 12.8 MB, the costliest session of the cycle)
``header``      chain ``default``, header matrix 512×512×128, one 1-sample acquisition
``idle``        connect and send nothing (answered at the server's preamble deadline)
``trickle``     config and header, then an acquisition one byte per ``--trickle-s`` (0.2 s),
                far under the server's ``--min-rate``
``deep_json``   JSON parameters nested 10⁵ deep
``big_int``     a JSON integer of 5000 digits
``client_image`` an image sent to chain ``default``
``framing``     in turn: an unknown message id, a length of 2³²−1, a stream cut inside a message,
                an acquisition before the header, a text that is not UTF-8, a config name that is
                a path

and ``nan`` (NaN samples in one line of a 16×16 ``default`` session), whose expected answer is
one ``WARNING`` text and an image, no ``ERROR``.

A server this script starts gets ``--preamble-timeout 5 --rate-window 3`` (``--preamble-timeout``
and ``--rate-window`` here), so that ``idle`` and ``trickle`` sessions cost seconds rather than
the defaults' 30 s and 10 s; the bounds are the same code whatever their values. Its log goes to
``server.log`` in the temporary folder (``--keep`` keeps the folder), and lines of sessions that
crashed (``chain_crash``, a traceback) count as unexpected failures.

Every ``--sample-s`` (default 5) the resident memory (``VmRSS`` from ``/proc/<pid>/status``) of
the server's whole process tree (the server and every descendant: scheduler workers, the
resource tracker), found by scanning ``/proc/*/stat`` for parent ids, is sampled, and a progress
line is printed. At the end it prints, and with ``--json F`` writes:

* the resident memory over time (a table: minute, the tree's largest and last sample, the
  server process's own last sample; MB = 10⁶ bytes);
* p50/p99 latency of the valid sessions (connect to close), per kind and all together;
* per hostile kind: sessions, how many were answered as expected, and the p50 time to the answer;
* unexpected failures: a valid session that failed, a hostile one answered otherwise (no
  ``ERROR``, the wrong bound, a reset), server crashes;
* the plateau verdict: the largest sample of the last third of the run is at most
  ``--plateau-ratio`` (1.1) times the largest of the middle third, and no sample exceeds
  ``--rss-bound-mb`` (3000 MB); with fewer than 3 samples in a third it is not judged;
* the machine: ``nproc``, the CPU model, the load averages before and after; the repository's
  commit when the run started (and whether tracked files differed from it).

Exit status: 0 when nothing unexpected happened and the memory plateaued (or was not judged),
1 when a session failed unexpectedly or the memory did not plateau, 2 for bad arguments or a
server that did not start.

    python scripts/soak_server.py --clients 8 --minutes 10 --json /tmp/soak.json
    python scripts/soak_server.py --port 9002 --server-pid "$(pgrep -f mr0-server)" --minutes 5
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import random
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)
import ismrmrd
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gadgets.wire.framing import (  # noqa: E402  (after the repository is on sys.path)
    Limits,
    MessageId,
    MessageReader,
    MessageWriter,
    ProtocolError,
)
from mr0core.phantom.builtin import shepp_logan  # noqa: E402

GRE_SEQ = REPO / "mr0core" / "data" / "sequences" / "gre.seq"
MB = 1_000_000
KB = 1024

# -- the server's process tree (Linux /proc) ------------------------------------------------------


class ProcError(RuntimeError):
    """``/proc`` cannot be read for the process asked about (not Linux, or no such process)."""


def _status_kb(pid: int, key: str) -> int | None:
    """``key`` (``VmRSS``, ``VmHWM``) of ``/proc/<pid>/status`` in KiB; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return 0  # a zombie has no memory lines


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) is in parentheses and may hold spaces or ')'
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def tree_pids(root: int) -> list[int]:
    """Return ``root`` and all its descendants (a scan of ``/proc``; root first).

    Raises
    ------
    ProcError
        ``/proc/<root>`` does not exist.
    """
    if not os.path.exists(f"/proc/{root}/stat"):
        raise ProcError(f"no process {root} in /proc")
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ppid = _parent(int(name))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_rss(root: int) -> tuple[int, int]:
    """Resident memory of ``root``'s process tree: (bytes, number of processes)."""
    total, count = 0, 0
    for pid in tree_pids(root):
        kb = _status_kb(pid, "VmRSS")
        if kb is not None:
            total += kb * KB
            count += 1
    return total, count


def reset_peak(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (``clear_refs`` 5); False if refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class TreePeak:
    """Peak memory growth of a process tree while a ``with`` block runs.

    On entry each process of the tree gets its peak (``VmHWM``) reset to its RSS, which is
    noted as its baseline; a thread then walks the tree every ``interval_s`` and keeps each
    process's largest ``VmHWM`` (processes that appear later have baseline 0). The growth is
    the sum over processes of (peak − baseline), in bytes: at least the growth of the tree's
    total, since the processes' peaks need not coincide. A process that starts and ends
    between two walks is missed; the kernel's ``VmHWM`` catches every peak of the others.

    Attributes
    ----------
    growth : int
        Bytes, valid after the block.
    peaks : dict[int, tuple[int, int]]
        Per pid: (baseline, peak) in bytes.
    exact : bool
        Every peak could be reset (else a baseline is the peak since that process started).
    """

    def __init__(self, root: int, interval_s: float = 0.05) -> None:
        self.root = root
        self.interval_s = interval_s
        self.peaks: dict[int, tuple[int, int]] = {}
        self.exact = True
        self.growth = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-peak", daemon=True)

    def _walk(self) -> None:
        try:
            pids = tree_pids(self.root)
        except ProcError:
            return
        for pid in pids:
            hwm = _status_kb(pid, "VmHWM")
            if hwm is None:
                continue
            base, peak = self.peaks.get(pid, (0, 0))
            self.peaks[pid] = (base, max(peak, hwm * KB))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._walk()

    def __enter__(self) -> TreePeak:
        for pid in tree_pids(self.root):
            self.exact &= reset_peak(pid)
            rss = _status_kb(pid, "VmRSS")
            if rss is not None:
                self.peaks[pid] = (rss * KB, rss * KB)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._walk()
        self.growth = sum(max(0, peak - base) for base, peak in self.peaks.values())


# -- payloads -------------------------------------------------------------------------------------

SEQ_HEAD = """[VERSION]
major 1
minor 5
revision 0

[DEFINITIONS]
AdcRasterTime 1e-07
BlockDurationRaster 1e-05
GradientRasterTime 1e-05
RadiofrequencyRasterTime 1e-06
"""


def seq_shapes(count: int = 40, samples: int = 1 << 26) -> str:
    """``.seq`` text: ``count`` shapes of ``samples`` zeros, compressed (``0 0 samples-2``)."""
    out = [SEQ_HEAD, "[SHAPES]"]
    for i in range(count):
        out += [f"shape_id {i + 1}", f"num_samples {samples}", "0", "0", str(samples - 2), ""]
    return "\n".join(out)


def seq_adc(samples: int = 50_000_000) -> str:
    """``.seq`` text: one block with one ADC of ``samples`` samples at 100 ns dwell."""
    dur = samples // 100 + 10  # block duration raster 10 µs = 100 dwells
    return f"{SEQ_HEAD}\n[BLOCKS]\n1 {dur} 0 0 0 0 1 0\n\n[ADC]\n1 {samples} 100 0 0 0 0 0 0\n"


def seq_repetitions(count: int = 300_000, adc: int = 4) -> str:
    """``.seq`` text: ``count`` repetitions, each an RF block and a block with a small ADC."""
    rows = "\n".join(
        f"{2 * i + 1} 20 1 0 0 0 0 0\n{2 * i + 2} {adc + 1} 0 0 0 0 1 0" for i in range(count)
    )
    return (
        f"{SEQ_HEAD}\n[BLOCKS]\n{rows}\n\n[RF]\n1 250 1 0 0 0 0 0 0 0 0 e\n\n"
        f"[ADC]\n1 {adc} 10000 0 0 0 0 0 0\n\n"
        "[SHAPES]\nshape_id 1\nnum_samples 100\n1\n0\n0\n97\n"
    )


def header_xml(matrix: tuple[int, int, int], lines: int | None = None, coils: int = 1) -> str:
    """ISMRMRD header, Cartesian, encoded = recon ``matrix`` (x, y, z), FOV 240×240×5 mm."""
    x, y, z = matrix
    lines = y if lines is None else lines
    space = (
        f"<matrixSize><x>{x}</x><y>{y}</y><z>{z}</z></matrixSize>"
        "<fieldOfView_mm><x>240</x><y>240</y><z>5</z></fieldOfView_mm>"
    )
    return f"""<?xml version="1.0"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
<experimentalConditions><H1resonanceFrequency_Hz>123200000</H1resonanceFrequency_Hz>
</experimentalConditions>
<acquisitionSystemInformation><receiverChannels>{coils}</receiverChannels>
</acquisitionSystemInformation>
<encoding><encodedSpace>{space}</encodedSpace><reconSpace>{space}</reconSpace>
<encodingLimits><kspace_encoding_step_1><minimum>0</minimum><maximum>{lines - 1}</maximum>
<center>{lines // 2}</center></kspace_encoding_step_1></encodingLimits>
<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"""


def session_bytes(
    config: str,
    header: str | None = None,
    texts: tuple[str, ...] = (),
    items: tuple[Any, ...] = (),
    close: bool = True,
) -> bytes:
    """One session's bytes: config name, optional header, texts, items, close."""
    buf = io.BytesIO()
    writer = MessageWriter(buf)
    writer.write_config_file(config)
    if header is not None:
        writer.write_header(header)
    for text in texts:
        writer.write_text(text)
    for item in items:
        writer.write(item)
    if close:
        writer.write_close()
    return buf.getvalue()


def cartesian_lines(kspace: np.ndarray, nan_line: int | None = None) -> list[ismrmrd.Acquisition]:
    """Acquisitions of Cartesian k-space ``[coils, y, x]``, one per line (NaN in one if asked)."""
    acqs = []
    n = kspace.shape[1]
    for i in range(n):
        line = np.ascontiguousarray(kspace[:, i, :], dtype=np.complex64)
        if i == nan_line:
            line[0, 3] = np.nan
        acq = ismrmrd.Acquisition.from_array(line)
        acq.idx.kspace_encode_step_1 = i
        acq.scan_counter = i
        acq.center_sample = kspace.shape[2] // 2
        if i == n - 1:
            acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
        acqs.append(acq)
    return acqs


@dataclass(frozen=True)
class ReconData:
    """A valid ``default``-chain session and the image its answer must match."""

    payload: bytes
    header: str
    acquisitions: tuple[ismrmrd.Acquisition, ...]
    reference: np.ndarray  # [y, x], root sum of squares of the coil images


def make_recon_data(size: int = 32, coils: int = 4, nan_line: int | None = None) -> ReconData:
    """Shepp–Logan seen by ``coils`` Gaussian coils, centred Cartesian k-space.

    With ``nan_line`` one sample of that line is NaN (the reference is then meaningless).
    """
    density = shepp_logan(size).density
    image = sum(d[:, :, 0] for d in density.values()).astype(np.float64)  # [y, x]
    y, x = np.mgrid[:size, :size] / size - 0.5
    maps = []
    for c in range(coils):
        angle = 2 * np.pi * c / coils
        cx, cy = 0.6 * np.cos(angle), 0.6 * np.sin(angle)
        maps.append(np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 0.5) * np.exp(1j * angle))
    coil_images = np.stack(maps) * image  # [coils, y, x]
    shift = (-2, -1)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coil_images, axes=shift)), axes=shift)
    header = header_xml((size, size, 1), coils=coils)
    acqs = tuple(cartesian_lines(kspace, nan_line))
    reference = np.sqrt((np.abs(coil_images) ** 2).sum(0))
    return ReconData(session_bytes("default", header, items=acqs), header, acqs, reference)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two real images (1 = equal up to a positive scale)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def _id(n: int) -> bytes:
    return struct.pack("<H", n)


def framing_payloads() -> dict[str, bytes]:
    """Malformed framings, by name (each must be answered with an ERROR)."""
    head = header_xml((64, 8, 1))
    acq = cartesian_lines(np.ones((2, 8, 64), np.complex64))
    config = _id(1) + b"passthrough".ljust(1024, b"\0")
    header = _id(3) + struct.pack("<I", len(head)) + head.encode()
    whole = session_bytes("passthrough", head, items=tuple(acq[:2]), close=False)
    return {
        "unknown id": config + header + _id(4242),
        "huge length": config + _id(3) + struct.pack("<I", 2**32 - 1) + b"<x/>",
        "cut mid-message": whole[:-700],
        "acquisition before header": session_bytes("passthrough", None, items=(acq[0],)),
        "non-UTF-8 text": config
        + header
        + _id(5)
        + struct.pack("<I", 4)
        + b"\xff\xfe\xfa\x80"
        + _id(4),
        "path config": session_bytes("../../etc/passwd", head),
    }


def preview_payload(seq_text: str, size: int = 16) -> bytes:
    """Return a header-less ``mr0_preview`` session of ``seq_text`` (Shepp–Logan twin)."""
    params = {"seq": seq_text, "phantom": "shepp-logan", "size": size}
    return session_bytes("mr0_preview", texts=(json.dumps(params),))


def hostile_payloads() -> dict[str, bytes]:
    """Return the hostile sessions whose whole input is known in advance, by kind."""
    image = ismrmrd.Image.from_array(np.full((8, 8), 3.0, np.float32))
    passthrough_head = header_xml((64, 8, 1))

    def text(t: str) -> bytes:
        return session_bytes("passthrough", passthrough_head, texts=(t,))

    one_sample = ismrmrd.Acquisition.from_array(np.ones((1, 1), np.complex64))
    return {
        "shapes": preview_payload(seq_shapes()),
        "adc": preview_payload(seq_adc()),
        "repetitions": preview_payload(seq_repetitions()),
        "header": session_bytes("default", header_xml((512, 512, 128)), items=(one_sample,)),
        "deep_json": text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
        "big_int": text('{"a": ' + "9" * 5000 + "}"),
        "client_image": session_bytes("default", header_xml((8, 8, 1)), items=(image,)),
    }


# -- one conversation -----------------------------------------------------------------------------


@dataclass
class Answer:
    """What the server sent back in one connection."""

    texts: list[str] = field(default_factory=list)
    images: list[ismrmrd.Image] = field(default_factory=list)
    closed: bool = False  # a close message arrived
    failure: str | None = None  # a reset, a timeout, a framing error of the server's answer

    @property
    def errors(self) -> list[str]:
        """Texts starting with ``ERROR``."""
        return [t for t in self.texts if t.startswith("ERROR")]

    def describe(self) -> str:
        """One line for a report."""
        what = self.failure or ("closed" if self.closed else "ended without a close message")
        last = self.texts[-1][:160] if self.texts else "no text"
        return f"{what}; {len(self.images)} images; last text: {last!r}"


def _read_answer(sock: socket.socket, answer: Answer) -> None:
    reader = MessageReader(sock, Limits())
    try:
        while True:
            try:
                msg = reader.read()
            except EOFError:
                return
            if msg.id == MessageId.CLOSE:
                answer.closed = True
                return
            if msg.id == MessageId.TEXT:
                answer.texts.append(str(msg.value))
            elif msg.id == MessageId.IMAGE:
                answer.images.append(msg.value)
    except (ProtocolError, OSError) as exc:
        answer.failure = f"{type(exc).__name__}: {exc}"
    finally:
        reader.close()


def converse(
    address: tuple[str, int],
    payload: bytes,
    timeout_s: float,
    trickle: bytes = b"",
    trickle_s: float = 0.2,
) -> Answer:
    """Send ``payload`` (then ``trickle`` one byte per ``trickle_s``) and read the answer.

    A sender thread writes while this thread reads, so that a server that answers before it
    has read everything does not deadlock; the sender stops once the answer has ended. After
    the payload (and a whole trickle) the write side is shut down.
    """
    answer = Answer()
    try:
        sock = socket.create_connection(address, timeout=timeout_s)
    except OSError as exc:
        answer.failure = f"connect: {exc}"
        return answer
    done = threading.Event()

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
            for i in range(len(trickle)):
                if done.wait(trickle_s):
                    return
                sock.sendall(trickle[i : i + 1])
            if payload or trickle:
                sock.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, name="soak-send", daemon=True)
    with sock:
        sender.start()
        _read_answer(sock, answer)
        done.set()
        sender.join(timeout_s)
    return answer


# -- session kinds --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One session: its kind, whether it went as expected, how long it took (s)."""

    kind: str
    ok: bool
    seconds: float
    detail: str = ""


def expect_error(answer: Answer, *words: str) -> tuple[bool, str]:
    """Judge a hostile answer: an ERROR naming one of ``words`` (any if none), then a close."""
    errors = answer.errors
    if answer.failure or not answer.closed or not errors:
        return False, answer.describe()
    if words and not any(w in errors[0] for w in words):
        return False, f"ERROR without {' or '.join(map(repr, words))}: {errors[0][:200]!r}"
    return True, ""


def expect_image(answer: Answer, reference: np.ndarray | None = None) -> tuple[bool, str]:
    """No ERROR, a close, one image or more (matching ``reference`` if given)."""
    if answer.failure or not answer.closed or answer.errors or not answer.images:
        return False, answer.describe()
    if reference is not None:
        got = np.abs(answer.images[0].data).squeeze()
        if got.shape != reference.shape:
            return False, f"image of shape {got.shape}, expected {reference.shape}"
        corr = correlation(got, reference)
        if corr < 0.99:
            return False, f"image correlates {corr:.4f} with the reference (< 0.99)"
    return True, ""


@dataclass(frozen=True)
class Kind:
    """A session kind: valid or hostile, and how to run and judge it."""

    name: str
    valid: bool
    run: Callable[[tuple[str, int], float], tuple[bool, str]]


def build_kinds(trickle_s: float = 0.2) -> dict[str, Kind]:
    """Every session kind (see the module docstring), payloads built once."""
    recon = make_recon_data()
    gre = preview_payload(GRE_SEQ.read_text())
    hostile = hostile_payloads()
    framings = framing_payloads()
    framing_cycle = itertools.cycle(sorted(framings))
    framing_lock = threading.Lock()
    background = session_bytes(
        "default",
        recon.header,
        texts=(json.dumps({"background": True}),),
        items=recon.acquisitions,
    )
    nan_payload = make_recon_data(size=16, coils=1, nan_line=5).payload
    trickle_head = header_xml((64, 8, 1))
    trickle_acq = session_bytes(
        "passthrough", trickle_head, items=(cartesian_lines(np.ones((4, 8, 64)))[0],), close=False
    )
    preamble = session_bytes("passthrough", trickle_head, close=False)

    def run_recon(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        return expect_image(converse(addr, recon.payload, timeout), recon.reference)

    def run_preview(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        return expect_image(converse(addr, gre, timeout))

    def run_retrieve(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        queued = converse(addr, background, timeout)
        if queued.failure or queued.errors or not queued.closed:
            return False, f"background job: {queued.describe()}"
        try:
            job = next(json.loads(t)["job"] for t in queued.texts if '"job"' in t)
        except (StopIteration, ValueError, KeyError):
            return False, f"background job: no job id in {queued.texts!r}"
        params = json.dumps({"job": job, "wait_s": max(1.0, timeout - 5)})
        got = converse(addr, session_bytes("mr0_retrieve", texts=(params,)), timeout)
        return expect_image(got, recon.reference)

    def hostile_run(name: str, *words: str) -> Callable[[tuple[str, int], float], tuple[bool, str]]:
        def run(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
            return expect_error(converse(addr, hostile[name], timeout), *words)

        return run

    def run_idle(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        return expect_error(converse(addr, b"", timeout), "did not arrive within")

    def run_trickle(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        rest = trickle_acq[len(preamble) :]
        answer = converse(addr, preamble, timeout, trickle=rest, trickle_s=trickle_s)
        return expect_error(answer, "too slowly")

    def run_nan(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        answer = converse(addr, nan_payload, timeout)
        ok, detail = expect_image(answer)
        warnings = [t for t in answer.texts if t.startswith("WARNING")]
        if ok and not (len(warnings) == 1 and "NaN or Inf" in warnings[0]):
            return False, f"expected one NaN/Inf WARNING, got texts {answer.texts!r}"
        return ok, detail

    def run_framing(addr: tuple[str, int], timeout: float) -> tuple[bool, str]:
        with framing_lock:
            name = next(framing_cycle)
        ok, detail = expect_error(converse(addr, framings[name], timeout))
        return ok, "" if ok else f"{name}: {detail}"

    kinds = [
        Kind("recon", True, run_recon),
        Kind("preview", True, run_preview),
        Kind("retrieve", True, run_retrieve),
        Kind("shapes", False, hostile_run("shapes", "max_shape_samples")),
        Kind("adc", False, hostile_run("adc", "max_adc_samples")),
        Kind(
            "repetitions", False, hostile_run("repetitions", "max_repetitions", "max_memory_bytes")
        ),
        Kind("header", False, hostile_run("header", "max_grid_bytes", "max_voxels")),
        Kind("idle", False, run_idle),
        Kind("trickle", False, run_trickle),
        Kind("deep_json", False, hostile_run("deep_json", "levels deep")),
        Kind("big_int", False, hostile_run("big_int", "a number of 5000 characters")),
        Kind("nan", False, run_nan),
        Kind("client_image", False, hostile_run("client_image", "does not take images")),
        Kind("framing", False, run_framing),
    ]
    return {k.name: k for k in kinds}


KIND_NAMES = ("recon", "preview", "retrieve", "shapes", "adc", "repetitions", "header", "idle",
              "trickle", "deep_json", "big_int", "nan", "client_image", "framing")  # fmt: skip
"""Every session kind, in :func:`build_kinds`'s order (``--kinds`` chooses among them)."""


# -- the run --------------------------------------------------------------------------------------


class Schedule:
    """One shared cycle of kinds (valid ones twice), reshuffled each round; thread-safe."""

    def __init__(self, kinds: dict[str, Kind], seed: int) -> None:
        self._round = [k for k in kinds.values() for _ in range(2 if k.valid else 1)]
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._queue: list[Kind] = []
        self.handed = 0
        self.first_round = len(self._round)

    def next(self) -> Kind:
        """Return the next kind to run."""
        with self._lock:
            if not self._queue:
                self._queue = self._rng.sample(self._round, len(self._round))
            self.handed += 1
            return self._queue.pop()

    def first_round_done(self) -> bool:
        """Every kind has been handed out at least once."""
        with self._lock:
            return self.handed >= self.first_round


@dataclass
class Soak:
    """State shared by the clients and the sampler."""

    address: tuple[str, int]
    kinds: dict[str, Kind]
    schedule: Schedule
    deadline: float
    timeout_s: float
    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self) -> None:
        """Run sessions until the deadline (and until the first cycle is handed out)."""
        while time.monotonic() < self.deadline or not self.schedule.first_round_done():
            kind = self.schedule.next()
            t0 = time.monotonic()
            try:
                ok, detail = kind.run(self.address, self.timeout_s)
            except Exception as exc:  # a bug of this script: reported, never hidden
                ok, detail = False, f"soak client raised {type(exc).__name__}: {exc}"
            outcome = Outcome(kind.name, ok, time.monotonic() - t0, detail)
            with self.lock:
                self.outcomes.append(outcome)


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def plateau(samples: list[tuple[float, int]], ratio: float, bound_mb: float) -> dict[str, Any]:
    """Plateau verdict over ``(t_s, bytes)`` samples (see the module docstring)."""
    if not samples:
        return {"ok": None, "reason": "no memory samples (no server pid)"}
    t_end = samples[-1][0]
    middle = [b for t, b in samples if t_end / 3 <= t < 2 * t_end / 3]
    last = [b for t, b in samples if t >= 2 * t_end / 3]
    top = max(b for _, b in samples)
    out: dict[str, Any] = {
        "ratio_limit": ratio,
        "bound_mb": bound_mb,
        "max_mb": round(top / MB, 1),
        "middle_max_mb": round(max(middle) / MB, 1) if middle else None,
        "last_max_mb": round(max(last) / MB, 1) if last else None,
    }
    if top > bound_mb * MB:
        return {**out, "ok": False, "reason": f"{top / MB:.0f} MB is over the bound"}
    if len(middle) < 3 or len(last) < 3:
        return {**out, "ok": None, "reason": "too few samples to judge (< 3 in a third)"}
    grown = max(last) / max(middle)
    out["ratio"] = round(grown, 3)
    if grown > ratio:
        return {**out, "ok": False, "reason": f"the last third's peak is {grown:.3f}x the middle's"}
    return {**out, "ok": True, "reason": "plateau"}


def summarise(
    soak: Soak, samples: list[tuple[float, int, int, int]], opts: argparse.Namespace
) -> dict[str, Any]:
    """Return the results (the ``--json`` document).

    ``samples`` are (seconds since the start, tree RSS, processes, the server's own RSS), bytes.
    """
    by_kind: dict[str, list[Outcome]] = {name: [] for name in soak.kinds}
    for o in soak.outcomes:
        by_kind[o.kind].append(o)
    valid, hostile = {}, {}
    all_valid: list[float] = []
    for name, outs in by_kind.items():
        times = [o.seconds for o in outs if o.ok]
        row = {
            "sessions": len(outs),
            "as_expected": sum(o.ok for o in outs),
            "unexpected": sum(not o.ok for o in outs),
            "p50_s": _round(_percentile(times, 50)),
            "p99_s": _round(_percentile(times, 99)),
            "max_s": _round(max(times) if times else None),
        }
        if soak.kinds[name].valid:
            valid[name] = row
            all_valid += times
        else:
            hostile[name] = row
    unexpected = [
        {"kind": o.kind, "seconds": round(o.seconds, 2), "detail": o.detail}
        for o in soak.outcomes
        if not o.ok
    ]
    rss = [
        {"t_s": round(t, 1), "rss_mb": round(b / MB, 1), "server_mb": round(r / MB, 1),
         "processes": n}
        for t, b, n, r in samples
    ]  # fmt: skip
    minutes: dict[int, list[tuple[int, int]]] = {}
    for t, b, _, r in samples:
        minutes.setdefault(int(t // 60), []).append((b, r))
    table = [
        {"minute": m, "max_mb": round(max(b for b, _ in rows) / MB, 1),
         "last_mb": round(rows[-1][0] / MB, 1), "server_last_mb": round(rows[-1][1] / MB, 1)}
        for m, rows in sorted(minutes.items())
    ]  # fmt: skip
    verdict = plateau([(t, b) for t, b, _, _ in samples], opts.plateau_ratio, opts.rss_bound_mb)
    return {
        "clients": opts.clients,
        "duration_s": round(time.monotonic() - soak.started, 1),
        "sessions": len(soak.outcomes),
        "valid": valid,
        "hostile": hostile,
        "latency_valid": {
            "n": len(all_valid),
            "p50_s": _round(_percentile(all_valid, 50)),
            "p99_s": _round(_percentile(all_valid, 99)),
        },
        "unexpected_count": len(unexpected),
        "unexpected": unexpected[:100],
        "rss": rss,
        "rss_by_minute": table,
        "plateau": verdict,
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def machine() -> dict[str, Any]:
    """Return the machine: ``nproc``, CPU model, memory, load averages now."""
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(next(line.split()[1] for line in f if line.startswith("MemTotal:")))
    except (OSError, StopIteration):
        mem_kb = 0
    return {
        "nproc": os.cpu_count(),
        "cpu": benchlib.cpu_name(),
        "memory_gb": round(mem_kb * KB / 1e9, 1),
        "load": list(os.getloadavg()),
    }


def code_version() -> dict[str, Any]:
    """Return the repository's commit and whether tracked files differ from it (git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


# -- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``mr0-server`` in a subprocess with temporary store, save folder and log."""

    def __init__(self, folder: Path, extra: list[str]) -> None:
        self.folder = folder
        self.port = _free_port()
        exe = Path(sys.executable).with_name("mr0-server")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "gadgets.serve.server"]
        self.args = [
            *cmd,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--store",
            str(folder / "store"),
            "--save-dir",
            str(folder / "save"),
            "--max-per-peer",
            "0",
            "--log-level",
            "warning",
            "--grace",
            "20",
            *extra,
        ]
        self.log_path = folder / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115  (closed in stop())
        self.proc = subprocess.Popen(
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=folder,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until the port accepts; raise RuntimeError if the server exits or is too slow."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mr0-server exited with {self.proc.returncode}:\n" + self.log_tail()
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return
            time.sleep(0.2)
        raise RuntimeError(
            f"mr0-server did not listen within {timeout_s:.0f} s:\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 20) -> str:
        """Return the last lines of the server's log."""
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def crashes(self) -> list[str]:
        """One log line per session that crashed (a bug, not a refused input).

        A crash is a JSON log entry of event ``crash``/``chain_crash`` or with a traceback;
        a text line holding ``Traceback`` counts too.
        """
        seen: dict[str, str] = {}
        for i, line in enumerate(self.log_path.read_text(errors="replace").splitlines()):
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                if entry.get("event") in ("crash", "chain_crash") or "traceback" in entry:
                    key = str(entry.get("session", i))
                    seen.setdefault(
                        key, f"{entry.get('message')}: " + str(entry.get("traceback", ""))[-300:]
                    )
            elif "Traceback" in line:
                seen[f"line {i}"] = line[:300]
        return list(seen.values())

    def stop(self) -> int | None:
        """SIGTERM, wait up to 60 s (then kill); return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


def folder_mb(path: Path) -> float:
    """Size of the files under ``path`` in MB."""
    total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return round(total / MB, 1)


# -- command line ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        prog="soak_server.py",
        description=doc.split("\n\n")[0],
        epilog=doc[doc.index("Valid sessions") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--minutes", type=float, default=None, help="how long new sessions are started (default 10)"
    )
    length.add_argument("--seconds", type=float, default=None, help="the same, in seconds")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--sample-s",
        type=float,
        default=5.0,
        help="seconds between memory samples and progress lines (default 5)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=120.0,
        help="socket timeout of one session, s (default 120)",
    )
    parser.add_argument(
        "--trickle-s",
        type=float,
        default=0.2,
        help="seconds between the bytes of a trickle session (default 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffles the cycles (default 0)")
    parser.add_argument(
        "--kinds",
        default=None,
        metavar="NAME[,NAME...]",
        help="run only these session kinds (default all; e.g. preview,repetitions to find "
        "which kind grows the server's memory)",
    )
    parser.add_argument(
        "--plateau-ratio",
        type=float,
        default=1.1,
        help="largest allowed ratio of the last third's peak to the middle's (default 1.1)",
    )
    parser.add_argument(
        "--rss-bound-mb",
        type=float,
        default=3000.0,
        help="largest allowed process-tree RSS, MB (default 3000)",
    )
    started = parser.add_argument_group("a server this script starts (the default)")
    started.add_argument(
        "--preamble-timeout",
        type=float,
        default=None,
        metavar="S",
        help="the server's --preamble-timeout (default 5)",
    )
    started.add_argument(
        "--rate-window",
        type=float,
        default=None,
        metavar="S",
        help="the server's --rate-window (default 3)",
    )
    started.add_argument(
        "--server-args", default="", help="more mr0-server arguments, one shell-quoted string"
    )
    started.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (store, save-dir, server.log)",
    )
    running = parser.add_argument_group("a running server")
    running.add_argument("--host", default=None, help="its address (default 127.0.0.1)")
    running.add_argument("--port", type=int, default=None, help="its MRD port")
    running.add_argument(
        "--server-pid", type=int, default=None, help="its pid, to sample its process tree's memory"
    )
    return parser


def _check(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> None:
    external = opts.port is not None
    if not external:
        for name in ("host", "server_pid"):
            if getattr(opts, name) is not None:
                parser.error(f"--{name.replace('_', '-')} needs --port (a running server)")
    else:
        given = [n for n in ("preamble_timeout", "rate_window") if getattr(opts, n) is not None]
        given += ["server_args"] if opts.server_args else []
        given += ["keep"] if opts.keep else []
        if given:
            parser.error(
                f"--{given[0].replace('_', '-')} applies only to a server this script "
                "starts (leave out --port)"
            )
    if opts.clients < 1:
        parser.error(f"--clients must be at least 1, got {opts.clients}")
    for name in ("minutes", "seconds", "sample_s", "session_timeout", "trickle_s"):
        value = getattr(opts, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if opts.kinds is not None:
        names = [n for n in opts.kinds.split(",") if n]
        unknown = sorted(set(names) - set(KIND_NAMES))
        if unknown or not names:
            parser.error(
                f"--kinds: unknown session kind {', '.join(unknown) or '(none given)'} "
                f"(kinds: {', '.join(KIND_NAMES)})"
            )
    if opts.plateau_ratio < 1 or opts.rss_bound_mb <= 0:
        parser.error("--plateau-ratio must be >= 1 and --rss-bound-mb positive")


def print_summary(res: dict[str, Any], command: str) -> None:
    """Print the results as README-ready text."""
    m = res["machine"]
    print(
        f"\n## Soak: {res['clients']} clients, {res['duration_s'] / 60:.1f} min, "
        f"{res['sessions']} sessions\n"
    )
    code = res.get("code", {})
    dirty = " with changes to tracked files" if code.get("dirty") else ""
    print(f"`{command}` at commit {code.get('commit')}{dirty}  ")
    print(
        f"machine: {m['nproc']} cores ({m['cpu']}), {m['memory_gb']} GB; load average "
        f"before {m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}\n"
    )
    print("| minute | tree RSS max (MB) | last (MB) | of which the server process, last (MB) |")
    print("|---|---|---|---|")
    for row in res["rss_by_minute"]:
        print(
            f"| {row['minute']} | {row['max_mb']:.0f} | {row['last_mb']:.0f} | "
            f"{row['server_last_mb']:.0f} |"
        )
    print("\n| valid session | n | ok | p50 (s) | p99 (s) |\n|---|---|---|---|---|")
    for name, row in res["valid"].items():
        print(
            f"| {name} | {row['sessions']} | {row['as_expected']} | {_fmt(row['p50_s'])} | "
            f"{_fmt(row['p99_s'])} |"
        )
    lat = res["latency_valid"]
    print(f"| all valid | {lat['n']} | | {_fmt(lat['p50_s'])} | {_fmt(lat['p99_s'])} |")
    print("\n| hostile session | n | answered as expected | p50 to the answer (s) |")
    print("|---|---|---|---|")
    for name, row in res["hostile"].items():
        print(f"| {name} | {row['sessions']} | {row['as_expected']} | {_fmt(row['p50_s'])} |")
    pl = res["plateau"]
    verdict = {True: "plateaus", False: "DOES NOT plateau", None: "not judged"}[pl["ok"]]
    print(
        f"\nRSS {verdict}: {pl['reason']} (middle third max {pl.get('middle_max_mb')} MB, "
        f"last third max {pl.get('last_max_mb')} MB, bound {pl.get('bound_mb')} MB)"
    )
    print(f"unexpected: {res['unexpected_count']}")
    for u in res["unexpected"][:20]:
        print(f"  {u['kind']} ({u['seconds']} s): {u['detail']}")
    if "server" in res:
        print(
            f"server: exit {res['server']['exit_status']}, sessions crashed (its log) "
            f"{len(res['server']['crash_lines'])}, save-dir {res['server']['save_dir_mb']} MB, "
            f"store {res['server']['store_mb']} MB"
        )


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    """Run the soak; return the exit status."""
    parser = _parser()
    opts = parser.parse_args(argv)
    _check(parser, opts)
    run_s = opts.seconds if opts.seconds is not None else 60 * (opts.minutes or 10)
    command = "python scripts/soak_server.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load_before = list(os.getloadavg())
    code = code_version()  # at the start: what the server runs, even if HEAD moves meanwhile
    print(
        f"soak: building the sessions' payloads ({opts.clients} clients, {run_s:.0f} s)", flush=True
    )
    kinds = build_kinds(opts.trickle_s)
    if opts.kinds is not None:
        chosen = opts.kinds.split(",")
        kinds = {name: kind for name, kind in kinds.items() if name in chosen}
    folder: Path | None = None
    server: ServerProcess | None = None
    if opts.port is None:
        folder = Path(tempfile.mkdtemp(prefix="mr0-soak-"))
        extra = [
            "--preamble-timeout",
            str(opts.preamble_timeout or 5.0),
            "--rate-window",
            str(opts.rate_window or 3.0),
            *shlex.split(opts.server_args),
        ]
        server = ServerProcess(folder, extra)
        try:
            server.wait_ready()
        except RuntimeError as exc:
            print(f"soak: {exc}", file=sys.stderr)
            server.stop()
            return 2
        address, pid = ("127.0.0.1", server.port), server.proc.pid
        print(f"soak: mr0-server pid {pid} on port {server.port}, folder {folder}", flush=True)
    else:
        address, pid = (opts.host or "127.0.0.1", opts.port), opts.server_pid
    try:
        if pid is not None:
            tree_pids(pid)  # fails early for a wrong --server-pid
        soak = Soak(
            address,
            kinds,
            Schedule(kinds, opts.seed),
            time.monotonic() + run_s,
            opts.session_timeout,
        )
        soak.started = time.monotonic()
        soak.deadline = soak.started + run_s
        clients = [
            threading.Thread(target=soak.client, name=f"soak-client-{i}", daemon=True)
            for i in range(opts.clients)
        ]
        for t in clients:
            t.start()
        samples: list[tuple[float, int, int, int]] = []
        next_sample = time.monotonic()
        while any(t.is_alive() for t in clients):
            if time.monotonic() < next_sample:
                time.sleep(min(0.1, next_sample - time.monotonic()))
                continue
            next_sample += opts.sample_s
            now = time.monotonic() - soak.started
            line = f"soak: {now:6.0f} s"
            if pid is not None:
                with contextlib.suppress(ProcError):
                    rss, n = tree_rss(pid)
                    own = (_status_kb(pid, "VmRSS") or 0) * KB
                    samples.append((now, rss, n, own))
                    line += f"  RSS {rss / MB:6.0f} MB in {n} processes (server {own / MB:.0f})"
            with soak.lock:
                done = list(soak.outcomes)
            bad = sum(not o.ok for o in done)
            line += f"  sessions {len(done)} (unexpected {bad})"
            if server is not None and server.proc.poll() is not None:
                line += f"  SERVER EXITED {server.proc.returncode}"
            print(line, flush=True)
        results = summarise(soak, samples, opts)
    finally:
        server_info = None
        if server is not None and folder is not None:
            status = server.stop()
            crashes = server.crashes()
            server_info = {
                "exit_status": status,
                "crash_lines": crashes[:50],
                "save_dir_mb": folder_mb(folder / "save"),
                "store_mb": folder_mb(folder / "store"),
                "folder": str(folder),
            }
            if not opts.keep:
                shutil.rmtree(folder, ignore_errors=True)
    results["command"] = command
    results["code"] = code
    results["machine"] = {**machine(), "load_before": load_before}
    results["machine"]["load_after"] = results["machine"].pop("load")
    if server_info is not None:
        results["server"] = server_info
        problems = [
            {"kind": "server-crash", "seconds": 0, "detail": line}
            for line in server_info["crash_lines"]
        ]
        if server_info["exit_status"] != 0:
            problems.append(
                {
                    "kind": "server-exit",
                    "seconds": 0,
                    "detail": f"mr0-server exited {server_info['exit_status']} after SIGTERM",
                }
            )
        results["unexpected_count"] += len(problems)
        results["unexpected"] += problems
    results["ok"] = results["unexpected_count"] == 0 and results["plateau"]["ok"] is not False
    if opts.json is not None:
        opts.json.write_text(json.dumps(results, indent=1))
    print_summary(results, command)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

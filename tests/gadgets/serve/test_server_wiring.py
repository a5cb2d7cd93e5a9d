"""The server's last hardening wiring (issue 21): header bound at arrival, retention, recon job
timeout, and a client's ``.seq`` parsed in a scheduler job rather than in the server.

Servers run in-process on free loopback ports; most without the scheduler. Times are generous
"does not hang" bounds, not speed measurements.
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
import torch
from conftest import CORPUS, mr0_server, preview
from pulseq_builders import adc_blocks
from test_gadgets_server import HEADER, converse, make_acquisitions, stream

import mr0core.pulseq
import mr0core.pulseq.reader
from gadgets.framework.core import Context, GadgetError
from gadgets.library.recon import RECON_JOB_ATTEMPTS, SenseGadget, _reconstruct
from gadgets.serve.server import MrdServer, ServerConfig, parse_args
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from mr0core.jobs import build_demo_flash, load_job_phantom
from mr0core.pulseq import DEFAULT_SEQ_LIMITS, read_seq_text, seq_to_sequence
from mr0core.recon import KData
from mr0core.sequence import Sequence
from scheduler.estimate import (
    FIXED_BYTES,
    SEQ_LAYOUT_BYTES_PER_SAMPLE,
    estimate_seq_parse,
    estimate_simulation_from_sequence,
)
from scheduler.functions import run_call
from scheduler.gpu import FakeNvml, GpuMonitor
from scheduler.service import Scheduler

DAY = 86400.0


@pytest.fixture
def make(server_factory):
    """Start MRD servers (no scheduler unless asked) with the given settings; stop them."""

    def start(config: ServerConfig | None = None, **kwargs) -> MrdServer:
        if config is not None:
            return server_factory(config, shutdown_grace_s=5, **kwargs)
        kwargs.setdefault("scheduler", False)
        return server_factory(grace_s=5, shutdown_grace_s=5, **kwargs)

    return start


def texts(msgs: list) -> list[str]:
    return [str(m.value) for m in msgs if m.id == MessageId.TEXT]


def header(matrix: tuple[int, int, int], channels: int | None = None) -> str:
    """The test header with another encoded and recon matrix (and receiver channels)."""
    size = "<matrixSize><x>64</x><y>8</y><z>1</z></matrixSize>"
    new = f"<matrixSize><x>{matrix[0]}</x><y>{matrix[1]}</y><z>{matrix[2]}</z></matrixSize>"
    xml = HEADER.replace(size, new)
    if channels is not None:
        system = (
            "<acquisitionSystemInformation><receiverChannels>"
            f"{channels}</receiverChannels></acquisitionSystemInformation>"
        )
        xml = xml.replace("<encoding>", system + "<encoding>")
    return xml


# -- 1. the header's matrices are bounded when the header arrives -----------------------------


def test_an_oversized_header_is_refused_before_any_data(make):
    """The issue's 512 x 512 x 128 header: ERROR with nothing sent after it (no close, no data).

    Before, the header was parsed with the chain, after the next message had been read: this
    client, which waits for the answer, would have waited until the preamble deadline.
    """
    srv = make(preamble_timeout_s=30)
    with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=10) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("default")
        writer.write_header(header((512, 512, 128)))
        started = time.monotonic()
        reader = MessageReader(sock)
        msgs = [reader.read(), reader.read()]
    assert time.monotonic() - started < 5
    assert msgs[-1].id == MessageId.CLOSE
    (error,) = texts(msgs)
    assert error.startswith("ERROR: the ISMRMRD header: encoding[0]"), error
    assert "max_grid_bytes" in error
    # the next client is served
    ok = converse(srv.address[1], stream(items=make_acquisitions(3)))
    assert sum(m.id == MessageId.ACQUISITION for m in ok) == 3
    assert not [t for t in texts(ok) if t.startswith("ERROR")]


@pytest.mark.parametrize(("channels", "refused"), [(1, False), (128, True)])
def test_the_headers_receiver_channels_count_at_arrival(make, channels, refused):
    """512 x 512: 15 MB of grid for one coil, 1.3 GB for 128 (the limit is 1 GiB)."""
    srv = make()
    msgs = converse(srv.address[1], stream(header=header((512, 512, 1), channels),
                                           items=make_acquisitions(1)))  # fmt: skip
    errors = [t for t in texts(msgs) if t.startswith("ERROR")]
    if refused:
        assert errors
        assert "128 coils" in errors[0], errors
    else:
        assert not errors
        assert sum(m.id == MessageId.ACQUISITION for m in msgs) == 1


def test_a_header_without_an_encoding_passes_through(make):
    """No matrix, nothing to allocate: chains that need none still take it."""
    xml = HEADER[: HEADER.index("<encoding>")] + "</ismrmrdHeader>"
    msgs = converse(make().address[1], stream(header=xml, items=make_acquisitions(2)))
    assert not [t for t in texts(msgs) if t.startswith("ERROR")]
    assert sum(m.id == MessageId.ACQUISITION for m in msgs) == 2


# -- 2. retention ---------------------------------------------------------------------------


def plant(folder: Path, name: str, age_s: float) -> Path:
    path = folder / name
    path.write_bytes(b"\0" * 1000)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def test_save_dir_is_private_and_old_sessions_go_at_start(make, tmp_path):
    save = tmp_path / "save"
    save.mkdir(mode=0o755)
    os.chmod(save, 0o755)
    old = plant(save, "20200101T000000_old.h5", DAY)  # older than retention and grace
    fresh = plant(save, "fresh.h5", 0)
    argv = ["--port", "0", "--no-scheduler", "--save-dir", str(save), "--retention-days",
            "0.0001", "--retention-interval", "600"]  # fmt: skip
    config, _ = parse_args(argv)
    assert (config.retention_days, config.max_store_gb, config.retention_interval_s) == (
        0.0001,
        None,
        600.0,
    )
    umask = os.umask(0o022)
    try:
        srv = make(config)
        fresh_dir = tmp_path / "new" / "save"
        make(save_dir=fresh_dir)
    finally:
        os.umask(umask)
    assert not old.exists()
    assert fresh.exists()
    assert stat.S_IMODE(save.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(fresh_dir.parent.stat().st_mode) == 0o700
    assert srv.retention is not None
    assert [e.key for e in srv.retention.last.deleted] == [old.name]
    timer = srv.retention
    srv.shutdown(grace_s=5)
    assert srv.retention is None
    assert not timer._thread.is_alive()


def test_no_retention_options_keep_everything(make, tmp_path):
    save = tmp_path / "save"
    save.mkdir()
    old = plant(save, "old.h5", 10 * 365 * DAY)
    srv = make(save_dir=save)
    assert srv.retention is None
    assert old.exists()


def test_a_session_still_saving_is_never_deleted(make, tmp_path):
    """Its file is in use while the session writes; once closed, an old file goes."""
    save = tmp_path / "save"
    srv = make(save_dir=save, retention_days=1.0, retention_interval_s=3600)
    with socket.create_connection(("127.0.0.1", srv.address[1]), timeout=10) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file("passthrough")
        writer.write_header(HEADER)
        writer.write(make_acquisitions(1)[0])
        deadline = time.monotonic() + 10
        while not srv._saving_paths() and time.monotonic() < deadline:
            time.sleep(0.02)
        (path,) = srv._saving_paths()
        then = time.time() - 10 * DAY
        os.utime(path, (then, then))
        report = srv.retention.run_once()
        assert path.exists()
        assert not report.deleted
        writer.write_close()
        list(MessageReader(sock))
    deadline = time.monotonic() + 10
    while srv._saving_paths() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not srv._saving_paths()
    os.utime(path, (then, then))
    report = srv.retention.run_once()  # negative control: the same file, no longer in use
    assert [e.key for e in report.deleted] == [path.name]
    assert not path.exists()


def test_bad_retention_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="retention_days"):
        MrdServer(ServerConfig(port=0, scheduler=False, retention_days=-1)).start()
    with pytest.raises(SystemExit):
        parse_args(["--retention-days", "-1"])


# -- 3. recon jobs have a timeout -----------------------------------------------------------


def test_a_recon_job_that_cannot_start_times_out_and_is_cancelled(tmp_path):
    """No worker at all: the job would wait for ever; it is cancelled after the timeout."""
    seq = Sequence.from_pypulseq(build_demo_flash(8))
    n = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    kd = KData.from_sequence(torch.ones(n, 2, dtype=torch.complex64), seq)
    with Scheduler(tmp_path / "s", monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=0) as sched:
        gadget = SenseGadget(Context(scheduler=sched))
        started = time.monotonic()
        with pytest.raises(GadgetError, match=r"did not finish within 0\.5 s \(it was queued"):
            _reconstruct(gadget, kd, "sense", timeout_s=0.5)
        assert time.monotonic() - started < 5
        (call,) = sched.calls()
        assert call["function"] == "reconstruct"
        assert call["state"] == "cancelled"
        assert call["timeout_s"] == 0.5  # the scheduler stops a run at the same time
        assert call["max_attempts"] == RECON_JOB_ATTEMPTS
        assert not sched.status()["queued"]  # nothing left waiting
        assert not sched.store.jobs()  # a call is not durable: no record, no files


# -- 4. a client's .seq is parsed in a job ----------------------------------------------------


@pytest.fixture(scope="module")
def sched_server():
    """A server with its scheduler (one CPU worker), as mr0-server runs by default."""
    with mr0_server(idle_timeout_s=60, grace_s=10) as srv:
        yield srv


@pytest.fixture
def no_parse_here(monkeypatch):
    """Make parsing a .seq in this process (the server's) fail; workers are other processes."""

    def refuse(*args, **kwargs):
        raise AssertionError("a .seq was parsed in the server process")

    monkeypatch.setattr(mr0core.pulseq, "read_seq_text", refuse)
    monkeypatch.setattr(mr0core.pulseq.reader, "read_seq_text", refuse)


def test_the_server_never_parses_a_clients_seq(sched_server, no_parse_here, make):
    text = (CORPUS / "write_gre.seq").read_text()
    msgs = preview(sched_server.address[1], {"seq": text, "size": 8})
    assert not [t for t in texts(msgs) if t.startswith("ERROR")], texts(msgs)
    assert sum(m.id == MessageId.IMAGE for m in msgs) == 1
    calls = sched_server.scheduler.calls()
    prepare = next(c for c in calls if c["function"] == "prepare_seq")
    assert prepare["estimate_bytes"] >= DEFAULT_SEQ_LIMITS.max_memory_bytes  # the parse bound
    # negative control: without a scheduler the server parses it itself
    local = make(scheduler=False)
    msgs = preview(local.address[1], {"seq": text, "size": 8})
    assert "parsed in the server process" in texts(msgs)[-1]


def test_the_simulation_job_is_estimated_from_the_converted_sequence(sched_server):
    text = (CORPUS / "write_gre.seq").read_text()
    msgs = preview(sched_server.address[1], {"seq": text, "size": 8, "phantom": "shepp-logan"})
    assert sum(m.id == MessageId.IMAGE for m in msgs) == 1
    calls = sched_server.scheduler.calls()
    sim = next(c for c in calls if c["function"] == "simulate")  # the newest
    seq = seq_to_sequence(read_seq_text(text))
    data = load_job_phantom("shepp-logan", 8, 1)[0].build()
    n = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    layout = KData.from_sequence(torch.zeros(n, 1, dtype=torch.complex64), seq)
    expected = estimate_simulation_from_sequence(
        seq, {"voxels": int(data.voxel_count), "max_states": 200}, samples=n,
        recon_matrix=layout.recon_matrix,
    )  # fmt: skip
    assert sim["estimate_bytes"] == expected > 0


@pytest.mark.parametrize(
    ("seq", "message"),
    [
        ("[VERSION]\nmajor 1\nminor 4\n[BLOCKS]\n1 1 7 0 0 0 0 0\n", "does not parse"),
        (adc_blocks(50_000_000), "max_adc_samples"),  # issue 21: one ADC of 5e7 samples
    ],
    ids=["malformed", "over-a-bound"],
)
def test_a_bad_seq_is_an_error_from_the_job(sched_server, seq, message):
    msgs = preview(sched_server.address[1], {"seq": seq, "size": 8})
    error = texts(msgs)[-1]
    assert error.startswith("ERROR: TwinPreview: the sequence job "), error
    assert "does not parse" in error
    assert message in error
    assert msgs[-1].id == MessageId.CLOSE


def test_prepare_seq_takes_only_a_text_within_the_size_limit():
    text = (CORPUS / "write_gre.seq").read_text()
    with pytest.raises(ValueError, match="input 'text' must be a str"):
        run_call("prepare_seq", {"text": text.encode()}, {}, "cpu")
    too_big = "#" * (DEFAULT_SEQ_LIMITS.max_file_bytes + 1)
    with pytest.raises(ValueError, match=r"does not parse: .* max_file_bytes"):
        run_call("prepare_seq", {"text": too_big}, {}, "cpu")
    out = run_call("prepare_seq", {"text": text}, {"layout": True}, "cpu")
    summary = out["summary"]
    assert summary["repetitions"] == len(out["sequence"]) == 65
    assert summary["readouts"] == out["layout"].shape[0] == 64
    assert summary["estimate_bytes"] == 0  # no twin named: no simulation estimate


def test_the_parse_estimate_is_the_seq_limits_budget():
    limits = DEFAULT_SEQ_LIMITS
    assert estimate_seq_parse(1000, layout=False) == (
        FIXED_BYTES + 2 * 1000 + limits.max_memory_bytes
    )
    assert estimate_seq_parse(1000) - estimate_seq_parse(1000, layout=False) == (
        SEQ_LAYOUT_BYTES_PER_SAMPLE * limits.max_total_adc_samples
    )
    with pytest.raises(ValueError, match="text_bytes"):
        estimate_seq_parse(limits.max_file_bytes + 1)

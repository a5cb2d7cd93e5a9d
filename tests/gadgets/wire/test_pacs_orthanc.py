"""PACS output against a real Orthanc on loopback: server preview → C-STORE → REST checks.

Orthanc (Debian package ``orthanc``) is started by the tests with a temporary configuration: free
ports, a temporary storage folder, no authentication, loopback only, its own AE title. Without it
the Orthanc tests skip, naming the reason; the queue tests without a PACS run everywhere.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import CORPUS, mr0_server, run_session

from gadgets.serve.server import parse_args
from gadgets.wire.client import main as client_main
from gadgets.wire.framing import MessageId
from gadgets.wire.pacs import PacsError, PacsQueue, PacsTarget, send_files
from mr0core.io.dicom_out import write_dicom_volume

ORTHANC = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
needs_orthanc = pytest.mark.skipif(
    ORTHANC is None, reason="Orthanc (Debian package orthanc) is not installed"
)
AET = "MR0TESTPACS"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Orthanc:
    """An Orthanc process on loopback with its own temporary storage."""

    def __init__(self, root: Path, dicom_port: int | None = None) -> None:
        self.root = root
        self.dicom_port = dicom_port or _free_port()
        self.http_port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> Orthanc:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mr0-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "Plugins": [], "StorageCompression": False,
        }  # fmt: skip
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config))
        log = (self.root / "orthanc.log").open("wb")
        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.rest("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.root / "orthanc.log").read_text()[-2000:]) from None
                time.sleep(0.05)
        raise RuntimeError("Orthanc did not start within 10 s")

    def rest(self, path: str):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # its storage is temporary: no graceful stop needed (that takes 3 s)
            self.proc.wait(10)
            self.proc = None

    @property
    def target(self) -> PacsTarget:
        return PacsTarget("127.0.0.1", self.dicom_port, AET, "MR0TEST")

    def wait_series(self, count: int, timeout_s: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            series = self.rest("/series")
            if len(series) >= count:
                return series
            time.sleep(0.05)
        return self.rest("/series")


@pytest.fixture
def orthanc(tmp_path):
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def _tags(orthanc: Orthanc, series_id: str) -> tuple[dict, list[str]]:
    info = orthanc.rest(f"/series/{series_id}")
    tags = orthanc.rest(f"/instances/{info['Instances'][0]}/simplified-tags")
    return tags, info["Instances"]


@needs_orthanc
def test_server_preview_arrives_in_orthanc_as_a_simulated_series(orthanc, tmp_path):
    dicom_dir = tmp_path / "dicom"
    options = {"scheduler": False, "store_dir": tmp_path / "store", "dicom_dir": dicom_dir,
               "pacs": orthanc.target}  # fmt: skip
    with mr0_server(**options, shutdown_grace_s=5) as srv:
        params = {"seq": (CORPUS / "write_gre.seq").read_text(), "size": 8, "progress_s": 0}
        msgs = run_session(srv.address[1], "mr0_preview", params, timeout=60)
        texts = [m.value for m in msgs if m.id == MessageId.TEXT]
        assert any(t.startswith("DICOM series 1 'SIMULATED MR0 twin preview'") for t in texts)
        assert any("queued for" in t for t in texts), texts
        (series_id,) = orthanc.wait_series(1)
    (written,) = sorted(dicom_dir.rglob("*.dcm"))
    local = pydicom.dcmread(written)
    tags, instances = _tags(orthanc, series_id)
    assert len(instances) == 1
    assert tags["SeriesDescription"] == "SIMULATED MR0 twin preview"
    assert tags["ImageComments"].startswith("SIMULATED")
    assert tags["ImageType"].endswith("SIMULATED")
    assert tags["PatientID"] == "MR0-ANONYMOUS"
    assert tags["SeriesInstanceUID"] == local.SeriesInstanceUID
    assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    assert list((tmp_path / "store" / "pacs").iterdir()) == []  # delivered: the queue is empty


@needs_orthanc
def test_pacs_down_queues_durably_then_delivers(tmp_path):
    series = [
        write_dicom_volume(
            tmp_path / f"s{i}",
            np.full((4, 4, 2), i + 1.0),
            np.eye(4),
            simulated=True,
            series_description=f"twin {i}",
        )
        for i in range(2)
    ]
    pacs = Orthanc(tmp_path / "orthanc")  # not started: the PACS is down
    now = [1000.0]
    queue = PacsQueue(tmp_path / "queue", pacs.target, backoff_s=5, clock=lambda: now[0],
                      timeout_s=5)  # fmt: skip
    for s in series:
        assert queue.enqueue(s.files, s.series_description) is not None
    assert queue.process_due() == 0
    entries = queue.entries()
    assert [e.attempts for e in entries] == [1, 1]
    assert all(e.next_try == 1005.0 for e in entries)
    assert "cannot be reached" in entries[0].last_error
    now[0] += 6
    assert queue.process_due() == 0  # still down: the delay doubles
    assert all(e.next_try == 1016.0 for e in queue.entries())
    # a "restart": a new queue on the same folder finds both series, and delivers them
    pacs.start()
    try:
        again = PacsQueue(tmp_path / "queue", pacs.target, clock=lambda: now[0])
        assert len(again.entries()) == 2
        assert again.process_due() == 0  # not due yet
        now[0] = 1016.0
        assert again.process_due() == 2
        assert again.entries() == []
        ids = pacs.wait_series(2)
        descriptions = sorted(_tags(pacs, i)[0]["SeriesDescription"] for i in ids)
        assert descriptions == ["SIMULATED twin 0", "SIMULATED twin 1"]
        for i in ids:
            assert len(_tags(pacs, i)[1]) == 2
    finally:
        pacs.stop()


@needs_orthanc
def test_client_send_dicom(orthanc, tmp_path, capsys):
    s = write_dicom_volume(tmp_path / "dcm" / "a", np.ones((4, 4, 3)), np.eye(4), simulated=True)
    (tmp_path / "dcm" / "junk.txt").write_text("not DICOM")
    pacs = str(orthanc.target)
    assert client_main(["--send-dicom", str(tmp_path / "dcm"), "--pacs", pacs,
                        "--calling-aet", "MR0TEST"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert "sent 3 of 3 files" in out.out
    assert "junk.txt: not DICOM" in out.err
    (series_id,) = orthanc.wait_series(1)
    tags, instances = _tags(orthanc, series_id)
    assert tags["SeriesInstanceUID"] == s.series_instance_uid
    assert len(instances) == 3
    # a wrong AE title is rejected, and said so (status 1: the other side said no)
    wrong = f"127.0.0.1:{orthanc.dicom_port}:NOTTHEPACS"
    assert client_main(["--send-dicom", str(tmp_path / "dcm"), "--pacs", wrong,
                        "--retries", "0"]) == 1  # fmt: skip
    assert "rejected the association" in capsys.readouterr().err


def test_client_send_dicom_bad_arguments(tmp_path, capsys):
    """Bad arguments are status 2 with a message; nothing is sent (no PACS needed)."""
    s = write_dicom_volume(tmp_path / "dcm", np.ones((4, 4)), np.eye(4), simulated=True)
    folder, pacs = str(s.folder), "127.0.0.1:1:X"
    for argv, message in (
        ([folder], "needs --pacs"),
        ([folder, "--pacs", "nohostport"], "HOST:PORT:AET"),
        ([folder, "--pacs", pacs, "--retries", "-1"], "--retries must be >= 0"),
        ([folder, "--pacs", pacs, "-o", "x.h5"], "does not take --out"),
        ([folder, "--pacs", pacs, "-c", "passthrough"], "does not take --config"),
    ):
        with pytest.raises(SystemExit) as exc:
            client_main(["--send-dicom", *argv])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the PACS options without --send-dicom are refused
        client_main(["raw.h5", "-o", "x.h5", "--pacs", pacs])
    assert "belong(s) to --send-dicom" in capsys.readouterr().err
    assert client_main(["--send-dicom", str(tmp_path / "nope"), "--pacs", pacs]) == 2
    assert "no folder" in capsys.readouterr().err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("not DICOM")
    assert client_main(["--send-dicom", str(tmp_path / "junk"), "--pacs", pacs]) == 2
    assert "no DICOM files under" in capsys.readouterr().err


def test_client_send_dicom_retries_an_unreachable_pacs(tmp_path, capsys, monkeypatch):
    s = write_dicom_volume(tmp_path / "dcm", np.ones((4, 4)), np.eye(4), simulated=True)
    waits: list[float] = []
    sleep = time.sleep

    def no_backoff(seconds: float) -> None:  # pynetdicom's threads sleep in ms: let them
        if seconds >= 0.5:
            waits.append(seconds)
        else:
            sleep(seconds)

    monkeypatch.setattr("gadgets.wire.client.time.sleep", no_backoff)
    dead = f"127.0.0.1:{_free_port()}:X"
    argv = ["--send-dicom", str(s.folder), "--pacs", dead, "--retries", "2", "--timeout", "2"]
    assert client_main(argv) == 1
    err = capsys.readouterr().err
    assert waits == [1.0, 2.0]
    assert err.count("cannot be reached") == 3  # two warnings, then the error


def test_unreachable_pacs_is_a_pacs_error(tmp_path):
    s = write_dicom_volume(tmp_path / "s", np.ones((4, 4)), np.eye(4), simulated=True)
    with pytest.raises(PacsError, match="cannot be reached"):
        send_files(s.files, PacsTarget("127.0.0.1", _free_port(), "X"), timeout_s=2)


def test_queue_is_bounded_with_a_clear_log(tmp_path, caplog):
    a = write_dicom_volume(tmp_path / "a", np.ones((4, 4)), np.eye(4), simulated=True)
    b = write_dicom_volume(tmp_path / "b", np.ones((4, 4)), np.eye(4), simulated=True)
    queue = PacsQueue(tmp_path / "q", PacsTarget("127.0.0.1", 1, "X"), max_entries=1)
    assert queue.enqueue(a.files, "first") is not None
    with caplog.at_level(logging.ERROR, logger="mr0.pacs"):
        assert queue.enqueue(b.files, "second") is None
    assert "PACS queue full: series 'second'" in caplog.text
    small = PacsQueue(tmp_path / "q2", PacsTarget("127.0.0.1", 1, "X"), max_bytes=100)
    assert small.enqueue(a.files, "big") is None
    # an interrupted enqueue (no entry.json) is removed on start
    (tmp_path / "q" / ("f" * 32)).mkdir()
    assert PacsQueue(tmp_path / "q", PacsTarget("127.0.0.1", 1, "X")).recover() == 0
    assert len(PacsQueue(tmp_path / "q", PacsTarget("127.0.0.1", 1, "X")).entries()) == 1


def test_server_options(tmp_path):
    cfg, _ = parse_args(["--pacs", "pacs.local:104:ARCHIVE", "--pacs-calling-aet", "SCANNER1",
                         "--store", str(tmp_path), "--dicom-dir", str(tmp_path / "d")])  # fmt: skip
    assert cfg.pacs == PacsTarget("pacs.local", 104, "ARCHIVE", "SCANNER1")
    assert cfg.dicom_dir == tmp_path / "d"
    with pytest.raises(SystemExit):
        parse_args(["--pacs", "nohostport"])
    with pytest.raises(SystemExit):
        parse_args(["--pacs", "h:104:AET"])  # no --store: no durable queue
    assert PacsTarget.parse("[::1]:11112:AE").host == "::1"
    with pytest.raises(ValueError, match="ae_title"):
        PacsTarget.parse("h:104:" + "A" * 17)


def test_server_keeps_serving_while_the_pacs_is_down(tmp_path):
    dead = PacsTarget("127.0.0.1", _free_port(), AET)
    options = {"scheduler": False, "store_dir": tmp_path / "store", "pacs": dead}
    with mr0_server(**options, shutdown_grace_s=5) as srv:
        params = {"seq": (CORPUS / "write_gre.seq").read_text(), "size": 8, "progress_s": 0}
        for _ in range(2):  # two sessions in a row, each answered in full
            msgs = run_session(srv.address[1], "mr0_preview", params, timeout=60)
            assert msgs[-1].id == MessageId.CLOSE
            assert sum(m.id == MessageId.IMAGE for m in msgs) == 1
            assert any("queued for" in m.value for m in msgs if m.id == MessageId.TEXT)
        queue = srv.pacs.queue
    assert len(queue.entries()) == 2  # kept on disk for the next start
    assert not (tmp_path / "store" / "pacs_incoming").exists() or not any(
        (tmp_path / "store" / "pacs_incoming").iterdir()
    )


def test_which_server_images_count_as_simulated():
    import ismrmrd

    from gadgets.serve.dicom_output import is_simulated

    def image(**meta) -> ismrmrd.Image:
        img = ismrmrd.Image.from_array(np.ones((1, 1, 2, 2), np.float32), transpose=False)
        m = ismrmrd.Meta()
        for k, v in meta.items():
            m[k] = v
        img.attribute_string = m.serialize()
        return img

    assert is_simulated(image(MR0Phantom="builtin:brain", SeriesDescription="MR0 twin preview"))
    assert is_simulated(image(MR0Phantom="p", SeriesDescription="MR0 retro difference"))
    assert not is_simulated(image(MR0Phantom="p", SeriesDescription="MR0 retro measured"))
    assert not is_simulated(image(SeriesDescription="MR0 recon"))
    assert is_simulated(image(MR0Simulated="true", SeriesDescription="anything"))
    assert not is_simulated(image(MR0Simulated="false", MR0Phantom="p"))

"""Background jobs (scheduler jobs), retrieval (``mr0_retrieve``) and reference scans.

A background session is a scheduler job of function ``mrd_session``: its input files, state,
attempts, cancelling and recovery are the scheduler store's. The reference for a background
result is the same chain run in the foreground in the same test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest
from conftest import CORPUS, REPO, mr0_server

from gadgets.framework.session_store import Store, StoreError, new_job_id
from gadgets.wire.client import main as client_main
from gadgets.wire.framing import MessageId, MessageReader, MessageWriter
from gadgets.wire.mrdfile import read_items
from mr0core.io.mrd import parse_header
from mr0core.io.mrd_images import image_array, read_mrd_images
from scheduler.cli import main as scheduler_main
from scheduler.functions import MRD_SESSION
from scheduler.model import JobKind, JobSpec
from scheduler.store import DuplicateJobError, JobStore

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
needs_tools = pytest.mark.skipif(GENERATE is None, reason="needs Debian's ismrmrd-tools")


def scan(tmp_path: Path, name: str, patient: str, protocol: str, mid: str = "") -> Path:
    """A 64x64 4-coil Shepp-Logan scan whose header names a patient, protocol, measurement."""
    path = tmp_path / name
    subprocess.run([GENERATE, "-m", "64", "-c", "4", "-o", str(path)], cwd=tmp_path,
                   check=True, capture_output=True)  # fmt: skip
    ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    header = parse_header(ds.read_xml_header())
    header.subjectInformation = ismrmrd.xsd.subjectInformationType(patientID=patient)
    header.measurementInformation = ismrmrd.xsd.measurementInformationType(
        protocolName=protocol, measurementID=mid or None, patientPosition="HFS"
    )
    ds.write_xml_header(ismrmrd.xsd.ToXML(header))
    ds.close()
    return path


def session(port: int, config: str, params: dict, path: Path | None = None) -> list:
    """One session: config, header and acquisitions of ``path`` (if any), JSON, close."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        writer = MessageWriter(sock)
        writer.write_config_file(config)
        ds = None
        if path is not None:
            ds = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
            writer.write_header(ds.read_xml_header().decode())
        try:
            writer.write_text(json.dumps(params))
            if ds is not None:
                for i in range(ds.number_of_acquisitions()):
                    writer.write_acquisition(ds.read_acquisition(i))
            writer.write_close()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early; its reason is in the answer
        finally:
            if ds is not None:
                ds.close()
        return list(MessageReader(sock))


def texts(msgs: list) -> list[str]:
    return [m.value for m in msgs if m.id == MessageId.TEXT]


def images(msgs: list) -> list:
    return [m.value for m in msgs if m.id == MessageId.IMAGE]


@pytest.fixture
def server(server_factory, tmp_path):
    """A server of its own for each test, with a job store in the test's folder."""
    return server_factory(idle_timeout_s=60, store_dir=tmp_path / "store")


# -- the store ----------------------------------------------------------------------------------


def _background_spec(job_id: str, patient: str = "", protocol: str = "") -> JobSpec:
    params = {"config": "default", "patient": patient, "protocol": protocol,
              "measurement_id": ""}  # fmt: skip
    return JobSpec(job_id, JobKind.BATCH, function=MRD_SESSION, params=params)


def test_store_reads_background_jobs_from_the_scheduler_store(tmp_path):
    jobs = JobStore(tmp_path / "s" / "scheduler")
    store = Store(tmp_path / "s", jobs=jobs)
    first, second, other = new_job_id(), new_job_id(), new_job_id()
    jobs.submit(_background_spec(first, "P1", "t1"))
    jobs.submit(_background_spec(second, "P1", "t1"))
    jobs.submit(_background_spec(other))
    jobs.submit(JobSpec("a" * 24, JobKind.BATCH, function="noop"))  # not a background job
    assert store.job(first).state == "queued"
    assert (store.job(first).patient, store.job(first).protocol) == ("P1", "t1")
    assert store.find(patient="P1").id == second  # the newest
    assert store.find(protocol="t1", patient="P1").id == second
    assert {j.id for j in store.jobs()} == {first, second, other}
    assert store.counts()["queued"] == 3
    with pytest.raises(StoreError, match="no job for patient 'P2'"):
        store.find(patient="P2")
    with pytest.raises(StoreError, match="24 hex digits"):
        store.job("../../etc/passwd")
    with pytest.raises(StoreError, match="no job"):
        store.job("0" * 24)
    with pytest.raises(StoreError, match="no job"):
        store.job("a" * 24)  # a scheduler job, but not a background session
    with pytest.raises(StoreError, match="has no result"):
        store.result(first)  # queued
    # done: texts and counts come from the result's summary
    token = jobs.claim(first, "cpu")
    work = tmp_path / "work"
    work.mkdir()
    (work / "summary.json").write_text(json.dumps({"texts": ["report"], "counts": {"images": 1}}))
    assert jobs.complete(first, token, work)
    done = store.job(first)
    assert (done.state, done.texts, done.counts, done.attempts) == ("done", ["report"],
                                                                     {"images": 1}, 1)  # fmt: skip
    with pytest.raises(StoreError, match="result file is missing"):
        store.result(first)  # the summary alone is no result
    # a second Store on the same folders (a restarted server) sees the same jobs
    again = Store(tmp_path / "s", jobs=JobStore(tmp_path / "s" / "scheduler"))
    assert again.job(first).state == "done"
    with pytest.raises(StoreError, match="not a plain name"):
        again.reference_path("../x")
    # a worker's Store (references only) knows no background jobs
    with pytest.raises(StoreError, match="need the server's scheduler"):
        Store(tmp_path / "s").job(first)


def test_job_store_keeps_inputs_with_their_job(tmp_path):
    """Inputs go in with the job's row, out with it; unsubmitted or orphaned ones are removed."""
    jobs = JobStore(tmp_path / "sched")
    staged = jobs.stage_input()
    (staged / "input.h5").write_bytes(b"session")
    jobs.submit(JobSpec("j1", JobKind.BATCH, function="noop"), inputs=staged)
    assert not staged.exists()
    assert (jobs.input_path("j1") / "input.h5").read_bytes() == b"session"
    assert jobs.input_path("j1") is not None
    # refused: a folder that is not staged by the store; a duplicate id keeps the staged input
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(ValueError, match="not a folder of stage_input"):
        jobs.submit(JobSpec("j2", JobKind.BATCH, function="noop"), inputs=elsewhere)
    again = jobs.stage_input()
    with pytest.raises(DuplicateJobError, match="already in the store"):
        jobs.submit(JobSpec("j1", JobKind.BATCH, function="noop"), inputs=again)
    assert again.is_dir()
    # a session that never finished arriving (staged, never submitted) and an orphaned input
    (jobs.root / "inputs" / "ghost").mkdir()
    jobs.recover()
    assert not again.exists()
    assert not (jobs.root / "inputs" / "ghost").exists()
    assert jobs.input_path("j1") is not None  # its job is still there
    # retention counts the input; deleting the final job deletes it
    (entry,) = jobs.retention_entries(time.time())
    assert entry.bytes == len(b"session")
    assert not entry.removable
    assert jobs.cancel("j1")
    assert jobs.delete("j1")
    assert jobs.input_path("j1") is None


# -- background jobs through the server ---------------------------------------------------------


@needs_tools
def test_background_job_answers_at_once_and_is_retrieved(server, tmp_path):
    path = scan(tmp_path, "a.h5", patient="P7", protocol="gre_t1")
    port = server.address[1]
    ref = session(port, "default", {}, path)  # the same chain in the foreground
    ref_images = images(ref)
    assert len(ref_images) == 1

    answer = session(port, "default", {"background": True}, path)
    assert [m.id for m in answer] == [MessageId.TEXT, MessageId.CLOSE]
    reply = json.loads(answer[0].value)
    assert reply["state"] == "queued"
    job = reply["job"]

    got = session(port, "mr0_retrieve", {"job": job, "wait_s": 60})
    assert got[-1].id == MessageId.CLOSE
    summary = json.loads(texts(got)[-1])
    assert (summary["job"], summary["state"], summary["patient"]) == (job, "done", "P7")
    (image,) = images(got)
    np.testing.assert_array_equal(image_array(image), image_array(ref_images[0]))

    # by patient and protocol: the newest match
    path2 = scan(tmp_path, "b.h5", patient="P7", protocol="gre_t1")
    job2 = json.loads(session(port, "sense", {"background": True}, path2)[0].value)["job"]
    assert server.scheduler.wait(job2, 60).state == "done"
    newest = session(port, "mr0_retrieve", {"patient": "P7", "protocol": "gre_t1"})
    assert json.loads(texts(newest)[-1])["job"] == job2

    # errors: unknown job, no key, a chain that fails in the background
    for params, expected in (({"job": "f" * 24}, "no job"), ({}, "give a job id"),
                             ({"job": "x"}, "24 hex digits")):  # fmt: skip
        out = texts(session(port, "mr0_retrieve", params))
        assert out[-1].startswith("ERROR"), out
        assert expected in out[-1], out
    # a job that fails while it runs: retrieving it reports why
    bad = json.loads(
        session(port, "mr0_preview", {"background": True, "seq": "[VERSION]\nmajor 1\n"})[0].value
    )["job"]
    assert server.scheduler.wait(bad, 60).state == "failed"
    assert server.store.job(bad).state == "failed"
    assert server.store.job(bad).attempts == 1  # the session's own fault: not retried
    out = texts(session(port, "mr0_retrieve", {"job": bad}))
    assert out[-1].startswith(f"ERROR: Retrieve: job {bad} failed: ")
    assert "parse" in out[-1]


@needs_tools
def test_background_refused_without_store_or_with_bad_chain(tmp_path):
    with mr0_server(idle_timeout_s=30, shutdown_grace_s=5) as srv:
        path = scan(tmp_path, "a.h5", patient="P", protocol="p")
        out = texts(session(srv.address[1], "default", {"background": True}, path))
        assert out == ["ERROR: background jobs need the server's job store (mr0-server --store)"]
    with mr0_server(idle_timeout_s=30, store_dir=tmp_path / "store", shutdown_grace_s=5) as srv:
        # an override no gadget has: refused at once, no job is made
        out = texts(session(srv.address[1], "default", {"background": True, "nope": 1}, path))
        assert out[-1].startswith("ERROR")
        assert "nope" in out[-1]
        assert srv.store.jobs() == []
        out = texts(session(srv.address[1], "default", {"background": "yes"}, path))
        assert "must be true or false" in out[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, store: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(store.parent / f"server-{port}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gadgets.serve.server", "--port", str(port), "--store", str(store),
         "--log-level", "warning"],
        env=env, stderr=log, text=True,
    )  # fmt: skip
    proc.log_file = log
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(Path(log.name).read_text()) from None
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def _state(store: Path, job: str) -> str:
    with sqlite3.connect(store / "scheduler" / "scheduler.sqlite", timeout=30) as db:
        return db.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()[0]


def test_background_job_survives_a_killed_server(tmp_path):
    """SIGKILL the server while the job runs; the restarted server runs it again.

    The scheduler's recovery requeues the interrupted job (its attempt counted), and its
    stored input is still there for the next attempt.
    """
    store = tmp_path / "store"
    port = _free_port()
    proc = _start_server(port, store)
    try:
        job_params = {
            "seq": (CORPUS / "write_gre.seq").read_text(),
            "phantom": "brain",
            "size": 256,
            "accuracy": 1e-6,
            "max_states": 2000,
            "background": True,
        }
        answer = session(port, "mr0_preview", job_params)
        job = json.loads(answer[0].value)["job"]
        deadline = time.monotonic() + 60
        while _state(store, job) != "running":
            assert time.monotonic() < deadline, _state(store, job)
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(20)
        proc.log_file.close()
    assert _state(store, job) == "running"  # left behind by the killed server

    port = _free_port()
    proc = _start_server(port, store)
    try:
        out = tmp_path / "retrieved.h5"
        status = client_main(["--retrieve", job, "--wait", "120", "-p", str(port),
                              "-o", str(out)])  # fmt: skip
        assert status == 0
        (image,) = read_mrd_images(out)
        assert float(image_array(image).max()) > 0
        record = JobStore(store / "scheduler").get(job)
        assert (record.state, record.attempts) == ("done", 2)  # it ran again after the restart
        assert "interrupted" not in record.error
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        proc.log_file.close()


def test_background_job_cancelled_through_the_scheduler(tmp_path):
    """``mr0-scheduler cancel`` stops a running background job; retrieving it says so."""
    with mr0_server(idle_timeout_s=60, store_dir=tmp_path / "store") as srv:
        port = srv.address[1]
        slow = {"seq": (CORPUS / "write_gre.seq").read_text(), "phantom": "brain", "size": 256,
                "accuracy": 1e-6, "max_states": 2000, "background": True}  # fmt: skip
        job = json.loads(session(port, "mr0_preview", slow)[0].value)["job"]
        # not finished: the summary alone, with its state
        (summary,) = texts(session(port, "mr0_retrieve", {"job": job}))
        assert json.loads(summary)["state"] in ("queued", "running")
        assert scheduler_main(["--store", str(tmp_path / "store" / "scheduler"), "cancel",
                               job]) == 0  # fmt: skip
        assert srv.scheduler.wait(job, 30).state == "cancelled"
        out = texts(session(port, "mr0_retrieve", {"job": job, "wait_s": 5}))
        assert out[-1].startswith(f"ERROR: Retrieve: job {job} was cancelled"), out
        assert srv.store.counts()["cancelled"] == 1


# -- reading stored files -----------------------------------------------------------------------


@needs_tools
def test_read_items_round_trips_a_session(tmp_path):
    path = scan(tmp_path, "a.h5", patient="P", protocol="p")
    xml, items = read_items(path)
    assert "P" in xml
    assert len(items) == 64  # -m 64: 64 lines
    assert all(isinstance(a, ismrmrd.Acquisition) for a in items)
    assert read_items(tmp_path / "a.h5")[1][5].idx.kspace_encode_step_1 == 5


# -- external reference scans -------------------------------------------------------------------


def _nrmse(ours: np.ndarray, ref: np.ndarray) -> float:
    a = float((ours * ref).sum() / (ours * ours).sum())
    return float(np.linalg.norm(a * ours - ref) / np.linalg.norm(ref))


def _generate(tmp_path: Path, name: str, *args: str) -> Path:
    path = tmp_path / name
    subprocess.run([GENERATE, *args, "-o", str(path)], cwd=tmp_path, check=True,
                   capture_output=True)  # fmt: skip
    return path


@needs_tools
def test_sense_with_an_external_reference_scan(server, tmp_path):
    port = server.address[1]
    full = _generate(tmp_path, "full.h5", "-m", "64", "-c", "8", "-n", "0.01")
    fast = _generate(tmp_path, "fast.h5", "-m", "64", "-c", "8", "-a", "2", "-w", "0",
                     "-n", "0.01")  # fmt: skip
    truth = image_array(images(session(port, "default", {}, full))[0])[..., 0]

    # the accelerated scan has no calibration lines: without a reference SENSE cannot run
    # and the chain falls back to an aliased FFT
    plain = image_array(images(session(port, "sense", {}, fast))[0])[..., 0]
    # store a fully sampled low-resolution coil reference under a measurement id
    ref = _generate(tmp_path, "ref.h5", "-m", "32", "-c", "8", "-n", "0.01")
    stored = texts(session(port, "mr0_reference", {"measurement_id": "ref001"}, ref))
    assert json.loads(stored[-1]) == {"reference": "ref001", "acquisitions": 32}
    msgs = session(port, "sense", {"reference": "ref001"}, fast)
    # the generator shifts the sampled lines from repetition to repetition: one image each
    assert [im.repetition for im in images(msgs)] == [0, 1]
    image = images(msgs)[0]
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    assert "SENSE" in str(meta["ImageProcessingHistory"])
    unfolded = image_array(image)[..., 0]
    # compare inside the object (SENSE zeroes the background, RSS keeps its noise floor)
    inside = truth > 0.1 * truth.max()
    error = _nrmse(unfolded[inside], truth[inside])
    assert error < 0.06
    assert _nrmse(plain[inside], truth[inside]) > 5 * error

    # the server's scheduler ran the CG-SENSE as a recon call
    recon_calls = [c for c in server.scheduler.calls() if c["function"] == "reconstruct"]
    assert recon_calls
    assert all(c["state"] == "done" and c["kind"] == "recon" for c in recon_calls)

    # the header's measurementDependency (SenMap) names it as well
    ds = ismrmrd.Dataset(str(fast), "dataset", create_if_needed=False)
    header = parse_header(ds.read_xml_header())
    header.measurementInformation = ismrmrd.xsd.measurementInformationType(
        patientPosition="HFS", measurementDependency=[
            ismrmrd.xsd.measurementDependencyType(dependencyType="SenMap", measurementID="ref001")
        ],
    )  # fmt: skip
    ds.write_xml_header(ismrmrd.xsd.ToXML(header))
    ds.close()
    again = images(session(port, "sense", {}, fast))[0]
    np.testing.assert_allclose(image_array(again)[..., 0], unfolded, rtol=1e-5, atol=1e-6)

    # unknown and unsafe ids are clear errors
    for mid, expected in (("nope", "no reference scan"), ("../x", "not a plain name")):
        out = texts(session(port, "sense", {"reference": mid}, fast))
        assert out[-1].startswith("ERROR"), out
        assert expected in out[-1]

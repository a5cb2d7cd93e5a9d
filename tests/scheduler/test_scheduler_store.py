"""Tests of the scheduler's durable job store (``scheduler.store``).

The crash tests run real processes: a small driver (written to ``tmp_path``) claims jobs, does a
numpy computation and completes them; the test SIGKILLs it mid-run, recovers, and lets a second
driver finish. Every job must end ``done`` exactly once, with the result of its accepted attempt.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO

import scheduler.store as store_module
from scheduler.model import CPU, JOB_STATES, JobKind, JobSpec
from scheduler.store import (
    DB_NAME,
    DuplicateJobError,
    JobIdError,
    JobStore,
    NoResultError,
    ResultError,
    ResultTooLargeError,
    StoreError,
    UnknownJobError,
)

N_JOBS = 20
WAIT_S = 60.0  # safety net for a hung driver, never a correctness threshold


@pytest.fixture
def store(tmp_path: Path):
    s = JobStore(tmp_path / "store")
    yield s
    s.close()


def spec(job_id: str, **kw) -> JobSpec:
    kw.setdefault("kind", JobKind.BATCH)
    return JobSpec(id=job_id, **kw)


def running(store: JobStore, job_id: str, device: str = CPU) -> int:
    """Submit and claim a job; return its token."""
    store.submit(spec(job_id))
    token = store.claim(job_id, device, "test")
    assert token == 1
    return token


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# -- submit ---------------------------------------------------------------------------------------


def test_submit_keeps_every_spec_field_across_reopen(tmp_path):
    original = JobSpec(
        id="sim-001", kind=JobKind.RETROSIM, estimate_bytes=3 * 1024**3, function="simulate",
        params={"seq": "gre.seq", "tr_s": 0.005, "flip": [5, 10], "nested": {"a": None}},
        allow_cpu=False, needs_gpu=True, timeout_s=120.5, submitted=1_700_000_000.25,
        max_attempts=5,
    )  # fmt: skip
    root = tmp_path / "store"
    with JobStore(root) as first:
        rec = first.submit(original)
    assert (rec.state, rec.attempts, rec.priority) == ("queued", 0, int(JobKind.RETROSIM))
    assert (rec.device, rec.worker, rec.started, rec.finished, rec.result) == (None,) * 5
    assert rec.spec() == original
    with JobStore(root) as second:  # a restart sees the same job
        again = second.get("sim-001")
    assert again == rec
    assert again.spec() == original
    assert again.as_dict()["kind"] == "retrosim"
    json.dumps(again.as_dict())


def test_submit_stamps_the_time_when_the_spec_has_none(store):
    before = time.time()
    rec = store.submit(spec("a"))
    assert before <= rec.submitted <= time.time()
    assert rec.spec().submitted == rec.submitted


def test_duplicate_submit_is_refused_and_keeps_the_first(store):
    store.submit(spec("dup", kind=JobKind.PREVIEW, params={"v": 1}))
    token = store.claim("dup", CPU)
    assert store.complete("dup", token, {"v": 1})
    with pytest.raises(DuplicateJobError, match=r"'dup' is already in the store \(done\)"):
        store.submit(spec("dup", kind=JobKind.BATCH, params={"v": 2}))
    rec = store.get("dup")
    assert (rec.kind, rec.params, rec.state) == (JobKind.PREVIEW, {"v": 1}, "done")
    assert store.counts()["done"] == 1
    assert sum(store.counts().values()) == 1


@pytest.mark.parametrize(
    "bad_id",
    ["", ".hidden", "..", "../escape", "a/b", "a\\b", "a b", "x" * 129, "é", "ok\n", "-lead",
     None, 7],
)  # fmt: skip
def test_unsafe_ids_are_refused_before_naming_a_folder(tmp_path, store, bad_id):
    with pytest.raises(JobIdError, match="not a plain name"):
        store.submit(JobSpec(id=bad_id, kind=JobKind.BATCH))
    for call in (
        lambda: store.get(bad_id),
        lambda: store.claim(bad_id, CPU),
        lambda: store.complete(bad_id, 1, {"x": 1}),
        lambda: store.fail(bad_id, 1, "e"),
        lambda: store.cancel(bad_id),
    ):
        with pytest.raises(JobIdError):
            call()
    assert sum(store.counts().values()) == 0
    assert listing(tmp_path) == ["store"]
    assert listing(tmp_path / "store" / "results") == []


def test_longest_plain_id_is_accepted(store):
    long_id = "a" + "b._-9" * 25 + "xy"
    assert len(long_id) == 128
    assert store.submit(spec(long_id)).id == long_id


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("params", {"f": object()}, "not JSON-able"),
        ("params", ["not", "a", "dict"], "must be a dict"),
        ("max_attempts", 0, "max_attempts 0"),
        ("estimate_bytes", -1, "estimate_bytes -1"),
        ("timeout_s", 0.0, "timeout_s"),
    ],
)
def test_bad_spec_fields_are_refused_and_nothing_stored(store, field, value, message):
    with pytest.raises(ValueError, match=message):
        store.submit(spec("bad", **{field: value}))
    with pytest.raises(UnknownJobError):
        store.get("bad")


def test_oversized_params_are_refused(store, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_PARAMS_BYTES", 100)
    store.submit(spec("small", params={"x": "y" * 50}))
    with pytest.raises(ValueError, match="bytes as JSON"):
        store.submit(spec("big", params={"x": "y" * 100}))


# -- transitions ----------------------------------------------------------------------------------


def test_lifecycle_claim_complete_and_refused_transitions(tmp_path, store):
    store.submit(spec("j1", params={"n": 3}))
    before = time.time()
    token = store.claim("j1", "cuda:0", "gpu0 pid 1")
    assert token == 1
    rec = store.get("j1")
    assert (rec.state, rec.attempts, rec.device, rec.worker) == (
        "running",
        1,
        "cuda:0",
        "gpu0 pid 1",
    )
    assert before <= rec.started <= time.time()
    assert store.claim("j1", CPU) is None  # claim twice: refused
    with pytest.raises(NoResultError, match="running"):
        store.load_result("j1")
    assert store.result_path("j1") is None

    other = JobStore(tmp_path / "store")  # a second connection (another worker) completes it
    assert other.complete("j1", token, {"sum": 6, "token": token})
    other.close()

    rec = store.get("j1")
    assert (rec.state, rec.result, rec.result_kind, rec.error) == (
        "done",
        "result.json",
        "json",
        "",
    )
    assert rec.finished >= rec.started
    path = tmp_path / "store" / "results" / "j1" / "result.json"
    assert store.result_path("j1") == path
    assert json.loads(path.read_text()) == {"sum": 6, "token": 1}
    assert store.load_result("j1") == {"sum": 6, "token": 1}

    # a done job stays done: every later transition is refused and changes nothing
    assert not store.complete("j1", token, {"sum": -1})  # double completion
    assert not store.fail("j1", token, "late failure", retry=True)
    assert not store.cancel("j1")
    assert store.claim("j1", CPU) is None
    assert store.get("j1") == rec
    assert store.load_result("j1") == {"sum": 6, "token": 1}
    assert listing(tmp_path / "store" / "staging") == []


def test_complete_with_a_stale_token_is_refused_and_writes_nothing(tmp_path, store):
    token1 = running(store, "j")
    assert store.fail("j", token1, "CUDA out of memory", retry=True)
    token2 = store.claim("j", CPU, "cpu worker")
    assert token2 == 2
    assert not store.complete("j", token1, {"from": "old attempt"})
    assert store.get("j").state == "running"
    assert listing(tmp_path / "store" / "results") == []
    assert listing(tmp_path / "store" / "staging") == []
    assert not store.fail("j", token1, "old attempt failed")
    assert store.get("j").state == "running"
    assert store.complete("j", token2, {"from": "new attempt"})
    assert store.load_result("j") == {"from": "new attempt"}


def test_fail_with_retry_requeues_until_max_attempts(store):
    store.submit(spec("r", max_attempts=2))
    token = store.claim("r", "cuda:1", "w")
    assert store.fail("r", token, "CUDA out of memory", retry=True)
    rec = store.get("r")
    assert (rec.state, rec.attempts, rec.device, rec.worker) == ("queued", 1, None, None)
    assert rec.error == "CUDA out of memory"
    assert rec.finished is None
    assert [q.id for q in store.queued()] == ["r"]

    token = store.claim("r", CPU, "w")
    assert token == 2
    assert store.fail("r", token, "CUDA out of memory", retry=True)
    rec = store.get("r")
    assert (rec.state, rec.attempts) == ("failed", 2)
    assert "no retry left" in rec.error
    assert rec.error.startswith("CUDA out of memory")
    assert rec.finished is not None
    assert store.claim("r", CPU) is None
    assert store.queued() == []


def test_fail_without_retry_fails_at_once(store):
    store.submit(spec("f", max_attempts=3))
    token = store.claim("f", CPU)
    assert store.fail("f", token, "ValueError: bad sequence")
    rec = store.get("f")
    assert (rec.state, rec.attempts, rec.error) == ("failed", 1, "ValueError: bad sequence")
    assert not store.fail("f", token, "again", retry=True)
    assert store.get("f") == rec


def test_fail_of_a_queued_job_is_refused(store):
    store.submit(spec("q"))
    assert not store.fail("q", 1, "never claimed", retry=False)
    assert store.get("q").state == "queued"


def test_error_text_is_cut(store, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_ERROR_CHARS", 10)
    token = running(store, "e")
    assert store.fail("e", token, "0123456789abcdef")
    assert store.get("e").error == "0123456789"


def test_cancel_queued_job_refuses_its_claim(store):
    store.submit(spec("c"))
    assert store.cancel("c", "user asked")
    rec = store.get("c")
    assert (rec.state, rec.error) == ("cancelled", "user asked")
    assert rec.finished is not None
    assert store.claim("c", CPU) is None
    assert not store.cancel("c")
    assert store.queued() == []


def test_cancel_running_job_refuses_its_completion_and_keeps_the_output(tmp_path, store):
    token = running(store, "c", device="cuda:0")
    assert store.cancel("c")
    rec = store.get("c")
    assert (rec.state, rec.device) == ("cancelled", "cuda:0")  # who to stop
    out = tmp_path / "work" / "out.h5"
    out.parent.mkdir()
    out.write_bytes(b"\x89HDF fake")
    assert not store.complete("c", token, out)
    assert out.read_bytes() == b"\x89HDF fake"  # a refused completion does not take the file
    assert not store.complete("c", token, {"x": 1})
    assert not store.fail("c", token, "x", retry=True)
    assert store.get("c") == rec
    assert listing(tmp_path / "store" / "results") == []
    assert listing(tmp_path / "store" / "staging") == []
    with pytest.raises(NoResultError, match="cancelled"):
        store.load_result("c")


def test_late_refusal_inside_the_transaction_keeps_the_output(tmp_path, store, monkeypatch):
    """Refused only at the final check (the job was cancelled after the early check passed)."""
    token = running(store, "late")
    assert store.cancel("late")
    monkeypatch.setattr(JobStore, "_is_current", lambda self, job_id, token: True)
    out = tmp_path / "work"
    out.mkdir()
    (out / "image.npy").write_bytes(b"data")
    assert not store.complete("late", token, out)
    assert not store.complete("late", token, tmp_path / "work" / "image.npy")
    assert not store.complete("late", token, {"x": 1})
    assert (out / "image.npy").read_bytes() == b"data"
    assert store.get("late").state == "cancelled"
    # a stale token, refused at the final check too
    stale = running(store, "requeued")
    assert store.fail("requeued", stale, "worker died", retry=True)
    assert store.claim("requeued", CPU) == 2
    assert not store.complete("requeued", stale, {"from": "stale worker"})
    assert not store.fail("requeued", stale, "stale worker")
    assert store.get("requeued").state == "running"
    assert listing(tmp_path / "store" / "results") == []
    assert listing(tmp_path / "store" / "staging") == []


def test_unknown_jobs_raise(store):
    for call in (
        lambda: store.get("nope"),
        lambda: store.claim("nope", CPU),
        lambda: store.complete("nope", 1, {"x": 1}),
        lambda: store.fail("nope", 1, "e"),
        lambda: store.cancel("nope"),
        lambda: store.result_path("nope"),
    ):
        with pytest.raises(UnknownJobError, match="no job 'nope'"):
            call()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "1"])
def test_bad_tokens_raise(store, bad):
    running(store, "t")
    with pytest.raises((TypeError, ValueError)):
        store.complete("t", bad, {"x": 1})
    assert store.get("t").state == "running"


def test_bad_device_names_raise(store):
    store.submit(spec("d"))
    for device in ("", "../gpu", "cuda 0", None):
        with pytest.raises(ValueError, match="device"):
            store.claim("d", device)
    assert store.get("d").state == "queued"


# -- results --------------------------------------------------------------------------------------


def test_bytes_result(tmp_path, store):
    token = running(store, "b")
    data = bytes(range(256)) * 10
    assert store.complete("b", token, data)
    rec = store.get("b")
    assert (rec.result, rec.result_kind) == ("result.bin", "bytes")
    assert store.load_result("b") == data
    assert (tmp_path / "store" / "results" / "b" / "result.bin").read_bytes() == data


def test_file_result_is_moved_in(tmp_path, store):
    token = running(store, "f")
    out = tmp_path / "job-tmp" / "images.h5"
    out.parent.mkdir()
    out.write_bytes(b"mrd" * 1000)
    assert store.complete("f", token, out)
    stored = tmp_path / "store" / "results" / "f" / "images.h5"
    assert store.result_path("f") == stored
    assert store.load_result("f") == stored
    assert stored.read_bytes() == b"mrd" * 1000
    assert not out.exists()
    assert store.get("f").result_kind == "file"


def test_folder_result_is_moved_in(tmp_path, store):
    token = running(store, "d")
    out = tmp_path / "job-tmp" / "nifti"
    (out / "sub").mkdir(parents=True)
    (out / "t1.nii").write_bytes(b"one")
    (out / "sub" / "t2.nii").write_bytes(b"two")
    assert store.complete("d", token, out)
    stored = store.load_result("d")
    assert stored == tmp_path / "store" / "results" / "d" / "nifti"
    assert (stored / "t1.nii").read_bytes() == b"one"
    assert (stored / "sub" / "t2.nii").read_bytes() == b"two"
    assert not out.exists()
    assert store.get("d").result_kind == "dir"


def test_file_with_an_odd_name_is_stored_as_result(tmp_path, store):
    token = running(store, "o")
    out = tmp_path / "my output.h5"
    out.write_bytes(b"x")
    assert store.complete("o", token, out)
    assert store.result_path("o").name == "result"


def test_no_result(tmp_path, store):
    token = running(store, "n")
    assert store.complete("n", token)
    assert store.get("n").state == "done"
    assert store.load_result("n") is None
    assert store.result_path("n") is None
    assert listing(tmp_path / "store" / "results") == []


@pytest.mark.parametrize(
    ("result", "error", "message"),
    [
        ("a string is not a path", ResultError, "not str"),
        ({"x": object()}, ResultError, "not JSON-able"),
        ({"x": "y" * 200}, ResultTooLargeError, "at most 100"),
        (b"z" * 101, ResultTooLargeError, "at most 100"),
        (Path("/nonexistent/result.h5"), ResultError, "does not exist"),
    ],
)
def test_refused_results_leave_the_job_running(
    tmp_path, store, monkeypatch, result, error, message
):
    monkeypatch.setattr(store_module, "MAX_JSON_BYTES", 100)
    monkeypatch.setattr(store_module, "MAX_BIN_BYTES", 100)
    token = running(store, "r")
    with pytest.raises(error, match=message):
        store.complete("r", token, result)
    assert store.get("r").state == "running"
    assert listing(tmp_path / "store" / "staging") == []
    assert store.complete("r", token, {"x": "fits"})  # the token still holds
    assert store.load_result("r") == {"x": "fits"}


def test_complete_replaces_a_leftover_result_folder(tmp_path, store):
    """A crash after the rename but before the commit left ``results/<id>``: it is replaced."""
    token = running(store, "l")
    leftover = tmp_path / "store" / "results" / "l"
    leftover.mkdir()
    (leftover / "result.bin").write_bytes(b"from a crashed attempt")
    assert store.complete("l", token, {"fresh": True})
    assert listing(leftover) == ["result.json"]
    assert store.load_result("l") == {"fresh": True}
    assert listing(tmp_path / "store" / "staging") == []


def test_missing_result_file_is_reported(tmp_path, store):
    token = running(store, "m")
    assert store.complete("m", token, {"x": 1})
    (tmp_path / "store" / "results" / "m" / "result.json").unlink()
    with pytest.raises(StoreError, match="missing"):
        store.load_result("m")


# -- recovery -------------------------------------------------------------------------------------


def test_recover_requeues_running_jobs_and_fails_exhausted_ones(tmp_path):
    root = tmp_path / "store"
    with JobStore(root) as before:
        for job_id, max_attempts in (("a", 3), ("b", 1), ("c", 3), ("d", 3), ("e", 3), ("f", 3)):
            before.submit(spec(job_id, max_attempts=max_attempts))
        for job_id in ("a", "b", "d", "e", "f"):
            before.claim(job_id, "cuda:0", "old worker")
        assert before.complete("d", 1, {"d": 1})
        assert before.cancel("e")
        # "f" is running when the scheduler dies, too
    with JobStore(root) as after:  # the restarted scheduler
        assert after.recover() == ["a", "f"]
        a = after.get("a")
        assert (a.state, a.attempts, a.device, a.worker) == ("queued", 1, None, None)
        assert "interrupted on cuda:0" in a.error
        b = after.get("b")
        assert (b.state, b.attempts) == ("failed", 1)
        assert "interrupted 1 times" in b.error
        assert b.finished is not None
        assert after.get("c").state == "queued"
        assert after.get("c").attempts == 0
        assert after.get("d").state == "done"
        assert after.load_result("d") == {"d": 1}
        assert after.get("e").state == "cancelled"
        assert [q.id for q in after.queued()] == ["a", "c", "f"]
        assert after.recover() == []  # nothing left to recover

        # the interrupted attempt counted: the next claim is attempt 2, the old token is stale
        assert not after.complete("a", 1, {"from": "old worker"})
        assert after.claim("a", CPU, "new worker") == 2
        assert not after.complete("a", 1, {"from": "old worker"})
        assert after.get("a").state == "running"
        assert after.complete("a", 2, {"from": "new worker"})
        assert after.load_result("a") == {"from": "new worker"}


def test_repeated_interruptions_fail_the_job(store):
    store.submit(spec("x", max_attempts=2))
    assert store.claim("x", CPU) == 1
    assert store.recover() == ["x"]
    assert store.claim("x", CPU) == 2
    assert store.recover() == []
    rec = store.get("x")
    assert (rec.state, rec.attempts) == ("failed", 2)
    assert "interrupted 2 times" in rec.error


def test_recover_removes_leftovers_but_keeps_done_results(tmp_path, store):
    results = tmp_path / "store" / "results"
    staging = tmp_path / "store" / "staging"
    token = running(store, "done-job")
    assert store.complete("done-job", token, {"keep": True})
    running(store, "crashed")
    (results / "crashed").mkdir()  # renamed into place, but the commit never happened
    (results / "crashed" / "result.json").write_text('{"token": 1}')
    (results / "purged-job").mkdir()  # its row was purged, the folder not yet
    (staging / "crashed.1.0123456789ab").mkdir()
    (staging / "crashed.1.0123456789ab" / "result.json").write_text("{}")
    assert store.recover() == ["crashed"]
    assert listing(results) == ["done-job"]
    assert listing(staging) == []
    assert store.load_result("done-job") == {"keep": True}


# -- queries --------------------------------------------------------------------------------------


def test_queued_order_jobs_and_counts(store):
    for job_id in ("c", "a", "b", "d"):
        store.submit(spec(job_id))
    assert [q.id for q in store.queued()] == ["c", "a", "b", "d"]
    token = store.claim("a", CPU)
    assert [q.id for q in store.queued()] == ["c", "b", "d"]
    store.fail("a", token, "retry me", retry=True)
    assert [q.id for q in store.queued()] == ["c", "a", "b", "d"]  # keeps its place
    store.claim("b", CPU)
    store.cancel("d")
    assert store.counts() == {"queued": 2, "running": 1, "done": 0, "failed": 0, "cancelled": 1}
    assert list(store.counts()) == list(JOB_STATES)
    assert [j.id for j in store.jobs()] == ["d", "b", "a", "c"]
    assert [j.id for j in store.jobs(limit=2)] == ["d", "b"]
    assert [j.id for j in store.jobs("queued")] == ["a", "c"]
    assert [j.id for j in store.jobs("running")] == ["b"]
    with pytest.raises(ValueError, match="not one of"):
        store.jobs("finished")
    with pytest.raises(ValueError, match="limit"):
        store.jobs(limit=0)


def test_purge_removes_only_old_final_jobs_and_their_results(tmp_path, store):
    token = running(store, "old-done")
    store.complete("old-done", token, {"x": 1})
    store.submit(spec("old-cancelled"))
    store.cancel("old-cancelled")
    running(store, "still-running")
    store.submit(spec("still-queued"))
    assert store.purge(3600) == []
    assert store.purge(0) == ["old-done", "old-cancelled"]
    assert sorted(j.id for j in store.jobs()) == ["still-queued", "still-running"]
    assert listing(tmp_path / "store" / "results") == []
    store.submit(spec("old-done"))  # the id is free again
    with pytest.raises(ValueError, match="older_than_s"):
        store.purge(-1)


# -- threads --------------------------------------------------------------------------------------


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # handed to the test below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    if errors:
        raise errors[0]


def test_eight_threads_claim_each_of_50_jobs_exactly_once(store):
    ids = [f"job-{i:02d}" for i in range(50)]
    for job_id in ids:
        store.submit(spec(job_id))
    barrier = threading.Barrier(8)
    claims: list[tuple[str, str, int]] = []

    def worker(name: str) -> Callable[[], None]:
        def claim_all() -> None:
            barrier.wait()
            while queue := store.queued():
                for rec in queue:  # every thread tries every job, in the same order
                    token = store.claim(rec.id, CPU, name)
                    if token is not None:
                        claims.append((rec.id, name, token))

        return claim_all

    run_threads([worker(f"t{i}") for i in range(8)])
    assert sorted(job_id for job_id, _, _ in claims) == ids
    assert {token for _, _, token in claims} == {1}
    assert store.counts()["running"] == 50
    for job_id, name, _ in claims:
        assert store.get(job_id).worker == name


def test_complete_racing_cancel_gives_one_winner_per_job(tmp_path, store):
    ids = [f"race-{i:02d}" for i in range(40)]
    for job_id in ids:
        running(store, job_id)
    barrier = threading.Barrier(2)
    completed: dict[str, bool] = {}
    cancelled: dict[str, bool] = {}

    def completer() -> None:
        barrier.wait()
        for job_id in ids:
            completed[job_id] = store.complete(job_id, 1, {"id": job_id})

    def canceller() -> None:
        barrier.wait()
        for job_id in reversed(ids):
            cancelled[job_id] = store.cancel(job_id)

    run_threads([completer, canceller])
    results = tmp_path / "store" / "results"
    for job_id in ids:
        assert completed[job_id] != cancelled[job_id], job_id
        state = store.get(job_id).state
        assert state == ("done" if completed[job_id] else "cancelled")
        assert (results / job_id).exists() == completed[job_id]
    assert listing(tmp_path / "store" / "staging") == []


# -- broken folders -------------------------------------------------------------------------------


def test_corrupted_database_gives_a_clear_error(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / DB_NAME).write_bytes(b"this is not an SQLite database\n" * 200)
    with pytest.raises(StoreError, match=r"scheduler\.sqlite.*not a database"):
        JobStore(root)


def test_foreign_sqlite_database_is_refused(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    with sqlite3.connect(root / DB_NAME) as db:
        db.execute("CREATE TABLE jobs (id TEXT)")
    db.close()
    with pytest.raises(StoreError, match="not a scheduler job store"):
        JobStore(root)


def test_newer_schema_is_refused(tmp_path):
    root = tmp_path / "store"
    JobStore(root).close()
    db = sqlite3.connect(root / DB_NAME)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="schema 99"):
        JobStore(root)


def test_root_that_is_a_file_gives_a_clear_error(tmp_path):
    root = tmp_path / "store"
    root.write_text("not a folder")
    with pytest.raises(StoreError, match=r"store folder .*store is not usable"):
        JobStore(root)


def test_results_that_is_a_file_gives_a_clear_error(tmp_path):
    root = tmp_path / "store"
    root.mkdir()
    (root / "results").write_text("not a folder")
    with pytest.raises(StoreError, match="not usable"):
        JobStore(root)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions"
)
def test_unwritable_root_gives_a_clear_error(tmp_path):
    root = tmp_path / "store"
    JobStore(root).close()
    root.chmod(0o500)
    try:
        with pytest.raises(StoreError, match="not usable"):
            JobStore(root)
    finally:
        root.chmod(0o700)


def test_closed_store_raises(tmp_path):
    s = JobStore(tmp_path / "store")
    s.submit(spec("a"))
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("a")


# -- real processes: SIGKILL mid-run, restart, finish ---------------------------------------------

DRIVER = r'''
"""Test driver: work through the queue like a scheduler's worker process would."""
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from scheduler.store import JobStore

root, pause, n_threads, mode = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
pid = os.getpid()
if mode == "crash-after-install":  # die after the result is renamed into place, before the commit
    real_replace = os.replace

    def replace(src, dst):
        real_replace(src, dst)
        if Path(dst).parent.name == "results":
            os._exit(137)

    os.replace = replace
store = JobStore(root)
lock = threading.Lock()


def say(text):
    with lock:
        print(text, flush=True)


def work(name):
    while True:
        for rec in store.queued():
            token = store.claim(rec.id, "cpu", f"{pid}/{name}")
            if token is not None:
                break
        else:
            return
        x = np.arange(rec.params["n"], dtype=np.float64)
        total = float(np.sum(x * x))
        time.sleep(rec.params["sleep_s"])
        if pause.exists():  # hold the claimed job, visibly, until the pause file goes
            (pause.parent / f"held.{rec.id}").touch()
            while pause.exists():
                time.sleep(0.01)
        ok = store.complete(rec.id, token, {"token": token, "pid": pid, "sum": total})
        say(f"{'done' if ok else 'refused'} {rec.id} {token}")


threads = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(n_threads)]
for t in threads:
    t.start()
for t in threads:
    t.join()
store.close()
'''


def sum_of_squares(n: int) -> float:
    return float((n - 1) * n * (2 * n - 1) // 6)


def submit_jobs(store: JobStore, sleep_s: float) -> list[str]:
    ids = [f"sim-{i:02d}" for i in range(N_JOBS)]
    for i, job_id in enumerate(ids):
        store.submit(
            spec(job_id, kind=JobKind.RETROSIM, function="simulate",
                 params={"n": 1000 + 7 * i, "sleep_s": sleep_s})
        )  # fmt: skip
    return ids


class Driver:
    """One driver process, its log (``done|refused <id> <token>`` lines) in ``tmp_path``."""

    def __init__(
        self, tmp_path: Path, name: str, pause: Path, threads: int, mode: str = "normal"
    ) -> None:
        script = tmp_path / "driver.py"
        if not script.exists():
            script.write_text(DRIVER)
        self.log_path = tmp_path / f"{name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), str(tmp_path / "store"), str(pause), str(threads),
                 mode],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self, word: str) -> list[tuple[str, int]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == word:
                out.append((parts[1], int(parts[2])))
        return out

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not condition():
            if self.proc.poll() is not None:
                pytest.fail(f"driver exited ({self.proc.returncode}) before {what}:\n"
                            f"{self.log_path.read_text()}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {WAIT_S} s:\n{self.log_path.read_text()}")
            time.sleep(0.005)

    def sigkill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(WAIT_S) == -signal.SIGKILL

    def finish(self) -> None:
        try:
            rc = self.proc.wait(WAIT_S)
        finally:
            self.stop()
        assert rc == 0, self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(WAIT_S)


@pytest.fixture
def drivers():
    started: list[Driver] = []
    yield started
    for d in started:
        d.stop()


def assert_all_done_exactly_once(store: JobStore, root: Path, ids: list[str]) -> None:
    """Every job done once, one result folder each, holding the accepted attempt's result."""
    assert store.counts() == {"queued": 0, "running": 0, "done": N_JOBS, "failed": 0,
                              "cancelled": 0}  # fmt: skip
    assert listing(root / "results") == ids  # no extra folders, none missing
    assert listing(root / "staging") == []  # no result of a refused completion left behind
    for i, job_id in enumerate(ids):
        rec = store.get(job_id)
        assert listing(root / "results" / job_id) == ["result.json"]
        result = store.load_result(job_id)
        assert result["token"] == rec.attempts, job_id
        assert result["sum"] == sum_of_squares(1000 + 7 * i)


def test_sigkill_mid_run_then_restart_finishes_all_20_exactly_once(tmp_path, drivers):
    root = tmp_path / "store"
    store = JobStore(root)
    ids = submit_jobs(store, sleep_s=0.02)
    pause = tmp_path / "pause"
    first = Driver(tmp_path, "first", pause, threads=2)
    drivers.append(first)
    first.wait_until(lambda: store.counts()["done"] >= 3, "3 results")
    pause.touch()
    first.wait_until(lambda: len(list(tmp_path.glob("held.*"))) == 2, "2 jobs held mid-run")
    first.sigkill()  # both threads hold a claimed job: they die mid-run

    in_flight = sorted(p.name.removeprefix("held.") for p in tmp_path.glob("held.*"))
    assert [j.id for j in reversed(store.jobs("running"))] == in_flight
    done_before = {j.id for j in store.jobs("done")}
    assert len(done_before) >= 3
    assert {job_id for job_id, _ in first.lines("done")} == done_before
    store.close()

    store = JobStore(root)  # the restarted scheduler
    assert store.recover() == in_flight
    for job_id in in_flight:
        rec = store.get(job_id)
        assert (rec.state, rec.attempts, rec.device) == ("queued", 1, None)
        # the killed process's worker, had it lived on, would now complete with its old token
        assert not store.complete(job_id, 1, {"token": 1, "pid": first.pid, "sum": 0.0})
    pause.unlink()
    second = Driver(tmp_path, "second", tmp_path / "no-pause", threads=2)
    drivers.append(second)
    second.finish()

    assert_all_done_exactly_once(store, root, ids)
    for job_id in ids:
        rec = store.get(job_id)
        result = store.load_result(job_id)
        if job_id in in_flight:
            assert (rec.attempts, result["pid"]) == (2, second.pid)
        elif job_id in done_before:
            assert (rec.attempts, result["pid"]) == (1, first.pid)
        else:
            assert (rec.attempts, result["pid"]) == (1, second.pid)
    # every job was completed by exactly one accepted complete() across both processes
    accepted = Counter(job_id for d in (first, second) for job_id, _ in d.lines("done"))
    assert accepted == Counter(ids)
    assert first.lines("refused") == second.lines("refused") == []
    # and a stale completion after the rerun still changes nothing
    for job_id in in_flight:
        assert not store.complete(job_id, 1, {"token": 1, "pid": first.pid, "sum": 0.0})
        assert store.load_result(job_id)["pid"] == second.pid
    store.close()


@pytest.mark.parametrize("kill_after", [1, 8, 15])
def test_sigkill_at_any_moment_loses_and_repeats_nothing(tmp_path, drivers, kill_after):
    root = tmp_path / "store"
    store = JobStore(root)
    ids = submit_jobs(store, sleep_s=0.005)
    first = Driver(tmp_path, "first", tmp_path / "no-pause", threads=3)
    drivers.append(first)
    first.wait_until(lambda: store.counts()["done"] >= kill_after, f"{kill_after} results")
    first.sigkill()  # wherever it is: computing, claiming, writing a result, committing
    in_flight = sorted(j.id for j in store.jobs("running"))
    done_before = {j.id for j in store.jobs("done", limit=N_JOBS)}

    assert store.recover() == in_flight
    second = Driver(tmp_path, "second", tmp_path / "no-pause", threads=3)
    drivers.append(second)
    second.finish()

    assert_all_done_exactly_once(store, root, ids)
    for job_id in ids:
        rec = store.get(job_id)
        pid = store.load_result(job_id)["pid"]
        assert rec.attempts == (2 if job_id in in_flight else 1)
        assert pid == (first.pid if job_id in done_before else second.pid)
    logged = Counter(job_id for d in (first, second) for job_id, _ in d.lines("done"))
    assert max(logged.values()) == 1  # (the killed process may not have logged its last one)
    assert {job_id for job_id, _ in second.lines("done")} == set(ids) - done_before
    store.close()


def test_crash_between_result_rename_and_commit_reruns_the_job(tmp_path, drivers):
    root = tmp_path / "store"
    store = JobStore(root)
    ids = submit_jobs(store, sleep_s=0.0)
    first = Driver(tmp_path, "first", tmp_path / "no-pause", threads=1, mode="crash-after-install")
    drivers.append(first)
    assert first.proc.wait(WAIT_S) == 137
    (crashed,) = [j for j in store.jobs("running")]
    assert crashed.attempts == 1
    # its result folder is in place, but the job is not done: no "done" without its commit
    assert listing(root / "results") == [crashed.id]
    assert store.counts()["done"] == 0
    with pytest.raises(NoResultError):
        store.load_result(crashed.id)

    assert store.recover() == [crashed.id]
    assert listing(root / "results") == []
    second = Driver(tmp_path, "second", tmp_path / "no-pause", threads=2)
    drivers.append(second)
    second.finish()
    assert_all_done_exactly_once(store, root, ids)
    assert store.get(crashed.id).attempts == 2
    assert store.load_result(crashed.id)["token"] == 2
    store.close()


def test_live_stale_worker_is_refused_after_recovery(tmp_path, drivers):
    """The scheduler restarts while an old worker process lives on; its completions are refused."""
    root = tmp_path / "store"
    store = JobStore(root)
    ids = submit_jobs(store, sleep_s=0.0)
    pause = tmp_path / "pause"
    pause.touch()
    old = Driver(tmp_path, "old", pause, threads=2)
    drivers.append(old)
    old.wait_until(lambda: len(list(tmp_path.glob("held.*"))) == 2, "2 jobs held")
    held = sorted(p.name.removeprefix("held.") for p in tmp_path.glob("held.*"))

    assert store.recover() == held  # the new scheduler requeues what the old one had running
    new = Driver(tmp_path, "new", tmp_path / "no-pause", threads=2)
    drivers.append(new)
    new.finish()
    pause.unlink()  # the old worker wakes up and completes with its stale tokens
    old.finish()

    assert sorted(old.lines("refused")) == [(job_id, 1) for job_id in held]
    assert old.lines("done") == []
    assert sorted(job_id for job_id, _ in new.lines("done")) == ids
    assert_all_done_exactly_once(store, root, ids)
    for job_id in held:
        assert store.get(job_id).attempts == 2
        assert store.load_result(job_id)["pid"] == new.pid
    store.close()

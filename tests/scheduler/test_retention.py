"""Bounded storage (issue 21, item 5): retention by age and total size, recovery of leftovers.

The decision (:func:`scheduler.retention.choose`) is tested as pure logic; the areas (the
scheduler's store, the server's job store and reference scans, ``--save-dir``) with real files
in a temporary folder; nothing here starts a process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from gadgets.framework.session_store import SESSION_INPUT, Store, new_job_id, retention_timer
from gadgets.wire.mrdfile import SessionWriter
from scheduler.cli import main as scheduler_main
from scheduler.functions import MRD_SESSION
from scheduler.model import JobKind, JobSpec
from scheduler.retention import (
    GB,
    Entry,
    FolderArea,
    RetentionPolicy,
    RetentionTimer,
    choose,
    enforce,
)
from scheduler.store import JobStore

DAY = 86400.0
NOW = 1_000_000_000.0


def entry(key: str, age_days: float, size: int, removable: bool = True, area: str = "a") -> Entry:
    return Entry(area, key, NOW - age_days * DAY, size, removable)


# -- the decision (pure) -----------------------------------------------------------------------


def test_age_limit_deletes_only_old_removable_entries() -> None:
    entries = [entry("old", 40, 10), entry("new", 2, 10), entry("busy", 90, 10, removable=False)]
    doomed = choose(entries, NOW, RetentionPolicy(retention_days=30))
    assert [e.key for e in doomed] == ["old"]
    # negative control: without a policy nothing goes
    assert choose(entries, NOW, RetentionPolicy()) == []


def test_size_limit_deletes_oldest_first_until_under_the_cap() -> None:
    entries = [
        entry("c", 3, 4 * GB, area="save-dir"),
        entry("a", 9, 3 * GB, area="scheduler"),
        entry("running", 20, 2 * GB, removable=False),
        entry("b", 5, 3 * GB, area="store"),
    ]
    # total 12 GB, cap 6 GB: a (oldest removable) then b go; the running job stays
    doomed = choose(entries, NOW, RetentionPolicy(max_store_gb=6))
    assert [e.key for e in doomed] == ["a", "b"]
    # a cap that only non-removable entries exceed deletes every removable one, never the rest
    doomed = choose(entries, NOW, RetentionPolicy(max_store_gb=1))
    assert [e.key for e in doomed] == ["a", "b", "c"]
    assert choose(entries, NOW, RetentionPolicy(max_store_gb=12)) == []


def test_age_and_size_together_and_the_grace_period() -> None:
    entries = [entry("old", 40, 1), entry("mid", 10, 5 * GB), entry("fresh", 0.001, 5 * GB)]
    policy = RetentionPolicy(retention_days=30, max_store_gb=6, grace_s=3600)
    # old by age; then 10 GB > 6 GB: mid goes; fresh is inside the grace period (86 s old)
    assert [e.key for e in choose(entries, NOW, policy)] == ["old", "mid"]
    assert [e.key for e in choose(entries, NOW, RetentionPolicy(max_store_gb=1, grace_s=0))] == [
        "old",
        "mid",
        "fresh",
    ]


@pytest.mark.parametrize(
    "kw",
    [{"retention_days": -1}, {"max_store_gb": float("nan")}, {"interval_s": 0}, {"grace_s": -1}],
)
def test_policy_refuses_bad_values(kw: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        RetentionPolicy(**kw)


# -- areas -------------------------------------------------------------------------------------


def age(path: Path, days: float) -> None:
    """Set a file's times ``days`` into the past (of the real clock)."""
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def test_folder_area_never_deletes_a_file_in_use(tmp_path: Path) -> None:
    folder = tmp_path / "save"
    folder.mkdir()
    for name, days in (("a.h5", 50), ("b.h5", 40), ("busy.h5", 60)):
        (folder / name).write_bytes(b"x" * 100)
        age(folder / name, days)
    sub = folder / "session-dir"
    sub.mkdir()
    (sub / "x.h5").write_bytes(b"y" * 10)
    age(sub / "x.h5", 45)
    age(sub, 45)
    (tmp_path / "outside").write_bytes(b"z")
    (folder / "link").symlink_to(tmp_path / "outside")
    area = FolderArea(folder, in_use=lambda: [folder / "busy.h5"])
    report = enforce([area], RetentionPolicy(retention_days=30), time.time())
    assert sorted(e.key for e in report.deleted) == ["a.h5", "b.h5", "session-dir"]
    assert sorted(p.name for p in folder.iterdir()) == ["busy.h5", "link"]
    assert (tmp_path / "outside").exists()  # a link is never followed
    assert report.freed_bytes == 210
    with pytest.raises(ValueError, match="top-level"):
        area.remove_entry("../outside")


def _job(store: JobStore, job_id: str, finished_days_ago: float | None, size: int = 0) -> None:
    store.submit(JobSpec(job_id, JobKind.BATCH, function="noop"))
    if finished_days_ago is None:
        assert store.claim(job_id, "cpu") == 1  # left running
        return
    token = store.claim(job_id, "cpu")
    assert store.complete(job_id, token, b"r" * size if size else {"ok": True})
    when = time.time() - finished_days_ago * DAY
    with store._tx() as db:  # the store has no clock to fake: age the row directly
        db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (when, job_id))


def test_scheduler_store_keeps_running_jobs_and_deletes_the_oldest(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "sched")
    _job(store, "old", 50, size=1000)
    _job(store, "mid", 20, size=1000)
    _job(store, "new", 1, size=1000)
    _job(store, "running", None)
    report = enforce([store], RetentionPolicy(retention_days=30), time.time())
    assert [e.key for e in report.deleted] == ["old"]
    report = enforce([store], RetentionPolicy(max_store_gb=1500 / GB), time.time())
    assert [e.key for e in report.deleted] == ["mid"]
    assert store.counts() == {"queued": 0, "running": 1, "done": 1, "failed": 0, "cancelled": 0}
    assert sorted(p.name for p in (tmp_path / "sched" / "results").iterdir()) == ["new"]
    assert not store.delete("running")  # never a running job
    assert store.delete("new")
    assert store.counts()["done"] == 0


def _acquisitions(n: int = 3) -> list:
    import ismrmrd

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        data = (rng.standard_normal((2, 32)) + 1j * rng.standard_normal((2, 32))).astype(
            np.complex64
        )
        out.append(ismrmrd.Acquisition.from_array(data))
    return out


def test_server_store_and_save_dir_share_one_budget(tmp_path: Path) -> None:
    sched = JobStore(tmp_path / "store" / "scheduler")
    store = Store(tmp_path / "store", jobs=sched)
    save = tmp_path / "save"
    save.mkdir()
    jobs = {}
    for name in ("done_old", "failed_new", "queued"):
        staged = sched.stage_input()  # a background session's input, as the server stores it
        with SessionWriter(staged / SESSION_INPUT) as writer:
            for acq in _acquisitions():
                writer.add(acq)
        jobs[name] = new_job_id()
        spec = JobSpec(jobs[name], JobKind.BATCH, function=MRD_SESSION, params={"config": "x"})
        sched.submit(spec, inputs=staged)
    token = sched.claim(jobs["done_old"], "cpu")
    assert sched.complete(jobs["done_old"], token, {"texts": [], "counts": {}})
    token = sched.claim(jobs["failed_new"], "cpu")
    assert sched.fail(jobs["failed_new"], token, "boom")
    with sched._tx() as db:  # age the finished job
        db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time() - 9 * DAY,
                                                                   jobs["done_old"]))  # fmt: skip
    store.add_reference("ref1", "<ismrmrdHeader/>", _acquisitions())
    with store._tx() as db:
        db.execute("UPDATE refs SET created = ? WHERE measurement_id = 'ref1'",
                   (time.time() - 20 * DAY,))  # fmt: skip
    (save / "s1.h5").write_bytes(b"s" * 5000)
    age(save / "s1.h5", 5)
    _job(sched, "j1", 3, size=5000)

    timer = retention_timer(
        RetentionPolicy(max_store_gb=1 / GB, grace_s=0),  # 1 byte: everything removable goes
        save_dir=save, store=store, scheduler_store=sched,
    )  # fmt: skip
    report = timer.run_once()
    # oldest first across all areas: the reference (20 d), the done background job (9 d), the
    # saved session (5 d), the scheduler result (3 d), the failed job (now); the queued stays
    order = [(e.area, e.key) for e in report.deleted]
    assert order == [
        ("references", "ref1"),
        ("scheduler", jobs["done_old"]),
        ("save-dir", "s1.h5"),
        ("scheduler", "j1"),
        ("scheduler", jobs["failed_new"]),
    ]
    assert [j.id for j in store.jobs()] == [jobs["queued"]]
    assert (sched.input_path(jobs["queued"]) / SESSION_INPUT).is_file()
    assert sched.input_path(jobs["done_old"]) is None  # its input went with it
    assert not (store.root / "references" / "ref1.h5").exists()
    assert list(save.iterdir()) == []
    assert sched.counts()["done"] == 0


def test_timer_runs_at_start_and_again_periodically(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    clock = [NOW]
    calls: list[float] = []

    class Counting(FolderArea):
        def retention_entries(self, now: float) -> list[Entry]:
            calls.append(now)
            return [Entry(self.name, "x", NOW - 40 * DAY, 1)]

        def remove_entry(self, key: str) -> bool:
            return True

    timer = RetentionTimer(
        [Counting(folder)], RetentionPolicy(retention_days=30, interval_s=0.05), lambda: clock[0]
    )
    first = timer.start()
    try:
        assert [e.key for e in first.deleted] == ["x"]
        deadline = time.monotonic() + 5
        while len(calls) < 3:
            assert time.monotonic() < deadline, "the timer did not run again"
            time.sleep(0.02)
    finally:
        timer.stop()
    n = len(calls)
    time.sleep(0.2)
    assert len(calls) == n  # stopped


# -- recovery ----------------------------------------------------------------------------------


def test_recovery_cancels_interactive_jobs_and_requeues_durable_ones(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "s")
    store.submit(JobSpec("preview", JobKind.PREVIEW, function="noop", durable=False))
    store.submit(JobSpec("preview-q", JobKind.PREVIEW, function="noop", durable=False))
    store.submit(JobSpec("batch", JobKind.BATCH, function="noop"))
    store.claim("preview", "cpu")
    store.claim("batch", "cpu")
    (tmp_path / "s" / ".probe-123").write_bytes(b"")
    assert store.recover() == ["batch"]
    assert store.get("batch").state == "queued"
    for job in ("preview", "preview-q"):
        record = store.get(job)
        assert record.state == "cancelled"
        assert "nobody would read" in record.error
    assert not (tmp_path / "s" / ".probe-123").exists()
    # a durable (default) job is never dropped: negative control of the flag
    assert store.get("batch").durable
    assert not store.get("preview").durable


def test_scheduler_store_schema_1_gains_the_durable_column(tmp_path: Path) -> None:
    import sqlite3

    root = tmp_path / "s"
    JobStore(root).submit(JobSpec("a", JobKind.BATCH, function="noop"))
    db = sqlite3.connect(root / "scheduler.sqlite")
    db.execute("ALTER TABLE jobs DROP COLUMN durable")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = JobStore(root)
    assert store.get("a").durable
    store.submit(JobSpec("b", JobKind.BATCH, function="noop", durable=False))
    assert not store.get("b").durable


def test_server_store_recovery_removes_leftovers(tmp_path: Path) -> None:
    """The server's store holds references only; a half-written one goes, the rest private.

    Background sessions' inputs are the scheduler's (``test_scheduler_start_...`` below and
    ``tests/gadgets/library/test_gadgets_jobs.py``).
    """
    store = Store(tmp_path / "store")
    store.add_reference("ref1", "<ismrmrdHeader/>", _acquisitions(1))
    tmp_ref = store.root / "references" / ".r.h5.1234abcd.tmp"
    tmp_ref.write_bytes(b"x")
    os.chmod(store.reference_path("ref1"), 0o644)  # as an older version left it
    assert store.recover() == 1
    assert not tmp_ref.exists()
    assert store.reference_path("ref1").is_file()  # a complete reference stays
    assert oct(store.reference_path("ref1").stat().st_mode & 0o777) == "0o600"
    assert store.recover() == 0  # negative control: nothing left to remove


def test_mr0_scheduler_prune(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "s"
    store = JobStore(root)
    _job(store, "old", 40, size=10)
    _job(store, "new", 1, size=10)
    assert scheduler_main(["--store", str(root), "prune", "--retention-days", "30"]) == 0
    assert "deleted 1 jobs" in capsys.readouterr().out
    assert [r.id for r in store.jobs()] == ["new"]
    assert scheduler_main(["--store", str(root), "prune"]) == 2  # no policy: refused
    assert "needs --retention-days" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        scheduler_main(["--store", str(root), "prune", "--retention-days", "-3"])


def test_a_read_result_is_dropped_but_the_record_stays(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "s")
    _job(store, "preview", 0, size=100)
    _job(store, "running", None)
    assert (tmp_path / "s" / "results" / "preview").is_dir()
    assert store.drop_result("preview")
    assert store.get("preview").state == "done"
    assert store.load_result("preview") is None
    assert not (tmp_path / "s" / "results" / "preview").exists()
    assert not store.drop_result("preview")  # nothing left
    assert not store.drop_result("running")
    store.recover()  # a dropped result is not a leftover to worry about
    assert store.get("preview").state == "done"


def test_scheduler_start_removes_the_previous_runs_inputs_and_work(tmp_path: Path) -> None:
    from scheduler.gpu import FakeNvml, GpuMonitor
    from scheduler.service import Scheduler

    root = tmp_path / "s"
    jobs = JobStore(root)
    kept = jobs.stage_input()  # a background session's input, submitted with its job
    (kept / "input.h5").write_bytes(b"patient data")
    spec = JobSpec("0123456789abcdef01234567", JobKind.BATCH, function=MRD_SESSION,
                   params={"config": "x"})  # fmt: skip
    jobs.submit(spec, inputs=kept)
    never = jobs.stage_input()  # received, never submitted: the server stopped meanwhile
    (never / "input.h5").write_bytes(b"patient data")
    for leftover in ("inputs/0123abcd/seq.pt", "work/job.1/signal.npy"):
        (root / leftover).parent.mkdir(parents=True, exist_ok=True)
        (root / leftover).write_bytes(b"patient data")
    sched = Scheduler(root, monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=0)
    sched.start()
    try:
        # inputs of no job go; a queued job keeps its input
        assert not (root / "inputs" / "0123abcd").exists()
        assert not never.exists()
        stored = sched.store.input_path(spec.id)
        assert stored is not None
        assert (stored / "input.h5").read_bytes() == b"patient data"
        assert list((root / "work").iterdir()) == []
        assert oct((root / "work").stat().st_mode & 0o777) == "0o700"
    finally:
        sched.stop()

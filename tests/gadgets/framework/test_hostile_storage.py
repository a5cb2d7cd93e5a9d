"""Preview calls' bounds, and private storage (issue 21, item 6).

Job files and inputs folders are gone (issue 22): a session's objects reach the workers through
their task queues, never through a file a job parameter names.

- A preview's calls have a timeout, few attempts, the session's tag, and are cancelled when
  the gadget's generator ends.
- Under umask ``0o022`` and ``0o000`` every file the scheduler's store, the server's store,
  its reference scans, background jobs' inputs and results and ``--save-dir`` get is ``0600``
  and every folder ``0700``.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CORPUS

from gadgets.framework.chain import DEFAULT_CHAINS_DIR
from gadgets.framework.core import Context, GadgetError
from gadgets.framework.session_store import (
    RESULT_FILE,
    SESSION_INPUT,
    SESSION_JSON,
    Store,
    new_job_id,
)
from gadgets.library.preview import TwinPreviewGadget
from gadgets.wire.mrdfile import SessionWriter
from scheduler.calls import CallError
from scheduler.functions import MRD_SESSION
from scheduler.gpu import FakeNvml, GpuMonitor
from scheduler.model import JobKind, JobSpec
from scheduler.paths import private_dir, write_private
from scheduler.service import Scheduler, job_result
from scheduler.store import JobStore

# -- preview calls: timeout, retries, not durable -------------------------------------------


class FakeScheduler:
    """Just enough of :class:`scheduler.service.Scheduler` for the twin gadget's call path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        self.futures: list[FakeFuture] = []

    def call(self, function: str, inputs: dict, params: dict, kind: str, **kw: Any) -> Any:
        # what the worker gets: the client's .seq as text (the server never parses it)
        assert function == "prepare_seq"
        assert isinstance(inputs["text"], str)
        self.calls.append((function, kind, inputs, kw))
        future = FakeFuture()
        self.futures.append(future)
        return future


class FakeFuture:
    """A call that failed at once (out of memory), as the scheduler reports it."""

    id = "call-1"
    state = "failed"

    def __init__(self) -> None:
        self.cancelled_calls = 0

    def add_done_callback(self, fn: Any) -> None:
        fn(self)

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise CallError("call call-1 failed: out of memory on cpu (not retried)",
                        "out of memory on cpu (not retried)")  # fmt: skip

    def cancel(self) -> bool:
        self.cancelled_calls += 1
        return False


def test_preview_calls_have_a_timeout_few_attempts_and_die_with_the_session() -> None:
    sched = FakeScheduler()
    seq_text = (CORPUS / "write_gre.seq").read_text()
    gadget = TwinPreviewGadget(Context(scheduler=sched, session_id="s1"), seq=seq_text, size=8)
    with pytest.raises(GadgetError, match="out of memory"):
        list(gadget.process(iter([])))
    ((function, kind, _, kw),) = sched.calls
    assert (function, kind) == ("prepare_seq", "preview")  # the .seq is parsed in a call
    assert kw["timeout_s"] == TwinPreviewGadget.job_timeout_s > 0
    assert kw["max_attempts"] == TwinPreviewGadget.job_attempts == 2
    assert kw["session"] == "s1"  # the server cancels the session's calls when it fails
    assert sched.futures[0].cancelled_calls >= 1  # never left running


# -- item 6: private files and folders -------------------------------------------------------


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Every file's and folder's permission bits under ``root`` (itself included)."""
    out = {".": stat.S_IMODE(root.lstat().st_mode)}
    for base, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            path = Path(base) / name
            out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def assert_private(root: Path) -> None:
    found = modes(root)
    wrong = {p: oct(m) for p, m in found.items() if m != (0o700 if (root / p).is_dir() else 0o600)}
    assert not wrong, f"not private under {root}: {wrong}"
    assert len(found) > 2


def _acquisitions(n: int = 2) -> list:
    import ismrmrd

    rng = np.random.default_rng(1)
    return [
        ismrmrd.Acquisition.from_array(
            (rng.standard_normal((2, 16)) + 1j * rng.standard_normal((2, 16))).astype(np.complex64)
        )
        for _ in range(n)
    ]


def test_the_umask_would_leak(tmp_path: Path, umask: int) -> None:
    """Negative control: a plain open() under these umasks makes a file others can read."""
    path = tmp_path / "plain"
    path.write_bytes(b"x")
    assert stat.S_IMODE(path.stat().st_mode) & 0o044


def test_scheduler_store_is_private(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "sched"
    store = JobStore(root)
    for job_id, result in (("a", {"x": 1}), ("b", b"bytes"), ("c", "folder")):
        store.submit(JobSpec(job_id, JobKind.BATCH, function="noop"))
        token = store.claim(job_id, "cpu")
        if result == "folder":
            work = tmp_path / "work" / "c"
            work.mkdir(parents=True)  # as a worker leaves it, under the umask
            (work / "signal.npy").write_bytes(b"s")
            (work / "sub").mkdir()
            (work / "sub" / "x").write_bytes(b"x")
            result = work
        assert store.complete(job_id, token, result)
    sched = Scheduler(root, monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=0)
    private_dir(sched.work / "job.1")
    write_private(sched.work / "job.1" / "signal.npy", b"s")
    assert (root / "scheduler.sqlite-wal").exists()  # the journal is covered too
    assert_private(root)


def test_server_store_references_and_save_dir_are_private(tmp_path: Path, umask: int) -> None:
    sched = Scheduler(tmp_path / "store" / "scheduler", monitor=GpuMonitor(nvml=FakeNvml([])),
                      cpu_workers=1,
                      function_modules=["gadgets.library.background_jobs"])  # fmt: skip
    store = Store(tmp_path / "store", jobs=sched.store)
    save_dir = private_dir(tmp_path / "save")
    header = "<ismrmrdHeader/>"
    store.add_reference("ref1", header, _acquisitions())
    ids = []
    with sched:
        for chain in ("passthrough", "savedata"):
            xml = (DEFAULT_CHAINS_DIR / f"{chain}.xml").read_text()
            staged = sched.store.stage_input()  # as the server stores a background session
            with SessionWriter(staged / SESSION_INPUT) as writer:
                for acq in _acquisitions():
                    writer.add(acq)
            session = {"config_xml": xml, "parameters": {}}
            write_private(staged / SESSION_JSON, json.dumps(session).encode())
            params = {"config": chain, "save_dir": str(save_dir),
                      "store_dir": str(store.root)}  # fmt: skip
            ids.append(sched.submit(MRD_SESSION, params, job_id=new_job_id(), inputs=staged))
        for job_id in ids:
            done = sched.wait(job_id, 120)
            assert done.state == "done", done.error
    result = job_result(sched.store, ids[0])
    assert result is not None
    assert (result / RESULT_FILE).is_file()
    assert not (result / "input").exists()  # the input stays in the store, once
    assert (tmp_path / "store" / "scheduler" / "inputs" / ids[0] / SESSION_INPUT).is_file()
    assert len(store.result(ids[0])) == 2  # passthrough: the two acquisitions
    assert len(list(save_dir.iterdir())) == 1  # the savedata chain's session file
    with SessionWriter(save_dir / "session.h5") as writer:  # as the server's --save-dir saver
        writer.add(_acquisitions(1)[0])
    store.recover()
    assert_private(store.root)
    assert_private(save_dir)


def test_private_writes_never_follow_a_link(tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    (tmp_path / "seq.pt").symlink_to(target)
    with pytest.raises(OSError, match="link"):
        write_private(tmp_path / "seq.pt", b"overwritten")
    assert target.read_bytes() == b"keep"

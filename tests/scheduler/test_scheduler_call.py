"""Interactive calls (issue 22, item 1): objects in, objects out, progress pushed, no files.

One scheduler with one CPU worker serves the module; calls that kill their worker (cancel,
timeout) check that the worker is free again afterwards. The last test runs a preview through
the server and finds no file in the scheduler's store folder, with the control that a durable
job's result does show up there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS, mr0_server, run_session

from gadgets.framework.core import Context, Gadget, GadgetError, Text
from gadgets.framework.offload import offload, offload_wait
from gadgets.wire.framing import MessageId
from mr0core.jobs import SimSettings, build_demo_flash, load_job_phantom, run_simulation
from mr0core.recon import KData
from mr0core.sequence import Sequence
from scheduler.calls import CallCancelledError, CallError, CallTimeoutError
from scheduler.gpu import FakeNvml, GpuMonitor
from scheduler.service import Scheduler


@pytest.fixture(scope="module")
def sched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scheduler]:
    root = tmp_path_factory.mktemp("calls") / "s"
    monitor = GpuMonitor(interval_s=0, nvml=FakeNvml(driver_missing=True))
    with Scheduler(root, monitor=monitor, cpu_workers=1, cpu_threads=1, tick_s=0.02) as s:
        yield s


@pytest.fixture(scope="module")
def small() -> dict:
    """An 8x8 FLASH, its 8x8 brain twin (built) and raw data of its layout."""
    seq = Sequence.from_pypulseq(build_demo_flash(8))
    data = load_job_phantom("brain", 8, 1)[0].build()
    samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    signal = torch.arange(samples * 2, dtype=torch.float32).reshape(-1, 2).to(torch.complex64)
    kd = KData.from_sequence(signal, seq)
    return {"sequence": seq, "phantom": data, "kdata": kd}


def _worker_is_free(sched: Scheduler) -> None:
    """A short call runs to its end (the one CPU worker is idle again)."""
    assert sched.call("echo", {"n": 1}).result(60)["inputs"] == {"n": 1}


def test_objects_go_in_and_come_back(sched: Scheduler, small: dict) -> None:
    inputs = {**small, "text": "x" * 1000, "array": np.arange(12.0).reshape(3, 4)}
    out = sched.call("echo", inputs).result(60)
    assert out["pid"] != os.getpid()  # it ran in a worker process
    back = out["inputs"]
    assert back["text"] == inputs["text"]
    np.testing.assert_array_equal(back["array"], inputs["array"])
    assert len(back["sequence"]) == len(small["sequence"])
    for a, b in zip(back["sequence"], small["sequence"], strict=True):
        assert torch.equal(a.gradm, b.gradm)
        assert torch.equal(torch.as_tensor(a.pulse.angle), torch.as_tensor(b.pulse.angle))
    assert torch.equal(back["phantom"].PD, small["phantom"].PD)
    assert torch.equal(back["kdata"].signal, small["kdata"].signal)
    assert back["kdata"].recon_matrix == small["kdata"].recon_matrix


def test_a_simulation_call_returns_the_signal_and_pushes_progress(
    sched: Scheduler, small: dict
) -> None:
    seen: list[dict] = []
    future = sched.call("simulate", {"sequence": small["sequence"], "phantom": small["phantom"]},
                        {"recon": True}, "preview", on_progress=seen.append)  # fmt: skip
    out = future.result(120)
    expected = run_simulation(small["sequence"], small["phantom"], SimSettings(), progress=False)
    torch.testing.assert_close(out["signal"], expected, rtol=1e-5, atol=1e-6)
    assert out["recon"].image.shape[-3:] == (8, 8, 1)
    assert future.state == "done"
    assert future.device == "cpu"
    # the progress arrived, in order, before the result: the last one says all were done
    done = [m["done"] for m in seen]
    assert done
    assert done == sorted(done)
    assert seen[-1]["done"] == seen[-1]["of"] == len(small["sequence"])


def test_progress_messages_reach_the_listener_in_order(sched: Scheduler) -> None:
    seen: list[dict] = []
    sched.call("echo", {}, {"steps": 5, "sleep_s": 0.1}, on_progress=seen.append).result(60)
    assert seen == [{"done": i, "of": 5} for i in range(1, 6)]


def test_a_cancelled_call_frees_its_worker(sched: Scheduler) -> None:
    future = sched.call("echo", {}, {"sleep_s": 30})
    while not future.running():
        time.sleep(0.01)
    assert sched.status()["running"][0]["call"] is True  # the scheduler's view shows it
    pid = sched.pool.pids()["cpu/0"]
    assert future.cancel()
    with pytest.raises(CallCancelledError):
        future.result(10)
    assert future.cancelled()
    assert not future.cancel()  # ended already
    assert sched.pool.pids()["cpu/0"] != pid  # the worker was stopped and started again
    _worker_is_free(sched)


def test_closing_the_gadget_generator_cancels_the_call(sched: Scheduler) -> None:
    gadget = Gadget(Context(scheduler=sched, session_id="session-a"), name="Probe")
    steps = offload(gadget, "echo", {}, {"steps": 300, "sleep_s": 30}, kind="preview",
                    what="probe", timeout_s=60, max_attempts=1, progress_s=0.05)  # fmt: skip
    first = json.loads(next(steps).text)
    assert first["status"] in ("queued", "simulating")
    call_id = first["job"]
    while sched.calls(1)[0]["state"] != "running":
        next(steps)
    steps.close()  # the session ended early
    (row,) = [c for c in sched.calls() if c["call"] == call_id]
    assert row["state"] == "cancelled"
    _worker_is_free(sched)
    # the server's way for a session that failed while its gadget waited
    future = sched.call("echo", {}, {"sleep_s": 30}, session="session-b")
    assert sched.cancel_session("session-b") == 1
    assert isinstance(future.exception(10), CallCancelledError)
    _worker_is_free(sched)


def test_a_failure_carries_the_workers_message(sched: Scheduler) -> None:
    future = sched.call("fail", {}, {"message": "boom-42"}, max_attempts=2)
    with pytest.raises(CallError, match="boom-42") as info:
        future.result(60)
    assert "RuntimeError: boom-42" in info.value.reason  # the worker's traceback text
    assert future.state == "failed"
    assert future.attempts == 2  # a crash-like error is retried while starts are left
    own = sched.call("fail", {}, {"message": "bad value", "error": "value"}, max_attempts=3)
    with pytest.raises(CallError, match=r"bad value.*not retried"):
        own.result(60)
    assert own.attempts == 1  # the call's own fault (a ValueError) is not retried
    gadget = Gadget(Context(scheduler=sched), name="Probe")
    message = r"^Probe: the probe job call-\w+ failed: RuntimeError: boom-7"
    with pytest.raises(GadgetError, match=message):
        offload_wait(gadget, "fail", {}, {"message": "boom-7"}, kind="recon", what="probe",
                     timeout_s=60, max_attempts=1)  # fmt: skip


def test_a_call_past_its_timeout_is_stopped(sched: Scheduler) -> None:
    started = time.monotonic()
    future = sched.call("echo", {}, {"sleep_s": 30}, timeout_s=0.5)
    with pytest.raises(CallTimeoutError, match="timeout"):
        future.result(20)
    assert time.monotonic() - started < 15
    _worker_is_free(sched)


def test_calls_leave_no_store_record_and_no_file(sched: Scheduler) -> None:
    assert sched.store.jobs() == []
    assert not any(p.is_file() for p in sched.work.rglob("*"))
    with pytest.raises(ValueError, match="unknown call function"):
        sched.call("simulate_later", {})
    with pytest.raises(ValueError, match="text keys"):
        sched.call("echo", {1: "x"})  # type: ignore[dict-item]


# -- a preview through the server ---------------------------------------------------------------


def _files(root: Path) -> set[str]:
    """Every file under the scheduler's folder, the SQLite database's own files aside."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("scheduler.sqlite")
    }


def test_a_preview_leaves_no_file_in_the_scheduler_store(tmp_path: Path) -> None:
    root = tmp_path / "sched"
    with mr0_server(idle_timeout_s=60, scheduler_dir=root, sim_workers=1) as srv:
        before = _files(root)
        params = {"seq": (CORPUS / "write_gre.seq").read_text(), "size": 8, "return_raw": True}
        msgs = run_session(srv.address[1], "mr0_preview", params, timeout=120)
        texts = [m.value for m in msgs if m.id == MessageId.TEXT]
        assert not [t for t in texts if str(t).startswith("ERROR")], texts
        assert sum(m.id == MessageId.IMAGE for m in msgs) == 1
        assert sum(m.id == MessageId.ACQUISITION for m in msgs) == 64
        functions = [c["function"] for c in srv.scheduler.calls()]
        assert sorted(functions) == ["prepare_seq", "simulate"]
        assert _files(root) == before  # no inputs, no progress file, no result
        # control: a durable job's result does show up in the same listing
        job = srv.scheduler.submit("probe", {"write_bytes": 100})
        assert srv.scheduler.wait(job, 60).state == "done"
        assert _files(root) - before


def test_offload_needs_text_messages_only_when_asked(sched: Scheduler) -> None:
    gadget = Gadget(Context(scheduler=sched), name="Probe")
    steps = offload(gadget, "echo", {"a": 1}, {"steps": 3, "sleep_s": 0.3}, kind="preview",
                    what="probe", timeout_s=60, max_attempts=1, progress_s=0)  # fmt: skip
    items = []
    while True:
        try:
            items.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
    assert result["inputs"] == {"a": 1}
    assert items
    assert all(isinstance(i, Text) for i in items)
    progress = [json.loads(i.text) for i in items]
    assert max(p.get("done", 0) for p in progress) >= 1  # the call's progress reached the texts

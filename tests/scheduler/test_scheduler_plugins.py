"""Plug-in modules of job functions: the scheduler, its workers, Ray's task and the CLI load them.

A plug-in module is written into a temporary folder on ``sys.path`` (spawned workers inherit
the parent's ``sys.path``); its function exists nowhere else, so a worker finds it only when it
imported the module itself.
"""

from __future__ import annotations

import json
import os
import queue
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from scheduler import cli
from scheduler.functions import (
    CALLS,
    FUNCTIONS,
    FunctionModuleError,
    check_function_modules,
    load_function_modules,
)
from scheduler.gpu import FakeNvml, GpuMonitor
from scheduler.ray_backend import _run_task
from scheduler.service import Scheduler, job_result
from scheduler.workers import Outcome, Task, WorkerPool

PLUGIN_SOURCE = '''
"""A test plug-in: one job function, defined only here."""
import os

from scheduler.functions import job_function


@job_function({name!r})
def plugin_echo(params, device, workdir):
    (workdir / "plugin.txt").write_text("from the plug-in")
    return {{"value": params.get("value"), "pid": os.getpid(), "device": device}}
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Return ``(module name, function name)`` of a fresh plug-in; unregistered afterwards."""
    tag = uuid.uuid4().hex[:8]
    module, function = f"mr0_test_plugin_{tag}", f"plugin_echo_{tag}"
    folder = tmp_path_factory.mktemp("plugins")
    (folder / f"{module}.py").write_text(PLUGIN_SOURCE.format(name=function))
    sys.path.insert(0, str(folder))
    try:
        yield module, function
    finally:  # other tests (the estimate registry's) see only the built-in functions
        sys.path.remove(str(folder))
        FUNCTIONS.pop(function, None)
        sys.modules.pop(module, None)


def _outcome(outcomes: queue.Queue[Outcome]) -> Outcome:
    return outcomes.get(timeout=60)


def _task(tmp_path: Path, job: str, function: str, **params: object) -> Task:
    work = tmp_path / job
    work.mkdir()
    return Task(job, 1, function, dict(params), str(work))


def test_a_scheduler_runs_a_function_of_its_plugin_in_a_worker(
    plugin: tuple[str, str], tmp_path: Path
) -> None:
    module, function = plugin
    sched = Scheduler(tmp_path / "s", monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=1,
                      function_modules=[module, module])  # fmt: skip
    assert sched.function_modules == (module,)  # imported here (submit knows the name) once
    assert function in FUNCTIONS
    with sched:
        job = sched.submit(function, {"value": 7})
        record = sched.wait(job, 60)
        assert record.state == "done", record.error
        assert sched.status()["function_modules"] == [module]
    result = job_result(sched.store, job)
    assert result is not None
    summary = json.loads((result / "summary.json").read_text())
    assert summary["value"] == 7
    assert summary["pid"] != os.getpid()  # it ran in the worker, which imported the module
    assert (result / "plugin.txt").read_text() == "from the plug-in"


def test_a_worker_without_the_plugin_does_not_know_its_function(
    plugin: tuple[str, str], tmp_path: Path
) -> None:
    """Negative control: this process has the plug-in loaded, the worker was not told of it."""
    module, function = plugin
    load_function_modules([module])
    outcomes: queue.Queue[Outcome] = queue.Queue()
    bare = WorkerPool(gpus=[], cpu_workers=1, cpu_threads=1, on_outcome=outcomes.put)
    bare.start()
    try:
        bare.dispatch("cpu", _task(tmp_path, "bare", function, value=1))
        out = _outcome(outcomes)
    finally:
        bare.stop()
    assert not out.ok
    assert out.permanent  # a ValueError: retrying elsewhere would not help
    assert f"unknown job function {function!r}" in out.error
    assert "function_modules" in out.error
    assert not (tmp_path / "bare" / "plugin.txt").exists()


def test_a_worker_whose_plugin_fails_to_import_fails_each_task_with_that_error(
    tmp_path: Path,
) -> None:
    """The pool checks names only; the worker's import error reaches every task it is given."""
    outcomes: queue.Queue[Outcome] = queue.Queue()
    pool = WorkerPool(gpus=[], cpu_workers=1, cpu_threads=1, on_outcome=outcomes.put,
                      function_modules=["mr0_no_such_plugin_module"])  # fmt: skip
    pool.start()
    try:
        for job in ("a", "b"):
            pool.dispatch("cpu", _task(tmp_path, job, "noop"))
            out = _outcome(outcomes)
            assert not out.ok
            assert "function module 'mr0_no_such_plugin_module' cannot be imported" in out.error
            assert "ModuleNotFoundError" in out.error
    finally:
        pool.stop()


def test_the_ray_task_loads_the_plugin_before_it_looks_the_function_up(
    plugin: tuple[str, str], tmp_path: Path
) -> None:
    """:func:`scheduler.ray_backend._run_task` as a Ray worker runs it (here, in process)."""
    module, function = plugin
    task = Task("r", 1, function, {"value": 2}, "")
    outcome, files, _, _ = _run_task(task, "cpu", (module,))
    assert outcome.ok, outcome.error
    assert outcome.summary is not None
    assert outcome.summary["value"] == 2
    assert files == {"plugin.txt": b"from the plug-in"}
    outcome, files, _, _ = _run_task(task, "cpu", ("mr0_no_such_plugin_module",))
    assert not outcome.ok
    assert "cannot be imported" in outcome.error
    assert files == {}


@pytest.mark.parametrize(
    "names",
    [
        "gadgets.library.background_jobs",  # one text, not a collection of names
        ["gadgets/background_jobs"],
        ["os; rm -rf /"],
        ["gadgets..background_jobs"],
        [".background_jobs"],
        ["gadgets.class"],  # a keyword
        ["x" * 201],
        [3],
    ],
)
def test_a_bad_module_name_fails_the_scheduler_before_it_makes_anything(
    names: object, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="module name"):
        Scheduler(tmp_path / "s", monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=0,
                  function_modules=names)  # type: ignore[arg-type]  # fmt: skip
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="module name"):
        WorkerPool(gpus=[], cpu_workers=0, function_modules=names)  # type: ignore[arg-type]


def test_a_module_that_cannot_be_imported_or_registers_nothing_fails_at_start(
    tmp_path: Path,
) -> None:
    with pytest.raises(FunctionModuleError, match="'mr0_no_such_plugin_module' cannot be") as e:
        Scheduler(tmp_path / "s", monitor=GpuMonitor(nvml=FakeNvml([])), cpu_workers=0,
                  function_modules=["mr0_no_such_plugin_module"])  # fmt: skip
    assert isinstance(e.value.__cause__, ModuleNotFoundError)
    assert not (tmp_path / "s").exists()
    before = (dict(FUNCTIONS), dict(CALLS))
    with pytest.raises(FunctionModuleError, match="'json' registers no job or call function"):
        load_function_modules(["json"])
    assert (dict(FUNCTIONS), dict(CALLS)) == before


def test_names_are_kept_in_order_without_repeats() -> None:
    assert check_function_modules(["b.c", "a", "b.c", "_x.y2"]) == ("b.c", "a", "_x.y2")
    assert check_function_modules(()) == ()


def test_the_cli_submits_a_plugin_function_only_with_its_module(
    plugin: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module, function = plugin
    store = str(tmp_path / "store")
    FUNCTIONS.pop(function, None)  # as in a fresh mr0-scheduler process
    sys.modules.pop(module, None)
    assert cli.main(["--store", store, "submit", function]) == 2
    assert f"unknown function {function!r}" in capsys.readouterr().err
    assert cli.main(["--store", store, "submit", function, "--function-module", module]) == 0
    job_id = capsys.readouterr().out.strip()
    assert len(job_id) == 16
    assert cli.main(["--store", store, "submit", "noop", "--function-module", "a..b"]) == 2
    assert "dotted module name" in capsys.readouterr().err
    missing = "mr0_no_such_plugin_module"
    assert cli.main(["--store", store, "run", "--function-module", missing]) == 2
    assert "cannot be imported" in capsys.readouterr().err

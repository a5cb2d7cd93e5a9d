"""Hostile job files and paths (issue 21, item 3) and private storage (item 6).

- A job file crafted to run code when unpickled (its ``__reduce__`` makes a marker folder) is
  refused with a clear error, and the marker never appears; the same file does make the marker
  under ``torch.load(weights_only=False)``, so the test would catch a regression.
- A job parameter naming ``/etc``, ``/etc/passwd``, ``../../x`` or a link out of the scheduler's
  inputs folder is refused, at submission and in the worker.
- Under umask ``0o022`` and ``0o000`` every file the scheduler's store, the server's store,
  its reference scans and ``--save-dir`` get is ``0600`` and every folder ``0700``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from gadgets.chain import DEFAULT_CHAINS_DIR
from gadgets.core import Context, GadgetError
from gadgets.jobs import run_job
from gadgets.mrdfile import SessionWriter
from gadgets.store import Store
from gadgets.twin import TwinPreviewGadget
from mr0core.jobs import SimSettings, build_demo_flash, load_job_phantom, run_simulation
from mr0core.recon import KData
from mr0core.sequence import Sequence
from scheduler.cli import main as scheduler_main
from scheduler.functions import run_function
from scheduler.gpu import FakeNvml, GpuMonitor
from scheduler.jobfiles import load_object, save_object
from scheduler.model import JobKind, JobSpec
from scheduler.paths import InputPathError, JobFileError, private_dir
from scheduler.service import Scheduler
from scheduler.store import JobStore

CORPUS = Path(__file__).parent / "data" / "seq-corpus"


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: code that a job file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def craft(path: Path, marker: Path, fmt: str) -> None:
    """Write a hostile job file: ``torch.save`` (zip) or a bare pickle, wrapped like ours."""
    obj = {"format": "mr0-job-file", "version": 1, "kind": "Sequence", "state": Payload(marker)}
    if fmt == "torch":
        torch.save(obj, path)
    else:
        path.write_bytes(pickle.dumps(obj, protocol=2))


@pytest.fixture(scope="module")
def small() -> SimpleNamespace:
    """A 8x8 FLASH, a 8x8 brain twin (2 coils) and their simulated signal."""
    seq = Sequence.from_pypulseq(build_demo_flash(8))
    phantom, _ = load_job_phantom("brain", 8, 2)
    data = phantom.build()
    signal = run_simulation(seq, data, SimSettings(), progress=False)
    return SimpleNamespace(seq=seq, data=data, signal=signal)


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    """An inputs root (as ``Scheduler.inputs``) and one job's folder in it."""
    root = private_dir(tmp_path / "store" / "inputs")
    folder = private_dir(root / "job1")
    return root, folder


# -- item 3: no code from files ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
@pytest.mark.parametrize(
    ("function", "name"),
    [("simulate_saved", "seq.pt"), ("simulate_saved", "phantom.pt"),
     ("reconstruct_saved", "kdata.pt")],
)  # fmt: skip
def test_a_crafted_pickle_never_runs(
    tmp_path: Path, inputs: tuple[Path, Path], small: SimpleNamespace, function: str, name: str,
    fmt: str,
) -> None:  # fmt: skip
    root, folder = inputs
    marker = tmp_path / "marker"
    save_object(small.seq, folder / "seq.pt")
    save_object(small.data, folder / "phantom.pt")
    craft(folder / name, marker, fmt)
    work = private_dir(tmp_path / "work")
    with pytest.raises(JobFileError, match="not plain data"):
        run_function(function, {"inputs": str(folder)}, "cpu", work, inputs_root=root)
    assert not marker.exists()
    # negative control: the file does run code when unpickled the way the scheduler used to
    if fmt == "torch":
        torch.load(folder / name, weights_only=False)
    else:
        pickle.loads((folder / name).read_bytes())
    assert marker.is_dir()


def test_a_crafted_recon_result_never_runs(tmp_path: Path) -> None:
    """The recon gadget reads ``recon.pt`` with load_object(..., "dict")."""
    marker = tmp_path / "marker"
    path = tmp_path / "recon.pt"
    torch.save({"image": Payload(marker)}, path)
    with pytest.raises(JobFileError, match="not plain data"):
        load_object(path, "dict")
    assert not marker.exists()


def test_a_job_file_of_another_kind_or_format_is_refused(tmp_path: Path) -> None:
    torch.save({"image": torch.zeros(2)}, tmp_path / "plain.pt")
    with pytest.raises(JobFileError, match="not an mr0-job-file"):
        load_object(tmp_path / "plain.pt", "dict")
    save_object({"a": 1}, tmp_path / "dict.pt")
    with pytest.raises(JobFileError, match="expected 'Sequence'"):
        load_object(tmp_path / "dict.pt", "Sequence")
    with pytest.raises(JobFileError, match="missing"):
        load_object(tmp_path / "absent.pt", "dict")
    (tmp_path / "link.pt").symlink_to(tmp_path / "dict.pt")
    with pytest.raises(JobFileError, match="cannot be opened"):
        load_object(tmp_path / "link.pt", "dict")
    with pytest.raises(TypeError, match="cannot carry"):
        save_object({"f": print}, tmp_path / "f.pt")


def test_job_files_round_trip(tmp_path: Path, small: SimpleNamespace) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre_label.seq")
    seq[1].pulse.grad = torch.tensor([1.0, 2.0, 3.0])  # fields that are usually zero
    seq[1].pulse.duration = 1e-3
    seq[2].pulse.pulse_freq = 50.0
    save_object(seq, tmp_path / "seq.pt")
    back = load_object(tmp_path / "seq.pt", "Sequence")
    assert len(back) == len(seq)
    assert back.definitions == seq.definitions
    assert back.normalized_grads == seq.normalized_grads
    for a, b in zip(seq, back, strict=True):
        assert a.pulse.usage is b.pulse.usage
        for name in ("angle", "phase", "shim_array", "grad", "duration", "pulse_freq",
                     "freq_offset", "selective"):  # fmt: skip
            assert torch.equal(torch.as_tensor(getattr(a.pulse, name)),
                               torch.as_tensor(getattr(b.pulse, name))), name  # fmt: skip
        for name in ("event_time", "gradm", "adc_phase", "adc_usage"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert a.labels.keys() == b.labels.keys()
        assert all(torch.equal(a.labels[k], b.labels[k]) for k in a.labels)
    save_object(small.data, tmp_path / "data.pt")
    data = load_object(tmp_path / "data.pt", "SimData")
    for name in (*data._TENSORS, "affine"):
        assert torch.equal(getattr(data, name), getattr(small.data, name)), name
    assert data.dephasing_func == small.data.dephasing_func
    kd = KData.from_sequence(small.signal, small.seq)
    save_object(kd, tmp_path / "kd.pt")
    kd2 = load_object(tmp_path / "kd.pt", "KData")
    assert torch.equal(kd2.signal, kd.signal)
    assert torch.equal(kd2.kspace, kd.kspace)
    assert (kd2.recon_matrix, kd2.trajectory) == (kd.recon_matrix, kd.trajectory)
    assert all(torch.equal(kd2.idx[k], kd.idx[k]) for k in kd.idx)
    # the noise's dwell time travels too (prewhitening scales by it)
    kd = dataclasses.replace(kd, noise_sample_time_s=7e-6)
    save_object(kd, tmp_path / "kd_noise.pt")
    assert load_object(tmp_path / "kd_noise.pt", "KData").noise_sample_time_s == 7e-6


def test_simulate_saved_from_job_files_equals_a_direct_run(
    tmp_path: Path, inputs: tuple[Path, Path], small: SimpleNamespace
) -> None:
    root, folder = inputs
    save_object(small.seq, folder / "seq.pt")
    save_object(small.data, folder / "phantom.pt")
    work = private_dir(tmp_path / "work")
    run_function("simulate_saved", {"inputs": "job1"}, "cpu", work, inputs_root=root)
    got = np.load(work / "signal.npy", allow_pickle=False)
    np.testing.assert_allclose(got, small.signal.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "value",
    ["/etc", "/etc/passwd", "../../x", "..", "", ".", "job1/..", "job1/sub", 7, None, "OUT",
     "LINK"],
)  # fmt: skip
def test_the_inputs_parameter_is_confined(
    tmp_path: Path, inputs: tuple[Path, Path], small: SimpleNamespace, value: object
) -> None:
    root, folder = inputs
    private_dir(folder / "sub")
    outside = private_dir(tmp_path / "outside")  # a valid-looking folder outside the root
    save_object(small.seq, outside / "seq.pt")
    save_object(small.data, outside / "phantom.pt")
    (root / "link").symlink_to(outside)
    value = {"OUT": str(outside), "LINK": "link"}.get(value, value)  # type: ignore[arg-type]
    work = private_dir(tmp_path / "work")
    with pytest.raises(InputPathError, match="inputs"):
        run_function("simulate_saved", {"inputs": value}, "cpu", work, inputs_root=root)
    assert not (work / "signal.npy").exists()


def test_linked_files_in_an_inputs_folder_are_refused(
    tmp_path: Path, inputs: tuple[Path, Path], small: SimpleNamespace
) -> None:
    root, folder = inputs
    save_object(small.seq, tmp_path / "elsewhere.pt")
    (folder / "seq.pt").symlink_to(tmp_path / "elsewhere.pt")
    save_object(small.data, folder / "phantom.pt")
    with pytest.raises(InputPathError, match="not a regular file"):
        run_function("simulate_saved", {"inputs": "job1"}, "cpu", tmp_path, inputs_root=root)
    with pytest.raises(InputPathError, match="no inputs folder"):
        run_function("simulate_saved", {"inputs": "job1"}, "cpu", tmp_path, inputs_root=None)


def _cpu_only() -> GpuMonitor:
    return GpuMonitor(nvml=FakeNvml([]))


def test_submission_refuses_inputs_outside_the_store(tmp_path: Path, capsys: Any) -> None:
    sched = Scheduler(tmp_path / "s", monitor=_cpu_only(), cpu_workers=0)
    for value in ("/etc", "/etc/passwd", "../../x", str(tmp_path)):
        with pytest.raises(InputPathError, match="inputs"):
            sched.submit("simulate_saved", {"inputs": value}, "preview")
    folder = sched.inputs_folder()
    with pytest.raises(ValueError, match="cannot be durable"):
        sched.submit("simulate_saved", {"inputs": str(folder)}, "preview", durable=True)
    job = sched.submit("simulate_saved", {"inputs": str(folder)}, "preview")
    assert not sched.store.get(job).durable  # dies with its submitter
    assert sched.store.counts()["queued"] == 1
    code = scheduler_main(["--store", str(tmp_path / "s"), "submit", "simulate_saved",
                           "--params", '{"inputs": "/etc"}'])  # fmt: skip
    assert code == 2
    assert "cannot be submitted here" in capsys.readouterr().err


def test_a_worker_refuses_a_crafted_job_file_once(tmp_path: Path) -> None:
    """End to end: the job fails with the error, is not retried, and the marker never appears."""
    marker = tmp_path / "marker"
    with Scheduler(tmp_path / "s", monitor=_cpu_only(), cpu_workers=1, cpu_threads=1) as sched:
        folder = sched.inputs_folder()
        craft(folder / "seq.pt", marker, "torch")
        craft(folder / "phantom.pt", marker, "torch")
        job = sched.submit("simulate_saved", {"inputs": str(folder)}, "preview", max_attempts=3)
        record = sched.wait(job, timeout_s=60)
    assert record.state == "failed"
    assert "not plain data" in record.error
    assert "not retried" in record.error
    assert record.attempts == 1
    assert not marker.exists()


# -- preview jobs: timeout, retries, durability --------------------------------------------


class FakeScheduler:
    """Just enough of :class:`scheduler.service.Scheduler` for the twin gadget's job path."""

    def __init__(self, root: Path) -> None:
        self.inputs = private_dir(root / "inputs")
        self.store = SimpleNamespace(get=self._get)
        self.calls: list[tuple[str, Any]] = []
        self.folder: Path | None = None

    def inputs_folder(self) -> Path:
        self.folder = private_dir(self.inputs / "f")
        return self.folder

    def submit(self, function: str, params: dict, kind: str, **kw: Any) -> str:
        assert self.folder is not None
        # what the worker will read is plain data: the client's .seq as text (the server
        # never parses it), the twin as a job file
        if function == "prepare_seq":
            assert stat.S_IMODE((self.folder / "seq.txt").stat().st_mode) == 0o600
        else:
            load_object(self.folder / "seq.pt", "Sequence")
        load_object(self.folder / "phantom.pt", "SimData")
        self.calls.append(("submit", (function, kind, kw)))
        return "job1"

    def _get(self, job: str) -> Any:
        return SimpleNamespace(state="failed", error="out of memory on cpu (not retried)")

    def cancel(self, job: str) -> bool:
        self.calls.append(("cancel", job))
        return False

    def forget(self, job: str) -> bool:
        self.calls.append(("forget", job))
        return True


def test_preview_jobs_have_a_timeout_few_attempts_and_die_with_the_session(
    tmp_path: Path,
) -> None:
    sched = FakeScheduler(tmp_path)
    seq_text = (CORPUS / "write_gre.seq").read_text()
    gadget = TwinPreviewGadget(Context(scheduler=sched), seq=seq_text, size=8)
    with pytest.raises(GadgetError, match="out of memory"):
        list(gadget.process(iter([])))
    submit = next(args for name, args in sched.calls if name == "submit")
    function, kind, kw = submit
    assert (function, kind) == ("prepare_seq", "preview")  # the .seq is parsed in a job
    assert kw["timeout_s"] == TwinPreviewGadget.job_timeout_s > 0
    assert kw["max_attempts"] == TwinPreviewGadget.job_attempts == 2
    assert kw["durable"] is False
    assert ("forget", "job1") in sched.calls  # its record and files do not pile up
    assert sched.folder is not None
    assert not sched.folder.exists()  # inputs removed


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


def test_scheduler_store_is_private(tmp_path: Path, umask: int, small: SimpleNamespace) -> None:
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
    sched = Scheduler(root, monitor=_cpu_only(), cpu_workers=0)
    folder = sched.inputs_folder()
    save_object(small.seq, folder / "seq.pt")
    save_object({"image": torch.zeros(3)}, folder / "recon.pt")
    private_dir(sched.work / "job.1")
    assert (root / "scheduler.sqlite-wal").exists()  # the journal is covered too
    assert_private(root)


def test_server_store_references_and_save_dir_are_private(tmp_path: Path, umask: int) -> None:
    store = Store(tmp_path / "store")
    save_dir = private_dir(tmp_path / "save")
    header = "<ismrmrdHeader/>"
    store.add_reference("ref1", header, _acquisitions())
    for chain in ("passthrough", "savedata"):
        xml = (DEFAULT_CHAINS_DIR / f"{chain}.xml").read_text()
        job = store.create_job(chain, xml, {})
        with SessionWriter(store.input_path(job.id)) as writer:
            for acq in _acquisitions():
                writer.add(acq)
        store.mark_queued(job.id)
        done = run_job(store, job.id, Context(save_dir=save_dir, store=store))
        assert done.state == "done", done.error
    assert store.result_path(store.jobs()[-1].id).is_file()
    assert len(list(save_dir.iterdir())) == 1  # the savedata chain's session file
    with SessionWriter(save_dir / "session.h5") as writer:  # as the server's --save-dir saver
        writer.add(_acquisitions(1)[0])
    store.recover()
    assert_private(store.root)
    assert_private(save_dir)


def test_job_file_writes_never_follow_a_link(tmp_path: Path, small: SimpleNamespace) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"keep")
    (tmp_path / "seq.pt").symlink_to(target)
    with pytest.raises(OSError, match="link"):
        save_object(small.seq, tmp_path / "seq.pt")
    assert target.read_bytes() == b"keep"
    # a state holds plain data only: torch.load(weights_only=True) reads it directly
    buffer = io.BytesIO()
    torch.save(small.seq.to_state(), buffer)
    buffer.seek(0)
    assert len(Sequence.from_state(torch.load(buffer, weights_only=True))) == len(small.seq)

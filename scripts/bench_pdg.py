"""Benchmark: our PDG simulation against MR-zero's, same sequence, same phantom, same threads.

For every case (a Pulseq file from the corpus) and phantom size (the built-in brain, written as a
NIfTI phantom that both libraries load with their own ``TissueDict.load``) it runs, each in a fresh
subprocess so that timings and peak memory do not leak between runs:

* ours at default thresholds (``compute_graph(seq, data, 200, 1e-4)``,
  ``execute_graph(..., 1e-2, 1e-2)``), on our own import of the ``.seq`` file;
* MR-zero at the same defaults, on its own import;
* the accuracy reference: MR-zero at high accuracy (``5000, 1e-9`` / ``1e-5, 1e-5``) or, where
  that is too slow (``--ref-timeout``) or ``--ref ours``, ours at the same high accuracy.

Times cover the simulation only (pre-pass plus main pass), not the file import or the phantom
build. Peak memory (CPU) comes from a second run of each simulation in its own process, with
glibc told to serve every block above 64 KiB by ``mmap`` and to return freed memory at once
(``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``): then the rise of the peak RSS (VmHWM,
reset just before) over the RSS before the simulation is the memory the simulation held at its
peak. Measured in the timing run instead, it would depend on how much freed heap the library's
import and the phantom build happened to leave behind (the same simulation read anywhere from 4
to 69 MB). On CUDA it is ``torch.cuda.max_memory_allocated``. NRMSE is
``‖s − s_ref‖ / ‖s_ref‖`` over all ADC samples and coils. It prints one row per case, the median
time ratio (ours / MR-zero, < 1 means ours is faster) and the machine, and can write everything as
JSON.

    python scripts/bench_pdg.py                         # all cases at 64 and 128, CPU
    python scripts/bench_pdg.py --cases write_gre --sizes 64 --threads 2 --json out.json
    python scripts/bench_pdg.py --device cuda           # the same table on a GPU
    python scripts/bench_pdg.py --compare-rf-models --cases write_gre --sizes 64

``--rf-model shaped`` runs ours with the shaped RF model (slice profiles from the ``.seq``'s
waveforms, :mod:`mr0core.sim.shaped`; ``--sub-slices`` sets their number, default automatic).
MR-zero has no such model, so then no MR-zero column is run and the reference is ours, shaped, at
high accuracy. ``--compare-rf-models`` instead runs ours both ways on each case and size, each in
its own process with a warm-up and ``--repeat`` timed runs, and prints the times, their ratio
shaped / instantaneous and the NRMSE of the shaped signal against the instantaneous one (how much
the slice profile changes the signal).

Needs the ``bench`` extra (``pip install -e ".[bench]"``) for the MR-zero columns; without it only
ours runs, against ours at high accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)

REPO = Path(__file__).resolve().parent.parent
CORPORA = (REPO / "tests" / "data" / "seq-corpus", REPO.parent / "shared" / "seq-corpus")
CASES = ("write_gre", "write_tse", "write_epi", "write_radial_gre", "write_haste")
DEFAULT = (200, 1e-4, 1e-2, 1e-2)
HIGH = (5000, 1e-9, 1e-5, 1e-5)
SUITE_REF = (5000, 1e-10, 1e-7, 1e-7)
"""The suite's reference: ours at very tight thresholds."""
SUITE_CHECK = (20000, 1e-12, 1e-9, 1e-9)
"""Tighter still: the reference counts as converged when this changes it by < 0.1 %."""
SUITE_REF_BY_CASE = {"ste_3pulse": ((40000, 1e-10, 1e-8, 1e-8), (120000, 1e-12, 1e-10, 1e-10))}
"""Cases whose reference needs more: ``case: (reference, check)``. The 3-pulse STE keeps very
many weak pathways: at 48² :data:`SUITE_REF` is 0.22 % from 120000 states (thresholds 1e-10),
40000 states at thresholds 1e-8 are 0.024 % from it (measured 2026-12-06)."""


SUITE_CHECK_BY_SIZE = {("ste_3pulse", 96): (50000, 1e-11, 1e-9, 1e-9)}
"""Checks that replace the case's where it would not fit memory: ``(case, size): check``. At
96² the STE's 120000-state check needs about 98 GiB by :mod:`mr0core.sim.memory`'s estimate, too
much even in 64 voxel blocks on 24 GiB; this one is still tighter in every setting than the
reference (45000 states at thresholds 1e-9 ran in 22 GB in one piece there). It was 0.034 % from
the reference, which ran in 5 voxel blocks (measured 2026-12-07)."""


def suite_reference(case: str, size: int | None = None) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """Return ``(reference, check)`` settings of the suite's case ``case`` (at ``size``)."""
    reference, check = SUITE_REF_BY_CASE.get(case, (SUITE_REF, SUITE_CHECK))
    return reference, SUITE_CHECK_BY_SIZE.get((case, size or 0), check)


VOXEL = {"PD": 1.0, "T1": 0.83, "T2": 0.07, "T2dash": 0.05, "D": 0.8, "B0": 0.0, "B1": 1.0,
         "voxel_size": 0.002, "voxel_shape": "box"}  # fmt: skip
"""The single-voxel phantom of the suite (white-matter-like; s, 10⁻³ mm²/s, m)."""


# -- the child: one simulation in a fresh process --------------------------------------------


_rss_bytes = benchlib.rss_bytes
_peak_rss_bytes = benchlib.peak_rss_bytes
_reset_peak_rss = benchlib.reset_peak_rss


def _child(args: argparse.Namespace) -> None:
    import contextlib
    import io
    import time
    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    quiet = contextlib.redirect_stdout(io.StringIO())
    with warnings.catch_warnings(), quiet:
        warnings.simplefilter("ignore")
        if args.sim == "mrzero":
            import MRzeroCore as lib
        else:
            import mr0core as lib
        rf = {}  # MR-zero has no rf_model: the parent never asks it for a shaped run
        if args.rf_model != "instantaneous" or args.sub_slices is not None:
            if args.sim != "ours":
                raise SystemExit(f"--rf-model {args.rf_model} applies to ours only")
            rf = {"rf_model": args.rf_model}
        run_rf = dict(rf, sub_slices=args.sub_slices) if args.sub_slices is not None else rf
        seq = lib.Sequence.import_file(args.seq)
        if args.phantom == "voxel":  # one white-matter-like voxel, the same in both libraries
            data = lib.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **VOXEL).build()
        else:
            data = lib.TissueDict.load(args.phantom).build()
        if args.device == "cuda":
            seq, data = seq.cuda(), data.cuda()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        if args.sim == "ours":  # numba and its compiled kernels: a one-time cost per process
            from mr0core.sim import mainpass_kernel, prepass_kernel  # (about 150 MB resident)

            prepass_kernel.warm_up()
            mainpass_kernel.warm_up()
        if args.memory:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)  # start from no retained heap
        base = _rss_bytes()
        _reset_peak_rss()  # so that the peak measures only what the simulation adds
        states, state_mag, emitted, latent = args.settings
        times = []
        if args.warmup:  # not timed: first-call costs (allocator, caches, lazy imports)
            graph = lib.compute_graph(seq, data, int(args.settings[0]), args.settings[1], **rf)
            lib.execute_graph(graph, seq, data, *args.settings[2:], print_progress=False,
                              **run_rf)  # fmt: skip
        blocks = 1
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            graph = lib.compute_graph(seq, data, int(states), state_mag, **rf)
            t1 = time.perf_counter()
            if args.fit_memory:  # a reference: its main pass in voxel blocks that fit memory
                from mr0core.jobs import SimSettings, execute_blocks, voxel_blocks

                given = SimSettings(int(states), state_mag, emitted, latent)
                need, fits = voxel_blocks(graph, seq, data, given)
                if fits is None:
                    raise SystemExit(f"about {need / 2**30:.1f} GiB: does not fit in blocks")
                blocks = fits
                signal = execute_blocks(graph, seq, data, emitted, latent, blocks, **run_rf)
            else:
                signal = lib.execute_graph(graph, seq, data, emitted, latent,
                                           print_progress=False, **run_rf)  # fmt: skip
            if args.device == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            times.append((t1 - t0, t2 - t1))
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = max(_peak_rss_bytes() - base, 0)
    np.save(args.out, signal.detach().cpu().numpy())
    # the run of median total time (an odd --repeat gives the true median)
    mid = sorted(times, key=sum)[len(times) // 2]
    result = {"pre_s": mid[0], "main_s": mid[1], "peak_bytes": peak,
              "times_s": [sum(t) for t in times], "voxel_blocks": blocks}  # fmt: skip
    if rf.get("rf_model") == "shaped":
        from mr0core.sim.shaped import default_sub_slices

        result["sub_slices"] = args.sub_slices or default_sub_slices(seq, data)
    print(json.dumps(result))


# -- the parent ---------------------------------------------------------------------------------


def _find(case: str) -> Path:
    for corpus in CORPORA:
        path = corpus / f"{case}.seq"
        if path.exists():
            return path
    raise FileNotFoundError(f"{case}.seq not found in {', '.join(map(str, CORPORA))}")


def _run(
    sim: str,
    seq: Path,
    phantom: Path,
    settings: tuple,
    out: Path,
    opts: argparse.Namespace,
    timeout: float | None = None,
    memory: bool = False,
    reference: bool = False,
    rf_model: str | None = None,
) -> dict[str, Any] | None:
    """Run one simulation in a child process; ``rf_model`` (ours only): default ``--rf-model``."""
    cmd = [sys.executable, __file__, "--child", "--sim", sim, "--seq", str(seq)]
    if sim == "ours":
        cmd += ["--rf-model", rf_model or opts.rf_model]
        if (rf_model or opts.rf_model) == "shaped" and opts.sub_slices is not None:
            cmd += ["--sub-slices", str(opts.sub_slices)]
    # a reference's time is not reported: it runs on every core, in voxel blocks that fit memory
    threads = (os.cpu_count() or 1) if reference else opts.threads
    cmd += ["--phantom", str(phantom), "--out", str(out), "--threads", str(threads)]
    cmd += ["--device", opts.device, "--repeat", str(1 if reference or memory else opts.repeat)]
    if not reference and not memory:
        cmd.append("--warmup")
    cmd += ["--settings", *map(str, settings)]
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    env["OMP_NUM_THREADS"] = str(threads)
    if reference and sim == "ours":
        cmd.append("--fit-memory")
    if memory:
        cmd.append("--memory")
        env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(64 * 1024)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{sim} on {seq.name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _nrmse(path: Path, ref_path: Path) -> float:
    import numpy as np

    sig, ref = np.load(path), np.load(ref_path)
    if sig.shape != ref.shape:
        raise RuntimeError(f"signal shapes differ: {sig.shape} vs reference {ref.shape}")
    return float(np.linalg.norm(sig - ref) / np.linalg.norm(ref))


def _machine(opts: argparse.Namespace) -> str:
    import torch

    text = f"{benchlib.cpu_name()}, {os.cpu_count()} cores, {opts.threads} threads, Python "
    text += f"{platform.python_version()}, torch {torch.__version__}"
    if opts.device == "cuda":
        text += f", GPU {torch.cuda.get_device_name()}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        text += f", mrzerocore {version('mrzerocore')}"
    except PackageNotFoundError:
        text += ", mrzerocore not installed"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeat", type=int, default=1, help="runs per simulation, best kept")
    parser.add_argument("--ref", choices=("auto", "mrzero", "ours"), default="auto")
    parser.add_argument(
        "--ref-timeout", type=float, default=900.0,
        help="seconds before the MR-zero reference gives way to ours (--ref auto)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--rf-model", choices=("instantaneous", "shaped"), default="instantaneous",
                        help="ours with this RF model; shaped: no MR-zero runs (it has no such "
                        "model), the reference is ours shaped")  # fmt: skip
    parser.add_argument("--sub-slices", type=int, default=None,
                        help="with --rf-model shaped / --compare-rf-models: sub-slices through "
                        "the phantom's thickness (default automatic)")  # fmt: skip
    parser.add_argument("--compare-rf-models", action="store_true",
                        help="ours shaped against ours instantaneous: times, their ratio, the "
                        "NRMSE between the signals")  # fmt: skip
    # the child's arguments
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sim", help=argparse.SUPPRESS)
    parser.add_argument("--seq", help=argparse.SUPPRESS)
    parser.add_argument("--phantom", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--settings", nargs=4, type=float, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suite", action="store_true",
                        help="the sequence-class suite (scripts/pdg_suite.py) on one voxel and "
                        "the brain, against ours at very tight thresholds")  # fmt: skip
    parser.add_argument("--check-sizes", nargs="*", type=int, default=None,
                        help="with --suite: the sizes at which the reference's convergence is "
                        "checked (tighter still; slow at 96²); default all")  # fmt: skip
    opts = parser.parse_args(argv)
    if opts.sub_slices is not None and not 1 <= opts.sub_slices <= 64:
        parser.error(f"--sub-slices must lie in 1..64, got {opts.sub_slices}")
    if opts.child:
        _child(opts)
        return 0
    if opts.sub_slices is not None and opts.rf_model != "shaped" and not opts.compare_rf_models:
        parser.error("--sub-slices applies to --rf-model shaped or --compare-rf-models")
    if opts.compare_rf_models:
        if opts.suite or opts.rf_model != "instantaneous":
            parser.error("--compare-rf-models runs both models; give neither --suite nor "
                         "--rf-model")  # fmt: skip
        return _compare_rf_models(opts)
    if opts.suite:
        if opts.rf_model != "instantaneous":
            parser.error("--suite compares against MR-zero, which has no shaped RF model")
        return _suite(opts, argv)

    try:
        import MRzeroCore  # noqa: F401

        have_mrzero = opts.rf_model == "instantaneous"
        if not have_mrzero:
            print("--rf-model shaped: MR-zero has no shaped RF model, ours only", file=sys.stderr)
    except ImportError:
        have_mrzero = False
        print("MR-zero not installed (pip install -e '.[bench]'): ours only", file=sys.stderr)
    if opts.ref == "mrzero" and not have_mrzero:
        parser.error("--ref mrzero needs mrzerocore installed and --rf-model instantaneous")

    sys.path.insert(0, str(REPO))
    from mr0core.phantom.builtin_phantoms import write_phantom

    machine = _machine(opts)
    print(f"machine: {machine}")
    head = f"{'case':<17}{'size':>5} {'ours s':>8} {'MR0 s':>8} {'ratio':>6} "
    head += f"{'ours err':>9} {'MR0 err':>8} {'ours MB':>8} {'MR0 MB':>7}  reference"
    print(head)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_pdg_") as tmp_dir:
        tmp = Path(tmp_dir)
        for size in opts.sizes:
            phantom, _ = write_phantom("brain", tmp / f"brain{size}", size=size)
            for case in opts.cases:
                seq = _find(case)
                row: dict[str, Any] = {"case": case, "size": size}
                sims = ["ours", "mrzero"] if have_mrzero else ["ours"]
                for sim in sims:
                    out = tmp / f"{sim}.npy"
                    row[sim] = _run(sim, seq, phantom, DEFAULT, out, opts)
                    if opts.device == "cpu":
                        mem = _run(sim, seq, phantom, DEFAULT, out, opts, memory=True)
                        row[sim]["peak_bytes"] = mem["peak_bytes"] if mem else None
                ref = None
                if have_mrzero and opts.ref != "ours":
                    timeout = None if opts.ref == "mrzero" else opts.ref_timeout
                    ref = _run("mrzero", seq, phantom, HIGH, tmp / "ref.npy", opts, timeout)
                    row["reference"] = "MR-zero high accuracy"
                if ref is None:
                    _run("ours", seq, phantom, HIGH, tmp / "ref.npy", opts)
                    row["reference"] = "ours high accuracy"
                    if opts.rf_model != "instantaneous":
                        row["reference"] += f", {opts.rf_model} RF"
                row["ours"]["nrmse"] = _nrmse(tmp / "ours.npy", tmp / "ref.npy")
                if have_mrzero:
                    row["mrzero"]["nrmse"] = _nrmse(tmp / "mrzero.npy", tmp / "ref.npy")
                rows.append(row)
                print(_format(row), flush=True)
    ratios = [r["ratio"] for r in rows if "ratio" in r]
    summary: dict[str, Any] = {"machine": machine, "device": opts.device, "rows": rows,
                               "rf_model": opts.rf_model}  # fmt: skip
    if ratios:
        summary["median_ratio"] = statistics.median(ratios)
        print(f"median time ratio ours/MR-zero: {summary['median_ratio']:.3f} "
              f"({1 / summary['median_ratio']:.1f}x faster)")  # fmt: skip
    if opts.json:
        opts.json.write_text(json.dumps(summary, indent=2))
    return 0


def _compare_rf_models(opts: argparse.Namespace) -> int:
    """Ours with shaped against instantaneous RF: times, ratio, NRMSE (see the module)."""
    sys.path.insert(0, str(REPO))
    import numpy as np

    from mr0core.phantom.builtin_phantoms import write_phantom

    machine = _machine(opts)
    print(f"machine: {machine}; {opts.repeat} timed run(s) after a warm-up, median")
    head = f"{'case':<17}{'size':>5} {'inst s':>8} {'shaped s':>9} {'ratio':>6} "
    head += f"{'NRMSE':>8} {'sub':>4}"
    print(head)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_rf_") as tmp_dir:
        tmp = Path(tmp_dir)
        for size in opts.sizes:
            phantom, _ = write_phantom("brain", tmp / f"brain{size}", size=size)
            for case in opts.cases:
                seq = _find(case)
                row: dict[str, Any] = {"case": case, "size": size}
                for model in ("instantaneous", "shaped"):
                    row[model] = _run("ours", seq, phantom, DEFAULT, tmp / f"{model}.npy", opts,
                                      rf_model=model)  # fmt: skip
                inst = np.load(tmp / "instantaneous.npy")
                shaped = np.load(tmp / "shaped.npy")
                t_inst = row["instantaneous"]["pre_s"] + row["instantaneous"]["main_s"]
                t_shaped = row["shaped"]["pre_s"] + row["shaped"]["main_s"]
                row["ratio"] = t_shaped / t_inst
                row["nrmse"] = float(np.linalg.norm(shaped - inst) / np.linalg.norm(inst))
                row["sub_slices"] = row["shaped"].get("sub_slices")
                rows.append(row)
                print(f"{case:<17}{size:>5} {t_inst:>8.2f} {t_shaped:>9.2f} {row['ratio']:>6.2f} "
                      f"{100 * row['nrmse']:>7.2f}% {row['sub_slices'] or '-':>4}",
                      flush=True)  # fmt: skip
    summary: dict[str, Any] = {"machine": machine, "device": opts.device, "rows": rows,
                               "repeat": opts.repeat, "threads": opts.threads}  # fmt: skip
    if rows:
        summary["median_ratio"] = statistics.median(r["ratio"] for r in rows)
        print(f"median time ratio shaped/instantaneous: {summary['median_ratio']:.2f}")
    if opts.json:
        opts.json.write_text(json.dumps(summary, indent=2))
    return 0


def _suite(opts: argparse.Namespace, argv: list[str] | None) -> int:
    """Run the suite: every case of ``pdg_suite`` at every size (1 = one voxel).

    The reference is ours at :data:`SUITE_REF` (or :data:`SUITE_REF_BY_CASE`); it is reported
    as converged when :data:`SUITE_CHECK` (or the case's check) changes it by less than 0.1 %
    NRMSE; a row whose check differs more is marked ``ref>0.1%``. Each library runs in its own
    process with one warm-up and ``--repeat`` timed runs (median reported).
    """
    import pdg_suite  # scripts/pdg_suite.py

    given = set(argv or sys.argv[1:])
    cases = opts.cases if "--cases" in given else pdg_suite.case_names()
    sizes = opts.sizes if "--sizes" in given else [1, 48, 96]
    if "--threads" not in given:
        opts.threads = 1
    if "--repeat" not in given:
        opts.repeat = 3
    try:
        import MRzeroCore  # noqa: F401

        have_mrzero = True
    except ImportError:
        have_mrzero = False
        print("MR-zero not installed (pip install -e '.[bench]'): ours only", file=sys.stderr)
    sys.path.insert(0, str(REPO))
    from mr0core.phantom.builtin_phantoms import write_phantom

    machine = _machine(opts)
    print(f"machine: {machine}; {opts.repeat} timed runs after a warm-up, median")
    head = f"{'case':<18}{'size':>5} {'ours s':>8} {'MR0 s':>8} {'ratio':>6} "
    head += f"{'ours err':>9} {'MR0 err':>8} {'ours MB':>8} {'MR0 MB':>7} {'ref conv':>9} target"
    print(head)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench_suite_") as tmp_dir:
        tmp = Path(tmp_dir)
        for size in sizes:
            if size == 1:
                phantom: Path | str = "voxel"
            else:
                phantom, _ = write_phantom("brain", tmp / f"brain{size}", size=size)
            for case in cases:
                seq = pdg_suite.write_case(case, max(size, 16), tmp / f"{case}_{size}.seq")
                row: dict[str, Any] = {"case": case, "size": size}
                sims = ["ours", "mrzero"] if have_mrzero else ["ours"]
                for sim in sims:
                    out = tmp / f"{sim}.npy"
                    row[sim] = _run(sim, seq, phantom, DEFAULT, out, opts)
                    if opts.device == "cpu":
                        mem = _run(sim, seq, phantom, DEFAULT, tmp / "mem.npy", opts, memory=True)
                        row[sim]["peak_bytes"] = mem["peak_bytes"] if mem else None
                reference, check = suite_reference(case, size)
                ref_run = _run("ours", seq, phantom, reference, tmp / "ref.npy", opts,
                               reference=True)  # fmt: skip
                row["reference_blocks"] = ref_run["voxel_blocks"] if ref_run else None
                row["reference"] = "ours at very tight thresholds"
                if opts.check_sizes is None or size in opts.check_sizes:
                    try:
                        _run("ours", seq, phantom, check, tmp / "check.npy", opts,
                             reference=True)  # fmt: skip
                    except RuntimeError as err:  # e.g. too large: the row stays, unchecked
                        print(f"{case} {size}: the reference's check failed: {err}",
                              file=sys.stderr)  # fmt: skip
                        row["ref_convergence"] = None
                    else:
                        row["ref_convergence"] = _nrmse(tmp / "ref.npy", tmp / "check.npy")
                else:
                    row["ref_convergence"] = None
                row["ours"]["nrmse"] = _nrmse(tmp / "ours.npy", tmp / "ref.npy")
                if have_mrzero:
                    row["mrzero"]["nrmse"] = _nrmse(tmp / "mrzero.npy", tmp / "ref.npy")
                row["meets"] = _meets(row)
                rows.append(row)
                text = _format(row).rsplit("  ", 1)[0]
                conv = row["ref_convergence"]
                conv_text = f"{100 * conv:>8.3f}%" if conv is not None else f"{'-':>9}"
                print(f"{text} {conv_text} {row['meets']}", flush=True)
    summary: dict[str, Any] = {"machine": machine, "device": opts.device, "rows": rows,
                               "repeat": opts.repeat, "threads": opts.threads}  # fmt: skip
    for size in sizes:
        ratios = [r["ratio"] for r in rows if "ratio" in r and r["size"] == size]
        if ratios:
            med, worst = statistics.median(ratios), max(ratios)
            summary[f"median_ratio_{size}"] = med
            print(f"size {size}: median time ratio ours/MR-zero {med:.3f} "
                  f"({1 / med:.1f}x faster), worst {worst:.3f}")  # fmt: skip
    if opts.json:
        opts.json.write_text(json.dumps(summary, indent=2))
    return 0


def _meets(row: dict[str, Any]) -> str:
    """Check one row against the targets: accuracy (vs MR-zero's default error) and speed."""
    mr0 = row.get("mrzero")
    if not mr0:
        return "-"
    ours_err, mr0_err = 100 * row["ours"]["nrmse"], 100 * mr0["nrmse"]
    bound = mr0_err + 0.5 if mr0_err > 2 else min(mr0_err + 0.5, 2.0)
    t_ours = row["ours"]["pre_s"] + row["ours"]["main_s"]
    t_mr0 = mr0["pre_s"] + mr0["main_s"]
    notes = [] if ours_err <= bound else [f"err>{bound:.2f}%"]
    if t_ours / t_mr0 > 0.5:
        notes.append("slow>0.5")
    if (row.get("ref_convergence") or 0.0) >= 1e-3:
        notes.append("ref>0.1%")
    return "ok" if not notes else ",".join(notes)


def _format(row: dict[str, Any]) -> str:
    ours, mr0 = row["ours"], row.get("mrzero")
    t_ours = ours["pre_s"] + ours["main_s"]
    text = f"{row['case']:<18}{row['size']:>5} {t_ours:>8.2f} "
    if mr0:
        t_mr0 = mr0["pre_s"] + mr0["main_s"]
        row["ratio"] = t_ours / t_mr0
        text += f"{t_mr0:>8.2f} {row['ratio']:>6.2f} {100 * ours['nrmse']:>8.2f}% "
        text += f"{100 * mr0['nrmse']:>7.2f}% {ours['peak_bytes'] / 2**20:>8.0f} "
        text += f"{mr0['peak_bytes'] / 2**20:>7.0f}"
    else:
        text += f"{'-':>8} {'-':>6} {100 * ours['nrmse']:>8.2f}% {'-':>8} "
        text += f"{ours['peak_bytes'] / 2**20:>8.0f} {'-':>7}"
    return text + f"  {row['reference']}"


if __name__ == "__main__":
    sys.exit(main())

"""Calibrate the memory models against measured peaks.

The models are :mod:`mr0core.sim.memory` (PDG) and :mod:`mr0core.recon.memory`; an estimate
here is the model's figure plus :data:`scheduler.estimate.FIXED_BYTES` on the CPU, as the
scheduler places jobs.

Every case (a PDG simulation of a sequence on the built-in brain, or a reconstruction of
synthetic raw data) runs in a fresh subprocess, which prints its measured peak and the
estimates; the parent prints one row per case (estimate, measured, ratio = measured /
estimate), the median and worst ratios and the machine.

How the peak is measured
    CPU: the rise of the process's peak resident set (``VmHWM``, reset through
    ``/proc/self/clear_refs`` just before the job) over its resident set after the imports,
    the sequence import and the phantom build. glibc is told to serve every block above 64 KiB
    by ``mmap`` and to return freed memory at once (``MALLOC_MMAP_THRESHOLD_``,
    ``MALLOC_TRIM_THRESHOLD_``), so the resident set follows what is allocated rather than
    what the heap happened to keep. ``tracemalloc`` cannot be used: it does not see torch's
    allocations; torch's CPU memory profiler sees only torch's, not the pre-pass's numpy
    arrays, and gives events rather than the peak. The RSS also holds the one-time costs of a
    fresh process (BLAS and OpenMP buffers, thread stacks, code pages), which the estimate's
    fixed term (``FIXED_BYTES``) stands for.
    Allocations (CPU, the ``alloc`` column): the main pass once more under a
    ``TorchDispatchMode`` that adds up the bytes of live torch storages. That is what CUDA's
    allocator counts, so it checks the ``main`` term alone, free of RSS noise.
    CUDA (``--device cuda``): ``torch.cuda.max_memory_allocated`` over the job, less what was
    allocated before it (the phantom and sequence on the GPU), against the ``cuda`` estimate
    (the main pass). The reconstruction cases are CPU-only (the NUFFT runs on the host).

    python scripts/calibrate_estimate.py             # the full grid (about an hour on 2 cores)
    python scripts/calibrate_estimate.py --quick     # six PDG and three recon cases (~5 min)
    python scripts/calibrate_estimate.py --device cuda --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "seq-corpus"

# (sequence, phantom size, coils, max_states): "demo<n>" is mr0core.jobs.build_demo_flash(n),
# "train<n>"/"spoiled<n>" synthetic_train(n)/synthetic_spoiled(n) (the cases the tests measure)
PDG_CASES: tuple[tuple[str, int, int, int], ...] = (
    ("write_gre", 16, 1, 200),
    ("write_gre", 64, 1, 200),
    ("write_gre", 128, 4, 200),
    ("write_gre", 128, 8, 500),
    ("demo32", 32, 1, 200),
    ("demo64", 64, 8, 200),
    ("write_tse", 64, 4, 200),
    ("write_tse", 128, 1, 50),
    ("write_haste", 64, 8, 200),
    ("write_epi", 128, 1, 200),
    ("write_epi_se_rs", 64, 4, 200),
    ("write_epi_se_rs", 128, 1, 500),
    ("simple_mprage120", 32, 1, 200),
    ("simple_mprage120", 64, 4, 50),
    ("simple_mprage120", 64, 1, 500),
    ("simple_mprage120", 128, 4, 200),
    ("simple_mprage120", 128, 8, 200),
    ("write_radial_gre", 32, 1, 50),
    ("write_radial_gre", 64, 1, 200),
    ("write_radial_gre", 128, 4, 200),
    ("write_ute", 64, 1, 200),
    ("write_ute", 64, 8, 100),
    ("seq3", 128, 8, 200),
    ("seq3", 64, 1, 500),
    ("seq5", 128, 4, 200),
    ("write_mprage", 16, 1, 50),
    ("train6", 128, 4, 200),
    ("train5", 128, 8, 200),
    ("spoiled8", 16, 1, 200),
)
PDG_QUICK = (
    ("write_gre", 64, 1, 200),
    ("demo32", 32, 1, 200),
    ("simple_mprage120", 128, 4, 200),
    ("seq3", 128, 8, 200),
    ("train6", 128, 4, 200),
    ("spoiled8", 16, 1, 200),
)
# (method, matrix, coils)
RECON_CASES: tuple[tuple[str, tuple[int, ...], int], ...] = (
    ("fft", (128, 128, 1), 8),
    ("fft", (256, 256, 1), 16),
    ("fft", (64, 64, 32), 8),
    ("sense", (128, 128, 1), 8),
    ("sense", (256, 256, 1), 8),
    ("sense", (192, 192, 1), 16),
    ("nufft", (128, 128, 1), 8),
    ("nufft", (256, 256, 1), 4),
    ("adjoint", (64, 64, 1), 4),
)
RECON_QUICK = (
    ("fft", (256, 256, 1), 16),
    ("sense", (192, 192, 1), 16),
    ("nufft", (128, 128, 1), 8),
)


# -- the child: one case in a fresh process -----------------------------------------------------


_rss_bytes = benchlib.rss_bytes
_peak_rss_bytes = benchlib.peak_rss_bytes
_reset_peak_rss = benchlib.reset_peak_rss


class _Meter:
    """Peak memory of a stretch of code on ``device``, measured as the module docstring says."""

    def __init__(self, device: str) -> None:
        import ctypes

        import torch

        self.device = device
        self.torch = torch
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            # numba and the compiled kernels are a one-time cost of the process (about 150 MB
            # resident, mr0core.sim.memory), not the simulation's: loaded before the base
            from mr0core.sim import mainpass_kernel, prepass_kernel

            prepass_kernel.warm_up()
            mainpass_kernel.warm_up()
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # start from no retained heap
            self.base = _rss_bytes()
            _reset_peak_rss()

    def peak(self) -> int:
        """Peak bytes above the start so far."""
        if self.device == "cuda":
            self.torch.cuda.synchronize()
            return max(self.torch.cuda.max_memory_allocated() - self.base, 0)
        return max(_peak_rss_bytes() - self.base, 0)

    def now(self) -> int:
        """Bytes above the start now."""
        if self.device == "cuda":
            return self.torch.cuda.memory_allocated() - self.base
        return _rss_bytes() - self.base


def _allocation_tracker() -> Any:
    """Return a dispatch mode that counts the bytes of live torch CPU storages, and their peak.

    Every op's outputs are looked up by storage; a new storage is counted until it is freed
    (a ``weakref`` finaliser). This is what CUDA's ``max_memory_allocated`` counts, without the
    allocator's rounding, so the main pass's formula can be checked on a CPU as well.
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, int] = {}
            self.now = 0
            self.peak = 0

        def _free(self, key: int) -> None:
            self.now -= self.live.pop(key, 0)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    storage = t.untyped_storage()
                    key = storage.data_ptr()
                    if key and key not in self.live:
                        self.live[key] = storage.nbytes()
                        self.now += storage.nbytes()
                        self.peak = max(self.peak, self.now)
                        weakref.finalize(storage, self._free, key)
            return out

    return Tracker()


def synthetic_train(reps: int, samples: int = 64) -> Any:
    """Build a train of 40° pulses with small, varying gradient moments (many emitting states).

    Each repetition: 1 ms with a y moment that cycles through -3, -1, 1, 3 /m (so the states
    of different repetitions do not merge), then ``samples`` ADC events of 20 µs stepping kx by
    0.05 /m, well inside the Nyquist range of the built-in phantoms. The transverse states grow
    about threefold per pulse, and nearly all of them emit.
    """
    import math

    from mr0core.sequence import PulseUsage, Sequence

    seq = Sequence(normalized_grads=False)
    for r in range(reps):
        rep = seq.new_rep(samples + 1)
        rep.pulse.usage = PulseUsage.EXCIT
        rep.pulse.angle = math.radians(40)
        rep.event_time[0] = 1e-3
        rep.gradm[0, 1] = 2.0 * (r % 4) - 3.0
        rep.event_time[1:] = 2e-5
        rep.gradm[1:, 0] = 0.05
        rep.adc_usage[1:] = 1
    return seq


def synthetic_spoiled(reps: int, samples: int = 4096) -> Any:
    """Build a gradient-spoiled train whose pre-pass outweighs its main pass.

    Each repetition: a 30° pulse, ``samples`` ADC events of 10 µs stepping kx by 0.01 /m, then
    a z spoiler of ``1000 (r + 1)^1.5`` /m that never repeats, so no echo refocuses. The
    pre-pass keeps up to ``max_states`` states and estimates the signal of each at every sample
    (``[states, samples]`` float64 arrays), while the main pass simulates only the few states
    that can still emit.
    """
    import math

    from mr0core.sequence import PulseUsage, Sequence

    seq = Sequence(normalized_grads=False)
    for r in range(reps):
        rep = seq.new_rep(samples + 1)
        rep.pulse.usage = PulseUsage.EXCIT
        rep.pulse.angle = math.radians(30)
        rep.event_time[:samples] = 1e-5
        rep.gradm[:samples, 0] = 0.01
        rep.adc_usage[:samples] = 1
        rep.event_time[samples] = 1e-3
        rep.gradm[samples, 2] = 1000.0 * (r + 1) ** 1.5
    return seq


def _sequence(name: str) -> Any:
    """Return ``demo<n>`` (the demo FLASH), ``train<n>``, ``spoiled<n>``, or a corpus file."""
    from mr0core.sequence import Sequence

    if name.startswith("train"):
        return synthetic_train(int(name[5:]))
    if name.startswith("spoiled"):
        return synthetic_spoiled(int(name[7:]))
    if name.startswith("demo"):
        from mr0core.jobs import build_demo_flash

        return Sequence.from_pypulseq(build_demo_flash(int(name[4:] or 64)))
    path = Path(name)
    return Sequence.import_file(path if path.suffix == ".seq" else CORPUS / f"{name}.seq")


def child_pdg(
    seq_name: str, size: int, coils: int, max_states: int, device: str, count: bool = True
) -> dict:
    """Run one simulation as :func:`mr0core.jobs.run_simulation` does; measure and estimate.

    ``count``: on the CPU, run the main pass once more under :func:`_allocation_tracker`.
    """
    import contextlib
    import io
    import warnings

    from mr0core.jobs import SimSettings, load_job_phantom
    from mr0core.sim import compute_graph, execute_graph, memory
    from scheduler.estimate import FIXED_BYTES

    settings = SimSettings(max_states=max_states)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        seq = _sequence(seq_name)
    # the spoiled train runs on box voxels: their sinc response is not monotone in |k|, so the
    # pre-pass computes the response of every state (the case prepass_bytes bounds); on the
    # default voxels it skips states dephased beyond the voxel's bandwidth, nearly all of them here
    shape = "box" if seq_name.startswith("spoiled") else "sinc"
    data = load_job_phantom("brain", size, coils)[0].build(voxel_shape=shape)
    if device == "cuda":
        data, seq = data.cuda(), seq.cuda()
    meter = _Meter(device)
    graph = compute_graph(seq, data, settings.max_states, settings.min_state_mag)
    pre = meter.peak()
    held = meter.now()
    if device == "cpu":
        _reset_peak_rss()  # from here VmHWM starts at the RSS holding the graph
    signal = execute_graph(
        graph, seq, data, settings.min_emitted, settings.min_latent, print_progress=False
    )
    signal = signal.detach().cpu()
    total = max(pre, meter.peak())
    allocated = None
    if device == "cpu" and count:  # the main pass once more, counting torch's allocations
        tracker = _allocation_tracker()
        with tracker:
            execute_graph(
                graph, seq, data, settings.min_emitted, settings.min_latent, print_progress=False
            )
        allocated = tracker.peak
    fixed = FIXED_BYTES if device == "cpu" else 0  # a fresh process's one-time host costs
    load = memory.pdg_load_from_graph(graph, seq, data, settings.min_emitted, settings.min_latent)
    bound = memory.pdg_load(
        seq, load.voxels, coils, max_states, tx=load.tx, exact=load.exact,
        size_m=data.size.cpu().numpy(),
    )  # fmt: skip
    return {
        "kind": "pdg",
        "case": f"{seq_name} {size}² C={coils} S={max_states}",
        "args": [seq_name, size, coils, max_states],
        "voxels": load.voxels,
        "max_plus": int(load.plus.max(initial=0)),
        "measured": total,
        "measured_pre": pre,
        "measured_graph": held,
        "allocated_main": allocated,
        "estimate": memory.load_bytes(load, device) + fixed,
        "estimate_bound": memory.load_bytes(bound, device) + fixed,
        "estimate_main": memory.main_pass_bytes(load),
        "estimate_pre": memory.prepass_bytes(load),
        "estimate_graph": memory.graph_bytes(load),
    }


def synthetic_kdata(method: str, matrix: tuple[int, ...], coils: int) -> Any:
    """Raw data for a recon case: Cartesian (fully or 2× undersampled) or radial, seeded."""
    import math

    import torch

    from mr0core.recon import KData

    nx, ny, nz = (*matrix, 1)[:3]
    fov = (0.2, 0.2, 0.005 if nz == 1 else 0.2)
    gen = torch.Generator().manual_seed(0)
    if method == "nufft" or method == "adjoint":
        spokes = math.ceil(math.pi / 2 * ny)
        angle = torch.arange(spokes, dtype=torch.float64) * math.pi / spokes
        r = (torch.arange(nx, dtype=torch.float64) - nx // 2) / fov[0]
        k = torch.zeros(spokes * nx, 4)
        k[:, 0] = (r[None] * torch.cos(angle)[:, None]).flatten().float()
        k[:, 1] = (r[None] * torch.sin(angle)[:, None]).flatten().float()
        lines = torch.zeros(spokes, dtype=torch.int64)
        partitions = torch.zeros(spokes, dtype=torch.int64)
        trajectory, kspace, n_read = "radial", k, spokes
    else:
        keep = torch.ones(ny, dtype=torch.bool)
        if method == "sense":
            keep[1::2] = False
            keep[ny // 2 - 12 : ny // 2 + 12] = True  # 24 calibration lines
        ys = torch.nonzero(keep).flatten()
        lines = ys.repeat(nz)
        partitions = torch.arange(nz).repeat_interleave(len(ys))
        trajectory, kspace, n_read = "cartesian", None, len(lines)
    n = n_read * nx
    signal = torch.complex(
        torch.randn(n, coils, generator=gen), torch.randn(n, coils, generator=gen)
    )
    return KData(
        signal=signal,
        readout_start=torch.arange(n_read, dtype=torch.int64) * nx,
        readout_length=torch.full((n_read,), nx, dtype=torch.int64),
        idx={"LIN": lines, "PAR": partitions},
        encoded_matrix=(nx, ny, nz),
        recon_matrix=(nx, ny, nz),
        encoded_fov_m=fov,
        recon_fov_m=fov,
        center_sample=torch.full((n_read,), nx // 2, dtype=torch.int64),
        sample_time_s=torch.full((n_read,), 1e-5, dtype=torch.float64),
        flags=torch.zeros(n_read, dtype=torch.int64),
        center_line=ny // 2,
        center_partition=nz // 2,
        trajectory=trajectory,
        kspace=kspace,
    )


def child_recon(method: str, matrix: tuple[int, ...], coils: int) -> dict:
    """Reconstruct synthetic raw data with ``method`` (CPU); measure and estimate."""
    import torch

    from mr0core.recon import reconstruct
    from mr0core.recon.memory import estimate_recon_bytes
    from scheduler.estimate import FIXED_BYTES

    kdata = synthetic_kdata(method, matrix, coils)
    meter = _Meter("cpu")
    rec = reconstruct(kdata, method=method)
    # the raw data exist before the meter starts; a recon job reads them itself, so they count
    raw = kdata.signal.numel() * kdata.signal.element_size()
    if kdata.kspace is not None:
        raw += kdata.kspace.numel() * kdata.kspace.element_size()
    measured = meter.peak() + raw
    if rec.method != method:
        raise RuntimeError(f"recon case {method} ran {rec.method}")
    est = FIXED_BYTES + estimate_recon_bytes(
        matrix, coils, method, samples=int(kdata.signal.shape[0]), threads=torch.get_num_threads()
    )
    return {
        "kind": "recon",
        "case": f"{method} {'x'.join(map(str, matrix))} C={coils}",
        "args": [method, list(matrix), coils],
        "measured": measured,
        "estimate": est,
    }


# -- the parent ---------------------------------------------------------------------------------


def _run_case(args: list[str], opts: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", *args, "--device", opts.device]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))  # fmt: skip
    env["OMP_NUM_THREADS"] = str(opts.threads)
    env["MALLOC_MMAP_THRESHOLD_"] = env["MALLOC_TRIM_THRESHOLD_"] = str(64 * 1024)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"case {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine(device: str, threads: int) -> str:
    """Describe the machine: CPU model (/proc/cpuinfo), cores, threads, Python, torch, GPU."""
    import torch

    text = f"{benchlib.cpu_name()}, {os.cpu_count()} cores, {threads} threads, Python "
    text += f"{platform.python_version()}, torch {torch.__version__}"
    if device == "cuda":
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def _mb(n: float) -> str:
    return f"{n / 1e6:9.1f}"


def summarise(rows: list[dict[str, Any]], measured: str, key: str) -> tuple[float, float, float]:
    """Return the median, lowest and highest ``measured`` / ``key`` over ``rows``."""
    ratios = [r[measured] / r[key] for r in rows]
    return statistics.median(ratios), min(ratios), max(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only", choices=("pdg", "recon"), help="run only these cases")
    parser.add_argument("--json", type=Path, help="write all rows here")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--no-count", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        import torch

        torch.set_num_threads(opts.threads)
        kind, *rest = opts.child
        if kind == "pdg":
            out = child_pdg(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), opts.device,
                            count=not opts.no_count)  # fmt: skip
        else:
            dims = tuple(int(v) for v in rest[1].split("x"))
            out = child_recon(rest[0], dims, int(rest[2]))
        print(json.dumps(out))
        return 0

    sys.path.insert(0, str(REPO))
    if opts.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA GPU is available here; nothing measured", file=sys.stderr)
            return 2
    print(f"machine: {machine(opts.device, opts.threads)}")
    head = f"{'case':<34}{'est MB':>8} {'meas MB':>8} {'ratio':>6} {'bound MB':>9} {'ratio':>6}"
    print(head + f" {'main est':>9} {'alloc':>7} {'ratio':>6}")
    rows: list[dict[str, Any]] = []
    pdg_cases = () if opts.only == "recon" else PDG_QUICK if opts.quick else PDG_CASES
    for seq, size, coils, states in pdg_cases:
        row = _run_case(["pdg", seq, str(size), str(coils), str(states)], opts)
        rows.append(row)
        line = f"{row['case']:<34}{_mb(row['estimate'])} {_mb(row['measured'])} "
        line += f"{row['measured'] / row['estimate']:6.2f} {_mb(row['estimate_bound'])} "
        line += f"{row['measured'] / row['estimate_bound']:6.2f}"
        if row.get("allocated_main"):
            line += f" {_mb(row['estimate_main'])} {_mb(row['allocated_main'])} "
            line += f"{row['allocated_main'] / row['estimate_main']:6.2f}"
        print(line, flush=True)
    if opts.only != "pdg" and opts.device == "cuda":
        print("recon cases skipped: they run on the CPU only", file=sys.stderr)
    if opts.only != "pdg" and opts.device == "cpu":
        for method, dims, coils in RECON_QUICK if opts.quick else RECON_CASES:
            row = _run_case(["recon", method, "x".join(map(str, dims)), str(coils)], opts)
            rows.append(row)
            line = f"{row['case']:<34}{_mb(row['estimate'])} {_mb(row['measured'])} "
            print(line + f"{row['measured'] / row['estimate']:6.2f}", flush=True)
    pdg = [r for r in rows if r["kind"] == "pdg"]
    recon = [r for r in rows if r["kind"] == "recon"]
    for label, subset, measured, key in (
        ("PDG, from the graph", pdg, "measured", "estimate"),
        ("PDG, bound before the pre-pass", pdg, "measured", "estimate_bound"),
        ("PDG main pass, torch allocations", pdg, "allocated_main", "estimate_main"),
        ("recon", recon, "measured", "estimate"),
    ):
        subset = [r for r in subset if r.get(measured) and r.get(key)]
        if subset:
            med, lo, hi = summarise(subset, measured, key)
            print(f"{label}: measured/estimate median {med:.2f}, lowest {lo:.2f}, "
                  f"highest {hi:.2f} ({len(subset)} cases)")  # fmt: skip
    if opts.json:
        opts.json.write_text(json.dumps({"machine": machine(opts.device, opts.threads),
                                         "rows": rows}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

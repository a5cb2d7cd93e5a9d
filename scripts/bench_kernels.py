"""Benchmark: the PDG's numba kernels against the code they replace, pre-pass or main pass.

For every case of the sequence-class suite (``scripts/pdg_suite.py``) at matrix size ``--size``
on the built-in brain, each side runs in its own process with one thread: one warm-up
(compilation or cache load, not timed), then ``--repeat`` timed runs; the median is printed with
the ratio compiled / reference.

- ``--pass pre`` (default): ``compute_graph(seq, data, 200, 1e-4)`` with the kernels against the
  numpy definitions; the two graphs must be identical (each child writes a digest of every
  array of its graph).
- ``--pass main``: ``execute_graph(graph, seq, data, 0.01, 0.01)`` with the kernels (the state
  update and its bookkeeping) against the torch and numpy operations they replace, on the same
  graph (computed with the kernels in each child); the NRMSE between the two signals is printed.

    python scripts/bench_kernels.py [--pass pre|main] [--size 48] [--cases ...] [--repeat 5]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)

ARRAYS = ("plus_k", "plus_tau", "plus_mags", "z_k", "z_tau", "z_mags", "plus_def", "z_def",
          "plus_emitted", "plus_latent", "z_latent")  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    import time
    import warnings

    import numpy as np
    import torch

    import mr0core as mr0
    from mr0core.sim import graph as graph_mod
    from mr0core.sim import pdg as pdg_mod

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    seq = mr0.Sequence.import_file(args.seq)
    data = mr0.TissueDict.load(args.phantom).build()
    if args.pass_ == "main":
        graph = mr0.compute_graph(seq, data, 200, 1e-4)
        if args.side == "numpy":
            pdg_mod._MAIN_KERNEL = False  # the torch and numpy operations (no numba)
        signal = mr0.execute_graph(graph, seq, data, 0.01, 0.01, print_progress=False)  # warm-up
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            signal = mr0.execute_graph(graph, seq, data, 0.01, 0.01, print_progress=False)
            times.append(time.perf_counter() - t0)
        np.save(args.out, signal.numpy())
        print(json.dumps({"median_s": float(np.median(times)), "repetitions": len(graph)}))
        return
    if args.side == "numpy":
        graph_mod._KERNELS = False  # the numpy definitions (what runs without numba)
    graph = mr0.compute_graph(seq, data, 200, 1e-4)  # warm-up
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        graph = mr0.compute_graph(seq, data, 200, 1e-4)
        times.append(time.perf_counter() - t0)
    digest = hashlib.sha256()
    for rg in graph:
        for name in ARRAYS:
            digest.update(np.ascontiguousarray(getattr(rg, name)).tobytes())
        for kind in sorted(rg.edges):
            for part in rg.edges[kind]:
                digest.update(np.ascontiguousarray(part).tobytes())
    print(json.dumps({"median_s": float(np.median(times)), "digest": digest.hexdigest(),
                      "repetitions": len(graph)}))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=48)
    parser.add_argument("--cases", nargs="+")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pass", dest="pass_", choices=("pre", "main"), default="pre")
    parser.add_argument("--side", choices=("numba", "numpy"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--seq", help=argparse.SUPPRESS)
    parser.add_argument("--phantom", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.repeat < 3:
        parser.error("--repeat must be >= 3 (a median of at least three runs)")
    if opts.side:
        _child(opts)
        return 0
    import numpy as np
    import pdg_suite

    from mr0core.phantom.builtin_phantoms import write_phantom

    cases = opts.cases or list(pdg_suite.CASES)
    main_pass = opts.pass_ == "main"
    reference = "torch" if main_pass else "numpy"
    print(f"machine: {benchlib.machine()}; 1 thread; size {opts.size}; {opts.pass_}-pass; "
          f"median of {opts.repeat} after a warm-up")  # fmt: skip
    print(f"{'case':18s} {'reps':>5s} {reference + ' ms':>9s} {'numba ms':>9s} {'ratio':>6s}  "
          f"{'signal NRMSE' if main_pass else 'graphs'}")  # fmt: skip
    ratios = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        phantom, _ = write_phantom("brain", tmp / "brain", size=opts.size)
        for case in cases:
            seq = pdg_suite.write_case(case, opts.size, tmp / f"{case}.seq")
            out = {}
            for side in ("numpy", "numba"):
                cmd = [sys.executable, __file__, "--side", side, "--seq", str(seq),
                       "--phantom", str(phantom), "--repeat", str(opts.repeat),
                       "--pass", opts.pass_, "--out", str(tmp / f"{side}.npy")]  # fmt: skip
                run = subprocess.run(cmd, capture_output=True, text=True, check=True)
                out[side] = json.loads(run.stdout.strip().splitlines()[-1])
            ratio = out["numba"]["median_s"] / out["numpy"]["median_s"]
            ratios.append(ratio)
            if main_pass:
                a, b = np.load(tmp / "numba.npy"), np.load(tmp / "numpy.npy")
                same = f"{np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30):.1e}"
            else:
                same = "identical" if out["numba"]["digest"] == out["numpy"]["digest"] else "DIFFER"
            print(f"{case:18s} {out['numba']['repetitions']:5d} "
                  f"{out['numpy']['median_s'] * 1e3:9.1f} {out['numba']['median_s'] * 1e3:9.1f} "
                  f"{ratio:6.2f}  {same}", flush=True)  # fmt: skip
    ratios.sort()
    print(f"median ratio numba/{reference} {ratios[len(ratios) // 2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

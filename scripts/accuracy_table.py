"""Measure the PDG suite's error at the settings ``util.simulate(accuracy=a)`` maps to.

For every case of ``scripts/pdg_suite.py`` at every size (1 = one white-matter voxel, else the
built-in brain at n²), the error is the NRMSE against ours at very tight thresholds
(``bench_pdg.suite_reference``). Each ``--accuracy`` value is simulated as
``mr0.util.simulate(accuracy=a)`` simulates it: :func:`mr0core.sim.accuracy_settings`, refined
where the pre-pass's cap cuts off heard states (:func:`mr0core.jobs.simulate_signal`; the
states finally used are printed after the error). With ``--thresholds``, both thresholds equal
the value and the pre-pass is MR-zero's default: the plain MR-zero meaning of ``accuracy``.
Accuracy only, in one process: no timing.

Usage: ``python scripts/accuracy_table.py [--sizes 1 48] [--accuracy 1e-2 1e-3] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pdg  # scripts/bench_pdg.py: the suite's reference settings and voxel
import pdg_suite  # scripts/pdg_suite.py: the cases

import mr0core as mr0
from mr0core.jobs import SimSettings, simulate_signal


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    norm = ref.abs().pow(2).sum().sqrt().clamp_min(1e-30)
    return float((x - ref).abs().pow(2).sum().sqrt() / norm)


def _simulate(seq: mr0.Sequence, data: mr0.SimData, settings: tuple) -> torch.Tensor:
    states, mag, emitted, latent = settings
    graph = mr0.compute_graph(seq, data, int(states), mag)
    return mr0.execute_graph(graph, seq, data, emitted, latent, print_progress=False)


def main(argv: list[str] | None = None) -> int:
    """Print one row per case and size: the error at each accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 48])
    parser.add_argument("--accuracy", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--cases", nargs="+", default=pdg_suite.case_names())
    parser.add_argument(
        "--thresholds",
        action="store_true",
        help="MR-zero's meaning: both thresholds = accuracy, pre-pass 200, 1e-4",
    )
    parser.add_argument("--json", type=Path)
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    rows = []
    print("| case | size | " + " | ".join(f"error at {a:g}" for a in opts.accuracy) + " |")
    print("|---|---|" + "---|" * len(opts.accuracy))
    with tempfile.TemporaryDirectory() as tmp:
        for size in opts.sizes:
            if size == 1:
                data = mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **bench_pdg.VOXEL).build()
            else:
                data = mr0.util.load_phantom((size, size), url="builtin:brain").build()
            for case in opts.cases:
                path = pdg_suite.write_case(case, max(size, 16), Path(tmp) / f"{case}.seq")
                seq = mr0.Sequence.import_file(path)
                ref = _simulate(seq, data, bench_pdg.suite_reference(case)[0])
                errors, states = [], []
                for a in opts.accuracy:
                    if opts.thresholds:
                        signal = _simulate(seq, data, (200, 1e-4, a, a))
                        states.append(200)
                    else:
                        used = [SimSettings.for_accuracy(a)]
                        signal = simulate_signal(seq, data, used[0], on_refine=used.append)
                        states.append(used[-1].max_states)
                    errors.append(_nrmse(signal, ref))
                by_accuracy = dict(zip(map(str, opts.accuracy), errors, strict=True))
                rows.append(
                    {
                        "case": case,
                        "size": size,
                        "errors": by_accuracy,
                        "states": dict(zip(map(str, opts.accuracy), states, strict=True)),
                    }
                )
                label = "voxel" if size == 1 else f"{size}²"
                cells = " | ".join(
                    f"{'**' if e > a else ''}{100 * e:.2f} %{'**' if e > a else ''}"
                    + ("" if opts.thresholds or n == SimSettings.for_accuracy(a).max_states
                       else f" ({n} states)")
                    for e, a, n in zip(errors, opts.accuracy, states, strict=True)
                )  # fmt: skip
                print(f"| {case} | {label} | {cells} |", flush=True)
    for a in opts.accuracy:
        worst = max(r["errors"][str(a)] for r in rows)
        verdict = "met" if worst <= a else "NOT met"
        print(f"accuracy {a:g}: worst error {100 * worst:.2f} % ({verdict})")
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

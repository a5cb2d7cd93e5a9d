"""Benchmark: our Pulseq import against PyPulseq on the test corpus.

For every file it reports the best of ``--repeat`` runs of

- ``pypulseq read``: ``pypulseq.Sequence().read(path)`` (parses tables; blocks stay lazy),
- ``ours parse``: ``mr0core.pulseq.read_seq`` (parses and validates every reference),
- ``ours import``: ``mr0core.Sequence.import_file`` (parse + conversion to MR-zero events),
- ``pypulseq k``: PyPulseq read + ``calculate_kspace()``, the cheapest way PyPulseq yields the
  same per-sample k-space that our import produces,

and the ratios (> 1 means ours is faster). Run: ``python scripts/bench_import.py``.
"""

from __future__ import annotations

import argparse
import gc
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pypulseq as pp
import torch

import mr0core as mr0
from mr0core.pulseq import read_seq

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "seq-corpus"


def best_of(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
    return min(times)


def pp_read(path: Path) -> pp.Sequence:
    seq = pp.Sequence()
    seq.read(str(path))
    return seq


def pp_kspace(path: Path) -> object:
    return pp_read(path).calculate_kspace()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {torch.get_num_threads()} torch threads, Python {platform.python_version()}, "
        f"torch {torch.__version__}, pypulseq {pp.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("files", nargs="*", type=Path, help="default: the whole test corpus")
    args = parser.parse_args()
    files = args.files or sorted(CORPUS.glob("*.seq"))
    warnings.filterwarnings("ignore")

    print(f"machine: {machine()}")
    header = (
        f"{'file':32s} {'pp read':>9s} {'ours parse':>10s} {'ours import':>11s} "
        f"{'pp k':>9s} {'read/parse':>10s} {'read/import':>11s} {'k/import':>9s}"
    )
    print(header)
    print("-" * len(header))
    totals = [0.0, 0.0, 0.0, 0.0]
    for path in files:
        t = [
            best_of(lambda p=path: pp_read(p), args.repeat),
            best_of(lambda p=path: read_seq(p), args.repeat),
            best_of(lambda p=path: mr0.Sequence.import_file(p), args.repeat),
            best_of(lambda p=path: pp_kspace(p), args.repeat),
        ]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        print(
            f"{path.name:32s} {t[0] * 1e3:7.1f}ms {t[1] * 1e3:8.1f}ms {t[2] * 1e3:9.1f}ms "
            f"{t[3] * 1e3:7.1f}ms {t[0] / t[1]:10.2f} {t[0] / t[2]:11.2f} {t[3] / t[2]:9.2f}"
        )
    print("-" * len(header))
    t = totals
    print(
        f"{'total':32s} {t[0] * 1e3:7.1f}ms {t[1] * 1e3:8.1f}ms {t[2] * 1e3:9.1f}ms "
        f"{t[3] * 1e3:7.1f}ms {t[0] / t[1]:10.2f} {t[0] / t[2]:11.2f} {t[3] / t[2]:9.2f}"
    )
    print("ratios > 1: ours is faster than the PyPulseq reference measured in the same run")


if __name__ == "__main__":
    main()

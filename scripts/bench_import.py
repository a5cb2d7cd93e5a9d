"""Benchmark: our Pulseq import against PyPulseq on the test corpus.

For every file it reports the best of ``--repeat`` runs of

- ``pypulseq read``: ``pypulseq.Sequence().read(path)`` (parses tables; blocks stay lazy),
- ``ours parse``: ``mr0core.pulseq.read_seq`` (parses and validates every reference),
- ``ours import``: ``mr0core.Sequence.import_file`` (parse + conversion to MR-zero events),
- ``pypulseq k``: PyPulseq read + ``calculate_kspace()``, the cheapest way PyPulseq yields the
  same per-sample k-space that our import produces,
- ``mr-zero``: ``MRzeroCore.Sequence.import_file`` when ``mrzerocore`` is installed (the
  ``bench`` extra), which produces the same kind of object as our import,

and the ratios (> 1 means ours is faster). Run: ``python scripts/bench_import.py``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import benchlib  # scripts/benchlib.py (the script's own folder is on sys.path)
import pypulseq as pp
import torch

import mr0core as mr0
from mr0core.pulseq import read_seq

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "seq-corpus"


def best_of(func: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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


def mz_import(path: Path) -> object:
    import MRzeroCore as mz  # black-box reference only (AGPL); never imported by the product

    return mz.Sequence.import_file(str(path))


def machine() -> str:
    return (
        f"{benchlib.cpu_name()}, {torch.get_num_threads()} torch threads, Python "
        f"{platform.python_version()}, "
        f"torch {torch.__version__}, pypulseq {pp.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (best kept)")
    parser.add_argument("files", nargs="*", type=Path, help="default: the whole test corpus")
    args = parser.parse_args()
    files = args.files or sorted(CORPUS.glob("*.seq"))
    warnings.simplefilter("ignore")

    has_mz = importlib.util.find_spec("MRzeroCore") is not None
    print(f"machine: {machine()}")
    cols = ["pp read", "ours parse", "ours import", "pp k"] + (["mr-zero"] if has_mz else [])
    ratios = ["read/parse", "read/import", "k/import"] + (["mz/import"] if has_mz else [])
    header = f"{'file':32s} " + " ".join(f"{c:>11s}" for c in cols + ratios)
    print(header)
    print("-" * len(header))
    totals = [0.0] * len(cols)

    def row(name: str, t: list[float]) -> str:
        r = [t[0] / t[1], t[0] / t[2], t[3] / t[2]] + ([t[4] / t[2]] if has_mz else [])
        return (
            f"{name:32s} "
            + " ".join(f"{v * 1e3:9.1f}ms" for v in t)
            + " "
            + " ".join(f"{v:11.2f}" for v in r)
        )

    for path in files:
        funcs: list[Callable[[], object]] = [
            lambda p=path: pp_read(p),
            lambda p=path: read_seq(p),
            lambda p=path: mr0.Sequence.import_file(p),
            lambda p=path: pp_kspace(p),
        ]
        if has_mz:
            funcs.append(lambda p=path: mz_import(p))
        t = [best_of(f, args.repeat) for f in funcs]
        totals = [a + b for a, b in zip(totals, t, strict=True)]
        print(row(path.name, t))
    print("-" * len(header))
    print(row("total", totals))
    print("ratios > 1: ours is faster than the reference measured in the same run")


if __name__ == "__main__":
    main()

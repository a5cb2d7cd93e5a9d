"""Benchmark: PDG with rigid motion against the still simulation (issue 24's speed target).

A 2-D RF-spoiled FLASH (the PDG suite's ``flash_spoiled``) on the built-in brain at ``--size``
(64 by default), simulated still and with a rigid motion (drift, turn and breathing: the twin's
``RigidMotion``). Each side runs in its own process, one thread, ``--runs`` timed runs after a
warm-up; the median main-pass time (``execute_graph``; the pre-pass is the same for both) is
reported with the ratio moving / still measured in the same run, and the machine. Target: ≤ 3.

    .venv/bin/python scripts/bench_motion.py [--size 64] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MOTION = {
    "translation_mm_per_s": [5.0, -3.0, 0.0],
    "rotation_deg_per_s": [0.0, 0.0, 10.0],
    "breathing_amplitude_mm": [0.0, 4.0, 0.0],
    "breathing_period_s": 4.0,
}


def _child(size: int, moving: bool, runs: int) -> None:
    import torch

    torch.set_num_threads(1)
    import pdg_suite

    import mr0core as mr0
    from mr0core.sim.motion import RigidMotion

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flash.seq"
        pdg_suite.build_flash_spoiled(size).write(str(path))
        seq = mr0.Sequence.import_file(str(path))
    data = mr0.util.load_phantom((size, size), url="builtin:brain").build()
    if moving:
        data.phantom_motion = RigidMotion(**MOTION)
    graph = mr0.compute_graph(seq, data)
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        mr0.execute_graph(graph, seq, data, print_progress=False)
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t0)
    print(json.dumps({"times": times}))


def main(argv: list[str] | None = None) -> int:
    """Run both sides in their own processes; print the medians and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--child", choices=["still", "moving"], help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.child:
        _child(opts.size, opts.child == "moving", opts.runs)
        return 0
    from benchlib import machine

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    medians = {}
    for side in ("still", "moving"):
        cmd = [sys.executable, __file__, "--child", side, "--size", str(opts.size),
               "--runs", str(opts.runs)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            print(done.stderr, file=sys.stderr)
            return 1
        times = json.loads(done.stdout.strip().splitlines()[-1])["times"]
        medians[side] = statistics.median(times)
        print(f"{side:6s}: median {medians[side]:.3f} s of {opts.runs} runs "
              f"({', '.join(f'{t:.3f}' for t in times)})")  # fmt: skip
    ratio = medians["moving"] / medians["still"]
    print(f"{opts.size}² FLASH, rigid motion / still: {ratio:.2f} (target ≤ 3)")
    print(f"machine: {machine()}, 1 thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the two NUFFT candidates (finufft, torchkbnufft) on a 2-D radial case.

Case: ``spokes`` × ``samples`` radial trajectory over 180°, ``coils`` coils, ``n × n`` image;
adjoint (k-space → image) and forward (image → k-space), complex64, CPU. Both libraries run
with their default accuracy (finufft ``eps=1e-6``; torchkbnufft 6-point Kaiser–Bessel, 2×
grid), and their accuracy is measured against an exact DFT on a subset of pixels / samples.

Prints the machine (platform, CPU count, torch version), median timings, the ratio
torchkbnufft / finufft and the relative errors.

Usage::

    python scripts/bench_nufft.py [--spokes 256] [--samples 256] [--coils 8] [--n 128]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch


def _timeit(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (plans, tables, thread pools)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spokes", type=int, default=256)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--coils", type=int, default=8)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import finufft
    import torchkbnufft as tkbn

    n, coils = args.n, args.coils
    threads = torch.get_num_threads()
    print(f"platform: {platform.platform()}  ({platform.processor() or platform.machine()})")
    print(f"cpu count: {os.cpu_count()}  torch threads: {threads}")
    print(
        f"torch {torch.__version__}  finufft {finufft.__version__}  torchkbnufft {tkbn.__version__}"
    )
    print(
        f"case: 2-D radial, {args.spokes} spokes x {args.samples} samples, {coils} coils, "
        f"{n}x{n} image, complex64"
    )

    # radial trajectory in radians/sample of the n-grid, [-pi, pi)
    angles = torch.arange(args.spokes, dtype=torch.float64) * math.pi / args.spokes
    radius = (torch.arange(args.samples, dtype=torch.float64) - args.samples // 2) / args.samples
    radius = radius * 2 * math.pi
    om = torch.stack(
        [
            (radius[None, :] * torch.cos(angles[:, None])).reshape(-1),
            (radius[None, :] * torch.sin(angles[:, None])).reshape(-1),
        ]
    )  # [2, M]
    m = om.shape[1]
    gen = torch.Generator().manual_seed(0)
    data = torch.randn(coils, m, dtype=torch.complex64, generator=gen)
    image = torch.randn(coils, n, n, dtype=torch.complex64, generator=gen)

    # finufft: plans reused, like a recon loop would
    x = om[0].numpy().astype(np.float32)
    y = om[1].numpy().astype(np.float32)
    kw = {"nthreads": threads, "modeord": 0}
    plan1 = finufft.Plan(1, (n, n), n_trans=coils, eps=1e-6, isign=1, dtype="complex64", **kw)
    plan1.setpts(x, y)
    plan2 = finufft.Plan(2, (n, n), n_trans=coils, eps=1e-6, isign=-1, dtype="complex64", **kw)
    plan2.setpts(x, y)
    data_np = data.numpy()
    image_np = image.numpy()

    def fi_adj() -> np.ndarray:
        return plan1.execute(data_np)

    def fi_fwd() -> np.ndarray:
        return plan2.execute(image_np)

    plan1_lo = finufft.Plan(1, (n, n), n_trans=coils, eps=1e-3, isign=1, dtype="complex64", **kw)
    plan1_lo.setpts(x, y)

    def fi_adj_lo() -> np.ndarray:
        return plan1_lo.execute(data_np)

    def fi_adj_cold() -> np.ndarray:
        return finufft.nufft2d1(x, y, data_np, (n, n), eps=1e-6, isign=1, **kw)

    adj_ob = tkbn.KbNufftAdjoint(im_size=(n, n))
    fwd_ob = tkbn.KbNufft(im_size=(n, n))
    om32 = om.to(torch.float32)

    def tk_adj() -> torch.Tensor:
        with torch.no_grad():
            return adj_ob(data[None], om32)

    def tk_fwd() -> torch.Tensor:
        with torch.no_grad():
            return fwd_ob(image[None], om32)

    results = {
        "finufft adjoint": _timeit(fi_adj, args.repeat),
        "finufft forward": _timeit(fi_fwd, args.repeat),
        "finufft adjoint (with planning)": _timeit(fi_adj_cold, args.repeat),
        "finufft adjoint (eps 1e-3)": _timeit(fi_adj_lo, args.repeat),
        "torchkbnufft adjoint": _timeit(tk_adj, args.repeat),
        "torchkbnufft forward": _timeit(tk_fwd, args.repeat),
    }
    for name, t in results.items():
        print(f"{name:34s} {t * 1e3:9.1f} ms")
    ra = results["torchkbnufft adjoint"] / results["finufft adjoint"]
    rf = results["torchkbnufft forward"] / results["finufft forward"]
    print(f"ratio torchkbnufft / finufft: adjoint {ra:.1f}x, forward {rf:.1f}x")

    # accuracy against an exact DFT on 200 pixels / 200 samples, coil 0
    idx = torch.arange(n, dtype=torch.float64) - n // 2
    pix = torch.randint(0, n * n, (200,), generator=gen)
    px, py = idx[pix // n], idx[pix % n]
    phase = torch.exp(1j * (om[0][None, :] * px[:, None] + om[1][None, :] * py[:, None]))
    exact_adj = phase @ data[0].to(torch.complex128)
    fi_a = torch.from_numpy(fi_adj()[0].reshape(-1)[pix.numpy()])
    tk_a = tk_adj()[0, 0].reshape(-1)[pix]
    smp = torch.randint(0, m, (200,), generator=gen)
    gx, gy = torch.meshgrid(idx, idx, indexing="ij")
    phase_f = torch.exp(
        -1j * (om[0][smp, None] * gx.reshape(1, -1) + om[1][smp, None] * gy.reshape(1, -1))
    )
    exact_fwd = phase_f @ image[0].reshape(-1).to(torch.complex128)
    fi_f = torch.from_numpy(fi_fwd()[0][smp.numpy()])
    tk_f = tk_fwd()[0, 0][smp]

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.linalg.norm(a.to(b.dtype) - b) / torch.linalg.norm(b))

    print(
        f"relative error vs exact DFT: finufft adjoint {rel(fi_a, exact_adj):.1e}, "
        f"forward {rel(fi_f, exact_fwd):.1e}; torchkbnufft adjoint {rel(tk_a, exact_adj):.1e}, "
        f"forward {rel(tk_f, exact_fwd):.1e}"
    )


if __name__ == "__main__":
    main()

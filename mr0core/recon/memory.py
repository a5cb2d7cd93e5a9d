"""Peak memory of a reconstruction (:func:`mr0core.recon.reconstruct`), in bytes.

The model counts the allocations of each method over the sizes that drive them, and is checked
against measured peaks (``scripts/calibrate_estimate.py``). Symbols: ``N`` image voxels, ``N2``
of one slice or partition, ``K`` raw samples per coil, ``C`` coils, ``d`` encoded dimensions,
``taps`` the NUFFT's spreading-kernel taps per dimension (6 in 2-D, 4 in 3-D); complex64 (8
bytes)::

    fft     = 8 C (K + 4 N) + 4 N                            raw data; k-space and 3 FFT copies
    sense   = 8 C (K + 2 N) + 8 N2 (4 C² + 6 C) + 4 N         grids; Walsh covariances, CG
    nufft   = 8 C K + 40 K + 32 taps^d K + 8 · 2^d N · min(C, threads) + 16 C N
    adjoint = 8 C K + 40 K + 24 min(K, 2²³ / N) N + 8 C N

``auto`` (Cartesian data) is the larger of ``fft`` and ``sense``. A fresh process adds its
one-time costs (BLAS and OpenMP buffers, thread stacks: about 12 MB on the CPU), which are not
the reconstruction's and are not counted here.

Calibration (CPU, fresh process per case, peak RSS growth with the raw data; AMD EPYC, 2
threads, torch 2.13.0+cpu): measured / estimated (with the fixed process costs) median 0.97,
lowest 0.84, highest 1.12 over 9 cases (fft, sense, nufft, adjoint); rerun on an Intel Xeon (2
threads, the ``--quick`` set: fft, sense, nufft): 0.97 to 1.08.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .auto import METHODS

__all__ = ["estimate_recon_bytes"]

C64 = np.dtype(np.complex64).itemsize
"""Bytes of a complex64."""
F32 = np.dtype(np.float32).itemsize
"""Bytes of a float32."""

RECON_FFT_COPIES = 4.0
"""Coil grids ``[C, N]`` alive in the FFT recon: k-space, shifted copy, transform, shifted back."""
RECON_WALSH_COPIES = 4.0
"""Coil covariance arrays ``[C, C, N2]`` alive in the Walsh map estimate (per slice): the
products, their real/imaginary stack, its box filter, and the recombined matrices."""
RECON_CG_VECTORS = 6.0
"""Coil arrays ``[C, N2]`` alive in CG-SENSE: maps, data, ``S x``, its FFT, the adjoint."""
RECON_DCF_BYTES = 32
"""Per (sample, kernel tap): Pipe–Menon cell indices (int64), weights, the weighted spread and
the gathered density (float64)."""
RECON_SAMPLE_BYTES = 40
"""Per raw sample (NUFFT, adjoint): the trajectory ``[K, 4]`` float32, its float64 cells, the
density weights."""
RECON_ADJOINT_ELEMENT_BYTES = 2 * C64 + 2 * F32
"""Per (sample, voxel) of the adjoint DFT's chunk: phase, its float32 temporary, encoding
matrix and its conjugate product."""
RECON_ADJOINT_CHUNK = 1 << 23
"""Elements (samples × voxels) of the adjoint DFT's phase chunk (mirrors
``mr0core.recon.adjoint._CHUNK_ELEMENTS``; a test checks that they agree)."""


def _count(name: str, value: Any) -> int:
    """Return ``value`` if it is a positive int (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def _matrix(matrix: Any) -> tuple[int, int, int]:
    """Return ``(nx, ny, nz)`` of a 2- or 3-entry matrix of positive ints."""
    if isinstance(matrix, str | bytes) or not hasattr(matrix, "__len__"):
        raise ValueError(f"matrix must be [nx, ny] or [nx, ny, nz], got {matrix!r}")
    if not 2 <= len(matrix) <= 3:
        raise ValueError(f"matrix must be [nx, ny] or [nx, ny, nz], got {list(matrix)!r}")
    dims = [_count("matrix entry", v) for v in matrix]
    if len(dims) == 2:
        dims.append(1)
    return dims[0], dims[1], dims[2]


def estimate_recon_bytes(
    matrix: Any,
    coils: int = 1,
    method: str = "auto",
    *,
    samples: int | None = None,
    threads: int = 2,
) -> int:
    """Return the peak bytes of reconstructing one image of ``matrix`` from ``coils`` coils.

    Parameters
    ----------
    matrix
        ``(nx, ny)`` or ``(nx, ny, nz)`` image matrix (voxels).
    coils
        Receive coils.
    method
        One of :data:`mr0core.recon.auto.METHODS`: ``"fft"``, ``"sense"``, ``"nufft"``,
        ``"adjoint"``, or ``"auto"`` (the larger of fft and sense, which is what ``auto`` picks
        for Cartesian data).
    samples
        Raw samples per coil; default: the matrix (Cartesian), or ``π/2 ·`` the matrix for
        ``nufft``/``adjoint`` (a Nyquist-sampled radial acquisition).
    threads
        Threads of the NUFFT (its fine grids are batched over them).

    Returns
    -------
    int
        Bytes the reconstruction allocates at its peak, its raw data included (the module
        docstring's formula of ``method``).

    Raises
    ------
    ValueError
        For an unknown method, a malformed matrix, or a count that is not a positive integer.
    """
    dims = _matrix(matrix)
    _count("coils", coils)
    _count("threads", threads)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n_vox = math.prod(dims)
    d = 3 if dims[2] > 1 else 2
    if samples is None:
        samples = n_vox if method in ("auto", "fft", "sense") else math.ceil(math.pi / 2 * n_vox)
    _count("samples", samples)
    k, c, n = float(samples), float(coils), float(n_vox)
    n2 = float(dims[0] * dims[1])
    fft = C64 * c * (k + RECON_FFT_COPIES * n) + F32 * n
    sense = (
        C64 * c * (k + 2 * n)
        + C64 * n2 * (RECON_WALSH_COPIES * c * c + RECON_CG_VECTORS * c)
        + F32 * n
    )
    if method == "fft":
        body = fft
    elif method in ("sense", "auto"):
        body = max(fft, sense) if coils > 1 else fft
    elif method == "nufft":
        taps = (6 if d == 2 else 4) ** d
        fine = (2**d) * n  # finufft's 2x oversampled grid, batched over the threads
        body = (
            C64 * c * k + RECON_SAMPLE_BYTES * k + RECON_DCF_BYTES * k * taps
            + C64 * fine * min(c, threads) + 2 * C64 * c * n
        )  # fmt: skip
    else:  # adjoint: the phase matrix in chunks of samples
        chunk = min(k, max(1, RECON_ADJOINT_CHUNK // n_vox))
        body = C64 * c * k + RECON_SAMPLE_BYTES * k + RECON_ADJOINT_ELEMENT_BYTES * chunk * n
        body += C64 * c * n
    return int(body)

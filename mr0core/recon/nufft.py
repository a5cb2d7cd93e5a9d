"""Non-uniform FFT (NUFFT) reconstruction for arbitrary k-space trajectories.

Conventions (shared with the Cartesian FFT recon)
-------------------------------------------------
* k-space in 1/m (cycles per metre), as :meth:`mr0core.Sequence.get_kspace` returns it.
* The simulated signal is ``s(k) = Σ_r ρ(r) exp(-2πi k·r)``; the adjoint therefore uses
  ``exp(+2πi k·r)``.
* Image index ``i`` along an axis of ``n`` voxels sits at ``(i - n // 2) · fov / n``: the centre
  voxel ``n // 2`` is at the origin (like ``fftshift``).
* ``norm`` names, as in :mod:`torch.fft`, which direction carries the ``1 / N`` (``N`` voxels):
  ``"forward"`` (default, like :mod:`mr0core.recon.cartesian`): :func:`nufft_adjoint` is the
  plain sum and :func:`nufft_forward` divides by ``N``, so a fully sampled Cartesian trajectory
  with unit density compensation gives exactly
  ``fftshift(ifftn(ifftshift(kspace), norm="forward"))``, the Cartesian recon. ``"backward"``:
  the adjoint divides by ``N`` (``torch.fft.ifftn``'s default). ``"ortho"``: both by ``√N``,
  which makes the pair exact adjoints of each other.

Density compensation weights are in units of k-space cells ``Δk = 1 / fov`` per sample (a full
Cartesian grid has weight 1 everywhere), so that scaling carries over to non-Cartesian data.

Backend: finufft, chosen by measurement
---------------------------------------
``scripts/bench_nufft.py`` compared finufft 2.5.1 and torchkbnufft 1.5.2 on this project's
2-core CPU (Linux x86_64, torch 2.13.0+cpu, 2 threads): 2-D radial, 256 spokes × 256 samples,
8 coils, 128 × 128 image, complex64, median of 5 runs. Run 1 had the machine nearly to itself;
run 2 shared it with other jobs (load average ≈ 3.5 on 2 cores).

=====================  =================  =================  ===========================
library                adjoint (run 1/2)  forward (run 1/2)  rel. error vs. exact DFT
=====================  =================  =================  ===========================
finufft (eps 1e-6)     124 / 146 ms       129 / 134 ms       7e-6 (adjoint), 5e-6 (fwd)
torchkbnufft (6-pt)    242 / 1838 ms      283 / 684 ms       8e-4 (adjoint), 7e-4 (fwd)
=====================  =================  =================  ===========================

finufft is 2.0× (adjoint) and 2.2× (forward) faster on the quiet machine (12.6× and 5.1× under
load) and about 100× more accurate, so it is the backend (eps 1e-3 gains little: 118 ms).
Planning is cheap (an adjoint with its plan: 148 ms vs 124 ms), so plans are not cached;
transforms with fewer than 2¹⁶ points + modes run on one thread (OpenMP start-up dominates).
finufft works on host memory: tensors on another device are copied to the CPU for the transform
and the result is copied back to the input's device. Gradients flow through the transforms with
respect to the data / image (not the trajectory) via a :class:`torch.autograd.Function` whose
backward pass is the adjoint transform.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence as SequenceABC
from typing import Any

import numpy as np
import torch

__all__ = [
    "density_compensation",
    "nufft_adjoint",
    "nufft_forward",
    "reco_nufft",
]

_NORMS = ("forward", "backward", "ortho")


# --------------------------------------------------------------------------------------------
# input checks and conversion


def _matrix(matrix: SequenceABC[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(n) for n in matrix)
    except TypeError as err:
        raise TypeError(f"matrix must be a sequence of 2 or 3 ints, got {matrix!r}") from err
    if len(dims) not in (2, 3) or any(n < 1 for n in dims):
        raise ValueError(f"matrix must be (nx, ny) or (nx, ny, nz) with sizes >= 1, got {matrix}")
    return dims


def _fov(fov_m: Any, ndim: int) -> tuple[float, ...]:
    values = torch.as_tensor(fov_m, dtype=torch.float64).reshape(-1).tolist()
    if len(values) < ndim:
        raise ValueError(f"fov_m needs at least {ndim} entries (m), got {fov_m}")
    fov = tuple(float(v) for v in values[:ndim])
    if not all(math.isfinite(v) and v > 0 for v in fov):
        raise ValueError(f"fov_m must be positive and finite (m), got {fov_m}")
    return fov


def _check_kspace(kspace: torch.Tensor, ndim: int) -> None:
    if not isinstance(kspace, torch.Tensor):
        raise TypeError(f"kspace must be a torch.Tensor, got {type(kspace).__name__}")
    if kspace.dim() != 2 or kspace.shape[1] < ndim:
        raise ValueError(
            f"kspace must be [samples, >= {ndim}] (kx, ky[, kz] in 1/m), got {tuple(kspace.shape)}"
        )


def _encoded(matrix: tuple[int, ...]) -> tuple[int, ...]:
    """Axes that are really encoded: a trailing nz = 1 is a 2-D transform."""
    return matrix[:2] if len(matrix) == 3 and matrix[2] == 1 else matrix


def _radians(kspace: torch.Tensor, matrix: tuple[int, ...], fov: tuple[float, ...]) -> np.ndarray:
    """Trajectory as finufft points: ``x_d = 2π k_d fov_d / n_d``, wrapped into ``[-π, π)``.

    Wrapping is exact: the modes are integers, so ``exp(i m x)`` is 2π-periodic in ``x``.
    """
    k = kspace[:, : len(matrix)].detach().to("cpu", torch.float64)
    scale = torch.tensor([2 * math.pi * f / n for f, n in zip(fov, matrix, strict=True)])
    x = torch.remainder(k * scale + math.pi, 2 * math.pi) - math.pi
    if not bool(torch.isfinite(x).all()):
        raise ValueError("kspace contains non-finite values")
    return x.T.contiguous().numpy()


def _real_dtype(dtype: torch.dtype) -> np.dtype:
    return np.dtype(np.float64 if dtype == torch.complex128 else np.float32)


# --------------------------------------------------------------------------------------------
# finufft execution, with autograd


_SMALL_WORK = 1 << 16
"""Below this many points + modes (over all coils) finufft runs on one thread: OpenMP start-up
costs more than a small transform (~40 ms vs ~2 ms measured for 30 samples on 2 cores)."""


def _threads(work: int) -> int:
    return 1 if work < _SMALL_WORK else torch.get_num_threads()


def _execute(
    kind: int, values: torch.Tensor, points: np.ndarray, n_modes: tuple[int, ...], eps: float
) -> torch.Tensor:
    """Run a finufft type-1 (``isign=+1``) or type-2 (``isign=-1``) transform on ``[batch, ...]``.

    ``values``: type 1 ``[batch, samples]``, type 2 ``[batch, *n_modes]``; result on the same
    device and dtype as ``values``.
    """
    import finufft

    batch = values.shape[0]
    cdtype = values.dtype
    fdtype = _real_dtype(cdtype)
    pts = [np.ascontiguousarray(p, dtype=fdtype) for p in points]
    plan = finufft.Plan(
        kind,
        n_modes,
        n_trans=batch,
        eps=max(eps, 1e-6 if fdtype == np.float32 else 1e-14),
        isign=1 if kind == 1 else -1,
        dtype="complex128" if fdtype == np.float64 else "complex64",
        modeord=0,
        nthreads=_threads(batch * (pts[0].shape[0] + math.prod(n_modes))),
    )
    plan.setpts(*pts)
    arr = np.ascontiguousarray(values.detach().to("cpu").resolve_conj().numpy())
    if batch == 1:
        arr = arr[0]
    out = plan.execute(arr)
    out_shape = (batch, *n_modes) if kind == 1 else (batch, pts[0].shape[0])
    return torch.from_numpy(np.asarray(out).reshape(out_shape)).to(values.device, cdtype)


class _Nufft(torch.autograd.Function):
    """Linear NUFFT with the adjoint transform as its backward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        kind: int,
        points: np.ndarray,
        n_modes: tuple[int, ...],
        eps: float,
    ) -> torch.Tensor:
        ctx.kind, ctx.points, ctx.n_modes, ctx.eps = kind, points, n_modes, eps
        return _execute(kind, values, points, n_modes, eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_values = None
        if ctx.needs_input_grad[0]:
            grad_values = _execute(
                3 - ctx.kind, grad.contiguous(), ctx.points, ctx.n_modes, ctx.eps
            )
        return grad_values, None, None, None, None


def _complex(t: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        return t
    return t.to(torch.complex128 if t.dtype == torch.float64 else torch.complex64)


def _norm_scale(norm: str, n_vox: int, adjoint: bool) -> float:
    if norm == "forward":
        return 1.0 if adjoint else 1.0 / n_vox
    if norm == "backward":
        return 1.0 / n_vox if adjoint else 1.0
    if norm == "ortho":
        return 1.0 / math.sqrt(n_vox)
    raise ValueError(f"norm must be one of {_NORMS}, got {norm!r}")


# --------------------------------------------------------------------------------------------
# public transforms


def nufft_adjoint(
    data: torch.Tensor,
    kspace: torch.Tensor,
    matrix: SequenceABC[int],
    fov_m: Any,
    dcf: torch.Tensor | None = None,
    *,
    norm: str = "forward",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Adjoint NUFFT (gridding): non-uniform k-space samples to a Cartesian image.

    ``image[c, r] = scale · Σ_j dcf_j · data[c, j] · exp(+2πi k_j · r)`` with ``r`` on the grid
    ``(i - n // 2) · fov / n`` and ``scale = 1`` (``norm="forward"``), ``1 / N``
    (``"backward"``) or ``1 / √N`` (``"ortho"``).

    Parameters
    ----------
    data
        ``[coils, samples]`` complex k-space data.
    kspace
        ``[samples, >= d]`` trajectory (kx, ky[, kz], ...) in 1/m; extra columns (τ) are ignored.
    matrix
        ``(nx, ny)`` or ``(nx, ny, nz)`` image size; ``d = len(matrix)``. A trailing ``nz = 1``
        is reconstructed as 2-D (kz ignored).
    fov_m
        Field of view ``(x, y[, z])`` in m (extra entries are ignored).
    dcf
        ``[samples]`` density compensation weights (k-space cells per sample, see
        :func:`density_compensation`), or None for no weighting.
    norm
        ``"forward"``, ``"backward"`` or ``"ortho"``, see the module docstring.
    eps
        Requested relative accuracy of finufft (at least 1e-6 in single precision).

    Returns
    -------
    torch.Tensor
        ``[coils, nx, ny(, nz)]`` complex image on ``data``'s device and dtype.
    """
    dims = _matrix(matrix)
    data = _complex(data, "data")
    if data.dim() != 2:
        raise ValueError(f"data must be [coils, samples], got {tuple(data.shape)}")
    _check_kspace(kspace, len(_encoded(dims)))
    if kspace.shape[0] != data.shape[1]:
        raise ValueError(f"data has {data.shape[1]} samples but kspace has {kspace.shape[0]} rows")
    enc = _encoded(dims)
    fov = _fov(fov_m, len(enc))
    if dcf is not None:
        if not isinstance(dcf, torch.Tensor) or dcf.shape != (data.shape[1],):
            shape = tuple(dcf.shape) if isinstance(dcf, torch.Tensor) else type(dcf).__name__
            raise ValueError(f"dcf must be a [{data.shape[1]}] tensor, got {shape}")
        data = data * dcf.to(data.device, data.real.dtype)
    points = _radians(kspace, enc, fov)
    # torch.autograd.Function.apply is unannotated upstream
    image = _Nufft.apply(data.contiguous(), 1, points, enc, float(eps))  # type: ignore[no-untyped-call]
    image = image * _norm_scale(norm, math.prod(dims), adjoint=True)
    result: torch.Tensor = image.reshape(data.shape[0], *dims)
    return result


def nufft_forward(
    image: torch.Tensor,
    kspace: torch.Tensor,
    fov_m: Any,
    *,
    norm: str = "forward",
    eps: float = 1e-6,
) -> torch.Tensor:
    """Forward NUFFT: Cartesian image to non-uniform k-space samples.

    ``data[c, j] = scale · Σ_r image[c, r] · exp(-2πi k_j · r)``, the signal equation of the
    simulator, with ``scale = 1 / N`` (``norm="forward"``), ``1`` (``"backward"``) or ``1 / √N``
    (``"ortho"``).

    Parameters
    ----------
    image
        ``[coils, nx, ny]`` or ``[coils, nx, ny, nz]`` complex image (grid as in
        :func:`nufft_adjoint`).
    kspace
        ``[samples, >= d]`` trajectory in 1/m.
    fov_m
        Field of view ``(x, y[, z])`` in m.
    norm
        ``"forward"``, ``"backward"`` or ``"ortho"``.
    eps
        Requested relative accuracy of finufft.

    Returns
    -------
    torch.Tensor
        ``[coils, samples]`` complex data on ``image``'s device and dtype.
    """
    image = _complex(image, "image")
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be [coils, nx, ny(, nz)], got {tuple(image.shape)}")
    dims = tuple(image.shape[1:])
    enc = _encoded(dims)
    _check_kspace(kspace, len(enc))
    fov = _fov(fov_m, len(enc))
    points = _radians(kspace, enc, fov)
    values = image.reshape(image.shape[0], *enc).contiguous()
    # torch.autograd.Function.apply is unannotated upstream
    data = _Nufft.apply(values, 2, points, enc, float(eps))  # type: ignore[no-untyped-call]
    result: torch.Tensor = data * _norm_scale(norm, math.prod(dims), adjoint=False)
    return result


# --------------------------------------------------------------------------------------------
# density compensation


def _kaiser_bessel(u: torch.Tensor, width: float, beta: float) -> torch.Tensor:
    """Kaiser–Bessel window of total ``width`` (grid cells) at offsets ``u``."""
    arg = 1 - (2 * u / width) ** 2
    inside = arg > 0
    val = torch.special.i0(beta * torch.sqrt(torch.clamp(arg, min=0)))
    return torch.where(inside, val, torch.zeros_like(val))


@functools.lru_cache(maxsize=8)
def _lattice_density(width: int, oversampling: float, beta: float) -> float:
    """Return the density a unit-weight Cartesian lattice has under the Pipe operator, per axis.

    ``Σ_m φ(m - s) Σ_j φ(m - s - σ j)`` for one sample per k-space cell, averaged over the
    lattice's offset ``s`` to the fine grid.
    """
    m = torch.arange(-4 * width, 4 * width + 1, dtype=torch.float64)
    j = torch.arange(-4 * width, 4 * width + 1, dtype=torch.float64)
    total = 0.0
    offsets = torch.arange(32, dtype=torch.float64) / 32
    for s in offsets:
        inner = _kaiser_bessel(m[:, None] - s - oversampling * j[None, :], width, beta).sum(1)
        total += float((_kaiser_bessel(m - s, width, beta) * inner).sum())
    return total / len(offsets)


def _pipe_menon(coords: torch.Tensor, n_iter: int, oversampling: float = 2.0) -> torch.Tensor:
    """Pipe & Menon (1999) iterative weights for ``coords [samples, d]`` in k-space cells.

    Each iteration divides the weights by their density ``(w * C)(k_j)``, computed by spreading
    onto an ``oversampling``-times finer grid with a Kaiser–Bessel kernel ``φ`` (6 fine cells
    wide in 2-D, 4 in 3-D) and interpolating back with ``φ`` (so ``C = φ ⋆ φ``, non-negative).
    The result is scaled by the density that a unit-weight Cartesian lattice (one sample per
    cell) has under the same operator, so the weights are in k-space cells per sample; the
    kernel's discretisation leaves a ripple of about ±1 % (2-D) / ±7 % (3-D) with the sample
    positions' offset to the fine grid.
    """
    device, dtype = coords.device, coords.dtype
    d = coords.shape[1]
    width = 6 if d == 2 else 4
    beta = math.pi * math.sqrt((width / oversampling) ** 2 * (oversampling - 0.5) ** 2 - 0.8)
    u = coords * oversampling  # fine-grid units
    lo = torch.floor(u.min(dim=0).values) - width
    u = u - lo
    grid_shape = (torch.ceil(u.max(dim=0).values).long() + width + 1).tolist()
    strides = [math.prod(grid_shape[i + 1 :]) for i in range(d)]
    base = torch.floor(u - width / 2).long() + 1  # first cell touched per dim
    taps = []  # per dim: list of (index [M], weight [M])
    for axis in range(d):
        per_axis = []
        for o in range(width):
            idx = base[:, axis] + o
            per_axis.append((idx, _kaiser_bessel(idx.to(dtype) - u[:, axis], width, beta)))
        taps.append(per_axis)
    offsets = torch.cartesian_prod(*[torch.arange(width)] * d).reshape(-1, d).tolist()
    # [samples, width^d] fine-grid cells touched by each sample, and the kernel weights
    flat_idx = torch.zeros(coords.shape[0], len(offsets), dtype=torch.long, device=device)
    flat_wt = torch.ones(coords.shape[0], len(offsets), dtype=dtype, device=device)
    for n_off, off in enumerate(offsets):
        for axis, o in enumerate(off):
            i_ax, w_ax = taps[axis][o]
            flat_idx[:, n_off] += i_ax * strides[axis]
            flat_wt[:, n_off] *= w_ax
    cells, weights = flat_idx.reshape(-1), flat_wt.reshape(-1)
    grid = torch.zeros(math.prod(grid_shape), dtype=dtype, device=device)
    w = torch.ones(coords.shape[0], dtype=dtype, device=device)
    for _ in range(n_iter):
        grid.zero_()
        grid.index_add_(0, cells, (w[:, None] * flat_wt).reshape(-1))  # spread
        density = torch.sum((grid[cells] * weights).reshape(flat_wt.shape), dim=1)  # interpolate
        w = w / torch.clamp(density, min=torch.finfo(dtype).tiny)
    return w * _lattice_density(width, oversampling, beta) ** d


def density_compensation(
    kspace: torch.Tensor,
    matrix: SequenceABC[int],
    fov_m: Any,
    method: str = "pipe",
    n_iter: int = 20,
) -> torch.Tensor:
    """Density compensation weights for a non-Cartesian trajectory.

    Weights are in k-space cells (``Δk = 1 / fov`` per axis) per sample: a fully sampled
    Cartesian grid gets 1, so ``nufft_adjoint(..., dcf=w)`` keeps the FFT recon's scale.

    Parameters
    ----------
    kspace
        ``[samples, >= d]`` trajectory in 1/m, ``d`` the encoded dimensions of ``matrix``.
    matrix
        ``(nx, ny[, nz])``; only its dimensionality matters (a trailing 1 means 2-D).
    fov_m
        Field of view ``(x, y[, z])`` in m: sets the k-space cell.
    method
        ``"pipe"``: Pipe & Menon (1999) fixed-point iteration ``w ← w / (w * C)`` with a
        non-negative gridding kernel ``C`` (any trajectory). ``"radial"``: the analytic ramp for
        centre-out or centre-through radial / 3-D radial trajectories, ``w ∝ |k|^{d-1}``
        (floored at a quarter of the median sample spacing ``δ``), scaled so that the weights
        add up to the area (volume) of the disc (ball) of radius ``max |k| + δ / 2`` in cells.
    n_iter
        Iterations of the Pipe–Menon method.

    Returns
    -------
    torch.Tensor
        ``[samples]`` real weights, on ``kspace``'s device (float32 unless kspace is float64).
    """
    dims = _encoded(_matrix(matrix))
    d = len(dims)
    _check_kspace(kspace, d)
    fov = _fov(fov_m, d)
    dtype = torch.float64 if kspace.dtype == torch.float64 else torch.float32
    cells = kspace[:, :d].detach().to(torch.float64) * torch.tensor(
        fov, dtype=torch.float64, device=kspace.device
    )
    if not bool(torch.isfinite(cells).all()):
        raise ValueError("kspace contains non-finite values")
    if method == "pipe":
        if n_iter < 1:
            raise ValueError(f"n_iter must be >= 1, got {n_iter}")
        return _pipe_menon(cells, n_iter).to(dtype)
    if method == "radial":
        radius = torch.linalg.vector_norm(cells, dim=1)
        steps = torch.linalg.vector_norm(torch.diff(cells, dim=0), dim=1)
        steps = steps[steps > 0]
        step = float(steps.median()) if steps.numel() else 1.0
        w = torch.clamp(radius, min=0.25 * step) ** (d - 1)
        kmax = float(radius.max()) + 0.5 * step
        total = math.pi * kmax**2 if d == 2 else 4.0 / 3.0 * math.pi * kmax**3
        return (w * (total / float(w.sum()))).to(dtype)
    raise ValueError(f"method must be 'pipe' or 'radial', got {method!r}")


# --------------------------------------------------------------------------------------------
# reconstruction


def reco_nufft(
    signal: torch.Tensor,
    kspace: torch.Tensor,
    matrix: SequenceABC[int],
    fov_m: Any,
    coil_combine: str | torch.Tensor = "rss",
    dcf: str | torch.Tensor | None = "pipe",
    *,
    norm: str = "forward",
) -> torch.Tensor:
    """Reconstruct simulated or measured non-Cartesian data with a density-compensated NUFFT.

    Parameters
    ----------
    signal
        ``[samples, coils]`` complex signal (as :func:`mr0core.util.simulate` returns it).
    kspace
        ``[samples, 4]`` (kx, ky, kz in 1/m, τ in s) from :meth:`Sequence.get_kspace`.
    matrix
        ``(nx, ny)`` for a 2-D image or ``(nx, ny, nz)``.
    fov_m
        Field of view ``(x, y, z)`` in m, e.g. from the sequence's ``FOV`` definition. The image
        grid follows the shared convention: voxel ``i`` at ``(i - n // 2) · fov / n``.
    coil_combine
        ``"rss"`` (real magnitude), ``"adaptive"`` (Walsh, complex), ``"none"`` (keep the coils)
        or a ``[coils, nx, ny(, nz)]`` sensitivity tensor: ``Σ conj(S) I / Σ |S|²`` (complex).
    dcf
        ``"pipe"`` (default), ``"radial"`` (see :func:`density_compensation`), a ``[samples]``
        weight tensor, or None (no compensation).
    norm
        ``"forward"`` (default: the Cartesian recon's unnormalised sum), ``"backward"`` or
        ``"ortho"``, see the module docstring.

    Returns
    -------
    torch.Tensor
        ``[nx, ny, nz]`` image (``nz = 1`` for 2-D), or ``[coils, nx, ny, nz]`` with
        ``coil_combine="none"``, on ``signal``'s device.
    """
    from .coils import adaptive_combine, rss

    dims = _matrix(matrix)
    signal = _complex(signal, "signal")
    if signal.dim() == 1:
        signal = signal[:, None]
    if signal.dim() != 2:
        raise ValueError(f"signal must be [samples, coils], got {tuple(signal.shape)}")
    if isinstance(dcf, str):
        weights: torch.Tensor | None = density_compensation(kspace, dims, fov_m, method=dcf)
    else:
        weights = dcf
    coil_images = nufft_adjoint(signal.T, kspace, dims, fov_m, weights, norm=norm)
    if len(dims) == 2:
        coil_images = coil_images[..., None]
    if isinstance(coil_combine, torch.Tensor):
        sens = coil_combine.to(coil_images.device, coil_images.dtype)
        if len(dims) == 2 and sens.dim() == 3:
            sens = sens[..., None]
        if sens.shape != coil_images.shape:
            raise ValueError(
                f"sensitivities must be {tuple(coil_images.shape)}, got {tuple(sens.shape)}"
            )
        return adaptive_combine(coil_images, sens)
    if coil_combine == "rss":
        return rss(coil_images, dim=0)
    if coil_combine == "adaptive":
        return adaptive_combine(coil_images)
    if coil_combine == "none":
        return coil_images
    raise ValueError(
        f"coil_combine must be 'rss', 'adaptive', 'none' or a tensor, got {coil_combine!r}"
    )

"""The main pass's per-repetition state update on CPU, compiled with numba.

:func:`propagate` does for one repetition what the torch fast path of
:func:`mr0core.sim.pdg.execute_graph` does: the active states and their parents' rows, every edge
``child += coefficient · (parent or its conjugate)``, a copy of the emitting transverse states
(for the signal, which needs them before relaxation), then relaxation, diffusion and T1
recovery to the end of the repetition. It exists for speed only: at 48² a FLASH repetition
simulates a few dozen states over a few thousand voxels, so the torch version's two dozen
operations of a few microseconds of dispatch each, not their arithmetic, were most of the
main pass; this is one call. Why our own code and not a library: the state update is the
simulator's own algorithm; numba is the library that compiles it.

The torch path is the definition (it also runs on GPUs and with autograd; with motion, the
states' carried motion phase is applied after this call):
``tests/mr0core/sim/test_mainpass_kernel.py`` checks that both give the same signal on the
benchmark suite's sequence classes. They round differently in one place: the torch path
relaxes by ``exp(-(b D + t/T2))``, this by ``exp(-t/T2) · exp(-b D)`` with the second factor
computed once per (state, distinct D) in float64 (a tissue phantom has a few distinct D).

Importing this module imports numba; ``pdg`` imports it on first use. The first call compiles
the kernel (seconds) unless numba's on-disk cache already holds it; :func:`warm_up` fills it.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_TILE_COLUMNS = 1024
"""State columns per tile of :func:`propagate` (whole voxels): 1024 complex64 columns of a few
dozen result rows fit a core's L2 cache."""


@njit(cache=True, inline="always")
def _rule(kind: int) -> tuple[int, bool]:
    """Return an edge kind's coefficient row and whether the parent enters conjugated.

    As ``pdg._EDGE_RULES`` (kinds 0..6: rows 0, 1, 2, 2, 3, 4, 5; kinds 1, 3 and 6 conjugate).
    Arithmetic rather than a global table: numba unpickles cached global arrays on every call.
    """
    return kind - (1 if kind >= 3 else 0), kind == 1 or kind == 3 or kind == 6


@njit(cache=True)
def propagate(
    state: np.ndarray,
    base: np.ndarray,
    factors: np.ndarray,
    e_child: np.ndarray,
    e_parent: np.ndarray,
    e_kind: np.ndarray,
    act_p: np.ndarray,
    act_z: np.ndarray,
    n_plus: int,
    n_z: int,
    p_active: np.ndarray,
    z_active: np.ndarray,
    emit: np.ndarray,
    relax: bool,
    b_values: np.ndarray,
    decay_p: np.ndarray,
    decay_z: np.ndarray,
    recovery: np.ndarray,
    d_index: np.ndarray,
    d_values: np.ndarray,
    n_sub: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return one repetition's relaxed states ``[A, S]`` and its emitting states ``[E, S]``.

    Parameters (S = voxels · ``n_sub`` state columns, Vv = voxels)
    ----------
    state
        complex64 ``[Pp + Pz, S]``: the previous repetition's states, transverse rows first.
    base, factors
        complex64 ``[6, S]`` edge coefficients at pulse phase 0 and complex128 ``[6]`` the
        pulse phase's factor per row (``pdg._phased``); row ``r``'s coefficient is their product.
    e_child, e_parent, e_kind
        int64 ``[edges]`` from ``pdg._edge_arrays``: the child (transverse states first, then
        longitudinal after ``n_plus``), ``parent · 4 + block`` (blocks 0, 1: transverse
        parents, 2, 3: longitudinal) and the edge kind 0..6.
    act_p, act_z
        int64: the repetition's simulated transverse and longitudinal states (graph indices);
        they become rows ``0..len(act_p)`` and the following ``len(act_z)`` of the result.
    n_plus, n_z
        The repetition's state counts in the graph.
    p_active, z_active
        int64: the previous repetition's simulated states, the rows of ``state`` in order.
    emit
        int64: the rows (of the transverse result) whose values before relaxation are returned.
    relax
        False for a repetition without events (no relaxation).
    b_values
        float64 ``[A]``: each result row's diffusion b-value (s/m²) over the repetition.
    decay_p, decay_z, recovery
        float32 ``[Vv]``: ``exp(-t/T2)``, ``exp(-t/T1)`` and ``1 - exp(-t/T1)`` for the
        repetition's duration ``t``; the recovery enters the first longitudinal row (k = 0).
    d_index, d_values
        int64 ``[Vv]`` and float64 ``[G]``: each voxel's diffusion coefficient (m²/s) as an
        index into its distinct values.
    n_sub
        State columns per voxel (sub-slices, adjacent).
    """
    n_cols = state.shape[1]
    n_ap = act_p.shape[0]
    n_new = n_ap + act_z.shape[0]
    child_map = np.full(n_plus + n_z, -1, np.int64)
    for i in range(n_ap):
        child_map[act_p[i]] = i
    for i in range(act_z.shape[0]):
        child_map[n_plus + act_z[i]] = n_ap + i
    n_prev = 1
    for j in range(e_parent.shape[0]):
        n_prev = max(n_prev, e_parent[j] // 4 + 1)
    for i in range(p_active.shape[0]):
        n_prev = max(n_prev, p_active[i] + 1)
    for i in range(z_active.shape[0]):
        n_prev = max(n_prev, z_active[i] + 1)
    prev_p = np.full(n_prev, -1, np.int64)
    prev_z = np.full(n_prev, -1, np.int64)
    for i in range(p_active.shape[0]):
        prev_p[p_active[i]] = i
    for i in range(z_active.shape[0]):
        prev_z[z_active[i]] = p_active.shape[0] + i
    # the edges that count, as (result row, state row, coefficient row, conjugated), grouped
    # by result row; the grouping is stable, so each row sums its edges in the graph's order
    n_edges = e_child.shape[0]
    e_row = np.empty(n_edges, np.int64)
    e_src = np.empty(n_edges, np.int64)
    e_coef = np.empty(n_edges, np.int64)
    e_conj = np.empty(n_edges, np.bool_)
    n_e = 0
    for j in range(n_edges):
        ci = child_map[e_child[j]]
        parent, block = e_parent[j] // 4, e_parent[j] % 4
        pi = prev_p[parent] if block < 2 else prev_z[parent]
        if ci < 0 or pi < 0:
            continue
        row, conjugate = _rule(e_kind[j])
        e_row[n_e], e_src[n_e], e_coef[n_e], e_conj[n_e] = ci, pi, row, conjugate
        n_e += 1
    by_row = np.argsort(e_row[:n_e], kind="mergesort")
    row_start = np.zeros(n_new + 1, np.int64)
    for e in range(n_e):
        row_start[e_row[e] + 1] += 1
    for i in range(n_new):
        row_start[i + 1] += row_start[i]
    # diffusion per (result row, distinct D)
    n_vox = decay_p.shape[0]
    n_d = d_values.shape[0]
    diff = np.empty((n_new, n_d), np.float32)
    for i in range(n_new):
        for g in range(n_d):
            diff[i, g] = np.float32(math.exp(-b_values[i] * d_values[g]))
    # Column tiles of whole voxels: a tile's coefficients, results and relaxation stay in cache
    # (the states of a shaped pulse's sub-slices span megabytes; one pass per edge over
    # whole rows was bound by memory)
    tile_v = max(1, _TILE_COLUMNS // n_sub)
    width = tile_v * n_sub
    coef = np.empty((6, width), np.complex64)
    decay_p_col = np.empty(width, np.float32)
    decay_z_col = np.empty(width, np.float32)
    d_col = np.empty(width, np.int64)
    f_col = np.empty(width, np.float32)
    new = np.empty((n_new, n_cols), np.complex64)
    emitted = np.empty((emit.shape[0], n_cols), np.complex64)
    flat = new.view(np.float32)  # [n_new, 2 S]: real and imaginary parts (vectorises)
    for v0 in range(0, n_vox, tile_v):
        v1 = min(n_vox, v0 + tile_v)
        c0, c1 = v0 * n_sub, v1 * n_sub
        w = c1 - c0
        for r in range(6):
            f = np.complex64(factors[r])
            base_r, coef_r = base[r, c0:c1], coef[r]
            for c in range(w):
                coef_r[c] = base_r[c] * f
        for i in range(n_new):
            out = new[i, c0:c1]
            for c in range(w):
                out[c] = 0
            for k in range(row_start[i], row_start[i + 1]):
                e = by_row[k]
                a, x = coef[e_coef[e]], state[e_src[e], c0:c1]
                if e_conj[e]:
                    for c in range(w):
                        out[c] += a[c] * np.conj(x[c])
                else:
                    for c in range(w):
                        out[c] += a[c] * x[c]
        for i in range(emit.shape[0]):
            src, dst = new[emit[i], c0:c1], emitted[i, c0:c1]
            for c in range(w):
                dst[c] = src[c]
        if not relax:
            continue
        for v in range(v1 - v0):
            for s in range(n_sub):
                c = v * n_sub + s
                decay_p_col[c] = decay_p[v0 + v]
                decay_z_col[c] = decay_z[v0 + v]
                d_col[c] = d_index[v0 + v]
        for i in range(n_new):
            decay, diff_i = (decay_p_col if i < n_ap else decay_z_col), diff[i]
            for c in range(w):
                f_col[c] = decay[c] * diff_i[d_col[c]]
            row_f = flat[i, 2 * c0 : 2 * c1]
            for c in range(w):
                row_f[2 * c] *= f_col[c]
                row_f[2 * c + 1] *= f_col[c]
        if act_z.shape[0]:
            for v in range(v0, v1):
                for s in range(n_sub):
                    new[n_ap, v * n_sub + s] += recovery[v]
    return new, emitted


@njit(cache=True)
def gather_k(
    kind_parent: np.ndarray, p_k: np.ndarray, p_tau: np.ndarray, z_k: np.ndarray,
    z_tau: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Return k ``[n, 3]`` (1/m) and τ ``[n]`` (s) of new states from their defining edges.

    As ``pdg._gather_k_np`` (exactly: a gather and a sign). ``kind_parent [n, 2]``: the defining
    edge's kind and the parent's index in ``p_*`` (transverse) or ``z_*`` (longitudinal); kind
    -1 (the relaxed longitudinal state without an edge): k = 0, τ = 0.
    """
    n = kind_parent.shape[0]
    k = np.zeros((n, 3))
    tau = np.zeros(n)
    for i in range(n):
        kind, j = kind_parent[i, 0], kind_parent[i, 1]
        if kind < 0:
            continue
        sign = -1.0 if kind == 1 or kind == 3 or kind == 6 else 1.0
        if kind == 0 or kind == 1 or kind == 5 or kind == 6:
            for a in range(3):
                k[i, a] = sign * p_k[j, a]
            tau[i] = sign * p_tau[j]
        else:
            for a in range(3):
                k[i, a] = sign * z_k[j, a]
            tau[i] = sign * z_tau[j]
    return k, tau


@njit(cache=True)
def event_sums(
    dt: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return a repetition's running sums over its events ``dt [E]`` (s), ``g [E, 3]`` (1/m).

    ``k [E, 3]`` (the gradient moment at each event's end), ``t [E]``, and the b-value's linear
    ``[E, 3]`` and constant ``[E]`` parts: ``Σ dt (2 k_prev + g)`` and ``Σ dt (k_prev² + k_prev·g
    + g²/3)``, as ``pdg.execute_graph``'s numpy path computes them.
    """
    n = dt.shape[0]
    kcum = np.empty((n, 3))
    tcum = np.empty(n)
    lin = np.empty((n, 3))
    const = np.empty(n)
    t = 0.0
    c = 0.0
    run_k = np.zeros(3)
    run_l = np.zeros(3)
    for e in range(n):
        sq = 0.0
        cross = 0.0
        gg = 0.0
        for a in range(3):
            run_k[a] += g[e, a]
            kcum[e, a] = run_k[a]
            kprev = run_k[a] - g[e, a]
            run_l[a] += dt[e] * (2 * kprev + g[e, a])
            lin[e, a] = run_l[a]
            sq += kprev**2
            cross += kprev * g[e, a]
            gg += g[e, a] ** 2
        t += dt[e]
        tcum[e] = t
        c += dt[e] * (sq + cross + gg / 3)
        const[e] = c
    return kcum, tcum, lin, const


def warm_up() -> None:
    """Compile :func:`propagate` for the types the main pass passes, and write numba's cache.

    ``scripts/setup.sh`` and the Docker images run this (``python -m
    mr0core.sim.mainpass_kernel``) so that no simulation pays the compilation.
    """
    c64, i64, f32 = np.complex64, np.int64, np.float32
    zero = np.zeros(1, i64)
    propagate(np.ones((1, 1), c64), np.ones((6, 1), c64), np.ones(6, np.complex128), zero,
              np.full(1, 2, i64), np.full(1, 4, i64), zero, zero, 1, 1, zero, zero, zero, True,
              np.zeros(2), np.ones(1, f32), np.ones(1, f32), np.zeros(1, f32), zero,
              np.zeros(1), 1)  # fmt: skip
    f64 = np.zeros((1, 3))
    gather_k(np.zeros((1, 2), i64), f64, np.zeros(1), f64, np.zeros(1))
    event_sums(np.zeros(1), f64)


if __name__ == "__main__":
    warm_up()

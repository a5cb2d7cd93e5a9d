"""The pre-pass's per-repetition state transition, compiled with numba.

:func:`transition` does for one repetition what ``graph._transition_numpy`` does with numpy (the
candidate children of a pulse, their merge by quantised (k, τ), the selection of the strongest,
the edges in the kept states' indices and each state's defining parent) and returns the same
arrays. It exists for speed only: at 48² the numpy version made about 60 calls on arrays of a few
hundred states per repetition, each a few microseconds of call overhead, and was a third of a
FLASH simulation's time; this is one call. Why our own code and not a library: the transition is
the simulator's own algorithm; numba is the library that compiles it.

The numpy version is the definition: ``tests/mr0core/sim/test_prepass_kernel.py`` checks that
both give identical graphs (same states, edges and magnitudes, bit for bit) on the benchmark suite.
To be identical, the sums of merged states follow numpy's ``add.reduceat`` association (its
pairwise summation, see :func:`_group_sum`), the sorts are stable, and complex coefficients come
in precomputed as numpy computes them.

Importing this module imports numba (about 0.3 s); ``graph`` imports it on first use. The first
call compiles the kernels (seconds) unless numba's on-disk cache (``cache=True``, beside this file
or in the user's cache directory) already holds them.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

K_QUANTUM = 1e-3  # 1/m, as graph.K_QUANTUM
TAU_QUANTUM = 1e-8  # s, as graph.TAU_QUANTUM
N_KINDS = 7  # edge kinds 0..6, as graph.PLUS_FROM_PLUS .. graph.Z_FROM_PLUS_CONJ


@njit(cache=True)
def _keys(k: np.ndarray, tau: np.ndarray) -> np.ndarray:
    n = tau.shape[0]
    q = np.empty((n, 4), np.int64)
    for i in range(n):
        for j in range(3):
            q[i, j] = np.int64(np.rint(k[i, j] / K_QUANTUM))
        q[i, 3] = np.int64(np.rint(tau[i] / TAU_QUANTUM))
    return q


@njit(cache=True)
def _lex_order(q: np.ndarray) -> np.ndarray:
    """Return the stable lexicographic order of the rows of ``q [n, 4]``.

    As ``np.lexsort(q.T[::-1])``: equal rows keep their order.
    """
    n = q.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    lo = np.empty(4, np.int64)
    span = np.empty(4, np.int64)
    prod = 1.0
    for j in range(4):
        lo[j] = q[:, j].min()
        span[j] = q[:, j].max() - lo[j] + 1
        prod *= float(span[j])
    if prod < 2.0**61:  # one packed mixed-radix key keeps the order
        key = np.empty(n, np.int64)
        for i in range(n):
            v = q[i, 0] - lo[0]
            for j in range(1, 4):
                v = v * span[j] + (q[i, j] - lo[j])
            key[i] = v
        return np.argsort(key, kind="mergesort")
    order = np.arange(n)
    for j in range(3, -1, -1):  # least significant column first, each sort stable
        col = np.empty(n, np.int64)
        for i in range(n):
            col[i] = q[order[i], j]
        order = order[np.argsort(col, kind="mergesort")]
    return order


@njit(cache=True)
def _group_sum(mag: np.ndarray, rows: np.ndarray, lo: int, hi: int, c: int) -> complex:
    """Return ``mag[rows[lo:hi], c]`` summed as numpy's ``add.reduceat`` does.

    reduceat takes the first element and adds the pairwise sum of the rest, which for fewer than
    four complex numbers runs from -0.0 in order, and otherwise in four interleaved partial sums
    (numpy's ``pairwise_sum`` for complex, blocks up to 64 elements; larger groups fall back to a
    plain running sum, which never occurs at the pre-pass's state counts without merging far more
    than 64 candidates into one node).
    """
    first: complex = mag[rows[lo], c]
    m = hi - lo - 1
    if m <= 0:
        return first
    if m < 4:
        acc = complex(-0.0, -0.0)
        for i in range(lo + 1, hi):
            acc += mag[rows[i], c]
        return first + acc
    if m <= 64:
        b = lo + 1
        r0 = mag[rows[b], c]
        r1 = mag[rows[b + 1], c]
        r2 = mag[rows[b + 2], c]
        r3 = mag[rows[b + 3], c]
        i = 4
        while i < m - (m % 4):
            r0 += mag[rows[b + i], c]
            r1 += mag[rows[b + i + 1], c]
            r2 += mag[rows[b + i + 2], c]
            r3 += mag[rows[b + i + 3], c]
            i += 4
        re = (r0.real + r1.real) + (r2.real + r3.real)
        im = (r0.imag + r1.imag) + (r2.imag + r3.imag)
        while i < m:
            v = mag[rows[b + i], c]
            re += v.real
            im += v.imag
            i += 1
        return first + complex(re, im)
    total: complex = first
    for i in range(lo + 1, hi):
        total += mag[rows[i], c]
    return total


@njit(cache=True)
def _merge(
    k: np.ndarray, tau: np.ndarray, mag: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge equal quantised (k, τ): unique k, τ, summed magnitudes, inverse (as graph._merge)."""
    n = tau.shape[0]
    ncol = mag.shape[1]
    q = _keys(k, tau)
    order = _lex_order(q)
    inverse = np.empty(n, np.int64)
    starts = np.empty(n + 1, np.int64)
    g = -1
    for i in range(n):
        new = i == 0
        if not new:
            a = order[i]
            b = order[i - 1]
            for j in range(4):
                if q[a, j] != q[b, j]:
                    new = True
                    break
        if new:
            g += 1
            starts[g] = i
        inverse[order[i]] = g
    ng = g + 1
    starts[ng] = n
    uk = np.empty((ng, 3))
    utau = np.empty(ng)
    umag = np.empty((ng, ncol), np.complex128)
    for g in range(ng):
        f = order[starts[g]]
        uk[g, :] = k[f, :]
        utau[g] = tau[f]
        for c in range(ncol):
            umag[g, c] = _group_sum(mag, order, starts[g], starts[g + 1], c)
    return uk, utau, umag, inverse


@njit(cache=True)
def _select(mag: np.ndarray, cap: int, min_mag: float, keep: int) -> np.ndarray:
    """Return the kept states' indices, strongest first (as graph._select; ``keep`` < 0: none)."""
    n = mag.shape[0]
    strength = np.empty(n)
    for i in range(n):
        best = 0.0
        for c in range(mag.shape[1]):
            v = math.hypot(mag[i, c].real, mag[i, c].imag)
            if c == 0 or v > best:
                best = v
        strength[i] = -best
    order = np.argsort(strength, kind="mergesort")
    out = np.empty(n + 1, np.int64)
    m = 0
    if keep >= 0:
        out[0] = keep
        m = 1
    for i in range(n):
        j = order[i]
        if not -strength[j] >= min_mag or i >= cap:  # the first `cap` strong enough
            break
        if j != keep:
            out[m] = j
            m += 1
    if keep >= 0:
        m = min(m, max(cap, 1))
    kept: np.ndarray = out[:m].copy()
    return kept


@njit(cache=True)
def transition(
    p_k: np.ndarray, p_tau: np.ndarray, p_mag: np.ndarray, z_k: np.ndarray, z_tau: np.ndarray,
    z_mag: np.ndarray, c2: np.ndarray, co_refoc: np.ndarray, co_exc: np.ndarray, ca: np.ndarray,
    co_store: np.ndarray, live: np.ndarray, cap: int, min_mag: float,
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Return the states kept after a repetition's pulse and the edges from those before it.

    ``p_* / z_*``: transverse / longitudinal states before the pulse (k [n, 3] 1/m, τ [n] s,
    magnitudes [n, C] complex). Coefficients per column ``[C]``: ``c2`` (unaffected),
    ``co_refoc`` = e^{2iφ} s², ``co_exc`` = -i e^{iφ} sin α / 2, ``ca`` = cos α, ``co_store`` =
    -i e^{-iφ} sin α; ``live[kind]``: whether a kind's coefficient is non-zero in any column.
    Returns ``(plus_k, plus_tau, plus_mags, z_k, z_tau, z_mags, edge_child, edge_parent,
    edge_ptr, plus_def, z_def)`` with the edges of kind ``e`` at ``edge_ptr[e]:edge_ptr[e+1]``.
    """
    np_ = p_tau.shape[0]
    nz = z_tau.shape[0]
    ncol = p_mag.shape[1]
    # -- transverse candidates: unaffected, refocused, excited, excited mirror
    counts = np.array([np_ if live[0] else 0, np_ if live[1] else 0,
                       nz if live[2] else 0, nz if live[3] else 0])  # fmt: skip
    n = counts.sum()
    ck = np.empty((n, 3))
    ctau = np.empty(n)
    cmag = np.empty((n, ncol), np.complex128)
    ckind = np.empty(n, np.int64)
    cparent = np.empty(n, np.int64)
    i = 0
    for kind in range(4):
        if counts[kind] == 0:
            continue
        src_n = np_ if kind < 2 else nz
        for j in range(src_n):
            sign = 1.0 if kind % 2 == 0 else -1.0
            if kind < 2:
                for d in range(3):
                    ck[i, d] = sign * p_k[j, d]
                ctau[i] = sign * p_tau[j]
            else:
                for d in range(3):
                    ck[i, d] = sign * z_k[j, d]
                ctau[i] = sign * z_tau[j]
            for c in range(ncol):
                if kind == 0:
                    cmag[i, c] = c2[c] * p_mag[j, c]
                elif kind == 1:
                    cmag[i, c] = co_refoc[c] * p_mag[j, c].conjugate()
                elif kind == 2:
                    cmag[i, c] = co_exc[c] * z_mag[j, c]
                else:
                    cmag[i, c] = co_exc[c] * z_mag[j, c].conjugate()
            ckind[i] = kind
            cparent[i] = j
            i += 1
    nk, ntau, nmag, inv = _merge(ck, ctau, cmag)
    # -- longitudinal candidates: kept, stored (sign made canonical)
    pq = _keys(p_k, p_tau)
    zn = (nz if live[4] else 1) + (np_ if live[5] else 0)
    zk_c = np.empty((zn, 3))
    ztau_c = np.empty(zn)
    zmag_c = np.empty((zn, ncol), np.complex128)
    zkind = np.empty(zn, np.int64)
    zparent = np.empty(zn, np.int64)
    i = 0
    for j in range(nz if live[4] else 1):  # the relaxed state (index 0) always exists
        zk_c[i, :] = z_k[j, :]
        ztau_c[i] = z_tau[j]
        for c in range(ncol):
            zmag_c[i, c] = ca[c] * z_mag[j, c]
        zkind[i] = 4
        zparent[i] = j
        i += 1
    if live[5]:
        for j in range(np_):
            flip = False
            for d in range(4):
                if pq[j, d] != 0:
                    flip = pq[j, d] < 0
                    break
            sign = -1.0 if flip else 1.0
            for d in range(3):
                zk_c[i, d] = sign * p_k[j, d] if flip else p_k[j, d]
            ztau_c[i] = -p_tau[j] if flip else p_tau[j]
            for c in range(ncol):
                v = co_store[c] * p_mag[j, c]
                zmag_c[i, c] = v.conjugate() if flip else v
            zkind[i] = 6 if flip else 5
            zparent[i] = j
            i += 1
    mzk, mztau, mzmag, zinv = _merge(zk_c, ztau_c, zmag_c)
    mq = _keys(mzk, mztau)
    zero = -1
    for j in range(mq.shape[0]):
        if mq[j, 0] == 0 and mq[j, 1] == 0 and mq[j, 2] == 0 and mq[j, 3] == 0:
            zero = j
            break
    order_z = _select(mzmag, cap, min_mag, zero)
    order_p = _select(nmag, cap, min_mag, -1)
    # -- edges in the kept states' indices, each kind in candidate order
    pmap = np.full(ntau.shape[0], -1, np.int64)
    for j in range(order_p.shape[0]):
        pmap[order_p[j]] = j
    zmap = np.full(mztau.shape[0], -1, np.int64)
    for j in range(order_z.shape[0]):
        zmap[order_z[j]] = j
    edge_child = np.empty(n + zn, np.int64)
    edge_parent = np.empty(n + zn, np.int64)
    edge_ptr = np.zeros(N_KINDS + 1, np.int64)
    e = 0
    for kind in range(N_KINDS):
        edge_ptr[kind] = e
        if kind < 4:
            for j in range(n):
                if ckind[j] == kind and pmap[inv[j]] >= 0:
                    edge_child[e] = pmap[inv[j]]
                    edge_parent[e] = cparent[j]
                    e += 1
        else:
            for j in range(zn):
                if zkind[j] == kind and zmap[zinv[j]] >= 0:
                    edge_child[e] = zmap[zinv[j]]
                    edge_parent[e] = zparent[j]
                    e += 1
    edge_ptr[N_KINDS] = e
    # -- defining parents: the first kind that reaches a state, the last edge within that kind
    plus_def = np.full((order_p.shape[0], 2), -1, np.int64)
    z_def = np.full((order_z.shape[0], 2), -1, np.int64)
    for kind in range(N_KINDS):
        out = plus_def if kind < 4 else z_def
        lo = edge_ptr[kind]
        hi = edge_ptr[kind + 1]
        had = out[:, 0] >= 0
        for j in range(lo, hi):
            ch = edge_child[j]
            if not had[ch]:
                out[ch, 0] = kind
                out[ch, 1] = edge_parent[j]
    return (
        nk[order_p], ntau[order_p], nmag[order_p], mzk[order_z], mztau[order_z], mzmag[order_z],
        edge_child[:e].copy(), edge_parent[:e].copy(), edge_ptr, plus_def, z_def,
    )  # fmt: skip


@njit(cache=True)
def latent_sums(
    sens_p: np.ndarray, sens_z: np.ndarray, next_plus: np.ndarray, next_z: np.ndarray,
    child: np.ndarray, parent: np.ndarray, ptr: np.ndarray, coef: np.ndarray,
    decay_p: np.ndarray, decay_z: np.ndarray,
) -> None:  # fmt: skip
    """Add to ``sens_p [n+, C]`` and ``sens_z [nz, C]`` what the next repetition's states feed back.

    For each edge kind ``e`` (edges ``ptr[e]:ptr[e+1]`` of ``child``/``parent``) the children's
    sensitivities (``next_plus`` for kinds 0–3, ``next_z`` for 4–6) times ``coef[e, C]`` and the
    parent's decay over its repetition (``decay_p`` for transverse parents, ``decay_z`` else),
    summed per parent from zero in edge order and then added, per kind, as
    ``graph._latent_numpy`` does.
    """
    ncol = sens_p.shape[1]
    for kind in range(N_KINDS):
        lo = ptr[kind]
        hi = ptr[kind + 1]
        if hi == lo:
            continue
        from_plus = kind in (0, 1, 5, 6)
        target = sens_p if from_plus else sens_z
        decay = decay_p if from_plus else decay_z
        src = next_plus if kind < 4 else next_z
        acc = np.zeros(target.shape)
        for j in range(lo, hi):
            for c in range(ncol):
                acc[parent[j], c] += coef[kind, c] * src[child[j], c] * decay[c]
        for i in range(target.shape[0]):
            for c in range(ncol):
                target[i, c] += acc[i, c]


@njit(cache=True)
def b_values(k0: np.ndarray, g: np.ndarray, dt: np.ndarray) -> np.ndarray:
    """EPG b-value (s/m²) over a repetition of each state starting at ``k0 [n, 3]`` (1/m).

    ``g [E, 3]`` (1/m) and ``dt [E]`` (s): the repetition's events. As ``graph._b_values_numpy``
    (its definition), bit for bit: the same sums in the same order, no fused products.
    """
    n = k0.shape[0]
    out = np.zeros(n)
    n_e = dt.shape[0]
    if n_e == 0 or n == 0:
        return out
    kprev = np.zeros(3)
    total = 0.0
    lin = np.zeros(3)
    const = 0.0
    for e in range(n_e):
        total += dt[e]
        kk = kprev[0] * kprev[0] + kprev[1] * kprev[1] + kprev[2] * kprev[2]
        kg = kprev[0] * g[e, 0] + kprev[1] * g[e, 1] + kprev[2] * g[e, 2]
        gg = g[e, 0] * g[e, 0] + g[e, 1] * g[e, 1] + g[e, 2] * g[e, 2]
        for a in range(3):
            lin[a] += dt[e] * (2 * kprev[a] + g[e, a])
        const += dt[e] * ((kk + kg) + gg / 3)
        for a in range(3):
            kprev[a] += g[e, a]
    scale = 4 * math.pi**2
    for i in range(n):
        sq = k0[i, 0] * k0[i, 0] + k0[i, 1] * k0[i, 1] + k0[i, 2] * k0[i, 2]
        k_lin = k0[i, 0] * lin[0] + k0[i, 1] * lin[1] + k0[i, 2] * lin[2]
        out[i] = scale * (sq * total + k_lin + const)
    return out


@njit(cache=True)
def _max_nan(a: float, b: float) -> float:
    """``max`` that propagates NaN as numpy's ``max`` reduction does."""
    return b if (b > a or b != b) and a == a else a


@njit(cache=True)
def latent_tail(
    plus_mags: np.ndarray, z_mags: np.ndarray, sens_p: np.ndarray, sens_z: np.ndarray,
    emitted: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Return a repetition's normalised latent and emitted estimates from its sensitivities.

    As the numpy tail of ``graph._latent`` (its definition), bit for bit: ``(plus_latent [n],
    z_latent [m], plus_emitted [n], plus_signal [n], plus_latent_unnormalized [n],
    z_latent_unnormalized [m])`` from ``plus_mags [n, C]``, ``z_mags [m, C]`` (complex),
    ``sens_p [n, C]``, ``sens_z [m, C]`` and ``emitted [n, C]``.
    """
    n, n_c = sens_p.shape
    m = sens_z.shape[0]
    p_lat = np.empty((n, n_c))
    p_emit = np.empty((n, n_c))
    z_lat = np.empty((m, n_c))
    for i in range(n):
        for c in range(n_c):
            a = math.hypot(plus_mags[i, c].real, plus_mags[i, c].imag)
            p_lat[i, c] = a * sens_p[i, c]
            p_emit[i, c] = a * emitted[i, c]
    for i in range(m):
        for c in range(n_c):
            z_lat[i, c] = math.hypot(z_mags[i, c].real, z_mags[i, c].imag) * sens_z[i, c]
    top = np.zeros(n_c)
    top_e = np.zeros(n_c)
    for c in range(n_c):
        t, z_top, e = 0.0, 0.0, 0.0
        for i in range(n):
            t = _max_nan(t, p_lat[i, c])
            e = _max_nan(e, p_emit[i, c])
        for i in range(1, m):
            z_top = _max_nan(z_top, z_lat[i, c])
        t = _max_nan(t, z_top) if t == t else t  # np.maximum: NaN from either side
        top[c] = t if t > 0 else 1.0
        top_e[c] = e if e > 0 else 1.0
    plus_latent = np.zeros(n)
    plus_emitted = np.zeros(n)
    z_latent = np.zeros(m)
    for i in range(n):
        a, b = 0.0, 0.0
        for c in range(n_c):
            a = _max_nan(a, p_lat[i, c] / top[c])
            b = _max_nan(b, p_emit[i, c] / top_e[c])
        plus_latent[i] = a
        plus_emitted[i] = b
    for i in range(m):
        a = 0.0
        for c in range(n_c):
            a = _max_nan(a, z_lat[i, c] / top[c])
        z_latent[i] = a
    return (plus_latent, z_latent, plus_emitted, p_emit[:, 0].copy(), p_lat[:, 0].copy(),
            z_lat[:, 0].copy())  # fmt: skip


def warm_up() -> None:
    """Compile the kernels for the types the pre-pass passes, and write numba's cache.

    ``scripts/setup.sh`` and the Docker images run this (``python -m
    mr0core.sim.prepass_kernel``) so that no simulation pays the compilation (about 17 s on a
    2-core machine); a process then loads the cached machine code in well under a second.
    """
    f64, c128 = np.float64, np.complex128
    k, tau = np.zeros((1, 3), f64), np.zeros(1, f64)
    mag, coef = np.ones((1, 1), c128), np.ones(1, c128)
    transition(k, tau, mag, k, tau, mag, coef, coef, coef, coef, coef, np.ones(N_KINDS, np.bool_),
               2, 0.0)  # fmt: skip
    b_values(k, np.zeros((1, 3), f64), np.ones(1, f64))
    latent_tail(mag, mag, np.ones((1, 1), f64), np.ones((1, 1), f64), np.ones((1, 1), f64))
    sens, idx = np.zeros((1, 1), f64), np.zeros(0, np.int64)
    latent_sums(sens, sens, sens, sens, idx, idx, np.zeros(N_KINDS + 1, np.int64),
                np.zeros((N_KINDS, 1), f64), np.ones(1, f64), np.ones(1, f64))  # fmt: skip


if __name__ == "__main__":
    warm_up()

"""PDG main pass (``execute_graph``): every voxel, only the states that matter.

For each repetition the pass

1. applies the pulse per voxel (flip and phase from B1 and the pTx shim) along the graph's edges;
2. computes the ADC signal of the emitting transverse states as a matrix product: the
   state-dependent phase ``exp(-2πi (k0·r + B0 τ0))`` is folded into the state magnetisation
   ``M [states, voxels]``, the sample-dependent part ``exp(-2πi (K_t·r + B0 T_t)) e^{-T_t/T2} PD
   coil`` into ``P [voxels, samples × coils]``; ``M @ P`` is one GEMM per group of voxels that
   share T2′ and D, whose state- and sample-dependent factors (voxel shape response of
   ``k0 + K_t``, ``exp(-|τ0 + T_t| / T2′)``, diffusion within the repetition) are then applied
   per (state, sample). Phantoms with many distinct (T2′, D) pairs use an exact per-voxel path;
3. relaxes, diffuses and recovers the states to the end of the repetition.

The signal is ``Σ_voxels PD · coil · m+ · exp(+i adc_phase)``, not normalised by the voxel count,
sampled at the end of each ADC event, as MR-zero defines it.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from .graph import (
    PLUS_FROM_PLUS,
    PLUS_FROM_PLUS_REFOC,
    PLUS_FROM_Z,
    PLUS_FROM_Z_CONJ,
    Z_FROM_PLUS,
    Z_FROM_PLUS_CONJ,
    Z_FROM_Z,
    Graph,
)
from .rf import effective_b1
from .shaped import (
    ShapedRfError,
    check_rf_model,
    default_sub_slices,
    edge_coefficients,
    expand_sub_slices,
    pulse_rotation,
    warn_no_waveforms,
)

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence

__all__ = ["execute_graph"]

_MAX_GROUPS = 16  # distinct (T2', D) pairs handled by grouped GEMMs
_CHUNK_ELEMENTS = 1 << 24  # per-voxel fallback: states x samples x voxels per chunk
_PHASOR_ELEMENTS = 1 << 22  # voxels x samples of the sample phasors per chunk (32 MiB)
_CACHE_ELEMENTS = 1 << 20  # step products kept between repetitions (8 MiB of complex64)
_ANCHOR = 32  # sample phasors computed exactly every this many samples
_K_STEP_QUANTUM = 1e-6  # 1/m, to recognise equal steps between samples
_T_STEP_QUANTUM = 1e-12  # s
_TWO_PI = 2 * math.pi
_D_SI = 1e-9  # 10^-3 mm^2/s in m^2/s


# edge kind -> (child is transverse, parent is transverse, conjugate the parent, coefficient row):
# rows 0 cos²(α/2), 1 e^{2iφ} sin²(α/2), 2 -i/2 e^{iφ} sin α, 3 cos α, 4 -i e^{-iφ} sin α, 5 its
# conjugate (for a conjugated transverse parent, the whole product is conjugated)
_EDGE_RULES = {
    PLUS_FROM_PLUS: (True, True, False, 0),
    PLUS_FROM_PLUS_REFOC: (True, True, True, 1),
    PLUS_FROM_Z: (True, False, False, 2),
    PLUS_FROM_Z_CONJ: (True, False, True, 2),
    Z_FROM_Z: (False, False, False, 3),
    Z_FROM_PLUS: (False, True, False, 4),
    Z_FROM_PLUS_CONJ: (False, True, True, 5),
}


def _gather_k(
    kind_parent: np.ndarray, p_k: torch.Tensor, p_tau: torch.Tensor, z_k: torch.Tensor,
    z_tau: torch.Tensor, plus: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Return k [n, 3] and τ [n] of new states from their defining edges (differentiable)."""
    if plus:
        table_k = torch.cat([p_k, -p_k, z_k, -z_k])
        table_tau = torch.cat([p_tau, -p_tau, z_tau, -z_tau])
        offsets = {
            PLUS_FROM_PLUS: 0,
            PLUS_FROM_PLUS_REFOC: len(p_tau),
            PLUS_FROM_Z: 2 * len(p_tau),
            PLUS_FROM_Z_CONJ: 2 * len(p_tau) + len(z_tau),
        }
    else:
        table_k = torch.cat([z_k, p_k, -p_k])
        table_tau = torch.cat([z_tau, p_tau, -p_tau])
        offsets = {
            Z_FROM_Z: 0,
            Z_FROM_PLUS: len(z_tau),
            Z_FROM_PLUS_CONJ: len(z_tau) + len(p_tau),
        }
    if len(kind_parent) == 0:
        return table_k[:0], table_tau[:0]
    lut = np.zeros(7, np.int64)
    for kind, off in offsets.items():
        lut[kind] = off
    kinds = kind_parent[:, 0]
    idx = np.where(kinds >= 0, lut[np.maximum(kinds, 0)] + kind_parent[:, 1], -1)
    if (idx < 0).any():
        # only the relaxed longitudinal state can lack an edge (k = 0, τ = 0)
        table_k = torch.cat([table_k, torch.zeros_like(table_k[:1])])
        table_tau = torch.cat([table_tau, torch.zeros_like(table_tau[:1])])
        idx = np.where(idx < 0, len(table_tau) - 1, idx)
    index = torch.from_numpy(idx).to(table_k.device)
    return table_k[index], table_tau[index]


def _cis(phase: torch.Tensor, mag: torch.Tensor | None = None) -> torch.Tensor:
    """``mag · exp(i phase)`` as complex64.

    ``torch.complex(cos, sin)`` rather than ``torch.polar``: on CPU (torch 2.13) polar is not
    vectorised and takes about three times as long, and these factors dominate the main pass.
    """
    c, s = torch.cos(phase), torch.sin(phase)
    if mag is not None:
        c, s = c * mag, s * mag
    return torch.complex(c, s)


class _StepCache:
    """Step products ``W [B, V]`` shared between repetitions, bounded in memory.

    A pattern is kept only from its second use on: a radial or spiral readout, whose every
    spoke has new steps, would otherwise fill the cache with products that are never used
    again. The least recently used are dropped beyond ``_CACHE_ELEMENTS`` (at least two).
    """

    def __init__(self, limit: int = _CACHE_ELEMENTS) -> None:
        self.limit = limit
        self.kept: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.seen: set[bytes] = set()
        self.size = 0

    def get(self, key: bytes, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        W = self.kept.get(key)
        if W is not None:
            self.kept.move_to_end(key)
            return W
        W = make()
        if key not in self.seen:
            if len(self.seen) > 1 << 16:  # bound the bookkeeping of one-off patterns, too
                self.seen.clear()
            self.seen.add(key)
            return W
        self.kept[key] = W
        self.size += W.numel()
        while self.size > self.limit and len(self.kept) > 2:
            self.size -= self.kept.popitem(last=False)[1].numel()
        return W


def _remap(active: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    out[active] = np.arange(len(active))
    return out


def execute_graph(
    graph: Graph,
    seq: Sequence,
    data: SimData,
    min_emitted_signal: float = 1e-2,
    min_latent_signal: float = 1e-2,
    print_progress: bool = True,
    return_mag_adc: bool = False,
    clear_state_mag: bool = True,
    intitial_mag: torch.Tensor | None = None,
    progress_callback: Callable[[int, int], None] | None = None,
    *,
    rf_model: str = "instantaneous",
    sub_slices: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
    """Simulate the ADC signal of ``seq`` on ``data`` along ``graph``.

    Parameters
    ----------
    graph
        From :func:`compute_graph` for this sequence.
    seq
        The sequence.
    data
        The phantom; the simulation runs on its device.
    min_emitted_signal
        Transverse states whose estimated signal (relative to the strongest in their repetition)
        is below this are left out of the signal.
    min_latent_signal
        States whose estimated present or future signal is below this are not simulated.
    print_progress
        Show a tqdm bar over the repetitions.
    return_mag_adc
        Also return, per ADC sample, the transverse magnetisation per voxel ``[voxels]`` (costly).
    clear_state_mag
        Drop each repetition's state magnetisations once used (kept anyway where autograd needs
        them).
    intitial_mag
        Optional initial longitudinal magnetisation per voxel ``[voxels]`` (default 1).
    progress_callback
        Called as ``(repetitions done, repetitions)`` after each repetition (an addition to
        MR-zero's signature, for servers that report progress).
    rf_model
        ``"instantaneous"`` (default, MR-zero's model): every pulse is a rotation by its nominal
        angle at its centre. ``"shaped"``: pulses that carry an
        :class:`~mr0core.sequence.RfWaveform` (Pulseq imports keep them) become per-voxel
        rotations from a Bloch simulation of the waveform with its gradients at each voxel's
        position, B0 and B1 (:mod:`mr0core.sim.shaped`).
    sub_slices
        With ``rf_model="shaped"``: voxels through a 2-D phantom's thickness
        (:func:`mr0core.sim.shaped.expand_sub_slices`); default
        :func:`~mr0core.sim.shaped.default_sub_slices` (8 for one-voxel-thick grids under a
        slice-selective pulse, else 1). The main pass's cost grows with it.

    Returns
    -------
    torch.Tensor
        ``[ADC samples, coils]`` complex64 signal (and the per-sample magnetisations if asked).
    """
    if len(graph) != len(seq):
        raise ValueError(f"the graph has {len(graph)} repetitions, the sequence {len(seq)}")
    shaped = check_rf_model(rf_model) == "shaped"
    n_sub = 1
    if shaped:
        warn_no_waveforms(seq)
        n_sub = default_sub_slices(seq, data) if sub_slices is None else int(sub_slices)
        data = expand_sub_slices(data, n_sub)
        if intitial_mag is not None and n_sub > 1:
            intitial_mag = torch.repeat_interleave(intitial_mag.reshape(-1), n_sub)
    elif sub_slices is not None:
        raise ShapedRfError(f"sub_slices={sub_slices} needs rf_model='shaped'")
    rotations: dict = {}  # shaped pulses' Bloch integrations, shared between equal pulses
    dev = data.device
    cdt = torch.complex64
    fdt = torch.float32
    pos = data.voxel_pos.to(fdt)
    b0 = data.B0.to(fdt)
    t1 = data.T1.to(fdt).clamp_min(1e-12)
    t2 = data.T2.to(fdt).clamp_min(1e-12)
    t2d = data.T2dash.to(fdt).clamp_min(1e-12)
    diff = data.D.to(fdt).clamp_min(0) * _D_SI
    pd_coil = (data.coil_sens.to(cdt) * data.PD.to(fdt)).transpose(0, 1)  # [V, C]
    n_vox, n_coil = pd_coil.shape
    b1 = data.B1.to(cdt)
    size = data.size.to(fdt)
    nyquist = data.nyquist.to(fdt)
    groups, group_inv = _groups(t2d, diff)
    # the grouped GEMM shares one T2' and D per group, so gradients with respect to them need the
    # per-voxel path
    exact = return_mag_adc or groups is None or t2d.requires_grad or diff.requires_grad
    z0 = torch.ones(n_vox, dtype=fdt, device=dev) if intitial_mag is None else (
        intitial_mag.to(dev, fdt).reshape(n_vox)
    )  # fmt: skip
    bounds: list[tuple[int, int]] = []
    if not exact:
        # Sort the voxels by group once, so that each group is a contiguous slice (no gathers
        # per repetition). The signal is a sum over voxels, so the order does not matter.
        assert groups is not None
        order = torch.argsort(group_inv, stable=True)
        pos, b0, t1, t2, t2d, diff, z0 = (x[order] for x in (pos, b0, t1, t2, t2d, diff, z0))
        pd_coil, b1 = pd_coil[order], b1[:, order]
        ends = torch.cumsum(torch.bincount(group_inv, minlength=len(groups)), 0).tolist()
        bounds = list(zip([0, *ends[:-1]], ends, strict=True))

    static_grad = pos.requires_grad or b0.requires_grad or t2.requires_grad
    phasor_cache = _StepCache()
    p_k = torch.zeros((0, 3), dtype=fdt, device=dev)
    p_tau = torch.zeros(0, dtype=fdt, device=dev)
    p_mag = torch.zeros((0, n_vox), dtype=cdt, device=dev)
    z_k = torch.zeros((1, 3), dtype=fdt, device=dev)
    z_tau = torch.zeros(1, dtype=fdt, device=dev)
    z_mag = z0.to(cdt).unsqueeze(0)
    p_active = np.zeros(0, np.int64)
    z_active = np.zeros(1, np.int64)
    signals: list[torch.Tensor] = []
    mags: list[torch.Tensor] = []

    for r, (rep, rg) in enumerate(
        tqdm(list(zip(seq, graph, strict=True)), desc="PDG", disable=not print_progress)
    ):
        # ---- states of this repetition: k and τ for all, magnetisation for the active ones
        new_p_k, new_p_tau = _gather_k(rg.plus_def, p_k, p_tau, z_k, z_tau, plus=True)
        new_z_k, new_z_tau = _gather_k(rg.z_def, p_k, p_tau, z_k, z_tau, plus=False)
        act_p = np.flatnonzero(rg.plus_latent >= min_latent_signal)
        act_z = np.flatnonzero(rg.z_latent >= min_latent_signal)
        if len(act_z) == 0 or act_z[0] != 0:
            act_z = np.concatenate([[0], act_z[act_z != 0]])
        map_p, map_z = _remap(act_p, len(rg.plus_tau)), _remap(act_z, len(rg.z_tau))
        prev_map_p = _remap(p_active, _prev_count(graph, r, plus=True))
        prev_map_z = _remap(z_active, _prev_count(graph, r, plus=False))

        pulse = rep.pulse
        if shaped and pulse.waveform is not None:
            rot_a, rot_b = pulse_rotation(
                pulse, pos, b0, b1, r, size if seq.normalized_grads else None, rotations
            )
            coef = edge_coefficients(rot_a, rot_b)  # [6, V], rows as in _EDGE_RULES
        else:
            b1eff = effective_b1(pulse.shim_array.to(dev, fdt), b1, r)  # [V]
            angle = pulse.angle.to(dev, fdt) * b1eff.abs()
            phase = pulse.phase.to(dev, fdt) + torch.angle(b1eff)
            c2 = torch.cos(angle / 2) ** 2
            s2 = torch.sin(angle / 2) ** 2
            sa = torch.sin(angle)
            ca = torch.cos(angle)
            e1 = _cis(phase)
            e1sa = e1 * sa
            z_from_plus = -1j * e1sa.conj()
            coef = torch.stack([c2.to(cdt), e1 * e1 * s2, -0.5j * e1sa, ca.to(cdt), z_from_plus,
                                z_from_plus.conj()])  # [6, V], rows as in _EDGE_RULES  # fmt: skip
        # every edge is coef[row] · (parent or its conjugate): per edge kind one gather, one
        # product and one scatter. Kind by kind rather than all edges at once, so that the
        # transient is one kind's [edges, V] rather than several copies of all of them (the
        # pass's peak memory)
        new_p = torch.zeros((len(act_p), n_vox), dtype=cdt, device=dev)
        new_z = torch.zeros((len(act_z), n_vox), dtype=cdt, device=dev)
        for kind, (to_plus, from_plus, conj, row) in _EDGE_RULES.items():
            child, parent = rg.edges[kind]
            ci = (map_p if to_plus else map_z)[child]
            pi = (prev_map_p if from_plus else prev_map_z)[parent]
            ok = (ci >= 0) & (pi >= 0)
            if not ok.any():
                continue
            ci_t, pi_t = (torch.from_numpy(x[ok]).to(dev) for x in (ci, pi))
            src = (p_mag if from_plus else z_mag).index_select(0, pi_t)
            contrib = (src.conj() if conj else src) * coef[row]
            (new_p if to_plus else new_z).index_add_(0, ci_t, contrib)

        k0 = new_p_k[torch.from_numpy(act_p).to(dev)]
        tau0 = new_p_tau[torch.from_numpy(act_p).to(dev)]

        # ---- the repetition's events (gradients scaled to the phantom size)
        dt = rep.event_time.to(dev, fdt)
        g = rep.gradm.to(dev, fdt)
        if seq.normalized_grads:
            g = g / size
        kcum = torch.cumsum(g, 0)
        tcum = torch.cumsum(dt, 0)
        kprev = kcum - g
        lin_cum = torch.cumsum(dt[:, None] * (2 * kprev + g), 0)  # [E, 3]
        const_cum = torch.cumsum(
            dt * ((kprev**2).sum(1) + (kprev * g).sum(1) + (g**2).sum(1) / 3), 0
        )
        adc = torch.nonzero(rep.adc_usage > 0).flatten().to(dev)
        if len(adc):
            emit = np.flatnonzero(rg.plus_emitted[act_p] >= min_emitted_signal)
            steps = None
            if not exact and not (g.requires_grad or dt.requires_grad or static_grad):
                # float64 sample positions, to find the samples that share a step (k, t)
                steps = (torch.cumsum(g.double(), 0)[adc], torch.cumsum(dt.double(), 0)[adc])
            sig, mag_adc = _signal(
                new_p[torch.from_numpy(emit).to(dev)], k0[emit], tau0[emit], kcum[adc],
                tcum[adc], lin_cum[adc], const_cum[adc], rep.adc_phase.to(dev, fdt)[adc],
                pos, b0, t2, t2d, diff, pd_coil, nyquist, data.dephasing_func, groups,
                bounds, exact, steps, phasor_cache,
            )  # fmt: skip
            signals.append(sig)
            mags.extend(mag_adc)

        # ---- to the end of the repetition
        total = dt.sum()
        if len(dt):
            four_pi2 = 4 * math.pi**2
            b_plus = four_pi2 * ((k0**2).sum(1) * total + k0 @ lin_cum[-1] + const_cum[-1])  # [S]
            p_mag = _relax(new_p, total / t2, b_plus, diff)
            zk_act = new_z_k[torch.from_numpy(act_z).to(dev)]
            b_z = four_pi2 * (zk_act**2).sum(1) * total
            e1_t1 = torch.exp(-total / t1)
            z_mag = _relax(new_z, total / t1, b_z, diff)
            if z_mag.requires_grad:
                z_mag = torch.cat([z_mag[:1] + (1 - e1_t1), z_mag[1:]])
            else:
                z_mag[0] += 1 - e1_t1  # recovery feeds the relaxed state
            p_k = new_p_k + kcum[-1]
            p_tau = new_p_tau + total
        else:
            p_mag, z_mag = new_p, new_z
            p_k, p_tau = new_p_k, new_p_tau
        z_k, z_tau = new_z_k, new_z_tau
        p_active, z_active = act_p, act_z
        if clear_state_mag and not torch.is_grad_enabled():
            del new_p, new_z
        if progress_callback is not None:
            progress_callback(r + 1, len(graph))

    out = torch.cat(signals) if signals else torch.zeros((0, n_coil), dtype=cdt, device=dev)
    if return_mag_adc:
        if n_sub > 1:  # the mean over each voxel's sub-slices (their PD is equal)
            mags = [m.reshape(-1, n_sub).mean(1) for m in mags]
        return out, mags
    return out


def _relax(
    m: torch.Tensor, rate: torch.Tensor, b: torch.Tensor, diff: torch.Tensor
) -> torch.Tensor:
    """``m [S, V] · exp(-rate [V] - b [S] ⊗ diff [V])``: relaxation and diffusion of states.

    In place (no [S, V] temporaries beyond one float factor) when autograd does not need ``m``.
    """
    f = b[:, None] * diff
    if any(x.requires_grad for x in (m, rate, b, diff)):
        return m * torch.exp(-(f + rate))
    return m.mul_(f.add_(rate).neg_().exp_())


def _prev_count(graph: Graph, r: int, plus: bool) -> int:
    if r == 0:
        return 0 if plus else 1
    prev = graph[r - 1]
    return len(prev.plus_tau) if plus else len(prev.z_tau)


def _groups(t2d: torch.Tensor, diff: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Distinct (T2′, D) pairs [G, 2] and the group of each voxel [V]; None if too many."""
    t2d, diff = t2d.detach(), diff.detach()
    u_t2d, i_t2d = torch.unique(t2d, return_inverse=True)
    u_d, i_d = torch.unique(diff, return_inverse=True)
    # one integer key per pair: a 1-D unique, much faster than unique(dim=0) on CPU
    keys, inv = torch.unique(i_t2d * len(u_d) + i_d, return_inverse=True)
    if len(keys) > _MAX_GROUPS:
        return None, inv
    return torch.stack([u_t2d[keys // len(u_d)], u_d[keys % len(u_d)]], dim=1), inv


def _signal(
    m: torch.Tensor, k0: torch.Tensor, tau0: torch.Tensor, K: torch.Tensor, T: torch.Tensor,
    L: torch.Tensor, C: torch.Tensor, adc_phase: torch.Tensor, pos: torch.Tensor,
    b0: torch.Tensor, t2: torch.Tensor, t2d: torch.Tensor, diff: torch.Tensor,
    pd_coil: torch.Tensor, nyquist: torch.Tensor, dephasing_func: object,
    groups: torch.Tensor | None, bounds: list[tuple[int, int]], exact: bool,
    steps: tuple[torch.Tensor, torch.Tensor] | None = None,
    cache: _StepCache | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
    """Signal ``[samples, coils]`` of transverse states ``m [S, V]`` at one repetition's samples.

    ``K [T, 3]``, ``T [T]``: gradient moment and time since the repetition's start at each
    sample; ``L [T, 3]`` and ``C [T]``: the linear and constant parts of the within-repetition
    b-value (b = 4π² (|k0|² T + k0·L + C)). ``steps``: ``K``, ``T`` in float64, given when
    nothing needs gradients through them, and ``cache``: for :func:`_phasor_chunks`.
    """
    n_t = len(T)
    n_s = len(m)
    n_coil = pd_coil.shape[1]
    cdt = torch.complex64
    if n_s == 0:
        zero = torch.zeros((n_t, n_coil), dtype=cdt, device=pos.device)
        empty = torch.zeros(len(pos), dtype=cdt, device=pos.device)
        return zero, ([empty] * n_t if exact else [])
    k_st = k0[:, None, :] + K[None]  # [S, T, 3]
    tau_st = tau0[:, None] + T[None]  # [S, T]
    w = dephasing_func(k_st, nyquist).to(torch.float32)  # [S, T]
    b_st = 4 * math.pi**2 * ((k0**2).sum(1)[:, None] * T[None] + k0 @ L.T + C[None])  # [S, T]
    state_phase = -_TWO_PI * (k0 @ pos.T + tau0[:, None] * b0[None])  # [S, V]
    M = m * _cis(state_phase)
    receive = _cis(adc_phase)  # e^{+i adc_phase}
    if not exact:
        assert groups is not None
        # fold PD and the coil into the states: one GEMM [S·C, V_g] @ [V_g, T] per group
        mc = [
            (M[:, lo:hi, None] * pd_coil[lo:hi]).transpose(1, 2).reshape(n_s * n_coil, hi - lo)
            for lo, hi in bounds
        ]
        outs = []
        for sl, A, patterns in _phasor_chunks(pos, b0, t2, K, T, steps, cache):
            n_c = sl.stop - sl.start
            out = torch.zeros((n_c, n_coil), dtype=cdt, device=pos.device)
            for gi, (lo, hi) in enumerate(bounds):
                if hi == lo:
                    continue
                if patterns is None:  # A is P [V, Tc]
                    a = (mc[gi] @ A[lo:hi]).reshape(n_s, n_coil, -1)  # [S, C, Tc]
                else:
                    # Σ_v mc[sc, v] A[v, b] W[v, j] for sample t = b·B + j of block b: scale the
                    # states by each block's anchor, then one GEMM with W per step pattern
                    ma = mc[gi][:, None, :] * A[lo:hi].T[None]  # [S·C, blocks, V_g]
                    res = torch.empty((n_s * n_coil, A.shape[1], _ANCHOR), dtype=cdt,
                                      device=pos.device)  # fmt: skip
                    for blocks, W in patterns:
                        part = ma[:, blocks].reshape(-1, hi - lo) @ W[:, lo:hi].T  # [S·C·nb, B]
                        res[:, blocks] = part.reshape(n_s * n_coil, -1, _ANCHOR)
                    a = res.reshape(n_s, n_coil, -1)[:, :, :n_c]
                r2d, dg = 1 / groups[gi, 0], groups[gi, 1]
                f = w[:, sl] * torch.exp(-tau_st[:, sl].abs() * r2d - b_st[:, sl] * dg)  # [S, Tc]
                out = out + torch.einsum("sct,st->tc", a, f.to(cdt))
            outs.append(out)
        return torch.cat(outs) * receive[:, None], []
    # exact per-voxel path: states x samples x voxels in chunks
    P = _cis(-_TWO_PI * (pos @ K.T + b0[:, None] * T[None]), torch.exp(-T[None] / t2[:, None]))
    chunk = max(1, _CHUNK_ELEMENTS // max(1, n_s * len(pos)))
    outs, mags = [], []
    for t0 in range(0, n_t, chunk):
        sl = slice(t0, t0 + chunk)
        f = w[:, sl, None] * torch.exp(
            -tau_st[:, sl, None].abs() / t2d[None, None] - b_st[:, sl, None] * diff[None, None]
        )  # [S, Tc, V]
        mt = (M[:, None, :] * f).sum(0) * P[:, sl].T  # [Tc, V]
        outs.append(mt @ pd_coil)
        mags.extend(list(mt * receive[sl, None]))
    return torch.cat(outs) * receive[:, None], mags


def _phasor_chunks(
    pos: torch.Tensor,
    b0: torch.Tensor,
    t2: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    steps: tuple[torch.Tensor, torch.Tensor] | None,
    cache: _StepCache | None,
) -> Iterator[tuple[slice, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]] | None]]:
    """Yield the sample phasors ``P = exp(-2πi (r·K_t + B0 T_t)) e^{-T_t / T2}`` chunk by chunk.

    P (voxels × samples of cos, sin and exp) is the main pass's largest cost. Without ``steps``
    each item is ``(samples, P [V, Tc], None)``. With ``steps``, P is never formed: the samples
    are cut into blocks of ``_ANCHOR``; P is computed exactly at each block's first sample ``a``
    (``A [V, blocks]``), and ``P[a + j] = A[a] · W[j]``, where ``W [B, V]`` is the product of the
    per-voxel factors of the steps (ΔK, ΔT) from ``a`` to ``a + j``. Blocks that advance by the
    same steps (a readout's flat top, in every repetition) share one ``W``, kept in ``cache`` for
    the whole pass; for a block of equal steps, ``W`` is the powers of one factor. Each item is
    ``(samples, A, [(block indices, W), ...])``. The float32 rounding of the at most
    ``_ANCHOR - 1`` products stays near 1e-6. Chunks bound the memory.
    """
    n_v, n_t = len(pos), len(T)
    dev = pos.device

    def direct(k: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        phase = -_TWO_PI * (pos @ k.T + b0[:, None] * t[None])
        return _cis(phase, torch.exp(-t[None] / t2[:, None]))

    chunk = max(_ANCHOR, (_PHASOR_ELEMENTS // max(n_v, 1)) // _ANCHOR * _ANCHOR)
    if steps is None or cache is None or n_t <= 2:
        for t0 in range(0, n_t, chunk):
            sl = slice(t0, min(n_t, t0 + chunk))
            yield sl, direct(K[sl], T[sl]), None
        return
    k64, t64 = steps
    inc = torch.cat([k64.diff(dim=0), t64.diff()[:, None]], 1)  # [T - 1, 4]: step into t + 1
    quantum = inc.new_tensor([_K_STEP_QUANTUM] * 3 + [_T_STEP_QUANTUM])
    n_pad = -(-n_t // _ANCHOR) * _ANCHOR
    keys = np.zeros((n_pad, 4), np.int64)  # keys[t]: the step into sample t (0: none)
    keys[1:n_t] = torch.round(inc / quantum).to(torch.int64).cpu().numpy()
    inc_pad = torch.zeros((n_pad, 4), dtype=torch.float32, device=dev)
    inc_pad[1:n_t] = inc.float()
    for t0 in range(0, n_t, chunk):
        t1 = min(n_t, t0 + chunk)
        anchors = list(range(t0, t1, _ANCHOR))
        by_key: dict[bytes, list[int]] = {}
        for i, a in enumerate(anchors):
            by_key.setdefault(keys[a + 1 : a + _ANCHOR].tobytes(), []).append(i)
        patterns = []
        for key, blocks in by_key.items():
            a = anchors[blocks[0]]
            W = cache.get(
                key,
                lambda a=a: _step_products(
                    pos, b0, t2, inc_pad[a + 1 : a + _ANCHOR], keys[a + 1 : a + _ANCHOR]
                ),
            )
            patterns.append((torch.tensor(blocks, device=dev), W))
        idx = torch.tensor(anchors, device=dev)
        yield slice(t0, t1), direct(K[idx], T[idx]), patterns


def _step_products(
    pos: torch.Tensor, b0: torch.Tensor, t2: torch.Tensor, d: torch.Tensor, keys: np.ndarray
) -> torch.Tensor:
    """``W [B, V]``: 1, then the running products of the factors of the steps ``d [B - 1, 4]``."""
    n_v = len(pos)
    W = torch.empty((_ANCHOR, n_v), dtype=torch.complex64, device=pos.device)
    W[0] = 1
    if (keys == keys[0]).all():  # equal steps: powers of one factor, by doubling
        e = _cis(-_TWO_PI * (pos @ d[0, :3] + b0 * d[0, 3]), torch.exp(-d[0, 3] / t2))
        W[1] = e
        n = 2
        while n < _ANCHOR:
            m = min(n, _ANCHOR - n)
            W[n : n + m] = W[:m] * (W[n - 1] * e)
            n += m
        return W
    e = _cis(-_TWO_PI * (d[:, None, :3] @ pos.T[None]).squeeze(1) - _TWO_PI * d[:, 3:] * b0,
             torch.exp(-d[:, 3:] / t2))  # fmt: skip
    W[1:] = torch.cumprod(e, dim=0)
    return W

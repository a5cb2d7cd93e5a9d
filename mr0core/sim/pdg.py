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

On CPU without autograd, steps 1 and 3 (and the k/τ bookkeeping) run as one compiled call per
repetition (:mod:`mr0core.sim.mainpass_kernel`, numba); the torch operations here are their
definition and run everywhere else (GPU, autograd, or without numba).

A moving phantom (``phantom_motion``/``voxel_motion``, :mod:`mr0core.sim.motion`) adds, per
event, the phase ``-2π Δk·(r(t) − r0)`` of the moved positions beyond the still one: it enters the
sample phasors of step 2 (formed directly then, without the step cache or the batch) and, at the
repetition's end, the transverse states' magnetisation, which carries it on. A still phantom takes
none of this.

The signal is ``Σ_voxels PD · coil · m+ · exp(+i adc_phase)``, not normalised by the voxel count,
sampled at the end of each ADC event, as MR-zero defines it.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

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
    RepGraph,
)
from .motion import MotionSampler, event_midpoints, motion_phase
from .rf import effective_b1
from .shaped import (
    RotationCache,
    ShapedRfError,
    check_rf_model,
    default_sub_slices,
    edge_coefficients,
    expand_sub_slices,
    pulse_rotation,
    through_slice_weights,
    warn_no_waveforms,
)

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Pulse, Sequence

__all__ = ["emitting_states", "execute_graph", "simulated_states"]

_MAX_GROUPS = 16  # distinct (T2', D) pairs handled by grouped GEMMs
_CHUNK_ELEMENTS = 1 << 24  # per-voxel fallback: states x samples x voxels per chunk
_PHASOR_ELEMENTS = 1 << 22  # voxels x samples of the sample phasors per chunk (32 MiB)
_CACHE_ELEMENTS = 1 << 20  # step products kept between repetitions (8 MiB of complex64)
_ANCHOR = 32  # sample phasors computed exactly every this many samples
_K_STEP_QUANTUM = 1e-6  # 1/m, to recognise equal steps between samples
_T_STEP_QUANTUM = 1e-12  # s
_STEP_QUANTA = np.array([_K_STEP_QUANTUM] * 3 + [_T_STEP_QUANTUM])
_STACK_ROWS = 64  # states x groups x coils up to which all groups share one GEMM
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
_ROW_OF_KIND = np.array([_EDGE_RULES[kind][3] for kind in range(7)])
# per edge kind: 1 where the child is longitudinal (indexed after the transverse states), and the
# parent's block in the table [p; conj p; z; conj z]
_CHILD_OFFSET = np.array([int(not _EDGE_RULES[kind][0]) for kind in range(7)])
_BLOCK_OF_KIND = np.array(
    [(0 if _EDGE_RULES[kind][1] else 2) + int(_EDGE_RULES[kind][2]) for kind in range(7)]
)


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


# a voxel shape's response [...] to dephasings k [..., 3] (1/m) at the grid's Nyquist k [3]
_Dephasing = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_PLUS_OFFSETS = (PLUS_FROM_PLUS, PLUS_FROM_PLUS_REFOC, PLUS_FROM_Z, PLUS_FROM_Z_CONJ)
_Z_OFFSETS = (Z_FROM_Z, Z_FROM_PLUS, Z_FROM_PLUS_CONJ)


def _gather_k_np(
    kind_parent: np.ndarray, p_k: np.ndarray, p_tau: np.ndarray, z_k: np.ndarray,
    z_tau: np.ndarray, plus: bool,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """:func:`_gather_k` in float64 numpy, for passes that need no gradient through k and τ.

    A few microseconds per call instead of tens: the per-repetition bookkeeping of small arrays
    is the main pass's fixed cost.
    """
    if plus:
        table_k = np.concatenate([p_k, -p_k, z_k, -z_k, np.zeros((1, 3))])
        table_tau = np.concatenate([p_tau, -p_tau, z_tau, -z_tau, np.zeros(1)])
        sizes: tuple[int, ...] = (len(p_tau), len(p_tau), len(z_tau), len(z_tau))
        kinds: tuple[int, ...] = _PLUS_OFFSETS
    else:
        table_k = np.concatenate([z_k, p_k, -p_k, np.zeros((1, 3))])
        table_tau = np.concatenate([z_tau, p_tau, -p_tau, np.zeros(1)])
        sizes = (len(z_tau), len(p_tau), len(p_tau))
        kinds = _Z_OFFSETS
    lut = np.zeros(7, np.int64)
    lut[list(kinds)] = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    k = kind_parent[:, 0]
    # only the relaxed longitudinal state can lack an edge (k = 0, τ = 0: the table's last row)
    idx = np.where(k >= 0, lut[np.maximum(k, 0)] + kind_parent[:, 1], len(table_tau) - 1)
    return table_k[idx], table_tau[idx]


def _edge_arrays(rg: RepGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All edges of a repetition as flat arrays, cached on the repetition graph.

    ``child`` indexes ``[transverse states; longitudinal states]`` of this repetition,
    ``parent // 4`` the previous repetition's states (by the previous graph's counts, before the
    main pass keeps only its active states) and ``parent % 4`` its block in the table
    ``[p; conj p; z; conj z]``, ``kind`` the edge
    kind (sorted; ``_EDGE_RULES``).
    """
    cached: tuple[np.ndarray, np.ndarray, np.ndarray] | None = getattr(rg, "_flat_edges", None)
    if cached is not None:
        return cached
    n_plus = len(rg.plus_tau)
    pairs = [rg.edges[kind] for kind in range(len(_EDGE_RULES))]
    counts = [len(child) for child, _ in pairs]
    kinds = np.repeat(np.arange(len(pairs)), counts)
    child = np.concatenate([c for c, _ in pairs]) + _CHILD_OFFSET[kinds] * n_plus
    # parent · 4 + block of [p; conj p; z; conj z]
    parent = np.concatenate([p for _, p in pairs]) * 4 + _BLOCK_OF_KIND[kinds]
    out = (child, parent, kinds)
    rg._flat_edges = out  # type: ignore[attr-defined]
    return out


def _cis(phase: torch.Tensor, mag: torch.Tensor | None = None) -> torch.Tensor:
    """``mag · exp(i phase)`` as complex64.

    ``torch.complex(cos, sin)`` rather than ``torch.polar``: on CPU (torch 2.13) polar is not
    vectorised and takes about three times as long, and these factors dominate the main pass.
    """
    c, s = torch.cos(phase), torch.sin(phase)
    if mag is not None:
        c, s = c * mag, s * mag
    return torch.complex(c, s)


def _motion_carry(mphase: torch.Tensor) -> torch.Tensor:
    """Return the factor ``[V]`` by which a moving phantom's transverse states carry its phase.

    ``mphase [E, V]``: the repetition's phase per event beyond the still phantom's (cycles);
    the states leave the repetition with that of its last event.
    """
    return _cis(-_TWO_PI * mphase[-1])


class _GridAxes:
    """The voxels' distinct positions per axis, for step products that separate by axis.

    On a grid the positions take few distinct values per axis (``n_x + n_y + n_z`` ≪ V), so the
    phase of the steps from a block's first sample, ``Δk_j·r`` (cycles), is a sum of per-axis
    terms, each from a small table ``[n_axis, B]`` (float64, reduced modulo 1, then float32)
    gathered to the voxels by rows. ``W`` is then one cosine, sine and exponential per element,
    with no complex products (torch's complex64 products on CPU cost about four times a cosine).
    """

    def __init__(self, pos: torch.Tensor) -> None:
        self.values: list[np.ndarray] = []  # float64 [n_a], distinct positions along axis a
        self.index: list[torch.Tensor] = []  # int64 [V], each voxel's entry in values[a]
        for a in range(3):
            u, inv = torch.unique(pos[:, a].detach(), return_inverse=True)
            self.values.append(u.cpu().double().numpy())
            self.index.append(inv.reshape(-1))
        # worth it only where the tables are much smaller than the voxels
        self.useful = sum(len(u) for u in self.values) * 8 <= len(pos)

    def products(self, b0: torch.Tensor, t2: torch.Tensor, inc: np.ndarray) -> torch.Tensor:
        """``W [B, V]`` (a transposed view of ``[V, B]``) for the steps ``inc [B - 1, 4]``.

        ``inc``: float64 steps (1/m, s) between a block's samples; ``b0`` (Hz) and ``t2`` (s)
        ``[V]``. ``W[j] = exp(-2πi (Δk_j·r + B0 Δt_j)) e^{-Δt_j/T2}`` with ``Δk_j, Δt_j`` the
        running sums of the steps, summed in float64.
        """
        dev = b0.device
        k_cum = np.zeros((len(inc) + 1, 3))
        np.cumsum(inc[:, :3], 0, out=k_cum[1:])
        t_cum = np.zeros(len(inc) + 1)
        np.cumsum(inc[:, 3], out=t_cum[1:])
        cycles: torch.Tensor | None = None
        for a in range(3):
            c = self.values[a][:, None] * k_cum[None, :, a]  # [n_a, B] cycles
            c -= np.rint(c)
            table = torch.from_numpy(c.astype(np.float32)).to(dev)
            part = table.index_select(0, self.index[a]) if len(c) > 1 else table
            cycles = part if cycles is None else cycles + part
        assert cycles is not None
        t = torch.from_numpy(t_cum).to(dev, torch.float32)
        cycles = cycles + b0[:, None] * t[None]
        return _cis(-_TWO_PI * cycles, torch.exp(-t[None] / t2[:, None])).T


class _StepCache:
    """Step products ``W [B, V]`` shared between repetitions, bounded in memory.

    A pattern is kept only from its second use on: a radial or spiral readout, whose every
    spoke has new steps, would otherwise fill the cache with products that are never used
    again. The least recently used are dropped beyond ``_CACHE_ELEMENTS`` (at least two).
    ``grid(pos)`` holds the per-axis tables of :class:`_GridAxes` for the pass's voxels.
    """

    def __init__(self, limit: int = _CACHE_ELEMENTS) -> None:
        self.limit = limit
        self.kept: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.seen: set[bytes] = set()
        self.size = 0
        self._grid: tuple[torch.Tensor, _GridAxes] | None = None

    def grid(self, pos: torch.Tensor) -> _GridAxes:
        """Return the :class:`_GridAxes` of ``pos`` (computed once per positions tensor)."""
        if self._grid is None or self._grid[0] is not pos:
            self._grid = (pos, _GridAxes(pos))
        return self._grid[1]

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


def simulated_states(rg: RepGraph, min_latent_signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the states of one repetition that the main pass simulates.

    A state is simulated when its latent signal (the pre-pass's bound on what it and its
    descendants can still emit, relative to its repetition's strongest state) is at least
    ``min_latent_signal``; the relaxed longitudinal state (index 0) always is.

    Parameters
    ----------
    rg
        The repetition's graph (:class:`~mr0core.sim.graph.RepGraph`).
    min_latent_signal
        :func:`execute_graph`'s threshold (relative, dimensionless).

    Returns
    -------
    tuple of numpy.ndarray
        ``(plus, z)``: increasing int64 indices into ``rg.plus_*`` ``(Sp,)`` and ``rg.z_*``
        ``(Sz,)``; ``z[0] == 0``.
    """
    act_p = np.flatnonzero(rg.plus_latent >= min_latent_signal)
    act_z = np.flatnonzero(rg.z_latent >= min_latent_signal)
    if len(act_z) == 0 or act_z[0] != 0:
        act_z = np.concatenate([[0], act_z[act_z != 0]])
    return act_p, act_z


def emitting_states(rg: RepGraph, plus: np.ndarray, min_emitted_signal: float) -> np.ndarray:
    """Return which simulated transverse states enter a repetition's ADC signal.

    Parameters
    ----------
    rg
        The repetition's graph; it must have ADC samples (``rg.plus_emitted`` filled).
    plus
        The simulated transverse states (:func:`simulated_states`'s first array).
    min_emitted_signal
        :func:`execute_graph`'s threshold on the emitted signal (relative, dimensionless).

    Returns
    -------
    numpy.ndarray
        ``(Se,)`` int64 positions in ``plus`` (not indices into ``rg.plus_*``).
    """
    return np.flatnonzero(rg.plus_emitted[plus] >= min_emitted_signal)


def _remap(active: np.ndarray, n: int) -> np.ndarray:
    out = np.full(n, -1, np.int64)
    out[active] = np.arange(len(active))
    return out


def _flushing_denormals(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` with float denormals flushed to zero on CPU (restored afterwards).

    States that diffusion or relaxation has all but erased in some voxels reach float32
    denormals (below 1.2e-38 of M0), and arithmetic on denormals is microcoded on x86: a 3-pulse
    stimulated-echo train at 48² ran 1.3× slower with them. Flushing changes nothing above that
    magnitude. ``torch.set_flush_denormal`` has no getter, so the current mode is probed (a
    product whose exact result is a denormal is 0 when flushing is on) and kept if it was on.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        probe = torch.tensor(1e-30, dtype=torch.float32) * torch.tensor(1e-9, dtype=torch.float32)
        was_on = bool(probe == 0)
        if was_on or not torch.set_flush_denormal(True):
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        finally:
            torch.set_flush_denormal(False)

    return wrapper


def _edges_torch(
    rg: RepGraph, graph: Graph, r: int, act_p: np.ndarray, act_z: np.ndarray,
    p_active: np.ndarray, z_active: np.ndarray, state: torch.Tensor, p_mag: torch.Tensor,
    z_mag: torch.Tensor, fast: bool, coef: torch.Tensor, n_state: int,
) -> torch.Tensor:  # fmt: skip
    """Return repetition ``r``'s simulated states ``[act_p; act_z]`` after its pulse (torch).

    ``coef [6, S]``: the pulse's edge coefficients. With ``fast`` (no autograd) the parents are
    the rows of ``state`` (the previous repetition's ``[p; z]``), else of ``p_mag`` and
    ``z_mag``. The definition of ``mainpass_kernel.propagate``'s edge step.
    """
    dev = coef.device
    n_ap, n_plus = len(act_p), len(rg.plus_tau)
    child_map = np.full(n_plus + len(rg.z_tau), -1, np.int64)
    child_map[act_p] = np.arange(n_ap)
    child_map[n_plus + act_z] = np.arange(n_ap, n_ap + len(act_z))
    n_pp, n_pz = len(p_active), len(z_active)
    prev_map = np.full((4, max(_prev_count(graph, r, True), _prev_count(graph, r, False))),
                       -1, np.int64)  # fmt: skip
    # rows of the parents' table: [p; conj p; z; conj z] with autograd, else the previous
    # repetition's [p; z] (conjugated after the gather)
    offsets = (0, 0, n_pp, n_pp) if fast else (0, n_pp, 2 * n_pp, 2 * n_pp + n_pz)
    for block, offset in enumerate(offsets):
        active = p_active if block < 2 else z_active
        prev_map[block, active] = np.arange(offset, offset + len(active))
    e_child, e_parent, e_kind = _edge_arrays(rg)
    ci = child_map[e_child]
    pi = prev_map[e_parent % 4, e_parent // 4]
    ok = (ci >= 0) & (pi >= 0)
    # every edge is coef[row] · (parent or its conjugate): one gather of the parents' rows
    # from [p; conj p; z; conj z], one product with the gathered coefficients, one scatter
    new = torch.zeros((n_ap + len(act_z), n_state), dtype=torch.complex64, device=dev)
    if ok.any():
        ci_t = torch.from_numpy(ci[ok]).to(dev)
        pi_t = torch.from_numpy(pi[ok]).to(dev)
        if not fast:
            table = torch.cat([p_mag, p_mag.conj(), z_mag, z_mag.conj()])
            row_t = torch.from_numpy(_ROW_OF_KIND[e_kind[ok]]).to(dev)
            new.index_add_(0, ci_t, table.index_select(0, pi_t) * coef.index_select(0, row_t))
        else:
            # on the float view: complex index_select and index_add_ take 1.3× and 4.7×
            # as long on CPU (torch 2.13); the edges come sorted by kind, so each kind's
            # conjugation and coefficient apply to its slice in place
            src = torch.view_as_complex(torch.view_as_real(state).index_select(0, pi_t))
            cuts = np.searchsorted(e_kind[ok], np.arange(8)).tolist()
            for kind, (_, _, conj, row) in _EDGE_RULES.items():
                lo, hi = cuts[kind], cuts[kind + 1]
                if hi > lo:
                    if conj:
                        src[lo:hi].imag.neg_()
                    src[lo:hi] *= coef[row]
            torch.view_as_real(new).index_add_(0, ci_t, torch.view_as_real(src))
    return new


_MAIN_KERNEL: Any = None  # mainpass_kernel once imported; False: unavailable


def _main_kernel() -> Any:
    """Return :mod:`.mainpass_kernel` (numba), or None where numba cannot be imported."""
    global _MAIN_KERNEL
    if _MAIN_KERNEL is None:
        try:
            from . import mainpass_kernel

            _MAIN_KERNEL = mainpass_kernel
        # RuntimeError: numba found no writable cache directory (set NUMBA_CACHE_DIR)
        except (ImportError, RuntimeError, OSError) as exc:  # pragma: no cover - a dependency
            message = f"numba unavailable ({exc}): the PDG main pass runs torch operations on CPU"
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            _MAIN_KERNEL = False
    return _MAIN_KERNEL or None


@_flushing_denormals
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
        :func:`~mr0core.sim.shaped.default_sub_slices` (for one-voxel-thick grids under a
        slice-selective pulse it follows the slice profile and the flip, up to 64; else 1).
        The state propagation's cost grows with it; the signal is formed per voxel.

    Returns
    -------
    torch.Tensor
        ``[ADC samples, coils]`` complex64 signal (and the per-sample magnetisations if asked).
    """
    if len(graph) != len(seq):
        raise ValueError(f"the graph has {len(graph)} repetitions, the sequence {len(seq)}")
    shaped = check_rf_model(rf_model) == "shaped"
    moving = data.voxel_motion is not None or data.phantom_motion is not None
    if shaped and moving:
        raise ShapedRfError("rf_model='shaped' with a moving phantom (phantom_motion or "
                            "voxel_motion) is not simulated yet")  # fmt: skip
    n_sub = 1
    if shaped:
        warn_no_waveforms(seq)
        n_sub = default_sub_slices(seq, data) if sub_slices is None else int(sub_slices)
    elif sub_slices is not None:
        raise ShapedRfError(f"sub_slices={sub_slices} needs rf_model='shaped'")
    rotations: RotationCache = {}  # shaped pulses' Bloch integrations, shared between equal pulses
    dev = data.device
    cdt = torch.complex64
    fdt = torch.float32
    # The signal is formed per voxel of `data`; the states are propagated per sub-slice of
    # `full` (n_sub of them per voxel, adjacent; mr0core.sim.shaped, "Through-slice
    # integration"), whose own arrays are the ones named *_f below.
    full = expand_sub_slices(data, n_sub) if n_sub > 1 else data
    thickness = float(0.5 / data.nyquist[2]) if n_sub > 1 else 0.0
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
    if n_sub > 1:  # the sub-slices' weights integrate along z: no voxel response along z
        nyquist = torch.cat([nyquist[:2], torch.full_like(nyquist[2:], math.inf)])
    groups, group_inv = _groups(t2d, diff)
    # the grouped GEMM shares one T2' and D per group, so gradients with respect to them need the
    # per-voxel path
    exact = return_mag_adc or groups is None or t2d.requires_grad or diff.requires_grad
    z0 = torch.ones(n_vox, dtype=fdt, device=dev) if intitial_mag is None else (
        intitial_mag.to(dev, fdt).reshape(n_vox)
    )  # fmt: skip
    # the state propagation's per-sub-slice arrays (the voxel's own when n_sub is 1)
    pos_f, b0_f, b1_f = pos, b0, b1
    if n_sub > 1:
        pos_f, b0_f, b1_f = full.voxel_pos.to(fdt), full.B0.to(fdt), full.B1.to(cdt)
    bounds: list[tuple[int, int]] = []
    group_pd_coil = None
    order = None
    if not exact:
        # Sort the voxels by group once, so that each group is a contiguous slice (no gathers
        # per repetition). The signal is a sum over voxels, so the order does not matter.
        assert groups is not None
        order = torch.argsort(group_inv, stable=True)
        pos, b0, t1, t2, t2d, diff, z0 = (x[order] for x in (pos, b0, t1, t2, t2d, diff, z0))
        pd_coil, b1 = pd_coil[order], b1[:, order]
        sub = (order[:, None] * n_sub + torch.arange(n_sub, device=dev)).reshape(-1)
        pos_f, b0_f, b1_f = pos_f[sub], b0_f[sub], b1_f[:, sub]
        ends = torch.cumsum(torch.bincount(group_inv, minlength=len(groups)), 0).tolist()
        bounds = list(zip([0, *ends[:-1]], ends, strict=True))
        group_pd_coil = torch.zeros((len(bounds), n_coil, n_vox), dtype=cdt, device=dev)
        for gi, (lo, hi) in enumerate(bounds):
            group_pd_coil[gi, :, lo:hi] = pd_coil[lo:hi].T
    # a moving phantom: per event, the phase beyond the still phantom's (mr0core.sim.motion)
    motion = MotionSampler(data, pos, order) if moving else None
    motion_grad = motion is not None and motion.requires_grad(torch.zeros(1, dtype=fdt, device=dev))

    static_grad = pos.requires_grad or b0.requires_grad or t2.requires_grad
    # Without gradients through the sequence, the states' k and τ and the repetitions' event
    # sums are float64 numpy (microseconds per repetition, and exact); with them, torch.
    seq_grad = size.requires_grad or any(
        rep.gradm.requires_grad or rep.event_time.requires_grad for rep in seq
    )
    # Without autograd, the states of a repetition are one tensor [transverse; longitudinal],
    # relaxed in place, that the next repetition gathers its parents from
    fast = not torch.is_grad_enabled() or not (
        seq_grad or static_grad or motion_grad or any(
            x.requires_grad for x in (t1, t2d, diff, pd_coil, b1, z0)
        ) or any(rep.pulse.angle.requires_grad or rep.pulse.phase.requires_grad
                 or rep.pulse.shim_array.requires_grad for rep in seq)
    )  # fmt: skip
    coef_cache: dict[tuple[Any, ...], torch.Tensor] = {}
    relax_rates: dict[float, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    size_np = size.detach().cpu().double().numpy()
    phasor_cache = _StepCache()
    p_k = torch.zeros((0, 3), dtype=fdt, device=dev)
    p_tau = torch.zeros(0, dtype=fdt, device=dev)
    z_k = torch.zeros((1, 3), dtype=fdt, device=dev)
    z_tau = torch.zeros(1, dtype=fdt, device=dev)
    pk_np, ptau_np = np.zeros((0, 3)), np.zeros(0)
    zk_np, ztau_np = np.zeros((1, 3)), np.zeros(1)
    # the per-sub-slice T1, T2, D and initial Mz (the voxel's own when n_sub is 1)
    t1_f, t2_f, diff_f, z0_f = (torch.repeat_interleave(x, n_sub) if n_sub > 1 else x
                                for x in (t1, t2, diff, z0))  # fmt: skip
    n_state = n_vox * n_sub  # columns of the state tensors
    p_mag = torch.zeros((0, n_state), dtype=cdt, device=dev)
    z_mag = z0_f.to(cdt).unsqueeze(0)
    state = z_mag
    p_active = np.zeros(0, np.int64)
    z_active = np.zeros(1, np.int64)
    signals: list[torch.Tensor | None] = []
    mags: list[torch.Tensor] = []
    batch = None
    if fast and not exact and group_pd_coil is not None and motion is None:
        assert groups is not None
        batch = _SignalBatch(pos, b0, t2, groups, group_pd_coil, bounds, nyquist,
                             data.dephasing_func, phasor_cache)  # fmt: skip
    four_pi2 = 4 * math.pi**2
    t_start = 0.0  # s, the repetition's start (for the motion's times)
    # On CPU without autograd, a compiled kernel does each repetition's state update
    # (mr0core.sim.mainpass_kernel); its per-voxel inputs, as numpy, in the sorted voxel order.
    compiled = None if seq_grad else _main_kernel()  # its numpy bookkeeping, compiled
    kernel = compiled if fast and dev.type == "cpu" else None
    d_values, d_index = np.zeros(1), np.zeros(n_vox, np.int64)  # each voxel's D, by value
    if kernel is not None:
        d_values, d_index = np.unique(diff.numpy().astype(np.float64), return_inverse=True)
    decays: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def tensor(x: np.ndarray, dtype: torch.dtype = fdt) -> torch.Tensor:
        return torch.from_numpy(x).to(dev, dtype)

    for r, (rep, rg) in enumerate(
        tqdm(list(zip(seq, graph, strict=True)), desc="PDG", disable=not print_progress)
    ):
        # ---- states of this repetition: the active ones and their parents' rows
        act_p, act_z = simulated_states(rg, min_latent_signal)
        n_ap, n_plus = len(act_p), len(rg.plus_tau)
        if kernel is not None:  # the state update runs below, in the compiled kernel
            if shaped and rep.pulse.waveform is not None:
                base, pulse_phase = _shaped_base(
                    rep.pulse, pos_f, b0_f, b1_f, r, size if seq.normalized_grads else None,
                    rotations, coef_cache,
                )  # fmt: skip
            else:
                base, pulse_phase = _pulse_base(rep.pulse, b1_f, r, coef_cache)
        else:
            new = _edges_torch(
                rg, graph, r, act_p, act_z, p_active, z_active, state, p_mag, z_mag, fast,
                _shaped_coefficients(
                    rep.pulse, pos_f, b0_f, b1_f, r, size if seq.normalized_grads else None,
                    rotations, coef_cache,
                ) if shaped and rep.pulse.waveform is not None
                else _pulse_coefficients(rep.pulse, b1_f, r, coef_cache),
                n_state,
            )  # fmt: skip
            new_p, new_z = new[:n_ap], new[n_ap:]

        # ---- the repetition's events (gradients scaled to the phantom size)
        if seq_grad:
            new_p_k, new_p_tau = _gather_k(rg.plus_def, p_k, p_tau, z_k, z_tau, plus=True)
            new_z_k, new_z_tau = _gather_k(rg.z_def, p_k, p_tau, z_k, z_tau, plus=False)
            act_p_t = tensor(act_p, torch.int64)
            k0, tau0 = new_p_k[act_p_t], new_p_tau[act_p_t]
            zk_act = new_z_k[tensor(act_z, torch.int64)]
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
            total = dt.sum()
            n_events = len(dt)
        else:
            dt_np = rep.event_time.detach().cpu().double().numpy()
            g_np = rep.gradm.detach().cpu().double().numpy()
            if seq.normalized_grads:
                g_np = g_np / size_np
            if compiled is not None:  # the same in one call each
                nk_p, ntau_p = compiled.gather_k(*_contiguous(rg.plus_def, pk_np, ptau_np, zk_np,
                                                              ztau_np))  # fmt: skip
                nk_z, ntau_z = compiled.gather_k(*_contiguous(rg.z_def, pk_np, ptau_np, zk_np,
                                                              ztau_np))  # fmt: skip
                kcum_np, tcum_np, lin_np, const_np = compiled.event_sums(*_contiguous(dt_np, g_np))
            else:
                nk_p, ntau_p = _gather_k_np(rg.plus_def, pk_np, ptau_np, zk_np, ztau_np, True)
                nk_z, ntau_z = _gather_k_np(rg.z_def, pk_np, ptau_np, zk_np, ztau_np, False)
                kcum_np = np.cumsum(g_np, 0)
                tcum_np = np.cumsum(dt_np)
                kprev_np = kcum_np - g_np
                lin_np = np.cumsum(dt_np[:, None] * (2 * kprev_np + g_np), 0)
                const_np = np.cumsum(dt_np * ((kprev_np**2).sum(1) + (kprev_np * g_np).sum(1)
                                              + (g_np**2).sum(1) / 3))  # fmt: skip
            k0_np, tau0_np, zk_act_np = nk_p[act_p], ntau_p[act_p], nk_z[act_z]
            total_np = float(dt_np.sum())
            n_events = len(dt_np)
        mphase = None  # [E, V] cycles, the motion's phase beyond the still phantom's
        if motion is not None and n_events:
            times = event_midpoints(rep.event_time.to(dev), t_start)
            moments = g if seq_grad else tensor(g_np)
            mphase = motion_phase(motion, times, moments)
        if motion is not None:
            t_start += float(rep.event_time.detach().double().sum())
        adc_np = np.flatnonzero(rep.adc_usage.detach().cpu().numpy() > 0)
        emit = np.zeros(0, np.int64)
        if len(adc_np):
            emit = emitting_states(rg, act_p, min_emitted_signal)
        if kernel is not None:
            # the pulse's edges, the emitting states' copy and the relaxation to the
            # repetition's end, in one call
            if n_events:
                b_values = four_pi2 * np.concatenate([
                    (k0_np**2).sum(1) * total_np + k0_np @ lin_np[-1] + const_np[-1],
                    (zk_act_np**2).sum(1) * total_np,
                ])  # fmt: skip
                decay = decays.get(total_np)
                if decay is None:
                    if len(decays) >= 64:  # bounded: a few distinct durations are usual
                        decays.clear()
                    e1 = torch.exp(-total_np / t1)
                    decay = decays[total_np] = (torch.exp(-total_np / t2).numpy(), e1.numpy(),
                                                (1 - e1).numpy())  # fmt: skip
            else:  # no events: no relaxation
                b_values = np.zeros(n_ap + len(act_z))
                decay = (np.ones(n_vox, np.float32),) * 2 + (np.zeros(n_vox, np.float32),)
            new_np, emitted_np = kernel.propagate(
                *_contiguous(state.numpy(), base.numpy()), _phase_factors(pulse_phase),
                *_contiguous(*_edge_arrays(rg), act_p, act_z), n_plus, len(rg.z_tau),
                *_contiguous(p_active, z_active, emit), bool(n_events), b_values, *decay,
                d_index, d_values, n_sub,
            )  # fmt: skip
            new = torch.from_numpy(new_np)
            new_p, new_z = new[:n_ap], new[n_ap:]
        # sub-slices: the runs of ADC samples with one z moment, each weighted on its own
        z_runs = None
        if len(adc_np) and n_sub > 1 and not seq_grad:
            z_runs = _z_runs(kcum_np[adc_np, 2].astype(np.float32).astype(np.float64), thickness)
        if (
            len(adc_np)
            and batch is not None
            and not seq_grad
            and not static_grad
            and (z_runs is None or len(z_runs) == 1)
            and batch.takes(len(emit), len(adc_np))
        ):
            # deferred: repetitions with few emitting states share their operations; their
            # arrays stay numpy (float64) until the batch converts them at once
            signals.append(None)
            k_adc, t_adc = kcum_np[adc_np], tcum_np[adc_np]
            m_e = (
                torch.from_numpy(emitted_np)
                if kernel is not None
                else new_p[tensor(emit, torch.int64)]
            )
            if z_runs is not None:  # one weighting of the sub-slices for all samples
                kz = tensor(k0_np[emit, 2]) + tensor(kcum_np[adc_np[:1], 2])
                m_e = _through_slice(m_e, kz, thickness, n_vox, n_sub)
            batch.add(
                len(signals) - 1,
                m_e,
                k0_np[emit], tau0_np[emit], k_adc, t_adc, lin_np[adc_np], const_np[adc_np],
                rep.adc_phase.detach().cpu().numpy()[adc_np], (k_adc, t_adc),
            )  # fmt: skip
            if batch.full():
                batch.flush(signals)
        elif len(adc_np):
            steps = None
            adc = tensor(adc_np, torch.int64)
            if seq_grad:
                K, T, L, C = kcum[adc], tcum[adc], lin_cum[adc], const_cum[adc]
                emit_t = tensor(emit, torch.int64)
                k0_e, tau0_e = k0[emit_t], tau0[emit_t]
            else:
                K, T = tensor(kcum_np[adc_np]), tensor(tcum_np[adc_np])
                L, C = tensor(lin_np[adc_np]), tensor(const_np[adc_np])
                k0_e, tau0_e = tensor(k0_np[emit]), tensor(tau0_np[emit])
                if not exact and not static_grad and mphase is None:
                    # float64 sample positions, to find the samples that share a step (k, t)
                    steps = (kcum_np[adc_np], tcum_np[adc_np])
            m_e = (
                torch.from_numpy(emitted_np)
                if kernel is not None
                else new_p[tensor(emit, torch.int64)]
            )
            adc_phase = rep.adc_phase.to(dev, fdt)[adc]
            runs = [slice(0, len(adc_np))]
            if n_sub > 1:
                runs = z_runs or _z_runs(K[:, 2].detach().cpu().double().numpy(), thickness)
                if len(runs) == 1:  # one weighting of the sub-slices for all samples
                    m_e = _through_slice(m_e, k0_e[:, 2] + K[0, 2], thickness, n_vox, n_sub)
            if len(runs) > 1:  # a z gradient during the ADC: each run of samples on its own
                parts = []
                for run in runs:
                    m_run = _through_slice(m_e, k0_e[:, 2] + K[run.start, 2], thickness,
                                           n_vox, n_sub)  # fmt: skip
                    sig, mag_adc = _signal(
                        m_run, k0_e, tau0_e, K[run], T[run], L[run], C[run], adc_phase[run],
                        pos, b0, t2, t2d, diff, pd_coil, nyquist, data.dephasing_func, groups,
                        bounds, exact, None, phasor_cache, group_pd_coil,
                    )  # fmt: skip
                    parts.append(sig)
                    mags.extend(mag_adc)
                signals.append(torch.cat(parts))
            else:
                sig, mag_adc = _signal(
                    m_e, k0_e, tau0_e, K, T, L, C, adc_phase, pos, b0,
                    t2, t2d, diff, pd_coil, nyquist, data.dephasing_func, groups, bounds, exact,
                    steps, phasor_cache, group_pd_coil,
                    None if mphase is None else mphase[adc],
                )  # fmt: skip
                signals.append(sig)
                mags.extend(mag_adc)

        # ---- to the end of the repetition
        if n_events:
            if seq_grad:
                b_plus = four_pi2 * ((k0**2).sum(1) * total + k0 @ lin_cum[-1] + const_cum[-1])
                b_z = four_pi2 * (zk_act**2).sum(1) * total
                p_k, p_tau = new_p_k + kcum[-1], new_p_tau + total
                z_k, z_tau = new_z_k, new_z_tau
            else:
                pk_np, ptau_np = nk_p + kcum_np[-1], ntau_p + total_np
                zk_np, ztau_np = nk_z, ntau_z
                if kernel is None:
                    b_plus = tensor(four_pi2 * ((k0_np**2).sum(1) * total_np + k0_np @ lin_np[-1]
                                                + const_np[-1]))  # fmt: skip
                    b_z = tensor(four_pi2 * (zk_act_np**2).sum(1) * total_np)
                    total = torch.tensor(total_np, dtype=fdt)
            if kernel is not None:  # relaxed in the kernel
                if mphase is not None:  # a moving phantom: the phase it carried on
                    new[:n_ap] *= _motion_carry(mphase)
                p_mag, z_mag = new[:n_ap], new[n_ap:]
            elif fast:
                # both kinds in one set of in-place operations on [transverse; longitudinal],
                # with the per-voxel rates of this duration computed once per duration
                rates = relax_rates.get(total_np)
                if rates is None:
                    if len(relax_rates) >= 64:  # bounded: a few distinct durations are usual
                        relax_rates.clear()
                    rates = relax_rates[total_np] = (total / t2, total / t1,
                                                     1 - torch.exp(-total / t1))  # fmt: skip
                # a voxel's sub-slices (adjacent, also after the group sort) share T1, T2 and
                # D: one factor per voxel, broadcast over its sub-slices
                f = torch.cat([b_plus, b_z])[:, None] * diff
                f[:n_ap] += rates[0]
                f[n_ap:] += rates[1]
                f = f.neg_().exp_()
                if n_sub > 1:
                    new.view(len(new), -1, n_sub).mul_(f[:, :, None])
                else:
                    new.mul_(f)
                if mphase is not None:
                    new[:n_ap] *= _motion_carry(mphase)
                p_mag, z_mag = new[:n_ap], new[n_ap:]
                # recovery feeds the relaxed state
                z_mag[0].view(n_vox, n_sub).add_(rates[2][:, None])
            else:
                p_mag = _relax(new_p, total / t2_f, b_plus, diff_f)
                e1_t1 = torch.exp(-total / t1_f)
                z_mag = _relax(new_z, total / t1_f, b_z, diff_f)
                if z_mag.requires_grad:
                    z_mag = torch.cat([z_mag[:1] + (1 - e1_t1), z_mag[1:]])
                else:
                    z_mag[0] += 1 - e1_t1  # recovery feeds the relaxed state
                if mphase is not None:  # after the in-place updates of `new`'s views
                    p_mag = p_mag * _motion_carry(mphase)
        else:
            p_mag, z_mag = new_p, new_z
            if seq_grad:
                p_k, p_tau, z_k, z_tau = new_p_k, new_p_tau, new_z_k, new_z_tau
            else:
                pk_np, ptau_np, zk_np, ztau_np = nk_p, ntau_p, nk_z, ntau_z
        p_active, z_active = act_p, act_z
        state = new
        if clear_state_mag and not torch.is_grad_enabled():
            del new_p, new_z, new
        if progress_callback is not None:
            progress_callback(r + 1, len(graph))

    if batch is not None:
        batch.flush(signals)
    done = [s for s in signals if s is not None]
    assert len(done) == len(signals)  # the batch's flush filled every slot it held
    out = torch.cat(done) if done else torch.zeros((0, n_coil), dtype=cdt, device=dev)
    if return_mag_adc:
        return out, mags
    return out


def _contiguous(*arrays: np.ndarray) -> list[np.ndarray]:
    """Return C-contiguous, writeable copies where needed (numba compiles one layout)."""
    return [a if a.flags.c_contiguous and a.flags.writeable else np.array(a) for a in arrays]


def _pulse_coefficients(
    pulse: object, b1: torch.Tensor, r: int, cache: dict[tuple[Any, ...], torch.Tensor]
) -> torch.Tensor:
    """Return the six edge coefficients ``[6, V]`` of an instantaneous pulse (``_EDGE_RULES``).

    Without gradients, the per-voxel part (flip angle × |B1eff|, phase of B1eff) is computed
    once per distinct (angle, shim) (:func:`_pulse_base`) and the pulse phase φ enters as one
    factor per row (1, e^{2iφ}, e^{iφ}, 1, e^{-iφ}, e^{iφ}), so an RF-spoiled train costs one
    product per pulse.
    """
    angle_t, phase_t = pulse.angle, pulse.phase  # type: ignore[attr-defined]
    shim = pulse.shim_array  # type: ignore[attr-defined]
    if angle_t.requires_grad or phase_t.requires_grad or shim.requires_grad or b1.requires_grad:
        b1eff = effective_b1(shim.to(b1.device, torch.float32), b1, r)  # [V]
        return _rotation_rows(angle_t.to(b1.device, torch.float32), b1eff,
                              phase_t.to(b1.device, torch.float32))  # fmt: skip
    return _phased(*_pulse_base(pulse, b1, r, cache))


def _pulse_base(
    pulse: object, b1: torch.Tensor, r: int, cache: dict[tuple[Any, ...], torch.Tensor]
) -> tuple[torch.Tensor, float]:
    """Return an instantaneous pulse's coefficients ``[6, V]`` at phase 0 and its phase (rad).

    Without gradients only; the coefficients are kept per distinct (angle, shim) in ``cache``.
    """
    angle_t, shim = pulse.angle, pulse.shim_array  # type: ignore[attr-defined]
    key = (float(angle_t), shim.detach().cpu().numpy().tobytes())
    base = cache.get(key)
    if base is None:
        b1eff = effective_b1(shim.to(b1.device, torch.float32), b1, r)  # [V]
        base = _rotation_rows(angle_t.to(b1.device, torch.float32), b1eff, None)
        if len(cache) >= 64:  # bounded: sequences with many distinct flips recompute
            cache.pop(next(iter(cache)))
        cache[key] = base
    return base, float(pulse.phase)  # type: ignore[attr-defined]


def _rotation_rows(
    angle: torch.Tensor, b1eff: torch.Tensor, phase: torch.Tensor | None
) -> torch.Tensor:
    """Return the edge coefficients ``[6, V]`` of flip ``angle·|b1eff|`` at ``∠b1eff + phase``."""
    flip = angle * b1eff.abs()
    phi = torch.angle(b1eff)
    if phase is not None:
        phi = phi + phase
    c2 = torch.cos(flip / 2) ** 2
    s2 = torch.sin(flip / 2) ** 2
    e1 = _cis(phi)
    e1sa = e1 * torch.sin(flip)
    z_from_plus = -1j * e1sa.conj()
    cdt = torch.complex64
    return torch.stack([c2.to(cdt), e1 * e1 * s2, -0.5j * e1sa, torch.cos(flip).to(cdt),
                        z_from_plus, z_from_plus.conj()])  # fmt: skip


def _shaped_coefficients(
    pulse: Pulse, pos: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, r: int,
    normalized_size: torch.Tensor | None, rotations: RotationCache,
    cache: dict[tuple[Any, ...], torch.Tensor],
) -> torch.Tensor:  # fmt: skip
    """Return the six edge coefficients ``[6, V]`` of a shaped pulse (``_EDGE_RULES``).

    As for instantaneous pulses, without gradients the per-voxel part (the Bloch integration,
    B1's phase) is kept once per distinct (waveform, angle, shim) (:func:`_shaped_base`) and the
    pulse phase φ enters as one factor per row: the rotation's ``b`` carries ``e^{iφ}``, and the
    rows hold ā², b², ā b, |a|² − |b|², ā b̄ and its conjugate. An RF-spoiled train then costs
    one [6, V] product per pulse instead of B1eff, the phase factor and the six products (a 64²
    FLASH at 9 sub-slices: 2.7 ms of 7.8 ms per repetition).
    """
    wave = pulse.waveform
    assert wave is not None
    inputs = (pulse.angle, pulse.phase, pulse.shim_array, wave.b1, wave.grad, pos, b0, b1)
    if any(t.requires_grad for t in inputs):
        return edge_coefficients(*pulse_rotation(pulse, pos, b0, b1, r, normalized_size,
                                                 rotations))  # fmt: skip
    return _phased(*_shaped_base(pulse, pos, b0, b1, r, normalized_size, rotations, cache))


def _shaped_base(
    pulse: Pulse, pos: torch.Tensor, b0: torch.Tensor, b1: torch.Tensor, r: int,
    normalized_size: torch.Tensor | None, rotations: RotationCache,
    cache: dict[tuple[Any, ...], torch.Tensor],
) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Return a shaped pulse's coefficients ``[6, V]`` at phase 0 and its phase (rad).

    Without gradients only; kept per distinct (waveform, angle, shim) in ``cache``.
    """
    wave = pulse.waveform
    assert wave is not None
    phase = float(pulse.phase)
    key = (
        "shaped",
        id(wave),
        float(pulse.angle),
        pulse.shim_array.detach().cpu().numpy().tobytes(),
    )
    base = cache.get(key)
    if base is None:
        rot_a, rot_b = pulse_rotation(pulse, pos, b0, b1, r, normalized_size, rotations)
        base = edge_coefficients(rot_a, rot_b * complex(math.cos(phase), -math.sin(phase)))
        if len(cache) >= 64:  # bounded, shared with the instantaneous pulses' entries
            cache.pop(next(iter(cache)))
        cache[key] = base
    return base, phase


def _phase_factors(phase: float) -> np.ndarray:
    """Return the pulse phase's factor per coefficient row, complex128 ``[6]`` (``_EDGE_RULES``)."""
    e = complex(math.cos(phase), math.sin(phase))
    return np.array([1, e * e, e, 1, e.conjugate(), e], np.complex128)


def _phased(base: torch.Tensor, phase: float) -> torch.Tensor:
    """Apply the pulse phase ``phase`` (rad) to ``base [6, V]`` (phase 0), row by row."""
    if phase == 0.0:
        return base
    factors = torch.from_numpy(_phase_factors(phase)).to(base.device, base.dtype)
    return base * factors[:, None]


def _z_runs(kz: np.ndarray, thickness: float) -> list[slice]:
    """Return the runs of ADC samples with one z moment ``kz [T]`` (1/m, ±1e-4 cycles)."""
    change = np.flatnonzero(np.abs(np.diff(kz)) * thickness > 1e-4) + 1
    cuts = [0, *change.tolist(), len(kz)]
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def _through_slice(
    m: torch.Tensor, kz: torch.Tensor, thickness: float, n_vox: int, n_sub: int
) -> torch.Tensor:
    """Each voxel's signal-weighted sum ``[S, V]`` of its sub-slices' states ``m [S, V·n]``.

    ``kz [S]``: the states' z dephasing at the samples (1/m); the weights are
    :func:`mr0core.sim.shaped.through_slice_weights` (the integral of the polynomial through the
    sub-slices times the dephasing across the voxel's ``thickness``, m).
    """
    weights = through_slice_weights(kz, thickness, n_sub)  # [S, n]
    return torch.bmm(m.reshape(len(m), n_vox, n_sub), weights[:, :, None]).squeeze(2)


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
    pd_coil: torch.Tensor, nyquist: torch.Tensor, dephasing_func: _Dephasing,
    groups: torch.Tensor | None, bounds: list[tuple[int, int]], exact: bool,
    steps: tuple[np.ndarray, np.ndarray] | None = None,
    cache: _StepCache | None = None,
    group_pd_coil: torch.Tensor | None = None,
    motion: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:  # fmt: skip
    """Signal ``[samples, coils]`` of transverse states ``m [S, V]`` at one repetition's samples.

    ``K [T, 3]``, ``T [T]``: gradient moment and time since the repetition's start at each
    sample; ``L [T, 3]`` and ``C [T]``: the linear and constant parts of the within-repetition
    b-value (b = 4π² (|k0|² T + k0·L + C)). ``steps``: ``K``, ``T`` in float64 numpy, given
    when nothing needs gradients through them, and ``cache``: for :func:`_phasor_chunks`.
    ``group_pd_coil [G, C, V]``: PD · coil of each voxel in its group's row, zero elsewhere;
    with few states, all groups then share one GEMM (fewer, larger operations: with one or two
    emitting states, as in spoiled gradient echoes, the per-group operations cost more than the
    arithmetic). ``motion [T, V]``: a moving phantom's phase at each sample beyond the still
    phantom's (cycles, :func:`mr0core.sim.motion.motion_phase`), common to all states.
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
        n_g = len(groups)
        r2d, dg = 1 / groups[:, 0], groups[:, 1]
        if group_pd_coil is not None and n_s * n_coil * n_g <= _STACK_ROWS:
            # all groups in one GEMM: rows (state, group, coil) with the other groups' voxels 0
            mc = (M[:, None, None, :] * group_pd_coil[None]).reshape(n_s * n_g * n_coil, -1)
            f_all = w[:, None] * torch.exp(
                -tau_st.abs()[:, None] * r2d[None, :, None] - b_st[:, None] * dg[None, :, None]
            )  # [S, G, T]
            outs = []
            for sl, A, patterns in _phasor_chunks(pos, b0, t2, K, T, steps, cache, motion):
                a = _project(mc, A, patterns, sl.stop - sl.start).reshape(n_s, n_g, n_coil, -1)
                outs.append(torch.einsum("sgct,sgt->tc", a, f_all[:, :, sl].to(cdt)))
            return torch.cat(outs) * receive[:, None], []
        # fold PD and the coil into the states: one GEMM [S·C, V_g] @ [V_g, T] per group
        mc_groups = [
            (M[:, lo:hi, None] * pd_coil[lo:hi]).transpose(1, 2).reshape(n_s * n_coil, hi - lo)
            for lo, hi in bounds
        ]
        outs = []
        for sl, A, patterns in _phasor_chunks(pos, b0, t2, K, T, steps, cache, motion):
            n_c = sl.stop - sl.start
            out = torch.zeros((n_c, n_coil), dtype=cdt, device=pos.device)
            for gi, (lo, hi) in enumerate(bounds):
                if hi == lo:
                    continue
                part = [(b, W[:, lo:hi]) for b, W in patterns] if patterns is not None else None
                a = _project(mc_groups[gi], A[lo:hi], part, n_c).reshape(
                    n_s, n_coil, -1
                )  # [S, C, Tc]
                f = w[:, sl] * torch.exp(-tau_st[:, sl].abs() * r2d[gi] - b_st[:, sl] * dg[gi])
                out = out + torch.einsum("sct,st->tc", a, f.to(cdt))
            outs.append(out)
        return torch.cat(outs) * receive[:, None], []
    # exact per-voxel path: states x samples x voxels in chunks
    sample_phase = pos @ K.T + b0[:, None] * T[None]
    if motion is not None:
        sample_phase = sample_phase + motion.T
    P = _cis(-_TWO_PI * sample_phase, torch.exp(-T[None] / t2[:, None]))
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


_BATCH_ELEMENTS = 1 << 20  # (state, block, group, coil) x voxels of one batched projection
# samples per repetition up to which it is batched: longer readouts (multi-echo, EPI) amortise
# their fixed costs by themselves, and their batched (state, block) rows would not stay in cache
_BATCH_SAMPLES = 4 * 32
# rows × voxels of one repetition up to which it is batched: beyond, its own operations are
# large enough that batching gains nothing (RF-spoiled FLASH and TSE at 96²: 3-7 % slower
# batched) and only holds memory; at 48² batching made them 15-20 % faster, DW-SE 40 %
_BATCH_REP_ELEMENTS = 1 << 16


class _SignalBatch:
    """The signal of many repetitions with few emitting states, in one set of operations.

    :func:`_signal` costs a few dozen tensor operations per repetition, whatever its size; with
    one or two emitting states (spoiled gradient echoes, spin-echo trains, diffusion) those fixed
    costs were most of the main pass. A batch collects the repetitions' emitting states and
    samples and computes, for all at once: the states' phases, the anchor phasors of every
    block of ``_ANCHOR`` samples (:func:`_phasor_chunks`), one GEMM per step pattern shared by
    all the blocks that advance alike, and the per-(state, sample) factors. The arithmetic is
    :func:`_signal`'s stacked-groups path; only the grouping of the operations differs. The
    voxels are sorted by (T2′, D) group (``bounds``: each group's slice), so each GEMM runs per
    group over its own voxels, and the rows carry no group dimension until the projection.
    """

    def __init__(
        self, pos: torch.Tensor, b0: torch.Tensor, t2: torch.Tensor, groups: torch.Tensor,
        group_pd_coil: torch.Tensor, bounds: list[tuple[int, int]], nyquist: torch.Tensor,
        dephasing_func: _Dephasing, cache: _StepCache,
    ) -> None:  # fmt: skip
        self.pos, self.b0, self.t2 = pos, b0, t2
        self.r2d, self.dg = 1 / groups[:, 0], groups[:, 1]
        self.gpc = group_pd_coil  # [G, C, V]
        self.bounds = bounds  # [(lo, hi)] per group: its voxels' slice
        self.pd_coil = group_pd_coil.sum(0)  # [C, V]: each voxel's PD · coil (one group each)
        self.nyquist, self.dephasing_func, self.cache = nyquist, dephasing_func, cache
        self.jobs: list[tuple[Any, ...]] = []
        self.load = 0

    def _rows(self, n_states: int, n_samples: int) -> int:
        n_g, n_c, n_v = self.gpc.shape
        return n_states * -(-n_samples // _ANCHOR) * n_g * n_c * n_v

    def takes(self, n_states: int, n_samples: int) -> bool:
        """Whether a repetition of this size belongs in a batch (few states, samples, voxels)."""
        n_g, n_c, _ = self.gpc.shape
        return (
            n_states * n_g * n_c <= _STACK_ROWS
            and n_samples <= _BATCH_SAMPLES
            and self._rows(n_states, n_samples) <= _BATCH_REP_ELEMENTS
        )

    def full(self) -> bool:
        return self.load >= _BATCH_ELEMENTS

    def add(self, slot: int, *job: Any) -> None:  # a tensor, arrays and a tuple, as documented
        """Queue a repetition: ``(m, k0, τ0, K, T, L, C, adc_phase, (K64, T64))``.

        ``m [S, V]`` a tensor; the others float64 numpy: ``k0 [S, 3]``, ``τ0 [S]``, ``K [T, 3]``,
        ``T [T]``, ``L [T, 3]``, ``C [T]``, ``adc_phase [T]`` (as :func:`_signal` takes them).
        """
        self.jobs.append((slot, *job))
        m, steps = job[0], job[-1]
        self.load += self._rows(len(m), len(steps[1]))

    def flush(self, signals: list[torch.Tensor | None]) -> None:
        """Compute the queued repetitions' signals into their ``signals`` slots."""
        if not self.jobs:
            return
        jobs, self.jobs, self.load = self.jobs, [], 0
        n_g, n_c, _ = self.gpc.shape
        dev = self.pos.device
        cdt = torch.complex64
        n_s = np.array([len(j[1]) for j in jobs])
        n_t = np.array([len(j[5]) for j in jobs])
        t_start = np.concatenate([[0], np.cumsum(n_t)[:-1]])
        m = torch.cat([j[1] for j in jobs])  # [ΣS, V]

        def cat(i: int) -> torch.Tensor:  # the jobs' numpy arrays, as one float32 tensor
            return torch.from_numpy(np.concatenate([j[i] for j in jobs])).to(dev, torch.float32)

        k0, tau0 = cat(2), cat(3)
        K, T, L, C = cat(4), cat(5), cat(6), cat(7)  # [ΣT, ...]
        receive = _cis(cat(8))
        out = torch.zeros((len(T), n_c), dtype=cdt, device=dev)
        if len(m) == 0:
            self._store(signals, jobs, out, t_start, n_t)
            return
        # (state, sample) pairs: each state with every sample of its repetition
        state_of_job = np.repeat(np.arange(len(jobs)), n_s)
        pair_state = np.repeat(np.arange(len(m)), n_t[state_of_job])
        first = np.repeat(t_start[state_of_job], n_t[state_of_job])
        local = np.arange(len(pair_state)) - np.repeat(
            np.concatenate([[0], np.cumsum(n_t[state_of_job])[:-1]]), n_t[state_of_job]
        )  # fmt: skip
        pair_sample = first + local
        ps, pt = (torch.from_numpy(x).to(dev) for x in (pair_state, pair_sample))
        k_st = k0[ps] + K[pt]  # [P, 3]
        tau_st = tau0[ps] + T[pt]
        w = self.dephasing_func(k_st, self.nyquist).to(torch.float32)  # [P]
        k0p = k0[ps]
        b_st = 4 * math.pi**2 * ((k0p**2).sum(1) * T[pt] + (k0p * L[pt]).sum(1) + C[pt])
        f = w[:, None] * torch.exp(-tau_st.abs()[:, None] * self.r2d - b_st[:, None] * self.dg)
        # the states' magnetisation with their phase, times PD · coil per group: [ΣS, G·C, V]
        state_phase = -_TWO_PI * (k0 @ self.pos.T + tau0[:, None] * self.b0[None])
        mc = (m * _cis(state_phase))[:, None, :] * self.pd_coil[None]  # [ΣS, C, V]
        # blocks of _ANCHOR samples per repetition, their anchors and step patterns
        n_b = -(-n_t // _ANCHOR)
        anchors, keys_of_block, incs = [], [], []
        for (_, *_, steps), t0, nt in zip(jobs, t_start, n_t, strict=True):
            k64, t64 = steps
            inc, key = _sample_steps(k64, t64)
            for a in range(0, nt, _ANCHOR):
                anchors.append(t0 + a)
                keys_of_block.append(key[a + 1 : a + _ANCHOR])
                incs.append(inc[a + 1 : a + _ANCHOR])
        idx = torch.tensor(anchors, device=dev)
        A = _cis(
            -_TWO_PI * (K[idx] @ self.pos.T + T[idx][:, None] * self.b0[None]),
            torch.exp(-T[idx][:, None] / self.t2[None]),
        )  # [blocks, V] fmt: skip
        block_start = np.concatenate([[0], np.cumsum(n_b)[:-1]])
        # rows (state, block of its repetition)
        sb_state = np.repeat(np.arange(len(m)), n_b[state_of_job])
        sb_block = np.repeat(block_start[state_of_job], n_b[state_of_job]) + (
            np.arange(len(sb_state)) - np.repeat(
                np.concatenate([[0], np.cumsum(n_b[state_of_job])[:-1]]), n_b[state_of_job])
        )  # fmt: skip
        # the blocks that have emitting states, by step pattern
        by_key: dict[bytes, list[int]] = {}
        for b in np.unique(sb_block).tolist():
            by_key.setdefault(keys_of_block[b].tobytes(), []).append(b)
        # blocks of equal steps whose pattern is new and used once (every spoke of a radial or
        # spiral readout): their step products and GEMMs in one batched set of operations
        single = [bl[0] for kb, bl in by_key.items() if len(bl) == 1 and kb not in self.cache.kept
                  and _equal_steps(keys_of_block[bl[0]])]  # fmt: skip
        for b in single:
            del by_key[keys_of_block[b].tobytes()]
        # rows sorted by pattern (the single blocks last), so that each pattern's rows are one
        # slice: no gathered copy per GEMM
        group_of_block = np.full(len(anchors), len(by_key), np.int64)
        for gi, blocks in enumerate(by_key.values()):
            group_of_block[blocks] = gi
        perm = np.argsort(group_of_block[sb_block], kind="stable")
        sb_state, sb_block = sb_state[perm], sb_block[perm]
        inv = np.empty_like(perm)
        inv[perm] = np.arange(len(perm))
        cuts = np.searchsorted(group_of_block[sb_block], np.arange(len(by_key) + 1)).tolist()
        sbs, sbb = (torch.from_numpy(x).to(dev) for x in (sb_state, sb_block))
        ma = mc[sbs] * A[sbb][:, None, :]  # [SB, C, V]
        res = torch.zeros((len(sb_state), n_g, n_c, _ANCHOR), dtype=cdt, device=dev)
        if single:
            self._single_blocks(single, incs, sb_block, ma, res)
        for gi, (key_bytes, blocks) in enumerate(by_key.items()):
            b = blocks[0]

            def make(b: int = b) -> torch.Tensor:  # made only when the cache lacks the key
                return _step_products(
                    self.pos, self.b0, self.t2, incs[b], keys_of_block[b],
                    self.cache.grid(self.pos),
                )  # fmt: skip

            W = self.cache.get(key_bytes, make)
            lo, hi = cuts[gi], cuts[gi + 1]
            for g, (v_lo, v_hi) in enumerate(self.bounds):
                if v_hi > v_lo:  # [rows, C, V_g] @ [V_g, B]
                    res[lo:hi, g] = ma[lo:hi, :, v_lo:v_hi] @ W[:, v_lo:v_hi].T
        # each pair's value: row (its state, its block), column (its sample within the block)
        pair_row = np.repeat(
            np.concatenate([[0], np.cumsum(n_b[state_of_job])[:-1]]), n_t[state_of_job]
        ) + local // _ANCHOR  # fmt: skip
        pair_row = inv[pair_row]
        amp = res[
            torch.from_numpy(pair_row).to(dev), :, :, torch.from_numpy(local % _ANCHOR).to(dev)
        ]
        amp = amp.reshape(len(pair_state), n_g, n_c)  # [P, G, C]
        contrib = torch.einsum("pgc,pg->pc", amp, f.to(cdt))
        out.index_add_(0, pt, contrib)
        self._store(signals, jobs, out * receive[:, None], t_start, n_t)

    def _single_blocks(
        self, blocks: list[int], incs: list[np.ndarray], sb_block: np.ndarray, ma: torch.Tensor,
        res: torch.Tensor,
    ) -> None:  # fmt: skip
        """Project the rows of ``blocks`` (each of equal steps ``incs[b][0]``) into ``res``.

        ``W[b, j] = e_b^j`` by doubling for all blocks at once, then one batched GEMM of each
        block's rows (padded to the largest count) with its ``W``; in chunks of bounded memory.
        """
        n_v = len(self.pos)
        dev, cdt = self.pos.device, torch.complex64
        n_c = ma.shape[1]
        chunk = max(1, _BATCH_ELEMENTS // (_ANCHOR * n_v))
        for c0 in range(0, len(blocks), chunk):
            bs = np.array(blocks[c0 : c0 + chunk])
            d = torch.from_numpy(np.stack([incs[b][0] for b in bs])).to(dev, torch.float32)
            e = _cis(
                -_TWO_PI * (d[:, :3] @ self.pos.T + d[:, 3:] * self.b0[None]),
                torch.exp(-d[:, 3:] / self.t2[None]),
            )  # [nb, V] fmt: skip
            W = torch.empty((len(bs), _ANCHOR, n_v), dtype=cdt, device=dev)
            W[:, 0] = 1
            W[:, 1] = e
            n = 2
            while n < _ANCHOR:
                m = min(n, _ANCHOR - n)
                W[:, n : n + m] = W[:, :m] * (W[:, n - 1] * e)[:, None]
                n += m
            # each block's (state, block) rows, padded with row 0 (masked out below)
            rows = [np.flatnonzero(sb_block == b) for b in bs.tolist()]
            width = max(len(r) for r in rows)
            idx = np.zeros((len(bs), width), np.int64)
            valid = np.zeros((len(bs), width), bool)
            for i, r in enumerate(rows):
                idx[i, : len(r)] = r
                valid[i, : len(r)] = True
            idx_t = torch.from_numpy(idx).to(dev)
            x = ma[idx_t.reshape(-1)].reshape(len(bs), width * n_c, n_v)
            out = torch.zeros((len(bs), width, len(self.bounds), n_c, _ANCHOR), dtype=cdt,
                              device=dev)  # fmt: skip
            for g, (v_lo, v_hi) in enumerate(self.bounds):
                if v_hi > v_lo:  # per group over its voxels
                    part = torch.bmm(x[:, :, v_lo:v_hi], W[:, :, v_lo:v_hi].transpose(1, 2))
                    out[:, :, g] = part.reshape(len(bs), width, n_c, _ANCHOR)
            valid_t = torch.from_numpy(valid).to(dev)
            res[idx_t[valid_t]] = out[valid_t]

    @staticmethod
    def _store(
        signals: list[torch.Tensor | None], jobs: list[tuple[Any, ...]], out: torch.Tensor,
        t_start: np.ndarray, n_t: np.ndarray,
    ) -> None:  # fmt: skip
        for job, t0, nt in zip(jobs, t_start.tolist(), n_t.tolist(), strict=True):
            signals[job[0]] = out[t0 : t0 + nt]


def _equal_steps(keys: np.ndarray) -> bool:
    """Whether a block's step keys ``[B - 1, 4]`` are one step repeated, then padding (0)."""
    real = keys[:, 3] != 0  # every real step advances in time
    n = int(real.sum())
    return n > 0 and bool(real[:n].all()) and bool((keys[:n] == keys[0]).all())


def _sample_steps(k64: np.ndarray, t64: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the steps into each sample and their keys, padded to whole ``_ANCHOR`` blocks.

    ``k64 [T, 3]`` (1/m) and ``t64 [T]`` (s): float64 sample positions. Returns ``inc [Tp, 4]``,
    the step (ΔK, ΔT) into sample ``t`` (0 for the first sample and the padding), and ``keys``,
    those steps quantised to integers (equal keys: equal steps, one shared product ``W``).
    """
    n_t = len(t64)
    inc = np.zeros((-(-n_t // _ANCHOR) * _ANCHOR, 4))
    inc[1:n_t, :3] = np.diff(k64, axis=0)
    inc[1:n_t, 3] = np.diff(t64)
    return inc, np.rint(inc / _STEP_QUANTA).astype(np.int64)


def _project(
    mc: torch.Tensor,
    A: torch.Tensor,
    patterns: list[tuple[torch.Tensor, torch.Tensor]] | None,
    n_c: int,
) -> torch.Tensor:
    """``Σ_v mc[r, v] P[v, t]`` ``[R, Tc]`` from :func:`_phasor_chunks`' ``A`` and patterns."""
    if patterns is None:  # A is P [V, Tc]
        return mc @ A
    # Σ_v mc[r, v] A[v, b] W[v, j] for sample t = b·B + j of block b: scale the rows by each
    # block's anchor, then one GEMM with W per step pattern
    n_r, n_v = mc.shape
    ma = mc[:, None, :] * A.T[None]  # [R, blocks, V]
    if len(patterns) == 1:
        res = (ma.reshape(-1, n_v) @ patterns[0][1].T).reshape(n_r, -1)
        return res[:, :n_c]
    res = torch.empty((n_r, A.shape[1], _ANCHOR), dtype=mc.dtype, device=mc.device)
    for blocks, W in patterns:
        part = ma[:, blocks].reshape(-1, n_v) @ W.T  # [R·nb, B]
        res[:, blocks] = part.reshape(n_r, -1, _ANCHOR)
    return res.reshape(n_r, -1)[:, :n_c]


def _phasor_chunks(
    pos: torch.Tensor,
    b0: torch.Tensor,
    t2: torch.Tensor,
    K: torch.Tensor,
    T: torch.Tensor,
    steps: tuple[np.ndarray, np.ndarray] | None,
    cache: _StepCache | None,
    motion: torch.Tensor | None = None,
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
    ``_ANCHOR - 1`` products stays near 1e-6. Chunks bound the memory. ``motion [T, V]``: a
    moving phantom's extra phase per sample (cycles), added to P's (P is then formed directly).
    """
    n_v, n_t = len(pos), len(T)
    dev = pos.device

    def direct(k: torch.Tensor, t: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        cycles = pos @ k.T + b0[:, None] * t[None]
        if extra is not None:
            cycles = cycles + extra.T
        return _cis(-_TWO_PI * cycles, torch.exp(-t[None] / t2[:, None]))

    chunk = max(_ANCHOR, (_PHASOR_ELEMENTS // max(n_v, 1)) // _ANCHOR * _ANCHOR)
    if steps is None or cache is None or n_t <= 2 or motion is not None:
        for t0 in range(0, n_t, chunk):
            sl = slice(t0, min(n_t, t0 + chunk))
            yield sl, direct(K[sl], T[sl], None if motion is None else motion[sl]), None
        return
    k64, t64 = steps
    inc, keys = _sample_steps(k64, t64)
    grid = cache.grid(pos)
    for t0 in range(0, n_t, chunk):
        t1 = min(n_t, t0 + chunk)
        anchors = list(range(t0, t1, _ANCHOR))
        by_key: dict[bytes, list[int]] = {}
        for i, a in enumerate(anchors):
            by_key.setdefault(keys[a + 1 : a + _ANCHOR].tobytes(), []).append(i)
        patterns = []
        for key, blocks in by_key.items():
            a = anchors[blocks[0]]

            def make(a: int = a) -> torch.Tensor:  # made only when the cache lacks the key
                return _step_products(
                    pos, b0, t2, inc[a + 1 : a + _ANCHOR], keys[a + 1 : a + _ANCHOR], grid
                )

            W = cache.get(
                key,
                make,
            )
            patterns.append((torch.tensor(blocks, device=dev), W))
        idx = torch.tensor(anchors, device=dev)
        yield slice(t0, t1), direct(K[idx], T[idx]), patterns


def _step_products(
    pos: torch.Tensor,
    b0: torch.Tensor,
    t2: torch.Tensor,
    inc: np.ndarray,
    keys: np.ndarray,
    grid: _GridAxes | None = None,
) -> torch.Tensor:
    """``W [B, V]``: 1, then the running products of the factors of the steps ``inc [B - 1, 4]``.

    ``inc`` (float64, 1/m and s) and its quantised ``keys``. Equal steps: powers of one factor.
    Other steps on a grid (``grid.useful``, without gradients through the phantom): the
    per-axis tables of :class:`_GridAxes`; else the running product of their factors.
    """
    n_v = len(pos)
    equal = bool((keys == keys[0]).all())
    if (
        not equal  # powers by doubling cost less than the tables (170 vs 420 µs at 48²)
        and grid is not None
        and grid.useful
        and not (pos.requires_grad or b0.requires_grad or t2.requires_grad)
    ):
        return grid.products(b0, t2, inc)
    d = torch.from_numpy(inc).to(pos.device, torch.float32)
    W = torch.empty((_ANCHOR, n_v), dtype=torch.complex64, device=pos.device)
    W[0] = 1
    if equal:  # equal steps: powers of one factor, by doubling
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

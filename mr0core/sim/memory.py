"""Peak memory of a PDG simulation (pre-pass, then main pass), in bytes.

The model counts the allocations from how the code makes them, over the sizes that drive them,
and is checked against measured peaks (``scripts/calibrate_estimate.py``). It selects the states
with the main pass's own rule (:func:`mr0core.sim.pdg.simulated_states`,
:func:`~mr0core.sim.pdg.emitting_states`), so it follows any change of that rule.

Symbols: ``V`` voxels (phantom entries after ``build()``), ``C`` receive coils, and per
repetition: ``Sp``, ``Sz`` the transverse and longitudinal states the main pass simulates
(``'``: the previous repetition's), ``E`` the simulated edges (of every kind, between simulated
states), ``Se`` the emitting states, ``T`` the ADC samples, ``nb`` the
32-sample blocks of the largest phasor chunk, ``nbp`` the most of them sharing one step pattern,
``nw`` the step products ``W [32, V]`` alive (cache, this and the previous chunk's), ``Vb`` the
voxel-blocks of anchor products alive (``max_g max((V_g' + V_g) nb, V_g (nb + nbp))`` over the
(T2′, D) groups ``V_g``). State magnetisations are complex64 ``[states, voxels]`` (8 bytes).
The main pass (:func:`mr0core.sim.pdg.execute_graph`) holds, at its peak::

    live   = 8 V (Sp' + Sz' + Sp + Sz) + 4 V (Sp' + Sz')     states old and new; the last
           + 256 V nw                                        relaxation factor; step products
    pulse  = V (8 (E' + E) + 48)                             the gathered parents, this and the
                                                             last repetition's; coefficients
    signal = V (8 E + 20 Se) + 48 Se T                       gathered parents; emitters' copy,
                                                             phase, phased copy; [Se, T]
           + 8 Se C V + 8 Se C Vb + 40 V nb                  coil-weighted states; per-block
                                                             anchor products; anchor phasors
    relax  = V (4 (Sp + Sz) + 8 E)                           relaxation factor; gathered parents
    main   = max over repetitions [live + max(pulse, signal, relax)]
           + V (48 + 8 (C + tx)) + 16 N_adc C                phantom copies, coil maps; signal

Repetitions whose emitting states, (T2′, D) groups and coils make at most 64 rows
(``Se G C ≤ 64``), that have at most 128 samples and whose rows (one per block of 32 samples)
times the voxels stay at most 2¹⁶ wait in the signal batch, which adds to ``signal``
``24 min(Σ_batched Se ⌈T/32⌉ C · V, 2·2²⁰ / G) + 8 V Σ_batched Se`` (its rows and the states it
holds; the sums run over the batched repetitions; it is computed when its rows times the G
groups reach 2²⁰ voxel-rows). Repetitions with at most 2 samples form their
phasors directly (``40 V T`` instead of the block terms); phantoms with more than 16 (T2′, D)
groups take the exact per-voxel path (``40 V T + 16 min(Se T V, max(2²⁴, Se V))`` instead).
Every coefficient is a named constant below, with what it counts.

The pre-pass (:func:`mr0core.sim.graph.compute_graph`, float64 numpy on the host) runs first;
its temporaries peak in the emitted-signal estimate of one repetition's graph states ``n+`` at
its samples, while the graph grows; the graph stays alive during the main pass::

    prepass   = PREPASS_STATE_SAMPLE_BYTES · max over repetitions (n+ · T)
    graph     = GRAPH_STATE_BYTES · (plus and z states of the graph)
              + GRAPH_REP_BYTES · repetitions
    cpu       = graph + max(prepass, MAIN_FACTOR · main)
    cuda      = main      (what torch.cuda.max_memory_allocated counts; not the CUDA context)

A fresh process adds its one-time costs (BLAS and OpenMP buffers, thread stacks, code pages:
about 12 MB on the CPU; numba and the PDG's compiled kernels (pre-pass and main pass), loaded
on first use: about 150 MB resident, 84 MB of them the import; the main pass's adds 2 MB),
which are not the simulation's and are not counted here.

:func:`estimate_pdg_from_graph` takes the state counts from a computed graph.
:func:`estimate_pdg` bounds them without the pre-pass: as many states as the pulses so far can
have made (a pulse makes two transverse and one longitudinal child of each transverse state, one
longitudinal and two transverse of each longitudinal one), at most ``max_states`` of each kind,
all emitting.

Calibration (CPU, ``python scripts/calibrate_estimate.py``, a fresh process per case, peak RSS
growth; Intel Xeon, 2 cores, 2 threads, torch 2.13.0+cpu; 14 cases: the ``--quick`` set and
eight more of the full grid, 16² to 128² brain, 1 to 8 coils, ``max_states`` 50 to 500):
measured / estimated (with the fixed process costs) from the graph median 0.99, lowest 0.70,
highest 1.19 (the highest on jobs of 20–45 MB); the main pass alone, torch's own allocations
against ``main``, median 1.01 (0.64–1.69, and 2.71 on a 16² phantom whose main pass is 5 MB);
the bound before the pre-pass median 0.37, lowest 0.08, highest 0.57 (6 cases: safe, but up
to 12.5 times too high). The full grid has not been run since the parents of all edge kinds
are gathered at once. Not yet calibrated on a GPU.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .graph import (
    PLUS_FROM_PLUS,
    PLUS_FROM_PLUS_REFOC,
    PLUS_FROM_Z,
    PLUS_FROM_Z_CONJ,
    PREPASS_OVERSAMPLE,
    Z_FROM_PLUS,
    Z_FROM_PLUS_CONJ,
    Z_FROM_Z,
    Graph,
)
from .pdg import emitting_states, simulated_states

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence

__all__ = [
    "DEVICES",
    "PdgLoad",
    "device_kind",
    "estimate_pdg",
    "estimate_pdg_from_graph",
    "graph_bytes",
    "host_memory_available",
    "load_bytes",
    "main_pass_bytes",
    "pdg_load",
    "pdg_load_from_graph",
    "prepass_bytes",
]

DEVICES = ("cpu", "cuda")
"""Device kinds an estimate is for (``"cuda:1"`` counts as ``"cuda"``)."""

# -- sizes --------------------------------------------------------------------------------------

C64 = np.dtype(np.complex64).itemsize
"""Bytes of a complex64."""
F32 = np.dtype(np.float32).itemsize
"""Bytes of a float32."""

# -- the main pass, counted from execute_graph --------------------------------------------------

STATE_BYTES = C64
"""Per (state, voxel): a state magnetisation (old and new, transverse and longitudinal)."""
EDGE_BYTES = C64
"""Per (edge, voxel), every edge kind: the parents gathered in one tensor and scaled in place
(the pass without autograd). The tensor stays bound through the repetition's signal and
relaxation, until the next repetition's gather has been made."""
PULSE_COEF_BYTES = 6 * C64
"""Per voxel: the six pulse coefficient rows."""
SIGNAL_STATE_BYTES = C64 + F32 + C64
"""Per (emitting state, voxel): the emitters' copy, their phase (float32) and the phased copy."""
COIL_STATE_BYTES = C64
"""Per (emitting state, coil, voxel): the coil-weighted states ``[Se·C, V]``."""
BLOCK_BYTES = C64
"""Per (emitting state, coil, block, voxel): the anchor products ``[Se·C, nb, V_g]`` of a voxel
group, counted for two consecutive groups or for one group and its gather of one pattern."""
ANCHOR_PHASOR_BYTES = 2 * C64 + 6 * F32
"""Per (voxel, phasor): a phasor formed directly (``A [V, nb]`` anchors, or every sample), the
previous chunk's, and the float32 phase, decay, cos, sin and scaled parts that make it."""
STEP_PRODUCT_BYTES = 32 * C64
"""Per (voxel, step pattern): the step products ``W [32, V]`` (chunk patterns and cache)."""
STATE_SAMPLE_BYTES = 12 * F32
"""Per (emitting state, sample): k, τ, voxel-shape response and b-value factors ``[Se, T]``."""
EXACT_CHUNK_BYTES = 2 * F32 + C64
"""Per (state, sample, voxel) of the exact path's chunk: decay factor, operand and product."""
RELAX_BYTES = F32
"""Per (state, voxel), transverse and longitudinal: the relaxation factor, made in place; it
stays bound until the next repetition's is made."""
VOXEL_BYTES = 12 + 9 * F32
"""Per voxel: positions, B0, T1, T2, T2′, D, z0 and the sorted copies of the pass."""
VOXEL_CHANNEL_BYTES = C64
"""Per (voxel, receive coil or transmit channel): PD-weighted coil sensitivities, B1."""
SIGNAL_BYTES = 2 * C64
"""Per (ADC sample, coil): the signal pieces and their concatenation."""

# mirrors of the main pass's tuning (mr0core.sim.pdg; a test checks that they agree)
MAX_GROUPS = 16
"""More distinct (T2′, D) pairs than this take the exact path (``pdg._MAX_GROUPS``)."""
ANCHOR = 32
"""Samples per phasor block (``pdg._ANCHOR``)."""
PHASOR_ELEMENTS = 1 << 22
"""Voxels × samples of one phasor chunk (``pdg._PHASOR_ELEMENTS``)."""
CACHE_ELEMENTS = 1 << 20
"""Step products kept between repetitions (``pdg._CACHE_ELEMENTS``)."""
EXACT_CHUNK_ELEMENTS = 1 << 24
"""States × samples × voxels of one chunk of the exact path (``pdg._CHUNK_ELEMENTS``)."""
STACK_ROWS = 64
"""States × groups × coils up to which a repetition is batched (``pdg._STACK_ROWS``)."""
BATCH_SAMPLES = 4 * 32
"""Samples up to which a repetition is batched (``pdg._BATCH_SAMPLES``)."""
BATCH_REP_ELEMENTS = 1 << 16
"""Rows × voxels of one repetition up to which it is batched (``pdg._BATCH_REP_ELEMENTS``)."""
BATCH_ELEMENTS = 1 << 20
"""Rows × voxels at which a batch is computed (``pdg._BATCH_ELEMENTS``; it may reach twice)."""
BATCH_ROW_BYTES = 3 * C64
"""Per (row, voxel) of a batch: the phased, coil-weighted states, the anchor products, and the
rows gathered for one batched GEMM."""
K_STEP_QUANTUM = 1e-6
"""1/m: steps between samples this close are equal (``pdg._K_STEP_QUANTUM``)."""
T_STEP_QUANTUM = 1e-12
"""s (``pdg._T_STEP_QUANTUM``)."""

# -- calibrated on the CPU (scripts/calibrate_estimate.py) ---------------------------------------

MAIN_FACTOR = 1.0
"""Measured / counted main-pass bytes on the CPU (allocator rounding, untouched pages)."""
PREPASS_STATE_SAMPLE_BYTES = 50
"""Per (transverse state, ADC sample) of one repetition in the pre-pass's emitted estimate
(float32): k ``[n, T, 3]`` (12), the voxel-shape response and its temporaries (~24), τ, the
decay argument and the product (12). Measured 48.6 on ``spoiled8`` (box voxels) at 16²."""
GRAPH_STATE_BYTES = 200
"""Per state of the graph (plus or z, all repetitions): k, τ, the magnetisation at each B1
scale, the signal estimates, the defining and incoming edges, and small-block heap overhead."""
GRAPH_REP_BYTES = 7000
"""Per repetition of the graph: about 27 small numpy arrays with their headers, the edge dict."""

_TO_PLUS = (PLUS_FROM_PLUS, PLUS_FROM_PLUS_REFOC, PLUS_FROM_Z, PLUS_FROM_Z_CONJ)
_FROM_PLUS = (PLUS_FROM_PLUS, PLUS_FROM_PLUS_REFOC, Z_FROM_PLUS, Z_FROM_PLUS_CONJ)
_KINDS = (*_TO_PLUS, Z_FROM_Z, Z_FROM_PLUS, Z_FROM_PLUS_CONJ)


@dataclass(frozen=True)
class PdgLoad:
    """What drives a PDG simulation's memory; arrays hold one value per repetition ``(R,)``.

    Attributes
    ----------
    voxels, coils, tx
        ``V``, ``C`` and the transmit channels.
    groups
        Voxels of each (T2′, D) group in the pass's order (``(V,)``: unknown, one group).
    exact
        Whether the exact per-voxel signal path is taken (more than 16 groups).
    plus, z
        ``Sp``, ``Sz``: states the main pass simulates.
    edges
        ``E``: the simulated edges (child and parent simulated), of every kind.
    emit
        ``Se``: emitting transverse states (0 in repetitions without ADC).
    samples
        ``T``: ADC samples.
    blocks, pattern_blocks
        ``nb``: 32-sample blocks of the largest phasor chunk; the most of them sharing one step
        pattern (0 where the phasors are formed directly).
    step_products
        ``nw``: ``W`` tensors alive at once: the cache, the chunk's patterns and the previous
        chunk's (still held by the signal loop).
    graph_plus
        Transverse states of the pre-pass graph (``n+``).
    graph_states
        All states of the graph (plus and z, all repetitions).
    graph_live
        Of ``graph_plus``, the states whose voxel-shape response the pre-pass computed (it skips
        states dephased beyond the voxel's bandwidth for the whole readout); ``None``: all of
        them (the bound without the pre-pass).
    """

    voxels: int
    coils: int
    tx: int
    groups: tuple[int, ...]
    exact: bool
    plus: np.ndarray
    z: np.ndarray
    edges: np.ndarray
    emit: np.ndarray
    samples: np.ndarray
    blocks: np.ndarray
    pattern_blocks: np.ndarray
    step_products: np.ndarray
    graph_plus: np.ndarray
    graph_states: int
    graph_live: np.ndarray | None = None


# -- the sample plan: per repetition samples, blocks and step patterns ---------------------------


@dataclass(frozen=True)
class _SamplePlan:
    samples: np.ndarray
    blocks: np.ndarray
    pattern_blocks: np.ndarray
    step_products: np.ndarray


def _count(name: str, value: Any, lo: int = 1) -> int:
    """Return ``value`` if it is an int of at least ``lo`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < lo:
        raise ValueError(f"{name} must be at least {lo}, got {value}")
    return int(value)


def host_memory_available() -> int | None:
    """Return the host memory available now (bytes).

    Linux: ``MemAvailable`` of ``/proc/meminfo``; elsewhere the physical memory; None when
    neither can be read.
    """
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (OSError, ValueError, AttributeError):
        return None


def device_kind(device: str) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for a device name (``"cuda:1"`` is ``"cuda"``).

    Raises
    ------
    ValueError
        For another device.
    """
    kind = str(device).split(":", 1)[0]
    if kind not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}")
    return kind


def _chunk_samples(voxels: int) -> int:
    """Return the samples of one phasor chunk (as :func:`mr0core.sim.pdg._phasor_chunks`)."""
    return max(ANCHOR, (PHASOR_ELEMENTS // max(voxels, 1)) // ANCHOR * ANCHOR)


def _sample_plan(seq: Sequence, voxels: int, size_m: Any, exact: bool) -> _SamplePlan:
    """Follow the main pass's phasor chunks and step-product cache over ``seq``.

    The samples of a repetition are cut into chunks of 32-sample blocks; blocks that advance by
    the same quantised steps share one step-product tensor ``W [32, V]``, which an LRU cache
    keeps from its second use on (at most ``CACHE_ELEMENTS``, at least two). This replays that
    bookkeeping on the sequence alone (O(samples), no voxels). ``size_m`` ``[3]`` (m) scales
    normalised gradients, as the pass does.
    """
    n = len(seq)
    samples, blocks, pattern_blocks, live = (np.zeros(n, np.int64) for _ in range(4))
    scale = None
    if getattr(seq, "normalized_grads", False) and size_m is not None:
        scale = torch.as_tensor(np.asarray(size_m, dtype=np.float32).reshape(3))
    chunk = _chunk_samples(voxels)
    w_elements = ANCHOR * max(voxels, 1)
    quantum = np.array([K_STEP_QUANTUM] * 3 + [T_STEP_QUANTUM])
    kept: OrderedDict[bytes, int] = OrderedDict()
    seen: set[bytes] = set()
    made = 0
    for r, rep in enumerate(seq):
        adc = np.flatnonzero(rep.adc_usage.detach().cpu().numpy() > 0)
        n_t = len(adc)
        samples[r] = n_t
        live[r] = len(kept)
        if n_t <= 2 or exact:
            continue
        g = rep.gradm.detach().cpu().float()
        if scale is not None:
            g = g / scale
        k = np.cumsum(g.double().numpy(), 0)[adc]
        t = np.cumsum(rep.event_time.detach().cpu().float().double().numpy())[adc]
        n_pad = -(-n_t // ANCHOR) * ANCHOR
        keys = np.zeros((n_pad, 4), np.int64)
        steps = np.concatenate([np.diff(k, axis=0), np.diff(t)[:, None]], 1)
        keys[1:n_t] = np.rint(steps / quantum).astype(np.int64)
        previous: set[int] = set()  # the signal loop still holds the last chunk's tensors
        for t0 in range(0, n_t, chunk):
            count: dict[bytes, int] = {}
            for a in range(t0, min(n_t, t0 + chunk), ANCHOR):
                key = keys[a + 1 : a + ANCHOR].tobytes()
                count[key] = count.get(key, 0) + 1
            current: set[int] = set()
            for key in count:  # _StepCache.get, in the pass's order; W tensors by serial number
                if key in kept:
                    kept.move_to_end(key)
                    current.add(kept[key])
                    continue
                made += 1
                current.add(made)
                if key not in seen:
                    if len(seen) > 1 << 16:
                        seen.clear()
                    seen.add(key)
                    continue
                kept[key] = made
                while len(kept) * w_elements > CACHE_ELEMENTS and len(kept) > 2:
                    kept.popitem(last=False)
            blocks[r] = max(blocks[r], sum(count.values()))
            pattern_blocks[r] = max(pattern_blocks[r], max(count.values()))
            live[r] = max(live[r], len(set(kept.values()) | current | previous))
            previous = current
    return _SamplePlan(samples, blocks, pattern_blocks, live)


# -- loads --------------------------------------------------------------------------------------


def _groups(data: SimData) -> tuple[tuple[int, ...], bool]:
    """Return the voxels per (T2′, D) group in the pass's order, and whether it is exact."""
    t2d = data.T2dash.detach().float().clamp_min(1e-12)
    diff = data.D.detach().float().clamp_min(0) * 1e-9
    _, i_t2d = torch.unique(t2d, return_inverse=True)
    u_d, i_d = torch.unique(diff, return_inverse=True)
    keys, inv = torch.unique(i_t2d * len(u_d) + i_d, return_inverse=True)
    if len(keys) > MAX_GROUPS:
        return (len(t2d),), True
    return tuple(int(c) for c in torch.bincount(inv, minlength=len(keys)).tolist()), False


def pdg_load_from_graph(
    graph: Graph,
    seq: Sequence,
    data: SimData,
    min_emitted: float = 1e-3,
    min_latent: float = 1e-3,
    *,
    coils: int | None = None,
) -> PdgLoad:
    """Return the :class:`PdgLoad` of simulating ``seq`` on ``data`` along ``graph``.

    Parameters
    ----------
    graph
        From :func:`mr0core.sim.compute_graph` for ``seq`` and ``data``.
    seq, data
        The sequence and the built phantom.
    min_emitted, min_latent
        The main pass's thresholds (``min_emitted_signal``, ``min_latent_signal`` of
        :func:`mr0core.sim.execute_graph`; the defaults are :class:`mr0core.jobs.SimSettings`').
        The states are selected by the pass's own rule
        (:func:`mr0core.sim.pdg.simulated_states`, :func:`mr0core.sim.pdg.emitting_states`).
    coils
        Receive coils instead of the phantom's (the graph does not depend on them).

    Raises
    ------
    ValueError
        If ``graph`` and ``seq`` differ in their repetitions.
    """
    if len(graph) != len(seq):
        raise ValueError(f"the graph has {len(graph)} repetitions, the sequence {len(seq)}")
    voxels = int(data.PD.shape[0])
    groups, exact = _groups(data)
    plan = _sample_plan(seq, voxels, data.size.detach().cpu().numpy(), exact)
    n = len(graph)
    plus, z, edges, emit, graph_plus, live = (np.zeros(n, np.int64) for _ in range(6))
    prev_p = np.zeros(0, bool)
    prev_z = np.ones(1, bool)
    for r, rg in enumerate(graph):
        act_p, act_z = simulated_states(rg, min_latent)
        is_p = np.zeros(len(rg.plus_tau), bool)
        is_p[act_p] = True
        is_z = np.zeros(len(rg.z_tau), bool)
        is_z[act_z] = True
        plus[r], z[r] = len(act_p), len(act_z)
        graph_plus[r] = len(rg.plus_tau)
        live[r] = int((rg.plus_emitted > 0).sum())  # a pruned state's estimate is 0
        for kind in _KINDS:  # an edge is simulated where its child and its parent are
            child, parent = rg.edges[kind]
            src = prev_p if kind in _FROM_PLUS else prev_z
            if len(child) == 0 or len(src) == 0:
                continue
            edges[r] += int(((is_p if kind in _TO_PLUS else is_z)[child] & src[parent]).sum())
        if plan.samples[r] > 0:
            emit[r] = len(emitting_states(rg, act_p, min_emitted))
        prev_p, prev_z = is_p, is_z
    return PdgLoad(
        voxels=voxels, coils=int(data.coil_sens.shape[0]) if coils is None else int(coils),
        tx=int(data.B1.shape[0]), groups=groups, exact=exact, plus=plus, z=z, edges=edges,
        emit=emit, samples=plan.samples, blocks=plan.blocks,
        pattern_blocks=plan.pattern_blocks, step_products=plan.step_products,
        graph_plus=graph_plus, graph_live=live, graph_states=int(sum(graph.state_counts)),
    )  # fmt: skip


def pdg_load(
    seq: Sequence,
    voxels: int,
    coils: int = 1,
    max_states: int = 200,
    *,
    tx: int = 1,
    exact: bool = False,
    size_m: Any = None,
) -> PdgLoad:
    """Return an upper-bound :class:`PdgLoad` without the pre-pass.

    Every repetition is taken to simulate and emit as many states as the pulses so far can have
    made (a pulse turns each transverse state into two transverse and one longitudinal, each
    longitudinal state into one longitudinal and two transverse), at most ``max_states`` of each
    kind; the voxels are taken as one (T2′, D) group. The pre-pass graph follows up to
    ``PREPASS_OVERSAMPLE × max_states`` candidates per kind (:mod:`mr0core.sim.graph`), so its
    counts (``graph_plus``, ``graph_states``) are bounded with that cap.

    Parameters
    ----------
    seq
        The sequence.
    voxels
        Phantom entries after ``build()`` (``len(data.PD)``).
    coils, tx
        Receive coils and transmit channels.
    max_states
        The pre-pass's ``max_state_count``.
    exact
        Whether the phantom has more than 16 distinct (T2′, D) pairs (exact signal path).
    size_m
        The phantom's size ``[3]`` (m), which scales normalised gradients; None: unscaled.

    Raises
    ------
    ValueError
        For a count that is not a positive integer.
    """
    _count("voxels", voxels)
    _count("coils", coils)
    _count("max_states", max_states)
    _count("tx", tx)
    n = len(seq)
    plus, z, edges, g_plus, g_z = (np.zeros(n, np.int64) for _ in range(5))
    n_p, n_z = 0, 1
    g_p, g_zc = 0, 1
    cap = PREPASS_OVERSAMPLE * max_states
    for r, rep in enumerate(seq):
        # a transverse parent has at most three children (unaffected, refocused, stored), a
        # longitudinal one three (kept, excited, excited mirror)
        edges[r] = 3 * (n_p + n_z)
        if float(rep.pulse.angle.detach()) != 0.0:
            n_p, n_z = min(max_states, 2 * n_p + 2 * n_z), min(max_states, n_z + n_p)
            g_p, g_zc = min(cap, 2 * g_p + 2 * g_zc), min(cap, g_zc + g_p)
        plus[r], z[r] = n_p, n_z
        g_plus[r], g_z[r] = g_p, g_zc
    plan = _sample_plan(seq, voxels, size_m, exact)
    return PdgLoad(
        voxels=int(voxels), coils=int(coils), tx=int(tx), groups=(int(voxels),), exact=exact,
        plus=plus, z=z, edges=edges,
        emit=np.where(plan.samples > 0, plus, 0), samples=plan.samples, blocks=plan.blocks,
        pattern_blocks=plan.pattern_blocks, step_products=plan.step_products,
        graph_plus=g_plus, graph_states=int(g_plus.sum() + g_z.sum()),
    )  # fmt: skip


# -- the formula --------------------------------------------------------------------------------


def _block_voxels(groups: tuple[int, ...], nb: np.ndarray, nbp: np.ndarray) -> np.ndarray:
    """Return the voxel-blocks of anchor products alive at once, per repetition.

    ``max_g max((V_g' + V_g) nb, V_g (nb + nbp))``: the previous group's products while the
    next group's are made, or one group's and its gather of the largest pattern.
    """
    out = np.zeros(len(nb))
    prev = 0
    for v in groups:
        out = np.maximum(out, np.maximum((prev + v) * nb, v * (nb + nbp)))
        prev = v
    return out


def main_pass_bytes(load: PdgLoad) -> int:
    """Return the peak bytes the main pass allocates (the module docstring's ``main``)."""
    V, C = load.voxels, load.coils
    if len(load.plus) == 0:
        return int(V * (VOXEL_BYTES + VOXEL_CHANNEL_BYTES * (C + load.tx)))
    f = np.float64
    sp, sz, e, se = (x.astype(f) for x in (load.plus, load.z, load.edges, load.emit))
    t, nb, nbp, nw = (x.astype(f) for x in (load.samples, load.blocks, load.pattern_blocks,
                                            load.step_products))  # fmt: skip
    sp_prev = np.concatenate([[0.0], sp[:-1]])
    sz_prev = np.concatenate([[1.0], sz[:-1]])
    e_prev = np.concatenate([[0.0], e[:-1]])
    live = STATE_BYTES * V * (sp_prev + sz_prev + sp + sz) + STEP_PRODUCT_BYTES * V * nw
    live += RELAX_BYTES * V * np.concatenate([[0.0], (sp + sz)[:-1]])
    pulse = V * (EDGE_BYTES * (e_prev + e) + PULSE_COEF_BYTES)
    signal = V * (EDGE_BYTES * e + SIGNAL_STATE_BYTES * se) + STATE_SAMPLE_BYTES * se * t
    if load.exact:
        chunk = np.minimum(se * t * V, np.maximum(EXACT_CHUNK_ELEMENTS, se * V))
        signal += ANCHOR_PHASOR_BYTES * V * t + EXACT_CHUNK_BYTES * chunk
    else:
        blocked = t > 2
        signal += COIL_STATE_BYTES * se * C * V
        signal += np.where(
            blocked,
            BLOCK_BYTES * se * C * _block_voxels(load.groups, nb, nbp)
            + ANCHOR_PHASOR_BYTES * V * nb,
            ANCHOR_PHASOR_BYTES * V * t,
        )
    signal = np.where(se > 0, signal, 0.0)
    if not load.exact:
        # repetitions with few emitting states and samples wait in the signal batch
        # (pdg._SignalBatch): their states, then rows (state, block, coil) × voxels; the batch
        # is computed when its rows times groups reach BATCH_ELEMENTS
        n_g = len(load.groups)
        rep_rows = se * np.ceil(t / ANCHOR) * n_g * C
        batched = (se > 0) & (se * n_g * C <= STACK_ROWS) & (t <= BATCH_SAMPLES)
        batched &= rep_rows * V <= BATCH_REP_ELEMENTS
        rows = float((se * np.ceil(t / ANCHOR) * C)[batched].sum())
        held = float(se[batched].sum()) * V
        cap = 2.0 * BATCH_ELEMENTS / max(n_g, 1)
        signal = signal + BATCH_ROW_BYTES * min(rows * V, cap) + C64 * held
    relax = V * (RELAX_BYTES * (sp + sz) + EDGE_BYTES * e)
    peak = float(np.max(live + np.maximum(np.maximum(pulse, signal), relax)))
    persistent = V * (VOXEL_BYTES + VOXEL_CHANNEL_BYTES * (C + load.tx))
    return int(peak + persistent + SIGNAL_BYTES * float(load.samples.sum()) * C)


def prepass_bytes(load: PdgLoad) -> int:
    """Return the peak bytes of the float64 pre-pass beyond its graph (CPU host memory)."""
    if len(load.graph_plus) == 0:
        return 0
    live = load.graph_plus if load.graph_live is None else load.graph_live
    return int(PREPASS_STATE_SAMPLE_BYTES * float(np.max(live * load.samples)))


def graph_bytes(load: PdgLoad) -> int:
    """Return the bytes of the graph the pre-pass returns (the docstring's ``graph``)."""
    return int(GRAPH_STATE_BYTES * load.graph_states + GRAPH_REP_BYTES * len(load.plus))


def load_bytes(load: PdgLoad, device: str = "cpu") -> int:
    """Return the peak bytes for ``load``: CPU host memory, or what CUDA's allocator counts.

    Parameters
    ----------
    load
        From :func:`pdg_load_from_graph` or :func:`pdg_load`.
    device
        ``"cpu"``: ``graph + max(prepass, MAIN_FACTOR · main)`` (the graph grows during the
        pre-pass and stays during the main pass); ``"cuda"`` or ``"cuda:<index>"``: ``main``.

    Raises
    ------
    ValueError
        For another device.
    """
    main = main_pass_bytes(load)
    if device_kind(device) == "cuda":
        return main
    return int(graph_bytes(load) + max(prepass_bytes(load), MAIN_FACTOR * main))


def estimate_pdg_from_graph(
    graph: Graph,
    seq: Sequence,
    data: SimData,
    *,
    min_emitted: float = 1e-3,
    min_latent: float = 1e-3,
    device: str = "cpu",
) -> int:
    """Return the peak bytes of simulating ``seq`` on ``data`` along a computed ``graph``.

    Parameters
    ----------
    graph
        From :func:`mr0core.sim.compute_graph` for ``seq`` and ``data``.
    seq, data
        The sequence and the built phantom.
    min_emitted, min_latent
        The main pass's thresholds (:class:`mr0core.jobs.SimSettings` defaults).
    device
        ``"cpu"``: peak host memory of pre-pass and main pass (what the simulation adds to a
        process); ``"cuda"``: the main pass's device allocations (:func:`load_bytes`).
    """
    return load_bytes(pdg_load_from_graph(graph, seq, data, min_emitted, min_latent), device)


def estimate_pdg(
    seq: Sequence,
    voxels: int,
    coils: int = 1,
    max_states: int = 200,
    *,
    tx: int = 1,
    exact: bool = False,
    device: str = "cpu",
) -> int:
    """Return the peak bytes of a PDG simulation before its pre-pass (an upper-ish bound).

    Parameters
    ----------
    seq
        The sequence (:class:`mr0core.Sequence`).
    voxels
        Phantom entries after ``build()`` (``len(data.PD)``).
    coils, tx
        Receive coils and transmit channels.
    max_states
        The pre-pass's ``max_state_count``.
    exact
        Whether the phantom has more than 16 distinct (T2′, D) pairs (exact signal path).
    device
        ``"cpu"`` or ``"cuda"`` as in :func:`estimate_pdg_from_graph`.
    """
    load = pdg_load(seq, voxels, coils, max_states, tx=tx, exact=exact)
    return load_bytes(load, device)

"""Peak-memory estimates of jobs: PDG simulations and reconstructions, in bytes.

A job declares its expected peak memory (:class:`scheduler.model.JobSpec`'s ``estimate_bytes``);
the scheduler multiplies it by its safety factor before it compares it with a device's free
memory. The estimates are formulas over the sizes that drive the allocations, counted from how
the code allocates, then checked against measured peaks (``scripts/calibrate_estimate.py``).

PDG simulation (:func:`mr0core.jobs.run_simulation`)
----------------------------------------------------
Symbols: ``V`` voxels (phantom entries after ``build()``), ``C`` receive coils, and per
repetition: ``Sp``, ``Sz`` the transverse and longitudinal states the main pass simulates (``'``:
the previous repetition's), ``E`` the edges of the largest kind between simulated states (``El``
of the last kind), ``Se`` the emitting states, ``T`` the ADC samples, ``nb`` the 32-sample blocks
of the largest phasor chunk, ``nbp`` the most of them sharing one step pattern, ``nw`` the step
products ``W [32, V]`` alive (cache, this and the previous chunk's), ``Vb`` the voxel-blocks of
anchor products alive (``max_g max((V_g' + V_g) nb, V_g (nb + nbp))`` over the (T2′, D) groups
``V_g``). State magnetisations are complex64 ``[states, voxels]`` (8 bytes). The main pass
(:func:`mr0core.sim.execute_graph`) holds, at its peak::

    live   = 8 V (Sp' + Sz' + Sp + Sz) + 256 V nw           states old and new; step products
    pulse  = V (32 E + 48)                                   one edge kind: parents, conjugate,
                                                             products, the previous kind's
    signal = V (16 El + 20 Se) + 48 Se T                     last kind's leftovers; emitters'
                                                             copy, phase, phased copy; [Se, T]
           + 8 Se C V + 8 Se C Vb + 40 V nb                  coil-weighted states; per-block
                                                             anchor products; anchor phasors
    relax  = 4 V max(Sp, Sz)                                 the in-place relaxation factor
    main   = max over repetitions [live + max(pulse, signal, relax)]
           + V (48 + 8 (C + tx)) + 16 N_adc C                phantom copies, coil maps; signal

Repetitions whose emitting states, (T2′, D) groups and coils make at most 64 rows
(``Se G C ≤ 64``), that have at most 128 samples and whose rows (one per block of 32 samples)
times the voxels stay at most 2¹⁶ wait in the signal batch, which adds to
``signal`` ``24 min(Σ_batched Se ⌈T/32⌉ G C · V, 2·2²⁰) + 8 V Σ_batched Se`` (its rows and the
states it holds; the sums run over the batched repetitions). Repetitions with at most 2 samples
form their phasors directly (``40 V T`` instead of the block
terms); phantoms with more than 16 (T2′, D) groups take the exact per-voxel path
(``40 V T + 16 min(Se T V, max(2²⁴, Se V))`` instead). Every coefficient is a named constant
below, with what it counts.

The pre-pass (:func:`mr0core.sim.compute_graph`, float64 numpy on the host) runs first; its
temporaries peak in the emitted-signal estimate of one repetition's graph states ``n+`` at its
samples, while the graph grows; the graph stays alive during the main pass::

    prepass   = PREPASS_STATE_SAMPLE_BYTES · max over repetitions (n+ · T)
    graph     = GRAPH_STATE_BYTES · (plus and z states of the graph)
              + GRAPH_REP_BYTES · repetitions
    cpu peak  = FIXED_BYTES + graph + max(prepass, MAIN_FACTOR · main)
    cuda peak = main      (what torch.cuda.max_memory_allocated counts; not the CUDA context)

:func:`estimate_pdg_from_graph` takes the state counts from a computed graph.
:func:`estimate_pdg` bounds them without the pre-pass: as many states as the pulses so far can
have made (a pulse makes two transverse and one longitudinal child of each transverse state, one
longitudinal and two transverse of each longitudinal one), at most ``max_states`` of each kind,
all emitting. :func:`estimate_job` runs the pre-pass where it is cheap.

Reconstruction (:func:`mr0core.recon.reconstruct`)
--------------------------------------------------
``N`` image voxels, ``N2`` of one slice or partition, ``K`` raw samples, ``C`` coils, ``d``
encoded dimensions, complex64 (8 bytes)::

    fft     = 8 C (K + 4 N) + 4 N                            raw data; k-space and 3 FFT copies
    sense   = 8 C (K + 2 N) + 8 N2 (4 C² + 6 C) + 4 N         grids; Walsh covariances, CG
    nufft   = 8 C K + 40 K + 32 taps K + 8 · 2^d N · min(C, threads) + 16 C N
    adjoint = 8 C K + 40 K + 24 min(K, 2²³ / N) N + 8 C N
    peak    = FIXED_BYTES + the method's term

Reading a client's ``.seq`` (:func:`scheduler.functions.prepare_seq`)
---------------------------------------------------------------------
The server does not parse a client's ``.seq``; a call does, before anything else, and its
estimate must hold before the text has been parsed. :class:`mr0core.pulseq.SeqLimits` bounds
the read and the conversion (the parsed file included) to ``max_memory_bytes`` each, checked
before they allocate (:func:`mr0core.pulseq.conversion_size`), so::

    prepare = FIXED_BYTES + SEQ_TEXT_COPIES · text bytes + max_memory_bytes
            + SEQ_LAYOUT_BYTES_PER_SAMPLE · max_total_adc_samples       (readout layout)

The call then converts and reports :func:`estimate_simulation_from_sequence` for the
simulation call that follows (its PDG bound, or, when it also reconstructs, the larger of that
and the reconstruction with the signal kept).

Calibration (CPU)
-----------------
``python scripts/calibrate_estimate.py`` runs each case in a fresh process and measures the rise
of its peak RSS (the script explains why RSS, and how it is made reliable). On this project's
machine (AMD EPYC, 2 cores, 2 threads, Python 3.11.7, torch 2.13.0+cpu) measured / estimated
was:

- PDG from the graph: median 0.94, lowest 0.80, highest 1.01 (29 cases: 16² to 128² brain,
  1 to 8 coils, max_states 50 to 500; 11 corpus sequences, the demo FLASH, synthetic trains);
- PDG main pass alone, torch's own allocations (what CUDA counts) against ``main``: median
  1.00, lowest 0.81, highest 1.11;
- PDG bound before the pre-pass: median 0.21, lowest 0.01 (a 500-state limit on a FLASH that
  keeps 35 states), highest 0.75: safe, but up to 100 times too high;
- recon: median 0.97, lowest 0.84, highest 1.12 (9 cases: fft, sense, nufft, adjoint).

No systematic factor was left to fold in (``MAIN_FACTOR`` is 1); the lowest ratios are small
jobs, where the one-time costs (``FIXED_BYTES``) vary by a few MB. The scheduler multiplies
every estimate by its safety factor. Not yet calibrated on a GPU: ``--device cuda`` compares
``torch.cuda.max_memory_allocated`` with the ``cuda`` estimate.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence
    from mr0core.sim.graph import Graph

__all__ = [
    "CALL_ESTIMATORS",
    "ESTIMATORS",
    "RECON_METHODS",
    "CallEstimator",
    "Estimator",
    "PdgLoad",
    "estimate_call",
    "estimate_job",
    "estimate_pdg",
    "estimate_pdg_from_graph",
    "estimate_prepare_job",
    "estimate_recon_bytes",
    "estimate_recon_job",
    "estimate_seq_parse",
    "estimate_simulation_from_sequence",
    "estimate_simulation_job",
    "format_bytes",
    "graph_bytes",
    "load_bytes",
    "main_pass_bytes",
    "pdg_load",
    "pdg_load_from_graph",
    "prepass_bytes",
]

# -- sizes --------------------------------------------------------------------------------------

C64 = 8
"""Bytes of a complex64."""
F32 = 4
"""Bytes of a float32."""

# -- the PDG main pass, counted from execute_graph ----------------------------------------------

STATE_BYTES = C64
"""Per (state, voxel): a state magnetisation (old and new, transverse and longitudinal)."""
PULSE_EDGE_BYTES = 4 * C64
"""Per (edge, voxel) of the largest edge kind: its gathered parents, their conjugate, the
products, and the previous kind's products (still bound while the next are made)."""
PULSE_COEF_BYTES = 6 * C64
"""Per voxel: the six pulse coefficient rows."""
LEFTOVER_EDGE_BYTES = 2 * C64
"""Per (edge, voxel) of the last edge kind: its parents and products live on into the signal."""
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
"""Per (state, voxel): the in-place relaxation factor."""
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
FIXED_BYTES = 12 << 20
"""One-time CPU costs of a fresh process: BLAS/OpenMP buffers and thread stacks, code pages."""

# -- reconstruction -----------------------------------------------------------------------------

RECON_METHODS = ("auto", "fft", "sense", "nufft", "adjoint")
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
"""Elements of the adjoint DFT's phase chunk (``mr0core.recon.adjoint._CHUNK_ELEMENTS``)."""

# -- limits of the parameters ---------------------------------------------------------------

PREPASS_AUTO_VOXELS = 1 << 17
"""``estimate_job`` runs the pre-pass by itself only for phantoms up to this many voxels…"""
PREPASS_AUTO_WORK = 100_000
"""… and repetitions × ``max_states`` up to this (about 3 s at most for the test corpus)."""

SEQ_TEXT_COPIES = 2
"""Copies of a ``.seq`` text alive while it is read: the bytes and the decoded text."""
SEQ_LAYOUT_BYTES_PER_SAMPLE = 2 * C64
"""Bytes per ADC sample of the readout layout (a zero signal and KData's copy of it)."""

MAX_SIZE = 1024  # as mr0core.jobs.load_job_phantom
MAX_COILS = 64
MAX_STATES = 1_000_000
MAX_MATRIX = 8192
MAX_RECON_VOXELS = 1 << 31
_BUILD_LIMIT = 256  # built-in phantoms are built (coils = 1) to count voxels up to this size


@dataclass(frozen=True)
class PdgLoad:
    """What drives a PDG simulation's memory; arrays hold one value per repetition.

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
    edges, edges_last
        ``E``: edges of the largest kind between simulated states; those of the last kind.
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
    graph_live
        Of those, the states whose voxel-shape response the pre-pass computed (it skips states
        dephased beyond the voxel's bandwidth for the whole readout); ``None``: all of them
        (the bound without the pre-pass).
    graph_states
        All states of the graph (plus and z, all repetitions).
    """

    voxels: int
    coils: int
    tx: int
    groups: tuple[int, ...]
    exact: bool
    plus: np.ndarray
    z: np.ndarray
    edges: np.ndarray
    edges_last: np.ndarray
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


def _chunk_samples(voxels: int) -> int:
    """Return the samples of one phasor chunk (as :func:`mr0core.sim.pdg._phasor_chunks`)."""
    return max(ANCHOR, (PHASOR_ELEMENTS // max(voxels, 1)) // ANCHOR * ANCHOR)


def _sample_plan(seq: Sequence, voxels: int, size_m: Any, exact: bool) -> _SamplePlan:
    """Follow the main pass's phasor chunks and step-product cache over ``seq``.

    The samples of a repetition are cut into chunks of 32-sample blocks; blocks that advance by
    the same quantised steps share one step-product tensor ``W [32, V]``, which an LRU cache
    keeps from its second use on (at most ``CACHE_ELEMENTS``, at least two). This replays that
    bookkeeping on the sequence alone (O(samples), no voxels).
    """
    import torch

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
    import torch

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

    The states are selected as :func:`mr0core.sim.execute_graph` selects them (``min_emitted``
    and ``min_latent`` as passed to it; the defaults are :class:`mr0core.jobs.SimSettings`').
    ``coils`` overrides the phantom's receive coils (the graph does not depend on them).
    """
    if len(graph) != len(seq):
        raise ValueError(f"the graph has {len(graph)} repetitions, the sequence {len(seq)}")
    from mr0core.sim.graph import (
        PLUS_FROM_PLUS,
        PLUS_FROM_PLUS_REFOC,
        PLUS_FROM_Z,
        PLUS_FROM_Z_CONJ,
        Z_FROM_PLUS,
        Z_FROM_PLUS_CONJ,
        Z_FROM_Z,
    )

    kinds = (PLUS_FROM_PLUS, PLUS_FROM_PLUS_REFOC, PLUS_FROM_Z, PLUS_FROM_Z_CONJ, Z_FROM_Z,
             Z_FROM_PLUS, Z_FROM_PLUS_CONJ)  # fmt: skip
    to_plus = kinds[:4]
    from_plus = (PLUS_FROM_PLUS, PLUS_FROM_PLUS_REFOC, Z_FROM_PLUS, Z_FROM_PLUS_CONJ)
    n = len(graph)
    plus, z, edges, last, emit, graph_plus, live = (np.zeros(n, np.int64) for _ in range(7))
    prev_p = np.zeros(0, bool)
    prev_z = np.ones(1, bool)
    for r, rg in enumerate(graph):
        act_p = rg.plus_latent >= min_latent
        act_z = rg.z_latent >= min_latent
        if len(act_z):
            act_z[0] = True  # the relaxed state is always simulated
        plus[r], z[r] = int(act_p.sum()), int(act_z.sum())
        graph_plus[r] = len(rg.plus_tau)
        live[r] = int((rg.plus_emitted > 0).sum())  # a pruned state's estimate is 0
        for kind in kinds:
            child, parent = rg.edges[kind]
            src = prev_p if kind in from_plus else prev_z
            if len(child) == 0 or len(src) == 0:
                continue
            ok = int(((act_p if kind in to_plus else act_z)[child] & src[parent]).sum())
            if ok:
                edges[r] = max(edges[r], ok)
                last[r] = ok
        if len(rg.plus_emitted) and act_p.any():
            emit[r] = int((rg.plus_emitted[act_p] >= min_emitted).sum())
        prev_p, prev_z = act_p, act_z
    voxels = int(data.PD.shape[0])
    groups, exact = _groups(data)
    plan = _sample_plan(seq, voxels, data.size.detach().cpu().numpy(), exact)
    return PdgLoad(
        voxels=voxels, coils=int(data.coil_sens.shape[0]) if coils is None else int(coils),
        tx=int(data.B1.shape[0]), groups=groups, exact=exact, plus=plus, z=z, edges=edges,
        edges_last=last, emit=np.where(plan.samples > 0, emit, 0), samples=plan.samples,
        blocks=plan.blocks, pattern_blocks=plan.pattern_blocks,
        step_products=plan.step_products, graph_plus=graph_plus, graph_live=live,
        graph_states=int(sum(graph.state_counts)),
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
    """
    from mr0core.sim.graph import PREPASS_OVERSAMPLE

    _check_int("voxels", voxels, 1, 1 << 40)
    _check_int("coils", coils, 1, MAX_COILS)
    _check_int("max_states", max_states, 1, MAX_STATES)
    _check_int("tx", tx, 1, MAX_COILS)
    n = len(seq)
    plus, z, edges, g_plus, g_z = (np.zeros(n, np.int64) for _ in range(5))
    n_p, n_z = 0, 1
    g_p, g_zc = 0, 1
    cap = PREPASS_OVERSAMPLE * max_states
    for r, rep in enumerate(seq):
        edges[r] = max(n_p, n_z)  # every parent has at most one child of each edge kind
        if float(rep.pulse.angle.detach()) != 0.0:
            n_p, n_z = min(max_states, 2 * n_p + 2 * n_z), min(max_states, n_z + n_p)
            g_p, g_zc = min(cap, 2 * g_p + 2 * g_zc), min(cap, g_zc + g_p)
        plus[r], z[r] = n_p, n_z
        g_plus[r], g_z[r] = g_p, g_zc
    plan = _sample_plan(seq, voxels, size_m, exact)
    return PdgLoad(
        voxels=int(voxels), coils=int(coils), tx=int(tx), groups=(int(voxels),), exact=exact,
        plus=plus, z=z, edges=edges, edges_last=edges.copy(),
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
    """Peak bytes the main pass allocates (the module docstring's ``main``)."""
    V, C = load.voxels, load.coils
    if len(load.plus) == 0:
        return int(V * (VOXEL_BYTES + VOXEL_CHANNEL_BYTES * (C + load.tx)))
    f = np.float64
    sp, sz, e, el, se = (x.astype(f) for x in (load.plus, load.z, load.edges, load.edges_last,
                                               load.emit))  # fmt: skip
    t, nb, nbp, nw = (x.astype(f) for x in (load.samples, load.blocks, load.pattern_blocks,
                                            load.step_products))  # fmt: skip
    sp_prev = np.concatenate([[0.0], sp[:-1]])
    sz_prev = np.concatenate([[1.0], sz[:-1]])
    live = STATE_BYTES * V * (sp_prev + sz_prev + sp + sz) + STEP_PRODUCT_BYTES * V * nw
    pulse = V * (PULSE_EDGE_BYTES * e + PULSE_COEF_BYTES)
    signal = V * (LEFTOVER_EDGE_BYTES * el + SIGNAL_STATE_BYTES * se) + STATE_SAMPLE_BYTES * se * t
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
        # (pdg._SignalBatch): their states, then rows (state, block, group, coil) × voxels
        n_gc = len(load.groups) * C
        rep_rows = se * np.ceil(t / ANCHOR) * n_gc
        batched = (se > 0) & (se * n_gc <= STACK_ROWS) & (t <= BATCH_SAMPLES)
        batched &= rep_rows * V <= BATCH_REP_ELEMENTS
        rows = float((se * np.ceil(t / ANCHOR) * n_gc)[batched].sum())
        held = float(se[batched].sum()) * V
        signal = signal + BATCH_ROW_BYTES * min(rows * V, 2.0 * BATCH_ELEMENTS) + C64 * held
    relax = RELAX_BYTES * V * np.maximum(sp, sz)
    peak = float(np.max(live + np.maximum(np.maximum(pulse, signal), relax)))
    persistent = V * (VOXEL_BYTES + VOXEL_CHANNEL_BYTES * (C + load.tx))
    return int(peak + persistent + SIGNAL_BYTES * float(load.samples.sum()) * C)


def prepass_bytes(load: PdgLoad) -> int:
    """Peak bytes of the float64 pre-pass beyond its graph (CPU host memory)."""
    if len(load.graph_plus) == 0:
        return 0
    live = load.graph_plus if load.graph_live is None else load.graph_live
    return int(PREPASS_STATE_SAMPLE_BYTES * float(np.max(live * load.samples)))


def graph_bytes(load: PdgLoad) -> int:
    """Return the bytes of the graph the pre-pass returns."""
    return int(GRAPH_STATE_BYTES * load.graph_states + GRAPH_REP_BYTES * len(load.plus))


def load_bytes(load: PdgLoad, device: str = "cpu") -> int:
    """Return the estimate for ``load``: CPU host memory, or what CUDA's allocator counts.

    On the CPU the graph grows during the pre-pass and stays during the main pass, so it adds
    to the larger of the pre-pass's temporaries and the main pass.
    """
    main = main_pass_bytes(load)
    if _device_kind(device) == "cuda":
        return main
    return int(FIXED_BYTES + graph_bytes(load) + max(prepass_bytes(load), MAIN_FACTOR * main))


def _device_kind(device: str) -> str:
    kind = str(device).split(":", 1)[0]
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:index]', got {device!r}")
    return kind


def estimate_pdg_from_graph(
    graph: Graph,
    seq: Sequence,
    data: SimData,
    *,
    min_emitted: float = 1e-3,
    min_latent: float = 1e-3,
    device: str = "cpu",
) -> int:
    """Estimated peak bytes of simulating ``seq`` on ``data`` along a computed ``graph``.

    Parameters
    ----------
    graph
        From :func:`mr0core.sim.compute_graph` for ``seq`` and ``data``.
    seq, data
        The sequence and the built phantom.
    min_emitted, min_latent
        The main pass's thresholds (:class:`mr0core.jobs.SimSettings` defaults).
    device
        ``"cpu"``: peak host memory of pre-pass and main pass (what the process adds);
        ``"cuda"``: the main pass's device allocations.
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
    """Estimated peak bytes of a PDG simulation before its pre-pass (an upper-ish bound).

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


# -- reconstruction -----------------------------------------------------------------------------


def estimate_recon_bytes(
    matrix: Any,
    coils: int = 1,
    method: str = "auto",
    *,
    samples: int | None = None,
    threads: int = 2,
) -> int:
    """Estimated peak bytes of reconstructing one image of ``matrix`` from ``coils`` coils.

    Parameters
    ----------
    matrix
        ``(nx, ny)`` or ``(nx, ny, nz)`` image matrix.
    coils
        Receive coils.
    method
        ``"fft"``, ``"sense"``, ``"nufft"``, ``"adjoint"``, or ``"auto"`` (the largest of fft
        and sense, which is what ``auto`` picks for Cartesian data).
    samples
        Raw samples per coil; default: the matrix (Cartesian), or ``π/2 ·`` the matrix for
        ``nufft``/``adjoint`` (a Nyquist-sampled radial acquisition).
    threads
        Threads of the NUFFT (its fine grids are batched over them).
    """
    dims = _matrix(matrix)
    _check_int("coils", coils, 1, MAX_COILS)
    _check_int("threads", threads, 1, 1024)
    if method not in RECON_METHODS:
        raise ValueError(f"method must be one of {', '.join(RECON_METHODS)}, got {method!r}")
    n_vox = math.prod(dims)
    d = 3 if dims[2] > 1 else 2
    if samples is None:
        samples = n_vox if method in ("auto", "fft", "sense") else math.ceil(math.pi / 2 * n_vox)
    _check_int("samples", samples, 1, 1 << 40)
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
    return int(FIXED_BYTES + body)


def _matrix(matrix: Any) -> tuple[int, int, int]:
    if isinstance(matrix, str | bytes) or not hasattr(matrix, "__len__"):
        raise ValueError(f"matrix must be [nx, ny] or [nx, ny, nz], got {matrix!r}")
    if not 2 <= len(matrix) <= 3:
        raise ValueError(f"matrix must be [nx, ny] or [nx, ny, nz], got {list(matrix)!r}")
    dims = []
    for v in matrix:
        _check_int("matrix entry", v, 1, MAX_MATRIX)
        dims.append(int(v))
    if len(dims) == 2:
        dims.append(1)
    if math.prod(dims) > MAX_RECON_VOXELS:
        raise ValueError(f"matrix {dims} has more than {MAX_RECON_VOXELS} voxels")
    return dims[0], dims[1], dims[2]


# -- jobs ---------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int in ``[lo, hi]`` (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return int(value)


def _load_sequence(spec: Any) -> Sequence:
    """Return a sequence from a :class:`Sequence`, Pulseq text, or a ``.seq`` path."""
    from mr0core.sequence import Sequence

    if isinstance(spec, Sequence):
        return spec
    if not isinstance(spec, str | Path):
        raise ValueError(f"seq must be Pulseq text or a .seq path, got {type(spec).__name__}")
    text = str(spec)
    if "\n" in text or text.lstrip().startswith(("[", "#")):
        from mr0core.pulseq import seq_to_sequence
        from mr0core.pulseq.reader import read_seq_text

        return seq_to_sequence(read_seq_text(text))
    path = Path(text)
    if not path.is_file():
        raise ValueError(f"seq: no such file {text!r} (give Pulseq text or a .seq path)")
    return Sequence.import_file(path)


@functools.lru_cache(maxsize=64)
def _builtin_voxels(name: str, size: int) -> int:
    """Return the voxels of a built-in phantom (built with one coil; partial volume counts)."""
    from mr0core.jobs import load_job_phantom

    phantom, _ = load_job_phantom(name, size, 1)
    return int(phantom.build().PD.shape[0])


def _json_phantom(path: Path, size: int | None) -> tuple[int, int | None, int, bool]:
    """Return ``(voxels, coils, tx channels, exact)`` of a NIfTI phantom (JSON and headers)."""
    import nibabel

    from mr0core.phantom.nifti import NiftiPhantom, NiftiRef

    config = NiftiPhantom.load(path)
    tissues = list(config.tissues.values())
    first = tissues[0].density
    ref = first if isinstance(first, NiftiRef) else first.file
    img = nibabel.load(path.parent / ref.file_name)
    if not isinstance(img, nibabel.spatialimages.SpatialImage):
        raise ValueError(f"{ref.file_name}: not an image volume")
    shape = tuple(int(s) for s in img.shape[:3])
    nz = shape[2] if len(shape) > 2 else 1
    grid = (size * size * nz) if size is not None else math.prod(shape)
    tx = max(len(t.B1_tx) for t in tissues)
    coils = max(len(t.B1_rx) for t in tissues)  # its own receive maps: the job's coils do not apply
    constant = all(isinstance(t.T2dash, int | float) and isinstance(t.ADC, int | float)
                   for t in tissues)  # fmt: skip
    exact = not constant or len(tissues) > MAX_GROUPS
    return len(tissues) * grid, coils, tx, exact


def _phantom_voxels(spec: Any, size: Any) -> tuple[int, int | None, int, bool]:
    """Return ``(voxels, coils, tx channels, exact)`` of the job's phantom, building no big one.

    ``coils`` is None for built-ins (made with the job's ``coils``).
    """
    from mr0core.phantom.builtin_phantoms import PHANTOMS

    if size is not None:
        _check_int("size", size, 4, MAX_SIZE)
    if not isinstance(spec, str):
        raise ValueError(f"phantom must be a built-in name or a .json path, got {spec!r}")
    if spec in PHANTOMS:
        n = 64 if size is None else int(size)
        if n <= _BUILD_LIMIT:
            return _builtin_voxels(spec, n), None, 1, False
        return n * n, None, 1, False  # the partial-volume excess vanishes at large sizes
    path = Path(spec)
    if path.suffix.lower() != ".json":
        raise ValueError(f"phantom {spec!r}: expected {', '.join(PHANTOMS)} or a .json file")
    if not path.is_file():
        raise ValueError(f"phantom file not found: {path}")
    return _json_phantom(path, None if size is None else int(size))


def _sim_settings(params: Mapping[str, Any]) -> Any:
    """Return the job's :class:`mr0core.jobs.SimSettings` (validated, ``max_states`` bounded)."""
    from mr0core.jobs import SimSettings

    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    thresholds: dict[str, float] = {}
    for name in ("min_state_mag", "min_emitted", "min_latent"):
        if name in params:
            value = params[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            thresholds[name] = float(value)
    return SimSettings(max_states=max_states, **thresholds)


def estimate_simulation_job(params: Mapping[str, Any], prepass: bool | None = None) -> int:
    """Estimate a simulation job: ``seq``, ``phantom``, ``size``, ``coils``, ``max_states``.

    ``seq`` is Pulseq text or a ``.seq`` path; ``phantom`` a built-in name (default
    ``"brain"``) or a NIfTI-phantom ``.json`` (which brings its own receive maps: ``coils``
    applies to built-ins only); optional ``min_state_mag``, ``min_emitted``,
    ``min_latent`` (:class:`mr0core.jobs.SimSettings`) and ``device`` (``"cpu"``, default, or
    ``"cuda"``). With ``prepass`` the phantom is built (one coil) and the pre-pass run, for
    :func:`estimate_pdg_from_graph`; without, it is the bound of :func:`estimate_pdg`; None
    (default) runs the pre-pass where it is cheap: at most ``PREPASS_AUTO_VOXELS`` voxels and
    ``PREPASS_AUTO_WORK`` repetitions × ``max_states``.
    """
    if "seq" not in params:
        raise ValueError("a simulation job needs 'seq' (Pulseq text or a .seq path)")
    coils = _check_int("coils", params.get("coils", 1), 1, MAX_COILS)
    settings = _sim_settings(params)
    device = _device_kind(params.get("device") or "cpu")
    spec, size = params.get("phantom", "brain"), params.get("size")
    voxels, own_coils, tx, exact = _phantom_voxels(spec, size)
    coils = coils if own_coils is None else own_coils
    seq = _load_sequence(params["seq"])
    if prepass is None:
        prepass = (
            voxels <= PREPASS_AUTO_VOXELS and len(seq) * settings.max_states <= PREPASS_AUTO_WORK
        )
    if not prepass:
        return load_bytes(pdg_load(seq, voxels, coils, settings.max_states, tx=tx, exact=exact),
                          device)  # fmt: skip
    from mr0core.jobs import load_job_phantom
    from mr0core.sim import compute_graph

    data = load_job_phantom(spec, size, 1)[0].build()
    graph = compute_graph(seq, data, settings.max_states, settings.min_state_mag)
    load = pdg_load_from_graph(
        graph, seq, data, settings.min_emitted, settings.min_latent, coils=coils
    )
    return load_bytes(load, device)


def estimate_recon_job(params: Mapping[str, Any], prepass: bool | None = None) -> int:
    """Estimate a recon job: ``matrix``, ``coils``, ``method`` (and optional ``samples``)."""
    if "matrix" not in params:
        raise ValueError("a recon job needs 'matrix' ([nx, ny] or [nx, ny, nz])")
    return estimate_recon_bytes(
        params["matrix"],
        params.get("coils", 1),
        params.get("method", "auto"),
        samples=params.get("samples"),
    )


def estimate_seq_parse(
    text_bytes: int | None = None, limits: Any = None, *, layout: bool = True
) -> int:
    """Peak bytes of reading and converting a ``.seq`` text within ``limits`` (a bound).

    Parameters
    ----------
    text_bytes
        Size of the text (bytes); default the largest ``limits`` admit (``max_file_bytes``).
    limits
        A :class:`mr0core.pulseq.SeqLimits`; default :data:`mr0core.pulseq.DEFAULT_SEQ_LIMITS`.
    layout
        Whether the readout layout is made too (``prepare_seq``'s ``layout`` or ``recon``).

    Notes
    -----
    No pre-scan of the file: the read and the conversion are each bounded by
    ``limits.max_memory_bytes`` before they allocate, so that budget is the estimate (see the
    module docstring).
    """
    from mr0core.pulseq import DEFAULT_SEQ_LIMITS, SeqLimits

    limits = DEFAULT_SEQ_LIMITS if limits is None else limits
    if not isinstance(limits, SeqLimits):
        raise ValueError(f"limits must be a SeqLimits, got {type(limits).__name__}")
    if text_bytes is None:
        text_bytes = limits.max_file_bytes
    _check_int("text_bytes", text_bytes, 0, limits.max_file_bytes)
    total = FIXED_BYTES + SEQ_TEXT_COPIES * text_bytes + limits.max_memory_bytes
    if layout:
        total += SEQ_LAYOUT_BYTES_PER_SAMPLE * limits.max_total_adc_samples
    return int(total)


def estimate_simulation_from_sequence(
    seq: Sequence,
    params: Mapping[str, Any],
    *,
    samples: int | None = None,
    recon_matrix: Any = None,
    recon_method: str = "auto",
) -> int:
    """Estimate a simulation of ``seq`` on a built twin described by ``params``.

    ``params``: ``voxels`` (built entries), ``coils``, ``tx``, ``exact``, ``max_states`` (as
    :func:`estimate_pdg`) and ``device`` (default ``"cpu"``: the host figure, the larger, so
    it holds wherever the job is placed). With ``recon_matrix`` the job also reconstructs
    (``recon_method``) after simulating: the larger of the PDG bound and the reconstruction
    with the signal (``samples`` ADC samples per coil) kept.
    """
    voxels = _check_int("voxels", params.get("voxels"), 1, 1 << 40)
    coils = _check_int("coils", params.get("coils", 1), 1, MAX_COILS)
    tx = _check_int("tx", params.get("tx", 1), 1, MAX_COILS)
    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    exact = params.get("exact", False)
    if not isinstance(exact, bool):
        raise ValueError(f"exact must be true or false, got {exact!r}")
    device = _device_kind(params.get("device") or "cpu")
    total = estimate_pdg(seq, voxels, coils, max_states, tx=tx, exact=exact, device=device)
    if recon_matrix is not None:
        if samples is None:
            samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
        matrix = [int(v) for v in recon_matrix]
        recon = estimate_recon_bytes(matrix, coils, recon_method, samples=max(int(samples), 1))
        total = max(total, recon + SIGNAL_BYTES * int(samples) * coils)
    return int(total)


def estimate_prepare_job(params: Mapping[str, Any], prepass: bool | None = None) -> int:
    """Estimate a ``prepare_seq`` job (:func:`estimate_seq_parse`; ``text_bytes`` optional)."""
    return estimate_seq_parse(params.get("text_bytes"),
                              layout=bool(params.get("layout") or params.get("recon")))  # fmt: skip


Estimator = Callable[[Mapping[str, Any], bool | None], int]
"""``(params, prepass) -> bytes``."""

ESTIMATORS: dict[str, Estimator] = {
    "simulate": estimate_simulation_job,
    "reconstruct": estimate_recon_job,
    "prepare_seq": estimate_prepare_job,
}
"""Function name → estimator of its JSON-able parameters alone (``mr0-scheduler estimate``,
:meth:`scheduler.service.Scheduler.submit`). Every key names a job or call function of
:mod:`scheduler.functions` (``simulate`` is both)."""


def _call_sub_slices(params: Mapping[str, Any]) -> int:
    sub = params.get("sub_slices")
    if params.get("rf_model") == "shaped" and isinstance(sub, int) and not isinstance(sub, bool):
        return max(1, sub)
    return 1


def estimate_prepare_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``prepare_seq``: the parse bound of its ``text`` input."""
    text = inputs.get("text")
    if not isinstance(text, str):
        raise ValueError("prepare_seq: input 'text' must be a str")
    from mr0core.pulseq import DEFAULT_SEQ_LIMITS

    size = min(len(text.encode("utf-8")), DEFAULT_SEQ_LIMITS.max_file_bytes)
    return estimate_seq_parse(size, layout=bool(params.get("layout") or params.get("recon")))


def estimate_simulate_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``simulate``: :func:`estimate_pdg` of its objects, host figure.

    The host (``cpu``) figure is the larger, so it holds on the CPU and a GPU alike;
    ``sub_slices`` (``rf_model`` ``"shaped"``) multiply the voxels. A reconstruction the call
    also runs (``recon``) is not counted: a caller that knows the readout layout passes the
    larger estimate (:func:`estimate_simulation_from_sequence`, from ``prepare_seq``).
    """
    from mr0core.phantom.sim_data import SimData
    from mr0core.sequence import Sequence

    seq, data = inputs.get("sequence"), inputs.get("phantom")
    if not isinstance(seq, Sequence) or not isinstance(data, SimData):
        raise ValueError("simulate: inputs 'sequence' (a Sequence) and 'phantom' (a SimData)")
    coils = int(data.coil_sens.shape[0])
    tx = int(data.B1.shape[0])
    voxels = int(data.voxel_count) * _call_sub_slices(params)
    max_states = _check_int("max_states", params.get("max_states", 200), 1, MAX_STATES)
    return estimate_pdg(seq, voxels, coils, max_states, tx=tx, device="cpu")


def estimate_reconstruct_call(inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimate the call ``reconstruct``: :func:`estimate_recon_bytes` of its ``kdata``."""
    from mr0core.recon.kdata import KData

    kd = inputs.get("kdata")
    if not isinstance(kd, KData):
        raise ValueError("reconstruct: input 'kdata' must be a KData")
    return estimate_recon_bytes(kd.recon_matrix, kd.n_coils, params.get("method", "auto"),
                                samples=int(kd.signal.shape[0]))  # fmt: skip


CallEstimator = Callable[[Mapping[str, Any], Mapping[str, Any]], int]
"""``(inputs, params) -> bytes``."""

CALL_ESTIMATORS: dict[str, CallEstimator] = {
    "prepare_seq": estimate_prepare_call,
    "simulate": estimate_simulate_call,
    "reconstruct": estimate_reconstruct_call,
}
"""Call function name → estimator of its input objects and parameters
(:meth:`scheduler.service.Scheduler.call` without ``estimate_bytes``)."""


def estimate_call(function_name: str, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> int:
    """Estimated peak bytes of the call ``function_name`` on ``inputs`` (objects).

    Raises
    ------
    ValueError
        For a function without a call estimator, or inputs it cannot read.
    """
    estimator = CALL_ESTIMATORS.get(function_name)
    if estimator is None:
        known = ", ".join(sorted(CALL_ESTIMATORS))
        raise ValueError(f"no memory estimate for call {function_name!r} (known: {known})")
    return int(estimator(inputs, params))


def estimate_job(
    function_name: str, params: Mapping[str, Any], *, prepass: bool | None = None
) -> int:
    """Estimated peak bytes of the job ``function_name(**params)``, without running it.

    Parameters
    ----------
    function_name
        A key of :data:`ESTIMATORS` (``"simulate"``, ``"reconstruct"``, ``"prepare_seq"``).
    params
        The job's JSON-able parameters, e.g. ``{"seq": "gre.seq", "phantom": "brain",
        "size": 64, "coils": 1, "max_states": 200}`` or ``{"matrix": [256, 256, 1],
        "coils": 8, "method": "sense"}``.
    prepass
        Simulations: True runs the PDG pre-pass for exact state counts (0.01–3 s for the test
        corpus, 7 s for a 3000-repetition MPRAGE), False takes the bound of
        :func:`estimate_pdg` (no simulation at all, but up to tens of times too high), None
        (default) the pre-pass where it is cheap (see :func:`estimate_simulation_job`).

    Raises
    ------
    ValueError
        For an unknown function, or parameters out of range (size beyond 1024, coils outside
        1..64, a matrix over 2³¹ voxels, …), checked before any phantom is built.
    """
    estimator = ESTIMATORS.get(function_name)
    if estimator is None:
        known = ", ".join(sorted(ESTIMATORS))
        raise ValueError(f"no memory estimate for job function {function_name!r} (known: {known})")
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    return int(estimator(params, prepass))


def format_bytes(n: float) -> str:
    """Return ``n`` bytes as a short text (``"12.3 MB"``; decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"

"""Error-controlled simulation: the PDG settings for a target accuracy.

``accuracy_settings(a)`` gives ``(max_state_count, min_state_mag, min_emitted_signal,
min_latent_signal)`` such that the NRMSE against the converged signal stays ≤ ``a`` on the cases
of the PDG benchmark suite (``scripts/pdg_suite.py``: 13 sequence classes, one voxel and the
built-in brain), measured by ``python scripts/accuracy_table.py`` (README, "Error-controlled
simulation"). The main pass's thresholds are relative to each repetition's strongest state, so the
error they cause is not ``a`` itself: the factors below are calibrated, not derived. What they
had to cover: the thresholds (TSE with variable refocusing at 48²: 1.5 % error at thresholds 1e-3,
0.01 % at 1e-4), the state cap (3-pulse stimulated echoes at 48²: 4 % with 200 states, 0.5 % with
2000) and the pre-pass magnitude floor (the same STE: 3.9 % at 2000 states and 1e-4, 0.5 % at 1e-6).

A fixed mapping cannot cover a sequence in which very many weak pathways all count (three 90°
pulses per TR, no RF spoiling: the 3-pulse STE of the suite was within 0.1 % at 48² with 50600
states; in every other case of the suite, at 48² and 96², the cap of 6325 states cuts off no state
with a latent signal, :func:`cap_loss` is 0). Such a sequence shows itself in the
pre-pass: its cap cuts off states whose latent signal estimate is not negligible
(:func:`cap_loss`). :func:`refine` is the next, tighter setting; ``mr0core.jobs.simulate_signal``
repeats the pre-pass with it while :func:`needs_refinement` says so (at most
:data:`MAX_REFINEMENTS` times, then it warns).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .graph import Graph

__all__ = [
    "ACCURACY_RANGE",
    "CAP_LOSS_FACTOR",
    "MAX_REFINEMENTS",
    "STATES_AT_1_PERCENT",
    "THRESHOLD_FACTOR",
    "accuracy_settings",
    "cap_loss",
    "needs_refinement",
    "refine",
]

ACCURACY_RANGE = (1e-5, 0.1)
"""Accuracies accepted by :func:`accuracy_settings` (NRMSE, fraction)."""

THRESHOLD_FACTOR = 0.01
"""Main-pass thresholds (``min_emitted_signal``, ``min_latent_signal``) = factor · accuracy."""

STATE_MAG_FACTOR = 1e-4
"""Pre-pass ``min_state_mag`` = factor · accuracy."""

STATES_AT_1_PERCENT = 2000
"""``max_state_count`` at accuracy 1e-2; it grows as 1/√accuracy below that."""


def accuracy_settings(accuracy: float) -> tuple[int, float, float, float]:
    """Return ``(max_state_count, min_state_mag, min_emitted_signal, min_latent_signal)``.

    Parameters
    ----------
    accuracy
        Target NRMSE against the converged signal (a fraction: 1e-2 = 1 %), within
        :data:`ACCURACY_RANGE`.

    Returns
    -------
    tuple
        For :func:`mr0core.compute_graph` (the first two) and :func:`mr0core.execute_graph`
        (the last two): 2000, 1e-6, 1e-4, 1e-4 at 1e-2; 6325, 1e-7, 1e-5, 1e-5 at 1e-3.

    Raises
    ------
    ValueError
        ``accuracy`` is not a finite number in :data:`ACCURACY_RANGE`.
    """
    a = float(accuracy)
    lo, hi = ACCURACY_RANGE
    if not (math.isfinite(a) and lo <= a <= hi):
        raise ValueError(f"accuracy must be a number in [{lo:g}, {hi:g}], got {accuracy!r}")
    threshold = THRESHOLD_FACTOR * a
    states = round(STATES_AT_1_PERCENT * max(1.0, 1e-2 / a) ** 0.5)
    return states, STATE_MAG_FACTOR * a, threshold, threshold


CAP_LOSS_FACTOR = 0.1
"""Refine while :func:`cap_loss` exceeds this times the accuracy."""

MAX_REFINEMENTS = 3
"""At most this many refinements (the state cap grows at most 2³ = 8-fold)."""

REFINE_THRESHOLD_FACTOR = 0.1
"""Each refinement multiplies the main-pass thresholds by this (and doubles the state cap).

On the STE at 48² and a = 1e-3 (NRMSE against 120000 states, floor 1e-12, thresholds 1e-10):
50600 states with thresholds 1e-6 gave 0.095 %, 40000 with thresholds 1e-8 gave 0.034 %; where
the cap cuts off heard states, many states below the thresholds count too."""


def cap_loss(graph: Graph) -> float:
    """Return the mean over repetitions of the latent signal estimate the state cap cut off.

    The latent estimates are relative to each repetition's strongest state
    (:mod:`mr0core.sim.graph`), so this is a loose, relative measure of the signal the cap may
    have lost; 0 when the cap kept every state with a latent signal.
    """
    if not len(graph):
        return 0.0
    return float(sum(rg.dropped_latent for rg in graph)) / len(graph)


def needs_refinement(graph: Graph, accuracy: float) -> bool:
    """Return whether the pre-pass's cap cut off more than :data:`CAP_LOSS_FACTOR` · accuracy."""
    return cap_loss(graph) > CAP_LOSS_FACTOR * float(accuracy)


def refine(settings: tuple[int, float, float, float]) -> tuple[int, float, float, float]:
    """Return the next tighter ``(max_state_count, min_state_mag, min_emitted, min_latent)``.

    Twice the states and both main-pass thresholds times :data:`REFINE_THRESHOLD_FACTOR`: where
    the cap cuts off heard states, many weak ones count, and the thresholds skip them too.
    """
    states, mag, emitted, latent = settings
    f = REFINE_THRESHOLD_FACTOR
    return 2 * int(states), mag, emitted * f, latent * f

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
"""

from __future__ import annotations

import math

__all__ = ["ACCURACY_RANGE", "STATES_AT_1_PERCENT", "THRESHOLD_FACTOR", "accuracy_settings"]

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

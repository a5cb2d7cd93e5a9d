"""CBF quantification: the ASL white paper's single-PLD formula and the GKM's exact inverse.

White paper: D. C. Alsop et al., "Recommended implementation of arterial spin-labeled
perfusion MRI for clinical applications", Magn Reson Med 73:102–116 (2015), equations 1
(pCASL/CASL) and 2 (PASL with QUIPSS II / Q2TIPS bolus cut-off):

* pCASL: ``CBF = 6000 λ ΔM e^{PLD/T1b} / (2 α T1b M0 (1 − e^{−τ/T1b}))``
* PASL:  ``CBF = 6000 λ ΔM e^{TI/T1b} / (2 α TI1 M0)``

with ΔM = control − label and M0 the proton-density-weighted (M0) image, in the same unit; CBF
in ml/100 g/min. The formula is the exact inverse of :func:`mr0core.perfusion.gkm.delta_m` with
``model="whitepaper"`` when the label has arrived before the readout (Δt ≤ PLD, or
Δt + TI1 ≤ TI). :func:`quantify_gkm` inverts the full model voxel by voxel instead, given the
tissue T1 and arrival-time maps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .gkm import LABEL_TYPES, WHITE_PAPER_LAMBDA, delta_m

__all__ = ["quantify", "quantify_gkm"]

_PER_MIN_100G = 6000.0


def quantify(
    delta_m_image: Any,
    m0_image: Any,
    *,
    label_type: str,
    t1_blood: float,
    label_efficiency: float,
    post_labeling_delay: float | None = None,
    label_duration: float | None = None,
    inversion_time: float | None = None,
    bolus_cutoff_time: float | None = None,
    partition_coefficient: float = WHITE_PAPER_LAMBDA,
) -> np.ndarray:
    """CBF (ml/100 g/min) from a ΔM and an M0 image with the white paper's formula.

    Parameters
    ----------
    delta_m_image
        Control − label, any shape.
    m0_image
        M0 image in the same unit, broadcastable to ``delta_m_image``.
    label_type
        ``"pcasl"``, ``"casl"`` (need ``post_labeling_delay``, ``label_duration``) or ``"pasl"``
        (needs ``inversion_time`` and ``bolus_cutoff_time`` TI1), all in s.
    t1_blood
        Blood T1 in s.
    label_efficiency
        α.
    post_labeling_delay, label_duration, inversion_time, bolus_cutoff_time
        Timing in s (see ``label_type``).
    partition_coefficient
        λ in ml/g.

    Returns
    -------
    np.ndarray
        float64 CBF; 0 where ``M0 ≤ 0`` (outside the object).

    Raises
    ------
    ValueError
        For an unknown label type or a missing or non-positive timing parameter.
    """
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    dm = np.asarray(delta_m_image, dtype=np.float64)
    m0 = np.asarray(m0_image, dtype=np.float64)
    if not (t1_blood > 0 and 0 < label_efficiency <= 1 and partition_coefficient > 0):
        raise ValueError(
            f"need t1_blood > 0, 0 < label_efficiency <= 1, partition_coefficient > 0; got "
            f"{t1_blood}, {label_efficiency}, {partition_coefficient}"
        )
    if label_type in ("pcasl", "casl"):
        if post_labeling_delay is None or label_duration is None or label_duration <= 0:
            raise ValueError(f"{label_type}: need post_labeling_delay and label_duration > 0")
        num = np.exp(post_labeling_delay / t1_blood)
        den = 2.0 * label_efficiency * t1_blood * -np.expm1(-label_duration / t1_blood)
    else:
        if inversion_time is None or bolus_cutoff_time is None or bolus_cutoff_time <= 0:
            raise ValueError("pasl: need inversion_time and bolus_cutoff_time > 0")
        num = np.exp(inversion_time / t1_blood)
        den = 2.0 * label_efficiency * bolus_cutoff_time
    inside = m0 > 0
    ratio = np.divide(dm, m0, out=np.zeros(np.broadcast(dm, m0).shape), where=inside)
    result: np.ndarray = _PER_MIN_100G * partition_coefficient * num * ratio / den
    return result


def quantify_gkm(
    delta_m_image: Any,
    m0_image: Any,
    *,
    t: float,
    transit_time: Any,
    t1_tissue: Any,
    label_type: str,
    label_duration: float,
    t1_blood: float,
    label_efficiency: float,
    partition_coefficient: float = WHITE_PAPER_LAMBDA,
    iterations: int = 30,
) -> np.ndarray:
    """CBF (ml/100 g/min) by inverting the full General Kinetic Model voxel by voxel.

    ΔM is proportional to f except through T1′ (``1/T1′ = 1/T1 + f/λ``), so the fixed point
    ``f ← ΔM / (ΔM_GKM(f) / f)`` converges fast (the f/λ term is ≈ 1 % of 1/T1).

    Parameters
    ----------
    delta_m_image, m0_image
        As for :func:`quantify`.
    t
        Time since the start of labelling in s (``τ + PLD`` or ``TI``).
    transit_time, t1_tissue
        Arrival time and tissue T1 maps (s), broadcastable to the images.
    label_type, label_duration, t1_blood, label_efficiency, partition_coefficient
        As for :func:`mr0core.perfusion.gkm.delta_m`.
    iterations
        Fixed-point iterations (1..1000).

    Returns
    -------
    np.ndarray
        float64 CBF; 0 where ``M0 ≤ 0`` or the label has not arrived (no signal to invert).
    """
    if not 1 <= iterations <= 1000:
        raise ValueError(f"iterations must be in 1..1000, got {iterations}")
    dm = np.asarray(delta_m_image, dtype=np.float64)
    m0 = np.asarray(m0_image, dtype=np.float64)
    shape = np.broadcast_shapes(dm.shape, m0.shape, np.shape(transit_time), np.shape(t1_tissue))
    f = np.full(shape, 60.0)

    def per_unit(f_now: np.ndarray) -> np.ndarray:
        probe = np.maximum(f_now, 1e-6)
        value = delta_m(
            t, perfusion=probe, transit_time=transit_time, m0=m0, t1_tissue=t1_tissue,
            label_type=label_type, label_duration=label_duration, t1_blood=t1_blood,
            partition_coefficient=partition_coefficient, label_efficiency=label_efficiency,
        )  # fmt: skip
        result: np.ndarray = value / probe
        return result

    for _ in range(iterations):
        g = per_unit(f)
        f = np.divide(dm, g, out=np.zeros(shape), where=g > 0)
    return f

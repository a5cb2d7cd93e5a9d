"""The General Kinetic Model of arterial spin labelling (Buxton et al. 1998).

R. B. Buxton, L. R. Frank, E. C. Wong, B. Siewert, S. Warach, R. R. Edelman, "A general
kinetic model for quantitative perfusion imaging with arterial spin labeling", Magn Reson Med
40:383–396 (1998), equations for continuous (CASL, and pseudo-continuous pCASL) and pulsed
(PASL) labelling, with plug flow, a single well-mixed tissue compartment and the label decaying
with the blood T1 before arrival and with the tissue's apparent T1′ after it.

Notation (all arrays broadcast against each other):

* ``t``: time since the start of labelling, s. pCASL/CASL: ``t = τ + PLD`` (labelling duration
  plus post-labelling delay); PASL: ``t = TI`` (inversion time).
* ``f``: perfusion rate in ml/100 g/min (converted to ml/g/s, ``f / 6000``, inside).
* ``Δt``: arrival (transit) time of the labelled blood, s.
* ``τ``: labelling duration (pCASL/CASL) or bolus duration (PASL; with QUIPSS II cut-off it is
  the cut-off time TI1), s.
* ``M0``: equilibrium tissue magnetisation (a.u.); arterial blood has ``M0b = M0 / λ``.
* ``1/T1′ = 1/T1 + f/λ``; ``k = 1/T1b − 1/T1′``.

The result ``ΔM`` = control − label longitudinal magnetisation, in the unit of ``M0``.

``model="whitepaper"`` evaluates the same equations with ``T1′ = T1b`` (the label stays in
the blood's T1 after arrival), the single-compartment model behind the quantification formula
of the ASL white paper (Alsop et al., MRM 73:102–116, 2015), so that
:func:`mr0core.perfusion.quantify.quantify` inverts it exactly whenever ``Δt ≤ PLD`` (pCASL)
or ``Δt + τ ≤ TI`` (PASL).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "LABEL_TYPES",
    "MODELS",
    "WHITE_PAPER_BLOOD_T1",
    "WHITE_PAPER_EFFICIENCY",
    "WHITE_PAPER_LAMBDA",
    "delta_m",
    "peak_time",
]

#: Labelling schemes: pseudo-continuous, continuous and pulsed.
LABEL_TYPES = ("pcasl", "casl", "pasl")

#: ``"full"``: Buxton's model with the tissue's T1′; ``"whitepaper"``: T1′ = T1b.
MODELS = ("full", "whitepaper")

#: Recommended labelling efficiencies of the white paper (Alsop et al. 2015, Table 1).
WHITE_PAPER_EFFICIENCY = {"pcasl": 0.85, "pasl": 0.98}

#: Blood T1 (s) of the white paper (Alsop et al. 2015, Table 1), per field strength in T.
WHITE_PAPER_BLOOD_T1 = {1.5: 1.35, 3.0: 1.65}

#: Whole-brain blood–tissue partition coefficient λ (ml/g) of the white paper.
WHITE_PAPER_LAMBDA = 0.9

_PER_MIN_100G = 6000.0  # ml/100 g/min -> ml/g/s


def _expm1_over_x(x: np.ndarray) -> np.ndarray:
    """``(exp(x) − 1) / x``, equal to 1 at ``x = 0`` (stable for small ``|x|``)."""
    small = np.abs(x) < 1e-8
    safe = np.where(small, 1.0, x)
    return np.where(small, 1.0 + 0.5 * x, np.expm1(safe) / safe)


def _check(label_type: str, model: str) -> None:
    if label_type not in LABEL_TYPES:
        raise ValueError(f"label_type must be one of {LABEL_TYPES}, got {label_type!r}")
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def _positive(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return arr


def delta_m(
    t: Any,
    *,
    perfusion: Any,
    transit_time: Any,
    m0: Any,
    t1_tissue: Any,
    label_type: str,
    label_duration: Any,
    t1_blood: float,
    partition_coefficient: float = WHITE_PAPER_LAMBDA,
    label_efficiency: float = 0.85,
    model: str = "full",
) -> np.ndarray:
    """Control − label magnetisation ΔM(t) of the General Kinetic Model.

    Parameters
    ----------
    t
        Time since the start of labelling in s: ``τ + PLD`` for pCASL/CASL, ``TI`` for PASL.
    perfusion
        Perfusion rate f in ml/100 g/min (≥ 0).
    transit_time
        Arrival time Δt of the label in the voxel, s (≥ 0).
    m0
        Equilibrium magnetisation of the tissue, any unit; ΔM comes out in the same unit.
    t1_tissue
        Tissue T1 in s (used by ``model="full"`` only).
    label_type
        ``"pcasl"``, ``"casl"`` or ``"pasl"``.
    label_duration
        τ in s: labelling duration (pCASL/CASL) or bolus duration (PASL; QUIPSS II: TI1).
    t1_blood
        Arterial blood T1 in s.
    partition_coefficient
        λ in ml/g.
    label_efficiency
        α in 0..1 (inversion efficiency at the labelling plane).
    model
        ``"full"`` (T1′ from the tissue T1 and f/λ) or ``"whitepaper"`` (T1′ = T1b).

    Returns
    -------
    np.ndarray
        ΔM, float64, of the broadcast shape of the inputs; 0 before the label arrives.

    Raises
    ------
    ValueError
        For an unknown label type or model, or a non-positive T1, τ, λ or α.
    """
    _check(label_type, model)
    t = np.asarray(t, dtype=np.float64)
    f = np.asarray(perfusion, dtype=np.float64) / _PER_MIN_100G
    dt = np.asarray(transit_time, dtype=np.float64)
    m0 = np.asarray(m0, dtype=np.float64)
    tau = _positive("label_duration", label_duration)
    t1b = float(_positive("t1_blood", t1_blood))
    lam = float(_positive("partition_coefficient", partition_coefficient))
    alpha = float(_positive("label_efficiency", label_efficiency))
    if alpha > 1:
        raise ValueError(f"label_efficiency must be in (0, 1], got {label_efficiency}")
    if model == "full":
        t1p = 1.0 / (1.0 / _positive("t1_tissue", t1_tissue) + f / lam)
    else:
        t1p = np.full(np.broadcast(f, m0).shape, t1b)
    m0b = m0 / lam
    u = t - dt  # time since arrival
    arrived = u >= 0.0
    in_bolus = u < tau
    u0 = np.clip(u, 0.0, None)
    if label_type in ("pcasl", "casl"):
        scale = 2.0 * alpha * m0b * f * t1p * np.exp(-dt / t1b)
        filling = -np.expm1(-np.minimum(u0, tau) / t1p)
        decay = np.exp(-np.clip(u0 - tau, 0.0, None) / t1p)
        out = scale * filling * decay
    else:
        k = 1.0 / t1b - 1.0 / t1p
        during = u0 * _expm1_over_x(k * u0)
        after = tau * np.exp(k * u0) * _expm1_over_x(-k * tau)
        out = 2.0 * alpha * m0b * f * np.exp(-t / t1b) * np.where(in_bolus, during, after)
    return np.where(arrived, out, 0.0)


def peak_time(
    *,
    transit_time: float,
    t1_tissue: float,
    perfusion: float,
    label_type: str,
    label_duration: float,
    t1_blood: float,
    partition_coefficient: float = WHITE_PAPER_LAMBDA,
    model: str = "full",
) -> float:
    """Time (s since the start of labelling) at which ΔM(t) peaks, in closed form.

    pCASL/CASL: ``Δt + τ`` (ΔM grows while the bolus arrives, then decays with T1′). PASL: the
    in-bolus maximum ``Δt + ln(T1b/T1′)/(1/T1′ − 1/T1b)`` when it falls inside the bolus,
    else ``Δt + τ``; with ``T1′ = T1b`` the in-bolus limit is ``Δt + T1b``.

    Parameters are those of :func:`delta_m` (scalars).

    Returns
    -------
    float
        Peak time in s.
    """
    _check(label_type, model)
    if label_type in ("pcasl", "casl"):
        return float(transit_time + label_duration)
    if model == "full":
        t1p = 1.0 / (1.0 / t1_tissue + perfusion / _PER_MIN_100G / partition_coefficient)
    else:
        t1p = t1_blood
    r = 1.0 / t1p - 1.0 / t1_blood
    inner = t1_blood if abs(r) < 1e-12 else float(np.log(t1_blood / t1p) / r)
    return float(transit_time + min(inner, label_duration))

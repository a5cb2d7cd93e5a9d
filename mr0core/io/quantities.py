"""Quantitative-map roles and their units, shared by the DICOM and BIDS readers.

A map found in a DICOM series or a BIDS dataset has a *role* (what it measures) and comes in
whatever unit the scanner or fitting tool chose. :func:`to_canonical` converts it to the unit the
simulator uses:

=============  ==================  ===============================================================
role           canonical unit      accepted units (UCUM codes and common spellings)
=============  ==================  ===============================================================
``T1map``      s                   s, ms, us
``T2map``      s                   s, ms, us
``T2starmap``  s                   s, ms, us
``R1map`` …    (turned into T1)    1/s, Hz, 1/ms (``R1map``, ``R2map``, ``R2starmap``)
``PDmap``      a.u.                any (PD is relative; the twin normalises it)
``B0map``      Hz                  Hz, rad/s
``B1map``      1 (relative)        1, {ratio}, %, deg (with the nominal flip angle)
``ADC``        10⁻³ mm²/s          mm2/s, um2/s (10⁻⁶ mm²/s), um2/ms, m2/s, 10-3.mm2/s
=============  ==================  ===============================================================

Without a stated unit the value range decides (as :mod:`mr0core.phantom.twin` does): a T1, T2 or
T2* median above 10 is in ms, an ADC median below 0.05 is in mm²/s and one above 50 in 10⁻⁶ mm²/s,
a B1 median above 10 is in percent. Every conversion, stated or guessed, gives one warning that
names the map, the unit and where the unit came from. A result outside a plausible range warns
too; a B1 map that still does not look relative raises :class:`QuantityError`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = [
    "CANONICAL_UNITS",
    "MAP_ROLES",
    "QuantityError",
    "normalise_unit",
    "to_canonical",
]

MAP_ROLES = ("T1map", "T2map", "T2starmap", "PDmap", "B0map", "B1map", "ADC")
"""Roles of the quantitative maps a twin is built from."""

CANONICAL_UNITS = {
    "T1map": "s",
    "T2map": "s",
    "T2starmap": "s",
    "PDmap": "a.u.",
    "B0map": "Hz",
    "B1map": "1",
    "ADC": "10^-3 mm^2/s",
}
"""The unit each role is converted to (the units of :class:`~mr0core.phantom.VoxelGridPhantom`)."""

RATE_ROLES = {"R1map": "T1map", "R2map": "T2map", "R2starmap": "T2starmap"}
"""Relaxation-rate roles and the time role they are inverted into."""

_TIME = {"s": 1.0, "sec": 1.0, "ms": 1e-3, "msec": 1e-3, "us": 1e-6}
_RATE = {"1/s": 1.0, "/s": 1.0, "s-1": 1.0, "hz": 1.0, "1/ms": 1e3, "/ms": 1e3, "ms-1": 1e3}
_ADC = {
    "10-3mm2/s": 1.0, "10-3.mm2/s": 1.0, "um2/ms": 1.0, "mm2/s": 1e3, "m2/s": 1e9,
    "um2/s": 1e-3, "10-6mm2/s": 1e-3, "10-6.mm2/s": 1e-3,
}  # fmt: skip
_B0 = {"hz": 1.0, "rad/s": 1.0 / (2.0 * math.pi)}
_B1 = {"1": 1.0, "{ratio}": 1.0, "ratio": 1.0, "rel": 1.0, "%": 0.01, "percent": 0.01, "pct": 0.01}
_NO_UNIT = ("", "1", "{ratio}", "nounits", "none", "a.u.", "au", "arbitrary")
_PLAUSIBLE = {
    "T1map": (0.05, 10.0),
    "T2map": (1e-3, 5.0),
    "T2starmap": (5e-4, 1.0),
    "ADC": (0.01, 5.0),
    "B1map": (0.2, 5.0),
}


class QuantityError(ValueError):
    """A map whose unit is unsupported or whose values cannot be brought to the canonical unit."""


def normalise_unit(unit: object) -> str:
    """Return a unit string in a compact lower-case form (``"mm^2/s"`` → ``"mm2/s"``).

    ``None`` and non-strings give ``""`` (no unit stated).
    """
    if not isinstance(unit, str):
        return ""
    u = unit.strip().lower().replace("µ", "u").replace("μ", "u")
    for old, new in (("^", ""), ("**", ""), (" ", ""), ("²", "2"), ("·", ".")):
        u = u.replace(old, new)
    if u in ("10e-3mm2/s", "1e-3mm2/s", "x10-3mm2/s"):
        u = "10-3mm2/s"
    if u in ("10e-6mm2/s", "1e-6mm2/s", "x10-6mm2/s"):
        u = "10-6mm2/s"
    if u in ("deg", "degree", "degrees", "°"):
        u = "deg"
    return u


def _median(data: np.ndarray) -> float:
    vals = data[np.isfinite(data) & (data > 0)]
    return float(np.median(vals)) if vals.size else math.nan


def to_canonical(
    role: str,
    data: np.ndarray,
    unit: object,
    *,
    where: str,
    unit_source: str = "stated",
    nominal_flip_deg: float | None = None,
) -> tuple[str, np.ndarray]:
    """Convert a map to the canonical unit of its role.

    Parameters
    ----------
    role
        One of :data:`MAP_ROLES` or :data:`RATE_ROLES` (rates are inverted to times, 1/0 = inf).
    data
        The map, any shape, in ``unit``.
    unit
        The stated unit (UCUM code such as ``"ms"``, ``"mm2/s"``, ``"%"``), or None/"" when
        unknown: then the value range decides and the warning says so.
    where
        Names the map in warnings and errors (file, series).
    unit_source
        Where ``unit`` came from, for the warning (``"RealWorldValueMapping"``,
        ``"sidecar Units"``).
    nominal_flip_deg
        The nominal flip angle in degrees, needed only for a B1 map in degrees.

    Returns
    -------
    tuple of str and numpy.ndarray
        The role (a rate role becomes its time role) and the float32 map in
        :data:`CANONICAL_UNITS`.

    Raises
    ------
    QuantityError
        If the unit is unsupported for the role, or a B1 map does not come out relative.
    """
    data = np.asarray(data, dtype=np.float64)
    u = normalise_unit(unit)
    stated = u not in _NO_UNIT
    if role in RATE_ROLES:
        time_role = RATE_ROLES[role]
        factor = _RATE.get(u if stated else "1/s")
        if factor is None:
            raise QuantityError(f"{where}: {role} in unsupported unit {unit!r} (expected 1/s)")
        with np.errstate(divide="ignore"):
            out = np.where(data > 0, 1.0 / (data * factor), np.inf)
        warnings.warn(
            f"{where}: {role} ({unit or '1/s, assumed'}) inverted into {time_role} in s",
            stacklevel=2,
        )
        return time_role, _check(time_role, out, where)
    if role not in CANONICAL_UNITS:
        raise QuantityError(f"{where}: unknown map role {role!r}; expected one of {MAP_ROLES}")
    target = CANONICAL_UNITS[role]
    factor, reason = 1.0, ""
    if role == "PDmap":
        return role, data.astype(np.float32)
    if role in ("T1map", "T2map", "T2starmap"):
        if stated:
            if u not in _TIME:
                raise QuantityError(f"{where}: {role} in unsupported unit {unit!r} (s or ms)")
            factor, reason = _TIME[u], f"{unit} ({unit_source})"
        elif _median(data) > 10:
            factor, reason = 1e-3, f"ms (guessed: median {_median(data):.4g} > 10, no unit given)"
    elif role == "ADC":
        if stated:
            if u not in _ADC:
                raise QuantityError(f"{where}: ADC in unsupported unit {unit!r} (mm2/s)")
            factor, reason = _ADC[u], f"{unit} ({unit_source})"
        else:
            med = _median(data)
            if med < 0.05:
                factor, reason = 1e3, f"mm2/s (guessed: median {med:.4g} < 0.05, no unit given)"
            elif med > 50:
                factor, reason = 1e-3, f"10-6 mm2/s (guessed: median {med:.4g} > 50, no unit)"
    elif role == "B0map":
        if stated:
            if u not in _B0:
                raise QuantityError(f"{where}: B0map in unsupported unit {unit!r} (Hz, rad/s)")
            factor, reason = _B0[u], f"{unit} ({unit_source})"
    elif role == "B1map":
        if u == "deg":
            if not nominal_flip_deg or not math.isfinite(nominal_flip_deg):
                raise QuantityError(
                    f"{where}: B1map in degrees, but the nominal flip angle is unknown"
                )
            factor = 1.0 / nominal_flip_deg
            reason = f"degrees ({unit_source}; nominal flip angle {nominal_flip_deg:g} deg)"
        elif stated:
            if u not in _B1:
                raise QuantityError(f"{where}: B1map in unsupported unit {unit!r} (1, %)")
            factor, reason = _B1[u], f"{unit} ({unit_source})"
        elif _median(data) > 10:
            factor, reason = 0.01, f"percent (guessed: median {_median(data):.4g} > 10, no unit)"
    if factor != 1.0:
        warnings.warn(f"{where}: {role} in {reason}; converted to {target}", stacklevel=2)
        data = data * factor
    return role, _check(role, data, where)


def _check(role: str, data: np.ndarray, where: str) -> np.ndarray:
    lo, hi = _PLAUSIBLE.get(role, (-math.inf, math.inf))
    med = _median(data)
    if math.isfinite(med) and not lo <= med <= hi:
        unit = CANONICAL_UNITS[role]
        if role == "B1map":
            raise QuantityError(
                f"{where}: B1map median {med:.4g} after conversion is not a relative field "
                f"(expected {lo:g}..{hi:g}); state its unit (%, deg, or 1)"
            )
        warnings.warn(
            f"{where}: {role} median {med:.4g} {unit} is outside the plausible {lo:g}..{hi:g} "
            f"{unit}; check the map's unit",
            stacklevel=3,
        )
    return data.astype(np.float32)

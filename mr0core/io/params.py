"""Acquisition parameters of a sequence (TR, TE, TI, flip angle, FOV, matrix) for image headers.

Values come from the Pulseq ``[DEFINITIONS]`` when the file states them, and are otherwise
estimated from the sequence itself:

- **TR**: interval between the first two excitation pulses.
- **TE**: from an excitation pulse centre to the moment the sampled trajectory passes closest to
  the k-space centre (interpolated between the two samples beside it), taking the first
  excitation whose readout reaches the centre (the effective TE of echo trains).
- **TI**: from the last inversion pulse (a non-excitation, non-refocusing pulse of at least
  135°) to the excitation whose readout reaches the k-space centre (MPRAGE's convention; for a
  single-excitation inversion recovery it is the first excitation).
- **FOV / matrix**: ``FOV`` definition; the matrix from the grid of sampled k-space positions.

Each repetition of a :class:`~mr0core.sequence.Sequence` starts at the centre of its pulse, so pulse
times are sums of repetition durations, and an ADC sample is taken at the end of its event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mr0core.sequence import PulseUsage, as_sequence

__all__ = ["SequenceParameters", "sequence_parameters"]

_AXES = ("x", "y", "z")
_INVERSION_MIN_DEG = 135.0
# Definition keys people use for these values (Pulseq example scripts: "TE", "TR", "TI").
_TE_KEYS = ("TE", "te", "EchoTime", "echo_time", "TEeff")
_TR_KEYS = ("TR", "tr", "RepetitionTime", "repetition_time")
_TI_KEYS = ("TI", "ti", "InversionTime", "inversion_time")
_FLIP_KEYS = ("FlipAngle", "flip_angle", "FA", "alpha")
_B0_KEYS = ("B0", "FieldStrength", "MagneticFieldStrength")
_MATRIX_KEYS = ("Matrix", "matrix", "MatrixSize", "BaseResolution")


@dataclass(frozen=True)
class SequenceParameters:
    """Acquisition parameters of a sequence; a value is None where it cannot be determined.

    Attributes
    ----------
    name
        The ``Name`` definition.
    TR, TE, TI
        Repetition, echo and inversion time in s.
    TR_preparation
        Interval between successive inversion pulses in s (BIDS ``RepetitionTimePreparation``).
    flip_angle_deg
        Flip angle of the first excitation pulse in degrees.
    fov_m
        Field of view ``(x, y, z)`` in m.
    matrix
        Reconstruction matrix ``(x, y, z)``; z is the number of slices of 2-D multi-slice data.
    readout_axis
        ``"x"``, ``"y"`` or ``"z"``: the axis along which k-space moves during one readout.
    phase_axes
        The other axes along which the sampled k-space positions vary.
    acquisition_type
        ``"2D"`` (no k-space encoding along z) or ``"3D"``.
    n_contrasts
        Number of contrast ids used by the ADC samples.
    n_adc_samples
        Number of ADC samples.
    duration_s
        Total duration in s.
    field_strength_T
        Main field in T, only when the sequence states it (``B0`` definition).
    sources
        ``{field name: "definition" | "estimated"}`` for the values above that are not None.
    """

    name: str | None = None
    TR: float | None = None
    TE: float | None = None
    TI: float | None = None
    TR_preparation: float | None = None
    flip_angle_deg: float | None = None
    fov_m: tuple[float, float, float] | None = None
    matrix: tuple[int, int, int] | None = None
    readout_axis: str | None = None
    phase_axes: tuple[str, ...] = ()
    acquisition_type: str | None = None
    n_contrasts: int = 0
    n_adc_samples: int = 0
    duration_s: float = 0.0
    field_strength_T: float | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-serialisable dict."""
        out = asdict(self)
        for key in ("fov_m", "matrix", "phase_axes"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out


# -- definitions -------------------------------------------------------------------------------


def _def_values(definitions: Mapping[str, Any], keys: tuple[str, ...]) -> list[Any] | None:
    for key in keys:
        if key in definitions:
            value = definitions[key]
            if isinstance(value, str):
                value = value.split()
            elif not isinstance(value, list | tuple | np.ndarray):
                value = [value]
            return list(value)
    return None


def _def_float(definitions: Mapping[str, Any], keys: tuple[str, ...]) -> float | None:
    values = _def_values(definitions, keys)
    if not values:
        return None
    try:
        value = float(values[0])
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _def_name(definitions: Mapping[str, Any]) -> str | None:
    values = _def_values(definitions, ("Name", "name", "SequenceName"))
    if not values:
        return None
    tokens = [str(v) for v in values]
    # MATLAB Pulseq before 1.3 wrote the name as character codes ("109 112 114 ...").
    if all(t.isdigit() and 32 <= int(t) < 127 for t in tokens):
        return "".join(chr(int(t)) for t in tokens)
    return " ".join(tokens)


def _def_triple(definitions: Mapping[str, Any], keys: tuple[str, ...]) -> list[float] | None:
    values = _def_values(definitions, keys)
    if not values:
        return None
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        return None
    if len(floats) == 2:
        floats.append(1.0 if keys is _MATRIX_KEYS else 0.0)
    return floats if len(floats) == 3 else None


# -- k-space grid ------------------------------------------------------------------------------


def _grid_count(values: np.ndarray, fov: float | None, tol: float) -> int | None:
    """Matrix size along one axis from its sampled k-space positions ``values`` (1/m).

    Clusters the positions (within ``tol``), then reads the grid: with k = 0 on the grid the
    matrix is ``2 · (k_max + Δk) / Δk`` for top-heavy partial Fourier (k_max > -k_min + Δk) and
    ``2 · max|k| / Δk`` otherwise; on a half-step grid (±Δk/2, …) it is the number of grid points.
    Oversampled readouts (Δk = 1 / (os · FOV)) are divided by ``os``. Off-grid (radial, spiral,
    ramp-sampled) positions give ``2 · max|k| · FOV``, or None without a FOV.
    """
    v = np.sort(values)
    if len(v) == 0 or v[-1] - v[0] <= tol:
        return 1
    breaks = np.flatnonzero(np.diff(v) > tol) + 1
    centres = np.array([part.mean() for part in np.split(v, breaks)])
    kmax = float(np.abs(centres).max())
    step = float(np.diff(centres).min())
    pos = centres / step
    frac = np.abs(pos - np.round(pos))
    half = np.abs(pos - 0.5 - np.round(pos - 0.5))
    lo, hi = -float(centres[0]) / step, float(centres[-1]) / step
    if frac.max() < 0.1:
        n = 2.0 * (hi + 1.0) if hi > lo + 1.5 else 2.0 * max(lo, hi)
    elif half.max() < 0.1:
        n = 2.0 * max(lo, hi) + 1.0
    else:
        return None if fov is None else max(1, round(2.0 * kmax * fov))
    if fov is not None:
        n /= max(1, round(1.0 / (step * fov)))
    return max(1, round(n))


# -- the estimate -------------------------------------------------------------------------------


def _closest_approach_time(
    kspace: np.ndarray, times: np.ndarray, reps: np.ndarray, sample: int
) -> float:
    """Return the time at which the sampled path passes closest to k = 0.

    The path is linear between neighbouring samples of one readout and is searched on the two
    segments beside ``sample``. With an even readout the centre lies between two samples
    (±Δk/2); this returns the time of the k = 0 crossing rather than that of either sample.
    """
    best_t, best_d = float(times[sample]), float(np.linalg.norm(kspace[sample]))
    for other in (sample - 1, sample + 1):
        if not 0 <= other < len(times) or reps[other] != reps[sample]:
            continue
        a, d = kspace[sample], kspace[other] - kspace[sample]
        dd = float(d @ d)
        if dd == 0.0:
            continue
        s = min(1.0, max(0.0, -float(a @ d) / dd))
        dist = float(np.linalg.norm(a + s * d))
        if dist < best_d:
            best_d = dist
            best_t = float(times[sample] + s * (times[other] - times[sample]))
    return best_t


def _is_excitation(usage: PulseUsage) -> bool:
    return usage is PulseUsage.EXCIT


def sequence_parameters(seq: Any) -> SequenceParameters:
    """Determine the acquisition parameters of a sequence.

    Parameters
    ----------
    seq
        An :class:`mr0core.Sequence`, a ``pypulseq.Sequence`` or the path of a ``.seq`` file.

    Returns
    -------
    SequenceParameters
        Times in s, angles in degrees, lengths in m; values that neither the definitions nor the
        sequence determine are None. ``sources`` says which were read and which estimated.
    """
    seq = as_sequence(seq)
    defs: Mapping[str, Any] = seq.definitions
    sources: dict[str, str] = {}

    durations = np.array([float(rep.event_time.detach().double().sum()) for rep in seq])
    pulse_t = np.concatenate([[0.0], np.cumsum(durations)[:-1]]) if len(seq) else np.zeros(0)
    angles = np.array([math.degrees(float(rep.pulse.angle.detach())) for rep in seq])
    usages = [rep.pulse.usage for rep in seq]
    excit = np.array([_is_excitation(u) for u in usages], dtype=bool)
    if not excit.any():
        # Hand-built sequences may leave usage UNDEF: take non-refocusing pulses below 135°.
        excit = np.array(
            [
                u not in (PulseUsage.REFOC, PulseUsage.FATSAT) and 0.0 < abs(a) < 135.0
                for u, a in zip(usages, angles, strict=True)
            ],
            dtype=bool,
        )
    inversion = np.array(
        [
            u in (PulseUsage.UNDEF, PulseUsage.STORE) and abs(a) >= _INVERSION_MIN_DEG
            for u, a in zip(usages, angles, strict=True)
        ],
        dtype=bool,
    )
    excit_idx = np.flatnonzero(excit)

    # ADC sample times and k-space positions.
    times, reps = [], []
    for i, rep in enumerate(seq):
        mask = (rep.adc_usage > 0).cpu().numpy()
        if mask.any():
            t = np.cumsum(rep.event_time.detach().cpu().double().numpy())[mask] + pulse_t[i]
            times.append(t)
            reps.append(np.full(int(mask.sum()), i))
    adc_t = np.concatenate(times) if times else np.zeros(0)
    adc_rep = np.concatenate(reps) if reps else np.zeros(0, dtype=int)
    kspace = seq.get_kspace().detach().cpu().double().numpy()[:, :3] if len(adc_t) else None

    name = _def_name(defs)
    if name is not None:
        sources["name"] = "definition"

    # Flip angle.
    flip = _def_float(defs, _FLIP_KEYS)
    if flip is not None:
        sources["flip_angle_deg"] = "definition"
    elif len(excit_idx):
        flip = float(abs(angles[excit_idx[0]]))
        sources["flip_angle_deg"] = "estimated"

    # TR.
    tr = _def_float(defs, _TR_KEYS)
    if tr is not None:
        sources["TR"] = "definition"
    elif len(excit_idx) >= 2:
        tr = float(pulse_t[excit_idx[1]] - pulse_t[excit_idx[0]])
        sources["TR"] = "estimated"

    # The excitation whose readout reaches the k-space centre.
    centre_excit: int | None = None
    te = _def_float(defs, _TE_KEYS)
    if kspace is not None and len(excit_idx):
        after = adc_rep >= excit_idx[0]
        nav = seq.get_labels().get("NAV")
        if nav is not None:  # navigator echoes pass through k = 0 but are no image data
            after &= nav.cpu().numpy() == 0
        if after.any():
            kmag = np.linalg.norm(kspace, axis=1)
            kmag = np.where(after, kmag, np.inf)
            sample = int(np.argmin(kmag))  # first in time among equals
            owner = excit_idx[np.searchsorted(excit_idx, adc_rep[sample], side="right") - 1]
            centre_excit = int(owner)
            if te is None:
                te = float(_closest_approach_time(kspace, adc_t, adc_rep, sample) - pulse_t[owner])
                sources["TE"] = "estimated"
    if te is not None and "TE" not in sources:
        sources["TE"] = "definition"

    # TI and the preparation TR.
    ti = _def_float(defs, _TI_KEYS)
    inv_idx = np.flatnonzero(inversion)
    if ti is not None:
        sources["TI"] = "definition"
    elif len(inv_idx) and len(excit_idx):
        target = centre_excit if centre_excit is not None else int(excit_idx[0])
        before = inv_idx[inv_idx < target]
        if len(before):
            ti = float(pulse_t[target] - pulse_t[before[-1]])
            sources["TI"] = "estimated"
    tr_prep = None
    if len(inv_idx) >= 2:
        tr_prep = float(pulse_t[inv_idx[1]] - pulse_t[inv_idx[0]])
        sources["TR_preparation"] = "estimated"

    # Geometry.
    fov_list = _def_triple(defs, ("FOV", "fov"))
    fov = tuple(fov_list) if fov_list is not None else None
    if fov is not None:
        sources["fov_m"] = "definition"
    readout_axis: str | None = None
    phase_axes: tuple[str, ...] = ()
    acq_type: str | None = None
    matrix_list = _def_triple(defs, _MATRIX_KEYS)
    matrix: tuple[int, int, int] | None = None
    if matrix_list is not None:
        m0, m1, m2 = matrix_list  # _def_triple gives three values
        matrix = (round(m0), round(m1), round(m2))
        sources["matrix"] = "definition"
    if kspace is not None:
        # Readout: the axis that moves most within the readouts (spread inside one repetition).
        within = np.zeros(3)
        for r in np.unique(adc_rep):
            k = kspace[adc_rep == r]
            within = np.maximum(within, k.max(axis=0) - k.min(axis=0))
        scale = float(np.abs(kspace).max()) or 1.0
        moving = within > 1e-3 * scale
        if moving.any():
            readout_axis = _AXES[int(np.argmax(within))]
        varying = (kspace.max(axis=0) - kspace.min(axis=0)) > 1e-3 * scale
        phase_axes = tuple(_AXES[i] for i in range(3) if varying[i] and _AXES[i] != readout_axis)
        acq_type = "3D" if varying[2] else "2D"
        if matrix is None:
            counts = [
                _grid_count(kspace[:, i], None if fov is None else fov[i], 1e-3 * scale)
                for i in range(3)
            ]
            if acq_type == "2D":
                slc = seq.get_labels().get("SLC")
                counts[2] = int(slc.max()) + 1 if slc is not None and len(slc) else 1
            c0, c1, c2 = counts
            if c0 is not None and c1 is not None and c2 is not None:
                matrix = (int(c0), int(c1), int(c2))
                sources["matrix"] = "estimated"
        for key, value in (("readout_axis", readout_axis), ("acquisition_type", acq_type)):
            if value is not None:
                sources[key] = "estimated"

    b0 = _def_float(defs, _B0_KEYS)
    if b0 is not None:
        sources["field_strength_T"] = "definition"

    return SequenceParameters(
        name=name,
        TR=tr,
        TE=te,
        TI=ti,
        TR_preparation=tr_prep,
        flip_angle_deg=flip,
        fov_m=fov,  # type: ignore[arg-type]
        matrix=matrix,
        readout_axis=readout_axis,
        phase_axes=phase_axes,
        acquisition_type=acq_type,
        n_contrasts=len(seq.get_contrasts()),
        n_adc_samples=len(adc_t),
        duration_s=float(durations.sum()),
        field_strength_T=b0,
        sources=sources,
    )

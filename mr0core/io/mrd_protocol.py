"""A simulatable Cartesian protocol built from an ISMRMRD header and its acquisition headers.

:func:`sequence_from_mrd` turns a measured Cartesian stream (the XML header plus the headers of
the ``ismrmrd.Acquisition`` objects) into an :class:`mr0core.Sequence` with exactly one ADC
readout per non-noise acquisition, in acquisition order, so that the simulated signal of readout
``r`` can replace the samples of acquisition ``MrdProtocol.acquisitions[r]`` one to one (same
number of samples, same dwell time, same k-space position of every sample).

k-space (1/m) of sample ``j`` (stored order, ``discard_pre``/``post`` samples included) of an
acquisition: ``kx = (j - center_sample) / FOVx`` (``(center_sample - j) / FOVx`` for readouts
flagged ``IS_REVERSE``, which the recon flips back), ``ky = (kspace_encode_step_1 -
center_line) / FOVy`` and, for 3-D encodings (encoded matrix z > 1), ``kz = (kspace_encode_step_2
- center_partition) / FOVz``; FOVs are those of ``encoding[0].encodedSpace`` (mm in the header),
centres those of ``encodingLimits`` (``matrix // 2`` when missing, or 0 while the maximum is not).

Two kinds of repetition are built, with instantaneous pulses at the start of a repetition and
the sample of an ADC event at its end (the :class:`mr0core.Sequence` model):

``"gre"`` (RF-spoiled gradient echo), per readout one repetition:
    excitation (flip angle, RF-spoiling phase) | TE fill | prephaser | ``n`` ADC events of one
    dwell each | rewinder of ky, kz and kx plus an x spoiler of :data:`SPOIL_CYCLES` cycles per
    voxel | TR fill. TE is the time from the pulse to the end of the ``center_sample`` event.
``"se"`` (spin echo), per readout two repetitions:
    90° (or the header flip) excitation | prephaser (negated, before the refocusing) | fill |
    crusher ‖ 180° refocusing, phase +90° (CPMG-like), at TE/2 | crusher | fill | readout centred
    at TE | rewinder + spoiler | TR fill. T2′ and off-resonance are refocused at the centre sample.
    The spoiler's moment cycles through ``1 + SE_SPOIL_STEP · (n mod 5)`` times the GRE one: with
    a constant moment, magnetisation that the next refocusing pulse mirrors would come back to
    k = 0 (a stimulated-echo-like error of several percent at TR ≈ T2).

With an inversion time, every readout is preceded by an extra repetition: an instantaneous 180°
inversion, a crusher and a fill of TI (inversion to excitation). TR is then the time from one
inversion to the next.

RF spoiling (both kinds): the n-th excitation (n = 0, 1, …, dummies included) has the phase
``117° · n (n + 1) / 2`` and every ADC event of its readout the receiver phase ``π/2 - phase``,
so the signal of an on-resonance object keeps one phase (real and positive at k = 0, with
MR-zero's ``m+ = -i`` after a 90° pulse of phase 0, for GRE and SE alike). Refocusing pulses have
the excitation phase + 90°. Inversion pulses have phase 0.

Timing: a prephaser, spoiler or crusher nominally lasts the time its largest moment needs at
:data:`GRADIENT_T_M` plus :data:`GRADIENT_OVERHEAD_S` (the ramps), rounded up to
:data:`RASTER_S`; one duration per contrast, so TE is the same for every readout of a contrast.
A header TE or TR that leaves less time keeps its value and shortens them (the scanner's
gradients were stronger; the simulator has no amplitude limit), with a note.

Parameters come from ``header.sequenceParameters`` (TR, TE, TI in ms, ``flipAngle_deg``; a list
with more than one entry is indexed by ``idx.contrast``). Defaults for what is missing (listed in
:attr:`MrdProtocol.defaulted`): TE the shortest that fits the nominal prephaser (SE: also the
crushers) and the readout up to the centre sample; TR the shortest that fits for GRE and
:data:`DEFAULT_TR_SE_S` (at least the shortest) for SE; flip :data:`DEFAULT_FLIP_GRE_DEG` (GRE),
:data:`DEFAULT_FLIP_SE_DEG` (SE, excitation; refocusing is always 180°); no inversion. A TE
shorter than the readout up to its centre sample (SE: twice that), or a TR shorter than TI + TE +
the rest of the readout, is raised to the shortest value with nominal durations (a note says
so). A TI ≤ 0 means no inversion; ``inversion=False`` ignores the header's TI.

Approximations (also in :attr:`MrdProtocol.notes` where they apply):

- instantaneous, non-selective pulses: no slice profile; the simulator's phantom is one 2-D slice,
  and every slice index simulates that same slice (positions and orientations are ignored; the
  phantom is centred in the FOV);
- every readout has the full TR after its excitation: for interleaved multi-slice protocols, whose
  header TR is the time between excitations of one slice, that is each slice's steady state;
- EPI or other non-Cartesian trajectories are refused; readouts flagged ``IS_REVERSE`` run along
  -kx but still each have their own excitation;
- gradient moments only, no ramps or eddy currents; a readout is a straight line along kx;
- one excitation per acquisition: no echo trains (TSE/EPI/multi-echo); multi-echo contrasts and
  turbo-spin-echo lines each get their own excitation at the contrast's TE and the full TR, which
  gives the perfectly spoiled steady state of the header TR per echo, without T2 blurring;
- IR-prepared protocols get one inversion per readout (TI before the excitation, TR from inversion
  to inversion), not one per shot as in MPRAGE;
- acquisitions of other encoding spaces (``encoding_space_ref != 0``) are skipped, like the
  recon does; noise acquisitions are skipped; navigator, dummy and calibration acquisitions are
  ordinary readouts at their own ``kspace_encode_step_1``;
- the simulation starts from equilibrium, so the first readouts are transient unless
  ``dummy_scans`` repetitions (no ADC) are put in front.

Shapes and units: ``seq`` has ``normalized_grads=False`` (moments in 1/m), times in s, phases in
rad; its ADC samples, readout by readout, are what ``seq.get_kspace()`` and the simulators return
(``[samples, 4]`` and ``[samples, coils]``). :meth:`MrdProtocol.split_signal` cuts a simulated
signal into the ``[coils, samples]`` blocks that ISMRMRD acquisitions hold.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mr0core.io.mrd import IDX_FIELDS, limit_centre  # shared with the MRD reader
from mr0core.recon.kdata import AcqFlag
from mr0core.sequence import Pulse, PulseUsage, Repetition, Sequence

__all__ = [
    "DEFAULT_FLIP_GRE_DEG",
    "DEFAULT_FLIP_SE_DEG",
    "DEFAULT_TR_SE_S",
    "GRADIENT_OVERHEAD_S",
    "GRADIENT_T_M",
    "MAX_READOUTS",
    "MAX_SAMPLES",
    "RASTER_S",
    "SE_SPOIL_STEP",
    "SPOIL_CYCLES",
    "MrdProtocol",
    "MrdProtocolError",
    "sequence_from_mrd",
]

GAMMA_1H_HZ_T = 42.577478e6
"""Gyromagnetic ratio of 1H over 2π, Hz/T."""
GRADIENT_T_M = 0.02
"""Gradient amplitude (T/m) assumed for prephasers, spoilers and crushers."""
GRADIENT_OVERHEAD_S = 200e-6
"""Time (s) added to every prephaser, spoiler and crusher for its ramps."""
RASTER_S = 10e-6
"""Those durations are rounded up to a multiple of this (s)."""
SPOIL_CYCLES = 2.0
"""Net gradient spoiling per repetition along x, in cycles per (encoded) voxel."""
SE_SPOIL_STEP = 0.3
"""SE only: the spoiler of the n-th readout has ``1 + SE_SPOIL_STEP · (n mod 5)`` times the
moment of :data:`SPOIL_CYCLES` (a constant moment lets refocused coherences return)."""
RF_SPOIL_DEG = 117.0
"""Quadratic RF-spoiling phase increment, degrees."""
DEFAULT_FLIP_GRE_DEG = 15.0
"""Excitation flip angle (deg) of a GRE protocol whose header gives none."""
DEFAULT_FLIP_SE_DEG = 90.0
"""Excitation flip angle (deg) of an SE protocol whose header gives none."""
DEFAULT_TR_SE_S = 0.5
"""TR (s) of an SE protocol whose header gives none (or the shortest feasible, if longer)."""
MAX_READOUTS = 1_000_000
"""Most readouts a protocol may have."""
MAX_SAMPLES = 65536
"""Most samples a readout may have."""

_TOL_S = 1e-9  # timing tolerance when deciding whether a header value was raised
_GRE_WORDS = {"gre", "flash", "fl", "fl2d", "fl3d", "fisp", "ssfp", "spgr", "bssfp", "trufi"}
_SE_WORDS = {"se", "tse", "fse", "rare", "haste", "spinecho", "turbospinecho"}


class MrdProtocolError(ValueError):
    """A header or acquisition stream that cannot be re-played; the message names the problem."""


@dataclass
class MrdProtocol:
    """A sequence that re-plays a measured Cartesian ISMRMRD protocol in the simulator.

    Attributes
    ----------
    seq
        The sequence (``normalized_grads=False``), one ADC readout per simulated acquisition in
        acquisition order; the ADC samples carry the Pulseq labels ``LIN``, ``PAR``, ``SLC``,
        ``AVG``, ``REP``, ``ECO``, ``SET``, ``SEG``, ``PHS`` of their acquisition.
    acquisitions
        For readout ``r`` of ``seq``: the index of its acquisition in the list given.
    kind
        ``"gre"`` or ``"se"``.
    parameters
        ``TR``, ``TE``, ``TI`` (s; ``TI`` None without inversion) and ``flip`` (deg) as used:
        a float, or ``{contrast: value}`` where contrasts differ.
    defaulted
        Names of parameters the header did not give (``TR``, ``TE``, ``flip``,
        ``sequence_type``), for which defaults were used.
    notes
        Approximations and adjustments made, short sentences for the user.
    """

    seq: Sequence
    acquisitions: list[int]
    kind: str
    parameters: dict[str, Any]
    defaulted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def readout_lengths(self) -> list[int]:
        """Return the number of ADC samples of each readout of :attr:`seq`, in order."""
        counts = [int((rep.adc_usage > 0).sum()) for rep in self.seq]
        return [n for n in counts if n > 0]

    def split_signal(self, signal: torch.Tensor) -> list[torch.Tensor]:
        """Cut a simulated signal into one block per readout, in ISMRMRD's layout.

        Parameters
        ----------
        signal
            ``[samples, coils]`` (or ``[samples]``) complex: the simulation of :attr:`seq`.

        Returns
        -------
        list of torch.Tensor
            Per readout ``r`` a ``[coils, samples]`` view: the data of acquisition
            ``acquisitions[r]``.

        Raises
        ------
        ValueError
            If the signal does not have one row per ADC sample of :attr:`seq`.
        """
        if signal.ndim == 1:
            signal = signal[:, None]
        lengths = self.readout_lengths()
        total = sum(lengths)
        if signal.ndim != 2 or signal.shape[0] != total:
            raise ValueError(
                f"signal must be [{total}, coils] (one row per ADC sample), "
                f"got {tuple(signal.shape)}"
            )
        return [block.T for block in torch.split(signal, lengths, dim=0)]


# -------------------------------------------------------------------------------------------
# header and acquisition headers
# -------------------------------------------------------------------------------------------


def _parsed_header(header: Any) -> Any:
    if isinstance(header, bytes | str):
        from mr0core.io.mrd import parse_header

        text = header.decode("utf-8") if isinstance(header, bytes) else header
        try:
            return parse_header(text)
        except Exception as exc:  # the XML binding raises several unrelated types
            raise MrdProtocolError(f"the ISMRMRD header does not parse: {exc}") from exc
    return header


@dataclass(frozen=True)
class _Geometry:
    matrix: tuple[int, int, int]  # encoded (x, y, z)
    fov_m: tuple[float, float, float]  # encoded (x, y, z), m
    recon_fov_m: tuple[float, float, float]
    centre_line: int
    centre_partition: int

    @property
    def is_3d(self) -> bool:
        return self.matrix[2] > 1


def _geometry(hdr: Any) -> _Geometry:
    encodings = getattr(hdr, "encoding", None)
    if not encodings:
        raise MrdProtocolError("the ISMRMRD header has no encoding section")
    enc = encodings[0]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    if str(traj).lower() != "cartesian":
        raise MrdProtocolError(
            f"the ISMRMRD header's trajectory is {traj!r}; only Cartesian protocols can be "
            "rebuilt (encoding[0].trajectory must be 'cartesian')"
        )
    space = enc.encodedSpace
    if space is None or space.matrixSize is None or space.fieldOfView_mm is None:
        raise MrdProtocolError(
            "the ISMRMRD header's encodedSpace lacks matrixSize or fieldOfView_mm"
        )
    size = space.matrixSize
    matrix = (int(size.x), int(size.y or 1), int(size.z or 1))
    if min(matrix) < 1:
        raise MrdProtocolError(f"the encoded matrix must be positive, got {matrix}")
    mm = space.fieldOfView_mm
    fov = (float(mm.x) * 1e-3, float(mm.y) * 1e-3, float(mm.z) * 1e-3)
    needed = ("x", "y", "z") if matrix[2] > 1 else ("x", "y")
    for axis, value in zip(needed, fov, strict=False):
        if not (math.isfinite(value) and value > 0):
            raise MrdProtocolError(
                f"the encoded field of view along {axis} must be > 0, got {value} m"
            )
    if not (math.isfinite(fov[2]) and fov[2] > 0):  # 2-D without slice thickness: one voxel
        fov = (fov[0], fov[1], fov[0] / matrix[0])
    recon = enc.reconSpace
    rfov = fov
    if recon is not None and recon.fieldOfView_mm is not None:
        rmm = recon.fieldOfView_mm
        cand = (float(rmm.x) * 1e-3, float(rmm.y) * 1e-3, float(rmm.z) * 1e-3)
        r0, r1, r2 = (
            c if math.isfinite(c) and c > 0 else f for c, f in zip(cand, fov, strict=True)
        )
        rfov = (r0, r1, r2)
    limits = enc.encodingLimits
    return _Geometry(
        matrix=matrix,
        fov_m=fov,
        recon_fov_m=rfov,
        centre_line=limit_centre(limits, "kspace_encoding_step_1", matrix[1] // 2),
        centre_partition=limit_centre(limits, "kspace_encoding_step_2", matrix[2] // 2),
    )


def _acquisition_heads(acquisitions: SequenceABC[Any]) -> np.ndarray:
    """``[acquisitions]`` numpy structured array of the ISMRMRD acquisition headers."""
    import ismrmrd
    from ismrmrd.hdf5 import acquisition_header_dtype

    chunks = []
    for i, item in enumerate(acquisitions):
        if isinstance(item, ismrmrd.Acquisition):
            chunks.append(bytes(item.getHead()))
        elif isinstance(item, ismrmrd.AcquisitionHeader):
            chunks.append(bytes(item))
        else:
            raise TypeError(
                f"acquisition {i} is a {type(item).__name__}, not an ismrmrd.Acquisition"
            )
    return np.frombuffer(b"".join(chunks), dtype=acquisition_header_dtype)


def _sequence_parameters(hdr: Any) -> dict[str, Any]:
    """TR, TE, TI (s) and flip (deg) lists and the sequence type from the header."""
    sp = getattr(hdr, "sequenceParameters", None)

    def values(name: str, unit: float) -> list[float]:
        raw = getattr(sp, name, None) if sp is not None else None
        out = []
        for v in raw or []:
            try:
                out.append(float(v) / unit)
            except (TypeError, ValueError):
                raise MrdProtocolError(
                    f"sequenceParameters.{name} holds {v!r}, not a number"
                ) from None
        return out

    return {
        "TR": values("TR", 1e3),  # ms -> s
        "TE": values("TE", 1e3),
        "TI": values("TI", 1e3),
        "flip": values("flipAngle_deg", 1.0),
        "sequence_type": getattr(sp, "sequence_type", None) if sp is not None else None,
    }


def _kind_of(sequence_type: str | None) -> str | None:
    """``"se"`` for a spin-echo sequence type, ``"gre"`` for anything else named, None if none."""
    if not sequence_type or not str(sequence_type).strip():
        return None
    text = str(sequence_type).lower()
    words = set(re.split(r"[^a-z0-9]+", text))
    compact = re.sub(r"[^a-z0-9]", "", text)
    if words & _GRE_WORDS or "gradientecho" in compact:
        return "gre"
    if words & _SE_WORDS or "spinecho" in compact:
        return "se"
    return "gre"


def _per_contrast(values: list[float], contrasts: np.ndarray) -> dict[int, float | None]:
    """One header value for all contrasts, or the list indexed by contrast (None: not given)."""
    out: dict[int, float | None] = {}
    for c in contrasts.tolist():
        if not values:
            out[c] = None
        elif len(values) == 1:
            out[c] = values[0]
        else:
            out[c] = values[c] if c < len(values) else None
    return out


def _collapse(values: dict[int, float | None]) -> Any:
    """Return a float when all contrasts share the value, else ``{contrast: value}``."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return dict(values)


def _duration(moment: np.ndarray | float) -> float:
    """Time (s) for the largest of ``moment`` (1/m) at :data:`GRADIENT_T_M`, with ramps."""
    peak = float(np.max(np.abs(moment))) if np.size(moment) else 0.0
    t = peak / (GAMMA_1H_HZ_T * GRADIENT_T_M) + GRADIENT_OVERHEAD_S
    return math.ceil(t / RASTER_S - 1e-9) * RASTER_S


def _ms(t: float) -> str:
    return f"{t * 1e3:.4g} ms"


# -------------------------------------------------------------------------------------------
# readouts and timing
# -------------------------------------------------------------------------------------------


@dataclass
class _Readouts:
    """Per-readout table of the simulated acquisitions (arrays of shape ``[readouts]``)."""

    index: np.ndarray  # position in the given acquisition list
    n_samples: np.ndarray
    centre: np.ndarray  # center_sample
    dwell: np.ndarray  # s
    idx: dict[str, np.ndarray]  # Pulseq label -> counter
    dkx: np.ndarray  # kx step per sample, 1/m (negative for IS_REVERSE)
    ky: np.ndarray  # 1/m
    kz: np.ndarray  # 1/m

    @property
    def contrast(self) -> np.ndarray:
        return self.idx["ECO"]

    @property
    def x_pre(self) -> np.ndarray:
        """Readout kx before the first ADC event, 1/m."""
        result: np.ndarray = -(self.centre + 1) * self.dkx
        return result

    @property
    def x_end(self) -> np.ndarray:
        """Readout kx of the last sample, 1/m."""
        result: np.ndarray = (self.n_samples - 1 - self.centre) * self.dkx
        return result

    @property
    def head_s(self) -> np.ndarray:
        """Time from the start of the readout to the centre sample, s."""
        result: np.ndarray = (self.centre + 1) * self.dwell
        return result

    @property
    def tail_s(self) -> np.ndarray:
        """Time from the centre sample to the end of the readout, s."""
        result: np.ndarray = (self.n_samples - 1 - self.centre) * self.dwell
        return result


def _readouts(head: np.ndarray, geo: _Geometry, notes: list[str]) -> _Readouts:
    """Select the acquisitions to simulate, check their sizes and place them in k-space."""
    flags = head["flags"].astype(np.uint64)
    noise = (flags & np.uint64(int(AcqFlag.IS_NOISE_MEASUREMENT))) != 0
    other_space = (head["encoding_space_ref"] != 0) & ~noise
    keep = ~noise & ~other_space
    if not keep.any():
        raise MrdProtocolError(
            f"no imaging acquisitions: {len(head)} given, {int(noise.sum())} noise, "
            f"{int(other_space.sum())} of other encoding spaces"
        )
    if other_space.any():
        notes.append(
            f"{int(other_space.sum())} acquisitions of other encoding spaces are not simulated."
        )
    index = np.flatnonzero(keep)
    if index.size > MAX_READOUTS:
        raise MrdProtocolError(
            f"{index.size} readouts are more than the {MAX_READOUTS} this supports"
        )
    sel = head[index]
    n_samp = sel["number_of_samples"].astype(np.int64)
    centre = sel["center_sample"].astype(np.int64)
    dwell = sel["sample_time_us"].astype(np.float64) * 1e-6
    for bad, what in (
        (n_samp < 1, "has 0 samples"),
        (n_samp > MAX_SAMPLES, f"has more than {MAX_SAMPLES} samples"),
        (~(np.isfinite(dwell) & (dwell > 0)), "has a dwell time (sample_time_us) <= 0"),
        (centre >= n_samp, "has its center_sample beyond its samples"),
    ):
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise MrdProtocolError(
                f"acquisition {int(index[r])} {what} (number_of_samples={int(n_samp[r])}, "
                f"center_sample={int(centre[r])}, sample_time_us={dwell[r] * 1e6:g})"
            )
    idx = {key: sel["idx"][name].astype(np.int64) for key, name in IDX_FIELDS.items()}
    reverse = (flags[index] & np.uint64(int(AcqFlag.IS_REVERSE))) != 0
    if reverse.any():
        notes.append(
            f"{int(reverse.sum())} readouts flagged IS_REVERSE run along -kx (as measured); "
            "each still has its own excitation (no EPI echo train)."
        )
    if not geo.is_3d and np.unique(idx["SLC"]).size > 1:
        notes.append(
            f"{np.unique(idx['SLC']).size} slices: every slice simulates the same phantom slice "
            "(no slice profile, slice positions ignored)."
        )
    kz = np.zeros(index.size)
    if geo.is_3d:
        kz = (idx["PAR"] - geo.centre_partition) / geo.fov_m[2]
    return _Readouts(
        index=index,
        n_samples=n_samp,
        centre=centre,
        dwell=dwell,
        idx=idx,
        dkx=np.where(reverse, -1.0, 1.0) / geo.fov_m[0],
        ky=(idx["LIN"] - geo.centre_line) / geo.fov_m[1],
        kz=kz,
    )


@dataclass
class _Timing:
    """What one contrast uses: times and event durations in s, flip in deg."""

    te: float
    tr: float
    ti: float | None
    flip: float
    pre: float  # prephaser
    crush: float  # SE crushers around the refocusing pulse
    spoil: float  # rewinder + spoiler


def _contrast_timing(
    kind: str,
    contrast: int,
    head_max: float,
    tail_max: float,
    nominal: tuple[float, float, float],
    header: dict[str, float | None],
    defaulted: list[str],
    notes: list[str],
) -> _Timing:
    """TE, TR, TI, flip and event durations of one contrast, from the header or defaults.

    ``nominal`` are the prephaser, crusher and spoiler durations at :data:`GRADIENT_T_M`;
    a header TE or TR that leaves less time gets them shortened (the scanner's gradients were
    stronger), one that the readout itself does not allow is raised.
    """
    t_pre, t_crush, t_spoil = nominal
    if kind == "gre":
        te_nominal, te_hard = t_pre + head_max, head_max
    else:
        te_nominal = 2.0 * max(t_pre + t_crush, t_crush + head_max)
        te_hard = 2.0 * head_max
    te = header["TE"]
    if te is None or not math.isfinite(te):
        te = te_nominal
        _add_once(defaulted, "TE")
    elif te < te_hard - _TOL_S:
        notes.append(
            f"TE {_ms(te)} (contrast {contrast}) is shorter than the readout allows; "
            f"raised to {_ms(te_nominal)}."
        )
        te = te_nominal
    te = max(te, te_hard)
    if kind == "gre":
        pre, crush = min(t_pre, te - head_max), 0.0
    else:
        scale = min(1.0, 0.5 * te / (t_pre + t_crush), (0.5 * te - head_max) / t_crush)
        pre, crush = scale * t_pre, scale * t_crush
    if pre < t_pre - _TOL_S:
        notes.append(
            f"TE {_ms(te)} (contrast {contrast}) is shorter than the nominal gradients allow: "
            f"prephaser{'' if kind == 'gre' else ' and crushers'} shortened."
        )

    ti = header["TI"]
    tr_hard = (ti or 0.0) + te + tail_max
    tr = header["TR"]
    if tr is None or not math.isfinite(tr):
        tr = tr_hard + t_spoil
        if kind == "se":
            tr = max(tr, DEFAULT_TR_SE_S)
        _add_once(defaulted, "TR")
    elif tr < tr_hard - _TOL_S:
        notes.append(
            f"TR {_ms(tr)} (contrast {contrast}) is shorter than "
            f"{'TI + ' if ti else ''}TE + the readout allow; raised to {_ms(tr_hard + t_spoil)}."
        )
        tr = tr_hard + t_spoil
    tr = max(tr, tr_hard)
    spoil = min(t_spoil, tr - tr_hard)
    if spoil < t_spoil - _TOL_S:
        notes.append(
            f"TR {_ms(tr)} (contrast {contrast}) is shorter than the nominal gradients allow: "
            "spoiler shortened."
        )

    flip = header["flip"]
    if flip is None or not (math.isfinite(flip) and flip > 0):
        flip = DEFAULT_FLIP_GRE_DEG if kind == "gre" else DEFAULT_FLIP_SE_DEG
        _add_once(defaulted, "flip")
    return _Timing(te=te, tr=tr, ti=ti, flip=flip, pre=pre, crush=crush, spoil=spoil)


def _add_once(names: list[str], name: str) -> None:
    if name not in names:
        names.append(name)


def _inversion_times(
    values: list[float], contrasts: np.ndarray, inversion: bool | None, notes: list[str]
) -> dict[int, float | None]:
    """TI per contrast (s), None for no inversion, after the ``inversion`` switch."""
    ti_c: dict[int, float | None] = {}
    for c, ti in _per_contrast(values, contrasts).items():
        ti_c[c] = ti if (ti is not None and math.isfinite(ti) and ti > 0) else None
    if inversion is False:
        if any(v is not None for v in ti_c.values()):
            notes.append("The header's TI is ignored (inversion=False): no inversion pulses.")
        return dict.fromkeys(ti_c)
    if inversion is True and any(v is None for v in ti_c.values()):
        raise MrdProtocolError(
            "inversion=True, but the header gives no TI > 0 for every contrast "
            f"(TI = {[t * 1e3 for t in values]} ms)"
        )
    if any(v is not None for v in ti_c.values()):
        notes.append(
            "Inversion recovery: one 180° inversion TI before every excitation, TR from "
            "inversion to inversion (not one inversion per shot as in MPRAGE)."
        )
    return ti_c


# -------------------------------------------------------------------------------------------
# the protocol
# -------------------------------------------------------------------------------------------


def sequence_from_mrd(
    header: Any,
    acquisitions: SequenceABC[Any],
    kind: str = "auto",
    *,
    inversion: bool | None = None,
    dummy_scans: int = 0,
) -> MrdProtocol:
    """Build a simulatable protocol that re-plays a Cartesian ISMRMRD acquisition stream.

    Parameters
    ----------
    header
        Parsed ``ismrmrd.xsd.ismrmrdHeader`` (:func:`mr0core.io.mrd.parse_header`), or its XML
        (``str``/``bytes``).
    acquisitions
        ``ismrmrd.Acquisition`` (or ``ismrmrd.AcquisitionHeader``) objects in acquisition order;
        only their headers are read. Noise acquisitions and those of other encoding spaces are
        skipped; every other one becomes one readout of ``number_of_samples`` samples at its
        dwell ``sample_time_us``.
    kind
        ``"gre"``, ``"se"`` or ``"auto"``: ``"se"`` when ``sequenceParameters.sequence_type``
        names a spin echo (SE, TSE, spin echo, …, and no gradient-echo word), else ``"gre"``.
    inversion
        None: an inversion pulse TI before every excitation when the header gives a TI > 0;
        False: ignore the header's TI (Siemens headers often carry a TI for protocols without
        inversion); True: require a TI.
    dummy_scans
        Repetitions without ADC, copies of the first readout's, played first so that the
        readouts start in (or near) the steady state.

    Returns
    -------
    MrdProtocol
        The sequence, the acquisition index of each readout, and what was used and assumed.

    Raises
    ------
    MrdProtocolError
        (a ``ValueError``) For a header without encoding, a non-Cartesian trajectory, a
        non-positive FOV, no imaging acquisitions, acquisitions with 0 samples, more than
        :data:`MAX_SAMPLES` samples, a dwell time ≤ 0 or a centre sample beyond the readout,
        more than :data:`MAX_READOUTS` readouts, or ``inversion=True`` without a TI.
    ValueError
        For an unknown ``kind`` or a negative ``dummy_scans``.
    TypeError
        If an item of ``acquisitions`` is not an ISMRMRD acquisition.
    """
    if kind not in ("auto", "gre", "se"):
        raise ValueError(f"kind must be 'auto', 'gre' or 'se', got {kind!r}")
    if int(dummy_scans) != dummy_scans or dummy_scans < 0:
        raise ValueError(f"dummy_scans must be an integer >= 0, got {dummy_scans!r}")
    hdr = _parsed_header(header)
    geo = _geometry(hdr)
    notes: list[str] = []
    defaulted: list[str] = []
    ro = _readouts(_acquisition_heads(acquisitions), geo, notes)

    params = _sequence_parameters(hdr)
    named = _kind_of(params["sequence_type"])
    if kind == "auto":
        if named is None:
            defaulted.append("sequence_type")
            notes.append("The header names no sequence type: simulated as a spoiled GRE.")
        kind = named or "gre"
    elif named is not None and named != kind:
        notes.append(
            f"The header's sequence type {params['sequence_type']!r} looks like {named!r}; "
            f"simulated as {kind!r} as asked."
        )

    # gradient moments (1/m) and their nominal durations (s)
    spoil = max(SPOIL_CYCLES * geo.matrix[0], 2.0 * float(ro.n_samples.max())) / geo.fov_m[0]
    moments = _Moments(
        spoil=spoil,
        spoil_y=SPOIL_CYCLES * geo.matrix[1] / geo.fov_m[1],
        crush=0.75 * spoil,  # beyond the readout's kx span, also when reversed
        se_cycle=kind == "se",
    )
    nominal = (
        _duration(np.stack([ro.x_pre, ro.ky, ro.kz])),
        _duration(moments.crush),
        _duration(np.stack([moments.spoil_max - ro.x_end, ro.ky, ro.kz])),
    )

    contrasts = np.unique(ro.contrast)
    ti_c = _inversion_times(params["TI"], contrasts, inversion, notes)
    given = {key: _per_contrast(params[key], contrasts) for key in ("TE", "TR", "flip")}
    timing: dict[int, _Timing] = {}
    for c in contrasts.tolist():
        in_c = ro.contrast == c
        timing[c] = _contrast_timing(
            kind, c, float(ro.head_s[in_c].max()), float(ro.tail_s[in_c].max()), nominal,
            {"TE": given["TE"][c], "TR": given["TR"][c], "TI": ti_c[c], "flip": given["flip"][c]},
            defaulted, notes,
        )  # fmt: skip
    if contrasts.size > 1:
        notes.append(
            f"{contrasts.size} contrasts: every readout has its own excitation at its contrast's "
            "TE and the full TR (no echo trains)."
        )
    if kind == "se":
        notes.append(
            "Spin echo: one 90°-180° pair per readout at the header TE (a turbo spin echo's "
            "echo train is not modelled)."
        )
    if dummy_scans:
        notes.append(f"{int(dummy_scans)} dummy repetitions without ADC are played first.")

    seq = _build(kind, ro, timing, moments, int(dummy_scans))
    parameters = {
        key: _collapse({c: getattr(t, attr) for c, t in timing.items()})
        for key, attr in (("TR", "tr"), ("TE", "te"), ("TI", "ti"), ("flip", "flip"))
    }
    seq.definitions = {
        "Name": f"mr0_mrd_{kind}",
        "FOV": [geo.recon_fov_m[0], geo.recon_fov_m[1], geo.recon_fov_m[2]],
    }
    for key, name in (("TR", "TR"), ("TE", "TE"), ("TI", "TI"), ("flip", "FlipAngle")):
        if isinstance(parameters[key], float):
            seq.definitions[name] = parameters[key]
    return MrdProtocol(
        seq=seq,
        acquisitions=[int(i) for i in ro.index],
        kind=kind,
        parameters=parameters,
        defaulted=defaulted,
        notes=notes,
    )


@dataclass(frozen=True)
class _Moments:
    """Gradient moments (1/m) of the spoilers and crushers."""

    spoil: float  # net x moment of a GRE repetition
    spoil_y: float  # y crusher after an inversion
    crush: float  # x crushers around a refocusing pulse
    se_cycle: bool  # SE: the spoiler cycles through 5 moments

    @property
    def spoil_max(self) -> float:
        return self.spoil * (1.0 + SE_SPOIL_STEP * 4) if self.se_cycle else self.spoil

    def spoil_of(self, n: np.ndarray) -> np.ndarray:
        """Net x moment of the repetition of the n-th played readout."""
        factor = 1.0 + SE_SPOIL_STEP * (n % 5) if self.se_cycle else np.ones(n.shape)
        return self.spoil * factor


def _build(
    kind: str, ro: _Readouts, timing: dict[int, _Timing], moments: _Moments, dummy_scans: int
) -> Sequence:
    """Build the repetitions of every played readout (dummies first), tensors in bulk."""
    n_read = ro.index.size
    play = np.concatenate([np.zeros(dummy_scans, dtype=np.int64), np.arange(n_read)])
    has_adc = np.concatenate([np.zeros(dummy_scans, dtype=bool), np.ones(n_read, dtype=bool)])
    n_play = play.size
    n = np.arange(n_play, dtype=np.int64)
    # 117° · n (n + 1) / 2 without float rounding (exact for an integer increment)
    rf_phase = np.deg2rad(np.mod(((n * (n + 1) // 2) % 360) * RF_SPOIL_DEG, 360.0))
    adc_phase = np.mod(0.5 * math.pi - rf_phase, 2 * math.pi)

    keys = np.array(sorted(timing))
    row_contrast = np.searchsorted(keys, ro.contrast[play])  # position of each row's contrast

    def per_row(attr: str) -> np.ndarray:
        values = [getattr(timing[int(c)], attr) for c in keys]
        result: np.ndarray = np.array([np.nan if v is None else v for v in values])[row_contrast]
        return result

    te, tr, pre, crush, spoil_t, ti, flip_deg = (
        per_row(a) for a in ("te", "tr", "pre", "crush", "spoil", "ti", "flip")
    )
    use_inv = ~np.isnan(ti)
    ti = np.nan_to_num(ti, nan=0.0)
    flip = np.deg2rad(flip_deg)
    x_pre, ky, kz = ro.x_pre[play], ro.ky[play], ro.kz[play]
    reps: list[list[Repetition]] = [[] for _ in range(n_play)]

    # inversion repetitions: 180°, crusher, fill to TI
    if use_inv.any():
        rows = np.flatnonzero(use_inv)
        t_crush = np.minimum(_duration(np.array([0.5 * moments.spoil, moments.spoil_y])), ti[rows])
        et = np.stack([t_crush, ti[rows] - t_crush], axis=1)
        gm = np.zeros((rows.size, 2, 3))
        gm[:, 0, 0] = 0.5 * moments.spoil
        gm[:, 0, 1] = moments.spoil_y
        _add_reps(reps, rows, et, gm, None, None, PulseUsage.UNDEF, math.pi, np.zeros(rows.size))

    # spin echo: excitation repetitions (prephaser mirrored, it comes before the refocusing)
    if kind == "se":
        et = np.stack([pre, 0.5 * te - pre - crush, crush], axis=1)
        gm = np.zeros((n_play, 3, 3))
        gm[:, 0] = -np.stack([x_pre, ky, kz], axis=1)
        gm[:, 2, 0] = moments.crush
        _add_reps(reps, n, et, gm, None, None, PulseUsage.EXCIT, flip, rf_phase)

    # readout repetitions, grouped by sample count so that every group is built in bulk
    n_samples = ro.n_samples[play]
    for n_s in np.unique(n_samples).tolist():
        rows = np.flatnonzero(n_samples == n_s)
        r = play[rows]
        adc = slice(2, n_s + 2)
        et = np.zeros((rows.size, n_s + 4))
        gm = np.zeros((rows.size, n_s + 4, 3))
        if kind == "gre":  # TE fill | prephaser
            et[:, 0] = te[rows] - pre[rows] - ro.head_s[r]
            et[:, 1] = pre[rows]
            gm[:, 1] = np.stack([x_pre[rows], ky[rows], kz[rows]], axis=1)
        else:  # crusher | fill to the readout
            et[:, 0] = crush[rows]
            gm[:, 0, 0] = moments.crush
            et[:, 1] = 0.5 * te[rows] - crush[rows] - ro.head_s[r]
        et[:, adc] = ro.dwell[r][:, None]
        gm[:, adc, 0] = ro.dkx[r][:, None]
        et[:, n_s + 2] = spoil_t[rows]
        gm[:, n_s + 2] = np.stack(
            [moments.spoil_of(rows) - ro.x_end[r], -ky[rows], -kz[rows]], axis=1
        )
        et[:, n_s + 3] = tr[rows] - ti[rows] - te[rows] - ro.tail_s[r] - spoil_t[rows]
        usage = np.zeros((rows.size, n_s + 4), dtype=np.int32)
        usage[:, adc] = np.where(has_adc[rows], ro.contrast[r] + 1, 0)[:, None]
        phase = np.zeros((rows.size, n_s + 4))
        phase[:, adc] = adc_phase[rows][:, None]
        labels = {key: np.where(has_adc[rows], v[r], 0) for key, v in ro.idx.items()}
        if kind == "gre":
            pulse = (PulseUsage.EXCIT, flip[rows], rf_phase[rows])
        else:
            pulse = (PulseUsage.REFOC, math.pi, rf_phase[rows] + 0.5 * math.pi)
        _add_reps(reps, rows, et, gm, usage, phase, *pulse, labels=labels)
    return Sequence((rep for group in reps for rep in group), normalized_grads=False)


def _add_reps(
    reps: list[list[Repetition]],
    rows: np.ndarray,
    event_time: np.ndarray,
    gradm: np.ndarray,
    adc_usage: np.ndarray | None,
    adc_phase: np.ndarray | None,
    usage: PulseUsage,
    angle: np.ndarray | float,
    phase: np.ndarray,
    labels: dict[str, np.ndarray] | None = None,
) -> None:
    """Append one repetition per row to ``reps[rows[i]]``, all tensors built in bulk.

    ``event_time [m, E]`` (s), ``gradm [m, E, 3]`` (1/m), ``adc_usage [m, E]``, ``adc_phase [m,
    E]`` (rad; None: no ADC), pulse ``angle`` and ``phase`` per row (rad), ``labels`` one value
    per row and label.
    """
    m, n_ev = event_time.shape
    et = torch.from_numpy(np.maximum(event_time, 0.0).astype(np.float32))
    gm = torch.from_numpy(gradm.astype(np.float32))
    if adc_usage is None:
        au = torch.zeros(m, n_ev, dtype=torch.int32)
        ap = torch.zeros(m, n_ev, dtype=torch.float32)
    else:
        au = torch.from_numpy(adc_usage.astype(np.int32))
        ap = torch.from_numpy(adc_phase.astype(np.float32))  # type: ignore[union-attr]
    angles = torch.from_numpy(np.broadcast_to(np.asarray(angle), (m,)).astype(np.float32).copy())
    phases = torch.from_numpy(np.mod(phase, 2 * math.pi).astype(np.float32))
    lab = {
        k: torch.from_numpy(np.repeat(v.astype(np.int32)[:, None], n_ev, axis=1))
        for k, v in (labels or {}).items()
    }
    for i, row in enumerate(rows.tolist()):
        pulse = Pulse(usage, angles[i], phases[i])
        rep_labels = {k: v[i] for k, v in lab.items()}
        reps[row].append(Repetition(pulse, et[i], gm[i], ap[i], au[i], rep_labels))

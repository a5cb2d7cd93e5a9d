"""``KData``: raw k-space data split into readouts, the common in-memory form of all recons.

A *readout* is one ADC block: in a simulated sequence, a maximal run of consecutive ADC events
of one repetition with the same contrast id; in an ISMRMRD file, one acquisition. The samples of
all readouts are concatenated in acquisition order in :attr:`KData.signal`; readout ``r`` owns
``signal[readout_start[r] : readout_start[r] + readout_length[r]]``.

Encoding counters follow the Pulseq label names (ISMRMRD ``idx`` fields in brackets): ``LIN``
(kspace_encode_step_1), ``PAR`` (kspace_encode_step_2), ``SLC`` (slice), ``AVG`` (average),
``REP`` (repetition), ``ECO`` (contrast), ``SET`` (set), ``SEG`` (segment), ``PHS`` (phase).

k-space grid convention (shared with :mod:`mr0core.recon.cartesian`): along an axis with an
encoded matrix of ``n`` points and encoded field of view ``fov`` (m), grid point ``j`` sits at
``(j - n // 2) / fov`` 1/m, so ``LIN == center_line`` is ky = 0 and is placed at ``ny // 2``.
Readout oversampling is ``encoded_matrix[0] / recon_matrix[0]`` (the encoded x FOV is that many
times the reconstructed one).

:meth:`KData.from_sequence` builds it from a simulated signal and its :class:`~mr0core.Sequence`;
:func:`mr0core.io.mrd.read_mrd` from an ISMRMRD file.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from mr0core.sequence import Sequence, as_sequence
from mr0core.tensordata import TensorContainer

__all__ = [
    "IDX_KEYS",
    "TRAJECTORIES",
    "AcqFlag",
    "KData",
    "KDataError",
    "as_sequence",
    "fit_matrix",
    "grid_offset",
    "matrix_from_indices",
]

IDX_KEYS: tuple[str, ...] = ("LIN", "PAR", "SLC", "AVG", "REP", "ECO", "SET", "SEG", "PHS")
"""The encoding counters of :attr:`KData.idx` (Pulseq label names)."""

TRAJECTORIES: tuple[str, ...] = ("cartesian", "radial", "spiral", "other")
"""Values of :attr:`KData.trajectory`."""

# Pulseq flag labels that map onto ISMRMRD acquisition flags (see AcqFlag).
_PULSEQ_FLAG_LABELS = ("NOISE", "REF", "IMA", "NAV")
# Fraction of a grid step that a sample may lie off the grid and still count as Cartesian.
_GRID_TOL = 0.2
# Relative deviation allowed between sample steps of one Cartesian or radial readout.
_STEP_TOL = 0.05


class KDataError(ValueError):
    """Raw data that cannot be interpreted as asked (e.g. Cartesian indices of a spiral)."""


class AcqFlag(enum.IntFlag):
    """Per-readout flags; bit ``n - 1`` is ISMRMRD acquisition flag ``n`` (``ismrmrd.ACQ_*``)."""

    FIRST_IN_ENCODE_STEP1 = 1 << 0
    LAST_IN_ENCODE_STEP1 = 1 << 1
    FIRST_IN_ENCODE_STEP2 = 1 << 2
    LAST_IN_ENCODE_STEP2 = 1 << 3
    FIRST_IN_AVERAGE = 1 << 4
    LAST_IN_AVERAGE = 1 << 5
    FIRST_IN_SLICE = 1 << 6
    LAST_IN_SLICE = 1 << 7
    FIRST_IN_CONTRAST = 1 << 8
    LAST_IN_CONTRAST = 1 << 9
    FIRST_IN_PHASE = 1 << 10
    LAST_IN_PHASE = 1 << 11
    FIRST_IN_REPETITION = 1 << 12
    LAST_IN_REPETITION = 1 << 13
    FIRST_IN_SET = 1 << 14
    LAST_IN_SET = 1 << 15
    FIRST_IN_SEGMENT = 1 << 16
    LAST_IN_SEGMENT = 1 << 17
    IS_NOISE_MEASUREMENT = 1 << 18
    IS_PARALLEL_CALIBRATION = 1 << 19
    IS_PARALLEL_CALIBRATION_AND_IMAGING = 1 << 20
    IS_REVERSE = 1 << 21
    IS_NAVIGATION_DATA = 1 << 22
    IS_PHASECORR_DATA = 1 << 23
    LAST_IN_MEASUREMENT = 1 << 24
    IS_HPFEEDBACK_DATA = 1 << 25
    IS_DUMMYSCAN_DATA = 1 << 26
    IS_RTFEEDBACK_DATA = 1 << 27
    IS_SURFACECOILCORRECTIONSCAN_DATA = 1 << 28
    IS_PHASE_STABILIZATION_REFERENCE = 1 << 29
    IS_PHASE_STABILIZATION = 1 << 30


#: Flags of readouts that are not image data (besides calibration-only ones).
NON_IMAGING = (
    AcqFlag.IS_NOISE_MEASUREMENT
    | AcqFlag.IS_NAVIGATION_DATA
    | AcqFlag.IS_PHASECORR_DATA
    | AcqFlag.IS_HPFEEDBACK_DATA
    | AcqFlag.IS_DUMMYSCAN_DATA
    | AcqFlag.IS_RTFEEDBACK_DATA
    | AcqFlag.IS_SURFACECOILCORRECTIONSCAN_DATA
    | AcqFlag.IS_PHASE_STABILIZATION_REFERENCE
    | AcqFlag.IS_PHASE_STABILIZATION
)


@dataclass
class KData(TensorContainer):
    """Raw k-space data split into readouts (ADC blocks).

    Attributes
    ----------
    signal
        ``[samples, coils]`` complex64: the samples of all readouts, concatenated in order.
    readout_start, readout_length
        ``[readouts]`` int64: first sample (row of ``signal``) and sample count of each readout.
    idx
        Encoding counters, ``{key: [readouts] int64}`` for every key of :data:`IDX_KEYS`.
    kspace
        ``[samples, 4]`` float: kx, ky, kz in 1/m and the dephasing time τ in s of every sample,
        for simulated or non-Cartesian data; None when only the counters place the samples.
    encoded_matrix, recon_matrix
        ``(x, y, z)`` matrix sizes of the encoded and the reconstructed space; x is the readout.
    encoded_fov_m, recon_fov_m
        ``(x, y, z)`` fields of view in m. For 2-D data z is the slice thickness.
    center_sample
        ``[readouts]`` int64: index (within the readout, in stored order) of the sample at
        kx = 0; asymmetric echoes have it off the middle.
    center_line, center_partition
        The ``LIN`` and ``PAR`` value of ky = 0 and kz = 0.
    trajectory
        One of :data:`TRAJECTORIES`.
    sample_time_s
        ``[readouts]`` float64: dwell time (time between samples) of each readout in s.
    flags
        ``[readouts]`` int64: :class:`AcqFlag` bits (calibration, reverse, first/last in …).
        Noise readouts are not readouts here: they live in :attr:`noise`.
    noise
        ``[samples, coils]`` complex64 noise-only samples (prescan), or None.
    noise_sample_time_s
        Dwell time of the noise samples in s, or None when unknown (then prewhitening takes
        the data to share it). It scales the noise covariance to the data's bandwidth
        (:func:`mr0core.recon.preprocess.prewhiten`); a step that rescales the data's sample
        axis (:func:`~mr0core.recon.preprocess.remove_readout_oversampling`) scales it alike.
    header
        The parsed source header, when there was one (``ismrmrd.xsd.ismrmrdHeader`` for files
        read by :func:`mr0core.io.mrd.read_mrd`).

    Notes
    -----
    ``signal``, ``kspace`` and ``noise`` live on one device; the per-readout tables are small
    int/float tensors on the same device. ``to(device, dtype)``, ``cpu()`` and ``cuda()``
    (:class:`~mr0core.tensordata.TensorContainer`) move everything.
    """

    _SELECT_AXES: ClassVar[Mapping[str, int]] = {
        "readout_length": 0, "idx": 0, "center_sample": 0, "sample_time_s": 0, "flags": 0,
    }  # fmt: skip
    _SELECT_KEEP: ClassVar[frozenset[str]] = frozenset({"noise"})

    signal: torch.Tensor
    readout_start: torch.Tensor
    readout_length: torch.Tensor
    idx: dict[str, torch.Tensor]
    encoded_matrix: tuple[int, int, int]
    recon_matrix: tuple[int, int, int]
    encoded_fov_m: tuple[float, float, float]
    recon_fov_m: tuple[float, float, float]
    center_sample: torch.Tensor
    sample_time_s: torch.Tensor
    flags: torch.Tensor
    center_line: int = 0
    center_partition: int = 0
    trajectory: str = "cartesian"
    kspace: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    noise_sample_time_s: float | None = None
    header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.signal.ndim == 1:
            self.signal = self.signal[:, None]
        if self.signal.ndim != 2:
            raise KDataError(f"signal must be [samples, coils], got {tuple(self.signal.shape)}")
        if not self.signal.is_complex():
            raise KDataError(f"signal must be complex, got {self.signal.dtype}")
        n_samples = int(self.signal.shape[0])
        n = int(self.readout_start.shape[0])
        for name in ("readout_length", "center_sample", "sample_time_s", "flags"):
            if tuple(getattr(self, name).shape) != (n,):
                raise KDataError(
                    f"{name} must have shape [{n}] (one per readout), "
                    f"got {tuple(getattr(self, name).shape)}"
                )
        idx = {k: torch.zeros(n, dtype=torch.int64, device=self.signal.device) for k in IDX_KEYS}
        for key, value in self.idx.items():
            if key not in IDX_KEYS:
                raise KDataError(f"unknown idx key {key!r}; known: {', '.join(IDX_KEYS)}")
            if tuple(value.shape) != (n,):
                raise KDataError(f"idx[{key!r}] must have shape [{n}], got {tuple(value.shape)}")
            idx[key] = value.to(torch.int64)
        self.idx = idx
        if n:
            end = int((self.readout_start + self.readout_length).max())
            if int(self.readout_start.min()) < 0 or end > n_samples:
                raise KDataError(f"readouts reach sample {end}, but signal has {n_samples}")
            if int(self.readout_length.min()) < 1:
                raise KDataError("every readout needs at least one sample")
        if self.kspace is not None and tuple(self.kspace.shape) != (n_samples, 4):
            raise KDataError(
                f"kspace must be [{n_samples}, 4] (kx, ky, kz, tau), got {tuple(self.kspace.shape)}"
            )
        if self.noise is not None and (
            self.noise.ndim != 2 or self.noise.shape[1] != self.signal.shape[1]
        ):
            raise KDataError(
                f"noise must be [samples, {self.signal.shape[1]}], got {tuple(self.noise.shape)}"
            )
        if self.noise_sample_time_s is not None:
            dwell = float(self.noise_sample_time_s)
            if not (math.isfinite(dwell) and dwell > 0):
                raise KDataError(f"noise_sample_time_s must be a positive time in s, got {dwell}")
            self.noise_sample_time_s = dwell
        if self.trajectory not in TRAJECTORIES:
            raise KDataError(f"trajectory must be one of {TRAJECTORIES}, got {self.trajectory!r}")
        for name in ("encoded_matrix", "recon_matrix"):
            ints = tuple(int(v) for v in getattr(self, name))
            if len(ints) != 3 or min(ints) < 1:
                raise KDataError(f"{name} must be three positive ints, got {ints}")
            setattr(self, name, ints)
        for name in ("encoded_fov_m", "recon_fov_m"):
            floats = tuple(float(v) for v in getattr(self, name))
            if len(floats) != 3 or not all(math.isfinite(v) and v > 0 for v in floats):
                raise KDataError(f"{name} must be three positive lengths in m, got {floats}")
            setattr(self, name, floats)

    # -- properties -------------------------------------------------------------------------

    @property
    def n_readouts(self) -> int:
        """Number of readouts."""
        return int(self.readout_start.shape[0])

    @property
    def n_coils(self) -> int:
        """Number of receive coils."""
        return int(self.signal.shape[1])

    @property
    def readout_oversampling(self) -> float:
        """Readout oversampling factor, ``encoded_matrix[0] / recon_matrix[0]``."""
        return self.encoded_matrix[0] / self.recon_matrix[0]

    def sample_readout(self) -> torch.Tensor:
        """Return the readout index of every sample of :attr:`signal`, ``[samples]`` int64.

        Samples that belong to no readout get -1.
        """
        out = torch.full((self.signal.shape[0],), -1, dtype=torch.int64, device=self.device)
        if self.n_readouts:
            r = torch.repeat_interleave(
                torch.arange(self.n_readouts, device=self.device), self.readout_length
            )
            out[self.sample_positions()] = r
        return out

    def sample_positions(self) -> torch.Tensor:
        """Return the row of :attr:`signal` of every readout sample, readout by readout."""
        return _positions(self.readout_start, self.readout_length)

    def has_flag(self, flag: AcqFlag) -> torch.Tensor:
        """Return ``[readouts]`` bool: whether each readout has (any bit of) ``flag``."""
        return (self.flags & int(flag)) != 0

    # -- copies (to, cpu, cuda: TensorContainer) ----------------------------------------------

    def _select_special(self, index: torch.Tensor) -> dict[str, Any]:
        """Compact the chosen readouts' samples (``signal``, ``kspace``) in the new order."""
        length = self.readout_length[index]
        rows = _positions(self.readout_start[index], length)
        return {
            "signal": self.signal[rows],
            "kspace": None if self.kspace is None else self.kspace[rows],
            "readout_start": torch.cumsum(length, 0) - length,
        }

    def select(self, readouts: torch.Tensor) -> KData:
        """Return the given readouts, in the given order, as a new compact :class:`KData`.

        Parameters
        ----------
        readouts
            ``[readouts]`` bool mask or int64 indices (any order; repeats allowed).

        Returns
        -------
        KData
            Same geometry and noise; ``signal`` (and ``kspace``) hold only the chosen readouts'
            samples, concatenated in the new order.

        Raises
        ------
        KDataError
            A mask of the wrong shape or an index out of range.
        """
        try:
            return super().select(readouts)
        except IndexError as exc:
            raise KDataError(str(exc)) from exc

    # -- construction from a simulation ----------------------------------------------------

    @classmethod
    def from_sequence(cls, signal: torch.Tensor, seq: Any) -> KData:
        """Build raw data from a simulated signal and the sequence that produced it.

        Parameters
        ----------
        signal
            ``[samples, coils]`` (or ``[samples]``) complex, one row per ADC sample of ``seq``
            in time order (what :func:`mr0core.util.simulate` returns).
        seq
            A :class:`mr0core.Sequence`, a ``pypulseq.Sequence`` or a ``.seq`` path.

        Returns
        -------
        KData
            With :attr:`kspace` from ``seq.get_kspace()``. Counters come from the Pulseq labels
            where present; otherwise ``ECO`` is the ADC contrast id minus one and, for Cartesian
            data, ``LIN``/``PAR`` are the ky/kz grid index ``round(k · fov)`` shifted so that
            ky = 0 is ``ny // 2`` (gaps of undersampled data are kept). Non-Cartesian data
            without labels number their readouts in ``LIN``. Matrix and FOV come from the ``FOV``
            definition (m) and the k-space grid; with no definition, from the sample spacing
            (Δk = 1/FOV). Readouts with the Pulseq ``NOISE`` flag go to :attr:`noise`.

        Raises
        ------
        KDataError
            If the signal does not have one row per ADC sample.
        """
        seq = as_sequence(seq)
        signal = torch.as_tensor(signal)
        if signal.ndim == 1:
            signal = signal[:, None]
        if not signal.is_complex():
            raise KDataError(f"signal must be complex, got {signal.dtype}")
        if signal.dtype != torch.complex128:
            signal = signal.to(torch.complex64)
        kspace = seq.get_kspace().detach().to(signal.device)
        if signal.ndim != 2 or signal.shape[0] != kspace.shape[0]:
            raise KDataError(
                f"signal has {tuple(signal.shape)} rows, the sequence {kspace.shape[0]} ADC samples"
            )
        return _from_sequence(signal, kspace, seq)


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------


def _positions(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
    """Sample rows of readouts ``start[r] .. start[r] + length[r] - 1``, readout by readout."""
    if start.numel() == 0:
        return torch.zeros(0, dtype=torch.int64, device=start.device)
    r = torch.repeat_interleave(torch.arange(start.shape[0], device=start.device), length)
    offset = torch.cumsum(length, 0) - length
    within = torch.arange(int(length.sum()), device=start.device) - offset[r]
    return start[r] + within


def definition_fov(definitions: Mapping[str, Any]) -> tuple[float, float, float] | None:
    """Return the ``FOV`` definition in m as ``(x, y, z)``, or None when absent or unreadable.

    Values above 2 are taken to be in mm (some scripts write them so) and converted.
    """
    value = definitions.get("FOV")
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split()
    try:
        floats = [float(v) for v in np.atleast_1d(np.asarray(value, dtype=object))]
    except (TypeError, ValueError):
        return None
    if len(floats) == 2:
        floats.append(floats[0] / 64.0)
    if len(floats) != 3 or not all(math.isfinite(v) and v > 0 for v in floats):
        return None
    if max(floats) > 2.0:
        floats = [v / 1000.0 for v in floats]
    return (floats[0], floats[1], floats[2])


def matrix_from_indices(lo: int, hi: int) -> int:
    """Smallest even matrix ``n`` whose grid ``-n//2 .. n - n//2 - 1`` holds ``lo .. hi``.

    One point (``lo == hi == 0``) gives 1.
    """
    if lo == 0 and hi == 0:
        return 1
    return 2 * max(-lo, hi + 1, 1)


def fit_matrix(lo: int, hi: int) -> tuple[int, int]:
    """Matrix size and centre index for grid indices ``lo .. hi`` (relative to k = 0).

    Normally :func:`matrix_from_indices` with k = 0 at ``n // 2``. When the samples are just one
    step off-centre (e.g. ``-n/2 + 1 .. n/2``, as some Pulseq EPI and labelled GRE examples
    write), the matrix is the sample count and k = 0 sits at ``-lo``; the recon moves the grid
    by that step and corrects it exactly with a phase ramp.
    """
    n_sym = matrix_from_indices(lo, hi)
    count = hi - lo + 1
    n_fit = 1 if count <= 1 and lo == 0 else count + (count % 2)
    if n_fit < n_sym <= n_fit + 2:
        return n_fit, -lo
    return n_sym, n_sym // 2


def grid_offset(u: np.ndarray) -> float:
    """Return the common offset ``δ`` of ``u`` (values in grid steps) from the integer grid.

    The circular mean of the fractional parts, in (-0.5, 0.5]; offsets within 0.05 of ±0.5
    become +0.5, so symmetric half-step sampling ``±(j + 1/2)`` rounds to ``-n/2 .. n/2 - 1``.
    """
    if u.size == 0:
        return 0.0
    phase = np.angle(np.mean(np.exp(2j * np.pi * u)))
    delta = float(phase / (2 * np.pi))
    if abs(abs(delta) - 0.5) < 0.05:
        delta = 0.5
    return delta


def _runs(seq: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split the ADC events into readouts.

    Returns start sample, length, contrast id and dwell time (s) per readout.
    """
    starts: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    usages: list[np.ndarray] = []
    dwells: list[np.ndarray] = []
    offset = 0
    for rep in seq:
        usage = rep.adc_usage.detach().cpu().numpy()
        ev = np.flatnonzero(usage > 0)
        if ev.size == 0:
            continue
        brk = (np.diff(ev) != 1) | (usage[ev[1:]] != usage[ev[:-1]])
        first = np.concatenate([[0], np.flatnonzero(brk) + 1])
        last = np.concatenate([first[1:], [ev.size]])
        times = rep.event_time.detach().cpu().numpy().astype(np.float64)[ev]
        for a, b in zip(first, last, strict=True):
            inner = times[a + 1 : b]
            dwells.append(np.array([np.median(inner) if inner.size else times[a]]))
        starts.append(offset + first)
        lengths.append(last - first)
        usages.append(usage[ev[first]])
        offset += ev.size
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, np.zeros(0)
    return (
        np.concatenate(starts).astype(np.int64),
        np.concatenate(lengths).astype(np.int64),
        np.concatenate(usages).astype(np.int64),
        np.concatenate(dwells),
    )


def classify_trajectory(k: np.ndarray, start: np.ndarray, length: np.ndarray) -> str:
    """Classify readouts: ``"cartesian"`` (lines along kx), ``"radial"``, ``"spiral"``, ``"other"``.

    Parameters
    ----------
    k
        ``[samples, 3]`` k-space positions in 1/m.
    start, length
        ``[readouts]`` readout table.
    """
    multi = length >= 2
    if not multi.any():
        return "other"
    straight_x = True
    straight = True
    through_centre = True
    for s, n in zip(start[multi], length[multi], strict=True):
        seg = k[s : s + n]
        steps = np.diff(seg, axis=0)
        step_norm = np.linalg.norm(steps, axis=1)
        med = float(np.median(step_norm))
        if med <= 0:
            return "other"
        uniform = bool(np.all(np.abs(step_norm - med) <= _STEP_TOL * med))
        if straight_x:
            transverse = np.ptp(seg[:, 1:], axis=0).max()
            dx = np.abs(steps[:, 0])
            if not (uniform and transverse <= _STEP_TOL * med and np.all(dx > 0.5 * med)):
                straight_x = False
        if straight:
            d = seg[-1] - seg[0]
            d = d / np.linalg.norm(d)
            off = (seg - seg[0]) - np.outer((seg - seg[0]) @ d, d)
            if np.abs(off).max() > _STEP_TOL * med * 2:
                straight = False
            else:
                dist = np.linalg.norm(seg[0] - (seg[0] @ d) * d)
                if dist > med:
                    through_centre = False
    if straight_x:
        return "cartesian"
    if straight and through_centre:
        return "radial"
    if not straight:
        first = np.linalg.norm(k[start[multi]], axis=1)
        med = float(np.median(np.linalg.norm(np.diff(k[start[0] : start[0] + length[0]], axis=0))))
        if np.all(first <= 2 * med):
            return "spiral"
    return "other"


def _axis_grid(
    values: np.ndarray, fov: float | None, fallback_step: float
) -> tuple[np.ndarray, float, float] | None:
    """Place ``values`` (1/m) on a grid of step ``1/fov`` (or the data's own step).

    Returns integer indices (relative to k = 0), the step (1/m) and the offset δ (grid steps), or
    None when the values are not on any regular grid.
    """
    candidates: list[float] = []
    if fov is not None:
        candidates.append(1.0 / fov)
    spread = float(np.ptp(values)) if values.size else 0.0
    if spread <= 1e-6 * max(fallback_step, 1e-12):
        step = candidates[0] if candidates else fallback_step
        u = values / step
        delta = grid_offset(u)
        return np.round(u - delta).astype(np.int64), step, delta
    uniq = np.unique(np.round(values / (1e-3 * fallback_step)) * (1e-3 * fallback_step))
    diffs = np.diff(uniq)
    diffs = diffs[diffs > 0.05 * fallback_step]
    if diffs.size:
        smallest = float(diffs.min())
        candidates.append(float(np.median(diffs[diffs < 1.5 * smallest])))
    for step in candidates:
        u = values / step
        delta = grid_offset(u)
        rel = np.round(u - delta)
        if np.abs(u - delta - rel).max() <= _GRID_TOL:
            return rel.astype(np.int64), step, delta
    return None


def _boundary_flags(order_keys: np.ndarray, first: AcqFlag, last: AcqFlag) -> np.ndarray:
    """Return flags for the first and last readout (time order) of each group of equal keys."""
    out = np.zeros(order_keys.shape[0], dtype=np.int64)
    if order_keys.shape[0] == 0:
        return out
    _, inverse = np.unique(order_keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_groups = int(inverse.max()) + 1
    pos = np.arange(order_keys.shape[0])
    first_pos = np.full(n_groups, order_keys.shape[0])
    last_pos = np.full(n_groups, -1)
    np.minimum.at(first_pos, inverse, pos)
    np.maximum.at(last_pos, inverse, pos)
    out[first_pos] |= int(first)
    out[last_pos] |= int(last)
    return out


def boundary_flags(idx: Mapping[str, np.ndarray]) -> np.ndarray:
    """ISMRMRD first/last-in-… flags from the counters, readouts in time order.

    Groups: encode step 1 per (REP, SET, PHS, SLC, ECO, PAR); step 2, contrast per (REP, SET, PHS,
    SLC, ECO); slice per (REP, SET, PHS, SLC); average per (REP, SET, PHS, SLC, ECO, AVG); phase,
    set and repetition by their counters; segment per (… , SEG); LAST_IN_MEASUREMENT on the last.
    """
    n = len(next(iter(idx.values()))) if idx else 0
    if n == 0:
        return np.zeros(0, dtype=np.int64)

    def keys(*names: str) -> np.ndarray:
        return np.stack([np.asarray(idx[k]) for k in names], axis=1)

    base = ("REP", "SET", "PHS", "SLC")
    f = _boundary_flags(
        keys(*base, "ECO", "PAR"), AcqFlag.FIRST_IN_ENCODE_STEP1, AcqFlag.LAST_IN_ENCODE_STEP1
    )
    f |= _boundary_flags(
        keys(*base, "ECO"), AcqFlag.FIRST_IN_ENCODE_STEP2, AcqFlag.LAST_IN_ENCODE_STEP2
    )
    f |= _boundary_flags(keys(*base, "ECO"), AcqFlag.FIRST_IN_CONTRAST, AcqFlag.LAST_IN_CONTRAST)
    f |= _boundary_flags(keys(*base), AcqFlag.FIRST_IN_SLICE, AcqFlag.LAST_IN_SLICE)
    f |= _boundary_flags(
        keys(*base, "ECO", "AVG"), AcqFlag.FIRST_IN_AVERAGE, AcqFlag.LAST_IN_AVERAGE
    )
    f |= _boundary_flags(keys("REP", "PHS"), AcqFlag.FIRST_IN_PHASE, AcqFlag.LAST_IN_PHASE)
    f |= _boundary_flags(keys("REP", "SET"), AcqFlag.FIRST_IN_SET, AcqFlag.LAST_IN_SET)
    f |= _boundary_flags(keys("REP"), AcqFlag.FIRST_IN_REPETITION, AcqFlag.LAST_IN_REPETITION)
    f |= _boundary_flags(
        keys(*base, "ECO", "SEG"), AcqFlag.FIRST_IN_SEGMENT, AcqFlag.LAST_IN_SEGMENT
    )
    f[-1] |= int(AcqFlag.LAST_IN_MEASUREMENT)
    return f


def _from_sequence(signal: torch.Tensor, kspace: torch.Tensor, seq: Sequence) -> KData:
    device = signal.device
    start, length, usage, dwell = _runs(seq)
    n_read = start.size
    if n_read == 0:
        raise KDataError("the sequence has no ADC samples")
    labels = {k: v.detach().cpu().numpy() for k, v in seq.get_labels().items()}
    k_all = kspace.detach().cpu().numpy().astype(np.float64)
    k3 = k_all[:, :3]

    def at_start(name: str) -> np.ndarray:
        result: np.ndarray = labels[name][start].astype(np.int64)
        return result

    # flags from Pulseq flag labels; noise readouts are split off below
    flags = np.zeros(n_read, dtype=np.int64)
    flag_map = {
        "NOISE": AcqFlag.IS_NOISE_MEASUREMENT,
        "REF": AcqFlag.IS_PARALLEL_CALIBRATION,
        "IMA": AcqFlag.IS_PARALLEL_CALIBRATION_AND_IMAGING,
        "NAV": AcqFlag.IS_NAVIGATION_DATA,
    }
    for name, flag in flag_map.items():
        if name in labels:
            flags[at_start(name) != 0] |= int(flag)
    noise_read = (flags & int(AcqFlag.IS_NOISE_MEASUREMENT)) != 0
    img = ~noise_read
    if not img.any():
        raise KDataError("the sequence has only noise readouts")

    # geometry from the imaging readouts
    fov = definition_fov(seq.definitions)
    if seq.normalized_grads and fov is None:
        fov = (1.0, 1.0, 1.0)  # k in cycles per FOV: positions come out in units of the FOV
    istart, ilength = start[img], length[img]
    rows = np.concatenate([np.arange(s, s + n) for s, n in zip(istart, ilength, strict=True)])
    trajectory = classify_trajectory(k3, istart, ilength)

    step_norms = [
        np.linalg.norm(np.diff(k3[s : s + n], axis=0), axis=1)
        for s, n in zip(istart, ilength, strict=True)
        if n >= 2
    ]
    dk_sample = float(np.median(np.concatenate(step_norms))) if step_norms else 0.0
    if dk_sample <= 0:
        dk_sample = 1.0 / fov[0] if fov is not None else 1.0

    # readout oversampling: FOV definition vs sample spacing
    os_factor = 1
    if fov is not None:
        ratio = 1.0 / (fov[0] * dk_sample)
        if ratio >= 0.95 and abs(ratio - round(ratio)) <= 0.05 * round(ratio):
            os_factor = max(1, round(ratio))
            dkx = 1.0 / (os_factor * fov[0])
            rfov_x = fov[0]
        else:
            if trajectory == "cartesian":
                warnings.warn(
                    f"FOV definition {fov[0]} m does not match the readout sample spacing "
                    f"{dk_sample:.6g} 1/m; using the spacing",
                    stacklevel=3,
                )
            dkx, rfov_x = dk_sample, 1.0 / dk_sample
    else:
        dkx, rfov_x = dk_sample, 1.0 / dk_sample

    center_sample = np.zeros(n_read, dtype=np.int64)
    reverse = np.zeros(n_read, dtype=bool)
    rel: dict[str, np.ndarray] = {}
    if trajectory == "cartesian":
        gx = _axis_grid(k3[rows, 0], 1.0 / dkx, dkx)
        centre_ky = np.array([k3[s : s + n, 1].mean() for s, n in zip(start, length, strict=True)])
        centre_kz = np.array([k3[s : s + n, 2].mean() for s, n in zip(start, length, strict=True)])
        gy = _axis_grid(centre_ky[img], fov[1] if fov else None, dkx)
        gz = _axis_grid(centre_kz[img], fov[2] if fov else None, dkx)
        if gx is None or gy is None or gz is None:
            trajectory = "other"
        else:
            (_, _, dx_off), (ry, dky, dy_off), (rz, dkz, dz_off) = gx, gy, gz
            rel["x_lo"], rel["x_hi"] = gx[0].min(), gx[0].max()
            rel_y = np.zeros(n_read, dtype=np.int64)
            rel_z = np.zeros(n_read, dtype=np.int64)
            rel_y[img], rel_z[img] = ry, rz
            rel_y[~img] = np.round(centre_ky[~img] / dky - dy_off).astype(np.int64)
            rel_z[~img] = np.round(centre_kz[~img] / dkz - dz_off).astype(np.int64)
            first_x = np.round(k3[start, 0] / dkx - dx_off).astype(np.int64)
            reverse = (length >= 2) & (k3[np.minimum(start + 1, len(k3) - 1), 0] < k3[start, 0])
            center_sample = np.where(reverse, first_x, -first_x)
    if trajectory == "cartesian":
        nx, _ = fit_matrix(int(rel["x_lo"]), int(rel["x_hi"]))
        ny, y_centre = fit_matrix(int(rel_y[img].min()), int(rel_y[img].max()))
        nz, z_centre = fit_matrix(int(rel_z[img].min()), int(rel_z[img].max()))
        fov_y = 1.0 / dky if ny > 1 or fov is None else fov[1]
        if nz > 1:
            fov_z = 1.0 / dkz
        else:  # 2-D: the slice thickness, or one voxel when nothing says
            fov_z = fov[2] if fov is not None else rfov_x / max(1, nx // os_factor)
        efov = (1.0 / dkx, fov_y, fov_z)
        encoded = (nx, ny, nz)
        rnx = max(1, nx // os_factor) if nx % os_factor == 0 else nx
        recon = (rnx, ny, nz)
        rfov = (rfov_x if rnx != nx else efov[0], efov[1], efov[2])
    else:
        # non-Cartesian: recon matrix from the k-space extent and the FOV
        center_sample = np.array(
            [
                int(np.argmin(np.linalg.norm(k3[s : s + n], axis=1)))
                for s, n in zip(start, length, strict=True)
            ],
            dtype=np.int64,
        )
        base_fov = fov if fov is not None else (rfov_x, rfov_x, rfov_x)
        kmax = np.abs(k3[rows]).max(axis=0)
        r0, r1, r2 = (max(1, round(2 * float(kmax[a]) * base_fov[a])) for a in range(3))
        recon = (r0, r1, r2)
        rfov = (base_fov[0], base_fov[1], base_fov[2])
        encoded = (recon[0] * os_factor, recon[1], recon[2])
        efov = (rfov[0] * os_factor, rfov[1], rfov[2])
        if encoded[2] == 1 and fov is None:
            efov = (efov[0], efov[1], efov[0] / encoded[0])
            rfov = (rfov[0], rfov[1], efov[2])

    # counters: labels first, then what the trajectory says
    idx: dict[str, np.ndarray] = {}
    for key in IDX_KEYS:
        if key in labels:
            idx[key] = at_start(key)
    center_line = center_partition = 0
    if trajectory == "cartesian":
        closest = int(
            np.argmin(np.where(img, np.abs(rel_y) + np.abs(rel_z), np.iinfo(np.int64).max))
        )
        for key, rel_k in (("LIN", rel_y), ("PAR", rel_z)):
            if key in idx and np.unique(idx[key][img] - rel_k[img]).size > 1:
                warnings.warn(
                    f"the {key} labels do not follow the k-space grid (e.g. they count ky "
                    f"downwards); {key} is taken from the trajectory instead",
                    stacklevel=3,
                )
                del idx[key]
        if "LIN" in idx:
            center_line = int(idx["LIN"][closest] - rel_y[closest])
        else:
            idx["LIN"] = rel_y + y_centre
            center_line = y_centre
        if "PAR" in idx:
            center_partition = int(idx["PAR"][closest] - rel_z[closest])
        else:
            idx["PAR"] = rel_z + z_centre
            center_partition = z_centre
    elif "LIN" not in idx:
        counter = np.zeros(n_read, dtype=np.int64)
        for c in np.unique(usage):
            sel = usage == c
            counter[sel] = np.arange(int(sel.sum()))
        idx["LIN"] = counter
    if "ECO" not in idx:
        idx["ECO"] = usage - 1
    for key in IDX_KEYS:
        idx.setdefault(key, np.zeros(n_read, dtype=np.int64))
    if min(int(v.min()) for v in idx.values()) < 0:
        bad = [k for k, v in idx.items() if int(v.min()) < 0]
        raise KDataError(f"negative encoding counters {bad}; check the sequence labels")

    flags[reverse] |= int(AcqFlag.IS_REVERSE)
    flags[img] |= boundary_flags({k: v[img] for k, v in idx.items()})

    def tensor(a: np.ndarray, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    noise, noise_dwell = None, None
    if noise_read.any():
        nrows = np.concatenate(
            [
                np.arange(s, s + n)
                for s, n in zip(start[noise_read], length[noise_read], strict=True)
            ]
        )
        noise = signal[tensor(nrows)]
        noise_dwell = float(np.median(dwell[noise_read]))
    # compact the imaging readouts (noise rows removed)
    new_start = np.cumsum(ilength) - ilength
    kspace_img = kspace[tensor(rows)].to(
        torch.float64 if signal.dtype == torch.complex128 else torch.float32
    )
    return KData(
        signal=signal[tensor(rows)],
        readout_start=tensor(new_start),
        readout_length=tensor(ilength),
        idx={k: tensor(v[img]) for k, v in idx.items()},
        encoded_matrix=encoded,
        recon_matrix=recon,
        encoded_fov_m=efov,
        recon_fov_m=rfov,
        center_sample=tensor(center_sample[img]),
        sample_time_s=tensor(dwell[img], torch.float64),
        flags=tensor(flags[img]),
        center_line=center_line,
        center_partition=center_partition,
        trajectory=trajectory,
        kspace=kspace_img,
        noise=noise,
        noise_sample_time_s=noise_dwell if noise_dwell and noise_dwell > 0 else None,
    )

"""The MR-zero sequence model: pulses, repetitions and sequences.

A :class:`Sequence` is a list of :class:`Repetition`. Every repetition starts with one
instantaneous :class:`Pulse` and is followed by ``event_count`` events. Event ``i`` lasts
``event_time[i]`` seconds, applies the gradient moment ``gradm[i]`` (1/m, i.e. cycles per metre,
the unit Pulseq uses) and, when ``adc_usage[i] > 0``, samples the signal at its *end* with the
receiver phase ``adc_phase[i]`` (rad).

k-space convention (:meth:`Sequence.get_full_kspace`): the position after event ``i`` is the running
sum of ``gradm`` since the last excitation, in 1/m. The fourth column is the dephasing time τ in s,
the running sum of ``event_time``, which the simulator uses for T2′ and B0 dephasing. Pulses act on
both according to their :class:`PulseUsage`: EXCIT resets them to zero (or to the position saved by
the last STORE pulse), REFOC negates them, STORE saves them, UNDEF and FATSAT leave them alone.

All tensors of a sequence live on one device; :meth:`Sequence.to` moves them together.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Iterable, Mapping
from copy import deepcopy
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mr0core.tensordata import TensorContainer

if TYPE_CHECKING:
    from os import PathLike

    import matplotlib.figure

    from mr0core.pulseq.reader import SeqFile, SeqLimits

__all__ = ["Pulse", "PulseUsage", "Repetition", "RfWaveform", "Sequence", "as_sequence", "chain"]

_DEFAULT_SHIM = torch.tensor([[1.0, 0.0]])
"""Single-channel shim (amplitude 1, phase 0), the default of :meth:`Sequence.import_file`."""


class PulseUsage(Enum):
    """What a pulse does to the k-space trajectory (the simulation ignores it)."""

    UNDEF = "undefined"
    """No special role; k-space is left unchanged."""
    EXCIT = "excitation"
    """Resets k-space to zero, or to the position saved by the last STORE pulse."""
    REFOC = "refocussing"
    """Mirrors k-space (k → −k, τ → −τ)."""
    STORE = "storing"
    """Saves the current k-space position for later EXCIT pulses (DREAM-like sequences)."""
    FATSAT = "fatsaturation"
    """Fat saturation; k-space is left unchanged."""


def _scalar(value: float | torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
    """Return ``value`` as a 0-d float32 tensor (keeps autograd history of tensors)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return value.reshape(())
    device = like.device if like is not None else None
    return torch.tensor(float(value), dtype=torch.float32, device=device)


class RfWaveform(TensorContainer):
    """The waveform of a shaped RF pulse, for ``rf_model="shaped"`` simulations.

    The pulse is piecewise constant: step ``n`` lasts ``dt[n]`` and plays ``b1[n]`` with the
    gradient ``grad[n]``. Pulses with equal waveforms share one object (and the simulators share
    the Bloch integration between them).

    The waveform is scaled and rotated to the :class:`Pulse` that carries it: the simulated B1 is
    ``b1 · (pulse.angle / angle) · exp(i (pulse.phase − phase))``, so that editing (or optimising)
    a pulse's angle or phase acts on its shaped form, too.

    Parameters
    ----------
    b1
        ``[steps]`` complex B1 in Hz (γ B1 / 2π, the rotating-frame field): amplitude, shape
        phase, frequency offset modulation; without the pulse's constant phase offset.
    dt
        ``[steps]`` step durations in s (> 0).
    grad
        ``[steps, 3]`` gradient during each step in Hz/m (the step's mean), in the units of the
        sequence's ``gradm`` per second (1/FOV per s for sequences with ``normalized_grads``).
    center
        Time of the pulse centre after the start of the first step, s: where the sequence puts
        the instantaneous pulse (the repetition boundary).
    angle
        The flip angle (rad) of the pulse the waveform was made for: ``2π |Σ b1 dt|``.
    phase
        The phase (rad) of the pulse the waveform was made for, less its constant offset.
    """

    __slots__ = ("angle", "b1", "center", "dt", "grad", "phase")

    def __init__(
        self,
        b1: torch.Tensor,
        dt: torch.Tensor,
        grad: torch.Tensor,
        center: float,
        angle: float | None = None,
        phase: float = 0.0,
    ) -> None:
        b1 = torch.as_tensor(b1)
        n = b1.shape[0] if b1.ndim == 1 else -1
        if n < 1:
            raise ValueError(
                f"RfWaveform.b1 must be [steps] with steps >= 1, got {tuple(b1.shape)}"
            )
        dt = torch.as_tensor(dt, device=b1.device)
        grad = torch.as_tensor(grad, device=b1.device)
        if dt.shape != (n,) or grad.shape != (n, 3):
            raise ValueError(
                f"RfWaveform: dt must be [{n}] and grad [{n}, 3], got {tuple(dt.shape)} and "
                f"{tuple(grad.shape)}"
            )
        if not bool((dt.detach() > 0).all()):
            raise ValueError(f"RfWaveform.dt must be positive, got minimum {float(dt.min()):g} s")
        total = float(dt.detach().double().sum())
        slack = float(dt.detach().max())  # Pulseq allows the centre half a raster outside
        if not -slack <= float(center) <= total + slack:
            raise ValueError(
                f"RfWaveform.center {float(center):g} s lies outside the pulse (0 to {total:g} s)"
            )
        self.b1 = b1 if b1.is_complex() else b1.to(torch.complex64)
        self.dt = dt.float() if not dt.is_floating_point() else dt
        self.grad = grad.float() if not grad.is_floating_point() else grad
        self.center = float(center)
        if angle is None:
            integral = (self.b1.detach().to(torch.complex128) * self.dt.detach().double()).sum()
            angle = 2 * math.pi * float(integral.abs())
        self.angle = float(angle)
        self.phase = float(phase)

    @property
    def duration(self) -> float:
        """Duration of the waveform in s."""
        return float(self.dt.detach().double().sum())

    def clone(self) -> RfWaveform:
        """Return a copy whose tensors share no storage with this one."""
        return RfWaveform(self.b1.clone(), self.dt.clone(), self.grad.clone(), self.center,
                          self.angle, self.phase)  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"RfWaveform({len(self.dt)} steps, {self.duration * 1e3:.4g} ms, "
            f"{math.degrees(self.angle):.4g}°, centre {self.center * 1e3:.4g} ms)"
        )


def _share_waveforms(source: Iterable[Repetition], copies: list[Repetition]) -> None:
    """Let the copies of pulses that shared a waveform share one copy of it (in place)."""
    memo: dict[int, RfWaveform] = {}
    for rep, new in zip(source, copies, strict=True):
        w = rep.pulse.waveform
        if w is not None and new.pulse.waveform is not None:
            new.pulse.waveform = memo.setdefault(id(w), new.pulse.waveform)


_OFF_RES_NOT_SIMULATED = (
    "off-resonant pulse response (off_res=True) is not simulated: mr0core's pulses are "
    "instantaneous rotations; use off_res=False"
)


class Pulse(TensorContainer):
    """An instantaneous RF pulse.

    The parameters follow MR-zero 1.2's order. Its documentation lists only ``usage, angle,
    phase, shim_array, selective``; pass those two by keyword (a shim given where ``pulse_freq``
    belongs is refused with a message that says so).

    Parameters
    ----------
    usage
        The role of the pulse for k-space bookkeeping (see :class:`PulseUsage`).
    angle
        Flip angle in rad, 0-d tensor or float.
    phase
        Pulse phase in rad, 0-d tensor or float.
    pulse_freq, freq_offset
        Frequency terms of MR-zero 1.2's off-resonant pulse model, in Hz (0-d).
    duration
        Pulse duration in s (0-d).
    grad
        Gradient during the pulse, ``[3]`` in Hz/m.
    off_res
        MR-zero 1.2 simulates the pulse's off-resonant response when True. mr0core's pulses are
        instantaneous, so only False is accepted (True raises :class:`NotImplementedError`);
        with False, ``pulse_freq``, ``freq_offset``, ``duration`` and ``grad`` are carried along
        (cloned, moved, exported) but do not change the simulation, as in MR-zero.
    shim_array
        pTx shim, shape ``[tx channels, 2]``: relative amplitude and phase (rad) per channel.
        ``[[1, 0]]`` is a single-channel transmitter.
    selective
        Whether the pulse was slice selective (kept for exporters; the simulation ignores it).
    waveform
        The pulse's shaped waveform (:class:`RfWaveform`, kept by the Pulseq import), simulated
        with ``rf_model="shaped"``; None: the pulse is instantaneous in every model.
    """

    _pulse_freq: torch.Tensor | None = None
    waveform: RfWaveform | None = None
    _freq_offset: torch.Tensor | None = None
    _duration: torch.Tensor | None = None
    _grad: torch.Tensor | None = None

    def __init__(
        self,
        usage: PulseUsage,
        angle: float | torch.Tensor,
        phase: float | torch.Tensor,
        pulse_freq: float | torch.Tensor = 0.0,
        freq_offset: float | torch.Tensor = 0.0,
        duration: float | torch.Tensor = 0.0,
        grad: Any = None,
        off_res: bool = False,
        shim_array: torch.Tensor | None = None,
        selective: bool = True,
        *,
        waveform: RfWaveform | None = None,
    ) -> None:
        if not isinstance(usage, PulseUsage):
            raise TypeError(f"usage must be a PulseUsage, got {usage!r}")
        self.usage = usage
        self.angle = _scalar(angle)
        self.phase = _scalar(phase, like=self.angle)
        for name, value in (("pulse_freq", pulse_freq), ("freq_offset", freq_offset),
                            ("duration", duration)):  # fmt: skip
            if isinstance(value, torch.Tensor) and value.numel() != 1:
                raise ValueError(
                    f"{name} must be a scalar, got shape {tuple(value.shape)}; Pulse takes MR-zero "
                    "1.2's order (usage, angle, phase, pulse_freq, freq_offset, duration, grad, "
                    "off_res, shim_array, selective): pass shim_array by keyword"
                )
        self.pulse_freq = pulse_freq
        self.freq_offset = freq_offset
        self.duration = duration
        self.grad = torch.zeros(3) if grad is None else grad
        self.off_res = off_res
        if shim_array is None:
            shim_array = torch.tensor([[1.0, 0.0]], device=self.angle.device)
        shim_array = torch.as_tensor(shim_array, dtype=torch.float32, device=self.angle.device)
        if shim_array.ndim != 2 or shim_array.shape[1] != 2:
            raise ValueError(
                f"shim_array must have shape [channels, 2], got {tuple(shim_array.shape)}"
            )
        self.shim_array = shim_array
        self.selective = bool(selective)
        if waveform is not None and not isinstance(waveform, RfWaveform):
            raise TypeError(
                f"waveform must be an RfWaveform or None, got {type(waveform).__name__}"
            )
        self.waveform = waveform

    @classmethod
    def _trusted(
        cls,
        usage: PulseUsage,
        angle: torch.Tensor,
        phase: torch.Tensor,
        shim_array: torch.Tensor,
        selective: bool,
        waveform: RfWaveform | None = None,
    ) -> Pulse:
        """Build from already validated tensors without checks (bulk import fast path)."""
        pulse = object.__new__(cls)
        pulse.usage, pulse._angle, pulse._phase = usage, angle, phase
        pulse.shim_array, pulse.selective = shim_array, selective
        if waveform is not None:
            pulse.waveform = waveform
        return pulse

    @property
    def pulse_freq(self) -> torch.Tensor:
        """Frequency term of MR-zero 1.2's off-resonant pulse model in Hz (0-d; not simulated)."""
        if self._pulse_freq is None:
            self._pulse_freq = torch.zeros((), device=self.angle.device)
        return self._pulse_freq

    @pulse_freq.setter
    def pulse_freq(self, value: float | torch.Tensor) -> None:
        self._pulse_freq = _scalar(value, like=self.angle)

    @property
    def freq_offset(self) -> torch.Tensor:
        """Frequency offset of MR-zero 1.2's off-resonant pulse model in Hz (0-d)."""
        if self._freq_offset is None:
            self._freq_offset = torch.zeros((), device=self.angle.device)
        return self._freq_offset

    @freq_offset.setter
    def freq_offset(self, value: float | torch.Tensor) -> None:
        self._freq_offset = _scalar(value, like=self.angle)

    @property
    def duration(self) -> torch.Tensor:
        """Pulse duration in s (0-d); the simulated pulse is instantaneous."""
        if self._duration is None:
            self._duration = torch.zeros((), device=self.angle.device)
        return self._duration

    @duration.setter
    def duration(self, value: float | torch.Tensor) -> None:
        self._duration = _scalar(value, like=self.angle)

    @property
    def grad(self) -> torch.Tensor:
        """Gradient during the pulse, ``[3]`` in Hz/m."""
        if self._grad is None:
            self._grad = torch.zeros(3, device=self.angle.device)
        return self._grad

    @grad.setter
    def grad(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.float32)
        t = value
        t = t.to(self.angle.device).reshape(-1)
        if t.shape != (3,):
            raise ValueError(f"grad must have 3 components (Hz/m), got shape {tuple(t.shape)}")
        self._grad = t

    @property
    def off_res(self) -> bool:
        """Always False: off-resonant pulse response is not simulated (True is refused)."""
        return False

    @off_res.setter
    def off_res(self, value: bool) -> None:
        if bool(value):
            raise NotImplementedError(f"Pulse.off_res: {_OFF_RES_NOT_SIMULATED}")

    @property
    def angle(self) -> torch.Tensor:
        """Flip angle in rad, 0-d tensor. Assigning a float converts it (MR-zero scripts do)."""
        return self._angle

    @angle.setter
    def angle(self, value: float | torch.Tensor) -> None:
        self._angle = _scalar(value, like=getattr(self, "_angle", None))

    @property
    def phase(self) -> torch.Tensor:
        """Pulse phase in rad, 0-d tensor. Assigning a float converts it."""
        return self._phase

    @phase.setter
    def phase(self, value: float | torch.Tensor) -> None:
        self._phase = _scalar(value, like=getattr(self, "_angle", None))

    @classmethod
    def zero(cls) -> Pulse:
        """Return a pulse with zero angle and phase, usage UNDEF, single-channel shim."""
        return cls(PulseUsage.UNDEF, 0.0, 0.0)

    @property
    def device(self) -> torch.device:
        """The device of the pulse's tensors."""
        return self.angle.device

    def clone(self) -> Pulse:
        """Return a deep copy whose tensors share no storage with this one."""
        return Pulse(
            self.usage,
            self.angle.clone(),
            self.phase.clone(),
            self.pulse_freq.clone(),
            self.freq_offset.clone(),
            self.duration.clone(),
            self.grad.clone(),
            self.off_res,
            self.shim_array.clone(),
            self.selective,
            waveform=None if self.waveform is None else self.waveform.clone(),
        )

    def __repr__(self) -> str:
        return (
            f"Pulse({self.usage.name}, angle={math.degrees(float(self.angle)):.3f}°, "
            f"phase={math.degrees(float(self.phase)):.3f}°, channels={self.shim_array.shape[0]})"
        )


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` as plain data (dicts with str keys, lists, str, int, float, bool, None).

    Tuples become lists and paths strings. Raises :class:`TypeError` naming ``where`` for
    anything else.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            out[key] = _plain(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{where} holds a {type(value).__name__}, which is not plain data")


def _entry(state: dict[str, Any], key: str, kind: type) -> Any:
    """Return ``state[key]``, checked to be a ``kind``."""
    if key not in state:
        raise ValueError(f"Sequence state: {key!r} is missing")
    value = state[key]
    if not isinstance(value, kind):
        raise ValueError(
            f"Sequence state: {key!r} must be a {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _tensor(
    state: dict[str, Any],
    key: str,
    shape: tuple[int, ...] | None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Return ``state[key]``, checked to be a CPU tensor of ``shape`` (and ``dtype``)."""
    value = _entry(state, key, torch.Tensor)
    if value.device.type != "cpu":
        raise ValueError(f"Sequence state: {key!r} is on {value.device}, not the CPU")
    if shape is None:
        if value.ndim != 1:
            raise ValueError(f"Sequence state: {key!r} must be 1-D, got {tuple(value.shape)}")
    elif tuple(value.shape) != shape:
        raise ValueError(f"Sequence state: {key!r} has shape {tuple(value.shape)}, not {shape}")
    if dtype is not None and value.dtype != dtype:
        raise ValueError(f"Sequence state: {key!r} has dtype {value.dtype}, not {dtype}")
    result: torch.Tensor = value
    return result


class Repetition(TensorContainer):
    """A pulse followed by ``event_count`` events.

    Parameters
    ----------
    pulse
        The pulse at the start of the repetition.
    event_time
        Event durations in s, shape ``[events]``.
    gradm
        Gradient moment of each event in 1/m, shape ``[events, 3]``.
    adc_phase
        Receiver phase in rad, shape ``[events]``.
    adc_usage
        0 for no sample, otherwise the contrast id of the sample taken at the end of the event,
        shape ``[events]``, integer.
    labels
        Optional Pulseq labels (``LIN``, ``SLC``, …) valid at each event, each of shape
        ``[events]``; only the values at ADC events carry meaning.

    ``to``, ``cpu`` and ``cuda`` return a copy with every tensor moved (pulse included);
    ``select(mask)`` picks events (``[events]`` bool mask or indices) and keeps the pulse.
    """

    _SELECT_AXES: ClassVar[Mapping[str, int]] = {
        "event_time": 0, "gradm": 0, "adc_phase": 0, "adc_usage": 0, "labels": 0,
    }  # fmt: skip
    _SELECT_KEEP: ClassVar[frozenset[str]] = frozenset({"pulse"})

    def __init__(
        self,
        pulse: Pulse,
        event_time: torch.Tensor,
        gradm: torch.Tensor,
        adc_phase: torch.Tensor,
        adc_usage: torch.Tensor,
        labels: dict[str, torch.Tensor] | None = None,
    ) -> None:
        n = event_time.shape[0]
        if event_time.ndim != 1:
            raise ValueError(f"event_time must have shape [events], got {tuple(event_time.shape)}")
        if gradm.shape != (n, 3):
            raise ValueError(f"gradm must have shape [{n}, 3], got {tuple(gradm.shape)}")
        if adc_phase.shape != (n,) or adc_usage.shape != (n,):
            raise ValueError(
                f"adc_phase and adc_usage must have shape [{n}], got "
                f"{tuple(adc_phase.shape)} and {tuple(adc_usage.shape)}"
            )
        self.pulse = pulse
        self.event_time = event_time
        self.gradm = gradm
        self.adc_phase = adc_phase
        self.adc_usage = adc_usage
        self.labels: dict[str, torch.Tensor] = dict(labels) if labels else {}

    @classmethod
    def _trusted(
        cls,
        pulse: Pulse,
        event_time: torch.Tensor,
        gradm: torch.Tensor,
        adc_phase: torch.Tensor,
        adc_usage: torch.Tensor,
        labels: dict[str, torch.Tensor],
    ) -> Repetition:
        """Build from already validated tensors without checks (bulk import fast path)."""
        rep = object.__new__(cls)
        rep.pulse, rep.event_time, rep.gradm = pulse, event_time, gradm
        rep.adc_phase, rep.adc_usage, rep.labels = adc_phase, adc_usage, labels
        return rep

    @classmethod
    def zero(cls, event_count: int, device: torch.device | str | None = None) -> Repetition:
        """Return a repetition with a zero pulse and ``event_count`` all-zero events."""
        pulse = Pulse.zero() if device is None else Pulse.zero().to(device)
        return cls(
            pulse,
            torch.zeros(event_count, dtype=torch.float32, device=device),
            torch.zeros(event_count, 3, dtype=torch.float32, device=device),
            torch.zeros(event_count, dtype=torch.float32, device=device),
            torch.zeros(event_count, dtype=torch.int32, device=device),
        )

    @property
    def event_count(self) -> int:
        """Number of events in this repetition."""
        return int(self.event_time.shape[0])

    @property
    def device(self) -> torch.device:
        """The device of the repetition's tensors."""
        return self.event_time.device

    def clone(self) -> Repetition:
        """Return a deep copy whose tensors share no storage with this one."""
        return Repetition(
            self.pulse.clone(),
            self.event_time.clone(),
            self.gradm.clone(),
            self.adc_phase.clone(),
            self.adc_usage.clone(),
            {k: v.clone() for k, v in self.labels.items()},
        )

    def get_contrasts(self) -> list[int]:
        """Return the sorted non-zero ``adc_usage`` values of this repetition."""
        used = torch.unique(self.adc_usage)
        return [int(c) for c in used.tolist() if c != 0]

    def shift_contrasts(self, offset: int) -> None:
        """Add ``offset`` to every non-zero ``adc_usage`` value, in place."""
        mask = self.adc_usage != 0
        self.adc_usage[mask] += int(offset)

    def __repr__(self) -> str:
        adc = int((self.adc_usage != 0).sum())
        return f"Repetition({self.pulse!r}, events={self.event_count}, adc={adc})"


class Sequence(TensorContainer, list[Repetition]):
    """An MRI sequence: a list of :class:`Repetition`.

    Parameters
    ----------
    repetitions
        Repetitions to start the list with.
    normalized_grads
        If True, gradient moments are given for a field of view of 1 and the simulation scales
        them to the phantom size. Sequences imported from Pulseq use physical units (False).

    Attributes
    ----------
    definitions
        Free-form metadata of the source file (Pulseq ``[DEFINITIONS]``, format version, …).

    Notes
    -----
    ``to(device, dtype)``, ``cpu()`` and ``cuda(device=None)`` (:class:`TensorContainer`) return
    a new sequence whose repetitions are moved copies; a shaped-RF waveform that several pulses
    share stays shared. ``select(mask)`` picks repetitions (``[repetitions]`` bool mask or
    indices) into a new sequence that holds the same :class:`Repetition` objects, as a slice
    does.
    """

    def __init__(
        self,
        repetitions: Iterable[Repetition] = (),
        normalized_grads: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(repetitions)
        # MR-zero's documentation spells the parameter both ways; accept either.
        if "normalize_grads" in kwargs:
            normalized_grads = bool(kwargs.pop("normalize_grads"))
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        self.normalized_grads = normalized_grads
        self.definitions: dict[str, Any] = {}

    # -- construction and copies ------------------------------------------------------------

    def new_rep(self, event_count: int) -> Repetition:
        """Append a zeroed repetition with ``event_count`` events (on this sequence's device)."""
        rep = Repetition.zero(event_count, device=self.device)
        self.append(rep)
        return rep

    def _with_reps(self, reps: Iterable[Repetition]) -> Sequence:
        seq = Sequence(reps, normalized_grads=self.normalized_grads)
        seq.definitions = deepcopy(self.definitions)
        return seq

    def clone(self) -> Sequence:
        """Return a deep copy whose tensors share no storage with this one."""
        reps = [rep.clone() for rep in self]
        _share_waveforms(self, reps)
        return self._with_reps(reps)

    @property
    def device(self) -> torch.device:
        """The device of the repetition data (CPU for an empty sequence)."""
        return self[0].device if len(self) > 0 else torch.device("cpu")

    # -- plain-data state (no pickled objects) ------------------------------------------------

    STATE_FORMAT = "mr0core.Sequence"
    """The ``format`` entry of :meth:`to_state`."""

    STATE_VERSION = 1
    """The ``version`` entry of :meth:`to_state`."""

    def to_state(self) -> dict[str, Any]:
        """Return the sequence as plain data that ``torch.load(weights_only=True)`` reads.

        The state holds only CPU tensors, ints, floats, bools, strings, lists and dicts, so a
        file of it cannot carry code; :meth:`from_state` rebuilds the sequence. Per-repetition
        tensors are concatenated (``[repetitions]``, ``[events, ...]``, ``[shim channels, 2]``)
        with the counts to split them again, so a long sequence is a few large tensors rather
        than millions of small ones. Autograd history is not kept (tensors are detached).

        Returns
        -------
        dict
            ``{"format", "version", "normalized_grads", "definitions", "usages", "pulse":
            {...}, "events": [repetitions] int64, "event": {...}, "labels": {name: {"present":
            [repetitions] bool, "values": [labelled events]}}}``.

        Raises
        ------
        TypeError
            When :attr:`definitions` holds something other than plain data (the message names
            the key).
        """
        reps = list(self)
        usages = [u.name for u in PulseUsage]
        code = {name: i for i, name in enumerate(usages)}

        def stack(values: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
            if not values:
                return torch.zeros((0, *shape))
            return torch.stack(values).detach().cpu()  # one detach: the sequence's device

        def cat(values: list[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype) -> Any:
            if not values:
                return torch.zeros((0, *shape), dtype=dtype)
            return torch.cat(values).detach().cpu()

        pulses = [rep.pulse for rep in reps]
        names = sorted({name for rep in reps for name in rep.labels})
        labels = {}
        for name in names:
            present = [name in rep.labels for rep in reps]
            values = [rep.labels[name] for rep in reps if name in rep.labels]
            labels[name] = {
                "present": torch.tensor(present, dtype=torch.bool),
                "values": cat(values, (), torch.int64),
            }
        return {
            "format": self.STATE_FORMAT,
            "version": self.STATE_VERSION,
            "normalized_grads": bool(self.normalized_grads),
            "definitions": _plain(self.definitions, "definitions"),
            "usages": usages,
            "pulse": {
                "usage": torch.tensor([code[p.usage.name] for p in pulses], dtype=torch.int64),
                "angle": stack([p.angle for p in pulses], ()),
                "phase": stack([p.phase for p in pulses], ()),
                "pulse_freq": stack([p.pulse_freq for p in pulses], ()),
                "freq_offset": stack([p.freq_offset for p in pulses], ()),
                "duration": stack([p.duration for p in pulses], ()),
                "grad": stack([p.grad for p in pulses], (3,)),
                "shim_channels": torch.tensor(
                    [p.shim_array.shape[0] for p in pulses], dtype=torch.int64
                ),
                "shim": cat([p.shim_array for p in pulses], (2,), torch.float32),
                "selective": torch.tensor([p.selective for p in pulses], dtype=torch.bool),
            },
            "events": torch.tensor([rep.event_count for rep in reps], dtype=torch.int64),
            "event": {
                "time": cat([r.event_time for r in reps], (), torch.float32),
                "gradm": cat([r.gradm for r in reps], (3,), torch.float32),
                "adc_phase": cat([r.adc_phase for r in reps], (), torch.float32),
                "adc_usage": cat([r.adc_usage for r in reps], (), torch.int32),
            },
            "labels": labels,
            **_waveform_state(pulses),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Sequence:
        """Rebuild a sequence from :meth:`to_state`'s plain data (on the CPU).

        Every entry is checked (type, shape, counts) before anything is built.

        Raises
        ------
        ValueError
            For a state of another format or version, a missing entry, or tensors whose shapes
            or counts disagree (the message names the entry).
        """
        if not isinstance(state, dict):
            raise ValueError(f"a Sequence state is a dict, got {type(state).__name__}")
        if state.get("format") != cls.STATE_FORMAT or state.get("version") != cls.STATE_VERSION:
            raise ValueError(
                f"not a Sequence state of version {cls.STATE_VERSION}: format "
                f"{state.get('format')!r}, version {state.get('version')!r}"
            )
        pulse, event = _entry(state, "pulse", dict), _entry(state, "event", dict)
        events = _tensor(state, "events", None, torch.int64)
        n = int(events.shape[0])
        if n and int(events.min()) < 0:
            raise ValueError("Sequence state: events holds a negative count")
        total = int(events.sum()) if n else 0
        usages = _entry(state, "usages", list)
        try:
            kinds = [PulseUsage[str(name)] for name in usages]
        except KeyError as exc:
            raise ValueError(f"Sequence state: unknown pulse usage {exc}") from None
        usage = _tensor(pulse, "usage", (n,), torch.int64)
        if n and (int(usage.min()) < 0 or int(usage.max()) >= len(kinds)):
            raise ValueError("Sequence state: pulse usage codes outside the usages list")
        scalars = {k: _tensor(pulse, k, (n,)) for k in
                   ("angle", "phase", "pulse_freq", "freq_offset", "duration")}  # fmt: skip
        grad = _tensor(pulse, "grad", (n, 3))
        channels = _tensor(pulse, "shim_channels", (n,), torch.int64)
        if n and int(channels.min()) < 1:
            raise ValueError("Sequence state: a pulse with no shim channel")
        shim = _tensor(pulse, "shim", (int(channels.sum()) if n else 0, 2))
        selective = _tensor(pulse, "selective", (n,), torch.bool)
        e_time = _tensor(event, "time", (total,))
        e_gradm = _tensor(event, "gradm", (total, 3))
        e_phase = _tensor(event, "adc_phase", (total,))
        e_usage = _tensor(event, "adc_usage", (total,))
        if e_usage.is_floating_point() or e_usage.is_complex():
            raise ValueError(f"Sequence state: adc_usage must be integer, not {e_usage.dtype}")
        counts = events.tolist()
        labels: list[dict[str, torch.Tensor]] = [{} for _ in range(n)]
        for name, entry in _entry(state, "labels", dict).items():
            if not isinstance(name, str) or not isinstance(entry, dict):
                raise ValueError(f"Sequence state: label {name!r} is not a named dict")
            present = _tensor(entry, "present", (n,), torch.bool)
            own = [c for c, p in zip(counts, present.tolist(), strict=True) if p]
            values = _tensor(entry, "values", (sum(own),))
            parts = iter(torch.split(values, own))
            for i, p in enumerate(present.tolist()):
                if p:
                    labels[i][name] = next(parts)
        shims = torch.split(shim, channels.tolist())
        sel = selective.tolist()
        codes = usage.tolist()
        split = {k: torch.split(v, counts) for k, v in
                 (("t", e_time), ("g", e_gradm), ("p", e_phase), ("u", e_usage))}  # fmt: skip
        views = {k: v.unbind(0) for k, v in (*scalars.items(), ("grad", grad))
                 if k in ("angle", "phase") or bool(v.any())}  # fmt: skip
        lazy = [None] * n  # an all-zero field stays unset: the pulse makes zeros when read
        extra = [(name, views.get(key, lazy)) for name, key in (
            ("_pulse_freq", "pulse_freq"), ("_freq_offset", "freq_offset"),
            ("_duration", "duration"), ("_grad", "grad"))]  # fmt: skip
        reps = []
        for i in range(n):
            p = Pulse._trusted(kinds[codes[i]], views["angle"][i], views["phase"][i],
                               shims[i], bool(sel[i]))  # fmt: skip
            for name, per_rep in extra:
                setattr(p, name, per_rep[i])
            reps.append(Repetition._trusted(p, split["t"][i], split["g"][i], split["p"][i],
                                            split["u"][i], labels[i]))  # fmt: skip
        if "waveforms" in state:
            _waveforms_from_state(_entry(state, "waveforms", dict), reps)
        seq = cls(reps, normalized_grads=bool(_entry(state, "normalized_grads", bool)))
        seq.definitions = deepcopy(_entry(state, "definitions", dict))
        return seq

    # -- k-space -----------------------------------------------------------------------------

    def get_full_kspace(self) -> list[torch.Tensor]:
        """Return the k-space position after every event, per repetition.

        Returns
        -------
        list of torch.Tensor
            One tensor per repetition of shape ``[events, 4]``: kx, ky, kz in 1/m (or in 1/FOV when
            ``normalized_grads``) and the dephasing time τ in s.
        """
        device = self.device
        k_pos = torch.zeros(4, dtype=torch.float32, device=device)
        stored = torch.zeros(4, dtype=torch.float32, device=device)
        result = []
        for rep in self:
            usage = rep.pulse.usage
            if usage is PulseUsage.EXCIT:
                k_pos = stored
            elif usage is PulseUsage.REFOC:
                k_pos = -k_pos
            elif usage is PulseUsage.STORE:
                stored = k_pos
            steps = torch.cat([rep.gradm, rep.event_time[:, None]], dim=1)
            kspace = k_pos + torch.cumsum(steps, dim=0)
            if rep.event_count > 0:
                k_pos = kspace[-1]
            result.append(kspace)
        return result

    def get_kspace(self) -> torch.Tensor:
        """Return the k-space of every ADC sample, shape ``[samples, 4]`` (kx, ky, kz, τ).

        Units as in :meth:`get_full_kspace`; samples of all repetitions are concatenated in time
        order, which is the order of the simulated signal.
        """
        full = self.get_full_kspace()
        parts = [k[rep.adc_usage > 0] for k, rep in zip(full, self, strict=True)]
        if not parts:
            return torch.zeros(0, 4, device=self.device)
        return torch.cat(parts)

    def plot_kspace_trajectory(
        self,
        figsize: tuple[float, float] = (5, 5),
        plotting_dims: str = "xy",
        plot_timeline: bool = True,
    ) -> matplotlib.figure.Figure:
        """Plot :meth:`get_full_kspace` projected on two axes; ADC samples are marked with dots.

        Parameters
        ----------
        figsize
            Figure size in inches.
        plotting_dims
            Two of ``"x"``, ``"y"``, ``"z"``: the horizontal and vertical k-space axis.
        plot_timeline
            Also draw the full path between samples (thin grey line).

        Returns
        -------
        matplotlib.figure.Figure
            The figure (not shown; call ``plt.show()``).
        """
        import matplotlib.pyplot as plt

        axes = {"x": 0, "y": 1, "z": 2}
        if len(plotting_dims) != 2 or any(d not in axes for d in plotting_dims):
            raise ValueError(f"plotting_dims must be two of 'x', 'y', 'z', got {plotting_dims!r}")
        a, b = (axes[d] for d in plotting_dims)
        fig, ax = plt.subplots(figsize=figsize)
        for kspace, rep in zip(self.get_full_kspace(), self, strict=True):
            k = kspace.detach().cpu()
            if plot_timeline:
                ax.plot(k[:, a], k[:, b], color="0.7", linewidth=0.5)
            adc = (rep.adc_usage > 0).cpu()
            ax.plot(k[adc, a], k[adc, b], ".", markersize=2)
        unit = "1/FOV" if self.normalized_grads else "1/m"
        ax.set_xlabel(f"k{plotting_dims[0]} [{unit}]")
        ax.set_ylabel(f"k{plotting_dims[1]} [{unit}]")
        ax.set_title("k-space trajectory")
        ax.set_aspect("equal", adjustable="datalim")
        return fig

    # -- contrasts, labels and duration ------------------------------------------------------

    def get_contrast_mask(self, contrast: int) -> torch.Tensor:
        """Return a bool mask over the ADC samples (shape ``[samples]``) selecting ``contrast``."""
        usages = [rep.adc_usage[rep.adc_usage > 0] for rep in self]
        if not usages:
            return torch.zeros(0, dtype=torch.bool, device=self.device)
        return torch.cat(usages) == contrast

    def get_contrasts(self) -> list[int]:
        """Return the sorted list of contrast ids used by any repetition."""
        return sorted({c for rep in self for c in rep.get_contrasts()})

    def shift_contrasts(self, offset: int) -> None:
        """Add ``offset`` to every contrast id of every repetition, in place."""
        for rep in self:
            rep.shift_contrasts(offset)

    def get_labels(self) -> dict[str, torch.Tensor]:
        """Return the Pulseq labels of every ADC sample.

        Returns
        -------
        dict of str to torch.Tensor
            Label name → values of shape ``[samples]`` (int64), in the order of
            :meth:`get_kspace`. Repetitions that lack a label contribute zeros.
        """
        names = sorted({name for rep in self for name in rep.labels})
        out: dict[str, torch.Tensor] = {}
        for name in names:
            parts = []
            for rep in self:
                mask = rep.adc_usage > 0
                if name in rep.labels:
                    parts.append(rep.labels[name][mask].to(torch.int64))
                else:
                    parts.append(
                        torch.zeros(int(mask.sum()), dtype=torch.int64, device=mask.device)
                    )
            out[name] = torch.cat(parts)
        return out

    def get_duration(self) -> float:
        """Return the total duration of the sequence in s (summed in float64)."""
        return float(sum(rep.event_time.detach().double().sum() for rep in self))

    # -- import ------------------------------------------------------------------------------

    @classmethod
    def import_file(
        cls,
        file_name: str | PathLike[str],
        exact_trajectories: bool = True,
        print_stats: bool = False,
        default_shim: torch.Tensor = _DEFAULT_SHIM,
        ref_voltage: float = 300.0,
        resolution: int | None = None,
        backend: str = "pulseq_rs",
        larmor_hz: float | None = None,
        fov_scale: float | None = None,
        fov_pos: tuple[float, float, float] | None = None,
        fov_rot: tuple[float, float, float, float] | None = None,
        soft_delays: dict[str, float] | None = None,
        output_dir: str | None = None,
        *,
        limits: SeqLimits | None = None,
    ) -> Sequence:
        """Read a Pulseq ``.seq`` file (format 1.2–1.5) into a sequence.

        Parameters
        ----------
        file_name
            Path to the ``.seq`` file.
        exact_trajectories
            Also split events at every gradient corner, so each event's k-space path is one
            segment of the true trajectory (better diffusion and T2′ accuracy, more events).
        print_stats
            Print a short summary of the imported sequence.
        default_shim
            ``[channels, 2]`` shim for pulses whose block carries no RF shim extension
            (default ``[[1, 0]]``, one channel).
        ref_voltage, resolution
            For Siemens ``.dsv`` input only (reference voltage in V, samples per ADC), which
            mr0core does not read: only the defaults (300 V, None) are accepted.
        backend
            MR-zero's choice of Pulseq parser, ``"pulseq_rs"`` or ``"pydisseqt"``. Both read the
            same files; mr0core always uses its own reader (:mod:`mr0core.pulseq`), so this only
            checks the name.
        larmor_hz, fov_scale, fov_pos, fov_rot, soft_delays, output_dir
            Options of MR-zero 1.2's importer that mr0core does not implement: only ``None`` is
            accepted (anything else raises :class:`NotImplementedError`).
        limits
            Bounds on what the file may make the reader and the conversion allocate
            (:class:`mr0core.pulseq.SeqLimits`); default ``mr0core.pulseq.DEFAULT_SEQ_LIMITS``.

        Raises
        ------
        mr0core.pulseq.SeqFormatError
            The file is malformed; the message names the file, the line and the problem.
        mr0core.pulseq.SeqLimitError
            The file needs more than ``limits`` allow (names the limit, its value and the line).
        NotImplementedError
            A ``.dsv`` option or one of the unimplemented MR-zero 1.2 options was set.
        """
        from mr0core.pulseq import read_seq  # (mr0core.pulseq imports this module)

        if float(ref_voltage) != 300.0 or resolution is not None:
            raise NotImplementedError(
                "ref_voltage and resolution apply to Siemens .dsv input, which mr0core does not "
                "read; leave them at their defaults (300.0, None)"
            )
        if backend not in ("pulseq_rs", "pydisseqt"):
            raise ValueError(f"backend must be 'pulseq_rs' or 'pydisseqt', got {backend!r}")
        unsupported = {
            "larmor_hz": larmor_hz, "fov_scale": fov_scale, "fov_pos": fov_pos,
            "fov_rot": fov_rot, "soft_delays": soft_delays, "output_dir": output_dir,
        }  # fmt: skip
        given = [name for name, value in unsupported.items() if value is not None]
        if given:
            raise NotImplementedError(
                f"Sequence.import_file: {', '.join(given)} (MR-zero 1.2 importer options) are not "
                "implemented by mr0core's Pulseq reader; leave them None"
            )
        parsed, seq = _parse_and_convert(
            lambda: read_seq(file_name, limits=limits), exact_trajectories, default_shim
        )
        if print_stats:
            print(
                f"{file_name}: Pulseq {parsed.version_str}, {len(parsed.blocks)} blocks, "
                f"{len(seq)} repetitions, {int(seq.get_kspace().shape[0])} ADC samples, "
                f"{seq.get_duration():.6g} s"
            )
        return seq

    @classmethod
    def from_text(
        cls,
        text: str,
        name: str = "<text>",
        exact_trajectories: bool = True,
        default_shim: torch.Tensor = _DEFAULT_SHIM,
        *,
        limits: SeqLimits | None = None,
    ) -> Sequence:
        """Read the content of a Pulseq ``.seq`` file (format 1.2–1.5) into a sequence.

        The same as :meth:`import_file` on a file holding ``text``, without a file.

        Parameters
        ----------
        text
            The ``.seq`` file's content.
        name
            What error messages call the text (e.g. the file name it came as).
        exact_trajectories, default_shim, limits
            As for :meth:`import_file`.

        Raises
        ------
        mr0core.pulseq.SeqFormatError
            The text is malformed; the message names ``name``, the line and the problem.
        mr0core.pulseq.SeqLimitError
            The text needs more than ``limits`` allow.
        """
        from mr0core.pulseq import read_seq_text  # (mr0core.pulseq imports this module)

        _, seq = _parse_and_convert(
            lambda: read_seq_text(text, name, limits=limits), exact_trajectories, default_shim
        )
        return seq

    @classmethod
    def from_seq_file(cls, file_name: str | PathLike[str], **kwargs: Any) -> Sequence:
        """Alias of :meth:`import_file` (older MR-zero scripts call it by this name)."""
        return cls.import_file(file_name, **kwargs)

    @classmethod
    def from_pypulseq(
        cls, seq: Any, exact_trajectories: bool = True, *, limits: SeqLimits | None = None
    ) -> Sequence:
        """Convert a ``pypulseq.Sequence`` object, through a temporary file outside the cwd.

        ``limits`` as for :meth:`import_file`.
        """
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory(prefix="mr0_pypulseq_") as tmp:
            path = Path(tmp) / "sequence.seq"
            seq.write(str(path))
            return cls.import_file(path, exact_trajectories=exact_trajectories, limits=limits)


def as_sequence(seq: Sequence | str | PathLike[str] | Any) -> Sequence:
    """Return ``seq`` as a :class:`Sequence`: the one conversion of every "sequence" argument.

    Parameters
    ----------
    seq
        A :class:`Sequence` (returned as it is), a ``.seq`` path (:meth:`Sequence.import_file`)
        or a ``pypulseq.Sequence`` (:meth:`Sequence.from_pypulseq`).

    Raises
    ------
    TypeError
        For anything else (the type is named).
    """
    if isinstance(seq, Sequence):
        return seq
    if isinstance(seq, str | os.PathLike):
        return Sequence.import_file(seq)
    if hasattr(seq, "write") and hasattr(seq, "block_events"):
        return Sequence.from_pypulseq(seq)
    raise TypeError(
        "expected an mr0core Sequence, a pypulseq Sequence or a .seq path, "
        f"got {type(seq).__name__}"
    )


def _parse_and_convert(
    parse: Callable[[], SeqFile], exact_trajectories: bool, default_shim: torch.Tensor
) -> tuple[SeqFile, Sequence]:
    """Run ``parse`` and convert its result; return both (the Pulseq import of every source)."""
    from mr0core.pulseq import seq_to_sequence  # (mr0core.pulseq imports this module)

    # The import creates thousands of small tensors at once; a cyclic GC pass in the middle
    # of that costs more than the whole conversion, and nothing here makes reference cycles.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        parsed = parse()
        seq = seq_to_sequence(
            parsed, exact_trajectories=exact_trajectories, default_shim=default_shim
        )
    finally:
        if gc_was_enabled:
            gc.enable()
    return parsed, seq


def _waveform_state(pulses: list[Pulse]) -> dict[str, Any]:
    """Return the ``waveforms`` entry of :meth:`Sequence.to_state` (none without waveforms)."""
    index: dict[int, int] = {}
    distinct: list[RfWaveform] = []
    of_pulse = []
    for p in pulses:
        w = p.waveform
        if w is None:
            of_pulse.append(-1)
            continue
        if id(w) not in index:
            index[id(w)] = len(distinct)
            distinct.append(w)
        of_pulse.append(index[id(w)])
    if not distinct:
        return {}
    return {
        "waveforms": {
            "of_pulse": torch.tensor(of_pulse, dtype=torch.int64),
            "steps": torch.tensor([len(w.dt) for w in distinct], dtype=torch.int64),
            "b1": torch.cat([w.b1.detach().cpu().to(torch.complex64) for w in distinct]),
            "dt": torch.cat([w.dt.detach().cpu().float() for w in distinct]),
            "grad": torch.cat([w.grad.detach().cpu().float() for w in distinct]),
            "center": torch.tensor([w.center for w in distinct], dtype=torch.float64),
            "angle": torch.tensor([w.angle for w in distinct], dtype=torch.float64),
            "phase": torch.tensor([w.phase for w in distinct], dtype=torch.float64),
        }
    }


def _waveforms_from_state(state: dict[str, Any], reps: list[Repetition]) -> None:
    """Attach the waveforms of a ``waveforms`` state entry to the pulses of ``reps``."""
    of_pulse = _tensor(state, "of_pulse", (len(reps),), torch.int64)
    steps = _tensor(state, "steps", None, torch.int64)
    n_w = int(steps.shape[0])
    if n_w and int(steps.min()) < 1:
        raise ValueError("Sequence state: a waveform with no step")
    total = int(steps.sum()) if n_w else 0
    b1 = _tensor(state, "b1", (total,), torch.complex64)
    dt = _tensor(state, "dt", (total,), torch.float32)
    grad = _tensor(state, "grad", (total, 3), torch.float32)
    center, angle, phase = (_tensor(state, k, (n_w,), torch.float64)
                            for k in ("center", "angle", "phase"))  # fmt: skip
    if len(reps) and (int(of_pulse.min()) < -1 or int(of_pulse.max()) >= n_w):
        raise ValueError("Sequence state: waveform index of a pulse outside the waveforms")
    counts = steps.tolist()
    parts = zip(*(torch.split(x, counts) for x in (b1, dt, grad)), strict=True)
    made = [
        RfWaveform(b, d, g, float(c), float(a), float(ph))
        for (b, d, g), c, a, ph in zip(parts, center.tolist(), angle.tolist(), phase.tolist(),
                                       strict=True)
    ]  # fmt: skip
    for rep, i in zip(reps, of_pulse.tolist(), strict=True):
        if i >= 0:
            rep.pulse.waveform = made[i]


def chain(*sequences: Sequence, oneshot: bool = False) -> Sequence:
    """Concatenate sequences into one (multi-contrast) sequence.

    Parameters
    ----------
    *sequences
        The sequences, in time order. They are cloned, the inputs are not changed.
    oneshot
        If True the repetitions are simply concatenated. If False, the contrast ids of each
        sequence are shifted past those of the sequences before it, so every part keeps its own ids.

    Returns
    -------
    Sequence
        The combined sequence.
    """
    if not sequences:
        return Sequence()
    normalized = {s.normalized_grads for s in sequences}
    if len(normalized) > 1:
        raise ValueError("cannot chain sequences with and without normalized_grads")
    out = Sequence(normalized_grads=sequences[0].normalized_grads)
    out.definitions = deepcopy(sequences[0].definitions)
    offset = 0
    for seq in sequences:
        part = seq.clone()
        if not oneshot:
            part.shift_contrasts(offset)
            offset = max([offset, *part.get_contrasts()])
        out.extend(part)
    return out

"""Export of an MR-zero sequence to Pulseq: MR-zero's ``pulseq_write_cartesian``.

MR-zero sequences have instantaneous pulses and events of any duration and moment, which a
scanner cannot play. The exporter approximates them with what pypulseq can build:

- each non-zero pulse becomes a block pulse (or, when ``selective``, a sinc pulse with its slice
  gradient and rephaser), played before the repetition's events;
- each run of consecutive ADC events becomes one readout: a trapezoid per axis whose flat part
  carries the run's (constant) moment per sample, and an ADC whose samples fall where the events
  end (MR-zero's sampling convention);
- every other event becomes a trapezoid of its moment, lasting its duration where the system
  allows (else as short as possible), or a delay when it has no moment. The moments of these
  trapezoids absorb the ramps of the readouts, so the k-space position at every ADC sample, and
  the total moment of each repetition, are those of the MR-zero sequence.

Timing is only approximate (pulses take time, short events stretch), and the trapezoids assume a
Cartesian readout (one constant gradient per ADC run). As MR-zero says of its own exporter: there
is no guarantee that the result is what you expect; write new sequences with pypulseq.
"""

from __future__ import annotations

import math
from os import PathLike, fspath
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mr0core.sequence import Sequence

__all__ = ["pulseq_write_cartesian"]

_AXES = ("x", "y", "z")
_RF_DURATION_S = 1e-3
_SLICE_TIME_BW = 4.0
_AREA_EPS = 1e-9  # 1/m: moments below this are no gradient


def pulseq_write_cartesian(
    seq_param: Sequence,
    path: str | PathLike[str],
    FOV: float,
    plot_seq: bool = False,
    num_slices: int = 1,
    write_data: int = 1,
) -> Any:
    """Write an MR-zero sequence as a Pulseq ``.seq`` file (Cartesian readouts).

    Parameters
    ----------
    seq_param
        The :class:`mr0core.Sequence` to export.
    path
        The ``.seq`` file to write.
    FOV
        Field of view in m: normalised gradient moments (``normalized_grads``) are divided by it
        to get 1/m, and it sets the slice thickness ``FOV / num_slices`` of selective pulses.
    plot_seq
        Plot the generated sequence with pypulseq.
    num_slices
        Number of slices across the FOV, for the slice thickness.
    write_data
        Ignored, as in MR-zero (it documents the parameter as ignored).

    Returns
    -------
    pypulseq.Sequence
        The written sequence.
    """
    import pypulseq as pp

    del write_data  # documented by MR-zero as ignored
    if not FOV > 0 or not math.isfinite(FOV):
        raise ValueError(f"FOV must be a positive length in m, got {FOV}")
    if int(num_slices) < 1:
        raise ValueError(f"num_slices must be >= 1, got {num_slices}")
    system = pp.Opts()
    out = pp.Sequence(system)
    scale = 1.0 / float(FOV) if seq_param.normalized_grads else 1.0
    thickness = float(FOV) / int(num_slices)
    for rep in seq_param:
        _add_pulse(out, rep.pulse, thickness, system)
        _add_events(out, rep, scale, system)
    out.set_definition("FOV", [float(FOV), float(FOV), thickness])
    out.write(fspath(path))
    if plot_seq:
        out.plot()
    return out


def _add_pulse(out: Any, pulse: Any, thickness: float, system: Any) -> None:
    import pypulseq as pp

    angle = float(pulse.angle)
    if angle == 0.0:
        return
    use = {"excitation": "excitation", "refocussing": "refocusing"}.get(
        pulse.usage.value, "undefined"
    )
    phase = float(pulse.phase)
    if pulse.selective:
        rf, gz, gzr = pp.make_sinc_pulse(
            flip_angle=angle,
            duration=_RF_DURATION_S,
            slice_thickness=thickness,
            time_bw_product=_SLICE_TIME_BW,
            apodization=0.5,
            phase_offset=phase,
            system=system,
            return_gz=True,
            use=use,
        )
        out.add_block(rf, gz)
        out.add_block(gzr)
    else:
        rf = pp.make_block_pulse(
            flip_angle=angle, duration=_RF_DURATION_S, phase_offset=phase, system=system, use=use
        )
        out.add_block(rf)


def _segments(adc: np.ndarray) -> list[tuple[int, int, bool]]:
    """Split the events into ``(start, stop, is_adc_run)`` segments (non-ADC events singly)."""
    segs: list[tuple[int, int, bool]] = []
    i, n = 0, len(adc)
    while i < n:
        if adc[i]:
            j = i
            while j < n and adc[j]:
                j += 1
            segs.append((i, j, True))
            i = j
        else:
            segs.append((i, i + 1, False))
            i += 1
    return segs


def _ceil_raster(t: float, raster: float) -> float:
    return math.ceil(round(t / raster, 6)) * raster


def _readout(
    dt: np.ndarray, g: np.ndarray, phase: float, system: Any
) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Return the readout events, the moment before its first sample and after its last one."""
    import pypulseq as pp

    n = len(dt)
    dwell = round(float(dt.mean()) / system.adc_raster_time) * system.adc_raster_time
    amp = g.mean(0) / dwell  # Hz/m, constant over the run
    rise = _ceil_raster(
        max(float(np.abs(amp).max()) / system.max_slew, system.grad_raster_time),
        system.grad_raster_time,
    )
    flat = _ceil_raster(n * dwell, system.grad_raster_time)
    events: list[Any] = []
    for axis, a in zip(_AXES, amp, strict=True):
        if abs(a * flat) > _AREA_EPS:
            events.append(
                pp.make_trapezoid(
                    channel=axis, amplitude=float(a), flat_time=flat, rise_time=rise, system=system
                )
            )
    # sample i at flat start + (i + 1) dwell: where MR-zero's event i ends
    # MR-zero's adc_phase is π/2 minus the receiver phase (mr0core.pulseq.convert)
    delay = round((rise + 0.5 * dwell) / system.rf_raster_time) * system.rf_raster_time
    events.append(
        pp.make_adc(
            num_samples=n, dwell=dwell, delay=delay, phase_offset=math.pi / 2 - phase, system=system
        )
    )
    end = max(2 * rise + flat, rise + (n + 0.5) * dwell)
    events.append(pp.make_delay(_ceil_raster(end, system.block_duration_raster)))
    before = amp * rise / 2
    after = amp * (flat - n * dwell) + amp * rise / 2
    return events, before, after


def _gradient_block(out: Any, area: np.ndarray, duration: float, system: Any) -> None:
    """Play ``area`` [3] 1/m, in ``duration`` s if possible (else as short as the system allows)."""
    import pypulseq as pp

    grads = []
    for axis, a in zip(_AXES, area, strict=True):
        if abs(a) <= _AREA_EPS:
            continue
        try:
            if duration <= 0:
                raise ValueError("no duration given")
            grads.append(
                pp.make_trapezoid(channel=axis, area=float(a), duration=duration, system=system)
            )
        except (AssertionError, ValueError):  # too short for this moment: stretch it
            grads.append(pp.make_trapezoid(channel=axis, area=float(a), system=system))
    if grads:
        out.add_block(*grads)
    elif duration > 0:
        out.add_block(pp.make_delay(duration))


def _add_events(out: Any, rep: Any, scale: float, system: Any) -> None:
    dt = rep.event_time.detach().cpu().double().numpy()
    g = rep.gradm.detach().cpu().double().numpy() * scale
    adc = rep.adc_usage.detach().cpu().numpy() > 0
    phase = rep.adc_phase.detach().cpu().double().numpy()
    desired = np.zeros(3)  # moment the MR-zero sequence has reached (1/m)
    actual = np.zeros(3)  # moment the exported blocks have played
    segs = _segments(adc)
    for index, (start, stop, is_adc) in enumerate(segs):
        if is_adc:
            events, before, after = _readout(
                dt[start:stop], g[start:stop], float(phase[start]), system
            )
            if np.abs(desired - actual - before).max() > _AREA_EPS:  # no event before to absorb
                _gradient_block(out, desired - actual - before, 0.0, system)
            out.add_block(*events)
            desired = desired + g[start:stop].sum(0)
            actual = desired + after
            continue
        desired = desired + g[start]
        target = desired
        follows_adc = index + 1 < len(segs) and segs[index + 1][2]
        if follows_adc:
            nxt = segs[index + 1]
            _, before, _ = _readout(dt[nxt[0] : nxt[1]], g[nxt[0] : nxt[1]], 0.0, system)
            target = desired - before
        duration = _ceil_raster(float(dt[start]), system.block_duration_raster)
        _gradient_block(out, target - actual, duration, system)
        actual = target
    if np.abs(desired - actual).max() > _AREA_EPS:
        _gradient_block(out, desired - actual, 0.0, system)

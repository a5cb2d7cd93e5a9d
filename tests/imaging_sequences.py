"""Small hand-built 2-D imaging sequences (mr0core Sequence objects) shared by the tests."""

from __future__ import annotations

import math

import mr0core as mr0

N = 16


def flash(n: int = N, flip_deg: float = 15.0) -> mr0.Sequence:
    """Cartesian RF-spoiled FLASH, ``n`` lines of ``n`` samples, read along x, spoiler after."""
    seq = mr0.Sequence()
    for i in range(n):
        rep = seq.new_rep(n + 3)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = math.radians(flip_deg)
        rep.pulse.phase = (0.5 * math.radians(117) * (i * i + i + 2)) % (2 * math.pi)
        rep.event_time[:] = 1e-4
        rep.event_time[0] = 2e-3
        rep.event_time[1] = 1e-3
        rep.event_time[-1] = 5e-3
        rep.gradm[1, 0] = -n / 2 - 1
        rep.gradm[1, 1] = i - n // 2
        rep.gradm[2:-1, 0] = 1
        rep.adc_usage[2:-1] = 1
        rep.adc_phase[2:-1] = math.pi / 2 - rep.pulse.phase
        rep.gradm[-1, 0] = 1.5 * n
        rep.gradm[-1, 1] = -(i - n // 2)
    return seq


def tse(n: int = N, refocus_deg: float = 160.0) -> mr0.Sequence:
    """Single-shot TSE: 90° then ``n`` refocusing pulses, crushers of ``n`` cycles per FOV on both
    sides of each readout (so imperfect-refocusing paths are separated), CPMG phases."""
    crusher = float(n)
    seq = mr0.Sequence()
    rep = seq.new_rep(1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.pulse.phase = math.pi / 2
    rep.event_time[:] = 1.8e-3
    rep.gradm[0, 0] = n / 2 + crusher
    for i in range(n):
        ky = i - n // 2
        rep = seq.new_rep(n + 2)
        rep.pulse.usage = mr0.PulseUsage.REFOC
        rep.pulse.angle = math.radians(refocus_deg)
        rep.event_time[:] = 1e-4
        rep.event_time[0] = 1e-3
        rep.event_time[-1] = 1e-3
        rep.gradm[0, 0] = crusher
        rep.gradm[0, 1] = ky
        rep.gradm[1:-1, 0] = 1
        rep.adc_usage[1:-1] = 1
        rep.gradm[-1, 0] = crusher
        rep.gradm[-1, 1] = -ky
    return seq

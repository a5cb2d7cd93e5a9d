"""Pulseq sequences the tests build: PyPulseq FLASH variants and hand-written ``.seq`` text."""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp

SYSTEM = pp.Opts(
    max_grad=28,
    grad_unit="mT/m",
    max_slew=150,
    slew_unit="T/m/s",
    rf_ringdown_time=20e-6,
    rf_dead_time=100e-6,
    adc_dead_time=10e-6,
)


def _ceil_raster(t: float, raster: float = 1e-5) -> float:
    return math.ceil(round(t / raster, 6)) * raster


def build_flash(
    te: float = 5e-3,
    tr: float = 12e-3,
    flip_deg: float = 15.0,
    n: int = 16,
    fov: float = 0.2,
    slice_thickness: float = 4e-3,
    definitions: dict | None = None,
) -> pp.Sequence:
    """Spoiled 2-D FLASH (pypulseq write_gre layout) with the given TE, TR and flip angle."""
    seq = pp.Sequence(SYSTEM)
    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=math.radians(flip_deg),
        duration=2e-3,
        slice_thickness=slice_thickness,
        apodization=0.5,
        time_bw_product=4,
        system=SYSTEM,
        return_gz=True,
        use="excitation",
        delay=SYSTEM.rf_dead_time,
    )
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=2.56e-3, system=SYSTEM)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=SYSTEM)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=SYSTEM)
    phase_areas = (np.arange(n) - n // 2) * dk
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * dk, system=SYSTEM)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / slice_thickness, system=SYSTEM)
    # TE: RF centre to readout centre; TR: RF centre to RF centre.
    rf_centre_to_end = pp.calc_duration(gz) - (pp.calc_rf_center(rf)[0] + rf.delay)
    delay_te = _ceil_raster(
        te - rf_centre_to_end - pp.calc_duration(gx_pre) - pp.calc_duration(gx) / 2
    )
    delay_tr = _ceil_raster(
        tr - pp.calc_duration(gz) - pp.calc_duration(gx_pre) - pp.calc_duration(gx) - delay_te
    )
    delay_tr -= pp.calc_duration(gx_spoil, gz_spoil)
    assert delay_te >= 0
    assert delay_tr >= 0
    rf_phase, rf_inc = 0.0, 0.0
    for area in phase_areas:
        rf.phase_offset = math.radians(rf_phase)
        adc.phase_offset = math.radians(rf_phase)
        rf_inc = (rf_inc + 117) % 360
        rf_phase = (rf_phase + rf_inc) % 360
        seq.add_block(rf, gz)
        gy_pre = pp.make_trapezoid(channel="y", area=area, duration=1e-3, system=SYSTEM)
        seq.add_block(gx_pre, gy_pre, gz_reph)
        seq.add_block(pp.make_delay(delay_te))
        seq.add_block(gx, adc)
        gy_post = pp.make_trapezoid(channel="y", area=-area, duration=1e-3, system=SYSTEM)
        seq.add_block(gx_spoil, gy_post, gz_spoil)
        seq.add_block(pp.make_delay(delay_tr))
    seq.set_definition("FOV", [fov, fov, slice_thickness])
    seq.set_definition("Name", "flash")
    for key, value in (definitions or {}).items():
        seq.set_definition(key, value)
    return seq


def make_flash(n=32, fov=0.22, tr=10e-3, flip_deg=10.0, thickness=5e-3, dummies=0):
    system = pp.Opts(
        max_grad=28, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s",
        rf_ringdown_time=20e-6, rf_dead_time=100e-6, adc_dead_time=10e-6,
    )  # fmt: skip
    seq = pp.Sequence(system)
    rf, gz, _ = pp.make_sinc_pulse(
        flip_angle=math.radians(flip_deg), duration=1e-3, slice_thickness=thickness,
        apodization=0.5, time_bw_product=4, system=system, return_gz=True,
        delay=system.rf_dead_time,
    )  # fmt: skip
    dk = 1 / fov
    gx = pp.make_trapezoid(channel="x", flat_area=n * dk, flat_time=n * 20e-6, system=system)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=system)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=system)
    gz_reph = pp.make_trapezoid(channel="z", area=-gz.area / 2, duration=1e-3, system=system)
    gx_spoil = pp.make_trapezoid(channel="x", area=2 * n * dk, system=system)
    gz_spoil = pp.make_trapezoid(channel="z", area=4 / thickness, system=system)
    rf_phase = rf_inc = 0.0
    for i in range(-dummies, n):
        rf.phase_offset = adc.phase_offset = math.radians(rf_phase)
        rf_inc = (rf_inc + 117) % 360
        rf_phase = (rf_phase + rf_inc) % 360
        seq.add_block(rf, gz)
        area = (max(i, 0) - n // 2) * dk
        seq.add_block(
            gx_pre, pp.make_trapezoid("y", area=area, duration=1e-3, system=system), gz_reph
        )
        seq.add_block(gx, adc) if i >= 0 else seq.add_block(gx)
        seq.add_block(
            gx_spoil, pp.make_trapezoid("y", area=-area, duration=1e-3, system=system), gz_spoil
        )
        rest = (i + dummies + 1) * tr - seq.duration()[0]
        if rest > 1e-5:
            seq.add_block(pp.make_delay(round(rest / 1e-5) * 1e-5))
    seq.set_definition("FOV", [fov, fov, thickness])
    seq.set_definition("Name", "flash")
    return seq


HEAD = """[VERSION]
major 1
minor 5
revision 0

[DEFINITIONS]
AdcRasterTime 1e-07
BlockDurationRaster 1e-05
GradientRasterTime 1e-05
RadiofrequencyRasterTime 1e-06
"""


def adc_blocks(samples: int, blocks: int = 1) -> str:
    """``blocks`` blocks, each an ADC of ``samples`` samples at 100 ns dwell."""
    dur = samples // 100 + 10  # block duration raster 10 µs = 100 dwells
    rows = "\n".join(f"{b + 1} {dur} 0 0 0 0 1 0" for b in range(blocks))
    return f"{HEAD}\n[BLOCKS]\n{rows}\n\n[ADC]\n1 {samples} 100 0 0 0 0 0 0\n"

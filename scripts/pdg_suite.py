"""PyPulseq sequence builders for the PDG accuracy/speed benchmark suite.

Every case is a plain function ``build_<case>(n)`` that returns a small, timing-checked
``pypulseq.Sequence`` for an in-plane matrix of ``n`` × ``n`` (``n`` even, e.g. 48 or 96; a
single-voxel run still passes a matrix size). :data:`CASES` maps the case names to the builders,
:func:`write_case` writes one case as a ``.seq`` file and :func:`adc_samples` gives the number of
ADC samples each case promises (the count ``mr0.Sequence.import_file(...).get_kspace()`` has).

Common settings (all cases):

* system: 40 mT/m, 150 T/m/s per axis, RF dead time 100 µs, RF ring-down 20 µs, ADC dead time
  10 µs, the default 10 µs gradient and block raster (:func:`make_system`);
* geometry: 2-D, field of view 0.22 m (:data:`FOV`), slice thickness 8 mm
  (:data:`SLICE_THICKNESS`); the k-space step is Δk = 1/FOV (1/m);
* Cartesian readouts take ``n`` samples on the flat top of a trapezoid with dwell 20 µs (10 µs for
  EPI), placed half a dwell early so that sample ``i`` sits at kx = (i − n/2)·Δk and sample
  ``n/2`` at the centre of the gradient (the echo); line ``j`` has ky = (j − n/2)·Δk;
* slice-selective excitation and refocusing use Hanning-apodised sinc pulses (time-bandwidth 4)
  with their slice-select and rephasing gradients on z; preparation pulses (inversion,
  saturation) are non-selective block pulses;
* every RF pulse carries its Pulseq 1.5 ``use`` (excitation, refocusing, inversion, saturation),
  so importers need not guess it from the flip angle;
* readout blocks carry the labels ``LIN`` (line), and where it applies ``ECO`` (echo), ``SET``
  (diffusion contrast) and ``SEG`` (EPI shot).

Run as a script to write all cases: ``python scripts/pdg_suite.py OUTDIR --n 48``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pypulseq as pp

__all__ = [
    "CASES",
    "DELTA_K",
    "DWI_CONTRASTS",
    "FOV",
    "GOLDEN_ANGLE_DEG",
    "N_ECHOES",
    "SLICE_THICKNESS",
    "adc_samples",
    "case_names",
    "dwi_b_value",
    "make_system",
    "tse_refocusing_angles",
    "write_case",
]

FOV = 0.22
"""In-plane field of view, m."""
SLICE_THICKNESS = 8e-3
"""Slice thickness, m."""
DELTA_K = 1.0 / FOV
"""k-space step Δk = 1/FOV, 1/m."""
GRAD_RASTER = 10e-6
"""Gradient (and block duration) raster, s."""
DWELL = 20e-6
"""ADC dwell of the Cartesian, radial and multi-echo readouts, s."""
EPI_DWELL = 10e-6
"""ADC dwell of the EPI readouts, s."""
N_ECHOES = 8
"""Echoes per excitation of the multi-echo GRE cases."""
RF_SPOIL_INC_DEG = 117.0
"""Quadratic RF-spoiling phase increment, deg."""
GOLDEN_ANGLE_DEG = 180.0 * (math.sqrt(5.0) - 1.0) / 2.0
"""Golden angle of the radial case, 111.246 deg (180° divided by the golden ratio)."""
DWI_CONTRASTS: tuple[tuple[float, str | None], ...] = (
    (0.0, None),
    (500.0, "x"),
    (500.0, "y"),
    (500.0, "z"),
    (1000.0, "x"),
    (1000.0, "y"),
    (1000.0, "z"),
)
"""The diffusion contrasts of ``dwi_se`` in acquisition order: (b in s/mm², gradient axis)."""

_EPS = 1e-9  # s; timing slack for float noise


# -- shared pieces ---------------------------------------------------------------------------


def make_system() -> pp.Opts:
    """Return the scanner limits shared by all cases.

    Returns
    -------
    pypulseq.Opts
        40 mT/m and 150 T/m/s per axis, RF dead time 100 µs, RF ring-down 20 µs, ADC dead time
        10 µs, default rasters (gradient and block 10 µs, RF 1 µs, ADC 100 ns), B0 1.5 T.
    """
    return pp.Opts(
        max_grad=40,
        grad_unit="mT/m",
        max_slew=150,
        slew_unit="T/m/s",
        rf_dead_time=100e-6,
        rf_ringdown_time=20e-6,
        adc_dead_time=10e-6,
    )


def _ceil_raster(t: float, raster: float = GRAD_RASTER) -> float:
    """Round the time ``t`` (s) up to ``raster`` (s), ignoring float noise."""
    return round(math.ceil(t / raster - 1e-6) * raster, 12)


def _round_raster(t: float, raster: float = GRAD_RASTER) -> float:
    """Round the time ``t`` (s) to the nearest multiple of ``raster`` (s)."""
    return round(round(t / raster) * raster, 12)


def _add(seq: pp.Sequence, *events: SimpleNamespace | None) -> None:
    """Add one block made of the given events, skipping ``None``."""
    seq.add_block(*[e for e in events if e is not None])


def _wait(seq: pp.Sequence, duration: float, what: str) -> None:
    """Add a delay block of ``duration`` s (nothing when it is zero).

    Raises
    ------
    ValueError
        ``duration`` is negative: the requested timing (named by ``what``) is too short.
    """
    if duration < -_EPS:
        raise ValueError(f"{what} is {-duration * 1e3:.3f} ms too short for this sequence")
    duration = _round_raster(max(duration, 0.0))
    if duration > 0:
        seq.add_block(pp.make_delay(duration))


def _check_n(n: int, multiple: int = 2) -> int:
    """Validate the matrix size ``n`` (an int ≥ 4 and a multiple of ``multiple``)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"n must be an integer >= 4, got {n!r}")
    if n % multiple:
        raise ValueError(f"n must be a multiple of {multiple} for this case, got {n}")
    return int(n)


def _finish(seq: pp.Sequence, name: str) -> pp.Sequence:
    """Set the definitions and check the timing of a finished sequence.

    Raises
    ------
    RuntimeError
        ``seq.check_timing()`` reports errors (the first few are in the message).
    """
    seq.set_definition("FOV", [FOV, FOV, SLICE_THICKNESS])
    seq.set_definition("Name", name)
    ok, report = seq.check_timing()
    if not ok:
        details = "; ".join(str(e) for e in report[:5])
        raise RuntimeError(f"{name}: check_timing found {len(report)} errors: {details}")
    return seq


def _rf_centre(rf: SimpleNamespace) -> float:
    """Time of the centre of ``rf`` after the start of its block, s."""
    return rf.delay + pp.calc_rf_center(rf)[0]


def _sinc(
    flip_deg: float,
    system: pp.Opts,
    *,
    duration: float = 1e-3,
    use: str = "excitation",
    phase: float = 0.0,
) -> tuple[SimpleNamespace, SimpleNamespace, SimpleNamespace]:
    """Return a slice-selective sinc pulse, its slice gradient and the slice rephaser.

    ``flip_deg`` in deg, ``duration`` in s, ``phase`` in rad; time-bandwidth product 4,
    Hanning apodisation, slice thickness :data:`SLICE_THICKNESS`.
    """
    return pp.make_sinc_pulse(
        flip_angle=math.radians(flip_deg),
        duration=duration,
        slice_thickness=SLICE_THICKNESS,
        apodization=0.5,
        time_bw_product=4.0,
        phase_offset=phase,
        delay=system.rf_dead_time,
        system=system,
        return_gz=True,
        use=use,
    )


def _block_pulse(
    flip_deg: float, system: pp.Opts, *, duration: float = 1e-3, use: str
) -> SimpleNamespace:
    """Return a non-selective block pulse of ``flip_deg`` deg lasting ``duration`` s."""
    return pp.make_block_pulse(
        flip_angle=math.radians(flip_deg),
        duration=duration,
        delay=system.rf_dead_time,
        system=system,
        use=use,
    )


def _readout(
    n: int, system: pp.Opts, dwell: float = DWELL, sign: float = 1.0
) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Return a readout trapezoid on x and its ADC of ``n`` samples, dwell ``dwell`` s.

    The flat top lasts ``n·dwell`` with amplitude Δk/dwell (Hz/m); the ADC starts half a dwell
    before the flat top, so sample ``i`` is at ``rise + i·dwell`` and sample ``n/2`` at the
    centre of the gradient. ``sign = -1`` gives the reversed readout.
    """
    amplitude = DELTA_K / dwell
    rise = _ceil_raster(max(amplitude / system.max_slew, 0.5 * dwell + system.adc_dead_time))
    gx = pp.make_trapezoid(
        "x",
        amplitude=sign * amplitude,
        flat_time=_ceil_raster(n * dwell),
        rise_time=rise,
        system=system,
    )
    adc = pp.make_adc(n, dwell=dwell, delay=round(rise - 0.5 * dwell, 12), system=system)
    return gx, adc


def _echo_offset(gx: SimpleNamespace, n: int, dwell: float) -> float:
    """Time of ADC sample ``n/2`` (the echo) after the start of the readout block, s."""
    return gx.rise_time + (n // 2) * dwell


def _min_trap_duration(areas: Sequence[float], system: pp.Opts) -> float:
    """Shortest duration (s) in which a trapezoid can play each of ``areas`` (1/m)."""
    durations = [
        pp.calc_duration(pp.make_trapezoid("x", area=a, system=system))
        for a in areas
        if abs(a) > 1e-9
    ]
    longest = max(durations, default=GRAD_RASTER)
    # the raster value, unless float noise put the true minimum a hair above it
    return max(_ceil_raster(longest), longest)


def _trap(channel: str, area: float, duration: float, system: pp.Opts) -> SimpleNamespace | None:
    """Trapezoid of ``area`` (1/m) lasting ``duration`` (s), or ``None`` when the area is 0."""
    if abs(area) < 1e-9:
        return None
    return pp.make_trapezoid(channel, area=area, duration=duration, system=system)


def _rf_spoil_phase(k: int) -> float:
    """RF-spoiling phase of the ``k``-th excitation (0-based): 117°·k(k+1)/2, in rad."""
    return math.radians((RF_SPOIL_INC_DEG * k * (k + 1) / 2.0) % 360.0)


def _line_areas(n: int) -> np.ndarray:
    """Return the ky (1/m) of the lines ``j = 0..n-1``: (j − n/2)·Δk."""
    return (np.arange(n) - n // 2) * DELTA_K


def _centric_order(n: int) -> list[int]:
    """Centric line order: n/2, n/2−1, n/2+1, n/2−2, … (all ``n`` lines once)."""
    c = n // 2
    order = [c]
    for d in range(1, n):
        order += [j for j in (c - d, c + d) if 0 <= j < n]
    return order[:n]


def _labels(**values: int) -> list[SimpleNamespace]:
    """``SET`` label events, e.g. ``_labels(LIN=3, ECO=0)``."""
    return [pp.make_label(label=k, type="SET", value=int(v)) for k, v in values.items()]


# -- FLASH readout shared by the spoiled, inversion and saturation cases ---------------------


def _flash_parts(n: int, system: pp.Opts, flip_deg: float) -> SimpleNamespace:
    """Events and timing of one RF-spoiled FLASH line (TR without its fill delay)."""
    rf, gz, gzr = _sinc(flip_deg, system)
    gx, adc = _readout(n, system)
    ky = _line_areas(n)
    k_max = float(np.max(np.abs(ky)))
    pre_area = -gx.area / 2
    pre = _min_trap_duration([pre_area, k_max, gzr.area], system)
    spoil_x = 2.0 * gx.area
    spoil_z = 4.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([spoil_x, k_max, spoil_z], system)
    exc = pp.calc_duration(rf, gz)
    return SimpleNamespace(
        rf=rf,
        gz=gz,
        gx=gx,
        adc=adc,
        ky=ky,
        gx_pre=pp.make_trapezoid("x", area=pre_area, duration=pre, system=system),
        gzr=pp.make_trapezoid("z", area=gzr.area, duration=pre, system=system),
        gx_spoil=pp.make_trapezoid("x", area=spoil_x, duration=spoil, system=system),
        gz_spoil=pp.make_trapezoid("z", area=spoil_z, duration=spoil, system=system),
        pre=pre,
        spoil=spoil,
        centre=_rf_centre(rf),
        min_tr=exc + pre + pp.calc_duration(gx, adc) + spoil,
    )


def _add_flash_lines(
    seq: pp.Sequence,
    parts: SimpleNamespace,
    order: Sequence[int],
    tr: float,
    system: pp.Opts,
) -> None:
    """Add one RF-spoiled FLASH TR per line index of ``order`` (TR ``tr`` s)."""
    if tr < parts.min_tr - _EPS:
        raise ValueError(f"TR {tr * 1e3:.2f} ms is below the minimum {parts.min_tr * 1e3:.2f} ms")
    for k, j in enumerate(order):
        phase = _rf_spoil_phase(k)
        parts.rf.phase_offset = phase
        parts.adc.phase_offset = phase  # the receiver follows the RF phase
        ky = float(parts.ky[j])
        _add(seq, parts.rf, parts.gz)
        _add(seq, parts.gx_pre, _trap("y", ky, parts.pre, system), parts.gzr)
        _add(seq, parts.gx, parts.adc, *_labels(LIN=j))
        _add(
            seq,
            parts.gx_spoil,
            _trap("y", -ky, parts.spoil, system),
            parts.gz_spoil,
        )
        _wait(seq, tr - parts.min_tr, "TR")


def _prep_spoiler(system: pp.Opts) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Spoiler after a preparation pulse: 8 cycles per slice thickness on x and z."""
    area = 8.0 / SLICE_THICKNESS
    dur = _min_trap_duration([area], system)
    return (
        pp.make_trapezoid("x", area=area, duration=dur, system=system),
        pp.make_trapezoid("z", area=area, duration=dur, system=system),
    )


# -- the cases -------------------------------------------------------------------------------


def build_flash_spoiled(n: int, *, flip_deg: float = 15.0, tr: float = 10e-3) -> pp.Sequence:
    """RF-spoiled 2-D FLASH, Cartesian ``n`` × ``n``.

    Sinc excitation of ``flip_deg`` (deg), linear line order, RF spoiling with the quadratic 117°
    phase increment (the ADC phase follows the RF phase), readout spoiler of twice the readout
    area on x plus 4 cycles per slice thickness on z, phase rewinder.

    Parameters
    ----------
    n
        Matrix size (even).
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s (10 ms; the minimum is 4.4 ms at n = 96).

    Returns
    -------
    pypulseq.Sequence
        ``n`` excitations, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    parts = _flash_parts(n, system, flip_deg)
    _add_flash_lines(seq, parts, range(n), tr, system)
    return _finish(seq, "flash_spoiled")


def build_flash_inversion(
    n: int, *, ti: float = 0.5, flip_deg: float = 10.0, tr: float = 10e-3
) -> pp.Sequence:
    """Inversion-prepared FLASH: one 180° inversion, then ``n`` centrically ordered lines.

    A non-selective 1 ms block inversion pulse (use ``inversion``) and a spoiler (8 cycles per
    slice thickness on x and z) are followed, ``ti`` after the inversion centre, by the centre
    line of an RF-spoiled FLASH readout in centric order (n/2, n/2−1, n/2+1, …), so ``ti`` is the
    time from the inversion centre to the centre of the excitation of the k-space centre line.

    Parameters
    ----------
    n
        Matrix size (even).
    ti
        Inversion time, s, between 0.3 and 1.0 s.
    flip_deg
        Readout flip angle, deg.
    tr
        Readout repetition time, s.

    Returns
    -------
    pypulseq.Sequence
        1 inversion + ``n`` excitations, ``n·n`` ADC samples.

    Raises
    ------
    ValueError
        ``ti`` outside 0.3–1.0 s.
    """
    n = _check_n(n)
    if not 0.3 <= ti <= 1.0:
        raise ValueError(f"ti must be within 0.3-1.0 s, got {ti}")
    system = make_system()
    seq = pp.Sequence(system)
    rf_inv = _block_pulse(180.0, system, use="inversion")
    spoil_x, spoil_z = _prep_spoiler(system)
    parts = _flash_parts(n, system, flip_deg)
    _add(seq, rf_inv)
    _add(seq, spoil_x, spoil_z)
    used = pp.calc_duration(rf_inv) - _rf_centre(rf_inv) + pp.calc_duration(spoil_x, spoil_z)
    _wait(seq, ti - used - parts.centre, "TI")
    _add_flash_lines(seq, parts, _centric_order(n), tr, system)
    return _finish(seq, "flash_inversion")


def build_flash_saturation(
    n: int, *, td: float = 0.3, flip_deg: float = 10.0, tr: float = 10e-3
) -> pp.Sequence:
    """Saturation-recovery FLASH: one 90° saturation, a delay, then ``n`` centric lines.

    A non-selective 1 ms block 90° pulse (use ``saturation``) and a spoiler (8 cycles per slice
    thickness on x and z); ``td`` after the saturation centre the centre line of an RF-spoiled
    FLASH readout in centric order is excited.

    Parameters
    ----------
    n
        Matrix size (even).
    td
        Saturation delay, s: saturation centre to the excitation centre of the k-space centre
        line.
    flip_deg
        Readout flip angle, deg.
    tr
        Readout repetition time, s.

    Returns
    -------
    pypulseq.Sequence
        1 saturation + ``n`` excitations, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf_sat = _block_pulse(90.0, system, use="saturation")
    spoil_x, spoil_z = _prep_spoiler(system)
    parts = _flash_parts(n, system, flip_deg)
    _add(seq, rf_sat)
    _add(seq, spoil_x, spoil_z)
    used = pp.calc_duration(rf_sat) - _rf_centre(rf_sat) + pp.calc_duration(spoil_x, spoil_z)
    _wait(seq, td - used - parts.centre, "saturation delay")
    _add_flash_lines(seq, parts, _centric_order(n), tr, system)
    return _finish(seq, "flash_saturation")


def _build_mgre(n: int, bipolar: bool, flip_deg: float, tr: float | None) -> pp.Sequence:
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system)
    gx, adc = _readout(n, system)
    gx_neg, _ = _readout(n, system, sign=-1.0)
    ky = _line_areas(n)
    k_max = float(np.max(np.abs(ky)))
    pre = _min_trap_duration([gx.area / 2, k_max, gzr.area], system)
    gx_pre = pp.make_trapezoid("x", area=-gx.area / 2, duration=pre, system=system)
    gzr = pp.make_trapezoid("z", area=gzr.area, duration=pre, system=system)
    gx_fly = pp.make_trapezoid("x", area=-gx.area, system=system)  # monopolar rewinder
    spoil_x, spoil_z = 2.0 * gx.area, 4.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([spoil_x, k_max, spoil_z], system)
    gx_spoil = pp.make_trapezoid("x", area=spoil_x, duration=spoil, system=system)
    gz_spoil = pp.make_trapezoid("z", area=spoil_z, duration=spoil, system=system)
    ro = pp.calc_duration(gx, adc)
    between = 0.0 if bipolar else pp.calc_duration(gx_fly)
    min_tr = pp.calc_duration(rf, gz) + pre + N_ECHOES * ro + (N_ECHOES - 1) * between + spoil
    tr = min_tr if tr is None else tr
    for j in range(n):
        phase = _rf_spoil_phase(j)
        rf.phase_offset = phase
        adc.phase_offset = phase
        _add(seq, rf, gz)
        _add(seq, gx_pre, _trap("y", float(ky[j]), pre, system), gzr)
        for e in range(N_ECHOES):
            if e and not bipolar:
                _add(seq, gx_fly)
            readout = gx_neg if (bipolar and e % 2) else gx
            _add(seq, readout, adc, *_labels(LIN=j, ECO=e))
        _add(seq, gx_spoil, _trap("y", -float(ky[j]), spoil, system), gz_spoil)
        _wait(seq, tr - min_tr, "TR")
    return seq


def build_mgre_monopolar(n: int, *, flip_deg: float = 15.0, tr: float | None = None) -> pp.Sequence:
    """Multi-echo spoiled GRE, 8 monopolar echoes per line.

    Every echo is read with the same (positive) readout polarity; a fly-back trapezoid of minus
    the readout area rewinds kx between echoes. RF spoiling as in ``flash_spoiled``; labels
    ``LIN`` and ``ECO``. Echo spacing 2.54 ms at n = 96 (0.64 ms at n = 16).

    Parameters
    ----------
    n
        Matrix size (even).
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s; ``None`` for the shortest possible.

    Returns
    -------
    pypulseq.Sequence
        ``n`` excitations, ``8·n·n`` ADC samples (line-major, then echo, then sample).
    """
    return _finish(_build_mgre(n, False, flip_deg, tr), "mgre_monopolar")


def build_mgre_bipolar(n: int, *, flip_deg: float = 15.0, tr: float | None = None) -> pp.Sequence:
    """Multi-echo spoiled GRE, 8 bipolar echoes per line.

    The readout polarity alternates (+, −, +, …) without gradients between the echoes, so odd
    echoes sample kx in reverse order. RF spoiling as in ``flash_spoiled``; labels ``LIN`` and
    ``ECO``.

    Parameters
    ----------
    n
        Matrix size (even).
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s; ``None`` for the shortest possible.

    Returns
    -------
    pypulseq.Sequence
        ``n`` excitations, ``8·n·n`` ADC samples (line-major, then echo, then sample).
    """
    return _finish(_build_mgre(n, True, flip_deg, tr), "mgre_bipolar")


def dwi_b_value(amplitude: float, rise: float, flat: float, separation: float) -> float:
    """b-value of a Stejskal–Tanner pair of equal trapezoid lobes, s/m².

    b = (2π·G)²·[δ²(Δ − δ/3) + ε³/30 − δ·ε²/6] with G the amplitude (Hz/m), ε the ramp time,
    δ = ε + flat time (start of the ramp-up to start of the ramp-down) and Δ the separation of
    the lobe starts (the trapezoid-corrected Stejskal–Tanner formula). Imaging, slice and crusher
    gradients are ignored (they add well below 0.01 s/mm² here).

    Parameters
    ----------
    amplitude
        Lobe amplitude G, Hz/m.
    rise
        Ramp time ε (rise = fall), s.
    flat
        Flat time of one lobe, s.
    separation
        Δ, start of lobe 1 to start of lobe 2, s.

    Returns
    -------
    float
        b in s/m² (divide by 1e6 for s/mm²).
    """
    delta = rise + flat
    return (2 * math.pi * amplitude) ** 2 * (
        delta**2 * (separation - delta / 3) + rise**3 / 30 - delta * rise**2 / 6
    )


def _lobe(seq: pp.Sequence, grad: SimpleNamespace | None, duration: float) -> None:
    """Add a diffusion lobe, or a delay of the lobe's ``duration`` (s) for b = 0."""
    if grad is None:
        _wait(seq, duration, "lobe")
    else:
        _add(seq, grad)


def build_dwi_se(
    n: int, *, lines: int | None = None, tr: float = 1.0, b_max: float = 1000.0
) -> pp.Sequence:
    """Diffusion-weighted spin echo, 7 contrasts: b = 0 and b = 500, 1000 s/mm² along x, y, z.

    Each line: sinc 90° excitation (phase 90°), slice rephaser, first diffusion lobe, crusher
    (4 cycles per slice thickness on z), sinc 180° refocusing (use ``refocusing``, phase 0),
    the same crusher, the second (identical, same-sign) diffusion lobe, prephasers and a
    Cartesian readout centred at TE, then a spoiler; fill delays sit before the first and after
    the second lobe, so Δ does not depend on TE. The contrasts follow :data:`DWI_CONTRASTS`
    in sequence order (label ``SET`` = contrast index, ``LIN`` = line); the timing (TE ≈ 54 ms)
    is the same for all of them, b = 0 plays delays instead of the lobes.

    To keep the benchmark small only the ``lines`` central lines (default ``n // 4``) are
    acquired per contrast: lines ``j = n/2 − lines/2 … n/2 + lines/2 − 1`` at ky = (j − n/2)·Δk,
    i.e. the full FOV at a quarter of the phase-encoding resolution.

    The lobes are trapezoids at up to 90 % of the maximum gradient; their flat time is the
    shortest on the gradient raster that reaches ``b_max`` at that amplitude, then the amplitude
    is scaled to give each b exactly by :func:`dwi_b_value` (the trapezoid-corrected
    Stejskal–Tanner formula b = (2πG)²[δ²(Δ−δ/3) + ε³/30 − δε²/6], not PyPulseq's calculation).

    Parameters
    ----------
    n
        Matrix size (even).
    lines
        Phase-encoding lines per contrast; ``None`` for ``n // 4``.
    tr
        Repetition time, s.
    b_max
        Largest b-value, s/mm²; the contrasts use b_max/2 and b_max (500 and 1000 by
        default).

    Returns
    -------
    pypulseq.Sequence
        7·``lines`` excitations, ``7·lines·n`` ADC samples (``7·(n//4)·n`` by default).
    """
    n = _check_n(n)
    lines = n // 4 if lines is None else int(lines)
    if lines < 1 or lines > n:
        raise ValueError(f"lines must be within 1..{n}, got {lines}")
    system = make_system()
    seq = pp.Sequence(system)
    rf_ex, gz_ex, gzr = _sinc(90.0, system, phase=math.pi / 2)
    rf_ref, gz_ref, _ = _sinc(180.0, system, duration=2e-3, use="refocusing")
    crusher_area = 4.0 / SLICE_THICKNESS
    crusher = pp.make_trapezoid("z", area=crusher_area, system=system)
    gx, adc = _readout(n, system)
    first = n // 2 - lines // 2
    ky = _line_areas(n)[first : first + lines]
    k_max = float(np.max(np.abs(ky)))
    pre = _min_trap_duration([gx.area / 2, k_max], system)
    gx_pre = pp.make_trapezoid("x", area=-gx.area / 2, duration=pre, system=system)
    spoil_area = 4.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([2 * gx.area, k_max, spoil_area], system)
    gx_spoil = pp.make_trapezoid("x", area=2 * gx.area, duration=spoil, system=system)
    gz_spoil = pp.make_trapezoid("z", area=spoil_area, duration=spoil, system=system)

    # diffusion lobes: fixed ramps, shortest flat time reaching b_max at 90 % of max_grad
    g_max = 0.9 * system.max_grad
    rise = _ceil_raster(g_max / system.max_slew)
    gap = 2 * pp.calc_duration(crusher) + pp.calc_duration(rf_ref, gz_ref)
    flat = GRAD_RASTER
    while dwi_b_value(g_max, rise, flat, 2 * rise + flat + gap) < b_max * 1e6:
        flat = _ceil_raster(flat + GRAD_RASTER)
    lobe = 2 * rise + flat
    b_full = dwi_b_value(g_max, rise, flat, lobe + gap)

    # TE: both halves around the refocusing centre padded to the longer one
    exc, ref = pp.calc_duration(rf_ex, gz_ex), pp.calc_duration(rf_ref, gz_ref)
    before = (
        exc
        - _rf_centre(rf_ex)
        + pp.calc_duration(gzr)
        + lobe
        + pp.calc_duration(crusher)
        + _rf_centre(rf_ref)
    )
    after = (
        ref
        - _rf_centre(rf_ref)
        + pp.calc_duration(crusher)
        + lobe
        + pre
        + _echo_offset(gx, n, DWELL)
    )
    half_te = _ceil_raster(max(before, after))
    ro = pp.calc_duration(gx, adc)
    # excitation block start to the end of the spoiler
    used = _rf_centre(rf_ex) + 2 * half_te - _echo_offset(gx, n, DWELL) + ro + spoil
    for c, (b, axis) in enumerate(DWI_CONTRASTS):
        lobes = None
        if axis is not None:
            b_c = b * b_max / DWI_CONTRASTS[-1][0]  # s/mm²
            amplitude = g_max * math.sqrt(b_c / (b_full * 1e-6))
            lobes = pp.make_trapezoid(
                axis, amplitude=amplitude, rise_time=rise, flat_time=flat, system=system
            )
        for i in range(lines):
            j = first + i
            _add(seq, rf_ex, gz_ex)
            _add(seq, gzr)
            _wait(seq, half_te - before, "TE/2 before the refocusing pulse")
            _lobe(seq, lobes, lobe)
            _add(seq, crusher)
            _add(seq, rf_ref, gz_ref)
            _add(seq, crusher)
            _lobe(seq, lobes, lobe)
            _wait(seq, half_te - after, "TE/2 after the refocusing pulse")
            _add(seq, gx_pre, _trap("y", float(ky[i]), pre, system))
            _add(seq, gx, adc, *_labels(LIN=j, SET=c))
            _add(seq, gx_spoil, _trap("y", -float(ky[i]), spoil, system), gz_spoil)
            _wait(seq, tr - used, "TR")
    return _finish(seq, "dwi_se")


def build_bssfp(
    n: int, *, flip_deg: float = 30.0, tr: float = 5e-3, dummies: int = 10
) -> pp.Sequence:
    """Balanced SSFP with ``dummies`` dummy TRs, Cartesian ``n`` × ``n``.

    Sinc excitation (0.8 ms) with the RF phase alternating 0°/180° from TR to TR (the ADC phase
    follows it); the echo is at TR/2. Every TR is balanced on all axes: the slice rephaser
    (−half the slice gradient) after the pulse and again before the next pulse, the readout
    prephaser and rewinder (each −half the readout area) and the phase encoder and its rewinder.
    The dummy TRs play the same gradients with ky = 0 and no ADC.

    Parameters
    ----------
    n
        Matrix size (even).
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s (5 ms; the minimum is 3.9 ms at n = 96).
    dummies
        Dummy TRs without ADC before the first line.

    Returns
    -------
    pypulseq.Sequence
        ``dummies + n`` excitations, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system, duration=0.8e-3)
    gx, adc = _readout(n, system)
    ky = _line_areas(n)
    k_max = float(np.max(np.abs(ky)))
    pre = _min_trap_duration([gx.area / 2, k_max, gzr.area], system)
    gx_pre = pp.make_trapezoid("x", area=-gx.area / 2, duration=pre, system=system)
    gz_half = pp.make_trapezoid("z", area=gzr.area, duration=pre, system=system)
    exc = pp.calc_duration(rf, gz)
    centre = _rf_centre(rf)
    echo = _echo_offset(gx, n, DWELL)
    first_half = exc - centre + pre + echo
    second_half = pp.calc_duration(gx, adc) - echo + pre + centre
    if max(first_half, second_half) > tr / 2 + _EPS:
        raise ValueError(
            f"TR {tr * 1e3:.2f} ms is below the minimum "
            f"{2 * max(first_half, second_half) * 1e3:.2f} ms"
        )
    for k in range(dummies + n):
        j = k - dummies
        phase = math.pi * (k % 2)
        rf.phase_offset = phase
        adc.phase_offset = phase
        ky_j = float(ky[j]) if j >= 0 else 0.0
        _add(seq, rf, gz)
        _add(seq, gx_pre, _trap("y", ky_j, pre, system), gz_half)
        _wait(seq, tr / 2 - first_half, "TR/2")
        if j >= 0:
            _add(seq, gx, adc, *_labels(LIN=j))
        else:
            _add(seq, gx)
        _wait(seq, tr / 2 - second_half, "TR/2")
        _add(seq, gx_pre, _trap("y", -ky_j, pre, system), gz_half)
    return _finish(seq, "bssfp")


def tse_refocusing_angles(etl: int = 16, high: float = 160.0, low: float = 60.0) -> np.ndarray:
    """Variable refocusing flip angles: linear from ``high`` down to ``low`` and back up.

    Parameters
    ----------
    etl
        Echo train length (number of refocusing pulses).
    high, low
        First/last and lowest flip angle, deg.

    Returns
    -------
    numpy.ndarray
        ``etl`` angles in deg, e.g. 160, 145.7, …, 60, 60, …, 160 for ``etl = 16``.
    """
    half = etl // 2
    return np.concatenate([np.linspace(high, low, half), np.linspace(low, high, etl - half)])


def build_tse_variable(n: int, *, etl: int = 16, tr: float = 1.0) -> pp.Sequence:
    """Turbo spin echo with variable refocusing flip angles (CPMG), ``n / etl`` shots.

    Sinc 90° excitation (phase 90°) and ``etl`` sinc refocusing pulses (2 ms, phase 0, use
    ``refocusing``) with the angles of :func:`tse_refocusing_angles` (160° → 60° → 160°), each
    flanked by equal crushers (4 cycles per slice thickness on z). The echoes lie exactly halfway
    between the refocusing pulses (echo spacing 5.34 ms at n = 96). Line order is linear
    in the echo index: shot ``s``, echo ``e`` reads line ``j = e·shots + s``, so the k-space centre
    is read at echo ``etl/2``.

    Parameters
    ----------
    n
        Matrix size, a multiple of ``etl``.
    etl
        Echo train length.
    tr
        Repetition time (excitation to excitation), s.

    Returns
    -------
    pypulseq.Sequence
        ``n / etl`` excitations and ``n`` refocusing pulses, ``n·n`` ADC samples.
    """
    n = _check_n(n, multiple=etl)
    shots = n // etl
    system = make_system()
    seq = pp.Sequence(system)
    rf_ex, gz_ex, gzr = _sinc(90.0, system, phase=math.pi / 2)
    angles = tse_refocusing_angles(etl)
    refocus = [_sinc(a, system, duration=2e-3, use="refocusing")[:2] for a in angles]
    gx, adc = _readout(n, system)
    ky = _line_areas(n)
    k_max = float(np.max(np.abs(ky)))
    crusher = 4.0 / SLICE_THICKNESS
    # after the excitation: readout prephaser (+half, the refocusing pulse negates it) and the
    # slice rephaser merged with the crusher before the first refocusing pulse
    first = _min_trap_duration([gx.area / 2, crusher + gzr.area], system)
    gx_pre = pp.make_trapezoid("x", area=gx.area / 2, duration=first, system=system)
    gz_first = pp.make_trapezoid("z", area=crusher + gzr.area, duration=first, system=system)
    pe = _min_trap_duration([crusher, k_max], system)
    gz_crush = pp.make_trapezoid("z", area=crusher, duration=pe, system=system)
    spoil_area = 4.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([2 * gx.area, k_max, spoil_area], system)
    gx_spoil = pp.make_trapezoid("x", area=2 * gx.area, duration=spoil, system=system)
    gz_spoil = pp.make_trapezoid("z", area=spoil_area, duration=spoil, system=system)

    rf_ref0, gz_ref0 = refocus[0]
    ref_dur = pp.calc_duration(rf_ref0, gz_ref0)
    ref_centre = _rf_centre(rf_ref0)
    echo = _echo_offset(gx, n, DWELL)
    to_echo = ref_dur - ref_centre + pe + echo
    from_echo = pp.calc_duration(gx, adc) - echo + pe + ref_centre
    exc_to_ref = pp.calc_duration(rf_ex, gz_ex) - _rf_centre(rf_ex) + first + ref_centre
    half_esp = _ceil_raster(max(to_echo, from_echo, exc_to_ref))
    # excitation block start to the end of the last spoiler
    train = _rf_centre(rf_ex) + 2 * etl * half_esp - echo + pp.calc_duration(gx, adc) + spoil
    for s in range(shots):
        _add(seq, rf_ex, gz_ex)
        _add(seq, gx_pre, gz_first)
        _wait(seq, half_esp - exc_to_ref, "ESP/2")
        for e in range(etl):
            j = e * shots + s
            ky_j = float(ky[j])
            _add(seq, *refocus[e])
            _add(seq, gz_crush, _trap("y", ky_j, pe, system))
            _wait(seq, half_esp - to_echo, "ESP/2")
            _add(seq, gx, adc, *_labels(LIN=j, ECO=e))
            if e < etl - 1:
                _wait(seq, half_esp - from_echo, "ESP/2")
                _add(seq, gz_crush, _trap("y", -ky_j, pe, system))
            else:
                _add(seq, gx_spoil, _trap("y", -ky_j, spoil, system), gz_spoil)
        _wait(seq, tr - train, "TR")
    return _finish(seq, "tse_variable")


def build_ste_3pulse(
    n: int, *, te: float = 10e-3, tm: float = 20e-3, tr: float = 50e-3
) -> pp.Sequence:
    """Three-pulse stimulated echo, one line per set of three 90° pulses.

    Three sinc 90° pulses (phase 0, use ``excitation``) with centre spacings TE/2 and TM; the
    stimulated echo forms TE/2 after the third pulse, at the readout centre. Between pulses 1
    and 2 a gradient of M = 2·(readout area) on x dephases; after pulse 3 the prephaser (M − half
    the readout area) and half the readout bring the stimulated pathway back to kx = 0 at sample
    n/2, while the FID of pulse 3 stays at kx ≥ 1.5·(readout area). The slice rephaser follows
    pulse 1 only: the stored z moment (the first half of pulse 2's slice gradient) equals the
    second half of pulse 3's. A z spoiler (10 cycles per slice thickness) during TM kills the
    transverse pathways; the phase encoder is played after pulse 3, a spoiler ends each TR.

    Parameters
    ----------
    n
        Matrix size (even).
    te
        Echo time (pulse 1 centre to echo), s.
    tm
        Mixing time (pulse 2 centre to pulse 3 centre), s.
    tr
        Repetition time, s.

    Returns
    -------
    pypulseq.Sequence
        3·``n`` pulses, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(90.0, system)
    gx, adc = _readout(n, system)
    ky = _line_areas(n)
    k_max = float(np.max(np.abs(ky)))
    m_x = 2.0 * gx.area
    dephase = _min_trap_duration([m_x, gzr.area], system)
    gx_dephase = pp.make_trapezoid("x", area=m_x, duration=dephase, system=system)
    gzr = pp.make_trapezoid("z", area=gzr.area, duration=dephase, system=system)
    tm_area = 10.0 / SLICE_THICKNESS
    gz_tm = pp.make_trapezoid("z", area=tm_area, system=system)
    pre = _min_trap_duration([m_x - gx.area / 2, k_max], system)
    gx_pre = pp.make_trapezoid("x", area=m_x - gx.area / 2, duration=pre, system=system)
    spoil_area = 10.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([2 * gx.area, k_max, spoil_area], system)
    gx_spoil = pp.make_trapezoid("x", area=2 * gx.area, duration=spoil, system=system)
    gz_spoil = pp.make_trapezoid("z", area=spoil_area, duration=spoil, system=system)

    exc = pp.calc_duration(rf, gz)
    centre = _rf_centre(rf)
    echo = _echo_offset(gx, n, DWELL)
    gap12 = te / 2 - (exc - centre + dephase + centre)
    gap23 = tm - (exc - centre + pp.calc_duration(gz_tm) + centre)
    gap3e = te / 2 - (exc - centre + pre + echo)
    # first pulse's block start to the end of the spoiler
    used = centre + te + tm - echo + pp.calc_duration(gx, adc) + spoil
    for j in range(n):
        _add(seq, rf, gz)
        _add(seq, gx_dephase, gzr)
        _wait(seq, gap12, "TE/2")
        _add(seq, rf, gz)
        _add(seq, gz_tm)
        _wait(seq, gap23, "TM")
        _add(seq, rf, gz)
        _add(seq, gx_pre, _trap("y", float(ky[j]), pre, system))
        _wait(seq, gap3e, "TE/2 after the third pulse")
        _add(seq, gx, adc, *_labels(LIN=j))
        _add(seq, gx_spoil, _trap("y", -float(ky[j]), spoil, system), gz_spoil)
        _wait(seq, tr - used, "TR")
    return _finish(seq, "ste_3pulse")


def _add_epi_train(
    seq: pp.Sequence,
    system: pp.Opts,
    n: int,
    lines: Sequence[int],
    labels: dict[str, int],
    gz_area: float,
) -> float:
    """Add prephasers and a blipped EPI readout of ``lines`` (ascending, equally spaced).

    Returns the duration (s) of what was added. Blips lie between the readouts (no ramp
    sampling); the readout polarity alternates starting with +.
    """
    gx, adc = _readout(n, system, dwell=EPI_DWELL)
    gx_neg, _ = _readout(n, system, dwell=EPI_DWELL, sign=-1.0)
    step = (lines[1] - lines[0]) if len(lines) > 1 else 1
    ky0 = float(_line_areas(n)[lines[0]])
    blip = pp.make_trapezoid("y", area=step * DELTA_K, system=system)
    pre = _min_trap_duration([gx.area / 2, ky0, gz_area], system)
    _add(
        seq,
        pp.make_trapezoid("x", area=-gx.area / 2, duration=pre, system=system),
        _trap("y", ky0, pre, system),
        pp.make_trapezoid("z", area=gz_area, duration=pre, system=system),
    )
    for m, j in enumerate(lines):
        if m:
            _add(seq, blip)
        _add(seq, gx_neg if m % 2 else gx, adc, *_labels(LIN=j, **labels))
    return pre + len(lines) * pp.calc_duration(gx, adc) + (len(lines) - 1) * pp.calc_duration(blip)


def build_epi_single(n: int, *, flip_deg: float = 90.0) -> pp.Sequence:
    """Single-shot blipped gradient-echo EPI, ``n`` × ``n``, no ramp sampling.

    Sinc excitation, prephasers to (kx, ky) = (−n/2·Δk − ramp, −n/2·Δk), then ``n`` readouts of
    alternating polarity (dwell 10 µs) with Δk blips on y between them; lines ascend from
    ky = −n/2·Δk, the k-space centre line is readout ``n/2``. A spoiler ends the sequence.

    Parameters
    ----------
    n
        Matrix size (even).
    flip_deg
        Flip angle, deg.

    Returns
    -------
    pypulseq.Sequence
        1 excitation, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system)
    _add(seq, rf, gz)
    _add_epi_train(seq, system, n, list(range(n)), {}, gzr.area)
    spoil = pp.make_trapezoid("z", area=4.0 / SLICE_THICKNESS, system=system)
    _add(seq, spoil)
    return _finish(seq, "epi_single")


def build_epi_segmented(
    n: int, *, flip_deg: float = 90.0, tr: float = 0.5, shots: int = 2
) -> pp.Sequence:
    """Segmented (interleaved) blipped EPI, ``shots`` shots (2) of ``n / shots`` lines.

    Shot ``s`` reads lines ``s, s + shots, s + 2·shots, …`` with blips of ``shots``·Δk,
    readouts as in ``epi_single``; label ``SEG`` = shot. Each shot ends with a z spoiler; TR is
    the excitation spacing.

    Parameters
    ----------
    n
        Matrix size, a multiple of ``2·shots``.
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s.
    shots
        Number of interleaved shots.

    Returns
    -------
    pypulseq.Sequence
        ``shots`` excitations, ``n·n`` ADC samples.
    """
    n = _check_n(n, multiple=2 * shots)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system)
    spoil = pp.make_trapezoid("z", area=4.0 / SLICE_THICKNESS, system=system)
    for s in range(shots):
        _add(seq, rf, gz)
        train = _add_epi_train(seq, system, n, list(range(s, n, shots)), {"SEG": s}, gzr.area)
        _add(seq, spoil)
        used = pp.calc_duration(rf, gz) + train + pp.calc_duration(spoil)
        _wait(seq, tr - used, "TR")
    return _finish(seq, "epi_segmented")


def build_radial_ga(n: int, *, flip_deg: float = 10.0, tr: float = 10e-3) -> pp.Sequence:
    """Golden-angle radial RF-spoiled FLASH: ``n`` spokes of ``n`` samples.

    Spoke ``j`` runs through the k-space centre along the angle ``j·111.246°`` (mod 360°,
    :data:`GOLDEN_ANGLE_DEG`) in the kx–ky plane; sample ``i`` sits at (i − n/2)·Δk along the
    spoke. Readout, prephaser and spoiler are the Cartesian ones projected on x and y; RF spoiling
    as in ``flash_spoiled``.

    Parameters
    ----------
    n
        Matrix size (even): spokes and samples per spoke.
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s.

    Returns
    -------
    pypulseq.Sequence
        ``n`` excitations, ``n·n`` ADC samples.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system)
    gro, adc = _readout(n, system)
    pre = _min_trap_duration([gro.area / 2, gzr.area], system)
    g_pre = pp.make_trapezoid("x", area=-gro.area / 2, duration=pre, system=system)
    gzr = pp.make_trapezoid("z", area=gzr.area, duration=pre, system=system)
    spoil_area = 4.0 / SLICE_THICKNESS
    spoil = _min_trap_duration([2 * gro.area, spoil_area], system)
    g_spoil = pp.make_trapezoid("x", area=2 * gro.area, duration=spoil, system=system)
    gz_spoil = pp.make_trapezoid("z", area=spoil_area, duration=spoil, system=system)
    min_tr = pp.calc_duration(rf, gz) + pre + pp.calc_duration(gro, adc) + spoil
    if tr < min_tr - _EPS:
        raise ValueError(f"TR {tr * 1e3:.2f} ms is below the minimum {min_tr * 1e3:.2f} ms")

    def project(grad: SimpleNamespace, phi: float) -> list[SimpleNamespace]:
        out = []
        for channel, factor in (("x", math.cos(phi)), ("y", math.sin(phi))):
            if abs(factor) > 1e-12:
                g = pp.scale_grad(grad, factor)
                g.channel = channel
                out.append(g)
        return out

    for j in range(n):
        phi = math.radians((j * GOLDEN_ANGLE_DEG) % 360.0)
        phase = _rf_spoil_phase(j)
        rf.phase_offset = phase
        adc.phase_offset = phase
        _add(seq, rf, gz)
        _add(seq, *project(g_pre, phi), gzr)
        _add(seq, *project(gro, phi), adc, *_labels(LIN=j))
        _add(seq, *project(g_spoil, phi), gz_spoil)
        _wait(seq, tr - min_tr, "TR")
    return _finish(seq, "radial_ga")


def _spiral_theta(
    turns: float, k_max: float, g_max: float, s_max: float, dt: float = 1e-6
) -> np.ndarray:
    """Angle θ(t) (rad) on a ``dt`` grid of the Archimedean spiral k = λθ·exp(iθ), λ = k_max/θ_max.

    A forward pass at the speed limits: the angular velocity is the smallest of the amplitude
    limit g_max/(λ√(1+θ²)), the centripetal slew limit √(s_max/(λ√(4+θ²))) and the velocity
    reached by accelerating at s_max/λ from rest. Units: 1/m, Hz/m, Hz/m/s, s.
    """
    theta_max = 2 * math.pi * turns
    lam = k_max / theta_max
    accel = s_max / lam
    theta, speed = 0.0, 0.0
    out = [0.0]
    while theta < theta_max:
        v_grad = g_max / (lam * math.sqrt(1 + theta * theta))
        v_slew = math.sqrt(s_max / (lam * math.sqrt(4 + theta * theta)))
        speed = min(speed + accel * dt, v_grad, v_slew)
        theta = min(theta + speed * dt, theta_max)
        out.append(theta)
    return np.asarray(out)


def _spiral_design(
    n: int, interleaves: int, system: pp.Opts
) -> tuple[np.ndarray, float, int, float]:
    """Design the spiral and check its limits.

    Returns the complex gradient waveform of interleave 0 on the gradient raster (Hz/m, the
    spiral followed by a linear ramp to 0), the ADC dwell (s), the samples per interleave and the
    spiral duration (s).

    Raises
    ------
    ValueError
        No design within 40 % … 80 % of the limits keeps every axis within the system's maximum
        gradient and slew rate.
    """
    samples = math.ceil(n * n / interleaves)
    k_max = n / 2 * DELTA_K
    turns = n / 2 / interleaves  # turn spacing interleaves·Δk
    lam = k_max / (2 * math.pi * turns)
    raster = system.grad_raster_time
    fraction = 0.8
    while fraction >= 0.4:
        dt = 1e-6
        theta = _spiral_theta(turns, k_max, fraction * system.max_grad, fraction * system.max_slew)
        t_opt = (len(theta) - 1) * dt
        dwell = math.ceil(t_opt / samples / system.adc_raster_time - 1e-6) * system.adc_raster_time
        t_spiral = _ceil_raster(system.adc_dead_time + samples * dwell, raster)
        stretch = t_spiral / t_opt
        t = np.arange(round(t_spiral / raster) + 1) * raster
        th = np.interp(t / stretch, np.arange(len(theta)) * dt, theta)
        k = lam * th * np.exp(1j * th)
        g = np.diff(k) / raster  # mean gradient of each raster interval (Hz/m)
        steps = math.ceil(np.max(np.abs([g[-1].real, g[-1].imag])) / (system.max_slew * raster))
        ramp = g[-1] * (1 - np.arange(1, steps + 2) / (steps + 1))
        wave = np.concatenate([g, ramp])
        ok = True
        for comp in (wave.real, wave.imag):
            slew = np.diff(np.concatenate([[0.0], comp, [0.0]])) / raster
            slew[0] *= 2  # pulseq's edge: first value reached in half a raster
            slew[-1] *= 2
            if np.max(np.abs(comp)) > system.max_grad or np.max(np.abs(slew)) > system.max_slew:
                ok = False
        if ok:
            return wave, dwell, samples, t_spiral
        fraction -= 0.1
    raise ValueError(f"no spiral for n={n}, {interleaves} interleaves fits the gradient limits")


def build_spiral(
    n: int, *, interleaves: int = 4, flip_deg: float = 15.0, tr: float | None = None
) -> pp.Sequence:
    """Interleaved Archimedean spiral-out RF-spoiled GRE from arbitrary gradients.

    Each of ``interleaves`` interleaves (rotated by 360°/interleaves) is an Archimedean spiral
    k = λθ·exp(iθ) from 0 to k_max = n/2·Δk with a turn spacing of interleaves·Δk, played at up
    to 80 % of the gradient and slew limits (a forward pass at the amplitude, centripetal-slew and
    start-up acceleration limits), stretched to fill the ADC, then ramped to zero; the waveform
    (``pp.make_arbitrary_grad``) is checked against the full amplitude and slew limits on each
    axis. The ADC (dwell the design's duration over the samples, rounded up to 100 ns) starts
    10 µs into the spiral. In-plane rewinders, a z spoiler and RF spoiling end each TR.

    Parameters
    ----------
    n
        Matrix size (even).
    interleaves
        Number of spiral interleaves (one excitation each).
    flip_deg
        Flip angle, deg.
    tr
        Repetition time, s; ``None`` for the shortest possible.

    Returns
    -------
    pypulseq.Sequence
        ``interleaves`` excitations, ``interleaves·ceil(n·n / interleaves)`` ADC samples
        (``n·n`` when ``interleaves`` divides ``n·n``).

    Raises
    ------
    ValueError
        The spiral cannot be played within the gradient limits.
    """
    n = _check_n(n)
    system = make_system()
    seq = pp.Sequence(system)
    rf, gz, gzr = _sinc(flip_deg, system)
    wave, dwell, samples, _ = _spiral_design(n, interleaves, system)
    adc = pp.make_adc(samples, dwell=dwell, delay=system.adc_dead_time, system=system)
    spoil_area = 4.0 / SLICE_THICKNESS
    exc = pp.calc_duration(rf, gz)
    grads = []
    rewind = 0.0
    for i in range(interleaves):
        w = wave * np.exp(2j * math.pi * i / interleaves)
        gx = pp.make_arbitrary_grad("x", w.real, first=0, last=0, system=system)
        gy = pp.make_arbitrary_grad("y", w.imag, first=0, last=0, system=system)
        grads.append((gx, gy))
        rewind = max(rewind, _min_trap_duration([gx.area, gy.area, spoil_area], system))
    gz_spoil = pp.make_trapezoid("z", area=spoil_area, duration=rewind, system=system)
    read = pp.calc_duration(grads[0][0], grads[0][1], adc)
    min_tr = exc + pp.calc_duration(gzr) + read + rewind
    tr = min_tr if tr is None else tr
    for i, (gx, gy) in enumerate(grads):
        phase = _rf_spoil_phase(i)
        rf.phase_offset = phase
        adc.phase_offset = phase
        _add(seq, rf, gz)
        _add(seq, gzr)
        _add(seq, gx, gy, adc, *_labels(LIN=i))
        _add(
            seq,
            _trap("x", -gx.area, rewind, system),
            _trap("y", -gy.area, rewind, system),
            gz_spoil,
        )
        _wait(seq, tr - min_tr, "TR")
    return _finish(seq, "spiral")


# -- registry and files ----------------------------------------------------------------------

CASES: dict[str, Callable[[int], pp.Sequence]] = {
    "flash_spoiled": build_flash_spoiled,
    "flash_inversion": build_flash_inversion,
    "flash_saturation": build_flash_saturation,
    "mgre_monopolar": build_mgre_monopolar,
    "mgre_bipolar": build_mgre_bipolar,
    "dwi_se": build_dwi_se,
    "bssfp": build_bssfp,
    "tse_variable": build_tse_variable,
    "ste_3pulse": build_ste_3pulse,
    "epi_single": build_epi_single,
    "radial_ga": build_radial_ga,
    "spiral": build_spiral,
    "epi_segmented": build_epi_segmented,
}
"""Case name → builder taking the matrix size ``n``."""


def case_names() -> list[str]:
    """Return the names of all cases, in suite order.

    Returns
    -------
    list of str
        The keys of :data:`CASES`.
    """
    return list(CASES)


def adc_samples(name: str, n: int) -> int:
    """Return the number of ADC samples case ``name`` has at matrix size ``n`` (default options).

    Parameters
    ----------
    name
        A case name of :data:`CASES`.
    n
        Matrix size.

    Returns
    -------
    int
        n² for every case except ``mgre_*`` (8·n²), ``dwi_se`` (7·(n//4)·n) and
        ``spiral`` (4·ceil(n²/4)).

    Raises
    ------
    KeyError
        Unknown case.
    """
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    if name.startswith("mgre_"):
        return N_ECHOES * n * n
    if name == "dwi_se":
        return len(DWI_CONTRASTS) * (n // 4) * n
    if name == "spiral":
        return 4 * math.ceil(n * n / 4)
    return n * n


def write_case(name: str, n: int, path: str | Path) -> Path:
    """Build case ``name`` at matrix size ``n`` and write it as a Pulseq file.

    Parameters
    ----------
    name
        A case name of :data:`CASES`.
    n
        Matrix size.
    path
        The ``.seq`` file to write, or an existing directory to write ``<name>_<n>.seq`` into.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    KeyError
        Unknown case.
    """
    if name not in CASES:
        raise KeyError(f"unknown case {name!r}; known: {', '.join(CASES)}")
    path = Path(path)
    if path.is_dir():
        path = path / f"{name}_{n}.seq"
    seq = CASES[name](n)
    seq.write(str(path))
    return path


def main(argv: Sequence[str] | None = None) -> None:
    """Write the cases as ``<name>_<n>.seq`` into a directory (command line entry)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--n", type=int, nargs="+", default=[48])
    parser.add_argument("--cases", nargs="+", default=case_names(), choices=case_names())
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    for n in args.n:
        for name in args.cases:
            print(write_case(name, n, args.outdir))


if __name__ == "__main__":
    main()

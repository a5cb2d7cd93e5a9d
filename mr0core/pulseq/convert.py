"""Convert a parsed Pulseq file into the MR-zero sequence model.

Model (see :mod:`mr0core.sequence`): every RF pulse becomes an instantaneous pulse at its centre
and starts a new repetition. Between pulses the time line is cut at every ADC sample (each sample
ends one event), at block boundaries of rotated blocks and, with ``exact_trajectories``, at every
gradient corner. Each event's gradient moment is the exact integral of the piecewise-linear
gradient waveforms over its time span.

Conventions (documented in docs/library/pulseq.md):

- k-space is in 1/m, exactly PyPulseq's ``calculate_kspace()`` convention (same sign).
- Flip angle = 2π·abs(∫B1(t) dt) with B1 = amplitude·magnitude·exp(2πi·phase shape) in Hz
  (uniform-raster shapes are piecewise constant, time-shaped ones piecewise linear). For pulses
  of constant phase (block, Gauss, …) this is 2π·∫|B1| dt; for a sinc, whose negative lobes Pulseq
  stores as phase ½, it is the nominal small-tip angle rather than the larger ∫|B1|.
- Pulse phase = phase offset + arg ∫B1 dt + 2π·frequency offset·(centre − pulse start), plus the
  ppm terms scaled by γ·B0 (B0 from ``[DEFINITIONS]``, else 1.5 T as PyPulseq). A negative
  amplitude adds π.
- Receiver phase of ADC sample i = phase offset + 2π·frequency offset·(i + ½)·dwell + phase
  modulation shape (rad); ``adc_phase = π/2 − receiver phase``, so that a pulse and an ADC with
  equal Pulseq phases (RF spoiling) cancel, as in MR-zero's own examples.
- Usage: 1.5 ``use`` letters e → EXCIT, r → REFOC, s → FATSAT, i/p/o → UNDEF. For ``u`` and for
  files before 1.5 (which store no use), PyPulseq's rule: below 90.01° EXCIT, otherwise FATSAT for a
  > 6 ms pulse near −3.45 ppm, else REFOC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, overload

import numpy as np
import numpy.typing as npt
import torch

from mr0core.pulseq.reader import SeqFile, SeqFormatError, SeqLimitError, SeqLimits, check_limits
from mr0core.sequence import Pulse, PulseUsage, Repetition, RfWaveform, Sequence

__all__ = [
    "ConversionInfo",
    "ConversionSize",
    "check_conversion",
    "conversion_size",
    "estimate_conversion_bytes",
    "seq_to_sequence",
    "validate_blocks",
]

GAMMA_HZ_PER_T = 42.576e6
DEFAULT_B0_T = 1.5
# Cut times are compared on a 1 ps grid, far below any Pulseq raster.
TIME_QUANTUM = 1e-12
MAX_DURATION_S = 1e6
"""Longest sequence we convert, s (11.6 days; cut times in ps stay far inside int64)."""

_USE_LETTER = {
    "e": PulseUsage.EXCIT,
    "r": PulseUsage.REFOC,
    "s": PulseUsage.FATSAT,
    "i": PulseUsage.UNDEF,
    "p": PulseUsage.UNDEF,
    "o": PulseUsage.UNDEF,
}

# Block columns after normalisation (see SeqFile).
RF, GX, GY, GZ, ADC, EXT, DELAY = range(7)

# Peak memory of the conversion per item, in bytes: measured (peak RSS of seq_to_sequence on
# synthetic sequences that scale one item at a time, numpy 2 / torch 2, x86-64) and rounded up.
# tests/mr0core/pulseq/test_hostile_seq.py checks that the estimate bounds the measured peak.
BYTES_PER_REPETITION = 5120
"""A repetition: its Repetition and Pulse objects and ~9 tensor views (split and unbound)."""
BYTES_PER_EVENT = 112
"""An event (an upper count of cuts): cut times, moments, the event arrays and float32 copies."""
BYTES_PER_ADC_SAMPLE = 64
"""An ADC sample beyond its event: sample time, receiver phase, block, sort order."""
BYTES_PER_GRADIENT_PIECE = 192
"""A linear piece of a gradient waveform (trapezoid ramp or flat top, arbitrary sample)."""
BYTES_PER_BLOCK = 256
"""A block: the parsed table row and the per-block arrays of the conversion."""
BYTES_PER_LABEL_EVENT = 16
"""One label's value at one event (int32 plus temporaries)."""
BYTES_PER_LABEL_BLOCK = 32
"""One label's value after one block."""
BYTES_PER_LABEL_REPETITION = 512
"""One label's tensor view in one repetition."""
BYTES_PER_WAVEFORM_SAMPLE = 32
"""A sample of a gradient waveform built from a shape (kept, with its time, while converting)."""
BYTES_PER_SHAPE_SAMPLE = 8
"""A decompressed shape sample (kept in the parsed file)."""


@dataclass
class RfProperties:
    """Per-row properties of the [RF] table, each of shape ``[rows]``."""

    angle: np.ndarray
    """Flip angle in rad."""
    phase: np.ndarray
    """Phase at the pulse centre in rad."""
    center: np.ndarray
    """Time of the centre after the block start (includes the delay), s."""
    end: np.ndarray
    """End of the pulse after the block start, s."""
    usage: list[PulseUsage]
    shape_keys: list[tuple[int, int, int]] = field(default_factory=list)
    """(magnitude, phase, time) shape ids of every row."""
    steps: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Per shape triple: the piecewise-constant waveform, complex ``[steps]`` (magnitude ·
    exp(2πi phase shape)) and its step edges ``[steps + 1]`` in s after the pulse start."""


@dataclass
class ConversionInfo:
    """What the conversion learnt about the file, for ``mr0 seq-info`` and exporters."""

    rf_rows: np.ndarray
    """[RF] table row of every pulse in time order, shape ``[pulses]``."""
    rf: RfProperties
    pulse_times: np.ndarray
    """Time of every pulse centre in s, shape ``[pulses]``."""
    adc_times: np.ndarray
    """Time of every ADC sample in s, shape ``[samples]``."""
    label_names: list[str]
    trigger_count: int
    soft_delay_hints: list[str]


# -- per-event properties ----------------------------------------------------------------------


def _b0(seq: SeqFile) -> float:
    b0 = seq.definition_floats("B0")
    return b0[0] if b0 else DEFAULT_B0_T


def _rf_properties(seq: SeqFile) -> RfProperties:
    if "rf" not in seq.cache:
        seq.cache["rf"] = _compute_rf_properties(seq)
    result: RfProperties = seq.cache["rf"]
    return result


def _compute_rf_properties(seq: SeqFile) -> RfProperties:
    tab = seq.rf
    n = len(tab.ids)
    raster = seq.raster("RadiofrequencyRasterTime")
    gamma_b0 = GAMMA_HZ_PER_T * _b0(seq)
    angle = np.zeros(n)
    phase = np.zeros(n)
    center = np.zeros(n)
    end = np.zeros(n)
    usage: list[PulseUsage] = []
    # per (magnitude, phase, time) shape triple: |∫B1|, peak centre, duration, arg ∫B1
    cache: dict[tuple[int, int, int], tuple[float, float, float, float]] = {}
    steps: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}
    keys: list[tuple[int, int, int]] = []
    for r in range(n):
        amp, mag_id, ph_id, time_id, c, delay, f_ppm, p_ppm, freq, ph = tab.data[r]
        line = int(tab.lines[r])
        key = (int(mag_id), int(ph_id), int(time_id))
        if key not in cache:
            mag = seq.shape(int(mag_id), line)
            if len(mag) == 0:
                raise SeqFormatError(seq.path, line, f"[RF] magnitude shape {int(mag_id)} is empty")
            if ph_id != 0:
                pshape = seq.shape(int(ph_id), line)
                if len(pshape) != len(mag):
                    raise SeqFormatError(
                        seq.path,
                        line,
                        f"[RF] phase shape {int(ph_id)} length differs from magnitude",
                    )
                b1 = mag * np.exp(2j * math.pi * pshape)  # Pulseq stores phase / 2π
            else:
                b1 = mag.astype(np.complex128)
            if time_id == 0:
                t = (np.arange(len(mag)) + 0.5) * raster
                duration = len(mag) * raster
                integral = b1.sum() * raster  # piecewise constant on the RF raster
                steps[key] = (b1, np.arange(len(mag) + 1) * raster)
            else:
                t = seq.shape(int(time_id), line) * raster
                if len(t) != len(mag) or np.any(np.diff(t) < 0):
                    raise SeqFormatError(
                        seq.path,
                        line,
                        f"[RF] time shape {int(time_id)} must be ascending with {len(mag)} samples",
                    )
                duration = math.ceil(t[-1] / raster - 1e-10) * raster
                integral = np.sum(0.5 * (b1[1:] + b1[:-1]) * np.diff(t))  # piecewise linear
                steps[key] = _linear_steps(b1, t)
            # the centre when the file stores none: the peak, or the middle of a plateau
            # (PyPulseq rule)
            peak = np.flatnonzero(np.abs(mag) >= np.abs(mag).max() * 0.99999)
            cache[key] = (
                float(abs(integral)),
                float(0.5 * (t[peak[0]] + t[peak[-1]])),
                float(duration),
                float(np.angle(integral)),
            )
        keys.append(key)
        integral, peak_centre, duration, phase_shape = cache[key]
        c_rel = peak_centre if np.isnan(c) else float(c)
        if not -0.5 * raster <= c_rel <= duration + 0.5 * raster:
            raise SeqFormatError(
                seq.path,
                line,
                f"[RF] centre {c_rel * 1e6:.6g} us lies outside the pulse "
                f"(0 to {duration * 1e6:.6g} us)",
            )
        full_freq = freq + f_ppm * 1e-6 * gamma_b0
        angle[r] = 2 * math.pi * abs(amp) * integral
        phase[r] = (
            ph
            + p_ppm * 1e-6 * gamma_b0
            + 2 * math.pi * full_freq * c_rel
            + phase_shape
            + (math.pi if amp < 0 else 0.0)
        )
        center[r] = delay + c_rel
        end[r] = delay + duration
        use = tab.text[r][0]
        if use in _USE_LETTER:
            usage.append(_USE_LETTER[use])
        elif math.degrees(angle[r]) < 90.01:
            usage.append(PulseUsage.EXCIT)
        else:
            ppm = 1e6 * full_freq / gamma_b0
            fatsat = duration > 6e-3 and -3.5 <= ppm <= -3.4
            usage.append(PulseUsage.FATSAT if fatsat else PulseUsage.REFOC)
    return RfProperties(angle, phase, center, end, usage, keys, steps)


def _linear_steps(b1: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-constant steps of a piecewise-linear waveform (samples ``b1`` at times ``t``).

    Each step between two samples plays their mean (so the integral is the trapezoid one); a
    step of zero B1 covers the time before the first sample; steps of zero length are dropped.
    """
    edges = np.concatenate([[0.0], t]) if t[0] > 0 else t.astype(np.float64)
    mean = 0.5 * (b1[1:] + b1[:-1])
    values = np.concatenate([[0.0], mean]) if t[0] > 0 else mean
    if len(values) == 0:  # one sample: no duration, nothing to play
        return np.zeros(0, complex), edges[:1]
    keep = np.diff(edges) > 0
    return values[keep].astype(complex), np.concatenate([edges[:1], edges[1:][keep]])


@dataclass
class _GradTemplate:
    """Knots of one [GRADIENTS] row relative to the block start: times (s) and values (Hz/m)."""

    t: np.ndarray
    g: np.ndarray
    first_from_previous: bool
    """Before 1.5 the first value of an arbitrary gradient is not stored (see _first_values)."""
    last: float
    regular: bool
    """Samples on the regular gradient raster (not an extended trapezoid)."""


def _grad_templates(seq: SeqFile) -> list[_GradTemplate]:
    if "grad" not in seq.cache:
        seq.cache["grad"] = _compute_grad_templates(seq)
    templates: list[_GradTemplate] = seq.cache["grad"]
    return templates


def _compute_grad_templates(seq: SeqFile) -> list[_GradTemplate]:
    tab = seq.grad
    raster = seq.raster("GradientRasterTime")
    v15 = seq.version_combined >= 1_005_000
    out = []
    for r in range(len(tab.ids)):
        amp, first, last, shape_id, time_id, delay = tab.data[r]
        line = int(tab.lines[r])
        w = seq.shape(int(shape_id), line) * amp
        if len(w) == 0:
            raise SeqFormatError(seq.path, line, f"[GRADIENTS] shape {int(shape_id)} is empty")
        if time_id == 0:  # regular raster: samples at the centres of raster intervals
            n = len(w)
            t = np.concatenate([[0.0], (np.arange(n) + 0.5) * raster, [n * raster]]) + delay
            if not v15:
                # PyPulseq's extrapolation for files that store no last value
                last = (3 * w[-1] - w[-2]) * 0.5 if n > 1 else w[-1]
                first = 0.0
            g = np.concatenate([[first], w, [last]])
            out.append(_GradTemplate(t, g, not v15, float(last), True))
        else:
            if time_id == -1:  # oversampled: samples on half raster steps
                tt = 0.5 * (np.arange(len(w)) + 1) * raster
            else:
                tt = seq.shape(int(time_id), line) * raster
            if len(tt) != len(w):
                raise SeqFormatError(
                    seq.path,
                    line,
                    f"[GRADIENTS] time shape {int(time_id)} has {len(tt)} samples, "
                    f"amplitude shape {int(shape_id)} has {len(w)}",
                )
            if np.any(np.diff(tt) < 0):
                raise SeqFormatError(
                    seq.path, line, f"[GRADIENTS] time shape {int(time_id)} is not ascending"
                )
            out.append(_GradTemplate(tt + delay, w, False, float(w[-1]), False))
    return out


def _event_ends(
    seq: SeqFile, templates: list[_GradTemplate], rf: RfProperties
) -> dict[str, np.ndarray]:
    """End time (after block start) of every row of every event table."""
    trap = seq.trap.data
    adc = seq.adc.data
    trig = seq.extension_tables.get("TRIGGERS")
    return {
        "rf": rf.end,
        "grad": np.array([t.t[-1] for t in templates]) if templates else np.zeros(0),
        "trap": trap[:, 1:5].sum(axis=1) if len(trap) else np.zeros(0),
        "adc": adc[:, 2] + adc[:, 0] * adc[:, 1] if len(adc) else np.zeros(0),
        "trig": trig.data[:, 2] + trig.data[:, 3]
        if trig is not None and len(trig.data)
        else np.zeros(0),
    }


def _groups(rows: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Group positions by value: ``[(value, positions in ascending order), ...]``.

    The same as ``[(r, np.flatnonzero(rows == r)) for r in np.unique(rows)]`` in
    O(n log n) rather than O(n · distinct values).
    """
    if len(rows) == 0:
        return []
    order = np.argsort(rows, kind="stable")
    values, starts = np.unique(rows[order], return_index=True)
    parts = np.split(order, starts[1:])
    return list(zip(values.tolist(), parts, strict=True))


def _take(values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``values[rows]``, with 0 where ``rows`` is -1 (undefined or no event)."""
    padded = np.append(values, 0.0)
    return padded[np.where(rows >= 0, rows, len(values))]


def _undefined(seq: SeqFile, col: np.ndarray, rows: np.ndarray, what: str) -> None:
    bad = (col != 0) & (rows < 0)
    if bad.any():
        b = int(np.argmax(bad))
        raise SeqFormatError(
            seq.path,
            int(seq.block_lines[b]),
            f"block {int(seq.block_ids[b])} references undefined {what} id {int(col[b])}",
        )


@dataclass
class ExtensionUses:
    """Every use of a known extension by a block, in time order, each array of shape ``[uses]``.

    Uses within one block keep the order of the block's extension list.
    """

    block: np.ndarray
    """Block index (0-based row of the block table)."""
    name: np.ndarray
    """Extension name (``LABELSET``, ``TRIGGERS``, …), object array of str."""
    row: np.ndarray
    """Row in ``SeqFile.extension_tables[name]``."""

    def of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return the block indices and table rows of the uses of extension ``name``."""
        sel = self.name == name
        return self.block[sel], self.row[sel]


def _extension_uses(seq: SeqFile) -> ExtensionUses:
    if "ext" not in seq.cache:
        seq.cache["ext"] = _compute_extension_uses(seq)
    result: ExtensionUses = seq.cache["ext"]
    return result


def _compute_extension_uses(seq: SeqFile) -> ExtensionUses:
    """Walk all blocks' extension lists at once, one list step per iteration."""
    ext = seq.extensions
    blocks = np.flatnonzero(seq.blocks[:, EXT])
    ids = seq.blocks[blocks, EXT]
    found_block, found_step, found_type, found_ref = [], [], [], []
    prev_rows = np.zeros(len(blocks), np.int64)  # the list entry that led here (for errors)
    step = 0
    walked = 0
    limit = seq.limits.max_extension_uses
    while len(blocks):
        walked += len(blocks)
        if walked > limit:
            raise SeqLimitError(
                seq.path,
                int(seq.block_lines[blocks[0]]),
                "max_extension_uses",
                limit,
                walked,
                f"extension list entries walked (at step {step} of the lists)",
            )
        rows = ext.rows_of(ids)
        if (rows < 0).any():
            i = int(np.argmax(rows < 0))
            b = int(blocks[i])
            what = "extension" if step == 0 else "next extension"
            raise SeqFormatError(
                seq.path,
                int(seq.block_lines[b]) if step == 0 else int(ext.lines[prev_rows[i]]),
                f"block {int(seq.block_ids[b])} references undefined {what} id {int(ids[i])}",
            )
        if step > len(ext.ids):
            raise SeqFormatError(seq.path, int(ext.lines[rows[0]]), "extension list forms a cycle")
        data = ext.data[rows].astype(np.int64)
        found_block.append(blocks)
        found_step.append(np.full(len(blocks), step))
        found_type.append(data[:, 0])
        found_ref.append(data[:, 1])
        more = data[:, 2] != 0
        blocks, ids, prev_rows = blocks[more], data[more, 2], rows[more]
        step += 1
    if not found_block:
        empty = np.zeros(0, np.int64)
        return ExtensionUses(empty, np.zeros(0, object), empty)
    block = np.concatenate(found_block)
    order = np.lexsort((np.concatenate(found_step), block))
    block = block[order]
    types = np.concatenate(found_type)[order]
    refs = np.concatenate(found_ref)[order]
    names = np.array([seq.extension_names.get(int(t)) for t in types], dtype=object)
    known = names != None  # noqa: E711 (element-wise comparison)
    block, names, refs = block[known], names[known], refs[known]
    rows = np.zeros(len(refs), np.int64)
    for name in set(names.tolist()):
        sel = names == name
        tab = seq.extension_tables[name]
        r = tab.rows_of(refs[sel])
        if (r < 0).any():
            b = int(block[sel][np.argmax(r < 0)])
            raise SeqFormatError(
                seq.path,
                int(seq.block_lines[b]),
                f"block {int(seq.block_ids[b])}: {name} id {int(refs[sel][np.argmax(r < 0)])} "
                "is not defined",
            )
        rows[sel] = r
    return ExtensionUses(block, names, rows)


def _over(seq: SeqFile, block: int | None, limit: str, needed: int, what: str) -> SeqLimitError:
    """Return a SeqLimitError at ``block``'s line (or the file), naming ``seq.limits.<limit>``."""
    line = None if block is None else int(seq.block_lines[block])
    return SeqLimitError(seq.path, line, limit, getattr(seq.limits, limit), needed, what)


def _crossing(cumulative: np.ndarray, bound: float) -> int:
    """Index of the first entry of a non-decreasing array above ``bound``."""
    return int(np.searchsorted(cumulative, bound, side="right"))


def _check_adc_total(seq: SeqFile) -> None:
    """Check the ADC samples summed over all blocks against ``max_total_adc_samples``."""
    rows = seq.adc.rows_of(seq.blocks[:, ADC])
    per_block = _take(seq.adc.data[:, 0], rows) if len(seq.adc.ids) else np.zeros(len(rows))
    total = np.cumsum(per_block)
    limit = seq.limits.max_total_adc_samples
    if len(total) and total[-1] > limit:
        raise _over(
            seq, _crossing(total, limit), "max_total_adc_samples", int(total[-1]),
            "ADC samples summed over all blocks",
        )  # fmt: skip


def _shape_len(seq: SeqFile, shape_id: float) -> int:
    shape = seq.shapes.get(int(shape_id))
    return 0 if shape is None else len(shape.samples)


def _check_waveform_samples(seq: SeqFile) -> None:
    """Check the samples of the waveforms built from shapes against ``max_waveform_samples``.

    One per distinct RF (magnitude, phase, time) triple and one per [GRADIENTS] row, checked
    before any is built. Undefined shapes count 0 here (their own error comes later).
    """
    limit = seq.limits.max_waveform_samples
    total = 0
    if len(seq.rf.ids):
        keys, first = np.unique(seq.rf.data[:, 1:4].astype(np.int64), axis=0, return_index=True)
        for key, r in zip(keys.tolist(), first.tolist(), strict=True):
            total += _shape_len(seq, key[0])
            if total > limit:
                raise SeqLimitError(
                    seq.path, int(seq.rf.lines[r]), "max_waveform_samples", limit, total,
                    "RF and gradient waveform samples",
                )  # fmt: skip
    for r in range(len(seq.grad.ids)):
        total += _shape_len(seq, seq.grad.data[r, 3])
        if total > limit:
            raise SeqLimitError(
                seq.path, int(seq.grad.lines[r]), "max_waveform_samples", limit, total,
                "RF and gradient waveform samples",
            )  # fmt: skip


def validate_blocks(seq: SeqFile) -> None:
    """Check every reference of every block and fix block durations for files before 1.4.

    Raises
    ------
    SeqFormatError
        A block references an event, shape or extension that is not defined, or (1.4+) an event
        lasts longer than its block.
    """
    blocks = seq.blocks
    if len(blocks) == 0:
        return
    _check_adc_total(seq)
    _check_waveform_samples(seq)
    rf = _rf_properties(seq)
    templates = _grad_templates(seq)
    ends = _event_ends(seq, templates, rf)

    block_end = np.zeros(len(blocks))
    rf_rows = seq.rf.rows_of(blocks[:, RF])
    _undefined(seq, blocks[:, RF], rf_rows, "RF")
    block_end = np.maximum(block_end, _take(ends["rf"], rf_rows))
    for c, axis in zip((GX, GY, GZ), "xyz", strict=True):
        trap_rows = seq.trap.rows_of(blocks[:, c])
        grad_rows = seq.grad.rows_of(blocks[:, c])
        _undefined(seq, blocks[:, c], np.maximum(trap_rows, grad_rows), f"gradient (g{axis})")
        e = np.maximum(_take(ends["trap"], trap_rows), _take(ends["grad"], grad_rows))
        block_end = np.maximum(block_end, e)
    adc_rows = seq.adc.rows_of(blocks[:, ADC])
    _undefined(seq, blocks[:, ADC], adc_rows, "ADC")
    block_end = np.maximum(block_end, _take(ends["adc"], adc_rows))
    for r in range(len(seq.adc.ids)):
        phase_id = int(seq.adc.data[r, 7])
        if phase_id:
            n = int(seq.adc.data[r, 0])
            if len(seq.shape(phase_id, int(seq.adc.lines[r]))) != n:
                raise SeqFormatError(
                    seq.path,
                    int(seq.adc.lines[r]),
                    f"[ADC] phase shape {phase_id} needs {n} samples",
                )
    trig_blocks, trig_rows = _extension_uses(seq).of("TRIGGERS")
    np.maximum.at(block_end, trig_blocks, ends["trig"][trig_rows] if len(trig_rows) else 0.0)

    if seq.version_combined < 1_004_000:
        delay_rows = seq.delays.rows_of(blocks[:, DELAY])
        _undefined(seq, blocks[:, DELAY], delay_rows, "delay")
        delay = _take(seq.delays.data[:, 0], delay_rows)
        seq.block_durations = np.maximum(block_end, delay)
    else:
        over = block_end > seq.block_durations + 1e-9
        if over.any():
            b = int(np.argmax(over))
            raise SeqFormatError(
                seq.path,
                int(seq.block_lines[b]),
                f"block {int(seq.block_ids[b])}: events last {block_end[b] * 1e6:.3f} us, "
                f"longer than the block duration {seq.block_durations[b] * 1e6:.3f} us",
            )
    block_ends = np.cumsum(seq.block_durations)
    too_long = ~(block_ends <= MAX_DURATION_S)  # NaN and inf too
    if too_long.any():
        b = int(np.argmax(too_long))
        raise SeqFormatError(
            seq.path,
            int(seq.block_lines[b]),
            f"block {int(seq.block_ids[b])} ends at {block_ends[b]:.6g} s, beyond the "
            f"{MAX_DURATION_S:.0f} s a sequence may last",
        )


# -- the gradient moment integral --------------------------------------------------------------


class _Moment:
    """Cumulative gradient moment ∫₀ᵗ g(t') dt' (1/m) of one channel, from linear pieces."""

    def __init__(self, t0: np.ndarray, t1: np.ndarray, g0: np.ndarray, g1: np.ndarray) -> None:
        order = np.argsort(t0, kind="stable")
        self.t0, self.t1, self.g0, self.g1 = t0[order], t1[order], g0[order], g1[order]
        self.dur = self.t1 - self.t0
        with np.errstate(divide="ignore", invalid="ignore"):
            self.slope = np.where(self.dur > 0, (self.g1 - self.g0) / self.dur, 0.0)
        area = 0.5 * (self.g0 + self.g1) * self.dur
        self.before = np.concatenate([[0.0], np.cumsum(area)])

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Return the moment at the sorted times ``t`` (s), shape like ``t``, in 1/m."""
        if len(self.t0) == 0:
            return np.zeros_like(t)
        # Pieces of one channel never overlap (each event fits in its block), so all pieces
        # before the last one that starts at or before t are complete. Queries are sorted, so
        # those before the first piece (k = -1) form a prefix.
        k = np.searchsorted(self.t0, t, side="right") - 1
        n0 = int(np.searchsorted(k, 0))
        kk = k[n0:]
        dt = np.minimum(t[n0:] - self.t0[kk], self.dur[kk])
        out = np.zeros_like(t)
        out[n0:] = self.before[kk] + dt * (self.g0[kk] + 0.5 * self.slope[kk] * dt)
        return out


def _first_values(
    seq: SeqFile, templates: list[_GradTemplate], col: int, occ_blocks: np.ndarray
) -> np.ndarray:
    """Return the first values of old-format arbitrary gradients.

    Files before 1.5 do not store them. As PyPulseq does, take the previous block's last value on
    the same axis if that gradient ran to the end of its block and this one has no delay, else 0.
    """
    if templates[seq.grad.row(int(seq.blocks[occ_blocks[0], col]))].t[0] > 0:
        return np.zeros(len(occ_blocks))  # delayed: starts from zero
    prev = occ_blocks - 1
    out = np.zeros(len(occ_blocks))
    valid = prev >= 0
    prev_ids = np.where(valid, seq.blocks[np.maximum(prev, 0), col], 0)
    prev_rows = seq.grad.rows_of(prev_ids)
    for i in np.flatnonzero(valid & (prev_rows >= 0)).tolist():
        tpl = templates[prev_rows[i]]
        if abs(tpl.t[-1] - seq.block_durations[prev[i]]) < 1e-9:
            out[i] = tpl.last
    return out


def _channel_pieces(
    seq: SeqFile,
    templates: list[_GradTemplate],
    col: int,
    starts: np.ndarray,
    knots_out: list[np.ndarray],
    all_knots: bool,
) -> _Moment:
    ids = seq.blocks[:, col]
    t0s, t1s, g0s, g1s = [], [], [], []
    trap_rows = seq.trap.rows_of(ids)
    occ = np.flatnonzero(trap_rows >= 0)
    if len(occ):
        amp, rise, flat, fall, delay = seq.trap.data[trap_rows[occ]].T
        s = starts[occ] + delay
        k = np.stack([s, s + rise, s + rise + flat, s + rise + flat + fall], axis=1)
        z = np.zeros_like(amp)
        v = np.stack([z, amp, amp, z], axis=1)
        t0s.append(k[:, :3].ravel())
        t1s.append(k[:, 1:].ravel())
        g0s.append(v[:, :3].ravel())
        g1s.append(v[:, 1:].ravel())
        knots_out.append(k.ravel() if all_knots else k[:, [0, 3]].ravel())
    grad_rows = seq.grad.rows_of(ids)
    occ = np.flatnonzero(grad_rows >= 0)
    if len(occ):
        for r, where in _groups(grad_rows[occ]):
            blocks_r = occ[where]
            tpl = templates[r]
            s = starts[blocks_r][:, None]
            t = tpl.t[None, :] + s
            g = np.broadcast_to(tpl.g, t.shape).copy()
            if tpl.first_from_previous:
                g[:, 0] = _first_values(seq, templates, col, blocks_r)
            t0s.append(t[:, :-1].ravel())
            t1s.append(t[:, 1:].ravel())
            g0s.append(g[:, :-1].ravel())
            g1s.append(g[:, 1:].ravel())
            if all_knots and not tpl.regular:
                knots_out.append(t.ravel())
            else:
                knots_out.append(t[:, [0, -1]].ravel())
    if not t0s:
        return _Moment(*(np.zeros(0) for _ in range(4)))
    return _Moment(
        np.concatenate(t0s), np.concatenate(t1s), np.concatenate(g0s), np.concatenate(g1s)
    )


# -- labels, shims, rotations ------------------------------------------------------------------


def _labels_per_block(seq: SeqFile, uses: ExtensionUses) -> dict[str, np.ndarray]:
    """Value of every label after each block's label extensions, shape ``[blocks]`` per label.

    A SET replaces the value, an INC adds to it, in time order; before any use a label is 0.
    """
    sel = (uses.name == "LABELSET") | (uses.name == "LABELINC")
    if not sel.any():
        return {}
    block, kind, row = uses.block[sel], uses.name[sel], uses.row[sel]
    is_set = kind == "LABELSET"
    value = np.zeros(len(row), np.int64)
    label = np.empty(len(row), dtype=object)
    for name, m in (("LABELSET", is_set), ("LABELINC", ~is_set)):
        if m.any():
            tab = seq.extension_tables[name]
            value[m] = tab.data[row[m], 0].astype(np.int64)
            label[m] = [tab.text[r][0] for r in row[m].tolist()]
    out = {}
    n = len(seq.blocks)
    for name in sorted(set(label.tolist())):
        m = label == name
        b, v, st = block[m], value[m], is_set[m]
        # value after use j = (value of the last SET at or before j) + INCs since that SET
        inc = np.cumsum(np.where(st, 0, v))
        last_set = np.maximum.accumulate(np.where(st, np.arange(len(v)), -1))
        base = np.where(last_set >= 0, v[np.maximum(last_set, 0)] - inc[np.maximum(last_set, 0)], 0)
        after = base + inc
        # per block: the value after the last use at or before it
        pos = np.searchsorted(b, np.arange(n), side="right") - 1
        out[name] = np.where(pos >= 0, after[np.maximum(pos, 0)], 0)
    return out


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


# -- the size of the conversion, before it allocates ---------------------------------------------


@dataclass(frozen=True)
class ConversionSize:
    """What converting a :class:`SeqFile` will allocate, counted from its tables alone.

    Counts are upper bounds (coinciding cuts merge into one event).
    """

    repetitions: int
    """RF pulses plus one (the time before the first pulse)."""
    events: int
    """Cuts of the time line: pulses, ADC samples, gradient corners, rotated block bounds."""
    adc_samples: int
    """ADC samples of the whole sequence."""
    gradient_pieces: int
    """Linear pieces of the gradient waveforms of all blocks and axes."""
    labels: int
    """Distinct label names used."""
    bytes: int
    """Estimated peak memory of the conversion in bytes, the parsed file it reads included."""
    block_bytes: np.ndarray
    """Cumulative estimate after each block, shape ``[blocks]`` (bytes; to name a line)."""
    block_events: np.ndarray
    """Cumulative events after each block, shape ``[blocks]``."""


def conversion_size(seq: SeqFile, exact_trajectories: bool = True) -> ConversionSize:
    """Count what :func:`seq_to_sequence` will allocate for ``seq``, without converting it.

    Costs only ``O(blocks)`` small arrays. The byte estimate is the sum of each count times its
    measured cost (``BYTES_PER_*`` in this module), plus the parsed shapes and gradient
    waveforms that the conversion reads.

    Parameters
    ----------
    seq
        A validated file (from :func:`mr0core.pulseq.read_seq`).
    exact_trajectories
        As for :func:`seq_to_sequence` (more cuts at gradient corners).
    """
    blocks = seq.blocks
    nb = len(blocks)
    templates = _grad_templates(seq)
    uses = _extension_uses(seq)
    events = (blocks[:, RF] != 0).astype(np.int64)  # one cut per pulse
    adc_rows = seq.adc.rows_of(blocks[:, ADC])
    adc = _take(seq.adc.data[:, 0], adc_rows).astype(np.int64) if len(seq.adc.ids) else 0 * events
    events = events + adc
    pieces = np.zeros(nb, np.int64)
    tpl_pieces = np.array([len(t.t) - 1 for t in templates], np.int64)
    tpl_knots = np.array(
        [len(t.t) if exact_trajectories and not t.regular else 2 for t in templates], np.int64
    )
    for c in (GX, GY, GZ):
        has_trap = seq.trap.rows_of(blocks[:, c]) >= 0
        events += has_trap * (4 if exact_trajectories else 2)
        pieces += has_trap * 3
        grad_rows = seq.grad.rows_of(blocks[:, c])
        if len(templates):
            events += _take(tpl_knots.astype(np.float64), grad_rows).astype(np.int64)
            pieces += _take(tpl_pieces.astype(np.float64), grad_rows).astype(np.int64)
    rot_blocks, _ = uses.of("ROTATIONS")
    np.add.at(events, rot_blocks, 2)
    label_names = {
        seq.extension_tables[name].text[r][0]
        for name in ("LABELSET", "LABELINC")
        for r in uses.of(name)[1].tolist()
    }
    n_labels = len(label_names)
    reps = (blocks[:, RF] != 0).astype(np.int64)
    per_block = (
        BYTES_PER_BLOCK
        + reps * (BYTES_PER_REPETITION + n_labels * BYTES_PER_LABEL_REPETITION)
        + events * (BYTES_PER_EVENT + n_labels * BYTES_PER_LABEL_EVENT)
        + adc * BYTES_PER_ADC_SAMPLE
        + pieces * BYTES_PER_GRADIENT_PIECE
        + n_labels * BYTES_PER_LABEL_BLOCK
    )
    fixed = (
        BYTES_PER_REPETITION  # the repetition before the first pulse
        + 2 * BYTES_PER_EVENT  # the cuts at 0 and at the end
        + BYTES_PER_SHAPE_SAMPLE * sum(len(s.samples) for s in seq.shapes.values())
        + BYTES_PER_WAVEFORM_SAMPLE * int(sum(len(t.t) for t in templates))
    )
    block_bytes = fixed + np.cumsum(per_block)
    block_events = 2 + np.cumsum(events)
    return ConversionSize(
        repetitions=int(reps.sum()) + 1,
        events=int(block_events[-1]) if nb else 2,
        adc_samples=int(np.sum(adc)),
        gradient_pieces=int(pieces.sum()),
        labels=n_labels,
        bytes=int(block_bytes[-1]) if nb else fixed,
        block_bytes=block_bytes,
        block_events=block_events,
    )


def estimate_conversion_bytes(seq: SeqFile, exact_trajectories: bool = True) -> int:
    """Return the estimated peak memory of :func:`seq_to_sequence` on ``seq`` in bytes.

    An upper estimate, the parsed file included (see :func:`conversion_size`).
    """
    return conversion_size(seq, exact_trajectories).bytes


def check_conversion(
    seq: SeqFile, exact_trajectories: bool = True, limits: SeqLimits | None = None
) -> ConversionSize:
    """Refuse a conversion that would exceed ``limits`` (default ``seq.limits``).

    Raises
    ------
    SeqLimitError
        Naming ``max_repetitions``, ``max_events`` or ``max_memory_bytes``, and the line of the
        block where the count passes the bound.
    """
    limits = seq.limits if limits is None else check_limits(limits)
    size = conversion_size(seq, exact_trajectories)
    if size.repetitions > limits.max_repetitions:
        rf_blocks = np.flatnonzero(seq.blocks[:, RF])
        block = int(rf_blocks[max(limits.max_repetitions - 1, 0)])
        raise SeqLimitError(
            seq.path, int(seq.block_lines[block]), "max_repetitions", limits.max_repetitions,
            size.repetitions, "repetitions (RF pulses + 1)",
        )  # fmt: skip
    for name, needed, cumulative, what in (
        ("max_events", size.events, size.block_events, "events (upper count)"),
        ("max_memory_bytes", size.bytes, size.block_bytes, "estimated conversion bytes"),
    ):
        bound = getattr(limits, name)
        if needed > bound:
            block = min(_crossing(cumulative, bound), len(cumulative) - 1)
            line = int(seq.block_lines[block]) if len(cumulative) else None
            raise SeqLimitError(seq.path, line, name, bound, needed, what)
    return size


# -- the conversion ----------------------------------------------------------------------------


@overload
def seq_to_sequence(
    seq: SeqFile,
    exact_trajectories: bool = True,
    default_shim: torch.Tensor | None = None,
    return_info: Literal[False] = False,
    *,
    limits: SeqLimits | None = None,
) -> Sequence: ...
@overload
def seq_to_sequence(
    seq: SeqFile,
    exact_trajectories: bool,
    default_shim: torch.Tensor | None,
    return_info: Literal[True],
    *,
    limits: SeqLimits | None = None,
) -> tuple[Sequence, ConversionInfo]: ...
@overload
def seq_to_sequence(
    seq: SeqFile,
    exact_trajectories: bool = True,
    default_shim: torch.Tensor | None = None,
    *,
    return_info: Literal[True],
    limits: SeqLimits | None = None,
) -> tuple[Sequence, ConversionInfo]: ...
@overload
def seq_to_sequence(
    seq: SeqFile,
    exact_trajectories: bool = True,
    default_shim: torch.Tensor | None = None,
    return_info: bool = False,
    *,
    limits: SeqLimits | None = None,
) -> Sequence | tuple[Sequence, ConversionInfo]: ...
def seq_to_sequence(
    seq: SeqFile,
    exact_trajectories: bool = True,
    default_shim: torch.Tensor | None = None,
    return_info: bool = False,
    *,
    limits: SeqLimits | None = None,
) -> Sequence | tuple[Sequence, ConversionInfo]:
    """Convert a validated :class:`SeqFile` into a :class:`Sequence` (CPU, float32).

    Parameters
    ----------
    seq
        The parsed file (from :func:`mr0core.pulseq.read_seq`).
    exact_trajectories
        Also cut events at every trapezoid and extended-trapezoid corner.
    default_shim
        ``[channels, 2]`` shim for pulses without an RF_SHIMS extension; default ``[[1, 0]]``.
    return_info
        Also return a :class:`ConversionInfo`.
    limits
        Bounds on repetitions, events and memory (:class:`mr0core.pulseq.SeqLimits`); default
        the ones the file was read with (``seq.limits``). Checked before anything is allocated.

    Raises
    ------
    SeqLimitError
        The conversion would exceed ``limits`` (see :func:`check_conversion`).
    """
    check_conversion(seq, exact_trajectories, limits)
    blocks = seq.blocks
    nb = len(blocks)
    durations = seq.block_durations
    ends = np.cumsum(durations)
    starts = ends - durations
    if seq.version_combined >= 1_004_000:
        # exact block starts on the duration raster (avoids drift of the float cumsum)
        raster = seq.raster("BlockDurationRaster")
        counts = np.round(durations / raster).astype(np.int64)
        starts = (np.cumsum(counts) - counts) * raster
        ends = starts + durations
    total = float(ends[-1]) if nb else 0.0
    uses = _extension_uses(seq)

    # RF pulses
    rf = _rf_properties(seq)
    rf_blocks = np.flatnonzero(blocks[:, RF])
    rf_rows = seq.rf.rows_of(blocks[rf_blocks, RF])
    pulse_t = starts[rf_blocks] + rf.center[rf_rows]
    back = np.flatnonzero(np.diff(pulse_t) < 0)
    if len(back):  # each pulse lies in its block (validated), so only a broken file gets here
        b = int(rf_blocks[back[0] + 1])
        raise SeqFormatError(
            seq.path, int(seq.block_lines[b]), f"block {int(seq.block_ids[b])}: RF pulse "
            "centre lies before the previous pulse's",
        )  # fmt: skip

    # ADC samples
    adc_blocks = np.flatnonzero(blocks[:, ADC])
    adc_rows = seq.adc.rows_of(blocks[adc_blocks, ADC])
    adc_t_parts, adc_ph_parts, adc_block_parts = [], [], []
    gamma_b0 = GAMMA_HZ_PER_T * _b0(seq)
    for r, where in _groups(adc_rows):
        num, dwell, delay, f_ppm, p_ppm, freq, ph, phase_id = seq.adc.data[r]
        rel = (np.arange(int(num)) + 0.5) * dwell
        rx = ph + p_ppm * 1e-6 * gamma_b0 + 2 * math.pi * (freq + f_ppm * 1e-6 * gamma_b0) * rel
        if phase_id:
            rx = rx + seq.shape(int(phase_id), int(seq.adc.lines[r]))
        bl = adc_blocks[where]
        adc_t_parts.append((starts[bl][:, None] + delay + rel[None, :]).ravel())
        adc_ph_parts.append(np.broadcast_to(rx, (len(bl), len(rx))).ravel())
        adc_block_parts.append(np.repeat(bl, len(rel)))
    if adc_t_parts:
        adc_t = np.concatenate(adc_t_parts)
        order = np.argsort(adc_t, kind="stable")
        adc_t = adc_t[order]
        adc_rx = np.concatenate(adc_ph_parts)[order]
        adc_block = np.concatenate(adc_block_parts)[order]
    else:
        adc_t = np.zeros(0)
        adc_rx = np.zeros(0)
        adc_block = np.zeros(0, np.int64)

    # Gradients
    templates = _grad_templates(seq)
    knots: list[np.ndarray] = []
    moments = [
        _channel_pieces(seq, templates, c, starts, knots, exact_trajectories) for c in (GX, GY, GZ)
    ]

    # Rotations (1.5 ROTATIONS extension): cut at the rotated blocks' boundaries
    rotations: dict[int, np.ndarray] = {}
    rot_blocks, rot_rows = uses.of("ROTATIONS")
    for b, r in zip(rot_blocks.tolist(), rot_rows.tolist(), strict=True):
        rotations[b] = _quaternion_matrix(seq.extension_tables["ROTATIONS"].data[r])
    if rotations:
        knots.append(np.concatenate([starts[rot_blocks], ends[rot_blocks]]))

    # The time line: every cut on a 1 ps grid
    def quantise(t: npt.ArrayLike) -> np.ndarray:
        return np.round(np.asarray(t) / TIME_QUANTUM).astype(np.int64)

    cut_parts = [quantise([0.0, total]), quantise(pulse_t), quantise(adc_t)]
    cut_parts += [quantise(k) for k in knots if len(k)]
    cuts = np.sort(np.concatenate(cut_parts))
    cuts = cuts[np.concatenate([[True], cuts[1:] != cuts[:-1]])]  # unique; faster than np.unique
    cuts = cuts[(cuts >= 0) & (cuts <= quantise(total))]
    times = cuts * TIME_QUANTUM
    n_events = len(cuts) - 1

    event_time = np.diff(times)
    gradm = (
        np.stack([np.diff(m(times)) for m in moments], axis=1) if n_events > 0 else np.zeros((0, 3))
    )
    if rotations:
        mid = 0.5 * (times[:-1] + times[1:])
        ev_block = np.searchsorted(starts, mid, side="right") - 1  # non-decreasing
        for b, mat in rotations.items():
            lo, hi = np.searchsorted(ev_block, [b, b + 1])
            gradm[lo:hi] = gradm[lo:hi] @ mat.T

    adc_event = np.searchsorted(cuts, quantise(adc_t)) - 1
    adc_usage = np.zeros(n_events, np.int32)
    adc_phase = np.zeros(n_events)
    adc_usage[adc_event] = 1
    adc_phase[adc_event] = math.pi / 2 - adc_rx

    # Labels, per event (meaningful at ADC events)
    block_labels = _labels_per_block(seq, uses)
    event_labels = {}
    for name, per_block in block_labels.items():
        lab = np.zeros(n_events, np.int32)
        lab[adc_event] = per_block[adc_block]
        event_labels[name] = lab

    # Repetitions: a new one at every pulse; a zero pulse covers the time before the first
    pulse_cut = np.searchsorted(cuts, quantise(pulse_t))
    rep_starts = pulse_cut.tolist()
    pulses_for_reps: list[int | None] = list(range(len(rf_blocks)))
    if not rep_starts or rep_starts[0] > 0:
        rep_starts = [0, *rep_starts]
        pulses_for_reps = [None, *pulses_for_reps]
    sizes = np.diff([*rep_starts, n_events]).tolist()

    t_event = torch.split(torch.from_numpy(event_time.astype(np.float32)), sizes)
    t_gradm = torch.split(torch.from_numpy(gradm.astype(np.float32)), sizes)
    t_phase = torch.split(torch.from_numpy(adc_phase.astype(np.float32)), sizes)
    t_usage = torch.split(torch.from_numpy(adc_usage), sizes)
    t_labels = {k: torch.split(torch.from_numpy(v), sizes) for k, v in event_labels.items()}

    shims = _pulse_shims(seq, uses, rf_blocks, default_shim)
    waveforms = _pulse_waveforms(seq, rf, rf_rows, rf_blocks, starts, moments, rotations)
    angles = torch.from_numpy(rf.angle[rf_rows].astype(np.float32)).unbind()
    phases = torch.from_numpy(rf.phase[rf_rows].astype(np.float32)).unbind()
    usages = [rf.usage[r] for r in rf_rows.tolist()]
    reps = []
    for i, p in enumerate(pulses_for_reps):
        pulse = (
            Pulse.zero()
            if p is None
            else Pulse._trusted(usages[p], angles[p], phases[p], shims[p], True, waveforms[p])
        )
        labels = {k: v[i] for k, v in t_labels.items()}
        reps.append(
            Repetition._trusted(pulse, t_event[i], t_gradm[i], t_phase[i], t_usage[i], labels)
        )

    out = Sequence(reps, normalized_grads=False)
    out.definitions = {
        "format": "pulseq",
        "version": seq.version_str,
        "source": seq.path,
        **{k: v for k, v in seq.definitions.items()},
    }
    if not return_info:
        return out
    info = ConversionInfo(
        rf_rows=rf_rows,
        rf=rf,
        pulse_times=pulse_t,
        adc_times=adc_t,
        label_names=sorted(block_labels),
        trigger_count=int(np.sum(uses.name == "TRIGGERS")),
        soft_delay_hints=sorted(
            {t[0] for t in seq.extension_tables["DELAYS"].text}
            if "DELAYS" in seq.extension_tables
            else set()
        ),
    )
    return out, info


_WAVEFORM_CHUNK = 1 << 20  # pulses x step edges per chunk of the gradient sampling


def _pulse_waveforms(
    seq: SeqFile, rf: RfProperties, rf_rows: np.ndarray, rf_blocks: np.ndarray,
    starts: np.ndarray, moments: list[_Moment], rotations: dict[int, np.ndarray],
) -> list[RfWaveform | None]:  # fmt: skip
    """Return every pulse's :class:`RfWaveform`; pulses with equal waveforms share one.

    The B1 of a pulse is ``amplitude · shape · exp(−2πi f (t − centre))`` with the pulse's full
    frequency offset ``f`` (Hz, ppm terms included), without its constant phase offset: the
    slice of a pulse played with the gradient ``G`` lies at ``G·r = f`` (the position Pulseq
    computes the offset for). The gradient of each step is its exact mean (the moment over the
    step divided by its duration), rotated like the block. Pulses whose [RF] rows differ only in
    their phase offsets (RF spoiling) and whose gradients agree share one waveform.
    """
    out: list[RfWaveform | None] = [None] * len(rf_rows)
    if len(rf_rows) == 0:
        return out
    tab = seq.rf
    gamma_b0 = GAMMA_HZ_PER_T * _b0(seq)
    # rows that differ only in phase offsets (columns 7 and 9) share a waveform
    row_keys = np.nan_to_num(tab.data[:, [0, 1, 2, 3, 4, 5, 6, 8]], nan=-1.0)
    _, key_of_row = np.unique(row_keys, axis=0, return_inverse=True)
    probe = np.random.default_rng(0)
    stored = 0
    limit = seq.limits.max_waveform_samples
    for _, where in _groups(key_of_row.reshape(-1)[rf_rows]):
        r = int(rf_rows[where[0]])
        amp, _mag, _ph, _time, _c, delay, f_ppm, p_ppm, freq, ph = tab.data[r]
        b1_shape, edges = rf.steps[rf.shape_keys[r]]
        if len(b1_shape) == 0:
            continue
        dt = np.diff(edges)
        c_rel = float(rf.center[r] - delay)
        full_freq = freq + f_ppm * 1e-6 * gamma_b0
        mid = 0.5 * (edges[1:] + edges[:-1])
        b1 = amp * b1_shape * np.exp(-2j * math.pi * full_freq * (mid - c_rel))
        offset = ph + p_ppm * 1e-6 * gamma_b0 + 2 * math.pi * full_freq * c_rel
        b1_t = torch.from_numpy(b1.astype(np.complex64))
        dt_t = torch.from_numpy(dt.astype(np.float32))
        weights = probe.standard_normal(3 * len(dt))
        made: dict[float, tuple[np.ndarray, RfWaveform]] = {}
        chunk = max(1, _WAVEFORM_CHUNK // len(edges))
        for lo in range(0, len(where), chunk):
            part = where[lo : lo + chunk]
            t = (starts[rf_blocks[part]] + delay)[:, None] + edges[None, :]  # [P, N + 1]
            g = np.stack(
                [np.diff(m(t.ravel()).reshape(t.shape), axis=1) / dt for m in moments], axis=2
            )  # [P, N, 3] Hz/m
            for i, p in enumerate(part.tolist()):
                gp = g[i]
                mat = rotations.get(int(rf_blocks[p]))
                if mat is not None:
                    gp = gp @ mat.T
                scale = float(np.abs(gp).max()) + 1.0
                fingerprint = round(float(gp.ravel() @ weights) / scale, 6)
                known = made.get(fingerprint)
                if known is None or not np.allclose(known[0], gp, rtol=0, atol=1e-6 * scale):
                    stored += len(dt)
                    if stored > limit:
                        raise SeqLimitError(
                            seq.path, int(tab.lines[r]), "max_waveform_samples", limit, stored,
                            "RF waveform steps kept for shaped-pulse simulation",
                        )  # fmt: skip
                    wave = RfWaveform(
                        b1_t, dt_t, torch.from_numpy(gp.astype(np.float32)), c_rel,
                        float(rf.angle[r]), float(rf.phase[r] - offset),
                    )  # fmt: skip
                    known = (gp, wave)
                    made.setdefault(fingerprint, known)
                out[p] = known[1]
    return out


def _pulse_shims(
    seq: SeqFile,
    uses: ExtensionUses,
    rf_blocks: np.ndarray,
    default_shim: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Return the ``[channels, 2]`` shim of every pulse: RF_SHIMS, else ``default_shim``."""
    default = (
        np.array([[1.0, 0.0]]) if default_shim is None else np.asarray(default_shim, np.float64)
    )
    if default.ndim != 2 or default.shape[1] != 2:
        raise ValueError(f"default_shim must have shape [channels, 2], got {default.shape}")
    special: dict[int, np.ndarray] = {}
    shim_blocks, shim_rows = uses.of("RF_SHIMS")
    pulse_of_block = {b: i for i, b in enumerate(rf_blocks.tolist())}
    for b, r in zip(shim_blocks.tolist(), shim_rows.tolist(), strict=True):
        if b in pulse_of_block:
            row = seq.extension_tables["RF_SHIMS"].data[r]
            n = int(row[0])
            special[pulse_of_block[b]] = row[1 : 1 + 2 * n].reshape(n, 2)
    if not special:  # one tensor for all pulses, unbound into separate views
        stacked = np.broadcast_to(default, (len(rf_blocks), *default.shape))
        return list(torch.from_numpy(stacked.astype(np.float32)).unbind())
    return [
        torch.from_numpy(special.get(i, default).astype(np.float32)) for i in range(len(rf_blocks))
    ]

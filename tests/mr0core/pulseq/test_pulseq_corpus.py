"""Every real Pulseq file of the corpus imports and agrees with PyPulseq, the reference reader."""

from __future__ import annotations

import math
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
from conftest import CORPUS, CORPUS_FILES, SHARED

import mr0core as mr0
from mr0core.pulseq import read_seq

SHARED_CORPUS = SHARED / "seq-corpus"


@cache
def reference(path: Path) -> dict:
    """What PyPulseq says about a file: ADC times, k-space of every sample, duration, labels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq = pp.Sequence()
        seq.read(str(path))
        k_adc, _, _, _, t_adc = seq.calculate_kspace()
        labels = seq.evaluate_labels(evolution="adc") if len(t_adc) else {}
        # PyPulseq gives one label value per ADC event; we keep one per sample
        samples = [
            seq.get_block(b).adc.num_samples
            for b in seq.block_events
            if seq.block_events[b][5] != 0
        ]
    labels = {k: np.repeat(np.asarray(v), samples) for k, v in labels.items()}
    return {
        "k_adc": np.asarray(k_adc).T,
        "t_adc": np.asarray(t_adc),
        "duration": seq.duration()[0],
        "labels": labels,
    }


@cache
def imported(path: Path) -> mr0.Sequence:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mr0.Sequence.import_file(path)


def test_corpus_is_complete() -> None:
    assert len(CORPUS_FILES) == 31
    if SHARED_CORPUS.is_dir():  # our copy must equal the shared corpus when it is present
        shared = sorted(SHARED_CORPUS.glob("*.seq"))
        assert [p.name for p in shared] == [p.name for p in CORPUS_FILES]
        for a, b in zip(shared, CORPUS_FILES, strict=True):
            assert a.read_bytes() == b.read_bytes(), a.name


def test_adc_count_and_duration_match_pypulseq(corpus_file: Path) -> None:
    seq = imported(corpus_file)
    ref = reference(corpus_file)
    assert seq.get_kspace().shape[0] == len(ref["t_adc"])
    assert seq.get_duration() == pytest.approx(ref["duration"], rel=1e-6, abs=1e-9)
    # every ADC sample sits at its true time: event ends, summed in float64 (event durations are
    # float32 as in MR-zero, so the sum carries a relative error of ~1e-7)
    times = []
    t = 0.0
    for rep in seq:
        ends = t + np.cumsum(rep.event_time.double().numpy())
        times.append(ends[rep.adc_usage.numpy() > 0])
        t = ends[-1] if len(ends) else t
    times = np.concatenate(times) if times else np.zeros(0)
    np.testing.assert_allclose(times, ref["t_adc"], rtol=2e-7, atol=1e-9)


def test_kspace_matches_pypulseq(corpus_file: Path) -> None:
    """k of every ADC sample within 10⁻⁵ of k_max of PyPulseq's calculate_kspace (same sign)."""
    ref = reference(corpus_file)
    if len(ref["t_adc"]) == 0:
        pytest.skip("file has no ADC")
    k = imported(corpus_file).get_kspace()[:, :3].double().numpy()
    k_ref = ref["k_adc"]
    k_max = np.abs(k_ref).max()
    err = np.abs(k - k_ref).max()
    # measured: at most 2.4e-6 of k_max over the corpus (float32 sample times and moments)
    assert err <= 1e-5 * max(k_max, 1e-9) + 1e-9, f"max error {err} for k_max {k_max}"


def test_labels_match_pypulseq(corpus_file: Path) -> None:
    ref = reference(corpus_file)["labels"]
    labels = imported(corpus_file).get_labels()
    for name, values in ref.items():
        if not np.any(values) and name not in labels:
            continue  # PyPulseq reports every known label; absent ones are all zero
        np.testing.assert_array_equal(labels[name].numpy(), values, err_msg=name)
    assert set(labels) <= set(ref)


def test_signature_verifies() -> None:
    for path in CORPUS_FILES:
        parsed = read_seq(path)
        if "[SIGNATURE]" in path.read_text():
            assert parsed.signature_ok is True, path.name


def test_block_pulse_flip_angles() -> None:
    """seq_make_block_pulses.seq: PyPulseq made block pulses of 1 rad, 1 rad and four of 90°."""
    seq = imported(CORPUS / "seq_make_block_pulses.seq")
    angles = [float(rep.pulse.angle) for rep in seq if float(rep.pulse.angle) != 0]
    # amplitude x duration from the file: 39.7887 Hz x 4 ms, 62.5 Hz x 4 ms, 250 Hz x 1 ms, ...
    nominal = [1.0, 1.0, math.pi / 2, math.pi / 2, math.pi / 2, math.pi / 2, math.pi / 2]
    assert len(angles) == len(nominal)
    np.testing.assert_allclose(angles, nominal, rtol=1e-3)
    phases = [float(rep.pulse.phase) for rep in seq if float(rep.pulse.angle) != 0]
    # rf 5 and 6 carry a phase offset of pi/2; rf 6 also 1 kHz offset over its 0.5 ms centre
    assert phases[4] == pytest.approx(math.pi / 2, abs=1e-4)  # file stores 1.5708
    assert math.remainder(phases[5] - (math.pi / 2 + 2 * math.pi * 1000 * 0.5e-3), 2 * math.pi) == (
        pytest.approx(0, abs=1e-5)
    )


def test_sinc_and_gauss_flip_angles_are_nominal() -> None:
    """The sinc and Gauss files hold pulses PyPulseq built for nominal angles; the small-tip
    angle 2π|∫B1 dt| recovers them (the sinc's negative lobes are stored as phase ½)."""
    for name in ("seq_make_sinc_pulses.seq", "seq_make_gauss_pulses.seq"):
        seq = imported(CORPUS / name)
        ref = pp.Sequence()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref.read(str(CORPUS / name))
        expected = []
        for b in ref.block_events:
            rf = ref.get_block(b).rf
            if rf is not None:
                dt = np.diff(
                    np.concatenate([[0.0], rf.t])
                )  # independent quadrature of PyPulseq's signal
                expected.append(abs(np.sum(rf.signal * dt)) * 2 * math.pi)
        angles = [float(rep.pulse.angle) for rep in seq if rep.pulse.usage != mr0.PulseUsage.UNDEF]
        np.testing.assert_allclose(angles, expected, rtol=2e-3, err_msg=name)

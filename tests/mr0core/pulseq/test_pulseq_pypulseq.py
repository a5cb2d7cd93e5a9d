"""Sequences built with PyPulseq in the test: flip angles, phases, timing, labels, extensions."""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
import torch

import mr0core as mr0
from mr0core import PulseUsage
from mr0core.pulseq import read_seq_text, seq_to_sequence

SYSTEM = pp.Opts(max_grad=30, grad_unit="mT/m", max_slew=120, slew_unit="T/m/s")


def to_text(seq: pp.Sequence, tmp_path: Path) -> str:
    path = tmp_path / "built.seq"
    seq.write(str(path))
    return path.read_text()


@pytest.mark.parametrize("flip_deg", [1.0, 5.0, 30.0, 90.0, 180.0])
@pytest.mark.parametrize("duration", [0.1e-3, 1e-3, 4e-3])
def test_block_pulse_flip_angle_within_0p1_percent(flip_deg: float, duration: float) -> None:
    seq = pp.Sequence(SYSTEM)
    rf = pp.make_block_pulse(math.radians(flip_deg), duration=duration, system=SYSTEM)
    seq.add_block(rf)
    seq.add_block(pp.make_delay(1e-3))
    imported = mr0.Sequence.from_pypulseq(seq)
    pulses = [rep.pulse for rep in imported if float(rep.pulse.angle) > 0]
    assert len(pulses) == 1
    assert float(pulses[0].angle) == pytest.approx(math.radians(flip_deg), rel=1e-3)


def test_sinc_pulse_is_placed_at_its_centre_with_nominal_angle() -> None:
    seq = pp.Sequence(SYSTEM)
    rf, gz, _ = pp.make_sinc_pulse(
        math.radians(15),
        duration=3e-3,
        slice_thickness=5e-3,
        time_bw_product=4,
        apodization=0.5,
        system=SYSTEM,
        return_gz=True,
        delay=SYSTEM.rf_dead_time,
    )
    seq.add_block(rf, gz)
    seq.add_block(pp.make_delay(2e-3))
    imported = mr0.Sequence.from_pypulseq(seq)
    assert len(imported) == 2  # the time before the centre, then the pulse's repetition
    assert float(imported[1].pulse.angle) == pytest.approx(math.radians(15), rel=2e-3)
    assert imported[1].pulse.usage is PulseUsage.EXCIT
    centre = pp.calc_rf_center(rf)[0] + rf.delay
    assert imported[0].event_time.double().sum().item() == pytest.approx(centre, abs=1e-9)
    # the slice-select moment after the centre is what PyPulseq's k-space says: the ramp-down
    # half of the slab gradient (no refocusing lobe was added)
    kz_end = imported.get_full_kspace()[1][:, 2]
    flat_after = gz.rise_time + gz.flat_time - centre + gz.delay
    expected = gz.amplitude * flat_after + 0.5 * gz.amplitude * gz.fall_time
    assert float(kz_end[-1]) == pytest.approx(expected, rel=1e-4)


def test_rf_spoiling_phases_cancel_in_adc_phase() -> None:
    """With ADC phase = RF phase (Pulseq's RF spoiling), pulse.phase + adc_phase is constant."""
    seq = pp.Sequence(SYSTEM)
    adc = pp.make_adc(8, duration=1e-3, system=SYSTEM)
    rf_inc = 0.0
    rf_phase = 0.0
    for _ in range(5):
        rf = pp.make_block_pulse(math.radians(10), duration=0.2e-3, system=SYSTEM)
        rf.phase_offset = rf_phase / 180 * math.pi
        adc.phase_offset = rf_phase / 180 * math.pi
        rf_inc = (rf_inc + 117) % 360
        rf_phase = (rf_phase + rf_inc) % 360
        seq.add_block(rf)
        seq.add_block(adc)
    imported = mr0.Sequence.from_pypulseq(seq)
    sums = []
    for rep in imported:
        if rep.pulse.usage is PulseUsage.EXCIT:
            adc_ph = rep.adc_phase[rep.adc_usage > 0]
            sums.extend(torch.remainder(rep.pulse.phase + adc_ph, 2 * math.pi).tolist())
    assert len(sums) == 40
    np.testing.assert_allclose(sums, math.pi / 2, atol=1e-5)


def test_adc_frequency_offset_ramps_the_receiver_phase() -> None:
    seq = pp.Sequence(SYSTEM)
    adc = pp.make_adc(10, dwell=10e-6, freq_offset=1000, phase_offset=0.3, system=SYSTEM)
    seq.add_block(adc)
    rep = mr0.Sequence.from_pypulseq(seq)[0]
    phase = rep.adc_phase[rep.adc_usage > 0].double()
    expected = math.pi / 2 - (0.3 + 2 * math.pi * 1000 * (np.arange(10) + 0.5) * 10e-6)
    np.testing.assert_allclose(phase.numpy(), expected, atol=1e-6)


def test_spin_echo_tau_is_zero_at_the_echo() -> None:
    """90°–180° with the ADC centred on TE: τ crosses zero at the central sample."""
    te = 20e-3
    seq = pp.Sequence(SYSTEM)
    rf90 = pp.make_block_pulse(math.pi / 2, duration=0.5e-3, system=SYSTEM)
    rf180 = pp.make_block_pulse(math.pi, duration=0.5e-3, system=SYSTEM, use="refocusing")
    adc = pp.make_adc(65, dwell=20e-6, system=SYSTEM)
    seq.add_block(rf90)
    seq.add_block(pp.make_delay(te / 2 - 0.5e-3))
    seq.add_block(rf180)
    adc_len = 65 * 20e-6
    # pulse centres at 0.25 ms and TE/2 + 0.25 ms; sample 32 (of 65) at TE + 0.25 ms
    seq.add_block(pp.make_delay(te / 2 - 0.25e-3 - adc_len / 2))
    seq.add_block(adc)
    imported = mr0.Sequence.from_pypulseq(seq)
    # a zero pulse covers the time before the first pulse centre
    assert [rep.pulse.usage for rep in imported] == [
        PulseUsage.UNDEF,
        PulseUsage.EXCIT,
        PulseUsage.REFOC,
    ]
    tau = imported.get_kspace()[:, 3].double().numpy()
    assert abs(tau[32]) < 1e-6  # centre sample
    np.testing.assert_allclose(np.diff(tau), 20e-6, rtol=1e-4)


def test_labels_are_kept_per_adc_sample() -> None:
    seq = pp.Sequence(SYSTEM)
    adc = pp.make_adc(4, duration=0.4e-3, system=SYSTEM)
    seq.add_block(pp.make_label(label="LIN", type="SET", value=3))
    for _ in range(3):
        seq.add_block(adc, pp.make_label(label="LIN", type="INC", value=2))
    labels = mr0.Sequence.from_pypulseq(seq).get_labels()
    assert labels["LIN"].tolist() == [5] * 4 + [7] * 4 + [9] * 4


def test_from_pypulseq_writes_nothing_into_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    seq = pp.Sequence(SYSTEM)
    seq.add_block(pp.make_block_pulse(0.1, duration=1e-3, system=SYSTEM))
    mr0.Sequence.from_pypulseq(seq)
    assert os.listdir(tmp_path) == []


def with_extension(text: str, block: int, name: str, rows: str) -> str:
    """Attach one extension of type ``name`` to block ``block`` of a 1.5 file."""
    lines = text.splitlines()
    start = lines.index("[BLOCKS]") + 1
    for i in range(start, len(lines)):
        fields = lines[i].split()
        if fields and fields[0] == str(block):
            fields[7] = "1"
            lines[i] = " ".join(fields)
            break
    out = re.sub(r"\n\[SIGNATURE\].*", "\n", "\n".join(lines), flags=re.S)
    return out + f"\n[EXTENSIONS]\n1 1 1 0\n\nextension {name} 1\n{rows}\n"


def test_rf_shim_extension_sets_the_pulse_shim(tmp_path: Path) -> None:
    seq = pp.Sequence(SYSTEM)
    seq.add_block(pp.make_block_pulse(0.3, duration=1e-3, system=SYSTEM))
    text = with_extension(to_text(seq, tmp_path), 1, "RF_SHIMS", "1 2 0.5 0.1 0.8 -1.2")
    imported = seq_to_sequence(read_seq_text(text))
    pulse = next(rep.pulse for rep in imported if float(rep.pulse.angle) > 0)
    torch.testing.assert_close(pulse.shim_array, torch.tensor([[0.5, 0.1], [0.8, -1.2]]))


def test_rotation_extension_rotates_gradient_moments(tmp_path: Path) -> None:
    seq = pp.Sequence(SYSTEM)
    gx = pp.make_trapezoid("x", area=200, duration=2e-3, system=SYSTEM)
    adc = pp.make_adc(10, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM)
    seq.add_block(gx, adc)
    text = to_text(seq, tmp_path)
    plain = seq_to_sequence(read_seq_text(text)).get_kspace()
    half = math.sqrt(0.5)  # 90° about z: x -> y
    rotated_text = with_extension(text, 1, "ROTATIONS", f"1 {half} 0 0 {half}")
    rotated = seq_to_sequence(read_seq_text(rotated_text)).get_kspace()
    torch.testing.assert_close(rotated[:, 1], plain[:, 0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(rotated[:, 0], torch.zeros(10), rtol=0, atol=1e-3)


def test_exact_trajectories_only_adds_events() -> None:
    """Cutting at gradient corners refines events but keeps the k-space of every sample."""
    seq = pp.Sequence(SYSTEM)
    seq.add_block(pp.make_block_pulse(0.2, duration=0.5e-3, system=SYSTEM))
    seq.add_block(pp.make_trapezoid("y", area=-300, duration=1.5e-3, system=SYSTEM))
    gx = pp.make_trapezoid("x", area=400, duration=3e-3, system=SYSTEM)
    seq.add_block(gx, pp.make_adc(32, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = mr0.Sequence.from_pypulseq(seq, exact_trajectories=True)
        coarse = mr0.Sequence.from_pypulseq(seq, exact_trajectories=False)
    assert sum(r.event_count for r in exact) > sum(r.event_count for r in coarse)
    torch.testing.assert_close(exact.get_kspace(), coarse.get_kspace(), rtol=1e-5, atol=1e-3)
    assert exact.get_duration() == pytest.approx(coarse.get_duration(), rel=1e-7)


def test_import_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seq = pp.Sequence(SYSTEM)
    seq.add_block(pp.make_block_pulse(0.3, duration=1e-3, system=SYSTEM))
    seq.add_block(pp.make_adc(16, duration=1e-3, system=SYSTEM))
    path = tmp_path / "s.seq"
    seq.write(str(path))
    shim = torch.tensor([[1.0, 0.0], [0.5, math.pi / 2]])
    imported = mr0.Sequence.import_file(path, print_stats=True, default_shim=shim)
    assert "16 ADC samples" in capsys.readouterr().out
    for rep in imported[1:]:
        torch.testing.assert_close(rep.pulse.shim_array, shim)
    assert imported.normalized_grads is False
    assert imported.definitions["version"] == "1.5.0"
    with pytest.raises(NotImplementedError, match="dsv"):
        mr0.Sequence.import_file(path, ref_voltage=200.0)
    with pytest.raises(ValueError, match="default_shim"):
        mr0.Sequence.import_file(path, default_shim=torch.zeros(3))

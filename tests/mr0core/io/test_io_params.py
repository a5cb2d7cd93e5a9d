"""sequence_parameters: definitions, estimates from the sequence, pypulseq references."""

from __future__ import annotations

import math

import numpy as np
import pypulseq as pp
import pytest
import torch
from conftest import CORPUS
from pulseq_builders import SYSTEM, build_flash

import mr0core as mr0
from mr0core.io.params import SequenceParameters, sequence_parameters


def build_inversion_recovery(ti: float = 0.3, n: int = 16, fov: float = 0.2) -> pp.Sequence:
    """One inversion, TI later one 90° excitation with a readout (centre-out k-space line)."""
    seq = pp.Sequence(SYSTEM)
    inv = pp.make_block_pulse(
        math.pi, duration=1e-3, system=SYSTEM, use="inversion", delay=SYSTEM.rf_dead_time
    )
    exc = pp.make_block_pulse(
        math.pi / 2, duration=0.5e-3, system=SYSTEM, use="excitation", delay=SYSTEM.rf_dead_time
    )
    gx = pp.make_trapezoid(channel="x", flat_area=n / fov, flat_time=2.56e-3, system=SYSTEM)
    adc = pp.make_adc(num_samples=n, duration=gx.flat_time, delay=gx.rise_time, system=SYSTEM)
    gx_pre = pp.make_trapezoid(channel="x", area=-gx.area / 2, duration=1e-3, system=SYSTEM)
    inv_centre = inv.delay + pp.calc_rf_center(inv)[0]
    exc_centre = exc.delay + pp.calc_rf_center(exc)[0]
    seq.add_block(inv)
    gap = ti - (pp.calc_duration(inv) - inv_centre) - exc_centre
    seq.add_block(pp.make_delay(round(gap, 6)))
    seq.add_block(exc)
    seq.add_block(gx_pre)
    seq.add_block(gx, adc)
    seq.set_definition("FOV", [fov, fov, 5e-3])
    return seq


@pytest.fixture(scope="module")
def flash() -> pp.Sequence:
    return build_flash()


def test_flash_estimates_match_design(flash):
    p = sequence_parameters(flash)
    assert isinstance(p, SequenceParameters)
    assert pytest.approx(5e-3, abs=1e-6) == p.TE
    assert pytest.approx(12e-3, abs=1e-6) == p.TR
    assert p.flip_angle_deg == pytest.approx(15.0, abs=0.01)
    assert p.TI is None
    assert p.name == "flash"
    assert p.fov_m == pytest.approx((0.2, 0.2, 4e-3))
    assert p.matrix == (16, 16, 1)
    assert p.readout_axis == "x"
    assert p.phase_axes == ("y",)
    assert p.acquisition_type == "2D"
    assert p.n_contrasts == 1
    assert p.n_adc_samples == 16 * 16
    assert p.sources["TE"] == "estimated"
    assert p.sources["TR"] == "estimated"
    assert p.field_strength_T is None


def test_other_design_values_change_the_estimates():
    p = sequence_parameters(build_flash(te=7e-3, tr=20e-3, flip_deg=30.0, n=32, fov=0.25))
    assert pytest.approx(7e-3, abs=1e-6) == p.TE
    assert pytest.approx(20e-3, abs=1e-6) == p.TR
    assert p.flip_angle_deg == pytest.approx(30.0, abs=0.01)
    assert p.matrix == (32, 32, 1)


def test_definitions_take_precedence():
    seq = build_flash(definitions={"TE": 4.4e-3, "TR": 11e-3, "TI": 0.9, "B0": 2.89})
    p = sequence_parameters(seq)
    assert pytest.approx(4.4e-3) == p.TE
    assert pytest.approx(11e-3) == p.TR
    assert pytest.approx(0.9) == p.TI
    assert p.field_strength_T == pytest.approx(2.89)
    assert p.sources["TE"] == p.sources["TR"] == p.sources["TI"] == "definition"


def test_inversion_time_estimated():
    p = sequence_parameters(build_inversion_recovery(ti=0.3))
    assert pytest.approx(0.3, abs=1e-6) == p.TI
    assert p.flip_angle_deg == pytest.approx(90.0, abs=0.01)
    assert p.TR is None  # a single excitation has no repetition time


def test_path_and_mr0_sequence_inputs_agree(flash, tmp_path):
    path = tmp_path / "flash.seq"
    flash.write(str(path))
    from_path = sequence_parameters(path)
    from_seq = sequence_parameters(mr0.Sequence.import_file(path))
    assert from_path == from_seq


@pytest.mark.parametrize(
    ("name", "matrix"),
    [("write_gre", (64, 64, 1)), ("write_tse", (64, 64, 1)), ("write_epi_se", (64, 64, 1))],
)
def test_corpus_against_definitions_and_pypulseq(name, matrix):
    path = CORPUS / f"{name}.seq"
    p = sequence_parameters(path)
    ref = pp.Sequence()
    ref.read(str(path))
    assert p.name == ref.definitions["Name"]
    assert p.fov_m == pytest.approx(tuple(float(v) for v in ref.definitions["FOV"]))
    assert p.matrix == matrix
    # pypulseq's own k-space: the sample nearest k = 0 and the excitation before it.
    k_adc, _, t_exc, _, t_adc = ref.calculate_kspace()
    k_adc, t_adc, t_exc = np.asarray(k_adc), np.asarray(t_adc), np.asarray(t_exc)
    i = int(np.argmin(np.linalg.norm(k_adc, axis=0)))
    te_ref = t_adc[i] - t_exc[t_exc <= t_adc[i]].max()
    dwell = float(np.diff(t_adc[:2])[0])
    assert abs(p.TE - te_ref) <= dwell  # the estimate interpolates between the two nearest samples
    if len(t_exc) > 1:
        assert pytest.approx(float(t_exc[1] - t_exc[0]), abs=1e-7) == p.TR


def test_old_name_character_codes_decoded():
    p = sequence_parameters(CORPUS / "simple_mprage120.seq")
    assert p.name == "mprage"


def test_inversion_in_corpus_mprage():
    p = sequence_parameters(CORPUS / "simple_mprage150.seq")
    assert p.TI is not None
    assert 0 < p.TI < p.duration_s
    assert p.TR_preparation is not None
    assert p.TR_preparation > p.TI


def test_hand_built_sequence_without_definitions():
    seq = mr0.Sequence()
    for _ in range(3):
        rep = seq.new_rep(4)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = math.radians(20.0)
        rep.event_time[:] = 1e-3
        rep.adc_usage[1:3] = 1
        rep.gradm[:, 0] = torch.tensor([-1.0, 1.0, 1.0, -1.0])
    p = sequence_parameters(seq)
    assert p.flip_angle_deg == pytest.approx(20.0, abs=1e-4)
    assert pytest.approx(4e-3) == p.TR
    assert p.name is None
    assert p.fov_m is None


def test_unknown_input_type_raises():
    with pytest.raises(TypeError, match="int"):
        sequence_parameters(42)


def test_to_dict_is_json_ready(flash):
    import json

    d = sequence_parameters(flash).to_dict()
    assert json.loads(json.dumps(d))["matrix"] == [16, 16, 1]

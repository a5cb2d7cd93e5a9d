"""The PDG benchmark suite's PyPulseq builders (scripts/pdg_suite.py): timing, import, physics."""

from __future__ import annotations

import functools
import inspect
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import SCRIPTS

import mr0core as mr0
from mr0core import PulseUsage

sys.path.insert(0, str(SCRIPTS))
import pdg_suite as suite

N = 16
DK = 1.0 / 0.22  # Δk of the 0.22 m FOV, 1/m

# What each builder's docstring promises at matrix size n.
EXPECTED_ADC = {
    "flash_spoiled": lambda n: n * n,
    "flash_inversion": lambda n: n * n,
    "flash_saturation": lambda n: n * n,
    "mgre_monopolar": lambda n: 8 * n * n,
    "mgre_bipolar": lambda n: 8 * n * n,
    "dwi_se": lambda n: 7 * (n // 4) * n,
    "bssfp": lambda n: n * n,
    "tse_variable": lambda n: n * n,
    "ste_3pulse": lambda n: n * n,
    "epi_single": lambda n: n * n,
    "radial_ga": lambda n: n * n,
    "spiral": lambda n: 4 * math.ceil(n * n / 4),
    "epi_segmented": lambda n: n * n,
}


@functools.cache
def built(name: str, n: int = N):
    """The PyPulseq sequence and its import through both paths (cached per case)."""
    seq = suite.CASES[name](n)
    via_object = mr0.Sequence.from_pypulseq(seq)
    with tempfile.TemporaryDirectory() as tmp:
        path = suite.write_case(name, n, Path(tmp) / f"{name}.seq")
        via_file = mr0.Sequence.import_file(path)
    return seq, via_object, via_file


class Timeline:
    """Pulse and ADC-sample times of an imported sequence (seconds from the start)."""

    def __init__(self, s: mr0.Sequence) -> None:
        durations = [float(rep.event_time.double().sum()) for rep in s]
        starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
        self.reps = list(s)
        self.rep_start = starts
        pulsed = [i for i, rep in enumerate(s) if float(rep.pulse.angle) > 0]
        self.pulse_rep = np.array(pulsed)
        self.pulse_t = starts[pulsed]
        self.angle_deg = np.array([math.degrees(float(s[i].pulse.angle)) for i in pulsed])
        self.phase = np.array([float(s[i].pulse.phase) for i in pulsed])
        self.usage = [s[i].pulse.usage for i in pulsed]
        times, reps = [], []
        for i, rep in enumerate(s):
            ends = starts[i] + np.cumsum(rep.event_time.double().numpy())
            mask = (rep.adc_usage > 0).numpy()
            times.append(ends[mask])
            reps.append(np.full(int(mask.sum()), i))
        self.adc_t = np.concatenate(times)
        self.adc_rep = np.concatenate(reps)
        self.k = s.get_kspace().double().numpy()


def moment(s: mr0.Sequence, t0: float, t1: float) -> np.ndarray:
    """Gradient moment (1/m, x y z) between the times t0 and t1 (both on event boundaries)."""
    total = np.zeros(3)
    t = 0.0
    for rep in s:
        ends = t + np.cumsum(rep.event_time.double().numpy())
        starts = ends - rep.event_time.double().numpy()
        sel = (starts >= t0 - 1e-9) & (ends <= t1 + 1e-9)
        total += rep.gradm.double().numpy()[sel].sum(axis=0)
        t = float(ends[-1]) if len(ends) else t
    return total


# -- every case --------------------------------------------------------------------------------


def test_registry_names_and_builders() -> None:
    assert suite.case_names() == list(EXPECTED_ADC)
    for name, builder in suite.CASES.items():
        assert builder.__name__ == f"build_{name}"
        assert builder is getattr(suite, f"build_{name}")
        params = list(inspect.signature(builder).parameters.values())
        assert params[0].name == "n"
        assert all(p.default is not inspect.Parameter.empty for p in params[1:])
        assert builder.__doc__
        assert "Returns" in builder.__doc__


@pytest.mark.parametrize("name", list(EXPECTED_ADC))
def test_case_builds_passes_timing_and_imports(name: str) -> None:
    seq, via_object, via_file = built(name)
    ok, report = seq.check_timing()
    assert ok, report
    expected = EXPECTED_ADC[name](N)
    k_object = via_object.get_kspace()
    k_file = via_file.get_kspace()
    assert len(k_object) == len(k_file) == expected == suite.adc_samples(name, N)
    assert np.allclose(k_object.numpy(), k_file.numpy(), atol=1e-3)
    # the same count from the .seq file's own ADC events
    adc_events = [seq.get_block(b).adc for b in seq.block_events]
    assert sum(a.num_samples for a in adc_events if a is not None) == expected
    assert via_file.get_duration() == pytest.approx(seq.duration()[0], abs=1e-6)


@pytest.mark.parametrize("name", ["flash_spoiled", "mgre_bipolar", "dwi_se", "spiral"])
def test_adc_count_formula_holds_at_48(name: str) -> None:
    seq = suite.CASES[name](48)
    adc_events = [seq.get_block(b).adc for b in seq.block_events]
    count = sum(a.num_samples for a in adc_events if a is not None)
    assert count == EXPECTED_ADC[name](48) == suite.adc_samples(name, 48)


def test_write_case_into_directory_and_unknown_case(tmp_path: Path) -> None:
    path = suite.write_case("epi_single", N, tmp_path)
    assert path == tmp_path / f"epi_single_{N}.seq"
    assert len(mr0.Sequence.import_file(path).get_kspace()) == N * N
    with pytest.raises(KeyError, match="unknown case"):
        suite.write_case("nope", N, tmp_path / "x.seq")


# -- physics per class -------------------------------------------------------------------------


def test_flash_spoiled_cartesian_grid_and_rf_spoiling() -> None:
    _, s, _ = built("flash_spoiled")
    tl = Timeline(s)
    grid = np.round(tl.k[:, :2] / DK).astype(int)
    assert np.allclose(tl.k[:, :2] / DK, grid, atol=1e-3)
    expected = {(i - N // 2, j - N // 2) for i in range(N) for j in range(N)}
    assert {tuple(p) for p in grid.tolist()} == expected
    # quadratic RF spoiling: the phase increment grows by 117° per TR
    inc = np.degrees(np.diff(tl.phase))
    second = (np.diff(inc) + 180.0) % 360.0 - 180.0
    assert np.allclose(second, 117.0, atol=0.01)
    # the receiver follows the pulse (the ADC phase cancels the RF phase, see mr0core.pulseq)
    adc_phase = np.concatenate([rep.adc_phase[rep.adc_usage > 0].numpy() for rep in s])
    total = np.angle(np.exp(1j * (adc_phase + np.repeat(tl.phase, N))))
    assert np.allclose(np.angle(np.exp(1j * (total - total[0]))), 0.0, atol=1e-3)


@pytest.mark.parametrize("ti", [0.3, 0.5, 1.0])
def test_flash_inversion_ti_to_centre_line(ti: float) -> None:
    s = mr0.Sequence.from_pypulseq(suite.build_flash_inversion(N, ti=ti))
    tl = Timeline(s)
    assert tl.angle_deg[0] == pytest.approx(180.0, abs=0.1)
    assert tl.usage[0] is PulseUsage.UNDEF  # "inversion" leaves k-space alone
    assert np.allclose(tl.angle_deg[1:], 10.0, atol=0.05)
    centre = int(np.argmin(np.abs(tl.k[:, :3]).sum(axis=1)))
    t_exc = tl.adc_t[centre] - tl.k[centre, 3]  # τ counts from the last excitation
    assert t_exc - tl.pulse_t[0] == pytest.approx(ti, abs=1e-5)  # spec: 1 ms
    assert t_exc == pytest.approx(tl.pulse_t[1], abs=1e-6)  # centric: the first line


@pytest.mark.parametrize("ti", [0.2, 1.1])
def test_flash_inversion_rejects_ti_outside_range(ti: float) -> None:
    with pytest.raises(ValueError, match="ti"):
        suite.build_flash_inversion(N, ti=ti)


def test_flash_saturation_delay() -> None:
    _, s, _ = built("flash_saturation")
    tl = Timeline(s)
    assert tl.angle_deg[0] == pytest.approx(90.0, abs=0.1)
    assert tl.pulse_t[1] - tl.pulse_t[0] == pytest.approx(0.3, abs=1e-5)
    first = tl.k[tl.adc_rep == tl.pulse_rep[1]]
    assert np.allclose(first[:, 1], 0.0, atol=1e-3)  # centric: centre line first


@pytest.mark.parametrize("name", ["mgre_monopolar", "mgre_bipolar"])
def test_mgre_eight_echoes_per_line(name: str) -> None:
    _, s, _ = built(name)
    tl = Timeline(s)
    assert len(tl.pulse_t) == N
    for p in tl.pulse_rep:
        k = tl.k[tl.adc_rep == p]
        assert len(k) == 8 * N
        echoes = k.reshape(8, N, 4)
        te = echoes[:, N // 2, 3]  # τ of the k-space centre sample of each echo
        assert np.all(np.diff(te) > 0.2e-3)
        assert np.allclose(echoes[:, N // 2, 0], 0.0, atol=1e-2)
        assert np.ptp(echoes[:, :, 1]) < 1e-3  # one line per excitation
        slopes = np.sign(echoes[:, -1, 0] - echoes[:, 0, 0])
        if name == "mgre_monopolar":
            assert np.all(slopes == 1)
            assert np.allclose(np.diff(te), te[1] - te[0], atol=1e-6)
        else:
            assert np.all(slopes == np.array([1, -1] * 4))
    if name == "mgre_bipolar":  # no fly-back: shorter echo spacing than monopolar
        _, mono, _ = built("mgre_monopolar")
        k_mono = mono.get_kspace().numpy()[: 8 * N].reshape(8, N, 4)
        k_bi = s.get_kspace().numpy()[: 8 * N].reshape(8, N, 4)
        assert k_bi[1, N // 2, 3] - k_bi[0, N // 2, 3] < k_mono[1, N // 2, 3] - k_mono[0, N // 2, 3]


def test_dwi_b_values_from_the_gradient_waveform() -> None:
    seq, s, _ = built("dwi_se")
    tl = Timeline(s)
    exc = [t for t, u in zip(tl.pulse_t, tl.usage, strict=True) if u is PulseUsage.EXCIT]
    ref = [t for t, u in zip(tl.pulse_t, tl.usage, strict=True) if u is PulseUsage.REFOC]
    lines = N // 4
    assert len(exc) == len(ref) == 7 * lines
    grads = seq.get_gradients()
    dt = 1e-6
    b_axes = []
    for t_e, t_r in zip(exc, ref, strict=True):
        t_echo = 2 * t_r - t_e
        t = np.arange(t_e, t_echo + dt / 2, dt)
        g = np.stack([np.nan_to_num(pp_ch(t)) if pp_ch is not None else 0 * t for pp_ch in grads])
        k = np.concatenate([np.zeros((3, 1)), np.cumsum(0.5 * (g[:, 1:] + g[:, :-1]) * dt, 1)], 1)
        k_ref = k[:, np.searchsorted(t, t_r)][:, None]
        k_eff = np.where(t[None, :] < t_r, k, k - 2 * k_ref)  # the 180° pulse negates k
        assert np.abs(k_eff[[0, 2], -1]).max() < 1.0  # the echo is refocused (1/m) ...
        assert k_eff[1, -1] / DK == pytest.approx(round(k_eff[1, -1] / DK), abs=1e-3)  # ... at ky
        f = k_eff**2
        b_axes.append((2 * math.pi) ** 2 * np.sum(0.5 * (f[:, 1:] + f[:, :-1]) * dt, 1) * 1e-6)
    b_axes = np.array(b_axes).reshape(7, lines, 3)  # s/mm², per contrast, line, axis
    for c, (b, axis) in enumerate(suite.DWI_CONTRASTS):
        total = b_axes[c].sum(axis=1)
        if axis is None:
            assert np.all(total < 1.0)
        else:
            assert np.allclose(total, b, rtol=0.05)
            assert np.all(b_axes[c][:, "xyz".index(axis)] > 0.99 * total)
    # all contrasts share the echo time
    te = [2 * (r - e) for e, r in zip(exc, ref, strict=True)]
    assert np.ptp(te) < 1e-6


def test_bssfp_balanced_and_phase_alternating() -> None:
    _, s, _ = built("bssfp")
    tl = Timeline(s)
    assert len(tl.pulse_t) == N + 10
    assert np.all(np.isin(tl.pulse_rep[:10], tl.adc_rep, invert=True))  # dummies: no ADC
    for i in tl.pulse_rep[:-1]:  # pulse centre to the next pulse centre
        assert np.allclose(s[i].gradm.double().sum(0).numpy(), 0.0, atol=0.02), i
    assert np.allclose(np.diff(tl.pulse_t), 5e-3, atol=1e-6)
    d = np.angle(np.exp(1j * np.diff(tl.phase)))
    assert np.allclose(np.abs(d), math.pi, atol=1e-3)
    centres = tl.k[N // 2 :: N]
    assert np.allclose(centres[:, 3], 2.5e-3, atol=1e-6)  # echo at TR/2
    assert np.allclose(centres[:, 0], 0.0, atol=1e-2)


def test_tse_variable_flip_angles_and_cpmg_echoes() -> None:
    _, s, _ = built("tse_variable")
    tl = Timeline(s)
    refoc = [i for i, u in enumerate(tl.usage) if u is PulseUsage.REFOC]
    assert len(refoc) == N
    assert tl.usage[0] is PulseUsage.EXCIT
    angles = tl.angle_deg[refoc]
    assert np.allclose(angles, suite.tse_refocusing_angles(16), atol=0.3)
    assert angles[0] == pytest.approx(160, abs=0.3)
    assert angles.min() == pytest.approx(60, abs=0.3)
    esp = np.diff(tl.pulse_t[refoc])
    assert np.allclose(esp, esp[0], atol=1e-6)
    assert tl.pulse_t[refoc[0]] - tl.pulse_t[0] == pytest.approx(esp[0] / 2, abs=1e-6)
    centres = tl.k[N // 2 :: N]
    assert np.allclose(centres[:, 3], 0.0, atol=1e-6)  # τ = 0: spin echo at the centre sample
    assert np.allclose(centres[:, [0, 2]], 0.0, atol=0.05)  # kx and kz refocused
    order = np.round(centres[:, 1] / DK).astype(int) + N // 2
    assert sorted(order.tolist()) == list(range(N))


def test_ste_timing_and_stimulated_echo_moments() -> None:
    _, s, _ = built("ste_3pulse")
    tl = Timeline(s)
    assert len(tl.pulse_t) == 3 * N
    assert np.allclose(tl.angle_deg, 90.0, atol=0.1)
    te, tm = 10e-3, 20e-3
    for line in range(N):
        p1, p2, p3 = tl.pulse_t[3 * line : 3 * line + 3]
        assert p2 - p1 == pytest.approx(te / 2, abs=1e-6)
        assert p3 - p2 == pytest.approx(tm, abs=1e-6)
        sample = line * N + N // 2
        t_echo = tl.adc_t[sample]
        assert t_echo - p3 == pytest.approx(te / 2, abs=1e-6)
        stored = moment(s, p1, p2)
        after = moment(s, p3, t_echo)
        ky = (line - N // 2) * DK
        assert after[0] == pytest.approx(stored[0], abs=0.05)  # x: stimulated echo at kx = 0
        assert after[2] == pytest.approx(stored[2], abs=0.05)  # z: slice refocused
        assert after[1] == pytest.approx(ky, abs=0.01)
        assert abs(after[0]) > N * DK  # the FID of pulse 3 is far from the k-space centre


@pytest.mark.parametrize("name", ["epi_single", "epi_segmented"])
def test_epi_covers_the_grid_with_alternating_readouts(name: str) -> None:
    _, s, _ = built(name)
    tl = Timeline(s)
    shots = 1 if name == "epi_single" else 2
    assert len(tl.pulse_t) == shots
    grid = np.round(tl.k[:, :2] / DK).astype(int)
    assert np.allclose(tl.k[:, :2] / DK, grid, atol=1e-3)
    lines = tl.k.reshape(N, N, 4)
    direction = np.sign(lines[:, -1, 0] - lines[:, 0, 0])
    per_shot = N // shots
    assert np.all(direction.reshape(shots, per_shot) == np.array([1, -1] * (per_shot // 2)))
    ky = np.round(lines[:, 0, 1] / DK).astype(int).reshape(shots, per_shot)
    assert np.all(np.diff(ky, axis=1) == shots)  # blips of shots·Δk
    assert sorted(ky.ravel().tolist()) == list(range(-N // 2, N // 2))
    for row in range(N):  # every line is a full readout through kx = 0
        assert sorted(grid[row * N : (row + 1) * N, 0].tolist()) in (
            list(range(-N // 2, N // 2)),
            list(range(-N // 2 + 1, N // 2 + 1)),
        )


def test_radial_golden_angle_spokes() -> None:
    _, s, _ = built("radial_ga")
    k = Timeline(s).k.reshape(N, N, 4)
    assert np.allclose(k[:, N // 2, :2], 0.0, atol=1e-2)  # every spoke through the centre
    direction = k[:, -1, :2] - k[:, 0, :2]
    phi = np.degrees(np.arctan2(direction[:, 1], direction[:, 0]))
    step = np.diff(phi) % 360.0
    assert np.allclose(step, 111.25, atol=0.01)
    assert np.allclose(step, suite.GOLDEN_ANGLE_DEG, atol=1e-3)
    radius = np.linalg.norm(k[:, 0, :2], axis=1)
    assert np.allclose(radius, N / 2 * DK, rtol=1e-3)


def test_spiral_within_gradient_limits_and_covers_k_space() -> None:
    seq, s, _ = built("spiral")
    system = suite.make_system()
    for wave in seq.waveforms()[:2]:
        t, g = wave
        assert np.max(np.abs(g)) <= system.max_grad * (1 + 1e-6)
        dt = np.diff(t)
        keep = dt > 1e-9
        slew = np.abs(np.diff(g)[keep] / dt[keep])
        assert np.max(slew) <= system.max_slew * (1 + 1e-6)
    k = Timeline(s).k.reshape(4, -1, 4)
    radius = np.linalg.norm(k[:, :, :2], axis=2)
    assert np.all(radius[:, 0] < 0.5 * DK)  # starts at the centre
    assert np.allclose(radius[:, -1], N / 2 * DK, rtol=0.05)  # ends at k_max
    assert np.all(np.diff(radius, axis=1) > -1e-3)  # spiral out
    start = np.degrees(np.arctan2(k[:, -1, 1], k[:, -1, 0]))
    assert np.allclose(np.diff(start) % 360.0, 90.0, atol=0.5)  # four rotated interleaves


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="TR"):
        suite.build_bssfp(N, tr=2e-3)
    with pytest.raises(ValueError, match="multiple of 16"):
        suite.build_tse_variable(24)
    with pytest.raises(ValueError, match="n must be"):
        suite.build_flash_spoiled(7)

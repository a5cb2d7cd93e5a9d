"""PDG simulation against analytic signals (single voxels, where the physics is closed-form)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core.sim import compute_graph, execute_graph


def _sim(seq: mr0.Sequence, obj: mr0.CustomVoxelPhantom, acc: float = 1e-6) -> torch.Tensor:
    data = obj.build()
    graph = compute_graph(seq, data, 5000, 1e-9)
    return execute_graph(graph, seq, data, acc, acc, print_progress=False)


def _voxel(**kw: float) -> mr0.CustomVoxelPhantom:
    args = {"T1": 1e9, "T2": 1e9, "T2dash": 1e9, "D": 0.0, "voxel_size": 0.1, "voxel_shape": "box"}
    args.update(kw)
    pos = args.pop("pos", [[0.0, 0.0, 0.0]])
    return mr0.CustomVoxelPhantom(pos, **args)


def _fid(angle: float, phase: float = 0.0, adc_phase: float = 0.0, n: int = 1,
         dt: float = 1e-3) -> mr0.Sequence:  # fmt: skip
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(n + 1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = angle
    rep.pulse.phase = phase
    rep.event_time[:] = dt
    rep.adc_usage[1:] = 1
    rep.adc_phase[1:] = adc_phase
    return seq


def test_fid_amplitude_phase_and_pd() -> None:
    s = _sim(_fid(math.pi / 2), _voxel(PD=2.0))
    assert s.shape == (1, 1)
    assert s.dtype == torch.complex64
    # 90° about x turns Mz into m+ = -i; the receiver multiplies by exp(+i adc_phase)
    assert complex(s[0, 0]) == pytest.approx(-2j, abs=1e-5)
    s = _sim(_fid(math.pi / 6, phase=0.4, adc_phase=0.3), _voxel())
    expected = -1j * math.sin(math.pi / 6) * np.exp(1j * 0.7)
    assert complex(s[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_fid_t2star_and_b0() -> None:
    """Samples at the end of each 1 ms event: τ = 2, 3, 4 ms after the pulse."""
    seq = _fid(math.pi / 2, n=3)
    s = _sim(seq, _voxel(T2=0.05, T2dash=0.02, B0=100.0))[:, 0]
    tau = np.array([2e-3, 3e-3, 4e-3])
    expected = -1j * np.exp(-tau / 0.05 - tau / 0.02) * np.exp(-2j * np.pi * 100 * tau)
    np.testing.assert_allclose(s.numpy(), expected, atol=1e-5)


def test_spin_echo_is_t2_not_t2star() -> None:
    te = 20e-3
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = te / 2
    rep = seq.new_rep(1)
    rep.pulse.usage = mr0.PulseUsage.REFOC
    rep.pulse.angle = math.pi
    rep.pulse.phase = math.pi / 2
    rep.event_time[:] = te / 2
    rep.adc_usage[0] = 1
    s = _sim(seq, _voxel(T2=0.08, T2dash=0.005, B0=37.0))
    assert abs(complex(s[0, 0])) == pytest.approx(math.exp(-te / 0.08), rel=1e-5)


def test_gradient_phase_and_box_voxel() -> None:
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(1)
    rep.pulse.angle = math.pi / 2
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.event_time[:] = 1e-3
    rep.gradm[0, 0] = 3.0
    rep.adc_usage[0] = 1
    s = complex(_sim(seq, _voxel(pos=[[0.05, 0.0, 0.0]]))[0, 0])
    # phase -2π k·x after -i, amplitude sinc(k s) of a 0.1 m box
    assert np.angle(s) == pytest.approx(-math.pi / 2 - 2 * math.pi * 3 * 0.05, abs=1e-5)
    assert abs(s) == pytest.approx(np.sinc(0.3), rel=1e-5)


def test_saturation_recovery_t1() -> None:
    seq = mr0.Sequence()
    for _ in range(2):
        rep = seq.new_rep(1)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = math.pi / 2
        rep.event_time[:] = 0.3
        rep.adc_usage[0] = 1
    s = _sim(seq, _voxel(T1=0.6, T2=1.0)).abs()[:, 0]
    assert float(s[0]) == pytest.approx(math.exp(-0.3), rel=1e-5)
    assert float(s[1]) == pytest.approx((1 - math.exp(-0.5)) * math.exp(-0.3), rel=1e-5)


def _epg_cpmg(flip: float, n: int) -> np.ndarray:
    """Echo amplitudes of a CPMG train by a plain EPG written here (Weigel 2015), no relaxation."""
    size = 2 * n + 4
    f_plus = np.zeros(size, complex)
    f_minus = np.zeros(size, complex)
    z = np.zeros(size, complex)
    f_plus[0] = 1.0  # after the 90°, in the refocusing pulses' frame
    out = []
    c2, s2, sa, ca = (
        math.cos(flip / 2) ** 2,
        math.sin(flip / 2) ** 2,
        math.sin(flip),
        math.cos(flip),
    )
    for _ in range(n):
        # dephase by one unit
        f_plus = np.roll(f_plus, 1)
        f_minus = np.roll(f_minus, -1)
        f_plus[0] = np.conj(f_minus[0])
        # refocusing about the same axis as the magnetisation (CPMG): real rotation matrix
        fp = c2 * f_plus + s2 * f_minus - 1j * sa * z
        fm = s2 * f_plus + c2 * f_minus + 1j * sa * z
        zz = -0.5j * sa * f_plus + 0.5j * sa * f_minus + ca * z
        f_plus, f_minus, z = fp, fm, zz
        f_plus = np.roll(f_plus, 1)
        f_minus = np.roll(f_minus, -1)
        f_plus[0] = np.conj(f_minus[0])
        out.append(abs(f_plus[0]))
    return np.array(out)


def test_cpmg_with_imperfect_refocusing_matches_epg() -> None:
    n, b1 = 6, 0.7
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = 5e-3
    rep.gradm[0, 0] = 50
    for _ in range(n):
        rep = seq.new_rep(2)
        rep.pulse.usage = mr0.PulseUsage.REFOC
        rep.pulse.angle = math.pi
        rep.pulse.phase = math.pi / 2
        rep.event_time[:] = 5e-3
        rep.gradm[:, 0] = 50
        rep.adc_usage[0] = 1
    # the 90° is scaled by B1 too: correct its angle so it stays 90°
    seq[0].pulse.angle = math.pi / 2 / b1
    s = _sim(seq, _voxel(B1=b1)).abs()[:, 0].numpy()
    np.testing.assert_allclose(s, _epg_cpmg(math.pi * b1, n), atol=1e-4)
    # the stimulated echo makes the second echo higher than the first
    assert s[1] > s[0]


def test_pgse_diffusion_attenuation() -> None:
    """Two gradient lobes around a 180°: S = exp(-b D), b = γ²G²δ²(Δ - δ/3) as 4π² k² (Δ - δ/3)."""
    k, delta, big_delta, d = 4000.0, 10e-3, 30e-3, 2.0
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(2)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = torch.tensor([delta, big_delta - delta])
    rep.gradm[0, 0] = k
    rep = seq.new_rep(2)
    rep.pulse.usage = mr0.PulseUsage.REFOC
    rep.pulse.angle = math.pi
    rep.pulse.phase = math.pi / 2
    rep.event_time[:] = torch.tensor([delta, big_delta - delta])
    rep.gradm[0, 0] = k
    rep.adc_usage[0] = 1
    b = 4 * math.pi**2 * k**2 * (big_delta - delta / 3)  # s/m²
    # spin echo at the end of the second lobe: TE/2 = Δ, echo at Δ + δ after... use ratio to D=0
    with_d = _sim(seq, _voxel(D=d, voxel_size=1e-7)).abs()
    without = _sim(seq, _voxel(D=0.0, voxel_size=1e-7)).abs()
    assert float(with_d / without) == pytest.approx(math.exp(-b * d * 1e-9), rel=1e-4)


def test_flip_angle_gradient_matches_finite_difference() -> None:
    def signal(angle: torch.Tensor) -> torch.Tensor:
        seq = mr0.Sequence()
        for _ in range(3):
            rep = seq.new_rep(1)
            rep.pulse.usage = mr0.PulseUsage.EXCIT
            rep.pulse.angle = angle
            rep.event_time[:] = 0.1
            rep.adc_usage[0] = 1
        return _sim(seq, _voxel(T1=0.3, T2=0.05)).abs().sum()

    a = torch.tensor(0.7, requires_grad=True)
    signal(a).backward()
    h = 1e-3
    fd = (signal(torch.tensor(0.7 + h)) - signal(torch.tensor(0.7 - h))) / (2 * h)
    assert a.grad is not None
    assert float(a.grad) == pytest.approx(float(fd), rel=1e-2)


def test_t1_gradient_matches_finite_difference() -> None:
    def signal(t1: torch.Tensor) -> torch.Tensor:
        seq = mr0.Sequence()
        for _ in range(3):
            rep = seq.new_rep(1)
            rep.pulse.usage = mr0.PulseUsage.EXCIT
            rep.pulse.angle = 0.5
            rep.event_time[:] = 0.1
            rep.adc_usage[0] = 1
        obj = _voxel(T2=0.05)
        obj.T1 = t1.reshape(1)
        return _sim(seq, obj).abs().sum()

    t1 = torch.tensor(0.4, requires_grad=True)
    signal(t1).backward()
    h = 1e-4
    fd = (signal(torch.tensor(0.4 + h)) - signal(torch.tensor(0.4 - h))) / (2 * h)
    assert t1.grad is not None
    assert float(t1.grad) == pytest.approx(float(fd), rel=1e-2)


def test_gradient_moment_gradient_matches_finite_difference() -> None:
    def signal(g: torch.Tensor) -> torch.Tensor:
        seq = mr0.Sequence(normalized_grads=False)
        rep = seq.new_rep(1)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = math.pi / 2
        rep.event_time[:] = 1e-3
        rep.gradm = torch.stack([g, torch.zeros(()), torch.zeros(())]).reshape(1, 3)
        rep.adc_usage[0] = 1
        s = _sim(seq, _voxel(pos=[[0.05, 0.0, 0.0]], voxel_size=0.02))
        return s.real.sum() + 2 * s.imag.sum()

    g = torch.tensor(2.0, requires_grad=True)
    signal(g).backward()
    h = 1e-3
    fd = (signal(torch.tensor(2.0 + h)) - signal(torch.tensor(2.0 - h))) / (2 * h)
    assert g.grad is not None
    assert float(g.grad) == pytest.approx(float(fd), rel=1e-2)


def test_util_simulate_defaults_and_no_files_in_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import CORPUS

    monkeypatch.chdir(tmp_path)
    # the built-in brain, passed explicitly (the default phantom, MR-zero's, is downloaded: see
    # tests/mr0core/test_util_load_phantom.py), resampled to sim_size
    signal, ktraj = mr0.util.simulate(str(CORPUS / "write_gre.seq"), "builtin:brain", (32, 32))
    assert signal.shape == (4096, 1)
    assert ktraj.shape == (4096, 4)
    assert signal.dtype == torch.complex64
    # the documented defaults: the brain at sim_size, accuracy 1e-3 through accuracy_settings
    seq = mr0.Sequence.import_file(CORPUS / "write_gre.seq")
    data = mr0.util.load_phantom(size=(32, 32), url="builtin:brain").build()
    states, state_mag, emitted, latent = mr0.sim.accuracy_settings(1e-3)
    graph = compute_graph(seq, data, states, state_mag)
    explicit = execute_graph(graph, seq, data, emitted, latent, print_progress=False)
    torch.testing.assert_close(signal, explicit, rtol=0, atol=1e-6 * float(explicit.abs().max()))
    torch.testing.assert_close(ktraj, seq.get_kspace())
    # negative control: another phantom gives another signal (the comparison above can fail)
    small = mr0.util.load_phantom(size=(16, 16), url="builtin:brain").build()
    other = execute_graph(graph, seq, small, 1e-3, 1e-3, print_progress=False)
    assert (signal - other).abs().max() > 0.01 * signal.abs().max()  # the phantom matters
    noisy, _ = mr0.util.simulate(str(CORPUS / "write_gre.seq"), "builtin:brain", (32, 32),
                                 noise_level=0.5)  # fmt: skip
    residual = (noisy - signal).abs().pow(2).mean().sqrt()
    assert float(residual) == pytest.approx(0.5, rel=0.1)
    assert list(tmp_path.iterdir()) == []


def test_exact_per_voxel_path_equals_grouped_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Phantoms with many distinct (T2', D) use the per-voxel path; both must agree."""
    from conftest import CORPUS

    import mr0core.sim.pdg as pdg

    seq = mr0.Sequence.import_file(CORPUS / "write_tse.seq")
    data = mr0.util.load_phantom(size=(16, 16), url="builtin:brain").build()
    graph = compute_graph(seq, data)
    grouped = execute_graph(graph, seq, data, print_progress=False)
    monkeypatch.setattr(pdg, "_MAX_GROUPS", 0)
    exact = execute_graph(graph, seq, data, print_progress=False)
    torch.testing.assert_close(exact, grouped, rtol=1e-4, atol=1e-4 * float(grouped.abs().max()))
    _, mags = execute_graph(graph, seq, data, print_progress=False, return_mag_adc=True)
    assert len(mags) == len(grouped)
    assert mags[0].shape == (data.voxel_count,)


@pytest.mark.parametrize("name", ["T2dash", "D"])
def test_t2dash_and_diffusion_gradients_match_finite_difference(name: str) -> None:
    """A spin echo with crushers: the echo depends on T2' (off-centre) and on D (crushers)."""

    def signal(value: torch.Tensor) -> torch.Tensor:
        seq = mr0.Sequence(normalized_grads=False)
        for angle, usage in ((math.pi / 2, mr0.PulseUsage.EXCIT), (math.pi, mr0.PulseUsage.REFOC)):
            rep = seq.new_rep(4)
            rep.pulse.usage = usage
            rep.pulse.angle = angle
            rep.event_time[:] = 3e-3
            rep.gradm[0, 0] = 2000.0  # crusher: b ~ (2π·2000)² · 3 ms, so D matters
            rep.adc_usage[2:] = 1
        obj = _voxel(T2=0.08, T2dash=0.01, D=1.0)
        setattr(obj, name, value.reshape(1))
        s = _sim(seq, obj)
        return s.real.sum() + 2 * s.imag.sum()

    x0 = {"T2dash": 0.01, "D": 1.0}[name]
    x = torch.tensor(x0, requires_grad=True)
    signal(x).backward()
    h = 2e-2 * x0  # central difference: O(h²) error, well above float32 noise
    fd = (signal(torch.tensor(x0 + h)) - signal(torch.tensor(x0 - h))) / (2 * h)
    assert x.grad is not None
    assert abs(float(fd)) > 1e-3 * float(signal(torch.tensor(x0)).abs())  # the check has teeth
    assert float(x.grad) == pytest.approx(float(fd), rel=1e-2)

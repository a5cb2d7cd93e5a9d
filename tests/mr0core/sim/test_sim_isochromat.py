"""Isochromat simulation against analytic signals (the independent check of the PDG)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core.sim import isochromat as iso
from mr0core.sim.isochromat import isochromat_sim

Event = tuple[float, bool, float]  # (duration s, ADC at its end, gradient moment x in 1/m)


def _voxel(**kw: object) -> mr0.CustomVoxelPhantom:
    """One (by default tiny, relaxation-free, non-diffusing) custom box voxel at the origin."""
    args: dict[str, object] = {
        "T1": 1e9,
        "T2": 1e9,
        "T2dash": 1e9,
        "D": 0.0,
        "voxel_size": 1e-6,
        "voxel_shape": "box",
    }
    args.update(kw)
    pos = args.pop("pos", [[0.0, 0.0, 0.0]])
    return mr0.CustomVoxelPhantom(pos, **args)


def _add_rep(
    seq: mr0.Sequence, angle: float, events: list[Event], phase: float = 0.0,
    adc_phase: float = 0.0,
) -> mr0.Repetition:  # fmt: skip
    rep = seq.new_rep(len(events))
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = angle
    rep.pulse.phase = phase
    for i, (dt, adc, gx) in enumerate(events):
        rep.event_time[i] = dt
        rep.adc_usage[i] = int(adc)
        rep.adc_phase[i] = adc_phase
        rep.gradm[i, 0] = gx
    return rep


def _fid(angle: float = math.pi / 2, phase: float = 0.0, adc_phase: float = 0.0,
         times: tuple[float, ...] = (1e-6,)) -> mr0.Sequence:  # fmt: skip
    """One pulse, then ADC samples at the given times after it."""
    seq = mr0.Sequence(normalized_grads=False)
    edges = np.diff([0.0, *times])
    _add_rep(seq, angle, [(float(dt), True, 0.0) for dt in edges], phase, adc_phase)
    return seq


def _sim(seq: mr0.Sequence, data: mr0.SimData | mr0.CustomVoxelPhantom, spins: int = 1,
         **kw: object) -> torch.Tensor:  # fmt: skip
    if isinstance(data, mr0.CustomVoxelPhantom):
        data = data.build()
    kw.setdefault("spin_dist", "r2")
    return isochromat_sim(seq, data, spins, print_progress=False, **kw)


def _rotation(alpha: float, phi: float) -> np.ndarray:
    """Right-handed rotation by alpha about (cos phi, sin phi, 0) (Rodrigues)."""
    n = np.array([math.cos(phi), math.sin(phi), 0.0])
    cross = np.array([[0, -n[2], n[1]], [n[2], 0, -n[0]], [-n[1], n[0], 0]])
    return np.eye(3) + math.sin(alpha) * cross + (1 - math.cos(alpha)) * cross @ cross


# --------------------------------------------------------------------------- pulses


def test_pulse_is_the_documented_rotation() -> None:
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    mp = torch.complex(m[:, 0], m[:, 1])[:, None]
    mz = m[:, 2:3]
    for alpha, phi in [(math.pi / 2, 0.0), (math.pi, 0.0), (0.7, 1.1), (2.5, -2.0)]:
        a = torch.full((5, 1), alpha, dtype=torch.float64)
        p = torch.full((5, 1), phi, dtype=torch.float64)
        new_mp, new_mz = iso._pulse(mp, mz, a, p)
        expected = m.numpy() @ _rotation(alpha, phi).T
        np.testing.assert_allclose(new_mp[:, 0].real.numpy(), expected[:, 0], atol=1e-12)
        np.testing.assert_allclose(new_mp[:, 0].imag.numpy(), expected[:, 1], atol=1e-12)
        np.testing.assert_allclose(new_mz[:, 0].numpy(), expected[:, 2], atol=1e-12)


def test_90_gives_minus_i_and_180_conjugates() -> None:
    seq = _fid(math.pi / 2)
    _add_rep(seq, math.pi, [(1e-6, True, 0.0)])
    s = _sim(seq, _voxel())
    assert complex(s[0, 0]) == pytest.approx(-1j, abs=1e-5)
    assert complex(s[1, 0]) == pytest.approx(1j, abs=1e-5)


def test_fid_amplitude_phase_and_adc_phase() -> None:
    s = _sim(_fid(), _voxel(PD=2.0))
    assert s.shape == (1, 1)
    assert s.dtype == torch.complex64
    assert complex(s[0, 0]) == pytest.approx(-2j, abs=1e-5)
    s = _sim(_fid(math.pi / 6, phase=0.4, adc_phase=0.3), _voxel())
    expected = -1j * math.sin(math.pi / 6) * np.exp(1j * 0.7)
    assert complex(s[0, 0]) == pytest.approx(expected, abs=1e-5)


def test_b1_scales_the_flip_and_shifts_the_phase() -> None:
    # B1 = 0.5 halves the flip: 180° acts as 90°, 60° as 30°
    assert complex(_sim(_fid(math.pi), _voxel(B1=0.5))[0, 0]) == pytest.approx(-1j, abs=1e-5)
    s = _sim(_fid(math.pi / 3), _voxel(B1=0.5))
    assert complex(s[0, 0]) == pytest.approx(-0.5j, abs=1e-5)
    # the phase of B1 adds to the pulse phase
    s = _sim(_fid(), _voxel(B1=torch.tensor([np.exp(1j * math.pi / 3)])))
    assert complex(s[0, 0]) == pytest.approx(-1j * np.exp(1j * math.pi / 3), abs=1e-5)


def test_ptx_shim_combines_channels() -> None:
    b1 = torch.tensor([[1.0 + 0j], [1j]])  # [tx, voxels]
    seq = _fid(math.pi / 2)
    # channel c is driven with amp·e^{−iφ} (MR-zero's convention):
    # 0.5·1 + 0.5·e^{−iπ/2}·i = 1: the channels add up to a 90° pulse of phase 0
    seq[0].pulse.shim_array = torch.tensor([[0.5, 0.0], [0.5, math.pi / 2]])
    assert complex(_sim(seq, _voxel(B1=b1))[0, 0]) == pytest.approx(-1j, abs=1e-5)
    # in phase opposition they cancel: no flip, no signal
    seq[0].pulse.shim_array = torch.tensor([[0.5, 0.0], [0.5, -math.pi / 2]])
    assert abs(complex(_sim(seq, _voxel(B1=b1))[0, 0])) < 1e-5
    seq[0].pulse.shim_array = torch.ones(3, 2)
    with pytest.raises(ValueError, match="shim channels"):
        _sim(seq, _voxel(B1=b1))


# --------------------------------------------------------------------------- relaxation


def test_t2_decay() -> None:
    times = (0.01, 0.05, 0.1, 0.2)
    s = _sim(_fid(times=times), _voxel(T2=0.08))[:, 0].numpy()
    np.testing.assert_allclose(s, -1j * np.exp(-np.array(times) / 0.08), atol=1e-5)


@pytest.mark.parametrize("ti", [0.05, 0.3, 1.0])
def test_t1_saturation_recovery(ti: float) -> None:
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, math.pi / 2, [(ti, False, 0.0)])
    _add_rep(seq, math.pi / 2, [(1e-6, True, 0.0)])
    s = _sim(seq, _voxel(T1=0.4, T2=0.05), perfect_spoiling=True)
    expected = (1 - math.exp(-ti / 0.4)) * math.exp(-1e-6 / 0.05)
    assert complex(s[0, 0]) == pytest.approx(-1j * expected, abs=1e-5)


def test_flash_steady_state_matches_ernst() -> None:
    alpha, tr, te, t1, t2 = math.radians(20), 0.01, 2e-3, 0.3, 0.05
    seq = mr0.Sequence(normalized_grads=False)
    for _ in range(300):
        _add_rep(seq, alpha, [(te, True, 0.0), (tr - te, False, 0.0)])
    s = _sim(seq, _voxel(T1=t1, T2=t2), perfect_spoiling=True)[:, 0]
    e1 = math.exp(-tr / t1)
    ernst = math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1) * math.exp(-te / t2)
    assert complex(s[-1]) == pytest.approx(-1j * ernst, rel=1e-4)
    # the first sample sees the fully relaxed Mz = 1
    assert complex(s[0]) == pytest.approx(-1j * math.sin(alpha) * math.exp(-te / t2), rel=1e-5)


# --------------------------------------------------------------------------- T2′ and echoes


@pytest.mark.parametrize(("spin_dist", "tol"), [("r2", 0.005), ("rand", 0.03)])
def test_t2dash_fid_decays_exponentially(spin_dist: str, tol: float) -> None:
    """20000 spins: quasi-random samples converge faster than random ones (σ ≈ 0.005)."""
    t2dash = 0.01
    times = (2.5e-3, 5e-3, 0.01, 0.02)
    s = _sim(_fid(times=times), _voxel(T2dash=t2dash), 20000, spin_dist=spin_dist)[:, 0].numpy()
    expected = -1j * np.exp(-np.array(times) / t2dash)
    np.testing.assert_allclose(s, expected, atol=tol)


def test_spin_echo_refocuses_t2dash_and_b0() -> None:
    te, t2, t2dash = 0.02, 0.1, 0.004
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, math.pi / 2, [(te / 2, True, 0.0)])
    _add_rep(seq, math.pi, [(te / 4, True, 0.0), (te / 4, True, 0.0)], phase=math.pi / 2)
    s = _sim(seq, _voxel(T2=t2, T2dash=t2dash, B0=37.0), 20000)[:, 0]
    # before the echo the voxel is dephased by T2′ over the dephasing time |τ|
    for sample, t, tau in ((s[0], te / 2, te / 2), (s[1], 0.75 * te, te / 4)):
        expected = math.exp(-t / t2 - tau / t2dash)
        assert abs(complex(sample)) == pytest.approx(expected, abs=0.01)
    # 90x - 180y: the echo is -i exp(-TE/T2), T2′ and B0 refocused
    assert complex(s[2]) == pytest.approx(-1j * math.exp(-te / t2), abs=0.01)


# --------------------------------------------------------------------------- gradients, voxels


def test_gradient_phase_is_negative() -> None:
    s = _sim(_gradient_fid(1.0), _voxel(pos=[[0.05, 0.0, 0.0]]))
    # -90° from the pulse, -2π k x = -18° from the gradient
    assert math.degrees(float(torch.angle(s[0, 0]))) == pytest.approx(-108.0, abs=1e-3)
    assert float(s[0, 0].abs()) == pytest.approx(1.0, abs=1e-5)


def _gradient_fid(gx: float, normalized: bool = False) -> mr0.Sequence:
    seq = mr0.Sequence(normalized_grads=normalized)
    _add_rep(seq, math.pi / 2, [(1e-6, True, gx)])
    return seq


def test_box_voxel_response_is_a_sinc() -> None:
    data = _voxel(voxel_size=0.1).build()
    s = _sim(_gradient_fid(3.0), data, 1000)
    # sinc(k s) = sin(0.3 π) / (0.3 π) = 0.858, real: the box is symmetric
    assert complex(s[0, 0]) == pytest.approx(-1j * 0.8584, abs=2e-3)
    s = _sim(_gradient_fid(3.0), data, 20000, spin_dist="rand")
    assert complex(s[0, 0]) == pytest.approx(-1j * 0.8584, abs=0.02)


def test_grid_phantom_is_the_fourier_transform_of_box_voxels() -> None:
    pd = torch.tensor([1.0, 0.5, 2.0, 0.7]).reshape(4, 1, 1)
    phantom = mr0.VoxelGridPhantom(
        PD=pd, T1=1e9, T2=1e9, T2dash=1e9, D=0.0, B0=0.0, B1=1.0, coil_sens=1.0,
        size=[0.2, 0.05, 0.01],
    )  # fmt: skip
    data = phantom.build(voxel_shape="box")
    x = torch.tensor([-0.1, -0.05, 0.0, 0.05])  # FFT-centred positions, voxel edge 0.05 m
    for k in (0.0, 3.0, 7.5, -12.0):
        s = complex(_sim(_gradient_fid(k), data, 2000)[0, 0])
        ft = complex((pd.flatten() * torch.exp(-2j * math.pi * k * x)).sum())
        assert s == pytest.approx(-1j * ft * float(np.sinc(k * 0.05)), abs=3e-3)


def test_voxels_sum_and_coils() -> None:
    coil_sens = torch.tensor([[1.0 + 0j, 1.0], [0.5j, -2.0]])  # [coils, voxels]
    data = _voxel(pos=[[0.0, 0, 0], [0.01, 0, 0]], PD=torch.tensor([1.0, 3.0]), coil_sens=coil_sens)
    s = _sim(_fid(), data)
    assert s.shape == (1, 2)
    # not normalised by the voxel count: Σ PD · coil · m+
    assert complex(s[0, 0]) == pytest.approx(-1j * (1 + 3), abs=1e-5)
    assert complex(s[0, 1]) == pytest.approx(-1j * (0.5j - 6), abs=1e-5)


def test_normalized_grads_divide_by_the_phantom_size() -> None:
    # the PD = 0 voxel at x = -0.15 m only stretches the phantom to 0.2 m in x
    data = _voxel(pos=[[0.05, 0, 0], [-0.15, 0, 0]], PD=torch.tensor([1.0, 0.0])).build()
    assert float(data.size[0]) == pytest.approx(0.2)
    physical = _sim(_gradient_fid(1.0), data)
    normalized = _sim(_gradient_fid(0.2, normalized=True), data)
    assert complex(normalized[0, 0]) == pytest.approx(complex(physical[0, 0]), abs=1e-5)
    assert math.degrees(float(torch.angle(normalized[0, 0]))) == pytest.approx(-108.0, abs=1e-3)


def test_diffusion_attenuates_like_stejskal_tanner() -> None:
    d, delta, k = 3.0, 0.05, 1.3e4  # 10^-3 mm²/s, s, 1/m
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, math.pi / 2, [(1e-6, False, k), (delta, False, 0.0), (1e-6, True, -k)])
    s = _sim(seq, _voxel(D=d), 20000, spin_dist="rand")
    expected = math.exp(-((2 * math.pi * k) ** 2) * d * 1e-9 * (delta + 1e-6))
    assert expected == pytest.approx(0.36, abs=0.02)
    assert complex(s[0, 0]) == pytest.approx(-1j * expected, abs=0.015)
    # without the gradients nothing happens
    seq[0].gradm[:] = 0
    assert complex(_sim(seq, _voxel(D=d), 1000)[0, 0]) == pytest.approx(-1j, abs=1e-5)


@pytest.mark.parametrize("model", ["isochromat", "pdg"])
def test_pgse_with_one_event_per_lobe_gives_exp_minus_bd(model: str) -> None:
    """A PGSE whose lobes are single events of duration δ: b = (2πk)² (Δ − δ/3).

    The moment of an event is played through it (as the PDG takes it), not as an impulse at its
    start; the impulse would give b = (2πk)² Δ (checked to differ by more than the tolerance).
    """
    d, delta, big_delta, k = 2.0, 10e-3, 25e-3, 2.0e4  # 10⁻³ mm²/s, s, s, 1/m
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, math.pi / 2, [(delta, False, k), (big_delta - delta, False, 0.0)])
    _add_rep(seq, math.pi, [(delta, False, k), (big_delta - delta, True, 0.0)], math.pi / 2)
    seq[1].pulse.usage = mr0.PulseUsage.REFOC
    data = _voxel(D=d)
    if model == "isochromat":
        echo = abs(complex(_sim(seq, data, 20000, spin_dist="rand")[0, 0]))
    else:
        built = data.build()
        graph = mr0.compute_graph(seq, built, 200, 1e-6)
        echo = abs(complex(mr0.execute_graph(graph, seq, built, 1e-6, 1e-6,
                                             print_progress=False)[0, 0]))  # fmt: skip
    b = (2 * math.pi * k) ** 2 * (big_delta - delta / 3)  # s/m²
    expected = math.exp(-b * d * 1e-9)
    impulse = math.exp(-((2 * math.pi * k) ** 2) * big_delta * d * 1e-9)
    assert expected == pytest.approx(0.5, abs=0.05)
    assert echo == pytest.approx(expected, abs=0.015)
    assert abs(impulse - expected) > 0.04  # the impulse model would fail the line above


# --------------------------------------------------------------------------- autograd


def test_autograd_matches_analytic_derivatives() -> None:
    ti, t1_value, alpha_value = 0.2, 0.5, 0.6
    angle = torch.tensor(alpha_value, requires_grad=True)
    t1 = torch.tensor([t1_value], requires_grad=True)
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, 0.0, [(ti, False, 0.0)])
    _add_rep(seq, 0.0, [(1e-6, True, 0.0)])
    seq[0].pulse.angle = math.pi / 2
    seq[1].pulse.angle = angle
    data = _voxel(T1=t1)
    s = _sim(seq, data, perfect_spoiling=True)
    loss = s.abs().square().sum()  # (sin α (1 - e^{-TI/T1}))²
    loss.backward()
    recovered = 1 - math.exp(-ti / t1_value)
    d_alpha = 2 * math.sin(alpha_value) * math.cos(alpha_value) * recovered**2
    d_recovered = -math.exp(-ti / t1_value) * ti / t1_value**2
    d_t1 = 2 * math.sin(alpha_value) ** 2 * recovered * d_recovered
    assert angle.grad is not None
    assert t1.grad is not None
    assert float(angle.grad) == pytest.approx(d_alpha, rel=1e-3)
    assert float(t1.grad[0]) == pytest.approx(d_t1, rel=1e-3)


def test_gradients_are_finite_with_diffusion_and_zero_length_events() -> None:
    event_time = torch.tensor([0.0, 2e-3, 0.0, 1e-3], requires_grad=True)
    gradm = torch.tensor([[0.0, 0, 0], [5.0, 0, 0], [0, 0, 0], [-2.0, 0, 0]], requires_grad=True)
    seq = mr0.Sequence(normalized_grads=False)
    rep = _add_rep(seq, math.pi / 3, [(0.0, False, 0.0)] * 3 + [(0.0, True, 0.0)])
    rep.event_time = event_time
    rep.gradm = gradm
    data = _voxel(pos=[[0.01, 0, 0], [0.02, 0, 0]], D=torch.tensor([0.0, 2.0]), voxel_size=0.05)
    data = data.build()
    data.T2 = data.T2.clone().requires_grad_(True)
    s = _sim(seq, data, 64)
    s.abs().sum().backward()
    for g in (event_time.grad, gradm.grad, data.T2.grad):
        assert g is not None
        assert bool(torch.isfinite(g).all())
    assert float(gradm.grad.abs().sum()) > 0
    assert float(event_time.grad.abs().sum()) > 0


# --------------------------------------------------------------------------- API


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spin_count": 0}, "spin_count"),
        ({"spin_count": 100_001}, "spin_count"),
        ({"spin_count": 2.5}, "spin_count"),
        ({"spin_dist": "sobol"}, "spin_dist"),
        ({"r2_seed": torch.zeros(2)}, "r2_seed"),
        ({"r2_seed": math.nan}, "r2_seed"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"spin_count": 10, "print_progress": False}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        isochromat_sim(_fid(), _voxel().build(), **args)


def test_deterministic_seeded_and_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    pos = [[0.0, 0, 0], [0.03, 0, 0], [0.05, 0.02, 0]]
    data = _voxel(pos=pos, voxel_size=0.02, T2dash=0.01, PD=torch.tensor([1.0, 2.0, 0.5]))
    data = data.build()
    seq = _gradient_fid(20.0)
    for dist in ("r2", "rand"):
        a = _sim(seq, data, 100, spin_dist=dist, r2_seed=3.0)
        b = _sim(seq, data, 100, spin_dist=dist, r2_seed=3.0)
        c = _sim(seq, data, 100, spin_dist=dist, r2_seed=0.25)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
        monkeypatch.setattr(iso, "_CHUNK_ELEMENTS", 150)  # one voxel per chunk
        chunked = _sim(seq, data, 100, spin_dist=dist, r2_seed=3.0)
        monkeypatch.undo()
        torch.testing.assert_close(chunked, a)


def test_no_adc_gives_an_empty_signal() -> None:
    seq = mr0.Sequence(normalized_grads=False)
    _add_rep(seq, 1.0, [(1e-3, False, 0.0)])
    coil_sens = torch.ones(3, 1, dtype=torch.complex64)
    s = _sim(seq, _voxel(coil_sens=coil_sens))
    assert s.shape == (0, 3)
    assert s.dtype == torch.complex64

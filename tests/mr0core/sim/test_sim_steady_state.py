"""PDG simulation of multi-pulse signals against closed forms.

Spoiled FLASH (Ernst), balanced SSFP on and off resonance, and the five echoes of three pulses.
Single voxels, high-accuracy graph settings, so every difference is a physics error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import mr0core as mr0
from mr0core.sim import compute_graph, execute_graph


def _voxel(**kw: float) -> mr0.CustomVoxelPhantom:
    args = {"T1": 1e9, "T2": 1e9, "T2dash": 1e9, "D": 0.0, "voxel_size": 0.1, "voxel_shape": "box"}
    args.update(kw)
    return mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **args)


def _sim(seq: mr0.Sequence, obj: mr0.CustomVoxelPhantom) -> np.ndarray:
    data = obj.build()
    graph = compute_graph(seq, data, 5000, 1e-9)
    return execute_graph(graph, seq, data, 1e-6, 1e-6, print_progress=False)[:, 0].numpy()


# ----------------------------------------------------------------------------------------------
# Spoiled FLASH
# ----------------------------------------------------------------------------------------------


def _flash(alpha: float, tr: float, te: float, n: int) -> mr0.Sequence:
    """RF-spoiled (117°) and gradient-spoiled FLASH, one ADC sample at TE per repetition."""
    seq = mr0.Sequence(normalized_grads=False)
    for i in range(n):
        rep = seq.new_rep(2)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = alpha
        phase = (0.5 * math.radians(117) * (i * i + i + 2)) % (2 * math.pi)  # float32-safe
        rep.pulse.phase = phase
        rep.event_time[0] = te
        rep.event_time[1] = tr - te
        rep.adc_usage[0] = 1
        rep.adc_phase[0] = math.pi / 2 - phase
        rep.gradm[1, 0] = 300.0  # 30 cycles over the 0.1 m voxel
    return seq


@pytest.mark.parametrize("deg", [5.0, 14.0, 40.0, 90.0])
def test_flash_with_t2_much_shorter_than_tr_follows_ernst(deg: float) -> None:
    """With T2 ≪ TR no transverse coherence survives a repetition: the steady state is exactly
    Ernst's, and every transient sample follows the longitudinal recursion
    ``Mz ← Mz cos α E1 + 1 − E1`` (T2* decay to TE on top). This checks the longitudinal
    bookkeeping, not the spoiling (T2 does that here): spoiling is checked against EPG below."""
    t1, t2, t2dash, tr, te = 0.9, 0.002, 0.01, 0.025, 0.0015
    alpha = math.radians(deg)
    n = 300
    s = _sim(_flash(alpha, tr, te, n), _voxel(T1=t1, T2=t2, T2dash=t2dash))
    e1 = math.exp(-tr / t1)
    decay = math.exp(-te / t2 - te / t2dash)
    mz, expected = 1.0, []
    for _ in range(n):
        expected.append(mz * math.sin(alpha) * decay)
        mz = mz * math.cos(alpha) * e1 + 1 - e1
    np.testing.assert_allclose(np.abs(s), expected, rtol=2e-4, atol=1e-6)
    ernst = math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1) * decay
    assert abs(s[-1]) == pytest.approx(ernst, rel=2e-3)
    # the ADC phase follows the RF phase: the signal stays on one axis
    np.testing.assert_allclose(np.angle(s[1:]), np.angle(s[1]), atol=1e-3)


def _epg_flash(alpha: float, tr: float, te: float, n: int, t1: float, t2: float,
               increment_deg: float) -> np.ndarray:  # fmt: skip
    """Extended phase graphs (Weigel 2015), written here as the independent reference.

    The same RF- and gradient-spoiled FLASH as :func:`_flash` (RF phase increment
    ``increment_deg``, one dephasing state per TR, ADC at TE with the receiver phase following the
    RF). States ``F+[0..N)``, ``F−[0..N)`` (``F−[j]`` is the state −j) and ``Z[0..N)``.
    """
    m = n + 2
    fp, fm, z = (np.zeros(m, complex) for _ in range(3))
    z[0] = 1.0
    c2, s2, sa, ca = math.cos(alpha / 2) ** 2, math.sin(alpha / 2) ** 2, math.sin(alpha), \
        math.cos(alpha)  # fmt: skip
    out = []
    for i in range(n):
        phase = (0.5 * math.radians(increment_deg) * (i * i + i + 2)) % (2 * math.pi)
        e = np.exp(1j * phase)
        fp, fm, z = (c2 * fp + e * e * s2 * fm - 1j * e * sa * z,
                     s2 * fp / (e * e) + c2 * fm + 1j * sa * z / e,
                     -0.5j * sa * fp / e + 0.5j * e * sa * fm + ca * z)  # fmt: skip
        for t in (te, tr - te):
            e1, e2 = math.exp(-t / t1), math.exp(-t / t2)
            fp, fm, z = fp * e2, fm * e2, z * e1
            z[0] += 1 - e1
            if t == te:
                out.append(fp[0] * np.exp(1j * (math.pi / 2 - phase)))
        fp = np.concatenate([[np.conj(fm[1])], fp[:-1]])  # the spoiler: one state up
        fm = np.concatenate([fm[1:], [0.0]])
        fm[0] = np.conj(fp[0])
    return np.array(out)


@pytest.mark.parametrize("deg", [10.0, 30.0])
def test_rf_spoiled_flash_with_t2_longer_than_tr_equals_epg(deg: float) -> None:
    """With T2 ≥ TR transverse coherences survive the spoiler, so the transient and the steady
    state depend on the RF spoiling: the PDG must follow an EPG reference sample by sample.

    Negative control: the same sequence without RF spoiling (increment 0°) gives a clearly
    different signal, in the PDG and in the EPG alike.
    """
    t1, t2, tr, te, n = 0.9, 0.05, 0.025, 0.0015, 200
    alpha = math.radians(deg)
    s = _sim(_flash(alpha, tr, te, n), _voxel(T1=t1, T2=t2))
    ref = _epg_flash(alpha, tr, te, n, t1, t2, 117.0)
    np.testing.assert_allclose(s, ref, rtol=0, atol=2e-5)
    unspoiled = _flash(alpha, tr, te, n)
    for rep in unspoiled:
        rep.pulse.phase = 0.0
        rep.adc_phase[0] = math.pi / 2
    s0 = _sim(unspoiled, _voxel(T1=t1, T2=t2))
    np.testing.assert_allclose(s0, _epg_flash(alpha, tr, te, n, t1, t2, 0.0), rtol=0, atol=2e-5)
    # the difference is > 100× the tolerance above
    assert np.abs(np.abs(s0[-50:]) - np.abs(s[-50:])).max() > 0.03 * np.abs(s[-50:]).max()


# ----------------------------------------------------------------------------------------------
# Balanced SSFP
# ----------------------------------------------------------------------------------------------


def _bssfp(alpha: float, tr: float, n: int) -> mr0.Sequence:
    """Alternating-phase (0, π) bSSFP without gradients, ADC at TE = TR / 2."""
    seq = mr0.Sequence(normalized_grads=False)
    for i in range(n):
        rep = seq.new_rep(2)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = alpha
        rep.pulse.phase = math.pi * (i % 2)
        rep.event_time[:] = tr / 2
        rep.adc_usage[0] = 1
        rep.adc_phase[0] = math.pi * (i % 2)
    return seq


def _bssfp_closed_form(alpha: float, tr: float, t1: float, t2: float, df: float) -> float:
    """|M⊥| at TE = TR/2 from the fixed point ``M = A M + b`` of the 3×3 Bloch map of one TR.

    The alternating RF phase is the same as an extra π of precession per TR. Right-handed
    rotations about x (pulse) and z (precession); the magnitude does not depend on handedness.
    """
    theta = 2 * math.pi * df * tr + math.pi
    ca, sa = math.cos(alpha), math.sin(alpha)
    rx = np.array([[1, 0, 0], [0, ca, sa], [0, -sa, ca]])

    def rz(p: float) -> np.ndarray:
        return np.array([[math.cos(p), math.sin(p), 0], [-math.sin(p), math.cos(p), 0], [0, 0, 1]])

    def relax(t: float) -> tuple[np.ndarray, np.ndarray]:
        e1, e2 = math.exp(-t / t1), math.exp(-t / t2)
        return np.diag([e2, e2, e1]), np.array([0.0, 0.0, 1 - e1])

    e_tr, b_tr = relax(tr)
    m = np.linalg.solve(np.eye(3) - e_tr @ rz(theta) @ rx, b_tr)  # just before the pulse
    e_half, b_half = relax(tr / 2)
    m_te = e_half @ rz(theta / 2) @ rx @ m + b_half
    return math.hypot(m_te[0], m_te[1])


@pytest.mark.parametrize(
    ("deg", "df"), [(30.0, 0.0), (60.0, 0.0), (60.0, 30.0), (40.0, 90.0), (60.0, 125.0)]
)
def test_bssfp_steady_state_on_and_off_resonance(deg: float, df: float) -> None:
    t1, t2, tr = 0.1, 0.05, 0.004
    alpha = math.radians(deg)
    s = _sim(_bssfp(alpha, tr, 300), _voxel(T1=t1, T2=t2, B0=df))
    expected = _bssfp_closed_form(alpha, tr, t1, t2, df)
    assert abs(s[-1]) == pytest.approx(expected, rel=1e-4)
    if df == 0.0:  # the explicit on-resonance formula (Freeman-Hill) agrees
        e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
        onres = math.sin(alpha) * (1 - e1) / (1 - (e1 - e2) * math.cos(alpha) - e1 * e2)
        assert abs(s[-1]) == pytest.approx(onres * math.exp(-tr / 2 / t2), rel=1e-4)


def test_bssfp_off_resonance_profile_has_its_dark_band() -> None:
    """At Δf = 1/(2 TR) the alternating-phase bSSFP signal collapses (the dark band)."""
    t1, t2, tr = 0.1, 0.05, 0.004
    alpha = math.radians(60)
    on = abs(_sim(_bssfp(alpha, tr, 300), _voxel(T1=t1, T2=t2))[-1])
    band = abs(_sim(_bssfp(alpha, tr, 300), _voxel(T1=t1, T2=t2, B0=1 / (2 * tr)))[-1])
    assert band == pytest.approx(_bssfp_closed_form(alpha, tr, t1, t2, 1 / (2 * tr)), abs=1e-5)
    assert band < 0.15 * on


# ----------------------------------------------------------------------------------------------
# Three pulses, five echoes
# ----------------------------------------------------------------------------------------------


def test_three_pulses_give_five_echoes() -> None:
    """Pulses α1, α2, α3 at 0, τ, T give Hahn's five echoes at 2τ, T+τ, 2T−2τ, 2T−τ and 2T.

    A short T2′ (0.3 ms) makes each echo a sharp peak of exactly its EPG amplitude (with T1 and
    T2 decay along its path) and leaves no signal between echoes.
    """
    a1, a2, a3 = (math.radians(d) for d in (70.0, 110.0, 80.0))
    tau, big_t, end, dt = 10e-3, 35e-3, 75e-3, 0.5e-3
    t1, t2 = 0.5, 0.1
    seq = mr0.Sequence(normalized_grads=False)
    for angle, length in ((a1, tau), (a2, big_t - tau), (a3, end - big_t)):
        rep = seq.new_rep(round(length / dt))
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = angle
        rep.event_time[:] = dt
        rep.adc_usage[:] = 1
    s = np.abs(_sim(seq, _voxel(T1=t1, T2=t2, T2dash=3e-4)))
    times = dt * np.arange(1, len(s) + 1)  # every sample at the end of its event

    def e1(t: float) -> float:
        return math.exp(-t / t1)

    def e2(t: float) -> float:
        return math.exp(-t / t2)

    def half(a: float) -> float:
        return math.sin(a / 2) ** 2

    mz_tau = math.cos(a1) * e1(tau) + 1 - e1(tau)  # longitudinal k = 0 before pulse 2
    echoes = {
        2 * tau: math.sin(a1) * half(a2) * e2(2 * tau),
        big_t + tau: 0.5 * math.sin(a1) * math.sin(a2) * math.sin(a3)
        * e2(2 * tau) * e1(big_t - tau),
        2 * big_t - 2 * tau: math.sin(a1) * half(a2) * half(a3) * e2(2 * big_t - 2 * tau),
        2 * big_t - tau: mz_tau * math.sin(a2) * half(a3) * e2(2 * (big_t - tau)),
        2 * big_t: math.sin(a1) * math.cos(a2 / 2) ** 2 * half(a3) * e2(2 * big_t),
    }  # fmt: skip
    for t, amplitude in echoes.items():
        i = int(np.argmin(np.abs(times - t)))
        assert s[i] == pytest.approx(amplitude, rel=1e-3, abs=1e-5), f"echo at {t * 1e3:.1f} ms"
    # nothing else: every sample 2.5 ms from any echo and any pulse is (nearly) zero
    events = np.array([*echoes, 0.0, tau, big_t])
    quiet = np.min(np.abs(times[:, None] - events[None, :]), axis=1) >= 2.5e-3
    assert quiet.sum() > 40
    assert s[quiet].max() < 1e-3

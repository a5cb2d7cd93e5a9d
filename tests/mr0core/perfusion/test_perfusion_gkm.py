"""General Kinetic Model and white-paper quantification against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from mr0core.perfusion.gkm import delta_m, peak_time
from mr0core.perfusion.quantify import quantify, quantify_gkm

T1B = 1.65
LAM = 0.9
GM = {"perfusion": 60.0, "transit_time": 0.8, "m0": 75.0, "t1_tissue": 1.33}


def _dm(t, label_type="pcasl", tau=1.8, alpha=0.85, model="full", **tissue):
    values = {**GM, **tissue}
    return delta_m(
        t, label_type=label_type, label_duration=tau, t1_blood=T1B, partition_coefficient=LAM,
        label_efficiency=alpha, model=model, **values,
    )  # fmt: skip


@pytest.mark.parametrize("label_type", ["pcasl", "casl", "pasl"])
def test_zero_before_arrival_positive_after(label_type):
    t = np.linspace(0.0, 0.8, 81)
    assert np.all(_dm(t, label_type) == 0.0)
    assert np.all(_dm(np.linspace(0.81, 5.0, 50), label_type) > 0.0)


@pytest.mark.parametrize("label_type", ["pcasl", "pasl"])
def test_continuous_at_bolus_end(label_type):
    edge = GM["transit_time"] + 1.8
    before, after = _dm(edge - 1e-9, label_type), _dm(edge + 1e-9, label_type)
    assert after == pytest.approx(before, rel=1e-7)


def test_pcasl_plateau_limit():
    """A long labelling reaches 2 α M0b f T1′ exp(−Δt/T1b) (Buxton's steady state)."""
    f = GM["perfusion"] / 6000.0
    t1p = 1.0 / (1.0 / GM["t1_tissue"] + f / LAM)
    plateau = 2 * 0.85 * GM["m0"] / LAM * f * t1p * np.exp(-GM["transit_time"] / T1B)
    tau = 60.0
    assert _dm(GM["transit_time"] + tau, tau=tau) == pytest.approx(plateau, rel=1e-12)
    # half way up: 1 − e^{−1} of the plateau one T1′ after arrival
    one_t1p = _dm(GM["transit_time"] + t1p, tau=tau)
    assert one_t1p == pytest.approx(plateau * (1 - np.exp(-1.0)), rel=1e-12)


def test_pasl_initial_slope():
    """Right after arrival PASL ΔM grows like 2 α M0b f (t − Δt) e^{−Δt/T1b}."""
    f = GM["perfusion"] / 6000.0
    u = 1e-5
    slope = 2 * 0.98 * GM["m0"] / LAM * f * np.exp(-GM["transit_time"] / T1B)
    assert _dm(GM["transit_time"] + u, "pasl", alpha=0.98) / u == pytest.approx(slope, rel=1e-4)


@pytest.mark.parametrize(("label_type", "tau"), [("pcasl", 1.8), ("pasl", 0.7), ("pasl", 20.0)])
@pytest.mark.parametrize("model", ["full", "whitepaper"])
def test_peak_time(label_type, tau, model):
    t = np.linspace(0.0, 25.0, 250001)
    numeric = t[np.argmax(_dm(t, label_type, tau=tau, model=model))]
    closed = peak_time(
        transit_time=GM["transit_time"], t1_tissue=GM["t1_tissue"], perfusion=GM["perfusion"],
        label_type=label_type, label_duration=tau, t1_blood=T1B, model=model,
    )  # fmt: skip
    assert numeric == pytest.approx(closed, abs=2e-4)
    if label_type == "pasl" and tau == 20.0:  # the in-bolus maximum, not the bolus end
        assert closed < GM["transit_time"] + tau - 1


def test_whitepaper_round_trip_pcasl():
    f = np.array([0.0, 20.0, 60.0, 120.0])
    pld, tau = 1.8, 1.8
    dm = _dm(
        tau + pld, perfusion=f, model="whitepaper", transit_time=np.array([0.5, 1.2, 0.8, 1.8])
    )
    cbf = quantify(
        dm, GM["m0"], label_type="pcasl", t1_blood=T1B, label_efficiency=0.85,
        post_labeling_delay=pld, label_duration=tau, partition_coefficient=LAM,
    )  # fmt: skip
    np.testing.assert_allclose(cbf, f, rtol=1e-12, atol=1e-12)


def test_whitepaper_round_trip_pasl():
    f = np.array([20.0, 60.0])
    ti, ti1 = 1.8, 0.8
    dm = _dm(ti, "pasl", tau=ti1, alpha=0.98, perfusion=f, model="whitepaper", transit_time=0.7)
    cbf = quantify(dm, GM["m0"], label_type="pasl", t1_blood=T1B, label_efficiency=0.98,
                   inversion_time=ti, bolus_cutoff_time=ti1, partition_coefficient=LAM)  # fmt: skip
    np.testing.assert_allclose(cbf, f, rtol=1e-12)


def test_negative_controls():
    """The formula is exact only where its assumptions hold: each broken one shows."""
    pld, tau = 1.8, 1.8
    kw = {"label_type": "pcasl", "t1_blood": T1B, "label_efficiency": 0.85,
          "post_labeling_delay": pld, "label_duration": tau}  # fmt: skip
    # label not yet arrived at the readout (Δt > PLD): underestimated
    late = quantify(_dm(tau + pld, model="whitepaper", transit_time=2.5), GM["m0"], **kw)
    assert late < 0.9 * GM["perfusion"]
    # tissue T1′ (full model) instead of T1b: off by more than 1 %
    full = quantify(_dm(tau + pld), GM["m0"], **kw)
    assert abs(full / GM["perfusion"] - 1) > 0.01
    # a wrong efficiency scales the result
    wrong = quantify(
        _dm(tau + pld, model="whitepaper"), GM["m0"], **{**kw, "label_efficiency": 0.7}
    )
    assert wrong == pytest.approx(GM["perfusion"] * 0.85 / 0.7, rel=1e-12)


def test_full_model_inverse():
    f = np.array([[10.0, 60.0], [20.0, 95.0]])
    dt = np.array([[0.8, 1.2], [1.2, 0.5]])
    t1 = np.array([[1.33, 0.83], [0.83, 1.33]])
    t = 1.8 + 1.8
    dm = _dm(t, perfusion=f, transit_time=dt, t1_tissue=t1)
    est = quantify_gkm(dm, GM["m0"], t=t, transit_time=dt, t1_tissue=t1, label_type="pcasl",
                       label_duration=1.8, t1_blood=T1B, label_efficiency=0.85)  # fmt: skip
    np.testing.assert_allclose(est, f, rtol=1e-9)


def test_zero_m0_and_bad_input():
    assert quantify(1.0, 0.0, label_type="pasl", t1_blood=T1B, label_efficiency=0.98,
                    inversion_time=1.8, bolus_cutoff_time=0.8) == 0.0  # fmt: skip
    with pytest.raises(ValueError, match="label_type"):
        _dm(2.0, "fair")
    with pytest.raises(ValueError, match="label_duration"):
        _dm(2.0, tau=0.0)
    with pytest.raises(ValueError, match="bolus_cutoff_time"):
        quantify(1.0, 1.0, label_type="pasl", t1_blood=T1B, label_efficiency=0.98)

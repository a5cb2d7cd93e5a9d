"""Prewhitening (:mod:`mr0core.recon.preprocess`): whitened noise has identity covariance, with
the noise covariance scaled from the noise's dwell time to the data's (variance ∝ 1 / dwell)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mr0core.recon.kdata import KData, KDataError
from mr0core.recon.preprocess import (
    noise_covariance,
    prewhiten,
    prewhiten_kdata,
    remove_readout_oversampling,
)

MIX = torch.tensor(
    [
        [1.0, 0.0, 0.0, 0.0],
        [0.6 + 0.2j, 0.8, 0.0, 0.0],
        [0.2, 0.3 - 0.1j, 0.9, 0.0],
        [0.0, 0.5, 0.1 + 0.3j, 1.2],
    ],
    dtype=torch.complex128,
)
"""Coil mixing: noise covariance ``Ψ = MIX MIXᴴ`` at the reference dwell."""
PSI = MIX @ MIX.conj().T
T_S = 5e-6  # dwell of the data, s


def correlated_noise(samples: int, variance: float, seed: int) -> torch.Tensor:
    """``[samples, 4]`` complex noise with covariance ``variance · Ψ``."""
    g = torch.Generator().manual_seed(seed)
    white = torch.randn(4, samples, dtype=torch.complex128, generator=g)  # E|w|² = 1
    return (math.sqrt(variance) * MIX @ white).T.contiguous()


def covariance_of(white: torch.Tensor) -> torch.Tensor:
    return white.T @ white.conj() / white.shape[0]


def test_noise_covariance_is_the_sample_mean():
    noise = correlated_noise(200_000, 1.0, seed=1)
    cov = noise_covariance(noise)
    assert torch.allclose(cov, cov.conj().T)
    assert (cov - PSI).abs().max() < 0.03  # sampling error ~ 1/sqrt(2e5) per entry
    with pytest.raises(ValueError, match="at least 4 noise samples"):
        noise_covariance(noise[:3])


def test_noise_at_twice_the_dwell_whitens_data_to_identity():
    """Noise measured with dwell 2t has covariance Ψ; data sampled with dwell t have twice the
    bandwidth, so their noise has covariance 2Ψ. Only the scaling sqrt(t_d / t_n) whitens
    them to the identity: no scaling leaves 2·I, the inverse ratio 4·I."""
    n = 200_000
    cov = noise_covariance(correlated_noise(n, 1.0, seed=2))  # acquired with dwell 2t
    data_noise = correlated_noise(n, 2.0, seed=3)  # the data's noise at dwell t
    eye = torch.eye(4, dtype=torch.complex128)

    white = prewhiten(data_noise, cov, dwell_s=T_S, noise_dwell_s=2 * T_S)
    assert (covariance_of(white) - eye).abs().max() < 0.03

    plain = prewhiten(data_noise, cov)  # no dwell times: taken as equal
    assert (covariance_of(plain) - 2 * eye).abs().max() < 0.06
    inverse = prewhiten(data_noise, cov, dwell_s=2 * T_S, noise_dwell_s=T_S)
    assert (covariance_of(inverse) - 4 * eye).abs().max() < 0.12


def test_dwell_per_sample():
    """Rows with different dwell times each get their own bandwidth factor."""
    n = 100_000
    cov = noise_covariance(correlated_noise(n, 1.0, seed=4))  # noise dwell 2t
    fast = correlated_noise(n, 2.0, seed=5)  # dwell t: twice the bandwidth
    slow = correlated_noise(n, 0.5, seed=6)  # dwell 4t: half of it
    dwell = torch.cat([torch.full((n,), T_S), torch.full((n,), 4 * T_S)]).to(torch.float64)
    white = prewhiten(torch.cat([fast, slow]), cov, dwell_s=dwell, noise_dwell_s=2 * T_S)
    eye = torch.eye(4, dtype=torch.complex128)
    assert (covariance_of(white[:n]) - eye).abs().max() < 0.04
    assert (covariance_of(white[n:]) - eye).abs().max() < 0.04


def test_whitening_is_the_inverse_cholesky_factor():
    signal = correlated_noise(16, 1.0, seed=7).to(torch.complex64)
    cov = PSI.to(torch.complex64)
    white = prewhiten(signal, cov)
    assert white.dtype == torch.complex64
    expected = signal @ torch.linalg.inv(torch.linalg.cholesky(cov)).T
    assert torch.allclose(white, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dwell_s": T_S}, "both dwell times or neither"),
        ({"noise_dwell_s": T_S}, "both dwell times or neither"),
        ({"dwell_s": 0.0, "noise_dwell_s": T_S}, "positive"),
        ({"dwell_s": T_S, "noise_dwell_s": -1.0}, "positive"),
        ({"dwell_s": torch.full((3,), T_S), "noise_dwell_s": T_S}, "3 values for 8 samples"),
    ],
)
def test_bad_dwell_times_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prewhiten(correlated_noise(8, 1.0, seed=8), PSI, **kwargs)


def test_bad_covariances_are_refused():
    signal = correlated_noise(8, 1.0, seed=9)
    with pytest.raises(ValueError, match="coils"):
        prewhiten(signal, PSI[:3, :3])
    with pytest.raises(ValueError, match="covariance"):
        prewhiten(signal, correlated_noise(8, 1.0, seed=10))  # noise samples, not Ψ
    singular = PSI.clone()
    singular[3] = singular[2]
    singular[:, 3] = singular[:, 2]
    with pytest.raises(ValueError, match="not positive definite"):
        prewhiten(signal, singular)


# -- raw data ------------------------------------------------------------------------------------


def make_kdata(noise_dwell_s: float | None, coils: int = 4, oversampling: int = 2) -> KData:
    """Two 16-sample Cartesian readouts with dwell t and 2t, and noise samples of their own."""
    n = 16
    signal = correlated_noise(2 * n, 1.0, seed=11)[:, :coils].to(torch.complex64)
    return KData(
        signal=signal,
        readout_start=torch.tensor([0, n]),
        readout_length=torch.tensor([n, n]),
        idx={"LIN": torch.tensor([0, 1])},
        encoded_matrix=(n, 2, 1),
        recon_matrix=(n // oversampling, 2, 1),
        encoded_fov_m=(0.2 * oversampling, 0.2, 0.005),
        recon_fov_m=(0.2, 0.2, 0.005),
        center_sample=torch.tensor([n // 2, n // 2]),
        sample_time_s=torch.tensor([T_S, 2 * T_S], dtype=torch.float64),
        flags=torch.zeros(2, dtype=torch.int64),
        center_line=1,
        noise=correlated_noise(64, 1.0, seed=12)[:, :coils].to(torch.complex64),
        noise_sample_time_s=noise_dwell_s,
    )


def test_prewhiten_kdata_uses_each_readouts_dwell():
    kd = make_kdata(noise_dwell_s=2 * T_S)
    assert kd.noise is not None
    out = prewhiten_kdata(kd)
    assert out.noise is None
    assert out.noise_sample_time_s is None
    cov = noise_covariance(kd.noise)
    first = prewhiten(kd.signal[:16], cov, dwell_s=T_S, noise_dwell_s=2 * T_S)
    second = prewhiten(kd.signal[16:], cov)  # same dwell as the noise
    assert torch.allclose(out.signal, torch.cat([first, second]), atol=1e-6)
    assert torch.allclose(first, prewhiten(kd.signal[:16], cov) / math.sqrt(2), atol=1e-6)
    # unknown noise dwell: no bandwidth factor
    unknown = prewhiten_kdata(make_kdata(noise_dwell_s=None))
    assert torch.allclose(unknown.signal, prewhiten(kd.signal, cov), atol=1e-6)


def test_prewhiten_kdata_leaves_single_coils_and_refuses_short_noise():
    one = make_kdata(noise_dwell_s=T_S, coils=1)
    assert prewhiten_kdata(one) is one
    kd = make_kdata(noise_dwell_s=T_S)
    assert kd.noise is not None
    with pytest.raises(KDataError, match="cannot prewhiten"):
        prewhiten_kdata(replace(kd, noise=kd.noise[:3]))


def test_kdata_refuses_a_bad_noise_dwell():
    with pytest.raises(KDataError, match="noise_sample_time_s"):
        make_kdata(noise_dwell_s=0.0)


@pytest.mark.parametrize("noise_dwell_s", [2 * T_S, None])
def test_prewhitening_commutes_with_oversampling_removal(noise_dwell_s):
    """Removing oversampling scales the dwell (and the noise's) alike, so the order of the two
    steps does not matter, with or without a known noise dwell."""
    kd = make_kdata(noise_dwell_s=noise_dwell_s)
    a = remove_readout_oversampling(prewhiten_kdata(kd))
    b = prewhiten_kdata(remove_readout_oversampling(kd))
    assert torch.equal(a.readout_length, b.readout_length)
    assert np.allclose(a.signal.numpy(), b.signal.numpy(), atol=1e-5)
    assert torch.allclose(a.sample_time_s, 2 * kd.sample_time_s)

"""One noise convention: ``util.simulate(noise_level=σ)`` and ``run_simulation(noise=σ)`` both add
complex Gaussian noise with ``E|n|² = σ²`` (each part σ/√2), through ``mr0core.jobs.add_noise``.

The simulated signal is exactly zero (a 0° pulse), so what comes back is the noise alone.
"""

from __future__ import annotations

import math

import pytest
import torch

import mr0core as mr0
from mr0core.jobs import SimSettings, add_noise, run_simulation

SAMPLES = 40_000
# the relative standard error of a standard deviation estimated from N samples is 1/sqrt(2N)
TOL = 6 / math.sqrt(2 * SAMPLES)


def _silent_sequence(samples: int = SAMPLES) -> mr0.Sequence:
    """A 0° pulse and ``samples`` ADC events: the signal is zero."""
    seq = mr0.Sequence()
    rep = seq.new_rep(samples + 1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = 0.0
    rep.event_time[:] = 1e-5
    rep.adc_usage[1:] = 1
    return seq


def _voxel() -> mr0.CustomVoxelPhantom:
    return mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], PD=1.0, T1=1.0, T2=0.1, T2dash=0.1, D=0.0,
                                  voxel_size=0.1, voxel_shape="box")  # fmt: skip


def _check_convention(noise: torch.Tensor, sigma: float) -> None:
    assert noise.real.std().item() == pytest.approx(sigma / math.sqrt(2), rel=TOL)
    assert noise.imag.std().item() == pytest.approx(sigma / math.sqrt(2), rel=TOL)
    assert noise.abs().pow(2).mean().sqrt().item() == pytest.approx(sigma, rel=TOL)


def test_the_simulated_signal_is_zero() -> None:
    signal, _ = mr0.util.simulate(_silent_sequence(100), _voxel())
    assert float(signal.abs().max()) == 0.0


@pytest.mark.parametrize("sigma", [0.3, 2.0])
def test_util_simulate_and_run_simulation_add_the_same_noise(sigma: float) -> None:
    seq, phantom = _silent_sequence(), _voxel()
    util_noise, _ = mr0.util.simulate(seq, phantom, noise_level=sigma)
    job_noise = run_simulation(seq, phantom, SimSettings(), noise=sigma, seed=4, progress=False)
    _check_convention(util_noise, sigma)
    _check_convention(job_noise, sigma)


def test_util_simulate_follows_torch_manual_seed_as_mrzero_does() -> None:
    seq, phantom = _silent_sequence(500), _voxel()
    torch.manual_seed(11)
    signal, _ = mr0.util.simulate(seq, phantom, noise_level=0.5)
    torch.manual_seed(11)
    expected = 0.5 * torch.randn(signal.shape, dtype=torch.complex64)
    torch.testing.assert_close(signal, expected, rtol=0, atol=1e-7)


def test_seeded_noise_is_reproducible() -> None:
    seq, phantom = _silent_sequence(500), _voxel()
    a = run_simulation(seq, phantom, SimSettings(), noise=1.0, seed=7, progress=False)
    b = run_simulation(seq, phantom, SimSettings(), noise=1.0, seed=7, progress=False)
    c = run_simulation(seq, phantom, SimSettings(), noise=1.0, seed=8, progress=False)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    zero = torch.zeros(500, 1, dtype=torch.complex64)
    assert torch.equal(add_noise(zero, 1.0, seed=7), a)


def test_add_noise_refuses_bad_input() -> None:
    zero = torch.zeros(3, 1, dtype=torch.complex64)
    assert add_noise(zero, 0.0) is zero
    with pytest.raises(ValueError, match="-1"):
        add_noise(zero, -1.0)
    with pytest.raises(ValueError, match="nan"):
        add_noise(zero, float("nan"))
    with pytest.raises(ValueError, match="float32"):
        add_noise(torch.zeros(3), 1.0)
    with pytest.raises(ValueError, match=r"-0\.5"):
        mr0.util.simulate(_silent_sequence(10), _voxel(), noise_level=-0.5)

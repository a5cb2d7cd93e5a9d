"""``util.simulate(noise_level=σ)`` adds MR-zero's noise (black box; needs ``mrzerocore``).

Measured on MRzeroCore 1.2.0 by running it: on a signal that is exactly zero, its noise has
``E|n|² = σ²`` (each of the real and imaginary part σ/√2), drawn from torch's global generator,
so that after the same ``torch.manual_seed`` it equals ``σ · torch.randn(shape, complex64)``.
mr0core's ``util.simulate`` (``mr0core.jobs.add_noise``) must give the same noise, sample for
sample.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from conftest import quiet_mrzero

import mr0core as mr0

pytestmark = pytest.mark.reference

SAMPLES = 20_000


def _silent(mod: Any, samples: int) -> tuple[Any, Any]:
    """A 0° pulse with ``samples`` ADC events and a one-voxel phantom: the signal is zero."""
    seq = mod.Sequence()
    rep = seq.new_rep(samples + 1)
    rep.pulse.usage = mod.PulseUsage.EXCIT
    rep.pulse.angle = torch.tensor(0.0)
    rep.event_time[:] = 1e-5
    rep.adc_usage[1:] = 1
    phantom = mod.CustomVoxelPhantom(pos=[[0.0, 0.0, 0.0]], PD=[1.0], T1=1.0, T2=0.1,
                                     T2dash=0.1, D=0.0, B0=0.0, B1=1.0, voxel_size=0.1,
                                     voxel_shape="box")  # fmt: skip
    return seq, phantom


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_noise_equals_mrzero_for_the_same_seed(sigma: float) -> None:
    with quiet_mrzero():
        import MRzeroCore as mz

        seq, phantom = _silent(mz, SAMPLES)
        torch.manual_seed(3)
        theirs = mz.util.simulate(seq, phantom, noise_level=sigma)[0]
    seq, phantom = _silent(mr0, SAMPLES)
    torch.manual_seed(3)
    ours, _ = mr0.util.simulate(seq, phantom, noise_level=sigma)
    tol = 6 / math.sqrt(2 * SAMPLES)
    assert theirs.real.std().item() == pytest.approx(sigma / math.sqrt(2), rel=tol)
    assert theirs.imag.std().item() == pytest.approx(sigma / math.sqrt(2), rel=tol)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)

"""Conventions checked as a black box against MR-zero (``mrzerocore``; the ``reference`` marker).

Each case builds the same sequence and one-voxel phantom in both libraries and compares the
signals: the pTx shim (channel ``c`` driven with ``amp · exp(−iφ)``), a one-channel shim (not
applied, with a warning from ours), and ``isochromat_sim(perfect_spoiling=True)`` (transverse
magnetisation zeroed before excitation pulses only).
"""

from __future__ import annotations

import math
import warnings
from types import ModuleType

import pytest
import torch
from conftest import quiet_mrzero

import mr0core as mr0
import mr0core.sim.rf as rf

pytestmark = pytest.mark.reference


_quiet = quiet_mrzero


@pytest.fixture(scope="module")
def mz() -> ModuleType:
    with _quiet():
        import MRzeroCore

    return MRzeroCore


def _fid(mod: ModuleType, shim: list[list[float]]):
    seq = mod.Sequence()
    rep = seq.new_rep(2)
    rep.pulse.usage = mod.PulseUsage.EXCIT
    rep.pulse.angle = torch.tensor(math.pi / 4)
    rep.pulse.phase = torch.tensor(0.3)
    rep.pulse.shim_array = torch.tensor(shim, dtype=torch.float32)
    rep.event_time[:] = 1e-3
    rep.adc_usage[1] = 1
    return seq


def _spin_echo(mod: ModuleType):
    """90° (EXCIT), 180° (REFOC) after 5 ms, echo 5 ms later; then a second 60° EXCIT + FID."""
    seq = mod.Sequence()
    for angle, usage, events, adc in [(90, mod.PulseUsage.EXCIT, 1, None),
                                      (180, mod.PulseUsage.REFOC, 1, 0),
                                      (60, mod.PulseUsage.EXCIT, 1, 0)]:  # fmt: skip
        rep = seq.new_rep(events)
        rep.pulse.usage = usage
        rep.pulse.angle = torch.tensor(angle * math.pi / 180)
        rep.pulse.phase = torch.tensor(math.pi / 2 if usage == mod.PulseUsage.REFOC else 0.0)
        rep.event_time[:] = 5e-3
        if adc is not None:
            rep.adc_usage[adc] = 1
    return seq


def _voxel(mod: ModuleType, b1: list[complex], t2: float = 1e9):
    n = 1
    return mod.SimData(
        PD=torch.ones(n), T1=torch.full((n,), 0.8), T2=torch.full((n,), t2),
        T2dash=torch.full((n,), 1e9), D=torch.zeros(n), B0=torch.zeros(n),
        B1=torch.tensor(b1, dtype=torch.complex64).reshape(-1, 1),
        coil_sens=torch.ones(1, n, dtype=torch.complex64), size=torch.tensor([0.2, 0.2, 0.2]),
        affine=torch.eye(4), voxel_pos=torch.zeros(n, 3), nyquist=torch.tensor([1, 1, 1]),
        dephasing_func=lambda b, nyq: torch.ones(b.shape[:-1]),
    )  # fmt: skip


def _pdg(mod: ModuleType, seq, data) -> torch.Tensor:
    graph = mod.compute_graph(seq, data, 200, 1e-6)
    return mod.execute_graph(graph, seq, data, 1e-6, 1e-6, print_progress=False).flatten()


def _iso(mod: ModuleType, seq, data, spoil: bool = False) -> torch.Tensor:
    return mod.isochromat_sim(seq, data, 1, perfect_spoiling=spoil, print_progress=False).flatten()


@pytest.mark.parametrize("shim", [[[1.0, 0.7], [0.5, -0.4]], [[0.3, 2.0], [1.2, 0.9]]])
def test_ptx_shim_equals_mr_zero(mz: ModuleType, shim: list[list[float]]) -> None:
    b1 = [1.0, 0.6j]
    with _quiet():
        ref = _pdg(mz, _fid(mz, shim), _voxel(mz, b1))
    ours = _pdg(mr0, _fid(mr0, shim), _voxel(mr0, b1))
    # MR-zero's isochromat simulation takes one B1 channel only: ours is checked against its PDG
    ours_iso = _iso(mr0, _fid(mr0, shim), _voxel(mr0, b1))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_iso, ref, atol=1e-5, rtol=0)
    # negative control: the opposite phase sign, e^{+iφ}, gives another signal
    flipped = [[a, -p] for a, p in shim]
    assert (_pdg(mr0, _fid(mr0, flipped), _voxel(mr0, b1)) - ref).abs().max() > 0.05


@pytest.mark.parametrize("b1", [[0.7], [1.0, 0.5j]])
def test_one_channel_shim_is_not_applied_as_in_mr_zero(
    mz: ModuleType, b1: list[complex], monkeypatch: pytest.MonkeyPatch
) -> None:
    shim = [[0.5, 0.3]]
    with _quiet():
        ref = _pdg(mz, _fid(mz, shim), _voxel(mz, b1))
    monkeypatch.setattr(rf, "_warned_single_channel", False)
    with pytest.warns(UserWarning, match="one-channel pTx shim .* is not applied"):
        ours = _pdg(mr0, _fid(mr0, shim), _voxel(mr0, b1))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(_iso(mr0, _fid(mr0, shim), _voxel(mr0, b1)), ref, atol=1e-5,
                               rtol=0)  # fmt: skip
    # the identity shim is silent and equal
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(_pdg(mr0, _fid(mr0, [[1.0, 0.0]]), _voxel(mr0, b1)), ref,
                                   atol=1e-5, rtol=0)  # fmt: skip


def test_perfect_spoiling_zeroes_before_excitations_only(mz: ModuleType) -> None:
    t2 = 0.1
    with _quiet():
        ref = _iso(mz, _spin_echo(mz), _voxel(mz, [1.0], t2), spoil=True)
    ours = _iso(mr0, _spin_echo(mr0), _voxel(mr0, [1.0], t2), spoil=True)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    # the spin echo survives the refocusing pulse: |echo| = exp(−TE/T2)
    assert float(ours[0].abs()) == pytest.approx(math.exp(-10e-3 / t2), rel=1e-4)
    # and the second excitation sees no transverse magnetisation left over: its FID is
    # sin(60°)·Mz only, which differs from the unspoiled one (the echo's m+ is still there)
    unspoiled = _iso(mr0, _spin_echo(mr0), _voxel(mr0, [1.0], t2), spoil=False)
    assert float((unspoiled[1] - ours[1]).abs()) > 0.05

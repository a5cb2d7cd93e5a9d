"""Motion conventions against MR-zero (black box; runs only where mrzerocore is installed).

Within a repetition mr0core follows MRzeroCore 1.2.0 exactly: which times the motion functions get,
how rotation and offset move a voxel, absolute ``voxel_motion`` positions that win over
``phantom_motion``. Across repetitions MRzeroCore 1.2.0 applies the phase a state gained earlier
with the opposite sign; mr0core keeps the physical sign (``mr0core.sim.motion``). The last test
pins that difference, so that a future MR-zero release that changes it is noticed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import quiet_mrzero

import mr0core as mr0
from mr0core.sim.motion import rotation_matrices

pytestmark = pytest.mark.reference


def _simulate(mod: Any, build_seq: Callable[[Any], Any], motion: dict[str, Any]) -> torch.Tensor:
    with quiet_mrzero():
        data = mod.CustomVoxelPhantom(pos=[[0.02, 0.01, 0.0], [-0.01, 0.03, 0.0]], PD=[1.0, 0.6],
                                      T1=10.0, T2=10.0, T2dash=10.0, D=0.0,
                                      voxel_size=0.001).build()  # fmt: skip
        for name, fn in motion.items():
            setattr(data, name, fn)
        seq = build_seq(mod)
        graph = mod.compute_graph(seq, data, 200, 1e-6)
        return mod.execute_graph(graph, seq, data, 1e-6, 1e-6, print_progress=False)


def _one_repetition(mod: Any) -> Any:
    seq = mod.Sequence(normalized_grads=False)
    rep = seq.new_rep(6)
    rep.pulse.usage = mod.PulseUsage.EXCIT
    rep.pulse.angle = torch.tensor(math.pi / 2)
    rep.event_time[:] = torch.tensor([1e-3, 2e-3, 1e-3, 3e-3, 1e-3, 2e-3])
    rep.gradm[:, 0] = torch.tensor([10.0, 0.0, -7.0, 4.0, 0.0, 3.0])
    rep.gradm[:, 1] = torch.tensor([0.0, 12.0, 5.0, 0.0, -6.0, 1.0])
    rep.adc_usage[:] = 1
    return seq


def _turn_and_drift(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rot = rotation_matrices(torch.stack([0 * t, 10000.0 * t, 30000.0 * t], 1))
    return rot, torch.stack([4.0 * t, -2.0 * t, 1.0 * t], 1)


def _wobble(t: torch.Tensor) -> torch.Tensor:
    base = torch.tensor([[0.02, 0.01, 0.0], [-0.01, 0.03, 0.0]])
    shift = torch.stack([torch.sin(900 * t), 3 * t, 0 * t], 1) * 0.01
    return base[None] + shift[:, None] * torch.tensor([[1.0], [-1.0]])


@pytest.mark.parametrize(
    "motion",
    [
        {"phantom_motion": _turn_and_drift},
        {"voxel_motion": _wobble},
        {"phantom_motion": _turn_and_drift, "voxel_motion": _wobble},  # voxel_motion wins
    ],
    ids=["rigid", "voxel", "both"],
)
def test_motion_within_a_repetition_equals_mr_zero(motion: dict[str, Any]) -> None:
    import MRzeroCore as mz

    ref = _simulate(mz, _one_repetition, motion)
    ours = _simulate(mr0, _one_repetition, motion)
    still = _simulate(mr0, _one_repetition, {})
    assert float((ours - ref).abs().max()) < 2e-5
    assert float((still - ref).abs().max()) > 0.1  # the motion matters here


def _constant_offset(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(t)
    return torch.eye(3).expand(n, 3, 3), torch.tensor([[0.01, 0.0, 0.0]]).expand(n, 3)


def _four_repetitions(mod: Any) -> Any:
    seq = mod.Sequence(normalized_grads=False)
    for i in range(4):
        rep = seq.new_rep(1)
        rep.event_time[:] = 1e-3
        rep.gradm[0, 0] = 10.0
        rep.adc_usage[0] = 1
        if i == 0:
            rep.pulse.usage = mod.PulseUsage.EXCIT
            rep.pulse.angle = torch.tensor(math.pi / 2)
    return seq


def test_mr_zero_flips_the_phase_carried_across_repetitions() -> None:
    """A subject held 1 cm off centre: the signal must be the still one times exp(-2πi k·d).

    mr0core gives that (k = 10, 20, 30, 40 /m: -0.1 … -0.4 cycles); MRzeroCore 1.2.0 gives
    -0.1, 0, +0.1, +0.2 cycles (the carried part with the opposite sign).
    """
    import MRzeroCore as mz

    motion = {"phantom_motion": _constant_offset}
    cycles = {}
    for name, mod in (("mr0core", mr0), ("mrzero", mz)):
        moved = _simulate(mod, _four_repetitions, motion)
        still = _simulate(mod, _four_repetitions, {})
        # voxel 0 dominates; compare the phase of the whole signal's ratio per sample
        cycles[name] = torch.angle(moved[:, 0] / still[:, 0]) / (2 * math.pi)
    expected = torch.tensor([-0.1, -0.2, -0.3, -0.4])
    wrap = lambda x: (x + 0.5) % 1 - 0.5  # noqa: E731
    assert torch.allclose(wrap(cycles["mr0core"] - expected), torch.zeros(4), atol=1e-4)
    assert torch.allclose(wrap(cycles["mrzero"] - torch.tensor([-0.1, 0.0, 0.1, 0.2])),
                          torch.zeros(4), atol=1e-4)  # fmt: skip

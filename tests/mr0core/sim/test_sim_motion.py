"""Motion in the simulation (mr0core.sim.motion): physics of moving phantoms, PDG and isochromats.

Checked against closed forms (Fourier shift of a displaced subject, the first gradient moment of a
moving spin), against the still simulation of the moved phantom, and PDG against the isochromat
simulator (the independent reference) on a moving 16² brain.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from imaging_sequences import N, flash, tse

import mr0core as mr0
from mr0core.phantom.grid_motion import GridVoxelMotion
from mr0core.sim import compute_graph, execute_graph, isochromat_sim
from mr0core.sim.motion import (
    MotionError,
    MotionLog,
    RigidMotion,
    motion_from_spec,
    rotation_matrices,
)

SPINS = 2048


def _pdg(seq: mr0.Sequence, data: mr0.SimData, tight: bool = True) -> torch.Tensor:
    thr = 1e-6 if tight else 1e-2
    graph = compute_graph(seq, data, 2000 if tight else 200, 1e-7 if tight else 1e-4)
    return execute_graph(graph, seq, data, thr, thr, print_progress=False)


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def _constant(rotation: torch.Tensor, offset: torch.Tensor) -> object:
    def motion(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = t.shape[0]
        return rotation.expand(n, 3, 3), offset.expand(n, 3)

    return motion


def _moved_copy(data: mr0.SimData, pos: torch.Tensor) -> mr0.SimData:
    return mr0.SimData(
        **{k: getattr(data, k) for k in data._TENSORS if k != "voxel_pos"},
        voxel_pos=pos,
        affine=data.affine,
        dephasing_func=data.dephasing_func,
    )


@pytest.fixture(scope="module")
def brain() -> mr0.SimData:
    return mr0.util.load_phantom((N, N), url="builtin:brain").build(voxel_shape="box")


# ---------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("make_seq", [flash, tse], ids=["flash", "tse"])
def test_constant_offset_equals_the_shifted_still_phantom(
    brain: mr0.SimData, make_seq: object
) -> None:
    """A subject that sits at an offset d all along is the still subject moved by d, exactly.

    The TSE carries each state through 16 refocusing pulses, so the phase a state gained in
    earlier repetitions must stay with it with the right sign (MRzeroCore 1.2.0 flips it).
    """
    seq = make_seq()
    d = torch.tensor([0.011, -0.007, 0.0])
    moved = _moved_copy(brain, brain.voxel_pos + d)
    brain.phantom_motion = _constant(torch.eye(3), d)
    try:
        ours = _pdg(seq, brain)
    finally:
        brain.phantom_motion = None
    ref = _pdg(seq, moved)
    still = _pdg(seq, brain)
    assert _nrmse(ours, ref) < 2e-5
    assert _nrmse(still, ref) > 0.2  # the offset matters: the check can fail


def test_constant_offset_in_the_isochromat_simulator(brain: mr0.SimData) -> None:
    seq = tse()
    d = torch.tensor([0.009, 0.004, 0.0])
    moved = _moved_copy(brain, brain.voxel_pos + d)
    brain.phantom_motion = _constant(torch.eye(3), d)
    try:
        ours = isochromat_sim(seq, brain, 64, print_progress=False, spin_dist="r2")
    finally:
        brain.phantom_motion = None
    ref = isochromat_sim(seq, moved, 64, print_progress=False, spin_dist="r2")
    assert _nrmse(ours, ref) < 1e-5


def test_single_shot_signal_is_the_fourier_shift() -> None:
    """One excitation, one readout: signal(d) = signal(0) · exp(-2πi k·d) per sample."""
    data = mr0.CustomVoxelPhantom(
        pos=[[0.01, 0.02, 0.0], [-0.03, 0.0, 0.0], [0.0, -0.01, 0.0]],
        PD=[1.0, 0.5, 0.8], T1=2.0, T2=0.5, T2dash=1.0, D=0.0, voxel_size=0.002,
    ).build()  # fmt: skip
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(33)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = 5e-5
    rep.gradm[0] = torch.tensor([-160.0, 40.0, 0.0])
    rep.gradm[1:] = torch.tensor([10.0, -2.0, 0.0])
    rep.adc_usage[1:] = 1
    k = torch.cumsum(rep.gradm, 0)[1:].double()
    d = torch.tensor([0.004, -0.006, 0.0])
    still = _pdg(seq, data)
    data.phantom_motion = _constant(torch.eye(3), d)
    moved = _pdg(seq, data)
    expected = still[:, 0].to(torch.complex128) * torch.exp(-2j * math.pi * (k @ d.double()))
    assert torch.allclose(moved[:, 0].to(torch.complex128), expected, atol=2e-5 * float(
        still.abs().max()))  # fmt: skip


def _bipolar_phase(lobes: list[float], v: float) -> tuple[float, float]:
    """Phase (cycles) of one spin moving at v (m/s) along x through gradient lobes, PDG and
    closed form ``-M1 · v`` with ``M1 = Σ Δk_e t_e`` (exact for piecewise-constant gradients)."""
    data = mr0.CustomVoxelPhantom(pos=[[0.0, 0.0, 0.0]], T1=100.0, T2=100.0, T2dash=100.0, D=0.0,
                                  voxel_size=0.001).build()  # fmt: skip
    seq = mr0.Sequence(normalized_grads=False)
    rep = seq.new_rep(len(lobes) + 1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = 2e-3
    rep.event_time[-1] = 1e-5
    rep.gradm[: len(lobes), 0] = torch.tensor(lobes)
    rep.adc_usage[-1] = 1
    still = _pdg(seq, data)
    data.phantom_motion = lambda t: (torch.eye(3).expand(len(t), 3, 3),
                                     torch.stack([v * t, 0 * t, 0 * t], 1))  # fmt: skip
    moving = _pdg(seq, data)
    measured = float(torch.angle(moving[0, 0] / still[0, 0])) / (2 * math.pi)
    t_mid = (np.arange(len(lobes)) + 0.5) * 2e-3
    m1 = float(np.sum(np.array(lobes) * t_mid))  # 1/m · s
    return measured, -m1 * v


def test_velocity_gives_the_first_moment_phase() -> None:
    measured, expected = _bipolar_phase([100.0, -100.0], 0.2)  # M1 = -0.2 s/m: +0.04 cycles
    assert abs(expected) > 0.01
    assert measured == pytest.approx(expected, abs=1e-5)


def test_flow_compensated_gradient_gives_no_phase() -> None:
    measured, _ = _bipolar_phase([100.0, -200.0, 100.0], 0.2)
    assert abs(measured) < 1e-5
    uncompensated, _ = _bipolar_phase([100.0, -100.0, 0.0], 0.2)
    assert abs(uncompensated) > 0.01  # the same spin without compensation does gain phase


def test_rotation_turns_the_image_by_the_angle_at_the_centre_of_k_space() -> None:
    """A centric single-shot readout of a turning phantom images it as turned at the time the
    centre of k-space is acquired (here: first), not as still."""
    n = 16
    phantom = mr0.util.load_phantom((n, n), url="builtin:brain")
    data = phantom.build(voxel_shape="box")
    ky, kx = np.meshgrid(np.arange(n) - n // 2, np.arange(n) - n // 2, indexing="ij")
    order = np.argsort(kx.ravel() ** 2 + ky.ravel() ** 2, kind="stable")  # centric
    points = np.stack([kx.ravel()[order], ky.ravel()[order]], 1).astype(np.float32)
    seq = mr0.Sequence()
    rep = seq.new_rep(len(points))
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = math.pi / 2
    rep.event_time[:] = 2e-6
    steps = np.diff(np.vstack([[0, 0], points]), axis=0)
    rep.gradm[:, :2] = torch.from_numpy(steps)
    rep.adc_usage[:] = 1

    def image(sig: torch.Tensor) -> torch.Tensor:
        grid = torch.zeros(n, n, dtype=torch.complex64)
        grid[points[:, 0] + n // 2, points[:, 1] + n // 2] = sig[:, 0]
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(grid))).abs()

    angle = 25.0
    rate = 2000.0  # °/s: 1° across the 0.5 ms readout
    data.phantom_motion = lambda t: (rotation_matrices(torch.stack(
        [0 * t, 0 * t, angle + rate * t], 1)), torch.zeros(len(t), 3))  # fmt: skip
    moving = image(_pdg(seq, data, tight=False))
    data.phantom_motion = None
    turned_pos = data.voxel_pos @ rotation_matrices(torch.tensor([[0.0, 0.0, angle]]))[0]
    turned = image(_pdg(seq, _moved_copy(data, turned_pos), tight=False))
    still = image(_pdg(seq, data, tight=False))
    assert _nrmse(moving, turned) < 0.05
    assert _nrmse(still, turned) > 0.15


# ---------------------------------------------------------------------- PDG vs isochromats


@pytest.mark.parametrize("make_seq", [flash, tse], ids=["flash", "tse"])
def test_pdg_matches_the_isochromat_simulator_on_a_moving_brain(
    brain: mr0.SimData, make_seq: object
) -> None:
    """Drift, breathing and a turn during the scan: both simulators agree within 2 %."""
    seq = make_seq()
    brain.phantom_motion = RigidMotion(
        translation_mm_per_s=[20.0, -10.0, 0.0],
        rotation_deg_per_s=[0.0, 0.0, 60.0],
        breathing_amplitude_mm=[0.0, 3.0, 0.0],
        breathing_period_s=0.1,
    )
    try:
        pdg = _pdg(seq, brain)
        # the TSE's isochromat error is small with fewer spins (measured 0.2 % at 1024)
        spins = SPINS if make_seq is flash else SPINS // 4
        iso = isochromat_sim(seq, brain, spins, print_progress=False, spin_dist="r2")
    finally:
        brain.phantom_motion = None
    still = _pdg(seq, brain)
    error = _nrmse(pdg, iso)
    assert error < 0.02
    # the motion changes the signal far beyond the agreement (measured: FLASH 24 %, TSE 8.5 %)
    assert _nrmse(still, iso) > max(0.05, 4 * error)


def test_voxel_motion_wins_and_matches_the_same_rigid_motion(brain: mr0.SimData) -> None:
    seq = flash()
    rigid = RigidMotion(translation_mm_per_s=[30.0, 0.0, 0.0], rotation_deg_per_s=[0, 0, 40.0])

    def per_voxel(t: torch.Tensor) -> torch.Tensor:
        rot, off = rigid(t)
        return torch.einsum("vi,nij->nvj", brain.voxel_pos, rot) + off[:, None]

    brain.phantom_motion = rigid
    try:
        a = _pdg(seq, brain, tight=False)
        brain.phantom_motion = _constant(torch.eye(3), torch.tensor([0.05, 0.0, 0.0]))
        brain.voxel_motion = per_voxel  # wins over the (different) phantom_motion
        b = _pdg(seq, brain, tight=False)
    finally:
        brain.phantom_motion = brain.voxel_motion = None
    assert _nrmse(b, a) < 1e-5


def test_gradients_reach_the_motion_parameters() -> None:
    """The signal is differentiable in the motion; autograd equals a finite difference."""
    data = mr0.util.load_phantom((8, 8), url="builtin:brain").build(voxel_shape="box")
    seq = flash(8)
    v = torch.tensor(0.05, requires_grad=True)

    def motion(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        off = torch.stack([v * t, 0 * t, 0 * t], 1)
        return torch.eye(3).expand(len(t), 3, 3), off

    data.phantom_motion = motion
    graph = compute_graph(seq, data, 200, 1e-4)
    loss = execute_graph(graph, seq, data, print_progress=False).abs().pow(2).sum()
    loss.backward()
    assert v.grad is not None
    assert v.grad != 0
    h = 1e-2

    def at(value: float) -> float:
        with torch.no_grad():
            v.fill_(value)
            out = execute_graph(graph, seq, data, print_progress=False).abs().pow(2).sum()
        return float(out)

    fd = (at(0.05 + h) - at(0.05 - h)) / (2 * h)
    assert float(v.grad) == pytest.approx(fd, rel=0.03)


def test_a_still_phantom_takes_the_unchanged_path(brain: mr0.SimData) -> None:
    """A motion that never moves gives the still signal (the extra phase is exactly zero)."""
    seq = flash()
    still = _pdg(seq, brain, tight=False)
    brain.phantom_motion = _constant(torch.eye(3), torch.zeros(3))
    try:
        zero = _pdg(seq, brain, tight=False)
    finally:
        brain.phantom_motion = None
    assert _nrmse(zero, still) < 1e-5


# ---------------------------------------------------------------------- phantoms and models


def _grid(shape: tuple[int, int, int]) -> mr0.VoxelGridPhantom:
    pd = torch.zeros(shape)
    pd[1:-1, 1:-1] = 1.0
    one = torch.ones(shape)
    return mr0.VoxelGridPhantom(pd, one, one * 0.1, one * 0.05, one, one * 0, one, one,
                                size=[0.2, 0.2, 0.01 * shape[2]])  # fmt: skip


def test_grid_voxel_motion_through_build_slices_and_interpolate() -> None:
    phantom = _grid((6, 6, 4))
    shift = torch.tensor([0.003, -0.002, 0.001])
    grid_pos = mr0.phantom.voxel_grid.grid_positions(phantom.shape, phantom.size).reshape(-1, 3)

    def motion(t: torch.Tensor) -> torch.Tensor:
        return (grid_pos[None] + shift * t[:, None, None]).expand(len(t), -1, 3)

    phantom.voxel_motion = motion
    t = torch.tensor([0.0, 2.0])
    for p in (phantom, phantom.slices([1, 2]), phantom.interpolate(9, 9, 4), phantom.to("cpu")):
        data = p.build()
        pos = data.voxel_motion(t)
        assert pos.shape == (2, data.voxel_count, 3)
        torch.testing.assert_close(pos[0], data.voxel_pos, atol=1e-6, rtol=0)
        torch.testing.assert_close(pos[1], data.voxel_pos + 2 * shift, atol=1e-6, rtol=0)
    assert isinstance(phantom.build().voxel_motion, GridVoxelMotion)
    with pytest.raises(NotImplementedError, match="mirror"):
        phantom.mirror([0])
    with pytest.raises(TypeError, match="voxel_motion"):
        phantom.voxel_motion = 3


def test_phantom_motion_is_kept_by_the_phantoms() -> None:
    rigid = RigidMotion(translation_mm_per_s=[1, 2, 3])
    phantom = _grid((4, 4, 2))
    phantom.phantom_motion = rigid
    for p in (phantom.slices([0]), phantom.interpolate(8, 8, 2), phantom.mirror([1])):
        assert p.build().phantom_motion is rigid
    custom = mr0.CustomVoxelPhantom(pos=[[0.0, 0.0, 0.0]])
    custom.phantom_motion = rigid
    assert custom.build().phantom_motion is rigid
    assert custom.build().recover().phantom_motion is rigid
    assert phantom.build().recover().phantom_motion is rigid


def test_motion_survives_the_plain_data_state() -> None:
    data = _grid((4, 4, 1)).build()
    data.phantom_motion = RigidMotion(translation_mm_per_s=[1, 2, 3], rotation_deg_per_s=[0, 0, 5])
    back = mr0.SimData.from_state(data.to_state())
    t = torch.tensor([0.1, 0.7])
    for a, b in zip(data.phantom_motion(t), back.phantom_motion(t), strict=True):
        torch.testing.assert_close(a, b)
    data.phantom_motion = lambda t: None
    with pytest.raises(TypeError, match="phantom_motion"):
        data.to_state()


def test_rotation_matrices_follow_the_row_vector_convention() -> None:
    r = rotation_matrices(torch.tensor([[0.0, 0.0, 90.0]]))[0]
    p = torch.tensor([1.0, 0.0, 0.0])
    torch.testing.assert_close(p @ r, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)


def test_motion_log_reads_tracking_tables() -> None:
    tsv = "time\trx\try\trz\ttx\tty\ttz\n0\t0\t0\t0\t0\t0\t0\n1\t0\t0\t90\t10\t0\t0\n"
    log = MotionLog.parse(tsv)
    rot, off = log(torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(off, torch.tensor([[0.005, 0, 0], [0.01, 0, 0]]))
    torch.testing.assert_close(rot[0], rotation_matrices(torch.tensor([[0.0, 0.0, 45.0]]))[0])
    csv_no_header = "# a comment\n1,0,0,90,10,0,0\n0,0,0,0,0,0,0\n"  # unsorted, no header
    torch.testing.assert_close(MotionLog.parse(csv_no_header)(torch.tensor([0.5]))[1], off[:1])
    shuffled = "tx,time,ty,tz,rx,ry,rz\n10,1,0,0,0,0,90\n0,0,0,0,0,0,0\n"
    torch.testing.assert_close(MotionLog.parse(shuffled)(torch.tensor([0.5]))[1], off[:1])
    spec = motion_from_spec({"model": "log", "log": tsv})
    torch.testing.assert_close(spec(torch.tensor([0.5]))[1], off[:1])
    back = motion_from_spec(log.to_spec())
    torch.testing.assert_close(back(torch.tensor([0.5]))[1], off[:1])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({"model": "log", "log": "time,rx\n0,1\n"}, "lacks columns"),
        ({"model": "log", "log": "0,0,0,0,0,0,0\n1,0,0,0,0,0,x\n"}, "not 7 numbers"),
        ({"model": "log", "log": "0,0,0,0,5000,0,0\n"}, "beyond 1 m"),
        ({"model": "log", "log": ""}, "empty"),
        ({"model": "rigid", "translation_mm_per_s": [1, 2]}, "three"),
        ({"model": "rigid", "translation_mm_per_s": [1e9, 0, 0]}, "unit mistake"),
        ({"model": "rigid", "speed": 1}, "unknown keys"),
        ({"model": "rigid", "breathing_period_s": 0}, "positive"),
        ({"model": "spin"}, "must be 'rigid' or 'log'"),
        ("not json", "not JSON"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_motion_specs_are_refused(spec: object, match: str) -> None:
    with pytest.raises(MotionError, match=match):
        motion_from_spec(spec)


def test_bad_motion_functions_are_named(brain: mr0.SimData) -> None:
    seq = flash(4)
    brain.phantom_motion = lambda t: torch.zeros(len(t), 3)
    try:
        with pytest.raises(MotionError, match="phantom_motion"):
            _pdg(seq, brain, tight=False)
        brain.phantom_motion = None
        brain.voxel_motion = lambda t: torch.zeros(len(t), 5, 3)
        with pytest.raises(MotionError, match=r"voxel_motion\(time\) has shape"):
            _pdg(seq, brain, tight=False)
        brain.voxel_motion = lambda t: torch.full((len(t), brain.voxel_count, 3), math.nan)
        with pytest.raises(MotionError, match="not finite"):
            _pdg(seq, brain, tight=False)
    finally:
        brain.phantom_motion = brain.voxel_motion = None


def test_shaped_rf_with_motion_is_refused(brain: mr0.SimData) -> None:
    seq = flash(4)
    brain.phantom_motion = RigidMotion()
    try:
        graph = compute_graph(seq, brain, 200, 1e-4)
        with pytest.raises(ValueError, match="moving phantom"):
            execute_graph(graph, seq, brain, print_progress=False, rf_model="shaped")
    finally:
        brain.phantom_motion = None


@pytest.mark.cuda
def test_motion_on_the_gpu_equals_the_cpu(brain: mr0.SimData) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    seq = flash()
    brain.phantom_motion = RigidMotion(
        translation_mm_per_s=[20.0, 0, 0], rotation_deg_per_s=[0, 0, 30]
    )
    try:
        cpu = _pdg(seq, brain, tight=False)
        gpu_data, gpu_seq = brain.cuda(), seq.cuda()
        gpu = _pdg(gpu_seq, gpu_data, tight=False)
    finally:
        brain.phantom_motion = None
    assert gpu.device.type == "cuda"
    assert _nrmse(gpu.cpu(), cpu) < 1e-4

"""VoxelGridPhantom, CustomVoxelPhantom, SimData and the voxel shapes."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED

from mr0core.phantom import CustomVoxelPhantom, SimData, VoxelGridPhantom, VoxelShape

MAT = SHARED / "mr0-compat" / "numerical_brain_cropped.mat"


@pytest.fixture
def mat_path() -> Path:
    if not MAT.is_file():
        pytest.skip("../shared/mr0-compat is not available")
    return MAT


def _grid(shape: tuple[int, int, int] = (8, 6, 4), seed: int = 0) -> VoxelGridPhantom:
    g = torch.Generator().manual_seed(seed)
    pd = torch.rand(shape, generator=g)
    return VoxelGridPhantom(
        PD=pd,
        T1=1 + torch.rand(shape, generator=g),
        T2=0.1 + 0.1 * torch.rand(shape, generator=g),
        T2dash=0.05,
        D=1.0,
        B0=torch.randn(shape, generator=g) * 10,
        B1=torch.ones(shape),
        coil_sens=torch.ones(2, *shape, dtype=torch.complex64),
        size=[0.2, 0.15, 0.01],
    )


def test_positions_follow_fft_convention() -> None:
    """Even N: positions [-N/2..N/2-1]/N*size; odd N: [-(N-1)/2..(N-1)/2]/N*size."""
    p = _grid((4, 5, 1))
    p.PD[:] = 1
    data = p.build()
    pos = data.voxel_pos.reshape(4, 5, 1, 3)
    np.testing.assert_allclose(pos[:, 0, 0, 0], np.array([-2, -1, 0, 1]) / 4 * 0.2, atol=1e-7)
    np.testing.assert_allclose(pos[0, :, 0, 1], np.array([-2, -1, 0, 1, 2]) / 5 * 0.15, atol=1e-7)
    assert float(pos[0, 0, 0, 2]) == 0.0
    # a voxel sits exactly at the origin, index N // 2
    assert torch.all(pos[2, 2, 0] == 0)
    np.testing.assert_allclose(data.nyquist, [4 / 0.4, 5 / 0.3, 1 / 0.02], rtol=1e-6)


def test_fft_of_point_map_has_no_half_voxel_shift() -> None:
    """The voxel at the origin has a flat k-space response: a plain FFT puts it back at N//2."""
    n = 16
    p = _grid((n, n, 1))
    p.PD[:] = 0
    p.PD[n // 2 + 3, n // 2 - 2, 0] = 1
    data = p.build()
    kx1 = torch.fft.fftshift(torch.fft.fftfreq(n, d=0.2 / n)).double()
    ky1 = torch.fft.fftshift(torch.fft.fftfreq(n, d=0.15 / n)).double()
    kx, ky = torch.meshgrid(kx1, ky1, indexing="ij")
    pos = data.voxel_pos.double()
    phase = kx[..., None] * pos[:, 0] + ky[..., None] * pos[:, 1]
    signal = (data.PD * torch.exp(-2j * math.pi * phase)).sum(-1)
    img = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(signal))).abs()
    assert np.unravel_index(int(img.argmax()), img.shape) == (n // 2 + 3, n // 2 - 2)


def test_build_drops_exactly_voxels_under_threshold_and_recovers() -> None:
    p = _grid()
    threshold = 0.4
    data = p.build(PD_threshold=threshold)
    expected = int((threshold < p.PD).sum())
    assert data.voxel_count == expected
    assert float(data.PD.min()) > threshold
    rec = data.recover()
    keep = threshold < p.PD
    torch.testing.assert_close(rec.PD[keep], p.PD[keep])
    assert torch.all(rec.PD[~keep] == 0)
    torch.testing.assert_close(rec.B0[keep], p.B0[keep])
    assert rec.coil_sens.shape == (2, *p.shape)
    # SimData and its recovery survive pickling (worker processes receive them)
    again = pickle.loads(pickle.dumps(data))
    torch.testing.assert_close(again.recover().T1, rec.T1)


def test_slices_and_size() -> None:
    p = _grid((8, 6, 4))
    s = p.slices([1, 3])
    assert s.shape == (8, 6, 2)
    assert math.isclose(float(s.size[2]), 0.01 * 2 / 4, rel_tol=1e-6)
    torch.testing.assert_close(s.T1[..., 1], p.T1[..., 3])
    with pytest.raises(IndexError, match="out of range"):
        p.slices([4])
    with pytest.raises(ValueError, match="at least one"):
        p.slices([])


def test_interpolate_keeps_mean_pd(mat_path: Path) -> None:
    p = VoxelGridPhantom.load_mat(mat_path)
    for shape in ((64, 64, 1), (96, 80, 1), (200, 220, 1)):
        q = p.interpolate(*shape)
        assert q.shape == shape
        assert abs(float(q.PD.mean()) / float(p.PD.mean()) - 1) < 0.01
        torch.testing.assert_close(q.size, p.size)
    f = p.scale_fft(64, 64, 1)
    assert abs(float(f.PD.mean()) / float(p.PD.mean()) - 1) < 0.01


def test_scale_fft_keeps_constant_and_bandlimited_maps() -> None:
    p = _grid((16, 16, 1))
    p.T1[:] = 1.25
    x = torch.arange(16) / 16
    p.B0[:] = (10 * torch.cos(2 * math.pi * x))[:, None, None]
    q = p.scale_fft(32, 32, 1)
    torch.testing.assert_close(q.T1, torch.full_like(q.T1, 1.25))
    x2 = torch.arange(32) / 32
    torch.testing.assert_close(
        q.B0[:, 0, 0], 10 * torch.cos(2 * math.pi * x2), atol=1e-4, rtol=1e-4
    )


def test_load_mat_channels(mat_path: Path) -> None:
    import scipy.io

    raw = scipy.io.loadmat(mat_path)["cropped_brain"]
    p = VoxelGridPhantom.load_mat(mat_path)
    assert p.shape == (141, 161, 1)
    np.testing.assert_array_equal(p.PD[..., 0].numpy(), raw[..., 0])
    np.testing.assert_array_equal(p.T1[..., 0].numpy(), raw[..., 1])
    np.testing.assert_array_equal(p.T2[..., 0].numpy(), raw[..., 2])
    np.testing.assert_array_equal(p.B0[..., 0].numpy(), raw[..., 3])
    np.testing.assert_array_equal(p.B1[0, ..., 0].real.numpy(), raw[..., 4])
    assert torch.all(p.T2dash == 0.03)
    assert p.coil_sens.shape == (1, 141, 161, 1)
    np.testing.assert_allclose(p.size, [0.2, 0.2, 0.008])
    # T1 in s: white/grey matter values of a few hundred ms to seconds
    assert 0.5 < float(p.T1[p.PD > 0.5].median()) < 3


def test_npz_load_and_errors(tmp_path: Path) -> None:
    shape = (5, 4, 3)
    maps = {k: np.full(shape, v, np.float32) for k, v in
            [("PD_map", 0.8), ("T1_map", 1.0), ("T2_map", 0.1), ("T2dash_map", 0.05),
             ("D_map", 1.0)]}  # fmt: skip
    np.savez(tmp_path / "a.npz", **maps, B0_map=np.full(shape, 7, np.float32),
             tissue_gm=np.ones(shape, np.float32))  # fmt: skip
    p = VoxelGridPhantom.load(tmp_path / "a.npz")
    assert p.shape == shape
    assert torch.all(p.B0 == 7)
    assert "tissue_gm" in p.tissue_masks
    np.testing.assert_allclose(p.size, [0.192] * 3, rtol=1e-6)
    b = VoxelGridPhantom.brainweb(tmp_path / "a.npz")
    torch.testing.assert_close(b.PD, p.PD)
    del maps["T2_map"]
    np.savez(tmp_path / "b.npz", **maps)
    with pytest.raises(KeyError, match="T2_map"):
        VoxelGridPhantom.load(tmp_path / "b.npz")
    with pytest.raises(FileNotFoundError):
        VoxelGridPhantom.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError):
        VoxelGridPhantom.load_mat(tmp_path / "missing.mat")


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match="T1 has shape"):
        VoxelGridPhantom(torch.ones(2, 2, 1), torch.ones(3, 2, 1), 1, 1, 1, 0, 1, 1, [1, 1, 1])
    with pytest.raises(ValueError, match="size"):
        VoxelGridPhantom(torch.ones(2, 2, 1), 1, 1, 1, 1, 0, 1, 1, [1, -1, 1])
    with pytest.raises(ValueError, match="B1"):
        VoxelGridPhantom(torch.ones(2, 2, 1), 1, 1, 1, 1, 0, torch.ones(1, 3, 2, 1), 1, [1, 1, 1])
    with pytest.raises(ValueError, match="gauss"):
        _grid().build(voxel_shape="gauss")
    with pytest.raises(ValueError, match="unknown voxel shape"):
        _grid().build(voxel_shape="cube")


def test_affine_in_size_position() -> None:
    """MR-zero >= 1.2 passes an affine where the documented API has size."""
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    p = VoxelGridPhantom(torch.ones(10, 10, 2), 1, 1, 1, 1, 0, 1, 1, affine)
    np.testing.assert_allclose(p.size, [0.02, 0.03, 0.008], rtol=1e-6)


def test_voxel_shapes() -> None:
    nyq = torch.tensor([10.0, 10.0, 10.0])
    k = torch.tensor([[0.0, 0, 0], [10, 0, 0], [10.2, 0, 0], [11.5, 0, 0], [5, 5, 5], [20, 0, 0]])
    sinc = VoxelShape("sinc")(k, nyq)
    assert sinc[0] > 0.9999
    assert sinc[1] > 0.9999
    assert sinc[2] < 1e-4
    assert sinc[3] < 1e-6
    assert sinc[4] > 0.99
    exact = VoxelShape("exact_sinc")(k, nyq)
    assert exact.tolist() == [1, 1, 0, 0, 1, 0]
    box = VoxelShape("box")(k, nyq)
    # box of width 1/(2 nyq): first zero of its sinc response at k = 2 nyq
    assert abs(float(box[5])) < 1e-6
    assert math.isclose(float(box[1]), 2 / math.pi, rel_tol=1e-5)
    assert VoxelShape("point")(k, nyq).tolist() == [1.0] * 6
    # the sinc shape is differentiable
    kk = k.clone().requires_grad_(True)
    VoxelShape("sinc")(kk, nyq).sum().backward()
    assert kk.grad is not None
    assert torch.isfinite(kk.grad).all()


def test_custom_voxel_phantom() -> None:
    pos = [[-0.4, -0.4, 0], [-0.4, -0.2, 0], [-0.3, -0.2, 0]]
    c = CustomVoxelPhantom(pos, PD=[1.0, 1.0, 0.5], T1=[1.0, 0.5, 0.5], voxel_size=0.1,
                           voxel_shape="box")  # fmt: skip
    data = c.build()
    assert isinstance(data, SimData)
    assert data.voxel_count == 3
    assert torch.all(torch.isinf(data.nyquist))
    np.testing.assert_allclose(data.size, [0.1, 0.2, 0.1], rtol=1e-6)  # z has no extent
    # box voxel of edge 0.1 m: sinc response with its first zero at k = 10 / m
    assert abs(float(data.dephasing_func(torch.tensor([[10.0, 0, 0]]), data.nyquist))) < 1e-6
    rec = data.recover()
    torch.testing.assert_close(rec.T1, c.T1)
    with pytest.raises(ValueError, match="unknown voxel shape"):
        CustomVoxelPhantom(pos, voxel_shape="exact_sinc")
    with pytest.raises(ValueError, match="entries"):
        CustomVoxelPhantom(pos, PD=[1.0, 2.0])


@pytest.mark.parametrize(("shape", "peak"), [("box", 1.0), ("gauss", 2 / math.pi)])
def test_custom_pd_map_renders_voxel_at_its_position(shape: str, peak: float) -> None:
    c = CustomVoxelPhantom([[0.25, -0.125, 0]], PD=2.0, voxel_size=0.1, voxel_shape=shape)
    m = c.generate_PD_map(resolution=128, fov=1.0)
    assert m.shape == (128, 128, 1)
    # integral = PD * voxel area
    assert math.isclose(float(m.sum()) / 128**2, 2.0 * 0.01, rel_tol=1e-4)
    # centre of mass at the voxel position (grid index i at (i - 64) / 128 m)
    grid = (torch.arange(128, dtype=m.dtype) - 64) / 128
    w = m[..., 0]
    cx = float((w.sum(1) * grid).sum() / w.sum())
    cy = float((w.sum(0) * grid).sum() / w.sum())
    assert abs(cx - 0.25) < 1e-3
    assert abs(cy + 0.125) < 1e-3
    if shape == "gauss":
        assert math.isclose(float(m.max()), 2 * peak, rel_tol=0.02)


@pytest.mark.cuda
def test_simdata_to_cuda() -> None:
    data = _grid().build()
    gpu = data.cuda()
    assert gpu.device.type == "cuda"
    assert gpu.voxel_pos.device.type == "cuda"
    assert gpu.dephasing_func(torch.zeros(3, 3, device="cuda"), gpu.nyquist).device.type == "cuda"
    assert gpu.recover().PD.device.type == "cuda"
    assert gpu.cpu().device.type == "cpu"


def test_plot_returns_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    fig = _grid().plot(time_unit="ms", title="t")
    assert len(fig.axes) >= 8
    fig2 = CustomVoxelPhantom([[0, 0, 0]]).plot(resolution=32)
    assert len(fig2.axes) >= 6


def test_interpolate_keeps_mean_pd_builtin_brain() -> None:
    """Same check as on MR-zero's .mat brain, on data that is always available."""
    from mr0core.phantom.builtin_phantoms import brain_tissues

    p = brain_tissues(size=128).combine()
    for shape in ((64, 64, 1), (50, 70, 1), (200, 200, 1)):
        q = p.interpolate(*shape)
        assert abs(float(q.PD.mean()) / float(p.PD.mean()) - 1) < 0.01, shape


def test_mr_zero_notebook_snippet_runs_unchanged(mat_path: Path) -> None:
    """The documentation's .mat example, with `import mr0core as mr0`."""
    import mr0core as mr0

    obj_p = mr0.VoxelGridPhantom.load_mat(str(mat_path))
    brain_phantom_res = 64
    obj_p = obj_p.interpolate(brain_phantom_res, brain_phantom_res, 1)
    obj_p.B0[:] = 0
    obj_p.D *= 1.5
    obj_p.size[2] = 0.08
    for ii in range(15, 25):
        for jj in range(15, 25):
            obj_p.D[ii, jj] = torch.tensor(0.75)
    obj_p = obj_p.build()
    assert isinstance(obj_p, mr0.SimData)
    assert torch.all(obj_p.B0 == 0)
    assert set(obj_p.D.unique().tolist()) <= {1.5, 0.75}
    assert float(obj_p.nyquist[2]) == pytest.approx(1 / (2 * 0.08))

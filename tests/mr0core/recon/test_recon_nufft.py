"""NUFFT: adjointness, Cartesian equivalence, density compensation, simulated radial recon."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import CORPUS, assert_adjoint

import mr0core as mr0
from mr0core.phantom import CustomVoxelPhantom
from mr0core.recon.nufft import density_compensation, nufft_adjoint, nufft_forward, reco_nufft
from mr0core.sim import compute_graph, execute_graph


def centred_ifft(k, ndim, norm="forward"):
    """The Cartesian FFT recon (default: unnormalised sum, like mr0core.recon.cartesian)."""
    dims = tuple(range(-ndim, 0))
    k = torch.fft.ifftshift(k, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(k, dim=dims, norm=norm), dim=dims)


def centred_fft(x, ndim, norm="forward"):
    dims = tuple(range(-ndim, 0))
    x = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=dims, norm=norm), dim=dims)


def cartesian_kspace(matrix, fov):
    axes = [(torch.arange(n) - n // 2) / f for n, f in zip(matrix, fov, strict=False)]
    grid = torch.meshgrid(*axes, indexing="ij")
    k = torch.stack([g.reshape(-1) for g in grid], dim=-1)
    return torch.cat([k, torch.zeros(k.shape[0], 4 - k.shape[1])], dim=1).float()


def nrmse(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize(
    ("matrix", "fov"),
    [((24, 17), (0.2, 0.25, 0.005)), ((12, 10, 7), (0.2, 0.22, 0.1))],
)
@pytest.mark.parametrize("norm", ["ortho", "backward", "forward"])
def test_adjoint_identity(matrix, fov, norm):
    g = torch.Generator().manual_seed(3)
    samples, coils = 700, 3
    kmax = torch.tensor([n / (2 * f) for n, f in zip(matrix, fov, strict=False)])
    k = (torch.rand(samples, len(matrix), generator=g) * 2 - 1) * kmax * 1.3  # beyond Nyquist too
    x = torch.randn(coils, *matrix, dtype=torch.complex64, generator=g)
    y = torch.randn(coils, samples, dtype=torch.complex64, generator=g)
    # "backward": the adjoint carries 1/N; "forward": the forward does
    factor = {"ortho": 1.0, "backward": math.prod(matrix), "forward": 1 / math.prod(matrix)}[norm]
    assert_adjoint(lambda v: nufft_forward(v, k, fov, norm=norm),
                   lambda v: nufft_adjoint(v, k, matrix, fov, norm=norm), x, y,
                   factor=factor)  # fmt: skip


def test_forward_matches_exact_dft():
    g = torch.Generator().manual_seed(4)
    matrix, fov = (9, 8), (0.18, 0.2)
    k = (torch.rand(50, 2, generator=g) - 0.5) * 40
    x = torch.randn(1, *matrix, dtype=torch.complex64, generator=g)
    pos = torch.stack(
        torch.meshgrid(
            *[(torch.arange(n) - n // 2) * f / n for n, f in zip(matrix, fov, strict=True)],
            indexing="ij",
        ),
        dim=-1,
    ).reshape(-1, 2)
    exact = torch.exp(-2j * math.pi * (k.double() @ pos.double().T)) @ x.reshape(-1).to(
        torch.complex128
    )
    forward = nufft_forward(x, k, fov, norm="backward")[0].to(torch.complex128)
    assert nrmse(forward, exact) < 1e-5
    assert nrmse(nufft_forward(x, k, fov)[0].to(torch.complex128), exact / x[0].numel()) < 1e-5


@pytest.mark.parametrize(
    ("matrix", "fov"), [((32, 27), (0.25, 0.2, 0.01)), ((8, 10, 5), (0.2, 0.2, 0.1))]
)
def test_cartesian_trajectory_equals_fft(matrix, fov):
    g = torch.Generator().manual_seed(5)
    ndim = len(matrix)
    img = torch.randn(2, *matrix, dtype=torch.complex64, generator=g)
    kdata = centred_fft(img, ndim)
    k = cartesian_kspace(matrix, fov)
    fft_recon = centred_ifft(kdata, ndim)
    ones = torch.ones(k.shape[0])
    rec = nufft_adjoint(kdata.reshape(2, -1), k, matrix, fov, dcf=ones)
    assert rec.shape == (2, *matrix)
    assert nrmse(rec, fft_recon) < 1e-5
    assert nrmse(nufft_forward(img, k, fov), kdata.reshape(2, -1)) < 1e-5
    # torch.fft's default scaling (1/N on the inverse) with norm="backward"
    rec_b = nufft_adjoint(kdata.reshape(2, -1), k, matrix, fov, dcf=ones, norm="backward")
    assert nrmse(rec_b, centred_ifft(kdata, ndim, norm="backward")) < 1e-5


def test_trailing_singleton_is_2d():
    g = torch.Generator().manual_seed(6)
    k = (torch.rand(200, 3, generator=g) - 0.5) * 100
    y = torch.randn(2, 200, dtype=torch.complex64, generator=g)
    two = nufft_adjoint(y, k, (16, 12), (0.2, 0.2, 0.005))
    three = nufft_adjoint(y, k, (16, 12, 1), (0.2, 0.2, 0.005))
    assert three.shape == (2, 16, 12, 1)
    assert torch.allclose(two, three[..., 0])


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(7)
    k = (torch.rand(30, 2, generator=g) - 0.5) * 60
    x = torch.randn(1, 6, 5, dtype=torch.complex128, generator=g, requires_grad=True)
    y = torch.randn(1, 30, dtype=torch.complex128, generator=g, requires_grad=True)
    fov = (0.2, 0.2)
    assert torch.autograd.gradcheck(lambda t: nufft_forward(t, k, fov, eps=1e-12), (x,))
    assert torch.autograd.gradcheck(lambda t: nufft_adjoint(t, k, (6, 5), fov, eps=1e-12), (y,))


def radial_kspace(spokes, samples, fov):
    angles = torch.arange(spokes) * math.pi / spokes
    radius = (torch.arange(samples) - samples / 2 + 0.5) / fov
    kx = radius[None] * torch.cos(angles[:, None])
    ky = radius[None] * torch.sin(angles[:, None])
    return torch.stack([kx.reshape(-1), ky.reshape(-1)], dim=-1)


def test_pipe_density_is_one_on_cartesian_grid():
    matrix, fov = (30, 34), (0.2, 0.24, 0.01)
    w = density_compensation(cartesian_kspace(matrix, fov), matrix, fov).reshape(matrix)
    interior = w[6:-6, 6:-6]
    assert torch.allclose(interior, torch.ones_like(interior), atol=0.02)


def test_pipe_density_follows_radial_ramp():
    fov, spokes, samples = 0.25, 96, 64
    k = radial_kspace(spokes, samples, fov)
    wp = density_compensation(k, (64, 64), (fov, fov, 0.01), method="pipe").reshape(spokes, samples)
    wr = density_compensation(k, (64, 64), (fov, fov, 0.01), method="radial").reshape(
        spokes, samples
    )
    # analytic area per sample, in cells: π r Δr / spokes (r in cells, Δr = 1 cell)
    r = torch.abs(torch.arange(samples) - samples / 2 + 0.5)
    analytic = math.pi * r / spokes
    mid = (r > 4) & (r < samples / 2 - 4)  # away from the centre and the edge
    assert torch.allclose(wr[:, mid], analytic[mid].expand(spokes, -1), rtol=0.03)
    assert torch.allclose(wp[:, mid], analytic[mid].expand(spokes, -1), rtol=0.08)


def simulate_fast(path, phantom):
    """PDG with 20 states and accuracy 1e-2: coarse, but ample for image comparisons (the
    RF-spoiled radial GRE takes ~20 s on 2 cores with util.simulate's 200 states / 1e-3)."""
    seq = mr0.Sequence.import_file(path)
    data = phantom.build()
    graph = compute_graph(seq, data, 20, 1e-4)
    return execute_graph(graph, seq, data, 1e-2, 1e-2, print_progress=False), seq.get_kspace()


@pytest.fixture(scope="module")
def brain_images():
    """Radial and Cartesian GRE of the same 64 × 64 built-in brain (FOV 0.22 m).

    Both sequences' FOVs hold the phantom: write_gre.seq 0.256 m at 64 × 64 (Δk = 3.906 /m),
    write_radial_gre.seq 0.26 m with 60 spokes × 64 samples. The radial data are reconstructed
    by NUFFT on write_gre's grid (64², FOV 0.256 m), so both images share voxels.
    """
    gre, rad = CORPUS / "write_gre.seq", CORPUS / "write_radial_gre.seq"
    phantom = mr0.util.load_phantom((64, 64), url="builtin:brain")
    for path in (gre, rad):
        fov = [float(v) for v in mr0.Sequence.import_file(path).definitions["FOV"]]
        assert all(f >= float(s) for f, s in zip(fov[:2], phantom.size[:2], strict=True))
    sig_c, k_c = simulate_fast(gre, phantom)
    sig_r, k_r = simulate_fast(rad, phantom)
    n, fov = 64, (0.256, 0.256, 0.003)
    dk = 1 / fov[0]
    # write_gre samples kx at half-cell offsets (-31.5 .. 31.5) Δk: floor puts them on the grid
    # (a half-cell k shift is a linear phase: magnitudes are unaffected)
    ix = torch.floor(k_c[:, 0] / dk + 1e-3).long() + n // 2
    iy = torch.round(k_c[:, 1] / dk).long() + n // 2
    assert len(set((ix * n + iy).tolist())) == n * n
    grid = torch.zeros(n, n, dtype=torch.complex64)
    grid[ix, iy] = sig_c[:, 0]
    cart = centred_ifft(grid, 2).abs()
    radial = reco_nufft(sig_r, k_r, (n, n), fov)
    return cart, radial


def test_radial_brain_matches_cartesian(brain_images):
    cart, radial = brain_images
    assert radial.shape == (64, 64, 1)
    corr = torch.corrcoef(torch.stack([cart.flatten(), radial[..., 0].flatten()]))[0, 1]
    assert corr > 0.9
    # same intensity scale: NUFFT and FFT recon share their normalisation (contrast differs a bit)
    assert 0.7 < float(radial.sum() / cart.sum()) < 1.3


def test_point_source_lands_on_its_voxel():
    # one small voxel at (+12, -8) voxels of a 64² grid with FOV 0.256 m (4 mm voxels)
    pos = [[12 * 0.004, -8 * 0.004, 0.0]]
    phantom = CustomVoxelPhantom(pos, T1=1.0, T2=0.1, T2dash=0.1, D=0.0, voxel_size=0.001)
    signal, k = mr0.util.simulate(CORPUS / "write_radial_gre.seq", phantom)
    image = reco_nufft(signal, k, (64, 64), (0.256, 0.256, 0.003), dcf="radial")[..., 0]
    peak = divmod(int(torch.argmax(image)), 64)
    assert peak == (32 + 12, 32 - 8)


def test_input_errors():
    k = torch.zeros(10, 3)
    y = torch.zeros(2, 10, dtype=torch.complex64)
    with pytest.raises(ValueError, match="matrix"):
        nufft_adjoint(y, k, (8,), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="11"):
        nufft_adjoint(torch.zeros(2, 11, dtype=torch.complex64), k, (8, 8), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="fov_m"):
        nufft_adjoint(y, k, (8, 8), (0.2, -1.0, 0.2))
    with pytest.raises(ValueError, match="method"):
        density_compensation(k, (8, 8), (0.2, 0.2, 0.2), method="voronoi")
    with pytest.raises(ValueError, match="coil_combine"):
        reco_nufft(y.T, k, (8, 8), (0.2, 0.2, 0.2), coil_combine="sos", dcf=None)


def test_reco_nufft_coil_combinations():
    """Multi-coil radial data made with nufft_forward from a known object and known maps."""
    from mr0core.phantom.builtin import brain

    ph = brain(size=64, coils=4)
    obj = torch.from_numpy(sum(ph.density.values())[:, :, 0]).to(torch.complex64)
    sens = torch.from_numpy(ph.B1_rx[:, :, :, 0]).to(torch.complex64)
    fov = (0.22, 0.22, 0.005)
    k = radial_kspace(160, 128, fov[0] * 2)  # 2x oversampled readout, 160 spokes > π/2 · 64
    signal = nufft_forward(sens * obj, k, fov).T  # [samples, coils]
    combined = reco_nufft(signal, k, (64, 64), fov, coil_combine=sens)
    assert combined.shape == (64, 64, 1)
    assert nrmse(combined[..., 0], obj) < 0.1
    coils = reco_nufft(signal, k, (64, 64), fov, coil_combine="none")
    assert coils.shape == (4, 64, 64, 1)
    mag_rss = reco_nufft(signal, k, (64, 64), fov, coil_combine="rss")[..., 0]
    mag_adaptive = reco_nufft(signal, k, (64, 64), fov, coil_combine="adaptive")[..., 0].abs()
    target = obj.abs() * torch.linalg.vector_norm(sens, dim=0)
    assert nrmse(mag_rss, target) < 0.1
    assert nrmse(mag_adaptive, target) < 0.1

"""CG-SENSE and sensitivity estimation on the built-in brain with 8 receive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_adjoint

from mr0core.phantom.builtin import brain
from mr0core.recon.coils import rss
from mr0core.recon.sense import (
    calibration_mask,
    cg_sense,
    resample_maps,
    sense_adjoint,
    sense_forward,
    sensitivities_from_calibration,
    sensitivities_from_reference,
)

N = 128


def fft2c(x, norm="forward"):
    """Centred FFT scaled like mr0core.recon.cartesian (1/N forward, plain-sum inverse)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1), norm=norm), dim=(-2, -1))


def ifft2c(k, norm="forward"):
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifftn(k, dim=(-2, -1), norm=norm), dim=(-2, -1))


def scaled_nrmse(est, ref):
    """NRMSE of magnitudes after the least-squares scalar (fair to zero-filling's scale)."""
    a, b = torch.abs(est).flatten(), torch.abs(ref).flatten()
    s = (a @ b) / (a @ a)
    return float(torch.linalg.norm(s * a - b) / torch.linalg.norm(b))


@pytest.fixture(scope="module")
def brain_kspace():
    """128² brain PD, 8 smooth coils; arrays in [coils, ny, nx] order (phase encoding along y)."""
    ph = brain(size=N, coils=8)
    pd = torch.from_numpy(np.asarray(sum(ph.density.values()))[:, :, 0]).to(torch.complex64)
    sens = torch.from_numpy(np.asarray(ph.B1_rx)[:, :, :, 0]).to(torch.complex64)
    obj, sens = pd.T.contiguous(), sens.transpose(1, 2).contiguous()
    return obj, sens, fft2c(sens * obj)


@pytest.mark.parametrize("norm", ["forward", "backward", "ortho"])
def test_r1_exact_sensitivities_returns_object(brain_kspace, norm):
    obj, sens, _ = brain_kspace
    kspace = fft2c(sens * obj, norm=norm)
    full = torch.ones(N, N, dtype=torch.bool)
    image = cg_sense(kspace, full, sens, max_iter=100, tol=1e-7, norm=norm)
    assert image.dtype == torch.complex64
    assert float(torch.linalg.norm(image - obj) / torch.linalg.norm(obj)) < 1e-4


def test_r2_with_24_calibration_lines_beats_zero_filling(brain_kspace):
    obj, _, kspace = brain_kspace
    mask = torch.zeros(N, N, dtype=torch.bool)
    mask[::2] = True
    mask |= calibration_mask((N, N), 24)
    undersampled = torch.where(mask, kspace, 0)
    maps = sensitivities_from_calibration(undersampled, 24)
    reference = rss(ifft2c(kspace))  # fully sampled image
    zero_filled = rss(ifft2c(undersampled))
    image = cg_sense(undersampled, mask, maps, max_iter=50)
    err_zf, err_sense = scaled_nrmse(zero_filled, reference), scaled_nrmse(image, reference)
    assert err_sense * 3 < err_zf, (err_sense, err_zf)
    # CG-SENSE keeps the fully sampled scale (maps with Σ|S|² = 1 give |ρ| ‖S‖)
    inside = torch.abs(obj) > 0.3
    ratio = torch.abs(image)[inside] / reference[inside]
    assert abs(float(ratio.median()) - 1) < 0.02


def test_maps_from_reference_scan(brain_kspace):
    _, _, kspace = brain_kspace
    # a separate 32² low-resolution reference scan on the same FOV
    ref_k = kspace[:, N // 2 - 16 : N // 2 + 16, N // 2 - 16 : N // 2 + 16]
    ref_images = ifft2c(ref_k)
    maps = sensitivities_from_reference(ref_images, shape=(N, N))
    assert maps.shape == (8, N, N)
    mask = torch.zeros(N, N, dtype=torch.bool)
    mask[::2] = True
    undersampled = torch.where(mask, kspace, 0)
    image = cg_sense(undersampled, mask, maps, max_iter=50)
    reference = rss(ifft2c(kspace))
    assert scaled_nrmse(image, reference) * 3 < scaled_nrmse(rss(ifft2c(undersampled)), reference)


def test_cg_sense_3d_r1():
    g = torch.Generator().manual_seed(2)
    _, y, x = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (6, 10, 12)], indexing="ij")
    sens = torch.stack(
        [
            torch.exp(-((x - a) ** 2 + (y - b) ** 2) / 2)
            for a, b in [(1, 0), (-1, 0), (0, 1), (0, -1)]
        ]
    ).to(torch.complex64)
    obj = torch.randn(6, 10, 12, dtype=torch.complex64, generator=g)
    dims = (-3, -2, -1)
    k = torch.fft.fftshift(
        torch.fft.fftn(torch.fft.ifftshift(sens * obj, dim=dims), dim=dims, norm="forward"),
        dim=dims,
    )
    image = cg_sense(k, torch.ones(6, 10, 12, dtype=torch.bool), sens, max_iter=200, tol=1e-7)
    assert float(torch.linalg.norm(image - obj) / torch.linalg.norm(obj)) < 1e-4


def test_calibration_mask_and_resample():
    m = calibration_mask((10, 7), 4)
    assert m.shape == (10, 7)
    assert m[:, 0].nonzero().flatten().tolist() == [3, 4, 5, 6]
    assert bool(m.all(dim=1).sum() == 4)
    g = torch.Generator().manual_seed(3)
    small = ifft2c(
        torch.nn.functional.pad(
            torch.randn(2, 8, 8, dtype=torch.complex64, generator=g), (4, 4, 4, 4)
        )
    )
    # band-limited 16² images: up- and down-sampling round-trips exactly
    back = resample_maps(resample_maps(small, (32, 40)), (16, 16))
    assert torch.allclose(back, small, atol=1e-5)


def test_errors():
    k = torch.zeros(2, 8, 8, dtype=torch.complex64)
    with pytest.raises(ValueError, match="sens"):
        cg_sense(k, torch.ones(8, 8, dtype=torch.bool), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        cg_sense(k, torch.ones(8, 9, dtype=torch.bool), k)
    with pytest.raises(ValueError, match="n_calib"):
        calibration_mask((8, 8), 9)
    with pytest.raises(ValueError, match="empty"):
        sensitivities_from_calibration(k, torch.zeros(8, 8, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(12, 9), (5, 8, 7)])
def test_sense_operators_are_adjoint(shape: tuple[int, ...]) -> None:
    """E = M F S and Eᴴ = Sᴴ Fᴴ M (2-D and 3-D, odd sizes); a map not conjugated fails."""
    g = torch.Generator().manual_seed(5)
    coils = 4
    sens = torch.randn(coils, *shape, dtype=torch.complex64, generator=g)
    mask = torch.rand(shape, generator=g) < 0.6
    x = torch.randn(shape, dtype=torch.complex64, generator=g)
    y = torch.randn(coils, *shape, dtype=torch.complex64, generator=g)
    assert_adjoint(lambda v: sense_forward(v, mask, sens),
                   lambda v: sense_adjoint(v, mask, sens), x, y)  # fmt: skip
    with pytest.raises(AssertionError):  # negative control: Sᵀ instead of Sᴴ
        assert_adjoint(lambda v: sense_forward(v, mask, sens),
                       lambda v: sense_adjoint(v, mask, sens.conj()), x, y)  # fmt: skip

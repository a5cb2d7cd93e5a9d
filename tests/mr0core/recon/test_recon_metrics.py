"""NRMSE and SSIM against closed forms and (when installed) scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mr0core.recon.metrics import least_squares_scale, nrmse, ssim


def test_nrmse_closed_form_and_scale_fit():
    ref = torch.tensor([3.0, 4.0])
    assert float(nrmse(ref, torch.tensor([3.0, 0.0]))) == pytest.approx(0.8)  # |(0,4)|/5
    assert float(nrmse(ref, 0.5 * ref)) == pytest.approx(0.5)
    assert float(nrmse(ref, 0.5 * ref, fit_scale=True)) == pytest.approx(0.0, abs=1e-7)
    assert float(least_squares_scale(ref, 0.5 * ref)) == pytest.approx(2.0)
    assert float(least_squares_scale(ref, torch.zeros(2))) == 0.0
    with pytest.raises(ValueError, match="all zero"):
        nrmse(torch.zeros(2), ref)
    with pytest.raises(ValueError, match="shapes differ"):
        nrmse(ref, torch.zeros(3))


def test_ssim_closed_forms():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((32, 32)))
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(ssim(x, 1 - x)) < 0  # same means, anti-correlated structure
    # constant images: variances vanish, SSIM = (2 a b + C1) / (a² + b² + C1) exactly
    a, b, L = 0.6, 0.9, 1.0
    c1 = (0.01 * L) ** 2
    got = ssim(torch.full((16, 16), a, dtype=torch.float64),
               torch.full((16, 16), b, dtype=torch.float64), data_range=L)  # fmt: skip
    assert float(got) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-12)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(5, 5), torch.zeros(5, 5))


def test_ssim_agrees_with_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    ref = rng.random((48, 40))
    img = ref + 0.1 * rng.standard_normal(ref.shape)
    expected = metrics.structural_similarity(
        ref, img, data_range=float(ref.max() - ref.min()), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False,
    )  # fmt: skip
    # skimage averages over the image with its borders cropped by (win-1)/2 — the valid part
    got = ssim(torch.from_numpy(ref), torch.from_numpy(img))
    assert float(got) == pytest.approx(expected, abs=2e-3)

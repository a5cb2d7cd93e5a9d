"""Coil combination: Walsh sensitivities and adaptive combination against known coils."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mr0core.phantom.builtin import brain
from mr0core.recon.coils import adaptive_combine, rss, walsh_sensitivities


@pytest.fixture(scope="module")
def coil_data():
    """Brain PD (64², with a smooth object phase) seen by the built-in 8 receive loops."""
    ph = brain(size=64, coils=8)
    pd = torch.from_numpy(np.asarray(sum(ph.density.values()))[:, :, 0]).to(torch.complex64)
    sens = torch.from_numpy(np.asarray(ph.B1_rx)[:, :, :, 0]).to(torch.complex64)
    xx, yy = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    obj = pd * torch.exp(1j * (1.5 * xx + 0.5 * yy**2))
    return obj, sens, sens * obj


def reference_maps(sens, images):
    """True maps normalised like Walsh maps: Σ|S|² = 1, strongest coil real and positive."""
    ref = int(torch.argmax(torch.sum(torch.abs(images) ** 2, dim=(1, 2))))
    norm = sens / torch.linalg.vector_norm(sens, dim=0)
    return norm * (norm[ref] / torch.abs(norm[ref])).conj()


def test_walsh_matches_true_sensitivities(coil_data):
    obj, sens, images = coil_data
    est = walsh_sensitivities(images, kernel=7)
    assert est.shape == images.shape
    assert est.dtype == torch.complex64
    assert torch.allclose(torch.sum(torch.abs(est) ** 2, dim=0), torch.ones(64, 64), atol=1e-5)
    inside = torch.abs(obj) > 0.1
    err = torch.linalg.vector_norm(est - reference_maps(sens, images), dim=0)[inside]
    assert float(err.mean()) < 0.05
    assert float(torch.quantile(err, 0.95)) < 0.15
    # the object's own phase is removed: a differently phased object gives the same maps
    est2 = walsh_sensitivities(sens * torch.abs(obj), kernel=7)
    diff = torch.linalg.vector_norm(est2 - est, dim=0)[inside]
    assert float(diff.mean()) < 0.02


def test_adaptive_combine_recovers_object_and_beats_rss(coil_data):
    obj, sens, images = coil_data
    target = torch.abs(obj) * torch.linalg.vector_norm(sens, dim=0)  # what RSS gives noise-free
    combined = adaptive_combine(images)
    assert combined.shape == obj.shape
    assert torch.linalg.norm(torch.abs(combined) - target) / torch.linalg.norm(target) < 1e-2
    # with white noise, the matched filter has the lower error (RSS adds a noise floor)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, dtype=torch.complex64, generator=g)
    noisy = images + 0.05 * noise
    err_adaptive = torch.linalg.norm(torch.abs(adaptive_combine(noisy)) - target)
    err_rss = torch.linalg.norm(rss(noisy) - target)
    assert err_adaptive < 0.7 * err_rss


def test_adaptive_combine_with_given_maps_is_exact(coil_data):
    obj, sens, images = coil_data
    inside = torch.linalg.vector_norm(sens, dim=0) > 0
    combined = adaptive_combine(images, sens)
    assert torch.allclose(combined[inside], obj[inside], atol=1e-5)


def test_walsh_3d_and_singleton_axis():
    g = torch.Generator().manual_seed(1)
    x, y, z = torch.meshgrid(
        torch.linspace(-1, 1, 12),
        torch.linspace(-1, 1, 10),
        torch.linspace(-1, 1, 6),
        indexing="ij",
    )
    centres = [(1.5, 0, 0), (-1.5, 0, 0), (0, 1.5, 0.5), (0, -1.5, -0.5)]
    sens = torch.stack(
        [
            torch.exp(-((x - a) ** 2 + (y - b) ** 2 + (z - c) ** 2) / 4)
            * torch.exp(1j * (0.3 * a * x + c))
            for a, b, c in centres
        ]
    ).to(torch.complex64)
    obj = 1 + 0.1 * torch.rand(x.shape, generator=g)
    images = sens * obj
    est = walsh_sensitivities(images, kernel=3)
    assert est.shape == (4, 12, 10, 6)
    err = torch.linalg.vector_norm(est - reference_maps3(sens, images), dim=0)
    # the box average of smoothly varying maps biases them slightly; a wrong axis order or
    # eigenvector would be off by O(1)
    assert float(err.mean()) < 0.08
    assert float(err.max()) < 0.15
    flat = walsh_sensitivities(images[..., 2:3], kernel=5)  # a 2-D slice stored as [c, x, y, 1]
    assert flat.shape == (4, 12, 10, 1)


def reference_maps3(sens, images):
    ref = int(torch.argmax(torch.sum(torch.abs(images) ** 2, dim=(1, 2, 3))))
    norm = sens / torch.linalg.vector_norm(sens, dim=0)
    return norm * (norm[ref] / torch.abs(norm[ref])).conj()


def test_rss_and_errors():
    x = torch.tensor([[3.0 + 0j], [4j]])
    assert torch.allclose(rss(x), torch.tensor([5.0]))
    with pytest.raises(ValueError, match="kernel"):
        walsh_sensitivities(torch.zeros(2, 8, 8, dtype=torch.complex64), kernel=4)
    with pytest.raises(ValueError, match="images"):
        walsh_sensitivities(torch.zeros(8, 8, dtype=torch.complex64))
    with pytest.raises(ValueError, match="sens"):
        adaptive_combine(torch.zeros(2, 8, 8, dtype=torch.complex64), torch.zeros(3, 8, 8))

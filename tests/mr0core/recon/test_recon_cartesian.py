"""Cartesian FFT recon, KData and reco_adjoint.

Most tests synthesise the signal of a known object exactly, ``s(k) = Σ ρ(r) exp(-2πi k·r)``
(the simulator's model), on a hand-built sequence, so the expected images are known in closed
form: a fully sampled grid of N points returns ``N · ρ`` (discrete orthogonality).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import CORPUS, assert_adjoint
from pulseq_builders import make_flash

import mr0core as mr0
from mr0core.phantom.builtin import brain
from mr0core.recon import adjoint as adjoint_module
from mr0core.recon.adjoint import grid_from_kspace, reco_adjoint
from mr0core.recon.cartesian import (
    cartesian_kspace,
    image_to_kspace,
    kspace_to_image,
    reco_cartesian,
)
from mr0core.recon.kdata import AcqFlag, KData, KDataError, fit_matrix, matrix_from_indices
from mr0core.recon.preprocess import noise_covariance, prewhiten, remove_readout_oversampling

FOV = (0.20, 0.18, 0.03)


# -- helpers -----------------------------------------------------------------------------------


def build_seq(
    n=(16, 12, 1),
    fov=FOV,
    os=1,
    lines=None,
    x_drop=0,
    slices=1,
    contrasts=1,
    averages=1,
    labels=True,
    half_step=True,
    noise_readout=False,
):
    """Build a Cartesian sequence event by event; return it and per-sample tags."""
    nx, ny, nz = n
    dkx, dky, dkz = 1 / (os * fov[0]), 1 / fov[1], 1 / fov[2]
    nsx = nx * os
    xs = np.arange(-(nsx // 2), nsx - nsx // 2) + (0.5 if half_step else 0.0)
    xs = xs[x_drop:]
    if lines is None:
        lines = [
            (ly, lz)
            for lz in range(-(nz // 2), nz - nz // 2)
            for ly in range(-(ny // 2), ny - ny // 2)
        ]
    if nz == 1:
        lines = [(ly, 0) for ly, _ in lines]
    seq = mr0.Sequence(normalized_grads=False)
    seq.definitions["FOV"] = [str(f) for f in fov]
    tags = []
    m = len(xs)

    def add(ly, lz, s, c, a, flag_noise=False):
        rep = seq.new_rep(m + 2)
        rep.pulse.usage = mr0.PulseUsage.EXCIT
        rep.pulse.angle = 0.1
        rep.event_time[:] = 1e-5
        rep.event_time[0] = 1e-3
        rep.gradm[0] = torch.tensor([(xs[0] - 1) * dkx, ly * dky, lz * dkz])
        rep.gradm[1 : m + 1, 0] = dkx
        rep.gradm[m + 1] = torch.tensor([-(xs[-1]) * dkx, -ly * dky, -lz * dkz])
        rep.adc_usage[1 : m + 1] = c + 1
        if labels or flag_noise:
            full = {
                "SLC": s,
                "AVG": a,
                "LIN": ly + ny // 2,
                "PAR": lz + nz // 2,
                "NOISE": int(flag_noise),
            }
            if not labels:
                full = {"NOISE": int(flag_noise)}
            rep.labels = {k: torch.full((m + 2,), v, dtype=torch.int64) for k, v in full.items()}
        tags.append(np.tile([[s, c, a, int(flag_noise)]], (m, 1)))

    if noise_readout:
        add(0, 0, 0, 0, 0, flag_noise=True)
    for a in range(averages):
        for s in range(slices):
            for c in range(contrasts):
                for ly, lz in lines:
                    add(ly, lz, s, c, a)
    return seq, np.concatenate(tags)


def positions(n, fov):
    axes = [
        (torch.arange(k, dtype=torch.float64) - k // 2) * f / k
        for k, f in zip(n, fov, strict=False)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def objects(count, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.complex(
            torch.rand(n, generator=g, dtype=torch.float64),
            0.3 * torch.rand(n, generator=g, dtype=torch.float64),
        )
        for _ in range(count)
    ]


def synth(seq, tags, rho_of, n, fov, coils=1):
    """Exact signal of the objects rho_of(slice, contrast, avg) [x, y, z] on the recon grid."""
    k = seq.get_kspace().to(torch.float64)[:, :3]
    r = positions(n, fov)
    enc = torch.exp(-2j * math.pi * (k @ r.T))  # [samples, voxels]
    sig = torch.zeros(k.shape[0], coils, dtype=torch.complex128)
    keys = {tuple(t) for t in tags[:, :3].tolist()}
    for key in keys:
        sel = torch.from_numpy(np.all(tags[:, :3] == np.array(key), axis=1) & (tags[:, 3] == 0))
        rho = rho_of(*key).reshape(-1)
        for c in range(coils):
            sig[sel, c] = enc[sel] @ (rho * (1 + 0.5 * c))
    noise_rows = torch.from_numpy(tags[:, 3] == 1)
    if noise_rows.any():
        g = torch.Generator().manual_seed(5)
        sig[noise_rows] = torch.randn(
            int(noise_rows.sum()), coils, dtype=torch.complex128, generator=g
        )
    return sig.to(torch.complex64)


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max())


# -- KData -------------------------------------------------------------------------------------


def test_matrix_rules():
    assert matrix_from_indices(0, 0) == 1
    assert matrix_from_indices(-8, 7) == 16
    assert matrix_from_indices(-4, 7) == 16  # partial Fourier keeps the full matrix
    assert matrix_from_indices(-8, 3) == 16
    assert fit_matrix(-7, 8) == (16, 7)  # one step off-centre: sample count, k=0 at index 7
    assert fit_matrix(-8, 7) == (16, 8)


def test_kdata_from_sequence_geometry():
    seq, _tags = build_seq(n=(16, 12, 4), os=2)
    sig = torch.zeros(seq.get_kspace().shape[0], 2, dtype=torch.complex64)
    kd = KData.from_sequence(sig, seq)
    assert kd.trajectory == "cartesian"
    assert kd.encoded_matrix == (32, 12, 4)
    assert kd.recon_matrix == (16, 12, 4)
    assert kd.readout_oversampling == 2
    assert kd.encoded_fov_m == pytest.approx((0.4, 0.18, 0.03))
    assert kd.recon_fov_m == pytest.approx(FOV)
    assert kd.n_readouts == 12 * 4
    assert torch.all(kd.readout_length == 32)
    assert torch.all(kd.center_sample == 16)
    assert kd.center_line == 6
    assert kd.center_partition == 2
    assert torch.allclose(kd.sample_time_s, torch.full_like(kd.sample_time_s, 1e-5))
    assert kd.has_flag(AcqFlag.FIRST_IN_SLICE).nonzero().flatten().tolist() == [0]
    assert kd.has_flag(AcqFlag.LAST_IN_SLICE).nonzero().flatten().tolist() == [47]


def test_kdata_rejects_bad_signal():
    seq, _ = build_seq()
    with pytest.raises(KDataError, match="ADC samples"):
        KData.from_sequence(torch.zeros(5, 1, dtype=torch.complex64), seq)
    with pytest.raises(KDataError, match="complex"):
        KData.from_sequence(torch.zeros(seq.get_kspace().shape[0]), seq)


# -- exact reconstructions ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [(16, 12, 1), (8, 6, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("half_step", [True, False])
def test_full_grid_is_exact(n, half_step):
    seq, tags = build_seq(n=n, half_step=half_step)
    (rho,) = objects(1, n)
    sig = synth(seq, tags, lambda *_: rho, n, FOV)
    img = reco_cartesian(KData.from_sequence(sig, seq), coil_combine="none")
    assert img.shape == (1, 1, 1, 1, *n)
    assert rel_err(img[0, 0, 0, 0] / math.prod(n), rho.to(torch.complex64)) < 1e-4


def test_oversampling_removed():
    n = (16, 12, 1)
    (rho,) = objects(1, n)
    seq1, tags1 = build_seq(n=n, os=1)
    seq2, tags2 = build_seq(n=n, os=2)
    img1 = reco_cartesian(KData.from_sequence(synth(seq1, tags1, lambda *_: rho, n, FOV), seq1))
    kd2 = KData.from_sequence(synth(seq2, tags2, lambda *_: rho, n, FOV), seq2)
    img2 = reco_cartesian(kd2)
    assert img2.shape == img1.shape == (1, 1, 1, 16, 12, 1)
    # an object inside the FOV on the voxel grid is reproduced exactly by both; the oversampled
    # sum runs over twice the samples (scale 2); float32 rounding only
    assert rel_err(img2 / 2, img1) < 1e-4
    grid = cartesian_kspace(kd2)
    assert grid.kspace.shape[-1] == 16
    assert bool(grid.mask.all())


@pytest.mark.parametrize("os", [2, 3])
def test_remove_readout_oversampling_gives_the_unoversampled_samples(os):
    """An object inside the recon FOV, sampled with oversampling and cropped readout by readout,
    gives the samples measured without oversampling at the same k (times ``os``, the plain-sum
    scale of the crop), with their trajectory, centre sample and dwell."""
    n = (16, 12, 1)
    (rho,) = objects(1, n)
    seq1, tags1 = build_seq(n=n, half_step=False)
    seq_os, tags_os = build_seq(n=n, os=os, half_step=False)
    kd1 = KData.from_sequence(synth(seq1, tags1, lambda *_: rho, n, FOV), seq1)
    kd_os = KData.from_sequence(synth(seq_os, tags_os, lambda *_: rho, n, FOV), seq_os)
    assert kd_os.encoded_matrix == (16 * os, 12, 1)
    out = remove_readout_oversampling(kd_os)
    assert out.encoded_matrix == kd1.encoded_matrix
    assert out.encoded_fov_m == pytest.approx(kd1.encoded_fov_m)
    assert torch.equal(out.readout_length, kd1.readout_length)
    assert torch.equal(out.center_sample, kd1.center_sample)
    assert torch.allclose(out.sample_time_s, os * kd_os.sample_time_s)
    assert out.kspace is not None
    assert kd1.kspace is not None
    assert rel_err(out.kspace[:, :3], kd1.kspace[:, :3]) < 1e-5
    assert rel_err(out.signal / os, kd1.signal) < 1e-4


def test_remove_readout_oversampling_rational_factor_and_padding():
    """Factor 3/2 (24 -> 16 samples). Centre sample 12: exact. Centre sample 13 is not on the
    coarse grid's phase, so the readout is padded: k = 0 stays a sample, the spacing becomes
    1/fov_recon and only samples inside the measured k range are kept."""
    ne, nr, fov_e, fov_r = 24, 16, 0.3, 0.2
    x = torch.tensor([-5.0, 0.0, 3.0, 7.0], dtype=torch.float64) * fov_r / nr  # voxels, m
    amp = torch.tensor([1.0, 0.5j, -0.7, 0.2 + 0.1j], dtype=torch.complex128)

    def line(centre: int, k_step: float, count: int, first: int = 0) -> torch.Tensor:
        k = (torch.arange(first, first + count, dtype=torch.float64) - centre) * k_step
        return k, torch.exp(-2j * math.pi * k[:, None] * x[None, :]) @ amp

    k0, s0 = line(12, 1 / fov_e, ne)
    k1, s1 = line(13, 1 / fov_e, ne)
    kx = torch.cat([k0, k1])
    kd = KData(
        signal=torch.cat([s0, s1])[:, None],
        readout_start=torch.tensor([0, ne]),
        readout_length=torch.tensor([ne, ne]),
        idx={"LIN": torch.tensor([0, 1])},
        encoded_matrix=(ne, 2, 1),
        recon_matrix=(nr, 2, 1),
        encoded_fov_m=(fov_e, fov_r, 0.005),
        recon_fov_m=(fov_r, fov_r, 0.005),
        center_sample=torch.tensor([12, 13]),
        sample_time_s=torch.tensor([1e-5, 1e-5], dtype=torch.float64),
        flags=torch.zeros(2, dtype=torch.int64),
        kspace=torch.stack([kx, torch.zeros_like(kx), torch.zeros_like(kx), kx * 0], dim=1),
    )
    out = remove_readout_oversampling(kd)
    assert out.encoded_matrix == (nr, 2, 1)
    assert out.kspace is not None
    # readout 0: exact, 1.5 times the samples at k = (i - 8) / fov_r
    k_exp, s_exp = line(nr // 2, 1 / fov_r, nr)
    assert int(out.readout_length[0]) == nr
    assert int(out.center_sample[0]) == nr // 2
    assert torch.allclose(out.kspace[:nr, 0], k_exp)
    assert torch.allclose(out.signal[:nr, 0], 1.5 * s_exp, atol=1e-9)
    # readout 1: k = 0 on a sample, spacing 1/fov_r, inside the measured k range
    start, length = int(out.readout_start[1]), int(out.readout_length[1])
    k_new = out.kspace[start : start + length, 0]
    assert float(k_new[int(out.center_sample[1])]) == pytest.approx(0.0, abs=1e-9)
    assert torch.allclose(
        torch.diff(k_new), torch.full((length - 1,), 1 / fov_r, dtype=k_new.dtype)
    )
    assert float(k_new.min()) >= float(k1.min()) - 1e-9
    assert float(k_new.max()) <= float(k1.max()) + 1e-9
    assert length == 15  # samples at k = -8 .. 6 / fov_r lie within (-13 .. 10) / fov_e


def test_partial_fourier_and_asymmetric_echo_zero_filled():
    n = (16, 16, 1)
    (rho,) = objects(1, n)
    # integer sample positions: the full grid needs no sub-step interpolation, so zeroing its
    # lines and columns is exactly what a shorter acquisition measures
    full_seq, full_tags = build_seq(n=n, half_step=False)
    full = cartesian_kspace(
        KData.from_sequence(synth(full_seq, full_tags, lambda *_: rho, n, FOV), full_seq)
    )
    lines = [(ly, 0) for ly in range(-8 + 5, 8)]  # 5 of 16 lines missing (partial Fourier 11/16)
    pf_seq, pf_tags = build_seq(
        n=n, lines=lines, x_drop=4, half_step=False
    )  # and 4 samples of the echo
    kd = KData.from_sequence(synth(pf_seq, pf_tags, lambda *_: rho, n, FOV), pf_seq)
    assert kd.encoded_matrix == (16, 16, 1)
    assert torch.all(kd.center_sample == 4)
    grid = cartesian_kspace(kd)
    expected_mask = torch.zeros(16, 16, dtype=torch.bool)
    expected_mask[5:, 4:] = True
    assert torch.equal(grid.mask[0, 0, 0, 0], expected_mask)
    img = reco_cartesian(kd, coil_combine="none")
    assert img.shape == (1, 1, 1, 1, 16, 16, 1)
    expected = kspace_to_image(full.kspace * full.mask[:, :, :, None] * expected_mask)
    assert rel_err(img, expected) < 1e-4


def test_multislice_multicontrast_averages():
    n = (8, 8, 1)
    rhos = objects(8, n, seed=3)
    table = {
        (s, c, a): rhos[4 * a + 2 * s + c] for s in range(2) for c in range(2) for a in range(2)
    }
    seq, tags = build_seq(n=n, slices=2, contrasts=2, averages=2)
    kd = KData.from_sequence(synth(seq, tags, lambda s, c, a: table[(s, c, a)], n, FOV), seq)
    img = reco_cartesian(kd, coil_combine="none")
    assert img.shape == (1, 2, 2, 1, 8, 8, 1)
    for s in range(2):
        for c in range(2):
            mean = (table[(s, c, 0)] + table[(s, c, 1)]) / 2
            assert rel_err(img[0, c, s, 0] / 64, mean.to(torch.complex64)) < 1e-4


def test_rss_and_coils():
    n = (8, 8, 1)
    (rho,) = objects(1, n)
    seq, tags = build_seq(n=n)
    sig = synth(seq, tags, lambda *_: rho, n, FOV, coils=3)
    kd = KData.from_sequence(sig, seq)
    coil_images = reco_cartesian(kd, coil_combine="none")
    assert coil_images.shape == (1, 1, 1, 3, 8, 8, 1)
    combined = reco_cartesian(kd)
    weight = math.sqrt(sum((1 + 0.5 * c) ** 2 for c in range(3)))
    assert rel_err(combined[0, 0, 0] / 64, (rho.abs() * weight).float()) < 1e-4


def test_shuffled_readouts_same_image():
    n = (8, 6, 4)
    (rho,) = objects(1, n)
    seq, tags = build_seq(n=n)
    kd = KData.from_sequence(synth(seq, tags, lambda *_: rho, n, FOV), seq)
    perm = torch.randperm(kd.n_readouts, generator=torch.Generator().manual_seed(1))
    shuffled = kd.select(perm)
    assert not torch.equal(shuffled.signal, kd.signal)
    assert rel_err(reco_cartesian(shuffled), reco_cartesian(kd)) < 1e-6


def test_labels_and_derived_order_agree():
    n = (8, 6, 4)
    (rho,) = objects(1, n)
    seq_l, tags = build_seq(n=n, labels=True)
    seq_d, _ = build_seq(n=n, labels=False)
    sig = synth(seq_l, tags, lambda *_: rho, n, FOV)
    kd_l = KData.from_sequence(sig, seq_l)
    kd_d = KData.from_sequence(sig, seq_d)
    assert torch.equal(kd_l.idx["LIN"], kd_d.idx["LIN"])
    assert rel_err(reco_cartesian(kd_l), reco_cartesian(kd_d)) < 1e-6


def test_corpus_labels_counting_downwards_fall_back_to_trajectory():
    seq = mr0.Sequence.import_file(CORPUS / "write_gre_label.seq")
    n, fov = (64, 64, 1), (0.224, 0.224, 0.003)
    (rho,) = objects(1, n)
    tags = np.zeros((seq.get_kspace().shape[0], 4), dtype=np.int64)
    sig = synth(seq, tags, lambda *_: rho, n, fov)
    with pytest.warns(UserWarning, match="LIN labels do not follow"):
        kd = KData.from_sequence(sig, seq)
    stripped = seq.clone()
    for rep in stripped:
        rep.labels = {}
    kd_plain = KData.from_sequence(sig, stripped)
    img = reco_cartesian(kd, coil_combine="none")[0, 0, 0, 0]
    assert img.shape == n  # samples at -31..32: one step off-centre, fitted, not zero-padded
    assert rel_err(img, reco_cartesian(kd_plain, coil_combine="none")[0, 0, 0, 0]) < 1e-6
    assert rel_err(img / 4096, rho.to(torch.complex64)) < 1e-3


def test_noise_readouts_and_prewhitening():
    n = (8, 8, 1)
    (rho,) = objects(1, n)
    seq, tags = build_seq(n=n, noise_readout=True)
    sig = synth(seq, tags, lambda *_: rho, n, FOV, coils=3)
    kd = KData.from_sequence(sig, seq)
    assert kd.noise is not None
    assert kd.noise.shape == (8, 3)
    assert kd.n_readouts == 8
    white = prewhiten(kd.noise, noise_covariance(kd.noise))
    cov = white.T @ white.conj() / white.shape[0]
    assert torch.allclose(cov, torch.eye(3, dtype=cov.dtype), atol=1e-4)
    plain = reco_cartesian(kd, prewhitening=False, coil_combine="none")
    whitened = reco_cartesian(kd, coil_combine="none")
    # whitening is a linear coil mixing L⁻¹, applied per voxel
    chol = torch.linalg.cholesky(kd.noise.T @ kd.noise.conj() / kd.noise.shape[0])
    mixed = torch.einsum("ab,...bxyz->...axyz", torch.linalg.inv(chol), plain)
    assert rel_err(whitened, mixed) < 1e-4
    # noise measured with twice the data's dwell (half the bandwidth): the data's noise is
    # twice as strong, and the whitened image 1/sqrt(2) as bright
    assert kd.noise_sample_time_s == pytest.approx(float(kd.sample_time_s[0]))
    slow = replace(kd, noise_sample_time_s=2 * kd.noise_sample_time_s)
    assert rel_err(reco_cartesian(slow, coil_combine="none"), whitened / math.sqrt(2)) < 1e-5


def test_calibration_only_readouts_ignored():
    n = (8, 8, 1)
    (rho,) = objects(1, n)
    seq, tags = build_seq(n=n)
    kd = KData.from_sequence(synth(seq, tags, lambda *_: rho, n, FOV), seq)
    flags = kd.flags.clone()
    flags[0] |= int(AcqFlag.IS_PARALLEL_CALIBRATION)
    flags[1] |= int(AcqFlag.IS_PARALLEL_CALIBRATION | AcqFlag.IS_PARALLEL_CALIBRATION_AND_IMAGING)
    flags[2] |= int(AcqFlag.IS_NAVIGATION_DATA)
    kd.flags = flags
    mask = cartesian_kspace(kd).mask[0, 0, 0, 0]
    assert mask.any(dim=1).tolist() == [False, True, False] + [True] * 5
    assert cartesian_kspace(kd, include_calibration=True).mask[0, 0, 0, 0, 0].all()


def test_non_cartesian_is_refused():
    seq = mr0.Sequence.import_file(CORPUS / "write_radial_gre.seq")
    kd = KData.from_sequence(torch.zeros(seq.get_kspace().shape[0], 1, dtype=torch.complex64), seq)
    assert kd.trajectory == "radial"
    with pytest.raises(KDataError, match="radial"):
        reco_cartesian(kd)


def test_kspace_image_transforms_are_inverse():
    x = torch.randn(2, 5, 6, 4, dtype=torch.complex64)
    assert torch.allclose(kspace_to_image(image_to_kspace(x)), x, atol=1e-5)
    assert kspace_to_image(x).shape == (2, 4, 6, 5)


# -- reco_adjoint ------------------------------------------------------------------------------


def test_adjoint_matches_fft_recon():
    n = (16, 12, 1)
    (rho,) = objects(1, n)
    seq, tags = build_seq(n=n)
    sig = synth(seq, tags, lambda *_: rho, n, FOV)
    fft = reco_cartesian(KData.from_sequence(sig, seq), coil_combine="none")[0, 0, 0, 0]
    adj = reco_adjoint(sig, seq.get_kspace(), resolution=n, FOV=FOV)
    assert adj.shape == n
    assert adj.is_complex()
    assert rel_err(adj, fft) < 1e-4  # same scale: both are the plain adjoint sum


def test_adjoint_automatic_grid_and_chunking(monkeypatch):
    n = (16, 12, 4)
    seq, _ = build_seq(n=n)
    res, fov = grid_from_kspace(seq.get_kspace())
    assert res == n
    assert fov == pytest.approx(FOV, rel=1e-4)
    sig = torch.randn(seq.get_kspace().shape[0], 2, dtype=torch.complex64)
    whole = reco_adjoint(sig, seq.get_kspace(), return_multicoil=True)
    monkeypatch.setattr(adjoint_module, "_CHUNK_ELEMENTS", 1000)
    chunked = reco_adjoint(sig, seq.get_kspace(), return_multicoil=True)
    assert whole.shape == (2, *n)
    assert rel_err(chunked, whole) < 1e-5
    combined = reco_adjoint(sig, seq.get_kspace())
    assert torch.allclose(combined, whole.abs().pow(2).sum(0).sqrt(), rtol=1e-5)


def test_adjoint_radial_point_source():
    seq = mr0.Sequence.import_file(CORPUS / "write_radial_gre.seq")
    k = seq.get_kspace()
    res, _fov = grid_from_kspace(k)
    assert 60 <= res[0] <= 70
    assert res[2] == 1
    r0 = torch.tensor([0.02, -0.03, 0.0], dtype=torch.float64)
    sig = torch.exp(-2j * math.pi * (k[:, :3].double() @ r0))[:, None].to(torch.complex64)
    img = reco_adjoint(sig, k, resolution=(64, 64, 1), FOV=(0.26, 0.26, 1))
    peak = np.unravel_index(int(img.abs().argmax()), img.shape)
    expected = (round(0.02 / 0.26 * 64) + 32, round(-0.03 / 0.26 * 64) + 32, 0)
    assert tuple(int(p) for p in peak) == expected


# -- simulated brain ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brain32():
    return mr0.util.load_phantom((32, 32), url="builtin:brain")


def test_simulated_pd_flash_matches_pd_map(brain32):
    seq = make_flash(tr=5.0, flip_deg=5.0)  # long TR, short TE, low flip: PD weighting
    signal, _ = mr0.util.simulate(seq, brain32)
    img = reco_cartesian(KData.from_sequence(signal, seq))[0, 0, 0, :, :, 0]
    assert img.shape == brain32.PD.shape[:2]
    corr = np.corrcoef(img.flatten(), brain32.PD[:, :, 0].flatten())[0, 1]
    assert corr > 0.95


def test_simulated_t1w_flash_wm_brighter_than_gm(brain32):
    # short TR, large flip: T1 weighting; dummy TRs reach the steady state before the k-space centre
    seq = make_flash(tr=15e-3, flip_deg=40.0, dummies=30)
    signal, _ = mr0.util.simulate(seq, brain32)
    img = reco_cartesian(KData.from_sequence(signal, seq))[0, 0, 0, :, :, 0]
    seg = brain(size=32)
    wm = torch.from_numpy(seg.density["wm"][:, :, 0] / 0.7 > 0.9)
    gm = torch.from_numpy(seg.density["gm"][:, :, 0] / 0.8 > 0.9)
    assert wm.sum() > 10
    assert gm.sum() > 10
    assert img[wm].mean() > 1.1 * img[gm].mean()
    # in a PD image (previous test) GM (PD 0.8) is brighter than WM (PD 0.7): the contrast flipped


def test_reco_adjoint_is_the_adjoint_of_the_simulators_forward_model():
    """reco_adjoint = Aᴴ for A ρ = Σ_r ρ(r) exp(−2πi k·r) (written here), any trajectory."""
    g = torch.Generator().manual_seed(7)
    res, fov = (6, 5, 1), (0.2, 0.18, 0.005)
    axes = [(torch.arange(n) - n // 2) * f / n for n, f in zip(res, fov, strict=True)]
    pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3).double()
    k = torch.cat([(torch.rand(40, 2, generator=g, dtype=torch.float64) - 0.5) * 60,
                   torch.zeros(40, 2, dtype=torch.float64)], dim=1)  # fmt: skip
    phase = torch.exp(-2j * math.pi * (k[:, :3] @ pos.T))  # [samples, voxels]

    def forward(rho: torch.Tensor) -> torch.Tensor:  # [coils, x, y, z] -> [samples, coils]
        return phase @ rho.reshape(rho.shape[0], -1).T

    def adjoint(sig: torch.Tensor) -> torch.Tensor:
        return reco_adjoint(sig, k, res, fov, return_multicoil=True)

    x = torch.randn(2, *res, dtype=torch.complex128, generator=g)
    y = torch.randn(40, 2, dtype=torch.complex128, generator=g)
    assert_adjoint(forward, adjoint, x, y, rtol=1e-5)  # its grid positions are float32
    with pytest.raises(AssertionError):  # negative control: the sign of the phase flipped
        assert_adjoint(lambda r: phase.conj() @ r.reshape(2, -1).T, adjoint, x, y, rtol=1e-5)

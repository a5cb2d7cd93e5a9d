"""Plots: imshow (RAS+, slices, coils), Pulseq plots with the signal, k-space, phantom."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from pulseq_builders import build_flash

from mr0core.phantom.voxel_grid import VoxelGridPhantom
from mr0core.plot import (
    adc_sample_times,
    imshow,
    insert_signal_plot,
    montage,
    plot_kspace_trajectory,
    plot_phantom,
    pulseq_plot,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def flash():
    return build_flash(n=8)


def _nonempty(path):
    assert path.is_file()
    assert path.stat().st_size > 1000
    with path.open("rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_imshow_2d_is_ras(tmp_path):
    image = np.zeros((6, 4))
    image[5, 0] = 1.0  # high x, low y
    artist = imshow(image, cmap="gray")
    assert artist.origin == "lower"
    shown = np.asarray(artist.get_array())
    assert shown.shape == (4, 6)  # rows are y, columns are x
    np.testing.assert_array_equal(shown, image.T)
    # with origin="lower", row 0 is drawn at the bottom, column 5 at the right
    assert shown[0, 5] == 1.0
    plt.close("all")
    out = tmp_path / "im.png"
    imshow(image, out=out)
    _nonempty(out)
    assert not plt.get_fignums()  # saved and closed


def test_imshow_coils_are_combined_quadratically():
    rng = np.random.default_rng(0)
    coils = rng.standard_normal((3, 5, 4, 1)) + 1j * rng.standard_normal((3, 5, 4, 1))
    artist = imshow(torch.tensor(coils))
    rss = np.sqrt((np.abs(coils) ** 2).sum(axis=0))[:, :, 0]
    np.testing.assert_allclose(np.asarray(artist.get_array()), rss.T, rtol=1e-6)


def test_imshow_3d_grid_of_slices(tmp_path):
    image = np.zeros((4, 3, 5))
    for z in range(5):
        image[..., z] = z + 1
    artist = imshow(image, out=tmp_path / "grid.png")
    shown = np.asarray(artist.get_array())
    assert shown.shape == (2 * 3, 3 * 4)  # 3 columns of x, 2 rows of y (floor(sqrt(5)) = 2 rows)
    # slice 0 at the top left: highest y block (last rows with origin="lower"), first columns
    assert np.all(shown[3:, :4] == 1)
    assert np.all(shown[:3, :4] == 4)  # slice 3 starts the second (lower) row
    assert np.all(shown[:3, 8:] == 0)  # unused tile
    _nonempty(tmp_path / "grid.png")


def test_montage_layout_follows_mr_zero():
    # floor(sqrt(z)) rows: 3 slices in one row, 7 in 2 rows of 4, 9 in 3 rows of 3
    assert montage(np.zeros((2, 3, 3))).shape == (6, 3)
    assert montage(np.zeros((2, 3, 7))).shape == (8, 6)
    assert montage(np.zeros((2, 3, 9))).shape == (6, 9)
    assert montage(np.zeros((2, 3, 9)), columns=9).shape == (18, 3)


def test_montage_rejects_bad_shape():
    with pytest.raises(ValueError, match="shape"):
        montage(np.zeros((2, 2, 2, 2, 2)))


def test_adc_sample_times_follow_pulseq_convention(flash):
    times = adc_sample_times(flash)
    assert times.shape == (64,)
    assert np.all(np.diff(times) > 0)
    # within one readout the spacing is the dwell time
    dwell = flash.get_block(4).adc.dwell
    np.testing.assert_allclose(np.diff(times[:8]), dwell, rtol=1e-9)
    with pytest.raises(TypeError):
        adc_sample_times(object())


def test_insert_signal_plot_adds_a_line_of_signal_length(flash, tmp_path):
    signal = np.exp(1j * np.linspace(0, 6, 64)) * np.linspace(1, 2, 64)
    handle = flash.plot(plot_now=False)
    ax = insert_signal_plot(flash, signal)
    assert ax is handle.ax1[0]
    assert ax.get_ylabel() == "ADC"
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 64 and ln.get_linestyle() == "-"]
    assert len(lines) == 2  # real and imaginary part
    np.testing.assert_allclose(lines[0].get_xdata(), adc_sample_times(flash))
    np.testing.assert_allclose(lines[0].get_ydata(), signal.real)
    np.testing.assert_allclose(lines[1].get_ydata(), signal.imag)
    out = tmp_path / "sig.png"
    insert_signal_plot(flash, signal[:, None], out=out)  # [samples, coils] accepted
    _nonempty(out)


def test_insert_signal_plot_checks_length(flash):
    with pytest.raises(ValueError, match="64"):
        insert_signal_plot(flash, np.zeros(10, complex))


def test_insert_signal_plot_needs_an_open_plot(flash):
    with pytest.raises(RuntimeError, match="plot"):
        insert_signal_plot(flash, np.zeros(64, complex))


def test_pulseq_plot_with_signal_writes_both_figures(flash, tmp_path):
    out = tmp_path / "seq.png"
    handle = pulseq_plot(flash, signal=np.ones(64, complex), out=out, time_disp="ms", stacked=False)
    _nonempty(out)
    _nonempty(tmp_path / "seq_grad.png")
    signal_lines = [ln for ln in handle.ax1[0].get_lines() if ln.get_linestyle() == "-"]
    assert signal_lines
    # time_disp="ms": sample times are drawn in ms
    np.testing.assert_allclose(signal_lines[0].get_xdata(), 1e3 * adc_sample_times(flash))
    assert not plt.get_fignums()


def test_plot_kspace_trajectory_writes_file(flash, tmp_path):
    out = tmp_path / "k.png"
    fig = plot_kspace_trajectory(flash, out=out)
    _nonempty(out)
    # 8 phase-encoding lines of 8 samples are drawn as ADC dots
    dots = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_marker() == "."]
    assert sum(len(ln.get_xdata()) for ln in dots) == 64


def test_plot_phantom_writes_file(tmp_path):
    shape = (6, 5, 1)
    phantom = VoxelGridPhantom(
        PD=torch.rand(shape),
        T1=torch.ones(shape),
        T2=torch.full(shape, 0.1),
        T2dash=torch.full(shape, 0.05),
        D=torch.ones(shape),
        B0=torch.zeros(shape),
        B1=torch.ones(shape),
        coil_sens=torch.ones(shape),
        size=torch.tensor([0.2, 0.2, 0.005]),
    )
    out = tmp_path / "ph.png"
    fig = plot_phantom(phantom, out=out)
    _nonempty(out)
    assert len([ax for ax in fig.axes if ax.images]) == 8  # 6 maps + B1 + coil
    with pytest.raises(TypeError, match="plot"):
        plot_phantom(object())


@pytest.mark.reference
@pytest.mark.parametrize("shape", [(6, 4), (4, 3, 5), (2, 5, 4, 3)])
def test_imshow_equals_mr_zero(shape):
    """MR-zero's util.imshow (black box) shows the same array with the same origin."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import MRzeroCore as mz

    rng = np.random.default_rng(1)
    data = rng.random(shape) + (1j * rng.random(shape) if len(shape) == 4 else 0)
    ours = imshow(data)
    plt.close("all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mz.util.imshow(data)
    theirs = plt.gca().images[0]
    assert ours.origin == theirs.origin
    np.testing.assert_allclose(
        np.asarray(ours.get_array()), np.ma.filled(theirs.get_array(), 0), rtol=1e-6
    )

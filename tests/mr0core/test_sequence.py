"""The MR-zero sequence model: k-space bookkeeping, contrasts, copies and devices."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch

import mr0core as mr0
from mr0core import PulseUsage

matplotlib.use("Agg")


def make_rep(
    usage: PulseUsage, gradm: list[list[float]], times: list[float], adc: list[int]
) -> mr0.Repetition:
    rep = mr0.Repetition.zero(len(times))
    rep.pulse.usage = usage
    rep.gradm[:] = torch.tensor(gradm)
    rep.event_time[:] = torch.tensor(times)
    rep.adc_usage[:] = torch.tensor(adc, dtype=torch.int32)
    return rep


def test_new_rep_is_zeroed_with_documented_shapes() -> None:
    seq = mr0.Sequence()
    rep = seq.new_rep(7)
    assert len(seq) == 1
    assert seq[0] is rep
    assert rep.event_count == 7
    assert rep.gradm.shape == (7, 3)
    assert rep.event_time.shape == (7,)
    assert rep.adc_phase.shape == (7,)
    assert rep.adc_usage.shape == (7,)
    assert rep.adc_usage.dtype == torch.int32
    assert float(rep.pulse.angle) == 0
    assert rep.pulse.usage is PulseUsage.UNDEF
    assert rep.pulse.shim_array.tolist() == [[1.0, 0.0]]
    assert seq.normalized_grads is True


def test_excitation_resets_and_events_accumulate() -> None:
    seq = mr0.Sequence(
        [
            make_rep(PulseUsage.EXCIT, [[1, 0, 0], [2, 1, 0]], [1e-3, 2e-3], [0, 1]),
            make_rep(PulseUsage.EXCIT, [[0, 0, 5], [1, 0, 0]], [1e-3, 1e-3], [1, 1]),
        ]
    )
    k = seq.get_kspace()
    expected = torch.tensor(
        [[3, 1, 0, 3e-3], [0, 0, 5, 1e-3], [1, 0, 5, 2e-3]], dtype=torch.float32
    )
    torch.testing.assert_close(k, expected)
    full = seq.get_full_kspace()
    assert [f.shape for f in full] == [(2, 4), (2, 4)]
    torch.testing.assert_close(full[0][0], torch.tensor([1.0, 0, 0, 1e-3]))


def test_refocusing_mirrors_k_and_tau_spin_echo() -> None:
    """90° – TE/2 – 180° – TE/2: the echo forms where k and τ return to zero."""
    half_te = 5e-3
    seq = mr0.Sequence(
        [
            make_rep(PulseUsage.EXCIT, [[10, -4, 2]], [half_te], [0]),
            make_rep(PulseUsage.REFOC, [[10, -4, 2]], [half_te], [1]),
        ]
    )
    k = seq.get_kspace()
    torch.testing.assert_close(k, torch.zeros(1, 4), atol=1e-6, rtol=0)
    full = seq.get_full_kspace()
    torch.testing.assert_close(full[0][-1], torch.tensor([10.0, -4, 2, half_te]))


def test_undef_and_fatsat_leave_k_alone_store_is_used_by_excit() -> None:
    seq = mr0.Sequence(
        [
            make_rep(PulseUsage.EXCIT, [[4, 0, 0]], [1e-3], [0]),
            make_rep(PulseUsage.STORE, [[1, 0, 0]], [1e-3], [1]),  # stores k = 4, τ = 1 ms
            make_rep(PulseUsage.FATSAT, [[1, 0, 0]], [1e-3], [1]),
            make_rep(PulseUsage.UNDEF, [[1, 0, 0]], [1e-3], [1]),
            make_rep(PulseUsage.EXCIT, [[0, 2, 0]], [1e-3], [1]),  # back to the stored k
        ]
    )
    k = seq.get_kspace()
    torch.testing.assert_close(k[:, 0], torch.tensor([5.0, 6, 7, 4]))
    torch.testing.assert_close(k[-1], torch.tensor([4.0, 2, 0, 2e-3]))


def test_kspace_is_differentiable_in_gradm() -> None:
    seq = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[1, 0, 0], [1, 0, 0]], [1, 1], [1, 1])])
    g = seq[0].gradm.clone().requires_grad_(True)
    seq[0].gradm = g
    seq.get_kspace()[:, 0].sum().backward()
    # sample 1 sees event 0, sample 2 sees events 0 and 1
    torch.testing.assert_close(g.grad[:, 0], torch.tensor([2.0, 1.0]))


def test_contrasts_masks_and_shift() -> None:
    seq = mr0.Sequence(
        [
            make_rep(PulseUsage.EXCIT, [[0, 0, 0]] * 3, [1, 1, 1], [1, 0, 2]),
            make_rep(PulseUsage.EXCIT, [[0, 0, 0]] * 2, [1, 1], [2, 2]),
        ]
    )
    assert seq.get_contrasts() == [1, 2]
    assert seq[0].get_contrasts() == [1, 2]
    assert seq.get_contrast_mask(2).tolist() == [False, True, True, True]
    seq.shift_contrasts(3)
    assert seq.get_contrasts() == [4, 5]
    assert seq[0].adc_usage.tolist() == [4, 0, 5]  # zero stays "no ADC"


def test_chain_shifts_contrasts_unless_oneshot() -> None:
    a = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[0, 0, 0]], [1], [1])])
    b = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[0, 0, 0]] * 2, [1, 1], [1, 2])])
    c = mr0.chain(a, b, a)
    assert len(c) == 3
    assert c.get_contrasts() == [1, 2, 3, 4]
    assert c.get_contrast_mask(4).tolist() == [False, False, False, True]
    assert a.get_contrasts() == [1]  # inputs untouched
    assert mr0.chain(a, b, oneshot=True).get_contrasts() == [1, 2]
    with pytest.raises(ValueError, match="normalized_grads"):
        mr0.chain(a, mr0.Sequence(normalized_grads=False))


def test_clone_shares_no_storage() -> None:
    seq = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[1, 2, 3]], [1e-3], [1])])
    copy = seq.clone()
    copy[0].gradm[0, 0] = 99
    copy[0].pulse.angle.fill_(1.0)
    copy[0].pulse.shim_array[0, 0] = 5
    assert float(seq[0].gradm[0, 0]) == 1
    assert float(seq[0].pulse.angle) == 0
    assert float(seq[0].pulse.shim_array[0, 0]) == 1


def test_duration_and_device() -> None:
    seq = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[0, 0, 0]] * 2, [1e-3, 2e-3], [0, 1])] * 3)
    assert seq.get_duration() == pytest.approx(9e-3, rel=1e-6)
    assert seq.device == torch.device("cpu")
    moved = seq.cpu()
    assert moved is not seq
    assert moved.device == torch.device("cpu")
    assert mr0.Sequence().device == torch.device("cpu")
    assert mr0.Sequence().get_kspace().shape == (0, 4)


@pytest.mark.cuda
def test_cuda_moves_every_tensor() -> None:
    seq = mr0.Sequence([make_rep(PulseUsage.EXCIT, [[1, 0, 0]], [1e-3], [1])]).cuda()
    rep = seq[0]
    for t in (
        rep.event_time,
        rep.gradm,
        rep.adc_phase,
        rep.adc_usage,
        rep.pulse.angle,
        rep.pulse.phase,
        rep.pulse.shim_array,
    ):
        assert t.is_cuda
    assert seq.get_kspace().is_cuda
    assert seq.new_rep(3).gradm.is_cuda


def test_validation_errors_name_the_shape() -> None:
    with pytest.raises(ValueError, match=r"gradm must have shape \[2, 3\]"):
        mr0.Repetition(
            mr0.Pulse.zero(),
            torch.zeros(2),
            torch.zeros(3, 3),
            torch.zeros(2),
            torch.zeros(2, dtype=torch.int32),
        )
    with pytest.raises(ValueError, match="shim_array"):
        mr0.Pulse(PulseUsage.EXCIT, 0.1, 0.0, shim_array=torch.zeros(2, 3))
    with pytest.raises(TypeError, match="PulseUsage"):
        mr0.Pulse("excitation", 0.1, 0.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unexpected"):
        mr0.Sequence(normalised=True)


def test_pulse_accepts_float_assignment_like_mr_zero_scripts() -> None:
    seq = mr0.Sequence()
    rep = seq.new_rep(1)
    rep.pulse.angle = 5 * math.pi / 180
    rep.pulse.phase = 2.0
    assert isinstance(rep.pulse.angle, torch.Tensor)
    assert rep.pulse.angle.shape == ()
    assert float(rep.pulse.angle) == pytest.approx(math.radians(5))
    assert float(rep.pulse.phase) == 2.0
    with pytest.raises(ValueError, match="scalar"):
        rep.pulse.angle = torch.zeros(3)


def test_normalize_grads_spelling_is_accepted() -> None:
    assert mr0.Sequence([], normalize_grads=False).normalized_grads is False


def test_pulse_usage_values_follow_mr_zero() -> None:
    assert PulseUsage.EXCIT.value == "excitation"
    assert PulseUsage.REFOC.value == "refocussing"
    assert {u.name for u in PulseUsage} == {"UNDEF", "EXCIT", "REFOC", "STORE", "FATSAT"}


def test_plot_kspace_trajectory_draws_the_samples() -> None:
    reps = [
        make_rep(PulseUsage.EXCIT, [[-2, i, 0], [1, 0, 0], [1, 0, 0]], [1, 1, 1], [0, 1, 1])
        for i in range(3)
    ]
    fig = mr0.Sequence(reps).plot_kspace_trajectory(plotting_dims="xy")
    ax = fig.axes[0]
    xs = sorted(float(x) for line in ax.lines if line.get_marker() == "." for x in line.get_xdata())
    assert xs == [-1, -1, -1, 0, 0, 0]
    with pytest.raises(ValueError, match="plotting_dims"):
        mr0.Sequence(reps).plot_kspace_trajectory(plotting_dims="xq")
    assert math.isfinite(fig.get_figwidth())

"""The compiled main-pass state update (numba, ``mr0core/sim/mainpass_kernel.py``) against torch.

On CPU without autograd, ``execute_graph`` runs each repetition's edges, the emitting
states' copy and the relaxation in one compiled call; the torch operations it replaces remain
the definition (and run on GPUs and with autograd). Both must give the same signal within
float32 rounding on every class of the benchmark suite, on a corpus sequence, with shaped pulses
over sub-slices and with a moving phantom. Negative controls: a wrong pulse phase, a missing T1
recovery in the kernel's inputs, or a motion phase not carried on is told apart.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np
import pdg_cases
import pytest
import torch
from conftest import CORPUS

import mr0core as mr0
from mr0core.sim import pdg

N = 32
TOLERANCE = 2e-6  # NRMSE: float32 rounding of the two orders of operations


def nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def both(run: Callable[[], torch.Tensor], monkeypatch: pytest.MonkeyPatch) -> tuple:
    """Return ``run()`` with the kernel, and with the torch operations; check which ran."""
    calls: list[int] = []
    kernel = pdg._main_kernel()
    assert kernel is not None, "numba is a dependency: the kernel must load"
    original = kernel.propagate

    def counting(*args):  # type: ignore[no-untyped-def]
        calls.append(1)
        return original(*args)

    with monkeypatch.context() as m:
        m.setattr(kernel, "propagate", counting)
        compiled = run()
    assert calls, "the kernel did not run"
    with monkeypatch.context() as m:
        m.setattr(pdg, "_MAIN_KERNEL", False)
        reference = run()
    return compiled, reference


def simulate(seq: mr0.Sequence, data: mr0.SimData, **kwargs: object) -> Callable[[], torch.Tensor]:
    graph = mr0.compute_graph(seq, data, 200, 1e-4, **kwargs)  # type: ignore[arg-type]
    return lambda: mr0.execute_graph(graph, seq, data, 1e-3, 1e-3, print_progress=False,
                                     **kwargs)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("name", sorted(pdg_cases.CASES))
def test_suite_signal_equals_torch(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, reference = both(
        simulate(pdg_cases.suite_seq(name, N), pdg_cases.brain(N)), monkeypatch
    )
    assert float(reference.abs().max()) > 1.0  # a real signal
    assert nrmse(compiled, reference) < TOLERANCE


def test_corpus_signal_equals_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    seq = mr0.Sequence.import_file(CORPUS / "write_haste.seq")
    compiled, reference = both(simulate(seq, pdg_cases.brain(N)), monkeypatch)
    assert nrmse(compiled, reference) < TOLERANCE


def _thick_brain(n: int) -> mr0.SimData:
    """The ``n``² brain's tissue phantom (the grouped path) as one 5 mm slice (sub-slices)."""
    data = copy.copy(pdg_cases.brain(n))
    data.size = torch.cat([data.size[:2], torch.tensor([5e-3])])
    data.nyquist = torch.cat([data.nyquist[:2], torch.tensor([0.5 / 5e-3])])
    return data


def _shaped_run(seq: mr0.Sequence, data: mr0.SimData, sub_slices: int) -> Callable:
    graph = mr0.compute_graph(seq, data, 200, 1e-4, rf_model="shaped")
    return lambda: mr0.execute_graph(graph, seq, data, 1e-3, 1e-3, print_progress=False,
                                     rf_model="shaped", sub_slices=sub_slices)  # fmt: skip


def test_shaped_pulses_over_sub_slices_equal_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shaped pulses (their own coefficient cache) on 7 sub-slices per voxel (columns).

    The brain's voxels give more than 3 tiles of state columns: the kernel works on them tile
    by tile (whole voxels each), the last one partial.
    """
    from mr0core.sim.mainpass_kernel import _TILE_COLUMNS

    seq = pdg_cases.suite_seq("flash_spoiled", N)
    data = _thick_brain(24)
    tile_voxels = _TILE_COLUMNS // 7
    assert data.PD.numel() > 3 * tile_voxels
    assert data.PD.numel() % tile_voxels  # a partial last tile
    compiled, reference = both(_shaped_run(seq, data, 7), monkeypatch)
    assert float(reference.abs().max()) > 0.1
    assert nrmse(compiled, reference) < TOLERANCE


def batched_and_single(
    run: Callable[[], torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.Tensor, int, torch.Tensor]:  # fmt: skip
    """Return ``run()``, how many readouts it put into the signal batch, and ``run()`` without
    the batch (every readout's signal formed per repetition)."""
    added: list[int] = []
    original = pdg._SignalBatch.add

    def counting(self, *args):  # type: ignore[no-untyped-def]
        added.append(1)
        return original(self, *args)

    with monkeypatch.context() as m:
        m.setattr(pdg._SignalBatch, "add", counting)
        got = run()
    with monkeypatch.context() as m:
        m.setattr(pdg._SignalBatch, "takes", lambda self, n_states, n_samples: False)
        single = run()
    return got, len(added), single


def test_sub_slices_batched_signal_equals_per_repetition(monkeypatch: pytest.MonkeyPatch) -> None:
    """With sub-slices, repetitions whose ADC has one z moment join the signal batch.

    Their signal is the one formed per repetition (the batch turned off).
    """
    seq = pdg_cases.suite_seq("flash_spoiled", N)
    batched, added, single = batched_and_single(_shaped_run(seq, _thick_brain(12), 5),
                                                monkeypatch)  # fmt: skip
    assert added == N  # every readout went through the batch
    assert float(single.abs().max()) > 0.1
    assert nrmse(batched, single) < TOLERANCE


def test_sub_slices_z_gradient_during_adc_stays_per_repetition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A z gradient during the ADC: each run of samples gets its own through-slice weighting.

    Such readouts stay out of the batch (which weights all samples alike); the signal is the
    per-repetition one and differs from the readout without the z gradient.
    """
    seq = copy.deepcopy(pdg_cases.suite_seq("flash_spoiled", N))
    plain = _shaped_run(pdg_cases.suite_seq("flash_spoiled", N), _thick_brain(12), 5)()
    for rep in seq:
        adc = rep.adc_usage > 0
        rep.gradm[adc, 2] += 4.0  # 1/m per sample: 0.02 cycles across 5 mm per sample
    got, added, single = batched_and_single(_shaped_run(seq, _thick_brain(12), 5), monkeypatch)
    assert added == 0
    assert nrmse(got, single) < TOLERANCE
    assert nrmse(got, plain) > 1e-2  # the z gradient matters


def test_moving_phantom_equals_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rigid motion: the kernel's states carry the motion's phase on as torch's do.

    Negative control: the kernel run without that carried phase is told apart.
    """
    from mr0core.sim.motion import RigidMotion

    seq = pdg_cases.suite_seq("flash_spoiled", N)
    data = copy.copy(pdg_cases.brain(N))
    data.phantom_motion = RigidMotion(translation_mm_per_s=[5.0, -3.0, 0.0],
                                      rotation_deg_per_s=[0.0, 0.0, 10.0])  # fmt: skip
    compiled, reference = both(simulate(seq, data), monkeypatch)
    still = simulate(seq, pdg_cases.brain(N))()
    assert nrmse(reference, still) > 1e-2  # the motion matters here
    assert nrmse(compiled, reference) < TOLERANCE
    monkeypatch.setattr(pdg, "_motion_carry", lambda mphase: torch.ones(mphase.shape[1]))
    assert nrmse(simulate(seq, data)(), reference) > 1e-2


def test_without_events_nothing_relaxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A repetition of a pulse alone (no events) then a FID: no relaxation in the first."""
    seq = mr0.Sequence()
    rep = seq.new_rep(0)
    rep.pulse.angle = torch.tensor(math.pi / 2)
    rep = seq.new_rep(8)
    rep.event_time[:] = 1e-3
    rep.adc_usage[:] = 1
    data = pdg_cases.brain(N)
    compiled, reference = both(simulate(seq, data), monkeypatch)
    assert nrmse(compiled, reference) < TOLERANCE


@pytest.mark.parametrize("fault", ["phase", "recovery"])
def test_comparison_sees_a_fault(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative controls: the kernel given the conjugate pulse phase, or no T1 recovery."""
    seq = pdg_cases.suite_seq("flash_spoiled" if fault == "phase" else "flash_inversion", N)
    kernel = pdg._main_kernel()
    original = kernel.propagate

    def faulty(*args):  # type: ignore[no-untyped-def]
        args = list(args)
        if fault == "phase":
            args[2] = args[2].conj()  # the pulse phase's factors
        else:
            args[17] = np.zeros_like(args[17])  # the T1 recovery
        return original(*args)

    monkeypatch.setattr(kernel, "propagate", faulty)
    compiled, reference = both(simulate(seq, pdg_cases.brain(N)), monkeypatch)
    assert nrmse(compiled, reference) > 1e-2


def test_bookkeeping_kernels_equal_numpy_bit_for_bit() -> None:
    """``gather_k`` and ``event_sums`` against the numpy code they replace, exactly."""
    kernel = pdg._main_kernel()
    rng = np.random.default_rng(5)
    p_k, p_tau = rng.normal(0, 300, (40, 3)), rng.normal(0, 1e-2, 40)
    z_k, z_tau = rng.normal(0, 300, (30, 3)), rng.normal(0, 1e-2, 30)
    for plus, kinds, n_parent in (
        (True, (0, 1, 2, 3), (40, 40, 30, 30)),
        (False, (4, 5, 6), (30, 40, 40)),
    ):
        kind = rng.choice(kinds, 200)
        parent = np.array([rng.integers(0, n_parent[kinds.index(k)]) for k in kind])
        kind_parent = np.stack([kind, parent], 1)
        if not plus:
            kind_parent[0] = -1  # the relaxed state without an edge
        want = pdg._gather_k_np(kind_parent, p_k, p_tau, z_k, z_tau, plus)
        got = kernel.gather_k(kind_parent, p_k, p_tau, z_k, z_tau)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    dt = rng.uniform(1e-5, 1e-2, 300)
    g = rng.normal(0, 500, (300, 3))
    kcum = np.cumsum(g, 0)
    kprev = kcum - g
    const = dt * ((kprev**2).sum(1) + (kprev * g).sum(1) + (g**2).sum(1) / 3)
    want_sums = (kcum, np.cumsum(dt), np.cumsum(dt[:, None] * (2 * kprev + g), 0), np.cumsum(const))
    for a, b in zip(kernel.event_sums(dt, g), want_sums, strict=True):
        np.testing.assert_array_equal(a, b)


def test_edge_rules_match_pdg() -> None:
    """The kernel's coefficient row and conjugation per edge kind are ``pdg._EDGE_RULES``'."""
    from mr0core.sim.mainpass_kernel import _rule

    for kind, (_, _, conjugate, row) in pdg._EDGE_RULES.items():
        assert _rule(kind) == (row, conjugate)

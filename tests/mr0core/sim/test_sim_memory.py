"""The PDG memory model (mr0core.sim.memory): the formula's structure, the state counts it
takes from the graph, and that it selects the states with the main pass's own rule.

The agreement with measured peaks is tested with the scheduler's estimates
(tests/scheduler/test_scheduler_estimate.py), which add a fresh process's fixed costs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import CORPUS

from mr0core.jobs import load_job_phantom
from mr0core.sequence import Sequence
from mr0core.sim import compute_graph, execute_graph, pdg
from mr0core.sim import memory as M


def _load(**changes: object) -> M.PdgLoad:
    """One repetition: 12 transverse and 6 longitudinal states, 5 edges, 10 states emitting, 64
    samples in 2 blocks of one step pattern (its W tensor alive), one voxel group."""
    one = {
        "plus": 12, "z": 6, "edges": 5, "emit": 10, "samples": 64,
        "blocks": 2, "pattern_blocks": 2, "step_products": 1, "graph_plus": 40,
    }  # fmt: skip
    arrays = {k: np.array([v]) for k, v in one.items()}
    load = M.PdgLoad(voxels=1000, coils=1, tx=1, groups=(1000,), exact=False, graph_states=60,
                     **arrays)  # fmt: skip
    if "voxels" in changes and "groups" not in changes:
        changes["groups"] = (changes["voxels"],)
    return dataclasses.replace(load, **changes)


def test_constants_mirror_the_main_pass() -> None:
    assert pdg._ANCHOR == M.ANCHOR
    assert pdg._PHASOR_ELEMENTS == M.PHASOR_ELEMENTS
    assert pdg._CACHE_ELEMENTS == M.CACHE_ELEMENTS
    assert pdg._CHUNK_ELEMENTS == M.EXACT_CHUNK_ELEMENTS
    assert pdg._MAX_GROUPS == M.MAX_GROUPS
    assert (pdg._K_STEP_QUANTUM, pdg._T_STEP_QUANTUM) == (M.K_STEP_QUANTUM, M.T_STEP_QUANTUM)
    assert (pdg._STACK_ROWS, pdg._BATCH_SAMPLES, pdg._BATCH_ELEMENTS) == (
        M.STACK_ROWS, M.BATCH_SAMPLES, M.BATCH_ELEMENTS)  # fmt: skip
    assert pdg._BATCH_REP_ELEMENTS == M.BATCH_REP_ELEMENTS


def test_main_pass_is_the_documented_formula() -> None:
    """live + the largest of pulse, signal and relaxation, + persistent arrays and signal."""
    V, C, Sp, Sz, E_, Se, T, nb = 1000, 3, 12, 6, 5, 10, 64, 2
    load = _load(coils=C)
    live = 8 * V * (0 + 1 + Sp + Sz) + 32 * 8 * V * 1
    pulse = V * (8 * E_ + 48)
    signal = V * (8 * E_ + 20 * Se) + 48 * Se * T + 8 * Se * C * V
    signal += 8 * Se * C * V * (nb + 2) + 40 * V * nb
    signal += 24 * min(Se * nb * C * V, 2 * M.BATCH_ELEMENTS) + 8 * Se * V  # waiting in the batch
    relax = V * (4 * (Sp + Sz) + 8 * E_)
    assert signal > max(pulse, relax)
    persistent = V * (48 + 8 * (C + 1)) + 16 * T * C
    assert M.main_pass_bytes(load) == live + signal + persistent


def test_gathered_parents_and_relaxation_factors_outlive_their_repetition() -> None:
    """Without signal, the pulse holds this and the last repetition's gathered parents (all edge
    kinds), and the last relaxation factor is still bound: two repetitions, no ADC."""
    V, (Sp0, Sz0, E0), (Sp1, Sz1, E1) = 1000, (50, 30, 100), (60, 40, 300)
    load = _load(plus=np.array([Sp0, Sp1]), z=np.array([Sz0, Sz1]), edges=np.array([E0, E1]),
                 emit=np.zeros(2, int), samples=np.zeros(2, int), blocks=np.zeros(2, int),
                 pattern_blocks=np.zeros(2, int), step_products=np.zeros(2, int),
                 graph_plus=np.zeros(2, int))  # fmt: skip
    live1 = 8 * V * (Sp0 + Sz0 + Sp1 + Sz1) + 4 * V * (Sp0 + Sz0)
    pulse1 = V * (8 * (E0 + E1) + 48)
    relax1 = V * (4 * (Sp1 + Sz1) + 8 * E1)
    assert pulse1 > relax1
    persistent = V * (48 + 8 * 2)
    assert M.main_pass_bytes(load) == live1 + pulse1 + persistent
    # the relaxation's peak: many states, few edges
    few = dataclasses.replace(load, edges=np.array([1, 2]))
    relax1 = V * (4 * (Sp1 + Sz1) + 8 * 2)
    assert M.main_pass_bytes(few) == live1 + relax1 + persistent


def test_state_terms_double_with_the_voxels() -> None:
    """Everything but the [states, samples] factors and the signal scales with V."""
    base = _load()
    per_voxel_free = M.STATE_SAMPLE_BYTES * 10 * 64 + M.SIGNAL_BYTES * 64 * 1
    # (up to 3000 voxels the repetition stays in the signal batch: rows × voxels ≤ 2¹⁶)
    m1, m2, m3 = (M.main_pass_bytes(_load(voxels=v)) for v in (1000, 2000, 3000))
    assert m1 == M.main_pass_bytes(base)
    assert m2 - per_voxel_free == pytest.approx(2 * (m1 - per_voxel_free), abs=2)
    assert m3 - per_voxel_free == pytest.approx(3 * (m1 - per_voxel_free), abs=3)
    # more states: the state arrays grow by 8 bytes per state and voxel (old and new sets)
    more = dataclasses.replace(base, z=np.array([16]))
    assert M.main_pass_bytes(more) - m1 == 8 * 1000 * 10


def test_coils_multiply_only_the_coil_terms() -> None:
    """Per coil: coil-weighted states and block products per emitting state and voxel, the
    coil sensitivities per voxel, the signal per sample."""
    V, Se, nb, nbp, T = 1000, 10, 2, 2, 64
    per_coil = Se * V * (M.COIL_STATE_BYTES + M.BLOCK_BYTES * (nb + nbp))
    per_coil += M.VOXEL_CHANNEL_BYTES * V + M.SIGNAL_BYTES * T
    per_coil += M.BATCH_ROW_BYTES * Se * nb * V  # the batch's rows (state, block, coil)
    # batched up to 3 coils (rows × voxels = Se nb C V ≤ 2¹⁶)
    m = [M.main_pass_bytes(_load(coils=c)) for c in (1, 2, 3)]
    assert m[1] - m[0] == per_coil
    assert m[2] - m[0] == 2 * per_coil
    # at 8 coils: the repetition leaves the batch, whose rows no longer count
    assert M.main_pass_bytes(_load(coils=8)) - m[0] == 7 * per_coil - 8 * M.BATCH_ROW_BYTES * (
        Se * nb * V) - 8 * Se * V  # fmt: skip
    # without emitting states the coils only add their sensitivities
    quiet = [M.main_pass_bytes(_load(coils=c, emit=np.array([0]))) for c in (1, 2)]
    assert quiet[1] - quiet[0] == M.VOXEL_CHANNEL_BYTES * V + M.SIGNAL_BYTES * T


def test_two_voxel_groups_hold_two_groups_of_block_products() -> None:
    """While group g's anchor products are made, group g-1's are still alive."""
    one = _load(groups=(1000,), pattern_blocks=np.array([1]))
    two = _load(groups=(600, 400), pattern_blocks=np.array([1]))
    # one group: its products (2 blocks) + gather of one block = 3 V; two: (600 + 400) 2 = 2 V;
    # the signal batch's rows (state, block, coil) do not depend on the groups
    assert M.main_pass_bytes(one) - M.main_pass_bytes(two) == 8 * 10 * 1 * 1000


def test_device_kinds() -> None:
    load = _load()
    main = M.main_pass_bytes(load)
    assert M.load_bytes(load, "cuda:1") == main
    cpu = M.load_bytes(load, "cpu")
    assert cpu == M.graph_bytes(load) + max(M.prepass_bytes(load), main)
    assert M.graph_bytes(load) == M.GRAPH_STATE_BYTES * 60 + M.GRAPH_REP_BYTES * 1
    assert M.prepass_bytes(load) == M.PREPASS_STATE_SAMPLE_BYTES * 40 * 64
    with pytest.raises(ValueError, match="device"):
        M.load_bytes(load, "tpu")


@pytest.fixture(scope="module")
def brain32() -> object:
    return load_job_phantom("brain", 32, 2)[0].build()


@pytest.mark.parametrize("name", ["write_gre", "write_tse", "seq3"])
def test_bound_is_above_the_graph_estimate(name: str, brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / f"{name}.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    exact = M.pdg_load_from_graph(graph, seq, brain32)
    bound = M.pdg_load(seq, exact.voxels, 2, 200)
    for field in ("plus", "z", "edges", "emit", "graph_plus"):
        assert (getattr(bound, field) >= getattr(exact, field)).all(), field
    np.testing.assert_array_equal(bound.samples, exact.samples)
    assert M.estimate_pdg(seq, exact.voxels, 2, 200) >= M.estimate_pdg_from_graph(
        graph, seq, brain32
    )


def test_graph_load_without_thresholds_counts_every_state(brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    load = M.pdg_load_from_graph(graph, seq, brain32, 0.0, 0.0)
    np.testing.assert_array_equal(load.plus, [len(r.plus_tau) for r in graph])
    np.testing.assert_array_equal(load.z, [len(r.z_tau) for r in graph])
    np.testing.assert_array_equal(load.emit, np.where(load.samples > 0, load.plus, 0))
    assert load.graph_states == sum(graph.state_counts)
    # a Cartesian readout: 64 samples = 2 blocks of equal steps, one W kept from its 2nd use
    adc = load.samples > 0
    assert set(load.samples[adc]) == {64}
    assert set(load.blocks[adc]) == {2}
    assert set(load.pattern_blocks[adc]) == {2}
    assert load.step_products.max() == 1
    assert load.groups == (372, 426, 160)
    assert sum(load.groups) == load.voxels
    strict = M.pdg_load_from_graph(graph, seq, brain32, 1e-2, 1e-2)
    assert strict.plus.sum() < load.plus.sum()


def test_the_model_counts_the_states_the_main_pass_simulates(
    brain32: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pass's own selection (recorded while it runs) gives the model's state counts."""
    seq = Sequence.import_file(CORPUS / "write_tse.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    simulated: list[tuple[int, int]] = []
    emitting: list[int] = []
    select, emit = pdg.simulated_states, pdg.emitting_states

    def record_select(rg: object, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        act_p, act_z = select(rg, threshold)  # type: ignore[arg-type]
        simulated.append((len(act_p), len(act_z)))
        return act_p, act_z

    def record_emit(rg: object, plus: np.ndarray, threshold: float) -> np.ndarray:
        out = emit(rg, plus, threshold)  # type: ignore[arg-type]
        emitting.append(len(out))
        return out

    monkeypatch.setattr(pdg, "simulated_states", record_select)
    monkeypatch.setattr(pdg, "emitting_states", record_emit)
    execute_graph(graph, seq, brain32, 1e-2, 2e-2, print_progress=False)
    load = M.pdg_load_from_graph(graph, seq, brain32, 1e-2, 2e-2)
    assert [p for p, _ in simulated] == load.plus.tolist()
    assert [z for _, z in simulated] == load.z.tolist()
    assert emitting == load.emit[load.samples > 0].tolist()
    assert 0 < load.plus.sum() < sum(len(r.plus_tau) for r in graph)  # the thresholds cut


def test_the_relaxed_state_is_always_simulated(brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    for rg in graph:
        _, act_z = pdg.simulated_states(rg, 2.0)  # above every latent estimate (at most 1)
        assert act_z.tolist() == [0]
    assert (M.pdg_load_from_graph(graph, seq, brain32, 1.0, 2.0).z == 1).all()


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"voxels": 0}, "voxels"), ({"coils": True}, "coils"), ({"max_states": 1.5}, "max_states"),
     ({"tx": -1}, "tx")],
)  # fmt: skip
def test_the_bound_refuses_bad_counts(changes: dict, match: str) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    args = {"voxels": 100, "coils": 1, "max_states": 200, "tx": 1, **changes}
    with pytest.raises(ValueError, match=match):
        M.pdg_load(seq, args["voxels"], args["coils"], args["max_states"], tx=args["tx"])


def test_exported_from_the_package() -> None:
    import mr0core.sim

    assert mr0core.sim.estimate_pdg is M.estimate_pdg
    assert mr0core.sim.estimate_pdg_from_graph is M.estimate_pdg_from_graph

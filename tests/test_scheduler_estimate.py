"""Memory estimates of jobs (scheduler.estimate): the formula's structure, its agreement with
measured peaks, and the job-parameter front end."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mr0core.jobs import load_job_phantom
from mr0core.sequence import Sequence
from mr0core.sim import compute_graph
from scheduler import estimate as E

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "tests" / "data" / "seq-corpus"

# measured / estimated peak (CPU, peak-RSS growth in a fresh process) must fall in this band;
# scripts/calibrate_estimate.py found 0.80-1.01 over its 29 cases, so a formula off by 4x (or
# a missing term of the size of the state arrays) lands far outside it
BAND = (0.6, 1.3)


def _load(**changes: object) -> E.PdgLoad:
    """One repetition: 12 transverse and 6 longitudinal states, 10 of them emitting, 64
    samples in 2 blocks of one step pattern (its W tensor alive), one voxel group."""
    one = {
        "plus": 12, "z": 6, "edges": 5, "edges_last": 3, "emit": 10, "samples": 64,
        "blocks": 2, "pattern_blocks": 2, "step_products": 1, "graph_plus": 40,
    }  # fmt: skip
    arrays = {k: np.array([v]) for k, v in one.items()}
    load = E.PdgLoad(voxels=1000, coils=1, tx=1, groups=(1000,), exact=False, graph_states=60,
                     **arrays)  # fmt: skip
    if "voxels" in changes and "groups" not in changes:
        changes["groups"] = (changes["voxels"],)
    return dataclasses.replace(load, **changes)


def test_constants_mirror_the_main_pass() -> None:
    from mr0core.sim import pdg

    assert pdg._ANCHOR == E.ANCHOR
    assert pdg._PHASOR_ELEMENTS == E.PHASOR_ELEMENTS
    assert pdg._CACHE_ELEMENTS == E.CACHE_ELEMENTS
    assert pdg._CHUNK_ELEMENTS == E.EXACT_CHUNK_ELEMENTS
    assert pdg._MAX_GROUPS == E.MAX_GROUPS
    assert (pdg._K_STEP_QUANTUM, pdg._T_STEP_QUANTUM) == (E.K_STEP_QUANTUM, E.T_STEP_QUANTUM)
    assert (pdg._STACK_ROWS, pdg._BATCH_SAMPLES, pdg._BATCH_ELEMENTS) == (
        E.STACK_ROWS, E.BATCH_SAMPLES, E.BATCH_ELEMENTS)  # fmt: skip
    assert pdg._BATCH_REP_ELEMENTS == E.BATCH_REP_ELEMENTS


def test_main_pass_is_the_documented_formula() -> None:
    """live + the largest of pulse, signal and relaxation, + persistent arrays and signal."""
    V, C, Sp, Sz, E_, El, Se, T, nb = 1000, 3, 12, 6, 5, 3, 10, 64, 2
    load = _load(coils=C)
    live = 8 * V * (0 + 1 + Sp + Sz) + 32 * 8 * V * 1
    pulse = V * (32 * E_ + 48)
    signal = V * (16 * El + 20 * Se) + 48 * Se * T + 8 * Se * C * V
    signal += 8 * Se * C * V * (nb + 2) + 40 * V * nb
    signal += 24 * min(Se * nb * C * V, 2 * E.BATCH_ELEMENTS) + 8 * Se * V  # waiting in the batch
    relax = 4 * V * Sp
    assert signal > max(pulse, relax)
    persistent = V * (48 + 8 * (C + 1)) + 16 * T * C
    assert E.main_pass_bytes(load) == live + signal + persistent


def test_state_terms_double_with_the_voxels() -> None:
    """Everything but the [states, samples] factors and the signal scales with V."""
    base = _load()
    per_voxel_free = E.STATE_SAMPLE_BYTES * 10 * 64 + E.SIGNAL_BYTES * 64 * 1
    # (up to 3000 voxels the repetition stays in the signal batch: rows × voxels ≤ 2¹⁶)
    m1, m2, m3 = (E.main_pass_bytes(_load(voxels=v)) for v in (1000, 2000, 3000))
    assert m1 == E.main_pass_bytes(base)
    assert m2 - per_voxel_free == pytest.approx(2 * (m1 - per_voxel_free), abs=2)
    assert m3 - per_voxel_free == pytest.approx(3 * (m1 - per_voxel_free), abs=3)
    # more states: the state arrays grow by 8 bytes per state and voxel (old and new sets)
    more = dataclasses.replace(base, z=np.array([16]))
    assert E.main_pass_bytes(more) - m1 == 8 * 1000 * 10


def test_coils_multiply_only_the_coil_terms() -> None:
    """Per coil: coil-weighted states and block products per emitting state and voxel, the
    coil sensitivities per voxel, the signal per sample."""
    V, Se, nb, nbp, T = 1000, 10, 2, 2, 64
    per_coil = Se * V * (E.COIL_STATE_BYTES + E.BLOCK_BYTES * (nb + nbp))
    per_coil += E.VOXEL_CHANNEL_BYTES * V + E.SIGNAL_BYTES * T
    per_coil += E.BATCH_ROW_BYTES * Se * nb * V  # the batch's rows (state, block, coil)
    # batched up to 3 coils (rows × voxels = Se nb C V ≤ 2¹⁶)
    m = [E.main_pass_bytes(_load(coils=c)) for c in (1, 2, 3)]
    assert m[1] - m[0] == per_coil
    assert m[2] - m[0] == 2 * per_coil
    # at 8 coils: the repetition leaves the batch, whose rows no longer count
    assert E.main_pass_bytes(_load(coils=8)) - m[0] == 7 * per_coil - 8 * E.BATCH_ROW_BYTES * (
        Se * nb * V) - 8 * Se * V  # fmt: skip
    # without emitting states the coils only add their sensitivities
    quiet = [E.main_pass_bytes(_load(coils=c, emit=np.array([0]))) for c in (1, 2)]
    assert quiet[1] - quiet[0] == E.VOXEL_CHANNEL_BYTES * V + E.SIGNAL_BYTES * T


def test_two_voxel_groups_hold_two_groups_of_block_products() -> None:
    """While group g's anchor products are made, group g-1's are still alive."""
    one = _load(groups=(1000,), pattern_blocks=np.array([1]))
    two = _load(groups=(600, 400), pattern_blocks=np.array([1]))
    # one group: its products (2 blocks) + gather of one block = 3 V; two: (600 + 400) 2 = 2 V;
    # the signal batch holds a row per group: two groups, twice the rows (10 states, 2 blocks)
    batch_rows = E.BATCH_ROW_BYTES * 10 * 2 * 1000
    assert E.main_pass_bytes(one) - E.main_pass_bytes(two) == 8 * 10 * 1 * 1000 - batch_rows


def test_device_kinds() -> None:
    load = _load()
    main = E.main_pass_bytes(load)
    assert E.load_bytes(load, "cuda:1") == main
    cpu = E.load_bytes(load, "cpu")
    assert cpu == E.FIXED_BYTES + E.graph_bytes(load) + max(E.prepass_bytes(load), main)
    assert E.graph_bytes(load) == E.GRAPH_STATE_BYTES * 60 + E.GRAPH_REP_BYTES * 1
    assert E.prepass_bytes(load) == E.PREPASS_STATE_SAMPLE_BYTES * 40 * 64
    with pytest.raises(ValueError, match="device"):
        E.load_bytes(load, "tpu")


@pytest.fixture(scope="module")
def brain32() -> object:
    return load_job_phantom("brain", 32, 2)[0].build()


@pytest.mark.parametrize("name", ["write_gre", "write_tse", "seq3"])
def test_bound_is_above_the_graph_estimate(name: str, brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / f"{name}.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    exact = E.pdg_load_from_graph(graph, seq, brain32)
    bound = E.pdg_load(seq, exact.voxels, 2, 200)
    for field in ("plus", "z", "edges", "emit", "graph_plus"):
        assert (getattr(bound, field) >= getattr(exact, field)).all(), field
    np.testing.assert_array_equal(bound.samples, exact.samples)
    assert E.estimate_pdg(seq, exact.voxels, 2, 200) >= E.estimate_pdg_from_graph(
        graph, seq, brain32
    )


def test_graph_load_without_thresholds_counts_every_state(brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    load = E.pdg_load_from_graph(graph, seq, brain32, 0.0, 0.0)
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
    strict = E.pdg_load_from_graph(graph, seq, brain32, 1e-2, 1e-2)
    assert strict.plus.sum() < load.plus.sum()


def test_estimate_within_band_of_measured_peak() -> None:
    """Three cases in a fresh process, peak RSS growth as scripts/calibrate_estimate.py
    measures it: a small FLASH where the fixed costs dominate (first, so it pays them), a
    main-pass-heavy synthetic train (128² brain, 4 coils, ~75 emitting states) and a spoiled
    train whose float64 pre-pass dominates."""
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux /proc/self/clear_refs to reset the peak RSS")
    cases = [("write_gre", 16, 1, 200), ("train6", 128, 4, 200), ("spoiled8", 16, 1, 200)]
    code = (
        "import json, sys, torch\n"
        f"sys.path.insert(0, {str(REPO / 'scripts')!r})\n"
        "torch.set_num_threads(2)\n"
        "from calibrate_estimate import child_pdg\n"
        f"for case in {cases!r}:\n"
        "    print(json.dumps(child_pdg(*case, device='cpu', count=False)))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))  # fmt: skip
    env.update(OMP_NUM_THREADS="2", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3
    fixed_heavy, main_heavy, prepass_heavy = rows
    assert fixed_heavy["estimate"] < 2 * E.FIXED_BYTES
    assert main_heavy["estimate_main"] > 5 * E.FIXED_BYTES
    assert prepass_heavy["estimate_pre"] > 5 * max(E.FIXED_BYTES, prepass_heavy["estimate_main"])
    for row in rows:
        ratio = row["measured"] / row["estimate"]
        assert BAND[0] <= ratio <= BAND[1], (row["case"], ratio, row)


# -- estimate_job ---------------------------------------------------------------------------


def _sim_params(**changes: object) -> dict:
    params = {"seq": str(CORPUS / "write_gre.seq"), "phantom": "brain", "size": 32, "coils": 2,
              "max_states": 200}  # fmt: skip
    params.update(changes)
    return params


def test_simulation_job_bound_and_prepass(brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    voxels = int(brain32.PD.shape[0])
    bound = E.estimate_job("simulate", _sim_params(), prepass=False)
    assert bound == E.estimate_pdg(seq, voxels, 2, 200)
    text = (CORPUS / "write_gre.seq").read_text()
    assert E.estimate_job("simulate", _sim_params(seq=text), prepass=False) == bound
    graph = compute_graph(seq, brain32, 200, 1e-4)
    exact = E.estimate_pdg_from_graph(graph, seq, brain32)
    assert E.estimate_job("simulate", _sim_params(), prepass=True) == exact
    assert E.estimate_job("simulate", _sim_params()) == exact  # small: the pre-pass by itself
    assert exact < bound
    cuda = E.estimate_job("simulate", _sim_params(device="cuda"), prepass=False)
    assert cuda == E.estimate_pdg(seq, voxels, 2, 200, device="cuda") < bound


def test_json_phantom_voxels_bound_the_built_phantom(tmp_path: Path) -> None:
    from mr0core.phantom.builtin_phantoms import write_phantom

    path, _ = write_phantom("brain", tmp_path / "brain", size=16)
    for size in (None, 24):
        voxels, coils, tx, exact = E._phantom_voxels(str(path), size)
        built = load_job_phantom(str(path), size)[0].build()
        # one entry per (voxel, tissue) at most: 3 tissues on the (resampled) grid
        assert voxels == 3 * (size or 16) ** 2
        assert len(built.PD) <= voxels
        assert (coils, tx, exact) == (1, 1, False)
    # a NIfTI phantom brings its own receive maps (one here): the job's coils do not apply
    params = {"seq": str(CORPUS / "write_gre.seq"), "phantom": str(path), "coils": 3}
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    data = load_job_phantom(str(path), None, 3)[0].build()
    graph = compute_graph(seq, data, 200, 1e-4)
    expected = E.estimate_pdg_from_graph(graph, seq, data)
    assert E.estimate_job("simulate", params, prepass=True) == expected


def test_recon_job_structure() -> None:
    params = {"matrix": [128, 128, 1], "coils": 8, "method": "sense"}
    assert E.estimate_job("reconstruct", params) == E.estimate_recon_bytes((128, 128), 8, "sense")

    def recon(method: str, coils: int) -> int:
        return E.estimate_job("reconstruct", {"matrix": [96, 96], "coils": coils,
                                              "method": method})  # fmt: skip

    # FFT: linear in the coils; SENSE: the Walsh covariances are quadratic ([C, C, N2])
    fft = [recon("fft", c) for c in (2, 3, 4)]
    assert fft[2] - 2 * fft[1] + fft[0] == 0
    sense = [recon("sense", c) for c in (2, 3, 4)]
    assert sense[2] - 2 * sense[1] + sense[0] == pytest.approx(
        2 * E.C64 * 96 * 96 * E.RECON_WALSH_COPIES, abs=2
    )
    assert recon("auto", 4) == max(recon("fft", 4), recon("sense", 4))
    # the NUFFT's oversampled grid: 4 N per batch in 2-D, 8 N in 3-D
    assert E.estimate_recon_bytes((64, 64, 64), 1, "nufft", samples=1) > E.C64 * 8 * 64**3


def test_unknown_function_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no memory estimate for job function 'fit'"):
        E.estimate_job("fit", {})


@pytest.mark.parametrize(
    ("function", "params", "match"),
    [
        ("simulate", _sim_params(size=10**6), "size"),
        ("simulate", _sim_params(coils=-1), "coils"),
        ("simulate", _sim_params(coils=10**6), "coils"),
        ("simulate", _sim_params(coils=True), "coils"),
        ("simulate", _sim_params(max_states=0), "max_states"),
        ("simulate", _sim_params(max_states=10**12), "max_states"),
        ("simulate", _sim_params(min_latent=-1.0), "min-latent"),
        ("simulate", _sim_params(device="tpu"), "device"),
        ("simulate", _sim_params(phantom="/etc/passwd"), "phantom"),
        ("simulate", {"phantom": "brain"}, "seq"),
        ("reconstruct", {"matrix": [10**6, 10**6, 10**6], "coils": 8}, "matrix"),
        ("reconstruct", {"matrix": "big", "coils": 8}, "matrix"),
        ("reconstruct", {"matrix": [64, 64], "coils": 0}, "coils"),
        ("reconstruct", {"matrix": [64, 64], "method": "magic"}, "method"),
        ("reconstruct", {"coils": 8}, "matrix"),
    ],
)
def test_hostile_params_fail_before_any_work(
    function: str, params: dict, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("estimate_job built a phantom or read a sequence")

    monkeypatch.setattr(E, "_builtin_voxels", refuse)
    monkeypatch.setattr(E, "_load_sequence", refuse)
    with pytest.raises(ValueError, match=match):
        E.estimate_job(function, params)


def test_missing_sequence_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no such file"):
        E.estimate_job("simulate", _sim_params(seq=str(CORPUS / "missing.seq")))
    with pytest.raises(ValueError, match="mapping"):
        E.estimate_job("simulate", [("seq", "x")])  # type: ignore[arg-type]

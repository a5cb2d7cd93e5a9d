"""Memory estimates of the scheduler's jobs and calls (scheduler.estimate): the registries
name exactly the functions of scheduler.functions, the job-parameter front end, the estimates of
calls, and the agreement of estimate (model + fixed process costs) with measured peaks.

The models themselves are tested in tests/mr0core/sim/test_sim_memory.py and
tests/mr0core/recon/test_recon_memory.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from gadgets.serve.server import SCHEDULER_FUNCTION_MODULES
from mr0core.jobs import build_demo_flash, load_job_phantom
from mr0core.recon import KData
from mr0core.recon.memory import estimate_recon_bytes
from mr0core.sequence import Sequence
from mr0core.sim import compute_graph
from mr0core.sim.memory import estimate_pdg, estimate_pdg_from_graph
from scheduler import estimate as E
from scheduler.functions import CALLS, FUNCTIONS, load_function_modules

CORPUS = REPO / "tests" / "data" / "seq-corpus"

# measured / estimated peak (CPU, peak-RSS growth in a fresh process) must fall in this band;
# scripts/calibrate_estimate.py found 0.80-1.01 over its 29 cases, so a formula off by 4x (or
# a missing term of the size of the state arrays) lands far outside it
BAND = (0.6, 1.3)


# -- the registries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "functions"),
    [(E.JOB_ESTIMATORS, FUNCTIONS), (E.CALL_ESTIMATORS, CALLS)],
    ids=["jobs", "calls"],
)
def test_every_function_has_an_estimator_and_every_estimator_a_function(
    registry: dict, functions: dict
) -> None:
    """A function renamed, added or removed in scheduler.functions (or in a plug-in module the
    project ships: the server's) breaks this test until the registry follows; a function without
    an estimate says why."""
    load_function_modules(SCHEDULER_FUNCTION_MODULES)  # they register their functions
    assert set(registry) == set(functions)
    for name, entry in registry.items():
        if isinstance(entry, E.NoEstimate):
            assert len(entry.reason) > 10, name
        else:
            assert callable(entry), name


def test_functions_without_an_estimate_give_zero() -> None:
    assert E.estimate_job("noop", {"sleep_s": 1}) == 0
    assert E.estimate_call("echo", {"n": 1}, {}) == 0
    with pytest.raises(ValueError, match="no memory estimate for job function 'fit'"):
        E.estimate_job("fit", {})
    with pytest.raises(ValueError, match="no memory estimate for call 'fit'"):
        E.estimate_call("fit", {}, {})
    # calls are not jobs: no job estimate for the call function reconstruct
    with pytest.raises(ValueError, match="job function 'reconstruct'"):
        E.estimate_job("reconstruct", {"matrix": [64, 64]})


def test_importing_the_estimates_loads_no_torch() -> None:
    """The scheduler service imports this module: mr0core and torch load with the first
    estimate, not before."""
    code = (
        "import json, sys, scheduler.estimate as E\n"
        "light = 'torch' not in sys.modules\n"
        "E.estimate_simulation_job({'demo_flash': 8, 'size': 8})\n"
        "print(json.dumps([light, 'torch' in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=120).stdout  # fmt: skip
    assert json.loads(out) == [True, True]


@pytest.fixture(scope="module")
def small() -> dict:
    """An 8x8 FLASH, its 8x8 brain twin (built) and raw data of its layout."""
    seq = Sequence.from_pypulseq(build_demo_flash(8))
    data = load_job_phantom("brain", 8, 1)[0].build()
    samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
    signal = torch.arange(samples * 2, dtype=torch.float32).reshape(-1, 2).to(torch.complex64)
    return {"sequence": seq, "phantom": data, "kdata": KData.from_sequence(signal, seq)}


def test_call_estimates_are_the_models_plus_the_fixed_costs(small: dict) -> None:
    kd = small["kdata"]
    assert E.estimate_call("reconstruct", {"kdata": kd}, {"method": "fft"}) == E.FIXED_BYTES + (
        estimate_recon_bytes(kd.recon_matrix, kd.n_coils, "fft", samples=kd.signal.shape[0])
    )
    seq, data = small["sequence"], small["phantom"]
    sim = {"sequence": seq, "phantom": data}
    pdg = estimate_pdg(seq, data.voxel_count, 1, 200)
    assert E.estimate_call("simulate", sim, {}) == E.FIXED_BYTES + pdg
    shaped = E.estimate_call("simulate", sim, {"rf_model": "shaped", "sub_slices": 3})
    assert shaped == E.FIXED_BYTES + estimate_pdg(seq, 3 * data.voxel_count, 1, 200)
    assert E.estimate_call("prepare_seq", {"text": "x" * 10}, {}) == E.estimate_seq_parse(
        10, layout=False
    )
    with pytest.raises(ValueError, match="kdata"):
        E.estimate_call("reconstruct", {"kdata": "raw"}, {})


def test_a_simulation_that_reconstructs_counts_the_larger(small: dict) -> None:
    seq = small["sequence"]
    params = {"voxels": 64, "coils": 2}
    alone = E.estimate_simulation_from_sequence(seq, params)
    assert alone == E.FIXED_BYTES + estimate_pdg(seq, 64, 2, 200)
    samples = 10**7  # a recon (and its kept signal) far larger than the simulation
    both = E.estimate_simulation_from_sequence(seq, params, samples=samples,
                                               recon_matrix=(8, 8, 1))  # fmt: skip
    recon = estimate_recon_bytes((8, 8, 1), 2, "auto", samples=samples)
    assert both == E.FIXED_BYTES + recon + 16 * samples * 2 > alone  # the signal: 2 complex64


# -- estimate_job -----------------------------------------------------------------------------


def _sim_params(**changes: object) -> dict:
    params = {"seq": str(CORPUS / "write_gre.seq"), "phantom": "brain", "size": 32, "coils": 2,
              "max_states": 200}  # fmt: skip
    params.update(changes)
    return params


@pytest.fixture(scope="module")
def brain32() -> object:
    return load_job_phantom("brain", 32, 2)[0].build()


def test_simulation_job_bound_and_prepass(brain32: object) -> None:
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    voxels = int(brain32.PD.shape[0])
    bound = E.estimate_job("simulate", _sim_params(), prepass=False)
    assert bound == E.FIXED_BYTES + estimate_pdg(seq, voxels, 2, 200)
    text = (CORPUS / "write_gre.seq").read_text()
    assert E.estimate_job("simulate", _sim_params(seq=text), prepass=False) == bound
    graph = compute_graph(seq, brain32, 200, 1e-4)
    exact = E.FIXED_BYTES + estimate_pdg_from_graph(graph, seq, brain32)
    assert E.estimate_job("simulate", _sim_params(), prepass=True) == exact
    assert E.estimate_job("simulate", _sim_params()) == exact  # small: the pre-pass by itself
    assert exact < bound
    # the device figure is the main pass alone: no process costs, no graph
    cuda = E.estimate_job("simulate", _sim_params(device="cuda"), prepass=False)
    assert cuda == estimate_pdg(seq, voxels, 2, 200, device="cuda") < bound


def test_simulation_job_reads_the_jobs_own_parameters(brain32: object) -> None:
    """accuracy (the main pass's thresholds) and demo_flash, as scheduler.functions.simulate."""
    seq = Sequence.import_file(CORPUS / "write_gre.seq")
    graph = compute_graph(seq, brain32, 200, 1e-4)
    loose = E.estimate_job("simulate", _sim_params(accuracy=0.05), prepass=True)
    assert loose == E.FIXED_BYTES + estimate_pdg_from_graph(
        graph, seq, brain32, min_emitted=0.05, min_latent=0.05
    )
    # (not monotone: with fewer emitting states, more repetitions wait in the signal batch)
    assert loose != E.estimate_job("simulate", _sim_params(), prepass=True)
    demo = Sequence.from_pypulseq(build_demo_flash(16))
    params = {"demo_flash": 16, "size": 32, "coils": 2}
    voxels = int(brain32.PD.shape[0])
    assert E.estimate_job("simulate", params, prepass=False) == E.FIXED_BYTES + estimate_pdg(
        demo, voxels, 2, 200
    )


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
    expected = E.FIXED_BYTES + estimate_pdg_from_graph(graph, seq, data)
    assert E.estimate_job("simulate", params, prepass=True) == expected


@pytest.mark.parametrize(
    ("function", "params", "match"),
    [
        ("simulate", _sim_params(size=10**6), "size"),
        ("simulate", _sim_params(coils=-1), "coils"),
        ("simulate", _sim_params(coils=10**6), "coils"),
        ("simulate", _sim_params(coils=True), "coils"),
        ("simulate", _sim_params(max_states=0), "max_states"),
        ("simulate", _sim_params(max_states=10**12), "max_states"),
        ("simulate", _sim_params(accuracy=-1.0), "accuracy"),
        ("simulate", _sim_params(accuracy="high"), "accuracy"),
        ("simulate", _sim_params(device="tpu"), "device"),
        ("simulate", _sim_params(phantom="/etc/passwd"), "phantom"),
        ("simulate", {"phantom": "brain", "demo_flash": 10**5}, "demo_flash"),
    ],
)
def test_hostile_params_fail_before_any_work(
    function: str, params: dict, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("estimate_job built a phantom or read a sequence")

    monkeypatch.setattr(E, "_builtin_voxels", refuse)
    monkeypatch.setattr(E, "_load_sequence", refuse)
    monkeypatch.setattr(E, "_demo_flash", refuse)
    with pytest.raises(ValueError, match=match):
        E.estimate_job(function, params)


def test_missing_sequence_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no such file"):
        E.estimate_job("simulate", _sim_params(seq=str(CORPUS / "missing.seq")))
    with pytest.raises(ValueError, match="mapping"):
        E.estimate_job("simulate", [("seq", "x")])  # type: ignore[arg-type]


# -- against measured peaks ----------------------------------------------------------------------


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
    assert fixed_heavy["estimate"] < 2 * E.FIXED_BYTES  # the model's figure + FIXED_BYTES
    assert main_heavy["estimate_main"] > 5 * E.FIXED_BYTES
    assert prepass_heavy["estimate_pre"] > 5 * max(E.FIXED_BYTES, prepass_heavy["estimate_main"])
    for row in rows:
        ratio = row["measured"] / row["estimate"]
        assert BAND[0] <= ratio <= BAND[1], (row["case"], ratio, row)

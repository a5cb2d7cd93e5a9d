"""The main pass's no-autograd fast path gives the signal of the general path.

Without autograd the main pass keeps a repetition's states in one tensor, gathers and scatters
the edges on float views, batches the signal of repetitions with few emitting states, prunes
states whose voxel-shape response is negligible from the pre-pass's emitted estimate, merges
states by a hashed key and flushes float denormals. Each is checked here against the path it
replaces, measured in the same run; where a switch exists, the test also shows that the switch
changes which code runs (so that the comparison is not of a path with itself).
"""

from __future__ import annotations

import sys

import mrzero_sequences as ms
import numpy as np
import pytest
import torch
from conftest import SCRIPTS

import mr0core as mr0
from mr0core.phantom.builtin_phantoms import write_phantom
from mr0core.phantom.sim_data import VoxelShape
from mr0core.sim import graph as graph_module
from mr0core.sim import pdg


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().pow(2).sum().sqrt() / ref.abs().pow(2).sum().sqrt())


@pytest.fixture(scope="module")
def flash(tmp_path_factory: pytest.TempPathFactory) -> tuple[mr0.Sequence, mr0.SimData]:
    """FLASH on the built-in brain's tissue phantom at 24² (few emitting states per repetition)."""
    folder = tmp_path_factory.mktemp("fast")
    ms.build_flash(24).write(str(folder / "flash.seq"))
    seq = mr0.Sequence.import_file(folder / "flash.seq")
    # the tissue phantom (a few (T2', D) groups: the grouped path, as in the benchmark suite)
    spec, _ = write_phantom("brain", folder / "brain", size=24)
    data = mr0.TissueDict.load(spec).build()
    return seq, data


def _signal(seq: mr0.Sequence, data: mr0.SimData, graph: mr0.Graph | None = None) -> torch.Tensor:
    graph = mr0.compute_graph(seq, data, 200, 1e-4) if graph is None else graph
    return mr0.execute_graph(graph, seq, data, 1e-3, 1e-3, print_progress=False)


def test_batched_signal_equals_per_repetition_signal(flash, monkeypatch) -> None:
    seq, data = flash
    graph = mr0.compute_graph(seq, data, 200, 1e-4)
    added: list[int] = []
    original_add = pdg._SignalBatch.add

    def counting_add(self, slot, *job):  # type: ignore[no-untyped-def]
        added.append(slot)
        return original_add(self, slot, *job)

    monkeypatch.setattr(pdg._SignalBatch, "add", counting_add)
    batched = _signal(seq, data, graph)
    assert len(added) >= len(seq) // 2  # the batch did run
    monkeypatch.setattr(pdg._SignalBatch, "takes", lambda self, n_s, n_t: False)
    added.clear()
    single = _signal(seq, data, graph)
    assert not added
    assert _nrmse(batched, single) < 1e-6
    assert float(single.abs().max()) > 1.0  # a real signal, not two zeros


def test_fast_path_equals_autograd_path(flash) -> None:
    """With a parameter that needs gradients the general (torch) path runs: same signal."""
    seq, data = flash
    graph = mr0.compute_graph(seq, data, 200, 1e-4)
    fast = _signal(seq, data, graph)
    plain = data.T1
    t1 = plain.clone().requires_grad_(True)
    data.T1 = t1
    try:
        slow = _signal(seq, data, graph)
    finally:
        data.T1 = plain
    assert slow.requires_grad  # the general path ran
    assert _nrmse(fast, slow.detach()) < 1e-5
    slow.abs().sum().backward()
    assert t1.grad is not None
    assert float(t1.grad.abs().sum()) > 0


@pytest.mark.parametrize("scale", [10, 2**40])  # packed key; rows too wide to pack
def test_group_rows_is_np_unique(scale: int) -> None:
    """Same groups, first occurrences and order as ``np.unique(axis=0)`` (the order decides
    which of equally strong states the pre-pass's caps keep)."""
    rng = np.random.default_rng(1)
    q = rng.integers(-scale, scale, size=(300, 4))
    q = np.concatenate([q, q[::3]])  # repeated rows
    order, starts, inverse = graph_module._group_rows(q)
    _, first, inverse_ref = np.unique(q, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(order[starts], first)
    assert np.array_equal(inverse, inverse_ref.reshape(-1))
    assert (q[order] == q[order[starts]][np.repeat(np.arange(len(starts)), np.diff(
        np.append(starts, len(q))))]).all()  # fmt: skip


def test_pruning_dephased_states_keeps_the_emitted_estimate(flash, monkeypatch) -> None:
    seq, data = flash
    evaluated: list[int] = []
    original = VoxelShape.__call__

    def counting(self, k, nyquist):  # type: ignore[no-untyped-def]
        evaluated.append(k.numel() // 3)
        return original(self, k, nyquist)

    monkeypatch.setattr(VoxelShape, "__call__", counting)
    pruned = mr0.compute_graph(seq, data, 200, 1e-4)
    n_pruned, evaluated[:] = sum(evaluated), []
    monkeypatch.setattr(graph_module, "_MONOTONE_SHAPES", ())  # every state's response computed
    full = mr0.compute_graph(seq, data, 200, 1e-4)
    n_full = sum(evaluated)
    assert n_pruned < 0.5 * n_full  # most dephased states were skipped
    for a, b in zip(pruned, full, strict=True):
        assert np.allclose(a.plus_emitted, b.plus_emitted, rtol=1e-5, atol=1e-9)
        assert np.allclose(a.plus_latent, b.plus_latent, rtol=1e-5, atol=1e-9)


def test_denormals_are_flushed_during_the_pass_and_the_mode_restored(flash, monkeypatch) -> None:
    seq, data = flash
    seen: list[bool] = []
    original = pdg._relax

    def probe(*args):  # type: ignore[no-untyped-def]
        tiny = torch.tensor(1e-30, dtype=torch.float32) * torch.tensor(1e-9, dtype=torch.float32)
        seen.append(bool(tiny == 0))
        return original(*args)

    monkeypatch.setattr(pdg, "_relax", probe)
    t1 = data.T1.clone().requires_grad_(True)  # the general path, which calls _relax
    data.T1 = t1
    try:
        _signal(seq, data)
    finally:
        data.T1 = t1.detach()
    after = torch.tensor(1e-30, dtype=torch.float32) * torch.tensor(1e-9, dtype=torch.float32)
    if torch.set_flush_denormal(False):  # the CPU supports flushing
        assert seen
        assert all(seen)
        assert float(after) > 0  # restored: denormals exist again after the pass


def _direct_products(pos, b0, t2, inc):  # type: ignore[no-untyped-def]
    """``[B, V]`` step products in float64 from the running sums of the steps."""
    k = np.concatenate([np.zeros((1, 3)), np.cumsum(inc[:, :3], 0)])
    t = np.concatenate([[0.0], np.cumsum(inc[:, 3])])
    p, b, r2 = (x.double().numpy() for x in (pos, b0, t2))
    cycles = k @ p.T + t[:, None] * b[None]
    return np.exp(-2j * np.pi * cycles) * np.exp(-t[:, None] / r2[None])


@pytest.mark.parametrize("steps", ["spiral", "equal", "padded"])
def test_grid_step_products_equal_the_direct_phasors(steps: str) -> None:
    """Per-axis tables on a grid give the step products of the direct float64 formula.

    Spiral steps (a new step every sample), equal steps and a block padded with zero steps after
    its last sample, on a masked 2-D grid with per-voxel B0 and T2. The general path (no grid)
    and the powers of equal steps give the same within their float32 running products; a wrong
    axis table (negative control) is far off.
    """
    rng = np.random.default_rng(3)
    x, y = np.meshgrid(np.arange(32) - 16.0, np.arange(32) - 16.0, indexing="ij")
    keep = rng.random(x.size) < 0.7
    pos = torch.tensor(np.stack([x.ravel(), y.ravel(), np.full(x.size, 0.25)], 1)[keep] * 6e-3,
                       dtype=torch.float32)  # fmt: skip
    n_v = len(pos)
    b0 = torch.tensor(rng.normal(0, 40, n_v), dtype=torch.float32)
    t2 = torch.tensor(rng.uniform(0.02, 0.2, n_v), dtype=torch.float32)
    n = pdg._ANCHOR - 1
    inc = np.zeros((n, 4))
    if steps == "spiral":
        angle = np.linspace(0, 3, n)
        inc[:, 0], inc[:, 1] = 2 * np.cos(angle) * angle, 2 * np.sin(angle) * angle
        inc[:, 2] = 0.5
    else:
        inc[:, :3] = [3.5, -1.2, 0.3]
    inc[:, 3] = 1e-5
    if steps == "padded":
        inc[20:] = 0
    keys = np.rint(inc / pdg._STEP_QUANTA).astype(np.int64)
    grid = pdg._GridAxes(pos)
    assert grid.useful
    ref = _direct_products(pos, b0, t2, inc)
    W = grid.products(b0, t2, inc)
    assert W.shape == (pdg._ANCHOR, n_v)
    assert np.abs(W.numpy() - ref).max() < 2e-6
    # what the pass uses: equal steps by doubling, other steps from the tables
    used = pdg._step_products(pos, b0, t2, inc, keys, grid)
    assert np.abs(used.numpy() - ref).max() < (2e-5 if steps == "equal" else 2e-6)
    general = pdg._step_products(pos, b0, t2, inc, keys, None)
    assert np.abs(general.numpy() - ref).max() < 2e-5
    grid.values[0] = grid.values[0] * 1.01  # negative control: a table 1 % off
    assert np.abs(grid.products(b0, t2, inc).numpy() - ref).max() > 1e-2


def test_spiral_grouped_signal_equals_per_voxel_signal(tmp_path, monkeypatch) -> None:
    """A spiral (new steps every sample: the grid tables) equals the per-voxel direct path."""
    sys.path.insert(0, str(SCRIPTS))
    import pdg_suite

    pdg_suite.CASES["spiral"](24).write(str(tmp_path / "spiral.seq"))
    seq = mr0.Sequence.import_file(tmp_path / "spiral.seq")
    spec, _ = write_phantom("brain", tmp_path / "brain", size=24)
    data = mr0.TissueDict.load(spec).build()
    graph = mr0.compute_graph(seq, data, 200, 1e-4)
    made: list[int] = []
    original = pdg._GridAxes.products

    def counting(self, *args):  # type: ignore[no-untyped-def]
        made.append(1)
        return original(self, *args)

    monkeypatch.setattr(pdg._GridAxes, "products", counting)
    grouped = _signal(seq, data, graph)
    assert made  # the grid tables did run
    monkeypatch.setattr(pdg, "_MAX_GROUPS", 0)
    exact = _signal(seq, data, graph)
    assert _nrmse(grouped, exact) < 2e-6
    assert float(exact.abs().max()) > 1.0

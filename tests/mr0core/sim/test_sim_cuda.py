"""CPU and CUDA give the same signal (skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import CORPUS

import mr0core as mr0

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("name", ["write_gre", "write_tse", "write_epi"])
def test_pdg_cuda_equals_cpu(name: str) -> None:
    seq = mr0.Sequence.import_file(CORPUS / f"{name}.seq")
    data = mr0.util.load_phantom((32, 32), url="builtin:brain").build()
    graph = mr0.compute_graph(seq, data)
    cpu = mr0.execute_graph(graph, seq, data, print_progress=False)
    gpu = mr0.execute_graph(graph, seq.cuda(), data.cuda(), print_progress=False)
    assert gpu.device.type == "cuda"
    err = float((gpu.cpu() - cpu).norm() / cpu.norm())
    assert err < 1e-4


def test_isochromat_cuda_equals_cpu() -> None:
    seq = mr0.Sequence.import_file(CORPUS / "write_gre.seq")
    data = mr0.util.load_phantom((16, 16), url="builtin:brain").build(voxel_shape="box")
    cpu = mr0.isochromat_sim(seq, data, 64, spin_dist="r2", print_progress=False)
    gpu = mr0.isochromat_sim(seq.cuda(), data.cuda(), 64, spin_dist="r2", print_progress=False)
    assert gpu.device.type == "cuda"
    assert float((gpu.cpu() - cpu).norm() / cpu.norm()) < 1e-4


def test_simulate_job_on_cuda_returns_cpu_signal() -> None:
    from mr0core.jobs import SimSettings, load_job_phantom, run_simulation

    seq = mr0.Sequence.import_file(CORPUS / "write_gre.seq")
    phantom, _ = load_job_phantom("brain", 32)
    gpu = run_simulation(seq, phantom, SimSettings(), device="cuda", progress=False)
    cpu = run_simulation(seq, phantom, SimSettings(), device="cpu", progress=False)
    assert gpu.device.type == "cpu"
    assert float((gpu - cpu).norm() / cpu.norm()) < 1e-4
    assert torch.isfinite(gpu).all()

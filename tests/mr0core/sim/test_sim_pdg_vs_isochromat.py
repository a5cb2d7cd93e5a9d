"""PDG against the isochromat simulator on small 2-D imaging sequences (the independent check).

A 16 × 16 slice of the built-in brain with box voxels (the voxel shape both simulators model
exactly), T1, T2, T2′, B0, B1 and diffusion from the phantom. The isochromat simulation uses
2048 R2 quasi-random spins per voxel; its own sampling error is well under 1% here.
"""

from __future__ import annotations

import pytest
import torch
from imaging_sequences import flash as _flash
from imaging_sequences import tse as _tse

import mr0core as mr0
from mr0core.sim import compute_graph, execute_graph, isochromat_sim

N = 16
SPINS = 2048


@pytest.fixture(scope="module")
def data() -> mr0.SimData:
    return mr0.util.load_phantom((N, N), url="builtin:brain").build(voxel_shape="box")


def _nrmse(signal: torch.Tensor, reference: torch.Tensor) -> float:
    """Root-mean-square error relative to the reference's root-mean-square."""
    return float((signal - reference).norm() / reference.norm())


@pytest.mark.parametrize("make_seq", [_flash, _tse], ids=["flash", "tse"])
def test_pdg_matches_isochromat(data: mr0.SimData, make_seq: object) -> None:
    seq = make_seq()  # type: ignore[operator]
    assert data.voxel_count > 100
    graph = compute_graph(seq, data, 5000, 1e-9)
    pdg = execute_graph(graph, seq, data, 1e-5, 1e-5, print_progress=False)
    iso = isochromat_sim(seq, data, SPINS, spin_dist="r2", print_progress=False)
    assert pdg.shape == iso.shape == (N * N, 1)
    assert _nrmse(pdg, iso) < 0.02
    # at default accuracy the PDG stays within the same bound
    fast = execute_graph(compute_graph(seq, data), seq, data, print_progress=False)
    assert _nrmse(fast, iso) < 0.02


@pytest.mark.parametrize("make_seq", [_flash, _tse], ids=["flash", "tse"])
def test_comparison_detects_a_10_percent_b1_error(data: mr0.SimData, make_seq: object) -> None:
    """The 2% bound is tight enough to catch a physics error in one simulator only."""
    seq = make_seq()  # type: ignore[operator]
    iso = isochromat_sim(seq, data, SPINS, spin_dist="r2", print_progress=False)
    phantom = mr0.util.load_phantom((N, N), url="builtin:brain")
    phantom.B1 = phantom.B1 * 0.9
    wrong = phantom.build(voxel_shape="box")
    pdg = execute_graph(compute_graph(seq, wrong, 5000, 1e-9), seq, wrong, 1e-5, 1e-5,
                        print_progress=False)  # fmt: skip
    assert _nrmse(pdg, iso) > 0.04

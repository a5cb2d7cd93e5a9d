"""The pre-pass's state selection: which states the main pass may simulate, and what that costs."""

from __future__ import annotations

import mrzero_sequences as ms
import numpy as np
import pytest
import torch

import mr0core as mr0
from mr0core.sim import graph as graph_module


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().pow(2).sum().sqrt() / ref.abs().pow(2).sum().sqrt())


@pytest.fixture(scope="module")
def dream(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[mr0.Sequence, mr0.SimData, torch.Tensor]:
    """DREAM (STE first) on the built-in brain at 32², with its converged signal."""
    path = tmp_path_factory.mktemp("dream") / "dream.seq"
    ms.build_dream(32, "STE").write(str(path))
    seq = mr0.Sequence.import_file(path)
    data = mr0.util.load_phantom((32, 32), url="builtin:brain").build()
    graph = mr0.compute_graph(seq, data, 5000, 1e-9)
    return seq, data, mr0.execute_graph(graph, seq, data, 1e-7, 1e-7, print_progress=False)


def _error(dream: tuple, accuracy: float = 1e-3) -> float:
    seq, data, converged = dream
    graph = mr0.compute_graph(seq, data)  # 200 states per kind, as MR-zero's default
    signal = mr0.execute_graph(graph, seq, data, accuracy, accuracy, print_progress=False)
    return _nrmse(signal, converged)


def test_the_cap_keeps_the_states_that_will_be_heard(dream) -> None:
    """More candidates than the cap, ranked by latent signal: the capped graph stays accurate."""
    error = _error(dream)
    assert error < 0.0015  # measured 0.064 % (0.23 % with the cap applied to |m|)


def test_ranking_candidates_by_latent_matters(dream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with as many candidates as the cap (largest |m| kept) the error grows."""
    error = _error(dream)
    monkeypatch.setattr(graph_module, "PREPASS_OVERSAMPLE", 1)
    assert _error(dream) > 1.5 * error


def test_no_more_than_the_cap_is_eligible(dream) -> None:
    seq, data, _ = dream
    graph = mr0.compute_graph(seq, data, 40, 1e-4)
    largest = 0
    for rep in graph:
        largest = max(largest, len(rep.plus_tau))
        assert int(np.count_nonzero(rep.plus_latent)) <= 40
        assert int(np.count_nonzero(rep.z_latent)) <= 40
        # the relaxed state is never cut: its latent stays whatever the ranking
        assert (rep.z_latent[0] > 0) == (rep.z_latent_unnormalized[0] > 0)
    assert largest > 40  # the pre-pass did follow more candidates than the cap

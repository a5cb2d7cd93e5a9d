"""The compiled pre-pass (numba, ``mr0core/sim/prepass_kernel.py``) against its numpy definition.

Both must give the same graph bit for bit: same states in the same order, same magnitudes, edges,
defining parents and latent/emitted estimates, on every class of the benchmark suite and on
corpus sequences. The comparison's negative control: graphs that differ only by a threshold
(one state more or less) are told apart.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pdg_cases
import pytest
from conftest import CORPUS

import mr0core as mr0
from mr0core.sim import graph as graph_mod

N = 32
ARRAYS = ("plus_k", "plus_tau", "plus_mags", "z_k", "z_tau", "z_mags", "plus_def", "z_def",
          "plus_emitted", "plus_latent", "z_latent")  # fmt: skip
CORPUS_CASES = ("write_gre.seq", "write_haste.seq", "write_epi_se.seq", "simple_mprage150.seq")


@pytest.fixture
def numpy_prepass() -> Iterator[None]:
    """Run the pre-pass on its numpy definitions for the duration of the test."""
    saved = graph_mod._KERNELS
    graph_mod._KERNELS = False
    yield
    graph_mod._KERNELS = saved


def differences(a: mr0.Graph, b: mr0.Graph) -> list[str]:
    """Where two graphs differ (empty: identical bit for bit)."""
    if len(a) != len(b):
        return [f"{len(a)} vs {len(b)} repetitions"]
    out = []
    for r, (x, y) in enumerate(zip(a, b, strict=True)):
        for name in ARRAYS:
            u, v = getattr(x, name), getattr(y, name)
            if u.shape != v.shape or not np.array_equal(u, v):
                out.append(f"rep {r}: {name}")
        for kind in x.edges:
            if not all(np.array_equal(p, q) for p, q in zip(x.edges[kind], y.edges[kind],
                                                           strict=True)):  # fmt: skip
                out.append(f"rep {r}: edges of kind {kind}")
    return out


def both(seq: mr0.Sequence, data: mr0.SimData, states: int = 200, mag: float = 1e-4):
    compiled = mr0.compute_graph(seq, data, states, mag)
    saved = graph_mod._KERNELS
    graph_mod._KERNELS = False
    try:
        reference = mr0.compute_graph(seq, data, states, mag)
    finally:
        graph_mod._KERNELS = saved
    return compiled, reference


def test_the_kernel_is_used() -> None:
    mr0.compute_graph(pdg_cases.suite_seq("flash_spoiled", N), pdg_cases.brain(N), 200, 1e-4)
    assert graph_mod._kernels() is not None, "numba is a dependency: the kernel must load"


@pytest.mark.parametrize("name", sorted(pdg_cases.CASES))
def test_suite_graphs_identical(name: str) -> None:
    compiled, reference = both(pdg_cases.suite_seq(name, N), pdg_cases.brain(N))
    assert compiled.state_counts[0] > 0
    assert differences(compiled, reference) == []


@pytest.mark.parametrize("name", CORPUS_CASES)
def test_corpus_graphs_identical(name: str) -> None:
    seq = mr0.Sequence.import_file(CORPUS / name)
    compiled, reference = both(seq, pdg_cases.brain(N))
    assert differences(compiled, reference) == []


def test_small_caps_identical() -> None:
    """With a cap of 3 states the selection and the relaxed state's place decide everything."""
    compiled, reference = both(
        pdg_cases.suite_seq("tse_variable", N), pdg_cases.brain(N), states=3, mag=1e-3
    )
    assert max(len(rg.plus_tau) for rg in compiled) == 3 * graph_mod.PREPASS_OVERSAMPLE
    assert differences(compiled, reference) == []


def test_comparison_sees_a_difference(numpy_prepass: None) -> None:
    """Negative control: a smaller state cap gives a graph the check tells apart."""
    seq = pdg_cases.suite_seq("flash_spoiled", N)
    a = mr0.compute_graph(seq, pdg_cases.brain(N), 200, 1e-4)
    b = mr0.compute_graph(seq, pdg_cases.brain(N), 20, 1e-4)
    assert differences(a, b) != []
    assert differences(a, mr0.compute_graph(seq, pdg_cases.brain(N), 200, 1e-4)) == []


def test_b_values_identical() -> None:
    """The compiled b-values equal their numpy definition bit for bit (events with and without
    gradients, 1 to 40 events, 1 to 50 states); the definition matches a direct sum."""
    kernels = graph_mod._kernels()
    rng = np.random.default_rng(1)
    for _ in range(100):
        n_e, n = int(rng.integers(1, 40)), int(rng.integers(1, 50))
        g = rng.normal(0, 500, (n_e, 3)) * (rng.random((n_e, 1)) < 0.7)
        dt = rng.uniform(1e-6, 1e-2, n_e)
        k0 = rng.normal(0, 300, (n, 3))
        want = graph_mod._b_values_numpy(k0, g, dt)
        assert np.array_equal(kernels.b_values(k0, g, dt), want)
    # the definition against b = 4π² Σ_e ∫ |k0 + K_e + g_e s|² ds over each event, midpoint rule
    k_start = k0[:, None, :] + np.concatenate([np.zeros((1, 3)), np.cumsum(g, 0)[:-1]])[None]
    s = (np.arange(2000) + 0.5) / 2000
    path = k_start[:, :, None, :] + g[None, :, None, :] * s[None, None, :, None]
    direct = 4 * np.pi**2 * ((path**2).sum(-1).mean(-1) * dt[None]).sum(1)
    np.testing.assert_allclose(want, direct, rtol=1e-6)

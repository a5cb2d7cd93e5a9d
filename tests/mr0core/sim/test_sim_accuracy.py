"""Error-controlled simulation: ``util.simulate(accuracy=a)`` and ``mr0 simulate --accuracy a``."""

from __future__ import annotations

import math
import sys
from dataclasses import replace

import pytest
import torch
from conftest import SCRIPTS

import mr0core as mr0
from mr0core.cli import build_parser, settings_from_args
from mr0core.jobs import SimSettings, simulate_signal
from mr0core.sim import accuracy_settings
from mr0core.sim.accuracy import REFINE_THRESHOLD_FACTOR, cap_loss

sys.path.insert(0, str(SCRIPTS))
import pdg_suite as suite

VOXEL = {"PD": 1.0, "T1": 0.83, "T2": 0.07, "T2dash": 0.05, "D": 0.8, "B0": 0.0, "B1": 1.0,
         "voxel_size": 0.002, "voxel_shape": "box"}  # fmt: skip


def _nrmse(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).abs().pow(2).sum().sqrt() / ref.abs().pow(2).sum().sqrt())


@pytest.fixture(scope="module")
def bssfp(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[mr0.Sequence, mr0.SimData, torch.Tensor]:
    """The suite's bSSFP (16 lines) on one white-matter voxel, with its converged signal."""
    path = suite.write_case("bssfp", 16, tmp_path_factory.mktemp("acc") / "bssfp.seq")
    seq = mr0.Sequence.import_file(path)
    data = mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **VOXEL).build()
    graph = mr0.compute_graph(seq, data, 5000, 1e-10)
    return seq, data, mr0.execute_graph(graph, seq, data, 1e-7, 1e-7, print_progress=False)


@pytest.mark.parametrize("accuracy", [1e-2, 1e-3])
def test_simulate_stays_within_the_accuracy(bssfp, accuracy: float) -> None:
    seq, data, converged = bssfp
    signal, _ = mr0.util.simulate(seq, data, accuracy=accuracy)
    assert _nrmse(signal, converged) <= accuracy


def test_thresholds_equal_to_the_accuracy_miss_it(bssfp) -> None:
    """Negative control: MR-zero's meaning (both thresholds = accuracy) misses 1 % here."""
    seq, data, converged = bssfp
    graph = mr0.compute_graph(seq, data, 200, 1e-4)
    signal = mr0.execute_graph(graph, seq, data, 1e-2, 1e-2, print_progress=False)
    assert _nrmse(signal, converged) > 1e-2


def test_settings_tighten_with_the_accuracy() -> None:
    loose, tight = accuracy_settings(1e-2), accuracy_settings(1e-3)
    assert loose == (2000, pytest.approx(1e-6), pytest.approx(1e-4), pytest.approx(1e-4))
    assert tight[0] > loose[0]
    assert all(t < lo for t, lo in zip(tight[1:], loose[1:], strict=True))


@pytest.mark.parametrize("bad", [0.0, -1e-3, 0.5, math.nan, math.inf])
def test_accuracy_outside_the_range_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="accuracy must be"):
        accuracy_settings(bad)


def test_cli_accuracy_sets_all_four_and_options_override() -> None:
    parser = build_parser()
    args = parser.parse_args(["simulate", "x.seq", "--out", "o.h5", "--accuracy", "1e-2"])
    assert settings_from_args(args) == SimSettings.for_accuracy(1e-2)
    args = parser.parse_args(["simulate", "x.seq", "--out", "o.h5", "--accuracy", "1e-2",
                              "--max-states", "300", "--min-latent", "0.05"])  # fmt: skip
    settings = settings_from_args(args)
    assert settings.max_states == 300
    assert settings.min_latent == 0.05
    assert settings.min_emitted == pytest.approx(1e-4)  # still from --accuracy


def test_for_accuracy_refuses_unknown_overrides() -> None:
    with pytest.raises(TypeError, match="unknown settings"):
        SimSettings.for_accuracy(1e-2, max_state=3)


@pytest.fixture(scope="module")
def ste(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[mr0.Sequence, mr0.SimData, torch.Tensor]:
    """The suite's 3-pulse STE (16 lines, 48 pulses) on one voxel, with its converged signal.

    Three 90° pulses per TR keep very many weak pathways alive: a small state cap cuts off
    states that are heard.
    """
    path = suite.write_case("ste_3pulse", 16, tmp_path_factory.mktemp("acc") / "ste.seq")
    seq = mr0.Sequence.import_file(path)
    data = mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]], **VOXEL).build()
    graph = mr0.compute_graph(seq, data, 5000, 1e-10)
    return seq, data, mr0.execute_graph(graph, seq, data, 1e-7, 1e-7, print_progress=False)


def test_cap_loss_counts_the_heard_states_the_cap_cut_off(ste, bssfp) -> None:
    seq, data, _ = ste
    small, large = (mr0.compute_graph(seq, data, n, 1e-7) for n in (16, 2048))
    assert cap_loss(small) > 1e-3
    assert cap_loss(large) < cap_loss(small) / 10
    # bSSFP on one voxel: 2000 states hold every state, the cap cuts nothing off
    assert cap_loss(mr0.compute_graph(bssfp[0], bssfp[1], 2000, 1e-6)) == 0.0
    # what is cut is what the main pass will not see: no eligible state beyond the cap
    for rg in small:
        assert (rg.plus_latent > 0).sum() <= 16
        assert (rg.z_latent > 0).sum() <= 16
    assert sum(rg.dropped_latent > 0 for rg in small) > len(small) // 2


def test_simulate_signal_refines_where_the_cap_cuts_off_heard_states(ste) -> None:
    seq, data, converged = ste
    given = SimSettings(max_states=128, min_state_mag=1e-7, min_emitted=1e-5, min_latent=1e-5)
    plain = simulate_signal(seq, data, given)
    used: list[SimSettings] = []
    with pytest.warns(UserWarning, match="accuracy 0.001 may not be met: at 1024 states"):
        refined = simulate_signal(seq, data, replace(given, accuracy=1e-3), on_refine=used.append)
    assert [u.max_states for u in used] == [256, 512, 1024]
    assert used[-1].min_latent == pytest.approx(1e-5 * REFINE_THRESHOLD_FACTOR**3)
    assert _nrmse(refined, converged) <= 1e-3
    assert _nrmse(plain, converged) > 5e-3  # negative control: the same start, not refined


def test_no_refinement_where_the_cap_keeps_every_heard_state(bssfp) -> None:
    seq, data, _ = bssfp
    used: list[SimSettings] = []
    simulate_signal(seq, data, SimSettings.for_accuracy(1e-3), on_refine=used.append)
    assert used == []


def test_overridden_settings_are_not_refined() -> None:
    assert SimSettings.for_accuracy(1e-3).accuracy == 1e-3
    assert SimSettings.for_accuracy(1e-3, max_states=300).accuracy is None
    with pytest.raises(ValueError, match="accuracy must be"):
        SimSettings(accuracy=0.5)


def test_refinement_stops_where_memory_would_not_hold_it(ste, monkeypatch) -> None:
    import mr0core.sim.memory as memory

    seq, data, _ = ste
    monkeypatch.setattr(memory, "host_memory_available", lambda: 1 << 20)  # 1 MiB free
    used: list[SimSettings] = []
    given = SimSettings(max_states=16, min_state_mag=1e-7, min_emitted=1e-5, min_latent=1e-5,
                        accuracy=1e-3)  # fmt: skip
    with pytest.warns(UserWarning, match=r"32 states \(about .* GiB in one piece\) would not"):
        signal = simulate_signal(seq, data, given, on_refine=used.append)
    assert used == []  # not refined: the signal is the given settings'
    plain = simulate_signal(seq, data, replace(given, accuracy=None))
    assert torch.equal(signal, plain)


def test_a_refined_main_pass_too_large_for_memory_runs_in_voxel_blocks(monkeypatch) -> None:
    """Blocks of voxels add up to the one-piece signal (negative control: one block alone)."""
    from pdg_cases import brain, suite_seq

    import mr0core.jobs as jobs
    import mr0core.sim.memory as memory

    seq, data = suite_seq("ste_3pulse", 16), brain(16)
    given = SimSettings(max_states=16, min_state_mag=1e-7, min_emitted=1e-5, min_latent=1e-5,
                        accuracy=1e-3)  # fmt: skip
    used: list[SimSettings] = []
    whole = simulate_signal(seq, data, given, on_refine=used.append)
    assert used  # the cap of 16 cuts off heard states here
    blocks: list[torch.Tensor] = []
    execute = jobs.execute_graph

    def counting(graph, seq, part, *args, **kwargs):  # type: ignore[no-untyped-def]
        blocks.append(execute(graph, seq, part, *args, **kwargs))
        return blocks[-1]

    # main pass 2 GB, 1 GB available, graph 0: room 0.8 GB, three blocks
    monkeypatch.setattr(memory, "main_pass_bytes", lambda load: 2 * 10**9)
    monkeypatch.setattr(memory, "graph_bytes", lambda load: 0)
    monkeypatch.setattr(memory, "host_memory_available", lambda: 10**9)
    monkeypatch.setattr(jobs, "execute_graph", counting)
    counts: list[tuple[int, int]] = []
    blocked = simulate_signal(seq, data, given, on_progress=lambda d, t: counts.append((d, t)))
    assert len(blocks) == 3
    assert counts[-1][0] == counts[-1][1]  # one count over the three blocks, to its end
    assert [d for d, _ in counts] == sorted(d for d, _ in counts)
    assert _nrmse(blocked, whole) < 1e-5
    assert _nrmse(blocks[0], whole) > 0.1  # negative control: one block is not the signal


def test_execute_blocks_adds_up_to_the_whole_main_pass_and_refuses_bad_counts() -> None:
    """``execute_blocks`` over 3 blocks = one piece (negative control: its first block alone)."""
    from pdg_cases import brain, suite_seq

    from mr0core.jobs import execute_blocks

    seq, data = suite_seq("flash_spoiled", 16), brain(16)
    graph = mr0.compute_graph(seq, data, 200, 1e-4)
    whole = execute_blocks(graph, seq, data, 1e-3, 1e-3)
    three = execute_blocks(graph, seq, data, 1e-3, 1e-3, 3)
    assert _nrmse(three, whole) < 1e-5
    first = data.select(torch.arange(data.voxel_count).tensor_split(3)[0])
    assert _nrmse(execute_blocks(graph, seq, first, 1e-3, 1e-3), whole) > 0.1
    for bad in (0, data.voxel_count + 1):
        with pytest.raises(ValueError, match="blocks must be"):
            execute_blocks(graph, seq, data, 1e-3, 1e-3, bad)

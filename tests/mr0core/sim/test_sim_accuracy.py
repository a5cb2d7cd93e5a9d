"""Error-controlled simulation: ``util.simulate(accuracy=a)`` and ``mr0 simulate --accuracy a``."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from conftest import SCRIPTS

import mr0core as mr0
from mr0core.cli import build_parser, settings_from_args
from mr0core.jobs import SimSettings
from mr0core.sim import accuracy_settings

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

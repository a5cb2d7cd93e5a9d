"""The worker job functions: registry, parameter checks, and the simulation against mr0core."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mr0core.jobs import SimSettings, build_demo_flash, load_job_phantom, run_simulation
from mr0core.sequence import Sequence
from scheduler.functions import FUNCTIONS, is_out_of_memory, run_function


def test_registry_and_unknown_names(tmp_path):
    assert {"noop", "simulate"} <= set(FUNCTIONS)
    assert run_function("noop", {}, "cpu", tmp_path) == {"device": "cpu", "slept_s": 0.0}
    with pytest.raises(ValueError, match=r"unknown job function 'os\.system'"):
        run_function("os.system", {}, "cpu", tmp_path)
    with pytest.raises(ValueError, match="JSON object"):
        run_function("noop", [], "cpu", tmp_path)  # type: ignore[arg-type]


def test_simulate_equals_the_library(tmp_path):
    out = run_function("simulate", {"demo_flash": 16, "phantom": "brain", "size": 16},
                       "cpu", tmp_path)  # fmt: skip
    got = np.load(tmp_path / "signal.npy")
    phantom, _ = load_job_phantom("brain", 16, 1)
    seq = Sequence.from_pypulseq(build_demo_flash(16))
    ref = run_simulation(seq, phantom, SimSettings(), progress=False)
    assert out["samples"] == ref.shape[0] == got.shape[0]
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-5, atol=1e-6 * np.abs(ref.numpy()).max())


@pytest.mark.parametrize(
    ("params", "message"),
    [({"size": 10**6}, "size must lie"), ({"coils": -1}, "coils must lie"),
     ({"phantom": "../x"}, "phantom must be one of"), ({"accuracy": "high"}, "accuracy must be"),
     ({"seq": 5}, "seq must be")],
)  # fmt: skip
def test_simulate_refuses_bad_parameters(tmp_path, params, message):
    with pytest.raises(ValueError, match=message):
        run_function("simulate", params, "cpu", tmp_path)


def test_out_of_memory_detection():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

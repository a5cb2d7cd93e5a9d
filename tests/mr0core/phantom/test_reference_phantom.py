"""Our phantoms against MR-zero's readers (black box; runs only where mrzerocore is installed).

MR-zero's ``TissueDict.load`` is an independent reader of the NIfTI phantom specification: a
phantom written by ``mr0 phantom brain`` must load there unchanged, with the same maps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

import mr0core as mr0
from mr0core.cli import main

pytestmark = pytest.mark.reference

MAT = SHARED / "mr0-compat" / "numerical_brain_cropped.mat"


def _mz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import MRzeroCore as mz
    return mz


def test_load_mat_equals_mr_zero() -> None:
    if not MAT.is_file():
        pytest.skip("../shared/mr0-compat is not available")
    mz = _mz()
    ref = mz.VoxelGridPhantom.load_mat(str(MAT))
    ours = mr0.VoxelGridPhantom.load_mat(MAT)
    for name in ("PD", "T1", "T2", "T2dash", "D", "B0", "B1", "coil_sens"):
        np.testing.assert_array_equal(getattr(ours, name).numpy(), getattr(ref, name).numpy(), name)
    np.testing.assert_allclose(ours.size.numpy(), ref.size.numpy())
    ref_data = ref.build()
    our_data = ours.build()
    assert our_data.voxel_count == ref_data.PD.shape[0]
    np.testing.assert_allclose(our_data.voxel_pos.numpy(), ref_data.voxel_pos.numpy(), atol=1e-7)
    np.testing.assert_allclose(our_data.nyquist.numpy(), ref_data.nyquist.numpy(), rtol=1e-6)


@pytest.mark.parametrize(("kind", "coils"), [("brain", 1), ("brain", 4), ("shepp-logan", 1)])
def test_written_phantom_loads_unchanged_in_mr_zero(tmp_path: Path, kind: str, coils: int) -> None:
    mz = _mz()
    out = tmp_path / kind
    args = ["phantom", kind, "--size", "32", "--slices", "2", "--coils", str(coils)]
    assert main([*args, "--out", str(out)]) == 0
    (json_path,) = out.glob("*.json")
    ref = mz.TissueDict.load(str(json_path))
    ours = mr0.TissueDict.load(json_path)
    assert sorted(ref) == sorted(ours)
    for name, t in ours.items():
        r = ref[name]
        for attr in ("PD", "T1", "T2", "T2dash", "D", "B0"):
            np.testing.assert_allclose(
                getattr(r, attr).numpy(), getattr(t, attr).numpy(), rtol=1e-6, err_msg=attr
            )
        np.testing.assert_allclose(r.B1.numpy(), t.B1.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(r.coil_sens.numpy(), t.coil_sens.numpy(), rtol=1e-5, atol=1e-6)
    ref_data = ref.build()
    our_data = ours.build()
    assert our_data.voxel_count == ref_data.PD.shape[0]
    np.testing.assert_allclose(our_data.PD.sum().item(), ref_data.PD.sum().item(), rtol=1e-5)

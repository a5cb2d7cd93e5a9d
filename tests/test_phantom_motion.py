"""MR-zero's motion attributes are refused, not ignored, until motion is simulated."""

from __future__ import annotations

import re

import pytest
import torch

import mr0core as mr0


def _motion(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(3).expand(len(t), 3, 3), torch.zeros(len(t), 3)


def test_motion_is_refused_not_ignored() -> None:
    grid = mr0.util.load_phantom(size=(8, 8), url="builtin:brain")
    data = grid.build()
    custom = mr0.CustomVoxelPhantom([[0.0, 0.0, 0.0]])
    for target in (grid, data, custom):
        assert target.phantom_motion is None
        assert target.voxel_motion is None
        target.phantom_motion = None  # None is fine
        for name in ("phantom_motion", "voxel_motion"):
            message = re.escape(f"{type(target).__name__}.{name}: motion is not simulated")
            with pytest.raises(NotImplementedError, match=message):
                setattr(target, name, _motion)
            assert getattr(target, name) is None
    fields = ("PD", "T1", "T2", "T2dash", "D", "B0", "B1", "coil_sens", "size", "affine",
              "voxel_pos", "nyquist", "dephasing_func")  # fmt: skip
    with pytest.raises(NotImplementedError, match=re.escape("SimData.voxel_motion")):
        mr0.SimData(**{k: getattr(data, k) for k in fields}, voxel_motion=_motion)
    with pytest.raises(NotImplementedError, match=re.escape("VoxelGridPhantom.phantom_motion")):
        mr0.VoxelGridPhantom(grid.PD, grid.T1, grid.T2, grid.T2dash, grid.D, grid.B0, grid.B1,
                             grid.coil_sens, grid.size, phantom_motion=_motion)  # fmt: skip

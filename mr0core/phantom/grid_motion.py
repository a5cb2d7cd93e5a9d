"""A grid phantom's ``voxel_motion`` carried through ``build``, ``slices`` and ``interpolate``.

See :mod:`mr0core.sim.motion` for the motion interface and its conventions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence as SequenceABC
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mr0core.sim.motion import MotionError, MotionFunction


class GridVoxelMotion:
    """A grid phantom's ``voxel_motion`` carried through ``build``, ``slices``, ``interpolate``.

    The user's function returns positions ``[N, x·y·z, 3]`` (m) of every voxel of the grid it was
    written for (flattened like ``PD.flatten()``). This wrapper keeps that function and the chain of
    resamplings since: the displacement field (position minus grid position) is resampled like the
    maps (``slices``: the kept z planes; ``interpolate``: trilinear, as the maps), then added to the
    new grid's positions. ``build`` selects the voxels it keeps. A function that already returns
    the built voxels' positions ``[N, kept voxels, 3]`` is passed through unchanged.

    Parameters
    ----------
    fn
        The user's function (or another :class:`GridVoxelMotion`).
    shape, size
        The grid ``fn`` describes: shape ``(x, y, z)`` and extent ``[3]`` m.
    """

    def __init__(self, fn: MotionFunction, shape: SequenceABC[int], size: torch.Tensor) -> None:
        self.fn = fn
        self.src_shape = tuple(int(n) for n in shape)
        self.src_size = size.detach().clone()
        self.steps: list[tuple[str, Any]] = []  # ("slices", index) / ("interpolate", shape)
        self.shape = self.src_shape
        self.size = self.src_size.clone()
        self.mask: torch.Tensor | None = None  # flat indices of the built voxels
        self.device: torch.device | None = None

    def _copy(self) -> GridVoxelMotion:
        out = GridVoxelMotion(self.fn, self.src_shape, self.src_size)
        out.steps = list(self.steps)
        out.shape, out.size, out.mask, out.device = self.shape, self.size, self.mask, self.device
        return out

    @staticmethod
    def wrap(fn: MotionFunction, shape: SequenceABC[int], size: torch.Tensor) -> GridVoxelMotion:
        """Return ``fn`` as a :class:`GridVoxelMotion` of the grid ``shape``/``size``."""
        if isinstance(fn, GridVoxelMotion):
            return fn
        return GridVoxelMotion(fn, shape, size)

    def sliced(self, index: SequenceABC[int], size: torch.Tensor) -> GridVoxelMotion:
        """Return the motion of the phantom with only the z planes ``index`` (extent ``size``)."""
        out = self._copy()
        out.steps.append(("slices", [int(i) for i in index]))
        out.shape = (*self.shape[:2], len(index))
        out.size = size.detach().clone()
        return out

    def interpolated(self, shape: SequenceABC[int]) -> GridVoxelMotion:
        """Return the motion of the phantom resampled to ``shape`` (trilinear, extent unchanged)."""
        out = self._copy()
        out.steps.append(("interpolate", tuple(int(n) for n in shape)))
        out.shape = tuple(int(n) for n in shape)
        return out

    def built(self, mask: torch.Tensor) -> GridVoxelMotion:
        """Return the motion of the voxels that ``build`` keeps (``mask`` ``[x, y, z]`` bool)."""
        out = self._copy()
        out.mask = torch.flatten(mask).nonzero().flatten().cpu()
        return out

    def built_from(self) -> GridVoxelMotion:
        """Return the motion of the whole grid this built motion selected from."""
        out = self._copy()
        out.mask = None
        return out

    def moved(self, device: torch.device | str) -> GridVoxelMotion:
        """Return the same motion, its positions returned on ``device``."""
        out = self._copy()
        out.device = torch.device(device)
        return out

    def __call__(self, time: torch.Tensor) -> torch.Tensor:
        """Return positions ``[N, voxels, 3]`` in m (the built voxels after ``build``)."""
        from .voxel_grid import grid_positions  # (voxel_grid imports this module)

        raw = self.fn(time)
        n = int(time.shape[0])
        n_src = math.prod(self.src_shape)
        t = raw if isinstance(raw, torch.Tensor) else torch.as_tensor(np.asarray(raw))
        if (
            not self.steps
            and self.mask is not None
            and t.dim() == 3
            and (t.shape[1] == len(self.mask) != n_src)
        ):
            return t if self.device is None else t.to(self.device)  # already the built voxels
        if tuple(t.shape) != (n, n_src, 3):
            raise MotionError(
                f"voxel_motion(time) of a {self.src_shape} grid phantom has shape "
                f"{tuple(t.shape)}, expected {(n, n_src, 3)} (every grid voxel, flattened like PD)"
            )
        dev = t.device
        src = grid_positions(self.src_shape, self.src_size.to(dev, t.dtype)).reshape(-1, 3)
        disp = (t - src[None]).reshape(n, *self.src_shape, 3).permute(0, 4, 1, 2, 3)
        for kind, arg in self.steps:
            if kind == "slices":
                disp = disp.index_select(-1, torch.tensor(arg, device=dev))
            else:
                disp = F.interpolate(disp, size=arg, mode="trilinear", align_corners=False)
        new = grid_positions(self.shape, self.size.to(dev, t.dtype)).reshape(-1, 3)
        out = new[None] + disp.permute(0, 2, 3, 4, 1).reshape(n, -1, 3)
        if self.mask is not None:
            out = out[:, self.mask.to(dev)]
        return out if self.device is None else out.to(self.device)

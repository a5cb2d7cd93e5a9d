"""Phantoms: voxel grids, custom voxels, NIfTI phantoms and the simulation input SimData.

- :class:`VoxelGridPhantom`: maps on a Cartesian grid (and MR-zero's ``.mat``/``.npz`` loaders).
- :class:`CustomVoxelPhantom`: voxels at arbitrary positions.
- :class:`TissueDict`: the tissues of a NIfTI phantom (specification v1, :mod:`.nifti`), with
  partial-volume simulation; :meth:`TissueDict.from_maps` turns a subject's quantitative maps into
  a twin.
- :class:`SimData`: what ``build()`` returns and the simulators take.
- :mod:`.builtin`: the built-in brain (from asldro's ICBM data) and the MR Shepp–Logan phantom.
"""

from .custom_voxel import CustomVoxelPhantom
from .mapping import MappingError, parse_mapping
from .nifti import (
    NiftiMapping,
    NiftiPhantom,
    NiftiRef,
    NiftiTissue,
    PhantomError,
    PhantomSystem,
    PhantomUnits,
)
from .sim_data import SimData, VoxelShape
from .tissue_dict import TissueDict
from .voxel_grid import VoxelGridPhantom

__all__ = [
    "CustomVoxelPhantom",
    "MappingError",
    "NiftiMapping",
    "NiftiPhantom",
    "NiftiRef",
    "NiftiTissue",
    "PhantomError",
    "PhantomSystem",
    "PhantomUnits",
    "SimData",
    "TissueDict",
    "VoxelGridPhantom",
    "VoxelShape",
    "parse_mapping",
]

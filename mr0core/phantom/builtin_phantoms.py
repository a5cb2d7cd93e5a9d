"""The built-in phantoms as :class:`TissueDict` s, and writing them as NIfTI phantoms.

:mod:`mr0core.phantom.builtin` builds the maps (numpy); this module turns them into tissues that
simulate with partial volume, and into spec-conformant NIfTI phantoms (``mr0 phantom``).
"""

from __future__ import annotations

from os import PathLike, fspath
from pathlib import Path

import numpy as np
import torch

from .builtin import SegmentedPhantom, brain, shepp_logan
from .nifti import NiftiPhantom, PhantomSystem
from .tissue_dict import TissueDict
from .voxel_grid import VoxelGridPhantom

__all__ = ["PHANTOMS", "brain_tissues", "shepp_logan_tissues", "to_tissue_dict", "write_phantom"]

GYRO_1H_MHZ_T = 42.5764


def to_tissue_dict(phantom: SegmentedPhantom) -> TissueDict:
    """Turn a :class:`SegmentedPhantom` into a :class:`TissueDict` (one grid per tissue).

    Every tissue shares the field maps (dB0, B1+, receive sensitivities) and has its own constant
    T1, T2, T2′ and ADC; its PD map is its density (volume fraction × proton density).
    """
    affine = np.asarray(phantom.affine, dtype=np.float64)
    shape = next(iter(phantom.density.values())).shape
    size = torch.tensor(
        np.linalg.norm(affine[:3, :3], axis=0) * np.array(shape) / 1000.0, dtype=torch.float32
    )
    db0 = torch.from_numpy(np.ascontiguousarray(phantom.dB0, dtype=np.float32))
    b1 = torch.from_numpy(np.ascontiguousarray(phantom.B1_tx)).to(torch.complex64)
    rx = torch.from_numpy(np.ascontiguousarray(phantom.B1_rx)).to(torch.complex64)
    tissues = {}
    for name, density in phantom.density.items():
        pd = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))
        tissues[name] = VoxelGridPhantom(
            PD=pd,
            T1=float(phantom.T1[name]),
            T2=float(phantom.T2[name]),
            T2dash=float(phantom.T2dash[name]),
            D=float(phantom.ADC[name]),
            B0=db0,
            B1=b1,
            coil_sens=rx,
            size=size,
            affine=affine,
        )
    return TissueDict(tissues, PhantomSystem(GYRO_1H_MHZ_T, float(phantom.field_T)))


def brain_tissues(size: int = 64, slices: int = 1, field: str = "3T", coils: int = 1) -> TissueDict:
    """Return the built-in brain (ICBM 2009a via asldro) as tissues; see :func:`.builtin.brain`."""
    return to_tissue_dict(brain(size=size, slices=slices, field=field, coils=coils))


def shepp_logan_tissues(
    size: int = 64, slices: int = 1, field: str = "3T", coils: int = 1
) -> TissueDict:
    """Return the MR Shepp–Logan phantom (Gach et al. 2008) as tissues."""
    return to_tissue_dict(shepp_logan(size=size, slices=slices, field=field, coils=coils))


PHANTOMS = {"brain": brain_tissues, "shepp-logan": shepp_logan_tissues}
"""The built-in phantoms by name: each a function ``(size, slices, field, coils) -> tissues``."""


def write_phantom(
    kind: str,
    out_dir: str | PathLike[str],
    size: int = 64,
    slices: int = 1,
    field: str = "3T",
    coils: int = 1,
    overwrite: bool = False,
) -> tuple[Path, NiftiPhantom]:
    """Write a built-in phantom as a NIfTI phantom into ``out_dir``.

    Files: ``<name>-<field>.json`` and ``<name>.nii.gz``, ``<name>_dB0.nii.gz``, ... beside it,
    with ``<name>`` ``brain`` or ``shepp_logan``.

    Returns
    -------
    tuple
        The JSON path and the configuration written.
    """
    if kind not in PHANTOMS:
        raise ValueError(f"unknown phantom {kind!r}; choose one of {', '.join(PHANTOMS)}")
    tissues = PHANTOMS[kind](size=size, slices=slices, field=field, coils=coils)
    name = kind.replace("-", "_")
    field_label = f"{tissues.system.B0:g}T"
    out = Path(fspath(out_dir))
    json_path = out / f"{name}-{field_label}.json"
    if not overwrite:
        clash = [p for p in (json_path, out / f"{name}.nii.gz") if p.exists()]
        if clash:
            raise FileExistsError(
                f"{clash[0]} exists; choose another directory or overwrite it explicitly"
            )
    config = tissues.save(json_path)
    return json_path, config

"""``TissueDict``: a NIfTI phantom's tissues as voxel grids, with partial-volume simulation.

Loading follows the NIfTI phantom specification v1 (see :mod:`mr0core.phantom.nifti`):

- every referenced file must be a 4-D NIfTI in the JSON file's directory, and all files must share
  one grid (shape and affine); the 4th axis indexes the volumes;
- data are reoriented to RAS+ (``nibabel.as_closest_canonical``), so a file stored flipped or
  with permuted axes loads into the same orientation;
- the physical size is ``shape × voxel size`` from the affine (mm → m); voxel positions follow
  MR-zero's FFT-centred convention relative to the grid's centre voxel ``N // 2``.

``build`` simulates every tissue's voxels with that tissue's own parameters: a voxel holding 30 %
grey and 70 % white matter contributes two isochromat groups, one per tissue (partial volume).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

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
from .sim_data import SimData
from .voxel_grid import GridRecovery, VoxelGridPhantom

__all__ = ["TissueDict"]

_AFFINE_TOL_MM = 1e-3
_SCALAR_PROPS = {"T1": "T1", "T2": "T2", "T2dash": "T2'", "D": "ADC", "B0": "dB0"}


class _VolumeReader:
    """Loads and caches the NIfTI files of one phantom directory, checking the shared grid."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cache: dict[str, np.ndarray] = {}
        self.shape: tuple[int, ...] | None = None
        self.affine: np.ndarray | None = None
        self.first: str | None = None

    def volume(self, ref: NiftiRef, where: str) -> np.ndarray:
        data = self._file(ref.file_name, where)
        if ref.tissue_index >= data.shape[3]:
            raise PhantomError(
                f"{where}: index [{ref.tissue_index}] out of range, {ref.file_name} holds "
                f"{data.shape[3]} volume(s)"
            )
        return data[..., ref.tissue_index]

    def _file(self, name: str, where: str) -> np.ndarray:
        if name in self.cache:
            return self.cache[name]
        path = self.directory / name
        if not path.is_file():
            raise FileNotFoundError(f"{where}: NIfTI file {name} not found in {self.directory}")
        try:
            img = nib.load(path)
        except Exception as e:  # nibabel raises several types for corrupt files
            raise PhantomError(f"{where}: cannot read {path}: {e}") from e
        if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
            raise PhantomError(f"{where}: {name} is not a NIfTI image")
        if len(img.shape) != 4:
            raise PhantomError(
                f"{where}: {name} has {len(img.shape)}-D data {img.shape}; the specification "
                "requires 4-D (x, y, z, volume) with singleton axes where unused"
            )
        _warn_ambiguous_orientation(img, name)
        canon = nib.as_closest_canonical(img)
        data = np.asanyarray(canon.dataobj)
        if np.iscomplexobj(data):
            data = data.astype(np.complex64)
        else:
            data = np.asarray(canon.get_fdata(dtype=np.float32))
        shape, affine = data.shape[:3], np.asarray(canon.affine, dtype=np.float64)
        if self.shape is None or self.affine is None:
            self.shape, self.affine, self.first = shape, affine, name
        elif shape != self.shape:
            raise PhantomError(
                f"{where}: {name} has grid {shape}, but {self.first} has {self.shape}; all files "
                "of a phantom must share one grid"
            )
        elif not np.allclose(affine, self.affine, atol=_AFFINE_TOL_MM):
            raise PhantomError(
                f"{where}: the affine of {name} differs from that of {self.first}; all files of a "
                f"phantom must share one orientation\n{affine}\nvs\n{self.affine}"
            )
        self.cache[name] = data
        result: np.ndarray = data
        return result

    def prop(self, value: Any, where: str, like: torch.Tensor | None) -> torch.Tensor:
        """Return a property as a ``[x, y, z]`` tensor (constants need ``like`` for the shape)."""
        if isinstance(value, NiftiRef):
            return torch.from_numpy(np.ascontiguousarray(self.volume(value, where)))
        if isinstance(value, NiftiMapping):
            x = torch.from_numpy(np.ascontiguousarray(self.volume(value.file, where)))
            try:
                return parse_mapping(value.func)(x)
            except MappingError as e:
                raise PhantomError(f"{where}: {e}") from e
        assert like is not None
        return torch.full(like.shape, float(value), dtype=torch.float32)


def _warn_ambiguous_orientation(img: Any, name: str) -> None:
    hdr = img.header
    sform, scode = hdr.get_sform(coded=True)
    qform, qcode = hdr.get_qform(coded=True)
    if scode and qcode and not np.allclose(sform, qform, atol=_AFFINE_TOL_MM):
        warnings.warn(
            f"{name}: sform (code {int(scode)}) and qform (code {int(qcode)}) disagree; using the "
            "sform like nibabel. Check the orientation if images look mirrored.",
            stacklevel=4,
        )


class TissueDict(dict[str, VoxelGridPhantom]):
    """Tissues of one phantom, each a :class:`VoxelGridPhantom` on the same grid.

    ``PD`` of each tissue is its density (volume fraction times proton density). The dictionary
    can be edited freely (``tissues.pop("fat")``, ``tissues["gm"].T1 *= 1.2``) before
    :meth:`build` or :meth:`save`.

    Attributes
    ----------
    system
        The :class:`PhantomSystem` (gyromagnetic ratio, B0) the tissue values belong to.
    """

    def __init__(
        self,
        tissues: dict[str, VoxelGridPhantom] | None = None,
        system: PhantomSystem | None = None,
    ) -> None:
        super().__init__(tissues or {})
        self.system = system or PhantomSystem()

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def load(cls, path: str | PathLike[str], config: NiftiPhantom | None = None) -> TissueDict:
        """Load a NIfTI phantom.

        Parameters
        ----------
        path
            The phantom's ``.json`` file; or, with ``config``, the directory holding its NIfTIs.
        config
            An already loaded (and possibly edited) :class:`NiftiPhantom`.
        """
        p = Path(fspath(path))
        if config is None:
            config = NiftiPhantom.load(p)
            directory = p.parent
        else:
            directory = p if p.is_dir() else p.parent
        if config.reslice_to is not None:
            raise NotImplementedError(
                "NiftiPhantom.reslice_to (reslicing while loading) is not implemented; load the "
                "phantom and resample it with TissueDict.interpolate"
            )
        reader = _VolumeReader(directory)
        tissues: dict[str, VoxelGridPhantom] = {}
        for name, tissue in config.tissues.items():
            tissues[name] = _load_tissue(reader, name, tissue)
        return cls(tissues, PhantomSystem(config.system.gyro, config.system.B0))

    def save(
        self, path_to_json: str | PathLike[str], gyro: float | None = None, B0: float | None = None
    ) -> NiftiPhantom:
        """Write the tissues as a NIfTI phantom: one ``.json`` and its NIfTI files beside it.

        The phantom name (file prefix) is the JSON file's stem without a field suffix such as
        ``-3T``. Densities go to ``<name>.nii.gz``; a property that is constant over a tissue's
        voxels is written as a number, otherwise into ``<name>_<property>.nii.gz`` (``T1``,
        ``T2``, ``T2'``, ``ADC``, ``dB0``, ``B1+``, ``B1-``), identical maps shared. Files are RAS+
        with ``sform_code`` 2 and no qform, as the specification recommends.

        Parameters
        ----------
        path_to_json
            Output ``.json`` path; its directory is created if needed.
        gyro, B0
            System values in MHz/T and T; default to :attr:`system`.

        Returns
        -------
        NiftiPhantom
            The configuration that was written.
        """
        if not self:
            raise ValueError("TissueDict.save: no tissues to save")
        path = Path(fspath(path_to_json))
        if path.suffix != ".json":
            raise ValueError(f"TissueDict.save: expected a .json path, got {path}")
        first = next(iter(self.values()))
        for name, t in self.items():
            if t.shape != first.shape or not torch.allclose(t.size.cpu(), first.size.cpu()):
                raise ValueError(
                    f"tissue {name!r} has grid {t.shape} / size {t.size.tolist()}, the first "
                    f"tissue {first.shape} / {first.size.tolist()}: all tissues must share a grid"
                )
        stem = re.sub(r"-\d+(\.\d+)?T$", "", path.stem) or path.stem
        writer = _VolumeWriter(stem)
        config = NiftiPhantom(
            PhantomUnits.default(),
            PhantomSystem(
                float(self.system.gyro if gyro is None else gyro),
                float(self.system.B0 if B0 is None else B0),
            ),
            {},
        )
        for name, t in self.items():
            density = writer.add("", t.PD)
            mask = t.PD > 0
            props: dict[str, Any] = {}
            for attr, key in _SCALAR_PROPS.items():
                props[attr] = writer.prop(key, getattr(t, attr), mask)
            b1_tx: list[float | NiftiRef | NiftiMapping] = [
                writer.prop("B1+", c, mask) for c in t.B1
            ]
            b1_rx: list[float | NiftiRef | NiftiMapping] = [
                writer.prop("B1-", c, mask) for c in t.coil_sens
            ]
            config.tissues[name] = NiftiTissue(
                density=density,
                T1=props["T1"],
                T2=props["T2"],
                T2dash=props["T2dash"],
                ADC=props["D"],
                dB0=props["B0"],
                B1_tx=b1_tx,
                B1_rx=b1_rx,
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.write(path.parent, first.affine)
        config.save(path)
        return config

    @classmethod
    def from_maps(cls, directory: str | PathLike[str] | None = None, **maps: Any) -> TissueDict:
        """Build a one-tissue twin from quantitative maps; see :func:`.twin.from_maps`."""
        from .clinical import bids_subject_hint
        from .twin import from_maps

        try:
            result: TissueDict = from_maps(directory, **maps)
            return result
        except PhantomError as e:
            hint = bids_subject_hint(directory) if directory is not None else None
            if hint is None:
                raise
            raise PhantomError(f"{e}. {hint}") from e

    @classmethod
    def from_dicom(cls, folder: str | PathLike[str], **kwargs: Any) -> TissueDict:
        """Build a one-tissue twin from a DICOM folder's maps; see :func:`.clinical.from_dicom`."""
        from .clinical import from_dicom

        result: TissueDict = from_dicom(folder, **kwargs)
        return result

    @classmethod
    def from_bids(
        cls, root: str | PathLike[str], subject: str, session: str | None = None, **kwargs: Any
    ) -> TissueDict:
        """Build a one-tissue twin from a BIDS subject's maps; see :func:`.clinical.from_bids`."""
        from .clinical import from_bids

        result: TissueDict = from_bids(root, subject, session, **kwargs)
        return result

    # ------------------------------------------------------------------ transforms

    def _map(self, fn: Any) -> TissueDict:
        return TissueDict({k: fn(v) for k, v in self.items()}, self.system)

    def interpolate(self, x: int, y: int, z: int) -> TissueDict:
        """:meth:`VoxelGridPhantom.interpolate` on every tissue."""
        return self._map(lambda t: t.interpolate(x, y, z))

    def scale_fft(self, x: int, y: int, z: int) -> TissueDict:
        """:meth:`VoxelGridPhantom.scale_fft` on every tissue."""
        return self._map(lambda t: t.scale_fft(x, y, z))

    def slices(self, slices: SequenceABC[int]) -> TissueDict:
        """:meth:`VoxelGridPhantom.slices` on every tissue."""
        return self._map(lambda t: t.slices(slices))

    def mirror(self, axes: SequenceABC[int]) -> TissueDict:
        """:meth:`VoxelGridPhantom.mirror` on every tissue."""
        return self._map(lambda t: t.mirror(axes))

    def transpose_xy(self) -> TissueDict:
        """:meth:`VoxelGridPhantom.transpose_xy` on every tissue."""
        return self._map(lambda t: t.transpose_xy())

    def with_size(self, size: SequenceABC[float] | torch.Tensor) -> TissueDict:
        """:meth:`VoxelGridPhantom.with_size` on every tissue."""
        return self._map(lambda t: t.with_size(size))

    def to(self, device: torch.device | str) -> TissueDict:
        """Every tissue on ``device``."""
        return self._map(lambda t: t.to(device))

    def combine(self) -> VoxelGridPhantom:
        """Merge all tissues into one :class:`VoxelGridPhantom`.

        PD is the sum of the densities; every other property is the density-weighted mean over
        the tissues of a voxel. This loses the partial-volume behaviour (a voxel then has one T1,
        not one per tissue), but is handy for plotting and slightly faster to simulate. The
        densities are kept as ``tissue_masks``.
        """
        if not self:
            raise ValueError("TissueDict.combine: no tissues")
        tissues = list(self.values())
        pd = torch.stack([t.PD for t in tissues]).sum(0)
        safe = torch.where(pd > 0, pd, torch.ones_like(pd))

        def mean(values: list[torch.Tensor]) -> torch.Tensor:
            total = sum(
                torch.where(t.PD > 0, t.PD, torch.zeros_like(t.PD)) * torch.where(t.PD > 0, v, 0)
                for t, v in zip(tissues, values, strict=True)
            )
            return torch.where(pd > 0, total / safe, values[0])

        b1 = _broadcast_channels([t.B1 for t in tissues], "B1")
        cs = _broadcast_channels([t.coil_sens for t in tissues], "coil_sens")
        return VoxelGridPhantom(
            PD=pd,
            T1=mean([t.T1 for t in tissues]),
            T2=mean([t.T2 for t in tissues]),
            T2dash=mean([t.T2dash for t in tissues]),
            D=mean([t.D for t in tissues]),
            B0=mean([t.B0 for t in tissues]),
            B1=mean(b1),
            coil_sens=mean(cs),
            size=tissues[0].size.clone(),
            tissue_masks={k: v.PD for k, v in self.items()},
            affine=tissues[0].affine,
        )

    def build(self, PD_threshold: float = 1e-6, voxel_shape: str = "sinc") -> SimData:
        """Convert into :class:`SimData` with one entry per (voxel, tissue) pair.

        ``tissue_masks`` of the result tells which entries belong to which tissue.
        """
        if not self:
            raise ValueError("TissueDict.build: no tissues")
        names = list(self)
        parts = [self[n].build(PD_threshold, voxel_shape) for n in names]
        b1 = _broadcast_channels([p.B1 for p in parts], "B1")
        cs = _broadcast_channels([p.coil_sens for p in parts], "coil_sens")
        counts = [p.voxel_count for p in parts]
        masks = {}
        start = 0
        total = sum(counts)
        for name, n in zip(names, counts, strict=True):
            m = torch.zeros(total, dtype=torch.bool, device=parts[0].device)
            m[start : start + n] = True
            masks[name] = m
            start += n
        cat = {k: torch.cat([getattr(p, k) for p in parts]) for k in _SCALAR_PROPS}
        return SimData(
            PD=torch.cat([p.PD for p in parts]),
            **cat,
            B1=torch.cat(b1, dim=1),
            coil_sens=torch.cat(cs, dim=1),
            size=parts[0].size,
            voxel_pos=torch.cat([p.voxel_pos for p in parts]),
            nyquist=parts[0].nyquist,
            dephasing_func=parts[0].dephasing_func,
            recover_func=_TissueRecovery(
                names, counts, [p.recover_func for p in parts], self.system
            ),
            tissue_masks=masks,
            affine=parts[0].affine,
            phantom_motion=self._shared_motion(),
        )

    def _shared_motion(self) -> Any:
        """Return the tissues' common ``phantom_motion`` (they move as one subject), or None."""
        if any(t.voxel_motion is not None for t in self.values()):
            raise NotImplementedError(
                "TissueDict.build: voxel_motion of single tissues is not simulated; give the "
                "built SimData a voxel_motion, or the tissues one phantom_motion"
            )
        motions = {id(t.phantom_motion): t.phantom_motion for t in self.values()}
        if len(motions) > 1:
            raise ValueError(
                "TissueDict.build: the tissues have different phantom_motion; a subject moves as "
                "one (set the same function on every tissue)"
            )
        return next(iter(motions.values()), None)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k!r}: {v!r}" for k, v in self.items())
        return f"TissueDict({{{inner}}}, B0={self.system.B0} T)"


def _broadcast_channels(values: list[torch.Tensor], name: str) -> list[torch.Tensor]:
    """Give every tissue the same channel count (single-channel maps are repeated)."""
    n = max(v.shape[0] for v in values)
    out = []
    for v in values:
        if v.shape[0] == n:
            out.append(v)
        elif v.shape[0] == 1:
            out.append(v.expand(n, *v.shape[1:]))
        else:
            raise ValueError(f"tissues have different {name} channel counts ({v.shape[0]} vs {n})")
    return out


def _load_tissue(reader: _VolumeReader, name: str, tissue: NiftiTissue) -> VoxelGridPhantom:
    where = f'tissue "{name}"'
    density = reader.prop(tissue.density, f"{where} density", None)
    if density.is_complex():
        raise PhantomError(f"{where} density: must be real")
    values = {
        attr: reader.prop(getattr(tissue, attr), f"{where} {key}", density)
        for attr, key in (("T1", "T1"), ("T2", "T2"), ("T2dash", "T2'"), ("ADC", "ADC"),
                          ("dB0", "dB0"))
    }  # fmt: skip
    for attr, v in values.items():
        if v.is_complex():
            raise PhantomError(f"{where} {attr}: must be real")
    b1 = torch.stack(
        [reader.prop(v, f"{where} B1+[{i}]", density) for i, v in enumerate(tissue.B1_tx)]
    )
    rx = torch.stack(
        [reader.prop(v, f"{where} B1-[{i}]", density) for i, v in enumerate(tissue.B1_rx)]
    )
    assert reader.affine is not None
    voxel_mm = np.linalg.norm(reader.affine[:3, :3], axis=0)
    size = torch.tensor(np.array(density.shape) * voxel_mm / 1000.0, dtype=torch.float32)
    return VoxelGridPhantom(
        PD=density,
        T1=values["T1"],
        T2=values["T2"],
        T2dash=values["T2dash"],
        D=values["ADC"],
        B0=values["dB0"],
        B1=b1,
        coil_sens=rx,
        size=size,
        affine=reader.affine,
    )


class _VolumeWriter:
    """Collects volumes per property file, sharing identical maps, then writes the NIfTIs."""

    def __init__(self, stem: str) -> None:
        self.stem = stem
        self.volumes: dict[str, list[np.ndarray]] = {}

    def file_name(self, key: str) -> str:
        return f"{self.stem}.nii.gz" if key == "" else f"{self.stem}_{key}.nii.gz"

    def add(self, key: str, volume: torch.Tensor) -> NiftiRef:
        arr = volume.detach().cpu().numpy()
        arr = arr.astype(np.complex64 if np.iscomplexobj(arr) else np.float32)
        vols = self.volumes.setdefault(key, [])
        for i, v in enumerate(vols):
            if v.dtype == arr.dtype and np.array_equal(v, arr):
                return NiftiRef(self.file_name(key), i)
        vols.append(arr)
        return NiftiRef(self.file_name(key), len(vols) - 1)

    def prop(self, key: str, volume: torch.Tensor, mask: torch.Tensor) -> float | NiftiRef:
        values = volume[mask] if bool(mask.any()) else volume.flatten()
        if volume.is_complex():
            if bool((values.imag == 0).all()):
                values = values.real
            else:
                return self.add(key, volume)
        first = values.flatten()[0].item()
        if values.dtype == torch.float32:
            # shortest decimal that reads back as the same float32: 1.56, not 1.559999942779541
            first = float(str(np.float32(first)))
        # a constant is written as a number; JSON has no inf, but inf is the default of the
        # relaxation times, which to_dict() leaves out
        relaxation = key in ("T1", "T2", "T2'")
        if bool((values == first).all()) and (math.isfinite(first) or (relaxation and first > 0)):
            return first
        return self.add(key, volume)

    def write(self, directory: Path, affine: np.ndarray) -> None:
        for key, vols in self.volumes.items():
            data = np.stack(vols, axis=-1)
            if np.iscomplexobj(data):
                data = data.astype(np.complex64)
            img = nib.Nifti1Image(data, affine)
            img.set_sform(affine, code=2)
            img.set_qform(None, code=0)
            img.header.set_xyzt_units("mm", "sec")
            nib.save(img, directory / self.file_name(key))


@dataclass(frozen=True)
class _TissueRecovery:
    """Rebuilds the :class:`TissueDict` a :class:`SimData` was built from (picklable)."""

    names: list[str]
    counts: list[int]
    grids: list[Any]
    system: PhantomSystem

    def __call__(self, data: SimData) -> TissueDict:
        out = TissueDict(system=self.system)
        start = 0
        for name, n, grid in zip(self.names, self.counts, self.grids, strict=True):
            sel = slice(start, start + n)
            part = SimData(
                PD=data.PD[sel],
                T1=data.T1[sel],
                T2=data.T2[sel],
                T2dash=data.T2dash[sel],
                D=data.D[sel],
                B0=data.B0[sel],
                B1=data.B1[:, sel],
                coil_sens=data.coil_sens[:, sel],
                size=data.size,
                affine=data.affine,
                voxel_pos=data.voxel_pos[sel],
                nyquist=data.nyquist,
                dephasing_func=data.dephasing_func,
                phantom_motion=data.phantom_motion,
            )
            assert isinstance(grid, GridRecovery)
            out[name] = grid(part)
            start += n
        return out

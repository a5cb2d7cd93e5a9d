"""``VoxelGridPhantom``: tissue maps on a Cartesian grid, and MR-zero's older file formats.

Maps are indexed ``[(channel), x, y, z]`` with x, y, z the RAS+ axes (right, anterior, superior;
z along B0). A voxel's position follows MR-zero's FFT convention: along an axis with ``N`` voxels
and physical size ``size``, voxel ``i`` sits at ``(i - N // 2) * size / N`` metres, so there is
always a voxel at the origin and a plain FFT reconstruction has no half-voxel shift.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from os import PathLike, fspath
from pathlib import Path
from types import EllipsisType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .grid_motion import GridVoxelMotion
from .sim_data import MotionAttribute, SimData, voxel_shape

if TYPE_CHECKING:
    import matplotlib.figure

__all__ = ["VoxelGridPhantom", "grid_positions"]

_REAL_MAPS = ("PD", "T1", "T2", "T2dash", "D", "B0")
_CHANNEL_MAPS = ("B1", "coil_sens")
_NPZ_REQUIRED = ("PD_map", "T1_map", "T2_map", "T2dash_map", "D_map")
_NPZ_DEFAULT_SIZE = (0.192, 0.192, 0.192)
_MAX_GRID = 4096  # per axis; far beyond any MRI grid, but stops absurd resize requests


def _real(value: Any, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(value, torch.Tensor | np.ndarray):
        t = torch.as_tensor(value)
    else:  # numbers and lists: PD's dtype (float32 by default), not numpy's float64
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
        t = torch.as_tensor(np.asarray(value), dtype=dtype)
    if t.is_complex():
        raise ValueError(f"{name} must be real, got a complex tensor")
    t = t.to(torch.float32) if not t.is_floating_point() or t.dtype == torch.float16 else t
    if like is not None:
        t = t.to(like.device)
        if t.dim() == 0:
            t = t.expand(like.shape).clone()
    return t


def _channels(value: Any, name: str, spatial: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    t = t.to(like.device)
    if not t.is_complex():
        t = t.to(torch.float32 if like.dtype != torch.float64 else torch.float64)
        t = torch.complex(t, torch.zeros_like(t))
    if t.dim() == 0:
        t = t.expand((1, *spatial)).clone()
    elif t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or tuple(t.shape[1:]) != spatial:
        raise ValueError(
            f"{name} must be [channels, {', '.join(map(str, spatial))}] (or 3-D for one channel), "
            f"got shape {tuple(t.shape)}"
        )
    return t


def grid_positions(shape: SequenceABC[int], size: torch.Tensor) -> torch.Tensor:
    """Voxel positions ``[x, y, z, 3]`` in m for a grid of ``shape`` and physical ``size`` [3] m.

    Follows MR-zero's convention ``size * fftshift(fftfreq(N))`` per axis.
    """
    axes = [
        size[i]
        * torch.fft.fftshift(torch.fft.fftfreq(int(n), device=size.device, dtype=size.dtype))
        for i, n in enumerate(shape)
    ]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def default_affine(shape: SequenceABC[int], size: torch.Tensor) -> np.ndarray:
    """Return the ``[4, 4]`` RAS+ mm affine of a grid whose voxel ``N // 2`` sits at the origin."""
    affine = np.eye(4)
    for i, n in enumerate(shape):
        step = float(size[i]) * 1000.0 / int(n)
        affine[i, i] = step
        affine[i, 3] = -(int(n) // 2) * step
    return affine


class _GridMap:
    """A map attribute of :class:`VoxelGridPhantom`, checked and converted when assigned.

    MR-zero scripts assign maps directly (``obj.T2 = 80e-3``, ``obj.B1 = obj.B1**3``): a number
    or a 0-d tensor is broadcast to PD's ``[x, y, z]`` grid, lists and arrays become tensors, and
    a map of the wrong shape is refused at once, naming the attribute. In-place edits
    (``obj.D[i, j] = 1.5``) act on the stored tensor.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        try:
            return obj.__dict__[self.name]
        except KeyError:
            raise AttributeError(f"{type(obj).__name__}.{self.name} is not set") from None

    def __set__(self, obj: object, value: Any) -> None:
        pd = obj.__dict__.get("PD")
        if self.name == "PD":
            t = _real(value, "PD")
            if t.dim() != 3:
                raise ValueError(f"PD must be [x, y, z], got shape {tuple(t.shape)}")
        elif pd is None:
            raise AttributeError(f"set PD before {self.name}: the maps take PD's grid")
        elif self.name in _CHANNEL_MAPS:
            t = _channels(value, self.name, tuple(pd.shape), pd)
        else:
            t = _real(value, self.name, like=pd)
            if tuple(t.shape) != tuple(pd.shape):
                raise ValueError(
                    f"{self.name} has shape {tuple(t.shape)}, PD has {tuple(pd.shape)}"
                )
        obj.__dict__[self.name] = t


def _affine_4x4(value: Any) -> np.ndarray:
    """Return a finite ``[4, 4]`` affine from a ``[4, 4]`` or MR-zero's ``[3, 4]`` matrix."""
    a = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
    a = a.astype(np.float64)
    if a.shape == (3, 4):
        a = np.vstack([a, [0.0, 0.0, 0.0, 1.0]])
    if a.shape != (4, 4) or not np.isfinite(a).all():
        raise ValueError(f"affine must be a finite 4x4 (or 3x4) matrix, got shape {a.shape}")
    return a


class VoxelGridPhantom:
    """Tissue maps on a Cartesian voxel grid.

    Parameters
    ----------
    PD, T1, T2, T2dash, D, B0
        ``[x, y, z]`` maps: proton density (a.u.), T1, T2, T2′ (s), diffusion (10⁻³ mm²/s),
        off-resonance (Hz). Scalars are broadcast to PD's shape.
    B1
        ``[tx channels, x, y, z]`` relative transmit field (3-D input means one channel).
    coil_sens
        ``[coils, x, y, z]`` receive sensitivities (3-D input means one coil).
    affine
        ``[4, 4]`` (or MR-zero's ``[3, 4]``) voxel index → RAS+ mm transform (NIfTI convention),
        as MR-zero 1.2 takes it in this position; or, as MR-zero's documentation and older
        releases pass here, the ``[3]`` physical size in m. Of an affine only the rotation and the
        position of the centre voxel are kept; the voxel size follows ``size`` when it is given,
        else the affine's column lengths.
    phantom_motion
        Optional rigid motion ``time [N] (s) -> (rotation [N, 3, 3], offset [N, 3] m)``
        (:mod:`mr0core.sim.motion`); kept by every method.
    voxel_motion
        Optional per-voxel motion ``time [N] (s) -> positions [N, x·y·z, 3] m`` of every grid voxel
        (flattened like ``PD.flatten()``), or of the voxels ``build()`` keeps. Carried through
        ``build``, ``slices``, ``interpolate`` and ``to``
        (:class:`~mr0core.phantom.grid_motion.GridVoxelMotion`); the other resampling and
        placing methods raise :class:`NotImplementedError` with it.
    tissue_masks
        Optional ``{name: [x, y, z]}`` masks.
    size
        ``[3]`` physical extent in m (keyword, as in MR-zero's documentation). One of ``size``
        and ``affine`` is required.

    Attributes
    ----------
    PD, T1, T2, T2dash, D, B0, B1, coil_sens
        The maps; assigning one converts and checks it (a number is broadcast to the grid).
    size
        ``[3]`` physical extent in m; assignable (a list or tensor of three positive lengths),
        and editable in place (``obj.size[2] = 0.008``).
    """

    phantom_motion = MotionAttribute()
    voxel_motion = MotionAttribute()
    PD = _GridMap()
    T1 = _GridMap()
    T2 = _GridMap()
    T2dash = _GridMap()
    D = _GridMap()
    B0 = _GridMap()
    B1 = _GridMap()
    coil_sens = _GridMap()

    def __init__(
        self,
        PD: torch.Tensor,
        T1: torch.Tensor | float,
        T2: torch.Tensor | float,
        T2dash: torch.Tensor | float,
        D: torch.Tensor | float,
        B0: torch.Tensor | float,
        B1: torch.Tensor | float,
        coil_sens: torch.Tensor | float,
        affine: Any = None,
        phantom_motion: Any = None,
        voxel_motion: Any = None,
        tissue_masks: dict[str, torch.Tensor] | None = None,
        size: Any = None,
    ) -> None:
        self.PD = PD
        spatial = tuple(self.PD.shape)
        self.T1 = T1
        self.T2 = T2
        self.T2dash = T2dash
        self.D = D
        self.B0 = B0
        self.B1 = B1
        self.coil_sens = coil_sens
        if affine is not None and np.shape(affine) not in ((4, 4), (3, 4)):
            if size is not None:
                raise ValueError(
                    f"affine has shape {tuple(np.shape(affine))} (a size?) and size is given too"
                )
            affine, size = None, affine  # the documented positional `size`
        if affine is not None:
            affine = _affine_4x4(affine)
        if size is None:
            if affine is None:
                raise ValueError("VoxelGridPhantom needs a size [3] in m (or an affine)")
            size = np.linalg.norm(affine[:3, :3], axis=0) * np.array(spatial) / 1000.0
        self.size = size
        self._affine = affine
        self._affine_shape = spatial  # grid shape the affine describes
        self.phantom_motion = phantom_motion
        self.voxel_motion = voxel_motion
        self.tissue_masks = {
            k: _real(v, f"tissue_masks[{k!r}]", like=self.PD)
            for k, v in (tissue_masks or {}).items()
        }

    @property
    def size(self) -> torch.Tensor:
        """``[3]`` physical extent in m (assignable, editable in place)."""
        return self._size

    @size.setter
    def size(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor):  # lists, arrays: the maps' float dtype
            value = torch.as_tensor(np.asarray(value, dtype=np.float64)).to(self.PD.dtype)
        t = _real(value, "size").to(self.PD.device).flatten().clone()
        if t.shape != (3,) or not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"size must be three positive lengths in m, got {t.tolist()}")
        self._size = t

    # ------------------------------------------------------------------ properties

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(x, y, z)``."""
        nx, ny, nz = self.PD.shape
        return (nx, ny, nz)

    @property
    def device(self) -> torch.device:
        """The device of the maps."""
        result: torch.device = self.PD.device
        return result

    @property
    def affine(self) -> np.ndarray:
        """``[4, 4]`` voxel index → RAS+ mm transform consistent with the current ``size``.

        Keeps the rotation and centre-voxel position of the affine the phantom was loaded with, and
        scales the columns to ``size / shape``; without one, voxel ``N // 2`` sits at the origin.
        """
        base = default_affine(self.shape, self.size)
        if self._affine is None:
            return base
        rot = self._affine[:3, :3] / np.linalg.norm(self._affine[:3, :3], axis=0)
        centre = np.array([n // 2 for n in self.shape], dtype=np.float64)
        src_shape = self._affine_shape
        src_centre = np.array([n // 2 for n in src_shape], dtype=np.float64)
        centre_ras = self._affine[:3, :3] @ src_centre + self._affine[:3, 3]
        out = np.eye(4)
        out[:3, :3] = rot * np.diag(base)[:3]
        out[:3, 3] = centre_ras - out[:3, :3] @ centre
        return out

    def _with_maps(
        self,
        maps: dict[str, Any],
        size: torch.Tensor | None = None,
        voxel_motion: Any = None,
        what: str = "",
    ) -> VoxelGridPhantom:
        if self.voxel_motion is not None and voxel_motion is None:
            raise NotImplementedError(
                f"VoxelGridPhantom.{what}: voxel_motion is carried only through build, slices, "
                "interpolate and to; apply the motion to the result instead"
            )
        out = VoxelGridPhantom(
            **{k: maps[k] for k in (*_REAL_MAPS, *_CHANNEL_MAPS)},
            size=self.size.clone() if size is None else size,
            phantom_motion=self.phantom_motion,
            voxel_motion=voxel_motion,
            tissue_masks=maps.get("tissue_masks"),
        )
        if self._affine is not None:
            # keep orientation and centre of the source affine; the voxel size follows `size`
            out._affine = self._affine
            out._affine_shape = self._affine_shape
        return out

    def _all_maps(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in (*_REAL_MAPS, *_CHANNEL_MAPS)}

    # ------------------------------------------------------------------ placing

    def mirror(self, axes: SequenceABC[int]) -> VoxelGridPhantom:
        """Mirror every map about the isocentre along the spatial ``axes`` (0: x, 1: y, 2: z).

        Voxel ``i`` of an axis of ``n`` sits at ``(i - n // 2) · size / n``, so the mirror maps
        voxel ``i`` to ``(-i) mod n`` (voxel ``n // 2``, the isocentre, stays; for even ``n`` the
        first voxel, which has no mirror on the grid, stays too). Size unchanged. The source
        affine (a NIfTI phantom's orientation) is dropped: the result describes the simulation
        grid only.
        """
        dims = sorted({int(a) for a in axes})
        if any(a not in (0, 1, 2) for a in dims):
            raise ValueError(f"axes must be among 0, 1, 2, got {list(axes)}")

        def turn(v: torch.Tensor) -> torch.Tensor:
            for a in dims:
                n = v.shape[a - 3]
                index = (-torch.arange(n, device=v.device)) % n
                v = v.index_select(a - 3 + v.dim(), index)
            return v

        maps: dict[str, Any] = {k: turn(v) for k, v in self._all_maps().items()}
        maps["tissue_masks"] = {k: turn(v) for k, v in self.tissue_masks.items()}
        out = self._with_maps(maps, what="mirror")
        out._affine = None
        return out

    def transpose_xy(self) -> VoxelGridPhantom:
        """Swap the x and y axes of every map and of ``size`` (a 90° turn with :meth:`mirror`)."""
        maps: dict[str, Any] = {k: v.transpose(-3, -2) for k, v in self._all_maps().items()}
        maps["tissue_masks"] = {k: v.transpose(-3, -2) for k, v in self.tissue_masks.items()}
        size = self.size[[1, 0, 2]].clone()
        out = self._with_maps(maps, size, what="transpose_xy")
        out._affine = None
        return out

    def with_size(self, size: SequenceABC[float] | torch.Tensor) -> VoxelGridPhantom:
        """Return the same maps spanning another physical extent ``size`` ``(x, y, z)`` in m."""
        new = torch.as_tensor(size, dtype=torch.float32).to(self.device).flatten()
        if new.shape != (3,) or not bool(torch.all(new > 0)) or not bool(torch.isfinite(new).all()):
            raise ValueError(f"size must be three positive lengths in m, got {size}")
        return self._with_maps(
            {**self._all_maps(), "tissue_masks": dict(self.tissue_masks)}, new, what="with_size"
        )

    # ------------------------------------------------------------------ resizing

    def slices(self, slices: SequenceABC[int]) -> VoxelGridPhantom:
        """Keep only the given z slices; ``size[2]`` shrinks in proportion.

        Parameters
        ----------
        slices
            z indices to keep, in the order given (negative indices count from the end).
        """
        nz = self.shape[2]
        idx = [int(s) for s in slices]
        if not idx:
            raise ValueError("slices: give at least one slice index")
        bad = [s for s in idx if not -nz <= s < nz]
        if bad:
            raise IndexError(f"slices {bad} out of range for a phantom with {nz} slices")
        index = torch.tensor([s % nz for s in idx], device=self.device)
        maps: dict[str, torch.Tensor | dict[str, torch.Tensor]] = {
            k: v.index_select(-1, index) for k, v in self._all_maps().items()
        }
        maps["tissue_masks"] = {k: v.index_select(-1, index) for k, v in self.tissue_masks.items()}
        size = self.size.clone()
        size[2] = size[2] * len(idx) / nz
        return self._with_maps(maps, size, self._grid_motion(lambda m: m.sliced(idx, size)))

    def _grid_motion(self, step: Any) -> Any:
        """``voxel_motion`` after a resampling ``step`` (None without one)."""
        if self.voxel_motion is None:
            return None
        return step(GridVoxelMotion.wrap(self.voxel_motion, self.shape, self.size))

    def interpolate(self, x: int, y: int, z: int) -> VoxelGridPhantom:
        """Resample every map to ``[x, y, z]`` with trilinear interpolation (size unchanged)."""
        shape = _check_shape(x, y, z)

        def resample(t: torch.Tensor) -> torch.Tensor:
            if t.is_complex():
                return torch.complex(resample(t.real), resample(t.imag))
            lead = t.shape[:-3]
            flat = t.reshape(1, -1, *t.shape[-3:])
            out = F.interpolate(flat, size=shape, mode="trilinear", align_corners=False)
            return out.reshape(*lead, *shape)

        maps: dict[str, Any] = {k: resample(v) for k, v in self._all_maps().items()}
        maps["tissue_masks"] = {k: resample(v) for k, v in self.tissue_masks.items()}
        return self._with_maps(maps, None, self._grid_motion(lambda m: m.interpolated(shape)))

    def scale_fft(self, x: int, y: int, z: int) -> VoxelGridPhantom:
        """Resize by FFT, centred crop or zero-pad of k-space, inverse FFT (size unchanged).

        Values are scaled so that a constant map stays constant. Band-limited resampling: sharp
        edges ring (Gibbs), unlike :meth:`interpolate`.
        """
        shape = _check_shape(x, y, z)

        def resample(t: torch.Tensor) -> torch.Tensor:
            dims = (-3, -2, -1)
            k = torch.fft.fftshift(torch.fft.fftn(t, dim=dims), dim=dims)
            out = torch.zeros((*t.shape[:-3], *shape), dtype=k.dtype, device=k.device)
            src: list[slice] = []
            dst: list[slice] = []
            for n_old, n_new in zip(t.shape[-3:], shape, strict=True):
                n = min(n_old, n_new)
                # keep the samples around the DC bin, which fftshift puts at index N // 2
                a, b = n_old // 2 - n // 2, n_new // 2 - n // 2
                src.append(slice(a, a + n))
                dst.append(slice(b, b + n))
            dst_index: tuple[EllipsisType | slice, ...] = (..., *dst)
            src_index: tuple[EllipsisType | slice, ...] = (..., *src)
            out[dst_index] = k[src_index]
            scale = math.prod(shape) / math.prod(t.shape[-3:])
            img = torch.fft.ifftn(torch.fft.ifftshift(out, dim=dims), dim=dims) * scale
            result: torch.Tensor = img if t.is_complex() else img.real.to(t.dtype)
            return result

        maps: dict[str, Any] = {k: resample(v) for k, v in self._all_maps().items()}
        maps["tissue_masks"] = {k: resample(v) for k, v in self.tissue_masks.items()}
        return self._with_maps(maps, what="scale_fft")

    # ------------------------------------------------------------------ conversion

    def to(self, device: torch.device | str) -> VoxelGridPhantom:
        """Return a copy with every map on ``device``."""
        maps: dict[str, Any] = {k: v.to(device) for k, v in self._all_maps().items()}
        maps["tissue_masks"] = {k: v.to(device) for k, v in self.tissue_masks.items()}
        return self._with_maps(
            maps, self.size.to(device), self._grid_motion(lambda m: m.moved(device))
        )

    def build(self, PD_threshold: float = 1e-6, voxel_shape: str = "sinc") -> SimData:
        """Flatten into :class:`SimData`, keeping voxels with ``PD > PD_threshold``.

        Parameters
        ----------
        PD_threshold
            Voxels whose proton density is not above this value are dropped.
        voxel_shape
            ``"sinc"`` (default), ``"exact_sinc"``, ``"box"`` or ``"point"``; see
            :mod:`mr0core.phantom.sim_data`.
        """
        dephasing = _grid_shape(voxel_shape)
        for name in (*_REAL_MAPS[1:], *_CHANNEL_MAPS):
            if tuple(getattr(self, name).shape[-3:]) != self.shape:
                raise ValueError(
                    f"{name} has shape {tuple(getattr(self, name).shape)}, PD has {self.shape}"
                )
        mask = PD_threshold < self.PD
        pos = grid_positions(self.shape, self.size)
        return SimData(
            PD=self.PD[mask],
            T1=self.T1[mask],
            T2=self.T2[mask],
            T2dash=self.T2dash[mask],
            D=self.D[mask],
            B0=self.B0[mask],
            B1=self.B1[:, mask],
            coil_sens=self.coil_sens[:, mask],
            size=self.size.clone(),
            voxel_pos=pos[mask],
            nyquist=self.nyquist,
            dephasing_func=dephasing,
            recover_func=GridRecovery(self.shape, mask.cpu(), self._affine, self._affine_shape),
            phantom_motion=self.phantom_motion,
            voxel_motion=self._grid_motion(lambda m: m.built(mask)),
            tissue_masks={k: v[mask] for k, v in self.tissue_masks.items()},
            affine=torch.as_tensor(self.affine),
        )

    @property
    def nyquist(self) -> torch.Tensor:
        """``[3]`` Nyquist frequency ``N / (2 size)`` in 1/m."""
        n = torch.tensor(self.shape, dtype=self.size.dtype, device=self.device)
        return n / (2 * self.size)

    # ------------------------------------------------------------------ loaders

    @classmethod
    def load_mat(
        cls,
        file_name: str | PathLike[str],
        T2dash: float = 0.03,
        D: float = 1.0,
        size: SequenceABC[float] = (0.2, 0.2, 0.008),
    ) -> VoxelGridPhantom:
        """Load MR-zero's MATLAB brain phantom (``numerical_brain_cropped.mat``).

        The file holds one array ``[x, y, (z,) channels]`` with the channels PD, T1 (s), T2 (s),
        dB0 (Hz) and B1+ (relative), in that order. T2′ and D are not stored and are set to the
        given constants; the receive sensitivity is one coil of ones. Values are taken as they are
        (the background has T1 = T2 = 0 and is dropped by :meth:`build` through its PD of 0).

        Parameters
        ----------
        file_name
            Path of a MATLAB v5 or v7.3 ``.mat`` file.
        T2dash
            T2′ in s for all voxels.
        D
            Diffusion coefficient in 10⁻³ mm²/s for all voxels.
        size
            Physical size ``[3]`` in m.
        """
        data = _read_mat_array(Path(fspath(file_name)))
        if data.ndim == 3:
            data = data[:, :, None, :]
        if data.ndim != 4 or data.shape[-1] < 5:
            raise ValueError(
                f"{file_name}: expected an array [x, y, (z,) channels>=5], got {data.shape}"
            )
        maps = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        pd = maps[..., 0]
        return cls(
            PD=pd,
            T1=maps[..., 1],
            T2=maps[..., 2],
            T2dash=torch.full_like(pd, float(T2dash)),
            D=torch.full_like(pd, float(D)),
            B0=maps[..., 3],
            B1=maps[..., 4].unsqueeze(0),
            coil_sens=torch.ones_like(pd).unsqueeze(0),
            size=torch.tensor([float(s) for s in size], dtype=torch.float32),
        )

    @classmethod
    def load(cls, file_name: str | PathLike[str]) -> VoxelGridPhantom:
        """Load MR-zero's older ``.npz`` phantom format.

        Required arrays ``[x, y, z]``: ``PD_map``, ``T1_map`` (s), ``T2_map`` (s), ``T2dash_map``
        (s), ``D_map`` (10⁻³ mm²/s). Optional: ``B0_map`` (Hz, default 0), ``B1_map`` (relative,
        ``[x, y, z]`` or ``[channels, x, y, z]``, default 1), ``coil_sens`` (default one coil of
        ones), ``size`` (m, default 0.192 m per axis, MR-zero's BrainWeb field of view) and any
        ``tissue_<name>`` masks.

        MR-zero generates its own B0 and B1 maps when the file has none; we do not invent field
        maps and use the homogeneous defaults instead (see :func:`mr0core.util.load_phantom` for
        adding polynomial B0/B1 inhomogeneity).
        """
        path = Path(fspath(file_name))
        if not path.is_file():
            raise FileNotFoundError(f"phantom file not found: {path}")
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_REQUIRED if k not in npz.files]
            if missing:
                raise KeyError(
                    f"{path}: missing {', '.join(missing)} (arrays present: "
                    f"{', '.join(npz.files) or 'none'})"
                )
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
        pd = torch.from_numpy(arrays["PD_map"].astype(np.float32))
        if pd.dim() == 2:
            pd = pd.unsqueeze(-1)

        def get(key: str, default: float) -> torch.Tensor:
            if key not in arrays:
                return torch.full_like(pd, default)
            t = torch.from_numpy(np.asarray(arrays[key]))
            return t.unsqueeze(-1) if t.dim() == 2 else t

        size = arrays.get("size", np.array(_NPZ_DEFAULT_SIZE))
        return cls(
            PD=pd,
            T1=get("T1_map", 0.0),
            T2=get("T2_map", 0.0),
            T2dash=get("T2dash_map", 0.0),
            D=get("D_map", 0.0),
            B0=get("B0_map", 0.0),
            B1=get("B1_map", 1.0),
            coil_sens=get("coil_sens", 1.0),
            size=torch.as_tensor(np.asarray(size, dtype=np.float32)),
            tissue_masks={
                k: torch.from_numpy(v.astype(np.float32))
                for k, v in arrays.items()
                if k.startswith("tissue_")
            },
        )

    @classmethod
    def brainweb(cls, file_name: str | PathLike[str]) -> VoxelGridPhantom:
        """Load one of MR-zero's pre-generated BrainWeb ``.npz`` phantoms (``subject05.npz``).

        Same layout as :meth:`load`.
        """
        return cls.load(file_name)

    # ------------------------------------------------------------------ plotting

    def plot(
        self,
        plot_masks: bool = False,
        plot_slice: str | int = "center",
        time_unit: str = "s",
        title: str | None = None,
    ) -> matplotlib.figure.Figure:
        """Plot every map of one z slice (x to the right, y up) and return the figure.

        Parameters
        ----------
        plot_masks
            Also plot the tissue masks.
        plot_slice
            ``"center"`` or a z index.
        time_unit
            ``"s"`` or ``"ms"`` for T1, T2 and T2′.
        title
            Figure title.
        """
        import matplotlib.pyplot as plt

        z = self.shape[2] // 2 if plot_slice == "center" else int(plot_slice)
        if not -self.shape[2] <= z < self.shape[2]:
            raise IndexError(f"plot_slice {z} out of range for {self.shape[2]} slices")
        if time_unit not in ("s", "ms"):
            raise ValueError(f"time_unit must be 's' or 'ms', got {time_unit!r}")
        scale = 1000.0 if time_unit == "ms" else 1.0
        panels: list[tuple[str, torch.Tensor]] = [
            ("PD", self.PD),
            (f"T1 [{time_unit}]", self.T1 * scale),
            (f"T2 [{time_unit}]", self.T2 * scale),
            (f"T2' [{time_unit}]", self.T2dash * scale),
            ("D [10^-3 mm^2/s]", self.D),
            ("B0 [Hz]", self.B0),
        ]
        panels += [(f"|B1+| ch {i}", c.abs()) for i, c in enumerate(self.B1)]
        panels += [(f"|B1-| coil {i}", c.abs()) for i, c in enumerate(self.coil_sens)]
        if plot_masks:
            panels += [(f"mask {k}", v) for k, v in self.tissue_masks.items()]
        cols = min(4, len(panels))
        rows = math.ceil(len(panels) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
        for ax, (name, data) in zip(axes.flat, panels, strict=False):
            img = ax.imshow(data[..., z].detach().cpu().T.numpy(), origin="lower")
            ax.set_title(name)
            ax.axis("off")
            fig.colorbar(img, ax=ax, fraction=0.046)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (
            f"VoxelGridPhantom(shape={self.shape}, tx={self.B1.shape[0]}, "
            f"coils={self.coil_sens.shape[0]}, size={[round(float(s), 4) for s in self.size]} m)"
        )


def _check_shape(x: int, y: int, z: int) -> tuple[int, int, int]:
    shape = (int(x), int(y), int(z))
    if not all(1 <= n <= _MAX_GRID for n in shape):
        raise ValueError(f"grid size must be 1..{_MAX_GRID} per axis, got {shape}")
    return shape


def _grid_shape(name: Any) -> Any:
    if isinstance(name, str) and name == "gauss":
        raise ValueError("voxel shape 'gauss' is only available for CustomVoxelPhantom")
    return voxel_shape(name)


def _read_mat_array(path: Path) -> np.ndarray:
    """Return the (first) data array of a MATLAB file, in MATLAB's index order."""
    if not path.is_file():
        raise FileNotFoundError(f"phantom file not found: {path}")
    with path.open("rb") as f:
        is_hdf5 = f.read(512)[:128].find(b"MATLAB 7.3") >= 0
    if not is_hdf5:
        import scipy.io

        content = scipy.io.loadmat(path)
        arrays = {k: v for k, v in content.items() if not k.startswith("__")}
    else:
        import h5py

        with h5py.File(path, "r") as f:
            # HDF5 stores MATLAB arrays transposed (column-major): undo it
            arrays = {
                k: np.asarray(v).transpose()
                for k, v in f.items()
                if isinstance(v, h5py.Dataset) and not k.startswith("#")
            }
    if not arrays:
        raise ValueError(f"{path}: the MATLAB file holds no array")
    if len(arrays) > 1:
        warnings.warn(
            f"{path}: several arrays ({', '.join(arrays)}); using {next(iter(arrays))!r}",
            stacklevel=3,
        )
    return np.asarray(next(iter(arrays.values())))


@dataclass(frozen=True)
class GridRecovery:
    """Undoes :meth:`VoxelGridPhantom.build`: scatters the voxels back onto the grid (picklable)."""

    shape: tuple[int, int, int]
    mask: torch.Tensor
    affine: np.ndarray | None = None
    affine_shape: tuple[int, ...] | None = None

    def __call__(self, data: SimData) -> VoxelGridPhantom:
        """Return the phantom ``data`` was built from; dropped voxels are zero."""
        mask = self.mask.to(data.device)

        def scatter(values: torch.Tensor) -> torch.Tensor:
            out = torch.zeros((*values.shape[:-1], *self.shape), dtype=values.dtype,
                              device=values.device)  # fmt: skip
            out[..., mask] = values
            return out

        phantom = VoxelGridPhantom(
            **{k: scatter(getattr(data, k)) for k in (*_REAL_MAPS, *_CHANNEL_MAPS)},
            size=data.size.clone(),
            phantom_motion=data.phantom_motion,
            voxel_motion=_unbuilt(data.voxel_motion),
            tissue_masks={k: scatter(v.to(torch.float32)) for k, v in data.tissue_masks.items()},
        )
        if self.affine is not None:
            phantom._affine = self.affine
            phantom._affine_shape = self.affine_shape or self.shape
        return phantom


def _unbuilt(motion: Any) -> Any:
    """Return a built grid phantom's ``voxel_motion`` for the recovered (whole) grid."""
    if isinstance(motion, GridVoxelMotion) and motion.mask is not None:
        return motion.built_from()
    return motion

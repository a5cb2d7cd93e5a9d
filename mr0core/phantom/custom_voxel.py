"""``CustomVoxelPhantom``: a handful of voxels at arbitrary positions.

Useful for point-spread functions, sub-voxel shifts, teaching and tests. Each voxel has a shape
(``box``, ``sinc`` or ``gauss``, edge length ``voxel_size``) that the simulation sees through its
k-space response (see :mod:`mr0core.phantom.sim_data`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .sim_data import MotionAttribute, SimData, VoxelShape, voxel_shape

if TYPE_CHECKING:
    import matplotlib.figure

__all__ = ["CustomVoxelPhantom"]

_MAX_RESOLUTION = 2048


def _per_voxel(value: Any, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
    t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    t = t.to(dtype)
    if t.dim() == 0:
        return t.expand(n).clone()
    if t.shape[-1] != n:
        raise ValueError(f"{name} has {t.shape[-1]} entries per channel, but there are {n} voxels")
    return t


class _VoxelValues:
    """A per-voxel attribute of :class:`CustomVoxelPhantom`, converted when assigned.

    As in MR-zero scripts, ``obj.T2 = 80e-3`` sets every voxel (a number or 0-d tensor is
    broadcast to the voxel count), and lists become tensors; a wrong voxel count is refused at
    once, naming the attribute.
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
        pos: torch.Tensor = obj.voxel_pos  # type: ignore[attr-defined]
        n = pos.shape[0]
        if self.name in ("B1", "coil_sens"):
            complex_dtype = torch.complex64 if pos.dtype != torch.float64 else torch.complex128
            t = _per_voxel(value, self.name, n, complex_dtype)
            t = t.unsqueeze(0) if t.dim() == 1 else t
        else:
            t = _per_voxel(value, self.name, n, pos.dtype)
            if t.dim() != 1:
                raise ValueError(f"{self.name} must be a number or [{n}], got {tuple(t.shape)}")
        obj.__dict__[self.name] = t


class CustomVoxelPhantom:
    """Voxels at arbitrary positions.

    Parameters
    ----------
    pos
        ``[voxels, 3]`` positions in m.
    PD, T1, T2, T2dash, D, B0
        Scalars or ``[voxels]``: proton density, T1, T2, T2′ (s), diffusion (10⁻³ mm²/s) and
        off-resonance (Hz).
    B1
        Scalar, ``[voxels]`` or ``[tx channels, voxels]`` relative transmit field.
    voxel_size
        Edge length in m, one value or ``[3]``.
    voxel_shape
        ``"sinc"`` (default), ``"box"`` or ``"gauss"`` (Gaussian with σ = voxel_size / 2).
    coil_sens
        Optional ``[coils, voxels]`` receive sensitivities; one coil of ones by default.

    Attributes
    ----------
    PD, T1, T2, T2dash, D, B0, B1, coil_sens
        Per-voxel values; assigning a number sets every voxel.
    size
        ``[3]`` extent in m that normalised gradients are scaled to: by default the extent of the
        voxel positions (an axis without extent: the voxel size). Assigning a ``[3]`` length
        overrides it, as in MR-zero; assigning ``None`` returns to the default.
    """

    phantom_motion = MotionAttribute()
    voxel_motion = MotionAttribute()
    PD = _VoxelValues()
    T1 = _VoxelValues()
    T2 = _VoxelValues()
    T2dash = _VoxelValues()
    D = _VoxelValues()
    B0 = _VoxelValues()
    B1 = _VoxelValues()
    coil_sens = _VoxelValues()

    def __init__(
        self,
        pos: Any,
        PD: Any = 1.0,
        T1: Any = 1.5,
        T2: Any = 0.1,
        T2dash: Any = 0.05,
        D: Any = 1.0,
        B0: Any = 0.0,
        B1: Any = 1.0,
        voxel_size: Any = 0.1,
        voxel_shape: str = "sinc",
        coil_sens: Any = None,
    ) -> None:
        p = pos if isinstance(pos, torch.Tensor) else torch.as_tensor(np.asarray(pos))
        p = p.to(torch.float32) if not p.is_floating_point() else p
        if p.dim() != 2 or p.shape[1] != 3 or p.shape[0] == 0:
            raise ValueError(
                f"pos must be [voxels, 3] with at least one voxel, got {tuple(p.shape)}"
            )
        self.voxel_pos = p
        self.PD = PD
        self.T1 = T1
        self.T2 = T2
        self.T2dash = T2dash
        self.D = D
        self.B0 = B0
        self.B1 = B1
        self.coil_sens = 1.0 if coil_sens is None else coil_sens
        self.voxel_shape = voxel_shape
        self.voxel_size = voxel_size
        # validates name and size early, with a clear message
        self._shape_func: VoxelShape = voxel_shape_func(voxel_shape, voxel_size)
        self._size: torch.Tensor | None = None

    @property
    def size(self) -> torch.Tensor:
        """``[3]`` extent in m (see the class attributes); assignable."""
        if self._size is not None:
            return self._size
        extent = self.voxel_pos.max(dim=0).values - self.voxel_pos.min(dim=0).values
        vs = torch.tensor(self._shape_func.voxel_size, dtype=extent.dtype, device=extent.device)
        return torch.where(extent > 0, extent, vs)

    @size.setter
    def size(self, value: Any) -> None:
        if value is None:
            self._size = None
            return
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        t = t.to(device=self.voxel_pos.device, dtype=self.voxel_pos.dtype).flatten().clone()
        if t.shape != (3,) or not bool((t > 0).all()) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"size must be three positive lengths in m, got {t.tolist()}")
        self._size = t

    def build(self) -> SimData:
        """Convert into :class:`SimData` (Nyquist frequency infinite: the voxel shape decides)."""
        return SimData(
            PD=self.PD,
            T1=self.T1,
            T2=self.T2,
            T2dash=self.T2dash,
            D=self.D,
            B0=self.B0,
            B1=self.B1,
            coil_sens=self.coil_sens,
            size=self.size,
            affine=None,  # custom voxels lie on no grid
            voxel_pos=self.voxel_pos,
            nyquist=torch.full(
                (3,), math.inf, dtype=self.voxel_pos.dtype, device=self.voxel_pos.device
            ),
            dephasing_func=self._shape_func,
            recover_func=_CustomRecovery(self.voxel_shape, self.voxel_size),
            phantom_motion=self.phantom_motion,
            voxel_motion=self.voxel_motion,
        )

    def _render(self, weights: torch.Tensor, resolution: int, fov: float) -> torch.Tensor:
        """Sum of voxel profiles, each scaled by ``weights`` ``[..., voxels]``, on the x-y grid."""
        if not 1 <= int(resolution) <= _MAX_RESOLUTION:
            raise ValueError(f"resolution must be 1..{_MAX_RESOLUTION}, got {resolution}")
        if not fov > 0:
            raise ValueError(f"fov must be positive, got {fov}")
        n = int(resolution)
        dev, dt = self.voxel_pos.device, self.voxel_pos.dtype
        k1 = torch.fft.fftfreq(n, d=fov / n, device=dev, dtype=dt)  # 1/m, FFT order
        kx, ky = torch.meshgrid(k1, k1, indexing="ij")
        k = torch.stack([kx, ky, torch.zeros_like(kx)], dim=-1)  # [n, n, 3]
        response = self._shape_func(k, torch.full((3,), math.inf, dtype=dt, device=dev))
        phase = torch.exp(
            -2j
            * math.pi
            * (kx[..., None] * self.voxel_pos[:, 0] + ky[..., None] * self.voxel_pos[:, 1])
        )  # [n, n, voxels]
        spectrum = (phase * weights.to(phase.dtype)[..., None, None, :]).sum(-1) * response
        # The response is normalised to 1 at k = 0, i.e. it is the profile's transform divided by
        # the voxel area; multiply by that area (s_x s_y) over the pixel area to get the profile.
        voxel_size = self._shape_func.voxel_size
        assert voxel_size is not None  # a custom voxel's shape always carries its size
        sx, sy, _ = voxel_size
        img = torch.fft.ifft2(spectrum) * (sx * sy) * (n / fov) ** 2
        # grid index i sits at fov * fftshift(fftfreq(n))[i]: shift the FFT output accordingly
        result: torch.Tensor = torch.fft.fftshift(img.real, dim=(-2, -1))
        return result

    def generate_PD_map(self, resolution: int = 128, fov: float = 1.0) -> torch.Tensor:
        """Render the proton density of all voxels into a ``[resolution, resolution, 1]`` map.

        The grid covers ``fov`` metres (centred, FFT convention) in x and y; z is projected. Each
        voxel contributes its band-limited profile (peak 1 for box and sinc voxels), so the map
        shows the same shape that the simulation uses, including the ringing of box voxels.
        """
        return self._render(self.PD, resolution, fov).unsqueeze(-1)

    def generate_maps(self, resolution: int = 128, fov: float = 1.0) -> dict[str, torch.Tensor]:
        """Render PD and the PD-weighted mean of every other property, each ``[res, res, 1]``."""
        pd = self._render(self.PD, resolution, fov)
        safe = torch.where(pd.abs() > 1e-3 * pd.abs().max(), pd, torch.full_like(pd, math.inf))
        maps = {"PD": pd}
        for name in ("T1", "T2", "T2dash", "D", "B0"):
            maps[name] = self._render(self.PD * getattr(self, name), resolution, fov) / safe
        maps["B1"] = self._render(self.PD * self.B1[0].abs(), resolution, fov) / safe
        return {k: v.unsqueeze(-1) for k, v in maps.items()}

    def plot(self, resolution: int = 128, fov: float = 1.0) -> matplotlib.figure.Figure:
        """Render and plot all maps; return the figure."""
        import matplotlib.pyplot as plt

        maps = self.generate_maps(resolution, fov)
        fig, axes = plt.subplots(1, len(maps), figsize=(3 * len(maps), 3))
        half = fov / 2
        for ax, (name, m) in zip(axes, maps.items(), strict=True):
            img = ax.imshow(
                m[..., 0].detach().cpu().T.numpy(),
                origin="lower",
                extent=(-half, half, -half, half),
            )
            ax.set_title(name)
            fig.colorbar(img, ax=ax, fraction=0.046)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (
            f"CustomVoxelPhantom({self.voxel_pos.shape[0]} voxels, shape={self.voxel_shape!r}, "
            f"voxel_size={self.voxel_size})"
        )


def voxel_shape_func(name: str, voxel_size: Any) -> VoxelShape:
    """Return the :class:`VoxelShape` of a custom voxel (``box``, ``sinc`` or ``gauss``)."""
    if not isinstance(name, str):
        raise ValueError(f"voxel_shape must be a name, got {name!r}")
    func = voxel_shape(name, voxel_size)
    assert isinstance(func, VoxelShape)
    return func


class _CustomRecovery:
    """Rebuilds a :class:`CustomVoxelPhantom` from its :class:`SimData` (picklable)."""

    def __init__(self, shape: str, voxel_size: Any) -> None:
        self.shape = shape
        self.voxel_size = voxel_size

    def __call__(self, data: SimData) -> CustomVoxelPhantom:
        out = CustomVoxelPhantom(
            data.voxel_pos, data.PD, data.T1, data.T2, data.T2dash, data.D, data.B0, data.B1,
            self.voxel_size, self.shape, data.coil_sens,
        )  # fmt: skip
        out.phantom_motion = data.phantom_motion
        out.voxel_motion = data.voxel_motion
        return out

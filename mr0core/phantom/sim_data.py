"""``SimData``: the flattened, sparse input of the simulators, and the voxel shapes.

A phantom (:class:`~mr0core.phantom.VoxelGridPhantom`, :class:`~mr0core.phantom.TissueDict` or
:class:`~mr0core.phantom.CustomVoxelPhantom`) is turned into :class:`SimData` by its ``build()``
method. Only voxels with a proton density above a threshold are kept, so every property is a flat
tensor over those voxels.

Voxel shapes
------------
The simulators see a voxel through the k-space response of its shape: a state with dephasing
``k`` (1/m) carries the signal ``PD · dephasing_func(k, nyquist)``. The shapes are

``exact_sinc``
    a sinc-shaped voxel, i.e. a rect in k-space: 1 for ``|k_i| <= nyquist_i`` on every axis, else 0.
``sinc``
    the same rect with rounded (logistic) edges, so it is differentiable: ≥ 0.9999 up to the
    Nyquist frequency, 0.5 at 1.005 × Nyquist and < 10⁻⁴ beyond 1.01 × Nyquist. Signals agree
    with MR-zero's ``sinc`` (a hard rect in its 1.2 release) to about 10⁻⁴.
``box``
    a box of one voxel's width, i.e. ``Π_i sinc(k_i / (2 nyquist_i))`` with the normalised sinc.
``point``
    a point, 1 everywhere (no intra-voxel dephasing, gradient spoiling has no effect).
``gauss``
    (custom voxels only) a Gaussian voxel with standard deviation half the voxel size ``s``,
    ``exp(-2 π² (s/2)² |k|²)``.

The sampled maps are band-limited, so ``sinc`` is the right choice in almost all cases: a map put
through simulation and FFT reconstruction comes back unblurred. ``box`` blurs it, ``point`` makes
spoiler gradients ineffective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from mr0core.tensordata import TensorContainer

__all__ = ["SimData", "VoxelShape", "voxel_shape"]

VoxelShapeName = Literal["exact_sinc", "sinc", "box", "point", "gauss"]
_GRID_SHAPES = ("exact_sinc", "sinc", "box", "point")
_CUSTOM_SHAPES = ("sinc", "box", "gauss")

# Logistic edge of the "sinc" shape: centred at 1.005 x Nyquist with slope 2000 per Nyquist, which
# gives 1 / (1 + e^-10) = 0.99995 at the Nyquist frequency and 4.5e-5 at 1.01 x Nyquist. The edge
# sits just outside Nyquist because the outermost k-space line of an even matrix lies exactly on it.
_SINC_EDGE = 1.005
_SINC_SLOPE = 2000.0


@dataclass(frozen=True)
class VoxelShape:
    """The k-space response of a voxel shape, ``(k [..., 3] 1/m, nyquist [3] 1/m) -> [...]``.

    A plain, picklable object (worker processes receive it), not a closure.

    Parameters
    ----------
    name
        ``"exact_sinc"``, ``"sinc"``, ``"box"``, ``"point"`` or ``"gauss"``.
    voxel_size
        Edge length ``[3]`` in m for custom voxels, whose Nyquist frequency is infinite. ``None``
        for grid voxels, which take their size from ``nyquist`` (voxel size = 1 / (2 nyquist)).
    """

    name: str
    voxel_size: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        allowed = _GRID_SHAPES if self.voxel_size is None else _CUSTOM_SHAPES
        if self.name not in allowed:
            kind = "voxel grids" if self.voxel_size is None else "custom voxels"
            raise ValueError(
                f"unknown voxel shape {self.name!r} for {kind}; choose one of {', '.join(allowed)}"
            )

    def __call__(self, k: torch.Tensor, nyquist: torch.Tensor) -> torch.Tensor:
        """Return the response ``[...]`` for dephasing ``k`` ``[..., 3]`` (1/m)."""
        if self.name == "point":
            return torch.ones(k.shape[:-1], dtype=k.dtype, device=k.device)
        if self.voxel_size is not None:
            size = torch.tensor(self.voxel_size, dtype=k.dtype, device=k.device)
            # A custom voxel of edge s is band-limited to 1 / (2 s), like a grid of spacing s.
            nyq = 0.5 / size
        else:
            nyq = nyquist.to(device=k.device, dtype=k.dtype)
        if self.name == "box":
            return torch.sinc(k / (2 * nyq)).prod(dim=-1)
        if self.name == "gauss":
            sigma = size / 2
            return torch.exp(-2 * math.pi**2 * ((k * sigma) ** 2).sum(dim=-1))
        rel = k.abs() / nyq  # nyq may be inf (a 1-voxel axis of a custom phantom): rel is 0 then
        if self.name == "exact_sinc":
            return (rel <= 1).to(k.dtype).prod(dim=-1)
        return torch.sigmoid(_SINC_SLOPE * (_SINC_EDGE - rel)).prod(dim=-1)


def voxel_shape(
    name: str | VoxelShape | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    voxel_size: float | tuple[float, float, float] | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the dephasing function for a voxel shape name (callables pass through)."""
    if not isinstance(name, str):
        return name
    if voxel_size is not None:
        vs = torch.as_tensor(voxel_size, dtype=torch.float64).flatten()
        if vs.numel() == 1:
            vs = vs.expand(3)
        if vs.numel() != 3 or not bool((vs > 0).all()):
            raise ValueError(f"voxel_size must be one or three positive numbers, got {voxel_size}")
        return VoxelShape(name, (float(vs[0]), float(vs[1]), float(vs[2])))
    return VoxelShape(name)


def _check(name: str, value: torch.Tensor, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != shape:
        raise ValueError(f"SimData.{name} has shape {tuple(value.shape)}, expected {shape}")


class _SelectedVoxelMotion:
    """A ``voxel_motion`` restricted to the voxels ``index`` picks (``SimData.select``)."""

    def __init__(self, motion: Callable[[torch.Tensor], torch.Tensor], index: torch.Tensor) -> None:
        self.motion = motion
        self.index = index

    def __call__(self, time: torch.Tensor) -> torch.Tensor:
        """Return ``[N, selected voxels, 3]`` positions in m at ``time`` ``[N]`` (s)."""
        positions = torch.as_tensor(self.motion(time))
        return positions.index_select(1, self.index.to(positions.device))


class MotionAttribute:
    """``phantom_motion`` / ``voxel_motion``: None or a function of time.

    See :mod:`mr0core.sim.motion`.

    Assigning anything else raises :class:`TypeError` naming the attribute.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        return self if obj is None else obj.__dict__.get(self.name)

    def __set__(self, obj: object, value: Any) -> None:
        if value is not None and not callable(value):
            raise TypeError(
                f"{type(obj).__name__}.{self.name} must be a function of time (a tensor of s) or "
                f"None, got {type(value).__name__}"
            )
        obj.__dict__[self.name] = value


class SimData(TensorContainer):
    """Flattened simulation input: one entry per voxel that carries signal.

    Parameters
    ----------
    PD, T1, T2, T2dash, D, B0
        ``[voxels]``: proton density (a.u.), T1, T2 and T2′ (s), diffusion coefficient
        (10⁻³ mm²/s) and off-resonance (Hz).
    B1
        ``[tx channels, voxels]`` relative transmit field (complex for pTx phases).
    coil_sens
        ``[coils, voxels]`` receive sensitivities (complex).
    size
        ``[3]`` physical size of the phantom in m; scales sequences with normalised gradients.
    affine
        ``[4, 4]`` voxel index → RAS+ mm transform of the source grid (NIfTI convention), or
        None where there is no grid (custom voxels). Its position follows MR-zero 1.2, whose
        ``SimData`` takes it between ``size`` and ``voxel_pos``.
    voxel_pos
        ``[voxels, 3]`` voxel positions in m (RAS+, MR-zero's FFT-centred grid convention).
    nyquist
        ``[3]`` Nyquist frequency of the phantom grid in 1/m (``inf`` for custom voxels).
    dephasing_func
        k-space response of the voxel shape, ``(k [..., 3], nyquist [3]) -> [...]``.
    recover_func
        Optional function ``SimData -> phantom`` that undoes ``build()``.
    phantom_motion
        Optional rigid motion ``time [N] (s) -> (rotation [N, 3, 3], offset [N, 3] m)``: a voxel at
        ``p`` is at ``p @ rotation + offset`` (:mod:`mr0core.sim.motion`).
    voxel_motion
        Optional per-voxel motion ``time [N] (s) -> positions [N, voxels, 3] m``; wins over
        ``phantom_motion``.
    tissue_masks
        Optional ``{name: bool [voxels]}``, e.g. which voxels belong to which tissue.

    Notes
    -----
    ``to(device, dtype)``, ``cpu()`` and ``cuda(device=None)`` (:class:`TensorContainer`)
    return new data with every tensor moved (``affine`` and ``tissue_masks`` included); the
    functions (voxel shape, motion, recovery) are shared. ``select(mask)`` picks voxels
    (``[voxels]`` bool mask or indices): the per-voxel maps, positions, masks and a
    ``voxel_motion``'s output follow; ``size``, ``nyquist`` and ``affine`` stay; the selection
    cannot :meth:`recover` a phantom.
    """

    _SELECT_AXES: ClassVar[Mapping[str, int]] = {
        "PD": 0, "T1": 0, "T2": 0, "T2dash": 0, "D": 0, "B0": 0, "B1": 1, "coil_sens": 1,
        "voxel_pos": 0, "tissue_masks": 0,
    }  # fmt: skip
    _SELECT_KEEP: ClassVar[frozenset[str]] = frozenset({"size", "nyquist", "affine"})

    phantom_motion = MotionAttribute()
    voxel_motion = MotionAttribute()

    def __init__(
        self,
        PD: torch.Tensor,
        T1: torch.Tensor,
        T2: torch.Tensor,
        T2dash: torch.Tensor,
        D: torch.Tensor,
        B0: torch.Tensor,
        B1: torch.Tensor,
        coil_sens: torch.Tensor,
        size: torch.Tensor,
        affine: torch.Tensor | None,
        voxel_pos: torch.Tensor,
        nyquist: torch.Tensor,
        dephasing_func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        recover_func: Callable[[SimData], Any] | None = None,
        phantom_motion: Any = None,
        voxel_motion: Any = None,
        tissue_masks: dict[str, torch.Tensor] | None = None,
    ) -> None:
        n = PD.shape[0] if PD.dim() == 1 else -1
        if n < 0:
            raise ValueError(f"SimData.PD must be 1-D [voxels], got shape {tuple(PD.shape)}")
        for name, value in (("T1", T1), ("T2", T2), ("T2dash", T2dash), ("D", D), ("B0", B0)):
            _check(name, value, (n,))
        if B1.dim() != 2 or B1.shape[1] != n:
            raise ValueError(f"SimData.B1 must be [tx channels, {n}], got {tuple(B1.shape)}")
        if coil_sens.dim() != 2 or coil_sens.shape[1] != n:
            raise ValueError(
                f"SimData.coil_sens must be [coils, {n}], got {tuple(coil_sens.shape)}"
            )
        _check("size", size, (3,))
        _check("voxel_pos", voxel_pos, (n, 3))
        _check("nyquist", nyquist, (3,))
        for name, mask in (tissue_masks or {}).items():
            _check(f"tissue_masks[{name!r}]", mask, (n,))
        self.PD = PD
        self.T1 = T1
        self.T2 = T2
        self.T2dash = T2dash
        self.D = D
        self.B0 = B0
        self.B1 = B1
        self.coil_sens = coil_sens
        self.size = size
        self.voxel_pos = voxel_pos
        self.nyquist = nyquist
        self.dephasing_func = dephasing_func
        self.recover_func = recover_func
        self.phantom_motion = phantom_motion
        self.voxel_motion = voxel_motion
        self.tissue_masks = dict(tissue_masks) if tissue_masks else {}
        self.affine = affine

    _TENSORS = (
        "PD",
        "T1",
        "T2",
        "T2dash",
        "D",
        "B0",
        "B1",
        "coil_sens",
        "size",
        "voxel_pos",
        "nyquist",
    )

    @property
    def voxel_count(self) -> int:
        """Number of voxels."""
        return int(self.PD.shape[0])

    @property
    def device(self) -> torch.device:
        """The device of the voxel data (``PD``'s; :meth:`to` puts every tensor there)."""
        return self.PD.device

    def _select_special(self, index: torch.Tensor) -> dict[str, Any]:
        """Voxel motion follows the selection; ``recover`` no longer applies."""
        motion = self.voxel_motion
        return {
            "voxel_motion": None if motion is None else _SelectedVoxelMotion(motion, index),
            "recover_func": None,
        }

    STATE_FORMAT = "mr0core.SimData"
    """The ``format`` entry of :meth:`to_state`."""

    STATE_VERSION = 1
    """The ``version`` entry of :meth:`to_state`."""

    def to_state(self) -> dict[str, Any]:
        """Return the data as plain data that ``torch.load(weights_only=True)`` reads.

        The state holds only CPU tensors (detached), strings, floats, lists and dicts, so a file
        of it cannot carry code; :meth:`from_state` rebuilds the data. The voxel shape is kept by
        name (and voxel size). ``recover_func`` is a function and is *not* kept: the rebuilt
        data simulate the same, but :meth:`recover` raises on them.

        Motion is kept when it is a model of :mod:`mr0core.sim.motion` (``RigidMotion``,
        ``MotionLog``), as its parameters.

        Raises
        ------
        TypeError
            When ``dephasing_func`` is not a :class:`VoxelShape`, or the motion is a function
            other than a motion model (a custom function cannot be written as plain data).
        """
        shape = self.dephasing_func
        if not isinstance(shape, VoxelShape):
            raise TypeError(
                f"SimData.dephasing_func is a {type(shape).__name__}, not a VoxelShape: a custom "
                "function cannot be saved as plain data"
            )
        size = None if shape.voxel_size is None else [float(v) for v in shape.voxel_size]
        motion = None
        if self.voxel_motion is not None or self.phantom_motion is not None:
            from mr0core.sim.motion import motion_spec  # (mr0core.sim imports this module)

            motion = motion_spec(self.phantom_motion, self.voxel_motion)
        return {
            "format": self.STATE_FORMAT,
            "version": self.STATE_VERSION,
            "tensors": {name: getattr(self, name).detach().cpu() for name in self._TENSORS},
            "affine": None if self.affine is None else torch.as_tensor(self.affine).detach().cpu(),
            "tissue_masks": {k: v.detach().cpu() for k, v in self.tissue_masks.items()},
            "voxel_shape": shape.name,
            "voxel_size": size,
            "motion": motion,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SimData:
        """Rebuild data from :meth:`to_state`'s plain data (on the CPU, no ``recover_func``).

        Raises
        ------
        ValueError
            For a state of another format or version, a missing entry, an entry of the wrong
            type, or tensors whose shapes disagree (the message names the entry).
        """
        if not isinstance(state, dict):
            raise ValueError(f"a SimData state is a dict, got {type(state).__name__}")
        if state.get("format") != cls.STATE_FORMAT or state.get("version") != cls.STATE_VERSION:
            raise ValueError(
                f"not a SimData state of version {cls.STATE_VERSION}: format "
                f"{state.get('format')!r}, version {state.get('version')!r}"
            )
        tensors = state.get("tensors")
        if not isinstance(tensors, dict) or set(tensors) != set(cls._TENSORS):
            got = sorted(tensors) if isinstance(tensors, dict) else type(tensors).__name__
            raise ValueError(f"SimData state: tensors must be {list(cls._TENSORS)}, got {got}")
        masks = state.get("tissue_masks")
        if not isinstance(masks, dict) or not all(isinstance(k, str) for k in masks):
            raise ValueError("SimData state: tissue_masks must be a dict with string keys")
        affine = state.get("affine")
        for name, value in [*tensors.items(), *masks.items(), ("affine", affine)]:
            if name == "affine" and value is None:
                continue
            if not isinstance(value, torch.Tensor) or value.device.type != "cpu":
                raise ValueError(f"SimData state: {name!r} is not a CPU tensor")
        size = state.get("voxel_size")
        if size is not None and (
            not isinstance(size, list)
            or len(size) != 3
            or not all(isinstance(v, float) for v in size)
        ):
            raise ValueError(f"SimData state: voxel_size must be None or 3 floats, got {size!r}")
        name = state.get("voxel_shape")
        if not isinstance(name, str):
            raise ValueError(f"SimData state: voxel_shape must be a name, got {name!r}")
        shape = VoxelShape(name, None if size is None else (size[0], size[1], size[2]))
        motion = state.get("motion")
        if motion is not None:
            from mr0core.sim.motion import motion_from_spec  # (mr0core.sim imports this module)

            try:
                motion = motion_from_spec(motion)
            except ValueError as exc:
                raise ValueError(f"SimData state: motion: {exc}") from exc
        return cls(
            **tensors, affine=affine, dephasing_func=shape, tissue_masks=masks,
            phantom_motion=motion,
        )  # fmt: skip

    def recover(self) -> Any:
        """Rebuild the phantom this data was built from (voxels under the threshold are zero)."""
        if self.recover_func is None:
            raise ValueError("this SimData was not built from a phantom; nothing to recover")
        return self.recover_func(self)

    def __repr__(self) -> str:
        return (
            f"SimData({self.voxel_count} voxels, {self.B1.shape[0]} tx, "
            f"{self.coil_sens.shape[0]} coils, size={[round(float(s), 4) for s in self.size]} m, "
            f"device={self.device})"
        )

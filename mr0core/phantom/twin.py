"""Quantitative maps of a subject → a simulation twin (:meth:`TissueDict.from_maps`).

Input is a set of NIfTI maps of one subject (PD or M0, T1, T2, optionally T2*, ADC, B0 field map,
B1+ map), given one by one or found in a directory by their BIDS suffixes:

=========  ==========================================  ======================================
property   BIDS suffixes (``sub-01_<suffix>.nii.gz``)  unit we simulate with
=========  ==========================================  ======================================
PD         ``PDmap``, ``M0map``, ``S0map``              a.u., scaled so the 99.5th pct. is 1
T1         ``T1map`` (or ``R1map``, inverted)           s
T2         ``T2map`` (or ``R2map``)                     s
T2*        ``T2starmap`` (or ``R2starmap``)             s, turned into T2′
ADC        ``ADC``, ``ADCmap``, ``MD``                  10⁻³ mm²/s
B0         ``B0map``, ``fieldmap``                      Hz
B1+        ``TB1map``, ``B1map``                        relative (1 = nominal)
=========  ==========================================  ======================================

Units are checked, because maps come in whatever unit the fitting tool liked. A BIDS sidecar's
``"Units"`` is used when present; otherwise the value range decides: a T1 or T2 map with a median
above 10 is in ms, an ADC median below 0.05 is in mm²/s, a B1 median above 10 is in percent. A
conversion guessed from the values is announced with a warning; one the sidecar states is not.
``T2′`` follows from ``1/T2′ = 1/T2* − 1/T2`` (inf where T2* ≥ T2). Voxels without PD or
without a valid T1/T2 (≤ 0 or not finite) are left out.
"""

from __future__ import annotations

import json
import math
import warnings
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from .nifti import PhantomError, PhantomSystem
from .voxel_grid import VoxelGridPhantom

__all__ = ["from_maps"]

MapArg = str | PathLike[str] | np.ndarray | None

_BIDS_SUFFIXES: dict[str, tuple[str, ...]] = {
    "PD": ("PDmap", "M0map", "S0map", "PD", "M0"),
    "T1": ("T1map",),
    "R1": ("R1map",),
    "T2": ("T2map",),
    "R2": ("R2map",),
    "T2star": ("T2starmap",),
    "R2star": ("R2starmap",),
    "ADC": ("ADC", "ADCmap", "MD"),
    "B0": ("B0map", "fieldmap"),
    "B1": ("TB1map", "B1map"),
}
_NIFTI_EXT = (".nii.gz", ".nii")


def _find_bids(directory: Path) -> dict[str, Path]:
    """Map property → file for the NIfTIs in ``directory`` with a known BIDS suffix."""
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        name = path.name
        ext = next((e for e in _NIFTI_EXT if name.endswith(e)), None)
        if ext is None or not path.is_file():
            continue
        suffix = name[: -len(ext)].rsplit("_", 1)[-1]
        for prop, suffixes in _BIDS_SUFFIXES.items():
            if suffix in suffixes:
                if prop in found:
                    raise PhantomError(
                        f"{directory}: two {prop} maps ({found[prop].name}, {name}); "
                        "pass the one to use explicitly"
                    )
                found[prop] = path
    return found


def _sidecar(path: Path) -> dict[str, Any]:
    ext = next((e for e in _NIFTI_EXT if path.name.endswith(e)), "")
    side = path.with_name(path.name[: -len(ext)] + ".json") if ext else None
    if side is None or not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PhantomError(f"{side}: not valid JSON ({e})") from e
    return data if isinstance(data, dict) else {}


class _Grid:
    """Loads maps onto one RAS+ grid and checks they agree."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.affine: np.ndarray | None = None
        self.first = ""

    def load(self, name: str, value: MapArg) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(value, np.ndarray):
            data, meta = value.astype(np.float32), {}
            if self.shape is not None and data.shape[:3] != self.shape:
                raise PhantomError(f"{name}: array shape {data.shape} differs from {self.shape}")
        else:
            path = Path(fspath(value))  # type: ignore[arg-type]
            if not path.is_file():
                raise FileNotFoundError(f"{name} map not found: {path}")
            img = nib.load(path)
            if not isinstance(img, nib.spatialimages.SpatialImage):
                raise PhantomError(f"{name} map {path.name}: not an image volume")
            if len(img.shape) == 4 and img.shape[3] == 1:
                img = img.slicer[..., 0]
            if len(img.shape) == 2:
                img = nib.Nifti1Image(np.asarray(img.dataobj)[..., None], img.affine, img.header)
            if len(img.shape) != 3:
                raise PhantomError(
                    f"{name} map {path.name}: expected a 3-D volume, got {img.shape}"
                )
            canon = nib.as_closest_canonical(img)
            data = np.asarray(canon.get_fdata(dtype=np.float32))
            meta = _sidecar(path)
            affine = np.asarray(canon.affine, dtype=np.float64)
            if self.affine is None:
                self.affine = affine
            elif not np.allclose(affine, self.affine, atol=1e-3):
                raise PhantomError(
                    f"{name} map {path.name}: its affine differs from that of {self.first}; "
                    "resample the maps onto one grid first"
                )
            if self.shape is not None and data.shape != self.shape:
                raise PhantomError(
                    f"{name} map {path.name}: grid {data.shape} differs from {self.first} "
                    f"{self.shape}; resample the maps onto one grid first"
                )
        if self.shape is None:
            self.shape, self.first = data.shape[:3], name
        return data, meta


def _median(data: np.ndarray, mask: np.ndarray) -> float:
    vals = data[mask & np.isfinite(data)]
    return float(np.median(vals)) if vals.size else math.nan


def _unit(meta: dict[str, Any]) -> str:
    unit = meta.get("Units", meta.get("units", ""))
    return unit.strip() if isinstance(unit, str) else ""


def _to_seconds(name: str, data: np.ndarray, meta: dict[str, Any], mask: np.ndarray) -> np.ndarray:
    unit = _unit(meta)
    if unit == "ms":
        return data / 1000.0
    if unit == "" and _median(data, mask) > 10:
        warnings.warn(
            f"{name} map looks like milliseconds (median {_median(data, mask):.4g} > 10, no "
            "sidecar Units); converting to s",
            stacklevel=3,
        )
        return data / 1000.0
    if unit not in ("", "s"):
        raise PhantomError(f"{name} map: unsupported unit {unit!r} (expected s or ms)")
    return data


def _rate_to_time(
    name: str, data: np.ndarray, meta: dict[str, Any], mask: np.ndarray
) -> np.ndarray:
    unit = _unit(meta)
    if unit in ("1/ms", "ms-1", "ms^-1"):
        data = data * 1000.0
    elif unit not in ("", "1/s", "s-1", "s^-1", "Hz"):
        raise PhantomError(f"{name} map: unsupported unit {unit!r} (expected 1/s)")
    with np.errstate(divide="ignore"):
        return np.where(data > 0, 1.0 / data, np.inf).astype(np.float32)


def from_maps(
    directory: str | PathLike[str] | None = None,
    *,
    PD: MapArg = None,
    T1: MapArg = None,
    T2: MapArg = None,
    T2star: MapArg = None,
    ADC: MapArg = None,
    B0: MapArg = None,
    B1: MapArg = None,
    T2dash: float = math.inf,
    D: float = 1.0,
    name: str = "subject",
    field_strength: float | None = None,
    size: Any = None,
) -> Any:
    """Build a one-tissue :class:`~mr0core.phantom.TissueDict` from a subject's maps.

    Parameters
    ----------
    directory
        Optional folder whose NIfTIs are picked up by BIDS suffix (explicit arguments win).
    PD, T1, T2, T2star, ADC, B0, B1
        NIfTI paths (or ``[x, y, z]`` arrays, then ``size`` is needed) of the maps. PD and T1 and T2
        are required (R1/R2 maps in a directory count as T1/T2).
    T2dash
        T2′ in s where no T2* map is given.
    D
        Diffusion coefficient (10⁻³ mm²/s) where no ADC map is given.
    name
        Tissue name in the result.
    field_strength
        B0 in T; default: the sidecars' ``MagneticFieldStrength``, else 3 T.
    size
        ``[3]`` size in m, only for array input.

    Returns
    -------
    TissueDict
        ``{name: VoxelGridPhantom}`` on the maps' RAS+ grid.
    """
    from .tissue_dict import TissueDict

    given: dict[str, MapArg] = {"PD": PD, "T1": T1, "T2": T2, "T2star": T2star, "ADC": ADC}
    given |= {"B0": B0, "B1": B1}
    found: dict[str, MapArg] = {}
    if directory is not None:
        d = Path(fspath(directory))
        if not d.is_dir():
            raise FileNotFoundError(f"map directory not found: {d}")
        found = dict(_find_bids(d))
    maps = {k: v for k, v in found.items() if given.get(k) is None} | {
        k: v for k, v in given.items() if v is not None
    }
    for time, rate in (("T1", "R1"), ("T2", "R2"), ("T2star", "R2star")):
        if time in maps and rate in maps:
            maps.pop(rate)
    missing = [k for k in ("PD", "T1", "T2") if k not in maps and k.replace("T", "R") not in maps]
    if missing:
        raise PhantomError(
            f"from_maps: missing {', '.join(missing)} map(s)"
            + (f" (none found in {directory} by BIDS suffix)" if directory is not None else "")
        )
    grid = _Grid()
    loaded = {k: grid.load(k, v) for k, v in maps.items()}
    pd, _ = loaded["PD"]
    pd = np.nan_to_num(pd, nan=0.0, posinf=0.0, neginf=0.0)
    mask = pd > 0
    metas = [m for _, m in loaded.values()]

    def times(key: str, rate: str) -> np.ndarray:
        if key in loaded:
            return _to_seconds(key, *loaded[key], mask)
        return _rate_to_time(rate, *loaded[rate], mask)

    t1 = times("T1", "R1")
    t2 = times("T2", "R2")
    valid = mask & np.isfinite(t1) & (t1 > 0) & np.isfinite(t2) & (t2 > 0)
    dropped = int(mask.sum() - valid.sum())
    if dropped:
        warnings.warn(
            f"from_maps: {dropped} voxel(s) with PD > 0 but no valid T1/T2 are left out",
            stacklevel=2,
        )
    scale = np.percentile(pd[valid], 99.5) if valid.any() else 1.0
    pd = np.where(valid, pd / (scale if scale > 0 else 1.0), 0.0).astype(np.float32)
    t1 = np.where(valid, t1, 1.0).astype(np.float32)
    t2 = np.where(valid, t2, 0.1).astype(np.float32)

    if "T2star" in loaded or "R2star" in loaded:
        t2s = times("T2star", "R2star")
        with np.errstate(divide="ignore", invalid="ignore"):
            r2d = 1.0 / t2s - 1.0 / t2  # R2' in 1/s
            t2d = np.where(np.isfinite(r2d) & (r2d > 0), 1.0 / r2d, np.inf)
    else:
        t2d = np.full(pd.shape, T2dash)

    if "ADC" in loaded:
        adc, meta = loaded["ADC"]
        unit = _unit(meta)
        if unit in ("mm^2/s", "mm2/s"):
            adc = adc * 1000.0
        elif unit in ("m^2/s", "m2/s"):
            adc = adc * 1e9
        elif unit == "" and _median(adc, valid) < 0.05:
            warnings.warn("ADC map looks like mm^2/s; converting to 10^-3 mm^2/s", stacklevel=2)
            adc = adc * 1000.0
        elif unit not in ("", "10^-3 mm^2/s", "um^2/ms", "µm^2/ms"):
            raise PhantomError(f"ADC map: unsupported unit {unit!r} (expected mm^2/s)")
        adc = np.clip(np.nan_to_num(adc), 0.0, None)
    else:
        adc = np.full(pd.shape, D)

    if "B0" in loaded:
        b0, meta = loaded["B0"]
        unit = _unit(meta)
        if unit in ("rad/s", "rad s-1"):
            b0 = b0 / (2 * math.pi)
        elif unit not in ("", "Hz"):
            raise PhantomError(f"B0 map: unsupported unit {unit!r} (expected Hz or rad/s)")
        b0 = np.nan_to_num(b0)
    else:
        b0 = np.zeros(pd.shape)

    if "B1" in loaded:
        b1, meta = loaded["B1"]
        unit = _unit(meta)
        if unit in ("percent", "%"):
            b1 = b1 / 100.0
        elif unit == "" and _median(b1, valid) > 10:
            warnings.warn(
                "B1 map looks like percent; converting to a relative factor", stacklevel=2
            )
            b1 = b1 / 100.0
        elif unit not in ("", "rel", "1"):
            raise PhantomError(f"B1 map: unsupported unit {unit!r} (expected percent or rel)")
        b1 = np.nan_to_num(b1, nan=1.0)
    else:
        b1 = np.ones(pd.shape)

    fields = [m["MagneticFieldStrength"] for m in metas if "MagneticFieldStrength" in m]
    b0_tesla = field_strength or (float(fields[0]) if fields else 3.0)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    if grid.affine is not None:
        affine = grid.affine
        phantom = VoxelGridPhantom(
            t(pd), t(t1), t(t2), t(t2d), t(adc), t(b0), t(b1)[None], torch.ones(1, *pd.shape),
            affine=affine,
        )  # fmt: skip
    else:
        if size is None:
            raise PhantomError("from_maps: arrays carry no geometry; pass size=[x, y, z] in m")
        phantom = VoxelGridPhantom(
            t(pd), t(t1), t(t2), t(t2d), t(adc), t(b0), t(b1)[None], torch.ones(1, *pd.shape), size
        )  # fmt: skip
    return TissueDict({name: phantom}, PhantomSystem(B0=float(b0_tesla)))

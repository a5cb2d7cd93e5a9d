"""Built-in phantoms at numpy level: an ICBM 2009a brain and the MR Shepp–Logan phantom.

Both functions return a :class:`SegmentedPhantom`: one partial-volume density map per tissue,
scalar relaxation/diffusion parameters per tissue, and the field maps (off-resonance, B1+,
receive sensitivities) on the same voxel grid.  Nothing here depends on the phantom classes of
:mod:`mr0core.phantom`; converting to them is left to the caller.

Conventions
-----------
* Arrays are indexed ``[x, y, z]``; the affine maps a voxel index to RAS+ millimetres at the
  voxel *centre* (index ``i`` covers ``[i - 1/2, i + 1/2]``), like NIfTI.
* World coordinates are centred on the field of view: the centre of the in-plane FOV and of the
  slab lies at (0, 0, 0) (up to half a voxel).
* Units: T1, T2, T2' in s; ADC in 10⁻³ mm²/s (= µm²/ms); dB0 in Hz; B1 relative (1 = nominal).

Sources of the tissue values are cited where the values are defined (module constants below).
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import nibabel as nib
import numpy as np

__all__ = [
    "BRAIN_FOV_CENTRE_MNI_MM",
    "BRAIN_FOV_MM",
    "SHEPP_LOGAN_FOV_MM",
    "SLICE_THICKNESS_MM",
    "SegmentedPhantom",
    "brain",
    "brain_ground_truth",
    "shepp_logan",
]


@dataclass
class SegmentedPhantom:
    """A segmented (multi-tissue, partial-volume) phantom on a Cartesian voxel grid.

    Every tissue has its own density map and one scalar value per parameter; the field maps
    are shared by all tissues.

    Attributes
    ----------
    density : dict[str, np.ndarray]
        Tissue name -> [x, y, z] float32 map: partial-volume fraction of the voxel occupied by
        the tissue times its relative proton density (PD).  Non-negative; the fractions (without
        PD) of all tissues add up to at most 1 per voxel.
    T1 : dict[str, float]
        Tissue name -> longitudinal relaxation time in s.
    T2 : dict[str, float]
        Tissue name -> transverse relaxation time in s.
    T2dash : dict[str, float]
        Tissue name -> reversible dephasing time T2' in s (1/T2* = 1/T2 + 1/T2').
    ADC : dict[str, float]
        Tissue name -> apparent diffusion coefficient in 10⁻³ mm²/s.
    dB0 : np.ndarray
        [x, y, z] float32 off-resonance in Hz, shared by all tissues.
    B1_tx : np.ndarray
        [tx channels, x, y, z] float32 relative transmit field B1+ (1 = nominal flip angle).
    B1_rx : np.ndarray
        [coils, x, y, z] complex64 relative receive sensitivities.
    affine : np.ndarray
        [4, 4] float64, voxel index -> RAS+ mm at voxel centres.
    field_T : float
        Main field B0 in tesla the parameters belong to.
    """

    density: dict[str, np.ndarray]
    T1: dict[str, float]
    T2: dict[str, float]
    T2dash: dict[str, float]
    ADC: dict[str, float]
    dB0: np.ndarray
    B1_tx: np.ndarray
    B1_rx: np.ndarray
    affine: np.ndarray
    field_T: float

    def __post_init__(self) -> None:
        names = set(self.density)
        for label, table in (("T1", self.T1), ("T2", self.T2), ("T2dash", self.T2dash)):
            if set(table) != names:
                raise ValueError(f"{label} tissues {sorted(table)} != density {sorted(names)}")
        if set(self.ADC) != names:
            raise ValueError(f"ADC tissues {sorted(self.ADC)} != density {sorted(names)}")
        shape = self.dB0.shape
        if len(shape) != 3:
            raise ValueError(f"dB0 must be [x, y, z], got shape {shape}")
        for name, d in self.density.items():
            if d.shape != shape:
                raise ValueError(f"density[{name!r}] has shape {d.shape}, dB0 has {shape}")
        if self.B1_tx.ndim != 4 or self.B1_tx.shape[1:] != shape:
            raise ValueError(f"B1_tx must be [channels, *{shape}], got {self.B1_tx.shape}")
        if self.B1_rx.ndim != 4 or self.B1_rx.shape[1:] != shape:
            raise ValueError(f"B1_rx must be [coils, *{shape}], got {self.B1_rx.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def tissues(self) -> list[str]:
        """Tissue names, in the order of :attr:`density`."""
        return list(self.density)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape (x, y, z) in voxels."""
        x, y, z = self.dB0.shape
        return (x, y, z)

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel edge lengths (x, y, z) in mm, from the affine."""
        result: np.ndarray = np.linalg.norm(self.affine[:3, :3], axis=0)
        return result


# --------------------------------------------------------------------------------------------
# Shared constants and helpers
# --------------------------------------------------------------------------------------------

#: Slice thickness of both built-in phantoms in mm (typical clinical 2-D slice).  For the brain
#: the thickness shrinks when ``slices`` of this thickness would not fit in the brain.
SLICE_THICKNESS_MM = 5.0

_MAX_SIZE = 512
_MAX_COILS = 64


def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """Return ``value`` as int if it is an integer in ``lo..hi``, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in {lo}..{hi}, got {value}")
    return int(value)


def _parse_field(field: str | float) -> tuple[str, float]:
    """Normalise a field-strength argument to ("3T", 3.0) or ("1.5T", 1.5).

    Accepts "3T", "1.5T", "3", "1.5" (case-insensitive, optional spaces) and the numbers.
    """
    text = str(field).strip().upper()
    if text.endswith("T"):
        text = text[:-1].strip()
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value == 3.0:
        return "3T", 3.0
    if value == 1.5:
        return "1.5T", 1.5
    raise ValueError(f"field must be '3T' or '1.5T' (or '3', '1.5'), got {field!r}")


def _centred_affine(n: tuple[int, int, int], step: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned affine with voxel size ``step`` whose voxel centres are centred on 0."""
    affine = np.eye(4)
    for ax in range(3):
        affine[ax, ax] = step[ax]
        affine[ax, 3] = -0.5 * (n[ax] - 1) * step[ax]
    return affine


def _centres(n: int, step: float) -> np.ndarray:
    """Voxel-centre coordinates (mm) of ``n`` voxels of size ``step`` centred on 0."""
    return (np.arange(n) - 0.5 * (n - 1)) * step


def _overlap_matrix(
    dst_lo: float, dst_step: float, n_dst: int, src_lo: float, src_step: float, n_src: int
) -> np.ndarray:
    """1-D area-weighting matrix between two regular grids of cells.

    ``W[j, i]`` is the length of the overlap of destination cell ``j`` and source cell ``i``
    divided by the destination cell length, so ``W @ f`` is the exact cell average of a
    piecewise-constant source ``f`` (zero outside the source grid).

    Parameters
    ----------
    dst_lo, src_lo : float
        Lower edge of the first destination / source cell (mm).
    dst_step, src_step : float
        Cell lengths (mm).
    n_dst, n_src : int
        Numbers of cells.

    Returns
    -------
    np.ndarray
        [n_dst, n_src] float64.
    """
    d0 = dst_lo + dst_step * np.arange(n_dst)
    s0 = src_lo + src_step * np.arange(n_src)
    overlap = np.minimum.outer(d0 + dst_step, s0 + src_step) - np.maximum.outer(d0, s0)
    result: np.ndarray = np.clip(overlap, 0.0, None) / dst_step
    return result


def _receive_coils(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, coils: int, fov: float
) -> np.ndarray:
    """Receive sensitivities of ``coils`` loops equally spaced on a circle around the object.

    Coil ``k`` sits at angle ``φ_k = π/2 + 2πk/N`` (coil 0 anterior) on a circle of radius
    ``R = 0.55 FOV`` in the axial plane z = 0.  Its magnitude falls off like a loop seen from
    a distance, ``d² / (|r - p_k|² + d²)`` with ``d = 0.25 FOV`` (Biot–Savart-like), and its
    phase is ``φ_k`` plus the angle under which the coil sees the voxel (relative to its inward
    normal), which varies smoothly across the object.  The maps are scaled so that the
    root-sum-of-squares over coils is exactly 1 at the FOV centre.  One coil gives all ones.

    Parameters
    ----------
    x, y, z : np.ndarray
        1-D voxel-centre coordinates (mm, FOV-centred) along each axis.
    coils : int
        Number of coils.
    fov : float
        In-plane field of view (mm) setting R and d.

    Returns
    -------
    np.ndarray
        [coils, x, y, z] complex64.
    """
    shape = (coils, x.size, y.size, z.size)
    if coils == 1:
        return np.ones(shape, dtype=np.complex64)
    radius, d = 0.55 * fov, 0.25 * fov
    gx, gy = x[:, None], y[None, :]
    z2 = (z**2)[None, None, :]
    out = np.empty(shape, dtype=np.complex64)
    centre_mag = d**2 / (radius**2 + d**2)
    scale = 1.0 / (math.sqrt(coils) * centre_mag)
    for k in range(coils):
        phi = 0.5 * math.pi + 2.0 * math.pi * k / coils
        nx, ny = math.cos(phi), math.sin(phi)  # outward normal; coil at radius * (nx, ny, 0)
        dx, dy = gx - radius * nx, gy - radius * ny
        mag = (scale * d**2) / ((dx**2 + dy**2)[:, :, None] + z2 + d**2)
        inward = -(dx * nx + dy * ny)
        tangential = -dx * ny + dy * nx
        phase = np.exp(1j * (phi + np.arctan2(tangential, inward)))
        out[k] = mag * phase[:, :, None]
    return out


# --------------------------------------------------------------------------------------------
# Brain (ICBM 2009a segmentation from ASLDRO)
# --------------------------------------------------------------------------------------------

#: In-plane field of view of :func:`brain` in mm (square; typical clinical head FOV).  The
#: segmented brain spans 145 mm (L-R) x 181 mm (A-P), which leaves room for the scalp.
BRAIN_FOV_MM = 220.0

#: MNI (ICBM 2009a, RAS+ mm) position of the world origin of :func:`brain`: x, y = centre of
#: the brain's bounding box (x -72..72, y -107..73 mm); z = +18 mm, the level of the bodies of
#: the lateral ventricles, where the default single slice is centred.
BRAIN_FOV_CENTRE_MNI_MM = (0.0, -17.0, 18.0)

_BRAIN_DATA = ("data", "brain")
_BRAIN_SEG_FILE = "icbm2009a_seg.nii.gz"
_BRAIN_JSON_FILE = "tissues.json"

#: Relative proton density (water content).  The ASLDRO "m0" values (GM 74.6, WM 64.7,
#: CSF 68.0 a.u.) put CSF below GM, which is not a proton density, so literature water
#: contents are used: GM ≈ 0.80, WM ≈ 0.70 (Neeb, Zilles & Shah, NeuroImage 31:1156, 2006,
#: absolute water content mapping), CSF ≈ 1.0 (essentially pure water).
_BRAIN_PD = {"gm": 0.8, "wm": 0.7, "csf": 1.0}

#: ADC in 10⁻³ mm²/s.  GM 0.8 and WM 0.7: adult values of Helenius et al., "Diffusion-weighted
#: MR imaging in normal human brains in various age groups", AJNR 23:194–199 (2002) (rounded).
#: CSF 3.0: free water at 37 °C (Holz, Heil & Sacco, PCCP 2:4740–4742, 2000).
_BRAIN_ADC = {"gm": 0.8, "wm": 0.7, "csf": 3.0}

#: T2* (s) of GM and WM: Peters et al., "T2* measurements in human brain at 1.5, 3 and 7 T",
#: Magn Reson Imaging 25:748–753 (2007): GM 84 / 66 ms, WM 66 / 53 ms at 1.5 / 3 T (the same
#: values ASLDRO uses).  Used for T2' = 1/(1/T2* - 1/T2) where no other T2* is given.
_T2STAR_PETERS = {"3T": {"gm": 0.066, "wm": 0.053}, "1.5T": {"gm": 0.084, "wm": 0.066}}

#: CSF T2' (s): derived from ASLDRO's CSF T2*/T2 (3 T: 0.2/0.3 s, 1.5 T: 0.3/0.4 s).
_T2DASH_CSF = {"3T": 0.6, "1.5T": 1.2}


def _t2dash(t2star: float, t2: float) -> float:
    """T2' from 1/T2' = 1/T2* - 1/T2 (requires T2* < T2)."""
    return 1.0 / (1.0 / t2star - 1.0 / t2)


def _data_file(name: str) -> bytes:
    """Bytes of a file in ``mr0core/data/brain`` (works from a wheel or a zip too)."""
    node = resources.files("mr0core")
    for part in (*_BRAIN_DATA, name):
        node = node.joinpath(part)
    return node.read_bytes()


@lru_cache(maxsize=1)
def _brain_source() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Load the packaged segmentation (read-only uint8 [x, y, z]), its affine and the JSON."""
    img = nib.Nifti1Image.from_bytes(gzip.decompress(_data_file(_BRAIN_SEG_FILE)))
    seg = np.asarray(img.dataobj, dtype=np.uint8)
    seg.setflags(write=False)
    meta = json.loads(_data_file(_BRAIN_JSON_FILE))
    affine = np.asarray(meta["affine"], dtype=np.float64)
    if not np.allclose(affine, img.affine):
        raise ValueError("brain data: NIfTI affine and tissues.json disagree")
    if not np.allclose(np.abs(affine[:3, :3]), np.eye(3)):
        raise ValueError("brain data: expected an axis-aligned 1 mm RAS+ grid")
    return seg, affine, meta


def brain_ground_truth(field: str = "3T") -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Return the brain's 1 mm label map and the source's per-tissue values (ASL DRO truth).

    Parameters
    ----------
    field : str
        "3T" or "1.5T" (as :func:`brain`).

    Returns
    -------
    seg : np.ndarray
        Read-only uint8 [x, y, z] labels (0 background; see ``info["labels"]``), 1 mm.
    affine : np.ndarray
        [4, 4] voxel index -> MNI RAS+ mm at voxel centres.
    info : dict
        ``"labels"`` (tissue -> label), ``"tissues"`` (tissue -> ``T1``, ``T2``, ``T2star`` in s,
        ``M0`` in a.u., ``perfusion_rate`` in ml/100 g/min, ``transit_time`` in s), ``"T1_blood"``
        (s), ``"lambda_blood_brain"`` (ml/g), ``"B0_T"`` (T), ``"source"``.
    """
    seg, affine, meta = _brain_source()
    key, _ = _parse_field(field)
    values = meta["fields"][key]
    info = {
        "labels": dict(meta["labels"]),
        "tissues": {t: dict(v) for t, v in values["tissues"].items()},
        "T1_blood": float(values["T1_blood"]),
        "lambda_blood_brain": float(values["lambda_blood_brain"]),
        "B0_T": float(values["B0_T"]),
        "source": meta["source"],
    }
    return seg, affine.copy(), info


def _gauss(u: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """``exp(-(u - centre)² / (2 σ²))``, elementwise."""
    return np.exp(-((u - centre) ** 2) / (2.0 * sigma**2))


def _brain_db0(x: np.ndarray, y: np.ndarray, z: np.ndarray, b0: float) -> np.ndarray:
    """Smooth, deterministic off-resonance model (Hz) at MNI positions (mm).

    ``x``, ``y``, ``z`` are 1-D voxel-centre coordinates; the result is [x, y, z] float32.  The
    model is a residual low-order shim term (a few Hz) plus two susceptibility-like bumps:
    +80 Hz (Gaussian, σ = 20 mm) centred below the frontal lobes near the frontal sinus at
    MNI (0, 55, -10) mm, and -50 Hz (σ = 18 mm) at each temporal lobe near the ear canals,
    (±48, -20, -25) mm.  Amplitudes are for 3 T and scale linearly with B0 (susceptibility
    shifts ∝ B0).  At the default slice this gives about -10..+31 Hz at 3 T.
    """
    k = b0 / 3.0
    gx, gy = x[:, None], y[None, :]
    yc = (gy - BRAIN_FOV_CENTRE_MNI_MM[1]) / 100.0
    shim_xy = k * (4.0 * yc + 5.0 * ((gx / 100.0) ** 2 - yc**2))
    shim_z = k * 3.0 * z / 100.0
    frontal_xy = k * 80.0 * _gauss(gx, 0.0, 20.0) * _gauss(gy, 55.0, 20.0)
    temporal_xy = k * -50.0 * (_gauss(gx, -48.0, 18.0) + _gauss(gx, 48.0, 18.0))
    temporal_xy = temporal_xy * _gauss(gy, -20.0, 18.0)

    def f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)

    out = f32(shim_xy)[:, :, None] + f32(shim_z)
    out += f32(frontal_xy)[:, :, None] * f32(_gauss(z, -10.0, 20.0))
    out += f32(temporal_xy)[:, :, None] * f32(_gauss(z, -25.0, 18.0))
    result: np.ndarray = out
    return result


#: Central-brightening amplitude A of the B1+ model per field (relative).  At 3 T a quadrature
#: head/body transmit gives roughly ±15–20 % B1+ with a bright centre (dielectric/standing-wave
#: effect; e.g. Sled & Pike, IEEE TMI 17:653–662, 1998); at 1.5 T the effect is much weaker.
_B1_AMPLITUDE = {"3T": 0.18, "1.5T": 0.05}


def _brain_b1(x: np.ndarray, y: np.ndarray, z: np.ndarray, field: str) -> np.ndarray:
    """Smooth B1+ (relative), ``1 - A + 2A exp(-3 ρ²)``, at MNI positions (mm).

    ``x``, ``y``, ``z`` are 1-D voxel-centre coordinates; the result is [x, y, z] float32.  ρ is
    the ellipsoidal radius about the head centre (MNI (0, -17, 5) mm) with semi-axes
    (80, 100, 85) mm, roughly the head including scalp.  The centre gets 1 + A, the head
    surface ≈ 1 - 0.9 A.
    """
    ex = np.exp(-3.0 * (x / 80.0) ** 2)[:, None, None]
    ey = np.exp(-3.0 * ((y + 17.0) / 100.0) ** 2)[None, :, None]
    ez = np.exp(-3.0 * ((z - 5.0) / 85.0) ** 2)[None, None, :]
    a = _B1_AMPLITUDE[field]
    return (1.0 - a + 2.0 * a * (ex * ey * ez)).astype(np.float32)


def brain(size: int = 64, slices: int = 1, field: str = "3T", coils: int = 1) -> SegmentedPhantom:
    """Brain phantom from the 1 mm ICBM 2009a segmentation shipped with ASLDRO.

    Three tissues, ``"gm"``, ``"wm"``, ``"csf"``.  The packaged uint8 segmentation (see
    ``mr0core/data/brain/README.md``) is area-averaged onto the target grid: each tissue's
    one-hot mask is multiplied along every axis by an exact 1-D overlap matrix, so the result
    is the fraction of each target voxel covered by that tissue (exact for any non-integer
    resampling factor; tissue volumes are preserved).

    Geometry
    --------
    * In-plane: square FOV of :data:`BRAIN_FOV_MM` (220 mm) centred on the brain's bounding box
      (MNI x = 0, y = -17 mm), ``size x size`` voxels of ``220/size`` mm.
    * Through-plane: ``slices`` contiguous axial slices of :data:`SLICE_THICKNESS_MM` (5 mm),
      thinner (``154 mm / slices``) when 5 mm slices would not fit in the brain's 154 mm
      height (so at most 154 slices of 1 mm).  The slab is centred at MNI z = +18 mm (bodies
      of the lateral ventricles, a representative mid-brain slice), shifted as little as
      needed to stay inside the brain.  ``slices=1`` averages MNI z = 15.5..20.5 mm.
    * World coordinates: RAS+ mm relative to the FOV centre, i.e. MNI minus
      (0, -17, z_slab_centre); voxel centres; voxel size (220/size, 220/size, thickness).

    Tissue parameters
    -----------------
    * T1, T2: ASLDRO ground truth for the requested field (3 T: T1 GM 1.33, WM 0.83, CSF 3.0 s;
      T2 GM 0.08, WM 0.11, CSF 0.3 s. 1.5 T: T1 1.10 / 0.56 / 2.06 s; T2 0.092 / 0.082 /
      0.4 s).  Note that ASLDRO's 3 T T2 of GM is shorter than that of WM, unlike most
      measurements; the values are kept as shipped.
    * T2': 1/T2' = 1/T2* - 1/T2 with ASLDRO's T2* (which are the values of Peters et al.
      2007 for GM/WM): 3 T GM 0.377, WM 0.102, CSF 0.6 s; 1.5 T GM 0.966, WM 0.338,
      CSF 1.2 s.  Should a source T2* not be shorter than T2, the Shepp–Logan T2' of the
      tissue is used instead.
    * PD: GM 0.8, WM 0.7, CSF 1.0 (water content, Neeb et al. 2006); ASLDRO's m0 is not used.
    * ADC (10⁻³ mm²/s): GM 0.8, WM 0.7 (Helenius et al. 2002), CSF 3.0 (Holz et al. 2000).

    Fields
    ------
    * dB0: smooth polynomial plus frontal-sinus and temporal susceptibility bumps, a few tens
      of Hz at 3 T and half that at 1.5 T (deterministic).
    * B1_tx: one channel, central brightening ±18 % at 3 T, ±5 % at 1.5 T, values around 1.
    * B1_rx: ``coils`` loops on a circle around the head; see :func:`_receive_coils`.

    Parameters
    ----------
    size : int
        In-plane matrix size, 4..512.
    slices : int
        Number of axial slices, 1..154.
    field : str
        "3T" or "1.5T" (also "3", "1.5", case-insensitive).
    coils : int
        Number of receive coils, 1..64.

    Returns
    -------
    SegmentedPhantom
        Maps of shape [size, size, slices] ([coils, ...] for B1_rx, [1, ...] for B1_tx).

    Raises
    ------
    ValueError
        For arguments out of range or an unknown field strength.
    """
    seg, src_affine, meta = _brain_source()
    size = _check_int("size", size, 4, _MAX_SIZE)
    coils = _check_int("coils", coils, 1, _MAX_COILS)
    slices = _check_int("slices", slices, 1, seg.shape[2])
    key, b0 = _parse_field(field)

    # source cell edges (1 mm voxels, affine gives the centre of voxel 0)
    src_lo = src_affine[:3, 3] - 0.5
    z_lo, z_hi = src_lo[2], src_lo[2] + seg.shape[2]
    thickness = min(SLICE_THICKNESS_MM, (z_hi - z_lo) / slices)
    slab = slices * thickness
    zc = min(max(BRAIN_FOV_CENTRE_MNI_MM[2], z_lo + 0.5 * slab), z_hi - 0.5 * slab)
    centre = np.array([BRAIN_FOV_CENTRE_MNI_MM[0], BRAIN_FOV_CENTRE_MNI_MM[1], zc])
    step = BRAIN_FOV_MM / size

    w = [
        _overlap_matrix(centre[ax] - 0.5 * n * st, st, n, src_lo[ax], 1.0, seg.shape[ax])
        for ax, n, st in ((0, size, step), (1, size, step), (2, slices, thickness))
    ]
    zcols = np.flatnonzero(w[2].any(axis=0))
    sub = seg[:, :, zcols]
    wz = w[2][:, zcols]

    labels: dict[str, int] = meta["labels"]
    density: dict[str, np.ndarray] = {}
    for tissue in ("gm", "wm", "csf"):
        mask = (sub == labels[tissue]).astype(np.float64)
        frac = np.tensordot(mask, wz, axes=([2], [1]))  # [sx, sy, slices]
        frac = np.tensordot(w[0], frac, axes=([1], [0]))  # [size, sy, slices]
        frac = np.tensordot(w[1], frac, axes=([1], [1])).transpose(1, 0, 2)  # [size, size, sl]
        density[tissue] = (_BRAIN_PD[tissue] * frac).astype(np.float32)

    values = meta["fields"][key]["tissues"]
    t1 = {t: float(values[t]["T1"]) for t in density}
    t2 = {t: float(values[t]["T2"]) for t in density}
    t2dash: dict[str, float] = {}
    for t in density:
        t2star = float(values[t]["T2star"])
        if t2star < t2[t]:
            t2dash[t] = _t2dash(t2star, t2[t])
        else:  # literature fallback (as used for the Shepp–Logan phantom)
            t2dash[t] = _sl_t2dash(key, b0)[t]

    x, y, z = _centres(size, step), _centres(size, step), _centres(slices, thickness)
    mx, my, mz = x + centre[0], y + centre[1], z + centre[2]  # MNI coordinates
    return SegmentedPhantom(
        density=density,
        T1=t1,
        T2=t2,
        T2dash=t2dash,
        ADC=dict(_BRAIN_ADC),
        dB0=_brain_db0(mx, my, mz, b0),
        B1_tx=_brain_b1(mx, my, mz, key)[None],
        B1_rx=_receive_coils(x, y, z, coils, BRAIN_FOV_MM),
        affine=_centred_affine((size, size, slices), (step, step, thickness)),
        field_T=b0,
    )


# --------------------------------------------------------------------------------------------
# MR Shepp–Logan (Gach, Tanase & Boada 2008)
# --------------------------------------------------------------------------------------------

#: Field of view of :func:`shepp_logan` in mm; the normalised phantom coordinate ±1 maps to
#: ±120 mm (the paper works in normalised units; 240 mm is our choice, a typical head FOV).
SHEPP_LOGAN_FOV_MM = 240.0

_SL_MAX_SLICES = int(SHEPP_LOGAN_FOV_MM / SLICE_THICKNESS_MM)

#: In-plane ellipses of the MR Shepp–Logan phantom, H. M. Gach, C. Tanase, F. Boada, "2D & 3D
#: Shepp-Logan phantom standards for MRI", 19th Int. Conf. on Systems Engineering (ICSEng)
#: 2008, pp. 521–526, doi:10.1109/ICSEng.2008.15: (tissue, x0, y0, a, b, θ in degrees), in
#: normalised coordinates (±1 = FOV edge), θ counter-clockwise from +x to the ``a`` axis.
#: They are the classic 2-D Shepp–Logan ellipses (Shepp & Logan, IEEE TNS 21:21–43, 1974)
#: with the paper's two additions (outer scalp layer; CSF rim between skull marrow and grey
#: matter) and its tissue assignment.  Painted in this order: a later ellipse replaces the
#: tissue of earlier ones where they overlap.  The paper's 3-D ellipsoids off the central plane
#: (a tumour at z = 0.0625 and CSF at z = 0.625) and its unused blood-clot entry are left out.
_SL_ELLIPSES: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("scalp", 0.0, 0.0, 0.72, 0.95, 0.0),
    ("marrow", 0.0, 0.0, 0.69, 0.92, 0.0),
    ("csf", 0.0, -0.0184, 0.6624, 0.874, 0.0),
    ("gm", 0.0, -0.0184, 0.6524, 0.864, 0.0),
    ("csf", -0.22, 0.0, 0.41, 0.16, -72.0),
    ("csf", 0.22, 0.0, 0.31, 0.11, 72.0),
    ("wm", 0.0, 0.35, 0.21, 0.25, 0.0),
    ("tumor", 0.0, 0.1, 0.046, 0.046, 0.0),
    ("tumor", -0.08, -0.605, 0.046, 0.023, 0.0),
    ("tumor", 0.06, -0.605, 0.046, 0.023, -90.0),
    ("tumor", 0.0, -0.1, 0.046, 0.046, 0.0),
    ("tumor", 0.0, -0.605, 0.023, 0.023, 0.0),
)
_SL_TISSUES = ("scalp", "marrow", "csf", "gm", "wm", "tumor")

#: Gach et al. 2008 tissue table: relative proton density, T1 = A·B0^C (s, B0 in T; CSF has a
#: fixed T1 of 4.2 s) and T2 (s), independent of field strength.
_SL_PD = {"scalp": 0.8, "marrow": 0.12, "csf": 0.98, "gm": 0.745, "wm": 0.617, "tumor": 0.95}
_SL_T1_AC = {
    "scalp": (0.324, 0.137),
    "marrow": (0.533, 0.088),
    "gm": (0.857, 0.376),
    "wm": (0.583, 0.382),
    "tumor": (0.926, 0.217),
}
_SL_T1_CSF = 4.2
_SL_T2 = {"scalp": 0.07, "marrow": 0.05, "csf": 1.99, "gm": 0.1, "wm": 0.08, "tumor": 0.1}

#: T2' (s), not part of Gach et al.:
#: * gm, wm: 1/T2' = 1/T2* - 1/T2 with T2* of Peters et al. 2007 and the phantom's T2;
#: * tumor: taken equal to gm (assumption, no single literature value);
#: * csf: as in :func:`brain` (ASLDRO CSF T2*/T2): 0.6 s at 3 T, 1.2 s at 1.5 T;
#: * marrow (skull diploë, trabecular bone): 15 ms at 1.5 T, 7.5 ms at 3 T, order of magnitude
#:   of trabecular-bone T2' reviewed by Wehrli et al., NMR Biomed 19:731–764 (2006)
#:   (approximate), scaled ∝ 1/B0 (static dephasing, Yablonskiy & Haacke, MRM 32:749, 1994);
#: * scalp: taken equal to wm (assumption).
_SL_T2DASH_MARROW_1T5 = 0.015

#: ADC (10⁻³ mm²/s), not part of Gach et al.: gm 0.8, wm 0.7 (Helenius et al. 2002), csf 3.0
#: (Holz et al. 2000); tumor 1.1 (high-grade glioma, roughly 1.0–1.2 in Kono et al., AJNR
#: 22:1081–1088, 2001; approximate); marrow 0.4 (normal fatty bone marrow ≈ 0.2–0.6, Dietrich
#: et al., NMR Biomed 30:e3333, 2017); scalp 0.02 (fat-dominated; lipid self-diffusion is about
#: two orders of magnitude slower than water, approximate).
_SL_ADC = {"scalp": 0.02, "marrow": 0.4, "csf": 3.0, "gm": 0.8, "wm": 0.7, "tumor": 1.1}


def _sl_t2dash(key: str, b0: float) -> dict[str, float]:
    """T2' (s) per Shepp–Logan tissue at field ``key`` (see the constants above)."""
    gm = _t2dash(_T2STAR_PETERS[key]["gm"], _SL_T2["gm"])
    wm = _t2dash(_T2STAR_PETERS[key]["wm"], _SL_T2["wm"])
    return {
        "scalp": wm,
        "marrow": _SL_T2DASH_MARROW_1T5 * 1.5 / b0,
        "csf": _T2DASH_CSF[key],
        "gm": gm,
        "wm": wm,
        "tumor": gm,
    }


def _rasterise_ellipses(size: int) -> dict[str, np.ndarray]:
    """Partial-volume fractions [size, size] of each Shepp–Logan tissue.

    Each voxel is sampled on a regular ``s x s`` grid of sub-sample centres (s = 16 for
    size ≤ 64, 8 up to 128, else 4), each sub-sample gets the tissue of the last ellipse
    containing it, and the fraction is the share of sub-samples.  Axis 0 is x (R), axis 1 is
    y (A); the voxel grid spans the normalised square [-1, 1]².
    """
    sub = max(4, min(16, 1024 // size))
    n = size * sub
    coords = (np.arange(n) + 0.5) / n * 2.0 - 1.0
    index = {t: i for i, t in enumerate(_SL_TISSUES)}
    fracs = {t: np.zeros((size, size), dtype=np.float32) for t in _SL_TISSUES}
    rows = max(1, (1 << 20) // (sub * sub * size))  # voxel rows per chunk (≈1M sub-samples)
    gy = coords[None, :]
    for r0 in range(0, size, rows):
        r1 = min(size, r0 + rows)
        gx = coords[r0 * sub : r1 * sub, None]
        label = np.full((gx.shape[0], n), -1, dtype=np.int8)
        for tissue, x0, y0, a, b, theta in _SL_ELLIPSES:
            c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
            dx, dy = gx - x0, gy - y0
            inside = ((dx * c + dy * s) / a) ** 2 + ((dy * c - dx * s) / b) ** 2 <= 1.0
            label[inside] = index[tissue]
        blocks = label.reshape(r1 - r0, sub, size, sub)
        for tissue, i in index.items():
            fracs[tissue][r0:r1] = (blocks == i).mean(axis=(1, 3))
    return fracs


def shepp_logan(
    size: int = 64, slices: int = 1, field: str = "3T", coils: int = 1
) -> SegmentedPhantom:
    """MR Shepp–Logan phantom of Gach, Tanase & Boada (2008), one density map per tissue.

    Tissues ``"scalp"``, ``"marrow"``, ``"csf"``, ``"gm"``, ``"wm"``, ``"tumor"`` with the
    paper's ellipses (the classic 2-D Shepp–Logan geometry plus scalp and CSF rim; see
    ``_SL_ELLIPSES``), anti-aliased by sub-voxel sampling (4x4 to 16x16 sub-samples per voxel).
    The phantom is two-dimensional: with ``slices > 1`` the same slice is repeated along z.

    Geometry: FOV :data:`SHEPP_LOGAN_FOV_MM` (240 mm) square, normalised ±1 = ±120 mm, phantom
    +x → RAS +x, +y → anterior; slices of :data:`SLICE_THICKNESS_MM` (5 mm); affine with voxel
    centres, FOV and slab centred on (0, 0, 0).

    Tissue values (Gach et al. 2008): PD scalp 0.8, marrow 0.12, CSF 0.98, GM 0.745, WM 0.617,
    tumour 0.95; T1 = A·B0^C with (A, C) scalp (0.324, 0.137), marrow (0.533, 0.088), GM
    (0.857, 0.376), WM (0.583, 0.382), tumour (0.926, 0.217), CSF fixed 4.2 s; T2 scalp 0.07,
    marrow 0.05, CSF 1.99, GM 0.1, WM 0.08, tumour 0.1 s.  T2' and ADC come from other
    literature (see the module constants).  dB0 = 0, B1_tx = 1, B1_rx as in :func:`brain`.

    Parameters
    ----------
    size : int
        In-plane matrix size, 4..512.
    slices : int
        Number of (identical) slices, 1..48 (48 x 5 mm = the 240 mm FOV).
    field : str
        "3T" or "1.5T" (also "3", "1.5", case-insensitive).
    coils : int
        Number of receive coils, 1..64.

    Returns
    -------
    SegmentedPhantom
        Maps of shape [size, size, slices] ([coils, ...] for B1_rx, [1, ...] for B1_tx).

    Raises
    ------
    ValueError
        For arguments out of range or an unknown field strength.
    """
    size = _check_int("size", size, 4, _MAX_SIZE)
    slices = _check_int("slices", slices, 1, _SL_MAX_SLICES)
    coils = _check_int("coils", coils, 1, _MAX_COILS)
    key, b0 = _parse_field(field)

    fracs = _rasterise_ellipses(size)
    density = {
        t: np.repeat((_SL_PD[t] * fracs[t])[:, :, None], slices, axis=2).astype(np.float32)
        for t in _SL_TISSUES
    }
    t1 = {t: a * b0**c for t, (a, c) in _SL_T1_AC.items()}
    t1["csf"] = _SL_T1_CSF
    step = SHEPP_LOGAN_FOV_MM / size
    x, z = _centres(size, step), _centres(slices, SLICE_THICKNESS_MM)
    shape = (size, size, slices)
    return SegmentedPhantom(
        density=density,
        T1={t: float(t1[t]) for t in _SL_TISSUES},
        T2={t: _SL_T2[t] for t in _SL_TISSUES},
        T2dash=_sl_t2dash(key, b0),
        ADC={t: _SL_ADC[t] for t in _SL_TISSUES},
        dB0=np.zeros(shape, dtype=np.float32),
        B1_tx=np.ones((1, *shape), dtype=np.float32),
        B1_rx=_receive_coils(x, x, z, coils, SHEPP_LOGAN_FOV_MM),
        affine=_centred_affine(shape, (step, step, SLICE_THICKNESS_MM)),
        field_T=b0,
    )

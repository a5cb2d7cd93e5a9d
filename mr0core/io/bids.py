"""BIDS-style JSON sidecars and ground-truth maps, after the layout of ASL DRO's outputs.

A simulated image series is a NIfTI file plus a JSON sidecar holding the acquisition parameters
in BIDS units (s, degrees, T) and a block describing the simulation (phantom, accuracy settings,
noise). The phantom's own maps are written beside it as ground truth, one NIfTI + sidecar per
quantity, with BIDS-like suffixes (``_T1map``, ``_T2map``, …).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mr0core.io.nifti import write_nifti
from mr0core.io.params import SequenceParameters

__all__ = [
    "GROUND_TRUTH_MAPS",
    "bids_sidecar",
    "json_safe",
    "write_dataset_description",
    "write_ground_truth",
]

MANUFACTURER = "mr0-inline"
SOFTWARE = "mr0core"

_COMPONENT_CODES = {
    "magnitude": ("M", "MAGNITUDE"),
    "phase": ("P", "PHASE"),
    "real": ("R", "REAL"),
    "imag": ("I", "IMAGINARY"),
    "complex": ("C", "COMPLEX"),
}


@dataclass(frozen=True)
class _MapSpec:
    attribute: str
    suffix: str
    quantity: str
    units: str
    description: str


GROUND_TRUTH_MAPS: tuple[_MapSpec, ...] = (
    _MapSpec("PD", "PDmap", "PD", "a.u.", "proton density"),
    _MapSpec("T1", "T1map", "T1", "s", "longitudinal relaxation time"),
    _MapSpec("T2", "T2map", "T2", "s", "transverse relaxation time"),
    _MapSpec("T2dash", "T2primemap", "T2prime", "s", "reversible transverse relaxation time T2′"),
    _MapSpec("D", "Dmap", "D", "10^-3 mm^2/s", "isotropic diffusion coefficient"),
    _MapSpec("B0", "B0map", "B0", "Hz", "off-resonance frequency"),
    _MapSpec("B1", "TB1map", "B1", "a.u.", "relative transmit field magnitude (per channel)"),
)
"""The maps :func:`write_ground_truth` writes: phantom attribute, file suffix, quantity, unit."""


def _version() -> str:
    from mr0core import __version__

    return str(__version__)


def json_safe(value: Any) -> Any:
    """Convert tensors, arrays, numpy scalars, paths and tuples to plain JSON types.

    Non-finite floats become None (JSON has no NaN).
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, complex):
        return [json_safe(value.real), json_safe(value.imag)]
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, PathLike):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)


def bids_sidecar(
    params: SequenceParameters | None,
    *,
    phantom_name: str | None = None,
    field_strength_T: float | None = None,
    sim_settings: Mapping[str, Any] | None = None,
    series_description: str | None = None,
    image_type: list[str] | None = None,
    component: str = "magnitude",
    matrix: tuple[int, int, int] | None = None,
    fov_m: tuple[float, float, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a BIDS JSON sidecar for a simulated (or reconstructed) image series.

    Parameters
    ----------
    params
        Acquisition parameters (:func:`mr0core.io.params.sequence_parameters`), or None.
    phantom_name
        Name of the simulated phantom (e.g. ``"builtin:brain"``); None for measured data.
    field_strength_T
        Main field in T; defaults to ``params.field_strength_T``. Omitted when unknown.
    sim_settings
        Simulation settings to record (accuracy thresholds, ``max_state_count``, noise standard
        deviation, seed, …); stored under ``"Simulation"``.
    series_description
        BIDS/DICOM ``SeriesDescription``; defaults to the sequence name.
    image_type
        DICOM-style ``ImageType``; default ``["ORIGINAL", "PRIMARY", <M|P|R|I|C>, "NONE"]``.
    component
        ``"magnitude"``, ``"phase"``, ``"real"``, ``"imag"`` or ``"complex"``: which part of the
        complex image the NIfTI holds (``ComplexImageComponent``).
    matrix, fov_m
        Image matrix ``(x, y, z)`` and field of view in m; default from ``params``.
    extra
        More keys, copied in last (they override).

    Returns
    -------
    dict
        JSON-serialisable sidecar. Times in s, ``FlipAngle`` in degrees,
        ``MagneticFieldStrength`` in T, ``AcquisitionVoxelSize`` in mm. Unknown values are left
        out rather than written as null.
    """
    if component not in _COMPONENT_CODES:
        raise ValueError(f"component must be one of {sorted(_COMPONENT_CODES)}, got {component!r}")
    code, component_name = _COMPONENT_CODES[component]
    version = _version()
    out: dict[str, Any] = {
        "Manufacturer": MANUFACTURER,
        "ManufacturersModelName": SOFTWARE,
        "SoftwareVersions": f"{SOFTWARE} {version}",
        "ImageType": list(image_type) if image_type else ["ORIGINAL", "PRIMARY", code, "NONE"],
        "ComplexImageComponent": component_name,
    }
    if params is not None:
        for key, value in (
            ("RepetitionTime", params.TR),
            ("EchoTime", params.TE),
            ("InversionTime", params.TI),
            ("RepetitionTimePreparation", params.TR_preparation),
            ("FlipAngle", params.flip_angle_deg),
            ("PulseSequenceName", params.name),
            ("MRAcquisitionType", params.acquisition_type),
        ):
            if value is not None:
                out[key] = value
    b0 = field_strength_T if field_strength_T is not None else getattr(
        params, "field_strength_T", None
    )  # fmt: skip
    if b0 is not None:
        out["MagneticFieldStrength"] = float(b0)
    matrix = matrix if matrix is not None else getattr(params, "matrix", None)
    fov_m = fov_m if fov_m is not None else getattr(params, "fov_m", None)
    if matrix is not None:
        out["AcquisitionMatrix"] = [int(m) for m in matrix]
    if fov_m is not None:
        out["FieldOfView"] = [float(f) * 1000.0 for f in fov_m]  # mm, DICOM-style
        if matrix is not None:
            out["AcquisitionVoxelSize"] = [
                float(f) * 1000.0 / int(m) for f, m in zip(fov_m, matrix, strict=True)
            ]
    description = series_description or getattr(params, "name", None)
    if description:
        out["SeriesDescription"] = description
    if phantom_name is not None or sim_settings is not None:
        out["DROSoftware"] = MANUFACTURER
        out["DROSoftwareVersion"] = version
        simulation: dict[str, Any] = {"Simulator": "PDG"}
        if phantom_name is not None:
            simulation["Phantom"] = phantom_name
        simulation.update(dict(sim_settings or {}))
        out["Simulation"] = simulation
    if extra:
        out.update(extra)
    return json_safe(out)


def _phantom_affine(phantom: Any) -> np.ndarray:
    affine = getattr(phantom, "affine", None)
    if affine is not None:
        return np.asarray(affine, dtype=np.float64)
    from mr0core.phantom.voxel_grid import default_affine

    size = phantom.size if isinstance(phantom.size, torch.Tensor) else torch.as_tensor(phantom.size)
    return default_affine(tuple(phantom.PD.shape), size.detach().cpu())


def write_ground_truth(
    directory: str | PathLike[str],
    phantom: Any,
    *,
    prefix: str = "sub-001_acq-000",
    phantom_name: str | None = None,
    compress: bool = True,
) -> dict[str, Path]:
    """Write a phantom's maps as NIfTI files with a sidecar each naming quantity and unit.

    Parameters
    ----------
    directory
        Output folder (created if missing).
    phantom
        A :class:`~mr0core.phantom.voxel_grid.VoxelGridPhantom` (maps ``[x, y, z]``, ``B1``
        ``[channels, x, y, z]``); its ``affine`` places the maps.
    prefix
        File name prefix; files are ``<prefix>_<suffix>.nii[.gz]`` with the suffixes of
        :data:`GROUND_TRUTH_MAPS` (``T1map``, ``T2map``, …).
    phantom_name
        Recorded in each sidecar.
    compress
        ``.nii.gz`` (default) or ``.nii``.

    Returns
    -------
    dict of str to pathlib.Path
        Quantity (``"PD"``, ``"T1"``, ``"T2"``, ``"T2prime"``, ``"D"``, ``"B0"``, ``"B1"``) → file.
        B1 is written as ``|B1|``, ``[x, y, z]`` for one channel, ``[x, y, z, channel]`` for more.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"ground-truth output {folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    affine = _phantom_affine(phantom)
    ext = ".nii.gz" if compress else ".nii"
    written: dict[str, Path] = {}
    for spec in GROUND_TRUTH_MAPS:
        value = getattr(phantom, spec.attribute, None)
        if value is None:
            continue
        data = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        if spec.attribute == "B1":
            data = data.abs()
            data = data[0] if data.shape[0] == 1 else data.permute(1, 2, 3, 0)
        sidecar = {
            "Quantity": spec.quantity,
            "Units": spec.units,
            "Description": spec.description,
            "ImageType": ["ORIGINAL", "PRIMARY", spec.suffix.upper(), "NONE"],
            "DROSoftware": MANUFACTURER,
            "DROSoftwareVersion": _version(),
        }
        if phantom_name is not None:
            sidecar["Phantom"] = phantom_name
        path = folder / f"{prefix}_{spec.suffix}{ext}"
        written[spec.quantity] = write_nifti(
            path, data.numpy(), affine, sidecar=json_safe(sidecar), component="real"
        )
    return written


_BIDS_ANAT_MAPS = ("T1map", "T2map", "PDmap")
"""Ground-truth suffixes that BIDS knows as anatomical derivative maps (they need SkullStripped)."""


def write_dataset_description(
    root: str | PathLike[str], *, name: str = "mr0core simulation", phantom_name: str | None = None
) -> Path:
    """Make ``root`` a BIDS derivative dataset of :func:`write_ground_truth` outputs.

    Writes ``dataset_description.json`` (``DatasetType`` derivative, ``GeneratedBy`` mr0core),
    top-level sidecars ``T1map.json``, ``T2map.json``, ``PDmap.json`` holding
    ``"SkullStripped": false`` (they apply to every subject by BIDS inheritance), and a
    ``.bidsignore`` for the maps BIDS has no suffix for (``T2primemap``, ``B0map``, ``Dmap``).
    Ground truth belongs in ``root/sub-<label>/anat/`` with ``prefix="sub-<label>_..."``.

    Parameters
    ----------
    root
        The dataset folder (created if missing).
    name
        The dataset's ``Name``.
    phantom_name
        Recorded in ``GeneratedBy``.

    Returns
    -------
    pathlib.Path
        The ``dataset_description.json`` written.
    """
    folder = Path(root)
    folder.mkdir(parents=True, exist_ok=True)
    generated: dict[str, Any] = {"Name": SOFTWARE, "Version": _version()}
    if phantom_name is not None:
        generated["Description"] = f"simulated from phantom {phantom_name}"
    description = {
        "Name": name,
        "BIDSVersion": "1.10.0",
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    path = folder / "dataset_description.json"
    path.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    for suffix in _BIDS_ANAT_MAPS:
        (folder / f"{suffix}.json").write_text(
            json.dumps({"SkullStripped": False}) + "\n", encoding="utf-8"
        )
    (folder / ".bidsignore").write_text(
        "".join(f"*_{s}.*\n" for s in ("T2primemap", "B0map", "Dmap")), encoding="utf-8"
    )
    return path

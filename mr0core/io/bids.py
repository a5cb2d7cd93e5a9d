"""BIDS-style JSON sidecars and ground-truth maps, after the layout of ASL DRO's outputs.

A simulated image series is a NIfTI file plus a JSON sidecar holding the acquisition parameters
in BIDS units (s, degrees, T) and a block describing the simulation (phantom, accuracy settings,
noise). The phantom's own maps are its ground truth, one NIfTI + sidecar per quantity:

- :func:`write_ground_truth_dataset` writes them as a BIDS derivative dataset (what
  ``mr0 simulate --recon`` writes, valid for the BIDS validator): ``dataset_description.json``,
  ``sub-<label>/anat/`` for PD, T1, T2 (``_PDmap``, ``_T1map``, ``_T2map``), ``sub-<label>/fmap/``
  for B1 (``_TB1map``) and B0 (``_fieldmap`` in Hz, with the PD map as its ``_magnitude``
  reference, which BIDS requires). T2′ and D have no BIDS suffix: they are written as
  ``anat/*_T2primemap`` and ``anat/*_Dmap`` and listed in ``.bidsignore``, so that the validator
  passes them over and a reader still finds them beside the others.
- :func:`write_ground_truth` writes the maps flat into one folder (``mr0 demo``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mr0core.io.nifti import sidecar_path, write_nifti
from mr0core.io.params import SequenceParameters

__all__ = [
    "GROUND_TRUTH_MAPS",
    "bids_label",
    "bids_sidecar",
    "json_safe",
    "write_dataset_description",
    "write_ground_truth",
    "write_ground_truth_dataset",
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
    datatype: str = "anat"
    """BIDS folder in :func:`write_ground_truth_dataset`."""
    bids_suffix: str | None = None
    """BIDS suffix in :func:`write_ground_truth_dataset`; None: BIDS has none (``.bidsignore``)."""


GROUND_TRUTH_MAPS: tuple[_MapSpec, ...] = (
    _MapSpec("PD", "PDmap", "PD", "a.u.", "proton density", "anat", "PDmap"),
    _MapSpec("T1", "T1map", "T1", "s", "longitudinal relaxation time", "anat", "T1map"),
    _MapSpec("T2", "T2map", "T2", "s", "transverse relaxation time", "anat", "T2map"),
    _MapSpec("T2dash", "T2primemap", "T2prime", "s", "reversible transverse relaxation time T2′"),
    _MapSpec("D", "Dmap", "D", "10^-3 mm^2/s", "isotropic diffusion coefficient"),
    _MapSpec("B0", "B0map", "B0", "Hz", "off-resonance frequency", "fmap", "fieldmap"),
    _MapSpec(
        "B1",
        "TB1map",
        "B1",
        "a.u.",
        "relative transmit field magnitude (per channel)",
        "fmap",
        "TB1map",
    ),
)
"""The ground-truth maps: phantom attribute, file suffix (:func:`write_ground_truth`), quantity,
unit, description, and BIDS folder and suffix (:func:`write_ground_truth_dataset`)."""

BIDS_VERSION = "1.10.0"
"""The BIDS version :func:`write_dataset_description` declares."""

_LABEL_MAX = 64
"""Longest subject label :func:`bids_label` makes (characters)."""
_LABEL = re.compile(rf"[A-Za-z0-9]{{1,{_LABEL_MAX}}}")


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
    result: dict[str, Any] = json_safe(out)
    return result


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

    The files are private (0600): a twin's maps are a subject's data.

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
    folder = _output_folder(directory)
    affine = _phantom_affine(phantom)
    ext = ".nii.gz" if compress else ".nii"
    written: dict[str, Path] = {}
    for spec in GROUND_TRUTH_MAPS:
        data = _map_data(phantom, spec)
        if data is None:
            continue
        path = folder / f"{prefix}_{spec.suffix}{ext}"
        written[spec.quantity] = write_nifti(
            path, data, affine, sidecar=_map_sidecar(spec, phantom_name), component="real"
        )
    for f in [*written.values(), *map(sidecar_path, written.values())]:
        os.chmod(f, 0o600)  # a twin's maps are a subject's data: private, as the dataset's
    return written


def _output_folder(directory: str | PathLike[str], mode: int | None = None) -> Path:
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"ground-truth output {folder} exists and is not a directory")
    folder.mkdir(parents=True, exist_ok=True)
    if mode is not None:
        os.chmod(folder, mode)
    return folder


def _map_data(phantom: Any, spec: _MapSpec) -> np.ndarray | None:
    """Return one map of ``phantom`` as ``[x, y, z]`` (B1: ``|B1|``, ``[x, y, z, channel]``)."""
    value = getattr(phantom, spec.attribute, None)
    if value is None:
        return None
    data = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if spec.attribute == "B1":
        data = data.abs()
        data = data[0] if data.shape[0] == 1 else data.permute(1, 2, 3, 0)
    return data.numpy()


def _map_sidecar(spec: _MapSpec, phantom_name: str | None) -> dict[str, Any]:
    sidecar: dict[str, Any] = {
        "Quantity": spec.quantity,
        "Units": spec.units,
        "Description": spec.description,
        "ImageType": ["ORIGINAL", "PRIMARY", spec.suffix.upper(), "NONE"],
        "SkullStripped": False,  # BIDS requires it of derivative maps
        "DROSoftware": MANUFACTURER,
        "DROSoftwareVersion": _version(),
    }
    if phantom_name is not None:
        sidecar["Phantom"] = phantom_name
    result: dict[str, Any] = json_safe(sidecar)
    return result


def bids_label(name: str) -> str:
    """Return a BIDS label (letters and digits, at most 64) for a phantom name.

    ``"builtin:shepp-logan"`` → ``"shepplogan"``, ``"twins/Subject_01.json"`` → ``"Subject01"``;
    a name with no letter or digit gives ``"phantom"``.
    """
    base = re.split(r"[:/\\]", name)[-1]
    base = re.sub(r"\.json$", "", base, flags=re.IGNORECASE)
    label = re.sub(r"[^A-Za-z0-9]", "", base)[:_LABEL_MAX]
    return label or "phantom"


def write_ground_truth_dataset(
    root: str | PathLike[str],
    phantom: Any,
    *,
    subject: str | None = None,
    phantom_name: str | None = None,
    compress: bool = True,
) -> dict[str, Path]:
    """Write a phantom's maps as a BIDS derivative dataset (layout in the module docstring).

    Files are written ``0600`` and folders ``0700`` (a twin's maps are patient data). Maps of
    an earlier run in ``root`` are overwritten.

    Parameters
    ----------
    root
        The dataset folder (created if missing).
    phantom
        A :class:`~mr0core.phantom.voxel_grid.VoxelGridPhantom` (maps ``[x, y, z]``, ``B1``
        ``[channels, x, y, z]``); its ``affine`` places the maps.
    subject
        The subject label (letters and digits); default :func:`bids_label` of ``phantom_name``.
    phantom_name
        Recorded in each sidecar and in ``dataset_description.json``.
    compress
        ``.nii.gz`` (default) or ``.nii``.

    Returns
    -------
    dict of str to pathlib.Path
        Quantity (as :func:`write_ground_truth`) → file, and ``"magnitude"`` → the field map's
        magnitude reference (when B0 is written).

    Raises
    ------
    ValueError
        ``subject`` is not a BIDS label.
    NotADirectoryError
        ``root`` exists and is not a folder.
    """
    label = subject if subject is not None else bids_label(phantom_name or "phantom")
    if not _LABEL.fullmatch(label):
        raise ValueError(f"subject label must be 1-{_LABEL_MAX} letters or digits, got {label!r}")
    folder = _output_folder(root, 0o700)
    affine = _phantom_affine(phantom)
    ext = ".nii.gz" if compress else ".nii"
    written: dict[str, Path] = {}
    maps = {spec.quantity: (spec, _map_data(phantom, spec)) for spec in GROUND_TRUTH_MAPS}
    for spec, data in maps.values():
        if data is None:
            continue
        sub = _output_folder(_output_folder(folder / f"sub-{label}", 0o700) / spec.datatype, 0o700)
        sidecar = _map_sidecar(spec, phantom_name)
        if spec.bids_suffix == "fieldmap":  # BIDS: a field map (Units Hz) has a magnitude
            pd_spec, pd = maps["PD"]
            if pd is not None:
                written["magnitude"] = write_nifti(
                    sub / f"sub-{label}_magnitude{ext}", pd, affine, component="real",
                    sidecar={**_map_sidecar(pd_spec, phantom_name),
                             "Description": "proton density, the field map's magnitude reference"},
                )  # fmt: skip
        path = sub / f"sub-{label}_{spec.bids_suffix or spec.suffix}{ext}"
        written[spec.quantity] = write_nifti(path, data, affine, sidecar=sidecar, component="real")
    description = write_dataset_description(folder, phantom_name=phantom_name)
    top = [description, folder / "README", folder / ".bidsignore"]
    for f in [*written.values(), *map(sidecar_path, written.values()), *top]:
        os.chmod(f, 0o600)
    return written


def write_dataset_description(
    root: str | PathLike[str], *, name: str = "mr0core simulation", phantom_name: str | None = None
) -> Path:
    """Make ``root`` a BIDS derivative dataset (as :func:`write_ground_truth_dataset` does).

    Writes ``dataset_description.json`` (``DatasetType`` derivative, ``GeneratedBy`` mr0core
    with its version), a ``README``, and a ``.bidsignore`` for the maps BIDS has no suffix for
    (``*_T2primemap.*``, ``*_Dmap.*``).

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
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
    }
    path = folder / "dataset_description.json"
    path.write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    ignored = [spec.suffix for spec in GROUND_TRUTH_MAPS if spec.bids_suffix is None]
    (folder / "README").write_text(
        f"Ground truth of a simulation by {SOFTWARE} {_version()}"
        + (f" (phantom {phantom_name})" if phantom_name else "")
        + ": the phantom's maps, one NIfTI and JSON sidecar (quantity, unit) each.\n"
        f"Maps BIDS has no suffix for ({', '.join(ignored)}) are listed in .bidsignore.\n",
        encoding="utf-8",
    )
    (folder / ".bidsignore").write_text("".join(f"*_{s}.*\n" for s in ignored), encoding="utf-8")
    return path

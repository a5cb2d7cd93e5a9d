"""A digital reference object for ASL on the built-in brain (``mr0 dro``), written as BIDS.

After ASL DRO's design (ground truth → contrast → motion → resampling → noise, several pipelines
per run from one parameter file), built on our brain's ground truth
(:func:`mr0core.phantom.builtin.brain_ground_truth`: the ICBM 2009a labels with ASL DRO's
per-tissue perfusion rate, transit time, T1, T2, T2*, M0, blood T1 and λ).

Pipelines (``"kind"``), any number per run:

* ``"asl"``: one volume per ``asl_context`` entry (``m0scan``, ``control``, ``label``); ΔM from
  :func:`mr0core.perfusion.gkm.delta_m` at ``t = τ + PLD`` (pCASL/CASL) or ``t = TI``
  (PASL), per volume, so multi-PLD series work. Before the readout the longitudinal
  magnetisation is ``Mz = M0 (1 − e^{−TR/T1})`` for control and m0scan volumes (saturation
  recovery over the volume's ``repetition_time``) and ``Mz − ΔM`` for label volumes.
* ``"structural"``: GRE (spoiled steady state), SE or IR contrast.
* ``"ground_truth"``: the maps themselves (perfusion, transit time, T1, T2, T2*, M0, labels),
  moved and resampled like any volume.

Engines (``"engine"``) turn ``Mz`` into an image:

* ``"analytic"``: closed forms. ASL readout ``gre``: ``Mz sin(FA) e^{−TE/T2*}``; ``se``:
  ``Mz e^{−TE/T2}``. Structural ``gre``: ``M0 sin α (1 − E1) / (1 − cos α E1) e^{−TE/T2*}``;
  ``se``: ``M0 (1 − 2 e^{−(TR − TE/2)/T1} + e^{−TR/T1}) e^{−TE/T2}``; ``ir``:
  ``M0 |1 − 2 e^{−TI/T1} + e^{−TR/T1}| e^{−TE/T2}``. Computed at the 1 mm ground truth, then
  moved and resampled.
* ``"pdg"``: the readout of a Pulseq ``.seq`` (``"seq"``) simulated by PDG and reconstructed,
  slice by slice on the acquisition grid. The prepared magnetisation enters as the phantom's
  proton density per voxel (PD := ``Mz`` for ASL, ``M0`` for structural), with T1, T2 and T2′ maps
  resampled from the ground truth; dB0 = 0, B1 = 1, no diffusion. Approximation: the label
  condition is a static magnetisation deficit at the readout's excitation. There is no flow
  through the readout, and because the deficit scales the whole voxel's PD, each excitation of a
  multi-shot readout sees it (as a segmented acquisition with one preparation per shot would),
  with no recovery of the deficit during the readout. Images are in the simulator's unit.

Per volume: rigid motion (``rotation`` in degrees about x, y, z, applied in that order about the
field-of-view centre, and ``translation`` in mm; one triple for all volumes or one per volume),
trilinear resampling onto the acquisition grid (``acquisition_matrix`` voxels over ``fov_mm``,
centred at MNI :data:`mr0core.phantom.builtin.BRAIN_FOV_CENTRE_MNI_MM`), then noise: complex
Gaussian noise of standard deviation ``σ = mean(reference over voxels > 0) / desired_snr`` per
real and imaginary part, magnitude taken (``desired_snr = 0``: none). The reference is the
pipeline's first noise-free m0scan (else control) volume for ASL, the volume itself otherwise.
The generator is ``numpy.random.default_rng(seed)``, one per run, drawn in volume order.

Output (BIDS 1.9): ``sub-<label>/perf/*_asl.nii.gz`` (+ ``.json``, ``_aslcontext.tsv``),
``*_m0scan.nii.gz`` (m0scan volumes, ``M0Type: Separate``), ``sub-<label>/anat/*_<T1w|T2w|…>``,
and ``derivatives/groundtruth/``: the 1 mm ground truth once per run and each
``ground_truth`` pipeline's resampled maps. Every sidecar carries a ``Simulation`` block.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from mr0core.io.bids import bids_sidecar, json_safe
from mr0core.io.nifti import image_affine, write_nifti
from mr0core.phantom.builtin import BRAIN_FOV_CENTRE_MNI_MM, brain_ground_truth

from .gkm import LABEL_TYPES, MODELS, delta_m

__all__ = [
    "DEFAULT_PARAMS",
    "DroError",
    "GroundTruth",
    "generate",
    "load_params",
    "write_default_params",
]

BIDS_VERSION = "1.9.0"
MAX_PARAMS_BYTES = 1 << 20
MAX_PIPELINES = 32
MAX_VOLUMES = 1000
MAX_MATRIX = 512
MAX_VOXELS = 1 << 24  # per volume
MAX_PDG_RUNS = 256  # volumes × slices simulated by PDG per pipeline

GT_QUANTITIES = {  # name -> (unit, description)
    "perfusion_rate": ("ml/100g/min", "perfusion rate"),
    "transit_time": ("s", "arrival time of the label"),
    "T1": ("s", "longitudinal relaxation time"),
    "T2": ("s", "transverse relaxation time"),
    "T2star": ("s", "effective transverse relaxation time"),
    "M0": ("a.u.", "equilibrium magnetisation"),
    "seg_label": ("", "tissue label (0 background, 1 GM, 2 WM, 3 CSF)"),
}

# parameter files are JSON-like: values of mixed types (str, float, list, None)
_COMMON: dict[str, Any] = {
    "kind": None,
    "name": None,
    "engine": "analytic",
    "acquisition_matrix": [64, 64, 12],
    "fov_mm": [220.0, 220.0, 120.0],
    "rotation": [0.0, 0.0, 0.0],
    "translation": [0.0, 0.0, 0.0],
    "desired_snr": 0.0,
    "seq": None,
}
_ASL: dict[str, Any] = {
    **_COMMON,
    "asl_context": ["m0scan", "control", "label"],
    "label_type": "pcasl",
    "label_duration": 1.8,
    "post_labeling_delay": 1.8,
    "bolus_cut_off_flag": False,
    "bolus_cut_off_delay_time": None,
    "label_efficiency": 0.85,
    "lambda_blood_brain": None,
    "t1_arterial_blood": None,
    "gkm_model": "full",
    "readout": "gre",
    "echo_time": 0.01,
    "repetition_time": [10.0, 5.0, 5.0],
    "flip_angle": 90.0,
    "background_suppression": False,
}
_STRUCTURAL: dict[str, Any] = {
    **_COMMON,
    "acquisition_matrix": [128, 128, 24],
    "acq_contrast": "gre",
    "modality": "T1w",
    "echo_time": 0.005,
    "repetition_time": 0.3,
    "flip_angle": 30.0,
    "inversion_time": None,
}
_GROUND_TRUTH: dict[str, Any] = {
    k: v for k, v in _COMMON.items() if k not in ("engine", "desired_snr", "seq")
}
_KINDS: dict[str, dict[str, Any]] = {
    "asl": _ASL,
    "structural": _STRUCTURAL,
    "ground_truth": _GROUND_TRUTH,
}
_MODALITIES = ("T1w", "T2w", "T2starw", "PDw", "FLAIR", "inplaneT1", "inplaneT2")

DEFAULT_PARAMS: dict[str, Any] = {
    "subject_label": "001",
    "field_strength": "3T",
    "seed": 0,
    "hires_ground_truth": True,
    "pipelines": [
        {"kind": "asl", "name": "pcasl"},
        {"kind": "structural", "name": "t1w"},
        {"kind": "ground_truth", "name": "lowres"},
    ],
}
"""Parameters of ``mr0 dro`` without a file: pCASL, a T1w GRE and the resampled ground truth.
Each pipeline's missing keys take the defaults of its kind (see :func:`pipeline_defaults`);
``hires_ground_truth`` writes the 1 mm ground truth too."""


class DroError(ValueError):
    """Bad DRO parameters (names the key and the value)."""


def pipeline_defaults(kind: str) -> dict[str, Any]:
    """Return a copy of the default keys of a pipeline ``kind``."""
    if kind not in _KINDS:
        raise DroError(f"pipeline kind must be one of {sorted(_KINDS)}, got {kind!r}")
    out = copy.deepcopy(_KINDS[kind])
    out["kind"] = kind
    return out


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def _number(where: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DroError(f"{where} must be a number, got {value!r}")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise DroError(f"{where} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


def _per_volume(where: str, value: Any, n: int, lo: float, hi: float) -> list[float]:
    """Return ``n`` floats from a number or a list of ``n`` numbers."""
    if isinstance(value, list):
        if len(value) != n:
            raise DroError(f"{where} has {len(value)} entries, the series has {n} volumes")
        return [_number(f"{where}[{i}]", v, lo, hi) for i, v in enumerate(value)]
    return [_number(where, value, lo, hi)] * n


def _triples(where: str, value: Any, n: int, limit: float) -> np.ndarray:
    """One ``[x, y, z]`` or ``n`` of them -> [n, 3] float64."""
    arr = value
    if isinstance(arr, list) and len(arr) == 3 and not any(isinstance(v, list) for v in arr):
        arr = [arr] * n
    if not isinstance(arr, list) or len(arr) != n:
        raise DroError(f"{where} must be [x, y, z] or a list of {n} of them, got {value!r}")
    out = np.zeros((n, 3))
    for i, row in enumerate(arr):
        if not isinstance(row, list) or len(row) != 3:
            raise DroError(f"{where}[{i}] must be [x, y, z], got {row!r}")
        out[i] = [_number(f"{where}[{i}]", v, -limit, limit) for v in row]
    return out


def _check_pipeline(index: int, raw: Any) -> dict[str, Any]:
    """Merge one pipeline's keys over its kind's defaults and check them all."""
    if not isinstance(raw, Mapping):
        raise DroError(f"pipelines[{index}] must be an object, got {type(raw).__name__}")
    where = f"pipelines[{index}]"
    p = pipeline_defaults(str(raw.get("kind")))
    unknown = set(raw) - set(p)
    if unknown:
        raise DroError(f"{where}: unknown keys {sorted(unknown)} for kind {p['kind']!r}")
    p.update(copy.deepcopy(dict(raw)))
    name = p["name"] if p["name"] is not None else f"{p['kind'].replace('_', '')}{index}"
    if not isinstance(name, str) or not name.isalnum() or len(name) > 32:
        raise DroError(f"{where}.name must be 1..32 letters/digits (a BIDS label), got {name!r}")
    p["name"] = name
    matrix = p["acquisition_matrix"]
    if (
        not isinstance(matrix, list)
        or len(matrix) != 3
        or any(isinstance(m, bool) or not isinstance(m, int) for m in matrix)
        or not all(1 <= m <= MAX_MATRIX for m in matrix)
    ):
        raise DroError(f"{where}.acquisition_matrix must be 3 integers in 1..{MAX_MATRIX}, "
                       f"got {matrix!r}")  # fmt: skip
    if math.prod(matrix) > MAX_VOXELS:
        raise DroError(f"{where}.acquisition_matrix {matrix} exceeds {MAX_VOXELS} voxels")
    fov = p["fov_mm"]
    if not isinstance(fov, list) or len(fov) != 3:
        raise DroError(f"{where}.fov_mm must be [x, y, z] in mm, got {fov!r}")
    p["fov_mm"] = [_number(f"{where}.fov_mm", v, 1.0, 500.0) for v in fov]
    if p["kind"] != "ground_truth":
        if p["engine"] not in ("analytic", "pdg"):
            raise DroError(f"{where}.engine must be 'analytic' or 'pdg', got {p['engine']!r}")
        p["desired_snr"] = _number(f"{where}.desired_snr", p["desired_snr"], 0.0, 1e6)
        if p["engine"] == "pdg":
            if not isinstance(p["seq"], str) or not p["seq"]:
                raise DroError(f"{where}: engine 'pdg' needs 'seq', the readout's .seq file")
        elif p["seq"] is not None:
            raise DroError(f"{where}.seq is used by engine 'pdg' only, not {p['engine']!r}")
    if p["kind"] == "asl":
        _check_asl(where, p)
    elif p["kind"] == "structural":
        _check_structural(where, p)
    n = len(p["asl_context"]) if p["kind"] == "asl" else 1
    p["rotation"] = _triples(f"{where}.rotation", p["rotation"], n, 180.0)
    p["translation"] = _triples(f"{where}.translation", p["translation"], n, 500.0)
    return p


def _check_asl(where: str, p: dict[str, Any]) -> None:
    context = p["asl_context"]
    if isinstance(context, str):
        context = context.split()
    if (
        not isinstance(context, list)
        or not 1 <= len(context) <= MAX_VOLUMES
        or any(c not in ("m0scan", "control", "label") for c in context)
    ):
        raise DroError(f"{where}.asl_context must be 1..{MAX_VOLUMES} of m0scan/control/label, "
                       f"got {p['asl_context']!r}")  # fmt: skip
    if not any(c != "m0scan" for c in context):
        raise DroError(f"{where}.asl_context has no control or label volume")
    p["asl_context"] = context
    n = len(context)
    if p["label_type"] not in LABEL_TYPES:
        raise DroError(f"{where}.label_type must be one of {LABEL_TYPES}, got {p['label_type']!r}")
    if p["gkm_model"] not in MODELS:
        raise DroError(f"{where}.gkm_model must be one of {MODELS}, got {p['gkm_model']!r}")
    if p["readout"] not in ("gre", "se"):
        raise DroError(f"{where}.readout must be 'gre' or 'se', got {p['readout']!r}")
    if p["background_suppression"] is not False:
        raise DroError(f"{where}.background_suppression: not simulated; only false is accepted")
    p["label_duration"] = _number(f"{where}.label_duration", p["label_duration"], 1e-3, 10.0)
    p["label_efficiency"] = _number(f"{where}.label_efficiency", p["label_efficiency"], 0.01, 1)
    p["post_labeling_delay"] = _per_volume(
        f"{where}.post_labeling_delay", p["post_labeling_delay"], n, 0.0, 10.0
    )
    p["repetition_time"] = _per_volume(
        f"{where}.repetition_time", p["repetition_time"], n, 1e-3, 100.0
    )
    p["echo_time"] = _number(f"{where}.echo_time", p["echo_time"], 0.0, 1.0)
    p["flip_angle"] = _number(f"{where}.flip_angle", p["flip_angle"], 0.0, 180.0)
    for key in ("lambda_blood_brain", "t1_arterial_blood"):
        if p[key] is not None:
            p[key] = _number(f"{where}.{key}", p[key], 1e-3, 10.0)
    if p["label_type"] == "pasl":
        if not isinstance(p["bolus_cut_off_flag"], bool):
            raise DroError(f"{where}.bolus_cut_off_flag must be true or false")
        if p["bolus_cut_off_flag"]:
            p["bolus_cut_off_delay_time"] = _number(
                f"{where}.bolus_cut_off_delay_time", p["bolus_cut_off_delay_time"], 1e-3, 10.0
            )
        elif p["bolus_cut_off_delay_time"] is not None:
            raise DroError(f"{where}.bolus_cut_off_delay_time needs bolus_cut_off_flag true")
    elif p["bolus_cut_off_flag"] or p["bolus_cut_off_delay_time"] is not None:
        raise DroError(f"{where}: bolus cut-off keys are for label_type 'pasl' only")


def _check_structural(where: str, p: dict[str, Any]) -> None:
    if p["acq_contrast"] not in ("gre", "se", "ir"):
        raise DroError(f"{where}.acq_contrast must be gre, se or ir, got {p['acq_contrast']!r}")
    if p["modality"] not in _MODALITIES:
        raise DroError(f"{where}.modality must be one of {_MODALITIES}, got {p['modality']!r}")
    p["echo_time"] = _number(f"{where}.echo_time", p["echo_time"], 0.0, 1.0)
    p["repetition_time"] = _number(f"{where}.repetition_time", p["repetition_time"], 1e-3, 100)
    p["flip_angle"] = _number(f"{where}.flip_angle", p["flip_angle"], 0.0, 180.0)
    if p["acq_contrast"] == "ir":
        p["inversion_time"] = _number(
            f"{where}.inversion_time", p["inversion_time"], 0.0, p["repetition_time"]
        )
    elif p["inversion_time"] is not None:
        raise DroError(f"{where}.inversion_time is for acq_contrast 'ir' only")


def load_params(source: str | PathLike[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """Read and check DRO parameters (a file, a dict, or None for :data:`DEFAULT_PARAMS`).

    Returns
    -------
    dict
        ``subject_label``, ``field_strength``, ``seed``, ``pipelines`` (each complete, checked).

    Raises
    ------
    DroError
        For unknown keys, values out of range, a file over 1 MiB or not JSON.
    """
    if source is None:
        raw: Any = copy.deepcopy(DEFAULT_PARAMS)
    elif isinstance(source, Mapping):
        raw = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"DRO parameter file not found: {path}")
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise DroError(f"{path}: parameter file over {MAX_PARAMS_BYTES} bytes")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DroError(f"{path}: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise DroError("DRO parameters must be a JSON object")
    unknown = set(raw) - set(DEFAULT_PARAMS)
    if unknown:
        raise DroError(f"unknown top-level keys {sorted(unknown)}; known {sorted(DEFAULT_PARAMS)}")
    params = {**copy.deepcopy(DEFAULT_PARAMS), **raw}
    label = params["subject_label"]
    if not isinstance(label, str) or not label.isalnum() or len(label) > 32:
        raise DroError(f"subject_label must be 1..32 letters/digits, got {label!r}")
    if str(params["field_strength"]).upper().rstrip("T").strip() not in ("3", "3.0", "1.5"):
        raise DroError(f"field_strength must be '3T' or '1.5T', got {params['field_strength']!r}")
    seed = params["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise DroError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(params["hires_ground_truth"], bool):
        raise DroError(
            f"hires_ground_truth must be true or false, got {params['hires_ground_truth']!r}"
        )
    pipelines = params["pipelines"]
    if not isinstance(pipelines, list) or not 1 <= len(pipelines) <= MAX_PIPELINES:
        raise DroError(f"pipelines must be a list of 1..{MAX_PIPELINES} objects")
    params["pipelines"] = [_check_pipeline(i, p) for i, p in enumerate(pipelines)]
    names = [p["name"] for p in params["pipelines"]]
    if len(set(names)) != len(names):
        raise DroError(f"pipeline names must be unique, got {names}")
    return params


def write_default_params(path: str | PathLike[str]) -> Path:
    """Write :data:`DEFAULT_PARAMS` with every pipeline's keys spelled out; refuse to overwrite."""
    out = Path(path)
    if out.exists():
        raise FileExistsError(f"{out} exists; not overwritten")
    full = copy.deepcopy(DEFAULT_PARAMS)
    full["pipelines"] = [{**pipeline_defaults(p["kind"]), **p} for p in full["pipelines"]]
    out.write_text(json.dumps(full, indent=2) + "\n", encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# Ground truth, motion and resampling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroundTruth:
    """The 1 mm ground truth: labels and per-label values.

    Attributes
    ----------
    seg
        [x, y, z] uint8 labels, 1 mm.
    affine
        [4, 4] voxel index -> MNI RAS+ mm.
    values
        Quantity (``perfusion_rate``, ``transit_time``, ``T1``, ``T2``, ``T2star``, ``M0``) ->
        [labels] float64 lookup table (index 0: background, all zero except transit time).
    t1_blood, lambda_blood_brain, field_T
        s, ml/g, T.
    """

    seg: np.ndarray
    affine: np.ndarray
    values: dict[str, np.ndarray]
    t1_blood: float
    lambda_blood_brain: float
    field_T: float

    @classmethod
    def brain(cls, field: str = "3T") -> GroundTruth:
        """Load the built-in brain's ground truth at ``field``."""
        seg, affine, info = brain_ground_truth(field)
        n = max(info["labels"].values()) + 1
        values = {q: np.zeros(n) for q in GT_QUANTITIES if q != "seg_label"}
        for tissue, label in info["labels"].items():
            for q in values:
                values[q][label] = float(info["tissues"][tissue][q])
        return cls(seg, affine, values, info["T1_blood"], info["lambda_blood_brain"], info["B0_T"])

    def map(self, quantity: str) -> np.ndarray:
        """[x, y, z] float32 map of one quantity (``seg_label`` gives the labels)."""
        if quantity == "seg_label":
            return self.seg.astype(np.float32)
        result: np.ndarray = self.values[quantity].astype(np.float32)[self.seg]
        return result

    def table(self, quantity: str) -> np.ndarray:
        """Per-label values of ``quantity`` (float64)."""
        return self.values[quantity]


def _rotation(deg: np.ndarray) -> np.ndarray:
    """Rotation matrix of rotations about x, then y, then z (degrees)."""
    ax, ay, az = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    result: np.ndarray = rz @ ry @ rx
    return result


def acquisition_affine(p: Mapping[str, Any]) -> np.ndarray:
    """[4, 4] voxel index -> MNI mm of a pipeline's acquisition grid (voxel n // 2 at centre)."""
    centre_m = [c / 1000.0 for c in BRAIN_FOV_CENTRE_MNI_MM]
    return image_affine(p["acquisition_matrix"], [f / 1000.0 for f in p["fov_mm"]], centre_m)


def resample(
    volume: np.ndarray,
    src_affine: np.ndarray,
    dst_affine: np.ndarray,
    shape: tuple[int, int, int],
    rotation_deg: np.ndarray,
    translation_mm: np.ndarray,
    order: int = 1,
) -> np.ndarray:
    """Move ``volume`` rigidly and sample it on a destination grid.

    The object is rotated by ``rotation_deg`` about the destination grid's centre voxel and
    then shifted by ``translation_mm`` (world mm); each destination voxel centre ``x`` takes
    the source value at the moved-back position, trilinearly (``order=1``), 0 outside.

    Returns
    -------
    np.ndarray
        [shape] float32.
    """
    rot = _rotation(np.asarray(rotation_deg, dtype=np.float64))
    centre = dst_affine[:3, :3] @ (np.asarray(shape) // 2) + dst_affine[:3, 3]
    inverse_motion = np.eye(4)
    inverse_motion[:3, :3] = rot.T
    inverse_motion[:3, 3] = centre - rot.T @ (centre + np.asarray(translation_mm))
    m = np.linalg.inv(src_affine) @ inverse_motion @ dst_affine
    out = ndimage.affine_transform(
        np.asarray(volume, dtype=np.float32), m[:3, :3], m[:3, 3], output_shape=tuple(shape),
        order=order, mode="constant", cval=0.0, prefilter=False,
    )  # fmt: skip
    result: np.ndarray = out.astype(np.float32)
    return result


# --------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------


def _asl_mz_tables(gt: GroundTruth, p: Mapping[str, Any]) -> list[np.ndarray]:
    """Per volume, per label: the longitudinal magnetisation before the readout."""
    t1, m0 = gt.table("T1"), gt.table("M0")
    tissue = m0 > 0
    t1_safe = np.where(tissue, t1, 1.0)
    t1b = p["t1_arterial_blood"] or gt.t1_blood
    lam = p["lambda_blood_brain"] or gt.lambda_blood_brain
    tau = _bolus(p)
    out = []
    for kind, pld, tr in zip(p["asl_context"], p["post_labeling_delay"], p["repetition_time"],
                             strict=True):  # fmt: skip
        mz = np.where(tissue, m0 * -np.expm1(-tr / t1_safe), 0.0)
        if kind == "label":
            dm = delta_m(
                _signal_time(p, pld), perfusion=gt.table("perfusion_rate"),
                transit_time=gt.table("transit_time"), m0=m0, t1_tissue=t1_safe,
                label_type=p["label_type"], label_duration=tau, t1_blood=t1b,
                partition_coefficient=lam, label_efficiency=p["label_efficiency"],
                model=p["gkm_model"],
            )  # fmt: skip
            mz = mz - np.where(tissue, dm, 0.0)
        out.append(mz)
    return out


def _bolus(p: Mapping[str, Any]) -> float:
    """τ: labelling duration, or for PASL the bolus cut-off time TI1 (else label_duration)."""
    if p["label_type"] == "pasl" and p["bolus_cut_off_flag"]:
        return float(p["bolus_cut_off_delay_time"])
    return float(p["label_duration"])


def _signal_time(p: Mapping[str, Any], pld: float) -> float:
    """Time since the start of labelling at the readout: τ + PLD, or TI (= PLD) for PASL."""
    return float(pld if p["label_type"] == "pasl" else p["label_duration"] + pld)


def _readout_table(gt: GroundTruth, p: Mapping[str, Any]) -> np.ndarray:
    """Analytic ASL readout weight per label (multiplies Mz)."""
    if p["readout"] == "gre":
        decay = _decay(p["echo_time"], gt.table("T2star"))
        return math.sin(math.radians(p["flip_angle"])) * decay
    return _decay(p["echo_time"], gt.table("T2"))


def _decay(te: float, t2: np.ndarray) -> np.ndarray:
    return np.where(t2 > 0, np.exp(-te / np.where(t2 > 0, t2, 1.0)), 0.0)


def _structural_table(gt: GroundTruth, p: Mapping[str, Any]) -> np.ndarray:
    """Analytic structural signal per label."""
    m0, t1 = gt.table("M0"), gt.table("T1")
    t1 = np.where(t1 > 0, t1, 1.0)
    tr, te = p["repetition_time"], p["echo_time"]
    e1 = np.exp(-tr / t1)
    if p["acq_contrast"] == "gre":
        a = math.radians(p["flip_angle"])
        result: np.ndarray = (
            m0 * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * _decay(te, gt.table("T2star"))
        )
        return result
    if p["acq_contrast"] == "se":
        result = m0 * (1 - 2 * np.exp(-(tr - te / 2) / t1) + e1) * _decay(te, gt.table("T2"))
        return result
    ti = p["inversion_time"]
    result = m0 * np.abs(1 - 2 * np.exp(-ti / t1) + e1) * _decay(te, gt.table("T2"))
    return result


def _add_noise(
    volume: np.ndarray, reference: np.ndarray, snr: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """Magnitude of ``volume`` plus complex Gaussian noise at ``snr``; returns (image, σ)."""
    if snr == 0:
        return volume, 0.0
    fg = reference > 0
    sigma = float(reference[fg].mean()) / snr if fg.any() else 0.0
    re = rng.normal(0.0, sigma, volume.shape)
    im = rng.normal(0.0, sigma, volume.shape)
    return np.hypot(volume + re, im).astype(np.float32), sigma


# --------------------------------------------------------------------------------------------
# PDG engine
# --------------------------------------------------------------------------------------------


class _PdgReadout:
    """A Pulseq readout simulated by PDG on per-slice phantoms of the acquisition grid."""

    def __init__(self, seq_path: str, p: Mapping[str, Any], where: str) -> None:
        from mr0core.io.params import sequence_parameters
        from mr0core.sequence import Sequence

        path = Path(seq_path)
        if not path.is_file():
            raise FileNotFoundError(f"{where}.seq: file not found: {path}")
        self.seq = Sequence.import_file(path)
        self.path = path
        self.params = sequence_parameters(self.seq)
        nx, ny, nz = p["acquisition_matrix"]
        if nz * self.volumes(p) > MAX_PDG_RUNS:
            raise DroError(f"{where}: engine 'pdg' simulates at most {MAX_PDG_RUNS} volumes × "
                           f"slices, asked for {nz * self.volumes(p)}")  # fmt: skip
        self.shape = (nx, ny)
        self.size_m = (p["fov_mm"][0] / 1e3, p["fov_mm"][1] / 1e3, p["fov_mm"][2] / nz / 1e3)

    @staticmethod
    def volumes(p: Mapping[str, Any]) -> int:
        return len(p["asl_context"]) if p["kind"] == "asl" else 1

    def image(self, maps: Mapping[str, np.ndarray]) -> np.ndarray:
        """Simulate every slice of ``maps`` (PD, T1, T2, T2dash: [x, y, z]); |image| [x, y, z]."""
        import torch

        from mr0core.jobs import SimSettings, run_simulation
        from mr0core.phantom.voxel_grid import VoxelGridPhantom
        from mr0core.recon import KData, reconstruct

        out = np.zeros(maps["PD"].shape, dtype=np.float32)
        for z in range(maps["PD"].shape[2]):
            pd = maps["PD"][:, :, z : z + 1]
            if not np.any(pd > 0):
                continue

            def grid(key: str, z: int = z) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(maps[key][:, :, z : z + 1]))

            phantom = VoxelGridPhantom(
                PD=grid("PD"), T1=grid("T1"), T2=grid("T2"), T2dash=grid("T2dash"), D=0.0,
                B0=0.0, B1=1.0, coil_sens=1.0, size=torch.tensor(self.size_m),
            )  # fmt: skip
            signal = run_simulation(self.seq, phantom, SimSettings(), progress=False)
            rec = reconstruct(KData.from_sequence(signal, self.seq))
            if tuple(rec.matrix[:2]) != self.shape or rec.matrix[2] != 1:
                raise DroError(f"{self.path}: readout reconstructs to {rec.matrix}, the "
                               f"acquisition matrix is {(*self.shape, 1)} per slice")  # fmt: skip
            fov = np.asarray(rec.fov_m[:2])
            if not np.allclose(fov, self.size_m[:2], rtol=0.01):
                raise DroError(f"{self.path}: readout FOV {fov.tolist()} m, fov_mm asks "
                               f"{list(self.size_m[:2])} m")  # fmt: skip
            out[:, :, z] = rec.image[0, 0, 0, :, :, 0].abs().numpy()
        return out


def _pdg_tissue_maps(
    gt: GroundTruth, p: Mapping[str, Any], rotation: np.ndarray, translation: np.ndarray
) -> dict[str, np.ndarray]:
    """T1, T2, T2′ maps of one volume on the acquisition grid (s; background gets T1 = 1)."""
    t2star, t2 = gt.table("T2star"), gt.table("T2")
    valid = (t2star > 0) & (t2star < t2)
    rate = 1.0 / np.where(valid, t2star, 1.0) - 1.0 / np.where(valid, t2, 2.0)  # 1/T2′ (1/s)
    t2dash = np.where(valid, 1.0 / rate, 1.0)
    tables = {"T1": gt.table("T1"), "T2": gt.table("T2"), "T2dash": t2dash}
    out = {}
    dst = acquisition_affine(p)
    shape = tuple(p["acquisition_matrix"])
    for key, table in tables.items():
        vol = np.where(table > 0, table, 1.0).astype(np.float32)[gt.seg]
        res = resample(vol, gt.affine, dst, shape, rotation, translation)
        out[key] = np.where(res > 1e-3, res, 1.0).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def _sim_block(p: Mapping[str, Any], sigma: list[float], seed: int) -> dict[str, Any]:
    block: dict[str, Any] = {
        "Pipeline": p["kind"],
        "PipelineName": p["name"],
        "Engine": p["engine"] if p["kind"] != "ground_truth" else "none",
        "GroundTruth": "builtin:brain (ICBM 2009a labels, ASL DRO 2.2.0 tissue values)",
        "Resampling": "trilinear (scipy.ndimage.affine_transform, order 1)",
        "MotionRotationDeg": p["rotation"],
        "MotionTranslationMm": p["translation"],
        "Seed": seed,
    }
    if p["kind"] != "ground_truth":
        block["DesiredSNR"] = p["desired_snr"]
        block["NoiseStd"] = sigma
    if p["kind"] == "asl":
        block["KineticModel"] = f"Buxton 1998 general kinetic model ({p['gkm_model']})"
    if p.get("engine") == "pdg":
        block["ReadoutSequence"] = Path(p["seq"]).name
        block["Approximation"] = (
            "label condition as a static per-voxel magnetisation deficit (proton density scaled "
            "by Mz/M0) at the readout's excitation; no flow through the readout"
        )
    else:
        block["Simulator"] = "closed-form contrast"
    return block


def _sidecar(
    p: Mapping[str, Any], field_T: float, sim: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    fov_m = tuple(f / 1000.0 for f in p["fov_mm"])
    side = bids_sidecar(
        None, phantom_name="builtin:brain", field_strength_T=field_T, sim_settings=sim,
        series_description=f"mr0 DRO {p['kind']} {p['name']}", matrix=tuple(
            p["acquisition_matrix"]), fov_m=fov_m, extra=extra,
    )  # fmt: skip
    return side


def _asl_sidecars(
    p: Mapping[str, Any], gt: GroundTruth, sim: dict[str, Any], asl_uri: str
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    series = [i for i, c in enumerate(p["asl_context"]) if c != "m0scan"]
    m0s = [i for i, c in enumerate(p["asl_context"]) if c == "m0scan"]
    plds = [p["post_labeling_delay"][i] for i in series]
    trs = [p["repetition_time"][i] for i in series]
    acq = "2D" if p["engine"] == "pdg" else "3D"
    common: dict[str, Any] = {
        "MRAcquisitionType": acq,
        "EchoTime": p["echo_time"],
        "FlipAngle": p["flip_angle"],
        "MagneticFieldStrength": gt.field_T,
        "PulseSequenceType": p["readout"].upper(),
        "BackgroundSuppression": False,
    }
    if acq == "2D":
        common["SliceTiming"] = [0.0] * p["acquisition_matrix"][2]
    labels = {"pcasl": "PCASL", "casl": "CASL", "pasl": "PASL"}
    asl: dict[str, Any] = {
        **common,
        "ArterialSpinLabelingType": labels[p["label_type"]],
        "PostLabelingDelay": plds[0] if len(set(plds)) == 1 else plds,
        "RepetitionTimePreparation": trs[0] if len(set(trs)) == 1 else trs,
        "M0Type": "Separate" if m0s else "Absent",
        "TotalAcquiredPairs": max(1, sum(c == "control" for c in p["asl_context"])),
        "LabelingEfficiency": p["label_efficiency"],
    }
    if p["label_type"] == "pasl":
        asl["BolusCutOffFlag"] = bool(p["bolus_cut_off_flag"])
        if p["bolus_cut_off_flag"]:
            asl["BolusCutOffDelayTime"] = p["bolus_cut_off_delay_time"]
            asl["BolusCutOffTechnique"] = "QUIPSSII"
    else:
        asl["LabelingDuration"] = p["label_duration"]
        if p["label_type"] == "pcasl":
            asl["PCASLType"] = "balanced"
    sim = {**sim, "BloodT1": p["t1_arterial_blood"] or gt.t1_blood,
           "PartitionCoefficient": p["lambda_blood_brain"] or gt.lambda_blood_brain}  # fmt: skip
    asl_side = _sidecar(p, gt.field_T, sim, **asl)
    m0_side = None
    if m0s:
        m0_trs = [p["repetition_time"][i] for i in m0s]
        m0 = {
            **common,
            "RepetitionTimePreparation": m0_trs[0] if len(set(m0_trs)) == 1 else m0_trs,
            "IntendedFor": asl_uri,
        }
        m0_side = _sidecar(p, gt.field_T, sim, **m0)
    return asl_side, m0_side


def _write(
    path: Path, data: np.ndarray, affine: np.ndarray, sidecar: dict[str, Any] | None
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, data, affine, sidecar=json_safe(sidecar) if sidecar else None,
                       component="real")  # fmt: skip


def _run_volumes(
    gt: GroundTruth,
    p: Mapping[str, Any],
    tables: list[np.ndarray],
    readout: np.ndarray | None,
    pdg: _PdgReadout | None,
) -> list[np.ndarray]:
    """Noise-free volumes on the acquisition grid, one per Mz table."""
    dst = acquisition_affine(p)
    shape = tuple(p["acquisition_matrix"])
    out = []
    for i, mz in enumerate(tables):
        rot, shift = p["rotation"][i], p["translation"][i]
        if pdg is None:
            weight = mz * (readout if readout is not None else 1.0)
            out.append(resample(weight.astype(np.float32)[gt.seg], gt.affine, dst, shape, rot,
                                shift))  # fmt: skip
        else:
            maps = _pdg_tissue_maps(gt, p, rot, shift)
            maps["PD"] = resample(mz.astype(np.float32)[gt.seg], gt.affine, dst, shape, rot, shift)
            out.append(pdg.image(maps))
    return out


def _pipeline(
    gt: GroundTruth, p: Mapping[str, Any], root: Path, sub: str, rng: np.random.Generator,
    seed: int,
) -> list[Path]:  # fmt: skip
    dst = acquisition_affine(p)
    stem = f"sub-{sub}_acq-{p['name']}"
    where = f"pipeline {p['name']!r}"
    written: list[Path] = []
    if p["kind"] == "ground_truth":
        folder = root / "derivatives" / "groundtruth" / f"sub-{sub}" / "anat"
        sim = _sim_block(p, [], seed)
        for q, (unit, desc) in GT_QUANTITIES.items():
            order = 0 if q == "seg_label" else 1
            vol = resample(gt.map(q), gt.affine, dst, tuple(p["acquisition_matrix"]),
                           p["rotation"][0], p["translation"][0], order=order)  # fmt: skip
            side = {"Quantity": q, "Units": unit, "Description": desc, "Simulation": sim}
            written.append(_write(folder / f"{stem}_desc-{q.replace('_', '')}_map.nii.gz", vol,
                                  dst, side))  # fmt: skip
        return written
    pdg = _PdgReadout(p["seq"], p, where) if p["engine"] == "pdg" else None
    if p["kind"] == "structural":
        if pdg is None:
            tables, readout = [_structural_table(gt, p)], None
        else:
            tables, readout = [gt.table("M0")], None
        vols = _run_volumes(gt, p, tables, readout, pdg)
        img, sigma = _add_noise(vols[0], vols[0], p["desired_snr"], rng)
        sim = _sim_block(p, [sigma], seed)
        extra = {
            "MRAcquisitionType": "2D" if pdg else "3D",
            "EchoTime": p["echo_time"],
            "RepetitionTime": p["repetition_time"],
            "FlipAngle": p["flip_angle"],
            "PulseSequenceType": p["acq_contrast"].upper(),
        }
        if p["acq_contrast"] == "ir":
            extra["InversionTime"] = p["inversion_time"]
        if pdg is not None:
            extra["SliceTiming"] = [0.0] * p["acquisition_matrix"][2]
        side = _sidecar(p, gt.field_T, sim, **extra)
        path = root / f"sub-{sub}" / "anat" / f"{stem}_{p['modality']}.nii.gz"
        return [_write(path, img, dst, side)]
    # ASL
    tables = _asl_mz_tables(gt, p)
    readout = _readout_table(gt, p) if pdg is None else None
    vols = _run_volumes(gt, p, tables, readout, pdg)
    context = p["asl_context"]
    ref_index = context.index("m0scan") if "m0scan" in context else 0
    reference = vols[ref_index]
    noisy, sigmas = [], []
    for v in vols:
        img, s = _add_noise(v, reference, p["desired_snr"], rng)
        noisy.append(img)
        sigmas.append(s)
    sim = _sim_block(p, sigmas, seed)
    perf = root / f"sub-{sub}" / "perf"
    asl_path = perf / f"{stem}_asl.nii.gz"
    asl_uri = f"bids::sub-{sub}/perf/{asl_path.name}"
    asl_side, m0_side = _asl_sidecars(p, gt, sim, asl_uri)
    series = [i for i, c in enumerate(context) if c != "m0scan"]
    m0s = [i for i, c in enumerate(context) if c == "m0scan"]
    written.append(_write(asl_path, np.stack([noisy[i] for i in series], axis=-1), dst, asl_side))
    tsv = perf / f"{stem}_aslcontext.tsv"
    tsv.write_text("volume_type\n" + "".join(f"{context[i]}\n" for i in series), encoding="utf-8")
    written.append(tsv)
    if m0s:
        m0 = np.stack([noisy[i] for i in m0s], axis=-1) if len(m0s) > 1 else noisy[m0s[0]]
        written.append(_write(perf / f"{stem}_m0scan.nii.gz", m0, dst, m0_side))
    return written


def _write_hires_truth(gt: GroundTruth, root: Path, sub: str) -> list[Path]:
    folder = root / "derivatives" / "groundtruth" / f"sub-{sub}" / "anat"
    out = []
    for q, (unit, desc) in GT_QUANTITIES.items():
        side = {"Quantity": q, "Units": unit, "Description": desc,
                "Resolution": "1 mm ICBM 2009a grid (MNI RAS+ mm)"}  # fmt: skip
        name = f"sub-{sub}_res-1mm_desc-{q.replace('_', '')}_map.nii.gz"
        out.append(_write(folder / name, gt.map(q), gt.affine, side))
    return out


def _dataset_description(root: Path, name: str, derivative: bool = False) -> None:
    from mr0core import __version__

    desc: dict[str, Any] = {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative" if derivative else "raw",
        "Authors": ["mr0core mr0 dro (simulated data)"],
        "GeneratedBy": [
            {
                "Name": "mr0core",
                "Version": str(__version__),
                "Description": "mr0 dro: digital reference object on the built-in "
                "brain (ASL DRO's ground truth)",
            }
        ],
    }
    if not derivative:
        desc["License"] = "MIT (ground truth from ASL DRO 2.2.0, Gold Standard Phantoms Ltd)"
    (root / "dataset_description.json").write_text(json.dumps(desc, indent=2) + "\n")


def generate(
    params: str | PathLike[str] | Mapping[str, Any] | None,
    out: str | PathLike[str],
) -> list[Path]:
    """Run every pipeline of ``params`` and write one BIDS dataset to ``out``.

    Parameters
    ----------
    params
        Parameter file, dict, or None for :data:`DEFAULT_PARAMS` (see :func:`load_params`).
    out
        A folder (created; must not exist or be empty), or a ``.zip`` / ``.tar.gz`` archive
        (must not exist).

    Returns
    -------
    list of pathlib.Path
        The files written (inside the archive: their paths relative to its root).
    """
    target = Path(out)
    name = target.name.lower()
    archive = "zip" if name.endswith(".zip") else "tar" if name.endswith(".tar.gz") else None
    if archive is not None and target.exists():
        raise FileExistsError(f"{target} exists; not overwritten")
    if archive is None and target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"output folder {target} exists and is not empty")
    if archive is not None and not target.parent.is_dir():
        raise FileNotFoundError(f"output folder {target.parent} does not exist")
    cfg = load_params(params)
    gt = GroundTruth.brain(cfg["field_strength"])
    rng = np.random.default_rng(cfg["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dro"
        root.mkdir()
        _dataset_description(root, "mr0 ASL digital reference object")
        gt_root = root / "derivatives" / "groundtruth"
        gt_root.mkdir(parents=True)
        _dataset_description(gt_root, "mr0 DRO ground truth", derivative=True)
        (root / "README").write_text(
            "Digital reference object for arterial spin labelling, simulated by mr0core "
            "(mr0 dro) on the built-in ICBM 2009a brain with the ground truth of ASL DRO 2.2.0 "
            "(perfusion rate, transit time, T1, T2, T2*, M0 per tissue). Each sidecar's "
            "Simulation block says how its images were made. The ground truth, at 1 mm and at "
            "each ground_truth pipeline's grid, is in derivatives/groundtruth.\n", encoding="utf-8",
        )  # fmt: skip
        sub = cfg["subject_label"]
        files = _write_hires_truth(gt, root, sub) if cfg["hires_ground_truth"] else []
        for p in cfg["pipelines"]:
            files += _pipeline(gt, p, root, sub, rng, cfg["seed"])
        rel = sorted(f.relative_to(root) for f in root.rglob("*") if f.is_file())
        if archive == "zip":
            with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
                for f in rel:
                    zf.write(root / f, f.as_posix())
            return rel
        if archive == "tar":
            with tarfile.open(target, "w:gz") as tf:
                for f in rel:
                    tf.add(root / f, f.as_posix())
            return rel
        target.mkdir(parents=True, exist_ok=True)
        for f in rel:
            (target / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(root / f, target / f)
        return [target / f for f in rel]

"""Build the compact brain phantom data shipped in ``mr0core/data/brain/``.

The source is the 1 mm ICBM 2009a (non-linear symmetric) ground truth of the ASL digital
reference object ASLDRO (PyPI ``asldro==2.2.0``, MIT licence, Gold Standard Phantoms Ltd).
Its NIfTI files hold float64 volumes of shape (197, 233, 189, 1, 7); the last axis is
(perfusion_rate, transit_time, t1, t2, t2_star, m0, seg_label).  ASLDRO itself cannot be
installed next to current numpy, so this script reads the files straight out of the wheel.

Written files:

* ``icbm2009a_seg.nii.gz``: segmentation as uint8 (0 background, 1 GM, 2 WM, 3 CSF), cropped
  to the bounding box of the non-background voxels; the affine (voxel index -> RAS+ mm, voxel
  centres) carries the crop offset.  The gzip stream has mtime 0, so reruns are byte-identical.
* ``tissues.json``: per field strength ("3T", "1.5T") and tissue (gm, wm, csf) the T1, T2, T2*
  (s), M0 (arbitrary units), perfusion rate (ml/100 g/min) and transit time (s) of the source,
  the source's blood T1 (s) and blood-brain partition coefficient (ml/g) per field, with the
  affine and the crop.
* ``LICENSE.asldro``: the ASLDRO MIT licence.

Usage::

    python scripts/make_brain_data.py [path/to/asldro-2.2.0-py3-none-any.whl]

Without a path the wheel is fetched with ``pip download --no-deps asldro==2.2.0``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

OUT_DIR = Path(__file__).resolve().parent.parent / "mr0core" / "data" / "brain"
SEG_NAME = "icbm2009a_seg.nii.gz"
JSON_NAME = "tissues.json"
FIELDS = {"3T": "hrgt_icbm_2009a_nls_3t", "1.5T": "hrgt_icbm_2009a_nls_1.5t"}
QUANTITIES = ("perfusion_rate", "transit_time", "t1", "t2", "t2_star", "m0", "seg_label")
KEPT = {
    "t1": "T1",
    "t2": "T2",
    "t2_star": "T2star",
    "m0": "M0",
    "perfusion_rate": "perfusion_rate",
    "transit_time": "transit_time",
}
#: Source sidecar "parameters" kept per field: source name -> our name.
KEPT_PARAMETERS = {"t1_arterial_blood": "T1_blood", "lambda_blood_brain": "lambda_blood_brain"}


def download_wheel(dest: Path) -> Path:
    """Download the asldro 2.2.0 wheel with pip and return its path.

    Parameters
    ----------
    dest : Path
        Folder the wheel is written into.

    Returns
    -------
    Path
        Path of the downloaded wheel.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "asldro==2.2.0", "-d", str(dest)]
    subprocess.run(cmd, check=True)
    wheels = sorted(dest.glob("asldro-2.2.0-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip did not leave an asldro 2.2.0 wheel in {dest}")
    return wheels[0]


def read_nifti(wheel: zipfile.ZipFile, name: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one ground-truth NIfTI and its JSON sidecar from the wheel.

    Parameters
    ----------
    wheel : zipfile.ZipFile
        The open asldro wheel.
    name : str
        Base name of the file pair inside ``asldro/data/``.

    Returns
    -------
    data : np.ndarray
        Float64 array [x, y, z, 7].
    affine : np.ndarray
        [4, 4] voxel index -> RAS+ mm.
    sidecar : dict
        The parsed JSON sidecar.
    """
    raw = gzip.decompress(wheel.read(f"asldro/data/{name}.nii.gz"))
    img = nib.Nifti1Image.from_bytes(raw)
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim != 5 or data.shape[3] != 1 or data.shape[4] != len(QUANTITIES):
        raise ValueError(f"{name}: unexpected shape {data.shape}")
    sidecar = json.loads(wheel.read(f"asldro/data/{name}.json"))
    if tuple(sidecar["quantities"]) != QUANTITIES:
        raise ValueError(f"{name}: unexpected quantities {sidecar['quantities']}")
    return data[:, :, :, 0, :], np.asarray(img.affine, dtype=np.float64), sidecar


def tissue_values(data: np.ndarray, labels: dict[str, int]) -> dict[str, dict[str, float]]:
    """Collect T1, T2, T2*, M0, perfusion rate and transit time per tissue label.

    The values are expected to be constant per label; if not, the median is recorded and a
    warning printed.

    Parameters
    ----------
    data : np.ndarray
        Float64 array [x, y, z, 7] of the source quantities.
    labels : dict[str, int]
        Tissue name -> segmentation label.

    Returns
    -------
    dict[str, dict[str, float]]
        Tissue name -> {"T1", "T2", "T2star" (s), "M0" (a.u.), "perfusion_rate"
        (ml/100 g/min), "transit_time" (s)}.
    """
    seg = data[..., QUANTITIES.index("seg_label")]
    out: dict[str, dict[str, float]] = {}
    for tissue, label in labels.items():
        mask = seg == label
        values: dict[str, float] = {}
        for quantity, key in KEPT.items():
            v = data[..., QUANTITIES.index(quantity)][mask]
            if np.ptp(v) > 1e-9 * max(1.0, float(np.abs(v).max())):
                print(f"warning: {quantity} not constant in {tissue}; using the median")
            values[key] = round(float(np.median(v)), 10)
        out[tissue] = values
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", nargs="?", type=Path, help="asldro-2.2.0 wheel (else pip)")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output folder")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = args.wheel if args.wheel is not None else download_wheel(Path(tmp))
        with zipfile.ZipFile(wheel_path) as wheel:
            sources = {field: read_nifti(wheel, name) for field, name in FIELDS.items()}
            licence = next(
                wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".dist-info/LICENSE")
            )

    names = {"gm": "grey_matter", "wm": "white_matter", "csf": "csf"}
    ref_data, ref_affine, ref_sidecar = sources["3T"]
    labels = {t: int(ref_sidecar["segmentation"][n]) for t, n in names.items()}
    seg_f = ref_data[..., QUANTITIES.index("seg_label")]
    seg = np.rint(seg_f).astype(np.uint8)
    if not np.array_equal(seg, seg_f) or seg.max() > 3:
        raise ValueError("segmentation labels are not integers 0..3")
    for field, (data, affine, _) in sources.items():
        if not np.allclose(affine, ref_affine) or not np.array_equal(
            data[..., QUANTITIES.index("seg_label")], seg_f
        ):
            raise ValueError(f"{field}: geometry or segmentation differs from 3T")

    nz = np.argwhere(seg > 0)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    crop = seg[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    affine = ref_affine.copy()
    affine[:3, 3] = ref_affine[:3, :3] @ lo + ref_affine[:3, 3]

    args.out.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.ascontiguousarray(crop), affine)
    img.header.set_data_dtype(np.uint8)
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=4)
    img.set_qform(affine, code=4)
    with (
        (args.out / SEG_NAME).open("wb") as f,
        gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as gz,
    ):
        gz.write(img.to_bytes())

    meta = {
        "source": "asldro 2.2.0 (PyPI, MIT), asldro/data/hrgt_icbm_2009a_nls_{3t,1.5t}.nii.gz",
        "template": "ICBM 2009a non-linear symmetric, 1 mm",
        "segmentation_file": SEG_NAME,
        "labels": labels,
        "units": {
            "T1": "s",
            "T2": "s",
            "T2star": "s",
            "M0": "a.u.",
            "perfusion_rate": "ml/100g/min",
            "transit_time": "s",
            "T1_blood": "s",
            "lambda_blood_brain": "ml/g",
        },
        "affine": affine.tolist(),
        "source_shape": list(seg.shape),
        "crop_start": [int(v) for v in lo],
        "crop_shape": list(crop.shape),
        "fields": {
            field: {
                "B0_T": float(sidecar["parameters"]["magnetic_field_strength"]),
                "tissues": tissue_values(data, labels),
                **{
                    ours: float(sidecar["parameters"][theirs])
                    for theirs, ours in KEPT_PARAMETERS.items()
                },
            }
            for field, (data, _, sidecar) in sources.items()
        },
    }
    (args.out / JSON_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    (args.out / "LICENSE.asldro").write_text(licence)
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"wrote {args.out} ({size / 1024:.0f} KiB), crop {lo.tolist()} + {list(crop.shape)}")


if __name__ == "__main__":
    main()

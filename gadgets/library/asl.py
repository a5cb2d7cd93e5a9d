"""ASL preview gadget: ``mr0 dro``'s ``asl`` pipeline inside a session (chain ``mr0_asl``).

A session sends config ``mr0_asl`` and a JSON text message with the job (the keys are this
gadget's properties, see :class:`AslPreviewGadget`):

``{"asl": {<the keys of an mr0 dro "asl" pipeline>}, "seq": <.seq text> | "seq_b64": <base64>,
"field_strength": "3T", "seed": 0, "series_index": 1}``

``asl`` holds one pipeline's keys as :func:`mr0core.perfusion.dro.load_params` takes them
(``asl_context``, ``label_type``, ``post_labeling_delay``, ``acquisition_matrix``, …); ``kind``
is ``"asl"``, and missing keys take the pipeline defaults, except the acquisition matrix
(:data:`PREVIEW_MATRIX`, small so that a session is quick). The keys are checked by
``load_params`` (a bad one ends the session with ``ERROR: …``). The readout comes as text: with
``seq`` / ``seq_b64`` the pipeline runs the ``"pdg"`` engine (the ``.seq`` readout simulated by
PDG, see :mod:`mr0core.perfusion.dro`), without it the ``"analytic"`` engine; ``asl`` may not
name a ``seq`` (the server reads no path a client names) nor an engine that disagrees.

The pipeline runs in this session's thread, with :func:`mr0core.perfusion.dro.generate` writing
to a private temporary folder (0700, deleted afterwards), whose NIfTI volumes are read back.
It yields three image series, one image per slice:

* ``"MR0 ASL control"`` (``series_index``): the mean of the control volumes;
* ``"MR0 ASL label"`` (``series_index + 1``): the mean of the label volumes;
* ``"MR0 ASL CBF"`` (``series_index + 2``, real-valued, ml/100 g/min): the ASL white paper's
  formula (:func:`mr0core.perfusion.quantify.quantify`) on ΔM = control − label and the mean
  m0scan, with the pipeline's timing, labelling efficiency, blood T1 and λ.

So the pipeline needs at least one m0scan, one control and one label volume, and one
post-labelling delay (TI for PASL) over its control and label volumes. Every image's meta holds
``MR0Simulated`` ``"true"``, ``MR0Engine`` and ``MR0Phantom``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gadgets.framework.core import Gadget, GadgetError, Item, Property, Text, register
from gadgets.library.preview import check_seq_size, given_seq_text

__all__ = [
    "CBF_SERIES",
    "CONTROL_SERIES",
    "LABEL_SERIES",
    "MAX_PREVIEW_VOXELS",
    "PREVIEW_MATRIX",
    "AslPreviewGadget",
]

CONTROL_SERIES = "MR0 ASL control"
LABEL_SERIES = "MR0 ASL label"
CBF_SERIES = "MR0 ASL CBF"
PREVIEW_MATRIX = [32, 32, 4]
"""The acquisition matrix when ``asl`` names none (voxels x, y, z)."""
MAX_PREVIEW_VOXELS = 1 << 24
"""The most voxels (acquisition matrix × volumes) one preview computes."""
_MAX_SEQ = 16 * 2**20
_MAX_ASL_JSON = 1 << 20  # as mr0 dro's parameter files (MAX_PARAMS_BYTES)


@register
class AslPreviewGadget(Gadget):
    """Run an ASL pipeline of the DRO on the built-in brain; yield control, label and CBF.

    Items that arrive (a preview needs none) pass on unchanged; the preview runs at the end of
    the input.
    """

    properties: ClassVar[dict[str, Property]] = {
        "asl": Property(
            "json",
            None,
            "the keys of an mr0 dro 'asl' pipeline (asl_context, label_type, "
            "post_labeling_delay, acquisition_matrix, …); default matrix 32×32×4",
            max=_MAX_ASL_JSON,
        ),
        "seq": Property("str", "", "the readout's .seq text (engine pdg)", max=_MAX_SEQ),
        "seq_b64": Property("str", "", "the readout's .seq, base64 (instead of seq)", max=_MAX_SEQ),
        "field_strength": Property(
            "choice", "3T", "the ground truth's field", choices=("3T", "1.5T")
        ),
        "seed": Property("int", 0, "noise seed (asl.desired_snr > 0)", min=0),
        "series_index": Property(
            "int", 1, "image_series_index of control; label +1, CBF +2", min=0, max=65533
        ),
    }

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Pass the input on, then run the preview."""
        yield from items
        yield from self.preview()

    # -- steps ----------------------------------------------------------------------------------

    def sequence_text(self) -> str | None:
        """Return the ``.seq`` text from ``seq`` or ``seq_b64``, or None when neither is given."""
        text = given_seq_text(self.name, self.props["seq"], self.props["seq_b64"])
        if not text:
            return None
        if not text.strip():
            raise GadgetError(f"{self.name}: seq is empty")
        check_seq_size(text, self.name)
        return text

    def pipeline(self, seq_path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the DRO parameters of the preview and its checked pipeline (``load_params``).

        Raises
        ------
        GadgetError
            For keys that the gadget sets itself or that disagree with the job, and every
            :class:`~mr0core.perfusion.dro.DroError` of the pipeline (its message).
        """
        from mr0core.perfusion.dro import DroError, load_params

        raw = dict(self.props["asl"] or {})
        if raw.get("kind", "asl") != "asl":
            raise GadgetError(f"{self.name}: asl.kind must be 'asl', got {raw['kind']!r}")
        if "seq" in raw:
            raise GadgetError(
                f"{self.name}: asl.seq is not taken (the server reads no client-named path); "
                "send the readout's text as 'seq' or 'seq_b64'"
            )
        engine = "pdg" if seq_path is not None else "analytic"
        if raw.get("engine", engine) != engine:
            why = "a readout (seq) was given" if seq_path else "no readout (seq) was given"
            raise GadgetError(f"{self.name}: asl.engine is {raw['engine']!r}, but {why}; the "
                              f"engine is {engine!r}")  # fmt: skip
        pipe: dict[str, Any] = {"acquisition_matrix": list(PREVIEW_MATRIX), **raw}
        pipe.update(kind="asl", name="preview", engine=engine)
        if seq_path is not None:
            pipe["seq"] = str(seq_path)
        params = {
            "field_strength": self.props["field_strength"], "seed": self.props["seed"],
            "hires_ground_truth": False, "pipelines": [pipe],
        }  # fmt: skip
        try:
            cfg = load_params(params)
        except DroError as exc:  # named as the job names it: asl.<key>
            text = str(exc).replace("pipelines[0].", "").replace("pipelines[0]: ", "")
            raise GadgetError(f"{self.name}: asl: {text}") from None
        p = cfg["pipelines"][0]
        context = p["asl_context"]
        missing = [c for c in ("m0scan", "control", "label") if c not in context]
        if missing:
            raise GadgetError(f"{self.name}: asl.asl_context needs m0scan, control and label "
                              f"volumes for the CBF map; missing {missing}")  # fmt: skip
        plds = {p["post_labeling_delay"][i] for i, c in enumerate(context) if c != "m0scan"}
        if len(plds) != 1:
            raise GadgetError(f"{self.name}: the CBF map needs one post_labeling_delay over the "
                              f"control and label volumes, got {sorted(plds)}")  # fmt: skip
        voxels = int(np.prod(p["acquisition_matrix"])) * len(context)
        if voxels > MAX_PREVIEW_VOXELS:
            raise GadgetError(f"{self.name}: acquisition_matrix × volumes is {voxels} voxels, "
                              f"more than a preview's {MAX_PREVIEW_VOXELS}")  # fmt: skip
        return params, p

    def preview(self) -> Iterator[Item]:
        """Run the pipeline in a private temporary folder; yield the three series."""
        from mr0core.perfusion.dro import DroError, generate

        text = self.sequence_text()
        tmp = Path(tempfile.mkdtemp(prefix="mr0-asl-"))  # mode 0700
        try:
            seq_path = None
            if text is not None:
                seq_path = tmp / "readout.seq"
                seq_path.touch(mode=0o600)
                seq_path.write_text(text, encoding="utf-8")
            params, p = self.pipeline(seq_path)
            yield Text(json.dumps({"status": "simulating", "engine": p["engine"],
                                   "matrix": p["acquisition_matrix"]}))  # fmt: skip
            try:
                generate(params, tmp / "dro")
            except (DroError, FileNotFoundError) as exc:
                raise GadgetError(f"{self.name}: asl: {exc}") from None
            except Exception as exc:  # a .seq that does not parse or simulate
                raise GadgetError(f"{self.name}: the ASL pipeline failed: "
                                  f"{type(exc).__name__}: {exc}") from None  # fmt: skip
            control, label, cbf, info = _read_results(tmp / "dro", p)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        yield from self._images(control, label, cbf, info)

    def _images(
        self, control: np.ndarray, label: np.ndarray, cbf: np.ndarray, info: Mapping[str, Any]
    ) -> Iterator[Item]:
        """Yield one image per slice of each series."""
        from mr0core.io.mrd_images import make_mrd_images

        nz = control.shape[2]
        fov = info["fov_mm"]
        dz = fov[2] / nz
        fov_m = (fov[0] / 1e3, fov[1] / 1e3, dz / 1e3)
        positions = [(0.0, 0.0, (s - nz // 2) * dz) for s in range(nz)]
        meta = {
            "MR0Phantom": "builtin:brain",
            "MR0Engine": info["engine"],
            "MR0Simulated": "true",  # a digital twin's image (DICOM output labels it SIMULATED)
            "MR0AslLabelType": info["label_type"],
            "MR0FieldStrength": self.props["field_strength"],
        }
        base = self.props["series_index"]
        series = (
            (control, CONTROL_SERIES, "magnitude", {"MR0AslVolumes": info["n_control"]}),
            (label, LABEL_SERIES, "magnitude", {"MR0AslVolumes": info["n_label"]}),
            (cbf, CBF_SERIES, "real", {"MR0Quantity": "CBF", "MR0Units": "ml/100g/min",
                                       "MR0Quantification": "ASL white paper (Alsop 2015)"}),
        )  # fmt: skip
        for k, (volume, description, kind, extra) in enumerate(series):
            stack = np.moveaxis(volume.astype(np.float32), 2, 0)[..., None]  # [z, x, y, 1]
            yield from make_mrd_images(
                stack, series_index=base + k, image_type=kind, fov_m=fov_m,
                position_mm=positions, slices=list(range(nz)), image_index_start=1,
                series_description=description,
                image_comment=f"MR0 ASL DRO {info['engine']} {description[8:]}",
                processing_history=("MR0", "DRO", info["engine"]), meta={**meta, **extra},
            )  # fmt: skip


def _read_results(
    root: Path, p: Mapping[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Read the written pipeline back; return control, label, CBF ([x, y, z]) and image info."""
    import nibabel as nib

    from mr0core.perfusion.quantify import quantify

    perf = root / "sub-001" / "perf"
    stem = "sub-001_acq-preview"
    volumes = []
    for name in (f"{stem}_asl.nii.gz", f"{stem}_m0scan.nii.gz"):
        img = nib.load(perf / name)
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise GadgetError(f"the ASL pipeline wrote {name}, which is not an image volume")
        volumes.append(np.asarray(img.get_fdata(), dtype=np.float64))
    series, m0 = volumes
    if m0.ndim == 4:
        m0 = m0.mean(axis=-1)
    side = json.loads((perf / f"{stem}_asl.json").read_text(encoding="utf-8"))
    sim = side["Simulation"]
    kinds = [c for c in p["asl_context"] if c != "m0scan"]
    plds = [pld for c, pld in zip(p["asl_context"], p["post_labeling_delay"], strict=True)
            if c != "m0scan"]  # fmt: skip
    control = series[..., [i for i, c in enumerate(kinds) if c == "control"]].mean(axis=-1)
    label = series[..., [i for i, c in enumerate(kinds) if c == "label"]].mean(axis=-1)
    timing: dict[str, float] = {}
    if p["label_type"] == "pasl":
        timing["inversion_time"] = plds[0]
        timing["bolus_cutoff_time"] = (
            p["bolus_cut_off_delay_time"] if p["bolus_cut_off_flag"] else p["label_duration"]
        )
    else:
        timing["post_labeling_delay"] = plds[0]
        timing["label_duration"] = p["label_duration"]
    cbf = quantify(
        control - label, m0, label_type=p["label_type"], t1_blood=float(sim["BloodT1"]),
        label_efficiency=p["label_efficiency"],
        partition_coefficient=float(sim["PartitionCoefficient"]), **timing,
    )  # fmt: skip
    info = {
        "engine": p["engine"], "fov_mm": p["fov_mm"], "label_type": p["label_type"],
        "n_control": kinds.count("control"), "n_label": kinds.count("label"),
    }  # fmt: skip
    return control, label, cbf, info

"""Write the perfusion figure (docs/library/perfusion.md): CBF of ``mr0 dro`` and its truth.

CBF quantified from the default dataset, beside the ground-truth perfusion rate on the same grid.

The default parameters (no noise, analytic engine, the full kinetic model) are written to a
temporary folder. CBF is computed two ways from the mean control − label and the m0scan: the
white paper's single-PLD formula (``mr0core.perfusion.quantify``, which assumes T1′ = blood T1,
hence lower) and the exact inverse of the full model with the true transit time and T1
(``quantify_gkm``). The truth is the ``ground_truth`` pipeline's perfusion map on the same grid.

    .venv/bin/python scripts/perfusion_figure.py [--out docs/images/perfusion.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    """Generate the default DRO, quantify it, write the PNG."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE.parent / "docs" / "images" / "perfusion.png"))
    opts = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    from mr0core.perfusion.dro import generate
    from mr0core.perfusion.quantify import quantify, quantify_gkm

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "dro"
        generate(None, root)
        perf = root / "sub-001" / "perf"
        side = json.loads((perf / "sub-001_acq-pcasl_asl.json").read_text())
        asl = nib.load(perf / "sub-001_acq-pcasl_asl.nii.gz").get_fdata()
        m0 = nib.load(perf / "sub-001_acq-pcasl_m0scan.nii.gz").get_fdata()
        context = (perf / "sub-001_acq-pcasl_aslcontext.tsv").read_text().split()[1:]
        truth_dir = root / "derivatives" / "groundtruth" / "sub-001" / "anat"
        truth_file = next(truth_dir.glob("*acq-lowres_desc-perfusionrate_map.nii.gz"))
        truth = nib.load(truth_file).get_fdata()
        transit = nib.load(next(truth_dir.glob("*acq-lowres_desc-transittime_map.nii.gz")))
        transit = transit.get_fdata()
        t1 = nib.load(next(truth_dir.glob("*acq-lowres_desc-T1_map.nii.gz"))).get_fdata()
    control = asl[..., [i for i, c in enumerate(context) if c == "control"]].mean(-1)
    label = asl[..., [i for i, c in enumerate(context) if c == "label"]].mean(-1)
    m0 = m0[..., 0] if m0.ndim == 4 else m0
    brain = m0 > 0.05 * m0.max()
    kw = {
        "label_type": "pcasl",
        "t1_blood": side.get("Simulation", {}).get("t1_arterial_blood", 1.65),
        "label_efficiency": side["LabelingEfficiency"],
        "label_duration": side["LabelingDuration"],
    }
    dm, m0_safe = control - label, np.where(brain, m0, 1.0)
    white = np.where(brain, quantify(dm, m0_safe, post_labeling_delay=side["PostLabelingDelay"],
                                     **kw), 0.0)  # fmt: skip
    full = np.where(brain, quantify_gkm(
        dm, m0_safe, t=side["LabelingDuration"] + side["PostLabelingDelay"],
        transit_time=transit, t1_tissue=np.where(t1 > 0, t1, 1.0), **kw,
    ), 0.0)  # fmt: skip
    z = truth.shape[2] // 2 + 1
    fig, axes = plt.subplots(1, 3, figsize=(8.4, 3.4), dpi=100)
    panels = ((white, "white paper formula\n(assumes T1′ = blood T1)"),
              (full, "full-model inverse\n(true transit time, T1)"),
              (truth, "ground-truth\nperfusion rate"))  # fmt: skip
    for ax, (img, title) in zip(axes, panels, strict=True):
        shown = ax.imshow(np.rot90(img[:, :, z]), cmap="inferno", vmin=0, vmax=80)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.colorbar(shown, ax=axes, shrink=0.8, label="CBF, ml/100 g/min")
    fig.suptitle("mr0 dro, default pCASL (64×64×12, analytic engine, no noise)", fontsize=10)
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

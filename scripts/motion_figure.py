"""Write the motion figure (docs/library/motion.md): a still and a moving brain, one FLASH.

A 64² RF-spoiled FLASH (the PDG suite's ``flash_spoiled``, TR 10 ms, so 0.64 s of scan) on the
built-in brain, simulated still and with a rigid motion (the twin's ``RigidMotion``: a drift, a
slow turn and a breathing-like translation), each reconstructed by FFT.

    .venv/bin/python scripts/motion_figure.py [--out docs/images/motion.png]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MOTION = {
    "translation_mm_per_s": [0.0, 6.0, 0.0],
    "rotation_deg_per_s": [0.0, 0.0, 8.0],
    "breathing_amplitude_mm": [0.0, 3.0, 0.0],
    "breathing_period_s": 0.4,
}


def main(argv: list[str] | None = None) -> int:
    """Simulate both, write the PNG."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE.parent / "docs" / "images" / "motion.png"))
    p.add_argument("--size", type=int, default=64)
    opts = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pdg_suite

    import mr0core as mr0
    from mr0core.recon import KData, reconstruct
    from mr0core.sim.motion import RigidMotion

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flash.seq"
        pdg_suite.build_flash_spoiled(opts.size).write(str(path))
        seq = mr0.Sequence.import_file(str(path))
    data = mr0.util.load_phantom((opts.size, opts.size), url="builtin:brain").build()
    graph = mr0.compute_graph(seq, data)
    images = []
    for motion in (None, RigidMotion(**MOTION)):
        data.phantom_motion = motion
        signal = mr0.execute_graph(graph, seq, data, print_progress=False)
        rec = reconstruct(KData.from_sequence(signal, seq))
        images.append(rec.image[0, 0, 0, :, :, 0].abs().T.flip(0).numpy())
    top = max(float(img.max()) for img in images)
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.4), dpi=100)
    titles = ("still", "drift 6 mm/s, turn 8°/s,\nbreathing 3 mm / 0.4 s")
    for ax, img, title in zip(axes, images, titles, strict=True):
        ax.imshow(img, cmap="gray", vmin=0, vmax=top)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{opts.size}² RF-spoiled FLASH on the built-in brain (mr0core PDG)", fontsize=10)
    fig.tight_layout()
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Building a twin from quantitative maps
#
# A digital twin is a phantom made from one subject's measured maps: proton density, T1, T2, and
# where they exist T2*, ADC, B0 and B1. `TissueDict.from_maps` finds them in a folder by their
# BIDS suffix (`_PDmap`, `_T1map`, `_T2map`, `_T2starmap`, `_B0map`, ...), converts units (from a
# sidecar's `Units`, or by the value range, with a warning) and returns a one-tissue
# `TissueDict`, ready to simulate. {doc}`../library/phantoms` has the rules; `mr0 twin
# --from-dicom/--from-bids` does the same from a scanner's DICOM or a BIDS dataset.
#
# A real subject's maps are not shipped with the package, so this tutorial first writes a
# subject's maps, in the units a scanner would use, from the built-in brain at 32 × 32.

# %%
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np

import mr0core as mr0
from mr0core.jobs import build_demo_flash

# %% [markdown]
# ## A subject's maps
#
# T1 in ms without a sidecar (as many exports are), T2 in ms with a sidecar saying so, T2* from
# T2 and T2′ (1/T2* = 1/T2 + 1/T2′), B0 in Hz, B1 as a fraction. The affine puts voxel
# `(i, j, k)` at `(i − 16, j − 16, 0) × 6.875 mm` in RAS+ (x right, y anterior, z superior).

# %%
brain = mr0.util.load_phantom((32, 32), url="builtin:brain")
vox_mm = [float(s) * 1e3 / n for s, n in zip(brain.size, brain.PD.shape, strict=True)]
affine = np.diag([*vox_mm, 1.0])
affine[:3, 3] = [-16 * vox_mm[0], -16 * vox_mm[1], 0.0]

work = Path(tempfile.mkdtemp())  # private (0700), removed at the end
subject = work / "sub-01" / "anat"
subject.mkdir(parents=True)


def save(suffix: str, volume: np.ndarray, units: str | None = None) -> None:
    """Write one map as ``sub-01_<suffix>.nii.gz`` (and its sidecar when ``units`` is given)."""
    path = subject / f"sub-01_{suffix}.nii.gz"
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), path)
    if units is not None:
        sidecar = {"Units": units, "MagneticFieldStrength": 3}
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(json.dumps(sidecar))


pd, t1, t2, t2dash = (v.numpy() for v in (brain.PD, brain.T1, brain.T2, brain.T2dash))
t2star = np.where(pd > 0, 1 / (1 / np.maximum(t2, 1e-6) + 1 / np.maximum(t2dash, 1e-6)), 0)
save("PDmap", 100 * pd)  # arbitrary scale: the twin rescales PD
save("T1map", 1e3 * t1)  # ms, no sidecar
save("T2map", 1e3 * t2, units="ms")
save("T2starmap", t2star, units="s")
save("B0map", brain.B0.numpy(), units="Hz")
save("TB1map", np.abs(brain.B1[0].numpy()))
print(sorted(p.name for p in subject.iterdir()))

# %% [markdown]
# ## The twin
#
# The T1 map had no sidecar: its median above 10 is taken as ms and converted, with a warning
# (shown here). PD is scaled so that its 99.5th percentile is 1; T2′ is derived from T2* and T2.

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    twin = mr0.TissueDict.from_maps(subject)
for w in caught:
    print("warning:", w.message)
tissue = twin["subject"]
print(list(twin), tuple(tissue.PD.shape), "size (m):", [round(float(s), 4) for s in tissue.size])

fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (name, value) in zip(
    axes,
    [("PD", tissue.PD), ("T1 (s)", tissue.T1), ("T2 (s)", tissue.T2), ("T2′ (s)", tissue.T2dash)],
    strict=True,
):
    shown = np.where(tissue.PD[:, :, 0] > 0, value[:, :, 0], np.nan)  # no tissue: blank
    im = ax.imshow(shown.T, origin="lower", cmap="gray" if name == "PD" else "magma")
    ax.set_title(name)
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# ## Simulate the twin
#
# The same RF-spoiled FLASH that `mr0 demo` uses (built with PyPulseq, here at 32 × 32) on the
# twin and on the brain its maps came from. The twin's PD was rescaled (a measured PD map has no
# absolute scale), so the images are compared after a least-squares scale; what remains is the
# round trip through NIfTI (float32, T2′ through T2*, the background where PD is 0).

# %%
seq = mr0.Sequence.from_pypulseq(build_demo_flash(32))
kspace = seq.get_kspace()
images = {}
for label, phantom in (("twin from the maps", twin), ("built-in brain", brain)):
    signal, _ = mr0.util.simulate(seq, phantom, accuracy=1e-2)
    images[label] = mr0.reco_adjoint(signal, kspace, resolution=(32, 32, 1))[:, :, 0].abs()

twin_image, brain_image = images["twin from the maps"], images["built-in brain"]
scale = float((twin_image * brain_image).sum() / (twin_image * twin_image).sum())
nrmse = float((scale * twin_image - brain_image).norm() / brain_image.norm())
fig, axes = plt.subplots(1, 2, figsize=(8, 4))
for ax, (label, image) in zip(axes, images.items(), strict=True):
    ax.imshow(image.T, origin="lower", cmap="gray")
    ax.set_title(label)
    ax.axis("off")
fig.suptitle(f"FLASH 15°, TR 12 ms: NRMSE {100 * nrmse:.2f} % after scaling by {scale:.3f}")
plt.show()

# %%
shutil.rmtree(work)

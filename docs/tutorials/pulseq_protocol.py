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
# # Importing and inspecting a Pulseq protocol
#
# `mr0core` reads Pulseq `.seq` files (formats 1.2 to 1.5) with its own reader and converts them
# into its sequence model: one repetition per RF pulse, every ADC sample an event ending at its
# true time, k-space in 1/m. This tutorial imports the protocol embedded in the package (PyPulseq's
# 64 × 64 spoiled gradient echo, the default of `mr0 seq-info`) and a labelled file of the test
# corpus, looks at what the importer made of them, and simulates one on a small brain.
# See {doc}`../library/pulseq` for every conversion rule.

# %%
from importlib import resources
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import mr0core as mr0
from mr0core.pulseq.info import format_seq_info, seq_info

GRE = resources.files("mr0core") / "data" / "sequences" / "gre.seq"
CORPUS = Path(mr0.__file__).resolve().parents[1] / "tests" / "data" / "seq-corpus"

# %% [markdown]
# ## What is in the file
#
# `seq_info` is what `mr0 seq-info FILE` prints: timing, pulses grouped by usage, angle and
# duration, the k-space extent, labels, the field of view and whether the signature matches.

# %%
info = seq_info(GRE)
info["file"] = "mr0core/data/sequences/gre.seq"  # the path as the package names it
print(format_seq_info(info))

# %% [markdown]
# ## The imported sequence
#
# `Sequence.import_file` gives a `Sequence`: a zero pulse covers the time before the first RF
# pulse, then one repetition per pulse. `get_kspace()` is `[ADC samples, 4]`: kx, ky, kz in 1/m and
# the dephasing time τ in s (time since the echo's refocusing, which T2′ and B0 act on).

# %%
seq = mr0.Sequence.import_file(str(GRE))
kspace = seq.get_kspace()
flips = torch.stack([rep.pulse.angle for rep in seq]) * 180 / np.pi
print(f"{len(seq)} repetitions, {seq.get_duration():.3f} s, {kspace.shape[0]} ADC samples")
print("usages:", sorted({rep.pulse.usage.name for rep in seq}))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
axes[0].plot(flips, ".")
axes[0].set_xlabel("repetition")
axes[0].set_ylabel("flip angle (°)")
axes[0].set_title("pulses")
axes[1].plot(kspace[:, 0], kspace[:, 1], ".", markersize=1)
axes[1].set_xlabel("kx (1/m)")
axes[1].set_ylabel("ky (1/m)")
axes[1].set_title("k-space at the ADC samples")
axes[1].set_aspect("equal")
axes[2].plot(kspace[:, 3] * 1e3, linewidth=0.7)
axes[2].set_xlabel("ADC sample")
axes[2].set_ylabel("τ (ms)")
axes[2].set_title("dephasing time")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Labels
#
# Pulseq labels (LABELSET/LABELINC) are evaluated per block and kept per ADC sample, as
# PyPulseq's `evaluate_labels` does; the reconstruction uses them to place readouts.

# %%
labelled = mr0.Sequence.import_file(str(CORPUS / "write_gre_label.seq"))
labels = labelled.get_labels()
print({name: (int(v.min()), int(v.max())) for name, v in labels.items()})
plt.figure(figsize=(6, 2.5))
plt.plot(labels["LIN"], linewidth=0.8)
plt.xlabel("ADC sample")
plt.ylabel("LIN")
plt.title("write_gre_label.seq: the line counter per sample")
plt.show()

# %% [markdown]
# ## Simulate it
#
# The embedded protocol has a 256 mm field of view; the built-in brain spans 220 mm. At 32 × 32
# voxels the simulation takes a second or two. The signal comes back in the file's sample order,
# so `reco_adjoint` with the k-space of the sequence reconstructs it.

# %%
data = mr0.util.load_phantom((32, 32), url="builtin:brain").build()
signal, ktraj = mr0.util.simulate(seq, data, accuracy=1e-2)
image = mr0.reco_adjoint(signal, ktraj, resolution=(64, 64, 1), FOV=(0.256, 0.256, 1))
plt.figure(figsize=(4, 4))
plt.imshow(image[:, :, 0].abs().T, origin="lower", cmap="gray")
plt.title("gre.seq on the 32² brain")
plt.axis("off")
plt.show()

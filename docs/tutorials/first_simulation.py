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
# # A first simulation and its image
#
# This tutorial writes a small RF-spoiled FLASH directly in `mr0core`'s sequence model (as an
# MR-zero playground notebook does), simulates it with the Phase Distribution Graph (PDG) on the
# built-in brain, and reconstructs the image. Everything runs offline on the CPU in a few
# seconds: the phantom is 32 × 32 voxels.
#
# Only the import line differs from an MR-zero script: `import mr0core as mr0`.

# %%
import matplotlib.pyplot as plt
import numpy as np

import mr0core as mr0

# %% [markdown]
# ## The subject
#
# `util.load_phantom` with `url="builtin:brain"` gives mr0core's own brain (no download): an axial
# slab resampled to the requested matrix. Maps are indexed `[x, y, z]`; T1 and T2 in s, B0 in Hz,
# B1 relative.

# %%
obj = mr0.util.load_phantom((32, 32), url="builtin:brain")
fig, axes = plt.subplots(1, 4, figsize=(12, 3))
for ax, (name, value, unit) in zip(
    axes,
    [("PD", obj.PD, ""), ("T1", obj.T1, "s"), ("T2", obj.T2, "s"), ("B0", obj.B0, "Hz")],
    strict=True,
):
    im = ax.imshow(value[:, :, 0].T, origin="lower", cmap="gray" if name == "PD" else "viridis")
    ax.set_title(f"{name} {unit}".strip())
    ax.axis("off")
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.show()

# %% [markdown]
# ## The sequence
#
# A `Sequence` is a list of repetitions. Each starts with one instantaneous pulse (angle and phase
# in rad) followed by events with a duration (s), a gradient moment (here normalised: 1 = one
# cycle per field of view) and an ADC flag. One repetition per phase-encoding line: excitation,
# prephaser, 32 readout samples, rewinder and spoiler.

# %%
n = 32
seq = mr0.Sequence(normalized_grads=True)
for i in range(n):
    rep = seq.new_rep(2 + n + 1)
    rep.pulse.usage = mr0.PulseUsage.EXCIT
    rep.pulse.angle = 10 * np.pi / 180
    rep.pulse.phase = 0.5 * 117 * (i**2 + i + 2) * np.pi / 180  # RF spoiling
    rep.event_time[0] = 2e-3  # prephaser
    rep.gradm[0, 0] = -n / 2
    rep.gradm[0, 1] = i - n // 2  # phase encoding, centric order would work too
    rep.event_time[1:-1] = 50e-6  # readout: one sample per event
    rep.gradm[1:-1, 0] = 1
    rep.adc_usage[1:-1] = 1
    rep.adc_phase[1:-1] = np.pi / 2 - rep.pulse.phase  # receiver follows the RF phase
    rep.event_time[-1] = 5e-3  # rewind phase encoding, spoil along x
    rep.gradm[-1, 0] = 1.5 * n
    rep.gradm[-1, 1] = -rep.gradm[0, 1]
print(f"{len(seq)} repetitions, {seq.get_duration() * 1e3:.1f} ms")

kspace = seq.get_kspace()  # [ADC samples, 4]: kx, ky, kz (here per FOV), dephasing time τ (s)
plt.figure(figsize=(3.5, 3.5))
plt.plot(kspace[:, 0], kspace[:, 1], ".", markersize=2)
plt.xlabel("kx")
plt.ylabel("ky")
plt.title("sampled k-space")
plt.show()

# %% [markdown]
# ## Simulate and reconstruct
#
# `util.simulate` builds the phantom's `SimData`, runs the PDG pre-pass (`compute_graph`) and main
# pass (`execute_graph`) with settings chosen for a target error (`accuracy`, an NRMSE against the
# converged signal), and returns the signal `[samples, coils]`. `reco_adjoint` is MR-zero's adjoint
# DFT reconstruction onto the phantom's grid.

# %%
data = obj.build()
signal, ktraj = mr0.util.simulate(seq, data, accuracy=1e-3)
print(signal.shape, signal.dtype)

image = mr0.reco_adjoint(signal, seq.get_kspace(), resolution=(n, n, 1), FOV=(1, 1, 1))
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(8, 4))
ax0.plot(signal[:, 0].abs())
ax0.set_xlabel("ADC sample")
ax0.set_title("|signal|")
ax1.imshow(image[:, :, 0].abs().T, origin="lower", cmap="gray")
ax1.set_title("FLASH, 10°, TR ≈ 8.6 ms")
ax1.axis("off")
plt.show()

# %% [markdown]
# The image is T1-weighted proton density: the signal of each voxel is summed (PD × coil
# sensitivity) without normalisation, so its scale depends on the phantom's size.
#
# Next: import a real protocol ({doc}`pulseq_protocol`), or optimise this sequence's flip angle
# with autograd ({doc}`optimise_flip_angle`).

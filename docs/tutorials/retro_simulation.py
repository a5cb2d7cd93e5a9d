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
# # A retro-simulation and its difference image
#
# Retro-simulation sends an acquired raw stream through the server's `mr0_retrosim` chain: it
# reconstructs the measurement, simulates the same protocol on a digital twin, puts the simulated
# samples into copies of the measured acquisitions, reconstructs those with the same chain, and
# returns three series (measured, simulated, difference) and a JSON report with NRMSE and SSIM.
# Where the subject differs from the twin, the difference image shows it.
#
# No scanner data ships with the package, so the "measurement" here is itself a simulation: the
# built-in brain with a lesion (longer T1, more water) that the twin does not have, plus noise.
# See {doc}`../server/retro` for the protocol sources and the report's keys.

# %%
import json
import shutil
import tempfile
from pathlib import Path

import ismrmrd
import matplotlib.pyplot as plt
import numpy as np
import torch

from gadgets.serve.server import MrdServer, ServerConfig
from gadgets.wire.client import send_file
from mr0core import Sequence
from mr0core.io import sig_to_mrd
from mr0core.io.mrd_images import image_array, read_mrd_images
from mr0core.jobs import SimSettings, build_demo_flash, load_job_phantom, run_simulation

work = Path(tempfile.mkdtemp())  # private (0700), removed at the end

# %% [markdown]
# ## The measurement
#
# The protocol is `mr0 demo`'s FLASH at 32 × 32, written as a `.seq` file. The subject is the
# twin the server will use (`brain` at 32²) with a 2 cm lesion whose T1 and PD are 1.6 times
# the tissue's. `sig_to_mrd` writes the signal as ISMRMRD raw data, one acquisition per readout,
# as a scanner would stream it.

# %%
seq_path = work / "flash32.seq"
build_demo_flash(32).write(str(seq_path))
seq = Sequence.import_file(str(seq_path))

twin, _ = load_job_phantom("brain", 32)
subject = twin.build()
lesion = (subject.voxel_pos[:, :2] - torch.tensor([0.03, 0.02])).norm(dim=1) < 0.02
subject.T1 = torch.where(lesion, 1.6 * subject.T1, subject.T1)
subject.PD = torch.where(lesion, 1.6 * subject.PD, subject.PD)
signal = run_simulation(seq, subject, SimSettings(), noise=2e-3, seed=1, progress=False)
raw = work / "measured.h5"
sig_to_mrd(raw, signal, seq)
print(f"{int(lesion.sum())} voxels changed; raw data: {raw.stat().st_size / 1024:.0f} KiB")

# %% [markdown]
# ## Send it to `mr0_retrosim`
#
# `send_file` streams the raw file with the chain name and a JSON job: the protocol's `.seq` text
# and the twin. (Without `seq`, the chain builds the protocol from the ISMRMRD header alone.)

# %%
server = MrdServer(ServerConfig(port=0, scheduler=False))
host, port = server.start()
job = {"seq": seq_path.read_text(), "phantom": "brain", "size": 32}
result = send_file(raw, work / "retro.h5", config="mr0_retrosim", params=job, host=host,
                   port=port, progress=False)  # fmt: skip
server.shutdown(grace_s=5)
report = json.loads(result.texts[-1])
print("ok:", result.ok, "images:", result.images)
print({key: report[key] for key in ("protocol", "nrmse", "ssim", "scale", "images")})

# %% [markdown]
# ## Measured, simulated, difference
#
# Series 1 is the measurement, series 2 the twin, series 3 measured − a · simulated (real-valued;
# `a`, the report's `scale`, is the least-squares scale of the twin onto the measurement, since a
# scanner's intensity scale is arbitrary). The lesion is what the twin cannot explain.

# %%
images = read_mrd_images(work / "retro.h5")
series = {}
for image in images:
    meta = ismrmrd.Meta.deserialize(image.attribute_string)
    series[meta["SeriesDescription"]] = np.asarray(image_array(image)[:, :, 0], dtype=float)
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, (title, pixels) in zip(axes, series.items(), strict=True):
    limit = np.abs(pixels).max()
    if "difference" in title:
        im = ax.imshow(pixels.T, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit)
        fig.colorbar(im, ax=ax, shrink=0.8)
    else:
        ax.imshow(pixels.T, origin="lower", cmap="gray", vmin=0, vmax=limit)
    ax.set_title(title)
    ax.axis("off")
fig.suptitle(f"NRMSE {100 * report['nrmse']:.1f} %, SSIM {report['ssim']:.3f}")
plt.show()

# %%
shutil.rmtree(work)

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
# # A scanner-coupled preview through a local server
#
# At the scanner, `mr0-server` runs beside the reconstruction; a client (the scanner's sequence
# tool, or `mr0-client --preview`) sends the protocol about to run and gets back the image a
# digital twin would give. This tutorial starts the same server in this process, on a free
# loopback port, and sends it a preview job with the client API. {doc}`../server/preview` lists
# the job's keys.

# %%
import shutil
import tempfile
from pathlib import Path

import ismrmrd
import matplotlib.pyplot as plt
import numpy as np

from gadgets.serve.server import MrdServer, ServerConfig
from gadgets.wire.client import send_job
from mr0core.io.mrd_images import image_array, read_mrd_images
from mr0core.jobs import build_demo_flash

# %% [markdown]
# ## Start a server
#
# `port=0` takes a free port; `start()` binds and returns the address, and serves in background
# threads. `scheduler=False` runs each simulation in its session's thread: a production server
# (and `mr0-server` by default) runs them as jobs of its GPU-aware scheduler in worker processes,
# which start a few seconds later (see {doc}`../scheduler`).

# %%
work = Path(tempfile.mkdtemp())  # private (0700), removed at the end
server = MrdServer(ServerConfig(port=0, scheduler=False))
host, port = server.start()
print(f"mr0-server listening on {host}:{port}")

# %% [markdown]
# ## The protocol
#
# A preview job carries the `.seq` file's text (the server never opens a path a client names).
# Here it is the 32 × 32 RF-spoiled FLASH of `mr0 demo`, written by PyPulseq.

# %%
seq_path = work / "flash32.seq"
build_demo_flash(32).write(str(seq_path))
job = {"seq": seq_path.read_text(), "phantom": "brain", "size": 32, "progress_s": 0.2}
print(f"{len(job['seq']) / 1024:.0f} KiB of Pulseq text")

# %% [markdown]
# ## Send it
#
# `send_job` sends config `mr0_preview`, the JSON job and a close; the server answers with
# texts while it works (JSON: `{"status": "simulating", …}`, then `{"status": …, "done": …,
# "of": …}` every `progress_s` seconds on a longer simulation), then the images, then a close.
# The images are written to an MRD file.

# %%
texts: list[str] = []
result = send_job(job, work / "preview.h5", config="mr0_preview", host=host, port=port,
                  on_text=texts.append)  # fmt: skip
print("ok:", result.ok, "images:", result.images)
for text in [*texts[:2], "…", texts[-1]] if len(texts) > 4 else texts:
    print("text:", text)

# %% [markdown]
# ## The twin's image
#
# The image carries what was simulated in its meta attributes (`MR0Phantom`, `MR0Accuracy`,
# `MR0Reconstruction`, ...), so a viewer can tell it is a simulation.

# %%
image = read_mrd_images(work / "preview.h5")[0]
meta = ismrmrd.Meta.deserialize(image.attribute_string)
print({key: meta[key] for key in ("SeriesDescription", "MR0Phantom", "MR0Reconstruction")})
pixels = image_array(image)[:, :, 0]
plt.figure(figsize=(4, 4))
plt.imshow(np.asarray(pixels).T, origin="lower", cmap="gray")
plt.title(f"{meta['SeriesDescription']}: {meta['MR0Phantom']}")
plt.axis("off")
plt.show()

# %% [markdown]
# A bad job is answered with a text starting `ERROR` and a close; the server goes on serving:

# %%
bad = send_job({"seq": "[VERSION]\nmajor 9\n", "size": 32}, work / "bad.h5",
               config="mr0_preview", host=host, port=port)  # fmt: skip
print("ok:", bad.ok, "|", bad.errors[0][:100] if bad.errors else "")

# %% [markdown]
# Stop the server (sessions in flight may finish within the grace time):

# %%
server.shutdown(grace_s=5)
shutil.rmtree(work)

"""The gadgets, registered in :data:`gadgets.framework.core.REGISTRY` by importing this package.

- :mod:`~gadgets.library.recon`: the standard reconstruction gadgets (noise adjustment, FFT,
  coil combination, NUFFT, SENSE, saving).
- :mod:`~gadgets.library.preview`: the digital-twin preview (simulate a ``.seq`` on a phantom).
- :mod:`~gadgets.library.retro`: retro-simulation (simulate a measured protocol, compare).
- :mod:`~gadgets.library.asl`: the ASL preview.
- :mod:`~gadgets.library.references`: reference scans in and out, background results back.
- :mod:`~gadgets.library.background_jobs`: the background-session job function (a scheduler
  plug-in, not a gadget; imported by name, by the server and its scheduler's workers).

Chains name gadgets by class name through the registry, so a host imports this package once
(``import gadgets.library``) before it opens a chain.
"""

from gadgets.library import asl, preview, recon, references, retro

__all__ = ["asl", "preview", "recon", "references", "retro"]

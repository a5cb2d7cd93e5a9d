"""Arterial spin labelling: kinetic model, CBF quantification, digital reference object.

The reference object (``mr0 dro``) is built on the built-in brain.

* :mod:`.gkm`: ΔM(t) of Buxton et al. 1998 for pCASL/CASL and PASL.
* :mod:`.quantify`: the ASL white paper's single-PLD formula and the exact GKM inverse.
* :mod:`.dro`: ASL, structural and ground-truth pipelines writing BIDS (see its docstring).
"""

from __future__ import annotations

from .gkm import delta_m, peak_time
from .quantify import quantify, quantify_gkm

__all__ = ["delta_m", "peak_time", "quantify", "quantify_gkm"]

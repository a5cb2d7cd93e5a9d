"""The gadgets' scheduler jobs: background MRD sessions, as a plug-in of the scheduler.

The scheduler imports nothing of the gadgets (mr0core → scheduler → gadgets). Its job functions
are found by name in :data:`scheduler.functions.FUNCTIONS`; this module files the gadgets' own
there when it is imported, and the server names it in its scheduler's ``function_modules``
(:data:`gadgets.server.SCHEDULER_FUNCTION_MODULES`), so that the scheduler and each of its
worker processes import it (:func:`scheduler.functions.load_function_modules`).

:func:`mrd_session` (:data:`scheduler.functions.MRD_SESSION`) runs a background MRD session
(the server's ``"background": true``) that the server stored as the job's input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.functions import MRD_SESSION, job_function

from .chain import run_stored_session

__all__ = ["mrd_session"]


@job_function(MRD_SESSION)
def mrd_session(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Run a stored MRD session through its chain; write ``result.h5`` (a background job).

    The session (``input/input.h5``: header, acquisitions, waveforms, images; and
    ``input/session.json``: the chain's XML and the JSON parameters) was stored by the server
    when it took the session; :func:`gadgets.chain.run_stored_session` runs the chain on it in
    this worker (its own heavy steps run here too, not as further calls) and writes what the
    chain returned: images and acquisitions to ``result.h5``, texts to the summary.

    Parameters (``params``): ``config`` (the chain's name), ``patient``, ``protocol``,
    ``measurement_id`` (from the header, for lookups), and the server's folders
    ``store_dir`` (reference scans), ``save_dir``, ``phantoms_dir``, ``chains_dir`` (each a
    path or None).

    Returns ``{"texts": [...], "counts": {"images": n, ...}}``. A chain that refuses its input
    (a gadget error, a bad parameter) is a ``ValueError``: failed, not retried.
    """
    return run_stored_session(params, device, workdir)

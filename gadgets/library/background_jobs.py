"""The gadgets' scheduler jobs: background MRD sessions, as a plug-in of the scheduler.

The scheduler imports nothing of the gadgets (mr0core → scheduler → gadgets). Its job functions
are found by name in :data:`scheduler.functions.FUNCTIONS`; this module files the gadgets' own
there when it is imported, and the server names it in its scheduler's ``function_modules``
(:data:`gadgets.serve.server.SCHEDULER_FUNCTION_MODULES`), so that the scheduler and each of its
worker processes import it (:func:`scheduler.functions.load_function_modules`).

:func:`mrd_session` (:data:`scheduler.functions.MRD_SESSION`) runs a background MRD session
(the server's ``"background": true``) that the server stored as the job's input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ismrmrd

from gadgets.framework.chain import ChainError, Services, open_chain
from gadgets.framework.core import GadgetError, Text
from gadgets.framework.session_store import (
    MAX_TEXT,
    MAX_TEXTS,
    RESULT_FILE,
    SESSION_INPUT,
    SESSION_JSON,
    Store,
)
from gadgets.wire.mrdfile import SessionWriter, read_items
from scheduler.functions import INPUT_DIR, MRD_SESSION, job_function
from scheduler.paths import private_file

__all__ = ["mrd_session", "run_stored_session"]


@job_function(MRD_SESSION)
def mrd_session(params: dict[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Run a stored MRD session through its chain; write ``result.h5`` (a background job).

    The session (``input/input.h5``: header, acquisitions, waveforms, images; and
    ``input/session.json``: the chain's XML and the JSON parameters) was stored by the server
    when it took the session; :func:`run_stored_session` runs the chain on it in this worker (its
    own heavy steps run here too, not as further calls) and writes what the
    chain returned: images and acquisitions to ``result.h5``, texts to the summary.

    Parameters (``params``): ``config`` (the chain's name), ``patient``, ``protocol``,
    ``measurement_id`` (from the header, for lookups), and the server's folders
    ``store_dir`` (reference scans), ``save_dir``, ``phantoms_dir``, ``chains_dir`` (each a
    path or None).

    Returns ``{"texts": [...], "counts": {"images": n, ...}}``. A chain that refuses its input
    (a gadget error, a bad parameter) is a ``ValueError``: failed, not retried.
    """
    return run_stored_session(params, device, workdir)


def _folder(params: Mapping[str, Any], key: str) -> Path | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ValueError(f"background session: {key} must be a folder path or null, got "
                         f"{str(value)[:80]!r}")  # fmt: skip
    return Path(value)


def run_stored_session(params: Mapping[str, Any], device: str, workdir: Path) -> dict[str, Any]:
    """Run a stored background session through its chain; write its result into ``workdir``.

    Parameters
    ----------
    params
        The job's parameters (:func:`mrd_session`): ``config`` (the
        chain's name, for the log), ``store_dir``, ``save_dir``, ``phantoms_dir``,
        ``chains_dir`` (the server's folders, or None).
    device
        The worker's device (``"cpu"`` or ``"cuda"``); the chain's gadgets choose their own
        (the session's heavy steps run in this worker, with no further scheduler calls).
    workdir
        The job's working folder: its input in ``input/``
        (:data:`gadgets.framework.session_store.SESSION_INPUT`,
        :data:`gadgets.framework.session_store.SESSION_JSON`); the result goes to
        :data:`gadgets.framework.session_store.RESULT_FILE` beside it (``0600``).

    Returns
    -------
    dict
        ``{"texts": [...], "counts": {...}}``: the chain's text messages (the last
        :data:`gadgets.framework.session_store.MAX_TEXTS`, each cut to
        :data:`gadgets.framework.session_store.MAX_TEXT`
        characters) and the number of images, acquisitions and waveforms in the result.

    Raises
    ------
    ValueError
        For a missing or malformed input, or a chain that refuses it (a :class:`GadgetError`
        or :class:`ChainError`, its text kept): the job's own fault, not retried.
    """
    folder = workdir / INPUT_DIR
    try:
        session = json.loads((folder / SESSION_JSON).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"background session: its stored input cannot be read: {exc}") from None
    if not isinstance(session, dict):
        raise ValueError("background session: session.json is not a JSON object")
    config_xml = session.get("config_xml")
    header_xml = session.get("header_xml", "")
    overrides = session.get("parameters", {})
    if not isinstance(config_xml, str) or not isinstance(header_xml, str):
        raise ValueError("background session: config_xml and header_xml must be texts")
    if not isinstance(overrides, dict):
        raise ValueError("background session: parameters must be a JSON object")
    store_dir = _folder(params, "store_dir")
    services = Services(
        save_dir=_folder(params, "save_dir"), phantoms_dir=_folder(params, "phantoms_dir"),
        chains_dir=_folder(params, "chains_dir"),
        store=Store(store_dir) if store_dir is not None else None,
    )  # fmt: skip
    job_id = workdir.name.partition(".")[0]
    result = workdir / RESULT_FILE
    texts: list[str] = []
    try:
        _, items = read_items(folder / SESSION_INPUT)
        chain = open_chain(config_xml, header_xml, overrides, services, session_id=job_id)
        private_file(result)  # patient data: 0600 whatever the umask (the writer keeps the mode)
        with SessionWriter(result) as writer:
            if header_xml:
                writer.write_header(header_xml)
            for out in chain.run(items):
                if isinstance(out, Text):
                    texts.append(out.text[:MAX_TEXT])
                    del texts[:-MAX_TEXTS]
                elif isinstance(out, ismrmrd.Acquisition | ismrmrd.Image | ismrmrd.Waveform):
                    writer.add(out)
            counts = {k: v for k, v in writer.counts.items() if v}
    except (GadgetError, ChainError, OSError) as exc:
        result.unlink(missing_ok=True)
        raise ValueError(str(exc) or type(exc).__name__) from exc
    except BaseException:
        result.unlink(missing_ok=True)
        raise
    return {"texts": texts, "counts": counts}

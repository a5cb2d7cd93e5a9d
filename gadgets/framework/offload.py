"""Offloading a gadget's heavy step to the server's scheduler, as an interactive call.

The twin gadgets (preview, retro-simulation) and the SENSE and NUFFT recons hand their work to
:meth:`scheduler.service.Scheduler.call`: objects in (a sequence, a built twin, raw data), an
object out (the signal, a reconstruction). :func:`offload` is the one way they do it:

- it starts the call with the gadget's priority class, timeout and attempts, tagged with the
  session (the server cancels a session's calls when the session fails or its client goes);
- while the call waits or runs, it turns the call's progress messages into the session's
  :class:`~gadgets.framework.core.Text` messages (``{"status": "queued" | "simulating", "job",
  "seconds", "done", "of"}``), at most one per ``progress_s`` (None: none);
- it waits on a queue the scheduler's threads fill (progress, the end), never polling;
- it bounds the whole wait, queued and running, by ``timeout_s`` (then the call is cancelled);
- a failure, a timeout or a cancellation becomes a :class:`~gadgets.framework.core.GadgetError`
  naming the gadget and the call;
- when the generator is closed early (the session ended) or raises, the call is cancelled.

:func:`offload` is a generator (it yields the progress texts and returns the result:
``result = yield from offload(...)``); :func:`offload_wait` runs it for a gadget that yields
nothing while it waits (the recons).
"""

from __future__ import annotations

import json
import queue
import time
from collections.abc import Generator, Mapping
from typing import Any

from gadgets.framework.core import Gadget, GadgetError, Item, Text
from scheduler.calls import CallCancelledError, CallError

__all__ = ["offload", "offload_wait"]

_END = object()


def offload(
    gadget: Gadget,
    function: str,
    inputs: Mapping[str, Any],
    params: dict[str, Any],
    *,
    kind: str,
    what: str,
    timeout_s: float,
    max_attempts: int,
    estimate_bytes: int | None = None,
    progress_s: float | None = None,
    status: str = "simulating",
) -> Generator[Item, None, Any]:
    """Run ``function`` on ``inputs`` in the server's scheduler; yield progress; return its result.

    Parameters
    ----------
    gadget
        The gadget (its name goes into errors; its context holds the scheduler and session).
    function, inputs, params
        The call (:data:`scheduler.functions.CALLS`), its input objects and parameters.
    kind
        The scheduler's priority class (``preview``, ``retrosim``, ``recon``).
    what
        What the call does, for messages (``"simulation"``, ``"sequence"``, ``"recon"``).
    timeout_s
        Longest wait, queued and running (s); the scheduler also stops a run at that time.
    max_attempts
        Starts allowed (a crashed worker is retried while starts are left).
    estimate_bytes
        Peak memory; None: the scheduler's estimate from the objects.
    progress_s
        Seconds between progress texts (None: no texts); the first comes when the call's
        state changes (queued, then running).
    status
        The ``status`` of a running call's texts.

    Raises
    ------
    GadgetError
        When the call fails (with the worker's message), is cancelled, or has not finished
        within ``timeout_s`` (``did not finish within … s (it was queued|running; cancelled)``).
    """
    sched = gadget.context.scheduler
    events: queue.Queue[Any] = queue.Queue()
    future = sched.call(
        function, inputs, params, kind, on_progress=events.put if progress_s is not None else None,
        estimate_bytes=estimate_bytes, timeout_s=timeout_s, max_attempts=max_attempts,
        session=gadget.context.session_id,
    )  # fmt: skip
    future.add_done_callback(lambda f: events.put(_END))
    started = time.monotonic()
    deadline = started + timeout_s
    last, shown, latest, fresh = started, "", {}, False
    try:
        while not future.done():
            now = time.monotonic()
            # with progress_s 0 a text follows each event only (no timed texts: no busy loop)
            wake = deadline if not progress_s else min(deadline, last + progress_s)
            try:
                event = events.get(timeout=max(0.0, wake - now))
            except queue.Empty:
                event = None
            if isinstance(event, dict):
                latest, fresh = event, True
            now = time.monotonic()
            if now >= deadline and not future.done():
                state = future.state
                future.cancel()
                raise GadgetError(
                    f"{gadget.name}: the {what} job {future.id} did not finish within "
                    f"{timeout_s:g} s (it was {state}; cancelled)"
                )
            state = future.state
            if (
                progress_s is not None
                and not future.done()
                and (state != shown or (now - last >= progress_s and (fresh or progress_s > 0)))
            ):
                last, shown, fresh = now, state, False
                text = {"status": status if state == "running" else "queued", "job": future.id,
                        "seconds": round(now - started, 1), **latest}  # fmt: skip
                yield Text(json.dumps(text))
        try:
            return future.result(0)
        except (CallCancelledError, CallError) as exc:
            raise GadgetError(
                f"{gadget.name}: the {what} job {future.id} {future.state}: {exc.reason}"
            ) from None
    finally:
        future.cancel()  # the session ended early, or an error: nothing is left running


def offload_wait(
    gadget: Gadget,
    function: str,
    inputs: Mapping[str, Any],
    params: dict[str, Any],
    **options: Any,
) -> Any:
    """Run :func:`offload` without progress texts; return the call's result (or raise)."""
    steps = offload(gadget, function, inputs, params, progress_s=None, **options)
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value

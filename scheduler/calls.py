"""The handle of an interactive call: a future the scheduler resolves, and its errors.

:meth:`scheduler.service.Scheduler.call` returns a :class:`CallFuture`. The scheduler's
threads push everything to it: the start (``state`` ``running``, ``device``), a requeue after a
lost worker (``queued``), and the end (a result, or one of the errors below). Nothing polls:
:meth:`CallFuture.result` waits on an event, and :meth:`CallFuture.add_done_callback` runs a
function when the end arrives (on the scheduler's thread that delivered it; it must be quick).

The interface is that of :class:`concurrent.futures.Future` where it applies, with one
difference: :meth:`CallFuture.cancel` also stops a *running* call (its worker is killed and
started again), since an interactive call whose caller has gone is wasted work.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CallCancelledError", "CallError", "CallFuture", "CallTimeoutError"]

log = logging.getLogger("mr0.scheduler")

_FINAL = ("done", "failed", "cancelled")


class CallError(RuntimeError):
    """A call failed: ``call <id> (<function>) failed: <reason>``.

    ``reason`` is the scheduler's (with the worker's message and where it ran).
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class CallTimeoutError(CallError):
    """A call ran longer than its ``timeout_s``; the scheduler stopped it."""


class CallCancelledError(concurrent.futures.CancelledError):
    """A call was cancelled (by its caller, or by the scheduler stopping); ``reason`` says why."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class CallFuture:
    """The pending result of one call (see the module docstring).

    Attributes
    ----------
    id
        The call's id (as the scheduler's status shows it).
    function
        The call function's name.
    kind
        Its priority class (``"preview"``, ``"recon"``, ...).
    """

    def __init__(self, call_id: str, function: str, kind: str,
                 cancel: Callable[[str], bool]) -> None:  # fmt: skip
        self.id = call_id
        self.function = function
        self.kind = kind
        self._cancel = cancel
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._state = "queued"
        self._device: str | None = None
        self._attempts = 0
        self._result: Any = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[CallFuture], None]] = []

    def __repr__(self) -> str:
        return f"CallFuture({self.id!r}, {self.function!r}, state={self._state!r})"

    # -- for the caller ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``queued``, ``running``, ``done``, ``failed`` or ``cancelled``."""
        return self._state

    @property
    def device(self) -> str | None:
        """Where the call runs (or ran last): ``cpu``, ``cuda:<index>``; None before a start."""
        return self._device

    @property
    def attempts(self) -> int:
        """Starts used so far."""
        return self._attempts

    def done(self) -> bool:
        """Whether the call has ended (done, failed or cancelled)."""
        return self._event.is_set()

    def running(self) -> bool:
        """Whether the call runs in a worker now."""
        return self._state == "running"

    def cancelled(self) -> bool:
        """Whether the call was cancelled."""
        return self._state == "cancelled"

    def cancel(self) -> bool:
        """Cancel the call, queued or running; return False if it had ended already."""
        if self._event.is_set():
            return False
        self._cancel(self.id)
        return True

    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` s (None: for ever) and return the call's result.

        Raises
        ------
        TimeoutError
            If the call has not ended within ``timeout`` (it goes on; cancel it if unwanted).
        CallError, CallTimeoutError, CallCancelledError
            If it failed, ran past its ``timeout_s``, or was cancelled.
        """
        if not self._event.wait(timeout):
            raise TimeoutError(f"call {self.id} ({self.function}) is still {self._state}")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait as :meth:`result`; return the call's error, or None if it succeeded."""
        if not self._event.wait(timeout):
            raise TimeoutError(f"call {self.id} ({self.function}) is still {self._state}")
        return self._error

    def add_done_callback(self, fn: Callable[[CallFuture], None]) -> None:
        """Call ``fn(self)`` when the call ends (at once if it has); it must be quick."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        _run_callback(fn, self)

    # -- for the scheduler ------------------------------------------------------------------------

    def _started(self, device: str, attempt: int) -> None:
        self._device, self._attempts, self._state = device, attempt, "running"

    def _requeued(self) -> None:
        if not self._event.is_set():
            self._state = "queued"

    def _finish(self, state: str, result: Any = None, error: BaseException | None = None) -> bool:
        """End the call (once); return whether this ended it."""
        if state not in _FINAL:
            raise ValueError(f"not a final state: {state!r}")
        with self._lock:
            if self._event.is_set():
                return False
            self._state, self._result, self._error = state, result, error
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            _run_callback(fn, self)
        return True


def _run_callback(fn: Callable[[CallFuture], None], future: CallFuture) -> None:
    try:
        fn(future)
    except Exception:  # a callback never stops the scheduler
        log.exception("call done-callback failed")

"""Behaviour shared by the command-line entry points.

Used by ``mr0``, ``mr0-server``, ``mr0-client`` and ``mr0-scheduler``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

__all__ = ["CLOSED_PIPE_STATUS", "exit_quietly_on_closed_pipe"]

P = ParamSpec("P")

CLOSED_PIPE_STATUS = 141
"""Exit status after the reader of standard output went away: 128 + SIGPIPE, what a shell reports
for a Unix tool that SIGPIPE ended (``yes | head``)."""


def exit_quietly_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a command's ``main`` so that a closed standard output ends it quietly.

    Python ignores SIGPIPE, so ``mr0-scheduler jobs --json | head`` would otherwise end in a
    ``BrokenPipeError`` traceback. The wrapper catches it, points standard output at
    ``/dev/null`` (so the interpreter's final flush cannot fail again) and returns
    :data:`CLOSED_PIPE_STATUS`. SIGPIPE itself stays ignored: a server writing to a socket whose
    peer went away must get an error, not die.
    """

    @functools.wraps(main)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:  # also on SystemExit (argparse's --help): what is buffered must go now
                sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, sys.stdout.fileno())
            finally:
                os.close(devnull)
            return CLOSED_PIPE_STATUS

    return wrapper

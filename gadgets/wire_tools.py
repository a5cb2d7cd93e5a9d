"""Torch-free helpers of ``mr0-client``: a closed-pipe exit and a raw-file check.

``mr0-client`` must start fast (issue 22: it took 2 s for a 0.5 s preview because it imported
torch). Importing any module under ``mr0core`` runs ``mr0core/__init__.py``, which imports torch
(1.3–1.8 s), so the client cannot use :mod:`mr0core.clitools` or
:func:`mr0core.io.mrd.check_raw_file` and uses these copies instead. ``tests/test_client_thin.py``
checks that the client imports neither torch nor mr0core, and that these copies behave as the
originals (same exit status, same checks). They can go once ``mr0core``'s package import is lazy.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from os import PathLike, fspath
from pathlib import Path
from typing import ParamSpec

import h5py

__all__ = ["CLOSED_PIPE_STATUS", "MrdFileError", "check_raw_file", "exit_quietly_on_closed_pipe"]

P = ParamSpec("P")

CLOSED_PIPE_STATUS = 141
"""Exit status after the reader of standard output went away (128 + SIGPIPE), as
:data:`mr0core.clitools.CLOSED_PIPE_STATUS`."""


class MrdFileError(ValueError):
    """A file that is not ISMRMRD raw data; the message names the file and the problem.

    The client's counterpart of :class:`mr0core.io.mrd.MrdFormatError` (a ``ValueError`` too).
    """


def exit_quietly_on_closed_pipe(main: Callable[P, int]) -> Callable[P, int]:
    """Wrap a command's ``main`` so that a closed standard output ends it quietly.

    As :func:`mr0core.clitools.exit_quietly_on_closed_pipe`: on ``BrokenPipeError`` standard
    output is pointed at ``/dev/null`` (so the interpreter's final flush cannot fail again) and
    :data:`CLOSED_PIPE_STATUS` is returned. SIGPIPE itself stays ignored.
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


def check_raw_file(path: str | PathLike[str], group: str = "dataset") -> Path:
    """Check that ``path`` is an HDF5 file whose ``group`` holds an ISMRMRD header.

    The same checks and messages as :func:`mr0core.io.mrd.check_raw_file`.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    MrdFileError
        If it is not HDF5, or lacks the group or its header (``xml``).
    """
    path = Path(fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"ISMRMRD file not found: {path}")
    if not h5py.is_hdf5(path):
        raise MrdFileError(f"{path}: not an HDF5 file, so not ISMRMRD raw data")
    with h5py.File(path, "r") as f:
        if group not in f:
            raise MrdFileError(f"{path}: no group {group!r} (groups: {sorted(f.keys())})")
        if "xml" not in f[group]:
            raise MrdFileError(f"{path}: group {group!r} has no ISMRMRD header ('xml')")
    return path

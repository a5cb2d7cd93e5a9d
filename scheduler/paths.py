"""Safe paths: private files and folders, and folders a job parameter cannot leave.

Private
    Patient data is ``0600`` in ``0700`` folders, whatever the umask.
    Everything the scheduler and the server keep (the scheduler's store, the server's job store
    and reference scans, ``--save-dir``) is made with these helpers. Modes are set explicitly
    (``os.open``/``os.mkdir`` with the mode, then ``chmod``), since the mode given to ``open``
    and ``mkdir`` is masked by the process's umask, which may be anything (``0o022`` makes
    files world-readable, ``0o000`` world-writable).
Confined
    A job parameter that names a folder (``inputs``) must resolve, symbolic links followed, to
    a folder directly inside the scheduler's ``inputs/`` folder (:func:`confined_folder`); the
    files read from it must be regular files, not links (:func:`confined_file`). Anything else
    is an :class:`InputPathError` naming the value.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "InputPathError",
    "JobFileError",
    "confined_file",
    "confined_folder",
    "make_private",
    "open_private",
    "private_dir",
    "private_file",
    "write_private",
]


class JobFileError(ValueError):
    """A job file that is missing, not a regular file, or not plain data (nothing in it ran)."""


class InputPathError(JobFileError):
    """A path named by a job parameter that lies outside the scheduler's folders."""


FILE_MODE = 0o600
"""Mode of every data file: read and write for the owner only."""

DIR_MODE = 0o700
"""Mode of every data folder: the owner only."""


def private_dir(path: Path | str) -> Path:
    """Create ``path`` (and missing parents) as ``0700`` folders; make ``path`` itself ``0700``.

    Parents that already exist keep their mode (they may be ``/tmp`` or a user's home); the
    folder itself is set to ``0700`` even when it existed.

    Raises
    ------
    OSError
        When a folder cannot be made, or ``path`` exists and is not a folder.
    """
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another thread
            os.mkdir(folder, DIR_MODE)
        os.chmod(folder, DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path | str) -> Path:
    """Create ``path`` as an empty ``0600`` file if it is missing; make it ``0600``.

    For files another library then opens (SQLite, HDF5): it finds them private from the start.
    A symbolic link is refused (``OSError``), so a planted link cannot redirect the write.
    """
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def open_private(path: Path | str, exclusive: bool = False) -> Iterator[IO[bytes]]:
    """Open ``path`` for writing as a new or truncated ``0600`` file (never through a link).

    ``exclusive``: fail (``FileExistsError``) when it exists.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def write_private(path: Path | str, data: bytes, sync: bool = False) -> None:
    """Write ``data`` to ``path`` as a ``0600`` file (``sync``: fsync before closing)."""
    with open_private(path) as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def make_private(path: Path | str) -> None:
    """Set ``0600`` on a file, or ``0700``/``0600`` on a folder and everything under it.

    Symbolic links are left alone (their targets are not ours to change). Entries that vanish
    meanwhile are skipped.
    """
    path = Path(path)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        return
    if stat.S_ISDIR(mode):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path, DIR_MODE)
        for root, dirs, files in os.walk(path):
            for name in dirs:
                _chmod(Path(root) / name, DIR_MODE)
            for name in files:
                _chmod(Path(root) / name, FILE_MODE)
    else:
        _chmod(path, FILE_MODE)


def _chmod(path: Path, mode: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        if not path.is_symlink():
            os.chmod(path, mode)


# -- confined paths ----------------------------------------------------------------------


def confined_folder(value: object, root: Path | str | None) -> Path:
    """Return the folder a job parameter names, if it lies directly inside ``root``.

    Parameters
    ----------
    value
        The parameter: a folder name inside ``root``, or a path (absolute, or relative to
        ``root``).
    root
        The scheduler's ``inputs/`` folder (None: the job runs where there is none).

    Raises
    ------
    InputPathError
        When ``value`` is not a string, or, with symbolic links and ``..`` resolved, is not a
        folder directly inside ``root`` (``/etc``, ``../../x``, a link out of ``root``), or
        there is no ``root``.
    """
    shown = repr(str(value)[:200])
    if root is None:
        raise InputPathError(f"inputs {shown}: this worker has no inputs folder")
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputPathError(f"inputs {shown} is not a folder name")
    base = Path(root).resolve()
    candidate = Path(value)
    if not candidate.is_absolute():
        candidate = base / candidate
    try:
        resolved = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise InputPathError(f"inputs {shown} does not exist inside {base}") from None
    if resolved.parent != base or not resolved.is_dir():
        raise InputPathError(
            f"inputs {shown} resolves to {str(resolved)[:200]!r}, which is not a folder "
            f"directly inside the scheduler's inputs folder {base}"
        )
    return resolved


def confined_file(folder: Path, name: str) -> Path:
    """Return ``folder/name`` if it is a regular file there (not a symbolic link).

    Raises
    ------
    InputPathError
        For a name with a path separator, a link, or anything but a regular file.
    """
    if "/" in name or name in ("", ".", ".."):
        raise InputPathError(f"job file name {name!r} is not a plain name")
    path = folder / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise JobFileError(f"job file {path} is missing") from None
    if not stat.S_ISREG(mode):
        raise InputPathError(f"job file {path} is not a regular file (a link or a folder)")
    return path

"""Safe paths: private files and folders.

Patient data is ``0600`` in ``0700`` folders, whatever the umask. Everything the scheduler and
the server keep (the scheduler's store, the server's job store and reference scans,
``--save-dir``) is made with these helpers. Modes are set explicitly (``os.open``/``os.mkdir``
with the mode, then ``chmod``), since the mode given to ``open`` and ``mkdir`` is masked by the
process's umask, which may be anything (``0o022`` makes files world-readable, ``0o000``
world-writable).
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
    "make_private",
    "open_private",
    "private_dir",
    "private_file",
    "write_private",
]


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

"""Light checks of ISMRMRD raw files (h5py only: no torch), shared by ``mr0`` and ``mr0-client``.

:mod:`mr0core.io.mrd` re-exports both names; ``mr0-client`` imports this module directly, so that
sending a file loads neither torch nor the rest of mr0core (``mr0core``'s package imports are lazy).
"""

from __future__ import annotations

from os import PathLike, fspath
from pathlib import Path

__all__ = ["MrdFormatError", "check_raw_file"]


class MrdFormatError(ValueError):
    """A file that is not (valid) ISMRMRD raw data; the message names the file and the problem."""


def check_raw_file(path: str | PathLike[str], group: str = "dataset") -> Path:
    """Check that ``path`` is an HDF5 file whose ``group`` holds an ISMRMRD header.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    MrdFormatError
        If it is not HDF5, or lacks the group or its header (``xml``).
    """
    import h5py

    path = Path(fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"ISMRMRD file not found: {path}")
    if not h5py.is_hdf5(path):
        raise MrdFormatError(f"{path}: not an HDF5 file, so not ISMRMRD raw data")
    with h5py.File(path, "r") as f:
        if group not in f:
            raise MrdFormatError(f"{path}: no group {group!r} (groups: {sorted(f.keys())})")
        if "xml" not in f[group]:
            raise MrdFormatError(f"{path}: group {group!r} has no ISMRMRD header ('xml')")
    return path

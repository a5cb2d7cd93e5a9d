"""Write a session (header, acquisitions, waveforms, images) to an MRD (ISMRMRD HDF5) file.

The layout is the one ``ismrmrd.Dataset`` writes and python-ismrmrd-server's ``savedata``
produces: ``<group>/xml``, ``<group>/data`` (acquisitions), ``<group>/waveforms`` and
``<group>/image_<series index>`` (images), so :func:`mr0core.io.mrd.read_mrd`,
``ismrmrd.Dataset`` and the ISMRMRD tools read it back. The file is patient data: it is made
``0600`` before anything is written, whatever the umask.
"""

from __future__ import annotations

from os import fspath
from pathlib import Path
from types import TracebackType
from typing import Any

from scheduler.paths import private_file

__all__ = ["SessionWriter"]


class SessionWriter:
    """Append the items of one session to an ISMRMRD HDF5 file.

    Parameters
    ----------
    path
        The ``.h5`` file (created with its parent folders if missing).
    group
        The dataset group (``"dataset"`` by ISMRMRD habit).

    Notes
    -----
    Also a context manager (``with SessionWriter(p) as w: ...`` closes the file).
    """

    def __init__(self, path: Path, group: str = "dataset") -> None:
        import ismrmrd

        self.path = Path(path)
        self.group = group
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)  # 0600 before any data; HDF5 keeps the mode
        self._dataset: Any = ismrmrd.Dataset(fspath(self.path), group, create_if_needed=True)
        self.counts = {"acquisitions": 0, "waveforms": 0, "images": 0}

    def _open(self) -> Any:
        if self._dataset is None:
            raise ValueError(f"{self.path}: the session writer is closed")
        return self._dataset

    def write_header(self, xml: str) -> None:
        """Store the ISMRMRD XML header (``<group>/xml``)."""
        self._open().write_xml_header(xml.rstrip("\x00"))

    def add(self, item: Any) -> None:
        """Append an ``ismrmrd.Acquisition``, ``ismrmrd.Waveform`` or ``ismrmrd.Image``.

        Images go to ``image_<image_series_index>``.

        Raises
        ------
        TypeError
            For any other item.
        """
        import ismrmrd

        dataset = self._open()
        if isinstance(item, ismrmrd.Acquisition):
            dataset.append_acquisition(item)
            self.counts["acquisitions"] += 1
        elif isinstance(item, ismrmrd.Waveform):
            dataset.append_waveform(item)
            self.counts["waveforms"] += 1
        elif isinstance(item, ismrmrd.Image):
            dataset.append_image(f"image_{int(item.image_series_index)}", item)
            self.counts["images"] += 1
        else:
            raise TypeError(f"cannot store a {type(item).__name__} in an MRD file")

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._dataset is not None:
            self._dataset.close()
            self._dataset = None

    def __enter__(self) -> SessionWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""A session (header, acquisitions, waveforms, images) in an MRD (ISMRMRD HDF5) file.

The one writer (:class:`SessionWriter`) and the one reader (:func:`read_items`) of such files
in the gadgets. The layout is the one ``ismrmrd.Dataset`` writes and python-ismrmrd-server's
``savedata`` produces: ``<group>/xml``, ``<group>/data`` (acquisitions), ``<group>/waveforms`` and
``<group>/image_<series index>`` (images), so :func:`mr0core.io.mrd.read_mrd`,
``ismrmrd.Dataset`` and the ISMRMRD tools read it back. The file is patient data: it is made
``0600`` before anything is written, whatever the umask.
"""

from __future__ import annotations

from collections.abc import Collection
from os import fspath
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import ismrmrd

from scheduler.paths import private_file

__all__ = ["ITEM_KINDS", "SessionWriter", "read_items"]

ITEM_KINDS = ("acquisitions", "waveforms", "images")
"""The kinds of items an MRD file holds, in the order :func:`read_items` returns them."""


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


def read_items(
    path: Path, group: str = "dataset", kinds: Collection[str] = ITEM_KINDS
) -> tuple[str, list[Any]]:
    """Return ``(header_xml, items)`` of an MRD file: acquisitions, then waveforms, then images.

    Parameters
    ----------
    path
        The ``.h5`` file.
    group
        The dataset group (``"dataset"`` by ISMRMRD habit).
    kinds
        The kinds of items to read (of :data:`ITEM_KINDS`); the others are skipped.

    Returns
    -------
    header_xml, items
        The header is '' when the file has none (or no such group); a kind the file lacks gives
        no items. The order within each kind is kept; the order between kinds (an acquisition
        after a waveform) is not stored by the MRD layout.

    Raises
    ------
    ValueError
        For a kind not in :data:`ITEM_KINDS`.
    OSError
        For a file that is missing or not HDF5.
    """
    unknown = sorted(set(kinds) - set(ITEM_KINDS))
    if unknown:
        raise ValueError(f"unknown MRD item kinds {unknown} (known: {', '.join(ITEM_KINDS)})")
    with h5py.File(path, "r") as f:
        root = f.get(group)
        if root is None:
            return "", []
        has = {k: k in root for k in ("xml", "data", "waveforms")}
        image_groups = sorted(k for k in root if k.startswith("image_"))
    dataset = ismrmrd.Dataset(fspath(path), group, create_if_needed=False)
    try:
        xml = dataset.read_xml_header() if has["xml"] else b""
        items: list[Any] = []
        if has["data"] and "acquisitions" in kinds:
            items += [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
        if has["waveforms"] and "waveforms" in kinds:
            items += [dataset.read_waveform(i) for i in range(dataset.number_of_waveforms())]
        if "images" in kinds:
            for name in image_groups:
                n = dataset.number_of_images(name)
                items += [dataset.read_image(name, i) for i in range(n)]
    finally:
        dataset.close()
    return (xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)), items

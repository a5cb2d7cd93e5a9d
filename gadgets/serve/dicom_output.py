"""The server's DICOM output: each session's image series as DICOM files, and to a PACS.

With ``mr0-server --dicom-dir DIR`` every series of images a session's chain produced (client
images excepted) is written, when the chain has finished, as a DICOM MR image series
(:func:`mr0core.io.dicom_out.write_dicom_images`) into ``DIR/<time>_<session>/<series>/``. With
``--pacs HOST:PORT:AET`` each such series is also queued for the PACS
(:class:`gadgets.wire.pacs.PacsSender`, durable under ``--store``): the session only writes files
and enqueues, the C-STORE runs on the sender's thread, so a PACS that is down never holds a
session. Without ``--dicom-dir`` the series are written into the queue alone.

Identity comes from the session's ISMRMRD header (anonymous without one). A series is labelled
simulated (:func:`is_simulated`) when its images say so: meta ``MR0Simulated`` (true/false)
decides where present; otherwise images of a digital twin (meta ``MR0Phantom``) are simulated,
except the retro-simulation's measured series (``MR0 retro measured``).

The images are kept (by reference) until the chain ends, at most ``max_bytes`` of pixels per
session; past that, later images are not written (one warning to the client and the log).
"""

from __future__ import annotations

import logging
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mr0core.io.dicom_out import DicomIdentity, identity_from_header, write_dicom_images

__all__ = ["SessionDicom", "is_simulated"]

log = logging.getLogger("mr0.dicom")

_MEASURED_SERIES = "MR0 retro measured"  # gadgets.library.retro.RETRO_SERIES[1]
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def _meta(image: Any) -> Any:
    import ismrmrd

    if not image.attribute_string:
        return {}
    try:
        return ismrmrd.Meta.deserialize(image.attribute_string)
    except Exception:  # malformed meta: treated as none
        return {}


def _first(meta: Any, key: str) -> str | None:
    value = meta.get(key) if hasattr(meta, "get") else None
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


def is_simulated(image: Any) -> bool:
    """Whether an ``ismrmrd.Image`` of the server holds simulated data (see the module doc)."""
    meta = _meta(image)
    flag = _first(meta, "MR0Simulated")
    if flag is not None:
        return flag.strip().lower() in ("true", "1", "yes")
    if _first(meta, "SeriesDescription") == _MEASURED_SERIES:
        return False
    return _first(meta, "MR0Phantom") is not None


class SessionDicom:
    """Collects one session's output images by series; writes and queues them at the end.

    Parameters
    ----------
    session_id
        Names the session's folder.
    header
        The session's parsed ISMRMRD header, or None (anonymous identity).
    dicom_dir
        ``--dicom-dir`` (None: the series go to the PACS queue only).
    pacs
        The server's :class:`gadgets.wire.pacs.PacsSender`, or None.
    staging
        Where series are written for the PACS alone (without ``dicom_dir``).
    max_bytes
        Pixel bytes kept per session.
    """

    def __init__(
        self,
        session_id: str,
        header: Any,
        dicom_dir: Path | None,
        pacs: Any = None,
        staging: Path | None = None,
        max_bytes: int = 512 * 2**20,
    ) -> None:
        if dicom_dir is None and (pacs is None or staging is None):
            raise ValueError("SessionDicom needs a dicom_dir, or a PACS sender and staging")
        self.session_id = session_id
        self.header = header
        self.dicom_dir = dicom_dir
        self.pacs = pacs
        self.staging = staging
        self.max_bytes = max_bytes
        self._series: dict[int, list[Any]] = {}
        self._bytes = 0
        self.dropped = 0

    def add(self, image: Any) -> bool:
        """Keep a server-made image for its series; False once over ``max_bytes``."""
        nbytes = int(np.asarray(image.data).nbytes)
        if self._bytes + nbytes > self.max_bytes:
            self.dropped += 1
            return False
        self._bytes += nbytes
        self._series.setdefault(int(image.image_series_index), []).append(image)
        return True

    def finish(self) -> list[str]:
        """Write each series (and queue it for the PACS); return one report line per series.

        A series that cannot be written is reported (``not written: …``), never raised: the
        session's images have gone to the client already.
        """
        if not self._series:
            return []
        try:
            identity = identity_from_header(self.header)
        except ValueError:
            identity = DicomIdentity()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        base = (self.dicom_dir or self.staging) / f"{stamp}_{self.session_id}"  # type: ignore[operator]
        lines = []
        for index, images in sorted(self._series.items()):
            simulated = any(is_simulated(im) for im in images)
            description = _first(_meta(images[0]), "SeriesDescription") or "mr0 image"
            folder = base / f"{index:03d}_{_SLUG.sub('_', description)[:40]}"
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    series = write_dicom_images(folder, images, simulated=simulated,
                                                identity=identity)  # fmt: skip
                for w in caught:
                    log.warning("DICOM series %s: %s", index, w.message)
            except (OSError, ValueError) as exc:
                log.error("DICOM series %s of session %s not written: %s", index,
                          self.session_id, exc)  # fmt: skip
                lines.append(f"DICOM series {index} not written: {exc}")
                continue
            line = (f"DICOM series {index} {series.series_description!r}: "
                    f"{len(series.files)} images, {series.series_instance_uid}")  # fmt: skip
            if self.dicom_dir is not None:
                line += f" in {folder.relative_to(self.dicom_dir)}"
            if self.pacs is not None:
                move = self.dicom_dir is None
                entry = self.pacs.enqueue(series.files, series.series_description, move=move)
                if move:
                    shutil.rmtree(folder, ignore_errors=True)
                if entry is not None:
                    line += f", queued for {self.pacs.queue.target}"
                else:
                    line += ", NOT queued for the PACS (queue full" + (
                        "; dropped)" if move else f"; kept in {folder})"
                    )
            lines.append(line)
        if self.dicom_dir is None:
            shutil.rmtree(base, ignore_errors=True)
        if self.dropped:
            lines.append(f"DICOM: {self.dropped} images over {self.max_bytes} bytes not written")
        self._series.clear()
        return lines

"""The store's gadgets: reference scans in and out, and background results back.

:class:`StoreReferenceGadget` (chain ``mr0_reference``) stores a session's acquisitions as a
reference scan of the server's store (:class:`gadgets.framework.session_store.Store`) by its
measurement id; :func:`reference_id` finds the reference a later session names, for gadgets
that use one (:class:`gadgets.library.recon.SenseGadget`'s coil maps). :class:`RetrieveGadget`
(chain ``mr0_retrieve``) streams a background job's result back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import ismrmrd
import ismrmrd.xsd

from gadgets.framework.core import Context, Gadget, GadgetError, Item, Property, Text, register
from gadgets.framework.session_store import Store, StoreError, header_identity

__all__ = ["RetrieveGadget", "StoreReferenceGadget", "reference_id"]


def _store(context: Context, gadget: str) -> Store:
    if context.store is None:
        raise GadgetError(f"{gadget}: the server has no job store (start it with --store DIR)")
    store: Store = context.store
    return store


@register
class RetrieveGadget(Gadget):
    """Stream a background job's result back (chain ``mr0_retrieve``).

    The job is named by ``job``, or found as the newest of ``patient`` and/or ``protocol``.
    Its texts come first, then a text with the job's summary, then its images and
    acquisitions. A job not finished within ``wait_s`` answers with its summary only (state
    ``queued`` or ``running``); a failed or cancelled job is an error naming its cause.
    """

    properties: ClassVar[dict[str, Property]] = {
        "job": Property("str", "", "job id (24 hex digits)", max=64),
        "patient": Property("str", "", "patient id: the newest job of this patient", max=256),
        "protocol": Property("str", "", "protocol name: the newest job of it", max=256),
        "wait_s": Property("float", 0.0, "seconds to wait for an unfinished job", min=0, max=3600),
    }

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Pass the input on, then stream the stored result."""
        yield from items
        store = _store(self.context, self.name)
        try:
            if self.props["job"]:
                job = store.job(self.props["job"])
            else:
                job = store.find(self.props["patient"], self.props["protocol"])
            deadline = time.monotonic() + self.props["wait_s"]
            while job.state in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
                job = store.job(job.id)
            if job.state == "failed":
                raise GadgetError(f"{self.name}: job {job.id} failed: {job.error}")
            if job.state == "cancelled":
                raise GadgetError(f"{self.name}: job {job.id} was cancelled: {job.error}")
            if job.state != "done":
                yield Text(json.dumps(job.summary()))
                return
            stored = store.result(job.id)
        except StoreError as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        for text in job.texts:
            yield Text(text)
        yield Text(json.dumps(job.summary()))
        yield from stored


@register
class StoreReferenceGadget(Gadget):
    """Store the session's acquisitions as a reference scan by measurement id.

    The id is ``measurement_id``, else the header's ``measurementInformation.measurementID``.
    A later session refers to it (e.g. ``{"reference": "<id>"}`` with chain ``sense``). Answers
    with a text ``{"reference": id, "acquisitions": n}``; other items pass on.
    """

    properties: ClassVar[dict[str, Property]] = {
        "measurement_id": Property("str", "", "id to store under (default: the header's)", max=128),
    }

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Collect the acquisitions, store them, report."""
        store = _store(self.context, self.name)
        mid = self.props["measurement_id"] or header_identity(self.context.header)[2]
        if not mid:
            raise GadgetError(
                f"{self.name}: no measurement id: the header has no measurementID; "
                "set measurement_id in the JSON parameters"
            )
        acqs: list[Any] = []
        for item in items:
            if isinstance(item, ismrmrd.Acquisition):
                acqs.append(item)
            else:
                yield item
        xml = self.context.header_xml
        if not xml and self.context.header is not None:
            xml = ismrmrd.xsd.ToXML(self.context.header)
        if not xml:
            raise GadgetError(f"{self.name}: a reference scan needs its ISMRMRD header")
        try:
            ref = store.add_reference(mid, xml, acqs, self.context.header)
        except StoreError as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        yield Text(json.dumps({"reference": ref.measurement_id, "acquisitions": ref.acquisitions}))


def reference_id(context: Context, explicit: str, types: Iterable[str]) -> str:
    """Return the measurement id of the reference scan a session names, or ''.

    ``explicit`` (a gadget property) wins; else the first ``measurementDependency`` of the
    header whose ``dependencyType`` is one of ``types`` (case-insensitive).
    """
    if explicit:
        return explicit
    header = context.header
    info = getattr(header, "measurementInformation", None) if header is not None else None
    wanted = {t.lower() for t in types}
    for dep in getattr(info, "measurementDependency", None) or []:
        if str(getattr(dep, "dependencyType", "")).lower() in wanted and dep.measurementID:
            return str(dep.measurementID)
    return ""

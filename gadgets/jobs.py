"""Background jobs and the store's gadgets: do not hold the scan, retrieve the result later.

A session that sends ``{"background": true}`` among its JSON parameters is not run while the
scanner waits. The server checks the chain and the parameters, stores the session's input in the
job store (:class:`gadgets.store.Store`), answers with one text ``{"job": "<id>", "state":
"queued"}`` and a close, and a :class:`JobRunner` thread runs the chain later. Its output goes to
the store: images and acquisitions to ``result.h5``, text messages (reports, metrics) to the
index. Queued and running jobs are run again when the server restarts.

A later session with config ``mr0_retrieve`` and JSON ``{"job": "<id>"}`` or ``{"patient":
"…", "protocol": "…"}`` (the newest job that matches) gets the stored result back
(:class:`RetrieveGadget`): the texts, then the images and acquisitions.

Reference scans (:class:`StoreReferenceGadget`, chain ``mr0_reference``) are stored by their
``measurementID``; a later session names one (``{"reference": "<measurement id>"}``, or the
header's ``measurementDependency``) and a chain uses it, e.g. :class:`gadgets.recon.SenseGadget`
for coil maps, as Gadgetron's dependency measurements do.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from scheduler.paths import make_private, private_file

from .core import Context, Gadget, GadgetError, Item, Property, Text, register
from .store import Job, Store, StoreError, header_identity

__all__ = [
    "JobRunner",
    "RetrieveGadget",
    "StoreReferenceGadget",
    "read_items",
    "run_job",
]

log = logging.getLogger("mr0.jobs")


def read_items(path: Path) -> tuple[str, list[Any]]:
    """Return ``(header_xml, items)`` of an MRD file: acquisitions, then waveforms, then images.

    The header is '' when the file has none. The order within each kind is kept; the order
    between kinds (an acquisition after a waveform) is not stored by the MRD layout.
    """
    import h5py
    import ismrmrd

    with h5py.File(path, "r") as f:
        group = f.get("dataset")
        if group is None:
            return "", []
        has = {k: k in group for k in ("xml", "data", "waveforms")}
        image_groups = sorted(k for k in group if k.startswith("image_"))
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=False)
    try:
        xml = dataset.read_xml_header() if has["xml"] else b""
        items: list[Any] = []
        if has["data"]:
            items += [dataset.read_acquisition(i) for i in range(dataset.number_of_acquisitions())]
        if has["waveforms"]:
            items += [dataset.read_waveform(i) for i in range(dataset.number_of_waveforms())]
        for name in image_groups:
            items += [dataset.read_image(name, i) for i in range(dataset.number_of_images(name))]
    finally:
        dataset.close()
    return (xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)), items


def run_job(store: Store, job_id: str, context: Context) -> Job:
    """Run a stored job's chain on its stored input; store the result; return the job.

    ``context`` carries the server's folders; its header, parameters and session id are set
    from the job. A failure is recorded in the store (state ``failed``) and not raised.
    """
    import ismrmrd

    from mr0core.io.mrd import parse_header

    from .chain import Chain, parse_chain
    from .mrdfile import SessionWriter

    store.mark_running(job_id)
    job = store.job(job_id)
    result = store.result_path(job_id)
    tmp = result.with_name(f".result.{uuid.uuid4().hex[:8]}.tmp")
    private_file(tmp)  # patient data: 0600 whatever the umask (the writer keeps the mode)
    texts: list[str] = []
    try:
        _, items = read_items(store.input_path(job_id))
        context.header = parse_header(job.header_xml) if job.header_xml else None
        context.header_xml = job.header_xml
        context.session_id = job.id
        context.parameters = dict(job.parameters)
        chain = Chain(parse_chain(job.config_xml), context, job.parameters)
        with SessionWriter(tmp) as writer:
            if job.header_xml:
                writer.write_header(job.header_xml)
            for out in chain.run(items):
                if isinstance(out, Text):
                    texts.append(out.text)
                elif isinstance(out, ismrmrd.Acquisition | ismrmrd.Image | ismrmrd.Waveform):
                    writer.add(out)
            counts = {k: v for k, v in writer.counts.items() if v}
        make_private(tmp)
        os.replace(tmp, result)
        store.mark_done(job_id, texts, counts)
        log.info("job done", extra={"event": "job_done", "job": job_id, "counts": counts})
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        text = str(exc) or type(exc).__name__
        if not isinstance(exc, GadgetError | ValueError):
            text = f"{type(exc).__name__}: {text}"
            log.exception("job crashed", extra={"event": "job_crash", "job": job_id})
        store.mark_failed(job_id, text)
        log.warning("job failed", extra={"event": "job_failed", "job": job_id, "error": text})
    return store.job(job_id)


class JobRunner:
    """Threads that run the store's queued jobs, one job per thread at a time.

    Parameters
    ----------
    store
        The job store.
    context
        A template :class:`Context` (folders, store); each job gets a copy with its own header.
    workers
        How many jobs run at once.
    """

    def __init__(self, store: Store, context: Context, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.store = store
        self.context = context
        self.workers = workers
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Condition()
        self._busy = 0

    def start(self) -> list[str]:
        """Recover the store, start the workers, queue the jobs a stopped server left.

        :meth:`Store.recover <gadgets.store.Store.recover>` first fails the jobs whose input
        never finished (and deletes that partial input) and removes temporary files; the
        queued and running jobs then run again (background jobs are durable: a later
        ``mr0_retrieve`` reads their result). Returns the ids of the jobs run again.
        """
        self.store.recover()
        resumed = [job.id for job in self.store.pending()]
        for job_id in resumed:
            self._queue.put(job_id)
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"mr0-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if resumed:
            log.info("jobs resumed", extra={"event": "jobs_resumed", "jobs": resumed})
        return resumed

    def submit(self, job_id: str) -> None:
        """Queue a job (already ``queued`` in the store)."""
        self._queue.put(job_id)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no job is queued or running; return whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._busy or not self._queue.empty():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.1))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the workers after their current job (queued jobs stay queued in the store)."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            with self._idle:
                self._busy += 1
            try:
                context = Context(
                    save_dir=self.context.save_dir, phantoms_dir=self.context.phantoms_dir,
                    chains_dir=self.context.chains_dir, store=self.store,
                    scheduler=self.context.scheduler,
                    logger=logging.getLogger(f"mr0.gadgets.{job_id}"),
                )  # fmt: skip
                run_job(self.store, job_id, context)
            except StoreError as exc:  # e.g. taken by another runner meanwhile
                log.warning("job skipped: %s", exc, extra={"event": "job_skip", "job": job_id})
            except Exception:  # a bug never ends the runner
                log.exception("job runner error", extra={"event": "job_crash", "job": job_id})
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()


def _store(context: Context, gadget: str) -> Store:
    if context.store is None:
        raise GadgetError(f"{gadget}: the server has no job store (start it with --store DIR)")
    return context.store


@register
class RetrieveGadget(Gadget):
    """Stream a stored job's result back (chain ``mr0_retrieve``).

    The job is named by ``job``, or found as the newest of ``patient`` and/or ``protocol``.
    Its texts come first, then a text with the job's summary, then its images and
    acquisitions. A job not finished within ``wait_s`` answers with its summary only (state
    ``queued`` or ``running``); a failed job is an error naming its cause.
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
            while job.state not in ("done", "failed") and time.monotonic() < deadline:
                time.sleep(0.1)
                job = store.job(job.id)
        except StoreError as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        if job.state == "failed":
            raise GadgetError(f"{self.name}: job {job.id} failed: {job.error}")
        if job.state != "done":
            yield Text(json.dumps(job.summary()))
            return
        for text in job.texts:
            yield Text(text)
        yield Text(json.dumps(job.summary()))
        _, stored = read_items(store.result_path(job.id))
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
        import ismrmrd
        import ismrmrd.xsd

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

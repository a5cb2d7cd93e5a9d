"""``mr0-client``: send an MRD HDF5 file (or a job) to an MRD server, save what comes back.

Sends the config (a chain name, or a local chain XML file as config text), the file's ISMRMRD
header, optional JSON parameters, then every acquisition and waveform with a progress bar, then a
close. A stored raw dataset (``--retro FILE.h5``, e.g. one the server saved with ``--save-dir``)
is sent the same way through any chain. Header-less job sessions (config, JSON, close) are sent by
:func:`send_job`: a digital-twin preview (``--preview SEQ``) and the retrieval of a background
job (``--retrieve ID`` or ``--patient``/``--protocol``). ``--send-dicom DIR --pacs HOST:PORT:AET``
sends files to a different server: every DICOM file under ``DIR`` is C-STOREd to a PACS
(:mod:`gadgets.wire.pacs`, whose pydicom and pynetdicom are imported only then).

A receiver thread reads the answer while the data are sent (a chain such as ``passthrough``
answers at once, and with both sides only writing, full socket buffers would deadlock). Images
go to ``OUT.h5``, one image group per series (``image_<series>``, which
:func:`mr0core.io.mrd_images.read_mrd_images` reads), returned acquisitions to its ``data``;
text is printed. The exit status is 0 on success, 1 when the server reports an error (a text
starting with ``ERROR``) or the connection fails (for ``--send-dicom``: the PACS cannot be
reached or refuses the association after the retries, or refuses a file), 2 for bad arguments
(for ``--send-dicom`` also: no folder, or no DICOM file in it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from gadgets.wire.frames import MessageId, close_frame, config_file_frame, string_frame

# only mr0core's light modules (its package imports are lazy): the client never loads torch
# (1.3-1.8 s) and starts in a fraction of a second (tests/gadgets/wire/test_client_thin.py)
from mr0core.clitools import exit_quietly_on_closed_pipe
from mr0core.io.rawfile import check_raw_file

if TYPE_CHECKING:  # for the annotations only; loaded when needed (see send_job)
    import ismrmrd

__all__ = ["ClientResult", "main", "send_file", "send_job"]


@dataclass
class ClientResult:
    """What came back from one session."""

    images: int = 0
    acquisitions: int = 0
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    closed: bool = False  # the server sent its close message

    @property
    def ok(self) -> bool:
        """No error text and a proper close."""
        return self.closed and not self.errors


def _read_input(path: Path, group: str) -> tuple[str, ismrmrd.Dataset]:
    # ismrmrd (and the framing built on it) load when needed, not at start-up (see send_job)
    import ismrmrd

    check_raw_file(path, group)  # FileNotFoundError, MrdFormatError (a ValueError)
    dset = ismrmrd.Dataset(str(path), group, create_if_needed=False)
    xml = dset.read_xml_header()
    return (xml.decode("utf-8") if isinstance(xml, bytes) else str(xml)), dset


def send_file(
    path: Path,
    out: Path,
    *,
    config: str = "default",
    config_xml: str | None = None,
    params: dict[str, Any] | None = None,
    host: str = "127.0.0.1",
    port: int = 9002,
    in_group: str = "dataset",
    out_group: str = "dataset",
    progress: bool = True,
    nul_terminate: bool = False,
    timeout_s: float = 600.0,
) -> ClientResult:
    """Send ``path`` through the server's chain ``config`` (or ``config_xml``); save to ``out``.

    Parameters
    ----------
    path
        MRD HDF5 input (header plus acquisitions, optionally waveforms).
    out
        MRD HDF5 output (appended to; created if missing).
    config, config_xml
        The chain's name on the server, or a chain XML to send as config text.
    params
        JSON parameters sent right after the header (chain property overrides).
    host, port
        The server.
    in_group, out_group
        HDF5 groups read and written.
    progress
        Show a progress bar while sending.
    nul_terminate
        End strings with a NUL, as python-ismrmrd-server's client and FIRE do.
    timeout_s
        Socket timeout in seconds.
    """
    # the framing (built on ismrmrd) loads when needed, not at start-up (see send_job)
    from gadgets.wire.framing import MessageWriter

    header_xml, dset = _read_input(path, in_group)
    result = ClientResult()
    try:
        n_acq = dset.number_of_acquisitions()
        try:
            n_wav = dset.number_of_waveforms()
        except Exception:  # no waveform table
            n_wav = 0
        out.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.create_connection((host, port), timeout=timeout_s)
        try:
            receiver = threading.Thread(
                target=_receive, args=(sock, out, out_group, header_xml, result), daemon=True
            )
            receiver.start()
            writer = MessageWriter(sock, nul_terminate=nul_terminate)
            try:
                if config_xml is not None:
                    writer.write_config_text(config_xml)
                else:
                    writer.write_config_file(config)
                writer.write_header(header_xml)
                if params:
                    writer.write_text(json.dumps(params))
                bar = tqdm(total=n_acq + n_wav, unit="msg", desc="sending", disable=not progress)
                with bar:
                    for i in range(n_acq):
                        writer.write_acquisition(dset.read_acquisition(i))
                        bar.update()
                    for i in range(n_wav):
                        writer.write_waveform(dset.read_waveform(i))
                        bar.update()
                writer.write_close()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server stopped reading; its reason arrives on the receiver
            receiver.join()
        finally:
            with contextlib.suppress(OSError):
                sock.close()
    finally:
        dset.close()
    return result


def send_job(
    params: dict[str, Any],
    out: Path,
    *,
    config: str,
    host: str = "127.0.0.1",
    port: int = 9002,
    out_group: str = "dataset",
    timeout_s: float = 3600.0,
    on_text: Any = None,
) -> ClientResult:
    """Send a header-less job session (config, JSON ``params``, close); save the answer.

    Used for ``mr0_preview`` (the job is the JSON) and ``mr0_retrieve``. Images go to ``out``
    as in :func:`send_file`; texts (progress, reports) are collected, and passed to
    ``on_text(text)`` as they arrive when given.
    """
    result = ClientResult()
    out.parent.mkdir(parents=True, exist_ok=True)
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        # the job goes out before ismrmrd (0.25 s to import; needed only for what comes back)
        # is imported, so that its import overlaps the server's work
        frames = config_file_frame(config)
        frames += string_frame(MessageId.TEXT, json.dumps(params), "text")
        sock.sendall(frames + close_frame())
        _receive(sock, out, out_group, "", result, on_text)
    return result


def _receive(
    sock: socket.socket,
    out: Path,
    group: str,
    header_xml: str,
    result: ClientResult,
    on_text: Any = None,
) -> None:
    # the framing (built on ismrmrd) loads when needed, not at start-up (see send_job)
    from gadgets.wire.framing import Limits, MessageReader, ProtocolError

    reader = MessageReader(sock, Limits())
    dset: ismrmrd.Dataset | None = None
    try:
        while True:
            try:
                msg = reader.read()
            except EOFError:
                break
            except (ProtocolError, OSError) as exc:
                result.errors.append(f"connection: {exc}")
                break
            if msg.id == MessageId.CLOSE:
                result.closed = True
                break
            if msg.id == MessageId.TEXT:
                text = str(msg.value)
                result.texts.append(text)
                if on_text is not None:
                    on_text(text)
                if text.startswith("ERROR"):
                    result.errors.append(text)
                continue
            if dset is None:
                dset = _private_dataset(out, group)
                if header_xml:
                    dset.write_xml_header(header_xml)
            if msg.id == MessageId.IMAGE:
                img: ismrmrd.Image = msg.value
                dset.append_image(f"image_{img.image_series_index}", img)
                result.images += 1
            elif msg.id == MessageId.ACQUISITION:
                dset.append_acquisition(msg.value)
                result.acquisitions += 1
            elif msg.id == MessageId.WAVEFORM:
                dset.append_waveform(msg.value)
    finally:
        if dset is not None:
            dset.close()


def _private_dataset(path: Path, group: str) -> Any:
    """Open (create) the output file so that a new one is ``0600``: it holds patient data."""
    # ismrmrd (and the framing built on it) load when needed, not at start-up (see send_job)
    import ismrmrd

    new = not Path(path).exists()
    old = os.umask(0o077) if new else None
    try:
        dset = ismrmrd.Dataset(str(path), group, create_if_needed=True)
    finally:
        if old is not None:
            os.umask(old)
    return dset


@exit_quietly_on_closed_pipe
def main(argv: list[str] | None = None) -> int:
    """Run ``mr0-client``."""
    parser = argparse.ArgumentParser(
        prog="mr0-client", description="Send an MRD HDF5 file to an MRD server; save the answer."
    )
    parser.add_argument("input", type=Path, nargs="?", help="MRD HDF5 raw data")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--retro", type=Path, metavar="FILE.h5",
                      help="a stored raw dataset to run (again) through --config")  # fmt: skip
    what.add_argument("--preview", type=Path, metavar="SEQ",
                      help="digital-twin preview of a .seq file (chain mr0_preview)")  # fmt: skip
    what.add_argument("--retrieve", metavar="JOB", help="fetch a background job's result")
    what.add_argument("--patient", help="fetch the newest background job of this patient")
    what.add_argument(
        "--send-dicom",
        type=Path,
        metavar="DIR",
        help="C-STORE every DICOM file under DIR to --pacs (no MRD server)",
    )
    parser.add_argument("--protocol", help="with --patient (or alone): the protocol's newest job")
    parser.add_argument(
        "--phantom",
        default="brain",
        help="--preview twin: brain, shepp-logan or a server phantom name",
    )
    parser.add_argument("--size", type=int, default=64, help="--preview phantom matrix")
    parser.add_argument(
        "--background",
        action="store_true",
        help="run the chain as a background job: the answer is its id",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="with --retrieve: seconds to wait for an unfinished job",
    )
    how = parser.add_mutually_exclusive_group()
    how.add_argument("-c", "--config", default="default", help="chain name on the server")
    how.add_argument("-C", "--config-local", type=Path, help="chain XML sent as config text")
    parser.add_argument(
        "--params", help='JSON object of chain properties, e.g. \'{"combine": "rss"}\''
    )
    parser.add_argument("-a", "--address", default="127.0.0.1", help="server host")
    parser.add_argument("-p", "--port", type=int, default=9002)
    parser.add_argument("-o", "--out", type=Path, help="output MRD HDF5 file (required)")
    parser.add_argument("-g", "--group", default="dataset", help="output group")
    parser.add_argument("--in-group", default="dataset", help="input group")
    parser.add_argument(
        "--nul", action="store_true", help="NUL-terminate strings (python-ismrmrd-server style)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pacs_opts = parser.add_argument_group("--send-dicom")
    pacs_opts.add_argument("--pacs", metavar="HOST:PORT:AET", help="the PACS ([IPv6]:PORT:AET)")
    pacs_opts.add_argument("--calling-aet", default="MR0", help="our AE title (default MR0)")
    pacs_opts.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of an unreachable PACS, after 1, 2, 4 ... s (default 3)",
    )
    pacs_opts.add_argument("--timeout", type=float, default=30.0, help="network timeout in s (30)")
    defaults = vars(parser.parse_args([]))
    opts = parser.parse_args(argv)
    given = {k for k, v in vars(opts).items() if v != defaults[k]}
    if opts.send_dicom is not None:
        extra = sorted(given - _SEND_DICOM_OPTIONS)
        if extra:
            parser.error(f"--send-dicom does not take {', '.join(_option(k) for k in extra)}")
        return _send_dicom(parser, opts)
    extra = sorted(given & (_SEND_DICOM_OPTIONS - {"send_dicom"}))
    if extra:
        parser.error(f"{', '.join(_option(k) for k in extra)} belong(s) to --send-dicom")
    if opts.out is None:
        parser.error("the following arguments are required: -o/--out")
    params = None
    if opts.params:
        try:
            params = json.loads(opts.params)
        except json.JSONDecodeError as exc:
            parser.error(f"--params is not valid JSON: {exc}")
        if not isinstance(params, dict):
            parser.error("--params must be a JSON object")
    params = dict(params or {})
    if opts.background:
        params["background"] = True
    job_mode = opts.preview or opts.retrieve or opts.patient or (opts.protocol and not opts.input)
    if job_mode:
        return _run_job(parser, opts, params)
    source = opts.retro or opts.input
    if source is None:
        parser.error("give an input file (or --retro FILE.h5, --preview SEQ, --retrieve JOB)")
    if opts.retro is not None and opts.input is not None:
        parser.error("give the input either as INPUT or as --retro, not both")
    config_xml = None
    if opts.config_local is not None:
        if not opts.config_local.is_file():
            parser.error(f"--config-local file not found: {opts.config_local}")
        config_xml = opts.config_local.read_text()
    try:
        result = send_file(
            source, opts.out, config=opts.config, config_xml=config_xml, params=params,
            host=opts.address, port=opts.port, in_group=opts.in_group, out_group=opts.group,
            progress=not opts.quiet, nul_terminate=opts.nul,
        )  # fmt: skip
    except (FileNotFoundError, ValueError) as exc:
        print(f"mr0-client: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mr0-client: cannot reach {opts.address}:{opts.port}: {exc}", file=sys.stderr)
        return 1
    for text in result.texts:
        print(text)
    return _report(result, opts.out)


_SEND_DICOM_OPTIONS = {"send_dicom", "pacs", "calling_aet", "retries", "timeout"}
"""The options of ``--send-dicom`` (argparse destinations); the others are refused with it."""


def _option(dest: str) -> str:
    """Return the command-line spelling of an argparse destination."""
    return "INPUT" if dest == "input" else "--" + dest.replace("_", "-")


def _send_dicom(parser: argparse.ArgumentParser, opts: argparse.Namespace) -> int:
    """--send-dicom DIR --pacs HOST:PORT:AET: C-STORE the folder's DICOM files, with retries.

    An unreachable PACS (or a rejected association) is retried ``--retries`` times after 1, 2,
    4 ... s. Files that are not DICOM are skipped with a warning naming each.
    """
    from gadgets.wire import pacs  # pydicom and pynetdicom: only for --send-dicom

    if opts.pacs is None:
        parser.error("--send-dicom needs --pacs HOST:PORT:AET")
    if opts.retries < 0 or not opts.timeout > 0:
        parser.error("--retries must be >= 0 and --timeout > 0")
    try:
        target = pacs.PacsTarget.parse(opts.pacs, opts.calling_aet)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        files, skipped = pacs.find_dicom_files(opts.send_dicom)
    except (OSError, ValueError) as exc:
        print(f"mr0-client: {exc}", file=sys.stderr)
        return 2
    for line in skipped:
        print(f"warning: skipped {line}", file=sys.stderr)
    if not files:
        print(f"mr0-client: no DICOM files under {opts.send_dicom}", file=sys.stderr)
        return 2
    delay = 1.0
    for attempt in range(opts.retries + 1):
        try:
            report = pacs.send_files(files, target, timeout_s=opts.timeout)
            break
        except pacs.PacsError as exc:
            if attempt == opts.retries:
                print(f"mr0-client: {exc}", file=sys.stderr)
                return 1
            print(f"warning: {exc}; retry in {delay:g} s", file=sys.stderr)
            time.sleep(delay)
            delay *= 2
    for path, why in report.failed.items():
        print(f"error: {path}: {why}", file=sys.stderr)
    print(f"sent {len(report.sent)} of {len(files)} files to {target}")
    return 0 if report.ok else 1


def _run_job(parser: argparse.ArgumentParser, opts: argparse.Namespace, params: dict) -> int:
    """--preview / --retrieve / --patient / --protocol: a header-less job session."""
    if opts.input is not None:
        parser.error("--preview and --retrieve take no input file")
    if opts.preview is not None:
        if not opts.preview.is_file():
            print(f"mr0-client: .seq file not found: {opts.preview}", file=sys.stderr)
            return 2
        try:
            seq_text = opts.preview.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"mr0-client: cannot read {opts.preview}: {exc}", file=sys.stderr)
            return 2
        config = "mr0_preview"
        params = {"seq": seq_text, "phantom": opts.phantom, "size": opts.size, **params}
    else:
        config = "mr0_retrieve"
        keys = {"job": opts.retrieve, "patient": opts.patient, "protocol": opts.protocol}
        params = {**{k: v for k, v in keys.items() if v}, "wait_s": opts.wait, **params}
    try:
        result = send_job(params, opts.out, config=config, host=opts.address, port=opts.port,
                          out_group=opts.group, on_text=print)  # fmt: skip
    except OSError as exc:
        print(f"mr0-client: cannot reach {opts.address}:{opts.port}: {exc}", file=sys.stderr)
        return 1
    return _report(result, opts.out)


def _report(result: ClientResult, out: Path) -> int:
    """Print the summary line; return the exit status."""
    print(
        f"{result.images} images, {result.acquisitions} acquisitions back"
        + (f" -> {out}" if result.images or result.acquisitions else ""),
        file=sys.stderr,
    )
    if not result.ok:
        if not result.closed and not result.errors:
            print("mr0-client: the server closed the connection without a close message",
                  file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Our gadget chains as external Python gadgets of a real Gadgetron (Gadgetron 4).

Gadgetron runs a Python step of a stream through the ``gadgetron`` package's external-language
protocol. Each target here runs one of our chains (:data:`TARGETS`) on the connection's items:

========================  ==================  ================================================
target                    chain               what it does
========================  ==================  ================================================
``recon``                 ``default``         Cartesian FFT, RSS combination, magnitude images
``sense``                 ``sense``           CG-SENSE from the calibration lines
``nufft``                 ``nufft``           non-Cartesian NUFFT (trajectories in the data)
``passthrough``           ``passthrough``     every item back unchanged
``twin_preview``          ``mr0_preview``     simulate the ``.seq`` on a digital twin, recon
``retrosim``              ``mr0_retrosim``    measured and simulated data side by side
========================  ==================  ================================================

ACTIVE mode (Gadgetron starts ``python -m gadgetron <port> gadgets.serve.gadgetron_external
<target>``, which connects back to Gadgetron; ``gadgets`` must be importable by that Python, e.g.
``pip install -e '.[gadgetron]'``; Gadgetron adds only its own ``share/gadgetron/python`` to
``PYTHONPATH``)::

    <external>
      <execute name="gadgets.serve.gadgetron_external" target="twin_preview" type="python"/>
      <configuration>
        <property name="phantom" value="brain"/>
        <property name="size" value="64"/>
      </configuration>
    </external>

PASSIVE mode (start the gadget first; Gadgetron connects to it, once per stream)::

    python -m gadgets.serve.gadgetron_external --listen 18000 --target recon

    <external>
      <connect port="18000"/>
      <configuration/>
    </external>

Complete stream configurations are package data, in :data:`GADGETRON_CONFIGS_DIR`
(``gadgets/config/gadgetron/``); ``python -m gadgets.serve.gadgetron_external --configs-dir`` prints
that folder, to copy them into Gadgetron's ``share/gadgetron/config/``.

Parameters. Gadgetron sends the external element's ``<configuration>`` child as the config text.
Its ``<property name="P" value="V"/>`` elements (or Gadgetron-v1 ``<property><name/><value/>``)
become chain overrides with the server's rules (:mod:`gadgets.framework.chain`): ``P`` sets that
property
of every gadget of the chain that has it, ``Gadget.P`` of one gadget; a key that matches nothing,
or a value that does not parse, fails the stream. For the preview, the ``.seq`` comes from the
``seq``/``seq_b64`` properties or, when they give none, from the ISMRMRD header's
``userParameters/userParameterBase64`` named ``pulseq_seq`` (the ``.seq`` file, base64).

The chain is opened as the server opens a session's
(:func:`gadgets.framework.chain.open_chain`): the header parsed once, the chain folder
:data:`DEFAULT_CHAINS_DIR` or ``$MR0_CHAINS``, phantoms from ``$MR0_PHANTOMS`` if set. Images,
acquisitions and waveforms the
chain yields go back with ``connection.send``; its text items (progress, reports) cannot travel
over the external protocol and are logged (logger ``mr0.gadgetron``). An error is logged, sent
to Gadgetron as the protocol's ERROR message (Gadgetron then fails the stream with that text),
and re-raised, so the process exits non-zero. Nothing named by the configuration is imported or
opened: the chain is the target's (resolved by :func:`gadgets.framework.chain.chain_path`), and a
phantom name is a built-in or a plain name inside ``$MR0_PHANTOMS``.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import re
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ismrmrd

import gadgets.library  # noqa: F401  (registers the gadgets the chains name)
from gadgets.framework.chain import (
    DEFAULT_CHAINS_DIR,
    Chain,
    ChainError,
    ChainSpec,
    Services,
    chain_text,
    open_chain,
    parse_chain,
    parse_session_header,
)
from gadgets.framework.core import REGISTRY, GadgetError, Item, Text

if TYPE_CHECKING:
    from gadgetron.external import Connection

__all__ = [
    "CHAINS_ENV",
    "GADGETRON_CONFIGS_DIR",
    "HEADER_SEQ_PARAMETER",
    "MAX_CONFIG_BYTES",
    "PHANTOMS_ENV",
    "TARGETS",
    "TARGET_FUNCTIONS",
    "chains_dir_from_env",
    "config_properties",
    "header_seq_b64",
    "main",
    "nufft",
    "open_external_chain",
    "passthrough",
    "phantoms_dir_from_env",
    "recon",
    "retrosim",
    "run_chain",
    "sense",
    "twin_preview",
]

log = logging.getLogger("mr0.gadgetron")

TARGETS: dict[str, str] = {
    "recon": "default",
    "sense": "sense",
    "nufft": "nufft",
    "passthrough": "passthrough",
    "twin_preview": "mr0_preview",
    "retrosim": "mr0_retrosim",
}
"""Chain name (in the chain folder) of each target."""

GADGETRON_CONFIGS_DIR: Path = DEFAULT_CHAINS_DIR.parent / "gadgetron"
"""Our stream configurations for a real Gadgetron (package data ``gadgets/config/gadgetron``)."""

CHAINS_ENV = "MR0_CHAINS"
"""Environment variable naming the chain folder (default :data:`DEFAULT_CHAINS_DIR`)."""

PHANTOMS_ENV = "MR0_PHANTOMS"
"""Environment variable naming the folder of NIfTI phantoms a preview may name."""

HEADER_SEQ_PARAMETER = "pulseq_seq"
"""Name of the header's ``userParameterBase64`` that may carry the ``.seq`` file."""

MAX_CONFIG_BYTES = 32 * 2**20
"""Largest configuration text accepted (bytes): room for a base64 ``.seq`` of 16 MiB."""

_FORBIDDEN = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_PROLOG = re.compile(r"<\?.*?\?>|<!--.*?-->", re.DOTALL)
_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}(\.[A-Za-z0-9_][A-Za-z0-9_-]{0,127})?")
_SEQ_KEYS = ("seq", "seq_b64")
_SENDABLE = (ismrmrd.Acquisition, ismrmrd.Image, ismrmrd.Waveform)
_MAX_ERROR_CHARS = 16384
_DRAIN_TIMEOUT_S = 10.0  # longest wait for Gadgetron's close after our error


# -- configuration and header -------------------------------------------------------------------


def _local(tag: Any) -> str:
    """Tag name without an XML namespace ('' for comments and processing instructions)."""
    return str(tag).rpartition("}")[2] if isinstance(tag, str) else ""


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def config_properties(config: bytes | str | None) -> dict[str, str]:
    """Return the properties of the ``<configuration>`` text Gadgetron sends an external gadget.

    Parameters
    ----------
    config
        The config message's text: ``<configuration>`` with ``<property name="P" value="V"/>``
        (or Gadgetron-v1 ``<property><name>P</name><value>V</value></property>``) children, as
        Gadgetron's pugixml writes it (with an XML declaration). Empty, or a declaration alone
        (an ``<external>`` without ``<configuration>``), means no properties.

    Returns
    -------
    dict[str, str]
        Property values by name (``P`` or ``Gadget.P``), as written.

    Raises
    ------
    ChainError
        If the text is longer than :data:`MAX_CONFIG_BYTES`, not UTF-8, declares a DOCTYPE or
        ENTITY, is not well-formed, has another root or another element than ``<property>``, or
        a property has no valid name or is set twice.
    """
    if config is None:
        return {}
    raw = config.encode("utf-8") if isinstance(config, str) else bytes(config)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ChainError(
            f"the external configuration has {len(raw)} bytes, more than {MAX_CONFIG_BYTES}"
        )
    if _FORBIDDEN.search(raw):
        raise ChainError("the external configuration must not declare a DOCTYPE or ENTITY")
    try:
        text = raw.decode("utf-8").strip().rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise ChainError(f"the external configuration is not UTF-8: {exc}") from None
    if not _PROLOG.sub("", text).strip():
        return {}
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ChainError(f"the external configuration is not well-formed XML: {exc}") from None
    if _local(root.tag) != "configuration":
        raise ChainError(
            f"the external configuration must be a <configuration> element, got <{root.tag}>"
        )
    properties: dict[str, str] = {}
    for child in root:
        tag = _local(child.tag)
        if tag == "":
            continue  # a comment or processing instruction
        if tag != "property":
            raise ChainError(
                f"unexpected <{tag}> in the external configuration (only <property> elements)"
            )
        key = child.get("name")
        value = child.get("value")
        if key is None:  # Gadgetron v1: <property><name/><value/></property>
            key = _child_text(child, "name")
            value = _child_text(child, "value")
        key = (key or "").strip()
        if not _KEY.fullmatch(key):
            raise ChainError(
                f"property name {key!r} of the external configuration is not 'Prop' or "
                "'GadgetName.Prop' (letters, digits, _ and -)"
            )
        if key in properties:
            raise ChainError(f"property {key!r} is set twice in the external configuration")
        properties[key] = value if value is not None else ""
    return properties


def header_seq_b64(header: Any) -> str | None:
    """Return the header's ``pulseq_seq`` user parameter as base64 text, or None.

    Parameters
    ----------
    header
        A parsed ISMRMRD header (``ismrmrd.xsd.ismrmrdHeader``) or None.

    Returns
    -------
    str or None
        Base64 of the ``.seq`` file in ``userParameters/userParameterBase64`` named
        :data:`HEADER_SEQ_PARAMETER`; None when there is no such parameter.

    Raises
    ------
    GadgetError
        If the header has that parameter more than once.
    """
    params = getattr(header, "userParameters", None)
    entries = [
        entry
        for entry in (getattr(params, "userParameterBase64", None) or [])
        if getattr(entry, "name", None) == HEADER_SEQ_PARAMETER
    ]
    if not entries:
        return None
    if len(entries) > 1:
        raise GadgetError(
            f"the ISMRMRD header has {len(entries)} userParameterBase64 named "
            f"{HEADER_SEQ_PARAMETER!r}; expected one"
        )
    value = entries[0].value
    if isinstance(value, str):  # a binding that leaves base64 undecoded
        return value.strip()
    return base64.b64encode(bytes(value or b"")).decode("ascii")


def _text(data: bytes | str | None, what: str) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data.rstrip("\x00")
    try:
        return bytes(data).decode("utf-8").rstrip("\x00")
    except UnicodeDecodeError as exc:
        raise GadgetError(f"the {what} is not UTF-8: {exc}") from None


def _has_property(spec: ChainSpec, name: str) -> bool:
    """Whether a gadget of the chain has property ``name`` (unknown classes: no)."""
    for g in spec.gadgets:
        cls = REGISTRY.get(g.classname)
        if cls is not None and name in cls.properties:
            return True
    return False


def chains_dir_from_env() -> Path:
    """Return ``$MR0_CHAINS`` if set, else :data:`DEFAULT_CHAINS_DIR`.

    A site folder is searched before the built-in chains
    (:func:`gadgets.framework.chain.chain_path`).
    """
    value = os.environ.get(CHAINS_ENV, "").strip()
    return Path(value) if value else DEFAULT_CHAINS_DIR


def phantoms_dir_from_env() -> Path | None:
    """Return ``$MR0_PHANTOMS`` if set, else None (built-in phantoms only)."""
    value = os.environ.get(PHANTOMS_ENV, "").strip()
    return Path(value) if value else None


def open_external_chain(
    chain_name: str,
    config: bytes | str | None,
    header_xml: bytes | str | None,
    *,
    chains_dir: Path | None = None,
    phantoms_dir: Path | None = None,
) -> Chain:
    """Open the chain of one external-gadget session (:func:`gadgets.framework.chain.open_chain`).

    Parameters
    ----------
    chain_name
        A chain of the chain folder (one of :data:`TARGETS`' values).
    config
        The config text Gadgetron sent (see :func:`config_properties`).
    header_xml
        The ISMRMRD header Gadgetron sent (XML).
    chains_dir
        The chain folder; default ``$MR0_CHAINS`` or :data:`DEFAULT_CHAINS_DIR`.
    phantoms_dir
        The folder of NIfTI phantoms a preview may name; default ``$MR0_PHANTOMS`` or none.

    Returns
    -------
    Chain
        The chain with the configuration's properties (and the header's ``pulseq_seq``, for a
        chain that takes ``seq_b64`` and got no ``seq``/``seq_b64``) as overrides.

    Raises
    ------
    ChainError
        For a bad configuration, an unknown chain, or an override that does not apply.
    GadgetError
        For a header that is not UTF-8 or does not parse.
    """
    properties = config_properties(config)
    header_text = _text(header_xml, "ISMRMRD header")
    header = parse_session_header(header_text)
    folder = chains_dir if chains_dir is not None else chains_dir_from_env()
    spec = parse_chain(chain_text(chain_name, folder))
    overrides: dict[str, Any] = dict(properties)
    given_seq = any(key.rpartition(".")[2] in _SEQ_KEYS for key in overrides)
    if not given_seq and _has_property(spec, "seq_b64"):
        seq_b64 = header_seq_b64(header)
        if seq_b64 is not None:
            overrides["seq_b64"] = seq_b64
            log.info("chain %r: the .seq comes from the header's %r", chain_name,
                     HEADER_SEQ_PARAMETER)  # fmt: skip
    services = Services(
        phantoms_dir=phantoms_dir if phantoms_dir is not None else phantoms_dir_from_env(),
        chains_dir=folder,
    )
    chain = open_chain(spec, header_text, overrides, services, session_id=uuid.uuid4().hex[:12],
                       header=header, logger=log)  # fmt: skip
    log.info("chain %r ready (%s), properties: %s", chain_name,
             " -> ".join(g.name for g in chain.gadgets), sorted(overrides) or "none")  # fmt: skip
    return chain


# -- the session --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ErrorReport:
    """An error for Gadgetron: sent as the external protocol's ERROR message."""

    text: str


def _write_error(destination: Any, report: _ErrorReport) -> None:
    """Write ``report`` as an ERROR message (id 8, uint64 length, UTF-8), as Gadgetron reads it."""
    from gadgetron.external import constants
    from gadgetron.external.writers import write_byte_string

    destination.write(constants.GadgetMessageIdentifier.pack(constants.GADGET_MESSAGE_ERROR))
    write_byte_string(destination, report.text.encode("utf-8", "replace"), constants.uint64)


def _report(connection: Connection, text: str) -> None:
    """Send an error to Gadgetron; a connection that is already gone is left alone."""
    if len(text) > _MAX_ERROR_CHARS:
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    try:
        connection.send(_ErrorReport(text))
    except OSError as exc:
        log.warning("could not send the error to Gadgetron: %s", exc)


def _drain(connection: Connection) -> None:
    """Read and drop what Gadgetron still sends after our error, until its close.

    Gadgetron answers an ERROR message with its close. Reading up to it lets the connection end
    with an orderly shutdown: a socket closed with unread data is reset, and a reset can destroy
    the error message before Gadgetron reads it. Waits at most ``_DRAIN_TIMEOUT_S`` (a thread,
    because the package's reads block without a time limit).
    """
    done = threading.Event()

    def work() -> None:
        try:
            for _ in connection:
                pass
        except Exception as exc:  # a broken stream: there is no close left to wait for
            log.debug("stopped reading after the error: %s: %s", type(exc).__name__, exc)
        finally:
            done.set()

    threading.Thread(target=work, name="mr0-gadgetron-drain", daemon=True).start()
    if not done.wait(_DRAIN_TIMEOUT_S):
        log.warning("Gadgetron did not close the stream within %g s of the error", _DRAIN_TIMEOUT_S)


class _Inputs:
    """The connection's items until Gadgetron's close; refuses what our chains do not take.

    ``closed`` tells whether Gadgetron's close has been read (nothing is left to drain);
    ``received`` counts the items read.
    """

    def __init__(self, connection: Connection, chain_name: str) -> None:
        self.connection = connection
        self.chain_name = chain_name
        self.closed = False
        self.received = 0

    def __iter__(self) -> Iterator[Item]:
        for item in self.connection:
            self.received += 1
            if not isinstance(item, _SENDABLE):
                raise GadgetError(
                    f"chain {self.chain_name!r} takes acquisitions, waveforms and images; got "
                    f"{type(item).__name__} (place the external gadget before bucket and buffer "
                    "gadgets)"
                )
            yield item
        self.closed = True


def run_chain(
    connection: Connection,
    chain_name: str,
    *,
    chains_dir: Path | None = None,
    phantoms_dir: Path | None = None,
) -> None:
    """Run a chain on an external-gadget connection and send its output back.

    Parameters
    ----------
    connection
        The ``gadgetron.external.Connection`` (config and header already read).
    chain_name
        The chain to run, by name in the chain folder.
    chains_dir, phantoms_dir
        As in :func:`open_external_chain` (default: from the environment).

    Raises
    ------
    ChainError
        For a bad configuration or chain.
    GadgetError
        When a gadget fails, or the stream brings an item our chains do not take.

    Notes
    -----
    Images, acquisitions and waveforms the chain yields are sent as they come; text items are
    logged (logger ``mr0.gadgetron``). On an error the message is logged and sent to Gadgetron
    as an ERROR message, and for a :class:`ChainError` or :class:`GadgetError` the rest of the
    stream is read up to Gadgetron's close (if not read yet) before the error is raised again;
    the package then sends our close.
    """
    # Connection.add_writer (gadgetron 1.4.1) wraps the writer into a one-argument lambda while
    # send() calls it with two (socket, item), so the (predicate, writer) pair goes into the
    # connection's writer list directly, first, as add_writer means to put it
    connection.writers.insert(0, (lambda item: isinstance(item, _ErrorReport), _write_error))
    started = time.monotonic()
    sent = 0
    inputs = _Inputs(connection, chain_name)
    try:
        raw = connection.raw_bytes
        chain = open_external_chain(chain_name, raw.config, raw.header, chains_dir=chains_dir,
                           phantoms_dir=phantoms_dir)  # fmt: skip
        for out in chain.run(inputs):
            if isinstance(out, Text):
                log.info("%s: %s", chain_name, out.text)
            elif isinstance(out, _SENDABLE):
                connection.send(out)
                sent += 1
            else:
                raise GadgetError(
                    f"chain {chain_name!r} yielded a {type(out).__name__}, which cannot be sent "
                    "to Gadgetron (only images, acquisitions and waveforms)"
                )
    except (GadgetError, ChainError) as exc:
        log.error("chain %r failed: %s", chain_name, exc)
        _report(connection, f"{chain_name}: {exc}")
        if not inputs.closed:  # the stream itself is intact: read up to Gadgetron's close
            _drain(connection)
        raise
    except Exception as exc:
        log.exception("chain %r crashed", chain_name)
        _report(connection, f"{chain_name}: {type(exc).__name__}: {exc}")
        raise
    log.info("chain %r done: %d items received, %d sent in %.2f s", chain_name,
             inputs.received, sent, time.monotonic() - started)  # fmt: skip


# -- targets ------------------------------------------------------------------------------------


def recon(connection: Connection) -> None:
    """Cartesian FFT reconstruction (chain ``default``)."""
    run_chain(connection, TARGETS["recon"])


def sense(connection: Connection) -> None:
    """CG-SENSE reconstruction from the calibration lines (chain ``sense``)."""
    run_chain(connection, TARGETS["sense"])


def nufft(connection: Connection) -> None:
    """Non-Cartesian NUFFT reconstruction of acquisitions with trajectories (chain ``nufft``)."""
    run_chain(connection, TARGETS["nufft"])


def passthrough(connection: Connection) -> None:
    """Every item back unchanged (chain ``passthrough``)."""
    run_chain(connection, TARGETS["passthrough"])


def twin_preview(connection: Connection) -> None:
    """Digital-twin preview of the session's ``.seq`` (chain ``mr0_preview``)."""
    run_chain(connection, TARGETS["twin_preview"])


def retrosim(connection: Connection) -> None:
    """Measured and simulated data reconstructed side by side (chain ``mr0_retrosim``)."""
    run_chain(connection, TARGETS["retrosim"])


TARGET_FUNCTIONS: Mapping[str, Callable[[Connection], None]] = {
    "recon": recon,
    "sense": sense,
    "nufft": nufft,
    "passthrough": passthrough,
    "twin_preview": twin_preview,
    "retrosim": retrosim,
}
"""The target function of each name of :data:`TARGETS`."""


# -- PASSIVE mode -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run one target in PASSIVE mode: listen, serve one Gadgetron connection, exit.

    Returns
    -------
    int
        0 when the session succeeded, 1 when it failed (logged), 2 for bad arguments or a
        missing ``gadgetron`` package.
    """
    parser = argparse.ArgumentParser(
        prog="python -m gadgets.serve.gadgetron_external",
        description="Serve one of our chains as a PASSIVE external gadget of Gadgetron: listen "
        'on PORT for one connection (<external><connect port="PORT"/>…</external>). Chains '
        f"come from ${CHAINS_ENV} (default {DEFAULT_CHAINS_DIR}), phantoms from ${PHANTOMS_ENV}.",
    )
    parser.add_argument("--listen", type=int, metavar="PORT",
                        help="TCP port Gadgetron connects to (1-65535)")  # fmt: skip
    parser.add_argument("--configs-dir", action="store_true",
                        help="print the folder of our Gadgetron stream configurations")  # fmt: skip
    parser.add_argument("--target", default="recon", choices=sorted(TARGETS),
                        help="which chain to run (default recon)")  # fmt: skip
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error"))  # fmt: skip
    opts = parser.parse_args(argv)
    if opts.configs_dir:
        print(GADGETRON_CONFIGS_DIR)
        return 0
    if opts.listen is None:
        parser.error("--listen PORT is required")
    if not 1 <= opts.listen <= 65535:
        parser.error(f"--listen must be a port 1..65535, got {opts.listen}")
    logging.basicConfig(
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s", level=opts.log_level.upper()
    )
    try:
        from gadgetron.external import listen
    except ImportError as exc:
        print(f"gadgets.serve.gadgetron_external: needs the gadgetron package "
              f"(pip install 'mr0-inline[gadgetron]'): {exc}", file=sys.stderr)  # fmt: skip
        return 2
    target = TARGET_FUNCTIONS[opts.target]
    log.info("target %s (chain %r): waiting for Gadgetron on port %d", opts.target,
             TARGETS[opts.target], opts.listen)  # fmt: skip
    try:
        listen(opts.listen, target)
    except (GadgetError, ChainError):
        return 1  # logged, and sent to Gadgetron, by run_chain
    except Exception:  # a refused port, a broken connection, a header the package rejects
        log.exception("target %s failed", opts.target)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

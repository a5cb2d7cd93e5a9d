"""Gadget chains: Gadgetron-v2-like XML into a pipeline of generators.

A chain file looks like Gadgetron's stream configuration (version 2)::

    <configuration>
      <version>2</version>
      <stream>
        <gadget>
          <name>Combine</name>
          <classname>CombineGadget</classname>
          <property name="method" value="rss"/>
        </gadget>
        ...
      </stream>
    </configuration>

Gadgetron's v1 form (``<gadgetronStreamConfiguration>`` with ``<gadget>`` children and
``<property><name/><value/></property>``) is read too; ``<reader>``/``<writer>``/``<dll>``
elements are ignored (the server does the framing). ``<external>``, ``<parallel>`` and
``<distributed>`` stream elements are refused.

Class names resolve only through :data:`gadgets.framework.core.REGISTRY`: nothing is imported by
name. Chain files are chosen by name (:func:`chain_path`), only inside a site's chain folder or the
built-in one.

Overrides (the session's JSON parameters) set properties over the XML: ``{"Prop": v}`` sets
``Prop`` of every gadget that has it, ``{"GadgetName.Prop": v}`` of one gadget (this wins over
the plain key). A key that matches nothing is an error, except where a caller first keeps only
the keys the chain has (:func:`applicable_overrides`: a scanner UI sends every parameter,
whichever chain it chose).

Sessions: :func:`open_chain` is the one place a session's chain is opened, from its config,
its ISMRMRD header, its JSON parameters and the :class:`Services` its host lends it. The MRD
server (:mod:`gadgets.serve.server`), the Gadgetron external gadgets
(:mod:`gadgets.serve.gadgetron_external`), background sessions in a scheduler worker
(:mod:`gadgets.library.background_jobs`) and retro-simulation's reconstruction chain
(:mod:`gadgets.library.retro`) all call it.

This module imports no gadget: the chain resolves class names in :data:`REGISTRY`, which the
gadgets fill when :mod:`gadgets.library` is imported (the hosts import it).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import ismrmrd.xsd

from gadgets.framework.core import (
    REGISTRY,
    ChainError,
    Context,
    Gadget,
    GadgetError,
    Item,
    check_plain_name,
    named_file,
)
from mr0core.io.mrd import parse_header

__all__ = [
    "DEFAULT_CHAINS_DIR",
    "MAX_CHAIN_BYTES",
    "Chain",
    "ChainError",
    "ChainSpec",
    "GadgetSpec",
    "Services",
    "applicable_overrides",
    "available_chains",
    "chain_path",
    "chain_takes_images",
    "chain_text",
    "load_chain",
    "open_chain",
    "parse_chain",
    "parse_session_header",
]

# Package data (gadgets/config/chains/*.xml), so an installed wheel has its chains. setuptools
# installs packages unzipped, so the resource is a real folder that can be globbed and resolved.
DEFAULT_CHAINS_DIR: Path = Path(str(resources.files("gadgets") / "config" / "chains"))
"""The built-in chains (package data ``gadgets/config/chains``); always searched last."""

MAX_CHAIN_BYTES = 1 << 20
"""Largest chain XML accepted (bytes of UTF-8)."""

_GADGET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,127}")
_FORBIDDEN = re.compile(r"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_REFUSED = ("external", "parallel", "distributed", "parallelprocess", "puredistributed")
_IGNORED = ("reader", "writer", "readers", "writers", "version")


@dataclass(frozen=True)
class GadgetSpec:
    """One gadget of a chain file.

    Attributes
    ----------
    name
        Its name in the chain (unique; default the class name).
    classname
        The registered class name.
    properties
        Property values as written in the XML (strings).
    """

    name: str
    classname: str
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChainSpec:
    """A parsed chain: its gadgets in stream order."""

    gadgets: tuple[GadgetSpec, ...]


def _local(tag: Any) -> str:
    """Tag name without an XML namespace."""
    return str(tag).rpartition("}")[2] if isinstance(tag, str) else ""


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return None


def _gadget_spec(element: ET.Element, position: int) -> GadgetSpec:
    classname = _child_text(element, "classname")
    if not classname:
        raise ChainError(f"gadget {position + 1} of the chain has no <classname>")
    name = _child_text(element, "name") or classname
    if not _GADGET_NAME.fullmatch(name):
        raise ChainError(f"gadget name {name!r} is not a plain name (letters, digits, _ and -)")
    props: dict[str, str] = {}
    for child in element:
        if _local(child.tag) != "property":
            continue
        key = child.get("name")
        value = child.get("value")
        if key is None:  # Gadgetron v1: <property><name/><value/></property>
            key = _child_text(child, "name")
            value = _child_text(child, "value")
        if not key:
            raise ChainError(f"gadget {name!r}: a <property> without a name")
        if key in props:
            raise ChainError(f"gadget {name!r}: property {key!r} is set twice")
        props[key] = value if value is not None else ""
    return GadgetSpec(name=name, classname=classname, properties=props)


def parse_chain(xml: str) -> ChainSpec:
    """Parse chain XML (a chain file, or config text sent by a client).

    Parameters
    ----------
    xml
        Gadgetron-v2-like (or v1) stream configuration, at most :data:`MAX_CHAIN_BYTES`.

    Returns
    -------
    ChainSpec
        The gadgets in stream order. Class names are not resolved here (see :class:`Chain`).

    Raises
    ------
    ChainError
        If the text is too long, declares a DOCTYPE or ENTITY, is not well-formed, has another
        root, version or element, or a gadget lacks a class name or repeats a name.
    """
    if not isinstance(xml, str):
        raise ChainError(f"chain XML must be text, got {type(xml).__name__}")
    size = len(xml.encode("utf-8", errors="replace"))
    if size > MAX_CHAIN_BYTES:
        raise ChainError(f"chain XML has {size} bytes, more than the limit {MAX_CHAIN_BYTES}")
    if _FORBIDDEN.search(xml):
        raise ChainError("chain XML must not declare a DOCTYPE or ENTITY")
    try:
        root = ET.fromstring(xml.strip().rstrip("\x00"))
    except ET.ParseError as exc:
        raise ChainError(f"chain XML is not well-formed: {exc}") from None
    root_tag = _local(root.tag)
    if root_tag == "configuration":
        version = _child_text(root, "version")
        if version not in (None, "2"):
            raise ChainError(f"chain XML version must be 2, got {version!r}")
        streams = [c for c in root if _local(c.tag) == "stream"]
        if len(streams) != 1:
            raise ChainError(f"chain XML needs exactly one <stream>, found {len(streams)}")
        container = streams[0]
    elif root_tag == "gadgetronStreamConfiguration":
        container = root
    else:
        raise ChainError(
            f"chain XML root must be <configuration> (or <gadgetronStreamConfiguration>), "
            f"got <{root_tag}>"
        )
    specs: list[GadgetSpec] = []
    for element in container:
        tag = _local(element.tag)
        if tag == "gadget":
            specs.append(_gadget_spec(element, len(specs)))
        elif tag in _REFUSED:
            raise ChainError(f"<{tag}> stream elements are not supported")
        elif tag in _IGNORED or tag == "":  # comments and processing instructions
            continue
        elif container is root:
            continue  # v1 root: other top-level elements (readers, writers) are not ours
        else:
            raise ChainError(f"unknown stream element <{tag}>")
    if not specs:
        raise ChainError("the chain has no gadgets")
    names = [s.name for s in specs]
    for name in names:
        if names.count(name) > 1:
            raise ChainError(f"gadget name {name!r} is used more than once in the chain")
    return ChainSpec(gadgets=tuple(specs))


def _override_value(key: str, value: Any) -> Any:
    # objects are for ``json`` properties (the gadget's property checks the type)
    if isinstance(value, str | bool | int | float | dict):
        return value
    raise ChainError(
        f"override {key!r}: expected a string, number, boolean or object, got {value!r}"
    )


def _resolve(
    spec: ChainSpec, overrides: Mapping[str, Any] | None
) -> list[tuple[GadgetSpec, type[Gadget], dict[str, Any]]]:
    resolved = []
    for g in spec.gadgets:
        cls = REGISTRY.get(g.classname)
        if cls is None:
            raise ChainError(
                f"gadget {g.name!r}: unknown class {g.classname!r} "
                f"(known: {', '.join(sorted(REGISTRY))})"
            )
        resolved.append((g, cls, dict(g.properties)))
    if not overrides:
        return resolved
    if not isinstance(overrides, Mapping):
        raise ChainError(f"overrides must be a JSON object, got {type(overrides).__name__}")
    by_name = {g.name: (cls, props) for g, cls, props in resolved}
    plain = {k: v for k, v in overrides.items() if "." not in str(k)}
    dotted = {k: v for k, v in overrides.items() if "." in str(k)}
    for key, value in plain.items():
        if not isinstance(key, str):
            raise ChainError(f"override keys must be strings, got {key!r}")
        hits = [props for cls, props in by_name.values() if key in cls.properties]
        if not hits:
            raise ChainError(f"override {key!r}: no gadget of the chain has that property")
        for props in hits:
            props[key] = _override_value(key, value)
    for key, value in dotted.items():
        gadget, _, prop = str(key).rpartition(".")
        if gadget not in by_name:
            raise ChainError(f"override {key!r}: the chain has no gadget {gadget!r}")
        cls, props = by_name[gadget]
        if prop not in cls.properties:
            raise ChainError(f"override {key!r}: gadget {gadget!r} has no property {prop!r}")
        props[prop] = _override_value(key, value)
    return resolved


def applicable_overrides(
    spec: ChainSpec, overrides: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Split overrides into those some gadget of the chain has and the rest.

    Returns
    -------
    kept, dropped
        The overrides the chain can take (still checked when the chain is built), and the keys
        it has no property for.
    """
    properties: dict[str, set[str]] = {}
    for g in spec.gadgets:
        cls = REGISTRY.get(g.classname)
        properties[g.name] = set(cls.properties) if cls is not None else set()
    every = set().union(*properties.values()) if properties else set()
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in overrides.items():
        gadget, dot, prop = str(key).rpartition(".")
        if (prop in properties.get(gadget, ())) if dot else (key in every):
            kept[key] = value
        else:
            dropped.append(str(key))
    return kept, dropped


def chain_takes_images(spec: ChainSpec) -> bool:
    """Whether a chain takes images sent by the client: every gadget's class says so.

    See :attr:`gadgets.framework.core.Gadget.takes_images`; an unknown class counts as no.
    """
    return all(
        (cls := REGISTRY.get(g.classname)) is not None and cls.takes_images for g in spec.gadgets
    )


def _guard(gadget: Gadget, upstream: Iterator[Item]) -> Iterator[Item]:
    """Run one gadget; an unexpected exception becomes a :class:`GadgetError` naming it."""
    stream = gadget.process(upstream)
    while True:
        try:
            item = next(stream)
        except StopIteration:
            return
        except (GadgetError, ChainError):
            raise
        except Exception as exc:
            raise GadgetError(f"{gadget.name}: {type(exc).__name__}: {exc}") from exc
        yield item


class Chain:
    """A pipeline of gadgets built from a :class:`ChainSpec`.

    Parameters
    ----------
    spec
        The parsed chain.
    context
        The session context every gadget receives.
    overrides
        Property overrides (the JSON parameters), see the module docstring.

    Raises
    ------
    ChainError
        For an unknown class, an unknown property or override key, or a bad value.
    """

    def __init__(
        self, spec: ChainSpec, context: Context, overrides: Mapping[str, Any] | None = None
    ) -> None:
        self.spec = spec
        self.context = context
        self.gadgets: list[Gadget] = [
            cls(context, g.name, **props) for g, cls, props in _resolve(spec, overrides)
        ]

    def run(self, items: Iterable[Item]) -> Iterator[Item]:
        """Feed ``items`` through the gadgets in order and yield what the last one yields.

        Raises
        ------
        GadgetError
            If a gadget fails; the message names it.
        """
        stream: Iterator[Item] = iter(items)
        for gadget in self.gadgets:
            stream = _guard(gadget, stream)
        yield from stream

    def __repr__(self) -> str:
        return f"Chain({' -> '.join(g.name for g in self.gadgets)})"


def _chain_folders(chains_dir: Path | None) -> list[Path]:
    """Return the folders searched for chains: a site's own (if any), then the built-in ones."""
    folders = [Path(chains_dir).resolve()] if chains_dir is not None else []
    if DEFAULT_CHAINS_DIR.resolve() not in folders:
        folders.append(DEFAULT_CHAINS_DIR.resolve())
    return folders


def available_chains(chains_dir: Path | None = None) -> list[str]:
    """Return the configuration names that :func:`chain_path` finds, sorted.

    Parameters
    ----------
    chains_dir
        A site's own chain folder (``mr0-server --chains``), searched before the built-in chains
        (:data:`DEFAULT_CHAINS_DIR`); ``None`` for the built-in chains only.
    """
    names = {p.stem for folder in _chain_folders(chains_dir) if folder.is_dir()
             for p in folder.glob("*.xml")}  # fmt: skip
    return sorted(names)


def chain_path(name: str, chains_dir: Path | None = None) -> Path:
    """Return the chain file for a configuration name (:func:`gadgets.framework.core.named_file`).

    ``chains_dir`` (a site's own chains) is searched first, then the built-in chains
    (:data:`DEFAULT_CHAINS_DIR`), so a site folder adds chains and may replace a built-in one of
    the same name.

    Raises
    ------
    ChainError
        For an empty or unsafe name (paths, ``..``), or when no folder has such a chain.
    """
    try:
        check_plain_name(name, "chain")
        stem = name[:-4] if name.lower().endswith(".xml") else name
        for folder in _chain_folders(chains_dir):
            if (folder / f"{stem}.xml").is_file():
                return named_file(name, folder, ".xml", "chain")
    except ValueError as exc:
        raise ChainError(str(exc)) from None
    available = ", ".join(available_chains(chains_dir)) or "none"
    raise ChainError(f"no chain {stem!r} (available: {available})")


def load_chain(
    name: str,
    chains_dir: Path | None,
    context: Context,
    overrides: Mapping[str, Any] | None = None,
) -> Chain:
    """Build the chain of a configuration name (:func:`chain_path`, :func:`parse_chain`).

    For a caller that has its :class:`Context` already (tests, tools); a session's chain is
    opened with :func:`open_chain`, which builds the context from the session.

    Raises
    ------
    ChainError
        For an unsafe or unknown name, or an invalid chain file.
    """
    return Chain(parse_chain(chain_text(name, chains_dir)), context, overrides)


def chain_text(name: str, chains_dir: Path | None = None) -> str:
    """Return the XML text of a configuration name's chain file (:func:`chain_path`).

    Raises
    ------
    ChainError
        For an unsafe or unknown name, a file over ``MAX_CHAIN_BYTES``, or one not UTF-8.
    """
    path = chain_path(name, chains_dir)
    size = path.stat().st_size
    if size > MAX_CHAIN_BYTES:
        raise ChainError(f"chain {name!r} has {size} bytes, more than the limit {MAX_CHAIN_BYTES}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ChainError(f"chain {name!r} is not UTF-8 text: {exc}") from None


@dataclass(frozen=True)
class Services:
    """What a host lends the gadgets of a session (each optional; see :class:`Context`).

    Attributes
    ----------
    save_dir
        Where ``SaveDataGadget`` writes (``--save-dir``); None: saving is refused.
    phantoms_dir
        The folder of NIfTI phantoms that jobs may name (``--phantoms``), if any.
    chains_dir
        A site's chain folder (``--chains``): configuration names are looked up there first,
        then among the built-in chains (:data:`DEFAULT_CHAINS_DIR`).
    store
        The server's store (:class:`gadgets.framework.session_store.Store`), if any.
    scheduler
        The server's :class:`scheduler.service.Scheduler`; None: heavy steps run in the
        session's own thread.
    """

    save_dir: Path | None = None
    phantoms_dir: Path | None = None
    chains_dir: Path | None = None
    store: Any = None
    scheduler: Any = None


def parse_session_header(header_xml: str) -> ismrmrd.xsd.ismrmrdHeader | None:
    """Parse a session's ISMRMRD header (:func:`mr0core.io.mrd.parse_header`).

    Returns
    -------
    ismrmrd.xsd.ismrmrdHeader or None
        None for an empty (or all-blank) header: a session that sent none.

    Raises
    ------
    GadgetError
        ``the ISMRMRD header does not parse: ...`` with the parser's message.
    """
    if not header_xml.strip():
        return None
    try:
        return parse_header(header_xml)
    except Exception as exc:  # the XML binding raises many unrelated types
        raise GadgetError(f"the ISMRMRD header does not parse: {exc}") from None


def open_chain(
    config: str | ChainSpec,
    header_xml: str,
    parameters: Mapping[str, Any] | None,
    services: Services,
    *,
    session_id: str,
    header: ismrmrd.xsd.ismrmrdHeader | None = None,
    logger: logging.Logger | None = None,
) -> Chain:
    """Open the chain of one session: parse its header, build its context, build the chain.

    Parameters
    ----------
    config
        A configuration name (a plain name, found by :func:`chain_path` in
        ``services.chains_dir`` or the built-in chains), chain XML text (any text with a ``<``,
        which no name has), or an already parsed chain.
    header_xml
        The session's ISMRMRD header as XML; '' for a session that sent none.
    parameters
        The session's JSON parameters: the chain's property overrides (see the module
        docstring); also the context's ``parameters``. None: none.
    services
        What the host lends the gadgets (folders, store, scheduler).
    session_id
        The session's identifier (file names of saved data, log names).
    header
        ``header_xml`` already parsed (a host that checked it on arrival); None: it is parsed
        here (:func:`parse_session_header`).
    logger
        The gadgets' logger; None: ``mr0.gadgets.<session_id>``.

    Returns
    -------
    Chain
        The chain, ready to :meth:`Chain.run` the session's items.

    Raises
    ------
    ChainError
        For an unknown or invalid chain, or an override that does not apply.
    GadgetError
        For a header that does not parse.
    """
    if header is None:
        header = parse_session_header(header_xml)
    overrides = dict(parameters or {})
    context = Context(
        header=header, header_xml=header_xml, session_id=session_id,
        save_dir=services.save_dir,
        logger=logger if logger is not None else logging.getLogger(f"mr0.gadgets.{session_id}"),
        parameters=dict(overrides), phantoms_dir=services.phantoms_dir,
        chains_dir=services.chains_dir, store=services.store, scheduler=services.scheduler,
    )  # fmt: skip
    if isinstance(config, ChainSpec):
        spec = config
    elif "<" in config:
        spec = parse_chain(config)
    else:
        spec = parse_chain(chain_text(config, services.chains_dir))
    return Chain(spec, context, overrides)

"""Gadget base: the items that flow through a chain, the session context, typed properties.

A gadget is a small object whose :meth:`Gadget.process` consumes an iterator of items and yields
items (a generator), the contract of python-ismrmrd-server's ``process(connection, config,
metadata)``. Items are ``ismrmrd.Acquisition``, ``ismrmrd.Waveform``, ``ismrmrd.Image``,
:class:`Text` and the gadgets' own buffers (:mod:`gadgets.library.recon`). A gadget passes on every
item it does not handle, unchanged.

Gadget classes are found by name only through :data:`REGISTRY` (filled by :func:`register`);
nothing is ever imported from a name that came from a configuration or over the network.

Properties are declared per class (:class:`Property`): typed (int, float, bool, str, choice),
with a default, bounds or choices and a doc string. Values from chain XML arrive as strings and
are parsed and validated; a bad value is a :class:`ChainError` naming the gadget, the property
and the value.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import ismrmrd
    import ismrmrd.xsd

__all__ = [
    "PROPERTY_TYPES",
    "REGISTRY",
    "ChainError",
    "Context",
    "Gadget",
    "GadgetError",
    "Item",
    "Property",
    "Text",
    "named_file",
    "register",
]

PROPERTY_TYPES = ("int", "float", "bool", "str", "choice", "json")
"""The value types a :class:`Property` can have."""

_MAX_STR = 4096
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


@dataclass
class Text:
    """A text message (logs, JSON parameters, ``ERROR ...``).

    Attributes
    ----------
    text
        The UTF-8 text, without a trailing NUL.
    """

    text: str


Item = Any
"""What flows through a chain: ``ismrmrd.Acquisition | ismrmrd.Waveform | ismrmrd.Image | Text``
or a gadget buffer (:class:`gadgets.library.recon.AcquisitionBuffer`,
:class:`gadgets.library.recon.ImageBuffer`).
"""


class ChainError(ValueError):
    """An invalid chain: unknown or unsafe name, bad XML, unknown class, bad property value.

    Also exported as :class:`gadgets.framework.chain.ChainError`. ``str(e)`` is safe to send to a
    client.
    """


class GadgetError(Exception):
    """Data a gadget cannot process; ``str(e)`` is sent to the client."""


@dataclass
class Context:
    """What the gadgets of one session share.

    Attributes
    ----------
    header
        The parsed ISMRMRD header of the session; None for a session that sent none (a job
        described by its parameters alone).
    header_xml
        The same header as XML text.
    session_id
        An identifier of the session (file names of saved data).
    save_dir
        Where ``SaveDataGadget`` writes (the server's ``--save-dir``); None: saving is refused.
    logger
        Logger for the gadgets' messages.
    parameters
        The JSON parameters sent after the header, if any.
    phantoms_dir
        The server's folder of NIfTI phantoms (``--phantoms``) that jobs may name, if any.
    chains_dir
        The server's chain folder, for gadgets that run another chain by name (``mr0_retrosim``
        runs its reconstruction chain on measured and simulated data); None: the repository's.
    store
        The server's store (:class:`gadgets.framework.session_store.Store`, ``--store``): its
        reference scans
        (stored and read by chains) and the client view of background jobs, which the
        scheduler holds (retrieval of their results); None: there is none.
    scheduler
        The server's :class:`scheduler.service.Scheduler`: simulations run as its jobs (in
        worker processes, on a GPU when one fits); None: in the session's own thread.
    """

    header: ismrmrd.xsd.ismrmrdHeader | None = None
    header_xml: str = ""
    session_id: str = ""
    save_dir: Path | None = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("mr0.gadgets"))
    parameters: dict[str, Any] = field(default_factory=dict)
    phantoms_dir: Path | None = None
    chains_dir: Path | None = None
    store: Any = None
    scheduler: Any = None


@dataclass(frozen=True)
class Property:
    """A typed, validated gadget property.

    Attributes
    ----------
    type
        One of :data:`PROPERTY_TYPES`.
    default
        The value when the chain sets none (already of the right type).
    doc
        One line on what it does (and its unit).
    min, max
        Inclusive bounds for ``int`` and ``float`` (None: unbounded); for ``str`` ``max`` is
        the longest value in characters (default 4096).
    choices
        The allowed strings of a ``choice``.

    A ``json`` property holds a JSON object (a dict), given as an object in a job's JSON or as
    its text in XML; ``max`` bounds its length as JSON text.
    """

    type: str
    default: Any
    doc: str = ""
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.type not in PROPERTY_TYPES:
            raise ValueError(f"property type must be one of {PROPERTY_TYPES}, got {self.type!r}")
        if self.type == "choice" and not self.choices:
            raise ValueError("a choice property needs choices")
        if self.default is not None:
            self.parse(self.default)  # the default must itself be valid

    def parse(self, value: Any) -> Any:
        """Return ``value`` (a string from XML, or a JSON scalar) as this property's type.

        Raises
        ------
        ValueError
            If it cannot be converted or lies outside the bounds / choices; the message says why.
        """
        if self.type == "json":
            return self._parse_json(value)
        if isinstance(value, str):
            text = value.strip()
        elif isinstance(value, bool | int | float):
            text = None
        else:
            raise ValueError(f"expected a string or a number, got a {type(value).__name__}")
        if self.type == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.lower() in _TRUE:
                return True
            if text is not None and text.lower() in _FALSE:
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError("expected true or false")
        if self.type == "int":
            if isinstance(value, bool):
                raise ValueError("expected an integer, got a boolean")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                number: float | int = int(value)
            elif isinstance(value, int):
                number = value
            else:
                try:
                    number = int(text or "", 10)
                except ValueError:
                    raise ValueError("expected an integer") from None
            self._check_bounds(number)
            return int(number)
        if self.type == "float":
            if isinstance(value, bool):
                raise ValueError("expected a number, got a boolean")
            try:
                number = float(value if text is None else text)
            except ValueError:
                raise ValueError("expected a number") from None
            if not math.isfinite(number):
                raise ValueError("expected a finite number")
            self._check_bounds(number)
            return number
        if text is None:
            raise ValueError(f"expected a string, got a {type(value).__name__}")
        limit = int(self.max) if self.max is not None else _MAX_STR
        if len(text) > limit:
            raise ValueError(f"longer than {limit} characters")
        if self.type == "choice" and text not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}")
        return text

    def _parse_json(self, value: Any) -> dict[str, Any]:
        """Parse a ``json`` property: a JSON object (from a job's JSON) or its text (from XML)."""
        limit = int(self.max) if self.max is not None else _MAX_STR
        if isinstance(value, str):
            if len(value) > limit:
                raise ValueError(f"longer than {limit} characters")
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got a {type(value).__name__}")
        if len(json.dumps(value)) > limit:
            raise ValueError(f"longer than {limit} characters as JSON")
        return value

    def _check_bounds(self, number: float) -> None:
        if self.min is not None and number < self.min:
            raise ValueError(f"below the minimum {self.min:g}")
        if self.max is not None and number > self.max:
            raise ValueError(f"above the maximum {self.max:g}")


class Gadget:
    """Base of all gadgets: properties, context, and a pass-through :meth:`process`.

    Subclasses declare :attr:`properties` and override :meth:`process`, or the simpler hooks
    :meth:`process_item` (one item in, any number out) and :meth:`finish` (at the end of the
    stream). Items a gadget does not handle must be passed on unchanged. An item yielded is
    handed on: the gadget must not change it (or its arrays) afterwards, because the server
    sends the last gadget's output arrays by reference when it next flushes.

    Parameters
    ----------
    context
        The session's shared context.
    name
        The gadget's name in its chain (default: the class name).
    **properties
        Property values by name: strings (from XML) or JSON scalars, parsed by their
        :class:`Property`. Missing ones take their defaults.

    Raises
    ------
    ChainError
        For an unknown property or a value that does not parse or validate.
    """

    properties: ClassVar[dict[str, Property]] = {}
    aliases: ClassVar[tuple[str, ...]] = ()
    """Further class names (e.g. Gadgetron's) under which :func:`register` files the class."""
    takes_images: ClassVar[bool] = False
    """Whether the gadget is right for images sent by the client. The server refuses a
    client's image (``ERROR``) unless every gadget of the chain says so: a reconstruction
    chain would otherwise finish and label a client's image as its own."""

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        self.context = context
        self.name = name or type(self).__name__
        unknown = sorted(set(properties) - set(self.properties))
        if unknown:
            known = ", ".join(sorted(self.properties)) or "none"
            raise ChainError(
                f"gadget {self.name!r} ({type(self).__name__}) has no property "
                f"{unknown[0]!r} (properties: {known})"
            )
        self.props: dict[str, Any] = {}
        for key, prop in self.properties.items():
            if key not in properties:
                self.props[key] = prop.default
                continue
            value = properties[key]
            try:
                self.props[key] = prop.parse(value)
            except ValueError as exc:
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                msg = f"gadget {self.name!r}: property {key!r} = {shown}: {exc}"
                raise ChainError(msg) from None

    @property
    def logger(self) -> logging.Logger:
        """The context's logger."""
        return self.context.logger

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Consume items and yield items (a generator).

        The default calls :meth:`process_item` for every item and :meth:`finish` at the end.
        """
        for item in items:
            yield from self.process_item(item)
        yield from self.finish()

    def process_item(self, item: Item) -> Iterable[Item]:
        """Handle one item; the default passes it on unchanged."""
        return (item,)

    def finish(self) -> Iterable[Item]:
        """Yield what is left at the end of the stream; the default yields nothing."""
        return ()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, props={self.props!r})"


REGISTRY: dict[str, type[Gadget]] = {}
"""Gadget classes by class name (and aliases); the only way a chain finds a class."""

_G = TypeVar("_G", bound=type[Gadget])


def register(cls: _G) -> _G:
    """Class decorator: file a :class:`Gadget` subclass under its name and its aliases.

    Raises
    ------
    TypeError
        If ``cls`` is not a Gadget subclass.
    ValueError
        If one of its names is already taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, Gadget)):
        raise TypeError(f"register needs a Gadget subclass, got {cls!r}")
    for name in (cls.__name__, *cls.aliases):
        other = REGISTRY.get(name)
        if other is not None and other is not cls:
            raise ValueError(f"gadget class name {name!r} is already registered by {other!r}")
        REGISTRY[name] = cls
    return cls


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_plain_name(name: str, what: str) -> None:
    """Raise ValueError unless ``name`` matches ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} name {name!r} is not a plain name ([A-Za-z0-9][A-Za-z0-9_.-]*)")


def named_file(name: str, folder: Path, suffix: str, what: str) -> Path:
    """Return ``folder/<name><suffix>`` for a plain name a client sent, refusing anything unsafe.

    Parameters
    ----------
    name
        A plain name matching ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``, with or without ``suffix``.
    folder
        The only folder the file may come from.
    suffix
        The file ending, e.g. ``".xml"``.
    what
        What the file is, for messages (``"chain"``, ``"phantom"``).

    Returns
    -------
    Path
        The file, resolved; it exists and lies directly inside ``folder``.

    Raises
    ------
    ValueError
        For an empty or unsafe name (paths, ``..``), or when there is no such file; the message
        lists the names the folder holds.
    """
    check_plain_name(name, what)
    stem = name[: -len(suffix)] if name.lower().endswith(suffix) else name
    if not stem:
        raise ValueError(f"{what} name {name!r} is empty without {suffix}")
    root = Path(folder).resolve()
    path = (root / f"{stem}{suffix}").resolve()
    if not path.is_relative_to(root) or path.parent != root:
        raise ValueError(f"{what} {name!r} lies outside the {what}s folder")
    if not path.is_file():
        available = sorted(p.stem for p in root.glob(f"*{suffix}")) if root.is_dir() else []
        raise ValueError(f"no {what} {stem!r} (available: {', '.join(available) or 'none'})")
    return path

"""Check an OpenRecon label document and print it as the Docker label OpenRecon reads.

Siemens OpenRecon takes an application's metadata from one label of its Docker image,
:data:`LABEL_KEY`, whose value is the base64 of a JSON document (label schema 1.1.0):

- ``general``: name, version (``X.Y.Z``), vendor, information, id, and the
  ``regulatory_information`` strings;
- ``reconstruction``: transfer protocol (ISMRMRD 1.4.1), the port the container listens on, what
  the scanner sends (``emitter``: raw or image) and takes back (``injector``: image or
  compleximage), and the resources it needs;
- ``parameters``: at most 14 UI parameters (``boolean``, ``int``, ``double``, ``string``,
  ``choice``); the scanner sends their values with each session as a JSON text,
  ``{"parameters": {id: value, ...}}``.

The checks here follow that schema (required and unknown keys, types, ranges, enumerations), plus
two of our own: parameter ids are unique and a choice's default is one of its values. An error
names the key, e.g. ``general.regulatory_information.gtin: required key missing``.

Usage::

    python scripts/openrecon_label.py                      # check; print the LABEL line
    python scripts/openrecon_label.py --print base64       # the value only (for --build-arg)
    python scripts/openrecon_label.py --print name         # OpenRecon_<vendor>_<name>_V<version>
    python scripts/openrecon_label.py --check other.json   # check only
    python scripts/openrecon_label.py -o label.Dockerfile  # write the LABEL line to a file

Exit status 0 when the document is valid, 1 when it is not (or cannot be read), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TEMPLATE",
    "LABEL_KEY",
    "LabelError",
    "encode_label",
    "label_line",
    "label_problems",
    "load_label",
    "main",
    "package_name",
    "validate_label",
]

LABEL_KEY = "com.siemens-healthineers.magneticresonance.openrecon.metadata:1.1.0"
"""The Docker label that carries the document (base64 of its JSON)."""

DEFAULT_TEMPLATE = Path(__file__).resolve().parent.parent / "docker/openrecon/OpenReconLabel.json"
"""Our label template."""

MAX_PARAMETERS = 14
"""Most UI parameters the schema allows."""

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_PARAMETER_ID = re.compile(r"^[A-Za-z0-9]+$")
_INT32 = (-(2**31), 2**31 - 1)

_REGULATORY_KEYS = (
    "device_trade_name",
    "production_identifier",
    "manufacturer_address",
    "made_in",
    "manufacture_date",
    "material_number",
    "gtin",
    "udi",
    "safety_advices",
    "special_operating_instructions",
    "additional_relevant_information",
)

Check = Callable[[Any, str, list[str]], None]


class LabelError(ValueError):
    """The label document breaks the OpenRecon 1.1.0 rules; the message names each bad key."""


# -- the rules ----------------------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _string(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, str):
        problems.append(f"{path}: must be a string, got {type(value).__name__}")


def _boolean(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, bool):
        problems.append(f"{path}: must be true or false, got {value!r}")


def _integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if not _is_int(value):
            problems.append(f"{path}: must be an integer, got {value!r}")
        elif (lo is not None and value < lo) or (hi is not None and value > hi):
            problems.append(f"{path}: {value} is outside [{lo}, {hi}]")

    return check


def _tenths(value: Any, path: str, problems: list[str]) -> None:
    """Check for a multiple of 0.1 (the schema's rule for ``double`` parameters)."""
    if not _is_number(value):
        problems.append(f"{path}: must be a number, got {value!r}")
    elif not math.isclose(value * 10, round(value * 10), rel_tol=0, abs_tol=1e-9):
        problems.append(f"{path}: {value} is not a multiple of 0.1")


def _one_of(*choices: str) -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if value not in choices:
            problems.append(f"{path}: must be one of {', '.join(choices)}, got {value!r}")

    return check


def _pattern(regex: re.Pattern[str], what: str) -> Check:
    def check(value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, str) or not regex.match(value):
            problems.append(f"{path}: must be {what}, got {value!r}")

    return check


def _multilingual(value: Any, path: str, problems: list[str]) -> None:
    """``{"en": "...", ...}``: English is required; other languages are strings too."""
    if not isinstance(value, dict):
        problems.append(f'{path}: must be an object like {{"en": "..."}}')
        return
    if "en" not in value:
        problems.append(f"{_join(path, 'en')}: required key missing")
    for lang, text in value.items():
        _string(text, _join(path, lang), problems)


def _unit(value: Any, path: str, problems: list[str]) -> None:
    _multilingual(value, path, problems)
    en = value.get("en") if isinstance(value, dict) else None
    if isinstance(en, str) and not 1 <= len(en) <= 3:
        problems.append(f"{_join(path, 'en')}: must have 1 to 3 characters, got {en!r}")


def _object(
    required: dict[str, Check],
    optional: dict[str, Check] | None = None,
) -> Check:
    """Check for an object with these keys (``required`` must be there) and no others."""
    optional = optional or {}

    def check(value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            problems.append(f"{path}: must be an object, got {type(value).__name__}")
            return
        for key, rule in required.items():
            if key not in value:
                problems.append(f"{_join(path, key)}: required key missing")
            else:
                rule(value[key], _join(path, key), problems)
        for key, item in value.items():
            if key in optional:
                optional[key](item, _join(path, key), problems)
            elif key not in required:
                problems.append(f"{_join(path, key)}: unknown key")

    return check


def _choice_values(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, list) or not value:
        problems.append(f"{path}: must be a non-empty list")
        return
    entry = _object({"id": _string, "name": _multilingual})
    for i, item in enumerate(value):
        entry(item, f"{path}[{i}]", problems)


_COMMON = {"type": _string, "id": _pattern(_PARAMETER_ID, "letters and digits only")}
_LABELS = {"information": _multilingual}

_PARAMETER_RULES: dict[str, Check] = {
    "boolean": _object({**_COMMON, "label": _multilingual, "default": _boolean}, _LABELS),
    "string": _object(
        {**_COMMON, "label": _multilingual},
        {**_LABELS, "default": _string, "isLargeText": _boolean},
    ),
    "int": _object(
        {
            **_COMMON,
            "label": _multilingual,
            "minimum": _integer(*_INT32),
            "maximum": _integer(*_INT32),
            "default": _integer(*_INT32),
        },
        {**_LABELS, "unit": _unit},
    ),
    "double": _object(
        {
            **_COMMON,
            "label": _multilingual,
            "minimum": _tenths,
            "maximum": _tenths,
            "default": _tenths,
        },
        {**_LABELS, "unit": _unit},
    ),
    "choice": _object(
        {
            **_COMMON,
            "label": _multilingual,
            "default": _string,
            "values": _choice_values,
        },
        _LABELS,
    ),
}


def _parameter(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{path}: must be an object, got {type(value).__name__}")
        return
    kind = value.get("type")
    if kind not in _PARAMETER_RULES:
        choices = ", ".join(_PARAMETER_RULES)
        problems.append(f"{_join(path, 'type')}: must be one of {choices}, got {kind!r}")
        return
    before = len(problems)
    _PARAMETER_RULES[kind](value, path, problems)
    if len(problems) > before:
        return
    if kind in ("int", "double"):
        lo, hi, default = value["minimum"], value["maximum"], value["default"]
        if not lo <= default <= hi:
            problems.append(f"{_join(path, 'default')}: {default} is outside [{lo}, {hi}]")
    if kind == "choice":
        ids = [v["id"] for v in value["values"]]
        if value["default"] not in ids:
            problems.append(
                f"{_join(path, 'default')}: {value['default']!r} is not one of the values {ids}"
            )


def _parameters(value: Any, path: str, problems: list[str]) -> None:
    if not isinstance(value, list):
        problems.append(f"{path}: must be a list, got {type(value).__name__}")
        return
    if len(value) > MAX_PARAMETERS:
        problems.append(f"{path}: {len(value)} parameters, at most {MAX_PARAMETERS} allowed")
    seen: set[str] = set()
    for i, item in enumerate(value):
        _parameter(item, f"{path}[{i}]", problems)
        ident = item.get("id") if isinstance(item, dict) else None
        if isinstance(ident, str):
            if ident in seen:
                problems.append(f"{path}[{i}].id: {ident!r} is used twice")
            seen.add(ident)


_DOCUMENT = _object(
    {
        "general": _object(
            {
                "name": _multilingual,
                "version": _pattern(_SEMVER, "a version X.Y.Z"),
                "vendor": _string,
                "information": _multilingual,
                "id": _string,
                "regulatory_information": _object(dict.fromkeys(_REGULATORY_KEYS, _string)),
            },
            {"license_string": _string},
        ),
        "reconstruction": _object(
            {
                "transfer_protocol": _object(
                    {"protocol": _one_of("ISMRMRD"), "version": _one_of("1.4.1")}
                ),
                "port": _integer(1, 65535),
                "emitter": _one_of("raw", "image"),
                "injector": _one_of("compleximage", "image"),
                "can_use_gpu": _boolean,
                "min_required_memory": _integer(0),
                "min_count_required_cpu_cores": _integer(1),
            },
            {
                "can_process_adjustment_data": _boolean,
                "min_count_required_gpus": _integer(0),
                "min_required_gpu_memory": _integer(0),
                "content_qualification_type": _one_of("PRODUCT", "SERVICE", "RESEARCH"),
                "require_readout_filter_off": _boolean,
                "channel_compression": _object(
                    {},
                    {
                        "require_state": _one_of("on", "off"),
                        "require_number_target_channels": _integer(1),
                    },
                ),
            },
        ),
        "parameters": _parameters,
    }
)


# -- the functions ------------------------------------------------------------------------------


def label_problems(doc: Any) -> list[str]:
    """Return what is wrong with a label document, one ``key.path: problem`` line each.

    Parameters
    ----------
    doc
        The parsed JSON document.

    Returns
    -------
    list of str
        Empty when the document is valid.
    """
    problems: list[str] = []
    _DOCUMENT(doc, "", problems)
    return problems


def validate_label(doc: Any) -> None:
    """Check a label document.

    Parameters
    ----------
    doc
        The parsed JSON document.

    Raises
    ------
    LabelError
        Naming every bad key, one per line.
    """
    problems = label_problems(doc)
    if problems:
        raise LabelError("\n".join(problems))


def load_label(path: Path) -> dict[str, Any]:
    """Read and check a label document.

    Parameters
    ----------
    path
        A JSON file.

    Returns
    -------
    dict
        The document.

    Raises
    ------
    LabelError
        When the file cannot be read, is not JSON, or breaks the rules.
    """
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LabelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LabelError(f"{path}: not valid JSON: {exc}") from None
    problems = label_problems(doc)
    if problems:
        raise LabelError("\n".join([f"{path}: not a valid OpenRecon label:", *problems]))
    return doc


def encode_label(doc: dict[str, Any]) -> str:
    """Return the label value: base64 of the document as compact UTF-8 JSON.

    Parameters
    ----------
    doc
        A valid label document.

    Returns
    -------
    str
        Base64 text (no line breaks).
    """
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def label_line(doc: dict[str, Any]) -> str:
    """Return the Dockerfile line ``LABEL "<key>"="<base64>"``.

    Parameters
    ----------
    doc
        A valid label document.

    Returns
    -------
    str
        One Dockerfile instruction.
    """
    return f'LABEL "{LABEL_KEY}"="{encode_label(doc)}"'


def package_name(doc: dict[str, Any]) -> str:
    """Return the base name OpenRecon expects for the package files.

    Parameters
    ----------
    doc
        A valid label document.

    Returns
    -------
    str
        ``OpenRecon_<vendor>_<name>_V<version>`` (spaces of the name as underscores): the
        ``.tar`` of ``docker save``, the ``.pdf`` and the ``.zip`` that holds both.
    """
    general = doc["general"]
    name = re.sub(r"\s+", "_", general["name"]["en"].strip())
    return f"OpenRecon_{general['vendor']}_{name}_V{general['version']}"


def main(argv: list[str] | None = None) -> int:
    """Run the command line (see the module docstring).

    Parameters
    ----------
    argv
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 valid, 1 invalid or unreadable (argparse exits with 2 on bad arguments).
    """
    parser = argparse.ArgumentParser(
        prog="openrecon_label.py",
        description="Check an OpenRecon label document and print it as a Docker label.",
    )
    parser.add_argument(
        "template", nargs="?", type=Path, default=DEFAULT_TEMPLATE,
        help="the JSON document (default: docker/openrecon/OpenReconLabel.json)",
    )  # fmt: skip
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--check", action="store_true", help="only check; print nothing if valid")
    what.add_argument(
        "--print", dest="show", choices=("label", "base64", "name"), default="label",
        help="label: the Dockerfile LABEL line (default); base64: the value only; "
        "name: the OpenRecon package file name",
    )  # fmt: skip
    parser.add_argument("-o", "--output", type=Path, help="write to this file, not stdout")
    opts = parser.parse_args(argv)

    try:
        doc = load_label(opts.template)
    except LabelError as exc:
        first, *rest = str(exc).splitlines()
        print(f"openrecon_label: {first}", file=sys.stderr)
        for line in rest:
            print(f"  {line}", file=sys.stderr)
        return 1
    if opts.check:
        return 0
    text = {"label": label_line, "base64": encode_label, "name": package_name}[opts.show](doc)
    if opts.output is not None:
        opts.output.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

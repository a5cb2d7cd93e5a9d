"""The NIfTI phantom specification v1: the JSON configuration as dataclasses.

A phantom is one JSON file plus NIfTI files beside it. The JSON names the units (only the defaults
are allowed in v1), the system (gyromagnetic ratio in MHz/T, B0 in T) and the tissues. Each tissue
property is a constant, a file reference ``"name.nii.gz[<index>]"`` (a volume along the 4th NIfTI
axis) or a mapping ``{"file": <ref>, "func": "<expression in x, x_min, x_max, x_mean, x_std>"}``.
The density must come from a file (reference or mapping). Defaults: T1, T2, T2′ = inf, ADC = 0,
dB0 = 0, B1+ = B1- = [1].

These classes only describe the configuration; :class:`mr0core.phantom.TissueDict` loads the
volume data. JSON keys follow the specification (``"T2'"``, ``"B1+"``, ``"B1-"``); the Python
attribute names follow MR-zero (``T2dash``, ``B1_tx``, ``B1_rx``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from os import PathLike, fspath
from pathlib import Path
from typing import Any, ClassVar

from .mapping import MappingError, parse_mapping

__all__ = [
    "NiftiMapping",
    "NiftiPhantom",
    "NiftiRef",
    "NiftiTissue",
    "PhantomError",
    "PhantomSystem",
    "PhantomUnits",
]

FILE_TYPE = "nifti_phantom_v1"
_MAX_JSON_BYTES = 16 * 1024 * 1024
_MAX_INDEX = 1_000_000
_MAX_CHANNELS = 1024


class PhantomError(ValueError):
    """A NIfTI phantom (configuration or data) that does not follow the specification."""


# Python attribute -> JSON key, in the specification's order.
_UNIT_KEYS = {
    "gyro": "gyro",
    "B0": "B0",
    "T1": "T1",
    "T2": "T2",
    "T2dash": "T2'",
    "ADC": "ADC",
    "dB0": "dB0",
    "B1_tx": "B1+",
    "B1_rx": "B1-",
}
_DEFAULT_UNITS = {
    "gyro": "MHz/T",
    "B0": "T",
    "T1": "s",
    "T2": "s",
    "T2dash": "s",
    "ADC": "10^-3 mm^2/s",
    "dB0": "Hz",
    "B1_tx": "rel",
    "B1_rx": "rel",
}


def _expect_dict(config: Any, what: str) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise PhantomError(f"{what} must be a JSON object, got {type(config).__name__}")
    return config


@dataclass
class PhantomUnits:
    """Units of the phantom's properties; v1 allows only the defaults (no conversion)."""

    gyro: str = "MHz/T"
    B0: str = "T"
    T1: str = "s"
    T2: str = "s"
    T2dash: str = "s"
    ADC: str = "10^-3 mm^2/s"
    dB0: str = "Hz"
    B1_tx: str = "rel"
    B1_rx: str = "rel"

    @classmethod
    def default(cls) -> PhantomUnits:
        """Return the default units."""
        return cls()

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PhantomUnits:
        """Read the ``"units"`` object; every unit must be present and equal to the default."""
        config = _expect_dict(config, '"units"')
        unknown = sorted(set(config) - set(_UNIT_KEYS.values()))
        if unknown:
            raise PhantomError(f'"units" has unknown keys {unknown}')
        values = {}
        for attr, key in _UNIT_KEYS.items():
            if key not in config:
                raise PhantomError(
                    f'"units" is missing "{key}" (expected "{_DEFAULT_UNITS[attr]}")'
                )
            if config[key] != _DEFAULT_UNITS[attr]:
                raise PhantomError(
                    f'unit of "{key}" is {config[key]!r}; nifti_phantom_v1 supports only '
                    f'"{_DEFAULT_UNITS[attr]}" (convert the data first)'
                )
            values[attr] = config[key]
        return cls(**values)

    def to_dict(self) -> dict[str, str]:
        """Return the ``"units"`` object."""
        return {key: getattr(self, attr) for attr, key in _UNIT_KEYS.items()}


@dataclass
class PhantomSystem:
    """The physical system: gyromagnetic ratio (MHz/T) and main field (T)."""

    gyro: float = 42.5764
    B0: float = 3.0

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> PhantomSystem:
        """Read the ``"system"`` object (missing values take the defaults)."""
        config = _expect_dict(config, '"system"')
        unknown = sorted(set(config) - {"gyro", "B0"})
        if unknown:
            raise PhantomError(f'"system" has unknown keys {unknown}')
        out = cls()
        for key in ("gyro", "B0"):
            if key in config:
                value = config[key]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise PhantomError(f'"system.{key}" must be a number, got {value!r}')
                if not (math.isfinite(value) and value > 0):
                    raise PhantomError(f'"system.{key}" must be positive, got {value}')
                setattr(out, key, float(value))
        return out

    def to_dict(self) -> dict[str, float]:
        """Return the ``"system"`` object."""
        return {"gyro": self.gyro, "B0": self.B0}


_REF = re.compile(r"^(?P<file>[^\[\]]+)\[(?P<index>[^\[\]]*)\]$")
_NIFTI_NAME = re.compile(r"^[^/\\]+\.nii(\.gz)?$")


@dataclass(frozen=True)
class NiftiRef:
    """A volume of a NIfTI file: ``file_name[tissue_index]``.

    The file lies in the JSON file's directory: names with a directory part are rejected, so a
    phantom can never make us open a file elsewhere.
    """

    file_name: str
    tissue_index: int

    def __post_init__(self) -> None:
        if not _NIFTI_NAME.match(self.file_name) or self.file_name in (".nii", ".nii.gz"):
            raise PhantomError(
                f"file reference {self.file_name!r}: must be a .nii or .nii.gz file name in the "
                "phantom's directory (no path)"
            )
        if isinstance(self.tissue_index, bool) or not isinstance(self.tissue_index, int):
            raise PhantomError(f"file reference index must be an integer: {self.tissue_index!r}")
        if not 0 <= self.tissue_index <= _MAX_INDEX:
            raise PhantomError(f"file reference index out of range: {self.tissue_index}")

    @classmethod
    def parse(cls, config: str) -> NiftiRef:
        """Parse ``"name.nii.gz[3]"``."""
        if not isinstance(config, str):
            raise PhantomError(f"a file reference must be a string, got {config!r}")
        m = _REF.match(config.strip())
        if m is None:
            raise PhantomError(
                f"bad file reference {config!r}: expected '<file>.nii(.gz)[<index>]'"
            )
        index = m.group("index").strip()
        if not index.isdigit():
            raise PhantomError(f"bad index {index!r} in file reference {config!r}")
        return cls(m.group("file").strip(), int(index))

    def to_str(self) -> str:
        """Return the specification's string form."""
        return f"{self.file_name}[{self.tissue_index}]"

    def __str__(self) -> str:
        return self.to_str()


@dataclass(frozen=True)
class NiftiMapping:
    """A file reference plus a mapping function applied per voxel."""

    file: NiftiRef
    func: str

    def __post_init__(self) -> None:
        try:
            parse_mapping(self.func)
        except MappingError as e:
            raise PhantomError(str(e)) from e

    @classmethod
    def parse(cls, config: dict[str, Any]) -> NiftiMapping:
        """Parse ``{"file": "<ref>", "func": "<expression>"}``."""
        config = _expect_dict(config, "a mapping")
        if set(config) != {"file", "func"}:
            raise PhantomError(f'a mapping needs exactly "file" and "func", got {sorted(config)}')
        if not isinstance(config["func"], str):
            raise PhantomError(f'mapping "func" must be a string, got {config["func"]!r}')
        return cls(NiftiRef.parse(config["file"]), config["func"])

    def to_dict(self) -> dict[str, str]:
        """Return the specification's object form."""
        return {"file": self.file.to_str(), "func": self.func}


Prop = float | NiftiRef | NiftiMapping


def _parse_prop(value: Any, where: str) -> Prop:
    if isinstance(value, bool):
        raise PhantomError(f"{where}: expected a number, file reference or mapping, got {value}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return NiftiRef.parse(value)
    if isinstance(value, dict):
        return NiftiMapping.parse(value)
    raise PhantomError(f"{where}: expected a number, file reference or mapping, got {value!r}")


def _prop_to_json(value: Prop) -> Any:
    if isinstance(value, NiftiRef):
        return value.to_str()
    if isinstance(value, NiftiMapping):
        return value.to_dict()
    return value


_TISSUE_KEYS = {
    "density": "density",
    "T1": "T1",
    "T2": "T2",
    "T2dash": "T2'",
    "ADC": "ADC",
    "dB0": "dB0",
    "B1_tx": "B1+",
    "B1_rx": "B1-",
}


@dataclass
class NiftiTissue:
    """One tissue: its density (from a file) and its properties (constant, file or mapping)."""

    density: NiftiRef | NiftiMapping
    T1: Prop = math.inf
    T2: Prop = math.inf
    T2dash: Prop = math.inf
    ADC: Prop = 0.0
    dB0: Prop = 0.0
    B1_tx: list[Prop] = field(default_factory=lambda: [1.0])
    B1_rx: list[Prop] = field(default_factory=lambda: [1.0])

    def __post_init__(self) -> None:
        if not isinstance(self.density, NiftiRef | NiftiMapping):
            raise PhantomError(
                f"tissue density must be a file reference or mapping, got {self.density!r}"
            )
        for name in ("B1_tx", "B1_rx"):
            channels = getattr(self, name)
            if not isinstance(channels, list) or not 1 <= len(channels) <= _MAX_CHANNELS:
                raise PhantomError(
                    f"{_TISSUE_KEYS[name]} must be a list of 1..{_MAX_CHANNELS} maps"
                )

    @classmethod
    def default(cls, density: NiftiRef | NiftiMapping) -> NiftiTissue:
        """Return a tissue with all defaults except the required density."""
        return cls(density)

    @classmethod
    def from_dict(cls, config: dict[str, Any], name: str = "tissue") -> NiftiTissue:
        """Parse one entry of ``"tissues"``."""
        config = _expect_dict(config, f'tissue "{name}"')
        unknown = sorted(set(config) - set(_TISSUE_KEYS.values()))
        if unknown:
            raise PhantomError(f'tissue "{name}" has unknown properties {unknown}')
        if "density" not in config:
            raise PhantomError(f'tissue "{name}" has no "density" (required, from a NIfTI file)')
        density = _parse_prop(config["density"], f'tissue "{name}" density')
        if isinstance(density, float):
            raise PhantomError(
                f'tissue "{name}": density must come from a NIfTI file (it defines the shape), '
                f"not a constant ({density})"
            )
        kwargs: dict[str, Any] = {"density": density}
        for attr, key in _TISSUE_KEYS.items():
            if attr == "density" or key not in config:
                continue
            where = f'tissue "{name}" {key}'
            if attr in ("B1_tx", "B1_rx"):
                value = config[key]
                if not isinstance(value, list):
                    raise PhantomError(f"{where}: must be a list (one entry per channel)")
                kwargs[attr] = [_parse_prop(v, f"{where}[{i}]") for i, v in enumerate(value)]
            else:
                kwargs[attr] = _parse_prop(config[key], where)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Return the specification's object form; properties at their default are left out.

        (Leaving out ``inf`` keeps the JSON standard: JSON has no infinity.)
        """
        out: dict[str, Any] = {"density": _prop_to_json(self.density)}
        defaults = NiftiTissue(self.density)
        for f in fields(self):
            if f.name == "density":
                continue
            value = getattr(self, f.name)
            if value == getattr(defaults, f.name):
                continue
            key = _TISSUE_KEYS[f.name]
            if isinstance(value, list):
                out[key] = [_prop_to_json(v) for v in value]
            else:
                out[key] = _prop_to_json(value)
        return out

    def file_refs(self) -> list[NiftiRef]:
        """Every file reference of this tissue."""
        props: list[Any] = [self.density, self.T1, self.T2, self.T2dash, self.ADC, self.dB0]
        props += [*self.B1_tx, *self.B1_rx]
        refs = []
        for p in props:
            if isinstance(p, NiftiRef):
                refs.append(p)
            elif isinstance(p, NiftiMapping):
                refs.append(p.file)
        return refs


@dataclass
class NiftiPhantom:
    """A phantom's JSON configuration: units, system and tissues.

    Parameters
    ----------
    units, system, tissues
        As in the specification (``"units"``, ``"system"``, ``"tissues"``).
    reslice_to
        MR-zero 1.2's option to resample the phantom onto another grid while loading; not
        implemented here, so only ``None`` is accepted (resample the loaded
        :class:`~mr0core.TissueDict` with ``interpolate`` instead).
    """

    units: PhantomUnits
    system: PhantomSystem
    tissues: dict[str, NiftiTissue]
    reslice_to: Any = None
    file_type: ClassVar[str] = FILE_TYPE

    def __post_init__(self) -> None:
        if self.reslice_to is not None:
            raise NotImplementedError(
                "NiftiPhantom.reslice_to (reslicing while loading) is not implemented; load the "
                "phantom and resample it with TissueDict.interpolate"
            )

    @classmethod
    def default(cls, gyro: float = 42.5764, B0: float = 3.0) -> NiftiPhantom:
        """Return an empty phantom with default units and the given system."""
        return cls(PhantomUnits.default(), PhantomSystem(float(gyro), float(B0)), {})

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> NiftiPhantom:
        """Parse the whole JSON object."""
        config = _expect_dict(config, "a NIfTI phantom")
        file_type = config.get("file_type")
        if file_type != FILE_TYPE:
            raise PhantomError(
                f'unknown "file_type" {file_type!r}: this reader supports "{FILE_TYPE}"'
            )
        unknown = sorted(set(config) - {"file_type", "units", "system", "tissues"})
        if unknown:
            raise PhantomError(f"unknown top-level keys {unknown}")
        for key in ("units", "system", "tissues"):
            if key not in config:
                raise PhantomError(f'missing "{key}"')
        tissues = _expect_dict(config["tissues"], '"tissues"')
        if not tissues:
            raise PhantomError('"tissues" is empty')
        return cls(
            PhantomUnits.from_dict(config["units"]),
            PhantomSystem.from_dict(config["system"]),
            {str(name): NiftiTissue.from_dict(t, str(name)) for name, t in tissues.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON object."""
        return {
            "file_type": FILE_TYPE,
            "units": self.units.to_dict(),
            "system": self.system.to_dict(),
            "tissues": {name: t.to_dict() for name, t in self.tissues.items()},
        }

    @classmethod
    def load(cls, path: str | PathLike[str]) -> NiftiPhantom:
        """Read a phantom ``.json`` file."""
        p = Path(fspath(path))
        if not p.is_file():
            raise FileNotFoundError(f"NIfTI phantom file not found: {p}")
        if p.stat().st_size > _MAX_JSON_BYTES:
            raise PhantomError(f"{p}: larger than {_MAX_JSON_BYTES} bytes; not a phantom config")
        try:
            config = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PhantomError(f"{p}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(config)
        except PhantomError as e:
            raise PhantomError(f"{p}: {e}") from e

    def save(self, path: str | PathLike[str]) -> None:
        """Write the configuration as ``.json`` (standard JSON, indented)."""
        p = Path(fspath(path))
        p.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

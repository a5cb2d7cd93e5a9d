"""Our own reader for Pulseq ``.seq`` files, format 1.2.x to 1.5.x.

Why not ``pypulseq.Sequence.read``: we need every table as a numpy array to convert whole
sequences with vectorised arithmetic, exact line numbers in every error, strict validation (no
partial result on malformed input), and speed. PyPulseq stays the reference in the tests.

The reader only parses and validates; :mod:`mr0core.pulseq.convert` turns the result into a
:class:`mr0core.sequence.Sequence`. Units are converted to SI here: seconds, Hz, Hz/m, rad.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from array import array
from dataclasses import dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_SEQ_LIMITS",
    "SeqFile",
    "SeqFormatError",
    "SeqLimitError",
    "SeqLimits",
    "Shape",
    "read_seq",
    "read_seq_text",
]

# Characters that str.splitlines() breaks at, besides "\n" ("\r\n" counts once).
_OTHER_LINE_BREAKS = ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
# Tables are tokenised this many characters at a time, so that the short-lived per-token
# Python strings never exist for the whole file at once.
_CHUNK_CHARS = 1 << 20
# Ids and counts are exact in float64 (and in int64) below this.
_MAX_INT = 2.0**53

DEFAULT_RASTERS = {
    "GradientRasterTime": 10e-6,
    "RadiofrequencyRasterTime": 1e-6,
    "AdcRasterTime": 100e-9,
    "BlockDurationRaster": 10e-6,
}

KNOWN_SECTIONS = {
    "VERSION",
    "DEFINITIONS",
    "BLOCKS",
    "RF",
    "GRADIENTS",
    "TRAP",
    "ADC",
    "DELAYS",
    "EXTENSIONS",
    "SHAPES",
    "SIGNATURE",
}
SUPPORTED_EXTENSIONS = {"LABELSET", "LABELINC", "TRIGGERS", "RF_SHIMS", "DELAYS", "ROTATIONS"}


class SeqFormatError(ValueError):
    """A ``.seq`` file is malformed.

    Attributes
    ----------
    path
        The file (or ``"<text>"``).
    line
        1-based line number of the problem, or None when it concerns the file as a whole.
    problem
        What is wrong.
    """

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


class SeqLimitError(SeqFormatError):
    """A ``.seq`` file needs more than a :class:`SeqLimits` bound allows.

    Raised while parsing or before the conversion allocates, never after. It is a
    :class:`SeqFormatError` (and so a ``ValueError``), so handlers of malformed files catch it.

    Attributes
    ----------
    limit
        The name of the :class:`SeqLimits` field, e.g. ``"max_total_adc_samples"``.
    value
        The bound in force.
    needed
        What the file needs (at least; counting stops at the first item over the bound).
    """

    def __init__(
        self, path: str, line: int | None, limit: str, value: int, needed: int, what: str
    ) -> None:
        self.limit = limit
        self.value = value
        self.needed = needed
        super().__init__(
            path,
            line,
            f"{what}: {needed} is more than the limit {limit}={value} "
            "(raise it with limits=SeqLimits(...) if the file is trusted)",
        )


@dataclass(frozen=True)
class SeqLimits:
    """Bounds on what one ``.seq`` file may make the reader and the conversion allocate.

    Every bound is checked while parsing or before the allocation it guards, so a hostile
    file is refused with a :class:`SeqLimitError` before memory grows. The defaults keep one
    read, and then one conversion, below about 1 GiB each (16 sessions on a 24 GiB machine):
    the conversion budget admits about 180 000 repetitions or 6 M ADC samples (the largest file
    of the Pulseq corpus needs 7 % of it, a 256-line 8-echo GRE 11 %). Pass
    ``limits=SeqLimits(...)`` to :func:`read_seq`, :func:`read_seq_text`,
    :func:`mr0core.pulseq.seq_to_sequence` or :meth:`mr0core.Sequence.import_file` to change
    them.

    Attributes
    ----------
    max_file_bytes
        Size of the file in bytes (characters for :func:`read_seq_text`).
    max_lines
        Lines of the file (counted before the text is split).
    max_line_chars
        Characters of one line.
    max_definition_values
        Values in ``[DEFINITIONS]``, summed over all its lines.
    max_blocks
        Rows of ``[BLOCKS]``.
    max_shape_samples
        Decompressed samples of one shape (its ``num_samples``).
    max_total_shape_samples
        Decompressed samples of all shapes together, checked from the ``num_samples`` headers
        before any shape is decompressed.
    max_waveform_samples
        Samples of the waveforms built from shapes: one per ``[GRADIENTS]`` row (scaled by its
        amplitude) plus one per distinct RF (magnitude, phase, time) shape triple, summed.
    max_adc_samples
        Samples of one ``[ADC]`` event (its ``num``).
    max_total_adc_samples
        ADC samples of the whole sequence: ``num`` summed over every block that plays an ADC.
    max_repetitions
        Repetitions of the converted :class:`mr0core.Sequence` (RF pulses, plus one).
    max_events
        Events of the converted sequence (an upper estimate: ADC samples, pulses and gradient
        corners).
    max_extension_uses
        Extension list entries walked over all blocks (``[EXTENSIONS]`` chains).
    max_label_names
        Distinct label names in ``LABELSET``/``LABELINC``.
    max_shim_channels
        Channels of one ``RF_SHIMS`` row.
    max_memory_bytes
        Estimated peak memory in bytes of the conversion to :class:`mr0core.Sequence`
        (:func:`mr0core.pulseq.estimate_conversion_bytes`), including the parsed file it reads.
    """

    max_file_bytes: int = 64 << 20
    max_lines: int = 2_000_000
    max_line_chars: int = 65_536
    max_definition_values: int = 100_000
    max_blocks: int = 1_000_000
    max_shape_samples: int = 1 << 22
    max_total_shape_samples: int = 1 << 24
    max_waveform_samples: int = 1 << 24
    max_adc_samples: int = 1 << 20
    max_total_adc_samples: int = 1 << 24
    max_repetitions: int = 250_000
    max_events: int = 1 << 25
    max_extension_uses: int = 1 << 22
    max_label_names: int = 32
    max_shim_channels: int = 64
    max_memory_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"SeqLimits.{f.name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"SeqLimits.{f.name} must be >= 0, got {value}")


DEFAULT_SEQ_LIMITS = SeqLimits()
"""The bounds used when no ``limits`` are given (see :class:`SeqLimits`)."""


def check_limits(limits: SeqLimits | None) -> SeqLimits:
    """Return ``limits``, or :data:`DEFAULT_SEQ_LIMITS` for None; a TypeError for anything else."""
    if limits is None:
        return DEFAULT_SEQ_LIMITS
    if not isinstance(limits, SeqLimits):
        raise TypeError(f"limits must be a SeqLimits or None, got {type(limits).__name__}")
    return limits


@dataclass
class Shape:
    """A decompressed shape.

    Attributes
    ----------
    samples
        The decompressed values, shape ``[num_samples]``.
    line
        Line of its ``shape_id`` header (for error messages).
    """

    samples: np.ndarray
    line: int


@dataclass
class Table:
    """One numeric section: a row per event.

    Attributes
    ----------
    ids
        Event ids, shape ``[rows]``, int64, sorted ascending.
    data
        The remaining columns, shape ``[rows, columns]``, float64, in file units.
    lines
        Line number of each row.
    text
        Trailing text columns (RF ``use`` in 1.5, label names, soft-delay hints), one list per row.
    """

    ids: np.ndarray
    data: np.ndarray
    lines: np.ndarray
    text: list[list[str]] = field(default_factory=list)

    def row(self, event_id: int) -> int:
        """Return the row of one id, or -1 if it is not defined (dict lookup, for Python loops)."""
        index = self.__dict__.get("_index")
        if index is None:
            index = self.__dict__["_index"] = {int(i): r for r, i in enumerate(self.ids.tolist())}
        result: int = index.get(int(event_id), -1)
        return result

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Return the row index of each id in ``ids``; -1 where an id is not defined."""
        if len(self.ids) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        rows = np.clip(rows, 0, len(self.ids) - 1)
        return np.where(self.ids[rows] == ids, rows, -1)

    @classmethod
    def empty(cls, columns: int) -> Table:
        """Return a table without rows."""
        return cls(np.zeros(0, np.int64), np.zeros((0, columns)), np.zeros(0, np.int64), [])


@dataclass
class SeqFile:
    """The parsed content of a ``.seq`` file, validated, in file order.

    Column layouts are normalised to the 1.5 format whatever the file's version:

    - ``blocks``: ``[blocks, 7]`` int64 columns rf, gx, gy, gz, adc, ext, delay_id (delay_id only
      for < 1.4); block durations in s are in ``block_durations``.
    - ``rf``: amplitude (Hz), mag_id, phase_id, time_id, center (s, NaN when the file has none),
      delay (s), freq_ppm, phase_ppm, freq (Hz), phase (rad); ``rf.text`` holds the ``use`` letter
      (``"u"`` before 1.5).
    - ``grad``: amplitude (Hz/m), first, last (Hz/m, NaN before 1.5), shape_id, time_id, delay (s).
    - ``trap``: amplitude (Hz/m), rise, flat, fall, delay (s).
    - ``adc``: num, dwell (s), delay (s), freq_ppm, phase_ppm, freq (Hz), phase (rad), phase_id.
    - ``extensions``: type, ref, next.
    """

    path: str
    version: tuple[int, int, int]
    definitions: dict[str, list[str]]
    block_ids: np.ndarray
    blocks: np.ndarray
    block_lines: np.ndarray
    block_durations: np.ndarray
    rf: Table
    grad: Table
    trap: Table
    adc: Table
    delays: Table
    extensions: Table
    extension_names: dict[int, str]
    extension_tables: dict[str, Table]
    shapes: dict[int, Shape]
    signature_ok: bool | None = None
    limits: SeqLimits = DEFAULT_SEQ_LIMITS
    """The bounds it was read with; :func:`mr0core.pulseq.seq_to_sequence` applies them too."""
    # derived tables, computed once (rf, grad, ext: mr0core.pulseq.convert)
    cache: dict[str, Any] = field(default_factory=dict, repr=False)
    """Derived per-event properties, computed once by :mod:`mr0core.pulseq.convert`."""

    @property
    def version_str(self) -> str:
        """The format version as ``"major.minor.revision"``."""
        return ".".join(str(v) for v in self.version)

    @property
    def version_combined(self) -> int:
        """The format version as one comparable integer, e.g. 1004002 for 1.4.2."""
        major, minor, revision = self.version
        return major * 1_000_000 + minor * 1_000 + revision

    def raster(self, name: str) -> float:
        """Return a raster time in s from the definitions, or its Pulseq default."""
        if name in self.definitions:
            return float(self.definitions[name][0])
        return DEFAULT_RASTERS[name]

    def definition_floats(self, name: str) -> list[float] | None:
        """Return a numeric definition (e.g. ``FOV``) as floats, or None if absent."""
        if name not in self.definitions:
            return None
        return [float(v) for v in self.definitions[name]]

    def shape(self, shape_id: int, line: int) -> np.ndarray:
        """Return a decompressed shape; raise :class:`SeqFormatError` at ``line`` if missing."""
        if shape_id not in self.shapes:
            raise SeqFormatError(self.path, line, f"shape id {shape_id} is not defined in [SHAPES]")
        return self.shapes[shape_id].samples


# -- low-level helpers -----------------------------------------------------------------------

_SECTION_RE = re.compile(r"^\[([A-Za-z_0-9]+)\]$")
_EXTENSION_RE = re.compile(r"^extension\s+(\S+)\s+(\S+)$")


def decompress_shape(data: np.ndarray, num_samples: int) -> np.ndarray | None:
    """Undo Pulseq's shape compression, or return None if ``data`` is inconsistent.

    Pulseq stores the first difference of a shape, run-length encoded: a value written twice in a
    row is followed by the number of further repeats. Decompression expands the runs and
    integrates.

    Parameters
    ----------
    data
        Compressed samples, shape ``[n]``.
    num_samples
        Length of the decompressed shape.

    Returns
    -------
    numpy.ndarray or None
        The shape, ``[num_samples]`` float64; None if the runs do not add up to ``num_samples``.
    """
    n = len(data)
    # Candidates for a run marker: two equal consecutive values. Markers overlap in long runs
    # (a a a ...), so walk them in order, skipping any that start inside the previous run's triple.
    candidates = np.flatnonzero(data[:-1] == data[1:]) if n > 1 else np.zeros(0, np.int64)
    values: list[np.ndarray] = []
    repeats: list[np.ndarray] = []
    pos = 0
    for c in candidates.tolist():
        if c < pos:
            continue
        if c + 2 >= n:
            return None
        count = data[c + 2]
        # a run longer than the shape is inconsistent; the bound also keeps the sum in int64
        if count < 0 or count != int(count) or count > num_samples:
            return None
        if c > pos:
            values.append(data[pos:c])
            repeats.append(np.ones(c - pos, np.int64))
        values.append(data[c : c + 1])
        repeats.append(np.array([int(count) + 2]))
        pos = c + 3
    if pos < n:
        values.append(data[pos:])
        repeats.append(np.ones(n - pos, np.int64))
    if not values:
        return np.zeros(0) if num_samples == 0 else None
    rep = np.concatenate(repeats)
    if int(rep.sum()) != num_samples:
        return None
    return np.cumsum(np.repeat(np.concatenate(values), rep))


# -- the reader ------------------------------------------------------------------------------


class _Parser:
    """One pass over the lines; collects each section's data lines, then parses them."""

    def __init__(self, text: str, path: str, limits: SeqLimits) -> None:
        self.path = path
        self.text = text
        self.limits = limits
        if len(text) > limits.max_file_bytes:
            raise self.over(None, "max_file_bytes", len(text), "file size in characters")
        # count the lines before splitting: each line costs ~100 bytes of Python objects
        breaks = text.count("\n") + text.count("\r") - text.count("\r\n")
        breaks += sum(text.count(c) for c in _OTHER_LINE_BREAKS)
        if breaks + 1 > limits.max_lines:
            raise self.over(None, "max_lines", breaks + 1, "lines")
        self.lines = text.splitlines()

    def error(self, line: int | None, problem: str) -> SeqFormatError:
        return SeqFormatError(self.path, line, problem)

    def over(self, line: int | None, limit: str, needed: int, what: str) -> SeqLimitError:
        return SeqLimitError(self.path, line, limit, getattr(self.limits, limit), needed, what)

    # Collect (line number, content) per section; extension sections are keyed "extension NAME".
    def split_sections(
        self,
    ) -> tuple[dict[str, list[tuple[int, str]]], dict[str, int], dict[str, tuple[int, int]]]:
        sections: dict[str, list[tuple[int, str]]] = {}
        header_lines: dict[str, int] = {}
        ext_declared: dict[str, tuple[int, int]] = {}  # name -> (type id, line)
        current: str | None = None
        rows: list[tuple[int, str]] = []
        max_chars = self.limits.max_line_chars
        for i, raw in enumerate(self.lines, start=1):
            if len(raw) > max_chars:
                raise self.over(i, "max_line_chars", len(raw), "line length in characters")
            line = raw.strip()
            if not line:
                continue
            c = line[0]
            if c == "#":
                continue
            if c == "[":
                m = _SECTION_RE.match(line)
                if not m:
                    raise self.error(i, f"malformed section header {line[:40]!r}")
                name = m.group(1)
                if name not in KNOWN_SECTIONS:
                    raise self.error(i, f"unknown section [{name}]")
                if name in sections:
                    raise self.error(i, f"section [{name}] appears twice")
                current = name
                rows = sections[name] = []
                header_lines[name] = i
                continue
            if (
                c == "e"
                and current is not None
                and (current == "EXTENSIONS" or current.startswith("extension "))
            ):
                m = _EXTENSION_RE.match(line)
                if m:
                    ext_name, type_id = m.group(1), m.group(2)
                    if not type_id.isdigit():
                        raise self.error(
                            i, f"extension {ext_name}: type id {type_id!r} is not an integer"
                        )
                    current = f"extension {ext_name}"
                    if current in sections:
                        raise self.error(i, f"extension {ext_name} is declared twice")
                    rows = sections[current] = []
                    header_lines[current] = i
                    ext_declared[ext_name] = (int(type_id), i)
                    continue
            if current is None:
                raise self.error(i, f"data outside any section: {line[:40]!r}")
            rows.append((i, line))
        return sections, header_lines, ext_declared

    def table(
        self,
        name: str,
        rows: list[tuple[int, str]],
        columns: int | tuple[int, ...],
        text_columns: int = 0,
        int_columns: tuple[int, ...] = (),
    ) -> Table:
        """Parse rows of ``id value value ...``; ``columns`` counts all columns including the id."""
        allowed = (columns,) if isinstance(columns, int) else columns
        width = max(allowed)
        if not rows:
            return Table.empty(width - 1 - text_columns)
        lines = np.fromiter((ln for ln, _ in rows), dtype=np.int64, count=len(rows))
        ncol = width - text_columns
        values = np.empty((len(rows), ncol))
        texts: list[list[str]] = []
        # Tokenise a chunk of rows at a time: the token strings are ~50 bytes each.
        ends = np.cumsum(np.fromiter((len(line) for _, line in rows), np.int64, len(rows)))
        start = 0
        while start < len(rows):
            stop = int(np.searchsorted(ends, ends[start] + _CHUNK_CHARS, side="right"))
            stop = min(max(stop, start + 1), len(rows))
            chunk = rows[start:stop]
            numeric: list[list[str]] = []
            for ln, line in chunk:
                tok = line.split()
                if len(tok) not in allowed:
                    expected = " or ".join(str(a) for a in allowed)
                    raise self.error(ln, f"[{name}] row has {len(tok)} fields, expected {expected}")
                if len(tok) < width:  # an older layout without the trailing columns: pad
                    tok = tok + ["0"] * (width - len(tok))
                if text_columns:
                    numeric.append(tok[:ncol])
                    texts.append(tok[ncol:])
                else:
                    numeric.append(tok)
            try:
                values[start:stop] = np.array(numeric, dtype=np.float64).reshape(len(chunk), ncol)
            except ValueError:
                self._locate_bad_number(name, chunk, numeric)
            start = stop
        bad = ~np.isfinite(values)
        if bad.any():
            r = int(np.argwhere(bad)[0][0])
            raise self.error(int(lines[r]), f"[{name}] non-finite value in {rows[r][1][:60]!r}")
        ids = values[:, 0]
        int_cols = (0, *int_columns)
        check = values[:, list(int_cols)]
        nonint = (check != np.round(check)) | (check < 0) | (check >= _MAX_INT)
        if nonint.any():
            r = int(np.argwhere(nonint)[0][0])
            raise self.error(
                int(lines[r]),
                f"[{name}] ids and counts must be integers from 0 to 2^53: {rows[r][1][:60]!r}",
            )
        ids = ids.astype(np.int64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(dup):
            r = int(order[dup[0] + 1])
            raise self.error(int(lines[r]), f"[{name}] id {int(ids[r])} is defined twice")
        return Table(
            sorted_ids,
            values[order, 1:],
            lines[order],
            [texts[i] for i in order] if text_columns else [],
        )

    def _locate_bad_number(
        self, name: str, rows: list[tuple[int, str]], numeric: list[list[str]]
    ) -> None:
        for (ln, _), tok in zip(rows, numeric, strict=True):
            for t in tok:
                try:
                    float(t)
                except ValueError:
                    raise self.error(ln, f"[{name}] non-numeric field {t!r}") from None
        raise self.error(rows[0][0], f"[{name}] could not be parsed")  # pragma: no cover

    def parse(self) -> SeqFile:
        sections, header_lines, ext_declared = self.split_sections()

        # VERSION
        if "VERSION" not in sections:
            raise self.error(None, "no [VERSION] section: not a Pulseq file")
        version: dict[str, int | None] = {"major": None, "minor": None, "revision": None}
        for ln, line in sections["VERSION"]:
            parts = line.split()
            if len(parts) != 2 or parts[0] not in version:
                raise self.error(ln, f"[VERSION] expected 'major|minor|revision N', got {line!r}")
            # revision may carry a suffix such as "1.4.0post1"; take the leading digits
            m = re.match(r"^(\d+)", parts[1])
            if not m:
                raise self.error(ln, f"[VERSION] non-numeric field {parts[1]!r}")
            version[parts[0]] = int(m.group(1))
        vline = header_lines["VERSION"]
        if version["major"] is None or version["minor"] is None:
            raise self.error(vline, "[VERSION] needs 'major' and 'minor'")
        ver = (version["major"], version["minor"], version["revision"] or 0)
        if ver[0] != 1 or not 2 <= ver[1] <= 5:
            raise self.error(
                vline,
                f"unsupported Pulseq format version {ver[0]}.{ver[1]}.{ver[2]} "
                "(supported: 1.2-1.5)",
            )
        combined = ver[0] * 1_000_000 + ver[1] * 1_000 + ver[2]
        v14 = combined >= 1_004_000
        v15 = combined >= 1_005_000

        # DEFINITIONS
        definitions: dict[str, list[str]] = {}
        n_values = 0
        for ln, line in sections.get("DEFINITIONS", []):
            parts = line.split()
            n_values += len(parts) - 1
            if n_values > self.limits.max_definition_values:
                raise self.over(ln, "max_definition_values", n_values, "[DEFINITIONS] values")
            definitions[parts[0]] = parts[1:]
            if parts[0] in DEFAULT_RASTERS or parts[0] in ("FOV", "TotalDuration", "B0"):
                try:
                    vals = [float(p) for p in parts[1:]]
                except ValueError:
                    raise self.error(ln, f"[DEFINITIONS] {parts[0]}: non-numeric value") from None
                if not vals or not all(np.isfinite(vals)):
                    raise self.error(ln, f"[DEFINITIONS] {parts[0]}: needs finite numbers")
                if parts[0] in DEFAULT_RASTERS and vals[0] <= 0:
                    raise self.error(ln, f"[DEFINITIONS] {parts[0]} must be positive")

        # Event tables, normalised to the 1.5 column layout (see SeqFile).
        rf_rows = sections.get("RF", [])
        if v15:
            rf = self.table("RF", rf_rows, 12, text_columns=1, int_columns=(2, 3, 4))
        elif v14:
            t = self.table("RF", rf_rows, 8, int_columns=(2, 3, 4))
            d = t.data  # amp mag phase time delay freq phase
            t.data = np.column_stack(
                [d[:, :4], np.full(len(d), np.nan), d[:, 4], np.zeros((len(d), 2)), d[:, 5:7]]
            )
            t.text = [["u"]] * len(d)
            rf = t
        else:
            t = self.table("RF", rf_rows, 7, int_columns=(2, 3))
            d = t.data  # amp mag phase delay freq phase
            z = np.zeros(len(d))
            t.data = np.column_stack(
                [d[:, :3], z, np.full(len(d), np.nan), d[:, 3], z, z, d[:, 4:6]]
            )
            t.text = [["u"]] * len(d)
            rf = t
        if len(rf.ids):
            rf.data[:, 4] *= 1e-6  # center us -> s
            rf.data[:, 5] *= 1e-6  # delay us -> s
            for r, (use,) in enumerate(rf.text):
                if use not in "eriospu" or len(use) != 1:
                    raise self.error(int(rf.lines[r]), f"[RF] unknown use {use!r}")

        grad_rows = sections.get("GRADIENTS", [])
        if v15:
            grad = self.table("GRADIENTS", grad_rows, 7, int_columns=(4,))
            # time_id may be -1 (oversampled), so it is not in int_columns; check it separately
        elif v14:
            t = self.table("GRADIENTS", grad_rows, 5, int_columns=(2,))
            d = t.data  # amp shape time delay
            nan = np.full(len(d), np.nan)
            t.data = np.column_stack([d[:, 0], nan, nan, d[:, 1:4]])
            grad = t
        else:
            t = self.table("GRADIENTS", grad_rows, 4, int_columns=(2,))
            d = t.data  # amp shape delay
            nan = np.full(len(d), np.nan)
            t.data = np.column_stack([d[:, 0], nan, nan, d[:, 1], np.zeros(len(d)), d[:, 2]])
            grad = t
        if len(grad.ids):
            tid = grad.data[:, 4]
            bad = (tid != np.round(tid)) | (tid < -1)
            if bad.any():
                r = int(np.argmax(bad))
                raise self.error(int(grad.lines[r]), f"[GRADIENTS] bad time shape id {tid[r]}")
            grad.data[:, 5] *= 1e-6

        trap = self.table("TRAP", sections.get("TRAP", []), 6)
        if len(trap.ids):
            trap.data[:, 1:5] *= 1e-6
            neg = (trap.data[:, 1:5] < 0).any(axis=1)
            if neg.any():
                r = int(np.argmax(neg))
                raise self.error(int(trap.lines[r]), "[TRAP] negative time")
        overlap = np.intersect1d(trap.ids, grad.ids)
        if len(overlap):
            r = int(np.flatnonzero(trap.ids == overlap[0])[0])
            raise self.error(
                int(trap.lines[r]),
                f"gradient id {int(overlap[0])} is defined in [TRAP] and [GRADIENTS]",
            )

        adc_rows = sections.get("ADC", [])
        if v15:
            adc = self.table("ADC", adc_rows, 9, int_columns=(1, 8))
        else:
            t = self.table("ADC", adc_rows, 6, int_columns=(1,))
            d = t.data  # num dwell delay freq phase
            z = np.zeros(len(d))
            t.data = np.column_stack([d[:, :3], z, z, d[:, 3:5], z])
            adc = t
        if len(adc.ids):
            adc.data[:, 1] *= 1e-9
            adc.data[:, 2] *= 1e-6
            bad = adc.data[:, 1] <= 0
            if bad.any():
                r = int(np.argmax(bad))
                raise self.error(int(adc.lines[r]), "[ADC] dwell time must be positive")
            big = adc.data[:, 0] > self.limits.max_adc_samples
            if big.any():
                r = int(np.argmax(big))
                raise self.over(
                    int(adc.lines[r]),
                    "max_adc_samples",
                    int(adc.data[r, 0]),
                    f"[ADC] event {int(adc.ids[r])}: samples",
                )

        for tab, col, what in ((rf, 5, "RF"), (grad, 5, "GRADIENTS"), (adc, 2, "ADC")):
            negative = tab.data[:, col] < 0 if len(tab.ids) else np.zeros(0, bool)
            if negative.any():
                r = int(np.argmax(negative))
                raise self.error(int(tab.lines[r]), f"[{what}] negative delay")

        if "DELAYS" in sections and v14:
            raise self.error(
                header_lines["DELAYS"], "[DELAYS] is not allowed in format 1.4 and later"
            )
        delays = self.table("DELAYS", sections.get("DELAYS", []), 2)
        if len(delays.ids):
            delays.data[:, 0] *= 1e-6

        extensions = self.table(
            "EXTENSIONS", sections.get("EXTENSIONS", []), 4, int_columns=(1, 2, 3)
        )
        extension_names: dict[int, str] = {}
        extension_tables: dict[str, Table] = {}
        for ext_name, (type_id, ln) in ext_declared.items():
            rows = sections[f"extension {ext_name}"]
            if ext_name not in SUPPORTED_EXTENSIONS:
                warnings.warn(
                    f"{self.path}:{ln}: skipping unknown Pulseq extension {ext_name}",
                    stacklevel=4,
                )
                continue
            extension_names[type_id] = ext_name
            if ext_name in ("LABELSET", "LABELINC"):
                tab = self.table(ext_name, rows, 3, text_columns=1)
            elif ext_name == "TRIGGERS":
                tab = self.table(ext_name, rows, 5, int_columns=(1, 2))
                tab.data[:, 2:4] *= 1e-6
            elif ext_name == "DELAYS":  # soft delays: id num offset factor hint
                tab = self.table(ext_name, rows, 5, text_columns=1, int_columns=(1,))
                tab.data[:, 1] *= 1e-6
            elif ext_name == "ROTATIONS":  # quaternion
                tab = self.table(ext_name, rows, 5)
            else:  # RF_SHIMS: id num_channels amp1 phase1 amp2 phase2 ...
                tab = self._rf_shims(rows)
            extension_tables[ext_name] = tab
        self._check_label_names(extension_tables)

        # BLOCKS
        block_rows = sections.get("BLOCKS", [])
        if len(block_rows) > self.limits.max_blocks:
            raise self.over(
                block_rows[self.limits.max_blocks][0], "max_blocks", len(block_rows), "blocks"
            )
        if combined <= 1_002_001:
            bt = self.table("BLOCKS", block_rows, (7, 8), int_columns=tuple(range(1, 7)))
        else:
            bt = self.table("BLOCKS", block_rows, 8, int_columns=tuple(range(1, 8)))
        b = bt.data.astype(np.int64)  # dur|delay rf gx gy gz adc ext
        # Blocks run in file order, which Pulseq requires to be ascending by id.
        blocks = np.column_stack([b[:, 1:7], b[:, 0]])
        shapes = self._shapes(sections.get("SHAPES", []), v14)

        seq = SeqFile(
            path=self.path,
            version=ver,
            definitions=definitions,
            block_ids=bt.ids,
            blocks=blocks,
            block_lines=bt.lines,
            block_durations=np.zeros(len(bt.ids)),
            rf=rf,
            grad=grad,
            trap=trap,
            adc=adc,
            delays=delays,
            extensions=extensions,
            extension_names=extension_names,
            extension_tables=extension_tables,
            shapes=shapes,
            limits=self.limits,
        )
        if v14:
            seq.block_durations = b[:, 0] * seq.raster("BlockDurationRaster")
        if "SIGNATURE" in sections:
            seq.signature_ok = self._check_signature(sections["SIGNATURE"])
        return seq

    def _check_label_names(self, tables: dict[str, Table]) -> None:
        seen: set[str] = set()
        for name in ("LABELSET", "LABELINC"):
            tab = tables.get(name)
            if tab is None:
                continue
            for r, (label,) in enumerate(tab.text):
                if label not in seen:
                    seen.add(label)
                    if len(seen) > self.limits.max_label_names:
                        raise self.over(
                            int(tab.lines[r]), "max_label_names", len(seen), "distinct labels"
                        )

    def _rf_shims(self, rows: list[tuple[int, str]]) -> Table:
        ids = np.zeros(len(rows), np.int64)
        counts = np.zeros(len(rows), np.int64)
        flat = array("d")  # all values after the id, row after row (8 bytes each)
        max_channels = self.limits.max_shim_channels
        for i, (ln, line) in enumerate(rows):
            tok = line.split()
            if len(tok) > 2 + 2 * max_channels:
                raise self.over(ln, "max_shim_channels", (len(tok) - 2) // 2, "[RF_SHIMS] channels")
            try:
                vals = [float(t) for t in tok]
            except ValueError:
                raise self.error(ln, f"[RF_SHIMS] non-numeric field in {line[:60]!r}") from None
            if (
                len(vals) < 2
                or not all(math.isfinite(v) for v in vals)
                or not (0 <= vals[0] < _MAX_INT and vals[0] == int(vals[0]))
                or vals[1] != int(vals[1])
                or len(vals) != 2 + 2 * int(vals[1])
            ):
                raise self.error(ln, "[RF_SHIMS] expected 'id num_channels amp1 phase1 ...'")
            ids[i] = int(vals[0])
            counts[i] = len(vals) - 1
            flat.extend(vals[1:])
        # The table is rows x widest row, padded: a wide row among many narrow ones multiplies
        # the padding, so it may take at most a quarter of the memory budget.
        width = int(counts.max()) if len(rows) else 0
        needed = 4 * 8 * len(rows) * width
        if needed > self.limits.max_memory_bytes:
            raise self.over(
                None, "max_memory_bytes", needed, "[RF_SHIMS] table bytes x 4 (rows x widest row)"
            )
        order = np.argsort(ids, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        row_of_value = np.repeat(rank, counts)
        column = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
        arr = np.full((len(rows), width), np.nan)
        arr[row_of_value, column] = np.frombuffer(flat, dtype=np.float64)
        lines = np.fromiter((ln for ln, _ in rows), np.int64, len(rows))
        return Table(ids[order], arr, lines[order])

    def _shapes(self, rows: list[tuple[int, str]], v14: bool) -> dict[int, Shape]:
        # First the headers of all shapes (id, num_samples, where the data rows are), so that
        # the per-shape and total sample bounds hold before anything is decompressed.
        headers: list[tuple[int, int, int, int, int, int]] = []  # id, num, ln, ln2, i0, i1
        seen: set[int] = set()
        total = 0
        limits = self.limits
        i = 0
        n = len(rows)
        while i < n:
            ln, line = rows[i]
            parts = line.split()
            if len(parts) != 2 or parts[0] != "shape_id":
                raise self.error(ln, f"[SHAPES] expected 'shape_id N', got {line[:40]!r}")
            try:
                shape_id = int(parts[1])
            except ValueError:
                raise self.error(ln, f"[SHAPES] non-numeric shape id {parts[1]!r}") from None
            if shape_id in seen:
                raise self.error(ln, f"[SHAPES] shape id {shape_id} is defined twice")
            seen.add(shape_id)
            if i + 1 >= n or not rows[i + 1][1].startswith("num_samples"):
                raise self.error(ln, f"[SHAPES] shape {shape_id}: 'num_samples N' missing")
            ln2, line2 = rows[i + 1]
            parts = line2.split()
            try:
                num = int(parts[1]) if len(parts) == 2 else -1
            except ValueError:
                num = -1
            if num < 0:
                raise self.error(ln2, f"[SHAPES] shape {shape_id}: bad num_samples {line2[:40]!r}")
            if num > limits.max_shape_samples:
                raise self.over(
                    ln2, "max_shape_samples", num, f"[SHAPES] shape {shape_id}: num_samples"
                )
            total += num
            if total > limits.max_total_shape_samples:
                raise self.over(
                    ln2, "max_total_shape_samples", total, "[SHAPES] num_samples summed"
                )
            j = i + 2
            while j < n and not rows[j][1].startswith("shape_id"):
                j += 1
            headers.append((shape_id, num, ln, ln2, i + 2, j))
            i = j

        shapes: dict[int, Shape] = {}
        for shape_id, num, ln, ln2, i0, i1 in headers:
            values = [r[1] for r in rows[i0:i1]]
            try:
                data = np.array(values, dtype=np.float64)
            except ValueError:
                for lnv, v in rows[i0:i1]:
                    try:
                        float(v)
                    except ValueError:
                        raise self.error(lnv, f"[SHAPES] non-numeric sample {v[:40]!r}") from None
                raise  # pragma: no cover
            if not np.isfinite(data).all():
                raise self.error(ln, f"[SHAPES] shape {shape_id} has non-finite samples")
            samples: np.ndarray | None
            if v14 and len(data) == num:
                samples = data  # 1.4+: stored uncompressed when nothing was gained
            else:
                samples = decompress_shape(data, num)
                if samples is None:
                    last = rows[i1 - 1][0] if i1 > i0 else ln2
                    raise self.error(
                        last,
                        f"[SHAPES] shape {shape_id}: compressed data does not expand to "
                        f"num_samples={num} (file truncated?)",
                    )
            shapes[shape_id] = Shape(samples, ln)
        return shapes

    def _check_signature(self, rows: list[tuple[int, str]]) -> bool | None:
        fields = dict(line.split(None, 1) for _, line in rows if len(line.split(None, 1)) == 2)
        if fields.get("Type", "").lower() != "md5" or "Hash" not in fields:
            return None
        # The hash covers the file up to (not including) the newline before [SIGNATURE].
        idx = self.text.find("\n[SIGNATURE]")
        if idx < 0:
            return None
        digest = hashlib.md5(self.text[:idx].encode("utf-8"), usedforsecurity=False).hexdigest()
        ok = digest == fields["Hash"].strip().lower()
        if not ok:
            warnings.warn(
                f"{self.path}: [SIGNATURE] md5 does not match the content (edited by hand?)",
                stacklevel=4,
            )
        return ok


def read_seq_text(text: str, path: str = "<text>", *, limits: SeqLimits | None = None) -> SeqFile:
    """Parse the content of a ``.seq`` file.

    Parameters
    ----------
    text
        The file content.
    path
        Name used in error messages.
    limits
        Bounds on what the file may make us allocate; default :data:`DEFAULT_SEQ_LIMITS`. They
        are kept in the result (``SeqFile.limits``) for the conversion.

    Raises
    ------
    SeqFormatError
        On any malformed content; nothing partial is returned.
    SeqLimitError
        The file needs more than ``limits`` allow (a :class:`SeqFormatError` too).
    """
    parser = _Parser(text, path, check_limits(limits))
    seq = parser.parse()
    del parser  # its per-line strings are no longer needed while the blocks are checked
    from mr0core.pulseq.convert import validate_blocks

    validate_blocks(seq)
    return seq


def read_seq(path: str | PathLike[str], *, limits: SeqLimits | None = None) -> SeqFile:
    """Read and validate a ``.seq`` file.

    Parameters
    ----------
    path
        The file.
    limits
        Bounds on what the file may make us allocate; default :data:`DEFAULT_SEQ_LIMITS`.
        ``max_file_bytes`` is checked before the file is read.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    SeqFormatError
        The file is malformed; the message names the file, the line and the problem.
    SeqLimitError
        The file needs more than ``limits`` allow (a :class:`SeqFormatError` too).
    """
    limits = check_limits(limits)
    p = Path(path)
    size = p.stat().st_size
    if size > limits.max_file_bytes:
        raise SeqLimitError(
            str(p), None, "max_file_bytes", limits.max_file_bytes, size, "file size in bytes"
        )
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SeqFormatError(str(p), line, "not UTF-8 text") from None
    del raw
    return read_seq_text(text, str(p), limits=limits)

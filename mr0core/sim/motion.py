"""Subject motion: MR-zero's motion interface, its conventions, and motion models.

A phantom (:class:`~mr0core.phantom.sim_data.SimData`, ``VoxelGridPhantom``,
``CustomVoxelPhantom``) may carry one of two callables:

``phantom_motion(time [N]) -> (rotation [N, 3, 3], offset [N, 3])``
    Rigid motion. A voxel at ``p`` (m, row vector) is at ``p @ rotation + offset`` (m) at time
    ``time``: the rotation turns the phantom about its origin (``voxel_pos = 0``, the isocentre of
    a grid phantom), then the offset moves it.
``voxel_motion(time [N]) -> positions [N, voxels, 3]``
    A free trajectory per voxel: absolute positions in m (not displacements). It wins when both
    are set.

Conventions (measured on MRzeroCore 1.2.0 as a black box,
``tests/mr0core/sim/test_reference_motion.py``):

- ``time`` is a float32 tensor of absolute sequence times in s: the functions are called once per
  repetition with the midpoints of its events (the first repetition's pulse is at t = 0; a
  repetition starts where the previous one's events end).
- During an event with gradient moment ``Δk`` (1/m) a transverse state gains the phase
  ``-2π Δk · r(t_mid)``, with ``r`` the voxel's position at the event's midpoint. So the phase of a
  state is the integral of the gradient against the moving position, sampled once per event
  (the sequence's events are the ADC samples, so a readout is sampled per sample).
- The voxel's shape (its k-space response), T2′, diffusion and B0 travel with the voxel unchanged
  (a rotation does not turn the voxel's shape).
- Pulses act at the repetition's start on the magnetisation where it is; the phase a state carries
  into later repetitions (through pulses, as longitudinal or refocused magnetisation) is kept
  with the state.

One deliberate difference: MRzeroCore 1.2.0 applies the phase a state gained in earlier
repetitions with the opposite sign (a subject that sits still at an offset from the first event on
does not give the Fourier shift of the still image after the first repetition;
``tests/mr0core/sim/test_reference_motion.py`` shows it). mr0core keeps the physical sign, so a
constant offset is exactly the Fourier shift theorem. Where the signal comes from magnetisation
excited in the same repetition (spoiled gradient echoes), both agree.

Motion models (:class:`RigidMotion`, :class:`MotionLog`) make such callables from a few numbers or
from a tracking log, for the twin's ``motion`` parameter and ``mr0 simulate --motion``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

MotionFunction = Callable[[torch.Tensor], Any]

MAX_LOG_ROWS = 1_000_000
"""Rows a motion log may have (a tracking system at 1 kHz for about 17 minutes)."""

MAX_LOG_BYTES = 64 * 1024 * 1024
"""Bytes a motion log file may have."""

MAX_SPEED = 10.0
"""m/s (translation) and 10⁴ °/s (rotation): larger rates are refused as a unit mistake."""


class MotionError(ValueError):
    """A motion function or model gave something unusable (named in the message)."""


def check_motion(value: Any, name: str) -> Any:
    """Return ``value`` if it is ``None`` or callable, else raise :class:`TypeError` naming it."""
    if value is not None and not callable(value):
        raise TypeError(
            f"{name} must be a function of time (a tensor of s) or None, got {type(value).__name__}"
        )
    return value


def _as_tensor(x: Any, what: str, shape: tuple[int, ...], dev: torch.device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))
    if t.is_complex() or not t.is_floating_point():
        t = t.real if t.is_complex() else t
        t = t.to(torch.float32)
    if tuple(t.shape) != shape:
        raise MotionError(f"{what} has shape {tuple(t.shape)}, expected {shape}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise MotionError(f"{what} is not finite everywhere")
    return t.to(dev)


class MotionSampler:
    """Positions of a phantom's voxels at given times, in the simulation's voxel order.

    Parameters
    ----------
    data
        The phantom (``SimData``); its ``phantom_motion`` / ``voxel_motion`` are used.
    pos
        ``[V, 3]`` voxel positions in m as the simulation holds them (float32, maybe reordered).
    order
        Optional ``[V]`` index: the simulation's voxel ``i`` is ``data``'s voxel ``order[i]``.
    """

    def __init__(self, data: Any, pos: torch.Tensor, order: torch.Tensor | None = None) -> None:
        self.voxel = data.voxel_motion
        self.rigid = data.phantom_motion if self.voxel is None else None
        self.pos = pos
        self.order = order
        self.n_vox = int(data.voxel_count)

    @staticmethod
    def of(data: Any, pos: torch.Tensor) -> MotionSampler | None:
        """Return a sampler for ``data``, or None when it does not move."""
        if (
            getattr(data, "voxel_motion", None) is None
            and getattr(data, "phantom_motion", None) is None
        ):
            return None
        return MotionSampler(data, pos)

    def reorder(self, order: torch.Tensor) -> None:
        """Follow a permutation of the voxels (``pos`` is permuted by the caller)."""
        self.order = order if self.order is None else self.order[order]

    def positions(self, times: torch.Tensor) -> torch.Tensor:
        """Return the voxel positions ``[N, V, 3]`` in m at ``times [N]`` (s)."""
        n = int(times.shape[0])
        dev = self.pos.device
        if self.voxel is not None:
            out = self.voxel(times)
            out = _as_tensor(out, "voxel_motion(time)", (n, self.n_vox, 3), dev).to(self.pos.dtype)
            return out if self.order is None else out[:, self.order]
        assert self.rigid is not None  # a sampler exists only for a moving phantom
        rot, off = _rigid(self.rigid, times, dev)
        return torch.einsum("vi,nij->nvj", self.pos, rot.to(self.pos.dtype)) + off[:, None].to(
            self.pos.dtype
        )

    def requires_grad(self, times: torch.Tensor) -> bool:
        """Whether the positions at ``times`` need autograd (motion parameters to optimise)."""
        return bool(self.positions(times).requires_grad)


def _rigid(
    fn: MotionFunction, times: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    n = int(times.shape[0])
    out = fn(times)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise MotionError("phantom_motion(time) must return (rotation [N, 3, 3], offset [N, 3])")
    rot = _as_tensor(out[0], "phantom_motion(time)[0] (rotation)", (n, 3, 3), dev)
    off = _as_tensor(out[1], "phantom_motion(time)[1] (offset)", (n, 3), dev)
    return rot, off


def event_midpoints(event_time: torch.Tensor, start: float) -> torch.Tensor:
    """Return the absolute midpoints ``[E]`` (s, float32) of events of durations ``event_time``."""
    dt = event_time.detach().double().cpu()
    mid = start + torch.cumsum(dt, 0) - dt / 2
    return mid.to(torch.float32).to(event_time.device)


def motion_phase(
    sampler: MotionSampler, times: torch.Tensor, moments: torch.Tensor
) -> torch.Tensor:
    """Return the cumulative phase deviations ``[E, V]`` (cycles) of one repetition's events.

    ``moments [E, 3]`` (1/m): each event's gradient moment. Entry ``e`` is
    ``Σ_{e' ≤ e} Δk_e' · (r_e' − p)``: what a transverse state gains up to the end of event ``e``
    beyond the still phantom's ``Δk · p``.
    """
    r = sampler.positions(times)  # [E, V, 3]
    d = r - sampler.pos[None]
    return torch.cumsum(torch.einsum("evj,ej->ev", d, moments.to(d.dtype)), 0)


# ---------------------------------------------------------------------- motion models


def rotation_matrices(angles_deg: torch.Tensor) -> torch.Tensor:
    """Return rotation matrices ``[N, 3, 3]`` from angles ``[N, 3]`` (°) about x, then y, then z.

    The matrix acts on row vectors as ``p @ R`` (MR-zero's ``phantom_motion`` convention), and
    turns a point right-handedly about each axis in turn: ``p @ R = R_z R_y R_x p``.
    """
    a = torch.deg2rad(angles_deg)
    cx, cy, cz = torch.cos(a).unbind(-1)
    sx, sy, sz = torch.sin(a).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, -1) for r in rows], -2)

    rx = mat([[one, zero, zero], [zero, cx, -sx], [zero, sx, cx]])
    ry = mat([[cy, zero, sy], [zero, one, zero], [-sy, zero, cy]])
    rz = mat([[cz, -sz, zero], [sz, cz, zero], [zero, zero, one]])
    column = rz @ ry @ rx  # acts on column vectors
    return column.transpose(-1, -2)


class RigidMotion:
    """A rigid drift, turn and periodic (breathing-like) translation, as ``phantom_motion``.

    Position of a voxel at ``p`` at time ``t``: ``p @ R(t) + offset(t)`` with ``R(t)`` the
    rotation by ``rotation_deg_per_s · t`` (about x, y, z: :func:`rotation_matrices`) and
    ``offset(t) = translation_mm_per_s · t + amplitude_mm · sin(2π t / period_s)``.

    Parameters
    ----------
    translation_mm_per_s, rotation_deg_per_s, breathing_amplitude_mm
        ``[3]`` (x, y, z) in mm/s, °/s and mm.
    breathing_period_s
        Period of the breathing translation in s (needed when its amplitude is not zero).
    """

    KEYS = (
        "translation_mm_per_s",
        "rotation_deg_per_s",
        "breathing_amplitude_mm",
        "breathing_period_s",
    )

    def __init__(
        self,
        translation_mm_per_s: SequenceABC[float] = (0.0, 0.0, 0.0),
        rotation_deg_per_s: SequenceABC[float] = (0.0, 0.0, 0.0),
        breathing_amplitude_mm: SequenceABC[float] = (0.0, 0.0, 0.0),
        breathing_period_s: float = 4.0,
    ) -> None:
        self.translation = _vec3(translation_mm_per_s, "translation_mm_per_s", 1000 * MAX_SPEED)
        self.rotation = _vec3(rotation_deg_per_s, "rotation_deg_per_s", 1000 * MAX_SPEED)
        self.amplitude = _vec3(breathing_amplitude_mm, "breathing_amplitude_mm", 1000.0)
        period = float(breathing_period_s)
        if not (math.isfinite(period) and period > 0):
            raise MotionError(f"breathing_period_s must be a positive time in s, got {period}")
        self.period = period

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RigidMotion:
        """Return the model of a JSON object with :attr:`KEYS` (unknown keys raise, naming them)."""
        unknown = sorted(set(d) - set(cls.KEYS) - {"model"})
        if unknown:
            raise MotionError(f"rigid motion: unknown keys {unknown}; known: {list(cls.KEYS)}")
        return cls(**{k: d[k] for k in cls.KEYS if k in d})

    def describe(self) -> dict[str, Any]:
        """Return the parameters as plain data (for image meta)."""
        return {
            "model": "rigid",
            "translation_mm_per_s": self.translation.tolist(),
            "rotation_deg_per_s": self.rotation.tolist(),
            "breathing_amplitude_mm": self.amplitude.tolist(),
            "breathing_period_s": self.period,
        }

    def to_spec(self) -> dict[str, Any]:
        """Return the model as the JSON object :func:`motion_from_spec` reads."""
        return self.describe()

    def __call__(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(rotation [N, 3, 3], offset [N, 3] m)`` at ``time [N]`` s."""
        t = time.detach().to(torch.float64)[:, None]
        tr = torch.as_tensor(self.translation, dtype=torch.float64)
        ro = torch.as_tensor(self.rotation, dtype=torch.float64)
        am = torch.as_tensor(self.amplitude, dtype=torch.float64)
        offset = (tr * t + am * torch.sin(2 * math.pi * t / self.period)) / 1000.0
        rot = rotation_matrices(ro * t)
        return rot.to(torch.float32).to(time.device), offset.to(torch.float32).to(time.device)


def _vec3(value: Any, name: str, limit: float) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise MotionError(f"{name} must be three numbers, got {value!r}") from exc
    if v.shape != (3,) or not np.isfinite(v).all():
        raise MotionError(f"{name} must be three finite numbers, got {value!r}")
    if np.abs(v).max() > limit:
        raise MotionError(f"{name} = {v.tolist()} exceeds {limit:g} (a unit mistake?)")
    return v


class MotionLog:
    """A tracking log (time, three rotations, three translations) as ``phantom_motion``.

    The log is a CSV or TSV table, as tracking systems write: one row per sample, columns
    ``time`` (s), ``rx``, ``ry``, ``rz`` (°, about x, y, z: :func:`rotation_matrices`) and ``tx``,
    ``ty``, ``tz`` (mm). A header row naming them (any order; ``t``/``time_s``, ``rot_x``…,
    ``trans_x``… are accepted) is optional: without one the columns are in that order. Rows are
    sorted by time; between samples the angles and translations are interpolated linearly, and
    held constant before the first and after the last sample. Times are sequence times (t = 0 at
    the first pulse); ``time_offset_s`` shifts the log (sequence time = log time − offset).
    """

    COLUMNS = ("time", "rx", "ry", "rz", "tx", "ty", "tz")
    _ALIASES: ClassVar[dict[str, str]] = {
        "t": "time", "time_s": "time", "seconds": "time",
        "rot_x": "rx", "rot_y": "ry", "rot_z": "rz",
        "trans_x": "tx", "trans_y": "ty", "trans_z": "tz",
        "x": "tx", "y": "ty", "z": "tz",
    }  # fmt: skip

    def __init__(self, table: np.ndarray, time_offset_s: float = 0.0, source: str = "") -> None:
        if table.ndim != 2 or table.shape[1] != 7 or len(table) == 0:
            raise MotionError(f"motion log needs rows of 7 numbers, got shape {table.shape}")
        if not np.isfinite(table).all():
            raise MotionError("motion log has values that are not finite")
        if np.abs(table[:, 4:]).max() > 1000.0 or np.abs(table[:, 1:4]).max() > 360.0:
            raise MotionError("motion log: translations beyond 1 m or angles beyond 360°")
        order = np.argsort(table[:, 0], kind="stable")
        self.table = table[order]
        self.time_offset = float(time_offset_s)
        self.source = source

    @classmethod
    def read(cls, path: str | Path, time_offset_s: float = 0.0) -> MotionLog:
        """Read a log file (size-bounded by :data:`MAX_LOG_BYTES`)."""
        p = Path(path)
        if p.stat().st_size > MAX_LOG_BYTES:
            raise MotionError(f"{p}: larger than {MAX_LOG_BYTES} bytes")
        return cls.parse(p.read_text(encoding="utf-8", errors="replace"), time_offset_s, p.name)

    @classmethod
    def parse(cls, text: str, time_offset_s: float = 0.0, source: str = "") -> MotionLog:
        """Parse a log's text (CSV or TSV; ``#`` lines are comments)."""
        if len(text) > MAX_LOG_BYTES:
            raise MotionError(f"motion log larger than {MAX_LOG_BYTES} bytes")
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if not lines:
            raise MotionError("motion log is empty")
        if len(lines) > MAX_LOG_ROWS + 1:
            raise MotionError(f"motion log has more than {MAX_LOG_ROWS} rows")
        delim = "\t" if "\t" in lines[0] else ("," if "," in lines[0] else None)
        rows = list(csv.reader(io.StringIO("\n".join(lines)), delimiter=delim or " ",
                               skipinitialspace=True))  # fmt: skip
        rows = [[c for c in r if c != ""] for r in rows]
        header = rows[0]
        cols = list(range(7))
        if not _numeric(header):
            names = [cls._ALIASES.get(h.strip().lower(), h.strip().lower()) for h in header]
            missing = [c for c in cls.COLUMNS if c not in names]
            if missing:
                raise MotionError(f"motion log header {header} lacks columns {missing}")
            cols = [names.index(c) for c in cls.COLUMNS]
            rows = rows[1:]
        table = np.empty((len(rows), 7))
        for i, r in enumerate(rows):
            try:
                table[i] = [float(r[c]) for c in cols]
            except (ValueError, IndexError) as exc:
                raise MotionError(f"motion log row {i + 1}: {r!r} is not 7 numbers") from exc
        return cls(table, time_offset_s, source)

    def describe(self) -> dict[str, Any]:
        """Return what is simulated, as plain data (for image meta)."""
        return {
            "model": "log",
            "source": self.source,
            "samples": len(self.table),
            "time_range_s": [float(self.table[0, 0]), float(self.table[-1, 0])],
            "time_offset_s": self.time_offset,
        }

    def to_spec(self) -> dict[str, Any]:
        """Return the log as the JSON object :func:`motion_from_spec` reads (its text)."""
        text = (
            ",".join(self.COLUMNS)
            + "\n"
            + "\n".join(",".join(repr(float(v)) for v in row) for row in self.table)
        )
        return {"model": "log", "log": text, "time_offset_s": self.time_offset}

    def __call__(self, time: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(rotation [N, 3, 3], offset [N, 3] m)`` at sequence times ``time [N]`` s."""
        t = time.detach().double().cpu().numpy() + self.time_offset
        tt = self.table[:, 0]
        vals = np.stack([np.interp(t, tt, self.table[:, c]) for c in range(1, 7)], axis=1)
        rot = rotation_matrices(torch.from_numpy(vals[:, :3]))
        off = torch.from_numpy(vals[:, 3:] / 1000.0)
        return rot.to(torch.float32).to(time.device), off.to(torch.float32).to(time.device)


def _numeric(cells: list[str]) -> bool:
    try:
        [float(c) for c in cells]
    except ValueError:
        return False
    return True


def motion_from_spec(spec: Any) -> RigidMotion | MotionLog:
    """Return a motion model from the twin's ``motion`` parameter (JSON).

    ``{"model": "rigid", "translation_mm_per_s": [...], "rotation_deg_per_s": [...],
    "breathing_amplitude_mm": [...], "breathing_period_s": 4}`` or ``{"model": "log", "log":
    "<CSV/TSV text>", "time_offset_s": 0}``; a JSON string is parsed first. A log travels as
    text in the job (a client never names a file for the server to open).
    """
    if isinstance(spec, (str, bytes)):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise MotionError(f"motion: not JSON ({exc})") from exc
    if not isinstance(spec, dict):
        raise MotionError("motion must be a JSON object with a 'model' key ('rigid' or 'log')")
    model = spec.get("model", "rigid")
    if model == "rigid":
        return RigidMotion.from_dict(spec)
    if model == "log":
        unknown = sorted(set(spec) - {"model", "log", "time_offset_s"})
        if unknown:
            raise MotionError(f"motion log: unknown keys {unknown}")
        text = spec.get("log")
        if not isinstance(text, str):
            raise MotionError("motion log: 'log' must be the CSV/TSV text of the log")
        return MotionLog.parse(text, float(spec.get("time_offset_s", 0.0)), "job")
    raise MotionError(f"motion model must be 'rigid' or 'log', got {model!r}")


def motion_spec(phantom_motion: Any, voxel_motion: Any) -> dict[str, Any]:
    """Return a phantom's motion as the plain data :func:`motion_from_spec` reads.

    Raises
    ------
    TypeError
        For ``voxel_motion``, or a ``phantom_motion`` that is not a motion model (functions
        cannot be written as plain data).
    """
    if voxel_motion is not None:
        raise TypeError("voxel_motion is a function and cannot be saved as plain data")
    if isinstance(phantom_motion, (RigidMotion, MotionLog)):
        return phantom_motion.to_spec()
    raise TypeError(
        f"phantom_motion is a {type(phantom_motion).__name__}, not a RigidMotion or MotionLog: "
        "a function cannot be saved as plain data"
    )

"""Job input and result files that cannot carry code, in folders a job cannot leave.

An in-process submitter (the server's twin and recon gadgets) hands a job objects: a
:class:`~mr0core.Sequence`, a built :class:`~mr0core.phantom.SimData`, raw data as a
:class:`~mr0core.recon.KData`. They travel as files in a folder of the scheduler's store
(:meth:`scheduler.service.Scheduler.inputs_folder`). Two rules keep a job parameter from
running code or reading other files:

Plain data only
    :func:`save_object` writes ``{"format": "mr0-job-file", "version": 1, "kind": ...,
    "state": ...}`` with ``torch.save``, where ``state`` is the object's plain-data state
    (``Sequence.to_state``, ``SimData.to_state``, :func:`kdata_state`): CPU tensors, ints,
    floats, bools, strings, lists and dicts. :func:`load_object` reads it with
    ``torch.load(weights_only=True)``, which refuses any pickled global (a class, a function,
    ``os.system``), and rebuilds the object from the state. A file holding anything else is a
    :class:`JobFileError`, and nothing in it runs.
Confined paths
    A parameter that names a folder (``inputs``) must resolve, symbolic links followed, to a
    folder directly inside the scheduler's ``inputs/`` folder, and the files read from it must
    be regular files, not links (:func:`scheduler.paths.confined_folder`). Anything else is an
    :class:`InputPathError` naming the value.

Files are written ``0600``; the paths and errors live in :mod:`scheduler.paths`.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import torch

from mr0core.phantom.sim_data import SimData
from mr0core.recon.kdata import KData
from mr0core.sequence import Sequence

from .paths import InputPathError, JobFileError, open_private

__all__ = [
    "FORMAT",
    "KINDS",
    "InputPathError",
    "JobFileError",
    "kdata_from_state",
    "kdata_state",
    "load_object",
    "save_object",
]

FORMAT = "mr0-job-file"
"""The ``format`` entry of a job file."""

_VERSION = 1

KINDS = ("Sequence", "SimData", "KData", "dict")
"""What a job file may hold (``dict``: a dict of plain data, e.g. a recon result)."""


# -- KData (its dataclass fields, each kept explicitly) --------------------------------------

_KDATA_TENSORS = ("signal", "readout_start", "readout_length", "center_sample", "sample_time_s",
                  "flags")  # fmt: skip
_KDATA_OPTIONAL = ("kspace", "noise")
_KDATA_TUPLES = ("encoded_matrix", "recon_matrix", "encoded_fov_m", "recon_fov_m")
_KDATA_SCALARS = {"center_line": int, "center_partition": int, "trajectory": str}
_KDATA_DROPPED = ("header",)  # the parsed ISMRMRD header object: the recon does not read it
_KDATA_OPTIONAL_FLOATS = ("noise_sample_time_s",)  # s, or None (unknown)


def kdata_state(kd: KData) -> dict[str, Any]:
    """Return a :class:`~mr0core.recon.KData` as plain data (CPU tensors, tuples as lists).

    The parsed ``header`` object is not kept (the reconstruction does not use it).

    Raises
    ------
    TypeError
        When ``KData`` has a field this function does not know (so a new field is never
        dropped without a decision).
    """
    known = {*_KDATA_TENSORS, *_KDATA_OPTIONAL, *_KDATA_TUPLES, *_KDATA_SCALARS, *_KDATA_DROPPED,
             *_KDATA_OPTIONAL_FLOATS, "idx"}  # fmt: skip
    unknown = sorted({f.name for f in dataclasses.fields(KData)} - known)
    if unknown:
        raise TypeError(f"KData fields {unknown} have no plain-data form in kdata_state")
    state: dict[str, Any] = {name: getattr(kd, name).detach().cpu() for name in _KDATA_TENSORS}
    for name in _KDATA_OPTIONAL:
        value = getattr(kd, name)
        state[name] = None if value is None else value.detach().cpu()
    for name in _KDATA_TUPLES:
        state[name] = list(getattr(kd, name))
    for name, kind in _KDATA_SCALARS.items():
        state[name] = kind(getattr(kd, name))
    for name in _KDATA_OPTIONAL_FLOATS:
        value = getattr(kd, name)
        state[name] = None if value is None else float(value)
    state["idx"] = {k: v.detach().cpu() for k, v in kd.idx.items()}
    return state


def kdata_from_state(state: dict[str, Any]) -> KData:
    """Rebuild a :class:`~mr0core.recon.KData` from :func:`kdata_state` (checked by KData).

    Raises
    ------
    ValueError
        For a missing entry or one of the wrong type (the message names it), or data that
        ``KData`` itself refuses.
    """
    if not isinstance(state, dict):
        raise ValueError(f"a KData state is a dict, got {type(state).__name__}")
    args: dict[str, Any] = {}
    for name in (*_KDATA_TENSORS, *_KDATA_OPTIONAL):
        value = state.get(name)
        if value is None and name in _KDATA_OPTIONAL:
            args[name] = None
        elif not isinstance(value, torch.Tensor):
            raise ValueError(f"KData state: {name!r} is not a tensor")
        else:
            args[name] = value
    for name in _KDATA_TUPLES:
        value = state.get(name)
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"KData state: {name!r} must be a list of numbers, got {value!r}")
        args[name] = tuple(value)
    for name, kind in _KDATA_SCALARS.items():
        value = state.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"KData state: {name!r} must be a {kind.__name__}, got {value!r}")
        args[name] = value
    for name in _KDATA_OPTIONAL_FLOATS:
        value = state.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ValueError(f"KData state: {name!r} must be a number or None, got {value!r}")
        args[name] = None if value is None else float(value)
    idx = state.get("idx")
    if not isinstance(idx, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in idx.items()
    ):
        raise ValueError("KData state: 'idx' must be a dict of tensors")
    args["idx"] = dict(idx)
    return KData(**args)


# -- files -----------------------------------------------------------------------------------


def save_object(obj: Any, path: Path | str) -> Path:
    """Write a Sequence, SimData, KData or plain dict as a job file (``0600``, no link followed).

    Raises
    ------
    TypeError
        For another type, or a dict that holds something other than plain data and tensors.
    """
    if isinstance(obj, Sequence):
        kind, state = "Sequence", obj.to_state()
    elif isinstance(obj, SimData):
        kind, state = "SimData", obj.to_state()
    elif isinstance(obj, KData):
        kind, state = "KData", kdata_state(obj)
    elif isinstance(obj, dict):
        kind, state = "dict", _plain_tensors(obj, "dict")
    else:
        raise TypeError(f"a job file holds a {', '.join(KINDS)}, not a {type(obj).__name__}")
    path = Path(path)
    with open_private(path) as f:
        torch.save({"format": FORMAT, "version": _VERSION, "kind": kind, "state": state}, f)
    return path


def load_object(path: Path | str, kind: str) -> Any:
    """Read a job file written by :func:`save_object` and rebuild its ``kind`` of object.

    The file is opened without following a symbolic link and read with
    ``torch.load(weights_only=True)``: no pickled class or function is ever imported or called.

    Raises
    ------
    JobFileError
        For a missing file, a link or non-regular file, a file that is not plain data (e.g. a
        pickle of arbitrary objects), or one that holds another kind.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise JobFileError(f"job file {path} is missing") from None
    except OSError as exc:
        raise JobFileError(f"job file {path} cannot be opened (a link?): {exc}") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise JobFileError(f"job file {path} is not a regular file")
        try:
            data = torch.load(f, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise JobFileError(
                f"job file {path} is not plain data (nothing in it was run): "
                f"{type(exc).__name__}: {first}"
            ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise JobFileError(f"job file {path} is not an {FORMAT} file")
    if data.get("version") != _VERSION or data.get("kind") != kind:
        raise JobFileError(
            f"job file {path} holds {data.get('kind')!r} version {data.get('version')!r}; "
            f"expected {kind!r} version {_VERSION}"
        )
    state = data.get("state")
    try:
        if kind == "Sequence":
            return Sequence.from_state(state)
        if kind == "SimData":
            return SimData.from_state(state)
        if kind == "KData":
            return kdata_from_state(state)
    except (ValueError, TypeError) as exc:
        raise JobFileError(f"job file {path}: {exc}") from None
    if not isinstance(state, dict):
        raise JobFileError(f"job file {path}: a dict was expected, got {type(state).__name__}")
    return state


def _plain_tensors(value: Any, where: str) -> Any:
    """Check a dict of plain data and tensors (tuples become lists, tensors go to the CPU)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: a job file's dict keys are strings")
        return {k: _plain_tensors(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_tensors(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where} holds a {type(value).__name__}, which a job file cannot carry")

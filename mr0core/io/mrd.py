"""ISMRMRD (MRD) raw data files: write a simulated signal, read any file into ``KData``.

Files are HDF5 with a group (default ``dataset``) holding ``xml`` (the ISMRMRD header) and
``data`` (the acquisitions). Writing goes through the ``ismrmrd`` package (``ismrmrd.Dataset``,
``ismrmrd.xsd`` header objects); reading uses h5py on the same layout, all acquisitions at once.
:func:`kdata_from_acquisitions` builds the same ``KData`` from ``ismrmrd.Acquisition`` objects
that arrive as a stream (the MRD server's gadgets).

Units inside ISMRMRD: FOV in mm, TR/TE/TI in ms, dwell time in µs, trajectories normalised to the
encoded matrix (``k · fov / n``, ±0.5 at the edge of k-space). mr0core uses m, s and 1/m.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, fields
from os import PathLike, fspath
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mr0core.io.rawfile import MrdFormatError, check_raw_file
from mr0core.recon.kdata import IDX_KEYS, AcqFlag, KData
from mr0core.sequence import as_sequence

__all__ = [
    "DEFAULT_MATRIX_LIMITS",
    "MatrixLimits",
    "MrdFormatError",
    "MrdHeaderError",
    "check_matrix",
    "kdata_from_acquisitions",
    "parse_header",
    "read_mrd",
    "sig_to_mrd",
]

GAMMA_1H_HZ_T = 42.577478e6
DEFAULT_FIELD_T = 3.0

# KData counter -> ISMRMRD idx field
IDX_FIELDS = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "SLC": "slice",
    "AVG": "average",
    "REP": "repetition",
    "ECO": "contrast",
    "SET": "set",
    "SEG": "segment",
    "PHS": "phase",
}
_LIMIT_FIELDS = {
    "LIN": "kspace_encoding_step_1",
    "PAR": "kspace_encoding_step_2",
    "SLC": "slice",
    "AVG": "average",
    "REP": "repetition",
    "ECO": "contrast",
    "SET": "set",
    "SEG": "segment",
    "PHS": "phase",
}
_TRAJ_FROM_MRD = {
    "cartesian": "cartesian",
    "epi": "cartesian",
    "radial": "radial",
    "goldenangle": "radial",
    "spiral": "spiral",
    "other": "other",
}


class MrdHeaderError(MrdFormatError):
    """The header's matrices ask for more than :class:`MatrixLimits` allow.

    Attributes
    ----------
    field
        The header field, e.g. ``"encoding[0].encodedSpace.matrixSize"``, or ``"grid bytes"``.
    value
        What the header asks for (a matrix, or a count).
    limit
        The name of the :class:`MatrixLimits` field.
    bound
        Its value.
    """

    def __init__(
        self, where: str, field: str, value: Any, limit: str, bound: int, what: str
    ) -> None:
        self.field = field
        self.value = value
        self.limit = limit
        self.bound = bound
        super().__init__(f"{where}: {field} {value}: {what} is more than the limit {limit}={bound}")


@dataclass(frozen=True)
class MatrixLimits:
    """Bounds on the matrices an ISMRMRD header may ask the recon to allocate.

    The Cartesian recon grids the data on the encoded matrix, one complex64 grid per coil and per
    (repetition/set/phase, contrast, slice) group, then transforms at the recon matrix; the NUFFT
    grids on the recon matrix oversampled 2x per axis. The defaults keep that below 1 GiB per
    buffer (16 sessions on a 24 GiB machine) and accept matrices up to 512 x 512 x 256.

    Attributes
    ----------
    max_dim
        Each of x, y, z of the encoded and the recon matrix.
    max_voxels
        x · y · z of the encoded and of the recon matrix.
    max_grid_bytes
        Estimated bytes of the k-space grid the recon allocates:
        ``groups · voxels · (coils · GRID_BYTES_PER_CELL_COIL + GRID_BYTES_PER_CELL)`` with the
        larger of the encoded and (non-Cartesian: 2^d-oversampled) recon voxels.
    """

    max_dim: int = 4096
    max_voxels: int = 1 << 26
    max_grid_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise TypeError(f"MatrixLimits.{f.name} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"MatrixLimits.{f.name} must be >= 1, got {value}")


DEFAULT_MATRIX_LIMITS = MatrixLimits()
"""The bounds used when no ``limits`` are given (see :class:`MatrixLimits`)."""

GRID_BYTES_PER_CELL_COIL = 40
"""Recon bytes per grid cell and coil: the complex64 accumulator, its normalised copy, the
transform and its shifted copies (measured 27–36 bytes, peak RSS of ``reconstruct``)."""
GRID_BYTES_PER_CELL = 16
"""Recon bytes per grid cell whatever the coils: sample counts (int64, float32) and the mask."""


def _matrix_of(space: Any, name: str, where: str) -> tuple[int, int, int]:
    size = getattr(space, "matrixSize", None) if space is not None else None
    if size is None:
        raise MrdFormatError(f"{where}: the header's {name} has no matrixSize")
    values = []
    for axis in ("x", "y", "z"):
        v = getattr(size, axis, None)
        if v is None or isinstance(v, bool) or int(v) != v:
            raise MrdFormatError(f"{where}: {name}.matrixSize.{axis} is not an integer: {v!r}")
        values.append(int(v))
    return (values[0], values[1], values[2])


def check_matrix(
    header: Any,
    coils: int | None = None,
    groups: int = 1,
    limits: MatrixLimits | None = None,
    where: str = "header",
) -> int:
    """Check the encoded and recon matrices of a parsed header against ``limits``.

    Cheap; call it when the header arrives, before any acquisition is buffered (``coils`` from
    the header), and again when the data are known (:func:`kdata_from_acquisitions` and
    :func:`read_mrd` do, with the real coils and groups).

    Parameters
    ----------
    header
        A parsed ``ismrmrd.xsd.ismrmrdHeader`` (:func:`parse_header`); ``encoding[0]`` is checked.
    coils
        Receive channels; default the header's ``acquisitionSystemInformation.receiverChannels``,
        else 1.
    groups
        Separate grids (repetition/set/phase × contrast × slice) the data fill.
    limits
        Default :data:`DEFAULT_MATRIX_LIMITS`.
    where
        What the header belongs to, for the message.

    Returns
    -------
    int
        The estimated grid bytes.

    Raises
    ------
    MrdHeaderError
        A dimension, a matrix's voxels or the grid bytes exceed ``limits``; the message names the
        header field, its value and the limit.
    MrdFormatError
        The header has no encoding or a matrix is not three positive integers.
    """
    limits = DEFAULT_MATRIX_LIMITS if limits is None else limits
    if not isinstance(limits, MatrixLimits):
        raise TypeError(f"limits must be a MatrixLimits or None, got {type(limits).__name__}")
    encodings = getattr(header, "encoding", None)
    if not encodings:
        raise MrdFormatError(f"{where}: the header has no encoding section")
    enc = encodings[0]
    if coils is None:
        system = getattr(header, "acquisitionSystemInformation", None)
        channels = getattr(system, "receiverChannels", None) if system is not None else None
        coils = int(channels) if channels else 1
    if coils < 1 or groups < 1:
        raise ValueError(f"coils and groups must be >= 1, got {coils}, {groups}")
    matrices: dict[str, tuple[int, int, int]] = {}
    for name in ("encodedSpace", "reconSpace"):
        field = f"encoding[0].{name}.matrixSize"
        matrix = _matrix_of(getattr(enc, name, None), f"encoding[0].{name}", where)
        if min(matrix) < 1:
            raise MrdFormatError(f"{where}: {field} must be positive, got {matrix}")
        if max(matrix) > limits.max_dim:
            raise MrdHeaderError(
                where, field, matrix, "max_dim", limits.max_dim, f"dimension {max(matrix)}"
            )
        voxels = math.prod(matrix)
        if voxels > limits.max_voxels:
            raise MrdHeaderError(
                where, field, matrix, "max_voxels", limits.max_voxels, f"{voxels} voxels"
            )
        matrices[name] = matrix
    e_mat, r_mat = matrices["encodedSpace"], matrices["reconSpace"]
    traj = getattr(enc.trajectory, "value", enc.trajectory)
    recon = math.prod(r_mat)
    if str(traj).lower() != "cartesian":  # the NUFFT's grid is oversampled 2x per axis
        recon *= 8 if r_mat[2] > 1 else 4
    cells = groups * max(math.prod(e_mat), recon)
    needed = cells * (coils * GRID_BYTES_PER_CELL_COIL + GRID_BYTES_PER_CELL)
    if needed > limits.max_grid_bytes:
        raise MrdHeaderError(
            where, "encoding[0].encodedSpace/reconSpace.matrixSize", f"{e_mat}/{r_mat}",
            "max_grid_bytes", limits.max_grid_bytes,
            f"with {coils} coils and {groups} groups, {needed} grid bytes",
        )  # fmt: skip
    return needed


# -------------------------------------------------------------------------------------------
# writing
# -------------------------------------------------------------------------------------------


def _field_strength(definitions: dict[str, Any]) -> float:
    for key in ("B0", "FieldStrength", "MagneticFieldStrength"):
        value = definitions.get(key)
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        try:
            b0 = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if math.isfinite(b0) and b0 > 0:
            return b0
    return DEFAULT_FIELD_T


def _parameters(seq: Any) -> dict[str, Any]:
    """TR, TE, TI (s), flip angle (deg) and name, via :mod:`mr0core.io.params`."""
    from mr0core.io.params import sequence_parameters

    p = sequence_parameters(seq)
    return {"TR": p.TR, "TE": p.TE, "TI": p.TI, "flip": p.flip_angle_deg, "name": p.name}


def _header(kd: KData, params: dict[str, Any], field_t: float) -> Any:
    import ismrmrd.xsd as xsd

    def space(matrix: tuple[int, int, int], fov: tuple[float, float, float]) -> Any:
        return xsd.encodingSpaceType(
            matrixSize=xsd.matrixSizeType(x=matrix[0], y=matrix[1], z=matrix[2]),
            fieldOfView_mm=xsd.fieldOfViewMm(x=fov[0] * 1e3, y=fov[1] * 1e3, z=fov[2] * 1e3),
        )

    limits: dict[str, Any] = {}
    for key, name in _LIMIT_FIELDS.items():
        values = kd.idx[key]
        lo, hi = int(values.min()), int(values.max())
        centre = (lo + hi + 1) // 2
        if key == "LIN":
            centre = kd.center_line
        elif key == "PAR":
            centre = kd.center_partition
        limits[name] = xsd.limitType(minimum=lo, maximum=hi, center=centre)
    nx = kd.encoded_matrix[0]
    limits["kspace_encoding_step_0"] = xsd.limitType(minimum=0, maximum=nx - 1, center=nx // 2)
    traj = {
        "cartesian": xsd.trajectoryType.CARTESIAN,
        "radial": xsd.trajectoryType.RADIAL,
        "spiral": xsd.trajectoryType.SPIRAL,
        "other": xsd.trajectoryType.OTHER,
    }[kd.trajectory]
    encoding = xsd.encodingType(
        encodedSpace=space(kd.encoded_matrix, kd.encoded_fov_m),
        reconSpace=space(kd.recon_matrix, kd.recon_fov_m),
        encodingLimits=xsd.encodingLimitsType(**limits),
        trajectory=traj,
    )

    def ms(value: float | None) -> list[float]:
        return [] if value is None else [float(value) * 1e3]

    seq_params = xsd.sequenceParametersType(
        TR=ms(params.get("TR")),
        TE=ms(params.get("TE")),
        TI=ms(params.get("TI")),
        flipAngle_deg=[] if params.get("flip") is None else [float(params["flip"])],
        sequence_type=params.get("name"),
    )
    return xsd.ismrmrdHeader(
        experimentalConditions=xsd.experimentalConditionsType(
            H1resonanceFrequency_Hz=round(GAMMA_1H_HZ_T * field_t)
        ),
        acquisitionSystemInformation=xsd.acquisitionSystemInformationType(
            receiverChannels=kd.n_coils, systemFieldStrength_T=field_t
        ),
        sequenceParameters=seq_params,
        encoding=[encoding],
        userParameters=xsd.userParametersType(
            userParameterString=[
                xsd.userParameterStringType(name=SIMULATED_PARAMETER, value=_generator())
            ]
        ),
    )


SIMULATED_PARAMETER = "MR0Simulated"
"""Name of the header's ``userParameterString`` that marks raw data ``sig_to_mrd`` simulated
(its value names the generator); :func:`header_says_simulated` reads it."""


def _generator() -> str:
    from mr0core import __version__

    return f"mr0core {__version__}"


def header_says_simulated(xml: str | bytes) -> bool:
    """Whether an ISMRMRD header marks its data as simulated (:data:`SIMULATED_PARAMETER`)."""
    import ismrmrd.xsd as xsd

    try:
        header = xsd.CreateFromDocument(xml)
    except Exception:  # an unreadable header simply carries no mark
        return False
    params = header.userParameters
    if params is None:
        return False
    return any(p.name == SIMULATED_PARAMETER for p in params.userParameterString)


def _set_head(acq: Any, **values: Any) -> None:
    for name, value in values.items():
        setattr(acq, name, value)


def sig_to_mrd(
    mrd_path: str | PathLike[str],
    mr0_signal: torch.Tensor,
    seq: Any,
    verbose: int = 0,
    overwrite: bool = True,
) -> Path:
    """Write a simulated signal as an ISMRMRD raw data file.

    Parameters
    ----------
    mrd_path
        The ``.h5``/``.mrd`` file to write (group ``dataset``).
    mr0_signal
        ``[samples, coils]`` (or ``[samples]``) complex, one row per ADC sample of ``seq``
        (MR-zero's parameter name).
    seq
        A ``pypulseq.Sequence``, an :class:`mr0core.Sequence` (with ``definitions``) or a ``.seq``
        path: trajectory, labels and definitions come from it.
    verbose
        0: silent; 1: a summary line; 2 and more: also one line per acquisition.
    overwrite
        Replace an existing file (MR-zero's behaviour); with False an existing file is an error.

    Returns
    -------
    Path
        The written file.

    Notes
    -----
    The header holds encoded/recon space (matrix, FOV in mm), encoding limits from the counters
    (centre of step 1/2: ``center_line``/``center_partition``), TR/TE/TI in ms and the flip angle
    (definitions, else estimated by :func:`mr0core.io.params.sequence_parameters`), the trajectory
    type, the receiver channels and the H1 frequency (``B0`` definition, else 3 T). Noise readouts
    come first. Each acquisition carries counters, ISMRMRD flags, dwell time, centre sample,
    channel counts and, for non-Cartesian data, its trajectory normalised to the encoded matrix.
    """
    import ismrmrd
    import ismrmrd.xsd as xsd

    path = Path(fspath(mrd_path))
    if path.exists():
        if not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.unlink()
    mr0_seq = as_sequence(seq)
    kd = KData.from_sequence(mr0_signal, mr0_seq)
    params = _parameters(mr0_seq)
    field_t = _field_strength(mr0_seq.definitions)
    header = _header(kd, params, field_t)

    coils = kd.n_coils
    signal_np = kd.signal.detach().cpu().to(torch.complex64).numpy()
    kspace_np = None if kd.kspace is None else kd.kspace.detach().cpu().double().numpy()
    traj_dims = 0
    if kd.trajectory != "cartesian" and kspace_np is not None:
        traj_dims = 3 if kd.encoded_matrix[2] > 1 else 2
    norm = np.array([kd.encoded_fov_m[a] / kd.encoded_matrix[a] for a in range(3)])
    idx_np = {k: v.cpu().numpy() for k, v in kd.idx.items()}
    start = kd.readout_start.cpu().numpy()
    length = kd.readout_length.cpu().numpy()
    centre = kd.center_sample.cpu().numpy()
    dwell_us = kd.sample_time_s.cpu().numpy() * 1e6
    flags = kd.flags.cpu().numpy()

    directions = {
        "read_dir": (1.0, 0.0, 0.0),
        "phase_dir": (0.0, 1.0, 0.0),
        "slice_dir": (0.0, 0.0, 1.0),
    }
    dataset = ismrmrd.Dataset(str(path), "dataset", create_if_needed=True)
    try:
        dataset.write_xml_header(xsd.ToXML(header))
        counter = 0
        if kd.noise is not None:
            noise = kd.noise.detach().cpu().to(torch.complex64).numpy()
            acq = ismrmrd.Acquisition.from_array(np.ascontiguousarray(noise.T))
            _set_head(
                acq,
                flags=int(AcqFlag.IS_NOISE_MEASUREMENT),
                scan_counter=counter,
                available_channels=coils,
                sample_time_us=float(dwell_us[0])
                if kd.noise_sample_time_s is None
                else 1e6 * float(kd.noise_sample_time_s),
                **directions,
            )
            dataset.append_acquisition(acq)
            counter += 1
        for r in range(kd.n_readouts):
            s, n = int(start[r]), int(length[r])
            data = np.ascontiguousarray(signal_np[s : s + n].T)
            traj = None
            if traj_dims:
                assert kspace_np is not None  # traj_dims > 0 only with k-space
                traj = np.ascontiguousarray(
                    (kspace_np[s : s + n, :traj_dims] * norm[:traj_dims]).astype(np.float32)
                )
            acq = ismrmrd.Acquisition.from_array(data, traj)
            c = int(centre[r])
            if not 0 <= c < 65536:
                c = min(max(c, 0), n - 1)
            _set_head(
                acq,
                flags=int(flags[r]),
                scan_counter=counter,
                available_channels=coils,
                center_sample=c,
                discard_pre=0,
                discard_post=0,
                sample_time_us=float(dwell_us[r]),
                **directions,
            )
            for key, name in IDX_FIELDS.items():
                setattr(acq.idx, name, int(idx_np[key][r]))
            dataset.append_acquisition(acq)
            counter += 1
            if verbose >= 2:
                print(
                    f"acquisition {counter}: {n} samples, "
                    + ", ".join(f"{k}={int(idx_np[k][r])}" for k in IDX_KEYS)
                )
    finally:
        dataset.close()
    if verbose >= 1:
        print(
            f"{path}: {kd.n_readouts} readouts x {coils} coils, {kd.trajectory}, "
            f"encoded {kd.encoded_matrix}, recon {kd.recon_matrix}"
        )
    return path


# -------------------------------------------------------------------------------------------
# reading
# -------------------------------------------------------------------------------------------


def limit_centre(limits: Any, name: str, default: int) -> int:
    limit = getattr(limits, name, None) if limits is not None else None
    if limit is None or limit.center is None:
        return default
    if int(limit.center) == 0 and int(limit.maximum or 0) > 0:
        return default  # an unset centre (some converters leave 0)
    return int(limit.center)


_XML_CONTEXT: Any = None


def parse_header(xml: str | bytes) -> Any:
    """Parse an ISMRMRD XML header into an ``ismrmrd.xsd.ismrmrdHeader``.

    The same result as ``ismrmrd.xsd.CreateFromDocument``, which builds xsdata's class metadata
    anew on every call (6.5 ms for a small header); here one ``XmlContext`` keeps it, so a header
    parses in under 1 ms after the first. A parser is made per call (parsers keep state while
    they run), so threads may call this at the same time.

    Raises
    ------
    Exception
        Whatever the XML binding raises for a header that does not parse or has unknown elements.
    """
    import ismrmrd.xsd as xsd

    global _XML_CONTEXT
    try:  # xsdata is what ismrmrd.xsd is built on
        from xsdata.formats.dataclass.context import XmlContext
        from xsdata.formats.dataclass.parsers import XmlParser
        from xsdata.formats.dataclass.parsers.config import ParserConfig
    except ImportError:  # pragma: no cover - an ismrmrd built on another binding
        return xsd.CreateFromDocument(xml)
    if _XML_CONTEXT is None:
        _XML_CONTEXT = XmlContext()
    parser = XmlParser(config=ParserConfig(fail_on_unknown_properties=True), context=_XML_CONTEXT)
    if isinstance(xml, str):
        return parser.from_string(xml, xsd.ismrmrdHeader)
    return parser.from_bytes(xml, xsd.ismrmrdHeader)


def _parse_header(where: str, xml: str | bytes) -> Any:
    """Parse an ISMRMRD XML header; MrdFormatError naming ``where`` if it does not parse."""
    if isinstance(xml, bytes):
        xml = xml.decode("utf-8")
    try:
        header = parse_header(xml)
    except Exception as exc:  # the parser raises several unrelated types
        raise MrdFormatError(f"{where}: the ISMRMRD header does not parse: {exc}") from exc
    if not header.encoding:
        raise MrdFormatError(f"{where}: the header has no encoding section")
    return header


def _grid_groups(head: Any, img: np.ndarray) -> int:
    """Return the number of Cartesian grids the imaging acquisitions fill.

    Distinct (repetition, set, phase) x distinct contrasts x distinct slices, as
    :func:`mr0core.recon.cartesian.cartesian_kspace` grids them.
    """
    idx = head["idx"][img]
    volumes = np.unique(np.stack([idx["repetition"], idx["set"], idx["phase"]], axis=1), axis=0)
    return len(volumes) * len(np.unique(idx["contrast"])) * len(np.unique(idx["slice"]))


def _kdata_from_arrays(
    where: str,
    header: Any,
    head: Any,
    data: list[np.ndarray],
    traj: list[np.ndarray | None],
    limits: MatrixLimits | None = None,
) -> KData:
    """Build :class:`KData` from acquisition headers and arrays (the shared part of reading).

    Parameters
    ----------
    where
        What the data came from (a path, or a description), for error messages.
    header
        Parsed ``ismrmrd.xsd.ismrmrdHeader`` with at least one encoding.
    head
        ``[acquisitions]`` numpy structured array of ISMRMRD acquisition headers
        (``ismrmrd.AcquisitionHeader`` fields, e.g. ``dataset/data["head"]``).
    data
        Per acquisition, its samples as a flat float32 array of interleaved re/im values in
        ISMRMRD order (``[channels, samples]``).
    traj
        Per acquisition, its trajectory as a flat float32 array (``[samples, dims]``) or None.
    limits
        Bounds on the header's matrices (:func:`check_matrix`, with the data's coils and groups).
    """
    n_acq = len(head)
    if n_acq == 0:
        raise MrdFormatError(f"{where}: the dataset holds no acquisitions")
    flags = head["flags"].astype(np.uint64).view(np.int64)
    n_samples = head["number_of_samples"].astype(np.int64)
    channels = head["active_channels"].astype(np.int64)
    traj_dims = head["trajectory_dimensions"].astype(np.int64)
    pre = head["discard_pre"].astype(np.int64)
    post = head["discard_post"].astype(np.int64)
    space_ref = head["encoding_space_ref"].astype(np.int64)
    blocks: list[np.ndarray] = []
    trajs: list[np.ndarray | None] = []
    for i in range(n_acq):
        raw = np.asarray(data[i], dtype=np.float32).reshape(-1)
        if raw.size != 2 * channels[i] * n_samples[i]:
            raise MrdFormatError(
                f"{where}: acquisition {i} has {raw.size // 2} complex values, its header says "
                f"{channels[i]} channels x {n_samples[i]} samples"
            )
        block = raw.view(np.complex64).reshape(channels[i], n_samples[i]).T
        blocks.append(block[pre[i] : n_samples[i] - post[i]])
        t = None
        if traj_dims[i] > 0 and traj[i] is not None:
            raw_t = np.asarray(traj[i], dtype=np.float32).reshape(-1)
            if raw_t.size != traj_dims[i] * n_samples[i]:
                raise MrdFormatError(
                    f"{where}: acquisition {i} has {raw_t.size} trajectory values, expected "
                    f"{traj_dims[i]} x {n_samples[i]}"
                )
            t = raw_t.reshape(n_samples[i], traj_dims[i])[pre[i] : n_samples[i] - post[i]]
        trajs.append(t)
    keep_len = n_samples - pre - post
    if (keep_len < 1).any():
        bad = int(np.flatnonzero(keep_len < 1)[0])
        raise MrdFormatError(f"{where}: acquisition {bad} discards all of its samples")

    is_noise = (flags & int(AcqFlag.IS_NOISE_MEASUREMENT)) != 0
    other_space = (space_ref != 0) & ~is_noise
    if other_space.any():
        warnings.warn(
            f"{where}: {int(other_space.sum())} acquisitions of other encoding spaces are skipped",
            stacklevel=3,
        )
    img = ~is_noise & ~other_space
    if not img.any():
        raise MrdFormatError(f"{where}: the dataset holds only noise acquisitions")
    coils = set(channels[img].tolist())
    if len(coils) != 1:
        raise MrdFormatError(f"{where}: acquisitions have different channel counts {sorted(coils)}")
    n_coils = coils.pop()
    check_matrix(header, n_coils, _grid_groups(head, img), limits, where)
    noise = None
    noise_dwell_s = None
    if is_noise.any():
        used = [i for i in np.flatnonzero(is_noise) if blocks[i].shape[1] == n_coils]
        if used:
            stacked = np.concatenate([blocks[i] for i in used])
            noise = torch.from_numpy(np.ascontiguousarray(stacked))
            # the noise's dwell (prewhitening scales its covariance to the data's dwell); the
            # first noise readout's, as Gadgetron's NoiseAdjustGadget takes it
            dwell_us = float(head["sample_time_us"][used[0]])
            if math.isfinite(dwell_us) and dwell_us > 0:
                noise_dwell_s = dwell_us * 1e-6

    enc = header.encoding[0]
    e_mat = (
        enc.encodedSpace.matrixSize.x,
        enc.encodedSpace.matrixSize.y,
        enc.encodedSpace.matrixSize.z,
    )
    r_mat = (enc.reconSpace.matrixSize.x, enc.reconSpace.matrixSize.y, enc.reconSpace.matrixSize.z)

    def fov_m(space: Any, matrix: tuple[int, int, int]) -> tuple[float, float, float]:
        mm = [space.fieldOfView_mm.x, space.fieldOfView_mm.y, space.fieldOfView_mm.z]
        out = [float(v) * 1e-3 for v in mm]
        for a in range(3):
            if not (math.isfinite(out[a]) and out[a] > 0):
                out[a] = out[0] / max(1, matrix[0]) if a else 1.0
        return (out[0], out[1], out[2])

    e_fov, r_fov = fov_m(enc.encodedSpace, e_mat), fov_m(enc.reconSpace, r_mat)
    traj_name = enc.trajectory.value if hasattr(enc.trajectory, "value") else str(enc.trajectory)
    trajectory = _TRAJ_FROM_MRD.get(str(traj_name).lower(), "other")
    limits = enc.encodingLimits
    centre_line = limit_centre(limits, "kspace_encoding_step_1", e_mat[1] // 2)
    centre_par = limit_centre(limits, "kspace_encoding_step_2", e_mat[2] // 2)

    sel = np.flatnonzero(img)
    length = keep_len[sel]
    start = np.cumsum(length) - length
    signal = torch.from_numpy(np.ascontiguousarray(np.concatenate([blocks[i] for i in sel])))
    centre = head["center_sample"].astype(np.int64)[sel] - pre[sel]
    dwell = head["sample_time_us"].astype(np.float64)[sel] * 1e-6
    kspace = None
    sel_trajs = [tr for i in sel if (tr := trajs[i]) is not None]
    if len(sel_trajs) == len(sel):
        parts = []
        for j, tr in enumerate(sel_trajs):
            t = tr.astype(np.float64)
            k = np.zeros((t.shape[0], 4))
            dims = min(3, t.shape[1])
            k[:, :dims] = t[:, :dims] * np.array(e_mat[:dims]) / np.array(e_fov[:dims])
            k[:, 3] = (np.arange(t.shape[0]) - centre[j]) * dwell[j]
            parts.append(k)
        kspace = torch.from_numpy(np.concatenate(parts).astype(np.float32))
    idx = {
        key: torch.from_numpy(head["idx"][name].astype(np.int64)[sel])
        for key, name in IDX_FIELDS.items()
    }
    return KData(
        signal=signal,
        readout_start=torch.from_numpy(start.astype(np.int64)),
        readout_length=torch.from_numpy(length.astype(np.int64)),
        idx=idx,
        encoded_matrix=e_mat,
        recon_matrix=r_mat,
        encoded_fov_m=e_fov,
        recon_fov_m=r_fov,
        center_sample=torch.from_numpy(centre),
        sample_time_s=torch.from_numpy(dwell),
        flags=torch.from_numpy(flags[sel].copy()),
        center_line=centre_line,
        center_partition=centre_par,
        trajectory=trajectory,
        kspace=kspace,
        noise=noise,
        noise_sample_time_s=noise_dwell_s,
        header=header,
    )


def read_mrd(
    path: str | PathLike[str], group: str = "dataset", *, limits: MatrixLimits | None = None
) -> KData:
    """Read ISMRMRD raw data into :class:`~mr0core.recon.kdata.KData`.

    Parameters
    ----------
    path
        The HDF5 file.
    group
        The dataset group inside it.
    limits
        Bounds on the header's matrices (:class:`MatrixLimits`); default
        :data:`DEFAULT_MATRIX_LIMITS`.

    Returns
    -------
    KData
        Imaging, calibration and navigator readouts with their flags; noise readouts in
        ``noise``; ``header`` the parsed ``ismrmrd.xsd.ismrmrdHeader``. ``discard_pre``/``post``
        samples are dropped. Only the first encoding space is read (others are skipped with a
        warning). ``kspace`` (1/m, from the trajectories ``k = traj · n / fov``; τ = time from the
        centre sample) is set when every imaging acquisition carries a trajectory.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    MrdFormatError
        If it is not HDF5, lacks the group, header or acquisitions, or sizes do not match.
    MrdHeaderError
        If the header's matrices exceed ``limits`` (an :class:`MrdFormatError` too).
    """
    import h5py

    path = check_raw_file(path, group)
    with h5py.File(path, "r") as f:
        g = f[group]
        if "data" not in g:
            raise MrdFormatError(f"{path}: group {group!r} has no acquisitions ('data')")
        xml = g["xml"][0]
        acqs = g["data"][()]
    header = _parse_header(str(path), xml)
    if acqs.dtype.names is None or not {"head", "data"} <= set(acqs.dtype.names):
        raise MrdFormatError(f"{path}: {group}/data is not an ISMRMRD acquisition table")
    if len(acqs) == 0:
        raise MrdFormatError(f"{path}: the dataset holds no acquisitions")
    has_traj = "traj" in acqs.dtype.names
    return _kdata_from_arrays(
        str(path),
        header,
        acqs["head"],
        [acqs["data"][i] for i in range(len(acqs))],
        [acqs["traj"][i] if has_traj else None for i in range(len(acqs))],
        limits,
    )


def kdata_from_acquisitions(
    header: str | bytes | Any,
    acquisitions: SequenceABC[Any],
    source: str = "acquisitions",
    *,
    limits: MatrixLimits | None = None,
) -> KData:
    """Build :class:`~mr0core.recon.kdata.KData` from ``ismrmrd.Acquisition`` objects.

    The in-memory twin of :func:`read_mrd` (same semantics), for data that arrive as a stream.

    Parameters
    ----------
    header
        The ISMRMRD XML header (``str``/``bytes``) or a parsed ``ismrmrd.xsd.ismrmrdHeader``.
    acquisitions
        ``ismrmrd.Acquisition`` objects in acquisition order. Noise acquisitions
        (``IS_NOISE_MEASUREMENT``) go to ``noise``; ``discard_pre``/``post`` samples are
        dropped; ``kspace`` (1/m) is set when every imaging acquisition carries a trajectory.
    source
        What the data are, for error messages.
    limits
        Bounds on the header's matrices (:class:`MatrixLimits`); default
        :data:`DEFAULT_MATRIX_LIMITS`.

    Returns
    -------
    KData
        As :func:`read_mrd` returns it, ``header`` the parsed header.

    Raises
    ------
    MrdFormatError
        If the header does not parse or has no encoding, there are no (imaging) acquisitions,
        an item is not an acquisition, or sizes do not match.
    MrdHeaderError
        If the header's matrices exceed ``limits`` (an :class:`MrdFormatError` too).
    """
    import ismrmrd

    parsed = _parse_header(source, header) if isinstance(header, str | bytes) else header
    if parsed is None or not getattr(parsed, "encoding", None):
        raise MrdFormatError(f"{source}: the header has no encoding section")
    acqs = list(acquisitions)
    if not acqs:
        raise MrdFormatError(f"{source}: the dataset holds no acquisitions")
    for i, acq in enumerate(acqs):
        if not isinstance(acq, ismrmrd.Acquisition):
            raise MrdFormatError(
                f"{source}: item {i} is a {type(acq).__name__}, not an ismrmrd.Acquisition"
            )
    from ismrmrd.hdf5 import acquisition_header_dtype

    head = np.frombuffer(
        b"".join(bytes(acq.getHead()) for acq in acqs), dtype=acquisition_header_dtype
    )
    data = [np.asarray(acq.data, dtype=np.complex64).view(np.float32) for acq in acqs]
    traj = [
        np.asarray(acq.traj, dtype=np.float32) if acq.trajectory_dimensions else None
        for acq in acqs
    ]
    return _kdata_from_arrays(source, parsed, head, data, traj, limits)

"""The standard reconstruction gadgets (Gadgetron-like names), built on :mod:`mr0core.recon`.

A Cartesian chain runs::

    NoiseAdjustGadget -> AccumulateTriggerGadget -> RemoveROOversamplingGadget -> FFTGadget
      -> CombineGadget -> ExtractGadget -> ImageFinishGadget

Items between gadgets:

- ``ismrmrd.Acquisition`` up to :class:`AccumulateTriggerGadget`, which collects them per
  (slice, contrast, repetition) into an :class:`AcquisitionBuffer` (a
  :class:`~mr0core.recon.kdata.KData` plus the geometry of the centre line);
- :class:`ImageBuffer` (coil images ``[coils, x, y, z]`` or combined images ``[x, y, z]``, in the
  shared spatial convention) from :class:`FFTGadget`, :class:`NUFFTGadget` and
  :class:`SenseGadget`;
- ``ismrmrd.Image`` from :class:`ImageFinishGadget` (through
  :func:`mr0core.io.mrd_images.make_mrd_images`, with the meta attributes scanners read).

Every gadget passes on what it does not handle (text, waveforms, other items) unchanged. The
maths lives in :mod:`mr0core.recon`; these classes only route data to it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from gadgets.framework.core import Context, Gadget, GadgetError, Item, Property, register
from gadgets.framework.offload import offload_wait
from gadgets.framework.session_store import StoreError
from gadgets.library.references import reference_id
from gadgets.wire.mrdfile import SessionWriter
from mr0core.io.mrd import MrdFormatError, kdata_from_acquisitions
from mr0core.io.mrd_images import make_mrd_images
from mr0core.recon.auto import reconstruct
from mr0core.recon.cartesian import cartesian_kspace, kspace_to_image
from mr0core.recon.coils import adaptive_combine, rss
from mr0core.recon.kdata import NON_IMAGING, AcqFlag, KData, KDataError
from mr0core.recon.preprocess import (
    noise_covariance,
    prewhiten,
    prewhiten_kdata,
    remove_readout_oversampling,
)

__all__ = [
    "RECON_JOB_ATTEMPTS",
    "RECON_JOB_TIMEOUT_S",
    "AccumulateTriggerGadget",
    "AcquisitionBuffer",
    "CombineGadget",
    "ExtractGadget",
    "FFTGadget",
    "Geometry",
    "ImageBuffer",
    "ImageFinishGadget",
    "NUFFTGadget",
    "NoiseAdjustGadget",
    "PassthroughGadget",
    "RemoveROOversamplingGadget",
    "SaveDataGadget",
    "SenseGadget",
]

Vec3 = tuple[float, float, float]
_NOISE = int(AcqFlag.IS_NOISE_MEASUREMENT)

RECON_JOB_TIMEOUT_S = 600.0
"""Longest a recon job may take, queued and running (s), as a preview's simulation job; then
it is cancelled and the session ends with ``ERROR``."""

RECON_JOB_ATTEMPTS = 2
"""Starts a recon job may use: one retry after a crashed worker (out of host memory: none)."""


# -------------------------------------------------------------------------------------------
# buffers
# -------------------------------------------------------------------------------------------


@dataclass
class Geometry:
    """Where an image lies, as MRD image headers carry it.

    Attributes
    ----------
    position_mm
        Centre of the slice / slab in the scanner's patient coordinates, mm (from the centre
        line's acquisition header).
    read_dir, phase_dir, slice_dir
        Unit direction vectors of the image axes x, y, z.
    patient_table_position
        Table position in mm.
    fov_m
        Reconstructed field of view ``(x, y, z)`` in m (z: slice thickness for 2-D).
    matrix
        Reconstructed matrix ``(x, y, z)``.
    """

    position_mm: Vec3 = (0.0, 0.0, 0.0)
    read_dir: Vec3 = (1.0, 0.0, 0.0)
    phase_dir: Vec3 = (0.0, 1.0, 0.0)
    slice_dir: Vec3 = (0.0, 0.0, 1.0)
    patient_table_position: Vec3 = (0.0, 0.0, 0.0)
    fov_m: Vec3 = (1.0, 1.0, 1.0)
    matrix: tuple[int, int, int] = (1, 1, 1)


@dataclass
class AcquisitionBuffer:
    """The acquisitions of one (slice, contrast, repetition), ready to reconstruct.

    Attributes
    ----------
    kdata
        The raw data (:func:`mr0core.io.mrd.kdata_from_acquisitions`): imaging, calibration and
        navigator readouts; noise (if it reached the trigger) in ``kdata.noise``.
    geometry
        Position and orientation of the centre line, recon FOV and matrix.
    slice, contrast, repetition
        The bucket's counters.
    measurement_uid, acquisition_time_stamp
        Copied from the centre line (for the images' headers).
    history
        Processing steps so far (for ``ImageProcessingHistory``).
    """

    kdata: KData
    geometry: Geometry
    slice: int = 0
    contrast: int = 0
    repetition: int = 0
    measurement_uid: int = 0
    acquisition_time_stamp: int = 0
    history: list[str] = field(default_factory=list)


@dataclass
class ImageBuffer:
    """Reconstructed images of one (slice, contrast, repetition).

    Attributes
    ----------
    data
        ``[coils, x, y, z]`` complex coil images (``coils`` True) or ``[x, y, z]`` combined
        images, real or complex; voxel ``i`` of ``n`` at ``(i - n // 2) · fov / n``.
    geometry
        Where they lie.
    coils
        Whether ``data`` still has the coil axis.
    image_type
        ``"complex"``, ``"magnitude"``, ``"phase"``, ``"real"`` or ``"imag"``.
    slice, contrast, repetition, set, phase
        Counters for the image headers.
    measurement_uid, acquisition_time_stamp
        Copied from the acquisitions.
    history
        Processing steps (``ImageProcessingHistory``).
    """

    data: torch.Tensor
    geometry: Geometry
    coils: bool = False
    image_type: str = "complex"
    slice: int = 0
    contrast: int = 0
    repetition: int = 0
    set: int = 0
    phase: int = 0
    measurement_uid: int = 0
    acquisition_time_stamp: int = 0
    history: list[str] = field(default_factory=list)


def _vec(values: Any) -> Vec3:
    v = [float(x) for x in values]
    return (v[0], v[1], v[2])


def _header(context: Context, gadget: str) -> Any:
    """Return the session's parsed header (or its XML); GadgetError if there is none."""
    if context.header is not None:
        return context.header
    if context.header_xml:
        return context.header_xml
    raise GadgetError(f"{gadget}: the session has no ISMRMRD header")


# -------------------------------------------------------------------------------------------
# acquisitions
# -------------------------------------------------------------------------------------------


@register
class PassthroughGadget(Gadget):
    """Pass every item on unchanged (a chain that returns the raw data)."""

    aliases = ("AcquisitionPassthroughGadget",)
    properties: ClassVar[dict[str, Property]] = {}
    takes_images = True


@register
class NoiseAdjustGadget(Gadget):
    """Collect noise-calibration acquisitions and prewhiten the acquisitions after them.

    Noise acquisitions (``IS_NOISE_MEASUREMENT``) are never passed on. The others are whitened
    with :func:`mr0core.recon.preprocess.prewhiten`: the Cholesky factor of the noise covariance
    (:func:`~mr0core.recon.preprocess.noise_covariance` of the noise acquisitions with the same
    channel count) and the bandwidth factor ``sqrt(dwell / noise dwell)``, so that their noise
    has unit variance per sample whatever the bandwidth (the noise dwell is the first noise
    acquisition's; with a dwell of 0, i.e. unknown, on either side no factor is applied).
    Without noise data, or with another coil count, they pass unchanged (with a log message).
    """

    properties: ClassVar[dict[str, Property]] = {
        "prewhitening": Property("bool", True, "whiten the coils with the noise covariance"),
    }

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        self._noise: list[np.ndarray] = []
        self._noise_dwell_us: dict[int, float] = {}
        self._by_coils: dict[int, torch.Tensor | None] = {}
        self._started = False
        self._warned = False

    def _covariance(self, coils: int) -> torch.Tensor | None:
        """Return the ``[coils, coils]`` noise covariance for this coil count (cached), or None."""
        if coils not in self._by_coils:
            blocks = [b for b in self._noise if b.shape[1] == coils]
            samples = sum(b.shape[0] for b in blocks)
            cov = None
            if blocks and samples >= coils:
                cov = noise_covariance(torch.from_numpy(np.concatenate(blocks)))
            self._by_coils[coils] = cov
        return self._by_coils[coils]

    def _whiten(self, acq: Any) -> Any:
        import ismrmrd

        data = np.asarray(acq.data)  # [channels, samples]
        coils = data.shape[0]
        cov = self._covariance(coils)
        if cov is None:
            if not self._warned and self._noise:
                self.logger.warning(
                    "%s: noise data do not fit %d channels; no prewhitening", self.name, coils
                )
                self._warned = True
            return acq
        signal = torch.from_numpy(np.ascontiguousarray(data.T.astype(np.complex64)))
        dwell_us = float(acq.sample_time_us)
        noise_dwell_us = self._noise_dwell_us.get(coils, 0.0)
        try:
            if dwell_us > 0 and noise_dwell_us > 0:
                white = prewhiten(
                    signal, cov, dwell_s=dwell_us * 1e-6, noise_dwell_s=noise_dwell_us * 1e-6
                )
            else:
                white = prewhiten(signal, cov)
        except ValueError as exc:
            raise GadgetError(f"{self.name}: cannot prewhiten: {exc}") from None
        out = ismrmrd.Acquisition(acq.getHead())
        out.data[:] = white.T.numpy()
        if acq.trajectory_dimensions:
            out.traj[:] = acq.traj
        return out

    def process_item(self, item: Item) -> Iterable[Item]:
        """Store noise, whiten imaging acquisitions, pass anything else on."""
        import ismrmrd

        if not isinstance(item, ismrmrd.Acquisition):
            return (item,)
        if int(item.flags) & _NOISE:
            if self._started:
                self.logger.info("%s: noise acquisition after imaging data dropped", self.name)
            else:
                block = np.asarray(item.data).T.astype(np.complex64)
                self._noise.append(block)
                self._noise_dwell_us.setdefault(block.shape[1], float(item.sample_time_us))
            return ()
        self._started = True
        if not self.props["prewhitening"] or not self._noise:
            return (item,)
        return (self._whiten(item),)


def _centre_acquisition(acqs: list[Any], centre_line: int, centre_par: int) -> Any:
    """Return the imaging acquisition closest to the k-space centre line."""
    best, best_d = acqs[0], None
    for acq in acqs:
        if int(acq.flags) & int(NON_IMAGING):
            continue
        d = abs(int(acq.idx.kspace_encode_step_1) - centre_line) + abs(
            int(acq.idx.kspace_encode_step_2) - centre_par
        )
        if best_d is None or d < best_d:
            best, best_d = acq, d
            if d == 0:
                break
    return best


@register
class AccumulateTriggerGadget(Gadget):
    """Buffer acquisitions per (slice, contrast, repetition) and emit them on a trigger.

    ``trigger``: ``slice`` emits the buckets of an acquisition's slice and repetition when it
    carries ``LAST_IN_SLICE``; ``repetition`` those of its repetition at
    ``LAST_IN_REPETITION``; ``measurement`` all at ``LAST_IN_MEASUREMENT``; ``end`` only at
    the end of the stream. Whatever remains is emitted at the end. Noise acquisitions that
    reach this gadget are added to every buffer as ``kdata.noise``.
    """

    aliases = ("AcquisitionAccumulateTriggerGadget",)
    properties: ClassVar[dict[str, Property]] = {
        "trigger": Property(
            "choice",
            "slice",
            "what ends a buffer",
            choices=("slice", "repetition", "measurement", "end"),
        ),
        "max_acquisitions": Property(
            "int", 1 << 20, "most acquisitions held at once", min=1, max=1 << 30
        ),
    }
    _FLAGS: ClassVar[dict[str, int]] = {
        "slice": int(AcqFlag.LAST_IN_SLICE),
        "repetition": int(AcqFlag.LAST_IN_REPETITION),
        "measurement": int(AcqFlag.LAST_IN_MEASUREMENT),
        "end": 0,
    }

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        self._buckets: dict[tuple[int, int, int], list[Any]] = {}
        self._noise: list[Any] = []
        self._held = 0

    def process_item(self, item: Item) -> Iterable[Item]:
        """Add an acquisition to its bucket; emit buckets when it carries the trigger flag."""
        import ismrmrd

        if not isinstance(item, ismrmrd.Acquisition):
            return (item,)
        flags = int(item.flags)
        if flags & _NOISE:
            self._noise.append(item)
            return ()
        key = (int(item.idx.slice), int(item.idx.contrast), int(item.idx.repetition))
        self._held += 1
        if self._held > self.props["max_acquisitions"]:
            raise GadgetError(
                f"{self.name}: more than {self.props['max_acquisitions']} acquisitions buffered "
                "without a trigger"
            )
        self._buckets.setdefault(key, []).append(item)
        trigger = self.props["trigger"]
        if not flags & self._FLAGS[trigger]:
            return ()
        if trigger == "slice":
            keys = [k for k in self._buckets if k[0] == key[0] and k[2] == key[2]]
        elif trigger == "repetition":
            keys = [k for k in self._buckets if k[2] == key[2]]
        else:
            keys = list(self._buckets)
        return [self._emit(k) for k in sorted(keys)]

    def finish(self) -> Iterable[Item]:
        """Emit the buckets left at the end of the stream."""
        return [self._emit(k) for k in sorted(self._buckets)]

    def _emit(self, key: tuple[int, int, int]) -> AcquisitionBuffer:
        acqs = self._buckets.pop(key)
        self._held -= len(acqs)
        header = _header(self.context, self.name)
        try:
            kd = kdata_from_acquisitions(
                header, self._noise + acqs, source=f"{self.name} slice {key[0]}"
            )
        except (MrdFormatError, KDataError) as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        centre = _centre_acquisition(acqs, kd.center_line, kd.center_partition)
        geometry = Geometry(
            position_mm=_vec(centre.position),
            read_dir=_vec(centre.read_dir),
            phase_dir=_vec(centre.phase_dir),
            slice_dir=_vec(centre.slice_dir),
            patient_table_position=_vec(centre.patient_table_position),
            fov_m=kd.recon_fov_m,
            matrix=kd.recon_matrix,
        )
        return AcquisitionBuffer(
            kdata=kd,
            geometry=geometry,
            slice=key[0],
            contrast=key[1],
            repetition=key[2],
            measurement_uid=int(centre.measurement_uid),
            acquisition_time_stamp=int(centre.acquisition_time_stamp),
        )


# -------------------------------------------------------------------------------------------
# buffers to images
# -------------------------------------------------------------------------------------------


@register
class RemoveROOversamplingGadget(Gadget):
    """Remove readout oversampling from Cartesian :class:`AcquisitionBuffer` items.

    Works on buffers (after :class:`AccumulateTriggerGadget`): the encoded readout matrix
    becomes the recon matrix. Non-Cartesian buffers and raw acquisitions pass unchanged (the
    FFT and NUFFT recons also crop the FOV themselves).
    """

    properties: ClassVar[dict[str, Property]] = {}

    def process_item(self, item: Item) -> Iterable[Item]:
        """Crop the readout FOV of a Cartesian buffer."""
        if not isinstance(item, AcquisitionBuffer):
            return (item,)
        kd = item.kdata
        nx, rnx = kd.encoded_matrix[0], kd.recon_matrix[0]
        if kd.trajectory != "cartesian" or rnx >= nx:
            return (item,)
        return (
            replace(
                item,
                kdata=remove_readout_oversampling(kd),
                history=[*item.history, "REMOVE_RO_OVERSAMPLING"],
            ),
        )


def _images_from_grid(
    buffer: AcquisitionBuffer,
    images: torch.Tensor,
    volumes: torch.Tensor,
    contrasts: torch.Tensor,
    slices: torch.Tensor,
    fov_m: Vec3,
    matrix: tuple[int, int, int],
    coils: bool,
    image_type: str,
    step: str,
) -> list[ImageBuffer]:
    """Split ``[volumes, contrasts, slices, ...]`` images into :class:`ImageBuffer` items.

    Counters that do not match the image axes fall back to the buffer's own.
    """
    geometry = replace(buffer.geometry, fov_m=fov_m, matrix=matrix)
    n_v, n_c, n_s = images.shape[:3]
    if volumes.shape[0] != n_v:
        volumes = torch.tensor([[buffer.repetition + v, 0, 0] for v in range(n_v)])
    if contrasts.shape[0] != n_c:
        contrasts = buffer.contrast + torch.arange(n_c)
    if slices.shape[0] != n_s:
        slices = buffer.slice + torch.arange(n_s)
    out = []
    for v in range(images.shape[0]):
        rep, set_, phs = (int(x) for x in volumes[v])
        for c in range(images.shape[1]):
            for s in range(images.shape[2]):
                out.append(
                    ImageBuffer(
                        data=images[v, c, s],
                        geometry=geometry,
                        coils=coils,
                        image_type=image_type,
                        slice=int(slices[s]),
                        contrast=int(contrasts[c]),
                        repetition=rep,
                        set=set_,
                        phase=phs,
                        measurement_uid=buffer.measurement_uid,
                        acquisition_time_stamp=buffer.acquisition_time_stamp,
                        history=[*buffer.history, step],
                    )
                )
    return out


def _counters(kd: KData) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorted distinct (REP, SET, PHS), ECO and SLC counters of the imaging readouts."""
    keep = ~kd.has_flag(AcqFlag(NON_IMAGING))
    if not bool(keep.any()):
        keep = torch.ones_like(keep)
    vol = torch.stack([kd.idx["REP"], kd.idx["SET"], kd.idx["PHS"]], dim=1)[keep]
    return (
        torch.unique(vol, dim=0),
        torch.unique(kd.idx["ECO"][keep]),
        torch.unique(kd.idx["SLC"][keep]),
    )


@register
class FFTGadget(Gadget):
    """Cartesian :class:`AcquisitionBuffer` -> complex coil images (:class:`ImageBuffer`).

    Zero-filled k-space from :func:`mr0core.recon.cartesian.cartesian_kspace` (oversampling
    removed, sub-step offsets interpolated), then :func:`kspace_to_image`: the unnormalised
    adjoint sum, voxel ``i`` of ``n`` at ``(i - n // 2) · fov / n``.
    """

    properties: ClassVar[dict[str, Property]] = {
        "prewhitening": Property(
            "bool", True, "whiten with noise the buffer carries (when NoiseAdjust is absent)"
        ),
        "include_calibration": Property(
            "bool", False, "also grid calibration-only readouts into the image k-space"
        ),
    }

    def process_item(self, item: Item) -> Iterable[Item]:
        """Reconstruct one buffer into coil images."""
        if not isinstance(item, AcquisitionBuffer):
            return (item,)
        kd = item.kdata
        if kd.trajectory != "cartesian":
            raise GadgetError(
                f"{self.name}: FFT needs Cartesian data, got a {kd.trajectory} trajectory "
                "(use the nufft chain)"
            )
        try:
            grid = cartesian_kspace(
                kd,
                include_calibration=self.props["include_calibration"],
                prewhitening=self.props["prewhitening"],
            )
        except (KDataError, ValueError) as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        images = kspace_to_image(grid.kspace)  # [v, c, s, coils, x, y, z]
        return _images_from_grid(
            item,
            images,
            grid.volumes,
            grid.contrasts,
            grid.slices,
            grid.fov_m,
            grid.matrix,
            coils=True,
            image_type="complex",
            step="FFT",
        )


@register
class CombineGadget(Gadget):
    """Combine coil images: root sum of squares (real) or adaptive (Walsh maps, complex)."""

    properties: ClassVar[dict[str, Property]] = {
        "method": Property(
            "choice", "rss", "rss or adaptive (Walsh) combination", choices=("rss", "adaptive")
        ),
    }

    def process_item(self, item: Item) -> Iterable[Item]:
        """Combine the coils of one :class:`ImageBuffer`."""
        if not isinstance(item, ImageBuffer) or not item.coils:
            return (item,)
        if self.props["method"] == "rss":
            data, image_type, step = rss(item.data, dim=0), "magnitude", "RSS"
        else:
            data, image_type, step = adaptive_combine(item.data), "complex", "ADAPTIVE_COMBINE"
        return (
            replace(
                item,
                data=data,
                coils=False,
                image_type=image_type,
                history=[*item.history, step],
            ),
        )


@register
class ExtractGadget(Gadget):
    """Turn complex images into magnitude, phase (rad), real or imaginary part."""

    aliases = ("ComplexToFloatGadget",)
    properties: ClassVar[dict[str, Property]] = {
        "extract": Property(
            "choice",
            "magnitude",
            "which component to keep",
            choices=("magnitude", "phase", "real", "imag"),
        ),
    }

    def process_item(self, item: Item) -> Iterable[Item]:
        """Extract the chosen component of one :class:`ImageBuffer`."""
        if not isinstance(item, ImageBuffer):
            return (item,)
        what = self.props["extract"]
        data = item.data
        if what == "magnitude":
            data = data.abs()
        elif what == "phase":
            data = torch.angle(data) if data.is_complex() else torch.where(data < 0, math.pi, 0.0)
        elif what == "real":
            data = data.real if data.is_complex() else data
        else:
            data = data.imag if data.is_complex() else torch.zeros_like(data)
        return (
            replace(
                item,
                data=data.to(torch.float32),
                image_type=what,
                history=[*item.history, what.upper()],
            ),
        )


@register
class ImageFinishGadget(Gadget):
    """:class:`ImageBuffer` -> ``ismrmrd.Image`` with header fields and meta attributes.

    Pixels are stored ``[1, z, y, x]`` (:func:`mr0core.io.mrd_images.make_mrd_images`), the
    order of ``ismrmrd_recon_cartesian_2d``; position, directions and FOV come from the
    buffer's geometry; ``image_index`` counts from 1 per gadget; meta attributes DataRole,
    SeriesDescription, ImageComment, WindowCenter/Width and ImageProcessingHistory are set.
    """

    properties: ClassVar[dict[str, Property]] = {
        "series_index": Property("int", 1, "image_series_index of the images", min=0, max=65535),
        "series_description": Property("str", "MR0 recon", "meta SeriesDescription"),
        "image_comment": Property("str", "", "meta ImageComment (default: the steps taken)"),
        "data_role": Property("str", "Image", "meta DataRole"),
    }

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        self._next_index = 1

    def process_item(self, item: Item) -> Iterable[Item]:
        """Build the MRD image of one combined :class:`ImageBuffer`."""
        import ismrmrd

        imtypes = {
            "magnitude": ismrmrd.IMTYPE_MAGNITUDE,
            "phase": ismrmrd.IMTYPE_PHASE,
            "real": ismrmrd.IMTYPE_REAL,
            "imag": ismrmrd.IMTYPE_IMAG,
        }
        if not isinstance(item, ImageBuffer):
            return (item,)
        if item.coils:
            raise GadgetError(
                f"{self.name}: got coil images; put a CombineGadget before the ImageFinishGadget"
            )
        geo = item.geometry
        comment = self.props["image_comment"] or "_".join(item.history) or "MR0"
        # real data already hold the component (e.g. phase in rad): store the values as they
        # are and only label them; complex data are converted by make_mrd_images
        complex_data = item.data.is_complex()
        image_type = item.image_type if complex_data else "real"
        (image,) = make_mrd_images(
            item.data.detach().cpu(),
            series_index=self.props["series_index"],
            image_type=image_type,
            fov_m=geo.fov_m,
            position_mm=geo.position_mm,
            read_dir=geo.read_dir,
            phase_dir=geo.phase_dir,
            slice_dir=geo.slice_dir,
            slices=item.slice,
            contrasts=item.contrast,
            repetitions=item.repetition,
            image_index_start=self._next_index,
            data_role=self.props["data_role"],
            series_description=self.props["series_description"],
            image_comment=comment,
            processing_history=("MR0", *item.history),
        )
        self._next_index += 1
        if not complex_data:
            image.image_type = imtypes.get(item.image_type, ismrmrd.IMTYPE_REAL)
        image.set = item.set
        image.phase = item.phase
        image.measurement_uid = item.measurement_uid
        image.acquisition_time_stamp = item.acquisition_time_stamp
        image.patient_table_position[:] = list(geo.patient_table_position)
        return (image,)


def _reconstruct(
    gadget: Gadget,
    kd: KData,
    method: str,
    *,
    timeout_s: float = RECON_JOB_TIMEOUT_S,
    **options: Any,
) -> Any:
    """:func:`mr0core.recon.auto.reconstruct`, as a call of the server's scheduler when it has one.

    The SENSE and NUFFT recons are the heavy ones: they go to a worker (a GPU when one fits)
    as a ``reconstruct`` call (:func:`gadgets.framework.offload.offload_wait`) with the priority
    class ``recon``. The raw data (and a reference scan) go as objects; the reconstruction comes
    back as one; the scheduler estimates its memory from them
    (:func:`scheduler.estimate.estimate_reconstruct_call`). Without a scheduler the recon runs
    here.

    A call gets ``timeout_s`` in all, queued and running (the scheduler stops a run at the same
    time): then it is cancelled and a :class:`GadgetError` says so. At most
    :data:`RECON_JOB_ATTEMPTS` starts. The server cancels it when the session fails.
    """
    if gadget.context.scheduler is None:
        return reconstruct(kd, method=method, **options)
    reference = options.pop("reference", None)
    # the parsed ISMRMRD header objects stay here: the reconstruction does not read them
    inputs = {
        "kdata": replace(kd, header=None),
        "reference": None if reference is None else replace(reference, header=None),
    }
    return offload_wait(gadget, "reconstruct", inputs, {"method": method, **options},
                        kind="recon", what="recon", timeout_s=timeout_s,
                        max_attempts=RECON_JOB_ATTEMPTS)  # fmt: skip


@register
class NUFFTGadget(Gadget):
    """Non-Cartesian :class:`AcquisitionBuffer` with a trajectory -> combined magnitude images.

    Runs :func:`mr0core.recon.auto.reconstruct` with ``method="nufft"`` (density-compensated
    NUFFT, :func:`mr0core.recon.nufft.reco_nufft`) or ``"adjoint"`` (exact adjoint DFT).
    """

    properties: ClassVar[dict[str, Property]] = {
        "method": Property("choice", "nufft", "nufft or adjoint", choices=("nufft", "adjoint")),
        "combine": Property("choice", "rss", "coil combination", choices=("rss", "adaptive")),
    }

    job_timeout_s: ClassVar[float] = RECON_JOB_TIMEOUT_S
    """Longest a recon job may take, queued and running (s), with the server's scheduler."""

    def process_item(self, item: Item) -> Iterable[Item]:
        """Reconstruct one buffer."""
        if not isinstance(item, AcquisitionBuffer):
            return (item,)
        kd = item.kdata
        if kd.kspace is None:
            raise GadgetError(
                f"{self.name}: the acquisitions carry no trajectory (a {kd.trajectory} "
                "trajectory needs one per acquisition)"
            )
        combine = "walsh" if self.props["combine"] == "adaptive" else "rss"
        try:
            rec = _reconstruct(self, kd, self.props["method"], timeout_s=self.job_timeout_s,
                               coil_combine=combine)  # fmt: skip
        except (KDataError, ValueError) as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        volumes, contrasts, _ = _counters(kd)
        return _images_from_grid(
            item,
            rec.image,
            volumes[:1],
            contrasts,
            torch.tensor([item.slice]),
            rec.fov_m,
            rec.matrix,
            coils=False,
            image_type="magnitude",
            step=rec.method.upper(),
        )


@register
class SenseGadget(Gadget):
    """Accelerated Cartesian :class:`AcquisitionBuffer` -> CG-SENSE magnitude images.

    Maps come from the fully sampled central (calibration) lines
    (:func:`mr0core.recon.sense.sensitivities_from_calibration`), the image from
    :func:`mr0core.recon.sense.cg_sense`, both through :func:`mr0core.recon.auto.reconstruct`
    (``method="sense"``); data that are not undersampled, or lack calibration lines, fall back
    to the FFT with RSS (the history says which ran).

    External reference: with ``reference`` (a measurement id), or a header
    ``measurementDependency`` of type ``SenMap`` (Gadgetron's name) or ``CoilSensitivity``, the
    maps come from that stored scan (chain ``mr0_reference``; the server's ``--store``), and
    calibration lines are not needed. The reference must cover the same FOV with the same
    coils; it is prewhitened with its own noise acquisitions (if it has any), and its readout
    oversampling removed, as the chain does to the scan.
    """

    properties: ClassVar[dict[str, Property]] = {
        "iterations": Property("int", 30, "conjugate-gradient iterations", min=1, max=1000),
        "reference": Property("str", "", "measurement id of a stored coil reference scan", max=128),
    }

    _REFERENCE_TYPES = ("SenMap", "CoilSensitivity")

    job_timeout_s: ClassVar[float] = RECON_JOB_TIMEOUT_S
    """Longest a recon job may take, queued and running (s), with the server's scheduler."""

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        self._reference: KData | None = None
        self._reference_id = ""

    def reference_kdata(self) -> KData | None:
        """Return the stored reference scan the session names, ready for SENSE; None if none."""
        mid = reference_id(self.context, self.props["reference"], self._REFERENCE_TYPES)
        if not mid:
            return None
        if self._reference is not None and mid == self._reference_id:
            return self._reference
        if self.context.store is None:
            raise GadgetError(
                f"{self.name}: reference scan {mid!r} named, but the server has no store (--store)"
            )
        try:
            header_xml, acqs = self.context.store.load_reference(mid)
            kd = kdata_from_acquisitions(header_xml, acqs, f"reference scan {mid}")
        except (StoreError, MrdFormatError, KDataError) as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        try:
            kd = prewhiten_kdata(kd)
        except KDataError as exc:
            raise GadgetError(f"{self.name}: reference scan {mid!r}: {exc}") from None
        if kd.trajectory == "cartesian" and kd.recon_matrix[0] < kd.encoded_matrix[0]:
            kd = remove_readout_oversampling(kd)
        self._reference, self._reference_id = kd, mid
        return kd

    def process_item(self, item: Item) -> Iterable[Item]:
        """Reconstruct one buffer."""
        if not isinstance(item, AcquisitionBuffer):
            return (item,)
        kd = item.kdata
        if kd.trajectory != "cartesian":
            raise GadgetError(f"{self.name}: SENSE needs Cartesian data, got {kd.trajectory}")
        reference = self.reference_kdata()
        try:
            rec = _reconstruct(
                self, kd, "sense", timeout_s=self.job_timeout_s,
                sense_iter=self.props["iterations"], reference=reference,
            )  # fmt: skip
        except (KDataError, ValueError) as exc:
            raise GadgetError(f"{self.name}: {exc}") from None
        volumes, contrasts, slices = _counters(kd)
        return _images_from_grid(
            item,
            rec.image,
            volumes,
            contrasts,
            slices,
            rec.fov_m,
            rec.matrix,
            coils=False,
            image_type="magnitude",
            step=rec.method.upper(),
        )


# -------------------------------------------------------------------------------------------
# saving
# -------------------------------------------------------------------------------------------

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


@register
class SaveDataGadget(Gadget):
    """Write the session to ``save_dir/<session_id or 'session'>.h5`` (MRD HDF5).

    The header, acquisitions (noise included), waveforms and images go to the file through
    :class:`gadgets.wire.mrdfile.SessionWriter`; they are not passed on unless ``passthrough`` is
    set. Text items pass on. An existing file is not overwritten: ``-1``, ``-2``, ... is added
    to the name.
    """

    takes_images = True
    properties: ClassVar[dict[str, Property]] = {
        "passthrough": Property("bool", False, "also pass the saved items on"),
        "group": Property("str", "dataset", "HDF5 group of the session"),
    }

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        self.saved_path: Path | None = None
        """The file written (once the stream ended)."""

    def _path(self) -> Path:
        save_dir = self.context.save_dir
        if save_dir is None:
            raise GadgetError(f"{self.name}: the server has no save directory (--save-dir)")
        stem = self.context.session_id or "session"
        if not _SAFE_ID.fullmatch(stem):
            raise GadgetError(f"{self.name}: session id {stem!r} is not a safe file name")
        root = Path(save_dir)
        path = root / f"{stem}.h5"
        n = 0
        while path.exists():
            n += 1
            path = root / f"{stem}-{n}.h5"
        return path

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Save every MRD item; yield text (and the items with ``passthrough``)."""
        import ismrmrd

        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", self.props["group"]):
            raise GadgetError(f"{self.name}: group {self.props['group']!r} is not a plain name")
        path = self._path()
        with SessionWriter(path, group=self.props["group"]) as writer:
            header = self.context.header_xml
            if not header and self.context.header is not None:
                import ismrmrd.xsd

                header = ismrmrd.xsd.ToXML(self.context.header)
            if header:
                writer.write_header(header)
            for item in items:
                if isinstance(item, ismrmrd.Acquisition | ismrmrd.Waveform | ismrmrd.Image):
                    writer.add(item)
                    if self.props["passthrough"]:
                        yield item
                else:
                    yield item
            counts = dict(writer.counts)
        self.logger.info("%s: saved %s to %s", self.name, counts, path)
        self.saved_path = path

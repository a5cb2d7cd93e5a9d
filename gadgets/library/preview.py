"""Digital-twin gadgets: simulate a protocol on a phantom inside a session (chain ``mr0_preview``).

A preview session sends config ``mr0_preview``, optionally an ISMRMRD header, and a JSON text
message with the job (the JSON keys are this gadget's properties, see :class:`TwinPreviewGadget`):

``{"seq": <.seq text> | "seq_b64": <base64>, "phantom": "brain", "size": 64, "coils": 1,
"accuracy": 1e-3, "noise": 0, "return_raw": false, "rf_model": "instantaneous"}``

``rf_model`` ``"shaped"`` simulates each pulse of the ``.seq`` from its RF waveform and gradients
(slice profiles, :mod:`mr0core.sim.shaped`) instead of as an instantaneous rotation; ``sub_slices``
(1 to 32, with ``"shaped"`` only) sets the positions through a 2-D twin's thickness (default
automatic: enough for the profile of a time–bandwidth-4 sinc to 1 %). The main pass costs
``sub_slices`` times more, and the scheduler's memory estimate counts them. The retro chain
(:mod:`gadgets.library.retro`) takes both too.

With a header, the twin is placed as the subject lies (:func:`place_twin`): turned for the
header's ``patientPosition`` and, with ``match_fov`` (default), stretched in-plane to the header's
reconstructed field of view.

The gadget takes the sequence from the text (nothing is read from a path a client names),
builds the twin (a built-in phantom, or ``<name>.json`` from the server's ``--phantoms`` folder),
simulates it with PDG (:func:`mr0core.jobs.run_simulation`, text progress messages while it
runs), reconstructs it by its trajectory (:func:`mr0core.recon.reconstruct`: Cartesian FFT or
NUFFT) and yields magnitude images in series "MR0 twin preview". The images are those of
``mr0 simulate SEQ --phantom P --size N --recon OUT`` with the same settings.

Where the work runs: with the server's scheduler (the default) the server never parses the
``.seq``. It checks the text's size against ``SeqLimits().max_file_bytes`` and hands the text
to two interactive calls of the scheduler (:func:`gadgets.framework.offload.offload`), which run in
a worker where the scheduler accounts for their memory: ``prepare_seq`` parses and converts it
within :class:`mr0core.pulseq.SeqLimits` (estimate: that parse bound,
:func:`scheduler.estimate.estimate_seq_parse`) and returns the converted
:class:`~mr0core.Sequence` with the simulation's estimate; ``simulate`` takes that sequence and
the built twin (objects, no files), simulates and reconstructs it (and makes the raw data when
asked), sending progress on the way. A malformed ``.seq`` comes back as the first call's
failure (``ERROR: … does not parse: …``). A session that ends early cancels its calls. Without
a scheduler (``mr0-server --no-scheduler``) all of it runs in the session's thread, in the
server process.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import queue
import tempfile
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gadgets.framework.core import (
    ChainError,
    Context,
    Gadget,
    GadgetError,
    Item,
    Property,
    Text,
    check_plain_name,
    named_file,
    register,
)
from gadgets.framework.offload import offload, offload_wait
from gadgets.wire.mrdfile import read_items
from mr0core.pulseq import DEFAULT_SEQ_LIMITS

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_SUB_SLICES",
    "PATIENT_POSITIONS",
    "PREVIEW_SERIES",
    "RF_MODELS",
    "SESSION_SEQ",
    "TwinPreviewGadget",
    "check_seq_size",
    "place_twin",
]

PREVIEW_SERIES = "MR0 twin preview"
SESSION_SEQ = "<session .seq>"
"""How a client's ``.seq`` is named in error messages."""
# the text message that carries the job is bounded by the server's limits (16 MiB by default)
_MAX_SEQ = 16 * 2**20
RF_MODELS = ("instantaneous", "shaped")
"""The values of ``rf_model`` (:data:`mr0core.sim.shaped.RF_MODELS`, spelt out here so that
the server's chain checks need no simulator import)."""
MAX_SUB_SLICES = 32
"""The most ``sub_slices`` a preview may ask for."""


PATIENT_POSITIONS: dict[str, tuple[bool, tuple[int, ...]]] = {
    "HFS": (False, ()),
    "HFP": (False, (0, 1)),
    "FFS": (False, (0,)),
    "FFP": (False, (1,)),
    "HFDR": (True, (0,)),
    "HFDL": (True, (1,)),
    "FFDR": (True, ()),
    "FFDL": (True, (0, 1)),
}
"""ISMRMRD ``patientPosition`` → (swap x and y, then mirror these axes) of a twin made for HFS.

The built-in twins are axial slices of a head-first supine subject (x: right → left, y:
anterior → posterior). Prone turns the slice by 180°, feet-first mirrors left and right, and
the decubitus positions turn it by a quarter (an in-plane approximation of lying on a side).
"""


def place_twin(phantom: Any, header: Any, match_fov: bool = True) -> tuple[Any, dict[str, str]]:
    """Place a twin (a :class:`~mr0core.TissueDict`) as the ISMRMRD header's subject lies.

    Parameters
    ----------
    phantom
        The twin, built for a head-first supine subject.
    header
        A parsed ISMRMRD header: ``measurementInformation.patientPosition`` (see
        :data:`PATIENT_POSITIONS`) and ``encoding[0].reconSpace.fieldOfView_mm``.
    match_fov
        Stretch the twin in-plane so that it spans the reconstructed FOV (x, y); its thickness
        stays.

    Returns
    -------
    tuple
        The placed twin and meta attributes saying what was done (``MR0PatientPosition``,
        ``MR0TwinSize_mm``).
    """
    meta: dict[str, str] = {}
    info = getattr(header, "measurementInformation", None)
    position = getattr(info, "patientPosition", None) if info is not None else None
    if position is not None:
        name = str(getattr(position, "value", position)).upper()
        if name not in PATIENT_POSITIONS:
            raise GadgetError(f"unknown patientPosition {name!r}")
        swap, axes = PATIENT_POSITIONS[name]
        if swap:
            phantom = phantom.transpose_xy()
        if axes:
            phantom = phantom.mirror(axes)
        meta["MR0PatientPosition"] = name
    if match_fov:
        encoding = (getattr(header, "encoding", None) or [None])[0]
        space = getattr(encoding, "reconSpace", None)
        fov = getattr(space, "fieldOfView_mm", None)
        if fov is not None and fov.x and fov.y and fov.x > 0 and fov.y > 0:
            size = next(iter(phantom.values())).size.tolist()
            new = (float(fov.x) / 1e3, float(fov.y) / 1e3, float(size[2]))
            phantom = phantom.with_size(new)
            meta["MR0TwinSize_mm"] = " ".join(f"{v * 1e3:g}" for v in new[:2])
    return phantom, meta


def twin_phantom(
    spec: str, size: int, coils: int, folder: Path | None, coils_given: bool = True
) -> tuple[Any, str]:
    """Build a built-in phantom, or load ``<spec>.json`` from the server's phantom folder.

    A NIfTI phantom has its own coils: asking for ``coils`` other than 1 is an error when
    ``coils_given`` (the job named them), else ``coils`` is ignored for it.

    Raises
    ------
    GadgetError
        For an unsafe or unknown name.
    """
    from mr0core.jobs import load_job_phantom
    from mr0core.phantom.builtin_phantoms import PHANTOMS

    if spec in PHANTOMS:
        return load_job_phantom(spec, size, coils)
    try:
        check_plain_name(spec, "phantom")
    except ValueError as exc:
        raise GadgetError(str(exc)) from None
    if folder is None:
        raise GadgetError(
            f"no phantom {spec!r}: the built-ins are {', '.join(sorted(PHANTOMS))}, and the "
            "server has no phantom folder (mr0-server --phantoms)"
        )
    try:
        path = named_file(spec, folder, ".json", "phantom")
    except ValueError as exc:
        raise GadgetError(f"{exc}; built-ins: {', '.join(sorted(PHANTOMS))}") from None
    if coils != 1 and coils_given:
        raise GadgetError("coils applies to the built-in phantoms; a NIfTI phantom has its own")
    phantom, _ = load_job_phantom(str(path), size, 1)
    return phantom, path.name


def given_seq_text(name: str, text: str, b64: str) -> str:
    """Return a session's ``.seq`` text from its ``seq`` or ``seq_b64`` property ("" if neither).

    Raises
    ------
    GadgetError
        Both are given, or ``seq_b64`` is not base64 of UTF-8 text.
    """
    if text and b64:
        raise GadgetError(f"{name}: give either seq or seq_b64, not both")
    if b64:
        try:
            return base64.b64decode(b64, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise GadgetError(f"{name}: seq_b64 is not base64 of UTF-8 text: {exc}") from None
    return text


@register
class TwinPreviewGadget(Gadget):
    """Simulate the session's sequence on a digital twin, reconstruct it, yield the images.

    Items that arrive (a preview needs none) pass on unchanged; the preview runs at the end of
    the input. With ``return_raw`` the simulated acquisitions (ISMRMRD headers as written by
    :func:`mr0core.io.mrd.sig_to_mrd`) come first.
    """

    properties: ClassVar[dict[str, Property]] = {
        "seq": Property("str", "", "the .seq file's text", max=_MAX_SEQ),
        "seq_b64": Property("str", "", "the .seq file, base64 (instead of seq)", max=_MAX_SEQ),
        "phantom": Property("str", "brain", "brain, shepp-logan, or <name> in --phantoms"),
        "size": Property("int", 64, "phantom matrix in-plane (voxels)", min=4, max=512),
        "coils": Property("int", 1, "receive coils of a built-in phantom", min=1, max=64),
        "accuracy": Property(
            "float",
            1e-3,
            "PDG main-pass thresholds (min emitted and latent signal; MR-zero's meaning)",
            min=0.0,
            max=1.0,
        ),
        "max_states": Property("int", 200, "PDG pre-pass states", min=1, max=100000),
        "noise": Property("float", 0.0, "complex noise std per sample", min=0.0),
        "seed": Property("int", 0, "noise seed", min=0),
        "return_raw": Property("bool", False, "also return the simulated acquisitions"),
        "progress_s": Property("float", 1.0, "seconds between progress texts", min=0.0),
        "series_index": Property("int", 1, "image_series_index of the images", min=0, max=65535),
        "match_fov": Property("bool", True, "with a header: stretch the twin to its recon FOV"),
        "rf_model": Property(
            "choice",
            "instantaneous",
            "RF pulses: instantaneous rotations (MR-zero's model) or shaped (slice profiles "
            "from the .seq's waveforms)",
            choices=RF_MODELS,
        ),
        "sub_slices": Property(
            "int",
            None,
            "rf_model shaped: positions through a 2-D twin's thickness (default automatic)",
            min=1,
            max=MAX_SUB_SLICES,
        ),
        "motion": Property(
            "json",
            None,
            "subject motion: {'model': 'rigid', 'translation_mm_per_s': [x, y, z], "
            "'rotation_deg_per_s': [x, y, z], 'breathing_amplitude_mm': [x, y, z], "
            "'breathing_period_s': T} or {'model': 'log', 'log': <CSV/TSV text of time, rx, ry, "
            "rz, tx, ty, tz>} (mr0core.sim.motion)",
            max=_MAX_SEQ,
        ),
    }

    def __init__(self, context: Context, name: str = "", **properties: Any) -> None:
        super().__init__(context, name, **properties)
        if self.props["sub_slices"] is not None and self.props["rf_model"] != "shaped":
            raise ChainError(
                f"gadget {self.name!r}: property 'sub_slices' applies to rf_model 'shaped', "
                f"not {self.props['rf_model']!r}"
            )
        self.motion: Any = None
        if self.props["motion"] is not None:
            from mr0core.sim.motion import MotionError, motion_from_spec

            try:
                self.motion = motion_from_spec(self.props["motion"])
            except MotionError as exc:
                raise ChainError(f"gadget {self.name!r}: property 'motion': {exc}") from None
            if self.props["rf_model"] == "shaped":
                raise ChainError(
                    f"gadget {self.name!r}: 'motion' with rf_model 'shaped' is not simulated yet"
                )

    def built_twin(self, phantom: Any) -> Any:
        """Return the twin's simulation data, moving by the job's ``motion`` (if any)."""
        data = phantom.build() if hasattr(phantom, "build") else copy.copy(phantom)
        if self.motion is not None:
            data.phantom_motion = self.motion
        return data

    def motion_meta(self) -> str:
        """Return the simulated motion for image meta: its parameters as JSON, or ``none``."""
        if self.motion is None:
            return "none"
        return json.dumps(self.motion.describe())

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Pass the input on, then run the preview."""
        yield from items
        yield from self.preview()

    # -- steps ----------------------------------------------------------------------------------

    def sequence_text(self) -> str:
        """Return the ``.seq`` text from ``seq`` or ``seq_b64``."""
        text = given_seq_text(self.name, self.props["seq"], self.props["seq_b64"])
        if not text.strip():
            raise GadgetError(
                f"{self.name}: no sequence; send a JSON text with 'seq' (the .seq file's text) "
                "or 'seq_b64'"
            )
        return text

    def preview(self) -> Iterator[Item]:
        """Parse, build the twin, simulate (with progress texts), reconstruct, yield images.

        With the server's scheduler the parse, the simulation and the reconstruction run as its
        jobs (see the module docstring); without, here.
        """
        from mr0core.jobs import SimSettings

        text = self.sequence_text()
        check_seq_size(text, self.name)
        size, coils = self.props["size"], self.props["coils"]
        phantom, phantom_name = twin_phantom(
            self.props["phantom"], size, coils, self.context.phantoms_dir
        )
        placed: dict[str, str] = {}
        if self.context.header is not None:
            phantom, placed = place_twin(phantom, self.context.header, self.props["match_fov"])
        acc = self.props["accuracy"]
        settings = SimSettings(max_states=self.props["max_states"], min_emitted=acc,
                               min_latent=acc)  # fmt: skip
        if self.context.scheduler is not None:
            yield from self._preview_jobs(text, phantom, phantom_name, settings, placed)
            return
        seq = self.parse_seq(text)
        yield Text(json.dumps({"status": "simulating", "repetitions": len(seq),
                               "phantom": phantom_name}))  # fmt: skip
        signal = yield from self._simulate(seq, phantom, settings)
        if self.props["return_raw"]:
            yield from _acquisitions(signal, seq)
        from mr0core.recon import KData, reconstruct

        rec = reconstruct(KData.from_sequence(signal, seq))
        yield from self._images(rec, phantom_name, placed)

    def parse_seq(self, text: str) -> Any:
        """Parse and convert a ``.seq`` text here, in this process (no scheduler)."""
        from mr0core.pulseq import SeqFormatError
        from mr0core.sequence import Sequence

        try:
            return Sequence.from_text(text, SESSION_SEQ)
        except SeqFormatError as exc:
            raise GadgetError(f"{self.name}: the sequence does not parse: {exc}") from None

    def _preview_jobs(
        self, text: str, phantom: Any, phantom_name: str, settings: Any, placed: dict[str, str]
    ) -> Iterator[Item]:
        """Run the preview as scheduler calls: parse and convert, then simulate, reconstruct."""
        data = self.built_twin(phantom)
        prepared = self.prepare_call(text, data, settings, recon=True)
        summary = prepared["summary"]
        yield Text(json.dumps({"status": "simulating", "repetitions": summary["repetitions"],
                               "phantom": phantom_name}))  # fmt: skip
        out = yield from self._simulate_call(
            prepared["sequence"], data, settings, summary["estimate_bytes"], recon=True,
            raw=self.props["return_raw"], sub_slices=summary.get("sub_slices"),
        )  # fmt: skip
        if self.props["return_raw"]:
            yield from out["acquisitions"]
        yield from self._images(out["recon"], phantom_name, placed)

    def prepare_call(
        self, text: str, data: Any, settings: Any, *, recon: bool = False, layout: bool = False
    ) -> dict[str, Any]:
        """Parse and convert ``text`` in a ``prepare_seq`` call; return its result.

        The result (:func:`scheduler.functions.prepare_seq`) holds the converted
        ``sequence``, a ``summary`` with the estimate of the simulation that follows, and the
        readout ``layout`` (with ``layout``). The call's estimate is the parse bound
        (:func:`scheduler.estimate.estimate_seq_parse`). Waits at most :attr:`job_timeout_s`,
        queued and running (then the call is cancelled); sends no progress (the parse is
        bounded; the client hears of the simulation next). The built twin ``data`` goes along
        only when the automatic sub-slices of ``rf_model`` ``"shaped"`` need it.
        """
        coils = int(data.coil_sens.shape[0]) if hasattr(data, "coil_sens") else 1
        tx = int(data.B1.shape[0]) if hasattr(data, "B1") else 1
        params = {
            "name": SESSION_SEQ, "voxels": int(data.voxel_count), "coils": coils, "tx": tx,
            "max_states": settings.max_states, "recon": recon, "layout": layout,
            "rf_model": self.props["rf_model"],
        }  # fmt: skip
        inputs: dict[str, Any] = {"text": text}
        if self.props["sub_slices"] is not None:
            params["sub_slices"] = self.props["sub_slices"]
        elif self.props["rf_model"] == "shaped":
            inputs["phantom"] = data
        return offload_wait(self, "prepare_seq", inputs, params, kind=self.job_kind,
                            what="sequence", timeout_s=self.job_timeout_s,
                            max_attempts=self.job_attempts)  # fmt: skip

    job_kind: ClassVar[str] = "preview"
    """The scheduler's priority class of this gadget's simulations."""

    job_timeout_s: ClassVar[float] = 600.0
    """Longest run of a simulation job (s); the scheduler then stops it and the session ends
    with an error."""

    job_attempts: ClassVar[int] = 2
    """Starts a simulation job may use: one retry after a crashed worker. Running out of host
    memory is not retried at all (the scheduler fails the job at once); out of GPU memory, the
    retry goes only to a device with more."""

    def _simulate(
        self, seq: Any, phantom: Any, settings: Any
    ) -> Generator[Item, None, torch.Tensor]:
        """Simulate (a scheduler job, or on a thread); yield progress texts; return the signal."""
        if self.context.scheduler is not None:
            return (yield from self._simulate_job(seq, phantom, settings))
        from mr0core.jobs import run_simulation

        updates: queue.Queue[tuple[int, int]] = queue.Queue()
        result: dict[str, Any] = {}

        def work() -> None:
            try:
                result["signal"] = run_simulation(
                    seq, phantom, settings, noise=self.props["noise"], progress=False,
                    seed=self.props["seed"], on_progress=lambda d, t: updates.put((d, t)),
                    rf_model=self.props["rf_model"], sub_slices=self.props["sub_slices"],
                    motion=self.motion,
                )  # fmt: skip
            except BaseException as exc:  # handed to the session's thread below
                result["error"] = exc

        thread = threading.Thread(target=work, name="mr0-twin-sim", daemon=True)
        started = time.monotonic()
        thread.start()
        last = started
        while thread.is_alive():
            thread.join(0.05)
            done = None
            while not updates.empty():
                done = updates.get_nowait()
            now = time.monotonic()
            if done is not None and now - last >= self.props["progress_s"]:
                last = now
                yield Text(json.dumps({"status": "simulating", "done": done[0], "of": done[1],
                                       "seconds": round(now - started, 1)}))  # fmt: skip
        if "error" in result:
            exc = result["error"]
            raise GadgetError(f"{self.name}: the simulation failed: {type(exc).__name__}: {exc}")
        return result["signal"]

    def _simulate_job(
        self, seq: Any, phantom: Any, settings: Any
    ) -> Generator[Item, None, torch.Tensor]:
        """Simulate a sequence object in a ``simulate`` call of the scheduler; return the signal.

        For sequences built here (a protocol made from the ISMRMRD header). The call's
        estimate is the scheduler's from the objects
        (:func:`scheduler.estimate.estimate_simulate_call`: the PDG bound, sub-slices counted).
        """
        data = self.built_twin(phantom)
        sub_slices = self.props["sub_slices"]
        if self.props["rf_model"] == "shaped" and sub_slices is None:
            from mr0core.sim.shaped import default_sub_slices

            sub_slices = default_sub_slices(seq, data)
        out = yield from self._simulate_call(seq, data, settings, None, sub_slices=sub_slices)
        return out["signal"]

    def _simulate_call(
        self,
        seq: Any,
        data: Any,
        settings: Any,
        estimate: int | None,
        *,
        recon: bool = False,
        raw: bool = False,
        sub_slices: int | None = None,
    ) -> Generator[Item, None, dict[str, Any]]:
        """Run the ``simulate`` call on ``seq`` and the built twin ``data``; yield progress texts.

        Returns the call's result (:func:`scheduler.functions.simulate_call`: ``signal``,
        ``recon``, ``acquisitions``). ``estimate``: the call's peak memory (None: the
        scheduler's estimate from the objects). ``sub_slices``: the number resolved for
        ``rf_model`` ``"shaped"`` (by ``prepare_seq`` or
        :func:`mr0core.sim.shaped.default_sub_slices`), so that the simulation uses the number
        its estimate counted; None: this gadget's ``sub_slices``. Progress texts every
        ``progress_s``; a session that ends early cancels the call; it is not durable, has a
        timeout (:attr:`job_timeout_s`, queued and running) and at most :attr:`job_attempts`
        starts.
        """
        params = {
            "max_states": settings.max_states, "min_state_mag": settings.min_state_mag,
            "min_emitted": settings.min_emitted, "min_latent": settings.min_latent,
            "noise": self.props["noise"], "seed": self.props["seed"],
            "rf_model": self.props["rf_model"], "recon": recon, "raw": raw,
        }  # fmt: skip
        if sub_slices is None:
            sub_slices = self.props["sub_slices"]
        if sub_slices is not None:
            params["sub_slices"] = int(sub_slices)
        return (yield from offload(
            self, "simulate", {"sequence": seq, "phantom": data}, params, kind=self.job_kind,
            what="simulation", timeout_s=self.job_timeout_s, max_attempts=self.job_attempts,
            estimate_bytes=estimate, progress_s=self.props["progress_s"],
        ))  # fmt: skip

    def _images(
        self, rec: Any, phantom_name: str, placed: dict[str, str] | None = None
    ) -> Iterable[Item]:
        """Yield the magnitude images of a :class:`mr0core.recon.auto.Reconstruction`."""
        from mr0core.io.mrd_images import make_mrd_images

        image = rec.image.detach().cpu()  # [volumes, contrasts, slices, x, y, z]
        volumes, contrasts, slices = image.shape[:3]
        index = 1
        meta = {
            "MR0Phantom": phantom_name,
            "MR0Accuracy": str(self.props["accuracy"]),
            "MR0RfModel": self.props["rf_model"],
            "MR0Motion": self.motion_meta(),
            "MR0Simulated": "true",  # a digital twin's image (DICOM output labels it SIMULATED)
            "MR0Reconstruction": rec.method,
            **(placed or {}),
        }
        for v in range(volumes):
            for c in range(contrasts):
                for s in range(slices):
                    yield from make_mrd_images(
                        image[v, c, s].abs(), series_index=self.props["series_index"],
                        fov_m=rec.fov_m, slices=s, contrasts=c, repetitions=v,
                        image_index_start=index, series_description=PREVIEW_SERIES,
                        image_comment=f"MR0 twin {phantom_name} {rec.method}",
                        processing_history=("MR0", "PDG", rec.method), meta=meta,
                    )  # fmt: skip
                    index += 1


def _acquisitions(signal: Any, seq: Any) -> Iterator[Item]:
    """Yield the simulated signal as ``ismrmrd.Acquisition`` objects (sig_to_mrd's headers)."""
    from mr0core.io.mrd import sig_to_mrd

    with tempfile.TemporaryDirectory(prefix="mr0-twin-") as tmp:
        path = Path(tmp) / "raw.h5"
        sig_to_mrd(path, signal, seq)
        _, acqs = read_items(path, kinds=("acquisitions",))
    yield from acqs


def check_seq_size(text: str, gadget: str) -> None:
    """Refuse a ``.seq`` text over ``SeqLimits().max_file_bytes`` (before anything else).

    Raises
    ------
    GadgetError
        Naming the size and the limit.
    """
    limit = DEFAULT_SEQ_LIMITS.max_file_bytes
    if len(text) > limit or len(text.encode("utf-8")) > limit:
        raise GadgetError(
            f"{gadget}: the sequence does not parse: {SESSION_SEQ}: {len(text.encode('utf-8'))} "
            f"bytes is more than the limit max_file_bytes={limit}"
        )

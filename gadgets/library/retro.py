"""Retro-simulation (chain ``mr0_retrosim``): an acquired protocol, re-run on a digital twin.

The session streams a measured raw dataset (a scanner, or ``mr0-client --retro FILE.h5``). The
gadget simulates the same protocol on a twin phantom, puts the simulated samples into copies of
the measured acquisitions (same headers: counters, flags, positions, trajectories), reconstructs
both with the same chain (``recon``, default ``default``) and returns

- series 1: the measured reconstruction ("MR0 retro measured"),
- series 2: the simulated one ("MR0 retro simulated"),
- series 3: their difference, measured − a · simulated ("MR0 retro difference", real-valued),
- a JSON text: ``{"nrmse": …, "ssim": …, "scale": a, "protocol": "seq" | "header",
  "rf_model": …, …}``.

``a`` is the least-squares scale of the simulated images onto the measured ones (a scanner's
intensity scale is arbitrary; ``fit_scale`` false sets ``a = 1``). NRMSE is
``‖m − a·s‖ / ‖m‖`` over all images, SSIM the mean of :func:`mr0core.recon.metrics.ssim` over
image pairs (the data range of the measured image).

Where the protocol comes from (``protocol``: ``auto`` tries them in this order):

1. ``seq``: the ``.seq`` text in the JSON (``seq`` / ``seq_b64``) or in the header's
   ``userParameterBase64`` named ``pulseq_seq``. Exact: readout ``r`` of the sequence
   (:meth:`mr0core.recon.KData.from_sequence`, noise readouts apart) is measured
   acquisition ``r`` (noise acquisitions apart); their sample counts must agree.
2. ``header``: a Cartesian GRE or SE built from the ISMRMRD header and the acquisitions' own
   counters by :func:`mr0core.io.mrd_protocol.sequence_from_mrd`; its approximations (no slice
   profile, instantaneous pulses, defaults for missing TR/TE/flip) are listed in its docstring
   and returned in the JSON (``notes``, ``defaulted``).

``rf_model`` ``"shaped"`` (and ``sub_slices``) simulate the pulses of a ``.seq`` protocol from
their waveforms, as in :mod:`gadgets.library.preview`; the header protocol has no waveforms, so its
pulses stay instantaneous.

The twin is a built-in phantom (``brain``, ``shepp-logan``) with as many receive coils as the
measured data (``coils`` 0), or a NIfTI phantom from the server's ``--phantoms`` folder. Its
physical size is its own: the twin is not scaled to the scan's field of view.

With the server's scheduler (the default) a ``.seq`` protocol is never parsed in the server: the
text goes to a ``prepare_seq`` call (as for ``mr0_preview``, see :mod:`gadgets.library.preview`),
which converts it and returns the sequence and the readout layout the mapping is checked against,
then a ``simulate`` call simulates that sequence on the twin (objects in and out, through
:func:`gadgets.framework.offload.offload`). Without a scheduler (``--no-scheduler``) it is parsed
here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Generator, Iterator
from typing import Any, ClassVar

import numpy as np
import torch

from gadgets.framework.chain import ChainError, Services, open_chain
from gadgets.framework.core import GadgetError, Item, Property, Text, register
from gadgets.library.preview import TwinPreviewGadget, check_seq_size, twin_phantom

__all__ = ["RETRO_SERIES", "RetroSimGadget"]

RETRO_SERIES = {1: "MR0 retro measured", 2: "MR0 retro simulated", 3: "MR0 retro difference"}
"""The output series: index → SeriesDescription."""

_NOISE_FLAG = 1 << 18  # ISMRMRD ACQ_IS_NOISE_MEASUREMENT (bit 19)
_SEQ_PARAMETER = "pulseq_seq"


def header_seq_text(header: Any) -> str | None:
    """Return the ``.seq`` text in the header's ``userParameterBase64`` ``pulseq_seq``, if any.

    Raises
    ------
    GadgetError
        If the parameter is there but is not UTF-8 text.
    """
    params = getattr(header, "userParameters", None) if header is not None else None
    for p in getattr(params, "userParameterBase64", None) or []:
        if p.name == _SEQ_PARAMETER:
            value = p.value
            if isinstance(value, str):  # some bindings leave base64 text undecoded
                value = base64.b64decode(value)
            try:
                return bytes(value).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise GadgetError(f"header parameter {_SEQ_PARAMETER} is not text: {exc}") from None
    return None


@register
class RetroSimGadget(TwinPreviewGadget):
    """Reconstruct the measured data and their simulation on a twin; compare (see module)."""

    properties: ClassVar[dict[str, Property]] = {
        **{
            k: v
            for k, v in TwinPreviewGadget.properties.items()
            # the series are fixed (1, 2, 3); the twin keeps its size and orientation
            if k not in ("return_raw", "series_index", "match_fov")
        },
        "coils": Property("int", 0, "twin receive coils; 0: as many as measured", min=0, max=64),
        "protocol": Property(
            "choice", "auto", "where the protocol comes from", choices=("auto", "seq", "header")
        ),
        "kind": Property(
            "choice",
            "auto",
            "header protocol: gre, se or auto (from the header)",
            choices=("auto", "gre", "se"),
        ),
        "dummy_scans": Property(
            "int", 0, "header protocol: repetitions without ADC first", min=0, max=10000
        ),
        "recon": Property("str", "default", "chain that reconstructs both", max=128),
        "fit_scale": Property("bool", True, "scale the simulation onto the measurement"),
    }

    job_kind: ClassVar[str] = "retrosim"

    def process(self, items: Iterator[Item]) -> Iterator[Item]:
        """Collect the acquisitions, simulate, reconstruct both, compare."""
        import ismrmrd

        acqs: list[Any] = []
        for item in items:
            if isinstance(item, ismrmrd.Acquisition):
                acqs.append(item)
            elif isinstance(item, Text):
                yield item
        if self.context.header is None:
            raise GadgetError(f"{self.name}: retro-simulation needs the scan's ISMRMRD header")
        imaging = [i for i, a in enumerate(acqs) if not int(a.flags) & _NOISE_FLAG]
        if not imaging:
            raise GadgetError(f"{self.name}: the session sent no imaging acquisitions")
        coils = {int(acqs[i].active_channels) for i in imaging}
        if len(coils) != 1:
            raise GadgetError(f"{self.name}: acquisitions differ in channel count {sorted(coils)}")
        n_coils = coils.pop()
        text = self._protocol_text()
        if text is not None:
            check_seq_size(text, self.name)
        twin_coils = self.props["coils"] or n_coils
        if twin_coils != n_coils:
            raise GadgetError(f"{self.name}: the twin has {twin_coils} coils, the scan {n_coils}")
        phantom, phantom_name = twin_phantom(
            self.props["phantom"], self.props["size"], twin_coils, self.context.phantoms_dir,
            coils_given=bool(self.props["coils"]),
        )  # fmt: skip
        from mr0core.jobs import SimSettings

        acc = self.props["accuracy"]
        settings = SimSettings(max_states=self.props["max_states"], min_emitted=acc,
                               min_latent=acc)  # fmt: skip
        if text is not None and self.context.scheduler is not None:
            signal, mapping, info = yield from self._seq_jobs(
                text, phantom, phantom_name, settings, acqs, imaging
            )
        else:
            if text is not None:
                seq, mapping, info = self._seq_protocol(text, acqs, imaging)
            else:
                seq, mapping, info = self._header_protocol(acqs)
            yield self._status(info, mapping, phantom_name)
            signal = yield from self._simulate(seq, phantom, settings)
        if signal.shape[1] != n_coils:
            raise GadgetError(
                f"{self.name}: the twin {phantom_name} gives {signal.shape[1]} coils, the scan "
                f"has {n_coils}"
            )
        simulated = _simulated_acquisitions(acqs, mapping, signal)
        measured_images = self._reconstruct(acqs, "measured")
        simulated_images = self._reconstruct(simulated, "simulated")
        if len(measured_images) != len(simulated_images):
            raise GadgetError(
                f"{self.name}: {len(measured_images)} measured but {len(simulated_images)} "
                "simulated images"
            )
        yield from self._compare(measured_images, simulated_images, info, phantom_name)

    # -- steps ----------------------------------------------------------------------------------

    def _seq_text(self) -> str | None:
        if self.props["seq"] or self.props["seq_b64"]:
            return self.sequence_text()
        return header_seq_text(self.context.header)

    def _protocol_text(self) -> str | None:
        """Return the ``.seq`` text of the protocol, or None for the header protocol."""
        mode = self.props["protocol"]
        text = self._seq_text() if mode in ("auto", "seq") else None
        if text is None and mode == "seq":
            raise GadgetError(
                f"{self.name}: protocol 'seq' needs the .seq: 'seq'/'seq_b64' in the JSON or "
                f"the header's userParameterBase64 '{_SEQ_PARAMETER}'"
            )
        return text

    @staticmethod
    def _status(info: dict[str, Any], mapping: list[Any], phantom_name: str) -> Text:
        return Text(json.dumps({"status": "simulating", "protocol": info["protocol"],
                                "readouts": len(mapping), "phantom": phantom_name}))  # fmt: skip

    def _seq_jobs(
        self,
        text: str,
        phantom: Any,
        phantom_name: str,
        settings: Any,
        acqs: list[Any],
        imaging: list[int],
    ) -> Generator[Item, None, tuple[torch.Tensor, list[tuple[int, int, int]], dict[str, Any]]]:
        """Convert the ``.seq`` and simulate it as scheduler calls; return signal, mapping, info."""
        data = self.built_twin(phantom)
        prepared = self.prepare_call(text, data, settings, layout=True)
        rows, summary = prepared["layout"], prepared["summary"]
        mapping = self._mapping(rows[:, 0].tolist(), rows[:, 1].tolist(), acqs, imaging)
        info = {"protocol": "seq"}
        yield self._status(info, mapping, phantom_name)
        out = yield from self._simulate_call(
            prepared["sequence"], data, settings, summary["estimate_bytes"],
            sub_slices=summary.get("sub_slices"),
        )  # fmt: skip
        return out["signal"], mapping, info

    def _seq_protocol(
        self, text: str, acqs: list[Any], imaging: list[int]
    ) -> tuple[Any, list[tuple[int, int, int]], dict[str, Any]]:
        from mr0core.recon.kdata import KData

        seq = self.parse_seq(text)
        # the readouts of the sequence, as KData splits them (no signal needed for the layout)
        n_samples = sum(int((rep.adc_usage != 0).sum()) for rep in seq)
        layout = KData.from_sequence(torch.zeros(n_samples, 1, dtype=torch.complex64), seq)
        mapping = self._mapping(
            layout.readout_start.tolist(), layout.readout_length.tolist(), acqs, imaging
        )
        return seq, mapping, {"protocol": "seq"}

    def _mapping(
        self, starts: list[int], lengths: list[int], acqs: list[Any], imaging: list[int]
    ) -> list[tuple[int, int, int]]:
        """Pair readout ``r`` of the sequence with imaging acquisition ``r``; check samples."""
        if len(starts) != len(imaging):
            raise GadgetError(
                f"{self.name}: the sequence has {len(starts)} imaging readouts, the scan "
                f"{len(imaging)} imaging acquisitions; is it the protocol that was measured?"
            )
        mapping = []
        for r, (i, s, n) in enumerate(zip(imaging, starts, lengths, strict=True)):
            if int(acqs[i].number_of_samples) != n:
                raise GadgetError(
                    f"{self.name}: readout {r} of the sequence has {n} samples, acquisition {i} "
                    f"has {int(acqs[i].number_of_samples)}"
                )
            mapping.append((i, int(s), int(n)))
        return mapping

    def _header_protocol(
        self, acqs: list[Any]
    ) -> tuple[Any, list[tuple[int, int, int]], dict[str, Any]]:
        from mr0core.io.mrd_protocol import sequence_from_mrd

        try:
            proto = sequence_from_mrd(
                self.context.header, acqs, kind=self.props["kind"],
                dummy_scans=self.props["dummy_scans"],
            )  # fmt: skip
        except ValueError as exc:
            raise GadgetError(f"{self.name}: no protocol from the header: {exc}") from None
        mapping, row = [], 0
        for i in proto.acquisitions:
            n = int(acqs[i].number_of_samples)
            mapping.append((i, row, n))
            row += n
        info = {
            "protocol": "header", "kind": proto.kind, "defaulted": list(proto.defaulted),
            "notes": list(proto.notes), "parameters": _jsonable(proto.parameters),
        }  # fmt: skip
        return proto.seq, mapping, info

    def _reconstruct(self, acqs: list[Any], what: str) -> list[Any]:
        """Run the ``recon`` chain on a list of acquisitions; return its images."""
        import ismrmrd

        ctx = self.context
        # the sub-chain gets the session's header, folders and store, not its save folder or
        # scheduler: it runs in this gadget's thread and saves nothing
        services = Services(phantoms_dir=ctx.phantoms_dir, chains_dir=ctx.chains_dir,
                            store=ctx.store)  # fmt: skip
        name = self.props["recon"]
        if name in ("mr0_retrosim", "mr0_preview", "mr0_retrieve"):
            raise GadgetError(f"{self.name}: recon must be a reconstruction chain, not {name!r}")
        try:
            chain = open_chain(name, ctx.header_xml, None, services, session_id=ctx.session_id,
                               header=ctx.header, logger=ctx.logger)  # fmt: skip
        except ChainError as exc:
            raise GadgetError(f"{self.name}: recon chain: {exc}") from None
        images = [out for out in chain.run(iter(acqs)) if isinstance(out, ismrmrd.Image)]
        if not images:
            raise GadgetError(f"{self.name}: the {name!r} chain made no image of the {what} data")
        return images

    def _compare(
        self, measured: list[Any], simulated: list[Any], info: dict[str, Any], phantom: str
    ) -> Iterator[Item]:
        import ismrmrd

        from mr0core.recon.metrics import least_squares_scale, ssim

        m = [np.abs(np.asarray(im.data, dtype=np.complex64)).astype(np.float64) for im in measured]
        s = [np.abs(np.asarray(im.data, dtype=np.complex64)).astype(np.float64) for im in simulated]
        for a, b in zip(m, s, strict=True):
            if a.shape != b.shape:
                raise GadgetError(f"{self.name}: image shapes differ: {a.shape} and {b.shape}")
        m_all = torch.from_numpy(np.concatenate([a.ravel() for a in m]))
        s_all = torch.from_numpy(np.concatenate([b.ravel() for b in s]))
        scale = float(least_squares_scale(m_all, s_all)) if self.props["fit_scale"] else 1.0
        ref_norm = float(torch.linalg.vector_norm(m_all))
        error = float(torch.linalg.vector_norm(m_all - scale * s_all))
        nrmse = error / ref_norm if ref_norm > 0 else float("nan")
        scores = []
        for a, b in zip(m, s, strict=True):
            plane_a = torch.from_numpy(a.reshape(-1, *a.shape[-2:]))
            plane_b = torch.from_numpy(scale * b.reshape(-1, *b.shape[-2:]))
            if min(plane_a.shape[-2:]) >= 11 and float(plane_a.max()) > 0:
                scores.append(float(ssim(plane_a, plane_b)))
        for index, images in ((1, measured), (2, simulated)):
            for img in images:
                extra = {"MR0Phantom": phantom, "MR0Simulated": "true" if index == 2 else "false"}
                if index == 2:
                    extra["MR0Motion"] = self.motion_meta()
                yield _relabel(img, index, extra)
        for img, a, b in zip(measured, m, s, strict=True):
            diff = (a - scale * b).astype(np.float32)
            out = ismrmrd.Image(head=img.getHead(), attribute_string=img.attribute_string,
                                data=diff.reshape(np.asarray(img.data).shape))  # fmt: skip
            out.image_type = ismrmrd.IMTYPE_REAL
            yield _relabel(out, 3, {"MR0Phantom": phantom, "MR0Scale": f"{scale:.6g}",
                                    "MR0Motion": self.motion_meta(),
                                    "MR0Simulated": "true"})  # fmt: skip
        report = {
            "nrmse": nrmse, "ssim": float(np.mean(scores)) if scores else None,
            "scale": scale, "images": len(measured), "phantom": phantom,
            "recon": self.props["recon"], "rf_model": self.props["rf_model"],
            "motion": None if self.motion is None else self.motion.describe(), **info,
        }  # fmt: skip
        yield Text(json.dumps(report))


def _relabel(img: Any, series: int, extra: dict[str, str]) -> Any:
    """Set an image's series index and its meta SeriesDescription (and ``extra`` meta)."""
    import ismrmrd

    img.image_series_index = series
    meta = ismrmrd.Meta.deserialize(img.attribute_string) if img.attribute_string else (
        ismrmrd.Meta()
    )  # fmt: skip
    meta["SeriesDescription"] = RETRO_SERIES[series]
    for key, value in extra.items():
        meta[key] = value
    img.attribute_string = meta.serialize()
    return img


def _simulated_acquisitions(
    acqs: list[Any], mapping: list[tuple[int, int, int]], signal: torch.Tensor
) -> list[Any]:
    """Return copies of the measured acquisitions holding the simulated samples.

    Noise acquisitions stay as measured (the recon's prewhitening then treats both alike);
    acquisitions the protocol does not simulate are left out.
    """
    import ismrmrd

    sig = signal.detach().cpu().to(torch.complex64).numpy()  # [samples, coils]
    rows = {i: (s, n) for i, s, n in mapping}
    out = []
    for i, acq in enumerate(acqs):
        if int(acq.flags) & _NOISE_FLAG:
            out.append(acq)
            continue
        if i not in rows:
            continue
        s, n = rows[i]
        traj = np.asarray(acq.traj) if int(acq.trajectory_dimensions) else None
        copy = ismrmrd.Acquisition(head=acq.getHead(), data=np.ascontiguousarray(sig[s : s + n].T),
                                   trajectory=traj)  # fmt: skip
        out.append(copy)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor | np.ndarray):
        return _jsonable(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value

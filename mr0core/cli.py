"""The ``mr0`` command line: library commands that need no server.

Sub-commands: ``demo``, ``simulate``, ``recon``, ``seq-info``, ``phantom``, ``rf-profile`` and
``twin``. (Sending DICOM to a PACS is networking, which ``mr0core`` does not do:
``mr0-client --send-dicom``.)
Bad input (a missing or broken file, a phantom that does not load, an output that cannot be
written) gives one line on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mr0core.jobs import SimSettings
from mr0core.pulseq.info import format_seq_info, seq_info
from mr0core.pulseq.reader import SeqFormatError

from .clitools import exit_quietly_on_closed_pipe

__all__ = ["DEFAULT_SEQ", "main"]

DEFAULT_SEQ = Path(__file__).parent / "data" / "sequences" / "gre.seq"


def _cmd_seq_info(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        info = seq_info(args.file)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_seq_info(info))
    return 0


def _cmd_phantom(args: argparse.Namespace) -> int:
    from mr0core.phantom.builtin_phantoms import write_phantom

    out = Path(args.out) if args.out else Path(args.kind.replace("-", "_"))
    json_path, config = write_phantom(
        args.kind,
        out,
        size=args.size,
        slices=args.slices,
        field=args.field,
        coils=args.coils,
        overwrite=args.force,
    )
    files = sorted(p.name for p in json_path.parent.glob("*.nii*"))
    print(f"wrote {json_path}")
    print(f"  tissues  {', '.join(config.tissues)}")
    print(f"  system   {config.system.B0:g} T, gyro {config.system.gyro} MHz/T")
    print(f"  grid     {args.size} x {args.size} x {args.slices}")
    print(f"  files    {', '.join(files)}")
    return 0


def _cmd_twin(args: argparse.Namespace) -> int:
    import os

    from mr0core.phantom import TissueDict

    if (args.from_dicom is None) == (args.from_bids is None):
        raise ValueError("give exactly one of --from-dicom DIR and --from-bids ROOT")
    if args.from_dicom is not None and (args.subject or args.session):
        raise ValueError("--subject and --session belong to --from-bids, not --from-dicom")
    if args.from_bids is not None and not args.subject:
        raise ValueError("--from-bids needs --subject")
    out = Path(args.out)
    if out.suffix != ".json":
        raise ValueError(f"--out must be a phantom .json file, got {out.name!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.from_dicom is not None:
            twin = TissueDict.from_dicom(args.from_dicom, name=args.name)
        else:
            twin = TissueDict.from_bids(args.from_bids, args.subject, args.session, name=args.name)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    out.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    old = os.umask(0o077)  # patient data: files 0600
    try:
        config = twin.save(out)
    finally:
        os.umask(old)
    tissue = twin[args.name]
    print(f"wrote {out}")
    voxel = [v * 1e3 / n for v, n in zip(tissue.size.tolist(), tissue.shape, strict=True)]
    print(f"  grid     {' x '.join(map(str, tissue.shape))}, voxel "
          f"{' x '.join(f'{v:.3g}' for v in voxel)} mm")  # fmt: skip
    print(f"  system   {config.system.B0:g} T")
    return 0


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """Return the simulation settings of ``mr0 simulate``'s options (``--accuracy`` first)."""
    return SimSettings.for_accuracy(
        args.accuracy, max_states=args.max_states, min_state_mag=args.min_state_mag,
        min_emitted=args.min_emitted, min_latent=args.min_latent,
    )  # fmt: skip


def _motion_file(path: str) -> Any:
    """Read ``--motion``: a motion JSON (``.json``) or a tracking log (CSV/TSV)."""
    from mr0core.sim.motion import MAX_LOG_BYTES, MotionLog, motion_from_spec

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"motion file not found: {p}")
    if p.suffix.lower() == ".json":
        if p.stat().st_size > MAX_LOG_BYTES:
            raise ValueError(f"{p}: larger than {MAX_LOG_BYTES} bytes")
        return motion_from_spec(p.read_text(encoding="utf-8"))
    return MotionLog.read(p)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mr0core.io.bids import write_ground_truth_dataset
    from mr0core.io.dicom_out import check_dicom_target, is_dicom_target
    from mr0core.jobs import check_writable, load_job_phantom, run_simulation, write_simulation
    from mr0core.sequence import Sequence

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".mrd", ".h5"):
        raise ValueError(f"--out must end in .npy, .mrd or .h5, got {out.name!r}")
    dicom = args.recon is not None and is_dicom_target(args.recon)
    if dicom:
        check_dicom_target(args.recon)
    for path in (out, None if dicom else args.recon, args.png):
        if path is not None:
            check_writable(Path(path))
    settings = settings_from_args(args)
    seq_path = Path(args.seq)
    if not seq_path.is_file():
        raise FileNotFoundError(f"sequence file not found: {seq_path}")
    motion = _motion_file(args.motion) if args.motion else None
    if args.sub_slices is not None and args.rf_model != "shaped":
        raise ValueError("--sub-slices applies to --rf-model shaped")
    seq = Sequence.import_file(seq_path)
    phantom, name = load_job_phantom(args.phantom, args.size, args.coils)
    used = [settings]  # the refined settings, if the pre-pass refines them (sidecar)
    signal = run_simulation(
        seq, phantom, settings, args.device, args.noise, seed=args.seed, rf_model=args.rf_model,
        sub_slices=args.sub_slices, motion=motion, on_refine=used.append,
    )  # fmt: skip
    settings = used[-1]
    files = write_simulation(
        signal, seq, phantom, name, settings, signal_path=out, image_path=args.recon,
        png_path=args.png, noise=args.noise, seed=args.seed, motion=motion,
    )  # fmt: skip
    print(f"wrote {out}  ({signal.shape[0]} samples x {signal.shape[1]} coils)")
    if args.recon:
        # the phantom's maps: a BIDS derivative dataset beside the image (subject label
        # from the phantom name), e.g. sim_ground_truth/sub-brain/anat/sub-brain_T1map.nii.gz
        truth = Path(args.recon).parent / f"{Path(args.recon).name.split('.')[0]}_ground_truth"
        write_ground_truth_dataset(truth, phantom.combine(), phantom_name=name)
        files.append(truth)
    for f in files[1:]:
        print(f"wrote {f}")
    return 0


def _cmd_dro(args: argparse.Namespace) -> int:
    from mr0core.perfusion.dro import generate, write_default_params

    if args.write_params:
        if args.params or args.out:
            raise ValueError("--write-params takes no PARAMS and no --out")
        print(f"wrote {write_default_params(args.write_params)}")
        return 0
    if not args.out:
        raise ValueError("--out is required (a folder, .zip or .tar.gz)")
    files = generate(args.params, args.out)
    print(f"wrote {args.out} ({len(files)} files)")
    return 0


def _cmd_recon(args: argparse.Namespace) -> int:
    from mr0core.io.dicom_out import (
        check_dicom_target,
        identity_from_header,
        mrd_file_geometry,
        write_recon_dicom,
    )
    from mr0core.io.mrd import header_says_simulated
    from mr0core.io.png import write_png
    from mr0core.jobs import check_writable, image_volume, reconstruct_file, write_image

    if args.out is None and args.dicom is None:
        raise ValueError("give --out (NIfTI) and/or --dicom (a DICOM series folder)")
    if args.simulated and args.dicom is None:
        raise ValueError("--simulated labels the DICOM series: it needs --dicom")
    if args.dicom is not None:
        check_dicom_target(args.dicom)
    for path in (args.out, args.png):
        if path is not None:
            check_writable(Path(path))
    rec, sidecar = reconstruct_file(args.raw, method=args.method)
    files = write_image(rec, args.out, png=args.png, sidecar=sidecar) if args.out else []
    if args.dicom is not None:  # identity from the header, geometry from the acquisitions
        xml, centre_m, rotation, note = mrd_file_geometry(args.raw)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        files.append(write_recon_dicom(
            rec, args.dicom, simulated=args.simulated or header_says_simulated(xml),
            identity=identity_from_header(xml),
            sidecar=sidecar, centre_m=centre_m, rotation=rotation,
            series_description=f"mr0 recon {rec.method}",
        ).folder)  # fmt: skip
    if args.png and not args.out:
        files.append(write_png(args.png, image_volume(rec.image)))
    for f in files:
        print(f"wrote {f}")
    print(
        f"  {rec.method}: matrix {rec.matrix}, FOV {tuple(round(f * 1e3, 1) for f in rec.fov_m)} mm"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from mr0core.io.bids import write_ground_truth
    from mr0core.jobs import (
        SimSettings,
        build_demo_flash,
        load_job_phantom,
        run_simulation,
        write_simulation,
    )
    from mr0core.sequence import Sequence

    t0 = time.perf_counter()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    pseq = build_demo_flash(args.size)
    seq_file = out / "demo_flash.seq"
    pseq.write(str(seq_file))
    seq = Sequence.import_file(seq_file)
    phantom, name = load_job_phantom("brain", args.size)
    settings = SimSettings()
    print(f"simulating {seq_file.name} ({len(seq)} repetitions) on the {args.size}x{args.size} "
          "built-in brain")  # fmt: skip
    signal = run_simulation(seq, phantom, settings)
    files = write_simulation(
        signal, seq, phantom, name, settings, signal_path=out / "demo_flash_signal.npy",
        image_path=out / "demo_flash.nii.gz", png_path=out / "demo_flash.png",
    )  # fmt: skip
    truth = write_ground_truth(out / "ground_truth", phantom.combine(), prefix="brain",
                               phantom_name=name)  # fmt: skip
    for f in [seq_file, *files, out / "ground_truth"]:
        print(f"wrote {f}")
    print(f"  {len(truth)} ground-truth maps; done in {time.perf_counter() - t0:.1f} s")
    return 0


_RF_PROFILE_SEARCH = 64
"""Half-width of the search for a pulse's slice, in units of ``1 / ∫|G| dt`` (its resolution)."""


@dataclass
class RfProfileResult:
    """The simulated and predicted profiles of one RF pulse along its slice-select axis.

    ``z``: positions in m along ``axis`` (``[3]`` unit vector); ``mxy``, ``mz``: the Bloch
    simulation from ``Mz = 1`` (:func:`mr0core.sim.shaped.slice_profile`); ``theta``: the
    small-tip Fourier flip angle in rad (:func:`mr0core.sim.shaped.small_tip_flip`). The
    refocusing profile is ``(1 − Mz) / 2 = |b|²`` (Cayley–Klein ``b``): the fraction of
    transverse magnetisation a refocusing pulse turns into an echo, and the inversion of Mz.
    """

    z: np.ndarray
    axis: np.ndarray
    mxy: np.ndarray
    mz: np.ndarray
    theta: np.ndarray
    refocusing: bool
    """Whether the pulse refocuses (usage REFOC, or nominal angle above 90°): then the main
    profile is the refocusing profile, else ``|Mxy|``."""

    @property
    def mxy_fourier(self) -> np.ndarray:
        """``|sin θ(z)|``: the small-tip prediction of ``|Mxy|``."""
        result: np.ndarray = np.abs(np.sin(self.theta))
        return result

    @property
    def refocus(self) -> np.ndarray:
        """``(1 − Mz) / 2``, simulated."""
        return 0.5 * (1.0 - self.mz)

    @property
    def refocus_fourier(self) -> np.ndarray:
        """``sin²(θ(z) / 2)``: the small-tip prediction of the refocusing profile."""
        return np.sin(0.5 * self.theta) ** 2

    @property
    def main(self) -> tuple[np.ndarray, np.ndarray]:
        """The (simulated, predicted) profile the summary compares."""
        if self.refocusing:
            return self.refocus, self.refocus_fourier
        return self.mxy, self.mxy_fourier


def fwhm(z: np.ndarray, profile: np.ndarray) -> float:
    """Full width at half maximum (units of ``z``) of the peak of ``profile``.

    The half-maximum crossings on either side of the largest value, interpolated linearly;
    NaN where the profile does not fall to half its peak within ``z``.
    """
    i = int(np.argmax(profile))
    half = 0.5 * float(profile[i])
    if not half > 0:
        return float("nan")
    below = np.flatnonzero(profile[: i + 1] < half)
    above = np.flatnonzero(profile[i:] < half)
    if len(below) == 0 or len(above) == 0:
        return float("nan")
    lo, hi = int(below[-1]), i + int(above[0])

    def cross(a: int, b: int) -> float:  # profile[a] and profile[b] straddle half
        frac = (half - profile[a]) / (profile[b] - profile[a])
        return float(z[a] + frac * (z[b] - z[a]))

    return cross(hi - 1, hi) - cross(lo, lo + 1)


def rf_profile(
    wave: Any, scale: float, refocusing: bool, points: int = 401,
    z_range: tuple[float, float] | None = None,
) -> RfProfileResult:  # fmt: skip
    """Simulate and predict the slice profile of a waveform played at ``scale`` × its B1.

    Without ``z_range`` (m, along the axis) the profile covers the slice's centre ± 2 slice
    thicknesses: the centre is the peak of the small-tip profile, found within
    ±:data:`_RF_PROFILE_SEARCH` resolutions (``1 / ∫|G·axis| dt``) of the position that the
    waveform's mean frequency selects, the thickness is that profile's FWHM.

    Raises
    ------
    ValueError
        If the waveform plays no gradient (it selects no slice).
    """
    import torch

    from mr0core.sim.shaped import profile_axis, slice_profile, small_tip_flip

    axis = profile_axis(wave)
    g = (wave.grad.detach().double() @ axis).numpy()
    dt = wave.dt.detach().double().numpy()
    extent = float(np.sum(np.abs(g) * dt))  # 1/m
    if not float(wave.grad.detach().double().mean(0).norm()) > 0 or extent == 0:
        raise ValueError("the RF pulse plays no gradient: it selects no slice")

    def theta(z: np.ndarray) -> np.ndarray:
        return scale * small_tip_flip(wave, torch.from_numpy(z), axis).numpy()

    def main(t: np.ndarray) -> np.ndarray:
        return np.sin(0.5 * t) ** 2 if refocusing else np.abs(np.sin(t))

    if z_range is None:
        # the slice lies where G·z cancels the waveform's frequency: b1 ~ exp(−2πi G z0 t)
        b1 = wave.b1.detach().to(torch.complex128).numpy()
        mid = np.cumsum(dt) - 0.5 * dt
        turn = np.sum(b1[1:] * np.conj(b1[:-1]))
        played = np.abs(b1) > 0
        g_med = float(np.median(g[played])) if played.any() else float(np.median(g))
        z0 = 0.0
        if len(b1) > 1 and abs(turn) > 0 and g_med != 0:
            freq = float(np.angle(turn)) / (2 * np.pi * float(np.mean(np.diff(mid))))
            z0 = -freq / g_med
        half = _RF_PROFILE_SEARCH / extent
        coarse = z0 + np.linspace(-half, half, 16 * _RF_PROFILE_SEARCH + 1)
        pred = main(theta(coarse))
        centre = float(coarse[int(np.argmax(pred))])
        width = fwhm(coarse, pred)
        if not np.isfinite(width) or width <= 0:
            width = 4.0 / extent  # a time–bandwidth-4 slice
        z_range = (centre - 2 * width, centre + 2 * width)
    z = np.linspace(z_range[0], z_range[1], points)
    mplus, mz = slice_profile(
        wave, torch.from_numpy(z).float(), axis, b1_scale=scale
    )  # fmt: skip
    return RfProfileResult(
        z=z, axis=axis.numpy(), mxy=mplus.abs().double().numpy(), mz=mz.double().numpy(),
        theta=theta(z), refocusing=refocusing,
    )  # fmt: skip


def _block_pulse(path: Path, block: int) -> tuple[Any, Any]:
    """Return the :class:`~mr0core.sequence.Pulse` of Pulseq block ``block`` and the file."""
    from mr0core.pulseq import read_seq, seq_to_sequence
    from mr0core.pulseq.convert import RF

    parsed = read_seq(path)
    ids = parsed.block_ids
    hits = np.flatnonzero(ids == block)
    if len(hits) == 0:
        span = f"{int(ids.min())} to {int(ids.max())}" if len(ids) else "none"
        raise ValueError(f"{path.name}: there is no block {block} (block numbers: {span})")
    rf_blocks = np.flatnonzero(parsed.blocks[:, RF])
    b = int(hits[0])
    if parsed.blocks[b, RF] == 0:
        with_rf = ", ".join(str(int(ids[i])) for i in rf_blocks[:8])
        more = ", …" if len(rf_blocks) > 8 else ""
        raise ValueError(
            f"{path.name}: block {block} has no RF pulse"
            + (f" (blocks with RF: {with_rf}{more})" if len(rf_blocks) else " (the file has none)")
        )
    seq = seq_to_sequence(parsed)
    rep = int(np.searchsorted(rf_blocks, b)) + len(seq) - len(rf_blocks)
    pulse = seq[rep].pulse
    if pulse.waveform is None:
        raise ValueError(f"{path.name}: the RF pulse of block {block} has no waveform")
    return pulse, parsed


def _cmd_rf_profile(args: argparse.Namespace) -> int:
    import math

    from mr0core.jobs import check_writable
    from mr0core.sequence import PulseUsage

    for path in (args.png, args.csv):
        if path is not None:
            check_writable(Path(path))
    if args.points < 3:
        raise ValueError(f"--points must be at least 3, got {args.points}")
    if not (math.isfinite(args.flip_scale) and args.flip_scale > 0):
        raise ValueError(f"--flip-scale must be a number > 0, got {args.flip_scale}")
    z_range = None
    if args.range is not None:
        lo, hi = args.range
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"--range needs MIN < MAX in mm, got {lo:g} {hi:g}")
        z_range = (lo * 1e-3, hi * 1e-3)
    seq_path = Path(args.seq)
    if not seq_path.is_file():
        raise FileNotFoundError(f"sequence file not found: {seq_path}")
    pulse, _ = _block_pulse(seq_path, args.block)
    wave = pulse.waveform
    angle = float(pulse.angle)
    scale = args.flip_scale * (angle / wave.angle if wave.angle > 0 else 1.0)
    refocusing = pulse.usage == PulseUsage.REFOC or math.degrees(angle) > 90.01
    try:
        prof = rf_profile(wave, scale, refocusing, args.points, z_range)
    except ValueError as exc:
        raise ValueError(f"{seq_path.name}: block {args.block}: {exc}") from None
    z_mm = prof.z * 1e3
    sim, pred = prof.main
    what = "refocusing (1-Mz)/2" if refocusing else "|Mxy|"
    deg = math.degrees(angle) * args.flip_scale
    diff = float(np.max(np.abs(sim - pred)))
    peak = float(np.max(sim))
    axis = ",".join(f"{v:.3g}" for v in prof.axis)
    print(
        f"block {args.block}: {deg:.1f} deg {pulse.usage.value}, {what} along ({axis}): FWHM "
        f"simulated {fwhm(z_mm, sim):.3f} mm, small-tip Fourier {fwhm(z_mm, pred):.3f} mm; "
        f"max |difference| {diff:.4f} ({100 * diff / peak if peak > 0 else float('nan'):.1f} % "
        "of the simulated peak)"
    )
    if args.csv:
        cols = np.stack([z_mm, prof.mxy, prof.mxy_fourier, prof.mz, prof.refocus,
                         prof.refocus_fourier], 1)  # fmt: skip
        np.savetxt(args.csv, cols, delimiter=",", fmt="%.8g", comments="",
                   header="z_mm,mxy,mxy_fourier,mz,refocus,refocus_fourier")  # fmt: skip
        print(f"wrote {args.csv}")
    if args.png:
        # matplotlib only here, with its Agg canvas (no display, no pyplot state)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4.2), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(z_mm, sim, color="C0", lw=2, label=f"{what}, Bloch simulation")
        ax.plot(z_mm, pred, color="C1", ls="--", lw=1.5, label=f"{what}, small-tip Fourier")
        if refocusing:
            ax.plot(z_mm, prof.mxy, color="C2", lw=1, alpha=0.7, label="|Mxy| from Mz = 1")
        else:
            ax.plot(z_mm, prof.mz, color="C2", lw=1, alpha=0.7, label="Mz, Bloch simulation")
        ax.set_xlabel(f"position along ({axis}) / mm")
        ax.set_ylabel("magnetisation (M0 = 1)")
        ax.set_title(f"{seq_path.name}, block {args.block}: {deg:.1f}° {pulse.usage.value}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.png)
        print(f"wrote {args.png}")
    return 0


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accuracy", type=float, default=1e-3,
                   help="target NRMSE against the converged signal (default 1e-3; "
                        "calibrated on the PDG suite, see docs/library/accuracy.md); sets the four "
                        "options below")  # fmt: skip
    p.add_argument("--max-states", type=int, default=None,
                   help="pre-pass states per kind (overrides --accuracy)")  # fmt: skip
    p.add_argument("--min-state-mag", type=float, default=None,
                   help="pre-pass magnitude threshold (overrides --accuracy)")  # fmt: skip
    p.add_argument("--min-emitted", type=float, default=None, help="overrides --accuracy")
    p.add_argument("--min-latent", type=float, default=None, help="overrides --accuracy")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``mr0``."""
    parser = argparse.ArgumentParser(
        prog="mr0", description="mr0core: PDG Bloch simulation and reconstruction tools"
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "demo",
        help="build a FLASH, simulate it on the built-in brain, reconstruct, write NIfTI + PNG",
        description="The main job on embedded defaults: builds a 2-D RF-spoiled FLASH with "
        "PyPulseq (TE 5 ms, TR 12 ms, 15 deg), simulates it with PDG on the built-in brain, "
        "reconstructs it, and writes the .seq, the signal, a NIfTI image with its BIDS sidecar, a "
        "PNG preview and the phantom's ground-truth maps into --out.",
    )
    p.add_argument("--out", default="mr0_demo", help="output folder (default ./mr0_demo)")
    p.add_argument("--size", type=int, default=64, choices=[32, 64, 128], help="matrix (64)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "simulate",
        help="simulate a .seq file on a phantom (PDG), optionally reconstruct it",
        description="Simulate a Pulseq .seq file with PDG. --out .npy writes the complex64 "
        "signal [samples, coils]; .mrd/.h5 writes ISMRMRD raw data. --recon writes the "
        "reconstructed image as NIfTI with a BIDS sidecar and the phantom's ground-truth maps.",
    )
    p.add_argument("seq", help="the .seq file")
    p.add_argument("--phantom", default="brain",
                   help="brain, shepp-logan or a NIfTI phantom .json (default brain)")  # fmt: skip
    p.add_argument("--size", type=int, default=None, help="in-plane phantom matrix (default 64)")
    p.add_argument("--coils", type=int, default=1, help="receive coils of built-ins (default 1)")
    _add_sim_options(p)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--rf-model", choices=["instantaneous", "shaped"], default="instantaneous",
                   help="instantaneous pulses (MR-zero's model, default) or shaped: slice "
                        "profiles from the .seq file's RF waveforms")  # fmt: skip
    p.add_argument("--sub-slices", type=int, default=None,
                   help="with --rf-model shaped: positions through a 2-D phantom's thickness "
                        "(default automatic)")  # fmt: skip
    p.add_argument("--motion", default=None, metavar="FILE",
                   help="the subject moves: a motion JSON ({\"model\": \"rigid\", ...}) or "
                        "a tracking log (CSV/TSV: time, rx, ry, rz in °, tx, ty, tz in mm)",
                   )  # fmt: skip
    p.add_argument("--noise", type=float, default=0.0, metavar="S",
                   help="add complex Gaussian noise of standard deviation S: E|n|^2 = S^2, "
                        "S/sqrt(2) in each of the real and imaginary part (MR-zero's "
                        "util.simulate convention; default 0)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="noise seed")
    p.add_argument("--out", required=True, help="signal.npy or signal.mrd")
    p.add_argument(
        "--recon",
        default=None,
        help="also reconstruct into this .nii/.nii.gz, or "
        "into a DICOM series folder (a name ending in .dcm or .dcm/; SIMULATED); the phantom's "
        "maps go beside it into NAME_ground_truth/, a BIDS derivative dataset",
    )
    p.add_argument("--png", default=None, help="also write a PNG preview")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "recon",
        help="reconstruct ISMRMRD raw data into NIfTI",
        description="Read ISMRMRD raw data and reconstruct it by trajectory: Cartesian FFT "
        "(CG-SENSE when undersampled with calibration lines), NUFFT for radial/spiral, adjoint "
        "otherwise.",
    )
    p.add_argument("raw", help="ISMRMRD .mrd/.h5 file")
    p.add_argument("--out", default=None, help="image .nii or .nii.gz (with a .json sidecar)")
    p.add_argument(
        "--dicom",
        default=None,
        metavar="DIR",
        help="write the image as a DICOM series folder (identity from the header)",
    )
    p.add_argument(
        "--simulated",
        action="store_true",
        help="label the --dicom series SIMULATED (automatic for files mr0 simulate wrote)",
    )
    p.add_argument("--png", default=None, help="also write a PNG preview")
    p.add_argument("--method", default="auto", choices=["auto", "fft", "sense", "nufft", "adjoint"])
    p.set_defaults(func=_cmd_recon)

    p = sub.add_parser(
        "seq-info",
        help="summarise a Pulseq .seq file",
        description="Read a Pulseq .seq file (format 1.2-1.5) and print its version, blocks, "
        "repetitions, RF pulses, ADC samples, duration, k-space extent and labels.",
    )
    p.add_argument(
        "file",
        nargs="?",
        default=str(DEFAULT_SEQ),
        help="the .seq file (default: the embedded 64x64 GRE example)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_cmd_seq_info)

    p = sub.add_parser(
        "phantom",
        help="write a built-in phantom as a NIfTI phantom (spec v1)",
        description="Write a built-in phantom as a NIfTI phantom: a JSON file plus NIfTI maps, "
        "loadable with TissueDict.load. 'brain' is the ICBM 2009a brain (grey matter, white "
        "matter, CSF with partial volume, smooth dB0 and B1+ maps); 'shepp-logan' is the MR "
        "Shepp-Logan phantom of Gach et al. 2008. No download is needed.",
    )
    p.add_argument("kind", choices=["brain", "shepp-logan"], help="which phantom")
    p.add_argument("--size", type=int, default=64, help="in-plane matrix size (default 64)")
    p.add_argument("--slices", type=int, default=1, help="number of slices (default 1)")
    p.add_argument("--field", default="3T", help="field strength of the tissue values: 3T or 1.5T")
    p.add_argument("--coils", type=int, default=1, help="receive coils (default 1: uniform)")
    p.add_argument(
        "--out", default=None, help="output directory (default: ./brain or ./shepp_logan)"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing phantom")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser(
        "dro",
        help="ASL digital reference object on the built-in brain, written as BIDS",
        description="Run the pipelines of a parameter file (asl: M0/control/label volumes from "
        "the General Kinetic Model; structural: GRE/SE/IR; ground_truth: resampled maps), each "
        "with per-volume motion, resampling and noise, on the built-in brain with ASL DRO's "
        "ground truth, and write one BIDS dataset. Engines: analytic (closed forms) or pdg (a "
        "Pulseq readout simulated by PDG). See mr0core/perfusion/dro.py for the parameters.",
    )
    p.add_argument("params", nargs="?", default=None, help="parameter JSON (default: built-in)")
    p.add_argument("--out", default=None, help="output folder, .zip or .tar.gz")
    p.add_argument("--write-params", default=None, metavar="FILE",
                   help="write the default parameters to FILE and exit")  # fmt: skip
    p.set_defaults(func=_cmd_dro)

    p = sub.add_parser(
        "rf-profile",
        help="slice profile of one RF pulse of a .seq file: Bloch simulation vs small-tip Fourier",
        description="Simulate the slice profile of the RF pulse of one Pulseq block (the "
        "shaped-RF model's Bloch integration of its waveform and gradients, from Mz = 1, "
        "referenced to the pulse centre) along its slice-select axis, and compare it with the "
        "small-tip prediction: the flip angle theta(z) = 2 pi |FT of the complex waveform| "
        "mapped to position through the gradient, |Mxy| = |sin theta(z)| (for refocusing "
        "pulses: (1 - Mz)/2 against sin^2(theta/2)). Prints the FWHM of both and their largest "
        "difference.",
    )
    p.add_argument("seq", help="the .seq file")
    p.add_argument("--block", type=int, required=True,
                   help="Pulseq block number of the pulse (as in the file's [BLOCKS])")  # fmt: skip
    p.add_argument("--range", type=float, nargs=2, metavar=("MIN", "MAX"), default=None,
                   help="positions along the axis in mm (default: the slice centre +- 2 "
                        "slice thicknesses)")  # fmt: skip
    p.add_argument("--points", type=int, default=401, help="positions (default 401)")
    p.add_argument("--flip-scale", type=float, default=1.0,
                   help="play the pulse at this multiple of its B1 (default 1)")  # fmt: skip
    p.add_argument("--png", default=None, help="write the plot here")
    p.add_argument("--csv", default=None,
                   help="write z_mm,mxy,mxy_fourier,mz,refocus,refocus_fourier here")  # fmt: skip
    p.set_defaults(func=_cmd_rf_profile)

    p = sub.add_parser(
        "twin",
        help="build a subject twin from quantitative maps in DICOM or BIDS",
        description="Find a subject's T1, T2, PD (or M0) and optional T2*, ADC, B0 and B1 maps "
        "in a DICOM folder (series classified by their attributes) or a BIDS dataset, convert "
        "them to the simulator's units and write a NIfTI phantom (JSON + NIfTI, loadable with "
        "TissueDict.load and by mr0-server --phantoms). Files are written 0600.",
    )
    p.add_argument("--from-dicom", metavar="DIR", default=None, help="a folder of DICOM files")
    p.add_argument("--from-bids", metavar="ROOT", default=None, help="a BIDS dataset root")
    p.add_argument("--subject", default=None, help="BIDS subject label (with --from-bids)")
    p.add_argument("--session", default=None, help="BIDS session label (with --from-bids)")
    p.add_argument("--name", default="subject", help="tissue name (default subject)")
    p.add_argument("--out", required=True, help="the phantom .json to write")
    p.set_defaults(func=_cmd_twin)
    return parser


@exit_quietly_on_closed_pipe
def main(argv: SequenceABC[str] | None = None) -> int:
    """Run ``mr0``; return the exit status (0 ok, 2 bad input or usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise  # standard output closed: exit_quietly_on_closed_pipe ends quietly
    except (SeqFormatError, OSError, ValueError, KeyError, RuntimeError) as exc:
        if args.debug:
            raise
        print(f"mr0 {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

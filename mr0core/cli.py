"""The ``mr0`` command line: library commands that need no server.

Sub-commands: ``demo``, ``simulate``, ``recon``, ``seq-info`` and ``phantom``. Bad input (a missing
or broken file, a phantom that does not load, an output that cannot be written) gives one line
on stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence as SequenceABC
from pathlib import Path

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


def settings_from_args(args: argparse.Namespace) -> SimSettings:
    """Return the simulation settings of ``mr0 simulate``'s options (``--accuracy`` first)."""
    return SimSettings.for_accuracy(
        args.accuracy, max_states=args.max_states, min_state_mag=args.min_state_mag,
        min_emitted=args.min_emitted, min_latent=args.min_latent,
    )  # fmt: skip


def _cmd_simulate(args: argparse.Namespace) -> int:
    from mr0core.io.bids import bids_sidecar, write_ground_truth
    from mr0core.io.params import sequence_parameters
    from mr0core.jobs import (
        _check_writable,
        load_job_phantom,
        phantom_isocentre_m,
        run_simulation,
        settings_dict,
        write_image,
    )
    from mr0core.recon import KData, reconstruct
    from mr0core.sequence import Sequence

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".mrd", ".h5"):
        raise ValueError(f"--out must end in .npy, .mrd or .h5, got {out.name!r}")
    for path in (out, args.recon, args.png):
        if path is not None:
            _check_writable(Path(path))
    settings = settings_from_args(args)
    seq_path = Path(args.seq)
    if not seq_path.is_file():
        raise FileNotFoundError(f"sequence file not found: {seq_path}")
    seq = Sequence.import_file(seq_path)
    phantom, name = load_job_phantom(args.phantom, args.size, args.coils)
    signal = run_simulation(
        seq, phantom, settings, args.device, args.noise, seed=args.seed, rf_model=args.rf_model
    )
    if out.suffix.lower() == ".npy":
        np.save(out, signal.numpy().astype(np.complex64))
    else:
        from mr0core.io.mrd import sig_to_mrd

        sig_to_mrd(out, signal, seq)
    print(f"wrote {out}  ({signal.shape[0]} samples x {signal.shape[1]} coils)")
    if args.recon or args.png:
        rec = reconstruct(KData.from_sequence(signal, seq))
        params = sequence_parameters(seq)
        sidecar = bids_sidecar(
            params, phantom_name=name, sim_settings=settings_dict(settings, args.noise, args.seed),
            field_strength_T=getattr(phantom, "system", None) and phantom.system.B0,
            matrix=rec.matrix, fov_m=rec.fov_m, extra={"ReconstructionMethod": rec.method},
        )  # fmt: skip
        if args.recon:
            files = write_image(rec, args.recon, png=args.png, sidecar=sidecar,
                                centre_m=phantom_isocentre_m(phantom))  # fmt: skip
            stem = Path(args.recon).name.split(".")[0]
            truth = write_ground_truth(
                Path(args.recon).parent / f"{stem}_ground_truth", phantom.combine(), prefix=stem,
                phantom_name=name,
            )  # fmt: skip
            files.append(next(iter(truth.values())).parent)
        else:
            from mr0core.io.png import write_png
            from mr0core.jobs import image_volume

            files = [write_png(args.png, image_volume(rec.image))]
        for f in files:
            print(f"wrote {f}")
    return 0


def _cmd_recon(args: argparse.Namespace) -> int:
    from mr0core.jobs import _check_writable, reconstruct_file, write_image

    for path in (args.out, args.png):
        if path is not None:
            _check_writable(Path(path))
    rec, sidecar = reconstruct_file(args.raw, method=args.method)
    for f in write_image(rec, args.out, png=args.png, sidecar=sidecar):
        print(f"wrote {f}")
    print(
        f"  {rec.method}: matrix {rec.matrix}, FOV {tuple(round(f * 1e3, 1) for f in rec.fov_m)} mm"
    )
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import time

    from mr0core.io.bids import bids_sidecar, write_ground_truth
    from mr0core.io.params import sequence_parameters
    from mr0core.jobs import (
        SimSettings,
        build_demo_flash,
        load_job_phantom,
        phantom_isocentre_m,
        run_simulation,
        settings_dict,
        write_image,
    )
    from mr0core.recon import KData, reconstruct
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
    np.save(out / "demo_flash_signal.npy", signal.numpy())
    rec = reconstruct(KData.from_sequence(signal, seq))
    sidecar = bids_sidecar(
        sequence_parameters(seq), phantom_name=name,
        sim_settings=settings_dict(settings, 0.0, None), field_strength_T=phantom.system.B0,
        matrix=rec.matrix, fov_m=rec.fov_m,
        extra={"ReconstructionMethod": rec.method},
    )  # fmt: skip
    files = write_image(rec, out / "demo_flash.nii.gz", png=out / "demo_flash.png",
                        sidecar=sidecar, centre_m=phantom_isocentre_m(phantom))  # fmt: skip
    truth = write_ground_truth(out / "ground_truth", phantom.combine(), prefix="brain",
                               phantom_name=name)  # fmt: skip
    for f in [seq_file, out / "demo_flash_signal.npy", *files, out / "ground_truth"]:
        print(f"wrote {f}")
    print(f"  {len(truth)} ground-truth maps; done in {time.perf_counter() - t0:.1f} s")
    return 0


def _add_sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accuracy", type=float, default=1e-3,
                   help="target NRMSE against the converged signal (default 1e-3; "
                        "calibrated on the PDG suite, see the README); sets the four "
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
    p.add_argument("--noise", type=float, default=0.0, help="noise standard deviation")
    p.add_argument("--seed", type=int, default=None, help="noise seed")
    p.add_argument("--out", required=True, help="signal.npy or signal.mrd")
    p.add_argument("--recon", default=None, help="also reconstruct into this .nii/.nii.gz")
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
    p.add_argument("--out", required=True, help="image .nii or .nii.gz (with a .json sidecar)")
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

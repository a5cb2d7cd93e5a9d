"""The ``mr0`` command line: library commands that need no server.

Sub-commands so far: ``seq-info`` and ``phantom``. Later issues add ``simulate``, ``recon`` and
``demo`` here.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence as SequenceABC
from pathlib import Path

from mr0core.pulseq.info import format_seq_info, seq_info
from mr0core.pulseq.reader import SeqFormatError

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


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``mr0``."""
    parser = argparse.ArgumentParser(
        prog="mr0", description="mr0core: PDG Bloch simulation and reconstruction tools"
    )
    sub = parser.add_subparsers(dest="command", required=True)
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


def main(argv: SequenceABC[str] | None = None) -> int:
    """Run ``mr0``; return the exit status (0 ok, 1 bad input file, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        SeqFormatError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        PermissionError,
        ValueError,
    ) as exc:
        print(f"mr0 {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""The ``mr0`` command line: library commands that need no server.

Sub-commands so far: ``seq-info``. Later issues add ``simulate``, ``phantom``, ``recon`` and
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
    return parser


def main(argv: SequenceABC[str] | None = None) -> int:
    """Run ``mr0``; return the exit status (0 ok, 1 bad input file, 2 usage error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SeqFormatError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"mr0 {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

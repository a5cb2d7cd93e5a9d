"""Pulseq ``.seq`` import: our own reader (format 1.2–1.5) and the conversion to `Sequence`."""

from mr0core.pulseq.convert import ConversionInfo, seq_to_sequence
from mr0core.pulseq.reader import SeqFile, SeqFormatError, read_seq, read_seq_text

__all__ = [
    "ConversionInfo",
    "SeqFile",
    "SeqFormatError",
    "read_seq",
    "read_seq_text",
    "seq_to_sequence",
]

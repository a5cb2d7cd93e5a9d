"""Pulseq ``.seq`` import: our own reader (format 1.2–1.5) and the conversion to `Sequence`."""

from mr0core.pulseq.convert import (
    ConversionInfo,
    ConversionSize,
    check_conversion,
    conversion_size,
    estimate_conversion_bytes,
    seq_to_sequence,
)
from mr0core.pulseq.reader import (
    DEFAULT_SEQ_LIMITS,
    SeqFile,
    SeqFormatError,
    SeqLimitError,
    SeqLimits,
    read_seq,
    read_seq_text,
)

__all__ = [
    "DEFAULT_SEQ_LIMITS",
    "ConversionInfo",
    "ConversionSize",
    "SeqFile",
    "SeqFormatError",
    "SeqLimitError",
    "SeqLimits",
    "check_conversion",
    "conversion_size",
    "estimate_conversion_bytes",
    "read_seq",
    "read_seq_text",
    "seq_to_sequence",
]

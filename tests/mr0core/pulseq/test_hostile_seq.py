"""Hostile ``.seq`` input: each SeqLimits bound refuses before memory grows; just under, it parses.

Each attack of issue 21 is a test here: 40 shapes of 2²⁶ samples, one ADC of 5·10⁷ samples, and
hundreds of thousands of repetitions (the last with a smaller limit, so the test stays fast). The
hostile texts are built in code: a compressed shape of any length is three lines.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
from pathlib import Path

import pytest
from pulseq_builders import HEAD, adc_blocks

import mr0core as mr0
from mr0core.pulseq import (
    DEFAULT_SEQ_LIMITS,
    SeqFormatError,
    SeqLimitError,
    SeqLimits,
    conversion_size,
    read_seq,
    read_seq_text,
    seq_to_sequence,
)

MB = 1 << 20
PEAK_BOUND = 50 * MB
"""Python-traced peak of a refused hostile file: far below what the attack would allocate."""


def shapes(count: int, samples: int) -> str:
    """``count`` shapes of ``samples`` zeros each, compressed: ``0 0 samples-2`` (a run)."""
    out = [HEAD, "[SHAPES]"]
    for i in range(count):
        out += [f"shape_id {i + 1}", f"num_samples {samples}", "0", "0", str(samples - 2), ""]
    return "\n".join(out)


def pulses(count: int, adc: int = 4) -> str:
    """``count`` repetitions: an RF block then a block with an ADC of ``adc`` samples."""
    rows = []
    for i in range(count):
        rows += [f"{2 * i + 1} 20 1 0 0 0 0 0", f"{2 * i + 2} {adc + 1} 0 0 0 0 1 0"]
    return (
        f"{HEAD}\n[BLOCKS]\n" + "\n".join(rows) + "\n\n[RF]\n1 250 1 0 0 0 0 0 0 0 0 e\n\n"
        f"[ADC]\n1 {adc} 10000 0 0 0 0 0 0\n\n"
        "[SHAPES]\nshape_id 1\nnum_samples 100\n1\n0\n0\n97\n"
    )


def line_of(text: str, content: str, nth: int = 1) -> int:
    """1-based line number of the ``nth`` line equal to ``content``."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() == content]
    return hits[nth - 1]


def refused(text: str, limit: str, limits: SeqLimits | None = None) -> SeqLimitError:
    """Read and convert ``text``; assert a SeqLimitError naming ``limit`` and its value."""
    with pytest.raises(SeqLimitError) as info:
        seq_to_sequence(read_seq_text(text, "hostile.seq", limits=limits))
    err = info.value
    bound = getattr(limits or DEFAULT_SEQ_LIMITS, limit)
    assert err.limit == limit, str(err)
    assert err.value == bound
    assert err.needed > bound
    assert f"{limit}={bound}" in str(err)
    assert str(err).startswith("hostile.seq")
    return err


def traced_peak(fn) -> int:
    """Peak of Python-traced allocations (numpy's included) while ``fn()`` runs, in bytes."""
    tracemalloc.start()
    try:
        fn()
    except SeqFormatError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def convert(text: str, limits: SeqLimits | None = None) -> mr0.Sequence:
    return seq_to_sequence(read_seq_text(text, "hostile.seq", limits=limits))


# -- the attacks of issue 21 ---------------------------------------------------------------------


def test_forty_shapes_of_2_26_samples_refused_before_decompressing() -> None:
    text = shapes(40, 1 << 26)
    assert len(text) < 2500  # 2.4 kB that asked for 40 x 0.5 GB
    err = refused(text, "max_shape_samples")
    assert err.line == line_of(text, f"num_samples {1 << 26}")
    assert traced_peak(lambda: convert(text)) < PEAK_BOUND


def test_shape_total_is_checked_before_any_shape_is_decompressed() -> None:
    # each shape is within the per-shape bound; together they are not
    per_shape = DEFAULT_SEQ_LIMITS.max_shape_samples
    text = shapes(40, per_shape)
    fit = DEFAULT_SEQ_LIMITS.max_total_shape_samples // per_shape
    err = refused(text, "max_total_shape_samples")
    assert err.line == line_of(text, f"num_samples {per_shape}", nth=fit + 1)
    # decompressing even one would allocate 32 MB (float64) and more in temporaries
    assert traced_peak(lambda: convert(text)) < per_shape * 8 // 2


def test_shape_total_just_under_the_limit_parses() -> None:
    limits = SeqLimits(max_total_shape_samples=300, max_shape_samples=100)
    parsed = read_seq_text(shapes(3, 100), limits=limits)
    assert [len(s.samples) for s in parsed.shapes.values()] == [100, 100, 100]
    refused(shapes(4, 100), "max_total_shape_samples", limits)
    refused(shapes(1, 101), "max_shape_samples", limits)


def test_one_adc_of_5e7_samples_refused_before_arange() -> None:
    text = adc_blocks(50_000_000)
    assert len(text) < 500
    err = refused(text, "max_adc_samples")
    assert err.line == line_of(text, "1 50000000 100 0 0 0 0 0 0")
    assert traced_peak(lambda: convert(text)) < PEAK_BOUND


def test_adc_total_over_blocks_refused_at_the_block_that_passes_it() -> None:
    per_adc = DEFAULT_SEQ_LIMITS.max_adc_samples
    fit = DEFAULT_SEQ_LIMITS.max_total_adc_samples // per_adc
    text = adc_blocks(per_adc, blocks=fit + 1)
    err = refused(text, "max_total_adc_samples")
    assert err.line == line_of(text, "[BLOCKS]") + fit + 1
    assert traced_peak(lambda: convert(text)) < PEAK_BOUND


def test_adc_total_at_the_limit_is_refused_by_the_memory_budget_before_converting() -> None:
    # 16 M samples pass the sample bounds, but would take ~2.7 GB to convert
    per_adc = DEFAULT_SEQ_LIMITS.max_adc_samples
    text = adc_blocks(per_adc, blocks=DEFAULT_SEQ_LIMITS.max_total_adc_samples // per_adc)
    parsed = read_seq_text(text, "hostile.seq")
    with pytest.raises(SeqLimitError, match="max_memory_bytes"):
        seq_to_sequence(parsed)
    assert traced_peak(lambda: seq_to_sequence(parsed)) < PEAK_BOUND


def test_adc_total_just_under_the_limit_converts() -> None:
    limits = SeqLimits(max_total_adc_samples=1000, max_adc_samples=100)
    seq = convert(adc_blocks(100, blocks=10), limits)
    assert int(seq.get_kspace().shape[0]) == 1000
    refused(adc_blocks(100, blocks=11), "max_total_adc_samples", limits)
    refused(adc_blocks(101), "max_adc_samples", limits)


def test_repetitions_bound(tmp_path: Path) -> None:
    limits = SeqLimits(max_repetitions=100)
    path = tmp_path / "reps.seq"
    path.write_text(pulses(99))  # 99 pulses + the time before the first: 100
    assert len(mr0.Sequence.import_file(path, limits=limits)) == 99
    text = pulses(100)
    err = refused(text, "max_repetitions", limits)
    assert err.line == line_of(text, "[BLOCKS]") + 2 * 100 - 1  # the 100th pulse's block
    path.write_text(text)
    with pytest.raises(SeqLimitError, match="max_repetitions=100"):
        mr0.Sequence.import_file(path, limits=limits)


def test_many_repetitions_refused_by_the_memory_estimate_before_converting() -> None:
    parsed = read_seq_text(pulses(2000), "hostile.seq")
    need = conversion_size(parsed).bytes
    assert len(seq_to_sequence(parsed, limits=SeqLimits(max_memory_bytes=need))) == 2000
    with pytest.raises(SeqLimitError) as info:
        seq_to_sequence(parsed, limits=SeqLimits(max_memory_bytes=need - 1))
    assert info.value.limit == "max_memory_bytes"
    assert info.value.needed == need


def test_memory_estimate_bounds_the_measured_peak() -> None:
    """The estimate is at least the peak RSS growth of the conversion (Linux)."""
    clear_refs = Path("/proc/self/clear_refs")
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc/self/status (Linux)")

    def kb(key: str) -> int:
        for line in status.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(key)

    parsed = read_seq_text(pulses(4000, adc=64), "big.seq")
    estimate = conversion_size(parsed).bytes
    try:
        clear_refs.write_text("5")  # reset the peak (VmHWM) to the current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS")
    before = kb("VmRSS")
    seq = seq_to_sequence(parsed)
    grown = (kb("VmHWM") - before) * 1024
    assert len(seq) == 4000
    assert grown <= estimate, (grown, estimate)


# -- the other bounds, each with its control just under it ---------------------------------------


def test_file_size_bound_for_files_and_text(tmp_path: Path) -> None:
    text = pulses(3)
    path = tmp_path / "a.seq"
    path.write_text(text)
    exact = SeqLimits(max_file_bytes=len(text))
    assert len(seq_to_sequence(read_seq(path, limits=exact))) == 3
    with pytest.raises(SeqLimitError, match="max_file_bytes") as info:
        read_seq(path, limits=SeqLimits(max_file_bytes=len(text) - 1))
    assert info.value.line is None
    refused(text, "max_file_bytes", SeqLimits(max_file_bytes=len(text) - 1))


def test_lines_are_counted_before_splitting() -> None:
    text = pulses(3)
    n = len(text.splitlines())
    read_seq_text(text, limits=SeqLimits(max_lines=n + 1))  # the final newline counts one more
    refused(text, "max_lines", SeqLimits(max_lines=n - 1))
    # other characters that split lines count too
    refused(text.replace("\n", "\f"), "max_lines", SeqLimits(max_lines=n - 1))


def test_line_length_bound() -> None:
    text = HEAD + "Name " + "x" * 100 + "\n"
    read_seq_text(text, limits=SeqLimits(max_line_chars=105))
    err = refused(text, "max_line_chars", SeqLimits(max_line_chars=104))
    assert err.line == len(HEAD.splitlines()) + 1


def test_definition_values_bound() -> None:
    text = HEAD + "Values " + " ".join(["1"] * 50) + "\n"
    used = 4 + 50  # the four rasters and the 50 values
    read_seq_text(text, limits=SeqLimits(max_definition_values=used))
    refused(text, "max_definition_values", SeqLimits(max_definition_values=used - 1))


def test_blocks_bound() -> None:
    text = adc_blocks(10, blocks=20)
    read_seq_text(text, limits=SeqLimits(max_blocks=20))
    err = refused(text, "max_blocks", SeqLimits(max_blocks=19))
    assert err.line == line_of(text, "[BLOCKS]") + 20


def test_waveform_samples_bound() -> None:
    """Many [GRADIENTS] rows scaling one long shape: each row builds its own waveform."""
    rows = "\n".join(f"{g} {g * 10} 0 0 1 0 0" for g in range(1, 11))
    text = (
        f"{HEAD}\n[BLOCKS]\n1 1100 0 1 0 0 0 0\n\n[GRADIENTS]\n{rows}\n\n"
        "[SHAPES]\nshape_id 1\nnum_samples 1000\n1\n1\n998\n"
    )
    read_seq_text(text, limits=SeqLimits(max_waveform_samples=10_000))
    err = refused(text, "max_waveform_samples", SeqLimits(max_waveform_samples=9_999))
    assert err.line == line_of(text, "10 100 0 0 1 0 0")


def test_extension_uses_bound() -> None:
    """Every block starts one long [EXTENSIONS] chain: blocks x chain length entries."""
    chain = "\n".join(f"{i} 1 1 {i + 1 if i < 50 else 0}" for i in range(1, 51))
    blocks = "\n".join(f"{b} 10 0 0 0 0 0 1" for b in range(1, 21))
    text = f"{HEAD}\n[BLOCKS]\n{blocks}\n\n[EXTENSIONS]\n{chain}\n\nextension LABELINC 1\n1 1 LIN\n"
    read_seq_text(text, limits=SeqLimits(max_extension_uses=1000))
    refused(text, "max_extension_uses", SeqLimits(max_extension_uses=999))


def test_label_names_bound() -> None:
    labels = "\n".join(f"{i} 1 NAME{i}" for i in range(1, 6))
    text = f"{HEAD}\n[EXTENSIONS]\nextension LABELSET 1\n{labels}\n"
    read_seq_text(text, limits=SeqLimits(max_label_names=5))
    err = refused(text, "max_label_names", SeqLimits(max_label_names=4))
    assert err.line == line_of(text, "5 1 NAME5")


def test_shim_channels_and_padding_bounds() -> None:
    wide = "1 8 " + " ".join(["1 0"] * 8)
    narrow = "\n".join(f"{i} 1 1 0" for i in range(2, 1002))
    text = f"{HEAD}\n[EXTENSIONS]\nextension RF_SHIMS 1\n{wide}\n{narrow}\n"
    parsed = read_seq_text(text, limits=SeqLimits(max_shim_channels=8))
    assert parsed.extension_tables["RF_SHIMS"].data.shape == (1001, 17)
    refused(text, "max_shim_channels", SeqLimits(max_shim_channels=7))
    # one wide row among many narrow ones: the padded table counts against the memory budget
    table_x4 = 4 * 8 * 1001 * 17
    read_seq_text(text, limits=SeqLimits(max_memory_bytes=table_x4))
    refused(text, "max_memory_bytes", SeqLimits(max_memory_bytes=table_x4 - 1))


def test_events_bound() -> None:
    parsed = read_seq_text(pulses(10, adc=4), "hostile.seq")
    events = conversion_size(parsed).events
    seq = seq_to_sequence(parsed, limits=SeqLimits(max_events=events))
    assert sum(len(rep.event_time) for rep in seq) <= events
    with pytest.raises(SeqLimitError, match=f"max_events={events - 1}"):
        seq_to_sequence(parsed, limits=SeqLimits(max_events=events - 1))


# -- the limits themselves -----------------------------------------------------------------------


def test_limits_validate_their_values() -> None:
    with pytest.raises(ValueError, match="max_blocks"):
        SeqLimits(max_blocks=-1)
    with pytest.raises(TypeError, match="max_lines"):
        SeqLimits(max_lines=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_lines"):
        SeqLimits(max_lines=True)
    with pytest.raises(TypeError, match="SeqLimits"):
        read_seq_text(pulses(1), limits={"max_lines": 10})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_SEQ_LIMITS.max_blocks = 1  # type: ignore[misc]


def test_limit_error_is_a_format_error_that_names_limit_value_and_line() -> None:
    err = refused(shapes(1, 1 << 26), "max_shape_samples")
    assert isinstance(err, SeqFormatError)
    assert isinstance(err, ValueError)
    assert (err.path, err.needed) == ("hostile.seq", 1 << 26)
    assert str(err).startswith(f"hostile.seq:{err.line}: ")


def test_limits_travel_from_the_reader_to_the_conversion() -> None:
    limits = SeqLimits(max_repetitions=5)
    parsed = read_seq_text(pulses(5), limits=limits)
    assert parsed.limits is limits
    with pytest.raises(SeqLimitError, match="max_repetitions=5"):
        seq_to_sequence(parsed)
    assert len(seq_to_sequence(parsed, limits=SeqLimits(max_repetitions=6))) == 5


# -- malformed numbers: always a SeqFormatError, never another exception --------------------------


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        ("1 250 1 0 0 0 0 0 0 0 0 e", "1 250 1 0 0 2e9 0 0 0 0 0 e", "outside the pulse"),
        ("1 250 1 0 0 0 0 0 0 0 0 e", "1 250 1 0 0 0 -1 0 0 0 0 e", "[RF] negative delay"),
        ("1 4 10000 0 0 0 0 0 0", "1 4 10000 -5 0 0 0 0 0", "[ADC] negative delay"),
        ("BlockDurationRaster 1e-05", "BlockDurationRaster 1e300", "a sequence may last"),
        ("1 20 1 0 0 0 0 0", "1e300 20 1 0 0 0 0 0", "from 0 to 2^53"),
    ],
)
def test_malformed_numbers_are_format_errors(old: str, new: str, words: str) -> None:
    text = pulses(3)
    assert old in text
    with pytest.raises(SeqFormatError, match=words.replace("[", r"\[").replace("^", r"\^")):
        convert(text.replace(old, new, 1))


@pytest.mark.parametrize("row", ["nan 1 1 0", "1e300 1 1 0", "1 inf 1 0", "1 1 nan 0"])
def test_malformed_shim_rows_are_format_errors(row: str) -> None:
    with pytest.raises(SeqFormatError, match="RF_SHIMS"):
        read_seq_text(f"{HEAD}\n[EXTENSIONS]\nextension RF_SHIMS 1\n{row}\n")

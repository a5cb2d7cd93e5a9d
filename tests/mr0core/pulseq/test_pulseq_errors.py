"""Malformed .seq input: a SeqFormatError naming file and line, never a partial result."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from conftest import CORPUS

import mr0core as mr0
from mr0core.pulseq import SeqFormatError, read_seq_text

# Edited copies no longer match their md5 signature; that warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore:.*SIGNATURE.*:UserWarning")

GRE = (CORPUS / "write_gre.seq").read_text()
OLD = (CORPUS / "simple_mprage120.seq").read_text()


def line_of(text: str, prefix: str, after: str | None = None) -> int:
    """1-based number of the first line starting with ``prefix`` (after the line ``after``)."""
    lines = text.splitlines()
    start = lines.index(after) + 1 if after else 0
    for i in range(start, len(lines)):
        if lines[i].startswith(prefix):
            return i + 1
    raise AssertionError(f"no line starts with {prefix!r}")


def replace_line(text: str, number: int, new: str) -> str:
    lines = text.splitlines()
    lines[number - 1] = new
    return "\n".join(lines) + "\n"


def expect_error(text: str, line: int | None, *words: str) -> SeqFormatError:
    with pytest.raises(SeqFormatError) as info:
        read_seq_text(text, "test.seq")
    err = info.value
    assert err.line == line, str(err)
    assert str(err).startswith(f"test.seq:{line}:" if line else "test.seq:")
    for w in words:
        assert w in str(err), str(err)
    return err


@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_truncated_file(fraction: float) -> None:
    lines = GRE.splitlines()
    cut = "\n".join(lines[: int(len(lines) * fraction)])
    with pytest.raises(SeqFormatError) as info:
        read_seq_text(cut, "test.seq")
    assert info.value.line is not None


def test_truncated_inside_a_line() -> None:
    block = line_of(GRE, "  3 ", after="[BLOCKS]")
    lines = GRE.splitlines()
    cut = "\n".join([*lines[: block - 1], lines[block - 1][:5]])
    expect_error(cut, block, "[BLOCKS]", "fields")


def test_unknown_section() -> None:
    at = line_of(GRE, "[SHAPES]")
    text = replace_line(GRE, at - 1, "[FOO]\n1 2 3")
    expect_error(text, at - 1, "unknown section [FOO]")


@pytest.mark.parametrize(("field", "value"), [("minor", "7"), ("major", "2"), ("minor", "1")])
def test_unsupported_version(field: str, value: str) -> None:
    at = line_of(GRE, field)
    expect_error(
        replace_line(GRE, at, f"{field} {value}"), line_of(GRE, "[VERSION]"), "unsupported"
    )


def test_missing_version() -> None:
    text = GRE.replace("[VERSION]", "[DEFINITIONS]", 1).replace(
        "major 1\nminor 5\nrevision 0\n", ""
    )
    with pytest.raises(SeqFormatError):
        read_seq_text(text, "test.seq")


def test_missing_shape_id() -> None:
    at = line_of(GRE, "1 ", after="[RF]")
    fields = GRE.splitlines()[at - 1].split()
    fields[2] = "99"  # magnitude shape id
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "shape id 99")


def test_non_numeric_field() -> None:
    at = line_of(GRE, "1 ", after="[TRAP]")
    fields = GRE.splitlines()[at - 1].split()
    fields[3] = "12x"
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "non-numeric", "12x")


def test_non_numeric_shape_sample() -> None:
    at = line_of(GRE, "num_samples") + 1
    expect_error(replace_line(GRE, at, "zero"), at, "non-numeric")


def test_wrong_column_count() -> None:
    at = line_of(GRE, "1 ", after="[ADC]")
    expect_error(replace_line(GRE, at, "1 64 2000"), at, "[ADC]", "fields")


def test_undefined_event_reference() -> None:
    at = line_of(GRE, "  2 ", after="[BLOCKS]")
    fields = GRE.splitlines()[at - 1].split()
    fields[2] = "42"  # RF id
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "undefined RF id 42")


def test_duplicate_id() -> None:
    at = line_of(GRE, "2 ", after="[TRAP]")
    fields = GRE.splitlines()[at - 1].split()
    fields[0] = "1"
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "defined twice")


def test_event_longer_than_block() -> None:
    at = line_of(GRE, "  2 ", after="[BLOCKS]")
    fields = GRE.splitlines()[at - 1].split()
    fields[1] = "1"  # 10 us, shorter than the RF pulse in it
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "longer than the block")


def test_bad_compressed_shape() -> None:
    """Before 1.4 every shape is compressed; runs that do not add up to num_samples are an error."""
    at = line_of(OLD, "num_samples")
    with pytest.raises(SeqFormatError, match="does not expand to num_samples=999999") as info:
        read_seq_text(replace_line(OLD, at, "num_samples 999999"), "test.seq")
    assert info.value.line is not None
    assert info.value.line >= at


def test_non_finite_value() -> None:
    at = line_of(GRE, "1 ", after="[TRAP]")
    fields = GRE.splitlines()[at - 1].split()
    fields[1] = "nan"
    expect_error(replace_line(GRE, at, " ".join(fields)), at, "non-finite")


def test_unknown_extension_is_skipped_with_one_warning() -> None:
    text = GRE.replace("[SHAPES]", "[EXTENSIONS]\n\nextension FANCY 7\n1 2 3\n\n[SHAPES]", 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = read_seq_text(text, "test.seq")
    msgs = [str(w.message) for w in caught if "FANCY" in str(w.message)]
    assert len(msgs) == 1
    assert "unknown Pulseq extension FANCY" in msgs[0]
    assert "FANCY" not in parsed.extension_names.values()


def test_import_file_raises_and_returns_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.seq"
    bad.write_text(GRE.replace("[TRAP]", "[TRAPS]"))
    with pytest.raises(SeqFormatError, match=r"bad\.seq:\d+: unknown section \[TRAPS\]"):
        mr0.Sequence.import_file(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        mr0.Sequence.import_file(tmp_path / "nope.seq")


def test_not_utf8(tmp_path: Path) -> None:
    bad = tmp_path / "binary.seq"
    bad.write_bytes(b"[VERSION]\nmajor 1\n\xff\xfe\n")
    with pytest.raises(SeqFormatError, match=r"binary\.seq:3: not UTF-8"):
        mr0.Sequence.import_file(bad)


LABELS = (CORPUS / "write_gre_label.seq").read_text()


def test_extension_list_with_undefined_next_id() -> None:
    at = line_of(LABELS, "1 ", after="[EXTENSIONS]")
    fields = LABELS.splitlines()[at - 1].split()
    fields[3] = "77"
    expect_error(replace_line(LABELS, at, " ".join(fields)), at, "undefined next extension id 77")


def test_extension_list_cycle() -> None:
    at = line_of(LABELS, "1 ", after="[EXTENSIONS]")
    fields = LABELS.splitlines()[at - 1].split()
    fields[3] = "1"  # points to itself
    with pytest.raises(SeqFormatError, match="cycle"):
        read_seq_text(replace_line(LABELS, at, " ".join(fields)), "test.seq")


def test_extension_reference_to_undefined_label() -> None:
    at = line_of(LABELS, "1 ", after="[EXTENSIONS]")
    fields = LABELS.splitlines()[at - 1].split()
    fields[2] = "55"
    with pytest.raises(SeqFormatError, match="id 55 is not defined"):
        read_seq_text(replace_line(LABELS, at, " ".join(fields)), "test.seq")

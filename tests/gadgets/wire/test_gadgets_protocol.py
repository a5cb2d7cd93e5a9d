"""MRD streaming framing: round trips, interop with ismrmrd, peer quirks, hostile input."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import tracemalloc

import ismrmrd
import ismrmrd.xsd
import numpy as np
import pytest
from ismrmrd.serialization import (
    ConfigFile,
    ConfigText,
    ProtocolDeserializer,
    ProtocolSerializer,
)

from gadgets.wire.framing import (
    Limits,
    Message,
    MessageId,
    MessageReader,
    MessageWriter,
    ProtocolError,
    SocketSource,
)

HEADER_XML = (
    '<?xml version="1.0"?>\n<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
    "<experimentalConditions><H1resonanceFrequency_Hz>63500000</H1resonanceFrequency_Hz>"
    "</experimentalConditions><encoding><encodedSpace><matrixSize><x>64</x><y>64</y><z>1</z>"
    "</matrixSize><fieldOfView_mm><x>256</x><y>256</y><z>5</z></fieldOfView_mm></encodedSpace>"
    "<reconSpace><matrixSize><x>64</x><y>64</y><z>1</z></matrixSize><fieldOfView_mm><x>256</x>"
    "<y>256</y><z>5</z></fieldOfView_mm></reconSpace><encodingLimits/>"
    "<trajectory>cartesian</trajectory></encoding></ismrmrdHeader>"
)
CHAIN_XML = "<configuration><gadget><name>Recon</name><classname>Fft</classname></gadget>"
CHAIN_XML += "</configuration>"
PARAMS = json.dumps({"phantom": "brain", "séries": "µ-T₂ preview"}, ensure_ascii=False)

PIXEL_DTYPES = [np.uint16, np.int16, np.uint32, np.float32, np.float64, np.complex64, np.complex128]
STYLES = {
    "plain": {},
    "fire": {"nul_terminate": True},
    "gadgetron": {"attribute_nul": True},
    "both": {"nul_terminate": True, "attribute_nul": True},
}


# ------------------------------------------------------------------------------------------
# test data


def make_acq(rng, channels=4, samples=32, dims=3, **fields):
    data = rng.standard_normal((channels, samples, 2)).astype(np.float32).view(np.complex64)
    data = data[..., 0]
    traj = rng.standard_normal((samples, dims)).astype(np.float32) if dims else None
    acq = ismrmrd.Acquisition.from_array(data, traj, **fields)
    acq.scan_counter = int(rng.integers(0, 2**31))
    acq.idx.kspace_encode_step_1 = int(rng.integers(0, 2**16))
    acq.position[:] = rng.standard_normal(3).astype(np.float32)
    acq.user_float[:] = rng.standard_normal(8).astype(np.float32)
    acq.set_flag(ismrmrd.ACQ_LAST_IN_SLICE)
    return acq


def make_image(rng, dtype=np.complex64, shape=(2, 3, 5, 4), meta=None):
    if np.issubdtype(dtype, np.complexfloating):
        pixels = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    elif np.issubdtype(dtype, np.floating):
        pixels = rng.standard_normal(shape).astype(dtype)
    else:
        info = np.iinfo(dtype)
        pixels = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    image = ismrmrd.Image.from_array(pixels)
    image.image_series_index = int(rng.integers(0, 100))
    image.position[:] = rng.standard_normal(3).astype(np.float32)
    image.field_of_view[:] = (220.0, 220.0, 5.0)
    image.meta = (
        {
            "DataRole": "Image",
            "SeriesDescription": "mr0 préview",
            "ImageComment": ["measured", "simulated"],
            "WindowCenter": "100",
            "WindowWidth": "200",
            "ImageProcessingHistory": ["FFT", "RMS"],
        }
        if meta is None
        else meta
    )
    return image


def make_waveform(rng, channels=3, samples=40):
    data = rng.integers(0, 2**32, size=(channels, samples), dtype=np.uint32)
    wf = ismrmrd.Waveform.from_array(data, waveform_id=2, time_stamp=12345)
    return wf


def session_items(rng):
    """A realistic session's payload items (acquisitions, image types, waveform)."""
    items = [make_acq(rng), make_acq(rng, channels=1, samples=7, dims=0), make_waveform(rng)]
    items += [make_image(rng, dtype) for dtype in PIXEL_DTYPES]
    items.append(make_image(rng, np.float32, shape=(1, 1, 4, 4), meta={}))  # no attributes
    items.append(make_acq(rng, channels=0, samples=0, dims=0))  # an empty acquisition
    return items


def write_session(writer, items):
    writer.write_config_file("default_recon")
    writer.write_config_text(CHAIN_XML)
    writer.write_header(HEADER_XML)
    writer.write_text(PARAMS)
    for item in items:
        writer.write(item)
    writer.write_close()


def raw(obj) -> bytes:
    return obj.reshape(-1).view(np.uint8).tobytes()


def assert_same_acq(got, want):
    assert isinstance(got, ismrmrd.Acquisition)
    assert bytes(got._head) == bytes(want._head)
    assert got.data.dtype == np.complex64
    assert got.traj.dtype == np.float32
    assert got.data.shape == want.data.shape
    assert got.traj.shape == want.traj.shape
    assert raw(got.data) == raw(want.data)
    assert raw(got.traj) == raw(want.traj)
    assert got == want


def assert_same_image(got, want):
    assert isinstance(got, ismrmrd.Image)
    # Everything but the header's copy of the attribute length, which follows the attributes.
    cut = ismrmrd.ImageHeader.attribute_string_len.offset
    assert bytes(got._head)[:cut] == bytes(want._head)[:cut]
    assert got._head.attribute_string_len == len(want.attribute_string.encode())
    assert got.meta == want.meta
    assert got.attribute_string == want.attribute_string
    assert got.data.dtype == want.data.dtype
    assert got.data.shape == want.data.shape
    assert raw(got.data) == raw(want.data)


def assert_same_waveform(got, want):
    assert isinstance(got, ismrmrd.Waveform)
    assert bytes(got._head) == bytes(want._head)
    assert raw(got.data) == raw(want.data)
    assert got == want


def assert_same_item(got, want):
    if isinstance(want, ismrmrd.Acquisition):
        assert_same_acq(got, want)
    elif isinstance(want, ismrmrd.Image):
        assert_same_image(got, want)
    else:
        assert_same_waveform(got, want)


def check_session(messages, items):
    kinds = [m.id for m in messages]
    assert kinds[:4] == [
        MessageId.CONFIG_FILE,
        MessageId.CONFIG_TEXT,
        MessageId.HEADER,
        MessageId.TEXT,
    ]
    assert kinds[-1] == MessageId.CLOSE
    assert messages[-1].value is None
    assert [m.value for m in messages[:4]] == ["default_recon", CHAIN_XML, HEADER_XML, PARAMS]
    assert len(messages) == len(items) + 5
    for message, item in zip(messages[4:-1], items, strict=True):
        assert_same_item(message.value, item)


# ------------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("style", STYLES)
def test_round_trip_every_message_kind(style):
    rng = np.random.default_rng(1)
    items = session_items(rng)
    stream = io.BytesIO()
    write_session(MessageWriter(stream, **STYLES[style]), items)
    wire = stream.getvalue()
    messages = list(MessageReader(io.BytesIO(wire)))
    check_session(messages, items)
    assert sum(m.nbytes for m in messages) == len(wire)


def test_round_trip_nbytes_per_message():
    rng = np.random.default_rng(2)
    acq = make_acq(rng, channels=3, samples=10, dims=2)
    stream = io.BytesIO()
    writer = MessageWriter(stream, nul_terminate=True)
    writer.write(acq)
    writer.write_text("héllo")
    (a, t) = list(MessageReader(io.BytesIO(stream.getvalue())))
    assert a.nbytes == 2 + 340 + 10 * 2 * 4 + 3 * 10 * 8
    assert t.nbytes == 2 + 4 + len("héllo".encode()) + 1


def test_round_trip_int_image_is_int32_on_the_wire():
    pixels = np.array([[[[-(2**31), 2**31 - 1, 0, 7]]]], dtype=np.int64)
    image = ismrmrd.Image(data=pixels)
    stream = io.BytesIO()
    MessageWriter(stream).write(image)
    wire = stream.getvalue()
    assert len(wire) == 2 + 198 + 8 + 4 * 4  # ISMRMRD_INT is 4 bytes per pixel
    assert np.frombuffer(wire[-16:], "<i4").tolist() == pixels.ravel().tolist()
    (message,) = list(MessageReader(io.BytesIO(wire)))
    assert message.value.data.tolist() == pixels.tolist()
    too_big = ismrmrd.Image(data=np.array([[[[2**31]]]], dtype=np.int64))
    with pytest.raises(ValueError, match="outside int32"):
        MessageWriter(io.BytesIO()).write(too_big)


def test_header_object_and_relay_are_byte_identical():
    rng = np.random.default_rng(3)
    items = session_items(rng)
    first = io.BytesIO()
    write_session(MessageWriter(first), items)
    relayed = io.BytesIO()
    relay = MessageWriter(relayed)
    for message in MessageReader(io.BytesIO(first.getvalue())):
        relay.write_message(message)
    assert relayed.getvalue() == first.getvalue()

    header = ismrmrd.xsd.CreateFromDocument(HEADER_XML)
    a, b = io.BytesIO(), io.BytesIO()
    MessageWriter(a).write_header(header)
    MessageWriter(b).write_header(header.toXML())
    assert a.getvalue() == b.getvalue()
    (message,) = list(MessageReader(io.BytesIO(a.getvalue())))
    assert ismrmrd.xsd.CreateFromDocument(message.value) == header


def test_iteration_stops_at_close_and_at_clean_eof():
    stream = io.BytesIO()
    writer = MessageWriter(stream)
    writer.write_text("a")
    writer.write_close()
    writer.write_text("after close")
    reader = MessageReader(io.BytesIO(stream.getvalue()))
    assert [m.id for m in reader] == [MessageId.TEXT, MessageId.CLOSE]
    assert reader.read().value == "after close"  # the stream is positioned after the close
    with pytest.raises(EOFError):
        reader.read()
    no_close = io.BytesIO()
    MessageWriter(no_close).write_text("b")
    assert [m.value for m in MessageReader(io.BytesIO(no_close.getvalue()))] == ["b"]
    assert list(MessageReader(io.BytesIO(b""))) == []


def test_reader_on_a_real_file(tmp_path):
    rng = np.random.default_rng(4)
    items = session_items(rng)
    path = tmp_path / "session.mrd"
    with open(path, "wb") as f:
        write_session(MessageWriter(f), items)
    with open(path, "rb") as f:
        check_session(list(MessageReader(f)), items)
    with open(path, "rb", buffering=0) as f:  # raw FileIO: short reads are continued
        check_session(list(MessageReader(f)), items)


class ChunkyReader:
    """A stream with only ``read``, which returns at most 5 bytes at a time."""

    def __init__(self, data):
        self._inner = io.BytesIO(data)

    def read(self, n=-1):
        return self._inner.read(min(n, 5) if n >= 0 else 5)


def test_reader_without_readinto_and_short_reads():
    rng = np.random.default_rng(5)
    items = session_items(rng)
    stream = io.BytesIO()
    write_session(MessageWriter(stream, nul_terminate=True, attribute_nul=True), items)
    check_session(list(MessageReader(ChunkyReader(stream.getvalue()))), items)


# ------------------------------------------------------------------------------------------
# interop with ismrmrd.serialization


def serialize_with_ismrmrd(items) -> bytes:
    stream = io.BytesIO()
    ser = ProtocolSerializer(stream)
    ser.serialize(ConfigFile("default_recon"))
    ser.serialize(ConfigText(CHAIN_XML))
    ser.serialize(ismrmrd.xsd.CreateFromDocument(HEADER_XML))
    ser.serialize(PARAMS)
    for item in items:
        ser.serialize(item)
    ser.close()
    return stream.getvalue()


def test_plain_writer_is_byte_identical_to_ismrmrd_serializer():
    items = session_items(np.random.default_rng(6))
    ours = io.BytesIO()
    writer = MessageWriter(ours)
    writer.write_config_file("default_recon")
    writer.write_config_text(CHAIN_XML)
    writer.write_header(ismrmrd.xsd.CreateFromDocument(HEADER_XML))
    writer.write_text(PARAMS)
    for item in items:
        writer.write(item)
    writer.write_close()
    assert ours.getvalue() == serialize_with_ismrmrd(items)


def test_reader_reads_ismrmrd_serializer_stream():
    items = session_items(np.random.default_rng(7))
    messages = list(MessageReader(io.BytesIO(serialize_with_ismrmrd(items))))
    assert messages[2].id == MessageId.HEADER
    header = ismrmrd.xsd.CreateFromDocument(messages[2].value)
    assert header == ismrmrd.xsd.CreateFromDocument(HEADER_XML)
    assert [m.value for m in messages[:2]] == ["default_recon", CHAIN_XML]
    assert messages[3].value == PARAMS
    for message, item in zip(messages[4:-1], items, strict=True):
        assert_same_item(message.value, item)
    assert messages[-1].id == MessageId.CLOSE


def test_ismrmrd_deserializer_reads_our_plain_stream():
    items = session_items(np.random.default_rng(8))
    stream = io.BytesIO()
    write_session(MessageWriter(stream), items)
    stream.seek(0)
    got = list(ProtocolDeserializer(stream).deserialize())
    assert got[:2] == ["default_recon", CHAIN_XML]
    assert isinstance(got[0], ConfigFile)
    assert isinstance(got[1], ConfigText)
    assert got[2] == ismrmrd.xsd.CreateFromDocument(HEADER_XML)
    assert got[3] == PARAMS
    for value, item in zip(got[4:], items, strict=True):
        assert_same_item(value, item)


# ------------------------------------------------------------------------------------------
# peer quirks, built by hand


def u16(v):
    return struct.pack("<H", v)


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def test_nul_terminated_strings_from_fire_style_peers():
    wire = b"".join(
        [
            u16(1) + b"default_recon".ljust(1024, b"\0"),
            u16(2) + u32(len(CHAIN_XML) + 1) + CHAIN_XML.encode() + b"\0",
            u16(3) + u32(len(HEADER_XML) + 1) + HEADER_XML.encode() + b"\0",
            u16(5) + u32(len(PARAMS.encode()) + 3) + PARAMS.encode() + b"\0\0\0",
            u16(1) + b"name\0garbage after the C string".ljust(1024, b"\0"),
            u16(4),
        ]
    )
    values = [m.value for m in MessageReader(io.BytesIO(wire))]
    assert values == ["default_recon", CHAIN_XML, HEADER_XML, PARAMS, "name", None]


def test_writer_nul_terminate_matches_the_fire_bytes():
    stream = io.BytesIO()
    MessageWriter(stream, nul_terminate=True).write_text("ok")
    assert stream.getvalue() == u16(5) + u32(3) + b"ok\0"


def image_wire(image, *, with_nul):
    attrs = image.attribute_string.encode()
    head = ismrmrd.ImageHeader.from_buffer_copy(image._head)
    counted = attrs + b"\0" if with_nul else attrs
    head.attribute_string_len = len(counted)
    return u16(1022) + bytes(head) + u64(len(counted)) + counted + image.data.tobytes()


def test_image_attribute_length_with_and_without_nul():
    image = make_image(np.random.default_rng(9), np.float32)
    without = image_wire(image, with_nul=False)
    with_nul = image_wire(image, with_nul=True)
    assert len(with_nul) == len(without) + 1
    (a,) = list(MessageReader(io.BytesIO(without)))
    (b,) = list(MessageReader(io.BytesIO(with_nul)))
    assert a.value.meta == b.value.meta == image.meta
    assert a.value == b.value
    assert_same_image(b.value, image)
    ours = io.BytesIO()
    MessageWriter(ours, attribute_nul=True).write(image)
    assert ours.getvalue() == with_nul


# ------------------------------------------------------------------------------------------
# hostile input


def acq_header(samples, channels, dims):
    head = ismrmrd.AcquisitionHeader()
    head.version = 1
    head.number_of_samples = samples
    head.active_channels = channels
    head.available_channels = channels
    head.trajectory_dimensions = dims
    return bytes(head)


def image_header(matrix=(4, 4, 1), channels=1, data_type=ismrmrd.DATATYPE_FLOAT):
    head = ismrmrd.ImageHeader()
    head.version = 1
    head.data_type = data_type
    head.matrix_size[:] = matrix
    head.channels = channels
    return bytes(head)


def waveform_header(channels, samples):
    head = ismrmrd.WaveformHeader()
    head.channels = channels
    head.number_of_samples = samples
    return bytes(head)


HOSTILE = {
    "unknown id": (u16(999) + b"\0" * 64, "unknown message id 999"),
    "id 0": (u16(0), "unknown message id 0"),
    "config text 2**32-1": (u16(2) + u32(2**32 - 1) + b"x" * 100, "config text length"),
    "header 2**32-1": (u16(3) + u32(2**32 - 1) + b"x" * 100, "header length"),
    "text 2**32-1": (u16(5) + u32(2**32 - 1) + b"x" * 100, "text length"),
    "acquisition 65535 x 65535": (
        u16(1008) + acq_header(65535, 65535, 65535) + b"\0" * 100,
        "65535 samples x 65535 channels",
    ),
    "image attributes 2**64-1": (
        u16(1022) + image_header() + u64(2**64 - 1) + b"<" * 100,
        "image attribute length",
    ),
    "image attributes 2**32-1": (
        u16(1022) + image_header() + u64(2**32 - 1) + b"<" * 100,
        "image attribute length",
    ),
    "image 65535**3 pixels": (
        u16(1022) + image_header((65535, 65535, 65535), 65535, ismrmrd.DATATYPE_CXDOUBLE) + u64(0),
        "over the limit",
    ),
    "image data type 99": (u16(1022) + image_header(data_type=99) + u64(0), "data type 99"),
    "waveform 65535 x 65535": (
        u16(1026) + waveform_header(65535, 65535) + b"\0" * 100,
        "65535 channels x 65535 samples",
    ),
    "text not utf-8": (u16(5) + u32(4) + b"ok\xff\xfe", "text is not valid UTF-8"),
    "header not utf-8": (u16(3) + u32(2) + b"\xc3(", "header is not valid UTF-8"),
    "config text not utf-8": (u16(2) + u32(1) + b"\x80", "config text is not valid UTF-8"),
    "config name not utf-8": (u16(1) + b"\xffname".ljust(1024, b"\0"), "config file name"),
    "image attributes not utf-8": (
        u16(1022) + image_header((1, 1, 1)) + u64(3) + b"\xff\xfe\xfd" + b"\0" * 4,
        "image attributes is not valid UTF-8",
    ),
    "image attributes not meta xml": (
        u16(1022) + image_header((1, 1, 1)) + u64(5) + b"<a><b" + b"\0" * 4,
        "not well-formed XML",
    ),
    "image attributes wrong root": (
        u16(1022) + image_header((1, 1, 1)) + u64(4) + b"<a/>" + b"\0" * 4,
        "expected <ismrmrdMeta>",
    ),
    "image attributes meta without name": (
        u16(1022)
        + image_header((1, 1, 1))
        + u64(56)
        + b"<ismrmrdMeta><meta><value>1</value></meta></ismrmrdMeta>"
        + b"\0" * 4,
        "without a <name>",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_input_raises_protocol_error_without_big_allocation(case):
    wire, match = HOSTILE[case]
    reader = MessageReader(io.BytesIO(wire))
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError, match=match):
            reader.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"{case}: peak traced allocation {peak} bytes"


def test_over_limit_error_text_is_short_and_names_the_sizes():
    wire, _ = HOSTILE["acquisition 65535 x 65535"]
    with pytest.raises(ProtocolError) as info:
        MessageReader(io.BytesIO(wire)).read()
    text = str(info.value)
    assert len(text) < 300
    assert "268435456 bytes" in text  # the default 256 MiB limit
    assert str(65535 * 65535 * 4 + 65535 * 65535 * 8) in text  # trajectory + data


@pytest.mark.parametrize("kind", ["acquisition", "image", "waveform", "text", "header"])
def test_limits_are_inclusive_bounds(kind):
    rng = np.random.default_rng(10)
    stream = io.BytesIO()
    writer = MessageWriter(stream)
    if kind == "acquisition":
        writer.write(make_acq(rng, channels=2, samples=8, dims=2))
        size = 8 * 2 * 4 + 2 * 8 * 8
    elif kind == "image":
        image = make_image(rng, np.float32, shape=(1, 1, 2, 3), meta={"A": "b"})
        writer.write(image)
        size = len(image.attribute_string.encode()) + 6 * 4
    elif kind == "waveform":
        writer.write(make_waveform(rng, channels=2, samples=5))
        size = 2 * 5 * 4
    elif kind == "text":
        writer.write_text("x" * 50)
        size = 50
    else:
        writer.write_header("<h/>")
        size = 4
    wire = stream.getvalue()
    (message,) = list(MessageReader(io.BytesIO(wire), Limits(**{kind: size})))
    assert message.nbytes == len(wire)
    with pytest.raises(ProtocolError, match="limit"):
        MessageReader(io.BytesIO(wire), Limits(**{kind: size - 1})).read()


def one_message_of_each_kind():
    rng = np.random.default_rng(11)
    cases = {}
    for name, write in [
        ("config file", lambda w: w.write_config_file("default")),
        ("config text", lambda w: w.write_config_text(CHAIN_XML)),
        ("header", lambda w: w.write_header(HEADER_XML)),
        ("text", lambda w: w.write_text(PARAMS)),
        ("acquisition", lambda w: w.write(make_acq(rng, channels=2, samples=6, dims=2))),
        ("image", lambda w: w.write(make_image(rng, np.complex64, shape=(1, 1, 2, 3)))),
        ("waveform", lambda w: w.write(make_waveform(rng, channels=2, samples=4))),
    ]:
        stream = io.BytesIO()
        write(MessageWriter(stream, nul_terminate=True, attribute_nul=True))
        cases[name] = stream.getvalue()
    return cases


CUT_CASES = one_message_of_each_kind()


@pytest.mark.parametrize("kind", CUT_CASES)
def test_stream_cut_anywhere_inside_a_message(kind):
    wire = CUT_CASES[kind]
    (whole,) = list(MessageReader(io.BytesIO(wire)))
    assert whole.nbytes == len(wire)
    for cut in range(1, len(wire)):
        reader = MessageReader(io.BytesIO(wire[:cut]))
        with pytest.raises(ProtocolError, match="connection closed in the middle of"):
            reader.read()
    # A whole message followed by a clean end: EOFError, not ProtocolError.
    reader = MessageReader(io.BytesIO(wire))
    reader.read()
    with pytest.raises(EOFError):
        reader.read()


def test_cut_message_is_a_protocol_error_also_over_a_socket():
    wire = CUT_CASES["acquisition"]
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire[: len(wire) // 2])
        a.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match="acquisition"):
            MessageReader(b).read()


# ------------------------------------------------------------------------------------------
# writing: partial writes, sockets, threads, validation


class Trickle(io.RawIOBase):
    """A raw stream whose ``write`` takes at most 7 bytes per call."""

    def __init__(self):
        self.buffer = bytearray()
        self.calls = 0

    def writable(self):
        return True

    def write(self, b):
        self.calls += 1
        chunk = bytes(memoryview(b)[:7])
        self.buffer += chunk
        return len(chunk)


@pytest.mark.parametrize("style", ["plain", "both"])
def test_partial_writes_still_give_whole_messages(style):
    items = session_items(np.random.default_rng(12))
    trickle = Trickle()
    write_session(MessageWriter(trickle, **STYLES[style]), items)
    reference = io.BytesIO()
    write_session(MessageWriter(reference, **STYLES[style]), items)
    assert bytes(trickle.buffer) == reference.getvalue()
    assert trickle.calls >= len(trickle.buffer) // 7
    check_session(list(MessageReader(io.BytesIO(bytes(trickle.buffer)))), items)


class YieldingTrickle(Trickle):
    """A :class:`Trickle` that lets other threads run inside every ``write``."""

    def write(self, b):
        time.sleep(0)
        return super().write(b)


def test_threads_sharing_a_writer_never_interleave_messages():
    trickle = YieldingTrickle()
    writer = MessageWriter(trickle)
    texts = {f"thread {t} message {i} " * 5 for t in range(4) for i in range(40)}

    def worker(t):
        for i in range(40):
            writer.write_text(f"thread {t} message {i} " * 5)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    got = [m.value for m in MessageReader(io.BytesIO(bytes(trickle.buffer)))]
    assert sorted(got) == sorted(texts)


def test_socketpair_round_trip_with_large_messages():
    rng = np.random.default_rng(13)
    items = [make_acq(rng, channels=32, samples=4096, dims=3) for _ in range(3)]  # ~1 MiB each
    items += [make_image(rng, np.complex64, shape=(4, 8, 128, 128))]  # 4 MiB
    items += session_items(rng)
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(30)  # with a timeout, sendmsg returns short counts that must be continued
    errors = []

    def send():
        try:
            write_session(MessageWriter(a, nul_terminate=True, attribute_nul=True), items)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            a.shutdown(socket.SHUT_WR)

    with a, b:
        sender = threading.Thread(target=send)
        sender.start()
        reader = MessageReader(b)
        messages = list(reader)
        sender.join()
        with pytest.raises(EOFError):
            reader.read()
        reader.close()
    assert errors == []
    check_session(messages, items)


def test_writer_validates_its_input():
    rng = np.random.default_rng(14)
    writer = MessageWriter(io.BytesIO())
    with pytest.raises(ValueError, match="1024"):
        writer.write_config_file("x" * 1024)
    with pytest.raises(ValueError, match="NUL"):
        writer.write_config_file("a\0b")
    head = ismrmrd.AcquisitionHeader.from_buffer_copy(make_acq(rng)._head)
    mismatched = ismrmrd.Acquisition(
        head, data=np.zeros((4, 31), np.complex64), trajectory=np.zeros((32, 3), np.float32)
    )
    with pytest.raises(ValueError, match=r"\(4, 31\)"):
        writer.write(mismatched)
    with pytest.raises(TypeError, match="dict"):
        writer.write({"not": "an item"})
    with pytest.raises(TypeError, match="cannot carry"):
        writer.write_message(Message(MessageId.ACQUISITION, "text", 0))


def test_write_dispatches_text_like_items():
    class Text:
        def __init__(self, text):
            self.text = text

    stream = io.BytesIO()
    writer = MessageWriter(stream)
    writer.write(Text("ERROR: bad chain"))
    writer.write("plain str")
    writer.flush()
    got = [(m.id, m.value) for m in MessageReader(io.BytesIO(stream.getvalue()))]
    assert got == [(MessageId.TEXT, "ERROR: bad chain"), (MessageId.TEXT, "plain str")]


def test_buffered_writer_sends_on_threshold_and_flush():
    rng = np.random.default_rng(15)
    acq = make_acq(rng, channels=2, samples=16, dims=0)  # 2 + 340 + 256 bytes on the wire
    with pytest.raises(ValueError, match="-1"):
        MessageWriter(io.BytesIO(), buffer_size=-1)
    stream = io.BytesIO()
    writer = MessageWriter(stream, buffer_size=1000)
    writer.write(acq)
    assert stream.getvalue() == b""  # 598 bytes pending
    writer.write(acq)
    # the buffer takes the second header (940 bytes), not its samples: the 940 go out
    assert len(stream.getvalue()) == 598 + 342
    writer.write_text("tail")
    assert len(stream.getvalue()) == 598 + 342
    writer.flush()
    assert len(stream.getvalue()) == 2 * 598 + 10
    big = make_acq(rng, channels=4, samples=64, dims=0)  # samples of 2048 bytes > the buffer
    writer.write(big)
    writer.write(acq)
    writer.flush()
    messages = list(MessageReader(io.BytesIO(stream.getvalue())))
    assert [m.id for m in messages] == [MessageId.ACQUISITION] * 2 + [MessageId.TEXT] + [
        MessageId.ACQUISITION
    ] * 2
    np.testing.assert_array_equal(messages[3].value.data, big.data)
    np.testing.assert_array_equal(messages[4].value.data, acq.data)
    assert_same_acq(messages[1].value, acq)
    a, b = socket.socketpair()
    with a, b:
        writer = MessageWriter(a, buffer_size=1 << 16)
        writer.write_text("over a socket")
        writer.write_close()
        writer.flush()
        assert [m.value for m in MessageReader(b)] == ["over a socket", None]


def test_read_objects_are_ordinary_writable_ismrmrd_objects():
    rng = np.random.default_rng(16)
    acq = make_acq(rng, channels=3, samples=8, dims=2)
    wf = make_waveform(rng)
    stream = io.BytesIO()
    writer = MessageWriter(stream)
    writer.write(acq)
    writer.write(wf)
    got, got_wf = (m.value for m in MessageReader(io.BytesIO(stream.getvalue())))
    assert got.to_bytes() == acq.to_bytes()
    assert ismrmrd.Acquisition.from_bytes(got.to_bytes()) == acq
    got.data[:] *= 2  # gadgets may work in place
    got.traj[0, 0] = 42.0
    got.scan_counter = 7
    assert np.array_equal(got.data, acq.data * 2)
    assert got.traj[0, 0] == 42.0
    assert got.getHead().scan_counter == 7
    got_wf.data[0, 0] = 5
    assert got_wf.data[0, 0] == 5
    assert got_wf.to_bytes()[40:] != wf.to_bytes()[40:] or wf.data[0, 0] == 5


def test_image_attributes_parse_as_ismrmrd_meta_does():
    xml = (
        "<?xml version='1.0' encoding='UTF-8'?><ismrmrdMeta>"
        "<meta><name>A</name><value>1</value></meta>"
        "<meta><name>B</name><value>x</value><value>y</value></meta>"
        "<meta><name>A</name><value>2</value><value>3</value></meta>"
        "<meta><name>Empty</name><value></value></meta>"
        "<meta><name>NoValue</name></meta>"
        "<meta><name>Ünï</name><value>µs</value></meta></ismrmrdMeta>"
    )
    attrs = xml.encode()
    wire = u16(1022) + image_header((1, 1, 1)) + u64(len(attrs)) + attrs + b"\0" * 4
    (message,) = list(MessageReader(io.BytesIO(wire)))
    expected = ismrmrd.Meta.deserialize(xml)
    assert message.value.meta == expected
    assert message.value.meta["A"] == ["1", "2", "3"]


# SocketSource: the socket reader's own buffer


def test_socket_source_calls_on_wait_only_before_blocking():
    rng = np.random.default_rng(16)
    first, second = make_acq(rng, channels=8, samples=512), make_acq(rng, channels=8, samples=512)
    wire = io.BytesIO()
    MessageWriter(wire).write(second)
    tail = wire.getvalue()
    a, b = socket.socketpair()
    waits = []

    def on_wait():
        # the reader is about to block: nothing of the second message has been sent yet
        waits.append(len(waits))
        if len(waits) == 1:
            a.sendall(tail[:100])  # part of it: the reader must wait again
        elif len(waits) == 2:
            a.sendall(tail[100:])

    with a, b:
        b.settimeout(10)  # a missing on_wait call would leave the reader waiting
        MessageWriter(a).write(first)
        reader = MessageReader(b, on_wait=on_wait)
        assert_same_acq(reader.read().value, first)  # it had arrived: no wait
        assert waits == []
        assert_same_acq(reader.read().value, second)
        assert waits == [0, 1]


def test_socket_source_reads_strings_larger_than_its_buffer():
    text = "x" * (3 << 20)  # 3 MiB of text, a 1 MiB buffer
    a, b = socket.socketpair()
    with a, b:
        sender = threading.Thread(target=lambda: (MessageWriter(a).write_text(text),
                                                  a.shutdown(socket.SHUT_WR)))  # fmt: skip
        sender.start()
        reader = MessageReader(b, Limits(text=4 << 20))
        assert isinstance(reader._stream, SocketSource)
        assert reader.read().value == text
        sender.join()
        with pytest.raises(EOFError):
            reader.read()


def test_socket_source_short_reads_at_the_end():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"0123456789")
        a.shutdown(socket.SHUT_WR)
        source = SocketSource(b, 8)
        assert source.read(4) == b"0123"
        view = memoryview(bytearray(20))
        assert source.readinto(view) == 6  # the peer closed after 10 bytes
        assert bytes(view[:6]) == b"456789"
        assert source.read(4) == b""


def test_keep_arrays_writer_sends_the_same_bytes_as_copying():
    rng = np.random.default_rng(17)
    items = [make_acq(rng, channels=2, samples=8, dims=2) for _ in range(300)]  # 900 parts
    items += [make_acq(rng, channels=32, samples=2048, dims=0)]  # 512 KiB, over the buffer
    items += session_items(rng)
    copied = io.BytesIO()
    writer = MessageWriter(copied, buffer_size=1 << 16, keep_arrays=True)
    assert not writer._keep  # a file: nothing to sendmsg, so it copies
    write_session(writer, items)
    writer.flush()
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # short sends to be continued
    a.settimeout(30)
    received = bytearray()

    def receive():
        while chunk := b.recv(1 << 16):
            received.extend(chunk)

    with a, b:
        receiver = threading.Thread(target=receive)
        receiver.start()
        writer = MessageWriter(a, buffer_size=1 << 16, keep_arrays=True)
        assert writer._keep
        write_session(writer, items)
        writer.flush()
        a.shutdown(socket.SHUT_WR)
        receiver.join()
    assert bytes(received) == copied.getvalue()
    check_session(list(MessageReader(io.BytesIO(bytes(received)))), items)

"""Fuzzing the MRD framing against a live server (issue 21, item 8).

Hypothesis sends random frames, and valid sessions with bytes flipped, cut, inserted or
framed anew, to an in-process server on a loopback port. Whatever arrives, the server must
answer without a reset: a stream of well-formed messages that ends with a close (an
``ERROR`` text before it when the input was not a valid session), and then serve a valid
client as before.
"""

from __future__ import annotations

import io
import json
import socket
import struct

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings
from test_gadgets_server import make_acquisitions, stream

from gadgets.wire.framing import MessageId, MessageReader, ProtocolError

IDS = [int(m) for m in MessageId]
VALID = stream(items=make_acquisitions(2, coils=2, samples=16))
PREAMBLE = len(stream(close=False))  # bytes of config and header in VALID


@pytest.fixture(scope="module")
def server_options():
    return {"scheduler": False, "preamble_timeout_s": 5, "idle_timeout_s": 5, "grace_s": 5,
            "shutdown_grace_s": 5}  # fmt: skip


@st.composite
def frames(draw) -> bytes:
    """One message: a known or random id, a plausible or random length, random payload."""
    msg_id = draw(st.one_of(st.sampled_from(IDS), st.integers(0, 2**16 - 1)))
    payload = draw(st.binary(max_size=64))
    length = draw(st.one_of(st.just(len(payload)), st.integers(0, 2**32 - 1)))
    head = struct.pack("<H", msg_id)
    if msg_id in (2, 3, 5):
        head += struct.pack("<I", length)
    return head + payload


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def parameters(draw) -> bytes:
    """A text message of JSON parameters: ordinary, nested very deep, or with huge numbers."""
    kind = draw(st.sampled_from(["value", "deep", "digits"]))
    if kind == "deep":
        n = draw(st.sampled_from([30, 31, 32, 1000, 100_000]) | st.integers(1, 100_000))
        text = '{"a": ' + "[" * n + "]" * n + "}"
    elif kind == "digits":
        n = draw(st.sampled_from([63, 64, 65, 4300, 4301, 5000]) | st.integers(1, 6000))
        text = '{"a": ' + "7" * n + "}"
    else:
        text = json.dumps({"a": draw(json_values)})
    raw = text.encode()
    return struct.pack("<HI", MessageId.TEXT, len(raw)) + raw


@st.composite
def mutated(draw) -> bytes:
    """A valid session with one to three edits: flip, cut, insert, a frame spliced in, or
    parameters after the header."""
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        edit = draw(st.sampled_from(["flip", "cut", "insert", "frame", "parameters"]))
        if edit == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "frame":
            data[at:at] = draw(frames())
        elif len(data) >= PREAMBLE:
            data[PREAMBLE:PREAMBLE] = draw(parameters())
    return bytes(data)


sessions = st.one_of(
    st.binary(max_size=256),
    st.lists(frames(), min_size=1, max_size=4).map(b"".join),
    mutated(),
    parameters().map(lambda text: VALID[:PREAMBLE] + text + VALID[PREAMBLE:]),
)


def reaches_close(payload: bytes) -> bool:
    """Whether the bytes frame messages up to a close (read as the server reads them)."""
    reader = MessageReader(io.BytesIO(payload))
    try:
        while reader.read().id != MessageId.CLOSE:
            pass
    except (EOFError, ProtocolError):
        return False
    return True


def exchange(port: int, payload: bytes) -> list:
    """Send, half-close, read the answer to its end; a reset fails the test."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may stop reading after an error; its answer must still come
        return list(MessageReader(sock))  # to and with the close, or to the end of the stream


@settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(payload=sessions)
def test_any_bytes_get_an_answer_that_ends_with_a_close(server, payload):
    msgs = exchange(server.address[1], payload)
    assert msgs, "no answer"
    assert msgs[-1].id == MessageId.CLOSE
    texts = [str(m.value) for m in msgs if m.id == MessageId.TEXT]
    if not any(t.startswith("ERROR") for t in texts):
        # no error: then the bytes must frame a whole session, up to its close
        assert reaches_close(payload), texts
    # and a valid client is served as before
    back = exchange(server.address[1], VALID)
    assert [m.id for m in back].count(MessageId.ACQUISITION) == 2
    assert back[-1].id == MessageId.CLOSE

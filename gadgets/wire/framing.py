"""MRD (ISMRMRD) streaming framing: read and write the messages of one session.

The wire format is little-endian. Every message is a ``uint16`` id followed by its payload:

====  ============  ==========================================================================
id    message       payload
====  ============  ==========================================================================
1     config file   1024 bytes, NUL-padded name
2     config text   ``uint32`` length + text
3     header        ``uint32`` length + ISMRMRD XML
4     close         none
5     text          ``uint32`` length + UTF-8 (logs, JSON parameters)
1008  acquisition   340-byte header, trajectory ``float32[samples][dims]``,
                    data ``complex64[channels][samples]``
1022  image         198-byte header, ``uint64`` attribute length, MetaContainer XML, pixels
1026  waveform      40-byte header, ``uint32[channels][samples]``
====  ============  ==========================================================================

The objects are ismrmrd's own (``ismrmrd.Acquisition``, ``ismrmrd.Image``, ``ismrmrd.Waveform``),
so streams interoperate with ``ismrmrd.serialization``. What this module adds is safety against a
hostile or broken peer and tolerance of the small differences between real peers:

- Every length is checked against :class:`Limits` *before* anything is allocated or read, with
  Python integers (no overflow): a claimed length of ``2**32 - 1`` or ``2**64 - 1`` is a
  :class:`ProtocolError`, never a huge allocation.
- A stream cut inside a message is a :class:`ProtocolError`; a clean end before a message id is
  an :class:`EOFError`.
- Trailing NULs on config name, config text, header and text (python-ismrmrd-server's client,
  Siemens FIRE) are stripped, and image attribute lengths may count a trailing NUL (Gadgetron).

Pixel types follow the ISMRMRD standard on the wire; in particular ``ISMRMRD_INT`` (6) is
``int32``. The ismrmrd Python package maps it to the platform ``int`` (``int64``) in memory, so an
``INT`` image read here holds ``int64`` pixels, and :meth:`MessageWriter.write_image` writes them
as ``int32`` (values must fit).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol, TypeAlias
from xml.etree import ElementTree

import ismrmrd
import ismrmrd.xsd
import numpy as np
from ismrmrd.image import get_dtype_from_data_type
from ismrmrd.meta import Meta

from gadgets.wire.frames import (
    CONFIG_FILE_SIZE,
    MessageId,
    close_frame,
    config_file_frame,
    string_frame,
)

__all__ = [
    "DEFAULT_LIMITS",
    "Limits",
    "Message",
    "MessageId",
    "MessageReader",
    "MessageWriter",
    "ProtocolError",
    "RateWindow",
    "ReadPace",
    "SlowPeerError",
]


class ProtocolError(Exception):
    """The peer broke the framing: unknown id, a length over a limit, a cut stream, bad UTF-8, ...

    The message names what was wrong and the offending number, never the payload itself, so
    ``str(error)`` is safe and useful to send back to the client.
    """


class SlowPeerError(ProtocolError):
    """The peer broke a time bound (:class:`ReadPace`, :class:`RateWindow`).

    A deadline passed, a message arrived under the minimum rate, the peer took no data for
    the socket's timeout, or the wait was cancelled (the server evicts the connection or
    stops). Like every :class:`ProtocolError`, ``str(error)`` is safe to send to the client.

    Attributes
    ----------
    bound
        Which bound: ``deadline``, ``idle``, ``rate``, ``send`` or ``cancelled``.
    """

    def __init__(self, message: str, bound: str) -> None:
        super().__init__(message)
        self.bound = bound


@dataclass(frozen=True)
class Limits:
    """Upper bounds, in bytes, on what one message may make the reader allocate.

    Attributes
    ----------
    config_name
        Config file name (the payload itself is always 1024 bytes on the wire).
    header
        ISMRMRD XML header; also bounds one image's attribute XML.
    text
        Config text and text messages.
    acquisition
        One acquisition's trajectory plus data (the 340-byte header not counted).
    image
        One image's attributes plus pixels (the 198-byte header not counted).
    waveform
        One waveform's samples (the 40-byte header not counted).
    """

    config_name: int = 1024
    header: int = 16 * 2**20
    text: int = 16 * 2**20
    acquisition: int = 256 * 2**20
    image: int = 1 * 2**30
    waveform: int = 64 * 2**20


DEFAULT_LIMITS = Limits()
"""The default :class:`Limits`."""

MessageValue: TypeAlias = str | ismrmrd.Acquisition | ismrmrd.Image | ismrmrd.Waveform | None


@dataclass(slots=True)
class Message:
    """One message read from a stream.

    Attributes
    ----------
    id
        The message id.
    value
        ``str`` for config file (the name), config text, header (the XML) and text, with
        trailing NULs stripped; the ismrmrd object for acquisition, image and waveform;
        ``None`` for close.
    nbytes
        Bytes the message took on the wire, the 2-byte id included.
    """

    id: MessageId
    value: MessageValue
    nbytes: int


class _TextLike(Protocol):
    """Anything with a ``text`` string, e.g. ``gadgets.framework.core.Text``."""

    text: str


# --------------------------------------------------------------------------------------------
# wire constants

_CONFIG_FILE_SIZE = CONFIG_FILE_SIZE
_ACQ_HEADER_SIZE = 340
_IMAGE_HEADER_SIZE = 198
_WAVEFORM_HEADER_SIZE = 40

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_3U16 = struct.Struct("<3H")

# Field offsets in the fixed headers (the same as ismrmrd's ctypes structures).
_ACQ_SAMPLES = ismrmrd.AcquisitionHeader.number_of_samples.offset
_ACQ_CHANNELS = ismrmrd.AcquisitionHeader.active_channels.offset
_ACQ_TRAJ_DIMS = ismrmrd.AcquisitionHeader.trajectory_dimensions.offset
_IMG_DATA_TYPE = ismrmrd.ImageHeader.data_type.offset
_IMG_MATRIX = ismrmrd.ImageHeader.matrix_size.offset
_IMG_CHANNELS = ismrmrd.ImageHeader.channels.offset
_IMG_ATTR_LEN = ismrmrd.ImageHeader.attribute_string_len.offset
_WAV_SAMPLES = ismrmrd.WaveformHeader.number_of_samples.offset
_WAV_CHANNELS = ismrmrd.WaveformHeader.channels.offset

_U32_MAX = 2**32 - 1
if _ACQ_CHANNELS != _ACQ_SAMPLES + 4:  # pragma: no cover - fixed by the ISMRMRD standard
    raise ImportError("unexpected ismrmrd.AcquisitionHeader layout")

_ACQ_ID = _U16.pack(MessageId.ACQUISITION)
_F4 = np.dtype("<f4")
_C8 = np.dtype("<c8")
_U4 = np.dtype("<u4")

# ISMRMRD image data types -> dtype on the wire (the standard's sizes).
_WIRE_DTYPES: dict[int, np.dtype] = {
    ismrmrd.DATATYPE_USHORT: np.dtype("<u2"),
    ismrmrd.DATATYPE_SHORT: np.dtype("<i2"),
    ismrmrd.DATATYPE_UINT: np.dtype("<u4"),
    ismrmrd.DATATYPE_INT: np.dtype("<i4"),
    ismrmrd.DATATYPE_FLOAT: np.dtype("<f4"),
    ismrmrd.DATATYPE_DOUBLE: np.dtype("<f8"),
    ismrmrd.DATATYPE_CXFLOAT: np.dtype("<c8"),
    ismrmrd.DATATYPE_CXDOUBLE: np.dtype("<c16"),
}

_SOCKET_READ_BUFFER = 1 << 20
_SENDMSG_MIN = 1 << 16  # below this, one joined buffer and sendall
_MAX_PARTS = 512  # parts per sendmsg (IOV_MAX is 1024 on Linux)


def _byte_view(array: np.ndarray) -> memoryview | bytes:
    """Return a flat byte view of a C-contiguous array (no copy; writable if it is)."""
    return array.data.cast("B") if array.size else b""


def _describe(size: int) -> str:
    """Format a byte count for error messages."""
    if size >= 2**20:
        return f"{size} bytes ({size / 2**20:.1f} MiB)"
    return f"{size} bytes"


# --------------------------------------------------------------------------------------------
# time bounds


class RateWindow:
    """Bytes moved over a sliding window of time, to hold a transfer to a minimum rate.

    A transfer (one message being read, one flush being sent) runs from :meth:`start` to
    :meth:`stop`. Once it has run for ``window_s``, the bytes moved in the last ``window_s``
    must reach ``min_rate * window_s``: the rate is measured over the window, not per system
    call, so a peer that sends one byte per call cannot pass.

    Parameters
    ----------
    min_rate
        Bytes per second, on average over the window (0: no minimum).
    window_s
        Length of the window (s).

    Raises
    ------
    ValueError
        A negative or non-finite rate, or a window that is not positive.
    """

    _BUCKET_S = 0.25  # bytes are counted in buckets of this length (s)

    def __init__(self, min_rate: float = 0.0, window_s: float = 10.0) -> None:
        if not (math.isfinite(min_rate) and min_rate >= 0):
            raise ValueError(f"min_rate must be a finite number >= 0 (bytes/s), got {min_rate}")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be a finite number > 0 (s), got {window_s}")
        self.min_rate = float(min_rate)
        self.window_s = float(window_s)
        self.since: float | None = None
        """Start of the transfer under way (``time.monotonic``), None between transfers."""
        self._buckets: deque[list[float]] = deque()  # [bucket start (s), bytes]

    def start(self, now: float) -> None:
        """Begin a transfer (no change when one is under way)."""
        if self.since is None:
            self.since = now

    def stop(self) -> None:
        """End the transfer under way."""
        self.since = None

    def add(self, nbytes: int, now: float) -> None:
        """Count ``nbytes`` moved at time ``now`` (``time.monotonic``, s)."""
        buckets = self._buckets
        if buckets and now - buckets[-1][0] < self._BUCKET_S:
            buckets[-1][1] += nbytes
        else:
            buckets.append([now, nbytes])
        horizon = now - self.window_s - self._BUCKET_S
        while buckets[0][0] < horizon:
            buckets.popleft()

    def moved(self, now: float) -> int:
        """Bytes moved in the window that ends at ``now`` (a partly covered bucket counts)."""
        horizon = now - self.window_s - self._BUCKET_S
        return int(sum(n for t, n in self._buckets if t >= horizon))

    def check(self, now: float, what: str) -> None:
        """Raise :class:`SlowPeerError` if the transfer under way is below the minimum rate.

        ``what`` names the transfer in the message (e.g. ``"sending"``).
        """
        if not self.min_rate or self.since is None or now - self.since < self.window_s:
            return
        moved = self.moved(now)
        if moved < self.min_rate * self.window_s:
            raise SlowPeerError(
                f"{what}: {moved} bytes in the last {self.window_s:g} s, under the minimum "
                f"rate of {self.min_rate:g} bytes/s",
                "rate",
            )

    def shift(self, seconds: float) -> None:
        """Move the transfer's start and the counted bytes ``seconds`` later.

        For a pause that was not the peer's doing (the consumer stopped reading): the window
        then looks back over time the peer was really being waited on.
        """
        if self.since is not None:
            self.since += seconds
        for bucket in self._buckets:
            bucket[0] += seconds


class ReadPace:
    """Time bounds on reading one connection: a deadline, an idle limit, a minimum rate.

    :class:`SocketSource` calls :meth:`check` before each wait for bytes and waits at most
    :meth:`wait_ms` before checking again; :class:`MessageReader` says where message
    boundaries are. A :meth:`cancel` from another thread ends a wait at once.

    Parameters
    ----------
    idle_s
        Longest wait for the next message to begin (s; None: no limit).
    min_rate, window_s
        While a message is partly read, the bytes received in the last ``window_s`` seconds
        must reach ``min_rate * window_s`` (see :class:`RateWindow`; 0: no minimum).

    Notes
    -----
    A peer that is idle *between* messages is held only to ``idle_s``: a scanner sends each
    acquisition whole as it is acquired and may pause for seconds between them. A peer that
    trickles bytes *inside* a message (slowloris) is held to the rate.
    """

    _MAX_WAIT_S = 1.0

    def __init__(
        self, idle_s: float | None = None, min_rate: float = 0.0, window_s: float = 10.0
    ) -> None:
        if idle_s is not None and not idle_s > 0:
            raise ValueError(f"idle_s must be > 0 s or None, got {idle_s}")
        self.idle_s = idle_s
        self.rate = RateWindow(min_rate, window_s)
        self._deadline: float | None = None
        self._deadline_what = ""
        self._deadline_s = 0.0
        self._idle_since = time.monotonic()
        self._in_message = False
        self._cancelled: str | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    @property
    def wake_fd(self) -> int:
        """A descriptor that becomes readable when :meth:`cancel` is called."""
        return self._wake_r

    def set_deadline(self, seconds: float, what: str) -> None:
        """Require ``what`` (e.g. ``"the config and header"``) within ``seconds`` from now."""
        self._deadline = time.monotonic() + seconds
        self._deadline_s = seconds
        self._deadline_what = what

    def clear_deadline(self) -> None:
        """Drop the deadline (what it was for has arrived)."""
        self._deadline = None

    def message_started(self) -> None:
        """Note a message's first bytes: the minimum rate applies until it is whole."""
        self._in_message = True
        self.rate.start(time.monotonic())

    def message_done(self) -> None:
        """Note a whole message: the idle limit applies until the next one begins."""
        self._in_message = False
        self.rate.stop()
        self._idle_since = time.monotonic()

    def received(self, nbytes: int) -> None:
        """Count bytes received."""
        self.rate.add(nbytes, time.monotonic())

    def cancel(self, reason: str) -> None:
        """End the reading from another thread: the next check raises ``reason``."""
        self._cancelled = reason
        with contextlib.suppress(OSError):  # a full pipe already wakes the reader
            os.write(self._wake_w, b"x")

    @property
    def cancelled(self) -> str | None:
        """The reason given to :meth:`cancel`, if it was called."""
        return self._cancelled

    def check(self) -> None:
        """Raise :class:`SlowPeerError` if a bound is broken or the reading was cancelled."""
        if self._cancelled is not None:
            raise SlowPeerError(self._cancelled, "cancelled")
        now = time.monotonic()
        if self._deadline is not None and now >= self._deadline:
            raise SlowPeerError(
                f"{self._deadline_what} did not arrive within {self._deadline_s:g} s", "deadline"
            )
        if self._in_message:
            self.rate.check(now, "a message arrived too slowly")
        elif self.idle_s is not None and now - self._idle_since >= self.idle_s:
            raise SlowPeerError(f"no message for {self.idle_s:g} s", "idle")

    def paused(self, seconds: float) -> None:
        """Leave out ``seconds`` the reader spent not reading (its consumer was busy).

        The idle time and the rate window then count only time spent waiting on the peer.
        The deadline is not moved.
        """
        if seconds > 0:
            self._idle_since += seconds
            self.rate.shift(seconds)

    def wait_ms(self) -> int:
        """How long to wait for bytes before checking again (ms)."""
        now = time.monotonic()
        wait = self._MAX_WAIT_S
        if self._deadline is not None:
            wait = min(wait, self._deadline - now)
        if not self._in_message and self.idle_s is not None:
            wait = min(wait, self._idle_since + self.idle_s - now)
        return max(1, math.ceil(wait * 1000))

    def close(self) -> None:
        """Close the wake-up pipe."""
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1


# --------------------------------------------------------------------------------------------
# reading


class SocketSource:
    """Buffered reading from a connected socket that knows when it would block.

    ``io.BufferedReader`` (``socket.makefile``) cannot say whether its next read will wait for
    the network, which a batching consumer needs (``on_wait``), and it copies every byte twice.
    This buffer hands small reads (message ids, headers) out of one ``bytearray`` and receives
    large payloads straight into their destination array.

    Parameters
    ----------
    sock
        A connected stream socket; without ``pace`` its timeout applies to every wait.
    size
        Buffer size in bytes.
    on_wait
        Called before each wait for bytes that have not arrived yet.
    pace
        Time bounds on the waits (:class:`ReadPace`); the socket's own timeout then plays no
        part in reading (it may bound sending instead).
    """

    def __init__(
        self,
        sock: socket.socket,
        size: int,
        on_wait: Callable[[], None] | None = None,
        pace: ReadPace | None = None,
    ) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._on_wait = on_wait
        self._pace = pace
        self._poll: select.poll | None = None
        if on_wait is not None or pace is not None:
            self._poll = select.poll()  # not select(): that fails for descriptors over 1023
            self._poll.register(sock, select.POLLIN)
            if pace is not None:
                self._poll.register(pace.wake_fd, select.POLLIN)

    def close(self) -> None:
        """Drop the buffer and the ``on_wait`` callback (the socket stays open).

        ``on_wait`` is often a method of the reader's owner (a server session), which holds
        the reader: dropping it breaks that reference cycle, so that the owner and what it
        holds are freed when its last reference goes, not at the garbage collector's next
        full pass.
        """
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = self._end = 0
        self._on_wait = None

    def _ready(self, timeout_ms: int) -> bool:
        """Whether the socket has bytes (or an end) within ``timeout_ms``."""
        fd = self._fd
        return any(ready == fd for ready, _ in self._poll.poll(timeout_ms))  # type: ignore[union-attr]

    def _recv(self, view: memoryview) -> int:
        """One ``recv_into``; first tell ``on_wait`` if nothing has arrived, and keep ``pace``."""
        pace = self._pace
        if self._poll is not None and not self._ready(0):
            if self._on_wait is not None:
                self._on_wait()
            if pace is not None:
                pace.check()
                while not self._ready(pace.wait_ms()):
                    pace.check()
        n = self._sock.recv_into(view)
        if pace is not None:
            pace.received(n)
        return n

    def _refill(self, need: int) -> None:
        """Receive until at least ``need`` bytes are buffered, or the peer closes."""
        start, end = self._start, self._end
        if start:  # move what is left to the front
            self._view[: end - start] = self._view[start:end]
            self._start, self._end = 0, end - start
        while self._end < need:
            n = self._recv(self._view[self._end :])
            if not n:
                return
            self._end += n

    def read(self, size: int) -> bytes | bytearray:
        """Return ``size`` bytes (fewer only if the peer closed first)."""
        start = self._start
        if self._end - start >= size:  # the usual case
            self._start = start + size
            return bytes(self._view[start : start + size])
        if size > len(self._buf):
            out = bytearray(size)
            got = self.readinto(memoryview(out))
            return out if got == size else out[:got]
        self._refill(size)
        start, n = self._start, min(size, self._end - self._start)
        self._start = start + n
        return bytes(self._view[start : start + n])

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` (format ``B``); return the bytes written (fewer only at the end)."""
        size = len(view)
        avail = self._end - self._start
        if avail >= size:
            start = self._start
            view[:] = self._view[start : start + size]
            self._start = start + size
            return size
        view[:avail] = self._view[self._start : self._end]
        self._start = self._end = 0
        got = avail
        if size - got < len(self._buf) // 4:  # a small rest: through the buffer
            self._refill(size - got)
            n = min(size - got, self._end)
            view[got : got + n] = self._view[:n]
            self._start = n
            return got + n
        while got < size:  # a large rest: straight into the destination
            n = self._recv(view[got:])
            if not n:
                break
            got += n
        return got


class MessageReader:
    """Read MRD messages from a socket or a binary file-like object.

    Parameters
    ----------
    stream
        A connected socket (read through a buffer of 1 MiB, see :class:`SocketSource`) or a
        binary stream with ``read`` (``readinto`` is used when present): ``BytesIO``,
        ``open(path, "rb")``, ``sock.makefile("rb")``, ...
    limits
        Bounds on what one message may allocate.
    on_wait
        Sockets only: called (no arguments) each time the reader is about to block because no
        more bytes have arrived. A consumer that gathers messages in batches hands its batch on
        here, so that nothing waits for a message that has not been sent yet.
    pace
        Sockets only: time bounds on reading (:class:`ReadPace`); a broken bound is a
        :class:`SlowPeerError` from :meth:`read`.

    Examples
    --------
    >>> for message in MessageReader(conn):  # doctest: +SKIP
    ...     handle(message.id, message.value)
    """

    def __init__(
        self,
        stream: BinaryIO | socket.socket,
        limits: Limits = DEFAULT_LIMITS,
        on_wait: Callable[[], None] | None = None,
        pace: ReadPace | None = None,
    ) -> None:
        self.limits = limits
        stream_: BinaryIO | SocketSource
        if isinstance(stream, socket.socket):
            stream_ = SocketSource(stream, _SOCKET_READ_BUFFER, on_wait, pace)
        else:
            if pace is not None:
                raise TypeError("pace applies to sockets only")
            stream_ = stream
        self._pace = pace
        self._stream = stream_
        self._read = stream_.read
        self._readinto: Callable[[memoryview], int | None] | None = getattr(
            stream_, "readinto", None
        )
        self._dispatch = _READ_DISPATCH

    # -- public -------------------------------------------------------------------------------

    def read(self) -> Message:
        """Read one whole message.

        Returns
        -------
        Message
            The message, its value and its size on the wire.

        Raises
        ------
        EOFError
            The stream ended cleanly before a message id.
        ProtocolError
            Unknown id, a length over :class:`Limits`, a stream cut inside the message, text
            that is not UTF-8, malformed image attributes, an unknown pixel type; a broken
            time bound (:class:`SlowPeerError`, with ``pace``).
        """
        pace = self._pace
        if pace is not None:
            pace.check()  # also between messages that arrive without a wait
        first = self._read(2)
        if not first:
            raise EOFError("end of stream before a message id")
        if pace is not None:
            pace.message_started()
        if len(first) < 2:
            rest = self._read(1)
            if not rest:
                raise ProtocolError("connection closed in the middle of a message id")
            first = first + rest
        (msg_id,) = _U16.unpack(first)
        entry = self._dispatch.get(msg_id)
        if entry is None:
            raise ProtocolError(f"unknown message id {msg_id}")
        value, payload = entry[1](self)
        if pace is not None:
            pace.message_done()
        return Message(entry[0], value, 2 + payload)

    def __iter__(self) -> Iterator[Message]:
        """Read messages until and including a close, or until a clean end of stream."""
        while True:
            try:
                message = self.read()
            except EOFError:
                return
            yield message
            if message.id == MessageId.CLOSE:
                return

    def close(self) -> None:
        """Let go of the read buffer; the stream or socket itself stays open."""
        if isinstance(self._stream, SocketSource):
            self._stream.close()

    def __enter__(self) -> MessageReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- exact reads --------------------------------------------------------------------------

    def _fill(self, view: memoryview, what: str, done: int = 0) -> None:
        """Fill ``view`` (format ``B``) from the stream, or raise if the stream ends first.

        ``done`` bytes of the same item were read before (for the error message only).
        """
        size = len(view)
        readinto = self._readinto
        if readinto is not None:
            got = readinto(view) or 0
            if got == size:  # the usual case: one call
                return
        else:
            got = 0
        while got < size:
            if readinto is not None:
                n = readinto(view[got:])
            else:
                chunk = self._read(size - got)
                n = len(chunk) if chunk else 0
                view[got : got + n] = chunk
            if not n:
                raise ProtocolError(
                    f"connection closed in the middle of {what} "
                    f"(got {done + got} of {done + size} bytes)"
                )
            got += n

    def _read_bytes(self, size: int, what: str) -> bytes | bytearray:
        """Read exactly ``size`` bytes (already checked against a limit by the caller)."""
        if not size:
            return b""
        chunk = self._read(size)
        if chunk is not None and len(chunk) == size:  # the usual case: one call
            return chunk
        got = len(chunk) if chunk else 0
        buf = bytearray(size)
        buf[:got] = chunk or b""
        self._fill(memoryview(buf)[got:], what, got)
        return buf

    def _read_array(self, shape: tuple[int, ...], dtype: np.dtype, what: str) -> np.ndarray:
        """Read a C-ordered array straight into its own memory (no intermediate copy)."""
        array = np.empty(shape, dtype=dtype)
        if array.size:
            self._fill(array.data.cast("B"), what)
        return array

    def _read_length_prefixed(self, what: str, limit: int) -> tuple[str, int]:
        (length,) = _U32.unpack(self._read_bytes(4, f"{what} length"))
        if length > limit:
            raise ProtocolError(
                f"{what} length {_describe(length)} exceeds the limit of {_describe(limit)}"
            )
        raw = self._read_bytes(length, what)
        return _decode(raw.rstrip(b"\x00"), what), 4 + length

    # -- per message --------------------------------------------------------------------------

    def _read_config_file(self) -> tuple[str, int]:
        raw = self._read_bytes(_CONFIG_FILE_SIZE, "a config file message")
        name = bytes(raw).split(b"\x00", 1)[0]  # a C string: up to the first NUL
        if len(name) > self.limits.config_name:
            raise ProtocolError(
                f"config file name of {len(name)} bytes exceeds the limit of "
                f"{self.limits.config_name} bytes"
            )
        return _decode(name, "config file name"), _CONFIG_FILE_SIZE

    def _read_config_text(self) -> tuple[str, int]:
        return self._read_length_prefixed("config text", self.limits.text)

    def _read_header(self) -> tuple[str, int]:
        return self._read_length_prefixed("header", self.limits.header)

    def _read_text(self) -> tuple[str, int]:
        return self._read_length_prefixed("text", self.limits.text)

    def _read_close(self) -> tuple[None, int]:
        return None, 0

    def _read_acquisition(self) -> tuple[ismrmrd.Acquisition, int]:
        head = self._read_bytes(_ACQ_HEADER_SIZE, "an acquisition header")
        samples, _, channels = _3U16.unpack_from(head, _ACQ_SAMPLES)
        (dims,) = _U16.unpack_from(head, _ACQ_TRAJ_DIMS)
        traj_bytes = samples * dims * 4
        data_bytes = channels * samples * 8
        limit = self.limits.acquisition
        if traj_bytes + data_bytes > limit:
            raise ProtocolError(
                f"acquisition of {samples} samples x {channels} channels (trajectory dimensions "
                f"{dims}) needs {_describe(traj_bytes + data_bytes)}, over the limit of "
                f"{_describe(limit)}"
            )
        traj = self._read_array((samples, dims), _F4, "an acquisition trajectory")
        data = self._read_array((channels, samples), _C8, "acquisition data")
        acq = _new_acquisition(ismrmrd.AcquisitionHeader.from_buffer_copy(head), data, traj)
        return acq, _ACQ_HEADER_SIZE + traj_bytes + data_bytes

    def _read_image(self) -> tuple[ismrmrd.Image, int]:
        head = bytearray(self._read_bytes(_IMAGE_HEADER_SIZE, "an image header"))
        (data_type,) = _U16.unpack_from(head, _IMG_DATA_TYPE)
        nx, ny, nz = _3U16.unpack_from(head, _IMG_MATRIX)
        (channels,) = _U16.unpack_from(head, _IMG_CHANNELS)
        dtype = _WIRE_DTYPES.get(data_type)
        if dtype is None:
            raise ProtocolError(f"image data type {data_type} is unknown")
        (attr_len,) = _U64.unpack(self._read_bytes(8, "an image attribute length"))
        if attr_len > self.limits.header:
            raise ProtocolError(
                f"image attribute length {_describe(attr_len)} exceeds the limit of "
                f"{_describe(self.limits.header)}"
            )
        pixel_bytes = channels * nz * ny * nx * dtype.itemsize
        limit = self.limits.image
        if attr_len + pixel_bytes > limit:
            raise ProtocolError(
                f"image with {_describe(attr_len)} of attributes and {channels} channels x "
                f"{nx} x {ny} x {nz} pixels of type {data_type} needs "
                f"{_describe(attr_len + pixel_bytes)}, over the limit of {_describe(limit)}"
            )
        raw_attrs = self._read_bytes(attr_len, "image attributes")
        pixels = self._read_array((channels, nz, ny, nx), dtype, "image pixels")
        attrs = raw_attrs.rstrip(b"\x00")
        text = _decode(attrs, "image attributes")
        # The header's copy of the length follows the attributes as held (no NUL), as ismrmrd
        # itself writes it, whichever convention the peer used.
        _U32.pack_into(head, _IMG_ATTR_LEN, len(attrs))
        if data_type == ismrmrd.DATATYPE_INT:
            pixels = pixels.astype(get_dtype_from_data_type(data_type))
        elif not pixels.dtype.isnative:
            pixels = pixels.astype(pixels.dtype.newbyteorder("="))
        meta = parse_meta(text)
        image = ismrmrd.Image(head=bytes(head), meta=meta, data=pixels)
        return image, _IMAGE_HEADER_SIZE + 8 + attr_len + pixel_bytes

    def _read_waveform(self) -> tuple[ismrmrd.Waveform, int]:
        head = self._read_bytes(_WAVEFORM_HEADER_SIZE, "a waveform header")
        (samples,) = _U16.unpack_from(head, _WAV_SAMPLES)
        (channels,) = _U16.unpack_from(head, _WAV_CHANNELS)
        data_bytes = channels * samples * 4
        limit = self.limits.waveform
        if data_bytes > limit:
            raise ProtocolError(
                f"waveform of {channels} channels x {samples} samples needs "
                f"{_describe(data_bytes)}, over the limit of {_describe(limit)}"
            )
        waveform = ismrmrd.Waveform(head=bytes(head))
        target = waveform.data
        if target.flags.c_contiguous and target.flags.writeable and target.dtype == _U4:
            if target.size:
                self._fill(target.data.cast("B"), "waveform data")
        else:  # pragma: no cover - ismrmrd hands out a view of its own array
            target[...] = self._read_array((channels, samples), _U4, "waveform data")
        return waveform, _WAVEFORM_HEADER_SIZE + data_bytes


# message id -> (its MessageId, the MessageReader method reading its body). Plain functions on the
# class, not a reader's bound methods: a reader holding its own bound methods would be a reference
# cycle, and with it whatever the reader's owner holds would wait for a full garbage collection.
_READ_DISPATCH: dict[int, tuple[MessageId, Callable[[MessageReader], tuple[MessageValue, int]]]] = {
    int(mid): (mid, handler)
    for mid, handler in (
        (MessageId.CONFIG_FILE, MessageReader._read_config_file),
        (MessageId.CONFIG_TEXT, MessageReader._read_config_text),
        (MessageId.HEADER, MessageReader._read_header),
        (MessageId.CLOSE, MessageReader._read_close),
        (MessageId.TEXT, MessageReader._read_text),
        (MessageId.ACQUISITION, MessageReader._read_acquisition),
        (MessageId.IMAGE, MessageReader._read_image),
        (MessageId.WAVEFORM, MessageReader._read_waveform),
    )
}


def _acquisition_fields_known() -> bool:
    """Check that ``ismrmrd.Acquisition`` keeps exactly the state :func:`_new_acquisition` sets."""
    probe = ismrmrd.Acquisition()
    return set(vars(probe)) == {"_head", "_Acquisition__data", "_Acquisition__traj"}


_FAST_ACQUISITION = _acquisition_fields_known()


def _new_acquisition(
    header: ismrmrd.AcquisitionHeader, data: np.ndarray, traj: np.ndarray
) -> ismrmrd.Acquisition:
    """Build an ``ismrmrd.Acquisition`` around arrays already shaped as its header says.

    The same object as ``ismrmrd.Acquisition(header, data=data, trajectory=traj)``, without the
    constructor's per-call closures (about 2 µs per message, a sixth of a small acquisition's
    reading time); the public constructor is used if ismrmrd's internals ever change.
    """
    if not _FAST_ACQUISITION:  # pragma: no cover - another ismrmrd version
        return ismrmrd.Acquisition(header, data=data, trajectory=traj)
    acq = object.__new__(ismrmrd.Acquisition)
    state = vars(acq)
    state["_head"] = header
    state["_Acquisition__data"] = data
    state["_Acquisition__traj"] = traj
    return acq


def parse_meta(xml: str) -> Meta:
    """Parse image attributes (ISMRMRD MetaContainer XML) as ``ismrmrd.Meta.deserialize`` does.

    The checks ismrmrd makes with ``assert`` (gone under ``python -O``) are real errors here.
    """
    meta = Meta()
    if not xml:
        return meta
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise ProtocolError(f"image attributes are not well-formed XML ({exc})") from None
    if root.tag != "ismrmrdMeta":
        raise ProtocolError(
            f"image attributes have root element <{root.tag[:64]}>, expected <ismrmrdMeta>"
        )
    for child in root.iterfind("meta"):
        name = child.find("name")
        if name is None or name.text is None:
            raise ProtocolError("image attributes hold a <meta> without a <name>")
        texts = [value.text for value in child.iterfind("value")]
        value = texts[0] if len(texts) == 1 else texts
        if name.text in meta:  # a repeated name adds values, as ismrmrd does
            existing = meta[name.text]
            if not isinstance(existing, list):
                existing = meta[name.text] = [existing]
            existing.extend(value if isinstance(value, list) else [value])
        else:
            meta[name.text] = value
    return meta


def _decode(raw: bytes | bytearray, what: str) -> str:
    """Decode strict UTF-8, or raise a :class:`ProtocolError` naming the byte offset."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{what} is not valid UTF-8 (bad byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None


# --------------------------------------------------------------------------------------------
# writing


class MessageWriter:
    """Write MRD messages to a socket or a binary file-like object.

    Each message is written whole, under a lock, so several threads may share one writer.

    Parameters
    ----------
    stream
        A connected socket (``sendall``/``sendmsg``) or a binary stream with ``write``; short
        writes (raw or unbuffered streams) are continued until the whole message is out.
    nul_terminate
        Append a NUL to config text, header and text, counted in their lengths
        (python-ismrmrd-server's client and Siemens FIRE do this).
    attribute_nul
        Append a NUL to image attributes, counted in the attribute length (Gadgetron does this).
    buffer_size
        0 (default): every message goes out as soon as it is written. Above 0: messages are
        gathered until ``buffer_size`` bytes are pending and sent together (far fewer system
        calls for many small messages); the caller must then call :meth:`flush` whenever the
        peer should see what was written (e.g. when its output queue runs empty).
    keep_arrays
        With ``buffer_size`` on a socket: gather the messages' arrays by reference and send
        them with one ``sendmsg`` instead of copying them into the buffer. The caller must not
        change an array it has written until the next flush. The server does this: an item a
        chain has yielded is no longer the gadgets' to change.
    send_rate
        Sockets only: hold each send to this minimum rate (:class:`RateWindow`), and bound
        each wait for the peer to take data by the socket's timeout (a peer that never reads
        is given up on after that long, not after ``sendall``'s whole-call timeout). A broken
        bound is a :class:`SlowPeerError`.

    Attributes
    ----------
    bytes_written
        Bytes of the messages written so far (sent, or gathered to be sent). Counted without
        a lock: exact while one thread writes at a time, as the server's sessions do.
    broken
        The error that ended sending on a socket, if one did (a copy without its traceback);
        every later write raises an ``OSError`` at once instead of waiting on the peer again.

    Notes
    -----
    With both flags off (the default) the bytes are those of
    ``ismrmrd.serialization.ProtocolSerializer``.
    """

    def __init__(
        self,
        stream: BinaryIO | socket.socket,
        *,
        nul_terminate: bool = False,
        attribute_nul: bool = False,
        buffer_size: int = 0,
        keep_arrays: bool = False,
        send_rate: RateWindow | None = None,
    ) -> None:
        if buffer_size < 0:
            raise ValueError(f"buffer_size must be >= 0, got {buffer_size}")
        if send_rate is not None and not isinstance(stream, socket.socket):
            raise TypeError("send_rate applies to sockets only")
        self.nul_terminate = nul_terminate
        self.attribute_nul = attribute_nul
        self._stream = stream
        self._lock = threading.Lock()
        self._is_socket = isinstance(stream, socket.socket)
        self._has_sendmsg = self._is_socket and hasattr(stream, "sendmsg")
        self.buffer_size = buffer_size
        # one buffer for the whole life of the writer: a fresh one per flush would cost its
        # page faults and reallocations again each time (about half of a 64 KB message's time)
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._fill = 0
        # keep_arrays: the parts gathered for one sendmsg, and their size
        self._keep = bool(keep_arrays and buffer_size and self._has_sendmsg)
        self._parts: list[bytes | memoryview] = []
        self._parts_bytes = 0
        self.bytes_written = 0  # message bytes handed to write (sent, or gathered to be sent)
        self._rate = send_rate
        self.broken: BaseException | None = None

    # -- public -------------------------------------------------------------------------------

    def write_config_file(self, name: str) -> None:
        """Write a config file message: ``name`` NUL-padded to 1024 bytes.

        Raises
        ------
        ValueError
            The name holds a NUL or is 1024 bytes or longer in UTF-8.
        """
        self._send([config_file_frame(name)])

    def write_config_text(self, text: str) -> None:
        """Write a config text message (a chain's XML)."""
        self._write_string(MessageId.CONFIG_TEXT, text, "config text")

    def write_header(self, header: str | ismrmrd.xsd.ismrmrdHeader) -> None:
        """Write the ISMRMRD XML header, given as text or as an ``ismrmrdHeader``."""
        xml = header if isinstance(header, str) else header.toXML()
        self._write_string(MessageId.HEADER, xml, "header")

    def write_text(self, text: str) -> None:
        """Write a text message (logs, JSON parameters, ``ERROR ...``)."""
        self._write_string(MessageId.TEXT, text, "text")

    def write_acquisition(self, acq: ismrmrd.Acquisition) -> None:
        """Write an acquisition: header, trajectory ``[samples, dims]``, data ``[coils, samples]``.

        Raises
        ------
        ValueError
            The arrays' shapes disagree with the header.
        """
        head = bytes(acq._head)
        samples, _, channels = _3U16.unpack_from(head, _ACQ_SAMPLES)
        (dims,) = _U16.unpack_from(head, _ACQ_TRAJ_DIMS)
        data = np.ascontiguousarray(acq.data, dtype=_C8)
        if data.shape != (channels, samples):
            raise ValueError(
                f"acquisition data has shape {data.shape}, the header says "
                f"{(channels, samples)} (active_channels, number_of_samples)"
            )
        traj = np.ascontiguousarray(acq.traj, dtype=_F4)
        if traj.size != samples * dims:
            raise ValueError(
                f"acquisition trajectory has shape {traj.shape}, the header says "
                f"{(samples, dims)} (number_of_samples, trajectory_dimensions)"
            )
        self._send(
            [
                _ACQ_ID + head,
                _byte_view(traj),
                _byte_view(data),
            ]
        )

    def write_image(self, image: ismrmrd.Image) -> None:
        """Write an image: header, attribute length, MetaContainer XML, pixels ``[c, z, y, x]``.

        Raises
        ------
        ValueError
            The pixels disagree with the header's data type or size, or ``INT`` pixels do not
            fit ``int32``.
        """
        head = ismrmrd.ImageHeader.from_buffer_copy(image._head)
        attrs = image.attribute_string.encode("utf-8")
        counted = attrs + b"\x00" if self.attribute_nul else attrs
        head.attribute_string_len = len(counted)
        wire = _WIRE_DTYPES.get(head.data_type)
        if wire is None:
            raise ValueError(f"image data type {head.data_type} is unknown")
        pixels = image.data
        expected = get_dtype_from_data_type(head.data_type)
        if pixels.dtype != expected and pixels.dtype != wire:
            raise ValueError(
                f"image pixels are {pixels.dtype}, the header's data type {head.data_type} "
                f"needs {expected}"
            )
        nx, ny, nz = head.matrix_size
        size = head.channels * nx * ny * nz
        if pixels.size != size:
            raise ValueError(
                f"image has {pixels.size} pixels, the header says {size} "
                f"(channels {head.channels} x matrix {nx} x {ny} x {nz})"
            )
        if wire.itemsize < pixels.dtype.itemsize and pixels.size:
            info = np.iinfo(wire)
            low, high = int(pixels.min()), int(pixels.max())
            if low < info.min or high > info.max:
                raise ValueError(f"INT image pixels span [{low}, {high}], outside int32")
        pixels = np.ascontiguousarray(pixels, dtype=wire)
        self._send(
            [
                _U16.pack(MessageId.IMAGE) + bytes(head) + _U64.pack(len(counted)) + counted,
                _byte_view(pixels),
            ]
        )

    def write_waveform(self, wf: ismrmrd.Waveform) -> None:
        """Write a waveform: header, samples ``uint32 [channels, samples]``.

        Raises
        ------
        ValueError
            The samples' shape disagrees with the header.
        """
        head = wf._head
        shape = (head.channels, head.number_of_samples)
        data = np.ascontiguousarray(wf.data, dtype=_U4)
        if data.shape != shape:
            raise ValueError(
                f"waveform data has shape {data.shape}, the header says {shape} "
                "(channels, number_of_samples)"
            )
        self._send([_U16.pack(MessageId.WAVEFORM) + bytes(head), _byte_view(data)])

    def write_close(self) -> None:
        """Write a close message."""
        self._send([close_frame()])

    def write(
        self, item: ismrmrd.Acquisition | ismrmrd.Image | ismrmrd.Waveform | _TextLike | str
    ) -> None:
        """Write an acquisition, image, waveform, or text (an object with ``.text``, or a str).

        Raises
        ------
        TypeError
            Anything else.
        """
        if isinstance(item, ismrmrd.Acquisition):
            self.write_acquisition(item)
        elif isinstance(item, ismrmrd.Image):
            self.write_image(item)
        elif isinstance(item, ismrmrd.Waveform):
            self.write_waveform(item)
        elif isinstance(item, str):
            self.write_text(item)
        elif isinstance(getattr(item, "text", None), str):
            self.write_text(item.text)
        else:
            raise TypeError(f"cannot write a {type(item).__name__} as an MRD message")

    def write_message(self, message: Message) -> None:
        """Write a :class:`Message` as read by :class:`MessageReader` (for relays).

        Raises
        ------
        TypeError
            The value does not suit the message id.
        """
        mid, value = message.id, message.value
        if mid == MessageId.CLOSE:
            self.write_close()
        elif mid in _STRING_WRITERS and isinstance(value, str):
            getattr(self, _STRING_WRITERS[mid])(value)
        elif mid in _OBJECT_TYPES and isinstance(value, _OBJECT_TYPES[mid]):
            self.write(value)
        else:
            raise TypeError(f"message {mid!r} cannot carry a {type(value).__name__}")

    def flush(self) -> None:
        """Send any gathered messages (``buffer_size`` > 0), then flush the stream."""
        with self._lock:
            self._send_pending()
        if not self._is_socket:
            flush = getattr(self._stream, "flush", None)
            if flush is not None:
                flush()

    # -- internals ----------------------------------------------------------------------------

    def _write_string(self, msg_id: MessageId, text: str, what: str) -> None:
        self._send([string_frame(msg_id, text, what, self.nul_terminate)])

    def _send(self, parts: list[bytes | memoryview]) -> None:
        """Write the parts of one message back to back, whole."""
        self.bytes_written += sum(map(len, parts))
        if self._keep:
            with self._lock:
                self._parts += parts
                self._parts_bytes += sum(map(len, parts))
                if self._parts_bytes >= self.buffer_size or len(self._parts) >= _MAX_PARTS:
                    self._send_pending()
        elif self.buffer_size:
            with self._lock:
                view, size = self._view, self.buffer_size
                for part in parts:
                    n = len(part)
                    if self._fill + n > size:
                        self._send_pending()
                        if n > size:  # larger than the whole buffer: straight out
                            self._send_now(part)
                            continue
                    view[self._fill : self._fill + n] = part
                    self._fill += n
        elif not self._is_socket:
            data = b"".join(parts)
            with self._lock:
                self._write_file(data)
        elif self._has_sendmsg and sum(len(p) for p in parts) >= _SENDMSG_MIN:
            with self._lock:
                self._sendmsg_all(parts)
        else:
            data = b"".join(parts)
            with self._lock:
                self._sock_sendall(data)

    def _send_pending(self) -> None:
        """Send the gathered bytes (the lock is held by the caller)."""
        if self._parts:
            parts, self._parts, self._parts_bytes = self._parts, [], 0
            self._sendmsg_all(parts)
        if not self._fill:
            return
        data, self._fill = self._view[: self._fill], 0
        self._send_now(data)

    def _send_now(self, data: bytes | memoryview) -> None:
        """Send one block, whole (the lock is held by the caller)."""
        if self._is_socket:
            self._sock_sendall(data)
        else:
            self._write_file(data)

    def _sock_sendall(self, data: bytes | memoryview) -> None:
        """Send one block to the socket, whole (under ``send_rate`` when there is one)."""
        if self._rate is not None and self._has_sendmsg:
            self._sendmsg_all([data])
            return
        if self.broken is not None:
            raise OSError(f"sending failed before: {self.broken}")
        try:
            if self._rate is None:
                self._stream.sendall(data)  # type: ignore[union-attr]
            else:  # pragma: no cover - a socket without sendmsg (not on Linux)
                self._sendmsg_all([data])
        except OSError as exc:
            self.broken = _detached(exc)
            raise

    def _write_file(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` to a file-like stream, continuing after short writes."""
        n = self._stream.write(data)  # type: ignore[union-attr]
        if n is None or n < len(data):  # a short write (raw or non-blocking stream)
            self._write_all(memoryview(data)[n or 0 :])

    def _sendmsg_all(self, parts: list[bytes | memoryview]) -> None:
        """``sendmsg`` the parts without joining them, continuing after short sends."""
        if self.broken is not None:
            raise OSError(f"sending failed before: {self.broken}")
        rate = self._rate
        if rate is not None:
            rate.start(time.monotonic())
        try:
            self._sendmsg_parts(parts, rate)
        except (OSError, SlowPeerError) as exc:
            self.broken = _detached(exc)
            raise
        finally:
            if rate is not None:
                rate.stop()

    def _sendmsg_parts(self, parts: list[bytes | memoryview], rate: RateWindow | None) -> None:
        sock: socket.socket = self._stream  # type: ignore[assignment]
        views = [memoryview(p) for p in parts if len(p)]
        first = 0  # views before this one are sent
        while first < len(views):
            try:
                sent = sock.sendmsg(views[first:] if first else views)
            except TimeoutError:
                raise SlowPeerError(
                    f"the client took no data for {sock.gettimeout():g} s", "send"
                ) from None
            if rate is not None:
                now = time.monotonic()
                rate.add(sent, now)
                rate.check(now, "the client took the answer too slowly")
            while sent:
                n = len(views[first])
                if sent >= n:
                    sent -= n
                    first += 1
                else:
                    views[first] = views[first][sent:]
                    sent = 0

    def _write_all(self, view: memoryview) -> None:
        """Call ``write`` until every byte is taken (raw streams may take fewer)."""
        write = self._stream.write  # type: ignore[union-attr]
        idle = 0
        while view:
            n = write(view)
            if n is None:  # a non-blocking raw stream that would block
                idle += 1
                time.sleep(min(0.001 * idle, 0.05))
                continue
            if n == 0:
                idle += 1
                if idle > 1000:
                    raise OSError("the stream accepted no bytes in 1000 consecutive writes")
                continue
            idle = 0
            view = view[n:]


def _detached(exc: OSError | SlowPeerError) -> OSError | SlowPeerError:
    """Return a copy of ``exc`` without its traceback, to be kept.

    The raised error's traceback holds every frame it passes through, and with them their
    objects (a session, which holds the writer that would keep the error): a reference cycle
    that keeps them all until the garbage collector's next full pass.
    """
    if isinstance(exc, SlowPeerError):
        return SlowPeerError(str(exc), exc.bound)
    try:
        return type(exc)(*exc.args)
    except TypeError:  # an OSError subclass with an __init__ of its own
        return OSError(str(exc))


_STRING_WRITERS: dict[MessageId, str] = {
    MessageId.CONFIG_FILE: "write_config_file",
    MessageId.CONFIG_TEXT: "write_config_text",
    MessageId.HEADER: "write_header",
    MessageId.TEXT: "write_text",
}
_OBJECT_TYPES: dict[MessageId, type] = {
    MessageId.ACQUISITION: ismrmrd.Acquisition,
    MessageId.IMAGE: ismrmrd.Image,
    MessageId.WAVEFORM: ismrmrd.Waveform,
}

"""The MRD message ids and the frames of the plain messages, with the standard library only.

The config-file, text and close messages are a ``uint16`` id, for texts a ``uint32`` length,
and the bytes; :class:`gadgets.wire.framing.MessageWriter` writes them with these functions,
and so does ``mr0-client`` for a job session before it has imported ``ismrmrd`` (see
:mod:`gadgets.wire.client`): a session starts without the 0.25 s that package takes to import.
"""

from __future__ import annotations

import enum
import struct

__all__ = [
    "CONFIG_FILE_SIZE",
    "MessageId",
    "close_frame",
    "config_file_frame",
    "string_frame",
]


class MessageId(enum.IntEnum):
    """The ids of the MRD streaming messages (``uint16`` on the wire)."""

    CONFIG_FILE = 1
    CONFIG_TEXT = 2
    HEADER = 3
    CLOSE = 4
    TEXT = 5
    ACQUISITION = 1008
    IMAGE = 1022
    WAVEFORM = 1026


CONFIG_FILE_SIZE = 1024
"""Bytes of a config file message's name field (NUL-padded)."""

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U32_MAX = 2**32 - 1


def config_file_frame(name: str) -> bytes:
    """Return a config file message: ``name`` NUL-padded to :data:`CONFIG_FILE_SIZE` bytes.

    Raises
    ------
    ValueError
        The name holds a NUL or is :data:`CONFIG_FILE_SIZE` bytes or longer in UTF-8.
    """
    raw = name.encode("utf-8")
    if b"\x00" in raw or len(raw) >= CONFIG_FILE_SIZE:
        raise ValueError(
            f"config file name must be under {CONFIG_FILE_SIZE} UTF-8 bytes without NUL, "
            f"got {len(raw)} bytes: {name[:80]!r}"
        )
    return _U16.pack(MessageId.CONFIG_FILE) + raw.ljust(CONFIG_FILE_SIZE, b"\x00")


def string_frame(msg_id: MessageId, text: str, what: str, nul_terminate: bool = False) -> bytes:
    """Return a string message (config text, header, text): id, ``uint32`` length, UTF-8.

    ``nul_terminate`` ends the string with a NUL, as python-ismrmrd-server's client and Siemens
    FIRE do. ``what`` names the message in the error.

    Raises
    ------
    ValueError
        The string does not fit a ``uint32`` length.
    """
    raw = text.encode("utf-8")
    if nul_terminate:
        raw += b"\x00"
    if len(raw) > _U32_MAX:
        raise ValueError(f"{what} of {len(raw)} bytes does not fit a uint32 length")
    return _U16.pack(msg_id) + _U32.pack(len(raw)) + raw


def close_frame() -> bytes:
    """Return a close message."""
    return _U16.pack(MessageId.CLOSE)

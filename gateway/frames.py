"""AMQP 0-9-1 `basic.publish` frames, encoded by hand: the relay's hot path.

pamqp, under aiormq, builds an object per frame and per property and spends
about 100 µs of CPU on each message, most of what the relay costs; this writes
the same bytes (tests/test_frames.py compares them with pamqp's) in under 10 µs,
so a batch of messages leaves in one socket write. It encodes only what the
gateway sends: the properties of `Outbound` and headers of str, int or None.
"""

from __future__ import annotations

import struct
from typing import Final

from core.contract import HeaderValue, Outbound

METHOD, HEADER, BODY = 1, 2, 3
FRAME_END: Final = b"\xce"

_FRAME_HEAD: Final = struct.Struct(">BHI")
_PUBLISH: Final = struct.Struct(">HHH").pack(60, 40, 0)  # basic.publish, reserved ticket
_MANDATORY: Final = b"\x01"
_CONTENT_HEADER: Final = struct.Struct(">HHQH")  # class basic, weight 0, body size, flags
# The property flags of the properties the gateway sets, in the order they are written.
_CONTENT_TYPE, _HEADERS, _DELIVERY_MODE, _MESSAGE_ID, _TIMESTAMP = (
    0x8000,
    0x2000,
    0x1000,
    0x0080,
    0x0040,
)
_PERSISTENT: Final = b"\x02"
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
MAX_FIELD_NAME_BYTES: Final = 128

# pamqp's choice of integer type, smallest first, kept so consumers see the same types.
_INTEGERS: Final = (
    (b"b", struct.Struct(">b"), -(2**7), 2**7 - 1),
    (b"s", struct.Struct(">h"), -(2**15), 2**15 - 1),
    (b"u", struct.Struct(">H"), 0, 2**16 - 1),
    (b"I", struct.Struct(">i"), -(2**31), 2**31 - 1),
    (b"i", struct.Struct(">I"), 0, 2**32 - 1),
    (b"l", struct.Struct(">q"), -(2**63), 2**63 - 1),
)


def short_string(value: str) -> bytes:
    """Raises ValueError (UnicodeEncodeError included) for what a shortstr cannot hold."""
    raw = value.encode()
    if len(raw) > 255:
        raise ValueError(f"shortstr of {len(raw)} bytes exceeds 255")
    return bytes((len(raw),)) + raw


def table_integer(value: int) -> bytes:
    for tag, packer, low, high in _INTEGERS:
        if low <= value <= high:
            return tag + packer.pack(value)
    raise ValueError(f"header integer {value} exceeds signed 64 bits")


def table_value(value: HeaderValue) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return b"S" + _U32.pack(len(raw)) + raw
    if value is None:
        return b"V"
    if isinstance(value, bool):
        return b"t" + bytes((value,))
    if isinstance(value, int):
        return table_integer(value)
    raise ValueError(f"header value of type {type(value).__name__}")


def field_table(headers: dict[str, HeaderValue]) -> bytes:
    """Sorted by name, as pamqp writes it."""
    fields = []
    for name, value in sorted(headers.items()):
        if len(name.encode()) > MAX_FIELD_NAME_BYTES:
            raise ValueError(f"header name over {MAX_FIELD_NAME_BYTES} bytes")
        fields.append(short_string(name) + table_value(value))
    table = b"".join(fields)
    return _U32.pack(len(table)) + table


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel, len(payload)) + payload + FRAME_END


def content_header(outbound: Outbound) -> bytes:
    """Class basic, weight 0, body size, property flags, then the properties set.

    An empty content type or message id is left out, as pamqp leaves it out.
    """
    if not 0 <= outbound.timestamp_s < 2**64:
        raise ValueError(f"timestamp {outbound.timestamp_s} is not an AMQP timestamp")
    flags = _HEADERS | _DELIVERY_MODE | _TIMESTAMP
    content_type = message_id = b""
    if outbound.content_type:
        flags |= _CONTENT_TYPE
        content_type = short_string(outbound.content_type)
    if outbound.message_id:
        flags |= _MESSAGE_ID
        message_id = short_string(outbound.message_id)
    return b"".join(
        (
            _CONTENT_HEADER.pack(60, 0, len(outbound.body), flags),
            content_type,
            field_table(outbound.headers),
            _PERSISTENT,
            message_id,
            _U64.pack(outbound.timestamp_s),
        )
    )


class PublishEncoder:
    """Frames of a mandatory, persistent `basic.publish` to one exchange on one channel."""

    def __init__(
        self, channel: int, exchange: str, max_payload_bytes: int, max_message_bytes: int
    ) -> None:
        self._channel = channel
        self._exchange = short_string(exchange)
        # The broker's frame_max less a frame's 8 bytes of overhead (aiormq's
        # `max_content_size`); 0 or less means the broker set no limit.
        self._max_payload_bytes = max_payload_bytes if max_payload_bytes > 0 else None
        # The broker's max_message_size, which it does not announce: from the settings.
        self._max_message_bytes = max_message_bytes

    def encode(self, outbound: Outbound) -> bytes:
        """Method, content header and body frames; ValueError if AMQP cannot carry it.

        The content header cannot be split: one larger than a frame (very long
        header values) would make the broker close the connection. A body over the
        broker's max_message_size would make it close the channel.
        """
        if len(outbound.body) > self._max_message_bytes:
            raise ValueError(
                f"body of {len(outbound.body)} bytes exceeds the broker's max message size "
                f"(amqp.max_message_bytes: {self._max_message_bytes})"
            )
        method = _PUBLISH + self._exchange + short_string(outbound.routing_key) + _MANDATORY
        header = content_header(outbound)
        limit = self._max_payload_bytes
        if limit is not None and len(header) > limit:
            raise ValueError(f"content header of {len(header)} bytes exceeds a frame ({limit})")
        frames = [frame(METHOD, self._channel, method), frame(HEADER, self._channel, header)]
        body, step = outbound.body, limit or len(outbound.body) or 1
        chunks = (body[i : i + step] for i in range(0, len(body), step))
        frames.extend(frame(BODY, self._channel, chunk) for chunk in chunks)
        return b"".join(frames)

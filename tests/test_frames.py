"""The hand-written publish frames are byte for byte what pamqp writes, and refuse what it does."""

from __future__ import annotations

from typing import Final

import pamqp.body
import pamqp.commands
import pamqp.frame
import pamqp.header
import pytest
from hypothesis import given, strategies as st

from core import contract
from core.contract import Headers, Outbound
from gateway import frames
from gateway.frames import PublishEncoder
from tests.support import broker

CHANNEL: Final = 7
MAX_BODY_BYTES: Final = 1024  # small, so bodies span several frames
MAX_MESSAGE_BYTES: Final = 4096

header_values = st.one_of(st.none(), st.text(), st.booleans(), st.integers(-(2**63), 2**63 - 1))
# Small enough that, 4 bytes a character, the content header fits in MAX_BODY_BYTES.
headers = st.dictionaries(st.text(min_size=1, max_size=20), header_values, max_size=4)
short_text = st.text(max_size=30)
outbounds = st.builds(
    Outbound,
    message_id=short_text,
    routing_key=short_text,
    body=st.binary(max_size=3000),  # within MAX_MESSAGE_BYTES
    content_type=short_text,
    timestamp_s=st.integers(0, 2**35),  # within datetime's years
    headers=headers,
)


def pamqp_frames(outbound: Outbound) -> bytes:
    """What aio-pika writes when the tests publish `outbound` (`broker.message`), through
    aiormq's `basic_publish` (see `aiormq.Channel._split_body`)."""
    properties = broker.message(outbound).properties
    method = pamqp.commands.Basic.Publish(
        exchange=contract.EXCHANGE, routing_key=outbound.routing_key, mandatory=True
    )
    parts: list[pamqp.frame.FrameTypes] = [
        method,
        pamqp.header.ContentHeader(0, len(outbound.body), properties),
    ]
    body = outbound.body
    parts += [
        pamqp.body.ContentBody(body[i : i + MAX_BODY_BYTES])
        for i in range(0, len(body), MAX_BODY_BYTES)
    ]
    return b"".join(pamqp.frame.marshal(part, CHANNEL) for part in parts)


def encoder(max_payload_bytes: int = MAX_BODY_BYTES) -> PublishEncoder:
    return PublishEncoder(CHANNEL, contract.EXCHANGE, max_payload_bytes, MAX_MESSAGE_BYTES)


@given(outbounds)
def test_publish_frames_are_the_bytes_pamqp_writes(outbound: Outbound) -> None:
    assert encoder().encode(outbound) == pamqp_frames(outbound)


def frames_of(data: bytes) -> list[tuple[int, int, pamqp.frame.FrameTypes]]:
    """(bytes, channel, frame) of each frame in `data`."""
    parsed = []
    while data:
        consumed, channel, parsed_frame = pamqp.frame.unmarshal(data)
        parsed.append((consumed, channel, parsed_frame))
        data = data[consumed:]
    return parsed


@given(outbounds)
def test_the_frames_parse_back_to_the_message(outbound: Outbound) -> None:
    data = encoder().encode(outbound)
    parsed = frames_of(data)
    assert {channel for _, channel, _ in parsed} == {CHANNEL}
    method, header, *bodies = [f for _, _, f in parsed]
    assert isinstance(method, pamqp.commands.Basic.Publish)
    assert (method.routing_key, method.mandatory) == (outbound.routing_key, True)
    assert isinstance(header, pamqp.header.ContentHeader)
    assert header.properties.headers == outbound.headers
    assert (header.properties.message_id or "") == outbound.message_id
    assert b"".join(b.value for b in bodies if isinstance(b, pamqp.body.ContentBody)) == (
        outbound.body
    )


def outbound_with(**changes: object) -> Outbound:
    fields: dict[str, object] = {
        "message_id": "m",
        "routing_key": "entered.1",
        "body": b"{}",
        "content_type": contract.EVENT_CONTENT_TYPE,
        "timestamp_s": 1_700_000_000,
        "headers": {},
    }
    return Outbound(**{**fields, **changes})  # type: ignore[arg-type]


UNENCODABLE: Final[dict[str, Outbound]] = {
    "content type over 255 bytes": outbound_with(content_type="a" * 256),
    "routing key over 255 bytes": outbound_with(routing_key="é" * 128),
    "message id over 255 bytes": outbound_with(message_id="m" * 256),
    "header integer beyond 64 bits": outbound_with(headers={"n": 2**63}),
    "header name over 128 bytes": outbound_with(headers={"n" * 129: 1}),
    "lone surrogate": outbound_with(headers={"s": "\ud800"}),
    "negative timestamp": outbound_with(timestamp_s=-1),
    "float header": outbound_with(headers={"f": 1.5}),
    "content header over a frame": outbound_with(headers={"s": "x" * MAX_BODY_BYTES}),
    "body over the broker's max message size": outbound_with(body=b"b" * (MAX_MESSAGE_BYTES + 1)),
}


@pytest.mark.parametrize("outbound", UNENCODABLE.values(), ids=UNENCODABLE.keys())
def test_what_amqp_cannot_carry_raises_value_error(outbound: Outbound) -> None:
    with pytest.raises(ValueError, match=r"."):
        encoder().encode(outbound)


def test_an_empty_body_has_no_body_frame() -> None:
    encoded = encoder().encode(outbound_with(body=b""))
    assert encoded.count(frames.FRAME_END) == 2
    assert encoded == pamqp_frames(outbound_with(body=b""))


def test_headers_keep_their_types() -> None:
    headers: Headers = {"small": 1, "wide": 70_000, "huge": 2**40, "none": None, "s": "x"}
    outbound = outbound_with(headers=headers)
    data = encoder().encode(outbound)
    assert data == pamqp_frames(outbound)


def test_without_a_frame_limit_the_body_is_one_frame() -> None:
    outbound = outbound_with(body=b"b" * 1000, headers={"s": "x" * 500})
    data = encoder(0).encode(outbound)
    *_, (_, _, body) = frames_of(data)
    assert isinstance(body, pamqp.body.ContentBody)
    assert body.value == outbound.body


def test_a_body_of_exactly_the_max_message_size_is_encoded() -> None:
    # The broker refuses a body larger than max_message_size, not one of that size.
    outbound = outbound_with(body=b"b" * MAX_MESSAGE_BYTES)
    assert encoder().encode(outbound) == pamqp_frames(outbound)


def test_the_max_message_size_error_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"body of 4097 bytes .*amqp\.max_message_bytes: 4096"):
        encoder().encode(outbound_with(body=b"b" * (MAX_MESSAGE_BYTES + 1)))

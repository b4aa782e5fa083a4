"""The server-side RFC 6455 frame codec (``_transport/_wsframes.py``), checked against
wsproto's client: wsproto writes the (masked) client frames we parse and parses
the frames we write."""

from __future__ import annotations

import itertools
import os
import struct
import tracemalloc
from collections.abc import Iterable

import pytest
from _raw import masked as raw_masked
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from wskit_trio._transport._wsframes import (
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    Close,
    FrameError,
    FrameReader,
    Pong,
    encode_close,
    encode_ping,
    encode_pong,
    encode_text,
    encode_texts,
)
from wskit_trio._transport._wsframes import Ping as WsPing

LIMIT = 1 << 20


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame written by hand (for the cases wsproto refuses to write)."""
    return raw_masked(opcode, payload, fin=fin, rsv=rsv, mask=os.urandom(4))


def server_events(data: bytes) -> list[object]:
    """What wsproto's client makes of frames we wrote."""
    conn = client()
    conn.receive_data(data)
    return list(conn.events())


# -- reading ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_and_binary_of_every_length_class(size: int) -> None:
    text = "é" * (size // 2) + "x" * (size % 2)
    data = client().send(TextMessage(text)) + client().send(BytesMessage(b"\x00" * size))
    reader = FrameReader(LIMIT)
    assert reader.feed(data) == []
    assert list(reader.messages) == [text, b"\x00" * size]


def test_fragments_are_joined_and_controls_may_come_between() -> None:
    conn = client()
    data = (
        conn.send(TextMessage("héllo ", message_finished=False))
        + conn.send(Ping(b"p1"))
        + conn.send(TextMessage("wör", message_finished=False))
        + conn.send(TextMessage("ld", message_finished=True))
    )
    reader = FrameReader(LIMIT)
    controls = reader.feed(data)
    assert controls == [WsPing(b"p1")]
    assert list(reader.messages) == ["héllo wörld"]


def test_a_character_split_across_fragments_is_fine() -> None:
    raw = "é".encode()
    data = masked(1, raw[:1], fin=False) + masked(0, raw[1:])
    reader = FrameReader(LIMIT)
    reader.feed(data)
    assert list(reader.messages) == ["é"]


@given(
    messages=st.lists(st.text(max_size=300) | st.binary(max_size=300), min_size=1, max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    fragment=st.integers(min_value=1, max_value=200),
)
def test_any_split_of_the_byte_stream_gives_the_same_messages(
    messages: list[str | bytes], cuts: list[int], fragment: int
) -> None:
    conn = client()
    wire = b""
    for message in messages:
        chunks = [message[i : i + fragment] for i in range(0, len(message), fragment)] or [message]
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            event: TextMessage | BytesMessage = (
                TextMessage(chunk, message_finished=last)
                if isinstance(chunk, str)
                else BytesMessage(chunk, message_finished=last)
            )
            wire += conn.send(event)
    reader = FrameReader(LIMIT)
    bounds = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        assert reader.feed(wire[start:end]) == []
    assert list(reader.messages) == messages


def test_ping_pong_and_close_are_reported() -> None:
    conn = client()
    data = (
        conn.send(Ping(b"hi"))
        + masked(0xA, b"yo")
        + conn.send(CloseConnection(4001, "bye"))
        + masked(1, b"after close")
    )
    reader = FrameReader(LIMIT)
    assert reader.feed(data) == [WsPing(b"hi"), Pong(b"yo"), Close(4001, "bye")]
    assert list(reader.messages) == []  # nothing after the close frame counts
    assert reader.feed(client().send(TextMessage("later"))) == []


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"", Close(1005, "")), (struct.pack("!H", 1000), Close(1000, "")),
     (struct.pack("!H", 3000) + "ok ✓".encode(), Close(3000, "ok ✓"))],
)  # fmt: skip
def test_close_payloads(payload: bytes, expected: Close) -> None:
    assert FrameReader(LIMIT).feed(masked(8, payload)) == [expected]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (bytes((0x81, 0x05)) + b"hello", 1002),  # not masked
        (masked(1, b"x", rsv=0x40), 1002),  # RSV1 without an extension
        (masked(3, b"x"), 1002),  # reserved data opcode
        (masked(0xB, b"x"), 1002),  # reserved control opcode
        (masked(9, b"x" * 126), 1002),  # control frame too long
        (masked(9, b"x", fin=False), 1002),  # fragmented control frame
        (masked(0, b"x"), 1002),  # continuation with nothing to continue
        (masked(1, b"a", fin=False) + masked(1, b"b"), 1002),  # new message mid-message
        (masked(1, b"\xff"), 1007),  # not UTF-8
        (masked(1, b"\xed\xa0\x80"), 1007),  # an encoded surrogate is not UTF-8
        (masked(1, b"\xe2", fin=False) + masked(0, b"\x28\xa1"), 1007),
        (masked(8, b"\x03"), 1002),  # close payload of one byte
        (masked(8, struct.pack("!H", 1005)), 1002),  # never sent on the wire
        (masked(8, struct.pack("!H", 999)), 1002),
        (masked(8, struct.pack("!H", 2000)), 1002),
        (masked(8, struct.pack("!H", 5000)), 1002),
        (masked(8, struct.pack("!H", 1000) + b"\xff"), 1007),
    ],
)
def test_protocol_violations(data: bytes, code: int) -> None:
    with pytest.raises(FrameError) as raised:
        FrameReader(LIMIT).feed(data)
    assert raised.value.code == code


def test_messages_before_a_violation_are_kept() -> None:
    reader = FrameReader(LIMIT)
    with pytest.raises(FrameError):
        reader.feed(masked(1, b"ok") + masked(1, b"\xff"))
    assert list(reader.messages) == ["ok"]


def test_too_big_is_found_from_the_header_and_the_close_still_seen() -> None:
    reader = FrameReader(100)
    big = masked(1, b"x" * 1000)
    # Only the header and a little of the payload have arrived: refused already.
    with pytest.raises(FrameError) as raised:
        reader.feed(masked(1, b"fits") + big[:20])
    assert raised.value.code == 1009
    assert list(reader.messages) == ["fits"]
    # The rest of the big frame is skipped without being kept; then the close frame.
    assert reader.feed(big[20:600]) == []
    assert reader._buffer == b""
    assert reader.feed(big[600:] + masked(1, b"dropped") + masked(8, b"\x03\xe8")) == [
        Close(1000, "")
    ]
    assert list(reader.messages) == ["fits"]


def test_fragments_count_towards_the_limit_together() -> None:
    reader = FrameReader(10)
    with pytest.raises(FrameError) as raised:
        reader.feed(masked(2, b"123456", fin=False) + masked(0, b"789012"))
    assert raised.value.code == 1009


def test_a_big_frame_arriving_in_pieces_is_not_copied_over_and_over() -> None:
    payload = os.urandom(300_000)
    wire = client().send(BytesMessage(payload))
    reader = FrameReader(LIMIT)
    for i in range(0, len(wire), 65536):
        reader.feed(wire[i : i + 65536])
    assert list(reader.messages) == [payload]


def test_an_idle_reader_holds_no_buffers() -> None:
    """Most connections are idle: the message list and the buffers for a frame or a
    message in pieces exist only while there is something in them."""
    reader = FrameReader(LIMIT)
    assert (reader.messages, reader._buffer, reader._fragments) == ((), b"", b"")
    frame = masked(OP_TEXT, b"hello")
    reader.feed(frame[:3])
    assert reader._buffer == frame[:3]
    reader.feed(frame[3:] + masked(OP_TEXT, b"wor", fin=False))
    assert reader._fragments == b"wor" and reader._buffer == b""
    reader.feed(masked(OP_CONTINUATION, b"ld"))
    assert [reader.take(), reader.take(), reader.take()] == ["hello", "world", None]
    assert (reader.messages, reader._buffer, reader._fragments) == ((), b"", b"")
    assert reader.feed(masked(OP_PING, b"p")) == [WsPing(b"p")]  # control frames only
    assert reader.messages == () and reader.pending() == 0


# -- writing ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_text_frames_parse_in_wsproto(size: int) -> None:
    text = "x" * size
    events = server_events(encode_text(text))
    assert len(events) == 1
    assert isinstance(events[0], TextMessage) and events[0].data == text


def test_a_batch_is_frames_in_order() -> None:
    events = server_events(encode_texts(["a", "bé", "c" * 200]))
    assert [e.data for e in events if isinstance(e, TextMessage)] == ["a", "bé", "c" * 200]


def test_the_same_str_is_encoded_once() -> None:
    text = "".join(["fan", "-out"])  # a fresh str object
    first = encode_text(text)
    assert encode_text(text) is first
    other = "".join(["oth", "er"])
    second = encode_text(other)
    assert second != first
    # The cache moved on to the latest str: only it is kept.
    assert encode_text(other) is second
    again = encode_text(text)
    assert again == first and again is not first


def test_the_same_batch_is_encoded_once() -> None:
    frames = ["".join(["news-", str(i)]) for i in range(3)]
    first = encode_texts(frames)
    assert encode_texts(list(frames)) is first  # another subscriber, same frames
    assert encode_texts(["".join(["news-", str(i)]) for i in range(3)]) == first
    assert encode_texts(frames[:2]) != first


def test_control_frames_parse_in_wsproto() -> None:
    events = server_events(encode_ping(b"abc") + encode_pong(b"def"))
    assert [type(e).__name__ for e in events] == ["Ping", "Pong"]
    events = server_events(encode_close(4001, "bye"))
    assert isinstance(events[0], CloseConnection)
    assert (events[0].code, events[0].reason) == (4001, "bye")
    assert encode_close(1005) == b"\x88\x00"


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    frame = encode_close(1000, "é" * 100)
    assert len(frame) == 2 + 125 - 1  # 2 + 122 bytes of é: 61 characters
    events = server_events(frame)
    assert isinstance(events[0], CloseConnection)
    assert events[0].reason == "é" * 61


# -- memory for a message in progress -----------------------------------------------


def _held_while_feeding(reader: FrameReader, frames: Iterable[bytes]) -> int:
    """The most memory (tracemalloc) ``reader`` held above its start while fed
    ``frames`` in 64 KiB chunks: what a connection pays for one message in progress."""
    chunks: list[bytes] = []
    pending = bytearray()
    for frame in frames:
        pending += frame
        if len(pending) >= 65536:
            chunks.append(bytes(pending))
            pending.clear()
    chunks.append(bytes(pending))
    peak = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for chunk in chunks:
            reader.feed(chunk)
            peak = max(peak, tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    return peak


def test_zero_length_fragments_cost_nothing_however_many() -> None:
    reader = FrameReader(64 * 1024)
    empty = masked(OP_CONTINUATION, b"", fin=False)
    frames = itertools.chain([masked(OP_TEXT, b"a", fin=False)], itertools.repeat(empty, 50_000))
    # 50,000 frames held as a list of bytes objects cost megabytes; one buffer, nothing.
    assert _held_while_feeding(reader, frames) < 64 * 1024
    reader.feed(masked(OP_CONTINUATION, b"b"))
    assert reader.take() == "ab"


def test_one_byte_fragments_cost_about_the_message_size() -> None:
    limit = 64 * 1024
    reader = FrameReader(limit)
    one = masked(OP_CONTINUATION, b"x", fin=False)
    frames = itertools.chain([masked(OP_TEXT, b"x", fin=False)], itertools.repeat(one, limit - 2))
    assert _held_while_feeding(reader, frames) < limit + limit // 4 + 16 * 1024
    reader.feed(masked(OP_CONTINUATION, b"x"))
    assert reader.take() == "x" * limit
    # One byte more than the limit, in fragments too, is refused.
    reader.feed(masked(OP_TEXT, b"x" * (limit - 1), fin=False))
    with pytest.raises(FrameError) as info:
        reader.feed(masked(OP_CONTINUATION, b"yy"))
    assert info.value.code == 1009

"""Unit tests of shared.azure_openai.sse: line endings, chunk boundaries, WHATWG field rules, truncation."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

import pytest

from shared.azure_openai.sse import Event, EventParser, LineSplitter, TruncatedStream, iter_events


def events(*chunks: bytes) -> list[Event]:
    return list(iter_events(chunks))


def bytewise(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


STREAM = (
    b": keep-alive\n"
    b"event: image_generation.partial_image\n"
    b"id: 1\n"
    b'data: {"type":"image_generation.partial_image",\n'
    b'data: "b64_json":"QUJD"}\n'
    b"\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x96\xbc\n"
    b"\n"
    b"event: image_generation.completed\n"
    b"retry: 5000\n"
    b'data: {"type":"image_generation.completed"}\n'
    b"\n"
)
EXPECTED = [
    Event(
        "image_generation.partial_image",
        '{"type":"image_generation.partial_image",\n"b64_json":"QUJD"}',
        "1",
    ),
    Event("message", "café € 🖼", "1"),
    Event("image_generation.completed", '{"type":"image_generation.completed"}', "1"),
]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_each_line_ending_gives_the_same_events(ending: bytes) -> None:
    assert events(STREAM.replace(b"\n", ending)) == EXPECTED


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
def test_byte_at_a_time_equals_one_chunk(ending: bytes) -> None:
    data = STREAM.replace(b"\n", ending)
    assert list(iter_events(bytewise(data))) == events(data) == EXPECTED


def test_every_two_way_split_gives_the_same_events() -> None:
    data = STREAM.replace(b"\n", b"\r\n")
    for cut in range(len(data) + 1):
        assert events(data[:cut], data[cut:]) == EXPECTED, cut


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    # Were the LF read as a second line break, the blank line would dispatch twice as much.
    got = events(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n")
    assert got == [Event(data="a\nb")]


def test_cr_at_end_of_chunk_followed_by_other_text_is_a_break() -> None:
    assert events(b"data: a\r", b"\r") == [Event(data="a")]
    assert events(b"data: a\r", b"", b"\n\n") == [Event(data="a")]  # empty chunk keeps the flag


def test_utf8_character_split_across_chunks() -> None:
    euro = "€".encode()
    assert events(b"data: 1" + euro[:1], euro[1:2], euro[2:] + b"2\n\n") == [Event(data="1€2")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert events(b"data: a\xffb\n\n") == [Event(data="a\ufffdb")]


def test_comments_are_ignored_and_do_not_make_an_event() -> None:
    assert events(b": ping\n\n:another\n\ndata: x\n: inside\n\n") == [Event(data="x")]


def test_only_one_leading_space_is_stripped_and_no_colon_means_empty_value() -> None:
    got = events(b"data:  two\ndata:none\ndata\n\n")
    assert got == [Event(data=" two\nnone\n")]


def test_value_may_contain_colons() -> None:
    assert events(b'data: {"a": "b:c"}\n\n') == [Event(data='{"a": "b:c"}')]


def test_block_without_data_is_not_dispatched_but_its_id_is_kept() -> None:
    got = events(b"event: ping\nid: 7\n\ndata: x\n\n")
    # The `event` of the undispatched block does not leak into the next one.
    assert got == [Event(event="message", data="x", id="7")]


def test_empty_data_line_dispatches_an_event_with_empty_data() -> None:
    assert events(b"data:\n\n") == [Event(data="")]


def test_event_and_id_fields() -> None:
    got = events(b"event: error\nid: a\ndata: 1\n\nid: b\ndata: 2\n\nid\ndata: 3\n\n")
    assert got == [
        Event("error", "1", "a"),
        Event("message", "2", "b"),
        Event("message", "3", None),
    ]


def test_empty_event_name_means_message_and_id_with_nul_is_ignored() -> None:
    got = events(b"event:\nid: 1\ndata: x\n\nid: 2\x003\ndata: y\n\n")
    assert got == [Event("message", "x", "1"), Event("message", "y", "1")]


def test_unknown_fields_and_retry_are_ignored() -> None:
    assert events(b"retry: 10\nfoo: bar\ndata: x\n\n") == [Event(data="x")]


def test_leading_bom_is_dropped() -> None:
    assert events(b"\xef\xbb", b"\xbfdata: x\n\n") == [Event(data="x")]


def test_stream_ending_inside_a_line_is_truncated() -> None:
    with pytest.raises(TruncatedStream) as info:
        events(b'data: x\n\ndata: {"b64_json":"QUJ')
    assert info.value.pending_bytes == len(b'data: {"b64_json":"QUJ')


def test_stream_ending_after_fields_without_blank_line_is_truncated() -> None:
    # Per WHATWG the pending event is discarded; for us that is a lost image, so it is an error.
    with pytest.raises(TruncatedStream) as info:
        events(b"event: image_generation.completed\ndata: {}\n")
    assert info.value.pending_fields == 2
    assert info.value.pending_bytes == 0


def test_events_before_the_cut_are_still_delivered() -> None:
    received: list[Event] = []
    with pytest.raises(TruncatedStream):
        received.extend(iter_events([b"data: 1\n\ndata: 2\n"]))
    assert received == [Event(data="1")]


def test_stream_ending_after_a_trailing_comment_line_is_complete() -> None:
    assert events(b"data: x\n\n: bye\n") == [Event(data="x")]


def test_empty_stream_has_no_events() -> None:
    assert events() == []
    assert events(b"") == []


def test_events_are_yielded_as_soon_as_dispatched() -> None:
    def chunks() -> Iterable[bytes]:
        yield b"data: first\n\n"
        raise AssertionError("read past the first event before it was handed out")

    assert next(iter_events(chunks())) == Event(data="first")


def test_bytearray_chunks_are_copied_before_being_held() -> None:
    buffer = bytearray(b"data: ab")
    splitter = LineSplitter()
    assert splitter.feed(buffer) == []
    buffer[:] = b"XXXXXXXX"
    assert splitter.feed(b"c\n") == [b"data: abc"]


def test_big_line_is_scanned_once_and_joined_once() -> None:
    """Linearity without a clock: every byte searched once, the long line joined once."""
    payload = json.dumps({"type": "image_generation.completed", "b64_json": "A" * 2_000_000})
    data = b"event: image_generation.completed\ndata: " + payload.encode() + b"\n\n"
    chunks = split_every(data, 16 * 1024)
    splitter = LineSplitter()
    parser = EventParser()
    got = [e for chunk in chunks for line in splitter.feed(chunk) if (e := parser.feed(line))]
    assert got == [Event("image_generation.completed", payload)]
    assert splitter.bytes_scanned == len(data)
    assert splitter.joins == 1
    assert splitter.pending_bytes == 0

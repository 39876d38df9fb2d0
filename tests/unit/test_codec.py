"""The sans-I/O STOMP codec: literal bytes both ways, every parser case fed whole, byte by byte
and split, several frames per read, escaping, limits and errors."""
from __future__ import annotations

import subprocess
import sys

import pytest

from notifications.codec import (
    HEARTBEAT,
    Frame,
    FrameParser,
    Limits,
    LocalProtocolError,
    RemoteProtocolError,
    StompError,
    encode_frame,
)


def _feed_whole(parser: FrameParser, data: bytes) -> list:
    parser.receive_data(data)
    return parser.events_received()


def _feed_bytewise(parser: FrameParser, data: bytes) -> list:
    events = []
    for i in range(len(data)):
        parser.receive_data(data[i : i + 1])
        events += parser.events_received()
    return events


def _feed_in_three(parser: FrameParser, data: bytes) -> list:
    events = []
    third = max(1, len(data) // 3)
    for chunk in (data[:third], data[third : 2 * third], data[2 * third :]):
        parser.receive_data(chunk)
        events += parser.events_received()
    return events


FEEDS = {"whole": _feed_whole, "bytewise": _feed_bytewise, "in-three": _feed_in_three}


@pytest.fixture(params=list(FEEDS))
def parse(request):
    """Parse bytes with a fresh parser, fed all at once, one byte at a time, or in three reads."""
    feed = FEEDS[request.param]

    def run(data: bytes, **kwargs) -> list:
        return feed(FrameParser(**kwargs), data)

    return run


def _error_of(parse, data: bytes, **kwargs) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        parse(data, **kwargs)
    return info.value


# --- parsing ------------------------------------------------------------------------------


def test_a_send_frame_with_lf_line_ends_is_parsed(parse):
    assert parse(b"SEND\ndestination:/queue/a\n\nhello\x00") == [
        Frame("SEND", (("destination", "/queue/a"),), b"hello")
    ]


def test_a_frame_with_crlf_line_ends_is_parsed(parse):
    assert parse(b"SEND\r\ndestination:/queue/a\r\nx:1\r\n\r\nhello\x00") == [
        Frame("SEND", (("destination", "/queue/a"), ("x", "1")), b"hello")
    ]


def test_a_frame_mixing_crlf_and_lf_is_parsed(parse):
    assert parse(b"SEND\r\ndestination:/queue/a\n\r\nhi\x00") == [
        Frame("SEND", (("destination", "/queue/a"),), b"hi")
    ]


def test_a_frame_without_headers_or_body_is_parsed(parse):
    assert parse(b"DISCONNECT\n\n\x00") == [Frame("DISCONNECT")]


def test_a_content_length_body_may_contain_nul_bytes(parse):
    assert parse(b"SEND\ndestination:/q\ncontent-length:5\n\na\x00b\x00c\x00") == [
        Frame("SEND", (("destination", "/q"), ("content-length", "5")), b"a\x00b\x00c")
    ]


def test_a_body_without_content_length_ends_at_the_first_nul(parse):
    assert parse(b"SEND\ndestination:/q\n\nab\x00SEND\ndestination:/r\n\ncd\x00") == [
        Frame("SEND", (("destination", "/q"),), b"ab"),
        Frame("SEND", (("destination", "/r"),), b"cd"),
    ]


def test_a_body_may_contain_line_ends_and_colons(parse):
    assert parse(b"SEND\ndestination:/q\n\na:b\n\nc\r\n\x00") == [
        Frame("SEND", (("destination", "/q"),), b"a:b\n\nc\r\n")
    ]


def test_repeated_headers_are_all_kept_and_the_first_wins(parse):
    (frame,) = parse(b"MESSAGE\nfoo:World\nfoo:Hello\n\n\x00")
    assert frame.headers == (("foo", "World"), ("foo", "Hello"))
    assert frame.get("foo") == "World"


def test_get_returns_the_default_for_a_missing_header():
    assert Frame("SEND").get("receipt", "none") == "none"


def test_a_header_value_may_contain_colons_after_the_first(parse):
    (frame,) = parse(b"SEND\ndestination:/q\nurl:http://x:80/\n\n\x00")
    assert frame.get("url") == "http://x:80/"


def test_header_values_are_not_trimmed(parse):
    (frame,) = parse(b"SEND\ndestination:/q\nx: padded \n\n\x00")
    assert frame.get("x") == " padded "


def test_a_bare_lf_between_frames_is_a_heartbeat(parse):
    assert parse(b"\n") == [HEARTBEAT]


def test_a_bare_crlf_between_frames_is_a_heartbeat(parse):
    assert parse(b"\r\n") == [HEARTBEAT]


def test_eols_after_a_frame_are_heartbeats(parse):
    assert parse(b"SEND\ndestination:/q\n\n\x00\n\r\nDISCONNECT\n\n\x00") == [
        Frame("SEND", (("destination", "/q"),)),
        HEARTBEAT,
        HEARTBEAT,
        Frame("DISCONNECT"),
    ]


def test_several_frames_in_one_read_are_all_parsed(parse):
    data = b"".join(b"SEND\ndestination:/q\ncontent-length:1\n\n%d\x00" % i for i in range(10))
    frames = parse(data)
    assert [f.body for f in frames] == [b"0", b"1", b"2", b"3", b"4", b"5", b"6", b"7", b"8", b"9"]


def test_an_incomplete_frame_waits_for_more_bytes():
    parser = FrameParser()
    parser.receive_data(b"SEND\ndestination:/q\ncontent-length:4\n\nab")
    assert parser.events_received() == []
    parser.receive_data(b"cd\x00")
    assert parser.events_received() == [Frame("SEND", (("destination", "/q"), ("content-length", "4")), b"abcd")]


def test_events_are_returned_only_once():
    parser = FrameParser()
    parser.receive_data(b"\n")
    assert parser.events_received() == [HEARTBEAT]
    assert parser.events_received() == []


# --- escaping -------------------------------------------------------------------------------


def test_escaped_headers_are_decoded_in_stomp_1_2(parse):
    (frame,) = parse(b"SEND\ndestination:/q\nk\\cey:a\\nb\\rc\\\\d\\ce\n\n\x00")
    assert frame.headers == (("destination", "/q"), ("k:ey", "a\nb\rc\\d:e"))


def test_headers_of_a_connect_frame_are_never_unescaped(parse):
    (frame,) = parse(b"CONNECT\naccept-version:1.2\nlogin:a\\nb\npasscode:x:y\n\n\x00")
    assert frame.headers == (("accept-version", "1.2"), ("login", "a\\nb"), ("passcode", "x:y"))


def test_headers_of_a_connected_frame_are_never_unescaped(parse):
    (frame,) = parse(b"CONNECTED\nversion:1.2\nserver:a\\cb\n\n\x00")
    assert frame.get("server") == "a\\cb"


def test_headers_are_not_unescaped_in_stomp_1_0(parse):
    (frame,) = parse(b"SEND\ndestination:/q\nx:a\\nb\\t\n\n\x00", version="1.0")
    assert frame.get("x") == "a\\nb\\t"


def test_padded_headers_of_stomp_1_0_are_trimmed(parse):
    assert parse(b"SUBSCRIBE\ndestination: /queue/a\nack: client \n\n\x00", version="1.0") == [
        Frame("SUBSCRIBE", (("destination", "/queue/a"), ("ack", "client")))
    ]


def test_padded_headers_of_stomp_1_2_are_kept_as_they_are(parse):
    assert parse(b"SEND\ndestination:/queue/a\nx: padded \n\n\x00") == [
        Frame("SEND", (("destination", "/queue/a"), ("x", " padded ")))
    ]


def test_a_connect_without_accept_version_makes_the_parser_speak_1_0(parse):
    frames = parse(b"CONNECT\n\n\x00SEND\ndestination:/q\nx:a\\tb\n\n\x00")
    assert frames[1].get("x") == "a\\tb"


def test_a_connected_frame_sets_the_parser_version():
    parser = FrameParser()
    parser.receive_data(b"CONNECTED\nversion:1.1\n\n\x00")
    assert parser.version == "1.1"


def test_an_undefined_escape_sequence_is_a_fatal_error(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\nx:a\\tb\n\n\x00")
    assert error.error_message == "Undefined escape sequence '\\\\t' in a header"


def test_a_trailing_lone_backslash_is_a_fatal_error(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\nx:ab\\\n\n\x00")
    assert error.error_message == "Undefined escape sequence '\\\\' in a header"


# --- bad input ------------------------------------------------------------------------------


def test_garbage_bytes_are_reported_as_an_invalid_frame(parse):
    error = _error_of(parse, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert error.error_message.startswith("Invalid frame: expected a command, got b'\\x16")


def test_a_command_line_that_is_not_letters_is_an_invalid_frame(parse):
    error = _error_of(parse, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    # Fed byte by byte, the error comes as soon as the space arrives: no waiting for the frame.
    assert error.error_message.startswith("Invalid frame: expected a command, got b'GET ")


def _outcome(parser: FrameParser, chunks: list[bytes]) -> object:
    """The frames parsed from ``chunks``, or the message of the error they raised."""
    events = []
    try:
        for chunk in chunks:
            parser.receive_data(chunk)
            events += parser.events_received()
    except RemoteProtocolError as exc:
        return exc.error_message
    return events


@pytest.mark.parametrize("letters", [11, 14, 15, 16, 17, 40])
@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_long_command_gets_one_outcome_however_the_frame_is_split(letters, eol):
    data = b"A" * letters + eol + b"x:1" + eol + eol + b"\x00"
    whole = _outcome(FrameParser(), [data])
    for cut in range(1, len(data)):
        assert _outcome(FrameParser(), [data[:cut], data[cut:]]) == whole, cut
    assert _outcome(FrameParser(), [data[i : i + 1] for i in range(len(data))]) == whole


def test_a_command_up_to_the_longest_allowed_is_a_frame_and_a_longer_one_an_invalid_frame():
    assert _outcome(FrameParser(), [b"A" * 15 + b"\n\n\x00"]) == [Frame("A" * 15)]
    assert _outcome(FrameParser(), [b"A" * 16 + b"\n\n\x00"]) == (
        "Invalid frame: expected a command, got b'AAAAAAAAAAAAAAAA'"
    )


def test_a_command_line_that_is_not_utf8_is_an_invalid_frame_whole_or_split():
    data = b"SE\xffND\nx:1\n\n\x00"
    # Split, the error comes as soon as the bad byte arrives, quoting what arrived so far.
    assert _outcome(FrameParser(), [data]) == "Invalid frame: expected a command, got b'SE\\xffND'"
    assert _outcome(FrameParser(), [data[:3], data[3:]]) == "Invalid frame: expected a command, got b'SE\\xff'"


def test_headers_that_are_not_utf8_are_rejected(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\nx:\xff\xfe\n\n\x00")
    assert error.error_message == "Frame headers are not valid UTF-8"


def test_a_header_line_without_a_colon_is_rejected(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\nnocolon\n\n\x00")
    assert error.error_message == "Header line without a colon: 'nocolon'"


def test_a_header_with_an_empty_name_is_rejected(parse):
    error = _error_of(parse, b"SEND\n:value\n\n\x00")
    assert error.error_message == "Header line with an empty name: ':value'"


def test_a_content_length_that_is_not_a_number_is_rejected(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\ncontent-length:-1\n\n\x00")
    assert error.error_message == "Invalid content-length header: '-1'"


def test_a_body_longer_than_its_content_length_is_rejected(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\ncontent-length:2\n\nabc\x00")
    assert error.error_message == "Frame body is not followed by a NUL byte after content-length 2"


def test_a_carriage_return_without_line_feed_between_frames_is_rejected(parse):
    error = _error_of(parse, b"\rX")
    assert error.error_message == "Expected a line feed after a carriage return between frames"


def test_frames_before_a_bad_one_are_still_returned():
    parser = FrameParser()
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"SEND\ndestination:/q\n\nok\x00\x01\x02garbage\n\n\x00")
    assert parser.events_received() == [Frame("SEND", (("destination", "/q"),), b"ok")]


def test_after_an_error_the_parser_refuses_more_input():
    parser = FrameParser()
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(b"\x01\x02\n")
    with pytest.raises(LocalProtocolError, match="The parser failed earlier"):
        parser.receive_data(b"SEND\ndestination:/q\n\n\x00")


def test_every_codec_error_is_a_stomp_error():
    assert issubclass(RemoteProtocolError, StompError) and issubclass(LocalProtocolError, StompError)


# --- limits ---------------------------------------------------------------------------------

SMALL = Limits(max_frame_size=200, max_body_size=100, max_headers=3, max_header_line=40)


def test_a_content_length_over_the_body_limit_is_rejected_before_reading_the_body(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\ncontent-length:101\n\n", limits=SMALL)
    assert error.error_message == "Frame body of 101 bytes is over the limit of 100 bytes"


def test_a_body_without_content_length_over_the_limit_is_rejected(parse):
    error = _error_of(parse, b"SEND\ndestination:/q\n\n" + b"x" * 101, limits=SMALL)
    assert error.error_message == (
        "Frame body is over the limit of 100 bytes (or its NUL terminator is missing)"
    )


def test_a_frame_over_the_frame_limit_is_rejected(parse):
    limits = Limits(max_frame_size=60, max_body_size=100, max_headers=3, max_header_line=40)
    error = _error_of(parse, b"SEND\ndestination:/q\ncontent-length:50\n\n" + b"x" * 50 + b"\x00", limits=limits)
    assert error.error_message == "Frame of 90 bytes is over the limit of 60 bytes"


def test_too_many_headers_are_rejected(parse):
    error = _error_of(parse, b"SEND\na:1\nb:2\nc:3\nd:4\n\n\x00", limits=SMALL)
    assert error.error_message == "Frame has 4 headers, over the limit of 3"


def test_a_header_line_over_the_limit_is_rejected(parse):
    error = _error_of(parse, b"SEND\nx:" + b"y" * 60 + b"\n\n\x00", limits=SMALL)
    assert error.error_message == "Header line is over the limit of 40 bytes"


def test_a_header_line_over_the_limit_is_rejected_before_it_ends(parse):
    error = _error_of(parse, b"SEND\nx:" + b"y" * 60, limits=SMALL)
    assert error.error_message == "Header line is over the limit of 40 bytes"


LINES = Limits(max_frame_size=1024, max_body_size=512, max_headers=16, max_header_line=128)


def test_an_unfinished_header_block_with_a_line_over_the_limit_is_refused_however_it_arrives(parse):
    # The over-long line is finished and the block goes on: whole, the last line was short.
    error = _error_of(parse, b"SEND\nh:" + b"v" * 200 + b"\nx:y\n", limits=LINES)
    assert error.error_message == "Header line is over the limit of 128 bytes"


def test_a_good_frame_then_an_unfinished_block_with_a_long_line_in_one_read_gives_the_frame_then_the_error():
    parser = FrameParser(limits=LINES)
    with pytest.raises(RemoteProtocolError, match="^Header line is over the limit of 128 bytes$"):
        parser.receive_data(b"SEND\n\nok\x00" + b"SEND\nh:" + b"v" * 200 + b"\nx:y\n")
    assert parser.events_received() == [Frame("SEND", (), b"ok")]


@pytest.mark.parametrize(
    "data, outcome",
    [
        # The example of the chaos suite: unfinished, then the same frame complete.
        (b"SEND\nh:" + b"v" * 200 + b"\nx:y\n", "Header line is over the limit of 128 bytes"),
        (b"SEND\nh:" + b"v" * 200 + b"\nx:y\n\n\x00", "Header line is over the limit of 128 bytes"),
        # A line of exactly 128 bytes ending with CRLF: the CR is the line end, not the line.
        (b"SEND\r\nh:" + b"v" * 126 + b"\r\n\r\n\x00", [Frame("SEND", (("h", "v" * 126),))]),
        (b"SEND\r\nh:" + b"v" * 127 + b"\r\n\r\n\x00", "Header line is over the limit of 128 bytes"),
        (b"SEND\nh:" + b"v" * 126 + b"\n\n\x00", [Frame("SEND", (("h", "v" * 126),))]),
        (b"SEND\nh:" + b"v" * 127 + b"\n\n\x00", "Header line is over the limit of 128 bytes"),
        # A long line after a bad one: the long line is refused first, as it is when split.
        (b"SEND\nx:\xff\nh:" + b"v" * 200 + b"\n\n\x00", "Header line is over the limit of 128 bytes"),
        (b"SEND\n" + b"a:1\n" * 20 + b"h:" + b"v" * 200 + b"\n\n\x00", "Header line is over the limit of 128 bytes"),
        # Which limit comes first in the stream decides, whole or split.
        (b"SEND\nh:" + b"v" * 200 + b"\n" + b"a:b\n" * 300, "Header line is over the limit of 128 bytes"),
        (b"SEND\n" + b"a:b\n" * 300 + b"h:" + b"v" * 200, "Frame headers are over the limit of 1024 bytes"),
        # A NUL in a header: refused as soon as it arrives, unless a line was too long before it.
        (b"SEND\nx:a\x00b\ncontent-length:2\n\nhi\x00", "Header line with a NUL byte (a NUL ends a frame): b'x:a'"),
        (b"SEND\nx:a\x00b", "Header line with a NUL byte (a NUL ends a frame): b'x:a'"),
        (b"SEND\nx:1\nna\x00me:1\n\n\x00", "Header line with a NUL byte (a NUL ends a frame): b'na'"),
        (b"SEND\nh:" + b"v" * 126 + b"\x00\n\n\x00", "Header line with a NUL byte (a NUL ends a frame): b'h:vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv..."),
        (b"SEND\nh:" + b"v" * 127 + b"\x00\n\n\x00", "Header line is over the limit of 128 bytes"),
        (b"SEND\nh:" + b"v" * 200 + b"\nx:\x00\n\n\x00", "Header line is over the limit of 128 bytes"),
        (b"SEND\nx:\x00\nh:" + b"v" * 200 + b"\n\n\x00", "Header line with a NUL byte (a NUL ends a frame): b'x:'"),
        (b"SEND\n" + b"a:b\n" * 300 + b"x:\x00", "Frame headers are over the limit of 1024 bytes"),
    ],
    ids=["unfinished", "complete", "crlf-128", "crlf-129", "lf-128", "lf-129", "after-bad-utf8",
         "after-many-headers", "line-before-frame-limit", "frame-limit-before-line", "nul-complete",
         "nul-unfinished", "nul-in-a-name", "nul-at-the-limit", "nul-past-the-limit", "long-line-then-nul",
         "nul-then-long-line", "frame-limit-before-nul"],
)
def test_a_header_block_gets_one_outcome_however_it_is_split(data, outcome):
    assert _outcome(FrameParser(limits=LINES), [data]) == outcome
    assert _outcome(FrameParser(limits=LINES), [data[i : i + 1] for i in range(len(data))]) == outcome
    for cut in range(1, len(data), 7 if len(data) > 300 else 1):
        assert _outcome(FrameParser(limits=LINES), [data[:cut], data[cut:]]) == outcome, cut
    # Several frames in one read: the same block behind two good frames.
    frames = [Frame("SEND", (), b"a"), Frame("SEND", (), b"b")]
    both = _outcome(FrameParser(limits=LINES), [b"SEND\n\na\x00SEND\n\nb\x00" + data])
    assert both == (frames + outcome if isinstance(outcome, list) else outcome)


def test_a_nul_inside_a_header_is_refused_though_a_content_length_covers_the_body(parse):
    # A receiver ends a frame at its first NUL: the spec's header octets cannot carry one.
    error = _error_of(parse, b"SEND\nx:a\x00b\ncontent-length:2\n\nhi\x00")
    assert error.error_message == "Header line with a NUL byte (a NUL ends a frame): b'x:a'"


def test_a_nul_inside_a_connect_header_is_refused(parse):
    error = _error_of(parse, b"CONNECT\naccept-version:1.2\npasscode:se\x00cret\n\n\x00")
    assert error.error_message == "Header line with a NUL byte (a NUL ends a frame): b'passcode:se'"


def test_a_nul_inside_a_receipt_is_refused_after_the_same_send_was_cached():
    parser = FrameParser()
    parser.receive_data(b"SEND\ndestination:/q\nreceipt:r1\n\nx\x00")
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(b"SEND\ndestination:/q\nreceipt:r\x002\n\nx\x00")
    assert info.value.error_message == "Header line with a NUL byte (a NUL ends a frame): b'receipt:r'"
    assert parser.events_received() == [Frame("SEND", (("destination", "/q"), ("receipt", "r1")), b"x")]


def test_a_flood_without_frame_ends_never_buffers_more_than_the_frame_limit():
    parser = FrameParser(limits=SMALL)
    parser.receive_data(b"SEND\ndestination:/q\n\n")
    with pytest.raises(RemoteProtocolError):
        for _ in range(1000):
            parser.receive_data(b"x" * 10)
            assert parser.buffered <= 200
    assert parser.buffered == 0


def test_a_parser_that_failed_keeps_no_reference_to_the_refused_bytes():
    # A stored exception's traceback would hold the parser's frames, and with them the chunk
    # (MiBs at a size limit), in a cycle only the cyclic GC frees.
    chunk = b"SEND\ndestination:/q\n\n" + b"x" * 4096
    before = sys.getrefcount(chunk)
    parser = FrameParser(limits=Limits(max_frame_size=2048, max_body_size=1024))
    try:
        parser.receive_data(chunk)
    except RemoteProtocolError as exc:
        assert exc.error_message == "Frame body is over the limit of 1024 bytes (or its NUL terminator is missing)"
    assert sys.getrefcount(chunk) == before
    with pytest.raises(LocalProtocolError, match=r"failed earlier \(Frame body is over the limit"):
        parser.receive_data(b"x")


@pytest.mark.parametrize(
    "template",
    [
        b"SEND\ndestination:/q\nreceipt:%s\ncontent-length:1\n\nx\x00",
        b"SEND\nreceipt:%s\ndestination:/q\n\nx\x00",
        b"SEND\ndestination:/q\nx-a:1\nreceipt:%s\n\nx\x00",
        b"SEND\r\ndestination:/q\r\nreceipt:%s\r\n\r\nx\x00",
        b"SEND\ndestination:/q\nreceipt:%s\nreceipt:second\n\nx\x00",
    ],
)
def test_sends_that_differ_only_by_their_receipt_parse_as_they_would_alone(template):
    receipts = [b"r1", b"r2", b"a\\cb", b"", b"r-\xc3\xa9", b"r5"]
    warm = FrameParser()
    for receipt in receipts:
        data = template % receipt
        alone = FrameParser()
        alone.receive_data(data)
        warm.receive_data(data)
        assert warm.events_received() == alone.events_received()


def test_a_receipt_that_needs_unescaping_is_unescaped_after_a_cached_send():
    parser = FrameParser()
    parser.receive_data(b"SEND\ndestination:/q\nreceipt:plain\n\nx\x00SEND\ndestination:/q\nreceipt:a\\cb\n\nx\x00")
    assert [f.get("receipt") for f in parser.events_received()] == ["plain", "a:b"]


def test_limits_default_to_the_named_module_constants():
    from notifications.codec import limits

    assert Limits() == Limits(
        limits.MAX_FRAME_SIZE, limits.MAX_BODY_SIZE, limits.MAX_HEADERS, limits.MAX_HEADER_LINE
    )
    assert (limits.MAX_BODY_SIZE, limits.MAX_HEADERS, limits.MAX_HEADER_LINE) == (4194304, 1000, 10240)


# --- encoding -------------------------------------------------------------------------------


def test_encode_writes_the_literal_bytes_of_a_frame():
    frame = Frame("SEND", (("destination", "/queue/a"), ("content-type", "text/plain")), b"hello")
    assert encode_frame(frame) == b"SEND\ndestination:/queue/a\ncontent-type:text/plain\n\nhello\x00"


def test_encode_escapes_headers_in_stomp_1_2():
    frame = Frame("MESSAGE", (("k:ey", "a\nb\rc\\d:e"),))
    assert encode_frame(frame) == b"MESSAGE\nk\\cey:a\\nb\\rc\\\\d\\ce\n\n\x00"


def test_encode_never_escapes_a_connect_frame():
    frame = Frame("CONNECT", (("accept-version", "1.2"), ("passcode", "a:b\\c")))
    assert encode_frame(frame) == b"CONNECT\naccept-version:1.2\npasscode:a:b\\c\n\n\x00"


def test_encode_does_not_escape_in_stomp_1_0():
    frame = Frame("SEND", (("destination", "/q"), ("x", "a:b\\c")))
    assert encode_frame(frame, version="1.0") == b"SEND\ndestination:/q\nx:a:b\\c\n\n\x00"


def test_encode_refuses_a_line_break_where_it_cannot_be_escaped():
    with pytest.raises(LocalProtocolError, match="line breaks in a CONNECTED frame"):
        encode_frame(Frame("CONNECTED", (("server", "a\nb"),)))


def test_encode_refuses_a_nul_body_without_content_length():
    with pytest.raises(LocalProtocolError, match="needs a content-length header"):
        encode_frame(Frame("SEND", (("destination", "/q"),), b"a\x00b"))


def test_encode_refuses_a_content_length_that_does_not_match_the_body():
    with pytest.raises(LocalProtocolError, match="does not match the body of 3 bytes"):
        encode_frame(Frame("SEND", (("content-length", "2"),), b"abc"))


@pytest.mark.parametrize("version", ["1.0", "1.2"])
@pytest.mark.parametrize(
    "frame",
    [
        Frame("SEND", (("destination", "/q"), ("x", "a\x00b")), b"hi"),
        Frame("SEND", (("destination", "/q"), ("x\x00y", "1")), b"hi"),
        Frame("CONNECT", (("accept-version", "1.2"), ("passcode", "se\x00cret"))),
    ],
    ids=["in-a-value", "in-a-name", "in-a-connect-frame"],
)
def test_encode_refuses_a_nul_in_a_header(frame, version):
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(frame, version)
    name = next(n for n, v in frame.headers if "\x00" in n + v)
    assert str(info.value) == f"Header {name!r} cannot carry a NUL byte (a NUL ends a STOMP frame)"


def test_encode_with_eol_ends_the_frame_with_nul_and_a_newline():
    assert encode_frame(Frame("RECEIPT", (("receipt-id", "r1"),)), eol=True) == b"RECEIPT\nreceipt-id:r1\n\n\x00\n"


def test_a_frame_ending_with_nul_and_a_newline_is_a_frame_then_a_heartbeat(parse):
    assert parse(b"RECEIPT\nreceipt-id:r1\n\n\x00\nRECEIPT\nreceipt-id:r2\n\n\x00\n") == [
        Frame("RECEIPT", (("receipt-id", "r1"),)), HEARTBEAT, Frame("RECEIPT", (("receipt-id", "r2"),)), HEARTBEAT
    ]


def test_encode_refuses_a_command_that_is_not_letters():
    with pytest.raises(LocalProtocolError, match="Invalid STOMP command"):
        encode_frame(Frame("SEND\n"))


def test_encode_writes_utf8_headers():
    assert encode_frame(Frame("SEND", (("x", "é"),))) == b"SEND\nx:\xc3\xa9\n\n\x00"


def test_encoded_escapes_parse_back_to_the_same_frame(parse):
    frame = Frame("SEND", (("destination", "/q"), ("odd:name", "line\nbreak\\\r:")), b"body")
    assert parse(encode_frame(frame)) == [frame]


# --- purity ---------------------------------------------------------------------------------


def test_the_codec_imports_neither_django_nor_asyncio():
    code = (
        "import sys, notifications.codec; "
        "print(sorted(m for m in ('django', 'asyncio', 'socket', 'threading') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_parsed_frames_are_as_immutable_as_constructed_ones():
    parser = FrameParser()
    parser.receive_data(b"SEND\ndestination:/q\n\nx\x00")
    (frame,) = parser.events_received()
    with pytest.raises(AttributeError):
        frame.body = b"changed"  # type: ignore[misc]
    assert hash(frame) == hash(Frame("SEND", (("destination", "/q"),), b"x"))


def test_a_repeated_header_block_is_unescaped_per_the_current_version():
    parser = FrameParser()
    parser.receive_data(b"SEND\ndestination:/q\nx:a\\cb\n\n\x00")
    parser.version = "1.0"
    parser.receive_data(b"SEND\ndestination:/q\nx:a\\cb\n\n\x00")
    assert [f.get("x") for f in parser.events_received()] == ["a:b", "a\\cb"]


def test_many_distinct_header_blocks_parse_correctly():
    parser = FrameParser()
    parser.receive_data(b"".join(b"SEND\ndestination:/q\nreceipt:%d\n\n\x00" % i for i in range(300)))
    assert [f.get("receipt") for f in parser.events_received()] == [str(i) for i in range(300)]


def test_a_heart_beat_header_is_read_as_two_millisecond_numbers():
    from notifications.codec import parse_heartbeat

    assert parse_heartbeat("10000,0") == (10000, 0)


@pytest.mark.parametrize("value", ["soon", "10", "1,2,3", "-1,0", ",5"])
def test_a_heart_beat_header_that_is_not_two_numbers_is_refused_with_its_value_named(value):
    from notifications.codec import parse_heartbeat

    with pytest.raises(ValueError, match="Invalid heart-beat header"):
        parse_heartbeat(value)


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ((10000, 10000), (0, 0), (0, 0)),  # a peer that wants none gets none and owes none
        ((10000, 5000), (2000, 30000), (30000, 5000)),  # the slower of each pair wins
        ((0, 1000), (500, 500), (0, 1000)),  # we cannot send: we only expect
    ],
)
def test_heart_beats_are_negotiated_as_the_specification_says(ours, theirs, expected):
    from notifications.codec import negotiate_heartbeat

    assert negotiate_heartbeat(ours, theirs) == expected

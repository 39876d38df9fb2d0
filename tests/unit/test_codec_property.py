"""Property tests of the codec: any input yields frames or a clean StompError; encode then decode
is the identity, however the bytes are split."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from notifications.codec import HEARTBEAT, Frame, FrameParser, Limits, StompError, encode_frame

COMMANDS = ["SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT", "ABORT",
            "DISCONNECT", "MESSAGE", "RECEIPT", "ERROR"]
# Any text STOMP 1.2 can carry once escaped: every code point but surrogates and NUL (a NUL
# ends a frame: the encoder refuses it in a header, the parser too).
header_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
header_names = header_text.filter(bool)


@st.composite
def frames(draw) -> Frame:
    command = draw(st.sampled_from(COMMANDS))
    headers = draw(st.lists(st.tuples(header_names, header_text), max_size=6))
    headers = [(n, v) for n, v in headers if n != "content-length"]
    body = draw(st.binary(max_size=64))
    if b"\x00" in body or draw(st.booleans()):
        headers.append(("content-length", str(len(body))))
    return Frame(command, tuple(headers), body)


SMALL = Limits(max_frame_size=4096, max_body_size=2048, max_headers=50, max_header_line=512)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_any_bytes_yield_frames_or_a_stomp_error(data, chunk):
    parser = FrameParser(limits=SMALL)
    try:
        for i in range(0, len(data), chunk):
            parser.receive_data(data[i : i + chunk])
            parser.events_received()
    except StompError:
        pass


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"SEND\n", b"destination:/q\n", b"content-length:3\n", b"\n", b"\r\n",
                              b"\x00", b"a\\cb:c\\n\n", b"\\t", b"x", b"\xff", b":"]), max_size=30)
)
def test_stomp_like_fragments_yield_frames_or_a_stomp_error(pieces):
    parser = FrameParser(limits=SMALL)
    try:
        parser.receive_data(b"".join(pieces))
    except StompError:
        pass
    for event in parser.events_received():
        assert event is HEARTBEAT or (isinstance(event, Frame) and event.command.isalpha())


@settings(max_examples=200, deadline=None)
@given(st.lists(frames(), min_size=1, max_size=5), st.integers(min_value=1, max_value=40))
def test_encode_then_decode_is_the_identity(sent, chunk):
    data = b"".join(encode_frame(f) for f in sent)
    parser = FrameParser()
    received = []
    for i in range(0, len(data), chunk):
        parser.receive_data(data[i : i + chunk])
        received += parser.events_received()
    assert received == sent

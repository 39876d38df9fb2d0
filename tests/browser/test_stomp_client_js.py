"""The page's STOMP client (notifications/static/notifications/stomp-client.js), run by node:
frame parsing in one read and one byte at a time, header escaping, encoding, and seq ordering."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import service_missing

SCRIPT = Path(__file__).with_name("stomp_client_check.mjs")
FRAMES = [
    {"command": "CONNECTED", "headers": {"version": "1.2", "heart-beat": "0,0"}, "body": ""},
    "heartbeat",
    {"command": "MESSAGE", "headers": {"destination": "/topic/a:b", "subscription": "s1", "content-length": "5"},
     "body": "ab\u0000cd"},
    "heartbeat",
    {"command": "MESSAGE", "headers": {"subscription": "s1", "foo": "1"}, "body": "h\u00e9llo"},
]


@pytest.fixture(scope="module")
def checked() -> dict:
    node = shutil.which("node")
    if node is None:
        service_missing("node is not installed")
    done = subprocess.run([node, str(SCRIPT)], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(done.stdout)


def test_frames_heartbeats_content_length_and_escapes_parse_from_one_read(checked):
    assert checked["all_at_once"] == FRAMES


def test_the_same_stream_fed_one_byte_at_a_time_gives_the_same_frames(checked):
    assert checked["one_byte_at_a_time"] == FRAMES


def test_a_frame_whose_body_has_not_fully_arrived_is_held_back(checked):
    assert checked["incomplete"] == []


def test_stomp_10_frames_keep_backslashes_in_headers(checked):
    assert checked["version_10_keeps_backslashes"] == [{"command": "MESSAGE", "headers": {"x": "a\\cb"}, "body": ""}]


def test_an_undefined_escape_sequence_is_an_error(checked):
    assert checked["bad_escape"] == "undefined escape sequence \\t in a header"


def test_a_body_not_followed_by_nul_is_an_error(checked):
    assert checked["missing_nul_after_body"] == "frame body not followed by NUL"


def test_send_frames_escape_headers_and_carry_a_content_length(checked):
    assert checked["encoded_send"] == 'SEND\ndestination:/app/a\\cb\\nc\nreceipt:r1\ncontent-length:11\n\n{"job":"x"}\u0000'


def test_subscribe_frames_have_no_body_length(checked):
    assert checked["encoded_subscribe"] == "SUBSCRIBE\nid:sub-1\ndestination:/topic/jobs.all\n\n\u0000"


def test_connect_headers_are_never_escaped(checked):
    assert checked["encoded_connect"] == "CONNECT\naccept-version:1.2\nhost:a:b\n\n\u0000"


def test_the_seq_gate_accepts_only_newer_sequence_numbers(checked):
    assert checked["seq_gate"] == [False, False, True, False, True, False]

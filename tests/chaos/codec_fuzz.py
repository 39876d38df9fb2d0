"""Coverage-guided fuzzing of the STOMP codec with atheris (libFuzzer for Python).

The oracle, ``check(data)``, holds for every input:

- the parser raises nothing but StompError (the broker turns anything else into a generic ERROR,
  but the codec's contract is one root error);
- the same bytes give the same frames and the same verdict (refused or not) whether they arrive
  whole, in chunks of any size, or one byte at a time (issue 8's defect 10 breaks this);
- every frame the parser returns encodes again, and the encoding parses back to the same frame
  (under the ordinary limits: escaping may lengthen a header).

Run by hand (``bench/fuzz_codec.py`` for long runs) or, bounded, by tests/chaos/test_codec_fuzz.py:

    .venv/bin/python -m tests.chaos.codec_fuzz -runs=20000 -seed=1 -max_len=512

CODEC_FUZZ_MASK (comma-separated) lets a long run look past defects already reported:
``long-commands`` skips inputs where a frame starts with an alphabetic command of 15 or more
letters (issue 8's defect 10).

libFuzzer's own options apply (``-max_total_time=600``, ``-artifact_prefix=dir/``); a failing
input is written to ``crash-<sha1>`` and replays with ``python -m tests.chaos.codec_fuzz crash-<sha1>``.
"""
from __future__ import annotations

import os
import re
import sys

import atheris

with atheris.instrument_imports(include=["notifications.codec"]):
    from notifications.codec import HEARTBEAT, Frame, FrameParser, Limits, LocalProtocolError, StompError, encode_frame

__all__ = ["check", "parse", "SMALL"]

# Small limits, so that inputs of a few hundred bytes reach every limit's code path.
SMALL = Limits(max_frame_size=1024, max_body_size=512, max_headers=16, max_header_line=128)


def parse(chunks: list[bytes], limits: Limits = SMALL) -> tuple[list, bool]:
    """(events, refused): what a parser makes of ``chunks`` fed in order."""
    parser = FrameParser(limits=limits)
    events: list = []
    refused = False
    for chunk in chunks:
        try:
            parser.receive_data(chunk)
        except StompError:
            refused = True
        events.extend(parser.events_received())
        if refused:
            break
    return [("HEARTBEAT",) if e is HEARTBEAT else (e.command, e.headers, e.body) for e in events], refused


_LONG_COMMAND = re.compile(rb"(?:^|\x00)[\r\n]*[A-Za-z]{15,}")


def check(data: bytes) -> None:
    if not data:
        return
    step, data = data[0] % 23 + 1, data[1:]
    masks = set(os.environ.get("CODEC_FUZZ_MASK", "").split(","))
    if "long-commands" in masks and _LONG_COMMAND.search(data):
        return
    whole = parse([data])
    chunked = parse([data[i:i + step] for i in range(0, len(data), step)])
    bytewise = parse([data[i:i + 1] for i in range(len(data))])
    assert whole == chunked == bytewise, (
        f"the verdict depends on how the bytes arrive: whole {whole}, in chunks of {step} {chunked}, "
        f"byte by byte {bytewise}"
    )
    for event in whole[0]:
        if event[0] == "HEARTBEAT":
            continue
        frame = Frame(*event)
        try:
            encoded = encode_frame(frame)
        except LocalProtocolError as exc:
            raise AssertionError(f"the parser accepted {frame!r}, which the encoder refuses: {exc}") from exc
        # Ordinary limits here: escaping may lengthen a header (a raw CR becomes \r), and the
        # small limits are there to reach the limit checks, not to judge the encoder.
        again, refused = parse([encoded], Limits())
        assert (again, refused) == ([event], False), f"{frame!r} encodes to {encoded!r}, which parses as {again} {refused}"


def main(argv: list[str]) -> None:
    atheris.Setup(argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

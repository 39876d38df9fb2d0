"""Fuzz the STOMP codec with atheris (coverage-guided), by hand, for as long as you like.

    .venv/bin/python bench/fuzz_codec.py --seconds 600
    CODEC_FUZZ_MASK=long-commands .venv/bin/python bench/fuzz_codec.py --seconds 600   # past defect 10

The target and its oracle are tests/chaos/codec_fuzz.py (one verdict whole, in chunks or byte by
byte; only StompError; parse(encode(frame)) == frame). Prints libFuzzer's last status line and
the first failing input, if any (written as crash-<sha1> into --artifacts).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--artifacts", type=Path, default=None)
    args = parser.parse_args(argv)
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="fuzz-codec-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.codec_fuzz", f"-max_total_time={args.seconds}", f"-seed={args.seed}",
         f"-max_len={args.max_len}", f"-artifact_prefix={artifacts}/", "-print_final_stats=1"],
        cwd=ROOT, capture_output=True, text=True,
    )
    output = (done.stdout + done.stderr).splitlines()
    status = [line for line in output if line.startswith("#")]
    print(status[-1] if status else "(no status line)")
    print("\n".join(line for line in output if line.startswith("stat::")))
    if done.returncode != 0:
        start = next((i for i, line in enumerate(output) if "Uncaught Python exception" in line), max(0, len(output) - 30))
        print("\n".join(output[start:start + 30]))
        print(f"failing inputs in {artifacts}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())

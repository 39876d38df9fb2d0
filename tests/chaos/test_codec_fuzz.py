"""The codec under atheris, bounded: no exception but StompError, one verdict however the bytes
arrive, and every parsed frame encodes and parses back to itself (tests/chaos/codec_fuzz.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .harness import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_twenty_thousand_atheris_inputs_find_no_codec_defect(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "tests.chaos.codec_fuzz", "-runs=20000", "-seed=11", "-max_len=512",
         f"-artifact_prefix={tmp_path}/"],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
        # One seed, one hash order: the same code explores the same inputs in every run.
        env={k: v for k, v in os.environ.items() if k != "CODEC_FUZZ_MASK"} | {"PYTHONHASHSEED": "0"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert "Done 20000 runs" in output

"""A short soak of the whole stack: the same load, cycle after cycle, and the memory of the broker,
daphne and the worker stays flat (tests/chaos/soak.py; bench/chaos_soak.py runs it for longer)."""
from __future__ import annotations

import pytest

from .soak import SoakConfig, soak

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# Peak growth allowed after the warm-up, per process: a leak of 40 KiB per page socket (90 of
# them are opened after the warm-up), or of one refused oversize frame (4.25 MiB), exceeds it.
FLAT = 6 * 1024 * 1024


def test_the_same_load_repeated_leaves_every_process_memory_flat(tmp_path, chaos_db, chaos_template, chaos_postgres):
    config = SoakConfig(cycles=8, warmup=2, sockets=15, clients=15, oversize=5, db=chaos_db)
    result = soak(config, tmp_path / "soak", template_db=chaos_template, postgres_url=chaos_postgres)
    print(result.as_dict())
    assert (result.cycles, result.crashes, result.socket_errors, result.client_errors) == (8, [], [], 0)
    assert result.oversize_refused == 8 * 5
    assert result.events_seen >= 8 * 15 * 2  # every page got both snapshots
    assert sorted(result.growth) == ["broker", "web", "worker0"]
    assert {name: growth <= FLAT for name, growth in result.growth.items()} == {
        "broker": True, "web": True, "worker0": True}, result.rss

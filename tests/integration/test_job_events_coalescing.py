"""Job events: progress within one state coalesces, a state change never replaces another."""
from __future__ import annotations

from jobs import events
from notifications.publisher import get_publisher
from tests.conftest import free_port


def event(status: str, done: int, attempts: int = 1) -> dict:
    return {"type": "job", "id": "5a0c7a52-8f7c-4b8e-9d43-0f3f2d1a0b11", "seq": done, "status": status,
            "attempts": attempts, "progress": {"done": done, "total": 10, "percent": done * 10.0}}


def test_while_the_broker_is_away_progress_coalesces_but_every_state_change_stays_queued(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "BROKER_URL": f"stomp://127.0.0.1:{free_port()}",
                              "RECONNECT_MIN": 30.0, "RECONNECT_MAX": 30.0}
    publisher = get_publisher()
    try:
        for e in (event("READY", 0, attempts=0), event("RUNNING", 1), event("RUNNING", 2), event("RUNNING", 3),
                  event("FAILED", 4), event("READY", 5), event("RUNNING", 6, attempts=2),
                  event("RUNNING", 7, attempts=2), event("SUCCESSFUL", 10, attempts=2)):
            events.publish_event(e)
        stats = publisher.stats()
    finally:
        publisher.close()
    # Kept: READY, RUNNING (attempt 1, latest), FAILED, READY, RUNNING (attempt 2, latest),
    # SUCCESSFUL; on two destinations each. Coalesced: 2 + 1 progress events, twice.
    assert (stats.pending + stats.in_flight, stats.coalesced) == (12, 6)

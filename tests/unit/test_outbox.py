"""The outbox's database side against the real test database (SQLite, or PostgreSQL with
DATABASE_URL): writing with the caller's transaction, claiming overdue rows, the bound, pruning,
settings checks."""
from __future__ import annotations

import json
import logging
import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.utils import timezone

from notifications import api, outbox
from notifications.models import OutboxMessage
from notifications.publisher import Publisher
from tests.conftest import free_port

pytestmark = pytest.mark.django_db


def overdue(n: int, *, seconds_ago: float = 5.0) -> list[int]:
    past = timezone.now() - timedelta(seconds=seconds_ago)
    rows = OutboxMessage.objects.bulk_create(
        [OutboxMessage(destinations=["/topic/outbox-test"], body=json.dumps({"n": i}), created=past, available_at=past)
         for i in range(n)]
    )
    return [row.pk for row in rows]


def test_publish_durable_writes_one_row_with_every_destination_and_the_body_as_published():
    row_id = outbox.publish_durable(["/topic/a", "/queue/b"], {"hello": "wörld", "n": 1})
    row = OutboxMessage.objects.get(pk=row_id)
    assert (row.destinations, row.body, row.content_type, row.attempts) == (
        ["/topic/a", "/queue/b"], '{"hello":"wörld","n":1}', "application/json", 0)


def test_a_text_payload_is_stored_as_text():
    row = OutboxMessage.objects.get(pk=outbox.publish_durable("/queue/a", "plain words"))
    assert (row.body, row.content_type, row.payload) == ("plain words", "text/plain;charset=utf-8", "plain words")


def test_a_new_row_is_not_due_for_relays_before_the_retry_bound(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "OUTBOX_RETRY_AFTER": 30.0}
    before = timezone.now()
    row = OutboxMessage.objects.get(pk=outbox.publish_durable("/topic/a", {"n": 1}))
    assert timedelta(seconds=29) < row.available_at - before < timedelta(seconds=31)


def test_a_rolled_back_transaction_leaves_no_outbox_row():
    with pytest.raises(RuntimeError), transaction.atomic():
        outbox.publish_durable("/topic/a", {"n": 1})
        raise RuntimeError("the change is undone")
    assert OutboxMessage.objects.count() == 0


def test_the_message_is_handed_to_the_publisher_only_on_commit(django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        outbox.publish_durable_many([("/topic/a", {"n": 1}), ("/topic/b", {"n": 2})])
    assert (len(callbacks), OutboxMessage.objects.count()) == (1, 2)


def test_a_destination_browsers_use_is_refused_before_anything_is_written():
    with pytest.raises(ValueError, match="must start with /topic/ or /queue/"):
        outbox.publish_durable_many([("/topic/fine", {"n": 1}), ("/user/queue/notifications", {"n": 2})])
    assert OutboxMessage.objects.count() == 0


def test_a_payload_that_is_not_json_is_refused_before_anything_is_written():
    with pytest.raises(ValueError, match="JSON-serialisable"):
        outbox.publish_durable("/topic/a", {"value": float("nan")})
    with pytest.raises(TypeError, match="dict, list or str"):
        outbox.publish_durable("/topic/a", b"raw bytes")
    assert OutboxMessage.objects.count() == 0


def test_notify_writes_the_notification_and_its_event_in_one_transaction():
    alice = get_user_model().objects.create_user("alice")
    api.notify(alice, title="Older")
    with transaction.atomic():
        n = api.notify(alice, title="Report ready", level="success")
        row = OutboxMessage.objects.order_by("-id").first()
    assert row.destinations == [f"/topic/notifications.user.{alice.pk}"]
    assert row.payload == n.to_event(unread=2)


def test_broadcast_promises_its_event_to_the_broadcast_topic():
    n = api.broadcast(title="Maintenance at noon", level="warning")
    row = OutboxMessage.objects.get()
    assert (row.destinations, row.payload["id"], "unread" in row.payload) == (
        ["/topic/notifications.broadcast"], n.pk, False)


def test_notify_many_writes_every_notification_and_event_with_each_users_unread_count():
    users = get_user_model()
    alice, bob = users.objects.create_user("alice"), users.objects.create_user("bob")
    rows = api.notify_many([(alice, {"title": "one"}), (alice, {"title": "two"}), (bob.pk, {"title": "three"})])
    events = {(tuple(r.destinations), r.payload["title"]): r.payload["unread"] for r in OutboxMessage.objects.all()}
    assert len(rows) == 3
    assert events == {
        ((f"/topic/notifications.user.{alice.pk}",), "one"): 2,
        ((f"/topic/notifications.user.{alice.pk}",), "two"): 2,
        ((f"/topic/notifications.user.{bob.pk}",), "three"): 1,
    }


def test_notify_many_validates_every_item_before_writing():
    alice = get_user_model().objects.create_user("alice")
    with pytest.raises(ValueError, match="non-empty title"):
        api.notify_many([(alice, {"title": "fine"}), (alice, {"title": ""})])
    assert (alice.notifications.count(), OutboxMessage.objects.count()) == (0, 0)


def test_a_claim_takes_only_overdue_rows_oldest_first_and_counts_the_attempt():
    due = overdue(3)
    outbox.publish_durable("/topic/a", {"fresh": True})  # not due before its retry bound
    claimed = outbox._claim_due(timezone.now(), 2, 10.0)
    assert ([row.pk for row in claimed], [row.attempts for row in claimed]) == (due[:2], [1, 1])
    assert [row.payload for row in claimed] == [{"n": 0}, {"n": 1}]


def test_each_claim_doubles_the_bound_up_to_its_cap():
    [row_id] = overdue(1)
    leases = []
    now = timezone.now()
    for _ in range(7):
        [row] = outbox._claim_due(now, 10, 10.0)
        leases.append(round((row.available_at - now).total_seconds()))
        now = row.available_at  # claimable again once its lease ran out
    assert leases == [20, 40, 80, 160, 320, 320, 320]
    assert OutboxMessage.objects.get(pk=row_id).attempts == 7


def test_a_claimed_row_is_not_claimed_again_before_its_lease_runs_out():
    overdue(1)
    now = timezone.now()
    assert len(outbox._claim_due(now, 10, 10.0)) == 1
    assert outbox._claim_due(now + timedelta(seconds=19), 10, 10.0) == []


def test_a_relay_whose_publisher_is_not_connected_claims_nothing():
    overdue(2)
    publisher = Publisher(f"stomp://127.0.0.1:{free_port()}", reconnect_min=5.0, reconnect_max=5.0)
    try:
        assert outbox.Relay(publisher).recover() == 0
    finally:
        publisher.close()
    assert list(OutboxMessage.objects.values_list("attempts", flat=True)) == [0, 0]


def test_rows_past_the_maximum_age_are_deleted_and_logged_as_an_error(settings, caplog):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "OUTBOX_MAX_AGE": 60.0}
    overdue(2, seconds_ago=120)
    kept = overdue(1, seconds_ago=30)
    relay = outbox.Relay()
    with caplog.at_level(logging.ERROR, logger="notifications.outbox"):
        assert relay.prune() == 2
    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == kept
    assert relay.stats().expired == 2
    assert "deleted 2 message(s) the broker did not confirm within OUTBOX_MAX_AGE" in caplog.text


@pytest.mark.django_db(transaction=True)
def test_relays_racing_in_four_threads_claim_every_overdue_row_exactly_once():
    ids = set(overdue(120))
    claims: list[list[int]] = []
    errors: list[BaseException] = []
    now = timezone.now()

    def claimer() -> None:
        try:
            while True:
                rows = outbox._claim_due(now, 7, 10.0)
                if not rows:
                    return
                claims.append([row.pk for row in rows])
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    claimed = [pk for batch in claims for pk in batch]
    assert errors == []
    assert (len(claimed), set(claimed)) == (120, ids)
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}


@pytest.mark.parametrize(("key", "value"), [("OUTBOX_RETRY_AFTER", 0), ("OUTBOX_BATCH", 2.5), ("OUTBOX_MAX_AGE", "1d")])
def test_an_outbox_setting_that_is_not_a_positive_number_is_a_system_check_error(settings, key, value):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, key: value}
    [error] = outbox.check_outbox()
    assert (error.id, error.msg.startswith(f"NOTIFICATIONS['{key}'] is {value!r}")) == ("notifications.E050", True)


def test_a_maximum_age_shorter_than_the_retry_bound_is_a_system_check_error(settings):
    settings.NOTIFICATIONS = {**settings.NOTIFICATIONS, "OUTBOX_RETRY_AFTER": 60.0, "OUTBOX_MAX_AGE": 30.0}
    [error] = outbox.check_outbox()
    assert error.id == "notifications.E050"
    assert "must be longer than OUTBOX_RETRY_AFTER" in error.msg

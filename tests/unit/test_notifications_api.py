"""notify(), broadcast(), unread_count(), mark_read() and the JSON views, against the real test database."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from notifications import api
from notifications.models import Notification

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice", password="pw-alice-1")


@pytest.fixture
def bob():
    return get_user_model().objects.create_user("bob", password="pw-bob-1")


def test_notify_saves_the_notification_for_the_user(alice):
    n = api.notify(alice, title="Report ready", text="Your report is done", level="success", link="/jobs/x/")
    row = Notification.objects.get(pk=n.pk)
    assert (row.recipient_id, row.title, row.text, row.level, row.link, row.read) == (
        alice.pk, "Report ready", "Your report is done", "success", "/jobs/x/", False,
    )


def test_notify_accepts_a_user_id(alice):
    n = api.notify(alice.pk, title="Hello")
    assert Notification.objects.get(pk=n.pk).recipient == alice


def test_notify_rejects_an_unknown_level_and_saves_nothing(alice):
    with pytest.raises(ValueError, match="Unknown notification level 'shout'"):
        api.notify(alice, title="Hi", level="shout")
    assert Notification.objects.count() == 0


def test_notify_rejects_an_empty_title(alice):
    with pytest.raises(ValueError, match="non-empty title"):
        api.notify(alice, title="  ")


def test_notify_without_a_user_points_to_broadcast():
    with pytest.raises(ValueError, match="use broadcast"):
        api.notify(None, title="Hi")


def test_broadcast_saves_a_notification_without_recipient():
    n = api.broadcast(title="Maintenance at noon", level="warning")
    assert Notification.objects.get(pk=n.pk).recipient_id is None


def test_notify_publishes_only_after_the_transaction_commits(alice, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        api.notify(alice, title="Later")
    assert len(callbacks) == 1


def test_unread_count_counts_only_the_users_own_unread(alice, bob):
    api.notify(alice, title="one")
    api.notify(alice, title="two")
    api.notify(bob, title="bob's")
    api.broadcast(title="everyone")
    assert api.unread_count(alice) == 2


def test_mark_read_of_given_ids_leaves_the_others_unread(alice):
    first = api.notify(alice, title="one")
    api.notify(alice, title="two")
    assert api.mark_read(alice, [first.pk]) == 1
    assert api.unread_count(alice) == 1
    assert Notification.objects.get(pk=first.pk).read_at is not None


def test_mark_read_ignores_other_users_notifications(alice, bob):
    bobs = api.notify(bob, title="bob's")
    assert api.mark_read(alice, [bobs.pk]) == 0
    assert Notification.objects.get(pk=bobs.pk).read is False


def test_mark_read_without_ids_marks_all(alice):
    api.notify(alice, title="one")
    api.notify(alice, title="two")
    assert api.mark_read(alice) == 2
    assert api.unread_count(alice) == 0


def test_event_json_has_the_contract_fields(alice):
    n = api.notify(alice, title="Done", text="t", level="error", link="/x/")
    n.created = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert n.to_event(unread=3) == {
        "type": "notification", "id": n.pk, "level": "error", "title": "Done", "text": "t",
        "link": "/x/", "created": "2026-01-02T03:04:05+00:00", "read": False, "unread": 3,
    }


def test_list_view_refuses_anonymous_users():
    response = Client().get("/notifications/")
    assert response.status_code == 403


def test_list_view_shows_own_and_broadcast_notifications_newest_first(alice, bob):
    api.notify(alice, title="mine")
    api.notify(bob, title="not mine")
    api.broadcast(title="for all")
    client = Client()
    client.force_login(alice)
    data = client.get("/notifications/").json()
    assert data["unread"] == 1
    assert [n["title"] for n in data["notifications"]] == ["for all", "mine"]


def test_list_view_unread_filter_hides_read_ones(alice):
    read = api.notify(alice, title="old")
    api.notify(alice, title="new")
    api.mark_read(alice, [read.pk])
    client = Client()
    client.force_login(alice)
    data = client.get("/notifications/?unread=1").json()
    assert [n["title"] for n in data["notifications"]] == ["new"]


def test_mark_read_view_requires_a_csrf_token(alice):
    api.notify(alice, title="one")
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    response = client.post("/notifications/read/", {"all": "1"})
    assert response.status_code == 403
    assert api.unread_count(alice) == 1


def test_mark_read_view_marks_given_ids_from_json(alice):
    first = api.notify(alice, title="one")
    api.notify(alice, title="two")
    client = Client()
    client.force_login(alice)
    response = client.post("/notifications/read/", json.dumps({"ids": [first.pk]}), content_type="application/json")
    assert response.json() == {"marked": 1, "unread": 1}


def test_mark_read_view_marks_all_from_a_form(alice):
    api.notify(alice, title="one")
    client = Client()
    client.force_login(alice)
    response = client.post("/notifications/read/", {"all": "1"})
    assert response.json() == {"marked": 1, "unread": 0}


def test_mark_read_view_rejects_a_request_that_names_nothing(alice):
    client = Client()
    client.force_login(alice)
    response = client.post("/notifications/read/", {})
    assert response.status_code == 400

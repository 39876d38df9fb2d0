"""GET /notifications/?after=<id>: what a page that was away fetches, page by page (issue 8, defect 4)."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from notifications import api

pytestmark = pytest.mark.django_db


@pytest.fixture
def alice():
    return get_user_model().objects.create_user("alice")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_after_returns_the_newer_notifications_oldest_first_in_pages(alice):
    bob = get_user_model().objects.create_user("bob")
    first = api.notify(alice, title="seen")
    for n in range(5):
        api.notify(alice, title=f"missed {n}")
    api.notify(bob, title="not alice's")
    api.broadcast(title="for everyone")
    client = _client(alice)
    page1 = client.get(f"/notifications/?after={first.pk}&limit=4").json()
    last = page1["notifications"][-1]["id"]
    page2 = client.get(f"/notifications/?after={last}&limit=4").json()
    assert ([n["title"] for n in page1["notifications"]], page1["more"]) == (
        ["missed 0", "missed 1", "missed 2", "missed 3"], True,
    )
    assert ([n["title"] for n in page2["notifications"]], page2["more"]) == (["missed 4", "for everyone"], False)
    assert page2["unread"] == 6


def test_after_must_be_a_number(alice):
    response = _client(alice).get("/notifications/?after=x")
    assert (response.status_code, response.json()) == (400, {"error": "limit and after must be integers"})

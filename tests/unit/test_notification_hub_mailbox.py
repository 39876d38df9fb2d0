"""The hub's per-listener Mailbox and Event: coalescing, ordering, overflow, parsed fields."""
from __future__ import annotations

from notifications.hub import Event, Mailbox, encode_payload


def make_mailbox(maxsize: int = 3):
    woken = []
    return Mailbox(maxsize, lambda: woken.append(True)), woken


def test_a_newer_item_with_the_same_key_replaces_the_pending_one_in_place():
    box, _ = make_mailbox()
    box.put("job-a seq 1", key="a", rank=1)
    box.put("note", key=None)
    box.put("job-a seq 2", key="a", rank=2)
    assert box.pop_all() == ["job-a seq 2", "note"]


def test_with_coalesce_after_items_of_one_key_are_all_kept_until_that_many_are_pending():
    box = Mailbox(10, lambda: None, coalesce_after=3)
    for seq in (1, 2, 3):
        box.put(f"seq {seq}", key="a", rank=seq)
    assert box.pop_all() == ["seq 1", "seq 2", "seq 3"]


def test_past_coalesce_after_a_newer_item_replaces_the_newest_pending_one_of_its_key():
    box = Mailbox(10, lambda: None, coalesce_after=3)
    for seq in (1, 2, 3, 4, 5):
        box.put(f"seq {seq}", key="a", rank=seq)
    assert box.pop_all() == ["seq 1", "seq 2", "seq 5"]


def test_a_late_older_item_never_hides_a_newer_pending_one():
    box, _ = make_mailbox()
    box.put("seq 3", key="a", rank=3)
    box.put("seq 1", key="a", rank=1)
    assert box.pop_all() == ["seq 3"]


def test_items_without_a_key_are_all_kept_in_order():
    box, _ = make_mailbox()
    for text in ("one", "two", "three"):
        box.put(text)
    assert box.pop_all() == ["one", "two", "three"]


def test_past_its_size_the_mailbox_refuses_and_flags_overflow():
    box, _ = make_mailbox(maxsize=2)
    assert [box.put("1"), box.put("2"), box.put("3")] == [True, True, False]
    assert box.overflowed is True


def test_a_coalesced_item_does_not_count_against_the_size():
    box, _ = make_mailbox(maxsize=1)
    assert [box.put("a1", key="a", rank=1), box.put("a2", key="a", rank=2)] == [True, True]
    assert (box.overflowed, box.coalesced) == (False, 1)


def test_the_owner_is_woken_once_when_the_mailbox_becomes_non_empty():
    box, woken = make_mailbox()
    box.put("1")
    box.put("2")
    box.pop_all()
    box.put("3")
    assert woken == [True, True]


def test_an_event_exposes_the_job_fields_of_its_json_body():
    event = Event("/topic/jobs.x", (("content-type", "application/json"),), b"", {"type": "job", "id": "x", "seq": 4, "final": True})
    assert (event.job_id, event.seq, event.final, event.content_type) == ("x", 4, True, "application/json")


def test_a_notification_event_has_no_job_fields():
    event = Event("/topic/notifications.user.1", (), b"", {"type": "notification", "id": 3})
    assert (event.job_id, event.seq, event.final) == (None, None, False)


def test_payloads_are_encoded_like_the_publisher_does():
    assert encode_payload({"a": 1}) == (b'{"a":1}', [("content-type", "application/json")])
    assert encode_payload("hi") == (b"hi", [("content-type", "text/plain;charset=utf-8")])
    assert encode_payload(b"\x00", {"x": 1}) == (b"\x00", [("content-type", "application/octet-stream"), ("x", "1")])

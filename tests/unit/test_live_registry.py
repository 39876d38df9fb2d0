"""The live registry (notifications.live): patterns, lookups and the system checks of declarations."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from notifications import live
from notifications.live import Pattern, PatternError, Registry

ROOT = Path(__file__).resolve().parents[2]


def ids(errors) -> list[str]:
    return [e.id for e in errors]


def allow(user, **parts) -> bool:
    return True


def handle(user, body, **parts) -> None:
    return None


# ---------------------------------------------------------------- patterns


def test_a_pattern_matches_and_converts_its_typed_parts():
    pattern = Pattern.parse("/topic/orders.{pk:int}.lines.{line}")
    assert pattern.match("/topic/orders.12.lines.a-1") == {"pk": 12, "line": "a-1"}


def test_a_uuid_part_becomes_a_uuid():
    pattern = Pattern.parse("/topic/jobs.{id:uuid}")
    assert pattern.match("/topic/jobs.6F1C0B52-8F7C-4B8E-9D43-0F3F2D1A0B11") == {
        "id": uuid.UUID("6f1c0b52-8f7c-4b8e-9d43-0f3f2d1a0b11")
    }


def test_a_part_never_matches_a_dot_or_a_slash():
    pattern = Pattern.parse("/topic/orders.{name}")
    assert (pattern.match("/topic/orders.a.b"), pattern.match("/topic/orders.a/b")) == (None, None)


def test_an_int_part_refuses_letters():
    assert Pattern.parse("/topic/orders.{pk:int}").match("/topic/orders.all") is None


def test_patterns_with_the_same_parts_under_other_names_have_the_same_shape():
    assert Pattern.parse("/topic/o.{a:int}").shape == Pattern.parse("/topic/o.{b:int}").shape == "/topic/o.{int}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("/topic/orders.{pk:float}", "unknown type 'float'"),
        ("/topic/orders.{pk", "unbalanced brace"),
        ("/topic/orders.{}", "needs a name"),
        ("/topic/{a}.{a}", "names the part 'a' twice"),
        ("/topic/orders.{user_id}", "reserved"),
        ("/topic/orders all", "white space"),
    ],
)
def test_a_malformed_pattern_is_refused_with_the_reason(text, message):
    with pytest.raises(PatternError, match=re.escape(message)):
        Pattern.parse(text)


# ---------------------------------------------------------------- lookups


def test_a_subscription_is_found_with_its_parts():
    registry = Registry()
    declared = registry.subscription("/topic/orders.{pk:int}", permission=allow)
    assert registry.match_subscription("/topic/orders.7") == (declared, {"pk": 7})


def test_an_exact_destination_wins_over_a_pattern_that_also_matches_it():
    registry = Registry()
    registry.subscription("/topic/orders.{name:slug}")
    exact = registry.subscription("/topic/orders.all")
    assert registry.match_subscription("/topic/orders.all") == (exact, {})


def test_a_handler_is_not_a_subscription_and_the_reverse():
    registry = Registry()
    registry.handler("/app/orders.ship", handle)
    registry.subscription("/topic/orders.all")
    assert (registry.match_subscription("/app/orders.ship"), registry.match_handler("/topic/orders.all")) == (None, None)


def test_the_handler_decorator_registers_and_returns_the_function():
    registry = Registry()
    decorated = registry.handler("/app/orders.ship", body='{"pk": 1}')(handle)
    declared, parts = registry.match_handler("/app/orders.ship")
    assert (decorated, declared.handler, declared.body, parts) == (handle, handle, '{"pk": 1}', {})


def test_topics_are_made_from_the_parts_and_the_users_id():
    class User:
        pk = 42

    registry = Registry()
    declared = registry.subscription("/user/queue/orders.{pk:int}", topics=("/topic/orders.{pk}.user.{user_id}", "/topic/all"))
    assert declared.topics_for(User(), {"pk": 3}) == ("/topic/orders.3.user.42", "/topic/all")


def test_a_topic_destination_relays_itself_by_default():
    registry = Registry()
    declared = registry.subscription("/topic/jobs.{id:uuid}")
    _, parts = registry.match_subscription("/topic/jobs.6F1C0B52-8F7C-4B8E-9D43-0F3F2D1A0B11")
    assert declared.topics_for(None, parts) == ("/topic/jobs.6f1c0b52-8f7c-4b8e-9d43-0f3f2d1a0b11",)


def test_the_declaring_module_is_recorded():
    registry = Registry()
    assert registry.subscription("/topic/x").declared_by == __name__


# ---------------------------------------------------------------- system checks


def test_well_formed_declarations_pass_the_checks():
    registry = Registry()
    registry.subscription("/topic/orders.{pk:int}", permission=allow, snapshot=allow, key="id", seq="seq")
    registry.subscription("/user/queue/orders", topics="/topic/orders.user.{user_id}")
    registry.handler("/app/orders.ship", handle, permission=allow)
    assert registry.check() == []


def test_a_malformed_pattern_is_error_e020_and_is_never_matched():
    registry = Registry()
    registry.subscription("/topic/orders.{pk:float}")
    errors = registry.check()
    assert ids(errors) == ["notifications.E020"]
    assert "unknown type 'float'" in errors[0].msg and "tests.unit.test_live_registry" in errors[0].msg
    assert registry.match_subscription("/topic/orders.1") is None


def test_a_destination_outside_the_browser_prefixes_is_error_e021():
    registry = Registry()
    registry.subscription("/exchange/orders")
    registry.subscription("/app/orders.list")
    registry.handler("/topic/orders.ship", handle)
    assert ids(registry.check()) == ["notifications.E021"] * 3
    assert (registry.match_subscription("/exchange/orders"), registry.match_handler("/topic/orders.ship")) == (None, None)


def test_two_declarations_matching_the_same_destinations_are_error_e022_naming_both():
    registry = Registry()
    first = registry.subscription("/topic/orders.{pk:int}", declared_by="shop.live")
    registry.subscription("/topic/orders.{id:int}", declared_by="billing.live")
    errors = registry.check()
    assert ids(errors) == ["notifications.E022"]
    assert "shop.live" in errors[0].msg and "billing.live" in errors[0].msg
    assert registry.match_subscription("/topic/orders.1")[0] is first


def test_the_same_exact_destination_declared_twice_is_error_e022():
    registry = Registry()
    registry.handler("/app/orders.ship", handle)
    registry.handler("/app/orders.ship", handle)
    assert ids(registry.check()) == ["notifications.E022"]


def test_a_user_destination_without_topics_is_error_e023():
    registry = Registry()
    registry.subscription("/user/queue/orders")
    assert ids(registry.check()) == ["notifications.E023"]


def test_a_topic_using_an_unknown_part_is_error_e023():
    registry = Registry()
    registry.subscription("/topic/orders.{pk:int}", topics="/topic/orders.{order}")
    errors = registry.check()
    assert ids(errors) == ["notifications.E023"]
    assert "uses order" in errors[0].msg


def test_a_topic_that_is_not_a_broker_destination_is_error_e023():
    registry = Registry()
    registry.subscription("/user/queue/orders", topics="/user/queue/other")
    assert ids(registry.check()) == ["notifications.E023"]


def test_a_permission_that_is_not_callable_is_error_e024():
    registry = Registry()
    registry.subscription("/topic/orders", permission="shop.view_order")
    registry.handler("/app/orders.ship", handle, permission=True)
    assert ids(registry.check()) == ["notifications.E024"] * 2


def test_a_seq_without_a_key_is_error_e024():
    registry = Registry()
    registry.subscription("/topic/orders", seq="seq")
    assert ids(registry.check()) == ["notifications.E024"]


def test_the_process_registry_of_jobs_and_notifications_passes_the_checks():
    assert live.check_declarations() == []


def test_jobs_and_notifications_declare_their_destinations_through_the_registry():
    subscriptions = [
        "/user/queue/notifications",
        "/topic/notifications.broadcast",
        "/topic/jobs.all",
        "/user/queue/jobs",
        "/topic/jobs.6f1c0b52-8f7c-4b8e-9d43-0f3f2d1a0b11",
    ]
    found = [live.registry.match_subscription(name)[0].declared_by for name in subscriptions]
    handlers = [live.registry.match_handler(name)[0].declared_by for name in ["/app/notifications.read", "/app/jobs.cancel"]]
    assert (found, handlers) == (
        ["notifications.destinations", "notifications.destinations", "jobs.live", "jobs.live", "jobs.live"],
        ["notifications.destinations", "jobs.live"],
    )


def test_no_module_of_notifications_imports_jobs():
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / "notifications").rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"(from|import) jobs\b", line)
    ]
    assert offenders == []


def test_the_websocket_consumer_names_no_destination_of_its_own():
    source = (ROOT / "notifications" / "consumers.py").read_text()
    assert re.findall(r"/(?:topic|queue|user|app)/\w", source) == []


# ---------------------------------------------------------------- publish


@pytest.mark.parametrize("destination", ["/user/queue/orders", "/app/orders.ship", "orders"])
def test_publishing_to_a_destination_brokers_do_not_carry_is_a_value_error(destination):
    with pytest.raises(ValueError, match="publish to a broker destination"):
        live.publish(destination, {"x": 1})


def test_publishing_an_object_that_is_not_json_data_is_a_type_error():
    with pytest.raises(TypeError, match="Cannot publish a set"):
        live.publish("/topic/orders", {1, 2})


def test_the_websocket_consumer_has_no_word_of_jobs():
    source = (ROOT / "notifications" / "consumers.py").read_text()
    assert re.findall(r".{0,30}job.{0,30}", source, flags=re.I) == []

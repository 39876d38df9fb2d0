"""System checks of the live-delivery settings."""
from __future__ import annotations

from notifications.checks import check_live_delivery, check_settings


def ids(errors) -> list[str]:
    return [e.id for e in errors]


def test_the_default_settings_pass_the_checks(settings):
    settings.NOTIFICATIONS = {}
    assert check_settings() + check_live_delivery() == []


def test_a_broker_url_without_stomp_scheme_is_reported(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "amqp://localhost"}
    assert ids(check_settings()) == ["notifications.E001"]


def test_a_negative_heartbeat_is_reported(settings):
    settings.NOTIFICATIONS = {"HEARTBEAT_MS": -1}
    assert ids(check_live_delivery()) == ["notifications.E002"]


def test_a_zero_session_recheck_is_reported(settings):
    settings.NOTIFICATIONS = {"SESSION_RECHECK_SECONDS": 0}
    assert ids(check_live_delivery()) == ["notifications.E002"]


def test_a_reconnect_minimum_above_the_maximum_is_reported(settings):
    settings.NOTIFICATIONS = {"RECONNECT_MIN": 10, "RECONNECT_MAX": 1}
    assert ids(check_live_delivery()) == ["notifications.E003"]


def test_allowed_origins_given_as_a_string_is_reported(settings):
    settings.NOTIFICATIONS = {"ALLOWED_ORIGINS": "https://app.example"}
    assert ids(check_live_delivery()) == ["notifications.E004"]


def test_an_allowed_origin_with_a_foreign_scheme_is_reported(settings):
    settings.NOTIFICATIONS = {"ALLOWED_ORIGINS": ["ftp://app.example"]}
    assert ids(check_live_delivery()) == ["notifications.E004"]


def test_a_broker_url_never_shows_its_passcode_in_str_or_repr():
    from notifications.conf import parse_broker_url

    url = parse_broker_url("stomp://guest:s3cret@127.0.0.1:61613/prod")
    assert str(url) == "stomp://guest:***@127.0.0.1:61613/prod"
    assert "s3cret" not in repr(url)
    assert url.passcode == "s3cret"

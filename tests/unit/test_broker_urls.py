"""BROKER_URL parsing: one broker or several, TLS schemes, per-broker options, clear errors."""
from __future__ import annotations

import pytest

from notifications.conf import BrokerURL, broker_url, broker_urls, parse_broker_url, parse_broker_urls


def test_a_plain_url_without_port_uses_stomps_registered_port():
    assert parse_broker_url("stomp://127.0.0.1") == BrokerURL(host="127.0.0.1", port=61613)


def test_a_path_names_the_virtual_host_and_credentials_are_unquoted():
    url = parse_broker_url("stomp://us%40er:p%2Fss@mq.example:61000/my%2Fvhost")
    assert (url.login, url.passcode, url.host, url.port, url.vhost) == ("us@er", "p/ss", "mq.example", 61000, "my/vhost")


@pytest.mark.parametrize("scheme", ["stomp+ssl", "stomps", "ssl", "STOMP+SSL"])
def test_every_tls_scheme_means_tls_and_defaults_to_port_61614(scheme):
    url = parse_broker_url(f"{scheme}://mq.example")
    assert (url.tls, url.port, str(url)) == (True, 61614, "stomp+ssl://mq.example:61614")


def test_tls_options_name_the_ca_and_the_client_certificate():
    url = parse_broker_url("stomp+ssl://mq.example:61614?ca_file=/etc/ca.pem&cert_file=/etc/me.pem&key_file=/etc/me.key")
    assert (url.ca_file, url.cert_file, url.key_file) == ("/etc/ca.pem", "/etc/me.pem", "/etc/me.key")


def test_the_heartbeat_option_sets_this_brokers_interval():
    assert parse_broker_url("stomp://127.0.0.1:61613?heartbeat=0").heartbeat_ms == 0
    assert parse_broker_url("stomp://127.0.0.1:61613?heartbeat=2500").heartbeat_ms == 2500
    assert parse_broker_url("stomp://127.0.0.1:61613").heartbeat_ms is None


def test_str_masks_the_password_and_keeps_the_options():
    url = parse_broker_url("stomps://u:secret@mq.example/prod?heartbeat=0&ca_file=/ca.pem")
    assert str(url) == "stomp+ssl://u:***@mq.example:61614/prod?heartbeat=0&ca_file=/ca.pem"


@pytest.mark.parametrize(
    "value, message",
    [
        ("amqp://localhost", "must start with stomp:// or stomp+ssl://"),
        ("stomp://", "has no host"),
        ("stomp://127.0.0.1:notaport", "has an invalid port"),
        ("stomp://127.0.0.1?hearbeat=0", "unknown option 'hearbeat'; known options: ca_file, cert_file, heartbeat, key_file"),
        ("stomp://127.0.0.1?heartbeat=fast", "heartbeat='fast' must be a number of milliseconds"),
        ("stomp://127.0.0.1?heartbeat=1&heartbeat=2", "gives the option 'heartbeat' twice"),
        ("stomp://127.0.0.1?ca_file=/ca.pem", "ca_file applies to TLS URLs only"),
        ("stomp+ssl://127.0.0.1?key_file=/k.pem", "key_file needs cert_file"),
        ("stomp+ssl://127.0.0.1?ca_file=", "ca_file needs a file path"),
        ("stomp://a:1,stomp://b:2", "names several brokers; read it with parse_broker_urls()"),
    ],
)
def test_a_bad_url_is_refused_with_a_message_that_says_what_is_wrong(value, message):
    with pytest.raises(ValueError) as info:
        parse_broker_url(value)
    assert message in str(info.value)


def test_an_error_message_never_shows_the_password():
    with pytest.raises(ValueError) as info:
        parse_broker_urls("stomp://guest:s3cret@a:61613?bogus=1,stomp://b")
    assert "s3cret" not in str(info.value)
    assert "guest:***@a" in str(info.value)


def test_several_brokers_separated_by_commas_keep_their_order():
    urls = parse_broker_urls("stomp://a:61613, stomp+ssl://b ,stomp://c:1/v?heartbeat=0")
    assert [(u.host, u.port, u.tls, u.vhost, u.heartbeat_ms) for u in urls] == [
        ("a", 61613, False, None, None),
        ("b", 61614, True, None, None),
        ("c", 1, False, "v", 0),
    ]


def test_activemqs_failover_form_lists_the_same_brokers():
    assert parse_broker_urls("failover:(stomp://a:61613,stomp://b:61613)") == parse_broker_urls("stomp://a:61613,stomp://b:61613")


def test_a_list_setting_is_accepted_too():
    assert parse_broker_urls(["stomp://a", "stomp://b"]) == (BrokerURL("a", 61613), BrokerURL("b", 61613))


@pytest.mark.parametrize(
    "value, message",
    [
        ("failover:(stomp://a,stomp://b)?randomize=false", "failover options after the parenthesis are not supported"),
        ("failover:stomp://a", "write failover:(stomp://host1:61613,stomp://host2:61613)"),
        ("stomp://a,,stomp://b", "has an empty entry"),
        ([], "empty list"),
        (61613, "must be a string or a list of strings"),
    ],
)
def test_a_bad_list_is_refused_with_a_message_that_says_what_is_wrong(value, message):
    with pytest.raises(ValueError) as info:
        parse_broker_urls(value)
    assert message in str(info.value)


def test_broker_url_returns_the_first_broker_and_validates_them_all(settings):
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://a:1,stomp://b:2"}
    assert (broker_url().host, [u.host for u in broker_urls()]) == ("a", ["a", "b"])
    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://a:1,amqp://b:2"}
    with pytest.raises(ValueError, match="must start with stomp://"):
        broker_url()


def test_a_bad_second_broker_is_reported_by_the_system_check(settings):
    from notifications.checks import check_settings

    settings.NOTIFICATIONS = {"BROKER_URL": "stomp://a:1,stomp://b:2?heartbeat=x"}
    assert [e.id for e in check_settings()] == ["notifications.E001"]

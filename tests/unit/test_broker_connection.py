"""What the hub and the publisher learn about a broker: host-header fallbacks, known defects, the log line."""
from __future__ import annotations

import logging
import socket

from notifications.conf import parse_broker_url
from notifications.connection import BrokerState, host_candidates, known_defect, session_summary


def test_without_a_path_the_host_headers_are_slash_then_the_url_host_then_the_machines_name():
    assert host_candidates(parse_broker_url("stomp://127.0.0.1:61613")) == ["/", "127.0.0.1", socket.getfqdn()]


def test_a_path_is_the_only_host_header_tried():
    assert host_candidates(parse_broker_url("stomp://127.0.0.1:61613/prod")) == ["prod"]


def test_a_refused_host_header_moves_to_the_next_and_the_accepted_one_is_described_with_the_refusals():
    state = BrokerState(parse_broker_url("stomp://127.0.0.1:61613"), 10_000)
    assert (state.host, state.host_refused("no such vhost")) == ("/", True)
    assert (state.host, state.host_accepted()) == ("127.0.0.1", "'127.0.0.1' (after host '/': no such vhost)")
    assert state.host_accepted() == "'127.0.0.1'"


def test_when_every_host_header_was_refused_the_next_round_starts_over():
    state = BrokerState(parse_broker_url("stomp://127.0.0.1:61613/prod"), 10_000)
    assert (state.host_refused("bad login"), state.host, state.refused) == (False, "prod", [])


def test_coilmq_is_a_known_defect_and_other_servers_are_not():
    defect = known_defect("coilmq/1.1.0")
    assert (defect.broker, defect.no_heartbeats, defect.max_unconfirmed_bytes) == ("coilmq/1.1.0", True, 3_500)
    assert [known_defect(s) for s in ("RabbitMQ/3.12.1", "ActiveMQ/5.17.6", None, "")] == [None] * 4


def test_coilmq_means_one_warning_and_no_heart_beats_sent_and_a_connection_remade(caplog):
    state = BrokerState(parse_broker_url("stomp://127.0.0.1:61613"), 10_000)
    assert state.heartbeats == (10_000, 10_000)
    assert state.check_defect("coilmq/1.1.0", "STOMP hub") is True
    assert (state.heartbeats, state.window) == ((0, 10_000), 3_500)
    assert state.check_defect("coilmq/1.1.0", "STOMP hub") is False  # known now: nothing to remake
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_the_urls_heartbeat_option_keeps_heart_beats_on_coilmq():
    state = BrokerState(parse_broker_url("stomp://127.0.0.1:61613?heartbeat=500"), 10_000)
    assert (state.check_defect("coilmq/1.1.0", "STOMP hub"), state.heartbeats, state.window) == (False, (500, 500), 3_500)


def test_another_broker_at_the_same_address_drops_the_workaround():
    state = BrokerState(parse_broker_url("stomp://127.0.0.1:61613"), 10_000)
    state.check_defect("coilmq/1.1.0", "STOMP hub")
    state.check_defect("RabbitMQ/3.12.1", "STOMP hub")
    assert (state.defect, state.heartbeats, state.window) == (None, (10_000, 10_000), None)


def test_the_summary_of_a_stomp_1_0_broker_says_messages_are_routed_by_destination():
    assert session_summary({"session": "wow"}, host="'/'", send_ms=0, expect_ms=0, tls=None) == (
        "no server header, STOMP 1.0 (messages routed by destination), no heart-beats (the broker offers none), host header '/'"
    )


def test_the_summary_of_a_tls_stomp_1_2_broker_names_its_server_heart_beats_and_tls():
    headers = {"version": "1.2", "server": "RabbitMQ/3.12.1", "heart-beat": "10000,10000"}
    assert session_summary(headers, host="'/'", send_ms=10_000, expect_ms=10_000, tls="TLS TLSv1.3") == (
        "server 'RabbitMQ/3.12.1', STOMP 1.2, heart-beats: sending every 10000 ms, expecting every 10000 ms, "
        "host header '/', TLS TLSv1.3"
    )

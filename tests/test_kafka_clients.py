"""The consumer's group timing: a joining member gets its partitions within about a heartbeat."""

from __future__ import annotations

from worker.kafka_clients import consumer_config
from worker.settings import Settings


def conf(**kafka) -> dict:
    return consumer_config(Settings(kafka=kafka), lambda _s: None, lambda _e: None)


def test_heartbeat_defaults_to_one_second_and_stays_under_a_third_of_the_session():
    assert conf()["heartbeat.interval.ms"] == 1000
    assert conf(heartbeat_interval_ms=2500)["heartbeat.interval.ms"] == 2500
    assert conf(session_timeout_ms=1500)["heartbeat.interval.ms"] == 500


def test_an_explicit_librdkafka_property_still_wins():
    assert conf(consumer_config={"heartbeat.interval.ms": "700"})["heartbeat.interval.ms"] == "700"

"""What the worker says about its brokers (issue 23, a broker's disk full): /readyz and embedstream_broker_up.

One broker of a cluster going away (its disk full, it shuts itself down) is a transport error on that broker's
connection, while the others keep serving: the worker carries on and must stay ready. Only no broker at all, or a
transaction call blocked on the broker, is "not ready" and embedstream_broker_up 0 (the metric
EmbedstreamBrokerUnreachable reads)."""

from __future__ import annotations

import time
from typing import Any
from unittest import mock

import orjson
import pytest
from confluent_kafka import KafkaError
from prometheus_client import CollectorRegistry

from worker.settings import Settings


class IdleConsumer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf


class IdleProducer:
    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf


@pytest.fixture
def pipe(small_model):
    import worker.pipeline as pipeline_module
    from worker.encoder import Encoder
    from worker.metrics import Metrics
    from worker.model import load_model
    from worker.probes import Health

    registry = CollectorRegistry()
    health = Health(60.0)
    with mock.patch.object(pipeline_module, "Consumer", IdleConsumer), \
            mock.patch.object(pipeline_module, "Producer", IdleProducer):
        p = pipeline_module.Pipeline(Settings(metrics={"enabled": False}), Encoder(load_model(small_model)), "m",
                                     Metrics(registry), health)
    p.registry = registry
    health.model_loaded = health.joined = True
    p._on_assign(p.consumer, [])  # joined: a broker answered
    return p


def broker_up(pipe: Any) -> float | None:
    return pipe.registry.get_sample_value("embedstream_broker_up")


def stats(*states: str) -> str:
    return orjson.dumps({"brokers": {f"b{i}": {"nodeid": i + 1, "state": s} for i, s in enumerate(states)}}).decode()


def test_one_broker_of_several_going_away_keeps_the_worker_ready(pipe):
    assert pipe.health.ready() == (True, "ok") and broker_up(pipe) == 1
    for code, text in ((KafkaError._TRANSPORT, "10.0.0.13:9092/3: Disconnected (after 8414ms in state UP)"),
                       (KafkaError._TRANSPORT, "10.0.0.13:9092/3: Connect to ipv4#10.0.0.13:9092 failed"),
                       (KafkaError._RESOLVE, "kafka-3:9092/3: Failed to resolve 'kafka-3:9092'")):
        pipe._on_error(KafkaError(code, text))
        assert pipe.health.ready() == (True, "ok"), text
        assert broker_up(pipe) == 1, text
    pipe._on_stats(stats("UP", "UP", "DOWN"))  # the statistics agree: two brokers serve
    assert pipe.health.ready() == (True, "ok") and broker_up(pipe) == 1


def test_no_broker_at_all_is_not_ready(pipe):
    pipe._on_error(KafkaError(KafkaError._ALL_BROKERS_DOWN, "3/3 brokers are down"))
    assert pipe.health.ready() == (False, "not ready: waiting for broker") and broker_up(pipe) == 0
    pipe._on_stats(stats("UP", "DOWN", "DOWN"))
    assert pipe.health.ready() == (True, "ok") and broker_up(pipe) == 1
    pipe._on_stats(stats("DOWN", "CONNECT", "DOWN"))  # the statistics alone say so too
    assert pipe.health.ready() == (False, "not ready: waiting for broker") and broker_up(pipe) == 0


def test_a_transaction_call_blocked_on_the_broker_reports_it_unreachable(pipe):
    """Exactly once, a broker gone mid-transaction blocks the loop inside librdkafka: no callback runs, so the
    last statistics (broker up) would stay on /metrics while /readyz says the broker is awaited."""
    pipe.health.waiting_since = time.monotonic()
    assert pipe.health.ready()[0] is True and broker_up(pipe) == 1  # a call in progress: not yet
    pipe.health.waiting_since = time.monotonic() - 6
    assert pipe.health.ready() == (False, "not ready: waiting for broker (a transaction call has not returned)")
    assert broker_up(pipe) == 0
    pipe.health.waiting_since = None
    assert pipe.health.ready() == (True, "ok") and broker_up(pipe) == 1

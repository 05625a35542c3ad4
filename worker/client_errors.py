"""librdkafka's error callback: what each client error means for the worker.

Every error is counted by kind. Only "all brokers down" marks the broker away (one broker's failed connection
is not an outage while others serve: the statistics say whether any broker is up). Authentication,
authorization and TLS verification failures stop the worker with EXIT_AUTH, fatal errors with EXIT_FATAL: no
retry fixes them. Everything else librdkafka retries by itself and is logged at most once per kind per 10 s, so
an outage does not flood the log.

Why a module of its own: these rules are the contract behind the exit codes and /readyz during outages, kept
apart from the loop that only reacts to the stop they request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import KafkaError

from worker.exits import EXIT_AUTH, EXIT_FATAL
from worker.metrics import Metrics
from worker.probes import Health

log = logging.getLogger("worker.pipeline")

AUTH_CODES = (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
              KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
              KafkaError.CLUSTER_AUTHORIZATION_FAILED)
LOG_EVERY_S = 10.0


class ClientErrors:
    """The `error_cb` of the worker's consumer and producer; `stop(code)` ends the loop with that exit code."""

    def __init__(self, metrics: Metrics, health: Health, stop: Callable[[int], None]) -> None:
        self.metrics, self.health, self.stop = metrics, health, stop
        self._last_log: dict[str, float] = {}

    def __call__(self, err: KafkaError) -> None:
        kind = err.name().lower().lstrip("_") if err.name() else "unknown"
        self.metrics.kafka_errors.labels(kind).inc()
        # Not _TRANSPORT or _RESOLVE: those are one broker's connection (a cluster node gone, its disk full), while
        # the others may serve; the statistics tell whether any broker is UP (issue 23: /readyz flapped to 503).
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.health.broker_up = False
        if err.code() in AUTH_CODES or (err.code() == KafkaError._SSL and "certificate verify failed" in err.str()):
            # (a CA that does not sign the broker: no retry will fix it either)
            log.error("authentication, authorization or TLS verification failed; check the SASL/SSL settings",
                      extra={"error": err.str(), "code": kind})
            self.stop(EXIT_AUTH)
            return
        if err.fatal():
            log.error("fatal client error; stopping", extra={"error": err.str()})
            self.stop(EXIT_FATAL)
            return
        now = time.monotonic()
        if now - self._last_log.get(kind, 0.0) > LOG_EVERY_S:
            self._last_log[kind] = now
            log.warning("kafka client error (librdkafka retries with back-off)",
                        extra={"error": err.str(), "code": kind})

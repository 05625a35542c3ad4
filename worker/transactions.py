"""Exactly-once: one Kafka transaction per batch holding its outputs, dead letters and input offsets.

Why a module of its own: the transaction protocol (init with zombie fencing, begin, send offsets, commit
with retries, abort and rewind, and a watchdog for a librdkafka call that never returns) is where
exactly-once succeeds or fails; the loop only begins a transaction and asks to commit a batch.
"""

from __future__ import annotations

import logging
import threading
import time
from enum import Enum

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from worker.exits import force_exit
from worker.kafka_clients import transactional_id
from worker.metrics import Metrics
from worker.offsets import PendingBatch, account
from worker.probes import Health
from worker.settings import Settings

log = logging.getLogger(__name__)


class Outcome(Enum):
    COMMITTED = "committed"
    ABORTED = "aborted"  # the consumer was rewound: the batch will be processed again
    FATAL = "fatal"  # fenced by a newer instance or an unrecoverable error: the worker must stop


class Transactions:
    """Transactions of one producer, committing the offsets of one consumer's group."""

    def __init__(self, settings: Settings, producer: Producer, consumer: Consumer, metrics: Metrics,
                 health: Health, assigned: set[tuple[str, int]]) -> None:
        self.s = settings
        self.producer = producer
        self.consumer = consumer
        self.metrics = metrics
        self.health = health
        self.assigned = assigned  # the loop's live assignment: a rewind seeks only partitions still owned

    def init(self, stop_event: threading.Event) -> None:
        """Register the transactional id (fencing any zombie with the same id); retried while the broker
        is unreachable."""
        while not stop_event.is_set():
            try:
                self.producer.init_transactions(30)
                log.info("exactly-once: transactions initialised",
                         extra={"transactional_id": transactional_id(self.s)})
                return
            except KafkaException as e:
                if not e.args[0].retriable():
                    raise
                log.warning("init_transactions retrying", extra={"error": str(e)})

    def begin(self) -> None:
        self.producer.begin_transaction()

    def commit(self, batch: PendingBatch, where: list[tuple[str, int, int]]) -> Outcome:
        """Commit the batch's outputs with its input offsets atomically; on an abortable error, abort
        and rewind the consumer to the batch's first offsets so that it is processed again."""
        t0 = time.perf_counter()
        timeout = min(self.s.shutdown_grace_s, 10.0)
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
        # librdkafka 2.16 can block in send_offsets_to_transaction past its timeout when the broker goes away
        # (and then no Python code, not even the SIGTERM handler, runs): past the deadline, exit so that a
        # restart (the supervisor's or Kubernetes') resumes from the last committed transaction.
        watchdog = threading.Timer(2 * timeout + 10.0, force_exit,
                                   args=("a transaction call did not return; exiting so that a restart resumes",))
        watchdog.daemon = True
        watchdog.start()
        self.health.waiting_since = time.monotonic()
        try:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), timeout)
            while True:
                try:
                    self.producer.commit_transaction(timeout)
                    break
                except KafkaException as e:
                    if not e.args[0].retriable():
                        raise
                    log.warning("transaction commit retrying", extra={"error": str(e)})
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.txn_requires_abort():
                log.warning("transaction aborted; the batch will be processed again", extra={"error": err.str()})
                self.metrics.kafka_errors.labels("transaction_aborted").inc()
                if not self._abort(timeout, deadline=time.monotonic() + 2 * timeout):
                    return Outcome.FATAL
                self._rewind(where)
                return Outcome.ABORTED
            log.error("transaction failed fatally (fenced by a newer instance?); stopping", extra={"error": err.str()})
            return Outcome.FATAL
        finally:
            watchdog.cancel()
            self.health.waiting_since = None
        self.producer.poll(0)
        batch.done_at = time.perf_counter()
        account(self.metrics, batch)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)
        return Outcome.COMMITTED

    def _abort(self, timeout: float, deadline: float) -> bool:
        """Abort the transaction, retrying while librdkafka says a retry may succeed: the abort first waits
        for the outputs in flight, and towards a broker cut off from us they take longer than one timeout
        (a clean-clone CI run saw "256 message(s) remaining"). Past `deadline` (before the watchdog fires)
        give up: the caller stops the process and a restart resumes from the last committed transaction."""
        while True:
            try:
                self.producer.abort_transaction(max(0.1, min(timeout, deadline - time.monotonic())))
                return True
            except KafkaException as e:
                err: KafkaError = e.args[0]
                if not err.retriable() or time.monotonic() >= deadline:
                    log.error("transaction abort failed; stopping so that a restart resumes from the last "
                              "committed transaction", extra={"error": err.str()})
                    return False
                log.warning("transaction abort retrying", extra={"error": err.str()})
                self.producer.poll(0)  # serve the delivery reports of the purged outputs

    def _rewind(self, where: list[tuple[str, int, int]]) -> None:
        first: dict[tuple[str, int], int] = {}
        for t, p, o in where:
            first[(t, p)] = min(o, first.get((t, p), o))
        for (t, p), o in first.items():
            if (t, p) in self.assigned:
                self.consumer.seek(TopicPartition(t, p, o))

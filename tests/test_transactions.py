"""Exactly-once's abort, offline: librdkafka's abort waits for the outputs in flight, and towards a broker cut
off from the worker it times out with a retriable error ("256 message(s) remaining", a clean-clone CI run).
That error used to escape the loop and be reported as rejected settings, which stops the supervisor for good;
now the abort is retried, and past its deadline the process stops with EXIT_FATAL so that a restart resumes.

The producer here is a stand-in that raises the errors librdkafka raises: the protocol against a real broker
is tested in tests/integration/test_exactly_once.py and tests/cluster/test_partitions.py."""

from __future__ import annotations

import numpy as np
from confluent_kafka import KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from worker.metrics import Metrics
from worker.offsets import PendingBatch
from worker.probes import Health
from worker.settings import Settings
from worker.transactions import Outcome, Transactions


def abortable() -> KafkaException:
    return KafkaException(KafkaError(KafkaError.NOT_COORDINATOR, "Failed to commit offsets to transaction",
                                     txn_requires_abort=True))


def timed_out() -> KafkaException:
    return KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to flush all outstanding messages within "
                                     "the transaction timeout: 256 message(s) remaining", retriable=True))


class Producer:
    def __init__(self, abort_errors: list[KafkaException]) -> None:
        self.abort_errors = abort_errors
        self.aborts = 0
        self.polls = 0

    def send_offsets_to_transaction(self, *args: object) -> None:
        raise abortable()

    def abort_transaction(self, timeout: float) -> None:
        self.aborts += 1
        if self.abort_errors:
            raise self.abort_errors.pop(0)

    def poll(self, timeout: float) -> int:
        self.polls += 1
        return 0


class Consumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[str, int, int]] = []

    def consumer_group_metadata(self) -> object:
        return object()

    def seek(self, tp: object) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))  # type: ignore[attr-defined]


def transactions(producer: Producer, consumer: Consumer, grace_s: float = 1.0) -> Transactions:
    s = Settings(input_topic="in", output_topic="out", shutdown_grace_s=grace_s)
    return Transactions(s, producer, consumer, Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                        Health(30.0), {("in", 0)})


def batch() -> PendingBatch:
    return PendingBatch(outstanding=0, next_offsets={("in", 0): 12}, counts={("in", 0): 2},
                        timestamps_ms=np.zeros(2), produced=0, bytes_out=0)


def test_abort_that_times_out_is_retried_then_the_batch_is_rewound():
    p, c = Producer([timed_out(), timed_out()]), Consumer()
    assert transactions(p, c).commit(batch(), [("in", 0, 10), ("in", 0, 11)]) is Outcome.ABORTED
    assert p.aborts == 3 and p.polls >= 2
    assert c.seeks == [("in", 0, 10)]


def test_abort_still_failing_at_its_deadline_stops_the_process_instead_of_raising():
    p, c = Producer([timed_out() for _ in range(10_000)]), Consumer()
    assert transactions(p, c, grace_s=0.05).commit(batch(), [("in", 0, 10)]) is Outcome.FATAL
    assert c.seeks == []  # not rewound: the restart resumes from the last committed transaction


def test_abort_with_a_fatal_error_stops_the_process():
    fatal = KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True))
    p, c = Producer([fatal]), Consumer()
    assert transactions(p, c).commit(batch(), [("in", 0, 10)]) is Outcome.FATAL
    assert p.aborts == 1


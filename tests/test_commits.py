"""The at-least-once commit bookkeeping (worker.commits), offline: what no confirmed commit covers is counted
per partition, commits go out every interval or early near the cap, a failed commit is sent again, and the
loop is told to stop consuming at the cap until a commit is confirmed. The consumer here records calls only;
the real broker holds the same rules in tests/cluster (the group coordinator isolated) and tests/faults."""

from __future__ import annotations

import time

import numpy as np
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from prometheus_client import CollectorRegistry

from worker.commits import Commits
from worker.metrics import Metrics
from worker.offsets import CommitLedger, PendingBatch

T = "texts"


class RecordingConsumer:
    """Stores and commits nothing; remembers what it was asked, answers a synchronous commit with the stored
    offsets (as librdkafka does), or raises `fail_with`."""

    def __init__(self) -> None:
        self.stored: dict[tuple[str, int], int] = {}
        self.commits: list[bool] = []
        self.fail_with: KafkaError | None = None

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        self.stored.update({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def commit(self, asynchronous: bool = True) -> list[TopicPartition] | None:
        self.commits.append(asynchronous)
        if self.fail_with is not None:
            raise KafkaException(self.fail_with)
        return None if asynchronous else self.stored_partitions()

    def stored_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p, o) for (t, p), o in self.stored.items()]


def batch(part: int, first: int, n: int) -> PendingBatch:
    return PendingBatch(outstanding=0, next_offsets={(T, part): first + n}, counts={(T, part): n},
                        timestamps_ms=np.zeros(n, np.int64), produced=n, bytes_out=0)


def commits(interval_ms: int = 60_000, cap: int = 100) -> tuple[Commits, RecordingConsumer, Metrics]:
    metrics = Metrics(CollectorRegistry())
    c = Commits(interval_ms, cap, metrics)
    consumer = RecordingConsumer()
    c.consumer = consumer  # type: ignore[assignment]
    return c, consumer, metrics


def gauge(metrics: Metrics) -> float:
    return metrics.uncommitted._value.get()  # type: ignore[attr-defined]


def test_ledger_counts_stores_until_a_commit_sent_after_them_is_confirmed():
    ledger = CommitLedger()
    ledger.stored((T, 0), 10)
    first = ledger.seq
    ledger.stored((T, 0), 5)
    ledger.stored((T, 1), 7)
    assert ledger.count == 22
    ledger.committed((T, 0), first)  # a commit sent after the first store only
    assert ledger.count == 12
    ledger.committed((T, 0), ledger.seq)
    ledger.committed((T, 9), ledger.seq)  # a partition with nothing open
    assert ledger.count == 7 and ledger.parts == [(T, 1)]
    ledger.forget({(T, 1)})
    assert ledger.count == 0


def test_stores_only_owned_partitions_and_counts_their_messages():
    c, consumer, metrics = commits()
    c.store([batch(0, 0, 30), batch(1, 0, 20), batch(0, 30, 10)], assigned={(T, 0)})
    assert consumer.stored == {(T, 0): 40}
    assert c.uncommitted == 40 and gauge(metrics) == 40


def test_commits_every_interval_and_early_at_half_the_cap():
    c, consumer, _ = commits(interval_ms=60_000, cap=100)
    c.store([batch(0, 0, 10)], {(T, 0)})
    c.due()
    assert consumer.commits == [True]  # the first commit goes out at once (no earlier one)
    c.on_commit(None, consumer.stored_partitions())
    c.store([batch(0, 10, 20)], {(T, 0)})
    c.due()
    assert consumer.commits == [True]  # within the interval, 20 < half the cap: wait
    c.store([batch(0, 30, 30)], {(T, 0)})
    c.due()
    assert consumer.commits == [True, True]  # 50 >= half of 100: early
    c.store([batch(0, 60, 10)], {(T, 0)})
    c.due()
    assert consumer.commits == [True, True]  # an early commit is in flight: not another one
    c.on_commit(None, [TopicPartition(T, 0, 60)])
    assert c.uncommitted == 10


def test_a_failed_commit_is_sent_again_and_the_cap_stops_consumption_until_one_is_confirmed():
    c, consumer, metrics = commits(interval_ms=50, cap=100)
    c.store([batch(0, 0, 60)], {(T, 0)})
    c.due()
    c.on_commit(KafkaError(KafkaError.REQUEST_TIMED_OUT), consumer.stored_partitions())
    assert c.uncommitted == 60 and not c.blocked()
    assert metrics.commit_failures._value.get() == 1  # type: ignore[attr-defined]
    c.store([batch(0, 60, 40)], {(T, 0)})
    assert c.blocked()  # 100 acknowledged inputs await a commit: consume nothing more
    c.due()
    assert consumer.commits == [True, True]  # sent again (early: the failed one is no longer in flight)
    c.on_commit(KafkaError(KafkaError.NOT_COORDINATOR), [])
    time.sleep(0.06)
    c.due()
    assert len(consumer.commits) == 3  # and again, every interval, while they fail
    c.on_commit(None, consumer.stored_partitions())
    assert c.uncommitted == 0 and not c.blocked() and gauge(metrics) == 0


def test_synchronous_commit_is_confirmed_on_return_and_nothing_stored_is_no_failure():
    c, consumer, metrics = commits()
    c.store([batch(2, 0, 5)], {(T, 2)})
    c.commit()
    assert consumer.commits == [False] and c.uncommitted == 0
    consumer.fail_with = KafkaError(KafkaError._NO_OFFSET)
    c.commit()
    assert metrics.commit_failures._value.get() == 0  # type: ignore[attr-defined]
    consumer.fail_with = KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE)
    c.store([batch(2, 5, 5)], {(T, 2)})
    c.commit()
    assert c.uncommitted == 5 and metrics.commit_failures._value.get() == 1  # type: ignore[attr-defined]


def test_revoked_partitions_leave_the_count():
    c, _, metrics = commits(cap=10)
    c.store([batch(0, 0, 6), batch(1, 0, 6)], {(T, 0), (T, 1)})
    assert c.blocked()
    c.forget({(T, 1)})
    assert c.uncommitted == 6 and not c.blocked() and gauge(metrics) == 6


def test_no_cap_never_blocks():
    c, _, _ = commits(cap=0)
    c.store([batch(0, 0, 1_000_000)], {(T, 0)})
    assert not c.blocked()


def test_a_confirmed_commit_releases_every_earlier_store_whatever_its_offset():
    """A clean-clone CI run hung here: after a lost session, an output batch of the old assignment was
    acknowledged and stored (offset 3,000) behind the new assignment's stores (re-read from 2,500); commits of
    the lower stored offset never covered it, the ledger stayed at the cap and consumption stayed paused.
    Confirmation now goes by store order, not offsets (and the loop no longer stores a past assignment's
    offsets at all)."""
    c, consumer, _ = commits(cap=100)
    c.store([batch(0, 2_900, 100)], {(T, 0)})  # next offset 3,000
    c.store([batch(0, 2_500, 100)], {(T, 0)})  # next offset 2,600: librdkafka now holds 2,600
    assert c.blocked()
    c.due()
    c.on_commit(None, consumer.stored_partitions())  # committed 2,600
    assert c.uncommitted == 0 and not c.blocked()


def test_partitions_a_commit_does_not_name_are_not_left_open():
    c, _, _ = commits(cap=100)
    c.store([batch(0, 0, 60), batch(1, 0, 60)], {(T, 0), (T, 1)})
    c.due()
    c.on_commit(None, [TopicPartition(T, 0, 60)])  # nothing new stored for partition 1: not in the request
    assert c.uncommitted == 0
    c.store([batch(0, 60, 10)], {(T, 0)})
    c.commit(asynchronous=True)
    c.on_commit(KafkaError(KafkaError._NO_OFFSET), [])  # nothing stored at all: nothing can wait for it
    assert c.uncommitted == 0

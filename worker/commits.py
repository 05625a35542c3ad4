"""At-least-once offset commits: store acknowledged offsets, commit them, confirm each commit, bound the replay.

Why a module of its own: what a rebalance, a lost session or a crash makes the group re-read is exactly the
acknowledged work that no successful commit covers. Stored offsets are committed asynchronously every
`commit_interval_ms`, and early once half of `max_uncommitted_messages` is waiting; every commit's outcome
comes back through `on_commit`. A commit that fails (the group coordinator moving, or cut off from its
cluster: it still answers heartbeats but cannot write offsets) is retried at the next interval, and once
`max_uncommitted_messages` acknowledged inputs wait for one, the loop stops consuming until a commit is
confirmed. So a re-read repeats at most `max_uncommitted_messages` acknowledged inputs plus the batches in
flight (`max_in_flight_batches` x `max_messages`), however long commits fail.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from worker.metrics import Metrics
from worker.offsets import CommitLedger, PendingBatch

log = logging.getLogger(__name__)


class Commits:
    """The offsets of one at-least-once consumer: store, commit, confirm, and whether to stop consuming."""

    def __init__(self, interval_ms: int, max_uncommitted: int, metrics: Metrics) -> None:
        self.interval_s = interval_ms / 1000.0
        self.cap = max_uncommitted  # 0: no cap
        self.metrics = metrics
        self.ledger = CommitLedger()
        self.consumer: Consumer | None = None  # set once the consumer exists (its config names on_commit)
        self._last = 0.0
        self._waiting = False  # stored offsets that no commit has been sent for yet
        self._sent: deque[int] = deque()  # per asynchronous commit not yet confirmed: the last store it covers
        self._sync = False  # inside a synchronous commit
        self._last_failure_log = 0.0

    @property
    def uncommitted(self) -> int:
        return self.ledger.count

    def blocked(self) -> bool:
        """True while the acknowledged inputs awaiting a commit reach the cap: consume nothing more."""
        return self.cap > 0 and self.ledger.count >= self.cap

    def store(self, batches: Iterable[PendingBatch], assigned: set[tuple[str, int]]) -> None:
        """Store the next offsets of fully acknowledged batches (in consumption order) for owned partitions."""
        offsets: dict[tuple[str, int], int] = {}
        counts: dict[tuple[str, int], int] = {}
        for b in batches:
            offsets.update(b.next_offsets)
            for part in b.next_offsets:
                counts[part] = counts.get(part, 0) + b.counts.get(part, 0)
        owned = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in assigned]
        if not owned:
            return
        assert self.consumer is not None
        try:
            self.consumer.store_offsets(offsets=owned)
        except KafkaException as e:  # a partition revoked in between: its new owner re-reads
            log.debug("store_offsets failed", extra={"error": str(e)})
            return
        for tp in owned:
            self.ledger.stored((tp.topic, tp.partition), counts[(tp.topic, tp.partition)])
        self._waiting = True
        self.metrics.uncommitted.set(self.ledger.count)

    def due(self) -> None:
        """Commit (async) what is stored when the interval has passed, or early when half the cap waits."""
        if not self._waiting:
            return
        early = self.cap > 0 and self.ledger.count * 2 >= self.cap and not self._sent
        now = time.monotonic()
        if early or now - self._last >= self.interval_s:
            self._last = now
            self.commit(asynchronous=True)

    def commit(self, asynchronous: bool = False) -> None:
        """Commit the stored offsets; a synchronous commit (revoke, shutdown) is confirmed on return."""
        assert self.consumer is not None
        t0 = time.perf_counter()
        self._waiting = False
        upto = self.ledger.seq  # what is stored now is what this commit sends
        try:
            if asynchronous:
                self.consumer.commit(asynchronous=True)
                self._sent.append(upto)
            else:
                self._sync = True  # librdkafka also calls on_commit from inside a synchronous commit
                try:
                    parts = self.consumer.commit(asynchronous=False)
                finally:
                    self._sync = False
                self._confirmed(parts or [], upto)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET:
                self._confirmed([], upto)  # nothing stored to send: nothing of ours awaits it
            else:
                self._failed(str(e))
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)

    def on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's outcome of a commit (served by consume/poll on the loop thread)."""
        if self._sync:
            return  # the synchronous commit's own return value (or exception) says the same
        upto = self._sent.popleft() if self._sent else 0
        if err is not None and err.code() != KafkaError._NO_OFFSET:
            self._failed(err.str())
            return
        self._confirmed(partitions if err is None else [], upto)

    def forget(self, parts: set[tuple[str, int]]) -> None:
        """Partitions revoked or lost: their replay is their next owner's."""
        self.ledger.forget(parts)
        self.metrics.uncommitted.set(self.ledger.count)

    def _confirmed(self, partitions: list[TopicPartition], upto: int) -> None:
        """A commit that covered the stores up to number `upto` came back. Partitions it names with an error
        stay open; the others are committed: named without error, or not named (nothing new was stored for them
        that librdkafka could send, so nothing of theirs can wait for a later commit)."""
        failed = [f"{p.topic}[{p.partition}]: {p.error.str()}" for p in partitions if p.error is not None]
        errors = {(p.topic, p.partition) for p in partitions if p.error is not None}
        for part in self.ledger.parts:
            if part not in errors:
                self.ledger.committed(part, upto)
        self.metrics.uncommitted.set(self.ledger.count)
        if failed:
            self._failed("; ".join(failed[:4]))

    def _failed(self, why: str) -> None:
        self._waiting = True  # sent again at the next interval, also while consumption is paused
        self.metrics.commit_failures.inc()
        now = time.monotonic()
        if now - self._last_failure_log > 10:  # a coordinator outage must not flood the log
            self._last_failure_log = now
            log.warning("offset commit failed; retrying every commit interval",
                        extra={"error": why[:500], "uncommitted": self.ledger.count, "cap": self.cap})

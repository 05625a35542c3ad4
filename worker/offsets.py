"""Which input offsets may be stored: a batch's, only once all its outputs and every earlier batch's are acknowledged.

Why a module of its own: this is the at-least-once guarantee. Batches complete out of order across output
partitions; offsets must still be released in consumption order, and never past an unacknowledged output.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import KafkaError, Message

from worker.metrics import Metrics, observe_many


@dataclass
class PendingBatch:
    """Outputs of one batch awaiting acknowledgement, and the input offsets they release."""

    outstanding: int
    next_offsets: dict[tuple[str, int], int]
    counts: dict[tuple[str, int], int]  # input messages per partition
    timestamps_ms: np.ndarray
    produced: int
    bytes_out: int
    started: float = field(default_factory=time.perf_counter)
    failed: list[str] = field(default_factory=list)
    done_at: float | None = None

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
        self.outstanding -= 1
        if self.outstanding == 0:
            self.done_at = time.perf_counter()


class OffsetTracker:
    """Releases input offsets in consumption order, each only after its batch is fully acknowledged."""

    def __init__(self) -> None:
        self.pending: deque[PendingBatch] = deque()

    def add(self, batch: PendingBatch) -> None:
        if batch.outstanding == 0:
            batch.done_at = time.perf_counter()
        self.pending.append(batch)

    def pop_done(self) -> list[PendingBatch]:
        """Batches at the front that are complete (successfully or not), in order."""
        out = []
        while self.pending and self.pending[0].done_at is not None:
            out.append(self.pending.popleft())
        return out

    @property
    def in_flight_messages(self) -> int:
        return sum(len(b.timestamps_ms) for b in self.pending)


class CommitLedger:
    """Acknowledged inputs that no successful commit covers yet: what a lost session, a rebalance or a crash
    would make the group re-read. The loop caps it (`kafka.max_uncommitted_messages`), so replay stays bounded
    also while commits fail (a group coordinator cut off from its cluster answers heartbeats but cannot write
    commits; the replay once grew with the length of that outage).

    Stores are numbered: a confirmed commit of a partition covers every store of it made before that commit
    was sent (a commit sends what is stored then), whatever the offsets, so no store can stay open for ever."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], deque[tuple[int, int]]] = {}  # (store number, messages) per store
        self.count = 0
        self.seq = 0  # the number of the last store

    def stored(self, part: tuple[str, int], messages: int) -> None:
        self.seq += 1
        self._open.setdefault(part, deque()).append((self.seq, messages))
        self.count += messages

    def committed(self, part: tuple[str, int], upto: int) -> None:
        """A commit of `part` sent after store number `upto` succeeded: those stores are safe."""
        q = self._open.get(part)
        while q and q[0][0] <= upto:
            self.count -= q.popleft()[1]

    def forget(self, parts: set[tuple[str, int]]) -> None:
        """Partitions this process no longer owns: their replay is the next owner's."""
        for part in parts:
            self.count -= sum(n for _, n in self._open.pop(part, ()))

    @property
    def parts(self) -> list[tuple[str, int]]:
        return [p for p, q in self._open.items() if q]


def account(metrics: Metrics, b: PendingBatch) -> None:
    """Metrics of a fully acknowledged (or committed) batch."""
    metrics.produced.inc(b.produced)
    metrics.bytes_out.inc(b.bytes_out)
    metrics.stage_seconds.labels("produce").observe((b.done_at or time.perf_counter()) - b.started)
    if len(b.timestamps_ms):
        ts = b.timestamps_ms[b.timestamps_ms > 0]
        observe_many(metrics.e2e_seconds, time.time() - ts / 1000.0)

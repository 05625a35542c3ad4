"""`produce_records`, the send loop of `embedstream produce` and of the broker tests, against a fake producer."""

from __future__ import annotations

import time
from typing import Any

from worker.produce import produce_records


class FakeProducer:
    """Raises BufferError on every `full_every`-th produce (a full local queue), once; records the calls."""

    def __init__(self, full_every: int = 0) -> None:
        self.full_every = full_every
        self.sent: list[tuple[str, Any, Any, Any]] = []
        self.polls: list[float] = []
        self._tries = 0

    def produce(self, topic: str, *, value: Any, key: Any, headers: Any, on_delivery: Any) -> None:
        self._tries += 1
        if self.full_every and self._tries % self.full_every == 0:
            raise BufferError("queue full")
        self.sent.append((topic, key, value, headers))
        on_delivery(None, None)

    def poll(self, timeout: float) -> int:
        self.polls.append(timeout)
        return 0


def test_sends_in_order_and_waits_out_a_full_queue():
    p = FakeProducer(full_every=3)
    delivered: list[None] = []
    records = [(f"k{i}".encode(), f"v{i}".encode(), [("h", b"x")] if i % 2 else None) for i in range(10)]
    n = produce_records(p, "t", records, on_delivery=lambda err, msg: delivered.append(err))
    assert n == 10 and len(delivered) == 10
    assert [(k, v, h) for _, k, v, h in p.sent] == records
    assert p.polls.count(0.1) == 4  # one wait per BufferError (tries 3, 6, 9, 12)
    assert p.polls.count(0) == 10  # delivery reports served after every record by default


def test_poll_every_and_rate_pace_the_load():
    p = FakeProducer()
    records = [(b"k", b"v", None)] * 40
    t0 = time.monotonic()
    n = produce_records(p, "t", records, rate=200.0, poll_every=10, on_delivery=lambda err, msg: None)
    assert n == 40 and p.polls == [0, 0, 0, 0]
    assert time.monotonic() - t0 >= 40 / 200 - 0.01  # the 40th record no earlier than 0.2 s after the start

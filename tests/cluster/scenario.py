"""One cluster fault scenario, start to reconciliation: fresh RF-3 topics, a paced background producer, a
read_committed tally of outputs and dead letters, worker settings, and the closing checks shared by every test
(0 missing, exactly-once 0 duplicates, at-least-once duplicates within the bound, lag back to 0 after healing)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clusterkit import Cluster, seconds_to_zero_lag
from faultkit import (
    REPLAY_BOUND,
    BackgroundProducer,
    Stream,
    Tally,
    header_index,
    note,
    output_index,
    reconcile,
    replay_env,
)

from kafkatools import WorkerProcess, unique

PARTS = 4


@dataclass
class Scenario:
    cluster: Cluster
    name: str
    mode: str
    n: int
    names: tuple[str, str, str]
    env: dict[str, str]
    stream: Stream
    producer: BackgroundProducer
    tally: Tally
    started: float
    healed: float | None = None
    workers: list[Any] = field(default_factory=list)

    @property
    def eos(self) -> bool:
        return self.mode == "exactly_once"

    @property
    def group(self) -> str:
        return self.env["EMBED_KAFKA__GROUP_ID"]

    def wait_seen(self, count: int, timeout: float = 120, alive: list[Any] | None = None) -> None:
        """Read outputs until `count` distinct inputs were seen."""
        assert self.tally.until_complete(timeout, settle=0, expected=count, alive=alive or []), \
            f"{self.name}: only {self.tally.seen} of {count} inputs seen within {timeout}s"

    def start_worker(self, log_path: Path, seen: int) -> WorkerProcess:
        """Start a worker and read outputs until `seen` distinct inputs were seen (the worker alive)."""
        w = WorkerProcess(self.env, log_path)
        self.workers.append(w)
        self.wait_seen(seen, alive=[w])
        return w

    def finish(self, faults: int, injected: str, alive: list[Any], notes: str = "") -> None:
        """Wait for the producer, the lag back to 0 and every output; stop the workers; reconcile and check."""
        b = self.cluster.bootstrap
        self.producer.wait(300)
        assert self.healed is not None, "the test never marked the healing"
        try:
            lag_s = seconds_to_zero_lag(b, self.group, self.names[0], PARTS, self.healed, timeout=240)
        except AssertionError:
            for w in alive:
                body = w.get("/metrics")[1].splitlines()
                note("worker metrics: " + "; ".join(x for x in body if x.startswith("embedstream_") and any(
                    k in x for k in ("in_flight", "assigned", "lag", "produced_total", "paused", "consumed"))))
                note(w.log_tail(10))
            raise
        complete = self.tally.until_complete(timeout=180, settle=3, alive=alive)
        codes = [w.stop() for w in alive]
        bound = 0 if self.eos else REPLAY_BOUND * faults
        r = reconcile(f"cluster {self.name} ({self.mode})", injected, self.tally, self.started,
                      outputs_topic=self.names[1], dlq_topic=self.names[2], bound=bound,
                      notes=f"lag 0 after {lag_s} s; {notes}".strip("; "))
        note(f"time from healing to lag 0: {lag_s} s")
        isr_s = self.cluster.wait_full_isr(list(self.names), timeout=180)
        note(f"ISR of 3 on every partition {isr_s:.0f} s after the checks")
        assert all(c == 0 for c in codes), [w.log_tail() for w in alive]
        assert complete and r.missing == 0, f"{r.missing} missing"
        assert self.tally.foreign == 0
        assert r.duplicates <= bound, f"{r.duplicates} duplicates > bound {bound}"
        assert lag_s <= 60, f"lag back to 0 only {lag_s} s after healing (target 60 s)"

    def close(self) -> None:
        self.producer.kill()
        for w in self.workers:
            w.kill()
        self.tally.close()


def start(cluster: Cluster, topics: Any, worker_env: Any, name: str, mode: str, n: int, seconds: float,
          **extra: str) -> Scenario:
    """Fresh topics and a producer writing n inputs over `seconds`; the tally reads from the start."""
    names = topics(PARTS)
    stream = Stream(n, keys=120, seed=17, prefix=f"c-{name}-{mode[:3]}-")
    env = worker_env(*names, EMBED_PROCESSING_GUARANTEE=mode, **{**replay_env(), **extra})
    if mode == "exactly_once" and "EMBED_KAFKA__TRANSACTIONAL_ID" not in extra:
        env["EMBED_KAFKA__TRANSACTIONAL_ID"] = unique(f"cluster-{name}")
    b = cluster.bootstrap
    tally = Tally(b, [names[1], names[2]], n, {names[1]: output_index(stream), names[2]: header_index()})
    producer = BackgroundProducer(b, names[0], stream, rate=n / seconds)
    return Scenario(cluster, name, mode, n, names, env, stream, producer, tally, time.monotonic())


def leader_of_both(cluster: Cluster, inp: str, out: str) -> int:
    """A node that leads at least one input and one output partition (else the input partition 0's leader)."""
    li, lo = cluster.leaders(inp), cluster.leaders(out)
    both = sorted(set(li.values()) & set(lo.values()) - {-1})
    node = both[0] if both else li[0]
    note(f"leaders: input {li}, output {lo}; the fault hits node {node}")
    return node


@contextmanager
def close_after(s: Scenario) -> Iterator[Scenario]:
    """Kill the producer and any worker still running, close the tally: also when the test fails."""
    try:
        yield s
    finally:
        s.close()

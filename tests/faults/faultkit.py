"""Fault-suite helpers: a deterministic keyed stream (produced in-process or by a producer subprocess that
runs alongside the worker), a collector that counts every record per input, reconciliation that prints
missing/duplicates, RSS sampling with a linear trend, and client quotas set with the broker's own tools.

Every test reconciles at the end: each input index must be seen at the outputs (or the dead letters) at
least once; `missing` counts inputs never seen, `duplicates` counts extra copies. Results are printed as
one `RECONCILE {...}` JSON line each (read them with `pytest -s`), appended to the file named by
EMBEDSTREAM_FAULTS_REPORT when set, and summarised as a table at the end of the pytest run.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Message

from kafkatools import produce, unique

# At least once, a fault that makes the group re-read (a restart, a lost session, a rebalance) repeats at most
# the acknowledged inputs that no commit covers (< UNCOMMITTED: the worker pauses there, however long commits
# fail: worker.commits) plus the unacknowledged batches in flight (<= IN_FLIGHT x BATCH). REPLAY_BOUND is that
# bound per fault, derived from the settings that replay_env() gives the worker.
BATCH, IN_FLIGHT, UNCOMMITTED = 256, 4, 256
REPLAY_BOUND = UNCOMMITTED + IN_FLIGHT * BATCH


def replay_env() -> dict[str, str]:
    """The worker settings REPLAY_BOUND is derived from."""
    return {"EMBED_BATCH__MAX_MESSAGES": str(BATCH), "EMBED_BATCH__MAX_IN_FLIGHT_BATCHES": str(IN_FLIGHT),
            "EMBED_KAFKA__MAX_UNCOMMITTED_MESSAGES": str(UNCOMMITTED)}

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LONG = os.environ.get("EMBEDSTREAM_FAULTS_LONG", "") == "1"
RESULTS: list[dict[str, Any]] = []
CHUNK = 4096  # texts are generated in chunks with their own seeds, so any slice of a stream is cheap


def pick(ci: Any, long: Any) -> Any:
    """The CI-size value, or the long one under EMBEDSTREAM_FAULTS_LONG=1."""
    return long if LONG else ci


# ---- the stream ----

@dataclass(frozen=True)
class Stream:
    """n keyed JSON messages; id = "<prefix>k<key>:<seq>" with key = i % keys and seq = i // keys, so an
    output id maps back to its input index i (and per-key order is checkable). Header `seq` = i."""

    n: int
    keys: int = 100
    seed: int = 0
    prefix: str = "f"

    def ident(self, i: int) -> str:
        return f"{self.prefix}k{i % self.keys}:{i // self.keys}"

    def index(self, ident: object) -> int:
        """The input index of an id; -1 for an id this stream never produced."""
        head = self.prefix + "k"
        if not isinstance(ident, str) or not ident.startswith(head):
            return -1
        try:
            key, seq = ident[len(head):].split(":")
            i = int(seq) * self.keys + int(key)
        except ValueError:
            return -1
        return i if 0 <= i < self.n and ident == self.ident(i) else -1

    def messages(self, start: int = 0, stop: int | None = None) -> Iterator[tuple[bytes, bytes, list]]:
        from modelfactory import sample_texts

        stop = self.n if stop is None else min(stop, self.n)
        i = start
        while i < stop:
            c = i // CHUNK
            texts = sample_texts(CHUNK, seed=self.seed * 1_000_003 + c)
            for j in range(i - c * CHUNK, min(CHUNK, stop - c * CHUNK)):
                idx = c * CHUNK + j
                yield (f"{self.prefix}k{idx % self.keys}".encode(),
                       orjson.dumps({"id": self.ident(idx), "text": texts[j], "seq": idx}),
                       [("seq", str(idx).encode())])
            i = (c + 1) * CHUNK

    def args(self) -> dict[str, Any]:
        return {"n": self.n, "keys": self.keys, "seed": self.seed, "prefix": self.prefix}


def output_index(stream: Stream) -> Callable[[Message], int]:
    """Index of a JSON output record: its `id` field (the output contract), mapped back to the input."""
    def index(m: Message) -> int:
        return stream.index(orjson.loads(m.value() or b"{}").get("id"))
    return index


def header_index(name: str = "seq") -> Callable[[Message], int]:
    """Index from an input header the worker passes through to outputs and dead letters."""
    def index(m: Message) -> int:
        for h in m.headers() or []:
            if h[0] == name and h[1] is not None:
                return int(h[1])
        return -1
    return index


# ---- producing ----

def produce_stream(bootstrap: str, topic: str, stream: Stream, start: int = 0, stop: int | None = None,
                   rate: float = 0.0) -> int:
    return produce(bootstrap, topic, stream.messages(start, stop), rate)


class BackgroundProducer:
    """Produces a slice of a stream from a subprocess (its own CPU, no GIL shared with the test), paced."""

    def __init__(self, bootstrap: str, topic: str, stream: Stream, start: int = 0, stop: int | None = None,
                 rate: float = 0.0) -> None:
        spec = {**stream.args(), "bootstrap": bootstrap, "topic": topic, "start": start, "stop": stop, "rate": rate}
        self.started = time.monotonic()
        path = os.pathsep.join(p for p in (str(ROOT / "tests" / "integration"), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__)), "produce", json.dumps(spec)], cwd=ROOT,
                                     env={**os.environ, "PYTHONPATH": path},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> float:
        """Wait for the producer to finish; its duration in seconds."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"producer still running after {timeout}s") from None
        assert self.proc.returncode == 0, out.decode(errors="replace")[-2000:]
        return time.monotonic() - self.started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# ---- collecting and reconciling ----

class Tally:
    """Reads topics from the beginning (read_committed) and counts records per input index."""

    def __init__(self, bootstrap: str, topics: list[str], n: int,
                 index: Callable[[Message], int] | dict[str, Callable[[Message], int]],
                 on_record: Callable[[Message, int], None] | None = None) -> None:
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": unique("tally"), "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "fetch.max.bytes": 67108864, "receive.message.max.bytes": 100000000,
            "reconnect.backoff.max.ms": 2000, "log_level": 2,  # no reconnect chatter during broker outages
        })
        self.consumer.subscribe(topics)
        self.counts = np.zeros(n, np.int32)
        self.per_topic: dict[str, int] = dict.fromkeys(topics, 0)
        self.foreign = 0
        self.index = index
        self.on_record = on_record

    @property
    def seen(self) -> int:
        return int(np.count_nonzero(self.counts))

    @property
    def total(self) -> int:
        return sum(self.per_topic.values())

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            for m in self.consumer.consume(2000, max(0.0, min(0.5, deadline - time.monotonic()))):
                if m.error():
                    continue
                topic = m.topic() or ""
                fn = self.index[topic] if isinstance(self.index, dict) else self.index
                i = fn(m)
                self.per_topic[topic] += 1
                if 0 <= i < len(self.counts):
                    self.counts[i] += 1
                else:
                    self.foreign += 1
                if self.on_record:
                    self.on_record(m, i)
            if time.monotonic() >= deadline:
                return

    def until_complete(self, timeout: float, settle: float = 2.0, expected: int | None = None,
                       alive: Sequence[Any] = ()) -> bool:
        """Read until every input was seen (or `expected` distinct inputs), then `settle` more seconds; fail at
        once if one of the `alive` worker processes exits meanwhile."""
        want = len(self.counts) if expected is None else expected
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert_alive(alive)
            self.poll(0.5)
            if self.seen >= want:
                self.poll(settle)
                return True
        return False

    def close(self, timeout: float = 15.0) -> None:
        """Close the consumer, giving up after `timeout`: librdkafka's close can block forever while the broker
        is away, and a call blocked in C cannot be interrupted (not even by pytest-timeout)."""
        closer = threading.Thread(target=self.consumer.close, daemon=True, name="tally-close")
        closer.start()
        closer.join(timeout)


def assert_alive(workers: Sequence[Any]) -> None:
    """Fail fast, and say so, when a worker the test still needs has exited (crashed, or killed from outside:
    the machine is shared, and nothing in the tests stops a worker except through WorkerProcess)."""
    for w in workers:
        code = w.proc.poll()
        if code is not None:
            raise AssertionError(f"worker pid {w.proc.pid} exited with {code} while the test still needed it "
                                 f"(not stopped by this test):\n{w.log_tail(15)}")


@dataclass
class Result:
    test: str
    injected: str
    inputs: int
    outputs: int
    dead_letters: int
    missing: int
    duplicates: int
    bound: int | None
    seconds: float
    notes: str = ""


def reconcile(test: str, injected: str, tally: Tally, started: float, *, outputs_topic: str | None = None,
              dlq_topic: str | None = None, bound: int | None = None, notes: str = "") -> Result:
    """Count missing inputs and duplicate copies, print them (and a few missing ids), record the result."""
    c = tally.counts
    missing = int(np.count_nonzero(c == 0))
    duplicates = int((c[c > 1] - 1).sum())
    outputs = tally.per_topic.get(outputs_topic, 0) if outputs_topic else tally.total
    dead = tally.per_topic.get(dlq_topic, 0) if dlq_topic else 0
    r = Result(test, injected, len(c), outputs, dead, missing, duplicates, bound, round(time.monotonic() - started, 1),
               notes)
    report(r)
    if missing:
        print(f"  missing input indexes (first 10): {np.flatnonzero(c == 0)[:10].tolist()}", flush=True)
    if tally.foreign:
        print(f"  {tally.foreign} records with an id this stream never produced", flush=True)
    return r


def report(r: Result) -> None:
    row = asdict(r)
    RESULTS.append(row)
    print("\nRECONCILE " + json.dumps(row), flush=True)
    path = os.environ.get("EMBEDSTREAM_FAULTS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({**row, "long": LONG, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}) + "\n")


def note(text: str) -> None:
    print(f"  {text}", flush=True)


# ---- memory ----

def rss_bytes(pid: int) -> int | None:
    """VmRSS of a process from /proc/<pid>/status, in bytes; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class RssSampler(threading.Thread):
    """Samples a process's RSS every `interval` seconds: samples = [(seconds since start, bytes)]."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name=f"rss-{pid}")
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._halt.is_set():
            rss = rss_bytes(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self.t0, rss))
            self._halt.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self._halt.set()
        self.join(5)
        return self.samples

    def between(self, t_from: float, t_to: float = float("inf")) -> list[tuple[float, int]]:
        return [(t, r) for t, r in self.samples if t_from <= t <= t_to]


def linear_trend(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """Least-squares slope (bytes/s) of RSS over time and the window length (s)."""
    t = np.array([s[0] for s in samples], dtype=np.float64)
    y = np.array([s[1] for s in samples], dtype=np.float64)
    slope = float(np.polyfit(t, y, 1)[0]) if len(t) >= 3 else 0.0
    return slope, float(t[-1] - t[0]) if len(t) else 0.0


MB = 1024 * 1024


# ---- client quotas with the broker's own ConfigCommand ----

def kafka_libs() -> Path:
    """The Kafka jars scripts/kafka-local.sh fetched (KAFKA_LOCAL_CACHE, else ~/.cache/embedstream/kafka-V)."""
    pom = (ROOT / "scripts" / "kafka" / "pom.xml").read_text()
    m = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    version = m.group(1) if m else ""
    base = os.environ.get("KAFKA_LOCAL_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedstream" / f"kafka-{version}")
    return Path(base) / "libs"


def set_producer_quota(bootstrap: str, client_id: str, byte_rate: int | None) -> None:
    """Throttle (byte_rate) or unthrottle (None) producers with this client.id, with kafka.admin.ConfigCommand."""
    libs = kafka_libs()
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise AssertionError(f"no Kafka jars in {libs}: run scripts/kafka-local.sh start once (needs Java and Maven)")
    change = (["--add-config", f"producer_byte_rate={byte_rate}"] if byte_rate is not None
              else ["--delete-config", "producer_byte_rate"])
    cmd = ["java", "-Dlog4j2.level=WARN", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", f"{libs}/*",
           "kafka.admin.ConfigCommand", "--bootstrap-server", bootstrap, "--alter", *change,
           "--entity-type", "clients", "--entity-name", client_id]
    r = subprocess.run(cmd, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]


def seeded(name: str) -> random.Random:
    """A random source per test, seeded from its name and EMBEDSTREAM_FAULTS_SEED (default 8)."""
    return random.Random(f"{os.environ.get('EMBEDSTREAM_FAULTS_SEED', '8')}:{name}")


def _main(argv: list[str]) -> int:
    """`faultkit.py produce '<json spec>'`: the BackgroundProducer's subprocess."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
    if len(argv) != 2 or argv[0] != "produce":
        print("usage: faultkit.py produce '<json>'", file=sys.stderr)
        return 2
    spec = json.loads(argv[1])
    stream = Stream(spec["n"], spec["keys"], spec["seed"], spec["prefix"])
    sent = produce_stream(spec["bootstrap"], spec["topic"], stream, spec["start"], spec["stop"], spec["rate"])
    print(json.dumps({"sent": sent}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))

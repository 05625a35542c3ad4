"""Broker plumbing shared by every broker test suite (integration, security, faults, cluster): topics,
producers, readers, committed offsets, HTTP probes and `python -m worker run` processes.

Why one module: each suite once carried its own copy of these; a change in how tests talk to Kafka is made here.
A `Client` is a bootstrap address or a full librdkafka client configuration (SASL/TLS brokers).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from worker.produce import produce_records
from worker.readiness import wait_until_ready

ROOT = Path(__file__).resolve().parents[2]

Client = str | dict[str, Any]


def client_config(client: Client) -> dict[str, Any]:
    return {"bootstrap.servers": client} if isinstance(client, str) else dict(client)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def create_topics(client: Client, names: Iterable[str], partitions: int = 1, config: dict[str, str] | None = None,
                  replication_factor: int = 1) -> None:
    """Create the topics and wait until metadata shows every partition with a leader."""
    names = list(names)
    admin = AdminClient(client_config(client))
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                                            config=config or {}) for n in names])
    for f in futures.values():
        f.result(60)
    deadline = time.time() + 30
    for n in names:
        while time.time() < deadline:
            md = admin.list_topics(n, timeout=10).topics.get(n)
            if md and not md.error and len(md.partitions) == partitions and all(
                    p.leader >= 0 for p in md.partitions.values()):
                break
            time.sleep(0.2)


def produce(client: Client, topic: str, messages: Iterable[tuple[bytes | None, bytes | None, list | None]],
            rate: float = 0.0, config: dict[str, Any] | None = None) -> int:
    """Produce (key, value, headers) idempotently, optionally paced at `rate` messages/s; wait for every
    acknowledgement."""
    p = Producer({**client_config(client), "enable.idempotence": True, "linger.ms": 20, "batch.size": 1_000_000,
                  "compression.type": "lz4", "reconnect.backoff.max.ms": 2000, "log_level": 2, **(config or {})})
    errors: list[str] = []

    def on_delivery(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(err.str())

    sent = produce_records(p, topic, messages, rate=rate, poll_every=256, on_delivery=on_delivery)
    left = p.flush(300)
    assert left == 0, f"{left} messages not acknowledged"
    assert not errors, errors[:3]
    return sent


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


@dataclass
class Collector:
    """Reads a topic from the beginning (read_committed), accumulating every record."""

    client: Client
    topic: str
    records: list[Record] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.consumer = Consumer({
            **client_config(self.client), "group.id": unique("collector"), "auto.offset.reset": "earliest",
            "enable.auto.commit": False, "isolation.level": "read_committed",
        })
        self.consumer.subscribe([self.topic])

    def poll_until(self, count: int, timeout: float = 120.0, settle: float = 0.0) -> list[Record]:
        """Collect until `count` records arrived (then `settle` more seconds), or the timeout passes."""
        deadline = time.time() + timeout
        reached_at = None
        while time.time() < deadline:
            for m in self.consumer.consume(1000, 0.5):
                if m.error():
                    continue
                self.records.append(Record(m.key(), m.value(), dict(m.headers() or []), m.partition(), m.offset()))
            if len(self.records) >= count:
                reached_at = reached_at or time.time()
                if time.time() - reached_at >= settle:
                    break
        return self.records

    def close(self) -> None:
        self.consumer.close()


def run_in_thread(pipeline: Any, client: Client, out: str, dlq: str, outputs: int, dead_letters: int,
                  settle: float = 1.0) -> tuple[list[Record], list[Record]]:
    """Run an in-process `Pipeline` on a thread until `outputs` records reached `out` and `dead_letters` reached
    `dlq` (or their timeouts passed), stop it, and check it stopped cleanly; (outputs, dead letters)."""
    import threading

    thread = threading.Thread(target=pipeline.run, daemon=True)
    out_c, dead_c = Collector(client, out), Collector(client, dlq)
    thread.start()
    try:
        records = out_c.poll_until(outputs, timeout=120, settle=settle)
        dead = dead_c.poll_until(dead_letters, timeout=60, settle=settle)
    finally:
        pipeline.stop()
        thread.join(30)
        out_c.close()
        dead_c.close()
    assert not thread.is_alive() and pipeline.exit_code == 0
    return records, dead


def collect(client: Client, topic: str, count: int, timeout: float = 120.0, settle: float = 1.0) -> list[Record]:
    """Read `topic` from the beginning until `count` records arrived (plus `settle` seconds) or the timeout."""
    c = Collector(client, topic)
    try:
        return c.poll_until(count, timeout, settle)
    finally:
        c.close()


def committed(client: Client, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets per partition (-1001 where none)."""
    c = Consumer({**client_config(client), "group.id": group, "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        c.close()


def committed_offsets(client: Client, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's committed offsets (transactional ones only once committed), none mapped to 0."""
    return {p: max(o, 0) for p, o in committed(client, group, topic, partitions).items()}


def http_get(url: str) -> tuple[int, str]:
    """(status, body) of a GET; status 0 when nothing answers, or the answer is cut off (a worker that stops by
    itself, e.g. exit 5 on a wrong password, can exit in the middle of a /metrics response)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (OSError, http.client.HTTPException) as e:
        return 0, str(e)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WorkerProcess:
    """`python -m worker run` as a child process with its own metrics port and log file; `prefix` runs it
    under another command (e.g. `ip netns exec <ns>`), `host` is where its metrics endpoint listens."""

    def __init__(self, env: dict[str, str], log_path: Path, processes: int | None = 1, host: str = "127.0.0.1",
                 prefix: Sequence[str] = ()) -> None:
        self.port = int(env.get("EMBED_METRICS__PORT") or free_port())
        self.host = host
        full = {**os.environ, **env, "EMBED_METRICS__PORT": str(self.port), "EMBED_METRICS__HOST": host,
                "EMBED_LOG__FORMAT": "json", "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self._log = open(log_path, "ab")
        args = [*prefix, sys.executable, "-m", "worker", "run"]
        if processes is not None:
            args += ["--processes", str(processes)]
        self.proc = subprocess.Popen(args, env=full, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def get(self, path: str) -> tuple[int, str]:
        return http_get(f"http://{self.host}:{self.port}{path}")

    def metric(self, name: str) -> float | None:
        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
        status, body = self.get("/metrics")
        if status != 200:
            return None
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        if wait_until_ready(f"http://{self.host}:{self.port}/readyz", timeout, request_timeout=5,
                            gave_up=lambda: self.proc.poll() is not None):
            return
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log_tail()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 40.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker did not stop within {timeout}s:\n{self.log_tail()}") from None
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def run_to_completion(env: dict[str, str], log_path: Path, collector: Collector, count: int,
                      timeout: float = 180.0, settle: float = 2.0) -> list[Record]:
    """Start a worker, collect until `count` outputs arrived (then `settle` seconds more) and stop it; it must
    exit 0. Returns everything the collector holds."""
    worker = WorkerProcess(env, log_path)
    try:
        records = collector.poll_until(count, timeout=timeout, settle=settle)
    finally:
        code = worker.stop()
    assert code == 0, worker.log_tail()
    return records


def json_messages(n: int, keys: int = 50, seed: int = 0, prefix: str = "") -> list[tuple[bytes, bytes, list]]:
    """n keyed JSON messages; id = "<key>:<seq>" so per-key order can be checked at the output."""
    from modelfactory import sample_texts

    texts = sample_texts(n, seed=seed)
    out = []
    for i, text in enumerate(texts):
        key = f"{prefix}k{i % keys}"
        ident = f"{key}:{i // keys}"
        out.append((key.encode(), orjson.dumps({"id": ident, "text": text, "extra": i}),
                    [("trace-id", f"t{i}".encode())]))
    return out


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def committed_total(client: Client, group: str, topic: str, partitions: int) -> int:
    try:
        return sum(committed_offsets(client, group, topic, partitions).values())
    except KafkaException:
        return 0


class LocalBroker:
    """A broker of a test's own (scripts/kafka-local.sh on its own port and data dir), to stop and restart;
    `log_dir` puts its log directory elsewhere (a small mount, for a disk-full test)."""

    def __init__(self, directory: Path, log_dir: Path | None = None) -> None:
        self.port = free_port_pair()
        self.directory = directory
        self.env = {**os.environ, "KAFKA_LOCAL_PORT": str(self.port), "KAFKA_LOCAL_DIR": str(directory)}
        if log_dir is not None:
            self.env["KAFKA_LOCAL_LOG_DIR"] = str(log_dir)
        self.bootstrap = f"127.0.0.1:{self.port}"

    def _script(self, action: str) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), action], env=self.env, check=True,
                       capture_output=True, timeout=180)

    def start(self) -> None:
        self._script("start")

    def stop(self) -> None:
        self._script("stop")


def free_port_pair() -> int:
    """A port p with p+1 free too (the controller listener)."""
    for _ in range(100):
        p = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 1))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")

"""`bench pipeline`'s harness: CPU and memory of the worker processes from /proc, and the broker side (topics,
pre-loading, output counts, a private broker when none is given).

Why a module of its own: the measurements and the broker plumbing are shared by every run (throughput,
latency, the naive baseline); `pipeline` keeps the runs and their report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]
CLK = os.sysconf("SC_CLK_TCK")


def progress(msg: str) -> None:
    print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)


# ---- process accounting ----

def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return 0.0


def children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out.extend(int(x) for x in (task / "children").read_text().split())
    except OSError:
        pass
    return out


class Sampler(threading.Thread):
    """Samples CPU, RSS and PSS of a worker and its children every 0.25 s."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop_event = threading.Event()
        self.peak: dict[int, dict[str, int]] = {}
        self.cpu: dict[int, float] = {}
        self.peak_total_pss = 0
        self.samples = 0

    def pids(self) -> list[int]:
        kids = children_of(self.pid)
        return [self.pid, *kids]

    def sample(self) -> None:
        from worker.metrics import read_private_memory, read_smaps_rollup

        self.samples += 1
        own = self.samples % 4 == 1  # the full smaps read costs ~20 ms a process: once a second, not every 0.25 s
        total_pss = 0
        for pid in self.pids():
            mem = read_smaps_rollup(pid)
            if not mem:
                continue
            peak = self.peak.setdefault(pid, {"rss": 0, "pss": 0, "private": 0})
            # private = the process's own memory, the model table's page cache left out (worker.metrics)
            peak["private"] = max(peak["private"], (read_private_memory(pid) or 0) if own else 0)
            peak["rss"] = max(peak["rss"], mem.get("Rss", 0))
            peak["pss"] = max(peak["pss"], mem.get("Pss", 0))
            total_pss += mem.get("Pss", 0)
            self.cpu[pid] = cpu_seconds(pid)
        self.peak_total_pss = max(self.peak_total_pss, total_pss)

    def total_cpu(self) -> float:
        self.sample()
        return sum(self.cpu.values())

    def run(self) -> None:
        while not self.stop_event.wait(0.25):
            self.sample()


# ---- broker helpers ----

def output_count(consumer: Any, topic: str, partitions: int) -> int:
    from confluent_kafka import TopicPartition

    total = 0
    for p in range(partitions):
        lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        total += hi - lo
    return total


def preload(bootstrap: str, topic: str, texts: list[str], label: str) -> dict[tuple[int, int], int]:
    """Produce every text keyed; returns {(partition, offset): CreateTime ms} from delivery reports."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1048576,
                  "compression.type": "lz4", "enable.idempotence": True})
    stamps: dict[tuple[int, int], int] = {}

    def report(err: Any, msg: Any) -> None:
        if err is None:
            stamps[(msg.partition(), msg.offset())] = msg.timestamp()[1]

    for i, text in enumerate(texts):
        while True:
            try:
                p.produce(topic, key=f"k{i % 1000}".encode(), value=orjson.dumps({"id": i, "text": text}),
                          on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
            progress(f"{label}: loading {i:,}/{len(texts):,}")
    p.flush(120)
    progress(f"{label}: loaded {len(texts):,}\n")
    return stamps


def make_topics(bootstrap: str, partitions: int, log_append_output: bool = False) -> tuple[str, str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    names = (f"bench-in-{tag}", f"bench-out-{tag}", f"bench-dlq-{tag}")
    out_cfg = {"message.timestamp.type": "LogAppendTime"} if log_append_output else {}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(names[0], partitions, 1), NewTopic(names[1], partitions, 1, config=out_cfg),
                              NewTopic(names[2], 1, 1)])
    for f in fs.values():
        f.result(30)
    time.sleep(1.0)
    return names


def delete_topics(bootstrap: str, names: list[str]) -> None:
    from confluent_kafka.admin import AdminClient

    try:
        for f in AdminClient({"bootstrap.servers": bootstrap}).delete_topics(names).values():
            f.result(30)
    except Exception:  # benchmark cleanup only
        pass


class PrivateBroker:
    """scripts/kafka-local.sh on a free port, for a benchmark run without a broker given."""

    def __init__(self) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.dir = tempfile.mkdtemp(prefix="bench-kafka-")
        self.env = {**os.environ, "KAFKA_LOCAL_PORT": str(self.port), "KAFKA_LOCAL_DIR": self.dir}

    def __enter__(self) -> str:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), "start"], env=self.env, check=True)
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["bash", str(ROOT / "scripts" / "kafka-local.sh"), "wipe"], env=self.env, check=False)

"""`bench pipeline`'s per-message split of a 1-process worker: where the CPU goes, and the bytes on the wire.

The worker counts the CPU time of its loop thread in each batch stage (`embedstream_stage_cpu_seconds_total`:
decode, encode, format, send, callbacks); the bench scrapes the counters from `/metrics` at the first output
and just before it stops the worker, and divides the difference by the messages in between.
The loop thread's own CPU and the client threads' CPU (librdkafka: compression, network) come from
`/proc/<pid>/task/*/stat`. Bytes on the wire: a consumer reads the whole output topic and reports
librdkafka's `rxbytes` (fetched, still compressed) per message.
"""

from __future__ import annotations

import os
import re
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson

CLK = os.sysconf("SC_CLK_TCK")
SPLIT_STAGES = ("decode", "encode", "format", "send", "callbacks")
_SUM = re.compile(r'^embedstream_stage_cpu_seconds_total\{stage="([a-z]+)"\} (\S+)$', re.M)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_stages(port: int) -> dict[str, float]:
    """Loop-thread CPU seconds spent so far in each stage, from the worker's /metrics."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {stage: float(v) for stage, v in _SUM.findall(text)}


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of a process, by thread id, with its kind: `main` (the loop thread),
    `rdk` (librdkafka's threads, named rdk:*) or `other` (the tokenizer's pool, the metrics server, the
    pooling kernel's compiler)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        kind = "main" if task.name == str(pid) else "rdk" if name.startswith("rdk:") else "other"
        out[int(task.name)] = (kind, (int(fields[11]) + int(fields[12])) / CLK)
    return out


def cpu_between(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]
                ) -> tuple[float, float, float]:
    """CPU seconds of the main, librdkafka and other threads between two `thread_cpu` samples, thread by
    thread: a thread that exited in between (the pooling compiler, a pool worker) drops out of both sides
    instead of making a total negative (a clean-clone CI run saw a negative `other_threads`); its CPU after
    the first sample is lost, an undercount bounded by that thread's life."""
    sums = {"main": 0.0, "rdk": 0.0, "other": 0.0}
    for tid, (kind, cpu) in after.items():
        sums[kind] += cpu - before.get(tid, (kind, 0.0))[1]
    return sums["main"], sums["rdk"], sums["other"]


def wire_bytes_per_message(bootstrap: str, topic: str, n: int, timeout_s: float = 120.0) -> float:
    """Fetched (compressed) bytes per record when a consumer reads the whole topic, protocol included."""
    from confluent_kafka import Consumer

    last: dict[str, Any] = {}

    def on_stats(raw: str) -> None:
        last.update(orjson.loads(raw))

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-wire-{uuid.uuid4().hex[:6]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "statistics.interval.ms": 500,
                  "stats_cb": on_stats})
    c.subscribe([topic])
    seen = 0
    deadline = time.time() + timeout_s
    while seen < n and time.time() < deadline:
        seen += sum(1 for m in c.consume(10_000, 0.5) if not m.error())
    last.clear()
    while not last and time.time() < deadline:  # one more report, after the last fetch
        c.poll(0.2)
    c.close()
    rx = sum(b.get("rxbytes", 0) for b in last.get("brokers", {}).values())
    return rx / max(seen, 1)


def split_per_message(stages: dict[str, float], main_cpu: float, rdk_cpu: float, other_cpu: float, n: int
                      ) -> dict[str, float]:
    """Microseconds of CPU per message: each stage, the rest of the loop thread (consume, offsets, metrics),
    librdkafka's threads (compression, fetch, network) and the other threads (the tokenizer's pool)."""
    out = {s: stages.get(s, 0.0) / n * 1e6 for s in SPLIT_STAGES}
    out["loop_other"] = max(0.0, main_cpu / n * 1e6 - sum(out.values()))
    out["librdkafka"] = rdk_cpu / n * 1e6
    out["other_threads"] = other_cpu / n * 1e6
    return out

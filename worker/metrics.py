"""Metric definitions: everything an on-call person asks of the worker, answerable from /metrics.

One prefix (`embedstream_`), base units, `_total` counters, histograms with buckets sized for this
workload (tens of microseconds to seconds). Label values that are known up front are created at start
so that rates read 0 rather than "no data". The registry is a parameter: tests pass a fresh one.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from worker import __version__

PREFIX = "embedstream"

# `_created` samples double the series count and no dashboard reads them.
disable_created_metrics()

DEAD_LETTER_REASONS = (
    "invalid_utf8",
    "invalid_json",
    "missing_text",
    "non_string_text",
    "null_value",
    "empty_text",
    "too_large",
    "encode_error",
)
STAGES = ("decode", "encode", "format", "send", "callbacks", "produce", "commit")
REBALANCE_EVENTS = ("assign", "revoke", "lost")

# 25 us .. 10 s: a batch stage on this workload spans a few hundred microseconds to a few hundred ms.
STAGE_BUCKETS = (
    0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)
# End to end includes batching wait and broker round trips: 1 ms .. 60 s.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
BATCH_TOKEN_BUCKETS = (10, 50, 100, 500, 1000, 5000, 10_000, 50_000, 100_000, 500_000, 1_000_000)


class Metrics:
    """All worker metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry, *, process_collectors: bool = False) -> None:
        self.registry = registry
        if process_collectors:
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, list(labels), registry=registry)

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
            return Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=registry)

        self.consumed = counter("messages_consumed_total", "Input messages taken from the input topic.")
        self.embedded = counter("messages_embedded_total", "Input messages turned into vectors.")
        self.produced = counter("messages_produced_total", "Output messages acknowledged by the broker.")
        self.dead_lettered = counter(
            "messages_dead_lettered_total", "Input messages written to the dead-letter topic.", ["reason"]
        )
        self.chunks = counter("chunks_embedded_total", "Chunks of long documents embedded (chunking on).")
        self.tokens = counter("tokens_encoded_total", "Tokens pooled by the encoder (after truncation).")
        self.bytes_in = counter("consumed_bytes_total", "Bytes of input message values consumed.")
        self.bytes_out = counter("produced_bytes_total", "Bytes of output message values acknowledged.")
        self.rebalances = counter("rebalances_total", "Consumer group rebalance callbacks.", ["event"])
        self.kafka_errors = counter("kafka_errors_total", "Client errors reported by librdkafka.", ["kind"])

        self.batch_size = Histogram(
            f"{PREFIX}_batch_size_messages", "Messages per micro-batch.", buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            f"{PREFIX}_batch_tokens", "Tokens per micro-batch.", buckets=BATCH_TOKEN_BUCKETS, registry=registry
        )
        self.stage_seconds = Histogram(
            f"{PREFIX}_stage_duration_seconds",
            "Time per batch in each stage: decode, encode (tokenize+pool), format (output values), send (headers and "
            "produce calls), callbacks (delivery reports served), produce (until acknowledged), commit.",
            ["stage"], buckets=STAGE_BUCKETS, registry=registry,
        )
        self.stage_cpu = counter(
            "stage_cpu_seconds_total", "CPU time of the processing loop's thread in each stage (decode, encode, "
            "format, send, callbacks); the client's own threads (compression, network) are not in it.", ["stage"]
        )
        self.e2e_seconds = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "Output acknowledged minus input message timestamp.", buckets=LATENCY_BUCKETS, registry=registry,
        )

        self.lag = gauge("consumer_lag_messages", "Lag of each assigned partition.", ["topic", "partition"])
        self.lag_total = gauge("consumer_lag_sum_messages", "Lag summed over this process's partitions.")
        self.assigned = gauge("assigned_partitions", "Partitions assigned to this process.")
        self.paused = gauge("paused_partitions", "Partitions paused by backpressure.")
        self.producer_queue = gauge("producer_queue_messages", "Messages waiting in the producer queue.")
        self.in_flight = gauge("in_flight_messages", "Input messages consumed whose outputs are not yet acknowledged.")
        self.uncommitted = gauge(
            "uncommitted_messages", "Acknowledged input messages no successful offset commit covers yet (what a "
            "rebalance or crash would re-read); consumption pauses at kafka.max_uncommitted_messages."
        )
        self.commit_failures = counter(
            "commit_failures_total", "Offset commits that failed (retried every commit interval)."
        )
        self.broker_up = gauge("broker_up", "1 when the clients reach a broker, else 0.")
        self.ready = gauge("ready", "1 when /readyz answers ok.")
        self.last_progress = gauge(
            "last_progress_timestamp_seconds", "Unix time the processing loop last completed a step."
        )

        self.build_info = Info(f"{PREFIX}_build", "Worker build metadata.", registry=registry)
        self.model_info = Info(f"{PREFIX}_model", "The loaded model.", registry=registry)
        self.table_bytes = gauge(
            "model_table_bytes", "Size of the memory-mapped embedding table (shared between processes)."
        )
        self.private_bytes = gauge(
            "process_private_memory_bytes", "This process's own memory (private pages from smaps), the "
            "memory-mapped model table left out: its page cache is shared by every process and counted once."
        )
        self.pss_bytes = gauge("process_pss_bytes", "Proportional set size of this process, from smaps_rollup.")
        self.startup_seconds = gauge(
            "startup_seconds", "Seconds from start (the pod's first process; a restarted one's own) to first ready."
        )
        self.model_load_seconds = gauge(
            "model_load_seconds", "Seconds to load the model and build the encoder (once per pod with --processes K)."
        )

        self.cache_hits = counter("fastpath_cache_hits_total", "Fast-path piece cache hits.")
        self.cache_misses = counter("fastpath_cache_misses_total", "Fast-path piece cache misses.")
        self.cache_bytes = gauge("fastpath_cache_bytes", "Memory held by the fast-path piece cache.")
        self.cache_entries = gauge("fastpath_cache_entries", "Pieces held by the fast-path piece cache.")

        for reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(reason)
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for stage in STAGES[:5]:
            self.stage_cpu.labels(stage)
        for event in REBALANCE_EVENTS:
            self.rebalances.labels(event)
        self.set_build()

    def apply_stats(self, raw: str, assigned: set[tuple[str, int]]) -> tuple[bool, int] | None:
        """librdkafka's statistics JSON: set broker_up and the lag of the assigned partitions; (a broker is up, total
        lag), or None when the JSON does not parse."""
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        up = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0)
        self.broker_up.set(1 if up else 0)
        total = 0
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                part = int(pid)
                if part < 0 or (topic, part) not in assigned:
                    continue
                lag = p.get("consumer_lag_stored", -1)
                if lag is None or lag < 0:
                    lag = p.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    self.lag.labels(topic, str(part)).set(lag)
                    total += lag
        self.lag_total.set(total)
        return up, total

    def set_build(self, **extra: str) -> None:
        self.build_info.info({"version": __version__, "python": platform.python_version(), **extra})

    def set_model(self, *, name: str, dim: int, vocab_size: int, dtype: str, table_bytes: int, fast_path: str,
                  tokenizer: str = "tokenizers") -> None:
        self.model_info.info(
            {"model": name, "dim": str(dim), "vocab_size": str(vocab_size), "dtype": dtype, "fast_path": fast_path,
             "tokenizer": tokenizer}
        )
        self.table_bytes.set(table_bytes)

    def update_memory(self) -> None:
        """Refresh private/PSS memory from /proc (Linux); silently skipped elsewhere."""
        private = read_private_memory()
        if private is not None:
            self.private_bytes.set(private)
        mem = read_smaps_rollup()
        if mem:
            self.pss_bytes.set(mem.get("Pss", 0))


def observe_many(histogram: Histogram, values: np.ndarray) -> None:
    """Observe a whole batch of values at once: one bucket count per bucket instead of one call per value.

    Uses the client's per-bucket values (`_buckets`, `_sum`); tests check the result equals observe().
    """
    if values.size == 0:
        return
    upper = np.asarray(histogram._upper_bounds, dtype=np.float64)
    idx = np.searchsorted(upper, values, side="left")
    counts = np.bincount(idx, minlength=len(upper))
    for i in np.flatnonzero(counts):
        histogram._buckets[i].inc(float(counts[i]))
    histogram._sum.inc(float(values.sum()))


def process_start_time(pid: int | str = "self") -> float:
    """When a process started, as Unix time (Linux: /proc); now where unavailable."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return time.time()
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def read_private_memory(pid: int | str = "self") -> int | None:
    """A process's own memory in bytes: Private_Clean + Private_Dirty of every mapping except shared file
    mappings, None where /proc is unavailable.

    The memory-mapped model table is a shared file mapping: its pages are the page cache, one copy per node
    however many processes map the file, and reclaimable. smaps still calls such a page private while one
    process alone maps it, and dirty while a freshly written file awaits writeback: a gemma-like table written
    seconds before the worker started counted 207 MB of "Private_Dirty" in the child that read it (a clean-clone
    test run), none of it that child's. Anonymous memory (heaps, buffers, copy-on-write copies of the
    supervisor's pages) and private file pages (a library's data) are counted."""
    total = 0
    shared_file = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head, _, rest = line.partition(" ")
                if head.endswith(":"):
                    if not shared_file and head in ("Private_Clean:", "Private_Dirty:"):
                        total += int(rest.split()[0])
                else:  # a mapping's header: address perms offset device inode [path]
                    parts = line.split(None, 5)
                    shared_file = len(parts) == 6 and parts[1][3:4] == "s" and parts[5].startswith("/")
    except (OSError, ValueError):
        return None
    return total * 1024


def read_smaps_rollup(pid: int | str = "self") -> dict[str, int]:
    """Memory counters of a process in bytes (Pss, Rss, Private_*, Shared_*), {} where unavailable."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    except OSError:
        return {}
    return out

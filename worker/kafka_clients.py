"""librdkafka configuration of the worker's consumer and producer, and its transactional id.

Why a module of its own: every delivery and commit guarantee starts as a client property (manual offset
store, idempotence, acks=all, transaction timeout); reading them in one place shows what the loop relies on.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, TopicPartition

from worker.settings import ProcessingGuarantee, Settings


def consumer_config(s: Settings, on_stats: Callable[[str], None], on_error: Callable[[KafkaError], None],
                    on_commit: Callable[[KafkaError | None, list[TopicPartition]], None] | None = None
                    ) -> dict[str, Any]:
    k = s.kafka
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "group.id": k.group_id,
        "client.id": f"{k.client_id}-consumer",
        "partition.assignment.strategy": "cooperative-sticky",
        "auto.offset.reset": k.auto_offset_reset,
        "enable.auto.commit": False,  # we commit stored offsets ourselves: async per interval, sync on revoke
        "enable.auto.offset.store": False,
        "session.timeout.ms": k.session_timeout_ms,
        # librdkafka's 3 s default made a second process wait ~3 s for its partitions (docs/benchmarks.md)
        "heartbeat.interval.ms": min(k.heartbeat_interval_ms, k.session_timeout_ms // 3),
        "queued.max.messages.kbytes": s.batch.max_prefetch_kbytes,
        "fetch.max.bytes": max(s.input.max_bytes * 2, 52428800),
        "max.partition.fetch.bytes": max(s.input.max_bytes + 4096, 1048576),
        "statistics.interval.ms": s.metrics.statistics_interval_ms,
        "reconnect.backoff.max.ms": 5000,
        "error_cb": on_error,
        "stats_cb": on_stats,
        "logger": logging.getLogger("librdkafka.consumer"),
    }
    if on_commit is not None:  # every commit's outcome (worker.commits confirms them)
        conf["on_commit"] = on_commit
    if k.group_instance_id:
        conf["group.instance.id"] = k.group_instance_id
    conf.update(k.extra("consumer"))
    return conf


def producer_config(s: Settings, on_error: Callable[[KafkaError], None]) -> dict[str, Any]:
    """The producer's properties; in exactly-once mode with its transactional id, and a delivery timeout
    no longer than the transaction timeout."""
    k = s.kafka
    conf: dict[str, Any] = {
        "bootstrap.servers": k.bootstrap_servers,
        "client.id": f"{k.client_id}-producer",
        "enable.idempotence": True,  # retries keep per-partition order and add no duplicates
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1048576,
        "compression.type": s.output.compression,
        "queue.buffering.max.messages": 200000,
        # outputs awaiting acknowledgement, a bound on memory (worker.memory_budget): 64 MiB, room for two records
        "queue.buffering.max.kbytes": producer_queue_kbytes(s),
        "message.max.bytes": max(s.input.max_bytes * 2, 1048576),
        "delivery.timeout.ms": 300000,
        "reconnect.backoff.max.ms": 5000,
        "error_cb": on_error,
        "logger": logging.getLogger("librdkafka.producer"),
    }
    conf.update(k.extra("producer"))
    if s.processing_guarantee == ProcessingGuarantee.exactly_once:
        conf["transactional.id"] = transactional_id(s)
        conf.setdefault("transaction.timeout.ms", 60000)
        conf["delivery.timeout.ms"] = min(int(conf["delivery.timeout.ms"]), int(conf["transaction.timeout.ms"]))
    return conf


def producer_queue_kbytes(s: Settings) -> int:
    """The producer's queue.buffering.max.kbytes: 64 MiB, or two of the largest records where they are bigger."""
    return max(65536, 2 * max(s.input.max_bytes * 2, 1048576) // 1024)


def transactional_id(s: Settings) -> str:
    """Stable per process identity: a restarted process reuses it and fences its zombie."""
    if s.kafka.transactional_id:
        return s.kafka.transactional_id
    who = s.kafka.group_instance_id or socket.gethostname()
    return f"embedstream-{s.kafka.group_id}-{who}-{os.environ.get('EMBED_PROCESS_INDEX', '0')}"

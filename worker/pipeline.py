"""consume -> micro-batch -> decode -> encode -> produce -> store offsets, at least once.

One thread runs the loop. A batch is what one `consume(max_messages, max_wait)` call returns. Its
outputs and dead letters are produced asynchronously; an input offset is stored only when every output
of its batch and of every earlier batch is acknowledged (`OffsetTracker`); stored offsets are committed
asynchronously at most every `commit_interval_ms`. On revoke and on shutdown the producer is flushed and
the stored offsets are committed synchronously. A crash therefore repeats at most the unacknowledged
batches plus the acknowledged ones not yet committed (one commit interval's worth); it loses nothing.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.chunking import Chunker, document_vector
from worker.codecs import (
    Decoded,
    Headers,
    InputDecoder,
    OutputEncoder,
    OutputRecord,
    Reason,
    chunk_ident,
    dead_letter,
)
from worker.encoder import Encoded, Encoder
from worker.metrics import Metrics, observe_many
from worker.probes import Health
from worker.settings import ProcessingGuarantee, Settings

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DELIVERY_FAILED = 3
EXIT_FATAL = 4
EXIT_AUTH = 5


@dataclass
class PendingBatch:
    """Outputs of one batch awaiting acknowledgement, and the input offsets they release."""

    outstanding: int
    next_offsets: dict[tuple[str, int], int]
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


def consumer_config(s: Settings, on_stats: Callable[[str], None], on_error: Callable[[KafkaError], None]
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
        "queued.max.messages.kbytes": s.batch.max_prefetch_kbytes,
        "fetch.max.bytes": max(s.input.max_bytes * 2, 52428800),
        "max.partition.fetch.bytes": max(s.input.max_bytes + 4096, 1048576),
        "statistics.interval.ms": s.metrics.statistics_interval_ms,
        "reconnect.backoff.max.ms": 5000,
        "error_cb": on_error,
        "stats_cb": on_stats,
        "logger": logging.getLogger("librdkafka.consumer"),
    }
    if k.group_instance_id:
        conf["group.instance.id"] = k.group_instance_id
    conf.update(k.extra("consumer"))
    return conf


def producer_config(s: Settings, on_error: Callable[[KafkaError], None]) -> dict[str, Any]:
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
        "queue.buffering.max.kbytes": 262144,
        "message.max.bytes": max(s.input.max_bytes * 2, 1048576),
        "delivery.timeout.ms": 300000,
        "reconnect.backoff.max.ms": 5000,
        "error_cb": on_error,
        "logger": logging.getLogger("librdkafka.producer"),
    }
    conf.update(k.extra("producer"))
    return conf


def transactional_id(s: Settings) -> str:
    """Stable per process identity: a restarted process reuses it and fences its zombie."""
    if s.kafka.transactional_id:
        return s.kafka.transactional_id
    who = s.kafka.group_instance_id or socket.gethostname()
    return f"embedstream-{s.kafka.group_id}-{who}-{os.environ.get('EMBED_PROCESS_INDEX', '0')}"


class Pipeline:
    """The worker's processing loop over one consumer and one producer."""

    def __init__(self, settings: Settings, encoder: Encoder, model_name: str, metrics: Metrics,
                 health: Health) -> None:
        self.s = settings
        self.encoder = encoder
        self.metrics = metrics
        self.health = health
        self.outputs = OutputEncoder(settings.output, model_name, encoder.dim)
        self.decoder = InputDecoder(settings.input, keep_fields=settings.output.payload_fields)
        self.chunker = None if settings.chunking.mode == "off" else Chunker(settings.chunking,
                                                                             encoder.model.tokenizer)
        self.tracker = OffsetTracker()
        self.stop_event = threading.Event()
        self.exit_code = EXIT_OK
        self.assigned: set[tuple[str, int]] = set()
        self.paused = False
        self.lag_total = 0
        self._cache_seen = (0, 0)
        self._held: list[Message] = []
        self._last_error_log: dict[str, float] = {}
        self.transactional = settings.processing_guarantee == ProcessingGuarantee.exactly_once
        self.consumer = Consumer(consumer_config(settings, self._on_stats, self._on_error))
        pconf = self.producer_conf = producer_config(settings, self._on_error)
        if self.transactional:
            pconf["transactional.id"] = transactional_id(settings)
            pconf.setdefault("transaction.timeout.ms", 60000)
            pconf["delivery.timeout.ms"] = min(int(pconf["delivery.timeout.ms"]), int(pconf["transaction.timeout.ms"]))
        self.producer = Producer(pconf)
        self.wait_s = settings.batch.max_wait_ms / 1000.0
        self.commit_interval_s = settings.kafka.commit_interval_ms / 1000.0
        self.dlq_max_value = settings.input.dead_letter_max_value_bytes
        # what one record may weigh: the producer's message.max.bytes less room for the record's framing
        self.max_record = int(self.producer_conf["message.max.bytes"]) - 1024
        self._last_commit = 0.0
        self._stored_uncommitted = False

    # ---- callbacks (run inside consume/poll on the loop thread) ----

    def _on_error(self, err: KafkaError) -> None:
        kind = err.name().lower().lstrip("_") if err.name() else "unknown"
        self.metrics.kafka_errors.labels(kind).inc()
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE):
            self.health.broker_up = False
            self.metrics.broker_up.set(0)
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED,
                          KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED,
                          KafkaError.CLUSTER_AUTHORIZATION_FAILED):
            self._auth_failed(err, kind)
            return
        if err.code() == KafkaError._SSL and "certificate verify failed" in err.str():
            self._auth_failed(err, kind)  # a CA that does not sign the broker: no retry will fix it
            return
        if err.fatal():
            log.error("fatal client error; stopping", extra={"error": err.str()})
            self.exit_code = EXIT_FATAL
            self.stop_event.set()
            return
        now = time.monotonic()
        if now - self._last_error_log.get(kind, 0.0) > 10:  # a broker outage must not flood the log
            self._last_error_log[kind] = now
            log.warning("kafka client error (librdkafka retries with back-off)",
                        extra={"error": err.str(), "code": kind})

    def _auth_failed(self, err: KafkaError, kind: str) -> None:
        log.error("authentication, authorization or TLS verification failed; check the SASL/SSL settings",
                  extra={"error": err.str(), "code": kind})
        self.exit_code = EXIT_AUTH
        self.stop_event.set()

    def _on_stats(self, raw: str) -> None:
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        up = any(b.get("state") == "UP" for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0)
        self.health.broker_up = up
        self.metrics.broker_up.set(1 if up else 0)
        total = 0
        for topic, t in stats.get("topics", {}).items():
            for pid, p in t.get("partitions", {}).items():
                part = int(pid)
                if part < 0 or (topic, part) not in self.assigned:
                    continue
                lag = p.get("consumer_lag_stored", -1)
                if lag is None or lag < 0:
                    lag = p.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    self.metrics.lag.labels(topic, str(part)).set(lag)
                    total += lag
        self.metrics.lag_total.set(total)
        self.lag_total = total

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.health.joined = True
        # An assignment came from the group coordinator, a broker: ready now, not at the first statistics report
        # (statistics_interval_ms later, 5 s by default), which keeps /readyz fresh afterwards.
        self.health.broker_up = True
        self.metrics.broker_up.set(1)
        self.metrics.rebalances.labels("assign").inc()
        self.metrics.assigned.set(len(self.assigned))
        if self.paused and partitions:
            consumer.pause(partitions)
        log.info("partitions assigned", extra={"partitions": _names(partitions), "assigned": len(self.assigned)})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("revoke").inc()
        self._drain(self.s.shutdown_grace_s)
        self._commit()
        self._forget(partitions)
        log.info("partitions revoked", extra={"partitions": _names(partitions), "assigned": len(self.assigned)})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.metrics.rebalances.labels("lost").inc()
        self._forget(partitions)
        log.warning("partitions lost (session expired); their uncommitted inputs will be re-read by the new owner",
                    extra={"partitions": _names(partitions)})

    def _forget(self, partitions: list[TopicPartition]) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        if self._held:  # held while paused: their next owner (maybe us again) re-reads them from the committed offset
            self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]
        for p in partitions:
            self.assigned.discard((p.topic, p.partition))
            try:
                self.metrics.lag.remove(p.topic, str(p.partition))
            except KeyError:
                pass
        self.metrics.assigned.set(len(self.assigned))

    # ---- offsets ----

    def _release(self) -> None:
        """Serve delivery reports; store offsets of every fully acknowledged batch at the front."""
        self._serve_reports()
        done = self.tracker.pop_done()
        if not done:
            self._commit_due()  # the last stored offsets of a burst get committed once the input goes quiet
            return
        offsets: dict[tuple[str, int], int] = {}
        for b in done:
            if b.failed:
                self._delivery_failed(b)
                return
            offsets.update(b.next_offsets)
            self._account(b)
        owned = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if (t, p) in self.assigned]
        if owned:
            try:
                self.consumer.store_offsets(offsets=owned)
            except KafkaException as e:  # a partition revoked in between: its new owner re-reads
                log.debug("store_offsets failed", extra={"error": str(e)})
            self._stored_uncommitted = True
            self._commit_due()

    def _commit_due(self) -> None:
        """Commit stored offsets (async) when some are not committed yet and the commit interval has passed."""
        now = time.monotonic()
        if self._stored_uncommitted and now - self._last_commit >= self.commit_interval_s:
            self._last_commit = now
            self._stored_uncommitted = False
            self._commit(asynchronous=True)

    def _serve_reports(self) -> None:
        """Run the delivery callbacks that are due (the "callbacks" stage)."""
        t0 = (time.perf_counter(), time.thread_time())
        if self.producer.poll(0):
            self._lap("callbacks", t0)

    def _lap(self, stage: str, since: tuple[float, float]) -> tuple[float, float]:
        """End a loop-thread stage begun at `since` (wall, thread CPU): observe both; return now."""
        now = (time.perf_counter(), time.thread_time())
        self.metrics.stage_seconds.labels(stage).observe(now[0] - since[0])
        self.metrics.stage_cpu.labels(stage).inc(max(0.0, now[1] - since[1]))
        return now

    def _account(self, b: PendingBatch) -> None:
        """Metrics of a fully acknowledged batch."""
        self.metrics.produced.inc(b.produced)
        self.metrics.bytes_out.inc(b.bytes_out)
        self.metrics.stage_seconds.labels("produce").observe((b.done_at or time.perf_counter()) - b.started)
        if len(b.timestamps_ms):
            ts = b.timestamps_ms[b.timestamps_ms > 0]
            observe_many(self.metrics.e2e_seconds, time.time() - ts / 1000.0)

    def _delivery_failed(self, batch: PendingBatch) -> None:
        """An output could not be delivered within delivery.timeout.ms: never store past it; stop so that
        a restart re-reads from the last committed offset (the supervisor or Kubernetes restarts us)."""
        log.error("output delivery failed; stopping without storing offsets past the failed batch",
                  extra={"errors": batch.failed[:5], "failed": len(batch.failed)})
        self.exit_code = EXIT_DELIVERY_FAILED
        self.stop_event.set()
        self.tracker.pending.clear()

    def _drain(self, timeout_s: float) -> bool:
        """Wait until every produced output is acknowledged (or the timeout passes); store offsets."""
        deadline = time.monotonic() + timeout_s
        while self.tracker.pending and time.monotonic() < deadline and self.exit_code != EXIT_DELIVERY_FAILED:
            self.producer.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            self._release()
        return not self.tracker.pending

    def _commit(self, asynchronous: bool = False) -> None:
        """Commit the stored offsets (only acknowledged work is ever stored). Exactly-once mode commits
        offsets inside each batch's transaction instead."""
        if self.transactional:
            return
        t0 = time.perf_counter()
        try:
            if asynchronous:
                self.consumer.commit(asynchronous=True)
            else:
                self.consumer.commit(asynchronous=False)
        except KafkaException as e:
            err = e.args[0] if e.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError._NO_OFFSET):
                log.warning("commit failed", extra={"error": str(e)})
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)

    # ---- the loop ----

    def run(self) -> int:
        """Process until stopped (signal or stop()); returns the process exit code."""
        s = self.s
        self.consumer.subscribe([s.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("consuming", extra={"input": s.input_topic, "output": s.output_topic, "dlq": s.dlq_topic,
                                     "group": s.kafka.group_id, "bootstrap": s.kafka.bootstrap_servers})
        if self.transactional:
            self._init_transactions()
        try:
            while not self.stop_event.is_set():
                if self.paused:
                    msgs = self.consumer.consume(s.batch.max_messages, 0.05)  # serves rebalances; keeps us in
                    self._held.extend(msgs)                                   # the group while output is slow
                    msgs = []
                elif self._held:
                    msgs, self._held = self._held, []
                else:
                    msgs = self.consumer.consume(s.batch.max_messages, self.wait_s)
                self._release()
                if msgs:
                    self.health.broker_up = True
                    self.health.has_work = True  # a stall inside process() must show on /healthz
                    self.process(msgs)
                self._backpressure()
                self.metrics.producer_queue.set(len(self.producer))
                in_flight = self.tracker.in_flight_messages
                self.metrics.in_flight.set(in_flight)
                self.metrics.last_progress.set(time.time())
                self.health.step(has_work=bool(msgs) or in_flight > 0 or self.lag_total > 0)
        finally:
            self._shutdown()
        return self.exit_code

    def _init_transactions(self) -> None:
        """Register the transactional id (fencing any zombie with the same id); retried while the broker
        is unreachable."""
        while not self.stop_event.is_set():
            try:
                self.producer.init_transactions(30)
                log.info("exactly-once: transactions initialised",
                         extra={"transactional_id": transactional_id(self.s)})
                return
            except KafkaException as e:
                if not e.args[0].retriable():
                    raise
                log.warning("init_transactions retrying", extra={"error": str(e)})

    def _backpressure(self) -> None:
        """Bound the outputs in flight: past `max_in_flight_batches`, wait for acknowledgements; if they
        do not come within a second (slow or absent broker), pause consumption until they do."""
        limit = self.s.batch.max_in_flight_batches
        if len(self.tracker.pending) >= limit and not self.paused:
            deadline = time.monotonic() + 1.0
            while len(self.tracker.pending) >= limit and time.monotonic() < deadline:
                self.producer.poll(0.05)
                self._release()
            if len(self.tracker.pending) >= limit:
                parts = self.consumer.assignment()
                self.consumer.pause(parts)
                self.paused = True
                self.metrics.paused.set(len(parts))
                log.warning("output is slow: consumption paused",
                            extra={"batches_in_flight": len(self.tracker.pending)})
        elif self.paused and len(self.tracker.pending) < max(1, limit // 2):
            parts = self.consumer.assignment()
            self.consumer.resume(parts)
            self.paused = False
            self.metrics.paused.set(0)
            log.info("output caught up: consumption resumed")

    def process(self, msgs: list[Message]) -> None:
        """Decode, encode and produce one micro-batch; register it with the offset tracker."""
        m = self.metrics
        t0 = (time.perf_counter(), time.thread_time())
        real: list[Message] = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                real.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                self._on_error(err)
        if not real:
            return
        n = len(real)
        values = [msg.value() for msg in real]
        keys = [msg.key() for msg in real]
        where = cast(list[tuple[str, int, int]], [(msg.topic(), msg.partition(), msg.offset()) for msg in real])
        m.consumed.inc(n)
        m.bytes_in.inc(sum(len(v) for v in values if v is not None))
        dec = self.decoder.decode(values, keys, where)
        t1 = self._lap("decode", t0)

        bad = list(dec.bad)
        records: list[OutputRecord] = []
        vectors = np.zeros((0, self.encoder.dim), np.float32)
        if dec.texts:
            try:
                records, vectors = self._embed(dec)
            except Exception as e:  # one bad text must not stop the stream: dead-letter the batch's texts
                log.exception("encoder failed on a batch; dead-lettering its texts")
                bad.extend((i, Reason.ENCODE_ERROR, f"{type(e).__name__}: {e}"[:500]) for i in dec.good)
                records = []
        t2 = self._lap("encode", t1)
        m.batch_size.observe(n)

        next_offsets: dict[tuple[str, int], int] = {}
        for topic, part, off in where:
            next_offsets[(topic, part)] = off + 1
        out_values = self.outputs.values(records, vectors) if records else []
        t3 = self._lap("format", t2)
        outgoing, too_big = self._output_records(real, records, out_values, keys, where)
        if too_big:
            outgoing = [o for o, r in zip(outgoing, records, strict=True) if r.source not in too_big]
            records = [r for r in records if r.source not in too_big]
            bad.extend((i, Reason.TOO_LARGE, "key and headers make the output larger than the producer's "
                        f"message.max.bytes ({self.max_record} bytes)") for i in sorted(too_big))
        for i, reason, text in bad:
            headers = cast(Headers, list(real[i].headers() or ()))
            dlq_value, dlq_headers = dead_letter(values[i], reason, text, *where[i], self.dlq_max_value)
            key: bytes | None = keys[i]
            if record_size(key, dlq_value, headers + dlq_headers) > self.max_record:
                # even the dead letter is too big: keep only what identifies the input (its coordinates)
                headers, key = [("error-key-and-headers-omitted", str(record_size(key, None, headers)).encode())], None
            headers.extend(dlq_headers)
            outgoing.append((self.s.dlq_topic, key, dlq_value, headers))
            m.dead_lettered.labels(reason).inc()
        batch = PendingBatch(
            outstanding=len(outgoing),
            next_offsets=next_offsets,
            timestamps_ms=np.fromiter((msg.timestamp()[1] for msg in real), dtype=np.int64, count=n),
            produced=len({r.source for r in records}),
            bytes_out=sum(len(o[2] or b"") for o in outgoing if o[0] == self.s.output_topic),
        )
        if self.transactional:
            self._begin()
        cb = batch.on_delivery
        produce = self.producer.produce
        for topic, out_key, out_value, headers in outgoing:
            try:
                produce(topic, value=out_value, key=out_key, headers=headers, on_delivery=cb)  # type: ignore[arg-type]
            except BufferError:  # local queue full: wait for acknowledgements to free space
                self._produce(topic, out_key, out_value, headers, cb)
        self._lap("send", t3)
        if self.transactional:
            self._commit_transaction(batch, where)
            return
        self.tracker.add(batch)
        self._serve_reports()

    def _output_records(self, real: list[Message], records: list[OutputRecord], out_values: list[bytes],
                        keys: list[bytes | None], where: list[tuple[str, int, int]]
                        ) -> tuple[list[tuple[str, bytes | None, bytes | None, Headers]], set[int]]:
        """(topic, key, value, headers) per output: the input's headers, then source-topic/-partition/-offset
        (names and per-partition values encoded once per batch), then the format's and the record's own;
        and the inputs whose key and headers make their output too big to publish."""
        out_topic = self.s.output_topic
        coords: dict[tuple[str, int], tuple[tuple[str, bytes], tuple[str, bytes]]] = {}
        binary = self.outputs.binary is not None
        # the headers added here (coordinates, model, dim, dtype, chunk fields) stay under 2 KB: the full size
        # check is needed only for inputs with headers of their own, or a large key, value or id header
        limit = self.max_record - 2048
        outgoing: list[tuple[str, bytes | None, bytes | None, Headers]] = []
        too_big: set[int] = set()
        for r, value in zip(records, out_values, strict=True):
            i = r.source
            topic, part, off = where[i]
            tp = coords.get((topic, part))
            if tp is None:
                tp = coords[(topic, part)] = (("source-topic", topic.encode()),
                                              ("source-partition", str(part).encode()))
            own = real[i].headers()
            headers: Headers = list(own) if own else []  # type: ignore[arg-type]
            headers += (tp[0], tp[1], ("source-offset", str(off).encode()))
            size = len(value)
            if binary:
                extra = self.outputs.extra_headers(r.ident)
                size += len(extra[0][1])  # the id
                headers += extra
            if r.headers:
                headers += r.headers
            key = keys[i]
            if key:
                size += len(key)
            if (own or size > limit) and record_size(key, value, headers) > self.max_record:
                too_big.add(i)  # the input's own key or headers make its output too big to publish
            outgoing.append((out_topic, key, value, headers))
        return outgoing, too_big

    def _embed(self, dec: Decoded) -> tuple[list[OutputRecord], np.ndarray]:
        """Encode the batch's texts (or their chunks) in one call; one output record per vector."""
        m = self.metrics
        payloads = self._payloads(dec)
        if self.chunker is None:
            enc = self.encoder.encode_batch(dec.texts)
            records = [OutputRecord(i, ident, payload=p) for i, ident, p in zip(dec.good, dec.ids, payloads,
                                                                                 strict=True)]
            if self.outputs.payload_text:
                for r, text in zip(records, dec.texts, strict=True):
                    assert r.payload is not None
                    r.payload["text"] = text
            vectors = enc.vectors
        else:
            records, vectors, enc = self._embed_chunks(dec, payloads)
        self._cache_metrics()
        tokens = int(enc.token_counts.sum())
        m.tokens.inc(tokens)
        m.batch_tokens.observe(tokens)
        m.embedded.inc(len(dec.texts))
        return records, vectors

    def _cache_metrics(self) -> None:
        """Fast-path cache counters and size, from the encoder's cumulative stats."""
        hits, misses, entries, nbytes = self.encoder.fast_path_stats()
        last_hits, last_misses = self._cache_seen
        self.metrics.cache_hits.inc(max(0, hits - last_hits))
        self.metrics.cache_misses.inc(max(0, misses - last_misses))
        self.metrics.cache_entries.set(entries)
        self.metrics.cache_bytes.set(nbytes)
        self._cache_seen = (hits, misses)

    def _payloads(self, dec: Decoded) -> list[dict[str, Any] | None]:
        if not self.outputs.wants_payload:
            return [None] * len(dec.good)
        return [dict(f) for f in dec.fields] if dec.fields else [{} for _ in dec.good]

    def _embed_chunks(self, dec: Decoded, payloads: list[dict[str, Any] | None]
                      ) -> tuple[list[OutputRecord], np.ndarray, Encoded]:
        """Every chunk of every document in one encoder call; chunk records (and document vectors)."""
        assert self.chunker is not None
        cs = self.s.chunking
        spans = self.chunker.split_many(dec.texts)
        chunk_texts = [text[sp.start:sp.end] for text, doc in zip(dec.texts, spans, strict=True) for sp in doc]
        enc = self.encoder.encode_batch(chunk_texts)
        rows: list[int] = []
        records: list[OutputRecord] = []
        doc_rows: list[np.ndarray] = []
        k = 0
        for i, ident, text, doc, payload in zip(dec.good, dec.ids, dec.texts, spans, payloads, strict=True):
            if len(doc) == 1 and not cs.document_vector:  # fits in one chunk: an ordinary output
                records.append(OutputRecord(i, ident, payload=_with_text(payload, text, self.outputs.payload_text)))
                rows.append(k)
                k += 1
                continue
            for n, sp in enumerate(doc):
                chunk_id = chunk_ident(cs.id_format, ident, n)
                headers = [("chunk-kind", b"chunk"), ("chunk-index", str(n).encode()),
                           ("chunk-count", str(len(doc)).encode()), ("chunk-start", str(sp.start).encode()),
                           ("chunk-end", str(sp.end).encode())]
                p = None
                if payload is not None:
                    p = {**payload, "document_id": ident, "chunk_index": n, "chunk_count": len(doc),
                         "chunk_start": sp.start, "chunk_end": sp.end}
                    p = _with_text(p, text[sp.start:sp.end], self.outputs.payload_text)
                records.append(OutputRecord(i, chunk_id, headers=headers, payload=p))
                rows.append(k + n)
            if cs.document_vector:
                doc_rows.append(np.arange(k, k + len(doc)))
                records.append(OutputRecord(i, ident, headers=[("chunk-kind", b"document"),
                                                               ("chunk-count", str(len(doc)).encode())],
                                            payload=payload))
                rows.append(-len(doc_rows))  # placeholder: the document vector, appended below
            k += len(doc)
        vectors = enc.vectors
        if doc_rows:
            docs = np.vstack([document_vector(vectors[r], enc.token_counts[r], self.encoder.normalize)
                              for r in doc_rows])
            vectors = np.vstack([vectors, docs])
            base = enc.vectors.shape[0]
            rows = [r if r >= 0 else base + (-r - 1) for r in rows]
        self.metrics.chunks.inc(sum(len(d) for d in spans if len(d) > 1 or cs.document_vector))
        return records, vectors[np.asarray(rows, dtype=np.int64)], enc

    # ---- exactly-once: one transaction per batch, outputs + dead letters + input offsets ----

    def _begin(self) -> None:
        self.producer.begin_transaction()

    def _commit_transaction(self, batch: PendingBatch, where: list[tuple[str, int, int]]) -> None:
        """Commit the batch's outputs with its input offsets atomically; on an abortable error, abort
        and rewind the consumer to the batch's first offsets so that it is processed again."""
        t0 = time.perf_counter()
        timeout = min(self.s.shutdown_grace_s, 10.0)
        offsets = [TopicPartition(t, p, o) for (t, p), o in batch.next_offsets.items()]
        # librdkafka 2.16 can block in send_offsets_to_transaction past its timeout when the broker goes away
        # (and then no Python code, not even the SIGTERM handler, runs): past the deadline, exit so that a
        # restart (the supervisor's or Kubernetes') resumes from the last committed transaction.
        watchdog = threading.Timer(2 * timeout + 10.0, _force_exit,
                                   args=("a transaction call did not return; exiting so that a restart resumes",))
        watchdog.daemon = True
        watchdog.start()
        self.health.waiting_since = time.monotonic()
        try:
            self.producer.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), timeout)
            while True:
                try:
                    self.producer.commit_transaction(timeout)
                    break
                except KafkaException as e:
                    if not e.args[0].retriable():
                        raise
                    log.warning("transaction commit retrying", extra={"error": str(e)})
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.txn_requires_abort():
                log.warning("transaction aborted; the batch will be processed again", extra={"error": err.str()})
                self.metrics.kafka_errors.labels("transaction_aborted").inc()
                self.producer.abort_transaction(timeout)
                self._rewind(where)
                return
            log.error("transaction failed fatally (fenced by a newer instance?); stopping", extra={"error": err.str()})
            self.exit_code = EXIT_FATAL
            self.stop_event.set()
            return
        finally:
            watchdog.cancel()
            self.health.waiting_since = None
        self.producer.poll(0)
        batch.done_at = time.perf_counter()
        self._account(batch)
        self.metrics.stage_seconds.labels("commit").observe(time.perf_counter() - t0)

    def _rewind(self, where: list[tuple[str, int, int]]) -> None:
        first: dict[tuple[str, int], int] = {}
        for t, p, o in where:
            first[(t, p)] = min(o, first.get((t, p), o))
        for (t, p), o in first.items():
            if (t, p) in self.assigned:
                self.consumer.seek(TopicPartition(t, p, o))

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers,
                 cb: Callable[[KafkaError | None, Message], None]) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,  # type: ignore[arg-type]
                                      on_delivery=cb)
                return
            except BufferError:  # local queue full: wait for acknowledgements to free space
                self.producer.poll(0.1)

    def stop(self) -> None:
        self.stop_event.set()

    def _shutdown(self) -> None:
        """Finish in-flight outputs, commit, leave the group — within the grace period."""
        self.health.stopping = True
        t0 = time.monotonic()
        grace = self.s.shutdown_grace_s
        if self.exit_code != EXIT_DELIVERY_FAILED:
            drained = self._drain(max(1.0, grace - 3.0))
            if not drained:
                log.error("shutdown: outputs not acknowledged within the grace period; their inputs stay "
                          "uncommitted and will be re-read", extra={"batches": len(self.tracker.pending)})
            self._commit()
        try:
            self.consumer.close()  # leaves the group
        except (KafkaException, RuntimeError) as e:
            log.warning("consumer close failed", extra={"error": str(e)})
        self.producer.flush(max(0.0, grace - (time.monotonic() - t0)))
        log.info("stopped", extra={"seconds": round(time.monotonic() - t0, 3), "exit_code": self.exit_code})


def install_signal_handlers(pipeline: Pipeline) -> None:
    """SIGTERM/SIGINT: stop polling and shut down gracefully; a second signal exits at once."""
    def handler(signum: int, frame: Any) -> None:
        if pipeline.stop_event.is_set():
            log.warning("second signal: exiting now")
            raise SystemExit(130)
        log.info("signal received; finishing the batch in flight", extra={"signal": signal.Signals(signum).name})
        pipeline.stop()
        # A watchdog: whatever blocks, the process is gone a little after the grace period.
        timer = threading.Timer(pipeline.s.shutdown_grace_s + 2.0, _force_exit)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _force_exit(reason: str = "shutdown exceeded the grace period; exiting") -> None:
    log.error(reason)
    logging.shutdown()
    os._exit(EXIT_FATAL)


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions)


def _with_text(payload: dict[str, Any] | None, text: str, include: bool) -> dict[str, Any] | None:
    if payload is not None and include:
        payload["text"] = text
    return payload


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Bytes a record carries (key, value, header names and values), as message.max.bytes counts them."""
    return len(key or b"") + len(value or b"") + sum(len(k) + len(v or b"") for k, v in headers)

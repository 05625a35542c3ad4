"""consume -> micro-batch -> decode -> encode -> produce -> store offsets, at least once.

One thread runs the loop. A batch is what one `consume(max_messages, max_wait)` call returns. Its
outputs and dead letters are produced asynchronously; an input offset is stored only when every output
of its batch and of every earlier batch is acknowledged (`OffsetTracker`); stored offsets are committed
asynchronously every `commit_interval_ms` (`Commits`). On revoke and on shutdown the producer is flushed and
the stored offsets are committed synchronously. A crash therefore repeats at most the unacknowledged
batches plus the acknowledged ones not yet committed, which the loop keeps under `max_uncommitted_messages`
by pausing while commits fail; it loses nothing.

This module keeps the loop, the client callbacks (statistics, rebalances), backpressure and shutdown; outputs
are built in `worker.outputs`, offsets tracked in `worker.offsets`, exactly-once transactions run in
`worker.transactions`, client properties live in `worker.kafka_clients`, the error callback in
`worker.client_errors`, exit codes and signal handlers in `worker.exits`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import cast

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from worker.client_errors import ClientErrors
from worker.codecs import Headers, InputDecoder, OutputRecord, Reason
from worker.commits import Commits
from worker.encoder import Encoder
from worker.exits import EXIT_AUTH, EXIT_DELIVERY_FAILED, EXIT_FATAL, EXIT_OK, install_signal_handlers
from worker.kafka_clients import consumer_config, producer_config
from worker.memory_budget import input_parts
from worker.metrics import Metrics
from worker.offsets import OffsetTracker, PendingBatch, account
from worker.outputs import OutputAssembler
from worker.probes import Health
from worker.schema_input import input_gate
from worker.settings import ProcessingGuarantee, Settings
from worker.transactions import Outcome, Transactions

__all__ = ["EXIT_AUTH", "EXIT_DELIVERY_FAILED", "EXIT_FATAL", "EXIT_OK", "Pipeline", "install_signal_handlers"]

log = logging.getLogger(__name__)


class Pipeline:
    """The worker's processing loop over one consumer and one producer."""

    def __init__(self, settings: Settings, encoder: Encoder, model_name: str, metrics: Metrics,
                 health: Health) -> None:
        self.s = settings
        self.encoder = encoder
        self.metrics = metrics
        self.health = health
        metrics.broker_up.set_function(lambda: 1.0 if health.broker_reachable() else 0.0)  # at scrape time
        self._on_error = ClientErrors(metrics, health, self._stop_with)  # error_cb of both clients
        self.producer_conf = producer_config(settings, self._on_error)
        # what one record may weigh: the producer's message.max.bytes less room for the record's framing
        self.max_record = int(self.producer_conf["message.max.bytes"]) - 1024
        self.assembler = OutputAssembler(settings, encoder, model_name, metrics, self.max_record)
        self.gate = input_gate(settings, health, self.assembler.registry_client)  # avro/protobuf input, else None
        self.decoder = InputDecoder(settings.input, keep_fields=settings.output.payload_fields,
                                    schemas=self.gate.reader if self.gate else None)
        self.tracker = OffsetTracker()
        self.stop_event = threading.Event()
        self.exit_code = EXIT_OK
        self.assigned: set[tuple[str, int]] = set()
        self.paused = False
        self._paused_at = 0.0
        self._pause_said = False  # the pause was logged (a warning): its end is logged too
        # librdkafka keeps a pause across a revoke and re-assignment: set it again after every assignment
        self._pause_stale = False
        self.lag_total = 0
        self._held: list[Message] = []
        self.transactional = settings.processing_guarantee == ProcessingGuarantee.exactly_once
        self.commits = Commits(settings.kafka.commit_interval_ms, settings.kafka.max_uncommitted_messages, metrics)
        self.consumer = Consumer(consumer_config(settings, self._on_stats, self._on_error,
                                                 None if self.transactional else self.commits.on_commit))
        self.commits.consumer = self.consumer
        self.producer = Producer(self.producer_conf)
        self.transactions = Transactions(settings, self.producer, self.consumer, metrics, health, self.assigned)
        self.wait_s = settings.batch.max_wait_ms / 1000.0

    # ---- callbacks (run inside consume/poll on the loop thread) ----

    def _stop_with(self, code: int) -> None:
        self.exit_code = code
        self.stop_event.set()

    def _on_stats(self, raw: str) -> None:
        got = self.metrics.apply_stats(raw, self.assigned)  # broker state and lag of the assigned partitions
        if got is not None:
            self.health.broker_up, self.lag_total = got

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned.update((p.topic, p.partition) for p in partitions)
        self.health.joined = True
        # An assignment came from the group coordinator, a broker: ready now, not at the first statistics report
        # (statistics_interval_ms later, 5 s by default), which keeps /readyz fresh afterwards.
        self.health.broker_up = True
        self.metrics.rebalances.labels("assign").inc()
        self.metrics.assigned.set(len(self.assigned))
        self._pause_stale = True  # set the new partitions' pause state from the loop, once they are assigned
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
        self.commits.forget(gone)
        for b in self.tracker.pending:  # outputs still in flight: never store their offsets for a past assignment
            for part in gone:
                b.next_offsets.pop(part, None)
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
        for i, b in enumerate(done):
            if b.failed:
                self._delivery_failed(b)
                done = done[:i]
                break
            account(self.metrics, b)
        if done:
            self.commits.store(done, self.assigned)
        if self.exit_code != EXIT_DELIVERY_FAILED:
            self.commits.due()  # also the last stored offsets of a burst, once the input goes quiet

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

    def _commit(self) -> None:
        """Commit the stored offsets now (only acknowledged work is ever stored). Exactly-once mode commits
        offsets inside each batch's transaction instead."""
        if not self.transactional:
            self.commits.commit()

    # ---- the loop ----

    def run(self) -> int:
        """Process until stopped (signal or stop()); returns the process exit code."""
        s = self.s
        self.consumer.subscribe([s.input_topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        log.info("consuming", extra={"input": s.input_topic, "output": s.output_topic, "dlq": s.dlq_topic,
                                     "group": s.kafka.group_id, "bootstrap": s.kafka.bootstrap_servers})
        if self.transactional:
            self.transactions.init(self.stop_event)
        try:
            while not self.stop_event.is_set():
                if self.paused:
                    msgs = self.consumer.consume(s.batch.max_messages, 0.05)  # serves rebalances; keeps us in
                    self._held.extend(msgs)                                   # the group while output is slow
                    msgs = []
                    if self.gate is not None and self.gate.due():  # the registry was down: try the held batch
                        msgs, self._held = self._held, []
                        if not msgs:
                            self.gate.release()  # what was held is revoked: nothing to wait for
                elif self._held:
                    msgs, self._held = self._held, []
                else:
                    msgs = self.consumer.consume(s.batch.max_messages, self.wait_s)
                self._release()
                if msgs:
                    self.health.broker_up = True
                    self.health.has_work = True  # a stall inside process() must show on /healthz
                    if self._admit(msgs):
                        self.process(msgs)
                self._backpressure()
                self.metrics.producer_queue.set(len(self.producer))
                in_flight = self.tracker.in_flight_messages
                self.metrics.in_flight.set(in_flight)
                self.metrics.last_progress.set(time.time())
                self.health.step(has_work=bool(msgs) or in_flight > 0 or self.lag_total > 0)
        except KafkaException as e:  # not a settings error (those come from the clients' constructors): a
            # restart (the supervisor's or Kubernetes') resumes from the last commit
            log.error("Kafka call failed in the loop; stopping so that a restart resumes", extra={"error": str(e)})
            self.exit_code = EXIT_FATAL
        finally:
            self._shutdown()
        return self.exit_code

    def _backpressure(self) -> None:
        """Bound the outputs in flight: past `max_in_flight_batches`, wait for acknowledgements; if they
        do not come within a second (slow or absent broker), pause consumption until they do. Bound the
        replay too: pause while `max_uncommitted_messages` acknowledged inputs await a confirmed commit (one
        is on its way, sent early at half of it; said in the log only if none is confirmed within a second)."""
        limit = self.s.batch.max_in_flight_batches
        if self._pause_stale:
            self._pause_stale = False
            parts = self.consumer.assignment()
            (self.consumer.pause if self.paused else self.consumer.resume)(parts)
        if not self.paused and len(self.tracker.pending) >= limit:
            deadline = time.monotonic() + 1.0
            while len(self.tracker.pending) >= limit and time.monotonic() < deadline:
                self.producer.poll(0.05)
                self._release()
            if len(self.tracker.pending) >= limit:
                self._pause()
                self._pause_said = True
                log.warning("output is slow: consumption paused",
                            extra={"batches_in_flight": len(self.tracker.pending)})
        if not self.paused and self.commits.blocked():
            self._pause()
        if not self.paused:
            return
        if len(self.tracker.pending) < max(1, limit // 2) and not self.commits.blocked() and not (
                self.gate is not None and self.gate.waiting):
            self.consumer.resume(self.consumer.assignment())
            self.paused = False
            self.metrics.paused.set(0)
            if self._pause_said:
                self._pause_said = False
                log.info("consumption resumed")
        elif not self._pause_said and self.commits.blocked() and time.monotonic() - self._paused_at > 1.0:
            self._pause_said = True
            log.warning("offset commits are not confirmed: consumption paused until one is",
                        extra={"uncommitted": self.commits.uncommitted, "cap": self.commits.cap})

    def _admit(self, msgs: list[Message]) -> bool:
        """avro/protobuf input: fetch the batch's schemas first. The registry down: hold the batch (in order, ahead
        of anything held already), pause, and keep polling; the gate says when to try again (worker.schema_input)."""
        if self.gate is None or self.gate.admit(m.value() for m in msgs if m.error() is None):
            return True
        self._held = msgs + self._held
        if not self.paused:
            self._pause()
        return False

    def _pause(self) -> None:
        parts = self.consumer.assignment()
        self.consumer.pause(parts)
        self.paused = True
        self._paused_at = time.monotonic()
        self.metrics.paused.set(len(parts))

    def process(self, msgs: list[Message]) -> None:
        """One consumed batch, in parts of at most `batch.max_kbytes` of input, each its own batch for the offset
        tracker: what a part holds while encoded (texts, chunks, vectors, outputs) grows with its input, ~16x with
        chunking, so it is bounded by it (worker.memory_budget); at most `max_in_flight_batches` await acks."""
        b = self.s.batch
        for i, part in enumerate(input_parts(msgs, b.max_kbytes * 1024)):
            while i and len(self.tracker.pending) >= b.max_in_flight_batches and not self.stop_event.is_set():
                self.producer.poll(0.05)
                self._release()
            if self.exit_code != EXIT_OK or not self._process_part(part):  # a failed delivery: store nothing past it
                return  # exactly once: aborted (the consumer was rewound to this part) or fatal

    def _process_part(self, msgs: list[Message]) -> bool:
        """Decode, encode and produce one micro-batch; register it with the offset tracker. False when its
        transaction did not commit."""
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
            return True
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
                records, vectors = self.assembler.embed(dec)
                records, vectors = self.assembler.finite(records, vectors, bad)
            except Exception as e:  # one bad text must not stop the stream: dead-letter the batch's texts
                log.exception("encoder failed on a batch; dead-lettering its texts")
                bad.extend((i, Reason.ENCODE_ERROR, f"{type(e).__name__}: {e}"[:500]) for i in dec.good)
                records = []
        t2 = self._lap("encode", t1)
        m.batch_size.observe(n)

        next_offsets: dict[tuple[str, int], int] = {}
        counts: dict[tuple[str, int], int] = {}
        for topic, part, off in where:
            next_offsets[(topic, part)] = off + 1
            counts[(topic, part)] = counts.get((topic, part), 0) + 1
        out_values = self.assembler.values(records, vectors)
        t3 = self._lap("format", t2)
        outgoing, records = self.assembler.assemble(real, records, out_values, values, keys, where, bad)
        batch = PendingBatch(
            outstanding=len(outgoing),
            next_offsets=next_offsets,
            counts=counts,
            timestamps_ms=np.fromiter((msg.timestamp()[1] for msg in real), dtype=np.int64, count=n),
            produced=len({r.source for r in records}),
            bytes_out=sum(len(o[2] or b"") for o in outgoing if o[0] == self.s.output_topic),
        )
        if self.transactional:
            self.transactions.begin()
        cb = batch.on_delivery
        produce = self.producer.produce
        for topic, out_key, out_value, headers in outgoing:
            try:
                produce(topic, value=out_value, key=out_key, headers=headers, on_delivery=cb)  # type: ignore[arg-type]
            except BufferError:  # local queue full: wait for acknowledgements to free space
                self._produce(topic, out_key, out_value, headers, cb)
        self._lap("send", t3)
        if self.transactional:
            outcome = self.transactions.commit(batch, where)
            if outcome is Outcome.FATAL:
                self.exit_code = EXIT_FATAL
                self.stop_event.set()
            return outcome is Outcome.COMMITTED
        self.tracker.add(batch)
        self._serve_reports()
        return True

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


def _names(partitions: list[TopicPartition]) -> str:
    return ",".join(f"{p.topic}[{p.partition}]" for p in partitions)

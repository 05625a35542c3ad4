"""`bench soak`: a steady load at 80% of the measured maximum for an hour (configurable) on the default-model-like
gemma fixture, recorded per minute: throughput, end-to-end latency p50/p99, RSS/PSS per worker process, backlog
(sent, not yet out) and commit lag (input end offsets minus the group's committed offsets). It fails on any
loss, duplicate or dead letter, a worker exit, or a growth trend (`worker.bench.soak_report` says which).

Why one worker for both phases: the maximum is measured by the same process draining a backlog after its own
start-up, then the paced producer starts against it; the load is 80% of what this process, this broker and
this machine did a minute before. Every input's key is `<index>:<send time µs>`, which the worker copies to
its output: a reader of the output topic marks each index seen (loss, duplicates) and takes the latency
(output LogAppendTime - send time) without parsing the vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from worker.bench.harness import PrivateBroker, children_of, delete_topics, progress
from worker.bench.soak_report import Interval, plot, print_table, verdict
from worker.bench.startup import free_port

SAMPLE_S = 5.0  # memory, backlog and commit lag are sampled this often


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                   help="broker to use (default: KAFKA_BOOTSTRAP_SERVERS, else start a private local broker)")
    p.add_argument("--model", help="Model2Vec folder (default: the gemma-like float16 fixture)")
    p.add_argument("--minutes", type=float, default=60.0, help="length of the steady load")
    p.add_argument("--load", type=float, default=0.8, help="rate as a fraction of the measured maximum")
    p.add_argument("--rate", type=float, default=0.0, help="fixed rate in msg/s instead of --load x maximum")
    p.add_argument("--interval", type=float, default=60.0, help="seconds per record")
    p.add_argument("--warmup", type=int, default=None,
                   help="records left out of the trend checks (default: 2, or 1 for runs under 10 records)")
    p.add_argument("--calibration", type=int, default=100_000,
                   help="backlog drained to measure the maximum (its second half is timed)")
    p.add_argument("--set", dest="text_set", choices=["short", "paragraph", "mixed"], default="mixed")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--processes", type=int, default=1, help="`run --processes`")
    p.add_argument("--format", default="json", help="EMBED_OUTPUT__FORMAT")
    p.add_argument("--json", help="write the records and the verdict here")
    p.add_argument("--plot", help="write the four-panel PNG here")


class Tally(threading.Thread):
    """Reads the output and dead-letter topics: marks each input index seen, counts repeats, and collects the
    end-to-end latencies of the current record."""

    def __init__(self, bootstrap: str, topics: list[str]) -> None:
        super().__init__(daemon=True)
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-tally-{uuid.uuid4().hex[:6]}",
                                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                  "fetch.max.bytes": 64 * 2**20})
        self.consumer.subscribe(topics)
        self.dlq = topics[1]
        self.seen = np.zeros(1 << 20, dtype=np.uint8)
        self.unique = self.duplicates = self.dead_letters = self.outputs = 0
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.record_latency = False

    def take(self) -> tuple[int, list[float]]:
        """(outputs, latencies in ms) since the last call."""
        with self.lock:
            out, lat = self.outputs, self.latencies
            self.outputs, self.latencies = 0, []
        return out, lat

    def run(self) -> None:
        while not self.stop_event.is_set():
            msgs = self.consumer.consume(10_000, 0.2)
            with self.lock:
                for m in msgs:
                    if m.error():
                        continue
                    if m.topic() == self.dlq:
                        self.dead_letters += 1
                    index, _, sent_us = (m.key() or b"-1:0").partition(b":")
                    i = int(index)
                    if i >= len(self.seen):
                        self.seen = np.concatenate([self.seen, np.zeros(max(i + 1, len(self.seen)), np.uint8)])
                    if self.seen[i]:
                        self.duplicates += 1
                    else:
                        self.seen[i] = 1
                        self.unique += 1
                    self.outputs += 1
                    if self.record_latency:
                        self.latencies.append(m.timestamp()[1] - int(sent_us) / 1000.0)
        self.consumer.close()


class Sender:
    """Keyed inputs (`<index>:<send time µs>`), as fast as possible or paced at a rate in steps of 10 ms."""

    def __init__(self, bootstrap: str, topic: str, texts: list[str]) -> None:
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
                                  "compression.type": "lz4"})
        self.topic, self.texts = topic, texts
        self.next = self.delivered = self.failed = 0
        self.stop_event = threading.Event()

    def _report(self, err: Any, _msg: Any) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1

    def send(self, count: int) -> None:
        for _ in range(count):
            i = self.next
            key = f"{i}:{time.time_ns() // 1000}".encode()
            value = orjson.dumps({"id": i, "text": self.texts[i % len(self.texts)]})
            while True:
                try:
                    self.producer.produce(self.topic, key=key, value=value, on_delivery=self._report)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.next += 1
        self.producer.poll(0)

    def paced(self, rate: float, seconds: float) -> None:
        start = time.perf_counter()
        while not self.stop_event.is_set():
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
            due = int(min(elapsed, seconds) * rate) - (self.next - self.first)
            if due > 0:
                self.send(due)
            time.sleep(0.01)
        self.producer.flush(120)

    def start_paced(self, rate: float, seconds: float) -> threading.Thread:
        self.first = self.next
        t = threading.Thread(target=self.paced, args=(rate, seconds), daemon=True)
        t.start()
        return t


def make_soak_topics(bootstrap: str, partitions: int) -> tuple[str, str, str]:
    """Input kept 30 min, output 2 min in 30 s segments: an hour of 768-d JSON would not fit on the disk, and
    the tally reads the outputs within seconds."""
    from confluent_kafka.admin import AdminClient, NewTopic

    tag = uuid.uuid4().hex[:8]
    names = (f"soak-in-{tag}", f"soak-out-{tag}", f"soak-dlq-{tag}")
    inp = {"retention.ms": str(30 * 60_000), "segment.ms": "60000"}
    out = {"message.timestamp.type": "LogAppendTime", "retention.ms": "120000", "segment.ms": "30000",
           "segment.bytes": str(64 * 2**20)}
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the futures resolve
    fs = admin.create_topics(
        [NewTopic(names[0], partitions, 1, config=inp), NewTopic(names[1], partitions, 1, config=out),
         NewTopic(names[2], 1, 1)])
    for f in fs.values():
        f.result(30)
    time.sleep(1.0)
    return names


def commit_lag(admin_consumer: Any, topic: str, partitions: int) -> int:
    from confluent_kafka import TopicPartition

    tps = [TopicPartition(topic, p) for p in range(partitions)]
    lag = 0
    for tp in admin_consumer.committed(tps, timeout=10):
        hi = admin_consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10, cached=False)[1]
        lag += hi - max(tp.offset, 0)
    return lag


def memory_by_process(pid: int) -> dict[str, tuple[int, int]]:
    """label -> (RSS, PSS) bytes; the worker's own process is "main", its children "child N" by start order."""
    from worker.metrics import read_smaps_rollup

    out: dict[str, tuple[int, int]] = {}
    for n, p in enumerate([pid, *sorted(children_of(pid))]):
        mem = read_smaps_rollup(p)
        if mem:
            out["main" if n == 0 else f"child {n}"] = (mem.get("Rss", 0), mem.get("Pss", 0))
    return out


def _interrupt(_sig: int, _frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a timeout, `kill`) stops the worker and a private broker like Ctrl-C does


def main(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    if args.bootstrap:
        return run(args, args.bootstrap)
    with PrivateBroker() as bootstrap:
        return run(args, bootstrap)


def start_worker(bootstrap: str, model: Path, topics: tuple[str, str, str], args: argparse.Namespace,
                 log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EMBED_KAFKA__BOOTSTRAP_SERVERS": bootstrap, "EMBED_INPUT_TOPIC": topics[0],
           "EMBED_OUTPUT_TOPIC": topics[1], "EMBED_DLQ_TOPIC": topics[2], "EMBED_MODEL__PATH": str(model),
           "EMBED_KAFKA__GROUP_ID": f"soak-{topics[0]}", "EMBED_OUTPUT__FORMAT": args.format,
           "EMBED_METRICS__PORT": str(free_port()), "EMBED_METRICS__HOST": "127.0.0.1",
           "EMBED_LOG__LEVEL": os.environ.get("EMBED_LOG__LEVEL", "WARNING")}
    with log.open("wb") as f:
        return subprocess.Popen([sys.executable, "-m", "worker", "run", "--processes", str(args.processes)], env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def calibrate(sender: Sender, tally: Tally, n: int, proc: subprocess.Popen[bytes]) -> float:
    """Outputs per second over the second half of an n-message backlog (start-up and warm-up left out)."""
    sender.send(n)
    sender.producer.flush(120)
    marks: dict[int, float] = {}
    deadline = time.time() + max(600.0, n / 50)
    while tally.unique < n and time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} while draining the calibration backlog")
        for mark in (n // 2, n):
            if tally.unique >= mark and mark not in marks:
                marks[mark] = time.perf_counter()
        progress(f"calibration: {tally.unique:,}/{n:,} outputs")
        time.sleep(0.05)
    marks.setdefault(n, time.perf_counter())
    if tally.unique < n or n // 2 not in marks:
        raise RuntimeError(f"calibration: only {tally.unique:,} of {n:,} outputs")
    rate = (n - n // 2) / max(marks[n] - marks[n // 2], 1e-3)
    progress(f"calibration: {n:,} outputs; maximum {rate:,.0f} msg/s\n")
    return rate


def run(args: argparse.Namespace, bootstrap: str) -> int:
    from worker.bench.encoder import machine_info, versions
    from worker.bench.pipeline import texts_for

    if args.model:
        model = Path(args.model)
    else:
        from worker.bench.gemma import build_model

        model = build_model("float16")
    texts = texts_for(args.text_set, 20_000)
    topics = make_soak_topics(bootstrap, args.partitions)
    n_intervals = max(1, round(args.minutes * 60 / args.interval))
    warmup = args.warmup if args.warmup is not None else (2 if n_intervals >= 10 else 1)
    settings = {k: v for k, v in vars(args).items() if k not in ("func",)} | {"model": str(model),
                                                                              "bootstrap": bootstrap}
    print(f"# bench soak — {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"machine: {machine_info()} cpus allowed: {sorted(os.sched_getaffinity(0))}")
    print(f"versions: {versions()}")
    print(f"settings: {settings}")
    log = Path(args.json).with_suffix(".worker.log") if args.json else Path(f"/tmp/{topics[0]}.worker.log")
    tally = Tally(bootstrap, [topics[1], topics[2]])
    tally.start()
    sender = Sender(bootstrap, topics[0], texts)
    proc = start_worker(bootstrap, model, topics, args, log)
    from confluent_kafka import Consumer

    group = Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-{topics[0]}", "enable.auto.commit": False})
    intervals: list[Interval] = []
    memory: dict[str, list[tuple[float, int]]] = {}
    exit_code: int | None = None
    try:
        max_rate = calibrate(sender, tally, args.calibration, proc)
        rate = args.rate or args.load * max_rate
        print(f"maximum (calibration, {args.calibration:,} messages): {max_rate:,.0f} msg/s; soak rate {rate:,.0f} "
              f"msg/s for {args.minutes:g} min, records every {args.interval:g} s, warm-up {warmup} record(s)",
              flush=True)
        tally.take()
        tally.record_latency = True
        t0 = time.perf_counter()
        feeder = sender.start_paced(rate, n_intervals * args.interval)
        for k in range(n_intervals):
            iv = Interval(index=k, start_s=k * args.interval, seconds=args.interval)
            sent_before = sender.next
            backlog: list[int] = []
            lags: list[int] = []
            end = t0 + (k + 1) * args.interval
            while time.perf_counter() < end:
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode} during the soak (log: {log})")
                now = time.perf_counter() - t0
                for label, (rss, pss) in memory_by_process(proc.pid).items():
                    memory.setdefault(label, []).append((now, rss))
                    iv.rss_mb[label] = max(iv.rss_mb.get(label, 0.0), rss / 2**20)
                    iv.pss_mb[label] = max(iv.pss_mb.get(label, 0.0), pss / 2**20)
                backlog.append(sender.delivered - tally.unique)
                lags.append(commit_lag(group, topics[0], args.partitions))
                progress(f"soak: record {k + 1}/{n_intervals}, {tally.unique:,} out, backlog {backlog[-1]:,}")
                time.sleep(max(0.0, min(SAMPLE_S, end - time.perf_counter())))
            iv.sent = sender.next - sent_before
            iv.outputs, lat = tally.take()
            if lat:
                a = np.asarray(lat)
                iv.p50_ms, iv.p99_ms, iv.max_ms = (float(np.percentile(a, 50)), float(np.percentile(a, 99)),
                                                   float(a.max()))
            iv.backlog_mean, iv.backlog_max = float(np.mean(backlog)), int(max(backlog))
            iv.commit_lag_mean, iv.commit_lag_max = float(np.mean(lags)), int(max(lags))
            intervals.append(iv)
        feeder.join()
        deadline = time.time() + 180
        while tally.unique < sender.delivered and time.time() < deadline and proc.poll() is None:
            progress(f"soak: draining, {sender.delivered - tally.unique:,} to go")
            time.sleep(0.5)
        time.sleep(2.0)  # any late repeat is counted too
        progress("")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                exit_code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                exit_code = proc.wait()
        else:
            exit_code = proc.returncode
        tally.stop_event.set()
        tally.join(10)
        group.close()
        delete_topics(bootstrap, list(topics))
    result = verdict(intervals, memory, rate=rate, warmup=warmup, sent=sender.delivered, unique=tally.unique,
                     duplicates=tally.duplicates, dead_letters=tally.dead_letters, exit_code=exit_code)
    if sender.failed:
        result["failures"].append(f"producer: {sender.failed:,} inputs were not delivered (the bench's own error)")
    print_table(intervals, warmup)
    print(f"\nsent {sender.delivered:,}, unique outputs {tally.unique:,}, duplicates {tally.duplicates:,}, "
          f"dead letters {tally.dead_letters:,}, worker exit {exit_code}")
    print(f"trends after warm-up: {result['trends']}")
    for f in result["failures"]:
        print(f"FAIL {f}")
    print("verdict: " + ("FAIL" if result["failures"] else "PASS"), flush=True)
    summary = {"settings": settings, "machine": machine_info(), "versions": versions(), "max_rate": max_rate,
               "rate": rate, "sent": sender.delivered, "unique": tally.unique, "duplicates": tally.duplicates,
               "dead_letters": tally.dead_letters, "exit_code": exit_code, "warmup": warmup,
               "intervals": [iv.row() for iv in intervals], "memory_samples": memory, **result}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot(intervals, memory, rate, f"bench soak: {args.minutes:g} min at {rate:,.0f} msg/s "
             f"({args.load:.0%} of {max_rate:,.0f}), {args.processes} process(es), {model.name}", args.plot)
    return 1 if result["failures"] else 0

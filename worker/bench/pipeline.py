"""`bench pipeline`: the whole path through a real broker, from a cold start, against the encoder alone.

Throughput: pre-load N messages into a P-partition topic, start `embedstream run --processes K`, stop the
clock when the output topic holds N. Worker CPU (user+sys of the worker processes only, read from /proc)
per message divided by the encoder's CPU per message on the same texts is the overhead ratio. Peak RSS
and PSS are sampled per process. Latency: produce at a fixed rate and read end-to-end latency from the
records themselves (input CreateTime -> output LogAppendTime). Baseline: a hand-written loop calling
model2vec once per message and producing json.dumps'd lists.

The /proc sampling and broker plumbing live in `harness`, the two baselines in `baselines`; this module keeps
the runs and their report.
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

from worker.bench.baselines import encoder_only, naive_run
from worker.bench.harness import (
    PrivateBroker,
    Sampler,
    children_of,
    delete_topics,
    make_topics,
    output_count,
    preload,
    progress,
)
from worker.bench.startup import free_port, memory_now, report_memory, wait_ready


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                   help="broker to use (default: KAFKA_BOOTSTRAP_SERVERS, else start a private local broker)")
    p.add_argument("--model", help="Model2Vec folder (default: the synthetic 768-d Unigram bench model)")
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--set", dest="text_set", choices=["short", "paragraph", "mixed", "documents"], default="short",
                   help="documents = 5,000-word texts (use with --chunking)")
    p.add_argument("--chunking", choices=["off", "words", "tokens"], default="off",
                   help="EMBED_CHUNKING__MODE for the worker runs (200-word chunks by default)")
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--processes", default="1,2", help="comma-separated process counts to run, e.g. 1,2")
    p.add_argument("--formats", default="json,f32", help="output formats to run")
    p.add_argument("--max-messages", type=int, default=512, help="EMBED_BATCH__MAX_MESSAGES")
    p.add_argument("--compression", default=os.environ.get("EMBED_OUTPUT__COMPRESSION", "none"),
                   help="EMBED_OUTPUT__COMPRESSION for the worker runs; comma-separated = one run per value "
                   "(e.g. lz4,zstd,snappy,none)")
    p.add_argument("--baseline-messages", type=int, default=20_000, help="naive baseline size; 0 = skip")
    p.add_argument("--latency", action="store_true", help="also run the fixed-rate latency mode")
    p.add_argument("--latency-seconds", type=float, default=20.0)
    p.add_argument("--latency-waits", default="5,20,100", help="max_wait_ms values for the latency mode")
    p.add_argument("--latency-load", type=float, default=0.5,
                   help="latency mode rate as a fraction of the measured 1-process json maximum")
    p.add_argument("--exactly-once", action="store_true",
                   help="also run 1 process per format with EMBED_PROCESSING_GUARANTEE=exactly_once")
    p.add_argument("--json", help="write all results here as JSON")


# ---- the runs ----

def worker_env(bootstrap: str, model: Path, topics: tuple[str, str, str], fmt: str, max_messages: int,
               max_wait_ms: int = 20, compression: str | None = None) -> dict[str, str]:
    return {**os.environ, "EMBED_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "EMBED_KAFKA__GROUP_ID": f"bench-{uuid.uuid4().hex[:8]}", "EMBED_INPUT_TOPIC": topics[0],
            "EMBED_OUTPUT_TOPIC": topics[1], "EMBED_DLQ_TOPIC": topics[2], "EMBED_MODEL__PATH": str(model),
            "EMBED_OUTPUT__FORMAT": fmt, "EMBED_BATCH__MAX_MESSAGES": str(max_messages),
            "EMBED_BATCH__MAX_WAIT_MS": str(max_wait_ms), "EMBED_METRICS__PORT": "0",
            "EMBED_METRICS__STATISTICS_INTERVAL_MS": "0", "EMBED_LOG__LEVEL": "WARNING",
            "EMBED_OUTPUT__COMPRESSION": compression or os.environ.get("EMBED_OUTPUT__COMPRESSION", "none"),
            "EMBED_CHUNKING__MODE": os.environ.get("EMBED_CHUNKING__MODE", "off")}


def throughput_run(bootstrap: str, model: Path, texts: list[str], partitions: int, processes: int, fmt: str,
                   max_messages: int, guarantee: str = "at_least_once", outputs: int | None = None,
                   compression: str | None = None) -> dict[str, Any]:
    """`outputs`: how many output records the texts make (more than len(texts) when chunking). A 1-process
    run also reports the per-message split by stage and the bytes on the wire (worker.bench.stages)."""
    from confluent_kafka import Consumer

    from worker.bench import stages

    docs = len(texts)
    n = outputs or docs
    label = f"{processes} proc, {fmt}, {guarantee}"
    topics = make_topics(bootstrap, partitions)
    preload(bootstrap, topics[0], texts, label)
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watch",
                        "isolation.level": "read_uncommitted"})
    env = worker_env(bootstrap, model, topics, fmt, max_messages, compression=compression)
    env["EMBED_PROCESSING_GUARANTEE"] = guarantee
    ready_port = free_port()  # /readyz for the start-up time, whatever K
    env.update(EMBED_METRICS__PORT=str(ready_port), EMBED_METRICS__HOST="127.0.0.1")
    port = ready_port if processes == 1 else 0  # the per-stage split scrapes one process's metrics
    env["EMBED_KAFKA__TRANSACTIONAL_ID"] = f"bench-{topics[0]}"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--processes", str(processes)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sampler = Sampler(proc.pid)
    sampler.start()
    startup: dict[str, float] = {}
    threading.Thread(target=wait_ready, args=(ready_port, t0, proc, startup), daemon=True).start()
    first_at = cpu_at_first = None
    split_at_first: tuple[dict[str, float], dict[int, tuple[str, float]]] | None = None
    done = done_at_first = 0
    deadline = time.time() + max(300.0, n / 200)
    reader = None
    if guarantee == "exactly_once":  # offsets include transaction markers: count committed records instead
        reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-count-{uuid.uuid4().hex[:6]}",
                           "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                           "enable.auto.commit": False})
        reader.subscribe([topics[1]])
    while done < n and time.time() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"worker exited with {proc.returncode}: {err}")
        if reader is not None:
            done += sum(1 for m in reader.consume(5000, 0.1) if not m.error())
        else:
            done = output_count(watcher, topics[1], partitions)
        if done and first_at is None:
            first_at, cpu_at_first, done_at_first = time.perf_counter(), sampler.total_cpu(), done
            if port:  # the split, like the steady CPU, leaves start-up out
                split_at_first = (stages.scrape_stages(port), stages.thread_cpu(proc.pid))
        progress(f"{label}: {done:,}/{n:,} outputs")
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    cpu_total = sampler.total_cpu()
    kids = children_of(proc.pid)
    after_private, after_pss = memory_now(kids if processes > 1 or guarantee == "exactly_once" else [proc.pid])
    after_total_pss = sum(memory_now([proc.pid, *kids])[1])
    split = None
    if port and split_at_first is not None:
        (s0, cpu0), s1, cpu1 = split_at_first, stages.scrape_stages(port), stages.thread_cpu(proc.pid)
        split = stages.split_per_message({k: v - s0.get(k, 0.0) for k, v in s1.items()},
                                         *stages.cpu_between(cpu0, cpu1), max(1, n - done_at_first))
    progress(f"{label}: {done:,}/{n:,} outputs in {elapsed:.1f}s\n")
    sampler.stop_event.set()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    watcher.close()
    if reader is not None:
        reader.close()
    wire = stages.wire_bytes_per_message(bootstrap, topics[1], n) if port and guarantee == "at_least_once" else None
    delete_topics(bootstrap, list(topics))
    if done < n:
        raise RuntimeError(f"{label}: only {done} of {n} outputs")
    assert first_at is not None and cpu_at_first is not None
    per_proc = [v for k, v in sampler.peak.items() if k != proc.pid or processes == 1]
    return {
        "processes": processes, "format": fmt, "guarantee": guarantee, "messages": docs, "outputs": n,
        "compression": env["EMBED_OUTPUT__COMPRESSION"], "split_us_per_message": split,
        "wire_bytes_per_message": wire,
        "seconds": elapsed, "messages_per_s": docs / elapsed, "outputs_per_s": n / elapsed,
        "cpu_s_total": cpu_total, "cpu_s_per_10k": cpu_total / n * 10_000,
        **steady_figures(n, done_at_first, elapsed, first_at - t0, startup.get("startup_s", 0.0), cpu_total,
                         cpu_at_first),
        "peak_rss_mb": [round(p["rss"] / 2**20, 1) for p in per_proc],
        "peak_pss_mb": [round(p["pss"] / 2**20, 1) for p in per_proc],
        "peak_private_mb": [round(p["private"] / 2**20, 1) for p in per_proc],
        "peak_total_pss_mb": round(sampler.peak_total_pss / 2**20, 1),
        # Start-up = process start to /readyz 200; memory read once the output holds every message.
        "startup_s": startup.get("startup_s", float("nan")),
        "after_private_mb": after_private, "after_pss_mb": after_pss,
        "after_total_pss_mb": round(after_total_pss, 1),
    }


def steady_figures(n: int, done_at_first: int, elapsed: float, first_at: float, ready_s: float, cpu_total: float,
                   cpu_at_first: float) -> dict[str, Any]:
    """Rate and CPU per message in the steady state: after the first output (start-up left out), when that
    window holds at least half the outputs. Otherwise (a short run that finished between two looks at the
    output) the rate is every output over the time from ready to done, and the CPU the whole run's: a
    lower bound, never 0 (the latency mode paces its load by this rate)."""
    steady_msgs, steady_s = n - done_at_first, elapsed - first_at
    if steady_msgs >= n // 2 and steady_s > 0 and steady_msgs > 0:
        return {"steady_messages_per_s": steady_msgs / steady_s, "cpu_basis": "steady",
                "steady_cpu_s_per_10k": (cpu_total - cpu_at_first) / steady_msgs * 10_000}
    busy_s = elapsed - ready_s if 0 < ready_s < elapsed else elapsed
    return {"steady_messages_per_s": n / busy_s, "cpu_basis": "total", "steady_cpu_s_per_10k": cpu_total / n * 10_000}


def latency_run(bootstrap: str, model: Path, texts: list[str], rate: float, seconds: float, max_wait_ms: int,
                max_messages: int) -> dict[str, Any]:
    """Produce at `rate` msg/s for `seconds`; latency = output LogAppendTime - input CreateTime."""
    if int(rate * seconds) < 1:
        raise ValueError(f"latency mode: {rate:.2f} msg/s for {seconds} s sends no message to measure")
    from confluent_kafka import Consumer, Producer

    from worker.readiness import wait_until_ready

    topics = make_topics(bootstrap, 4, log_append_output=True)
    env = worker_env(bootstrap, model, topics, "json", max_messages, max_wait_ms)
    port = free_port()
    env.update(EMBED_METRICS__PORT=str(port), EMBED_METRICS__HOST="127.0.0.1",
               EMBED_METRICS__STATISTICS_INTERVAL_MS="1000")
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    # Model loaded and group joined before the clock starts (not ready in 60 s: measured all the same).
    wait_until_ready(f"http://127.0.0.1:{port}/readyz", 60)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "enable.idempotence": True})
    stamps: dict[tuple[int, int], int] = {}
    warmup = int(rate * 2)  # the first 2 s warm the caches and are not measured

    def report(err: Any, msg: Any) -> None:
        if err is None and int(msg.key()[1:]) >= warmup:
            stamps[(msg.partition(), msg.offset())] = msg.timestamp()[1]

    total = warmup + int(rate * seconds)
    start = time.perf_counter()
    for i in range(total):
        if i % 10 == 0:  # pace in steps of 10 messages: the load generator must not eat the worker's CPU
            ahead = i / rate - (time.perf_counter() - start)
            if ahead > 0:
                time.sleep(ahead)
            producer.poll(0)
        producer.produce(topics[0], key=f"k{i}".encode(), value=orjson.dumps({"id": i, "text": texts[i % len(texts)]}),
                         on_delivery=report)
        if i % 500 == 0:
            progress(f"latency max_wait_ms={max_wait_ms}: {i:,}/{total:,} at {rate:,.0f}/s")
    producer.flush(60)
    total -= warmup
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lat-{uuid.uuid4().hex[:6]}",
                       "auto.offset.reset": "earliest"})
    reader.subscribe([topics[1]])
    lat: list[float] = []
    deadline = time.time() + 60
    while len(lat) < total and time.time() < deadline:
        for m in reader.consume(1000, 0.5):
            if m.error():
                continue
            h = dict(m.headers() or [])
            key = (int(h["source-partition"] or 0), int(h["source-offset"] or -1))
            if key in stamps:
                lat.append((m.timestamp()[1] - stamps[key]) / 1000.0)
    reader.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    delete_topics(bootstrap, list(topics))
    progress(f"latency max_wait_ms={max_wait_ms}: {len(lat):,} measured\n")
    a = np.asarray(lat) if lat else np.zeros(1)
    return {"max_wait_ms": max_wait_ms, "rate": rate, "messages": len(lat), "sent": total,
            "p50_ms": float(np.percentile(a, 50) * 1000), "p95_ms": float(np.percentile(a, 95) * 1000),
            "p99_ms": float(np.percentile(a, 99) * 1000), "max_ms": float(a.max() * 1000)}


def texts_for(text_set: str, n: int) -> list[str]:
    from worker.bench.synthetic.texts import paragraph_texts, short_texts

    if text_set == "short":
        return short_texts(n, seed=7)
    if text_set == "paragraph":
        return paragraph_texts(n, seed=7)
    if text_set == "documents":  # ~5,000 words each: 50 paragraphs of ~100 words
        paragraphs = paragraph_texts(n * 50, seed=9)
        return ["\n\n".join(paragraphs[i * 50:(i + 1) * 50]) for i in range(n)]
    half = n // 2
    return [t for pair in zip(short_texts(half, seed=7), paragraph_texts(n - half, seed=8), strict=False)
            for t in pair][:n]


def main(args: argparse.Namespace) -> int:
    if args.bootstrap:
        return run_all(args, args.bootstrap)
    with PrivateBroker() as bootstrap:
        return run_all(args, bootstrap)


def print_split(runs: list[dict[str, Any]], encoder_us: float) -> None:
    """Per message, 1-process runs: loop-thread time by stage, the loop thread's other CPU, the client
    threads' CPU (compression, network), and the bytes fetched from the output topic."""
    rows = [r for r in runs if r.get("split_us_per_message")]
    if not rows:
        return
    from worker.bench.stages import SPLIT_STAGES

    cols = [*SPLIT_STAGES, "loop_other", "librdkafka", "other_threads"]
    print(f"\nCPU per message, 1 process, steady (µs; encoder alone {encoder_us:.1f} µs):")
    print("\n| format | compression | guarantee | " + " | ".join(cols) + " | total CPU | wire bytes |")
    print("|---|---|---|" + "---:|" * (len(cols) + 2))
    for r in rows:
        sp = r["split_us_per_message"]
        wire = r.get("wire_bytes_per_message")
        print(f"| {r['format']} | {r['compression']} | {r['guarantee']} | "
              + " | ".join(f"{sp[c]:.1f}" for c in cols)
              + f" | {r['steady_cpu_s_per_10k'] * 100:.1f} | {f'{wire:,.0f}' if wire else '-'} |", flush=True)


def run_all(args: argparse.Namespace, bootstrap: str) -> int:
    compressions = [c for c in args.compression.split(",") if c]
    os.environ["EMBED_OUTPUT__COMPRESSION"] = compressions[0]
    os.environ["EMBED_CHUNKING__MODE"] = args.chunking
    from worker.bench.encoder import machine_info, versions
    from worker.bench.synthetic.model_cache import cached_model

    model = Path(args.model) if args.model else cached_model("unigram", vocab_size=32_768, dim=768)
    texts = texts_for(args.text_set, args.messages)
    machine, vers = machine_info(), versions()
    print(f"# bench pipeline — {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"machine: {machine}")
    print(f"versions: {vers}")
    print(f"settings: messages={args.messages} set={args.text_set} partitions={args.partitions} "
          f"processes={args.processes} formats={args.formats} max_messages={args.max_messages} "
          f"compression={args.compression} model={model}")
    enc = encoder_only(model, texts, args.max_messages)
    print(f"\nencoder alone: {enc['messages_per_s']:,.0f} msg/s, {enc['tokens_per_s']:,.0f} tokens/s, "
          f"{enc['cpu_s_per_10k']:.3f} CPU-s per 10k messages")
    results: dict[str, Any] = {"machine": machine, "versions": vers, "settings": vars(args) | {"model": str(model)},
                               "encoder": enc, "runs": [], "latency": []}
    print("\n| processes | format | compression | guarantee | msg/s | tokens/s | CPU-s/10k (steady) | "
          "overhead ratio | peak RSS MB | peak PSS MB | private MB | total PSS MB |")
    print("|---|---|---|---|---:|---:|---:|---:|---|---|---|---:|")
    tokens_per_msg = enc["tokens"] / enc["messages"]
    formats = [f for f in args.formats.split(",") if f]
    plan = [(k, fmt, "at_least_once", c) for k in [int(x) for x in args.processes.split(",") if x]
            for fmt in formats for c in compressions]
    if args.exactly_once:
        plan += [(1, fmt, "exactly_once", compressions[0]) for fmt in formats]
    outputs = None
    if args.chunking != "off":
        from tokenizers import Tokenizer

        from worker.chunking import Chunker
        from worker.settings import ChunkingSettings

        chunker = Chunker(ChunkingSettings(mode=args.chunking), Tokenizer.from_file(str(model / "tokenizer.json")))
        outputs = sum(len(chunker.split(t)) for t in texts)
        print(f"chunking {args.chunking}: {len(texts):,} documents -> {outputs:,} chunks "
              f"({outputs / len(texts):.1f} per document)")
    for k, fmt, guarantee, comp in plan:
        r = throughput_run(bootstrap, model, texts, args.partitions, k, fmt, args.max_messages, guarantee, outputs,
                           comp)
        if outputs:
            print(f"  {k} process(es), {fmt}: {r['messages_per_s']:,.1f} documents/s, "
                  f"{r['outputs_per_s']:,.0f} chunks/s")
        r["overhead_ratio"] = r["steady_cpu_s_per_10k"] / enc["cpu_s_per_10k"]
        results["runs"].append(r)
        print(f"| {k} | {fmt} | {comp} | {guarantee} | {r['messages_per_s']:,.0f} | "
              f"{r['messages_per_s'] * tokens_per_msg:,.0f} | "
              f"{r['steady_cpu_s_per_10k']:.3f} ({r['cpu_basis']}) | {r['overhead_ratio']:.2f} | "
              f"{r['peak_rss_mb']} | {r['peak_pss_mb']} | {r['peak_private_mb']} | {r['peak_total_pss_mb']} |",
              flush=True)
    print_split(results["runs"], enc["cpu_s_per_10k"] / 10_000 * 1e6)
    report_memory(results["runs"])
    if args.baseline_messages:
        base = naive_run(bootstrap, model, texts[: args.baseline_messages], args.partitions)
        results["baseline"] = base
        best = max((r["messages_per_s"] for r in results["runs"] if r["processes"] == 1
                    and r["guarantee"] == "at_least_once"), default=0.0)
        print(f"\nnaive baseline (model2vec per message, json.dumps): {base['messages_per_s']:,.0f} msg/s; "
              f"ours (1 process) / baseline = {best / base['messages_per_s']:.1f}x")
    if args.latency:
        one = [r for r in results["runs"] if r["processes"] == 1 and r["format"] == "json"
               and r["guarantee"] == "at_least_once"]
        max_rate = one[0]["steady_messages_per_s"] if one else 5000.0
        print("\n| max_wait_ms | rate msg/s | p50 ms | p95 ms | p99 ms | max ms | measured |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for wait in [int(x) for x in args.latency_waits.split(",")]:
            lr = latency_run(bootstrap, model, texts, max_rate * args.latency_load, args.latency_seconds, wait,
                             args.max_messages)
            results["latency"].append(lr)
            print(f"| {wait} | {lr['rate']:,.0f} | {lr['p50_ms']:.1f} | {lr['p95_ms']:.1f} | {lr['p99_ms']:.1f} | "
                  f"{lr['max_ms']:.1f} | {lr['messages']:,}/{lr['sent']:,} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0

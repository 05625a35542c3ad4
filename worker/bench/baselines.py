"""`bench pipeline`'s baselines: the encoder alone (the floor a worker's CPU per message is compared with) and
a naive hand-written loop (model2vec once per message, json.dumps'd lists).

Why a module of its own: the baselines are what the pipeline is measured against, and change independently of it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from worker.bench.harness import cpu_seconds, delete_topics, make_topics, output_count, preload, progress

ENCODER_ONLY = textwrap.dedent(
    """
    import json, sys, time
    from worker.model import load_model
    from worker.encoder import Encoder
    texts = json.load(open(sys.argv[2]))
    enc = Encoder(load_model(sys.argv[1]))
    enc.pooler.compile_now()  # as in a worker once its background compile is done
    size = int(sys.argv[3])
    enc.encode(texts[:size])  # warm-up
    c0, t0 = time.process_time(), time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), size):
        tokens += int(enc.encode_batch(texts[i:i + size]).token_counts.sum())
    print(json.dumps({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0, "tokens": tokens}))
    """
)


def encoder_only(model: Path, texts: list[str], batch: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(texts, f)
    try:
        out = subprocess.run([sys.executable, "-c", ENCODER_ONLY, str(model), f.name, str(batch)],
                             capture_output=True, text=True, check=True)
    finally:
        os.unlink(f.name)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    n = len(texts)
    return {"messages": n, "cpu_s": r["cpu_s"], "cpu_s_per_10k": r["cpu_s"] / n * 10_000,
            "messages_per_s": n / r["wall_s"], "tokens": r["tokens"], "tokens_per_s": r["tokens"] / r["wall_s"]}


NAIVE = textwrap.dedent(
    """
    # What a user writes by hand: one message, one encode call, json.dumps of a list.
    import json, sys
    from confluent_kafka import Consumer, Producer
    from model2vec import StaticModel
    bootstrap, model, inp, out = sys.argv[1:5]
    m = StaticModel.from_pretrained(model)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "naive-" + inp, "auto.offset.reset": "earliest"})
    p = Producer({"bootstrap.servers": bootstrap})
    c.subscribe([inp])
    while True:
        msg = c.poll(1.0)
        if msg is None or msg.error():
            continue
        doc = json.loads(msg.value())
        vec = m.encode([doc["text"]])[0]
        p.produce(out, key=msg.key(), value=json.dumps({"id": doc["id"], "embedding": vec.tolist()}))
        p.poll(0)
    """
)


def naive_run(bootstrap: str, model: Path, texts: list[str], partitions: int) -> dict[str, Any]:
    from confluent_kafka import Consumer

    n = len(texts)
    topics = make_topics(bootstrap, partitions)
    preload(bootstrap, topics[0], texts, "naive baseline")
    watcher = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-watch"})
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", NAIVE, bootstrap, str(model), topics[0], topics[1]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done = 0
    deadline = time.time() + max(600.0, n / 50)
    while done < n and time.time() < deadline and proc.poll() is None:
        done = output_count(watcher, topics[1], partitions)
        progress(f"naive baseline: {done:,}/{n:,} outputs")
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(proc.pid)
    progress(f"naive baseline: {done:,}/{n:,} outputs in {elapsed:.1f}s\n")
    proc.kill()
    proc.wait(10)
    watcher.close()
    delete_topics(bootstrap, list(topics))
    return {"messages": done, "seconds": elapsed, "messages_per_s": done / elapsed, "cpu_s_per_10k":
            cpu / max(done, 1) * 10_000}

"""The worker end to end on a real broker; every test counts every message."""

from __future__ import annotations

import collections
import signal
import time

import numpy as np
import orjson
import pytest

from kafkatools import Collector, WorkerProcess, committed_offsets, json_messages, produce, run_to_completion, wait_for
from worker.encoder import Encoder
from worker.model import load_model

pytestmark = pytest.mark.integration


def decode_outputs(records):
    return [orjson.loads(r.value) for r in records]


def check_per_key_order(records) -> None:
    """Within each key, sequence numbers (id = key:seq) never go backwards in output order."""
    last: dict[str, int] = {}
    for r in records:
        ident = orjson.loads(r.value)["id"]
        key, seq = ident.rsplit(":", 1)
        assert int(seq) > last.get(key, -1), f"key {key}: {seq} after {last.get(key)}"
        last[key] = int(seq)


def test_20000_keyed_messages_arrive_complete_in_order_and_correct(bootstrap, topics, worker_env, small_model,
                                                                    tmp_path):
    n = 20_000
    inp, out, dlq = topics(partitions=4)
    msgs = json_messages(n, keys=100)
    produce(bootstrap, inp, msgs)
    collector = Collector(bootstrap, out)
    try:
        records = run_to_completion(worker_env(inp, out, dlq), tmp_path / "worker.log", collector, n, 180, 2)
    finally:
        collector.close()
    assert len(records) == n, f"{len(records)} outputs for {n} inputs"
    docs = decode_outputs(records)
    ids = [d["id"] for d in docs]
    assert len(set(ids)) == n
    by_id = {orjson.loads(v)["id"]: (k, orjson.loads(v)["text"], h) for k, v, h in msgs}
    assert set(ids) == set(by_id)

    # Same key as the input, source headers, input headers passed through, JSON fields.
    for r, d in zip(records, docs, strict=True):
        key, _, headers = by_id[d["id"]]
        assert r.key == key
        assert r.headers["source-topic"] == inp.encode()
        assert int(r.headers["source-partition"]) == r.partition  # same key -> same partition count
        assert int(r.headers["source-offset"]) >= 0
        assert r.headers["trace-id"] == headers[0][1]
        assert d["dim"] == 32 and len(d["embedding"]) == 32 and d["model"] == small_model.name
    check_per_key_order(records)

    # Vectors equal the encoder's on the same texts.
    enc = Encoder(load_model(small_model))
    sample = docs[:: 37]
    expected = enc.encode([by_id[d["id"]][1] for d in sample])
    got = np.array([d["embedding"] for d in sample], dtype=np.float32)
    assert np.abs(got - expected).max() <= 1e-6


def test_mixed_good_and_bad_messages_reconcile_exactly(bootstrap, topics, worker_env, tmp_path):
    inp, out, dlq = topics(partitions=2)
    good = json_messages(500, keys=10, seed=3)
    bad = [
        (b"b1", b"\xff\xfe not utf8", None, "invalid_utf8"),
        (b"b2", b'{"id": 1, "text": ', None, "invalid_json"),
        (b"b3", b"[1, 2, 3]", None, "invalid_json"),
        (b"b4", b'{"id": "x", "body": "no text"}', None, "missing_text"),
        (b"b5", b'{"id": "x", "text": 42}', None, "non_string_text"),
        (b"b6", None, None, "null_value"),
        (b"b7", b'{"id": "x", "text": "   \\n\\t "}', None, "empty_text"),
        (b"b8", b'{"id": "x", "text": ""}', None, "empty_text"),
        (b"b9", orjson.dumps({"id": "big", "text": "x " * 40_000}), [("h", b"v")], "too_large"),
        (b"b10", b'{"id": "x", "text": null}', None, "non_string_text"),
    ]
    stream: list = []
    for i, g in enumerate(good):
        stream.append(g)
        if i % 50 == 0 and bad:
            b = bad[len(stream) % len(bad)]
            stream.append(b[:3])
    for b in bad:
        stream.append(b[:3])
    expected_bad = collections.Counter()
    bad_by_value = {b[1]: b[3] for b in bad}
    for _k, v, _h in stream:
        if v in bad_by_value:
            expected_bad[bad_by_value[v]] += 1
    n_bad = sum(expected_bad.values())
    produce(bootstrap, inp, stream)

    worker = WorkerProcess(worker_env(inp, out, dlq, EMBED_INPUT__MAX_BYTES="50000"), tmp_path / "w.log")
    outs, dead = Collector(bootstrap, out), Collector(bootstrap, dlq)
    try:
        out_records = outs.poll_until(len(good), timeout=120, settle=2)
        dlq_records = dead.poll_until(n_bad, timeout=60, settle=2)
        wait_for(lambda: worker.metric("embedstream_messages_consumed_total") == len(stream), 30, "metrics")
        consumed = worker.metric("embedstream_messages_consumed_total")
        produced = worker.metric("embedstream_messages_produced_total")
    finally:
        assert worker.stop() == 0, worker.log_tail()
        outs.close()
        dead.close()
    assert len(out_records) == len(good)
    assert len(dlq_records) == n_bad
    assert len(out_records) + len(dlq_records) == len(stream)
    assert consumed == len(stream) and produced == len(good)
    got_reasons = collections.Counter(r.headers["error-type"].decode() for r in dlq_records)
    assert got_reasons == expected_bad
    for r in dlq_records:
        assert r.headers["error-message"]
        assert r.headers["source-topic"] == inp.encode()
        assert {"source-partition", "source-offset"} <= set(r.headers)
        assert r.value == next(v for k, v, h in stream if k == r.key)  # original value kept
        if r.key == b"b9":
            assert r.headers["h"] == b"v"  # original headers kept


def _assert_complete(records, n: int) -> tuple[int, collections.Counter]:
    ids = collections.Counter(orjson.loads(r.value)["id"] for r in records)
    assert len(ids) == n, f"{n - len(ids)} messages missing"
    dupes = sum(c - 1 for c in ids.values())
    return dupes, ids


def test_sigterm_mid_stream_loses_nothing_and_commits_where_the_next_worker_resumes(
        bootstrap, topics, worker_env, tmp_path):
    n = 30_000
    inp, out, dlq = topics(partitions=3)
    produce(bootstrap, inp, json_messages(n, keys=60, seed=5))
    env = worker_env(inp, out, dlq, EMBED_BATCH__MAX_MESSAGES="100")
    w1 = WorkerProcess(env, tmp_path / "w1.log")
    collector = Collector(bootstrap, out)
    try:
        wait_for(lambda: (w1.metric("embedstream_messages_produced_total") or 0) >= 2000, 120, "first outputs")
        t0 = time.time()
        assert w1.stop(timeout=30) == 0, w1.log_tail()
        assert time.time() - t0 < 25  # within the grace period
        first = list(collector.poll_until(10**9, timeout=5))
        offsets = committed_offsets(bootstrap, env["EMBED_KAFKA__GROUP_ID"], inp, 3)
        # Everything before the committed offsets was produced, nothing after it: commits match outputs.
        assert sum(offsets.values()) == len(first) and len(first) < n
        per_partition = collections.Counter(int(r.headers["source-partition"]) for r in first)
        assert {p: per_partition.get(p, 0) for p in range(3)} == offsets

        records = run_to_completion(env, tmp_path / "w2.log", collector, n, 180, 3)
    finally:
        collector.close()
    dupes, _ = _assert_complete(records, n)
    assert dupes == 0


def test_kill9_and_restart_loses_nothing_duplicates_bounded(bootstrap, topics, worker_env, tmp_path):
    n = 30_000
    batch, in_flight = 100, 4
    inp, out, dlq = topics(partitions=3)
    produce(bootstrap, inp, json_messages(n, keys=60, seed=9))
    env = worker_env(inp, out, dlq, EMBED_BATCH__MAX_MESSAGES=str(batch),
                     EMBED_BATCH__MAX_IN_FLIGHT_BATCHES=str(in_flight), EMBED_KAFKA__COMMIT_INTERVAL_MS="0")
    collector = Collector(bootstrap, out)
    try:
        w1 = WorkerProcess(env, tmp_path / "w1.log")
        wait_for(lambda: (w1.metric("embedstream_messages_produced_total") or 0) >= 3000, 120, "first outputs")
        w1.signal(signal.SIGKILL)
        w1.kill()
        records = run_to_completion(env, tmp_path / "w2.log", collector, n, 180, 3)
    finally:
        collector.close()
    dupes, _ = _assert_complete(records, n)
    # Committed after every acknowledged batch: a kill repeats at most the batches in flight (+1 being committed).
    assert dupes <= (in_flight + 1) * batch * 3, dupes


def test_two_workers_split_partitions_and_a_third_joins_mid_stream(bootstrap, topics, worker_env, tmp_path):
    n = 40_000
    parts = 6
    inp, out, dlq = topics(partitions=parts)
    produce(bootstrap, inp, json_messages(n, keys=120, seed=11))
    env = worker_env(inp, out, dlq, EMBED_BATCH__MAX_MESSAGES="100")
    collector = Collector(bootstrap, out)
    workers = []
    try:
        workers = [WorkerProcess(env, tmp_path / f"w{i}.log") for i in range(2)]
        for w in workers:
            w.wait_ready()
        wait_for(lambda: sum(w.metric("embedstream_assigned_partitions") or 0 for w in workers) == parts, 60,
                 "6 partitions split over 2 workers")
        assert all((w.metric("embedstream_assigned_partitions") or 0) >= 1 for w in workers)
        wait_for(lambda: sum(w.metric("embedstream_messages_produced_total") or 0 for w in workers) >= 5000, 120,
                 "outputs before the third joins")
        workers.append(WorkerProcess(env, tmp_path / "w2.log"))
        workers[2].wait_ready()
        wait_for(lambda: sum(w.metric("embedstream_assigned_partitions") or 0 for w in workers) == parts
                 and (workers[2].metric("embedstream_assigned_partitions") or 0) >= 1, 60, "rebalance to 3")
        records = collector.poll_until(n, timeout=180, settle=3)
        for w in workers:
            assert w.stop() == 0, w.log_tail()
    finally:
        for w in workers:
            w.kill()
        collector.close()
    dupes, _ = _assert_complete(records, n)
    assert dupes == 0  # cooperative rebalance: revoked partitions are drained and committed first
    check_per_key_order(records)

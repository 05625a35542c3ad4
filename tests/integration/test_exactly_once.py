"""processing_guarantee=exactly_once: a read_committed consumer sees every input once, through kills,
graceful stops and rebalances."""

from __future__ import annotations

import collections
import signal

import orjson
import pytest

from kafkatools import Collector, WorkerProcess, json_messages, produce, run_to_completion, wait_for

pytestmark = pytest.mark.integration


def eos_env(worker_env, topics, txid: str, **extra: str) -> dict[str, str]:
    return worker_env(*topics, EMBED_PROCESSING_GUARANTEE="exactly_once", EMBED_KAFKA__TRANSACTIONAL_ID=txid,
                      EMBED_BATCH__MAX_MESSAGES="200", **extra)


def exactly_once(records, n: int) -> None:
    ids = collections.Counter(orjson.loads(r.value)["id"] for r in records)
    assert len(ids) == n, f"{n - len(ids)} missing"
    dupes = {k: c for k, c in ids.items() if c > 1}
    assert not dupes, f"{len(dupes)} duplicated ids, e.g. {list(dupes.items())[:3]}"


def test_kill9_twice_then_sigterm_no_loss_no_duplicates(bootstrap, topics, worker_env, tmp_path):
    n = 20_000
    names = topics(partitions=3)
    produce(bootstrap, names[0], json_messages(n, keys=30, seed=41))
    env = eos_env(worker_env, names, "eos-kill")
    collector = Collector(bootstrap, names[1])
    try:
        for round_ in range(2):
            w = WorkerProcess(env, tmp_path / f"w{round_}.log")
            target = 3000 * (round_ + 1)
            wait_for(lambda w=w, t=target: (w.metric("embedstream_messages_produced_total") or 0) >= 2500 or
                     len(collector.poll_until(t, timeout=0.5)) >= t, 120, "progress before the kill")
            w.signal(signal.SIGKILL)
            w.kill()
        records = run_to_completion(env, tmp_path / "final.log", collector, n, 240, 5)
    finally:
        collector.close()
    exactly_once(records, n)


def test_rebalance_under_exactly_once_no_duplicates(bootstrap, topics, worker_env, tmp_path):
    n = 20_000
    names = topics(partitions=4)
    produce(bootstrap, names[0], json_messages(n, keys=40, seed=43))
    collector = Collector(bootstrap, names[1])
    workers = []
    try:
        base = worker_env(*names)
        group = base["EMBED_KAFKA__GROUP_ID"]
        workers = [WorkerProcess(eos_env(worker_env, names, f"eos-rb-{i}", EMBED_KAFKA__GROUP_ID=group),
                                 tmp_path / f"w{i}.log") for i in range(2)]
        wait_for(lambda: sum(w.metric("embedstream_messages_produced_total") or 0 for w in workers) >= 4000, 120,
                 "progress with two workers")
        workers.append(WorkerProcess(eos_env(worker_env, names, "eos-rb-2", EMBED_KAFKA__GROUP_ID=group),
                                     tmp_path / "w2.log"))
        wait_for(lambda: (workers[2].metric("embedstream_assigned_partitions") or 0) >= 1, 60, "third worker joins")
        assert workers[0].stop() == 0, workers[0].log_tail()  # and one leaves
        records = collector.poll_until(n, timeout=240, settle=5)
        for w in workers[1:]:
            assert w.stop() == 0, w.log_tail()
    finally:
        for w in workers:
            w.kill()
        collector.close()
    exactly_once(records, n)

"""`run --processes K`: K group members under one supervisor that restarts them and aggregates metrics."""

from __future__ import annotations

import collections
import os
import signal

import orjson
import pytest

from kafkatools import Collector, WorkerProcess, json_messages, produce, wait_for
from worker.metrics import read_smaps_rollup

pytestmark = pytest.mark.integration


def child_pids(worker: WorkerProcess) -> dict[int, int]:
    """process index -> latest pid, from the supervisor's 'process started' log lines."""
    pids: dict[int, int] = {}
    for line in worker.log_path.read_text().splitlines():
        if line.startswith("{"):
            doc = orjson.loads(line)
            if doc.get("msg") == "process started":
                pids[doc["child"]] = doc["pid"]
    return pids


def total(worker: WorkerProcess, name: str) -> float:
    status, body = worker.get("/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def test_two_processes_share_the_work_restart_after_a_crash_and_stop_on_sigterm(
        bootstrap, topics, worker_env, tmp_path):
    n = 20_000
    inp, out, dlq = topics(partitions=4)
    produce(bootstrap, inp, json_messages(n, keys=40, seed=31))
    worker = WorkerProcess(worker_env(inp, out, dlq, EMBED_BATCH__MAX_MESSAGES="100"), tmp_path / "sup.log",
                           processes=2)
    collector = Collector(bootstrap, out)
    try:
        worker.wait_ready(timeout=90)
        _, body = worker.get("/metrics")
        assigned = {line for line in body.splitlines() if line.startswith("embedstream_assigned_partitions{")}
        assert len(assigned) == 2 and all('process="' in line for line in assigned)
        wait_for(lambda: total(worker, "embedstream_assigned_partitions") == 4, 60, "4 partitions over 2 processes")
        wait_for(lambda: total(worker, "embedstream_messages_produced_total") >= 3000, 120, "first outputs")

        pids = child_pids(worker)
        assert len(pids) == 2
        # Both children map the same table: its pages are shared, not copied.
        for pid in pids.values():
            assert read_smaps_rollup(pid).get("Pss", 0) > 0
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: child_pids(worker).get(0) not in (None, pids[0]), 30, "the killed process to restart")
        records = collector.poll_until(n, timeout=180, settle=3)
        code = worker.stop(timeout=60)
    finally:
        worker.kill()
        collector.close()
    assert code == 0, worker.log_tail()
    ids = collections.Counter(orjson.loads(r.value)["id"] for r in records)
    assert len(ids) == n  # nothing missing after the crash; duplicates allowed
    for pid in child_pids(worker).values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # SIGTERM was forwarded: no child left behind

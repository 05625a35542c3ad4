"""The last offsets of a burst are committed once the input goes quiet (issue 17: the group's lag stayed above 0
until the next input arrived, because offsets were committed only when a batch completed)."""

from __future__ import annotations

import time

import pytest

from kafkatools import Collector, WorkerProcess, committed, json_messages, produce

pytestmark = pytest.mark.integration


def test_burst_fully_committed_while_idle(bootstrap, topics, worker_env, tmp_path):
    n, parts = 6_000, 2
    inp, out, dlq = topics(partitions=parts)
    env = worker_env(inp, out, dlq)
    worker = WorkerProcess({**env, "EMBED_KAFKA__COMMIT_INTERVAL_MS": "2000"}, tmp_path / "worker.log")
    collector = Collector(bootstrap, out)
    try:
        worker.wait_ready()
        produce(bootstrap, inp, json_messages(n, keys=20, seed=17))
        assert len(collector.poll_until(n, timeout=120)) == n
        deadline = time.time() + 15  # the input is quiet now: within ~one commit interval every offset is committed
        total = 0
        while time.time() < deadline:
            total = sum(max(o, 0) for o in committed(bootstrap, env["EMBED_KAFKA__GROUP_ID"], inp, parts).values())
            if total == n:
                break
            time.sleep(0.5)
        assert total == n, f"committed {total} of {n} while the input was quiet"
        assert worker.stop() == 0, worker.log_tail()
    finally:
        worker.kill()
        collector.close()

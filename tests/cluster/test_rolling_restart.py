"""Cluster fault d: a rolling restart of all three nodes under load (SIGTERM, controlled shutdown, start,
wait for every replica back in sync, next node), the way an operator upgrades a cluster. Exactly once: nothing
missing or doubled; at least once: nothing missing."""

from __future__ import annotations

import time

import pytest
from faultkit import note
from scenario import close_after, start

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["exactly_once"])
def test_rolling_restart_under_load(mode, cluster, topics, worker_env, tmp_path):
    s = start(cluster, topics, worker_env, "rolling", mode, n=12_000, seconds=60)
    with close_after(s):
        w = s.start_worker(tmp_path / "w.log", 1_500)
        for node in (1, 2, 3):
            t0 = time.monotonic()
            cluster.stop_node(node)
            s.tally.poll(3)
            cluster.start_node(node)
            isr = cluster.wait_full_isr(list(s.names), timeout=180)
            note(f"node {node} restarted in {time.monotonic() - t0 - isr:.0f} s, ISR full {isr:.0f} s later, "
                 f"{s.tally.seen} inputs seen")
        s.healed = time.monotonic()
        s.finish(3, "rolling restart of nodes 1, 2, 3 (SIGTERM, start, ISR full)", [w])

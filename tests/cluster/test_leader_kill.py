"""Cluster fault a: kill -9 of the node leading input and output partitions mid-stream, restarted a minute
later. Leaders move to the two survivors (min.insync.replicas=2 still met), the worker's producer and consumer
follow them; at least once: nothing missing, duplicates bounded; exactly once: nothing missing or doubled."""

from __future__ import annotations

import time

import pytest
from faultkit import note
from scenario import close_after, leader_of_both, start

pytestmark = [pytest.mark.cluster, pytest.mark.integration]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_kill9_leader_and_restart(mode, cluster, topics, worker_env, tmp_path):
    s = start(cluster, topics, worker_env, "leader-kill9", mode, n=12_000, seconds=60)
    with close_after(s):
        w = s.start_worker(tmp_path / "w.log", 2_000)
        node = leader_of_both(cluster, *s.names[:2])
        cluster.kill(node)
        note(f"node {node} killed (kill -9) at {s.tally.seen} inputs seen")
        s.tally.poll(60)  # a minute without it, reading outputs meanwhile
        cluster.start_node(node)
        s.healed = time.monotonic()
        note(f"node {node} restarted; new leaders: input {cluster.leaders(s.names[0])}")
        s.finish(1, f"kill -9 node {node} (leads input+output partitions), restarted after 60 s", [w])

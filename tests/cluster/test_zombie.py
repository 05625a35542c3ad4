"""Cluster fault e, exactly once: a worker stopped with SIGSTOP past its transaction timeout while a second one
takes its partitions, then resumed with SIGCONT. The zombie's open transaction was aborted by the coordinator
and its group generation is gone, so it is fenced: its late writes are never visible to read_committed readers,
and the survivor's output has every input exactly once."""

from __future__ import annotations

import signal
import time

import pytest
from clusterkit import records_read_uncommitted, signal_tree
from faultkit import note
from scenario import close_after, start

from kafkatools import WorkerProcess, unique, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

TXN_TIMEOUT_MS, SESSION_MS, STOPPED_S = 10_000, 6_000, 35


@pytest.mark.timeout(600)
def test_sigstopped_zombie_is_fenced(cluster, topics, worker_env, tmp_path):
    s = start(cluster, topics, worker_env, "zombie", "exactly_once", n=12_000, seconds=60,
              EMBED_KAFKA__SESSION_TIMEOUT_MS=str(SESSION_MS),
              EMBED_KAFKA__PRODUCER_CONFIG=f'{{"transaction.timeout.ms": "{TXN_TIMEOUT_MS}"}}')
    with close_after(s):
        zombie = WorkerProcess({**s.env, "EMBED_KAFKA__TRANSACTIONAL_ID": unique("zombie")}, tmp_path / "zombie.log")
        s.workers.append(zombie)
        s.wait_seen(1_500, alive=[zombie])
        survivor = WorkerProcess({**s.env, "EMBED_KAFKA__TRANSACTIONAL_ID": unique("survivor")},
                                 tmp_path / "survivor.log")
        s.workers.append(survivor)
        wait_for(lambda: (survivor.metric("embedstream_assigned_partitions") or 0) >= 1, 90, "the second worker joins")
        pids = signal_tree(zombie.proc.pid, signal.SIGSTOP)
        note(f"zombie pids {pids} stopped (SIGSTOP) at {s.tally.seen} inputs seen")
        t0 = time.monotonic()
        wait_for(lambda: (survivor.metric("embedstream_assigned_partitions") or 0) == 4, 60,
                 "the survivor to take all 4 partitions")
        took = time.monotonic() - t0
        s.tally.poll(max(0.0, STOPPED_S - (time.monotonic() - t0)))
        signal_tree(zombie.proc.pid, signal.SIGCONT)
        s.healed = time.monotonic()
        note(f"survivor owned all partitions {took:.0f} s after the stop; zombie resumed (SIGCONT) after {STOPPED_S} s")
        s.tally.poll(15)  # the zombie's late writes, if any were visible, would show here
        zombie_state = "exited " + str(zombie.proc.poll()) if zombie.proc.poll() is not None else "still running"
        tail = zombie.log_tail(200)
        note(f"zombie after resuming: {zombie_state}; partitions lost: {'partitions lost' in tail}"
             f"; a transaction error in its log: {'transaction' in tail and 'error' in tail}")
        if zombie.proc.poll() is None:
            zombie.stop()
        s.finish(1, f"SIGSTOP {STOPPED_S} s (> transaction timeout {TXN_TIMEOUT_MS} ms), survivor took over, SIGCONT",
                 [survivor], notes=f"zombie {zombie_state}")
        raw = records_read_uncommitted(cluster.bootstrap, s.names[1], 4)
        note(f"output records read_uncommitted: {raw}, read_committed: {s.tally.per_topic[s.names[1]]} "
             f"(the difference was written in aborted transactions)")

"""Fault 2: rebalances under load. Three workers share six partitions while a producer writes; one is
killed (-9) and a fourth joins mid-stream, before the dead member's session has even expired. Nothing
missing; duplicates bounded by the killed worker's batches in flight (live workers drain and commit what
they give up, so they repeat nothing)."""

from __future__ import annotations

import signal
import time

import pytest
from faultkit import (
    REPLAY_BOUND,
    BackgroundProducer,
    Stream,
    Tally,
    assert_alive,
    note,
    output_index,
    pick,
    reconcile,
    replay_env,
    seeded,
)

from kafkatools import WorkerProcess, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]



def total(workers: list[WorkerProcess], name: str) -> float:
    return sum(w.metric(name) or 0 for w in workers)


@pytest.mark.timeout(pick(400, 1800))
def test_three_workers_one_killed_one_added_under_load(bootstrap, topics, worker_env, tmp_path):
    n = pick(200_000, 1_000_000)
    parts = 6
    rng = seeded("rebalance")
    names = topics(partitions=parts)
    stream = Stream(n, keys=150, seed=12, prefix="rb-")
    env = worker_env(*names, EMBED_KAFKA__COMMIT_INTERVAL_MS="0", EMBED_KAFKA__SESSION_TIMEOUT_MS="6000",
                     **replay_env())
    started = time.monotonic()
    producer = BackgroundProducer(bootstrap, names[0], stream, rate=n / pick(30, 150))
    tally = Tally(bootstrap, [names[1]], n, output_index(stream))
    workers = [WorkerProcess(env, tmp_path / f"w{i}.log") for i in range(3)]
    everyone = list(workers)
    try:
        for w in workers:
            w.wait_ready(90)
        wait_for(lambda: total(workers, "embedstream_assigned_partitions") == parts, 60, "6 partitions over 3")
        kill_at = rng.randint(n // 10, n // 4)
        wait_for(lambda: total(workers, "embedstream_messages_produced_total") >= kill_at, 180, f"{kill_at} outputs")
        victim = workers.pop(rng.randrange(3))
        in_flight = victim.metric("embedstream_in_flight_messages")
        victim.proc.send_signal(signal.SIGKILL)
        victim.kill()
        pause = rng.uniform(0.0, 3.0)
        note(f"kill -9 of pid {victim.proc.pid} after >= {kill_at} outputs in total ({in_flight:.0f} in flight); "
             f"a fourth worker joins {pause:.1f}s later")
        time.sleep(pause)
        joiner = WorkerProcess(env, tmp_path / "w3.log")
        everyone.append(joiner)
        workers.append(joiner)
        wait_for(lambda: total(workers, "embedstream_assigned_partitions") == parts
                 and (joiner.metric("embedstream_assigned_partitions") or 0) >= 1, 90,
                 "the dead member's partitions reassigned and the joiner owning some")
        spread = [int(w.metric("embedstream_assigned_partitions") or 0) for w in workers]
        note(f"assignment after the rebalance: {spread}")
        while producer.running():
            assert_alive(workers)
            tally.poll(1.0)
        producer.wait(60)
        complete = tally.until_complete(timeout=pick(240, 900), settle=3, alive=workers)
        codes = [w.stop() for w in workers]
    finally:
        producer.kill()
        for w in everyone:
            w.kill()
        tally.close()
    bound = REPLAY_BOUND
    r = reconcile("3 workers, kill 1, add 1 (at_least_once)", f"kill -9 of 1 of 3 at {kill_at} outputs, +1 worker",
                  tally, started, bound=bound, notes=f"6 partitions; assignment after {spread}")
    assert codes == [0, 0, 0], [w.log_tail() for w in workers]
    assert complete and r.missing == 0 and tally.foreign == 0
    assert r.duplicates <= bound, f"{r.duplicates} duplicates > bound {bound}"

"""Fault 1: `kill -9` of the worker at seeded random points, several times in one run, restarted each time,
while a producer keeps writing. At least once: nothing missing, duplicates bounded by the batches in
flight at each kill. Exactly once: nothing missing, no duplicates (read_committed)."""

from __future__ import annotations

import signal
import time

import pytest
from faultkit import (
    BATCH,
    IN_FLIGHT,
    REPLAY_BOUND,
    BackgroundProducer,
    Stream,
    Tally,
    note,
    output_index,
    pick,
    reconcile,
    replay_env,
    seeded,
)

from kafkatools import WorkerProcess, unique, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]



@pytest.mark.timeout(pick(400, 1800))
@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_kill9_at_random_points_and_restart(mode, bootstrap, topics, worker_env, tmp_path):
    kills = pick(3, 6)
    n = pick(150_000, 1_000_000)
    parts = 4
    rng = seeded(f"kill9-{mode}")
    names = topics(partitions=parts)
    stream = Stream(n, keys=120, seed=11, prefix=f"kill-{mode[:3]}-")
    eos = mode == "exactly_once"
    extra = {"EMBED_PROCESSING_GUARANTEE": mode}
    if eos:
        extra["EMBED_KAFKA__TRANSACTIONAL_ID"] = unique("faults-kill")  # the restarted process fences its zombie
    env = worker_env(*names, EMBED_KAFKA__COMMIT_INTERVAL_MS="0", EMBED_KAFKA__SESSION_TIMEOUT_MS="6000",
                     **replay_env(), **extra)
    thresholds = [rng.randint(2_000, 25_000) for _ in range(kills)]
    started = time.monotonic()
    producer = BackgroundProducer(bootstrap, names[0], stream, rate=n / pick(25, 120))
    tally = Tally(bootstrap, [names[1]], n, output_index(stream))
    workers: list[WorkerProcess] = []
    try:
        for k, threshold in enumerate(thresholds):
            w = WorkerProcess(env, tmp_path / f"w{k}.log")
            workers.append(w)
            wait_for(lambda w=w, t=threshold: (w.metric("embedstream_messages_produced_total") or 0) >= t, 180,
                     f"worker {k} to acknowledge {threshold} outputs")
            in_flight = w.metric("embedstream_in_flight_messages")
            w.proc.send_signal(signal.SIGKILL)
            w.kill()
            note(f"kill -9 #{k + 1}: pid {w.proc.pid} after >= {threshold} outputs, {in_flight:.0f} in flight")
            tally.poll(0.2)
        final = WorkerProcess(env, tmp_path / "final.log")
        workers.append(final)
        producer.wait(300)
        complete = tally.until_complete(timeout=pick(240, 900), settle=3, alive=[final])
        code = final.stop()
    finally:
        producer.kill()
        for w in workers:
            w.kill()
        tally.close()
    bound = 0 if eos else REPLAY_BOUND * kills
    r = reconcile(f"kill9 x{kills} ({mode})", f"kill -9 x{kills} at outputs {thresholds}, restarted", tally,
                  started, bound=bound, notes=f"batch {BATCH}, in-flight {IN_FLIGHT}, commit every batch")
    assert code == 0, final.log_tail()
    assert complete and r.missing == 0
    assert tally.foreign == 0
    assert r.duplicates <= bound, f"{r.duplicates} duplicates > bound {bound}"

"""Fault 3: the broker goes away for 10-30 s mid-run (a private broker, stopped and started again) while a
producer keeps writing. The worker is NOT restarted: /readyz turns 503 during the outage and 200 after, the
same process carries on by itself, and at the end nothing is missing (at least once) and nothing is
duplicated (exactly once)."""

from __future__ import annotations

import time

import pytest
from faultkit import (
    BATCH,
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

from kafkatools import LocalBroker, WorkerProcess, create_topics, unique, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

RESUME_S = 120  # a recovery that needs nobody's help, inside two liveness stall timeouts (60 s each)


def child_starts(worker: WorkerProcess) -> int:
    """Processes a supervising `run` started (exactly_once runs supervised even with one process), 0 if none."""
    return sum('"process started"' in line for line in worker.log_path.read_text(errors="replace").splitlines())


@pytest.fixture(scope="module")
def outage_broker(tmp_path_factory):
    """One private broker for this module's outages (the shared broker is never stopped)."""
    broker = LocalBroker(tmp_path_factory.mktemp("outage") / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(pick(420, 1200))
@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_broker_outage_worker_recovers_by_itself(mode, outage_broker, worker_env, tmp_path):
    b = outage_broker.bootstrap
    rng = seeded(f"outage-{mode}")
    outage_s = rng.uniform(*pick((10, 15), (20, 30)))
    n = pick(60_000, 300_000)
    parts = 3
    names = (unique("in"), unique("out"), unique("dlq"))
    create_topics(b, list(names), parts)
    stream = Stream(n, keys=60, seed=13, prefix=f"out-{mode[:3]}-")
    eos = mode == "exactly_once"
    extra = {"EMBED_PROCESSING_GUARANTEE": mode}
    if eos:
        extra["EMBED_KAFKA__TRANSACTIONAL_ID"] = unique("faults-outage")
    env = worker_env(*names, EMBED_KAFKA__BOOTSTRAP_SERVERS=b, EMBED_KAFKA__COMMIT_INTERVAL_MS="0", **replay_env(),
                     EMBED_METRICS__STATISTICS_INTERVAL_MS="500", **extra)
    started = time.monotonic()
    worker = WorkerProcess(env, tmp_path / "w.log")
    pid = worker.proc.pid
    producer = BackgroundProducer(b, names[0], stream, rate=n / pick(40, 120))
    tally = Tally(b, [names[1]], n, output_index(stream))
    readyz_during: list[int] = []
    broker_down = False
    try:
        worker.wait_ready(90)
        stop_at = rng.randint(n // 10, n // 4)
        wait_for(lambda: (worker.metric("embedstream_messages_produced_total") or 0) >= stop_at, 120,
                 f"{stop_at} outputs before the outage")
        in_flight = worker.metric("embedstream_in_flight_messages")
        t_down = time.monotonic()
        broker_down = True
        outage_broker.stop()
        stopped_in = time.monotonic() - t_down
        wait_for(lambda: worker.get("/readyz")[0] == 503, outage_s, "/readyz to turn 503 with the broker down")
        readyz_during.append(503)
        assert "broker" in worker.get("/readyz")[1]
        while time.monotonic() - t_down < outage_s:
            assert worker.proc.poll() is None, f"worker exited during the outage:\n{worker.log_tail()}"
            readyz_during.append(worker.get("/readyz")[0])
            time.sleep(0.5)
        assert worker.get("/healthz")[0] == 200, "liveness must hold through a broker outage (a restart won't help)"
        outage_broker.start()
        broker_down = False
        down_for = time.monotonic() - t_down
        note(f"broker stopped at >= {stop_at} outputs ({in_flight:.0f} in flight), down {down_for:.1f}s "
             f"(planned {outage_s:.1f}s, stop took {stopped_in:.1f}s); /readyz during: {sorted(set(readyz_during))}")
        t_up = time.monotonic()
        wait_for(lambda: worker.get("/readyz")[0] == 200, 120, "/readyz to return to 200 after the outage")
        note(f"/readyz 200 again {time.monotonic() - t_up:.1f}s after the broker answered")
        before = worker.metric("embedstream_messages_produced_total") or 0
        # Resumes by itself, with no outside restart: new outputs within RESUME_S of the broker answering.
        wait_for(lambda: (worker.metric("embedstream_messages_produced_total") or 0) > before + 2 * BATCH,
                 max(5.0, RESUME_S - (time.monotonic() - t_up)), "the worker to resume producing after the outage")
        note(f"producing again {time.monotonic() - t_up:.1f}s after the broker answered")
        producer.wait(600)
        complete = tally.until_complete(timeout=pick(240, 900), settle=3, alive=[worker])
        assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker must not have been restarted"
        code = worker.stop()
    finally:
        producer.kill()
        worker.kill()
        if broker_down:  # a failure mid-outage: bring the broker back for the next test
            outage_broker.start()
        tally.close()
    restarts = max(0, child_starts(worker) - 1)
    note(f"the worker's own supervisor restarted its process {restarts} time(s) (pid {pid} never changed)")
    refused = sum("Connect to ipv4" in line for line in worker.log_path.read_text(errors="replace").splitlines())
    note(f"worker log: {refused} 'Connect ... failed' lines from librdkafka during the outage "
         f"({refused / max(1.0, down_for):.1f}/s)")
    bound = 0 if eos else REPLAY_BOUND
    r = reconcile(f"broker outage ({mode})", f"broker down {down_for:.0f}s at {stop_at} outputs, worker kept",
                  tally, started, bound=bound, notes=f"/readyz during the outage: {sorted(set(readyz_during))}")
    assert code == 0, worker.log_tail()
    assert complete and r.missing == 0 and tally.foreign == 0
    assert r.duplicates <= bound, f"{r.duplicates} duplicates > bound {bound}"

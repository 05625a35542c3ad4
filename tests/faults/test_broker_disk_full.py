"""Fault 8 (issue 23): the single broker's disk fills up mid-run. A private broker (scripts/kafka-local.sh) keeps
its log directory on a small tmpfs; while a producer writes and the worker embeds, a filler file takes every free
byte. The broker's next append fails with ENOSPC, it marks its only log directory offline and shuts itself down
(every partition's leader stops accepting writes). The worker is NOT restarted: /readyz turns 503 and
embedstream_broker_up 0 while the broker is gone, /healthz stays 200; then the test deletes the filler and starts
the broker again (it recovers its logs, truncating the half-written segment) and the same worker process carries
on: 0 missing, at least once duplicates within the crash bound, exactly once 0 duplicates."""

from __future__ import annotations

import shutil
import time

import pytest
from diskkit import SmallDisk, broker_log_lines, line_count, require_root, wait_pid_gone, worker_log_summary
from faultkit import (
    BATCH,
    REPLAY_BOUND,
    BackgroundProducer,
    Stream,
    Tally,
    note,
    output_index,
    reconcile,
    replay_env,
    seeded,
)

from kafkatools import LocalBroker, WorkerProcess, create_topics, unique, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

RESUME_S = 120  # as in test_broker_outage: a recovery that needs nobody's help
DOWN_S = 10  # the broker stays down this long after it halted, the disk still full


@pytest.mark.timeout(420)
@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_broker_disk_full_worker_rides_it_out(mode, worker_env, tmp_path):
    require_root()
    if not shutil.which("java"):
        pytest.fail("this test runs its own broker with scripts/kafka-local.sh: install Java 17+", pytrace=False)
    with SmallDisk(tmp_path / "disk", 256) as disk:
        broker = LocalBroker(tmp_path / "kafka", log_dir=disk.log_dir)
        broker.start()
        try:
            _run(mode, broker, disk, worker_env, tmp_path)
        finally:
            disk.free()
            broker.stop()


def _run(mode: str, broker: LocalBroker, disk: SmallDisk, worker_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    b = broker.bootstrap
    rng = seeded(f"disk-full-{mode}")
    n, parts = 30_000, 3
    names = (unique("in"), unique("out"), unique("dlq"))
    create_topics(b, list(names), parts)
    stream = Stream(n, keys=60, seed=23, prefix=f"disk-{mode[:3]}-")
    eos = mode == "exactly_once"
    extra = {"EMBED_PROCESSING_GUARANTEE": mode}
    if eos:
        extra["EMBED_KAFKA__TRANSACTIONAL_ID"] = unique("faults-disk-full")
    env = worker_env(*names, EMBED_KAFKA__BOOTSTRAP_SERVERS=b, EMBED_KAFKA__COMMIT_INTERVAL_MS="0", **replay_env(),
                     EMBED_METRICS__STATISTICS_INTERVAL_MS="500", **extra)
    started = time.monotonic()
    worker = WorkerProcess(env, tmp_path / "w.log")
    pid = worker.proc.pid
    producer = BackgroundProducer(b, names[0], stream, rate=n / 30)
    tally = Tally(b, [names[1]], n, output_index(stream))
    broker_down = False
    readyz: set[tuple[int, str]] = set()
    try:
        worker.wait_ready(90)
        fill_at = rng.randint(n // 10, n // 4)
        wait_for(lambda: (worker.metric("embedstream_messages_produced_total") or 0) >= fill_at, 120,
                 f"{fill_at} outputs before the disk fills")
        in_flight = worker.metric("embedstream_in_flight_messages")
        log_from = line_count(worker.log_path)
        used_mb = disk.used_bytes() / 2**20
        t_full = time.monotonic()
        took = disk.fill()
        broker_down = True
        halted_in = wait_pid_gone(broker.directory / "kafka.pid", 60)
        assert halted_in is not None, "the broker did not shut down within 60 s of its disk filling up"
        what = broker_log_lines(broker.directory / "server.log")
        note(f"disk filled at >= {fill_at} outputs ({in_flight:.0f} in flight; the broker's data {used_mb:.0f} MB, "
             f"filler {took / 2**20:.0f} MB); broker process gone {halted_in:.1f}s later")
        for line in what[:8]:
            note(f"broker: {line}")
        assert any("No space left" in ln for ln in what), "\n".join(what)
        wait_for(lambda: worker.get("/readyz")[0] == 503, 30, "/readyz to turn 503 with the broker gone")
        broker_up_seen = []
        while time.monotonic() - t_full < halted_in + DOWN_S:
            assert worker.proc.poll() is None, f"worker exited while the disk was full:\n{worker.log_tail()}"
            code, body = worker.get("/readyz")
            readyz.add((code, body.strip()))
            broker_up_seen.append(worker.metric("embedstream_broker_up"))
            time.sleep(0.5)
        assert worker.get("/healthz")[0] == 200, "liveness must hold while the broker is down (a restart won't help)"
        assert {code for code, _ in readyz} == {503} and any("broker" in why for _, why in readyz), readyz
        lines, summary = worker_log_summary(worker.log_path, log_from)
        note(f"/readyz while the broker was down: {sorted(readyz)}; "
             f"embedstream_broker_up: {sorted(set(broker_up_seen), key=str)}")
        # what EmbedstreamBrokerUnreachable reads (exactly once: also while the loop is blocked in a transaction call)
        assert 1.0 not in broker_up_seen, broker_up_seen
        note(f"worker log while the broker was down: {lines} lines; " + "; ".join(summary))
        disk.free()
        broker.start()
        broker_down = False
        down_for = time.monotonic() - t_full
        t_up = time.monotonic()
        recovered = broker_log_lines(broker.directory / "server.log", ("Corruption", "truncat", "Recover"))
        for line in recovered[:4]:
            note(f"broker after the restart: {line}")
        wait_for(lambda: worker.get("/readyz")[0] == 200, 120, "/readyz to return to 200 after the broker restart")
        ready_s = time.monotonic() - t_up
        before = worker.metric("embedstream_messages_produced_total") or 0
        wait_for(lambda: (worker.metric("embedstream_messages_produced_total") or 0) > before + 2 * BATCH,
                 max(5.0, RESUME_S - (time.monotonic() - t_up)), "the worker to resume producing after the restart")
        resumed_s = time.monotonic() - t_up
        note(f"space freed and the broker restarted {down_for:.1f}s after the disk filled; /readyz 200 again "
             f"{ready_s:.1f}s and outputs again {resumed_s:.1f}s after the broker answered")
        producer.wait(300)
        complete = tally.until_complete(timeout=240, settle=3, alive=[worker])
        assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker must not have been restarted"
        code = worker.stop()
    finally:
        producer.kill()
        worker.kill()
        if broker_down:  # a failure mid-fault: give the next test its space and its broker back
            disk.free()
            broker.start()
        tally.close()
    starts = sum('"process started"' in ln for ln in worker.log_path.read_text(errors="replace").splitlines())
    note(f"the worker's own supervisor restarted its process {max(0, starts - 1)} time(s) (pid {pid} never changed)")
    bound = 0 if eos else REPLAY_BOUND
    r = reconcile(f"broker disk full ({mode})", f"log dir full at {fill_at} outputs, broker halted, restarted after "
                  f"{down_for:.0f}s", tally, started, bound=bound,
                  notes=f"/readyz 200 {ready_s:.1f}s, outputs {resumed_s:.1f}s after the restart")
    assert code == 0, worker.log_tail()
    assert complete and r.missing == 0 and tally.foreign == 0
    assert r.duplicates <= bound, f"{r.duplicates} duplicates > bound {bound}"

"""Fault 5: slow output. The worker's producer is throttled by a broker client quota (producer_byte_rate on
its client.id, set with the broker's own kafka.admin.ConfigCommand) while a large backlog waits. Backpressure
must pause consumption (embedstream_paused_partitions > 0) and bound the outputs in flight, so RSS stays flat
instead of growing with the backlog; once unthrottled, everything arrives."""

from __future__ import annotations

import time

import pytest
from faultkit import (
    MB,
    RssSampler,
    Stream,
    Tally,
    assert_alive,
    note,
    output_index,
    pick,
    produce_stream,
    reconcile,
    set_producer_quota,
)

from kafkatools import WorkerProcess, unique

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BATCH, IN_FLIGHT = 256, 8
BYTE_RATE = 64 * 1024  # about 150 outputs/s of 32 floats as JSON, versus ~50,000/s unthrottled
# While paused, what may still grow is librdkafka's prefetch: up to queued.max.messages.kbytes (16 MB of payload,
# EMBED_BATCH__MAX_PREFETCH_KBYTES) or queued.min.messages (100,000) messages, each with a few hundred bytes of
# bookkeeping (~20-30 MB for these small messages), plus allocator slack: 64 MB. Without backpressure the
# backlog's outputs alone would need n x ~440 B (130 MB for the CI backlog, 420 MB for the long one).
RSS_BOUND = 64 * MB


@pytest.mark.timeout(pick(420, 1200))
def test_throttled_output_pauses_consumption_with_bounded_memory(bootstrap, topics, worker_env, tmp_path):
    n = pick(300_000, 1_000_000)
    throttled_s = pick(30, 120)
    names = topics(partitions=4)
    stream = Stream(n, keys=100, seed=15, prefix="bp-")
    started = time.monotonic()
    produce_stream(bootstrap, names[0], stream)  # the backlog, all waiting before the worker starts
    client = unique("faults-bp")
    set_producer_quota(bootstrap, f"{client}-producer", BYTE_RATE)
    env = worker_env(*names, EMBED_KAFKA__CLIENT_ID=client, EMBED_BATCH__MAX_MESSAGES=str(BATCH),
                     EMBED_BATCH__MAX_IN_FLIGHT_BATCHES=str(IN_FLIGHT))
    worker = WorkerProcess(env, tmp_path / "w.log")
    tally = Tally(bootstrap, [names[1]], n, output_index(stream))
    sampler = RssSampler(worker.proc.pid, 1.0)
    throttled = True
    samples: list[dict[str, float]] = []
    try:
        worker.wait_ready(90)
        sampler.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < throttled_s:
            assert_alive([worker])
            m = {name: worker.metric(f"embedstream_{name}") or 0.0 for name in (
                "paused_partitions", "in_flight_messages", "messages_consumed_total", "messages_produced_total",
                "producer_queue_messages", "produced_bytes_total")}
            m["t"] = time.monotonic() - sampler.t0
            samples.append(m)
            time.sleep(0.5)
        set_producer_quota(bootstrap, f"{client}-producer", None)
        throttled = False
        t_free = time.monotonic()
        complete = tally.until_complete(timeout=pick(240, 900), settle=2, alive=[worker])
        caught_up_s = time.monotonic() - t_free
        rss = sampler.stop()
        code = worker.stop()
    finally:
        if throttled:
            set_producer_quota(bootstrap, f"{client}-producer", None)
        worker.kill()
        tally.close()

    paused_at = next((s["t"] for s in samples if s["paused_partitions"] > 0), None)
    last = samples[-1]
    max_in_flight = max(s["in_flight_messages"] for s in samples)
    max_unacked = max(s["messages_consumed_total"] - s["messages_produced_total"] for s in samples)
    throttled_rss = [r for t, r in rss if paused_at is not None and paused_at <= t <= samples[-1]["t"]]
    base = throttled_rss[0] if throttled_rss else 0
    growth = (max(throttled_rss) - base) if throttled_rss else 0
    out_size = last["produced_bytes_total"] / max(1.0, last["messages_produced_total"])
    backlog_out_mb = n * out_size / MB  # what the outputs of the whole backlog would take if all were consumed
    note(f"throttled {throttled_s}s at {BYTE_RATE} B/s: first pause after {paused_at}s; consumed "
         f"{last['messages_consumed_total']:.0f} of {n}, acknowledged {last['messages_produced_total']:.0f}; "
         f"max in flight {max_in_flight:.0f} (bound {IN_FLIGHT * BATCH}); max consumed-but-unacknowledged "
         f"{max_unacked:.0f}; RSS {base / MB:.1f} MB at the first pause, max growth {growth / MB:.1f} MB while "
         f"throttled (bound {RSS_BOUND / MB:.0f} MB; the backlog's outputs, {out_size:.0f} B each, would be "
         f"{backlog_out_mb:.0f} MB); "
         f"caught up {caught_up_s:.1f}s after unthrottling")
    note("RSS while throttled (MB, every 5 s from the first pause): "
         + " ".join(f"{r / MB:.0f}" for r in throttled_rss[::5]))
    r = reconcile("slow output (quota) + backlog", f"producer quota {BYTE_RATE // 1024} KB/s for {throttled_s}s, "
                  f"{n} backlog", tally, started, notes=f"RSS growth {growth / MB:.1f} MB; max in flight "
                  f"{max_in_flight:.0f}")
    assert code == 0, worker.log_tail()
    assert paused_at is not None, "consumption never paused while the output was throttled"
    assert max_in_flight <= IN_FLIGHT * BATCH, f"{max_in_flight} outputs in flight > {IN_FLIGHT} x {BATCH}"
    assert last["messages_consumed_total"] < n / 2, "the worker read on as if the output were not slow"
    assert throttled_rss and growth < RSS_BOUND, f"RSS grew {growth / MB:.1f} MB while paused"
    assert complete and r.missing == 0 and r.duplicates == 0 and tally.foreign == 0

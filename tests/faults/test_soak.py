"""Fault 7: a soak. A producer writes alongside the worker for minutes; RSS is sampled every second. After
warm-up the RSS trend (least-squares slope) projected over the run must stay small, and every message must
arrive exactly once. EMBEDSTREAM_FAULTS_LONG=1 runs the long variant (3,000,000 messages, ~8 minutes).

The fast path's piece cache is a bounded cache (EMBED_MODEL__FAST_PATH_CACHE_MB, default 256 MB) and this
stream keeps adding pieces (~14% of its texts are Japanese runs without spaces, each a new piece), so with
the default bound the cache legitimately grows for millions of messages before it evicts. The soak bounds it
at 8 MB instead: it fills and starts evicting within the warm-up, and what is measured after that is
everything else (buffers, allocator, leaks) plus eviction churn."""

from __future__ import annotations

import time

import pytest
from faultkit import (
    MB,
    BackgroundProducer,
    RssSampler,
    Stream,
    Tally,
    assert_alive,
    linear_trend,
    note,
    output_index,
    pick,
    reconcile,
)

from kafkatools import WorkerProcess

pytestmark = [pytest.mark.faults, pytest.mark.integration]

# Projected growth over the measured window must stay under this. A leak of one small Python object per
# message (~32 B) over the CI window (~500,000 messages) would add ~15 MB, over the long one (~2.5M) ~76 MB;
# the allocator and librdkafka's buffers move RSS by a few MB either way, which is what the margin is for.
GROWTH_BOUND = 16 * MB
CACHE_MB = 8


@pytest.mark.timeout(pick(600, 2400))
def test_soak_rss_has_no_growth_trend(bootstrap, topics, worker_env, tmp_path):
    n = pick(800_000, 3_000_000)
    duration = pick(100, 480)
    warmup = pick(20, 60)
    names = topics(partitions=4)
    stream = Stream(n, keys=500, seed=17, prefix="soak-")
    started = time.monotonic()
    worker = WorkerProcess(worker_env(*names, EMBED_MODEL__FAST_PATH_CACHE_MB=str(CACHE_MB)), tmp_path / "w.log")
    tally = Tally(bootstrap, [names[1]], n, output_index(stream))
    producer = None
    try:
        worker.wait_ready(90)
        sampler = RssSampler(worker.proc.pid, 1.0)
        sampler.start()
        producer = BackgroundProducer(bootstrap, names[0], stream, rate=n / duration)
        cache_peak, evicted_at = 0.0, None
        while producer.running():
            assert_alive([worker])
            tally.poll(1.0)
            cache = worker.metric("embedstream_fastpath_cache_bytes") or 0.0
            if evicted_at is None and cache < cache_peak * 0.9:
                evicted_at = time.monotonic() - sampler.t0  # the cache is full and evicting: warm from here
            cache_peak = max(cache_peak, cache)
        producer.wait(60)
        produced_at = time.monotonic() - sampler.t0
        complete = tally.until_complete(timeout=pick(240, 900), settle=2, alive=[worker])
        samples = sampler.stop()
        code = worker.stop()
    finally:
        if producer:
            producer.kill()
        worker.kill()
        tally.close()
    warmup = max(warmup, (evicted_at or 0) + 5)
    window = [s for s in samples if warmup <= s[0] <= produced_at]
    slope, span = linear_trend(window)
    projected = slope * span
    rss = [r for _, r in window]
    note(f"fast-path cache bound {CACHE_MB} MB: first eviction at {evicted_at}s, peak {cache_peak / MB:.1f} MB")
    note(f"{len(samples)} RSS samples; after {warmup:.0f}s warm-up: {min(rss) / MB:.1f}..{max(rss) / MB:.1f} MB, "
         f"slope {slope / 1024:.2f} KB/s over {span:.0f}s -> projected growth {projected / MB:.2f} MB "
         f"(bound {GROWTH_BOUND / MB:.0f} MB); RSS at start {samples[0][1] / MB:.1f} MB, "
         f"at end {samples[-1][1] / MB:.1f} MB")
    r = reconcile("soak", f"{n} messages at {n / duration:.0f}/s alongside, RSS every 1s", tally, started,
                  bound=0, notes=f"RSS {min(rss) / MB:.0f}-{max(rss) / MB:.0f} MB after warm-up, trend "
                  f"{projected / MB:+.2f} MB over {span:.0f}s")
    assert code == 0, worker.log_tail()
    assert complete and r.missing == 0 and r.duplicates == 0 and tally.foreign == 0
    assert evicted_at is not None and span >= duration / 2, "warm-up never ended: the cache never evicted"
    assert projected < GROWTH_BOUND, f"RSS trend projects {projected / MB:.1f} MB of growth over {span:.0f}s"

"""Fault 6: SIGTERM while the worker is busy with a backlog. It finishes within EMBED_SHUTDOWN_GRACE_S with
exit 0, and loses nothing in flight: the committed offsets equal the outputs per partition, and a second
worker finishes the rest with no duplicates, at least once and exactly once alike."""

from __future__ import annotations

import collections
import time

import pytest
from faultkit import Stream, Tally, note, output_index, pick, produce_stream, reconcile, seeded

from kafkatools import WorkerProcess, committed_offsets, unique, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.integration]

GRACE_S = 10


@pytest.mark.timeout(pick(300, 1200))
@pytest.mark.parametrize("mode", ["at_least_once", "exactly_once"])
def test_sigterm_under_load_within_grace_commits_exactly_what_was_output(mode, bootstrap, topics, worker_env,
                                                                          tmp_path):
    n = pick(150_000, 1_000_000)
    parts = 4
    rng = seeded(f"sigterm-{mode}")
    names = topics(partitions=parts)
    stream = Stream(n, keys=80, seed=16, prefix=f"term-{mode[:3]}-")
    extra = {"EMBED_PROCESSING_GUARANTEE": mode}
    if mode == "exactly_once":
        extra["EMBED_KAFKA__TRANSACTIONAL_ID"] = unique("faults-term")
    # The default commit interval (1 s): only the synchronous commit at shutdown makes offsets match outputs.
    env = worker_env(*names, EMBED_SHUTDOWN_GRACE_S=str(GRACE_S), **extra)
    group = env["EMBED_KAFKA__GROUP_ID"]
    started = time.monotonic()
    produce_stream(bootstrap, names[0], stream)
    per_part: collections.Counter[int] = collections.Counter()
    last_offset: dict[int, int] = {}

    def where(m, i: int) -> None:
        h = dict(m.headers() or [])
        p, o = int(h["source-partition"]), int(h["source-offset"])
        per_part[p] += 1
        last_offset[p] = max(last_offset.get(p, -1), o)

    tally = Tally(bootstrap, [names[1]], n, output_index(stream), on_record=where)
    w1 = WorkerProcess(env, tmp_path / "w1.log")
    w2 = None
    try:
        threshold = rng.randint(n // 10, n // 3)
        wait_for(lambda: (w1.metric("embedstream_messages_produced_total") or 0) >= threshold, 120,
                 f"{threshold} outputs")
        in_flight = w1.metric("embedstream_in_flight_messages") or 0
        lag = w1.metric("embedstream_consumer_lag_sum_messages") or 0
        t0 = time.monotonic()
        code1 = w1.stop(timeout=GRACE_S + 20)
        stop_s = time.monotonic() - t0
        note(f"SIGTERM at >= {threshold} outputs with {in_flight:.0f} in flight and lag {lag:.0f}: exit {code1} "
             f"after {stop_s:.2f}s (grace {GRACE_S}s)")
        offsets = committed_offsets(bootstrap, group, names[0], parts)
        want = sum(offsets.values())
        deadline = time.monotonic() + 60
        while tally.total < want and time.monotonic() < deadline:
            tally.poll(0.5)
        tally.poll(3)  # nothing beyond the committed offsets may show up
        first = {p: per_part.get(p, 0) for p in range(parts)}
        ends = {p: last_offset.get(p, -1) + 1 for p in range(parts)}
        note(f"committed {offsets}; outputs per partition {first}")
        w2 = WorkerProcess(env, tmp_path / "w2.log")
        complete = tally.until_complete(timeout=pick(240, 900), settle=3, alive=[w2])
        code2 = w2.stop()
    finally:
        w1.kill()
        if w2:
            w2.kill()
        tally.close()
    r = reconcile(f"SIGTERM under load ({mode})", f"SIGTERM at {threshold} outputs ({in_flight:.0f} in flight), "
                  f"stopped in {stop_s:.1f}s; 2nd worker finishes", tally, started, bound=0,
                  notes=f"committed {sum(offsets.values())} = outputs {sum(first.values())} at the stop")
    assert code1 == 0, w1.log_tail()
    assert stop_s < GRACE_S, f"shutdown took {stop_s:.1f}s, grace is {GRACE_S}s"
    assert 0 < want < n
    assert first == offsets, f"outputs per partition {first} != committed offsets {offsets}"
    assert ends == offsets, f"last output offset + 1 per partition {ends} != committed {offsets}"
    assert code2 == 0, w2.log_tail() if w2 else ""
    assert complete and r.missing == 0 and r.duplicates == 0 and tally.foreign == 0

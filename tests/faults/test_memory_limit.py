"""Fault 8: the chart's memory limit. The worker runs in a cgroup v1 memory cgroup with the chart's limit for the
gemma-like model (values.yaml `resources.limits.memory`: 1280Mi, whatever `worker.processes` is; docs/deploy.md
advises 1536Mi for processes: 2) while bursts of maximum-size messages (EMBED_INPUT__MAX_BYTES, 1,000,000) and
long documents reach it, chunked or not. It must stay under the limit: no OOM kill (memory.oom_control
`oom_kill`), the limit never reached (memory.max_usage_in_bytes below it, memory.failcnt 0), the same PID to the
end, and every input accounted for (outputs + dead letters = inputs, 0 missing). The peak is reported against the
limit and the start-up estimate (worker.memory_budget). And settings that cannot fit the cgroup's limit are
refused at start, in one line."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from faultkit import MB, Tally, assert_alive, note, reconcile
from memcg import MemCgroup, cold_copy, require

from kafkatools import WorkerProcess, produce
from worker.memory_budget import MIB, estimate
from worker.settings import load_settings

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MAX_BYTES = 1_000_000


def document(seed: int, size: int) -> str:
    """A long mixed-language document (sentences of modelfactory's sample texts) of about `size` UTF-8 bytes."""
    from modelfactory import sample_texts

    parts: list[str] = []
    n = i = 0
    while n < size:
        for t in sample_texts(400, seed=seed * 7919 + i, min_words=8, max_words=30):
            parts.append(t + ".")
            n += len(t.encode()) + 2
            if n >= size:
                break
        i += 1
    return " ".join(parts).encode()[:size].decode(errors="ignore")


def sized(i: int, text: str, kind: str, target: int) -> bytes:
    """A JSON value of at most `target` bytes, as close to it as the text allows."""
    head = len(orjson.dumps({"id": f"m{i}", "text": "", "k": kind}))
    text = text.encode()[: target - head].decode(errors="ignore")
    value = orjson.dumps({"id": f"m{i}", "text": text, "k": kind})
    while len(value) > target:  # escaped characters
        text = text[:-64]
        value = orjson.dumps({"id": f"m{i}", "text": text, "k": kind})
    return value


def burst(first: int, big: int, long_docs: int, short: int, over: int = 0) -> list[tuple[bytes, bytes, list]]:
    """Messages with header `seq` = index from `first`: `big` values just under MAX_BYTES, `long_docs` documents of
    20-120 kB, `short` sentences, and `over` values just over MAX_BYTES (dead letters, too_large), interleaved."""
    base = document(first + 1, MAX_BYTES + 4096)
    kinds = ["big"] * big + ["long"] * long_docs + ["short"] * short + ["over"] * over
    step = max(1, len(kinds) // max(1, big))
    order = sorted(range(len(kinds)), key=lambda j: (j % step, j))  # the big ones spread through the burst
    out = []
    for pos, j in enumerate(order):
        i = first + pos
        kind = kinds[j]
        if kind == "big":
            value = sized(i, base[i % 97:], kind, MAX_BYTES - 16)
        elif kind == "over":
            value = sized(i, base, kind, MAX_BYTES + 100)
            assert len(value) > MAX_BYTES
        elif kind == "long":
            value = orjson.dumps({"id": f"m{i}", "text": base[i * 131 % 500_000:][:20_000 + (i * 7919) % 100_000]})
        else:
            value = orjson.dumps({"id": f"m{i}", "text": f"short message number {i}, a sentence or two."})
        out.append((f"k{i % 16}".encode(), value, [("seq", str(i).encode())]))
    return out


def first_copy(m) -> int:  # type: ignore[no-untyped-def]
    """The input index of an output that is an input's first (or only) record; -1 for further chunks."""
    headers = dict(m.headers() or [])
    if headers.get("chunk-index", b"0") != b"0" or headers.get("chunk-kind") == b"document":
        return -1
    seq = headers.get("seq")
    return int(seq) if seq is not None else -1


@pytest.fixture
def gemma_cold(gemma_model, tmp_path) -> Iterator[Path]:
    """The gemma-like model copied out of the page cache: the worker's reads of it are charged to its cgroup. The
    copy (430 MB) is removed after the test."""
    folder = cold_copy(gemma_model("float16"), tmp_path / "gemma")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


CASES = [  # (processes, limit, chunking, big messages per burst, long documents, short messages)
    pytest.param(1, 1280, "off", 40, 100, 2000, id="1-process-1280Mi-max-size"),
    pytest.param(1, 1280, "words", 16, 100, 500, id="1-process-1280Mi-chunked"),
    pytest.param(2, 1536, "words", 16, 100, 500, id="2-processes-1536Mi-chunked"),
    # what the chart sets for processes: 2 unless resources are changed: its one limit, 1280Mi
    pytest.param(2, 1280, "words", 16, 100, 500, id="2-processes-1280Mi-chunked"),
]


@pytest.mark.timeout(420)
@pytest.mark.parametrize(("processes", "limit_mib", "chunking", "big", "long_docs", "short"), CASES)
def test_bursts_of_max_size_messages_stay_under_the_memory_limit(bootstrap, topics, worker_env, gemma_cold, tmp_path,
                                                                 processes, limit_mib, chunking, big, long_docs, short):
    require()
    names = topics(partitions=4)
    first = burst(0, big, long_docs, short, over=2)
    second = burst(len(first), big, long_docs // 2, short)
    n = len(first) + len(second)
    env = worker_env(*names, EMBED_MODEL__PATH=str(gemma_cold), EMBED_CHUNKING__MODE=chunking,
                     EMBED_MODEL__PREPARED_DIR=str(tmp_path / "prepared"),  # the full load-time check: its peak too
                     EMBED_BATCH__MAX_MESSAGES="512")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        est = estimate(load_settings(), processes, (gemma_cold / "model.safetensors").stat().st_size,
                       (gemma_cold / "tokenizer.json").stat().st_size, 768)
    started = time.monotonic()
    big_config = {"message.max.bytes": 2 * MB, "compression.type": "none"}
    produce(bootstrap, names[0], first, config=big_config)  # a backlog at start: the fullest fetches
    cg = MemCgroup(limit_mib * MIB)
    worker = WorkerProcess(env, tmp_path / "w.log", processes=processes, prefix=cg.prefix())
    pid = worker.proc.pid
    tally = Tally(bootstrap, [names[1], names[2]], n, {names[1]: first_copy, names[2]: first_copy})
    try:
        worker.wait_ready(240)
        tally.poll(1.0)
        produce(bootstrap, names[0], second, config=big_config)  # a second burst while it works
        done = tally.until_complete(240, settle=3.0, alive=[worker])
        assert_alive([worker])
        assert worker.proc.pid == pid and pid in cg.pids()
        peak, failcnt, kills, stat = cg.peak, cg.failcnt, cg.oom_kills(), cg.stat()
        code = worker.stop(60)
    finally:
        worker.kill()
        tally.close()
        cg.remove()
    tally.foreign = 0  # an input's further chunk records (first_copy: -1) are counted in the outputs, not as copies
    r = reconcile(f"test_memory_limit.py {processes} process{'es' if processes > 1 else ''} {chunking}",
                  f"{limit_mib}Mi cgroup; {big * 2} x ~1 MB, {long_docs + long_docs // 2} docs of 20-120 kB, "
                  f"{short * 2} short, 2 over max", tally, started, outputs_topic=names[1], dlq_topic=names[2],
                  bound=0, notes=f"peak {peak / MIB:.0f} MiB of {limit_mib} (estimate {est.total / MIB:.0f}); "
                                 f"failcnt {failcnt}; oom_kill {kills}")
    note(f"peak {peak / MIB:.0f} MiB of the {limit_mib} MiB limit ({100 * peak / (limit_mib * MIB):.0f}%); "
         f"estimate {est.total / MIB:.0f} MiB: {est.describe()}; at the end rss {stat['total_rss'] / MIB:.0f} "
         f"cache {stat['total_cache'] / MIB:.0f} MiB; failcnt {failcnt}, oom_kill {kills}")
    assert done, f"{r.missing} inputs never seen"
    assert kills == 0, "the OOM killer killed a worker process"
    # at the limit the kernel reclaims the table's page cache (thrashing) before it kills; this kernel's v1 failcnt
    # stayed 0 through that (before the fixes: peak = the limit, failcnt 0), so the peak itself must stay below it
    assert peak < limit_mib * MIB and failcnt == 0, f"usage reached the {limit_mib} MiB limit (failcnt {failcnt})"
    assert peak <= est.total, "the start-up estimate must bound the measured peak (worker.memory_budget's constants)"
    assert code == 0, worker.log_tail()
    assert r.missing == 0 and r.duplicates == 0
    assert r.dead_letters == 2  # the two over MAX_BYTES, too_large
    assert r.outputs >= n - 2


def test_settings_that_cannot_fit_the_cgroup_limit_are_refused_at_start(worker_env, topics, gemma_cold, tmp_path):
    """Two processes with chunked 16 MB parts in the one-process limit: refused before the model loads, exit 2, one
    line naming the limit and the settings to change; the limit is read from the worker's own cgroup."""
    require()
    env = worker_env(*topics(), EMBED_MODEL__PATH=str(gemma_cold), EMBED_CHUNKING__MODE="words",
                     EMBED_BATCH__MAX_KBYTES="16384", EMBED_MODEL__PREPARED_DIR=str(tmp_path / "prepared"))
    cg = MemCgroup(1280 * MIB)
    worker = WorkerProcess(env, tmp_path / "w.log", processes=2, prefix=cg.prefix())
    try:
        code = worker.proc.wait(60)
        peak = cg.peak
    finally:
        worker.kill()
        cg.remove()
    lines = worker.log_path.read_text().splitlines()
    refused = [line for line in lines if line.startswith("embedstream run:")]
    note(f"refused in one line, peak {peak / MIB:.0f} MiB: {refused[:1]}")
    assert code == 2, worker.log_tail()
    assert len(refused) == 1 and "the cgroup's memory limit is 1280 MiB" in refused[0], lines[-5:]
    assert "EMBED_BATCH__MAX_KBYTES" in refused[0]
    assert not any('"encoder ready"' in line for line in lines)  # refused before loading the model

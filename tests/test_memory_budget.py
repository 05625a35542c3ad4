"""worker.memory_budget: the cgroup's memory limit, the peak estimate, the start-up refusal, batch parts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from worker.memory_budget import MIB, cgroup_memory_limit, estimate, input_parts
from worker.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]
# the gemma-like model (the default model's shape): 262,145 x 768 float16 table, Gemma 3's tokenizer.json
GEMMA_TABLE, GEMMA_TOKENIZER = 402_654_808, 33_384_568


class Msg:
    def __init__(self, size: int | None) -> None:
        self.v = None if size is None else b"x" * size

    def value(self) -> bytes | None:
        return self.v

    def error(self) -> None:
        return None


def test_input_parts_bound_each_part_by_bytes_and_keep_order():
    msgs = [Msg(400), Msg(400), Msg(300), Msg(None), Msg(2000), Msg(10), Msg(10)]
    parts = list(input_parts(msgs, 1000))
    assert [len(p) for p in parts] == [2, 2, 1, 2]  # 800 | 300 + null | 2000 alone | 20
    assert [m for p in parts for m in p] == msgs
    assert list(input_parts([], 1000)) == []


def _v1(tmp_path: Path, limits: dict[str, str], own: str = "/pod/ctr") -> tuple[str, str]:
    proc = tmp_path / "cgroup"
    proc.write_text(f"12:pids:/x\n4:memory:{own}\n0::/\n")
    for rel, value in limits.items():
        d = tmp_path / "fs" / "memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(value + "\n")
    return str(proc), str(tmp_path / "fs")


def test_cgroup_v1_limit_is_the_smallest_up_to_the_root(tmp_path):
    proc, root = _v1(tmp_path, {"": "9223372036854771712", "pod": str(1536 * MIB), "pod/ctr": str(4096 * MIB)})
    assert cgroup_memory_limit(proc, root) == 1536 * MIB


def test_cgroup_v1_inside_a_container_reads_the_mount(tmp_path):
    # /proc/self/cgroup names the host's path, the container sees its own cgroup at the mount
    proc, root = _v1(tmp_path, {"": str(1280 * MIB)}, own="/kubepods/burstable/pod1/abc")
    assert cgroup_memory_limit(proc, root) == 1280 * MIB


def test_cgroup_v1_unlimited_is_none(tmp_path):
    proc, root = _v1(tmp_path, {"": "9223372036854771712", "pod/ctr": "9223372036854771712"})
    assert cgroup_memory_limit(proc, root) is None


def test_cgroup_v2_limit(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1\n")
    fs = tmp_path / "fs"
    (fs / "kubepods" / "pod1").mkdir(parents=True)
    (fs / "cgroup.controllers").write_text("cpu memory\n")
    (fs / "kubepods" / "memory.max").write_text("max\n")
    (fs / "kubepods" / "pod1" / "memory.max").write_text(f"{1280 * MIB}\n")
    assert cgroup_memory_limit(str(proc), str(fs)) == 1280 * MIB
    (fs / "kubepods" / "pod1" / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(str(proc), str(fs)) is None
    assert cgroup_memory_limit(str(tmp_path / "missing"), str(fs)) is None


def _gemma(processes: int = 1, **env: str):
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        s = load_settings()
    return estimate(s, processes, GEMMA_TABLE, GEMMA_TOKENIZER, 768)


def test_the_charts_limits_fit_the_default_model_with_max_size_messages_and_chunking():
    """values.yaml: 1280Mi for one process, 1536Mi for processes: 2 (docs/deploy.md); the defaults (1 MB messages,
    16 MB prefetch, 4 MB parts, 8 batches in flight) fit, chunking on or off. The measured peaks these bound are in
    docs/reliability.md (tests/faults/test_memory_limit.py)."""
    for chunking in ("off", "words", "tokens"):
        assert _gemma(1, EMBED_CHUNKING__MODE=chunking).total <= 1280 * MIB
        assert _gemma(2, EMBED_CHUNKING__MODE=chunking).total <= 1536 * MIB


def test_what_cannot_fit_is_over_the_limit():
    big = _gemma(1, EMBED_BATCH__MAX_PREFETCH_KBYTES="524288")  # 512 MB of prefetch with 1 MB messages
    assert big.total > 1280 * MIB
    parts = _gemma(1, EMBED_CHUNKING__MODE="words", EMBED_BATCH__MAX_KBYTES="65536",  # 64 MB chunked at once
                   EMBED_BATCH__MAX_PREFETCH_KBYTES="65536")
    assert parts.total > 1280 * MIB
    assert _gemma(4, EMBED_CHUNKING__MODE="words").total > 1536 * MIB  # four chunking processes in the 2-process limit


def test_the_fast_path_cache_counts_where_the_fast_path_runs():
    base = _gemma(1, EMBED_MODEL__FAST_PATH="off").total
    assert _gemma(1, EMBED_MODEL__FAST_PATH="on").total == base + 256 * MIB
    assert _gemma(1, EMBED_MODEL__TOKENIZER="tokenizers", EMBED_MODEL__FAST_PATH_CACHE_MB="64").total == base + 64 * MIB
    assert _gemma(1, EMBED_MODEL__TOKENIZER="gigatoken").total == base  # auto: off in front of gigatoken


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("EMBED_")}
    full.update({"EMBED_LOG__FORMAT": "text", "EMBED_METRICS__ENABLED": "false",
                 "EMBED_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", **env})
    return subprocess.run([sys.executable, "-m", "worker", "run"], env=full, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_start_up_refuses_what_cannot_fit_in_one_line(small_model):
    r = _run({"EMBED_MODEL__PATH": str(small_model), "EMBED_MEMORY_LIMIT_MB": "100"})
    assert r.returncode == 2, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("embedstream run:")]
    assert len(lines) == 1, r.stderr[-2000:]
    assert "memory: these settings need up to" in lines[0] and "EMBED_MEMORY_LIMIT_MB is 100 MiB" in lines[0]
    assert "EMBED_BATCH__MAX_PREFETCH_KBYTES" in lines[0]


def test_check_passes_and_can_be_turned_off(small_model, monkeypatch):
    from worker.memory_budget import check

    monkeypatch.setenv("EMBED_MODEL__PATH", str(small_model))
    monkeypatch.setenv("EMBED_MEMORY_LIMIT_MB", "0")
    assert check(load_settings(), 1) is None
    monkeypatch.setenv("EMBED_MEMORY_LIMIT_MB", "100000")
    est = check(load_settings(), 2)
    assert est is not None and est.processes == 2 and est.total < 100000 * MIB
    monkeypatch.setenv("EMBED_MEMORY_LIMIT_MB", "64")
    with pytest.raises(SettingsError) as e:
        check(load_settings(), 1)
    assert "\n" not in str(e.value)


def test_a_batch_is_processed_in_parts_each_its_own_batch_for_the_offsets(small_model):
    """EMBED_BATCH__MAX_KBYTES=1: five ~600-byte inputs make five parts, each a batch of its own in the offset
    tracker, in consumption order, every input published once."""
    import orjson
    from fuzzkit import FakeMessage, offline_pipeline

    from worker.encoder import Encoder
    from worker.model import load_model
    from worker.settings import Settings

    pipe = offline_pipeline(Settings(batch={"max_kbytes": 1, "max_in_flight_batches": 8},
                                     chunking={"mode": "words", "size": 20}), Encoder(load_model(small_model)))
    text = " ".join(["fox jumps over the lazy dog"] * 20)
    msgs = [FakeMessage(orjson.dumps({"id": f"d{i}", "text": text}), offset=10 + i) for i in range(5)]
    pipe.process(msgs)  # type: ignore[arg-type]
    pending = list(pipe.tracker.pending)
    assert [b.next_offsets for b in pending] == [{("texts", 0): 11 + i} for i in range(5)]
    assert [sum(b.counts.values()) for b in pending] == [1] * 5
    sent = pipe.producer.sent  # type: ignore[attr-defined]
    docs = {dict(r[3])["source-offset"] for r in sent}
    assert docs == {str(10 + i).encode() for i in range(5)} and all(r[0] == pipe.s.output_topic for r in sent)
    assert len(sent) == sum(b.outstanding for b in pending) and len(sent) > 5  # chunks

"""`run --processes 2` on the gemma-like model (Gemma 3's 33 MB tokenizer, 262k x 768 float16 table).

The supervisor builds the encoder once and forks its children, so the tokenizer is in memory once per pod:
each child's own (private) memory stays small. Memory is asserted here; start-up time is the benchmark's.
"""

from __future__ import annotations

import collections

import orjson
import pytest
from test_processes import child_pids, total

from kafkatools import Collector, WorkerProcess, json_messages, produce, wait_for
from worker.metrics import read_private_memory, read_smaps_rollup

pytestmark = pytest.mark.integration

# Each child's own memory after 20,000 short texts (docs/deploy.md, "Memory"): ~15 MB of interpreter and client
# after the fork, plus the batches' working set: up to max_in_flight_batches x max_messages outputs waiting in
# the producer (8 x 512 x ~8 KB of JSON vector = 32 MB) and the consumer's prefetch (16 MB); measured 70-96 MB.
CHILD_PRIVATE_LIMIT_MB = 200


def private_mb(pid: int) -> float:
    """The process's own memory: private pages, the table's page cache left out (worker.metrics explains why:
    a fixture written seconds before the run counted 207 MB of table as one child's "Private_Dirty")."""
    own = read_private_memory(pid)
    assert own is not None, f"no smaps for pid {pid}"
    return own / 2**20


def table_mapping(pid: int, table: str) -> dict[str, int]:
    """The smaps counters (kB) of the model table's mapping in a process, and its permissions."""
    found: dict[str, int] = {}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head, _, rest = line.partition(" ")
            if not head.endswith(":"):
                parts = line.split(None, 5)
                inside = len(parts) == 6 and parts[5].strip() == table
                if inside:
                    found["shared"] = int(parts[1][3] == "s")
            elif inside and rest.split()[-1:] == ["kB"]:
                found[head.rstrip(":")] = found.get(head.rstrip(":"), 0) + int(rest.split()[0])
    return found


def test_two_processes_on_the_gemma_like_model_share_the_tokenizer(bootstrap, topics, worker_env, gemma_model,
                                                                    tmp_path):
    n = 20_000
    model = gemma_model("float16")
    inp, out, dlq = topics(partitions=4)
    produce(bootstrap, inp, json_messages(n, keys=40, seed=13))
    worker = WorkerProcess(worker_env(inp, out, dlq, EMBED_MODEL__PATH=str(model)), tmp_path / "sup.log",
                           processes=2)
    collector = Collector(bootstrap, out)
    try:
        worker.wait_ready(timeout=180)
        # Start-up is exported per process: from the supervisor's start to ready, and the one model load.
        wait_for(lambda: total(worker, "embedstream_startup_seconds") > 0, 30, "the start-up gauges")
        _, body = worker.get("/metrics")
        loads = [float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
                 if line.startswith("embedstream_model_load_seconds{")]
        assert len(loads) == 2 and loads[0] > 0 and loads[0] == loads[1]  # loaded once, before the fork
        records = collector.poll_until(n, timeout=300)
        wait_for(lambda: total(worker, "embedstream_messages_produced_total") >= n, 30, "the produced counter")
        pids = child_pids(worker)
        assert len(pids) == 2
        private = {index: private_mb(pid) for index, pid in pids.items()}
        table = {index: table_mapping(pid, str(model / "model.safetensors")) for index, pid in pids.items()}
        pss = {index: read_smaps_rollup(pid)["Pss"] / 2**20 for index, pid in pids.items()}
        supervisor_private = private_mb(worker.proc.pid)
        code = worker.stop(timeout=60)
    finally:
        worker.kill()
        collector.close()
    assert code == 0, worker.log_tail()
    ids = collections.Counter(orjson.loads(r.value)["id"] for r in records)
    assert len(ids) == n  # every message out (at-least-once: duplicates allowed, none expected here)
    print(f"\nchild private MB {private}, child PSS MB {pss}, supervisor private MB {supervisor_private:.0f}")
    print("table mapping per child (kB): " + "; ".join(
        f"{i}: rss {t.get('Rss', 0)}, private dirty {t.get('Private_Dirty', 0)}, anonymous {t.get('Anonymous', 0)}"
        for i, t in table.items()))
    for index, mb in private.items():
        assert mb <= CHILD_PRIVATE_LIMIT_MB, f"process {index}: {mb:.0f} MB private > {CHILD_PRIVATE_LIMIT_MB}"
    for index, t in table.items():  # the table is the page cache, mapped shared: never copied into a child
        assert t.get("shared") == 1 and t.get("Anonymous", 0) == 0, f"process {index}: table mapping {t}"
    log = worker.log_path.read_text()
    assert "just got forked, after parallelism has already been used" not in log  # no rayon pool before fork

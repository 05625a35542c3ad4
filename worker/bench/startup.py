"""`bench pipeline`'s start-up and memory figures: process start to /readyz 200, and each process's private
memory (its own: the model table's page cache left out) and PSS once the stream is through, with the pod's PSS
against one process's. Kept apart from the throughput runs that use them.

`embedstream bench startup`: seconds from `embedstream run`'s process start to /readyz 200 against a real
broker, with the tokenizer verdict stored (worker.prepared) and without it (EMBED_MODEL__PREPARED=false: the
full check), for each process count, and where the time went (the worker's own "ready" log line).

Each configuration starts once unmeasured (it warms the page cache and, with the verdict, stores it), then
`--repeat` times measured; the table shows the median and the best. The model folder is linked into a
temporary folder, so the verdict this writes never lands in the model's own folder.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = {"verdict": "true", "check": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, t0: float, proc: subprocess.Popen[Any], out: dict[str, float]) -> None:
    """Poll /readyz from the worker's start until it answers 200; out["startup_s"] = seconds since t0. No
    deadline (the run has its own) and a long request timeout: a busy process answers slowly."""
    from worker.readiness import wait_until_ready

    if wait_until_ready(f"http://127.0.0.1:{port}/readyz", math.inf, request_timeout=10, interval=0.05,
                        gave_up=lambda: proc.poll() is not None):
        out["startup_s"] = time.perf_counter() - t0


def memory_now(pids: list[int]) -> tuple[list[float], list[float]]:
    """(private MB: the process's own memory, the model table's page cache left out; PSS MB) of each process,
    now."""
    from worker.metrics import read_private_memory, read_smaps_rollup

    found = [(pid, m) for pid, m in ((pid, read_smaps_rollup(pid)) for pid in pids) if m]
    return ([round((read_private_memory(pid) or 0) / 2**20, 1) for pid, _ in found],
            [round(m.get("Pss", 0) / 2**20, 1) for _, m in found])


def report_memory(runs: list[dict[str, Any]]) -> None:
    """Start-up and the memory left after the stream; pod PSS against one process's on the same format."""
    print("\n| processes | format | guarantee | start-up s (to /readyz 200) | private MB per process "
          "(dirty+clean, after) | PSS MB per process | pod PSS MB | pod PSS / 1 process |")
    print("|---|---|---|---:|---|---|---:|---:|")
    for r in runs:
        one = [o for o in runs if o["processes"] == 1 and o["format"] == r["format"]
               and o["guarantee"] == "at_least_once"]
        ratio = f"{r['after_total_pss_mb'] / one[0]['after_total_pss_mb']:.2f}" if one else "-"
        print(f"| {r['processes']} | {r['format']} | {r['guarantee']} | {r['startup_s']:.2f} | "
              f"{r['after_private_mb']} | {r['after_pss_mb']} | {r['after_total_pss_mb']} | {ratio} |", flush=True)



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
                   help="a running broker (default $KAFKA_BOOTSTRAP_SERVERS; else one is started on a free port)")
    p.add_argument("--model", help="Model2Vec folder (default: the gemma-like float16 model, worker.bench.gemma)")
    p.add_argument("--processes", default="1,2", help="comma-separated process counts, e.g. 1,2")
    p.add_argument("--modes", default="verdict,check", help="verdict (stored, reused) and/or check (the full check)")
    p.add_argument("--repeat", type=int, default=3, help="measured starts per configuration (after one warm-up)")
    p.add_argument("--json", help="write all results here as JSON")


def one_start(bootstrap: str, model: Path, processes: int, prepared: str, prepared_dir: Path) -> dict[str, Any]:
    """Start a worker, wait for /readyz 200, read its "ready" log line, stop it (SIGTERM)."""
    from worker.bench.harness import delete_topics, make_topics
    from worker.bench.pipeline import worker_env

    topics = make_topics(bootstrap, max(processes, 1))
    env = worker_env(bootstrap, model, topics, "f32", 512)
    port = free_port()
    env.update(EMBED_METRICS__PORT=str(port), EMBED_METRICS__HOST="127.0.0.1", EMBED_LOG__LEVEL="INFO",
               EMBED_LOG__FORMAT="json", EMBED_MODEL__PREPARED=prepared, EMBED_MODEL__PREPARED_DIR=str(prepared_dir))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--processes", str(processes)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    out: dict[str, float] = {}
    try:
        wait_ready(port, t0, proc, out)
        time.sleep(0.5)  # the worker logs "ready" (with its phases) within 0.05 s of answering 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
        delete_topics(bootstrap, list(topics))
    if "startup_s" not in out:
        raise RuntimeError(f"the worker exited before it was ready (exit {proc.returncode}): {err[-2000:]}")
    phases: dict[str, Any] = {}
    for line in err.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("msg") == "ready" and "startup_seconds" not in phases:
            phases.update({k: v for k, v in rec.items() if k.endswith("_seconds")})
        if rec.get("msg") == "tokenizer verdict reused":
            phases["verdict_reused"] = True
    return {"ready_s": round(out["startup_s"], 3), **phases}


def linked_copy(model: Path, into: Path) -> Path:
    """The model's files as symlinks in a folder of our own (a verdict written there stays there)."""
    into.mkdir(parents=True, exist_ok=True)
    for f in model.iterdir():
        if f.is_file() and f.name != "embedstream-prepared.json":
            (into / f.name).symlink_to(f.resolve())
    return into


def main(args: argparse.Namespace) -> int:
    from worker.bench.harness import PrivateBroker, progress

    if args.model:
        source = Path(args.model)
    else:
        from worker.bench.gemma import build_model

        source = build_model("float16")
    counts = [int(x) for x in str(args.processes).split(",") if x]
    modes = [m for m in str(args.modes).split(",") if m]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"bench startup: unknown mode {m!r} (verdict, check)")
    print(f"bench startup: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"model {source}, processes {counts}, {args.repeat} measured starts after one warm-up, load "
          f"{os.getloadavg()[0]:.2f}")
    results: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap or stack.enter_context(PrivateBroker())
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
            model = linked_copy(source, Path(tmp) / "model")
            for processes in counts:
                for mode in modes:
                    label = f"{processes} proc, {mode}"
                    progress(f"{label}: warm-up\n")
                    one_start(bootstrap, model, processes, MODES[mode], Path(tmp) / "prepared")
                    runs = []
                    for i in range(args.repeat):
                        progress(f"{label}: start {i + 1}/{args.repeat}\n")
                        runs.append(one_start(bootstrap, model, processes, MODES[mode], Path(tmp) / "prepared"))
                    results.append({"processes": processes, "mode": mode, "runs": runs})
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def print_table(results: list[dict[str, Any]]) -> None:
    cols = ("before_load_seconds", "load_seconds", "kafka_seconds")
    print(f"\n{'processes':>9} {'mode':>8} {'ready median':>13} {'best':>6}  "
          + "  ".join(f"{c.replace('_seconds', ''):>11}" for c in cols) + "  (medians, s)")
    for r in results:
        ready = [x["ready_s"] for x in r["runs"]]
        med = {c: statistics.median([x[c] for x in r["runs"] if c in x] or [float("nan")]) for c in cols}
        print(f"{r['processes']:>9} {r['mode']:>8} {statistics.median(ready):>13.2f} {min(ready):>6.2f}  "
              + "  ".join(f"{med[c]:>11.2f}" for c in cols))

"""`bench pipeline`'s start-up and memory figures: process start to /readyz 200, and each process's private
memory (its own: the model table's page cache left out) and PSS once the stream is through, with the pod's PSS
against one process's. Kept apart from the throughput runs that use them.
"""

from __future__ import annotations

import math
import socket
import subprocess
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, t0: float, proc: subprocess.Popen[bytes], out: dict[str, float]) -> None:
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

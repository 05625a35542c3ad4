"""A real Prometheus scrapes a worker and a `run --processes 2` supervisor through a stream on the real
broker; then every query of the dashboard, its variables substituted as Grafana would, returns data."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_tools import require_tool
from promserver import SCRAPE_INTERVAL_S, PrometheusServer

from kafkatools import Collector, WorkerProcess, json_messages, produce, unique, wait_for
from worker.dashboard.check import check_queries
from worker.dashboard.queries import load_dashboard, targets
from worker.dashboard.queries import panels as all_panels

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "helm" / "embedstream" / "dashboards" / "embedstream.json"
NAMESPACE = "it"
JOB = "embedstream.it"  # a regex metacharacter in the value: the $job substitution must escape it
# Expressions that are empty in a healthy run, by panel title, with the reason. Everything else must
# return data.
MAY_BE_EMPTY = {
    "Kafka client errors by kind": "embedstream_kafka_errors_total{kind} series appear with the first client "
                                   "error; a healthy run against a healthy broker has none",
}
WAVES, PER_WAVE, BAD_PER_WAVE = 10, 400, 4


def stop_all(*stops) -> None:  # type: ignore[no-untyped-def]
    errors = []
    for stop in stops:
        try:
            stop()
        except Exception as e:  # every process is stopped even when one fails to
            errors.append(e)
    if errors:
        raise errors[0]


def test_every_dashboard_query_returns_data_from_a_real_prometheus(bootstrap, topics, worker_env, tmp_path):
    binary = require_tool("prometheus")
    inp, out, dlq = topics(partitions=4)
    env = worker_env(inp, out, dlq, EMBED_KAFKA__GROUP_ID=unique("group"), EMBED_BATCH__MAX_MESSAGES="100")
    single = WorkerProcess(env, tmp_path / "worker.log")
    supervisor = WorkerProcess(env, tmp_path / "supervisor.log", processes=2)
    labels = {"namespace": NAMESPACE, "job": JOB}
    prom = PrometheusServer(binary, tmp_path / "prometheus", {
        f"127.0.0.1:{single.port}": {**labels, "pod": "embedstream-0"},
        f"127.0.0.1:{supervisor.port}": {**labels, "pod": "embedstream-1"},
    })
    collector = Collector(bootstrap, out)
    try:
        prom.wait_ready()
        single.wait_ready(90)
        supervisor.wait_ready(90)
        wait_for(lambda: prom.targets_up() == 2, 30, "Prometheus to scrape both targets")
        api = prom.api
        wait_for(lambda: api.query("sum(embedstream_assigned_partitions)")[0]["value"][1] == "4", 90,
                 "4 partitions over the 3 group members")
        start = time.time() - 10
        sent = 0
        for wave in range(WAVES):  # a stream, not one burst: rates over several scrapes
            good = json_messages(PER_WAVE, keys=40, seed=wave, prefix=f"w{wave}")
            bad = [(f"bad{wave}-{i}".encode(), b"{oops", None) for i in range(BAD_PER_WAVE)]
            sent += produce(bootstrap, inp, good + bad)
            time.sleep(2)
        records = collector.poll_until(WAVES * PER_WAVE, timeout=180, settle=1)

        def consumed() -> float:
            result = api.query("sum(embedstream_messages_consumed_total)")
            return float(result[0]["value"][1]) if result else 0.0

        wait_for(lambda: consumed() == sent, 60, "Prometheus to see every consumed message")
        time.sleep(4 * SCRAPE_INTERVAL_S)
        end = time.time()

        dashboard = load_dashboard(DASHBOARD)
        variables, checks = check_queries(api, dashboard, start, end, SCRAPE_INTERVAL_S, width_points=10**6)
        assert variables == {"namespace": NAMESPACE, "job": JOB.replace(".", "\\\\.")}
        assert all("$" not in c.expr for c in checks), [c.expr for c in checks if "$" in c.expr]
        unexpected = [(c.title, c.expr) for c in checks if not c.has_data and c.title not in MAY_BE_EMPTY]
        assert unexpected == [], f"dashboard queries without data: {unexpected}"
        assert len(checks) == len(targets(dashboard)) >= 40
        check_cli(prom.url, start, end)

        # The supervisor's two children are two series of the same pod, told apart by `process`.
        by_process = api.query(f'embedstream_assigned_partitions{{pod="embedstream-1", job="{JOB}"}}')
        assert sorted(s["metric"].get("process") for s in by_process) == ["0", "1"]
        # Readiness as Prometheus sees it: all three processes ready (the gauge follows /readyz).
        assert float(api.query(f'sum(embedstream_ready{{job="{JOB}"}})')[0]["value"][1]) == 3
        dead = api.query('sum(embedstream_messages_dead_lettered_total{reason="invalid_json"})')
        assert float(dead[0]["value"][1]) == WAVES * BAD_PER_WAVE
        assert len(records) >= WAVES * PER_WAVE


        render_dashboard(prom.url, start, end, tmp_path)
    finally:
        stop_all(prom.stop, lambda: single.stop(timeout=60), lambda: supervisor.stop(timeout=60), collector.close)


def check_cli(url: str, start: float, end: float) -> None:
    """`python -m worker dashboard check`: the same queries, one line each; exit 0 only when every empty one is
    in a panel passed with --may-be-empty."""
    base = [sys.executable, "-m", "worker", "dashboard", "check", "--prometheus", url, "--dashboard", str(DASHBOARD),
            "--start", f"{start:.0f}", "--end", f"{end:.0f}", "--scrape-interval", f"{SCRAPE_INTERVAL_S:g}s"]
    allow = [arg for title in MAY_BE_EMPTY for arg in ("--may-be-empty", title)]
    lenient = subprocess.run(base + allow, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    lines = lenient.stdout.splitlines()
    assert len(lines) == len(targets(load_dashboard(DASHBOARD))), lenient.stdout
    allowed_empty = [line for line in lines if line.startswith("empty (allowed)")]
    strict = subprocess.run(base, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert strict.returncode == (1 if allowed_empty else 0), strict.stdout + strict.stderr
    assert strict.stdout.count("\nEMPTY") + strict.stdout.startswith("EMPTY") == len(allowed_empty)


def render_dashboard(url: str, start: float, end: float, tmp_path: Path) -> None:
    """`python -m worker dashboard render` on the same data (matplotlib: the dashboard extra, in the test extra)."""
    png = Path(os.environ.get("EMBEDSTREAM_DASHBOARD_PNG") or tmp_path / "dashboard.png")
    cmd = [sys.executable, "-m", "worker", "dashboard", "render", "--prometheus", url, "--dashboard", str(DASHBOARD),
           "--start", f"{start:.0f}", "--end", f"{end:.0f}", "--scrape-interval", f"{SCRAPE_INTERVAL_S:g}s",
           "-o", str(png)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    match = re.search(r"panels drawn: (\d+), empty: (\d+)(?: \((.*)\))?$", proc.stderr, re.MULTILINE)
    assert match, proc.stderr
    panels = [p for p in all_panels(load_dashboard(DASHBOARD)) if p["type"] != "row"]
    assert int(match.group(1)) == len(panels)
    empty = set(match.group(3).split(", ")) if match.group(3) else set()
    assert int(match.group(2)) == len(empty) and empty <= set(MAY_BE_EMPTY), proc.stderr

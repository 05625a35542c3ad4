"""The pipeline benchmark harness keeps working (small N; not a timed test)."""

from __future__ import annotations

import argparse
import json

import pytest

from worker.bench import pipeline

pytestmark = pytest.mark.integration


def test_bench_pipeline_runs_end_to_end_and_reports_every_figure(bootstrap, small_model, tmp_path, capsys):
    p = argparse.ArgumentParser()
    pipeline.add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--bootstrap", bootstrap, "--model", str(small_model), "--messages", "1500",
                         "--processes", "1", "--formats", "json,f32", "--baseline-messages", "200",
                         "--latency", "--latency-seconds", "2", "--latency-waits", "20", "--json", str(out)])
    assert pipeline.main(args) == 0
    r = json.loads(out.read_text())
    assert [(x["processes"], x["format"]) for x in r["runs"]] == [(1, "json"), (1, "f32")]
    for run in r["runs"]:
        assert run["messages"] == 1500 and run["messages_per_s"] > 0 and run["overhead_ratio"] > 0
        assert run["peak_pss_mb"] and run["peak_pss_mb"][0] > 0
        split = run["split_us_per_message"]  # the per-stage split of a 1-process run
        assert set(split) == {"decode", "encode", "format", "send", "callbacks", "loop_other", "librdkafka",
                              "other_threads"} and all(v >= 0 for v in split.values())
    json_run, f32_run = r["runs"]
    assert json_run["wire_bytes_per_message"] > f32_run["wire_bytes_per_message"] > 32 * 4
    assert r["encoder"]["cpu_s_per_10k"] > 0
    assert r["baseline"]["messages"] == 200
    lat = r["latency"][0]
    assert lat["messages"] == lat["sent"] > 0 and 0 <= lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    printed = capsys.readouterr().out
    assert "overhead ratio" in printed and "naive baseline" in printed and "p99 ms" in printed
    assert "| callbacks |" in printed and "wire bytes" in printed


def test_bench_startup_times_both_modes_and_reads_the_phases(bootstrap, small_model, tmp_path, capsys):
    from worker.bench import startup

    p = argparse.ArgumentParser()
    startup.add_arguments(p)
    out = tmp_path / "startup.json"
    args = p.parse_args(["--bootstrap", bootstrap, "--model", str(small_model), "--processes", "1",
                         "--repeat", "1", "--json", str(out)])
    assert startup.main(args) == 0
    r = {x["mode"]: x["runs"] for x in json.loads(out.read_text())}
    assert set(r) == {"verdict", "check"}
    for mode, runs in r.items():
        (run,) = runs
        assert run.get("verdict_reused", False) is (mode == "verdict"), run
        assert 0 < run["ready_s"] and run["startup_seconds"] > 0
        assert run["before_load_seconds"] > 0 and run["load_seconds"] > 0 and "kafka_seconds" in run
    assert not (small_model / "embedstream-prepared.json").exists(), "verdicts stay in the bench's own folder"
    assert "ready median" in capsys.readouterr().out

"""bench soak's verdict on hand-made series: a flat run passes; loss, repeats, dead letters, a worker exit, a
memory leak, a growing backlog or commit lag and a latency creep each fail, naming what; noise and a stall that
recovers do not."""

from __future__ import annotations

import math

import numpy as np

from worker.bench.soak_report import MB, Interval, plot, print_table, slope, verdict

RATE = 1000.0


def intervals(n: int = 10, backlog=None, commit=None, p99=None) -> list[Interval]:
    out = []
    for k in range(n):
        iv = Interval(index=k, start_s=k * 60.0, seconds=60.0, sent=60_000, outputs=60_000, p50_ms=20.0,
                      p99_ms=(p99[k] if p99 else 80.0), max_ms=200.0,
                      backlog_mean=(backlog[k] if backlog else 300.0), backlog_max=900,
                      commit_lag_mean=(commit[k] if commit else 2500.0), commit_lag_max=6000)
        iv.rss_mb, iv.pss_mb = {"main": 900.0}, {"main": 700.0}
        out.append(iv)
    return out


def memory(n_minutes: int = 10, growth_mb: float = 0.0, noise_mb: float = 3.0, seed: int = 1):
    rng = np.random.default_rng(seed)
    ts = np.arange(0, n_minutes * 60, 5.0)
    vals = 900 * MB + growth_mb * MB * ts / ts[-1] + rng.normal(0, noise_mb * MB, len(ts))
    return {"main": [(float(t), int(v)) for t, v in zip(ts, vals, strict=True)]}


def judge(ivs=None, mem=None, **kw):
    args = dict(rate=RATE, warmup=2, sent=600_000, unique=600_000, duplicates=0, dead_letters=0, exit_code=0)
    args.update(kw)
    return verdict(ivs or intervals(), mem or memory(), **args)


def test_a_flat_run_passes():
    result = judge()
    assert result["failures"] == []
    assert abs(result["trends"]["memory"]["main"]["growth_mb"]) < 8


def test_loss_repeats_dead_letters_and_exit_each_fail():
    assert any(f.startswith("loss: 3 of 600,000") for f in judge(unique=599_997)["failures"])
    assert any(f.startswith("duplicates: 5") for f in judge(duplicates=5)["failures"])
    assert any(f.startswith("dead letters: 2") for f in judge(dead_letters=2)["failures"])
    assert any("exited with 137" in f for f in judge(exit_code=137)["failures"])


def test_a_leak_fails_and_names_the_process():
    failures = judge(mem=memory(growth_mb=120))["failures"]
    assert len(failures) == 1 and failures[0].startswith("memory: main RSS grows")
    # the same rise inside the warm-up only (start-up settling) is not a trend
    mem = memory()
    settled = [(t, v + (60 * MB if t < 120 else 0)) for t, v in mem["main"]]
    assert judge(mem={"main": settled})["failures"] == []


def test_growth_under_the_bound_passes():
    assert judge(mem=memory(growth_mb=20))["failures"] == []  # < max(32 MB, 5% of 900 MB)


def test_a_backlog_that_keeps_growing_fails():
    grow = [300.0 + 4000 * k for k in range(10)]
    failures = judge(ivs=intervals(backlog=grow))["failures"]
    assert len(failures) == 1 and failures[0].startswith("backlog: grows")


def test_a_stall_that_recovers_is_not_a_trend():
    stall = [300.0] * 5 + [30_000.0] + [300.0] * 4
    assert judge(ivs=intervals(backlog=stall))["failures"] == []


def test_commit_lag_drift_fails():
    drift = [2500.0 + 3000 * k for k in range(10)]
    failures = judge(ivs=intervals(commit=drift))["failures"]
    assert len(failures) == 1 and failures[0].startswith("commit lag: grows")


def test_latency_creep_fails_noise_does_not():
    creep = [80.0] * 6 + [400.0] * 4
    assert any(f.startswith("latency: p99 creeps") for f in judge(ivs=intervals(p99=creep))["failures"])
    noisy = [80.0, 300.0, 90.0, 70.0, 250.0, 85.0, 95.0, 260.0, 80.0, 90.0]
    assert judge(ivs=intervals(p99=noisy))["failures"] == []


def test_slope_is_least_squares():
    assert math.isclose(slope([0, 1, 2, 3], [1, 3, 5, 7]), 2.0)
    assert slope([0, 1], [0, 5]) == 0.0  # too few points to call a trend


def test_table_and_plot(tmp_path, capsys):
    ivs = intervals()
    print_table(ivs, warmup=2)
    out = capsys.readouterr().out
    assert "| 1 (warm-up) |" in out and "| 10 |" in out and "900 / 700" in out
    png = tmp_path / "soak.png"
    plot(ivs, memory(), RATE, "test", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

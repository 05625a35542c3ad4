"""`bench soak`'s judgement and report: per-interval records in, a list of failures out (loss, duplicates, a
growth trend in memory, backlog, commit lag or latency), plus the table and the plot.

Why apart from the run: the verdict is the part that must be right, so it is a pure function of numbers that
unit tests feed with flat, growing and lossy series (tests/test_soak_report.py), with no broker or worker.

What counts as a trend (each after the warm-up intervals, over the rest of the run):
- memory: the least-squares slope of a process's RSS samples, projected over that span, above
  `max(32 MB, 5% of its mean)`: a leak, not the allocator's few-MB steps;
- backlog (sent, not yet out) and commit lag (input end offsets minus the group's committed offsets): the
  projected growth above `rate x 10 s` *and* the last interval's mean above the first's by `rate x 5 s`; a
  worker that falls behind grows both, a stall that recovers grows neither at the end;
- latency: the median p99 of the second half above twice the first half's plus 200 ms (a creep, not noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MB = 2**20
MEMORY_FLOOR = 32 * MB
MEMORY_SHARE = 0.05
LAG_TREND_SECONDS = 10.0
LAG_RISE_SECONDS = 5.0
LATENCY_FACTOR = 2.0
LATENCY_SLACK_MS = 200.0


@dataclass
class Interval:
    """One record (by default one minute) of the soak."""

    index: int
    start_s: float
    seconds: float
    sent: int = 0
    outputs: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    backlog_mean: float = 0.0
    backlog_max: int = 0
    commit_lag_mean: float = 0.0
    commit_lag_max: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)  # process label -> max RSS in the interval
    pss_mb: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs (0 with fewer than 3 points or no spread in xs)."""
    if len(xs) < 3:
        return 0.0
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    dx = x - x.mean()
    den = float((dx * dx).sum())
    return float((dx * (y - y.mean())).sum() / den) if den > 0 else 0.0


def memory_failures(samples: dict[str, list[tuple[float, int]]], after_s: float) -> tuple[list[str], dict[str, Any]]:
    """samples: process label -> [(seconds since the soak began, RSS bytes)]."""
    failures: list[str] = []
    trends: dict[str, Any] = {}
    for label, points in samples.items():
        pts = [(t, v) for t, v in points if t >= after_s]
        if len(pts) < 3:
            continue
        ts, vs = [t for t, _ in pts], [v for _, v in pts]
        span = ts[-1] - ts[0]
        growth = slope(ts, vs) * span
        bound = max(MEMORY_FLOOR, MEMORY_SHARE * float(np.mean(vs)))
        trends[label] = {"growth_mb": round(growth / MB, 2), "bound_mb": round(bound / MB, 1),
                         "min_mb": round(min(vs) / MB, 1), "max_mb": round(max(vs) / MB, 1)}
        if growth > bound:
            failures.append(f"memory: {label} RSS grows {growth / MB:.1f} MB over {span / 60:.1f} min after warm-up "
                            f"(bound {bound / MB:.0f} MB; {min(vs) / MB:.0f} -> {max(vs) / MB:.0f} MB)")
    return failures, trends


def queue_failure(name: str, measured: list[Interval], means: list[float], rate: float) -> tuple[str | None, float]:
    """Backlog or commit lag: a trend and a rise by the end, both in input-seconds at the soak's rate."""
    if len(measured) < 2 or rate <= 0:
        return None, 0.0
    mids = [iv.start_s + iv.seconds / 2 for iv in measured]
    growth = slope(mids, means) * (mids[-1] - mids[0])
    rise = means[-1] - means[0]
    if growth > rate * LAG_TREND_SECONDS and rise > rate * LAG_RISE_SECONDS:
        return (f"{name}: grows {growth:,.0f} messages ({growth / rate:.1f} s of input) after warm-up, "
                f"{means[0]:,.0f} -> {means[-1]:,.0f}"), growth
    return None, growth


def latency_failure(measured: list[Interval]) -> str | None:
    p99 = [iv.p99_ms for iv in measured if not np.isnan(iv.p99_ms)]
    if len(p99) < 2:
        return None
    half = len(p99) // 2
    first, second = float(np.median(p99[:half])), float(np.median(p99[half:]))
    if second > LATENCY_FACTOR * first + LATENCY_SLACK_MS:
        return f"latency: p99 creeps from {first:.0f} ms (first half) to {second:.0f} ms (second half)"
    return None


def verdict(intervals: list[Interval], memory: dict[str, list[tuple[float, int]]], *, rate: float,
            warmup: int, sent: int, unique: int, duplicates: int, dead_letters: int,
            exit_code: int | None) -> dict[str, Any]:
    """Every failure found, and the figures behind them."""
    failures: list[str] = []
    if unique < sent:
        failures.append(f"loss: {sent - unique:,} of {sent:,} sent messages never reached the output topic")
    if duplicates:
        failures.append(f"duplicates: {duplicates:,} outputs repeat an input (no fault was injected)")
    if dead_letters:
        failures.append(f"dead letters: {dead_letters:,} (the soak's inputs are all valid)")
    if exit_code not in (0, None):
        failures.append(f"worker: exited with {exit_code}")
    measured = intervals[warmup:]
    after_s = measured[0].start_s if measured else float("inf")
    mem_fail, mem_trends = memory_failures(memory, after_s)
    failures += mem_fail
    trends: dict[str, Any] = {"memory": mem_trends}
    for name, means in (("backlog", [iv.backlog_mean for iv in measured]),
                        ("commit lag", [iv.commit_lag_mean for iv in measured])):
        fail, growth = queue_failure(name, measured, means, rate)
        trends[name.replace(" ", "_") + "_growth"] = round(growth)
        if fail:
            failures.append(fail)
    lat = latency_failure(measured)
    if lat:
        failures.append(lat)
    return {"failures": failures, "trends": trends}


def print_table(intervals: list[Interval], warmup: int) -> None:
    procs = sorted({p for iv in intervals for p in iv.rss_mb})
    print("\n| minute | sent/s | out/s | p50 ms | p99 ms | backlog (mean/max) | commit lag (mean/max) | "
          + " | ".join(f"RSS/PSS MB {p}" for p in procs) + " |")
    print("|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(procs))
    for iv in intervals:
        mark = " (warm-up)" if iv.index < warmup else ""
        mem = " | ".join(f"{iv.rss_mb.get(p, float('nan')):.0f} / {iv.pss_mb.get(p, float('nan')):.0f}"
                         for p in procs)
        minute = (iv.start_s + iv.seconds) / 60
        print(f"| {minute:g}{mark} | {iv.sent / iv.seconds:,.0f} | {iv.outputs / iv.seconds:,.0f} | "
              f"{iv.p50_ms:.1f} | {iv.p99_ms:.1f} | {iv.backlog_mean:,.0f} / {iv.backlog_max:,} | "
              f"{iv.commit_lag_mean:,.0f} / {iv.commit_lag_max:,} | {mem} |", flush=True)


def plot(intervals: list[Interval], memory: dict[str, list[tuple[float, int]]], rate: float, title: str,
         path: str) -> None:
    """Four panels against minutes: throughput, latency, memory per process, backlog and commit lag."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mins = [(iv.start_s + iv.seconds) / 60 for iv in intervals]
    fig, ax = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    ax[0].plot(mins, [iv.outputs / iv.seconds for iv in intervals], marker=".", label="outputs/s")
    ax[0].plot(mins, [iv.sent / iv.seconds for iv in intervals], linestyle="--", label="sent/s")
    ax[0].axhline(rate, color="grey", linewidth=0.8, label=f"target {rate:,.0f}/s")
    ax[0].set_ylabel("messages/s")
    ax[1].plot(mins, [iv.p50_ms for iv in intervals], marker=".", label="p50")
    ax[1].plot(mins, [iv.p99_ms for iv in intervals], marker=".", label="p99")
    ax[1].set_ylabel("end-to-end ms")
    for label, points in sorted(memory.items()):
        ax[2].plot([t / 60 for t, _ in points], [v / MB for _, v in points], label=f"RSS {label}")
    for label in sorted({p for iv in intervals for p in iv.pss_mb}):
        ax[2].plot(mins, [iv.pss_mb.get(label, float("nan")) for iv in intervals], linestyle="--", marker=".",
                   label=f"PSS {label} (interval max)")
    ax[2].set_ylabel("MB")
    ax[3].plot(mins, [iv.backlog_mean for iv in intervals], marker=".", label="backlog (sent - out), mean")
    ax[3].plot(mins, [iv.commit_lag_mean for iv in intervals], marker=".", label="commit lag, mean")
    ax[3].set_ylabel("messages")
    ax[3].set_xlabel("minutes since the load started")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend(fontsize=8, loc="upper right")
    ax[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)

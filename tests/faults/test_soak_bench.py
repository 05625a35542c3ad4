"""Issue 23, part 3, the CI form of `bench soak`: five minutes at 60% of the measured maximum on the gemma-like
float16 fixture (the default model's tokenizer and table shape), through the real broker, with the worker as a
child process on its defaults. The bench itself fails on loss, repeats, dead letters, a worker exit or a growth
trend (its judgement is unit-tested in tests/test_soak_report.py); here its exit code, its records and its
plot are checked too. The hour's run is `python -m worker bench soak` (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import note

pytestmark = [pytest.mark.faults, pytest.mark.integration]

MINUTES = float(os.environ.get("EMBEDSTREAM_SOAK_MINUTES", "5"))
# 60%, not the hour's 80%: the maximum is measured in ~15 s and this 2-core machine's other work can take a third
# of it for minutes (at 80% with other sessions' builds and tests running, the worker fell behind by 32 s of input
# over 4 minutes: a true verdict on that machine, not on the worker). The hour's run at 80% is in docs/reliability.md.
LOAD = float(os.environ.get("EMBEDSTREAM_SOAK_LOAD", "0.6"))


def test_five_minutes_of_steady_load_lose_nothing_and_grow_nothing(bootstrap, gemma_model, tmp_path: Path):
    model = gemma_model("float16")
    out, png = tmp_path / "soak.json", tmp_path / "soak.png"
    t0 = time.time()
    run = subprocess.run([sys.executable, "-m", "worker", "bench", "soak", "--bootstrap", bootstrap,
                          "--model", str(model), "--minutes", str(MINUTES), "--load", str(LOAD),
                          "--calibration", "60000", "--json", str(out), "--plot", str(png)],
                         capture_output=True, text=True, timeout=MINUTES * 60 + 600)
    print(run.stdout)
    assert out.is_file(), f"bench soak wrote no results (exit {run.returncode}): {run.stderr[-3000:]}"
    r = json.loads(out.read_text())
    assert run.returncode == 0, f"bench soak failed: {r['failures']}"
    assert r["failures"] == []
    intervals = r["intervals"]
    assert len(intervals) == round(MINUTES)
    assert abs(r["rate"] - LOAD * r["max_rate"]) < 1.0
    assert r["sent"] > r["rate"] * MINUTES * 60 * 0.95  # the paced producer kept its rate
    assert r["unique"] == r["sent"] and r["duplicates"] == 0 and r["dead_letters"] == 0 and r["exit_code"] == 0
    for iv in intervals:
        assert iv["sent"] > 0 and iv["p99_ms"] >= iv["p50_ms"] > 0
        assert iv["rss_mb"]["main"] > 0 and iv["pss_mb"]["main"] > 0
    for iv in intervals[r["warmup"]:]:  # the worker kept up with every record, not only on average
        assert iv["outputs"] > 0.9 * iv["sent"], iv
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    note(f"soak {MINUTES:g} min: max {r['max_rate']:,.0f} msg/s, rate {r['rate']:,.0f}, {r['sent']:,} sent, "
         f"p99 {[round(iv['p99_ms']) for iv in intervals]} ms, trends {r['trends']}, {time.time() - t0:.0f} s")

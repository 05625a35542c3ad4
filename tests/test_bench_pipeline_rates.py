"""The pipeline benchmark's arithmetic, offline: a run that finished between two looks at the output (its
steady window empty) still reports a rate, so the latency mode that paces its load by that rate sends
messages (a clean-clone CI run once measured `sent == 0` there)."""

from __future__ import annotations

import pytest

from worker.bench.pipeline import latency_run, steady_figures


def test_steady_window_holding_most_outputs_is_the_steady_state():
    f = steady_figures(n=10_000, done_at_first=1_000, elapsed=12.0, first_at=3.0, ready_s=2.5, cpu_total=20.0,
                       cpu_at_first=4.0)
    assert f["cpu_basis"] == "steady"
    assert f["steady_messages_per_s"] == pytest.approx(9_000 / 9.0)
    assert f["steady_cpu_s_per_10k"] == pytest.approx(16.0 / 9_000 * 10_000)


def test_every_output_at_the_first_look_falls_back_to_ready_to_done():
    f = steady_figures(n=1_500, done_at_first=1_500, elapsed=4.0, first_at=4.0, ready_s=3.0, cpu_total=5.0,
                       cpu_at_first=5.0)
    assert f["cpu_basis"] == "total"
    assert f["steady_messages_per_s"] == pytest.approx(1_500 / 1.0)
    assert f["steady_cpu_s_per_10k"] == pytest.approx(5.0 / 1_500 * 10_000)


def test_unknown_ready_time_uses_the_whole_run():
    f = steady_figures(n=100, done_at_first=100, elapsed=2.0, first_at=2.0, ready_s=float("nan"), cpu_total=1.0,
                       cpu_at_first=1.0)
    assert f["steady_messages_per_s"] == pytest.approx(50.0)


def test_latency_mode_refuses_a_rate_that_sends_nothing(tmp_path):
    with pytest.raises(ValueError, match="sends no message"):
        latency_run("127.0.0.1:1", tmp_path, ["x"], rate=0.0, seconds=2.0, max_wait_ms=20, max_messages=64)


def test_thread_split_ignores_a_thread_that_exited_between_the_samples():
    """A clean-clone CI run reported a negative `other_threads`: the pooling compiler's thread counted in the
    first sample and gone by the second. Thread by thread, no total goes negative."""
    from worker.bench.stages import cpu_between

    before = {1: ("main", 1.0), 2: ("rdk", 0.5), 3: ("other", 2.4), 4: ("other", 0.1)}
    after = {1: ("main", 3.0), 2: ("rdk", 0.9), 4: ("other", 0.3), 5: ("other", 0.2)}  # 3 exited, 5 is new
    main, rdk, other = cpu_between(before, after)
    assert main == pytest.approx(2.0) and rdk == pytest.approx(0.4) and other == pytest.approx(0.4)


def test_thread_sample_of_this_process_names_the_main_thread():
    import os
    import threading

    from worker.bench.stages import thread_cpu

    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="helper")
    t.start()
    try:
        sample = thread_cpu(os.getpid())
    finally:
        stop.set()
        t.join()
    assert sample[os.getpid()][0] == "main"
    assert any(kind == "other" for tid, (kind, _) in sample.items() if tid != os.getpid())
    assert all(cpu >= 0 for _, cpu in sample.values())

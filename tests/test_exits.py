"""How a worker ends: the signal handler's count of signals and the supervisor's exit code.

Both hold a race CI met once: a supervised process stopping by itself on an authentication error got the
supervisor's SIGTERM while stopping, took it for a second signal and exited 130, and the supervisor then
reported 130 instead of the authentication error's 5.
"""

from __future__ import annotations

import signal
import threading
from types import SimpleNamespace

import pytest

from worker.exits import EXIT_AUTH, EXIT_FATAL, StopOnSignal
from worker.supervisor import supervisor_exit_code


def _pipeline() -> SimpleNamespace:
    event = threading.Event()
    return SimpleNamespace(stop_event=event, stop=event.set, s=SimpleNamespace(shutdown_grace_s=3600.0))


def _handled(handler: StopOnSignal) -> None:
    handler(signal.SIGTERM, None)
    assert handler.watchdog is not None
    handler.watchdog.cancel()  # the test's process must outlive the watchdog


def test_the_first_signal_stops_gracefully_and_the_second_exits_130():
    pipeline = _pipeline()
    handler = StopOnSignal(pipeline)
    _handled(handler)
    assert pipeline.stop_event.is_set()
    with pytest.raises(SystemExit) as exited:
        handler(signal.SIGINT, None)
    assert exited.value.code == 130


def test_a_pipeline_stopping_by_itself_takes_the_first_signal_as_the_first():
    pipeline = _pipeline()
    pipeline.stop()  # e.g. the authentication error, before any signal
    handler = StopOnSignal(pipeline)
    _handled(handler)  # the supervisor's SIGTERM: no SystemExit(130)
    assert handler.received == 1
    with pytest.raises(SystemExit):
        handler(signal.SIGTERM, None)


@pytest.mark.parametrize(("cause", "stopped", "expected"), [
    (EXIT_AUTH, [130], EXIT_AUTH),          # the race above: the cause, not the effect
    (EXIT_AUTH, [0, EXIT_FATAL], EXIT_AUTH),
    (2, [], 2),
    (0, [0, 0], 0),                         # a plain SIGTERM to the supervisor
    (0, [0, EXIT_FATAL, -9], EXIT_FATAL),   # no cause: the worst process's code (killed ones are not > 0)
])
def test_the_supervisor_reports_the_cause_it_stopped_for(cause, stopped, expected):
    assert supervisor_exit_code(cause, stopped) == expected


def test_a_process_that_ignores_sigterm_is_killed_and_the_supervisor_exits_fatal():
    import subprocess
    import sys
    import time

    from worker.exits import EXIT_OK
    from worker.settings import Settings
    from worker.supervisor import Supervisor

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time, sys; "
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
                                 "time.sleep(120)"], stdout=subprocess.PIPE)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert stubborn.stdout is not None and stubborn.stdout.readline() == b"up\n"  # SIGTERM ignored from here
        sup = Supervisor(2, Settings(shutdown_grace_s=0.1), started_at=time.time())
        sup.children[0].pid, sup.children[1].pid = polite.pid, stubborn.pid
        t0 = time.monotonic()
        assert sup._stop_all() == EXIT_FATAL  # not 0, as a process killed by SIGKILL (-9) used to count
        assert 5.0 <= time.monotonic() - t0 < 30  # the grace period (+5 s), then SIGKILL
        assert stubborn.poll() is not None and polite.poll() is not None
        assert sup.exit_code == EXIT_OK
    finally:
        for p in (stubborn, polite):
            if p.poll() is None:
                p.kill()
                p.wait()

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

"""How a worker process ends: its exit codes, the SIGTERM/SIGINT handlers and the forced exit.

Why a module of its own: the loop, the exactly-once transactions and the signal handler all end the
process with these codes, and the supervisor, Kubernetes and the tests read them.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.pipeline import Pipeline

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_DELIVERY_FAILED = 3
EXIT_FATAL = 4
EXIT_AUTH = 5


def force_exit(reason: str = "shutdown exceeded the grace period; exiting") -> None:
    """Exit at once, from any thread, whatever the loop thread is blocked in."""
    log.error(reason)
    logging.shutdown()
    os._exit(EXIT_FATAL)


class StopOnSignal:
    """SIGTERM/SIGINT: stop polling and shut down gracefully; a second *signal* exits at once.

    It counts signals, not stops: a pipeline that is already stopping by itself (an authentication error,
    a failed delivery) and then gets its first SIGTERM (the supervisor stopping its processes) must still
    end with its own exit code, not 130.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.received = 0
        self.watchdog: threading.Timer | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.received += 1
        if self.received > 1:
            log.warning("second signal: exiting now")
            raise SystemExit(130)
        log.info("signal received; finishing the batch in flight", extra={"signal": signal.Signals(signum).name})
        self.pipeline.stop()
        # A watchdog: whatever blocks, the process is gone a little after the grace period.
        self.watchdog = threading.Timer(self.pipeline.s.shutdown_grace_s + 2.0, force_exit)
        self.watchdog.daemon = True
        self.watchdog.start()


def install_signal_handlers(pipeline: Pipeline) -> StopOnSignal:
    handler = StopOnSignal(pipeline)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return handler

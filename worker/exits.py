"""The worker's process exit codes and the forced exit, in one place.

Why a module of its own: the loop, the exactly-once transactions and the signal handler all end the
process with these codes, and the supervisor, Kubernetes and the tests read them.
"""

from __future__ import annotations

import logging
import os

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

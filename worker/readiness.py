"""Waiting for a started server to turn ready: GET its readiness URL until it answers 200.

The pipeline benchmark and the broker tests start workers (the tests a Prometheus too) as child processes and
must not measure or test before they are ready; one loop for all, so "ready" means the same everywhere.
"""

from __future__ import annotations

import http.client
import time
import urllib.request
from collections.abc import Callable


def wait_until_ready(url: str, timeout: float, *, request_timeout: float = 2.0, interval: float = 0.2,
                     gave_up: Callable[[], bool] | None = None) -> bool:
    """GET `url` every `interval` s until it answers 200 (True), or until `timeout` s have passed or `gave_up()`,
    asked before each try (e.g. "the process exited"), is true (False). Nothing listening yet, any other status,
    an answer slower than `request_timeout` s or a broken one all count as not ready yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if gave_up is not None and gave_up():
            return False
        try:
            with urllib.request.urlopen(url, timeout=request_timeout) as r:
                if r.status == 200:
                    return True
        except (OSError, http.client.HTTPException):  # refused, 4xx/5xx (HTTPError), timed out, cut off
            pass
        time.sleep(interval)
    return False

"""`wait_until_ready` (shared by the pipeline benchmark and the broker tests), offline against a local server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from worker.readiness import wait_until_ready


@pytest.fixture
def server() -> Iterator[tuple[str, list[int]]]:
    """A server whose answer is the last status in the list (503 until a test appends 200)."""
    statuses = [503]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[-1])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/readyz", statuses
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_waits_through_503_until_200(server):
    url, statuses = server
    threading.Timer(0.3, statuses.append, (200,)).start()
    t0 = time.monotonic()
    assert wait_until_ready(url, 10, interval=0.05)
    assert 0.25 <= time.monotonic() - t0 < 5


def test_times_out_when_never_ready(server):
    url, _ = server
    assert not wait_until_ready(url, 0.3, interval=0.05)


def test_nothing_listening_is_not_ready():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    assert not wait_until_ready(f"http://127.0.0.1:{port}/readyz", 0.3, interval=0.05)


def test_gave_up_stops_before_the_timeout(server):
    url, _ = server
    t0 = time.monotonic()
    assert not wait_until_ready(url, 30, interval=0.05, gave_up=lambda: time.monotonic() - t0 > 0.2)
    assert time.monotonic() - t0 < 5

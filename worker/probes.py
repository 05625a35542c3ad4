"""The HTTP side: /metrics for Prometheus, /healthz for liveness, /readyz for readiness.

Liveness fails while the model is still loading (so that a startupProbe on /healthz covers the load, and
liveness applies only after it: a load that holds the interpreter can delay answers, and a probe timing out
then must not count against a process that is only starting) and when the processing loop has stopped
stepping while it has work (a stalled loop needs a restart; an idle one does not). Readiness needs the model
loaded, a broker reachable and the group joined, and (avro/protobuf input) the schema registry answering. Only
GET is served, requests are small, and nothing secret is ever in a response.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class Health:
    """State the probes read; written by the processing loop (plain attribute writes, no locks needed)."""

    def __init__(self, stall_timeout_s: float) -> None:
        self.stall_timeout_s = stall_timeout_s
        self.model_loaded = False
        self.broker_up = False
        self.joined = False
        self.has_work = False
        self.stopping = False
        self.last_step = time.monotonic()
        self.waiting_since: float | None = None  # set while the loop waits on the broker in a blocking call
        self.registry_down: str | None = None  # avro/protobuf input: why the schema registry cannot be asked

    def step(self, has_work: bool) -> None:
        """The loop completed one step; `has_work` = partitions assigned with lag or outputs in flight."""
        self.last_step = time.monotonic()
        self.has_work = has_work

    def live(self) -> tuple[bool, str]:
        if not self.model_loaded:
            return False, "starting: loading the model"
        idle = time.monotonic() - self.last_step
        if self.has_work and idle > self.stall_timeout_s:
            return False, f"stalled: no loop progress for {idle:.0f}s with work pending"
        return True, f"ok: last loop step {idle:.1f}s ago"

    def blocked_on_broker(self) -> bool:
        """A blocking call (exactly once: a transaction call) has waited on the broker for over 5 s."""
        return self.waiting_since is not None and time.monotonic() - self.waiting_since > 5.0

    def broker_reachable(self) -> bool:
        """What embedstream_broker_up reports: a broker answers, and no call has been blocked on one for 5 s (while
        blocked inside librdkafka no callback runs, so `broker_up` keeps its last value)."""
        return self.broker_up and not self.blocked_on_broker()

    def ready(self) -> tuple[bool, str]:
        missing = [name for name, ok in (("model", self.model_loaded), ("broker", self.broker_up),
                                         ("group", self.joined)) if not ok]
        if self.stopping:
            return False, "stopping"
        if self.blocked_on_broker():
            return False, "not ready: waiting for broker (a transaction call has not returned)"
        if missing:
            return False, "not ready: waiting for " + ", ".join(missing)
        if self.registry_down is not None:
            return False, f"not ready: schema registry unreachable ({self.registry_down[:200]})"
        return True, "ok"


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    health: Health
    server_version = "embedstream"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok, why = self.health.live()
            self._send(200 if ok else 503, why.encode() + b"\n")
        elif path == "/readyz":
            ok, why = self.health.ready()
            self._send(200 if ok else 503, why.encode() + b"\n")
        else:
            self._send(404, b"not found: /metrics /healthz /readyz\n")

    def _refuse(self) -> None:
        self._send(405, b"method not allowed\n", extra=[("Allow", "GET")])

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def do_HEAD(self) -> None:
        self._refuse()

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              extra: list[tuple[str, str]] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra or []:
            self.send_header(k, v)
        if self.command != "HEAD":
            try:
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):  # a probe that gave up: nothing to answer
                self.close_connection = True
        else:
            self.end_headers()

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(10)  # a slow client cannot hold a thread; http.server caps line sizes

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 16


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve(registry: CollectorRegistry, health: Health, host: str, port: int) -> ThreadingHTTPServer:
    """Start the probe/metrics server in a daemon thread; returns it (`server_address` has the port)."""
    handler = type("Handler", (_Handler,), {"registry": registry, "health": health})
    server = (_Server6 if ":" in host else _Server)((host, port), handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("metrics and probes listening", extra={"address": f"{host}:{server.server_address[1]}"})
    return server

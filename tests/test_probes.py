"""The probe/metrics HTTP server (worker.probes) and the Health logic behind it; no broker needed."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from worker.probes import Health, serve


@pytest.fixture(scope="module")
def shared_server():
    """One server for the module (shutting one down takes up to half a second)."""
    registry = CollectorRegistry()
    Counter("probe_test_requests", "a counter only this test registers", registry=registry).inc(3)
    srv = serve(registry, Health(stall_timeout_s=5.0), "127.0.0.1", 0)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def health() -> Health:
    return Health(stall_timeout_s=5.0)


@pytest.fixture
def loaded(health: Health) -> Health:
    """A process past its start-up: the model is loaded."""
    health.model_loaded = True
    return health


@pytest.fixture
def server(shared_server, loaded: Health):
    """The shared server, reading this test's fresh Health (a loaded process: /healthz 200)."""
    shared_server.RequestHandlerClass.health = loaded
    return shared_server


def request(srv, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    port = srv.server_address[1]
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def raw(srv, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes the connection."""
    with socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return out
            out += chunk
        return out


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def ready_all(h: Health) -> None:
    h.model_loaded = h.broker_up = h.joined = True


# ---- the endpoints ----

def test_get_metrics_is_prometheus_text(server):
    status, headers, body = request(server, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert int(headers["Content-Length"]) == len(body)
    assert b"probe_test_requests_total 3.0" in body


def test_healthz_and_readyz_answer_get(server, health):
    health.model_loaded = False  # a process still loading its model
    assert request(server, "GET", "/healthz")[:3:2] == (503, b"starting: loading the model\n")
    status, _, body = request(server, "GET", "/readyz")
    assert status == 503 and body == b"not ready: waiting for model, broker, group\n"
    health.model_loaded = True
    assert request(server, "GET", "/healthz")[0] == 200
    ready_all(health)
    assert request(server, "GET", "/readyz")[:3:2] == (200, b"ok\n")
    assert request(server, "GET", "/readyz?verbose=1")[0] == 200  # the query string is ignored


@pytest.mark.parametrize("path", ["/", "/metrics/", "/healthz/x", "/ready", "/../etc/passwd", "/%ff", "/favicon.ico"])
def test_other_paths_are_404(server, path):
    status, _, body = request(server, "GET", path)
    assert status == 404 and body.startswith(b"not found")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/readyz", "/elsewhere"])
def test_methods_other_than_get_are_405(server, method, path):
    status, headers, _ = request(server, method, path, body=b"x" if method in ("POST", "PUT", "PATCH") else None)
    assert status == 405
    assert headers["Allow"] == "GET"


def test_head_is_405_without_a_body(server):
    resp = raw(server, b"HEAD /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    head, _, body = resp.partition(b"\r\n\r\n")
    assert status_of(head) == 405 and b"Allow: GET" in head
    assert body == b""


def test_connect_is_405(server):
    resp = raw(server, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(resp) == 405


def test_an_unknown_method_is_501_and_the_server_keeps_serving(server):
    # http.server answers methods it has no do_<METHOD> for with 501 Not Implemented.
    resp = raw(server, b"BREW /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(resp) == 501
    assert request(server, "GET", "/healthz")[0] == 200


# ---- oversized and malformed requests ----

def test_an_oversized_request_line_is_414_and_the_server_keeps_serving(server):
    resp = raw(server, b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert status_of(resp) == 414
    assert request(server, "GET", "/metrics")[0] == 200


def test_an_oversized_header_is_431_and_the_server_keeps_serving(server):
    resp = raw(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    assert status_of(resp) == 431
    assert request(server, "GET", "/metrics")[0] == 200


def test_too_many_headers_is_431_and_the_server_keeps_serving(server):
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    resp = raw(server, b"GET /metrics HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
    assert status_of(resp) == 431
    assert request(server, "GET", "/metrics")[0] == 200


@pytest.mark.parametrize("junk", [b"GARBAGE\r\n\r\n", b"\x00\xff\xfe\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
                                  b"GET / HTTP/1.1\r\nBad header line\r\n\r\n"])
def test_malformed_requests_do_not_break_the_server(server, junk):
    raw(server, junk)  # whatever the answer (400, 505, or a close), the server must carry on
    assert request(server, "GET", "/healthz")[0] == 200


def test_a_client_that_connects_and_sends_nothing_blocks_no_one_and_is_dropped(server):
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=20) as idle:
        assert request(server, "GET", "/metrics")[0] == 200  # served while the idle connection is open
        assert idle.recv(1) == b""  # the handler's 10 s socket timeout closes it
    assert 5 < time.monotonic() - t0 < 18


def test_many_requests_in_a_row(server):
    for _ in range(50):
        assert request(server, "GET", "/healthz")[0] == 200


# ---- the address it binds ----

def test_binds_the_configured_address_only(health):
    srv = serve(CollectorRegistry(), health, "127.0.0.1", 0)
    try:
        host, port = srv.socket.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert srv.socket.family == socket.AF_INET
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_port_in_use_fails_loudly(health):
    srv = serve(CollectorRegistry(), health, "127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            serve(CollectorRegistry(), health, "127.0.0.1", srv.server_address[1])
    finally:
        srv.shutdown()
        srv.server_close()


# ---- Health ----

def test_liveness_fails_until_the_model_is_loaded(health):
    # The chart's startupProbe is /healthz: while it fails, the kubelet waits (up to the startup budget) instead of
    # applying liveness to a process that is still loading its model. In the k8s run (issue 21) a pod the HPA
    # started on a saturated node timed out a liveness probe during its load, because /healthz said 200 at once.
    assert health.live() == (False, "starting: loading the model")
    health.step(has_work=True)  # even a step (none happens before the load) does not make it live
    assert health.live()[0] is False
    health.model_loaded = True
    assert health.live()[0] is True


def test_an_idle_loop_never_fails_liveness(loaded):
    loaded.step(has_work=False)
    loaded.last_step = time.monotonic() - 10_000  # no step for hours, but nothing to do
    assert loaded.live()[0] is True


def test_a_stalled_loop_with_work_fails_liveness(loaded, server):
    loaded.step(has_work=True)
    assert loaded.live()[0] is True
    loaded.last_step = time.monotonic() - 6  # stall_timeout_s is 5
    ok, why = loaded.live()
    assert ok is False and why.startswith("stalled")
    status, _, body = request(server, "GET", "/healthz")
    assert status == 503 and body.startswith(b"stalled")
    loaded.step(has_work=True)  # progress again: live again
    assert loaded.live()[0] is True and request(server, "GET", "/healthz")[0] == 200


def test_a_loop_within_the_stall_timeout_is_live(loaded):
    loaded.step(has_work=True)
    loaded.last_step = time.monotonic() - 4
    assert loaded.live()[0] is True


def test_readiness_needs_model_broker_and_group_and_names_what_is_missing(health):
    assert health.ready() == (False, "not ready: waiting for model, broker, group")
    health.model_loaded = True
    assert health.ready() == (False, "not ready: waiting for broker, group")
    health.broker_up = True
    assert health.ready() == (False, "not ready: waiting for group")
    health.joined = True
    assert health.ready() == (True, "ok")
    health.broker_up = False
    assert health.ready() == (False, "not ready: waiting for broker")
    health.broker_up = True
    health.stopping = True
    assert health.ready() == (False, "stopping")


def test_readiness_does_not_depend_on_liveness(health):
    ready_all(health)
    health.step(has_work=True)
    health.last_step = time.monotonic() - 100
    assert health.live()[0] is False and health.ready()[0] is True

"""The sink stack (scripts/sink-stack.sh): Apicurio Registry, PostgreSQL + pgvector, Kafka Connect standalone
with the Debezium JDBC sink, started once per session on free ports in a private run directory, stopped after."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# the broker helpers the worker tests share (tests/integration/kafkatools.py)
if str(ROOT / "tests" / "integration") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
SCRIPT = ROOT / "scripts" / "sink-stack.sh"
CONNECTOR_DIR = ROOT / "scripts" / "sink"
FETCH_REFUSED = 3  # sink-stack.sh's exit code when a download is refused or fails


def _skip_or_fail(why: str) -> None:
    """Outside CI a missing download is a skip with one line; in CI (CI=true) the suite must run, so it fails."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"sink stack unavailable in CI: {why}", pytrace=False)
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SinkStack:
    bootstrap: str
    registry_port: int
    connect_port: int
    pg_port: int
    run_dir: Path

    @property
    def ccompat_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}/apis/ccompat/v7"

    @property
    def registry_v2_url(self) -> str:
        return f"http://127.0.0.1:{self.registry_port}/apis/registry/v2"

    @property
    def pg_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.pg_port} user=postgres dbname=postgres"

    def connect(self, method: str, path: str, body: object | None = None) -> object:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.connect_port}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def connector_config(self, file: str, name: str, topic: str) -> dict[str, str]:
        """The committed connector config (scripts/sink/FILE), pointed at this stack's ports and one topic."""
        config = dict(json.loads((CONNECTOR_DIR / file).read_text())["config"])
        config["topics"] = topic
        config["connection.url"] = f"jdbc:postgresql://127.0.0.1:{self.pg_port}/postgres"
        for key in list(config):
            if key.endswith("apicurio.registry.url"):
                config[key] = self.registry_v2_url
        return config

    def add_connector(self, name: str, config: dict[str, str]) -> None:
        self.connect("PUT", f"/connectors/{name}/config", config)

    def delete_connector(self, name: str) -> None:
        try:
            self.connect("DELETE", f"/connectors/{name}")
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise

    def task_failure(self, name: str) -> str | None:
        """The first failed task's trace (its 'Caused by' lines), or None while none failed."""
        try:
            status = self.connect("GET", f"/connectors/{name}/status")
        except urllib.error.HTTPError:
            return None
        assert isinstance(status, dict)
        for task in status.get("tasks", []):
            if task.get("state") == "FAILED":
                trace = task.get("trace", "")
                causes = [line for line in trace.splitlines() if line.startswith("Caused by")]
                return "\n".join(causes[-3:]) or trace[:2000]
        return None


@pytest.fixture(scope="session")
def sink_stack() -> Iterator[SinkStack]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        _skip_or_fail("KAFKA_BOOTSTRAP_SERVERS is not set (scripts/test.sh starts a broker and sets it)")
    if shutil.which("mvn") is None and shutil.which("java") is None:
        _skip_or_fail("no Maven and no Java on this machine")
    # PostgreSQL runs as an unprivileged user: its run directory must be on a path that user can walk (a clone
    # under /root is not), so it lives under the system temp dir.
    run_dir = Path(tempfile.mkdtemp(prefix="embedstream-sink-"))
    run_dir.chmod(0o755)
    stack = SinkStack(bootstrap=bootstrap, registry_port=_free_port(), connect_port=_free_port(),
                      pg_port=_free_port(), run_dir=run_dir)
    env = dict(os.environ, SINK_STACK_DIR=str(run_dir), SINK_REGISTRY_PORT=str(stack.registry_port),
               SINK_REGISTRY_MGMT_PORT=str(_free_port()), SINK_CONNECT_PORT=str(stack.connect_port),
               SINK_PG_PORT=str(stack.pg_port))
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPT), "start"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == FETCH_REFUSED:
        shutil.rmtree(run_dir, ignore_errors=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        _skip_or_fail(lines[-1] if lines else "sink-stack.sh fetch failed")
    if proc.returncode != 0:
        shutil.rmtree(run_dir, ignore_errors=True)
        pytest.fail(f"scripts/sink-stack.sh start failed ({proc.returncode}):\n{proc.stderr[-4000:]}", pytrace=False)
    print(f"sink stack started in {time.monotonic() - t0:.1f} s")
    try:
        yield stack
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, stdin=subprocess.DEVNULL, timeout=180)
        shutil.rmtree(run_dir, ignore_errors=True)

"""`run --processes K`: K consumer processes in one container, one supervisor in front of them.

Each child is an ordinary worker (`run --processes 1`), a member of the same consumer group, mapping the
same model file (so the table is in memory once). The supervisor restarts a child that dies, forwards
SIGTERM/SIGINT, and serves one /metrics (every child's series with a `process` label), /healthz and
/readyz (all children) on the configured port, so a pod looks the same whatever K is.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from worker.probes import Health, serve
from worker.settings import ProcessingGuarantee, Settings

log = logging.getLogger(__name__)

CHILD_ENV = "EMBEDSTREAM_SUPERVISED_CHILD"  # set for children: they run the pipeline, never supervise

# Exit codes that a restart cannot fix: bad settings or model, bad credentials.
NO_RESTART = {2, 5}


def available_cpus() -> int:
    """CPUs this process may use: affinity, capped by a cgroup v2 CPU quota (a Kubernetes limit)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def parse_processes(value: str | int) -> int:
    if str(value).strip().lower() == "auto":
        return available_cpus()
    try:
        n = int(value)
    except ValueError:
        raise SystemExit(f"--processes must be a number or auto, not {value!r}") from None
    if n < 1:
        raise SystemExit("--processes must be at least 1")
    return n


def _die_with_parent() -> None:
    """In the child before exec: if the supervisor dies (kill -9), the kernel kills the child too, as it
    would kill every process of a container; no orphan keeps consuming."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux/glibc: children may outlive a killed supervisor
        pass


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    index: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    backoff_s: float = 1.0
    next_start: float = 0.0
    started_at: float = field(default_factory=time.monotonic)

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=3) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            return 0, str(e).encode()


class ChildrenCollector:
    """Re-exports every child's metrics with a `process` label."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for child in self.children:
            status, body = child.get("/metrics")
            if status != 200:
                continue
            for fam in text_string_to_metric_families(body.decode()):
                merged = families.get(fam.name)
                if merged is None:
                    merged = families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for s in fam.samples:
                    merged.add_sample(s.name, {**s.labels, "process": str(child.index)}, s.value, s.timestamp)
        yield from families.values()


class ChildrenHealth(Health):
    """Live if every child is live (or restarting); ready if every child is ready."""

    def __init__(self, children: list[Child]) -> None:
        super().__init__(stall_timeout_s=1.0)
        self.children = children

    def live(self) -> tuple[bool, str]:
        bad = []
        for c in self.children:
            if c.proc is None or c.proc.poll() is not None:
                continue  # being restarted: the supervisor is doing its job
            status, body = c.get("/healthz")
            if status not in (200, 0):
                bad.append(f"process {c.index}: {body.decode(errors='replace').strip()}")
        return (not bad), ("; ".join(bad) if bad else f"ok: {len(self.children)} processes")

    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        bad = []
        for c in self.children:
            status, body = c.get("/readyz")
            if status != 200:
                bad.append(f"process {c.index}: {body.decode(errors='replace').strip() or 'not answering'}")
        return (not bad), ("; ".join(bad) if bad else "ok")


class Supervisor:
    def __init__(self, k: int, settings: Settings) -> None:
        self.k = k
        self.settings = settings
        self.children = [Child(i, _free_port()) for i in range(k)]
        self.stopping = threading.Event()
        self.exit_code = 0

    def _env(self, child: Child) -> dict[str, str]:
        env = dict(os.environ)
        env["EMBED_METRICS__PORT"] = str(child.port)
        env["EMBED_METRICS__HOST"] = "127.0.0.1"
        env["EMBED_PROCESSES"] = "1"
        env["EMBED_PROCESS_INDEX"] = str(child.index)
        env[CHILD_ENV] = "1"
        if self.k > 1:  # one core each: no thread pools competing across processes
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
                env.setdefault(var, "1")
        gid = self.settings.kafka.group_instance_id
        if gid:
            env["EMBED_KAFKA__GROUP_INSTANCE_ID"] = f"{gid}-{child.index}"
        return env

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--processes", "1"],
                                      env=self._env(child), preexec_fn=_die_with_parent)
        child.started_at = time.monotonic()
        log.info("process started", extra={"child": child.index, "pid": child.proc.pid, "port": child.port})

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("signal received; stopping processes", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        health = ChildrenHealth(self.children)
        if self.settings.metrics.enabled:
            registry = CollectorRegistry()
            registry.register(ChildrenCollector(self.children))
            serve(registry, health, self.settings.metrics.host, self.settings.metrics.port)
        for c in self.children:
            self._start(c)
        while not self.stopping.wait(0.5):
            for c in self.children:
                self._watch(c)
        health.stopping = True
        return self._stop_all()

    def _watch(self, c: Child) -> None:
        if c.proc is None:
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        code = c.proc.poll()
        if code is None:
            if time.monotonic() - c.started_at > 60:
                c.backoff_s = 1.0  # stayed up: the next crash restarts quickly again
            return
        if code in NO_RESTART:
            log.error("process exited with a configuration error; stopping", extra={"child": c.index,
                                                                                 "exit_code": code})
            self.exit_code = code
            self.stopping.set()
            return
        c.restarts += 1
        c.next_start = time.monotonic() + c.backoff_s
        log.warning("process exited; restarting", extra={"child": c.index, "exit_code": code,
                                                         "restarts": c.restarts, "in_s": c.backoff_s})
        c.backoff_s = min(c.backoff_s * 2, 30.0)
        c.proc = None

    def _stop_all(self) -> int:
        grace = self.settings.shutdown_grace_s + 5.0
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes = []
        for p in live:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                log.error("process did not stop within the grace period; killing", extra={"pid": p.pid})
                p.kill()
                codes.append(p.wait())
        worst = max([self.exit_code, *[c for c in codes if c > 0]], default=0)
        log.info("stopped", extra={"processes": self.k, "exit_code": worst})
        return worst


def supervise(processes: str | int, settings: Settings) -> int:
    k = parse_processes(processes)
    # exactly_once: even one process runs supervised, since a transaction call that hangs ends the process
    # (pipeline's watchdog) and it must come back by itself.
    child = os.environ.get(CHILD_ENV) == "1"
    if child or (k == 1 and settings.processing_guarantee != ProcessingGuarantee.exactly_once):
        from worker.app import run

        return run(settings)
    return Supervisor(k, settings).run()

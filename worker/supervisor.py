"""`run --processes K`: K consumer processes in one container, one supervisor in front of them.

The supervisor loads the model and builds the encoder (tokenizer, fast-path self-check) once, before it has
any thread, Kafka client or server, then forks the K children from itself: each is an ordinary worker and a
member of the same consumer group, and copy-on-write keeps the tokenizer, the model and everything else
built before the fork in memory once per pod, not once per process. A child that dies is forked again from
the loaded supervisor (no reload). The supervisor forwards SIGTERM/SIGINT and serves one /metrics (every
child's series with a `process` label), /healthz and /readyz (all children) on the configured port, so a pod
looks the same whatever K is.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from worker.exits import EXIT_FATAL
from worker.probes import Health, serve
from worker.settings import ProcessingGuarantee, Settings

if TYPE_CHECKING:
    from worker.app import Loaded

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
    """In a forked child: if the supervisor dies (kill -9), the kernel kills the child too, as it
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
    pid: int | None = None  # set while the process runs (the supervisor's loop alone reaps it)
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
            if c.pid is None:
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
    def __init__(self, k: int, settings: Settings, started_at: float | None = None) -> None:
        self.k = k
        self.settings = settings
        if started_at is None:
            from worker.metrics import process_start_time

            started_at = process_start_time()
        self.started_at = started_at
        self.children = [Child(i, _free_port()) for i in range(k)]
        self.stopping = threading.Event()
        self.exit_code = 0
        self.loaded: Loaded | None = None
        self.server: ThreadingHTTPServer | None = None
        self.parallelism_set_by_us = False

    def _env(self, child: Child) -> dict[str, str]:
        env = {"EMBED_METRICS__PORT": str(child.port), "EMBED_METRICS__HOST": "127.0.0.1", "EMBED_PROCESSES": "1",
               "EMBED_PROCESS_INDEX": str(child.index), CHILD_ENV: "1"}
        gid = self.settings.kafka.group_instance_id
        if gid:
            env["EMBED_KAFKA__GROUP_INSTANCE_ID"] = f"{gid}-{child.index}"
        return env

    def load(self) -> None:
        """Build the encoder once, here, while this process has no thread, client or server: the children
        forked from it share its pages (tokenizer, model) copy-on-write."""
        # No rayon pool started by the self-check in this process: a pool that existed before fork() makes the
        # tokenizers library turn parallelism off in the child, with a warning.
        if "TOKENIZERS_PARALLELISM" not in os.environ:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
            self.parallelism_set_by_us = self.k == 1
        from worker.app import load_encoder

        self.loaded = load_encoder(self.settings.model)  # collects and trims the heap, too
        # The reference tokenizer, where a faster library runs and nothing needs it, goes here, before the fork:
        # freed in each child instead, its pages would be written (copied) there and kept here. With chunking on,
        # each child's chunker takes it (shared, not copied).
        if self.settings.chunking.mode == "off" and self.loaded.encoder.release_reference():
            log.info("reference tokenizer released", extra={"model": self.loaded.name})
        elif self.settings.chunking.mode != "off":  # loaded here (a stored verdict skipped it), not in each child
            _ = self.loaded.encoder.tokenizer
        # Objects that exist now are never collected: the collector then never writes to their pages, so
        # they stay shared with the children.
        gc.freeze()

    def _start(self, child: Child) -> None:
        first = child.restarts == 0
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                code = self._child(child, parent, self.started_at if first else time.time())
            finally:
                logging.shutdown()
                os._exit(code)
        child.pid = pid
        child.started_at = time.monotonic()
        log.info("process started", extra={"child": child.index, "pid": pid, "port": child.port})

    def _child(self, child: Child, parent: int, started_at: float) -> int:
        _die_with_parent()
        if os.getppid() != parent:
            return 1  # the supervisor died before the death signal was set up
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.server is not None:
            self.server.socket.close()  # the supervisor's port is not this process's
        os.environ.update(self._env(child))
        if self.parallelism_set_by_us:
            del os.environ["TOKENIZERS_PARALLELISM"]  # one process: its own rayon pool, started here
        from confluent_kafka import KafkaException

        from worker.app import run
        from worker.model import ModelError
        from worker.settings import SettingsError, load_settings

        try:
            return run(load_settings(), loaded=self.loaded, started_at=started_at)
        except (SettingsError, ModelError) as e:
            log.error("configuration error", extra={"child": child.index, "error": str(e)})
            return 2
        except KafkaException as e:
            log.error("Kafka client settings rejected", extra={"child": child.index, "error": e.args[0].str()})
            return 2
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        except BaseException:
            log.exception("process failed", extra={"child": child.index})
            return 1

    def _on_signal(self, signum: int, frame: object) -> None:
        log.info("signal received; stopping processes", extra={"signal": signal.Signals(signum).name})
        self.stopping.set()

    def run(self) -> int:
        if self.loaded is None:
            self.load()
        for c in self.children:  # still single-threaded: the first children fork from a clean process
            self._start(c)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        health = ChildrenHealth(self.children)
        if self.settings.metrics.enabled:
            registry = CollectorRegistry()
            registry.register(ChildrenCollector(self.children))
            self.server = serve(registry, health, self.settings.metrics.host, self.settings.metrics.port)
        while not self.stopping.wait(0.5):
            for c in self.children:
                self._watch(c)
        health.stopping = True
        return self._stop_all()

    def _reap(self, c: Child, block: bool = False) -> int | None:
        """The child's exit code (negative: killed by that signal) once it has exited, else None."""
        assert c.pid is not None
        try:
            pid, status = os.waitpid(c.pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return 1
        return None if pid == 0 else os.waitstatus_to_exitcode(status)

    def _watch(self, c: Child) -> None:
        if c.pid is None:
            if time.monotonic() >= c.next_start:
                self._start(c)
            return
        code = self._reap(c)
        if code is None:
            if time.monotonic() - c.started_at > 60:
                c.backoff_s = 1.0  # stayed up: the next crash restarts quickly again
            return
        c.pid = None
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

    def _stop_all(self) -> int:
        grace = self.settings.shutdown_grace_s + 5.0
        live = [c for c in self.children if c.pid is not None]
        for c in live:
            assert c.pid is not None
            os.kill(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        codes = []
        for c in live:
            code = self._reap(c)
            while code is None and time.monotonic() < deadline:
                time.sleep(0.05)
                code = self._reap(c)
            if code is None:
                log.error("process did not stop within the grace period; killing", extra={"pid": c.pid})
                assert c.pid is not None
                os.kill(c.pid, signal.SIGKILL)
                self._reap(c, block=True)
                code = EXIT_FATAL  # as the process's own watchdog would have exited (exits.force_exit)
            codes.append(code or 0)
            c.pid = None
        code = supervisor_exit_code(self.exit_code, codes)
        log.info("stopped", extra={"processes": self.k, "exit_code": code})
        return code


def supervisor_exit_code(cause: int, stopped: list[int]) -> int:
    """The supervisor's exit code: the configuration error it stopped for, if any, else the worst of its
    processes' codes. Codes of processes it stopped itself (130 from a second signal, say) are effects of
    that cause, not the reason the worker ended."""
    return cause or max([c for c in stopped if c > 0], default=0)


def supervise(processes: str | int, settings: Settings) -> int:
    k = parse_processes(processes)
    # exactly_once: even one process runs supervised, since a transaction call that hangs ends the process
    # (pipeline's watchdog) and it must come back by itself (re-forked from the loaded supervisor).
    child = os.environ.get(CHILD_ENV) == "1"
    if child or (k == 1 and settings.processing_guarantee != ProcessingGuarantee.exactly_once):
        from worker.app import run

        return run(settings)
    if k > 1:  # one core each: no thread pools competing across processes (set before numpy loads)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            os.environ.setdefault(var, "1")
    return Supervisor(k, settings).run()

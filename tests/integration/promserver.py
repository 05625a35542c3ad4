"""A real Prometheus for the integration tests: started on 127.0.0.1 with a short scrape interval,
scraping the given targets with the labels Kubernetes service discovery would attach, stopped by PID."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from kafkatools import free_port
from worker.dashboard.queries import Prometheus
from worker.readiness import wait_until_ready

SCRAPE_INTERVAL_S = 1.0


class PrometheusServer:
    def __init__(self, binary: str, directory: Path, targets: dict[str, dict[str, str]]) -> None:
        """targets: "host:port" -> labels (namespace, job, pod) for that target."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S:g}s", "evaluation_interval": "1s"},
            "scrape_configs": [{
                "job_name": "embedstream",
                "scrape_timeout": f"{SCRAPE_INTERVAL_S:g}s",
                "static_configs": [{"targets": [t], "labels": labels} for t, labels in targets.items()],
            }],
        }
        self.config_path = directory / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = directory / "prometheus.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={self.config_path}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
            stdout=self._log, stderr=subprocess.STDOUT)
        self.api = Prometheus(self.url)

    def wait_ready(self, timeout: float = 60.0) -> None:
        if wait_until_ready(f"{self.url}/-/ready", timeout, gave_up=lambda: self.proc.poll() is not None):
            return
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
        raise AssertionError(f"prometheus not ready in {timeout}s:\n{self.log_tail()}")

    def targets_up(self) -> int:
        return sum(int(float(s["value"][1])) for s in self.api.query('up{job=~".+"}'))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

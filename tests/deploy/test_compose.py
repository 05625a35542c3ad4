"""docker-compose.yml is not run here (no Docker engine): check its structure and every file it uses."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, ROOT

pytestmark = pytest.mark.deploy

COMPOSE = ROOT / "docker-compose.yml"
SUBCOMMANDS = {"run", "encode", "produce", "bench"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    out = []
    for volume in service.get("volumes", []):
        src, target, *_ = volume.split(":")
        if src.startswith("."):
            out.append(((ROOT / src).resolve(), target))
    return out


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "worker", "producer", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        image = svc.get("image", "")
        if "build" not in svc:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: pin {image}"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown {dep}"


def test_kafka_is_kraft(services: dict[str, dict[str, Any]]) -> None:
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in kafka


def test_worker_and_producer_use_the_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    worker, producer = services["worker"], services["producer"]
    for svc in (worker, producer):
        build = svc["build"]
        assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file()
        dockerfile = (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).read_text()
        for arg in build.get("args", {}):
            assert re.search(rf"^ARG {arg}\b", dockerfile, re.M), f"build arg {arg} is not an ARG of the Dockerfile"
        assert svc["command"][0] in SUBCOMMANDS
        assert svc["user"].split(":")[0] == "10001"
        assert svc["read_only"] is True and any(t.startswith("/tmp") for t in svc["tmpfs"])
    assert worker["image"] == producer["image"]
    assert worker["command"] == ["run"]
    assert producer["command"][0] == "produce"
    assert producer["healthcheck"] == {"disable": True}
    assert producer["environment"]["EMBED_INPUT_TOPIC"] == worker["environment"]["EMBED_INPUT_TOPIC"]
    grace = float(worker["environment"]["EMBED_SHUTDOWN_GRACE_S"])
    assert int(worker["stop_grace_period"].rstrip("s")) > grace


def test_worker_env_names_are_settings(services: dict[str, dict[str, Any]]) -> None:
    from worker.settings import describe_settings

    known = {var for var, _, _ in describe_settings()}
    for name in ("worker", "producer"):
        for var in services[name]["environment"]:
            assert var in known, f"{name}: {var} is not a worker setting"


def test_producer_flags_exist(services: dict[str, dict[str, Any]]) -> None:
    """Every --flag the producer passes is one `embedstream produce` accepts."""
    command = services["producer"]["command"]
    flags = [a for a in command if a.startswith("--")]
    proc = subprocess.run([sys.executable, "-m", "worker", command[0], "--help"], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for flag in flags:
        assert re.search(rf"{re.escape(flag)}\b", proc.stdout), f"produce has no {flag}"


def test_topics_created_match_the_worker(services: dict[str, dict[str, Any]]) -> None:
    script = services["kafka-init"]["command"][0]
    loop = re.search(r"for spec in ([^;]+);", script)
    assert loop, "kafka-init should loop over topic:partitions specs"
    created = {spec.split(":")[0] for spec in loop.group(1).split()}
    env = services["worker"]["environment"]
    assert created == {env["EMBED_INPUT_TOPIC"], env["EMBED_OUTPUT_TOPIC"], env["EMBED_DLQ_TOPIC"]}
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == "service_completed_successfully"
    # $$ is compose's escape for a literal $ in the shell script.
    assert "$${spec" in script and "${spec" not in script.replace("$${spec", "")
    shlex.split(script.replace("\n", " "))


def test_prometheus_scrapes_the_worker(services: dict[str, dict[str, Any]]) -> None:
    mounts = bind_mounts(services["prometheus"])
    config_path = next(src for src, target in mounts if target == "/etc/prometheus/prometheus.yml")
    assert config_path == (ROOT / "deploy" / "prometheus" / "prometheus.yml").resolve()
    config = yaml.safe_load(config_path.read_text())
    port = services["worker"]["environment"]["EMBED_METRICS__PORT"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = [t for sc in jobs["embedstream"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"worker:{port}"]
    assert jobs["embedstream"].get("metrics_path", "/metrics") == "/metrics"
    # The dashboard's variables filter on namespace and job.
    assert jobs["embedstream"]["static_configs"][0]["labels"]["namespace"]


def test_grafana_provisioning(services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    mounts = dict((target, src) for src, target in bind_mounts(grafana))
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == (ROOT / "deploy" / "grafana" / "provisioning").resolve()
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    (ds,) = datasources
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090" and ds["isDefault"] is True
    providers = yaml.safe_load((provisioning / "dashboards" / "embedstream.yml").read_text())["providers"]
    (provider,) = providers
    dash_dir = provider["options"]["path"]
    assert mounts[dash_dir] == (CHART / "dashboards").resolve(), "Grafana must load the chart's own dashboard"
    dashboard = json.loads((mounts[dash_dir] / "embedstream.json").read_text())
    assert dashboard["uid"] == "embedstream"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dash_dir + "/") and (mounts[dash_dir] / Path(home).name).is_file()


def test_every_bind_mount_exists(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for src, target in bind_mounts(svc):
            assert src.exists(), f"{name}: {src} (mounted at {target}) does not exist"
            assert src.is_relative_to(ROOT), f"{name}: {src} is outside the repository"


def test_host_ports_are_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} binds beyond localhost"

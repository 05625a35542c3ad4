#!/usr/bin/env bash
# The whole test suite on this machine, from nothing: venv + packages, helm (built once with Go),
# a real Apache Kafka broker on 127.0.0.1 (unless KAFKA_BOOTSTRAP_SERVERS names one), then
# ruff, mypy and pytest. Extra arguments go to pytest (e.g. `scripts/test.sh -m "not faults"`).
# The broker this script starts is stopped on exit, also when tests fail.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "test: creating .venv" >&2
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >&2
.venv/bin/python -m pip install -q -e '.[test,hub]' >&2

HELM="$(bash scripts/install-tools.sh)"
bash scripts/install-prometheus.sh
export HELM EMBEDSTREAM_REQUIRE_HELM=1

started_broker=0
cleanup() {
  if [ "$started_broker" = 1 ]; then
    bash scripts/kafka-local.sh stop || true
  fi
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

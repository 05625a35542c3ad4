#!/usr/bin/env bash
# The main job, end to end, on one machine: install, start a local Apache Kafka, run the worker,
# send sample texts, show an output and the metrics, then stop everything this script started.
#
#   scripts/demo.sh                       model: $EMBED_MODEL__PATH, else the hub default, else a synthetic demo model
#   EMBED_MODEL__PATH=/models/x scripts/demo.sh
#   DEMO_COUNT=5000 scripts/demo.sh       how many sample texts to send
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
count="${DEMO_COUNT:-1000}"
port="${KAFKA_LOCAL_PORT:-9092}"
metrics_port="${EMBED_METRICS__PORT:-9100}"

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[hub,fast]'

if [ -z "${EMBED_MODEL__PATH:-}" ]; then
  if model="$(.venv/bin/python - <<'PY' 2>/dev/null
from worker.model import resolve_model_path
from worker.settings import DEFAULT_MODEL
print(resolve_model_path(None, DEFAULT_MODEL))
PY
)"; then
    export EMBED_MODEL__PATH="$model"
  else
    echo "demo: the hub model is not reachable; using a synthetic demo model (random vectors, real tokenizer)." >&2
    echo "demo: set EMBED_MODEL__PATH to a Model2Vec folder for real embeddings." >&2
    export EMBED_MODEL__PATH="$(.venv/bin/python -c 'from worker.bench.synthetic.model_cache import cached_model; print(cached_model("unigram", vocab_size=8000, dim=768))')"
  fi
fi

started=0
if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  KAFKA_LOCAL_PORT="$port" bash scripts/kafka-local.sh start
  started=1
fi
worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill -TERM "$worker_pid" 2>/dev/null && wait "$worker_pid" || true
  [ "$started" = 1 ] && KAFKA_LOCAL_PORT="$port" bash scripts/kafka-local.sh stop || true
}
trap cleanup EXIT

export EMBED_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:$port" EMBED_METRICS__PORT="$metrics_port"
export EMBED_INPUT_TOPIC="${EMBED_INPUT_TOPIC:-texts}" EMBED_OUTPUT_TOPIC="${EMBED_OUTPUT_TOPIC:-embeddings}"
.venv/bin/embedstream produce --count "$count"
.venv/bin/embedstream run &
worker_pid=$!

echo "demo: waiting for $count embeddings on topic $EMBED_OUTPUT_TOPIC ..." >&2
.venv/bin/python - "$count" <<'PY'
import os, sys, time
from confluent_kafka import Consumer
want = int(sys.argv[1])
c = Consumer({"bootstrap.servers": os.environ["EMBED_KAFKA__BOOTSTRAP_SERVERS"], "group.id": f"demo-{time.time()}",
              "auto.offset.reset": "earliest"})
c.subscribe([os.environ["EMBED_OUTPUT_TOPIC"]])
seen, first, deadline = 0, None, time.time() + 300
while seen < want and time.time() < deadline:
    for m in c.consume(500, 1.0):
        if not m.error():
            seen += 1
            first = first or m
c.close()
print(f"demo: {seen} embeddings read back", file=sys.stderr)
if first is not None:
    print(first.value()[:300].decode() + " ...")
    print("headers:", dict(first.headers() or []))
sys.exit(0 if seen >= want else 1)
PY
curl -s "http://127.0.0.1:$metrics_port/metrics" | grep -E '^embedstream_(messages_(consumed|produced)_total|consumer_lag_sum_messages) ' || true
curl -s "http://127.0.0.1:$metrics_port/readyz" || true

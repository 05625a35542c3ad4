#!/usr/bin/env bash
# The chart on a real node (issue 21), FIRST STEPS ONLY: node up, image imported, a broker the pods reach,
# `helm install` with the gemma-like fixture mounted as the model (a hostPath PersistentVolume, model.source
# pvc), the pod Ready through the chart's probes, N texts in and every id counted in the output; then
# `kubectl delete pod` while texts flow: the pod's last log line is "stopped" with exit code 0, the replacement
# becomes Ready, and every id of both batches is in the output; then `kubectl scale` 1 -> 3 -> 1 while texts
# flow (input topic of 3 partitions), every id of the three batches in the output; then `helm upgrade` (a
# rolling update) while texts flow: the old pod stops with exit code 0, every id of the four batches arrives.
# A real Prometheus with kubernetes_sd_configs (role endpoints, selecting as the ServiceMonitor does) then
# finds and scrapes the pod. Not yet here (issue 21): the dashboard's queries against it,
# PDB/HPA. Slow (the node's first build is ~25-30 min): not in CI.
#
#   bash scripts/k8s-test.sh         (root; brings the node up and down itself)
#   K8S_TEST_KEEP=1 ...              leave the node, the release and the broker up at the end
#   K8S_TEST_COUNT=N                 texts to send (default 2000)
#   K8S_TEST_KAFKA_PORT=P            the broker's host port (default 16092; P+1 controller, P+2 for pods)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "k8s-test: $*" >&2; }
t0=$SECONDS
NODE_IP=10.244.0.1
IMAGE=localhost/embedstream:image-test
K8S_IMAGE=localhost/embedstream:k8s-test
ns=embedstream-k8s-test
count="${K8S_TEST_COUNT:-2000}"
port="${K8S_TEST_KAFKA_PORT:-16092}"
pod_port=$((port + 2))
suffix=$$
work="$(mktemp -d /tmp/embedstream-k8s-test.XXXXXX)"
started_node=0
started_broker=0
prom_pid=""
cleanup() {
  if [ -n "$prom_pid" ]; then kill "$prom_pid" 2>/dev/null || true; fi
  if [ "${K8S_TEST_KEEP:-0}" = 1 ]; then say "K8S_TEST_KEEP=1: node, release and broker ($work/kafka) left up"; return; fi
  if [ "$started_broker" = 1 ]; then KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" bash scripts/kafka-local.sh stop || true; fi
  if [ "$started_node" = 1 ]; then bash scripts/k8s-node.sh down || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { say "run as root"; exit 1; }

# --- tools, venv, image ------------------------------------------------------------------------------------
HELM="${HELM:-$(bash scripts/install-tools.sh)}"
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q -e '.[test]'; }
if ! command -v buildah >/dev/null || ! buildah inspect "$IMAGE" >/dev/null 2>&1; then
  say "building $IMAGE (scripts/image-test.sh, build only)"
  IMAGE_TEST_BUILD_ONLY=1 bash scripts/image-test.sh
fi
say "buildah push $IMAGE oci-archive"
buildah push -q "$IMAGE" "oci-archive:$work/image.tar:$K8S_IMAGE" >/dev/null

# --- node ------------------------------------------------------------------------------------------------
tn=$SECONDS
started_node=1
bash scripts/k8s-node.sh up
say "node up in $((SECONDS - tn))s"
eval "$(bash scripts/k8s-node.sh env)"
export KUBECONFIG
bash scripts/k8s-node.sh ctr images import --base-name localhost/embedstream "$work/image.tar" >&2
bash scripts/k8s-node.sh ctr images ls -q | grep -x "$K8S_IMAGE" >/dev/null \
  || { bash scripts/k8s-node.sh ctr images ls -q >&2; say "FAIL: $K8S_IMAGE not in the node's image store"; exit 1; }

# --- broker: 127.0.0.1:port for this script, 10.244.0.1:port+2 for the pods --------------------------------
cat > "$work/kafka.props" <<EOF
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PODS:PLAINTEXT
EOF
started_broker=1
KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" KAFKA_LOCAL_EXTRA_PROPS="$work/kafka.props" \
  KAFKA_LOCAL_EXTRA_LISTENERS="PODS://$NODE_IP:$pod_port" bash scripts/kafka-local.sh start
bootstrap="127.0.0.1:$port"

# --- model (gemma-like fixture) and topics ---------------------------------------------------------------
model=$(.venv/bin/python - "$bootstrap" "$suffix" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
from worker.bench.gemma import build_model
from kafkatools import create_topics
create_topics(sys.argv[1], [f"k8s-in-{sys.argv[2]}", f"k8s-out-{sys.argv[2]}", f"k8s-dlq-{sys.argv[2]}"], 3)
print(build_model("float16", seed=0))
PY
)
say "model: $model"

kubectl create namespace "$ns" >/dev/null
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: $ns-model}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadOnlyMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  hostPath: {path: $model, type: Directory}
  claimRef: {namespace: $ns, name: model}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: model, namespace: $ns}
spec:
  accessModes: [ReadOnlyMany]
  storageClassName: ""
  volumeName: $ns-model
  resources: {requests: {storage: 1Gi}}
EOF

# --- install -----------------------------------------------------------------------------------------------
ti=$SECONDS
say "helm install (model.source=pvc, image $K8S_IMAGE, pullPolicy Never, broker $NODE_IP:$pod_port)"
"$HELM" install embedstream helm/embedstream -n "$ns" --wait --timeout 5m \
  --set image.repository=localhost/embedstream --set image.tag=k8s-test --set image.pullPolicy=Never \
  --set kafka.bootstrapServers="$NODE_IP:$pod_port" --set kafka.groupId="k8s-test-$suffix" \
  --set topics.input="k8s-in-$suffix" --set topics.output="k8s-out-$suffix" --set topics.dlq="k8s-dlq-$suffix" \
  --set model.source=pvc --set model.pvc.claimName=model >&2 \
  || { kubectl -n "$ns" get pods -o wide >&2; kubectl -n "$ns" describe pods >&2; kubectl -n "$ns" logs -l app.kubernetes.io/name=embedstream --tail=30 >&2 || true; say "FAIL: helm install"; exit 1; }
kubectl -n "$ns" get pods -o wide >&2
say "release installed and its pod Ready in $((SECONDS - ti))s"

pod=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream -o jsonpath='{.items[0].metadata.name}')
say "pod $pod runs as: $(kubectl -n "$ns" exec "$pod" -- python -c 'import os; print(os.getuid(), os.getgid())')"
if kubectl -n "$ns" exec "$pod" -- python -c 'open("/opt/venv/x", "w")' 2>"$work/ro.err"; then say "FAIL: root filesystem writable"; exit 1; fi
say "root filesystem read-only: $(grep -m1 -o 'OSError.*' "$work/ro.err")"

# --- texts in, vectors out ---------------------------------------------------------------------------------
.venv/bin/embedstream produce --bootstrap "$bootstrap" --topic "k8s-in-$suffix" --count "$count" 2>&1 | tail -1 >&2
.venv/bin/python - "$bootstrap" "k8s-out-$suffix" "$count" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import orjson
from kafkatools import Collector
bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Collector(bootstrap, topic)
records = c.poll_until(count, timeout=180, settle=2)
c.close()
docs = [orjson.loads(r.value) for r in records]
ids = {d["id"] for d in docs}
dims = {len(d["embedding"]) for d in docs}
print(f"k8s-test: read back {len(records)} embeddings, {len(ids)} distinct ids of {count}, dims {sorted(dims)}",
      file=sys.stderr)
assert len(ids) == count and dims == {768}, (len(ids), dims)
PY

# --- kubectl delete pod while texts flow: SIGTERM, drain, exit 0; the replacement takes over -----------------
count2="${K8S_TEST_COUNT2:-3000}"
grace=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.terminationGracePeriodSeconds}')
kubectl -n "$ns" logs -f "$pod" > "$work/old-pod.log" 2>&1 &
logs_pid=$!
.venv/bin/python - "$bootstrap" "k8s-in-$suffix" "$count2" > "$work/produce2.log" 2>&1 <<'PY' &
import sys
from worker.produce import produce_texts, sample_sentences
print(produce_texts(sys.argv[1], sys.argv[2], sample_sentences(int(sys.argv[3]), seed=1), rate=300, id_prefix="del"))
PY
prod_pid=$!
sleep 4
td=$SECONDS
kubectl -n "$ns" delete pod "$pod" --wait=true --timeout=120s >&2
say "pod $pod deleted while texts flowed: gone in $((SECONDS - td))s (terminationGracePeriodSeconds $grace)"
wait "$logs_pid" || true
last=$(grep -v '^[[:space:]]*$' "$work/old-pod.log" | tail -1)
say "its last log line: $last"
if ! grep -q '"stopped"' <<<"$last" || ! grep -q '"exit_code":0' <<<"${last// /}"; then
  tail -20 "$work/old-pod.log" >&2; say "FAIL: the deleted pod did not stop cleanly"; exit 1
fi
kubectl -n "$ns" rollout status deploy/embedstream --timeout=180s >&2
wait "$prod_pid" || { cat "$work/produce2.log" >&2; say "FAIL: producer"; exit 1; }
say "replacement Ready; produced $(tail -1 "$work/produce2.log") more texts (ids del-*) at 300/s"
.venv/bin/python - "$bootstrap" "k8s-out-$suffix" "$count" "$count2" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import orjson
from kafkatools import Collector
bootstrap, topic, n1, n2 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
expected = {f"msg-{i}" for i in range(1, n1 + 1)} | {f"del-{i}" for i in range(1, n2 + 1)}
c = Collector(bootstrap, topic)
records = c.poll_until(n1 + n2, timeout=180, settle=5)
c.close()
ids = [orjson.loads(r.value)["id"] for r in records]
missing = expected - set(ids)
print(f"k8s-test: after the deletion: {len(records)} records, {len(set(ids))} distinct ids of {len(expected)}, "
      f"{len(ids) - len(set(ids))} duplicates (at least once), {len(missing)} missing", file=sys.stderr)
assert not missing, sorted(missing)[:10]
PY

# --- kubectl scale 1 -> 3 -> 1 while texts flow: partitions rebalance, nothing lost ----------------------------
count3="${K8S_TEST_COUNT3:-6000}"
.venv/bin/python - "$bootstrap" "k8s-in-$suffix" "$count3" > "$work/produce3.log" 2>&1 <<'PY' &
import sys
from worker.produce import produce_texts, sample_sentences
print(produce_texts(sys.argv[1], sys.argv[2], sample_sentences(int(sys.argv[3]), seed=2), rate=200, id_prefix="scale"))
PY
prod_pid=$!
sleep 3
ts=$SECONDS
kubectl -n "$ns" scale deploy/embedstream --replicas=3 >&2
kubectl -n "$ns" rollout status deploy/embedstream --timeout=240s >&2
say "scaled to 3: all Ready in $((SECONDS - ts))s; each pod's partition events 10 s later:"
sleep 10
for p in $(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream -o jsonpath='{.items[*].metadata.name}'); do
  say "  $p (created $(kubectl -n "$ns" get pod "$p" -o jsonpath='{.metadata.creationTimestamp}')): $(kubectl -n "$ns" logs "$p" |
    grep -E '"partitions (assigned|revoked)"' | sed 's/.*"msg":"//' | tr -d '"{}' | paste -sd ';' || true)"
done
ts=$SECONDS
kubectl -n "$ns" scale deploy/embedstream --replicas=1 >&2
for _ in $(seq 1 120); do
  [ "$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream --no-headers | wc -l)" = 1 ] && break
  sleep 1
done
say "scaled back to 1 in $((SECONDS - ts))s: $(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream --no-headers | awk '{print $1, $2, $3}')"
wait "$prod_pid" || { cat "$work/produce3.log" >&2; say "FAIL: producer"; exit 1; }
say "produced $(tail -1 "$work/produce3.log") texts (ids scale-*) at 200/s during the scaling"
.venv/bin/python - "$bootstrap" "k8s-out-$suffix" "$count" "$count2" "$count3" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import orjson
from kafkatools import Collector
bootstrap, topic, n1, n2, n3 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
expected = ({f"msg-{i}" for i in range(1, n1 + 1)} | {f"del-{i}" for i in range(1, n2 + 1)}
            | {f"scale-{i}" for i in range(1, n3 + 1)})
c = Collector(bootstrap, topic)
records = c.poll_until(n1 + n2 + n3, timeout=240, settle=5)
c.close()
ids = [orjson.loads(r.value)["id"] for r in records]
missing = expected - set(ids)
print(f"k8s-test: after scaling 1 -> 3 -> 1: {len(records)} records, {len(set(ids))} distinct ids of {len(expected)}, "
      f"{len(ids) - len(set(ids))} duplicates (at least once), {len(missing)} missing", file=sys.stderr)
assert not missing, sorted(missing)[:10]
PY

# --- helm upgrade (a rolling update: worker.batch.maxMessages 512 -> 256) while texts flow ------------------
count4="${K8S_TEST_COUNT4:-3000}"
old=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream -o jsonpath='{.items[0].metadata.name}')
kubectl -n "$ns" logs -f "$old" > "$work/upgrade-old-pod.log" 2>&1 &
logs_pid=$!
.venv/bin/python - "$bootstrap" "k8s-in-$suffix" "$count4" > "$work/produce4.log" 2>&1 <<'PY' &
import sys
from worker.produce import produce_texts, sample_sentences
print(produce_texts(sys.argv[1], sys.argv[2], sample_sentences(int(sys.argv[3]), seed=3), rate=300, id_prefix="upg"))
PY
prod_pid=$!
sleep 3
tu=$SECONDS
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set worker.batch.maxMessages=256 \
  --wait --timeout 5m >/dev/null
kubectl -n "$ns" wait --for=delete "pod/$old" --timeout=120s >/dev/null 2>&1 || true
wait "$logs_pid" || true
new=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream -o jsonpath='{.items[*].metadata.name}')
say "helm upgrade while texts flowed: $old replaced by $new in $((SECONDS - tu))s; EMBED_BATCH env now: $(kubectl -n "$ns" get pod "$new" -o jsonpath='{range .spec.containers[0].env[*]}{.name}={.value} {end}' | tr ' ' '\n' | grep -i 'MAX_MESSAGES' || true)"
last=$(grep -v '^[[:space:]]*$' "$work/upgrade-old-pod.log" | tail -1)
say "the old pod's last log line: $last"
if ! grep -q '"stopped"' <<<"$last" || ! grep -q '"exit_code":0' <<<"${last// /}"; then
  tail -20 "$work/upgrade-old-pod.log" >&2; say "FAIL: the old pod did not stop cleanly in the rolling update"; exit 1
fi
wait "$prod_pid" || { cat "$work/produce4.log" >&2; say "FAIL: producer"; exit 1; }
say "produced $(tail -1 "$work/produce4.log") texts (ids upg-*) at 300/s during the upgrade"
.venv/bin/python - "$bootstrap" "k8s-out-$suffix" "$count" "$count2" "$count3" "$count4" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import orjson
from kafkatools import Collector
bootstrap, topic = sys.argv[1], sys.argv[2]
n1, n2, n3, n4 = (int(a) for a in sys.argv[3:7])
expected = ({f"msg-{i}" for i in range(1, n1 + 1)} | {f"del-{i}" for i in range(1, n2 + 1)}
            | {f"scale-{i}" for i in range(1, n3 + 1)} | {f"upg-{i}" for i in range(1, n4 + 1)})
c = Collector(bootstrap, topic)
records = c.poll_until(n1 + n2 + n3 + n4, timeout=240, settle=5)
c.close()
ids = [orjson.loads(r.value)["id"] for r in records]
missing = expected - set(ids)
print(f"k8s-test: after the helm upgrade: {len(records)} records, {len(set(ids))} distinct ids of {len(expected)}, "
      f"{len(ids) - len(set(ids))} duplicates (at least once), {len(missing)} missing", file=sys.stderr)
assert not missing, sorted(missing)[:10]
PY

# --- a real Prometheus: kubernetes_sd_configs against this API server, selecting as the ServiceMonitor does --
bash scripts/install-prometheus.sh
node_state=$(dirname "$KUBECONFIG")
cat > "$work/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  # what the chart's ServiceMonitor asks the operator for: endpoints of the Service with the release's
  # selector labels, port "metrics", path /metrics, job from the app.kubernetes.io/name label (jobLabel)
  - job_name: serviceMonitor/$ns/embedstream/0
    metrics_path: /metrics
    kubernetes_sd_configs:
      - role: endpoints
        api_server: https://$NODE_IP:$(( ${K8S_PORT_BASE:-16000} + 443 ))
        namespaces: {names: [$ns]}
        tls_config: {ca_file: $node_state/pki/ca.crt, cert_file: $node_state/pki/admin.crt, key_file: $node_state/pki/admin.key}
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name, __meta_kubernetes_service_label_app_kubernetes_io_instance]
        regex: embedstream;embedstream
        action: keep
      - {source_labels: [__meta_kubernetes_endpoint_port_name], regex: metrics, action: keep}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name], target_label: job}
EOF
# Debian's prometheus 2.42.0+ds is built without the Kubernetes service discovery; PROMETHEUS/PROMTOOL name
# binaries that have it (not built here yet).
PROMETHEUS="${PROMETHEUS:-prometheus}"
PROMTOOL="${PROMTOOL:-promtool}"
if ! "$PROMTOOL" check config "$work/prometheus.yml" > "$work/promtool.out" 2>&1; then
  cat "$work/promtool.out" >&2
  say "FAIL: $("$PROMETHEUS" --version 2>&1 | head -1) cannot read kubernetes_sd_configs; set PROMETHEUS and PROMTOOL to a build with the Kubernetes service discovery"
  exit 1
fi
prom_port="${K8S_TEST_PROM_PORT:-16090}"
setsid "$PROMETHEUS" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 < /dev/null &
prom_pid=$!
query() { curl -fsS --get "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"; }
up_result=""
for _ in $(seq 1 60); do
  up_result=$(query 'up{job="embedstream"}' 2>/dev/null || true)
  if grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up_result"; then break; fi
  sleep 1
done
say "Prometheus (kubernetes_sd, role endpoints): up{job=\"embedstream\"} = $up_result"
if ! grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up_result"; then
  tail -20 "$work/prometheus.log" >&2; say "FAIL: Prometheus found no healthy pod target"; exit 1
fi
sleep 3
say "Prometheus: sum(embedstream_messages_produced_total) = $(query 'sum(embedstream_messages_produced_total)' | grep -o '"value":\[[^]]*\]')"
kill "$prom_pid"; wait "$prom_pid" 2>/dev/null || true; prom_pid=""
say "PASS (first steps) in $((SECONDS - t0))s"

#!/usr/bin/env bash
# The chart on a real node (issue 21), end to end, counting every message. One command on a clean machine: it
# builds what is missing (the node's Kubernetes binaries, ~45 min the first time; helm; Prometheus with the
# Kubernetes service discovery; the image, from this checkout), brings the node up and a broker the pods
# reach, and proves, in order:
#   1. `helm install`, the gemma-like fixture mounted as the model (hostPath PersistentVolume, model.source
#      pvc): the pod Ready through the chart's probes, running as 10001 with a read-only root; N texts and
#      B invalid ones in: every id in the output (768-D), exactly B dead letters with their headers;
#   2. `kubectl delete pod` while texts flow: the last log line is "stopped" with exit code 0;
#   3. `kubectl scale` 1 -> 3 -> 1 while texts flow (3 partitions): the partitions move, nothing lost;
#   4. `helm upgrade` (a rolling update) while texts flow: the old pod stops with exit code 0;
#   5. the HPA switched on by `helm upgrade` (CPU from metrics-server, which k8s-node.sh runs), then a backlog:
#      the first pod at full CPU stays Ready, its liveness probe holds, the HPA scales out to 3 and, once the
#      backlog is drained, back to 1;
#   6. the PodDisruptionBudget switched on: the PDB refuses an eviction of the only pod; then KEDA (which
#      k8s-node.sh runs) instead of the HPA: a backlog, KEDA scales out on the group's lag and back to 1; then
#      minReplicaCount 0: KEDA scales to zero when idle and back to one when texts arrive, every id counted;
#   7. a real Prometheus (kubernetes_sd_configs, role endpoints, selecting as the chart's ServiceMonitor
#      does), running since step 1, scraped every pod; every query of the dashboard returns data
#      (`embedstream dashboard check`) and the dashboard is drawn (`embedstream dashboard render`);
#   8. over the whole run: no container restarted, no liveness probe failed (every probe failure listed).
# At the end `k8s-node.sh down` and `k8s-node.sh status` (what is left of the node: nothing).
# Every id of every step is counted after it (at least once: duplicates are reported, missing ids fail).
# Slow: not in CI.
#
#   bash scripts/k8s-test.sh         (root; brings the node up and down itself)
#   K8S_TEST_KEEP=1 ...              leave the node, the release and the broker up at the end
#   K8S_TEST_IMAGE=reuse             use the localhost/embedstream:image-test already built instead of
#                                    building this checkout's
#   K8S_TEST_COUNT=N                 texts of step 1 (default 2000; steps 2-4 send 3000, 6000, 3000)
#   K8S_TEST_LOAD=N                  the backlog of step 5 (default 800000: about a minute of one pod)
#   K8S_TEST_KEDA_LOAD=N             the backlog of step 6 (default 600000)
#   K8S_TEST_DASHBOARD_PNG=F         copy the rendered dashboard to F
#   K8S_TEST_KAFKA_PORT=P            the broker's host port (default 16092; P+1 controller, P+2 for pods)
#   K8S_TEST_PROM_PORT=P             Prometheus' port on 127.0.0.1 (default 16090)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "k8s-test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
t0=$SECONDS
NODE_IP=10.244.0.1
IMAGE=localhost/embedstream:image-test
K8S_IMAGE=localhost/embedstream:k8s-test
ns=embedstream-k8s-test
count="${K8S_TEST_COUNT:-2000}"
bad=20
load="${K8S_TEST_LOAD:-800000}"
port="${K8S_TEST_KAFKA_PORT:-16092}"
pod_port=$((port + 2))
prom_port="${K8S_TEST_PROM_PORT:-16090}"
suffix=$$
in_topic="k8s-in-$suffix" out_topic="k8s-out-$suffix" dlq_topic="k8s-dlq-$suffix"
bootstrap="127.0.0.1:$port"
work="$(mktemp -d /tmp/embedstream-k8s-test.XXXXXX)"
started_node=0
started_broker=0
prom_pid=""
bg_pids=()
cleanup() {
  local p
  for p in "${bg_pids[@]}" $prom_pid; do kill "$p" 2>/dev/null || true; done
  if [ "${K8S_TEST_KEEP:-0}" = 1 ]; then say "K8S_TEST_KEEP=1: node, release and broker ($work/kafka) left up"; return; fi
  if [ "$started_broker" = 1 ]; then KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" bash scripts/kafka-local.sh stop || true; fi
  if [ "$started_node" = 1 ]; then bash scripts/k8s-node.sh down || true; bash scripts/k8s-node.sh status || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] || { say "run as root"; exit 1; }

# shellcheck source=SCRIPTDIR/k8s-test/lib.sh
source scripts/k8s-test/lib.sh

# --- tools, venv, image ------------------------------------------------------------------------------------
HELM="${HELM:-$(bash scripts/install-tools.sh)}"
PROMETHEUS="${PROMETHEUS:-$(bash scripts/install-tools.sh prometheus)}"
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q -e '.[test]'; }
if [ "${K8S_TEST_IMAGE:-}" = reuse ] && buildah inspect "$IMAGE" >/dev/null 2>&1; then
  say "reusing $IMAGE (K8S_TEST_IMAGE=reuse), built $(buildah inspect -f '{{.FromImageCreated}}' "$IMAGE" 2>/dev/null || echo '?')"
else
  say "building $IMAGE from this checkout (scripts/image-test.sh, build only)"
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
  || { bash scripts/k8s-node.sh ctr images ls -q >&2; fail "$K8S_IMAGE not in the node's image store"; }

# --- broker: 127.0.0.1:port for this script, 10.244.0.1:port+2 for the pods --------------------------------
cat > "$work/kafka.props" <<EOF
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PODS:PLAINTEXT
EOF
started_broker=1
KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" KAFKA_LOCAL_EXTRA_PROPS="$work/kafka.props" \
  KAFKA_LOCAL_EXTRA_LISTENERS="PODS://$NODE_IP:$pod_port" bash scripts/kafka-local.sh start

# --- model (gemma-like fixture) and topics ---------------------------------------------------------------
model=$(.venv/bin/python - "$bootstrap" "$in_topic" "$out_topic" "$dlq_topic" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
from worker.bench.gemma import build_model
from kafkatools import create_topics
create_topics(sys.argv[1], sys.argv[2:5], 3)
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

# --- 1. install; texts in, vectors out -----------------------------------------------------------------------
chart_values=(--set image.repository=localhost/embedstream --set image.tag=k8s-test --set image.pullPolicy=Never
  --set kafka.bootstrapServers="$NODE_IP:$pod_port" --set kafka.groupId="k8s-test-$suffix"
  --set topics.input="$in_topic" --set topics.output="$out_topic" --set topics.dlq="$dlq_topic"
  --set model.source=pvc --set model.pvc.claimName=model)
ti=$SECONDS
say "helm install (model.source=pvc, image $K8S_IMAGE, pullPolicy Never, broker $NODE_IP:$pod_port)"
"$HELM" install embedstream helm/embedstream -n "$ns" --wait --timeout 5m "${chart_values[@]}" >&2 \
  || { kubectl -n "$ns" get pods -o wide >&2; kubectl -n "$ns" describe pods >&2; kubectl -n "$ns" logs -l app.kubernetes.io/name=embedstream --tail=30 >&2 || true; fail "helm install"; }
kubectl -n "$ns" get pods -o wide >&2
say "release installed and its pod Ready in $((SECONDS - ti))s"
pod=$(pods)
say "pod $pod runs as: $(kubectl -n "$ns" exec "$pod" -- python -c 'import os; print(os.getuid(), os.getgid())')"
if kubectl -n "$ns" exec "$pod" -- python -c 'open("/opt/venv/x", "w")' 2>"$work/ro.err"; then fail "root filesystem writable"; fi
say "root filesystem read-only: $(grep -m1 -o 'OSError.*' "$work/ro.err")"

# Prometheus from here on, so that the dashboard's queries at the end see every step. What the chart's
# ServiceMonitor asks the operator for: endpoints of the Service with the release's selector labels, port
# "metrics", path /metrics, job from the app.kubernetes.io/name label (jobLabel).
cat > "$work/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: serviceMonitor/$ns/embedstream/0
    metrics_path: /metrics
    kubernetes_sd_configs:
      - role: endpoints
        api_server: https://$NODE_IP:$(( ${K8S_PORT_BASE:-16000} + 443 ))
        namespaces: {names: [$ns]}
        tls_config: {ca_file: $(dirname "$KUBECONFIG")/pki/ca.crt, cert_file: $(dirname "$KUBECONFIG")/pki/admin.crt, key_file: $(dirname "$KUBECONFIG")/pki/admin.key}
    relabel_configs:
      - source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name, __meta_kubernetes_service_label_app_kubernetes_io_instance]
        regex: embedstream;embedstream
        action: keep
      - {source_labels: [__meta_kubernetes_endpoint_port_name], regex: metrics, action: keep}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
      - {source_labels: [__meta_kubernetes_service_label_app_kubernetes_io_name], target_label: job}
EOF
setsid "$PROMETHEUS" --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$prom_port" > "$work/prometheus.log" 2>&1 < /dev/null &
prom_pid=$!
prom_start=$(date +%s)
query() { curl -fsS --get "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"; }
value() { query "$1" | grep -o '"value":\[[^]]*\]' | head -1 | sed 's/.*,"\(.*\)"\]/\1/'; }  # the first sample's value
up_result=""
for _ in $(seq 1 60); do
  kill -0 "$prom_pid" 2>/dev/null || { tail -20 "$work/prometheus.log" >&2; fail "Prometheus exited"; }
  up_result=$(query 'up{job="embedstream"}' 2>/dev/null || true)
  if grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up_result"; then break; fi
  sleep 1
done
say "Prometheus $("$PROMETHEUS" --version 2>&1 | head -1 | awk '{print $3}') (kubernetes_sd, role endpoints): up{job=\"embedstream\"} = $up_result"
grep -q '"value":\[[0-9.]*,"1"\]' <<<"$up_result" || { tail -20 "$work/prometheus.log" >&2; fail "Prometheus found no healthy pod target"; }

produce msg "$count" 0 0; p1=$!
produce bad "$bad" 0 9 text; p2=$!   # raw text where JSON is expected: dead letters (invalid_json)
produced "$p1" msg; say "$sent"
produced "$p2" bad; say "invalid: $sent"
count_ids "step 1, install" "msg:$count" --dlq "$dlq_topic:$bad"

# --- 2. kubectl delete pod while texts flow: SIGTERM, drain, exit 0; the replacement takes over -----------------
count2=3000
grace=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.spec.terminationGracePeriodSeconds}')
kubectl -n "$ns" logs -f "$pod" > "$work/old-pod.log" 2>&1 &
logs_pid=$!
produce del "$count2" 300 1; p=$!
sleep 4
td=$SECONDS
kubectl -n "$ns" delete pod "$pod" --wait=true --timeout=120s >&2
say "pod $pod deleted while texts flowed: gone in $((SECONDS - td))s (terminationGracePeriodSeconds $grace)"
wait "$logs_pid" || true
stopped_cleanly "$work/old-pod.log" "the deleted pod"
kubectl -n "$ns" rollout status deploy/embedstream --timeout=180s >&2
produced "$p" del
say "replacement Ready; $sent (ids del-*, 300/s)"
count_ids "step 2, after the deletion" "msg:$count" "del:$count2"

# --- 3. kubectl scale 1 -> 3 -> 1 while texts flow: partitions rebalance, nothing lost ----------------------------
count3=6000
produce scale "$count3" 200 2; p=$!
sleep 3
ts=$SECONDS
kubectl -n "$ns" scale deploy/embedstream --replicas=3 >&2
kubectl -n "$ns" rollout status deploy/embedstream --timeout=240s >&2
say "scaled to 3: all Ready in $((SECONDS - ts))s; each pod's partition events 10 s later:"
sleep 10
for p3 in $(pods); do
  say "  $p3 (created $(kubectl -n "$ns" get pod "$p3" -o jsonpath='{.metadata.creationTimestamp}')): $(kubectl -n "$ns" logs "$p3" |
    grep -E '"partitions (assigned|revoked)"' | sed 's/.*"msg":"//' | tr -d '"{}' | paste -sd ';' || true)"
done
ts=$SECONDS
kubectl -n "$ns" scale deploy/embedstream --replicas=1 >&2
replicas_become 1 120 || fail "3 pods did not become 1 in 120 s"
say "scaled back to 1 in $((SECONDS - ts))s: $(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream --no-headers | awk '{print $1, $2, $3}')"
produced "$p" scale
say "$sent during the scaling (ids scale-*, 200/s)"
count_ids "step 3, after scaling 1 -> 3 -> 1" "msg:$count" "del:$count2" "scale:$count3"

# --- 4. helm upgrade (a rolling update: worker.batch.maxMessages 512 -> 256) while texts flow ------------------
count4=3000
old=$(pods)
kubectl -n "$ns" logs -f "$old" > "$work/upgrade-old-pod.log" 2>&1 &
logs_pid=$!
produce upg "$count4" 300 3; p=$!
sleep 3
tu=$SECONDS
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set worker.batch.maxMessages=256 \
  --wait --timeout 5m >/dev/null
kubectl -n "$ns" wait --for=delete "pod/$old" --timeout=120s >/dev/null 2>&1 || true
wait "$logs_pid" || true
pod=$(pods)
say "helm upgrade while texts flowed: $old replaced by $pod in $((SECONDS - tu))s; $(kubectl -n "$ns" get pod "$pod" -o jsonpath='{range .spec.containers[0].env[*]}{.name}={.value} {end}' | tr ' ' '\n' | grep -i 'MAX_MESSAGES' || true)"
stopped_cleanly "$work/upgrade-old-pod.log" "the old pod"
produced "$p" upg
say "$sent during the upgrade (ids upg-*, 300/s)"
count_ids "step 4, after the helm upgrade" "msg:$count" "del:$count2" "scale:$count3" "upg:$count4"

# --- 5. the HPA on, then a backlog: the pod at full CPU, the HPA scales out and back in, nothing lost ---------
# metrics-server (started by k8s-node.sh) gives the HPA the pods' CPU; the chart's HPA targets 70% of the CPU
# request (500m), which one pod draining a backlog exceeds several times. Scale-down's stabilization window is
# set to 30 s (default 300 s) so that the run sees the way back to 1.
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set autoscaling.enabled=true \
  --set autoscaling.maxReplicas=3 --set-json 'autoscaling.behavior={"scaleDown":{"stabilizationWindowSeconds":30}}' \
  --wait --timeout 3m >/dev/null
hpa_cpu() { kubectl -n "$ns" get hpa embedstream -o jsonpath='{.status.currentMetrics[0].resource.current.averageUtilization}' 2>/dev/null; }
hpa_reading() { echo "HPA reading $(hpa_cpu)%"; }
for _ in $(seq 1 90); do [ -n "$(hpa_cpu)" ] && break; sleep 1; done
[ -n "$(hpa_cpu)" ] || { kubectl -n "$ns" describe hpa embedstream >&2; fail "the HPA has no CPU reading from the metrics API"; }
say "HPA on (cpu 70% of the request, 1-3 replicas): reading $(hpa_cpu)% with $(kubectl -n "$ns" get deploy embedstream -o jsonpath='{.status.replicas}') replica, kubectl top: $(kubectl -n "$ns" top pod --no-headers 2>/dev/null | tr -s ' ' | paste -sd ';')"
produce load "$load" 0 4; p=$!
drain "$p" hpa_reading
produced "$p" load
say "$sent as fast as the producer could (ids load-*); lag 0 after $((SECONDS - tl))s, at most $max_replicas replicas Ready"
say "pod $pod during the drain: Ready in $((polls - not_ready)) of $polls polls (every 2 s), restarts $(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.status.containerStatuses[0].restartCount}')"
# over_drain EXPR FORMAT: the largest value of EXPR (over the pods) during the drain
over_drain() { value "max_over_time(($1)[$((SECONDS - tl))s:2s])" | xargs printf "$2"; }
say "Prometheus over the drain, at most: $(over_drain 'sum(rate(embedstream_messages_produced_total{job="embedstream"}[10s]))' '%.0f') vectors/s, $(over_drain 'sum(rate(process_cpu_seconds_total{job="embedstream"}[10s]))' '%.2f') CPU-seconds/s, RSS $(over_drain 'max(process_resident_memory_bytes{job="embedstream"})' '%.0f' | numfmt --to=iec-i --suffix=B)"
[ "$not_ready" = 0 ] || fail "the pod was not Ready in $not_ready polls during the drain"
[ "$max_replicas" -gt 1 ] || { kubectl -n "$ns" describe hpa embedstream >&2; fail "the HPA did not scale out under the backlog"; }
ts=$SECONDS
replicas_become 1 240 || { kubectl -n "$ns" describe hpa embedstream >&2; fail "the HPA did not scale back to 1 in 240 s"; }
pod=$(pods)
say "HPA scaled back to 1 $((SECONDS - ts))s after the drain (stabilization 30 s): $pod; its events: $(kubectl -n "$ns" get events --field-selector involvedObject.kind=HorizontalPodAutoscaler -o jsonpath='{range .items[*]}{.message}; {end}')"
count_ids "step 5, after the drain and the autoscaling" "msg:$count" "del:$count2" "scale:$count3" "upg:$count4" "load:$load"

# --- 6. PodDisruptionBudget --------------------------------------------------------------------------------------
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set podDisruptionBudget.enabled=true \
  --set podDisruptionBudget.minAvailable=1 --wait --timeout 3m >/dev/null
for _ in $(seq 1 30); do
  [ "$(kubectl -n "$ns" get pdb embedstream -o jsonpath='{.status.observedGeneration}' 2>/dev/null)" != "" ] && break
  sleep 1
done
say "PodDisruptionBudget: $(kubectl -n "$ns" get pdb embedstream -o jsonpath='minAvailable {.spec.minAvailable}, currentHealthy {.status.currentHealthy}, disruptionsAllowed {.status.disruptionsAllowed}')"
pod=$(pods)
printf '{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"%s","namespace":"%s"}}' "$pod" "$ns" > "$work/eviction.json"
if kubectl create --raw "/api/v1/namespaces/$ns/pods/$pod/eviction" -f "$work/eviction.json" > "$work/eviction.out" 2>&1; then
  fail "the eviction of the only pod went through despite minAvailable 1"
fi
say "eviction of $pod refused: $(grep -o 'Cannot evict[^"]*' "$work/eviction.out" | head -1 || cat "$work/eviction.out")"
grep -q 'disruption budget' "$work/eviction.out" || fail "the eviction failed for another reason"

# --- 6b. KEDA: scaling on the group's lag, then to zero and back ----------------------------------------------------
# k8s-node.sh runs KEDA's operator and external metrics adapter. The chart's ScaledObject replaces the CPU HPA
# (KEDA makes its own HPA, keda-hpa-embedstream, on the Kafka scaler's lag metric); its operator reads the lag
# from the broker address the pods use. lagThreshold 50,000 per replica: a backlog of hundreds of thousands asks
# for the maximum, 3 (the partition count).
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set autoscaling.enabled=false \
  --set keda.enabled=true --set keda.minReplicaCount=1 --set keda.maxReplicaCount=3 --set keda.pollingInterval=5 \
  --set keda.lagThreshold=50000 \
  --set-json 'keda.advanced={"horizontalPodAutoscalerConfig":{"behavior":{"scaleDown":{"stabilizationWindowSeconds":30}}}}' \
  --wait --timeout 3m >/dev/null
keda_lag() { kubectl -n "$ns" get hpa keda-hpa-embedstream -o jsonpath='{.status.currentMetrics[0].external.current.averageValue}' 2>/dev/null; }
keda_reading() { echo "KEDA's HPA reading $(keda_lag) lag per replica"; }
so_ready() { kubectl -n "$ns" get scaledobject embedstream -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null; }
for _ in $(seq 1 90); do [ "$(so_ready)" = True ] && [ -n "$(keda_lag)" ] && break; sleep 1; done
if [ "$(so_ready)" != True ] || [ -z "$(keda_lag)" ]; then
  kubectl -n "$ns" describe scaledobject embedstream >&2; kubectl -n "$ns" describe hpa >&2
  fail "KEDA's ScaledObject is not Ready or its HPA has no lag reading"
fi
say "KEDA: ScaledObject Ready, its HPA $(kubectl -n "$ns" get hpa keda-hpa-embedstream -o jsonpath='{.spec.metrics[0].external.metric.name} target {.spec.metrics[0].external.target.averageValue}, {.spec.minReplicas}-{.spec.maxReplicas} replicas'); reading $(keda_lag)"
keda_load="${K8S_TEST_KEDA_LOAD:-600000}"
produce keda "$keda_load" 0 6; p=$!
drain "$p" keda_reading
produced "$p" keda
say "$sent as fast as the producer could (ids keda-*); lag 0 after $((SECONDS - tl))s, at most $max_replicas replicas Ready"
[ "$not_ready" = 0 ] || fail "the pod was not Ready in $not_ready polls during the drain"
[ "$max_replicas" -gt 1 ] || { kubectl -n "$ns" describe hpa keda-hpa-embedstream >&2; fail "KEDA did not scale out on the lag"; }
ts=$SECONDS
replicas_become 1 240 || { kubectl -n "$ns" describe hpa keda-hpa-embedstream >&2; fail "KEDA did not scale back to 1 in 240 s"; }
say "KEDA scaled back to 1 $((SECONDS - ts))s after the drain (stabilization 30 s); its HPA's events: $(kubectl -n "$ns" get events --field-selector involvedObject.name=keda-hpa-embedstream -o jsonpath='{range .items[*]}{.message}; {end}')"
count_ids "step 6b, after KEDA's scaling on lag" "msg:$count" "del:$count2" "scale:$count3" "upg:$count4" "load:$load" "keda:$keda_load"

# To zero when idle (minReplicaCount 0: the operator scales the Deployment itself once the lag has been at or
# below activationLagThreshold, 0, for cooldownPeriod), and back to one when texts arrive.
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set keda.minReplicaCount=0 \
  --set keda.cooldownPeriod=20 --wait --timeout 3m >/dev/null
tz=$SECONDS
replicas_become 0 180 || { kubectl -n "$ns" describe scaledobject embedstream >&2; fail "KEDA did not scale to zero in 180 s"; }
say "KEDA scaled to zero $((SECONDS - tz))s after minReplicaCount 0 (cooldownPeriod 20 s; the lag had been 0 since the drain)"
count_zero=2000
tz=$SECONDS
produce zero "$count_zero" 0 7; p=$!
one_ready 180 || { kubectl -n "$ns" describe scaledobject embedstream >&2; fail "KEDA did not scale from zero in 180 s"; }
pod=$(pods)
say "KEDA scaled from zero: $pod Ready $((SECONDS - tz))s after the first of $count_zero texts"
drain "$p" keda_reading
produced "$p" zero
say "$sent (ids zero-*); lag 0 $((SECONDS - tz))s after the first text"
count_ids "step 6b, after scaling from zero" "msg:$count" "del:$count2" "scale:$count3" "upg:$count4" "load:$load" \
  "keda:$keda_load" "zero:$count_zero"
# minReplicaCount 1 again: steps 7 and 8 read the pods that run (with none, Prometheus has no live target)
"$HELM" upgrade embedstream helm/embedstream -n "$ns" --reuse-values --set keda.minReplicaCount=1 --wait --timeout 3m >/dev/null
one_ready 120 || fail "minReplicaCount 1: no Ready pod after 120 s"
pod=$(pods)

# --- 7. the dashboard's queries against the Prometheus that scraped every step --------------------------------
prom_end=$(date +%s)
prom_url="http://127.0.0.1:$prom_port"
say "Prometheus targets now: $(curl -fsS "$prom_url/api/v1/targets?state=active" | grep -o '"health":"[a-z]*"' | sort | uniq -c | tr -s ' ' | paste -sd ',')"
# Panels that a healthy run leaves empty: client errors (none happened), and the fast path's hit ratio where no
# pod runs the fast path (gigatoken, the image's tokenizer: embedstream_model_info's fast_path label says "off: ...").
allowed=(--may-be-empty "Kafka client errors by kind")
fast_path=$(query 'count by (fast_path) (embedstream_model_info{job="embedstream"})' | grep -o '"fast_path":"[^"]*"' | sort -u | paste -sd ' ' || true)
say "the pods' fast path: $fast_path"
if ! grep -q '"fast_path":"on"' <<<"$fast_path"; then allowed+=(--may-be-empty "Fast-path cache hit ratio"); fi
.venv/bin/embedstream dashboard check --prometheus "$prom_url" --start "$prom_start" --end "$prom_end" \
  --scrape-interval 2s "${allowed[@]}" > "$work/dashboard-check.out" \
  || { cat "$work/dashboard-check.out" >&2; fail "dashboard queries without data"; }
sed 's/^/k8s-test:   /' "$work/dashboard-check.out" | cut -c1-160 >&2
.venv/bin/embedstream dashboard render --prometheus "$prom_url" --start "$prom_start" --end "$prom_end" \
  --scrape-interval 2s -o "$work/dashboard.png"
if [ -n "${K8S_TEST_DASHBOARD_PNG:-}" ]; then cp "$work/dashboard.png" "$K8S_TEST_DASHBOARD_PNG"; say "dashboard: $K8S_TEST_DASHBOARD_PNG"; fi
kill "$prom_pid"; wait "$prom_pid" 2>/dev/null || true; prom_pid=""

# --- 8. over the whole run: no restart, no liveness failure --------------------------------------------------
restarts=$(kubectl -n "$ns" get pods -o jsonpath='{range .items[*]}{.status.containerStatuses[0].restartCount}{"\n"}{end}' |
  awk '{n += $1} END {print n + 0}')
# Probe failures as the kubelet reports them: Unhealthy events, "<Kind> probe failed: ..." (kept 1 h; the run
# is shorter). Startup and readiness failures are expected while a pod loads its model and while it stops.
kubectl -n "$ns" get events --field-selector reason=Unhealthy -o json > "$work/events.json"
.venv/bin/python - "$work/events.json" > "$work/probe-failures.txt" 2> "$work/probe-events.txt" <<'PY'
import collections, json, sys
n, seen = collections.Counter(), collections.defaultdict(list)
for e in json.load(open(sys.argv[1]))["items"]:
    count = e.get("count") or (e.get("series") or {}).get("count") or 1
    n[e["message"].split()[0]] += count
    when = f'{e.get("firstTimestamp") or ""}..{e.get("lastTimestamp") or ""}'
    seen[e["message"][:90]].append(f'{e["involvedObject"]["name"]} x{count} {when}')
print(" ".join(f"{k}={n[k]}" for k in ("Liveness", "Readiness", "Startup")))
for message, where in seen.items():
    print(f"  {message}: {'; '.join(where)}", file=sys.stderr)
PY
say "probe failures over the run (Unhealthy events): $(cat "$work/probe-failures.txt"); restarts of the pods now running: $restarts"
sed 's/^/k8s-test: /' "$work/probe-events.txt" >&2
grep -q 'Liveness=0 ' "$work/probe-failures.txt" && [ "$restarts" = 0 ] || fail "a liveness probe failed or a container restarted"
say "PASS in $((SECONDS - t0))s"

# shellcheck shell=bash disable=SC2154  # the variables are set by k8s-node.sh, which sources this
# Sourced by scripts/k8s-node.sh: KEDA (scaling on Kafka lag), built once from its Go module and run as two host
# processes the way metrics-server is:
#   keda-operator  watches ScaledObjects, makes their HPAs, scales 0 <-> 1 itself, and reads the lag (its
#                  Kafka scaler dials the brokers the ScaledObject names); serves the metrics over gRPC (mTLS)
#   keda-adapter   the external metrics API (v1beta1.external.metrics.k8s.io, through the aggregation layer),
#                  which the HPA controller asks and which asks the operator
# Both use the admin kubeconfig instead of KEDA's RBAC, and one certificate from the node's CA (serverAuth and
# clientAuth: it is the adapter's serving certificate, and both ends of the gRPC mTLS) instead of KEDA's own
# certificate rotation. KEDA's admission webhooks are not run (they only validate ScaledObjects).

keda_src() {  # a writable copy of the module (its go.mod pins versions with replace lines; a plain go build)
  local dir src="$cache/keda-$KEDA_VERSION-src"
  if [ ! -f "$src/go.mod" ]; then
    dir=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [ -d "$dir" ] || die "could not download github.com/kedacore/keda/v2@$KEDA_VERSION"
    rm -rf "$src.tmp" && cp -r "$dir" "$src.tmp" && chmod -R u+w "$src.tmp" && mv "$src.tmp" "$src"
  fi
  echo "$src"
}

keda_build() {
  if [ -x "$bin/keda-operator" ] && [ -x "$bin/keda-adapter" ] && [ "$(cat "$bin/keda.version" 2>/dev/null)" = "$KEDA_VERSION" ]; then
    return 0
  fi
  local src t0=$SECONDS
  src=$(keda_src)
  # 354 modules (the SDKs behind its 71 scalers): about as long as the Kubernetes build the first time
  say "building KEDA $KEDA_VERSION (operator, metrics adapter) into $bin"
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath \
    -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_VERSION#v}" -o "$src/bin/" ./cmd/operator ./cmd/adapter)
  mv "$src/bin/operator" "$bin/keda-operator"
  mv "$src/bin/adapter" "$bin/keda-adapter"
  echo "$KEDA_VERSION" > "$bin/keda.version"
  say "built KEDA in $((SECONDS - t0))s"
}

keda_crds() { echo "$(keda_src)/config/crd/bases"; }

keda_crds_established() {  # (kubectl wait fails at once on a CRD that has no status yet)
  local n
  n=$(kc get crd -o jsonpath='{range .items[*]}{.spec.group} {.status.conditions[?(@.type=="Established")].status}{"\n"}{end}' |
    awk '$1 ~ /keda\.sh$/ && $2 == "True"' | wc -l)
  [ "$n" = "$(find "$(keda_crds)" -name '*.yaml' ! -name kustomization.yaml | wc -l)" ]
}

keda_up() {
  local d="$S/keda" env
  mkdir -p "$d"
  cert keda keda - both "DNS:keda-operator,DNS:keda-metrics-apiserver.keda.svc,IP:$NODE_IP,IP:127.0.0.1"
  cp "$S/pki/ca.crt" "$d/ca.crt"; cp "$S/pki/keda.crt" "$d/tls.crt"; cp "$S/pki/keda.key" "$d/tls.key"
  kc apply --server-side -f "$(keda_crds)" >/dev/null
  # before the operator starts, or its controllers log errors until the API serves the kinds
  wait_for "KEDA's CRDs (Established)" 60 keda_crds_established
  kc create namespace keda --dry-run=client -o yaml | kc apply -f - >/dev/null
  env=(env KEDA_CLUSTER_OBJECT_NAMESPACE=keda POD_NAMESPACE=keda WATCH_NAMESPACE= KUBECONFIG="$S/admin.kubeconfig")
  start keda-operator "${env[@]}" "$bin/keda-operator" --zap-log-level=info --zap-encoder=console \
    --metrics-bind-address="127.0.0.1:$KEDA_OPERATOR_METRICS_PORT" \
    --health-probe-bind-address="127.0.0.1:$KEDA_OPERATOR_HEALTH_PORT" \
    --metrics-service-bind-address="127.0.0.1:$KEDA_GRPC_PORT" --cert-dir="$d" --enable-cert-rotation=false \
    --ca-dir="$d"
  # The adapter's own metrics listener (--port) binds every interface: only this host and the pods reach it.
  iptables -I INPUT -p tcp --dport "$KEDA_ADAPTER_METRICS_PORT" ! -i "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT
  iptables -I INPUT -p tcp --dport "$KEDA_ADAPTER_METRICS_PORT" -i lo -m comment --comment "$COMMENT" -j ACCEPT
  start keda-adapter "${env[@]}" "$bin/keda-adapter" --secure-port="$KEDA_API_PORT" --bind-address="$NODE_IP" \
    --tls-cert-file="$d/tls.crt" --tls-private-key-file="$d/tls.key" --cert-dir="$d" --client-ca-file="$d/ca.crt" \
    --lister-kubeconfig="$S/admin.kubeconfig" \
    --authentication-kubeconfig="$S/admin.kubeconfig" --authorization-kubeconfig="$S/admin.kubeconfig" \
    --metrics-service-address="127.0.0.1:$KEDA_GRPC_PORT" --port="$KEDA_ADAPTER_METRICS_PORT" --zap-log-level=info
  wait_for "keda-operator (healthz)" 60 curl -fsS "http://127.0.0.1:$KEDA_OPERATOR_HEALTH_PORT/healthz"
  aggregated_api keda-metrics-apiserver keda "$KEDA_API_PORT" external.metrics.k8s.io
}

keda_remove_iptables() {
  while iptables -D INPUT -p tcp --dport "$KEDA_ADAPTER_METRICS_PORT" ! -i "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT 2>/dev/null; do :; done
  while iptables -D INPUT -p tcp --dport "$KEDA_ADAPTER_METRICS_PORT" -i lo -m comment --comment "$COMMENT" -j ACCEPT 2>/dev/null; do :; done
}

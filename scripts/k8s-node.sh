#!/usr/bin/env bash
# A single real Kubernetes node on this machine, for issue 21 (not CI: the first build takes ~25-30 min).
#
#   scripts/k8s-node.sh build    build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
#                                kube-proxy once (one `go build` from the Go module proxy) into the cache
#                                and metrics-server (the resource metrics API the HPA reads) and KEDA
#                                (its operator and external metrics adapter: scaling on Kafka lag)
#   scripts/k8s-node.sh up       install missing Debian packages, then start etcd, the control plane,
#                                containerd, the kubelet, kube-proxy, metrics-server and KEDA (both registered
#                                through the API server's aggregation layer); wait for the node to be Ready
#   scripts/k8s-node.sh down     delete every pod, stop every daemon by its recorded PID, then remove what
#                                they left: containers and shims, mounts, network namespaces, cgroups,
#                                iptables chains and rules, the bridge; restore the sysctls the kubelet set
#   scripts/k8s-node.sh status   the daemons and what is left of them; the node and pods when it is up
#   scripts/k8s-node.sh env      print `export KUBECONFIG=...` (the admin kubeconfig)
#   scripts/k8s-node.sh ctr ...  ctr against the node's containerd, namespace k8s.io (images import FILE)
#
# Root only. Everything listens on the bridge's address (10.244.0.1, on cni0, created by `up`) or on
# 127.0.0.1, nothing on the machine's own interfaces (KEDA's adapter binds its metrics port everywhere: INPUT
# rules admit only lo and the bridge there); a FORWARD rule rejects pod traffic towards any other
# interface. Pods reach the host (and a broker listening there) at 10.244.0.1. There is no cluster DNS:
# use addresses or hostAliases.
#
# Its parts: k8s-node/build.sh (what is built or installed once: binaries, packages, the pause image) and
# k8s-node/files.sh (certificates, kubeconfigs, the daemons' configuration files), k8s-node/keda.sh (KEDA's
# build and start); this file starts, stops and reports the daemons.
#
# Environment: K8S_NODE_STATE (state dir, default ~/.cache/embedstream/k8s/state), K8S_NODE_NAME
# (default embedstream-node), K8S_PORT_BASE (default 16000: etcd +379/+380, apiserver +443,
# kubelet +250, its healthz +248, kube-proxy +249/+256, controller-manager +257, scheduler +259,
# metrics-server +451, KEDA +452..+456).
#
# Versions: Kubernetes v1.34.4 (1.35 refuses cgroup v1 by default), with Debian's containerd 1.6, runc 1.1,
# containernetworking-plugins 1.1 and etcd 3.4. This machine lacks CAP_SYS_RESOURCE, so containerd runs with
# restrict_oom_score_adj and the kubelet and kube-proxy with oomScoreAdj 0. cgroup v1, cgroupfs driver.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION=v1.34.4
STAGING_VERSION=v0.34.4
METRICS_SERVER_VERSION=v0.8.0
KEDA_VERSION=v2.20.2  # v2.21 needs Go 1.27.4
PAUSE_TAG=3.10.1
PAUSE_IMAGE="registry.k8s.io/pause:$PAUSE_TAG"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/k8s/$K8S_VERSION"
bin="$cache/bin"
S="${K8S_NODE_STATE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/k8s/state}"
NODE="${K8S_NODE_NAME:-embedstream-node}"
base="${K8S_PORT_BASE:-16000}"
ETCD_PORT=$((base + 379)) ETCD_PEER_PORT=$((base + 380)) API_PORT=$((base + 443))
KUBELET_PORT=$((base + 250)) KUBELET_HEALTHZ_PORT=$((base + 248))
PROXY_METRICS_PORT=$((base + 249)) PROXY_HEALTHZ_PORT=$((base + 256))
CM_PORT=$((base + 257)) SCHED_PORT=$((base + 259)) MS_PORT=$((base + 451))
KEDA_API_PORT=$((base + 452)) KEDA_GRPC_PORT=$((base + 453)) KEDA_OPERATOR_METRICS_PORT=$((base + 454))
KEDA_OPERATOR_HEALTH_PORT=$((base + 455)) KEDA_ADAPTER_METRICS_PORT=$((base + 456))
BRIDGE=cni0
POD_CIDR=10.244.0.0/24
NODE_IP=10.244.0.1
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1
COMMENT="embedstream-k8s-node"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# containerd's shim sockets and runc state; the kubelet's device-plugin socket dir and container-log links
OUTSIDE_PATHS=(/run/containerd /var/lib/kubelet /var/log/containers /var/log/pods /var/lib/cni)
DAEMONS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy metrics-server
  keda-operator keda-adapter)
# sysctls the kubelet sets when protectKernelDefaults is false (it refuses to start when it is true and
# they differ): saved by `up`, restored by `down`.
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

say() { echo "k8s-node: $*" >&2; }
die() { say "$*"; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root"; }
kc() { kubectl --kubeconfig "$S/admin.kubeconfig" "$@"; }
sock() { echo "$S/containerd/containerd.sock"; }
ctr_() { ctr --address "$(sock)" -n k8s.io "$@"; }
alive() { local p; p=$(cat "$S/pids/$1.pid" 2>/dev/null) && [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }

# shellcheck source=SCRIPTDIR/k8s-node/build.sh
source scripts/k8s-node/build.sh
# shellcheck source=SCRIPTDIR/k8s-node/files.sh
source scripts/k8s-node/files.sh
# shellcheck source=SCRIPTDIR/k8s-node/keda.sh
source scripts/k8s-node/keda.sh

# --- daemons -----------------------------------------------------------------------------------------------
start() {  # name command...
  local name=$1; shift
  setsid "$@" > "$S/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$S/pids/$name.pid"
  say "started $name (pid $!)"
}

wait_for() {  # what seconds command...
  local what=$1 secs=$2 i; shift 2
  for ((i = 0; i < secs; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "$what not ready after ${secs}s (logs in $S/logs)"
}

api_ready() {
  curl -fsS --cacert "$S/pki/ca.crt" --cert "$S/pki/admin.crt" --key "$S/pki/admin.key" \
    "https://$NODE_IP:$API_PORT/readyz"
}

# aggregated_api SERVICE NAMESPACE PORT GROUP: register a host process serving GROUP/v1beta1 on NODE_IP:PORT with the
# API server's aggregation layer: a selectorless Service whose Endpoints name this host's bridge address
# (--enable-aggregator-routing: the API server dials the endpoint, no Service network needed) and the APIService,
# its serving certificate verified against the node's CA. Waits until the APIService is Available.
aggregated_api() {
  local svc=$1 ns=$2 port=$3 group=$4
  kc apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Service
metadata: {name: $svc, namespace: $ns}
spec:
  ports: [{name: https, port: 443, targetPort: $port, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: $svc, namespace: $ns}
subsets:
  - addresses: [{ip: $NODE_IP}]
    ports: [{name: https, port: $port, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.$group}
spec:
  service: {name: $svc, namespace: $ns, port: 443}
  group: $group
  version: v1beta1
  caBundle: $(base64 -w0 < "$S/pki/ca.crt")
  groupPriorityMinimum: 100
  versionPriority: 100
EOF
  wait_for "the $group API (v1beta1.$group Available)" 90 \
    kc wait --for=condition=Available "apiservice/v1beta1.$group" --timeout=1s
}

# metrics-server as a host process, registered as v1beta1.metrics.k8s.io. Its serving certificate and the
# kubelet's come from the node's CA, both verified. It reads the kubelet's /metrics/resource with the admin
# credentials and checks the API server's proxied requests against the requestheader CA (published in
# extension-apiserver-authentication).
metrics_server() {
  start metrics-server "$bin/metrics-server" --secure-port="$MS_PORT" --bind-address="$NODE_IP" \
    --tls-cert-file="$S/pki/metrics-server.crt" --tls-private-key-file="$S/pki/metrics-server.key" \
    --kubeconfig="$S/admin.kubeconfig" \
    --authentication-kubeconfig="$S/admin.kubeconfig" --authorization-kubeconfig="$S/admin.kubeconfig" \
    --kubelet-certificate-authority="$S/pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --kubelet-use-node-status-port \
    --metric-resolution=15s
  aggregated_api metrics-server kube-system "$MS_PORT" metrics.k8s.io
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

up() {
  need_root
  local d p t0=$SECONDS
  for d in "${DAEMONS[@]}"; do alive "$d" && die "$d is already running (pid $(cat "$S/pids/$d.pid")): down first"; done
  for p in "$ETCD_PORT" "$ETCD_PEER_PORT" "$API_PORT" "$KUBELET_PORT" "$KUBELET_HEALTHZ_PORT" \
           "$PROXY_METRICS_PORT" "$PROXY_HEALTHZ_PORT" "$CM_PORT" "$SCHED_PORT" "$MS_PORT" "$KEDA_API_PORT" \
           "$KEDA_GRPC_PORT" "$KEDA_OPERATOR_METRICS_PORT" "$KEDA_OPERATOR_HEALTH_PORT" "$KEDA_ADAPTER_METRICS_PORT"; do
    port_free "$p" || die "port $p is in use (set K8S_PORT_BASE)"
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && die "a $BRIDGE bridge already exists: down first, or someone else's"
  build
  packages
  rm -rf "${S:?}"/{pki,pids,saved,etcd,containerd,kubelet,cni,pod-logs,keda}
  mkdir -p "$S/pids" "$S/logs" "$S/saved"
  rm -f "$S"/logs/*.log
  local s
  for s in "${KUBELET_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done > "$S/saved/sysctl"
  cni_netns > "$S/saved/netns"
  # paths the daemons create outside the state dir whatever they are told; down removes the ones that
  # were not there before (/run/netns only when empty)
  for s in "${OUTSIDE_PATHS[@]}" /run/netns; do [ -e "$s" ] && echo "$s"; done > "$S/saved/paths"
  pki
  configs
  # the bridge, its address, and the rule that keeps pod traffic on this machine
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT

  start etcd etcd --name embedstream --data-dir "$S/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "embedstream=http://127.0.0.1:$ETCD_PEER_PORT"
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  start kube-apiserver "$bin/kube-apiserver" --advertise-address="$NODE_IP" --bind-address="$NODE_IP" \
    --secure-port="$API_PORT" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
    --service-cluster-ip-range="$SERVICE_CIDR" --client-ca-file="$S/pki/ca.crt" \
    --tls-cert-file="$S/pki/apiserver.crt" --tls-private-key-file="$S/pki/apiserver.key" \
    --kubelet-client-certificate="$S/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$S/pki/apiserver-kubelet-client.key" --kubelet-certificate-authority="$S/pki/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-key-file="$S/pki/sa.pub" --service-account-signing-key-file="$S/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
    --requestheader-client-ca-file="$S/pki/ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$S/pki/front-proxy-client.crt" --proxy-client-key-file="$S/pki/front-proxy-client.key" \
    --enable-aggregator-routing=true --profiling=false
  wait_for kube-apiserver 120 api_ready

  start kube-controller-manager "$bin/kube-controller-manager" --kubeconfig="$S/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$S/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$S/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$CM_PORT" --leader-elect=false \
    --cluster-signing-cert-file="$S/pki/ca.crt" --cluster-signing-key-file="$S/pki/ca.key" \
    --root-ca-file="$S/pki/ca.crt" --service-account-private-key-file="$S/pki/sa.key" \
    --use-service-account-credentials=true --cluster-cidr="$POD_CIDR" --service-cluster-ip-range="$SERVICE_CIDR" \
    --profiling=false
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$S/scheduler.kubeconfig" \
    --authentication-kubeconfig="$S/scheduler.kubeconfig" --authorization-kubeconfig="$S/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$SCHED_PORT" --leader-elect=false --profiling=false

  start containerd containerd --config "$S/containerd/config.toml"
  wait_for containerd 30 ctr --address "$(sock)" version
  ctr_ images import "$(pause_archive)" >&2

  start kubelet "$bin/kubelet" --config="$S/kubelet/config.yaml" --kubeconfig="$S/kubelet.kubeconfig" \
    --root-dir="$S/kubelet" --cert-dir="$S/kubelet/pki" --hostname-override="$NODE" --node-ip="$NODE_IP"
  start kube-proxy "$bin/kube-proxy" --config="$S/kube-proxy.yaml"

  wait_for "node $NODE" 120 kc wait --for=condition=Ready "node/$NODE" --timeout=1s
  # Run under `taskset -c LIST`, the pods get that cpuset too (the daemons inherit the affinity, but a task
  # that joins a cpuset cgroup takes the cgroup's CPUs): the pods' cgroups copy it from kubepods.
  local cpus all
  cpus=$(awk '/^Cpus_allowed_list/{print $2}' /proc/self/status)
  all=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || true)
  if [ -n "$all" ] && [ "$cpus" != "$all" ] && [ -d /sys/fs/cgroup/cpuset/kubepods ]; then
    find /sys/fs/cgroup/cpuset/kubepods -depth -type d | while read -r d; do echo "$cpus" > "$d/cpuset.cpus"; done
    say "pods' cpuset: $cpus (this script's CPU affinity; the machine has $all)"
  fi
  # kube-proxy inserts its FORWARD jumps above ours (KUBE-FORWARD accepts marked packets): ours first again
  # (kube-proxy only re-adds its jumps when they are missing, so this order holds)
  iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT
  iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT
  # pods are refused until the controller-manager has made the namespace's service account
  wait_for "service account default/default" 60 kc -n default get serviceaccount default
  metrics_server
  keda_up
  say "up in $((SECONDS - t0))s; export KUBECONFIG=$S/admin.kubeconfig"
  kc get nodes -o wide >&2
}

# --- down --------------------------------------------------------------------------------------------------
stop_pid() {  # name [seconds]
  local name=$1 secs=${2:-20} p i
  p=$(cat "$S/pids/$name.pid" 2>/dev/null) || return 0
  if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
    kill -TERM "$p" 2>/dev/null || true
    for ((i = 0; i < secs * 5; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$p" 2>/dev/null; then say "$name (pid $p) ignored SIGTERM: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
    say "stopped $name (pid $p)"
  fi
  rm -f "$S/pids/$name.pid"
}

our_shims() {  # containerd shims started by our containerd (its socket path is in their command line)
  local d
  for d in /proc/[0-9]*; do
    { tr '\0' ' ' < "$d/cmdline"; } 2>/dev/null | grep -q "containerd-shim.*-address $(sock) " && echo "${d#/proc/}"
  done
  return 0
}

cni_netns() { local f; for f in /var/run/netns/cni-*; do [ -e "$f" ] && basename "$f"; done; return 0; }
kubepods_cgroups() { find /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods -depth -type d 2>/dev/null || true; }

remove_iptables() {
  local ipt t chain
  while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "$COMMENT" -j REJECT 2>/dev/null; do :; done
  if [ -x "$bin/kube-proxy" ]; then "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  # what kube-proxy --cleanup leaves: the kubelet's KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY, KUBE-FIREWALL...
  for ipt in iptables ip6tables; do
    for t in filter nat mangle raw; do
      for chain in $("$ipt" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$t" -S 2>/dev/null | awk -v c="$chain" '$1 == "-A" && / -j / { for (i = 1; i <= NF; i++) if ($i == "-j" && $(i+1) == c) print }' |
          while read -r rule; do
            # shellcheck disable=SC2086  # a rule as iptables -S prints it, split on spaces on purpose
            "$ipt" -t "$t" -D ${rule#-A } 2>/dev/null || true
          done
      done
      for chain in $("$ipt" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$t" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$ipt" -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ {print $2}'); do
        "$ipt" -t "$t" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

down() {
  need_root
  local t0=$SECONDS p n d m
  # 1. no new pods, then every pod deleted through the kubelet (graceful: SIGTERM, grace period)
  stop_pid kube-controller-manager; stop_pid kube-scheduler; stop_pid metrics-server
  stop_pid keda-adapter; stop_pid keda-operator
  if alive kube-apiserver && alive kubelet; then
    say "deleting every pod"
    kc delete pods --all --all-namespaces --wait=true --timeout=90s >&2 || say "some pods did not go in 90s"
  fi
  stop_pid kube-proxy; stop_pid kubelet
  # 2. whatever containers remain, then containerd and its shims
  if alive containerd; then
    for n in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$n" >/dev/null 2>&1 || true; done
    sleep 1
    for n in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks rm -f "$n" >/dev/null 2>&1 || true; done
    for n in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers rm "$n" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  for p in $(our_shims); do say "killing leftover shim $p"; kill -KILL "$p" 2>/dev/null || true; done
  # 3. processes still in the pods' cgroups (none after the above, unless a shim died first)
  for d in $(kubepods_cgroups); do
    [ -f "$d/cgroup.procs" ] || continue
    while read -r p; do say "killing leftover pod process $p"; kill -KILL "$p" 2>/dev/null || true; done < "$d/cgroup.procs"
  done
  stop_pid kube-apiserver; stop_pid etcd
  # 4. mounts under the state dir (rootfs overlays, sandbox shm, pod volumes), deepest first
  for m in $(findmnt -rn -o TARGET | grep "^$S/" | sort -r); do umount -l "$m" 2>/dev/null || say "could not unmount $m"; done
  # 5. network namespaces containerd made (cni-*) that were not there before up
  for n in $(cni_netns); do
    grep -qx "$n" "$S/saved/netns" 2>/dev/null || { ip netns delete "$n" 2>/dev/null || umount -l "/var/run/netns/$n" 2>/dev/null; rm -f "/var/run/netns/$n"; }
  done
  # 6. cgroups, deepest first (a cgroup v1 directory goes with rmdir once it has no process)
  sleep 0.5
  for d in $(kubepods_cgroups); do rmdir "$d" 2>/dev/null || say "could not remove cgroup $d"; done
  # 7. iptables, the bridge, sysctls
  remove_iptables
  keda_remove_iptables
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
  if [ -f "$S/saved/sysctl" ]; then
    while IFS= read -r kv; do sysctl -q -w "$kv" >/dev/null || say "could not restore $kv"; done < "$S/saved/sysctl"
  fi
  if [ -f "$S/saved/paths" ]; then
    for p in "${OUTSIDE_PATHS[@]}"; do grep -qx "$p" "$S/saved/paths" || rm -rf "$p"; done
    grep -qx /run/netns "$S/saved/paths" || rmdir /run/netns 2>/dev/null || true
  fi
  rm -rf "${S:?}"/{pki,pids,saved,etcd,containerd,kubelet,cni,pod-logs,keda} "$S"/*.kubeconfig "$S"/*.yaml
  say "down in $((SECONDS - t0))s (logs kept in $S/logs)"
}

# --- status ------------------------------------------------------------------------------------------------
status() {
  local d left=0 p
  for d in "${DAEMONS[@]}"; do
    if alive "$d"; then echo "$d: running (pid $(cat "$S/pids/$d.pid"))"; left=1; else echo "$d: not running"; fi
  done
  p=$(our_shims | tr '\n' ' '); [ -n "$p" ] && { echo "containerd shims: $p"; left=1; }
  p=$(kubepods_cgroups | wc -l); echo "kubepods cgroups: $p"; [ "$p" = 0 ] || left=1
  p=$(findmnt -rn -o TARGET | grep -c "^$S/" || true); echo "mounts under $S: $p"; [ "$p" = 0 ] || left=1
  if ip link show "$BRIDGE" >/dev/null 2>&1; then echo "bridge $BRIDGE: present"; left=1; else echo "bridge $BRIDGE: absent"; fi
  p=$( { iptables-save; ip6tables-save; } 2>/dev/null | grep -cE "KUBE-|CNI-|$COMMENT" || true)
  echo "iptables lines with KUBE-/CNI-/$COMMENT: $p"; [ "$p" = 0 ] || left=1
  p=$(cni_netns | wc -l); echo "cni-* network namespaces: $p"
  if alive kube-apiserver; then kc get nodes -o wide; kc get pods -A -o wide; fi
  [ "$left" = 0 ] && echo "nothing of the node is left"
  return 0
}

case "${1:-}" in
  build) build ;;
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$S/admin.kubeconfig" ;;
  ctr) shift; ctr_ "$@" ;;
  *) echo "usage: $0 build|up|down|status|env|ctr ARGS..." >&2; exit 2 ;;
esac

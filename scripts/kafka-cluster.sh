#!/usr/bin/env bash
# A real three-node Apache Kafka 4.x cluster (KRaft, every node broker+controller, static quorum of 3) from the
# same Maven jars as scripts/kafka-local.sh, for the cluster fault suite (tests/cluster). Replication factor 3
# and min.insync.replicas=2 are the defaults for every topic, the offsets topic and the transaction log.
#
# Two network modes (KAFKA_CLUSTER_NET):
#   netns     (default when root can create network namespaces) every node runs in its own namespace
#             PREFIXk1..3 with a veth on the bridge PREFIXbr; the host is SUBNET.1, node N is SUBNET.1N.
#             Partitions are iptables rules inside a node's namespace, so nothing on the host changes.
#   loopback  every node on 127.0.0.1 (its own port); no partitions, kill/restart faults only.
#
#   scripts/kafka-cluster.sh start          network (netns mode), format storage once, start 3 nodes, wait
#   scripts/kafka-cluster.sh stop           stop the nodes (SIGTERM, then SIGKILL after 30 s), remove the network
#   scripts/kafka-cluster.sh wipe           stop and delete the data
#   scripts/kafka-cluster.sh status         exit 0 when all three run
#   scripts/kafka-cluster.sh bootstrap      print the bootstrap servers
#   scripts/kafka-cluster.sh kill N         SIGKILL node N (1..3)
#   scripts/kafka-cluster.sh stop-node N    SIGTERM node N and wait
#   scripts/kafka-cluster.sh start-node N   start node N again (same data) and wait until it answers
#   scripts/kafka-cluster.sh isolate N      netns: drop all traffic between node N and the other two nodes
#   scripts/kafka-cluster.sh heal N         netns: remove node N's drop rules
#   scripts/kafka-cluster.sh log-dir N PATH node N stopped: move its log directory (partitions and metadata log)
#                                           to PATH, an empty directory such as a small mount for a disk-full
#                                           test, and keep it there (start, start-node); PATH `default` moves it
#                                           back to DIR/nN/data; without PATH print where it is
#
# Environment (all optional):
#   KAFKA_CLUSTER_PORT     node 1's client port (default 39092); node N uses PORT+2(N-1), its controller +1
#   KAFKA_CLUSTER_DIR      data, logs, PID files (default .kafka-local/cluster beside this repo's root)
#   KAFKA_CLUSTER_NET      netns | loopback (default: netns when `ip netns` works, else loopback)
#   KAFKA_CLUSTER_PREFIX   name prefix of the namespaces, bridge and veths (default es17-, at most 6 chars)
#   KAFKA_CLUSTER_SUBNET   first three octets of the private /24 (default 10.217.0)
#   KAFKA_LOCAL_CACHE      jar cache, as for kafka-local.sh
#   KAFKA_CLUSTER_HEAP     JVM heap per node (default -Xms192m -Xmx512m)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
pom="$here/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
base="${KAFKA_CLUSTER_PORT:-39092}"
dir="${KAFKA_CLUSTER_DIR:-$root/.kafka-local/cluster}"
cache="${KAFKA_LOCAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/kafka-$version}"
prefix="${KAFKA_CLUSTER_PREFIX:-es17-}"
subnet="${KAFKA_CLUSTER_SUBNET:-10.217.0}"
bridge="${prefix}br"

log() { echo "kafka-cluster: $*" >&2; }

netns_usable() {
  [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v iptables >/dev/null || return 1
  local probe="${prefix}probe$$"
  ip netns add "$probe" 2>/dev/null || return 1
  ip netns del "$probe"
}

if [ -f "$dir/net" ]; then net="$(cat "$dir/net")"  # the mode the running cluster was started in
elif [ -n "${KAFKA_CLUSTER_NET:-}" ]; then net="$KAFKA_CLUSTER_NET"
elif netns_usable; then net=netns
else net=loopback; fi

port() { echo $((base + 2 * ($1 - 1))); }
host() { if [ "$net" = netns ]; then echo "$subnet.1$1"; else echo 127.0.0.1; fi; }
ns() { echo "${prefix}k$1"; }
pidfile() { echo "$dir/n$1/kafka.pid"; }
logdir() { if [ -s "$dir/n$1/log-dir" ]; then cat "$dir/n$1/log-dir"; else echo "$dir/n$1/data"; fi; }
running() { local f; f="$(pidfile "$1")"; [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
port_open() { (exec 3<>"/dev/tcp/$(host "$1")/$(port "$1")") 2>/dev/null; }
bootstrap() { echo "$(host 1):$(port 1),$(host 2):$(port 2),$(host 3):$(port 3)"; }

fetch_jars() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  log "fetching Apache Kafka $version jars from Maven Central into $cache"
  mkdir -p "$cache"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$cache/libs" >&2
  touch "$cache/.complete"
}

net_up() {
  [ "$net" = netns ] || return 0
  if ! ip link show "$bridge" >/dev/null 2>&1; then
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
  fi
  local n
  for n in 1 2 3; do
    ip netns list | grep -qw "$(ns "$n")" && continue
    ip netns add "$(ns "$n")"
    ip link add "${prefix}k${n}h" type veth peer name eth0 netns "$(ns "$n")"
    ip link set "${prefix}k${n}h" master "$bridge" up
    ip -n "$(ns "$n")" addr add "$(host "$n")/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up
    ip -n "$(ns "$n")" link set lo up
    ip -n "$(ns "$n")" route add default via "$subnet.1"
  done
}

net_down() {
  [ "$net" = netns ] || return 0
  local n
  for n in 1 2 3; do
    ip netns del "$(ns "$n")" 2>/dev/null || true
    ip link del "${prefix}k${n}h" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}

write_config() {
  local n="$1" voters="" m
  for m in 1 2 3; do voters="$voters${voters:+,}$m@$(host "$m"):$(( $(port "$m") + 1 ))"; done
  mkdir -p "$dir/n$n" "$(logdir "$n")"
  cat > "$dir/n$n/server.properties" <<EOF
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=PLAINTEXT://$(host "$n"):$(port "$n"),CONTROLLER://$(host "$n"):$(( $(port "$n") + 1 ))
advertised.listeners=PLAINTEXT://$(host "$n"):$(port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$(logdir "$n")
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
replica.lag.time.max.ms=10000
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=4
log.segment.bytes=268435456
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
}

launch() {
  local n="$1" cp="$cache/libs/*" run=()
  if running "$n"; then return 0; fi
  if [ "$net" = netns ]; then run=(ip netns exec "$(ns "$n")"); fi
  : > "$dir/n$n/server.log"
  # setsid: its own session, so a test's signal to its process group never reaches a node; `ip netns exec`
  # and setsid both exec, so $! is the JVM's PID.
  # shellcheck disable=SC2086
  setsid "${run[@]}" java ${KAFKA_CLUSTER_HEAP:--Xms192m -Xmx512m} -XX:+UseG1GC -XX:TieredStopAtLevel=1 \
    -Djava.awt.headless=true -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info \
    -cp "$cp" kafka.Kafka "$dir/n$n/server.properties" >>"$dir/n$n/server.log" 2>&1 </dev/null &
  echo $! > "$(pidfile "$n")"
}

wait_up() {
  local n="$1" waited=0
  until port_open "$n" && grep -q "Kafka Server started" "$dir/n$n/server.log" 2>/dev/null; do
    if ! running "$n"; then log "node $n exited during start-up:"; tail -n 30 "$dir/n$n/server.log" >&2; return 1; fi
    if [ "$waited" -ge 180 ]; then log "node $n did not answer within 180 s; see $dir/n$n/server.log"; return 1; fi
    sleep 1; waited=$((waited + 1))
  done
}

start() {
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  fetch_jars
  mkdir -p "$dir"
  echo "$net" > "$dir/net"
  net_up
  local n id cp="$cache/libs/*"
  for n in 1 2 3; do
    if ! running "$n" && port_open "$n"; then log "$(host "$n"):$(port "$n") is taken; set KAFKA_CLUSTER_PORT"; exit 1; fi
    write_config "$n"
  done
  if [ ! -f "$(logdir 1)/meta.properties" ]; then
    id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    for n in 1 2 3; do
      java -cp "$cp" kafka.tools.StorageTool format -t "$id" -c "$dir/n$n/server.properties" \
        >"$dir/n$n/format.log" 2>&1 || { cat "$dir/n$n/format.log" >&2; exit 1; }
    done
  fi
  for n in 1 2 3; do launch "$n"; done  # all at once: a node waits for a quorum of controllers
  for n in 1 2 3; do wait_up "$n" || { stop; exit 1; }; done
  log "Apache Kafka $version: 3 nodes ($net) at $(bootstrap)"
}

stop_node() {
  local n="$1" sig="${2:-TERM}" f pid
  f="$(pidfile "$n")"
  if ! running "$n"; then rm -f "$f"; return 0; fi
  pid="$(cat "$f")"
  kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "node $n did not stop in 30 s; killing pid $pid"; kill -KILL "$pid" || true; fi
  rm -f "$f"
}

stop() {
  local n
  for n in 1 2 3; do running "$n" && kill -TERM "$(cat "$(pidfile "$n")")" 2>/dev/null || true; done
  for n in 1 2 3; do stop_node "$n"; done
  if [ -f "$dir/net" ]; then net_down; fi  # only the network this directory's cluster set up
  rm -f "$dir/net"
  log "stopped"
}

rules() {  # rules ACTION N: add (-A) or delete (-D) the drops between node N and the other two
  local act="$1" n="$2" m
  [ "$net" = netns ] || { log "isolate/heal need the netns mode"; exit 1; }
  for m in 1 2 3; do
    [ "$m" = "$n" ] && continue
    ip netns exec "$(ns "$n")" iptables "$act" INPUT -s "$(host "$m")" -j DROP 2>/dev/null || true
    ip netns exec "$(ns "$n")" iptables "$act" OUTPUT -d "$(host "$m")" -j DROP 2>/dev/null || true
  done
}

move_log_dir() {  # move_log_dir N [PATH]: node N's log directory to PATH (default: back to DIR/nN/data)
  local n="$1" to="$2" from
  if [ "$to" = default ]; then to="$dir/n$n/data"; fi
  if running "$n"; then log "stop node $n before moving its log directory"; exit 1; fi
  from="$(logdir "$n")"
  to="$(mkdir -p "$to" && cd "$to" && pwd)"
  if [ "$from" != "$to" ]; then
    if find "$to" -mindepth 1 -maxdepth 1 ! -name lost+found | grep -q .; then log "$to is not empty"; exit 1; fi
    if [ -d "$from" ]; then cp -a "$from/." "$to/" && find "$from" -mindepth 1 -delete; fi
  fi
  if [ "$to" = "$dir/n$n/data" ]; then rm -f "$dir/n$n/log-dir"; else echo "$to" > "$dir/n$n/log-dir"; fi
  write_config "$n"
  log "node $n log directory: $to"
}

node_arg() { case "${1:-}" in 1|2|3) ;; *) echo "node must be 1, 2 or 3" >&2; exit 2 ;; esac; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  wipe) stop; for n in 1 2 3; do if [ -s "$dir/n$n/log-dir" ]; then find "$(logdir "$n")" -mindepth 1 -delete; fi; done
        rm -rf "$dir" ;;
  status) for n in 1 2 3; do running "$n" || { echo "node $n stopped"; exit 1; }; done; echo "running $net $(bootstrap)" ;;
  bootstrap) bootstrap ;;
  kill) node_arg "${2:-}"; stop_node "$2" KILL; log "node $2 killed" ;;
  stop-node) node_arg "${2:-}"; stop_node "$2"; log "node $2 stopped" ;;
  start-node) node_arg "${2:-}"; launch "$2"; wait_up "$2"; log "node $2 started" ;;
  isolate) node_arg "${2:-}"; rules -D "$2"; rules -A "$2"; log "node $2 isolated from the other nodes" ;;
  heal) node_arg "${2:-}"; rules -D "$2"; rules -D "$2"; log "node $2 healed" ;;
  log-dir) node_arg "${2:-}"; if [ $# -ge 3 ]; then move_log_dir "$2" "$3"; fi; logdir "$2" ;;
  *) echo "usage: $0 start|stop|wipe|status|bootstrap|kill N|stop-node N|start-node N|isolate N|heal N|log-dir N [PATH]" >&2; exit 2 ;;
esac

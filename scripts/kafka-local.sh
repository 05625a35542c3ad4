#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, broker+controller) on 127.0.0.1, run from the
# jars Maven fetches from Maven Central: no tarball, no Docker.
#
#   scripts/kafka-local.sh start    fetch jars (cached), format storage once, start, wait until it answers
#   scripts/kafka-local.sh stop     stop the broker this script started (by its PID file)
#   scripts/kafka-local.sh restart  stop then start, keeping the data (used by the fault tests)
#   scripts/kafka-local.sh status   exit 0 when running
#   scripts/kafka-local.sh wipe     stop and delete the data directory
#
# Environment (all optional):
#   KAFKA_LOCAL_PORT        client port (default 9092); the controller uses PORT+1
#   KAFKA_LOCAL_DIR         data, logs and PID file (default .kafka-local beside this repo's root)
#   KAFKA_LOCAL_LOG_DIR     the broker's log directory (log.dirs: partitions and the metadata log), e.g. a small
#                           mount for a disk-full test (default KAFKA_LOCAL_DIR/data); set it for every command
#   KAFKA_LOCAL_CACHE       where the jars are cached between runs (default ~/.cache/embedstream/kafka-VERSION)
#   KAFKA_LOCAL_EXTRA_PROPS a file whose lines are appended to server.properties; a key set there
#                           overrides the default above it (the last occurrence of a key wins)
#   KAFKA_LOCAL_EXTRA_LISTENERS
#                           comma-separated extra listeners NAME://127.0.0.1:PORT, added to listeners and
#                           advertised.listeners; a NAME that is a security protocol (SSL, SASL_SSL,
#                           SASL_PLAINTEXT) is mapped to itself, any other NAME needs its own
#                           listener.security.protocol.map line in KAFKA_LOCAL_EXTRA_PROPS. Their ssl.* and
#                           sasl.* settings go in KAFKA_LOCAL_EXTRA_PROPS too.
#   KAFKA_LOCAL_SCRAM_FILE  a file of SCRAM credentials, one MECHANISM=[name=USER,password=PASSWORD] a line,
#                           created when the storage is formatted (StorageTool format --add-scram), so a
#                           SASL/SCRAM listener has users from the first start
#   KAFKA_LOCAL_HEAP        JVM heap (default -Xms256m -Xmx1g)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
pom="$here/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
port="${KAFKA_LOCAL_PORT:-9092}"
cport="$((port + 1))"
dir="${KAFKA_LOCAL_DIR:-$root/.kafka-local}"
cache="${KAFKA_LOCAL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/kafka-$version}"
logdir="${KAFKA_LOCAL_LOG_DIR:-$dir/data}"
pidfile="$dir/kafka.pid"
log="$dir/server.log"

log() { echo "kafka-local: $*" >&2; }

fetch_jars() {
  if [ -f "$cache/.complete" ]; then return 0; fi
  log "fetching Apache Kafka $version jars from Maven Central into $cache"
  mkdir -p "$cache"
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$cache/libs" >&2
  touch "$cache/.complete"
}

write_config() {
  mkdir -p "$dir" "$logdir"
  local listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  local extra name l
  if [ -n "${KAFKA_LOCAL_EXTRA_LISTENERS:-}" ]; then
    IFS=',' read -ra extra <<< "$KAFKA_LOCAL_EXTRA_LISTENERS"
    for l in "${extra[@]}"; do
      l="${l// /}"
      [ -n "$l" ] || continue
      name="${l%%://*}"
      listeners="$listeners,$l"
      case "$name" in
        SSL|SASL_SSL|SASL_PLAINTEXT) protocols="$protocols,$name:$name" ;;
      esac
    done
  fi
  cat > "$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=$listeners
advertised.listeners=$listeners
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protocols
log.dirs=$logdir
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=4
log.segment.bytes=268435456
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
  if [ -n "${KAFKA_LOCAL_EXTRA_PROPS:-}" ]; then cat "$KAFKA_LOCAL_EXTRA_PROPS" >> "$dir/server.properties"; fi
}

running() { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

start() {
  if running; then log "already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"; return 0; fi
  command -v java >/dev/null || { log "java not found: install a JDK 17+"; exit 1; }
  command -v mvn >/dev/null || [ -f "$cache/.complete" ] || { log "mvn not found: install Maven"; exit 1; }
  if port_open; then log "127.0.0.1:$port is taken by another process; set KAFKA_LOCAL_PORT"; exit 1; fi
  fetch_jars
  write_config
  local cp="$cache/libs/*"
  if [ ! -f "$logdir/meta.properties" ]; then
    local id
    id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)"
    local scram=() line
    if [ -n "${KAFKA_LOCAL_SCRAM_FILE:-}" ]; then
      while IFS= read -r line || [ -n "$line" ]; do
        if [ -n "${line// /}" ]; then scram+=(--add-scram "$line"); fi
      done < "$KAFKA_LOCAL_SCRAM_FILE"
    fi
    # format.log does not echo the --add-scram arguments (they hold passwords); a local test broker only.
    java -cp "$cp" kafka.tools.StorageTool format --standalone -t "$id" \
      -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 \
      || { cat "$dir/format.log" >&2; exit 1; }
  fi
  : > "$log"
  # setsid: the broker gets its own session so a test's signal to its process group never reaches it.
  # shellcheck disable=SC2086
  setsid java ${KAFKA_LOCAL_HEAP:--Xms256m -Xmx1g} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info \
    -cp "$cp" kafka.Kafka "$dir/server.properties" >>"$log" 2>&1 </dev/null &
  echo $! > "$pidfile"
  local waited=0
  until port_open && grep -q "Kafka Server started" "$log" 2>/dev/null; do
    if ! running; then log "broker exited during start-up; last lines of $log:"; tail -n 30 "$log" >&2; exit 1; fi
    if [ "$waited" -ge 120 ]; then log "broker did not answer within 120 s; see $log"; stop; exit 1; fi
    sleep 1; waited=$((waited + 1))
  done
  log "Apache Kafka $version running on 127.0.0.1:$port (pid $(cat "$pidfile"), ${waited}s)"
}

stop() {
  if ! running; then rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then log "broker did not stop in 30 s; killing pid $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidfile"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "running pid $(cat "$pidfile") 127.0.0.1:$port"; else echo "stopped"; exit 1; fi ;;
  wipe) stop; rm -rf "$dir"; if [ -n "${KAFKA_LOCAL_LOG_DIR:-}" ]; then find "$logdir" -mindepth 1 -delete; fi ;;
  *) echo "usage: $0 start|stop|restart|status|wipe" >&2; exit 2 ;;
esac

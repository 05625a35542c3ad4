#!/usr/bin/env bash
# The local sink stack for issue 20: a schema registry (Apicurio Registry), PostgreSQL with pgvector, and
# Kafka Connect standalone with the Debezium JDBC sink, all on 127.0.0.1, from packages that Maven Central
# and PyPI serve: no tarball from elsewhere, no Docker. The broker is not started here: Connect talks to
# KAFKA_BOOTSTRAP_SERVERS (scripts/kafka-local.sh starts one).
#
#   scripts/sink-stack.sh fetch    download and cache everything once (idempotent)
#   scripts/sink-stack.sh start    fetch, then start PostgreSQL, the registry and Connect; wait until each answers
#   scripts/sink-stack.sh stop     stop what start started, by the PIDs it recorded
#   scripts/sink-stack.sh status   one line per service; exit 0 when all three run
#   scripts/sink-stack.sh wipe     stop and delete the run directory (PostgreSQL's data, logs, Connect offsets)
#
# Exit codes: 0 ok; 1 a service failed to start (its log's last lines are printed); 2 usage;
# 3 a download was refused or failed (one line with the client's error), so a caller can tell "cannot be
# fetched here" from "broken".
#
# What runs:
#   Apicurio Registry 3.3.3 (io.apicurio:apicurio-registry-app:tar.gz:all, a Quarkus app; Java 21+), in-memory
#     storage; Confluent-compatible API at http://127.0.0.1:PORT/apis/ccompat/v7, its own at /apis/registry/v2|v3.
#   PostgreSQL 16.2 + pgvector 0.6.2 from the PyPI wheel `pgserver` (binaries only; its Python code is not used),
#     run as an unprivileged user (PostgreSQL refuses root), trust auth on 127.0.0.1, database `postgres`,
#     user `postgres`, extension `vector` created.
#   Kafka Connect standalone (org.apache.kafka:connect-runtime + connect-json, the broker's Kafka version), with
#     plugin.path holding the Debezium JDBC sink (io.debezium:debezium-connector-jdbc:tar.gz:plugin, bundles the
#     PostgreSQL driver) and Apicurio's Connect converters (io.apicurio:apicurio-registry-utils-converter).
#
# Environment (all optional):
#   KAFKA_BOOTSTRAP_SERVERS     broker for Connect (default 127.0.0.1:9092)
#   SINK_STACK_CACHE            downloads (default ~/.cache/embedstream/sink)
#   SINK_STACK_DIR              run directory: PIDs, logs, PostgreSQL data (default .sink-stack beside the repo root)
#   SINK_REGISTRY_PORT          registry HTTP (default 18081); SINK_REGISTRY_MGMT_PORT health (default 19000)
#   SINK_CONNECT_PORT           Connect REST (default 18083)
#   SINK_PG_PORT                PostgreSQL (default 15433)
#   SINK_PG_OS_USER             the unprivileged user PostgreSQL runs as when this script runs as root (default nobody)
#   SINK_JAVA21_HOME            a JDK 21+ for the registry (default: the newest 21+ under /usr/lib/jvm)
#   SINK_STACK_M2_REPO          a Maven local repository other than ~/.m2/repository (e.g. to time a fetch from empty)
#   SINK_STACK_SERVICES         which to start (default "postgres registry connect")
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
kafka_version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")"
apicurio_version=3.3.3
debezium_version=3.6.0.Final
# 3.x converter jars are not served by Maven Central (only their poms); 2.6's resolve, and talk to the
# registry's v2 API, which Apicurio 3 still serves.
converter_version=2.6.13.Final
pgserver_version=0.1.4

cache="${SINK_STACK_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/sink}"
dir="${SINK_STACK_DIR:-$root/.sink-stack}"
registry_port="${SINK_REGISTRY_PORT:-18081}"
mgmt_port="${SINK_REGISTRY_MGMT_PORT:-19000}"
connect_port="${SINK_CONNECT_PORT:-18083}"
pg_port="${SINK_PG_PORT:-15433}"
bootstrap="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"
services="${SINK_STACK_SERVICES:-postgres registry connect}"

connect_libs="$cache/connect-$kafka_version/libs"
plugins="$cache/plugins-$debezium_version-$converter_version"
registry_home="$cache/apicurio-registry-$apicurio_version"
pg_root="$cache/pgserver-$pgserver_version"  # the wheel's layout: binaries find their libs at $ORIGIN/../../../pgserver.libs
pg_home="$pg_root/pgserver/pginstall"

log() { echo "sink-stack: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------------- fetch

mvn_run() {  # LOGFILE ARGS... : one line with Maven's first [ERROR] when it fails
  local logf="$1"; shift
  local repo=()
  if [ -n "${SINK_STACK_M2_REPO:-}" ]; then repo=(-Dmaven.repo.local="$SINK_STACK_M2_REPO"); fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven"; exit 3; }
  if ! mvn -B -s "$here/sink/maven-settings.xml" "${repo[@]}" "$@" >"$logf" 2>&1; then
    local err
    err="$(sed 's/\x1b\[[0-9;]*m//g' "$logf" | grep -m1 '\[ERROR\]' || true)"
    log "Maven download failed: ${err:-see $logf}"
    exit 3
  fi
}

mvn_copy() {  # G:A:V:TYPE:CLASSIFIER DEST_DIR
  mkdir -p "$2"
  mvn_run "$cache/fetch.log" -f "$here/sink/connect-pom.xml" dependency:copy -Dartifact="$1" -DoutputDirectory="$2"
}

fetch_connect() {
  [ -f "$connect_libs/.complete" ] && return 0
  log "fetching Kafka Connect $kafka_version jars into $connect_libs"
  rm -rf "$connect_libs"
  mvn_run "$cache/fetch.log" -f "$here/sink/connect-pom.xml" dependency:copy-dependencies -Dkafka.version="$kafka_version" \
    -DincludeScope=runtime -DoutputDirectory="$connect_libs"
  touch "$connect_libs/.complete"
}

fetch_plugins() {
  [ -f "$plugins/.complete" ] && return 0
  log "fetching the Debezium JDBC sink $debezium_version and Apicurio's converters $converter_version into $plugins"
  rm -rf "$plugins" "$cache/dl/debezium"
  mvn_copy "io.debezium:debezium-connector-jdbc:$debezium_version:tar.gz:plugin" "$cache/dl/debezium"
  mkdir -p "$plugins"
  tar -xzf "$cache/dl/debezium/"debezium-connector-jdbc-*.tar.gz -C "$plugins"
  [ -d "$plugins/debezium-connector-jdbc" ] || { log "unexpected layout in the Debezium tarball"; exit 3; }
  # Connect provides Kafka's own jars and slf4j to every plugin: leave them out of the converter's folder.
  mvn_run "$cache/fetch.log" -f "$here/sink/apicurio-converter-pom.xml" dependency:copy-dependencies \
    -Dapicurio.version="$converter_version" -DincludeScope=runtime -DexcludeGroupIds=org.apache.kafka,org.slf4j \
    -DoutputDirectory="$plugins/apicurio-converter"
  rm -rf "$cache/dl/debezium"
  touch "$plugins/.complete"
}

fetch_registry() {
  [ -f "$registry_home/.complete" ] && return 0
  log "fetching Apicurio Registry $apicurio_version into $registry_home"
  rm -rf "$registry_home" "$cache/dl/apicurio"
  mvn_copy "io.apicurio:apicurio-registry-app:$apicurio_version:tar.gz:all" "$cache/dl/apicurio"
  mkdir -p "$registry_home"
  tar -xzf "$cache/dl/apicurio/"apicurio-registry-app-*.tar.gz -C "$registry_home"
  local jar
  jar="$(find "$registry_home" -name quarkus-run.jar -print -quit)"
  [ -n "$jar" ] || { log "no quarkus-run.jar in the Apicurio tarball"; exit 3; }
  echo "${jar#"$registry_home"/}" > "$registry_home/.jar"
  rm -rf "$cache/dl/apicurio"
  touch "$registry_home/.complete"
}

fetch_postgres() {
  [ -f "$pg_root/.complete" ] && return 0
  log "fetching PostgreSQL + pgvector (PyPI pgserver $pgserver_version) into $pg_root"
  local py="${PYTHON:-python3}" dl="$cache/dl/pgserver" out
  rm -rf "${dl:?}" "${pg_root:?}"
  mkdir -p "$dl"
  # The wheel's binaries do not depend on the Python version; pin its tag so any python3 fetches the same one.
  if ! out="$("$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
      --platform "manylinux2014_$(uname -m)" "pgserver==$pgserver_version" -d "$dl" 2>&1)"; then
    log "pip download pgserver==$pgserver_version failed: $(echo "$out" | grep -m1 -iE 'error|no matching' || echo "$out" | tail -n1)"
    exit 3
  fi
  "$py" - "$dl" "$pg_root" <<'EOF'
import glob, sys, zipfile
(whl,) = glob.glob(sys.argv[1] + "/pgserver-*.whl")
with zipfile.ZipFile(whl) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("pgserver/pginstall/", "pgserver.libs/"))])
EOF
  chmod -R a+rX "${pg_root:?}"
  chmod a+x "${pg_home:?}"/bin/*
  [ -x "$pg_home/bin/postgres" ] && [ -f "$pg_home/share/postgresql/extension/vector.control" ] \
    || { log "the pgserver wheel has no postgres or no pgvector"; exit 3; }
  rm -rf "${dl:?}"
  touch "$pg_root/.complete"
}

fetch() {
  mkdir -p "$cache"
  local t0=$SECONDS
  fetch_postgres
  fetch_registry
  fetch_connect
  fetch_plugins
  log "fetched ($((SECONDS - t0)) s): $cache"
}

# ---------------------------------------------------------------------------------------------------- run

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pid_running() { [ -f "$dir/$1.pid" ] && kill -0 "$(cat "$dir/$1.pid")" 2>/dev/null; }

java21() {
  local j
  for j in "${SINK_JAVA21_HOME:-}" /usr/lib/jvm/*; do
    [ -n "$j" ] && [ -x "$j/bin/java" ] || continue
    local v
    v="$("$j/bin/java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')"
    if [ "${v%%.*}" -ge 21 ] 2>/dev/null; then echo "$j/bin/java"; return 0; fi
  done
  return 1
}

wait_until() {  # NAME LOG SECONDS COMMAND...
  local name="$1" logf="$2" limit="$3" waited=0; shift 3
  until "$@"; do
    if ! pid_running "$name"; then
      log "$name exited during start-up; last lines of $logf:"; tail -n 30 "$logf" >&2; return 1
    fi
    if [ "$waited" -ge "$limit" ]; then log "$name did not answer within $limit s; see $logf"; return 1; fi
    sleep 1; waited=$((waited + 1))
  done
}

pg_user() {
  if [ "$(id -u)" = 0 ]; then echo "${SINK_PG_OS_USER:-nobody}"; else id -un; fi
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$(pg_user)" -- "$@"; else "$@"; fi
}

pg_ready() { "$pg_home/bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U postgres; }

start_postgres() {
  if pid_running postgres; then log "postgres already running (pid $(cat "$dir/postgres.pid"))"; return 0; fi
  if port_open "$pg_port"; then die "127.0.0.1:$pg_port is taken by another process; set SINK_PG_PORT"; fi
  # The server runs as an unprivileged user: it needs its binaries and data on paths that user can walk.
  # The cache may sit under a private home (/root), so the run directory gets hard links to the binaries.
  local inst="$dir/pg/install/pgserver/pginstall" data="$dir/pg/data"
  if [ ! -f "$dir/pg/install/.complete" ]; then
    rm -rf "${dir:?}/pg/install"; mkdir -p "$dir/pg"
    cp -al "$pg_root" "$dir/pg/install" 2>/dev/null || cp -a "$pg_root" "$dir/pg/install"
  fi
  chmod a+rx "$dir" "$dir/pg"
  if ! as_pg test -x "$inst/bin/postgres"; then
    die "user $(pg_user) cannot reach $inst (a parent directory is private); set SINK_STACK_DIR to a world-readable path"
  fi
  if [ ! -f "$data/PG_VERSION" ]; then
    rm -rf "$data"; mkdir -p "$data"; chown "$(pg_user)" "$data" 2>/dev/null || true; chmod 700 "$data"
    as_pg "$inst/bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C >"$dir/pg/initdb.log" 2>&1 \
      || { tail -n 20 "$dir/pg/initdb.log" >&2; die "initdb failed"; }
  fi
  : > "$dir/postgres.log"; chmod a+w "$dir/postgres.log"
  # pg_ctl's -w waits for the server to accept connections; its own fork is the postmaster (PID in postmaster.pid).
  as_pg "$inst/bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories='' -c max_connections=40 -c shared_buffers=64MB" \
    start >/dev/null || { tail -n 30 "$dir/postgres.log" >&2; die "postgres failed to start"; }
  head -n1 "$data/postmaster.pid" > "$dir/postgres.pid"
  wait_until postgres "$dir/postgres.log" 30 pg_ready
  PGOPTIONS="-c client_min_messages=warning" "$inst/bin/psql" -q -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION IF NOT EXISTS vector" >/dev/null
  log "PostgreSQL + pgvector on 127.0.0.1:$pg_port (pid $(cat "$dir/postgres.pid"), user $(pg_user))"
}

registry_ready() { curl -fsS -o /dev/null "http://127.0.0.1:$registry_port/apis/ccompat/v7/subjects" 2>/dev/null; }

start_registry() {
  if pid_running registry; then log "registry already running (pid $(cat "$dir/registry.pid"))"; return 0; fi
  local p
  for p in "$registry_port" "$mgmt_port"; do
    if port_open "$p"; then die "127.0.0.1:$p is taken by another process; set SINK_REGISTRY_PORT / SINK_REGISTRY_MGMT_PORT"; fi
  done
  local java
  java="$(java21)" || die "Apicurio Registry needs Java 21+: none under /usr/lib/jvm; set SINK_JAVA21_HOME"
  : > "$dir/registry.log"
  # setsid: its own session, so a test's signal to its process group never reaches it. C1 only and the serial
  # collector: a test registry on a 2-core machine, not a benchmark.
  setsid "$java" -Xms64m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$registry_port" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$mgmt_port" \
    -Dapicurio.rest.deletion.artifact.enabled=true -Dapicurio.rest.deletion.artifact-version.enabled=true \
    -jar "$registry_home/$(cat "$registry_home/.jar")" >>"$dir/registry.log" 2>&1 </dev/null &
  echo $! > "$dir/registry.pid"
  wait_until registry "$dir/registry.log" 120 registry_ready
  log "Apicurio Registry $apicurio_version on http://127.0.0.1:$registry_port (pid $(cat "$dir/registry.pid"))"
}

connect_ready() {
  curl -fsS "http://127.0.0.1:$connect_port/connector-plugins" 2>/dev/null | grep -q JdbcSinkConnector
}

start_connect() {
  if pid_running connect; then log "connect already running (pid $(cat "$dir/connect.pid"))"; return 0; fi
  if port_open "$connect_port"; then die "127.0.0.1:$connect_port is taken by another process; set SINK_CONNECT_PORT"; fi
  command -v java >/dev/null || die "java not found: install a JDK 17+"
  cat > "$dir/connect.properties" <<EOF
bootstrap.servers=$bootstrap
listeners=http://127.0.0.1:$connect_port
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$connect_port
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
value.converter.schemas.enable=true
offset.storage.file.filename=$dir/connect.offsets
offset.flush.interval.ms=1000
plugin.path=$plugins
plugin.discovery=hybrid_warn
EOF
  if [ -n "${SINK_CONNECT_EXTRA_PROPS:-}" ]; then cat "$SINK_CONNECT_EXTRA_PROPS" >> "$dir/connect.properties"; fi
  : > "$dir/connect.log"
  setsid java -Xms128m -Xmx768m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.common=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.connect.runtime.isolation=warn \
    -Dorg.slf4j.simpleLogger.log.org.reflections=error -Dorg.slf4j.simpleLogger.log.org.hibernate=warn \
    -Dorg.slf4j.simpleLogger.log.org.eclipse.jetty=warn -Dorg.slf4j.simpleLogger.log.org.glassfish=warn \
    -cp "$connect_libs/*" org.apache.kafka.connect.cli.ConnectStandalone "$dir/connect.properties" \
    >>"$dir/connect.log" 2>&1 </dev/null &
  echo $! > "$dir/connect.pid"
  wait_until connect "$dir/connect.log" 180 connect_ready
  log "Kafka Connect $kafka_version on http://127.0.0.1:$connect_port (pid $(cat "$dir/connect.pid"), broker $bootstrap)"
}

start() {
  fetch
  mkdir -p "$dir"
  local t0=$SECONDS s
  # A service that fails to start stops the ones started before it: nothing is left behind.
  trap 'rc=$?; if [ "$rc" != 0 ]; then stop; fi' EXIT
  for s in $services; do
    case "$s" in
      postgres) start_postgres ;;
      registry) start_registry ;;
      connect) start_connect ;;
      *) die "unknown service $s in SINK_STACK_SERVICES" ;;
    esac
  done
  trap - EXIT
  log "started in $((SECONDS - t0)) s: $services"
}

stop_pid() {  # NAME [SIGNAL]
  local name="$1" sig="${2:-TERM}" pid
  [ -f "$dir/$name.pid" ] || return 0
  pid="$(cat "$dir/$name.pid")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then log "$name did not stop in 30 s; killing pid $pid"; kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$dir/$name.pid"
}

stop() {
  # Connect first (it writes to PostgreSQL), the database last, with SIGINT: PostgreSQL's "fast" shutdown
  # (SIGTERM would wait for every client to disconnect).
  stop_pid connect
  stop_pid registry
  stop_pid postgres INT
}

status() {
  local s all=0
  for s in postgres registry connect; do
    if pid_running "$s"; then echo "$s running pid $(cat "$dir/$s.pid")"; else echo "$s stopped"; all=1; fi
  done
  return "$all"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  wipe) stop; rm -rf "$dir" ;;
  *) echo "usage: $0 fetch|start|stop|status|wipe" >&2; exit 2 ;;
esac

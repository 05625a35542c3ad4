# shellcheck shell=bash disable=SC2154  # the variables are set by k8s-test.sh, which sources this
# Sourced by scripts/k8s-test.sh: producing, counting, waiting on the pods and on a drain.

pods() { kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream -o jsonpath='{.items[*].metadata.name}'; }
# produce PREFIX COUNT RATE SEED [FORMAT]: texts with ids PREFIX-1..COUNT, in the background ($! is its PID)
produce() {
  .venv/bin/embedstream produce --bootstrap "$bootstrap" --topic "$in_topic" --id-prefix "$1" --count "$2" \
    --rate "$3" --seed "$4" --format "${5:-json}" > "$work/produce-$1.log" 2>&1 &
  bg_pids+=($!)
}
# produced PID PREFIX: wait for that producer (in this shell: a $(...) subshell cannot wait for it); its summary
# line in $sent
produced() { wait "$1" || { cat "$work/produce-$2.log" >&2; fail "producer $2"; }; sent=$(tail -1 "$work/produce-$2.log"); }
count_ids() { .venv/bin/python scripts/k8s_ids.py "$bootstrap" "$out_topic" "$@" || fail "ids missing ($1)"; }
# stopped_cleanly LOG WHAT: the pod's last log line is the worker's "stopped" with exit code 0
stopped_cleanly() {
  local last
  last=$(grep -v '^[[:space:]]*$' "$1" | tail -1)
  say "$2's last log line: $last"
  if ! grep -q '"stopped"' <<<"$last" || ! grep -q '"exit_code":0' <<<"${last// /}"; then
    tail -20 "$1" >&2; fail "$2 did not stop cleanly"
  fi
}
lag() { .venv/bin/python scripts/k8s_ids.py --lag "$bootstrap" "k8s-test-$suffix" "$in_topic"; }
# drain PRODUCER_PID READING: poll every 2 s until that producer is done and the group's lag, as the broker reports
# it, is 0 (a pod's own lag gauge can read 0 long before). Sets tl (its start), polls, not_ready (polls where $pod
# was not Ready) and max_replicas (Ready replicas at most); READING is a command that prints the autoscaler's
# reading, logged whenever the replica count grows.
drain() {
  local p=$1 reading=$2 ready replicas
  tl=$SECONDS polls=0 not_ready=0 max_replicas=1
  while kill -0 "$p" 2>/dev/null || [ "$(lag)" != 0 ]; do
    ready=$(kubectl -n "$ns" get pod "$pod" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null || true)
    polls=$((polls + 1)); [ "$ready" = True ] || not_ready=$((not_ready + 1))
    replicas=$(kubectl -n "$ns" get deploy embedstream -o jsonpath='{.status.readyReplicas}' 2>/dev/null || echo 1)
    if [ "${replicas:-0}" -gt "$max_replicas" ]; then
      max_replicas=$replicas
      say "  +$((SECONDS - tl))s: $replicas replicas Ready ($($reading))"
    fi
    [ $((SECONDS - tl)) -lt 900 ] || fail "the backlog was not drained in 900 s"
    sleep 2
  done
}
# replicas_become N SECONDS: wait until exactly N pods of the release exist; fails after SECONDS
replicas_become() {
  local i
  for i in $(seq 1 "$2"); do
    [ "$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=embedstream --no-headers 2>/dev/null | wc -l)" = "$1" ] && return 0
    sleep 1
  done
  return 1
}
# one_ready SECONDS: wait until the Deployment has exactly one Ready replica; fails after SECONDS
one_ready() {
  local i
  for i in $(seq 1 "$1"); do
    [ "$(kubectl -n "$ns" get deploy embedstream -o jsonpath='{.status.readyReplicas}' 2>/dev/null)" = 1 ] && return 0
    sleep 1
  done
  return 1
}

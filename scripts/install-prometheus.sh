#!/usr/bin/env bash
# Prometheus and promtool for the tests (alert rule checks, a real Prometheus scraping workers), from
# Debian's `prometheus` package. Idempotent: does nothing when both are on PATH. Installs only as root
# with apt-get; otherwise says why and leaves the tests to skip -- except in CI (CI=true), where the
# tests must run, so it fails.
set -euo pipefail
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  exit 0
fi
fail_or_skip() {
  if [ "${CI:-}" = "true" ]; then
    echo "install-prometheus: $1 (CI=true: the Prometheus tests must run)" >&2
    exit 1
  fi
  echo "install-prometheus: $1; the Prometheus tests will be skipped" >&2
  exit 0
}
command -v apt-get >/dev/null || fail_or_skip "prometheus is missing and there is no apt-get"
[ "$(id -u)" = 0 ] || fail_or_skip "prometheus is missing and installing it needs root"
echo "install-prometheus: apt-get install prometheus" >&2
export DEBIAN_FRONTEND=noninteractive
# The package's service is not wanted (tests start their own on 127.0.0.1): policy-rc.d 101 keeps
# invoke-rc.d from starting it where a service manager exists.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
if ! apt-get install -y -q --no-install-recommends prometheus >&2; then
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends prometheus >&2 || fail_or_skip "apt-get install prometheus failed"
fi
command -v promtool >/dev/null || fail_or_skip "the prometheus package installed no promtool"

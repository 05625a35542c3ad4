#!/usr/bin/env bash
# Install the deployment tools the deploy tests need, built from source with the Go toolchain
# (the only way to get them here: no prebuilt downloads, only the Go module proxy).
#
#   scripts/install-tools.sh                    build helm once into the cache dir and print its path
#   scripts/install-tools.sh prometheus         build Prometheus with the Kubernetes service discovery
#                                               (scripts/k8s-test.sh; Debian's 2.42 has none) and print its path
#   scripts/install-tools.sh [TOOL] --force     rebuild even when the binary is already there
#
# The binaries land in ${EMBEDSTREAM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/bin}. A second
# run finds them (with the pinned version) and returns at once. The first build takes several minutes on
# 2 cores; tests/deploy looks for helm in $HELM, then in that directory, then on PATH.
#
# Requires: go >= the version in the tool's go.mod (helm 1.24, Prometheus 1.26.7 for the pinned releases).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
# Prometheus 3.16.0 is the Go module version v0.316.0.
PROMETHEUS_MODULE_VERSION="${PROMETHEUS_MODULE_VERSION:-v0.316.0}"
bindir="${EMBEDSTREAM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/bin}"
tool=helm
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    helm|prometheus) tool=$arg ;;
    *) echo "install-tools: unknown argument $arg (helm|prometheus, --force)" >&2; exit 2 ;;
  esac
done

log() { echo "install-tools: $*" >&2; }

gomod_of() {  # the go.mod file of a module version, from the module proxy
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p'
}

install_helm() {
  local helm="$bindir/helm" gomod k8s_minor ldflags pkg start
  if [ "$force" = 0 ] && [ -x "$helm" ] \
    && [ "$("$helm" version --template '{{.Version}}' 2>/dev/null || true)" = "$HELM_VERSION" ]; then
    log "helm $HELM_VERSION already at $helm"
    echo "$helm"
    return 0
  fi
  # helm's Makefile stamps its version and the Kubernetes version it defaults to
  # (.Capabilities.KubeVersion, lint deprecation checks) from the client-go it is built with; without
  # these ldflags a `go install` helm reports v1.20. Read client-go's version from helm's go.mod.
  gomod="$(gomod_of "helm.sh/helm/v3@$HELM_VERSION")"
  k8s_minor="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -n1)"
  [ -n "$k8s_minor" ] || { log "could not read k8s.io/client-go's version from $gomod"; exit 1; }

  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in pkg/lint/rules pkg/chartutil; do
    ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$k8s_minor"
  done

  log "building helm $HELM_VERSION (Kubernetes 1.$k8s_minor defaults) into $bindir; this takes a few minutes"
  start=$SECONDS
  CGO_ENABLED=0 GOBIN="$bindir" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  log "built in $((SECONDS - start))s: $("$helm" version --short)"
  echo "$helm"
}

install_prometheus() {
  # Version 0.3MM.P of the module is Prometheus 3.MM.P.
  local prom="$bindir/prometheus" mm="${PROMETHEUS_MODULE_VERSION#v0.3}" version start
  version="3.${mm%%.*}.${PROMETHEUS_MODULE_VERSION##*.}"
  if [ "$force" = 0 ] && [ -x "$prom" ] && "$prom" --version 2>/dev/null | grep -q "version $version "; then
    log "prometheus $version already at $prom"
    echo "$prom"
    return 0
  fi
  # Prometheus' build tags: remove_all_sd drops every service discovery, enable_kubernetes_sd puts back the
  # one the chart's ServiceMonitor stands for (half the build time and binary without the cloud SDKs). The
  # web UI's assets are not embedded (no builtinassets tag): the HTTP API, which is all the tests use, works.
  log "building prometheus $version (kubernetes_sd only) into $bindir; ~10 min on 2 cores"
  start=$SECONDS
  CGO_ENABLED=0 GOBIN="$bindir" go install -trimpath -tags remove_all_sd,enable_kubernetes_sd \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=$version" \
    "github.com/prometheus/prometheus/cmd/prometheus@$PROMETHEUS_MODULE_VERSION"
  log "built in $((SECONDS - start))s: $("$prom" --version | head -1)"
  echo "$prom"
}

command -v go >/dev/null || { log "go is not installed; cannot build $tool"; exit 1; }
mkdir -p "$bindir"
"install_$tool"

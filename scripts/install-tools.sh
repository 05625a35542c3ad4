#!/usr/bin/env bash
# Install the deployment tools the deploy tests need, built from source with the Go toolchain
# (the only way to get them here: no prebuilt downloads, only the Go module proxy).
#
#   scripts/install-tools.sh          build helm once into the cache dir and print its path
#   scripts/install-tools.sh --force  rebuild even when the binary is already there
#
# The binary lands in ${EMBEDSTREAM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/bin}/helm.
# A second run finds it (with the pinned version) and returns at once. The first build takes several
# minutes on 2 cores; tests/deploy looks for helm in $HELM, then in that directory, then on PATH.
#
# Requires: go >= the version in helm's go.mod (1.24 for the pinned release).
set -euo pipefail

HELM_VERSION="${HELM_VERSION:-v3.19.5}"
bindir="${EMBEDSTREAM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/bin}"
helm="$bindir/helm"
force=0
[ "${1:-}" = "--force" ] && force=1

log() { echo "install-tools: $*" >&2; }

installed_version() {
  "$helm" version --template '{{.Version}}' 2>/dev/null || true
}

if [ "$force" = 0 ] && [ -x "$helm" ] && [ "$(installed_version)" = "$HELM_VERSION" ]; then
  log "helm $HELM_VERSION already at $helm"
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { log "go is not installed; cannot build helm"; exit 1; }
mkdir -p "$bindir"

# helm's Makefile stamps its version and the Kubernetes version it defaults to
# (.Capabilities.KubeVersion, lint deprecation checks) from the client-go it is built with; without
# these ldflags a `go install` helm reports v1.20. Read client-go's version from helm's go.mod.
modjson="$(go mod download -json "helm.sh/helm/v3@$HELM_VERSION")"
gomod="$(printf '%s\n' "$modjson" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')"
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

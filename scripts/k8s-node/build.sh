# shellcheck shell=bash disable=SC2154  # the variables are set by k8s-node.sh, which sources this
# Sourced by scripts/k8s-node.sh: what `build` and `up` fetch or compile once into the cache (the Kubernetes
# binaries, metrics-server, the Debian packages, the pause image). Uses the variables k8s-node.sh sets.

# --- build -----------------------------------------------------------------------------------------------
build() {
  build_kubernetes
  keda_build
  if [ -x "$bin/metrics-server" ] && "$bin/metrics-server" --version 2>/dev/null | grep -q "$METRICS_SERVER_VERSION"; then
    return 0
  fi
  # Its go.mod has no replace directives: a plain go install (a few minutes; shares Kubernetes' libraries).
  say "building metrics-server $METRICS_SERVER_VERSION into $bin"
  CGO_ENABLED=0 GOBIN="$bin" nice -n 19 go install -trimpath \
    -ldflags "-s -w -X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
    "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
}

build_kubernetes() {
  if [ -x "$bin/kubelet" ] && [ "$("$bin/kube-apiserver" --version 2>/dev/null)" = "Kubernetes $K8S_VERSION" ]; then
    local b ok=1
    for b in "${BINARIES[@]}"; do [ -x "$bin/$b" ] || ok=0; done
    [ "$ok" = 1 ] && { say "binaries $K8S_VERSION already in $bin"; return 0; }
  fi
  command -v go >/dev/null || die "go is not installed"
  local src="$cache/src" gomod m ld p
  mkdir -p "$src" "$bin"
  # The wrapper module: k8s.io/kubernetes itself, with every staging module (kubernetes' go.mod points
  # them at ./staging, which a module download does not have) replaced by its published v0.x twin.
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$K8S_VERSION"
  {
    printf 'module embedstream.local/k8sbuild\n\ngo 1.24.0\n\ngodebug default=go1.24\n\n'
    printf 'require k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
    # sample-* are examples nothing here imports (the proxy refuses sample-cli-plugin/sample-controller v0.34.4)
    sed -n '/^replace (/,/^)/p' "$gomod" | awk '/=> \.\/staging/{print $1}' | grep -v '^k8s.io/sample-' |
      while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING_VERSION"; done
    printf ')\n'
  } > "$src/go.mod"
  # Without these the servers report v0.0.0 (and Helm's kubeVersion checks fail).
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34 -X $p.gitTreeState=clean"
  done
  say "building ${BINARIES[*]} $K8S_VERSION into $bin (one go build; ~25-30 min on 2 idle cores)"
  local t0=$SECONDS
  (cd "$src" && GOFLAGS=-mod=mod CGO_ENABLED=0 nice -n 19 go build -trimpath -ldflags "$ld" -o "$bin/" \
    "${BINARIES[@]/#/k8s.io/kubernetes/cmd/}")
  say "built in $((SECONDS - t0))s: $("$bin/kube-apiserver" --version)"
}

# --- packages --------------------------------------------------------------------------------------------
packages() {
  local missing=() c pkg
  for c in containerd:containerd runc:runc etcd:etcd-server iptables:iptables conntrack:conntrack \
           socat:socat openssl:openssl kubectl:kubectl; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
  done
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || missing+=(containernetworking-plugins)
  for pkg in "${missing[@]}"; do
    [ "$pkg" = kubectl ] && die "kubectl is missing (not in Debian bookworm); install one >= 1.32"
  done
  [ "${#missing[@]}" = 0 ] && return 0
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

# --- the pause image, built from kubernetes' own pause.c ----------------------------------------------------
pause_archive() {
  local out="$cache/pause/pause-$PAUSE_TAG.tar"
  [ -f "$out" ] && { echo "$out"; return 0; }
  local modsrc w layer_sha config_sha
  modsrc="$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c"
  [ -f "$modsrc" ] || go mod download "k8s.io/kubernetes@$K8S_VERSION"
  w=$(mktemp -d)
  mkdir -p "$w/rootfs" "$cache/pause"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_TAG-embedstream" -o "$w/rootfs/pause" "$modsrc"
  strip "$w/rootfs/pause"
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$w/rootfs" -cf "$w/layer.tar" pause
  layer_sha=$(sha256sum "$w/layer.tar" | cut -d' ' -f1)
  cat > "$w/config.json" <<EOF
{"architecture":"amd64","os":"linux","config":{"User":"65535:65535","Entrypoint":["/pause"]},"rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},"history":[{"created_by":"gcc -static pause.c (k8s.io/kubernetes@$K8S_VERSION build/pause/linux)"}]}
EOF
  config_sha=$(sha256sum "$w/config.json" | cut -d' ' -f1)
  mv "$w/config.json" "$w/$config_sha.json"
  mkdir -p "$w/$layer_sha" && mv "$w/layer.tar" "$w/$layer_sha/layer.tar"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$config_sha" "$PAUSE_IMAGE" "$layer_sha" > "$w/manifest.json"
  tar -C "$w" -cf "$out.tmp" manifest.json "$config_sha.json" "$layer_sha"
  mv "$out.tmp" "$out"
  rm -rf "$w"
  echo "$out"
}


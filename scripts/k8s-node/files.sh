# shellcheck shell=bash disable=SC2154  # the variables are set by k8s-node.sh, which sources this
# Sourced by scripts/k8s-node.sh: the files `up` writes before it starts anything (the CA, certificates,
# kubeconfigs and each daemon's configuration), all under the state dir $S.

# --- certificates and kubeconfigs --------------------------------------------------------------------------
cert() {  # name CN O(or -) ext(client|server|both) [SANs]
  local name=$1 cn=$2 o=$3 ext=$4 san=${5:-} subj pki="$S/pki"
  subj="/CN=$cn"; [ "$o" != - ] && subj="/O=$o$subj"
  openssl genrsa -out "$pki/$name.key" 2048 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    case $ext in
      server) echo "extendedKeyUsage=serverAuth"; echo "subjectAltName=$san" ;;
      both) echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san" ;;
      *) echo "extendedKeyUsage=clientAuth" ;;
    esac
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 30 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

kubeconfig() {  # file cert-name
  local ca crt key
  ca=$(base64 -w0 < "$S/pki/ca.crt"); crt=$(base64 -w0 < "$S/pki/$2.crt"); key=$(base64 -w0 < "$S/pki/$2.key")
  cat > "$S/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: embedstream
  cluster:
    server: https://$NODE_IP:$API_PORT
    certificate-authority-data: $ca
users:
- name: $2
  user:
    client-certificate-data: $crt
    client-key-data: $key
contexts:
- name: embedstream
  context: {cluster: embedstream, user: $2}
current-context: embedstream
EOF
  chmod 600 "$S/$1.kubeconfig"
}

pki() {
  local p="$S/pki"
  mkdir -p "$p" && chmod 700 "$p"
  openssl genrsa -out "$p/ca.key" 2048 2>/dev/null
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=embedstream-k8s-node-ca" -days 30 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$p/ca.crt" 2>/dev/null
  cert apiserver kube-apiserver - server \
    "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$NODE_IP,IP:$SERVICE_IP"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters client
  cert admin kubernetes-admin system:masters client
  cert controller-manager system:kube-controller-manager - client
  cert scheduler system:kube-scheduler - client
  cert kubelet-client "system:node:$NODE" system:nodes client
  cert kubelet "$NODE" - server "DNS:$NODE,DNS:localhost,IP:$NODE_IP,IP:127.0.0.1"
  cert kube-proxy system:kube-proxy - client
  # the aggregation layer: the API server proxies metrics.k8s.io to metrics-server with this certificate
  # (--requestheader-allowed-names), the original user in X-Remote-* headers
  cert front-proxy-client front-proxy-client - client
  cert metrics-server metrics-server - server "DNS:metrics-server.kube-system.svc,IP:$NODE_IP"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
  kubeconfig admin admin
  kubeconfig controller-manager controller-manager
  kubeconfig scheduler scheduler
  kubeconfig kubelet kubelet-client
  kubeconfig kube-proxy kube-proxy
}

# --- configuration files -----------------------------------------------------------------------------------
configs() {
  mkdir -p "$S/containerd" "$S/cni/net.d" "$S/cni/ipam" "$S/kubelet" "$S/pod-logs"
  cat > "$S/containerd/config.toml" <<EOF
version = 2
root = "$S/containerd/root"
state = "$S/containerd/state"
oom_score = 0
[grpc]
  address = "$(sock)"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$S/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # no CAP_SYS_RESOURCE here: without this every sandbox fails in runc (oom_score_adj: Permission denied)
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$S/cni/net.d"
EOF
  # The bridge exists before the pods (up creates it with 10.244.0.1): isGateway false keeps the plugin
  # from turning on net.ipv4.ip_forward; pods route through 10.244.0.1 all the same.
  cat > "$S/cni/net.d/10-embedstream.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "embedstream",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": false, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$S/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0", "gw": "$NODE_IP"}]
      }
    }
  ]
}
EOF
  cat > "$S/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $S/pki/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $S/pki/kubelet.crt
tlsPrivateKeyFile: $S/pki/kubelet.key
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$(sock)
oomScoreAdj: 0
failSwapOn: false
clusterDomain: cluster.local
podLogsDirectory: $S/pod-logs
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 2%, imagefs.available: 2%, nodefs.inodesFree: 1%}
maxPods: 50
EOF
  cat > "$S/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $S/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE
clusterCIDR: $POD_CIDR
bindAddress: 127.0.0.1
healthzBindAddress: 127.0.0.1:$PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$PROXY_METRICS_PORT
oomScoreAdj: 0
nodePortAddresses: ["$NODE_IP/32"]
# leave the machine's conntrack sysctls and route_localnet alone (shared machine)
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s, udpTimeout: 0s, udpStreamTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
}


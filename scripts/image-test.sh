#!/usr/bin/env bash
# The image, built and run without Docker: buildah builds the Dockerfile, podman runs it against the local
# broker with a model folder mounted read-only; texts go in, embeddings come out, the image's HEALTHCHECK
# passes, and the container runs as uid 10001 with a read-only root filesystem. Slow (minutes): not in CI;
# a recorded run is in docs/deploy.md.
#
#   scripts/image-test.sh                 (root; installs buildah podman runc debootstrap with apt when missing)
#   IMAGE_TEST_BASE=localhost/python:3.11 scripts/image-test.sh     use this base image instead
#   IMAGE_TEST_BUILD_ONLY=1 scripts/image-test.sh    build and check localhost/embedstream:image-test, run nothing
#                                                    (scripts/k8s-test.sh imports that image into the node)
#
# The base: python:3.11-slim-bookworm when a registry answers, else a local Debian bookworm (debootstrap
# --variant=minbase + python3, cached in ~/.cache/embedstream/image-base) imported with `buildah from scratch`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { echo "image-test: $*" >&2; }
t0=$(date +%s)
IMAGE=localhost/embedstream:image-test
port="${KAFKA_LOCAL_PORT:-19092}"
work="$(mktemp -d /tmp/embedstream-image-test.XXXXXX)"
ctr="embedstream-image-test-$$"
started_broker=0
# buildah 1.28 leaves a working container behind for each `COPY --from` stage: remove the ones our
# builds created (by id, the set that was not there before).
before_builds="$(buildah containers -q 2>/dev/null || true)"
remove_build_leftovers() {
  local id
  for id in $(buildah containers -q 2>/dev/null); do
    grep -qx "$id" <<<"$before_builds" || buildah rm "$id" >/dev/null 2>&1 || true
  done
}
cleanup() {
  remove_build_leftovers
  podman rm -f "$ctr" >/dev/null 2>&1 || true
  rm -rf "$PWD/.image-test-model-$$"
  [ "$started_broker" = 1 ] && KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" bash scripts/kafka-local.sh stop || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- tools -----------------------------------------------------------------------------------------------
missing=()
for tool in buildah podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || { say "missing ${missing[*]}; install them (apt-get)"; exit 1; }
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
# podman on a machine without systemd or a default ulimit: runc, cgroupfs, explicit limits.
conf=/etc/containers/containers.conf
if ! grep -q '^runtime = "runc"' "$conf" 2>/dev/null; then
  if grep -qE '^\[(containers|engine)\]' "$conf" 2>/dev/null; then
    say "$conf has its own [containers]/[engine] tables: add runtime = \"runc\", cgroup_manager = \"cgroupfs\""
    say "and default_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"] there yourself"; exit 1
  fi
  say "writing $conf (runc, cgroupfs, nofile/nproc limits)"
  mkdir -p /etc/containers
  cat >> "$conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
fi

# --- base image ------------------------------------------------------------------------------------------
base="${IMAGE_TEST_BASE:-}"
if [ -z "$base" ]; then
  if timeout 60 buildah pull -q docker.io/library/python:3.11-slim-bookworm >/dev/null 2>&1; then
    base=docker.io/library/python:3.11-slim-bookworm
  else
    base=localhost/embedstream-base:bookworm
    if ! buildah inspect "$base" >/dev/null 2>&1; then
      cache="${XDG_CACHE_HOME:-$HOME/.cache}/embedstream/image-base"
      if [ ! -x "$cache/rootfs/usr/bin/python3" ]; then
        say "no registry: debootstrap bookworm (minbase + python3) into $cache"
        rm -rf "$cache/rootfs.tmp" && mkdir -p "$cache"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm \
          "$cache/rootfs.tmp" http://deb.debian.org/debian >&2
        mv "$cache/rootfs.tmp" "$cache/rootfs"
      fi
      say "importing the local base as $base"
      b=$(buildah from scratch)
      mnt=$(buildah mount "$b")
      cp -a "$cache/rootfs/." "$mnt/"
      ln -sf python3 "$mnt/usr/bin/python"  # python:*-slim images have `python`
      # pip in RUN reaches PyPI through whatever CA this machine trusts (a proxy's, say)
      ca="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
      [ -f "$ca" ] && cat "$ca" >> "$mnt/etc/ssl/certs/ca-certificates.crt"
      rm -rf "$mnt/var/cache/apt/archives/"*.deb "$mnt/var/lib/apt/lists/"*
      buildah umount "$b" >/dev/null
      buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$b"
      buildah commit -q --format docker "$b" "$base" >/dev/null
      buildah rm "$b" >/dev/null
    fi
  fi
fi
say "base image: $base"

# --- build -----------------------------------------------------------------------------------------------
say "buildah bud (chroot isolation, docker format so HEALTHCHECK is kept)"
tb=$(date +%s)
buildah bud -q --isolation chroot --format docker --layers=false --build-arg "PYTHON_IMAGE=$base" \
  --build-arg MODEL_SOURCE=none -t "$IMAGE" . >&2
say "built $IMAGE in $(( $(date +%s) - tb ))s, $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
health=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
[ "$user" = "10001:10001" ] || { say "FAIL: image user is '$user', not 10001:10001"; exit 1; }
[ "$health" != "null" ] && [ -n "$health" ] || { say "FAIL: the image has no HEALTHCHECK"; exit 1; }
say "image user $user; healthcheck $health"
if [ "${IMAGE_TEST_BUILD_ONLY:-0}" = 1 ]; then say "built only (IMAGE_TEST_BUILD_ONLY=1): $IMAGE"; exit 0; fi

# --- broker, model, topics -------------------------------------------------------------------------------
[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/python -m pip install -q -e '.[test]'; }
if [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  bootstrap="$KAFKA_BOOTSTRAP_SERVERS"
else
  KAFKA_LOCAL_PORT="$port" KAFKA_LOCAL_DIR="$work/kafka" bash scripts/kafka-local.sh start
  started_broker=1
  bootstrap="127.0.0.1:$port"
fi
mkdir -p "$work/model"
suffix=$$
.venv/bin/python - "$work/model" "$bootstrap" "$suffix" <<'PY'
import sys
sys.path.insert(0, "tests"); sys.path.insert(0, "tests/integration")
from pathlib import Path
from modelfactory import build_model
from kafkatools import create_topics
build_model(Path(sys.argv[1]), "wordpiece", dim=32)
create_topics(sys.argv[2], [f"image-in-{sys.argv[3]}", f"image-out-{sys.argv[3]}", f"image-dlq-{sys.argv[3]}"], 2)
PY
chmod -R a+rX "$work/model" && chmod a+x "$work"

# --- run -------------------------------------------------------------------------------------------------
metrics_port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
say "podman run (read-only root, model mounted read-only, host network, metrics on $metrics_port)"
podman run -d --name "$ctr" --network host --read-only --tmpfs /tmp:rw,size=64m \
  -v "$work/model:/models/test:ro" \
  -e EMBED_MODEL__PATH=/models/test -e EMBED_KAFKA__BOOTSTRAP_SERVERS="$bootstrap" \
  -e EMBED_KAFKA__GROUP_ID="image-test-$suffix" -e EMBED_INPUT_TOPIC="image-in-$suffix" \
  -e EMBED_OUTPUT_TOPIC="image-out-$suffix" -e EMBED_DLQ_TOPIC="image-dlq-$suffix" \
  -e EMBED_METRICS__PORT="$metrics_port" "$IMAGE" >/dev/null
for _ in $(seq 1 120); do
  if curl -fsS "http://127.0.0.1:$metrics_port/readyz" >/dev/null 2>&1; then break; fi
  [ "$(podman inspect --format '{{.State.Running}}' "$ctr")" = true ] || { podman logs "$ctr" >&2; say "FAIL: container exited"; exit 1; }
  sleep 1
done
curl -fsS "http://127.0.0.1:$metrics_port/readyz" >&2 || { podman logs "$ctr" | tail -20 >&2; say "FAIL: not ready"; exit 1; }

count=1000
.venv/bin/embedstream produce --bootstrap "$bootstrap" --topic "image-in-$suffix" --count "$count" 2>&1 | tail -1 >&2
.venv/bin/python - "$bootstrap" "image-out-$suffix" "$count" <<'PY'
import sys
sys.path.insert(0, "tests/integration")
import numpy as np, orjson
from kafkatools import Collector
bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Collector(bootstrap, topic)
records = c.poll_until(count, timeout=120, settle=2)
c.close()
vectors = np.array([orjson.loads(r.value)["embedding"] for r in records], dtype=np.float32)
ids = {orjson.loads(r.value)["id"] for r in records}
assert len(records) == count and len(ids) == count, (len(records), len(ids))
assert vectors.shape == (count, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
print(f"image-test: read back {len(records)} embeddings, {len(ids)} distinct ids, dim {vectors.shape[1]}, unit norm",
      file=sys.stderr)
PY

# --- checks ----------------------------------------------------------------------------------------------
podman healthcheck run "$ctr" >&2 && say "HEALTHCHECK: healthy" || { say "FAIL: HEALTHCHECK"; exit 1; }
uid=$(podman exec "$ctr" python -c 'import os; print(os.getuid(), os.getgid())')
[ "$uid" = "10001 10001" ] || { say "FAIL: runs as '$uid'"; exit 1; }
say "runs as uid/gid $uid"
[ "$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$ctr")" = true ] || { say "FAIL: root not read-only"; exit 1; }
if podman exec "$ctr" python -c 'open("/opt/venv/x", "w")' 2>"$work/write.err"; then
  say "FAIL: could write into the image"; exit 1
fi
say "root filesystem read-only: $(tail -1 "$work/write.err")"
if podman exec "$ctr" python -c 'open("/models/test/x", "w")' 2>"$work/write.err"; then
  say "FAIL: could write into the model mount"; exit 1
fi
say "model mount read-only: $(tail -1 "$work/write.err")"
produced=$(curl -fsS "http://127.0.0.1:$metrics_port/metrics" | awk '/^embedstream_messages_produced_total /{print $2}')
say "worker metrics: embedstream_messages_produced_total $produced"
podman stop -t 30 "$ctr" >/dev/null
code=$(podman inspect --format '{{.State.ExitCode}}' "$ctr")
[ "$code" = 0 ] || { podman logs "$ctr" | tail -20 >&2; say "FAIL: exit code $code after SIGTERM"; exit 1; }
say "stopped on SIGTERM with exit code 0"

# --- a baked model (MODEL_SOURCE=local) whose safetensors file is 0600 in the build context --------------
baked="$PWD/.image-test-model-$suffix"
cp -r "$work/model" "$baked" && chmod 0600 "$baked/model.safetensors"
say "buildah bud MODEL_SOURCE=local (model.safetensors mode 0600 in the context)"
tb=$(date +%s)
buildah bud -q --isolation chroot --format docker --layers=false --build-arg "PYTHON_IMAGE=$base" \
  --build-arg MODEL_SOURCE=local --build-arg "MODEL_DIR=$(basename "$baked")" -t "$IMAGE-local" . >&2
rm -rf "$baked"
say "built $IMAGE-local in $(( $(date +%s) - tb ))s"
line=$(echo '{"id": "x", "text": "hello world"}' \
  | podman run --rm -i --network none --read-only "$IMAGE-local" encode 2>"$work/encode.err") \
  || { grep -v systemd "$work/encode.err" >&2; say "FAIL: encode with the baked model"; exit 1; }
echo "$line" | .venv/bin/python -c '
import sys, orjson
doc = orjson.loads(sys.stdin.read())
assert doc["id"] == "x" and len(doc["embedding"]) == 32, doc
print("image-test: baked model: encode gave a %d-d vector for id %s" % (len(doc["embedding"]), doc["id"]), file=sys.stderr)'
say "PASS in $(( $(date +%s) - t0 ))s"
